//! The I/O shell around the engine.
//!
//! Each listen address gets one SO_REUSEPORT socket per worker (`workers`,
//! one per core by default); the kernel hashes a client's 5-tuple to one of
//! them, and the engine behind that socket owns the client's allocation and
//! relay sockets. No state is shared between engines, and the data path
//! takes no lock.
//!
//! - UDP clients ([`udp`]): one shard (an engine, its UDP sockets, a batch of
//!   buffers) per worker, on an epoll loop of our own. Shards move whole
//!   between driver threads: one thread drives them all at low load, each
//!   gets a thread of its own when that thread is busy.
//! - TCP and TLS clients ([`worker`]): a tokio worker per core, with its own
//!   engine, started only when a listener takes streams.

mod host;
mod mmsg;
pub mod notify;
mod poll;
mod sched;
mod socket;
mod stream_guard;
mod tcp;
mod tls;
mod udp;
mod worker;

pub use stream_guard::Refusal as StreamRefusal;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::Credentials;
use crate::config::{Config, UdpThreads};
use crate::engine::{EngineConfig, Gauges, ServerState, Session, Stats, Update};
use crate::policy::PeerPolicy;

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

/// A request from the control plane to one worker.
pub enum Command {
    Report {
        sessions: bool,
        reply: oneshot::Sender<WorkerReport>,
    },
    CloseUser {
        user: String,
        reply: oneshot::Sender<usize>,
    },
    CloseRelayPort {
        port: u16,
        reply: oneshot::Sender<bool>,
    },
    Update(Box<Update>),
    Drain(crate::engine::Redirect),
}

/// What one worker reports.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    pub stats: Stats,
    pub gauges: Gauges,
    pub sessions: Vec<Session>,
    /// Packets the shell could not send (socket buffer full).
    pub send_drops: u64,
    pub draining: bool,
    /// Threads driving the UDP data plane now (see [`udp::Balance`]).
    pub udp_threads: u64,
    /// Of those threads, how many run under SCHED_BATCH now.
    pub udp_batch_threads: u64,
    /// Stream clients refused or cut short, by [`StreamRefusal`];
    /// server-wide.
    pub stream_refusals: [u64; StreamRefusal::COUNT],
}

impl WorkerReport {
    fn merge(&mut self, o: WorkerReport) {
        self.stats.merge(&o.stats);
        self.gauges.merge(&o.gauges);
        self.sessions.extend(o.sessions);
        self.send_drops += o.send_drops;
        self.draining |= o.draining;
    }
}

impl Command {
    /// Carry out this command on a worker's `engine`; `send_drops` is the
    /// worker's count of unsent packets, for a report.
    fn carry_out(self, engine: &mut crate::engine::Engine, now: Instant, send_drops: u64) {
        match self {
            Command::Report { sessions, reply } => {
                let _ = reply.send(WorkerReport {
                    stats: engine.stats,
                    gauges: engine.gauges(),
                    sessions: if sessions {
                        engine.sessions(now)
                    } else {
                        Vec::new()
                    },
                    send_drops,
                    draining: engine.draining(),
                    udp_threads: 0,
                    udp_batch_threads: 0,
                    stream_refusals: [0; StreamRefusal::COUNT],
                });
            }
            Command::CloseUser { user, reply } => {
                let _ = reply.send(engine.close_user(now, &user));
            }
            Command::CloseRelayPort { port, reply } => {
                let _ = reply.send(engine.close_relay_port(now, port));
            }
            Command::Update(u) => engine.update(*u),
            Command::Drain(alternate) => engine.drain(alternate),
        }
    }
}

