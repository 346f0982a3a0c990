//! NAT behaviour discovery (RFC 5780) with `[nat_behaviour]`.
//!
//! 1. On loopback (127.0.0.1 and 127.0.0.2): each of the four sockets
//!    answers from itself with RESPONSE-ORIGIN and OTHER-ADDRESS;
//!    CHANGE-REQUEST answers from the other sockets; RESPONSE-PORT answers
//!    another port of the client's IP; PADDING with RESPONSE-PORT gets 400
//!    at the source; no request, whatever it carries, gets more than one
//!    answer or one more than 72 bytes larger than itself; TURN on the
//!    extra sockets gets 400.
//! 2. coturn's `turnutils_natdiscovery` (`-m` mapping, `-f` filtering,
//!    `-P` padding) in a network namespace behind a router namespace that
//!    NATs it with iptables, the server in a "public" namespace with two
//!    addresses: a 1:1 NAT (NETMAP) is found endpoint-independent in
//!    mapping and filtering, MASQUERADE endpoint-independent in mapping
//!    and address-and-port-dependent in filtering, MASQUERADE
//!    --random-fully address-and-port-dependent in mapping.
//!
//! The second test needs root, iproute2, iptables and coturn (Debian's
//! `coturn` package, which tests/run.sh installs). Namespaces are removed,
//! and the server killed, also when a test fails.

mod browser;
mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use browser::netns::{exists, remove, sh};
use common::{TempDir, free_udp_port, relay_block, run_with_timeout, spawn_ferroturn};
use ferroturn::proto::stun::{self as wire, Request};
use stun::attributes::*;
use stun::message::*;

/// What an answer may exceed its request by (crates/engine's
/// `discovery::ANSWER_OVERHEAD`).
const OVERHEAD: usize = ferroturn::engine::discovery::ANSWER_OVERHEAD;

fn config(primary: SocketAddr, other: IpAddr, other_port: u16, relay: IpAddr) -> String {
    let (lo, hi) = relay_block();
    format!(
        r#"realm = "ferroturn.test"
[server]
workers = 2
[[listen]]
address = "{primary}"
transports = ["udp"]
[relay]
address = "{relay}"
ports = "{lo}-{hi}"
[auth]
secrets = ["s3cret"]
[nat_behaviour]
other_address = "{other}"
other_port = {other_port}
"#
    )
}

/// A plain address attribute (RESPONSE-ORIGIN, OTHER-ADDRESS).
fn plain(m: &Message, t: AttrType) -> Option<SocketAddr> {
    let v = wire::attr(m, t)?;
    let port = u16::from_be_bytes([v[2], v[3]]);
    let ip: IpAddr = match v[1] {
        1 => <[u8; 4]>::try_from(&v[4..8]).ok()?.into(),
        _ => <[u8; 16]>::try_from(&v[4..20]).ok()?.into(),
    };
    Some(SocketAddr::new(ip, port))
}

/// How long to keep listening after a first datagram for a second one.
const SETTLE: Duration = Duration::from_millis(50);

/// The datagrams `sock` receives within `wait`, or within [`SETTLE`] of
/// the first.
fn received(sock: &UdpSocket, wait: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut end = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                out.push((from, buf[..n].to_vec()));
                end = end.min(Instant::now() + SETTLE);
            }
            Err(_) => break,
        }
    }
    out
}

/// The one answer to `req` sent from `sock` to `to`: where it came from
/// and what it says.
fn ask(sock: &UdpSocket, to: SocketAddr, req: &[u8]) -> (SocketAddr, Message) {
    sock.send_to(req, to).unwrap();
    let mut got = received(sock, Duration::from_millis(500));
    assert_eq!(got.len(), 1, "one answer from {to}");
    let (from, data) = got.pop().unwrap();
    (from, wire::decode(&data).expect("a STUN answer"))
}

