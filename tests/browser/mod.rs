//! Helpers for the demo's tests: a `ferroturn demo` child process, a
//! WebDriver client for chromedriver and headless Chromium, network
//! namespaces with NAT routers, and a WebSocket client.
//!
//! Traffic goes to 127.0.0.1 or into namespaces the tests create; every
//! wait is bounded, and every process is killed by its id on drop.

#![allow(dead_code)]

pub mod netns;
pub mod webdriver;
pub mod ws;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The shared secret of the tests' configs.
pub const SECRET: &str = "demo-test-secret";
/// The static user alice's password in the tests' configs (not the bundled
/// example's, which is refused off loopback, as in the netns test).
pub const STATIC_PASSWORD: &str = "demo-test-password";

/// Where a connection is made from: this process's network namespace, or
/// a named one (`/run/netns/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    Host,
    Ns(String),
}

impl Net {
    /// `cmd` and `args`, run in this namespace.
    pub fn command(&self, cmd: &str, args: &[&str]) -> Command {
        match self {
            Net::Host => {
                let mut c = Command::new(cmd);
                c.args(args);
                c
            }
            Net::Ns(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, cmd]).args(args);
                c
            }
        }
    }

    /// A TCP connection to `addr` made from this namespace: a thread enters
    /// the namespace (setns affects only the calling thread), connects, and
    /// hands the socket back; the socket stays in that namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        match self {
            Net::Host => TcpStream::connect_timeout(&addr, timeout),
            Net::Ns(ns) => {
                let path = format!("/run/netns/{ns}");
                std::thread::spawn(move || {
                    let f = fs::File::open(&path)?;
                    // SAFETY: setns on a valid namespace fd; it changes only
                    // this short-lived thread's network namespace.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    TcpStream::connect_timeout(&addr, timeout)
                })
                .join()
                .expect("connect thread")
            }
        }
    }
}

/// A child process killed (by its pid) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = fs::File::create(log).expect("create log file");
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        Proc {
            child,
            name: name.to_owned(),
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first, so that ferroturn closes its allocations and
            // chromedriver its browsers; SIGKILL if that takes too long.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A directory under the system temp dir, removed on drop unless the test
/// failed (then its logs stay for reading; the path is printed).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("ferroturn-demo-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A TCP port free on 127.0.0.1 right now (also checked free for UDP).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1");
}

/// Call `f` every 50 ms until it gives `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `ferroturn demo` config.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// TURN/STUN listen address (UDP and TCP).
    pub listen: SocketAddr,
    /// Relay bind and advertised address.
    pub relay: String,
    pub relay_ports: (u16, u16),
    /// `[peers] allow`.
    pub allow: Vec<String>,
    /// The demo's HTTP address.
    pub http: SocketAddr,
    /// `[limits] allocations_per_user`: every page of a test comes from
    /// 127.0.0.1, one REST user, and a mesh page holds two allocations
    /// (UDP and TCP) per member.
    pub allocations_per_user: u32,
}

impl DemoConfig {
    /// Everything on 127.0.0.1, on free ports.
    pub fn loopback() -> DemoConfig {
        DemoConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            relay: "127.0.0.1".into(),
            relay_ports: relay_block(),
            allow: vec!["127.0.0.0/8".into()],
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            allocations_per_user: 10,
        }
    }

    pub fn to_toml(&self) -> String {
        let allow: Vec<String> = self.allow.iter().map(|a| format!("{a:?}")).collect();
        format!(
            r#"realm = "demo.test"
[server]
workers = 2
[[listen]]
address = "{listen}"
transports = ["udp", "tcp"]
[relay]
address = "{relay}"
public_address = "{relay}"
ports = "{lo}-{hi}"
[auth]
secrets = ["{SECRET}", "older-secret"]
users = {{ alice = "{STATIC_PASSWORD}" }}
[peers]
allow = [{allow}]
[limits]
allocations_per_user = {allocations_per_user}
[demo]
address = "{http}"
credential_ttl = 600
[log]
level = "info"
"#,
            listen = self.listen,
            relay = self.relay,
            lo = self.relay_ports.0,
            hi = self.relay_ports.1,
            allow = allow.join(", "),
            http = self.http,
            allocations_per_user = self.allocations_per_user,
        )
    }
}

/// A block of 200 relay ports below the kernel's ephemeral range, distinct
/// per call within this process and likely distinct between test processes.
pub fn relay_block() -> (u16, u16) {
    let n = SEQ.fetch_add(1, Ordering::Relaxed) as u16;
    let slot = (std::process::id() as u16).wrapping_mul(7).wrapping_add(n) % 100;
    let lo = 12_000 + slot * 200;
    (lo, lo + 199)
}

/// A running `ferroturn demo`.
pub struct Demo {
    pub proc: Proc,
    pub config: DemoConfig,
    pub log: PathBuf,
}

impl Demo {
    /// Start `ferroturn demo` in `net` with `config`, files in `dir`, and
    /// wait (at most 10 s) until its HTTP server answers.
    pub fn start(net: &Net, config: DemoConfig, dir: &Path) -> Demo {
        Demo::start_with(net, config, dir, "")
    }

    /// [`Demo::start`] with `demo_keys` (lines) added to `[demo]`.
    pub fn start_with(net: &Net, config: DemoConfig, dir: &Path, demo_keys: &str) -> Demo {
        let toml = config.to_toml().replace(
            "credential_ttl = 600\n",
            &format!("credential_ttl = 600\n{demo_keys}\n"),
        );
        Demo::start_toml(net, config, dir, &toml)
    }

    /// [`Demo::start`] with the whole config file given (`config` still
    /// says where the demo's HTTP server is).
    pub fn start_toml(net: &Net, config: DemoConfig, dir: &Path, toml: &str) -> Demo {
        let path = dir.join("ferroturn.toml");
        fs::write(&path, toml).unwrap();
        let log = dir.join("ferroturn.log");
        let bin = env!("CARGO_BIN_EXE_ferroturn");
        let cmd = net.command(bin, &["demo", "--config", path.to_str().unwrap()]);
        let mut proc = Proc::spawn("ferroturn demo", cmd, &log);
        let up = wait_for(Duration::from_secs(10), || {
            if !proc.running() {
                return Some(false);
            }
            http_get(net, config.http, "/ice-servers")
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| true)
        });
        if up != Some(true) {
            panic!(
                "ferroturn demo did not start; log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Demo { proc, config, log }
    }

    /// The page URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.config.http)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One HTTP/1.1 request with `Connection: close`: status and body.
pub fn http_request(
    net: &Net,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = net.connect(addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    // chromedriver keeps connections open whatever the request says: read
    // the head, then Content-Length bytes (or chunks, or to EOF).
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if response_complete(&raw) {
            break;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!(
            "bad HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        ))
    })
}

/// GET `path`: status and body.
pub fn http_get(net: &Net, addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    http_request(net, addr, "GET", path, None, Duration::from_secs(10))
}

/// Whether `raw` holds a whole response with a Content-Length or chunked body.
fn response_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("content-length:") {
            return v
                .trim()
                .parse::<usize>()
                .is_ok_and(|n| raw.len() >= end + 4 + n);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return raw.ends_with(b"\r\n0\r\n\r\n") || raw[end + 4..].starts_with(b"0\r\n\r\n");
        }
    }
    false
}

/// Status and body of a complete response (Content-Length, chunked, or to EOF).
pub fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let body = &raw[end + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let nl = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&rest[..nl])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        rest = &rest[nl + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
