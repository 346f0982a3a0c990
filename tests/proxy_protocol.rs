//! The PROXY protocol (`[[listen]] proxy_protocol = true`) behind a real
//! HAProxy (Debian's `haproxy`, tests/run.sh installs it) in `mode tcp`,
//! in front of a ferroturn TCP listener and a TLS one (HAProxy passes the
//! TLS through, ferroturn terminates it), with `send-proxy` (v1) and
//! `send-proxy-v2` and `check` (health checks, which send v2 LOCAL).
//!
//! Clients connect to HAProxy from 127.0.0.5 (and 127.0.0.6, 127.0.0.7),
//! HAProxy to ferroturn from 127.0.0.1, the only address in `proxy_from`:
//! so a client's own address and the balancer's differ, and what the
//! server reports shows which it took. The STUN client here is a small raw
//! one (tests/common's Binding, tests/raw's Allocate) on sockets bound to
//! the client's address before they connect; the TURN clients are coturn's
//! `turnutils_uclient -t` and `-t -S`.
//!
//! Everything listens on loopback; HAProxy and ferroturn are killed by PID
//! on drop, and every wait is bounded.

mod common;
mod raw;

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::coturn::{CoturnPeer, parse_summary, tool};
use common::{
    KillOnDrop, LOCALHOST, Output, PASSWORD, REALM, SECRET, TempDir, USER, binding_request,
    binding_stream, client_config, free_port, make_cert, relay_block, run_with_timeout,
    spawn_ferroturn, transaction_id,
};
use raw::RawClient;

/// The address clients connect from (the balancer connects from
/// 127.0.0.1).
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// uclient runs one at a time: they are timing sensitive, and this
/// machine may have few cores.
static UCLIENT_SERIAL: Mutex<()> = Mutex::new(());

