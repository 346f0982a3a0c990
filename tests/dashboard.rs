//! The Grafana dashboard, `dashboards/ferroturn.json`, checked without
//! Grafana: its JSON is read for what an import needs (schema version, a
//! data source on every panel and query, unique ids, a place on the grid),
//! and every query it holds is run by a real Prometheus (Debian's
//! `/usr/bin/prometheus`, on loopback, with temporary storage) that scrapes
//! a live ferroturn, which runs with `[cluster]` on a `redis-server` the
//! test starts (Debian's package, as tests/cluster_*.rs use it), so that
//! the cluster panels have series too.
//!
//! The test first drives the server through each event a panel shows (a
//! Binding, allocations relaying over UDP and TCP, a quota refusal, a wrong
//! password, a denied peer, a refused TCP connection, a connection to a
//! PROXY protocol listener without a header, malformed and
//! undeliverable packets, a rate-limited burst, suppressed unauthenticated
//! answers, an ended session, usage events published to Redis, and at
//! last a drain), so that a query must
//! not only parse but also find series with values in them: a misspelt
//! metric, label or label value leaves a panel empty and fails here.
//!
//! Everything talks to 127.0.0.0/8 only, and every wait is bounded.

mod common;
mod raw;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::Redis;
use common::{EchoPeer, LOCALHOST, PASSWORD, REALM, ServerConfig, TempDir, USER};
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use serde_json::Value;
use stun::message::*;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/ferroturn.json");
/// From the `prometheus` package, which tests/run.sh installs.
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The scrape job's name, as an operator's config would have it.
const JOB: &str = "ferroturn";
/// The grid is 24 columns wide.
const GRID_COLUMNS: u64 = 24;
/// What Grafana puts for `$__rate_interval` at the default 15 s scrape
/// interval (four scrapes); the test's 1 s scrapes leave dozens of samples
/// in it.
const RATE_INTERVAL: &str = "1m";
const BOB: (&str, &str) = ("bob", "builder");
/// The per-allocation packet ceiling: the round trips stay under it, the
/// burst goes over.
const PACKET_RATE: u32 = 20;
/// Queries that may be 0 after this workload, and why. Every other query
/// must show a value above 0; the drain makes the `ferroturn_draining`
/// ones so in a second round.
const MAY_BE_ZERO: [(&str, &str, &str); 11] = [
    (
        "Allocation churn",
        "B",
        "expired: the test's allocations keep their 600 s lifetime",
    ),
    (
        "Dropped packets",
        "C",
        "send drops: loopback socket buffers do not fill at this rate",
    ),
    (
        "Policy, quota and rate limits",
        "E",
        "revocations: the workload revokes no name (tests/cluster_nodes.rs does)",
    ),
    (
        "Allocation churn",
        "D",
        "mobility moves: the workload moves no allocation (tests/mobility.rs does)",
    ),
    (
        "Cluster",
        "B",
        "redirects: the cluster has no second node to send an Allocate to (tests/cluster_spread.rs redirects)",
    ),
    (
        "TCP relays (RFC 6062)",
        "A",
        "TCP allocations: the workload makes none (tests/tcp_relay.rs does)",
    ),
    (
        "TCP relays (RFC 6062)",
        "B",
        "peer connections of TCP allocations: likewise",
    ),
    (
        "TCP relays (RFC 6062)",
        "C",
        "bytes relayed by TCP allocations: likewise",
    ),
    (
        "Kernel fast path",
        "A",
        "packets relayed in the kernel: the workload's server runs with the fast path off (tests/fastpath.rs runs it on)",
    ),
    (
        "Kernel fast path",
        "B",
        "bytes relayed in the kernel: likewise",
    ),
    ("Kernel fast path", "C", "channels in the kernel: likewise"),
];

// ---- The dashboard's JSON ----------------------------------------------------

