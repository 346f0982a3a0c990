//! A stream worker: a thread with a current-thread runtime, its TCP and
//! TLS listeners, their connections, and one engine [`Host`] with the
//! relay sockets of their allocations. (UDP clients are the business of
//! the shards in [`crate::io::udp`].)
//!
//! Every task of a worker runs on the same thread, so they share the worker
//! through `Rc<RefCell<..>>` ([`WorkerCell`]); a borrow is never held across
//! an await. Each relay socket has a task that waits for it to be readable;
//! peer datagrams are read into the host's one batch with `recvmmsg` and
//! framed in place onto the client's connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::conn::{Clock, Conn, Owner, Watched};
use super::guard::{Refusal, Slot, StreamGuard};
use super::proxy_header::{self, Balancers, Header, ReadError, Refusal as ProxyRefusal};
use super::tcp_relay::{self, PeerTable};
use super::{tcp, tls};
use crate::addr::{AllocId, ClientAddr, Via};
use crate::engine::{Engine, EngineConfig, PipeShare};
use crate::io::command::HostCommand;
use crate::io::host::{Bound, Drained, Host, Transport};
use crate::io::mmsg::{self, Batch, Out};

/// The log target of this file's lines (where they stood before the
/// stream modules were split).
const LOG: &str = "ferroturn::io::worker";

/// The sockets a worker is given at start, with the index of their
/// `[[listen]]` entry, and the stream guard all workers share.
#[derive(Default)]
pub struct Sockets {
    pub tcp: Vec<(u16, std::net::TcpListener)>,
    /// TLS listeners, with the acceptor their entry shares across workers.
    pub tls: Vec<(u16, std::net::TcpListener, tls::Acceptor)>,
    /// The stream limits and per-IP counts every worker shares.
    pub guard: Arc<StreamGuard>,
    /// The load balancers of each PROXY protocol listener, by `[[listen]]`
    /// index.
    pub proxy: HashMap<u16, Arc<Balancers>>,
    /// Peer connections of TCP allocations waiting for their bind, which
    /// may come to any worker (RFC 6062).
    pub peers: Arc<PeerTable>,
}

/// A stream worker's way to its clients and its readiness: its
/// connections, a tokio task per relay socket, and the engine's timer.
pub struct Streams {
    conns: HashMap<u32, Rc<Conn>>,
    next_conn: u32,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    timer: Rc<Notify>,
    /// Stream limits and per-IP counts, shared by every worker.
    guard: Arc<StreamGuard>,
    /// Unbound peer connections of every worker (RFC 6062).
    peers: Arc<PeerTable>,
    /// What tells each TCP allocation's connections that it ended, by
    /// allocation id.
    closers: HashMap<u32, watch::Receiver<()>>,
}

/// A relay socket of a stream worker, and the task that reads it (or,
/// for a TCP allocation, accepts on it).
pub struct StreamRelay {
    socket: RelaySocket,
    task: JoinHandle<()>,
    /// The connection of the allocation's client, told when it ends.
    conn: Option<u32>,
}

enum RelaySocket {
    Udp(Rc<UdpSocket>),
    /// A TCP allocation's listener (RFC 6062), its allocation id, and what
    /// closes its peer connections when dropped.
    Tcp {
        listener: Rc<TcpListener>,
        alloc: u32,
        _closes: watch::Sender<()>,
    },
}

impl AsFd for StreamRelay {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            RelaySocket::Udp(s) => s.as_fd(),
            RelaySocket::Tcp { listener, .. } => listener.as_fd(),
        }
    }
}

impl Transport for Streams {
    type Relay = StreamRelay;

