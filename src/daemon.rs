//! The server process: workers, metrics and admin listeners, signals,
//! live reload, drain, and systemd notifications.
//!
//! - SIGHUP re-reads the config file and applies what can change live
//!   (credentials, peer policy, limits, log level); an invalid file is
//!   refused with the same FILE: KEY: REASON as at startup, on one line and
//!   without any value of `[auth]` or `[admin]` (see `config::parse`), and
//!   the old config stays in force.
//! - SIGTERM drains: new allocations are refused (300 with ALTERNATE-SERVER
//!   when `server.alternate` is set, else 508), existing ones live until
//!   they end or `server.drain_timeout` passes. A second SIGTERM or a
//!   SIGINT exits at once.
//! - SIGINT (Ctrl-C) stops at once, closing every allocation.

use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, Config};
use crate::io::{Server, notify};

/// Run the server until it is told to stop.
pub fn run(config: Config) -> std::io::Result<()> {
    let server = Server::start(config.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(supervise(&server, config));
    tracing::info!("stopped");
    server.stop();
    result
}

async fn supervise(server: &Server, config: Config) -> std::io::Result<()> {
    let control = server.control();
    // Bound before READY=1, so that a taken port stops startup.
    if let Some(m) = &config.restart.metrics {
        let listener = bind(m.address, "metrics").await?;
        let hosts = m.hosts.clone();
        tokio::spawn(crate::metrics::serve(listener, control.clone(), hosts));
    }
    let cluster = crate::cluster::start(&config, &control);
    let admin = match config.admin() {
        Some(a) => Some(crate::admin::Admin::start(&a, control.clone()).await?),
        None => None,
    };
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    notify::ready();
    tracing::info!("ready");

    let mut current = config;
    let mut host = tokio::time::interval(crate::io::HOST_REFRESH);
    loop {
        tokio::select! {
            _ = host.tick() => server.refresh_host(&current),
            _ = hup.recv() => {
                notify::reloading();
                current = reload(server, current);
                if let Some(c) = &cluster {
                    c.reloaded(&current);
                }
                if let Some(a) = &admin {
                    a.reload(current.admin().as_ref());
                }
                notify::ready();
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping");
                notify::stopping();
                return Ok(());
            }
            _ = term.recv() => break,
            _ = tick(&mut watchdog) => notify::watchdog(),
        }
    }

    // Drain: refuse new allocations, let the existing ones finish.
    notify::stopping();
    control.drain(current.live.redirect());
    let timeout = Duration::from_secs(current.live.drain_timeout);
    let deadline = Instant::now() + timeout;
    let live = control.report(false).await.gauges.allocations;
    tracing::info!(
        allocations = live,
        timeout_secs = timeout.as_secs(),
        "SIGTERM: draining; a second SIGTERM or SIGINT stops at once"
    );
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = poll.tick() => {
                let live = control.report(false).await.gauges.allocations;
                if live == 0 {
                    tracing::info!("drained: no allocation left");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    tracing::info!(allocations = live, "drain timeout: closing the rest");
                    return Ok(());
                }
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tick(&mut watchdog) => notify::watchdog(),
        }
    }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> std::io::Result<tokio::net::TcpListener> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} listener {addr}: {e}")))?;
    tracing::info!(address = %l.local_addr()?, "{what} listening");
    Ok(l)
}

/// The next watchdog tick, or never without a watchdog.
async fn tick(w: &mut Option<tokio::time::Interval>) {
    match w {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Re-read the config file; apply it, or keep `current` if it is invalid.
fn reload(server: &Server, current: Config) -> Config {
    match config::load(&current.path) {
        Ok(new) => {
            // What needs a restart stays as it runs, so that the next reload
            // compares against it (and warns again) and never applies it.
            let (kept, changed) = current.reload(new);
            for key in changed {
                tracing::warn!(key, "changed in the config: needs a restart to apply");
            }
            server.reload(&kept);
            crate::log::set_level(&kept.live.log_level);
            tracing::info!(path = %kept.path.display(), "configuration reloaded");
            kept
        }
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e}");
            current
        }
    }
}
