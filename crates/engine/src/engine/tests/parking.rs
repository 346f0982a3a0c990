//! Relay ports parked between allocations (`parking.rs`): nothing parks
//! without churn; with it, the pool's accounting while a port is parked,
//! its reuse, its return to the pool, its bounds, and what never takes a
//! parked port.

use super::*;
use crate::engine::parking::{PARK_CHURN, PARK_FREE_MIN, PARK_HOLD, PARK_MAX};

/// Relay ports of the engines here: enough for parking to be allowed.
const N: u16 = PARK_FREE_MIN as u16 + 100;

/// An engine with relay ports `50000..50000 + n` that parks, on `shared`.
fn parking(n: u16, shared: &Arc<ServerState>, seed: u64) -> T {
    let mut c = config((50000..50000 + n).collect());
    c.seed = seed;
    c.live.limits.allocations_per_user = 1000;
    c.live.limits.total_allocations = 1000;
    c.shared = shared.clone();
    let mut t = T::with(c);
    t.e.park_relays(true);
    t
}

fn delete(t: &mut T, c: ClientAddr) {
    let r = t.signed(c, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(code(&r), None, "delete failed");
}

fn bind(port: u16) -> SocketAddr {
    SocketAddr::new("0.0.0.0".parse().unwrap(), port)
}

/// Allocations made and deleted at the churn mark: after it the engine
/// parks, and holds the last one's port parked.
fn churn(t: &mut T) {
    for i in 0..PARK_CHURN as u16 {
        let c = client(20_000 + i);
        t.allocate(c);
        delete(t, c);
    }
    assert_eq!(t.e.parked_ports(), 1, "the churn's last port");
    t.parking.clear();
}

/// Free, parked and allocated ports make up the range.
fn accounted(t: &T, n: u16) {
    assert_eq!(
        t.e.free_ports() + t.e.parked_ports() + t.e.allocation_count(),
        n as usize
    );
}

#[test]
fn an_ended_allocation_parks_its_port_for_the_next_one_under_churn() {
    let shared = Arc::new(ServerState::default());
    let mut t = parking(N, &shared, 7);
    // Without churn: nothing parks, the port is free at once.
    t.allocate(client(99));
    delete(&mut t, client(99));
    assert!(t.parking.is_empty());
    assert_eq!((t.e.free_ports(), t.e.parked_ports()), (N as usize, 0));

    churn(&mut t);
    let port = t.allocate(client(100)).port();
    let id = t.e.allocation_of(client(100)).unwrap();
    delete(&mut t, client(100));
    // The socket is kept and the port stays out of the pool, and is no
    // live relay port.
    assert_eq!(
        t.parking,
        [Output::ParkRelay {
            alloc: id,
            bind: bind(port)
        }]
    );
    assert_eq!(t.e.parked_ports(), 1);
    accounted(&t, N);
    assert!(!shared.is_live(SocketAddr::new("198.51.100.1".parse().unwrap(), port)));
    // The next Allocate takes it, at the same bind address.
    assert_eq!(t.allocate(client(101)).port(), port);
    assert_eq!(t.opened.last(), Some(&bind(port)));
    assert_eq!(t.e.parked_ports(), 0);
    accounted(&t, N);
    // Parked again, then unused for PARK_HOLD: back in the pool, and the
    // shell told to close the socket.
    delete(&mut t, client(101));
    t.parking.clear();
    let due = t.e.poll_timeout().expect("a deadline");
    assert!(due <= t.now + PARK_HOLD);
    t.now += PARK_HOLD - Duration::from_millis(1);
    t.e.handle_timeout(t.now);
    t.drain(client(1));
    assert_eq!(t.e.parked_ports(), 1, "held until PARK_HOLD");
    t.now += Duration::from_millis(1);
    t.e.handle_timeout(t.now);
    t.drain(client(1));
    assert_eq!(t.parking, [Output::CloseParked { bind: bind(port) }]);
    assert_eq!((t.e.free_ports(), t.e.parked_ports()), (N as usize, 0));
}

#[test]
fn a_parked_port_is_no_other_engines_and_a_scarce_pool_parks_nothing() {
    let shared = Arc::new(ServerState::default());
    let mut a = parking(N, &shared, 1);
    let mut b = parking(N, &shared, 2);
    churn(&mut a);
    // B takes every free port; A's parked one is not among them.
    let free = b.e.free_ports();
    assert_eq!(free, N as usize - 1);
    for i in 0..free as u16 {
        b.allocate(client(1000 + i));
    }
    let r = b.signed(client(5000), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(508));
    // A's next allocation takes it; ended with the pool empty, it goes
    // back at once, for B.
    let port = a.allocate(client(100)).port();
    delete(&mut a, client(100));
    assert!(a.parking.is_empty(), "{:?}", a.parking);
    assert_eq!((a.e.parked_ports(), b.e.free_ports()), (0, 1));
    assert_eq!(b.allocate(client(5001)).port(), port);
}

#[test]
fn parking_is_bounded_and_every_port_is_accounted_for() {
    let n = N + PARK_MAX as u16;
    let shared = Arc::new(ServerState::default());
    let mut t = parking(n, &shared, 3);
    churn(&mut t);
    let clients: Vec<ClientAddr> = (0..PARK_MAX as u16 + 6).map(|i| client(1000 + i)).collect();
    for &c in &clients {
        t.allocate(c);
    }
    for &c in &clients {
        delete(&mut t, c);
        accounted(&t, n);
    }
    assert_eq!(t.e.parked_ports(), PARK_MAX);
    let parks = t
        .parking
        .iter()
        .filter(|o| matches!(o, Output::ParkRelay { .. }))
        .count();
    assert_eq!(parks, PARK_MAX);
    // Closing everything (an operator, or the stop) gives them all back.
    t.allocate(client(5000));
    t.e.close_all(t.now);
    t.drain(client(5000));
    assert_eq!((t.e.parked_ports(), t.e.free_ports()), (0, n as usize));
}

#[test]
fn even_port_never_takes_a_parked_odd_port() {
    let shared = Arc::new(ServerState::default());
    let mut t = parking(N, &shared, 5);
    churn(&mut t);
    // The churn's parked port goes to a kept allocation; then one with an
    // odd port ends: the only parked port is odd.
    let mut odd = None;
    for i in 0..40 {
        let c = client(100 + i);
        if t.allocate(c).port() % 2 == 1 {
            odd = Some(c);
            break;
        }
    }
    let odd = odd.expect("an odd port within 40 allocations");
    let port =
        t.e.allocation(t.e.allocation_of(odd).unwrap())
            .unwrap()
            .port
            .0;
    delete(&mut t, odd);
    assert_eq!(t.e.parked_ports(), 1);
    // EVEN-PORT (RFC 8656 §14.6): an even port from the pool.
    let r = t.signed(
        client(400),
        Req::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(ATTR_EVEN_PORT, &[0]),
    );
    assert_eq!(code(&r), None);
    let got = wire::xor_address(&r, ATTR_XOR_RELAYED_ADDRESS)
        .unwrap()
        .port();
    assert_eq!(got % 2, 0);
    assert_eq!(t.e.parked_ports(), 1);
    // Without it, the parked port serves.
    assert_eq!(t.allocate(client(401)).port(), port);
}

#[test]
fn a_parked_port_goes_only_to_the_user_who_had_it() {
    let shared = Arc::new(ServerState::default());
    let mut t = parking(N, &shared, 11);
    churn(&mut t);
    let port = t.allocate(client(100)).port();
    delete(&mut t, client(100));
    assert_eq!(t.e.parked_ports(), 1);
    // Another user's Allocate takes a port from the pool: the parked one
    // stays parked for its owner.
    let bob = client(200);
    let n = t.nonce_for(bob);
    let r = t.one(
        bob,
        &Req::new(METHOD_ALLOCATE)
            .transport(17)
            .sign_as("bob", "builder", &n),
    );
    assert_eq!(code(&r), None, "bob's allocate");
    let v = wire::attr(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
    let got = wire::read_xor_address(v, &r.transaction_id.0).unwrap();
    assert_ne!(got.port(), port, "bob got alice's parked port");
    assert_eq!(t.e.parked_ports(), 1);
    accounted(&t, N);
    // Its owner's next Allocate takes it.
    assert_eq!(t.allocate(client(101)).port(), port);
    assert_eq!(t.e.parked_ports(), 0);
    accounted(&t, N);
}
