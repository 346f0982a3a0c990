//! TURN over TCP and TLS: STUN and ChannelData framed on a stream (RFC 8656
//! §12.5; over TLS the same framing, §3.1). Closing the connection deletes
//! its allocation (§3.1).
//!
//! A plain TCP connection is written straight from [`Conn::send`] when the
//! socket takes the whole frame; a TLS connection always goes through the
//! queue and its writer task, which encrypts. Both share the framing read
//! loop and the queue.
//!
//! What a connection may cost is bounded by the `[limits]` stream keys
//! (see [`super::guard`]): each message must be whole within
//! `stream_message_timeout` of its first byte, the connection must hold an
//! allocation within `stream_allocation_timeout` of its accept (and of the
//! end of each allocation it held), and at most `stream_queue_bytes` wait
//! for a client that does not read.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::conn::{Clock, Conn, OwnerCell, Watched};
use super::guard::{Refusal, Slot};
use crate::addr::{ClientAddr, Via};
use crate::proto::framing::next_frame_len;

/// The log target of this file's lines (where they stood before the
/// stream modules were split).
const LOG: &str = "ferroturn::io::tcp";

/// Most stream connections one worker holds; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16_384;

/// The read buffer of a connection; it grows (to [`MAX_FRAME`]) only while
/// a larger frame is in progress.
const READ_BUFFER: usize = 4096;

/// Largest frame: a STUN header plus a 65,535-byte body.
const MAX_FRAME: usize = 20 + 65_535;

/// Bytes rustls may hold encrypted for a TLS client that does not read, on
/// top of the queue (its default is 64 KiB; one record is 16 KiB).
const TLS_BUFFER_LIMIT: usize = 16 * 1024;

/// The read side of a connection.
enum Reader {
    Tcp(Rc<TcpStream>),
    Tls(ReadHalf<TlsStream<Watched>>),
}

impl Reader {
    /// Read some bytes; 0 at the end of the stream. Cancel-safe.
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Reader::Tcp(s) => loop {
                s.readable().await?;
                match s.try_read(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            },
            Reader::Tls(r) => r.read(buf).await,
        }
    }
}

impl super::tcp_relay::PipeRead for Reader {
    async fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf).await
    }
}

