//! Usage events in coturn's format, as coturn 4.6 writes them with
//! `--redis-statsdb`, so that billing and monitoring tools written for
//! coturn's Redis statistics work unchanged; and the same events on one
//! capped stream for consumers that want a durable log.
//!
//! For an allocation of user `<name>` (the full username) in `<realm>`,
//! with `<id>` its number in 18 digits, under
//! `turn/realm/<realm>/user/<name>/allocation/<id>/`:
//!
//! - `status`: SET (expiring with the allocation's lifetime) and PUBLISH
//!   `new lifetime=600, type=UDP, local=…, remote=…, ssl=NONE, cipher=NONE`
//!   when it is created, `refreshed lifetime=…, …` at every Refresh (0 as it
//!   is deleted), then DEL and PUBLISH `deleted` when it ends;
//! - `traffic` and `traffic/peer`: PUBLISH `rcvp=…, rcvb=…, sentp=…,
//!   sentb=…`, the counts since the last such message, every
//!   `cluster.heartbeat` for an allocation whose counts moved, and once
//!   more as it ends (coturn sends them every 4,096 packets and at the
//!   end: a count of packets makes a busy allocation talk more often, an
//!   idle one never; a fixed interval bounds the messages per allocation);
//! - `total_traffic` and `total_traffic/peer`: PUBLISH the whole
//!   allocation's counts after `deleted`.
//!
//! `rcv`/`sent` are seen from the server: on the plain channels what the
//! client sent and was sent (its frames, framing included), on `/peer`
//! what the peers sent and were sent (payloads).
//!
//! The engines state the facts ([`crate::engine::usage`]); the hosts put
//! them on one bounded queue to this task without waiting (a full queue
//! drops the fact, counted); this task writes them, a batch per pipeline.
//! Redis away: facts are dropped (counted) until it is back; relaying
//! never waits for any of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{BACKOFF_FIRST, BACKOFF_MOST, COMMAND_TIMEOUT, LOG, Status};
use crate::addr::Via;
use crate::config::Config;
use crate::engine::stats::labels;
use crate::engine::usage::{Counts, Fact, Usage};
use crate::io::Control;

/// Facts waiting for the task, from every engine together; beyond, a fact
/// is dropped and counted.
pub const QUEUE: usize = 8192;

/// Facts written in one pipeline at most.
const BATCH: usize = 256;

labels! {
    /// What became of a usage fact.
    pub enum Outcome("outcome") {
        /// Written to Redis.
        Published = "published",
        /// Dropped: the queue was full, or Redis did not take it.
        Dropped = "dropped",
    }
}

/// How many facts came to each [`Outcome`]; shared with the metrics.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; Outcome::COUNT]);

impl Counters {
    fn add(&self, o: Outcome, n: usize) {
        self.0[o.index()].fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> [u64; Outcome::COUNT] {
        Outcome::ALL.map(|o| self.0[o.index()].load(Ordering::Relaxed))
    }
}

/// A usage fact as the host hands it on: with the TLS names of its
/// client's connection, if it has them.
struct Queued {
    usage: Box<Usage>,
    tls: Option<TlsNames>,
}

/// A host's way to the task: never waits.
#[derive(Clone)]
pub struct Link {
    tx: mpsc::Sender<Queued>,
    status: Arc<Status>,
}

impl Link {
    /// Queue `usage`; dropped (and counted) if the queue is full.
    pub fn send(&self, usage: Box<Usage>, tls: Option<TlsNames>) {
        if self.tx.try_send(Queued { usage, tls }).is_err() {
            self.status.usage.add(Outcome::Dropped, 1);
        }
    }
}

/// The key names, the node's identity and the listeners' addresses: what
/// turns a fact into coturn's messages.
struct Names {
    realm: String,
    node: String,
    /// The `[[listen]]` addresses, by index (what coturn prints as `local`).
    listen: Vec<SocketAddr>,
    /// The first 3 of an id's 18 digits: this node's name hashed (as
    /// coturn puts its thread's number there).
    prefix: u64,
    /// Added to allocation numbers for the other 15: microseconds at
    /// start, so that a restarted node does not reuse its ids.
    base: u64,
    /// The stream's key and its length cap.
    stream: String,
    stream_max: u64,
}

/// 10^15: the room for allocation numbers in an id.
const SERIALS: u64 = 1_000_000_000_000_000;

impl Names {
    fn new(config: &Config, node: &str, stream_max: u64) -> Names {
        let prefix = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) % 1000;
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
            % SERIALS;
        let realm = &config.restart.realm;
        Names {
            realm: realm.clone(),
            node: node.to_owned(),
            listen: config.restart.listen.iter().map(|l| l.address).collect(),
            prefix,
            base,
            stream: stream_key(realm),
            stream_max,
        }
    }

