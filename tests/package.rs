//! The Debian package (README, "Install from the package") and the
//! `[auth] secret_files` key it relies on.
//!
//! - `package_installs_serves_and_purges` builds the package with the
//!   README's command (`bash packaging/build-deb.sh`: the release build,
//!   then `cargo deb --no-build`), installs it with apt, and checks the
//!   Depends line (libelf1 and zlib1g for the fast path's libbpf), the
//!   files with their owners and modes, the user, the unit
//!   (`systemd-analyze verify`), `ferroturn check` of the installed config,
//!   and that the installed binary, run as the service's user with that
//!   config (only its ports moved, on loopback), answers a STUN Binding and
//!   grants a TURN allocation to REST credentials minted from the installed
//!   secret and to no others. The kernel fast path: built in (with
//!   `mode = "on"` the binary tries to load the XDP program, and lacking
//!   CAP_BPF refuses to start saying so, where a build without it names
//!   the missing feature); its drop-in shipped as
//!   /usr/share/ferroturn/fastpath.conf, not in force
//!   (`systemd-analyze security` on the installed unit: no CAP_BPF,
//!   CAP_NET_ADMIN or bpf(2)) until the README's two commands link it in
//!   (then all three). Then: a reinstall keeps the secret and the link, `apt
//!   remove` keeps the config, the secret and the link, `apt purge` deletes
//!   them, and a new install writes a new secret. It changes the system, so the whole
//!   flow is one test, serialized across processes by a lock file, and a
//!   guard purges the package at the end, also when the test fails.
//! - `secret_files_are_read_at_start_and_on_reload`: the built binary with
//!   a secret in a file: credentials minted from it allocate, a rewritten
//!   file and SIGHUP rotate it, a reload with the file gone is refused and
//!   the running secret stays, and startup without the file fails with
//!   file, key and reason.
//!
//! Needs root, apt and dpkg (Debian), cargo-deb (tests/run.sh installs it,
//! and so does the build script), systemd-analyze and systemd-sysusers.

mod common;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{
    KillOnDrop, LOCALHOST, ServerConfig, TempDir, binding_udp, free_port, relay_block,
    run_with_timeout, spawn_ferroturn, wait_ready,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const PACKAGE: &str = "ferroturn";
const CONFIG: &str = "/etc/ferroturn/config.toml";
const SECRET: &str = "/etc/ferroturn/secret";
const BIN: &str = "/usr/bin/ferroturn";
const UNIT: &str = "/usr/lib/systemd/system/ferroturn.service";
const SYSUSERS: &str = "/usr/lib/sysusers.d/ferroturn.conf";
/// The kernel fast path's systemd drop-in, shipped inactive.
const DROP_IN: &str = "/usr/share/ferroturn/fastpath.conf";
/// The unit's drop-in directory for the admin, where the README links
/// [`DROP_IN`] to turn it on.
const DROP_IN_DIR: &str = "/etc/systemd/system/ferroturn.service.d";
/// The README's commands that put the drop-in in force (each after
/// `sudo `), run by the test as they stand there.
const ENABLE_DROP_IN: [&str; 2] = [
    "mkdir -p /etc/systemd/system/ferroturn.service.d",
    "ln -s /usr/share/ferroturn/fastpath.conf /etc/systemd/system/ferroturn.service.d/",
];
/// What `systemd-analyze security` says of the three grants the drop-in
/// makes (loading BPF programs, configuring the network, and the bpf(2)
/// call, which is in @privileged).
const DROP_IN_GRANTS: [&str; 3] = [
    "CapabilityBoundingSet=~CAP_BPF ",
    "CapabilityBoundingSet=~CAP_NET_ADMIN ",
    "SystemCallFilter=~@privileged ",
];
/// Left while this test's package is installed: a later run that finds the
/// package together with this file knows a killed run left it and purges
/// it; without the file, the package is someone's real install, and the
/// test refuses to touch it.
const MARKER: &str = "/var/lib/ferroturn-package-test.installed";
/// Bound on one allocation or Binding.
const STEP: Duration = Duration::from_secs(10);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Run `cmd` within `limit`; its output, or a panic naming `what` with the
/// output when it fails or times out.
fn ok(what: &str, cmd: Command, limit: Duration) -> String {
    let out = run_with_timeout(cmd, limit);
    assert!(
        !out.timed_out,
        "{what}: timed out after {limit:?}:\n{}",
        out.output
    );
    assert_eq!(out.code, Some(0), "{what} failed:\n{}", out.output);
    out.output
}

fn apt(args: &[&str]) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        // Another apt (tests/run.sh's installs) may hold the lock a while.
        .args(["-o", "DPkg::Lock::Timeout=300", "-y"])
        .args(args);
    cmd
}

