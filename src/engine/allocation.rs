//! The state of one allocation (RFC 8656 §2.2): its relayed transport
//! address, permissions and channel bindings, each with its expiry.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::quota::{Held, Meter};
use super::stats::Traffic;
pub use super::stats::{TO_CLIENT, TO_PEER};
use crate::addr::{ChannelNumber, ClientAddr, PeerAddr, RelayPort};
use crate::config::Limits;
use crate::policy::Reach;
use crate::proto::integrity::Signer;

/// Permission lifetime, fixed by RFC 8656 §9.
pub const PERMISSION_LIFETIME_SECS: u64 = 300;
/// Channel binding lifetime, fixed by RFC 8656 §12.
pub const CHANNEL_LIFETIME_SECS: u64 = 600;

#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
    /// What the policy lets through to this IP. Anything but
    /// [`Reach::Any`] is an address of this host, where the peer's port
    /// decides, packet by packet.
    pub reach: Reach,
}

#[derive(Debug, Clone, Copy)]
pub struct Channel {
    pub number: ChannelNumber,
    pub peer: PeerAddr,
    pub expires: Instant,
}

/// Whether the relay socket is open yet.
#[derive(Debug, Clone)]
pub enum State {
    /// The shell is opening the relay socket; the Allocate is answered when
    /// it reports back.
    Opening {
        request: stun::message::Message,
        tries: u8,
        /// The RESERVATION-TOKEN issued with this allocation, if any.
        token: Option<[u8; 8]>,
        /// An IPv6 relay is to be opened after the IPv4 one.
        dual: bool,
        /// The answer carries ADDRESS-ERROR-CODE 440 for IPv6.
        v6_refused: bool,
    },
    Active,
}

#[derive(Debug, Clone)]
pub struct Allocation {
    pub client: ClientAddr,
    pub username: String,
    /// What it counts against the quotas.
    pub held: Held,
    /// Signs answers: the key and integrity attribute the Allocate used.
    pub signer: Signer,
    pub port: RelayPort,
    /// The advertised relayed transport address (XOR-RELAYED-ADDRESS).
    pub relayed: SocketAddr,
    /// The IPv6 relay of a dual allocation (RFC 8656 §7.2), and its port.
    pub extra: Option<(RelayPort, SocketAddr)>,
    pub created: Instant,
    pub expires: Instant,
    pub state: State,
    /// The last request answered on this allocation and its response, so
    /// that a retransmission gets the same answer (RFC 8489 §6.3.1).
    pub last_txid: [u8; 12],
    pub last_response: Vec<u8>,
    pub permissions: Vec<Permission>,
    pub channels: Vec<Channel>,
    /// The wake-up time queued for this allocation, if any.
    pub scheduled: Option<Instant>,
    /// Relayed traffic, by direction ([`TO_PEER`], [`TO_CLIENT`]).
    pub traffic: [Traffic; 2],
    /// Bandwidth and packet-rate ceilings, by direction.
    pub meters: [Meter; 2],
}

impl Allocation {
    /// Whether a live permission covers `peer` (RFC 8656 §9: by IP address
    /// only), and, where that IP is one of this host's own, `reaches` lets
    /// its port through (see [`crate::policy::PeerPolicy::reaches`]).
    #[inline]
    pub fn permits(
        &self,
        peer: SocketAddr,
        now: Instant,
        reaches: impl Fn(SocketAddr, Reach) -> bool,
    ) -> bool {
        self.permissions.iter().any(|p| {
            p.ip == peer.ip()
                && p.expires > now
                && (p.reach == Reach::Any || reaches(peer, p.reach))
        })
    }

    /// Install or refresh a permission for `ip`, which the policy lets
    /// through as `reach`.
    pub fn permit(&mut self, ip: IpAddr, expires: Instant, reach: Reach) {
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = p.expires.max(expires),
            None => self.permissions.push(Permission { ip, expires, reach }),
        }
    }

    #[inline]
    pub fn channel_by_number(&self, n: u16, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.number.get() == n && c.expires > now)
    }

    #[inline]
    pub fn channel_by_peer(&self, peer: PeerAddr, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Let `len` bytes through in direction `dir` if the ceilings allow,
    /// and count them; false when a ceiling drops the packet.
    #[inline]
    pub fn admit(&mut self, now: Instant, dir: usize, len: usize, limits: &Limits) -> bool {
        if !self.meters[dir].allow(now, len, limits) {
            return false;
        }
        self.traffic[dir].add(len);
        true
    }

    /// Whether the allocation has a relay of `peer`'s address family.
    pub fn serves_family(&self, peer: SocketAddr) -> bool {
        self.relayed.is_ipv4() == peer.is_ipv4()
            || self
                .extra
                .is_some_and(|(_, r)| r.is_ipv4() == peer.is_ipv4())
    }

    /// Drop expired permissions and channels; the earliest expiry left.
    pub fn sweep(&mut self, now: Instant) -> Instant {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
        let mut next = self.expires;
        for p in &self.permissions {
            next = next.min(p.expires);
        }
        for c in &self.channels {
            next = next.min(c.expires);
        }
        next
    }
}