    fn watch(&mut self, new: Bound) -> Option<StreamRelay> {
        // The client's connection, which holds the allocation from now on;
        // one that closed meanwhile gets no relay (its allocation fails).
        let conn = match new.client.map(|c| c.via) {
            Some(Via::Stream { conn, .. }) => Some(conn),
            _ => None,
        };
        if conn.is_some_and(|c| !self.conns.contains_key(&c)) {
            tracing::debug!(bind = %new.bind, "relay for a closed connection refused");
            return None;
        }
        let sock = match UdpSocket::from_std(new.socket) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                tracing::debug!(bind = %new.bind, "relay bind failed: {e}");
                return None;
            }
        };
        let task = tokio::task::spawn_local(relay_loop(me()?, new.id, sock.clone()));
        if let Some(c) = conn.and_then(|c| self.conns.get(&c)) {
            c.clock.allocated();
        }
        Some(StreamRelay {
            socket: RelaySocket::Udp(sock),
            task,
            conn,
        })
    }

    fn listen(
        &mut self,
        id: AllocId,
        bind: SocketAddr,
        client: Option<ClientAddr>,
    ) -> Option<StreamRelay> {
        let conn = match client.map(|c| c.via) {
            Some(Via::Stream { conn, .. }) if self.conns.contains_key(&conn) => conn,
            _ => return None,
        };
        let listener = match tcp_relay::listen(bind) {
            Ok(l) => Rc::new(l),
            Err(e) => {
                tracing::debug!(%bind, "tcp relay listen failed: {e}");
                return None;
            }
        };
        let (tx, rx) = watch::channel(());
        let task = tokio::task::spawn_local(tcp_relay::accept_loop(
            me()?,
            id,
            listener.clone(),
            self.peers.clone(),
            rx.clone(),
        ));
        self.closers.insert(id.0, rx);
        if let Some(c) = self.conns.get(&conn) {
            c.clock.allocated();
        }
        Some(StreamRelay {
            socket: RelaySocket::Tcp {
                listener,
                alloc: id.0,
                _closes: tx,
            },
            task,
            conn: Some(conn),
        })
    }

    fn connect_peer(&mut self, id: AllocId, conn: u32, bind: SocketAddr, peer: SocketAddr) -> bool {
        let (Some(closer), Some(w)) = (self.closers.get(&id.0), me()) else {
            return false;
        };
        let task = tcp_relay::connect(w, conn, bind, peer, self.peers.clone(), closer.clone());
        tokio::task::spawn_local(task);
        true
    }

    fn bind_data(&mut self, client: ClientAddr, conn: u32, share: Arc<PipeShare>) -> bool {
        let Via::Stream { conn: id, .. } = client.via else {
            return false;
        };
        let (Some(c), Some(mut peer)) = (self.conns.get(&id), self.peers.take(conn)) else {
            return false;
        };
        peer.share = Some(share);
        peer.table = Some(self.peers.clone());
        *c.pipe.borrow_mut() = Some(peer);
        true
    }

    fn close_peer_conn(&mut self, conn: u32) {
        self.peers.kill(conn);
    }

    fn unwatch(&mut self, relay: StreamRelay, now: Instant) {
        if let RelaySocket::Tcp { alloc, .. } = &relay.socket {
            self.closers.remove(alloc);
        }
        relay.task.abort();
        // Its connection, if still open, must allocate again within the
        // allocation timeout.
        if let Some(c) = relay.conn.and_then(|c| self.conns.get(&c)) {
            c.clock.deallocated(now);
        }
    }

    fn tls_names(&self, client: ClientAddr) -> Option<crate::cluster::usage::TlsNames> {
        match client.via {
            Via::Stream { conn, .. } => self.conns.get(&conn)?.tls_names.get(),
            Via::Udp(_) | Via::Dtls(_) => None,
        }
    }

    fn to_client(&mut self, client: ClientAddr, data: &[u8]) -> bool {
        match client.via {
            Via::Stream { conn, .. } => self.conns.get(&conn).is_some_and(|c| c.send(data)),
            // A stream worker has no UDP or DTLS clients.
            Via::Udp(_) | Via::Dtls(_) => false,
        }
    }

    /// Sent on the client's connection at once.
    #[inline]
    fn frame_to_client(
        &mut self,
        _outs: &mut Vec<Out>,
        batch: &Batch,
        client: ClientAddr,
        frame: Range<usize>,
    ) -> bool {
        self.to_client(client, &batch.data[frame])
    }

    /// Re-arm the timer if the engine's next deadline moved earlier.
    fn flushed(&mut self, engine: &Engine) {
        let next = engine.poll_timeout();
        if next.is_some() && (self.armed.is_none() || next < self.armed) {
            self.timer.notify_one();
        }
    }

    /// Aborted relay tasks free their sockets only when the runtime drops
    /// them: compact a little later.
    fn compaction_due(&mut self) {
        if let Some(me) = me() {
            tokio::task::spawn_local(async move {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                me.borrow_mut().compact_if_due();
            });
        }
    }

    fn compact(&mut self) {
        self.conns.shrink_to_fit();
    }
}