fn change(ip: bool, port: bool) -> [u8; 4] {
    [0, 0, 0, (u8::from(ip) << 2) | (u8::from(port) << 1)]
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn four_sockets_on_loopback_answer_as_rfc_5780_says_and_never_amplify() {
    let a1: IpAddr = "127.0.0.1".parse().unwrap();
    let a2: IpAddr = "127.0.0.2".parse().unwrap();
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let primary = SocketAddr::new(a1, p1);
    let sockets = [
        primary,
        SocketAddr::new(a1, p2),
        SocketAddr::new(a2, p1),
        SocketAddr::new(a2, p2),
    ];
    let dir = TempDir::new("nat-loopback");
    let file = dir.path().join("ferroturn.toml");
    std::fs::write(&file, config(primary, a2, p2, a1)).unwrap();
    let log = dir.path().join("log.txt");
    let _server =
        Killed(spawn_ferroturn(&file, &log, primary, || true).unwrap_or_else(|e| panic!("{e}")));

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = client.local_addr().unwrap();
    // Each socket answers from itself; OTHER-ADDRESS is the one across.
    for (i, &s) in sockets.iter().enumerate() {
        let (from, r) = ask(&client, s, &Request::new(METHOD_BINDING).fingerprinted());
        assert_eq!(from, s);
        assert_eq!(wire::error_code(&r), None);
        assert_eq!(wire::xor_address(&r, ATTR_XORMAPPED_ADDRESS), Some(me));
        assert_eq!(plain(&r, ATTR_RESPONSE_ORIGIN), Some(s));
        assert_eq!(plain(&r, ATTR_OTHER_ADDRESS), Some(sockets[i ^ 3]), "{s}");
        // CHANGE-REQUEST: the answer leaves from the changed socket.
        for (ip, port) in [(true, false), (false, true), (true, true)] {
            let req = Request::new(METHOD_BINDING)
                .attr(ATTR_CHANGE_REQUEST, &change(ip, port))
                .bytes();
            let flip = (usize::from(ip) << 1) | usize::from(port);
            let (from, r) = ask(&client, s, &req);
            assert_eq!(from, sockets[i ^ flip], "{s} ip {ip} port {port}");
            assert_eq!(plain(&r, ATTR_RESPONSE_ORIGIN), Some(from));
        }
    }

    // RESPONSE-PORT: to another port of the client's own IP.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let q = other.local_addr().unwrap().port();
    let rp = [(q >> 8) as u8, q as u8, 0, 0];
    client
        .send_to(
            &Request::new(METHOD_BINDING)
                .attr(ATTR_RESPONSE_PORT, &rp)
                .bytes(),
            primary,
        )
        .unwrap();
    let there = received(&other, Duration::from_millis(500));
    assert_eq!(there.len(), 1);
    assert_eq!(there[0].0, primary);
    let r = wire::decode(&there[0].1).unwrap();
    assert_eq!(wire::xor_address(&r, ATTR_XORMAPPED_ADDRESS), Some(me));
    assert!(received(&client, Duration::from_millis(200)).is_empty());

    // Any mix of the attributes: at most one answer, to the client's IP,
    // at most OVERHEAD bytes over the request; PADDING with RESPONSE-PORT
    // gets 400 at the source and nothing at the port.
    let mut answers = 0;
    for &s in &sockets {
        for pad in [None, Some(0usize), Some(1400)] {
            for with_rp in [false, true] {
                for flags in [None, Some(change(true, true))] {
                    let mut r = Request::new(METHOD_BINDING);
                    if let Some(p) = pad {
                        r = r.attr(ATTR_PADDING, &vec![7; p]);
                    }
                    if with_rp {
                        r = r.attr(ATTR_RESPONSE_PORT, &rp);
                    }
                    if let Some(f) = flags {
                        r = r.attr(ATTR_CHANGE_REQUEST, &f);
                    }
                    let req = r.fingerprinted();
                    client.send_to(&req, s).unwrap();
                    let mut got = received(&client, Duration::from_millis(300));
                    got.extend(received(&other, SETTLE));
                    assert_eq!(got.len(), 1, "{s} pad {pad:?} rp {with_rp} {flags:?}");
                    let (_, data) = &got[0];
                    assert!(
                        data.len() <= req.len() + OVERHEAD,
                        "{} bytes for a request of {}",
                        data.len(),
                        req.len()
                    );
                    if pad.is_some() && with_rp {
                        assert_eq!(wire::error_code(&wire::decode(data).unwrap()), Some(400));
                    }
                    answers += 1;
                }
            }
        }
    }
    assert_eq!(answers, 4 * 3 * 2 * 2);

    // TURN only on the primary: an Allocate gets 401 there, 400 elsewhere.
    let allocate = Request::new(METHOD_ALLOCATE).transport(17).bytes();
    for (i, &s) in sockets.iter().enumerate() {
        let (_, r) = ask(&client, s, &allocate);
        let want = if i == 0 { 401 } else { 400 };
        assert_eq!(wire::error_code(&r), Some(want), "{s}");
    }
}

// ---- Behind NATs in network namespaces ----------------------------------

const PUBLIC: &str = "ftnat-pub";
const ROUTER: &str = "ftnat-r";
const CLIENT: &str = "ftnat-c";
const ALL: [&str; 3] = [PUBLIC, ROUTER, CLIENT];
/// The server's two addresses, the router's public one, the address its
/// 1:1 NAT maps the client to, and the client's own.
const SERVER_A1: &str = "10.203.0.1";
const SERVER_A2: &str = "10.203.0.4";
const ROUTER_WAN: &str = "10.203.0.2";
const NETMAP_PUBLIC: &str = "10.203.0.3";
const CLIENT_IP: &str = "10.203.1.2";

/// The namespaces: the server on a bridge with two addresses, a router
/// with one leg on that bridge, and the client behind the router.
struct Topology;

impl Topology {
    fn create() -> Topology {
        for ns in ALL {
            remove(ns);
        }
        let t = Topology;
        for ns in ALL {
            sh(None, &format!("ip netns add {ns}"));
            sh(Some(ns), "ip link set lo up");
        }
        sh(Some(PUBLIC), "ip link add inet type bridge");
        sh(
            Some(PUBLIC),
            &format!("ip addr add {SERVER_A1}/24 dev inet"),
        );
        sh(
            Some(PUBLIC),
            &format!("ip addr add {SERVER_A2}/24 dev inet"),
        );
        sh(Some(PUBLIC), "ip link set inet up");
        sh(
            None,
            &format!("ip link add wan netns {ROUTER} type veth peer name to-router netns {PUBLIC}"),
        );
        sh(Some(PUBLIC), "ip link set to-router master inet");
        sh(Some(PUBLIC), "ip link set to-router up");
        sh(
            Some(ROUTER),
            &format!("ip addr add {ROUTER_WAN}/24 dev wan"),
        );
        // The 1:1 NAT's public address sits on the router's WAN too.
        sh(
            Some(ROUTER),
            &format!("ip addr add {NETMAP_PUBLIC}/24 dev wan"),
        );
        sh(Some(ROUTER), "ip link set wan up");
        sh(
            None,
            &format!("ip link add lan netns {ROUTER} type veth peer name eth0 netns {CLIENT}"),
        );
        sh(Some(ROUTER), "ip addr add 10.203.1.1/24 dev lan");
        sh(Some(ROUTER), "ip link set lan up");
        sh(Some(ROUTER), "sysctl -q -w net.ipv4.ip_forward=1");
        sh(
            Some(CLIENT),
            &format!("ip addr add {CLIENT_IP}/24 dev eth0"),
        );
        sh(Some(CLIENT), "ip link set eth0 up");
        sh(Some(CLIENT), "ip route add default via 10.203.1.1");
        t
    }

    /// Replace the router's rules. Connections the last rules made stay
    /// tracked, but each natdiscovery run uses new client ports.
    fn set_nat(&self, rules: &[&str]) {
        sh(Some(ROUTER), "iptables -t nat -F");
        sh(Some(ROUTER), "iptables -F");
        for r in rules {
            sh(Some(ROUTER), &format!("iptables {r}"));
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in ALL {
            remove(ns);
        }
    }
}

/// `turnutils_natdiscovery ARGS` in the client's namespace, against the
/// server's first address; what it prints.
fn natdiscovery(args: &str) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", CLIENT, "turnutils_natdiscovery"]);
    cmd.args(args.split_whitespace());
    cmd.args(["-L", CLIENT_IP, "-p", "3478", SERVER_A1]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        !out.timed_out,
        "natdiscovery {args} timed out:\n{}",
        out.output
    );
    out.output
}

/// The verdicts natdiscovery printed, in order.
fn verdicts(output: &str) -> Vec<&str> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("NAT with") || l.starts_with("No NAT"))
        .collect()
}

