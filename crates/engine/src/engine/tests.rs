//! Engine tests driven with values: every response code and every timer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun::attributes::*;
use stun::integrity::MessageIntegrity;
use stun::message::*;

use super::*;
use super::{ATTR_ADDITIONAL_ADDRESS_FAMILY, ATTR_ADDRESS_ERROR_CODE};
use crate::addr::Via;
use crate::proto::channel_data::{self, HEADROOM};
use crate::proto::integrity::{self, ALGORITHM_SHA256, Key, Mac, Signer};
use crate::proto::stun as wire;

mod cluster;
mod discovery;
mod grants;
mod mobility;
mod parking;
mod pool;
mod spread;
mod tcp;
mod usage;

const REALM: &str = "example.org";
const UNIX0: u64 = 1_800_000_000;
const PEER: &str = "93.184.216.34:9000";
const PEER2: &str = "93.184.216.35:9001";

fn config(ports: Vec<u16>) -> EngineConfig {
    let mut users = BTreeMap::new();
    users.insert("alice".to_string(), "wonderland".into());
    users.insert("bob".to_string(), "builder".into());
    let mut cfg = EngineConfig::new(
        Credentials::new(REALM, &["s3cret".into()], &users, b"nonce-key", 600),
        PeerPolicy::new(
            vec![],
            vec![],
            vec!["198.51.100.1".parse().unwrap()],
            (50000, 50009),
        ),
        "0.0.0.0".parse().unwrap(),
        "198.51.100.1".parse().unwrap(),
        ports,
    );
    cfg.seed = 42;
    cfg.live.limits = Limits {
        allocations_per_user: 10,
        total_allocations: 100,
        permissions_per_allocation: 10,
        channels_per_allocation: 10,
        bandwidth: 0,
        packet_rate: 0,
        unauthenticated_rate: 0,
        connections_per_allocation: 16,
    };
    cfg
}

struct T {
    e: Engine,
    now: Instant,
    nonce: String,
    bind_ok: bool,
    /// Grants drained with the answers, in order (see `grants.rs`).
    grants: Vec<Grant>,
    /// Where each relay socket was asked for, in order.
    opened: Vec<SocketAddr>,
    /// Moves to other engines (RFC 8016), in order (see `mobility.rs`).
    handoffs: Vec<crate::engine::mobility::Handoff>,
    /// Usage facts drained with the answers, in order (see `usage.rs`).
    usage: Vec<super::usage::Usage>,
    /// Parked and closed parked relay sockets, in order (see `parking.rs`).
    parking: Vec<Output>,
}

fn client(port: u16) -> ClientAddr {
    ClientAddr {
        remote: SocketAddr::new("203.0.113.5".parse().unwrap(), port),
        via: Via::Udp(0),
    }
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Requests are built with the library's client-side builder.
type Req = wire::Request;

trait Sign {
    fn sign_as(self, user: &str, pass: &str, nonce: &str) -> Vec<u8>;
}

impl Sign for Req {
    fn sign_as(self, user: &str, pass: &str, nonce: &str) -> Vec<u8> {
        self.sign(user, REALM, pass, nonce)
    }
}

fn code(m: &Message) -> Option<u16> {
    wire::error_code(m)
}

impl T {
    fn new() -> Self {
        Self::with(config((50000..50010).collect()))
    }
    fn with(cfg: EngineConfig) -> Self {
        let now = Instant::now();
        let mut t = T {
            e: Engine::new(cfg, now, UNIX0),
            now,
            nonce: String::new(),
            bind_ok: true,
            grants: Vec::new(),
            opened: Vec::new(),
            handoffs: Vec::new(),
            usage: Vec::new(),
            parking: Vec::new(),
        };
        // Learn a nonce the way a client does: an unauthenticated Allocate.
        let r = t.send(client(1), &Req::new(METHOD_ALLOCATE).transport(17).bytes());
        t.nonce = wire::text(&r[0], ATTR_NONCE).unwrap();
        t
    }

    /// Feed a packet; answer OpenRelay; return the responses to `c`.
    fn send(&mut self, c: ClientAddr, p: &[u8]) -> Vec<Message> {
        let fwd = self.e.handle_client(self.now, c, p);
        assert!(fwd.is_none(), "a request relayed data");
        self.drain(c)
    }

    fn drain(&mut self, c: ClientAddr) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(o) = self.e.poll_output() {
            match o {
                Output::Transmit { to, data } => {
                    assert_eq!(to, c);
                    out.push(wire::decode(&data).expect("valid response"));
                }
                Output::OpenRelay { alloc, bind } => {
                    self.opened.push(bind);
                    self.e.relay_opened(self.now, alloc, self.bind_ok)
                }
                Output::CloseRelay { .. } | Output::LookupUser { .. } => {}
                Output::Grant(g) => self.grants.push(g),
                Output::Handoff(h) => self.handoffs.push(*h),
                Output::Usage(u) => self.usage.push(*u),
                o @ (Output::ParkRelay { .. } | Output::CloseParked { .. }) => self.parking.push(o),
                // TCP allocations (RFC 6062) have tests of their own (tcp.rs).
                o @ (Output::OpenTcpRelay { .. }
                | Output::ConnectPeer { .. }
                | Output::BindData { .. }
                | Output::ClosePeerConn { .. }) => panic!("unexpected {o:?}"),
            }
        }
        out
    }

    fn one(&mut self, c: ClientAddr, p: &[u8]) -> Message {
        let mut r = self.send(c, p);
        assert_eq!(r.len(), 1, "expected one answer");
        r.remove(0)
    }

    /// A nonce valid for `c` now.
    fn nonce_for(&self, c: ClientAddr) -> String {
        self.e
            .cfg
            .live
            .credentials
            .nonce(self.e.unix(self.now), c.remote)
    }

    fn allocate(&mut self, c: ClientAddr) -> SocketAddr {
        let n = self.nonce_for(c);
        let r = self.one(
            c,
            &Req::new(METHOD_ALLOCATE)
                .transport(17)
                .sign_as("alice", "wonderland", &n),
        );
        assert_eq!(code(&r), None, "allocate failed");
        let v = wire::attr(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
        wire::read_xor_address(v, &r.transaction_id.0).unwrap()
    }

    fn signed(&mut self, c: ClientAddr, req: Req) -> Message {
        let n = self.nonce_for(c);
        self.one(c, &req.sign_as("alice", "wonderland", &n))
    }

    /// ChannelBind `n` to peer `p`: the error code, if any.
    fn bind(&mut self, c: ClientAddr, n: u16, p: &str) -> Option<u16> {
        code(&self.signed(c, Req::new(METHOD_CHANNEL_BIND).channel(n).peer(peer(p))))
    }

    /// CreatePermission for peer `p`: the error code, if any.
    fn permit(&mut self, c: ClientAddr, p: &str) -> Option<u16> {
        code(&self.signed(c, Req::new(METHOD_CREATE_PERMISSION).peer(peer(p))))
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.e.handle_timeout(self.now);
    }
}

fn key() -> Key {
    Key::md5("alice", REALM, "wonderland")
}

/// Whether a response carries integrity that verifies with `k`.
fn signed_with(r: &Message, k: &Key) -> bool {
    integrity::verify(r, k).is_some()
}

#[test]
fn binding_returns_xor_mapped_address_and_mirrors_fingerprint() {
    let mut t = T::new();
    let c = client(7);
    let r = t.one(c, &Req::new(METHOD_BINDING).bytes());
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let a = wire::read_xor_address(
        wire::attr(&r, ATTR_XORMAPPED_ADDRESS).unwrap(),
        &r.transaction_id.0,
    );
    assert_eq!(a, Some(c.remote));
    assert!(!wire::has_fingerprint(&r));
    let r = t.one(c, &Req::new(METHOD_BINDING).fingerprinted());
    assert!(wire::has_fingerprint(&r));
}

#[test]
fn missing_integrity_gets_401_with_realm_and_nonce() {
    let mut t = T::new();
    let r = t.one(client(2), &Req::new(METHOD_ALLOCATE).transport(17).bytes());
    assert_eq!(code(&r), Some(401));
    assert_eq!(wire::text(&r, ATTR_REALM).as_deref(), Some(REALM));
    assert!(wire::text(&r, ATTR_NONCE).is_some());
    assert!(!wire::has_integrity(&r));
    assert_eq!(t.e.allocation_count(), 0);
}

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let mut t = T::new();
    let n = t.nonce.clone();
    let r = t.one(
        client(1),
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("alice", "nope", &n),
    );
    assert_eq!(code(&r), Some(401));
    let r = t.one(
        client(1),
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("mallory", "x", &n),
    );
    assert_eq!(code(&r), Some(401));
    // One wrong password, one unknown user.
    assert_eq!(t.e.stats.auth_failures, [0, 0, 0, 1, 0, 1]);
    assert_eq!(
        t.e.stats.errors[1][2], 3,
        "three 401s to Allocate, counting the first challenge"
    );
    assert_eq!(t.e.stats.requests[1], 3);
}

#[test]
fn integrity_without_nonce_gets_400() {
    let mut t = T::new();
    // USERNAME, then MESSAGE-INTEGRITY: no REALM, no NONCE.
    let mut m = wire::decode(
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_USERNAME, b"alice")
            .bytes(),
    )
    .unwrap();
    MessageIntegrity::new_long_term_integrity("alice".into(), REALM.into(), "wonderland".into())
        .add_to(&mut m)
        .unwrap();
    let r = t.one(client(1), &m.raw);
    assert_eq!(code(&r), Some(400));
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut t = T::new();
    t.advance(601);
    let old = t.nonce.clone();
    let r = t.one(
        client(1),
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("alice", "wonderland", &old),
    );
    assert_eq!(code(&r), Some(438));
    let fresh = wire::text(&r, ATTR_NONCE).unwrap();
    assert_ne!(fresh, old);
    t.nonce = fresh;
    t.allocate(client(1));
}

#[test]
fn nonce_from_another_client_is_stale() {
    let mut t = T::new();
    let n = t.nonce.clone();
    let r = t.one(
        client(99),
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("alice", "wonderland", &n),
    );
    assert_eq!(code(&r), Some(438));
}

