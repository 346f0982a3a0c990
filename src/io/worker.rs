//! One worker: a thread with a current-thread runtime, its listener
//! sockets, the relay sockets of its allocations, and its engine.
//!
//! Every task of a worker runs on the same thread, so they share the worker
//! state through `Rc<RefCell<..>>`; a borrow is never held across an await.
//! The receive buffers are shared too: one [`Batch`] per worker, not one
//! per socket. Datagrams are read with `recvmmsg` into the batch's free
//! slots, and what they relay is queued; the queue goes out with one
//! `sendmmsg` per socket once every socket that was ready has been read
//! (the flusher task runs after them), or sooner when the batch is nearly
//! full. So replies that many relay sockets send to clients through one
//! listener leave in one system call.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::mmsg::{self, Batch, Out, SLOTS};
use super::socket;
use super::tcp::{self, Conn};
use super::Command;
use crate::addr::{AllocId, ClientAddr, Via};
use crate::engine::{Engine, EngineConfig, Output, ToPeer};
use crate::proto::channel_data::{BUF_LEN, HEADROOM};
use std::os::fd::{AsRawFd, RawFd};

/// The sockets a worker is given at start.
#[derive(Default)]
pub struct Sockets {
    /// Sockets with the index of their `[[listen]]` entry.
    pub udp: Vec<(u16, std::net::UdpSocket)>,
    pub tcp: Vec<(u16, std::net::TcpListener)>,
    /// TLS listeners, with the acceptor their entry shares across workers.
    pub tls: Vec<(u16, std::net::TcpListener, super::tls::Acceptor)>,
}

/// Relay table size from which emptying it triggers [`Worker::compact`].
const COMPACT_AFTER: usize = 256;

/// `recvmmsg` calls per readiness wake-up before yielding to other sockets.
const ROUNDS: usize = 4;

/// Free slots below which the queue is sent before the next `recvmmsg`.
const MIN_FREE: usize = 8;

struct Relay {
    socket: Rc<UdpSocket>,
    fd: RawFd,
    task: JoinHandle<()>,
}

pub(super) struct Worker {
    pub(super) engine: Engine,
    /// UDP listener sockets by `[[listen]]` index.
    udp: Vec<Option<Rc<UdpSocket>>>,
    /// Relay sockets by allocation id, IPv4 then IPv6 (a dual allocation
    /// has both).
    relays: Vec<[Option<Relay>; 2]>,
    pub(super) conns: std::collections::HashMap<u32, Rc<Conn>>,
    next_conn: u32,
    /// Receive buffers for one `recvmmsg`.
    batch: Batch,
    /// Relayed datagrams of the current batch, sent together at its end.
    outs: Vec<Out>,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    timer: Rc<Notify>,
    /// Wakes the flusher task, which sends `outs`; `flushing` while it is due.
    flusher: Rc<Notify>,
    flushing: bool,
    /// Packets we could not send (socket buffer full), dropped.
    pub(super) send_drops: u64,
    /// A [`Worker::compact`] is scheduled.
    compacting: bool,
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
        let flusher = Rc::new(Notify::new());
        let mut udp: Vec<Option<Rc<UdpSocket>>> = Vec::new();
        for (i, s) in sockets.udp {
            match UdpSocket::from_std(s) {
                Ok(s) => {
                    let i = i as usize;
                    if udp.len() <= i {
                        udp.resize(i + 1, None);
                    }
                    udp[i] = Some(Rc::new(s));
                }
                Err(e) => return tracing::error!(worker = index, "udp socket: {e}"),
            }
        }
        let w: Shared = Rc::new(RefCell::new(Worker {
            engine: Engine::new(cfg, now, unix_now),
            udp: udp.clone(),
            relays: Vec::new(),
            conns: Default::default(),
            next_conn: 0,
            batch: Batch::new(),
            outs: Vec::with_capacity(SLOTS),
            armed: None,
            timer: timer.clone(),
            flusher: flusher.clone(),
            flushing: false,
            send_drops: 0,
            compacting: false,
        }));
        SELF.with(|s| *s.borrow_mut() = Some(w.clone()));
        for (i, s) in udp.into_iter().enumerate() {
            if let Some(s) = s {
                tokio::task::spawn_local(udp_loop(w.clone(), i as u16, s));
            }
        }
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
        tokio::task::spawn_local(flush_loop(w.clone(), flusher));
        tokio::task::spawn_local(command_loop(w.clone(), commands));
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
        let mut wb = w.borrow_mut();
        let now = Instant::now();
        wb.engine.close_all(now);
        wb.flush(now);
        wb.send_outs();
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

