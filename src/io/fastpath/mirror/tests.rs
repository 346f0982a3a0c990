use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::addr::{ChannelNumber, PeerAddr};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const LISTENER: &str = "10.0.0.1:3478";
const CLIENT: &str = "10.1.0.2:40000";
const RELAY: &str = "10.0.0.1:50000";
const PEER: &str = "10.2.0.2:9000";

struct T {
    m: Mirror,
    pools: Pools,
    now: Instant,
}

impl T {
    fn new() -> T {
        T {
            m: Mirror::new(vec![Some(sa(LISTENER)), None], 100, 1000),
            pools: Pools {
                channels: Slots::new(4),
                allocs: Slots::new(2),
            },
            now: Instant::now(),
        }
    }

    fn grant(&mut self, via: Via, what: Granted, change: Change, secs: u64) -> Vec<Op> {
        let g = Grant {
            alloc: AllocId(7),
            client: ClientAddr {
                remote: sa(CLIENT),
                via,
            },
            relay: sa("192.0.2.1:50000"),
            what,
            change,
            expires: self.now + Duration::from_secs(secs),
        };
        let mut ops = Vec::new();
        self.m.grant(&g, sa(RELAY), &mut self.pools, &mut ops);
        ops
    }

    fn perm(&mut self, change: Change, reach: Reach, secs: u64) -> Vec<Op> {
        let ip = sa(PEER).ip();
        self.grant(Via::Udp(0), Granted::Permission { ip, reach }, change, secs)
    }

    fn chan(&mut self, n: u16, change: Change, secs: u64) -> Vec<Op> {
        let what = Granted::Channel {
            number: ChannelNumber::new(n).unwrap(),
            peer: PeerAddr(peer(n)),
        };
        self.grant(Via::Udp(0), what, change, secs)
    }

    fn at(&self, secs: u64) -> Instant {
        self.now + Duration::from_secs(secs)
    }
}

fn client_key(n: u16) -> FlowKey {
    FlowKey {
        src: sa(CLIENT),
        dst: sa(LISTENER),
        channel: n,
    }
}

/// The peer of channel `n`: one IP, a port per channel (a peer is bound
/// to one channel at most, RFC 8656 §12).
fn peer(n: u16) -> SocketAddr {
    let mut p = sa(PEER);
    p.set_port(9000 + n - 0x4000);
    p
}

fn peer_key(n: u16) -> FlowKey {
    FlowKey {
        src: peer(n),
        dst: sa(RELAY),
        channel: 0,
    }
}

#[test]
fn a_bound_channel_with_a_live_permission_enters_both_ways() {
    let mut t = T::new();
    assert_eq!(t.perm(Change::Created, Reach::Any, 300), vec![]);
    let ops = t.chan(0x4000, Change::Created, 600);
    // The permission expires first: the entries die with it.
    let e = t.at(300);
    assert_eq!(
        ops,
        vec![
            Op::Ceilings {
                slot: 0,
                packet_rate: 100,
                bandwidth: 1000
            },
            Op::Put(
                client_key(0x4000),
                FlowTarget {
                    src: sa(RELAY),
                    dst: peer(0x4000),
                    channel: 0,
                    chan_slot: 0,
                    alloc_slot: 0,
                    expires: e
                }
            ),
            Op::Put(
                peer_key(0x4000),
                FlowTarget {
                    src: sa(LISTENER),
                    dst: sa(CLIENT),
                    channel: 0x4000,
                    chan_slot: 0,
                    alloc_slot: 0,
                    expires: e
                }
            ),
        ]
    );
    assert_eq!(t.m.in_kernel(), 1);
    // A refreshed permission moves the expiry on, same slots.
    let ops = t.perm(Change::Refreshed, Reach::Any, 500);
    assert!(
        matches!(ops[..], [Op::Put(k, v), Op::Put(..)] if k == client_key(0x4000) && v.expires == t.at(500) && v.chan_slot == 0)
    );
}

