//! TCP allocations (RFC 6062): coturn's `turnutils_uclient -T` relays over
//! TCP and TLS control connections without loss, and a raw client in this
//! file takes each side by hand: a Connect to a TCP echo peer and its
//! ConnectionBind, a peer connecting to the relayed address (a
//! ConnectionAttempt), the peer policy (403), an existing connection
//! (446), a failed one (447), the 400 cases, the per-allocation
//! connection quota, the end of the data connections with their
//! allocation, and the bound on what a peer that does not read makes the
//! server hold.
//!
//! The 30 s bind deadline is tested with the engine's clock
//! (crates/engine/src/engine/tests/tcp.rs).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::coturn::{parse_summary, tool};
use common::{
    KillOnDrop, LOCALHOST, PASSWORD, REALM, Server, ServerConfig, TempDir, USER, make_cert,
    run_with_timeout,
};
use ferroturn::proto::stun::{self as wire, Request};
use stun::attributes::*;
use stun::message::*;

/// Every read of the raw client waits at most this.
const STEP: Duration = Duration::from_secs(5);
/// A uclient run must finish within this.
const UCLIENT_LIMIT: Duration = Duration::from_secs(60);
/// Messages per client (-n), clients (-m), message length (-l).
const MESSAGES: u64 = 40;
const CLIENTS: u64 = 2;

// ---- coturn's uclient ------------------------------------------------------

