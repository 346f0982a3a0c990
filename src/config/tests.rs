//! Unit tests of the configuration: parsing, defaults, every rule's
//! refusal, reload's split, and what Debug and errors never show.

use super::*;

const GOOD: &str = r#"
realm = "example.org"
[[listen]]
address = "0.0.0.0:3478"
transports = ["udp", "tcp"]
[relay]
address = "0.0.0.0"
public_address = "203.0.113.10"
ports = "49152-65535"
[auth]
secrets = ["s3cret"]
users = { alice = "liddell" }
[peers]
allow = []
deny = []
"#;

fn p(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("t.toml"), text)
}

#[test]
fn tls_clients_get_their_own_alternate_and_its_domain() {
    use crate::engine::{Redirect, TlsAlternate};
    let with = |server: &str| p(&format!("{GOOD}[server]\n{server}\n")).map(|c| c.live.redirect());
    assert_eq!(with("").unwrap(), Redirect::default());
    let alt: SocketAddr = "198.51.100.20:3478".parse().unwrap();
    let tls: SocketAddr = "198.51.100.20:5349".parse().unwrap();
    assert_eq!(
            with("alternate = \"198.51.100.20:3478\"\nalternate_tls = \"198.51.100.20:5349\"\nalternate_domain = \"TURN2.Example.org\"").unwrap(),
            Redirect {
                alternate: Some(alt),
                tls: Some(TlsAlternate {
                    address: tls,
                    domain: Some("turn2.example.org".into()),
                }),
            }
        );
    assert_eq!(
        with("alternate_tls = \"198.51.100.20:5349\"").unwrap().tls,
        Some(TlsAlternate {
            address: tls,
            domain: None
        })
    );
    let e = with("alternate_domain = \"turn2.example.org\"").unwrap_err();
    assert_eq!(e.key, "server.alternate_domain");
    // 253 characters is the longest name.
    let longest = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61),
    ]
    .join(".");
    assert_eq!(longest.len(), 253);
    let server =
        format!("alternate_tls = \"198.51.100.20:5349\"\nalternate_domain = \"{longest}\"");
    assert!(with(&server).is_ok());
    let server =
        format!("alternate_tls = \"198.51.100.20:5349\"\nalternate_domain = \"x{longest}\"");
    assert_eq!(with(&server).unwrap_err().key, "server.alternate_domain");
}

