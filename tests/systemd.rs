//! The systemd unit and the notification protocol.
//!
//! - `systemd/ferroturn.service` passes `systemd-analyze verify` without a
//!   word about it (and verify does read the resource and IP settings: a
//!   broken value draws a warning), carries the directives the service
//!   depends on, and `systemd-analyze security` rates its exposure at most
//!   1.6, as measured.
//! - `TasksMax=` holds the threads of the most workers a config may ask
//!   for, counted on a running server.
//! - `systemd/ferroturn.sysusers` creates the user the unit runs as.
//! - `systemd/fastpath.conf`, the drop-in for the kernel fast path, adds
//!   CAP_BPF, CAP_NET_ADMIN and bpf(2) and nothing else; the unit with it
//!   passes `verify`, and the base unit has none of the three.
//! - The real binary, given `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`, sends
//!   READY=1 only once it answers STUN, pings the watchdog, wraps a SIGHUP
//!   reload in RELOADING=1 / READY=1, and sends STOPPING=1 on SIGTERM before
//!   it exits.
//!
//! Needs systemd-analyze (systemd 252 or later, for `--offline`).

mod common;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{LOCALHOST, ServerConfig, TempDir, binding_udp, free_port, relay_block};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/ferroturn.service");
const SYSUSERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/ferroturn.sysusers");
const FASTPATH_DROP_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/fastpath.conf");
/// Where the Debian package and the hand install put the binary.
const INSTALLED_BIN: &str = "/usr/bin/ferroturn";

fn unit_text() -> String {
    fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("read {UNIT}: {e}"))
}

/// `KEY=VALUE` assignments of the unit, every value of a key in order
/// (comments and section headers left out).
fn directives(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE in the unit: {line:?}"));
        map.entry(k.trim().to_owned())
            .or_default()
            .push(v.trim().to_owned());
    }
    map
}

