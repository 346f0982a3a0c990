//! TCP allocations (RFC 6062): the relayed transport address is a TCP
//! listening socket, and every peer connection (made by a Connect, or
//! accepted from a peer, announced by a ConnectionAttempt) is tied by its
//! CONNECTION-ID to a new client connection, its ConnectionBind, after
//! which the shell pipes bytes between the two connections. The engine
//! decides who may connect where and counts the connections; the shell
//! holds the sockets.
//!
//! A ConnectionBind arrives on a new client connection, which the kernel
//! may hand to any worker: the peer connections are therefore known in one
//! table for the whole server ([`PeerConns`], in
//! [`super::ServerState::peer_conns`]). The pipes of one allocation may
//! therefore run on several workers; what they share, the allocation's
//! bandwidth ceiling and byte counts, is a [`PipeShare`] of atomics that
//! every pipe of the allocation holds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stun::attributes::*;
use stun::message::{CLASS_INDICATION, METHOD_CONNECTION_ATTEMPT, Message, MessageType};

use super::stats::{Code, Direction};
use super::{Answer, Authed, Engine, Output, Reply};
use crate::addr::{AllocId, ClientAddr, PeerAddr, Via};
use crate::proto::stun as wire;

/// The target of this module's log lines (see [`super::LOG_TARGET`]).
const LOG_TARGET: &str = "ferroturn::engine::tcp_relay";

/// TCP's protocol number in REQUESTED-TRANSPORT (RFC 6062 §6.1).
pub const PROTO_TCP: u8 = 6;

/// How long a peer connection waits for its ConnectionBind (RFC 6062 §5.2,
/// §5.3: 30 seconds); after that it is closed.
pub const UNBOUND_TIMEOUT: Duration = Duration::from_secs(30);

/// A peer connection of a TCP allocation, as the whole server knows it.
#[derive(Debug, Clone)]
struct PeerConn {
    /// The allocation's key ([`PeerConns::new_owner`]).
    owner: u64,
    /// Only the allocation's user may bind it (RFC 6062 §5.4).
    username: String,
    peer: SocketAddr,
    state: ConnState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// A Connect's connection attempt is under way.
    Connecting,
    /// Established, waiting for its ConnectionBind until then.
    Unbound(Instant),
    /// Joined to a client data connection.
    Bound,
}

/// Why [`PeerConns::open`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The allocation has a connection to that peer (446, RFC 6062 §5.2).
    Exists,
    /// `limits.connections_per_allocation` are open.
    Quota,
    /// The id is taken: pick another.
    Collision,
}

/// Every peer connection of the server's TCP allocations, by CONNECTION-ID.
#[derive(Debug, Default)]
pub struct PeerConns {
    inner: Mutex<Inner>,
    owners: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    conns: HashMap<u32, PeerConn>,
    /// The connection ids of each allocation: at most
    /// `connections_per_allocation`, so that each step is short however
    /// many the server holds.
    by_owner: HashMap<u64, Vec<u32>>,
    bound: u64,
    /// What the pipes of each allocation share, from its first bind to
    /// its end.
    shares: HashMap<u64, Arc<PipeShare>>,
    /// Bytes relayed by the pipes of allocations that ended, by
    /// [`Direction`].
    retired: [u64; Direction::COUNT],
}

impl Inner {
    fn remove(&mut self, id: u32) {
        let Some(p) = self.conns.remove(&id) else {
            return;
        };
        self.bound -= u64::from(p.state == ConnState::Bound);
        if let Some(ids) = self.by_owner.get_mut(&p.owner) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.by_owner.remove(&p.owner);
            }
        }
    }
}