#[test]
fn relay_addresses_may_be_lists() {
    let relay = |keys: &str| {
        let text = GOOD.replace(
            "address = \"0.0.0.0\"\npublic_address = \"203.0.113.10\"\n",
            &format!("{keys}\n"),
        );
        p(&text).map(|c| (c.restart.relay, c.live.limits.total_allocations))
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // One address as before; the total is the port count.
    let (r, total) = relay("address = \"10.0.0.1\"").unwrap();
    assert_eq!(
        (r.address, r.public_address, r.more.len()),
        (ip("10.0.0.1"), ip("10.0.0.1"), 0)
    );
    assert_eq!(total, 16384);
    let (r, total) = relay(
        "address = [\"10.0.0.1\", \"10.0.0.2\", \"10.0.0.3\"]\n\
             public_address = [\"203.0.113.1\", \"203.0.113.2\", \"203.0.113.3\"]\n\
             address_v6 = [\"2001:db8::1\", \"2001:db8::2\"]",
    )
    .unwrap();
    assert_eq!(total, 3 * 16384, "every address's ports");
    assert_eq!(
        (r.address, r.public_address),
        (ip("10.0.0.1"), ip("203.0.113.1"))
    );
    assert_eq!(r.public_address_v6, Some(ip("2001:db8::1")));
    let more: Vec<_> = r
        .more
        .iter()
        .map(|m| (m.bind, m.public, m.bind_v6, m.public_v6))
        .collect();
    assert_eq!(
        more,
        [
            (
                ip("10.0.0.2"),
                ip("203.0.113.2"),
                Some(ip("2001:db8::2")),
                Some(ip("2001:db8::2"))
            ),
            (ip("10.0.0.3"), ip("203.0.113.3"), None, None)
        ]
    );
    let refused = |keys: &str| relay(keys).unwrap_err().to_string();
    for (keys, why) in [
        (
            "address = []",
            "relay.address: must name at least one address",
        ),
        (
            "address = [\"10.0.0.1\", \"10.0.0.1\"]",
            "10.0.0.1 is listed twice",
        ),
        (
            "address = [\"0.0.0.0\", \"10.0.0.1\"]",
            "0.0.0.0 binds every address",
        ),
        (
            "address = [\"10.0.0.1\", \"10.0.0.2\"]\npublic_address = \"203.0.113.1\"",
            "relay.public_address: lists 1 addresses, relay.address 2",
        ),
        (
            "address = \"10.0.0.1\"\naddress_v6 = [\"::1\", \"::2\"]",
            "relay.address_v6: lists 2 addresses, at most 1",
        ),
    ] {
        assert!(refused(keys).contains(why), "{keys}: {}", refused(keys));
    }
    let many: Vec<String> = (1..=33).map(|i| format!("\"10.0.0.{i}\"")).collect();
    let keys = format!("address = [{}]", many.join(", "));
    assert!(refused(&keys).contains("lists 33 addresses, at most 32"));
}

#[test]
fn contract_example_parses() {
    let c = p(GOOD).unwrap();
    assert_eq!(c.restart.relay.ports, (49152, 65535));
    assert_eq!(
        c.restart.relay.public_address,
        "203.0.113.10".parse::<IpAddr>().unwrap()
    );
    assert!(c.restart.listen[0].udp && c.restart.listen[0].tcp);
    assert_eq!(c.live.users["alice"], "liddell".into());
    assert_eq!(c.restart.udp_threads, UdpThreads::Adaptive);
    assert_eq!(c.restart.udp_scheduling, UdpScheduling::Auto);
    let server = |line: &str| {
        p(&GOOD.replace("[[listen]]", &format!("[server]\n{line}\n[[listen]]"))).unwrap()
    };
    let c = server("udp_threads = \"dedicated\"");
    assert_eq!(c.restart.udp_threads, UdpThreads::Dedicated);
    let c = server("udp_scheduling = \"batch\"");
    assert_eq!(c.restart.udp_scheduling, UdpScheduling::Batch);
    let c = server("udp_scheduling = \"normal\"");
    assert_eq!(c.restart.udp_scheduling, UdpScheduling::Normal);
}

#[test]
fn a_reload_keeps_restart_only_settings_and_names_them() {
    let running = p(GOOD).unwrap();
    let new = p(&GOOD
        .replace("realm = \"example.org\"", "realm = \"other.org\"")
        .replace("liddell", "looking-glass")
        .replace(
            "[[listen]]",
            "[server]\nudp_scheduling = \"batch\"\n[[listen]]",
        ))
    .unwrap();
    let (kept, changed) = running.reload(new.clone());
    assert_eq!(changed, ["server.udp_scheduling", "realm"]);
    assert_eq!(kept.restart, running.restart);
    assert!(
        kept.live == new.live,
        "the live part is the new file's, whole"
    );
    assert_eq!(kept.restart.realm, "example.org");
    assert_eq!(kept.restart.udp_scheduling, UdpScheduling::Auto);
    // A live setting comes from the new file.
    assert_eq!(kept.live.users["alice"], "looking-glass".into());
    let (_, changed) = running.reload(running.clone());
    assert!(changed.is_empty(), "{changed:?}");

    // TLS paths are live for the same listener, and only for it.
    let tls = |addr: &str, cert: &str| {
        let text = GOOD.replace(
                "[[listen]]",
                &format!(
                    "[[listen]]\naddress = \"{addr}\"\ntransports = [\"tls\"]\ncert = \"{cert}\"\nkey = \"k.pem\"\n\n[[listen]]"
                ),
            );
        p(&text).unwrap()
    };
    let running = tls("127.0.0.1:5349", "old.pem");
    let (kept, changed) = running.reload(tls("127.0.0.1:5349", "new.pem"));
    assert!(changed.is_empty(), "{changed:?}");
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let files = kept.live.tls_files(0, at(5349)).unwrap();
    assert_eq!(files.cert, PathBuf::from("new.pem"));
    let (kept, changed) = running.reload(tls("127.0.0.1:5350", "new.pem"));
    assert_eq!(changed, ["listen"]);
    // The running listener finds no files for its entry, so it keeps
    // its own (old.pem).
    assert_eq!(kept.live.tls_files(0, at(5349)), None);
    assert_eq!(kept.restart, running.restart);
}

/// What the engine takes as its defaults when it runs alone (tests,
/// benchmarks) is what the reference table says, but for the total,
/// which the server derives from the relay ports.
#[test]
fn the_engines_own_defaults_are_the_tables() {
    let table = RawLimits::default().limits(&RawRelay::default().relay());
    let engine = Limits {
        total_allocations: table.total_allocations,
        ..Limits::default()
    };
    assert_eq!(engine, table);
    let ip = IpAddr::from([127, 0, 0, 1]);
    let e = crate::engine::EngineConfig::new(
        crate::auth::Credentials::new("r", &[], &BTreeMap::new(), b"k", 600),
        crate::policy::PeerPolicy::new(vec![], vec![], vec![], (1, 1)),
        ip,
        ip,
        Vec::new(),
    )
    .live;
    let (a, auth) = (Allocation::default(), RawAuth::default());
    let secs = |s: u32| std::time::Duration::from_secs(s.into());
    assert_eq!(
        (e.lifetime, e.max_lifetime, e.legacy_channels),
        (
            secs(a.lifetime),
            secs(a.max_lifetime),
            a.legacy_channel_numbers
        )
    );
    assert_eq!(
        (e.strict_expiry, e.expiry_grace.as_secs()),
        (auth.strict_expiry, auth.expiry_grace)
    );
}

#[test]
fn bundled_config_is_valid() {
    let text = include_str!("../../config.toml");
    p(text).unwrap();
}

#[test]
fn errors_name_file_key_and_reason() {
    let e = p(&GOOD.replace("49152-65535", "9-1")).unwrap_err();
    assert_eq!(e.key, "relay.ports");
    assert!(e.to_string().starts_with("t.toml: relay.ports: "));
    let e = p(&GOOD.replace("allow = []", "allow = [\"10.0.0.0/40\"]")).unwrap_err();
    assert_eq!(e.key, "peers.allow[0]");
    let e = p(&GOOD.replace("\nports =", "\nportz =")).unwrap_err();
    assert!(e.key.starts_with("relay"), "{e}");
    assert!(e.reason.contains("portz"), "{e}");
    let e = p(&GOOD.replace("\"udp\", \"tcp\"", "\"sctp\"")).unwrap_err();
    assert_eq!(e.key, "listen[0].transports");
    let e = p(&GOOD.replace("realm = \"example.org\"", "realm = 5")).unwrap_err();
    assert_eq!(e.key, "realm");
    let e =
        p(&GOOD.replace("[[listen]]", "[server]\nudp_threads = \"many\"\n[[listen]]")).unwrap_err();
    assert_eq!(e.key, "server.udp_threads");
    assert!(e.reason.contains("\"dedicated\""), "{e}");
    let e = p(&GOOD.replace(
        "[[listen]]",
        "[server]\nudp_scheduling = \"fifo\"\n[[listen]]",
    ))
    .unwrap_err();
    assert_eq!(e.key, "server.udp_scheduling");
    assert_eq!(
        e.reason,
        "\"fifo\": expected \"auto\", \"normal\" or \"batch\""
    );
    let e = p(&GOOD.replace(
        "secrets = [\"s3cret\"]\nusers = { alice = \"liddell\" }",
        "",
    ))
    .unwrap_err();
    assert_eq!(e.key, "auth");
    let e = p(&format!("{GOOD}[limits]\npermissions_per_allocation = 0\n")).unwrap_err();
    assert_eq!(e.key, "limits.permissions_per_allocation");
}

#[test]
fn admin_listens_on_a_unix_socket_unless_given_an_address_and_a_token() {
    let admin = |section: &str| p(&format!("{GOOD}[admin]\n{section}\n"));
    let a = admin("").unwrap().admin().unwrap();
    assert_eq!(
        (a.address, a.socket.as_deref(), a.token.as_deref()),
        (None, Some(Path::new(DEFAULT_ADMIN_SOCKET)), None)
    );
    assert!(
        p(GOOD).unwrap().admin().is_none(),
        "no section, no admin API"
    );
    let a = admin("socket = \"/tmp/x/a.sock\"\ntoken = \"t\"")
        .unwrap()
        .admin()
        .unwrap();
    assert_eq!(a.socket.as_deref(), Some(Path::new("/tmp/x/a.sock")));
    assert_eq!(a.token.as_deref(), Some("t"));
    let a = admin("address = \"127.0.0.1:9642\"\ntoken = \"t\"")
        .unwrap()
        .admin()
        .unwrap();
    assert_eq!(a.address, Some("127.0.0.1:9642".parse().unwrap()));
    assert_eq!(a.socket, None);
    let both = "address = \"[::1]:9642\"\nsocket = \"/run/f/a.sock\"\ntoken = \"t\"";
    let a = admin(both).unwrap().admin().unwrap();
    assert!(a.address.is_some() && a.socket.is_some());

    for (section, key, reason) in [
        (
            "address = \"127.0.0.1:9642\"",
            "admin.token",
            "loopback too",
        ),
        ("address = \"0.0.0.0:9642\"", "admin.token", "required"),
        (
            "address = \"localhost:9642\"\ntoken = \"t\"",
            "admin.address",
            "IP:PORT",
        ),
        ("token = \"\"", "admin.token", "empty"),
        ("token = \"a b\"", "admin.token", "printable"),
        ("socket = \"admin.sock\"", "admin.socket", "absolute"),
        ("socket = \"/x\"\nport = 1", "admin.port", "unknown field"),
    ] {
        let e = admin(section).unwrap_err();
        assert_eq!(e.key, key, "{section}: {e}");
        assert!(e.reason.contains(reason), "{section}: {e}");
        assert!(e.to_string().starts_with(&format!("t.toml: {key}")), "{e}");
    }
    let long = format!("socket = \"/{}\"", "a".repeat(120));
    assert_eq!(admin(&long).unwrap_err().key, "admin.socket");
}

#[test]
fn cluster_is_optional_and_hides_its_password() {
    assert_eq!(p(GOOD).unwrap().restart.cluster, None);
    let c = p(&format!(
        "{GOOD}[cluster]\nredis = \"redis://:hunter2@10.0.0.5:6379/3\"\n"
    ))
    .unwrap();
    let cluster = c.restart.cluster.clone().unwrap();
    assert_eq!(cluster.node, host_name());
    assert!(!cluster.node.is_empty());
    let shown = format!("{c:?}");
    assert!(
        shown.contains("10.0.0.5:6379/3") && !shown.contains("hunter2"),
        "{shown}"
    );
    // Users may all come from Redis: no [auth] credentials needed.
    let bare = GOOD
        .replace("secrets = [\"s3cret\"]\n", "")
        .replace("users = { alice = \"liddell\" }\n", "");
    assert!(p(&bare).is_err());
    let named = format!("{bare}[cluster]\nredis = \"redis://127.0.0.1\"\nnode = \"turn-7\"\n");
    assert_eq!(p(&named).unwrap().restart.cluster.unwrap().node, "turn-7");
}

#[test]
fn metrics_hosts_are_host_names() {
    let c = p(&format!(
        "{GOOD}[metrics]\nhosts = [\"Turn1.Example.org\", \"prom\"]\n"
    ))
    .unwrap();
    assert_eq!(
        c.restart.metrics.unwrap().hosts,
        ["turn1.example.org", "prom"]
    );
    for bad in ["turn1:9641", "", "a..b", "[::1]", "a b"] {
        let e = p(&format!("{GOOD}[metrics]\nhosts = [\"ok\", {bad:?}]\n")).unwrap_err();
        assert_eq!(e.key, "metrics.hosts[1]", "{bad:?}: {e}");
    }
}

#[test]
fn a_reload_rotates_the_admin_token_and_keeps_its_listeners() {
    let with = |section: &str| p(&format!("{GOOD}[admin]\n{section}\n")).unwrap();
    let running = with("address = \"127.0.0.1:9642\"\ntoken = \"old\"");
    let (kept, changed) = running.reload(with("address = \"127.0.0.1:9642\"\ntoken = \"new\""));
    assert!(changed.is_empty(), "{changed:?}");
    assert_eq!(kept.admin().as_ref().unwrap().token.as_deref(), Some("new"));
    let (kept, changed) = running.reload(with("address = \"127.0.0.1:9643\"\ntoken = \"new\""));
    assert_eq!(changed, ["admin"]);
    let a = kept.admin().unwrap();
    assert_eq!(a.address, Some("127.0.0.1:9642".parse().unwrap()));
    assert_eq!(a.token.as_deref(), Some("new"), "the token still rotates");
    // On the socket, a token may come and go.
    let running = with("");
    let (kept, _) = running.reload(with("token = \"t\""));
    assert_eq!(kept.admin().unwrap().token.as_deref(), Some("t"));
}

#[test]
fn stun_only_listeners_need_no_credentials_and_limits_default() {
    let text = GOOD
        .replace(
            "secrets = [\"s3cret\"]\nusers = { alice = \"liddell\" }",
            "",
        )
        .replace(
            "transports = [\"udp\", \"tcp\"]",
            "transports = [\"udp\"]\nturn = false",
        );
    let c = p(&text).unwrap();
    assert!(!c.restart.listen[0].turn);
    assert_eq!(c.live.limits.allocations_per_user, 10);
    assert_eq!(c.live.limits.total_allocations, 65535 - 49152 + 1);
    assert!(c.live.strict_expiry);
}

#[test]
fn stream_limits_default_validate_and_reload() {
    let c = p(GOOD).unwrap();
    assert_eq!(c.live.stream_limits, StreamLimits::default());
    assert_eq!(c.live.stream_limits.message_timeout, 10);
    assert_eq!(c.live.stream_limits.allocation_timeout, 60);
    assert_eq!(c.live.stream_limits.connections_per_ip, 64);
    assert_eq!(c.live.stream_limits.tls_handshakes_per_ip, 8);
    assert_eq!(c.live.stream_limits.queue_bytes, 65_536);
    let with = |lines: &str| p(&format!("{GOOD}[limits]\n{lines}\n"));
    let c = with("stream_message_timeout = 2\nstream_allocation_timeout = 5\nconnections_per_ip = 0\ntls_handshakes_per_ip = 0\nstream_queue_bytes = 4096").unwrap();
    assert_eq!(
        c.live.stream_limits,
        StreamLimits {
            message_timeout: 2,
            allocation_timeout: 5,
            connections_per_ip: 0,
            tls_handshakes_per_ip: 0,
            queue_bytes: 4096,
            connections: 16_384,
        }
    );
    for (line, key) in [
        (
            "stream_message_timeout = 0",
            "limits.stream_message_timeout",
        ),
        (
            "stream_message_timeout = 301",
            "limits.stream_message_timeout",
        ),
        (
            "stream_allocation_timeout = 0",
            "limits.stream_allocation_timeout",
        ),
        ("connections_per_ip = 4", "limits.tls_handshakes_per_ip"),
        ("tls_handshakes_per_ip = 0", "limits.tls_handshakes_per_ip"),
        ("stream_queue_bytes = 100", "limits.stream_queue_bytes"),
        (
            "stream_queue_bytes = 999999999",
            "limits.stream_queue_bytes",
        ),
        ("stream_queue_bytes = -1", "limits.stream_queue_bytes"),
        ("stream_connections = 0", "limits.stream_connections"),
    ] {
        let e = with(line).unwrap_err();
        assert_eq!(e.key, key, "{line}: {e}");
    }
    // Live on reload: nothing to restart.
    let running = p(GOOD).unwrap();
    let (kept, changed) = running.reload(with("connections_per_ip = 16").unwrap());
    assert!(changed.is_empty(), "{changed:?}");
    assert_eq!(kept.live.stream_limits.connections_per_ip, 16);
}

#[test]
fn at_most_eight_secrets() {
    let list = |n: usize| {
        let v: Vec<String> = (0..n).map(|i| format!("\"s{i}\"")).collect();
        GOOD.replace(
            "secrets = [\"s3cret\"]",
            &format!("secrets = [{}]", v.join(", ")),
        )
    };
    assert_eq!(p(&list(8)).unwrap().live.secrets.len(), 8);
    let e = p(&list(9)).unwrap_err();
    assert_eq!(e.key, "auth.secrets", "{e}");
    assert!(!e.to_string().contains("s8"), "no value: {e}");
}

#[test]
fn secrets_from_files_and_the_environment_are_their_first_line() {
    assert_eq!(secret_text("tok\n", "x"), Ok("tok".into()));
    assert_eq!(secret_text("  tok  \r\nrest\n", "x"), Ok("tok".into()));
    assert_eq!(secret_text("\n", "$V"), Err("$V: empty".into()));
    let e = secret_file("--token-file", Path::new("/nonexistent/t")).unwrap_err();
    assert!(e.starts_with("--token-file /nonexistent/t: "), "{e}");
}

/// A scratch directory for secret files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "ferroturn-config-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Write `text` to `name` in the directory; its absolute path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GOOD with `auth.secrets` replaced by `secrets_line` and the files
/// listed in `auth.secret_files`.
fn with_files(secrets_line: &str, files: &[&str]) -> String {
    let list: Vec<String> = files.iter().map(|f| format!("{f:?}")).collect();
    GOOD.replace(
        "secrets = [\"s3cret\"]",
        &format!("{secrets_line}\nsecret_files = [{}]", list.join(", ")),
    )
}

#[test]
fn secret_files_add_their_first_line_to_the_secrets() {
    let dir = Scratch::new("secret-files");
    let a = dir.file("a", "  from-file-a \nsecond line is ignored\n");
    let b = dir.file("b", "from-file-b");
    let c = p(&with_files("secrets = [\"s3cret\"]", &[&a, &b])).unwrap();
    assert_eq!(c.live.secrets, ["s3cret", "from-file-a", "from-file-b"]);
    // A file alone is a credential source: no secrets, no users.
    let only = with_files("", &[&b]).replace("users = { alice = \"liddell\" }", "");
    assert_eq!(p(&only).unwrap().live.secrets, ["from-file-b"]);
    // Neither its Debug nor the config's shows the secret; the path shows.
    let shown = format!("{c:?}");
    assert!(!shown.contains("from-file"), "{shown}");
    let raw: RawConfig = toml::from_str(&with_files("", &[&a])).unwrap();
    let shown = format!("{raw:?}");
    assert!(
        shown.contains(&a) && !shown.contains("from-file"),
        "{shown}"
    );
}

#[test]
fn secret_files_are_read_again_by_every_load() {
    let dir = Scratch::new("secret-reload");
    let secret = dir.file("secret", "first\n");
    let config = dir.file("ferroturn.toml", &with_files("", &[&secret]));
    assert_eq!(load(Path::new(&config)).unwrap().live.secrets, ["first"]);
    dir.file("secret", "second\n");
    assert_eq!(load(Path::new(&config)).unwrap().live.secrets, ["second"]);
    std::fs::remove_file(&secret).unwrap();
    let e = load(Path::new(&config)).unwrap_err();
    assert_eq!(
        (e.file.as_str(), e.key.as_str()),
        (config.as_str(), "auth.secret_files[0]")
    );
}

#[test]
fn a_bad_secret_file_is_refused_with_file_key_and_reason() {
    let dir = Scratch::new("secret-bad");
    let fifo = dir.0.join("fifo");
    let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo = fifo.display().to_string();
    let missing = dir.0.join("missing").display().to_string();
    let empty = dir.file("empty", " \n\nlater lines do not count\n");
    let big = dir.file("big", &"x".repeat(SECRET_FILE_MAX as usize + 1));
    let folder = dir.0.display().to_string();
    let good = dir.file("good", "fine");
    for (path, reason) in [
        (
            missing.as_str(),
            format!("{missing}: No such file or directory"),
        ),
        (empty.as_str(), format!("{empty}: empty")),
        (folder.as_str(), format!("{folder}: not a regular file")),
        // Opened without blocking, although no one writes to it.
        (fifo.as_str(), format!("{fifo}: not a regular file")),
        (big.as_str(), format!("{big}: 65537 bytes, more than 65536")),
        ("secret", "\"secret\" is not an absolute path".into()),
    ] {
        let e = p(&with_files("secrets = [\"s3cret\"]", &[&good, path])).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("t.toml", "auth.secret_files[1]"),
            "{e}"
        );
        assert!(e.reason.starts_with(&reason), "{e}");
    }
}