/// A stream worker, shared by its tasks.
pub(super) type WorkerCell = Rc<RefCell<Host<Streams>>>;

impl tcp_relay::PeerOwner for Host<Streams> {
    fn peer_connection(
        &mut self,
        now: Instant,
        id: AllocId,
        peer: SocketAddr,
        park: &mut dyn FnMut(u32),
    ) -> Option<u32> {
        let conn = self.engine.peer_connection(now, id, peer);
        if let Some(c) = conn {
            park(c);
        }
        // The ConnectionAttempt goes out now.
        self.flush(now);
        conn
    }

    fn peer_connected(&mut self, now: Instant, conn: u32, ok: bool) -> bool {
        let keep = self.engine.peer_connected(now, conn, ok);
        self.flush(now);
        keep
    }

    fn peer_conn_closed(&self, conn: u32) {
        self.engine.peer_conn_closed(conn);
    }
}

impl Owner for Host<Streams> {
    fn connections(&self) -> usize {
        self.transport.conns.len()
    }

    fn admit(&mut self, conn: Rc<Conn>) -> u32 {
        let s = &mut self.transport;
        s.next_conn = s.next_conn.wrapping_add(1);
        s.conns.insert(s.next_conn, conn);
        s.next_conn
    }

    fn guard(&self) -> Arc<StreamGuard> {
        self.transport.guard.clone()
    }

    fn message(&mut self, now: Instant, client: ClientAddr, message: &[u8]) {
        self.client_frame(now, client, message);
    }

    fn holds_allocation(&self, client: ClientAddr) -> bool {
        self.engine.allocation_of(client).is_some()
    }

    fn peer_conn_closed(&self, conn: u32) {
        tcp_relay::PeerOwner::peer_conn_closed(self, conn);
    }

    fn closed(&mut self, now: Instant, id: u32, client: ClientAddr) {
        self.transport.conns.remove(&id);
        self.engine.connection_closed(now, client);
        self.flush(now);
    }
}

/// Thread body of worker `index`.
pub fn run(
    index: usize,
    cfg: EngineConfig,
    sockets: Sockets,
    stop: watch::Receiver<bool>,
    commands: mpsc::UnboundedReceiver<HostCommand>,
    now: Instant,
    unix_now: u64,
) {
    // I/O and timers only: signals are the main thread's business.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: LOG, worker = index, "cannot start runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let timer = Rc::new(Notify::new());
        let streams = Streams {
            conns: HashMap::new(),
            next_conn: 0,
            armed: None,
            timer: timer.clone(),
            guard: sockets.guard.clone(),
            peers: sockets.peers.clone(),
            closers: HashMap::new(),
        };
        let w: WorkerCell = Rc::new(RefCell::new(Host::new(
            Engine::new(cfg, now, unix_now),
            streams,
        )));
        SELF.with(|s| *s.borrow_mut() = Some(w.clone()));
        let listeners = (sockets.tcp.into_iter().map(|(i, l)| (i, l, None)))
            .chain(sockets.tls.into_iter().map(|(i, l, a)| (i, l, Some(a))));
        for (i, l, tls) in listeners {
            let proxy = sockets.proxy.get(&i).cloned();
            let entry_is_tls = tls.is_some();
            match TcpListener::from_std(l) {
                Ok(l) => {
                    let entry = Entry {
                        index: i,
                        tls,
                        proxy,
                        handshakes: Cell::new(0),
                        headers: Cell::new(0),
                    };
                    tokio::task::spawn_local(accept_loop(w.clone(), l, Rc::new(entry)));
                }
                Err(e) => {
                    let what = if entry_is_tls { "tls" } else { "tcp" };
                    return tracing::error!(target: LOG, worker = index, "{what} listener: {e}");
                }
            }
        }
        tokio::task::spawn_local(timer_loop(w.clone(), timer));
        tokio::task::spawn_local(command_loop(w.clone(), commands));
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
        w.borrow_mut().close_all(Instant::now());
        SELF.with(|s| *s.borrow_mut() = None);
    });
}

thread_local! {
    static SELF: RefCell<Option<WorkerCell>> = const { RefCell::new(None) };
}

/// A handle to this thread's worker for new tasks. Workers are always
/// reached through their `Rc`, kept in a thread-local at start.
fn me() -> Option<WorkerCell> {
    SELF.with(|s| s.borrow().clone())
}

