//! Integration tests against a `ferroturn` child process: STUN Binding over
//! UDP and TCP, TURN with the `turn` crate's client (static and REST
//! credentials, data both ways through the relay, close), and raw
//! Allocate/Refresh transactions built with the `stun` crate.

mod common;

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{EchoPeer, LOCALHOST, PASSWORD, REALM, SECRET, Server, USER};
use stun::agent::TransactionId;
use stun::attributes::ATTR_NONCE;
use stun::attributes::ATTR_REALM;
use stun::attributes::ATTR_USERNAME;
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    BINDING_REQUEST, BINDING_SUCCESS, CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
    Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_REFRESH, Message, MessageType, Method,
    Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::Client;
use turn::proto::PROTO_UDP;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use webrtc_util::Conn;

/// Bound on any single step (allocation, one echo round trip, ...).
const STEP: Duration = Duration::from_secs(10);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A payload whose bytes depend on `seed` and position, so that truncation,
/// reordering or mixing up packets shows as a mismatch.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8)
        .collect()
}

// ---- STUN Binding --------------------------------------------------------------

#[test]
fn binding_over_udp_reports_the_source_address() {
    let server = Server::start();
    let sock = StdUdpSocket::bind((LOCALHOST, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let local = sock.local_addr().unwrap();

    // Built and parsed with the `stun` crate this time.
    let mut req = Message::new();
    req.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
        .unwrap();
    let mut buf = [0u8; 1500];
    let mut answer = None;
    for _ in 0..3 {
        sock.send_to(&req.raw, server.addr).unwrap();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from, server.addr, "answer from an unexpected address");
            answer = Some(buf[..n].to_vec());
            break;
        }
    }
    let raw = answer.expect("no answer to a Binding request over UDP");
    let mut res = Message::new();
    res.unmarshal_binary(&raw)
        .expect("answer is a STUN message");
    assert_eq!(res.typ, BINDING_SUCCESS, "answer: {res}");
    assert_eq!(res.transaction_id, req.transaction_id);
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&res).expect("XOR-MAPPED-ADDRESS present");
    assert_eq!(SocketAddr::new(mapped.ip, mapped.port), local);

    // And the hand-built request from the common helpers agrees.
    assert_eq!(common::binding_udp(&sock, server.addr), Some(local));
}

#[test]
fn binding_over_tcp_reports_the_source_address() {
    let server = Server::start();
    let (mapped, local) = common::binding_tcp(server.addr).expect("Binding over TCP");
    assert_eq!(mapped, local);

    // Two requests in one write: the server must split the stream into
    // messages and answer both, in order.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = s.local_addr().unwrap();
    let (t1, t2) = (common::transaction_id(), common::transaction_id());
    let mut both = common::binding_request(&t1);
    both.extend(common::binding_request(&t2));
    s.write_all(&both).unwrap();
    for tid in [t1, t2] {
        let mut head = [0u8; 20];
        s.read_exact(&mut head).expect("read response header");
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut msg = head.to_vec();
        msg.resize(20 + len, 0);
        s.read_exact(&mut msg[20..]).expect("read response body");
        assert_eq!(
            common::parse_binding_success(&msg, &tid),
            Some(local),
            "response {msg:02x?}"
        );
    }
}

// ---- The turn crate's client ---------------------------------------------------------