/// The unit in a scratch directory, with the binary paths pointing at the
/// binary cargo built (the installed path need not exist here).
fn unit_for_test(dir: &Path) -> PathBuf {
    let text = unit_text().replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_ferroturn"));
    let path = dir.join("ferroturn.service");
    fs::write(&path, text).expect("write unit copy");
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> common::Output {
    assert!(
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok(),
        "systemd-analyze not found: install the systemd package (252 or later)"
    );
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(args)
        .arg(unit)
        .env("SYSTEMD_PAGER", "")
        .env("NO_COLOR", "1");
    let out = common::run_with_timeout(cmd, Duration::from_secs(60));
    assert!(!out.timed_out, "systemd-analyze {args:?} timed out");
    out
}

#[test]
fn unit_has_the_required_directives() {
    let d = directives(&unit_text());
    let one = |k: &str| -> &str {
        let v = d
            .get(k)
            .unwrap_or_else(|| panic!("{k}= missing from the unit"));
        assert_eq!(v.len(), 1, "{k}= given more than once: {v:?}");
        &v[0]
    };
    for (k, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        (
            "ExecStart",
            "/usr/bin/ferroturn --config /etc/ferroturn/config.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("After", "network-online.target"),
        ("Wants", "network-online.target"),
        ("LimitNOFILE", "1048576"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("KillSignal", "SIGTERM"),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        ),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("MemoryMax", "4G"),
        ("TasksMax", "520"),
        ("IPAddressDeny", "169.254.0.0/16 fe80::/10 fd00:ec2::254"),
    ] {
        assert_eq!(one(k), want, "{k}=");
    }
    assert_eq!(
        d.get("SystemCallFilter").map(Vec::as_slice),
        Some(
            &[
                "@system-service".to_owned(),
                "~@privileged @resources".to_owned(),
                "sched_setscheduler".to_owned()
            ][..]
        ),
        "SystemCallFilter="
    );
    // The stop timeout must outlast the default drain (60 s), or systemd
    // would SIGKILL the allocations the drain is waiting for.
    let stop: u64 = one("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop > 60,
        "TimeoutStopSec={stop} must exceed drain_timeout (60)"
    );
    // A dedicated user, or a dynamic one.
    let user = d.get("User").map(|v| v[0].as_str());
    let dynamic = d.get("DynamicUser").map(|v| v[0].as_str());
    assert!(
        dynamic == Some("yes") || user.is_some_and(|u| u != "root" && u != "0"),
        "needs DynamicUser=yes or a dedicated User= (User={user:?}, DynamicUser={dynamic:?})"
    );
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = TempDir::new("unit-verify");
    let unit = unit_for_test(dir.path());
    let out = systemd_analyze(&["verify"], &unit);
    let about_unit: Vec<&str> = out
        .output
        .lines()
        .filter(|l| l.contains("ferroturn") || l.contains(&*dir.path().to_string_lossy()))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify warns about the unit:\n{}",
        out.output
    );
    assert_eq!(out.code, Some(0), "systemd-analyze verify:\n{}", out.output);
}

/// The fast path's drop-in grants exactly what loading and attaching XDP
/// takes, only to those who install it: the base unit grants none of it.
#[test]
fn the_fast_path_drop_in_adds_only_bpf() {
    let text = fs::read_to_string(FASTPATH_DROP_IN).unwrap();
    assert!(text.contains("[Service]"));
    let d = directives(&text);
    let want: BTreeMap<String, Vec<String>> = [
        ("AmbientCapabilities", "CAP_BPF CAP_NET_ADMIN"),
        ("CapabilityBoundingSet", "CAP_BPF CAP_NET_ADMIN"),
        ("SystemCallFilter", "bpf"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), vec![v.to_owned()]))
    .collect();
    assert_eq!(d, want);
    let base = unit_text();
    for word in ["CAP_BPF", "CAP_NET_ADMIN", "SystemCallFilter=bpf"] {
        assert!(!base.contains(word), "the base unit grants {word}");
    }
    // The unit with the drop-in's [Service] lines after its own (as
    // systemd reads a drop-in) still passes verify.
    let dir = TempDir::new("unit-fastpath");
    let unit = unit_for_test(dir.path());
    let mut with = fs::read_to_string(&unit).unwrap();
    let service = with.find("[Install]").unwrap();
    with.insert_str(service, &format!("{}\n", text.replace("[Service]", "")));
    fs::write(&unit, with).unwrap();
    let out = systemd_analyze(&["verify"], &unit);
    assert_eq!(out.code, Some(0), "systemd-analyze verify:\n{}", out.output);
    assert!(
        !out.output.lines().any(|l| l.contains("ferroturn")),
        "verify warns:\n{}",
        out.output
    );
}

/// `systemd-analyze verify` checks the values of the settings added for
/// defence in depth (there is no systemd as PID 1 here to load the unit):
/// the unit passes (above), and each setting broken draws a warning.
#[test]
fn verify_reads_the_resource_and_ip_settings() {
    let dir = TempDir::new("unit-verify-broken");
    let good = unit_text();
    for (line, broken, says) in [
        ("MemoryMax=4G", "MemoryMax=4Q", "Invalid memory limit"),
        ("TasksMax=520", "TasksMax=lots", "Invalid maximum tasks"),
        (
            "IPAddressDeny=169.254.0.0/16 fe80::/10 fd00:ec2::254",
            "IPAddressDeny=169.254.0.0/99 fe80::/10 fd00:ec2::254",
            "Address prefix is invalid",
        ),
    ] {
        assert!(good.contains(line), "{line}");
        let text = good
            .replace(line, broken)
            .replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_ferroturn"));
        let unit = dir.path().join("ferroturn.service");
        fs::write(&unit, text).unwrap();
        let out = systemd_analyze(&["verify"], &unit);
        assert!(
            out.output.lines().any(|l| l.contains(says)),
            "no warning for {broken}:\n{}",
            out.output
        );
    }
}

