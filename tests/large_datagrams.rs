//! Datagrams up to the UDP maximum relay intact in both directions.

mod common;
mod raw;

use raw::{RawClient, loopback_config, peer_socket};

/// Largest UDP payload over IPv4: 65,535 − 20 (IP) − 8 (UDP).
const UDP_MAX: usize = 65_507;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn udp_client_datagrams_of_maximum_size_relay_both_ways() {
    let server =
        ferroturn::io::Server::start(loopback_config("big", "[\"udp\"]", common::relay_block()))
            .unwrap();
    let mut c = RawClient::udp(server.listen[0], "big", "alice", "wonderland");
    let peer = peer_socket();
    c.allocate();
    c.channel_bind(0x4000, peer.local_addr().unwrap());

    // The client's datagram is the UDP maximum: 4 bytes of ChannelData
    // header and 65,503 bytes of payload.
    let payload = pattern(UDP_MAX - 4, 1);
    let frame = c.channel_data(0x4000, &payload);
    assert_eq!(frame.len(), UDP_MAX);
    c.send(&frame);
    let mut buf = vec![0u8; 70_000];
    let (n, relay) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &payload[..], "peer got the payload intact");

    // Back: the largest payload that still fits the client's datagram.
    let back = pattern(UDP_MAX - 4, 2);
    peer.send_to(&back, relay).unwrap();
    let n = c.recv(&mut buf);
    assert_eq!(n, UDP_MAX);
    assert_eq!(
        &buf[..4],
        &[0x40, 0x00, (back.len() >> 8) as u8, back.len() as u8]
    );
    assert_eq!(&buf[4..n], &back[..], "client got the payload intact");
    server.stop();
}

#[test]
fn tcp_client_relays_maximum_udp_payloads_both_ways() {
    let server =
        ferroturn::io::Server::start(loopback_config("big", "[\"tcp\"]", common::relay_block()))
            .unwrap();
    let mut c = RawClient::tcp(server.listen[0], "big", "alice", "wonderland");
    let peer = peer_socket();
    c.allocate();
    c.channel_bind(0x4001, peer.local_addr().unwrap());

    let payload = pattern(UDP_MAX, 3);
    let frame = c.channel_data(0x4001, &payload);
    c.send(&frame);
    let mut buf = vec![0u8; 70_000];
    let (n, relay) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(n, UDP_MAX);
    assert_eq!(&buf[..n], &payload[..]);

    let back = pattern(UDP_MAX, 4);
    peer.send_to(&back, relay).unwrap();
    let n = c.recv(&mut buf);
    assert_eq!(u16::from_be_bytes([buf[2], buf[3]]) as usize, UDP_MAX);
    assert_eq!(n % 4, 0, "ChannelData padded to 4 bytes on TCP");
    assert_eq!(&buf[4..4 + UDP_MAX], &back[..]);
    server.stop();
}
