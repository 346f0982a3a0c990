//! The command line: `check`, `credentials`, `password`, and startup
//! errors, among them the refusal of the bundled example's credentials on a
//! listener off loopback.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ferroturn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args(args)
        .output()
        .expect("run ferroturn")
}

/// The username and password `ferroturn credentials` printed.
fn rest_pair(out: &std::process::Output) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} in {text:?}"))
            .to_owned()
    };
    (field("username: "), field("password: "))
}

/// The command succeeded; else its stderr explains the failure.
fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferroturn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_the_bundled_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = ferroturn(&["check", "--config", &format!("{root}/config.toml")]);
    assert_success(&out);
}

#[test]
fn check_names_file_key_and_reason() {
    let bundled = include_str!("../config.toml");
    for (from, to, key) in [
        (
            "ports = \"49152-65535\"",
            "ports = \"65535-49152\"",
            "relay.ports",
        ),
        ("allow = []", "allow = [\"10.0.0.0/99\"]", "peers.allow[0]"),
        (
            "address = \"127.0.0.1:3478\"",
            "address = \"nowhere\"",
            "listen[0].address",
        ),
        (
            "address = \"127.0.0.1\"\n",
            "address = \"127.0.0.1\"\nbogus = 1\n",
            "relay.bogus",
        ),
    ] {
        assert!(bundled.contains(from), "{from}");
        let p = temp_config("bad.toml", &bundled.replace(from, to));
        let out = ferroturn(&["check", "--config", p.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let prefix = format!("{}: {key}: ", p.display());
        assert!(err.starts_with(&prefix), "expected {prefix:?}, got {err:?}");
    }
}

#[test]
fn server_refuses_to_start_on_a_bad_config() {
    let p = temp_config(
        "noauth.toml",
        "realm = \"x\"\n[[listen]]\naddress = \"127.0.0.1:0\"\ntransports = [\"udp\"]\n[relay]\naddress = \"127.0.0.1\"\n",
    );
    let out = ferroturn(&["--config", p.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(": auth: no credentials configured"), "{err}");
}

#[test]
fn credentials_prints_a_rest_pair_that_verifies() {
    let out = ferroturn(&[
        "credentials",
        "--secret",
        "s3cret",
        "--user",
        "carol",
        "--ttl",
        "1h",
    ]);
    assert!(out.status.success());
    let (user, pass) = rest_pair(&out);
    let (expiry, name) = user.split_once(':').unwrap();
    assert_eq!(name, "carol");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 3590..=now + 3610).contains(&expiry),
        "expiry {expiry} vs now {now}"
    );
    assert_eq!(pass, ferroturn::auth::rest_password(b"s3cret", &user));
}

#[test]
fn credentials_json_is_an_ice_server_entry() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = ferroturn(&[
        "credentials",
        "--config",
        &format!("{root}/config.toml"),
        "--user",
        "dave",
        "--json",
    ]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("{\"urls\": [\"stun:127.0.0.1:3478\", \"turn:127.0.0.1:3478?transport=udp\", \"turn:127.0.0.1:3478?transport=tcp\"]"), "{text}");
    assert!(
        text.contains("\"username\": \"")
            && text.contains(":dave\"")
            && text.contains("\"credential\": \""),
        "{text}"
    );
}

