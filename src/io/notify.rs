//! systemd's notification protocol (sd_notify(3)): READY, RELOADING,
//! STOPPING and watchdog pings, sent as datagrams to `$NOTIFY_SOCKET`.
//! Without that variable (not run by systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (Linux).
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = result {
        tracing::debug!("sd_notify {state:?}: {e}");
    }
}

/// Every listener is bound: the service is up.
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// A reload begins (`Type=notify-reload` and `ExecReload=` both accept it).
pub fn reloading() {
    // MONOTONIC_USEC is CLOCK_MONOTONIC, as systemd expects.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// Shutting down (draining, then exiting).
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining");
}

/// Tell the watchdog we are alive.
pub fn watchdog() {
    send("WATCHDOG=1");
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, if systemd
/// set one for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