impl PeerConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("peer conns")
    }

    /// A key for a new TCP allocation, unique in the server.
    pub fn new_owner(&self) -> u64 {
        self.owners.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Count a new connection `id` of `owner` to `peer`; `until` is its
    /// bind deadline if it is established already (else it is
    /// connecting). The owner's unbound connections past their deadline
    /// are forgotten first, so they count no more.
    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        id: u32,
        owner: u64,
        username: &str,
        peer: SocketAddr,
        until: Option<Instant>,
        limit: u32,
        now: Instant,
    ) -> Result<(), OpenError> {
        let mut c = self.lock();
        if c.conns.contains_key(&id) {
            return Err(OpenError::Collision);
        }
        let ids = c.by_owner.get(&owner).cloned().unwrap_or_default();
        let mut n = 0;
        for i in ids {
            let Some(p) = c.conns.get(&i) else { continue };
            if matches!(p.state, ConnState::Unbound(t) if t <= now) {
                c.remove(i);
                continue;
            }
            if p.peer == peer {
                return Err(OpenError::Exists);
            }
            n += 1;
        }
        if n >= limit {
            return Err(OpenError::Quota);
        }
        let state = until.map_or(ConnState::Connecting, ConnState::Unbound);
        let conn = PeerConn {
            owner,
            username: username.to_owned(),
            peer,
            state,
        };
        c.conns.insert(id, conn);
        c.by_owner.entry(owner).or_default().push(id);
        Ok(())
    }

    /// A connecting `id` is established: it waits for its bind until `until`.
    fn established(&self, id: u32, until: Instant) {
        if let Some(p) = self.lock().conns.get_mut(&id) {
            p.state = ConnState::Unbound(until);
        }
    }

    /// Bind `id` for `username` at `now`: its owner and peer, and what
    /// the owner's pipes share (its ceiling set to `bandwidth`), if it
    /// waits for a bind, is that user's and its deadline has not passed.
    fn bind(
        &self,
        id: u32,
        username: &str,
        now: Instant,
        bandwidth: u64,
    ) -> Option<(u64, SocketAddr, Arc<PipeShare>)> {
        let mut c = self.lock();
        let p = c.conns.get_mut(&id)?;
        match p.state {
            ConnState::Unbound(t) if t > now && p.username == username => {
                p.state = ConnState::Bound;
                let (owner, peer) = (p.owner, p.peer);
                c.bound += 1;
                let share = c
                    .shares
                    .entry(owner)
                    .or_insert_with(|| Arc::new(PipeShare::new(now)));
                share.set_bandwidth(bandwidth);
                Some((owner, peer, share.clone()))
            }
            _ => None,
        }
    }

    /// The ceiling of `owner`'s pipes is now `bandwidth` (a reload).
    fn set_bandwidth(&self, owner: u64, bandwidth: u64) {
        if let Some(s) = self.lock().shares.get(&owner) {
            s.set_bandwidth(bandwidth);
        }
    }

    /// Connection `id` is closed (or was never made).
    pub fn close(&self, id: u32) {
        self.lock().remove(id);
    }

    /// Forget every connection of `owner`: its allocation ended.
    fn close_owner(&self, owner: u64) {
        let mut c = self.lock();
        for id in c.by_owner.get(&owner).cloned().unwrap_or_default() {
            c.remove(id);
        }
        // Bytes a pipe still moves before it sees the end go uncounted.
        if let Some(share) = c.shares.remove(&owner) {
            let bytes = share.relayed();
            for (total, b) in c.retired.iter_mut().zip(bytes) {
                *total += b;
            }
        }
    }

    /// Forget the connections of `owner` whose peer `denied` refuses;
    /// their ids.
    fn close_denied(&self, owner: u64, denied: impl Fn(SocketAddr) -> bool) -> Vec<u32> {
        let mut c = self.lock();
        let ids = c.by_owner.get(&owner).cloned().unwrap_or_default();
        let gone: Vec<u32> = ids
            .into_iter()
            .filter(|i| c.conns.get(i).is_some_and(|p| denied(p.peer)))
            .collect();
        for &id in &gone {
            c.remove(id);
        }
        gone
    }

    /// Bytes the pipes of `owner` relayed, by [`Direction`].
    fn traffic(&self, owner: u64) -> [u64; Direction::COUNT] {
        let c = self.lock();
        c.shares.get(&owner).map_or([0; 2], |s| s.relayed())
    }

    /// Bytes every pipe of the server relayed since its start, by
    /// [`Direction`]: those of ended allocations and of living ones.
    pub fn relayed_total(&self) -> [u64; Direction::COUNT] {
        let c = self.lock();
        let mut total = c.retired;
        for share in c.shares.values() {
            for (t, b) in total.iter_mut().zip(share.relayed()) {
                *t += b;
            }
        }
        total
    }

    /// How many peer connections the server holds: (waiting, bound).
    pub fn totals(&self) -> (u64, u64) {
        let c = self.lock();
        (c.conns.len() as u64 - c.bound, c.bound)
    }
}