#[test]
fn secret_files_count_against_the_most_secrets() {
    let dir = Scratch::new("secret-count");
    let files: Vec<String> = (0..3)
        .map(|i| dir.file(&format!("s{i}"), &format!("f{i}")))
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let inline = |n: usize| {
        let v: Vec<String> = (0..n).map(|i| format!("\"s{i}\"")).collect();
        format!("secrets = [{}]", v.join(", "))
    };
    assert_eq!(
        p(&with_files(&inline(5), &files))
            .unwrap()
            .live
            .secrets
            .len(),
        8
    );
    let e = p(&with_files(&inline(6), &files)).unwrap_err();
    assert_eq!(e.key, "auth.secret_files", "{e}");
    assert!(e.reason.starts_with("at most 8 secrets"), "{e}");
}

/// The bundled example's secret is refused off loopback also when a
/// file holds it, and the error names the file's key.
#[test]
fn the_bundled_secret_in_a_file_is_refused_off_loopback() {
    let dir = Scratch::new("secret-bundled");
    let f = dir.file("secret", &format!("{}\n", EXAMPLE_SECRETS[0]));
    let e = p(&with_files("", &[&f]).replace("users = { alice = \"liddell\" }", "")).unwrap_err();
    assert_eq!(e.key, "auth.secret_files[0]", "{e}");
    assert!(
        e.reason.starts_with("is the bundled example's secret"),
        "{e}"
    );
    let lo = with_files("", &[&f])
        .replace("0.0.0.0:3478", "127.0.0.1:3478")
        .replace("users = { alice = \"liddell\" }", "");
    assert_eq!(p(&lo).unwrap().live.secrets, EXAMPLE_SECRETS);
}