/// A server with a TCP listener (and UDP, for the readiness probe), a
/// TLS listener on another port, `/metrics` and the admin API (TCP, with
/// [`TOKEN`]).
struct TwoListeners {
    _child: KillOnDrop,
    tcp: u16,
    tls: u16,
    metrics: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

const TOKEN: &str = "tcp-relay-test-token";

impl TwoListeners {
    fn start() -> TwoListeners {
        let dir = TempDir::new("tcp-relay");
        let (cert, key) = make_cert(dir.path(), "relay");
        let relay = common::relay_block();
        let mut last = String::new();
        for attempt in 0..3 {
            let (tcp, tls) = (common::free_port(), common::free_port());
            let metrics = SocketAddr::from((LOCALHOST, common::free_port()));
            let admin = SocketAddr::from((LOCALHOST, common::free_port()));
            let socket = dir.path().join(format!("admin-{attempt}.sock"));
            let config = dir.path().join(format!("ferroturn-{attempt}.toml"));
            let log = dir.path().join(format!("ferroturn-{attempt}.log"));
            let text = ServerConfig::default().to_toml(tcp, relay)
                + &format!(
                    "\n[[listen]]\naddress = \"127.0.0.1:{tls}\"\ntransports = [\"tls\"]\ncert = {:?}\nkey = {:?}\n",
                    cert.display().to_string(),
                    key.display().to_string()
                )
                + &format!(
                    "\n[metrics]\naddress = \"{metrics}\"\n\n[admin]\naddress = \"{admin}\"\nsocket = {:?}\ntoken = \"{TOKEN}\"\n",
                    socket.display().to_string()
                );
            std::fs::write(&config, text).unwrap();
            let addr = SocketAddr::from((LOCALHOST, tcp));
            match common::spawn_ferroturn(&config, &log, addr, || true) {
                Ok(child) => {
                    return TwoListeners {
                        _child: KillOnDrop(child),
                        tcp,
                        tls,
                        metrics,
                        admin,
                        log,
                        _dir: dir,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("ferroturn did not start:\n{last}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TwoListeners {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- ferroturn log ----\n{}", self.log());
        }
    }
}

/// `turnutils_uclient -T` (a TCP allocation per session, each pair of
/// sessions connected to each other's relayed address: one side's Connect,
/// the other's ConnectionAttempt, both ConnectionBinds) with `extra`
/// flags against `port`: every message comes back.
fn uclient_tcp_relay(server: &TwoListeners, port: u16, extra: &[&str]) {
    let mut cmd = tool("turnutils_uclient");
    cmd.arg("-T").args(extra);
    cmd.args(["-u", USER, "-w", PASSWORD]);
    cmd.args(["-n", &MESSAGES.to_string(), "-m", &CLIENTS.to_string()]);
    cmd.args(["-l", "170", "-p", &port.to_string(), "127.0.0.1"]);
    let out = run_with_timeout(cmd, UCLIENT_LIMIT);
    let context = format!("uclient -T {extra:?}:\n{}", out.output);
    assert!(!out.timed_out, "killed after {UCLIENT_LIMIT:?}: {context}");
    assert_eq!(out.code, Some(0), "{context}");
    let s = parse_summary(&out.output).unwrap_or_else(|| panic!("no summary: {context}"));
    s.assert_complete(MESSAGES * CLIENTS, &context);
    let log = server.log();
    assert!(
        log.contains("data connection piped"),
        "no pipe in the log:\n{log}"
    );
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// `GET path` over HTTP/1.1 with the admin token: the body, after a 200.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of `series` in a `/metrics` text.
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_and_sessions_show_tcp_relays() {
    let server = TwoListeners::start();
    let addr = SocketAddr::from((LOCALHOST, server.tcp));
    let peer = TcpPeer::start(true);
    let mut c = Raw::connect(addr);
    let relayed = c.allocate_tcp();
    let conn = c.connect_peer(peer.addr).expect("Connect");
    let waiting = http_get(server.metrics, "/metrics");
    assert_eq!(
        metric(&waiting, "ferroturn_tcp_allocations_active"),
        Some(1)
    );
    let series = |state: &str| format!("ferroturn_tcp_peer_connections{{state=\"{state}\"}}");
    assert_eq!(metric(&waiting, &series("waiting")), Some(1), "{waiting}");
    let mut data = bind_data(addr, conn).expect("ConnectionBind");
    echo(&mut data, b"counted");
    let bound = http_get(server.metrics, "/metrics");
    assert_eq!(metric(&bound, &series("waiting")), Some(0));
    assert_eq!(metric(&bound, &series("bound")), Some(1));
    let bytes = |dir: &str| format!("ferroturn_tcp_relayed_bytes_total{{direction=\"{dir}\"}}");
    assert_eq!(metric(&bound, &bytes("to_peer")), Some(7));
    assert_eq!(metric(&bound, &bytes("to_client")), Some(7));
    let requests = "ferroturn_requests_total{method=\"connection_bind\"}";
    // The unsigned one that fetched the nonce (401), then the bind.
    assert_eq!(metric(&bound, requests), Some(2));
    // The session list: the API and `ferroturn sessions`.
    let list: serde_json::Value =
        serde_json::from_str(&http_get(server.admin, "/sessions")).unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{list}");
    assert_eq!(sessions[0]["relay_transport"], "tcp");
    assert_eq!(sessions[0]["to_peer"]["bytes"], 7);
    assert_eq!(sessions[0]["to_client"]["bytes"], 7);
    assert_eq!(sessions[0]["relay"], relayed.to_string());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    cmd.args(["sessions", "--admin", &server.admin.to_string()])
        .env(ferroturn::admin::client::TOKEN_ENV, TOKEN);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.output);
    let row = out
        .output
        .lines()
        .find(|l| l.contains(&relayed.to_string()))
        .unwrap_or_else(|| panic!("no row for {relayed}:\n{}", out.output));
    assert!(out.output.contains("RELAY_TRANSPORT"), "{}", out.output);
    assert!(row.contains(&format!("{relayed}  tcp")), "{row}");
}

#[test]
fn uclient_relays_over_tcp_allocations() {
    let server = TwoListeners::start();
    uclient_tcp_relay(&server, server.tcp, &[]);
    // The same over TLS control and data connections.
    uclient_tcp_relay(&server, server.tls, &["-S"]);
}

// ---- a raw RFC 6062 client -------------------------------------------------

/// A STUN client on one TCP connection to the server, signing with the
/// test user's credentials.
struct Raw {
    s: TcpStream,
    nonce: Option<String>,
    /// Indications that came while an answer was awaited.
    indications: Vec<Message>,
}

/// Read one STUN message from a stream (RFC 6062 data connections carry
/// none after their bind).
fn read_message(s: &mut TcpStream) -> std::io::Result<Message> {
    let m = common::read_stun(s)?;
    Ok(wire::decode(&m).expect("a STUN message"))
}

impl Raw {
    fn connect(server: SocketAddr) -> Raw {
        let s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        Raw {
            s,
            nonce: None,
            indications: Vec::new(),
        }
    }

    /// The answer to the request `build` makes, signed (after learning a
    /// nonce from a 401 first).
    fn request(&mut self, method: Method, build: &dyn Fn(Request) -> Request) -> Message {
        if self.nonce.is_none() {
            let r = self.transact(&build(Request::new(method)).bytes());
            assert_eq!(wire::error_code(&r), Some(401));
            self.nonce = wire::text(&r, ATTR_NONCE);
        }
        let nonce = self.nonce.clone().unwrap();
        self.transact(&build(Request::new(method)).sign(USER, REALM, PASSWORD, &nonce))
    }

    fn transact(&mut self, bytes: &[u8]) -> Message {
        self.s.write_all(bytes).unwrap();
        loop {
            let m = read_message(&mut self.s).expect("an answer");
            if m.typ.class == CLASS_INDICATION {
                self.indications.push(m);
                continue;
            }
            return m;
        }
    }

    /// The next indication, waiting at most `wait`.
    fn indication(&mut self, wait: Duration) -> Option<Message> {
        if !self.indications.is_empty() {
            return Some(self.indications.remove(0));
        }
        self.s.set_read_timeout(Some(wait)).unwrap();
        let m = read_message(&mut self.s).ok();
        self.s.set_read_timeout(Some(STEP)).unwrap();
        m
    }

    /// A TCP allocation (REQUESTED-TRANSPORT 6): its relayed address.
    fn allocate_tcp(&mut self) -> SocketAddr {
        let r = self.request(METHOD_ALLOCATE, &|r| r.transport(6));
        assert_eq!(wire::error_code(&r), None, "TCP Allocate refused");
        wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap()
    }

    /// Connect to `peer`: the CONNECTION-ID, or the error code.
    fn connect_peer(&mut self, peer: SocketAddr) -> Result<u32, u16> {
        let r = self.request(METHOD_CONNECT, &|r| r.peer(peer));
        match wire::error_code(&r) {
            Some(c) => Err(c),
            None => Ok(connection_id(&r)),
        }
    }

    fn permit(&mut self, peer: SocketAddr) {
        let r = self.request(METHOD_CREATE_PERMISSION, &|r| r.peer(peer));
        assert_eq!(wire::error_code(&r), None, "CreatePermission refused");
    }
}

fn connection_id(m: &Message) -> u32 {
    let v = wire::attr(m, ATTR_CONNECTION_ID).expect("CONNECTION-ID");
    u32::from_be_bytes(v.try_into().expect("4 bytes"))
}

/// Open a data connection and bind it to `conn`: the stream, ready to
/// carry bytes, or the error code.
fn bind_data(server: SocketAddr, conn: u32) -> Result<TcpStream, u16> {
    let mut d = Raw::connect(server);
    let r = d.request(METHOD_CONNECTION_BIND, &|r| {
        r.attr(ATTR_CONNECTION_ID, &conn.to_be_bytes())
    });
    match wire::error_code(&r) {
        Some(c) => Err(c),
        None => Ok(d.s),
    }
}

/// A TCP peer on 127.0.0.1 that echoes what it reads (or, if `read` is
/// false, accepts and never reads), in threads that end with the test.
struct TcpPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Where each connection came from.
    seen: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

impl TcpPeer {
    fn start(read: bool) -> TcpPeer {
        let l = TcpListener::bind((LOCALHOST, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) && Instant::now() < until {
                match l.accept() {
                    Ok((mut s, from)) => {
                        seen2.lock().unwrap().push(from);
                        s.set_nonblocking(false).unwrap();
                        if !read {
                            held.push(s);
                            continue;
                        }
                        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                        std::thread::spawn(move || {
                            let mut b = [0u8; 4096];
                            while let Ok(n) = s.read(&mut b) {
                                if n == 0 || s.write_all(&b[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TcpPeer { addr, stop, seen }
    }
}

impl Drop for TcpPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Write `data` and read as much back.
fn echo(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    s.set_read_timeout(Some(STEP)).unwrap();
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
}

/// Whether `s` is closed by the other side within `wait` (EOF or reset),
/// reading and discarding what comes first.
fn closes_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let until = Instant::now() + wait;
    let mut b = [0u8; 1024];
    while Instant::now() < until {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn connect_to_a_tcp_peer_then_bind_and_relay() {
    let server = Server::start();
    let peer = TcpPeer::start(true);
    let mut c = Raw::connect(server.addr);
    let relayed = c.allocate_tcp();
    assert!(server.is_relay_addr(relayed), "relayed {relayed}");
    let conn = c.connect_peer(peer.addr).expect("Connect");
    // The peer sees the connection come from the relayed address.
    let until = Instant::now() + STEP;
    while peer.seen.lock().unwrap().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*peer.seen.lock().unwrap(), vec![relayed]);
    let mut data = bind_data(server.addr, conn).expect("ConnectionBind");
    for i in 0..200u32 {
        let msg: Vec<u8> = (0..(i % 97 + 1)).map(|b| (b ^ i) as u8).collect();
        echo(&mut data, &msg);
    }
    // A larger burst than the pipe's buffer, back in one piece.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    echo(&mut data, &big);
    // A CONNECTION-ID binds once only.
    assert_eq!(bind_data(server.addr, conn).err(), Some(400));
    // The allocation's end closes its data connection.
    let r = c.request(METHOD_REFRESH, &|r| r.lifetime(0));
    assert_eq!(wire::error_code(&r), None);
    assert!(
        closes_within(&mut data, STEP),
        "data connection open after its allocation ended"
    );
}

#[test]
fn a_peer_connecting_to_the_relay_reaches_the_client() {
    let server = Server::start();
    let mut c = Raw::connect(server.addr);
    let relayed = c.allocate_tcp();
    // Without a permission the peer is turned away, and nobody is told.
    let mut stranger = TcpStream::connect(relayed).unwrap();
    assert!(
        closes_within(&mut stranger, STEP),
        "a peer without permission stayed"
    );
    assert!(c.indication(Duration::from_millis(300)).is_none());
    c.permit(SocketAddr::from((LOCALHOST, 1)));
    let mut peer = TcpStream::connect(relayed).unwrap();
    let attempt = c.indication(STEP).expect("ConnectionAttempt");
    assert_eq!(attempt.typ.method, METHOD_CONNECTION_ATTEMPT);
    assert_eq!(
        wire::xor_address(&attempt, ATTR_XOR_PEER_ADDRESS),
        Some(peer.local_addr().unwrap())
    );
    let conn = connection_id(&attempt);
    // Bytes the peer sends before the bind wait for it.
    peer.write_all(b"early").unwrap();
    let mut data = bind_data(server.addr, conn).expect("ConnectionBind");
    data.set_read_timeout(Some(STEP)).unwrap();
    let mut b = [0u8; 5];
    data.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"early");
    data.write_all(b"to the peer").unwrap();
    let mut b = [0u8; 11];
    peer.set_read_timeout(Some(STEP)).unwrap();
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"to the peer");
    // Closing the data connection closes the peer's.
    drop(data);
    assert!(closes_within(&mut peer, STEP));
}

#[test]
fn policy_existing_and_failed_connections() {
    let server = Server::start();
    let peer = TcpPeer::start(true);
    let mut c = Raw::connect(server.addr);
    c.allocate_tcp();
    // 10.0.0.0/8 is refused by the default policy: 403, in both
    // directions (no permission for it can be made either).
    let denied: SocketAddr = "10.1.2.3:80".parse().unwrap();
    assert_eq!(c.connect_peer(denied), Err(403));
    let r = c.request(METHOD_CREATE_PERMISSION, &|r| r.peer(denied));
    assert_eq!(wire::error_code(&r), Some(403));
    // A second connection to the same peer: 446.
    c.connect_peer(peer.addr).expect("Connect");
    assert_eq!(c.connect_peer(peer.addr), Err(446));
    // Nobody listens there: 447.
    let closed = TcpListener::bind((LOCALHOST, 0)).unwrap();
    let nobody = closed.local_addr().unwrap();
    drop(closed);
    assert_eq!(c.connect_peer(nobody), Err(447));
}

#[test]
fn bad_requests_get_400() {
    let server = Server::start();
    // A TCP Allocate over UDP.
    let udp = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    udp.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = [0u8; 1500];
    let ask = |req: Vec<u8>, buf: &mut [u8]| {
        udp.send_to(&req, server.addr).unwrap();
        let n = udp.recv(buf).unwrap();
        wire::decode(&buf[..n]).unwrap()
    };
    let r = ask(Request::new(METHOD_ALLOCATE).transport(6).bytes(), &mut buf);
    let nonce = wire::text(&r, ATTR_NONCE).unwrap();
    let signed = Request::new(METHOD_ALLOCATE)
        .transport(6)
        .sign(USER, REALM, PASSWORD, &nonce);
    assert_eq!(wire::error_code(&ask(signed, &mut buf)), Some(400));
    // EVEN-PORT, RESERVATION-TOKEN or DONT-FRAGMENT with TCP.
    let mut c = Raw::connect(server.addr);
    let extras: [(AttrType, &[u8]); 3] = [
        (ATTR_EVEN_PORT, &[0x80]),
        (ATTR_RESERVATION_TOKEN, &[1, 2, 3, 4, 5, 6, 7, 8]),
        (ATTR_DONT_FRAGMENT, &[]),
    ];
    for (t, v) in extras {
        let r = c.request(METHOD_ALLOCATE, &|r| r.transport(6).attr(t, v));
        assert_eq!(wire::error_code(&r), Some(400), "Allocate with {t}");
    }
    c.allocate_tcp();
    // ChannelBind on a TCP allocation.
    let peer = SocketAddr::from((LOCALHOST, 9));
    let r = c.request(METHOD_CHANNEL_BIND, &|r| r.channel(0x4000).peer(peer));
    assert_eq!(wire::error_code(&r), Some(400));
    // A ConnectionBind on the allocation's own connection, and one for a
    // CONNECTION-ID nobody gave.
    let r = c.request(METHOD_CONNECTION_BIND, &|r| {
        r.attr(ATTR_CONNECTION_ID, &7u32.to_be_bytes())
    });
    assert_eq!(wire::error_code(&r), Some(400));
    assert_eq!(bind_data(server.addr, 7).err(), Some(400));
    // A Connect on a UDP allocation.
    let mut u = Raw::connect(server.addr);
    let r = u.request(METHOD_ALLOCATE, &|r| r.transport(17));
    assert_eq!(wire::error_code(&r), None);
    assert_eq!(u.connect_peer(peer), Err(400));
}

#[test]
fn connections_per_allocation_is_enforced() {
    let server = Server::start_with(ServerConfig {
        limits: vec![("connections_per_allocation", "2".into())],
        ..Default::default()
    });
    let peers: Vec<TcpPeer> = (0..3).map(|_| TcpPeer::start(true)).collect();
    let mut c = Raw::connect(server.addr);
    let relayed = c.allocate_tcp();
    c.connect_peer(peers[0].addr).expect("first");
    c.connect_peer(peers[1].addr).expect("second");
    assert_eq!(c.connect_peer(peers[2].addr), Err(508));
    // Nor may a peer connect in.
    c.permit(SocketAddr::from((LOCALHOST, 1)));
    let mut extra = TcpStream::connect(relayed).unwrap();
    assert!(
        closes_within(&mut extra, STEP),
        "a third peer connection stayed"
    );
    assert!(c.indication(Duration::from_millis(300)).is_none());
}

#[test]
fn a_peer_that_does_not_read_holds_the_client_back() {
    let server = Server::start();
    let sink = TcpPeer::start(false);
    let mut c = Raw::connect(server.addr);
    c.allocate_tcp();
    let conn = c.connect_peer(sink.addr).expect("Connect");
    let mut data = bind_data(server.addr, conn).expect("ConnectionBind");
    let before = common::rss_kb(server.pid());
    // Write until the writes stall (the peer never reads) for a second,
    // at most 256 MB.
    data.set_nonblocking(true).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let (mut written, mut last_progress) = (0usize, Instant::now());
    while written < 256 << 20 && last_progress.elapsed() < Duration::from_secs(1) {
        match data.write(&chunk) {
            Ok(n) => {
                written += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    let grown = common::rss_kb(server.pid()).saturating_sub(before);
    assert!(written < 256 << 20, "the writes never stalled");
    // What is in flight waits in the kernel's socket buffers; the server
    // holds one fixed buffer per direction.
    assert!(
        grown < 2048,
        "the server's RSS grew by {grown} KiB while {written} bytes were written"
    );
    eprintln!("stalled after {written} bytes; server RSS grew by {grown} KiB");
}

#[test]
fn data_connections_keep_the_bandwidth_ceiling_and_no_allocation_deadline() {
    let server = Server::start_with(ServerConfig {
        limits: vec![
            ("bandwidth", "100000".into()),
            ("stream_allocation_timeout", "1".into()),
        ],
        ..Default::default()
    });
    let peer = TcpPeer::start(true);
    let mut c = Raw::connect(server.addr);
    c.allocate_tcp();
    let conn = c.connect_peer(peer.addr).expect("Connect");
    let mut data = bind_data(server.addr, conn).expect("ConnectionBind");
    // A data connection holds no allocation, and is not closed for it
    // (stream_allocation_timeout is 1 s here).
    std::thread::sleep(Duration::from_millis(2500));
    echo(&mut data, b"still here");
    // 300 kB each way at 100 kB/s take 2.75 s at least (a quarter of a
    // second may go at once); read on another thread while writing.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut reader = data.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let got = std::thread::spawn(move || {
        let mut back = vec![0u8; 300_000];
        reader.read_exact(&mut back).map(|()| back)
    });
    data.write_all(&payload).unwrap();
    let back = got.join().unwrap().expect("the echo, whole");
    let took = started.elapsed();
    assert!(back == payload, "the echo differs");
    assert!(
        took >= Duration::from_millis(2500),
        "300 kB went through in {took:?}: faster than the 100 kB/s ceiling"
    );
}

#[test]
fn a_reload_that_denies_the_peer_closes_its_pipe() {
    let server = Server::start();
    let peer = TcpPeer::start(true);
    let mut c = Raw::connect(server.addr);
    c.allocate_tcp();
    let conn = c.connect_peer(peer.addr).expect("Connect");
    let mut data = bind_data(server.addr, conn).expect("ConnectionBind");
    echo(&mut data, b"before the reload");
    // The same config without `allow = ["127.0.0.0/8"]`: a loopback port
    // that is no relay is this host's own, denied.
    let denying = ServerConfig {
        allow: vec![],
        ..server.config.clone()
    };
    let text = denying.to_toml(server.addr.port(), server.relay_ports);
    std::fs::write(server.config_path(), text).unwrap();
    // SAFETY: kill(2) with SIGHUP on the server we started.
    assert_eq!(
        unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGHUP) },
        0
    );
    assert!(
        closes_within(&mut data, Duration::from_secs(10)),
        "the pipe to a denied peer outlived the reload"
    );
    assert!(
        server
            .log()
            .contains("peer connections to peers the new policy denies closed")
    );
}

/// A TCP peer on 127.0.0.1 that reads and counts what every connection
/// to it sends, in threads that end with the test.
struct CountingSink {
    addr: SocketAddr,
    bytes: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CountingSink {
    fn start() -> CountingSink {
        let l = TcpListener::bind((LOCALHOST, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (bytes2, stop2) = (bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < until {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let (bytes, stop) = (bytes2.clone(), stop2.clone());
                std::thread::spawn(move || {
                    let mut b = vec![0u8; 64 * 1024];
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        match s.read(&mut b) {
                            Ok(0) => break,
                            Ok(n) => {
                                bytes.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                });
            }
        });
        CountingSink { addr, bytes, stop }
    }

    fn received(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for CountingSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Write to `s` as fast as it takes it until `stop`, on a thread; every
/// write waits at most 200 ms, so the thread sees `stop` soon after.
fn push_until(mut s: TcpStream, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let chunk = vec![0xa5u8; 16 * 1024];
        let until = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            match s.write(&chunk) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    })
}

/// `limits.bandwidth` is a ceiling per allocation and direction, as for a
/// UDP allocation, however many data connections it has: two data
/// connections of one allocation, each pushing as fast as it can,
/// together stay within one ceiling, while a second allocation pushing at
/// the same time has a ceiling of its own.
#[test]
fn the_data_connections_of_an_allocation_share_its_bandwidth_ceiling() {
    const RATE: u64 = 100_000;
    let server = Server::start_with(ServerConfig {
        limits: vec![("bandwidth", RATE.to_string())],
        ..Default::default()
    });
    let (sink1, sink2, other_sink) = (
        CountingSink::start(),
        CountingSink::start(),
        CountingSink::start(),
    );
    let mut a = Raw::connect(server.addr);
    a.allocate_tcp();
    let first = a.connect_peer(sink1.addr).expect("Connect");
    let second = a.connect_peer(sink2.addr).expect("Connect");
    let mut b = Raw::connect(server.addr);
    b.allocate_tcp();
    let other = b.connect_peer(other_sink.addr).expect("Connect");
    let data: Vec<TcpStream> = [first, second, other]
        .into_iter()
        .map(|conn| bind_data(server.addr, conn).expect("ConnectionBind"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Before the first byte: a window measured from here is no shorter
    // than the pipes' own.
    let started = Instant::now();
    let pushers: Vec<_> = data
        .into_iter()
        .map(|s| push_until(s, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let shared = sink1.received() + sink2.received();
    let alone = other_sink.received();
    let window = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for p in pushers {
        p.join().unwrap();
    }
    // One ceiling over the window, a quarter of a second's burst, and one
    // 16 KiB read per pipe written before its wait; 10 % more for
    // rounding and for what the peers' kernels count late or early.
    let ceiling = (RATE as f64 * (window + 0.25) + 2.0 * 16384.0) * 1.1;
    eprintln!(
        "{window:.2} s: two data connections of one allocation {shared} bytes, one of another {alone} (ceiling {ceiling:.0})"
    );
    assert!(
        (shared as f64) <= ceiling,
        "two data connections of one allocation moved {shared} bytes in {window:.2} s: more than its ceiling of {RATE} B/s"
    );
    assert!(shared > 0, "nothing went through");
    // Held to the first allocation's ceiling, with its two pipes, the
    // third pipe would get a third of it; on its own it gets all of one.
    assert!(
        (alone as f64) > RATE as f64 * window / 2.0,
        "the other allocation moved only {alone} bytes in {window:.2} s: held back by the first's ceiling"
    );
}