/// What the pipes of one TCP allocation share, on whichever worker each
/// of its data connections landed: one bandwidth ceiling per direction
/// (`limits.bandwidth`, per allocation and direction as for a UDP
/// allocation; RFC 6062 §5 leaves quotas to the server), and the bytes
/// relayed. Lock-free: a write moves its direction's clock with one
/// atomic read-modify-write, so the pipes of different allocations never
/// meet, and those of one allocation meet on one cache line only.
///
/// The ceiling is a virtual clock per direction: the instant until which
/// the bytes sent so far are paid for at the ceiling. A write moves it on
/// by its share of a second (from now, if the clock lags: idle time is
/// not saved up), and the pipe that wrote waits until the clock is no
/// more than [`PipeShare::BURST`] ahead of now before it reads again.
/// Nothing is dropped: the pipes slow down and TCP's back-pressure holds
/// the senders. Over any window of `w` seconds an allocation's pipes move
/// at most `bandwidth × (w + BURST)` bytes each way, plus one read per
/// pipe.
#[derive(Debug)]
pub struct PipeShare {
    /// Time zero of the clocks.
    epoch: Instant,
    /// Bytes per second each way; 0: no ceiling.
    bandwidth: AtomicU64,
    /// Per [`Direction`]: nanoseconds after `epoch` until which what was
    /// sent is paid for.
    paid: [AtomicU64; Direction::COUNT],
    /// Per [`Direction`]: bytes relayed.
    bytes: [AtomicU64; Direction::COUNT],
}

/// Two handles are equal when they are the same allocation's.
impl PartialEq for PipeShare {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for PipeShare {}

impl PipeShare {
    /// How far ahead of its ceiling a direction may run: one burst.
    pub const BURST: Duration = Duration::from_millis(250);

    pub fn new(now: Instant) -> PipeShare {
        PipeShare {
            epoch: now,
            bandwidth: AtomicU64::new(0),
            paid: Default::default(),
            bytes: Default::default(),
        }
    }

    pub(super) fn set_bandwidth(&self, bandwidth: u64) {
        self.bandwidth.store(bandwidth, Ordering::Relaxed);
    }

    /// `n` bytes went `dir` at `now` on one of the allocation's pipes:
    /// counted, and how long that pipe waits before it reads again (zero:
    /// not at all).
    #[inline]
    pub fn sent(&self, dir: Direction, n: usize, now: Instant) -> Duration {
        let i = dir.index();
        self.bytes[i].fetch_add(n as u64, Ordering::Relaxed);
        let rate = self.bandwidth.load(Ordering::Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let cost = (n as u128 * 1_000_000_000 / u128::from(rate)) as u64;
        let moved = |paid: u64| paid.max(now).saturating_add(cost);
        let before = self.paid[i]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(moved(p)))
            .unwrap_or_else(|p| p);
        let ahead = moved(before) - now;
        Duration::from_nanos(ahead.saturating_sub(Self::BURST.as_nanos() as u64))
    }

    /// Bytes relayed so far, by [`Direction`].
    pub fn relayed(&self) -> [u64; Direction::COUNT] {
        self.bytes.each_ref().map(|b| b.load(Ordering::Relaxed))
    }
}

/// Connects this engine asked the shell to make, by CONNECTION-ID: the
/// allocation and the request to answer when the shell reports back.
#[derive(Debug, Default)]
pub(super) struct Connecting {
    pending: HashMap<u32, (AllocId, Message)>,
}

impl Engine {
    /// A fresh CONNECTION-ID candidate: unpredictable (a keyed MAC of a
    /// counter), so that nobody can guess another's connection to bind it.
    fn next_connection_id(&mut self) -> u32 {
        let t = self.next_token();
        u32::from_be_bytes([t[0], t[1], t[2], t[3]])
    }