/// Read the relay socket of allocation `id` whenever it is readable, into
/// the host's batch, each datagram handled while it is still there.
async fn relay_loop(w: WorkerCell, id: AllocId, sock: Rc<UdpSocket>) {
    let fd = sock.as_raw_fd();
    let readable = tokio::io::Interest::READABLE;
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let drained = w.borrow_mut().read_relay(Instant::now(), id, |b| {
            sock.try_io(readable, || mmsg::recv(fd, b))
        });
        match drained {
            // A short batch emptied the queue: clear the readiness without
            // another (empty) recvmmsg. A datagram that came meanwhile
            // raises a new event.
            Drained::Short => {
                let _ = sock.try_io(readable, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
            }
            Drained::Empty => {}
            // Let the worker's other sockets have a turn.
            Drained::Busy => tokio::task::yield_now().await,
        }
    }
}

/// TLS handshakes one worker runs at once; connections beyond are closed.
const MAX_HANDSHAKES: usize = 1024;

/// PROXY protocol headers one worker waits for at once; connections
/// beyond are closed.
const MAX_HEADERS: usize = 1024;

/// A listener's own settings: its `[[listen]]` index, its TLS acceptor
/// if it is a TLS listener, and its load balancers if it takes the PROXY
/// protocol; and what its connections run now.
struct Entry {
    index: u16,
    tls: Option<tls::Acceptor>,
    proxy: Option<Arc<Balancers>>,
    /// TLS handshakes in progress.
    handshakes: Cell<usize>,
    /// PROXY protocol headers awaited.
    headers: Cell<usize>,
}

