//! A UDP shard holds the log lines of a round of events and writes them
//! with one `write(2)` at the end of the round (src/log.rs), with the real
//! binary on 127.0.0.1:
//!
//! - a lone Allocate and Refresh 0 are on stderr within a second, with no
//!   traffic after them (the round's end writes them, not a later one);
//! - a burst of 64 allocation cycles sent at once costs fewer than half as
//!   many `write` calls on stderr as it has lines (`strace`, Debian
//!   package strace);
//! - a SIGTERM right after such a burst loses none of its lines.

mod common;
mod raw;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::strace::Strace;
use common::{PASSWORD, REALM, Server, ServerConfig, USER};
use ferroturn::proto::stun::{self as wire, Request};
use raw::RawClient;
use stun::attributes::ATTR_NONCE;
use stun::message::{METHOD_ALLOCATE, METHOD_REFRESH};

const CREATED: &str = "allocation created";
const DELETED: &str = "allocation deleted";

/// A server logging at info (the production default), where each
/// allocation cycle logs two lines from a shard thread, with room for
/// `clients` allocations of one user and their 401s.
fn server(clients: usize) -> Server {
    Server::start_with(ServerConfig {
        log_level: "info".into(),
        limits: vec![
            ("allocations_per_user", clients.to_string()),
            ("unauthenticated_rate", "0".into()),
        ],
        ..ServerConfig::default()
    })
}

/// How many lines of `log` contain `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Wait at most `limit` until `server`'s log has `n` lines with each of
/// `needles`; the log as it was last read.
fn wait_lines(server: &Server, needles: &[&str], n: usize, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = server.log();
        if needles.iter().all(|s| count(&log, s) >= n) || Instant::now() >= deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// UDP clients, each on its own 5-tuple with its own nonce, whose signed
/// requests can all be built first and sent back to back.
struct Burst {
    server: SocketAddr,
    clients: Vec<(UdpSocket, String)>,
}

impl Burst {
    /// `n` clients, each with the nonce of a 401 to an unsigned Allocate.
    fn new(server: SocketAddr, n: usize) -> Burst {
        let clients = (0..n)
            .map(|_| {
                let mut c = RawClient::udp(server, REALM, USER, PASSWORD);
                let r = c.request(&Request::new(METHOD_ALLOCATE).transport(17).bytes());
                assert_eq!(wire::error_code(&r), Some(401));
                let nonce = wire::text(&r, ATTR_NONCE).expect("NONCE in the 401");
                let raw::Link::Udp(s) = c.link else {
                    unreachable!("a UDP client")
                };
                (s, nonce)
            })
            .collect();
        Burst { server, clients }
    }

    /// Send each client's `req()`, signed, all before reading any answer;
    /// then read every answer and assert it is a success.
    fn send(&self, what: &str, req: impl Fn() -> Request) {
        let packets: Vec<Vec<u8>> = self
            .clients
            .iter()
            .map(|(_, nonce)| req().sign(USER, REALM, PASSWORD, nonce))
            .collect();
        for ((s, _), p) in self.clients.iter().zip(&packets) {
            s.send_to(p, self.server).unwrap();
        }
        let mut buf = [0u8; 1500];
        for (i, (s, _)) in self.clients.iter().enumerate() {
            let (n, _) = s
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no answer to {what} {i}: {e}"));
            let m = wire::decode(&buf[..n]).expect("a STUN answer");
            assert_eq!(wire::error_code(&m), None, "{what} {i} failed");
        }
    }

    /// One Allocate, then one Refresh 0, from every client.
    fn cycle(&self) {
        self.send("Allocate", || Request::new(METHOD_ALLOCATE).transport(17));
        self.send("Refresh 0", || Request::new(METHOD_REFRESH).lifetime(0));
    }
}

/// The sizes of the `write` calls on fd 2 in `strace -f -e trace=write`'s
/// output (0 for one that failed).
fn stderr_writes(trace: &str) -> Vec<usize> {
    // `PID write(2, "...", LEN) = WRITTEN`, or split in two around
    // `<unfinished ...>`: the call is on the first part.
    let written = |l: &str| l.rsplit_once("= ").and_then(|(_, n)| n.trim().parse().ok());
    trace
        .lines()
        .filter(|l| l.contains("write(2,"))
        .map(|l| written(l).unwrap_or(0))
        .collect()
}

#[test]
fn a_lone_cycle_is_on_stderr_within_a_second_without_more_traffic() {
    let server = server(10);
    let mut c = RawClient::udp(server.addr, REALM, USER, PASSWORD);
    c.allocate();
    let r = c.signed(Request::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(wire::error_code(&r), None, "Refresh 0 failed");
    // Nothing is sent from here on: a line the shard still held would
    // wait for the next round, which never comes.
    let log = wait_lines(&server, &[CREATED, DELETED], 1, Duration::from_secs(1));
    let me = c.local_addr().to_string();
    for what in [CREATED, DELETED] {
        assert!(
            log.lines().any(|l| l.contains(what) && l.contains(&me)),
            "{what:?} for {me} not on stderr within 1 s:\n{log}"
        );
    }
}

#[test]
fn a_burst_of_cycles_costs_fewer_writes_than_half_its_lines() {
    const CYCLES: usize = 64;
    let server = server(CYCLES);
    let burst = Burst::new(server.addr, CYCLES);
    let before = server.log().len();
    let writes = Strace::attach(
        server.pid(),
        &["-f", "-e", "trace=write"],
        &server.dir().join("strace.txt"),
    );
    burst.cycle();
    let log = wait_lines(&server, &[CREATED, DELETED], CYCLES, Duration::from_secs(5));
    let sizes = stderr_writes(&writes.finish());
    let writes = sizes.len();
    let text = log.get(before..).unwrap_or_default();
    let lines = text.lines().count();
    let cycle_lines = count(&log, CREATED) + count(&log, DELETED);
    eprintln!(
        "{CYCLES} cycles: {lines} lines ({cycle_lines} of cycles, {} bytes), {writes} writes on stderr: {sizes:?}",
        text.len()
    );
    assert_eq!(
        cycle_lines,
        2 * CYCLES,
        "a line of a cycle is missing:\n{log}"
    );
    assert!(lines >= cycle_lines);
    assert!(
        writes * 2 < lines,
        "{writes} writes for {lines} lines: not fewer than half"
    );
    // The lines are more than one cap's worth, and no write is larger.
    assert!(text.len() > ferroturn::log::HELD_MAX);
    assert!(
        sizes.iter().all(|&n| n <= ferroturn::log::HELD_MAX),
        "a write larger than the cap: {sizes:?}"
    );
}

#[test]
fn a_sigterm_right_after_a_burst_loses_no_line() {
    const CYCLES: usize = 64;
    let mut server = server(CYCLES);
    let burst = Burst::new(server.addr, CYCLES);
    burst.cycle();
    // No allocation is left: the drain ends at once, and the process with
    // it.
    // SAFETY: kill(2) on our own child.
    let r = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.is_running() {
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = server.log();
    for (s, _) in &burst.clients {
        let me = s.local_addr().unwrap().to_string();
        for what in [CREATED, DELETED] {
            let n = log
                .lines()
                .filter(|l| l.contains(what) && l.contains(&me))
                .count();
            assert_eq!(n, 1, "{what:?} for {me} {n} times in the log:\n{log}");
        }
    }
}
