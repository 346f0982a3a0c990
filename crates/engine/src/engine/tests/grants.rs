//! The grants the engine reports: permissions and channel bindings as they
//! are created, refreshed, expire and are removed. Exact sequences over an
//! allocation's life and every way one ends, and a mirror kept from the
//! events alone that must equal the engine's own tables after every step.

use std::collections::HashMap;

use super::*;
use crate::addr::ChannelNumber;
use crate::policy::Cidr;
use Change::{Created, Expired, Refreshed, Removed};

impl T {
    /// Drain what is queued (no answers expected here) and take every grant
    /// reported so far, answers drained before included.
    fn grants(&mut self) -> Vec<Grant> {
        for _ in 0..10_000 {
            match self.e.poll_output() {
                Some(Output::Grant(g)) => self.grants.push(g),
                Some(Output::CloseRelay { .. }) => {}
                Some(o) => panic!("unexpected {o:?}"),
                None => return std::mem::take(&mut self.grants),
            }
        }
        panic!("the output queue did not drain");
    }
}

/// The grants one allocation should report, expiries in seconds from `t0`.
struct Life {
    alloc: AllocId,
    client: ClientAddr,
    relay: SocketAddr,
    t0: Instant,
}

impl Life {
    fn new(t: &T, client: ClientAddr, relay: SocketAddr) -> Self {
        let alloc = t.e.allocation_of(client).expect("allocated");
        Life {
            alloc,
            client,
            relay,
            t0: t.now,
        }
    }

    fn grant(&self, what: Granted, change: Change, at: u64) -> Grant {
        Grant {
            alloc: self.alloc,
            client: self.client,
            relay: self.relay,
            what,
            change,
            expires: self.t0 + Duration::from_secs(at),
        }
    }

    /// A permission for the IP of `p`, which the policy lets through whole.
    fn permission(&self, p: &str, change: Change, at: u64) -> Grant {
        let ip = peer(p).ip();
        let reach = Reach::Any;
        self.grant(Granted::Permission { ip, reach }, change, at)
    }

    fn channel(&self, n: u16, p: &str, change: Change, at: u64) -> Grant {
        let what = Granted::Channel {
            number: ChannelNumber::new(n).unwrap(),
            peer: PeerAddr(peer(p)),
        };
        self.grant(what, change, at)
    }
}

/// Relay data every way there is, bound or not; the engine must queue
/// nothing at all for it.
fn relay_everything(t: &mut T, c: ClientAddr, id: AllocId) {
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    for n in [0x4000u16, 0x4001, 0x4002] {
        let [hi, lo] = n.to_be_bytes();
        t.e.handle_client(t.now, c, &[hi, lo, 0, 4, 1, 2, 3, 4]);
    }
    t.e.handle_client(t.now, c, &send_to(peer(PEER), b"data"));
    t.e.handle_client(t.now, c, &send_to(peer(PEER2), b"data"));
    for from in [PEER, PEER2, "93.184.216.99:1"] {
        t.e.handle_peer(t.now, id, peer(from), &mut buf, HEADROOM, HEADROOM + 4);
    }
    assert_eq!(t.e.poll_output(), None, "relayed data queued something");
}

