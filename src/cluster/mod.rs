//! The cluster store: users and REST secrets in Redis (or Valkey), in
//! coturn's schema, so that every node pointed at one Redis serves the
//! same users, and a deployment of coturn's can move over unchanged.
//!
//! - `turn/realm/<realm>/user/<name>/key`: the long-term key in hex, 32
//!   digits for MD5(name:realm:password), 64 for its SHA-256 (RFC 8489
//!   §9.2.2, §18.5);
//! - `turn/realm/<realm>/user/<name>/password`: the password itself (then
//!   both keys derive from it; it wins over `key`);
//! - the set `turn/realm/<realm>/secret`: TURN REST secrets, any verifies.
//!
//! Nothing is scanned: a name is read (one MGET of its two keys) when an
//! engine first meets it ([`crate::engine::Output::LookupUser`]), and every
//! engine is given the answer, a "no such user" too. Keyspace notifications
//! (which the task turns on with `CONFIG SET notify-keyspace-events` where
//! Redis allows it) make every engine forget a name whose keys changed at
//! once, and the task reads it again and gives every engine the new answer;
//! the secret set is read at connect and whenever it changes. The engines never wait for Redis: a request
//! waits for its lookup at most 50 ms inside its engine, then is answered as
//! an unknown user's.
//!
//! When Redis cannot be reached, nodes serve with what their engines last
//! learnt, the task reconnects with backoff, and on connecting again it
//! reads every user it gave the engines anew (notifications may have been
//! missed), has them forget the names Redis lacked, and gives them the
//! secrets anew.
//!
//! Any client can name a user nobody has, so reads are bounded: at most
//! [`MAX_READING`] at once (a lookup beyond is dropped: its request is
//! answered as an unknown user's), names Redis lacks are not tracked, and
//! at most [`MAX_SECRETS`] secrets are used (each costs every REST request
//! an HMAC). Nothing slow is awaited in the main loop: secrets, the check
//! for names in both `[auth] users` and Redis, and PING run on tasks of
//! their own, so lookups keep being answered meanwhile. [`Status`] says which (the
//! `ferroturn_cluster_up` metric).
//!
//! The same task keeps this node's rows beside coturn's keys and follows
//! the other nodes' (see the `nodes` module): per-user allocation counts
//! for the cluster-wide quota, revocations, kills and sessions.
//!
//! Beside it, the `usage` module's task publishes usage events in
//! coturn's `--redis-statsdb` format and on one capped stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::sync::mpsc;

use crate::admin::SessionInfo;
use crate::auth::{StaticUser, parse_key_hex};
use crate::config::{Config, MAX_SECRETS};
use crate::io::Control;

pub mod load;
mod nodes;
mod revoke;
pub mod usage;

use nodes::{Event, Peers, Sum};

/// The log target of this module's lines.
const LOG: &str = "ferroturn::cluster";

/// How long a connect, or one command, may take before the store counts as
/// unreachable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the task checks that the store answers while it is idle.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Waits between reconnection attempts: doubled from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MOST: Duration = Duration::from_secs(5);

/// Answers the task keeps to give again without a read, when an engine
/// asks for a name another engine's request just had read (each engine
/// asks on its own first miss): at most this many, each this long, and
/// forgotten when the name changes in Redis.
const RECENT_MAX: usize = 4096;
const RECENT_TTL: Duration = Duration::from_secs(10);

/// Names whose answers the task gave the engines and keeps track of, to
/// read again when they change or after an outage (as many as an engine
/// keeps users); beyond, the engines are told to forget everything at the
/// next reconnect instead.
const GIVEN_MAX: usize = 65_536;

/// Reads of users in flight at once; a lookup beyond is dropped, and a
/// re-read (after a notification or an outage) waits its turn.
const MAX_READING: usize = 64;

/// Lookups waiting for the task, from every engine together (each engine
/// asks at most 200 a second): beyond this they are dropped.
const LOOKUP_QUEUE: usize = 4096;

/// The keyspace events the caches need: K (keyspace channel), g (DEL,
/// RENAME, EXPIRE…), $ (string commands), s (set commands), x (expiry).
const EVENTS: &str = "Kg$sx";

/// How often local count changes are published, and other nodes'
/// expiry checked: the longest a change waits before it leaves.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// Count batches waiting for the writer; beyond, a batch is dropped and
/// the next heartbeat's whole rewrite makes up for it.
const WRITE_QUEUE: usize = 64;

/// Whether the store answers now, and how many nodes this one hears;
/// shared with the metrics.
#[derive(Debug, Default)]
pub struct Status {
    up: AtomicBool,
    nodes: AtomicU64,
    /// Where operator actions go to reach the other nodes.
    ops: OnceLock<mpsc::Sender<Op>>,
    /// Where the admin API asks for the other nodes' sessions.
    session_reads: OnceLock<mpsc::Sender<SessionsWanted>>,
    /// This node's name.
    node: OnceLock<String>,
    /// What became of the usage facts.
    usage: usage::Counters,
    /// The node drains: it takes no new allocations, and says so.
    draining: AtomicBool,
}

/// The admin API's ask for the other nodes' sessions: the answer goes here.
type SessionsWanted = tokio::sync::oneshot::Sender<Vec<SessionInfo>>;

/// How long the admin API waits for the other nodes' sessions before it
/// lists this node's alone.
const SESSIONS_WAIT: Duration = Duration::from_secs(2);

/// One session as a node keeps it in Redis: when it started (Unix
/// seconds, so that readers compute its age) and what the admin API lists.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub started: u64,
    pub info: SessionInfo,
}

