//! What the engine counts, for logs, metrics and the admin API. Plain
//! integers: an engine is owned by one worker, and a report is a copy.

/// Request methods, in the order of [`Stats::requests`] and [`Stats::errors`].
pub const METHODS: [&str; 6] = [
    "binding",
    "allocate",
    "refresh",
    "create_permission",
    "channel_bind",
    "send",
];

/// Error codes counted per method (RFC 8489 §14.8, RFC 8656 §19).
pub const CODES: [u16; 14] = [
    300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 500, 508,
];

/// Why authentication failed, in the order of [`Stats::auth_failures`].
pub const AUTH_FAILURES: [&str; 6] = [
    "missing_attributes",
    "bad_algorithm",
    "stale_nonce",
    "unknown_user",
    "expired",
    "bad_integrity",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    MissingAttributes = 0,
    BadAlgorithm = 1,
    StaleNonce = 2,
    UnknownUser = 3,
    Expired = 4,
    BadIntegrity = 5,
}

/// Upper bounds (seconds) of the session duration histogram buckets.
pub const DURATION_BUCKETS: [u64; 8] = [10, 60, 300, 600, 1800, 3600, 7200, 21_600];

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// Relay directions, the first index of [`Stats::relayed`].
pub const TO_PEER: usize = 0;
pub const TO_CLIENT: usize = 1;
/// Client transports, the second index of [`Stats::relayed`].
pub const TRANSPORTS: [&str; 3] = ["udp", "tcp", "tls"];

/// A histogram of session durations, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Sessions no longer than each bound of [`DURATION_BUCKETS`] (not cumulative).
    pub buckets: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: u64) {
        if let Some(i) = DURATION_BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// Counters of one engine (or, merged, of a server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets that were not valid STUN or ChannelData, dropped unanswered.
    pub malformed: u64,
    /// Data packets dropped: no allocation, no channel or no permission.
    pub dropped: u64,
    pub allocations_created: u64,
    pub allocations_expired: u64,
    /// Deleted by Refresh 0, a closed connection, or an operator.
    pub allocations_deleted: u64,
    /// Failed authentications, by reason ([`AUTH_FAILURES`]).
    pub auth_failures: [u64; AUTH_FAILURES.len()],
    pub policy_denials: u64,
    /// Allocate requests refused by a quota (486, 508) and permissions or
    /// channels refused past their per-allocation limit (508).
    pub quota_rejections: u64,
    /// Data packets dropped by an allocation's bandwidth or packet ceiling.
    pub rate_limited: u64,
    /// Unauthenticated answers not sent: the source was over its rate.
    pub answers_suppressed: u64,
    /// Requests (and Send indications) by method ([`METHODS`]).
    pub requests: [u64; METHODS.len()],
    /// Error responses by method and code ([`CODES`]).
    pub errors: [[u64; CODES.len()]; METHODS.len()],
    /// Relayed traffic by direction ([`TO_PEER`], [`TO_CLIENT`]) and client
    /// transport ([`TRANSPORTS`]).
    pub relayed: [[Traffic; TRANSPORTS.len()]; 2],
    /// How long allocations lived.
    pub session_seconds: Histogram,
}

impl Stats {
    pub fn auth_failed(&mut self, why: AuthFailure) {
        self.auth_failures[why as usize] += 1;
    }

    /// Count an error response of `method` (an index in [`METHODS`]).
    pub fn error_sent(&mut self, method: usize, code: u16) {
        if let (Some(row), Some(i)) = (
            self.errors.get_mut(method),
            CODES.iter().position(|&c| c == code),
        ) {
            row[i] += 1;
        }
    }

    /// Add another engine's counters.
    pub fn merge(&mut self, o: &Stats) {
        self.malformed += o.malformed;
        self.dropped += o.dropped;
        self.allocations_created += o.allocations_created;
        self.allocations_expired += o.allocations_expired;
        self.allocations_deleted += o.allocations_deleted;
        for (a, b) in self.auth_failures.iter_mut().zip(o.auth_failures) {
            *a += b;
        }
        self.policy_denials += o.policy_denials;
        self.quota_rejections += o.quota_rejections;
        self.rate_limited += o.rate_limited;
        self.answers_suppressed += o.answers_suppressed;
        for (a, b) in self.requests.iter_mut().zip(o.requests) {
            *a += b;
        }
        for (ra, rb) in self.errors.iter_mut().zip(o.errors) {
            for (a, b) in ra.iter_mut().zip(rb) {
                *a += b;
            }
        }
        for (da, db) in self.relayed.iter_mut().zip(o.relayed) {
            for (a, b) in da.iter_mut().zip(db) {
                a.packets += b.packets;
                a.bytes += b.bytes;
            }
        }
        let (h, g) = (&mut self.session_seconds, &o.session_seconds);
        for (a, b) in h.buckets.iter_mut().zip(g.buckets) {
            *a += b;
        }
        h.count += g.count;
        h.sum_seconds += g.sum_seconds;
    }
}

/// The index in [`TRANSPORTS`] of a client's transport.
#[inline]
pub fn transport_index(via: crate::addr::Via) -> usize {
    match via {
        crate::addr::Via::Udp(_) => 0,
        crate::addr::Via::Stream { tls: false, .. } => 1,
        crate::addr::Via::Stream { tls: true, .. } => 2,
    }
}

/// The index in [`METHODS`] of a STUN method number.
pub fn method_index(method: u16) -> Option<usize> {
    match method {
        0x001 => Some(0),
        0x003 => Some(1),
        0x004 => Some(2),
        0x008 => Some(3),
        0x009 => Some(4),
        0x006 => Some(5),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_are_told_apart() {
        use crate::addr::Via;
        assert_eq!(TRANSPORTS[transport_index(Via::Udp(3))], "udp");
        let s = |tls| Via::Stream {
            listener: 0,
            conn: 1,
            tls,
        };
        assert_eq!(TRANSPORTS[transport_index(s(false))], "tcp");
        assert_eq!(TRANSPORTS[transport_index(s(true))], "tls");
    }

    #[test]
    fn histogram_and_merge() {
        let mut a = Stats::default();
        a.session_seconds.observe(5);
        a.session_seconds.observe(700);
        a.session_seconds.observe(100_000);
        assert_eq!(a.session_seconds.buckets[0], 1);
        assert_eq!(a.session_seconds.buckets[4], 1);
        assert_eq!(a.session_seconds.count, 3);
        a.error_sent(1, 401);
        a.relayed[TO_PEER][0].add(100);
        let mut b = a;
        b.merge(&a);
        assert_eq!(b.errors[1][2], 2);
        assert_eq!(
            b.relayed[TO_PEER][0],
            Traffic {
                packets: 2,
                bytes: 200
            }
        );
        assert_eq!(b.session_seconds.count, 6);
    }
}
