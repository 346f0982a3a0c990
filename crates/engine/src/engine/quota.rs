//! Quotas and rate limits: per-user and total allocation counts shared by
//! every worker, per-allocation token buckets on the data path, and a
//! fixed-size per-source limiter for unauthenticated answers.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use super::ports::{PortPool, Relay};
use super::stats::Code;
use crate::addr::{Origin, RelayPort};

/// Quotas and rate limits; 0 turns a rate limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Allocations one user may hold at once (486 beyond, RFC 8656 §7.2).
    pub allocations_per_user: u32,
    /// Allocations the server holds at once (508 beyond).
    pub total_allocations: u32,
    /// Permissions per allocation (508 beyond, §9.2).
    pub permissions_per_allocation: u32,
    /// Channels per allocation (508 beyond, §12.2).
    pub channels_per_allocation: u32,
    /// Bytes per second per allocation and direction; excess is dropped.
    pub bandwidth: u64,
    /// Packets per second per allocation and direction; excess is dropped.
    pub packet_rate: u32,
    /// Unauthenticated answers (401, 400, 438) per second per source IP.
    pub unauthenticated_rate: u32,
    /// Peer connections per TCP allocation (RFC 6062), in every state
    /// (508 to a Connect beyond, an incoming one is closed).
    pub connections_per_allocation: u32,
}

impl Default for Limits {
    /// The documented defaults (the total is the relay port count when
    /// read from a config file).
    fn default() -> Self {
        Limits {
            allocations_per_user: 10,
            total_allocations: u32::MAX,
            permissions_per_allocation: 10,
            channels_per_allocation: 10,
            bandwidth: 6_250_000,
            packet_rate: 10_000,
            unauthenticated_rate: 100,
            connections_per_allocation: 16,
        }
    }
}

/// A relay port held for a RESERVATION-TOKEN.
#[derive(Debug)]
struct Reservation {
    relay: Relay,
    port: RelayPort,
    v6: bool,
    /// Only the user who reserved it may redeem it.
    user: String,
    /// What it counts against the quotas until it is redeemed or expires.
    held: Held,
}

/// What an allocation (or a reserved port) counts against the quotas: one
/// against the user's `name` (the static user, or the name part of a REST
/// credential, so that minting new credentials does not reset it) and
/// `ports` against the server's total (a dual-stack allocation holds two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    pub ports: u32,
}

/// Names whose other-node counts one server keeps: each costs its name
/// and a count, about 8 MB for names of 64 bytes. Beyond, a name's other
/// allocations are not counted here (its quota is then this node's own).
pub const MAX_REMOTE_NAMES: usize = 65_536;

/// Names one server keeps revoked at once; beyond, a revocation is
/// refused (the operator is told).
pub const MAX_REVOKED: usize = 65_536;

/// The per-user counts, and the names changed since a cluster's shell
/// last took them (`None` without a cluster: nothing is noted).
#[derive(Debug, Default)]
struct Users {
    counts: HashMap<String, u32>,
    changed: Option<HashSet<String>>,
}

impl Users {
    fn changed(&mut self, name: &str) {
        if let Some(c) = &mut self.changed
            && !c.contains(name)
        {
            c.insert(name.to_owned());
        }
    }
}

/// The server-wide state that every worker's engine shares (one per
/// server, behind an `Arc`; not the state of one engine). The quotas and
/// reservations are touched by the control plane only (Allocate and
/// allocation removal); the relay port pool, the live relay ports and the
/// unauthenticated-answer limiter are atomics, used without a lock.
#[derive(Debug)]
pub struct ServerState {
    /// Ports held for a RESERVATION-TOKEN (RFC 8656 §7.2, §14.9): the
    /// Allocate that redeems it may arrive at another worker.
    reservations: Mutex<HashMap<[u8; 8], Reservation>>,
    /// Allocations and reservations held per user name.
    users: Mutex<Users>,
    /// The allocations other nodes of a cluster hold per user name, as
    /// the shell last heard ([`ServerState::set_remote`]); at most
    /// [`MAX_REMOTE_NAMES`] names.
    remote: Mutex<HashMap<String, u32>>,
    /// Names whose revocation the operator asked for, each until a Unix
    /// time ([`ServerState::revoke`]); at most [`MAX_REVOKED`].
    revoked: Mutex<HashMap<String, u64>>,
    /// Revocations this server applied (its operator's, or another
    /// node's), for the metrics.
    revocations_applied: AtomicU64,
    /// The last allocation number given ([`ServerState::next_serial`]).
    serial: AtomicU64,
    /// Relay ports held in all.
    total: AtomicU32,
    /// Relay ports that hold a live allocation, by family (IPv4, IPv6):
    /// the only ports of this host's own addresses a peer may be.
    live: [Box<[AtomicU64]>; 2],
    /// Unauthenticated answers per source IP, for the whole server.
    pub limiter: SourceLimiter,
    /// The relay ports of every engine: one pool, so that clients of any
    /// transport may use the whole range.
    pub ports: PortPool,
    /// The peer connections of every TCP allocation (RFC 6062), by
    /// CONNECTION-ID: a ConnectionBind may reach any worker.
    pub peer_conns: super::PeerConns,
}

