//! Usage facts: what an accounting consumer needs to know of each
//! allocation (created, refreshed, its traffic, deleted), as coturn
//! publishes them with `--redis-statsdb`. The engine only states the
//! facts, after [`super::Engine::usage_on`]; the shell formats and sends
//! them. Nothing here runs for relayed packets: their counts are plain
//! integers on the allocation, read when a fact is made.

use std::time::Duration;

use super::allocation::Allocation;
use super::stats::{Direction, TrafficCount};
use crate::addr::ClientAddr;

/// An allocation's traffic as coturn counts it: what its client sent and
/// was sent (relayed frames: ChannelData, Send and Data indications, with
/// their framing), and what its peers sent and were sent (payloads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub from_client: TrafficCount,
    pub to_client: TrafficCount,
    pub from_peers: TrafficCount,
    pub to_peers: TrafficCount,
}

impl Counts {
    /// What was counted since `before` (an earlier reading of the same
    /// allocation).
    pub fn since(&self, before: &Counts) -> Counts {
        let d = |a: TrafficCount, b: TrafficCount| TrafficCount {
            packets: a.packets.saturating_sub(b.packets),
            bytes: a.bytes.saturating_sub(b.bytes),
        };
        Counts {
            from_client: d(self.from_client, before.from_client),
            to_client: d(self.to_client, before.to_client),
            from_peers: d(self.from_peers, before.from_peers),
            to_peers: d(self.to_peers, before.to_peers),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }

    /// The counts of `a` now.
    pub(super) fn of(a: &Allocation) -> Counts {
        Counts {
            from_client: a.framed[Direction::ToPeer.index()],
            to_client: a.framed[Direction::ToClient.index()],
            from_peers: a.traffic[Direction::ToClient.index()],
            to_peers: a.traffic[Direction::ToPeer.index()],
        }
    }
}

/// What happened to an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// The Allocate succeeded with this lifetime (seconds).
    Created { lifetime: u32 },
    /// A Refresh succeeded with this lifetime (0: the allocation ends now).
    Refreshed { lifetime: u32 },
    /// Traffic since the last fact that reported it.
    Traffic(Counts),
    /// The allocation ended: the traffic since the last report, and the
    /// whole allocation's.
    Deleted { last: Counts, total: Counts },
}

/// One usage fact of one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The allocation's number, unique among every engine of this server
    /// since it started ([`super::ServerState::next_serial`]).
    pub serial: u64,
    /// The full username the allocation authenticated with.
    pub user: String,
    pub client: ClientAddr,
    /// How long the allocation has lived.
    pub age: Duration,
    pub fact: Fact,
}
