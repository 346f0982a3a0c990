//! STOMP (1.0, 1.1, 1.2) over a demo [`Session`]: a small broker for the
//! signaling demo, spoken over `/stomp` (a plain WebSocket) and SockJS's
//! `/ws`. It never sees the transport: [`serve`] takes a session's text
//! messages and writes frames back.
//!
//! Destinations:
//! - `/topic/NAME` (NAME: 1–128 of `A-Z a-z 0-9 _ - . /`): every SEND is
//!   delivered to every subscription to it, the sender's own included.
//! - `/app/room/ROOM/join`, `/app/room/ROOM/leave`: join or leave a
//!   signaling room (the rooms of [`signal::Hub`], with its room names and
//!   `[demo] room_size`; rooms of this broker are apart from `/signal`'s).
//! - `/app/room/ROOM/signal` with a `to` header (a member's peer id) and a
//!   JSON body `{"type":"offer"|"answer","sdp":…}` or
//!   `{"type":"candidate","candidate":…}` (as on `/signal`, without `to`):
//!   validated by the hub and delivered to that member only, on
//!   `/user/queue/signal`, with a `from` header (the sender's peer id).
//! - `/topic/room/ROOM`: the room's events, from the server only, to the
//!   members subscribed to it: `joined` (to the joiner: its `id` and the
//!   `peers` already there), `peer-joined`, `peer-left` and `bye` (with
//!   `from`).
//! - `/user/queue/errors`: errors about one frame of the session, for it
//!   alone (`{"type":"error","code":…,"message":…}`).
//!
//! A session's peer id is in CONNECTED's `user-name` header.
//!
//! Errors: STOMP's ERROR frame ends the connection (1.2 §"ERROR"), so it
//! is kept for protocol faults (a malformed or oversized frame, a missing
//! required header, an unknown command, a frame before CONNECT, no common
//! version, a heart-beat timeout) and is followed by a close. What one
//! message asked that cannot be done (an unknown destination, a peer
//! outside the sender's room, a full room, a limit reached, a dropped
//! message) is a MESSAGE on the sender's `/user/queue/errors` subscription
//! (dropped if it has none) and the session carries on.
//!
//! Heart-beats (1.1 §"Heart-beating"): the server offers `[demo]
//! stomp_heartbeat` both ways; each way runs at the larger of what one side
//! can do and the other wants, or not at all if either says 0. The server
//! sends an EOL at its interval; a session silent for twice the agreed
//! client-to-server interval gets an ERROR and is closed. One that has not
//! sent CONNECT within [`CONNECT_TIMEOUT`] is closed.
//!
//! Limits: [`MAX_SUBSCRIPTIONS`] per session (one per destination),
//! [`MAX_TOPICS`] shared topics (`/topic/NAME`) subscribed to at once,
//! [`MAX_TOPIC_SUBSCRIPTIONS_PER_SITE`] subscriptions to them from the
//! sessions of one site (an IP address or IPv6 /48) together,
//! [`MAX_SUBSCRIBERS`] per shared topic (a session's own queues and its
//! room's topic count only against its own subscriptions); `[demo] stomp_sessions_per_ip` sessions per IP address
//! (or IPv6 /64), counted here whatever the transport (over `/stomp` they
//! also count in `[demo] connections_per_ip`); each session's frames go
//! through [`signal::Rate`], `/signal`'s budget (the excess is dropped,
//! and the sender told once per run of drops).
//!
//! A session's outbox is the session's queue ([`super::session::QUEUE`]
//! messages). Messages from other sessions (and copies of its own SENDs
//! to a topic it subscribed to) are dropped for it when fewer than
//! [`RESERVED`] places are left or they would fill more than
//! [`RELAY_BYTES`], and their sender is told (`peer-busy`): a flood from
//! one session never closes another, and one that reads nothing holds at
//! most that much of others' messages. The
//! reserved places are for the session's own answers: its next frame is
//! handled only once they are free, so a client that reads nothing stops
//! being read (and falls silent for its heart-beats), and one that sends
//! a burst of frames with receipts is answered at its own pace.
//! ACK, NACK, BEGIN, COMMIT and ABORT are accepted and do nothing (the
//! broker delivers at most once and has no transactions).

pub mod frame;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use super::session::{Outgoing, Session};
use super::signal::{self, Admit, Hub, PeerId, Rate};
use crate::http;
use frame::{Decoder, Frame, FrameError, MAX_FRAME, Version};

