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
//! (see [`super::stream_guard`]): each message must be whole within
//! `stream_message_timeout` of its first byte, the connection must hold an
//! allocation within `stream_allocation_timeout` of its accept (and of the
//! end of each allocation it held), and at most `stream_queue_bytes` wait
//! for a client that does not read.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::server::TlsStream;

use super::stream_guard::{Refusal, Slot, StreamGuard};
use super::worker::Shared;
use crate::addr::{ClientAddr, Via};
use crate::proto::framing::next_frame_len;

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

/// A TLS connection's socket. It follows the TLS record framing of what
/// the client sends (RFC 8446 §5.1: a 5-byte header with the length, then
/// the body), so that a client trickling a TLS record, which yields no
/// plaintext until it is whole, is on the message clock too; whole records
/// without application data (a KeyUpdate) stop that clock like any other.
pub struct Watched {
    inner: TcpStream,
    clock: Rc<Clock>,
    records: Records,
}

impl Watched {
    pub fn new(inner: TcpStream, clock: Rc<Clock>) -> Watched {
        Watched {
            inner,
            clock,
            records: Records::default(),
        }
    }
}

/// Where a stream of TLS records stands.
#[derive(Default)]
struct Records {
    /// Header bytes of the next record seen so far.
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current record still to come.
    left: usize,
}

impl Records {
    /// Follow the records through `data`, just read: whether one ended in
    /// it, and whether one is unfinished at its end.
    fn scan(&mut self, mut data: &[u8]) -> (bool, bool) {
        let mut ended = false;
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                ended |= self.left == 0;
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                self.left = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
                ended |= self.left == 0;
            }
        }
        (ended, self.have > 0 || self.left > 0)
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let (ended, unfinished) = self.records.scan(&buf.filled()[before..]);
            self.clock.record_progress(ended, unfinished);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    // rustls hands its queued records over in one vectored write; without
    // these, the last write after a failed handshake (its alert) would
    // carry only the first record.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The deadlines of one connection that others move: its allocation (the
/// worker) and, on TLS, its incoming records ([`Watched`]).
pub struct Clock {
    /// Since when a TLS record is coming in unfinished (set by [`Watched`]).
    record_since: Cell<Option<Instant>>,
    /// Since when the connection holds no allocation; `None` while it does.
    unallocated_since: Cell<Option<Instant>>,
    /// Wakes the reader to arm its deadline again.
    changed: Notify,
}

impl Clock {
    /// A clock for a connection accepted at `accepted`, without allocation.
    pub fn new(accepted: Instant) -> Rc<Clock> {
        Rc::new(Clock {
            record_since: Cell::new(None),
            unallocated_since: Cell::new(Some(accepted)),
            changed: Notify::new(),
        })
    }

    /// Bytes of TLS records came: whether a record `ended` in them, and
    /// whether one is `unfinished` at their end.
    fn record_progress(&self, ended: bool, unfinished: bool) {
        if !unfinished {
            self.record_since.set(None);
        } else if ended || self.record_since.get().is_none() {
            self.record_since.set(Some(Instant::now()));
            self.changed.notify_one();
        }
    }

    /// The connection got an allocation (its relay socket is open).
    pub fn allocated(&self) {
        self.unallocated_since.set(None);
    }

    /// The connection's allocation ended at `now`: the allocation deadline
    /// runs again from here.
    pub fn deallocated(&self, now: Instant) {
        self.unallocated_since.set(Some(now));
        self.changed.notify_one();
    }
}

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

/// The write side of a connection, owned by its writer task.
enum Writer {
    Tcp(Rc<TcpStream>),
    Tls(WriteHalf<TlsStream<Watched>>),
}

/// The write side of a client connection, shared with the worker.
pub struct Conn {
    /// The socket of a plain TCP connection, for writes without the queue.
    direct: Option<Rc<TcpStream>>,
    queued: RefCell<Vec<u8>>,
    /// Where each queued frame ends, for TLS: every frame goes out in its
    /// own TLS record, as clients that read one message at a time (coturn's
    /// among them) expect; a record holding several frames can leave the
    /// tail unread in their TLS buffer until more data arrives.
    ends: RefCell<Vec<usize>>,
    /// Bytes the TLS writer took from the queue and has not yet handed to
    /// rustls: they count against the queue's budget.
    in_flight: Cell<usize>,
    wake: Notify,
    closed: Cell<bool>,
    pub clock: Rc<Clock>,
    guard: Arc<StreamGuard>,
}

impl Conn {
    /// Send a whole frame, or queue it behind what is already waiting.
    /// Never blocks. Returns false if the frame was dropped: the client
    /// does not read, and `stream_queue_bytes` are waiting for it already.
    /// A frame of any size goes into an empty queue, so that the largest
    /// datagram still reaches a client that reads.
    pub fn send(&self, frame: &[u8]) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut q = self.queued.borrow_mut();
        let held = q.len() + self.in_flight.get();
        if held == 0 {
            match &self.direct {
                Some(stream) => match stream.try_write(frame) {
                    Ok(n) if n == frame.len() => return true,
                    Ok(n) => q.extend_from_slice(&frame[n..]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        q.extend_from_slice(frame)
                    }
                    Err(_) => {
                        self.closed.set(true);
                        return false;
                    }
                },
                None => self.push(&mut q, frame),
            }
            self.wake.notify_one();
            return true;
        }
        if held + frame.len() > self.guard.queue_bytes() {
            self.guard.refuse(Refusal::QueueFull);
            return false;
        }
        let was_empty = q.is_empty();
        self.push(&mut q, frame);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    fn push(&self, q: &mut Vec<u8>, frame: &[u8]) {
        q.extend_from_slice(frame);
        if self.direct.is_none() {
            self.ends.borrow_mut().push(q.len());
        }
    }
}

