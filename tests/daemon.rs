//! The server process in production: live reload (SIGHUP), drain (SIGTERM)
//! and its logs, with the real binary on 127.0.0.1.
//!
//! - Reload during a relay: no round trip lost, the new secret and user
//!   work at once, the removed secret gets 401, the old allocation still
//!   refreshes, the new log level applies; an invalid file is refused with
//!   `ferroturn check`'s FILE: KEY: REASON and the running config stays; a
//!   changed `[[listen]]` is logged as needing a restart.
//! - Drain: new Allocates get 508 (or 300 + ALTERNATE-SERVER), the existing
//!   allocation relays on, and the process exits when it is deleted, when
//!   `drain_timeout` passes, or at once on a second SIGTERM or a SIGINT.
//! - Logs of an authenticated debug session never hold a password, secret,
//!   REST password or long-term key; JSON logs are JSON, line by line.

mod common;
mod raw;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{EchoPeer, LOCALHOST, REALM, ServerConfig, TempDir, binding_udp, free_port};
use ferroturn::proto::stun::{self as wire, Request};
use raw::{Link, RawClient};
use stun::attributes::ATTR_ALTERNATE_SERVER;
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

const CHANNEL: u16 = 0x4000;

// ---- A ferroturn child whose config the test rewrites ----------------------

struct Daemon {
    child: Child,
    addr: SocketAddr,
    relay: (u16, u16),
    config_path: PathBuf,
    log_path: PathBuf,
    _dir: TempDir,
}

/// The config text: the common test config for `port` plus `tail` (TOML
/// appended after `[log]`: keys for `[log]` first, then other tables). The
/// `[server]` table is left to `tail`, with `workers = 2` by default.
fn config_text(c: &ServerConfig, port: u16, relay: (u16, u16), tail: &str) -> String {
    assert!(c.workers.is_none(), "put workers in the tail's [server]");
    let mut t = c.to_toml(port, relay);
    t.push_str(tail);
    if !tail.contains("[server]") {
        t.push_str("\n[server]\nworkers = 2\n");
    }
    t
}

fn base_config() -> ServerConfig {
    ServerConfig {
        log_level: "info".into(),
        ..ServerConfig::default()
    }
}

impl Daemon {
    fn start(c: &ServerConfig, tail: &str) -> Daemon {
        let relay = common::relay_block();
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            match Daemon::try_start(c, tail, port, relay) {
                Ok(d) => return d,
                Err(log) => last = log,
            }
        }
        panic!("ferroturn did not start:\n{last}");
    }

    fn try_start(
        c: &ServerConfig,
        tail: &str,
        port: u16,
        relay: (u16, u16),
    ) -> Result<Daemon, String> {
        let dir = TempDir::new("daemon");
        let config_path = dir.path().join("ferroturn.toml");
        let log_path = dir.path().join("ferroturn.log");
        fs::write(&config_path, config_text(c, port, relay, tail)).unwrap();
        let addr = SocketAddr::from((LOCALHOST, port));
        let child = common::spawn_ferroturn(&config_path, &log_path, addr, || true)?;
        Ok(Daemon {
            child,
            addr,
            relay,
            config_path,
            log_path,
            _dir: dir,
        })
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Replace the config file (atomically, as editors and tools do).
    fn write_config(&self, text: &str) {
        let tmp = self.config_path.with_extension("toml.new");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &self.config_path).unwrap();
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Wait until the log has `n` lines containing `needle`.
    fn wait_log_count(&self, needle: &str, n: usize, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.lines().filter(|l| l.contains(needle)).count() >= n {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} (x{n}) in the log within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_log(&self, needle: &str, limit: Duration) -> String {
        self.wait_log_count(needle, 1, limit)
    }

    /// Wait for the process to exit: its status, or `None` after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn client(&self, user: &str, pass: &str) -> RawClient {
        RawClient::udp(self.addr, REALM, user, pass)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- ferroturn log ----\n{}---- end ----", self.log());
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rest(secret: &str, name: &str) -> (String, String) {
    ferroturn::auth::rest_credentials(secret, name, unix_now() + 3600)
}

/// The answer to a signed Allocate: its error code, if any.
fn allocate_code(c: &mut RawClient) -> Option<u16> {
    let r = c.signed(Request::new(METHOD_ALLOCATE).transport(17));
    wire::error_code(&r)
}

fn refresh_code(c: &mut RawClient, lifetime: u32) -> Option<u16> {
    let r = c.signed(Request::new(METHOD_REFRESH).lifetime(lifetime));
    wire::error_code(&r)
}

/// Learn a nonce now (a Refresh without allocation: 437), so that a later
/// Allocate is the first request the server judges.
fn learn_nonce(c: &mut RawClient) {
    assert_eq!(refresh_code(c, 600), Some(437));
}

fn udp(c: &RawClient) -> UdpSocket {
    match &c.link {
        Link::Udp(s) => s.try_clone().unwrap(),
        Link::Tcp(_) => panic!("UDP client expected"),
    }
}

/// One ChannelData round trip through the echo peer: true if the echo of
/// exactly this payload came back within `limit`.
fn round_trip(sock: &UdpSocket, server: SocketAddr, seq: u64, limit: Duration) -> bool {
    let mut frame = Vec::with_capacity(104);
    frame.extend_from_slice(&CHANNEL.to_be_bytes());
    frame.extend_from_slice(&100u16.to_be_bytes());
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.resize(104, 0xA5);
    sock.send_to(&frame, server).unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    let mut echoed = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if buf[..n] == frame[..] => {
                echoed = true;
                break;
            }
            Ok(_) | Err(_) => {}
        }
    }
    // The socket is shared with its RawClient: give back its timeout.
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    echoed
}