/// A `turn` client on a fresh UDP socket on 127.0.0.1, already listening.
async fn turn_client(server: &Server, user: &str, pass: &str) -> (Client, Arc<UdpSocket>) {
    let sock = Arc::new(UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
    let client = client_on(server, sock.clone(), user, pass).await;
    (client, sock)
}

async fn client_on(server: &Server, sock: Arc<UdpSocket>, user: &str, pass: &str) -> Client {
    common::turn_client(server.addr, sock, REALM, user, pass).await
}

/// Send `data` through the relay to the echo peer and check the echo.
async fn echo_round_trip(relay: &impl Conn, peer: SocketAddr, data: &[u8]) {
    timeout(STEP, relay.send_to(data, peer))
        .await
        .unwrap_or_else(|_| panic!("send_to of {} bytes timed out", data.len()))
        .unwrap_or_else(|e| panic!("send_to of {} bytes: {e}", data.len()));
    let mut buf = vec![0u8; 70_000];
    let (n, from) = timeout(STEP, relay.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no echo of a {}-byte packet within {STEP:?}", data.len()))
        .expect("recv_from");
    assert_eq!(from, peer, "echo came from an unexpected address");
    assert_eq!(n, data.len(), "echo has the wrong length");
    assert!(
        buf[..n] == *data,
        "echo of {} bytes differs from what was sent",
        data.len()
    );
}

#[tokio::test]
async fn static_user_relays_data_both_ways() {
    let server = Server::start();
    let peer = EchoPeer::start();
    let (client, sock) = turn_client(&server, USER, PASSWORD).await;

    let mapped = timeout(STEP, client.send_binding_request())
        .await
        .expect("Binding timed out")
        .expect("Binding through the turn client");
    assert_eq!(mapped, sock.local_addr().unwrap());

    let relay = timeout(STEP, client.allocate())
        .await
        .expect("Allocate timed out")
        .expect("Allocate as alice");
    let relayed = relay.local_addr().unwrap();
    assert!(
        server.is_relay_addr(relayed),
        "relayed address {relayed} is not 127.0.0.1 in {:?}",
        server.relay_ports
    );

    // The first send creates the permission (and starts a ChannelBind, so
    // the next packets go as Send indications and then as ChannelData).
    let sizes = [1usize, 20, 100, 500, 1000, 1200, 1400, 4000, 8000, 16000];
    for (i, &len) in sizes.iter().enumerate() {
        echo_round_trip(&relay, peer.addr, &payload(len, i as u8)).await;
    }
    // Some more once the channel is surely bound.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..20u8 {
        echo_round_trip(&relay, peer.addr, &payload(100 + i as usize * 50, i)).await;
    }
    // A large datagram, close to what fits in UDP with TURN framing.
    echo_round_trip(&relay, peer.addr, &payload(60_000, 99)).await;

    // The peer saw the relay address as the source, never the client's.
    assert_eq!(peer.senders(), vec![relayed]);
    assert_eq!(peer.received(), sizes.len() + 20 + 1);

    // A host without a permission (127.0.0.2 is not 127.0.0.1) sends to the
    // relay first, then the permitted peer echoes a marker: the marker must
    // be the first thing the client gets.
    let stranger = UdpSocket::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    stranger.send_to(b"intruder", relayed).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    echo_round_trip(&relay, peer.addr, b"marker after the intruder").await;

    timeout(STEP, relay.close())
        .await
        .expect("relay close timed out")
        .expect("relay close");
    timeout(STEP, client.close())
        .await
        .expect("client close timed out")
        .expect("client close");
}

#[tokio::test]
async fn rest_credentials_allocate_and_relay() {
    let server = Server::start();
    let peer = EchoPeer::start();
    let (user, pass) = ferroturn::auth::rest_credentials(SECRET, "bob", unix_now() + 3600);
    let (client, _sock) = turn_client(&server, &user, &pass).await;
    let relay = timeout(STEP, client.allocate())
        .await
        .expect("Allocate timed out")
        .expect("Allocate with REST credentials");
    assert!(server.is_relay_addr(relay.local_addr().unwrap()));
    for i in 0..5u8 {
        echo_round_trip(&relay, peer.addr, &payload(300, i)).await;
    }
    relay.close().await.expect("relay close");
    client.close().await.expect("client close");
}

async fn allocate_fails(server: &Server, user: &str, pass: &str) -> String {
    let (client, _sock) = turn_client(server, user, pass).await;
    let res = timeout(STEP, client.allocate())
        .await
        .expect("Allocate timed out");
    let err = match res {
        Ok(relay) => {
            let addr = relay.local_addr().unwrap();
            panic!("Allocate as {user:?}/{pass:?} succeeded with relay {addr}")
        }
        Err(e) => e.to_string(),
    };
    client.close().await.unwrap();
    err
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let server = Server::start();
    let e = allocate_fails(&server, USER, "not-wonderland").await;
    assert!(e.contains("401"), "expected 401 Unauthorized, got: {e}");
    let e = allocate_fails(&server, "mallory", PASSWORD).await;
    assert!(e.contains("401"), "expected 401 Unauthorized, got: {e}");
    // A REST username signed with another secret.
    let (u, p) = ferroturn::auth::rest_credentials("other-secret", "bob", unix_now() + 3600);
    let e = allocate_fails(&server, &u, &p).await;
    assert!(e.contains("401"), "expected 401 Unauthorized, got: {e}");
    // Expired REST credentials, correctly signed.
    let (u, p) = ferroturn::auth::rest_credentials(SECRET, "bob", unix_now() - 60);
    let e = allocate_fails(&server, &u, &p).await;
    assert!(e.contains("401"), "expected 401 Unauthorized, got: {e}");

    // The server still works for the right password afterwards.
    let (client, _sock) = turn_client(&server, USER, PASSWORD).await;
    let relay = timeout(STEP, client.allocate())
        .await
        .unwrap()
        .expect("Allocate as alice");
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn close_releases_the_allocation() {
    let server = Server::start();
    let peer = EchoPeer::start();
    let (client, sock) = turn_client(&server, USER, PASSWORD).await;
    let relay = timeout(STEP, client.allocate())
        .await
        .unwrap()
        .expect("Allocate");
    echo_round_trip(&relay, peer.addr, b"before close").await;
    // relay.close() sends Refresh with LIFETIME 0 (RFC 8656 §7.4).
    timeout(STEP, relay.close())
        .await
        .unwrap()
        .expect("relay close");
    timeout(STEP, client.close())
        .await
        .unwrap()
        .expect("client close");
    // Let the old client's read loop notice the close and let go.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Same socket, so same 5-tuple: a new Allocate succeeds only if the old
    // allocation is gone (otherwise 437 Allocation Mismatch).
    let client = client_on(&server, sock, USER, PASSWORD).await;
    let relay = timeout(STEP, client.allocate())
        .await
        .expect("second Allocate timed out")
        .expect("second Allocate on the same 5-tuple after close");
    echo_round_trip(&relay, peer.addr, b"after close").await;
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

// ---- Raw Allocate / Refresh with the stun crate ----------------------------------------

/// A long-term-credential TURN client over a blocking UDP socket, for
/// checking exact answers (error codes, LIFETIME, MESSAGE-INTEGRITY).
struct RawTurn {
    sock: StdUdpSocket,
    server: SocketAddr,
    user: String,
    pass: String,
    realm: Option<String>,
    nonce: Option<String>,
}

type Attrs = Vec<Box<dyn Setter>>;

fn error_code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok()?;
    Some(e.code.0)
}

impl RawTurn {
    fn new(server: SocketAddr, user: &str, pass: &str) -> RawTurn {
        let sock = StdUdpSocket::bind((LOCALHOST, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        RawTurn {
            sock,
            server,
            user: user.into(),
            pass: pass.into(),
            realm: None,
            nonce: None,
        }
    }

    /// Send `req` and wait for the response with its transaction id
    /// (4 tries, 500 ms each).
    fn transact(&self, req: &Message) -> Message {
        let mut buf = vec![0u8; 2048];
        for _ in 0..4 {
            self.sock.send_to(&req.raw, self.server).unwrap();
            while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                if from != self.server {
                    continue;
                }
                let mut m = Message::new();
                if m.unmarshal_binary(&buf[..n]).is_ok() && m.transaction_id == req.transaction_id {
                    return m;
                }
            }
        }
        panic!("no response to {req}");
    }

    /// A request of `method` with `attrs()`, authenticated once a realm and
    /// nonce are known; follows one 401 or 438 challenge.
    fn request(&mut self, method: Method, attrs: &dyn Fn() -> Attrs) -> Message {
        for _ in 0..2 {
            let mut setters: Attrs = vec![
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(method, CLASS_REQUEST)),
            ];
            setters.extend(attrs());
            let integrity = match (&self.realm, &self.nonce) {
                (Some(realm), Some(nonce)) => {
                    let mi = MessageIntegrity::new_long_term_integrity(
                        self.user.clone(),
                        realm.clone(),
                        self.pass.clone(),
                    );
                    setters.push(Box::new(TextAttribute::new(
                        ATTR_USERNAME,
                        self.user.clone(),
                    )));
                    setters.push(Box::new(TextAttribute::new(ATTR_REALM, realm.clone())));
                    setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.clone())));
                    setters.push(Box::new(mi.clone()));
                    Some(mi)
                }
                _ => None,
            };
            setters.push(Box::new(FINGERPRINT));
            let mut req = Message::new();
            req.build(&setters).unwrap();
            let mut res = self.transact(&req);
            let code = error_code(&res);
            if res.typ.class == CLASS_ERROR_RESPONSE && matches!(code, Some(401) | Some(438)) {
                let realm = TextAttribute::get_from_as(&res, ATTR_REALM)
                    .unwrap_or_else(|_| panic!("{code:?} without REALM: {res}"));
                let nonce = TextAttribute::get_from_as(&res, ATTR_NONCE)
                    .unwrap_or_else(|_| panic!("{code:?} without NONCE: {res}"));
                let first_challenge = self.nonce.is_none();
                self.realm = Some(realm.text);
                self.nonce = Some(nonce.text);
                if first_challenge || code == Some(438) {
                    continue;
                }
                return res;
            }
            if res.typ.class == CLASS_SUCCESS_RESPONSE
                && let Some(mi) = integrity
            {
                mi.check(&mut res).unwrap_or_else(|e| {
                    panic!("success response with a bad MESSAGE-INTEGRITY ({e}): {res}")
                });
            }
            return res;
        }
        panic!("challenged twice for one {method} request");
    }

    fn allocate(&mut self, lifetime: Option<u32>) -> Message {
        self.request(METHOD_ALLOCATE, &|| {
            let mut a: Attrs = vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })];
            if let Some(l) = lifetime {
                a.push(Box::new(Lifetime(Duration::from_secs(l as u64))));
            }
            a
        })
    }

    fn refresh(&mut self, lifetime: u32) -> Message {
        self.request(METHOD_REFRESH, &|| {
            vec![Box::new(Lifetime(Duration::from_secs(lifetime as u64)))]
        })
    }
}

