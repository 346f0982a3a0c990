//! Usage facts: made only after `usage_on`, one per creation, refresh and
//! end, traffic when asked and only if it moved, with counts that add up;
//! relaying a packet never makes one.

use super::*;
use crate::engine::stats::{Direction, TrafficCount};
use crate::engine::usage::{Counts, Fact};

impl T {
    /// The facts drained so far (answers drained too).
    fn facts(&mut self, c: ClientAddr) -> Vec<Fact> {
        self.drain(c);
        std::mem::take(&mut self.usage)
            .into_iter()
            .map(|u| {
                assert_eq!(u.client, c);
                assert_eq!(u.user, "alice");
                u.fact
            })
            .collect()
    }
}

fn count(packets: u64, bytes: u64) -> TrafficCount {
    TrafficCount { packets, bytes }
}

/// 3 ChannelData messages of 4 bytes from the client, 2 datagrams of 4
/// bytes from the peer; nothing queued for any of them.
fn relay(t: &mut T, c: ClientAddr, id: AllocId) {
    for _ in 0..3 {
        let fwd = t.e.handle_client(t.now, c, &[0x40, 0x00, 0, 4, 1, 2, 3, 4]);
        assert!(fwd.is_some(), "not relayed");
    }
    let mut buf = vec![0u8; channel_data::BUF_LEN];
    for _ in 0..2 {
        let back =
            t.e.handle_peer(t.now, id, peer(PEER), &mut buf, HEADROOM, HEADROOM + 4);
        assert!(back.is_some(), "not relayed back");
    }
    assert_eq!(t.e.poll_output(), None, "relayed data queued something");
}

const PEER: &str = "93.184.216.34:5000";

#[test]
fn facts_follow_an_allocation_and_its_traffic() {
    let mut t = T::new();
    let c = client(7);
    t.e.usage_on();
    t.allocate(c);
    let id = t.e.allocation_of(c).unwrap();
    assert_eq!(t.facts(c), [Fact::Created { lifetime: 600 }]);
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    assert_eq!(t.facts(c), [], "a binding is no usage fact");

    relay(&mut t, c, id);
    let first = Counts {
        from_client: count(3, 24),
        to_client: count(2, 16),
        from_peers: count(2, 8),
        to_peers: count(3, 12),
    };
    t.e.usage_traffic(t.now);
    assert_eq!(t.facts(c), [Fact::Traffic(first)]);
    t.e.usage_traffic(t.now);
    assert_eq!(t.facts(c), [], "nothing moved: nothing to report");

    t.signed(c, Req::new(METHOD_REFRESH).lifetime(900));
    assert_eq!(t.facts(c), [Fact::Refreshed { lifetime: 900 }]);

    relay(&mut t, c, id);
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(0));
    let total = Counts {
        from_client: count(6, 48),
        to_client: count(4, 32),
        from_peers: count(4, 16),
        to_peers: count(6, 24),
    };
    assert_eq!(
        t.facts(c),
        [
            Fact::Refreshed { lifetime: 0 },
            Fact::Deleted { last: first, total }
        ]
    );
}

#[test]
fn an_allocation_that_expires_reports_its_end_and_serials_differ() {
    let mut t = T::new();
    t.e.usage_on();
    let (a, b) = (client(8), client(9));
    t.allocate(a);
    t.allocate(b);
    t.drain(a);
    let serials: Vec<u64> = t.usage.iter().map(|u| u.serial).collect();
    assert_eq!(serials.len(), 2);
    assert_ne!(serials[0], serials[1]);
    t.usage.clear();
    t.advance(601);
    t.drain(a);
    let ends: Vec<&Fact> = t.usage.iter().map(|u| &u.fact).collect();
    let zero = Counts::default();
    assert_eq!(
        ends,
        [
            &Fact::Deleted {
                last: zero,
                total: zero
            },
            &Fact::Deleted {
                last: zero,
                total: zero
            }
        ]
    );
}

#[test]
fn without_usage_on_no_fact_is_made() {
    let mut t = T::new();
    let c = client(10);
    t.allocate(c);
    t.signed(c, Req::new(METHOD_REFRESH).lifetime(0));
    t.e.usage_traffic(t.now);
    t.drain(c);
    assert!(t.usage.is_empty(), "{:?}", t.usage);
}

#[test]
fn kernel_counts_reported_as_the_grants_leave_reach_the_final_fact() {
    // The shell takes an ended allocation's channels out of a kernel fast
    // path as it reads their Removed grants, which the engine queues
    // before the final usage fact; the kernel's last counts, handed over
    // then, are in that fact.
    let mut t = T::new();
    let c = client(11);
    t.e.usage_on();
    t.allocate(c);
    let id = t.e.allocation_of(c).unwrap();
    assert_eq!(t.bind(c, 0x4000, PEER), None);
    t.drain(c);
    t.usage.clear();
    let n = t.nonce_for(c);
    let refresh = Req::new(METHOD_REFRESH)
        .lifetime(0)
        .sign_as("alice", "wonderland", &n);
    assert!(t.e.handle_client(t.now, c, &refresh).is_none());
    let (mut facts, mut handed) = (Vec::new(), 0);
    while let Some(o) = t.e.poll_output() {
        match o {
            Output::Grant(g) if g.change == Change::Removed => {
                if let Granted::Channel { .. } = g.what {
                    handed += 1;
                    let to_peer = KernelRelayed {
                        packets: 5,
                        bytes: 50,
                        limited: 0,
                    };
                    t.e.kernel_relayed(id, Direction::ToPeer, to_peer);
                    let to_client = KernelRelayed {
                        packets: 2,
                        bytes: 20,
                        limited: 0,
                    };
                    t.e.kernel_relayed(id, Direction::ToClient, to_client);
                }
            }
            Output::Usage(u) => facts.push(u.fact),
            _ => {}
        }
    }
    assert_eq!(handed, 1);
    let total = Counts {
        from_client: count(5, 70),
        to_client: count(2, 28),
        from_peers: count(2, 20),
        to_peers: count(5, 50),
    };
    assert_eq!(
        facts,
        [
            Fact::Refreshed { lifetime: 0 },
            Fact::Deleted { last: total, total }
        ]
    );
    // Once the fact is out, later counts go to the server's totals only.
    t.e.kernel_relayed(
        id,
        Direction::ToPeer,
        KernelRelayed {
            packets: 1,
            bytes: 1,
            limited: 0,
        },
    );
    assert_eq!(t.e.poll_output(), None);
}