#[test]
fn a_full_allocation_life_reports_each_grant_in_order() {
    let mut t = T::new();
    let c = client(1);
    let relay = t.allocate(c);
    let l = Life::new(&t, c, relay);
    assert_eq!(t.grants(), [], "an allocation alone grants nothing");

    assert_eq!(t.permit(c, PEER), None);
    assert_eq!(t.grants(), [l.permission(PEER, Created, 300)]);

    // A ChannelBind reports its permission (here refreshed) first, then
    // the channel.
    t.advance(10);
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    assert_eq!(
        t.grants(),
        [
            l.permission(PEER, Refreshed, 310),
            l.channel(0x4000, PEER, Created, 610)
        ]
    );
    assert_eq!(t.bind(c, 0x4001, PEER2), None);
    assert_eq!(
        t.grants(),
        [
            l.permission(PEER2, Created, 310),
            l.channel(0x4001, PEER2, Created, 610)
        ]
    );

    // Refreshing the allocation touches no grant; refreshing each does.
    t.advance(90);
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(3600));
    assert_eq!(t.grants(), []);
    assert_eq!(t.permit(c, PEER), None);
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    assert_eq!(
        t.grants(),
        [
            l.permission(PEER, Refreshed, 400),
            l.permission(PEER, Refreshed, 400),
            l.channel(0x4000, PEER, Refreshed, 700)
        ]
    );
    relay_everything(&mut t, c, l.alloc);

    // PEER2's permission runs out at 310 s, its channel lives on; binding
    // the channel again brings the permission back as a new one.
    t.advance(209);
    assert_eq!(t.grants(), []);
    t.advance(1);
    assert_eq!(t.grants(), [l.permission(PEER2, Expired, 310)]);
    relay_everything(&mut t, c, l.alloc);
    t.advance(10);
    assert_eq!(t.bind(c, 0x4001, PEER2), None);
    assert_eq!(
        t.grants(),
        [
            l.permission(PEER2, Created, 620),
            l.channel(0x4001, PEER2, Refreshed, 920)
        ]
    );

    t.advance(80);
    assert_eq!(t.grants(), [l.permission(PEER, Expired, 400)]);
    t.advance(220);
    assert_eq!(t.grants(), [l.permission(PEER2, Expired, 620)]);
    t.advance(80);
    assert_eq!(t.grants(), [l.channel(0x4000, PEER, Expired, 700)]);
    // The pair is on hold for 5 minutes (RFC 8656 §12), which lets the
    // same pair bind again at once: a new binding, after the expired one.
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    assert_eq!(
        t.grants(),
        [
            l.permission(PEER, Created, 1000),
            l.channel(0x4000, PEER, Created, 1300)
        ]
    );
    relay_everything(&mut t, c, l.alloc);

    // Refresh 0: everything left is removed, channels first, each in the
    // order it was made.
    let r = t.signed(c, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(code(&r), None);
    assert_eq!(
        t.grants(),
        [
            l.channel(0x4001, PEER2, Removed, 920),
            l.channel(0x4000, PEER, Removed, 1300),
            l.permission(PEER, Removed, 1000)
        ]
    );
    assert_eq!(
        t.e.gauges(),
        Gauges {
            free_ports: 10,
            ..Gauges::default()
        }
    );
}

#[test]
fn a_binding_expired_but_not_yet_swept_is_not_refreshed() {
    // The clock passes the channel's expiry before the timer runs: the
    // bind sweeps first, so the old binding expires (and goes on hold,
    // RFC 8656 §12) and binding the same pair makes a new one.
    let mut t = T::new();
    let c = client(1);
    let relay = t.allocate(c);
    let l = Life::new(&t, c, relay);
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(3600));
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    t.grants();
    t.now += Duration::from_secs(600);
    assert_eq!(t.bind(c, 0x4000, PEER2), Some(400), "the number is on hold");
    assert_eq!(
        t.grants(),
        [
            l.channel(0x4000, PEER, Expired, 600),
            l.permission(PEER, Expired, 300)
        ]
    );
    assert_eq!(t.bind(c, 0x4000, PEER), None, "the same pair binds again");
    assert_eq!(
        t.grants(),
        [
            l.permission(PEER, Created, 900),
            l.channel(0x4000, PEER, Created, 1200)
        ]
    );
}

#[test]
fn an_expired_allocation_reports_its_grants_removed_then_closes_its_relay() {
    let mut t = T::new();
    let c = client(1);
    let relay = t.allocate(c);
    let l = Life::new(&t, c, relay);
    t.advance(200);
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    t.advance(200);
    assert_eq!(t.permit(c, PEER2), None);
    assert_eq!(
        t.grants(),
        [
            l.permission(PEER, Created, 500),
            l.channel(0x4000, PEER, Created, 800),
            l.permission(PEER2, Created, 700)
        ]
    );
    t.advance(100);
    assert_eq!(t.grants(), [l.permission(PEER, Expired, 500)]);
    t.advance(99);
    assert_eq!(t.grants(), []);
    t.now += Duration::from_secs(1);
    t.e.handle_timeout(t.now);
    let out: Vec<Output> = std::iter::from_fn(|| t.e.poll_output()).take(10).collect();
    assert_eq!(
        out,
        [
            Output::Grant(l.channel(0x4000, PEER, Removed, 800)),
            Output::Grant(l.permission(PEER2, Removed, 700)),
            Output::CloseRelay { alloc: l.alloc }
        ]
    );
}