#[test]
fn allocate_answers_relayed_mapped_lifetime_and_integrity() {
    let mut t = T::new();
    let c = client(1);
    let n = t.nonce.clone();
    let r = t.one(
        c,
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("alice", "wonderland", &n),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    assert!(signed_with(&r, &key()));
    let relayed = wire::read_xor_address(
        wire::attr(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap(),
        &r.transaction_id.0,
    )
    .unwrap();
    assert_eq!(relayed.ip().to_string(), "198.51.100.1");
    assert!((50000..50010).contains(&relayed.port()));
    let mapped = wire::read_xor_address(
        wire::attr(&r, ATTR_XORMAPPED_ADDRESS).unwrap(),
        &r.transaction_id.0,
    );
    assert_eq!(mapped, Some(c.remote));
    assert_eq!(wire::u32_attr(&r, ATTR_LIFETIME), Some(Ok(600)));
    assert_eq!(t.e.allocation_count(), 1);
}

#[test]
fn lifetime_is_clamped_between_default_and_maximum() {
    for (asked, got) in [(10, 600), (1000, 1000), (100_000, 3600)] {
        let mut t = T::new();
        let r = t.signed(
            client(1),
            Req::new(METHOD_ALLOCATE).transport(17).lifetime(asked),
        );
        assert_eq!(
            wire::u32_attr(&r, ATTR_LIFETIME),
            Some(Ok(got)),
            "asked {asked}"
        );
    }
}

/// The lifetimes are live settings: a reload changes what the next
/// request is granted (RFC 8656 §7.2), not what was granted before.
#[test]
fn update_applies_new_lifetimes_to_later_requests() {
    let mut t = T::new();
    let ask = |t: &mut T, c, asked| {
        let r = t.signed(c, Req::new(METHOD_ALLOCATE).transport(17).lifetime(asked));
        wire::u32_attr(&r, ATTR_LIFETIME)
    };
    assert_eq!(ask(&mut t, client(1), 10), Some(Ok(600)));
    t.e.update(Update {
        lifetime: Duration::from_secs(300),
        max_lifetime: Duration::from_secs(900),
        ..t.e.cfg.live.clone()
    });
    assert_eq!(ask(&mut t, client(2), 10), Some(Ok(300)));
    assert_eq!(ask(&mut t, client(3), 100_000), Some(Ok(900)));
}

#[test]
fn second_allocate_gets_437_but_a_retransmission_the_same_answer() {
    let mut t = T::new();
    let c = client(1);
    let n = t.nonce.clone();
    let req = Req::new(METHOD_ALLOCATE)
        .transport(17)
        .sign_as("alice", "wonderland", &n);
    t.e.handle_client(t.now, c, &req);
    let first = match t.e.poll_output() {
        Some(Output::OpenRelay { alloc, .. }) => {
            t.e.relay_opened(t.now, alloc, true);
            match t.e.poll_output() {
                Some(Output::Transmit { data, .. }) => data,
                o => panic!("{o:?}"),
            }
        }
        o => panic!("{o:?}"),
    };
    t.e.handle_client(t.now, c, &req);
    match t.e.poll_output() {
        Some(Output::Transmit { data, .. }) => assert_eq!(data, first),
        o => panic!("{o:?}"),
    }
    let r = t.signed(c, Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(437));
    assert!(signed_with(&r, &key()));
}

#[test]
fn transport_other_than_udp_gets_442_and_missing_gets_400() {
    let mut t = T::new();
    // SCTP; TCP is RFC 6062's, 400 over UDP (tests/tcp.rs).
    let r = t.signed(client(1), Req::new(METHOD_ALLOCATE).transport(132));
    assert_eq!(code(&r), Some(442));
    let r = t.signed(client(1), Req::new(METHOD_ALLOCATE));
    assert_eq!(code(&r), Some(400));
    assert_eq!(t.e.allocation_count(), 0);
}

#[test]
fn ipv6_relay_request_gets_440() {
    let mut t = T::new();
    let r = t.signed(
        client(1),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    assert_eq!(code(&r), Some(440));
}

#[test]
fn no_free_port_gets_508() {
    let mut t = T::with(config(vec![50000]));
    t.allocate(client(1));
    let r = t.signed(client(2), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(508));
}

#[test]
fn failed_binds_try_other_ports_then_508() {
    let mut t = T::new();
    t.bind_ok = false;
    let r = t.signed(client(1), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(508));
    assert_eq!(t.e.allocation_count(), 0);
    assert_eq!(t.e.free_ports(), 10, "every port went back to the pool");
    t.bind_ok = true;
    t.allocate(client(1));
}

#[test]
fn even_port_is_honoured() {
    let mut t = T::new();
    let r = t.signed(
        client(1),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_EVEN_PORT, &[0]),
    );
    let relayed = wire::read_xor_address(
        wire::attr(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap(),
        &r.transaction_id.0,
    )
    .unwrap();
    assert_eq!(relayed.port() % 2, 0);
}

#[test]
fn refresh_extends_and_zero_deletes() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let r = t.signed(c, Req::new(METHOD_REFRESH).lifetime(1200));
    assert_eq!(wire::u32_attr(&r, ATTR_LIFETIME), Some(Ok(1200)));
    t.advance(1000);
    assert_eq!(
        t.e.allocation_count(),
        1,
        "refresh moved the expiry past 600 s"
    );
    let r = t.signed(c, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(code(&r), None);
    assert_eq!(wire::u32_attr(&r, ATTR_LIFETIME), Some(Ok(0)));
    assert_eq!(t.e.allocation_count(), 0);
    assert_eq!(t.e.free_ports(), 10);
    let r = t.signed(c, Req::new(METHOD_REFRESH));
    assert_eq!(code(&r), Some(437));
}

#[test]
fn requests_without_allocation_get_437() {
    let mut t = T::new();
    let c = client(1);
    for req in [
        Req::new(METHOD_REFRESH),
        Req::new(METHOD_CREATE_PERMISSION).peer(peer(PEER)),
        Req::new(METHOD_CHANNEL_BIND)
            .channel(0x4000)
            .peer(peer(PEER)),
    ] {
        let r = t.signed(c, req);
        assert_eq!(code(&r), Some(437));
    }
}

#[test]
fn another_users_request_gets_441() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let n = t.nonce.clone();
    let r = t.one(c, &Req::new(METHOD_REFRESH).sign_as("bob", "builder", &n));
    assert_eq!(code(&r), Some(441));
}

#[test]
fn create_permission_installs_every_peer() {
    let mut t = T::new();
    let c = client(1);
    let relay = t.allocate(c);
    let _ = relay;
    let r = t.signed(
        c,
        Req::new(METHOD_CREATE_PERMISSION)
            .peer(peer(PEER))
            .peer(peer(PEER2)),
    );
    assert_eq!(code(&r), None);
    assert!(signed_with(&r, &key()));
    let id = t.e.allocation_of(c).unwrap();
    let a = t.e.allocation(id).unwrap();
    assert!(a.permits(peer(PEER), t.now, |_, _| true));
    assert!(a.permits(peer(PEER2), t.now, |_, _| true));
}

#[test]
fn denied_peer_gets_403_and_installs_nothing() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    for bad in [
        "127.0.0.1:80",
        "0.0.0.0:80",
        "10.0.0.1:80",
        "169.254.169.254:80",
    ] {
        let r = t.signed(
            c,
            Req::new(METHOD_CREATE_PERMISSION)
                .peer(peer(PEER))
                .peer(peer(bad)),
        );
        assert_eq!(code(&r), Some(403), "{bad}");
        assert_eq!(t.bind(c, 0x4001, bad), Some(403), "{bad}");
    }
    let id = t.e.allocation_of(c).unwrap();
    assert!(
        !t.e.allocation(id)
            .unwrap()
            .permits(peer(PEER), t.now, |_, _| true)
    );
    assert_eq!(t.e.stats.policy_denials, 8);
}

#[test]
fn own_relay_address_is_a_valid_peer() {
    let mut t = T::new();
    let a = client(1);
    let b = client(2);
    let _ = t.allocate(a);
    let rb = t.allocate(b);
    let r = t.signed(a, Req::new(METHOD_CREATE_PERMISSION).peer(rb));
    assert_eq!(code(&r), None);
}

#[test]
fn permission_without_peer_gets_400_and_ipv6_peer_443() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let r = t.signed(c, Req::new(METHOD_CREATE_PERMISSION));
    assert_eq!(code(&r), Some(400));
    assert_eq!(t.permit(c, "[2606:4700::1]:80"), Some(443));
}

#[test]
fn channel_numbers_outside_range_get_400() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    for n in [0x0000, 0x3FFF, 0x5000, 0x7FFF, 0xFFFF] {
        assert_eq!(t.bind(c, n, PEER), Some(400), "{n:#x}");
    }
    for n in [0x4000, 0x4FFF] {
        let p = if n == 0x4000 { PEER } else { PEER2 };
        assert_eq!(t.bind(c, n, p), None, "{n:#x}");
    }
    let r = t.signed(c, Req::new(METHOD_CHANNEL_BIND).peer(peer(PEER)));
    assert_eq!(code(&r), Some(400), "missing CHANNEL-NUMBER");
}

#[test]
fn channel_conflicts_get_400_and_rebinding_refreshes() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    assert_eq!(
        t.bind(c, 0x4000, PEER2),
        Some(400),
        "number bound to another peer"
    );
    assert_eq!(
        t.bind(c, 0x4001, PEER),
        Some(400),
        "peer bound to another number"
    );
    assert_eq!(t.bind(c, 0x4000, PEER), None, "same binding refreshes");
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let mut t = T::new();
    let c = client(1);
    let r = t.signed(
        c,
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(AttrType(0x0031), &[0; 4]),
    );
    assert_eq!(code(&r), Some(420));
    let v = wire::attr(&r, ATTR_UNKNOWN_ATTRIBUTES).unwrap();
    assert_eq!(v, &[0x00, 0x31]);
    assert!(signed_with(&r, &key()));
    let r = t.one(
        c,
        &Req::new(METHOD_BINDING)
            .attr(AttrType(0x0031), &[0; 4])
            .bytes(),
    );
    assert_eq!(code(&r), Some(420));
    // Comprehension-optional attributes are ignored.
    let r = t.one(
        c,
        &Req::new(METHOD_BINDING)
            .attr(AttrType(0x8031), &[0; 4])
            .bytes(),
    );
    assert_eq!(code(&r), None);
}

