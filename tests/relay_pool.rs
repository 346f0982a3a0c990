//! One relay port pool for every transport: with `relay.ports` of 24 ports
//! and 2 workers (two UDP shards and two stream workers), clients over TLS
//! hold an allocation on every one of the 24 ports, and so do clients over
//! UDP; one more Allocate then gets 508 over either transport. Ports that
//! TLS clients give back (by closing their connections) serve UDP clients.
//!
//! A real `ferroturn` child on 127.0.0.1 with a `["udp", "tls"]` listener;
//! the TLS clients are rustls over blocking sockets; the certificate is
//! made by the `openssl` CLI. Every read has a time-out and every loop a
//! bound.

mod common;
mod raw;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{LOCALHOST, PASSWORD, REALM, ServerConfig, TempDir, USER};
use ferroturn::proto::stun::{self as wire, Message, Request};
use raw::RawClient;
use stun::attributes::*;
use stun::message::*;

/// The relay range: a few dozen ports.
const PORTS: u16 = 24;
/// Any single network step of a client.
const STEP: Duration = Duration::from_secs(10);

/// A server with `workers = 2`, a `["udp", "tls"]` listener and a relay
/// range of [`PORTS`] ports; a user may hold every one of them.
struct PoolServer {
    child: std::process::Child,
    addr: SocketAddr,
    ports: (u16, u16),
    tls: Arc<rustls::ClientConfig>,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl PoolServer {
    fn start() -> PoolServer {
        let dir = TempDir::new("relay-pool");
        let (cert, key) = common::make_cert(dir.path(), "pool");
        let block = common::relay_block();
        let ports = (block.0, block.0 + PORTS - 1);
        let config = ServerConfig {
            workers: Some(2),
            transports: vec!["udp".into(), "tls".into()],
            limits: vec![
                ("allocations_per_user", "1000".into()),
                ("unauthenticated_rate", "0".into()),
            ],
            log_level: "info".into(),
            ..ServerConfig::default()
        };
        let mut last = String::new();
        for attempt in 0..3 {
            let port = common::free_port();
            let path = dir.path().join(format!("ferroturn-{attempt}.toml"));
            let log = dir.path().join(format!("ferroturn-{attempt}.log"));
            fs::write(&path, with_cert(config.to_toml(port, ports), &cert, &key)).unwrap();
            let addr = SocketAddr::from((LOCALHOST, port));
            match common::spawn_ferroturn(&path, &log, addr, || true) {
                Ok(child) => {
                    return PoolServer {
                        child,
                        addr,
                        ports,
                        tls: common::client_config(&[&cert]),
                        log,
                        _dir: dir,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("ferroturn did not start:\n{last}");
    }

    fn range(&self) -> HashSet<u16> {
        (self.ports.0..=self.ports.1).collect()
    }

    fn udp_client(&self) -> RawClient {
        RawClient::udp(self.addr, REALM, USER, PASSWORD)
    }

    fn tls_client(&self) -> TlsClient {
        TlsClient::connect(self.addr, self.tls.clone())
    }
}

impl Drop for PoolServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- ferroturn log ----\n{log}---- end of log ----");
        }
    }
}

/// The test config with the certificate on the `["udp", "tls"]` listener.
fn with_cert(toml: String, cert: &Path, key: &Path) -> String {
    let line = "transports = [\"udp\", \"tls\"]\n";
    assert!(toml.contains(line), "unexpected test config:\n{toml}");
    toml.replacen(
        line,
        &format!(
            "{line}cert = {:?}\nkey = {:?}\n",
            cert.display(),
            key.display()
        ),
        1,
    )
}

/// A TURN client over one TLS connection (one 5-tuple, so one allocation).
struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    nonce: String,
}

impl TlsClient {
    fn connect(server: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsClient {
        let tcp = TcpStream::connect_timeout(&server, STEP).expect("TCP connect");
        tcp.set_read_timeout(Some(STEP)).unwrap();
        tcp.set_write_timeout(Some(STEP)).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        TlsClient {
            tls: rustls::StreamOwned::new(conn, tcp),
            nonce: String::new(),
        }
    }

    /// Send one request and read one STUN message back.
    fn request(&mut self, pkt: &[u8]) -> Message {
        self.tls.write_all(pkt).expect("write over TLS");
        self.tls.flush().unwrap();
        let mut msg = vec![0u8; 20];
        self.tls
            .read_exact(&mut msg)
            .expect("a STUN header over TLS");
        let len = u16::from_be_bytes([msg[2], msg[3]]) as usize;
        msg.resize(20 + len, 0);
        self.tls.read_exact(&mut msg[20..]).expect("a STUN body");
        wire::decode(&msg).expect("a STUN answer")
    }

    /// A signed Allocate (learning the nonce first): the answer.
    fn allocate(&mut self) -> Message {
        if self.nonce.is_empty() {
            let r = self.request(&Request::new(METHOD_ALLOCATE).transport(17).bytes());
            assert_eq!(wire::error_code(&r), Some(401));
            self.nonce = wire::text(&r, ATTR_NONCE).expect("NONCE in 401");
        }
        let req = Request::new(METHOD_ALLOCATE).transport(17);
        self.request(&req.sign(USER, REALM, PASSWORD, &self.nonce))
    }
}

fn udp_allocate(c: &mut RawClient) -> Message {
    c.signed(Request::new(METHOD_ALLOCATE).transport(17))
}

/// The relayed port of a successful Allocate answer.
fn relay_port(r: &Message) -> u16 {
    assert_eq!(wire::error_code(r), None, "Allocate failed");
    let relayed = wire::xor_address(r, ATTR_XOR_RELAYED_ADDRESS).expect("a relayed address");
    assert_eq!(relayed.ip(), LOCALHOST);
    relayed.port()
}

#[test]
fn tls_clients_hold_every_port_of_the_range_then_udp_clients_do() {
    let s = PoolServer::start();
    let mut tls: Vec<TlsClient> = Vec::new();
    let mut got = HashSet::new();
    for _ in 0..PORTS {
        let mut c = s.tls_client();
        assert!(got.insert(relay_port(&c.allocate())), "a port given twice");
        tls.push(c);
    }
    assert_eq!(got, s.range(), "TLS clients hold the whole range");
    // Full: one more Allocate gets 508 over TLS and over UDP.
    let r = s.tls_client().allocate();
    assert_eq!(wire::error_code(&r), Some(508));
    let r = udp_allocate(&mut s.udp_client());
    assert_eq!(wire::error_code(&r), Some(508));

    // The TLS clients go; their ports come back, for UDP clients.
    drop(tls);
    let deadline = Instant::now() + STEP;
    let mut udp = Vec::new();
    let mut got = HashSet::new();
    while got.len() < PORTS as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {PORTS} ports came back",
            got.len()
        );
        let mut c = s.udp_client();
        let r = udp_allocate(&mut c);
        match wire::error_code(&r) {
            // A closed connection's allocation may not be gone yet.
            Some(508) => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                assert!(got.insert(relay_port(&r)), "a port given twice");
                udp.push(c);
            }
        }
    }
    assert_eq!(got, s.range(), "UDP clients hold the whole range");
    let r = s.tls_client().allocate();
    assert_eq!(wire::error_code(&r), Some(508));
}

#[test]
fn udp_clients_hold_every_port_of_the_range() {
    let s = PoolServer::start();
    let mut udp = Vec::new();
    let mut got = HashSet::new();
    for _ in 0..PORTS {
        let mut c = s.udp_client();
        assert!(
            got.insert(relay_port(&udp_allocate(&mut c))),
            "a port given twice"
        );
        udp.push(c);
    }
    assert_eq!(got, s.range());
    let r = udp_allocate(&mut s.udp_client());
    assert_eq!(wire::error_code(&r), Some(508));
    let r = s.tls_client().allocate();
    assert_eq!(wire::error_code(&r), Some(508));
}
