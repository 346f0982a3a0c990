//! Load spreading across the nodes of a cluster: a node that is draining,
//! or whose load is above a threshold, answers a new Allocate with 300 Try
//! Alternate (RFC 8489 §10, RFC 8656 §7.2) naming another node.
//!
//! The engine decides nothing about other nodes: the shell hands it, per
//! address family and client transport, the one node it should send
//! clients to ([`Spread::targets`]), already chosen as live, not draining
//! and below the threshold. The engine only measures its own load, exactly
//! and at the moment of the Allocate, from the server-wide counters.

use std::net::SocketAddr;

use super::stats::Transport;

/// Where clients of one family and transport are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// ALTERNATE-SERVER (RFC 8489 §14.15).
    pub address: SocketAddr,
    /// ALTERNATE-DOMAIN (RFC 8489 §14.16), for TLS clients: the name the
    /// other node's certificate carries.
    pub domain: Option<String>,
}

/// One [`Target`] (or none) per address family and client transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    slots: [Option<Target>; 2 * Transport::COUNT],
}

impl Targets {
    fn slot(v6: bool, transport: Transport) -> usize {
        usize::from(v6) * Transport::COUNT + transport.index()
    }

    pub fn set(&mut self, v6: bool, transport: Transport, target: Option<Target>) {
        self.slots[Self::slot(v6, transport)] = target;
    }

    pub fn get(&self, v6: bool, transport: Transport) -> Option<&Target> {
        self.slots[Self::slot(v6, transport)].as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }
}

/// What the engine needs to decide on its own whether to redirect.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spread {
    /// Redirect new Allocates while the load is above this fraction
    /// (`None`: only while draining).
    pub above: Option<f64>,
    /// Allocations this node holds at most (`limits.total_allocations`,
    /// which defaults to the relay port count).
    pub capacity: u32,
    /// Relay ports of every relay address together.
    pub range: u32,
    pub targets: Targets,
}

/// A node's load: the larger of `held ÷ capacity` and the share of the
/// relay port range in use (`1 − free ÷ range`); 1 when either is 0.
pub fn load(held: u32, capacity: u32, free: usize, range: u32) -> f64 {
    if capacity == 0 || range == 0 {
        return 1.0;
    }
    let by_count = f64::from(held) / f64::from(capacity);
    let by_ports = 1.0 - (free as f64 / f64::from(range)).min(1.0);
    by_count.max(by_ports)
}

impl Spread {
    /// The node a new Allocate of a client of this family and transport is
    /// sent to now, if any: when `draining`, or when `load` is above the
    /// threshold, and the shell named a node for it.
    pub fn target(
        &self,
        draining: bool,
        load: impl FnOnce() -> f64,
        v6: bool,
        transport: Transport,
    ) -> Option<&Target> {
        let target = self.targets.get(v6, transport)?;
        if draining || self.above.is_some_and(|a| load() > a) {
            return Some(target);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Target {
        Target {
            address: s.parse().unwrap(),
            domain: None,
        }
    }

    #[test]
    fn load_is_the_larger_share() {
        assert_eq!(load(1, 2, 100, 100), 0.5);
        assert_eq!(load(1, 100, 50, 100), 0.5);
        assert_eq!(load(0, 100, 100, 100), 0.0);
        assert_eq!(load(0, 0, 100, 100), 1.0);
        assert_eq!(load(0, 10, 0, 0), 1.0);
    }

    #[test]
    fn redirects_only_above_the_threshold_or_draining_and_with_a_target() {
        let mut s = Spread {
            above: Some(0.5),
            capacity: 2,
            range: 100,
            targets: Targets::default(),
        };
        assert_eq!(
            s.target(true, || 1.0, false, Transport::Udp),
            None,
            "no target"
        );
        s.targets
            .set(false, Transport::Udp, Some(at("127.0.0.2:3478")));
        assert_eq!(
            s.target(false, || 0.5, false, Transport::Udp),
            None,
            "not above"
        );
        assert!(s.target(false, || 0.51, false, Transport::Udp).is_some());
        assert!(s.target(true, || 0.0, false, Transport::Udp).is_some());
        assert_eq!(
            s.target(true, || 1.0, true, Transport::Udp),
            None,
            "IPv6 client"
        );
        assert_eq!(
            s.target(true, || 1.0, false, Transport::Tcp),
            None,
            "TCP client"
        );
        s.above = None;
        assert_eq!(s.target(false, || 1.0, false, Transport::Udp), None);
    }
}