#[test]
fn unknown_method_gets_400() {
    let mut t = T::new();
    // Connect is known since RFC 6062 (tests/tcp.rs); Data is an
    // indication, never a request.
    let r = t.one(client(1), &Req::new(METHOD_DATA).bytes());
    assert_eq!(code(&r), Some(400));
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let mut t = T::new();
    let c = client(1);
    let good = Req::new(METHOD_BINDING).bytes();
    let mut cases: Vec<Vec<u8>> = vec![vec![], vec![0xFF; 30], good[..19].to_vec()];
    let mut bad_cookie = good.clone();
    bad_cookie[5] ^= 1;
    cases.push(bad_cookie);
    let mut bad_len = good.clone();
    bad_len[3] = 4;
    cases.push(bad_len);
    let mut truncated_attr = Req::new(METHOD_BINDING)
        .attr(ATTR_SOFTWARE, b"abcd")
        .bytes();
    truncated_attr[22] = 0;
    truncated_attr[23] = 40;
    cases.push(truncated_attr);
    let n = cases.len() as u64;
    for p in cases {
        assert!(t.send(c, &p).is_empty());
    }
    assert_eq!(t.e.stats.malformed, n);
}

/// Allocate, bind channel 0x4000 to PEER, and return the allocation id.
fn bound(t: &mut T, c: ClientAddr) -> AllocId {
    t.allocate(c);
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    t.e.allocation_of(c).unwrap()
}

#[test]
fn channel_data_relays_both_ways() {
    let mut t = T::new();
    let c = client(1);
    let id = bound(&mut t, c);
    let pkt = [0x40, 0x00, 0x00, 0x03, b'a', b'b', b'c', 0];
    let f = t.e.handle_client(t.now, c, &pkt).unwrap();
    assert_eq!(
        f,
        ToPeer {
            relay: id,
            peer: PeerAddr(peer(PEER)),
            start: 4,
            end: 7
        }
    );
    // Unbound channel: dropped.
    assert!(
        t.e.handle_client(t.now, c, &[0x40, 0x01, 0x00, 0x00])
            .is_none()
    );
    // Another client's 5-tuple: dropped.
    assert!(t.e.handle_client(t.now, client(9), &pkt).is_none());

    let mut buf = vec![0u8; channel_data::BUF_LEN];
    buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"hello");
    let out =
        t.e.handle_peer(t.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 5)
            .unwrap();
    assert_eq!(out.client, c);
    assert_eq!(
        &buf[out.start..out.end],
        &[0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']
    );

    // Over a stream transport the frame is padded to 4 bytes.
    let s = ClientAddr {
        remote: c.remote,
        via: Via::Stream {
            listener: 0,
            conn: 3,
            tls: false,
        },
    };
    let id = bound(&mut t, s);
    let out =
        t.e.handle_peer(t.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 5)
            .unwrap();
    assert_eq!(out.end - out.start, 12);
}

#[test]
fn peer_data_without_channel_becomes_data_indication() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    t.signed(c, Req::new(METHOD_CREATE_PERMISSION).peer(peer(PEER2)));
    let id = t.e.allocation_of(c).unwrap();
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    buf[HEADROOM..HEADROOM + 3].copy_from_slice(b"xyz");
    let out =
        t.e.handle_peer(t.now, id, peer(PEER2), &mut buf, HEADROOM, HEADROOM + 3)
            .unwrap();
    let m = wire::decode(&buf[out.start..out.end]).unwrap();
    assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    assert_eq!(wire::attr(&m, ATTR_DATA), Some(&b"xyz"[..]));
    let from = wire::read_xor_address(
        wire::attr(&m, ATTR_XOR_PEER_ADDRESS).unwrap(),
        &m.transaction_id.0,
    );
    assert_eq!(from, Some(peer(PEER2)));
    // No permission for this peer: dropped.
    assert!(
        t.e.handle_peer(
            t.now,
            id,
            peer("93.184.216.99:1"),
            &mut buf,
            HEADROOM,
            HEADROOM + 3
        )
        .is_none()
    );
}

#[test]
fn send_indication_needs_a_permission() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let send = |p: SocketAddr| {
        Req::indication(METHOD_SEND)
            .peer(p)
            .attr(ATTR_DATA, b"hello")
            .bytes()
    };
    let pkt = send(peer(PEER));
    assert!(t.e.handle_client(t.now, c, &pkt).is_none());
    t.signed(c, Req::new(METHOD_CREATE_PERMISSION).peer(peer(PEER)));
    let f = t.e.handle_client(t.now, c, &pkt).unwrap();
    assert_eq!(&pkt[f.start..f.end], b"hello");
    assert_eq!(f.peer, PeerAddr(peer(PEER)));
}

#[test]
fn permissions_expire_after_300_seconds() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    t.signed(c, Req::new(METHOD_CREATE_PERMISSION).peer(peer(PEER)));
    let id = t.e.allocation_of(c).unwrap();
    assert_eq!(t.e.poll_timeout(), Some(t.now + Duration::from_secs(300)));
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    t.advance(299);
    assert!(
        t.e.handle_peer(t.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 1)
            .is_some()
    );
    t.advance(1);
    assert!(
        t.e.handle_peer(t.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 1)
            .is_none()
    );
    assert!(
        t.e.allocation(id).unwrap().permissions.is_empty(),
        "timer swept it"
    );
}

const PEER3: &str = "93.184.216.36:9002";

#[test]
fn an_expired_channel_holds_its_number_and_peer_for_five_minutes() {
    // RFC 8656 §12: for 5 minutes after a binding expires, its number
    // binds to no other peer and its peer to no other number.
    let mut t = T::new();
    let c = client(1);
    let id = bound(&mut t, c);
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(3600));
    t.advance(600);
    assert!(t.e.allocation(id).unwrap().channels.is_empty(), "expired");
    assert_eq!(
        t.bind(c, 0x4000, PEER2),
        Some(400),
        "number to another peer"
    );
    assert_eq!(t.bind(c, 0x4001, PEER), Some(400), "peer to another number");
    assert_eq!(t.bind(c, 0x4002, PEER2), None, "an unrelated pair binds");
    t.advance(299);
    assert_eq!(t.bind(c, 0x4000, PEER3), Some(400), "still held at 899 s");
    t.advance(1);
    // The hold ends 300 s after the expiry (600 s).
    assert_eq!(t.bind(c, 0x4000, PEER3), None, "free at 900 s");
    assert_eq!(t.bind(c, 0x4001, PEER), None, "free at 900 s");
    assert!(t.e.allocation(id).unwrap().held_channels.is_empty());
}

#[test]
fn a_held_pair_binds_again_and_relays() {
    let mut t = T::new();
    let c = client(1);
    let id = bound(&mut t, c);
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(3600));
    t.advance(600);
    let pkt = [0x40, 0x00, 0x00, 0x00];
    assert!(t.e.handle_client(t.now, c, &pkt).is_none(), "expired");
    assert_eq!(t.bind(c, 0x4000, PEER), None, "the same pair");
    let a = t.e.allocation(id).unwrap();
    assert_eq!(a.channels.len(), 1);
    assert!(a.held_channels.is_empty(), "live again, not held");
    assert!(t.e.handle_client(t.now, c, &pkt).is_some(), "relays");
    // It expires again and is held again, from its new expiry.
    t.advance(600);
    assert_eq!(t.bind(c, 0x4000, PEER2), Some(400));
    t.advance(300);
    assert_eq!(t.bind(c, 0x4000, PEER2), None);
}

#[test]
fn held_channels_take_no_quota_and_stay_within_it() {
    // channels_per_allocation is 10. Holds do not count against it (a
    // client binds new pairs at once), and there are never more of them
    // than live bindings 5 minutes earlier.
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let id = t.e.allocation_of(c).unwrap();
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(3600));
    let ip = |i: u16| format!("93.184.216.{}:9000", 40 + i);
    for round in 0..3u16 {
        for i in 0..10 {
            let n = 0x4000 + round * 10 + i;
            assert_eq!(
                t.bind(c, n, &ip(round * 10 + i)),
                None,
                "round {round} #{i}"
            );
        }
        let peer_ip = ip(round * 10 + 10);
        assert_eq!(t.bind(c, 0x4FFF, &peer_ip), Some(508), "the quota");
        t.advance(600);
        let a = t.e.allocation(id).unwrap();
        assert_eq!(a.channels.len(), 0);
        assert_eq!(
            a.held_channels.len(),
            10,
            "round {round}: only this round's"
        );
        // Keep the allocation alive.
        t.signed(c, Req::new(METHOD_REFRESH).lifetime(3600));
    }
}

#[test]
fn channels_expire_after_600_seconds_and_fall_back_to_data_indications() {
    let mut t = T::new();
    let c = client(1);
    let id = bound(&mut t, c);
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(3600));
    // Keep the permission alive past the channel's life.
    for _ in 0..2 {
        t.advance(290);
        t.signed(c, Req::new(METHOD_CREATE_PERMISSION).peer(peer(PEER)));
    }
    let pkt = [0x40, 0x00, 0x00, 0x00];
    assert!(t.e.handle_client(t.now, c, &pkt).is_some());
    t.advance(20);
    assert!(
        t.e.handle_client(t.now, c, &pkt).is_none(),
        "channel expired at 600 s"
    );
    assert!(t.e.allocation(id).unwrap().channels.is_empty());
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    let out =
        t.e.handle_peer(t.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 1)
            .unwrap();
    assert!(
        wire::decode(&buf[out.start..out.end]).is_some(),
        "a Data indication now"
    );
}