#[test]
fn a_reload_that_moves_the_admin_api_keeps_the_running_token() {
    let tcp = format!("{GOOD}[admin]\naddress = \"127.0.0.1:9642\"\ntoken = \"old-token\"\n");
    let running = p(&tcp).unwrap();
    // To the socket only, without a token: a restart is needed, and
    // until then the TCP listener keeps its token.
    let moved = p(&format!("{GOOD}[admin]\nsocket = \"/run/x/admin.sock\"\n")).unwrap();
    let (kept, changed) = running.reload(moved);
    assert_eq!(changed, ["admin"]);
    let a = kept.admin().unwrap();
    assert_eq!(a.address, Some("127.0.0.1:9642".parse().unwrap()));
    assert_eq!(a.token.as_deref(), Some("old-token"));
    // Same listener, new token: rotated.
    let rotated = p(&tcp.replace("old-token", "new-token")).unwrap();
    let (kept, changed) = running.reload(rotated);
    assert!(changed.is_empty());
    assert_eq!(kept.admin().unwrap().token.as_deref(), Some("new-token"));
}

#[test]
fn bundled_credentials_are_refused_off_loopback() {
    // The list in the code is what the bundled file holds.
    let bundled = p(include_str!("../../config.toml")).unwrap();
    assert_eq!(bundled.live.secrets, EXAMPLE_SECRETS);
    let users: Vec<(&str, &StaticUser)> = bundled
        .live
        .users
        .iter()
        .map(|(n, u)| (n.as_str(), u))
        .collect();
    assert_eq!(users.len(), EXAMPLE_USERS.len());
    for ((name, user), (n, pw)) in users.iter().zip(EXAMPLE_USERS) {
        assert_eq!((*name, *user), (n, &StaticUser::from(pw)));
    }
    assert!(
        bundled
            .restart
            .listen
            .iter()
            .all(|l| l.address.ip().is_loopback())
    );

    let with = |listen: &str, auth: &str| {
        p(&format!(
            "realm = \"example.org\"\n[[listen]]\n{listen}\n[relay]\naddress = \"127.0.0.1\"\n[auth]\n{auth}\n"
        ))
    };
    let public = "address = \"0.0.0.0:3478\"\ntransports = [\"udp\"]";
    let key = crate::auth::key_hex(&crate::auth::Key::md5("alice", "example.org", "wonderland"));
    for (auth, bad_key) in [
        ("secrets = [\"mine\", \"change-me\"]", "auth.secrets[1]"),
        ("users = { alice = \"wonderland\" }", "auth.users.alice"),
        (
            &format!("users = {{ alice = \"{key}\" }}")[..],
            "auth.users.alice",
        ),
        (
            "users = { alice = { password = \"wonderland\" } }",
            "auth.users.alice",
        ),
    ] {
        let e = with(public, auth).unwrap_err();
        assert_eq!(e.key, bad_key, "{e}");
        assert!(
            e.reason
                .contains("listen[0] (0.0.0.0:3478) is not loopback"),
            "{e}"
        );
        assert!(
            !e.reason.contains("wonderland") && !e.reason.contains("change-me"),
            "{e}"
        );
        // Loopback only (IPv4, IPv6, IPv4-mapped) is fine, and so is a
        // STUN-only listener anywhere.
        for listen in [
            "address = \"127.0.0.2:3478\"\ntransports = [\"udp\", \"tcp\"]",
            "address = \"[::1]:3478\"\ntransports = [\"udp\"]",
            "address = \"[::ffff:127.0.0.1]:3478\"\ntransports = [\"udp\"]",
            "address = \"0.0.0.0:3478\"\ntransports = [\"udp\"]\nturn = false\n[[listen]]\naddress = \"127.0.0.1:3479\"\ntransports = [\"tcp\"]",
        ] {
            with(listen, auth).unwrap();
        }
    }
    // Other users or passwords are not the example's.
    for auth in [
        "users = { alice = \"looking-glass\" }",
        "users = { bob = \"wonderland\" }",
        "secrets = [\"change-me-not\"]",
    ] {
        with(public, auth).unwrap();
    }
}

