//! The sans-IO protocol engine.
//!
//! Bytes, addresses and the current time go in; packets to send, relay
//! sockets to open or close and the next wake-up time come out. There are no
//! sockets, no clock and no async here: the shell (`ferroturn::io`) drives it.
//!
//! - [`Engine::handle_client`]: a packet from a client. ChannelData and Send
//!   indications come back as a [`ToPeer`] to send from the relay socket;
//!   everything else queues [`Output`]s.
//! - [`Engine::handle_peer`]: a packet that arrived on a relay socket; comes
//!   back as a [`ToClient`], framed in place.
//! - [`Engine::relay_opened`]: the shell's answer to [`Output::OpenRelay`].
//! - [`Engine::poll_timeout`] / [`Engine::handle_timeout`]: expiry timers.
//! - [`Engine::poll_output`]: queued work for the shell, and [`Grant`]s:
//!   how permissions and channel bindings come and go.
//! - [`Engine::surrender`] / [`Engine::adopt`]: an allocation leaving this
//!   engine for another, whose client's new 5-tuple it serves now, after an
//!   [`Output::Handoff`] (mobility, RFC 8016; see `mobility.rs`).

mod allocate;
pub mod allocation;
mod channel;
pub mod cluster;
pub mod discovery;
pub mod mobility;
pub mod parking;
mod permission;
pub mod ports;
pub mod quota;
mod relay;
pub mod spread;
pub mod stats;
mod tcp_relay;
pub mod usage;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::attributes::*;
use stun::message::Message;

use crate::addr::{AllocId, ClientAddr, PeerAddr, RelayPort};
use crate::auth::Credentials;
use crate::policy::{PeerPolicy, Reach};
use crate::proto::integrity::{self, ALGORITHM_MD5, ALGORITHM_SHA256, Signer};
use crate::proto::{self, Kind, stun as wire};
use allocation::Allocation;
pub use allocation::{Change, Grant, Granted};
pub use discovery::NatSockets;
use ports::Relay;
pub use quota::{Limits, ServerState};

pub use relay::{KernelRelayed, ToClient};
pub use stats::Stats;
use stats::{AuthFailure, Code, Outcome};
pub use tcp_relay::{PROTO_TCP, PeerConns, PipeShare, UNBOUND_TIMEOUT};

/// The target of this module's log lines. Each logging module of the engine
/// names its target by hand: the path it had in the `ferroturn` crate, not
/// this crate's (`ferroturn_engine::…`), so that log lines keep the target
/// operators see and `[log] level` / `RUST_LOG` directives such as
/// `ferroturn::engine=debug` keep matching them. tests/engine_crate.rs
/// checks every such constant against its file's path.
const LOG_TARGET: &str = "ferroturn::engine";

/// What the engine needs to know; one per worker.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// What a reload replaces ([`Engine::update`]).
    pub live: Update,
    /// Where relay sockets bind.
    pub relay_bind: IpAddr,
    /// What XOR-RELAYED-ADDRESS advertises.
    pub relay_public: IpAddr,
    /// Where IPv6 relay sockets bind and what they advertise, if enabled.
    pub relay_bind_v6: Option<IpAddr>,
    pub relay_public_v6: Option<IpAddr>,
    /// Relay addresses after the first (the one above), each a
    /// [`ports::Relay`] of its own with the first one's port range; an
    /// Allocate takes a port of one of them.
    pub more_relays: Vec<RelayAddress>,
    /// Without REQUESTED-ADDRESS-FAMILY, relay in the client's own family
    /// (when configured) instead of IPv4 as RFC 8656 §7.2 says.
    pub same_family_default: bool,
    /// Relay ports this engine adds to the pool it takes from
    /// ([`ServerState::ports`], one for every engine of a server; a port joins
    /// it once). The server adds the whole range to the pool itself and
    /// gives its engines none.
    pub ports: Vec<u16>,
    /// Seeds where port searches start and Data indication transaction ids.
    pub seed: u64,
    /// Listener indexes that answer STUN only (TURN requests get 400).
    pub stun_only: Vec<u16>,
    /// The four UDP sockets of NAT behaviour discovery (RFC 5780), if
    /// `[nat_behaviour]` is set; the three besides the primary listener
    /// are in `stun_only` too.
    pub nat_behaviour: Option<NatSockets>,
    /// State shared by every worker's engine (quotas, reservations).
    pub shared: Arc<ServerState>,
    /// This engine's UDP shard index, which its mobility tickets name.
    pub shard: u16,
    /// Keys the mobility tickets (RFC 8016) of every engine of the
    /// server: random, drawn once per process.
    pub ticket_key: [u8; 32],
}

/// How many relay addresses `cfg` has (at most [`ports::MAX_RELAYS`]).
fn relay_count(cfg: &EngineConfig) -> usize {
    (1 + cfg.more_relays.len()).min(ports::MAX_RELAYS)
}

/// The per-packet policy check of a permission ([`PeerPolicy::reaches`]),
/// with the live relay ports of every worker: borrowed from the config, so
/// that it can be used while an allocation is borrowed mutably.
fn reaches(cfg: &EngineConfig) -> impl Fn(SocketAddr, Reach) -> bool + '_ {
    |peer, reach| {
        cfg.live
            .policy
            .reaches(peer, reach, |r| cfg.shared.is_live(r))
    }
}

