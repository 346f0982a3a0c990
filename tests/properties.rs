//! Property tests: random and mutated STUN/ChannelData bytes through the
//! engine never panic, state stays bounded, and every answer is small.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferroturn::addr::{AllocId, ClientAddr, Via};
use ferroturn::auth::Credentials;
use ferroturn::config::Limits;
use ferroturn::engine::{Engine, EngineConfig, Output};
use ferroturn::policy::PeerPolicy;
use ferroturn::proto::channel_data::{BUF_LEN, HEADROOM};
use ferroturn::proto::stun::{self as wire, Request};
use proptest::prelude::*;
use stun::attributes::*;
use stun::message::*;

const REALM: &str = "prop.test";
const UNIX0: u64 = 1_800_000_000;
const PERMISSIONS: u32 = 4;
const CHANNELS: u32 = 3;

fn engine(now: Instant) -> Engine {
    let mut users = BTreeMap::new();
    users.insert("alice".to_string(), "wonderland".into());
    Engine::new(
        {
            let mut cfg = EngineConfig::new(
                Credentials::new(REALM, &["s".into()], &users, b"k", 600),
                PeerPolicy::new(vec![], vec![], vec![], (1, 1)),
                "0.0.0.0".parse().unwrap(),
                "198.51.100.1".parse().unwrap(),
                (50000..50064).collect(),
            );
            cfg.relay_bind_v6 = Some("::".parse().unwrap());
            cfg.relay_public_v6 = Some("2001:db8::1".parse().unwrap());
            cfg.live.legacy_channels = false;
            cfg.live.limits = Limits {
                allocations_per_user: 100,
                total_allocations: 100,
                permissions_per_allocation: PERMISSIONS,
                channels_per_allocation: CHANNELS,
                bandwidth: 0,
                packet_rate: 0,
                unauthenticated_rate: 0,
                connections_per_allocation: 16,
            };
            cfg
        },
        now,
        UNIX0,
    )
}

fn client(i: u8) -> ClientAddr {
    let via = if i % 3 == 0 {
        Via::Stream {
            listener: 0,
            conn: i as u32,
            tls: false,
        }
    } else {
        Via::Udp(0)
    };
    ClientAddr {
        remote: SocketAddr::from(([203, 0, 113, 1], 1000 + i as u16)),
        via,
    }
}

/// Drain the engine's queue, answering relay opens; bounded.
fn drain(e: &mut Engine, now: Instant, ok: bool) -> Vec<AllocId> {
    let mut opened = Vec::new();
    for _ in 0..1000 {
        match e.poll_output() {
            Some(Output::OpenRelay { alloc, .. }) => {
                opened.push(alloc);
                e.relay_opened(now, alloc, ok);
            }
            Some(_) => {}
            None => return opened,
        }
    }
    panic!("the output queue did not drain");
}

/// Well-formed messages a real client sends, signed for `c`.
fn corpus(c: ClientAddr) -> Vec<Vec<u8>> {
    let nonce = nonce_for(c);
    let peer: SocketAddr = "93.184.216.34:9".parse().unwrap();
    let sign = |r: Request| r.sign("alice", REALM, "wonderland", &nonce);
    vec![
        Request::new(METHOD_BINDING).fingerprinted(),
        Request::new(METHOD_ALLOCATE).transport(17).bytes(),
        sign(Request::new(METHOD_ALLOCATE).transport(17)),
        sign(
            Request::new(METHOD_ALLOCATE)
                .transport(17)
                .attr(ATTR_EVEN_PORT, &[0x80]),
        ),
        sign(Request::new(METHOD_CREATE_PERMISSION).peer(peer)),
        sign(Request::new(METHOD_CHANNEL_BIND).channel(0x4000).peer(peer)),
        sign(Request::new(METHOD_REFRESH).lifetime(700)),
        sign(Request::new(METHOD_REFRESH).lifetime(0)),
        Request::indication(METHOD_SEND)
            .peer(peer)
            .attr(ATTR_DATA, b"hello")
            .bytes(),
        vec![0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0],
    ]
}

/// The nonce the test engine issues to `c` at UNIX0 (same key, same clock).
fn nonce_for(c: ClientAddr) -> String {
    let creds = Credentials::new(REALM, &["s".into()], &BTreeMap::new(), b"k", 600);
    creds.nonce(UNIX0, c.remote)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    SetLength(u16),
}

fn mutate(mut p: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        match *m {
            Mutation::Flip(i, b) if !p.is_empty() => {
                let i = i % p.len();
                p[i] ^= b;
            }
            Mutation::Truncate(n) => p.truncate(n % (p.len() + 1)),
            Mutation::Insert(i, b) => {
                let i = i % (p.len() + 1);
                p.insert(i, b);
            }
            Mutation::SetLength(l) if p.len() >= 4 => p[2..4].copy_from_slice(&l.to_be_bytes()),
            _ => {}
        }
    }
    p
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<u16>().prop_map(Mutation::SetLength),
    ]
}