/// Accept TCP clients on one listener. A source IP over its connection
/// cap is closed at once. On a PROXY protocol listener, only the entry's
/// load balancers may connect, each connection is exempt from the per-IP
/// caps until its header names the client, and is then counted under the
/// client's address (see [`proxy_header`]); the header's wait runs in a
/// task of its own, so that a slow balancer never holds up the worker.
async fn accept_loop(w: WorkerCell, listener: TcpListener, entry: Rc<Entry>) {
    let guard = w.borrow().transport.guard.clone();
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(target: LOG, "accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let at = Instant::now();
        let Some(balancers) = &entry.proxy else {
            let Some(slot) = guard.connection(remote.ip()) else {
                tracing::debug!(%remote, "too many connections from this address; closing");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = Accepted {
                stream,
                client: remote,
                at,
                slot,
                balancer: false,
            };
            serve(&w, &entry, client);
            continue;
        };
        if !balancers.trusts(remote.ip()) {
            guard.refuse_proxy(ProxyRefusal::Source);
            tracing::debug!(%remote, "not a load balancer of this listener (proxy_from); closing");
            continue;
        }
        if entry.headers.get() >= MAX_HEADERS {
            tracing::debug!(%remote, "too many PROXY protocol headers awaited; closing");
            continue;
        }
        let Some(slot) = guard.balancer_connection() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let from_balancer = Accepted {
            stream,
            client: remote,
            at,
            slot,
            balancer: true,
        };
        // Given back by the task when the wait ends.
        entry.headers.set(entry.headers.get() + 1);
        tokio::task::spawn_local(behind_header(w.clone(), entry.clone(), from_balancer));
    }
}

/// Wait (until [`proxy_header::HEADER_TIMEOUT`] after the accept) for the
/// PROXY protocol header on a connection from a load balancer, then serve
/// it as the client's the header names, under that client's per-IP cap,
/// or as the balancer's own. A connection without a whole, well-formed
/// header is closed and counted. It holds one of `entry.headers`, taken
/// by the accept.
async fn behind_header(w: WorkerCell, entry: Rc<Entry>, mut a: Accepted) {
    let guard = w.borrow().transport.guard.clone();
    let balancer = a.client;
    let deadline = tokio::time::Instant::from_std(a.at + proxy_header::HEADER_TIMEOUT);
    let header = tokio::time::timeout_at(deadline, proxy_header::read(&mut a.stream)).await;
    entry.headers.set(entry.headers.get() - 1);
    let refusal = match header {
        // The balancer naming itself (HAProxy's v1 health checks carry
        // their own addresses) is its own connection too.
        Ok(Ok(Header::Client(client)))
            if client.ip().to_canonical() != balancer.ip().to_canonical() =>
        {
            // From now on the client's connection, under its cap.
            drop(a.slot);
            let Some(slot) = guard.connection(client.ip()) else {
                tracing::debug!(%client, %balancer, "too many connections from this address; closing");
                return;
            };
            tracing::debug!(%client, %balancer, "PROXY protocol header");
            let relayed = Accepted {
                client,
                slot,
                balancer: false,
                ..a
            };
            return serve(&w, &entry, relayed);
        }
        Ok(Ok(_)) => {
            // A health check, or a connection the balancer makes for
            // itself: served as its own, exempt from the per-IP caps.
            tracing::debug!(%balancer, "PROXY protocol header names no client (LOCAL, UNKNOWN or itself): the balancer's own connection");
            return serve(&w, &entry, a);
        }
        Ok(Err(ReadError::Malformed(why))) => {
            tracing::debug!(%balancer, "malformed PROXY protocol header ({why}); closing");
            ProxyRefusal::Malformed
        }
        Ok(Err(ReadError::Closed(e, 0))) => {
            // A bare TCP health check or a probe: nothing to count.
            tracing::debug!(%balancer, "closed before sending anything: {e}");
            return;
        }
        Ok(Err(ReadError::Closed(e, _))) => {
            tracing::debug!(%balancer, "closed before its PROXY protocol header was whole: {e}");
            ProxyRefusal::Malformed
        }
        Err(_) => {
            tracing::debug!(%balancer, "no whole PROXY protocol header in time; closing");
            ProxyRefusal::Timeout
        }
    };
    guard.refuse_proxy(refusal);
}

/// A connection accepted for `client`, holding its place in the counts.
struct Accepted {
    stream: TcpStream,
    client: SocketAddr,
    /// When it was accepted.
    at: Instant,
    slot: Slot,
    /// A load balancer's own connection (exempt from the per-IP caps).
    balancer: bool,
}

/// Serve an accepted connection: at once on a TCP listener; on a TLS one,
/// in its own task through a TLS handshake first (bounded by
/// `stream_message_timeout`), refused if its source runs its handshake cap
/// already, before any TLS work.
fn serve(w: &WorkerCell, entry: &Rc<Entry>, a: Accepted) {
    let Some(acceptor) = &entry.tls else {
        tcp::spawn(w.clone(), entry.index, a.stream, a.client, a.at, a.slot);
        return;
    };
    let remote = a.client;
    if entry.handshakes.get() >= MAX_HANDSHAKES {
        tracing::debug!(%remote, "too many TLS handshakes in progress; closing");
        return;
    }
    let guard = w.borrow().transport.guard.clone();
    let shaking = match a.balancer {
        false => match guard.handshake(remote.ip()) {
            Some(s) => Some(s),
            None => {
                tracing::debug!(%remote, "too many TLS handshakes from this address; closing");
                return;
            }
        },
        true => None,
    };
    entry.handshakes.set(entry.handshakes.get() + 1);
    let (w, acceptor, entry) = (w.clone(), acceptor.clone(), entry.clone());
    tokio::task::spawn_local(async move {
        let clock = Clock::new(a.at);
        let socket = Watched::new(a.stream, clock.clone());
        let r = acceptor.accept(socket, guard.message_timeout()).await;
        entry.handshakes.set(entry.handshakes.get() - 1);
        drop(shaking);
        match r {
            Ok(s) => tcp::spawn_tls(w, entry.index, s, remote, clock, a.slot),
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    guard.refuse(Refusal::MessageTimeout);
                }
                tracing::debug!(%remote, "TLS handshake failed: {e}");
            }
        }
    });
}

/// Carry out the control plane's commands (reports, closes, reloads, drain).
async fn command_loop(w: WorkerCell, mut commands: mpsc::UnboundedReceiver<HostCommand>) {
    while let Some(c) = commands.recv().await {
        let now = Instant::now();
        w.borrow_mut().command(c, now);
    }
}

/// Run the engine's timers: sleep until its next deadline, or until a new
/// earlier one is armed.
async fn timer_loop(w: WorkerCell, notify: Rc<Notify>) {
    loop {
        let next = {
            let mut wb = w.borrow_mut();
            let n = wb.engine.poll_timeout();
            wb.transport.armed = n;
            n
        };
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {
                        let now = Instant::now();
                        w.borrow_mut().timers(now);
                    }
                    _ = notify.notified() => {}
                }
            }
            None => notify.notified().await,
        }
    }
}
