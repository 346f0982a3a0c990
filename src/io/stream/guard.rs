//! What stream clients may cost, server-wide: the `[limits]` stream keys in
//! force (changed by a reload), connections and TLS handshakes per source
//! IP, and the count of every refusal.
//!
//! One [`StreamGuard`] is shared by all stream workers, so that a client
//! cannot dodge a per-IP cap by landing on another worker's socket. Its
//! table is locked only when a connection is accepted, finishes its
//! handshake or closes; the data path reads the limits from atomics.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::proxy_header::Refusal as ProxyRefusal;
use crate::addr::Origin;
use crate::config::StreamLimits;

crate::engine::stats::labels! {
    /// Why a stream client was refused or cut short.
    pub enum Refusal("reason") {
        /// A message was not finished within `stream_message_timeout` of its
        /// first byte (or a TLS handshake within that time of the accept).
        MessageTimeout = "message_timeout",
        /// No allocation `stream_allocation_timeout` after the accept or the
        /// end of the last allocation.
        AllocationTimeout = "allocation_timeout",
        /// The source IP already held `connections_per_ip` connections.
        PerIpConnections = "per_ip_connections",
        /// The source IP already ran `tls_handshakes_per_ip` handshakes.
        PerIpHandshakes = "per_ip_handshakes",
        /// A frame for a client that does not read was dropped: its queue held
        /// `stream_queue_bytes`.
        QueueFull = "queue_full",
        /// The server already held `stream_connections` connections.
        ServerConnections = "server_connections",
    }
}

/// The keys a source address is counted under: an IPv4 address (also when
/// it comes IPv4-mapped), or the /64 of an IPv6 one (a single subscriber
/// usually gets a whole /64, so counting addresses would cap nothing) and
/// its /48 (a site; a home gets a /56 of 256 /64s, which alone could fill
/// the server-wide cap at 64 each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Origin(Origin),
    Site(u64),
}

/// How many per-IP caps a /48 may hold: 16 /64s' worth.
const SITE_CAPS: u32 = 16;

impl Source {
    /// The keys of `ip`, each with how many per-IP caps it may hold.
    fn of(ip: IpAddr) -> [Option<(Source, u32)>; 2] {
        let origin = Origin::of(ip);
        [
            Some((Source::Origin(origin), 1)),
            origin.site().map(|s| (Source::Site(s), SITE_CAPS)),
        ]
    }
}

#[derive(Default)]
struct Counts {
    connections: u32,
    handshakes: u32,
}

/// The shared state of every stream worker (see the module comment).
pub struct StreamGuard {
    message_timeout: AtomicU64,
    allocation_timeout: AtomicU64,
    connections_per_ip: AtomicU32,
    handshakes_per_ip: AtomicU32,
    queue_bytes: AtomicU32,
    max_connections: AtomicU32,
    /// Connections held now, by every worker.
    connections: AtomicU32,
    by_source: Mutex<HashMap<Source, Counts>>,
    refusals: [AtomicU64; Refusal::COUNT],
    /// Connections closed on PROXY protocol listeners before they were
    /// served.
    proxy_refusals: [AtomicU64; ProxyRefusal::COUNT],
}

