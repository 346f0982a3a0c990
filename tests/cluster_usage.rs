//! Usage events in coturn's `--redis-statsdb` format (`[cluster]`): a real
//! `redis-server`, a `redis-cli PSUBSCRIBE` as a coturn billing tool would
//! run it, and allocations of the `turn` crate's client (UDP) and of
//! coturn's `turnutils_uclient` over TCP and TLS. Every message published
//! must have the shape of one coturn 4.6.1 published for the same client
//! (tests/golden/coturn-statsdb.txt, recorded from Debian's `turnserver`
//! with `--redis-statsdb`), and its counts must be what was relayed.

mod common;
mod usage_stream;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::coturn::{CoturnPeer, tool};
use common::redis::{Redis, echo_round};
use common::{KillOnDrop, LOCALHOST, PASSWORD, REALM, SECRET, ServerConfig, TempDir, USER};
use ferroturn::auth::rest_credentials;
use usage_stream::stream_entries;
use webrtc_util::Conn;

/// The ceiling of every wait for a message (they leave within
/// milliseconds; traffic within a heartbeat, 1 s here).
const CEILING: Duration = Duration::from_secs(10);

/// The usage stream's cap in the test (the least `check` allows).
const STREAM_MAX: u64 = 10;
/// Redis trims a stream by whole nodes of this many entries (`~`): the
/// test's Redis makes them small, so the cap is met within this many.
const NODE_ENTRIES: u64 = 5;

/// What coturn 4.6.1 wrote, as recorded.
const COTURN: &str = include_str!("golden/coturn-statsdb.txt");

// ---- Shapes ------------------------------------------------------------------