/// Work for the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `data` to a client.
    Transmit { to: ClientAddr, data: Vec<u8> },
    /// Bind a UDP relay socket at `bind` for `alloc`, then call
    /// [`Engine::relay_opened`].
    OpenRelay { alloc: AllocId, bind: SocketAddr },
    /// Close the relay socket of `alloc`.
    CloseRelay { alloc: AllocId },
    /// `alloc` ended, but its relay port stays this engine's for a while
    /// ([`parking`]): stop watching its socket, bound at `bind`, and keep
    /// it open; an [`Output::OpenRelay`] at `bind` takes it up again, after
    /// reading away what waits on it. Instead of [`Output::CloseRelay`].
    /// Only after [`Engine::park_relays`].
    ParkRelay { alloc: AllocId, bind: SocketAddr },
    /// Close the socket parked at `bind`: its port went back to the pool.
    CloseParked { bind: SocketAddr },
    /// A permission or channel binding was created, refreshed, expired or
    /// removed: the seam for a kernel fast path that relays bound channels
    /// itself and so must mirror them. One variant for every kind, so that
    /// a shell with no use for them ignores them in one arm, and a mirror
    /// finds the allocation, client and relay in every event. Requests,
    /// timeouts, closes and reloads make them, relayed data never does. A
    /// call reports each permission and channel it ends, makes or refreshes
    /// once, so what it queues for one allocation stays within twice its
    /// quotas (what expired, then what the request installs).
    Grant(Grant),
    /// Ask the cluster store for the credential of `name`, which neither
    /// the configuration nor [`Engine::cluster_user`] made known; the
    /// request that named it waits at most [`cluster::PARK_TIMEOUT`]. Only
    /// after [`Engine::cluster_on`].
    LookupUser { name: String },
    /// A Refresh moves an allocation that engine `owner` holds (a UDP
    /// shard) to a client of this one (RFC 8016): give it to that engine's
    /// [`Engine::surrender`].
    Handoff(Box<mobility::Handoff>),
    /// A usage fact of an allocation, for accounting (coturn's
    /// `--redis-statsdb` events). Only after [`Engine::usage_on`]; never
    /// made while relaying a packet.
    Usage(Box<usage::Usage>),
    /// Listen for TCP at `bind`, the relayed transport address of the TCP
    /// allocation `alloc` (RFC 6062 §5.1), then call
    /// [`Engine::relay_opened`]; peers that connect there are offered to
    /// [`Engine::peer_connection`]. [`Output::CloseRelay`] closes it with
    /// every peer connection of the allocation.
    OpenTcpRelay { alloc: AllocId, bind: SocketAddr },
    /// Connect from `bind` (the relayed transport address) to `peer` for
    /// the Connect request of `alloc` (RFC 6062 §5.2), then call
    /// [`Engine::peer_connected`] with `conn`.
    ConnectPeer {
        alloc: AllocId,
        conn: u32,
        bind: SocketAddr,
        peer: SocketAddr,
    },
    /// Close peer connection `conn` of a TCP allocation, wherever it is
    /// (waiting for its bind, or piped on any worker): a reload's policy
    /// denies its peer.
    ClosePeerConn { conn: u32 },
    /// The connection of `client` was bound to peer connection `conn`
    /// (RFC 6062 §5.4): once the answer queued before this is written, it
    /// carries bytes to and from that peer, and no more STUN, within the
    /// bandwidth ceiling of its allocation that `share` holds for all its
    /// pipes.
    BindData {
        client: ClientAddr,
        conn: u32,
        share: std::sync::Arc<PipeShare>,
    },
}

impl EngineConfig {
    /// A configuration with the documented defaults for everything but the
    /// credentials, the peer policy, the relay addresses and the ports.
    pub fn new(
        credentials: Credentials,
        policy: PeerPolicy,
        relay_bind: IpAddr,
        relay_public: IpAddr,
        ports: Vec<u16>,
    ) -> Self {
        EngineConfig {
            live: Update {
                credentials,
                policy,
                limits: Limits::default(),
                strict_expiry: true,
                expiry_grace: Duration::ZERO,
                lifetime: Duration::from_secs(600),
                max_lifetime: Duration::from_secs(3600),
                permission_lifetime: Duration::from_secs(allocation::PERMISSION_LIFETIME_SECS),
                channel_lifetime: Duration::from_secs(allocation::CHANNEL_LIFETIME_SECS),
                legacy_channels: false,
                mobility: false,
            },
            relay_bind,
            relay_public,
            relay_bind_v6: None,
            relay_public_v6: None,
            more_relays: Vec::new(),
            same_family_default: false,
            ports,
            seed: 1,
            stun_only: Vec::new(),
            nat_behaviour: None,
            shared: Arc::default(),
            shard: 0,
            ticket_key: [0; 32],
        }
    }
}

/// One relay address of the server: where its relay sockets bind and what
/// XOR-RELAYED-ADDRESS advertises (RFC 8656 §7.2), with its IPv6 twin if
/// it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddress {
    pub bind: IpAddr,
    pub public: IpAddr,
    pub bind_v6: Option<IpAddr>,
    pub public_v6: Option<IpAddr>,
}

/// The engine's live settings: what it starts with and what a reload
/// replaces whole.
#[derive(Debug, Clone)]
pub struct Update {
    pub credentials: Credentials,
    pub policy: PeerPolicy,
    /// Quotas and rate limits.
    pub limits: Limits,
    /// Close allocations of a REST credential when it expires, plus grace.
    pub strict_expiry: bool,
    pub expiry_grace: Duration,
    /// Default and maximum allocation lifetime (RFC 8656 §7.2).
    pub lifetime: Duration,
    pub max_lifetime: Duration,
    /// How long a permission (RFC 8656 §9, 300 s) and a channel binding
    /// (§12, 600 s) live after their last refresh; shorter only to watch
    /// expiry in tests (clients refresh on the RFC's schedule).
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    /// Accept channel numbers up to 0x7FFF as RFC 5766 did, not just
    /// 0x4000–0x4FFF (RFC 8656 §12). coturn's client tools need it.
    pub legacy_channels: bool,
    /// Grant MOBILITY-TICKETs and move allocations with them (RFC 8016).
    pub mobility: bool,
}

/// One allocation, as the admin API lists it.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub client: ClientAddr,
    pub relayed: SocketAddr,
    /// The IPv6 relay of a dual allocation.
    pub relayed_extra: Option<SocketAddr>,
    pub age: Duration,
    /// Relayed traffic, by [`stats::Direction`].
    pub traffic: [stats::TrafficCount; stats::Direction::COUNT],
    /// A TCP allocation (RFC 6062): its relayed address is a TCP listener.
    pub tcp: bool,
}

/// Where a draining server sends new Allocates (300 Try Alternate, RFC
/// 8489 §10).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redirect {
    /// ALTERNATE-SERVER (§14.15) for every client, but those on TLS
    /// listeners when `tls` is set.
    pub alternate: Option<SocketAddr>,
    /// For clients on TLS listeners: the other server's TLS listener, sent
    /// as ALTERNATE-SERVER, and the name its certificate carries, sent as
    /// ALTERNATE-DOMAIN (§14.16) so that the client can verify it there.
    pub tls: Option<TlsAlternate>,
}

/// The TLS listener of another server (see [`Redirect::tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsAlternate {
    pub address: SocketAddr,
    /// At most 255 bytes (§14.16); without it the client checks the
    /// certificate against the name it used for this server.
    pub domain: Option<String>,
}

impl From<Option<SocketAddr>> for Redirect {
    /// The same alternate for every client.
    fn from(alternate: Option<SocketAddr>) -> Self {
        Redirect {
            alternate,
            tls: None,
        }
    }
}

impl Redirect {
    /// What a client arriving `via` is sent: ALTERNATE-SERVER and, for a
    /// TLS client with a TLS alternate, ALTERNATE-DOMAIN; `None` (508)
    /// when no alternate is set for it.
    pub fn for_client(&self, via: crate::addr::Via) -> Option<(SocketAddr, Option<&str>)> {
        match (&self.tls, via) {
            (Some(t), crate::addr::Via::Stream { tls: true, .. }) => {
                Some((t.address, t.domain.as_deref()))
            }
            // No DTLS alternate is configured: `alternate` is a UDP port a
            // DTLS client could not use, so it gets 508 instead.
            (_, crate::addr::Via::Dtls(_)) => None,
            _ => self.alternate.map(|a| (a, None)),
        }
    }
}