impl super::tcp_relay::PipeWrite for Writer {
    async fn write_all_of(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Tcp(s) => {
                let mut at = 0;
                while at < buf.len() {
                    s.writable().await?;
                    match s.try_write(&buf[at..]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Writer::Tls(w) => {
                w.write_all(buf).await?;
                w.flush().await
            }
        }
    }
}

/// How a connection's read loop ended.
enum End {
    /// The client left (`None`) or missed a deadline (the reason).
    Closed(Option<Refusal>),
    /// A ConnectionBind made it a data connection (RFC 6062 §5.4): pipe
    /// it to this peer connection, starting with these bytes the client
    /// sent after the bind.
    Pipe(super::tcp_relay::PeerEnd, Vec<u8>),
}

/// The write side of a connection, owned by its writer task.
enum Writer {
    Tcp(Rc<TcpStream>),
    Tls(WriteHalf<TlsStream<Watched>>),
}

/// Start the reader and writer tasks of a new TCP connection, accepted at
/// `accepted`, holding its place `slot` in its source's count.
pub fn spawn(
    w: OwnerCell,
    listener: u16,
    stream: TcpStream,
    remote: SocketAddr,
    accepted: Instant,
    slot: Slot,
) {
    let stream = Rc::new(stream);
    start(
        w,
        listener,
        remote,
        Clock::new(accepted),
        slot,
        Some(stream.clone()),
        Reader::Tcp(stream.clone()),
        Writer::Tcp(stream),
        "tcp connection",
        None,
    );
}

/// Start the reader and writer tasks of a TLS connection whose handshake
/// is done; `clock` is the one its socket reports to.
pub fn spawn_tls(
    w: OwnerCell,
    listener: u16,
    mut stream: TlsStream<Watched>,
    remote: SocketAddr,
    clock: Rc<Clock>,
    slot: Slot,
) {
    stream.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
    let names = crate::cluster::usage::openssl_names(stream.get_ref().1);
    let (r, wr) = tokio::io::split(stream);
    start(
        w,
        listener,
        remote,
        clock,
        slot,
        None,
        Reader::Tls(r),
        Writer::Tls(wr),
        "tls connection",
        Some(names),
    );
}

#[allow(clippy::too_many_arguments)]
fn start(
    w: OwnerCell,
    listener: u16,
    remote: SocketAddr,
    clock: Rc<Clock>,
    slot: Slot,
    direct: Option<Rc<TcpStream>>,
    reader: Reader,
    writer: Writer,
    what: &'static str,
    tls_names: Option<crate::cluster::usage::TlsNames>,
) {
    if w.borrow().connections() >= MAX_CONNECTIONS {
        tracing::warn!(target: LOG, %remote, "too many stream connections on this worker; closing");
        return;
    }
    let tls = direct.is_none();
    let guard = w.borrow().guard();
    let conn = Rc::new(Conn::new(direct, clock, guard));
    conn.tls_names.set(tls_names);
    let id = w.borrow_mut().admit(conn.clone());
    let client = ClientAddr {
        remote,
        // Only plain TCP writes directly; TLS goes through its writer task.
        via: Via::Stream {
            listener,
            conn: id,
            tls,
        },
    };
    tracing::debug!(%client, "{what}");
    let writer = tokio::task::spawn_local(write_loop(conn.clone(), writer));
    tokio::task::spawn_local(async move {
        let mut reader = reader;
        match read_loop(&w, &mut reader, client, &conn).await {
            End::Closed(Some(r)) => {
                conn.guard.refuse(r);
                tracing::debug!(%client, reason = ?r, "closing a stream connection");
                writer.abort();
            }
            End::Closed(None) => writer.abort(),
            End::Pipe(peer, first) => {
                // The writer writes what is queued (the bind's answer),
                // then hands its half back.
                conn.handover.set(true);
                conn.wake.notify_one();
                let id = peer.conn;
                if let Ok(Some(mut writer)) = writer.await {
                    tracing::debug!(%client, conn = id, "data connection piped");
                    super::tcp_relay::pipe(&mut reader, &mut writer, peer, &first).await;
                }
                w.borrow().peer_conn_closed(id);
            }
        }
        conn.closed.set(true);
        let now = Instant::now();
        w.borrow_mut().closed(now, id, client);
        drop(slot);
    });
}

/// The earliest of a connection's deadlines, and what it is for: the
/// message in progress (since `message`, or since its unfinished TLS record
/// began) must be whole by `stream_message_timeout`, and a connection
/// without an allocation must get one by `stream_allocation_timeout`.
fn deadline(conn: &Conn, message: Option<Instant>) -> Option<(Instant, Refusal)> {
    let g = &conn.guard;
    let started = [message, conn.clock.record_since.get()]
        .into_iter()
        .flatten()
        .min();
    let m = started.map(|t| (t + g.message_timeout(), Refusal::MessageTimeout));
    let a = conn
        .clock
        .unallocated_since
        .get()
        .map(|t| (t + g.allocation_timeout(), Refusal::AllocationTimeout));
    [a, m].into_iter().flatten().min_by_key(|d| d.0)
}

/// Read and hand on frames until the client leaves (`None`) or misses a
/// deadline (the reason).
async fn read_loop(w: &OwnerCell, reader: &mut Reader, client: ClientAddr, conn: &Conn) -> End {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut filled = 0;
    // When the first byte of the frame in progress came, if one is.
    let mut message: Option<Instant> = None;
    let sleep = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(sleep);
    loop {
        if filled == buf.len() {
            // Only grows when a frame announced more than fits.
            buf.resize((buf.len() * 2).min(MAX_FRAME), 0);
        }
        let due = deadline(conn, message);
        if let Some((t, _)) = due {
            sleep.as_mut().reset(t.into());
        }
        let n = tokio::select! {
            r = reader.read(&mut buf[filled..]) => r,
            _ = &mut sleep, if due.is_some() => {
                let now = Instant::now();
                match deadline(conn, message) {
                    Some((t, Refusal::AllocationTimeout)) if t <= now => {
                        // The engine has the last word on whether there is one.
                        if w.borrow().holds_allocation(client) {
                            conn.clock.allocated();
                            continue;
                        }
                        return End::Closed(Some(Refusal::AllocationTimeout));
                    }
                    Some((t, r)) if t <= now => return End::Closed(Some(r)),
                    // A reload or a new allocation moved it.
                    _ => continue,
                }
            }
            _ = conn.clock.changed.notified() => continue,
        };
        let now = Instant::now();
        match n {
            Ok(0) | Err(_) => return End::Closed(None),
            Ok(n) => filled += n,
        }
        let mut start = 0;
        loop {
            match next_frame_len(&buf[start..filled]) {
                Ok(Some(len)) => {
                    w.borrow_mut()
                        .message(now, client, &buf[start..start + len]);
                    start += len;
                    if let Some(peer) = conn.pipe.borrow_mut().take() {
                        return End::Pipe(peer, buf[start..filled].to_vec());
                    }
                }
                Ok(None) => break,
                Err(()) => {
                    tracing::debug!(%client, "not a STUN/TURN stream; closing");
                    return End::Closed(None);
                }
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == 0 {
            message = None;
            if buf.len() > READ_BUFFER {
                // A large frame is done: an idle connection keeps 4 KiB.
                buf = vec![0u8; READ_BUFFER];
            }
        } else if start > 0 || message.is_none() {
            // The unfinished frame began in this read.
            message = Some(now);
        }
    }
}

/// Write what is queued for the client whenever there is some; once the
/// connection turns into a pipe ([`Conn::handover`]) and the queue is
/// written, hand the write half back. `None`: the client is gone.
async fn write_loop(conn: Rc<Conn>, writer: Writer) -> Option<Writer> {
    match writer {
        Writer::Tcp(stream) => loop {
            conn.wake.notified().await;
            while !conn.queued.borrow().is_empty() {
                if stream.writable().await.is_err() {
                    conn.closed.set(true);
                    return None;
                }
                let mut q = conn.queued.borrow_mut();
                match stream.try_write(&q) {
                    Ok(n) => {
                        q.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        conn.closed.set(true);
                        return None;
                    }
                }
            }
            shrink(&mut conn.queued.borrow_mut());
            if conn.handover.get() {
                return Some(Writer::Tcp(stream));
            }
        },
        Writer::Tls(mut w) => {
            // What is being written; frames sent meanwhile queue behind it.
            let (mut out, mut ends) = (Vec::new(), Vec::new());
            loop {
                conn.wake.notified().await;
                loop {
                    std::mem::swap(&mut out, &mut *conn.queued.borrow_mut());
                    std::mem::swap(&mut ends, &mut *conn.ends.borrow_mut());
                    if out.is_empty() {
                        break;
                    }
                    conn.in_flight.set(out.len());
                    let mut start = 0;
                    for &end in &ends {
                        // One write, one record (frames are at most 64 KiB,
                        // so up to 5 records for the largest).
                        if w.write_all(&out[start..end]).await.is_err() {
                            conn.closed.set(true);
                            return None;
                        }
                        conn.in_flight.set(out.len() - end);
                        start = end;
                    }
                    if w.flush().await.is_err() {
                        conn.closed.set(true);
                        return None;
                    }
                    out.clear();
                    ends.clear();
                }
                shrink(&mut out);
                if conn.handover.get() {
                    return Some(Writer::Tls(w));
                }
            }
        }
    }
}

/// Give back a queue buffer that a burst left large, once it is empty, so
/// that an idle connection holds no more than a few KiB.
fn shrink(q: &mut Vec<u8>) {
    if q.is_empty() && q.capacity() > 16 * 1024 {
        *q = Vec::new();
    }
}