#[test]
fn static_users_by_password_or_key() {
    use crate::auth::{Key, key_hex};
    use crate::proto::integrity::{ALGORITHM_MD5, ALGORITHM_SHA256};
    let md5 = key_hex(&Key::md5("carol", "example.org", "pw"));
    let sha = key_hex(&Key::sha256("carol", "example.org", "pw"));
    let user = |value: &str| {
        p(&GOOD.replace("alice = \"liddell\"", &format!("carol = {value}")))
            .map(|c| c.live.users["carol"].clone())
    };
    let keys = |u: &StaticUser| {
        [ALGORITHM_MD5, ALGORITHM_SHA256].map(|a| u.key(a, "carol", "example.org"))
    };
    let both = [
        Some(Key::md5("carol", "example.org", "pw")),
        Some(Key::sha256("carol", "example.org", "pw")),
    ];
    // coturn's 0x form: the MD5 key, so no SHA-256 password algorithm.
    assert_eq!(keys(&user(&format!("\"{md5}\"")).unwrap()), [both[0], None]);
    assert_eq!(
        keys(&user(&format!("\"{}\"", md5.to_uppercase().replace("0X", "0x"))).unwrap()),
        [both[0], None]
    );
    assert_eq!(keys(&user("\"pw\"").unwrap()), both);
    assert_eq!(
        keys(&user(&format!("{{ md5 = \"{md5}\", sha256 = \"{sha}\" }}")).unwrap()),
        both
    );
    assert_eq!(
        keys(&user(&format!("{{ sha256 = \"{sha}\" }}")).unwrap()),
        [None, both[1]]
    );
    // A password that starts with 0x, in the table form.
    assert_eq!(
        user("{ password = \"0xdeadbeef\" }").unwrap(),
        StaticUser::Password("0xdeadbeef".into())
    );
    for (value, key, says) in [
        (
            "\"0xdeadbeef\"",
            "auth.users.carol",
            "carol = { password = \"0x…\" }",
        ),
        (
            &format!("\"{sha}\"")[..],
            "auth.users.carol",
            "32 hex digits",
        ),
        ("\"\"", "auth.users.carol", "empty"),
        (
            "{ md5 = \"0x12\" }",
            "auth.users.carol.md5",
            "32 hex digits",
        ),
        (
            &format!("{{ sha256 = \"{md5}\" }}")[..],
            "auth.users.carol.sha256",
            "64 hex digits",
        ),
        (
            &format!("{{ password = \"pw\", md5 = \"{md5}\" }}")[..],
            "auth.users.carol",
            "not both",
        ),
        ("{ password = \"\" }", "auth.users.carol.password", "empty"),
        ("{}", "auth.users.carol", "give password, md5 or sha256"),
        (
            "{ pasword = \"x\" }",
            "auth.users.carol",
            "unknown field `pasword`",
        ),
        ("17", "auth.users.carol", "a password, an MD5 key"),
    ] {
        let e = user(value).unwrap_err();
        assert!(e.key.starts_with(key), "{value}: {e}");
        assert!(e.reason.contains(says), "{value}: {e}");
        assert!(
            !e.reason.contains("deadbeef") && !e.reason.contains(&md5[4..]),
            "{e}"
        );
    }
}

