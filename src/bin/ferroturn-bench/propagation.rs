//! How long a change on one cluster node (or in Redis) takes to show on
//! another: one `redis-server`, node A on 127.0.0.1 and node B on
//! 127.0.0.2 (`[cluster]` with its default heartbeat), and a small STUN
//! client that asks B every millisecond until the effect is there.
//!
//! Each time runs from the moment the action is issued (the SET or DEL
//! sent to Redis, the admin request sent to A, the Allocate sent to A)
//! to the first answer of B that shows the effect; each wait is capped at
//! [`CAP`], and a cap hit is counted, not timed.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferroturn::admin::client::Target;
use ferroturn::http::Dest;
use ferroturn::proto::stun::{Request, decode, error_code, text};
use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_REFRESH,
};

use crate::net;
use crate::servers::{self, RedisServer};
use crate::stats::{median, percentile};
use crate::turn;

/// The longest wait for one effect.
const CAP: Duration = Duration::from_secs(5);
/// How long a wait that hit the cap goes on looking, to tell a late
/// effect (e.g. one that came with a heartbeat, 10 s by default) from
/// none.
const LATE: Duration = Duration::from_secs(15);
/// The gap between two looks at node B.
const POLL: Duration = Duration::from_millis(1);
/// `limits.allocations_per_user` on both nodes.
const QUOTA: usize = 2;
/// The password of every user the test puts in Redis.
const PASS: &str = "propagation";

/// What the test measures, in the order of the report.
const ROWS: [(&str, &str); 6] = [
    ("user SET in Redis → first Allocate success on B", "≤ 1 s"),
    ("user key DEL'd in Redis → first 401 on B", "≤ 1 s"),
    (
        "kill --user on A → B's allocation gone (Refresh 437)",
        "≤ 1 s",
    ),
    ("revoke --user on A → 401 on B", "≤ 1 s"),
    (
        "quota reached on A → 486 on B",
        "≤ 50 ms + a Redis round trip",
    ),
    ("allocation on A → in B's sessions", "≤ 1 s"),
];

/// One ferroturn node with `[cluster]`, `/metrics` and an admin socket.
struct Node {
    name: String,
    addr: SocketAddrV4,
    metrics: SocketAddr,
    admin: Target,
    child: Child,
}

