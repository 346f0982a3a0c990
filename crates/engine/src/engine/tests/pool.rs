//! Engines that share one relay port pool: any engine may use every port,
//! a reservation holds against all of them, and a port comes back to the
//! pool whichever engine ends its allocation.

use std::collections::HashSet;

use super::*;

/// Two engines on one `ServerState`, each naming the same `ports`, as the
/// server's UDP shard and stream worker do.
fn two(ports: std::ops::Range<u16>, dual: bool) -> (T, T) {
    let shared = Arc::new(ServerState::default());
    let mk = |seed| {
        let mut c = if dual {
            dual_config()
        } else {
            config(Vec::new())
        };
        c.ports = ports.clone().collect();
        c.seed = seed;
        c.live.limits.allocations_per_user = 100;
        c.shared = shared.clone();
        T::with(c)
    };
    (mk(1), mk(2))
}

fn allocate_code(t: &mut T, c: ClientAddr) -> Option<u16> {
    code(&t.signed(c, Req::new(METHOD_ALLOCATE).transport(17)))
}

#[test]
fn either_engine_may_take_every_port_of_the_range() {
    let (mut a, mut b) = two(50000..50010, false);
    // One engine takes the whole range; the other then has nothing.
    let got: HashSet<u16> = (0..10)
        .map(|i| a.allocate(client(100 + i)).port())
        .collect();
    assert_eq!(got, (50000..50010).collect());
    assert_eq!(allocate_code(&mut a, client(200)), Some(508));
    assert_eq!(allocate_code(&mut b, client(200)), Some(508));
    assert_eq!((a.e.free_ports(), b.e.free_ports()), (0, 0));
    // A port freed by one engine is the other's to take.
    let id = a.e.allocation_of(client(103)).unwrap();
    let freed = a.e.allocation(id).unwrap().relayed.port();
    a.signed(client(103), Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(b.e.free_ports(), 1);
    assert_eq!(b.allocate(client(300)).port(), freed);
}

#[test]
fn engines_taking_in_turn_never_share_a_port() {
    let (mut a, mut b) = two(50000..50040, false);
    let mut seen = HashSet::new();
    for i in 0..20 {
        assert!(seen.insert(a.allocate(client(100 + i)).port()));
        assert!(seen.insert(b.allocate(client(100 + i)).port()));
    }
    assert_eq!(seen.len(), 40);
    assert_eq!(allocate_code(&mut b, client(500)), Some(508));
    assert_eq!(b.e.cfg.shared.total(), 40, "the quota counted each once");
}

#[test]
fn a_reservation_holds_against_every_engine_and_redeems_at_another() {
    let (mut a, mut b) = two(50000..50010, false);
    let r = reserve_pair(&mut a, client(1));
    let even = wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS)
        .unwrap()
        .port();
    let token = wire::attr(&r, ATTR_RESERVATION_TOKEN).unwrap().to_vec();
    assert_eq!(
        b.e.free_ports(),
        8,
        "both ports of the pair are gone for b too"
    );
    // b takes every other port, never the reserved one.
    let got: HashSet<u16> = (0..8).map(|i| b.allocate(client(100 + i)).port()).collect();
    assert!(!got.contains(&even) && !got.contains(&(even + 1)));
    assert_eq!(allocate_code(&mut b, client(200)), Some(508));
    // The token redeems at b: the reserved port.
    let r = b.signed(
        client(201),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_RESERVATION_TOKEN, &token),
    );
    assert_eq!(code(&r), None);
    assert_eq!(relayed_addresses(&r)[0].port(), even + 1);
    // Its expiry at a, later, gives nothing back: the port is b's now.
    a.advance(30);
    assert_eq!(a.e.free_ports(), 0);
    // b's allocation ends: the port goes back to the pool, for a as well.
    b.signed(client(201), Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(a.e.free_ports(), 1);
    assert_eq!(a.allocate(client(300)).port(), even + 1);
}

#[test]
fn an_unredeemed_reservation_comes_back_to_the_pool() {
    let (mut a, b) = two(50000..50010, false);
    reserve_pair(&mut a, client(1));
    assert_eq!(b.e.free_ports(), 8);
    a.advance(30);
    assert_eq!(b.e.free_ports(), 9, "the reserved port is free for b too");
    assert_eq!(
        b.e.cfg.shared.total(),
        1,
        "and its quota share is given back"
    );
}

