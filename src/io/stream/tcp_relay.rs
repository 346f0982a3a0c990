//! The sockets of TCP allocations (RFC 6062): the relay's listening socket,
//! connections to peers made for a Connect, peer connections waiting for
//! their ConnectionBind, and the byte pipe between a bound client data
//! connection and its peer connection. The engine decides (Connect,
//! ConnectionAttempt and ConnectionBind, in its `tcp_relay` module); this
//! file holds the sockets and moves bytes.
//!
//! What one authenticated user can make the server hold: per TCP
//! allocation at most `limits.connections_per_allocation` peer
//! connections (connecting, waiting or bound), each waiting at most
//! [`UNBOUND_TIMEOUT`] for its bind with nothing read from it (the peer's
//! bytes wait in the kernel's socket buffer), and each bound pair two
//! fixed [`PIPE_BUFFER`] buffers: a direction reads again only once what it
//! read is written, so a side that does not read stops the other
//! (back-pressure, no queue). Every connection closes with its allocation.
//! All the pipes of one allocation, on whichever worker, share its
//! bandwidth ceiling ([`PipeShare`]): more data connections buy no more
//! bandwidth.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::addr::AllocId;
use crate::engine::stats::Direction;
use crate::engine::{PipeShare, UNBOUND_TIMEOUT};

/// What the sockets of TCP allocations ask of the worker whose engine
/// owns the allocation (RFC 6062); its answers are carried out at once.
pub trait PeerOwner {
    /// A peer connected to the relayed address of `id`: its CONNECTION-ID
    /// if the engine lets it in (see `Engine::peer_connection`), given to
    /// `park` before the client is told (a ConnectionBind may follow at
    /// once, on another worker).
    fn peer_connection(
        &mut self,
        now: Instant,
        id: AllocId,
        peer: SocketAddr,
        park: &mut dyn FnMut(u32),
    ) -> Option<u32>;
    /// How Connect `conn` went: whether to keep the connection for a bind
    /// (see `Engine::peer_connected`).
    fn peer_connected(&mut self, now: Instant, conn: u32, ok: bool) -> bool;
    /// Peer connection `conn` is closed.
    fn peer_conn_closed(&self, conn: u32);
}

/// A worker, as these tasks hold it (all on its one thread).
pub type PeerOwnerCell = std::rc::Rc<std::cell::RefCell<dyn PeerOwner>>;

/// The log target of this file's lines.
const LOG: &str = "ferroturn::io::tcp_relay";

/// Each direction of a bound pipe reads at most this much at a time.
pub const PIPE_BUFFER: usize = 16 * 1024;

/// How long a Connect's connection attempt may take (RFC 6062 §5.2
/// leaves it to the server); then 447.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Backlog of a TCP relay's listening socket.
const BACKLOG: u32 = 16;

/// A peer connection waiting for its ConnectionBind, which may come to
/// any worker: kept as a plain socket that any worker's runtime can take.
struct Parked {
    stream: std::net::TcpStream,
    /// Changes (its sender gone) when the allocation ends.
    closer: watch::Receiver<()>,
}

/// Peer connections waiting for their bind, for every worker.
#[derive(Default)]
pub struct PeerTable {
    parked: Mutex<HashMap<u32, Parked>>,
    /// What ends each pipe that runs, by connection id: dropped, it
    /// closes that pipe.
    piped: Mutex<HashMap<u32, watch::Sender<()>>>,
}

/// A bound peer connection, handed to the client connection that bound it.
pub struct PeerEnd {
    pub conn: u32,
    pub stream: std::net::TcpStream,
    pub closer: watch::Receiver<()>,
    /// The ceiling and byte counts of its allocation's pipes (none: no
    /// ceiling, nothing counted).
    pub share: Option<Arc<PipeShare>>,
    /// Where its pipe is registered, to be closed by a reload.
    pub table: Option<Arc<PeerTable>>,
}

