//! The state of one allocation (RFC 8656 §2.2): its relayed transport
//! address, permissions and channel bindings, each with its expiry.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::Output;
use super::ports::Relay;
use super::quota::{Held, Limits, Meter};
use super::stats::{Direction, TrafficCount};
use crate::addr::{AllocId, ChannelNumber, ClientAddr, PeerAddr, RelayPort};
use crate::policy::Reach;
use crate::proto::integrity::Signer;

/// Permission lifetime as RFC 8656 §9 fixes it: the default of
/// [`super::Update::permission_lifetime`] and its most.
pub const PERMISSION_LIFETIME_SECS: u64 = 300;
/// Channel binding lifetime as RFC 8656 §12 fixes it: the default of
/// [`super::Update::channel_lifetime`] and its most.
pub const CHANNEL_LIFETIME_SECS: u64 = 600;
/// How long the number and peer of an expired channel binding stay tied to
/// each other (RFC 8656 §12: 5 minutes after the binding expires); never
/// longer than the binding's own lifetime (see [`Channel::hold`]).
pub const CHANNEL_HOLD_SECS: u64 = 300;

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
    /// How long it stays on hold after it expires: [`CHANNEL_HOLD_SECS`],
    /// or its lifetime if that is shorter (a shortened
    /// `channel_lifetime`), so that every binding on hold now was live at
    /// one moment a hold ago, and held entries stay within
    /// `channels_per_allocation`.
    pub hold: Duration,
}

/// A channel binding that expired and is still on hold (RFC 8656 §12):
/// until `until`, its number binds to no other peer and its peer to no
/// other number; binding the same pair again makes a new binding.
#[derive(Debug, Clone, Copy)]
pub struct HeldChannel {
    pub number: ChannelNumber,
    pub peer: PeerAddr,
    pub until: Instant,
}

impl HeldChannel {
    /// Whether binding `number` to `peer` breaks this hold at `now`: it
    /// names one half of the held pair but not the other.
    pub fn forbids(&self, number: ChannelNumber, peer: PeerAddr, now: Instant) -> bool {
        self.until > now && (self.number == number) != (self.peer == peer)
    }
}

/// What a [`Grant`] is about: a permission or a channel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// Every port of `ip` may send to the client, and the client to it
    /// (RFC 8656 §9); `reach` is what the policy lets through to that IP,
    /// as in [`Permission`]: anything but [`Reach::Any`] needs the port
    /// checked packet by packet.
    Permission { ip: IpAddr, reach: Reach },
    /// ChannelData on `number` goes to `peer` and back (§12); it still
    /// needs a live permission for the peer's IP.
    Channel {
        number: ChannelNumber,
        peer: PeerAddr,
    },
}

/// How a permission or channel binding changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Installed by a request (CreatePermission, or a ChannelBind for its
    /// channel and the permission it implies).
    Created,
    /// Still there with a new state: its expiry renewed by a request, or,
    /// for a permission, its reach changed by a reload.
    Refreshed,
    /// Its lifetime ran out while the allocation lives on.
    Expired,
    /// Gone before its expiry: with its allocation (however that ended),
    /// or by a reload whose policy denies the peer.
    Removed,
}

/// A change to a permission or channel binding, reported so that
/// something outside the engine (a kernel fast path for bound channels)
/// can mirror them. Each one starts with [`Change::Created`] and ends with
/// exactly one [`Change::Expired`] or [`Change::Removed`]; a created or
/// refreshed one is live. A request reports its permission before its
/// channel; an end reports the channels before the permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub alloc: AllocId,
    /// The client's 5-tuple.
    pub client: ClientAddr,
    /// The relayed transport address (as advertised) of the peer's family;
    /// its socket is the one [`Output::OpenRelay`] bound at this port.
    pub relay: SocketAddr,
    pub what: Granted,
    pub change: Change,
    /// When it expires, or would have.
    pub expires: Instant,
}

/// What every [`Grant`] of one allocation shares, copied out so that
/// events can be made while its tables are borrowed.
#[derive(Clone, Copy)]
pub(super) struct Owner {
    alloc: AllocId,
    client: ClientAddr,
    relayed: SocketAddr,
    extra: Option<SocketAddr>,
}

impl Owner {
    pub(super) fn grant(&self, what: Granted, change: Change, expires: Instant) -> Output {
        let ip = match what {
            Granted::Permission { ip, .. } => ip,
            Granted::Channel { peer, .. } => peer.0.ip(),
        };
        let relay = match self.extra {
            Some(r) if r.is_ipv4() == ip.is_ipv4() => r,
            _ => self.relayed,
        };
        Output::Grant(Grant {
            alloc: self.alloc,
            client: self.client,
            relay,
            what,
            change,
            expires,
        })
    }

    pub(super) fn permission(&self, p: &Permission, change: Change) -> Output {
        let what = Granted::Permission {
            ip: p.ip,
            reach: p.reach,
        };
        self.grant(what, change, p.expires)
    }

