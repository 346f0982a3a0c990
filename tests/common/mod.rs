//! Helpers shared by the integration tests: free ports, a `ferroturn`
//! child process with its own temporary config, a UDP echo peer, and a
//! hand-built STUN Binding request.
//!
//! Everything here talks to 127.0.0.1 only, and every wait is bounded.

#![allow(dead_code)]

pub mod coturn;
pub mod redis;
pub mod strace;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub const REALM: &str = "ferroturn.test";
pub const SECRET: &str = "s3cret";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "wonderland";

/// How long a server gets to answer its first Binding request.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Relay port blocks come from this range, below the kernel's ephemeral
/// range (32768-60999 on Linux), so that they never collide with the
/// listen ports, peers and client sockets that bind port 0.
const RELAY_BLOCKS_START: u16 = 10_000;
const RELAY_BLOCKS_END: u16 = 32_000;
pub const RELAY_BLOCK_SIZE: u16 = 200;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Relay blocks handed out by this process; never handed out twice.
static TAKEN_BLOCKS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A port on 127.0.0.1 that is free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((LOCALHOST, 0)).expect("bind UDP 127.0.0.1:0");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind((LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1 after 100 tries");
}

/// A UDP port on 127.0.0.1 that is free right now.
pub fn free_udp_port() -> u16 {
    let udp = UdpSocket::bind((LOCALHOST, 0)).expect("bind UDP 127.0.0.1:0");
    udp.local_addr().unwrap().port()
}

/// An inclusive relay port range of `RELAY_BLOCK_SIZE` ports, distinct from
/// every other block this process handed out and, as far as probing shows,
/// unused by other processes. The first block tried depends on the process
/// id, so test binaries running side by side start at different places.
pub fn relay_block() -> (u16, u16) {
    let blocks = (RELAY_BLOCKS_END - RELAY_BLOCKS_START) / RELAY_BLOCK_SIZE;
    let start = (std::process::id() as u16 % blocks).wrapping_mul(37) % blocks;
    let mut taken = TAKEN_BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..blocks {
        let b = (start + i) % blocks;
        if taken.contains(&b) {
            continue;
        }
        let lo = RELAY_BLOCKS_START + b * RELAY_BLOCK_SIZE;
        let hi = lo + RELAY_BLOCK_SIZE - 1;
        // Probe a sample of the block (every 10th port and both ends).
        let free = (lo..=hi)
            .step_by(10)
            .chain([hi])
            .all(|p| UdpSocket::bind((LOCALHOST, p)).is_ok());
        if free {
            taken.push(b);
            return (lo, hi);
        }
    }
    panic!("no free relay port block in {RELAY_BLOCKS_START}-{RELAY_BLOCKS_END}");
}

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "ferroturn-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            next_seq()
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Start `ferroturn --config CONFIG` with stdout and stderr in `log` (and
/// no RUST_LOG or systemd variables from the test's environment), and wait
/// at most [`STARTUP_TIMEOUT`] until it answers a STUN Binding on `addr`
/// over UDP and `ready()` holds. On failure the child is gone and the error
/// carries its log.
pub fn spawn_ferroturn(
    config: &Path,
    log: &Path,
    addr: SocketAddr,
    ready: impl Fn() -> bool,
) -> Result<Child, String> {
    let file = fs::File::create(log).expect("create log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup log file"))
        .stderr(file)
        .spawn()
        .expect("spawn ferroturn");
    match wait_ready(&mut child, addr, log, ready) {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Wait at most [`STARTUP_TIMEOUT`] until the ferroturn `child` (logging
/// to `log`) answers a STUN Binding on `addr` over UDP and `ready()` holds;
/// else the reason, with the log. The child is left as it is.
pub fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    log: &Path,
    ready: impl Fn() -> bool,
) -> Result<(), String> {
    let read_log = || fs::read_to_string(log).unwrap_or_default();
    let probe = UdpSocket::bind((LOCALHOST, 0)).expect("bind probe socket");
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "ferroturn exited early with {status}:\n{}",
                read_log()
            ));
        }
        if binding_udp(&probe, addr).is_some() && ready() {
            return Ok(());
        }
    }
    Err(format!(
        "ferroturn on {addr} did not get ready within {STARTUP_TIMEOUT:?}:\n{}",
        read_log()
    ))
}

