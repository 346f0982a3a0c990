//! ferroturn's engine: the sans-IO core of a STUN/TURN server (RFC 8489,
//! RFC 8656). It takes bytes, addresses and the current time and gives back
//! packets to send, relay sockets to open or close and its next wake-up; it
//! owns no socket, clock or task. This crate's manifest names no runtime,
//! socket or OS crate, so the compiler refuses any I/O here; the `ferroturn`
//! crate is the shell that drives it, and re-exports these modules under the
//! paths they had there (`ferroturn::engine`, `ferroturn::proto`, ...).
//!
//! Layers, each importing only the ones above it in this list:
//! - [`proto`]: wire formats (STUN over the `stun` crate, ChannelData framing). Imports nothing of ours.
//! - [`addr`]: newtypes that give addresses, ports and channel numbers their meaning.
//! - [`policy`]: which peer addresses a client may reach.
//! - [`auth`]: long-term credentials, TURN REST API credentials and the stateless nonce.
//! - [`engine`]: the protocol state machine, its quotas and its counters.

pub mod addr;
pub mod auth;
pub mod engine;
pub mod policy;
pub mod proto;