#[test]
fn allocations_expire_and_close_their_relay() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let id = t.e.allocation_of(c).unwrap();
    t.advance(599);
    assert_eq!(t.e.allocation_count(), 1);
    t.now += Duration::from_secs(1);
    assert!(t.e.poll_timeout().unwrap() <= t.now);
    t.e.handle_timeout(t.now);
    assert_eq!(t.e.allocation_count(), 0);
    assert_eq!(t.e.poll_output(), Some(Output::CloseRelay { alloc: id }));
    assert_eq!(t.e.stats.allocations_expired, 1);
    let r = t.signed(c, Req::new(METHOD_REFRESH));
    assert_eq!(code(&r), Some(437));
}

#[test]
fn rest_credentials_verify_until_they_expire() {
    let mut t = T::new();
    let (u, p) = crate::auth::rest_credentials("s3cret", "carol", UNIX0 + 100);
    let n = t.nonce.clone();
    let r = t.one(
        client(1),
        &Req::new(METHOD_ALLOCATE).transport(17).sign_as(&u, &p, &n),
    );
    assert_eq!(code(&r), None);
    let (u, p) = crate::auth::rest_credentials("s3cret", "carol", UNIX0 - 1);
    let n2 = t.nonce_for(client(2));
    let r = t.one(
        client(2),
        &Req::new(METHOD_ALLOCATE).transport(17).sign_as(&u, &p, &n2),
    );
    assert_eq!(code(&r), Some(401));
    let (u, p) = crate::auth::rest_credentials("wrong", "carol", UNIX0 + 100);
    let r = t.one(client(1), &Req::new(METHOD_REFRESH).sign_as(&u, &p, &n));
    assert_eq!(code(&r), Some(401));
}

/// An Allocate from `c` with EVEN-PORT's R bit: the next port is reserved.
fn reserve_pair(t: &mut T, c: ClientAddr) -> Message {
    t.signed(
        c,
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_EVEN_PORT, &[0x80]),
    )
}

#[test]
fn even_port_with_r_bit_reserves_the_next_port_for_its_token() {
    let mut t = T::new();
    let r = reserve_pair(&mut t, client(1));
    let relayed = wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed.port() % 2, 0);
    let token = wire::attr(&r, ATTR_RESERVATION_TOKEN).unwrap().to_vec();
    assert_eq!(token.len(), 8);
    // The token with EVEN-PORT is a 400.
    let r = t.signed(
        client(2),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_EVEN_PORT, &[0])
            .attr(ATTR_RESERVATION_TOKEN, &token),
    );
    assert_eq!(code(&r), Some(400));
    let r = t.signed(
        client(2),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_RESERVATION_TOKEN, &token),
    );
    assert_eq!(
        wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS)
            .unwrap()
            .port(),
        relayed.port() + 1
    );
    // A token works once.
    let r = t.signed(
        client(3),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_RESERVATION_TOKEN, &token),
    );
    assert_eq!(code(&r), Some(508));
}

#[test]
fn unredeemed_reservations_give_their_port_back_after_30_seconds() {
    let mut t = T::new();
    reserve_pair(&mut t, client(1));
    assert_eq!(t.e.free_ports(), 8);
    assert_eq!(t.e.poll_timeout(), Some(t.now + Duration::from_secs(30)));
    t.advance(30);
    assert_eq!(t.e.free_ports(), 9);
}

#[test]
fn legacy_channel_numbers_are_accepted_only_when_configured() {
    let mut cfg = config((50000..50010).collect());
    cfg.live.legacy_channels = true;
    let mut t = T::with(cfg);
    let c = client(1);
    t.allocate(c);
    assert_eq!(t.bind(c, 0x7FFF, PEER), None);
    assert_eq!(t.bind(c, 0x8000, PEER2), Some(400));
    let f =
        t.e.handle_client(t.now, c, &[0x7F, 0xFF, 0x00, 0x01, 9, 0, 0, 0])
            .unwrap();
    assert_eq!(f.peer, PeerAddr(peer(PEER)));
}

// ---- Secure by default: algorithms, quotas, ceilings, expiry, policy ----

fn with_limits(f: impl FnOnce(&mut Limits)) -> T {
    let mut cfg = config((50000..50040).collect());
    f(&mut cfg.live.limits);
    T::with(cfg)
}

#[test]
fn challenge_offers_password_algorithms_and_a_nonce_cookie() {
    let mut t = T::new();
    let r = t.one(client(4), &Req::new(METHOD_ALLOCATE).transport(17).bytes());
    assert_eq!(
        wire::attr(&r, ATTR_PASSWORD_ALGORITHMS),
        Some(&wire::PASSWORD_ALGORITHMS[..])
    );
    assert!(wire::text(&r, ATTR_NONCE).unwrap().starts_with("obMatJos2"));
}

#[test]
fn sha256_password_algorithm_and_integrity_verify_and_are_mirrored() {
    let mut t = T::new();
    let c = client(1);
    let n = t.nonce_for(c);
    let key = Key::sha256("alice", REALM, "wonderland");
    for mac in [Mac::Sha256, Mac::Sha1] {
        let signer = Signer { key, mac };
        let req = Req::new(METHOD_REFRESH).sign_with(
            wire::User::Name("alice"),
            REALM,
            &n,
            Some(ALGORITHM_SHA256),
            &signer,
        );
        let r = t.one(c, &req);
        // No allocation yet: 437, but signed back with the request's attribute.
        assert_eq!(code(&r), Some(437));
        assert_eq!(integrity::verify(&r, &key), Some(mac));
    }
    let signer = Signer {
        key,
        mac: Mac::Sha256,
    };
    let req = Req::new(METHOD_ALLOCATE).transport(17).sign_with(
        wire::User::Name("alice"),
        REALM,
        &n,
        Some(ALGORITHM_SHA256),
        &signer,
    );
    let r = t.one(c, &req);
    assert_eq!(code(&r), None);
    assert_eq!(integrity::verify(&r, &key), Some(Mac::Sha256));
    // A later request signed the old way still works for the same user.
    let r = t.signed(c, Req::new(METHOD_REFRESH));
    assert_eq!(code(&r), None);
}

#[test]
fn password_algorithm_bid_down_gets_400() {
    let mut t = T::new();
    let c = client(1);
    let n = t.nonce_for(c);
    let signer = Signer {
        key: Key::md5("alice", REALM, "wonderland"),
        mac: Mac::Sha1,
    };
    // PASSWORD-ALGORITHMS altered to offer MD5 only.
    let req = Req::new(METHOD_ALLOCATE)
        .transport(17)
        .attr(ATTR_USERNAME, b"alice")
        .attr(ATTR_REALM, REALM.as_bytes())
        .attr(ATTR_NONCE, n.as_bytes())
        .attr(ATTR_PASSWORD_ALGORITHMS, &[0, 1, 0, 0])
        .attr(ATTR_PASSWORD_ALGORITHM, &[0, 1, 0, 0]);
    let mut m = wire::decode(&req.bytes()).unwrap();
    integrity::sign(&mut m, &signer);
    assert_eq!(code(&t.one(c, &m.raw)), Some(400));
    // An algorithm we do not offer.
    let req = Req::new(METHOD_ALLOCATE).transport(17).sign_with(
        wire::User::Name("alice"),
        REALM,
        &n,
        Some(3),
        &signer,
    );
    assert_eq!(code(&t.one(c, &req)), Some(400));
}

#[test]
fn userhash_finds_static_users() {
    let mut t = T::new();
    let c = client(1);
    let n = t.nonce_for(c);
    let signer = Signer {
        key: Key::md5("alice", REALM, "wonderland"),
        mac: Mac::Sha1,
    };
    let hash = integrity::userhash("alice", REALM);
    let r = t.one(
        c,
        &Req::new(METHOD_ALLOCATE).transport(17).sign_with(
            wire::User::Hash(hash),
            REALM,
            &n,
            None,
            &signer,
        ),
    );
    assert_eq!(code(&r), None);
    let other = integrity::userhash("nobody", REALM);
    let r = t.one(
        client(2),
        &Req::new(METHOD_REFRESH).sign_with(
            wire::User::Hash(other),
            REALM,
            &t.nonce_for(client(2)),
            None,
            &signer,
        ),
    );
    assert_eq!(code(&r), Some(401));
}

#[test]
fn allocations_per_user_quota_gets_486_and_frees_on_delete() {
    let mut t = with_limits(|l| l.allocations_per_user = 2);
    t.allocate(client(1));
    t.allocate(client(2));
    let r = t.signed(client(3), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(486));
    // Another user is not affected.
    let n = t.nonce_for(client(3));
    let r = t.one(
        client(3),
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("bob", "builder", &n),
    );
    assert_eq!(code(&r), None);
    t.signed(client(1), Req::new(METHOD_REFRESH).lifetime(0));
    t.allocate(client(4));
    assert_eq!(t.e.stats.quota_rejections, 1);
}

#[test]
fn total_allocations_quota_gets_508() {
    let mut t = with_limits(|l| l.total_allocations = 2);
    t.allocate(client(1));
    t.allocate(client(2));
    let r = t.signed(client(3), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(508));
    assert_eq!(t.e.cfg.shared.total(), 2);
}

#[test]
fn permission_and_channel_quotas_get_508() {
    let mut t = with_limits(|l| {
        l.permissions_per_allocation = 2;
        l.channels_per_allocation = 1;
    });
    let c = client(1);
    t.allocate(c);
    let r = t.signed(
        c,
        Req::new(METHOD_CREATE_PERMISSION)
            .peer(peer(PEER))
            .peer(peer(PEER2)),
    );
    assert_eq!(code(&r), None);
    assert_eq!(t.permit(c, "93.184.216.36:1"), Some(508));
    // Refreshing an installed permission is not a new one.
    assert_eq!(t.permit(c, PEER), None);
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    assert_eq!(t.bind(c, 0x4001, PEER2), Some(508));
    assert_eq!(t.e.stats.quota_rejections, 2);
}

