//! A flood of unauthenticated Allocates from thousands of source ports:
//! the server keeps no state for them (RSS stays flat), rate-limits its
//! answers, and an authenticated client relaying at the same time loses
//! nothing.

mod common;
mod raw;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{EchoPeer, Server, ServerConfig, raise_fd_limit, rss_kb};
use ferroturn::proto::stun::Request;
use raw::RawClient;
use stun::message::METHOD_ALLOCATE;

const FLOOD: usize = 200_000;
const SOURCES: usize = 2_000;

#[test]
fn unauthenticated_flood_costs_no_memory_and_no_relayed_packet() {
    raise_fd_limit(SOURCES as u64 + 256);
    let server = Server::start_with(ServerConfig {
        log_level: "info".into(),
        ..ServerConfig::default()
    });
    let pid = server.pid();
    let peer = EchoPeer::start();

    // The authenticated client sets up before the flood: its 401 comes from
    // the same source IP as the flood, whose answers get rate-limited.
    let mut c = RawClient::udp(server.addr, common::REALM, common::USER, common::PASSWORD);
    c.allocate();
    c.channel_bind(0x4000, peer.addr);

    let sources: Vec<UdpSocket> = (0..SOURCES)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let bare = Request::new(METHOD_ALLOCATE).transport(17).bytes();
    // Warm the server's allocator with a first wave, then take the baseline.
    for s in sources.iter().take(500) {
        s.send_to(&bare, server.addr).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kb(pid);

    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let relay = std::thread::spawn(move || {
        let mut sent = 0u32;
        let mut got = 0u32;
        let mut buf = vec![0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done2.load(Ordering::Relaxed) && Instant::now() < deadline {
            let payload = sent.to_be_bytes();
            let frame = c.channel_data(0x4000, &payload);
            c.send(&frame);
            sent += 1;
            let n = c.recv(&mut buf);
            if buf[..n] == frame[..] {
                got += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (sent, got)
    });

    // The flood: paced so that a debug build keeps up, bounded in time.
    let start = Instant::now();
    let mut flooded = 0;
    'outer: for round in 0.. {
        for s in &sources {
            // Each source reuses its port, as a spoofing flood would.
            let _ = s.send_to(&bare, server.addr);
            flooded += 1;
            if flooded == FLOOD {
                break 'outer;
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
    let flood_time = start.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    let (sent, got) = relay.join().unwrap();
    let after = rss_kb(pid);

    println!(
        "flood: {flooded} unauthenticated Allocates from {SOURCES} ports in {flood_time:?}; \
         server RSS {before} kB -> {after} kB; relayed {got}/{sent} round trips meanwhile"
    );
    assert_eq!(got, sent, "the authenticated client lost packets");
    assert!(sent > 100, "the relay ran during the flood");
    assert!(
        after < before + 1024,
        "server RSS grew by {} kB",
        after.saturating_sub(before)
    );
    // The answers were rate-limited: far fewer than the requests.
    let answered: usize = sources
        .iter()
        .map(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 512];
            let mut n = 0;
            while s.recv_from(&mut b).is_ok() {
                n += 1;
            }
            n
        })
        .sum();
    println!("answers received: {answered}");
    assert!(
        answered < FLOOD / 50,
        "{answered} answers to {FLOOD} requests"
    );
}