/// Point-in-time figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub allocations: u64,
    pub permissions: u64,
    pub channels: u64,
    pub free_ports: u64,
    /// Allocations with a TCP relay (RFC 6062).
    pub tcp_allocations: u64,
    /// Peer connections of TCP allocations in the whole server: waiting
    /// for their bind (or connecting), and bound to a data connection.
    pub peer_connections_waiting: u64,
    pub peer_connections_bound: u64,
    /// Bytes the pipes of TCP allocations relayed since the start, by
    /// [`stats::Direction`], for the whole server (a counter).
    pub tcp_relayed_bytes: [u64; stats::Direction::COUNT],
}

impl Gauges {
    pub fn merge(&mut self, o: &Gauges) {
        self.allocations += o.allocations;
        self.permissions += o.permissions;
        self.channels += o.channels;
        self.tcp_allocations += o.tcp_allocations;
        // Every engine counts the one pool they share: the same number;
        // likewise the peer connections, counted server-wide.
        self.free_ports = self.free_ports.max(o.free_ports);
        self.peer_connections_waiting = self
            .peer_connections_waiting
            .max(o.peer_connections_waiting);
        self.peer_connections_bound = self.peer_connections_bound.max(o.peer_connections_bound);
        for (mine, theirs) in self.tcp_relayed_bytes.iter_mut().zip(o.tcp_relayed_bytes) {
            *mine = (*mine).max(theirs);
        }
    }
}

/// A packet for a peer: send `packet[start..end]` from the relay socket of
/// `relay` to `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToPeer {
    pub relay: AllocId,
    pub peer: PeerAddr,
    pub start: usize,
    pub end: usize,
}

/// Attribute types this server understands (RFC 8489 §14, RFC 8656 §18).
const KNOWN: &[AttrType] = &[
    ATTR_MAPPED_ADDRESS,
    ATTR_USERNAME,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_ERROR_CODE,
    ATTR_UNKNOWN_ATTRIBUTES,
    ATTR_REALM,
    ATTR_NONCE,
    ATTR_XORMAPPED_ADDRESS,
    ATTR_CHANNEL_NUMBER,
    ATTR_LIFETIME,
    ATTR_XOR_PEER_ADDRESS,
    ATTR_DATA,
    ATTR_XOR_RELAYED_ADDRESS,
    ATTR_REQUESTED_ADDRESS_FAMILY,
    ATTR_EVEN_PORT,
    ATTR_REQUESTED_TRANSPORT,
    ATTR_DONT_FRAGMENT,
    ATTR_RESERVATION_TOKEN,
    ATTR_MESSAGE_INTEGRITY_SHA256,
    ATTR_PASSWORD_ALGORITHM,
    ATTR_USER_HASH,
    ATTR_CONNECTION_ID,
];

/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11), comprehension-optional.
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);
/// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
pub const ATTR_ADDRESS_ERROR_CODE: AttrType = AttrType(0x8001);

/// How long a reserved port waits for its token (RFC 8656 §7.2: about 30 s).
const RESERVATION_SECS: u64 = 30;

/// A request that passed authentication: who sent it, how to sign the
/// answer, and when its credential stops (strict expiry of REST credentials).
struct Authed {
    username: String,
    signer: Signer,
    deadline: Option<Instant>,
}

impl Authed {
    /// An error response, signed as the request was.
    fn error(&self, m: &Message, code: Code) -> Answer {
        Reply::error(m, code).finish(Some(&self.signer), false)
    }

    /// A success response with nothing but the signature.
    fn ok(&self, m: &Message) -> Answer {
        Reply::success(m).finish(Some(&self.signer), false)
    }
}

/// A response under construction, with the [`Outcome`] the stats will
/// count for it: the error code is given once, as a [`Code`], and both the
/// wire and the counters take it from there.
struct Reply {
    response: wire::Response,
    outcome: Outcome,
}

impl Reply {
    /// A success response to `m`.
    fn success(m: &Message) -> Self {
        Reply {
            response: wire::Response::success(m),
            outcome: Outcome {
                method: stats::Method::of(m.typ.method),
                error: None,
            },
        }
    }

    /// An error response to `m` with ERROR-CODE `code`.
    fn error(m: &Message, code: Code) -> Self {
        Reply {
            response: wire::Response::error(m, code.value()),
            outcome: Outcome {
                method: stats::Method::of(m.typ.method),
                error: Some(code),
            },
        }
    }

    /// Add attributes to the response.
    fn with(mut self, add: impl FnOnce(wire::Response) -> wire::Response) -> Self {
        self.response = add(self.response);
        self
    }

    fn finish(self, signer: Option<&Signer>, fingerprint: bool) -> Answer {
        Answer {
            data: self.response.finish(signer, fingerprint),
            outcome: self.outcome,
        }
    }
}

/// An encoded response and what it came to (see [`Reply`]).
struct Answer {
    data: Vec<u8>,
    outcome: Outcome,
}

/// Why a request is refused before authentication: the error code, and
/// whether the answer carries a fresh challenge (REALM, NONCE,
/// PASSWORD-ALGORITHMS) or the unknown attributes (420 to a Binding).
#[derive(Debug, Clone)]
enum Reject {
    Challenge(Code),
    Plain(Code),
    Unknown(Vec<AttrType>),
    /// Held until its user is looked up: no answer now.
    Parked,
}

/// The protocol state of one worker.
pub struct Engine {
    cfg: EngineConfig,
    allocs: Vec<Option<Allocation>>,
    free_ids: Vec<u32>,
    by_client: HashMap<ClientAddr, AllocId>,
    /// Where the next relay port search starts: xorshift state.
    port_random: u64,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Tokens this engine issued, with their expiry, oldest first.
    reserved: VecDeque<(Instant, [u8; 8])>,
    /// Relay ports of ended allocations kept for the next ones.
    parking: parking::Parking,
    out: VecDeque<Output>,
    epoch: Instant,
    epoch_unix: u64,
    txid_counter: u64,
    /// Set by [`Engine::drain`]: where new Allocates are sent.
    draining: Option<Redirect>,
    /// Where a cluster's other nodes take new Allocates (set by the shell).
    spread: spread::Spread,
    /// When a denied Send indication was last logged.
    send_denial_logged: Option<Instant>,
    /// Keys the RESERVATION-TOKENs this engine issues.
    token_key: ring::hmac::Key,
    token_counter: u64,
    /// Keys mobility tickets ([`EngineConfig::ticket_key`]).
    ticket_key: ring::hmac::Key,
    /// The serial of the last mobility ticket issued here.
    ticket_serial: u32,
    /// Moves sent to other engines, awaited.
    handoffs: mobility::Pending,
    /// Users and secrets of the cluster store, as the shell reported them.
    cluster: cluster::ClusterUsers,
    /// Whether usage facts are made ([`Engine::usage_on`]).
    usage: bool,
    /// Allocations ended whose final usage fact is still queued, with
    /// their serials: a kernel fast path's last counts, reported as the
    /// shell takes their channels out, still reach that fact
    /// ([`Engine::kernel_relayed`]). Emptied when the queue is.
    ended: Vec<(AllocId, u64)>,
    /// Connects to peers under way (RFC 6062 §5.2).
    tcp: tcp_relay::Connecting,
    pub stats: Stats,
}