/// Subscriptions one session may hold.
pub const MAX_SUBSCRIPTIONS: usize = 32;
/// Destinations with at least one subscription, over all sessions.
pub const MAX_TOPICS: usize = 1024;
/// Subscriptions to one destination: bounds the copies one SEND makes.
pub const MAX_SUBSCRIBERS: usize = 128;
/// Subscriptions to shared topics that the sessions of one site (an IP
/// address, or the /64s of an IPv6 /48, see [`http::Site`]) hold
/// together: an eighth of [`MAX_TOPICS`], so that one address cannot take
/// the whole table and refuse every other visitor a new topic.
pub const MAX_TOPIC_SUBSCRIPTIONS_PER_SITE: usize = MAX_TOPICS / 8;
/// Longest topic name after `/topic/`.
pub const MAX_TOPIC_NAME: usize = 128;
/// Time from the session's start to its CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Places of a session's outbox kept for its own answers (receipts,
/// errors): other sessions' messages are dropped for it beyond that.
pub const RESERVED: usize = 16;
/// Bytes of other sessions' messages a session's outbox may hold (what
/// `/signal` allows: four of the largest frames less one kept for the
/// session's own answers).
pub const RELAY_BYTES: usize = 192 << 10;
/// The longest heart-beat interval agreed, in milliseconds.
const MAX_HEARTBEAT_MS: u64 = 3_600_000;
/// The heart-beat interval offered each way unless `[demo]
/// stomp_heartbeat` says otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Sessions per IP address (or IPv6 /64) unless `[demo]
/// stomp_sessions_per_ip` says otherwise.
pub const DEFAULT_SESSIONS_PER_IP: usize = 64;

/// WebSocket close codes (RFC 6455 §7.4.1), which SockJS carries too.
mod close {
    pub const NORMAL: u16 = 1000;
    pub const AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// The broker's settings (`[demo]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Heart-beat interval the server offers each way (zero: none).
    pub heartbeat: Duration,
    /// Members a room holds.
    pub room_size: usize,
    /// Sessions one IP address (or IPv6 /64) may hold.
    pub sessions_per_ip: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat: DEFAULT_HEARTBEAT,
            room_size: signal::DEFAULT_ROOM_SIZE,
            sessions_per_ip: DEFAULT_SESSIONS_PER_IP,
        }
    }
}

/// Subscriptions, rooms and sessions, shared by every STOMP session.
#[derive(Debug)]
pub struct Broker {
    settings: Settings,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    hub: Hub,
    next_id: PeerId,
    next_message: u64,
    members: HashMap<PeerId, Member>,
    /// Each destination subscribed to, with its subscriptions (session
    /// and subscription id).
    topics: HashMap<String, Vec<(PeerId, String)>>,
    /// Sessions held per address.
    per_ip: HashMap<http::Peer, usize>,
    /// Subscriptions to shared topics held per site.
    topic_subs_per_site: HashMap<http::Site, usize>,
}

#[derive(Debug)]
struct Member {
    out: mpsc::Sender<Outgoing>,
    version: Version,
    /// Where the session comes from, for [`MAX_TOPIC_SUBSCRIPTIONS_PER_SITE`].
    site: http::Site,
    /// Subscription id and destination, in order.
    subs: Vec<(String, String)>,
    /// The signaling room joined, if any.
    room: Option<String>,
    /// Notified when its own answers found no place: it does not read.
    kick: Arc<Notify>,
    dead: bool,
    /// The sizes of the messages put in `out`, oldest first, and their
    /// sum: of those, the transport has not taken the last `max_capacity
    /// - capacity` yet (the channel is first in, first out).
    sizes: VecDeque<usize>,
    queued: usize,
}

impl Member {
    fn new(
        out: mpsc::Sender<Outgoing>,
        version: Version,
        site: http::Site,
        kick: Arc<Notify>,
    ) -> Member {
        Member {
            out,
            version,
            site,
            subs: Vec::new(),
            room: None,
            kick,
            dead: false,
            sizes: VecDeque::new(),
            queued: 0,
        }
    }

    /// Bytes of the messages waiting in the outbox.
    fn queued_bytes(&mut self) -> usize {
        let waiting = self.out.max_capacity() - self.out.capacity();
        while self.sizes.len() > waiting {
            self.queued -= self.sizes.pop_front().unwrap_or(0);
        }
        self.queued
    }

    /// Put `text` in the outbox if it has a place; false if not.
    fn put(&mut self, text: String) -> bool {
        self.queued_bytes();
        let n = text.len();
        if self.out.try_send(Outgoing::Text(text)).is_err() {
            return false;
        }
        self.sizes.push_back(n);
        self.queued += n;
        true
    }
}