/// The sessions of this node (`local`, as the admin API lists them) and,
/// with `[cluster]`, of every other node whose rows have not expired, each
/// with its node's name. When Redis does not answer in time, this node's
/// alone.
pub async fn all_sessions(control: &Control, mut local: Vec<SessionInfo>) -> Vec<SessionInfo> {
    let Some(status) = control.cluster_status() else {
        return local;
    };
    let me = status.node.get().cloned();
    for s in &mut local {
        s.node = me.clone();
    }
    let Some(reads) = status.session_reads.get() else {
        return local;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if reads.try_send(tx).is_err() {
        return local;
    }
    match tokio::time::timeout(SESSIONS_WAIT, rx).await {
        Ok(Ok(others)) => local.extend(others),
        _ => {
            tracing::warn!(target: LOG, "the other nodes' sessions could not be read: this node's alone")
        }
    }
    local
}

/// Operator actions waiting for the task (while Redis is away they wait
/// for it); beyond, an action is carried out on this node only.
const OP_QUEUE: usize = 256;

/// An operator action that every node carries out: this node already has.
#[derive(Debug, Clone)]
pub enum Op {
    /// Close the allocations of a quota name.
    Kill(String),
    /// Refuse a name until a Unix time (and close its allocations).
    Revoke { name: String, until: u64 },
    /// Lift a name's revocation.
    Unrevoke(String),
}

/// Hand `op`, carried out on this node, to the cluster task to reach every
/// other node: `None` without `[cluster]`, false if it cannot be queued
/// (the task is far behind).
pub fn tell(control: &Control, op: Op) -> Option<bool> {
    let ops = control.cluster_status()?.ops.get()?.clone();
    Some(ops.try_send(op).is_ok())
}

impl Status {
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Usage facts by [`usage::Outcome`].
    pub fn usage_events(&self) -> [u64; usage::Outcome::COUNT] {
        self.usage.get()
    }

    /// Nodes seen within their expiry, this one included.
    pub fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed)
    }

    /// The node started draining (see [`crate::io::Control::drain`]).
    pub fn drained(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn set(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed)
    }
}

/// The running cluster task: tell it about reloads.
pub struct Cluster {
    reloaded: mpsc::UnboundedSender<Vec<String>>,
}

impl Cluster {
    /// The configuration was reloaded: warn again about `[auth] users`
    /// names that Redis has too.
    pub fn reloaded(&self, config: &Config) {
        let _ = self
            .reloaded
            .send(config.live.users.keys().cloned().collect());
    }
}

/// Start the cluster task on the current tokio runtime, if `config` has a
/// `[cluster]` section: it links every engine of `control` to Redis.
pub fn start(config: &Config, control: &Control) -> Option<Cluster> {
    let c = config.restart.cluster.as_ref()?;
    let status = control.cluster_status()?;
    let client = match redis::Client::open(c.redis.as_str()) {
        Ok(client) => client,
        Err(e) => {
            // `check` refuses such a URL; this is a last guard.
            tracing::error!(target: LOG, "cluster.redis: {e}; running without the cluster store");
            return None;
        }
    };
    // Bounded: while the task is busy connecting, a full queue drops new
    // lookups (their requests get 401 after the park timeout) instead of
    // growing.
    let (lookups_tx, lookups) = mpsc::channel(LOOKUP_QUEUE);
    control.cluster_link(lookups_tx);
    let (reloaded, reloads) = mpsc::unbounded_channel();
    let (ops_tx, ops) = mpsc::channel(OP_QUEUE);
    let _ = status.ops.set(ops_tx);
    let (reads_tx, session_reads) = mpsc::channel(OP_QUEUE);
    let _ = status.session_reads.set(reads_tx);
    let _ = status.node.set(c.node.clone());
    control.shared().track_changes();
    status.nodes.store(1, Ordering::Relaxed);
    usage::start(
        config,
        control,
        client.clone(),
        status.clone(),
        &c.node,
        c.heartbeat,
        c.usage_stream_max,
    );
    let spreading = load::Spreading::new(config, c.heartbeat * nodes::EXPIRY_BEATS)?;
    let task = Task {
        spreading,
        node: c.node.clone(),
        heartbeat: c.heartbeat,
        cluster_keys: nodes::Keys::new(&config.restart.realm),
        peers: Peers::new(&c.node, c.heartbeat * nodes::EXPIRY_BEATS),
        ops,
        session_reads,
        client,
        keys: Schema::new(&config.restart.realm),
        control: control.clone(),
        status,
        lookups,
        reloads,
        toml_users: config.live.users.keys().cloned().collect(),
        given: Given::default(),
    };
    tracing::info!(target: LOG, node = %c.node, "cluster store: users and secrets from Redis");
    tokio::spawn(task.run());
    Some(Cluster { reloaded })
}

/// The key names of coturn's schema for one realm.
#[derive(Clone)]
struct Schema {
    prefix: String,
}

impl Schema {
    fn new(realm: &str) -> Schema {
        Schema {
            prefix: format!("turn/realm/{realm}/"),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}user/{name}/key", self.prefix)
    }

    fn password(&self, name: &str) -> String {
        format!("{}user/{name}/password", self.prefix)
    }

    fn secrets(&self) -> String {
        format!("{}secret", self.prefix)
    }

    /// The keyspace channels of every key of the realm in database `db`
    /// (glob characters of the realm escaped).
    fn pattern(&self, db: i64) -> String {
        let mut p = format!("__keyspace@{db}__:");
        for ch in self.prefix.chars() {
            if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(ch);
        }
        p.push('*');
        p
    }