/// Start the reader and writer tasks of a new TCP connection, accepted at
/// `accepted`, holding its place `slot` in its source's count.
pub fn spawn(
    w: Shared,
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
    );
}

/// Start the reader and writer tasks of a TLS connection whose handshake
/// is done; `clock` is the one its socket reports to.
pub fn spawn_tls(
    w: Shared,
    listener: u16,
    mut stream: TlsStream<Watched>,
    remote: SocketAddr,
    clock: Rc<Clock>,
    slot: Slot,
) {
    stream.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
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
    );
}

#[allow(clippy::too_many_arguments)]
fn start(
    w: Shared,
    listener: u16,
    remote: SocketAddr,
    clock: Rc<Clock>,
    slot: Slot,
    direct: Option<Rc<TcpStream>>,
    reader: Reader,
    writer: Writer,
    what: &'static str,
) {
    if w.borrow().conns.len() >= MAX_CONNECTIONS {
        tracing::warn!(%remote, "too many stream connections on this worker; closing");
        return;
    }
    let id = w.borrow_mut().conn_id();
    let tls = direct.is_none();
    let guard = w.borrow().guard.clone();
    let conn = Rc::new(Conn {
        direct,
        queued: RefCell::new(Vec::new()),
        ends: RefCell::new(Vec::new()),
        in_flight: Cell::new(0),
        wake: Notify::new(),
        closed: Cell::new(false),
        clock,
        guard,
    });
    w.borrow_mut().conns.insert(id, conn.clone());
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
        if let Some(r) = read_loop(&w, reader, client, &conn).await {
            conn.guard.refuse(r);
            tracing::debug!(%client, reason = ?r, "closing a stream connection");
        }
        writer.abort();
        conn.closed.set(true);
        let now = Instant::now();
        let mut wb = w.borrow_mut();
        wb.conns.remove(&id);
        wb.engine.connection_closed(now, client);
        wb.flush(now);
        drop(wb);
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
async fn read_loop(
    w: &Shared,
    mut reader: Reader,
    client: ClientAddr,
    conn: &Conn,
) -> Option<Refusal> {
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
                        if w.borrow().engine.allocation_of(client).is_some() {
                            conn.clock.allocated();
                            continue;
                        }
                        return Some(Refusal::AllocationTimeout);
                    }
                    Some((t, r)) if t <= now => return Some(r),
                    // A reload or a new allocation moved it.
                    _ => continue,
                }
            }
            _ = conn.clock.changed.notified() => continue,
        };
        let now = Instant::now();
        match n {
            Ok(0) | Err(_) => return None,
            Ok(n) => filled += n,
        }
        let mut start = 0;
        loop {
            match next_frame_len(&buf[start..filled]) {
                Ok(Some(len)) => {
                    w.borrow_mut()
                        .client_packet(now, client, &buf[start..start + len]);
                    start += len;
                }
                Ok(None) => break,
                Err(()) => {
                    tracing::debug!(%client, "not a STUN/TURN stream; closing");
                    return None;
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

async fn write_loop(conn: Rc<Conn>, writer: Writer) {
    match writer {
        Writer::Tcp(stream) => loop {
            conn.wake.notified().await;
            while !conn.queued.borrow().is_empty() {
                if stream.writable().await.is_err() {
                    conn.closed.set(true);
                    return;
                }
                let mut q = conn.queued.borrow_mut();
                match stream.try_write(&q) {
                    Ok(n) => {
                        q.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        conn.closed.set(true);
                        return;
                    }
                }
            }
            shrink(&mut conn.queued.borrow_mut());
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
                            return;
                        }
                        conn.in_flight.set(out.len() - end);
                        start = end;
                    }
                    if w.flush().await.is_err() {
                        conn.closed.set(true);
                        return;
                    }
                    out.clear();
                    ends.clear();
                }
                shrink(&mut out);
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

#[cfg(test)]
mod tests {
    use super::Records;

    #[test]
    fn records_are_followed_across_reads() {
        let mut r = Records::default();
        // A header in two pieces, then a 3-byte body in two.
        assert_eq!(r.scan(&[0x17, 0x03]), (false, true));
        assert_eq!(r.scan(&[0x03, 0x00, 0x03, 0xaa]), (false, true));
        assert_eq!(r.scan(&[0xbb, 0xcc]), (true, false));
        // A whole record and the start of the next in one read.
        assert_eq!(r.scan(&[0x17, 3, 3, 0, 1, 0xdd, 0x17]), (true, true));
        assert_eq!(r.scan(&[3, 3, 0, 2, 1, 2]), (true, false));
        // An empty record ends at its header.
        assert_eq!(r.scan(&[0x15, 3, 3, 0, 0]), (true, false));
    }
}
