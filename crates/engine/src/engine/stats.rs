//! What the engine counts, for logs, metrics and the admin API. Plain
//! integers: an engine is owned by one worker, and a report is a copy.

/// Declares a label set once: a fieldless enum whose variants, in the
/// order written, are the order of the counters and of `/metrics`. It gets
/// `ALL` (every variant, in that order), `COUNT` (the size of the arrays
/// counted by it), `name()` (the label value operators see), `index()`
/// (its place in those arrays) and `KEY` (the label's name in `/metrics`).
/// A set that stands for protocol values (methods, error codes) also says
/// each variant's value after `=>`, and gets `value()` and `of()`; a set of
/// numbers (error codes) is named by its numbers. Writing a label anywhere else by
/// hand is what this is here to prevent.
///
/// Exported (the shell declares its own label sets with it, e.g. the stream
/// limits' refusal reasons) and re-exported here, so its path stays
/// `engine::stats::labels!`.
#[macro_export]
macro_rules! labels {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($key:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $label:expr,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The label's name in `/metrics`.
            pub const KEY: &'static str = $key;
            /// How many values the label takes.
            pub const COUNT: usize = [$($label,)+].len();
            /// Every value, in the order of the counters and of `/metrics`.
            pub const ALL: [Self; Self::COUNT] = [$(Self::$variant,)+];

            /// The label value, as `/metrics` and the logs show it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }

            /// Its place in [`Self::ALL`] and in the arrays counted by it.
            #[inline]
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($key:literal): $ty:ty {
            $($(#[$vmeta:meta])* $variant:ident => $value:literal,)+
        }
    ) => {
        $crate::engine::stats::labels! {
            $(#[$meta])*
            $vis enum $name($key): $ty {
                $($(#[$vmeta])* $variant = stringify!($value) => $value,)+
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($key:literal): $ty:ty {
            $($(#[$vmeta:meta])* $variant:ident = $label:expr => $value:expr,)+
        }
    ) => {
        $crate::engine::stats::labels! {
            $(#[$meta])*
            $vis enum $name($key) {
                $($(#[$vmeta])* $variant = $label,)+
            }
        }

        impl $name {
            /// The protocol value this label stands for.
            pub const fn value(self) -> $ty {
                match self {
                    $(Self::$variant => $value,)+
                }
            }

            /// The label of a protocol value, if the set names it.
            #[inline]
            pub fn of(value: $ty) -> Option<Self> {
                Self::ALL.into_iter().find(|l| l.value() == value)
            }
        }
    };
}
pub use labels;

labels! {
    /// Request methods counted (a Send indication counts as a request).
    pub enum Method("method"): stun::message::Method {
        Binding = "binding" => stun::message::METHOD_BINDING,
        Allocate = "allocate" => stun::message::METHOD_ALLOCATE,
        Refresh = "refresh" => stun::message::METHOD_REFRESH,
        CreatePermission = "create_permission" => stun::message::METHOD_CREATE_PERMISSION,
        ChannelBind = "channel_bind" => stun::message::METHOD_CHANNEL_BIND,
        Send = "send" => stun::message::METHOD_SEND,
        Connect = "connect" => stun::message::METHOD_CONNECT,
        ConnectionBind = "connection_bind" => stun::message::METHOD_CONNECTION_BIND,
    }
}

labels! {
    /// The error codes this server sends (RFC 8489 §14.8, RFC 8656 §19),
    /// each one an error response counts under.
    pub enum Code("code"): u16 {
        TryAlternate => 300,
        BadRequest => 400,
        Unauthorized => 401,
        Forbidden => 403,
        UnknownAttribute => 420,
        AllocationMismatch => 437,
        StaleNonce => 438,
        AddressFamilyNotSupported => 440,
        WrongCredentials => 441,
        UnsupportedTransport => 442,
        PeerAddressFamilyMismatch => 443,
        AllocationQuotaReached => 486,
        ServerError => 500,
        InsufficientCapacity => 508,
        // Last, so that the codes before keep their order.
        MobilityForbidden => 405,
        // RFC 6062 §6.3, after the older codes so that their order stays.
        ConnectionAlreadyExists => 446,
        ConnectionTimeoutOrFailure => 447,
    }
}

labels! {
    /// Why authentication failed.
    pub enum AuthFailure("reason") {
        MissingAttributes = "missing_attributes",
        BadAlgorithm = "bad_algorithm",
        StaleNonce = "stale_nonce",
        UnknownUser = "unknown_user",
        Expired = "expired",
        BadIntegrity = "bad_integrity",
    }
}

labels! {
    /// Which way relayed data goes.
    pub enum Direction("direction") {
        ToPeer = "to_peer",
        ToClient = "to_client",
    }
}

labels! {
    /// How a client reaches the server.
    pub enum Transport("transport") {
        Udp = "udp",
        Tcp = "tcp",
        Tls = "tls",
        Dtls = "dtls",
    }
}

impl Transport {
    /// A client's transport.
    #[inline]
    pub fn of(via: crate::addr::Via) -> Self {
        match via {
            crate::addr::Via::Udp(_) => Transport::Udp,
            crate::addr::Via::Dtls(_) => Transport::Dtls,
            crate::addr::Via::Stream { tls: false, .. } => Transport::Tcp,
            crate::addr::Via::Stream { tls: true, .. } => Transport::Tls,
        }
    }
}

/// What an answered request came to, as the stats count it: its method
/// (`None` for one no metric names) and, for an error response, the code.
/// The engine makes it with the answer, so that nothing reads the encoded
/// bytes back to count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub method: Option<Method>,
    pub error: Option<Code>,
}

/// Upper bounds (seconds) of the session duration histogram buckets.
pub const DURATION_BUCKETS: [u64; 8] = [10, 60, 300, 600, 1800, 3600, 7200, 21_600];

/// Running counts of the packets and bytes relayed (in one direction, by
/// one allocation or one engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficCount {
    pub packets: u64,
    pub bytes: u64,
}

impl TrafficCount {
    /// Counts one packet of `bytes` bytes.
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

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
    /// Allocations moved to a new client 5-tuple (RFC 8016).
    pub mobility_moves: u64,
    /// Failed authentications, by [`AuthFailure`].
    pub auth_failures: [u64; AuthFailure::COUNT],
    pub policy_denials: u64,
    /// Allocate requests refused by a quota (486, 508) and permissions or
    /// channels refused past their per-allocation limit (508).
    pub quota_rejections: u64,
    /// New Allocates sent to another cluster node (300 Try Alternate).
    pub redirects: u64,
    /// Data packets dropped by an allocation's bandwidth or packet ceiling.
    pub rate_limited: u64,
    /// Unauthenticated answers not sent: the source was over its rate.
    pub answers_suppressed: u64,
    /// Requests (and Send indications) by [`Method`].
    pub requests: [u64; Method::COUNT],
    /// Error responses by [`Method`] and [`Code`].
    pub errors: [[u64; Code::COUNT]; Method::COUNT],
    /// Relayed traffic by [`Direction`] and client [`Transport`].
    pub relayed: [[TrafficCount; Transport::COUNT]; Direction::COUNT],
    /// How long allocations lived.
    pub session_seconds: Histogram,
}

impl Stats {
    pub fn auth_failed(&mut self, why: AuthFailure) {
        self.auth_failures[why.index()] += 1;
    }

    /// Count a request (or Send indication).
    #[inline]
    pub fn request(&mut self, method: Method) {
        self.requests[method.index()] += 1;
    }

    /// Count an answer: error responses by method and code.
    pub fn answered(&mut self, o: Outcome) {
        if let (Some(method), Some(code)) = (o.method, o.error) {
            self.errors[method.index()][code.index()] += 1;
        }
    }

    /// The relayed traffic of one direction and client transport.
    #[inline]
    pub fn traffic(&mut self, dir: Direction, transport: Transport) -> &mut TrafficCount {
        &mut self.relayed[dir.index()][transport.index()]
    }

    /// Add another engine's counters.
    pub fn merge(&mut self, o: &Stats) {
        self.malformed += o.malformed;
        self.dropped += o.dropped;
        self.allocations_created += o.allocations_created;
        self.allocations_expired += o.allocations_expired;
        self.allocations_deleted += o.allocations_deleted;
        self.mobility_moves += o.mobility_moves;
        for (a, b) in self.auth_failures.iter_mut().zip(o.auth_failures) {
            *a += b;
        }
        self.policy_denials += o.policy_denials;
        self.quota_rejections += o.quota_rejections;
        self.redirects += o.redirects;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_are_told_apart() {
        use crate::addr::Via;
        assert_eq!(Transport::of(Via::Udp(3)).name(), "udp");
        assert_eq!(Transport::of(Via::Dtls(3)).name(), "dtls");
        let s = |tls| Via::Stream {
            listener: 0,
            conn: 1,
            tls,
        };
        assert_eq!(Transport::of(s(false)).name(), "tcp");
        assert_eq!(Transport::of(s(true)).name(), "tls");
    }

    /// The label values and their order are what operators' queries and
    /// dashboards use: pinned here, and each set's parts agree.
    #[test]
    fn label_sets_keep_their_values_and_order() {
        fn names<const N: usize, L: Copy>(
            all: [L; N],
            name: fn(L) -> &'static str,
        ) -> Vec<&'static str> {
            all.into_iter().map(name).collect()
        }
        assert_eq!(
            names(Method::ALL, Method::name),
            [
                "binding",
                "allocate",
                "refresh",
                "create_permission",
                "channel_bind",
                "send",
                "connect",
                "connection_bind"
            ]
        );
        assert_eq!(
            names(Code::ALL, Code::name),
            [
                "300", "400", "401", "403", "420", "437", "438", "440", "441", "442", "443", "486",
                "500", "508", "405", "446", "447"
            ]
        );
        assert_eq!(
            names(AuthFailure::ALL, AuthFailure::name),
            [
                "missing_attributes",
                "bad_algorithm",
                "stale_nonce",
                "unknown_user",
                "expired",
                "bad_integrity"
            ]
        );
        assert_eq!(
            names(Direction::ALL, Direction::name),
            ["to_peer", "to_client"]
        );
        assert_eq!(
            names(Transport::ALL, Transport::name),
            ["udp", "tcp", "tls", "dtls"]
        );
        assert_eq!(
            [
                Method::KEY,
                Code::KEY,
                AuthFailure::KEY,
                Direction::KEY,
                Transport::KEY
            ],
            ["method", "code", "reason", "direction", "transport"]
        );
        for (i, m) in Method::ALL.into_iter().enumerate() {
            assert_eq!(m.index(), i);
            assert_eq!(Method::of(m.value()), Some(m));
        }
        for (i, c) in Code::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(c.name(), c.value().to_string());
            assert_eq!(Code::of(c.value()), Some(c));
        }
        assert_eq!(Method::of(stun::message::METHOD_SEND), Some(Method::Send));
        assert_eq!(Method::of(stun::message::METHOD_DATA), None);
        assert_eq!(Code::of(439), None);
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
        a.answered(Outcome {
            method: Some(Method::Allocate),
            error: Some(Code::Unauthorized),
        });
        // A success counts nothing; neither does a method no metric names.
        a.answered(Outcome {
            method: Some(Method::Allocate),
            error: None,
        });
        a.answered(Outcome {
            method: None,
            error: Some(Code::BadRequest),
        });
        a.traffic(Direction::ToPeer, Transport::Udp).add(100);
        let mut b = a;
        b.merge(&a);
        assert_eq!(b.errors[1][2], 2);
        assert_eq!(b.errors.iter().flatten().sum::<u64>(), 2);
        assert_eq!(
            b.relayed[Direction::ToPeer.index()][Transport::Udp.index()],
            TrafficCount {
                packets: 2,
                bytes: 200
            }
        );
        assert_eq!(b.session_seconds.count, 6);
    }
}
