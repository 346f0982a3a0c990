//! A stream connection as the rest of its worker sees it: its write side
//! ([`Conn`]), the deadlines others move ([`Clock`]), the TLS record watch
//! on its socket ([`Watched`]), and what a connection asks of the worker
//! that owns it ([`Owner`]). The reading and writing tasks are in
//! [`super::tcp`]; the worker in [`super::worker`].

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::guard::{Refusal, StreamGuard};
use crate::addr::ClientAddr;

/// What a connection asks of the worker that owns it. Connections hold
/// their worker as an [`OwnerCell`], so that they need not know its type.
pub trait Owner {
    /// How many connections the worker holds.
    fn connections(&self) -> usize;
    /// Take `conn` in; its id.
    fn admit(&mut self, conn: Rc<Conn>) -> u32;
    /// Stream limits, per-IP counts and refusals, shared by every worker.
    fn guard(&self) -> Arc<StreamGuard>;
    /// A whole message from `client`, read at `now`.
    fn message(&mut self, now: Instant, client: ClientAddr, message: &[u8]);
    /// Whether `client` holds an allocation.
    fn holds_allocation(&self, client: ClientAddr) -> bool;
    /// Connection `id` of `client` closed at `now`: its allocation ends
    /// (RFC 8656 §3.1).
    fn closed(&mut self, now: Instant, id: u32, client: ClientAddr);
    /// Peer connection `conn` of a TCP allocation ended (RFC 6062).
    fn peer_conn_closed(&self, conn: u32);
}

/// A worker, as its connections hold it. Every task of a worker runs on its
/// one thread: a borrow is never held across an await.
pub type OwnerCell = Rc<RefCell<dyn Owner>>;

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
pub(super) struct Records {
    /// Header bytes of the next record seen so far.
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current record still to come.
    left: usize,
}

impl Records {
    /// Follow the records through `data`, just read: whether one ended in
    /// it, and whether one is unfinished at its end.
    pub(super) fn scan(&mut self, mut data: &[u8]) -> (bool, bool) {
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
    pub(super) record_since: Cell<Option<Instant>>,
    /// Since when the connection holds no allocation; `None` while it does.
    pub(super) unallocated_since: Cell<Option<Instant>>,
    /// Wakes the reader to arm its deadline again.
    pub(super) changed: Notify,
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
    pub(super) fn record_progress(&self, ended: bool, unfinished: bool) {
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

/// The write side of a client connection, shared with the worker.
pub struct Conn {
    /// The socket of a plain TCP connection, for writes without the queue.
    pub(super) direct: Option<Rc<TcpStream>>,
    pub(super) queued: RefCell<Vec<u8>>,
    /// Where each queued frame ends, for TLS: every frame goes out in its
    /// own TLS record, as clients that read one message at a time (coturn's
    /// among them) expect; a record holding several frames can leave the
    /// tail unread in their TLS buffer until more data arrives.
    pub(super) ends: RefCell<Vec<usize>>,
    /// Bytes the TLS writer took from the queue and has not yet handed to
    /// rustls: they count against the queue's budget.
    pub(super) in_flight: Cell<usize>,
    pub(super) wake: Notify,
    pub(super) closed: Cell<bool>,
    pub clock: Rc<Clock>,
    pub(super) guard: Arc<StreamGuard>,
    /// A TLS connection's version and suite, for usage events.
    pub(super) tls_names: Cell<Option<crate::cluster::usage::TlsNames>>,
    /// The peer connection a ConnectionBind bound this connection to (RFC
    /// 6062 §5.4), for its reader to pick up after the message.
    pub(super) pipe: RefCell<Option<super::tcp_relay::PeerEnd>>,
    /// Set when the connection turns into a pipe: the writer hands its
    /// half back once the queue is written.
    pub(super) handover: Cell<bool>,
}

impl Conn {
    /// A connection without anything queued; `direct` is the socket of a
    /// plain TCP connection, written without the queue when it can be.
    pub fn new(direct: Option<Rc<TcpStream>>, clock: Rc<Clock>, guard: Arc<StreamGuard>) -> Conn {
        Conn {
            direct,
            queued: RefCell::new(Vec::new()),
            ends: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            wake: Notify::new(),
            closed: Cell::new(false),
            clock,
            guard,
            tls_names: Cell::new(None),
            pipe: RefCell::new(None),
            handover: Cell::new(false),
        }
    }

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

    pub(super) fn push(&self, q: &mut Vec<u8>, frame: &[u8]) {
        q.extend_from_slice(frame);
        if self.direct.is_none() {
            self.ends.borrow_mut().push(q.len());
        }
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