/// What goes into a test server's TOML config. `Default` is the standard
/// test setup; tests change the pieces they care about.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    /// `[server] workers`; `None` leaves the default (one per core).
    pub workers: Option<usize>,
    /// `[server] udp_threads`; `None` leaves the default (adaptive).
    pub udp_threads: Option<&'static str>,
    /// `[server] udp_scheduling`; `None` leaves the default (auto).
    pub udp_scheduling: Option<&'static str>,
    pub transports: Vec<String>,
    pub secrets: Vec<String>,
    pub users: Vec<(String, String)>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub nonce_lifetime: Option<u64>,
    pub lifetime: Option<u32>,
    pub max_lifetime: Option<u32>,
    /// `[allocation] legacy_channel_numbers` (RFC 5766 channel numbers up
    /// to 0x7FFF, which coturn's uclient picks).
    pub legacy_channel_numbers: Option<bool>,
    /// `[allocation] mobility` (RFC 8016).
    pub mobility: Option<bool>,
    pub log_level: String,
    /// Relay ports; `None` picks a fresh block with [`relay_block`].
    pub relay_ports: Option<(u16, u16)>,
    /// `relay.address` as a list of these; empty is `"127.0.0.1"` alone.
    pub relay_addresses: Vec<String>,
    /// Also listen on [::1] (same port) and relay IPv6 on ::1, with ::1
    /// allowed as a peer.
    pub ipv6: bool,
    /// `[limits]` keys and values, as written.
    pub limits: Vec<(&'static str, String)>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            realm: REALM.into(),
            workers: None,
            udp_threads: None,
            udp_scheduling: None,
            transports: vec!["udp".into(), "tcp".into()],
            secrets: vec![SECRET.into()],
            users: vec![(USER.into(), PASSWORD.into())],
            allow: vec!["127.0.0.0/8".into()],
            deny: vec![],
            nonce_lifetime: None,
            lifetime: None,
            max_lifetime: None,
            legacy_channel_numbers: None,
            mobility: None,
            log_level: "debug".into(),
            relay_ports: None,
            relay_addresses: Vec::new(),
            ipv6: false,
            limits: vec![],
        }
    }
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", v.join(", "))
}

impl ServerConfig {
    /// The TOML text for a server listening on 127.0.0.1:`port`.
    pub fn to_toml(&self, port: u16, relay: (u16, u16)) -> String {
        let mut t = String::new();
        t.push_str(&format!("realm = {}\n", toml_str(&self.realm)));
        if self.workers.is_some() || self.udp_threads.is_some() || self.udp_scheduling.is_some() {
            t.push_str("\n[server]\n");
        }
        if let Some(w) = self.workers {
            t.push_str(&format!("workers = {w}\n"));
        }
        if let Some(u) = self.udp_threads {
            t.push_str(&format!("udp_threads = {}\n", toml_str(u)));
        }
        if let Some(u) = self.udp_scheduling {
            t.push_str(&format!("udp_scheduling = {}\n", toml_str(u)));
        }
        t.push_str(&format!(
            "\n[[listen]]\naddress = \"127.0.0.1:{port}\"\ntransports = {}\n",
            toml_list(&self.transports)
        ));
        if self.ipv6 {
            t.push_str(&format!(
                "\n[[listen]]\naddress = \"[::1]:{port}\"\ntransports = {}\n",
                toml_list(&self.transports)
            ));
        }
        let address = match self.relay_addresses.as_slice() {
            [] => toml_str("127.0.0.1"),
            list => toml_list(list),
        };
        t.push_str(&format!(
            "\n[relay]\naddress = {address}\nports = \"{}-{}\"\n",
            relay.0, relay.1
        ));
        if self.ipv6 {
            t.push_str("address_v6 = \"::1\"\n");
        }
        let users: Vec<String> = self
            .users
            .iter()
            .map(|(u, p)| format!("{} = {}", toml_str(u), toml_str(p)))
            .collect();
        t.push_str(&format!(
            "\n[auth]\nsecrets = {}\nusers = {{ {} }}\n",
            toml_list(&self.secrets),
            users.join(", ")
        ));
        if let Some(n) = self.nonce_lifetime {
            t.push_str(&format!("nonce_lifetime = {n}\n"));
        }
        let mut allow = self.allow.clone();
        if self.ipv6 {
            allow.push("::1".into());
        }
        t.push_str(&format!(
            "\n[peers]\nallow = {}\ndeny = {}\n",
            toml_list(&allow),
            toml_list(&self.deny)
        ));
        if self.lifetime.is_some()
            || self.max_lifetime.is_some()
            || self.legacy_channel_numbers.is_some()
            || self.mobility.is_some()
        {
            t.push_str("\n[allocation]\n");
            if let Some(l) = self.lifetime {
                t.push_str(&format!("lifetime = {l}\n"));
            }
            if let Some(l) = self.max_lifetime {
                t.push_str(&format!("max_lifetime = {l}\n"));
            }
            if let Some(b) = self.legacy_channel_numbers {
                t.push_str(&format!("legacy_channel_numbers = {b}\n"));
            }
            if let Some(b) = self.mobility {
                t.push_str(&format!("mobility = {b}\n"));
            }
        }
        if !self.limits.is_empty() {
            t.push_str("\n[limits]\n");
            for (k, v) in &self.limits {
                t.push_str(&format!("{k} = {v}\n"));
            }
        }
        t.push_str(&format!("\n[log]\nlevel = {}\n", toml_str(&self.log_level)));
        t
    }
}

