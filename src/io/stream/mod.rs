//! The stream listeners: TCP and TLS clients (RFC 8656 §3.1), served by
//! tokio workers, each one engine host of its own.
//!
//! From the bottom up: [`guard`] (stream limits and per-IP counts every
//! worker shares), [`conn`] (a connection's write side and deadlines, and
//! what it asks of its worker), [`tls`] (certificates and handshakes),
//! [`tcp`] (a connection's reading and writing tasks), [`proxy_header`]
//! (the PROXY protocol header a load balancer puts first), [`worker`] (the
//! thread: listeners, relay sockets, timers, commands).

mod conn;
pub mod guard;
pub mod proxy_header;
mod tcp;
mod tcp_relay;
pub mod tls;
mod worker;

pub use tcp_relay::PeerTable;
pub use worker::{Sockets, run};