/// `TasksMax=` fits the threads of the largest `server.workers`: a server
/// with dedicated UDP threads and stream listeners runs 2 x workers + 1
/// threads (counted here for 3 workers), plus ExecReload's kill.
#[test]
fn tasks_max_fits_the_most_workers() {
    let d = directives(&unit_text());
    let tasks_max: usize = d["TasksMax"][0].parse().unwrap();
    let threads = |workers: usize| 2 * workers + 1;
    assert!(
        // The threads and ExecReload's kill.
        threads(ferroturn::config::MAX_WORKERS) < tasks_max,
        "TasksMax={tasks_max} < {} threads of {} workers + ExecReload",
        threads(ferroturn::config::MAX_WORKERS),
        ferroturn::config::MAX_WORKERS
    );
    let server = common::Server::start_with(ServerConfig {
        workers: Some(3),
        udp_threads: Some("dedicated"),
        ..ServerConfig::default()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = common::threads(server.pid());
        if seen.len() >= threads(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen.len(),
        threads(3),
        "threads of a 3-worker server: {seen:?}"
    );
    // And no more appear while it serves.
    let probe = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert!(binding_udp(&probe, server.addr).is_some());
    common::binding_tcp(server.addr).expect("TCP Binding");
    assert_eq!(common::threads(server.pid()).len(), threads(3));
}

/// The exposure `systemd-analyze security --offline=true` gave the unit
/// when measured (systemd 252); the README states it.
const EXPOSURE: f64 = 1.6;

#[test]
fn unit_exposure_is_at_most_the_measured_figure() {
    let dir = TempDir::new("unit-security");
    let unit = unit_for_test(dir.path());
    let out = systemd_analyze(&["security", "--offline=true", "--no-pager"], &unit);
    let line = out
        .output
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no \"Overall exposure level\" line:\n{}", out.output));
    // "→ Overall exposure level for ferroturn.service: 1.5 OK 🙂"
    let level: f64 = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the level in {line:?}"));
    eprintln!("{}", line.trim());
    assert!(
        level <= EXPOSURE,
        "exposure {level} > {EXPOSURE}; what systemd-analyze found:\n{}",
        out.output
    );
}

/// The sysusers.d file, if the unit runs as a static user, creates exactly
/// that user (tried on an empty root directory).
#[test]
fn sysusers_file_creates_the_unit_user() {
    let d = directives(&unit_text());
    let Some(user) = d.get("User").map(|v| v[0].clone()) else {
        assert_eq!(
            d.get("DynamicUser").map(|v| v[0].as_str()),
            Some("yes"),
            "no User= and no DynamicUser=yes"
        );
        return;
    };
    assert!(
        Path::new(SYSUSERS).exists(),
        "User={user} needs {SYSUSERS} to create it"
    );
    let dir = TempDir::new("sysusers");
    fs::create_dir_all(dir.path().join("etc")).unwrap();
    let mut cmd = Command::new("systemd-sysusers");
    cmd.arg(format!("--root={}", dir.path().display()))
        .arg(SYSUSERS);
    let out = common::run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "systemd-sysusers:\n{}", out.output);
    let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap_or_default();
    let entry = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(&user))
        .unwrap_or_else(|| panic!("{SYSUSERS} did not create {user}:\n{passwd}"));
    let uid: u32 = entry.split(':').nth(2).unwrap().parse().unwrap();
    assert!(
        uid > 0 && uid < 1000,
        "{user} is not a system user: {entry}"
    );
    let shell = entry.rsplit(':').next().unwrap();
    assert!(shell.ends_with("nologin"), "{user} can log in: {entry}");
    if let Some(group) = d.get("Group") {
        let groups = fs::read_to_string(dir.path().join("etc/group")).unwrap_or_default();
        assert!(
            groups
                .lines()
                .any(|l| l.split(':').next() == Some(&group[0])),
            "Group={} not created:\n{groups}",
            group[0]
        );
    }
}

// ---- The notification protocol, with the real binary -----------------------

/// Reads sd_notify datagrams from the socket the test binds.
struct Notifications {
    sock: UnixDatagram,
    /// Every message so far, with its arrival time.
    seen: Vec<(Instant, String)>,
}

impl Notifications {
    /// The next message, or `None` when `limit` passes first.
    fn next(&mut self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push((Instant::now(), msg.clone()));
                    return Some(msg);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
        }
    }

    /// Skip watchdog pings until a message with `field` (e.g. "READY=1")
    /// arrives; panics with what came instead after `limit`.
    fn expect(&mut self, field: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(m) if has(&m, field) => return m,
                Some(m) if has(&m, "WATCHDOG=1") && m.lines().count() == 1 => continue,
                Some(m) => panic!("expected {field}, got {m:?}; so far: {:?}", self.seen),
                None => panic!("no {field} within {limit:?}; so far: {:?}", self.seen),
            }
        }
    }
}

