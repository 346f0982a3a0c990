//! The engine on arbitrary input: the first byte picks a client and the
//! rest is its packet; every few packets the clock moves and peer data
//! arrives. The engine must never panic, and its state stays bounded.
#![no_main]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferroturn::addr::{ClientAddr, Via};
use ferroturn::auth::Credentials;
use ferroturn::config::Limits;
use ferroturn::engine::{Engine, EngineConfig, Output};
use ferroturn::policy::PeerPolicy;
use ferroturn::proto::channel_data::{BUF_LEN, HEADROOM};
use libfuzzer_sys::fuzz_target;

fn engine(now: Instant) -> Engine {
    let mut users = BTreeMap::new();
    users.insert("alice".to_string(), "wonderland".into());
    Engine::new(
        {
            let mut cfg = EngineConfig::new(
                Credentials::new("fuzz", &["s".into()], &users, b"k", 600),
                PeerPolicy::new(vec![], vec![], vec![], (1, 1)),
                "0.0.0.0".parse().unwrap(),
                "198.51.100.1".parse().unwrap(),
                (50000..50016).collect(),
            );
            cfg.relay_bind_v6 = Some("::".parse().unwrap());
            cfg.relay_public_v6 = Some("2001:db8::1".parse().unwrap());
            cfg.legacy_channels = true;
            cfg.limits = Limits {
                allocations_per_user: 8,
                total_allocations: 8,
                permissions_per_allocation: 4,
                channels_per_allocation: 4,
                bandwidth: 0,
                packet_rate: 0,
                unauthenticated_rate: 0,
            };
            cfg
        },
        now,
        1_800_000_000,
    )
}

/// A request of one of the STUN/TURN methods picked by `spec[0]`, with attributes read as (type, len,
/// value) from the rest of `spec`, signed as alice with a valid nonce.
fn sign(spec: &[u8], client: ClientAddr, elapsed: u64) -> Vec<u8> {
    use ferroturn::proto::stun::Request;
    use stun::message::*;
    let methods = [
        METHOD_BINDING,
        METHOD_ALLOCATE,
        METHOD_REFRESH,
        METHOD_SEND,
        METHOD_DATA,
        METHOD_CREATE_PERMISSION,
        METHOD_CHANNEL_BIND,
        METHOD_CONNECT,
    ];
    let method = methods[spec[0] as usize % methods.len()];
    let mut r = Request::new(method);
    let mut rest = &spec[1..];
    while rest.len() >= 3 {
        let t = u16::from_be_bytes([rest[0], rest[1]]) % 0x40;
        let n = (rest[2] as usize).min(rest.len() - 3);
        r = r.attr(stun::attributes::AttrType(t), &rest[3..3 + n]);
        rest = &rest[3 + n..];
    }
    let creds = Credentials::new("fuzz", &[], &BTreeMap::new(), b"k", 600);
    let nonce = creds.nonce(1_800_000_000 + elapsed, client.remote);
    r.sign("alice", "fuzz", "wonderland", &nonce)
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut e = engine(t0);
    let mut buf = vec![0u8; BUF_LEN];
    let mut opened = Vec::new();
    // Split the input into packets at 0xFF 0xFE markers.
    for (i, chunk) in data.split(|&b| b == 0xFE).enumerate() {
        let Some((&sel, packet)) = chunk.split_first() else { continue };
        let client = ClientAddr {
            remote: SocketAddr::from(([203, 0, 113, 1], 1000 + (sel & 7) as u16)),
            via: if sel & 8 == 0 { Via::Udp(0) } else { Via::Stream { listener: 0, conn: 1, tls: false } },
        };
        // With bit 5 set the chunk becomes a correctly signed request: a
        // method and attribute TLVs, so that the fuzzer reaches past
        // authentication.
        let signed;
        let packet = if sel & 32 != 0 && !packet.is_empty() {
            signed = sign(packet, client, now.duration_since(t0).as_secs());
            &signed[..]
        } else {
            packet
        };
        let _ = e.handle_client(now, client, packet);
        while let Some(o) = e.poll_output() {
            if let Output::OpenRelay { alloc, .. } = o {
                opened.push(alloc);
                e.relay_opened(now, alloc, sel & 16 == 0);
            }
        }
        if let Some(&id) = opened.last() {
            let n = packet.len().min(1400);
            let _ = e.handle_peer(now, id, "93.184.216.34:9".parse().unwrap(), &mut buf, HEADROOM, HEADROOM + n);
        }
        if i % 4 == 3 {
            now += Duration::from_secs(sel as u64 * 3);
            e.handle_timeout(now);
        }
        assert!(e.allocation_count() <= 8);
    }
});
