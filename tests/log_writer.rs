//! The log writer (`src/log.rs`): a server whose stderr nobody reads goes
//! on answering, dropping the log lines that do not fit its buffer rather
//! than waiting for stderr; once stderr is read again, the lines kept come
//! out in the order they were logged, followed by the count of those
//! dropped.
//!
//! A real `ferroturn` child (one worker) whose stderr is a pipe this test
//! holds, a raw client on 127.0.0.1. Every read has a time-out and every
//! loop a bound; the child is killed when the test ends, however it ends.

mod common;
mod raw;

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, PASSWORD, REALM, ServerConfig, TempDir, USER};
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::message::*;

#[test]
fn a_stalled_stderr_drops_log_lines_and_never_stalls_the_server() {
    let dir = TempDir::new("log-writer");
    let config = ServerConfig {
        workers: Some(1),
        transports: vec!["udp".into()],
        limits: vec![("unauthenticated_rate", "0".into())],
        log_level: "info".into(),
        ..ServerConfig::default()
    };
    let port = common::free_port();
    let path = dir.path().join("ferroturn.toml");
    std::fs::write(&path, config.to_toml(port, common::relay_block())).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ferroturn"))
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferroturn");
    let mut child = KillOnDrop(child);
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let ready_by = Instant::now() + Duration::from_secs(10);
    while common::binding_udp(&probe, server).is_none() {
        assert!(Instant::now() < ready_by, "ferroturn did not start");
    }

    // Nobody reads stderr: its pipe (64 KiB) and then the writer's buffer
    // (512 KiB) fill with two lines per allocation, created and deleted.
    // Every request is still answered (the client's reads time out after
    // 3 s, failing the test).
    const CYCLES: usize = 5000;
    let mut c = RawClient::udp(server, REALM, USER, PASSWORD);
    for _ in 0..CYCLES {
        c.allocate();
        let r = c.signed(Request::new(METHOD_REFRESH).lifetime(0));
        assert_eq!(wire::error_code(&r), None, "delete failed");
    }

    // Read stderr again: the kept lines come out, then the drop count.
    let mut stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 65536];
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&text).contains("log lines dropped") {
                break;
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    // Kill the child after 10 s at most, which ends the reader's read.
    let end = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child);
    let text = reader.join().unwrap();
    let dropped = text
        .lines()
        .find(|l| l.contains("log lines dropped"))
        .unwrap_or_else(|| panic!("no drop count in {} bytes of log", text.len()));
    let count: u64 = dropped
        .split("dropped=")
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count in {dropped:?}"));
    let created = text.matches("allocation created").count();
    let deleted = text.matches("allocation deleted").count();
    assert!(count > 0 && created + deleted > 0, "{dropped}");
    assert!(
        created + deleted + count as usize >= 2 * CYCLES,
        "kept {created} + {deleted} and dropped {count} of {} lines",
        2 * CYCLES
    );
    // Kept lines in order: a deletion never comes before its creation, so
    // no two creations in a row lack the deletion between them, beyond the
    // one place where lines were dropped.
    let mut last = "";
    let mut out_of_order = 0;
    for l in text.lines() {
        let kind = if l.contains("allocation created") {
            "created"
        } else if l.contains("allocation deleted") {
            "deleted"
        } else {
            continue;
        };
        if kind == last {
            out_of_order += 1;
        }
        last = kind;
    }
    assert!(out_of_order <= 1, "{out_of_order} lines out of order");
}
