//! Users and secrets from Redis (`[cluster]`), in coturn's schema: a real
//! `redis-server` on a loopback port, changed with `redis-cli` as an
//! operator (or coturn's tools) would, and ferroturn following it without
//! a reload; Redis killed and restarted under it; no KEYS or SCAN ever;
//! a spray of unknown names costs at most one read each.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{Redis, echo_round};
use common::{LOCALHOST, REALM, ServerConfig, TempDir};
use ferroturn::auth::{key_hex, rest_credentials};
use ferroturn::proto::integrity::{ALGORITHM_MD5, ALGORITHM_SHA256, Key, Mac, Signer};
use ferroturn::proto::stun::{self as wire, Request, User};
use stun::attributes::ATTR_NONCE;
use stun::message::METHOD_ALLOCATE;
use webrtc_util::Conn;

/// The ceiling of every wait for a change to show (the promise is 1 s).
const CEILING: Duration = Duration::from_secs(10);

fn user_key(name: &str, what: &str) -> String {
    format!("turn/realm/{REALM}/user/{name}/{what}")
}

fn secret_set() -> String {
    format!("turn/realm/{REALM}/secret")
}

/// The hex of a long-term key as coturn's turnadmin stores it (no `0x`).
fn hex(key: &Key) -> String {
    key_hex(key)[2..].to_owned()
}

