//! Three ferroturn nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 sharing one
//! `redis-server` (`[cluster]`): the per-user quota holds across nodes
//! within its stated bound, a SIGKILLed node stops counting by expiry, and
//! Redis stopped under relaying clients costs nothing but the cluster-wide
//! count, which comes back when Redis does. The `turn` crate's client
//! does the allocating, with REST credentials whose name part is shared.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::{Redis, echo_round};
use common::{EchoPeer, LOCALHOST, REALM, SECRET, ServerConfig, TempDir};
use ferroturn::admin::SessionInfo;
use ferroturn::admin::client::Target;
use ferroturn::auth::rest_credentials;
use ferroturn::http::Dest;
use webrtc_util::Conn;

/// The ceiling of a wait for a 1 s promise.
const CEILING: Duration = Duration::from_secs(10);
/// The ceiling of a wait for a node's expiry (3 heartbeats of 1 s here).
const EXPIRY_CEILING: Duration = Duration::from_secs(60);
/// Allocations one user name may hold on all nodes together.
const QUOTA: usize = 2;

/// One ferroturn node of the cluster, with `/metrics` and an admin socket.
struct Node {
    name: String,
    server: Option<common::KillOnDrop>,
    addr: SocketAddr,
    metrics: SocketAddr,
    admin: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl Node {
    /// Node `i` (1, 2, 3) on 127.0.0.`i`, heartbeat 1 s.
    fn start(redis: &Redis, i: u8) -> Node {
        Node::spawn(Some(redis), i)
    }

    /// Node `i` with `[cluster]` pointed at `redis`, or alone.
    fn spawn(redis: Option<&Redis>, i: u8) -> Node {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
        let dir = TempDir::new("cluster-nodes");
        let port = common::free_port();
        let metrics = SocketAddr::new(ip, common::free_port());
        let admin = dir.path().join("admin.sock");
        let cfg = ServerConfig {
            workers: Some(2),
            limits: vec![
                ("allocations_per_user", QUOTA.to_string()),
                ("unauthenticated_rate", "0".into()),
            ],
            ..ServerConfig::default()
        };
        let name = format!("node-{i}");
        let mut toml = cfg
            .to_toml(port, common::relay_block())
            .replace("\"127.0.0.1", &format!("\"{ip}"));
        toml.push_str(&format!(
            "\n[metrics]\naddress = \"{metrics}\"\n\n[admin]\nsocket = \"{}\"\n",
            admin.display(),
        ));
        if let Some(redis) = redis {
            toml.push_str(&format!(
                "\n[cluster]\nredis = \"{}\"\nnode = \"{name}\"\nheartbeat = 1\n",
                redis.url()
            ));
        }
        let config = dir.path().join("ferroturn.toml");
        let log = dir.path().join("ferroturn.log");
        std::fs::write(&config, toml).unwrap();
        let addr = SocketAddr::new(ip, port);
        let child =
            common::spawn_ferroturn(&config, &log, addr, || true).unwrap_or_else(|e| panic!("{e}"));
        Node {
            name,
            server: Some(common::KillOnDrop(child)),
            addr,
            metrics,
            admin,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric's value from `/metrics`.
    fn metric(&self, name: &str) -> Option<u64> {
        common::redis::metric(self.metrics, name)
    }

    /// The sessions of this node's admin API (empty if it does not answer).
    fn sessions(&self) -> Vec<SessionInfo> {
        // The client blocks on a runtime of its own: off the test's.
        let target = self.target();
        std::thread::spawn(move || target.sessions().unwrap_or_default())
            .join()
            .unwrap()
    }

    fn target(&self) -> Target {
        Target {
            dest: Dest::Unix(self.admin.clone()),
            token: None,
        }
    }

    /// The nodes of the sessions of REST name `name` this node lists,
    /// sorted.
    fn sessions_of(&self, name: &str) -> Vec<String> {
        let suffix = format!(":{name}");
        let mut nodes: Vec<String> = self
            .sessions()
            .into_iter()
            .filter(|s| s.user.ends_with(&suffix))
            .map(|s| s.node.unwrap_or_default())
            .collect();
        nodes.sort();
        nodes
    }

    /// Whether a session of REST name `name` is on this node.
    fn has_session_of(&self, name: &str) -> bool {
        self.sessions_of(name).contains(&self.name)
    }

    /// `ferroturn ARGS… --admin SOCKET` against this node: its output.
    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
        cmd.args(args).arg("--admin").arg(&self.admin);
        let out = common::run_with_timeout(cmd, CEILING);
        assert_eq!(out.code, Some(0), "ferroturn {args:?}: {}", out.output);
        out.output
    }

    /// SIGKILL: no goodbye to Redis.
    fn sigkill(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.0.kill();
            let _ = s.0.wait();
        }
    }
}

/// Redis and three nodes, each having heard of the other two.
struct Cluster {
    nodes: Vec<Node>,
    redis: Redis,
}

impl Cluster {
    fn start() -> Cluster {
        let redis = Redis::start();
        let nodes: Vec<Node> = (1..=3).map(|i| Node::start(&redis, i)).collect();
        let c = Cluster { nodes, redis };
        for n in &c.nodes {
            c.wait_for(
                || n.metric("ferroturn_cluster_nodes") == Some(3),
                &format!("{} hears all three nodes", n.name),
                CEILING,
            );
        }
        c
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log()))
            .collect()
    }

    /// Poll `ok` every 50 ms until it holds, at most `ceiling`.
    fn wait_for(&self, ok: impl Fn() -> bool, what: &str, ceiling: Duration) -> Duration {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < ceiling,
                "{what}: not within {ceiling:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }
}