/// Purge the package, reporting rather than panicking (it runs in Drop).
fn purge() -> Result<String, String> {
    let out = run_with_timeout(apt(&["purge", PACKAGE]), Duration::from_secs(600));
    match out.code {
        Some(0) => Ok(out.output),
        _ => Err(out.output),
    }
}

/// The package's state for dpkg: "installed", "config-files", … or "" when
/// dpkg does not know it.
fn dpkg_status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PACKAGE])
        .output()
        .expect("run dpkg-query");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Holds an exclusive lock on a file for the lifetime of the value, so that
/// two runs of this test (two `cargo test` at once) take turns.
struct Exclusive {
    _lock: fs::File,
}

impl Exclusive {
    fn take() -> Exclusive {
        // Beside the marker, in a fixed place: two runs with different TMPDIRs
        // must still take turns.
        let path = Path::new("/var/lib/ferroturn-package-test.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let deadline = Instant::now() + Duration::from_secs(1200);
        // SAFETY: flock on a descriptor this value owns.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            assert!(
                Instant::now() < deadline,
                "another run of the package test held {} for 20 minutes",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        Exclusive { _lock: file }
    }
}

/// Purges the package when dropped: at the end of the test, or when it
/// fails half-way.
struct Installed;

impl Installed {
    /// Make sure the package is absent (purging one a killed run of this
    /// test left), then mark the install as this test's.
    fn begin() -> Installed {
        let status = dpkg_status();
        if !status.is_empty() && status != "not-installed" {
            assert!(
                Path::new(MARKER).exists(),
                "the {PACKAGE} package is on this machine ({status}) and this test did not \
                 install it: the test would purge it, so it stops (`apt purge {PACKAGE}` first)"
            );
            if let Err(out) = purge() {
                panic!("purge of a package left by an earlier run failed:\n{out}");
            }
        }
        fs::write(MARKER, "installed by tests/package.rs; purged at its end\n").expect("marker");
        Installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        match purge() {
            Ok(_) => {
                let _ = fs::remove_file(MARKER);
            }
            Err(out) => eprintln!("apt-get purge {PACKAGE} failed at the end of the test:\n{out}"),
        }
    }
}

/// Uid, gid and the whole passwd entry of a user.
fn user_ids(name: &str) -> Option<(u32, u32, String)> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let f: Vec<&str> = line.split(':').collect();
    if f.len() != 7 {
        return None;
    }
    let (uid, gid) = (f[2].parse().ok()?, f[3].parse().ok()?);
    Some((uid, gid, line))
}

/// Mode bits, owner and group of `path` (not following a symlink), and
/// whether it is a directory.
fn stat(path: &str) -> (u32, u32, u32, bool) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.mode() & 0o7777, m.uid(), m.gid(), m.is_dir())
}