#[test]
fn dual_allocations_of_two_engines_take_distinct_ports_of_one_range() {
    let (mut a, mut b) = two(50000..50004, true);
    let dual = |t: &mut T, c| {
        let r = t.signed(
            c,
            Req::new(METHOD_ALLOCATE)
                .transport(17)
                .attr(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]),
        );
        assert_eq!(code(&r), None);
        relayed_addresses(&r)
    };
    let mut ports: Vec<u16> = dual(&mut a, client(10))
        .into_iter()
        .chain(dual(&mut b, client(10)))
        .map(|r| r.port())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![50000, 50001, 50002, 50003]);
    assert_eq!(allocate_code(&mut a, client(11)), Some(508));
    b.signed(client(10), Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(a.e.free_ports(), 2, "both of b's ports came back");
}

/// Relay addresses 10.0.0.1 and 10.0.0.2, advertised as 203.0.113.1 and
/// 203.0.113.2, ports 50000-50009 each; only the first has an IPv6 twin.
fn two_relays() -> EngineConfig {
    let mut c = dual_config();
    c.relay_bind = "10.0.0.1".parse().unwrap();
    c.relay_public = "203.0.113.1".parse().unwrap();
    c.more_relays = vec![RelayAddress {
        bind: "10.0.0.2".parse().unwrap(),
        public: "203.0.113.2".parse().unwrap(),
        bind_v6: None,
        public_v6: None,
    }];
    c.live.limits.allocations_per_user = 100;
    c
}

#[test]
fn allocations_spread_over_every_relay_address() {
    let mut t = T::with(two_relays());
    assert_eq!(t.e.free_ports(), 20);
    let mut at = std::collections::HashMap::<std::net::IpAddr, HashSet<u16>>::new();
    for i in 0..20 {
        let relayed = t.allocate(client(100 + i));
        // The socket binds the address that is advertised, at its port.
        let bind = t.opened.pop().unwrap();
        let public = if bind.ip().to_string() == "10.0.0.1" {
            "203.0.113.1"
        } else {
            "203.0.113.2"
        };
        assert_eq!(
            relayed,
            SocketAddr::new(public.parse().unwrap(), bind.port())
        );
        assert!(at.entry(relayed.ip()).or_default().insert(relayed.port()));
    }
    // Ten each: more than one address's range holds.
    assert_eq!(at.len(), 2);
    assert!(at.values().all(|ports| ports.len() == 10), "{at:?}");
    assert_eq!(allocate_code(&mut t, client(200)), Some(508));
    assert_eq!(t.e.free_ports(), 0);
    // A port freed on the second address is the next one taken.
    let second: SocketAddr = "203.0.113.2:0".parse().unwrap();
    let c = (100..120)
        .map(client)
        .find(|&c| {
            let id = t.e.allocation_of(c).unwrap();
            t.e.allocation(id).unwrap().relayed.ip() == second.ip()
        })
        .unwrap();
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(t.e.free_ports(), 1);
    assert_eq!(t.allocate(client(300)).ip(), second.ip());
}

#[test]
fn ipv6_and_reserved_ports_stay_on_their_relay_address() {
    let mut t = T::with(two_relays());
    // IPv6 only where there is an IPv6 twin: the first address.
    for i in 0..4 {
        let r = t.signed(
            client(100 + i),
            Req::new(METHOD_ALLOCATE)
                .transport(17)
                .attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]),
        );
        assert_eq!(code(&r), None);
        let relayed = wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
        assert_eq!(
            relayed.ip(),
            "2001:db8::7".parse::<std::net::IpAddr>().unwrap()
        );
    }
    // A reserved port is redeemed at the address it was reserved on.
    let mut ips = HashSet::new();
    for i in 0..4 {
        let r = reserve_pair(&mut t, client(200 + i));
        let even = wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
        let token = wire::attr(&r, ATTR_RESERVATION_TOKEN).unwrap().to_vec();
        let r = t.signed(
            client(300 + i),
            Req::new(METHOD_ALLOCATE)
                .transport(17)
                .attr(ATTR_RESERVATION_TOKEN, &token),
        );
        let odd = wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
        assert_eq!(odd, SocketAddr::new(even.ip(), even.port() + 1));
        ips.insert(even.ip());
    }
    assert_eq!(ips.len(), 2, "pairs on both addresses: {ips:?}");
}
