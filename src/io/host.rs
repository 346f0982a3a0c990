//! The engine host: one engine with the relay sockets of its allocations,
//! whatever transport its clients use.
//!
//! A [`Host`] carries out what its engine asks ([`Output`]): it opens and
//! closes relay sockets (RFC 8656 §7.2, §7.3), sends answers and relayed
//! data, counts what it could not send, reads peer datagrams with
//! `recvmmsg` into one shared [`Batch`] and lets the engine frame them in
//! place (§12.7, §11.3), answers the control plane's [`HostCommand`]s,
//! and compacts its tables once the last allocation of many is gone.
//!
//! What differs between transports is behind [`Transport`]: how a relay
//! socket is watched for readiness (the UDP shard's epoll set, or a tokio
//! task of the stream worker) and how a frame reaches a client (a UDP
//! listener, or a stream connection).

use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use super::command::HostCommand;
use super::mmsg::{Batch, Out, SLOTS};
use super::socket;
use crate::addr::{AllocId, ClientAddr, Via};
use crate::engine::{Engine, Output};
use crate::proto::channel_data::{BUF_LEN, HEADROOM};

/// `recvmmsg` calls per ready socket before the next socket's turn.
const ROUNDS: usize = 4;

/// Free slots below which the queue is sent before the next `recvmmsg`.
const MIN_FREE: usize = 8;

/// Relay table size from which emptying it compacts the tables.
const COMPACT_AFTER: usize = 256;

/// What a transport gives a [`Host`]: readiness for relay sockets, and the
/// way to its clients.
pub trait Transport {
    /// A relay socket as this transport keeps it, watched for readiness;
    /// dropping it closes the socket.
    type Relay: AsFd;

    /// Whether [`Self::release`] gives relay sockets back, so that the
    /// host can park them between allocations (engine `parking`).
    const PARKS: bool = false;

    /// Start watching a relay socket just bound; `None` if it cannot be
    /// watched (the transport says why in its log).
    fn watch(&mut self, new: Bound) -> Option<Self::Relay>;

    /// Stop watching `relay`, whose allocation ended at `now`.
    fn unwatch(&mut self, relay: Self::Relay, now: Instant);

    /// Send `data` (an answer or a Data indication) to `client` now; false
    /// if it was dropped.
    fn to_client(&mut self, client: ClientAddr, data: &[u8]) -> bool;

    /// Send `frame`, a ChannelData message or Data indication in `batch`,
    /// to `client`: at once, or queued in `outs` (sent when the round
    /// ends, with one `sendmmsg` per socket). False if it was dropped.
    fn frame_to_client(
        &mut self,
        outs: &mut Vec<Out>,
        batch: &Batch,
        client: ClientAddr,
        frame: Range<usize>,
    ) -> bool;

    /// `engine`'s queue was carried out (its next deadline may have moved).
    fn flushed(&mut self, _engine: &Engine) {}

    /// The last allocation of many is gone: call [`Host::compact_if_due`]
    /// now or a little later.
    fn compaction_due(&mut self) {}

    /// Shrink the transport's own tables (with [`Host::compact_if_due`]).
    fn compact(&mut self) {}

    /// Stop watching `relay` without closing it: its allocation moves to
    /// another host (RFC 8016), which watches it anew, or it is parked for
    /// the next allocation at its address. `None` where allocations do not
    /// move (stream workers): the socket closes.
    fn release(&mut self, _relay: Self::Relay) -> Option<std::net::UdpSocket> {
        None
    }

    /// Keep `relay` for the next allocation at its address (parked):
    /// [`Self::release`], unless the transport keeps parked sockets watched
    /// under their last allocation's token (then [`Host::drain_parked`]
    /// empties them when they turn readable, and [`Self::rewatch`] gives
    /// them to the next allocation).
    fn park(&mut self, relay: Self::Relay) -> Option<std::net::UdpSocket> {
        self.release(relay)
    }