#[test]
fn debug_never_shows_a_secret() {
    let md5 = crate::auth::key_hex(&crate::auth::Key::md5("bob", "example.org", "pw"));
    let text = GOOD.replace(
        "alice = \"liddell\"",
        &format!("alice = \"liddell\", bob = \"{md5}\", carol = {{ password = \"0xcarol-pw\" }}"),
    ) + "[admin]\naddress = \"127.0.0.1:9642\"\ntoken = \"tok-e1f2\"\n";
    let c = p(&text).unwrap();
    let raw: RawConfig = toml::from_str(&text).unwrap();
    let creds = crate::auth::Credentials::new(
        &c.restart.realm,
        &c.live.secrets,
        &c.live.users,
        b"nonce",
        600,
    );
    let ice = crate::demo::ice::IceConfig {
        urls: vec![],
        secret: c.live.secrets.first().cloned(),
        ttl: 60,
    };
    let target = crate::admin::client::Target {
        dest: crate::http::Dest::Tcp(c.admin().as_ref().unwrap().address.unwrap()),
        token: c.admin().as_ref().unwrap().token.clone(),
    };
    let token_arg = crate::admin::client::TokenSource::Arg("tok-e1f2".into());
    let shown = [
        format!("{c:?}"),
        format!("{:?}", c.admin()),
        format!("{:?}", c.live.users),
        format!("{raw:?}"),
        format!("{:?}", raw.auth),
        format!("{:?}", raw.admin),
        format!("{creds:?}"),
        format!("{ice:?}"),
        format!("{target:?}"),
        format!("{token_arg:?}"),
        format!("{:?}", crate::auth::Key::md5("bob", "example.org", "pw")),
    ];
    for s in &shown {
        for secret in [
            "s3cret",
            "liddell",
            &md5[2..],
            &md5[2..12],
            "carol-pw",
            "tok-e1f2",
        ] {
            assert!(!s.contains(secret), "{secret:?} in {s}");
        }
        assert!(
            s.contains("<redacted>") || s.starts_with("Credentials"),
            "{s}"
        );
    }
    // What is not secret still shows.
    assert!(
        shown[0].contains("example.org") && shown[0].contains("\"alice\""),
        "{}",
        shown[0]
    );
}

