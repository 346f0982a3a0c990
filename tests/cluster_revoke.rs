//! The revocation table a node reads from Redis when it connects
//! (`ferroturn/realm/<realm>/revoked`, name → Unix time) holds whatever
//! anyone with access to Redis wrote there. An entry that is not a
//! revocation (its end not a number) is skipped: the node still connects,
//! still applies the well-formed entries, and still serves Redis users.
//! One real ferroturn node against a real `redis-server`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::Redis;
use common::{LOCALHOST, REALM, SECRET, ServerConfig, TempDir};
use ferroturn::auth::rest_credentials;

/// The ceiling of every wait for a 1 s promise.
const CEILING: Duration = Duration::from_secs(10);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One node with `[cluster]` on `redis`: its TURN address, its `/metrics`
/// address, the process and its log.
struct Node {
    addr: SocketAddr,
    metrics: SocketAddr,
    log: std::path::PathBuf,
    _server: common::KillOnDrop,
    _dir: TempDir,
}

impl Node {
    fn start(redis: &Redis) -> Node {
        let dir = TempDir::new("cluster-revoke");
        let port = common::free_port();
        let metrics = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), common::free_port());
        let cfg = ServerConfig {
            workers: Some(1),
            limits: vec![("unauthenticated_rate", "0".into())],
            ..ServerConfig::default()
        };
        let mut toml = cfg.to_toml(port, common::relay_block());
        toml.push_str(&format!(
            "\n[metrics]\naddress = \"{metrics}\"\n\n[cluster]\nredis = \"{}\"\nnode = \"solo\"\nheartbeat = 1\n",
            redis.url()
        ));
        let config = dir.path().join("ferroturn.toml");
        let log = dir.path().join("ferroturn.log");
        std::fs::write(&config, toml).unwrap();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let child =
            common::spawn_ferroturn(&config, &log, addr, || true).unwrap_or_else(|e| panic!("{e}"));
        Node {
            addr,
            metrics,
            log,
            _server: common::KillOnDrop(child),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Allocate on `node` as REST name `name`: Ok, or the error's text.
async fn allocate(node: SocketAddr, name: &str) -> Result<(), String> {
    let (user, password) = rest_credentials(SECRET, name, unix_now() + 3600);
    let sock = Arc::new(tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
    let client = common::turn_client(node, sock, REALM, &user, &password).await;
    let r = match tokio::time::timeout(CEILING, client.allocate()).await {
        Ok(Ok(relay)) => {
            use webrtc_util::Conn;
            let _ = relay.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    };
    let _ = client.close().await;
    r
}

/// A malformed entry beside a real revocation: the node connects (cluster
/// up), refuses the revoked name with 401, and lets another name in. The
/// entries a Redis client may write that are no revocation: a date in
/// words, a negative number, one past 64 bits, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_revocation_in_redis_does_not_keep_the_cluster_down() {
    let redis = Redis::start();
    let table = format!("ferroturn/realm/{REALM}/revoked");
    let until = (unix_now() + 600).to_string();
    let out = redis.cli(&[
        "HSET",
        &table,
        "kim",
        &until,
        "junk",
        "tomorrow",
        "negative",
        "-5",
        "huge",
        "99999999999999999999999",
        "empty",
        "",
    ]);
    assert!(out.trim().ends_with('5'), "HSET: {out}");
    let node = Node::start(&redis);
    let start = Instant::now();
    while common::redis::metric(node.metrics, "ferroturn_cluster_up") != Some(1) {
        assert!(
            start.elapsed() < CEILING,
            "the cluster is not up within {CEILING:?}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kim = allocate(node.addr, "kim").await;
    assert!(
        kim.as_ref().is_err_and(|e| e.contains("401")),
        "kim is revoked: {kim:?}\n{}",
        node.log()
    );
    assert_eq!(allocate(node.addr, "lee").await, Ok(()), "{}", node.log());
}