fn has(msg: &str, field: &str) -> bool {
    msg.lines().any(|l| l == field)
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// A child killed on drop, its log printed if the test failed.
struct Child {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- ferroturn log ----\n{}---- end ----",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Start ferroturn as systemd would: `NOTIFY_SOCKET` naming a socket the
/// test reads, `WATCHDOG_USEC=200000`, and `WATCHDOG_PID` as given. Returns
/// the scratch directory (keep it), the notifications, the child and the
/// port it listens on.
fn start_notified(
    tag: &str,
    workers: usize,
    watchdog_pid: Option<&str>,
) -> (TempDir, Notifications, Child, u16) {
    let dir = TempDir::new(tag);
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let notes = Notifications {
        sock,
        seen: Vec::new(),
    };
    let port = free_port();
    let config = ServerConfig {
        workers: Some(workers),
        log_level: "info".into(),
        ..ServerConfig::default()
    };
    let config_path = dir.path().join("ferroturn.toml");
    fs::write(&config_path, config.to_toml(port, relay_block())).unwrap();
    let log = dir.path().join("ferroturn.log");
    let log_file = fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    cmd.arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    match watchdog_pid {
        Some(pid) => cmd.env("WATCHDOG_PID", pid),
        None => cmd.env_remove("WATCHDOG_PID"),
    };
    let child = cmd.spawn().expect("spawn ferroturn");
    (dir, notes, Child { child, log }, port)
}

#[test]
fn notify_ready_watchdog_reload_stopping() {
    let (_dir, mut notes, mut child, port) = start_notified("notify", 2, None);
    let pid = child.child.id();
    let server = SocketAddr::from((LOCALHOST, port));

    // READY=1 is the first message, and by then STUN is answered: one
    // Binding right after it gets its answer on the first try.
    let first = notes.next(common::STARTUP_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "no notification within the startup timeout; server log:\n{}",
            fs::read_to_string(&child.log).unwrap_or_default()
        )
    });
    assert!(
        has(&first, "READY=1"),
        "first message is not READY=1: {first:?}"
    );
    let probe = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        binding_udp(&probe, server).is_some(),
        "READY=1 sent but {server} does not answer a Binding request"
    );

    // Watchdog pings every WATCHDOG_USEC/2 = 100 ms: at least 5 in 1.2 s.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1200) {
        let left = Duration::from_millis(1200).saturating_sub(start.elapsed());
        match notes.next(left) {
            Some(m) if m == "WATCHDOG=1" => pings += 1,
            Some(m) => panic!("unexpected notification while idle: {m:?}"),
            None => break,
        }
    }
    assert!(
        (5..=20).contains(&pings),
        "{pings} WATCHDOG=1 in 1.2 s with WATCHDOG_USEC=200000 (expected ~12)"
    );

    // SIGHUP: RELOADING=1 with a current MONOTONIC_USEC, then READY=1.
    let before = monotonic_usec();
    signal(pid, libc::SIGHUP);
    let reloading = notes.expect("RELOADING=1", Duration::from_secs(5));
    let after = monotonic_usec();
    let stamp: u64 = field(&reloading, "MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        (before..=after).contains(&stamp),
        "MONOTONIC_USEC={stamp} not between {before} and {after} (CLOCK_MONOTONIC)"
    );
    notes.expect("READY=1", Duration::from_secs(5));
    assert!(
        binding_udp(&probe, server).is_some(),
        "no STUN after reload"
    );
    // Still pinging after the reload.
    notes.expect("WATCHDOG=1", Duration::from_secs(1));

    // SIGTERM with no allocation: STOPPING=1, and the process exits at once.
    let term = Instant::now();
    signal(pid, libc::SIGTERM);
    notes.expect("STOPPING=1", Duration::from_secs(5));
    let status = loop {
        if let Some(s) = child.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            term.elapsed() < Duration::from_secs(5),
            "still running {:?} after SIGTERM with no allocation",
            term.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    eprintln!(
        "exited {:?} after SIGTERM; {} notifications",
        term.elapsed(),
        notes.seen.len()
    );
}