fn check_bounds(e: &Engine, clients: usize) {
    assert!(
        e.allocation_count() <= clients,
        "one allocation per 5-tuple at most"
    );
    for i in 0..64 {
        if let Some(a) = e.allocation(AllocId(i)) {
            assert!(a.permissions.len() <= PERMISSIONS as usize);
            assert!(a.channels.len() <= CHANNELS as usize);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_and_create_nothing(
        packets in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..600)), 1..40)
    ) {
        let now = Instant::now();
        let mut e = engine(now);
        for (c, p) in &packets {
            let _ = e.handle_client(now, client(*c), p);
            drain(&mut e, now, true);
        }
        prop_assert_eq!(e.allocation_count(), 0);
    }

    #[test]
    fn mutated_client_messages_never_panic_and_state_stays_bounded(
        steps in prop::collection::vec(
            (0u8..4, 0usize..10, prop::collection::vec(mutation(), 0..4), 0u64..400, any::<bool>()),
            1..60,
        )
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut e = engine(t0);
        let mut opened = Vec::new();
        let mut buf = vec![0u8; BUF_LEN];
        for (c, which, muts, wait, bind_ok) in steps {
            let cl = client(c);
            // Nonces are issued at UNIX0; stay within their lifetime.
            now = (now + Duration::from_secs(wait)).min(t0 + Duration::from_secs(590));
            e.handle_timeout(now);
            let p = mutate(corpus(cl)[which].clone(), &muts);
            if let Some(f) = e.handle_client(now, cl, &p) {
                prop_assert!(f.start <= f.end && f.end <= p.len());
            }
            opened.extend(drain(&mut e, now, bind_ok));
            // Peer data on any relay that was opened, of odd sizes.
            if let Some(&id) = opened.last() {
                let n = (wait as usize * 37) % 1400;
                if let Some(out) = e.handle_peer(now, id, "93.184.216.34:9".parse().unwrap(), &mut buf, HEADROOM, HEADROOM + n) {
                    prop_assert!(out.start < out.end && out.end <= buf.len());
                    // Either ChannelData or a Data indication that decodes.
                    prop_assert!(buf[out.start] >> 6 == 1 || wire::decode(&buf[out.start..out.end]).is_some());
                }
            }
            check_bounds(&e, 4);
        }
        // Everything expires in the end.
        e.handle_timeout(t0 + Duration::from_secs(4000));
        drain(&mut e, now, true);
        prop_assert_eq!(e.allocation_count(), 0);
    }

    /// Requests made of any number of attributes of any types, signed or
    /// not: the answer is one small message, a request over the attribute
    /// limit gets 400, and UNKNOWN-ATTRIBUTES lists at most 16 types.
    #[test]
    fn answers_stay_small_whatever_the_attributes(
        method in prop::sample::select(vec![METHOD_BINDING, METHOD_ALLOCATE, METHOD_REFRESH, METHOD_CHANNEL_BIND]),
        attrs in prop::collection::vec((any::<u16>(), 0usize..40), 0..120),
        signed in any::<bool>(),
    ) {
        let now = Instant::now();
        let mut e = engine(now);
        let c = client(1);
        let mut r = Request::new(method);
        for (t, n) in &attrs {
            // Not the integrity or fingerprint types: those end a message.
            if ![0x0008, 0x001C, 0x8028].contains(t) {
                r = r.attr(AttrType(*t), &vec![0x41; *n]);
            }
        }
        let p = if signed { r.sign("alice", REALM, "wonderland", &nonce_for(c)) } else { r.bytes() };
        let count = wire::count_attributes(&p[20..]);
        let _ = e.handle_client(now, c, &p);
        let mut answers = Vec::new();
        while let Some(o) = e.poll_output() {
            if let Output::Transmit { data, .. } = o {
                answers.push(data);
            } else if let Output::OpenRelay { alloc, .. } = o {
                e.relay_opened(now, alloc, true);
            }
        }
        prop_assert_eq!(answers.len(), 1);
        let a = &answers[0];
        prop_assert!(a.len() <= 200, "{} byte answer", a.len());
        if count.is_err() {
            prop_assert_eq!(wire::reply_error_code(a), Some(400));
        }
        let m = wire::decode(a).expect("a STUN answer");
        if let Some(v) = wire::attr(&m, ATTR_UNKNOWN_ATTRIBUTES) {
            prop_assert!(v.len() / 2 <= wire::MAX_UNKNOWN_LISTED);
        }
    }
}