fn lifetime_of(m: &Message) -> u64 {
    let mut l = Lifetime::default();
    l.get_from(m)
        .unwrap_or_else(|e| panic!("no LIFETIME ({e}) in {m}"));
    l.0.as_secs()
}

fn assert_success(m: &Message, what: &str) {
    assert_eq!(
        m.typ.class,
        CLASS_SUCCESS_RESPONSE,
        "{what}: expected success, got {m} (error {:?})",
        error_code(m)
    );
}

fn assert_error(m: &Message, code: u16, what: &str) {
    assert_eq!(
        m.typ.class, CLASS_ERROR_RESPONSE,
        "{what}: expected error {code}, got {m}"
    );
    assert_eq!(error_code(m), Some(code), "{what}: wrong error code in {m}");
}

#[test]
fn allocate_refresh_and_delete_with_raw_messages() {
    let server = Server::start_with(common::ServerConfig {
        lifetime: Some(600),
        max_lifetime: Some(3600),
        ..Default::default()
    });
    let mut t = RawTurn::new(server.addr, USER, PASSWORD);

    let res = t.allocate(Some(1200));
    assert_success(&res, "Allocate");
    assert_eq!(
        t.realm.as_deref(),
        Some(REALM),
        "realm in the 401 challenge"
    );
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&res).expect("XOR-RELAYED-ADDRESS");
    let relayed = SocketAddr::new(relayed.ip, relayed.port);
    assert!(server.is_relay_addr(relayed), "relayed address {relayed}");
    assert_eq!(
        lifetime_of(&res),
        1200,
        "granted lifetime for a request of 1200 s"
    );
    let mut mapped = XorMappedAddress::default();
    mapped
        .get_from(&res)
        .expect("XOR-MAPPED-ADDRESS in the Allocate response");
    assert_eq!(
        SocketAddr::new(mapped.ip, mapped.port),
        t.sock.local_addr().unwrap()
    );

    // A second Allocate on the same 5-tuple is a mismatch.
    assert_error(&t.allocate(None), 437, "second Allocate");

    // Refresh: asking for more than the maximum gets the maximum; asking for
    // less than the default gets the default (RFC 8656 §7.2, §7.3).
    let res = t.refresh(99_999);
    assert_success(&res, "Refresh 99999");
    assert_eq!(lifetime_of(&res), 3600);
    let res = t.refresh(700);
    assert_success(&res, "Refresh 700");
    assert_eq!(lifetime_of(&res), 700);

    // Refresh 0 deletes the allocation; afterwards Refresh is a mismatch
    // and the 5-tuple is free for a new Allocate.
    let res = t.refresh(0);
    assert_success(&res, "Refresh 0");
    assert_eq!(lifetime_of(&res), 0);
    assert_error(&t.refresh(600), 437, "Refresh after delete");
    let res = t.allocate(None);
    assert_success(&res, "Allocate after delete");
    assert_eq!(lifetime_of(&res), 600, "default lifetime");
    assert_success(&t.refresh(0), "final Refresh 0");
}