    /// The quota-checked registration of a new peer connection of `id`;
    /// its CONNECTION-ID.
    fn open_peer_conn(
        &mut self,
        now: Instant,
        id: AllocId,
        peer: SocketAddr,
        until: Option<Instant>,
    ) -> Result<u32, OpenError> {
        let a = self.allocation(id).expect("checked");
        let (owner, username) = (a.tcp.expect("tcp"), a.username.clone());
        let limit = self.cfg.live.limits.connections_per_allocation;
        for _ in 0..8 {
            let conn = self.next_connection_id();
            match self
                .cfg
                .shared
                .peer_conns
                .open(conn, owner, &username, peer, until, limit, now)
            {
                Err(OpenError::Collision) => continue,
                Err(e) => return Err(e),
                Ok(()) => return Ok(conn),
            }
        }
        Err(OpenError::Collision)
    }

    /// Connect request (RFC 6062 §5.2) on allocation `id`: `None` while the
    /// shell connects ([`Output::ConnectPeer`]; the answer comes with
    /// [`Engine::peer_connected`]), else the error answer.
    pub(super) fn connect(
        &mut self,
        now: Instant,
        id: AllocId,
        m: &Message,
        authed: &Authed,
    ) -> Option<Answer> {
        let err = |code: Code| Some(authed.error(m, code));
        let Some(a) = self.allocation(id) else {
            return err(Code::AllocationMismatch);
        };
        let Some(owner) = a.tcp else {
            return err(Code::BadRequest);
        };
        let peer = match wire::xor_peer_addresses(m).as_deref() {
            Ok([p]) => *p,
            _ => return err(Code::BadRequest),
        };
        if let Err(code) = self.check_peer(id, PeerAddr(peer)) {
            return err(code);
        }
        let conn = match self.open_peer_conn(now, id, peer, None) {
            Ok(c) => c,
            Err(OpenError::Exists) => return err(Code::ConnectionAlreadyExists),
            Err(_) => {
                self.stats.quota_rejections += 1;
                return err(Code::InsufficientCapacity);
            }
        };
        let a = self.allocation(id).expect("checked");
        let bind = SocketAddr::new(self.bind_ip(a.relay, a.relayed.is_ipv6()), a.port.0);
        tracing::debug!(target: LOG_TARGET, client = %a.client, %peer, conn, owner, "connecting to a peer");
        self.tcp.pending.insert(conn, (id, m.clone()));
        self.out.push_back(Output::ConnectPeer {
            alloc: id,
            conn,
            bind,
            peer,
        });
        None
    }

    /// The shell's answer to [`Output::ConnectPeer`] `conn`: whether the
    /// connection is established. The Connect gets its answer, with the
    /// CONNECTION-ID, or 447 (RFC 6062 §5.2). True if the shell must keep
    /// the connection for a ConnectionBind, false if it must close it.
    pub fn peer_connected(&mut self, now: Instant, conn: u32, ok: bool) -> bool {
        let Some((id, request)) = self.tcp.pending.remove(&conn) else {
            return false;
        };
        let peers = &self.cfg.shared.peer_conns;
        let Some(a) = self.allocation(id).filter(|a| a.tcp.is_some()) else {
            peers.close(conn);
            return false;
        };
        let (client, signer) = (a.client, a.signer);
        let answer = if ok {
            peers.established(conn, now + UNBOUND_TIMEOUT);
            Reply::success(&request).with(|r| r.u32(ATTR_CONNECTION_ID, conn))
        } else {
            peers.close(conn);
            Reply::error(&request, Code::ConnectionTimeoutOrFailure)
        };
        let answer = answer.finish(Some(&signer), false);
        if let Some(a) = self.alloc_mut(id) {
            a.last_txid = request.transaction_id.0;
            a.last_response = answer.data.clone();
        }
        self.reply(client, answer);
        ok
    }

