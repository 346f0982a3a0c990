//! Startup: bind every listener, start the engine hosts (UDP shards and
//! their driver threads, stream workers), and stop them; reload and the
//! watch on this host's addresses.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{mpsc, watch};

use super::command::Mailbox;
use super::control::Control;
use super::derive::{engine_config, nat_addresses_on, update_from};
use super::interfaces;
use super::socket;
use super::stream::{self, guard::StreamGuard, tls};
use super::udp;
use crate::config::{Config, UdpThreads};
use crate::engine::ServerState;

/// The log target of startup and reload lines (operators' filters and the
/// golden logs name it).
const LOG: &str = "ferroturn::io";

/// A running server: worker threads and the addresses they listen on.
pub struct Server {
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    control: Control,
    /// Keys the stateless nonce; kept across reloads so that nonces stay valid.
    nonce_secret: [u8; 32],
    /// Bound listen addresses, in config order (port 0 resolved).
    pub listen: Vec<SocketAddr>,
    /// The TLS acceptor of every `tls` listener, with the `[[listen]]`
    /// index and address it was started with.
    tls: Vec<(usize, SocketAddr, tls::Acceptor)>,
    /// The DTLS context of every `dtls` listener, likewise.
    dtls: Vec<(usize, SocketAddr, udp::dtls::Acceptor)>,
    /// This host's addresses as the peer policy in force knows them.
    host: std::sync::Mutex<Vec<std::net::IpAddr>>,
}

/// How often [`Server::refresh_host`] should look at the interfaces.
pub const HOST_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