/// `text` with `from` replaced by `to`, which must occur exactly once (the
/// packaged config changed if not).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} is not in the installed config exactly once:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// Whether the `turn` crate's client gets an allocation from `server` with
/// these credentials; the relayed address if so, else the error.
fn allocate(server: SocketAddr, realm: &str, user: &str, pass: &str) -> Result<SocketAddr, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let sock = Arc::new(tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
        let client = common::turn_client(server, sock, realm, user, pass).await;
        let res = tokio::time::timeout(STEP, client.allocate())
            .await
            .map_err(|_| format!("Allocate timed out after {STEP:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        let out = match res {
            Ok(relay) => {
                use webrtc_util::Conn;
                let addr = relay.local_addr().map_err(|e| e.to_string());
                let _ = relay.close().await;
                addr
            }
            Err(e) => Err(e),
        };
        let _ = client.close().await;
        out
    })
}

/// Which of [`DROP_IN_GRANTS`] the service gets, as `systemd-analyze
/// security` finds it when it loads the installed unit by name, the way
/// systemd does: with every drop-in in the unit's search path.
fn unit_grants() -> Vec<bool> {
    let mut security = Command::new("systemd-analyze");
    security
        .args([
            "security",
            "--offline=true",
            "--no-pager",
            "ferroturn.service",
        ])
        .env("SYSTEMD_PAGER", "")
        .env("NO_COLOR", "1");
    // Exits non-zero when the exposure is above its threshold; the lines
    // are what counts.
    let out = run_with_timeout(security, Duration::from_secs(60));
    assert!(!out.timed_out, "systemd-analyze security timed out");
    DROP_IN_GRANTS
        .iter()
        .map(|setting| {
            let line = out
                .output
                .lines()
                .map(str::trim_start)
                .find(|l| l.contains(setting))
                .unwrap_or_else(|| panic!("no {setting:?} line in:\n{}", out.output));
            match line.chars().next() {
                Some('✓') => false,
                Some('✗') => true,
                _ => panic!("neither ✓ nor ✗: {line:?}"),
            }
        })
        .collect()
}

/// The first line of the secret file, as the server reads it.
fn installed_secret() -> String {
    let text = fs::read_to_string(SECRET).unwrap_or_else(|e| panic!("{SECRET}: {e}"));
    text.lines().next().unwrap_or("").trim().to_owned()
}