/// A ferroturn with `[cluster]` pointed at `redis` and `/metrics` on.
struct Node {
    server: common::KillOnDrop,
    addr: SocketAddr,
    metrics: SocketAddr,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl Node {
    fn start(redis: &Redis, users: Vec<(String, String)>) -> Node {
        let node = Node::start_without_waiting(redis, users);
        node.wait_for(
            |n| n.cluster_up() == Some(1),
            "the cluster store up at start",
        );
        node
    }

    /// Start, whether or not Redis answers.
    fn start_without_waiting(redis: &Redis, users: Vec<(String, String)>) -> Node {
        Node::spawn(redis, users, true)
    }

    /// Start; with `trust`, trusting a TLS Redis's certificate.
    fn spawn(redis: &Redis, users: Vec<(String, String)>, trust: bool) -> Node {
        let dir = TempDir::new("cluster-node");
        let port = common::free_port();
        let metrics = SocketAddr::from((LOCALHOST, common::free_port()));
        let cfg = ServerConfig {
            workers: Some(2),
            users,
            limits: vec![
                ("allocations_per_user", "1000".into()),
                ("unauthenticated_rate", "0".into()),
            ],
            ..ServerConfig::default()
        };
        let mut toml = cfg.to_toml(port, common::relay_block());
        toml.push_str(&format!(
            "\n[metrics]\naddress = \"{metrics}\"\n\n[cluster]\nredis = \"{}\"\nnode = \"test-node\"\n",
            redis.url()
        ));
        let config = dir.path().join("ferroturn.toml");
        let log = dir.path().join("ferroturn.log");
        std::fs::write(&config, toml).unwrap();
        let addr = SocketAddr::from((LOCALHOST, port));
        // The server trusts a TLS Redis's certificate as an operator's
        // private CA: through SSL_CERT_FILE.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
        cmd.arg("--config").arg(&config).env_remove("RUST_LOG");
        if let Some(cert) = redis.tls.as_ref().filter(|_| trust) {
            cmd.env("SSL_CERT_FILE", cert);
        }
        let file = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn ferroturn");
        if let Err(e) = common::wait_ready(&mut child, addr, &log, || true) {
            let _ = child.kill();
            panic!("{e}");
        }
        Node {
            server: common::KillOnDrop(child),
            addr,
            metrics,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ferroturn_cluster_up` from `/metrics`.
    fn cluster_up(&self) -> Option<u64> {
        common::redis::metric(self.metrics, "ferroturn_cluster_up")
    }

    /// Poll `ok` every 50 ms until it holds, at most [`CEILING`].
    fn wait_for(&self, ok: impl Fn(&Node) -> bool, what: &str) -> Duration {
        let start = Instant::now();
        while !ok(self) {
            assert!(
                start.elapsed() < CEILING,
                "{what}: not within {CEILING:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// An Allocate from a fresh socket, signed for `user`/`password` with
    /// `algorithm`'s key: `None` on success, else the error code (or 0 for
    /// no answer).
    fn allocate(&self, user: &str, password: &str, algorithm: u16) -> Option<u16> {
        let sock = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let ask = |packet: &[u8]| -> Option<stun::message::Message> {
            sock.send_to(packet, self.addr).ok()?;
            let mut buf = [0u8; 1500];
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            wire::decode(&buf[..n])
        };
        let Some(challenge) = ask(&Request::new(METHOD_ALLOCATE).transport(17).bytes()) else {
            return Some(0);
        };
        let nonce = wire::text(&challenge, ATTR_NONCE).expect("a NONCE in the 401");
        let key = match algorithm {
            ALGORITHM_SHA256 => Key::sha256(user, REALM, password),
            _ => Key::md5(user, REALM, password),
        };
        let signer = Signer {
            key,
            mac: Mac::Sha1,
        };
        let alg = (algorithm == ALGORITHM_SHA256).then_some(algorithm);
        let req = Request::new(METHOD_ALLOCATE).transport(17).sign_with(
            User::Name(user),
            REALM,
            &nonce,
            alg,
            &signer,
        );
        match ask(&req) {
            Some(answer) => wire::error_code(&answer),
            None => Some(0),
        }
    }

    fn md5(&self, user: &str, password: &str) -> Option<u16> {
        self.allocate(user, password, ALGORITHM_MD5)
    }
}

/// An allocation with the `turn` crate's client (MD5 only), relaying.
async fn turn_allocates(node: &Node, user: &str, password: &str) -> bool {
    let sock = Arc::new(tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
    let client = common::turn_client(node.addr, sock, REALM, user, password).await;
    let ok = matches!(
        tokio::time::timeout(CEILING, client.allocate()).await,
        Ok(Ok(_))
    );
    let _ = client.close().await;
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_secrets_follow_redis_and_survive_its_restart() {
    let mut redis = Redis::start();
    // Redis defines "alice" too: the configuration's alice wins, with a
    // warning.
    redis.cli(&["SET", &user_key("alice", "password"), "not-wonderland"]);
    let node = Node::start(&redis, vec![("alice".into(), "wonderland".into())]);
    assert!(
        node.log()
            .contains("user defined in both [auth] users and Redis"),
        "{}",
        node.log()
    );
    assert_eq!(node.md5("alice", "wonderland"), None);
    assert_eq!(node.md5("alice", "not-wonderland"), Some(401));

    // A user by MD5 key (coturn's turnadmin -a), with the turn crate's client.
    assert_eq!(
        node.md5("carol", "tea-party"),
        Some(401),
        "not yet in Redis"
    );
    let carol = hex(&Key::md5("carol", REALM, "tea-party"));
    redis.cli(&["SET", &user_key("carol", "key"), &carol]);
    let took = node.wait_for(|n| n.md5("carol", "tea-party").is_none(), "carol added");
    eprintln!("carol added: allocates after {took:?}");
    assert!(turn_allocates(&node, "carol", "tea-party").await);
    assert_eq!(node.md5("carol", "wrong"), Some(401));

    // A user by SHA-256 key: PASSWORD-ALGORITHM SHA-256 only.
    let erin = hex(&Key::sha256("erin", REALM, "pw-256"));
    assert_eq!(erin.len(), 64);
    redis.cli(&["SET", &user_key("erin", "key"), &erin]);
    node.wait_for(
        |n| n.allocate("erin", "pw-256", ALGORITHM_SHA256).is_none(),
        "erin (SHA-256 key) added",
    );
    assert_eq!(node.md5("erin", "pw-256"), Some(401), "no MD5 key for erin");

    // Removed: refused within the ceiling (the promise is 1 s).
    redis.cli(&["DEL", &user_key("carol", "key")]);
    let took = node.wait_for(
        |n| n.md5("carol", "tea-party") == Some(401),
        "carol removed",
    );
    eprintln!("carol removed: refused after {took:?}");

    // A password changed in Redis.
    redis.cli(&["SET", &user_key("dave", "password"), "one"]);
    node.wait_for(|n| n.md5("dave", "one").is_none(), "dave added");
    redis.cli(&["SET", &user_key("dave", "password"), "two"]);
    node.wait_for(|n| n.md5("dave", "two").is_none(), "dave's new password");
    assert_eq!(node.md5("dave", "one"), Some(401));

    // A secret added to the set verifies REST credentials.
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (rest_user, rest_pass) = rest_credentials("from-redis", "frank", expiry);
    assert_eq!(node.md5(&rest_user, &rest_pass), Some(401));
    redis.cli(&["SADD", &secret_set(), "from-redis"]);
    node.wait_for(
        |n| n.md5(&rest_user, &rest_pass).is_none(),
        "the new secret",
    );
    assert!(turn_allocates(&node, &rest_user, &rest_pass).await);

    // A client relaying throughout, under the configuration's alice (whose
    // requests never need Redis): nothing of it is lost below.
    let peer = common::EchoPeer::start();
    let sock = Arc::new(tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
    let relaying = common::turn_client(node.addr, sock, REALM, "alice", "wonderland").await;
    let relay = tokio::time::timeout(CEILING, relaying.allocate())
        .await
        .expect("Allocate timed out")
        .expect("alice allocates");
    assert_eq!(
        echo_round(&relay, peer.addr, 20).await,
        20,
        "before the kill"
    );

    // Redis killed: what the node has seen keeps working, the metric says
    // down.
    redis.kill();
    node.wait_for(|n| n.cluster_up() == Some(0), "cluster_up 0 after the kill");
    assert!(node.log().contains("cluster store unreachable"));
    assert!(
        turn_allocates(&node, "dave", "two").await,
        "cached user while Redis is down"
    );
    let seen = (
        node.allocate("erin", "pw-256", ALGORITHM_SHA256),
        node.md5(&rest_user, &rest_pass),
        node.md5("alice", "wonderland"),
    );
    assert_eq!(seen, (None, None, None), "{}", node.log());
    assert_eq!(
        echo_round(&relay, peer.addr, 20).await,
        20,
        "while Redis is down"
    );

    // Restarted (empty: no persistence): up again, and a new user works.
    redis.restart();
    node.wait_for(
        |n| n.cluster_up() == Some(1),
        "cluster_up 1 after the restart",
    );
    redis.cli(&["SET", &user_key("grace", "password"), "hopper"]);
    node.wait_for(
        |n| n.md5("grace", "hopper").is_none(),
        "grace after the restart",
    );
    // Converged: the new Redis has no dave, and the node forgot him.
    node.wait_for(
        |n| n.md5("dave", "two") == Some(401),
        "dave gone with the old Redis",
    );
    assert_eq!(
        echo_round(&relay, peer.addr, 20).await,
        20,
        "after the restart"
    );
    // A reload warns again about the name both define.
    redis.cli(&[
        "SET",
        &user_key("alice", "key"),
        &hex(&Key::md5("alice", REALM, "x")),
    ]);
    let warned = |n: &Node| n.log().matches("user defined in both").count();
    let before = warned(&node);
    let hup = Command::new("kill")
        .args(["-HUP", &node.server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    node.wait_for(|n| warned(n) > before, "the warning again on reload");
    for scan in ["keys", "scan"] {
        assert_eq!(redis.calls(scan), 0, "{scan} issued");
    }
    let _ = relay.close().await;
    let _ = relaying.close().await;
    drop(node);
}

#[test]
fn a_spray_of_unknown_names_costs_at_most_one_read_each() {
    let redis = Redis::start();
    let node = Node::start(&redis, vec![("alice".into(), "wonderland".into())]);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let names = 1000;
    for i in 0..names {
        // Each name twice: the second costs no read.
        let name = format!("spray-{i}-{:x}", i * 7919);
        assert_eq!(node.md5(&name, "x"), Some(401), "{name}");
        assert_eq!(node.md5(&name, "x"), Some(401), "{name} again");
    }
    let reads = redis.calls("get") + redis.calls("mget");
    eprintln!("{names} unknown names, each twice: {reads} reads");
    assert!(
        reads >= 1 && reads <= names,
        "{reads} reads for {names} names"
    );
    for scan in ["keys", "scan"] {
        assert_eq!(redis.calls(scan), 0, "{scan} issued");
    }
    assert_eq!(node.md5("alice", "wonderland"), None);
}

#[test]
fn a_redis_that_refuses_config_gets_a_warning_and_works_with_its_own_events() {
    // As a managed Redis: CONFIG renamed away, the events set by its operator.
    let redis = Redis::start_with(&[
        "--rename-command",
        "CONFIG",
        "",
        "--notify-keyspace-events",
        "Kg$sx",
    ]);
    let node = Node::start(&redis, vec![("alice".into(), "wonderland".into())]);
    assert!(
        node.log().contains("cannot turn on keyspace notifications"),
        "{}",
        node.log()
    );
    redis.cli(&["SET", &user_key("heidi", "password"), "alps"]);
    node.wait_for(|n| n.md5("heidi", "alps").is_none(), "heidi added");
    redis.cli(&["DEL", &user_key("heidi", "password")]);
    node.wait_for(|n| n.md5("heidi", "alps") == Some(401), "heidi removed");
}

#[test]
fn a_node_started_without_redis_serves_its_config_users_and_connects_later() {
    let mut redis = Redis::start();
    redis.kill();
    let node = Node::start_without_waiting(&redis, vec![("alice".into(), "wonderland".into())]);
    node.wait_for(|n| n.cluster_up() == Some(0), "cluster_up 0");
    node.wait_for(
        |n| n.log().contains("cluster store unreachable"),
        "the warning",
    );
    assert_eq!(node.md5("alice", "wonderland"), None);
    // A name nobody knows: 401 once its 50 ms wait ends.
    assert_eq!(node.md5("ivan", "x"), Some(401));
    redis.restart();
    node.wait_for(
        |n| n.cluster_up() == Some(1),
        "cluster_up 1 once Redis is there",
    );
    redis.cli(&["SET", &user_key("ivan", "password"), "x"]);
    node.wait_for(|n| n.md5("ivan", "x").is_none(), "ivan added");
}

#[test]
fn a_redis_over_tls_serves_users_and_secrets() {
    let redis = Redis::start_tls();
    assert_eq!(redis.cli(&["PING"]).trim(), "PONG");
    let node = Node::start(&redis, vec![("alice".into(), "wonderland".into())]);
    redis.cli(&["SET", &user_key("judy", "password"), "over-tls"]);
    node.wait_for(
        |n| n.md5("judy", "over-tls").is_none(),
        "judy added over TLS",
    );
    redis.cli(&["DEL", &user_key("judy", "password")]);
    node.wait_for(|n| n.md5("judy", "over-tls") == Some(401), "judy removed");
    // A node that does not trust the certificate never talks to it.
    redis.cli(&["SET", &user_key("judy", "password"), "over-tls"]);
    let doubting = Node::spawn(&redis, vec![("alice".into(), "wonderland".into())], false);
    doubting.wait_for(
        |n| n.log().contains("cluster store unreachable"),
        "the refusal",
    );
    assert_eq!(doubting.cluster_up(), Some(0));
    assert_eq!(doubting.md5("judy", "over-tls"), Some(401));
    assert_eq!(doubting.md5("alice", "wonderland"), None);
}

/// Names both in `[auth] users` and Redis get their warning from one MGET
/// (not one read per user, awaited in the task's main loop while lookups
/// wait).
#[test]
fn duplicate_users_are_checked_in_one_read() {
    let redis = Redis::start();
    for name in ["u7", "u150"] {
        redis.cli(&["SET", &user_key(name, "password"), "from-redis"]);
    }
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let users = (0..200)
        .map(|i| (format!("u{i}"), "pw".to_owned()))
        .collect();
    let node = Node::start(&redis, users);
    node.wait_for(
        |n| n.log().matches("user defined in both").count() == 2,
        "a warning for each duplicate",
    );
    assert_eq!(redis.calls("mget"), 1, "{}", node.log());
    assert_eq!(node.md5("u7", "pw"), None, "the configuration's entry");
}