/// How an allocation can end, besides running out of lifetime.
#[derive(Debug, Clone, Copy)]
enum End {
    RefreshZero,
    /// Its REST credential expires (strict expiry).
    Credential,
    CloseAll,
    CloseUser,
    CloseRelayPort,
    ConnectionClosed,
}

#[test]
fn every_way_an_allocation_ends_reports_each_grant_removed() {
    // A stream client, so that a closed connection is one of the ends; a
    // REST credential valid for 100 s, so that strict expiry is another.
    let c = ClientAddr {
        remote: client(1).remote,
        via: Via::Stream {
            listener: 0,
            conn: 7,
            tls: true,
        },
    };
    use End::*;
    for end in [
        RefreshZero,
        Credential,
        CloseAll,
        CloseUser,
        CloseRelayPort,
        ConnectionClosed,
    ] {
        let mut t = T::new();
        let (u, p) = crate::auth::rest_credentials("s3cret", "carol", UNIX0 + 100);
        let signed = |t: &mut T, req: Req| {
            let n = t.nonce_for(c);
            t.one(c, &req.sign_as(&u, &p, &n))
        };
        let r = signed(&mut t, Req::new(METHOD_ALLOCATE).transport(17));
        let relay = wire::read_xor_address(
            wire::attr(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap(),
            &r.transaction_id.0,
        )
        .unwrap();
        let l = Life::new(&t, c, relay);
        let r = signed(&mut t, Req::new(METHOD_CREATE_PERMISSION).peer(peer(PEER)));
        assert_eq!(code(&r), None);
        t.advance(10);
        let bind = Req::new(METHOD_CHANNEL_BIND)
            .channel(0x4000)
            .peer(peer(PEER2));
        assert_eq!(code(&signed(&mut t, bind)), None);
        assert_eq!(t.grants().len(), 3);
        match end {
            RefreshZero => {
                signed(&mut t, Req::new(METHOD_REFRESH).lifetime(0));
            }
            Credential => t.advance(90),
            CloseAll => t.e.close_all(t.now),
            CloseUser => assert_eq!(t.e.close_user(t.now, "carol"), 1),
            CloseRelayPort => assert!(t.e.close_relay_port(t.now, relay.port())),
            ConnectionClosed => t.e.connection_closed(t.now, c),
        }
        assert_eq!(t.e.allocation_count(), 0, "{end:?}");
        assert_eq!(
            t.grants(),
            [
                l.channel(0x4000, PEER2, Removed, 610),
                l.permission(PEER, Removed, 300),
                l.permission(PEER2, Removed, 310)
            ],
            "{end:?}"
        );
    }
}

#[test]
fn a_reload_reports_what_its_policy_removes_or_changes() {
    let mut t = T::new();
    let c = client(1);
    let relay = t.allocate(c);
    let l = Life::new(&t, c, relay);
    assert_eq!(t.permit(c, PEER), None);
    assert_eq!(t.bind(c, 0x4000, PEER2), None);
    // The server's own relay address: only live relay ports get through.
    let own = |reach| Granted::Permission {
        ip: relay.ip(),
        reach,
    };
    assert_eq!(t.permit(c, &relay.to_string()), None);
    assert_eq!(t.grants()[3], l.grant(own(Reach::LiveRelay), Created, 300));
    // The new policy denies PEER2 and opens the relay address to any port.
    let policy = PeerPolicy::new(
        vec!["198.51.100.1/32".parse::<Cidr>().unwrap()],
        vec!["93.184.216.35/32".parse::<Cidr>().unwrap()],
        vec!["198.51.100.1".parse().unwrap()],
        (50000, 50009),
    );
    t.e.update(Update {
        credentials: t.e.cfg.live.credentials.clone(),
        policy: policy.clone(),
        limits: t.e.cfg.live.limits,
        strict_expiry: true,
        expiry_grace: Duration::ZERO,
        ..t.e.cfg.live.clone()
    });
    assert_eq!(
        t.grants(),
        [
            l.channel(0x4000, PEER2, Removed, 600),
            l.permission(PEER2, Removed, 300),
            l.grant(own(Reach::Open), Refreshed, 300)
        ]
    );
    // The same policy again changes nothing, and reports nothing.
    t.e.update(Update {
        credentials: t.e.cfg.live.credentials.clone(),
        policy,
        limits: t.e.cfg.live.limits,
        strict_expiry: true,
        expiry_grace: Duration::ZERO,
        ..t.e.cfg.live.clone()
    });
    assert_eq!(t.grants(), []);
}

#[test]
fn a_grant_names_the_relay_of_its_peers_family() {
    let mut t = T::with(dual_config());
    let c = client(1);
    let r = t.signed(
        c,
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
    );
    let relays = relayed_addresses(&r);
    let v6 = "[2606:4700::1]:9";
    let r = t.signed(
        c,
        Req::new(METHOD_CREATE_PERMISSION)
            .peer(peer(PEER))
            .peer(peer(v6)),
    );
    assert_eq!(code(&r), None);
    let l4 = Life::new(&t, c, relays[0]);
    let l6 = Life::new(&t, c, relays[1]);
    assert_eq!(
        t.grants(),
        [
            l4.permission(PEER, Created, 300),
            l6.permission(v6, Created, 300)
        ]
    );
}

#[test]
fn one_request_reports_at_most_one_grant_per_entry() {
    // Quotas cap an allocation at 10 permissions and 10 channels.
    let mut t = T::new();
    let c = client(1);
    t.allocate(c);
    let peers: Vec<String> = (1..=10).map(|i| format!("93.184.216.{i}:9")).collect();
    // Every peer twice, on two ports: one permission, one event, per IP.
    let mut req = Req::new(METHOD_CREATE_PERMISSION);
    for p in &peers {
        req = req.peer(peer(p)).peer(SocketAddr::new(peer(p).ip(), 10));
    }
    assert_eq!(code(&t.signed(c, req)), None);
    let g = t.grants();
    assert_eq!(g.len(), 10);
    assert!(g.iter().all(|g| g.change == Created));
    for (i, p) in peers.iter().enumerate() {
        assert_eq!(t.bind(c, 0x4000 + i as u16, p), None);
        let g = t.grants();
        assert_eq!(
            g.iter().map(|g| g.change).collect::<Vec<_>>(),
            [Refreshed, Created]
        );
    }
    assert_eq!(t.bind(c, 0x400A, "93.184.216.11:9"), Some(508));
    assert_eq!(t.grants(), [], "a refused request grants nothing");
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(0));
    let g = t.grants();
    assert_eq!(g.len(), 20);
    assert!(g.iter().all(|g| g.change == Removed));
    assert!(
        g[..10]
            .iter()
            .all(|g| matches!(g.what, Granted::Channel { .. }))
    );
}

