//! TURN over TCP and TLS: STUN and ChannelData framed on a stream (RFC 8656
//! §12.5; over TLS the same framing, §3.1). Closing the connection deletes
//! its allocation (§3.1).
//!
//! A plain TCP connection is written straight from [`Conn::send`] when the
//! socket takes the whole frame; a TLS connection always goes through the
//! queue and its writer task, which encrypts. Both share the framing read
//! loop and the queue.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::server::TlsStream;

use super::worker::Shared;
use crate::addr::{ClientAddr, Via};
use crate::proto::framing::next_frame_len;

/// Most bytes queued for one slow TCP client before further packets are
/// dropped (relayed media is loss-tolerant; memory is not unbounded).
const MAX_QUEUED: usize = 1 << 20;
/// How long a connection may stay silent while it has no allocation.
const UNALLOCATED_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// Most stream connections one worker holds; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16_384;

/// Largest frame: a STUN header plus a 65,535-byte body.
const MAX_FRAME: usize = 20 + 65_535;

/// The read side of a connection.
enum Reader {
    Tcp(Rc<TcpStream>),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

impl Reader {
    /// Read some bytes; 0 at the end of the stream.
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
    Tls(WriteHalf<TlsStream<TcpStream>>),
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
    wake: Notify,
    closed: Cell<bool>,
}

impl Conn {
    /// Send a whole frame, or queue it behind what is already waiting.
    /// Never blocks. Returns false if the frame was dropped.
    pub fn send(&self, frame: &[u8]) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut q = self.queued.borrow_mut();
        if q.is_empty() {
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
        if q.len() + frame.len() > MAX_QUEUED {
            return false;
        }
        self.push(&mut q, frame);
        true
    }

    fn push(&self, q: &mut Vec<u8>, frame: &[u8]) {
        q.extend_from_slice(frame);
        if self.direct.is_none() {
            self.ends.borrow_mut().push(q.len());
        }
    }
}

/// Start the reader and writer tasks of a new TCP connection.
pub fn spawn(w: Shared, listener: u16, stream: TcpStream, remote: SocketAddr) {
    let stream = Rc::new(stream);
    start(
        w,
        listener,
        remote,
        Some(stream.clone()),
        Reader::Tcp(stream.clone()),
        Writer::Tcp(stream),
        "tcp connection",
    );
}

/// Start the reader and writer tasks of a TLS connection whose handshake
/// is done.
pub fn spawn_tls(w: Shared, listener: u16, stream: TlsStream<TcpStream>, remote: SocketAddr) {
    let (r, wr) = tokio::io::split(stream);
    start(
        w,
        listener,
        remote,
        None,
        Reader::Tls(r),
        Writer::Tls(wr),
        "tls connection",
    );
}

fn start(
    w: Shared,
    listener: u16,
    remote: SocketAddr,
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
    let conn = Rc::new(Conn {
        direct,
        queued: RefCell::new(Vec::new()),
        ends: RefCell::new(Vec::new()),
        wake: Notify::new(),
        closed: Cell::new(false),
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
        read_loop(&w, reader, client).await;
        writer.abort();
        conn.closed.set(true);
        let now = Instant::now();
        let mut wb = w.borrow_mut();
        wb.conns.remove(&id);
        wb.engine.connection_closed(now, client);
        wb.flush(now);
    });
}

async fn read_loop(w: &Shared, mut reader: Reader, client: ClientAddr) {
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // Only grows when a frame announced more than fits.
            buf.resize((buf.len() * 2).min(MAX_FRAME), 0);
        }
        // A connection without an allocation may idle only so long: it
        // holds a socket and a buffer without having authenticated.
        let read = reader.read(&mut buf[filled..]);
        let n = match tokio::time::timeout(UNALLOCATED_IDLE, read).await {
            Ok(r) => r,
            Err(_) if w.borrow().engine.allocation_of(client).is_none() => {
                tracing::debug!(%client, "idle without an allocation; closing");
                return;
            }
            Err(_) => continue,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        let mut start = 0;
        let now = Instant::now();
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
                    return;
                }
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
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
                    let mut start = 0;
                    for &end in &ends {
                        // One write, one record (frames are at most 64 KiB,
                        // so up to 5 records for the largest).
                        if w.write_all(&out[start..end]).await.is_err() {
                            conn.closed.set(true);
                            return;
                        }
                        start = end;
                    }
                    if w.flush().await.is_err() {
                        conn.closed.set(true);
                        return;
                    }
                    out.clear();
                    ends.clear();
                }
            }
        }
    }
}
