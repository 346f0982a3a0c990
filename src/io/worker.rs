//! A stream worker: a thread with a current-thread runtime, its TCP and
//! TLS listeners, their connections, the relay sockets of their
//! allocations, and an engine of its own. (UDP clients are the business of
//! the shards in [`super::udp`].)
//!
//! Every task of a worker runs on the same thread, so they share the worker
//! state through `Rc<RefCell<..>>`; a borrow is never held across an await.
//! The receive buffers are shared too: one [`Batch`] per worker, not one
//! per socket; peer datagrams are read into it with `recvmmsg` and framed
//! in place onto the client's connection.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::Command;
use super::mmsg::{self, Batch, SLOTS};
use super::socket;
use super::stream_guard::{Refusal, StreamGuard};
use super::tcp::{self, Clock, Conn};
use crate::addr::{AllocId, ClientAddr, Via};
use crate::engine::{Engine, EngineConfig, Output, ToPeer};
use std::os::fd::AsRawFd;

/// The sockets a worker is given at start, with the index of their
/// `[[listen]]` entry, and the stream guard all workers share.
#[derive(Default)]
pub struct Sockets {
    pub tcp: Vec<(u16, std::net::TcpListener)>,
    /// TLS listeners, with the acceptor their entry shares across workers.
    pub tls: Vec<(u16, std::net::TcpListener, super::tls::Acceptor)>,
    /// The stream limits and per-IP counts every worker shares.
    pub guard: std::sync::Arc<StreamGuard>,
}

/// Relay table size from which emptying it triggers [`Worker::compact`].
const COMPACT_AFTER: usize = 256;

/// `recvmmsg` calls per readiness wake-up before yielding to other sockets.
const ROUNDS: usize = 4;

struct Relay {
    socket: Rc<UdpSocket>,
    task: JoinHandle<()>,
    /// The connection of the allocation's client, told when it ends.
    conn: Option<u32>,
}

pub(super) struct Worker {
    pub(super) engine: Engine,
    /// Relay sockets by allocation id, IPv4 then IPv6 (a dual allocation
    /// has both).
    relays: Vec<[Option<Relay>; 2]>,
    pub(super) conns: std::collections::HashMap<u32, Rc<Conn>>,
    next_conn: u32,
    /// Receive buffers for one `recvmmsg`.
    batch: Batch,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    timer: Rc<Notify>,
    /// Packets we could not send (socket buffer full), dropped.
    pub(super) send_drops: u64,
    /// A [`Worker::compact`] is scheduled.
    compacting: bool,
    /// Stream limits and per-IP counts, shared by every worker.
    pub(super) guard: std::sync::Arc<StreamGuard>,
}

pub(super) type Shared = Rc<RefCell<Worker>>;

/// Thread body of worker `index`.
pub fn run(
    index: usize,
    cfg: EngineConfig,
    sockets: Sockets,
    stop: watch::Receiver<bool>,
    commands: mpsc::UnboundedReceiver<Command>,
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
            tracing::error!(worker = index, "cannot start runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let timer = Rc::new(Notify::new());
        let w: Shared = Rc::new(RefCell::new(Worker {
            engine: Engine::new(cfg, now, unix_now),
            relays: Vec::new(),
            conns: Default::default(),
            next_conn: 0,
            batch: Batch::new(),
            armed: None,
            timer: timer.clone(),
            send_drops: 0,
            compacting: false,
            guard: sockets.guard.clone(),
        }));
        SELF.with(|s| *s.borrow_mut() = Some(w.clone()));
        for (i, l) in sockets.tcp {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::task::spawn_local(accept_loop(w.clone(), i, l, None));
                }
                Err(e) => return tracing::error!(worker = index, "tcp listener: {e}"),
            }
        }
        for (i, l, acceptor) in sockets.tls {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::task::spawn_local(accept_loop(w.clone(), i, l, Some(acceptor)));
                }
                Err(e) => return tracing::error!(worker = index, "tls listener: {e}"),
            }
        }
        tokio::task::spawn_local(timer_loop(w.clone(), timer));
        tokio::task::spawn_local(command_loop(w.clone(), commands));
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
        let mut wb = w.borrow_mut();
        let now = Instant::now();
        wb.engine.close_all(now);
        wb.flush(now);
        drop(wb);
        SELF.with(|s| *s.borrow_mut() = None);
    });
}

impl Worker {
    /// Hand a client packet to the engine; relay what it returns.
    pub(super) fn client_packet(&mut self, now: Instant, client: ClientAddr, packet: &[u8]) {
        if let Some(f) = self.engine.handle_client(now, client, packet) {
            self.send_to_peer(f, packet);
        }
        self.flush(now);
    }

    /// The relay socket of allocation `id` that reaches `peer`'s family.
    #[inline]
    fn relay(&self, id: AllocId, peer: SocketAddr) -> Option<&Relay> {
        self.relays.get(id.0 as usize)?[peer.is_ipv6() as usize].as_ref()
    }