impl Engine {
    /// A new engine; `now` and `unix_now` (seconds since 1970) anchor its
    /// idea of wall-clock time, which nonces and REST expiries need.
    pub fn new(cfg: EngineConfig, now: Instant, unix_now: u64) -> Self {
        cfg.shared.ports.join(Relay::MAIN, &cfg.ports);
        for i in 1..relay_count(&cfg) {
            cfg.shared.ports.join_like(Relay(i as u8), Relay::MAIN);
        }
        let seed = cfg.seed;
        let cfg_ticket_key = cfg.ticket_key;
        Engine {
            cfg,
            allocs: Vec::new(),
            free_ids: Vec::new(),
            by_client: HashMap::new(),
            port_random: seed,
            timers: BinaryHeap::new(),
            reserved: VecDeque::new(),
            parking: parking::Parking::default(),
            out: VecDeque::new(),
            epoch: now,
            epoch_unix: unix_now,
            txid_counter: seed.rotate_left(17),
            draining: None,
            spread: spread::Spread::default(),
            send_denial_logged: None,
            token_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed.to_le_bytes()),
            token_counter: 0,
            ticket_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &cfg_ticket_key),
            ticket_serial: seed as u32,
            handoffs: mobility::Pending::default(),
            cluster: cluster::ClusterUsers::default(),
            usage: false,
            ended: Vec::new(),
            tcp: tcp_relay::Connecting::default(),
            stats: Stats::default(),
        }
    }

    /// Apply a reloaded configuration: credentials, peer policy, limits,
    /// expiry rules and lifetimes. Allocations stay, and so do their permissions and
    /// channels, but for those whose peer the new policy denies: no packet
    /// reaches a destination the policy in force refuses. What is removed,
    /// and any permission whose reach changes, is reported as a [`Grant`].
    pub fn update(&mut self, u: Update) {
        self.cfg.live = u;
        let policy = &self.cfg.live.policy;
        let out = &mut self.out;
        let mut dropped = 0;
        for (i, a) in self.allocs.iter_mut().enumerate() {
            let Some(a) = a else { continue };
            let owner = a.owner(AllocId(i as u32));
            let before = a.permissions.len() + a.channels.len();
            a.channels.retain(|c| {
                let keep = policy.reach(c.peer.0.ip()) != Reach::Closed;
                if !keep {
                    out.push_back(owner.channel(c, Change::Removed));
                }
                keep
            });
            a.permissions.retain_mut(|p| {
                let reach = policy.reach(p.ip);
                if reach == Reach::Closed {
                    out.push_back(owner.permission(p, Change::Removed));
                } else if reach != p.reach {
                    p.reach = reach;
                    out.push_back(owner.permission(p, Change::Refreshed));
                }
                reach != Reach::Closed
            });
            dropped += before - a.permissions.len() - a.channels.len();
        }
        if dropped > 0 {
            tracing::info!(
                target: LOG_TARGET,
                dropped,
                "permissions and channels to peers the new policy denies removed"
            );
        }
        self.close_denied_peer_conns();
    }

    /// The name a user's allocations count against: a static user's name,
    /// or the part of a REST username after its expiry (`<expiry>:<name>`),
    /// so that each freshly minted credential of one name shares its quota.
    fn quota_name(&self, username: &str) -> String {
        if self.cfg.live.credentials.is_static(username) {
            return username.to_owned();
        }
        // A REST username with no name part (just an expiry) counts in one
        // bucket with every other such username: its expiry is no name.
        match crate::auth::rest_expiry(username) {
            Some(_) => username.split_once(':').map_or("", |(_, n)| n).to_owned(),
            None => username.to_owned(),
        }
    }

    /// A cluster store is there: a request under a name nobody here knows
    /// waits (at most [`cluster::PARK_TIMEOUT`]) while
    /// [`Output::LookupUser`] asks for it.
    pub fn cluster_on(&mut self) {
        self.cluster.on = true;
    }

    /// Make usage facts ([`Output::Usage`]) from now on: an allocation's
    /// creation, refreshes and end as they happen, its traffic when
    /// [`Engine::usage_traffic`] asks.
    pub fn usage_on(&mut self) {
        self.usage = true;
    }

    /// A usage fact for every live allocation whose traffic moved since
    /// its last one: the counts since then.
    pub fn usage_traffic(&mut self, now: Instant) {
        if !self.usage {
            return;
        }
        for a in self.allocs.iter_mut().flatten() {
            if !matches!(a.state, allocation::State::Active) {
                continue;
            }
            let counts = usage::Counts::of(a);
            let moved = counts.since(&a.usage_reported);
            if moved.is_zero() {
                continue;
            }
            a.usage_reported = counts;
            self.out.push_back(Output::Usage(Box::new(usage::Usage {
                serial: a.serial,
                user: a.username.clone(),
                client: a.client,
                age: now.saturating_duration_since(a.created),
                fact: usage::Fact::Traffic(moved),
            })));
        }
    }

    /// Queue a usage fact of allocation `id`, if they are on.
    fn usage_fact(&mut self, id: AllocId, now: Instant, fact: usage::Fact) {
        if !self.usage {
            return;
        }
        let Some(a) = self.allocation(id) else { return };
        let u = usage::Usage {
            serial: a.serial,
            user: a.username.clone(),
            client: a.client,
            age: now.saturating_duration_since(a.created),
            fact,
        };
        self.out.push_back(Output::Usage(Box::new(u)));
    }

    /// The store's answer for `name`: its credential (a password or keys,
    /// turned into keys for this realm here), or `None` if it has none.
    /// Requests parked for the name are handled again now. A name the
    /// configuration defines keeps the configuration's credential.
    pub fn cluster_user(
        &mut self,
        now: Instant,
        name: &str,
        user: Option<crate::auth::StaticUser>,
    ) {
        let realm = self.cfg.live.credentials.realm().to_owned();
        let user = user.map(|u| u.derived(name, &realm));
        self.cluster.learn(now, name, user);
        let ready = self.cluster.unpark(|p| p.name == name);
        self.replay(now, ready);
    }

    /// The store changed `name` (or, with `None`, may have changed any
    /// name): what was learnt of it is forgotten, and asked again when next
    /// used.
    pub fn cluster_forget(&mut self, name: Option<&str>) {
        self.cluster.forget(name);
    }

    /// The shell reconnected to the store after missing its notifications:
    /// names believed absent may exist now, and are looked up again when
    /// next used (users it gave are read anew and given again instead).
    pub fn cluster_forget_absent(&mut self) {
        self.cluster.forget_absent();
    }

    /// The store's REST secrets, which verify REST usernames beside the
    /// configuration's.
    pub fn cluster_secrets(&mut self, secrets: &[String]) {
        self.cluster.set_secrets(secrets);
    }

    /// Handle parked requests again; none is parked twice.
    fn replay(&mut self, now: Instant, parked: Vec<cluster::Parked>) {
        self.cluster.replaying = true;
        for p in parked {
            self.handle_stun(now, p.client, &p.packet);
        }
        self.cluster.replaying = false;
    }

    /// Stop accepting new allocations: Allocate gets 300 with
    /// ALTERNATE-SERVER (RFC 8489 §10) when `redirect` names an alternate
    /// for the client's transport ([`Redirect::for_client`]), else 508.
    /// Existing allocations live on until they expire or are closed.
    pub fn drain(&mut self, redirect: impl Into<Redirect>) {
        self.draining = Some(redirect.into());
    }

    /// The cluster's load spreading: the threshold, this node's capacity,
    /// and where each family and transport is sent now.
    pub fn set_spread(&mut self, spread: spread::Spread) {
        self.spread = spread;
    }

    /// Whether [`Engine::drain`] was called.
    pub fn draining(&self) -> bool {
        self.draining.is_some()
    }

    /// The live allocations, for the admin API.
    pub fn sessions(&self, now: Instant) -> Vec<Session> {
        self.allocs
            .iter()
            .flatten()
            .filter(|a| matches!(a.state, allocation::State::Active))
            .map(|a| Session {
                user: a.username.clone(),
                client: a.client,
                relayed: a.relayed,
                relayed_extra: a.extra.map(|e| e.1),
                age: now.saturating_duration_since(a.created),
                traffic: match a.tcp {
                    // Bytes only: a stream has no packets.
                    Some(owner) => {
                        let bytes = self.pipe_traffic(owner);
                        let mut t = a.traffic;
                        for (count, b) in t.iter_mut().zip(bytes) {
                            count.bytes += b;
                        }
                        t
                    }
                    None => a.traffic,
                },
                tcp: a.tcp.is_some(),
            })
            .collect()
    }

    /// Gauges for metrics: allocations, permissions, channels, free
    /// ports, TCP allocations and their peer connections.
    pub fn gauges(&self) -> Gauges {
        let (waiting, bound) = self.cfg.shared.peer_conns.totals();
        let mut g = Gauges {
            allocations: self.by_client.len() as u64,
            free_ports: self.free_ports() as u64,
            peer_connections_waiting: waiting,
            peer_connections_bound: bound,
            tcp_relayed_bytes: self.cfg.shared.peer_conns.relayed_total(),
            ..Gauges::default()
        };
        for a in self.allocs.iter().flatten() {
            g.permissions += a.permissions.len() as u64;
            g.channels += a.channels.len() as u64;
            g.tcp_allocations += u64::from(a.tcp.is_some());
        }
        g
    }

    /// Close every allocation of `user` (an operator's kill); how many.
    /// A REST name closes the allocations of every credential minted for
    /// it (`<expiry>:<name>`), as the quota counts them.
    pub fn close_user(&mut self, now: Instant, user: &str) -> usize {
        self.close_where(now, |a| a.username == user || a.held.name == user)
    }

    /// Close the allocation whose relayed address has `port`; whether one did.
    pub fn close_relay_port(&mut self, now: Instant, port: u16) -> bool {
        self.close_where(now, |a| {
            a.relayed.port() == port || a.extra.is_some_and(|(p, _)| p.0 == port)
        }) > 0
    }

    fn close_where(&mut self, now: Instant, pred: impl Fn(&Allocation) -> bool) -> usize {
        let ids: Vec<AllocId> = self
            .by_client
            .values()
            .copied()
            .filter(|id| self.allocation(*id).is_some_and(&pred))
            .collect();
        for &id in &ids {
            if let Some(a) = self.allocation(id) {
                tracing::info!(target: LOG_TARGET, client = %a.client, user = %a.username, "allocation closed by the operator");
            }
            self.stats.allocations_deleted += 1;
            self.remove(id, now);
        }
        ids.len()
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch_unix + now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.by_client.len()
    }

    /// Free relay ports left in the server's pool, for every engine: of
    /// every relay address.
    pub fn free_ports(&self) -> usize {
        (0..relay_count(&self.cfg))
            .map(|i| self.cfg.shared.ports.free(Relay(i as u8)))
            .sum()
    }

    /// The addresses of `relay`.
    fn relay_address(&self, relay: Relay) -> RelayAddress {
        match relay.0 {
            0 => RelayAddress {
                bind: self.cfg.relay_bind,
                public: self.cfg.relay_public,
                bind_v6: self.cfg.relay_bind_v6,
                public_v6: self.cfg.relay_public_v6,
            },
            i => self.cfg.more_relays[i as usize - 1],
        }
    }

    /// Take a free relay port, an even one if `even`, of a relay address
    /// with an IPv6 twin if `v6`: the relay addresses in turn from a random
    /// one, each from a random port, so that allocations spread over them.
    fn take_port(&mut self, v6: bool, even: bool) -> Option<(Relay, RelayPort)> {
        self.take_from_relays(v6, |pool, relay, r| pool.take(relay, even, r))
    }

    /// Take a free relay port of `relay`, an even one if `even`.
    fn take_port_of(&mut self, relay: Relay, even: bool) -> Option<RelayPort> {
        let r = ports::next_random(&mut self.port_random);
        self.cfg.shared.ports.take(relay, even, r)
    }

    /// Take an even relay port and the odd one after it, of one relay
    /// address (with an IPv6 twin if `v6`), chosen as [`Engine::take_port`]
    /// does.
    fn take_port_pair(&mut self, v6: bool) -> Option<(Relay, (RelayPort, RelayPort))> {
        self.take_from_relays(v6, |pool, relay, r| pool.take_pair(relay, r))
    }

    /// What `take` gives from the first relay address (with an IPv6 twin
    /// if `v6`) that gives something, trying them in turn from a random
    /// one; `take` gets a fresh random number for each.
    fn take_from_relays<T>(
        &mut self,
        v6: bool,
        take: impl Fn(&ports::PortPool, Relay, u64) -> Option<T>,
    ) -> Option<(Relay, T)> {
        let n = relay_count(&self.cfg);
        let first = match n {
            1 => 0,
            _ => ports::next_random(&mut self.port_random) as usize % n,
        };
        for k in 0..n {
            let relay = Relay(((first + k) % n) as u8);
            if v6 && self.relay_address(relay).bind_v6.is_none() {
                continue;
            }
            let r = ports::next_random(&mut self.port_random);
            if let Some(got) = take(&self.cfg.shared.ports, relay, r) {
                return Some((relay, got));
            }
        }
        None
    }

    /// Give a relay port back to the server's pool.
    fn release_port(&self, relay: Relay, port: RelayPort) {
        self.cfg.shared.ports.release(relay, port);
    }

    /// The allocation behind `id`, if any.
    pub fn allocation(&self, id: AllocId) -> Option<&Allocation> {
        self.allocs.get(id.0 as usize)?.as_ref()
    }

    /// The allocation of a client's 5-tuple, if any.
    pub fn allocation_of(&self, client: ClientAddr) -> Option<AllocId> {
        self.by_client.get(&client).copied()
    }

    /// Next queued piece of work for the shell.
    #[inline]
    pub fn poll_output(&mut self) -> Option<Output> {
        let o = self.out.pop_front();
        match &o {
            None => self.ended.clear(),
            Some(Output::Usage(u))
                if !self.ended.is_empty() && matches!(u.fact, usage::Fact::Deleted { .. }) =>
            {
                self.ended.retain(|(_, serial)| *serial != u.serial);
            }
            Some(_) => {}
        }
        o
    }

    /// When [`Engine::handle_timeout`] next needs to run.
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let alloc = self.timers.peek().map(|Reverse((t, _))| *t);
        let resv = self.reserved.front().map(|(t, _)| *t);
        let parked = self.cluster.next_deadline();
        let ports = self.parking.next_deadline();
        [alloc, resv, parked, ports].into_iter().flatten().min()
    }

    /// Expire what is due at `now`: permissions, channels, allocations
    /// (RFC 8656 §7, §9, §12).
    pub fn handle_timeout(&mut self, now: Instant) {
        // A lookup that did not come in time: answered as an unknown user.
        if self.cluster.next_deadline().is_some_and(|t| t <= now) {
            let late = self.cluster.unpark(|p| p.deadline <= now);
            self.replay(now, late);
        }
        self.expire_parked(now);
        // An unredeemed reservation gives its port back to the pool.
        while let Some(&(t, token)) = self.reserved.front() {
            if t > now {
                break;
            }
            self.reserved.pop_front();
            if let Some((relay, port)) = self.cfg.shared.expire(&token) {
                self.release_port(relay, port);
            }
        }
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let id = AllocId(id);
            let Some(a) = self.alloc_mut(id) else {
                continue;
            };
            if a.scheduled == Some(t) {
                a.scheduled = None;
            }
            if a.expires <= now {
                tracing::info!(target: LOG_TARGET, client = %a.client, user = %a.username, "allocation expired");
                self.stats.allocations_expired += 1;
                self.remove(id, now);
                continue;
            }
            self.reschedule(id, now);
        }
    }

    /// Sweep an allocation and make sure a wake-up is queued for its next expiry.
    fn reschedule(&mut self, id: AllocId, now: Instant) {
        let Some(a) = self.allocs.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let next = a.sweep(id, now, &mut self.out);
        if a.scheduled.is_none_or(|s| next < s) {
            a.scheduled = Some(next);
            self.timers.push(Reverse((next, id.0)));
        }
    }

    fn alloc_mut(&mut self, id: AllocId) -> Option<&mut Allocation> {
        self.allocs.get_mut(id.0 as usize)?.as_mut()
    }

    /// Delete an allocation and release its port and socket.
    fn remove(&mut self, id: AllocId, now: Instant) {
        let Some(a) = self.allocs.get_mut(id.0 as usize).and_then(Option::take) else {
            return;
        };
        a.report_end(id, &mut self.out);
        // Decided while the allocation is whole; queued after its other outputs.
        let end = self.end_relay(now, id, &a);
        if matches!(a.state, allocation::State::Active) {
            let lived = now.saturating_duration_since(a.created);
            self.stats.session_seconds.observe(lived.as_secs());
            if self.usage {
                let total = usage::Counts::of(&a);
                let last = total.since(&a.usage_reported);
                // Its grants' removals, queued before this fact, bring the
                // kernel's last counts.
                self.ended.push((id, a.serial));
                self.out.push_back(Output::Usage(Box::new(usage::Usage {
                    serial: a.serial,
                    user: a.username,
                    client: a.client,
                    age: lived,
                    fact: usage::Fact::Deleted { last, total },
                })));
            }
        }
        self.by_client.remove(&a.client);
        self.cfg
            .shared
            .set_live(a.relayed.is_ipv6(), a.port.0, false);
        if let Some((p, r)) = a.extra {
            self.release_port(a.relay, p);
            self.cfg.shared.set_live(r.is_ipv6(), p.0, false);
        }
        self.cfg.shared.release(&a.held);
        if let Some(owner) = a.tcp {
            self.tcp_allocation_ended(id, owner);
        }
        self.free_ids.push(id.0);
        self.out.push_back(end);
    }

    /// A stream connection closed: its allocation goes with it (RFC 8656 §3.1).
    /// Requests it had parked for a user lookup go too, unanswered: their
    /// replay must not allocate for a 5-tuple that is gone.
    pub fn connection_closed(&mut self, now: Instant, client: ClientAddr) {
        drop(self.cluster.unpark(|p| p.client == client));
        if let Some(id) = self.by_client.get(&client).copied() {
            tracing::info!(target: LOG_TARGET, %client, "connection closed; allocation deleted");
            self.stats.allocations_deleted += 1;
            self.remove(id, now);
        }
    }

    /// Give back the memory of the tables once no allocation is left (after
    /// a burst, they would otherwise keep their largest size).
    pub fn compact(&mut self) {
        if self.by_client.is_empty() {
            self.allocs = Vec::new();
            self.free_ids = Vec::new();
            self.by_client = HashMap::new();
            self.timers = BinaryHeap::new();
        }
    }

    /// Delete every allocation (shutdown, or an operator's request).
    pub fn close_all(&mut self, now: Instant) {
        let ids: Vec<AllocId> = self.by_client.values().copied().collect();
        for id in ids {
            self.stats.allocations_deleted += 1;
            self.remove(id, now);
        }
        // Every port back in the pool, as before parking.
        self.unpark_all();
    }

    /// A packet from a client. Returns data to relay to a peer, if any;
    /// answers are queued for [`Engine::poll_output`].
    #[inline]
    pub fn handle_client(
        &mut self,
        now: Instant,
        client: ClientAddr,
        packet: &[u8],
    ) -> Option<ToPeer> {
        match proto::classify(packet) {
            Kind::ChannelData => self.channel_data_from_client(now, client, packet),
            Kind::Stun => self.handle_stun(now, client, packet),
            Kind::Other => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    fn handle_stun(&mut self, now: Instant, client: ClientAddr, packet: &[u8]) -> Option<ToPeer> {
        use stun::message::*;
        let m = match wire::parse(packet) {
            Ok(m) => m,
            Err(why) => {
                self.stats.malformed += 1;
                // A request over the attribute limit gets 400, as any
                // unauthenticated answer; a packet that does not parse is
                // dropped (RFC 8489 §6.3).
                if why.answerable()
                    && let Some(h) = wire::header_only(packet)
                    && h.typ.class == CLASS_REQUEST
                {
                    self.unauthenticated_answer(now, client, &h, Reject::Plain(Code::BadRequest));
                }
                return None;
            }
        };
        let method = m.typ.method;
        if (m.typ.class == CLASS_REQUEST
            || (m.typ.class == CLASS_INDICATION && method == METHOD_SEND))
            && !self.cluster.replaying
            && let Some(counted) = stats::Method::of(method)
        {
            self.stats.request(counted);
        }
        if m.typ.class == CLASS_INDICATION {
            if method == stun::message::METHOD_SEND {
                return self.send_indication(now, client, &m);
            }
            return None;
        }
        if m.typ.class != CLASS_REQUEST {
            // Responses are never sent to a server; drop them (RFC 8489 §6.3).
            self.stats.malformed += 1;
            return None;
        }
        if method == METHOD_BINDING {
            self.binding(now, client, &m);
            return None;
        }
        // A retransmitted request gets the answer it got before.
        if let Some(id) = self.by_client.get(&client)
            && let Some(a) = self.allocs[id.0 as usize].as_ref()
            && a.last_txid == m.transaction_id.0
        {
            if matches!(a.state, allocation::State::Active) {
                let data = a.last_response.clone();
                self.out.push_back(Output::Transmit { to: client, data });
            }
            return None;
        }
        let known = [
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
            METHOD_CONNECT,
            METHOD_CONNECTION_BIND,
        ];
        if !known.contains(&method) || self.cfg.stun_only.contains(&client.via.listener()) {
            self.unauthenticated_answer(now, client, &m, Reject::Plain(Code::BadRequest));
            return None;
        }
        let authed = match self.authenticate(now, client, &m) {
            Ok(a) => a,
            Err(Reject::Parked) => return None,
            Err(reject) => {
                self.unauthenticated_answer(now, client, &m, reject);
                return None;
            }
        };
        // A revoked name (the operator's `ferroturn revoke`) gets 401 for
        // its Allocates and Refreshes, as a wrong credential would (RFC
        // 8489 §9.2.4): its allocations then run out.
        if (method == METHOD_ALLOCATE || method == METHOD_REFRESH)
            && self.cfg.shared.has_revocations()
            && self
                .cfg
                .shared
                .is_revoked(&self.quota_name(&authed.username), self.unix(now))
        {
            tracing::info!(target: LOG_TARGET, %client, user = %authed.username, "request of a revoked name refused");
            self.unauthenticated_answer(now, client, &m, Reject::Challenge(Code::Unauthorized));
            return None;
        }
        let unknown = wire::unknown_required(&m, KNOWN);
        if !unknown.is_empty() {
            let r = Reply::error(&m, Code::UnknownAttribute).with(|r| r.unknown(unknown));
            self.reply(client, r.finish(Some(&authed.signer), false));
            return None;
        }
        if method == METHOD_ALLOCATE {
            self.allocate(now, client, &m, authed);
        } else if method == METHOD_REFRESH
            && !self.by_client.contains_key(&client)
            && wire::attr(&m, mobility::ATTR_MOBILITY_TICKET).is_some()
        {
            // A ticket from a new 5-tuple (RFC 8016 §3.2).
            self.mobility_refresh(now, client, &m, authed);
        } else if method == METHOD_CONNECTION_BIND {
            self.connection_bind(now, client, &m, authed);
        } else {
            // Every other request needs the client's allocation (RFC 8656
            // §7.3, §9.2, §11.2): 437 without one, 441 from another user.
            let Some(id) = self.by_client.get(&client).copied() else {
                self.reply(client, authed.error(&m, Code::AllocationMismatch));
                return None;
            };
            let a = self.allocs[id.0 as usize].as_ref().expect("indexed");
            if a.username != authed.username {
                self.reply(client, authed.error(&m, Code::WrongCredentials));
                return None;
            }
            let tcp = a.tcp.is_some();
            let answer = if method == METHOD_REFRESH {
                self.refresh(now, id, &m, &authed)
            } else if method == METHOD_CONNECT {
                // None: answered when the shell has connected.
                self.connect(now, id, &m, &authed)?
            } else if tcp && method == METHOD_CHANNEL_BIND {
                // No channels on a TCP allocation (RFC 6062 §5.1).
                authed.error(&m, Code::BadRequest)
            } else if method == METHOD_CREATE_PERMISSION {
                self.create_permission(now, id, &m, &authed)
            } else {
                self.channel_bind(now, id, &m, &authed)
            };
            if let Some(a) = self.alloc_mut(id) {
                a.last_txid = m.transaction_id.0;
                a.last_response = answer.data.clone();
            }
            self.reply(client, answer);
        }
        None
    }

    /// Send an answer, and count what it came to.
    fn reply(&mut self, to: ClientAddr, answer: Answer) {
        self.stats.answered(answer.outcome);
        self.out.push_back(Output::Transmit {
            to,
            data: answer.data,
        });
    }

    /// Binding request (RFC 8489 §6.3.1): the client's reflexive address,
    /// and FINGERPRINT if the request had one. No authentication. The
    /// success answer is the STUN service itself, at most about twice the
    /// request's size, and is not rate limited; a 420 is an unauthenticated
    /// answer like any other.
    /// On the sockets of NAT behaviour discovery, RFC 5780 applies
    /// (`discovery.rs`).
    fn binding(&mut self, now: Instant, client: ClientAddr, m: &Message) {
        let discovery = self.discovery_socket(client);
        let mut unknown = wire::unknown_required(m, KNOWN);
        if discovery.is_some() {
            unknown.retain(|&t| !Self::discovery_attr(t));
        }
        if !unknown.is_empty() {
            self.unauthenticated_answer(now, client, m, Reject::Unknown(unknown));
            return;
        }
        if let Some((nat, at)) = discovery {
            self.discovery_binding(now, client, m, nat, at);
            return;
        }
        let resp = Reply::success(m).with(|r| r.xor_address(ATTR_XORMAPPED_ADDRESS, client.remote));
        self.reply(client, resp.finish(None, wire::has_fingerprint(m)));
    }

    /// Answer a request that failed before authentication, unless its
    /// source IP is over its rate (then nothing is sent: no reflection, no
    /// amplification). Nothing is stored for the client either way.
    fn unauthenticated_answer(&mut self, now: Instant, client: ClientAddr, m: &Message, r: Reject) {
        let rate = self.cfg.live.limits.unauthenticated_rate;
        if !self.cfg.shared.limiter.allow(now, client.remote.ip(), rate) {
            self.stats.answers_suppressed += 1;
            return;
        }
        let answer = match r {
            Reject::Plain(code) => Reply::error(m, code),
            Reject::Unknown(types) => {
                Reply::error(m, Code::UnknownAttribute).with(|r| r.unknown(types))
            }
            // Never given here: a parked request has no answer yet.
            Reject::Parked => return,
            Reject::Challenge(code) => {
                let creds = &self.cfg.live.credentials;
                let nonce = creds.nonce(self.unix(now), client.remote);
                Reply::error(m, code).with(|r| {
                    r.text(ATTR_REALM, creds.realm())
                        .text(ATTR_NONCE, &nonce)
                        .bytes(ATTR_PASSWORD_ALGORITHMS, &wire::PASSWORD_ALGORITHMS)
                })
            }
        };
        self.reply(client, answer.finish(None, wire::has_fingerprint(m)));
    }

    /// Long-term credential check (RFC 8489 §9.2.4), in the RFC's order:
    /// no integrity attribute → 401; a signed request larger than
    /// [`wire::MAX_SIGNED_LEN`] → 400 before any HMAC; missing USERNAME/USERHASH, REALM or
    /// NONCE, or a PASSWORD-ALGORITHM that does not match what we offered →
    /// 400; stale or forged nonce → 438; unknown user or wrong key → 401.
    /// Nothing is stored for a request that fails.
    fn authenticate(
        &mut self,
        now: Instant,
        client: ClientAddr,
        m: &Message,
    ) -> Result<Authed, Reject> {
        let unix = self.unix(now);
        let creds = &self.cfg.live.credentials;
        if !wire::has_integrity(m) {
            return Err(Reject::Challenge(Code::Unauthorized));
        }
        if m.raw.len() > wire::MAX_SIGNED_LEN {
            self.stats.malformed += 1;
            return Err(Reject::Plain(Code::BadRequest));
        }
        // USERHASH names a static user by SHA-256(user:realm) (§14.4).
        let user = match (wire::text(m, ATTR_USERNAME), wire::attr(m, ATTR_USER_HASH)) {
            (Some(u), _) => Some(Some(u)),
            (None, Some(h)) => Some(creds.user_by_hash(h).map(str::to_owned)),
            (None, None) => None,
        };
        let (Some(user), Some(_realm), Some(nonce)) =
            (user, wire::text(m, ATTR_REALM), wire::text(m, ATTR_NONCE))
        else {
            self.stats.auth_failed(AuthFailure::MissingAttributes);
            return Err(Reject::Plain(Code::BadRequest));
        };
        // PASSWORD-ALGORITHM must come with the PASSWORD-ALGORITHMS we sent,
        // unchanged, so that nobody can bid a client down (§9.2.4).
        let algorithm = match (
            wire::attr(m, ATTR_PASSWORD_ALGORITHM),
            wire::attr(m, ATTR_PASSWORD_ALGORITHMS),
        ) {
            (None, None) => ALGORITHM_MD5,
            (Some(a), Some(list))
                if list == wire::PASSWORD_ALGORITHMS && a.len() == 4 && a[2..] == [0, 0] =>
            {
                match u16::from_be_bytes([a[0], a[1]]) {
                    alg @ (ALGORITHM_MD5 | ALGORITHM_SHA256) => alg,
                    _ => {
                        self.stats.auth_failed(AuthFailure::BadAlgorithm);
                        return Err(Reject::Plain(Code::BadRequest));
                    }
                }
            }
            _ => {
                self.stats.auth_failed(AuthFailure::BadAlgorithm);
                return Err(Reject::Plain(Code::BadRequest));
            }
        };
        if !creds.nonce_valid(&nonce, unix, client.remote) {
            self.stats.auth_failed(AuthFailure::StaleNonce);
            return Err(Reject::Challenge(Code::StaleNonce));
        }
        let Some(username) = user else {
            self.stats.auth_failed(AuthFailure::UnknownUser);
            return Err(Reject::Challenge(Code::Unauthorized));
        };
        let mut keys = creds.keys(&username, algorithm, unix);
        if self.cluster.on && !creds.is_static(&username) {
            match crate::auth::rest_expiry(&username) {
                Some(exp) if exp > unix => {
                    keys.extend(self.cluster.rest_keys(&username, algorithm, creds.realm()));
                }
                Some(_) => {}
                None => match self.cluster.known(&username, now) {
                    cluster::Known::User(u) => {
                        keys.extend(u.key(algorithm, &username, creds.realm()));
                    }
                    cluster::Known::Absent => {}
                    cluster::Known::Unknown if !self.cluster.replaying => {
                        // Any client can name a user nobody has: each
                        // parked request counts against its source's
                        // unauthenticated answers before it costs a lookup.
                        let rate = self.cfg.live.limits.unauthenticated_rate;
                        let ask = !self.cluster.waiting_for(&username);
                        let parked = if self.cfg.shared.limiter.allow(now, client.remote.ip(), rate)
                        {
                            self.cluster.park(now, client, &m.raw, &username, ask)
                        } else {
                            cluster::Park::Refused
                        };
                        if !matches!(parked, cluster::Park::Refused) {
                            if ask {
                                self.out.push_back(Output::LookupUser { name: username });
                            }
                            // The request that made room is answered now.
                            if let cluster::Park::Displaced(p) = parked {
                                self.replay(now, vec![p]);
                            }
                            return Err(Reject::Parked);
                        }
                    }
                    cluster::Known::Unknown => {}
                },
            }
        }
        let found = keys
            .iter()
            .find_map(|&key| integrity::verify(m, &key).map(|mac| Signer { key, mac }));
        let Some(signer) = found else {
            let why = if !keys.is_empty() {
                AuthFailure::BadIntegrity
            } else if crate::auth::rest_expiry(&username).is_some_and(|e| e <= unix)
                && !creds.is_static(&username)
            {
                AuthFailure::Expired
            } else {
                AuthFailure::UnknownUser
            };
            self.stats.auth_failed(why);
            tracing::debug!(target: LOG_TARGET, %client, reason = why.name(), "authentication failed");
            return Err(Reject::Challenge(Code::Unauthorized));
        };
        // Strict expiry: a REST credential's allocations end when it does.
        let deadline = match crate::auth::rest_expiry(&username) {
            Some(exp) if self.cfg.live.strict_expiry && !creds.is_static(&username) => {
                let left = exp
                    .saturating_add(self.cfg.live.expiry_grace.as_secs())
                    .saturating_sub(unix);
                // An expiry too far to represent is no deadline at all.
                now.checked_add(Duration::from_secs(left))
            }
            _ => None,
        };
        Ok(Authed {
            username,
            signer,
            deadline,
        })
    }

    /// A fresh transaction id for a Data indication.
    fn next_txid(&mut self) -> [u8; 12] {
        next_txid(&mut self.txid_counter)
    }
}

/// The next transaction id of an indication the server makes, from its
/// counter (a field of its own, so that the data path can take one while
/// it holds an allocation).
fn next_txid(counter: &mut u64) -> [u8; 12] {
    *counter = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&counter.to_le_bytes());
    t[8..].copy_from_slice(&((*counter >> 13) as u32).to_le_bytes());
    t
}

#[cfg(test)]
mod tests;