/// With WATCHDOG_PID naming another process, the watchdog is not ours:
/// no pings (sd_watchdog_enabled(3)).
#[test]
fn watchdog_pid_of_another_process_means_no_pings() {
    let (_dir, mut notes, _child, _) = start_notified("notify-pid", 1, Some("1"));
    notes.expect("READY=1", common::STARTUP_TIMEOUT);
    if let Some(m) = notes.next(Duration::from_millis(500)) {
        panic!("notification with another process's WATCHDOG_PID: {m:?}");
    }
}

// ---- The system call filter fits what the server really calls -----------------

/// Every system call in `group` (and its nested groups), from
/// `systemd-analyze syscall-filter`'s listing of every group.
fn expand(groups: &BTreeMap<String, Vec<String>>, group: &str, out: &mut BTreeSet<String>) {
    let members = groups
        .get(group)
        .unwrap_or_else(|| panic!("systemd-analyze knows no group {group}"));
    for m in members {
        if m.starts_with('@') {
            expand(groups, m, out);
        } else {
            out.insert(m.clone());
        }
    }
}

fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .arg("--no-pager")
        .output()
        .expect("run systemd-analyze syscall-filter");
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter failed"
    );
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_owned());
            groups.entry(line.trim().to_owned()).or_default();
        } else if let Some(g) = &current {
            let t = line.trim();
            if !t.is_empty() && !t.starts_with('#') {
                groups.get_mut(g).unwrap().push(t.to_owned());
            }
        }
    }
    groups
}

/// The system calls the unit's SystemCallFilter= lets through. The first
/// line is an allow list, so @default is allowed too; each later line, in
/// order, adds its calls (allow) or takes them away (`~`), as
/// systemd.exec(5) says.
fn unit_allowed_syscalls() -> BTreeSet<String> {
    let groups = syscall_groups();
    let d = directives(&unit_text());
    let lines = d.get("SystemCallFilter").expect("SystemCallFilter=");
    assert!(!lines[0].starts_with('~'), "the first filter line allows");
    let mut allowed = BTreeSet::new();
    expand(&groups, "@default", &mut allowed);
    for v in lines {
        let (deny, list) = match v.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, v.as_str()),
        };
        let mut calls = BTreeSet::new();
        for item in list.split_whitespace() {
            if item.starts_with('@') {
                expand(&groups, item, &mut calls);
            } else {
                calls.insert(item.to_owned());
            }
        }
        if deny {
            allowed = &allowed - &calls;
        } else {
            allowed.extend(calls);
        }
    }
    allowed
}

