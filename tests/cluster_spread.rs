//! Load spreading across a cluster: three ferroturn nodes on 127.0.0.1,
//! 127.0.0.2 and 127.0.0.3 and one `redis-server`. A node loaded above
//! `cluster.redirect_above`, or draining, answers a new Allocate with 300
//! Try Alternate naming the least-loaded other node that is live, not
//! draining and below the threshold, of the client's family and transport;
//! coturn's `turnutils_uclient`, which follows 300, then relays there.
//! Never to itself, to a node gone silent (SIGKILL), between two loaded
//! nodes, or to an address of the other family.

mod common;
mod raw;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::coturn::{CoturnPeer, parse_summary, tool};
use common::redis::Redis;
use common::{PASSWORD, REALM, ServerConfig, TempDir, USER};
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::attributes::ATTR_ALTERNATE_SERVER;
use stun::message::METHOD_ALLOCATE;

/// The ceiling of a wait for a 1 s promise.
const CEILING: Duration = Duration::from_secs(10);
/// The ceiling of a wait for a node's expiry (3 heartbeats of 1 s here).
const EXPIRY_CEILING: Duration = Duration::from_secs(60);

/// One node: its settings beyond the common ones.
#[derive(Default)]
struct Setup {
    /// `limits.total_allocations` (0: the relay port count).
    capacity: u32,
    /// `cluster.redirect_above`.
    redirect_above: Option<f64>,
    /// `cluster.advertise` entries, `{port}` standing for its own port;
    /// none: derived from its listener.
    advertise: Vec<&'static str>,
}

