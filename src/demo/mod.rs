//! The signaling demo (being written): an HTTP server with WebSocket
//! signaling, `/ice-servers`, the call page and the trickle-ICE page.

use crate::config::Config;

/// Run the TURN server and the demo's HTTP server until SIGINT or SIGTERM.
pub fn run(config: Config) -> std::io::Result<()> {
    let _ = config;
    Err(std::io::Error::other("the demo is not built yet"))
}