/// Run the server under strace through a whole life (start, STUN over UDP
/// and TCP, an allocation relaying through a channel, sd_notify with a
/// watchdog, a reload, a drain that ends when the allocation is deleted)
/// and check that every system call it made passes the unit's filter, so
/// that nothing fails with EPERM under systemd.
/// Send one request head on `s` and read the answer to its end: the
/// status code (0 if there is none).
fn http_status(mut s: impl std::io::Read + std::io::Write, head: &str) -> u16 {
    s.write_all(head.as_bytes()).expect("send the request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .expect("the whole answer within 10 s");
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn syscalls_fit_the_unit_filter() {
    assert!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace is not installed (tests/run.sh installs it)"
    );
    let allowed = unit_allowed_syscalls();
    assert!(allowed.contains("sendmsg") && !allowed.contains("setuid"));
    assert!(allowed.contains("sched_setscheduler") && !allowed.contains("setpriority"));

    let dir = TempDir::new("strace");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let mut notes = Notifications {
        sock,
        seen: Vec::new(),
    };
    let port = free_port();
    let config = ServerConfig {
        workers: Some(2),
        log_level: "debug".into(),
        ..ServerConfig::default()
    };
    let config_path = dir.path().join("ferroturn.toml");
    // The metrics and admin listeners too (hyper's HTTP server, over TCP
    // and a Unix socket), so that their system calls are traced.
    let (metrics, admin) = (free_port(), free_port());
    let admin_socket = dir.path().join("admin.sock");
    let toml = config.to_toml(port, relay_block())
        + &format!(
            "\n[metrics]\naddress = \"127.0.0.1:{metrics}\"\n\n[admin]\naddress = \"127.0.0.1:{admin}\"\nsocket = \"{}\"\ntoken = \"strace-token\"\n",
            admin_socket.display()
        );
    fs::write(&config_path, toml).unwrap();
    let trace = dir.path().join("strace.txt");
    let log = dir.path().join("ferroturn.log");
    let log_file = fs::File::create(&log).unwrap();
    let child = Command::new("strace")
        .arg("-f")
        .arg("-qq")
        .arg("-o")
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("spawn strace");
    let mut child = Child { child, log };
    let server = SocketAddr::from((LOCALHOST, port));
    notes.expect("READY=1", Duration::from_secs(30));
    // The traced server's pid: the first one strace wrote (its execve).
    let pid: u32 = fs::read_to_string(&trace)
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("pid in the strace output");

    let probe = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert!(binding_udp(&probe, server).is_some(), "UDP Binding");
    common::binding_tcp(server).expect("TCP Binding");
    let peer = common::EchoPeer::start();
    let mut c = raw::RawClient::udp(server, common::REALM, common::USER, common::PASSWORD);
    c.allocate();
    c.channel_bind(0x4000, peer.addr);
    let frame = c.channel_data(0x4000, b"through the relay");
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        c.send(&frame);
        let n = c.recv(&mut buf);
        assert_eq!(&buf[..n], &frame[..], "ChannelData echo");
    }
    let get = |path: &str, auth: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
    };
    let bearer = "Authorization: Bearer strace-token\r\n";
    let tcp = |port: u16| {
        let s = std::net::TcpStream::connect((LOCALHOST, port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    assert_eq!(
        http_status(tcp(metrics), &get("/metrics", "")),
        200,
        "scrape"
    );
    assert_eq!(
        http_status(tcp(admin), &get("/sessions", bearer)),
        200,
        "admin over TCP"
    );
    assert_eq!(
        http_status(tcp(admin), &get("/sessions", "")),
        401,
        "admin without the token"
    );
    let unix = std::os::unix::net::UnixStream::connect(&admin_socket).expect("admin socket");
    unix.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        http_status(unix, &get("/sessions", bearer)),
        200,
        "admin over its socket"
    );
    signal(pid, libc::SIGHUP);
    notes.expect("RELOADING=1", Duration::from_secs(10));
    notes.expect("READY=1", Duration::from_secs(10));
    signal(pid, libc::SIGTERM);
    notes.expect("STOPPING=1", Duration::from_secs(10));
    let r =
        c.signed(ferroturn::proto::stun::Request::new(stun::message::METHOD_REFRESH).lifetime(0));
    assert_eq!(ferroturn::proto::stun::error_code(&r), None, "Refresh 0");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "traced server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }

    // "PID name(args) = ret", "PID <... name resumed> ...", "PID +++ exited".
    let text = fs::read_to_string(&trace).unwrap();
    let mut used: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let rest = line.split_once(' ').map_or("", |(_, r)| r).trim_start();
        let rest = rest.strip_prefix("<... ").unwrap_or(rest);
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !rest.starts_with("+++") && !rest.starts_with("---") {
            *used.entry(name).or_default() += 1;
        }
    }
    assert!(
        used.contains_key("execve") && used.len() > 20,
        "odd trace: {used:?}"
    );
    // The default udp_scheduling ("auto") sets the UDP threads' policy.
    assert!(used.contains_key("sched_setscheduler"), "{used:?}");
    let refused: Vec<_> = used.keys().filter(|s| !allowed.contains(*s)).collect();
    eprintln!(
        "{} distinct system calls, all allowed by the unit's filter",
        used.len()
    );
    assert!(
        refused.is_empty(),
        "the server calls {refused:?}, which SystemCallFilter= refuses (EPERM); all it called: {used:?}"
    );
}