fn dashboard() -> Value {
    let text = fs::read_to_string(DASHBOARD).unwrap_or_else(|e| panic!("read {DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(inner) = p.get("panels") {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// One query of a panel.
struct Target {
    panel: String,
    ref_id: String,
    expr: String,
}

fn targets(d: &Value) -> Vec<Target> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            let panel = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| Target {
                    panel: panel.clone(),
                    ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: t["expr"].as_str().unwrap_or_default().to_owned(),
                })
        })
        .collect()
}

/// The template variable named `name`.
fn variable<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["templating"]["list"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no template variable {name}"))
}

/// Whether `ds` points at the dashboard's data source variable.
fn uses_the_variable(ds: &Value) -> bool {
    ds["type"] == "prometheus" && ds["uid"] == "${datasource}"
}

/// `expr` as Grafana sends it to Prometheus: each `$name` or `${name}` in
/// `vars` replaced, longest names first so that no name eats another's
/// start. Any `$` left is a variable nobody defines.
fn expand(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    let mut out = expr.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    assert!(!out.contains('$'), "an unknown variable in {expr:?}");
    out
}

/// A variable value as Grafana writes a multi-value variable into a
/// regex matcher: regex metacharacters escaped, inside a PromQL string.
fn regex_value(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if "\\^$.|?*+()[]{}'".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// The PromQL for Grafana's `label_values(SELECTOR, LABEL)`, and LABEL.
fn label_values(definition: &str) -> (String, String) {
    let inner = definition
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {definition}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values without a selector: {definition}"));
    let label = label.trim().to_owned();
    (format!("group by ({label}) ({})", selector.trim()), label)
}

#[test]
fn the_dashboard_json_is_importable() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    // 39 is Grafana 11's; Grafana migrates an older one forward, up to
    // its own (42 in the classic model).
    assert!(schema >= 36, "schemaVersion {schema}");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    assert!(
        d["id"].is_null(),
        "id must be null so that import makes one"
    );

    // The data source is picked by a variable, so that the file imports on
    // any Grafana (and provisions) without editing.
    let ds = variable(&d, "datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for name in ["job", "instance"] {
        let v = variable(&d, name);
        assert_eq!(v["type"], "query", "{name}");
        assert!(uses_the_variable(&v["datasource"]), "{name}: {v}");
        assert_eq!(v["multi"], true, "{name}");
        assert_eq!(v["includeAll"], true, "{name}");
        let def = v["definition"].as_str().expect("definition");
        assert_eq!(
            v["query"]["query"], def,
            "{name}: query and definition differ"
        );
        assert_eq!(label_values(def).1, name);
    }

    let panels = panels(&d);
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = HashSet::new();
    let mut titles = HashSet::new();
    let mut boxes: Vec<(u64, u64, u64, u64, &str)> = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(titles.insert(title), "title {title:?} twice");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "id {id} twice");
        assert!(uses_the_variable(&p["datasource"]), "{title}: datasource");
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(h > 0 && w > 0 && x + w <= GRID_COLUMNS, "{title}: {g}");
        for &(bx, by, bw, bh, other) in &boxes {
            let apart = x + w <= bx || bx + bw <= x || y + h <= by || by + bh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((x, y, w, h, title));

        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = HashSet::new();
        for t in targets {
            assert!(uses_the_variable(&t["datasource"]), "{title}: {t}");
            let r = t["refId"].as_str().expect("refId");
            assert!(refs.insert(r), "{title}: refId {r} twice");
            let expr = t["expr"].as_str().expect("expr");
            // Every metric is read for the selected jobs and instances only.
            let metrics = expr.matches("ferroturn_").count();
            let selected = expr
                .matches("{job=~\"$job\", instance=~\"$instance\"}")
                .count();
            assert!(metrics > 0, "{title}/{r}: no ferroturn metric");
            assert_eq!(
                metrics, selected,
                "{title}/{r}: unselected metric in {expr}"
            );
        }
    }
    for (panel, r, _) in MAY_BE_ZERO {
        let found = targets(&d)
            .iter()
            .any(|t| t.panel == panel && t.ref_id == r);
        assert!(found, "MAY_BE_ZERO names {panel}/{r}, which is gone");
    }
}

// ---- Prometheus --------------------------------------------------------------