impl PeerTable {
    fn park(&self, conn: u32, stream: std::net::TcpStream, closer: watch::Receiver<()>) {
        let p = Parked { stream, closer };
        self.parked.lock().expect("peer table").insert(conn, p);
    }

    /// Close peer connection `conn`, parked or piped.
    pub fn kill(&self, conn: u32) {
        drop(self.take(conn));
        self.piped.lock().expect("peer table").remove(&conn);
    }

    /// A pipe of `conn` starts: what ends it when [`PeerTable::kill`]ed.
    fn piping(&self, conn: u32) -> watch::Receiver<()> {
        let (tx, rx) = watch::channel(());
        self.piped.lock().expect("peer table").insert(conn, tx);
        rx
    }

    /// The pipe of `conn` ended.
    fn piped_out(&self, conn: u32) {
        self.piped.lock().expect("peer table").remove(&conn);
    }

    /// Take peer connection `conn` out, for its bind or its timeout.
    pub fn take(&self, conn: u32) -> Option<PeerEnd> {
        let p = self.parked.lock().expect("peer table").remove(&conn)?;
        Some(PeerEnd {
            conn,
            stream: p.stream,
            closer: p.closer,
            share: None,
            table: None,
        })
    }
}

/// Listen at `bind` for a TCP allocation: SO_REUSEPORT so that its
/// connections to peers can leave from the same address (RFC 6062 §5.2).
pub fn listen(bind: SocketAddr) -> std::io::Result<TcpListener> {
    let s = match bind {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(bind)?;
    s.listen(BACKLOG)
}

/// Accept peers on allocation `id`'s relay address (RFC 6062 §5.3): the
/// engine lets a peer in (a ConnectionAttempt to the client) or not
/// (closed at once).
pub async fn accept_loop(
    w: PeerOwnerCell,
    id: AllocId,
    listener: std::rc::Rc<TcpListener>,
    peers: Arc<PeerTable>,
    closer: watch::Receiver<()>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(target: LOG, "relay accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let now = Instant::now();
        let mut stream = Some(stream);
        let mut park = |conn: u32| {
            if let Some(s) = stream.take() {
                peers.park(conn, s, closer.clone());
            }
        };
        let conn = w.borrow_mut().peer_connection(now, id, peer, &mut park);
        match conn {
            Some(conn) => expire_unbound(&w, &peers, conn, closer.clone()),
            None => tracing::debug!(target: LOG, %peer, "peer connection refused"),
        }
    }
}

/// Connect from `bind` to `peer` for Connect `conn` of allocation `id`,
/// and tell the engine how it went.
pub async fn connect(
    w: PeerOwnerCell,
    conn: u32,
    bind: SocketAddr,
    peer: SocketAddr,
    peers: Arc<PeerTable>,
    closer: watch::Receiver<()>,
) {
    let attempt = async {
        let s = match peer {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        s.set_reuseaddr(true)?;
        s.set_reuseport(true)?;
        // From the relayed address if the kernel lets us; its IP at least.
        if s.bind(bind).is_err() {
            s.bind(SocketAddr::new(bind.ip(), 0))?;
        }
        s.connect(peer).await
    };
    let r = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await;
    let stream = match r {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(target: LOG, %peer, "connect to peer failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(target: LOG, %peer, "connect to peer timed out");
            None
        }
    };
    // Parked before the client hears of it: its ConnectionBind may come
    // at once, to another worker.
    let stream = stream.and_then(|s| s.into_std().ok());
    let ok = stream.is_some();
    if let Some(s) = stream {
        peers.park(conn, s, closer.clone());
    }
    let now = Instant::now();
    let keep = w.borrow_mut().peer_connected(now, conn, ok);
    if keep {
        expire_unbound(&w, &peers, conn, closer);
    } else {
        drop(peers.take(conn));
    }
}

/// Close parked peer connection `conn` unless it is bound before its
/// allocation ends or [`UNBOUND_TIMEOUT`] passes.
fn expire_unbound(
    w: &PeerOwnerCell,
    peers: &Arc<PeerTable>,
    conn: u32,
    mut closer: watch::Receiver<()>,
) {
    let (w, peers) = (w.clone(), peers.clone());
    tokio::task::spawn_local(async move {
        let _ = tokio::time::timeout(UNBOUND_TIMEOUT, closer.changed()).await;
        if peers.take(conn).is_some() {
            tracing::debug!(target: LOG, conn, "peer connection not bound in time; closed");
            w.borrow().peer_conn_closed(conn);
        }
    });
}

/// One side of a pipe, as it is read: the client's connection (TCP or
/// TLS) or the peer's.
#[allow(async_fn_in_trait)]
pub trait PipeRead {
    /// Read some bytes; 0 at the end of the stream. Cancel-safe.
    async fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
}

/// One side of a pipe, as it is written.
#[allow(async_fn_in_trait)]
pub trait PipeWrite {
    /// Write all of `buf` (and flush it).
    async fn write_all_of(&mut self, buf: &[u8]) -> std::io::Result<()>;
}

impl PipeRead for tokio::net::tcp::ReadHalf<'_> {
    async fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf).await
    }
}