/// A message with what varies from allocation to allocation masked:
/// numbers as `N`, addresses as `ADDR`, a TLS version as `TLSv1.x` and a
/// cipher suite's name as `CIPHER` (kept if it is `NONE`).
fn shape(text: &str) -> String {
    text.split(", ")
        .map(|field| match field.rsplit_once('=') {
            Some((key, value)) => {
                let masked = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                    "N".to_owned()
                } else if value.parse::<SocketAddr>().is_ok() {
                    "ADDR".to_owned()
                } else if value.starts_with("TLSv1.") {
                    "TLSv1.x".to_owned()
                } else if key == "cipher" && value != "NONE" {
                    assert!(
                        value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                        "an OpenSSL cipher name: {value}"
                    );
                    "CIPHER".to_owned()
                } else {
                    value.to_owned()
                };
                format!("{key}={masked}")
            }
            None => field.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What follows the id in a channel: `status`, `traffic/peer`, …
fn suffix(channel: &str) -> &str {
    channel
        .split_once("/allocation/")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or("", |(_, s)| s)
}

/// The (channel suffix, shape) of every message coturn published in one
/// section of the recording (`udp`, `tcp`, `tls`).
fn coturn_shapes(section: &str) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    let mut inside = false;
    for line in COTURN.lines() {
        if let Some(name) = line.strip_prefix("## ") {
            inside = name == section;
            continue;
        }
        if !inside || !line.starts_with("\"publish\" ") {
            continue;
        }
        let parts: Vec<&str> = line.split("\" \"").collect();
        assert_eq!(parts.len(), 3, "{line}");
        let channel = parts[1];
        let text = parts[2].trim_end_matches('"');
        out.insert((suffix(channel).to_owned(), shape(text)));
    }
    assert!(!out.is_empty(), "no section {section} in the recording");
    out
}

// ---- The subscriber ----------------------------------------------------------

/// `redis-cli PSUBSCRIBE 'turn/realm/*/user/*/allocation/*'`, its output
/// in a file: what a tool written for coturn runs.
struct Subscriber {
    _child: KillOnDrop,
    out: PathBuf,
}

/// One message: its channel and text.
#[derive(Debug, Clone)]
struct Message {
    channel: String,
    text: String,
}

impl Message {
    /// The allocation id in the channel.
    fn id(&self) -> &str {
        self.channel
            .split_once("/allocation/")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map_or("", |(id, _)| id)
    }

    fn suffix(&self) -> &str {
        suffix(&self.channel)
    }
}

impl Subscriber {
    fn start(redis: &Redis, dir: &TempDir) -> Subscriber {
        let out = dir.path().join("psubscribe.txt");
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(["PSUBSCRIBE", "turn/realm/*/user/*/allocation/*"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli");
        let s = Subscriber {
            _child: KillOnDrop(child),
            out,
        };
        // Subscribed once it said so.
        let start = Instant::now();
        while !std::fs::read_to_string(&s.out)
            .unwrap_or_default()
            .starts_with("psubscribe\n")
        {
            assert!(start.elapsed() < CEILING, "redis-cli did not subscribe");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// Every message so far, in order.
    fn messages(&self) -> Vec<Message> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let lines: Vec<&str> = text.lines().skip(3).collect();
        lines
            .chunks(4)
            .filter(|c| c.len() == 4 && c[0] == "pmessage")
            .map(|c| Message {
                channel: c[2].to_owned(),
                text: c[3].to_owned(),
            })
            .collect()
    }

    /// Poll until `done` holds for the messages so far; them.
    fn wait(&self, what: &str, done: impl Fn(&[Message]) -> bool) -> Vec<Message> {
        let start = Instant::now();
        loop {
            let m = self.messages();
            if done(&m) {
                return m;
            }
            assert!(
                start.elapsed() < CEILING,
                "{what}: not within {CEILING:?}; messages:\n{m:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The messages of each allocation of `user`, in order, by id.
fn by_allocation(messages: &[Message], user: &str) -> BTreeMap<String, Vec<Message>> {
    let prefix = format!("turn/realm/{REALM}/user/{user}/allocation/");
    let mut out: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    for m in messages.iter().filter(|m| m.channel.starts_with(&prefix)) {
        out.entry(m.id().to_owned()).or_default().push(m.clone());
    }
    out
}

/// The four numbers of a traffic message.
fn counts(text: &str) -> [u64; 4] {
    let mut out = [0; 4];
    let fields: Vec<&str> = text.split(", ").collect();
    assert_eq!(fields.len(), 4, "{text}");
    for (i, (f, key)) in fields
        .iter()
        .zip(["rcvp", "rcvb", "sentp", "sentb"])
        .enumerate()
    {
        let (k, v) = f.split_once('=').unwrap_or_else(|| panic!("{text}"));
        assert_eq!(k, key, "{text}");
        out[i] = v.parse().unwrap_or_else(|_| panic!("{text}"));
    }
    out
}

/// Check one ended allocation's messages against coturn's: each has the
/// shape of one coturn published for the same kind of client, it starts
/// with `new`, ends as coturn's do (the last interval's traffic, `deleted`,
/// the totals), and the intervals add up to the totals. Its totals: the
/// client's and the peers'.
fn check_allocation(
    id: &str,
    list: &[Message],
    coturn: &HashSet<(String, String)>,
) -> [[u64; 4]; 2] {
    for m in list {
        let s = (m.suffix().to_owned(), shape(&m.text));
        assert!(
            coturn.contains(&s),
            "{id}: {} {:?} has a shape coturn never published: {s:?}\ncoturn's: {coturn:#?}",
            m.channel,
            m.text
        );
    }
    assert_eq!(list[0].suffix(), "status", "{id}: {list:#?}");
    assert!(list[0].text.starts_with("new lifetime="), "{id}: {list:#?}");
    let n = list.len();
    assert!(n >= 6, "{id}: {list:#?}");
    let tail: Vec<(&str, &str)> = list[n - 5..]
        .iter()
        .map(|m| {
            (
                m.suffix(),
                if m.suffix() == "status" {
                    m.text.as_str()
                } else {
                    ""
                },
            )
        })
        .collect();
    assert_eq!(
        tail,
        [
            ("traffic", ""),
            ("traffic/peer", ""),
            ("status", "deleted"),
            ("total_traffic", ""),
            ("total_traffic/peer", ""),
        ],
        "{id}: {list:#?}"
    );
    let mut sums = [[0u64; 4]; 2];
    for m in list {
        let side = match m.suffix() {
            "traffic" => 0,
            "traffic/peer" => 1,
            _ => continue,
        };
        for (s, c) in sums[side].iter_mut().zip(counts(&m.text)) {
            *s += c;
        }
    }
    let totals = [counts(&list[n - 2].text), counts(&list[n - 1].text)];
    assert_eq!(sums, totals, "{id}: the intervals do not add up: {list:#?}");
    totals
}

// ---- The node ----------------------------------------------------------------

/// A ferroturn with UDP and TCP on one port, TLS on another, `[cluster]`
/// pointed at `redis` with a 1 s heartbeat, and `/metrics`.
struct Node {
    _server: KillOnDrop,
    addr: SocketAddr,
    tls: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Node {
    fn start(redis: &Redis) -> Node {
        let dir = TempDir::new("usage-node");
        let port = common::free_port();
        let tls_port = common::free_port();
        let metrics = SocketAddr::from((LOCALHOST, common::free_port()));
        let (cert, key) = common::make_cert(dir.path(), "ferroturn");
        let cfg = ServerConfig {
            workers: Some(2),
            // coturn's uclient picks RFC 5766 channel numbers.
            legacy_channel_numbers: Some(true),
            ..ServerConfig::default()
        };
        let mut toml = cfg.to_toml(port, common::relay_block());
        toml.push_str(&format!(
            "\n[[listen]]\naddress = \"127.0.0.1:{tls_port}\"\ntransports = [\"tls\"]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ));
        toml.push_str(&format!(
            "\n[metrics]\naddress = \"{metrics}\"\n\n[cluster]\nredis = \"{}\"\nnode = \"usage-node\"\nheartbeat = 1\nusage_stream_max = {STREAM_MAX}\n",
            redis.url()
        ));
        let config = dir.path().join("ferroturn.toml");
        let log = dir.path().join("ferroturn.log");
        std::fs::write(&config, toml).unwrap();
        let addr = SocketAddr::from((LOCALHOST, port));
        let child =
            common::spawn_ferroturn(&config, &log, addr, || true).unwrap_or_else(|e| panic!("{e}"));
        let node = Node {
            _server: KillOnDrop(child),
            addr,
            tls: SocketAddr::from((LOCALHOST, tls_port)),
            metrics,
            log,
            _dir: dir,
        };
        node.wait_until("cluster up", |n| {
            n.metric("ferroturn_cluster_up") == Some(1)
        });
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Poll `ok` every 50 ms until it holds, at most [`CEILING`].
    fn wait_until(&self, what: &str, ok: impl Fn(&Node) -> bool) {
        let start = Instant::now();
        while !ok(self) {
            assert!(
                start.elapsed() < CEILING,
                "{what}: not within {CEILING:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metric(&self, name: &str) -> Option<u64> {
        common::redis::metric(self.metrics, name)
    }

    fn usage_events(&self, outcome: &str) -> u64 {
        self.metric(&format!(
            "ferroturn_usage_events_total{{outcome=\"{outcome}\"}}"
        ))
        .unwrap_or_else(|| panic!("no usage_events_total {outcome}"))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Run `turnutils_uclient` with `args` against `server` and `peer`, as
/// alice: 10 messages of 100 bytes through each of its two relays.
fn uclient(args: &[&str], server: SocketAddr, peer: &CoturnPeer) -> String {
    let mut cmd = tool("turnutils_uclient");
    cmd.args(args)
        .args([
            "-u", USER, "-w", PASSWORD, "-n", "10", "-m", "1", "-l", "100",
        ])
        .args(["-e", "127.0.0.1", "-r", &peer.port.to_string()])
        .args(["-p", &server.port().to_string(), "127.0.0.1"]);
    let out = common::run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        !out.timed_out,
        "uclient {args:?} timed out:\n{}",
        out.output
    );
    assert_eq!(out.code, Some(0), "uclient {args:?}:\n{}", out.output);
    out.output
}

/// uclient's relaying allocations of one transport, once both ended:
/// their messages by id. (It also makes one allocation that carries no
/// data, and for UDP leaves it to expire, as it does with coturn.)
fn uclient_allocations(sub: &Subscriber, kind: &str) -> BTreeMap<String, Vec<Message>> {
    let type_field = format!("type={kind},");
    let relaying = |all: &BTreeMap<String, Vec<Message>>| -> BTreeMap<String, Vec<Message>> {
        all.iter()
            .filter(|(_, l)| l[0].text.contains(&type_field))
            .filter(|(_, l)| {
                l.iter().any(|m| {
                    m.suffix() == "total_traffic/peer"
                        && m.text != "rcvp=0, rcvb=0, sentp=0, sentb=0"
                })
            })
            .map(|(id, l)| (id.clone(), l.clone()))
            .collect()
    };
    let messages = sub.wait(&format!("uclient's {kind} allocations ended"), |m| {
        relaying(&by_allocation(m, USER)).len() >= 2
    });
    relaying(&by_allocation(&messages, USER))
}

#[test]
fn usage_events_as_coturn_publishes_them() {
    let dir = TempDir::new("usage");
    let redis = Redis::start_with(&["--stream-node-max-entries", &NODE_ENTRIES.to_string()]);
    let node = Node::start(&redis);
    let sub = Subscriber::start(&redis, &dir);

    // The turn crate's client over UDP, under a REST credential: the key
    // names the full username, expiry included.
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (user, password) = rest_credentials(SECRET, "carol", expiry);
    let echo = common::EchoPeer::start();
    let rt = runtime();
    let (client_port, id) = rt.block_on(async {
        let sock = Arc::new(tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
        let client_port = sock.local_addr().unwrap().port();
        let client = common::turn_client(node.addr, sock, REALM, &user, &password).await;
        let relay = tokio::time::timeout(CEILING, client.allocate())
            .await
            .expect("allocate in time")
            .expect("allocate");
        let messages = sub.wait("new", |m| !by_allocation(m, &user).is_empty());
        let (id, list) = by_allocation(&messages, &user).into_iter().next().unwrap();
        assert_eq!(id.len(), 18, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");
        assert_eq!(
            list[0].text,
            format!(
                "new lifetime=600, type=UDP, local={}, remote=127.0.0.1:{client_port}, ssl=NONE, cipher=NONE",
                node.addr
            )
        );
        // The status key holds the last status while the allocation
        // lives, expiring with it.
        let key = format!("turn/realm/{REALM}/user/{user}/allocation/{id}/status");
        assert_eq!(redis.cli(&["GET", &key]).trim(), list[0].text);
        let ttl: u64 = redis.cli(&["TTL", &key]).trim().parse().unwrap();
        assert!((590..=600).contains(&ttl), "TTL {ttl}");

        // 10 datagrams there and back, a heartbeat's traffic message, 5 more.
        assert_eq!(echo_round(&relay, echo.addr, 10).await, 10);
        sub.wait("a traffic message within a heartbeat", |m| {
            by_allocation(m, &user)[&id].iter().any(|m| m.suffix() == "traffic/peer")
        });
        assert_eq!(echo_round(&relay, echo.addr, 5).await, 5);
        let _ = relay.close().await;
        let _ = client.close().await;
        (client_port, id)
    });
    let messages = sub.wait("the UDP allocation's end", |m| {
        by_allocation(m, &user)
            .get(&id)
            .is_some_and(|l| l.iter().any(|m| m.suffix() == "total_traffic/peer"))
    });
    let list = &by_allocation(&messages, &user)[&id];
    let [client, peer] = check_allocation(&id, list, &coturn_shapes("udp"));
    // The peers' side is the payloads: 15 of 100 bytes each way.
    assert_eq!(peer, [15, 1500, 15, 1500], "{list:#?}");
    // The client's side is its frames: as many, each with its framing
    // (a 4-byte ChannelData header, or a Send or Data indication's 36+).
    assert_eq!([client[0], client[2]], [15, 15], "{list:#?}");
    for bytes in [client[1], client[3]] {
        assert!((15 * 104..=15 * 200).contains(&bytes), "{list:#?}");
    }
    assert!(
        list.iter().any(|m| m.text
            == format!(
                "refreshed lifetime=0, type=UDP, local={}, remote=127.0.0.1:{client_port}, ssl=NONE, cipher=NONE",
                node.addr
            )),
        "{list:#?}"
    );
    let key = format!("turn/realm/{REALM}/user/{user}/allocation/{id}/status");
    assert_eq!(
        redis.cli(&["EXISTS", &key]).trim(),
        "0",
        "the status key outlived its allocation"
    );

    // coturn's uclient over TCP, then TLS: its two relaying allocations
    // each carry 10 messages of 100 bytes to the peer and back; coturn
    // published `rcvp=10, rcvb=1000, sentp=10, sentb=1000` on /peer for
    // each, and so must ferroturn.
    let peer = CoturnPeer::start();
    for (args, server, kind, section) in [
        (&["-t"][..], node.addr, "TCP", "tcp"),
        (&["-t", "-S"][..], node.tls, "TLS/TCP", "tls"),
    ] {
        uclient(args, server, &peer);
        let coturn = coturn_shapes(section);
        for (id, list) in uclient_allocations(&sub, kind) {
            let [client, peer] = check_allocation(&id, &list, &coturn);
            assert_eq!(peer, [10, 1000, 10, 1000], "{kind} {id}: {list:#?}");
            assert_eq!([client[0], client[2]], [10, 10], "{kind} {id}: {list:#?}");
            // uclient's lifetimes, as coturn granted them too.
            let statuses: Vec<String> = list
                .iter()
                .filter(|m| m.suffix() == "status")
                .map(|m| m.text.split(", ").next().unwrap().to_owned())
                .collect();
            assert_eq!(
                statuses,
                [
                    "new lifetime=777",
                    "refreshed lifetime=777",
                    "refreshed lifetime=600",
                    "refreshed lifetime=0",
                    "deleted"
                ],
                "{kind} {id}: {list:#?}"
            );
            let local = format!("local={server},");
            assert!(list[0].text.contains(&local), "{kind} {id}: {list:#?}");
        }
    }

    // The stream: the same events with node, duration and bytes, capped.
    let published = node.usage_events("published");
    assert!(published > STREAM_MAX + NODE_ENTRIES, "{published} events");
    assert_eq!(node.usage_events("dropped"), 0);
    let stream = format!("ferroturn/realm/{REALM}/usage");
    let len: u64 = redis.cli(&["XLEN", &stream]).trim().parse().unwrap();
    assert!(
        (1..=STREAM_MAX + NODE_ENTRIES).contains(&len),
        "XLEN {len} after {published} events"
    );
    let text = redis.cli(&["XREVRANGE", &stream, "+", "-"]);
    let entries = stream_entries(&text);
    assert_eq!(entries.len() as u64, len, "{text}");
    // uclient's last relaying TLS allocation, ended: its totals, node and
    // how long it lived.
    let e = entries
        .iter()
        .find(|e| e["event"] == "deleted" && e["type"] == "TLS/TCP" && e["peer_sentb"] != "0")
        .unwrap_or_else(|| panic!("no deleted TLS entry in:\n{text}"));
    assert_eq!(e["node"], "usage-node", "{e:?}");
    assert_eq!(e["user"], USER, "{e:?}");
    assert_eq!(e["realm"], REALM, "{e:?}");
    for (field, want) in [
        ("peer_sentp", "10"),
        ("peer_sentb", "1000"),
        ("peer_rcvp", "10"),
        ("peer_rcvb", "1000"),
        ("rcvp", "10"),
        ("sentp", "10"),
    ] {
        assert_eq!(e[field], want, "{field}: {e:?}");
    }
    e["duration"].parse::<u64>().expect("duration in seconds");
    assert_eq!(e["id"].len(), 18, "{e:?}");
    assert_eq!(e["local"], node.tls.to_string(), "{e:?}");
    assert!(!node.log().contains("panicked"), "{}", node.log());
}

/// Redis away: relaying goes on, the events meanwhile are dropped and
/// counted; once Redis is back, new events arrive again.
#[test]
fn redis_away_drops_events_and_relaying_goes_on() {
    let dir = TempDir::new("usage-away");
    let mut redis = Redis::start();
    let node = Node::start(&redis);
    redis.kill();
    node.wait_until("cluster down", |n| {
        n.metric("ferroturn_cluster_up") == Some(0)
    });
    let echo = common::EchoPeer::start();
    let rt = runtime();
    let relay_once = || {
        rt.block_on(async {
            let sock = Arc::new(tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
            let client = common::turn_client(node.addr, sock, REALM, USER, PASSWORD).await;
            let relay = tokio::time::timeout(CEILING, client.allocate())
                .await
                .expect("allocate in time")
                .expect("allocate");
            let back = echo_round(&relay, echo.addr, 10).await;
            let _ = relay.close().await;
            let _ = client.close().await;
            back
        })
    };
    assert_eq!(relay_once(), 10, "relaying with Redis away");
    // Created, refreshed (0), deleted at least: none reached Redis.
    node.wait_until("drops counted", |n| n.usage_events("dropped") >= 3);
    assert_eq!(node.usage_events("published"), 0);

    redis.restart();
    let sub = Subscriber::start(&redis, &dir);
    node.wait_until("cluster back", |n| {
        n.metric("ferroturn_cluster_up") == Some(1)
    });
    // The usage task reconnects on its own (backoff at most 5 s): an
    // allocation made now is reported whole, or, if it raced the
    // reconnect, the next one is.
    let start = Instant::now();
    loop {
        assert_eq!(relay_once(), 10);
        let ended = by_allocation(&sub.messages(), USER).values().any(|l| {
            l.first().is_some_and(|m| m.text.starts_with("new "))
                && l.iter().any(|m| m.suffix() == "total_traffic/peer")
        });
        if ended {
            break;
        }
        assert!(
            start.elapsed() < 2 * CEILING,
            "no events after Redis came back:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(node.usage_events("published") > 0);
}
