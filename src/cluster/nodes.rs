//! The nodes of a cluster, as one node sees them through Redis: the
//! per-user allocation counts of the others (summed into the quota check
//! of every engine here), and operator actions that reach every node.
//!
//! Each node keeps, under `ferroturn/realm/<realm>/`:
//! - `node/<node>/quota`: a hash of user name → allocations held on that
//!   node, rewritten whole every `cluster.heartbeat` and expiring after
//!   three heartbeats, so that a node that dies stops counting by itself;
//! - `node/<node>/sessions`: a hash of relay address → the session as
//!   JSON, written as sessions come and go, rewritten whole (with fresh
//!   traffic counts) every heartbeat, and expiring like the counts;
//! - `nodes`: a sorted set of node names, scored by the Unix time (ms) of
//!   their last heartbeat, which a node reads to learn the others;
//! - `revoked`: a hash of revoked names → the Unix time the revocation
//!   ends (entries past it are dropped when a node reads the hash);
//! - the channel `events`, where each change is published at once
//!   (`count`), each heartbeat too (`beat`), and operator actions (`kill`,
//!   `revoke`, `unrevoke`), each carried out by every node.
//!
//! A node learns another's counts from its messages and, every heartbeat,
//! from its hash (with the hash's remaining time to live); it forgets
//! them when that time runs out without a heartbeat. When Redis cannot be
//! reached nothing is heard, so the others' counts age out the same way
//! and the quota falls back to this node's own count.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Other nodes one node keeps track of; beyond, a newcomer is not counted.
pub const MAX_NODES: usize = 64;

/// (node, name) counts kept for all other nodes together; beyond, a new
/// one is not counted (its node's allocations of that name count as 0).
/// About 100 bytes each: some 13 MB at most.
pub const MAX_ENTRIES: usize = 131_072;
/// The most allocations one node can say it holds of one name: far above
/// what a node can hold (relay ports), low enough that the sums of
/// [`MAX_NODES`] nodes never overflow.
pub const MAX_COUNT: u32 = 1 << 20;
/// The longest name taken from another node: a USERNAME's limit (RFC 8489
/// §14.3: under 513 bytes); longer ones are no name ferroturn can hold.
pub const MAX_NAME: usize = 512;
/// The longest node name (`[cluster] node`: 1 to 64 characters).
pub const MAX_NODE_NAME: usize = 64;

/// Rows expire after this many heartbeats.
pub const EXPIRY_BEATS: u32 = 3;

/// The keys and channel of the cluster's own data (beside coturn's).
#[derive(Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(realm: &str) -> Keys {
        Keys {
            prefix: format!("ferroturn/realm/{realm}/"),
        }
    }

    /// The hash of `node`'s per-user counts.
    pub fn quota(&self, node: &str) -> String {
        format!("{}node/{node}/quota", self.prefix)
    }

    /// The hash of `node`'s sessions: relay address → [`super::Stored`].
    pub fn sessions(&self, node: &str) -> String {
        format!("{}node/{node}/sessions", self.prefix)
    }

    /// The sorted set of node names.
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// The hash of revoked names → the Unix time their revocation ends.
    pub fn revoked(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// `node`'s load and the addresses it takes clients at (JSON, see
    /// [`super::load::Advert`]).
    pub fn load(&self, node: &str) -> String {
        format!("{}node/{node}/load", self.prefix)
    }

    /// The channel of changes and operator actions.
    pub fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }
}

/// One message on the channel. Node names have no spaces (`cluster.node`);
/// a user name, which may, comes last.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `count NODE N NAME`: `node` holds `n` allocations of `name` now.
    Count {
        node: &'a str,
        n: u32,
        name: &'a str,
    },
    /// `beat NODE`: `node` is alive (and rewrote its rows).
    Beat { node: &'a str },
    /// `kill NODE NAME`: the operator closed `name`'s allocations at
    /// `node`; every node closes its own.
    Kill { node: &'a str, name: &'a str },
    /// `revoke NODE UNTIL NAME`: `name` is refused until the Unix time
    /// `until`, and its allocations closed, on every node.
    Revoke {
        node: &'a str,
        until: u64,
        name: &'a str,
    },
    /// `unrevoke NODE NAME`: `name`'s revocation is lifted.
    Unrevoke { node: &'a str, name: &'a str },
    /// `load NODE JSON`: `node`'s load now ([`super::load::Advert`]).
    Load { node: &'a str, advert: &'a str },
}