    /// Datagram `i` of the batch, from a peer on the relay socket of `id`:
    /// framed in place by the engine and sent on the client's connection.
    #[inline]
    fn peer_slot(&mut self, now: Instant, id: AllocId, i: usize) {
        let Some((client, frame)) =
            super::frame_for_client(&mut self.engine, &mut self.batch, now, id, i)
        else {
            return;
        };
        if !self.transmit(client, &self.batch.data[frame]) {
            self.send_drops += 1;
        }
    }

    /// The last allocation of many is gone: shrink the tables and hand freed
    /// heap back to the system, so that memory returns to its idle level.
    fn compact(&mut self) {
        tracing::debug!(
            relays = self.relays.len(),
            "compacting tables after the last allocation"
        );
        self.engine.compact();
        self.relays = Vec::new();
        self.conns.shrink_to_fit();
        self.batch.release();
        super::trim_heap();
    }

    #[inline]
    fn send_to_peer(&mut self, f: ToPeer, packet: &[u8]) {
        if let Some(r) = self.relay(f.relay, f.peer.0) {
            if send_now(&r.socket, &packet[f.start..f.end], f.peer.0).is_err() {
                self.send_drops += 1;
            }
        }
    }

    /// Send a frame to a client on its connection; false if it was dropped.
    #[inline]
    fn transmit(&self, client: ClientAddr, data: &[u8]) -> bool {
        match client.via {
            Via::Stream { conn, .. } => self.conns.get(&conn).is_some_and(|c| c.send(data)),
            // A stream worker has no UDP clients.
            Via::Udp(_) => false,
        }
    }

    fn send_to_client(&mut self, client: ClientAddr, data: &[u8]) {
        if !self.transmit(client, data) {
            self.send_drops += 1;
        }
    }

    /// Carry out what the engine queued, and re-arm the timer if its next
    /// deadline moved earlier.
    pub(super) fn flush(&mut self, now: Instant) {
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Transmit { to, data } => self.send_to_client(to, &data),
                Output::OpenRelay { alloc, bind } => {
                    let ok = self.open_relay(alloc, bind);
                    self.engine.relay_opened(now, alloc, ok);
                }
                Output::CloseRelay { alloc } => {
                    let mut conn = None;
                    if let Some(slots) = self.relays.get_mut(alloc.0 as usize) {
                        for r in slots.iter_mut().filter_map(Option::take) {
                            r.task.abort();
                            conn = conn.or(r.conn);
                        }
                    }
                    // Its connection, if still open, must allocate again
                    // within the allocation timeout.
                    if let Some(c) = conn.and_then(|c| self.conns.get(&c)) {
                        c.clock.deallocated(now);
                    }
                    if self.engine.allocation_count() == 0
                        && self.relays.len() >= COMPACT_AFTER
                        && !self.compacting
                    {
                        // Aborted relay tasks free their sockets only when
                        // the runtime drops them: compact a little later.
                        self.compacting = true;
                        if let Some(me) = self.me() {
                            tokio::task::spawn_local(async move {
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                                let mut wb = me.borrow_mut();
                                wb.compacting = false;
                                if wb.engine.allocation_count() == 0 {
                                    wb.compact();
                                }
                            });
                        }
                    }
                }
                // For a kernel fast path to mirror; nothing here uses them yet.
                Output::Grant(_) => {}
            }
        }
        let next = self.engine.poll_timeout();
        if next.is_some() && (self.armed.is_none() || next < self.armed) {
            self.timer.notify_one();
        }
    }

    fn open_relay(&mut self, id: AllocId, bind: SocketAddr) -> bool {
        let sock = match socket::relay(bind).and_then(UdpSocket::from_std) {
            Ok(s) => Rc::new(s),
            Err(e) => {
                tracing::debug!(%bind, "relay bind failed: {e}");
                return false;
            }
        };
        let Some(me) = self.me() else { return false };
        let task = tokio::task::spawn_local(relay_loop(me, id, sock.clone()));
        let i = id.0 as usize;
        if self.relays.len() <= i {
            self.relays.resize_with(i + 1, Default::default);
        }
        // The client's connection holds an allocation from now on.
        let conn = match self.engine.allocation(id).map(|a| a.client.via) {
            Some(Via::Stream { conn, .. }) => Some(conn),
            _ => None,
        };
        if let Some(c) = conn.and_then(|c| self.conns.get(&c)) {
            c.clock.allocated();
        }
        self.relays[i][bind.is_ipv6() as usize] = Some(Relay {
            socket: sock,
            task,
            conn,
        });
        true
    }

    /// A handle to this worker for new tasks. Workers are always reached
    /// through their `Rc`, kept in a thread-local at start.
    fn me(&self) -> Option<Shared> {
        SELF.with(|s| s.borrow().clone())
    }

    /// A new stream connection's id.
    pub(super) fn conn_id(&mut self) -> u32 {
        self.next_conn = self.next_conn.wrapping_add(1);
        self.next_conn
    }
}

