//! `/metrics` and the admin API of the real binary against a known
//! workload: three allocations of two users, ChannelData round trips
//! through a UDP echo peer, a wrong password, an unknown user and a denied
//! peer; then the figures, the session list (API and `ferroturn sessions`),
//! `ferroturn kill`, and the token checks.
//!
//! Then the defences of both listeners: the `Host` rule against DNS
//! rebinding, the admin Unix socket (mode, owner, stale file, CLI
//! default), token rotation by reload, and 1,000 idle or trickling sockets
//! that must not keep a real scrape or admin request out.
//!
//! Everything talks to 127.0.0.0/8 or a Unix socket in a temporary
//! directory only, and every wait is bounded.

mod common;
mod raw;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{EchoPeer, LOCALHOST, PASSWORD, REALM, ServerConfig, TempDir, USER};
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::message::*;

const TOKEN: &str = "t0ken-for-tests";
const BOB: (&str, &str) = ("bob", "builder");
/// ChannelData round trips through the echo peer.
const ROUND_TRIPS: u64 = 10;
const PAYLOAD: usize = 100;

/// A `ferroturn` child with `[metrics]` and `[admin]` on loopback.
struct Server {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    admin: SocketAddr,
    /// The admin API's Unix socket.
    socket: PathBuf,
    relay_ports: (u16, u16),
    config_path: std::path::PathBuf,
    log_path: std::path::PathBuf,
    _dir: TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(ServerConfig {
            workers: Some(2),
            ..ServerConfig::default()
        })
    }

    fn start_with(mut config: ServerConfig) -> Server {
        config.users.push((BOB.0.into(), BOB.1.into()));
        let relay = common::relay_block();
        let mut last = String::new();
        for _ in 0..3 {
            match Server::try_start(&config, relay) {
                Ok(s) => return s,
                Err(log) => last = log,
            }
        }
        panic!("ferroturn did not start; last log:\n{last}");
    }

    fn try_start(config: &ServerConfig, relay: (u16, u16)) -> Result<Server, String> {
        let dir = TempDir::new("metrics-admin");
        let (port, metrics, admin) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        let socket = dir.path().join("admin.sock");
        let mut toml = config.to_toml(port, relay);
        toml.push_str(&format!(
            "\n[metrics]\naddress = \"127.0.0.1:{metrics}\"\nhosts = [\"Scrape-Target.example\"]\n\n[admin]\naddress = \"127.0.0.1:{admin}\"\nsocket = \"{}\"\ntoken = \"{TOKEN}\"\n",
            socket.display()
        ));
        let config_path = dir.path().join("ferroturn.toml");
        let log_path = dir.path().join("ferroturn.log");
        fs::write(&config_path, toml).unwrap();
        let addr = SocketAddr::from((LOCALHOST, port));
        let (m, a) = (
            SocketAddr::from((LOCALHOST, metrics)),
            SocketAddr::from((LOCALHOST, admin)),
        );
        let up = |x: &SocketAddr| TcpStream::connect_timeout(x, Duration::from_secs(1)).is_ok();
        let child = common::spawn_ferroturn(&config_path, &log_path, addr, || up(&m) && up(&a))?;
        Ok(Server {
            child,
            addr,
            metrics: m,
            admin: a,
            socket,
            relay_ports: relay,
            config_path,
            log_path,
            _dir: dir,
        })
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- ferroturn log ----\n{}---- end ----", self.log());
        }
    }
}

/// One HTTP/1.1 request (no body); status and body.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    exchange(s, &head, Duration::from_secs(10))
}

/// Send `head` on `s` and read the whole answer within `limit`: status and
/// body.
fn exchange(mut s: impl Read + Write + ReadTimeout, head: &str, limit: Duration) -> (u16, String) {
    s.read_timeout(limit);
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("no whole answer within {limit:?} to {head:?}: {e}"));
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Sockets whose reads can be bounded in time.
trait ReadTimeout {
    fn read_timeout(&mut self, d: Duration);
}

impl ReadTimeout for TcpStream {
    fn read_timeout(&mut self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
    }
}

impl ReadTimeout for UnixStream {
    fn read_timeout(&mut self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
    }
}

/// Scrape `/metrics`: every sample by its series (name and labels as
/// printed). Checks the text format on the way.
fn scrape(s: &Server) -> HashMap<String, u64> {
    let (status, text) = http(s.metrics, "GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    let mut samples = HashMap::new();
    let mut typed = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            typed.insert(name.to_owned(), kind.to_owned());
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name}");
            }
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("ferroturn_"), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let f = name.strip_suffix(suffix)?;
                (typed.get(f).map(String::as_str) == Some("histogram")).then_some(f)
            })
            .unwrap_or(name);
        assert!(typed.contains_key(family), "{line}: no # TYPE before it");
        let old = samples.insert(series.to_owned(), value.parse().expect("an integer"));
        assert!(old.is_none(), "{series} twice");
    }
    // No per-user or per-address labels, ever.
    for word in ["alice", "bob", "mallory", "127.0.0.1"] {
        assert!(!text.contains(word), "{word} in /metrics");
    }
    samples
}

