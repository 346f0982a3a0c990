//! TLS (`turns:`) listeners: coturn's uclient relays over TLS, TLS 1.2 is
//! the minimum, a rustls client gets a Binding answer, and SIGHUP swaps
//! the certificate without dropping an allocation. ALPN (RFC 7443):
//! `stun.turn` is negotiated, no ALPN is served, `h2` alone is refused.
//! While draining, a TLS client is redirected to `server.alternate_tls`
//! with ALTERNATE-DOMAIN, a UDP client to `server.alternate`.
//!
//! Certificates are made by the `openssl` CLI in a temp dir; every
//! connection goes to 127.0.0.1 and every wait is bounded.

mod common;
mod raw;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::coturn::{CoturnPeer, parse_summary};
use common::{
    KillOnDrop, LOCALHOST, PASSWORD, STARTUP_TIMEOUT, ServerConfig, TempDir, USER, client_config,
    make_cert, run_with_timeout,
};
use ferroturn::proto::stun::{self as wire, Message, Request};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use stun::attributes::{ATTR_ALTERNATE_DOMAIN, ATTR_ALTERNATE_SERVER, ATTR_NONCE};
use stun::message::METHOD_ALLOCATE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A uclient run must finish within this.
const UCLIENT_LIMIT: Duration = Duration::from_secs(90);
/// Any single network step of a test client.
const STEP: Duration = Duration::from_secs(10);

/// uclient sessions run one at a time (loss is counted after a fixed wait,
/// and this machine may have few cores).
static UCLIENT_SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn der_of(cert: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(cert).expect("read the test certificate")
}

/// A `ferroturn` child with `transports = ["udp", "tls"]` on one port of
/// 127.0.0.1 (UDP answers the readiness probe), its certificate files in
/// its own directory. Killed on drop; its log is printed if the test fails.
struct TlsServer {
    child: KillOnDrop,
    port: u16,
    cert: PathBuf,
    key: PathBuf,
    log_path: PathBuf,
    dir: TempDir,
}

impl TlsServer {
    fn start(config: ServerConfig) -> TlsServer {
        TlsServer::start_with(config, "")
    }