/// A client of `d` with an allocation and channel 0x4000 to `peer`.
fn relaying_client(d: &Daemon, user: &str, pass: &str, peer: SocketAddr) -> RawClient {
    let mut c = d.client(user, pass);
    let relayed = c.allocate();
    assert!(
        (d.relay.0..=d.relay.1).contains(&relayed.port()),
        "relay {relayed} outside {:?}",
        d.relay
    );
    c.channel_bind(CHANNEL, peer);
    assert!(
        round_trip(&udp(&c), d.addr, 0, Duration::from_secs(2)),
        "no first round trip"
    );
    c
}

// ---- Live reload ---------------------------------------------------------

#[derive(Default)]
struct RelayStats {
    sent: AtomicUsize,
    ok: AtomicUsize,
    lost: AtomicUsize,
}

#[test]
fn reload_during_relay_loses_nothing_and_applies_credentials() {
    const OLD_SECRET: &str = "old-secret-3e1f";
    const NEW_SECRET: &str = "new-secret-9b7c";
    let peer = EchoPeer::start();
    let mut c = base_config();
    c.secrets = vec![OLD_SECRET.into()];
    let d = Daemon::start(&c, "");
    let port = d.addr.port();

    // An allocation with a static user, relaying round trips continuously
    // (one at a time, every 2 ms) until told to stop.
    let mut alice = relaying_client(&d, common::USER, common::PASSWORD, peer.addr);
    let old_rest = rest(OLD_SECRET, "carol");
    let mut before = d.client(&old_rest.0, &old_rest.1);
    assert_eq!(allocate_code(&mut before), None, "old secret before reload");

    let stats = Arc::new(RelayStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let relay = {
        let (sock, server, stats, stop) = (udp(&alice), d.addr, stats.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seq = 1u64;
            let end = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end && seq < 10_000 {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                // Generous: a late echo on a busy machine is not a loss.
                if round_trip(&sock, server, seq, Duration::from_secs(3)) {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.lost.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let wait_ok = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.ok.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "relay stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_ok(100);
    assert!(
        !d.log().contains("DEBUG"),
        "debug lines at level info:\n{}",
        d.log()
    );

    // New secret, one more user, level debug; SIGHUP mid-relay.
    let mut c2 = c.clone();
    c2.secrets = vec![NEW_SECRET.into()];
    c2.users.push(("bob".into(), "builder-4d2a".into()));
    c2.log_level = "debug".into();
    d.write_config(&config_text(&c2, port, d.relay, ""));
    d.signal(libc::SIGHUP);
    d.wait_log("configuration reloaded", Duration::from_secs(5));
    let at_reload = stats.ok.load(Ordering::Relaxed);
    wait_ok(at_reload + 200);
    stop.store(true, Ordering::Relaxed);
    relay.join().unwrap();
    let (sent, ok, lost) = (
        stats.sent.load(Ordering::Relaxed),
        stats.ok.load(Ordering::Relaxed),
        stats.lost.load(Ordering::Relaxed),
    );
    eprintln!("relay across the reload: {sent} round trips, {ok} ok, {lost} lost");
    assert_eq!(lost, 0, "round trips lost across the reload ({ok} ok)");

    // The new secret and user allocate; the removed secret gets 401, also
    // for the client that allocated with it before.
    let new_rest = rest(NEW_SECRET, "dave");
    assert_eq!(allocate_code(&mut d.client(&new_rest.0, &new_rest.1)), None);
    assert_eq!(allocate_code(&mut d.client("bob", "builder-4d2a")), None);
    let other_old = rest(OLD_SECRET, "erin");
    assert_eq!(
        allocate_code(&mut d.client(&other_old.0, &other_old.1)),
        Some(401)
    );
    assert_eq!(refresh_code(&mut before, 600), Some(401));
    // The allocation from before the reload refreshes and still relays.
    assert_eq!(refresh_code(&mut alice, 600), None, "Refresh after reload");
    assert!(round_trip(
        &udp(&alice),
        d.addr,
        1 << 40,
        Duration::from_secs(2)
    ));
    // The level is now debug: the 401s above are logged at debug.
    d.wait_log("authentication failed", Duration::from_secs(5));

    // An invalid file: refused with the text `ferroturn check` prints, and
    // the running config (new secret) stays.
    let mut bad = c2.clone();
    bad.allow = vec!["127.0.0.0/33".into()];
    d.write_config(&config_text(&bad, port, d.relay, ""));
    let mut check = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    check.arg("check").arg("--config").arg(&d.config_path);
    let out = common::run_with_timeout(check, Duration::from_secs(10));
    assert_eq!(out.code, Some(1), "check of a bad CIDR:\n{}", out.output);
    let reason = out.output.trim();
    assert!(
        reason.starts_with(&*d.config_path.to_string_lossy()) && reason.contains("peers.allow"),
        "check output is not FILE: KEY: REASON: {reason:?}"
    );
    d.signal(libc::SIGHUP);
    let log = d.wait_log(reason, Duration::from_secs(5));
    let line = log.lines().find(|l| l.contains(reason)).unwrap();
    assert!(
        line.contains("ERROR"),
        "refusal not logged as an error: {line}"
    );
    assert!(d.log().matches("configuration reloaded").count() == 1);
    let newer = rest(NEW_SECRET, "frank");
    assert_eq!(
        allocate_code(&mut d.client(&newer.0, &newer.1)),
        None,
        "new secret after a refused reload"
    );
    let old = rest(OLD_SECRET, "grace");
    assert_eq!(allocate_code(&mut d.client(&old.0, &old.1)), Some(401));
    assert_eq!(allocate_code(&mut d.client("bob", "builder-4d2a")), None);
    assert!(round_trip(
        &udp(&alice),
        d.addr,
        2 << 40,
        Duration::from_secs(2)
    ));

    // A changed [[listen]]: applied otherwise, and logged as needing a
    // restart; the old listener keeps serving.
    let moved = free_port();
    d.write_config(&config_text(&c2, moved, d.relay, ""));
    d.signal(libc::SIGHUP);
    let log = d.wait_log_count("configuration reloaded", 2, Duration::from_secs(5));
    assert!(
        log.lines()
            .any(|l| l.contains("listen") && l.contains("needs a restart")),
        "no restart notice for a changed [[listen]]:\n{log}"
    );
    let probe = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(binding_udp(&probe, d.addr).is_some(), "old listener gone");
    assert!(round_trip(
        &udp(&alice),
        d.addr,
        3 << 40,
        Duration::from_secs(2)
    ));
    drop(peer);
}

/// A change that needs a restart (here the realm) is never applied by a
/// reload, not even by a later one, and every reload says so again.
#[test]
fn restart_only_change_is_not_applied_by_a_later_reload() {
    let d = Daemon::start(&base_config(), "");
    let mut moved = base_config();
    moved.realm = "other.realm".into();
    d.write_config(&config_text(&moved, d.addr.port(), d.relay, ""));
    for n in 1..=2 {
        d.signal(libc::SIGHUP);
        let log = d.wait_log_count("configuration reloaded", n, Duration::from_secs(5));
        let warned = log
            .lines()
            .filter(|l| l.contains("realm") && l.contains("needs a restart"))
            .count();
        assert_eq!(warned, n, "restart notices after reload {n}:\n{log}");
        let mut c = d.client(common::USER, common::PASSWORD);
        assert_eq!(
            allocate_code(&mut c),
            None,
            "realm {REALM} after reload {n}"
        );
        let r = c.request(&Request::new(METHOD_ALLOCATE).transport(17).bytes());
        assert_eq!(
            wire::text(&r, stun::attributes::ATTR_REALM).as_deref(),
            Some(REALM),
            "REALM of a 401 after reload {n}"
        );
    }
}

/// The UDP thread settings need a restart too: a reload says so and the
/// threads keep their policy (the default "auto" begins under batch).
#[test]
fn udp_thread_settings_wait_for_a_restart() {
    let d = Daemon::start(&base_config(), "");
    let tail =
        "\n[server]\nworkers = 2\nudp_threads = \"dedicated\"\nudp_scheduling = \"normal\"\n";
    d.write_config(&config_text(&base_config(), d.addr.port(), d.relay, tail));
    d.signal(libc::SIGHUP);
    let log = d.wait_log_count("configuration reloaded", 1, Duration::from_secs(5));
    for key in ["server.udp_threads", "server.udp_scheduling"] {
        assert!(
            log.lines()
                .any(|l| l.contains(key) && l.contains("needs a restart")),
            "no restart notice for {key}:\n{log}"
        );
    }
    let threads = common::thread_policies(d.child.id());
    let udp = |p: &(String, i32)| p.0.starts_with("ferroturn-u");
    assert!(
        threads.iter().any(udp)
            && threads.iter().all(|t| t.1
                == if udp(t) {
                    libc::SCHED_BATCH
                } else {
                    libc::SCHED_OTHER
                }),
        "{threads:?}"
    );
}

// ---- Drain ------------------------------------------------------------------

/// Start a server with `tail`, open one relaying allocation, prepare a
/// second client, and SIGTERM. Returns when the server says it drains.
fn draining(tail: &str) -> (Daemon, EchoPeer, RawClient, RawClient, Instant) {
    let peer = EchoPeer::start();
    let d = Daemon::start(&base_config(), tail);
    let old = relaying_client(&d, common::USER, common::PASSWORD, peer.addr);
    let (user, pass) = rest(common::SECRET, "bob");
    let mut newcomer = d.client(&user, &pass);
    learn_nonce(&mut newcomer);
    let term = Instant::now();
    d.signal(libc::SIGTERM);
    d.wait_log("draining", Duration::from_secs(5));
    (d, peer, old, newcomer, term)
}

#[test]
fn drain_refuses_new_allocations_and_exits_when_the_last_ends() {
    let (mut d, _peer, mut old, mut newcomer, _) = draining("");
    assert_eq!(
        allocate_code(&mut newcomer),
        Some(508),
        "Allocate while draining"
    );
    // The existing allocation relays on and refreshes.
    let sock = udp(&old);
    for seq in 1..=20 {
        assert!(
            round_trip(&sock, d.addr, seq, Duration::from_secs(1)),
            "round trip {seq} while draining"
        );
    }
    assert_eq!(refresh_code(&mut old, 600), None, "Refresh while draining");
    // STUN goes on.
    let probe = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        binding_udp(&probe, d.addr).is_some(),
        "Binding while draining"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert!(d.running(), "exited with an allocation left");
    // Deleting it ends the drain.
    assert_eq!(refresh_code(&mut old, 0), None, "Refresh 0");
    let deleted = Instant::now();
    let status = d
        .wait_exit(Duration::from_secs(3))
        .expect("still running 3 s after the last allocation was deleted");
    assert!(status.success(), "exit status {status}");
    eprintln!(
        "exited {:?} after the last allocation ended",
        deleted.elapsed()
    );
    assert!(d.log().contains("drained"), "{}", d.log());
}

#[test]
fn drain_with_alternate_answers_300_and_times_out() {
    let alternate: SocketAddr = "127.0.0.1:3479".parse().unwrap();
    let tail = format!("\n[server]\nworkers = 2\nalternate = \"{alternate}\"\ndrain_timeout = 2\n");
    let (mut d, _peer, old, mut newcomer, term) = draining(&tail);
    let r = newcomer.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(
        wire::error_code(&r),
        Some(300),
        "Allocate while draining with an alternate"
    );
    let v = wire::attr(&r, ATTR_ALTERNATE_SERVER).expect("ALTERNATE-SERVER in the 300");
    assert_eq!(v.len(), 8, "ALTERNATE-SERVER {v:02x?}");
    assert_eq!(v[1], 0x01, "family");
    let got = SocketAddr::from((
        std::net::Ipv4Addr::new(v[4], v[5], v[6], v[7]),
        u16::from_be_bytes([v[2], v[3]]),
    ));
    assert_eq!(got, alternate);
    assert!(round_trip(&udp(&old), d.addr, 1, Duration::from_secs(1)));
    // The allocation stays, so the drain ends at drain_timeout (2 s).
    let status = d
        .wait_exit(Duration::from_secs(6))
        .expect("still running 6 s after SIGTERM with drain_timeout = 2");
    let took = term.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM, drain_timeout = 2 s"
    );
    assert!(d.log().contains("drain timeout"), "{}", d.log());
    eprintln!("exited {took:?} after SIGTERM (drain_timeout 2 s)");
}

fn second_signal_exits_at_once(sig: libc::c_int) {
    let (mut d, _peer, old, _newcomer, _) = draining("");
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.running(), "exited with an allocation left and 60 s to go");
    assert!(round_trip(&udp(&old), d.addr, 1, Duration::from_secs(1)));
    let t = Instant::now();
    d.signal(sig);
    let status = d
        .wait_exit(Duration::from_secs(2))
        .expect("still running 2 s after the second signal");
    eprintln!("exited {:?} after the second signal", t.elapsed());
    assert!(status.success(), "exit status {status}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn second_sigterm_while_draining_exits_at_once() {
    second_signal_exits_at_once(libc::SIGTERM);
}

#[test]
fn sigint_while_draining_exits_at_once() {
    second_signal_exits_at_once(libc::SIGINT);
}

/// A first SIGINT (Ctrl-C) does not drain: it stops at once, closing the
/// allocations.
#[test]
fn first_sigint_stops_at_once() {
    let peer = EchoPeer::start();
    let mut d = Daemon::start(&base_config(), "");
    let _c = relaying_client(&d, common::USER, common::PASSWORD, peer.addr);
    let t = Instant::now();
    d.signal(libc::SIGINT);
    let status = d
        .wait_exit(Duration::from_secs(2))
        .expect("still running 2 s after SIGINT with an allocation");
    assert!(status.success(), "exit status {status}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        !d.log().contains("draining"),
        "SIGINT drained:\n{}",
        d.log()
    );
}

// ---- Logs ------------------------------------------------------------------

const LOG_PASSWORD: &str = "pw-Xq7LmZ2v";
const LOG_SECRET: &str = "secret-Kd93TtPa";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Run an authenticated debug session (static user and REST credential,
/// relay, refresh, a wrong password, reload, drain) and return the log and
/// every string that must not appear in it.
fn session_log(format: &str) -> (String, Vec<(String, String)>) {
    use base64::Engine as _;
    use ferroturn::proto::integrity::Key;
    let peer = EchoPeer::start();
    let mut c = base_config();
    c.log_level = "debug".into();
    c.secrets = vec![LOG_SECRET.into()];
    c.users = vec![("alice".into(), LOG_PASSWORD.into())];
    let tail = format!("format = \"{format}\"\n");
    let mut d = Daemon::start(&c, &tail);

    let (ruser, rpass) = rest(LOG_SECRET, "mallory");
    let mut a = relaying_client(&d, "alice", LOG_PASSWORD, peer.addr);
    let mut r = relaying_client(&d, &ruser, &rpass, peer.addr);
    for seq in 1..=5 {
        assert!(round_trip(&udp(&a), d.addr, seq, Duration::from_secs(1)));
        assert!(round_trip(&udp(&r), d.addr, seq, Duration::from_secs(1)));
    }
    assert_eq!(refresh_code(&mut a, 600), None);
    assert_eq!(refresh_code(&mut r, 600), None);
    assert_eq!(
        allocate_code(&mut d.client("alice", "wrong-password")),
        Some(401)
    );
    let bad = rest("not-the-secret", "mallory");
    assert_eq!(allocate_code(&mut d.client(&bad.0, &bad.1)), Some(401));
    d.signal(libc::SIGHUP);
    d.wait_log("configuration reloaded", Duration::from_secs(5));
    assert_eq!(refresh_code(&mut a, 0), None);
    assert_eq!(refresh_code(&mut r, 0), None);
    d.signal(libc::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("no exit after SIGTERM");
    assert!(status.success());
    let log = d.log();

    let rest_hmac = base64::engine::general_purpose::STANDARD
        .decode(&rpass)
        .unwrap();
    let mut forbidden = vec![
        ("password".to_owned(), LOG_PASSWORD.to_owned()),
        ("shared secret".to_owned(), LOG_SECRET.to_owned()),
        ("REST password".to_owned(), rpass.clone()),
        ("REST HMAC (hex)".to_owned(), hex(&rest_hmac)),
    ];
    for (who, user, pass) in [
        ("static", "alice", LOG_PASSWORD),
        ("REST", ruser.as_str(), rpass.as_str()),
    ] {
        for (alg, key) in [
            ("MD5", Key::md5(user, REALM, pass)),
            ("SHA-256", Key::sha256(user, REALM, pass)),
        ] {
            let k = key.as_bytes();
            forbidden.push((format!("{who} {alg} key (hex)"), hex(k)));
            forbidden.push((
                format!("{who} {alg} key (base64)"),
                base64::engine::general_purpose::STANDARD.encode(k),
            ));
            forbidden.push((format!("{who} {alg} key (bytes)"), format!("{k:?}")));
        }
    }
    drop(peer);
    (log, forbidden)
}

fn assert_no_secrets(log: &str, forbidden: &[(String, String)]) {
    let lower = log.to_lowercase();
    for (what, s) in forbidden {
        assert!(
            !log.contains(s.as_str()) && !lower.contains(&s.to_lowercase()),
            "the log holds the {what} ({s}):\n{}",
            log.lines()
                .filter(|l| l.to_lowercase().contains(&s.to_lowercase()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn text_log_of_a_debug_session_holds_no_secret() {
    let (log, forbidden) = session_log("text");
    assert!(
        log.contains("DEBUG"),
        "no debug line at level debug:\n{log}"
    );
    assert!(log.contains("allocation created"), "{log}");
    assert!(log.contains("authentication failed"), "{log}");
    assert_no_secrets(&log, &forbidden);
    eprintln!(
        "{} log lines checked against {} secrets",
        log.lines().count(),
        forbidden.len()
    );
}

#[test]
fn json_log_is_json_and_holds_no_secret() {
    let (log, forbidden) = session_log("json");
    let mut levels = std::collections::BTreeSet::new();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let level = v["level"]
            .as_str()
            .unwrap_or_else(|| panic!("no level: {line}"));
        levels.insert(level.to_owned());
        let message = v["fields"]["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .unwrap_or_else(|| panic!("no message: {line}"));
        assert!(!message.is_empty(), "empty message: {line}");
    }
    assert!(lines >= 10, "only {lines} lines:\n{log}");
    assert!(
        levels.contains("DEBUG") && levels.contains("INFO"),
        "levels seen: {levels:?}"
    );
    assert!(log.contains("allocation created"), "{log}");
    assert_no_secrets(&log, &forbidden);
    eprintln!("{lines} JSON lines, levels {levels:?}");
}

/// A reload refused for an error in `[auth]` or `[admin]` names the file,
/// key and line, but never a value of those sections: neither the bad one
/// (toml quotes it in its messages) nor a running secret, password or token.
#[test]
fn refused_reload_never_prints_an_auth_or_admin_value() {
    const SECRET: &str = "running-secret-5Tq2";
    const PASSWORD: &str = "running-password-8Wn4";
    const TOKEN: &str = "running-token-3Jv7";
    let mut c = base_config();
    c.secrets = vec![SECRET.into()];
    c.users = vec![("alice".into(), PASSWORD.into())];
    let admin = format!(
        "\n[admin]\naddress = \"127.0.0.1:{}\"\ntoken = \"{TOKEN}\"\n",
        free_port()
    );
    let mut d = Daemon::start(&c, &admin);
    let port = d.addr.port();
    let good = config_text(&c, port, d.relay, &admin);
    let secrets_line = format!("secrets = [\"{SECRET}\"]");
    let user_entry = format!("\"alice\" = \"{PASSWORD}\"");
    let token_line = format!("token = \"{TOKEN}\"");
    for needle in [&secrets_line, &user_entry, &token_line] {
        assert!(good.contains(needle.as_str()), "{needle} not in\n{good}");
    }

    // Each bad file holds a value that must not reach the log, and is
    // refused with the key (or "(syntax)") and line ferroturn check gives.
    let bad = [
        (
            good.replace(&secrets_line, "secrets = \"leak-1-Rb8s\""),
            "auth.secrets",
        ),
        (
            good.replace(
                &secrets_line,
                &format!("secrets = [\"{SECRET}\", 4242424242]"),
            ),
            "auth.secrets[1]",
        ),
        (
            good.replace(&user_entry, "\"alice\" = 77777777"),
            "auth.users.alice",
        ),
        (
            good.replace(&user_entry, "\"alice\" = [\"leak-2-Hy3c\"]"),
            "auth.users.alice",
        ),
        (
            good.replace(&user_entry, "\"alice\" = \"0xleak3Pz6\""),
            "auth.users.alice",
        ),
        (
            good.replace(&secrets_line, "secrets = [\"leak-4-Nd5w\" \"x\"]"),
            "(syntax)",
        ),
        (good.replace(&token_line, "token = 55555555"), "admin.token"),
        (
            good.replace(&token_line, "token = [\"leak-5-Ck1m\"]"),
            "admin.token",
        ),
        (
            good.replace(&token_line, "token = \"leak-6-Vg9e\" \"x\""),
            "(syntax)",
        ),
    ];
    let leaks = [
        "leak-",
        "leak3",
        "4242424242",
        "77777777",
        "55555555",
        SECRET,
        PASSWORD,
        TOKEN,
    ];
    for (i, (text, key)) in bad.iter().enumerate() {
        d.write_config(text);
        d.signal(libc::SIGHUP);
        let log = d.wait_log_count("reload refused", i + 1, Duration::from_secs(5));
        let line = log
            .lines()
            .filter(|l| l.contains("reload refused"))
            .nth(i)
            .unwrap();
        let expect = format!("{}: {key}: ", d.config_path.display());
        assert!(line.contains(&expect), "{expect:?} not in {line}");
        // toml's own errors carry the line (ferroturn's name the key only).
        assert!(
            line.contains("(line ") || key == &"auth.users.alice",
            "{line}"
        );
        let mut check = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
        check.arg("check").arg("--config").arg(&d.config_path);
        let out = common::run_with_timeout(check, Duration::from_secs(10));
        assert_eq!(out.code, Some(1));
        assert!(
            line.contains(out.output.trim()),
            "{line}\nvs check: {}",
            out.output
        );
        for leak in leaks {
            assert!(!log.contains(leak), "{leak:?} in the log:\n{log}");
            assert!(
                !out.output.contains(leak),
                "{leak:?} in check:\n{}",
                out.output
            );
        }
        eprintln!("{line}");
    }
    // The running configuration stayed.
    assert_eq!(allocate_code(&mut d.client("alice", PASSWORD)), None);
    d.signal(libc::SIGINT);
    assert!(d.wait_exit(Duration::from_secs(5)).is_some());
}

/// The test harness's timeout ends what a command started, not only the
/// command: a script killed at its deadline leaves no child running.
#[test]
fn a_timed_out_command_takes_its_children_along() {
    let dir = TempDir::new("timeout-group");
    let pidfile = dir.path().join("child.pid");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("sleep 60 & echo $! > {}; wait", pidfile.display()));
    let out = common::run_with_timeout(cmd, Duration::from_millis(500));
    assert!(out.timed_out, "{}", out.output);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("the script wrote its child's pid")
        .trim()
        .parse()
        .unwrap();
    // The child is gone (or a zombie reaped by init shortly): poll briefly.
    let t0 = std::time::Instant::now();
    let alive =
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    while alive() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(), "the script's child {pid} outlived the timeout");
}