/// A ferroturn with a PROXY protocol TCP listener and TLS listener (and a
/// plain UDP one, which the start-up probe uses), and an HAProxy with a
/// frontend per (listener, PROXY protocol version).
struct Rig {
    _dir: TempDir,
    _ferroturn: KillOnDrop,
    ferroturn_log: PathBuf,
    config: PathBuf,
    /// ferroturn's PROXY protocol listeners.
    tcp: SocketAddr,
    tls: SocketAddr,
    metrics: SocketAddr,
    _haproxy: KillOnDrop,
    haproxy_log: PathBuf,
    stats: PathBuf,
    /// HAProxy's frontends: to the TCP listener with v1 and v2 headers,
    /// to the TLS listener with v1 and v2.
    tcp_v1: SocketAddr,
    tcp_v2: SocketAddr,
    tls_v1: SocketAddr,
    tls_v2: SocketAddr,
    cert: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (what, path) in [
                ("ferroturn", &self.ferroturn_log),
                ("haproxy", &self.haproxy_log),
            ] {
                let log = fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(120).collect();
                eprintln!("---- {what} log (last {} lines) ----", tail.len());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((LOCALHOST, port))
}

impl Rig {
    /// Start both, with `limits` (lines of `[limits]`).
    fn start(limits: &str) -> Rig {
        let dir = TempDir::new("proxy");
        let (cert, key) = make_cert(dir.path(), "server");
        let (udp, tcp, tls, metrics) = (free_port(), free_port(), free_port(), free_port());
        let relay = relay_block();
        let config = dir.path().join("ferroturn.toml");
        let admin = dir.path().join("admin.sock");
        fs::write(
            &config,
            format!(
                r#"realm = "{REALM}"
[server]
workers = 2

[[listen]]
address = "127.0.0.1:{udp}"
transports = ["udp"]

[[listen]]
address = "127.0.0.1:{tcp}"
transports = ["tcp"]
proxy_protocol = true
proxy_from = ["127.0.0.1"]

[[listen]]
address = "127.0.0.1:{tls}"
transports = ["tls"]
cert = "{cert}"
key = "{key}"
proxy_protocol = true
proxy_from = ["127.0.0.1/32"]

[relay]
address = "127.0.0.1"
ports = "{}-{}"

[auth]
secrets = ["{SECRET}"]
users = {{ {USER} = "{PASSWORD}" }}

[peers]
allow = ["127.0.0.0/8"]

[allocation]
legacy_channel_numbers = true

[limits]
{limits}

[metrics]
address = "127.0.0.1:{metrics}"

[admin]
socket = "{}"

[log]
level = "debug"
"#,
                relay.0,
                relay.1,
                admin.display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let ferroturn_log = dir.path().join("ferroturn.log");
        let child = spawn_ferroturn(&config, &ferroturn_log, local(udp), || {
            TcpStream::connect(local(tcp)).is_ok() && TcpStream::connect(local(tls)).is_ok()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let ferroturn = KillOnDrop(child);

        let fronts: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let stats = dir.path().join("haproxy.sock");
        let haproxy_cfg = dir.path().join("haproxy.cfg");
        let mut cfg = format!(
            "global
    log stdout format raw local0 info
    stats socket {} mode 600 level admin

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
",
            stats.display()
        );
        for (name, front, server, send) in [
            ("tcp_v1", fronts[0], tcp, "send-proxy"),
            ("tcp_v2", fronts[1], tcp, "send-proxy-v2"),
            ("tls_v1", fronts[2], tls, "send-proxy"),
            ("tls_v2", fronts[3], tls, "send-proxy-v2"),
        ] {
            // Checks every 200 ms; one failure marks the server DOWN.
            cfg.push_str(&format!(
                "
frontend {name}
    bind 127.0.0.1:{front}
    default_backend {name}_servers

backend {name}_servers
    server ferroturn 127.0.0.1:{server} {send} check inter 200ms fall 1 rise 1
"
            ));
        }
        fs::write(&haproxy_cfg, cfg).unwrap();
        let haproxy_log = dir.path().join("haproxy.log");
        let out = fs::File::create(&haproxy_log).unwrap();
        let child = Command::new(haproxy_bin())
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn haproxy (Debian package haproxy; tests/run.sh installs it)");
        let mut haproxy = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = haproxy.0.try_wait() {
                panic!(
                    "haproxy exited with {status}:\n{}",
                    fs::read_to_string(&haproxy_log).unwrap_or_default()
                );
            }
            let up = fronts.iter().all(|&p| TcpStream::connect(local(p)).is_ok());
            if up && stats.exists() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy not ready in 10 s:\n{}",
                fs::read_to_string(&haproxy_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Rig {
            _dir: dir,
            _ferroturn: ferroturn,
            ferroturn_log,
            config,
            tcp: local(tcp),
            tls: local(tls),
            metrics: local(metrics),
            _haproxy: haproxy,
            haproxy_log,
            stats,
            tcp_v1: local(fronts[0]),
            tcp_v2: local(fronts[1]),
            tls_v1: local(fronts[2]),
            tls_v2: local(fronts[3]),
            cert,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.ferroturn_log).unwrap_or_default()
    }

    /// ferroturn's `/metrics`, as `series -> value`.
    fn metric(&self, series: &str) -> u64 {
        let body = common::scrape(self.metrics).unwrap();
        common::sample(&body, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
    }

    fn proxy_refusals(&self, reason: &str) -> u64 {
        self.metric(&format!(
            "ferroturn_proxy_header_refusals_total{{reason=\"{reason}\"}}"
        ))
    }

    /// HAProxy's `show stat` over its stats socket: each server line's
    /// columns by name.
    fn haproxy_servers(&self) -> Vec<std::collections::HashMap<String, String>> {
        let mut s = UnixStream::connect(&self.stats).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        s.read_to_string(&mut csv).unwrap();
        let mut lines = csv.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .map(str::to_owned)
            .collect();
        lines
            .map(|l| {
                header
                    .iter()
                    .cloned()
                    .zip(l.split(',').map(str::to_owned))
                    .collect()
            })
            .filter(|row: &std::collections::HashMap<String, String>| {
                row.get("svname").is_some_and(|n| n == "ferroturn")
            })
            .collect()
    }
}

fn haproxy_bin() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// A TCP connection to `to` from `from` (any port).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// A Binding through the TLS frontend `front` from `from`: the mapped
/// address, and the connection's local address.
fn binding_tls(rig: &Rig, from: Ipv4Addr, front: SocketAddr) -> (SocketAddr, SocketAddr) {
    let tcp = connect_from(from, front);
    let local = tcp.local_addr().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_config(&[&rig.cert]), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mapped =
        binding_stream(&mut tls).unwrap_or_else(|e| panic!("Binding over TLS via {front}: {e}"));
    (mapped, local)
}

/// Whether the server closes `s` (end of stream or reset) within `limit`,
/// without answering anything.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("the server answered {n} bytes: {:02x?}", &buf[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(_) => false,
    }
}

/// `read()` until `done` holds of it, for at most 10 s.
fn eventually<T: std::fmt::Debug>(mut read: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let start = Instant::now();
    let mut v = read();
    while !done(&v) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        v = read();
    }
    v
}

#[test]
fn clients_behind_haproxy_get_their_own_address() {
    let rig = Rig::start("");
    // Over TCP and TLS, with v1 and v2 headers: XOR-MAPPED-ADDRESS is the
    // client's own address (127.0.0.5 and its port), not HAProxy's.
    for front in [rig.tcp_v1, rig.tcp_v2] {
        let mut s = connect_from(CLIENT, front);
        let local = s.local_addr().unwrap();
        let mapped = binding_stream(&mut s).unwrap_or_else(|e| panic!("Binding via {front}: {e}"));
        assert_eq!(mapped, local, "via {front}");
    }
    for front in [rig.tls_v1, rig.tls_v2] {
        let (mapped, local) = binding_tls(&rig, CLIENT, front);
        assert_eq!(mapped, local, "via {front}");
    }

    // An allocation through the balancer is the client's in `ferroturn
    // sessions`.
    let s = connect_from(CLIENT, rig.tcp_v2);
    let client_addr = s.local_addr().unwrap();
    let mut c = RawClient::over_tcp(s, rig.tcp_v2, REALM, USER, PASSWORD);
    let relay = c.allocate();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    cmd.args(["sessions", "--config"]).arg(&rig.config);
    let Output { code, output, .. } = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{output}");
    let line = output
        .lines()
        .find(|l| l.contains(&relay.to_string()))
        .unwrap_or_else(|| panic!("no session on {relay}:\n{output}"));
    // USER CLIENT TRANSPORT RELAY ...
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[1], client_addr.to_string(), "{output}");
    assert_eq!(columns[2], "tcp", "{output}");
    drop(c);

    // The log names the client, and HAProxy only as the balancer.
    let log = rig.log();
    assert!(log.contains(&format!("client={client_addr}/tcp")), "{log}");
    assert_eq!(rig.proxy_refusals("malformed"), 0);
    assert_eq!(rig.proxy_refusals("source"), 0);
    assert_eq!(rig.proxy_refusals("timeout"), 0);
}

/// aiostun (from PyPI, pinned in tests/py/requirements.txt and installed by
/// tests/run.sh), a STUN client apps use, over TCP and TLS through each
/// frontend: its own address comes back in XOR-MAPPED-ADDRESS.
#[test]
fn aiostun_behind_haproxy_gets_its_own_address() {
    let rig = Rig::start("");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: tests/run.sh makes it (python3 -m venv tests/py/.venv; pip install --require-hashes -r tests/py/requirements.txt)",
        python.display()
    );
    for (proto, front) in [
        ("tcp", rig.tcp_v1),
        ("tcp", rig.tcp_v2),
        ("tls", rig.tls_v1),
        ("tls", rig.tls_v2),
    ] {
        let mut cmd = Command::new(&python);
        cmd.arg(root.join("aiostun_binding.py"))
            .arg(proto)
            .arg(front.ip().to_string())
            .arg(front.port().to_string())
            .arg(CLIENT.to_string());
        let Output { code, output, .. } = run_with_timeout(cmd, Duration::from_secs(30));
        assert_eq!(code, Some(0), "aiostun over {proto} via {front}: {output}");
        let line = output
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no answer line: {output}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["mapped"]["ip"], CLIENT.to_string(), "via {front}: {v}");
        assert_eq!(v["local"][0], CLIENT.to_string(), "via {front}: {v}");
        assert_eq!(v["mapped"]["port"], v["local"][1], "via {front}: {v}");
    }
}

/// HAProxy's health checks (`check`: with `send-proxy-v2` a v2 LOCAL
/// header; with `send-proxy` a v1 `PROXY TCP4` line naming HAProxy's own
/// addresses) are served as the balancer's own connections: every server
/// stays UP with its last check passed, and ferroturn logs nothing above
/// debug for them and counts no refusal.
#[test]
fn health_checks_keep_every_server_up() {
    let rig = Rig::start("");
    // 200 ms apart: 10 rounds of checks, each able to mark a server DOWN.
    std::thread::sleep(Duration::from_secs(2));
    let servers = rig.haproxy_servers();
    assert_eq!(servers.len(), 4, "{servers:?}");
    for s in &servers {
        assert_eq!(s["status"], "UP", "{s:?}");
        // "* " while a check runs.
        let last = s["check_status"].trim_start_matches("* ");
        assert!(last.starts_with("L4OK"), "{s:?}");
        assert_eq!(s["chkfail"], "0", "{s:?}");
        assert_eq!(s["chkdown"], "0", "{s:?}");
    }
    let log = rig.log();
    let local = log
        .lines()
        .filter(|l| l.contains("PROXY protocol header names no client"))
        .count();
    assert!(local >= 10, "{local} LOCAL headers seen:\n{log}");
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
    for reason in ["malformed", "source", "timeout"] {
        assert_eq!(rig.proxy_refusals(reason), 0, "{reason}");
    }
    let haproxy = fs::read_to_string(&rig.haproxy_log).unwrap_or_default();
    assert!(!haproxy.contains("is DOWN"), "{haproxy}");
}

#[test]
fn uclient_over_tcp_and_tls_behind_haproxy() {
    let _serial = UCLIENT_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::start("");
    let peer = CoturnPeer::start();
    const MESSAGES: u64 = 50;
    const CLIENTS: u64 = 2;
    for (secure, front) in [
        (false, rig.tcp_v1),
        (false, rig.tcp_v2),
        (true, rig.tls_v1),
        (true, rig.tls_v2),
    ] {
        let mut cmd = tool("turnutils_uclient");
        cmd.arg("-t");
        if secure {
            cmd.arg("-S");
        }
        cmd.args(["-u", USER, "-w", PASSWORD]);
        cmd.args(["-n", &MESSAGES.to_string(), "-m", &CLIENTS.to_string()]);
        cmd.args(["-l", "170", "-L", &CLIENT.to_string()]);
        cmd.args(["-e", "127.0.0.1", "-r", &peer.port.to_string()]);
        cmd.args(["-p", &front.port().to_string(), "127.0.0.1"]);
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        let context = format!(
            "uclient -t{} via {front} (exit {:?}, {:?}):\n{}",
            if secure { " -S" } else { "" },
            out.code,
            out.elapsed,
            out.output
        );
        assert!(!out.timed_out, "{context}");
        assert_eq!(out.code, Some(0), "{context}");
        let summary = parse_summary(&out.output).unwrap_or_else(|| panic!("no summary: {context}"));
        summary.assert_complete(MESSAGES * CLIENTS, &context);
    }
    // Every allocation the server made and deleted was 127.0.0.5's (the
    // v1 health checks, which HAProxy sends as "PROXY TCP4" with its own
    // addresses, only connect).
    let log = rig.log();
    for transport in ["tcp", "tls"] {
        let allocations: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("allocation") && l.contains(&format!("/{transport}")))
            .collect();
        assert!(allocations.len() >= 4, "{transport}: {allocations:#?}");
        for l in &allocations {
            assert!(l.contains("client=127.0.0.5:"), "{l}");
        }
    }
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn refusals_close_and_count() {
    let rig = Rig::start("");

    // From outside proxy_from, straight to ferroturn: closed at once,
    // even with a well-formed header that names someone else.
    let mut s = connect_from(CLIENT, rig.tcp);
    let _ = s.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 4000 3478\r\n");
    let _ = s.write_all(&binding_request(&transaction_id()));
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    let mut s = connect_from(CLIENT, rig.tls);
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert_eq!(eventually(|| rig.proxy_refusals("source"), |&n| n >= 2), 2);

    // From the balancer's address with no header (a STUN message first):
    // closed at once and counted as malformed. A broken v2 header too.
    let mut s = connect_from(LOCALHOST, rig.tcp);
    s.write_all(&binding_request(&transaction_id())).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    let mut s = connect_from(LOCALHOST, rig.tls);
    s.write_all(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff")
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // A v1 line past 107 bytes.
    let mut s = connect_from(LOCALHOST, rig.tcp);
    s.write_all(format!("PROXY UNKNOWN {}\r\n", "1".repeat(120)).as_bytes())
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert_eq!(
        eventually(|| rig.proxy_refusals("malformed"), |&n| n >= 3),
        3
    );

    // No header, or half of one, within 5 s: closed, and counted.
    let started = Instant::now();
    let mut silent = connect_from(LOCALHOST, rig.tcp);
    let mut half = connect_from(LOCALHOST, rig.tls);
    half.write_all(b"PROXY TCP4 192.0.2.").unwrap();
    for s in [&mut silent, &mut half] {
        assert!(closed_within(s, Duration::from_secs(15)), "still open");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "closed after {:?}, before the 5 s the header may take",
        started.elapsed()
    );
    assert_eq!(eventually(|| rig.proxy_refusals("timeout"), |&n| n >= 2), 2);

    // The listeners still serve the balancer's clients.
    let mut s = connect_from(CLIENT, rig.tcp_v1);
    let local = s.local_addr().unwrap();
    assert_eq!(binding_stream(&mut s).unwrap(), local);
    assert!(!rig.log().contains("panicked"));
}

/// `connections_per_ip` counts each client behind the balancer under its
/// own address: one client over its cap is refused while another is
/// served, and the balancer, which holds all their connections, is exempt.
#[test]
fn per_ip_limits_key_on_the_carried_address() {
    let rig = Rig::start("connections_per_ip = 2\ntls_handshakes_per_ip = 2");
    let (a, b) = (CLIENT, Ipv4Addr::new(127, 0, 0, 6));
    let mut held = Vec::new();
    for front in [rig.tcp_v1, rig.tcp_v2] {
        let mut s = connect_from(a, front);
        let local = s.local_addr().unwrap();
        assert_eq!(binding_stream(&mut s).unwrap(), local);
        held.push(s);
    }
    // A third from a: HAProxy connects, the header names a, and ferroturn
    // closes it (HAProxy then closes the client's side).
    let mut third = connect_from(a, rig.tcp_v2);
    let _ = third.write_all(&binding_request(&transaction_id()));
    assert!(closed_within(&mut third, Duration::from_secs(5)));
    assert_eq!(
        eventually(
            || rig.metric("ferroturn_stream_refusals_total{reason=\"per_ip_connections\"}"),
            |&n| n >= 1
        ),
        1
    );
    // b is served meanwhile, over TCP and TLS, though HAProxy (127.0.0.1)
    // already holds more than two connections to ferroturn.
    let mut s = connect_from(b, rig.tcp_v1);
    let local = s.local_addr().unwrap();
    assert_eq!(binding_stream(&mut s).unwrap(), local);
    let (mapped, local) = binding_tls(&rig, b, rig.tls_v2);
    assert_eq!(mapped, local);
    // a gets a place back when it closes one.
    drop(held.pop());
    let mut again = eventually(
        || {
            let mut s = connect_from(a, rig.tcp_v1);
            binding_stream(&mut s).ok().map(|m| (m, s))
        },
        Option::is_some,
    )
    .map(|(m, _)| m);
    assert!(again.take().is_some_and(|m| m.ip() == IpAddr::V4(a)));
}

/// A balancer that opens connections and sends no header holds at most
/// 1,024 waits per worker and listener (2 workers here); the connections
/// beyond are closed at once, and the waiting ones at the 5 s deadline.
#[test]
fn headers_awaited_at_once_are_bounded() {
    const OPENED: usize = 2_600;
    const WAITS: usize = 2 * 1_024;
    let limit = common::raise_fd_limit(8_192);
    assert!(limit >= 6_000, "open files limit {limit}");
    let rig = Rig::start("");
    let conns: Vec<TcpStream> = (0..OPENED)
        .map(|_| {
            let s = TcpStream::connect_timeout(&rig.tcp, Duration::from_secs(5)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let open = |conns: &[TcpStream]| {
        conns
            .iter()
            .filter(|s| {
                let mut buf = [0u8; 1];
                matches!(
                    (&**s).read(&mut buf),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                )
            })
            .count()
    };
    // Well before the deadline: the waits are full, the rest closed.
    std::thread::sleep(Duration::from_secs(1));
    let waiting = open(&conns);
    assert!(waiting <= WAITS, "{waiting} connections wait");
    assert!(waiting >= 1_000, "only {waiting} connections wait");
    // After it: none left, each wait counted as a timeout.
    let left = eventually(|| open(&conns), |&n| n == 0);
    assert_eq!(left, 0);
    let timeouts = eventually(|| rig.proxy_refusals("timeout"), |&n| n as usize >= waiting);
    assert_eq!(timeouts as usize, waiting);
    // The listener serves the balancer's clients again.
    let mut s = connect_from(CLIENT, rig.tcp_v2);
    let local = s.local_addr().unwrap();
    assert_eq!(binding_stream(&mut s).unwrap(), local);
}
