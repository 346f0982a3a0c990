//! The engine crate (crates/engine, `ferroturn-engine`) stays sans-IO by
//! construction: its manifest declares no runtime, socket or OS crate, so
//! code in it cannot name one (the `stun` codec brings tokio in
//! transitively; that is accepted, the engine cannot name a crate it does
//! not declare). Checked twice: in the manifest itself (with a check that
//! is shown to catch an added one, however it is declared), and in what
//! `cargo tree -p ferroturn-engine --depth 1` resolves.
//!
//! The engine's log lines keep the targets they had in the `ferroturn`
//! crate (`ferroturn::engine::…`): every logging call in the engine crate
//! names its module's target, each target matches its file's path, and a
//! real server whose `[log] level` is `warn,ferroturn::engine=debug`
//! writes the engine's lines and no info line of the shell.

mod common;
mod raw;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{PASSWORD, REALM, Server, ServerConfig, USER, run_with_timeout};
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::message::METHOD_ALLOCATE;

/// Crates the engine must not declare: an async runtime, event loops,
/// sockets, the C library and its wrappers.
const FORBIDDEN: [&str; 5] = ["tokio", "mio", "socket2", "libc", "nix"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn engine_manifest() -> PathBuf {
    root().join("crates/engine/Cargo.toml")
}

/// The forbidden crates a manifest declares as normal or build
/// dependencies, also per target (`[target.'cfg(…)'.dependencies]`) and
/// under another name (`x = { package = "tokio" }`).
fn forbidden_in(manifest: &str) -> Vec<String> {
    let doc: toml::Table = manifest.parse().expect("the manifest is TOML");
    let mut tables: Vec<(String, &toml::Table)> = Vec::new();
    for section in ["dependencies", "build-dependencies"] {
        if let Some(t) = doc.get(section).and_then(|v| v.as_table()) {
            tables.push((section.to_string(), t));
        }
    }
    if let Some(targets) = doc.get("target").and_then(|v| v.as_table()) {
        for (cfg, t) in targets {
            for section in ["dependencies", "build-dependencies"] {
                if let Some(d) = t.get(section).and_then(|v| v.as_table()) {
                    tables.push((format!("target.{cfg}.{section}"), d));
                }
            }
        }
    }
    let mut found = Vec::new();
    for (section, deps) in tables {
        for (key, spec) in deps {
            let name = spec.get("package").and_then(|p| p.as_str()).unwrap_or(key);
            if FORBIDDEN.contains(&name) {
                found.push(format!("[{section}] {key} (crate {name})"));
            }
        }
    }
    found
}

#[test]
fn the_engine_manifest_declares_no_runtime_socket_or_os_crate() {
    let text = fs::read_to_string(engine_manifest()).expect("read crates/engine/Cargo.toml");
    let found = forbidden_in(&text);
    assert!(
        found.is_empty(),
        "crates/engine/Cargo.toml declares {found:?}: the engine must stay sans-IO"
    );
    // What it does declare is seen (so an empty answer above means
    // something): the codec.
    let doc: toml::Table = text.parse().unwrap();
    assert!(doc["dependencies"].as_table().unwrap().contains_key("stun"));

    // The check catches each forbidden crate, in each place it may be
    // declared, added to the real manifest.
    for name in FORBIDDEN {
        for (addition, place) in [
            (
                format!("\n[dependencies.{name}]\nversion = \"1\"\n"),
                "dependencies",
            ),
            (
                format!("\n[build-dependencies]\n{name} = \"1\"\n"),
                "build-dependencies",
            ),
            (
                format!(
                    "\n[target.'cfg(unix)'.dependencies]\nos = {{ package = \"{name}\", version = \"1\" }}\n"
                ),
                "target dependencies, renamed",
            ),
        ] {
            let found = forbidden_in(&format!("{text}{addition}"));
            assert_eq!(found.len(), 1, "{name} in {place} not caught: {found:?}");
        }
    }
}

/// The crates `cargo tree` lists as the engine's direct normal and build
/// dependencies (its first line, the engine itself, left out).
fn direct_dependencies() -> Vec<String> {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root()).args([
        "tree",
        "-p",
        "ferroturn-engine",
        "--depth",
        "1",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--offline",
        "--locked",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "cargo tree failed:\n{}", out.output);
    // Lines are `NAME vVERSION [(PATH)] [(*)]`; stderr (interleaved) has
    // none of that shape.
    let crates: Vec<String> = out
        .output
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let (name, version) = (words.next()?, words.next()?);
            version
                .strip_prefix('v')
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| name.to_string())
        })
        .collect();
    assert_eq!(
        crates.first().map(String::as_str),
        Some("ferroturn-engine"),
        "cargo tree output:\n{}",
        out.output
    );
    crates[1..].to_vec()
}