impl Node {
    /// Node `i` on 127.0.0.`i`, with a relay range of its own.
    fn start(build: &Path, dir: &Path, redis: &str, i: u8) -> Result<Node, String> {
        let ip = Ipv4Addr::new(127, 0, 0, i);
        let addr = SocketAddrV4::new(ip, net::free_port());
        let metrics = SocketAddr::new(ip.into(), net::free_port());
        let name = format!("node-{i}");
        let socket = dir.join(format!("{name}.sock"));
        let lo = 45_000 + 500 * u32::from(i);
        let config = format!(
            r#"realm = "{realm}"
[server]
workers = 1
[[listen]]
address = "{addr}"
transports = ["udp"]
[relay]
address = "{ip}"
ports = "{lo}-{hi}"
[auth]
users = {{ {user} = "{pass}" }}
[peers]
allow = ["127.0.0.0/8"]
[limits]
allocations_per_user = {QUOTA}
unauthenticated_rate = 0
[metrics]
address = "{metrics}"
[admin]
socket = "{socket}"
[cluster]
redis = "{redis}"
node = "{name}"
"#,
            realm = turn::REALM,
            user = turn::USER,
            pass = turn::PASS,
            hi = lo + 499,
            socket = socket.display(),
        );
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, config).map_err(|e| e.to_string())?;
        let check = Command::new(build)
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .map_err(|e| e.to_string())?;
        if !check.status.success() {
            return Err(format!(
                "ferroturn check refused {}: {}",
                file.display(),
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        let child = servers::spawn_quiet(Command::new(build).arg("--config").arg(&file))
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let node = Node {
            name,
            addr,
            metrics,
            admin: Target {
                dest: Dest::Unix(socket),
                token: None,
            },
            child,
        };
        if !turn::wait_ready(addr, Duration::from_secs(10)) {
            return Err(format!("{} did not come up on {addr}", node.name));
        }
        Ok(node)
    }

    /// A metric's value from `/metrics`.
    fn metric(&self, name: &str) -> Option<u64> {
        let (status, body) = ferroturn::http::fetch(
            &Dest::Tcp(self.metrics),
            "GET",
            "/metrics",
            &[],
            Duration::from_secs(2),
        )
        .ok()?;
        let prefix = format!("{name} ");
        (status == 200)
            .then(|| String::from_utf8_lossy(&body).into_owned())?
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// Whether this node lists a session of `user` held by node `on`.
    fn lists(&self, user: &str, on: &str) -> bool {
        self.admin.sessions().is_ok_and(|l| {
            l.iter()
                .any(|s| s.user == user && s.node.as_deref() == Some(on))
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        servers::stop(&mut self.child);
    }
}

/// Redis commands over RESP, one connection: a command costs one round
/// trip, not a `redis-cli` process start.
struct Resp(BufReader<TcpStream>);

impl Resp {
    fn connect(url: &str) -> Result<Resp, String> {
        let host = url
            .strip_prefix("redis://")
            .and_then(|r| r.split('/').next())
            .ok_or("a redis:// URL")?;
        let s = TcpStream::connect(host).map_err(|e| format!("redis at {host}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Resp(BufReader::new(s)))
    }

    /// Send a command; its reply line (a simple string or an integer).
    fn cmd(&mut self, args: &[&str]) -> Result<String, String> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out += &format!("${}\r\n{a}\r\n", a.len());
        }
        self.0
            .get_mut()
            .write_all(out.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.0.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.starts_with('-') {
            return Err(line.trim().to_owned());
        }
        Ok(line.trim().to_owned())
    }

    fn user_key(name: &str) -> String {
        format!("turn/realm/{}/user/{name}/password", turn::REALM)
    }

    fn set_user(&mut self, name: &str) -> Result<(), String> {
        self.cmd(&["SET", &Resp::user_key(name), PASS]).map(drop)
    }
}

/// What a node answered.
#[derive(Debug, PartialEq)]
enum Answer {
    Success,
    Error(u16),
    Silent,
}

/// One client 5-tuple, with the nonce and realm it was given.
struct Client {
    sock: UdpSocket,
    server: SocketAddrV4,
    user: String,
    nonce: String,
    realm: String,
}

impl Client {
    fn new(server: SocketAddrV4, user: &str) -> Option<Client> {
        let sock = net::udp(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            1 << 16,
            Some(Duration::from_millis(100)),
        )
        .ok()?;
        Some(Client {
            sock,
            server,
            user: user.to_owned(),
            nonce: String::new(),
            realm: turn::REALM.to_owned(),
        })
    }

    /// Send `req`, wait for its answer (3 tries of 100 ms); learn the
    /// nonce and realm an error answer carries.
    fn ask(&mut self, req: &[u8]) -> Answer {
        let mut buf = [0u8; 1500];
        for _ in 0..3 {
            if self.sock.send_to(req, self.server).is_err() {
                return Answer::Silent;
            }
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let Some(m) = decode(&buf[..n]) else { continue };
                if m.transaction_id.0 != req[8..20] {
                    continue;
                }
                if m.typ.class == CLASS_SUCCESS_RESPONSE {
                    return Answer::Success;
                }
                if m.typ.class != CLASS_ERROR_RESPONSE {
                    return Answer::Silent;
                }
                if let Some(nonce) = text(&m, ATTR_NONCE) {
                    self.nonce = nonce;
                }
                if let Some(realm) = text(&m, ATTR_REALM) {
                    self.realm = realm;
                }
                return Answer::Error(error_code(&m).unwrap_or(0));
            }
        }
        Answer::Silent
    }

    /// A signed request; a stale nonce (438) is retried once with the
    /// new one.
    fn signed(&mut self, make: impl Fn() -> Request) -> Answer {
        let mut a = Answer::Silent;
        for _ in 0..2 {
            let req = make().sign(&self.user, &self.realm, PASS, &self.nonce);
            a = self.ask(&req);
            if a != Answer::Error(438) {
                break;
            }
        }
        a
    }

    /// Allocate: the challenge (401 with a nonce), then the signed request.
    fn allocate(&mut self) -> Answer {
        match self.ask(&Request::new(METHOD_ALLOCATE).transport(17).bytes()) {
            Answer::Error(401) => self.signed(|| Request::new(METHOD_ALLOCATE).transport(17)),
            other => other,
        }
    }

    fn refresh(&mut self, lifetime: u32) -> Answer {
        self.signed(|| Request::new(METHOD_REFRESH).lifetime(lifetime))
    }
}

/// An Allocate of `user` on `server` from a fresh 5-tuple; an allocation
/// it made is deleted at once, so that probing holds nothing.
fn probe(server: SocketAddrV4, user: &str) -> Answer {
    let Some(mut c) = Client::new(server, user) else {
        return Answer::Silent;
    };
    let a = c.allocate();
    if a == Answer::Success {
        c.refresh(0);
    }
    a
}

/// An allocation of `user` held on `server`, retried until `CAP` (the
/// node may still be reading the user).
fn hold(server: SocketAddrV4, user: &str) -> Result<Client, String> {
    let start = Instant::now();
    loop {
        let mut c = Client::new(server, user).ok_or("no client socket")?;
        match c.allocate() {
            Answer::Success => return Ok(c),
            a if start.elapsed() > CAP => {
                return Err(format!("{user} cannot allocate on {server}: {a:?}"));
            }
            _ => std::thread::sleep(POLL * 10),
        }
    }
}

/// Time from `t0` until `done()` holds, looking every `POLL`; None when
/// `CAP` passes first. After a cap hit it keeps looking (every 10 ms, up
/// to [`LATE`]) only to say on stderr when the effect came after all.
fn wait(t0: Instant, mut done: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if done() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > CAP {
            break;
        }
        std::thread::sleep(POLL);
    }
    while t0.elapsed() < LATE {
        if done() {
            eprintln!(
                "  the effect came after {:.2} s",
                t0.elapsed().as_secs_f64()
            );
            return None;
        }
        std::thread::sleep(POLL * 10);
    }
    eprintln!("  no effect within {} s", LATE.as_secs());
    None
}

/// Run the six measurements `reps` times; the report as a Markdown table.
pub fn run(build: &Path, dir: &Path, reps: usize) -> Result<String, String> {
    let redis = RedisServer::start()?;
    let a = Node::start(build, dir, &redis.url, 1)?;
    let b = Node::start(build, dir, &redis.url, 2)?;
    let mut r = Resp::connect(&redis.url)?;
    // Both nodes have heard each other before anything is timed.
    let start = Instant::now();
    while [&a, &b]
        .iter()
        .any(|n| n.metric("ferroturn_cluster_nodes") != Some(2))
    {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("the two nodes did not hear each other within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Per row: a time, None for a cap hit, Err for a setup that failed.
    let mut times: Vec<Vec<Result<Option<Duration>, ()>>> = vec![Vec::new(); ROWS.len()];
    let prefix = format!("p{}", std::process::id());
    for rep in 0..reps {
        eprintln!("[propagation {}/{reps}]", rep + 1);
        let name = |row: usize| format!("{prefix}-{rep}-{row}");
        for (row, out) in times.iter_mut().enumerate() {
            match measure(row, &name(row), &a, &b, &mut r) {
                Ok(t) => {
                    if t.is_none() {
                        eprintln!("  row {} capped: {}", row + 1, ROWS[row].0);
                    }
                    out.push(Ok(t));
                }
                Err(e) => {
                    eprintln!("  row {}: {e}", row + 1);
                    out.push(Err(()));
                }
            }
        }
    }
    Ok(table(&times, reps))
}

/// One measurement of row `row` with the fresh user name `user`.
fn measure(
    row: usize,
    user: &str,
    a: &Node,
    b: &Node,
    r: &mut Resp,
) -> Result<Option<Duration>, String> {
    match row {
        // B knows the name is absent (it asked once); then it is set.
        0 => {
            let before = probe(b.addr, user);
            if before != Answer::Error(401) {
                return Err(format!("{user} before SET: {before:?}"));
            }
            let t0 = Instant::now();
            r.set_user(user)?;
            Ok(wait(t0, || probe(b.addr, user) == Answer::Success))
        }
        // B has the user cached (it allocated once); then it is deleted.
        1 => {
            r.set_user(user)?;
            hold(b.addr, user)?.refresh(0);
            let t0 = Instant::now();
            r.cmd(&["DEL", &Resp::user_key(user)])?;
            Ok(wait(t0, || probe(b.addr, user) == Answer::Error(401)))
        }
        2 => {
            r.set_user(user)?;
            let mut held = hold(b.addr, user)?;
            let t0 = Instant::now();
            a.admin.kill_user(user)?;
            Ok(wait(t0, || held.refresh(600) == Answer::Error(437)))
        }
        3 => {
            r.set_user(user)?;
            hold(b.addr, user)?.refresh(0);
            let until = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                + 600;
            let t0 = Instant::now();
            a.admin.revoke(user, until)?;
            let t = wait(t0, || probe(b.addr, user) == Answer::Error(401));
            a.admin.unrevoke(user)?;
            Ok(t)
        }
        // B knows the user; A then takes the whole quota.
        4 => {
            r.set_user(user)?;
            hold(b.addr, user)?.refresh(0);
            let mut held: Vec<Client> = (1..QUOTA)
                .map(|_| hold(a.addr, user))
                .collect::<Result<_, _>>()?;
            let t0 = Instant::now();
            held.push(hold(a.addr, user)?);
            let t = wait(t0, || probe(b.addr, user) == Answer::Error(486));
            for mut c in held {
                c.refresh(0);
            }
            Ok(t)
        }
        _ => {
            r.set_user(user)?;
            hold(a.addr, user)?.refresh(0);
            let t0 = Instant::now();
            let mut held = hold(a.addr, user)?;
            let t = wait(t0, || b.lists(user, &a.name));
            held.refresh(0);
            Ok(t)
        }
    }
}

fn table(times: &[Vec<Result<Option<Duration>, ()>>], reps: usize) -> String {
    let mut s = format!(
        "\n## Cluster propagation, node A → node B ({reps} repetitions, polled every {} ms, capped at {} s)\n\n",
        POLL.as_millis(),
        CAP.as_secs()
    );
    s += "| from → to | median ms | p95 ms | max ms | cap hits | setup failed | target |\n";
    s += "|---|---|---|---|---|---|---|\n";
    for ((what, target), row) in ROWS.iter().zip(times) {
        let mut us: Vec<u64> = row
            .iter()
            .flatten()
            .flatten()
            .map(|d| d.as_micros() as u64)
            .collect();
        us.sort_unstable();
        let ms: Vec<f64> = us.iter().map(|&u| u as f64 / 1e3).collect();
        let failed = row.iter().filter(|t| t.is_err()).count();
        let missed = row.len() - us.len() - failed;
        let max = us.last().map_or(f64::NAN, |&u| u as f64 / 1e3);
        s += &format!(
            "| {what} | {:.1} | {:.1} | {max:.1} | {missed} | {failed} | {target} |\n",
            median(&ms),
            percentile(&us, 95.0) / 1e3,
        );
    }
    s
}
