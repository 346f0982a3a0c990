//! The I/O shell around the engine.
//!
//! Each listen address gets one SO_REUSEPORT socket per worker (`workers`,
//! one per core by default); the kernel hashes a client's 5-tuple to one of
//! them, and the engine behind that socket owns the client's allocation and
//! relay sockets. No state is shared between engines but the engine's own
//! [`crate::engine::Shared`], and the data path takes no lock.
//!
//! - [`host`]: one engine with its relay sockets ([`host::Host`]), the part
//!   every transport shares; a transport supplies only readiness and the
//!   way to its clients ([`host::Transport`]).
//! - UDP clients ([`udp`]): one shard (a host with its UDP listener
//!   sockets) per worker, on an epoll loop of our own. Shards move whole
//!   between driver threads: one thread drives them all at low load, each
//!   gets a thread of its own when that thread is busy.
//! - TCP and TLS clients ([`stream`]): a tokio worker per core, each a host
//!   of its own, started only when a listener takes streams.
//! - Startup ([`server`]), the control plane ([`control`], [`command`]),
//!   what engines get from the config ([`derive`]).
//!
//! No module here imports one that imports it back (a test below checks).

mod command;
mod control;
mod derive;
pub mod fastpath;
mod host;
mod ice;
mod interfaces;
mod mmsg;
pub mod notify;
mod poll;
mod server;
mod socket;
mod stream;
mod udp;

pub use command::WorkerReport;
pub use control::Control;
pub use ice::ice_urls;
pub use server::{HOST_REFRESH, Server, wait_for_signal};
pub use stream::guard::Refusal as StreamRefusal;
pub use stream::proxy_header;
pub use stream::proxy_header::Refusal as ProxyRefusal;

#[cfg(test)]
mod module_graph;
