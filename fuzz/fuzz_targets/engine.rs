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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferroturn::addr::{ClientAddr, Via};
use ferroturn::auth::Credentials;
use ferroturn::config::Limits;
use ferroturn::engine::{Engine, EngineConfig, Output};
use ferroturn::policy::PeerPolicy;
use ferroturn::proto::channel_data::{BUF_LEN, HEADROOM};
use ferroturn::proto::integrity::Key;
use ferroturn::proto::stun::PASSWORD_ALGORITHMS;
use libfuzzer_sys::fuzz_target;
use ring::hmac;

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
            cfg.live.legacy_channels = true;
            cfg.live.limits = Limits {
                allocations_per_user: 8,
                total_allocations: 8,
                permissions_per_allocation: 4,
                channels_per_allocation: 4,
                connections_per_allocation: 4,
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
    /// kept by (second, client port) in 64 slots: minting one costs an HMAC.
    /// Every slot holds a string from the start, so that replacing one
    /// frees as much as it allocates (see the end of the input).
    creds: Credentials,
    nonces: Vec<((u64, u16), String)>,
    /// alice's keys, derived once: SHA-256 (PASSWORD-ALGORITHM 2 and
    /// MESSAGE-INTEGRITY-SHA256) and MD5 with MESSAGE-INTEGRITY. ring's
    /// SHA-256 is assembly, its SHA-1 Rust that the fuzzer instruments:
    /// signing most requests with SHA-256 makes an input several times
    /// cheaper, and covers the RFC 8489 path too.
    sha256: hmac::Key,
    sha1: hmac::Key,
    /// The signed request being built, and the last transaction id.
    req: Vec<u8>,
    txid: u64,
    buf: Vec<u8>,
    /// The peer whose data arrives on the newest relay.
    peer: SocketAddr,
    /// Inputs since the engine's tables were last given back.
    since_compact: u32,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Append one attribute (type, length, value, zero padding to 4 bytes).
fn put_attr(out: &mut Vec<u8>, t: u16, v: &[u8]) {
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A request of one of the STUN/TURN methods picked by `spec[0]`, with
/// attributes read as (type, len, value) from the rest of `spec`, signed as
/// alice with a valid nonce, written into `st.req`. Encoded here by hand
/// with HMAC keys made once (RFC 8489 §5, §14.5, §14.6): building it
/// through the `stun` crate, a new HMAC key each time, cost as much as
/// the engine's handling of it.
fn sign(spec: &[u8], client: ClientAddr, st: &mut State, elapsed: u64, sha1: bool) {
    // Binding, Allocate, Refresh, Send, Data, CreatePermission,
    // ChannelBind, Connect: below 0x10 a request's type is its method.
    const METHODS: [u16; 8] = [0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0x00A];
    let out = &mut st.req;
    out.clear();
    out.extend_from_slice(&METHODS[spec[0] as usize % METHODS.len()].to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x21, 0x12, 0xA4, 0x42]);
    // A new transaction id each request, as a client's would be.
    st.txid += 1;
    out.extend_from_slice(&st.txid.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    let mut rest = &spec[1..];
    while rest.len() >= 3 {
        let t = u16::from_be_bytes([rest[0], rest[1]]) % 0x40;
        let n = (rest[2] as usize).min(rest.len() - 3);
        put_attr(out, t, &rest[3..3 + n]);
        rest = &rest[3 + n..];
    }
    let at = (elapsed, client.remote.port());
    let slot = &mut st.nonces[(elapsed as usize * 8 + at.1 as usize) % 64];
    if slot.0 != at {
        *slot = (at, st.creds.nonce(1_800_000_000 + elapsed, client.remote));
    }
    let nonce = &slot.1;
    put_attr(out, 0x0006, b"alice"); // USERNAME
    put_attr(out, 0x0014, b"fuzz"); // REALM
    put_attr(out, 0x0015, nonce.as_bytes()); // NONCE
    let (key, t, n) = if sha1 {
        (&st.sha1, 0x0008, 20) // MESSAGE-INTEGRITY
    } else {
        put_attr(out, 0x8002, &PASSWORD_ALGORITHMS);
        put_attr(out, 0x001D, &[0, 2, 0, 0]); // PASSWORD-ALGORITHM: SHA-256
        (&st.sha256, 0x001C, 32) // MESSAGE-INTEGRITY-SHA256
    };
    // The length covers the integrity attribute, which the HMAC does not.
    let len = (out.len() - 20 + 4 + n) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    let tag = hmac::sign(key, out);
    put_attr(out, t, &tag.as_ref()[..n]);
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
            nonces: (0..64)
                .map(|_| ((u64::MAX, 0), String::with_capacity(64)))
                .collect(),
            sha256: hmac::Key::new(
                hmac::HMAC_SHA256,
                Key::sha256("alice", "fuzz", "wonderland").as_bytes(),
            ),
            sha1: hmac::Key::new(
                hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                Key::md5("alice", "fuzz", "wonderland").as_bytes(),
            ),
            req: Vec::with_capacity(1 << 16),
            txid: 0,
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
        let signed = sel & 32 != 0 && !packet.is_empty();
        if signed {
            let elapsed = st.now.duration_since(t0).as_secs();
            sign(
                packet,
                client,
                st,
                elapsed,
                sel & 0xC0 == 0xC0 && packet[0] & 0x80 != 0,
            );
        }
        let request = if signed { &st.req[..] } else { packet };
        let _ = st.e.handle_client(st.now, client, request);
        while let Some(o) = st.e.poll_output() {
            if let Output::OpenRelay { alloc, .. } = o {
                opened.push(alloc);
                st.e.relay_opened(st.now, alloc, sel & 16 == 0);
            }
        }
        if let Some(&id) = opened.last() {
            let n = packet.len().min(1400);
            let _ =
                st.e.handle_peer(st.now, id, st.peer, &mut st.buf, HEADROOM, HEADROOM + n);
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
    // rest of a short input, and makes the next inputs allocate more than
    // they free: with AddressSanitizer, libFuzzer then scans the whole heap
    // for leaks after each of them (several milliseconds). Once every 8192
    // inputs is enough to cover it; in between, an input frees what it
    // allocates.
    st.since_compact += 1;
    if st.since_compact == 8192 {
        st.since_compact = 0;
        st.e.compact();
    }
    assert_eq!(st.e.allocation_count(), 0);
    assert_eq!(st.e.free_ports(), 16);
});