fn get(m: &HashMap<String, u64>, series: &str) -> u64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// `ferroturn ARGS`; exit code and output (stdout and stderr).
fn cli(args: &[&str]) -> (Option<i32>, String) {
    cli_env(args, None)
}

/// `ferroturn ARGS` with `$FERROTURN_ADMIN_TOKEN` set to `token`, or unset.
fn cli_env(args: &[&str], token: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    cmd.args(args)
        .env_remove(ferroturn::admin::client::TOKEN_ENV);
    if let Some(t) = token {
        cmd.env(ferroturn::admin::client::TOKEN_ENV, t);
    }
    let out = common::run_with_timeout(cmd, Duration::from_secs(30));
    assert!(!out.timed_out, "ferroturn {args:?} hung:\n{}", out.output);
    (out.code, out.output)
}

fn sessions_api(s: &Server) -> Vec<serde_json::Value> {
    let (status, body) = http(s.admin, "GET", "/sessions", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["sessions"].as_array().unwrap().clone()
}

/// `read()` until `done` holds of it, for at most 2 s: each UDP driver
/// takes its shard and its policy as its thread starts.
fn settled<T>(mut read: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let start = std::time::Instant::now();
    let mut v = read();
    while !done(&v) && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        v = read();
    }
    v
}

#[test]
fn udp_thread_settings_take_effect() {
    let s = Server::start_with(ServerConfig {
        workers: Some(2),
        udp_threads: Some("dedicated"),
        udp_scheduling: Some("batch"),
        ..ServerConfig::default()
    });
    // Dedicated: each worker's thread holds its shard at idle (the adaptive
    // default shows 1 here, see the next test).
    let threads = settled(|| get(&scrape(&s), "ferroturn_udp_threads"), |&n| n == 2);
    assert_eq!(threads, 2);
    assert_eq!(get(&scrape(&s), "ferroturn_udp_batch_threads"), 2);

    // Batch: SCHED_BATCH on the two UDP threads, and on no other. The
    // default, "auto", begins the same way (tests/scheduling.rs: it leaves
    // batch when the CPU is busy); "normal" leaves every thread alone.
    let udp_are = |t: &[(String, i32)], policy: i32| {
        let udp: Vec<_> = t
            .iter()
            .filter(|(n, _)| n.starts_with("ferroturn-u"))
            .collect();
        udp.len() == 2 && udp.iter().all(|(_, p)| *p == policy)
    };
    let others_normal = |t: &[(String, i32)]| {
        t.iter()
            .filter(|(n, _)| !n.starts_with("ferroturn-u"))
            .all(|(_, p)| *p == libc::SCHED_OTHER)
    };
    let auto = Server::start_with(ServerConfig {
        workers: Some(2),
        ..ServerConfig::default()
    });
    let normal = Server::start_with(ServerConfig {
        workers: Some(2),
        udp_scheduling: Some("normal"),
        ..ServerConfig::default()
    });
    for (server, policy) in [
        (&s, libc::SCHED_BATCH),
        (&auto, libc::SCHED_BATCH),
        (&normal, libc::SCHED_OTHER),
    ] {
        let pid = server.child.id();
        let threads = settled(|| common::thread_policies(pid), |t| udp_are(t, policy));
        assert!(udp_are(&threads, policy), "{threads:?}");
        assert!(others_normal(&threads), "{threads:?}");
    }
    assert_eq!(get(&scrape(&normal), "ferroturn_udp_batch_threads"), 0);
}

