//! The tokio shell around the engine.
//!
//! One worker thread per core, each with a current-thread runtime, its own
//! SO_REUSEPORT socket on every listen address (UDP and TCP), and its own
//! [`Engine`](crate::engine::Engine). The kernel hashes a client's 5-tuple to
//! one worker, which then owns that client's allocation and relay socket: no
//! state is shared between workers, and the data path takes no lock.

mod socket;
mod tcp;
mod worker;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;

use crate::auth::Credentials;
use crate::config::Config;
use crate::engine::{EngineConfig, Shared};
use crate::policy::PeerPolicy;

/// Set up tracing to stderr; `RUST_LOG` overrides the configured level.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The `iceServers` URIs a configuration offers.
pub fn ice_urls(config: &Config) -> Vec<String> {
    let mut urls = Vec::new();
    for l in &config.listen {
        let ip = if l.address.ip().is_unspecified() {
            config.relay.public_address
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
    }
    urls
}

/// A running server: worker threads and the addresses they listen on.
pub struct Server {
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    /// Bound listen addresses, in config order (port 0 resolved).
    pub listen: Vec<SocketAddr>,
}

impl Server {
    /// Bind every listener and start the workers.
    pub fn start(config: Config) -> std::io::Result<Server> {
        let rng = SystemRandom::new();
        let mut nonce_secret = [0u8; 32];
        rng.fill(&mut nonce_secret)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        let n = config.workers.max(1);

        // Bind everything first, so that an error stops startup before any
        // worker runs.
        let mut per_worker: Vec<worker::Sockets> =
            (0..n).map(|_| worker::Sockets::default()).collect();
        let mut listen = Vec::new();
        for (i, l) in config.listen.iter().enumerate() {
            let i = i as u16;
            let mut addr = l.address;
            if l.udp {
                let socks = socket::udp_group(addr, n)?;
                addr = socks[0].local_addr()?;
                for (w, s) in per_worker.iter_mut().zip(socks) {
                    w.udp.push((i, s));
                }
            }
            if l.tcp {
                let socks = socket::tcp_group(addr, n)?;
                addr = socks[0].local_addr()?;
                for (w, s) in per_worker.iter_mut().zip(socks) {
                    w.tcp.push((i, s));
                }
            }
            tracing::info!(
                address = %addr,
                udp = l.udp,
                tcp = l.tcp,
                turn = l.turn,
                "listening"
            );
            listen.push(addr);
        }
        let (lo, hi) = config.relay.ports;
        tracing::info!(
            bind = %config.relay.address,
            advertised = %config.relay.public_address,
            ports = %format!("{lo}-{hi}"),
            workers = n,
            "relay"
        );

        let credentials = Credentials::new(
            &config.realm,
            &config.secrets,
            &config.users,
            &nonce_secret,
            config.nonce_lifetime,
        );
        let policy = PeerPolicy::new(
            config.allow.clone(),
            config.deny.clone(),
            vec![config.relay.public_address, config.relay.address],
            config.relay.ports,
        );
        let shared = std::sync::Arc::new(Shared::default());
        let stun_only: Vec<u16> = (0..config.listen.len() as u16)
            .filter(|&i| !config.listen[i as usize].turn)
            .collect();
        let (stop, stop_rx) = watch::channel(false);
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut workers = Vec::new();
        for (i, sockets) in per_worker.into_iter().enumerate() {
            let mut seed = [0u8; 8];
            rng.fill(&mut seed)
                .map_err(|_| std::io::Error::other("no system randomness"))?;
            let cfg = EngineConfig {
                credentials: credentials.clone(),
                policy: policy.clone(),
                relay_bind: config.relay.address,
                relay_public: config.relay.public_address,
                // Worker i owns every n-th pair of ports (an even one and the
                // odd one after it, for EVEN-PORT), so workers never collide.
                ports: (lo..=hi)
                    .filter(|p| (p / 2 - lo / 2) as usize % n == i)
                    .collect(),
                lifetime: std::time::Duration::from_secs(config.lifetime as u64),
                max_lifetime: std::time::Duration::from_secs(config.max_lifetime as u64),
                seed: u64::from_le_bytes(seed),
                legacy_channels: config.legacy_channel_numbers,
                limits: config.limits,
                strict_expiry: config.strict_expiry,
                expiry_grace: std::time::Duration::from_secs(config.expiry_grace),
                stun_only: stun_only.clone(),
                shared: shared.clone(),
            };
            let stop_rx = stop_rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ferroturn-w{i}"))
                .spawn(move || worker::run(i, cfg, sockets, stop_rx, Instant::now(), unix_now))?;
            workers.push(handle);
        }
        Ok(Server {
            stop,
            workers,
            listen,
        })
    }

    /// Stop every worker and wait for them; allocations are closed.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Run until SIGINT or SIGTERM.
pub fn run(config: Config) -> std::io::Result<()> {
    let server = Server::start(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(wait_for_signal())?;
    tracing::info!("shutting down");
    server.stop();
    Ok(())
}

/// Wait for SIGINT or SIGTERM.
pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
