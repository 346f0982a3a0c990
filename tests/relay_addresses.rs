//! Several relay addresses: `relay.address = ["127.0.0.1", "127.0.0.2"]`
//! with a `relay.ports` range of 12 ports holds 24 allocations, 12 on each
//! address, and the 25th gets 508 (the default `total_allocations` counts
//! both addresses). A relay on the second address relays both ways from a
//! socket bound there, and the peer policy treats the second address as
//! this server's own: a live relay port there is a peer, any other port
//! of it is not (403).
//!
//! A real `ferroturn` child on 127.0.0.1 with raw UDP clients; every read
//! has a time-out and every loop a bound.

mod common;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use common::{LOCALHOST, PASSWORD, REALM, Server, ServerConfig, USER};
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::message::*;

/// Ports of the relay range, on each address.
const PORTS: u16 = 12;
const SECOND: [u8; 4] = [127, 0, 0, 2];

/// A server with `workers = 2`, relay addresses 127.0.0.1 and 127.0.0.2
/// and [`PORTS`] relay ports, where a user may hold every one of them.
fn start() -> Server {
    let block = common::relay_block();
    Server::start_with(ServerConfig {
        workers: Some(2),
        transports: vec!["udp".into()],
        relay_ports: Some((block.0, block.0 + PORTS - 1)),
        relay_addresses: vec!["127.0.0.1".into(), "127.0.0.2".into()],
        // 127.0.0.1 alone: the second relay address is no peer but at its
        // live relay ports (it is this server's own).
        allow: vec!["127.0.0.1/32".into()],
        limits: vec![
            ("allocations_per_user", "1000".into()),
            ("unauthenticated_rate", "0".into()),
        ],
        log_level: "info".into(),
        ..ServerConfig::default()
    })
}

fn client(server: &Server) -> RawClient {
    RawClient::udp(server.addr, REALM, USER, PASSWORD)
}

#[test]
fn two_relay_addresses_hold_twice_the_range() {
    let server = start();
    let (lo, hi) = server.relay_ports;
    let range: BTreeSet<u16> = (lo..=hi).collect();
    let mut clients = Vec::new();
    let mut by_ip: BTreeMap<IpAddr, BTreeSet<u16>> = BTreeMap::new();
    for i in 0..2 * PORTS {
        let mut c = client(&server);
        let relayed = c.allocate();
        assert!(
            by_ip
                .entry(relayed.ip())
                .or_default()
                .insert(relayed.port()),
            "allocation {i}: {relayed} given twice"
        );
        clients.push((c, relayed));
    }
    // Every port of the range on each address: more than one address holds.
    let want: BTreeMap<IpAddr, BTreeSet<u16>> = [
        (IpAddr::from(LOCALHOST), range.clone()),
        (IpAddr::from(SECOND), range.clone()),
    ]
    .into();
    assert_eq!(by_ip, want);
    let mut one_more = client(&server);
    let r = one_more.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(wire::error_code(&r), Some(508), "the 25th Allocate");

    // A relay on the second address relays both ways, from a socket bound
    // there.
    let peer = raw::peer_socket();
    let peer_addr = peer.local_addr().unwrap();
    let (client, relayed) = clients
        .iter_mut()
        .find(|(_, r)| r.ip() == IpAddr::from(SECOND))
        .unwrap();
    let relayed = *relayed;
    client.channel_bind(0x4000, peer_addr);
    let frame = client.channel_data(0x4000, b"via the second address");
    client.send(&frame);
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("the peer got nothing");
    assert_eq!((&buf[..n], from), (&b"via the second address"[..], relayed));
    peer.send_to(b"and back", relayed).unwrap();
    let n = client.recv(&mut buf);
    assert_eq!(&buf[..n], &client.channel_data(0x4000, b"and back")[..]);

    // The second address is this server's own: another allocation's live
    // relay port there is a peer; a port of it outside the relay range is
    // not.
    let other = by_ip[&IpAddr::from(SECOND)]
        .iter()
        .map(|&p| SocketAddr::from((SECOND, p)))
        .find(|&a| a != relayed)
        .unwrap();
    let bind = |c: &mut RawClient, n: u16, peer: SocketAddr| {
        let r = c.signed(Request::new(METHOD_CHANNEL_BIND).channel(n).peer(peer));
        wire::error_code(&r)
    };
    assert_eq!(bind(client, 0x4001, other), None, "a live relay port");
    let closed = SocketAddr::from((SECOND, 9));
    assert_eq!(bind(client, 0x4002, closed), Some(403), "not a relay port");
}
