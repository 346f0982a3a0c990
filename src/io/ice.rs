//! The `iceServers` URIs a configuration offers (for `ferroturn
//! credentials --json` and the demo's `/ice-servers`).

use std::net::SocketAddr;

use crate::config::Config;

/// The `iceServers` URIs a configuration offers.
pub fn ice_urls(config: &Config) -> Vec<String> {
    let mut urls = Vec::new();
    for l in &config.restart.listen {
        let ip = if l.address.ip().is_unspecified() {
            config.restart.relay.public_address
        } else {
            l.address.ip()
        };
        let host = SocketAddr::new(ip, l.address.port()).to_string();
        urls.push(format!("stun:{host}"));
        if l.turn && l.udp {
            urls.push(format!("turn:{host}?transport=udp"));
        }
        if l.turn && l.tcp {
            urls.push(format!("turn:{host}?transport=tcp"));
        }
        if l.turn && l.tls {
            // Browsers check the certificate against this host: put the
            // certificate's name here in production.
            urls.push(format!("turns:{host}?transport=tcp"));
        }
    }
    urls
}