#[test]
fn metrics_and_admin_follow_a_known_workload() {
    let s = Server::start();
    let echo = EchoPeer::start();
    let block = (s.relay_ports.1 - s.relay_ports.0 + 1) as u64;

    let before = scrape(&s);
    assert_eq!(get(&before, "ferroturn_allocations_active"), 0);
    assert_eq!(get(&before, "ferroturn_relay_ports_free"), block);
    assert_eq!(get(&before, "ferroturn_draining"), 0);
    // Idle: one thread drives both workers' UDP sockets.
    assert_eq!(get(&before, "ferroturn_udp_threads"), 1);

    // The workload.
    let mut a = RawClient::udp(s.addr, REALM, USER, PASSWORD);
    let relay_a = a.allocate();
    let mut b = RawClient::udp(s.addr, REALM, USER, PASSWORD);
    let relay_b = b.allocate();
    let mut c = RawClient::udp(s.addr, REALM, BOB.0, BOB.1);
    let relay_c = c.allocate();
    a.channel_bind(0x4000, echo.addr);
    let payload = vec![0x5a; PAYLOAD];
    let mut buf = vec![0u8; 2048];
    for _ in 0..ROUND_TRIPS {
        a.send(&a.channel_data(0x4000, &payload));
        let n = a.recv(&mut buf);
        assert_eq!(&buf[..4], &[0x40, 0x00, 0, PAYLOAD as u8]);
        assert_eq!(&buf[4..n], &payload[..]);
    }
    let mut wrong = RawClient::udp(s.addr, REALM, USER, "not-the-password");
    let r = wrong.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(wire::error_code(&r), Some(401));
    let mut unknown = RawClient::udp(s.addr, REALM, "mallory", "x");
    let r = unknown.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(wire::error_code(&r), Some(401));
    // A peer the policy denies whatever `allow` says: the metrics listener.
    let r = a.signed(Request::new(METHOD_CREATE_PERMISSION).peer(s.metrics));
    assert_eq!(wire::error_code(&r), Some(403));

    // The figures.
    let m = scrape(&s);
    let expect = [
        ("ferroturn_allocations_active", 3),
        ("ferroturn_allocations_created_total", 3),
        ("ferroturn_allocations_expired_total", 0),
        ("ferroturn_allocations_deleted_total", 0),
        ("ferroturn_permissions_active", 1),
        ("ferroturn_channels_active", 1),
        ("ferroturn_relay_ports_free", block - 3),
        ("ferroturn_draining", 0),
        // 2 per client: the challenge, then the signed request.
        ("ferroturn_requests_total{method=\"allocate\"}", 10),
        ("ferroturn_requests_total{method=\"channel_bind\"}", 1),
        ("ferroturn_requests_total{method=\"create_permission\"}", 1),
        ("ferroturn_requests_total{method=\"refresh\"}", 0),
        (
            "ferroturn_error_responses_total{method=\"allocate\",code=\"401\"}",
            7,
        ),
        (
            "ferroturn_error_responses_total{method=\"create_permission\",code=\"403\"}",
            1,
        ),
        (
            "ferroturn_error_responses_total{method=\"allocate\",code=\"438\"}",
            0,
        ),
        ("ferroturn_auth_failures_total{reason=\"bad_integrity\"}", 1),
        ("ferroturn_auth_failures_total{reason=\"unknown_user\"}", 1),
        ("ferroturn_auth_failures_total{reason=\"stale_nonce\"}", 0),
        (
            "ferroturn_auth_failures_total{reason=\"missing_attributes\"}",
            0,
        ),
        ("ferroturn_peer_policy_denials_total", 1),
        ("ferroturn_quota_rejections_total", 0),
        ("ferroturn_rate_limited_packets_total", 0),
        ("ferroturn_unauthenticated_answers_suppressed_total", 0),
        ("ferroturn_malformed_packets_total", 0),
        (
            "ferroturn_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"}",
            ROUND_TRIPS,
        ),
        (
            "ferroturn_relayed_packets_total{direction=\"to_client\",transport=\"udp\"}",
            ROUND_TRIPS,
        ),
        (
            "ferroturn_relayed_bytes_total{direction=\"to_peer\",transport=\"udp\"}",
            ROUND_TRIPS * PAYLOAD as u64,
        ),
        (
            "ferroturn_relayed_bytes_total{direction=\"to_client\",transport=\"udp\"}",
            ROUND_TRIPS * PAYLOAD as u64,
        ),
        (
            "ferroturn_relayed_packets_total{direction=\"to_peer\",transport=\"tcp\"}",
            0,
        ),
        ("ferroturn_session_duration_seconds_count", 0),
        ("ferroturn_session_duration_seconds_bucket{le=\"+Inf\"}", 0),
    ];
    for (series, want) in expect {
        assert_eq!(get(&m, series), want, "{series}");
    }
    assert!(get(&m, "ferroturn_requests_total{method=\"binding\"}") >= 1);

    // Sessions through the API.
    let list = sessions_api(&s);
    assert_eq!(list.len(), 3, "{list:?}");
    let by_relay = |relay: SocketAddr| {
        list.iter()
            .find(|v| v["relay"] == relay.to_string())
            .unwrap_or_else(|| panic!("no session on {relay}: {list:?}"))
    };
    let sa = by_relay(relay_a);
    assert_eq!(sa["user"], USER);
    assert_eq!(sa["client"], a.local_addr().to_string());
    assert_eq!(sa["transport"], "udp");
    assert_eq!(sa["relay_port"], relay_a.port());
    assert!(sa["age_seconds"].as_u64().unwrap() < 120);
    for dir in ["to_peer", "to_client"] {
        assert_eq!(sa[dir]["packets"], ROUND_TRIPS, "{dir}");
        assert_eq!(sa[dir]["bytes"], ROUND_TRIPS * PAYLOAD as u64, "{dir}");
    }
    assert_eq!(by_relay(relay_b)["to_peer"]["packets"], 0);
    assert_eq!(by_relay(relay_c)["user"], BOB.0);

    // Sessions through the CLI: over TCP with --admin and --token-file,
    // over the socket from --config or --admin.
    let admin = s.admin.to_string();
    let config = s.config_path.to_str().unwrap();
    let token_file = s._dir.path().join("token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.to_str().unwrap();
    let socket = s.socket.to_str().unwrap();
    for args in [
        &["sessions", "--admin", &admin, "--token-file", token_file][..],
        &["sessions", "--config", config][..],
        &["sessions", "--admin", socket][..],
    ] {
        // A configured token is checked on the socket too.
        let (code, out) = cli_env(args, Some(TOKEN));
        assert_eq!(code, Some(0), "{args:?}: {out}");
        assert!(out.starts_with("USER "), "{out}");
        for relay in [relay_a, relay_b, relay_c] {
            assert!(out.contains(&relay.to_string()), "{relay} missing:\n{out}");
        }
        assert!(out.contains(&a.local_addr().to_string()), "{out}");
        assert!(out.trim_end().ends_with("3 sessions"), "{out}");
    }
    let (code, out) = cli(&["sessions", "--json", "--config", config]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), 3);

    // Refusals: no token, wrong token, nobody listening.
    let (code, out) = cli(&["sessions", "--admin", &admin]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("401") && out.contains("token"), "{out}");
    let (code, out) = cli(&["kill", "--user", USER, "--admin", &admin, "--token", "nope"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("401") && out.contains("wrong token"), "{out}");
    assert!(
        out.contains("warning: --token is visible"),
        "a token on the command line is warned about: {out}"
    );
    let closed = format!("127.0.0.1:{}", common::free_port());
    let (code, out) = cli(&["sessions", "--admin", &closed, "--token", TOKEN]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot reach the admin API"), "{out}");
    assert_eq!(get(&scrape(&s), "ferroturn_allocations_active"), 3);

    // Kill alice's sessions; bob's stays.
    let (code, out) = cli(&["kill", "--user", USER, "--config", config]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.trim(), "closed 2 sessions of user alice");
    let m = scrape(&s);
    assert_eq!(get(&m, "ferroturn_allocations_active"), 1);
    assert_eq!(get(&m, "ferroturn_allocations_deleted_total"), 2);
    assert_eq!(get(&m, "ferroturn_relay_ports_free"), block - 1);
    assert_eq!(get(&m, "ferroturn_permissions_active"), 0);
    assert_eq!(get(&m, "ferroturn_channels_active"), 0);
    assert_eq!(get(&m, "ferroturn_session_duration_seconds_count"), 2);
    assert_eq!(
        get(&m, "ferroturn_session_duration_seconds_bucket{le=\"+Inf\"}"),
        2
    );
    assert_eq!(
        get(&m, "ferroturn_session_duration_seconds_bucket{le=\"600\"}"),
        2
    );
    let list = sessions_api(&s);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["user"], BOB.0);

    // The killed client's next Refresh finds no allocation.
    let r = a.signed(Request::new(METHOD_REFRESH).lifetime(600));
    assert_eq!(wire::error_code(&r), Some(437));
    let m = scrape(&s);
    assert_eq!(
        get(
            &m,
            "ferroturn_error_responses_total{method=\"refresh\",code=\"437\"}"
        ),
        1
    );

    // Close one session by relay port; bob's client gets 437 too.
    let port = relay_c.port().to_string();
    let (code, out) = cli(&["kill", "--relay-port", &port, "--config", config]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.trim(), format!("closed 1 session on relay port {port}"));
    let (code, out) = cli(&["kill", "--relay-port", &port, "--config", config]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("404") && out.contains("no session"), "{out}");
    let path = format!("/sessions/{port}");
    let (status, body) = http(s.admin, "DELETE", &path, Some(TOKEN));
    assert_eq!(status, 404, "{body}");
    let r = c.signed(Request::new(METHOD_REFRESH).lifetime(600));
    assert_eq!(wire::error_code(&r), Some(437));
    assert_eq!(get(&scrape(&s), "ferroturn_allocations_active"), 0);
    let (code, out) = cli(&["sessions", "--config", config]);
    assert_eq!((code, out.as_str()), (Some(0), "no sessions\n"));
    let (code, out) = cli(&["kill", "--user", "nobody", "--config", config]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.trim(), "closed 0 sessions of user nobody");
}