    pub(super) fn channel(&self, c: &Channel, change: Change) -> Output {
        let what = Granted::Channel {
            number: c.number,
            peer: c.peer,
        };
        self.grant(what, change, c.expires)
    }
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
    /// The relay address its ports are of (both, for a dual allocation).
    pub relay: Relay,
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
    /// Expired channel bindings on hold (RFC 8656 §12). Bounded without a
    /// quota of its own: the hold (5 minutes) is shorter than a binding's
    /// lifetime (10 minutes), so every entry held now was a live binding 5
    /// minutes ago, and there were at most `channels_per_allocation` of
    /// those; the live bindings and the held ones never share a number or
    /// a peer. Held entries leave at the sweep after their hold ends.
    pub held_channels: Vec<HeldChannel>,
    /// The wake-up time queued for this allocation, if any.
    pub scheduled: Option<Instant>,
    /// Relayed traffic, by [`Direction`].
    pub traffic: [TrafficCount; Direction::COUNT],
    /// The same traffic as the client's frames (ChannelData, Send and Data
    /// indications, framing included), by [`Direction`].
    pub framed: [TrafficCount; Direction::COUNT],
    /// Its number among this server's allocations (usage facts).
    pub serial: u64,
    /// Its counts as last reported in a usage fact.
    pub usage_reported: super::usage::Counts,
    /// Bandwidth and packet-rate ceilings, by [`Direction`].
    pub meters: [Meter; Direction::COUNT],
    /// The part of `traffic` a kernel fast path relayed and reported
    /// ([`super::Engine::kernel_relayed`]), by [`Direction`].
    pub kernel_traffic: [TrafficCount; Direction::COUNT],
    /// With mobility (RFC 8016): the serial of its newest ticket, the only
    /// one that moves it (`Some(0)` until the first is issued).
    pub ticket: Option<u32>,
    /// A TCP allocation (RFC 6062): its key among the server's peer
    /// connections ([`super::PeerConns`]).
    pub tcp: Option<u64>,
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

    pub(super) fn owner(&self, alloc: AllocId) -> Owner {
        Owner {
            alloc,
            client: self.client,
            relayed: self.relayed,
            extra: self.extra.map(|e| e.1),
        }
    }

    /// Install or refresh a permission for `ip`, which the policy lets
    /// through as `reach`, and report it.
    pub(super) fn permit(
        &mut self,
        owner: &Owner,
        ip: IpAddr,
        expires: Instant,
        reach: Reach,
        out: &mut VecDeque<Output>,
    ) {
        let (p, change) = match self.permissions.iter().position(|p| p.ip == ip) {
            Some(i) => {
                let p = &mut self.permissions[i];
                p.expires = p.expires.max(expires);
                (*p, Change::Refreshed)
            }
            None => {
                let p = Permission { ip, expires, reach };
                self.permissions.push(p);
                (p, Change::Created)
            }
        };
        out.push_back(owner.permission(&p, change));
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
    pub fn admit(&mut self, now: Instant, dir: Direction, len: usize, limits: &Limits) -> bool {
        if !self.meters[dir.index()].allow(now, len, limits) {
            return false;
        }
        self.traffic[dir.index()].add(len);
        true
    }

    /// Count a client's frame of `len` bytes (framing included) that was
    /// relayed in direction `dir`.
    #[inline]
    pub fn framed(&mut self, dir: Direction, len: usize) {
        self.framed[dir.index()].add(len);
    }

    /// Whether the allocation has a relay of `peer`'s address family.
    pub fn serves_family(&self, peer: SocketAddr) -> bool {
        self.relayed.is_ipv4() == peer.is_ipv4()
            || self
                .extra
                .is_some_and(|(_, r)| r.is_ipv4() == peer.is_ipv4())
    }

    /// Drop expired channels and permissions, reported as expired; the
    /// earliest expiry left. An expired channel goes on hold for
    /// its [`Channel::hold`] after its expiry, and holds that ended go.
    /// At most one event per entry.
    pub(super) fn sweep(
        &mut self,
        id: AllocId,
        now: Instant,
        out: &mut VecDeque<Output>,
    ) -> Instant {
        let owner = self.owner(id);
        let held = &mut self.held_channels;
        held.retain(|h| h.until > now);
        self.channels.retain(|c| {
            let live = c.expires > now;
            if !live {
                out.push_back(owner.channel(c, Change::Expired));
                let until = c.expires + c.hold;
                if until > now {
                    held.push(HeldChannel {
                        number: c.number,
                        peer: c.peer,
                        until,
                    });
                }
            }
            live
        });
        self.permissions.retain(|p| {
            let live = p.expires > now;
            if !live {
                out.push_back(owner.permission(p, Change::Expired));
            }
            live
        });
        let mut next = self.expires;
        for p in &self.permissions {
            next = next.min(p.expires);
        }
        for c in &self.channels {
            next = next.min(c.expires);
        }
        next
    }

    /// Report every channel and permission as removed: the allocation ends.
    /// At most one event per entry.
    pub(super) fn report_end(&self, id: AllocId, out: &mut VecDeque<Output>) {
        let owner = self.owner(id);
        for c in &self.channels {
            out.push_back(owner.channel(c, Change::Removed));
        }
        for p in &self.permissions {
            out.push_back(owner.permission(p, Change::Removed));
        }
    }
}