#[test]
fn unauthenticated_allocate_is_challenged() {
    let server = Server::start();
    let t = RawTurn::new(server.addr, USER, PASSWORD);
    let mut req = Message::new();
    req.build(&[
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        }),
        Box::new(FINGERPRINT),
    ])
    .unwrap();
    let res = t.transact(&req);
    assert_error(&res, 401, "Allocate without credentials");
    let realm = TextAttribute::get_from_as(&res, ATTR_REALM).expect("REALM");
    assert_eq!(realm.text, REALM);
    let nonce = TextAttribute::get_from_as(&res, ATTR_NONCE).expect("NONCE");
    assert!(!nonce.text.is_empty());
    // Nothing was allocated: a Refresh on this 5-tuple is a mismatch once
    // authenticated.
    let mut t = t;
    t.realm = Some(realm.text);
    t.nonce = Some(nonce.text);
    assert_error(&t.refresh(600), 437, "Refresh without an allocation");
}

impl RawTurn {
    fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Message {
        self.request(METHOD_CHANNEL_BIND, &|| {
            vec![
                Box::new(ChannelNumber(number)),
                Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
            ]
        })
    }

    /// Send `data` as ChannelData on `number` and wait (bounded) for
    /// ChannelData back: its channel number and payload.
    fn channel_round_trip(&self, number: u16, data: &[u8]) -> (u16, Vec<u8>) {
        let mut frame = number.to_be_bytes().to_vec();
        frame.extend((data.len() as u16).to_be_bytes());
        frame.extend(data);
        self.sock.send_to(&frame, self.server).unwrap();
        let mut buf = vec![0u8; 70_000];
        for _ in 0..10 {
            let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            // ChannelData starts with 0b01; STUN messages with 0b00.
            if from == self.server && n >= 4 && buf[0] & 0xC0 == 0x40 {
                let ch = u16::from_be_bytes([buf[0], buf[1]]);
                let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                assert!(
                    4 + len <= n,
                    "ChannelData length {len} exceeds the datagram ({n} bytes)"
                );
                return (ch, buf[4..4 + len].to_vec());
            }
        }
        panic!("no ChannelData back on channel {number:#06x}");
    }
}