impl Default for ServerState {
    fn default() -> Self {
        ServerState::new(0x5eed_f00d)
    }
}

impl ServerState {
    /// Empty server-wide state; `key` (random in the server) keys the limiter's hash.
    pub fn new(key: u64) -> Self {
        let words = || {
            (0..super::ports::WORDS)
                .map(|_| AtomicU64::new(0))
                .collect()
        };
        ServerState {
            reservations: Mutex::default(),
            users: Mutex::default(),
            remote: Mutex::default(),
            revoked: Mutex::default(),
            revocations_applied: AtomicU64::new(0),
            serial: AtomicU64::new(0),
            total: AtomicU32::new(0),
            live: [words(), words()],
            limiter: SourceLimiter::new(key),
            ports: PortPool::default(),
            peer_conns: super::PeerConns::default(),
        }
    }

    /// A number for a new allocation, unique among every engine of this
    /// server (usage facts name allocations by it).
    pub fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Hold `port` of `relay` (of the IPv6 family if `v6`) for `token`,
    /// for `user`, with the quota units `held` that
    /// [`ServerState::acquire`] counted for it.
    pub(super) fn reserve(
        &self,
        token: [u8; 8],
        (relay, port): (Relay, RelayPort),
        v6: bool,
        user: &str,
        held: Held,
    ) {
        let r = Reservation {
            relay,
            port,
            v6,
            user: user.to_owned(),
            held,
        };
        lock(&self.reservations).insert(token, r);
    }

    /// Redeem a token for `user`: its relay and port, family and quota
    /// units, once; the units pass to the allocation that redeems it.
    /// Another user's token redeems nothing (and stays for its owner).
    pub(super) fn redeem(
        &self,
        token: &[u8],
        user: &str,
    ) -> Option<((Relay, RelayPort), bool, Held)> {
        let token: [u8; 8] = token.try_into().ok()?;
        let mut held = lock(&self.reservations);
        match held.get(&token) {
            Some(r) if r.user == user => held
                .remove(&token)
                .map(|r| ((r.relay, r.port), r.v6, r.held)),
            _ => None,
        }
    }

    /// Drop a token whatever its user (expiry, or a broken pair): its relay
    /// and port. What it counted against the quotas is given back.
    pub(super) fn expire(&self, token: &[u8; 8]) -> Option<(Relay, RelayPort)> {
        let r = lock(&self.reservations).remove(token)?;
        self.release(&r.held);
        Some((r.relay, r.port))
    }

    /// Count `units` allocations against `name` and `ports` against the
    /// total, or the error code that refuses them: 486 past the user's
    /// quota, 508 past the server's (RFC 8656 §7.2). Nothing is counted on
    /// a refusal.
    pub(super) fn acquire(
        &self,
        name: &str,
        units: u32,
        ports: u32,
        limits: &Limits,
    ) -> Result<(), Code> {
        let mut users = lock(&self.users);
        let held = users.counts.get(name).copied().unwrap_or(0);
        // The other nodes' count is the shell's last view of it: this
        // check never waits for them.
        let remote = lock(&self.remote).get(name).copied().unwrap_or(0);
        if held.saturating_add(remote).saturating_add(units) > limits.allocations_per_user {
            return Err(Code::AllocationQuotaReached);
        }
        let total = self.total.fetch_add(ports, Ordering::Relaxed);
        if total.saturating_add(ports) > limits.total_allocations {
            self.total.fetch_sub(ports, Ordering::Relaxed);
            return Err(Code::InsufficientCapacity);
        }
        users.counts.insert(name.to_owned(), held + units);
        users.changed(name);
        Ok(())
    }

