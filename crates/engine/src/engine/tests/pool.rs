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