impl Server {
    /// Bind every listener and start the workers.
    pub fn start(config: Config) -> std::io::Result<Server> {
        let rng = SystemRandom::new();
        let mut nonce_secret = [0u8; 32];
        rng.fill(&mut nonce_secret)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        let n = config.restart.workers.max(1);

        // Bind everything first, so that an error stops startup before any
        // worker runs.
        let guard = StreamGuard::new(&config.live.stream_limits);
        let peers = std::sync::Arc::new(stream::PeerTable::default());
        let mut per_worker: Vec<stream::Sockets> = (0..n)
            .map(|_| stream::Sockets {
                guard: guard.clone(),
                peers: peers.clone(),
                ..Default::default()
            })
            .collect();
        let mut per_shard: Vec<Vec<(u16, std::net::UdpSocket)>> =
            (0..n).map(|_| Vec::new()).collect();
        let mut listen = Vec::new();
        let mut acceptors = Vec::new();
        let mut dtls_acceptors = Vec::new();
        for (i, l) in config.restart.listen.iter().enumerate() {
            if l.dtls {
                // As for TLS: a bad certificate or key stops startup.
                let refused = |e: String| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{}: listen[{i}]{e}", config.path.display()),
                    )
                };
                let files = (config.live.tls_files(i, l.address))
                    .ok_or_else(|| refused(": \"dtls\" needs cert and key".into()))?;
                let acceptor = udp::dtls::Acceptor::new(&files.cert, &files.key)
                    .map_err(|e| refused(format!(".{e}")))?;
                dtls_acceptors.push((i, l.address, acceptor));
            }
            if l.tls {
                // A bad certificate or key stops startup: FILE: KEY: REASON.
                let Some(files) = config.live.tls_files(i, l.address) else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "{}: listen[{i}]: \"tls\" needs cert and key",
                            config.path.display()
                        ),
                    ));
                };
                let acceptor = tls::Acceptor::new(&files.cert, &files.key).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{}: listen[{i}].{e}", config.path.display()),
                    )
                })?;
                acceptors.push((i, l.address, acceptor));
            }
            let i = i as u16;
            let mut addr = l.address;
            if l.udp || l.dtls {
                let socks = socket::udp_group(addr, n)?;
                addr = socks[0].local_addr()?;
                for (sh, s) in per_shard.iter_mut().zip(socks) {
                    sh.push((i, s));
                }
            }
            if let Some(from) = &l.proxy_from {
                let balancers = Arc::new(stream::proxy_header::Balancers::new(from.clone()));
                for w in &mut per_worker {
                    w.proxy.insert(i, balancers.clone());
                }
            }
            if l.tcp {
                let socks = socket::tcp_group(addr, n)?;
                addr = socks[0].local_addr()?;
                for (w, s) in per_worker.iter_mut().zip(socks) {
                    w.tcp.push((i, s));
                }
            }
            if let Some((_, _, acceptor)) = acceptors.last().filter(|_| l.tls) {
                let socks = socket::tcp_group(addr, n)?;
                addr = socks[0].local_addr()?;
                for (w, s) in per_worker.iter_mut().zip(socks) {
                    w.tls.push((i, s, acceptor.clone()));
                }
            }
            tracing::info!(
                target: LOG,
                address = %addr,
                udp = l.udp,
                tcp = l.tcp,
                tls = l.tls,
                turn = l.turn,
                "listening"
            );
            if l.dtls {
                tracing::info!(target: LOG, address = %addr, "DTLS (RFC 7350) on this UDP port");
            }
            if let Some(from) = &l.proxy_from {
                tracing::info!(target: LOG, address = %addr, balancers = from.len(), "PROXY protocol required");
            }
            listen.push(addr);
        }
        // NAT behaviour discovery (RFC 5780): three more UDP socket groups
        // beside the primary listener, as listeners numbered after the
        // file's; the engines learn which is which (NatSockets) and answer
        // TURN on them with 400 (stun_only).
        let mut nat = None;
        if let Some(nb) = config.restart.nat_behaviour {
            let primary = listen[nb.listen];
            let extra = nat_addresses_on(&config, primary.port()).expect("checked by config");
            let mut sockets = [(nb.listen as u16, primary); 4];
            for (k, addr) in extra.into_iter().enumerate() {
                let index = (config.restart.listen.len() + k) as u16;
                let socks = socket::udp_group(addr, n)?;
                sockets[k + 1] = (index, socks[0].local_addr()?);
                for (sh, s) in per_shard.iter_mut().zip(socks) {
                    sh.push((index, s));
                }
            }
            tracing::info!(
                target: LOG,
                primary = %primary,
                other_address = %nb.other_address,
                other_port = nb.other_port,
                "NAT behaviour discovery (RFC 5780) on four UDP sockets"
            );
            nat = Some(crate::engine::NatSockets { sockets });
        }
        let (lo, hi) = config.restart.relay.ports;
        tracing::info!(
                target: LOG,
            bind = %config.restart.relay.address,
            advertised = %config.restart.relay.public_address,
            ports = %format!("{lo}-{hi}"),
            workers = n,
            "relay"
        );
        if let Some((elo, ehi)) = interfaces::ephemeral_ports()
            && elo <= hi
            && lo <= ehi
        {
            tracing::warn!(
                target: LOG,
                relay_ports = %format!("{lo}-{hi}"),
                ephemeral = %format!("{elo}-{ehi}"),
                "the relay range overlaps the kernel's ephemeral ports: other programs' \
                 sockets may take relay ports; set net.ipv4.ip_local_port_range outside it"
            );
        }

        let own = interfaces::addresses();
        let live = update_from(&config, &nonce_secret, &own);
        // One for the whole server: quotas, reservations, the relay port
        // pool, live relay ports and the unauthenticated-answer limiter,
        // whose slot hash is keyed so that a spoofer cannot aim at another
        // source's slot.
        let mut key = [0u8; 8];
        rng.fill(&mut key)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        let shared = Arc::new(ServerState::new(u64::from_le_bytes(key)));
        let mut stun_only: Vec<u16> = (0..config.restart.listen.len() as u16)
            .filter(|&i| !config.restart.listen[i as usize].turn)
            .collect();
        stun_only.extend(nat.iter().flat_map(|n| n.extra_listeners()));
        let (stop, stop_rx) = watch::channel(false);
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let shards = if per_shard.iter().any(|s| !s.is_empty()) {
            n
        } else {
            0
        };
        let streams = if per_worker
            .iter()
            .any(|w| !w.tcp.is_empty() || !w.tls.is_empty())
        {
            n
        } else {
            0
        };
        // The range joins one pool in `shared` that UDP shards and stream
        // workers all take from, so the engines bring no ports of their own.
        let range: Vec<u16> = (lo..=hi).collect();
        shared.ports.join(crate::engine::ports::Relay::MAIN, &range);
        // Keys every engine's mobility tickets (RFC 8016): a ticket issued
        // by one shard is checked by whichever shard its Refresh reaches.
        let mut ticket_key = [0u8; 32];
        rng.fill(&mut ticket_key)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        let engine_config = || -> std::io::Result<_> {
            let mut seed = [0u8; 8];
            rng.fill(&mut seed)
                .map_err(|_| std::io::Error::other("no system randomness"))?;
            let mut cfg = engine_config(
                &config,
                &live,
                &stun_only,
                nat,
                &shared,
                u64::from_le_bytes(seed),
            );
            cfg.ticket_key = ticket_key;
            // Stream workers issue no tickets; UDP shards set their index.
            cfg.shard = u16::MAX;
            Ok(cfg)
        };
        let mut controls = Vec::new();
        // The UDP data plane: one shard per worker, driven by up to `n`
        // threads as the load asks.
        let mut udp_shards = Vec::new();
        // A DTLS session costs what a TLS connection does, and counts
        // against the same limits (per IP, handshakes per IP, server-wide).
        let dtls_of = |_| {
            let a = dtls_acceptors.iter();
            let a = a.map(|(i, _, a): &(usize, _, udp::dtls::Acceptor)| (*i as u16, a.clone()));
            (a.collect(), guard.clone())
        };
        for (i, sockets) in per_shard.into_iter().enumerate().take(shards) {
            let mut cfg = engine_config()?;
            cfg.shard = i as u16;
            let (shard, mailbox) =
                udp::Shard::new(i, cfg, sockets, dtls_of(i), Instant::now(), unix_now)?;
            udp_shards.push(shard);
            controls.push(mailbox);
        }
        // Each shard reaches the others, to move an allocation whose client
        // came back on another 5-tuple (RFC 8016; see README "Mobility").
        let shard_mailboxes = Arc::new(controls.clone());
        for m in &controls {
            m.send(super::command::HostCommand::Shards(shard_mailboxes.clone()));
        }
        let balance = match config.restart.udp_threads {
            UdpThreads::Adaptive => Some(udp::Balance::default()),
            UdpThreads::Dedicated => None,
        };
        // The kernel fast path: attached before the shards run, so that no
        // channel is bound before their mirrors are in place. It cannot
        // attach: startup stops, saying why.
        let fastpath = super::fastpath::FastPath::start(&config, &listen).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: {e}", config.path.display()),
            )
        })?;
        if let Some(fp) = &fastpath {
            for s in &mut udp_shards {
                let path =
                    super::fastpath::HostPath::new(fp.clone(), &config.live.limits, Instant::now());
                s.set_fastpath(path);
            }
        }
        let (drivers, workers) = udp::start(udp_shards, n, balance, config.restart.udp_scheduling)?;
        // From here on, an error drops `server`, which stops what runs.
        let mut server = Server {
            stop,
            workers,
            control: Control {
                workers: controls,
                drivers,
                streams: guard,
                shared: shared.clone(),
                cluster: config
                    .restart
                    .cluster
                    .as_ref()
                    .map(|_| Arc::new(crate::cluster::Status::default())),
                fastpath,
            },
            nonce_secret,
            listen,
            tls: acceptors,
            dtls: dtls_acceptors,
            host: std::sync::Mutex::new(own),
        };
        // TCP and TLS clients: one tokio worker per core, with engines of
        // their own, when a listener takes streams.
        for (i, sockets) in per_worker.into_iter().enumerate().take(streams) {
            let cfg = engine_config()?;
            let stop_rx = stop_rx.clone();
            let (tx, rx) = mpsc::unbounded_channel();
            server.control.workers.push(Mailbox::tokio(tx));
            let handle = std::thread::Builder::new()
                .name(format!("ferroturn-w{i}"))
                .spawn(move || {
                    stream::run(i, cfg, sockets, stop_rx, rx, Instant::now(), unix_now)
                })?;
            server.workers.push(handle);
        }
        Ok(server)
    }

    /// The control plane's handle.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Apply a reloaded configuration, whose restart-only settings are
    /// those it runs with ([`crate::config::Config::reload`]): credentials,
    /// peer policy, limits, expiry rules and lifetimes take effect at once
    /// in every worker, and TLS listeners re-read the certificate and key
    /// their `listen` entries name.
    pub fn reload(&self, applied: &Config) {
        let own = interfaces::addresses();
        self.control
            .update(update_from(applied, &self.nonce_secret, &own));
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = own;
        self.control.streams.set(&applied.live.stream_limits);
        // Re-read every TLS and DTLS certificate: new connections and
        // sessions get the new one.
        let tls = |a: &tls::Acceptor, c: &Path, k: &Path| a.reload(c, k);
        reload_certificates(applied, "TLS", &self.tls, tls::Acceptor::paths, tls);
        let dtls = |a: &udp::dtls::Acceptor, c: &Path, k: &Path| a.reload(c, k);
        let dtls_paths = udp::dtls::Acceptor::paths;
        reload_certificates(applied, "DTLS", &self.dtls, dtls_paths, dtls);
    }

    /// Read this host's interface addresses again and, if they changed
    /// (DHCP, SLAAC, a floating IP), give every engine the peer policy of
    /// `applied` with the new ones: an address that arrived is judged as
    /// this host's at once. Cheap (one getifaddrs); call it every
    /// [`HOST_REFRESH`].
    pub fn refresh_host(&self, applied: &Config) {
        let now = interfaces::addresses();
        let mut known = self.host.lock().unwrap_or_else(|e| e.into_inner());
        if *known != now {
            tracing::info!(
                target: LOG,
                addresses = now.len(),
                "this host's addresses changed; peer policy updated"
            );
            self.control
                .update(update_from(applied, &self.nonce_secret, &now));
            *known = now;
        }
    }

    /// Call [`Server::refresh_host`] every [`HOST_REFRESH`], forever.
    pub async fn watch_host(&self, applied: &Config) -> std::io::Result<()> {
        let mut every = tokio::time::interval(HOST_REFRESH);
        loop {
            every.tick().await;
            self.refresh_host(applied);
        }
    }

    /// Stop every worker and wait for them; allocations are closed.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        self.control.drivers.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::stop`] (an error at start, a
    /// panicking test) still stops its threads; it does not wait for them.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.control.drivers.stop();
    }
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

/// Read the certificate and key of each listener in `list` again (`what`:
/// "TLS" or "DTLS"), with the files `applied` names for it (or those in use
/// if it names none); on error the previous certificate stays in use.
fn reload_certificates<A>(
    applied: &Config,
    what: &str,
    list: &[(usize, SocketAddr, A)],
    paths: impl Fn(&A) -> (std::path::PathBuf, std::path::PathBuf),
    reload: impl Fn(&A, &Path, &Path) -> Result<(), tls::LoadError>,
) {
    for (i, address, acceptor) in list {
        let (cert, key) = match applied.live.tls_files(*i, *address) {
            Some(f) => (f.cert.clone(), f.key.clone()),
            None => paths(acceptor),
        };
        match reload(acceptor, &cert, &key) {
            Ok(()) => tracing::info!(
                target: LOG,
                listen = i,
                cert = %cert.display(),
                "{what} certificate reloaded"
            ),
            Err(e) => tracing::error!(
                target: LOG,
                "{}: listen[{i}].{e}; the previous certificate stays in use",
                applied.path.display()
            ),
        }
    }
}