#[test]
fn package_installs_serves_and_purges() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "installs a package: run as root (CI does)"
    );
    let _turn = Exclusive::take();

    // ---- Build, with the README's command ----
    let mut build = Command::new("bash");
    build.arg(format!("{ROOT}/packaging/build-deb.sh"));
    // A cold release build takes minutes on two cores.
    let out = ok("packaging/build-deb.sh", build, Duration::from_secs(1800));
    let deb = PathBuf::from(out.lines().last().unwrap_or("").trim());
    assert!(
        deb.is_file() && deb.extension().is_some_and(|e| e == "deb"),
        "the build's last line is not a package path:\n{out}"
    );
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    assert!(
        name.starts_with(&format!("{PACKAGE}_{version}_")),
        "{name}: not version {version} (Cargo.toml's)"
    );
    let mut field = Command::new("dpkg-deb");
    field
        .arg("-f")
        .arg(&deb)
        .args(["Package", "Version", "Depends"]);
    let control = ok("dpkg-deb -f", field, STEP);
    assert!(
        control.contains(&format!("Version: {version}\n")),
        "{control}"
    );
    let depends = control
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends:\n{control}"));
    // The binary's libraries (dpkg-shlibdeps): the C library, OpenSSL
    // (DTLS), and libelf and zlib, which the kernel fast path's libbpf
    // (linked in) needs; then the unit's /bin/kill and the postinst's
    // systemd-sysusers; nothing more.
    assert!(depends.starts_with("libc6 (>= "), "{depends}");
    // cargo-deb sorts the line by name.
    let items: Vec<&str> = depends.split(", ").collect();
    let names: Vec<&str> = items
        .iter()
        .map(|d| d.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        ["libc6", "libelf1", "libssl3", "procps", "systemd", "zlib1g"],
        "{depends}"
    );
    for lib in ["libelf1", "zlib1g"] {
        assert!(
            depends.contains(&format!("{lib} (>= ")),
            "{lib} without a version: {depends}"
        );
    }
    for item in [
        "procps",
        "systemd | systemd-standalone-sysusers | systemd-sysusers",
    ] {
        assert!(items.contains(&item), "no {item:?}: {depends}");
    }
    // What the maintainer scripts do where systemd runs, which this machine
    // cannot show (systemd is not PID 1 here): read from the package.
    // systemd is reloaded only where it runs; an upgrade (the postinst's
    // $2, the old version) try-restarts, which starts nothing that was
    // stopped; nothing enables or starts the unit (an enablement is only
    // carried over from before); only a removal stops it.
    let scripts = TempDir::new("ferroturn-deb-scripts");
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-e").arg(&deb).arg(scripts.path());
    ok("dpkg-deb -e", extract, STEP);
    let script = |name: &str| fs::read_to_string(scripts.path().join(name)).unwrap();
    let postinst = script("postinst");
    let flat: String = postinst.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("if [ -d /run/systemd/system ]; then systemctl --system daemon-reload"),
        "{postinst}"
    );
    assert!(
        flat.contains("if [ -n \"$2\" ]; then deb-systemd-invoke try-restart ferroturn.service"),
        "{postinst}"
    );
    assert!(!flat.contains("deb-systemd-invoke start"), "{postinst}");
    assert!(!flat.contains("systemctl enable"), "{postinst}");
    assert!(
        flat.contains(
            "if deb-systemd-helper --quiet was-enabled ferroturn.service; then # Create new symlinks, if any. deb-systemd-helper enable"
        ),
        "{postinst}"
    );
    assert_eq!(
        flat.matches("deb-systemd-helper enable").count(),
        1,
        "{postinst}"
    );
    let prerm = script("prerm");
    let flat: String = prerm.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(
            "if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then deb-systemd-invoke stop ferroturn.service"
        ),
        "{prerm}"
    );
    assert_eq!(flat.matches("deb-systemd-invoke").count(), 1, "{prerm}");
    let mut conffiles = Command::new("dpkg-deb");
    conffiles.arg("--info").arg(&deb).arg("conffiles");
    assert_eq!(
        ok("dpkg-deb --info conffiles", conffiles, STEP).trim(),
        CONFIG
    );

    // ---- Install ----
    let installed = Installed::begin();
    let deb_arg = deb.to_str().expect("package path is UTF-8");
    let out = ok(
        "apt-get install",
        apt(&["install", deb_arg]),
        Duration::from_secs(600),
    );
    assert!(!out.contains("dpkg: warning"), "{out}");
    assert_eq!(dpkg_status(), "installed");

    // The user, a system user that cannot log in.
    let (uid, gid, entry) = user_ids("ferroturn").expect("the package made no ferroturn user");
    assert!((1..1000).contains(&uid), "not a system user: {entry}");
    assert!(entry.ends_with(":/usr/sbin/nologin"), "{entry}");

    // Files, owners and modes.
    for (path, want) in [
        (BIN, (0o755, 0, 0, false)),
        (UNIT, (0o644, 0, 0, false)),
        (SYSUSERS, (0o644, 0, 0, false)),
        (DROP_IN, (0o644, 0, 0, false)),
        ("/etc/ferroturn", (0o750, 0, gid, true)),
        (CONFIG, (0o640, 0, gid, false)),
        (SECRET, (0o640, 0, gid, false)),
        ("/usr/share/man/man1/ferroturn.1.gz", (0o644, 0, 0, false)),
        (
            "/usr/share/man/man5/ferroturn.toml.5.gz",
            (0o644, 0, 0, false),
        ),
        (
            "/usr/share/bash-completion/completions/ferroturn",
            (0o644, 0, 0, false),
        ),
        (
            "/usr/share/zsh/vendor-completions/_ferroturn",
            (0o644, 0, 0, false),
        ),
        (
            "/usr/share/fish/vendor_completions.d/ferroturn.fish",
            (0o644, 0, 0, false),
        ),
    ] {
        assert_eq!(stat(path), want, "{path}: (mode, uid, gid, dir)");
    }
    // The man pages are found by name, as an operator asks for them.
    for (section, page) in [("1", "ferroturn"), ("5", "ferroturn.toml")] {
        let mut man = Command::new("man");
        man.args(["-w", section, page]);
        let out = ok("man -w", man, Duration::from_secs(30));
        let want = format!("/usr/share/man/man{section}/{page}.{section}.gz");
        assert_eq!(out.trim(), want, "man -w {section} {page}");
    }
    let same = |installed: &str, repo: &str| {
        assert_eq!(
            fs::read_to_string(installed).unwrap(),
            fs::read_to_string(format!("{ROOT}/{repo}")).unwrap(),
            "{installed} is not {repo}"
        );
    };
    same(UNIT, "systemd/ferroturn.service");
    same(SYSUSERS, "systemd/ferroturn.sysusers");
    same(DROP_IN, "systemd/fastpath.conf");
    same(CONFIG, "packaging/config.toml");
    // Nothing else in /etc/ferroturn: the secret the postinst wrote, and no
    // temporary file left from writing it.
    let mut listed: Vec<String> = fs::read_dir("/etc/ferroturn")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["config.toml", "secret"]);
    // The secret: one line, base64 of 32 random bytes.
    let secret = installed_secret();
    assert_eq!(fs::read_to_string(SECRET).unwrap(), format!("{secret}\n"));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&secret)
        .unwrap_or_else(|e| panic!("the secret is not base64: {e}"));
    assert_eq!(raw.len(), 32);
    // Installed disabled: no enablement link.
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/ferroturn.service").exists(),
        "the package enabled the service"
    );
    // The fast path's drop-in is not in force: the package puts nothing in
    // a drop-in directory of the unit, and systemd, loading the unit with
    // its drop-ins, finds none of the drop-in's grants.
    let mut listing = Command::new("dpkg");
    listing.args(["-L", PACKAGE]);
    let files = ok("dpkg -L", listing, STEP);
    assert!(files.lines().any(|l| l == DROP_IN), "{files}");
    assert!(
        !files.lines().any(|l| l.contains(".service.d")),
        "the package installs a drop-in:\n{files}"
    );
    assert!(
        fs::symlink_metadata(DROP_IN_DIR).is_err(),
        "{DROP_IN_DIR} is on this machine before the test linked anything there"
    );
    assert_eq!(unit_grants(), [false; 3], "{DROP_IN_GRANTS:?}");

    // The installed unit, as systemd reads it (the binary it names exists).
    let mut verify = Command::new("systemd-analyze");
    verify.args(["verify", UNIT]).env("SYSTEMD_PAGER", "");
    let out = ok("systemd-analyze verify", verify, Duration::from_secs(60));
    assert!(
        !out.lines().any(|l| l.contains("ferroturn")),
        "systemd-analyze verify warns about the unit:\n{out}"
    );

    // `ferroturn check` of the installed config: as root, and as the
    // service's user (group read on the config and the secret); another
    // user cannot read it.
    let check = |as_user: Option<(u32, u32)>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--config", CONFIG]);
        if let Some((u, g)) = as_user {
            cmd.uid(u).gid(g);
        }
        run_with_timeout(cmd, STEP)
    };
    for who in [None, Some((uid, gid))] {
        let out = check(who);
        assert_eq!(out.code, Some(0), "check as {who:?}:\n{}", out.output);
        assert_eq!(out.output, format!("{CONFIG}: ok\n"));
    }
    let (nobody_uid, nobody_gid, _) = user_ids("nobody").expect("user nobody");
    let out = check(Some((nobody_uid, nobody_gid)));
    assert_eq!(out.code, Some(1), "{}", out.output);
    assert!(out.output.contains("Permission denied"), "{}", out.output);

    // No secret and no user in the config: its only credential is the file.
    let config = ferroturn::config::load(Path::new(CONFIG)).expect("load the installed config");
    assert_eq!(config.live.secrets, std::slice::from_ref(&secret));
    assert!(config.live.users.is_empty(), "{:?}", config.live.users);
    // On loopback until the admin says otherwise.
    assert!(
        config
            .restart
            .listen
            .iter()
            .all(|l| l.address.ip().is_loopback()),
        "{:?}",
        config.restart.listen
    );

    // ---- The installed binary serves, as the service's user ----
    let dir = TempDir::new("package");
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown scratch dir");
    let port = free_port();
    let relay = relay_block();
    let text = fs::read_to_string(CONFIG).unwrap();
    let text = replace_once(
        &text,
        "address = \"127.0.0.1:3478\"",
        &format!("address = \"127.0.0.1:{port}\""),
    );
    let text = replace_once(
        &text,
        "ports = \"49152-65535\"",
        &format!("ports = \"{}-{}\"", relay.0, relay.1),
    );
    let text = replace_once(
        &text,
        "address = \"127.0.0.1:9641\"",
        &format!("address = \"127.0.0.1:{}\"", free_port()),
    );
    let socket = dir.path().join("admin.sock");
    let text = replace_once(
        &text,
        "\n[admin]\n",
        &format!("\n[admin]\nsocket = \"{}\"\n", socket.display()),
    );
    let moved = dir.path().join("config.toml");
    fs::write(&moved, &text).unwrap();
    let log = dir.path().join("ferroturn.log");
    let logf = fs::File::create(&log).unwrap();
    let mut server = KillOnDrop(
        Command::new(BIN)
            .arg("--config")
            .arg(&moved)
            .uid(uid)
            .gid(gid)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start /usr/bin/ferroturn"),
    );
    let addr = SocketAddr::from((LOCALHOST, port));
    if let Err(e) = wait_ready(&mut server.0, addr, &log, || true) {
        panic!("{BIN} with the installed config: {e}");
    }
    // STUN: the Binding answer carries the client's own address.
    let sock = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert_eq!(binding_udp(&sock, addr), Some(sock.local_addr().unwrap()));
    // TURN with REST credentials minted from the installed secret (by the
    // test, and by the installed `ferroturn credentials --config`).
    let (user, pass) = ferroturn::auth::rest_credentials(&secret, "package", unix_now() + 3600);
    let relayed = allocate(addr, &config.restart.realm, &user, &pass)
        .unwrap_or_else(|e| panic!("Allocate with the installed secret: {e}"));
    assert_eq!(relayed.ip(), LOCALHOST);
    assert!((relay.0..=relay.1).contains(&relayed.port()), "{relayed}");
    let mut minted = Command::new(BIN);
    minted.args([
        "credentials",
        "--config",
        CONFIG,
        "--user",
        "cli",
        "--ttl",
        "1h",
    ]);
    let out = ok("ferroturn credentials", minted, STEP);
    let value = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key:?} in:\n{out}"))
            .to_owned()
    };
    let (cli_user, cli_pass) = (value("username: "), value("password: "));
    let expiry: u64 = cli_user.split(':').next().unwrap().parse().unwrap();
    assert_eq!(
        ferroturn::auth::rest_credentials(&secret, "cli", expiry),
        (cli_user.clone(), cli_pass.clone())
    );
    allocate(addr, &config.restart.realm, &cli_user, &cli_pass)
        .unwrap_or_else(|e| panic!("Allocate with `ferroturn credentials`: {e}"));
    // Any other secret is refused.
    let (user, pass) =
        ferroturn::auth::rest_credentials("not-the-secret", "package", unix_now() + 3600);
    let e = allocate(addr, &config.restart.realm, &user, &pass)
        .expect_err("a foreign secret allocated");
    assert!(e.contains("401"), "expected 401 Unauthorized, got: {e}");
    drop(server);

    // ---- The fast path is built in ----
    // With mode = "on", the installed binary gets as far as loading the
    // XDP program, which the service's user may not do (no CAP_BPF, as
    // under the unit without the drop-in); a build without the feature
    // stops before, saying so (tests/fastpath_absent.rs). The interface
    // named does not exist, so nothing could be attached even if the load
    // went through.
    let on = replace_once(
        &text,
        "mode = \"off\"",
        "mode = \"on\"\ninterfaces = [\"ftnone0\"]",
    );
    let on_path = dir.path().join("fastpath-on.toml");
    fs::write(&on_path, &on).unwrap();
    let as_service = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg(&on_path)
            .uid(uid)
            .gid(gid)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET");
        cmd
    };
    let out = ok(
        "ferroturn check with mode = \"on\"",
        as_service(&["check", "--config"]),
        STEP,
    );
    assert_eq!(out, format!("{}: ok\n", on_path.display()));
    let out = run_with_timeout(as_service(&["--config"]), STEP);
    assert!(!out.timed_out, "it ran with mode = \"on\":\n{}", out.output);
    assert_eq!(out.code, Some(1), "{}", out.output);
    assert!(
        out.output
            .contains("fastpath.mode: loading the XDP program (needs CAP_BPF and CAP_NET_ADMIN)"),
        "the packaged binary did not try to load the XDP program:\n{}",
        out.output
    );
    assert!(
        !out.output.contains("built with the cargo feature"),
        "the packaged binary is built without the fast path:\n{}",
        out.output
    );

    // ---- The README's commands put the drop-in in force ----
    let readme = fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    for step in ENABLE_DROP_IN {
        assert!(
            readme.contains(&format!("sudo {step}\n")),
            "the README does not say `sudo {step}`"
        );
        let mut sh = Command::new("sh");
        sh.args(["-c", step]);
        ok(step, sh, STEP);
    }
    let link = format!("{DROP_IN_DIR}/fastpath.conf");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new(DROP_IN));
    assert_eq!(unit_grants(), [true; 3], "{DROP_IN_GRANTS:?}");
    // The unit with it still reads clean.
    let mut verify = Command::new("systemd-analyze");
    verify.args(["verify", UNIT]).env("SYSTEMD_PAGER", "");
    let out = ok(
        "systemd-analyze verify (with the drop-in)",
        verify,
        Duration::from_secs(60),
    );
    assert!(
        !out.lines().any(|l| l.contains("ferroturn")),
        "systemd-analyze verify warns about the unit with the drop-in:\n{out}"
    );

    // ---- Reinstall (what an upgrade does to the secret) ----
    let out = ok(
        "apt-get install --reinstall",
        apt(&["install", "--reinstall", deb_arg]),
        Duration::from_secs(600),
    );
    assert!(!out.contains("dpkg: warning"), "{out}");
    assert_eq!(
        installed_secret(),
        secret,
        "a reinstall replaced the secret"
    );
    assert_eq!(stat(SECRET), (0o640, 0, gid, false));
    assert_eq!(fs::read_link(&link).unwrap(), Path::new(DROP_IN));

    // ---- Remove keeps the config and the secret ----
    let out = ok(
        "apt-get remove",
        apt(&["remove", PACKAGE]),
        Duration::from_secs(600),
    );
    assert!(!out.contains("dpkg: warning"), "{out}");
    assert_eq!(dpkg_status(), "config-files");
    for gone in [BIN, UNIT, SYSUSERS, DROP_IN] {
        assert!(!Path::new(gone).exists(), "{gone} left after apt remove");
    }
    same(CONFIG, "packaging/config.toml");
    // The admin's link to the drop-in is configuration too: it stays.
    assert_eq!(fs::read_link(&link).unwrap(), Path::new(DROP_IN));
    assert_eq!(installed_secret(), secret, "apt remove changed the secret");

    // ---- Purge deletes both ----
    let out = purge().unwrap_or_else(|out| panic!("apt-get purge failed:\n{out}"));
    assert!(!out.contains("dpkg: warning"), "{out}");
    assert!(
        !Path::new("/etc/ferroturn").exists(),
        "/etc/ferroturn left after apt purge: {:?}",
        fs::read_dir("/etc/ferroturn").map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    // Nor the mask that remove set, nor the link to the drop-in.
    assert!(fs::symlink_metadata("/etc/systemd/system/ferroturn.service").is_err());
    assert!(
        fs::symlink_metadata(DROP_IN_DIR).is_err(),
        "{DROP_IN_DIR} left after apt purge"
    );

    // ---- A new install writes a new secret ----
    ok(
        "apt-get install (again)",
        apt(&["install", deb_arg]),
        Duration::from_secs(600),
    );
    let again = installed_secret();
    assert_eq!(again.len(), secret.len());
    assert_ne!(again, secret, "two installs wrote the same secret");

    drop(installed);
    assert!(dpkg_status().is_empty() || dpkg_status() == "not-installed");
    assert!(!Path::new(MARKER).exists());
}