/// A Prometheus on loopback scraping one target every second, with its
/// storage in a temporary directory. Stopped on drop; its log is printed
/// when the test is failing.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: `bash tests/run.sh` installs the prometheus package"
        );
        let mut last = String::new();
        for _ in 0..3 {
            match Prometheus::try_start(target) {
                Ok(p) => return p,
                Err(log) => last = log,
            }
        }
        panic!("prometheus did not start; last log:\n{last}");
    }

    fn try_start(target: SocketAddr) -> Result<Prometheus, String> {
        let dir = TempDir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("prometheus.log");
        let file = fs::File::create(&log).unwrap();
        let addr = SocketAddr::from((LOCALHOST, common::free_port()));
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {PROMETHEUS}: {e}"));
        let mut p = Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", p.log()));
            }
            if http_get(addr, "/-/ready").is_some_and(|(s, _)| s == 200) {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("not ready within 30 s:\n{}", p.log()))
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/api/v1/query` for `expr` at `time` (Unix seconds): the answer's
    /// JSON, whatever its status.
    fn query(&self, expr: &str, time: f64) -> Value {
        let path = format!("/api/v1/query?query={}&time={time:.3}", url_encode(expr));
        let (status, body) = http_get(self.addr, &path)
            .unwrap_or_else(|| panic!("no answer from prometheus to {expr}"));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("HTTP {status}, not JSON ({e}) for {expr}: {body}"))
    }

    /// The values of a successful instant vector query; panics with
    /// Prometheus's error otherwise.
    fn vector(&self, expr: &str, time: f64) -> Vec<(Value, f64)> {
        let v = self.query(expr, time);
        assert_eq!(v["status"], "success", "{expr}: {v}");
        assert_eq!(v["data"]["resultType"], "vector", "{expr}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let x = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), x)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child, "prometheus", &self.log);
    }
}

/// Kill `child`; if the test is failing, print the end of its log so that
/// the failure explains itself.
fn stop(child: &mut Child, name: &str, log: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    if std::thread::panicking() {
        let log = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("---- {name} log (last {} lines) ----", tail.len());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        eprintln!("---- end of {name} log ----");
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One HTTP/1.0 GET (so that no answer comes chunked): status and body,
/// or `None` if nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---- The server --------------------------------------------------------------

/// A `ferroturn` with `[metrics]` on loopback and low limits, so that a
/// few packets reach each of them, and `[cluster]` on its own Redis, the
/// only node there.
struct Turn {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    /// A TCP listener that takes the PROXY protocol from 127.0.0.1.
    proxied: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
    /// Dropped after the server (`Drop for Turn` stops it first).
    _redis: Redis,
}

impl Turn {
    fn start() -> Turn {
        let config = ServerConfig {
            workers: Some(2),
            // Batch: every UDP thread shows in udp_batch_threads.
            udp_scheduling: Some("batch"),
            users: vec![(USER.into(), PASSWORD.into()), (BOB.0.into(), BOB.1.into())],
            limits: vec![
                ("allocations_per_user", "2".into()),
                ("packet_rate", PACKET_RATE.to_string()),
                ("connections_per_ip", "1".into()),
                ("tls_handshakes_per_ip", "1".into()),
            ],
            ..ServerConfig::default()
        };
        let relay = common::relay_block();
        let redis = Redis::start();
        let mut last = String::new();
        for _ in 0..3 {
            let dir = TempDir::new("dashboard");
            let (port, metrics) = (common::free_port(), common::free_port());
            let proxied = common::free_port();
            let mut toml = config.to_toml(port, relay);
            toml.push_str(&format!("\n[metrics]\naddress = \"127.0.0.1:{metrics}\"\n"));
            toml.push_str(&format!(
                "\n[[listen]]\naddress = \"127.0.0.1:{proxied}\"\ntransports = [\"tcp\"]\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\n"
            ));
            toml.push_str(&format!(
                "\n[cluster]\nredis = \"{}\"\nnode = \"dashboard\"\nheartbeat = 1\n",
                redis.url()
            ));
            let proxied = SocketAddr::from((LOCALHOST, proxied));
            let path = dir.path().join("ferroturn.toml");
            let log = dir.path().join("ferroturn.log");
            fs::write(&path, toml).unwrap();
            let addr = SocketAddr::from((LOCALHOST, port));
            let metrics = SocketAddr::from((LOCALHOST, metrics));
            let up = || TcpStream::connect_timeout(&metrics, Duration::from_secs(1)).is_ok();
            match common::spawn_ferroturn(&path, &log, addr, up) {
                Ok(child) => {
                    return Turn {
                        child,
                        addr,
                        metrics,
                        proxied,
                        log,
                        _dir: dir,
                        _redis: redis,
                    };
                }
                Err(l) => last = l,
            }
        }
        panic!("ferroturn did not start; last log:\n{last}");
    }

    /// The `/metrics` text.
    fn scrape(&self) -> String {
        let (status, body) = http_get(self.metrics, "/metrics").expect("/metrics answers");
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        stop(&mut self.child, "ferroturn", &self.log);
    }
}

/// The sum of every counter in a `/metrics` text: it moves whenever the
/// server counts anything, so Prometheus has caught up once its sum is the
/// same.
fn counter_sum(text: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            if name.ends_with("_total") {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// The value of one series (name and labels as printed) in a `/metrics`
/// text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// ChannelData round trips through the echo peer on channel 0x4000.
fn round_trips(c: &mut RawClient, n: usize) {
    let payload = [0x5a; 100];
    let mut buf = [0u8; 2048];
    for i in 0..n {
        c.send(&c.channel_data(0x4000, &payload));
        let len = c.recv(&mut buf);
        assert_eq!(&buf[..2], &[0x40, 0x00], "round trip {i}");
        assert_eq!(&buf[4..104], &payload[..], "round trip {i} (length {len})");
    }
}

/// Something of every kind the dashboard shows, counted by the server.
fn workload(s: &Turn, echo: &EchoPeer) {
    let probe = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(common::binding_udp(&probe, s.addr).is_some(), "Binding");

    // Two allocations of alice's (her quota), a third refused.
    let mut a = RawClient::udp(s.addr, REALM, USER, PASSWORD);
    a.allocate();
    let mut b = RawClient::udp(s.addr, REALM, USER, PASSWORD);
    b.allocate();
    let b_born = Instant::now();
    let mut c = RawClient::udp(s.addr, REALM, USER, PASSWORD);
    let r = c.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(wire::error_code(&r), Some(486), "third allocation of alice");

    // Relayed over UDP; a peer the policy denies whatever `allow` says
    // (the metrics listener); a wrong password.
    a.channel_bind(0x4000, echo.addr);
    round_trips(&mut a, 10);
    let r = a.signed(Request::new(METHOD_CREATE_PERMISSION).peer(s.metrics));
    assert_eq!(wire::error_code(&r), Some(403), "permission for /metrics");
    let mut wrong = RawClient::udp(s.addr, REALM, USER, "not-the-password");
    let r = wrong.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(wire::error_code(&r), Some(401), "wrong password");

    // Relayed over TCP, which holds the one connection 127.0.0.1 may have:
    // a second one is refused at accept.
    let mut t = RawClient::tcp(s.addr, REALM, BOB.0, BOB.1);
    t.allocate();
    t.channel_bind(0x4000, echo.addr);
    round_trips(&mut t, 5);
    let refused = TcpStream::connect_timeout(&s.addr, Duration::from_secs(2));
    let series = "ferroturn_stream_refusals_total{reason=\"per_ip_connections\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&s.scrape(), series) < Some(1.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sample(&s.scrape(), series), Some(1.0), "refused connection");
    drop(refused);

    // A STUN message where a PROXY protocol header must come first.
    let mut headless = TcpStream::connect_timeout(&s.proxied, Duration::from_secs(2)).unwrap();
    headless
        .write_all(&Request::new(METHOD_BINDING).bytes())
        .unwrap();
    let series = "ferroturn_proxy_header_refusals_total{reason=\"malformed\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&s.scrape(), series) < Some(1.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        sample(&s.scrape(), series),
        Some(1.0),
        "malformed PROXY header"
    );

    // A packet that is neither STUN nor ChannelData, and ChannelData on a
    // channel nobody bound.
    probe.send_to(&[0xc0; 32], s.addr).unwrap();
    a.send(&a.channel_data(0x4001, &[1; 20]));

    // Unauthenticated Allocates from 127.0.0.2, past its 100 answers a
    // second (the other clients' source, 127.0.0.1, keeps its own budget).
    let flood = UdpSocket::bind("127.0.0.2:0").unwrap();
    let unsigned = Request::new(METHOD_ALLOCATE).transport(17).bytes();
    for _ in 0..200 {
        flood.send_to(&unsigned, s.addr).unwrap();
    }

    // A burst past the allocation's packet ceiling (a reads nothing more:
    // the echoes of the burst stay in its socket).
    for _ in 0..3 * PACKET_RATE {
        a.send(&a.channel_data(0x4000, &[2; 100]));
    }

    // A session ends, old enough for its duration to count whole seconds.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(b_born.elapsed()));
    let r = b.signed(Request::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(wire::error_code(&r), None, "Refresh 0");

    // The allocations' usage events reached Redis, none dropped.
    let published = "ferroturn_usage_events_total{outcome=\"published\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&s.scrape(), published) < Some(1.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = s.scrape();
    assert!(
        sample(&text, published) >= Some(1.0),
        "usage events published"
    );
    assert_eq!(
        sample(&text, "ferroturn_usage_events_total{outcome=\"dropped\"}"),
        Some(0.0),
        "usage events dropped"
    );
}

/// Wait (at most 30 s) until Prometheus's sum of the server's counters
/// reaches what `/metrics` shows once settled; the moment it did.
fn caught_up(p: &Prometheus, s: &Turn) -> f64 {
    // The server's own count first settles (echoes still in flight).
    let mut want = counter_sum(&s.scrape());
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = counter_sum(&s.scrape());
        if now == want {
            break;
        }
        want = now;
    }
    let expr = format!("sum({{__name__=~\"ferroturn_.+_total\", job=\"{JOB}\"}})");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = unix_now();
        let got = p.vector(&expr, t).first().map(|(_, v)| *v);
        // Counters only grow: at least the settled sum is the workload.
        if got.is_some_and(|g| g >= want) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus has {got:?} for {expr}, /metrics {want}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn every_panel_query_finds_data_in_a_live_server() {
    let d = dashboard();
    let server = Turn::start();
    let echo = EchoPeer::start();
    let started = Instant::now();
    let prometheus = Prometheus::start(server.metrics);
    let instance = server.metrics.to_string();

    // The first scrape, before any traffic, so that rates see it begin.
    let deadline = Instant::now() + Duration::from_secs(30);
    let up = format!("up{{job=\"{JOB}\"}}");
    while prometheus.vector(&up, unix_now()).first().map(|(_, v)| *v) != Some(1.0) {
        assert!(Instant::now() < deadline, "no scrape within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The node has its Redis and has heard its own heartbeat, so that the
    // workload's usage events are published, not dropped.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = server.scrape();
        let up = sample(&text, "ferroturn_cluster_up");
        let nodes = sample(&text, "ferroturn_cluster_nodes");
        if up == Some(1.0) && nodes >= Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cluster_up {up:?}, cluster_nodes {nodes:?} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let first_scrape = started.elapsed();
    workload(&server, &echo);
    let worked = started.elapsed();
    let time = caught_up(&prometheus, &server);
    eprintln!(
        "first scrape at {first_scrape:.1?}, workload done at {worked:.1?}, prometheus caught up at {:.1?}",
        started.elapsed()
    );

    // Every metric family the server exports is on some panel.
    let all: Vec<Target> = targets(&d);
    let text = server.scrape();
    for family in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
    {
        assert!(
            all.iter().any(|t| t.expr.contains(family)),
            "{family} is on no panel"
        );
    }

    // The variables list this job and this instance.
    let vars = [
        ("job", JOB.to_owned()),
        ("instance", regex_value(&instance)),
        ("__rate_interval", RATE_INTERVAL.to_owned()),
        ("__interval", "15s".to_owned()),
        ("__range", "6h".to_owned()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
    for (name, want) in [("job", JOB), ("instance", &instance)] {
        let def = variable(&d, name)["definition"].as_str().unwrap();
        let (expr, label) = label_values(&expand(def, &vars));
        let found = prometheus.vector(&expr, time);
        assert!(
            found.iter().any(|(m, _)| m[&label] == want),
            "${name} ({expr}) does not offer {want}: {found:?}"
        );
    }

    // Every query parses and finds series, with finite values; all but
    // the few that this workload leaves at 0 show a value above 0.
    let mut zero = Vec::new();
    for t in &all {
        let expr = expand(&t.expr, &vars);
        let found = prometheus.vector(&expr, time);
        assert!(
            !found.is_empty(),
            "{}/{}: no series for {expr}",
            t.panel,
            t.ref_id
        );
        for (m, v) in &found {
            assert!(v.is_finite(), "{}/{}: {m} is {v}", t.panel, t.ref_id);
            // A misspelt grouping label (`sum by (cod)`) still finds one
            // series, without the label: each must carry every one.
            for l in grouping(&t.expr) {
                assert!(
                    m[&l].as_str().is_some_and(|v| !v.is_empty()),
                    "{}/{}: a series of {expr} lacks its grouping label {l}: {m}",
                    t.panel,
                    t.ref_id
                );
            }
        }
        let may = MAY_BE_ZERO
            .iter()
            .any(|(p, r, _)| *p == t.panel && *r == t.ref_id)
            || t.expr.contains("ferroturn_draining");
        if !may && found.iter().all(|(_, v)| *v <= 0.0) {
            zero.push(format!("{}/{}: {expr} = {found:?}", t.panel, t.ref_id));
        }
    }
    assert!(
        zero.is_empty(),
        "queries without a value above 0:\n{}",
        zero.join("\n")
    );
    eprintln!(
        "{} queries on {} panels: every one found series",
        all.len(),
        panels(&d).len()
    );

    // Drain: the draining queries turn 1 (the allocations still held keep
    // the server up for drain_timeout, 60 s).
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let draining = format!("max(ferroturn_draining{{job=\"{JOB}\"}})");
    let deadline = Instant::now() + Duration::from_secs(30);
    let time = loop {
        let t = unix_now();
        if prometheus.vector(&draining, t).first().map(|(_, v)| *v) == Some(1.0) {
            break t;
        }
        assert!(Instant::now() < deadline, "draining never scraped as 1");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut seen = 0;
    for t in all.iter().filter(|t| t.expr.contains("ferroturn_draining")) {
        let expr = expand(&t.expr, &vars);
        let found = prometheus.vector(&expr, time);
        assert!(
            found.iter().any(|(_, v)| *v == 1.0),
            "{}/{}: {expr} = {found:?} while draining",
            t.panel,
            t.ref_id
        );
        seen += 1;
    }
    assert!(seen > 0, "no panel shows ferroturn_draining");
}

/// The labels `expr` groups by (every `by (...)`), but `le`, which
/// `histogram_quantile` consumes.
fn grouping(expr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let after = &rest[i + 4..];
        let end = after.find(')').unwrap_or(after.len());
        for l in after[..end].split(',').map(str::trim) {
            if !l.is_empty() && l != "le" && !out.iter().any(|o| o == l) {
                out.push(l.to_owned());
            }
        }
        rest = &after[end..];
    }
    out
}

#[test]
fn grouping_labels_are_read_from_every_by() {
    assert_eq!(
        grouping(
            "histogram_quantile(0.5, sum by (le, transport) (rate(x[1m]))) / sum by (instance) (y)"
        ),
        ["transport", "instance"]
    );
    assert!(grouping("sum(x)").is_empty());
}