    /// As [`TlsServer::start`], with `tail` (TOML tables) appended.
    fn start_with(config: ServerConfig, tail: &str) -> TlsServer {
        let dir = TempDir::new("tls");
        let (cert, key) = make_cert(dir.path(), "first");
        let relay = common::relay_block();
        let mut last = String::new();
        for attempt in 0..3 {
            let port = common::free_port();
            let config_path = dir.path().join(format!("ferroturn-{attempt}.toml"));
            let log_path = dir.path().join(format!("ferroturn-{attempt}.log"));
            let text = tls_toml(&config, port, relay, &cert, &key) + tail;
            fs::write(&config_path, text).unwrap();
            let log = fs::File::create(&log_path).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
                .arg("--config")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn ferroturn");
            let mut child = KillOnDrop(child);
            match wait_ready(&mut child.0, port, &log_path) {
                Ok(()) => {
                    return TlsServer {
                        child,
                        port,
                        cert,
                        key,
                        log_path,
                        dir,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("ferroturn did not start:\n{last}");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.port))
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Send SIGHUP and wait (bounded) until the log has one more line
    /// containing `marker` than before.
    fn reload(&self, marker: &str) {
        let before = self.log().matches(marker).count();
        // SAFETY: plain kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.0.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(r, 0, "kill -HUP");
        let deadline = Instant::now() + STEP;
        while self.log().matches(marker).count() <= before {
            assert!(
                Instant::now() < deadline,
                "no {marker:?} in the log after SIGHUP"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Wait until the server on `port` answers a Binding over UDP.
fn wait_ready(child: &mut Child, port: u16, log: &Path) -> Result<(), String> {
    let log = || fs::read_to_string(log).unwrap_or_default();
    let probe = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited early with {status}:\n{}", log()));
        }
        if common::binding_udp(&probe, SocketAddr::from((LOCALHOST, port))).is_some() {
            return Ok(());
        }
    }
    Err(format!(
        "no Binding answer within {STARTUP_TIMEOUT:?}:\n{}",
        log()
    ))
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- ferroturn log (port {}) ----\n{}",
                self.port,
                self.log()
            );
        }
    }
}

/// The standard test config with one `["udp", "tls"]` listener.
fn tls_toml(c: &ServerConfig, port: u16, relay: (u16, u16), cert: &Path, key: &Path) -> String {
    let c = ServerConfig {
        transports: vec!["udp".into(), "tls".into()],
        ..c.clone()
    };
    let text = c.to_toml(port, relay);
    let line = "transports = [\"udp\", \"tls\"]\n";
    assert!(text.contains(line), "unexpected test config:\n{text}");
    text.replacen(
        line,
        &format!(
            "{line}cert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        1,
    )
}

// ---- A rustls client ---------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

type ClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(server: SocketAddr, roots: &[&Path]) -> std::io::Result<ClientStream> {
    tls_connect_alpn(server, roots, &[]).await
}

/// [`tls_connect`] offering the ALPN protocols `alpn` (none when empty).
async fn tls_connect_alpn(
    server: SocketAddr,
    roots: &[&Path],
    alpn: &[&[u8]],
) -> std::io::Result<ClientStream> {
    let mut config = (*client_config(roots)).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(server))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// One Binding transaction on `s`: the XOR-MAPPED-ADDRESS.
async fn binding(s: &mut ClientStream) -> SocketAddr {
    let tid = common::transaction_id();
    let msg = exchange(s, &common::binding_request(&tid)).await;
    common::parse_binding_success(&msg, &tid)
        .unwrap_or_else(|| panic!("not a Binding success for our request: {msg:02x?}"))
}

/// Send `request` on `s` and read one STUN message back.
async fn exchange(s: &mut ClientStream, request: &[u8]) -> Vec<u8> {
    tokio::time::timeout(STEP, async {
        s.write_all(request).await.unwrap();
        s.flush().await.unwrap();
        let mut msg = vec![0u8; 20];
        s.read_exact(&mut msg).await.unwrap();
        let len = u16::from_be_bytes([msg[2], msg[3]]) as usize;
        msg.resize(20 + len, 0);
        s.read_exact(&mut msg[20..]).await.unwrap();
        msg
    })
    .await
    .expect("answer over TLS timed out")
}

/// One request on `s`: the decoded answer.
async fn tls_request(s: &mut ClientStream, request: &[u8]) -> Message {
    let msg = exchange(s, request).await;
    wire::decode(&msg).unwrap_or_else(|| panic!("not a STUN answer: {msg:02x?}"))
}

/// The end-entity certificate the server presents to a new connection,
/// verified against `roots`.
fn presented_cert(server: SocketAddr, roots: &[&Path]) -> CertificateDer<'static> {
    runtime().block_on(async {
        let mut s = tls_connect(server, roots).await.expect("TLS connect");
        // A Binding proves the connection is served, not just accepted.
        binding(&mut s).await;
        let (_, conn) = s.get_ref();
        conn.peer_certificates().expect("a server certificate")[0].clone()
    })
}

// ---- coturn's uclient ------------------------------------------------------

/// `turnutils_uclient -t -S` (TCP with TLS) with `extra` flags, against
/// `server` and `peer`, writing its output to `out`.
fn uclient(server: &TlsServer, peer: &CoturnPeer, extra: &[&str], messages: u64) -> Command {
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-t", "-S", "-u", USER, "-w", PASSWORD]);
    cmd.args(extra);
    cmd.args(["-n", &messages.to_string(), "-m", "2", "-l", "170"]);
    cmd.args(["-e", "127.0.0.1", "-r", &peer.port.to_string()]);
    cmd.args(["-p", &server.port.to_string(), "127.0.0.1"]);
    cmd
}

/// Check a finished uclient run: everything sent came back.
fn assert_no_loss(code: Option<i32>, output: &str, messages: u64) {
    assert_eq!(code, Some(0), "uclient failed:\n{output}");
    let s = parse_summary(output).unwrap_or_else(|| panic!("no final summary:\n{output}"));
    s.assert_complete(messages * 2, output);
}

fn no_panic(server: &TlsServer) {
    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

// ---- Tests -----------------------------------------------------------------

#[test]
fn uclient_relays_over_tls_with_send_indications() {
    let server = TlsServer::start(ServerConfig::default());
    let peer = CoturnPeer::start();
    let _serial = UCLIENT_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_with_timeout(uclient(&server, &peer, &["-s"], 50), UCLIENT_LIMIT);
    assert!(!out.timed_out, "uclient hung:\n{}", out.output);
    assert_no_loss(out.code, &out.output, 50);
    assert!(
        server.log().contains("tls connection"),
        "the clients did not come in over TLS:\n{}",
        server.log()
    );
    no_panic(&server);
}

#[test]
fn uclient_relays_over_tls_with_channels() {
    let server = TlsServer::start(ServerConfig {
        legacy_channel_numbers: Some(true),
        ..Default::default()
    });
    let peer = CoturnPeer::start();
    let _serial = UCLIENT_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_with_timeout(uclient(&server, &peer, &[], 50), UCLIENT_LIMIT);
    assert!(!out.timed_out, "uclient hung:\n{}", out.output);
    assert_no_loss(out.code, &out.output, 50);
    no_panic(&server);
}

#[test]
fn tls_1_2_is_the_minimum() {
    let server = TlsServer::start(ServerConfig::default());
    let s_client = |version: &str| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &server.addr().to_string(), version]);
        // Let the client offer TLS 1.0/1.1 at all (OpenSSL 3 refuses them
        // at its default security level), so that the server is what says no.
        cmd.args(["-cipher", "DEFAULT:@SECLEVEL=0"]);
        run_with_timeout(cmd, Duration::from_secs(20))
    };
    let old = s_client("-tls1_1");
    assert!(!old.timed_out, "{}", old.output);
    assert_ne!(old.code, Some(0), "TLS 1.1 was accepted:\n{}", old.output);
    // The server answers the TLS 1.1 ClientHello with an alert.
    assert!(
        old.output.contains("alert") && old.output.contains("Cipher is (NONE)"),
        "{}",
        old.output
    );
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s_client(flag);
        assert!(!out.timed_out, "{}", out.output);
        assert_eq!(out.code, Some(0), "{flag} failed:\n{}", out.output);
        assert!(
            out.output.contains(&format!("New, {name}, Cipher is")),
            "{flag} did not negotiate {name}:\n{}",
            out.output
        );
    }
    no_panic(&server);
}