/// One permission or channel of one allocation, as a mirror keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Permission(AllocId, std::net::IpAddr),
    Channel(AllocId, u16),
}

fn key_of(g: &Grant) -> Key {
    match g.what {
        Granted::Permission { ip, .. } => Key::Permission(g.alloc, ip),
        Granted::Channel { number, .. } => Key::Channel(g.alloc, number.get()),
    }
}

/// Apply grants to a mirror, checking each against what came before.
fn apply(mirror: &mut HashMap<Key, Grant>, grants: &[Grant], now: Instant) {
    for g in grants {
        let k = key_of(g);
        match g.change {
            Created => {
                assert!(g.expires > now, "created dead: {g:?}");
                assert!(mirror.insert(k, *g).is_none(), "created twice: {g:?}");
            }
            Refreshed => {
                assert!(g.expires > now, "refreshed dead: {g:?}");
                assert!(mirror.insert(k, *g).is_some(), "refreshed unknown: {g:?}");
            }
            Expired | Removed => {
                if g.change == Expired {
                    assert!(g.expires <= now, "expired early: {g:?}");
                }
                let had = mirror.remove(&k);
                assert_eq!(had.map(|h| h.what), Some(g.what), "ended unknown: {g:?}");
            }
        }
    }
}

/// The mirror holds exactly the engine's permissions and channels.
fn assert_mirrors(t: &T, clients: &[ClientAddr], mirror: &HashMap<Key, Grant>) {
    let mut expected = HashMap::new();
    for &c in clients {
        let Some(id) = t.e.allocation_of(c) else {
            continue;
        };
        let a = t.e.allocation(id).unwrap();
        let owner = a.owner(id);
        for p in &a.permissions {
            let Output::Grant(g) = owner.permission(p, Created) else {
                unreachable!()
            };
            expected.insert(key_of(&g), g);
        }
        for ch in &a.channels {
            let Output::Grant(g) = owner.channel(ch, Created) else {
                unreachable!()
            };
            expected.insert(key_of(&g), g);
        }
    }
    let strip = |m: &HashMap<Key, Grant>| -> HashMap<Key, Grant> {
        m.iter()
            .map(|(k, g)| {
                (
                    *k,
                    Grant {
                        change: Created,
                        ..*g
                    },
                )
            })
            .collect()
    };
    assert_eq!(strip(mirror), expected);
    let gauges = t.e.gauges();
    assert_eq!(gauges.permissions + gauges.channels, mirror.len() as u64);
}