impl Broker {
    pub fn new(settings: Settings) -> Broker {
        Broker {
            state: Mutex::new(State {
                hub: Hub::new(settings.room_size),
                next_id: 1,
                next_message: 1,
                members: HashMap::new(),
                topics: HashMap::new(),
                per_ip: HashMap::new(),
                topic_subs_per_site: HashMap::new(),
            }),
            settings,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions connected (past CONNECT) now.
    pub fn sessions(&self) -> usize {
        self.state().members.len()
    }
}

/// A session's place in its address's count, given back when dropped.
struct Admission {
    broker: Arc<Broker>,
    key: http::Peer,
}

impl Admission {
    fn take(broker: &Arc<Broker>, ip: IpAddr) -> Option<Admission> {
        let key = http::Peer::of_ip(ip);
        let mut s = broker.state();
        let n = s.per_ip.entry(key).or_default();
        if *n >= broker.settings.sessions_per_ip {
            return None;
        }
        *n += 1;
        Some(Admission {
            broker: broker.clone(),
            key,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut s = self.broker.state();
        if let Some(n) = s.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.key);
            }
        }
    }
}

/// The JSON of an error for `/user/queue/errors`, shaped as `/signal`'s.
fn error_json(code: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "message": message}).to_string()
}

/// What a SEND's destination names.
#[derive(Debug, PartialEq, Eq)]
enum Destination<'a> {
    Topic(&'a str),
    /// `/topic/room/…`, written by the server only.
    RoomTopic,
    Join(&'a str),
    Leave(&'a str),
    Signal(&'a str),
    Unknown,
}

fn valid_topic(name: &str) -> bool {
    (1..=MAX_TOPIC_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b))
}

fn destination(d: &str) -> Destination<'_> {
    if d.starts_with("/topic/room/") {
        return Destination::RoomTopic;
    }
    if let Some(name) = d.strip_prefix("/topic/") {
        return if valid_topic(name) {
            Destination::Topic(name)
        } else {
            Destination::Unknown
        };
    }
    let Some(rest) = d.strip_prefix("/app/room/") else {
        return Destination::Unknown;
    };
    match rest.rsplit_once('/') {
        Some((room, "join")) => Destination::Join(room),
        Some((room, "leave")) => Destination::Leave(room),
        Some((room, "signal")) => Destination::Signal(room),
        _ => Destination::Unknown,
    }
}

/// Whether a session may subscribe to `d`.
fn subscribable(d: &str) -> bool {
    match d.strip_prefix("/topic/") {
        Some(name) => valid_topic(name),
        None => d == "/user/queue/signal" || d == "/user/queue/errors",
    }
}

/// Why a frame ends the session: an ERROR frame's `message` header and
/// body, and the close code after it.
#[derive(Debug)]
struct Fault {
    message: String,
    detail: String,
    code: u16,
}

impl Fault {
    fn new(message: &str, detail: impl Into<String>) -> Fault {
        Fault {
            message: message.into(),
            detail: detail.into(),
            code: close::POLICY,
        }
    }
}

impl From<FrameError> for Fault {
    fn from(e: FrameError) -> Fault {
        let code = match e {
            FrameError::TooLarge(_) => close::TOO_BIG,
            _ => close::POLICY,
        };
        let message = match e {
            FrameError::TooLarge(_) => "frame too large",
            _ => "malformed frame",
        };
        Fault {
            message: message.into(),
            detail: e.to_string(),
            code,
        }
    }
}

impl State {
    /// Queue `f` for `id` as an answer to its own frame; one that does not
    /// read enough to leave a place for it is marked for closing.
    fn own(&mut self, id: PeerId, f: &Frame) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if m.dead {
            return;
        }
        let text = f.serialize(m.version);
        if !m.put(text) {
            m.dead = true;
            m.kick.notify_one();
        }
    }

    /// Queue `f` for `to` on behalf of another session (or of itself, for
    /// a topic it sent to), if its outbox has more than [`RESERVED`]
    /// places and room within [`RELAY_BYTES`]; false if it was dropped.
    fn relay(&mut self, to: PeerId, f: &Frame) -> bool {
        let Some(m) = self.members.get_mut(&to) else {
            return true;
        };
        if m.dead {
            return true;
        }
        let text = f.serialize(m.version);
        m.out.capacity() > RESERVED && m.queued_bytes() + text.len() <= RELAY_BYTES && m.put(text)
    }

    /// A heart-beat for `id`, skipped when its outbox has no place.
    fn heartbeat(&mut self, id: PeerId) {
        if let Some(m) = self.members.get_mut(&id) {
            m.put("\n".into());
        }
    }

    /// `f` for `to`, as its own answer when `from` is `to`.
    fn deliver(&mut self, from: Option<PeerId>, to: PeerId, f: &Frame) -> bool {
        if from == Some(to) {
            self.own(to, f);
            true
        } else {
            self.relay(to, f)
        }
    }

    /// A MESSAGE for subscription `sub` of `to`.
    fn message(
        &mut self,
        sub: &str,
        destination: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Frame {
        let n = self.next_message;
        self.next_message += 1;
        let mut f = Frame::new("MESSAGE")
            .with("subscription", sub)
            .with("message-id", n.to_string())
            .with("destination", destination);
        if let Some(t) = content_type {
            f = f.with("content-type", t);
        }
        f = f.with("content-length", body.len().to_string());
        f.body = body.to_owned();
        f
    }

    /// The subscription ids `id` holds on `destination`.
    fn subs_of(&self, id: PeerId, destination: &str) -> Vec<String> {
        self.members.get(&id).map_or_else(Vec::new, |m| {
            m.subs
                .iter()
                .filter(|(_, d)| d == destination)
                .map(|(s, _)| s.clone())
                .collect()
        })
    }

    /// Send `body` to every subscription of `to` on `destination`, on
    /// behalf of `from`; false if any copy was dropped.
    fn send_to_subscriptions(
        &mut self,
        from: Option<PeerId>,
        to: PeerId,
        destination: &str,
        extra: &[(&str, String)],
        body: &str,
    ) -> bool {
        let mut all = true;
        for sub in self.subs_of(to, destination) {
            let mut f = self.message(&sub, destination, Some("application/json"), body);
            for (n, v) in extra {
                f = f.with(n, v.clone());
            }
            all &= self.deliver(from, to, &f);
        }
        all
    }

    /// An error about one of its frames, for `id` alone.
    fn error(&mut self, id: PeerId, code: &str, message: &str) {
        tracing::debug!(peer = id, code, message, "demo: STOMP error to the sender");
        self.send_to_subscriptions(
            Some(id),
            id,
            "/user/queue/errors",
            &[],
            &error_json(code, message),
        );
    }

    /// Route what the hub answered to a message of `from` (or to its
    /// leaving, `from` gone): errors to the sender's error queue, signals
    /// to the addressee's signal queue, room news to the room's topic.
    fn route(&mut self, from: Option<PeerId>, deliveries: Vec<signal::Delivery>) {
        let mut refused = false;
        for d in deliveries {
            let Ok(v) = serde_json::from_str::<Value>(&d.text) else {
                continue;
            };
            let kind = v["type"].as_str().unwrap_or("");
            match kind {
                "error" => {
                    self.send_to_subscriptions(from, d.to, "/user/queue/errors", &[], &d.text);
                }
                "offer" | "answer" | "candidate" => {
                    let sender = v["from"].as_u64().unwrap_or(0).to_string();
                    refused |= !self.send_to_subscriptions(
                        from,
                        d.to,
                        "/user/queue/signal",
                        &[("from", sender)],
                        &d.text,
                    );
                }
                _ => {
                    if kind == "joined"
                        && let Some(m) = self.members.get_mut(&d.to)
                    {
                        m.room = v["room"].as_str().map(str::to_owned);
                    }
                    let Some(room) = self.members.get(&d.to).and_then(|m| m.room.clone()) else {
                        continue;
                    };
                    let topic = format!("/topic/room/{room}");
                    refused |= !self.send_to_subscriptions(from, d.to, &topic, &[], &d.text);
                }
            }
        }
        if refused && let Some(from) = from {
            self.error(
                from,
                signal::Error::PeerBusy.code(),
                &signal::Error::PeerBusy.text(),
            );
        }
    }

    /// Remove `id`: out of its room (the others hear `peer-left`) and of
    /// every destination.
    fn leave(&mut self, id: PeerId) {
        let out = self.hub.disconnect(id);
        self.route(None, out);
        if let Some(m) = self.members.remove(&id) {
            for (sub, dest) in m.subs {
                self.unsubscribe_from(id, m.site, &sub, &dest);
            }
        }
    }

    /// Take subscription `sub` of `id` (from `site`) off `dest`'s list.
    fn unsubscribe_from(&mut self, id: PeerId, site: http::Site, sub: &str, dest: &str) {
        let Some(list) = self.topics.get_mut(dest) else {
            return;
        };
        let before = list.len();
        list.retain(|(p, s)| !(*p == id && s == sub));
        let removed = before - list.len();
        if list.is_empty() {
            self.topics.remove(dest);
        }
        if removed > 0
            && let Some(n) = self.topic_subs_per_site.get_mut(&site)
        {
            *n = n.saturating_sub(removed);
            if *n == 0 {
                self.topic_subs_per_site.remove(&site);
            }
        }
    }

    /// SUBSCRIBE of `id`: an error if refused.
    fn subscribe(
        &mut self,
        id: PeerId,
        sub: &str,
        dest: &str,
    ) -> Result<(), (&'static str, String)> {
        let Some(m) = self.members.get(&id) else {
            return Ok(());
        };
        if !subscribable(dest) {
            return Err((
                "unknown-destination",
                format!(
                    "cannot subscribe to {dest:?}: use /topic/NAME, /topic/room/ROOM, /user/queue/signal or /user/queue/errors"
                ),
            ));
        }
        if m.subs.iter().any(|(_, d)| d == dest) {
            return Err((
                "already-subscribed",
                format!("this session has a subscription to {dest:?} already"),
            ));
        }
        if m.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err((
                "too-many-subscriptions",
                format!("a session holds at most {MAX_SUBSCRIPTIONS} subscriptions"),
            ));
        }
        // The session's own queues and its room's topic are delivered from
        // its own subscription list; only shared topics (`/topic/NAME`,
        // fanned out to whoever subscribed) are listed by destination, and
        // only they count against the destination caps.
        if !matches!(destination(dest), Destination::Topic(_)) {
            if let Some(m) = self.members.get_mut(&id) {
                m.subs.push((sub.to_owned(), dest.to_owned()));
            }
            return Ok(());
        }
        let listed = self.topics.get(dest).map_or(0, Vec::len);
        if listed == 0 && self.topics.len() >= MAX_TOPICS {
            return Err((
                "too-many-topics",
                format!("the broker holds at most {MAX_TOPICS} destinations"),
            ));
        }
        if listed >= MAX_SUBSCRIBERS {
            return Err((
                "topic-full",
                format!("{dest:?} has {MAX_SUBSCRIBERS} subscriptions already"),
            ));
        }
        let site = m.site;
        let of_site = self.topic_subs_per_site.entry(site).or_default();
        if *of_site >= MAX_TOPIC_SUBSCRIPTIONS_PER_SITE {
            return Err((
                "too-many-topics",
                format!(
                    "the sessions of one address hold at most {MAX_TOPIC_SUBSCRIPTIONS_PER_SITE} subscriptions to /topic/NAME"
                ),
            ));
        }
        *of_site += 1;
        self.topics
            .entry(dest.to_owned())
            .or_default()
            .push((id, sub.to_owned()));
        if let Some(m) = self.members.get_mut(&id) {
            m.subs.push((sub.to_owned(), dest.to_owned()));
        }
        Ok(())
    }

    /// SEND of `id` to `dest`.
    fn send(&mut self, id: PeerId, dest: &str, frame: &Frame) {
        match destination(dest) {
            Destination::Topic(_) => {
                let subs = self.topics.get(dest).cloned().unwrap_or_default();
                let mut refused = false;
                for (to, sub) in subs {
                    let f = self.message(&sub, dest, frame.header("content-type"), &frame.body);
                    refused |= !self.relay(to, &f);
                }
                if refused {
                    self.error(id, signal::Error::PeerBusy.code(), &signal::Error::PeerBusy.text());
                }
            }
            Destination::RoomTopic => self.error(
                id,
                "reserved-destination",
                "/topic/room/… carries the server's room events; send to /app/room/ROOM/signal",
            ),
            Destination::Join(room) => {
                let out = self.hub.message(id, &json!({"type": "join", "room": room}).to_string());
                self.route(Some(id), out);
            }
            Destination::Leave(room) => {
                if !self.in_room(id, room) {
                    return;
                }
                let out = self.hub.message(id, r#"{"type":"bye"}"#);
                self.route(Some(id), out);
                if let Some(m) = self.members.get_mut(&id) {
                    m.room = None;
                }
            }
            Destination::Signal(room) => {
                if !self.in_room(id, room) {
                    return;
                }
                let Some(to) = frame.header("to").and_then(|t| t.trim().parse::<PeerId>().ok()) else {
                    return self.error(
                        id,
                        "bad-message",
                        "a signal needs a `to` header: the peer id of a member of your room",
                    );
                };
                let body = match serde_json::from_str::<Value>(&frame.body) {
                    Ok(Value::Object(mut fields)) => {
                        if !matches!(
                            fields.get("type").and_then(Value::as_str),
                            Some("offer" | "answer" | "candidate")
                        ) {
                            return self.error(
                                id,
                                "bad-message",
                                "a signal's body is {\"type\":\"offer\"|\"answer\"|\"candidate\", …}",
                            );
                        }
                        fields.insert("to".into(), to.into());
                        Value::Object(fields).to_string()
                    }
                    // Not an object: the hub says what is wrong with it.
                    _ => frame.body.clone(),
                };
                let out = self.hub.message(id, &body);
                self.route(Some(id), out);
            }
            Destination::Unknown => self.error(
                id,
                "unknown-destination",
                &format!(
                    "no destination {:?}: send to /topic/NAME or /app/room/ROOM/join, /leave or /signal",
                    truncate(dest, 64)
                ),
            ),
        }
    }

    /// Whether `id` is in `room`; if not, it is told.
    fn in_room(&mut self, id: PeerId, room: &str) -> bool {
        let current = self.members.get(&id).and_then(|m| m.room.clone());
        match current {
            Some(r) if r == room => true,
            Some(r) => {
                self.error(
                    id,
                    "not-in-room",
                    &format!("you are in room {r:?}, not {:?}", truncate(room, 64)),
                );
                false
            }
            None => {
                self.error(id, "not-joined", "join a room first: /app/room/ROOM/join");
                false
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Heart-beat intervals agreed from the client's `heart-beat` header
/// (`cx,cy`) and the server's offer (1.1 §"Heart-beating"): how often the
/// server sends, and how often the client will (zero: never).
fn heartbeats(header: Option<&str>, offer: Duration) -> Result<(Duration, Duration), Fault> {
    let (cx, cy) = match header {
        None => (0, 0),
        Some(h) => {
            let parsed = h.split_once(',').and_then(|(a, b)| {
                Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
            });
            parsed.ok_or_else(|| {
                Fault::new(
                    "malformed frame",
                    format!("heart-beat {h:?} is not two numbers"),
                )
            })?
        }
    };
    // A client's figure beyond an hour is taken as an hour.
    let (cx, cy) = (cx.min(MAX_HEARTBEAT_MS), cy.min(MAX_HEARTBEAT_MS));
    let ours = offer.as_millis() as u64;
    let agree = |can: u64, wants: u64| {
        if can == 0 || wants == 0 {
            0
        } else {
            can.max(wants)
        }
    };
    Ok((
        Duration::from_millis(agree(ours, cy)),
        Duration::from_millis(agree(cx, ours)),
    ))
}

/// One session's state while [`serve`] runs.
struct Conn {
    broker: Arc<Broker>,
    /// The client's site, for the caps per site.
    site: http::Site,
    out: mpsc::Sender<Outgoing>,
    decoder: Decoder,
    rate: Rate,
    start: Instant,
    /// Set by CONNECT.
    id: Option<PeerId>,
    version: Version,
    /// Agreed at CONNECT: the server's sending interval and the client's.
    send_every: Duration,
    recv_every: Duration,
    kick: Arc<Notify>,
}

/// What to do after a message.
enum Flow {
    Go,
    /// The session ends (an ERROR or a DISCONNECT was answered).
    Stop,
}

impl Conn {
    /// Write an ERROR for `fault` (and `receipt-id` if the frame had a
    /// receipt), then the close.
    fn fault(&self, fault: Fault, receipt: Option<&str>) {
        tracing::debug!(peer = ?self.id, message = %fault.message, detail = %fault.detail, "demo: STOMP protocol fault, closing");
        let mut f = Frame::new("ERROR").with("message", fault.message.clone());
        if let Some(r) = receipt {
            f = f.with("receipt-id", r);
        }
        let f = f.with_body("text/plain", fault.detail);
        // The version header of a refused CONNECT is on its frame.
        let _ = self.out.try_send(Outgoing::Text(f.serialize(self.version)));
        let _ = self.out.try_send(Outgoing::Close {
            code: fault.code,
            reason: fault.message,
        });
    }

    /// A decoded frame: past the rate limit (else dropped, and the
    /// sender told once per run of drops), handled.
    fn on_decoded(&mut self, frame: Frame) -> Flow {
        let now = self.start.elapsed().as_micros() as u64;
        let cost = frame.body.len()
            + frame
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 2)
                .sum::<usize>();
        match self.rate.take(now, cost.min(MAX_FRAME)) {
            Admit::Pass => self.on_frame(frame),
            Admit::DropAndWarn => {
                if let Some(id) = self.id {
                    let e = signal::Error::RateLimited;
                    self.broker.state().error(id, e.code(), &e.text());
                }
                Flow::Go
            }
            Admit::Drop => Flow::Go,
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Flow {
        let receipt = frame.header("receipt").map(str::to_owned);
        let Some(id) = self.id else {
            return match frame.command.as_str() {
                "CONNECT" | "STOMP" => self.connect(&frame),
                other => {
                    self.fault(
                        Fault::new(
                            "not connected",
                            format!("expected CONNECT or STOMP, got {other}"),
                        ),
                        receipt.as_deref(),
                    );
                    Flow::Stop
                }
            };
        };
        match self.command(id, &frame, receipt.as_deref()) {
            Ok(flow) => flow,
            Err(fault) => {
                self.fault(fault, receipt.as_deref());
                Flow::Stop
            }
        }
    }

    /// A frame after CONNECT.
    fn command(&mut self, id: PeerId, frame: &Frame, receipt: Option<&str>) -> Result<Flow, Fault> {
        let required = |name: &str| {
            frame.header(name).map(str::to_owned).ok_or_else(|| {
                Fault::new(
                    "missing header",
                    format!("{} needs a {name} header", frame.command),
                )
            })
        };
        match frame.command.as_str() {
            "SEND" => {
                let dest = required("destination")?;
                self.broker.state().send(id, &dest, frame);
            }
            "SUBSCRIBE" => {
                let dest = required("destination")?;
                let sub = match frame.header("id") {
                    Some(s) => s.to_owned(),
                    None if self.version == Version::V1_0 => dest.clone(),
                    None => {
                        return Err(Fault::new("missing header", "SUBSCRIBE needs an id header"));
                    }
                };
                let mut s = self.broker.state();
                if s.members
                    .get(&id)
                    .is_some_and(|m| m.subs.iter().any(|(i, _)| *i == sub))
                {
                    return Err(Fault::new(
                        "duplicate subscription",
                        format!("subscription id {sub:?} is in use"),
                    ));
                }
                if let Err((code, text)) = s.subscribe(id, &sub, &dest) {
                    s.error(id, code, &text);
                }
            }
            "UNSUBSCRIBE" => {
                let sub = match frame.header("id") {
                    Some(s) => s.to_owned(),
                    None if self.version == Version::V1_0 => required("destination")?,
                    None => {
                        return Err(Fault::new(
                            "missing header",
                            "UNSUBSCRIBE needs an id header",
                        ));
                    }
                };
                let mut s = self.broker.state();
                let dest = s.members.get_mut(&id).and_then(|m| {
                    let i = m.subs.iter().position(|(i, _)| *i == sub)?;
                    Some((m.site, m.subs.remove(i).1))
                });
                if let Some((site, dest)) = dest {
                    s.unsubscribe_from(id, site, &sub, &dest);
                }
            }
            "ACK" | "NACK" | "BEGIN" | "COMMIT" | "ABORT" => {}
            "DISCONNECT" => {
                if let Some(r) = receipt {
                    self.broker
                        .state()
                        .own(id, &Frame::new("RECEIPT").with("receipt-id", r));
                }
                let _ = self.out.try_send(Outgoing::Close {
                    code: close::NORMAL,
                    reason: "disconnected".into(),
                });
                return Ok(Flow::Stop);
            }
            "CONNECT" | "STOMP" => return Err(Fault::new("already connected", "a second CONNECT")),
            other => {
                return Err(Fault::new(
                    "unknown command",
                    format!("unknown command {:?}", truncate(other, 32)),
                ));
            }
        }
        if let Some(r) = receipt {
            self.broker
                .state()
                .own(id, &Frame::new("RECEIPT").with("receipt-id", r));
        }
        Ok(Flow::Go)
    }

    /// CONNECT or STOMP: agree on a version and heart-beats, join the
    /// broker, answer CONNECTED.
    fn connect(&mut self, frame: &Frame) -> Flow {
        let Some(version) = Version::negotiate(frame.header("accept-version")) else {
            let f = Frame::new("ERROR")
                .with("version", Version::supported())
                .with("message", "unsupported version")
                .with_body(
                    "text/plain",
                    format!(
                        "no common STOMP version: this server speaks {}",
                        Version::supported()
                    ),
                );
            let _ = self
                .out
                .try_send(Outgoing::Text(f.serialize(Version::V1_0)));
            let _ = self.out.try_send(Outgoing::Close {
                code: close::POLICY,
                reason: "unsupported version".into(),
            });
            return Flow::Stop;
        };
        let (send_every, recv_every) =
            match heartbeats(frame.header("heart-beat"), self.broker.settings.heartbeat) {
                Ok(h) if version > Version::V1_0 => h,
                Ok(_) => (Duration::ZERO, Duration::ZERO),
                Err(f) => {
                    self.fault(f, None);
                    return Flow::Stop;
                }
            };
        self.version = version;
        self.decoder.set_version(version);
        self.send_every = send_every;
        self.recv_every = recv_every;
        let offer = self.broker.settings.heartbeat.as_millis();
        let mut s = self.broker.state();
        let id = s.next_id;
        s.next_id += 1;
        s.members.insert(
            id,
            Member::new(self.out.clone(), version, self.site, self.kick.clone()),
        );
        self.id = Some(id);
        let f = Frame::new("CONNECTED")
            .with("version", version.as_str())
            .with("heart-beat", format!("{offer},{offer}"))
            .with("server", concat!("ferroturn/", env!("CARGO_PKG_VERSION")))
            .with("session", id.to_string())
            .with("user-name", id.to_string());
        s.own(id, &f);
        tracing::debug!(peer = id, %version, ?send_every, ?recv_every, "demo: STOMP session connected");
        Flow::Go
    }
}

/// Take the session out of the broker however it ends.
struct Leave {
    broker: Arc<Broker>,
    id: Option<PeerId>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.broker.state().leave(id);
        }
    }
}

/// Speak STOMP on `session` until the client leaves, breaks the protocol
/// or falls silent; see the module's documentation.
pub async fn serve(broker: Arc<Broker>, session: Session) {
    let Session {
        peer,
        mut incoming,
        outgoing,
    } = session;
    let mut conn = Conn {
        broker: broker.clone(),
        site: http::Site::of(http::Peer::of_ip(peer)),
        out: outgoing,
        decoder: Decoder::new(),
        rate: Rate::default(),
        start: Instant::now(),
        id: None,
        version: Version::V1_0,
        send_every: Duration::ZERO,
        recv_every: Duration::ZERO,
        kick: Arc::new(Notify::new()),
    };
    let Some(_admission) = Admission::take(&broker, peer) else {
        tracing::info!(%peer, "demo: too many STOMP sessions from one address, refusing");
        conn.fault(
            Fault::new(
                "too many sessions",
                format!(
                    "at most {} STOMP sessions per address",
                    broker.settings.sessions_per_ip
                ),
            ),
            None,
        );
        return;
    };
    let mut leave = Leave {
        broker: broker.clone(),
        id: None,
    };
    let mut last_heard = Instant::now();
    let mut beat: Option<tokio::time::Interval> = None;
    let kick = conn.kick.clone();
    let out = conn.out.clone();
    // The next frame decoded, waiting for room for its answers.
    let mut ready: Option<Frame> = None;
    loop {
        if ready.is_none() {
            match conn.decoder.next_frame() {
                Some(Ok(f)) => ready = Some(f),
                Some(Err(e)) => {
                    conn.fault(e.into(), None);
                    break;
                }
                None => {}
            }
        }
        let deadline = match conn.id {
            None => conn.start + CONNECT_TIMEOUT,
            Some(_) if conn.recv_every.is_zero() => last_heard + Duration::from_secs(86_400 * 365),
            Some(_) => last_heard + 2 * conn.recv_every,
        };
        tokio::select! {
            // More input once every frame read so far is handled.
            m = incoming.recv(), if ready.is_none() => {
                let Some(text) = m else { break };
                last_heard = Instant::now();
                conn.decoder.push(&text);
            }
            // A frame is handled once its answers (a few: a receipt, an
            // error, a copy to its own subscription) have room in the
            // outbox with [`RESERVED`] places: a client that reads nothing
            // stops being read, and is never closed for the answers to a
            // burst of its own frames.
            permits = out.reserve_many(RESERVED), if ready.is_some() => {
                let Ok(permits) = permits else { break };
                drop(permits);
                let Some(frame) = ready.take() else { continue };
                let flow = conn.on_decoded(frame);
                if leave.id.is_none() && conn.id.is_some() {
                    leave.id = conn.id;
                    if !conn.send_every.is_zero() {
                        let every = conn.send_every;
                        beat = Some(tokio::time::interval_at(tokio::time::Instant::now() + every, every));
                    }
                }
                if let Flow::Stop = flow {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let what = if conn.id.is_some() { "heart-beat timeout" } else { "no CONNECT in time" };
                conn.fault(
                    Fault { message: what.into(), detail: format!("{what}: nothing heard for {:?}", last_heard.elapsed()), code: close::AWAY },
                    None,
                );
                break;
            }
            _ = tick(&mut beat) => {
                // An EOL; skipped when the outbox is full (it is not read).
                if let Some(id) = conn.id {
                    broker.state().heartbeat(id);
                }
            }
            _ = kick.notified() => {
                tracing::info!(peer = ?conn.id, "demo: STOMP client does not read its messages, disconnecting");
                break;
            }
        }
    }
    drop(leave);
}

async fn tick(beat: &mut Option<tokio::time::Interval>) {
    match beat {
        Some(b) => {
            b.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
