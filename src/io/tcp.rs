//! TURN over TCP: STUN and ChannelData framed on a stream (RFC 8656 §12.5).
//! Closing the connection deletes its allocation (§3.1).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::worker::Shared;
use crate::addr::{ClientAddr, Via};
use crate::proto::framing::next_frame_len;

/// Most bytes queued for one slow TCP client before further packets are
/// dropped (relayed media is loss-tolerant; memory is not unbounded).
const MAX_QUEUED: usize = 1 << 20;
/// Largest frame: a STUN header plus a 65,535-byte body.
const MAX_FRAME: usize = 20 + 65_535;

/// The write side of a client connection, shared with the worker.
pub struct Conn {
    stream: Rc<TcpStream>,
    queued: RefCell<Vec<u8>>,
    wake: Notify,
    closed: Cell<bool>,
}

impl Conn {
    /// Send a whole frame, or queue it behind what is already waiting.
    /// Returns false if the frame was dropped.
    pub fn send(&self, frame: &[u8]) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut q = self.queued.borrow_mut();
        if q.is_empty() {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return true,
                Ok(n) => q.extend_from_slice(&frame[n..]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => q.extend_from_slice(frame),
                Err(_) => {
                    self.closed.set(true);
                    return false;
                }
            }
            self.wake.notify_one();
            return true;
        }
        if q.len() + frame.len() > MAX_QUEUED {
            return false;
        }
        q.extend_from_slice(frame);
        true
    }
}

/// Start the reader and writer tasks of a new connection.
pub fn spawn(w: Shared, listener: u16, stream: TcpStream, remote: SocketAddr) {
    let id = w.borrow_mut().conn_id();
    let conn = Rc::new(Conn {
        stream: Rc::new(stream),
        queued: RefCell::new(Vec::new()),
        wake: Notify::new(),
        closed: Cell::new(false),
    });
    w.borrow_mut().conns.insert(id, conn.clone());
    let client = ClientAddr {
        remote,
        via: Via::Stream { listener, conn: id },
    };
    tracing::debug!(%client, "tcp connection");
    let writer = tokio::task::spawn_local(write_loop(conn.clone()));
    tokio::task::spawn_local(async move {
        read_loop(&w, &conn, client).await;
        writer.abort();
        conn.closed.set(true);
        let now = Instant::now();
        let mut wb = w.borrow_mut();
        wb.conns.remove(&id);
        wb.engine.connection_closed(now, client);
        wb.flush(now);
    });
}

async fn read_loop(w: &Shared, conn: &Conn, client: ClientAddr) {
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        if conn.stream.readable().await.is_err() {
            return;
        }
        if filled == buf.len() {
            // Only grows when a frame announced more than fits.
            buf.resize((buf.len() * 2).min(MAX_FRAME), 0);
        }
        match conn.stream.try_read(&mut buf[filled..]) {
            Ok(0) => return,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
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

async fn write_loop(conn: Rc<Conn>) {
    loop {
        conn.wake.notified().await;
        while !conn.queued.borrow().is_empty() {
            if conn.stream.writable().await.is_err() {
                conn.closed.set(true);
                return;
            }
            let mut q = conn.queued.borrow_mut();
            match conn.stream.try_write(&q) {
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
    }
}