#[test]
fn binding_over_rustls_reports_the_source_address() {
    let server = TlsServer::start(ServerConfig::default());
    runtime().block_on(async {
        let mut s = tls_connect(server.addr(), &[&server.cert])
            .await
            .expect("TLS connect with the test certificate as root");
        let local = s.get_ref().0.local_addr().unwrap();
        assert_eq!(binding(&mut s).await, local);
        // Several requests in one write are framed apart.
        let (t1, t2) = (common::transaction_id(), common::transaction_id());
        let mut two = common::binding_request(&t1);
        two.extend(common::binding_request(&t2));
        s.write_all(&two).await.unwrap();
        for tid in [t1, t2] {
            let mut msg = vec![0u8; 20];
            tokio::time::timeout(STEP, s.read_exact(&mut msg))
                .await
                .expect("answer timed out")
                .unwrap();
            let len = u16::from_be_bytes([msg[2], msg[3]]) as usize;
            msg.resize(20 + len, 0);
            s.read_exact(&mut msg[20..]).await.unwrap();
            assert_eq!(common::parse_binding_success(&msg, &tid), Some(local));
        }
    });
    no_panic(&server);
}

#[test]
fn a_stalled_handshake_holds_nothing_up_and_times_out() {
    use std::io::Read;
    let server = TlsServer::start(ServerConfig::default());
    // Clients that never start their handshake, on every worker (the
    // kernel spreads connections over the workers' sockets), from an
    // address of their own: 8 is the cap on handshakes per address.
    let idle: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
                .unwrap();
            s.connect(&server.addr().into()).unwrap();
            s.into()
        })
        .collect();
    let started = Instant::now();
    // Others are served meanwhile.
    for _ in 0..4 {
        runtime().block_on(async {
            let mut s = tls_connect(server.addr(), &[&server.cert]).await.unwrap();
            binding(&mut s).await;
        });
    }
    // The server gives up on the idle ones after its handshake timeout
    // (10 s): they read end-of-stream (or a reset), not a timeout.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("the server sent {n} bytes to a silent client"),
            Err(e) => assert!(
                e.kind() == std::io::ErrorKind::ConnectionReset,
                "not closed by the server: {e}"
            ),
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "closed after {waited:?}"
    );
    no_panic(&server);
}