#[test]
fn errors_in_auth_and_admin_never_quote_a_value() {
    let cases = [
        GOOD.replace("secrets = [\"s3cret\"]", "secrets = \"hunter2-a\""),
        GOOD.replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s3cret\", 4242424242]",
        ),
        GOOD.replace("alice = \"liddell\"", "alice = [\"hunter2-b\"]"),
        GOOD.replace("alice = \"liddell\"", "alice = 77777777"),
        GOOD.replace("secrets = [\"s3cret\"]", "secrets = [\"hunter2-c\" \"x\"]"),
        GOOD.replace("secrets = [\"s3cret\"]", "secrets = [\"hunter2-d\\q\"]"),
        GOOD.replace("alice = \"liddell\"", "alice = \"hunter2-e"),
        GOOD.replace("[auth]", "[auth]\nnonce_lifetime = \"hunter2-f\""),
        format!("{GOOD}[admin]\ntoken = 55555555\n"),
        format!("{GOOD}[admin]\ntoken = [\"hunter2-g\"]\n"),
        format!("{GOOD}[admin]\naddress = \"127.0.0.1:9642\" token = \"hunter2-h\"\n"),
        format!("admin.token = [\"hunter2-i\"]\n{GOOD}"),
        format!("admin.token = \"hunter2-k\" x\n{GOOD}"),
        GOOD.replace("alice = \"liddell\"", "alice = \"hunter2-l\" }, x = {"),
        format!("admin = {{ token = [\"hunter2-j\"] }}\n{GOOD}"),
    ];
    for text in &cases {
        let e = p(text).unwrap_err().to_string();
        for v in ["hunter2", "4242424242", "77777777", "55555555"] {
            assert!(!e.contains(v), "{v} in {e:?}, from\n{text}");
        }
        assert!(e.contains("(line "), "{e}");
    }
    // Elsewhere the value stays in the message, which helps.
    let e = p(&GOOD.replace("ports = \"49152-65535\"", "ports = 4915265535")).unwrap_err();
    assert!(e.to_string().contains("4915265535"), "{e}");
    let text = "realm = \"x\"\n[auth]\nsecrets = [\"a\" \"b\"]\n[peers]\nallow = [\n";
    assert_eq!(section_at(text, text.find("\"b").unwrap()), "auth");
    assert_eq!(section_at(text, text.len() - 1), "peers");
    assert_eq!(section_at("admin.token = 1 x", 16), "admin");
    assert_eq!(section_at("[ \"admin\" ]\ntoken = 1 x", 22), "admin");
    assert_eq!(
        hide_values("expected `]`, found \"a\\\"b\" or `c`"),
        "expected `]`, found (value hidden) or (value hidden)"
    );
    assert_eq!(
        hide_values("unknown field `sekrets`, expected one of `secrets`"),
        "unknown field `sekrets`, expected one of `secrets`"
    );
}