#[test]
fn admin_api_statuses_and_token() {
    let s = Server::start();
    let ok = Some(TOKEN);
    for (method, path, token, want) in [
        ("GET", "/sessions", None, 401),
        ("GET", "/sessions", Some("wrong"), 401),
        ("GET", "/sessions", Some(""), 401),
        ("DELETE", "/users/alice/sessions", None, 401),
        ("GET", "/nope", None, 401),
        ("GET", "/sessions", ok, 200),
        ("HEAD", "/sessions", ok, 200),
        ("POST", "/sessions", ok, 405),
        ("GET", "/sessions/10000", ok, 405),
        ("DELETE", "/sessions/abc", ok, 400),
        ("DELETE", "/sessions/0", ok, 400),
        ("DELETE", "/sessions/65535", ok, 404),
        ("GET", "/users/alice/sessions", ok, 405),
        ("DELETE", "/users/alice/sessions", ok, 200),
        ("DELETE", "/users/%zz/sessions", ok, 400),
        ("GET", "/", ok, 404),
        ("GET", "/users", ok, 404),
    ] {
        let (status, body) = http(s.admin, method, path, token);
        assert_eq!(status, want, "{method} {path} {token:?}: {body}");
    }
    let (_, body) = http(s.admin, "GET", "/sessions", ok);
    assert_eq!(body, "{\"sessions\":[]}");
    let (_, body) = http(s.admin, "GET", "/sessions", None);
    assert!(body.contains("\"error\""), "{body}");

    // /metrics needs no token; only GET and HEAD, only /metrics.
    for (method, path, want) in [
        ("GET", "/metrics", 200),
        ("HEAD", "/metrics", 200),
        ("POST", "/metrics", 405),
        ("GET", "/metrics/x", 404),
    ] {
        let (status, body) = http(s.metrics, method, path, None);
        assert_eq!(status, want, "{method} {path}: {body}");
    }
    // A malformed request line gets 400, and the listener lives on.
    let mut t = TcpStream::connect(s.metrics).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut answer = String::new();
    t.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let (status, text) = http(s.metrics, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE ferroturn_session_duration_seconds histogram"));
}

/// `GET /sessions` over the admin socket, as `ferroturn sessions` sends it.
fn socket_sessions(socket: &Path, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head =
        format!("GET /sessions HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    exchange(
        UnixStream::connect(socket).unwrap(),
        &head,
        Duration::from_secs(10),
    )
}

#[test]
fn only_ip_literal_or_localhost_hosts_are_answered() {
    let s = Server::start();
    let mut client = RawClient::udp(s.addr, REALM, USER, PASSWORD);
    client.allocate();
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let port = s.admin.port();
    let kill = |host: &str| {
        format!("DELETE /users/{USER}/sessions HTTP/1.1\r\n{host}{bearer}Connection: close\r\n\r\n")
    };
    let t = Duration::from_secs(10);
    let connect = |a: SocketAddr| TcpStream::connect_timeout(&a, t).unwrap();
    // What a page that reached 127.0.0.1 by DNS rebinding sends: its own
    // name. Refused before the token is even looked at, and before the
    // handler runs: the session is still there.
    for host in [
        format!("Host: rebind.example:{port}\r\n"),
        "Host: rebind.example\r\n".to_owned(),
        format!("Host: 127.0.0.1.nip.io:{port}\r\n"),
        format!("Host: localhost.:{port}\r\n"),
    ] {
        let (status, body) = exchange(connect(s.admin), &kill(&host), t);
        assert_eq!(status, 421, "{host}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(v["error"].as_str().unwrap().contains("Host"), "{body}");
    }
    // HTTP/1.1 without Host, or with two: 400.
    let (status, body) = exchange(connect(s.admin), &kill(""), t);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let two = format!("Host: 127.0.0.1:{port}\r\nHost: rebind.example\r\n");
    assert_eq!(exchange(connect(s.admin), &kill(&two), t).0, 400);
    assert_eq!(sessions_api(&s).len(), 1, "no refused request ran");
    // /metrics: the same rule.
    let scrape_as =
        |host: &str| format!("GET /metrics HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    let (status, body) = exchange(
        connect(s.metrics),
        &scrape_as("Host: rebind.example\r\n"),
        t,
    );
    assert_eq!(status, 421, "{body}");
    assert!(!body.contains("ferroturn_"), "no figure leaks: {body}");
    assert_eq!(exchange(connect(s.metrics), &scrape_as(""), t).0, 400);
    // IP literals (v4, bracketed v6) and localhost, with or without a port,
    // and HTTP/1.0 without Host, are answered.
    let mport = s.metrics.port();
    for host in [
        format!("Host: 127.0.0.1:{mport}\r\n"),
        "Host: 127.0.0.1\r\n".to_owned(),
        format!("Host: [::1]:{mport}\r\n"),
        format!("Host: LOCALHOST:{mport}\r\n"),
        "Host: localhost\r\n".to_owned(),
        // A name the operator listed in [metrics] hosts.
        format!("Host: scrape-target.example:{mport}\r\n"),
    ] {
        let (status, body) = exchange(connect(s.metrics), &scrape_as(&host), t);
        assert_eq!(status, 200, "{host}");
        assert!(body.contains("ferroturn_allocations_active 1"), "{host}");
    }
    let old = "GET /metrics HTTP/1.0\r\n\r\n";
    assert_eq!(exchange(connect(s.metrics), old, t).0, 200);
    // And a local Host with the token closes the session.
    let (status, body) = exchange(
        connect(s.admin),
        &kill(&format!("Host: localhost:{port}\r\n")),
        t,
    );
    assert_eq!((status, body.as_str()), (200, "{\"closed\":1}"));
    // Refusals are logged, but sparingly: once for each listener (several
    // were refused on each), so that one cannot silence the other.
    assert_eq!(
        s.log().matches("foreign Host refused").count(),
        2,
        "{}",
        s.log()
    );
}

#[test]
fn admin_socket_is_0660_replaces_a_stale_socket_and_needs_no_token() {
    let dir = TempDir::new("admin-socket");
    let socket = dir.path().join("run").join("admin.sock");
    let port = common::free_port();
    let relay = common::relay_block();
    let toml = ServerConfig::default().to_toml(port, relay)
        + &format!("\n[admin]\nsocket = \"{}\"\n", socket.display());
    let config = dir.path().join("ferroturn.toml");
    fs::write(&config, &toml).unwrap();
    let addr = SocketAddr::from((LOCALHOST, port));
    let log = dir.path().join("ferroturn.log");

    // A file that is not a socket: startup stops and names it.
    fs::create_dir(dir.path().join("run")).unwrap();
    fs::write(&socket, "not a socket").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    cmd.arg("--config").arg(&config);
    let out = common::run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(1), "{}", out.output);
    assert!(
        out.output.contains(&format!(
            "admin socket {}: exists and is not a socket",
            socket.display()
        )),
        "{}",
        out.output
    );
    assert_eq!(
        fs::read_to_string(&socket).unwrap(),
        "not a socket",
        "left alone"
    );

    // A stale socket (its server gone) is replaced.
    fs::remove_file(&socket).unwrap();
    drop(UnixListener::bind(&socket).unwrap());
    assert!(UnixStream::connect(&socket).is_err(), "stale");
    let stale_ino = fs::metadata(&socket).unwrap().ino();
    let up = || UnixStream::connect(&socket).is_ok();
    let mut child = common::spawn_ferroturn(&config, &log, addr, up).unwrap();
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_ne!(meta.ino(), stale_ino, "a new socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // Owned by the service's user and group: the process's own.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    assert!(
        !fs::read_dir(dir.path().join("run")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')),
        "no temporary file left"
    );

    // No token on the socket: its mode is the access control.
    let (status, body) = socket_sessions(&socket, None);
    assert_eq!((status, body.as_str()), (200, "{\"sessions\":[]}"));
    let (code, out) = cli(&["sessions", "--config", config.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (Some(0), "no sessions\n"));
    let (code, out) = cli(&["sessions", "--admin", socket.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{out}");
    // A second server on the same socket is refused, and the first keeps it.
    let second = dir.path().join("second.toml");
    let other_port = common::free_port();
    fs::write(
        &second,
        toml.replace(&format!(":{port}\""), &format!(":{other_port}\"")),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    cmd.arg("--config").arg(&second);
    let out = common::run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(1), "{}", out.output);
    assert!(
        out.output.contains("another process is listening"),
        "{}",
        out.output
    );
    assert_eq!(socket_sessions(&socket, None).0, 200);
    // On SIGTERM the server removes its socket.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!socket.exists(), "socket removed on exit");

    // Without --admin or --config the CLI goes to /run/ferroturn/admin.sock.
    let (code, out) = cli(&["sessions"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("/run/ferroturn/admin.sock"), "{out}");
    // A TCP address without a token does not start, loopback or not.
    let text = toml.replace(
        &format!("socket = \"{}\"", socket.display()),
        "address = \"127.0.0.1:9\"",
    );
    fs::write(&config, text).unwrap();
    let (code, out) = cli(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with(&format!("{}: admin.token: required", config.display())),
        "{out}"
    );
}

#[test]
fn a_reload_rotates_the_admin_token_without_dropping_anything() {
    let s = Server::start();
    let mut client = RawClient::udp(s.addr, REALM, USER, PASSWORD);
    let relay = client.allocate();
    const NEW: &str = "rotated-t0ken";
    let t = Duration::from_secs(10);
    // An admin connection opened before the reload, its request sent after.
    let mut early = TcpStream::connect_timeout(&s.admin, t).unwrap();
    early.write_all(b"GET /sessions HTTP/1.1\r\n").unwrap();

    let text = fs::read_to_string(&s.config_path).unwrap();
    fs::write(&s.config_path, text.replace(TOKEN, NEW)).unwrap();
    unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while http(s.admin, "GET", "/sessions", Some(NEW)).0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http(s.admin, "GET", "/sessions", Some(NEW)).0, 200);
    assert_eq!(http(s.admin, "GET", "/sessions", Some(TOKEN)).0, 401);
    // The socket checks a configured token too.
    assert_eq!(socket_sessions(&s.socket, Some(TOKEN)).0, 401);
    assert_eq!(socket_sessions(&s.socket, Some(NEW)).0, 200);
    let rest = format!(
        "Host: {}\r\nAuthorization: Bearer {NEW}\r\nConnection: close\r\n\r\n",
        s.admin
    );
    let (status, body) = exchange(early, &rest, t);
    assert_eq!(status, 200, "the connection from before the reload: {body}");
    assert!(body.contains(&relay.to_string()), "{body}");
    assert!(s.log().contains("admin: token replaced"), "{}", s.log());
    assert!(!s.log().contains("needs a restart"), "{}", s.log());
    // The allocation lived through it.
    let r = client.signed(Request::new(METHOD_REFRESH).lifetime(600));
    assert_eq!(wire::error_code(&r), None, "refresh after the reload");
    // The CLI: $FERROTURN_ADMIN_TOKEN and --token-file; the old token fails.
    let admin = s.admin.to_string();
    let (code, out) = cli_env(&["sessions", "--admin", &admin], Some(NEW));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&relay.to_string()) && !out.contains("warning"),
        "{out}"
    );
    let file = s._dir.path().join("old-token");
    fs::write(&file, TOKEN).unwrap();
    let f = file.to_str().unwrap();
    let (code, out) = cli_env(
        &["sessions", "--admin", &admin, "--token-file", f],
        Some(NEW),
    );
    assert_eq!(
        code,
        Some(1),
        "--token-file wins over the environment: {out}"
    );
    assert!(out.contains("wrong token"), "{out}");
    let (code, out) = cli(&[
        "sessions",
        "--admin",
        &admin,
        "--token-file",
        "/nonexistent/t",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--token-file /nonexistent/t:"), "{out}");
}

/// Connect to `to` from the source address `from` (any port).
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    sock.into()
}

/// Whether the server closed `s` (EOF or reset), without waiting.
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn idle_and_trickling_sockets_never_keep_a_scrape_or_admin_request_out() {
    let s = Server::start();
    let head_timeout = ferroturn::http::HEAD_TIMEOUT;
    let slots = ferroturn::metrics::CAPS.total;
    // A local user: 1,000 idle sockets from the scraper's own address, far
    // more than the listener's slots, and 300 from another address.
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| connect_from([127, 0, 0, 1], s.metrics))
        .collect();
    let other: Vec<TcpStream> = (0..300)
        .map(|_| connect_from([127, 0, 0, 2], s.metrics))
        .collect();
    assert!(idle.len() + other.len() > 4 * slots);
    // And 20 slow-loris senders: a byte of a request head every 200 ms.
    let mut loris: Vec<(TcpStream, Option<Duration>)> = (0..20)
        .map(|_| (connect_from([127, 0, 0, 3], s.metrics), None))
        .collect();
    let loris_start = Instant::now();

    // A real scrape gets its answer within the head deadline, from the
    // crowded address and from another one.
    let limit = head_timeout;
    let get = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.metrics
    );
    for from in [[127, 0, 0, 1], [127, 0, 0, 4]] {
        let (status, body) = exchange(connect_from(from, s.metrics), &get, limit);
        assert_eq!(status, 200);
        assert!(body.contains("ferroturn_build_info"));
    }
    // The admin API too, over TCP and over its socket, with 300 idle
    // connections on each.
    let idle_admin: Vec<TcpStream> = (0..300)
        .map(|_| connect_from([127, 0, 0, 1], s.admin))
        .collect();
    let idle_socket: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&s.socket).unwrap())
        .collect();
    let last_opened = Instant::now();
    let (status, _) = exchange(
        connect_from([127, 0, 0, 1], s.admin),
        &format!(
            "GET /sessions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
            s.admin
        ),
        limit,
    );
    assert_eq!(status, 200);
    let (code, out) = cli_env(
        &["sessions", "--admin", s.socket.to_str().unwrap()],
        Some(TOKEN),
    );
    assert_eq!((code, out.as_str()), (Some(0), "no sessions\n"));
    let evicted = idle.iter().filter(|c| closed_by_server(c)).count();

    // The slow lorises are cut off at the head deadline, however they
    // trickle (bounded: 40 rounds of 200 ms).
    let head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".repeat(4);
    for round in 0..40 {
        for (c, closed) in loris.iter_mut().filter(|(_, t)| t.is_none()) {
            if (&*c).write_all(&head[round..round + 1]).is_err() || closed_by_server(c) {
                *closed = Some(loris_start.elapsed());
            }
        }
        if loris.iter().all(|(_, t)| t.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cut: Vec<Duration> = loris
        .iter()
        .map(|(_, t)| t.expect("every slow loris cut off within 8 s"))
        .collect();
    let latest = cut.iter().max().unwrap();
    assert!(*latest <= head_timeout + Duration::from_secs(2), "{cut:?}");

    // Every idle socket is closed by now: evicted, or at the deadline.
    std::thread::sleep(
        (head_timeout + Duration::from_secs(1)).saturating_sub(last_opened.elapsed()),
    );
    for (name, set) in [
        ("metrics, 127.0.0.1", &idle),
        ("metrics, 127.0.0.2", &other),
        ("admin", &idle_admin),
    ] {
        let open = set.iter().filter(|c| !closed_by_server(c)).count();
        assert_eq!(open, 0, "{name}: idle sockets outlived the head deadline");
    }
    for mut c in idle_socket {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(c.read(&mut b).unwrap_or(0), 0, "idle admin socket closed");
    }
    eprintln!(
        "1,000 idle sockets on {slots} slots: {evicted} closed to make room before the deadline; slow lorises cut after {:?}..{:?}",
        cut.iter().min().unwrap(),
        latest
    );
    assert!(
        evicted >= 1000 - ferroturn::metrics::CAPS.per_peer,
        "{evicted}"
    );
    // The server is fine afterwards.
    assert_eq!(http(s.metrics, "GET", "/metrics", None).0, 200);
}

/// A local user who keeps opening connections (each held while the next
/// 200 open) from four threads, from the scraper's own address: scrapes in
/// the middle of it are still answered, each within the head deadline once
/// connected. (Connecting itself may take a SYN retransmission when the
/// flood fills the kernel's accept queue: that is the kernel's, not a slot.)
#[test]
fn a_connection_flood_from_the_scrapers_own_address_leaves_scrapes_answered() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let s = Server::start();
    let target = s.metrics;
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    // Bounded: 3 s and 5,000 connections per thread.
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut held = std::collections::VecDeque::new();
                for _ in 0..5000 {
                    if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                    if let Ok(c) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                        held.push_back(c);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    if held.len() > 200 {
                        held.pop_front();
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let get = format!("GET /metrics HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    for _ in 0..10 {
        let c = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        let (status, body) = exchange(c, &get, ferroturn::http::HEAD_TIMEOUT);
        assert_eq!(status, 200);
        assert!(body.contains("ferroturn_build_info"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let during = opened.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().unwrap();
    }
    eprintln!("10 scrapes answered while the flood opened {during} connections from their address");
    let cap = ferroturn::metrics::CAPS.per_peer;
    assert!(
        during > 2 * cap,
        "the flood went past the address's cap ({during})"
    );
}

/// What one hostile request gets: the status of the answer, or `None` when
/// the server closed (or reset) the connection without one.
fn hostile_answer(to: SocketAddr, request: &[u8]) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before the whole request is sent:
    // write from another thread, read here.
    let mut w = s.try_clone().unwrap();
    let request = request.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&request);
    });
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("neither answered nor closed within 10 s: {e}"),
        }
        assert!(raw.len() < 1 << 20, "an endless answer");
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    (status, started.elapsed())
}

