//! Hostile authenticated clients against a running server, written as the
//! attacks were tried (issue 13):
//!
//! - the own-relay SSRF: permit the server's own relay address (allowed so
//!   that two clients of one server can meet), then Send to another port
//!   of it, where a local UDP service listens;
//! - the quota bypass: a new REST credential of one name per Allocate.

mod common;
mod raw;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{SECRET, Server, ServerConfig};
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::attributes::*;
use stun::message::*;

/// The bundled configuration's peer policy: nothing opened, so loopback
/// (where the relay and the "internal" services are) is denied.
fn closed_server() -> Server {
    Server::start_with(ServerConfig {
        allow: vec![],
        ..Default::default()
    })
}

fn client(server: &Server) -> RawClient {
    RawClient::udp(server.addr, common::REALM, common::USER, common::PASSWORD)
}

/// A UDP service on loopback that would answer whatever reaches it.
fn service(port: u16) -> UdpSocket {
    let s = UdpSocket::bind(("127.0.0.1", port)).expect("bind the service");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn send_indication(c: &mut RawClient, peer: SocketAddr, data: &[u8]) {
    let pkt = Request::indication(METHOD_SEND)
        .peer(peer)
        .attr(ATTR_DATA, data)
        .bytes();
    c.send(&pkt);
}

/// Whether `s` receives anything within its read time-out.
fn receives(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

/// The next Data indication's DATA to client `c`, if one comes within 300 ms.
fn data_indication(c: &mut RawClient) -> Option<Vec<u8>> {
    let raw::Link::Udp(s) = &c.link else {
        unreachable!()
    };
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 70_000];
    let got = s.recv_from(&mut buf).ok().and_then(|(n, _)| {
        let m = wire::decode(&buf[..n])?;
        (m.typ == MessageType::new(METHOD_DATA, CLASS_INDICATION))
            .then(|| wire::attr(&m, ATTR_DATA).map(<[u8]>::to_vec))?
    });
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    got
}

#[test]
fn a_permission_for_the_own_relay_reaches_no_other_port_of_it() {
    let server = closed_server();
    let (lo, hi) = server.relay_ports;
    let mut a = client(&server);
    let mut b = client(&server);
    let ra = a.allocate();
    let rb = b.allocate();
    assert_eq!(rb.ip().to_string(), "127.0.0.1");
    // b's relay is a live relay port of this server: a may permit it.
    let r = a.signed(Request::new(METHOD_CREATE_PERMISSION).peer(rb));
    assert_eq!(wire::error_code(&r), None, "own relay permitted");
    // b must permit a's relay too, for b to hear from a.
    let r = b.signed(Request::new(METHOD_CREATE_PERMISSION).peer(ra));
    assert_eq!(wire::error_code(&r), None);
    send_indication(&mut a, rb, b"to b");
    assert_eq!(
        data_indication(&mut b).as_deref(),
        Some(&b"to b"[..]),
        "the legitimate path works"
    );

    // The attack: a service on 127.0.0.1 outside the relay range (an
    // ephemeral port), one inside the range on a port no allocation holds
    // (the kernel hands those out too), and the server's own TURN listener.
    let outside = service(0);
    let inside_port = (lo..=hi)
        .rev()
        .find(|&p| p != rb.port() && p != ra.port() && UdpSocket::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port in the relay range");
    let inside = service(inside_port);
    for target in [outside.local_addr().unwrap(), inside.local_addr().unwrap()] {
        send_indication(&mut a, target, b"hello internal service");
        assert!(
            receives(&outside).is_none() && receives(&inside).is_none(),
            "{target} was reached"
        );
    }
    // A Binding request relayed to the server's own listener would come
    // back as a Data indication (a nested allocation would hide the client).
    let tid = common::transaction_id();
    send_indication(&mut a, server.addr, &common::binding_request(&tid));
    assert_eq!(
        data_indication(&mut a),
        None,
        "the TURN listener answered through the relay"
    );
    // ChannelBind to those is refused outright.
    for target in [
        outside.local_addr().unwrap(),
        inside.local_addr().unwrap(),
        server.addr,
    ] {
        let r = a.signed(
            Request::new(METHOD_CHANNEL_BIND)
                .channel(0x4001)
                .peer(target),
        );
        assert_eq!(wire::error_code(&r), Some(403), "{target}");
    }

    // Once b's allocation is gone its port is just a port: whoever binds
    // it next is not reachable through a's old permission.
    let r = b.signed(Request::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(wire::error_code(&r), None);
    let squatter = service(rb.port());
    send_indication(&mut a, rb, b"to whoever has b's port");
    assert!(
        receives(&squatter).is_none(),
        "a freed relay port was reached"
    );

    let log = server.log();
    assert!(log.contains("peer denied"), "denials are logged:\n{log}");
}

#[test]
fn fifteen_fresh_credentials_of_one_name_hold_only_its_quota() {
    let server = Server::start_with(ServerConfig {
        limits: vec![("allocations_per_user", "10".into())],
        ..Default::default()
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut codes = Vec::new();
    let mut clients = Vec::new();
    for i in 0..15 {
        // What the demo's /ice-servers (or any backend) hands out: a new
        // expiry, so a new username, on every request.
        let (user, pass) = ferroturn::auth::rest_credentials(SECRET, "mallory", now + 3600 + i);
        let mut c = RawClient::udp(server.addr, common::REALM, &user, &pass);
        let r = c.signed(Request::new(METHOD_ALLOCATE).transport(17));
        codes.push(wire::error_code(&r));
        clients.push(c);
    }
    assert_eq!(codes[..10], [None; 10], "{codes:?}");
    assert_eq!(codes[10..], [Some(486); 5], "{codes:?}");
    // Another name is not affected.
    let (user, pass) = ferroturn::auth::rest_credentials(SECRET, "trudy", now + 3600);
    let mut c = RawClient::udp(server.addr, common::REALM, &user, &pass);
    c.allocate();
}

#[test]
fn a_relay_range_inside_the_ephemeral_ports_is_warned_about() {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let lo: u16 = text.split_whitespace().next().unwrap().parse().unwrap();
    // A block of the ephemeral range that is free now.
    let block = (0..50u16)
        .map(|i| lo.saturating_add(i * 100))
        .find(|&p| {
            (p..p + 100)
                .step_by(10)
                .all(|q| UdpSocket::bind(("127.0.0.1", q)).is_ok())
        })
        .expect("a free block");
    let server = Server::start_with(ServerConfig {
        relay_ports: Some((block, block + 99)),
        ..Default::default()
    });
    let log = server.log();
    assert!(
        log.contains("overlaps the kernel's ephemeral ports"),
        "{log}"
    );
    // The test servers' own blocks (below the ephemeral range) are not.
    let quiet = Server::start();
    assert!(!quiet.log().contains("ephemeral"), "{}", quiet.log());
}