    /// A peer connected to the relayed transport address of `id` (RFC 6062
    /// §5.3): its CONNECTION-ID if it is let in (a permission covers it,
    /// the policy allows it, the quota has room), and the client is told
    /// with a ConnectionAttempt indication; `None`: close it.
    pub fn peer_connection(&mut self, now: Instant, id: AllocId, peer: SocketAddr) -> Option<u32> {
        let a = self.allocation(id)?;
        a.tcp?;
        let client = a.client;
        let reaches = super::reaches(&self.cfg);
        let shared = &self.cfg.shared;
        if !a.permits(peer, now, reaches)
            || self
                .cfg
                .live
                .policy
                .check(peer, |r| shared.is_live(r))
                .is_err()
        {
            tracing::debug!(target: LOG_TARGET, %client, %peer, "peer connection without permission refused");
            self.stats.policy_denials += 1;
            return None;
        }
        let conn = match self.open_peer_conn(now, id, peer, Some(now + UNBOUND_TIMEOUT)) {
            Ok(c) => c,
            Err(_) => {
                self.stats.quota_rejections += 1;
                return None;
            }
        };
        let mut m = Message::new();
        m.typ = MessageType::new(METHOD_CONNECTION_ATTEMPT, CLASS_INDICATION);
        m.transaction_id.0 = self.next_txid();
        m.write_header();
        let mut v = [0u8; 20];
        let n = if peer.is_ipv4() { 8 } else { 20 };
        wire::write_xor_address(&mut v[..n], peer, &m.transaction_id.0);
        m.add(ATTR_XOR_PEER_ADDRESS, &v[..n]);
        m.add(ATTR_CONNECTION_ID, &conn.to_be_bytes());
        self.out.push_back(Output::Transmit {
            to: client,
            data: m.raw,
        });
        Some(conn)
    }

    /// ConnectionBind request (RFC 6062 §5.4) on a new client connection:
    /// the CONNECTION-ID of a peer connection of the same user that waits
    /// for its bind. The success answer is followed by
    /// [`Output::BindData`]: from then on the connection carries bytes.
    pub(super) fn connection_bind(
        &mut self,
        now: Instant,
        client: ClientAddr,
        m: &Message,
        authed: Authed,
    ) {
        let bad = |e: &mut Engine| e.reply(client, authed.error(m, Code::BadRequest));
        // Only on a stream, and not on the connection of an allocation.
        if !matches!(client.via, Via::Stream { .. }) || self.by_client.contains_key(&client) {
            return bad(self);
        }
        let conn = match wire::attr(m, ATTR_CONNECTION_ID) {
            Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            _ => return bad(self),
        };
        let bandwidth = self.cfg.live.limits.bandwidth;
        let peers = &self.cfg.shared.peer_conns;
        let Some((owner, peer, share)) = peers.bind(conn, &authed.username, now, bandwidth) else {
            tracing::debug!(target: LOG_TARGET, %client, conn, "ConnectionBind for no connection waiting");
            return bad(self);
        };
        tracing::debug!(target: LOG_TARGET, %client, %peer, conn, owner, "data connection bound");
        self.reply(client, authed.ok(m));
        self.out.push_back(Output::BindData {
            client,
            conn,
            share,
        });
    }

    /// What the pipes of TCP allocation `owner` relayed, by direction.
    pub(super) fn pipe_traffic(&self, owner: u64) -> [u64; Direction::COUNT] {
        self.cfg.shared.peer_conns.traffic(owner)
    }

    /// A peer connection of any TCP allocation ended (its data connection
    /// or its peer closed, or it waited for its bind too long).
    pub fn peer_conn_closed(&self, conn: u32) {
        self.cfg.shared.peer_conns.close(conn);
    }

    /// After a reload: every peer connection whose peer the new policy
    /// denies is closed, as permissions to it are dropped, and the pipes
    /// that stay take the new bandwidth ceiling.
    pub(super) fn close_denied_peer_conns(&mut self) {
        let bandwidth = self.cfg.live.limits.bandwidth;
        let policy = &self.cfg.live.policy;
        let shared = &self.cfg.shared;
        let denied = |peer: SocketAddr| policy.check(peer, |r| shared.is_live(r)).is_err();
        let mut closed = 0;
        for a in self.allocs.iter().flatten() {
            let Some(owner) = a.tcp else { continue };
            shared.peer_conns.set_bandwidth(owner, bandwidth);
            for conn in shared.peer_conns.close_denied(owner, denied) {
                self.out.push_back(Output::ClosePeerConn { conn });
                closed += 1;
            }
        }
        if closed > 0 {
            tracing::info!(target: LOG_TARGET, closed, "peer connections to peers the new policy denies closed");
        }
    }

    /// The peer connections of an ending TCP allocation are forgotten;
    /// the shell closes their sockets with the relay.
    pub(super) fn tcp_allocation_ended(&mut self, id: AllocId, owner: u64) {
        self.cfg.shared.peer_conns.close_owner(owner);
        self.tcp.pending.retain(|_, (a, _)| *a != id);
    }
}