    /// The 18 digits of an allocation's id.
    fn id(&self, serial: u64) -> String {
        format!("{:03}{:015}", self.prefix, (self.base + serial) % SERIALS)
    }

    /// `turn/realm/<realm>/user/<name>/allocation/<id>/<what>`.
    fn key(&self, u: &Usage, id: &str, what: &str) -> String {
        format!(
            "turn/realm/{}/user/{}/allocation/{id}/{what}",
            self.realm, u.user
        )
    }

    /// The listener the client came through, as coturn's `local`.
    fn local(&self, via: Via) -> String {
        let i = via.listener() as usize;
        // Extra listeners (NAT behaviour discovery) are numbered after
        // `[[listen]]`: the primary one stands for them.
        match self.listen.get(i).or(self.listen.first()) {
            Some(a) => a.to_string(),
            None => "0.0.0.0:0".to_owned(),
        }
    }
}

/// The stream every node of a realm appends its usage events to.
pub fn stream_key(realm: &str) -> String {
    format!("ferroturn/realm/{realm}/usage")
}

/// coturn's transport name of a client: `UDP`, `TCP`, `TLS/TCP` or `DTLS`.
fn transport(via: Via) -> &'static str {
    match via {
        Via::Udp(_) => "UDP",
        Via::Dtls(_) => "DTLS",
        Via::Stream { tls: false, .. } => "TCP",
        Via::Stream { tls: true, .. } => "TLS/TCP",
    }
}

/// A TLS connection's version and cipher suite as OpenSSL names them, and
/// so coturn in its `ssl=` and `cipher=` fields: `TLSv1.3`,
/// `TLS_AES_256_GCM_SHA384`; `TLSv1.2`, `ECDHE-RSA-AES256-GCM-SHA384`.
pub type TlsNames = (&'static str, &'static str);

/// The [`TlsNames`] of a connection whose handshake is done (`UNKNOWN`,
/// coturn's word for a method it cannot name, for anything else).
pub fn openssl_names(c: &rustls::ServerConnection) -> TlsNames {
    use rustls::{CipherSuite as S, ProtocolVersion as V};
    let version = match c.protocol_version() {
        Some(V::TLSv1_3) => "TLSv1.3",
        Some(V::TLSv1_2) => "TLSv1.2",
        _ => "UNKNOWN",
    };
    let suite = match c.negotiated_cipher_suite().map(|s| s.suite()) {
        Some(S::TLS13_AES_256_GCM_SHA384) => "TLS_AES_256_GCM_SHA384",
        Some(S::TLS13_AES_128_GCM_SHA256) => "TLS_AES_128_GCM_SHA256",
        Some(S::TLS13_CHACHA20_POLY1305_SHA256) => "TLS_CHACHA20_POLY1305_SHA256",
        Some(S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384) => "ECDHE-ECDSA-AES256-GCM-SHA384",
        Some(S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256) => "ECDHE-ECDSA-AES128-GCM-SHA256",
        Some(S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256) => "ECDHE-ECDSA-CHACHA20-POLY1305",
        Some(S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) => "ECDHE-RSA-AES256-GCM-SHA384",
        Some(S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256) => "ECDHE-RSA-AES128-GCM-SHA256",
        Some(S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256) => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "UNKNOWN",
    };
    (version, suite)
}

/// coturn's `ssl` and `cipher` of a client: `NONE` without TLS.
fn tls_names(via: Via, tls: Option<TlsNames>) -> TlsNames {
    match (via, tls) {
        (Via::Stream { tls: true, .. } | Via::Dtls(_), Some(names)) => names,
        (Via::Stream { tls: true, .. } | Via::Dtls(_), None) => ("UNKNOWN", "UNKNOWN"),
        _ => ("NONE", "NONE"),
    }
}

/// A status line: `new lifetime=600, type=UDP, local=…, remote=…, ssl=…,
/// cipher=…`.
fn status_text(
    names: &Names,
    u: &Usage,
    tls: Option<TlsNames>,
    word: &str,
    lifetime: u32,
) -> String {
    let (ssl, cipher) = tls_names(u.client.via, tls);
    format!(
        "{word} lifetime={lifetime}, type={}, local={}, remote={}, ssl={ssl}, cipher={cipher}",
        transport(u.client.via),
        names.local(u.client.via),
        u.client.remote,
    )
}