/// `ferroturn ARGS` with `stdin` as its standard input and `env` added.
fn ferroturn_with(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args(args)
        .env_remove("FERROTURN_SECRET")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferroturn");
    // A command that exits before reading (a usage error) closes the pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// Run the server on `config` and expect it to exit by itself within 10 s
/// (killed otherwise, and the test fails): its stderr.
fn server_exits(config: &std::path::Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferroturn");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(!status.success());
            assert_eq!(status.code(), Some(1));
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server started on {}", config.display());
}

#[test]
fn the_bundled_credentials_are_refused_off_loopback() {
    let bundled = include_str!("../config.toml");
    let listen = "address = \"127.0.0.1:3478\"";
    assert!(bundled.contains(listen));
    // Every interface, on a port the kernel picks (the server must refuse
    // before it binds anything).
    let public = bundled.replace(listen, "address = \"0.0.0.0:0\"");
    let secret = "secrets = [\"change-me\"]";
    let user = "users = { alice = \"wonderland\" }";
    assert!(public.contains(secret) && public.contains(user));
    let own_secret = public.replace(secret, "secrets = [\"Zm9yIHRoZSB0ZXN0cyBvbmx5\"]");
    for (text, key, what) in [
        (&public, "auth.secrets[0]", "secret"),
        (&own_secret, "auth.users.alice", "user and password"),
    ] {
        let p = temp_config("public.toml", text);
        let expect = format!(
            "{}: {key}: is the bundled example's {what}, refused while listen[0] (0.0.0.0:0) is not loopback",
            p.display()
        );
        let err = server_exits(&p);
        assert!(err.starts_with(&expect), "expected {expect:?}, got {err:?}");
        let out = ferroturn(&["check", "--config", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with(&expect), "expected {expect:?}, got {err:?}");
    }
    // With credentials of one's own, the same listener is fine.
    let own = own_secret.replace(user, "users = { alice = \"not-the-example\" }");
    let p = temp_config("own.toml", &own);
    let out = ferroturn(&["check", "--config", p.to_str().unwrap()]);
    assert_success(&out);
}

#[test]
fn credentials_take_the_secret_from_a_file_or_the_environment() {
    let expected = |out: &std::process::Output| {
        let (user, pass) = rest_pair(out);
        assert_eq!(
            pass,
            ferroturn::auth::rest_password(b"from-elsewhere", &user)
        );
    };
    // From a file or the environment, without a word on stderr.
    let file = temp_config("secret", "from-elsewhere \nsecond line\n");
    let file = file.to_str().unwrap();
    for (args, env) in [
        (
            &["credentials", "--secret-file", file, "--user", "x"][..],
            &[][..],
        ),
        (
            &["credentials", "--user", "x"][..],
            &[("FERROTURN_SECRET", "from-elsewhere")][..],
        ),
    ] {
        let out = ferroturn_with(args, "", env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.is_empty(), "{args:?}: {err}");
        expected(&out);
    }

    // On the command line it still works, with a warning.
    let out = ferroturn_with(&["credentials", "--secret", "from-elsewhere"], "", &[]);
    assert!(out.status.success());
    expected(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: --secret is visible to every local user (ps, /proc)")
            && err.contains("--secret-file FILE or $FERROTURN_SECRET"),
        "{err}"
    );

    // An empty or missing file, or nothing at all: exit 2 with the reason.
    let empty = temp_config("empty-secret", "\n");
    for (args, says) in [
        (vec!["--secret-file", empty.to_str().unwrap()], "empty"),
        (
            vec!["--secret-file", "/nonexistent/secret"],
            "/nonexistent/secret",
        ),
        (vec![], "give --secret-file FILE"),
    ] {
        let out = ferroturn_with(&[&["credentials"][..], &args].concat(), "", &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn a_user_name_that_is_no_bare_key_is_quoted_for_toml() {
    let user = "o'brien \"x\" \u{7f}";
    let args = ["password", "--user", user, "--realm", "r", "--toml"];
    let out = ferroturn_with(&args, "pw\n", &[]);
    assert_success(&out);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let table: toml::Table = line.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(table.contains_key(user), "{line}");
}

#[test]
fn password_prints_the_long_term_keys() {
    // echo -n bob:example.org:0xmad hatter | md5sum (and sha256sum);
    // `turnadmin -k -u bob -r example.org -p '0xmad hatter'` prints the same.
    let md5 = "0xe888a83fe2208f8f3d261b325c6944e9";
    let sha256 = "0xd1203df4ae06d6175b9407a35200d53e45606b23ff671a20b270474c1d6a05c2";
    let args = ["password", "--user", "bob", "--realm", "example.org"];
    let out = ferroturn_with(&args, "0xmad hatter\n", &[]);
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{md5}\n"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The realm of --config (the bundled file's is example.org), and the
    // [auth] users entry with both keys.
    let root = env!("CARGO_MANIFEST_DIR");
    let config = format!("{root}/config.toml");
    let args = ["password", "--user", "bob", "--config", &config, "--toml"];
    let out = ferroturn_with(&args, "0xmad hatter\r\n", &[]);
    assert_success(&out);
    let line = format!("bob = {{ md5 = \"{md5}\", sha256 = \"{sha256}\" }}\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), line);
    // That line is a valid [auth] users entry, for that user only.
    let text = include_str!("../config.toml").replace("alice = \"wonderland\"", line.trim());
    let p = temp_config("keys.toml", &text);
    let out = ferroturn(&["check", "--config", p.to_str().unwrap()]);
    assert_success(&out);

    // On the command line it works, with a warning.
    let args = [
        "password",
        "--user",
        "bob",
        "--realm",
        "example.org",
        "--password",
        "0xmad hatter",
    ];
    let out = ferroturn_with(&args, "", &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{md5}\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: --password is visible to every local user"),
        "{err}"
    );

    // No realm, two realms, no password: exit 2 with the reason.
    for (args, stdin, says) in [
        (&["password", "--user", "bob"][..], "pw\n", "--realm"),
        (
            &[
                "password", "--user", "bob", "--realm", "r", "--config", &config,
            ][..],
            "pw\n",
            "not both",
        ),
        (
            &["password", "--user", "bob", "--realm", "r"][..],
            "",
            "empty password",
        ),
    ] {
        let out = ferroturn_with(args, stdin, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// The README's first command, `cargo run --release -- --config
/// config.toml`, needs to know which binary to run: src/bin holds the
/// benchmark too, so Cargo.toml names the server as the default.
#[test]
fn cargo_run_runs_the_server() {
    let manifest = include_str!("../Cargo.toml");
    let root = env!("CARGO_MANIFEST_DIR");
    let others = std::fs::read_dir(format!("{root}/src/bin")).map_or(0, |d| d.count());
    assert!(
        others == 0
            || manifest
                .lines()
                .any(|l| l.trim() == "default-run = \"ferroturn\""),
        "src/bin has {others} entries and Cargo.toml names no default-run"
    );
    let readme = include_str!("../README.md");
    assert!(readme.contains("cargo run --release -- --config config.toml"));
}