    /// What a keyspace notification's key names.
    fn changed<'a>(&self, key: &'a str) -> Changed<'a> {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return Changed::Other;
        };
        if rest == "secret" {
            return Changed::Secrets;
        }
        match rest.strip_prefix("user/").and_then(|r| r.rsplit_once('/')) {
            Some((name, "key" | "password")) => Changed::User(name),
            _ => Changed::Other,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Changed<'a> {
    User(&'a str),
    Secrets,
    Other,
}

/// A user's credential from the values of its `password` and `key`: the
/// password if set, else the key by its length; `None` if neither is
/// usable.
fn credential(password: Option<Vec<u8>>, key: Option<Vec<u8>>) -> Option<StaticUser> {
    if let Some(p) = password.and_then(|p| String::from_utf8(p).ok()) {
        return Some(StaticUser::Password(p));
    }
    let key = String::from_utf8(key?).ok()?;
    let hex = key.trim();
    let hex = hex.strip_prefix("0x").unwrap_or(hex);
    let hex = format!("0x{hex}");
    match hex.len() - 2 {
        32 => Some(StaticUser::Keys {
            md5: Some(parse_key_hex::<16>(&hex)?),
            sha256: None,
        }),
        64 => Some(StaticUser::Keys {
            md5: None,
            sha256: Some(parse_key_hex::<32>(&hex)?),
        }),
        _ => None,
    }
}

/// What a session with the store ended with.
type Lost = String;

/// The users whose credentials the task gave the engines, to read again
/// when they change or after an outage. Names Redis lacks are not kept:
/// any client can make up as many as it likes (the engines forget those
/// after a while, and at once on a reconnect).
#[derive(Default)]
struct Given {
    names: HashSet<String>,
    /// Whether some were given beyond [`GIVEN_MAX`], untracked.
    overflowed: bool,
}

impl Given {
    /// The engines were given what Redis has of `name` (`found`: a user).
    fn record(&mut self, name: &str, found: bool) {
        if !found {
            self.names.remove(name);
        } else if self.names.len() < GIVEN_MAX {
            self.names.insert(name.to_owned());
        } else if !self.names.contains(name) {
            self.overflowed = true;
        }
    }
}

/// The secrets to give the engines out of Redis's set: the non-empty ones,
/// sorted, at most [`MAX_SECRETS`] (as `[auth]` allows); whether some were
/// left out.
fn usable_secrets(mut secrets: Vec<String>) -> (Vec<String>, bool) {
    secrets.retain(|s| !s.is_empty());
    secrets.sort();
    let over = secrets.len() > MAX_SECRETS;
    secrets.truncate(MAX_SECRETS);
    (secrets, over)
}

struct Task {
    /// This node's name, heartbeat, and the keys of the cluster's own rows.
    node: String,
    heartbeat: Duration,
    cluster_keys: nodes::Keys,
    /// The other nodes' per-user counts.
    peers: Peers,
    /// The loads of every node, and where new Allocates go.
    spreading: load::Spreading,
    /// Operator actions to publish.
    ops: mpsc::Receiver<Op>,
    /// The admin API's asks for the other nodes' sessions.
    session_reads: mpsc::Receiver<SessionsWanted>,
    client: redis::Client,
    keys: Schema,
    control: Control,
    status: Arc<Status>,
    lookups: mpsc::Receiver<String>,
    reloads: mpsc::UnboundedReceiver<Vec<String>>,
    toml_users: Vec<String>,
    given: Given,
}

/// An MGET of a user's password and key, as read by [`read_user`].
type Read =
    Result<redis::RedisResult<(Option<Vec<u8>>, Option<Vec<u8>>)>, tokio::time::error::Elapsed>;

/// Read `name`'s password and key on a task of its own; the outcome goes
/// to `done`.
fn read_user(
    conn: &redis::aio::MultiplexedConnection,
    keys: &Schema,
    name: String,
    done: &mpsc::UnboundedSender<(String, Read)>,
) {
    let (mut conn, done) = (conn.clone(), done.clone());
    let keys = [keys.password(&name), keys.key(&name)];
    tokio::spawn(async move {
        let read = tokio::time::timeout(COMMAND_TIMEOUT, conn.mget(&keys)).await;
        let _ = done.send((name, read));
    });
}

impl Task {
    async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        // Whether the operator was told the store is away (once per outage,
        // and at a start without it).
        let mut told = false;
        loop {
            let lost = self.session(&mut backoff).await;
            if self.status.set(false) || !told {
                told = true;
                tracing::warn!(
                    target: LOG,
                    "cluster store unreachable ({lost}); serving with the users and secrets last seen, reconnecting"
                );
            } else {
                tracing::debug!(target: LOG, "cluster store still unreachable: {lost}");
            }
            // Lookups that come meanwhile cannot be answered: their
            // requests are answered as unknown users' after 50 ms.
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            let mut tick = tokio::time::interval(PUBLISH_EVERY);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    Some(_) = self.lookups.recv() => {}
                    Some(users) = self.reloads.recv() => self.toml_users = users,
                    // Dropped unanswered: the admin API lists this node's.
                    Some(_) = self.session_reads.recv() => {}
                    _ = tick.tick() => {
                        // Nothing can be published: the next session
                        // rewrites every count. The others' counts age out.
                        self.control.shared().take_changes();
                        self.expire_peers();
                    }
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MOST);
        }
    }

    /// Connect, subscribe, bring every engine up to date, then answer
    /// lookups and follow notifications until the connection fails.
    async fn session(&mut self, backoff: &mut Duration) -> Lost {
        let timed = |what: &'static str| move |_| format!("{what}: timed out");
        let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub()).await;
        let mut pubsub = match pubsub.map_err(timed("connect")) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return format!("connect: {e}"),
            Err(e) => return e,
        };
        let conn = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await;
        let mut conn = match conn.map_err(timed("connect")) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return format!("connect: {e}"),
            Err(e) => return e,
        };
        self.enable_notifications(&mut conn).await;
        let db = self.client.get_connection_info().redis_settings().db();
        if let Err(e) = pubsub.psubscribe(self.keys.pattern(db)).await {
            return format!("subscribe: {e}");
        }
        let events = self.cluster_keys.channel();
        if let Err(e) = pubsub.subscribe(&events).await {
            return format!("subscribe: {e}");
        }
        // Notifications may have been missed while away: what the engines
        // were given is read again below (or, if untracked, forgotten).
        let mut again: VecDeque<String> = if self.given.overflowed {
            self.control.cluster_forget(None);
            self.given = Given::default();
            VecDeque::new()
        } else {
            self.control.cluster_forget_absent();
            self.given.names.iter().cloned().collect()
        };
        match load_secrets(&self.keys, &mut conn).await {
            Ok(secrets) => self.control.cluster_secrets(&secrets),
            Err(e) => return e,
        }
        match revoke::load(&self.cluster_keys, &mut conn).await {
            Ok(list) => self.control.shared().replace_revocations(list),
            Err(e) => return e,
        }
        let (failed_tx, mut failed) = mpsc::unbounded_channel::<Lost>();
        let (secrets_tx, mut secrets_read) = mpsc::unbounded_channel();
        // Secret reads in order: an older one finishing last is dropped.
        let (mut secrets_asked, mut secrets_given) = (0u64, 0u64);
        tokio::spawn(warn_duplicates(
            conn.clone(),
            self.keys.clone(),
            self.toml_users.clone(),
        ));
        self.status.set(true);
        *backoff = BACKOFF_FIRST;
        tracing::info!(target: LOG, "cluster store connected");

        let mut messages = pubsub.into_on_message();
        // This node's rows: written in order by one writer.
        let (writes, writes_rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_rows(
            conn.clone(),
            self.cluster_keys.clone(),
            self.node.clone(),
            self.heartbeat * nodes::EXPIRY_BEATS,
            writes_rx,
            failed_tx.clone(),
        ));
        let (rows_tx, mut rows_read) = mpsc::unbounded_channel();
        let (loads_tx, mut loads_read) = mpsc::unbounded_channel();
        // This node's sessions as last written, and their reads.
        let (listed_tx, mut listed) = mpsc::unbounded_channel();
        let mut sessions = SessionSync::default();
        let mut beat = tokio::time::interval(self.heartbeat);
        let mut publish = tokio::time::interval(PUBLISH_EVERY);
        // A batch was dropped: rewrite everything at the next tick.
        let mut rewrite = false;
        let (done_tx, mut done) = mpsc::unbounded_channel();
        // Names being read, and whether a notification came meanwhile
        // (then the answer may be stale: the name is read again).
        let mut reading: HashMap<String, bool> = HashMap::new();
        // `again` holds re-reads waiting for room among MAX_READING.
        let schema = self.keys.clone();
        let start_reads = |reading: &mut HashMap<String, bool>, again: &mut VecDeque<String>| {
            while reading.len() < MAX_READING
                && let Some(name) = again.pop_front()
            {
                if !reading.contains_key(&name) {
                    reading.insert(name.clone(), false);
                    read_user(&conn, &schema, name, &done_tx);
                }
            }
        };
        start_reads(&mut reading, &mut again);
        let mut recent: HashMap<String, (Option<StaticUser>, tokio::time::Instant)> =
            HashMap::new();
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                Some(name) = self.lookups.recv() => {
                    if reading.contains_key(&name) {
                        continue;
                    }
                    if let Some((user, at)) = recent.get(&name)
                        && at.elapsed() < RECENT_TTL
                    {
                        self.control.cluster_user(&name, user.clone());
                        continue;
                    }
                    // Over the bound the lookup is dropped: its request
                    // is answered as an unknown user's.
                    if reading.len() < MAX_READING {
                        reading.insert(name.clone(), false);
                        read_user(&conn, &self.keys, name, &done_tx);
                    }
                }
                Some((name, read)) = done.recv() => {
                    let stale = reading.remove(&name).unwrap_or(false);
                    match read {
                        Ok(Ok(_)) if stale => again.push_front(name),
                        Ok(Ok((password, key))) => {
                            let user = credential(password, key);
                            self.control.cluster_user(&name, user.clone());
                            if recent.len() >= RECENT_MAX {
                                recent.clear();
                            }
                            self.given.record(&name, user.is_some());
                            recent.insert(name, (user, tokio::time::Instant::now()));
                        }
                        Ok(Err(e)) => return format!("read: {e}"),
                        Err(_) => return "read: timed out".to_owned(),
                    }
                    start_reads(&mut reading, &mut again);
                }
                message = messages.next() => {
                    let Some(m) = message else {
                        return "connection closed".to_owned();
                    };
                    let channel = m.get_channel_name();
                    if channel == events {
                        if let Ok(text) = m.get_payload::<String>() {
                            self.event(&text);
                        }
                        continue;
                    }
                    let key = channel.split_once(':').map_or("", |(_, k)| k);
                    match self.keys.changed(key) {
                        Changed::User(name) => {
                            // Forgotten at once (a removed user is refused
                            // from now on), and read again if the engines
                            // had it.
                            self.control.cluster_forget(Some(name));
                            recent.remove(name);
                            if let Some(stale) = reading.get_mut(name) {
                                *stale = true;
                            } else if self.given.names.contains(name) {
                                again.push_back(name.to_owned());
                                start_reads(&mut reading, &mut again);
                            }
                        }
                        Changed::Secrets => {
                            secrets_asked += 1;
                            let (keys, mut conn, tx) =
                                (self.keys.clone(), conn.clone(), secrets_tx.clone());
                            let asked = secrets_asked;
                            tokio::spawn(async move {
                                let _ = tx.send((asked, load_secrets(&keys, &mut conn).await));
                            });
                        }
                        Changed::Other => {}
                    }
                }
                Some((asked, read)) = secrets_read.recv() => match read {
                    Ok(secrets) if asked > secrets_given => {
                        secrets_given = asked;
                        self.control.cluster_secrets(&secrets);
                    }
                    Ok(_) => {}
                    Err(e) => return e,
                },
                Some(users) = self.reloads.recv() => {
                    self.toml_users = users;
                    tokio::spawn(warn_duplicates(
                        conn.clone(),
                        self.keys.clone(),
                        self.toml_users.clone(),
                    ));
                }
                Some(wanted) = self.session_reads.recv() => {
                    tokio::spawn(read_sessions(
                        conn.clone(),
                        self.cluster_keys.clone(),
                        self.node.clone(),
                        wanted,
                    ));
                }
                Some((whole, list)) = listed.recv() => {
                    let write = sessions.listed(whole, list);
                    if let Some(w) = write {
                        let _ = writes.try_send(w);
                    }
                    if let Some(whole) = sessions.again.take() {
                        sessions.read(&self.control, whole, &listed_tx);
                    }
                }
                _ = beat.tick() => {
                    self.publish_load(true, &writes);
                    tokio::spawn(load::read_loads(
                        conn.clone(),
                        self.cluster_keys.clone(),
                        self.node.clone(),
                        loads_tx.clone(),
                    ));
                    sessions.read(&self.control, true, &listed_tx);
                    let whole = self.control.shared().local_counts();
                    if writes.try_send(Write::Whole(whole)).is_err() {
                        rewrite = true;
                    }
                    tokio::spawn(read_rows(
                        conn.clone(),
                        self.cluster_keys.clone(),
                        self.node.clone(),
                        rows_tx.clone(),
                    ));
                }
                _ = publish.tick() => {
                    self.publish_load(false, &writes);
                    let shared = self.control.shared();
                    let write = if rewrite {
                        shared.take_changes();
                        Write::Whole(shared.local_counts())
                    } else {
                        let changes = shared.take_changes();
                        if changes.is_empty() {
                            self.expire_peers();
                            continue;
                        }
                        // A count changed: sessions came or went.
                        sessions.read(&self.control, false, &listed_tx);
                        Write::Counts(changes)
                    };
                    rewrite = writes.try_send(write).is_err();
                    self.expire_peers();
                }
                Some(op) = self.ops.recv() => {
                    // Applied here again: an action queued while Redis was
                    // away was replaced by Redis's table at reconnect.
                    let shared = self.control.shared();
                    match &op {
                        Op::Revoke { name, until } => {
                            shared.revoke(name, *until);
                        }
                        Op::Unrevoke(name) => {
                            shared.unrevoke(name);
                        }
                        Op::Kill(_) => {}
                    }
                    if writes.try_send(Write::Op(op)).is_err() {
                        tracing::warn!(target: LOG, "cluster writes far behind: an operator action reached this node only");
                    }
                }
                Some(loads) = loads_read.recv() => {
                    let now = std::time::Instant::now();
                    for (node, advert, ttl) in loads {
                        self.spreading.loads.heard(&node, advert, Some(ttl), now);
                    }
                    self.spreading.refresh(&self.control, now);
                }
                Some(rows) = rows_read.recv() => {
                    let now = std::time::Instant::now();
                    for (node, counts, ttl) in rows {
                        let sums = self.peers.replace(&node, counts, ttl, now);
                        self.apply(sums);
                    }
                    self.status.nodes.store(1 + self.peers.live() as u64, Ordering::Relaxed);
                }
                _ = ping.tick() => {
                    let (mut conn, failed) = (conn.clone(), failed_tx.clone());
                    tokio::spawn(async move {
                        let pong = tokio::time::timeout(
                            COMMAND_TIMEOUT,
                            redis::cmd("PING").query_async::<String>(&mut conn),
                        )
                        .await;
                        let lost = match pong {
                            Ok(Ok(_)) => return,
                            Ok(Err(e)) => format!("ping: {e}"),
                            Err(_) => "ping: timed out".to_owned(),
                        };
                        let _ = failed.send(lost);
                    });
                }
                Some(lost) = failed.recv() => return lost,
            }
        }
    }

    /// A message from another node (or this one's own, ignored).
    fn event(&mut self, text: &str) {
        let now = std::time::Instant::now();
        let Some(event) = Event::parse(text) else {
            tracing::debug!(target: LOG, "unknown cluster message ignored");
            return;
        };
        if event.node() == self.node {
            return;
        }
        let shared = self.control.shared();
        match event {
            Event::Count { node, n, name } => {
                let sum = self.peers.count(node, name, n, now);
                self.apply(sum.into_iter().collect());
            }
            Event::Beat { node } => self.peers.beat(node, now),
            Event::Kill { node, name } => {
                tracing::info!(target: LOG, from = node, user = name, "kill from another node");
                self.close_user(name);
            }
            Event::Revoke { node, until, name } => {
                // No node's operator can revoke for longer than a year
                // (`ferroturn revoke --until`); a message asking more is
                // held to that.
                let until = until.min(unix_now() + 366 * 86_400);
                tracing::info!(target: LOG, from = node, user = name, until, "revocation from another node");
                if shared.revoke(name, until) {
                    shared.note_revocation();
                }
                self.close_user(name);
            }
            Event::Unrevoke { node, name } => {
                tracing::info!(target: LOG, from = node, user = name, "revocation lifted by another node");
                shared.unrevoke(name);
            }
            Event::Load { node, advert } => {
                if let Some(advert) = load::Advert::read(advert) {
                    self.spreading.loads.heard(node, advert, None, now);
                    self.spreading.refresh(&self.control, now);
                }
            }
        }
        self.status
            .nodes
            .store(1 + self.peers.live() as u64, Ordering::Relaxed);
    }

    /// Close `name`'s allocations on this node, off the main loop.
    fn close_user(&self, name: &str) {
        let (control, name) = (self.control.clone(), name.to_owned());
        tokio::spawn(async move {
            let closed = control.close_user(&name).await;
            tracing::info!(target: LOG, user = %name, closed, "allocations closed for the cluster");
        });
    }

    /// Hand the engines the other nodes' new sums.
    fn apply(&self, sums: Vec<Sum>) {
        let shared = self.control.shared();
        for (name, n) in sums {
            shared.set_remote(&name, n);
        }
    }

    /// This node's load to the writer: at a heartbeat, or when it changed.
    fn publish_load(&mut self, beat: bool, writes: &mpsc::Sender<Write>) {
        let draining = self.status.draining.load(Ordering::Relaxed);
        let now = std::time::Instant::now();
        if let Some(json) = self
            .spreading
            .due(self.control.shared(), draining, beat, now)
        {
            // Dropped when the writer is far behind: the next change or
            // heartbeat publishes it again.
            let _ = writes.try_send(Write::Load(json));
        }
    }

    /// Forget the nodes not heard from within their expiry.
    fn expire_peers(&mut self) {
        self.spreading
            .refresh(&self.control, std::time::Instant::now());
        let sums = self.peers.expire(std::time::Instant::now());
        if !sums.is_empty() {
            tracing::info!(target: LOG, names = sums.len(), "a node's rows expired: its allocations no longer count");
        }
        self.apply(sums);
        self.status
            .nodes
            .store(1 + self.peers.live() as u64, Ordering::Relaxed);
    }

    /// Turn on the keyspace events the caches need, keeping those already
    /// on; a Redis that refuses CONFIG (managed services often do) gets a
    /// warning: its operator must set them.
    async fn enable_notifications(&self, conn: &mut redis::aio::MultiplexedConnection) {
        let current: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(conn)
            .await;
        let mut flags = match &current {
            Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
            Err(_) => String::new(),
        };
        // "A" stands for every class but K, E, m and n.
        let has = |f: &str, c: char| f.contains(c) || (f.contains('A') && "g$lshzxetd".contains(c));
        let missing: String = EVENTS.chars().filter(|&c| !has(&flags, c)).collect();
        if missing.is_empty() {
            return;
        }
        flags.push_str(&missing);
        let set: redis::RedisResult<()> = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&flags)
            .query_async(conn)
            .await;
        if let Err(e) = set {
            tracing::warn!(
                target: LOG,
                "cannot turn on keyspace notifications ({e}): set notify-keyspace-events to include \
                 {EVENTS} on the Redis server, else changes to users and secrets are seen only \
                 after a reconnect"
            );
        }
    }
}