/// A running `ferroturn` child process. Killed on drop; if the test is
/// panicking, its log is printed first so that the failure explains itself.
pub struct Server {
    child: Child,
    /// The address it listens on, UDP and TCP.
    pub addr: SocketAddr,
    /// The inclusive relay port range it was given.
    pub relay_ports: (u16, u16),
    pub config: ServerConfig,
    log_path: PathBuf,
    config_path: PathBuf,
    dir: TempDir,
}

impl Server {
    /// Start a server with the standard test configuration.
    pub fn start() -> Server {
        Server::start_with(ServerConfig::default())
    }

    /// Start a server with `config`, and wait until it answers a STUN
    /// Binding request over UDP. Retries with a new port if the chosen one
    /// was taken in the meantime.
    pub fn start_with(config: ServerConfig) -> Server {
        let relay = config.relay_ports.unwrap_or_else(relay_block);
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            match Server::try_start(&config, port, relay) {
                Ok(s) => return s,
                Err(log) => last_log = log,
            }
        }
        panic!("ferroturn did not start; last log:\n{last_log}");
    }

    fn try_start(config: &ServerConfig, port: u16, relay: (u16, u16)) -> Result<Server, String> {
        let dir = TempDir::new("server");
        let config_path = dir.path().join("ferroturn.toml");
        let log_path = dir.path().join("ferroturn.log");
        fs::write(&config_path, config.to_toml(port, relay)).expect("write config");
        let addr = SocketAddr::from((LOCALHOST, port));
        let child = spawn_ferroturn(&config_path, &log_path, addr, || true)?;
        Ok(Server {
            child,
            addr,
            relay_ports: relay,
            config: config.clone(),
            log_path,
            config_path,
            dir,
        })
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The path of the config file the server was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The scratch directory the server's files live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The child's process id (for /proc measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether `addr` is a relay address this server may hand out.
    pub fn is_relay_addr(&self, addr: SocketAddr) -> bool {
        addr.ip() == std::net::IpAddr::V4(LOCALHOST)
            && (self.relay_ports.0..=self.relay_ports.1).contains(&addr.port())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!(
                "---- ferroturn log ({}, last {} lines) ----",
                self.addr,
                tail.len()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            eprintln!("---- end of ferroturn log ----");
        }
    }
}

/// A UDP echo peer on 127.0.0.1 in its own thread. It sends every datagram
/// back to where it came from, stops on drop, and gives up by itself after
/// `ECHO_LIFETIME` at the latest.
pub struct EchoPeer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
    senders: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<JoinHandle<()>>,
}

pub const ECHO_LIFETIME: Duration = Duration::from_secs(180);