struct Node {
    name: String,
    server: Option<common::KillOnDrop>,
    addr: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Node {
    /// Node `i` on 127.0.0.`i`, heartbeat 1 s, drain_timeout 30 s.
    fn start(redis: &Redis, i: u8, setup: &Setup) -> Node {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
        let dir = TempDir::new("cluster-spread");
        let port = common::free_port();
        let metrics = SocketAddr::new(ip, common::free_port());
        let mut limits = vec![("unauthenticated_rate", "0".to_string())];
        if setup.capacity > 0 {
            limits.push(("total_allocations", setup.capacity.to_string()));
        }
        let cfg = ServerConfig {
            workers: Some(2),
            legacy_channel_numbers: Some(true),
            limits,
            ..ServerConfig::default()
        };
        let name = format!("node-{i}");
        let mut toml = cfg
            .to_toml(port, common::relay_block())
            .replace("\"127.0.0.1", &format!("\"{ip}"))
            .replace("workers = 2\n", "workers = 2\ndrain_timeout = 30\n");
        toml.push_str(&format!(
            "\n[metrics]\naddress = \"{metrics}\"\n\n[cluster]\nredis = \"{}\"\nnode = \"{name}\"\nheartbeat = 1\n",
            redis.url()
        ));
        if let Some(r) = setup.redirect_above {
            toml.push_str(&format!("redirect_above = {r}\n"));
        }
        if !setup.advertise.is_empty() {
            let list: Vec<String> = (setup.advertise.iter())
                .map(|a| format!("\"{}\"", a.replace("{port}", &port.to_string())))
                .collect();
            toml.push_str(&format!("advertise = [{}]\n", list.join(", ")));
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
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metric(&self, name: &str) -> Option<u64> {
        common::redis::metric(self.metrics, name)
    }

    /// A client of this node with the static user.
    fn client(&self) -> RawClient {
        RawClient::udp(self.addr, REALM, USER, PASSWORD)
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.server.as_ref().expect("running").0.id();
        // SAFETY: a plain kill(2) of the child this test started.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
    }

    /// SIGKILL: no goodbye to Redis.
    fn sigkill(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.0.kill();
            let _ = s.0.wait();
        }
    }
}

/// Redis and three nodes that have heard each other.
struct Cluster {
    nodes: Vec<Node>,
    _redis: Redis,
}

impl Cluster {
    fn start(setups: [Setup; 3]) -> Cluster {
        let redis = Redis::start();
        let nodes: Vec<Node> = (setups.iter().enumerate())
            .map(|(i, s)| Node::start(&redis, i as u8 + 1, s))
            .collect();
        let c = Cluster {
            nodes,
            _redis: redis,
        };
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
    fn wait_for(&self, ok: impl Fn() -> bool, what: &str, ceiling: Duration) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < ceiling,
                "{what}: not within {ceiling:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The answer to one signed Allocate of a fresh client: its error code and
/// ALTERNATE-SERVER (an IPv4 one; an IPv6 one fails the test), and the
/// client (holding the allocation when it succeeded).
fn allocate(node: &Node) -> (Option<u16>, Option<SocketAddr>, RawClient) {
    let mut c = node.client();
    let r = c.signed(Request::new(METHOD_ALLOCATE).transport(17));
    let alternate = wire::attr(&r, ATTR_ALTERNATE_SERVER).map(|v| {
        assert_eq!(
            (v.len(), v[1]),
            (8, 0x01),
            "ALTERNATE-SERVER of another family to an IPv4 client: {v:02x?}"
        );
        SocketAddr::from((
            Ipv4Addr::new(v[4], v[5], v[6], v[7]),
            u16::from_be_bytes([v[2], v[3]]),
        ))
    });
    (wire::error_code(&r), alternate, c)
}

/// Hold `n` allocations on `node`.
fn hold(node: &Node, n: usize) -> Vec<RawClient> {
    (0..n)
        .map(|_| {
            let (code, _, c) = allocate(node);
            assert_eq!(code, None, "Allocate on {}", node.name);
            c
        })
        .collect()
}

/// Allocates on `node` until one is redirected (at most `ceiling`): where
/// to. The others are refused (its capacity is full) or, while the node
/// is below its threshold, served and kept.
fn wait_redirect(c: &Cluster, node: &Node, ceiling: Duration) -> SocketAddr {
    let start = Instant::now();
    let mut kept = Vec::new();
    loop {
        let (code, alternate, client) = allocate(node);
        if code == Some(300) {
            return alternate.expect("ALTERNATE-SERVER in a 300");
        }
        if code.is_none() {
            kept.push(client);
        }
        assert!(
            start.elapsed() < ceiling,
            "{} redirected nothing within {ceiling:?} (last: {code:?})\n{}",
            node.name,
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Messages per client (-n), clients (-m), message length (-l).
const MESSAGES: u64 = 20;

/// uclient against `node`: its output (it must relay every message).
fn uclient(node: &Node, peer: &CoturnPeer) -> String {
    let mut cmd = tool("turnutils_uclient");
    cmd.args(["-u", USER, "-w", PASSWORD]);
    cmd.args(["-n", &MESSAGES.to_string(), "-m", "1", "-l", "120"]);
    cmd.args(["-e", "127.0.0.1", "-r", &peer.port.to_string()]);
    cmd.args([
        "-p",
        &node.addr.port().to_string(),
        &node.addr.ip().to_string(),
    ]);
    let out = common::run_with_timeout(cmd, Duration::from_secs(60));
    let context = format!("turnutils_uclient (exit {:?}):\n{}", out.code, out.output);
    assert!(!out.timed_out, "{context}");
    assert_eq!(out.code, Some(0), "{context}");
    let s = parse_summary(&out.output).unwrap_or_else(|| panic!("no summary: {context}"));
    s.assert_complete(MESSAGES, &context);
    out.output
}

/// Node 1 holds at most 2 allocations and redirects above half: once it
/// holds 2, a new client is sent to the least-loaded other node (node 2,
/// since node 3 holds allocations), and coturn's uclient, which follows
/// 300, relays there.
#[test]
fn a_loaded_node_sends_uclient_to_the_least_loaded_node_and_it_relays_there() {
    let c = Cluster::start([
        Setup {
            capacity: 2,
            redirect_above: Some(0.5),
            ..Setup::default()
        },
        Setup::default(),
        Setup {
            capacity: 4,
            ..Setup::default()
        },
    ]);
    let (a, b, third) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    // Node 3 at 0.5, node 2 at 0; node 1 full (load 1).
    let _on_third = hold(third, 2);
    let _on_a = hold(a, 2);
    // Within a second node 1 has heard node 3's new load.
    let to = wait_redirect(&c, a, CEILING);
    assert_eq!(to, b.addr, "the least-loaded node\n{}", c.logs());
    let peer = CoturnPeer::start();
    let created = |n: &Node| n.metric("ferroturn_allocations_created_total").unwrap_or(0);
    let before = (created(a), created(b), created(third));
    let redirects = a.metric("ferroturn_redirects_total").unwrap();
    uclient(a, &peer);
    let after = (created(a), created(b), created(third));
    assert_eq!(after.0, before.0, "nothing allocated on the loaded node");
    assert!(
        after.1 > before.1,
        "uclient's allocations on node 2: {before:?} → {after:?}"
    );
    assert_eq!(after.2, before.2, "nothing on node 3");
    assert!(a.metric("ferroturn_redirects_total").unwrap() > redirects);
    assert_eq!(b.metric("ferroturn_redirects_total"), Some(0));
}

/// A draining node sends new clients to another node, never to itself,
/// and not to a node gone silent once its expiry passed: node 3 (the
/// least loaded) is SIGKILLed, and when node 2 has forgotten it, node 2
/// drains and sends clients to node 1.
#[test]
fn a_draining_node_redirects_never_to_itself_nor_to_a_killed_node() {
    let mut c = Cluster::start([Setup::default(), Setup::default(), Setup::default()]);
    let _on_a = hold(&c.nodes[0], 2);
    // Node 2 keeps an allocation, so that it drains instead of exiting.
    let _on_b = hold(&c.nodes[1], 1);
    c.nodes[2].sigkill();
    let b = &c.nodes[1];
    c.wait_for(
        || b.metric("ferroturn_cluster_nodes") == Some(2),
        "node 2 forgets the killed node",
        EXPIRY_CEILING,
    );
    // Past the expiry of the killed node's load row as well.
    std::thread::sleep(Duration::from_millis(500));
    b.signal(libc::SIGTERM);
    let to = wait_redirect(&c, b, CEILING);
    assert_eq!(to, c.nodes[0].addr, "the one live node\n{}", c.logs());
    assert_ne!(to, b.addr);
    assert!(b.metric("ferroturn_redirects_total").unwrap() >= 1);
}

/// Two nodes above the threshold do not send clients to each other: both
/// serve them (node 3, the only one below, advertises IPv6 only, so no
/// IPv4 client is sent there).
#[test]
fn loaded_nodes_serve_rather_than_ping_pong_and_never_send_ipv4_clients_to_ipv6() {
    let loaded = || Setup {
        capacity: 4,
        redirect_above: Some(0.5),
        ..Setup::default()
    };
    let c = Cluster::start([
        loaded(),
        loaded(),
        Setup {
            advertise: vec!["udp:[::1]:{port}"],
            ..Setup::default()
        },
    ]);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    // Both at 0.75, above 0.5.
    let _held: Vec<_> = [hold(a, 3), hold(b, 3)].into_iter().flatten().collect();
    // Let every node hear every load (a message at once, a row each beat).
    std::thread::sleep(Duration::from_secs(2));
    for n in [a, b] {
        let (code, alternate, _served) = allocate(n);
        assert_eq!(
            (code, alternate),
            (None, None),
            "{} serves the client itself\n{}",
            n.name,
            c.logs()
        );
        assert_eq!(n.metric("ferroturn_redirects_total"), Some(0));
    }
}