impl PipeWrite for tokio::net::tcp::WriteHalf<'_> {
    async fn write_all_of(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.write_all(buf).await
    }
}

/// `n` bytes went `dir`: counted for the allocation, and wait as long as
/// its ceiling wants before reading again.
async fn sent(share: Option<&PipeShare>, dir: Direction, n: usize) {
    let Some(share) = share else { return };
    let wait = share.sent(dir, n, Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// Copy `from` to `to` (direction `dir`), `first` first, through one
/// [`PIPE_BUFFER`]: read again only once what was read is written and
/// the allocation's ceiling allows. Ends at the end of `from` or the
/// first error.
async fn one_way(
    from: &mut impl PipeRead,
    to: &mut impl PipeWrite,
    first: &[u8],
    share: Option<&PipeShare>,
    dir: Direction,
) -> std::io::Result<()> {
    if !first.is_empty() {
        to.write_all_of(first).await?;
        sent(share, dir, first.len()).await;
    }
    let mut buf = vec![0u8; PIPE_BUFFER];
    loop {
        let n = from.read_some(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all_of(&buf[..n]).await?;
        sent(share, dir, n).await;
    }
}

/// Pipe bytes between a bound client data connection and its peer
/// connection until either closes or the allocation ends. `first` is what
/// the client sent after its ConnectionBind, read already. Each direction
/// reads into its own [`PIPE_BUFFER`] and reads again only once that is
/// written; what goes each way is counted for the allocation.
pub async fn pipe(
    reader: &mut impl PipeRead,
    writer: &mut impl PipeWrite,
    end: PeerEnd,
    first: &[u8],
) {
    let PeerEnd {
        stream,
        mut closer,
        conn,
        share,
        table,
    } = end;
    let peer = stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(stream));
    let mut peer = match peer {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(target: LOG, conn, "peer connection lost: {e}");
            return;
        }
    };
    let (mut from_peer, mut to_peer) = peer.split();
    let share = share.as_deref();
    let up = one_way(reader, &mut to_peer, first, share, Direction::ToPeer);
    let down = one_way(&mut from_peer, writer, &[], share, Direction::ToClient);
    // Without a table nothing kills it: the sender lives with the pipe.
    let (_unkillable, mut killed) = match &table {
        Some(t) => (None, t.piping(conn)),
        None => {
            let (tx, rx) = watch::channel(());
            (Some(tx), rx)
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = closer.changed() => {}
        _ = killed.changed() => {
            tracing::debug!(target: LOG, conn, "pipe closed: the policy denies its peer");
        }
    }
    if let Some(t) = &table {
        t.piped_out(conn);
    }
}