#[test]
fn sighup_swaps_the_certificate_and_keeps_allocations() {
    let server = TlsServer::start(ServerConfig::default());
    let old_copy = server.dir.path().join("old-cert.pem");
    fs::copy(&server.cert, &old_copy).unwrap();
    let (new_cert, new_key) = make_cert(server.dir.path(), "second");
    let both: [&Path; 2] = [&old_copy, &new_cert];
    assert_eq!(presented_cert(server.addr(), &both), der_of(&old_copy));

    // A relay session that spans the reload: uclient sends for a while.
    let peer = CoturnPeer::start();
    let _serial = UCLIENT_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let messages = 150;
    let out_path = server.dir.path().join("uclient.txt");
    let out = fs::File::create(&out_path).unwrap();
    let mut cmd = uclient(&server, &peer, &["-s"], messages);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn turnutils_uclient");
    let mut child = KillOnDrop(child);
    // Wait until its allocations are made (it says so before sending).
    let deadline = Instant::now() + STEP;
    while !fs::read_to_string(&out_path)
        .unwrap_or_default()
        .contains("Total connect time")
    {
        assert!(
            Instant::now() < deadline,
            "uclient did not connect:\n{}",
            fs::read_to_string(&out_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let allocations = server.log().matches("allocation created").count();
    assert!(allocations >= 2, "{}", server.log());

    // A new certificate and key in place of the old ones, then SIGHUP.
    fs::copy(&new_cert, &server.cert).unwrap();
    fs::copy(&new_key, &server.key).unwrap();
    server.reload("TLS certificate reloaded");
    assert_eq!(presented_cert(server.addr(), &both), der_of(&new_cert));
    assert_eq!(
        child.0.try_wait().unwrap(),
        None,
        "uclient ended before the reload was checked: make it send longer:\n{}",
        fs::read_to_string(&out_path).unwrap_or_default()
    );

    // An unreadable certificate is refused and the current one stays.
    fs::write(&server.cert, "not a certificate\n").unwrap();
    server.reload("the previous certificate stays in use");
    let log = server.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("the previous certificate stays in use"))
        .unwrap();
    assert!(line.contains("listen[0].cert"), "{line}");
    assert!(line.contains(&server.cert.display().to_string()), "{line}");
    assert!(line.contains("no PEM CERTIFICATE"), "{line}");
    assert_eq!(presented_cert(server.addr(), &both), der_of(&new_cert));

    // The session made before the reloads relayed everything.
    let deadline = Instant::now() + UCLIENT_LIMIT;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "uclient hung");
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    assert_no_loss(status.code(), &output, messages);
    assert_eq!(
        server.log().matches("allocation created").count(),
        allocations,
        "uclient had to allocate again:\n{}",
        server.log()
    );
    no_panic(&server);
}

#[test]
fn a_bad_certificate_stops_startup_with_file_key_and_reason() {
    let dir = TempDir::new("tls-bad");
    let (cert, key) = make_cert(dir.path(), "good");
    let (_, other_key) = make_cert(dir.path(), "other");
    let missing = dir.path().join("missing.pem");
    for (cert, key, what, reason) in [
        (&missing, &key, "listen[0].cert", "missing.pem"),
        (&cert, &missing, "listen[0].key", "missing.pem"),
        (&cert, &other_key, "listen[0].key", "does not match"),
    ] {
        let config_path = dir.path().join("bad.toml");
        let port = common::free_port();
        fs::write(
            &config_path,
            tls_toml(&ServerConfig::default(), port, (40000, 40099), cert, key),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
        cmd.arg("--config").arg(&config_path);
        let out = run_with_timeout(cmd, STARTUP_TIMEOUT);
        assert!(!out.timed_out, "the server started:\n{}", out.output);
        assert_ne!(out.code, Some(0), "{}", out.output);
        let expected = format!("{}: {what}: ", config_path.display());
        assert!(
            out.output.contains(&expected),
            "no {expected:?} in:\n{}",
            out.output
        );
        assert!(
            out.output.contains(reason),
            "no {reason:?} in:\n{}",
            out.output
        );
    }
}

#[test]
fn config_checks_tls_entries() {
    let base = "realm = \"t\"\n[[listen]]\naddress = \"127.0.0.1:5349\"\n";
    let tail = "[relay]\naddress = \"127.0.0.1\"\n[auth]\nusers = { a = \"b\" }\n";
    let parse = |listen: &str| {
        ferroturn::config::parse(Path::new("t.toml"), &format!("{base}{listen}{tail}"))
    };
    let c = parse("transports = [\"udp\", \"tls\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
    let l = &c.restart.listen[0];
    assert!(l.tls && l.udp && !l.tcp);
    let files = c.live.tls_files(0, l.address).unwrap();
    assert_eq!(files.cert, Path::new("c.pem"));
    assert_eq!(files.key, Path::new("k.pem"));
    for (listen, key) in [
        (
            "transports = [\"tls\"]\nkey = \"k.pem\"\n",
            "listen[0].cert",
        ),
        (
            "transports = [\"tls\"]\ncert = \"c.pem\"\n",
            "listen[0].key",
        ),
        (
            "transports = [\"tcp\", \"tls\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
            "listen[0].transports",
        ),
        (
            "transports = [\"tcp\"]\ncert = \"c.pem\"\n",
            "listen[0].cert",
        ),
    ] {
        let e = parse(listen).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
}

#[test]
fn alpn_negotiates_stun_turn_serves_none_and_refuses_others() {
    let server = TlsServer::start(ServerConfig::default());
    runtime().block_on(async {
        let roots: [&Path; 1] = [&server.cert];
        // RFC 7443: "stun.turn", also when offered among others.
        for offer in [&[&b"stun.turn"[..]][..], &[b"h2", b"stun.turn"]] {
            let mut s = tls_connect_alpn(server.addr(), &roots, offer)
                .await
                .unwrap_or_else(|e| panic!("offering {offer:?}: {e}"));
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"stun.turn"[..]));
            let local = s.get_ref().0.local_addr().unwrap();
            assert_eq!(binding(&mut s).await, local);
        }
        // No ALPN at all: served, with none negotiated.
        let mut s = tls_connect_alpn(server.addr(), &roots, &[]).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), None);
        let local = s.get_ref().0.local_addr().unwrap();
        assert_eq!(binding(&mut s).await, local);
        // Only other protocols: the handshake fails with rustls's alert.
        let e = tls_connect_alpn(server.addr(), &roots, &[b"h2"])
            .await
            .map(|_| ())
            .expect_err("a client offering only h2 was accepted");
        assert!(
            e.to_string().contains("NoApplicationProtocol"),
            "not refused for its ALPN: {e}"
        );
    });
    let deadline = Instant::now() + STEP;
    let line = "the client offers ALPN protocols but not \"stun.turn\"";
    while !server.log().contains(line) {
        assert!(
            Instant::now() < deadline,
            "no refusal line in the log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    no_panic(&server);
}

/// ALTERNATE-SERVER of a 300, as an address.
fn alternate_server(r: &Message) -> SocketAddr {
    let v = wire::attr(r, ATTR_ALTERNATE_SERVER).expect("ALTERNATE-SERVER in the 300");
    assert_eq!((v.len(), v[1]), (8, 0x01), "ALTERNATE-SERVER {v:02x?}");
    let ip = std::net::Ipv4Addr::new(v[4], v[5], v[6], v[7]);
    SocketAddr::from((ip, u16::from_be_bytes([v[2], v[3]])))
}

#[test]
fn draining_redirects_tls_clients_with_alternate_domain() {
    let alternate: SocketAddr = "127.0.0.1:3479".parse().unwrap();
    let alternate_tls: SocketAddr = "127.0.0.1:5349".parse().unwrap();
    let domain = "turn2.example.org";
    let tail = format!(
        "\n[server]\nalternate = \"{alternate}\"\nalternate_tls = \"{alternate_tls}\"\n\
         alternate_domain = \"{domain}\"\ndrain_timeout = 30\n"
    );
    let server = TlsServer::start_with(ServerConfig::default(), &tail);
    let (realm, user, pass) = (common::REALM, USER, PASSWORD);
    // An allocation keeps the server draining rather than exiting.
    let mut old = raw::RawClient::udp(server.addr(), realm, user, pass);
    old.allocate();
    let mut udp = raw::RawClient::udp(server.addr(), realm, user, pass);
    // SAFETY: plain kill(2) on our own child's pid.
    let r = unsafe { libc::kill(server.child.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0, "kill -TERM");
    let deadline = Instant::now() + STEP;
    while !server.log().contains("draining") {
        assert!(Instant::now() < deadline, "not draining:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    runtime().block_on(async {
        let mut s = tls_connect_alpn(server.addr(), &[&server.cert], &[b"stun.turn"])
            .await
            .expect("TLS connect");
        let allocate = || Request::new(METHOD_ALLOCATE).transport(17);
        let r = tls_request(&mut s, &allocate().bytes()).await;
        assert_eq!(wire::error_code(&r), Some(401));
        let nonce = wire::text(&r, ATTR_NONCE).expect("NONCE in the 401");
        let r = tls_request(&mut s, &allocate().sign(user, realm, pass, &nonce)).await;
        assert_eq!(
            wire::error_code(&r),
            Some(300),
            "Allocate over TLS while draining"
        );
        assert_eq!(alternate_server(&r), alternate_tls);
        let d = wire::attr(&r, ATTR_ALTERNATE_DOMAIN).expect("ALTERNATE-DOMAIN in the 300");
        assert_eq!(d, domain.as_bytes());
    });
    let r = udp.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(
        wire::error_code(&r),
        Some(300),
        "Allocate over UDP while draining"
    );
    assert_eq!(alternate_server(&r), alternate);
    assert!(
        wire::attr(&r, ATTR_ALTERNATE_DOMAIN).is_none(),
        "ALTERNATE-DOMAIN to a UDP client"
    );
    no_panic(&server);
}