#[test]
fn cargo_tree_shows_no_runtime_socket_or_os_crate_under_the_engine() {
    let deps = direct_dependencies();
    for name in ["stun", "ring", "tracing"] {
        assert!(
            deps.iter().any(|d| d == name),
            "{name} missing from {deps:?}"
        );
    }
    let found: Vec<&String> = deps
        .iter()
        .filter(|d| FORBIDDEN.contains(&d.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "the engine depends directly on {found:?} (all: {deps:?})"
    );
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read source dir") {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn engine_log_lines_keep_the_targets_of_the_ferroturn_crate() {
    let src = root().join("crates/engine/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let call =
        regex::Regex::new(r"\b(?:tracing::)?(?:error|warn|info|debug|trace|event)!\(\s*").unwrap();
    let constant = regex::Regex::new(r#"const LOG_TARGET: &str = "([^"]*)";"#).unwrap();
    let mut logging = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(&src).unwrap().to_str().unwrap();
        let calls: Vec<_> = call.find_iter(&text).collect();
        if calls.is_empty() {
            continue;
        }
        logging += 1;
        for m in &calls {
            let line = text[..m.start()].lines().count();
            assert!(
                text[m.start()..].starts_with("tracing::")
                    && text[m.end()..].starts_with("target: LOG_TARGET"),
                "{rel}:{line}: an engine log call must be `tracing::LEVEL!(target: LOG_TARGET, …)`"
            );
        }
        // engine/allocate.rs -> ferroturn::engine::allocate, engine/mod.rs -> ferroturn::engine.
        let module = rel
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .replace('/', "::");
        let want = format!("ferroturn::{module}");
        let got: Vec<&str> = constant
            .captures_iter(&text)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        assert_eq!(got, [want.as_str()], "{rel}: its LOG_TARGET");
    }
    assert!(
        logging >= 4,
        "only {logging} engine files log: is the scan looking at the right place?"
    );
}

#[test]
fn a_log_directive_for_ferroturn_engine_reaches_the_engine() {
    let server = Server::start_with(ServerConfig {
        log_level: "warn,ferroturn::engine=debug".into(),
        ..ServerConfig::default()
    });
    // A wrong password: a debug line of the engine module itself.
    let mut wrong = RawClient::udp(server.addr, REALM, USER, "not-the-password");
    let r = wrong.signed(Request::new(METHOD_ALLOCATE).transport(17));
    assert_eq!(wire::error_code(&r), Some(401));
    // An allocation: an info line of engine::allocate.
    let mut right = RawClient::udp(server.addr, REALM, USER, PASSWORD);
    right.allocate();

    let wanted = [
        " DEBUG ferroturn::engine: authentication failed",
        " INFO ferroturn::engine::allocate: allocation created",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = server.log();
    while !wanted.iter().all(|w| log.contains(w)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        log = server.log();
    }
    for w in wanted {
        assert!(log.contains(w), "no line with {w:?} in the log:\n{log}");
    }
    // The filter is in force: the shell's own info lines (start-up, by
    // the daemon and the io modules) stay out.
    let shell_info: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" INFO ") && !l.contains(" INFO ferroturn::engine"))
        .collect();
    assert!(
        shell_info.is_empty(),
        "info lines outside the engine: {shell_info:?}"
    );
}