#[test]
fn packet_and_bandwidth_ceilings_drop_the_excess_both_ways() {
    let mut t = with_limits(|l| {
        l.packet_rate = 10;
        l.bandwidth = 1_000_000;
    });
    let c = client(1);
    let id = bound(&mut t, c);
    let pkt = [0x40, 0x00, 0x00, 0x01, 7, 0, 0, 0];
    let sent = (0..25)
        .filter(|_| t.e.handle_client(t.now, c, &pkt).is_some())
        .count();
    assert_eq!(sent, 10);
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    let back = (0..25)
        .filter(|_| {
            t.e.handle_peer(t.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 1)
                .is_some()
        })
        .count();
    assert_eq!(back, 10);
    assert_eq!(t.e.stats.rate_limited, 30);
    // The session survives: a second later traffic flows again.
    t.now += Duration::from_secs(1);
    assert!(t.e.handle_client(t.now, c, &pkt).is_some());
}

#[test]
fn unauthenticated_answers_are_rate_limited_per_source() {
    let mut t = with_limits(|l| l.unauthenticated_rate = 5);
    let bare = || Req::new(METHOD_ALLOCATE).transport(17).bytes();
    // T::with used one answer already for client(1)'s address.
    let answered = (0..20)
        .filter(|_| !t.send(client(1), &bare()).is_empty())
        .count();
    assert_eq!(answered, 4);
    assert_eq!(t.e.stats.answers_suppressed, 16);
    let elsewhere = ClientAddr {
        remote: "198.18.0.9:5".parse().unwrap(),
        via: Via::Udp(0),
    };
    assert_eq!(
        t.send(elsewhere, &bare()).len(),
        1,
        "another source is answered"
    );
    // Authenticated traffic is not limited.
    t.allocate(client(1));
}

#[test]
fn strict_expiry_closes_a_rest_allocation_when_its_credential_expires() {
    for (strict, grace, closes_at) in [(true, 0, 100), (true, 30, 130), (false, 0, 600)] {
        let mut cfg = config((50000..50010).collect());
        cfg.live.strict_expiry = strict;
        cfg.live.expiry_grace = Duration::from_secs(grace);
        let mut t = T::with(cfg);
        let c = client(1);
        let (u, p) = crate::auth::rest_credentials("s3cret", "carol", UNIX0 + 100);
        let n = t.nonce_for(c);
        let r = t.one(
            c,
            &Req::new(METHOD_ALLOCATE).transport(17).sign_as(&u, &p, &n),
        );
        let granted = wire::u32_attr(&r, ATTR_LIFETIME).unwrap().unwrap() as u64;
        assert_eq!(granted, closes_at.min(600));
        t.advance(99);
        let n = t.nonce_for(c);
        let r = t.one(
            c,
            &Req::new(METHOD_CREATE_PERMISSION)
                .peer(peer(PEER))
                .sign_as(&u, &p, &n),
        );
        assert_eq!(code(&r), None, "still valid at 99 s");
        t.advance(1);
        let n = t.nonce_for(c);
        let r = t.one(c, &Req::new(METHOD_REFRESH).sign_as(&u, &p, &n));
        assert_eq!(code(&r), Some(401), "expired credential");
        if closes_at > 100 {
            t.advance(closes_at - 101);
            assert_eq!(t.e.allocation_count(), 1, "open until {closes_at} s");
            t.advance(1);
        }
        assert_eq!(t.e.allocation_count(), 0, "closed at {closes_at} s");
    }
}

#[test]
fn stun_only_listeners_answer_binding_and_refuse_turn() {
    let mut cfg = config((50000..50010).collect());
    cfg.stun_only = vec![1];
    let mut t = T::with(cfg);
    let c = ClientAddr {
        remote: client(1).remote,
        via: Via::Udp(1),
    };
    let r = t.one(c, &Req::new(METHOD_BINDING).bytes());
    assert_eq!(code(&r), None);
    let n = t.nonce_for(c);
    let r = t.one(
        c,
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("alice", "wonderland", &n),
    );
    assert_eq!(code(&r), Some(400));
}

/// One address in each default-deny range, and the bypass forms of
/// coturn's CVEs.
const DENIED: &[&str] = &[
    "0.0.0.0",
    "0.0.0.1",
    "10.1.2.3",
    "100.64.0.1",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "172.16.0.1",
    "192.0.0.1",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "64:ff9b:1::1",
    "100::1",
    "2001:db8::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0:10.0.0.1",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "2002:7f00:1::1",
    "2002:a00:1::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
];

#[test]
fn every_denied_form_gets_403_and_sends_to_it_are_dropped() {
    // The relay advertises a public address here, so our own relays do
    // not mask anything. IPv6 forms get 403 too: the policy is checked
    // before the address family.
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let id = t.e.allocation_of(c).unwrap();
    for (i, a) in DENIED.iter().enumerate() {
        let p = SocketAddr::new(a.parse().unwrap(), 3478);
        let r = t.signed(c, Req::new(METHOD_CREATE_PERMISSION).peer(p));
        assert_eq!(code(&r), Some(403), "CreatePermission {a}");
        let r = t.signed(
            c,
            Req::new(METHOD_CHANNEL_BIND)
                .channel(0x4000 + i as u16)
                .peer(p),
        );
        assert_eq!(code(&r), Some(403), "ChannelBind {a}");
        let before = t.e.stats.policy_denials;
        let send = Req::indication(METHOD_SEND)
            .peer(p)
            .attr(ATTR_DATA, b"x")
            .bytes();
        assert!(t.e.handle_client(t.now, c, &send).is_none(), "Send {a}");
        assert_eq!(t.e.stats.policy_denials, before + 1, "Send {a} counted");
    }
    assert!(t.e.allocation(id).unwrap().permissions.is_empty());
}

#[test]
fn allowing_loopback_opens_127_0_0_1_and_nothing_else() {
    let mut cfg = config((50000..50010).collect());
    cfg.live.policy = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![], vec![], (1, 1));
    let mut t = T::with(cfg);
    let c = client(1);
    t.allocate(c);
    assert_eq!(t.permit(c, "127.0.0.1:9"), None);
    assert_eq!(t.bind(c, 0x4000, "127.0.0.1:9"), None);
    for a in ["0.0.0.0:9", "0.0.0.1:9", "255.255.255.255:9", "224.0.0.1:9"] {
        assert_eq!(t.permit(c, a), Some(403), "{a}");
    }
    for a in [
        "::1",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",
    ] {
        assert!(
            t.e.cfg
                .live
                .policy
                .check(SocketAddr::new(a.parse().unwrap(), 9), |_| true)
                .is_err(),
            "{a}"
        );
    }
}

#[test]
fn stats_count_relayed_traffic_by_transport_and_session_durations() {
    let mut t = T::new();
    let c = client(1);
    let id = bound(&mut t, c);
    let pkt = [0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0];
    t.e.handle_client(t.now, c, &pkt).unwrap();
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    t.e.handle_peer(t.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 10)
        .unwrap();
    let s = ClientAddr {
        remote: c.remote,
        via: Via::Stream {
            listener: 0,
            conn: 9,
            tls: false,
        },
    };
    bound(&mut t, s);
    t.e.handle_client(t.now, s, &pkt).unwrap();
    use stats::{Direction, TrafficCount};
    assert_eq!(
        t.e.stats.relayed[Direction::ToPeer.index()][0],
        TrafficCount {
            packets: 1,
            bytes: 3
        }
    );
    assert_eq!(
        t.e.stats.relayed[Direction::ToPeer.index()][1],
        TrafficCount {
            packets: 1,
            bytes: 3
        }
    );
    assert_eq!(
        t.e.stats.relayed[Direction::ToClient.index()][0],
        TrafficCount {
            packets: 1,
            bytes: 10
        }
    );
    t.advance(70);
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(t.e.stats.session_seconds.count, 1);
    assert_eq!(
        t.e.stats.session_seconds.buckets[2], 1,
        "70 s falls in the 300 s bucket"
    );
    // An expired REST credential is told apart from an unknown user.
    let (u, p) = crate::auth::rest_credentials("s3cret", "old", UNIX0 - 5);
    let n = t.nonce_for(c);
    t.one(
        c,
        &Req::new(METHOD_ALLOCATE).transport(17).sign_as(&u, &p, &n),
    );
    assert_eq!(
        t.e.stats.auth_failures[stats::AuthFailure::Expired as usize],
        1
    );
}

#[test]
fn draining_refuses_new_allocations_and_keeps_old_ones() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    t.e.drain(None);
    let r = t.signed(client(2), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(508));
    let alt: SocketAddr = "198.51.100.7:3478".parse().unwrap();
    t.e.drain(Some(alt));
    let r = t.signed(client(2), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(300));
    assert!(signed_with(&r, &key()));
    let v = wire::attr(&r, ATTR_ALTERNATE_SERVER).unwrap();
    assert_eq!(v, &[0, 1, 0x0d, 0x96, 198, 51, 100, 7]);
    // The old allocation still works.
    let r = t.signed(c, Req::new(METHOD_REFRESH));
    assert_eq!(code(&r), None);
    assert_eq!(t.e.allocation_count(), 1);
}

