//! The command line: `check`, `credentials`, and startup errors.

use std::process::Command;

fn ferroturn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .args(args)
        .output()
        .expect("run ferroturn")
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
            "address = \"0.0.0.0:3478\"",
            "address = \"nowhere\"",
            "listen[0].address",
        ),
        (
            "public_address = \"127.0.0.1\"",
            "public_address = \"127.0.0.1\"\nbogus = 1",
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
    let text = String::from_utf8(out.stdout).unwrap();
    let user = text
        .lines()
        .find_map(|l| l.strip_prefix("username: "))
        .unwrap();
    let pass = text
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap();
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
    assert_eq!(pass, ferroturn::auth::rest_password(b"s3cret", user));
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("{\"urls\": [\"stun:127.0.0.1:3478\", \"turn:127.0.0.1:3478?transport=udp\", \"turn:127.0.0.1:3478?transport=tcp\"]"), "{text}");
    assert!(
        text.contains("\"username\": \"")
            && text.contains(":dave\"")
            && text.contains("\"credential\": \""),
        "{text}"
    );
}