/// A fresh REST credential for `name`: a new username each time (its
/// expiry differs), one quota name.
fn rest(name: &str) -> (String, String) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry = now + 3600 + NEXT.fetch_add(1, Ordering::Relaxed);
    rest_credentials(SECRET, name, expiry)
}

/// A live allocation of the `turn` crate's client.
struct Held {
    client: turn::client::Client,
    relay: Box<dyn Conn + Send + Sync>,
}

impl Held {
    /// Delete the allocation (Refresh with lifetime 0) and stop the client.
    async fn release(self) {
        let _ = self.relay.close().await;
        let _ = self.client.close().await;
    }
}

/// Release each of `held`.
async fn release_all(held: Vec<Held>) {
    for h in held {
        h.release().await;
    }
}

/// Allocate on `node` as REST name `name`: the allocation, or the error.
async fn allocate(node: SocketAddr, name: &str) -> Result<Held, String> {
    let (user, password) = rest(name);
    let sock = Arc::new(tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
    let client = common::turn_client(node, sock, REALM, &user, &password).await;
    match tokio::time::timeout(CEILING, client.allocate()).await {
        Ok(Ok(relay)) => Ok(Held {
            client,
            relay: Box::new(relay),
        }),
        Ok(Err(e)) => {
            let _ = client.close().await;
            Err(e.to_string())
        }
        Err(_) => {
            let _ = client.close().await;
            Err("timed out".into())
        }
    }
}

/// Poll with Allocates on `node` until one is refused with `code` (one
/// that succeeds meanwhile is released again), at most `ceiling`.
async fn wait_refused(c: &Cluster, node: SocketAddr, name: &str, code: &str, ceiling: Duration) {
    let start = Instant::now();
    loop {
        match allocate(node, name).await {
            Err(e) if e.contains(code) => return,
            Err(e) => panic!("{name} on {node}: {e}, not {code}\n{}", c.logs()),
            Ok(h) => h.release().await,
        }
        assert!(
            start.elapsed() < ceiling,
            "{name} not refused with {code} on {node} within {ceiling:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll with Allocates on `node` until one succeeds, at most `ceiling`.
async fn wait_allowed(c: &Cluster, node: SocketAddr, name: &str, ceiling: Duration) -> Held {
    let start = Instant::now();
    loop {
        match allocate(node, name).await {
            Ok(h) => return h,
            Err(e) => assert!(
                start.elapsed() < ceiling,
                "{name} still refused on {node} after {ceiling:?}: {e}\n{}",
                c.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A user at the quota on node A is refused (486) on B and C; what A
/// releases B may take. REST credentials of one name, minted apart, count
/// together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_the_quota_on_one_node_is_refused_on_the_others() {
    let c = Cluster::start();
    let (a, b, cc) = (c.nodes[0].addr, c.nodes[1].addr, c.nodes[2].addr);
    let mut held = Vec::new();
    for _ in 0..QUOTA {
        held.push(allocate(a, "carol").await.expect("within the quota on A"));
    }
    wait_refused(&c, b, "carol", "486", CEILING).await;
    wait_refused(&c, cc, "carol", "486", CEILING).await;
    // Another name is not touched.
    allocate(b, "dora")
        .await
        .expect("another name")
        .release()
        .await;
    // One released on A: B may take it, and then C is refused again.
    held.pop().unwrap().release().await;
    let on_b = wait_allowed(&c, b, "carol", CEILING).await;
    wait_refused(&c, cc, "carol", "486", CEILING).await;
    wait_refused(&c, a, "carol", "486", CEILING).await;
    on_b.release().await;
    release_all(held).await;
}

/// The stated bound: Allocates racing on n nodes within one propagation
/// interval may each pass, so a user holds at most n × quota (each node
/// admits no more than the quota by its own exact count); once the counts
/// have propagated, every node refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_allocates_on_three_nodes_stay_within_the_stated_bound() {
    let c = Cluster::start();
    let per_node = 4;
    let mut tasks = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        for _ in 0..per_node {
            let addr = n.addr;
            tasks.push((i, tokio::spawn(async move { allocate(addr, "erin").await })));
        }
    }
    let mut passed = [0usize; 3];
    let mut held = Vec::new();
    for (i, t) in tasks {
        match t.await.unwrap() {
            Ok(h) => {
                passed[i] += 1;
                held.push(h);
            }
            Err(e) => assert!(e.contains("486"), "refused with {e}, not 486"),
        }
    }
    let total: usize = passed.iter().sum();
    eprintln!("racing Allocates passed per node: {passed:?}, {total} in all (quota {QUOTA})");
    for (i, p) in passed.iter().enumerate() {
        assert!(*p <= QUOTA, "node {} admitted {p} > quota {QUOTA}", i + 1);
    }
    assert!(total >= QUOTA, "the quota itself is reachable: {passed:?}");
    assert!(total <= 3 * QUOTA, "the bound n × quota: {passed:?}");
    for n in &c.nodes {
        wait_refused(&c, n.addr, "erin", "486", CEILING).await;
    }
    release_all(held).await;
}

/// A SIGKILLed node's allocations stop counting within its expiry (3
/// heartbeats), and the others stop counting it as a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_stops_counting_by_expiry() {
    let mut c = Cluster::start();
    let (a, node_c) = (c.nodes[0].addr, c.nodes[2].addr);
    let mut held = Vec::new();
    for _ in 0..QUOTA {
        held.push(
            allocate(node_c, "fay")
                .await
                .expect("within the quota on C"),
        );
    }
    wait_refused(&c, a, "fay", "486", CEILING).await;
    c.wait_for(
        || c.nodes[0].sessions_of("fay") == ["node-3", "node-3"],
        "A lists fay's two sessions on C",
        CEILING,
    );
    c.nodes[2].sigkill();
    let killed = Instant::now();
    let on_a = wait_allowed(&c, a, "fay", EXPIRY_CEILING).await;
    eprintln!(
        "C's share freed on A {:?} after the SIGKILL",
        killed.elapsed()
    );
    c.wait_for(
        || c.nodes[0].sessions_of("fay") == ["node-1"],
        "C's sessions gone from A's list, A's own there",
        EXPIRY_CEILING,
    );
    c.wait_for(
        || c.nodes[0].metric("ferroturn_cluster_nodes") == Some(2),
        "A counts two nodes",
        EXPIRY_CEILING,
    );
    on_a.release().await;
    for h in held {
        // Their server is gone: the clients just stop.
        let _ = h.client.close().await;
    }
}

/// Redis stopped while a client relays through A: relaying goes on, the
/// quota falls back to each node's own count once the others' expire, and
/// when Redis is back the nodes converge (the others' counts return).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_relaying_clients_falls_back_and_converges() {
    let mut c = Cluster::start();
    let (a, b) = (c.nodes[0].addr, c.nodes[1].addr);
    let peer = EchoPeer::start();
    let relaying = allocate(a, "gus").await.expect("gus on A");
    let mut b_held = Vec::new();
    for _ in 0..QUOTA {
        b_held.push(allocate(b, "hal").await.expect("hal on B"));
    }
    wait_refused(&c, a, "hal", "486", CEILING).await;
    assert_eq!(echo_round(relaying.relay.as_ref(), peer.addr, 5).await, 5);

    c.redis.kill();
    c.wait_for(
        || c.nodes[0].metric("ferroturn_cluster_up") == Some(0),
        "A sees Redis down",
        CEILING,
    );
    assert_eq!(
        echo_round(relaying.relay.as_ref(), peer.addr, 5).await,
        5,
        "relaying goes on without Redis"
    );
    // B's rows age out on A: A counts only its own.
    let on_a = wait_allowed(&c, a, "hal", EXPIRY_CEILING).await;
    c.wait_for(
        || c.nodes[0].metric("ferroturn_cluster_nodes") == Some(1),
        "A hears no other node",
        EXPIRY_CEILING,
    );

    // A revocation made on A meanwhile holds on A at once, and reaches
    // the others when Redis is back.
    c.nodes[0].cli(&["revoke", "--user", "quinn", "--until", "1h"]);
    wait_refused(&c, a, "quinn", "401", CEILING).await;
    allocate(b, "quinn")
        .await
        .expect("B has not heard of it yet")
        .release()
        .await;

    c.redis.restart();
    wait_refused(&c, b, "quinn", "401", CEILING).await;
    wait_refused(&c, a, "quinn", "401", CEILING).await;
    for n in &c.nodes {
        c.wait_for(
            || n.metric("ferroturn_cluster_nodes") == Some(3),
            &format!("{} hears all three nodes again", n.name),
            CEILING,
        );
    }
    // hal holds 2 on B and 1 on A: past the quota everywhere now.
    for n in &c.nodes {
        wait_refused(&c, n.addr, "hal", "486", CEILING).await;
    }
    assert_eq!(
        echo_round(relaying.relay.as_ref(), peer.addr, 5).await,
        5,
        "relaying went on through the restart"
    );
    on_a.release().await;
    relaying.release().await;
    release_all(b_held).await;
}

/// `ferroturn kill --user` on node B closes the user's allocations on A
/// and C too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_on_one_node_closes_the_allocations_on_every_node() {
    let c = Cluster::start();
    let on_a = allocate(c.nodes[0].addr, "ivy").await.expect("ivy on A");
    let on_c = allocate(c.nodes[2].addr, "ivy").await.expect("ivy on C");
    assert!(c.nodes[0].has_session_of("ivy") && c.nodes[2].has_session_of("ivy"));
    let out = c.nodes[1].cli(&["kill", "--user", "ivy"]);
    assert!(out.contains("closed 0 sessions"), "none on B itself: {out}");
    let took = c.wait_for(
        || !c.nodes[0].has_session_of("ivy") && !c.nodes[2].has_session_of("ivy"),
        "ivy's sessions on A and C closed",
        CEILING,
    );
    eprintln!("kill on B closed the sessions on A and C within {took:?}");
    // Another name's session on A is untouched by it.
    let other = allocate(c.nodes[0].addr, "jo").await.expect("jo on A");
    c.nodes[1].cli(&["kill", "--user", "ivy"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.nodes[0].has_session_of("jo"));
    release_all(vec![on_a, on_c, other]).await;
}

/// `ferroturn revoke --user` of a REST name on B: its allocations on A and
/// C close, every node answers its Allocates with 401, a node started
/// afterwards learns it from Redis, `--list` shows it anywhere, and
/// `--remove` lets the name back on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_reaches_every_node_and_remove_lifts_it() {
    let mut c = Cluster::start();
    let on_a = allocate(c.nodes[0].addr, "kim").await.expect("kim on A");
    let on_c = allocate(c.nodes[2].addr, "kim").await.expect("kim on C");
    let out = c.nodes[1].cli(&["revoke", "--user", "kim", "--until", "10m"]);
    assert!(out.contains("kim revoked until"), "{out}");
    c.wait_for(
        || !c.nodes[0].has_session_of("kim") && !c.nodes[2].has_session_of("kim"),
        "kim's sessions on A and C closed",
        CEILING,
    );
    for n in &c.nodes {
        wait_refused(&c, n.addr, "kim", "401", CEILING).await;
    }
    // Other names are not touched.
    allocate(c.nodes[0].addr, "lee")
        .await
        .expect("lee")
        .release()
        .await;
    let list = c.nodes[2].cli(&["revoke", "--list"]);
    assert!(list.starts_with("kim  until "), "{list}");
    assert!(c.nodes[0].metric("ferroturn_revocations_applied_total") >= Some(1));
    // C restarted: it learns the revocation from Redis.
    c.nodes[2].sigkill();
    c.nodes[2] = Node::start(&c.redis, 3);
    wait_refused(&c, c.nodes[2].addr, "kim", "401", CEILING).await;
    let out = c.nodes[0].cli(&["revoke", "--remove", "kim"]);
    assert!(out.contains("revocation of kim removed"), "{out}");
    for n in &c.nodes {
        wait_allowed(&c, n.addr, "kim", CEILING)
            .await
            .release()
            .await;
    }
    assert_eq!(c.nodes[1].cli(&["revoke", "--list"]), "no revocations\n");
    for h in [on_a, on_c] {
        let _ = h.client.close().await;
    }
}

/// Without `[cluster]`, a revocation holds on the one node (in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_works_on_a_single_node_without_a_cluster() {
    let n = Node::spawn(None, 1);
    let c = Cluster {
        nodes: vec![n],
        redis: Redis::start(),
    };
    let held = allocate(c.nodes[0].addr, "max").await.expect("max");
    c.nodes[0].cli(&["revoke", "--user", "max", "--until", "1h"]);
    assert!(!c.nodes[0].has_session_of("max"), "closed at once");
    assert_eq!(
        c.nodes[0].metric("ferroturn_revocations_applied_total"),
        Some(1)
    );
    assert_eq!(c.nodes[0].metric("ferroturn_cluster_nodes"), None);
    wait_refused(&c, c.nodes[0].addr, "max", "401", CEILING).await;
    c.nodes[0].cli(&["revoke", "--remove", "max"]);
    allocate(c.nodes[0].addr, "max")
        .await
        .expect("back")
        .release()
        .await;
    let _ = held.client.close().await;
}

/// `ferroturn sessions` on any node lists the sessions of all three, with
/// a node column; a session that ends leaves every node's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_any_node_list_every_node() {
    let c = Cluster::start();
    let mut held = Vec::new();
    for n in &c.nodes[..QUOTA] {
        held.push(allocate(n.addr, "nia").await.expect("nia"));
    }
    held.push(allocate(c.nodes[2].addr, "ola").await.expect("ola on C"));
    for n in &c.nodes {
        c.wait_for(
            || n.sessions_of("nia") == ["node-1", "node-2"] && n.sessions_of("ola") == ["node-3"],
            &format!("{} lists the sessions of every node", n.name),
            CEILING,
        );
    }
    let table = c.nodes[1].cli(&["sessions"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NODE "), "{table}");
    for node in ["node-1", "node-2", "node-3"] {
        assert!(
            lines.iter().any(|l| l.starts_with(node)),
            "{node} in\n{table}"
        );
    }
    assert_eq!(lines.last(), Some(&"3 sessions"), "{table}");
    // ola's session ends on C: it leaves A's and B's lists.
    held.pop().unwrap().release().await;
    for n in &c.nodes[..2] {
        c.wait_for(
            || n.sessions_of("ola").is_empty() && n.sessions_of("nia").len() == 2,
            &format!("ola's session gone from {}'s list", n.name),
            CEILING,
        );
    }
    release_all(held).await;
}