#[test]
fn a_log_filter_with_non_ascii_is_refused_not_a_panic() {
    // The fuzz target's find: tracing-subscriber panicked on this.
    let text = GOOD.replace(
        "[auth]",
        "[log]\nlevel = \"cert,\u{85}\u{85}\u{85}oo=ooo\"\n[auth]",
    );
    let e = parse(Path::new("f.toml"), &text).unwrap_err();
    assert_eq!(e.key, "log.level", "{e}");
    assert!(e.reason.contains("is not a level"), "{e}");
}

#[test]
fn a_log_filter_with_span_or_field_filters_is_refused() {
    // Field filters compile regular expressions: a fuzzed one took 1 GB.
    for level in ["warn,[span{x=y}]=debug", "info,ferroturn[conn]=trace"] {
        let text = GOOD.replace("[auth]", &format!("[log]\nlevel = {level:?}\n[auth]"));
        let e = parse(Path::new("f.toml"), &text).unwrap_err();
        assert_eq!(e.key, "log.level", "{e}");
    }
    let ok = GOOD.replace(
        "[auth]",
        "[log]\nlevel = \"warn,ferroturn::engine=debug\"\n[auth]",
    );
    parse(Path::new("f.toml"), &ok).unwrap();
}

/// `[nat_behaviour]` pairs with the one UDP listener of its family, or
/// the one it names; every rule between them refuses with its key.
#[test]
fn nat_behaviour_pairs_with_one_udp_listener() {
    let two = GOOD.replace("0.0.0.0:3478", "192.0.2.1:3478")
        + "[[listen]]\naddress = \"[2001:db8::1]:3478\"\ntransports = [\"udp\"]\n";
    let with = |base: &str, section: &str| p(&format!("{base}[nat_behaviour]\n{section}\n"));
    assert_eq!(p(GOOD).unwrap().restart.nat_behaviour, None);
    let c = with(&two, "other_address = \"2001:db8::2\"\nother_port = 3479").unwrap();
    assert_eq!(
        c.restart.nat_behaviour,
        Some(NatBehaviour {
            listen: 1,
            other_address: "2001:db8::2".parse().unwrap(),
            other_port: 3479,
        })
    );
    let c = with(
        &two,
        "listen = \"192.0.2.1:3478\"\nother_address = \"192.0.2.2\"\nother_port = 3479",
    );
    assert_eq!(c.unwrap().restart.nat_behaviour.unwrap().listen, 0);
    let refused = |base: &str, section: &str| with(base, section).unwrap_err().key;
    // 0.0.0.0 cannot say which address an answer leaves from.
    assert_eq!(
        refused(GOOD, "other_address = \"192.0.2.2\"\nother_port = 3479"),
        "nat_behaviour"
    );
    assert_eq!(
        refused(&two, "other_address = \"192.0.2.1\"\nother_port = 3479"),
        "nat_behaviour.other_address"
    );
    assert_eq!(
        refused(&two, "other_address = \"0.0.0.0\"\nother_port = 3479"),
        "nat_behaviour.other_address"
    );
    assert_eq!(
        refused(&two, "other_address = \"192.0.2.2\"\nother_port = 3478"),
        "nat_behaviour.other_port"
    );
    assert_eq!(
        refused(&two, "other_address = \"192.0.2.2\"\nother_port = 50000"),
        "nat_behaviour.other_port"
    );
    assert_eq!(
        refused(
            &two,
            "listen = \"192.0.2.1:3478\"\nother_address = \"2001:db8::2\"\nother_port = 3479"
        ),
        "nat_behaviour.other_address"
    );
    assert_eq!(
        refused(
            &two,
            "listen = \"192.0.2.9:3478\"\nother_address = \"192.0.2.2\"\nother_port = 3479"
        ),
        "nat_behaviour.listen"
    );
    assert_eq!(refused(&two, "other_port = 3479"), "nat_behaviour");
}

#[test]
fn proxy_protocol_listeners_name_their_balancers() {
    let entry = |keys: &str| {
        p(&format!(
            "{GOOD}[[listen]]\naddress = \"0.0.0.0:3479\"\n{keys}\n"
        ))
    };
    let c = entry(
        "transports = [\"tcp\"]\nproxy_protocol = true\nproxy_from = [\"10.0.0.0/8\", \"::1\"]",
    )
    .unwrap();
    assert_eq!(c.restart.listen[0].proxy_from, None);
    let from = c.restart.listen[1].proxy_from.as_ref().unwrap();
    assert_eq!(from.len(), 2);
    assert!(from[0].contains("10.9.8.7".parse().unwrap()));
    let tls = "transports = [\"tls\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\nproxy_protocol = true\nproxy_from = [\"192.0.2.1\"]";
    assert!(entry(tls).is_ok());
    let refused = |keys: &str| entry(keys).unwrap_err().key;
    assert_eq!(
        refused("transports = [\"tcp\"]\nproxy_protocol = true"),
        "listen[1].proxy_from"
    );
    assert_eq!(
        refused("transports = [\"tcp\"]\nproxy_protocol = true\nproxy_from = []"),
        "listen[1].proxy_from"
    );
    assert_eq!(
        refused(
            "transports = [\"udp\", \"tcp\"]\nproxy_protocol = true\nproxy_from = [\"10.0.0.1\"]"
        ),
        "listen[1].proxy_protocol"
    );
    assert_eq!(
        refused("transports = [\"tcp\"]\nproxy_from = [\"10.0.0.1\"]"),
        "listen[1].proxy_from"
    );
    let many: Vec<String> = (0..65).map(|i| format!("\"10.0.0.{i}\"")).collect();
    let keys = format!(
        "transports = [\"tcp\"]\nproxy_protocol = true\nproxy_from = [{}]",
        many.join(", ")
    );
    assert_eq!(refused(&keys), "listen[1].proxy_from");
}