/// What the writer writes of this node's rows.
enum Write {
    /// Every name's count: the hash rewritten whole, and a heartbeat.
    Whole(Vec<(String, u32)>),
    /// The counts that changed (0: gone), each published.
    Counts(Vec<(String, u32)>),
    /// An operator action: recorded if it lasts, and published.
    Op(Op),
    /// This node's load (JSON): its row set, and published.
    Load(String),
    /// Sessions: the hash rewritten whole if `whole`, else these put
    /// (relay → JSON) and those gone.
    Sessions {
        whole: bool,
        put: Vec<(String, String)>,
        gone: Vec<String>,
    },
}

/// What this node last wrote of its sessions, and the read of them under
/// way: one at a time, the next one waiting.
#[derive(Default)]
struct SessionSync {
    /// Relay address → which session was written under it: an address
    /// freed and taken again between two reads is another session, to be
    /// written over the first.
    written: HashMap<String, String>,
    reading: bool,
    /// Another read is wanted (whole if true) once this one is done.
    again: Option<bool>,
}

impl SessionSync {
    /// List this node's sessions (a report of every engine) off the main
    /// loop; the list goes to `done`.
    fn read(
        &mut self,
        control: &Control,
        whole: bool,
        done: &mpsc::UnboundedSender<(bool, Vec<SessionInfo>)>,
    ) {
        if self.reading {
            self.again = Some(self.again.unwrap_or(false) || whole);
            return;
        }
        self.reading = true;
        let (control, done) = (control.clone(), done.clone());
        tokio::spawn(async move {
            let report = control.report(true).await;
            let list = report
                .sessions
                .iter()
                .map(SessionInfo::from_session)
                .collect();
            let _ = done.send((whole, list));
        });
    }

