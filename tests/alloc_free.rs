//! The data path allocates nothing: with a counting global allocator, relay
//! ChannelData through a running server (client → peer → client) and count
//! heap allocations made by any thread of this process while it happens.

mod common;
mod raw;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raw::{Link, RawClient};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REALM: &str = "alloc.test";

#[test]
fn relaying_channel_data_allocates_nothing() {
    let config = raw::loopback_config(REALM, "[\"udp\"]", common::relay_block());
    let server = ferroturn::io::Server::start(config).unwrap();
    let addr = server.listen[0];

    // An echo peer that allocates nothing in its loop.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, from)) = peer.recv_from(&mut buf) {
                let _ = peer.send_to(&buf[..n], from);
            }
        }
    });

    // Setup with the raw client (it may allocate: nothing is counted yet).
    let mut c = RawClient::udp(addr, REALM, "alice", "wonderland");
    c.allocate();
    c.channel_bind(0x4000, peer_addr);
    let Link::Udp(sock) = &c.link else {
        unreachable!("a UDP client")
    };

    let mut pkt = [0u8; 204];
    pkt[..4].copy_from_slice(&[0x40, 0x00, 0x00, 200]);
    let mut got = [0u8; 2048];
    let mut round_trip = |i: u32| {
        pkt[4..8].copy_from_slice(&i.to_be_bytes());
        sock.send_to(&pkt, addr).unwrap();
        let (n, _) = sock.recv_from(&mut got).expect("echo through the relay");
        assert_eq!(
            &got[..n],
            &pkt[..],
            "packet {i} came back intact as ChannelData"
        );
    };
    // Warm up: lazily created buffers, first wake-ups.
    for i in 0..200 {
        round_trip(i);
    }
    let before = ALLOCS.load(Ordering::SeqCst);
    const N: u32 = 2000;
    for i in 0..N {
        round_trip(i);
    }
    let after = ALLOCS.load(Ordering::SeqCst);
    println!(
        "{N} round trips (client→peer and peer→client): {} heap allocations",
        after - before
    );
    assert_eq!(
        after - before,
        0,
        "heap allocations on the ChannelData path"
    );

    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    server.stop();
}
