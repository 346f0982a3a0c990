//! A text-message session between one of the demo's transports (a plain
//! WebSocket, or SockJS with its WebSocket and HTTP transports) and the
//! protocol spoken over it (STOMP, see the `stomp` module).
//!
//! The transport owns the connection(s): it puts each message the client
//! sends on [`Session::incoming`], in order, and closes that channel when
//! the client is gone (closed, timed out, or over a limit); it writes each
//! [`Outgoing`] it takes from the protocol's sender to the client, in order,
//! and closes the client when it sees [`Outgoing::Close`] or when the
//! protocol drops its sender. The protocol never sees HTTP, frames or
//! SockJS's envelope.

use std::net::IpAddr;

use tokio::sync::mpsc;

/// Messages buffered each way between a transport and its protocol; a
/// protocol that cannot queue an answer treats the client as too slow.
pub const QUEUE: usize = 64;

/// One client's session, as a protocol sees it.
#[derive(Debug)]
pub struct Session {
    /// The client's address (the TCP peer, or the address the HTTP
    /// requests of a SockJS session come from).
    pub peer: IpAddr,
    /// The client's messages; `None` once the client is gone.
    pub incoming: mpsc::Receiver<String>,
    /// What goes back to the client.
    pub outgoing: mpsc::Sender<Outgoing>,
}

/// A message from the protocol to its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// One text message for the client.
    Text(String),
    /// Close the session with this code (WebSocket close codes; SockJS
    /// carries them in its close frame) and reason, after what was sent
    /// before it.
    Close { code: u16, reason: String },
}

/// A new session and the transport's ends of its two channels: the
/// transport sends the client's messages into the first and reads what to
/// write from the second.
pub fn pair(peer: IpAddr) -> (Session, mpsc::Sender<String>, mpsc::Receiver<Outgoing>) {
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    (
        Session {
            peer,
            incoming: in_rx,
            outgoing: out_tx,
        },
        in_tx,
        out_rx,
    )
}