    /// The list read: what to write of it (nothing if nothing came or went).
    fn listed(&mut self, whole: bool, list: Vec<SessionInfo>) -> Option<Write> {
        self.reading = false;
        let now = unix_now();
        let mut current: HashMap<String, SessionInfo> =
            list.into_iter().map(|s| (s.relay.clone(), s)).collect();
        let gone: Vec<String> = self
            .written
            .keys()
            .filter(|r| !current.contains_key(*r))
            .cloned()
            .collect();
        if !whole {
            current.retain(|relay, s| self.written.get(relay) != Some(&session_id(s)));
            if current.is_empty() && gone.is_empty() {
                return None;
            }
        }
        for r in &gone {
            self.written.remove(r);
        }
        let put: Vec<(String, String)> = current
            .into_iter()
            .filter_map(|(relay, info)| {
                let stored = Stored {
                    started: now.saturating_sub(info.age_seconds),
                    info,
                };
                let json = serde_json::to_string(&stored).ok()?;
                self.written.insert(relay.clone(), session_id(&stored.info));
                Some((relay, json))
            })
            .collect();
        Some(Write::Sessions { whole, put, gone })
    }
}

/// What tells two sessions on one relay address apart.
fn session_id(s: &SessionInfo) -> String {
    format!("{} {} {}", s.transport, s.client, s.user)
}