    /// Give back one allocation's (or reservation's) count.
    pub(super) fn release(&self, held: &Held) {
        let mut users = lock(&self.users);
        if let Some(n) = users.counts.get_mut(&held.name) {
            *n -= 1;
            if *n == 0 {
                users.counts.remove(&held.name);
            }
            self.total.fetch_sub(held.ports, Ordering::Relaxed);
            users.changed(&held.name);
        }
    }

    /// Start noting which names' counts change, for
    /// [`ServerState::take_changes`] (a cluster's shell publishes them).
    pub fn track_changes(&self) {
        let mut users = lock(&self.users);
        if users.changed.is_none() {
            users.changed = Some(HashSet::new());
        }
    }

    /// The names whose counts changed since the last call, each with its
    /// count now (0: none held).
    pub fn take_changes(&self) -> Vec<(String, u32)> {
        let mut users = lock(&self.users);
        let Some(changed) = users.changed.as_mut().map(std::mem::take) else {
            return Vec::new();
        };
        changed
            .into_iter()
            .map(|n| {
                let c = users.counts.get(&n).copied().unwrap_or(0);
                (n, c)
            })
            .collect()
    }

    /// Every name that holds allocations here, with its count.
    pub fn local_counts(&self) -> Vec<(String, u32)> {
        let users = lock(&self.users);
        users.counts.iter().map(|(n, &c)| (n.clone(), c)).collect()
    }

    /// The allocations the other nodes hold under `name` (0: none): added
    /// to this node's own in the per-user quota. A new name beyond
    /// [`MAX_REMOTE_NAMES`] is not kept (false): it counts as 0 here.
    pub fn set_remote(&self, name: &str, count: u32) -> bool {
        let mut remote = lock(&self.remote);
        if count == 0 {
            remote.remove(name);
        } else if let Some(c) = remote.get_mut(name) {
            *c = count;
        } else if remote.len() < MAX_REMOTE_NAMES {
            remote.insert(name.to_owned(), count);
        } else {
            return false;
        }
        true
    }

    /// The other nodes' allocations under `name`, as last set.
    pub fn remote(&self, name: &str) -> u32 {
        lock(&self.remote).get(name).copied().unwrap_or(0)
    }

    /// Refuse `name`'s Allocates and Refreshes until the Unix time
    /// `until` (401); false if [`MAX_REVOKED`] other names are revoked.
    pub fn revoke(&self, name: &str, until: u64) -> bool {
        let mut revoked = lock(&self.revoked);
        if !revoked.contains_key(name) && revoked.len() >= MAX_REVOKED {
            return false;
        }
        revoked.insert(name.to_owned(), until);
        true
    }

    /// Replace every revocation with `list` (name, until): the cluster
    /// store's whole table; at most [`MAX_REVOKED`] are kept.
    pub fn replace_revocations(&self, list: Vec<(String, u64)>) {
        let mut revoked = lock(&self.revoked);
        *revoked = list.into_iter().take(MAX_REVOKED).collect();
    }

    /// Count one revocation applied here.
    pub fn note_revocation(&self) {
        self.revocations_applied.fetch_add(1, Ordering::Relaxed);
    }

    /// Revocations applied here so far.
    pub fn revocations_applied(&self) -> u64 {
        self.revocations_applied.load(Ordering::Relaxed)
    }

    /// Lift `name`'s revocation; whether there was one.
    pub fn unrevoke(&self, name: &str) -> bool {
        lock(&self.revoked).remove(name).is_some()
    }

    /// The revocations in force at the Unix time `now` (those past their
    /// end are dropped), sorted by name.
    pub fn revocations(&self, now: u64) -> Vec<(String, u64)> {
        let mut revoked = lock(&self.revoked);
        revoked.retain(|_, &mut until| until > now);
        let mut list: Vec<(String, u64)> = revoked.iter().map(|(n, &u)| (n.clone(), u)).collect();
        list.sort();
        list
    }

    /// Whether any name is revoked (cheaper than [`Self::is_revoked`]).
    pub fn has_revocations(&self) -> bool {
        !lock(&self.revoked).is_empty()
    }

    /// Whether `name` is revoked at the Unix time `now`.
    pub fn is_revoked(&self, name: &str, now: u64) -> bool {
        lock(&self.revoked)
            .get(name)
            .is_some_and(|&until| until > now)
    }

