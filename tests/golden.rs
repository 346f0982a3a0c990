//! Golden tests: what operators see of ferroturn, written down so that a
//! redesign that promises "no change in behaviour" (issue 14: the shell,
//! the config types, the metrics labels) can prove it. Each file under
//! `tests/golden/` is plain text, one fact a line, sorted where the order
//! means nothing, so that `git diff` shows exactly what changed:
//!
//! - `check.txt`: exit code, stdout and stderr of the real `ferroturn check`
//!   on some 300 configuration files: every error `src/config.rs` can give
//!   (by hand, key by key), a wrong type, a negative and a too-large value for
//!   every key of the reference table (generated from it), the file-level
//!   errors, and the bundled configurations. Temporary paths read `FILE`
//!   (the file checked) and `DIR` (its directory).
//! - `keys.txt`: every key of `src/config_keys.rs`'s table with its type and
//!   default, in the reference's order.
//! - `metrics.txt`: every `# HELP` and `# TYPE` line of `/metrics`, every
//!   series (name and labels, not the value) and, per metric, each label's
//!   set of values, from a server driven through a scripted session.
//! - `log-json.txt`, `log-text.txt`: the log lines at info and above of that
//!   session (`[log] format` "json" and "text"), step by step, with what
//!   varies from run to run masked: times, ports, temporary paths.
//!
//! `maximal.toml` is an input, kept by hand: it sets every key of the
//! reference table (a test holds it to the table) and must pass `check`, so
//! renaming a key, or changing a value's form, fails here.
//!
//! A difference fails with the first differing lines (with line numbers)
//! and the lines only one side has. When a change is meant, rewrite the
//! files and read the diff before committing it:
//!
//! ```sh
//! FERROTURN_BLESS=1 cargo test --test golden
//! git diff tests/golden
//! ```
//!
//! Servers listen on 127.0.0.1 only, every wait is bounded, and ports come
//! from the helpers in `tests/common`.

mod common;
mod raw;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{EchoPeer, LOCALHOST, TempDir};
use ferroturn::auth::{Key as AuthKey, key_hex};
use ferroturn::config_keys::{KEYS, KeyDefault, SECTIONS};
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use regex::Regex;
use stun::attributes::ATTR_DATA;
use stun::message::*;

// ---- Golden files -----------------------------------------------------------

/// The environment variable that makes the tests write the golden files
/// instead of comparing with them.
const BLESS: &str = "FERROTURN_BLESS";

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compare `actual` with the golden file `name`, or write it when
/// `FERROTURN_BLESS=1`.
fn golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var(BLESS).as_deref() == Ok("1") {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("{BLESS}=1: wrote {}", path.display());
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; `{BLESS}=1 cargo test --test golden` writes it",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} differs from what ferroturn does now:\n{}\nIf the change is meant: \
             {BLESS}=1 cargo test --test golden, then read `git diff tests/golden`.",
            path.display(),
            diff(&expected, actual)
        );
    }
}

/// A readable account of how `actual` differs from `expected`: the first
/// differing lines with their numbers, then the lines only one side holds.
fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let first = (0..e.len().max(a.len()))
        .find(|&i| e.get(i) != a.get(i))
        .unwrap_or(e.len());
    let mut out = format!(
        "first difference at line {} (golden {} lines, now {}):\n",
        first + 1,
        e.len(),
        a.len()
    );
    for i in first..(first + 6) {
        if let Some(l) = e.get(i) {
            let _ = writeln!(out, "  golden {:>4}: {l}", i + 1);
        }
        if let Some(l) = a.get(i) {
            let _ = writeln!(out, "  now    {:>4}: {l}", i + 1);
        }
    }
    let count = |lines: &[&str]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for l in lines {
            *m.entry((*l).to_owned()).or_default() += 1;
        }
        m
    };
    let (ce, ca) = (count(&e), count(&a));
    for (title, from, other) in [
        ("only in the golden file", &ce, &ca),
        ("only now", &ca, &ce),
    ] {
        let only: Vec<&String> = from
            .iter()
            .filter(|(l, n)| other.get(*l).copied().unwrap_or(0) < **n)
            .map(|(l, _)| l)
            .collect();
        if !only.is_empty() {
            let _ = writeln!(out, "{title} ({}):", only.len());
            for l in only.iter().take(40) {
                let _ = writeln!(out, "  {l}");
            }
            if only.len() > 40 {
                let _ = writeln!(out, "  … and {} more", only.len() - 40);
            }
        }
    }
    out
}

// ---- Running `ferroturn` ----------------------------------------------------