/// Write this node's rows in order, each batch in one MULTI, until the
/// session ends (`writes` closes) or a write fails (told to `failed`).
async fn write_rows(
    mut conn: redis::aio::MultiplexedConnection,
    keys: nodes::Keys,
    node: String,
    expiry: Duration,
    mut writes: mpsc::Receiver<Write>,
    failed: mpsc::UnboundedSender<Lost>,
) {
    let hash = keys.quota(&node);
    let channel = keys.channel();
    while let Some(w) = writes.recv().await {
        let mut pipe = redis::pipe();
        pipe.atomic();
        match &w {
            Write::Whole(counts) => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                pipe.del(&hash).ignore();
                if !counts.is_empty() {
                    pipe.hset_multiple(&hash, counts).ignore();
                }
                pipe.zadd(keys.nodes(), &node, now_ms).ignore();
                // Names of nodes gone for a day leave the set.
                pipe.zrembyscore(keys.nodes(), "-inf", now_ms - 86_400_000)
                    .ignore();
                let beat = Event::Beat { node: &node }.text();
                pipe.publish(&channel, beat).ignore();
            }
            Write::Op(op) => {
                let event = match op {
                    Op::Kill(name) => Event::Kill { node: &node, name },
                    Op::Revoke { name, until } => {
                        pipe.hset(keys.revoked(), name, until).ignore();
                        Event::Revoke {
                            node: &node,
                            until: *until,
                            name,
                        }
                    }
                    Op::Unrevoke(name) => {
                        pipe.hdel(keys.revoked(), name).ignore();
                        Event::Unrevoke { node: &node, name }
                    }
                };
                pipe.publish(&channel, event.text()).ignore();
            }
            Write::Load(json) => {
                pipe.pset_ex(keys.load(&node), json, expiry.as_millis() as u64)
                    .ignore();
                let event = Event::Load {
                    node: &node,
                    advert: json,
                };
                pipe.publish(&channel, event.text()).ignore();
            }
            Write::Sessions { whole, put, gone } => {
                let key = keys.sessions(&node);
                if *whole {
                    pipe.del(&key).ignore();
                } else if !gone.is_empty() {
                    pipe.hdel(&key, gone).ignore();
                }
                if !put.is_empty() {
                    pipe.hset_multiple(&key, put).ignore();
                }
                pipe.pexpire(&key, expiry.as_millis() as i64).ignore();
            }
            Write::Counts(counts) => {
                for (name, n) in counts {
                    if *n == 0 {
                        pipe.hdel(&hash, name).ignore();
                    } else {
                        pipe.hset(&hash, name, n).ignore();
                    }
                    let count = Event::Count {
                        node: &node,
                        n: *n,
                        name,
                    };
                    pipe.publish(&channel, count.text()).ignore();
                }
            }
        }
        pipe.pexpire(&hash, expiry.as_millis() as i64).ignore();
        let done = tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
        let lost = match done {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("write counts: {e}"),
            Err(_) => "write counts: timed out".to_owned(),
        };
        let _ = failed.send(lost);
        return;
    }
}