    /// Relay ports held in all.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// Allocations and reservations counted against a user name.
    pub fn held_by(&self, name: &str) -> u32 {
        lock(&self.users).counts.get(name).copied().unwrap_or(0)
    }

    /// Mark a relay port (of the IPv6 family if `v6`) as holding a live
    /// allocation, or not.
    pub(super) fn set_live(&self, v6: bool, port: u16, live: bool) {
        let word = &self.live[v6 as usize][port as usize / 64];
        let bit = 1u64 << (port % 64);
        if live {
            word.fetch_or(bit, Ordering::Relaxed);
        } else {
            word.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Whether `relay` names a port of its family that holds a live
    /// allocation of this server now. One atomic load.
    #[inline]
    pub fn is_live(&self, relay: SocketAddr) -> bool {
        let port = relay.port();
        let word = &self.live[relay.is_ipv6() as usize][port as usize / 64];
        word.load(Ordering::Relaxed) & (1u64 << (port % 64)) != 0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A token bucket holding up to one second of `rate`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    level: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(now: Instant, rate: f64) -> Self {
        Bucket {
            level: rate,
            last: now,
        }
    }

    /// Refill for the time since the last call, then take `amount` if there
    /// is that much. A rate of 0 means no limit.
    #[inline]
    pub fn take(&mut self, now: Instant, amount: f64, rate: f64) -> bool {
        if rate <= 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.level = (self.level + dt * rate).min(rate);
        if self.level >= amount {
            self.level -= amount;
            true
        } else {
            false
        }
    }

    /// Take `amount` that passed elsewhere (a kernel fast path) against
    /// the same ceiling: the level may go below zero, to at most one
    /// second of `rate` owed, which the refill pays back before anything
    /// passes here again.
    pub fn debit(&mut self, amount: f64, rate: f64) {
        if rate > 0.0 {
            self.level = (self.level - amount).max(-rate);
        }
    }
}

/// Bandwidth and packet-rate ceilings for one direction of one allocation.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    bytes: Bucket,
    packets: Bucket,
}

impl Meter {
    pub fn new(now: Instant, limits: &Limits) -> Self {
        Meter {
            bytes: Bucket::new(now, limits.bandwidth as f64),
            packets: Bucket::new(now, limits.packet_rate as f64),
        }
    }

    /// Whether a packet of `len` bytes may pass now.
    #[inline]
    pub fn allow(&mut self, now: Instant, len: usize, limits: &Limits) -> bool {
        self.packets.take(now, 1.0, limits.packet_rate as f64)
            && self.bytes.take(now, len as f64, limits.bandwidth as f64)
    }

    /// Count `packets` of `bytes` in all that another path relayed under
    /// the same ceilings (see [`Bucket::debit`]).
    pub fn debit(&mut self, packets: u64, bytes: u64, limits: &Limits) {
        self.packets
            .debit(packets as f64, limits.packet_rate as f64);
        self.bytes.debit(bytes as f64, limits.bandwidth as f64);
    }
}

/// Slots in the unauthenticated-answer limiter: fixed, so a flood from many
/// sources costs no memory (sources that share a slot share its budget).
const SOURCE_SLOTS: usize = 16_384;
/// The burst a source may spend at once: one second of its rate.
const BURST_US: u64 = 1_000_000;

/// Limits how many unauthenticated answers one source IP gets per second,
/// so that the server cannot be used to reflect or amplify a flood at a
/// spoofed victim. One table for the whole server: every worker's engine
/// takes from the same budget, so the configured rate is the rate.
///
/// Each slot is a generic cell rate algorithm: it holds the time (µs since
/// the first call) at which the source's budget would be full again, and
/// an answer moves it on by one interval with a compare-and-swap. No lock,
/// no allocation, 8 bytes a slot.
#[derive(Debug)]
pub struct SourceLimiter {
    slots: Box<[AtomicU64]>,
    key: u64,
    /// The first `now` seen: times are kept as µs after it.
    epoch: OnceLock<Instant>,
}

impl SourceLimiter {
    pub fn new(key: u64) -> Self {
        SourceLimiter {
            slots: (0..SOURCE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            key: key | 1,
            epoch: OnceLock::new(),
        }
    }

    /// Whether `ip` may get another answer now, at `rate` per second (0:
    /// no limit).
    pub fn allow(&self, now: Instant, ip: IpAddr, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let epoch = *self.epoch.get_or_init(|| now);
        // Offset by a burst, so that an unused slot (0) is a full budget.
        let t = now.saturating_duration_since(epoch).as_micros() as u64 + BURST_US;
        let interval = (1_000_000 / rate as u64).max(1);
        // An IPv6 source counts by its /64 (one subscriber's prefix), so
        // that spoofing the addresses of a victim's /64 gets no more than
        // one address would; an IPv4-mapped one as its IPv4 address.
        let v = Origin::of(ip).key();
        let folded = (v as u64) ^ ((v >> 64) as u64);
        let h = (folded ^ self.key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = &self.slots[(h >> 40) as usize % SOURCE_SLOTS];
        let mut full_at = slot.load(Ordering::Relaxed);
        // Each failed swap means another worker answered this slot; after a
        // few the source is plainly busy: refuse.
        for _ in 0..8 {
            let next = full_at.max(t) + interval;
            if next > t + BURST_US {
                return false;
            }
            match slot.compare_exchange_weak(full_at, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => full_at = seen,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            allocations_per_user: 2,
            total_allocations: 3,
            permissions_per_allocation: 10,
            channels_per_allocation: 10,
            bandwidth: 1000,
            packet_rate: 10,
            unauthenticated_rate: 5,
            connections_per_allocation: 16,
        }
    }

    #[test]
    fn per_user_and_total_quotas() {
        let s = ServerState::default();
        let l = limits();
        let held = |n: &str| Held {
            name: n.into(),
            ports: 1,
        };
        assert_eq!(s.acquire("a", 1, 1, &l), Ok(()));
        assert_eq!(s.acquire("a", 1, 1, &l), Ok(()));
        assert_eq!(s.acquire("a", 1, 1, &l), Err(Code::AllocationQuotaReached));
        assert_eq!(s.acquire("b", 1, 1, &l), Ok(()));
        assert_eq!(s.acquire("c", 1, 1, &l), Err(Code::InsufficientCapacity));
        s.release(&held("a"));
        assert_eq!(s.acquire("c", 1, 1, &l), Ok(()));
        assert_eq!(s.total(), 3);
        // Two at once (an allocation and its reserved port) need room for both.
        s.release(&held("c"));
        assert_eq!(s.acquire("b", 2, 2, &l), Err(Code::AllocationQuotaReached));
        assert_eq!(
            s.acquire("d", 1, 2, &l),
            Err(Code::InsufficientCapacity),
            "a dual-stack allocation holds two ports"
        );
        assert_eq!((s.held_by("a"), s.held_by("b"), s.total()), (1, 1, 2));
    }

    /// Other nodes' allocations count against the quota; the table of
    /// them is bounded; changes are noted only once tracking is on.
    #[test]
    fn remote_counts_join_the_quota() {
        let s = ServerState::default();
        let l = limits();
        assert_eq!(s.acquire("a", 1, 1, &l), Ok(()));
        assert!(s.take_changes().is_empty(), "not tracked yet");
        s.track_changes();
        assert!(s.set_remote("a", 1));
        assert_eq!(s.acquire("a", 1, 1, &l), Err(Code::AllocationQuotaReached));
        assert!(s.set_remote("a", 0));
        assert_eq!(s.acquire("a", 1, 1, &l), Ok(()));
        assert_eq!(s.take_changes(), vec![("a".to_owned(), 2)]);
        s.release(&Held {
            name: "a".into(),
            ports: 1,
        });
        assert_eq!(s.take_changes(), vec![("a".to_owned(), 1)]);
        assert!(s.take_changes().is_empty());
        assert_eq!(s.local_counts(), vec![("a".to_owned(), 1)]);
        for i in 0..MAX_REMOTE_NAMES {
            assert!(s.set_remote(&format!("n{i}"), 1));
        }
        assert!(!s.set_remote("one-more", 1), "the table is full");
        assert!(s.set_remote("n0", 2), "a kept name still changes");
        assert_eq!((s.remote("n0"), s.remote("one-more")), (2, 0));
    }

    #[test]
    fn revocations_end_at_their_time() {
        let s = ServerState::default();
        assert!(!s.has_revocations());
        assert!(s.revoke("bob", 100));
        assert!(s.is_revoked("bob", 99));
        assert!(!s.is_revoked("bob", 100));
        assert!(!s.is_revoked("alice", 99));
        assert_eq!(s.revocations(50), vec![("bob".to_owned(), 100)]);
        assert!(s.revocations(100).is_empty(), "past its end: dropped");
        assert!(s.revoke("bob", 200));
        assert!(s.unrevoke("bob"));
        assert!(!s.unrevoke("bob"));
        for i in 0..MAX_REVOKED {
            assert!(s.revoke(&format!("r{i}"), 10));
        }
        assert!(!s.revoke("over", 10), "bounded");
        assert!(s.revoke("r0", 20), "a kept name may change its end");
        s.replace_revocations(vec![("carol".into(), 30)]);
        assert_eq!(s.revocations(0), vec![("carol".to_owned(), 30)]);
    }

    #[test]
    fn meters_drop_the_excess_and_refill() {
        let now = Instant::now();
        let l = limits();
        let mut m = Meter::new(now, &l);
        let passed = (0..20).filter(|_| m.allow(now, 10, &l)).count();
        assert_eq!(passed, 10, "10 packets per second");
        assert!(
            m.allow(now + Duration::from_millis(100), 10, &l),
            "refilled"
        );
        let mut m = Meter::new(now, &l);
        assert!(!m.allow(now, 1001, &l), "bigger than a second of bandwidth");
    }

    #[test]
    fn what_another_path_relayed_comes_off_the_meter_down_to_a_second_owed() {
        let now = Instant::now();
        let l = limits();
        // 10 packets a second: 7 relayed in the kernel leave 3 here.
        let mut m = Meter::new(now, &l);
        m.debit(7, 70, &l);
        assert_eq!((0..10).filter(|_| m.allow(now, 10, &l)).count(), 3);
        // Far more elsewhere: one second owed at most, repaid first.
        m.debit(1000, 10_000, &l);
        let s = Duration::from_secs(1);
        assert!(!m.allow(now + s, 10, &l), "a second repays the debt only");
        assert!(m.allow(now + s + Duration::from_millis(150), 10, &l));
    }

    #[test]
    fn source_limiter_is_per_ip() {
        let now = Instant::now();
        let s = SourceLimiter::new(7);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // A fresh slot holds one second's worth.
        let n = (0..50).filter(|_| s.allow(now, a, 5)).count();
        assert_eq!(n, 5);
        assert!(!s.allow(now, a, 5));
        assert!(s.allow(now, b, 5));
        // It refills at the rate: one more after 200 ms, five after a second.
        assert!(s.allow(now + Duration::from_millis(200), a, 5));
        assert!(!s.allow(now + Duration::from_millis(200), a, 5));
        let later = now + Duration::from_secs(2);
        assert_eq!((0..50).filter(|_| s.allow(later, a, 5)).count(), 5);
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let now = Instant::now();
        let s = SourceLimiter::new(3);
        let n = (0..50u16)
            .filter(|i| s.allow(now, format!("2001:db8:1:2::{i:x}").parse().unwrap(), 10))
            .count();
        assert_eq!(n, 10, "fifty addresses of one /64 share its budget");
        assert!(
            s.allow(now, "2001:db8:1:3::1".parse().unwrap(), 10),
            "another /64"
        );
        let v4: IpAddr = "198.51.100.8".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.8".parse().unwrap();
        assert_eq!((0..20).filter(|_| s.allow(now, v4, 10)).count(), 10);
        assert!(
            !s.allow(now, mapped, 10),
            "the mapped form is the same source"
        );
    }

    #[test]
    fn source_limiter_is_one_budget_for_every_thread() {
        let now = Instant::now();
        let s = std::sync::Arc::new(SourceLimiter::new(9));
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..1000).filter(|_| s.allow(now, ip, 100)).count())
            })
            .collect();
        let answered: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(answered, 100, "four threads share one source's 100");
    }

    #[test]
    fn live_relay_ports_are_per_family() {
        let s = ServerState::default();
        s.set_live(false, 50_000, true);
        s.set_live(true, 50_002, true);
        assert!(s.is_live("127.0.0.1:50000".parse().unwrap()));
        assert!(!s.is_live("[::1]:50000".parse().unwrap()));
        assert!(s.is_live("[::1]:50002".parse().unwrap()));
        assert!(!s.is_live("127.0.0.1:50001".parse().unwrap()));
        s.set_live(false, 50_000, false);
        assert!(!s.is_live("127.0.0.1:50000".parse().unwrap()));
    }
}
