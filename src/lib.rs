//! ferroturn: a STUN/TURN server (RFC 8489, RFC 8656).
//!
//! Layers, each importing only the ones above it in this list:
//! - [`proto`]: wire formats (STUN over the `stun` crate, ChannelData framing). Imports nothing of ours.
//! - [`addr`]: newtypes that give addresses, ports and channel numbers their meaning.
//! - [`policy`]: which peer addresses a client may reach.
//! - [`auth`]: long-term credentials, TURN REST API credentials and the stateless nonce.
//! - [`config_keys`]: the reference table of every configuration key, which the
//!   man page and README are written from and [`config`]'s tests hold the parser to.
//! - [`config`]: the TOML schema, its validation and the derived runtime settings.
//! - [`engine`]: the sans-IO protocol state machine.
//! - [`io`]: the tokio shell that feeds the engine with sockets and timers.
//! - [`http`]: a minimal HTTP/1.1 server (one request per connection) and client.
//! - [`metrics`], [`admin`]: Prometheus `/metrics` and the admin API.
//! - [`daemon`]: the server process: signals, reload, drain, systemd.
//! - [`demo`]: the signaling demo and test pages (`ferroturn demo`).

pub mod addr;
pub mod admin;
pub mod auth;
pub mod config;
pub mod config_keys;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod http;
pub mod io;
pub mod log;
pub mod metrics;
pub mod policy;
pub mod proto;