/// Read the sessions of every other node whose rows have not expired (at
/// most [`nodes::MAX_NODES`] nodes) and answer `wanted` (nothing on an
/// error: the admin API then lists this node's alone).
async fn read_sessions(
    mut conn: redis::aio::MultiplexedConnection,
    keys: nodes::Keys,
    node: String,
    wanted: SessionsWanted,
) {
    let read = async {
        let names: Vec<String> = conn
            .zrevrange(keys.nodes(), 0, nodes::MAX_NODES as isize)
            .await?;
        let names: Vec<String> = names.into_iter().filter(|n| *n != node).collect();
        let mut pipe = redis::pipe();
        for n in &names {
            pipe.hvals(keys.sessions(n));
        }
        let values: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        redis::RedisResult::Ok(names.into_iter().zip(values).collect::<Vec<_>>())
    };
    let Ok(Ok(per_node)) = tokio::time::timeout(COMMAND_TIMEOUT, read).await else {
        return;
    };
    let now = unix_now();
    let mut list = Vec::new();
    for (name, values) in per_node {
        // What one node lists is bounded by what a node can hold.
        for v in values.into_iter().take(MAX_SESSIONS_PER_NODE) {
            if let Ok(Stored { started, mut info }) = serde_json::from_str::<Stored>(&v) {
                info.node = Some(name.clone());
                info.age_seconds = now.saturating_sub(started);
                list.push(info);
            }
        }
    }
    let _ = wanted.send(list);
}

/// Sessions of one other node `ferroturn sessions` lists at most (a node
/// holds at most one per relay port and address).
const MAX_SESSIONS_PER_NODE: usize = 1 << 18;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One other node's hash as read: its name, counts and time to live.
type Rows = (String, HashMap<String, u32>, Duration);

/// Read one row of every other node in the `nodes` set (at most
/// [`nodes::MAX_NODES`] others): `row(node)`'s key with the command
/// `read` adds to the pipeline, and the key's time to live. Rows that have
/// expired (or never were) are left out.
pub(crate) async fn read_others<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &nodes::Keys,
    me: &str,
    row: impl Fn(&nodes::Keys, &str) -> String,
    read: impl Fn(&mut redis::Pipeline, String),
) -> redis::RedisResult<Vec<(String, T, Duration)>> {
    let names: Vec<String> = conn
        .zrevrange(keys.nodes(), 0, nodes::MAX_NODES as isize)
        .await?;
    let names: Vec<String> = names.into_iter().filter(|n| n != me).collect();
    let mut pipe = redis::pipe();
    for n in &names {
        read(&mut pipe, row(keys, n));
        pipe.pttl(row(keys, n));
    }
    let values: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut rows = Vec::new();
    for (n, pair) in names.into_iter().zip(values.chunks(2)) {
        // A row that does not read as expected is that node's problem:
        // left out, the others' rows still count.
        let (Ok(value), Ok(ttl)) = (
            redis::from_redis_value_ref::<T>(&pair[0]),
            redis::from_redis_value_ref::<i64>(&pair[1]),
        ) else {
            continue;
        };
        if ttl > 0 {
            rows.push((n, value, Duration::from_millis(ttl as u64)));
        }
    }
    Ok(rows)
}

/// Read every other node's counts; what was read goes to `done` (nothing
/// on an error: the next heartbeat tries again, and a lost connection
/// shows in the ping).
async fn read_rows(
    mut conn: redis::aio::MultiplexedConnection,
    keys: nodes::Keys,
    node: String,
    done: mpsc::UnboundedSender<Vec<Rows>>,
) {
    let read = read_others::<HashMap<String, String>>(
        &mut conn,
        &keys,
        &node,
        nodes::Keys::quota,
        |p, k| {
            p.hgetall(k);
        },
    );
    if let Ok(Ok(rows)) = tokio::time::timeout(COMMAND_TIMEOUT, read).await {
        // A field that is no count (or names no name ferroturn can hold)
        // is skipped, not the whole row.
        let rows = rows
            .into_iter()
            .map(|(n, fields, ttl)| {
                let counts = fields
                    .into_iter()
                    .filter(|(name, _)| name.len() <= nodes::MAX_NAME)
                    .filter_map(|(name, v)| Some((name, v.parse::<u32>().ok()?)))
                    .collect();
                (n, counts, ttl)
            })
            .collect();
        let _ = done.send(rows);
    }
}