    /// Watch `new`, a socket parked by allocation `was` ([`Self::park`]).
    fn rewatch(&mut self, new: Bound, _was: AllocId) -> Option<Self::Relay> {
        self.watch(new)
    }

    /// The TLS version and suite of `client`'s connection, as usage events
    /// name them; `None` if it has none.
    fn tls_names(&self, _client: ClientAddr) -> Option<crate::cluster::usage::TlsNames> {
        None
    }
    /// Listen at `bind` for the TCP allocation `id` of `client` (RFC 6062
    /// §5.1); `None` if it cannot (or the transport has no TCP relays).
    fn listen(
        &mut self,
        _id: AllocId,
        _bind: SocketAddr,
        _client: Option<ClientAddr>,
    ) -> Option<Self::Relay> {
        None
    }

    /// Start connecting from `bind` to `peer` for Connect `conn` of
    /// allocation `id` (RFC 6062 §5.2), reporting to the engine when done;
    /// false if it cannot even start.
    fn connect_peer(
        &mut self,
        _id: AllocId,
        _conn: u32,
        _bind: SocketAddr,
        _peer: SocketAddr,
    ) -> bool {
        false
    }

    /// Make `client`'s connection a pipe to peer connection `conn` once
    /// its queue is written (RFC 6062 §5.4), within the ceiling of its
    /// allocation's pipes that `share` holds; false if either is gone.
    fn bind_data(
        &mut self,
        _client: ClientAddr,
        _conn: u32,
        _share: std::sync::Arc<crate::engine::PipeShare>,
    ) -> bool {
        false
    }

    /// Close peer connection `conn` wherever it is (RFC 6062).
    fn close_peer_conn(&mut self, _conn: u32) {}
}

/// A relay socket just bound, for a [`Transport`] to watch.
pub struct Bound {
    /// The allocation it relays for.
    pub id: AllocId,
    /// The address it is bound to.
    pub bind: SocketAddr,
    pub socket: std::net::UdpSocket,
    /// The allocation's client.
    pub client: Option<ClientAddr>,
}

/// The address a relay socket is bound to, as packets arrive at it:
/// `advertised`'s IP where it is bound to every address.
fn bound(relay: &impl AsFd, advertised: SocketAddr) -> SocketAddr {
    match socket2::SockRef::from(relay)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
    {
        Some(a) if !a.ip().is_unspecified() => a,
        Some(a) => SocketAddr::new(advertised.ip(), a.port()),
        None => advertised,
    }
}

/// How a read of one socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// A short batch emptied the socket's queue.
    Short,
    /// The socket had nothing (more) to read.
    Empty,
    /// [`ROUNDS`] full batches: more may be waiting.
    Busy,
}

/// One engine, its relay sockets and its receive batch, served through the
/// transport `T`.
pub struct Host<T: Transport> {
    pub engine: Engine,
    /// Relay sockets by allocation id, IPv4 then IPv6 (a dual allocation
    /// has both): a mirror of the engine's allocation slab.
    relays: Vec<[Option<T::Relay>; 2]>,
    /// Receive buffers for one `recvmmsg`.
    batch: Batch,
    /// Datagrams of the current round that wait in `batch`, sent together
    /// at its end.
    outs: Vec<Out>,
    /// Datagrams and frames we could not send (socket buffer full, or a
    /// client that does not read), dropped.
    send_drops: u64,
    /// Where the engine's cluster lookups go, once the cluster task linked
    /// this host ([`HostCommand::ClusterLink`]).
    lookups: Option<tokio::sync::mpsc::Sender<String>>,
    /// Where the engine's usage facts go, once the cluster task linked
    /// this host ([`HostCommand::UsageLink`]).
    usage: Option<crate::cluster::usage::Link>,
    /// Relay sockets of ended allocations whose ports the engine parked;
    /// at most [`crate::engine::parking::PARK_MAX`].
    parked: Vec<Parked>,
    /// The relay table was emptied after holding many: compact it.
    compact_due: bool,
    /// Every UDP shard's mailbox, by index, once the server gave them
    /// ([`HostCommand::Shards`]): where mobility moves go.
    shards: Option<std::sync::Arc<Vec<super::command::Mailbox>>>,
    /// The kernel fast path's mirror of this engine's channels, with
    /// `[fastpath] mode = "on"`.
    fastpath: Option<super::fastpath::HostPath>,
    pub transport: T,
}