/// The client's side of `c` (`peer` false) or the peers' side, as coturn
/// writes it: received by the server, then sent.
fn traffic_text(c: &Counts, peer: bool) -> String {
    let (rcv, sent) = if peer {
        (c.from_peers, c.to_peers)
    } else {
        (c.from_client, c.to_client)
    };
    format!(
        "rcvp={}, rcvb={}, sentp={}, sentb={}",
        rcv.packets, rcv.bytes, sent.packets, sent.bytes
    )
}

/// Add the commands that write `u` to `pipe`: coturn's keys and messages,
/// then the stream entry.
fn write(names: &Names, pipe: &mut redis::Pipeline, q: &Queued) {
    let u = &q.usage;
    let id = names.id(u.serial);
    let status = names.key(u, &id, "status");
    let publish_traffic = |pipe: &mut redis::Pipeline, what: &str, c: &Counts| {
        pipe.publish(names.key(u, &id, what), traffic_text(c, false))
            .ignore();
        let peer = format!("{what}/peer");
        pipe.publish(names.key(u, &id, &peer), traffic_text(c, true))
            .ignore();
    };
    let (event, lifetime, counts) = match &u.fact {
        Fact::Created { lifetime } | Fact::Refreshed { lifetime } => {
            let word = match u.fact {
                Fact::Created { .. } => "new",
                _ => "refreshed",
            };
            let text = status_text(names, u, q.tls, word, *lifetime);
            // The key lives as long as the allocation (coturn's never
            // expires: a node that dies would leave it for good).
            pipe.cmd("SET")
                .arg(&status)
                .arg(&text)
                .arg("EX")
                .arg((*lifetime).max(1))
                .ignore();
            pipe.publish(&status, &text).ignore();
            (word, Some(*lifetime), None)
        }
        Fact::Traffic(c) => {
            publish_traffic(pipe, "traffic", c);
            ("traffic", None, Some(*c))
        }
        Fact::Deleted { last, total } => {
            publish_traffic(pipe, "traffic", last);
            pipe.del(&status).ignore();
            pipe.publish(&status, "deleted").ignore();
            publish_traffic(pipe, "total_traffic", total);
            ("deleted", None, Some(*total))
        }
    };
    let via = u.client.via;
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&names.stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(names.stream_max)
        .arg("*")
        .arg("event")
        .arg(event)
        .arg("node")
        .arg(&names.node)
        .arg("realm")
        .arg(&names.realm)
        .arg("user")
        .arg(&u.user)
        .arg("id")
        .arg(&id)
        .arg("type")
        .arg(transport(via))
        .arg("local")
        .arg(names.local(via))
        .arg("remote")
        .arg(u.client.remote.to_string())
        .arg("duration")
        .arg(u.age.as_secs());
    if let Some(l) = lifetime {
        xadd.arg("lifetime").arg(l);
    }
    if let Some(c) = counts {
        for (field, n) in [
            ("rcvp", c.from_client.packets),
            ("rcvb", c.from_client.bytes),
            ("sentp", c.to_client.packets),
            ("sentb", c.to_client.bytes),
            ("peer_rcvp", c.from_peers.packets),
            ("peer_rcvb", c.from_peers.bytes),
            ("peer_sentp", c.to_peers.packets),
            ("peer_sentb", c.to_peers.bytes),
        ] {
            xadd.arg(field).arg(n);
        }
    }
    pipe.add_command(xadd).ignore();
}

/// Start the usage task: every engine of `control` makes usage facts from
/// now on and hands them to it.
pub fn start(
    config: &Config,
    control: &Control,
    client: redis::Client,
    status: Arc<Status>,
    node: &str,
    heartbeat: Duration,
    stream_max: u64,
) {
    let (tx, rx) = mpsc::channel(QUEUE);
    control.usage_link(&Link {
        tx,
        status: status.clone(),
    });
    let task = Publisher {
        names: Names::new(config, node, stream_max),
        client,
        rx,
        status,
        control: control.clone(),
        every: heartbeat,
    };
    tokio::spawn(task.run());
}

struct Publisher {
    names: Names,
    client: redis::Client,
    rx: mpsc::Receiver<Queued>,
    status: Arc<Status>,
    control: Control,
    /// How often the engines report traffic.
    every: Duration,
}

