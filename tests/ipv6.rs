//! IPv6 relays over ::1: REQUESTED-ADDRESS-FAMILY and a dual-stack
//! allocation (ADDITIONAL-ADDRESS-FAMILY, RFC 8656 §7.2) relaying to an
//! IPv4 and an IPv6 peer at once.

mod common;
mod raw;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use ferroturn::engine::ATTR_ADDITIONAL_ADDRESS_FAMILY;
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::attributes::*;
use stun::message::*;

fn server() -> ferroturn::io::Server {
    let (lo, hi) = common::relay_block();
    let text = format!(
        r#"
realm = "v6"
[[listen]]
address = "[::1]:0"
transports = ["udp", "tcp"]
[relay]
address = "127.0.0.1"
address_v6 = "::1"
ports = "{lo}-{hi}"
[auth]
users = {{ alice = "wonderland" }}
[peers]
allow = ["127.0.0.0/8", "::1"]
"#
    );
    let config = ferroturn::config::parse(std::path::Path::new("v6.toml"), &text).unwrap();
    ferroturn::io::Server::start(config).unwrap()
}

fn echo_once(peer: &UdpSocket) -> SocketAddr {
    let mut buf = [0u8; 2048];
    let (n, from) = peer
        .recv_from(&mut buf)
        .expect("the relay sent to the peer");
    peer.send_to(&buf[..n], from).unwrap();
    from
}

fn relayed(r: &Message) -> Vec<SocketAddr> {
    wire::attrs_before_integrity(r)
        .filter(|a| a.typ == ATTR_XOR_RELAYED_ADDRESS)
        .map(|a| wire::read_xor_address(&a.value, &r.transaction_id.0).unwrap())
        .collect()
}

#[test]
fn ipv6_relay_on_request() {
    let s = server();
    let mut c = RawClient::udp(s.listen[0], "v6", "alice", "wonderland");
    let r = c.signed(
        Request::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    assert_eq!(wire::error_code(&r), None);
    let relays = relayed(&r);
    assert_eq!(relays.len(), 1);
    assert!(relays[0].is_ipv6(), "{relays:?}");
    assert_eq!(
        wire::xor_address(&r, ATTR_XORMAPPED_ADDRESS),
        Some(c.local_addr())
    );

    let peer = UdpSocket::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.channel_bind(0x4000, peer.local_addr().unwrap());
    let frame = c.channel_data(0x4000, b"over ipv6");
    c.send(&frame);
    assert_eq!(
        echo_once(&peer),
        relays[0],
        "the peer sees the IPv6 relay address"
    );
    let mut buf = [0u8; 2048];
    let n = c.recv(&mut buf);
    assert_eq!(&buf[..n], &frame[..]);
    s.stop();
}

#[test]
fn dual_allocation_relays_to_both_families() {
    let s = server();
    let mut c = RawClient::udp(s.listen[0], "v6", "alice", "wonderland");
    let r = c.signed(
        Request::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    assert_eq!(wire::error_code(&r), None);
    let relays = relayed(&r);
    assert_eq!(relays.len(), 2, "{relays:?}");
    assert!(relays[0].is_ipv4() && relays[1].is_ipv6());

    let p4 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let p6 = UdpSocket::bind("[::1]:0").unwrap();
    for p in [&p4, &p6] {
        p.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    c.channel_bind(0x4000, p4.local_addr().unwrap());
    c.channel_bind(0x4001, p6.local_addr().unwrap());
    let mut buf = [0u8; 2048];
    for (n, p, relay) in [(0x4000u16, &p4, relays[0]), (0x4001, &p6, relays[1])] {
        let frame = c.channel_data(n, b"dual");
        c.send(&frame);
        assert_eq!(echo_once(p), relay);
        let got = c.recv(&mut buf);
        assert_eq!(&buf[..got], &frame[..], "channel {n:#x}");
    }
    // REQUESTED-ADDRESS-FAMILY in a Refresh must name an allocated family.
    let r =
        c.signed(Request::new(METHOD_REFRESH).attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]));
    assert_eq!(wire::error_code(&r), None);
    s.stop();
}