impl EchoPeer {
    pub fn start() -> EchoPeer {
        let sock = UdpSocket::bind((LOCALHOST, 0)).expect("bind echo peer");
        let addr = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let senders = Arc::new(Mutex::new(Vec::new()));
        let (stop2, received2, senders2) = (stop.clone(), received.clone(), senders.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + ECHO_LIFETIME;
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        received2.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut s = senders2.lock().unwrap_or_else(|e| e.into_inner());
                            if !s.contains(&from) && s.len() < 1000 {
                                s.push(from);
                            }
                        }
                        let _ = sock.send_to(&buf[..n], from);
                    }
                    Err(_) => continue,
                }
            }
        });
        EchoPeer {
            addr,
            stop,
            received,
            senders,
            thread: Some(thread),
        }
    }

    /// Datagrams echoed so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    /// Distinct source addresses seen so far.
    pub fn senders(&self) -> Vec<SocketAddr> {
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- A hand-built STUN Binding request (RFC 8489) -------------------------

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// A fresh transaction id: not cryptographic, just distinct per call.
pub fn transaction_id() -> [u8; 12] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ ((std::process::id() as u64) << 32)
        ^ (next_seq() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut id = [0u8; 12];
    for b in id.iter_mut() {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    id
}

/// A Binding request with no attributes.
pub fn binding_request(tid: &[u8; 12]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20);
    m.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(tid);
    m
}

/// If `msg` is a Binding success response to `tid`, its XOR-MAPPED-ADDRESS.
pub fn parse_binding_success(msg: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if msg.len() < 20 {
        return None;
    }
    let typ = u16::from_be_bytes([msg[0], msg[1]]);
    let len = u16::from_be_bytes([msg[2], msg[3]]) as usize;
    if typ != BINDING_SUCCESS
        || msg[4..8] != MAGIC_COOKIE.to_be_bytes()
        || &msg[8..20] != tid
        || msg.len() < 20 + len
    {
        return None;
    }
    let mut attrs = &msg[20..20 + len];
    while attrs.len() >= 4 {
        let t = u16::from_be_bytes([attrs[0], attrs[1]]);
        let l = u16::from_be_bytes([attrs[2], attrs[3]]) as usize;
        let padded = (l + 3) & !3;
        if attrs.len() < 4 + l {
            return None;
        }
        let v = &attrs[4..4 + l];
        if t == ATTR_XOR_MAPPED_ADDRESS && l >= 8 {
            let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            match v[1] {
                0x01 if l == 8 => {
                    let raw = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
                    return Some(SocketAddr::from((Ipv4Addr::from(raw), port)));
                }
                0x02 if l == 20 => {
                    let mut key = [0u8; 16];
                    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                    key[4..].copy_from_slice(tid);
                    let mut ip = [0u8; 16];
                    for i in 0..16 {
                        ip[i] = v[4 + i] ^ key[i];
                    }
                    return Some(SocketAddr::from((std::net::Ipv6Addr::from(ip), port)));
                }
                _ => return None,
            }
        }
        attrs = &attrs[(4 + padded).min(attrs.len())..];
    }
    None
}

/// One Binding transaction over UDP on `sock` (whose read timeout bounds the
/// wait for each try): the mapped address, or `None` after 3 tries.
pub fn binding_udp(sock: &UdpSocket, server: SocketAddr) -> Option<SocketAddr> {
    let tid = transaction_id();
    let req = binding_request(&tid);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        sock.send_to(&req, server).ok()?;
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == server => {
                    if let Some(a) = parse_binding_success(&buf[..n], &tid) {
                        return Some(a);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    None
}

/// One Binding transaction over a fresh TCP connection: the mapped address
/// the server reported, and the connection's own local address.
pub fn binding_tcp(server: SocketAddr) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let local = s.local_addr()?;
    Ok((binding_stream(&mut s)?, local))
}

/// One STUN message off a stream (RFC 8489 §6.2.2: framed by its own
/// length field), whole.
pub fn read_stun(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 20];
    s.read_exact(&mut head)?;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut msg = head.to_vec();
    msg.resize(20 + len, 0);
    s.read_exact(&mut msg[20..])?;
    Ok(msg)
}

/// One Binding transaction on a connected stream (TCP, or TLS over it):
/// the mapped address the server reported.
pub fn binding_stream(s: &mut (impl Read + Write)) -> std::io::Result<SocketAddr> {
    let tid = transaction_id();
    s.write_all(&binding_request(&tid))?;
    s.flush()?;
    let msg = read_stun(s)?;
    parse_binding_success(&msg, &tid).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a Binding success response to our request: {msg:02x?}"),
        )
    })
}