/// What a short-lived `ferroturn` command did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `ferroturn ARGS` with nothing on stdin and no `RUST_LOG`, killed after
/// 30 s (a failure then).
fn ferroturn(args: &[&std::ffi::OsStr]) -> Ran {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferroturn");
    // Both pipes are read by threads, so that no output can fill one up.
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for ferroturn") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferroturn {args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ran {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

// ---- Configuration files ----------------------------------------------------

/// A configuration file as tables of `key = value` lines (values written
/// in TOML as they go into the file), so that a case can set, replace or
/// drop one key of a valid file.
#[derive(Clone)]
struct Toml(Vec<(String, Vec<(String, String)>)>);

impl Toml {
    /// A valid file on loopback: the smallest that passes `check`.
    fn base() -> Toml {
        let t = |name: &str, pairs: &[(&str, &str)]| {
            let pairs = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            (name.to_owned(), pairs)
        };
        Toml(vec![
            t("", &[("realm", "\"example.org\"")]),
            t(
                "listen",
                &[
                    ("address", "\"127.0.0.1:3478\""),
                    ("transports", "[\"udp\", \"tcp\"]"),
                ],
            ),
            t(
                "relay",
                &[("address", "\"127.0.0.1\""), ("ports", "\"49152-65535\"")],
            ),
            t(
                "auth",
                &[
                    ("secrets", "[\"s3cret\"]"),
                    ("users", "{ alice = \"liddell\" }"),
                ],
            ),
        ])
    }

    /// Set `key` in the `index`th table named `section` (made if missing).
    fn set_at(mut self, section: &str, index: usize, key: &str, value: &str) -> Toml {
        let found = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| s == section)
            .map(|(i, _)| i)
            .nth(index);
        let at = match found {
            Some(i) => i,
            None => {
                self.0.push((section.to_owned(), Vec::new()));
                self.0.len() - 1
            }
        };
        let pairs = &mut self.0[at].1;
        match pairs.iter_mut().find(|(k, _)| k == key) {
            Some(p) => p.1 = value.to_owned(),
            None => pairs.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    fn set(self, section: &str, key: &str, value: &str) -> Toml {
        self.set_at(section, 0, key, value)
    }

    fn unset(mut self, section: &str, key: &str) -> Toml {
        for (s, pairs) in &mut self.0 {
            if s == section {
                pairs.retain(|(k, _)| k != key);
            }
        }
        self
    }

    /// Without any table named `section`.
    fn without(mut self, section: &str) -> Toml {
        self.0.retain(|(s, _)| s != section);
        self
    }

    /// Another table named `section` at the end (a second `[[listen]]`).
    fn table(mut self, section: &str, pairs: &[(&str, &str)]) -> Toml {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0.push((section.to_owned(), pairs));
        self
    }

    fn render(&self) -> String {
        let mut out = String::new();
        // The top level first: a key after a table header would be the table's.
        let mut tables: Vec<&(String, Vec<(String, String)>)> = self.0.iter().collect();
        tables.sort_by_key(|(s, _)| !s.is_empty());
        for (section, pairs) in tables {
            if !section.is_empty() {
                let _ = writeln!(out, "\n{}", ferroturn::config_keys::header(section));
            }
            for (k, v) in pairs {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
        out
    }
}

/// What a case gives `ferroturn check`.
enum Input {
    /// This text, written to `DIR/<n>.toml`.
    Text(String),
    /// This path, as it is.
    Path(PathBuf),
    /// No `--config` at all.
    Nothing,
}

struct Case {
    name: String,
    input: Input,
    /// Whether the file must pass; `None` for the generated cases, whose
    /// outcome the golden file alone records.
    passes: Option<bool>,
}

/// The files the secret-file cases name, made in `dir`.
struct Files {
    dir: String,
    good: String,
}

impl Files {
    fn make(dir: &Path) -> Files {
        let put = |name: &str, bytes: &[u8]| fs::write(dir.join(name), bytes).unwrap();
        put(
            "good-secret",
            b"  a-secret-from-a-file  \nsecond line, ignored\n",
        );
        put("bundled-secret", b"change-me\n");
        put("blank-secret", b"  \n\nlater lines do not count\n");
        put("big-secret", &vec![b'x'; 64 * 1024 + 1]);
        put("binary-secret", b"\xff\xfe not UTF-8\n");
        put("not-utf8.toml", b"realm = \"\xff\"\n");
        fs::create_dir_all(dir.join("folder")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("fifo").display().to_string()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        let dir = dir.display().to_string();
        Files {
            good: format!("{dir}/good-secret"),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }
}

/// A TOML string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Cases that set one key of the smallest valid file (`Toml::base`), each
/// an error `parse` or a helper of it gives: name, section, key, value.
#[rustfmt::skip]
const ONE_KEY: &[(&str, &str, &str, &str)] = &[
    ("realm: empty", "", "realm", "\"\""),
    ("realm: blanks only", "", "realm", "\"   \""),
    ("top level: unknown key", "", "reaml", "\"x\""),
    ("server.workers: 257", "server", "workers", "257"),
    ("server.udp_threads: unknown", "server", "udp_threads", "\"fast\""),
    ("server.udp_scheduling: unknown", "server", "udp_scheduling", "\"fifo\""),
    ("server.alternate: not IP:PORT", "server", "alternate", "\"turn.example.org:3478\""),
    ("server.alternate_tls: not IP:PORT", "server", "alternate_tls", "\"turn.example.org:5349\""),
    ("server.alternate_domain: without alternate_tls", "server", "alternate_domain", "\"turn2.example.org\""),
    ("server.alternate_domain: an IP address", "server", "alternate_domain", "\"198.51.100.20\""),
    ("server.alternate_domain: a port", "server", "alternate_domain", "\"turn2.example.org:5349\""),
    ("server.alternate_domain: a hyphen at a label's end", "server", "alternate_domain", "\"turn-.example.org\""),
    ("server.alternate_domain: an empty label", "server", "alternate_domain", "\"turn..example.org\""),
    ("server.alternate_domain: 255 characters", "server", "alternate_domain", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""),
    ("server.alternate_domain: a 64-character label", "server", "alternate_domain", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.org\""),
    ("listen.address: not an address", "listen", "address", "\"nope\""),
    ("listen.address: no port", "listen", "address", "\"127.0.0.1\""),
    ("listen.address: a host name", "listen", "address", "\"localhost:3478\""),
    ("listen.address: IPv6 without brackets", "listen", "address", "\"::1:3478\""),
    ("listen.transports: empty", "listen", "transports", "[]"),
    ("listen.transports: unknown", "listen", "transports", "[\"udp\", \"quic\"]"),
    ("listen.cert: without tls", "listen", "cert", "\"/etc/ferroturn/cert.pem\""),
    ("listen.key: without tls", "listen", "key", "\"/etc/ferroturn/key.pem\""),
    ("relay.address: not an IP", "relay", "address", "\"relay.example.org\""),
    ("relay.address: an empty list", "relay", "address", "[]"),
    ("relay.address: 33 addresses", "relay", "address", "[\"127.0.0.1\", \"127.0.0.2\", \"127.0.0.3\", \"127.0.0.4\", \"127.0.0.5\", \"127.0.0.6\", \"127.0.0.7\", \"127.0.0.8\", \"127.0.0.9\", \"127.0.0.10\", \"127.0.0.11\", \"127.0.0.12\", \"127.0.0.13\", \"127.0.0.14\", \"127.0.0.15\", \"127.0.0.16\", \"127.0.0.17\", \"127.0.0.18\", \"127.0.0.19\", \"127.0.0.20\", \"127.0.0.21\", \"127.0.0.22\", \"127.0.0.23\", \"127.0.0.24\", \"127.0.0.25\", \"127.0.0.26\", \"127.0.0.27\", \"127.0.0.28\", \"127.0.0.29\", \"127.0.0.30\", \"127.0.0.31\", \"127.0.0.32\", \"127.0.0.33\"]"),
    ("relay.address: listed twice", "relay", "address", "[\"127.0.0.1\", \"127.0.0.1\"]"),
    ("relay.address: 0.0.0.0 among several", "relay", "address", "[\"0.0.0.0\", \"127.0.0.2\"]"),
    ("relay.address: IPv6 in a list", "relay", "address", "[\"127.0.0.1\", \"::1\"]"),
    ("relay.address: not an IP in a list", "relay", "address", "[\"127.0.0.1\", \"nope\"]"),
    ("relay.public_address: a list of another length", "relay", "public_address", "[\"203.0.113.1\", \"203.0.113.2\"]"),
    ("relay.address_v6: more than relay.address", "relay", "address_v6", "[\"::1\", \"::2\"]"),
    ("relay.address: IPv6", "relay", "address", "\"::1\""),
    ("relay.address: IPv6 unspecified", "relay", "address", "\"::\""),
    ("relay.public_address: missing with 0.0.0.0", "relay", "address", "\"0.0.0.0\""),
    ("relay.public_address: not an IP", "relay", "public_address", "\"nope\""),
    ("relay.public_address: other family", "relay", "public_address", "\"2001:db8::1\""),
    ("relay.public_address: unspecified", "relay", "public_address", "\"0.0.0.0\""),
    ("relay.address_v6: IPv4", "relay", "address_v6", "\"127.0.0.1\""),
    ("relay.address_v6: not an IP", "relay", "address_v6", "\"nope\""),
    ("relay.public_address_v6: without address_v6", "relay", "public_address_v6", "\"2001:db8::1\""),
    ("relay.public_address_v6: missing with ::", "relay", "address_v6", "\"::\""),
    ("relay.default_family: unknown", "relay", "default_family", "\"ipv6\""),
    ("relay.ports: not a range", "relay", "ports", "\"50000\""),
    ("relay.ports: empty", "relay", "ports", "\"\""),
    ("relay.ports: start not a number", "relay", "ports", "\"a-60000\""),
    ("relay.ports: end not a number", "relay", "ports", "\"50000-b\""),
    ("relay.ports: end above 65535", "relay", "ports", "\"50000-70000\""),
    ("relay.ports: start 0", "relay", "ports", "\"0-100\""),
    ("relay.ports: start above end", "relay", "ports", "\"60000-50000\""),
    ("auth.secrets: empty first", "auth", "secrets", "[\"\"]"),
    ("auth.secrets: empty second", "auth", "secrets", "[\"s3cret\", \"\"]"),
    ("auth.users: empty name", "auth", "users", "{ \"\" = \"pw\" }"),
    ("auth.users: empty password", "auth", "users", "{ carol = \"\" }"),
    ("auth.users: 0x but not an MD5 key", "auth", "users", "{ carol = \"0xdeadbeef\" }"),
    ("auth.users: empty password in table", "auth", "users", "{ carol = { password = \"\" } }"),
    ("auth.users: empty table", "auth", "users", "{ carol = {} }"),
    ("auth.users: md5 too short", "auth", "users", "{ carol = { md5 = \"0x12\" } }"),
    ("auth.users: an integer", "auth", "users", "{ carol = 17 }"),
    ("auth.users: an array", "auth", "users", "{ carol = [\"hunter2\"] }"),
    ("auth.users: unknown key in a user's table", "auth", "users", "{ carol = { pasword = \"x\" } }"),
    ("auth.nonce_lifetime: 9", "auth", "nonce_lifetime", "9"),
    ("auth.nonce_lifetime: 86401", "auth", "nonce_lifetime", "86401"),
    ("peers.allow: not an address", "peers", "allow", "[\"nope\"]"),
    ("peers.allow: IPv4 prefix over 32", "peers", "allow", "[\"10.0.0.0/33\"]"),
    ("peers.allow: IPv6 prefix over 128", "peers", "allow", "[\"::/129\"]"),
    ("peers.allow: prefix not a number", "peers", "allow", "[\"10.0.0.0/x\"]"),
    ("peers.deny: second entry", "peers", "deny", "[\"127.0.0.1\", \"localhost\"]"),
    ("allocation.lifetime: 0", "allocation", "lifetime", "0"),
    ("allocation.max_lifetime: below lifetime", "allocation", "max_lifetime", "300"),
    ("allocation.max_lifetime: below a raised lifetime", "allocation", "lifetime", "4000"),
    ("allocation.permission_lifetime: 0", "allocation", "permission_lifetime", "0"),
    ("allocation.permission_lifetime: 301", "allocation", "permission_lifetime", "301"),
    ("allocation.channel_lifetime: 0", "allocation", "channel_lifetime", "0"),
    ("allocation.channel_lifetime: 601", "allocation", "channel_lifetime", "601"),
    ("limits.allocations_per_user: 0", "limits", "allocations_per_user", "0"),
    ("limits.permissions_per_allocation: 0", "limits", "permissions_per_allocation", "0"),
    ("limits.channels_per_allocation: 0", "limits", "channels_per_allocation", "0"),
    ("limits.channels_per_allocation: 4097", "limits", "channels_per_allocation", "4097"),
    ("limits.stream_connections: 0", "limits", "stream_connections", "0"),
    ("limits.stream_connections: 1048577", "limits", "stream_connections", "1048577"),
    ("limits.stream_message_timeout: 0", "limits", "stream_message_timeout", "0"),
    ("limits.stream_message_timeout: 301", "limits", "stream_message_timeout", "301"),
    ("limits.stream_allocation_timeout: 0", "limits", "stream_allocation_timeout", "0"),
    ("limits.stream_allocation_timeout: 3601", "limits", "stream_allocation_timeout", "3601"),
    ("limits.tls_handshakes_per_ip: 0", "limits", "tls_handshakes_per_ip", "0"),
    ("limits.tls_handshakes_per_ip: 65", "limits", "tls_handshakes_per_ip", "65"),
    ("limits.connections_per_ip: 4", "limits", "connections_per_ip", "4"),
    ("limits.stream_queue_bytes: 4095", "limits", "stream_queue_bytes", "4095"),
    ("limits.stream_queue_bytes: 16777217", "limits", "stream_queue_bytes", "16777217"),
    ("log.format: unknown", "log", "format", "\"xml\""),
    ("log.level: bad level", "log", "level", "\"ferroturn=loud\""),
    ("log.level: no target", "log", "level", "\"=info\""),
    ("metrics.address: not IP:PORT", "metrics", "address", "\"127.0.0.1\""),
    ("metrics.hosts: with a port", "metrics", "hosts", "[\"ok.example\", \"turn.example.org:443\"]"),
    ("metrics.hosts: empty", "metrics", "hosts", "[\"ok.example\", \"\"]"),
    ("metrics.hosts: empty label", "metrics", "hosts", "[\"ok.example\", \"a..b\"]"),
    ("metrics.hosts: underscore", "metrics", "hosts", "[\"ok.example\", \"under_score\"]"),
    ("admin.token: empty", "admin", "token", "\"\""),
    ("admin.token: a space", "admin", "token", "\"two words\""),
    ("admin.token: missing with address", "admin", "address", "\"127.0.0.1:9642\""),
    ("admin.socket: relative", "admin", "socket", "\"admin.sock\""),
    ("demo.address: not IP:PORT", "demo", "address", "\"localhost:8080\""),
    ("demo.idle_timeout: 0", "demo", "idle_timeout", "0"),
    ("demo.idle_timeout: 3601", "demo", "idle_timeout", "3601"),
    ("demo.connections_per_ip: 0", "demo", "connections_per_ip", "0"),
    ("demo.connections_per_ip: 4097", "demo", "connections_per_ip", "4097"),
    ("demo.credential_ttl: 59", "demo", "credential_ttl", "59"),
    ("demo.credential_ttl: 86401", "demo", "credential_ttl", "86401"),
    ("demo.room_size: 1", "demo", "room_size", "1"),
    ("demo.room_size: 9", "demo", "room_size", "9"),
    ("demo.sockjs_heartbeat: 0", "demo", "sockjs_heartbeat", "0"),
    ("demo.sockjs_heartbeat: 301", "demo", "sockjs_heartbeat", "301"),
    ("demo.sockjs_disconnect_delay: 0", "demo", "sockjs_disconnect_delay", "0"),
    ("demo.sockjs_disconnect_delay: 301", "demo", "sockjs_disconnect_delay", "301"),
    ("demo.allowed_origins: no scheme", "demo", "allowed_origins", "[\"app.example\"]"),
    ("demo.allowed_origins: a path", "demo", "allowed_origins", "[\"https://app.example/call\"]"),
    ("cluster.redis: not a redis URL", "cluster", "redis", "\"http://127.0.0.1:6379\""),
    ("cluster.redis: unparsable", "cluster", "redis", "\"redis://[::1:6379\""),
];

/// The cases written by hand: every error `parse` and its helpers in
/// src/config.rs can give, each on the key it names, TOML syntax errors
/// (with the values `[auth]` and `[admin]` hide), the file itself, and
/// files that must pass.
fn hand_cases(f: &Files) -> Vec<Case> {
    let b = Toml::base;
    let case = |name: &str, t: &Toml, passes: bool| Case {
        name: name.to_owned(),
        input: Input::Text(t.render()),
        passes: Some(passes),
    };
    let mut cases: Vec<Case> = ONE_KEY
        .iter()
        .map(|(name, section, key, value)| case(name, &b().set(section, key, value), false))
        .collect();
    let md5 = |user: &str| key_hex(&AuthKey::md5(user, "example.org", "pw"));
    let sha = |user: &str| key_hex(&AuthKey::sha256(user, "example.org", "pw"));
    let alice_md5 = key_hex(&AuthKey::md5("alice", "example.org", "wonderland"));
    let alice_sha = key_hex(&AuthKey::sha256("alice", "example.org", "wonderland"));
    let spread = || {
        b().set("cluster", "redis", "\"redis://127.0.0.1:6379\"")
            .set("cluster", "redirect_above", "0.8")
    };
    let tls = || {
        b().set("listen", "transports", "[\"tls\"]")
            .set("listen", "cert", "\"/etc/ferroturn/cert.pem\"")
            .set("listen", "key", "\"/etc/ferroturn/key.pem\"")
    };
    let dtls = || {
        b().set("listen", "transports", "[\"dtls\"]")
            .set("listen", "cert", "\"/etc/ferroturn/cert.pem\"")
            .set("listen", "key", "\"/etc/ferroturn/key.pem\"")
    };
    let proxy = || {
        b().set("listen", "transports", "[\"tcp\"]")
            .set("listen", "proxy_protocol", "true")
            .set("listen", "proxy_from", "[\"10.0.0.0/8\"]")
    };
    let ranges = |n: usize| {
        let v: Vec<String> = (0..n).map(|i| q(&format!("10.0.{i}.0/24"))).collect();
        format!("[{}]", v.join(", "))
    };
    let secrets = |n: usize| {
        let v: Vec<String> = (0..n).map(|i| q(&format!("secret-{i}"))).collect();
        format!("[{}]", v.join(", "))
    };
    fn udp_at(address: &str) -> [(&str, &str); 2] {
        [("address", address), ("transports", "[\"udp\"]")]
    }
    // The bundled credentials, in each form, with a TURN listener off loopback.
    let off = |auth: &str, value: &str| {
        b().set("listen", "address", "\"0.0.0.0:3478\"")
            .without("auth")
            .set("auth", auth, value)
    };
    let bundled_file = format!("[{}]", q(&f.path("bundled-secret")));
    let nat = |other: &str, port: &str| {
        b().set("nat_behaviour", "other_address", other)
            .set("nat_behaviour", "other_port", port)
    };
    let alice_keys = format!(
        "{{ alice = {{ md5 = {}, sha256 = {} }} }}",
        q(&alice_md5),
        q(&alice_sha)
    );
    #[rustfmt::skip]
    let more = [
        ("realm: missing", b().unset("", "realm")),
        ("listen: none", b().without("listen")),
        ("listen: empty array", b().without("listen").set("", "listen", "[]")),
        ("listen.address: in the second entry", b().table("listen", &udp_at("\"nope\""))),
        ("listen.transports: tcp and tls on one entry", tls().set("listen", "transports", "[\"tcp\", \"tls\"]")),
        ("listen.cert: tls without cert", tls().unset("listen", "cert")),
        ("listen.key: tls without key", tls().unset("listen", "key")),
        ("listen.transports: udp and dtls on one entry", dtls().set("listen", "transports", "[\"udp\", \"dtls\"]")),
        ("listen.cert: dtls without cert", dtls().unset("listen", "cert")),
        ("listen.proxy_from: missing with proxy_protocol", proxy().unset("listen", "proxy_from")),
        ("listen.proxy_from: empty", proxy().set("listen", "proxy_from", "[]")),
        ("listen.proxy_from: 65 ranges", proxy().set("listen", "proxy_from", &ranges(65))),
        ("listen.proxy_from: not a CIDR", proxy().set("listen", "proxy_from", "[\"10.0.0.0/33\"]")),
        ("listen.proxy_from: without proxy_protocol", proxy().unset("listen", "proxy_protocol")),
        ("listen.proxy_protocol: on udp", proxy().set("listen", "transports", "[\"udp\", \"tcp\"]")),
        ("auth: no credentials", b().without("auth")),
        ("auth: empty section", b().without("auth").table("auth", &[])),
        ("auth.secrets: 9", b().set("auth", "secrets", &secrets(9))),
        (
            "auth.secret_files: 5 secrets and 4 files",
            b().set("auth", "secrets", &secrets(5))
                .set("auth", "secret_files", &format!("[{}]", vec![q(&f.good); 4].join(", "))),
        ),
        ("auth.users: a SHA-256 key as string", b().set("auth", "users", &format!("{{ carol = {} }}", q(&sha("carol"))))),
        (
            "auth.users: password and key",
            b().set("auth", "users", &format!("{{ carol = {{ password = \"pw\", md5 = {} }} }}", q(&md5("carol")))),
        ),
        ("auth.users: sha256 of MD5 length", b().set("auth", "users", &format!("{{ carol = {{ sha256 = {} }} }}", q(&md5("carol"))))),
        ("bundled credentials off loopback: secret", off("secrets", "[\"mine\", \"change-me\"]")),
        ("bundled credentials off loopback: secret in a file", off("secret_files", &bundled_file)),
        ("bundled credentials off loopback: user", off("users", "{ alice = \"wonderland\" }")),
        ("bundled credentials off loopback: user as MD5 key", off("users", &format!("{{ alice = {} }}", q(&alice_md5)))),
        ("bundled credentials off loopback: user as table", off("users", "{ alice = { password = \"wonderland\" } }")),
        ("bundled credentials off loopback: user as both keys", off("users", &alice_keys)),
        (
            "bundled credentials off loopback: second listener",
            b().set("auth", "secrets", "[\"change-me\"]").table("listen", &udp_at("\"[::]:3479\"")),
        ),
        ("metrics.hosts: 254 bytes", b().set("metrics", "hosts", &format!("[\"{}.org\"]", "a".repeat(250)))),
        ("admin.address: not IP:PORT", b().set("admin", "address", "\"localhost:9642\"").set("admin", "token", "\"t\"")),
        ("cluster.redis: missing", b().set("cluster", "node", "\"turn1\"")),
        (
            "cluster.node: a space",
            b().set("cluster", "redis", "\"redis://127.0.0.1:6379\"").set("cluster", "node", "\"turn 1\""),
        ),
        (
            "cluster.heartbeat: 0",
            b().set("cluster", "redis", "\"redis://127.0.0.1:6379\"").set("cluster", "heartbeat", "0"),
        ),
        (
            "cluster.heartbeat: 61",
            b().set("cluster", "redis", "\"redis://127.0.0.1:6379\"").set("cluster", "heartbeat", "61"),
        ),
        (
            "cluster.usage_stream_max: 9",
            b().set("cluster", "redis", "\"redis://127.0.0.1:6379\"").set("cluster", "usage_stream_max", "9"),
        ),
        ("cluster.redirect_above: 0", spread().set("cluster", "redirect_above", "0.0")),
        ("cluster.redirect_above: 1.5", spread().set("cluster", "redirect_above", "1.5")),
        ("cluster.advertise: unspecified address", spread().set("cluster", "advertise", "[\"udp:0.0.0.0:3478\"]")),
        ("cluster.advertise: no transport", spread().set("cluster", "advertise", "[\"203.0.113.5:3478\"]")),
        (
            "cluster.advertise: two udp entries of IPv4",
            spread().set("cluster", "advertise", "[\"udp:203.0.113.5:3478\", \"udp:203.0.113.6:3478\"]"),
        ),
        ("cluster.advertise: missing with a listener on 0.0.0.0", spread().set("listen", "address", "\"0.0.0.0:3478\"")),
        (
            "cluster.advertise_tls_name: without a tls entry",
            spread().set("cluster", "advertise", "[\"udp:203.0.113.5:3478\"]").set("cluster", "advertise_tls_name", "\"turn1.example.org\""),
        ),
        ("admin.socket: 108 bytes", b().set("admin", "socket", &q(&format!("/{}", "s".repeat(107))))),
        ("nat_behaviour: no UDP listener of the family", nat("\"::2\"", "3479")),
        ("nat_behaviour: listener on 0.0.0.0", nat("\"127.0.0.2\"", "3479").set("listen", "address", "\"0.0.0.0:3478\"")),
        ("nat_behaviour.listen: two UDP listeners of the family", nat("\"127.0.0.2\"", "3479").table("listen", &udp_at("\"127.0.0.3:3478\""))),
        ("nat_behaviour.listen: no such UDP listener", nat("\"127.0.0.2\"", "3479").set("nat_behaviour", "listen", "\"127.0.0.9:3478\"")),
        ("nat_behaviour.other_address: the listener's", nat("\"127.0.0.1\"", "3479")),
        ("nat_behaviour.other_address: unspecified", nat("\"0.0.0.0\"", "3479")),
        ("nat_behaviour.other_address: not the listener's family", nat("\"::2\"", "3479").set("nat_behaviour", "listen", "\"127.0.0.1:3478\"")),
        ("nat_behaviour.other_address: missing", b().set("nat_behaviour", "other_port", "3479")),
        ("nat_behaviour.other_port: the listener's", nat("\"127.0.0.2\"", "3478")),
        ("nat_behaviour.other_port: in relay.ports", nat("\"127.0.0.2\"", "50000")),
        ("fastpath.mode: on with only a wildcard listener", b().set("listen", "address", "\"0.0.0.0:3478\"").set("fastpath", "mode", "\"on\"")),
        ("fastpath.mode: not a mode", b().set("fastpath", "mode", "\"fast\"")),
        ("fastpath.interfaces: not a name", b().set("fastpath", "interfaces", "[\"a/b\"]")),
        ("fastpath.interfaces: too long", b().set("fastpath", "interfaces", "[\"sixteen-letters!\"]")),
        (
            "demo.allowed_origins: 33",
            b().set("demo", "allowed_origins", &format!("[{}]", (0..33).map(|i| q(&format!("https://o{i}.example"))).collect::<Vec<_>>().join(", "))),
        ),
    ];
    for (what, file) in [
        ("relative path", "secret".to_owned()),
        ("missing", f.path("missing")),
        ("blank first line", f.path("blank-secret")),
        ("a directory", f.path("folder")),
        ("a FIFO", f.path("fifo")),
        ("over 64 KiB", f.path("big-secret")),
        ("not UTF-8", f.path("binary-secret")),
    ] {
        let files = format!("[{}, {}]", q(&f.good), q(&file));
        let t = b().set("auth", "secret_files", &files);
        cases.push(case(&format!("auth.secret_files: {what}"), &t, false));
    }
    for (section, _) in SECTIONS.iter().filter(|(s, _)| !s.is_empty()) {
        let t = b().set(section, "no_such_key", "1");
        cases.push(case(&format!("{section}: unknown key"), &t, false));
        let t = b().without(section).set("", section, "1");
        cases.push(case(&format!("{section}: not a table"), &t, false));
    }
    for (what, v) in [
        ("unspecified", "\"::\""),
        ("IPv4", "\"203.0.113.1\""),
        ("not an IP", "\"nope\""),
    ] {
        let t = b()
            .set("relay", "address_v6", "\"::1\"")
            .set("relay", "public_address_v6", v);
        cases.push(case(&format!("relay.public_address_v6: {what}"), &t, false));
    }
    cases.extend(more.iter().map(|(name, t)| case(name, t, false)));
    cases.push(case(
        "nat_behaviour: passes",
        &nat("\"127.0.0.2\"", "3479"),
        true,
    ));
    // `check` is the same with and without the cargo feature `fastpath`.
    cases.push(case(
        "fastpath: on passes",
        &b().set("fastpath", "mode", "\"on\"")
            .set("fastpath", "interfaces", "[\"lo\"]"),
        true,
    ));

    // TOML syntax, and the values it hides in [auth] and [admin].
    let base = b().render();
    let text = |name: &str, text: String, passes: bool| Case {
        name: name.to_owned(),
        input: Input::Text(text),
        passes: Some(passes),
    };
    let hidden_secrets = |v: &str| b().set("auth", "secrets", v).render();
    #[rustfmt::skip]
    let syntax = [
        text("syntax: unterminated string", base.replace("\"example.org\"", "\"example.org"), false),
        text("syntax: bare value in [relay]", b().set("relay", "ports", "49152-65535").render(), false),
        text("syntax: duplicate key", format!("realm = \"again\"\n{base}"), false),
        text("syntax: duplicate table", format!("{base}\n[relay]\naddress = \"127.0.0.1\"\n"), false),
        text("syntax: [listen] instead of [[listen]]", base.replace("[[listen]]", "[listen]"), false),
        text("syntax: duplicate key in [auth], hidden", hidden_secrets("[\"hunter2\"]\nsecrets = [\"hunter3\"]"), false),
        text("syntax: in [auth], hidden", hidden_secrets("[\"hunter2\" \"x\"]"), false),
        text("syntax: bad escape in [auth], hidden", hidden_secrets("[\"hunter2\\q\"]"), false),
        text("syntax: dotted admin.token at the top, hidden", format!("admin.token = \"hunter2\" x\n{base}"), false),
        text("syntax: quoted [\"admin\"] header, hidden", format!("{base}\n[ \"admin\" ]\ntoken = \"hunter2\" x\n"), false),
        text("syntax: inline admin table, hidden", format!("admin = {{ token = [\"hunter2\"] }}\n{base}"), false),
    ];
    cases.extend(syntax);

    // The file itself, and the command line.
    for (name, path) in [
        ("file: missing", "missing.toml"),
        ("file: a directory", "folder"),
        ("file: not UTF-8", "not-utf8.toml"),
    ] {
        cases.push(Case {
            name: name.into(),
            input: Input::Path(PathBuf::from(f.path(path))),
            passes: Some(false),
        });
    }
    cases.push(Case {
        name: "usage: no --config".into(),
        input: Input::Nothing,
        passes: Some(false),
    });

    // Files that pass, some of them to record what `check` does not refuse.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundled = fs::read_to_string(root.join("config.toml")).expect("config.toml");
    let packaged =
        fs::read_to_string(root.join("packaging/config.toml")).expect("packaging/config.toml");
    assert!(
        packaged.contains("\"/etc/ferroturn/secret\""),
        "the package's secret file moved"
    );
    let every_form = format!(
        "{{ a = \"pw\", b = {}, c = {{ md5 = {}, sha256 = {} }}, d = {{ sha256 = {} }}, e = {{ password = \"0xdeadbeef\" }}, f = {} }}",
        q(&md5("b")),
        q(&md5("c")),
        q(&sha("c")),
        q(&sha("d")),
        q(&md5("f").to_uppercase().replacen("0X", "0x", 1)),
    );
    let on_loopback = b()
        .set("auth", "secrets", "[\"change-me\"]")
        .set("auth", "users", "{ alice = \"wonderland\" }")
        .table("listen", &udp_at("\"[::1]:3478\""))
        .table("listen", &udp_at("\"[::ffff:127.0.0.2]:3478\""))
        .table(
            "listen",
            &[
                ("address", "\"0.0.0.0:3479\""),
                ("transports", "[\"udp\"]"),
                ("turn", "false"),
            ],
        );
    let other_realm = off("users", &format!("{{ alice = {} }}", q(&alice_md5))).set(
        "",
        "realm",
        "\"elsewhere.org\"",
    );
    let tcp_beside_tls = [
        ("address", "\"127.0.0.1:3478\""),
        ("transports", "[\"tcp\"]"),
    ];
    #[rustfmt::skip]
    let ok = [
        ("the smallest file", b()),
        ("server.workers 256", b().set("server", "workers", "256")),
        ("STUN-only listener without [auth]", b().without("auth").set("listen", "turn", "false")),
        ("auth.secrets 8", b().set("auth", "secrets", &secrets(8))),
        ("auth.secret_files", b().set("auth", "secret_files", &format!("[{}]", q(&f.good)))),
        ("auth.users in every form", b().set("auth", "users", &every_form)),
        ("bundled credentials on loopback listeners", on_loopback),
        ("bundled user under another realm off loopback", other_realm),
        ("two listeners on one address (not checked)", b().table("listen", &[("address", "\"127.0.0.1:3478\""), ("transports", "[\"udp\", \"tcp\"]")])),
        ("tcp and tls entries on one port (not checked)", tls().table("listen", &tcp_beside_tls)),
        ("udp and tls on one entry", tls().set("listen", "transports", "[\"udp\", \"tls\"]")),
        ("PROXY protocol on tcp, 64 ranges", proxy().set("listen", "proxy_from", &ranges(64))),
        ("PROXY protocol on tls", tls().set("listen", "proxy_protocol", "true").set("listen", "proxy_from", "[\"::1\"]")),
        (
            "IPv6 relays",
            b().set("relay", "address_v6", "\"::\"")
                .set("relay", "public_address_v6", "\"2001:db8::10\"")
                .set("relay", "default_family", "\"same-as-client\""),
        ),
        ("relay on 0.0.0.0 with a public address", b().set("relay", "address", "\"0.0.0.0\"").set("relay", "public_address", "\"203.0.113.10\"")),
        ("per-IP caps off", b().set("limits", "connections_per_ip", "0").set("limits", "tls_handshakes_per_ip", "0")),
        ("log.level a bare word (taken as a target)", b().set("log", "level", "\"loud\"")),
        ("metrics.hosts an IPv4-looking name", b().set("metrics", "hosts", "[\"1.2.3.4\", \"Turn-1.Example.ORG\"]")),
        ("[admin] empty", b().table("admin", &[])),
        ("cluster.redirect_above with advertise from the listeners", spread()),
        (
            "cluster.advertise with a TLS name",
            spread()
                .set("cluster", "advertise", "[\"udp:203.0.113.5:3478\", \"udp:[2001:db8::5]:3478\", \"tls:203.0.113.5:5349\"]")
                .set("cluster", "advertise_tls_name", "\"turn1.example.org\""),
        ),
        ("admin.socket 107 bytes", b().set("admin", "socket", &q(&format!("/{}", "s".repeat(106))))),
    ];
    cases.extend(
        ok.iter()
            .map(|(name, t)| case(&format!("ok: {name}"), t, true)),
    );
    cases.extend([
        text("ok: bundled config.toml", bundled.clone(), true),
        text(
            "ok: packaging/config.toml (its secret file in DIR)",
            packaged.replace("/etc/ferroturn/secret", &f.good),
            true,
        ),
        text(
            "bundled config.toml off loopback",
            bundled.replace("\"127.0.0.1:3478\"", "\"0.0.0.0:3478\""),
            false,
        ),
    ]);
    cases
}

/// Cases made from the reference table: for every key a value of another
/// type, and for every integer a negative one and one past `u32`.
fn generated_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for k in KEYS {
        let values: &[(&str, &str)] = match k.kind {
            "string" => &[("an integer", "1")],
            "integer" => &[
                ("a string", "\"1\""),
                ("negative", "-1"),
                ("2^32", "4294967296"),
                ("a float", "1.5"),
            ],
            "boolean" => &[("a string", "\"yes\"")],
            "float" => &[("a string", "\"0.5\""), ("a boolean", "true")],
            "array of strings" => &[("a string", "\"x\""), ("an integer item", "[1]")],
            "string or array of strings" => &[("an integer", "1"), ("an integer item", "[1]")],
            "table" => &[("an integer", "1")],
            other => panic!(
                "{}: a key of type {other:?} is new here: give it wrong values in generated_cases",
                k.path()
            ),
        };
        let path = match k.section {
            "" => k.name.to_owned(),
            s => format!("{s}.{}", k.name),
        };
        for (what, v) in values {
            cases.push(Case {
                name: format!("type: {path}: {what}"),
                input: Input::Text(Toml::base().set(k.section, k.name, v).render()),
                passes: None,
            });
        }
    }
    cases
}

/// Run `check` on every case, up to 4 at a time: the golden text, one line
/// a case, sorted by name.
fn check_all(cases: Vec<Case>, dir: &Path) -> String {
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "two cases share a name");
    let dir_text = dir.display().to_string();
    let results = Mutex::new(BTreeMap::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let line = check_one(case, i, dir, &dir_text);
                    results.lock().unwrap().insert(case.name.clone(), line);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    let mut out = String::new();
    for line in results.values() {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn check_one(case: &Case, i: usize, dir: &Path, dir_text: &str) -> String {
    let check = std::ffi::OsStr::new("check");
    let flag = std::ffi::OsStr::new("--config");
    let (ran, file) = match &case.input {
        Input::Text(text) => {
            let path = dir.join(format!("case-{i}.toml"));
            fs::write(&path, text).unwrap();
            (
                ferroturn(&[check, flag, path.as_os_str()]),
                Some(path.display().to_string()),
            )
        }
        Input::Path(p) => (ferroturn(&[check, flag, p.as_os_str()]), None),
        Input::Nothing => (ferroturn(&[check]), None),
    };
    let mask = |s: &str| {
        let s = match &file {
            Some(f) => s.replace(f.as_str(), "FILE"),
            None => s.to_owned(),
        };
        s.replace(dir_text, "DIR")
    };
    let (stdout, stderr) = (mask(&ran.stdout), mask(&ran.stderr));
    let code = ran.code.expect("check ends by itself, not by a signal");
    // The shape every case must have, whatever the golden file says.
    let one_line = |s: &str| s.ends_with('\n') && s.matches('\n').count() == 1;
    match code {
        0 => assert!(
            stdout == "FILE: ok\n" && stderr.is_empty(),
            "{}: exit 0 with {stdout:?} {stderr:?}",
            case.name
        ),
        1 => assert!(
            stdout.is_empty()
                && one_line(&stderr)
                && (stderr.starts_with("FILE: ") || stderr.starts_with("DIR/")),
            "{}: exit 1 must print FILE: KEY: REASON, one line, on stderr: {stdout:?} {stderr:?}",
            case.name
        ),
        2 => assert!(
            matches!(case.input, Input::Nothing),
            "{}: exit 2",
            case.name
        ),
        c => panic!("{}: exit {c}: {stderr}", case.name),
    }
    if let Some(passes) = case.passes {
        assert_eq!(code == 0, passes, "{}: {stdout}{stderr}", case.name);
    }
    let shown = |s: &str| s.trim_end_matches('\n').replace('\n', " ⏎ ");
    let mut line = format!("{} => exit {code}", case.name);
    if !stdout.is_empty() {
        let _ = write!(line, " | stdout: {}", shown(&stdout));
    }
    if !stderr.is_empty() {
        let _ = write!(line, " | stderr: {}", shown(&stderr));
    }
    line
}

#[test]
fn check_error_texts() {
    let dir = TempDir::new("golden-check");
    let files = Files::make(dir.path());
    let mut cases = hand_cases(&files);
    cases.extend(generated_cases());
    assert!(cases.len() > 250, "{} cases", cases.len());
    let text = check_all(cases, dir.path());
    golden("check.txt", &text);
    every_error_text_has_a_case(&text);
}

// ---- Every error text of src/config.rs is in check.txt ---------------------

/// The string literals of Rust source `src`, unescaped, outside comments.
/// Enough of a lexer for config.rs: comments, char literals (`'"'`),
/// lifetimes, raw strings and escapes with line continuations.
fn string_literals(src: &str) -> Vec<String> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let (mut out, mut i) = (Vec::new(), 0);
    while i < c.len() {
        match c[i] {
            '/' if at(i + 1) == '/' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
                i += 2;
                while i < c.len() && !(c[i] == '*' && at(i + 1) == '/') {
                    i += 1;
                }
                i += 2;
            }
            '\'' if at(i + 1) == '\\' => {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if at(i + 2) == '\'' => i += 3,
            'r' if (at(i + 1) == '"' || at(i + 1) == '#')
                && !(i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while at(j) == '#' {
                    hashes += 1;
                    j += 1;
                }
                if at(j) != '"' {
                    i += 1;
                    continue;
                }
                let start = j + 1;
                let mut k = start;
                while k < c.len() && !(c[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#')) {
                    k += 1;
                }
                out.push(c[start..k.min(c.len())].iter().collect());
                i = k + 1 + hashes;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        match at(i + 1) {
                            '\n' => {
                                i += 2;
                                while at(i).is_whitespace() {
                                    i += 1;
                                }
                                continue;
                            }
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            'r' => s.push('\r'),
                            '0' => s.push('\0'),
                            other => s.push(other),
                        }
                        i += 2;
                    } else {
                        s.push(c[i]);
                        i += 1;
                    }
                }
                out.push(s);
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// The fixed parts of a format string (between its `{…}` placeholders)
/// that hold a letter: what any message made from it must contain.
fn fixed_parts(lit: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = lit.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                parts.last_mut().unwrap().push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                parts.last_mut().unwrap().push('}');
            }
            '{' => {
                for ch in chars.by_ref() {
                    if ch == '}' {
                        break;
                    }
                }
                parts.push(String::new());
            }
            ch => parts.last_mut().unwrap().push(ch),
        }
    }
    parts
        .into_iter()
        .filter(|p| p.chars().any(|ch| ch.is_ascii_alphabetic()))
        .collect()
}

/// Every error text of src/config.rs is in `checked` (the cases' output),
/// found the way grep would: every string literal of the production part
/// of src/config.rs (and of src/config/, should the configuration become a
/// module) that is a message (it holds a space) or a key (`relay.ports`,
/// `listen[{i}].address`: a dotted lower-case path) must have each of its
/// fixed parts appear in `checked`. A message added to the validator
/// without a case fails here.
fn every_error_text_has_a_case(checked: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("src/config.rs")];
    if let Ok(dir) = fs::read_dir(root.join("src/config")) {
        sources.extend(
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs") && !p.ends_with("tests.rs")),
        );
    }
    // An `expect` message, not an error a file can cause.
    let not_errors = ["at least one value"];
    let key = Regex::new(r"^[a-z{][a-z0-9_{}\[\].]*\.[a-z0-9_{}\[\].]*$").unwrap();
    let (mut looked_at, mut missing) = (0, Vec::new());
    for path in &sources {
        let Ok(src) = fs::read_to_string(path) else {
            continue;
        };
        // Only the production code: the unit tests quote messages too.
        let src = src.split("#[cfg(test)]\nmod tests").next().unwrap();
        for lit in string_literals(src) {
            let message = lit.contains(' ') && lit.chars().any(|c| c.is_ascii_alphabetic());
            let is_key = key.is_match(&lit) && lit.chars().any(|c| c.is_ascii_alphabetic());
            if !(message || is_key) || not_errors.contains(&lit.as_str()) {
                continue;
            }
            looked_at += 1;
            for part in fixed_parts(&lit) {
                if !checked.contains(&part) {
                    missing.push(format!(
                        "{}: {lit:?}: no case shows {part:?}",
                        path.display()
                    ));
                }
            }
        }
    }
    // The lexer found the messages (there are over a hundred).
    assert!(looked_at > 100, "only {looked_at} literals looked at");
    assert!(
        missing.is_empty(),
        "error texts no case of `check` shows (add cases to hand_cases):\n{}",
        missing.join("\n")
    );
}

// ---- The TOML format: keys, and a file that sets them all -------------------

#[test]
fn config_keys_and_the_maximal_file() {
    // Every key with its type and default, in the reference's order.
    let mut keys = String::new();
    for k in KEYS {
        let default = match k.default {
            KeyDefault::Value(v) => v.to_owned(),
            KeyDefault::Required => "(required)".to_owned(),
            KeyDefault::Unset(why) => format!("(unset: {why})"),
        };
        let _ = writeln!(keys, "{} | {} | {default}", k.path(), k.kind);
    }
    golden("keys.txt", &keys);

    // maximal.toml sets every key of the table, and no other.
    let text = fs::read_to_string(golden_path("maximal.toml")).expect("tests/golden/maximal.toml");
    let doc: toml::Table = toml::from_str(&text).expect("maximal.toml is TOML");
    let mut set = BTreeSet::new();
    for (name, value) in &doc {
        let tables: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) => {
                a.iter().filter_map(toml::Value::as_table).collect()
            }
            _ => {
                set.insert(name.clone());
                continue;
            }
        };
        for t in tables {
            for k in t.keys() {
                set.insert(format!("{name}.{k}"));
            }
        }
    }
    let table: BTreeSet<String> = KEYS
        .iter()
        .map(|k| match k.section {
            "" => k.name.to_owned(),
            s => format!("{s}.{}", k.name),
        })
        .collect();
    let unset: Vec<&String> = table.difference(&set).collect();
    let unknown: Vec<&String> = set.difference(&table).collect();
    assert!(
        unset.is_empty() && unknown.is_empty(),
        "maximal.toml leaves out {unset:?} and sets keys the table lacks: {unknown:?}"
    );

    // And `check` takes it (its secret file made here: `@DIR@`).
    let dir = TempDir::new("golden-maximal");
    fs::write(dir.path().join("secret"), "a-secret-from-a-file\n").unwrap();
    let file = dir.path().join("maximal.toml");
    fs::write(
        &file,
        text.replace("@DIR@", &dir.path().display().to_string()),
    )
    .unwrap();
    let ran = ferroturn(&["check".as_ref(), "--config".as_ref(), file.as_os_str()]);
    assert_eq!(
        (ran.code, ran.stdout.as_str(), ran.stderr.as_str()),
        (Some(0), format!("{}: ok\n", file.display()).as_str(), ""),
        "maximal.toml must pass check"
    );
}

// ---- A scripted session: /metrics and the log --------------------------------

const REALM: &str = "ferroturn.test";
const TOKEN: &str = "golden-t0ken";
const ALICE: (&str, &str) = ("alice", "wonderland");
const BOB: (&str, &str) = ("bob", "builder");

/// The address peers in 127.0.0.2/32 have; the config denies it, so
/// nothing is ever sent there.
const DENIED_PEER: ([u8; 4], u16) = ([127, 0, 0, 2], 9);

/// What the last line of a reload says, applied or refused.
const RELOADED: [&str; 2] = ["configuration reloaded", "reload refused"];

/// What varies from run to run, and the names it is shown by.
#[derive(Default)]
struct Masks {
    /// Literal text (paths, port ranges) and what replaces it.
    text: Vec<(String, String)>,
    /// Ports (of listeners, clients, relays, the peer) by name.
    ports: HashMap<u16, String>,
}

impl Masks {
    /// Show `port` as `name`. Two names for one port would make the text
    /// depend on which came first: `client` sees to it that none do.
    fn port(&mut self, name: &str, port: u16) {
        if let Some(old) = self.ports.insert(port, name.to_owned()) {
            assert_eq!(old, name, "port {port} is both {old} and {name}");
        }
    }

    /// Relay ports are unpredictable by design (RFC 8656 §7.2), and a pool
    /// may hand a freed one out again: all are `RELAY`, which clients' names
    /// tell apart in the lines that matter.
    fn relay(&mut self, addr: SocketAddr) {
        self.port("RELAY", addr.port());
    }

    /// A client from `make` whose port has no name yet (a UDP client may
    /// get the number of a TCP-only listener or client), named `name`.
    fn client(&mut self, name: &str, make: impl Fn() -> RawClient) -> RawClient {
        for _ in 0..20 {
            let c = make();
            let port = c.local_addr().port();
            if !self.ports.contains_key(&port) {
                self.port(name, port);
                return c;
            }
        }
        panic!("20 clients in a row got a port that already has a name");
    }

    fn apply(&self, line: &str) -> String {
        static TIME: std::sync::OnceLock<[Regex; 4]> = std::sync::OnceLock::new();
        let [time, number, addr, duration] = TIME.get_or_init(|| {
            [
                Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)").unwrap(),
                Regex::new(r"\b\d{4,5}\b").unwrap(),
                Regex::new(r"(127\.\d+\.\d+\.\d+|\[[0-9a-f:.]+\]):\d+\b").unwrap(),
                Regex::new(r"\b\d+(\.\d+)?(ns|µs|us|ms)\b|\b\d+\.\d+s\b").unwrap(),
            ]
        });
        let mut s = line.to_owned();
        let mut text = self.text.clone();
        text.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        for (from, to) in &text {
            s = s.replace(from.as_str(), to);
        }
        s = time.replace_all(&s, "TIME").into_owned();
        s = number
            .replace_all(&s, |c: &regex::Captures| {
                let n: u16 = c[0].parse().unwrap_or(0);
                self.ports
                    .get(&n)
                    .cloned()
                    .unwrap_or_else(|| c[0].to_owned())
            })
            .into_owned();
        // A port no name was given for (a probe's, say): masked all the same.
        s = addr
            .replace_all(&s, |c: &regex::Captures| format!("{}:PORT", &c[1]))
            .into_owned();
        duration.replace_all(&s, "DURATION").into_owned()
    }
}

/// A JSON value with the keys of every object sorted, on one line.
fn canonical(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<&String, &serde_json::Value> = m.iter().collect();
            let inner: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), canonical(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        serde_json::Value::Array(a) => {
            let inner: Vec<String> = a.iter().map(canonical).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// The server's log, read step by step.
struct Log {
    path: PathBuf,
    read: usize,
    json: bool,
    /// Each step's name and its lines (masked later).
    steps: Vec<(String, Vec<String>)>,
}

impl Log {
    fn text(&self) -> String {
        fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Wait (at most 5 s) until the lines written since the last step hold
    /// one of `needles`; a wait that runs out is no failure here, as the
    /// golden file shows what came instead.
    fn wait_for(&self, needles: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let text = self.text();
            let new = text.get(self.read..).unwrap_or("");
            if needles.iter().any(|n| new.contains(n)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// End a step: once the log has been still for 200 ms (at most 5 s),
    /// the whole lines written since the last step are this step's.
    fn step(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.text().len();
        let mut still_since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
            let now = self.text().len();
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= Duration::from_millis(200) {
                break;
            }
        }
        let text = self.text();
        let end = text.rfind('\n').map_or(0, |i| i + 1).max(self.read);
        let lines = text[self.read..end].lines().map(str::to_owned).collect();
        self.read = end;
        self.steps.push((name.to_owned(), lines));
    }

    /// The golden text: each step's name, then its lines masked (and, for
    /// JSON, with sorted keys), sorted: lines of one step may come from
    /// several threads.
    fn golden(&self, masks: &Masks) -> String {
        let mut out = String::new();
        for (name, lines) in &self.steps {
            let _ = writeln!(out, "== {name}");
            let mut shown: Vec<String> = lines
                .iter()
                .map(|l| {
                    if !self.json {
                        return masks.apply(l);
                    }
                    match serde_json::from_str::<serde_json::Value>(l) {
                        Ok(mut v) => {
                            if let Some(t) = v.get_mut("timestamp") {
                                *t = "TIME".into();
                            }
                            masks.apply(&canonical(&v))
                        }
                        Err(_) => format!("(not JSON) {}", masks.apply(l)),
                    }
                })
                .collect();
            shown.sort();
            if shown.is_empty() {
                out.push_str("(no line)\n");
            }
            for l in shown {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }
}

/// One HTTP/1.1 request without a body, `Host` set to `host`: status and
/// body, within 10 s.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a whole HTTP answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

/// The value of an unlabelled series in a scrape.
fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of a metric's series in a scrape, over all labels.
fn total(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: a signal to our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// The configuration of the session's server; `changed` is the one a
/// reload brings in (a restart-only key, the admin token, the peer policy).
fn session_config(
    format: &str,
    ports: &SessionPorts,
    dir: &Path,
    (cert, key): (&Path, &Path),
    changed: bool,
) -> String {
    let (realm, token, deny) = match changed {
        false => (REALM, TOKEN, "[\"127.0.0.2/32\"]"),
        true => (
            "ferroturn.changed",
            "golden-t0ken-2",
            "[\"127.0.0.2/32\", \"127.0.0.1/32\"]",
        ),
    };
    format!(
        r#"realm = "{realm}"

[server]
workers = 2
drain_timeout = 10

[[listen]]
address = "127.0.0.1:{listen}"
transports = ["udp", "tcp"]

[[listen]]
address = "127.0.0.1:{tls}"
transports = ["tls"]
cert = "{cert}"
key = "{key}"

[relay]
address = "127.0.0.1"
ports = "{lo}-{hi}"

[auth]
secrets = ["s3cret"]
users = {{ alice = "wonderland", bob = "builder" }}

[peers]
allow = ["127.0.0.0/8"]
deny = {deny}

[limits]
allocations_per_user = 2

[log]
level = "info"
format = "{format}"

[metrics]
address = "127.0.0.1:{metrics}"

[admin]
address = "127.0.0.1:{admin}"
socket = "{dir}/admin.sock"
token = "{token}"
"#,
        listen = ports.listen,
        tls = ports.tls,
        lo = ports.relay.0,
        hi = ports.relay.1,
        metrics = ports.metrics,
        admin = ports.admin,
        cert = cert.display(),
        key = key.display(),
        dir = dir.display(),
    )
}

struct SessionPorts {
    listen: u16,
    tls: u16,
    metrics: u16,
    admin: u16,
    relay: (u16, u16),
}

/// What a session gives: the log's golden text and the `/metrics` scrape
/// taken in the middle of it.
struct Session {
    log: String,
    metrics: String,
}

/// Start a server with `[log] format = FORMAT` and drive it through every
/// step below, each leaving its lines in the log.
fn session(format: &str) -> Session {
    let dir = TempDir::new("golden-session");
    let tls_files = common::make_cert(dir.path(), "tls");
    let relay = common::relay_block();
    let config_path = dir.path().join("ferroturn.toml");
    let log_path = dir.path().join("ferroturn.log");
    let mut started = None;
    for _ in 0..3 {
        let mut p: Vec<u16> = Vec::new();
        while p.len() < 4 {
            let port = common::free_port();
            if !p.contains(&port) {
                p.push(port);
            }
        }
        let ports = SessionPorts {
            listen: p[0],
            tls: p[1],
            metrics: p[2],
            admin: p[3],
            relay,
        };
        let tls = (tls_files.0.as_path(), tls_files.1.as_path());
        fs::write(
            &config_path,
            session_config(format, &ports, dir.path(), tls, false),
        )
        .unwrap();
        let addr = SocketAddr::from((LOCALHOST, ports.listen));
        let up = |port: u16| {
            TcpStream::connect_timeout(&SocketAddr::from((LOCALHOST, port)), Duration::from_secs(1))
                .is_ok()
        };
        let ready = || up(ports.metrics) && up(ports.admin) && up(ports.tls);
        match common::spawn_ferroturn(&config_path, &log_path, addr, ready) {
            Ok(child) => {
                started = Some((child, ports, addr));
                break;
            }
            Err(e) => eprintln!("retrying with other ports: {e}"),
        }
    }
    let (child, ports, addr) = started.expect("ferroturn started in 3 tries");
    // Killed at the end, also when a step fails; the log is shown then.
    struct Guard(Child, PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            if std::thread::panicking() {
                let log = fs::read_to_string(&self.1).unwrap_or_default();
                eprintln!("---- ferroturn log ----\n{log}---- end ----");
            }
        }
    }
    let mut server = Guard(child, log_path.clone());
    let metrics_addr = SocketAddr::from((LOCALHOST, ports.metrics));
    let admin_addr = SocketAddr::from((LOCALHOST, ports.admin));
    let scrape = || {
        let (status, body) = http(metrics_addr, "GET", "/metrics", "127.0.0.1", None);
        assert_eq!(status, 200, "{body}");
        body
    };

    let mut masks = Masks::default();
    masks
        .text
        .push((dir.path().display().to_string(), "DIR".into()));
    masks
        .text
        .push((format!("{}-{}", relay.0, relay.1), "RELAY_PORTS".into()));
    masks.port("LISTEN", ports.listen);
    masks.port("LISTEN_TLS", ports.tls);
    masks.port("METRICS", ports.metrics);
    masks.port("ADMIN", ports.admin);
    let mut log = Log {
        path: log_path,
        read: 0,
        json: format == "json",
        steps: Vec::new(),
    };
    // The peer's port, too, must not be a number that has a name already.
    let echo = (0..20)
        .map(|_| EchoPeer::start())
        .find(|e| !masks.ports.contains_key(&e.addr.port()))
        .expect("an echo peer on a port without a name");
    masks.port("PEER", echo.addr.port());

    log.wait_for(&["ready"]);
    log.step("start");

    let probe = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        common::binding_udp(&probe, addr).is_some(),
        "Binding over UDP"
    );
    let (mapped, local) = common::binding_tcp(addr).expect("Binding over TCP");
    assert_eq!(mapped, local);
    log.step("Binding over UDP and TCP");

    let mut wrong = masks.client("CLIENT_WRONG_PASSWORD", || {
        RawClient::udp(addr, REALM, ALICE.0, "not-the-password")
    });
    let r = wrong.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(wire::error_code(&r), Some(401));
    let mut unknown = masks.client("CLIENT_UNKNOWN_USER", || {
        RawClient::udp(addr, REALM, "mallory", "x")
    });
    let r = unknown.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(wire::error_code(&r), Some(401));
    log.step("a wrong password and an unknown user: 401");

    let mut a = masks.client("CLIENT_A", || RawClient::udp(addr, REALM, ALICE.0, ALICE.1));
    let relay_a = a.allocate();
    masks.relay(relay_a);
    let r = a.signed(Request::new(METHOD_CREATE_PERMISSION).peer(echo.addr));
    assert_eq!(wire::error_code(&r), None, "CreatePermission");
    a.send(
        &Request::indication(METHOD_SEND)
            .peer(echo.addr)
            .attr(ATTR_DATA, b"by Send")
            .bytes(),
    );
    let mut buf = vec![0u8; 2048];
    let n = a.recv(&mut buf);
    let data = wire::decode(&buf[..n]).expect("a Data indication");
    assert_eq!(wire::attr(&data, ATTR_DATA), Some(&b"by Send"[..]));
    a.channel_bind(0x4000, echo.addr);
    a.send(&a.channel_data(0x4000, b"by channel"));
    let n = a.recv(&mut buf);
    assert_eq!(
        &buf[..n],
        &[&[0x40, 0, 0, 10][..], b"by channel"].concat()[..]
    );
    log.step("UDP allocation (alice): permission, Send and Data, channel both ways");

    let denied = SocketAddr::from(DENIED_PEER);
    let r = a.signed(Request::new(METHOD_CREATE_PERMISSION).peer(denied));
    assert_eq!(wire::error_code(&r), Some(403));
    a.send(
        &Request::indication(METHOD_SEND)
            .peer(denied)
            .attr(ATTR_DATA, b"never sent")
            .bytes(),
    );
    // Answered after the indication is handled: its line is in by then.
    let r = a.signed(Request::new(METHOD_REFRESH).lifetime(600));
    assert_eq!(wire::error_code(&r), None, "Refresh");
    log.step("a denied peer: CreatePermission 403, Send indication dropped");

    let mut b = masks.client("CLIENT_B_TCP", || {
        RawClient::tcp(addr, REALM, ALICE.0, ALICE.1)
    });
    let relay_b = b.allocate();
    masks.relay(relay_b);
    let mut c = masks.client("CLIENT_C", || RawClient::udp(addr, REALM, ALICE.0, ALICE.1));
    let r = c.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(wire::error_code(&r), Some(486), "alice's third allocation");
    log.step("TCP allocation (alice), then a third one over the quota: 486");

    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&scrape(), "ferroturn_allocations_active") != Some(1) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    log.step("the TCP connection closed");

    let mut d = masks.client("CLIENT_D", || RawClient::udp(addr, REALM, BOB.0, BOB.1));
    let relay_d = d.allocate();
    masks.relay(relay_d);
    let mut e = masks.client("CLIENT_E", || RawClient::udp(addr, REALM, BOB.0, BOB.1));
    let relay_e = e.allocate();
    masks.relay(relay_e);
    let host = admin_addr.to_string();
    let path = format!("/sessions/{}", relay_d.port());
    let (status, body) = http(admin_addr, "DELETE", &path, &host, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        admin_addr,
        "DELETE",
        "/users/bob/sessions",
        &host,
        Some(TOKEN),
    );
    assert_eq!(
        (status, body.contains("\"closed\":1")),
        (200, true),
        "{body}"
    );
    let (status, _) = http(admin_addr, "GET", "/sessions", &host, Some("wrong-token"));
    assert_eq!(status, 401);
    let (status, _) = http(metrics_addr, "GET", "/metrics", "rebind.example", None);
    assert_eq!(status, 421);
    log.step(
        "admin: bob's sessions closed by relay port and by user; a wrong token; a foreign Host",
    );

    let metrics = scrape();
    // The session did what the golden files are about.
    for (series, least) in [
        ("ferroturn_allocations_created_total", 4),
        ("ferroturn_allocations_deleted_total", 3),
        ("ferroturn_peer_policy_denials_total", 2),
        ("ferroturn_quota_rejections_total", 1),
        ("ferroturn_allocations_active", 1),
    ] {
        let v = sample(&metrics, series);
        assert!(
            v >= Some(least),
            "{series} {v:?}, expected at least {least}"
        );
    }
    for (name, least) in [
        ("ferroturn_auth_failures_total", 2),
        ("ferroturn_relayed_packets_total", 4),
    ] {
        assert!(total(&metrics, name) >= least, "{name}");
    }
    log.step("a scrape of /metrics");

    signal(&server.0, libc::SIGHUP);
    log.wait_for(&RELOADED);
    log.step("SIGHUP, the file unchanged");

    let tls = (tls_files.0.as_path(), tls_files.1.as_path());
    fs::write(
        &config_path,
        session_config(format, &ports, dir.path(), tls, true),
    )
    .unwrap();
    signal(&server.0, libc::SIGHUP);
    log.wait_for(&RELOADED);
    log.step("SIGHUP: realm (needs a restart), admin token and peers.deny changed");

    let bad = session_config(format, &ports, dir.path(), tls, true)
        .replace("[auth]\n", "[auth]\nnonce_lifetime = 5\n");
    fs::write(&config_path, bad).unwrap();
    signal(&server.0, libc::SIGHUP);
    log.wait_for(&RELOADED);
    log.step("SIGHUP, an invalid file");

    signal(&server.0, libc::SIGTERM);
    log.wait_for(&["draining"]);
    let mut late = masks.client("CLIENT_LATE", || RawClient::udp(addr, REALM, BOB.0, BOB.1));
    let r = late.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(
        wire::error_code(&r),
        Some(508),
        "an Allocate while draining"
    );
    let r = a.signed(Request::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(wire::error_code(&r), None, "Refresh 0");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no exit 10 s after SIGTERM and the last Refresh 0"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    log.step("SIGTERM: an Allocate refused while draining, Refresh 0 of the last allocation, exit");

    Session {
        log: log.golden(&masks),
        metrics,
    }
}

/// The metrics golden text: HELP and TYPE lines, each series without its
/// value, and per metric each label's values; sorted.
fn metrics_golden(scrape: &str) -> String {
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    let mut lines = Vec::new();
    let mut labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in scrape.lines() {
        if line.starts_with('#') {
            lines.push(line.to_owned());
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("SERIES VALUE");
        assert!(value.parse::<u64>().is_ok(), "{line}");
        let series = series.replace(&version, "version=\"VERSION\"");
        if let Some((name, rest)) = series.split_once('{') {
            for pair in rest.trim_end_matches('}').split(',') {
                let (k, v) = pair.split_once('=').expect("label=\"value\"");
                labels
                    .entry(name.to_owned())
                    .or_default()
                    .entry(k.to_owned())
                    .or_default()
                    .insert(v.trim_matches('"').to_owned());
            }
        }
        lines.push(series);
    }
    for (name, keys) in labels {
        for (k, values) in keys {
            let v: Vec<String> = values.into_iter().collect();
            lines.push(format!("labels of {name}: {k} = {}", v.join(" ")));
        }
    }
    lines.sort();
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[test]
fn metrics_and_json_log_of_a_session() {
    let s = session("json");
    golden("metrics.txt", &metrics_golden(&s.metrics));
    golden("log-json.txt", &s.log);
}

#[test]
fn text_log_of_a_session() {
    let s = session("text");
    golden("log-text.txt", &s.log);
}