#[test]
fn draining_sends_tls_clients_to_the_tls_alternate_with_its_domain() {
    let mut t = T::new();
    let alt: SocketAddr = "198.51.100.7:3478".parse().unwrap();
    let alt_tls: SocketAddr = "198.51.100.8:443".parse().unwrap();
    let on = |port, via| ClientAddr {
        remote: SocketAddr::new("203.0.113.5".parse().unwrap(), port),
        via,
    };
    let tls = on(
        2,
        Via::Stream {
            listener: 0,
            conn: 1,
            tls: true,
        },
    );
    let tcp = on(
        3,
        Via::Stream {
            listener: 0,
            conn: 2,
            tls: false,
        },
    );
    let udp = client(4);
    let answer = |t: &mut T, c| {
        let r = t.signed(c, Req::new(METHOD_ALLOCATE).transport(17));
        let server = wire::attr(&r, ATTR_ALTERNATE_SERVER).map(|v| {
            let v = v.to_vec();
            let ip = std::net::Ipv4Addr::new(v[4], v[5], v[6], v[7]);
            SocketAddr::from((ip, u16::from_be_bytes([v[2], v[3]])))
        });
        let domain = wire::attr(&r, ATTR_ALTERNATE_DOMAIN);
        (
            code(&r),
            server,
            domain.map(|d| String::from_utf8(d.to_vec()).unwrap()),
        )
    };
    let domain = Some("turn2.example.org".to_string());
    t.e.drain(Redirect {
        alternate: Some(alt),
        tls: Some(TlsAlternate {
            address: alt_tls,
            domain: domain.clone(),
        }),
    });
    assert_eq!(answer(&mut t, tls), (Some(300), Some(alt_tls), domain));
    assert_eq!(answer(&mut t, tcp), (Some(300), Some(alt), None));
    assert_eq!(answer(&mut t, udp), (Some(300), Some(alt), None));
    // A DTLS client has no alternate to go to: `alternate` is plain UDP.
    let dtls = on(5, Via::Dtls(1));
    assert_eq!(answer(&mut t, dtls), (Some(508), None, None));
    // Without a domain the TLS client gets the TLS address alone; without
    // `alternate` the others get 508.
    t.e.drain(Redirect {
        alternate: None,
        tls: Some(TlsAlternate {
            address: alt_tls,
            domain: None,
        }),
    });
    assert_eq!(answer(&mut t, tls), (Some(300), Some(alt_tls), None));
    assert_eq!(answer(&mut t, udp), (Some(508), None, None));
    // Without a TLS alternate, TLS clients get `alternate` as every client.
    t.e.drain(Some(alt));
    assert_eq!(answer(&mut t, tls), (Some(300), Some(alt), None));
}

#[test]
fn sessions_are_listed_and_closed_by_user_or_relay_port() {
    let mut t = T::new();
    let a = t.allocate(client(1));
    t.allocate(client(2));
    let n = t.nonce_for(client(3));
    t.one(
        client(3),
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("bob", "builder", &n),
    );
    t.advance(5);
    let s = t.e.sessions(t.now);
    assert_eq!(s.len(), 3);
    assert!(s.iter().all(|x| x.age == Duration::from_secs(5)));
    assert_eq!(t.e.gauges().allocations, 3);
    assert_eq!(t.e.close_user(t.now, "alice"), 2);
    assert_eq!(t.e.sessions(t.now).len(), 1);
    assert!(!t.e.close_relay_port(t.now, a.port()));
    let bob = t.e.sessions(t.now)[0].relayed.port();
    assert!(t.e.close_relay_port(t.now, bob));
    assert_eq!(t.e.allocation_count(), 0);
    assert_eq!(t.e.free_ports(), 10);
}

#[test]
fn update_applies_new_credentials_without_dropping_allocations() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let mut users = BTreeMap::new();
    users.insert("alice".to_string(), "new-password".into());
    t.e.update(Update {
        credentials: Credentials::new(REALM, &["rotated".into()], &users, b"nonce-key", 600),
        policy: t.e.cfg.live.policy.clone(),
        limits: t.e.cfg.live.limits,
        strict_expiry: true,
        expiry_grace: Duration::ZERO,
        ..t.e.cfg.live.clone()
    });
    assert_eq!(t.e.allocation_count(), 1);
    let n = t.nonce_for(c);
    let r = t.one(
        c,
        &Req::new(METHOD_REFRESH).sign_as("alice", "wonderland", &n),
    );
    assert_eq!(code(&r), Some(401), "old password refused");
    let r = t.one(
        c,
        &Req::new(METHOD_REFRESH).sign_as("alice", "new-password", &n),
    );
    assert_eq!(code(&r), None);
    let (u, p) = crate::auth::rest_credentials("rotated", "carol", UNIX0 + 100);
    let r = t.one(
        client(2),
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as(&u, &p, &t.nonce_for(client(2))),
    );
    assert_eq!(code(&r), None, "new secret works");
}

// ---- Address families (RFC 8656 §7.2) ----

fn dual_config() -> EngineConfig {
    let mut cfg = config((50000..50010).collect());
    cfg.relay_bind_v6 = Some("::".parse().unwrap());
    cfg.relay_public_v6 = Some("2001:db8::7".parse().unwrap());
    cfg.live.policy = PeerPolicy::new(vec![], vec![], vec![], (1, 1));
    cfg
}

fn relayed_addresses(r: &Message) -> Vec<SocketAddr> {
    wire::attrs_before_integrity(r)
        .filter(|a| a.typ == ATTR_XOR_RELAYED_ADDRESS)
        .map(|a| wire::read_xor_address(&a.value, &r.transaction_id.0).unwrap())
        .collect()
}