/// Read the secret set (the part of it [`usable_secrets`] keeps).
async fn load_secrets(
    keys: &Schema,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<Vec<String>, Lost> {
    let read = tokio::time::timeout(
        COMMAND_TIMEOUT,
        conn.smembers::<_, Vec<String>>(keys.secrets()),
    )
    .await;
    match read {
        Ok(Ok(secrets)) => {
            let (secrets, over) = usable_secrets(secrets);
            if over {
                tracing::warn!(
                    target: LOG,
                    "more than {MAX_SECRETS} secrets in {}: only the first {MAX_SECRETS} (sorted) are used",
                    keys.secrets()
                );
            }
            Ok(secrets)
        }
        Ok(Err(e)) => Err(format!("read secrets: {e}")),
        Err(_) => Err("read secrets: timed out".to_owned()),
    }
}

/// Warn about each `[auth] users` name Redis defines too: the
/// configuration's entry is the one used. One MGET for them all.
async fn warn_duplicates(
    mut conn: redis::aio::MultiplexedConnection,
    keys: Schema,
    names: Vec<String>,
) {
    if names.is_empty() {
        return;
    }
    let read: Vec<String> = names
        .iter()
        .flat_map(|n| [keys.password(n), keys.key(n)])
        .collect();
    let values =
        tokio::time::timeout(COMMAND_TIMEOUT, conn.mget::<_, Vec<Option<Vec<u8>>>>(&read)).await;
    let Ok(Ok(values)) = values else {
        return;
    };
    for (name, pair) in names.iter().zip(values.chunks(2)) {
        if pair.iter().any(Option::is_some) {
            tracing::warn!(
                target: LOG,
                user = %name,
                "user defined in both [auth] users and Redis: the configuration's entry is used"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay address freed and taken by another session between two
    /// reads: the new session is written over the old one, not missed
    /// until the next heartbeat's whole rewrite.
    #[test]
    fn a_reused_relay_address_is_written_again() {
        let session = |user: &str, client: &str| SessionInfo {
            node: None,
            user: user.into(),
            client: client.into(),
            transport: "udp".into(),
            relay_transport: "udp".into(),
            relay: "127.0.0.1:50000".into(),
            relay_port: 50000,
            relay_v6: None,
            age_seconds: 0,
            to_peer: crate::admin::TrafficReport {
                packets: 0,
                bytes: 0,
            },
            to_client: crate::admin::TrafficReport {
                packets: 0,
                bytes: 0,
            },
        };
        let puts = |w: Option<Write>| match w {
            Some(Write::Sessions { put, gone, .. }) => (put.len(), gone.len()),
            _ => (0, 0),
        };
        let mut sync = SessionSync::default();
        let first = vec![session("alice", "127.0.0.1:40000")];
        assert_eq!(puts(sync.listed(false, first.clone())), (1, 0));
        assert_eq!(puts(sync.listed(false, first)), (0, 0), "nothing new");
        let other = vec![session("bob", "127.0.0.1:40001")];
        assert_eq!(puts(sync.listed(false, other)), (1, 0), "bob over alice");
    }

    #[test]
    fn notifications_name_users_and_the_secret_set() {
        let s = Schema::new("example.org");
        assert_eq!(s.key("bob"), "turn/realm/example.org/user/bob/key");
        assert_eq!(
            s.changed("turn/realm/example.org/user/bob/password"),
            Changed::User("bob")
        );
        assert_eq!(
            s.changed("turn/realm/example.org/user/a/b/key"),
            Changed::User("a/b")
        );
        assert_eq!(s.changed("turn/realm/example.org/secret"), Changed::Secrets);
        for other in [
            "turn/realm/example.org/user/bob/allocation/1/status",
            "turn/realm/other.org/user/bob/key",
            "turn/realm/example.org/user/bob",
        ] {
            assert_eq!(s.changed(other), Changed::Other, "{other}");
        }
        assert_eq!(
            Schema::new("a*b").pattern(3),
            "__keyspace@3__:turn/realm/a\\*b/*"
        );
    }

    /// Names Redis lacks are not kept to read again (a spray of them
    /// would make every reconnect re-read them all, or overflow the set
    /// and make the engines forget every user); a user removed from Redis
    /// leaves the set.
    #[test]
    fn only_users_found_are_tracked() {
        let mut g = Given::default();
        for i in 0..GIVEN_MAX + 10 {
            g.record(&format!("junk{i}"), false);
        }
        assert!(g.names.is_empty());
        assert!(!g.overflowed);
        g.record("carol", true);
        assert!(g.names.contains("carol"));
        g.record("carol", false);
        assert!(g.names.is_empty());
    }

    /// At most MAX_SECRETS from Redis, as from [auth]: each costs every
    /// REST request a key derivation and an HMAC.
    #[test]
    fn secrets_from_redis_are_bounded() {
        let set: Vec<String> = (0..3 * MAX_SECRETS)
            .map(|i| format!("s{i:02}"))
            .chain([String::new()])
            .collect();
        let (kept, over) = usable_secrets(set);
        assert!(over);
        assert_eq!(kept.len(), MAX_SECRETS);
        assert_eq!(kept[0], "s00", "sorted: every node keeps the same ones");
        let (kept, over) = usable_secrets(vec!["b".into(), String::new(), "a".into()]);
        assert_eq!((kept, over), (vec!["a".to_owned(), "b".to_owned()], false));
    }

    #[test]
    fn keys_by_length_and_passwords_first() {
        let md5 = "72f86f2053703faa0f521ce71cfe6f59";
        let Some(StaticUser::Keys {
            md5: Some(_),
            sha256: None,
        }) = credential(None, Some(md5.into()))
        else {
            panic!("32 digits: MD5");
        };
        let Some(StaticUser::Keys {
            md5: None,
            sha256: Some(_),
        }) = credential(None, Some(format!("0x{md5}{md5}").into()))
        else {
            panic!("64 digits: SHA-256");
        };
        assert!(credential(None, Some("abc".into())).is_none());
        assert!(credential(None, Some(format!("{md5}zz").into())).is_none());
        assert!(credential(None, None).is_none());
        assert_eq!(
            credential(Some("pw".into()), Some(md5.into())),
            Some(StaticUser::Password("pw".into()))
        );
    }
}