#[test]
fn channel_numbers_follow_the_config() {
    // (legacy_channel_numbers, channel numbers to bind with the expected
    // error, and the channel to carry data on)
    type Case = (Option<bool>, [(u16, Option<u16>); 5], u16);
    let cases: [Case; 2] = [
        (
            None,
            [
                (0x4000, None),
                (0x4FFF, None),
                (0x5000, Some(400)),
                (0x7FFE, Some(400)),
                (0x3FFF, Some(400)),
            ],
            0x4000,
        ),
        (
            Some(true),
            [
                (0x4000, None),
                (0x5000, None),
                (0x7FFE, None),
                (0x8000, Some(400)),
                (0x3FFF, Some(400)),
            ],
            0x7FFE,
        ),
    ];
    for (legacy, binds, data_channel) in cases {
        let server = Server::start_with(common::ServerConfig {
            legacy_channel_numbers: legacy,
            ..Default::default()
        });
        let peer = EchoPeer::start();
        let mut t = RawTurn::new(server.addr, USER, PASSWORD);
        assert_success(&t.allocate(None), "Allocate");
        for (i, (number, expect)) in binds.into_iter().enumerate() {
            // One peer per channel; only the data channel's peer is real
            // (binding sends nothing to the others).
            let peer_addr = if number == data_channel {
                peer.addr
            } else {
                SocketAddr::from((LOCALHOST, 9 + i as u16))
            };
            let res = t.channel_bind(number, peer_addr);
            let what = format!("ChannelBind {number:#06x} (legacy {legacy:?})");
            match expect {
                None => assert_success(&res, &what),
                Some(code) => assert_error(&res, code, &what),
            }
        }
        let data = payload(777, 5);
        assert_eq!(
            t.channel_round_trip(data_channel, &data),
            (data_channel, data)
        );
        assert_eq!(peer.received(), 1);
        assert_success(&t.refresh(0), "Refresh 0");
    }
}