impl Event<'_> {
    pub fn parse(text: &str) -> Option<Event<'_>> {
        let (kind, rest) = text.split_once(' ').unwrap_or((text, ""));
        let (node, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        if node.is_empty() || node.len() > MAX_NODE_NAME {
            return None;
        }
        // Every kind but `load` ends in a name: none longer than a
        // USERNAME can be.
        if kind != "load" && rest.len() > MAX_NAME + 21 {
            return None;
        }
        match kind {
            "count" => {
                let (n, name) = numbered(rest)?;
                let n = u32::try_from(n).ok()?;
                Some(Event::Count { node, n, name })
            }
            "beat" if rest.is_empty() => Some(Event::Beat { node }),
            "kill" if !rest.is_empty() && rest.len() <= MAX_NAME => {
                Some(Event::Kill { node, name: rest })
            }
            "revoke" => {
                let (until, name) = numbered(rest)?;
                Some(Event::Revoke { node, until, name })
            }
            "unrevoke" if !rest.is_empty() && rest.len() <= MAX_NAME => {
                Some(Event::Unrevoke { node, name: rest })
            }
            "load" if !rest.is_empty() => Some(Event::Load { node, advert: rest }),
            _ => None,
        }
    }

    /// The node the message comes from.
    pub fn node(&self) -> &str {
        match self {
            Event::Count { node, .. }
            | Event::Beat { node }
            | Event::Kill { node, .. }
            | Event::Revoke { node, .. }
            | Event::Unrevoke { node, .. }
            | Event::Load { node, .. } => node,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Event::Count { node, n, name } => format!("count {node} {n} {name}"),
            Event::Beat { node } => format!("beat {node}"),
            Event::Kill { node, name } => format!("kill {node} {name}"),
            Event::Revoke { node, until, name } => format!("revoke {node} {until} {name}"),
            Event::Unrevoke { node, name } => format!("unrevoke {node} {name}"),
            Event::Load { node, advert } => format!("load {node} {advert}"),
        }
    }
}

/// A number, then a name (which may hold spaces, but is not empty).
fn numbered(rest: &str) -> Option<(u64, &str)> {
    let (n, name) = rest.split_once(' ')?;
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    Some((n.parse().ok()?, name))
}

/// What this node knows of one other node.
struct Peer {
    /// When its rows expire unless it is heard from again.
    until: Instant,
    counts: HashMap<String, u32>,
}

/// The other nodes' per-user counts and their sums per name.
pub struct Peers {
    me: String,
    /// How long a node counts after it was last heard from.
    expiry: Duration,
    nodes: HashMap<String, Peer>,
    sums: HashMap<String, u32>,
    /// Counts kept in all `nodes`.
    entries: usize,
}

/// A name's new sum over the other nodes (0: none), to hand to the engines.
pub type Sum = (String, u32);

impl Peers {
    pub fn new(me: &str, expiry: Duration) -> Peers {
        Peers {
            me: me.to_owned(),
            expiry,
            nodes: HashMap::new(),
            sums: HashMap::new(),
            entries: 0,
        }
    }

    /// Other nodes heard from within their expiry.
    pub fn live(&self) -> usize {
        self.nodes.len()
    }

    /// `node` is alive until `until` at least; false if it is this node
    /// or one too many.
    fn heard(&mut self, node: &str, until: Instant) -> bool {
        if node == self.me {
            return false;
        }
        if let Some(p) = self.nodes.get_mut(node) {
            p.until = p.until.max(until);
            return true;
        }
        if self.nodes.len() >= MAX_NODES {
            return false;
        }
        self.nodes.insert(
            node.to_owned(),
            Peer {
                until,
                counts: HashMap::new(),
            },
        );
        true
    }