// ---- /metrics ------------------------------------------------------------------

/// One GET of `/metrics` from the metrics listener at `addr` (asked by its
/// IP literal as `Host`, which the server always answers to): the whole
/// response, headers and all.
pub fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// The value of sample `series` (`name`, or `name{labels}` exactly as
/// rendered) in a scrape's text; `None` if it is not there. Every sample
/// ferroturn renders is a whole number: anything else fails the test.
pub fn sample(text: &str, series: &str) -> Option<u64> {
    let prefix = format!("{series} ");
    let v = text.lines().find_map(|l| l.strip_prefix(&prefix))?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{series}: {v:?} is not a count: {e}")),
    )
}

// ---- Child processes with a time limit ---------------------------------------

/// The outcome of [`run_with_timeout`].
#[derive(Debug)]
pub struct Output {
    /// `None` when the process was killed at the time limit.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
    /// stdout and stderr interleaved (both go to one file).
    pub output: String,
}

/// Run `cmd` with stdout and stderr captured to one file, killing it after
/// `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let dir = TempDir::new("run");
    let path = dir.path().join("output.txt");
    let file = fs::File::create(&path).expect("create output file");
    let start = Instant::now();
    // In a process group of its own, so that a timeout kills what it
    // started too (a script's `cargo build` would otherwise run on and
    // hold the build directory's lock).
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup output file"))
        .stderr(file)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("wait for child") {
            Some(s) => break Some(s),
            None if start.elapsed() >= limit => {
                timed_out = true;
                // SAFETY: kill(2) with the group of a child we started and
                // have not yet reaped, so the id is still ours.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Output {
        code: status.and_then(|s| s.code()),
        timed_out,
        elapsed: start.elapsed(),
        output: fs::read_to_string(&path).unwrap_or_default(),
    }
}

/// A child process killed on drop (for helpers such as `turnutils_peer`).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The threads of `pid`: id and name.
pub fn threads(pid: u32) -> Vec<(i32, String)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, comm.trim().to_string()))
        })
        .collect()
}

/// Scheduling policy (sched(7) number) of each thread of `pid`, by name.
pub fn thread_policies(pid: u32) -> Vec<(String, i32)> {
    threads(pid)
        .into_iter()
        .map(|(tid, name)| (name, unsafe { libc::sched_getscheduler(tid) }))
        .collect()
}

// ---- Certificates, memory and file limits ------------------------------------

/// A self-signed P-256 end-entity certificate for CN=localhost (and
/// 127.0.0.1), made by the `openssl` CLI in `dir`: (cert.pem, key.pem),
/// named after `name`.
pub fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // An end-entity certificate (webpki refuses a CA one as the server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-days", "2", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "openssl req failed:\n{}", out.output);
    (cert, key)
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Raise this process's open-files limit to `n` (at most its hard limit),
/// for it and the servers it starts; the limit now in force.
pub fn raise_fd_limit(n: u64) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        if l.rlim_cur < n {
            l.rlim_cur = n.min(l.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    l.rlim_cur
}

/// A rustls client configuration that trusts the PEM certificates in `roots`.
pub fn client_config(roots: &[&Path]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(CertificateDer::from_pem_file(r).expect("read a PEM certificate"))
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

/// A `turn` crate client of the server at `server` on `sock`, listening,
/// with long-term credentials `user`/`password` in `realm`.
pub async fn turn_client(
    server: SocketAddr,
    sock: Arc<tokio::net::UdpSocket>,
    realm: &str,
    user: &str,
    password: &str,
) -> turn::client::Client {
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: user.into(),
        password: password.into(),
        realm: realm.into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: sock,
        vnet: None,
    })
    .await
    .expect("turn Client::new");
    client.listen().await.expect("turn Client::listen");
    client
}
