//! Load spreading: an Allocate past the threshold, or while draining, is
//! answered 300 with the node the shell named for the client's family and
//! transport, signed, before anything is allocated or counted.

use super::*;
use crate::engine::spread::{Spread, Target, Targets};
use crate::engine::stats::Transport;

fn to(s: &str) -> Target {
    Target {
        address: s.parse().unwrap(),
        domain: None,
    }
}

/// Ten relay ports, a capacity of 2, redirect above half.
fn spread(targets: Targets) -> Spread {
    Spread {
        above: Some(0.5),
        capacity: 2,
        range: 10,
        targets,
    }
}

fn alternate(r: &Message) -> Option<SocketAddr> {
    let v = wire::attr(r, ATTR_ALTERNATE_SERVER)?.to_vec();
    let ip = std::net::Ipv4Addr::new(v[4], v[5], v[6], v[7]);
    Some(SocketAddr::from((ip, u16::from_be_bytes([v[2], v[3]]))))
}

#[test]
fn above_the_threshold_new_allocates_go_to_the_named_node() {
    let mut t = T::new();
    let mut targets = Targets::default();
    targets.set(false, Transport::Udp, Some(to("127.0.0.2:3478")));
    targets.set(true, Transport::Udp, Some(to("[2001:db8::2]:3478")));
    t.e.set_spread(spread(targets));
    // Load 0, then 0.5 (not above): both served here.
    t.allocate(client(1));
    t.allocate(client(2));
    assert_eq!(t.e.allocation_count(), 2);
    let held = t.e.cfg.shared.total();
    // Load 1 now: the third goes elsewhere, signed, counting nothing.
    let r = t.signed(client(3), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), Some(300));
    assert!(signed_with(&r, &key()));
    assert_eq!(alternate(&r), Some("127.0.0.2:3478".parse().unwrap()));
    assert_eq!(t.e.allocation_count(), 2);
    assert_eq!(t.e.cfg.shared.total(), held);
    assert_eq!(t.e.stats.redirects, 1);
    // A Refresh of an allocation held here is served.
    let r = t.signed(client(1), Req::new(METHOD_REFRESH));
    assert_eq!(code(&r), None);
}

#[test]
fn without_a_target_of_the_clients_kind_it_is_served_or_refused_as_before() {
    let mut t = T::new();
    let mut targets = Targets::default();
    // Only an IPv6 and a TCP target: an IPv4 UDP client has none.
    targets.set(true, Transport::Udp, Some(to("[2001:db8::2]:3478")));
    targets.set(false, Transport::Tcp, Some(to("127.0.0.2:3478")));
    t.e.set_spread(spread(targets));
    t.allocate(client(1));
    t.allocate(client(2));
    // Above the threshold but nowhere to send it: handled here as before.
    let r = t.signed(client(3), Req::new(METHOD_ALLOCATE).transport(17));
    assert_ne!(code(&r), Some(300));
    assert!(wire::attr(&r, ATTR_ALTERNATE_SERVER).is_none());
    assert_eq!(t.e.stats.redirects, 0);
}

#[test]
fn draining_prefers_the_clusters_node_over_the_configured_alternate() {
    let mut t = T::new();
    let mut targets = Targets::default();
    targets.set(false, Transport::Udp, Some(to("127.0.0.3:3478")));
    t.e.set_spread(Spread {
        above: None,
        ..spread(targets)
    });
    let r = t.signed(client(1), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(code(&r), None, "not draining, no threshold: served");
    t.e.drain(Some("198.51.100.7:3478".parse::<SocketAddr>().unwrap()));
    let r = t.signed(client(2), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(alternate(&r), Some("127.0.0.3:3478".parse().unwrap()));
    t.e.set_spread(Spread::default());
    let r = t.signed(client(2), Req::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(alternate(&r), Some("198.51.100.7:3478".parse().unwrap()));
}
