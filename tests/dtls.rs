//! TURN over DTLS (RFC 7350) against the real binary: coturn's
//! `turnutils_uclient -S` relays through a `"dtls"` listener with no loss;
//! the stateless cookie exchange keeps a ClientHello flood from costing
//! memory; a bad cookie makes no session; the per-IP limits and the
//! handshake deadline bound sessions; a reload's certificate reaches new
//! sessions. The test's own DTLS client is OpenSSL's, driven by hand over
//! a UDP socket so that a test can stop it anywhere in the handshake.

mod common;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::coturn::{CoturnPeer, parse_summary, tool};
use common::{
    LOCALHOST, PASSWORD, ServerConfig, TempDir, USER, binding_request, free_port, free_udp_port,
    make_cert, parse_binding_success, raise_fd_limit, relay_block, rss_kb, run_with_timeout,
    spawn_ferroturn, transaction_id,
};
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslStream, SslVerifyMode, SslVersion};

/// A ferroturn with a UDP listener (for readiness), a DTLS listener and
/// `/metrics`, killed on drop.
struct DtlsServer {
    child: Child,
    dir: TempDir,
    dtls: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl DtlsServer {
    fn start(limits: Vec<(&'static str, String)>) -> DtlsServer {
        let dir = TempDir::new("dtls");
        let (cert, key) = make_cert(dir.path(), "dtls");
        let port = free_port();
        let dtls = SocketAddr::from((LOCALHOST, free_udp_port()));
        let metrics = SocketAddr::from((LOCALHOST, free_port()));
        let cfg = ServerConfig {
            transports: vec!["udp".into()],
            legacy_channel_numbers: Some(true),
            limits,
            ..ServerConfig::default()
        };
        let mut toml = cfg.to_toml(port, relay_block());
        toml.push_str(&format!(
            "\n[[listen]]\naddress = \"{dtls}\"\ntransports = [\"dtls\"]\ncert = \"{}\"\nkey = \"{}\"\n\n[metrics]\naddress = \"{metrics}\"\n",
            cert.display(),
            key.display()
        ));
        let config = dir.path().join("ferroturn.toml");
        std::fs::write(&config, toml).unwrap();
        let log = dir.path().join("ferroturn.log");
        let child = spawn_ferroturn(&config, &log, SocketAddr::from((LOCALHOST, port)), || true)
            .unwrap_or_else(|e| panic!("ferroturn did not start: {e}"));
        DtlsServer {
            child,
            dir,
            dtls,
            metrics,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `/metrics` text.
    fn metrics(&self) -> String {
        common::scrape(self.metrics).unwrap()
    }
}

impl Drop for DtlsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- ferroturn log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OpenSSL's I/O for the test client: datagrams in and out, by hand.
#[derive(Default)]
struct Datagrams {
    inbound: VecDeque<Vec<u8>>,
    outbound: Vec<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(d) = self.inbound.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A DTLS 1.2 client (OpenSSL) on its own UDP socket.
struct Client {
    sock: UdpSocket,
    tls: SslStream<Datagrams>,
}

impl Client {
    fn new(server: SocketAddr) -> Client {
        let sock = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        sock.connect(server).unwrap();
        Client::on(sock)
    }

    /// A client on `sock`, connected to the server already.
    fn on(sock: UdpSocket) -> Client {
        let mut ctx = SslContext::builder(SslMethod::dtls_client()).unwrap();
        ctx.set_verify(SslVerifyMode::NONE);
        ctx.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .unwrap();
        let mut ssl = Ssl::new(&ctx.build()).unwrap();
        ssl.set_connect_state();
        ssl.set_mtu(1200).unwrap();
        let tls = SslStream::new(ssl, Datagrams::default()).unwrap();
        Client { sock, tls }
    }

    /// Send what OpenSSL wrote; how many datagrams.
    fn flush(&mut self) -> usize {
        let out = std::mem::take(&mut self.tls.get_mut().outbound);
        for d in &out {
            self.sock.send(d).unwrap();
        }
        out.len()
    }

    /// Datagrams that arrive within `wait` (then 100 ms more each),
    /// handed to OpenSSL; copies of them.
    fn pump(&mut self, wait: Duration) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        self.sock.set_read_timeout(Some(wait)).unwrap();
        while let Ok(n) = self.sock.recv(&mut buf) {
            got.push(buf[..n].to_vec());
            self.sock
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
        }
        self.tls.get_mut().inbound.extend(got.iter().cloned());
        got
    }

    /// One handshake step: OpenSSL reads what came and writes what it
    /// has to say, which is sent; whether the handshake is done.
    fn step(&mut self) -> bool {
        let done = match self.tls.do_handshake() {
            Ok(()) => true,
            Err(e) if e.code() == ErrorCode::WANT_READ => false,
            Err(e) => panic!("DTLS handshake failed: {e}"),
        };
        self.flush();
        done
    }

    /// Run the handshake to its end.
    fn handshake(&mut self) {
        for _ in 0..10 {
            if self.step() {
                return;
            }
            let got = self.pump(Duration::from_secs(3));
            assert!(
                !got.is_empty(),
                "the server stopped answering the handshake"
            );
        }
        panic!("no handshake after 10 flights");
    }

    /// The server's certificate, DER.
    fn peer_certificate(&self) -> Vec<u8> {
        let cert = self.tls.ssl().peer_certificate().expect("a certificate");
        cert.to_der().unwrap()
    }

    /// A STUN message over the session, and the first answer.
    fn request(&mut self, msg: &[u8]) -> Vec<u8> {
        self.tls.ssl_write(msg).unwrap();
        self.flush();
        self.pump(Duration::from_secs(3));
        let mut buf = vec![0u8; 65_536];
        let n = self.tls.ssl_read(&mut buf).expect("an answer record");
        buf[..n].to_vec()
    }
}

/// The first datagram the server sends for a fresh client's cookie-bearing
/// ClientHello, if any: the client sends ClientHello, takes the
/// HelloVerifyRequest, sends the second ClientHello, and waits.
fn second_hello_answer(client: &mut Client, wait: Duration) -> Option<Vec<u8>> {
    assert!(!client.step());
    let hvr = client.pump(Duration::from_secs(3));
    assert!(is_hello_verify(&hvr[0]), "no HelloVerifyRequest");
    assert!(!client.step());
    client.pump(wait).into_iter().next()
}

/// A handshake record of type `msg` in epoch 0.
fn is_handshake(d: &[u8], msg: u8) -> bool {
    d.len() > 13 && d[0] == 22 && d[3..5] == [0, 0] && d[13] == msg
}

fn is_hello_verify(d: &[u8]) -> bool {
    is_handshake(d, 3)
}

fn is_server_hello(d: &[u8]) -> bool {
    is_handshake(d, 2)
}

/// A ClientHello with `cookie`, as the server's parser reads it (DTLS
/// 1.2, one ECDHE-ECDSA suite).
fn raw_client_hello(cookie: &[u8]) -> Vec<u8> {
    let mut body = vec![254, 253];
    body.extend([9u8; 32]);
    body.push(0);
    body.push(cookie.len() as u8);
    body.extend(cookie);
    body.extend([0, 2, 0xc0, 0x2b, 1, 0]);
    // Padding as a real ClientHello's extensions take room.
    body.extend([0, 8, 0, 21, 0, 4, 0, 0, 0, 0]);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend([0, 0, 0, 0, 0]);
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(&body);
    let mut d = vec![22, 254, 255, 0, 0, 0, 0, 0, 0, 0, 0];
    d.extend((hs.len() as u16).to_be_bytes());
    d.extend(hs);
    d
}

#[test]
fn uclient_over_dtls_relays_without_loss() {
    let server = DtlsServer::start(vec![]);
    let peer = CoturnPeer::start();
    let mut cmd = tool("turnutils_uclient");
    cmd.args([
        "-S", "-u", USER, "-w", PASSWORD, "-n", "50", "-m", "2", "-l", "170",
    ]);
    cmd.args(["-e", "127.0.0.1", "-r", &peer.port.to_string()]);
    cmd.args(["-p", &server.dtls.port().to_string(), "127.0.0.1"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let context = format!(
        "turnutils_uclient -S (exit {:?}):\n{}",
        out.code, out.output
    );
    assert!(!out.timed_out, "{context}");
    assert_eq!(out.code, Some(0), "{context}");
    assert!(out.output.contains("method=DTLSv1.2"), "{context}");
    let s = parse_summary(&out.output).unwrap_or_else(|| panic!("no summary: {context}"));
    s.assert_complete(100, &context);

    let metrics = server.metrics();
    let relayed = common::sample(
        &metrics,
        "ferroturn_relayed_packets_total{direction=\"to_peer\",transport=\"dtls\"}",
    )
    .unwrap_or_else(|| panic!("no DTLS relayed packets in /metrics:\n{metrics}"));
    assert!(relayed >= 100, "{relayed} packets relayed over DTLS");
    let log = server.log();
    assert!(
        log.contains("/dtls user=alice"),
        "sessions name dtls:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn binding_over_dtls_and_bad_cookie_makes_no_session() {
    let server = DtlsServer::start(vec![]);
    let mut c = Client::new(server.dtls);
    c.handshake();
    let tid = transaction_id();
    let answer = c.request(&binding_request(&tid));
    let mapped = parse_binding_success(&answer, &tid).expect("a Binding success");
    assert_eq!(mapped, c.sock.local_addr().unwrap());

    // The client loses its session and starts again from the same port:
    // a new handshake replaces the old session (RFC 6347 §4.2.8).
    let mut again = Client::on(c.sock.try_clone().unwrap());
    again.handshake();
    let tid = transaction_id();
    let answer = again.request(&binding_request(&tid));
    assert_eq!(parse_binding_success(&answer, &tid), Some(mapped));

    // A ClientHello with a cookie the server did not make: answered with a
    // HelloVerifyRequest (a new cookie), never a ServerHello.
    let s = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let hello = raw_client_hello(&[0x5a; 32]);
    s.send_to(&hello, server.dtls).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).expect("an answer");
    assert!(is_hello_verify(&buf[..n]), "{:?}", &buf[..n]);
    assert!(n <= hello.len(), "the answer is no larger than the hello");
    // The cookie it gave is not one that holds from another port.
    let cookie = buf[28..n].to_vec();
    let other = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    other
        .send_to(&raw_client_hello(&cookie), server.dtls)
        .unwrap();
    let (n, _) = other.recv_from(&mut buf).expect("an answer");
    assert!(is_hello_verify(&buf[..n]), "a stolen cookie made a session");
    // Not a ClientHello at all: no answer.
    s.send_to(
        &[23, 254, 253, 0, 1, 0, 0, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4],
        server.dtls,
    )
    .unwrap();
    assert!(s.recv_from(&mut buf).is_err(), "garbage was answered");
}

#[test]
fn client_hello_flood_from_thousands_of_ports_costs_no_memory() {
    const SOURCES: usize = 2_000;
    const FLOOD: usize = 20_000;
    raise_fd_limit(SOURCES as u64 + 256);
    let server = DtlsServer::start(vec![]);
    let pid = server.child.id();
    let sources: Vec<UdpSocket> = (0..SOURCES)
        .map(|_| {
            let s = UdpSocket::bind((LOCALHOST, 0)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let hello = raw_client_hello(&[]);
    let bad = raw_client_hello(&[7; 32]);
    // Warm up, then the baseline.
    for s in sources.iter().take(500) {
        s.send_to(&hello, server.dtls).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kb(pid);

    let start = Instant::now();
    let mut sent = 0;
    let mut answers = 0;
    let mut buf = [0u8; 2048];
    'flood: for round in 0.. {
        for s in &sources {
            let d = if sent % 2 == 0 { &hello } else { &bad };
            let _ = s.send_to(d, server.dtls);
            sent += 1;
            if sent == FLOOD {
                break 'flood;
            }
        }
        for s in &sources {
            while let Ok(n) = s.recv(&mut buf) {
                assert!(is_hello_verify(&buf[..n]), "only HelloVerifyRequests");
                answers += 1;
            }
        }
        if round % 2 == 1 {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "flood took too long"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    for s in &sources {
        while let Ok(n) = s.recv(&mut buf) {
            assert!(is_hello_verify(&buf[..n]), "only HelloVerifyRequests");
            answers += 1;
        }
    }
    let after = rss_kb(pid);
    println!(
        "DTLS flood: {sent} ClientHellos from {SOURCES} ports in {:?}; {answers} HelloVerifyRequests; RSS {before} kB -> {after} kB",
        start.elapsed()
    );
    assert!(
        answers <= sent + 500,
        "at most one answer per ClientHello: {answers} for {sent}"
    );
    assert!(
        after <= before + 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    // The listener still serves a real client.
    let mut c = Client::new(server.dtls);
    c.handshake();
}

#[test]
fn a_lost_server_flight_is_sent_again() {
    let server = DtlsServer::start(vec![]);
    let mut c = Client::new(server.dtls);
    let first = second_hello_answer(&mut c, Duration::from_secs(3));
    assert!(first.is_some_and(|d| is_server_hello(&d)), "no ServerHello");
    // The flight is lost on its way: the client never sees it, and does
    // not retransmit (nothing drives its timer). The server resends it
    // when its own timer (1 s, then doubling) runs out.
    c.tls.get_mut().inbound.clear();
    let again = c.pump(Duration::from_secs(4));
    assert!(
        again.first().is_some_and(|d| is_server_hello(d)),
        "the ServerHello flight was not sent again"
    );
    c.handshake();
    let tid = transaction_id();
    let answer = c.request(&binding_request(&tid));
    assert!(parse_binding_success(&answer, &tid).is_some());
}

#[test]
fn per_ip_limit_and_stalled_handshake_timeout() {
    let server = DtlsServer::start(vec![
        ("connections_per_ip", "2".into()),
        ("tls_handshakes_per_ip", "1".into()),
    ]);
    // A handshake that stops after the server's first flight.
    let mut stalled = Client::new(server.dtls);
    let first = second_hello_answer(&mut stalled, Duration::from_secs(3));
    assert!(first.is_some_and(|d| is_server_hello(&d)), "no ServerHello");
    let stalled_at = Instant::now();
    // A second handshake from the same IP is over the limit: no answer.
    let mut second = Client::new(server.dtls);
    assert_eq!(
        second_hello_answer(&mut second, Duration::from_secs(1)),
        None,
        "a second handshake from one IP while the first runs"
    );
    // After the 10 s handshake deadline the stalled session is gone and a
    // new handshake from the IP goes through.
    let wait = Duration::from_secs(11).saturating_sub(stalled_at.elapsed());
    std::thread::sleep(wait);
    let mut third = Client::new(server.dtls);
    third.handshake();
    // Established sessions count against connections_per_ip (2).
    let mut fourth = Client::new(server.dtls);
    fourth.handshake();
    let mut fifth = Client::new(server.dtls);
    assert_eq!(
        second_hello_answer(&mut fifth, Duration::from_secs(1)),
        None,
        "a third session from one IP"
    );
    assert!(server.log().contains("DTLS session timed out"));
}

#[test]
fn reload_gives_new_sessions_the_new_certificate() {
    let server = DtlsServer::start(vec![]);
    let mut before = Client::new(server.dtls);
    before.handshake();
    let old = before.peer_certificate();
    // A new certificate in the same files, and SIGHUP.
    let (cert, key) = make_cert(server.dir.path(), "dtls");
    let new = openssl::x509::X509::from_pem(&std::fs::read(&cert).unwrap())
        .unwrap()
        .to_der()
        .unwrap();
    assert!(key.exists());
    assert_ne!(old, new);
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("DTLS certificate reloaded") {
        assert!(Instant::now() < deadline, "no reload in the log");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut after = Client::new(server.dtls);
    after.handshake();
    let got = after.peer_certificate();
    assert_eq!(got, new, "a new session gets the reloaded certificate");
    // The session made before keeps working.
    let tid = transaction_id();
    let answer = before.request(&binding_request(&tid));
    assert!(parse_binding_success(&answer, &tid).is_some());
}

#[test]
fn a_bad_certificate_stops_startup_with_file_key_and_reason() {
    let dir = TempDir::new("dtls-bad-cert");
    let (_, key) = make_cert(dir.path(), "good");
    let cert = dir.path().join("not-a-cert.pem");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let cfg = ServerConfig {
        transports: vec!["udp".into()],
        ..ServerConfig::default()
    };
    let mut toml = cfg.to_toml(free_port(), relay_block());
    toml.push_str(&format!(
        "\n[[listen]]\naddress = \"127.0.0.1:{}\"\ntransports = [\"dtls\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        free_udp_port(),
        cert.display(),
        key.display()
    ));
    let config = dir.path().join("ferroturn.toml");
    std::fs::write(&config, toml).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    cmd.arg("--config").arg(&config);
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    assert!(!out.timed_out, "ferroturn kept running:\n{}", out.output);
    assert_ne!(out.code, Some(0), "{}", out.output);
    let want = format!(
        "{}: listen[1].cert: {}: not a usable PEM certificate chain",
        config.display(),
        cert.display()
    );
    assert!(
        out.output.contains(&want),
        "no {want:?} in:\n{}",
        out.output
    );
}