/// Hand the heap memory freed since the last call back to the system:
/// glibc keeps it in its arenas otherwise. For an engine whose last
/// allocation of many is gone.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hand datagram `i` of `batch`, from a peer on the relay socket of `id`,
/// to `engine`, which frames it in place for the client: that client, and
/// where the frame lies in `batch.data`.
#[inline]
fn frame_for_client(
    engine: &mut crate::engine::Engine,
    batch: &mut mmsg::Batch,
    now: Instant,
    id: crate::addr::AllocId,
    i: usize,
) -> Option<(crate::addr::ClientAddr, std::ops::Range<usize>)> {
    use crate::proto::channel_data::{BUF_LEN, HEADROOM};
    let base = mmsg::Batch::base(i);
    let end = HEADROOM + batch.len[i];
    let from = batch.from[i];
    let slot = &mut batch.data[base..base + BUF_LEN];
    let tc = engine.handle_peer(now, id, from, slot, HEADROOM, end)?;
    Some((tc.client, base + tc.start..base + tc.end))
}

/// Where a worker's control-plane commands go: the channel, and for a UDP
/// shard the eventfd that wakes whichever thread drives it (a tokio
/// worker's runtime wakes by itself).
#[derive(Clone)]
pub struct Mailbox {
    tx: mpsc::UnboundedSender<Command>,
    wake: Option<std::sync::Arc<poll::EventFd>>,
}

impl Mailbox {
    fn tokio(tx: mpsc::UnboundedSender<Command>) -> Mailbox {
        Mailbox { tx, wake: None }
    }

    fn woken_by(
        tx: mpsc::UnboundedSender<Command>,
        wake: std::sync::Arc<poll::EventFd>,
    ) -> Mailbox {
        Mailbox {
            tx,
            wake: Some(wake),
        }
    }

    /// Post `c`; false if the receiver is gone.
    fn send(&self, c: Command) -> bool {
        if self.tx.send(c).is_err() {
            return false;
        }
        if let Some(w) = &self.wake {
            w.signal();
        }
        true
    }
}

/// How long the control plane waits for one worker's answer.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The control plane's handle on a running server: reports, operator
/// actions, reload and drain. Cheap to clone; talks to every worker.
#[derive(Clone)]
pub struct Control {
    workers: Vec<Mailbox>,
    hub: std::sync::Arc<udp::Hub>,
    /// Stream limits, per-IP counts and refusals, shared by stream workers.
    streams: std::sync::Arc<stream_guard::StreamGuard>,
}

impl Control {
    /// Counters and gauges of the whole server, and its sessions if asked.
    pub async fn report(&self, sessions: bool) -> WorkerReport {
        let mut total = WorkerReport::default();
        for w in &self.workers {
            let (reply, rx) = oneshot::channel();
            if w.send(Command::Report { sessions, reply }) {
                // A stuck worker must not hang every scrape.
                if let Ok(Ok(r)) = tokio::time::timeout(REPLY_TIMEOUT, rx).await {
                    total.merge(r);
                }
            }
        }
        total.udp_threads = self.hub.placement().iter().filter(|&&n| n > 0).count() as u64;
        total.udp_batch_threads = self.hub.batch_threads() as u64;
        total.stream_refusals = self.streams.refusals();
        total
    }