    /// Datagram `i` of the batch, from a client on UDP listener `index`:
    /// the engine reads it in place, and a relayed payload is queued to go
    /// out from the relay socket straight from the batch buffer.
    #[inline]
    fn client_slot(&mut self, now: Instant, index: u16, i: usize) {
        let at = Batch::base(i) + HEADROOM;
        let client = ClientAddr {
            remote: self.batch.from[i],
            via: Via::Udp(index),
        };
        let packet = &self.batch.data[at..at + self.batch.len[i]];
        if let Some(f) = self.engine.handle_client(now, client, packet) {
            if let Some(r) = self.relay(f.relay, f.peer.0) {
                self.outs.push(Out {
                    fd: r.fd,
                    start: at + f.start,
                    end: at + f.end,
                    to: f.peer.0,
                });
            }
        }
        self.flush(now);
    }

    /// Datagram `i` of the batch, from a peer on the relay socket of `id`:
    /// framed in place by the engine and queued for the client.
    #[inline]
    fn peer_slot(&mut self, now: Instant, id: AllocId, i: usize) {
        let base = Batch::base(i);
        let end = HEADROOM + self.batch.len[i];
        let from = self.batch.from[i];
        let slot = &mut self.batch.data[base..base + BUF_LEN];
        let Some(tc) = self.engine.handle_peer(now, id, from, slot, HEADROOM, end) else {
            return;
        };
        match tc.client.via {
            Via::Udp(l) => {
                if let Some(Some(s)) = self.udp.get(l as usize) {
                    self.outs.push(Out {
                        fd: s.as_raw_fd(),
                        start: base + tc.start,
                        end: base + tc.end,
                        to: tc.client.remote,
                    });
                }
            }
            Via::Stream { .. } => {
                let frame = &self.batch.data[base + tc.start..base + tc.end];
                if !self.transmit(tc.client, frame) {
                    self.send_drops += 1;
                }
            }
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
        // glibc keeps freed memory in its arenas; give it back.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Send the queued datagrams: one `sendmmsg` per socket. Their slots
    /// are free again once no batch is being read (see [`Worker::recycle`]).
    fn send_outs(&mut self) {
        if !self.outs.is_empty() {
            self.send_drops += self.batch.send(&mut self.outs) as u64;
            self.outs.clear();
        }
    }

    /// Between batches: free the batch's slots if nothing queued names them,
    /// and send the queue first if too few slots are left for a read.
    #[inline]
    fn recycle(&mut self) {
        if self.outs.is_empty() {
            self.batch.used = 0;
        } else if SLOTS - self.batch.used < MIN_FREE {
            self.send_outs();
            self.batch.used = 0;
        }
    }

    /// Have the flusher send the queue once the sockets ready now are read.
    #[inline]
    fn defer_send(&mut self) {
        if !self.outs.is_empty() && !self.flushing {
            self.flushing = true;
            self.flusher.notify_one();
        }
    }

    #[inline]
    fn send_to_peer(&mut self, f: ToPeer, packet: &[u8]) {
        if let Some(r) = self.relay(f.relay, f.peer.0) {
            if send_now(&r.socket, &packet[f.start..f.end], f.peer.0).is_err() {
                self.send_drops += 1;
            }
        }
    }

    /// Send a datagram or frame to a client; false if it was dropped.
    #[inline]
    fn transmit(&self, client: ClientAddr, data: &[u8]) -> bool {
        match client.via {
            Via::Udp(i) => match self.udp.get(i as usize) {
                Some(Some(s)) => send_now(s, data, client.remote).is_ok(),
                _ => false,
            },
            Via::Stream { conn, .. } => match self.conns.get(&conn) {
                Some(c) => c.send(data),
                None => false,
            },
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
                    // Queued datagrams name socket descriptors: send them
                    // before one closes and its number is reused.
                    self.send_outs();
                    if let Some(slots) = self.relays.get_mut(alloc.0 as usize) {
                        for r in slots.iter_mut().filter_map(Option::take) {
                            r.task.abort();
                        }
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
        let fd = sock.as_raw_fd();
        self.relays[i][bind.is_ipv6() as usize] = Some(Relay {
            socket: sock,
            fd,
            task,
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

/// Read `sock` whenever it is readable, [`SLOTS`] datagrams per `recvmmsg`
/// into the worker's batch; `on` handles each one while it is still in the
/// batch, and what it relays goes out at the end of the batch.
async fn read_loop<F>(w: Shared, sock: Rc<UdpSocket>, mut on: F)
where
    F: FnMut(&mut Worker, Instant, usize),
{
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
                wk.recycle();
                let at = wk.batch.used;
                match sock.try_io(tokio::io::Interest::READABLE, || {
                    mmsg::recv(fd, &mut wk.batch)
                }) {
                    Ok(n) => {
                        for i in at..at + n {
                            on(wk, now, i);
                        }
                        if n < SLOTS - at {
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
            wk.defer_send();
        }
        if !drained {
            // Let the worker's other sockets have a turn.
            tokio::task::yield_now().await;
        }
    }
}

/// Receive client datagrams on the UDP listener of `[[listen]]` entry `index`.
async fn udp_loop(w: Shared, index: u16, sock: Rc<UdpSocket>) {
    read_loop(w, sock, move |wk, now, i| wk.client_slot(now, index, i)).await
}

/// Receive peer datagrams on the relay socket of allocation `id`.
async fn relay_loop(w: Shared, id: AllocId, sock: Rc<UdpSocket>) {
    read_loop(w, sock, move |wk, now, i| wk.peer_slot(now, id, i)).await
}

/// TLS handshakes one worker runs at once; connections beyond are closed.
const MAX_HANDSHAKES: usize = 1024;

/// Accept TCP clients on one listener; with `tls`, each in its own task
/// through a TLS handshake first (bounded in time, see
/// [`super::tls::HANDSHAKE_TIMEOUT`]), so that a slow client never holds
/// up the worker.
async fn accept_loop(
    w: Shared,
    index: u16,
    listener: TcpListener,
    tls: Option<super::tls::Acceptor>,
) {
    let handshakes = Rc::new(std::cell::Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                let Some(acceptor) = &tls else {
                    tcp::spawn(w.clone(), index, stream, remote);
                    continue;
                };
                if handshakes.get() >= MAX_HANDSHAKES {
                    tracing::debug!(%remote, "too many TLS handshakes in progress; closing");
                    continue;
                }
                handshakes.set(handshakes.get() + 1);
                let (w, acceptor, handshakes) = (w.clone(), acceptor.clone(), handshakes.clone());
                tokio::task::spawn_local(async move {
                    let r = acceptor.accept(stream).await;
                    handshakes.set(handshakes.get() - 1);
                    match r {
                        Ok(s) => tcp::spawn_tls(w, index, s, remote),
                        Err(e) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
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

/// Send what the read loops queued, after every task that was ready
/// with it has run: tasks woken later queue behind this one.
async fn flush_loop(w: Shared, notify: Rc<Notify>) {
    loop {
        notify.notified().await;
        let mut wb = w.borrow_mut();
        wb.flushing = false;
        wb.send_outs();
        wb.recycle();
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
