//! ferroturn: a STUN/TURN server (RFC 8489, RFC 8656).
//!
//! The sans-IO part lives in the `ferroturn-engine` crate (crates/engine),
//! whose manifest names no runtime, socket or OS crate; its modules are
//! re-exported here under the paths they always had, so `crate::engine::…`
//! and `ferroturn::proto::…` work as before. This crate is the shell.
//!
//! Layers, each importing only the ones above it in this list:
//! - [`proto`], [`addr`], [`policy`], [`auth`] (from the engine crate): wire
//!   formats, address newtypes, the peer policy, credentials and the nonce.
//! - [`config_keys`]: the reference table of every configuration key, which the
//!   man page and README are written from and [`config`]'s tests hold the parser to.
//! - [`config`]: the TOML schema, its validation and the derived runtime settings.
//! - [`engine`] (from the engine crate): the sans-IO protocol state machine.
//! - [`io`]: the tokio shell that feeds the engine with sockets and timers.
//! - [`http`]: a minimal HTTP/1.1 server (one request per connection) and client.
//! - [`metrics`], [`admin`]: Prometheus `/metrics` and the admin API.
//! - [`daemon`]: the server process: signals, reload, drain, systemd.
//! - [`demo`]: the signaling demo and test pages (`ferroturn demo`).

pub use ferroturn_engine::{addr, auth, engine, policy, proto};

pub mod admin;
pub mod cluster;
pub mod config;
pub mod config_keys;
pub mod daemon;
pub mod demo;
pub mod http;
pub mod io;
pub mod log;
pub mod metrics;
