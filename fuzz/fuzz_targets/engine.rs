//! The engine on arbitrary input: the first byte picks a client and the
//! rest is its packet; every few packets the clock moves and peer data
//! arrives. The engine must never panic, and its state stays bounded.
//!
//! One engine serves every input of the process (building one per input
//! cost more than running it): after each input every allocation is
//! closed and the clock jumps past every reservation and nonce, so the
//! next input starts from an empty engine. What carries over is only the
//! clock's value, the harness's nonce cache and the tables' capacity: a
//! crash found here replays from its saved input alone unless it depends
//! on one of those (then replay it with the inputs before it).
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferroturn::addr::{ClientAddr, Via};
use ferroturn::auth::Credentials;
use ferroturn::config::Limits;
use ferroturn::engine::{Engine, EngineConfig, Output};
use ferroturn::policy::PeerPolicy;
use ferroturn::proto::channel_data::{BUF_LEN, HEADROOM};
use ferroturn::proto::integrity::{ALGORITHM_SHA256, Key, Mac, Signer};
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

/// What lives from one input to the next.
struct State {
    e: Engine,
    /// The engine's epoch, and its clock now.
    t0: Instant,
    now: Instant,
    /// Mints the nonces of signed requests (same realm and key as the engine),
    /// kept by (second, client port): minting one costs an HMAC.
    creds: Credentials,
    nonces: HashMap<(u64, u16), String>,
    /// alice's keys, derived once: SHA-256 (PASSWORD-ALGORITHM 2 and
    /// MESSAGE-INTEGRITY-SHA256) and MD5 with MESSAGE-INTEGRITY. ring's
    /// SHA-256 is assembly, its SHA-1 Rust that the fuzzer instruments:
    /// signing most requests with SHA-256 makes an input several times
    /// cheaper, and covers the RFC 8489 path too.
    sha256: Signer,
    sha1: Signer,
    buf: Vec<u8>,
    /// The peer whose data arrives on the newest relay.
    peer: SocketAddr,
    /// Inputs since the engine's tables were last given back.
    since_compact: u32,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// A request of one of the STUN/TURN methods picked by `spec[0]`, with attributes read as (type, len,
/// value) from the rest of `spec`, signed as alice with a valid nonce.
fn sign(spec: &[u8], client: ClientAddr, st: &mut State, elapsed: u64, sha1: bool) -> Vec<u8> {
    use ferroturn::proto::stun::{Request, User};
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
    if st.nonces.len() > 64 {
        st.nonces.clear();
    }
    let creds = &st.creds;
    let nonce = st
        .nonces
        .entry((elapsed, client.remote.port()))
        .or_insert_with(|| creds.nonce(1_800_000_000 + elapsed, client.remote));
    if sha1 {
        r.sign_with(User::Name("alice"), "fuzz", nonce, None, &st.sha1)
    } else {
        r.sign_with(
            User::Name("alice"),
            "fuzz",
            nonce,
            Some(ALGORITHM_SHA256),
            &st.sha256,
        )
    }
}

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let st = guard.get_or_insert_with(|| {
        let t0 = Instant::now();
        State {
            e: engine(t0),
            t0,
            now: t0,
            creds: Credentials::new("fuzz", &[], &BTreeMap::new(), b"k", 600),
            nonces: HashMap::new(),
            sha256: Signer {
                key: Key::sha256("alice", "fuzz", "wonderland"),
                mac: Mac::Sha256,
            },
            sha1: Signer {
                key: Key::md5("alice", "fuzz", "wonderland"),
                mac: Mac::Sha1,
            },
            buf: vec![0u8; BUF_LEN],
            peer: "93.184.216.34:9".parse().unwrap(),
            since_compact: 0,
        }
    });
    let t0 = st.t0;
    let mut opened = Vec::new();
    // Split the input into packets at 0xFE markers.
    for (i, chunk) in data.split(|&b| b == 0xFE).enumerate() {
        let Some((&sel, packet)) = chunk.split_first() else {
            continue;
        };
        let client = ClientAddr {
            remote: SocketAddr::from(([203, 0, 113, 1], 1000 + (sel & 7) as u16)),
            via: if sel & 8 == 0 {
                Via::Udp(0)
            } else {
                Via::Stream {
                    listener: 0,
                    conn: 1,
                    tls: false,
                }
            },
        };
        // With bit 5 set the chunk becomes a correctly signed request: a
        // method and attribute TLVs, so that the fuzzer reaches past
        // authentication; with bits 6 and 7 also set, and the top bit of
        // the method byte, it is signed with MD5/SHA-1 instead of SHA-256
        // (one signed request in eight: ring's SHA-1 is Rust, instrumented
        // by the fuzzer and several times slower than its SHA-256 here).
        let signed;
        let packet = if sel & 32 != 0 && !packet.is_empty() {
            signed = sign(
                packet,
                client,
                st,
                st.now.duration_since(t0).as_secs(),
                sel & 0xC0 == 0xC0 && packet[0] & 0x80 != 0,
            );
            &signed[..]
        } else {
            packet
        };
        let _ = st.e.handle_client(st.now, client, packet);
        while let Some(o) = st.e.poll_output() {
            if let Output::OpenRelay { alloc, .. } = o {
                opened.push(alloc);
                st.e.relay_opened(st.now, alloc, sel & 16 == 0);
            }
        }
        if let Some(&id) = opened.last() {
            let n = packet.len().min(1400);
            let _ = st.e.handle_peer(
                st.now,
                id,
                st.peer,
                &mut st.buf,
                HEADROOM,
                HEADROOM + n,
            );
        }
        if i % 4 == 3 {
            st.now += Duration::from_secs(sel as u64 * 3);
            st.e.handle_timeout(st.now);
        }
        assert!(st.e.allocation_count() <= 8);
    }
    // Back to an empty engine: close everything, then move the clock past
    // every reservation (30 s) and nonce (600 s) of this input.
    st.e.close_all(st.now);
    st.now += Duration::from_secs(3600);
    st.e.handle_timeout(st.now);
    while st.e.poll_output().is_some() {}
    // Giving the tables back and growing them again costs more than the
    // rest of a short input: every 256 inputs is enough to cover it.
    st.since_compact += 1;
    if st.since_compact == 256 {
        st.since_compact = 0;
        st.e.compact();
    }
    assert_eq!(st.e.allocation_count(), 0);
    assert_eq!(st.e.free_ports(), 16);
});