    /// Close every session of `user`; how many were closed.
    pub async fn close_user(&self, user: &str) -> usize {
        let mut n = 0;
        for w in &self.workers {
            let (reply, rx) = oneshot::channel();
            let user = user.to_owned();
            if w.send(Command::CloseUser { user, reply }) {
                n += tokio::time::timeout(REPLY_TIMEOUT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
            }
        }
        n
    }

    /// Close the session whose relay port is `port`; whether one was.
    pub async fn close_relay_port(&self, port: u16) -> bool {
        let mut closed = false;
        for w in &self.workers {
            let (reply, rx) = oneshot::channel();
            if w.send(Command::CloseRelayPort { port, reply }) {
                closed |= tokio::time::timeout(REPLY_TIMEOUT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(false);
            }
        }
        closed
    }

    /// Apply a reloaded configuration in every worker.
    pub fn update(&self, u: Update) {
        for w in &self.workers {
            w.send(Command::Update(Box::new(u.clone())));
        }
    }

    /// Refuse new allocations everywhere (see [`crate::engine::Engine::drain`]).
    pub fn drain(&self, alternate: crate::engine::Redirect) {
        for w in &self.workers {
            w.send(Command::Drain(alternate.clone()));
        }
    }
}

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
        let guard = stream_guard::StreamGuard::new(&config.live.stream_limits);
        let mut per_worker: Vec<worker::Sockets> = (0..n)
            .map(|_| worker::Sockets {
                guard: guard.clone(),
                ..Default::default()
            })
            .collect();
        let mut per_shard: Vec<Vec<(u16, std::net::UdpSocket)>> =
            (0..n).map(|_| Vec::new()).collect();
        let mut listen = Vec::new();
        let mut acceptors = Vec::new();
        for (i, l) in config.restart.listen.iter().enumerate() {
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
            if l.udp {
                let socks = socket::udp_group(addr, n)?;
                addr = socks[0].local_addr()?;
                for (sh, s) in per_shard.iter_mut().zip(socks) {
                    sh.push((i, s));
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
                address = %addr,
                udp = l.udp,
                tcp = l.tcp,
                tls = l.tls,
                turn = l.turn,
                "listening"
            );
            listen.push(addr);
        }
        let (lo, hi) = config.restart.relay.ports;
        tracing::info!(
            bind = %config.restart.relay.address,
            advertised = %config.restart.relay.public_address,
            ports = %format!("{lo}-{hi}"),
            workers = n,
            "relay"
        );
        if let Some((elo, ehi)) = host::ephemeral_ports()
            && elo <= hi
            && lo <= ehi
        {
            tracing::warn!(
                relay_ports = %format!("{lo}-{hi}"),
                ephemeral = %format!("{elo}-{ehi}"),
                "the relay range overlaps the kernel's ephemeral ports: other programs' \
                 sockets may take relay ports; set net.ipv4.ip_local_port_range outside it"
            );
        }

        let own = host::addresses();
        let live = update_from(&config, &nonce_secret, &own);
        // One for the whole server: quotas, reservations, the relay port
        // pool, live relay ports and the unauthenticated-answer limiter,
        // whose slot hash is keyed so that a spoofer cannot aim at another
        // source's slot.
        let mut key = [0u8; 8];
        rng.fill(&mut key)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        let shared = std::sync::Arc::new(ServerState::new(u64::from_le_bytes(key)));
        let stun_only: Vec<u16> = (0..config.restart.listen.len() as u16)
            .filter(|&i| !config.restart.listen[i as usize].turn)
            .collect();
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
        let engine_config = || -> std::io::Result<EngineConfig> {
            let mut seed = [0u8; 8];
            rng.fill(&mut seed)
                .map_err(|_| std::io::Error::other("no system randomness"))?;
            let relay = &config.restart.relay;
            Ok(EngineConfig {
                live: live.clone(),
                relay_bind: relay.address,
                relay_public: relay.public_address,
                relay_bind_v6: relay.address_v6,
                relay_public_v6: relay.public_address_v6,
                more_relays: relay.more.clone(),
                same_family_default: relay.default_family
                    == crate::config::DefaultFamily::SameAsClient,
                ports: Vec::new(),
                seed: u64::from_le_bytes(seed),
                stun_only: stun_only.clone(),
                shared: shared.clone(),
            })
        };
        let mut controls = Vec::new();
        // The UDP data plane: one shard per worker, driven by up to `n`
        // threads as the load asks.
        let mut udp_shards = Vec::new();
        for (i, sockets) in per_shard.into_iter().enumerate().take(shards) {
            let cfg = engine_config()?;
            let (shard, mailbox) = udp::Shard::new(i, cfg, sockets, Instant::now(), unix_now)?;
            udp_shards.push(shard);
            controls.push(mailbox);
        }
        let balance = match config.restart.udp_threads {
            UdpThreads::Adaptive => Some(udp::Balance::default()),
            UdpThreads::Dedicated => None,
        };
        let (hub, workers) = udp::start(udp_shards, n, balance, config.restart.udp_scheduling)?;
        // From here on, an error drops `server`, which stops what runs.
        let mut server = Server {
            stop,
            workers,
            control: Control {
                workers: controls,
                hub,
                streams: guard,
            },
            nonce_secret,
            listen,
            tls: acceptors,
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
                    worker::run(i, cfg, sockets, stop_rx, rx, Instant::now(), unix_now)
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
        let own = host::addresses();
        self.control
            .update(update_from(applied, &self.nonce_secret, &own));
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = own;
        self.control.streams.set(&applied.live.stream_limits);
        // Re-read every TLS certificate: new connections get the new one.
        for (i, address, acceptor) in &self.tls {
            let (cert, key) = match applied.live.tls_files(*i, *address) {
                Some(f) => (f.cert.clone(), f.key.clone()),
                None => acceptor.paths(),
            };
            match acceptor.reload(&cert, &key) {
                Ok(()) => tracing::info!(
                    listen = i,
                    cert = %cert.display(),
                    "TLS certificate reloaded"
                ),
                Err(e) => tracing::error!(
                    "{}: listen[{i}].{e}; the previous certificate stays in use",
                    applied.path.display()
                ),
            }
        }
    }

    /// Read this host's interface addresses again and, if they changed
    /// (DHCP, SLAAC, a floating IP), give every engine the peer policy of
    /// `applied` with the new ones: an address that arrived is judged as
    /// this host's at once. Cheap (one getifaddrs); call it every
    /// [`HOST_REFRESH`].
    pub fn refresh_host(&self, applied: &Config) {
        let now = host::addresses();
        let mut known = self.host.lock().unwrap_or_else(|e| e.into_inner());
        if *known != now {
            tracing::info!(
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
        self.control.hub.stop();
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
        self.control.hub.stop();
    }
}

/// The engines' live settings of `config`: what they start with, and what
/// a reload sends them. Its realm is the running one (a restart-only
/// setting): keys and nonces depend on it.
fn update_from(config: &Config, nonce_secret: &[u8], own: &[std::net::IpAddr]) -> Update {
    let live = &config.live;
    let seconds = std::time::Duration::from_secs;
    Update {
        credentials: Credentials::new(
            &config.restart.realm,
            &live.secrets,
            &live.users,
            nonce_secret,
            live.nonce_lifetime,
        ),
        policy: policy_from(config, own),
        limits: live.limits,
        strict_expiry: live.strict_expiry,
        expiry_grace: seconds(live.expiry_grace),
        lifetime: seconds(live.allocation.lifetime.into()),
        max_lifetime: seconds(live.allocation.max_lifetime.into()),
        legacy_channels: live.allocation.legacy_channel_numbers,
    }
}

/// The peer policy of `config` on this host: its relay addresses (where a
/// live relay port is a peer), every listening socket of the server, which
/// no peer may be, and `own`, the interfaces' addresses as last read.
fn policy_from(config: &Config, own: &[std::net::IpAddr]) -> PeerPolicy {
    let r = &config.restart.relay;
    let mut relays = vec![r.public_address, r.address];
    relays.extend(r.public_address_v6);
    relays.extend(r.address_v6);
    relays.extend(
        r.more
            .iter()
            .flat_map(|m| [Some(m.public), Some(m.bind), m.public_v6, m.bind_v6])
            .flatten(),
    );
    let restart = &config.restart;
    let mut listeners: Vec<SocketAddr> = restart.listen.iter().map(|l| l.address).collect();
    listeners.extend(restart.metrics.as_ref().map(|m| m.address));
    listeners.extend(restart.admin.as_ref().and_then(|a| a.address));
    // Closed whether or not `ferroturn demo` runs it.
    listeners.push(config.live.demo.address);
    PeerPolicy::new(
        config.live.allow.clone(),
        config.live.deny.clone(),
        relays,
        r.ports,
    )
    .with_listeners(listeners)
    .with_own_addresses(own.iter().copied())
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
