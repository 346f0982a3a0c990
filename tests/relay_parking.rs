//! Relay sockets parked between allocations (engine `parking.rs`, the
//! host's `parked` sockets): once allocations churn, the next client's
//! allocation reuses the socket the last one left, and none of what a peer
//! sent the old allocation reaches the new client, even for a peer the new
//! client then permits; unused, the port goes back to the pool and its
//! socket closes.
//!
//! A real `ferroturn` child with one worker (one UDP shard, so that both
//! clients meet the same host), raw clients and a peer on 127.0.0.1. Every
//! read has a time-out and every loop a bound.

mod common;
mod raw;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{PASSWORD, REALM, Server, ServerConfig, USER};
use ferroturn::proto::stun::{self as wire, Request};
use raw::{RawClient, peer_socket};
use stun::message::*;

const CHANNEL: u16 = 0x4000;

/// The payloads of ChannelData frames `c` receives within `wait`, until
/// one equals `until` (included).
fn payloads_until(c: &mut RawClient, until: &[u8], wait: Duration) -> Vec<Vec<u8>> {
    let Some(raw::Link::Udp(s)) = Some(&c.link) else {
        unreachable!()
    };
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < end && got.len() < 1000 {
        let Ok((n, _)) = s.recv_from(&mut buf) else {
            continue;
        };
        if n < 4 || buf[0] >> 6 != 1 {
            continue;
        }
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let p = buf[4..4 + len.min(n - 4)].to_vec();
        let done = p == until;
        got.push(p);
        if done {
            break;
        }
    }
    got
}

/// A new client's allocation, which must be at `relay` (the one parked
/// port), channel-bound to `peer` at once; `peer` then sends `payload`.
/// The client, and the payloads it received up to `payload`.
fn take_parked(
    server: &Server,
    relay: SocketAddr,
    peer: &UdpSocket,
    payload: &[u8],
) -> (RawClient, Vec<Vec<u8>>) {
    let mut c = RawClient::udp(server.addr, REALM, USER, PASSWORD);
    assert_eq!(c.allocate(), relay, "the parked port, and its socket");
    c.channel_bind(CHANNEL, peer.local_addr().unwrap());
    peer.send_to(payload, relay).unwrap();
    let got = payloads_until(&mut c, payload, Duration::from_secs(3));
    (c, got)
}

fn delete(c: &mut RawClient) {
    let r = c.signed(Request::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(wire::error_code(&r), None, "delete failed");
}

/// Whether a socket of our own can bind `at` now (nobody holds it).
fn bindable(at: SocketAddr) -> bool {
    UdpSocket::bind(at).is_ok()
}

/// Two adjacent relay blocks: enough ports for an engine to park
/// (`PARK_FREE_MIN`, 256).
fn two_blocks() -> (u16, u16) {
    let mut last = common::relay_block();
    for _ in 0..10 {
        let next = common::relay_block();
        if next.0 == last.1 + 1 {
            return (last.0, next.1);
        }
        if next.1 + 1 == last.0 {
            return (next.0, last.1);
        }
        last = next;
    }
    panic!("no two adjacent free relay blocks");
}

/// A server with one UDP shard (both clients meet the same host), two
/// relay blocks, info logging, and no rate limit on unauthenticated
/// requests.
fn parking_server() -> Server {
    Server::start_with(ServerConfig {
        workers: Some(1),
        transports: vec!["udp".into()],
        relay_ports: Some(two_blocks()),
        limits: vec![("unauthenticated_rate", "0".into())],
        log_level: "info".into(),
        ..ServerConfig::default()
    })
}

/// Churn on `c`: allocations made and deleted at the engine's parking
/// mark (`PARK_CHURN`, 64 a second); the last one's port, returned, stays
/// parked.
fn churn_parks(c: &mut RawClient) -> SocketAddr {
    let mut relay = None;
    for _ in 0..80 {
        relay = Some(c.allocate());
        delete(c);
    }
    relay.unwrap()
}

#[test]
fn a_reused_relay_socket_delivers_nothing_of_the_last_allocation() {
    let server = parking_server();
    let peer = peer_socket();

    let mut churn = RawClient::udp(server.addr, REALM, USER, PASSWORD);
    let relay = churn_parks(&mut churn);
    assert!(!bindable(relay), "the churn's last socket is parked");

    // The first client takes it, and relays from the peer: the path works.
    let (mut a, got) = take_parked(&server, relay, &peer, b"first");
    assert_eq!(got.last().map(Vec::as_slice), Some(&b"first"[..]));

    // It leaves; the peer goes on sending to the relay address, whose
    // socket is parked (still bound: nobody else can bind the port).
    delete(&mut a);
    for i in 0..50u32 {
        peer.send_to(format!("old-{i}").as_bytes(), relay).unwrap();
    }
    assert!(!bindable(relay), "the parked socket holds the port");

    // The next client gets the same port, permits the same peer at once,
    // and hears only what the peer sends after that.
    let (mut b, got) = take_parked(&server, relay, &peer, b"new");
    let old: Vec<String> = got
        .iter()
        .filter(|p| p.starts_with(b"old-"))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(old.is_empty(), "the old allocation's data leaked: {old:?}");
    assert_eq!(got, [b"new".to_vec()], "only the new peer data");

    // Unused after it ends, the port goes back to the pool and its socket
    // closes (within the park hold, 0.5 s; checked for 5 s).
    delete(&mut b);
    let end = Instant::now() + Duration::from_secs(5);
    let mut free = false;
    while Instant::now() < end {
        if bindable(relay) {
            free = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(free, "the parked socket was never closed");
}

/// CPU time `pid` used so far (user and system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line (11 and 12 here),
    // in clock ticks.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// A parked socket stays in its thread's epoll set. What a peer sends to
/// it is read away when it arrives (a readable socket nobody read would
/// wake its thread without end), more than the drain bound closes it, and
/// the port still serves the next allocation, with none of the old data.
#[test]
fn a_peer_sending_to_a_parked_socket_neither_spins_its_thread_nor_reaches_the_next_client() {
    let server = parking_server();
    let peer = peer_socket();
    let mut churn = RawClient::udp(server.addr, REALM, USER, PASSWORD);
    for (round, count) in [(0, 20u32), (1, 400)] {
        // A client takes the parked port and leaves, so that its socket
        // is parked after an allocation that relayed.
        let relay = churn_parks(&mut churn);
        let (mut a, _) = take_parked(&server, relay, &peer, b"first");
        delete(&mut a);
        // A few, then more than the drain reads (DRAIN_MAX, 256).
        for i in 0..count {
            peer.send_to(format!("old-{i}").as_bytes(), relay).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        // Within the park hold (0.5 s), an idle server: a thread woken
        // without end would use all of the 250 ms; idle timers use little.
        let before = cpu_time(server.pid());
        std::thread::sleep(Duration::from_millis(250));
        let used = cpu_time(server.pid()) - before;
        assert!(
            used <= Duration::from_millis(120),
            "round {round}: the server used {used:?} of CPU in 250 ms while idle"
        );
        let (mut b, got) = take_parked(&server, relay, &peer, b"new");
        assert_eq!(got, [b"new".to_vec()], "round {round}: only the new data");
        delete(&mut b);
    }
}