#[test]
fn a_mirror_kept_from_grants_alone_matches_the_engine_at_every_step() {
    let mut t = T::new();
    let clients = [client(1), client(2), client(3)];
    let peers = [PEER, PEER2, "93.184.216.36:7", "93.184.216.34:7"];
    let mut mirror = HashMap::new();
    let mut x: u64 = 0x5eed;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let mut seen = [0usize; 4];
    for _ in 0..600 {
        let c = clients[next(3) as usize];
        let p = peers[next(4) as usize];
        match next(10) {
            0 => {
                t.signed(c, Req::new(METHOD_ALLOCATE).transport(17));
            }
            1 | 2 => {
                t.permit(c, p);
            }
            3 | 4 => {
                t.bind(c, 0x4000 + next(3) as u16, p);
            }
            5 | 6 => t.advance(1 + next(200)),
            7 => {
                let lifetime = [0, 600, 1200][next(3) as usize] as u32;
                t.signed(c, Req::new(METHOD_REFRESH).lifetime(lifetime));
            }
            8 => {
                if let Some(id) = t.e.allocation_of(c) {
                    relay_everything(&mut t, c, id);
                }
            }
            _ => {
                if let Some(id) = t.e.allocation_of(c) {
                    let port = t.e.allocation(id).unwrap().relayed.port();
                    assert!(t.e.close_relay_port(t.now, port));
                }
            }
        }
        let grants = t.grants();
        for g in &grants {
            seen[g.change as usize] += 1;
        }
        apply(&mut mirror, &grants, t.now);
        assert_mirrors(&t, &clients, &mirror);
    }
    // Every kind of change happened, many times over.
    assert!(seen.iter().all(|&n| n >= 10), "{seen:?}");
}

#[test]
fn shortened_lifetimes_expire_permissions_and_channels_at_their_time() {
    // `permission_lifetime` 2 s and `channel_lifetime` 3 s: each entry is
    // granted for its own lifetime, expires at it, and a refresh counts
    // from the refresh (RFC 8656 §9, §12).
    let mut cfg = config((50000..50010).collect());
    cfg.live.permission_lifetime = Duration::from_secs(2);
    cfg.live.channel_lifetime = Duration::from_secs(3);
    let mut t = T::with(cfg);
    let c = client(1);
    let relay = t.allocate(c);
    let l = Life::new(&t, c, relay);
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    assert_eq!(t.permit(c, PEER2), None);
    assert_eq!(
        t.grants(),
        [
            l.permission(PEER, Created, 2),
            l.channel(0x4000, PEER, Created, 3),
            l.permission(PEER2, Created, 2)
        ]
    );
    t.advance(1);
    assert_eq!(t.permit(c, PEER2), None);
    assert_eq!(t.grants(), [l.permission(PEER2, Refreshed, 3)]);
    t.advance(1);
    assert_eq!(t.grants(), [l.permission(PEER, Expired, 2)]);
    t.advance(1);
    assert_eq!(
        t.grants(),
        [
            l.channel(0x4000, PEER, Expired, 3),
            l.permission(PEER2, Expired, 3)
        ]
    );
    // The hold is no longer than the binding's life: 3 s, not 300 s.
    assert_eq!(t.bind(c, 0x4000, PEER2), Some(400), "on hold");
    t.advance(3);
    assert_eq!(t.bind(c, 0x4000, PEER2), None, "the hold ended with 3 s");
}

#[test]
fn the_default_lifetimes_are_the_rfcs() {
    let t = T::new();
    assert_eq!(t.e.cfg.live.permission_lifetime, Duration::from_secs(300));
    assert_eq!(t.e.cfg.live.channel_lifetime, Duration::from_secs(600));
}