/// A connection's or a handshake's place in its source's count, given back
/// when dropped.
pub struct Slot {
    guard: Arc<StreamGuard>,
    sources: [Option<Source>; 2],
    handshake: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.guard.table();
        for source in self.sources.iter().flatten() {
            if let Some(c) = t.get_mut(source) {
                if self.handshake {
                    c.handshakes = c.handshakes.saturating_sub(1);
                } else {
                    c.connections = c.connections.saturating_sub(1);
                }
                if c.connections == 0 && c.handshakes == 0 {
                    t.remove(source);
                }
            }
        }
        if !self.handshake {
            self.guard.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Default for StreamGuard {
    /// A guard with the default limits.
    fn default() -> Self {
        let g = StreamGuard {
            message_timeout: AtomicU64::new(0),
            allocation_timeout: AtomicU64::new(0),
            connections_per_ip: AtomicU32::new(0),
            handshakes_per_ip: AtomicU32::new(0),
            queue_bytes: AtomicU32::new(0),
            max_connections: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            by_source: Mutex::new(HashMap::new()),
            refusals: Default::default(),
            proxy_refusals: Default::default(),
        };
        g.set(&StreamLimits::default());
        g
    }
}

impl StreamGuard {
    pub fn new(limits: &StreamLimits) -> Arc<StreamGuard> {
        let g = StreamGuard::default();
        g.set(limits);
        Arc::new(g)
    }

    /// Put reloaded limits in force: deadlines armed from now on, the next
    /// accept and the next queued frame use them.
    pub fn set(&self, l: &StreamLimits) {
        self.message_timeout
            .store(l.message_timeout, Ordering::Relaxed);
        self.allocation_timeout
            .store(l.allocation_timeout, Ordering::Relaxed);
        self.connections_per_ip
            .store(l.connections_per_ip, Ordering::Relaxed);
        self.handshakes_per_ip
            .store(l.tls_handshakes_per_ip, Ordering::Relaxed);
        self.queue_bytes.store(l.queue_bytes, Ordering::Relaxed);
        self.max_connections.store(l.connections, Ordering::Relaxed);
    }

    pub fn message_timeout(&self) -> Duration {
        Duration::from_secs(self.message_timeout.load(Ordering::Relaxed))
    }

    pub fn allocation_timeout(&self) -> Duration {
        Duration::from_secs(self.allocation_timeout.load(Ordering::Relaxed))
    }

    pub fn queue_bytes(&self) -> usize {
        self.queue_bytes.load(Ordering::Relaxed) as usize
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Counts>> {
        self.by_source.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection from `ip`, unless the server holds
    /// `stream_connections` already ([`Refusal::ServerConnections`]) or its
    /// source holds its cap ([`Refusal::PerIpConnections`]).
    pub fn connection(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        if !self.server_place() {
            return None;
        }
        let cap = self.connections_per_ip.load(Ordering::Relaxed);
        let slot = self.take(ip, cap, false, Refusal::PerIpConnections);
        if slot.is_none() {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
        slot
    }

    /// A connection from a load balancer on a PROXY protocol listener:
    /// counted server-wide, but exempt from the per-IP cap (it carries
    /// many clients). `None` when the server holds `stream_connections`.
    pub fn balancer_connection(self: &Arc<Self>) -> Option<Slot> {
        self.server_place().then(|| Slot {
            guard: self.clone(),
            sources: [None, None],
            handshake: false,
        })
    }

    /// Take a place in the server-wide count, unless the server holds
    /// `stream_connections` already ([`Refusal::ServerConnections`]).
    fn server_place(&self) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed);
        if self.connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            self.refuse(Refusal::ServerConnections);
            return false;
        }
        true
    }

    /// A TLS handshake from `ip`, unless its source runs its cap already
    /// (counted as [`Refusal::PerIpHandshakes`]).
    pub fn handshake(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let cap = self.handshakes_per_ip.load(Ordering::Relaxed);
        self.take(ip, cap, true, Refusal::PerIpHandshakes)
    }

    fn take(
        self: &Arc<Self>,
        ip: IpAddr,
        cap: u32,
        handshake: bool,
        refusal: Refusal,
    ) -> Option<Slot> {
        let keys = Source::of(ip);
        let held = |c: &Counts| {
            if handshake {
                c.handshakes
            } else {
                c.connections
            }
        };
        {
            let mut t = self.table();
            let full = keys.iter().flatten().any(|(source, caps)| {
                cap != 0
                    && t.get(source)
                        .is_some_and(|c| held(c) >= cap.saturating_mul(*caps))
            });
            if full {
                drop(t);
                self.refuse(refusal);
                return None;
            }
            for (source, _) in keys.iter().flatten() {
                let c = t.entry(*source).or_default();
                if handshake {
                    c.handshakes += 1;
                } else {
                    c.connections += 1;
                }
            }
        }
        Some(Slot {
            guard: self.clone(),
            sources: keys.map(|k| k.map(|(s, _)| s)),
            handshake,
        })
    }

    /// Count a refusal.
    pub fn refuse(&self, r: Refusal) {
        self.refusals[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Count a connection closed on a PROXY protocol listener.
    pub fn refuse_proxy(&self, r: ProxyRefusal) {
        self.proxy_refusals[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// PROXY protocol refusals so far, by [`ProxyRefusal`].
    pub fn proxy_refusals(&self) -> [u64; ProxyRefusal::COUNT] {
        std::array::from_fn(|i| self.proxy_refusals[i].load(Ordering::Relaxed))
    }

    /// Refusals so far, by [`Refusal`].
    pub fn refusals(&self) -> [u64; Refusal::COUNT] {
        std::array::from_fn(|i| self.refusals[i].load(Ordering::Relaxed))
    }

    /// Sources with a connection or handshake now (for tests).
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.table().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_source_and_give_back_on_drop() {
        let g = StreamGuard::new(&StreamLimits {
            connections_per_ip: 2,
            tls_handshakes_per_ip: 1,
            ..StreamLimits::default()
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let c1 = g.connection(a).unwrap();
        let _c2 = g.connection(a).unwrap();
        assert!(g.connection(a).is_none());
        let _b1 = g.connection(b).unwrap();
        let h = g.handshake(a).unwrap();
        assert!(g.handshake(a).is_none());
        assert!(g.handshake(b).is_some());
        drop(c1);
        let _c3 = g.connection(a).unwrap();
        drop(h);
        assert!(g.handshake(a).is_some());
        assert_eq!(g.refusals(), [0, 0, 1, 1, 0, 0]);
        // The mapped form of an IPv4 address is that address.
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert!(g.connection(mapped).is_none());
    }

    #[test]
    fn ipv6_counts_per_64_and_zero_means_no_cap() {
        let g = StreamGuard::new(&StreamLimits {
            connections_per_ip: 1,
            tls_handshakes_per_ip: 1,
            ..StreamLimits::default()
        });
        let one = g.connection("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            g.connection("2001:db8:1:2::ffff".parse().unwrap())
                .is_none()
        );
        let other = g.connection("2001:db8:1:3::1".parse().unwrap()).unwrap();
        assert_eq!(g.sources(), 3, "two /64s and their /48");
        drop((one, other));
        assert_eq!(g.sources(), 0, "empty entries are removed");

        g.set(&StreamLimits {
            connections_per_ip: 0,
            tls_handshakes_per_ip: 0,
            ..StreamLimits::default()
        });
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let many: Vec<Slot> = (0..100).filter_map(|_| g.connection(ip)).collect();
        assert_eq!(many.len(), 100);
    }

    #[test]
    fn an_ipv6_site_holds_sixteen_caps() {
        let g = StreamGuard::new(&StreamLimits {
            connections_per_ip: 2,
            tls_handshakes_per_ip: 1,
            ..StreamLimits::default()
        });
        // 40 /64s of one /48 (a /56 is inside one): 16 x 2 connections.
        let held: Vec<Slot> = (0..40u32)
            .flat_map(|i| {
                let ip: IpAddr = format!("2001:db8:7:{i:x}::1").parse().unwrap();
                [g.connection(ip), g.connection(ip)]
            })
            .flatten()
            .collect();
        assert_eq!(held.len(), 32);
        assert!(
            g.connection("2001:db8:8::1".parse().unwrap()).is_some(),
            "another /48"
        );
        drop(held);
        assert!(g.connection("2001:db8:7:99::1".parse().unwrap()).is_some());
    }

    #[test]
    fn balancer_connections_count_server_wide_only() {
        let g = StreamGuard::new(&StreamLimits {
            connections: 3,
            connections_per_ip: 1,
            tls_handshakes_per_ip: 1,
            ..StreamLimits::default()
        });
        let a = g.balancer_connection().unwrap();
        let _b = g.balancer_connection().unwrap();
        assert_eq!(g.sources(), 0, "no per-IP entry");
        let _c = g.connection("127.0.0.1".parse().unwrap()).unwrap();
        assert!(g.balancer_connection().is_none(), "the server is full");
        assert_eq!(g.refusals()[Refusal::ServerConnections as usize], 1);
        drop(a);
        assert!(g.balancer_connection().is_some(), "given back on drop");
    }

    #[test]
    fn the_server_wide_cap_counts_every_source() {
        let g = StreamGuard::new(&StreamLimits {
            connections: 3,
            ..StreamLimits::default()
        });
        let ips: Vec<IpAddr> = (1..=4)
            .map(|i| format!("127.0.1.{i}").parse().unwrap())
            .collect();
        let held: Vec<Slot> = ips.iter().filter_map(|&ip| g.connection(ip)).collect();
        assert_eq!(held.len(), 3);
        assert_eq!(g.refusals()[Refusal::ServerConnections as usize], 1);
        // Handshakes are not connections of their own.
        let h = g.handshake(ips[3]).unwrap();
        drop(h);
        drop(held);
        assert!(g.connection(ips[3]).is_some(), "given back on drop");
        // A per-IP refusal gives its server-wide place back.
        g.set(&StreamLimits {
            connections: 3,
            connections_per_ip: 1,
            tls_handshakes_per_ip: 1,
            ..StreamLimits::default()
        });
        let _a = g.connection(ips[0]).unwrap();
        assert!(g.connection(ips[0]).is_none());
        let _b = g.connection(ips[1]).unwrap();
        assert!(g.connection(ips[2]).is_some());
    }
}