    /// A heartbeat of `node`.
    pub fn beat(&mut self, node: &str, now: Instant) {
        self.heard(node, now + self.expiry);
    }

    /// `node` holds `n` of `name` now: the name's new sum, if it changed.
    pub fn count(&mut self, node: &str, name: &str, n: u32, now: Instant) -> Option<Sum> {
        if !self.heard(node, now + self.expiry) {
            return None;
        }
        self.set(node, name, n)
    }

    fn set(&mut self, node: &str, name: &str, n: u32) -> Option<Sum> {
        if name.len() > MAX_NAME {
            return None;
        }
        // Sums of MAX_NODES clamped counts stay far from u32::MAX.
        let n = n.min(MAX_COUNT);
        let peer = self.nodes.get_mut(node)?;
        let old = match (peer.counts.get_mut(name), n) {
            (Some(c), 0) => {
                let old = *c;
                peer.counts.remove(name);
                self.entries -= 1;
                old
            }
            (Some(c), _) => std::mem::replace(c, n),
            (None, 0) => return None,
            (None, _) if self.entries >= MAX_ENTRIES => return None,
            (None, _) => {
                peer.counts.insert(name.to_owned(), n);
                self.entries += 1;
                0
            }
        };
        if old == n {
            return None;
        }
        let sum = self.sums.get(name).copied().unwrap_or(0) + n - old;
        if sum == 0 {
            self.sums.remove(name);
        } else {
            self.sums.insert(name.to_owned(), sum);
        }
        Some((name.to_owned(), sum))
    }

    /// `node`'s whole hash as read, which lives for `ttl` more: every
    /// changed sum.
    pub fn replace(
        &mut self,
        node: &str,
        counts: HashMap<String, u32>,
        ttl: Duration,
        now: Instant,
    ) -> Vec<Sum> {
        if counts.is_empty() && !self.nodes.contains_key(node) {
            // Nothing to count; its liveness comes from its beats.
            return Vec::new();
        }
        if !self.heard(node, now + ttl) {
            return Vec::new();
        }
        let gone: Vec<String> = self.nodes[node]
            .counts
            .keys()
            .filter(|n| !counts.contains_key(*n))
            .cloned()
            .collect();
        let mut changed = Vec::new();
        for name in gone {
            changed.extend(self.set(node, &name, 0));
        }
        for (name, n) in counts {
            changed.extend(self.set(node, &name, n));
        }
        changed
    }

    /// Forget the nodes not heard from in time: every changed sum.
    pub fn expire(&mut self, now: Instant) -> Vec<Sum> {
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, p)| p.until <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = Vec::new();
        for node in dead {
            let names: Vec<String> = self.nodes[&node].counts.keys().cloned().collect();
            for name in names {
                changed.extend(self.set(&node, &name, 0));
            }
            self.nodes.remove(&node);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for e in [
            Event::Count {
                node: "a",
                n: 3,
                name: "bob smith",
            },
            Event::Beat { node: "turn-1" },
            Event::Kill {
                node: "a",
                name: "1795000000:x y",
            },
            Event::Revoke {
                node: "b",
                until: 1_795_000_000,
                name: "leaked",
            },
            Event::Unrevoke {
                node: "b",
                name: "leaked",
            },
            Event::Load {
                node: "c",
                advert: "{\"load\":0.5}",
            },
        ] {
            assert_eq!(Event::parse(&e.text()), Some(e));
        }
        assert_eq!(Event::parse("count a x bob"), None);
        assert_eq!(Event::parse("other a"), None);
        assert_eq!(Event::parse("kill a"), None, "no name");
        assert_eq!(Event::parse("count a 1 "), None, "an empty name");
        assert_eq!(Event::parse("beat"), None);
        assert_eq!(Event::parse(""), None);
    }

