//! A ferroturn built without the cargo feature `fastpath` runs with the
//! fast path off, and refuses to start with `[fastpath] mode = "on"`,
//! saying why (`check` accepts the file either way: the build decides).

#![cfg(not(feature = "fastpath"))]

use std::process::Command;
use std::time::Duration;

mod common;

#[test]
fn mode_on_without_the_feature_refuses_to_start_and_says_why() {
    let dir = common::TempDir::new("fastpath-absent");
    let config = dir.path().join("config.toml");
    let port = common::free_udp_port();
    let (lo, hi) = common::relay_block();
    std::fs::write(
        &config,
        format!(
            r#"realm = "example.org"
[[listen]]
address = "127.0.0.1:{port}"
transports = ["udp"]
[relay]
address = "127.0.0.1"
ports = "{lo}-{hi}"
[auth]
users = {{ alice = "not-the-example" }}
[fastpath]
mode = "on"
"#
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("check")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroturn"));
    cmd.arg("--config").arg(&config);
    let out = common::run_with_timeout(cmd, Duration::from_secs(20));
    assert!(!out.timed_out, "it ran instead of refusing");
    assert_ne!(out.code, Some(0));
    assert!(
        out.output.contains(
            "fastpath.mode: \"on\" needs a ferroturn built with the cargo feature `fastpath`"
        ),
        "{}",
        out.output
    );
}