/// Send a datagram now, with one non-blocking `sendto`. tokio's `try_send_to`
/// refuses until the reactor has seen the socket writable, which a fresh
/// relay socket may not have been yet; a datagram send needs no such gate.
#[inline]
fn send_now(sock: &UdpSocket, buf: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    socket2::SockRef::from(sock).send_to(buf, &to.into())
}

thread_local! {
    static SELF: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// Read the relay socket of allocation `id` whenever it is readable,
/// [`SLOTS`] datagrams per `recvmmsg` into the worker's batch, each handled
/// while it is still in the batch.
async fn relay_loop(w: Shared, id: AllocId, sock: Rc<UdpSocket>) {
    let fd = sock.as_raw_fd();
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let now = Instant::now();
        let mut drained = false;
        {
            let mut wb = w.borrow_mut();
            let wk = &mut *wb;
            for _ in 0..ROUNDS {
                // Every datagram of the last read went out as it was handled.
                wk.batch.used = 0;
                match sock.try_io(tokio::io::Interest::READABLE, || {
                    mmsg::recv(fd, &mut wk.batch)
                }) {
                    Ok(n) => {
                        for i in 0..n {
                            wk.peer_slot(now, id, i);
                        }
                        if n < SLOTS {
                            // A short batch emptied the queue: clear the
                            // readiness without another (empty) recvmmsg. A
                            // datagram that came meanwhile raises a new event.
                            let _ = sock.try_io(tokio::io::Interest::READABLE, || {
                                Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                            });
                            drained = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    // A pending socket error (an ICMP report): it is gone once read.
                    Err(_) => continue,
                }
            }
        }
        if !drained {
            // Let the worker's other sockets have a turn.
            tokio::task::yield_now().await;
        }
    }
}

/// TLS handshakes one worker runs at once; connections beyond are closed.
const MAX_HANDSHAKES: usize = 1024;

/// Accept TCP clients on one listener; with `tls`, each in its own task
/// through a TLS handshake first (bounded by `stream_message_timeout`), so
/// that a slow client never holds up the worker. A source IP over its
/// connection or handshake cap is closed at once, before any TLS work.
async fn accept_loop(
    w: Shared,
    index: u16,
    listener: TcpListener,
    tls: Option<super::tls::Acceptor>,
) {
    let handshakes = Rc::new(std::cell::Cell::new(0usize));
    let guard = w.borrow().guard.clone();
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let accepted = Instant::now();
                let Some(slot) = guard.connection(remote.ip()) else {
                    tracing::debug!(%remote, "too many connections from this address; closing");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Some(acceptor) = &tls else {
                    tcp::spawn(w.clone(), index, stream, remote, accepted, slot);
                    continue;
                };
                if handshakes.get() >= MAX_HANDSHAKES {
                    tracing::debug!(%remote, "too many TLS handshakes in progress; closing");
                    continue;
                }
                let Some(shaking) = guard.handshake(remote.ip()) else {
                    tracing::debug!(%remote, "too many TLS handshakes from this address; closing");
                    continue;
                };
                handshakes.set(handshakes.get() + 1);
                let (w, acceptor, handshakes) = (w.clone(), acceptor.clone(), handshakes.clone());
                let guard = guard.clone();
                tokio::task::spawn_local(async move {
                    let clock = Clock::new(accepted);
                    let socket = tcp::Watched::new(stream, clock.clone());
                    let r = acceptor.accept(socket, guard.message_timeout()).await;
                    handshakes.set(handshakes.get() - 1);
                    drop(shaking);
                    match r {
                        Ok(s) => tcp::spawn_tls(w, index, s, remote, clock, slot),
                        Err(e) => {
                            if e.kind() == std::io::ErrorKind::TimedOut {
                                guard.refuse(Refusal::MessageTimeout);
                            }
                            tracing::debug!(%remote, "TLS handshake failed: {e}");
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Carry out the control plane's commands (reports, closes, reloads, drain).
async fn command_loop(w: Shared, mut commands: mpsc::UnboundedReceiver<Command>) {
    while let Some(c) = commands.recv().await {
        let now = Instant::now();
        let mut wb = w.borrow_mut();
        let drops = wb.send_drops;
        c.carry_out(&mut wb.engine, now, drops);
        wb.flush(now);
    }
}

/// Run the engine's timers: sleep until its next deadline, or until a new
/// earlier one is armed.
async fn timer_loop(w: Shared, notify: Rc<Notify>) {
    loop {
        let next = {
            let mut wb = w.borrow_mut();
            let n = wb.engine.poll_timeout();
            wb.armed = n;
            n
        };
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {
                        let now = Instant::now();
                        let mut wb = w.borrow_mut();
                        wb.engine.handle_timeout(now);
                        wb.flush(now);
                    }
                    _ = notify.notified() => {}
                }
            }
            None => notify.notified().await,
        }
    }
}