#[test]
fn secret_files_are_read_at_start_and_on_reload() {
    let dir = TempDir::new("secret-files");
    let secret_path = dir.path().join("secret");
    fs::write(&secret_path, "first-secret\n").unwrap();
    let port = free_port();
    let text = ServerConfig::default().to_toml(port, relay_block());
    let text = replace_once(
        &text,
        "secrets = [\"s3cret\"]",
        &format!("secret_files = [\"{}\"]", secret_path.display()),
    );
    let config = dir.path().join("ferroturn.toml");
    fs::write(&config, &text).unwrap();
    let realm = ferroturn::config::load(&config).unwrap().restart.realm;
    let log = dir.path().join("ferroturn.log");
    let addr = SocketAddr::from((LOCALHOST, port));
    let server = KillOnDrop(
        spawn_ferroturn(&config, &log, addr, || true).unwrap_or_else(|e| panic!("start: {e}")),
    );
    let pid = server.0.id() as libc::pid_t;
    let rest = |secret: &str| {
        let (u, p) = ferroturn::auth::rest_credentials(secret, "files", unix_now() + 3600);
        allocate(addr, &realm, &u, &p)
    };
    rest("first-secret").unwrap_or_else(|e| panic!("Allocate with the file's secret: {e}"));
    let refused = |secret: &str| {
        let e = rest(secret).expect_err("allocated with a secret not in force");
        assert!(e.contains("401"), "expected 401 Unauthorized, got: {e}");
    };
    refused("s3cret");

    // Rewrite the file and reload: the new secret works, the old one no more.
    fs::write(&secret_path, "second-secret\n").unwrap();
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    // Each shard takes the new settings from its own command queue, and each
    // Allocate below comes from a new port (so maybe another shard): wait
    // until the new secret works and the old one fails, then check both
    // again.
    let deadline = Instant::now() + STEP;
    while rest("second-secret").is_err() || rest("first-secret").is_ok() {
        assert!(
            Instant::now() < deadline,
            "the rewritten secret is not in force {STEP:?} after SIGHUP:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..4 {
        rest("second-secret").unwrap_or_else(|e| panic!("after reload: {e}"));
        refused("first-secret");
    }

    // A reload with the file gone is refused, with file, key and reason;
    // the running secret stays.
    fs::remove_file(&secret_path).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let want = format!(
        "{}: auth.secret_files[0]: {}: No such file or directory",
        config.display(),
        secret_path.display()
    );
    let deadline = Instant::now() + STEP;
    while !fs::read_to_string(&log).unwrap_or_default().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in the log {STEP:?} after SIGHUP:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rest("second-secret")
        .unwrap_or_else(|e| panic!("the running secret after a refused reload: {e}"));
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !logged.contains("first-secret") && !logged.contains("second-secret"),
        "a secret in the log:\n{logged}"
    );
    drop(server);

    // Startup without the file stops with the same line.
    let mut start = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    start.arg("--config").arg(&config);
    let out = run_with_timeout(start, STEP);
    assert_eq!(out.code, Some(1), "{}", out.output);
    assert!(out.output.contains(&want), "{}", out.output);
}