    #[test]
    fn sums_follow_counts_and_expiry() {
        let t0 = Instant::now();
        let mut p = Peers::new("me", Duration::from_secs(30));
        assert_eq!(p.count("a", "bob", 2, t0), Some(("bob".into(), 2)));
        assert_eq!(p.count("b", "bob", 1, t0), Some(("bob".into(), 3)));
        assert_eq!(p.count("b", "bob", 1, t0), None, "no change");
        assert_eq!(p.count("me", "bob", 5, t0), None, "this node is not a peer");
        let later = t0 + Duration::from_secs(20);
        p.beat("b", later);
        // a's hash, read whole: carol added, bob gone.
        let read = HashMap::from([("carol".to_owned(), 1)]);
        let mut changed = p.replace("a", read, Duration::from_secs(5), later);
        changed.sort();
        assert_eq!(changed, vec![("bob".into(), 1), ("carol".into(), 1)]);
        assert_eq!(p.live(), 2);
        // a lives until t0 + 30 s (the later of its beat and its TTL).
        assert_eq!(p.expire(t0 + Duration::from_secs(29)), vec![]);
        assert_eq!(
            p.expire(t0 + Duration::from_secs(30)),
            vec![("carol".into(), 0)]
        );
        assert_eq!(p.live(), 1);
        assert_eq!(
            p.expire(later + Duration::from_secs(30)),
            vec![("bob".into(), 0)]
        );
        assert_eq!((p.live(), p.entries, p.sums.len()), (0, 0, 0));
    }

    /// However many nodes and names the others publish, what one node
    /// keeps of them is bounded.
    /// Whatever other nodes (or whoever writes to Redis) say, a sum never
    /// overflows and names no USERNAME can be are not taken.
    #[test]
    fn counts_from_others_are_clamped_and_names_bounded() {
        let t0 = Instant::now();
        let mut p = Peers::new("me", Duration::from_secs(30));
        let huge = Event::parse("count a 4294967295 bob").unwrap();
        let Event::Count { node, n, name } = huge else {
            panic!("{huge:?}")
        };
        assert_eq!(p.count(node, name, n, t0), Some(("bob".into(), MAX_COUNT)));
        assert_eq!(
            p.count("b", "bob", u32::MAX, t0),
            Some(("bob".into(), 2 * MAX_COUNT))
        );
        assert_eq!(p.count("a", "bob", 0, t0), Some(("bob".into(), MAX_COUNT)));
        let long = "x".repeat(MAX_NAME + 1);
        assert_eq!(p.count("a", &long, 1, t0), None);
        assert!(Event::parse(&format!("count a 1 {long}")).is_none());
        assert!(Event::parse(&format!("revoke a 1 {long}")).is_none());
        assert!(Event::parse(&format!("kill a {long}")).is_none());
        assert!(Event::parse(&format!("beat {}", "n".repeat(MAX_NODE_NAME + 1))).is_none());
        assert!(Event::parse(&format!("kill a {}", "y".repeat(MAX_NAME))).is_some());
    }

    #[test]
    fn peers_are_bounded() {
        let t0 = Instant::now();
        let mut p = Peers::new("me", Duration::from_secs(30));
        for i in 0..MAX_NODES + 5 {
            p.beat(&format!("n{i}"), t0);
        }
        assert_eq!(p.live(), MAX_NODES);
        assert_eq!(p.count("late", "x", 1, t0), None);
        for i in 0..MAX_ENTRIES + 5 {
            p.count("n0", &format!("u{i}"), 1, t0);
        }
        assert_eq!(p.entries, MAX_ENTRIES);
        assert_eq!(p.count("n1", "fresh", 1, t0), None, "full");
        assert_eq!(p.count("n0", "u0", 0, t0), Some(("u0".into(), 0)));
        assert_eq!(p.count("n1", "fresh", 1, t0), Some(("fresh".into(), 1)));
    }
}
