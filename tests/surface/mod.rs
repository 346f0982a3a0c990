//! The command line as `ferroturn --help` shows it: the subcommands and
//! each one's long options. `tests/manpages.rs` and `tests/completions.rs`
//! check the man page and the completion scripts against what clap prints
//! for help, not against the code that renders them.
//!
//! Every child process runs under coreutils' `timeout`, so that a tool that
//! hangs fails its test instead of holding it forever.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Seconds any one child process of these tests may take.
pub const LIMIT_SECS: &str = "60";

/// `program args…` under `timeout`, with no standard input.
pub fn bounded(program: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", LIMIT_SECS, program]);
    c.stdin(Stdio::null());
    c
}

/// Run `c` and return what it did; a time-out (status 124) fails the test.
pub fn run(c: &mut Command) -> Output {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e} (tests/run.sh installs the tools)"));
    assert_ne!(out.status.code(), Some(124), "{c:?} timed out");
    out
}

/// The ferroturn binary with `args`; it must succeed.
pub fn ferroturn(args: &[&str]) -> String {
    let out = run(bounded(env!("CARGO_BIN_EXE_ferroturn")).args(args));
    assert!(
        out.status.success(),
        "ferroturn {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The subcommands `ferroturn --help` lists, without clap's `help`.
pub fn subcommands() -> Vec<String> {
    let help = ferroturn(&["--help"]);
    let list: Vec<String> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(list.len() >= 8, "too few commands in --help: {help}");
    list
}

/// The long options (`--user`) `ferroturn SUB -h` lists, `--help` included;
/// with `sub` empty, those of `ferroturn -h`.
pub fn long_options(sub: &str) -> Vec<String> {
    let help = if sub.is_empty() {
        ferroturn(&["-h"])
    } else {
        ferroturn(&[sub, "-h"])
    };
    let list: Vec<String> = help
        .lines()
        // An option's own line; wrapped help text is indented further.
        .filter(|l| l.starts_with("  -"))
        .filter_map(|l| l.split_whitespace().take(2).find(|w| w.starts_with("--")))
        .map(|w| w.trim_end_matches(',').to_owned())
        .collect();
    assert!(list.contains(&"--help".to_owned()), "no --help in {help}");
    list
}

/// A new empty directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferroturn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
