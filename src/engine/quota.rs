//! Quotas and rate limits: per-user and total allocation counts shared by
//! every worker, per-allocation token buckets on the data path, and a
//! fixed-size per-source limiter for unauthenticated answers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use crate::addr::RelayPort;
use crate::config::Limits;

/// A relay port held for a RESERVATION-TOKEN.
#[derive(Debug)]
struct Reservation {
    port: RelayPort,
    v6: bool,
    /// Only the user who reserved it may redeem it.
    user: String,
}

/// State every worker's engine shares. Only the control plane touches it
/// (Allocate and allocation removal), never the data path.
#[derive(Debug, Default)]
pub struct Shared {
    /// Ports held for a RESERVATION-TOKEN (RFC 8656 §7.2, §14.9): the
    /// Allocate that redeems it may arrive at another worker.
    reservations: Mutex<HashMap<[u8; 8], Reservation>>,
    /// Allocations held per user.
    users: Mutex<HashMap<String, u32>>,
    /// Allocations held in all.
    total: AtomicU32,
}

impl Shared {
    /// Hold `port` (of the IPv6 family if `v6`) for `token`.
    /// Hold `port` (of the IPv6 family if `v6`) for `token`, for `user`.
    pub(super) fn reserve(&self, token: [u8; 8], port: RelayPort, v6: bool, user: &str) {
        let r = Reservation {
            port,
            v6,
            user: user.to_owned(),
        };
        lock(&self.reservations).insert(token, r);
    }

    /// Redeem a token for `user`: its port and family, once. Another user's
    /// token redeems nothing (and stays for its owner).
    pub(super) fn redeem(&self, token: &[u8], user: &str) -> Option<(RelayPort, bool)> {
        let token: [u8; 8] = token.try_into().ok()?;
        let mut held = lock(&self.reservations);
        match held.get(&token) {
            Some(r) if r.user == user => held.remove(&token).map(|r| (r.port, r.v6)),
            _ => None,
        }
    }

    /// Drop a token whatever its user (expiry, or a broken pair): its port.
    pub(super) fn expire(&self, token: &[u8; 8]) -> Option<RelayPort> {
        lock(&self.reservations).remove(token).map(|r| r.port)
    }

    /// Count a new allocation for `user`, or the error code that refuses
    /// it: 486 past the user's quota, 508 past the server's (RFC 8656 §7.2).
    pub(super) fn acquire(&self, user: &str, limits: &Limits) -> Result<(), u16> {
        let mut users = lock(&self.users);
        let held = users.get(user).copied().unwrap_or(0);
        if held >= limits.allocations_per_user {
            return Err(486);
        }
        let total = self.total.fetch_add(1, Ordering::Relaxed);
        if total >= limits.total_allocations {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(508);
        }
        users.insert(user.to_owned(), held + 1);
        Ok(())
    }

    /// Give back what [`Shared::acquire`] counted.
    pub(super) fn release(&self, user: &str) {
        let mut users = lock(&self.users);
        if let Some(n) = users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                users.remove(user);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Allocations held in all.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
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
}

/// Slots in the unauthenticated-answer limiter: fixed, so a flood from many
/// sources costs no memory (sources that share a slot share its budget).
const SOURCE_SLOTS: usize = 4096;

/// Limits how many unauthenticated answers (401, 400, 438) one source IP
/// gets per second, so that the server cannot be used to reflect or
/// amplify a flood at a spoofed victim.
#[derive(Debug)]
pub struct SourceLimiter {
    slots: Box<[Bucket]>,
    key: u64,
}

impl SourceLimiter {
    pub fn new(now: Instant, key: u64) -> Self {
        SourceLimiter {
            slots: vec![
                Bucket {
                    level: f64::MAX,
                    last: now
                };
                SOURCE_SLOTS
            ]
            .into_boxed_slice(),
            key: key | 1,
        }
    }

    /// Whether `ip` may get another answer now, at `rate` per second.
    pub fn allow(&mut self, now: Instant, ip: IpAddr, rate: u32) -> bool {
        let v = match ip {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        };
        let folded = (v as u64) ^ ((v >> 64) as u64);
        let h = (folded ^ self.key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = &mut self.slots[(h >> 52) as usize % SOURCE_SLOTS];
        slot.take(now, 1.0, rate as f64)
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
        }
    }

    #[test]
    fn per_user_and_total_quotas() {
        let s = Shared::default();
        let l = limits();
        assert_eq!(s.acquire("a", &l), Ok(()));
        assert_eq!(s.acquire("a", &l), Ok(()));
        assert_eq!(s.acquire("a", &l), Err(486));
        assert_eq!(s.acquire("b", &l), Ok(()));
        assert_eq!(s.acquire("c", &l), Err(508));
        s.release("a");
        assert_eq!(s.acquire("c", &l), Ok(()));
        assert_eq!(s.total(), 3);
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
    fn source_limiter_is_per_ip() {
        let now = Instant::now();
        let mut s = SourceLimiter::new(now, 7);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // A fresh slot starts full, then is capped at one second's worth.
        let n = (0..50).filter(|_| s.allow(now, a, 5)).count();
        assert!(n >= 5);
        assert!(!s.allow(now, a, 5));
        assert!(s.allow(now, b, 5));
        assert!(s.allow(now + Duration::from_secs(1), a, 5));
    }
}
