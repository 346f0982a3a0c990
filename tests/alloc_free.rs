//! The data path allocates nothing: with a counting global allocator, relay
//! ChannelData through a running server (client → peer → client) and count
//! heap allocations made by any thread of this process while it happens.

mod common;
mod raw;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raw::{Link, RawClient};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REALM: &str = "alloc.test";

/// Warm up with 200 round trips (lazily created buffers, first wake-ups),
/// then count the heap allocations of 2,000 more: there must be none.
fn assert_no_allocations(what: &str, mut round_trip: impl FnMut(u32)) {
    for i in 0..200 {
        round_trip(i);
    }
    let before = ALLOCS.load(Ordering::SeqCst);
    const N: u32 = 2000;
    for i in 0..N {
        round_trip(i);
    }
    let after = ALLOCS.load(Ordering::SeqCst);
    println!(
        "{N} round trips {what} (client→peer and peer→client): {} heap allocations",
        after - before
    );
    assert_eq!(
        after - before,
        0,
        "heap allocations on the ChannelData path {what}"
    );
}

/// The tests count every thread's allocations: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// An echo peer that allocates nothing in its loop: its address, what
/// stops it, its thread.
fn echo_peer() -> (SocketAddr, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, from)) = peer.recv_from(&mut buf) {
                let _ = peer.send_to(&buf[..n], from);
            }
        }
    });
    (peer_addr, stop, echo)
}

#[test]
fn relaying_channel_data_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = raw::loopback_config(REALM, "[\"udp\"]", common::relay_block());
    let server = ferroturn::io::Server::start(config).unwrap();
    let addr = server.listen[0];

    let (peer_addr, stop, echo) = echo_peer();

    // Setup with the raw client (it may allocate: nothing is counted yet).
    let mut c = RawClient::udp(addr, REALM, "alice", "wonderland");
    c.allocate();
    c.channel_bind(0x4000, peer_addr);
    let Link::Udp(sock) = &c.link else {
        unreachable!("a UDP client")
    };

    let mut pkt = [0u8; 204];
    pkt[..4].copy_from_slice(&[0x40, 0x00, 0x00, 200]);
    let mut got = [0u8; 2048];
    let round_trip = |i: u32| {
        pkt[4..8].copy_from_slice(&i.to_be_bytes());
        sock.send_to(&pkt, addr).unwrap();
        let (n, _) = sock.recv_from(&mut got).expect("echo through the relay");
        assert_eq!(
            &got[..n],
            &pkt[..],
            "packet {i} came back intact as ChannelData"
        );
    };
    assert_no_allocations("over UDP", round_trip);

    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    server.stop();
}

/// OpenSSL's I/O for the DTLS client below: its connected socket, read
/// and written directly (nothing allocated per datagram).
struct Connected(UdpSocket);

impl std::io::Read for Connected {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
}

impl std::io::Write for Connected {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The same through a `"dtls"` listener (RFC 7350): the server decrypts
/// each record into the engine and encrypts each answer and relayed frame
/// without a heap allocation of its own (OpenSSL's are C `malloc`s, which
/// this allocator does not see).
#[test]
fn relaying_channel_data_over_dtls_allocates_nothing() {
    use ferroturn::proto::stun::{self as wire, Request};
    use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslStream, SslVerifyMode};
    use stun::attributes::ATTR_NONCE;
    use stun::message::{METHOD_ALLOCATE, METHOD_CHANNEL_BIND};

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::TempDir::new("alloc-dtls");
    let (cert, key) = common::make_cert(dir.path(), "dtls");
    let (lo, hi) = common::relay_block();
    let text = format!(
        "realm = \"{REALM}\"\n[server]\nworkers = 2\n[[listen]]\naddress = \"127.0.0.1:0\"\ntransports = [\"dtls\"]\ncert = \"{}\"\nkey = \"{}\"\n[relay]\naddress = \"127.0.0.1\"\nports = \"{lo}-{hi}\"\n[auth]\nusers = {{ alice = \"wonderland\" }}\n[peers]\nallow = [\"127.0.0.0/8\"]\n",
        cert.display(),
        key.display()
    );
    let config = ferroturn::config::parse(std::path::Path::new("test.toml"), &text).unwrap();
    let server = ferroturn::io::Server::start(config).unwrap();
    let addr = server.listen[0];
    let (peer_addr, stop, echo) = echo_peer();

    // Setup (it may allocate: nothing is counted yet): the handshake,
    // then Allocate and ChannelBind over the session.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut ctx = SslContext::builder(SslMethod::dtls_client()).unwrap();
    ctx.set_verify(SslVerifyMode::NONE);
    let mut ssl = Ssl::new(&ctx.build()).unwrap();
    ssl.set_connect_state();
    ssl.set_mtu(1200).unwrap();
    let mut tls = SslStream::new(ssl, Connected(sock)).unwrap();
    let mut done = false;
    for _ in 0..20 {
        match tls.do_handshake() {
            Ok(()) => {
                done = true;
                break;
            }
            Err(e) if e.code() == ErrorCode::WANT_READ => {}
            Err(e) => panic!("DTLS handshake: {e}"),
        }
    }
    assert!(done, "no DTLS handshake");
    let mut got = [0u8; 2048];
    let mut ask = |tls: &mut SslStream<Connected>, req: &[u8]| {
        tls.ssl_write(req).unwrap();
        let n = tls.ssl_read(&mut got).expect("an answer over DTLS");
        wire::decode(&got[..n]).expect("a STUN answer")
    };
    let r = ask(
        &mut tls,
        &Request::new(METHOD_ALLOCATE).transport(17).bytes(),
    );
    let nonce = wire::text(&r, ATTR_NONCE).expect("NONCE in 401");
    let signed = |r: Request| r.sign("alice", REALM, "wonderland", &nonce);
    let r = ask(
        &mut tls,
        &signed(Request::new(METHOD_ALLOCATE).transport(17)),
    );
    assert_eq!(wire::error_code(&r), None, "Allocate over DTLS");
    let bind = Request::new(METHOD_CHANNEL_BIND)
        .channel(0x4000)
        .peer(peer_addr);
    let r = ask(&mut tls, &signed(bind));
    assert_eq!(wire::error_code(&r), None, "ChannelBind over DTLS");

    let mut pkt = [0u8; 204];
    pkt[..4].copy_from_slice(&[0x40, 0x00, 0x00, 200]);
    let mut got = [0u8; 2048];
    let round_trip = |i: u32| {
        pkt[4..8].copy_from_slice(&i.to_be_bytes());
        tls.ssl_write(&pkt).unwrap();
        let n = tls.ssl_read(&mut got).expect("echo through the relay");
        assert_eq!(&got[..n], &pkt[..], "packet {i} came back intact");
    };
    assert_no_allocations("over DTLS", round_trip);

    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    server.stop();
}