impl Publisher {
    async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        let mut tick = tokio::time::interval(self.every);
        loop {
            let conn = tokio::time::timeout(
                COMMAND_TIMEOUT,
                self.client.get_multiplexed_async_connection(),
            )
            .await;
            if let Ok(Ok(conn)) = conn {
                backoff = BACKOFF_FIRST;
                let lost = self.serve(conn, &mut tick).await;
                tracing::debug!(target: LOG, "usage events: {lost}; dropped until Redis is back");
            }
            // Away: what comes meanwhile is dropped.
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    Some(_) = self.rx.recv() => self.status.usage.add(Outcome::Dropped, 1),
                    _ = tick.tick() => self.control.usage_traffic(),
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MOST);
        }
    }

    /// Write facts as they come until a write fails.
    async fn serve(
        &mut self,
        mut conn: redis::aio::MultiplexedConnection,
        tick: &mut tokio::time::Interval,
    ) -> String {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                n = self.rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return "queue closed".to_owned();
                    }
                    let mut pipe = redis::pipe();
                    for u in &batch {
                        write(&self.names, &mut pipe, u);
                    }
                    batch.clear();
                    let done =
                        tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
                    match done {
                        Ok(Ok(())) => self.status.usage.add(Outcome::Published, n),
                        Ok(Err(e)) => {
                            self.status.usage.add(Outcome::Dropped, n);
                            return format!("write: {e}");
                        }
                        Err(_) => {
                            self.status.usage.add(Outcome::Dropped, n);
                            return "write: timed out".to_owned();
                        }
                    }
                }
                _ = tick.tick() => self.control.usage_traffic(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::ClientAddr;
    use crate::engine::stats::TrafficCount;

    fn names() -> Names {
        Names {
            realm: "example.org".into(),
            node: "n1".into(),
            listen: vec!["127.0.0.1:3478".parse().unwrap()],
            prefix: 1,
            base: 0,
            stream: stream_key("example.org"),
            stream_max: 1000,
        }
    }

    fn usage(via: Via, fact: Fact) -> Usage {
        Usage {
            serial: 2,
            user: "1700000000:alice".into(),
            client: ClientAddr {
                remote: "127.0.0.1:47156".parse().unwrap(),
                via,
            },
            age: Duration::from_secs(3),
            fact,
        }
    }

    /// A host never waits: with the queue full a fact is dropped, and
    /// counted; nothing beyond the queue is held.
    #[test]
    fn a_full_queue_drops_and_counts() {
        let status = Arc::new(Status::default());
        let (tx, mut rx) = mpsc::channel(2);
        let link = Link {
            tx,
            status: status.clone(),
        };
        for _ in 0..5 {
            link.send(
                Box::new(usage(Via::Udp(0), Fact::Created { lifetime: 600 })),
                None,
            );
        }
        assert_eq!(status.usage_events(), [0, 3]);
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }

    /// The texts are coturn 4.6.1's, as it published them for
    /// turnutils_uclient (see tests/cluster_usage.rs).
    #[test]
    fn texts_are_coturns() {
        let n = names();
        let u = usage(Via::Udp(0), Fact::Created { lifetime: 600 });
        assert_eq!(n.id(u.serial), "001000000000000002");
        assert_eq!(
            n.key(&u, &n.id(u.serial), "status"),
            "turn/realm/example.org/user/1700000000:alice/allocation/001000000000000002/status"
        );
        assert_eq!(
            status_text(&n, &u, None, "new", 600),
            "new lifetime=600, type=UDP, local=127.0.0.1:3478, remote=127.0.0.1:47156, ssl=NONE, cipher=NONE"
        );
        let tcp = Via::Stream {
            listener: 0,
            conn: 1,
            tls: false,
        };
        assert!(
            status_text(
                &n,
                &usage(tcp, Fact::Refreshed { lifetime: 0 }),
                None,
                "refreshed",
                0
            )
            .starts_with("refreshed lifetime=0, type=TCP, ")
        );
        let c = Counts {
            from_client: TrafficCount {
                packets: 18,
                bytes: 1908,
            },
            to_client: TrafficCount {
                packets: 18,
                bytes: 1748,
            },
            from_peers: TrafficCount {
                packets: 10,
                bytes: 1000,
            },
            to_peers: TrafficCount {
                packets: 10,
                bytes: 1000,
            },
        };
        assert_eq!(
            traffic_text(&c, false),
            "rcvp=18, rcvb=1908, sentp=18, sentb=1748"
        );
        assert_eq!(
            traffic_text(&c, true),
            "rcvp=10, rcvb=1000, sentp=10, sentb=1000"
        );
    }
}