#[test]
fn nothing_enters_without_the_engine_holding_every_part() {
    let mut t = T::new();
    // A channel reported before its permission (never by the engine, but
    // the mirror does not rely on it), and a permission that reaches only
    // some ports: nothing in the kernel.
    assert_eq!(t.chan(0x4000, Change::Created, 600), vec![]);
    assert_eq!(t.perm(Change::Created, Reach::LiveRelay, 300), vec![]);
    assert_eq!(t.perm(Change::Created, Reach::Open, 300), vec![]);
    assert_eq!(t.m.in_kernel(), 0);
    // Only now.
    assert_eq!(t.perm(Change::Created, Reach::Any, 300).len(), 3);
    // A reload narrowing the reach takes it out.
    let ops = t.perm(Change::Refreshed, Reach::LiveRelay, 300);
    assert_eq!(
        ops,
        vec![
            Op::Delete(client_key(0x4000)),
            Op::Delete(peer_key(0x4000)),
            Op::RetireChannel {
                slot: 0,
                alloc: AllocId(7)
            },
            Op::RetireAlloc {
                slot: 0,
                alloc: AllocId(7)
            },
        ]
    );
    assert_eq!(t.m.in_kernel(), 0);
}

#[test]
fn expiry_removal_and_permission_loss_take_it_out() {
    for end in [Change::Expired, Change::Removed] {
        let mut t = T::new();
        t.perm(Change::Created, Reach::Any, 300);
        t.chan(0x4001, Change::Created, 600);
        t.chan(0x4002, Change::Created, 600);
        assert_eq!(t.m.in_kernel(), 2);
        let ops = t.chan(0x4001, end, 600);
        assert_eq!(
            ops,
            vec![
                Op::Delete(client_key(0x4001)),
                Op::Delete(peer_key(0x4001)),
                Op::RetireChannel {
                    slot: 0,
                    alloc: AllocId(7)
                },
            ]
        );
        // The permission going takes the other channel and the allocation
        // slot with it.
        let ops = t.perm(end, Reach::Any, 300);
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert!(matches!(ops[3], Op::RetireAlloc { slot: 0, .. }));
        assert_eq!(t.m.in_kernel(), 0);
        // The channel itself ends later; then nothing is left behind.
        assert_eq!(t.chan(0x4002, end, 600), vec![]);
        assert!(t.m.allocs.is_empty(), "nothing left behind");
        // Its slots are free again.
        assert_eq!(t.pools.channels.take(), Some(1));
        assert_eq!(t.pools.channels.take(), Some(0));
    }
}

#[test]
fn stream_clients_wildcard_listeners_and_mixed_families_stay_in_userspace() {
    let mut t = T::new();
    let via = Via::Stream {
        listener: 0,
        conn: 1,
        tls: false,
    };
    let ip = sa(PEER).ip();
    let what = Granted::Permission {
        ip,
        reach: Reach::Any,
    };
    t.grant(via, what, Change::Created, 300);
    let ch = Granted::Channel {
        number: ChannelNumber::new(0x4000).unwrap(),
        peer: PeerAddr(sa(PEER)),
    };
    assert_eq!(t.grant(via, ch, Change::Created, 600), vec![]);
    // Listener 1 has no specific address.
    let mut t = T::new();
    t.grant(Via::Udp(1), what, Change::Created, 300);
    assert_eq!(t.grant(Via::Udp(1), ch, Change::Created, 600), vec![]);
    // An IPv6 peer of an IPv4 client.
    let mut t = T::new();
    let v6 = sa("[2001:db8::2]:9000");
    let what = Granted::Permission {
        ip: v6.ip(),
        reach: Reach::Any,
    };
    t.grant(Via::Udp(0), what, Change::Created, 300);
    let ch = Granted::Channel {
        number: ChannelNumber::new(0x4000).unwrap(),
        peer: PeerAddr(v6),
    };
    assert_eq!(t.grant(Via::Udp(0), ch, Change::Created, 600), vec![]);
    assert_eq!(t.m.in_kernel(), 0);
}

#[test]
fn channels_past_the_slots_stay_in_userspace() {
    let mut t = T::new();
    t.perm(Change::Created, Reach::Any, 300);
    for n in 0..6 {
        t.chan(0x4000 + n, Change::Created, 600);
    }
    // Four channel slots: the other two are relayed by ferroturn's threads.
    assert_eq!(t.m.in_kernel(), 4);
    assert_eq!(t.m.channel_slots().count(), 4);
    assert_eq!(t.m.alloc_slots().count(), 1);
    // Once one leaves, the next event for the others may take its slot.
    t.chan(0x4000, Change::Removed, 600);
    assert_eq!(t.m.in_kernel(), 3);
    t.chan(0x4005, Change::Refreshed, 600);
    assert_eq!(t.m.in_kernel(), 4);
}