/// A relay socket kept between allocations ([`Transport::park`]).
struct Parked {
    /// The address it is bound to.
    bind: SocketAddr,
    /// The allocation that had it last: the transport may still watch it
    /// under that allocation's token.
    was: AllocId,
    socket: std::net::UdpSocket,
}

impl<T: Transport> Host<T> {
    pub fn new(mut engine: Engine, transport: T) -> Host<T> {
        engine.park_relays(T::PARKS);
        Host {
            engine,
            relays: Vec::new(),
            batch: Batch::new(),
            outs: Vec::with_capacity(SLOTS),
            send_drops: 0,
            lookups: None,
            usage: None,
            parked: Vec::new(),
            compact_due: false,
            shards: None,
            fastpath: None,
            transport,
        }
    }

    /// Mirror this engine's channels into the kernel fast path from now on.
    pub fn set_fastpath(&mut self, path: super::fastpath::HostPath) {
        self.fastpath = Some(path);
    }

    /// When this host next has work of its own: the engine's next
    /// deadline, or the fast path's next count.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let engine = self.engine.poll_timeout();
        match self.fastpath.as_ref().and_then(|f| f.due()) {
            Some(f) => Some(engine.map_or(f, |e| e.min(f))),
            None => engine,
        }
    }

    /// The relay socket of allocation `id` for IPv6 (`v6`) or IPv4 peers.
    #[inline]
    fn relay(&self, id: AllocId, v6: bool) -> Option<&T::Relay> {
        self.relays.get(id.0 as usize)?[v6 as usize].as_ref()
    }

    /// Every relay socket: its allocation, whether it is the IPv6 one, and
    /// its descriptor.
    pub fn relay_fds(&self) -> impl Iterator<Item = (AllocId, bool, RawFd)> + '_ {
        self.relays.iter().enumerate().flat_map(|(id, pair)| {
            pair.iter().enumerate().filter_map(move |(v6, r)| {
                r.as_ref()
                    .map(|r| (AllocId(id as u32), v6 == 1, r.as_fd().as_raw_fd()))
            })
        })
    }

    /// Every parked socket: the allocation that had it last, whether it is
    /// an IPv6 one, and its descriptor.
    pub fn parked_fds(&self) -> impl Iterator<Item = (AllocId, bool, RawFd)> + '_ {
        self.parked
            .iter()
            .map(|p| (p.was, p.bind.is_ipv6(), p.socket.as_raw_fd()))
    }

    /// A watched parked socket that allocation `was` had last may have
    /// turned readable (what its peers still send): read it empty, or
    /// close it if more waits than is worth reading (its port is bound
    /// anew when next taken). Without this a readable parked socket would
    /// wake its thread again at once.
    pub fn drain_parked(&mut self, was: AllocId, v6: bool) {
        if self.parked.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.parked.len() {
            let p = &self.parked[i];
            if p.was == was && p.bind.is_ipv6() == v6 && !socket::drain(&p.socket) {
                // Queued datagrams may name its descriptor, about to close.
                self.send_queued();
                self.parked.swap_remove(i);
                continue;
            }
            i += 1;
        }
    }

    /// The descriptor of `id`'s relay socket for IPv6 (`v6`) or IPv4 peers.
    #[inline]
    pub fn relay_fd(&self, id: AllocId, v6: bool) -> Option<RawFd> {
        self.relay(id, v6).map(|r| r.as_fd().as_raw_fd())
    }

    /// Up to [`ROUNDS`] reads into the batch with `recv` (a `recvmmsg`),
    /// `on` handling each datagram in place.
    #[inline]
    pub fn read(
        &mut self,
        now: Instant,
        mut recv: impl FnMut(&mut Batch) -> std::io::Result<usize>,
        mut on: impl FnMut(&mut Self, Instant, usize),
    ) -> Drained {
        for _ in 0..ROUNDS {
            self.recycle();
            let at = self.batch.used;
            match recv(&mut self.batch) {
                Ok(n) => {
                    for i in at..at + n {
                        on(self, now, i);
                    }
                    if n < SLOTS - at {
                        // Drained; a later datagram raises a new event.
                        return Drained::Short;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drained::Empty,
                // A pending socket error (an ICMP report) is gone once read.
                Err(_) => {}
            }
        }
        Drained::Busy
    }

    /// Read allocation `id`'s relay socket with `recv` (see [`Self::read`]);
    /// each datagram goes to the client framed.
    #[inline]
    pub fn read_relay(
        &mut self,
        now: Instant,
        id: AllocId,
        recv: impl FnMut(&mut Batch) -> std::io::Result<usize>,
    ) -> Drained {
        self.read(now, recv, |h, now, i| h.peer_datagram(now, id, i))
    }

    /// Datagram `i` of the batch: its source and bytes, with the transport
    /// (for one the transport reads before the engine does, as DTLS).
    #[inline]
    pub fn datagram(&mut self, i: usize) -> (SocketAddr, &[u8], &mut T) {
        let at = Batch::base(i) + HEADROOM;
        let d = &self.batch.data[at..at + self.batch.len[i]];
        (self.batch.from[i], d, &mut self.transport)
    }

    /// Datagram `i` of the batch, from a client on `via` (a UDP listener):
    /// the engine reads it in place, and a relayed payload is queued to go
    /// out from the relay socket straight from the batch buffer.
    #[inline]
    pub fn client_datagram(&mut self, now: Instant, via: Via, i: usize) {
        let at = Batch::base(i) + HEADROOM;
        let client = ClientAddr {
            remote: self.batch.from[i],
            via,
        };
        let packet = &self.batch.data[at..at + self.batch.len[i]];
        if let Some(f) = self.engine.handle_client(now, client, packet)
            && let Some(fd) = self.relay_fd(f.relay, f.peer.0.is_ipv6())
        {
            self.outs.push(Out {
                fd,
                start: at + f.start,
                end: at + f.end,
                to: f.peer.0,
            });
        }
        self.flush(now);
    }

    /// A whole message from a stream client: the engine reads it, and a
    /// relayed payload goes out from the relay socket at once.
    #[inline]
    pub fn client_frame(&mut self, now: Instant, client: ClientAddr, packet: &[u8]) {
        if let Some(f) = self.engine.handle_client(now, client, packet)
            && let Some(r) = self.relay(f.relay, f.peer.0.is_ipv6())
            && send_now(r, &packet[f.start..f.end], f.peer.0).is_err()
        {
            self.send_drops += 1;
        }
        self.flush(now);
    }

    /// Datagram `i` of the batch, from a peer on the relay socket of `id`:
    /// framed in place by the engine (RFC 8656 §12.7, §11.3) and handed to
    /// the transport for the client.
    #[inline]
    fn peer_datagram(&mut self, now: Instant, id: AllocId, i: usize) {
        let base = Batch::base(i);
        let end = HEADROOM + self.batch.len[i];
        let from = self.batch.from[i];
        let slot = &mut self.batch.data[base..base + BUF_LEN];
        let Some(tc) = self.engine.handle_peer(now, id, from, slot, HEADROOM, end) else {
            return;
        };
        let frame = base + tc.start..base + tc.end;
        if !self
            .transport
            .frame_to_client(&mut self.outs, &self.batch, tc.client, frame)
        {
            self.send_drops += 1;
        }
    }

    /// Send the queued datagrams: one `sendmmsg` per socket.
    pub fn send_queued(&mut self) {
        if !self.outs.is_empty() {
            self.send_drops += self.batch.send(&mut self.outs) as u64;
            self.outs.clear();
        }
    }

    /// End of a round of reads: send the queue, and free the batch.
    pub fn end_round(&mut self) {
        self.send_queued();
        self.batch.used = 0;
    }

    /// Before a read: free the batch's slots if nothing queued names them,
    /// and send the queue first if too few slots are left.
    #[inline]
    fn recycle(&mut self) {
        if self.outs.is_empty() {
            self.batch.used = 0;
        } else if SLOTS - self.batch.used < MIN_FREE {
            self.end_round();
        }
    }

    /// Run the engine's timers if one is due at `now`.
    pub fn timers(&mut self, now: Instant) {
        if let Some(f) = &mut self.fastpath {
            f.sync(&mut self.engine, now);
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
            self.flush(now);
            self.send_queued();
        }
    }

    /// Carry out what the engine queued.
    pub fn flush(&mut self, now: Instant) {
        while let Some(o) = self.engine.poll_output() {
            match o {
                // An answer leaves at once, not with the round's queue: a
                // client waiting for it sends its next request while the
                // rest of the round is read, where it would otherwise find
                // this thread asleep after the round.
                Output::Transmit { to, data } => {
                    if !self.transport.to_client(to, &data) {
                        self.send_drops += 1;
                    }
                }
                Output::OpenRelay { alloc, bind } => {
                    let ok = self.open_relay(alloc, bind);
                    self.engine.relay_opened(now, alloc, ok);
                }
                Output::OpenTcpRelay { alloc, bind } => {
                    let client = self.engine.allocation(alloc).map(|a| a.client);
                    let relay = self.transport.listen(alloc, bind, client);
                    let ok = relay.is_some();
                    if let Some(r) = relay {
                        self.keep_relay(alloc, bind.is_ipv6(), r);
                    }
                    self.engine.relay_opened(now, alloc, ok);
                }
                Output::ConnectPeer {
                    alloc,
                    conn,
                    bind,
                    peer,
                } => {
                    if !self.transport.connect_peer(alloc, conn, bind, peer) {
                        self.engine.peer_connected(now, conn, false);
                    }
                }
                Output::BindData {
                    client,
                    conn,
                    share,
                } => {
                    if !self.transport.bind_data(client, conn, share) {
                        self.engine.peer_conn_closed(conn);
                    }
                }
                Output::ClosePeerConn { conn } => self.transport.close_peer_conn(conn),
                Output::CloseRelay { alloc } => self.close_relay(now, alloc, None),
                Output::ParkRelay { alloc, bind } => self.close_relay(now, alloc, Some(bind)),
                Output::CloseParked { bind } => {
                    if let Some(i) = self.parked.iter().position(|p| p.bind == bind) {
                        // Queued datagrams may name its descriptor.
                        self.send_queued();
                        self.parked.swap_remove(i);
                    }
                }
                // The kernel fast path mirrors them.
                Output::Grant(g) => {
                    if self.fastpath.is_some() {
                        let v6 = g.relay.is_ipv6();
                        let relay = self
                            .relay(g.alloc, v6)
                            .map_or(g.relay, |r| bound(r, g.relay));
                        if let Some(f) = &mut self.fastpath {
                            f.grant(&mut self.engine, &g, relay);
                        }
                    }
                }
                Output::Handoff(h) => {
                    // A full or gone mailbox drops the move; the client
                    // retransmits its Refresh.
                    let owner = self.shards.as_ref().and_then(|s| s.get(h.owner as usize));
                    if let Some(m) = owner {
                        m.send(HostCommand::Surrender(h));
                    }
                }
                Output::LookupUser { name } => {
                    // A full queue drops the lookup: its requests get 401
                    // when their park time ends, as with Redis away.
                    if let Some(tx) = &self.lookups {
                        let _ = tx.try_send(name);
                    }
                }
                Output::Usage(u) => {
                    if let Some(link) = &self.usage {
                        let tls = self.transport.tls_names(u.client);
                        link.send(u, tls);
                    }
                }
            }
        }
        self.transport.flushed(&self.engine);
    }

    /// Allocation `id`'s relay socket on `bind`, watched: the one parked
    /// there, or a new one.
    fn open_relay(&mut self, id: AllocId, bind: SocketAddr) -> bool {
        let (socket, was) = match self.unpark(bind) {
            Some((s, was)) => (s, Some(was)),
            None => match socket::relay(bind) {
                Ok(s) => (s, None),
                Err(e) => {
                    tracing::debug!(%bind, "relay bind failed: {e}");
                    return false;
                }
            },
        };
        let client = self.engine.allocation(id).map(|a| a.client);
        let new = Bound {
            id,
            bind,
            socket,
            client,
        };
        let watched = match was {
            Some(was) => {
                // Datagrams queued this round may name the parked socket's
                // descriptor (parking does not send the queue): should the
                // transport fail to watch it and close it, the next socket
                // bound could take its number before the queue leaves.
                self.send_queued();
                self.transport.rewatch(new, was)
            }
            None => self.transport.watch(new),
        };
        let Some(relay) = watched else {
            return false;
        };
        self.keep_relay(id, bind.is_ipv6(), relay);
        true
    }

    /// Keep `relay`, watched, as allocation `id`'s IPv6 (`v6`) or IPv4 socket.
    fn keep_relay(&mut self, id: AllocId, v6: bool, relay: T::Relay) {
        let i = id.0 as usize;
        if self.relays.len() <= i {
            self.relays.resize_with(i + 1, Default::default);
        }
        self.relays[i][v6 as usize] = Some(relay);
    }

    /// The socket parked at `bind`, emptied of what peers sent it while it
    /// was parked, with the allocation that had it; `None` if there is
    /// none, or if it could not be emptied (it closes, and the port is
    /// bound anew).
    fn unpark(&mut self, bind: SocketAddr) -> Option<(std::net::UdpSocket, AllocId)> {
        let i = self.parked.iter().position(|p| p.bind == bind)?;
        let Parked { socket, was, .. } = self.parked.swap_remove(i);
        if socket::drain(&socket) {
            return Some((socket, was));
        }
        // Queued datagrams may name its descriptor, about to close.
        self.send_queued();
        None
    }

    /// Close allocation `id`'s relay sockets, or park its socket if the
    /// engine parked its port at `park`.
    fn close_relay(&mut self, now: Instant, id: AllocId, park: Option<SocketAddr>) {
        // Queued datagrams name socket descriptors: send them before one
        // closes and its number is reused. A parked socket stays open, so
        // the round's queue can wait.
        if park.is_none() || !T::PARKS {
            self.send_queued();
        }
        if let Some(pair) = self.relays.get_mut(id.0 as usize) {
            for r in pair.iter_mut().filter_map(Option::take) {
                match park {
                    // A transport that gives nothing back closed it: the
                    // port is bound anew when it is next taken.
                    Some(bind) => {
                        if let Some(socket) = self.transport.park(r) {
                            self.parked.push(Parked {
                                bind,
                                was: id,
                                socket,
                            });
                        }
                    }
                    None => self.transport.unwatch(r, now),
                }
            }
        }
        if self.engine.allocation_count() == 0
            && self.relays.len() >= COMPACT_AFTER
            && !self.compact_due
        {
            self.compact_due = true;
            self.transport.compaction_due();
        }
    }

    /// If the relay table was emptied after holding many and no allocation
    /// came since, shrink the tables and hand freed heap back to the
    /// system, so that memory returns to its idle level.
    pub fn compact_if_due(&mut self) {
        if !std::mem::take(&mut self.compact_due) || self.engine.allocation_count() != 0 {
            return;
        }
        tracing::debug!(
            relays = self.relays.len(),
            "compacting tables after the last allocation"
        );
        self.engine.compact();
        self.relays = Vec::new();
        self.transport.compact();
        self.batch.release();
        trim_heap();
    }

    /// Carry out one command of the control plane.
    pub fn command(&mut self, c: HostCommand, now: Instant) {
        match c {
            HostCommand::Shards(s) => self.shards = Some(s),
            HostCommand::Surrender(h) => self.surrender(now, h),
            HostCommand::Adopt(moved) => self.adopt(now, *moved),
            c => {
                match &c {
                    HostCommand::ClusterLink(tx) => self.lookups = Some(tx.clone()),
                    HostCommand::UsageLink(link) => self.usage = Some(link.clone()),
                    // A reload's ceilings reach the kernel too.
                    HostCommand::Update(u) => {
                        if let Some(f) = &mut self.fastpath {
                            f.set_ceilings(&mut self.engine, &u.limits);
                        }
                    }
                    // A report (metrics, sessions) counts what the kernel
                    // relayed up to now, or up to a read less than
                    // `FORCED_SYNC_FLOOR` old.
                    HostCommand::Report { .. } => {
                        if let Some(f) = &mut self.fastpath {
                            f.sync_now(&mut self.engine, now);
                        }
                    }
                    _ => {}
                }
                c.carry_out(&mut self.engine, now, self.send_drops);
            }
        }
        self.flush(now);
    }

    /// Another shard asks for one of our allocations (RFC 8016): if the
    /// engine gives it up, its relay sockets leave this host's epoll set
    /// and go with it to that shard, still bound and still holding what
    /// peers sent meanwhile.
    fn surrender(&mut self, now: Instant, h: Box<crate::engine::mobility::Handoff>) {
        let Some(moving) = self.engine.surrender(now, h) else {
            return;
        };
        // Queued datagrams name descriptors: send them before any leaves.
        self.send_queued();
        let mut sockets = [None, None];
        if let Some(pair) = self.relays.get_mut(moving.old_id.0 as usize) {
            for (out, r) in sockets.iter_mut().zip(pair.iter_mut()) {
                *out = r.take().and_then(|r| self.transport.release(r));
            }
        }
        let to = moving.to() as usize;
        if let Some(m) = self.shards.as_ref().and_then(|s| s.get(to)) {
            // A shard that is gone is stopping: so is the server.
            m.send(HostCommand::Adopt(Box::new((moving, sockets))));
        }
    }

    /// Take an allocation another shard gave up, with its relay sockets.
    fn adopt(
        &mut self,
        now: Instant,
        (moving, sockets): (
            crate::engine::mobility::Moving,
            [Option<std::net::UdpSocket>; 2],
        ),
    ) {
        let id = self.engine.adopt(now, moving);
        let client = self.engine.allocation(id).map(|a| a.client);
        for socket in sockets.into_iter().flatten() {
            let Ok(bind) = socket.local_addr() else {
                continue;
            };
            let new = Bound {
                id,
                bind,
                socket,
                client,
            };
            if let Some(relay) = self.transport.watch(new) {
                self.keep_relay(id, bind.is_ipv6(), relay);
            }
        }
    }

    /// Close every allocation, on stop.
    pub fn close_all(&mut self, now: Instant) {
        self.engine.close_all(now);
        self.flush(now);
        self.send_queued();
    }
}

/// Send a datagram now, with one non-blocking `sendto`. (tokio's
/// `try_send_to` refuses until its reactor has seen the socket writable,
/// which a fresh relay socket may not have been yet; a datagram send needs
/// no such gate.)
#[inline]
pub fn send_now(sock: &impl AsFd, buf: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    socket2::SockRef::from(sock).send_to(buf, &to.into())
}

/// Hand the heap memory freed since the last call back to the system:
/// glibc keeps it in its arenas otherwise.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}