#[test]
fn ipv6_relays_are_given_on_request_and_440_without_them() {
    let mut t = T::with(dual_config());
    let r = t.signed(
        client(1),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    assert_eq!(code(&r), None);
    let relays = relayed_addresses(&r);
    assert_eq!(relays.len(), 1);
    assert_eq!(relays[0].ip().to_string(), "2001:db8::7");
    // An IPv6 relay serves IPv6 peers only.
    let c = client(1);
    assert_eq!(t.permit(c, "[2606:4700::1]:9"), None);
    assert_eq!(t.permit(c, PEER), Some(443));
    // Without IPv6 relays configured: 440.
    let mut t = T::new();
    let r = t.signed(
        client(1),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    assert_eq!(code(&r), Some(440));
}

#[test]
fn additional_address_family_gives_a_dual_allocation() {
    let mut t = T::with(dual_config());
    let c = client(1);
    let r = t.signed(
        c,
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    assert_eq!(code(&r), None);
    let relays = relayed_addresses(&r);
    assert_eq!(relays.len(), 2);
    assert!(relays[0].is_ipv4() && relays[1].is_ipv6());
    assert_ne!(
        relays[0].port(),
        relays[1].port(),
        "ports are unique across families"
    );
    let r = t.signed(
        c,
        Req::new(METHOD_CREATE_PERMISSION)
            .peer(peer(PEER))
            .peer(peer("[2606:4700::1]:9")),
    );
    assert_eq!(code(&r), None, "both families are served");
    let r = t.signed(
        c,
        Req::new(METHOD_REFRESH).attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    assert_eq!(code(&r), None);
    // Deleting frees both ports.
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(t.e.free_ports(), 10);
    // Both family attributes at once: 400.
    let r = t.signed(
        client(2),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0])
            .attr(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    assert_eq!(code(&r), Some(400));
}

#[test]
fn additional_family_without_ipv6_relays_gets_ipv4_and_an_address_error() {
    let mut t = T::new();
    let r = t.signed(
        client(1),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    assert_eq!(code(&r), None);
    assert_eq!(relayed_addresses(&r).len(), 1);
    let e = wire::attr(&r, ATTR_ADDRESS_ERROR_CODE).unwrap();
    assert_eq!(&e[..4], &[2, 0, 4, 40]);
}

#[test]
fn default_family_follows_the_client_when_configured() {
    let mut cfg = dual_config();
    cfg.same_family_default = true;
    let mut t = T::with(cfg);
    let v6 = ClientAddr {
        remote: "[2001:db8::99]:5000".parse().unwrap(),
        via: Via::Udp(0),
    };
    let n = t.nonce_for(v6);
    let r = t.one(
        v6,
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("alice", "wonderland", &n),
    );
    assert!(relayed_addresses(&r)[0].is_ipv6());
    let r = t.signed(client(1), Req::new(METHOD_ALLOCATE).transport(17));
    assert!(relayed_addresses(&r)[0].is_ipv4());
    // The RFC default: IPv4 whatever the client's family.
    let mut t = T::with(dual_config());
    let n = t.nonce_for(v6);
    let r = t.one(
        v6,
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("alice", "wonderland", &n),
    );
    assert!(relayed_addresses(&r)[0].is_ipv4());
}

#[test]
fn a_failed_ipv6_bind_retries_then_gives_up_cleanly() {
    let mut t = T::with(dual_config());
    let c = client(1);
    let n = t.nonce_for(c);
    t.e.handle_client(
        t.now,
        c,
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .sign_as("alice", "wonderland", &n),
    );
    let mut v6_binds = 0;
    let mut closed = false;
    let mut answer = None;
    for _ in 0..100 {
        match t.e.poll_output() {
            Some(Output::OpenRelay { alloc, bind }) => {
                if bind.is_ipv6() {
                    v6_binds += 1;
                }
                t.e.relay_opened(t.now, alloc, bind.is_ipv4());
            }
            Some(Output::CloseRelay { .. }) => closed = true,
            Some(Output::Transmit { data, .. }) => answer = wire::decode(&data),
            Some(Output::Grant(g)) => panic!("nothing was granted: {g:?}"),
            Some(Output::LookupUser { name }) => panic!("no store to ask for {name}"),
            Some(Output::Handoff(h)) => panic!("nothing moves: {h:?}"),
            Some(Output::Usage(u)) => panic!("usage facts are off: {u:?}"),
            Some(o) => panic!("not a TCP allocation: {o:?}"),
            None => break,
        }
    }
    assert_eq!(v6_binds, 8, "eight IPv6 ports tried");
    assert!(closed, "the open IPv4 relay is closed");
    assert_eq!(code(&answer.unwrap()), Some(508));
    assert_eq!(t.e.allocation_count(), 0);
    assert_eq!(t.e.free_ports(), 10);
    assert_eq!(t.e.cfg.shared.total(), 0);
}

#[test]
fn attributes_after_integrity_sha256_are_ignored() {
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let n = t.nonce_for(c);
    let key = Key::sha256("alice", REALM, "wonderland");
    let signer = Signer {
        key,
        mac: Mac::Sha256,
    };
    let req = Req::new(METHOD_CREATE_PERMISSION)
        .peer(peer(PEER))
        .sign_with(
            wire::User::Name("alice"),
            REALM,
            &n,
            Some(ALGORITHM_SHA256),
            &signer,
        );
    // Append an XOR-PEER-ADDRESS after the signature, header length fixed.
    let mut m = wire::decode(&req).unwrap();
    let extra = {
        let mut v = [0u8; 8];
        wire::write_xor_address(&mut v, peer("8.8.8.8:53"), &m.transaction_id.0);
        v
    };
    m.add(ATTR_XOR_PEER_ADDRESS, &extra);
    let r = t.one(c, &m.raw);
    assert_eq!(code(&r), None, "the signed part is valid");
    let id = t.e.allocation_of(c).unwrap();
    let a = t.e.allocation(id).unwrap();
    assert!(a.permits(peer(PEER), t.now, |_, _| true));
    assert!(
        !a.permits(peer("8.8.8.8:53"), t.now, |_, _| true),
        "the unsigned peer was not installed"
    );
}

#[test]
fn a_reservation_token_serves_only_the_user_who_reserved_it() {
    let mut t = T::new();
    let r = reserve_pair(&mut t, client(1));
    let token = wire::attr(&r, ATTR_RESERVATION_TOKEN).unwrap().to_vec();
    let n = t.nonce_for(client(2));
    let r = t.one(
        client(2),
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_RESERVATION_TOKEN, &token)
            .sign_as("bob", "builder", &n),
    );
    assert_eq!(code(&r), Some(508), "bob cannot take alice's port");
    let r = t.signed(
        client(3),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_RESERVATION_TOKEN, &token),
    );
    assert_eq!(code(&r), None, "alice still can");
}

#[test]
fn an_absurd_rest_expiry_is_no_deadline() {
    let mut t = T::new();
    let (u, p) = crate::auth::rest_credentials("s3cret", "far", u64::MAX - 1);
    let n = t.nonce_for(client(1));
    let r = t.one(
        client(1),
        &Req::new(METHOD_ALLOCATE).transport(17).sign_as(&u, &p, &n),
    );
    assert_eq!(code(&r), None);
    assert_eq!(wire::u32_attr(&r, ATTR_LIFETIME), Some(Ok(600)));
}

/// A Send indication of `data` to `p`.
fn send_to(p: SocketAddr, data: &[u8]) -> Vec<u8> {
    Req::indication(METHOD_SEND)
        .peer(p)
        .attr(ATTR_DATA, data)
        .bytes()
}

#[test]
fn a_permission_for_the_own_relay_reaches_live_relay_ports_only() {
    // The attack: permit the server's own relay address (allowed so that
    // two clients of one server can meet), then Send to another port of it.
    let mut t = T::new();
    let a = client(1);
    let b = client(2);
    t.allocate(a);
    let rb = t.allocate(b);
    assert_eq!(t.permit(a, &rb.to_string()), None);
    let id = t.e.allocation_of(a).unwrap();
    let to_b = send_to(rb, b"hi b");
    let f =
        t.e.handle_client(t.now, a, &to_b)
            .expect("b's relay is live");
    assert_eq!(f.peer, PeerAddr(rb));
    let denials = t.e.stats.policy_denials;
    for port in [11311, 53, 50009] {
        let other = SocketAddr::new(rb.ip(), port);
        assert!(
            t.e.handle_client(t.now, a, &send_to(other, b"x")).is_none(),
            "{other} is not a live relay"
        );
        // Nor does anything from there come back.
        let mut buf = vec![0u8; channel_data::BUF_LEN];
        assert!(
            t.e.handle_peer(t.now, id, other, &mut buf, HEADROOM, HEADROOM + 1)
                .is_none()
        );
        assert_eq!(t.bind(a, 0x4001, &other.to_string()), Some(403));
    }
    assert_eq!(t.e.stats.policy_denials, denials + 6);
    // A channel to b's relay works while b lives...
    assert_eq!(t.bind(a, 0x4000, &rb.to_string()), None);
    let cd = [0x40, 0x00, 0x00, 0x01, b'z', 0, 0, 0];
    assert!(t.e.handle_client(t.now, a, &cd).is_some());
    // ...and stops when b's allocation goes: its port may be bound by
    // another process next.
    t.signed(b, Req::new(METHOD_REFRESH).lifetime(0));
    assert!(t.e.handle_client(t.now, a, &cd).is_none());
    assert!(t.e.handle_client(t.now, a, &to_b).is_none());
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    assert!(
        t.e.handle_peer(t.now, id, rb, &mut buf, HEADROOM, HEADROOM + 1)
            .is_none()
    );
}

#[test]
fn own_relay_ports_of_another_engine_are_live_through_the_shared_table() {
    let shared = Arc::new(ServerState::default());
    let mut c1 = config((50000..50004).collect());
    c1.shared = shared.clone();
    let mut c2 = config((50004..50010).collect());
    c2.shared = shared.clone();
    let mut t1 = T::with(c1);
    let mut t2 = T::with(c2);
    let a = client(1);
    t1.allocate(a);
    let rb = t2.allocate(client(2));
    assert_eq!(t1.permit(a, &rb.to_string()), None);
    assert!(t1.e.handle_client(t1.now, a, &send_to(rb, b"x")).is_some());
    t2.signed(client(2), Req::new(METHOD_REFRESH).lifetime(0));
    assert!(t1.e.handle_client(t1.now, a, &send_to(rb, b"x")).is_none());
}

#[test]
fn a_reload_removes_permissions_and_channels_the_new_policy_denies() {
    let mut t = T::new();
    let c = client(1);
    let id = bound(&mut t, c);
    assert_eq!(t.permit(c, PEER2), None);
    let mut u = Update {
        credentials: t.e.cfg.live.credentials.clone(),
        policy: PeerPolicy::new(
            vec![],
            vec!["93.184.216.34/32".parse().unwrap()],
            vec!["198.51.100.1".parse().unwrap()],
            (50000, 50009),
        ),
        limits: t.e.cfg.live.limits,
        strict_expiry: true,
        expiry_grace: Duration::ZERO,
        ..t.e.cfg.live.clone()
    };
    t.e.update(u.clone());
    let a = t.e.allocation(id).unwrap();
    assert!(
        a.channels.is_empty(),
        "the channel to the denied peer is gone"
    );
    assert!(!a.permits(peer(PEER), t.now, |_, _| true));
    assert!(a.permits(peer(PEER2), t.now, |_, _| true));
    let cd = [0x40, 0x00, 0x00, 0x01, b'z', 0, 0, 0];
    assert!(t.e.handle_client(t.now, c, &cd).is_none());
    assert!(
        t.e.handle_client(t.now, c, &send_to(peer(PEER), b"x"))
            .is_none()
    );
    assert!(
        t.e.handle_client(t.now, c, &send_to(peer(PEER2), b"x"))
            .is_some()
    );
    u.policy = PeerPolicy::new(vec![], vec![], vec![], (1, 1));
    t.e.update(u);
    assert!(
        t.e.allocation(id)
            .unwrap()
            .permits(peer(PEER2), t.now, |_, _| true)
    );
}

/// Allocate from `c` with a REST credential of `name` expiring at `exp`.
fn rest_allocate(t: &mut T, c: ClientAddr, name: &str, exp: u64) -> Option<u16> {
    let (u, p) = crate::auth::rest_credentials("s3cret", name, exp);
    let n = t.nonce_for(c);
    code(&t.one(
        c,
        &Req::new(METHOD_ALLOCATE).transport(17).sign_as(&u, &p, &n),
    ))
}

/// A revoked name (static or REST) gets 401 for Allocate and Refresh
/// while its revocation lasts; other names and other requests do not.
#[test]
fn a_revoked_name_gets_401_for_allocate_and_refresh() {
    let mut t = T::with(config((50000..50040).collect()));
    assert_eq!(
        rest_allocate(&mut t, client(100), "carol", UNIX0 + 1000),
        None
    );
    let (u, p) = crate::auth::rest_credentials("s3cret", "carol", UNIX0 + 1000);
    let refresh = |t: &mut T| {
        let n = t.nonce_for(client(100));
        code(&t.one(
            client(100),
            &Req::new(METHOD_REFRESH).lifetime(600).sign_as(&u, &p, &n),
        ))
    };
    assert_eq!(refresh(&mut t), None);
    t.e.cfg.shared.revoke("carol", UNIX0 + 60);
    assert_eq!(refresh(&mut t), Some(401));
    assert_eq!(
        rest_allocate(&mut t, client(101), "carol", UNIX0 + 2000),
        Some(401),
        "a fresh credential of the name too"
    );
    assert_eq!(
        rest_allocate(&mut t, client(102), "dave", UNIX0 + 1000),
        None
    );
    t.e.cfg.shared.unrevoke("carol");
    assert_eq!(refresh(&mut t), None);
    // Past its end a revocation no longer refuses.
    t.e.cfg.shared.revoke("carol", UNIX0);
    assert_eq!(refresh(&mut t), None);
}

#[test]
fn the_per_user_quota_counts_a_rest_name_across_fresh_credentials() {
    let mut cfg = config((50000..50040).collect());
    cfg.live.limits.allocations_per_user = 10;
    let mut t = T::with(cfg);
    // The attack: a new credential of one name for every Allocate.
    let codes: Vec<_> = (0..15)
        .map(|i| rest_allocate(&mut t, client(100 + i), "carol", UNIX0 + 1000 + i as u64))
        .collect();
    assert_eq!(
        codes.iter().filter(|c| c.is_none()).count(),
        10,
        "{codes:?}"
    );
    assert_eq!(codes[10..], [Some(486); 5]);
    assert_eq!(t.e.cfg.shared.held_by("carol"), 10);
    // A username that is only an expiry has no name: all such share one.
    let bare = |t: &mut T, c, exp: u64| {
        let u = exp.to_string();
        let p = crate::auth::rest_password(b"s3cret", &u);
        let n = t.nonce_for(c);
        code(&t.one(
            c,
            &Req::new(METHOD_ALLOCATE).transport(17).sign_as(&u, &p, &n),
        ))
    };
    let bare_codes: Vec<_> = (0..12)
        .map(|i| bare(&mut t, client(400 + i), UNIX0 + 900 + i as u64))
        .collect();
    assert_eq!(bare_codes[10..], [Some(486); 2], "{bare_codes:?}");
    assert_eq!(t.e.cfg.shared.held_by(""), 10);
    // Another name has its own quota; a static user's name is counted whole.
    assert_eq!(
        rest_allocate(&mut t, client(200), "dave", UNIX0 + 1000),
        None
    );
    assert_eq!(t.e.cfg.shared.held_by("dave"), 1);
    t.allocate(client(201));
    assert_eq!(t.e.cfg.shared.held_by("alice"), 1);
    // Deleting gives it back to the name.
    let (u, p) = crate::auth::rest_credentials("s3cret", "carol", UNIX0 + 1000);
    let n = t.nonce_for(client(100));
    t.one(
        client(100),
        &Req::new(METHOD_REFRESH).lifetime(0).sign_as(&u, &p, &n),
    );
    assert_eq!(t.e.cfg.shared.held_by("carol"), 9);
    assert_eq!(
        rest_allocate(&mut t, client(300), "carol", UNIX0 + 5000),
        None
    );
}

#[test]
fn killing_a_rest_name_closes_every_credential_minted_for_it() {
    let mut t = T::new();
    assert_eq!(rest_allocate(&mut t, client(1), "carol", UNIX0 + 100), None);
    assert_eq!(rest_allocate(&mut t, client(2), "carol", UNIX0 + 200), None);
    assert_eq!(rest_allocate(&mut t, client(3), "dave", UNIX0 + 200), None);
    let (u, _) = crate::auth::rest_credentials("s3cret", "carol", UNIX0 + 100);
    assert_eq!(t.e.close_user(t.now, &u), 1, "one credential");
    assert_eq!(t.e.close_user(t.now, "carol"), 1, "the name: the rest");
    assert_eq!(t.e.allocation_count(), 1);
    assert_eq!(t.e.cfg.shared.held_by("carol"), 0);
}

#[test]
fn an_even_port_reservation_counts_until_redeemed_or_expired() {
    let mut t = with_limits(|l| l.allocations_per_user = 3);
    let r = reserve_pair(&mut t, client(1));
    let token = wire::attr(&r, ATTR_RESERVATION_TOKEN).unwrap().to_vec();
    assert_eq!(
        t.e.cfg.shared.held_by("alice"),
        2,
        "the allocation and its reserved port"
    );
    assert_eq!(t.e.cfg.shared.total(), 2);
    t.allocate(client(2));
    // The user's third unit is the reservation: no fourth.
    let r = t.signed(client(3), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(486));
    // Reserving needs room for two.
    t.signed(client(2), Req::new(METHOD_REFRESH).lifetime(0));
    let r = reserve_pair(&mut t, client(4));
    assert_eq!(code(&r), Some(486));
    // Redeeming moves the unit to the new allocation: still 2.
    let r = t.signed(
        client(5),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_RESERVATION_TOKEN, &token),
    );
    assert_eq!(code(&r), None);
    assert_eq!(t.e.cfg.shared.held_by("alice"), 2);
    assert_eq!(t.e.cfg.shared.total(), 2);
    // An unredeemed one is given back when it expires.
    t.signed(client(5), Req::new(METHOD_REFRESH).lifetime(0));
    reserve_pair(&mut t, client(6));
    assert_eq!(t.e.cfg.shared.held_by("alice"), 3);
    t.advance(31);
    assert_eq!(t.e.cfg.shared.held_by("alice"), 2);
    assert_eq!(t.e.cfg.shared.total(), 2);
}

#[test]
fn a_dual_stack_allocation_counts_one_against_its_user_and_two_in_all() {
    let mut cfg = dual_config();
    cfg.live.limits.total_allocations = 3;
    let mut t = T::with(cfg);
    let dual = |t: &mut T, c| {
        code(
            &t.signed(
                c,
                Req::new(METHOD_ALLOCATE)
                    .transport(17)
                    .attr(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
            ),
        )
    };
    assert_eq!(dual(&mut t, client(1)), None);
    assert_eq!(t.e.cfg.shared.held_by("alice"), 1);
    assert_eq!(t.e.cfg.shared.total(), 2);
    assert_eq!(
        dual(&mut t, client(2)),
        Some(508),
        "two more would make four"
    );
    t.allocate(client(3));
    assert_eq!(t.e.cfg.shared.total(), 3);
    t.signed(client(1), Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(t.e.cfg.shared.total(), 1);
    assert_eq!(t.e.cfg.shared.held_by("alice"), 1);
}

/// The error counters are what reading every answer back off the wire
/// would count (as the stats once did): by the method and ERROR-CODE in the
/// bytes sent, for every code the engine sends, and nothing for a method
/// no metric names.
#[test]
fn error_counters_match_the_answers_sent() {
    use stats::{Code, Method};
    let mut t = with_limits(|l| {
        l.allocations_per_user = 2;
        l.channels_per_allocation = 1;
    });
    let mut expected = t.e.stats.errors;
    let mut seen = Vec::new();
    let (a, b) = (client(1), client(2));
    let mut feed = |t: &mut T, c: ClientAddr, p: Vec<u8>| {
        t.e.handle_client(t.now, c, &p);
        while let Some(o) = t.e.poll_output() {
            match o {
                Output::Transmit { data, .. } => {
                    let m = wire::decode(&data).expect("a STUN answer");
                    let code = wire::reply_error_code(&data);
                    if let Some(code) = code {
                        seen.push(code);
                        let code = Code::of(code).expect("a code the metrics name");
                        if let Some(method) = Method::of(m.typ.method) {
                            expected[method.index()][code.index()] += 1;
                        }
                    }
                }
                Output::OpenRelay { alloc, .. } | Output::OpenTcpRelay { alloc, .. } => {
                    t.e.relay_opened(t.now, alloc, true)
                }
                // The connection to PEER is made, any other fails (447).
                Output::ConnectPeer { conn, peer: to, .. } => {
                    t.e.peer_connected(t.now, conn, to == peer(PEER));
                }
                Output::CloseRelay { .. }
                | Output::Grant(_)
                | Output::LookupUser { .. }
                | Output::Handoff(_)
                | Output::Usage(_) => {}
                o => panic!("unexpected {o:?}"),
            }
        }
    };
    // The clock stands still: each client's nonce stays valid.
    let nonces: Vec<String> = (0..5).map(|p| t.nonce_for(client(p))).collect();
    let alice = |c: ClientAddr, req: Req| {
        req.sign_as("alice", "wonderland", &nonces[c.remote.port() as usize])
    };
    let allocate = || Req::new(METHOD_ALLOCATE).transport(17);
    let unknown = AttrType(0x0031);

    feed(&mut t, a, allocate().bytes()); // 401
    feed(
        &mut t,
        a,
        allocate().sign_as("alice", "wonderland", "stale"),
    ); // 438
    feed(&mut t, a, alice(a, Req::new(METHOD_ALLOCATE))); // 400
    feed(
        &mut t,
        a,
        alice(a, Req::new(METHOD_ALLOCATE).transport(132)),
    ); // 442
    let v6 = allocate().attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    feed(&mut t, a, alice(a, v6)); // 440
    feed(&mut t, a, alice(a, allocate().attr(unknown, &[0; 4]))); // 420
    let mobile = allocate().attr(crate::engine::mobility::ATTR_MOBILITY_TICKET, &[]);
    feed(&mut t, a, alice(a, mobile)); // 405: mobility is off
    feed(&mut t, a, alice(a, allocate()));
    feed(&mut t, a, alice(a, allocate())); // 437
    let n = t.nonce_for(a);
    feed(
        &mut t,
        a,
        Req::new(METHOD_REFRESH).sign_as("bob", "builder", &n),
    ); // 441
    let v6 = Req::new(METHOD_REFRESH).attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    feed(&mut t, a, alice(a, v6)); // 443
    let denied = Req::new(METHOD_CREATE_PERMISSION).peer(peer("127.0.0.1:80"));
    feed(&mut t, a, alice(a, denied)); // 403
    let bind = |n: u16, p: &str| Req::new(METHOD_CHANNEL_BIND).channel(n).peer(peer(p));
    feed(&mut t, a, alice(a, bind(0x4000, PEER)));
    feed(&mut t, a, alice(a, bind(0x4001, PEER2))); // 508
    feed(&mut t, b, alice(b, allocate()));
    feed(&mut t, client(3), alice(client(3), allocate())); // 486
    // A TCP allocation of bob's (RFC 6062): Connects that fail and that
    // find a connection to that peer already.
    let s = ClientAddr {
        via: Via::Stream {
            listener: 0,
            conn: 1,
            tls: false,
        },
        ..client(3)
    };
    let bob = |req: Req| req.sign_as("bob", "builder", &nonces[3]);
    feed(&mut t, s, bob(Req::new(METHOD_ALLOCATE).transport(6)));
    let connect = |p: &str| bob(Req::new(METHOD_CONNECT).peer(peer(p)));
    feed(&mut t, s, connect(PEER));
    feed(&mut t, s, connect(PEER)); // 446
    feed(&mut t, s, connect(PEER2)); // 447
    // Unauthenticated answers: a Binding (420), a method nobody counts (400).
    feed(
        &mut t,
        a,
        Req::new(METHOD_BINDING).attr(unknown, &[0; 4]).bytes(),
    );
    feed(&mut t, a, Req::new(METHOD_DATA).bytes());
    t.e.drain(Some(peer("198.51.100.7:3478")));
    feed(&mut t, client(4), alice(client(4), allocate())); // 300

    assert_eq!(t.e.stats.errors, expected);
    seen.sort_unstable();
    seen.dedup();
    let mut sent: Vec<u16> = Code::ALL
        .iter()
        .map(|c| c.value())
        .filter(|&c| c != 500)
        .collect();
    // RFC 6062's codes come last in the label set.
    sent.sort_unstable();
    assert_eq!(seen, sent, "every code but 500 was sent");
    assert_eq!(
        expected[Method::Allocate.index()][Code::Unauthorized.index()],
        2,
        "the nonce learnt at the start, and the challenge here"
    );
    assert_eq!(
        expected[Method::Binding.index()][Code::UnknownAttribute.index()],
        1
    );
    let counted: u64 = expected.iter().flatten().sum();
    assert_eq!(
        counted as usize, 18,
        "every error but the one to the unknown method"
    );
}