#[test]
fn natdiscovery_behind_iptables_nats_finds_their_behaviour() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "network namespaces need root (CI runs the tests as root)"
    );
    // Declared first, so dropped last: the server goes before its namespace.
    let topo = Topology::create();
    let dir = TempDir::new("nat-netns");
    let file = dir.path().join("ferroturn.toml");
    let primary: SocketAddr = format!("{SERVER_A1}:3478").parse().unwrap();
    std::fs::write(
        &file,
        config(
            primary,
            SERVER_A2.parse().unwrap(),
            3479,
            SERVER_A1.parse().unwrap(),
        ),
    )
    .unwrap();
    let log = dir.path().join("log.txt");
    let log_file = std::fs::File::create(&log).unwrap();
    let server = Command::new("ip")
        .args(["netns", "exec", PUBLIC])
        .arg(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("--config")
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("spawn ferroturn in its namespace");
    let server = Killed(server);
    let ready = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("NAT behaviour discovery (RFC 5780) on four UDP sockets")
    {
        assert!(
            Instant::now() < ready,
            "ferroturn did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let drop_unsolicited = [
        "-A FORWARD -i wan -m conntrack --ctstate NEW,INVALID -j DROP",
        "-A INPUT -i wan -m conntrack --ctstate NEW,INVALID -j DROP",
    ];
    let mut timings = Vec::new();

    // 1:1 NAT: the client's address is swapped for NETMAP_PUBLIC both
    // ways, ports untouched, anything to NETMAP_PUBLIC let in.
    topo.set_nat(&[
        &format!(
            "-t nat -A POSTROUTING -o wan -s {CLIENT_IP}/32 -j NETMAP --to {NETMAP_PUBLIC}/32"
        ),
        &format!("-t nat -A PREROUTING -i wan -d {NETMAP_PUBLIC}/32 -j NETMAP --to {CLIENT_IP}/32"),
    ]);
    for args in ["-m -f", "-m -f -P"] {
        let started = Instant::now();
        let out = natdiscovery(args);
        timings.push((format!("NETMAP {args}"), started.elapsed()));
        assert_eq!(
            verdicts(&out),
            [
                "NAT with Endpoint Independent Mapping!",
                "NAT with Endpoint Independent Filtering!"
            ],
            "NETMAP {args}:\n{out}"
        );
        // The filtering test's change of address and port was answered
        // from the other socket, which RESPONSE-ORIGIN names; the client
        // was seen at its 1:1 address.
        assert!(
            out.contains(&format!("Response origin: : {SERVER_A2}:3479")),
            "{out}"
        );
        assert!(
            out.contains(&format!("UDP reflexive addr: {NETMAP_PUBLIC}:")),
            "{out}"
        );
    }

    // MASQUERADE: the client's port kept whatever the destination, and
    // only the exact destination answered.
    let mut rules = vec!["-t nat -A POSTROUTING -o wan -j MASQUERADE"];
    rules.extend(drop_unsolicited);
    topo.set_nat(&rules);
    let started = Instant::now();
    let out = natdiscovery("-m -f");
    timings.push(("MASQUERADE -m -f".into(), started.elapsed()));
    assert_eq!(
        verdicts(&out),
        [
            "NAT with Endpoint Independent Mapping!",
            "NAT with Address and Port Dependent Filtering!"
        ],
        "MASQUERADE:\n{out}"
    );
    assert!(out.contains(ROUTER_WAN), "{out}");

    // MASQUERADE --random-fully: a new port for every destination.
    let mut rules = vec!["-t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully"];
    rules.extend(drop_unsolicited);
    topo.set_nat(&rules);
    let started = Instant::now();
    let out = natdiscovery("-m");
    timings.push(("MASQUERADE --random-fully -m".into(), started.elapsed()));
    assert_eq!(
        verdicts(&out),
        ["NAT with Address and Port Dependent Mapping!"],
        "MASQUERADE --random-fully:\n{out}"
    );
    eprintln!("natdiscovery runs: {timings:?}");
    drop(server);
    drop(topo);
    for ns in ALL {
        assert!(!exists(ns), "namespace {ns} left behind");
    }
}