/// Requests an attacker would try on a listener, each answered with an
/// error or closed, never served, and the listener serving others
/// meanwhile: a 1 MB header, 10,000 headers, 65 headers (64 pass), a
/// 1 GB body announced on a GET, a chunked body that never ends, an
/// absolute URI naming another host.
#[test]
fn hostile_requests_are_refused_and_others_are_served() {
    let s = Server::start();
    // The admin API's token too (/metrics ignores it): the same answers
    // are expected from both.
    let host = format!("Host: localhost\r\nAuthorization: Bearer {TOKEN}\r\n");
    let big_header = format!(
        "GET /metrics HTTP/1.1\r\n{host}X-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let many = |n: usize| {
        let mut r = format!("GET /metrics HTTP/1.1\r\n{host}");
        for i in 0..n {
            r.push_str(&format!("X-{i}: 1\r\n"));
        }
        r + "\r\n"
    };
    let huge_body = format!(
        "GET /metrics HTTP/1.1\r\n{host}Content-Length: 1000000000\r\n\r\n{}",
        "b".repeat(64 * 1024)
    );
    let endless_chunks = format!(
        "GET /metrics HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n{}",
        "1000\r\n".to_owned() + &"c".repeat(0x1000) + "\r\n"
    )
    .repeat(16);
    let absolute = format!("GET http://rebind.example/metrics HTTP/1.1\r\n{host}\r\n");
    let small_body = format!("GET /metrics HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhello");
    // Each case: what it may get (None: closed without an answer).
    type Case<'a> = (&'a str, Vec<u8>, &'a [Option<u16>]);
    let cases: [Case; 8] = [
        ("1 MB header", big_header.into_bytes(), &[Some(431), None]),
        (
            "10,000 headers",
            many(10_000).into_bytes(),
            &[Some(431), None],
        ),
        // Host and Authorization make 64 and 65.
        ("64 headers", many(62).into_bytes(), &[Some(200)]),
        ("65 headers", many(63).into_bytes(), &[Some(431)]),
        (
            "1 GB body on a GET",
            huge_body.into_bytes(),
            &[Some(413), None],
        ),
        // Its body is never read: the answer, then the connection closes.
        (
            "chunked body on a GET",
            endless_chunks.into_bytes(),
            &[Some(200)],
        ),
        ("absolute URI", absolute.into_bytes(), &[Some(400)]),
        // A small body is ignored, as before.
        (
            "5-byte body on a GET",
            small_body.into_bytes(),
            &[Some(200)],
        ),
    ];
    // A scraper keeps scraping while the cases run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let (stop, to) = (stop.clone(), s.metrics);
        std::thread::spawn(move || {
            let mut answered = 0;
            for _ in 0..200 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                assert_eq!(http(to, "GET", "/metrics", None).0, 200);
                answered += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            answered
        })
    };
    for (name, request, allowed) in &cases {
        for to in [s.metrics, s.admin] {
            // /metrics on the admin API is a 404.
            let request = if to == s.admin {
                String::from_utf8_lossy(request)
                    .replacen("/metrics", "/sessions", 1)
                    .into_bytes()
            } else {
                request.clone()
            };
            let (got, took) = hostile_answer(to, &request);
            assert!(
                allowed.contains(&got),
                "{name} to {to}: {got:?}, expected one of {allowed:?}"
            );
            assert!(
                took < ferroturn::http::HEAD_TIMEOUT + Duration::from_secs(2),
                "{name}: {took:?}"
            );
            eprintln!("{name} to {to}: {got:?} after {took:?}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = scraper.join().unwrap();
    assert!(answered >= 1, "the scraper got answers meanwhile");
    assert_eq!(http(s.metrics, "GET", "/metrics", None).0, 200);
    let (status, _) = http(s.admin, "GET", "/sessions", Some(TOKEN));
    assert_eq!(status, 200);
}
