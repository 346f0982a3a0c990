//! Interop with coturn's client tools (Debian package `coturn`):
//! `turnutils_stunclient`, `turnutils_uclient` and `turnutils_peer`.
//! coturn's own server (`turnserver`) is never started.
//!
//! tests/run.sh installs the tools; a missing tool fails these tests.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::coturn::{CoturnPeer, Summary, parse_summary, tool};
use common::{LOCALHOST, Output, PASSWORD, SECRET, Server, ServerConfig, USER, run_with_timeout};

/// A uclient run must finish within this.
const UCLIENT_LIMIT: Duration = Duration::from_secs(60);
/// Messages per client (-n), clients (-m), message length (-l).
const MESSAGES: u64 = 50;
const CLIENTS: u64 = 2;
const LENGTH: &str = "170";

/// uclient sessions run one at a time: they are timing sensitive (loss is
/// counted after a fixed wait), and this machine may have few cores.
static UCLIENT_SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn stunclient_sees_its_mapped_address() {
    let server = Server::start();
    let mut cmd = tool("turnutils_stunclient");
    cmd.args(["-p", &server.addr.port().to_string(), "127.0.0.1"]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(!out.timed_out, "turnutils_stunclient hung:\n{}", out.output);
    assert_eq!(
        out.code,
        Some(0),
        "turnutils_stunclient failed:\n{}",
        out.output
    );
    // e.g. "0: : IPv4. UDP reflexive addr: 127.0.0.1:39874"
    let line = out
        .output
        .lines()
        .find(|l| l.contains("UDP reflexive addr:"))
        .unwrap_or_else(|| panic!("no reflexive address in:\n{}", out.output));
    let addr = line.split("UDP reflexive addr:").nth(1).unwrap().trim();
    let addr: std::net::SocketAddr = addr
        .parse()
        .unwrap_or_else(|_| panic!("not an address: {addr:?} in {line:?}"));
    assert_eq!(addr.ip(), LOCALHOST);
    assert_ne!(addr.port(), 0);
    assert_ne!(addr.port(), server.addr.port());
}

/// Run uclient against `server` with the peer and `args` (flags plus
/// credentials), and check that every message came back.
fn run_uclient(server: &Server, peer: &CoturnPeer, args: &[&str]) -> Summary {
    run_uclient_on(server, peer, args, "127.0.0.1")
}

/// [`run_uclient`] with the peer and the server reached at `host`.
fn run_uclient_on(server: &Server, peer: &CoturnPeer, args: &[&str], host: &str) -> Summary {
    let _serial = UCLIENT_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = tool("turnutils_uclient");
    cmd.args(args);
    cmd.args([
        "-n",
        &MESSAGES.to_string(),
        "-m",
        &CLIENTS.to_string(),
        "-l",
        LENGTH,
    ]);
    cmd.args(["-e", host, "-r", &peer.port.to_string()]);
    cmd.args(["-p", &server.addr.port().to_string(), host]);
    let Output {
        code,
        timed_out,
        elapsed,
        output,
    } = run_with_timeout(cmd, UCLIENT_LIMIT);
    let context = format!("turnutils_uclient {args:?} (ran {elapsed:?}, exit {code:?}):\n{output}");
    assert!(!timed_out, "killed after {UCLIENT_LIMIT:?}: {context}");
    assert_eq!(code, Some(0), "{context}");
    let s = parse_summary(&output).unwrap_or_else(|| panic!("no final summary: {context}"));
    s.assert_complete(MESSAGES * CLIENTS, &context);
    s
}

fn check_server_log(server: &Server) {
    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

const STATIC_USER: [&str; 4] = ["-u", USER, "-w", PASSWORD];

/// A server for uclient's channel tests: uclient picks channel numbers in
/// 0x4000-0x7FFF (RFC 5766), which needs `legacy_channel_numbers`.
fn legacy_channel_server() -> Server {
    Server::start_with(ServerConfig {
        legacy_channel_numbers: Some(true),
        ..Default::default()
    })
}

#[test]
fn uclient_udp_channels() {
    let server = legacy_channel_server();
    let peer = CoturnPeer::start();
    run_uclient(&server, &peer, &STATIC_USER);
    check_server_log(&server);
}

/// With `udp_threads = "dedicated"` each of the two UDP workers relays on
/// a thread of its own from the first packet on.
#[test]
fn uclient_udp_channels_dedicated_threads() {
    let server = Server::start_with(ServerConfig {
        legacy_channel_numbers: Some(true),
        workers: Some(2),
        udp_threads: Some("dedicated"),
        ..Default::default()
    });
    let peer = CoturnPeer::start();
    run_uclient(&server, &peer, &STATIC_USER);
    check_server_log(&server);
}

#[test]
fn uclient_udp_send_indications() {
    let server = Server::start();
    let peer = CoturnPeer::start();
    let mut args = vec!["-s"];
    args.extend(STATIC_USER);
    run_uclient(&server, &peer, &args);
    check_server_log(&server);
}

#[test]
fn uclient_tcp_channels() {
    let server = legacy_channel_server();
    let peer = CoturnPeer::start();
    let mut args = vec!["-t"];
    args.extend(STATIC_USER);
    run_uclient(&server, &peer, &args);
    check_server_log(&server);
}

#[test]
fn uclient_tcp_send_indications() {
    let server = Server::start();
    let peer = CoturnPeer::start();
    let mut args = vec!["-t", "-s"];
    args.extend(STATIC_USER);
    run_uclient(&server, &peer, &args);
    check_server_log(&server);
}

#[test]
fn uclient_client_to_client() {
    let server = legacy_channel_server();
    let peer = CoturnPeer::start();
    let mut args = vec!["-y"];
    args.extend(STATIC_USER);
    run_uclient(&server, &peer, &args);
    check_server_log(&server);
}

#[test]
fn uclient_rest_shared_secret() {
    let server = legacy_channel_server();
    let peer = CoturnPeer::start();
    // uclient makes the username "<expiry>:bob" and the password
    // base64(HMAC-SHA1(secret, username)) itself.
    // No -w: only the shared secret can make these credentials work.
    run_uclient(&server, &peer, &["-u", "bob", "-W", SECRET]);
    check_server_log(&server);
}

/// IPv6 relays (`-x` asks for one, RFC 8656 REQUESTED-ADDRESS-FAMILY) with
/// the client, the server and the peer on ::1: channels, Send indications,
/// TCP, client-to-client.
#[test]
fn uclient_ipv6_relays() {
    let server = Server::start_with(ServerConfig {
        legacy_channel_numbers: Some(true),
        ipv6: true,
        // uclient reserves a second port for each allocation (EVEN-PORT with
        // the R bit), and a reservation counts against the user for 30 s:
        // four runs in a row hold more than the default 10.
        limits: vec![("allocations_per_user", "100".into())],
        ..Default::default()
    });
    let peer = CoturnPeer::start_on("::1".parse().unwrap());
    for extra in [&[][..], &["-s"], &["-t"], &["-y"]] {
        let mut args = vec!["-x"];
        args.extend(extra);
        args.extend(STATIC_USER);
        run_uclient_on(&server, &peer, &args, "::1");
    }
    let log = server.log();
    assert!(
        log.contains("relay=[::1]:"),
        "no IPv6 relay was allocated:\n{log}"
    );
    check_server_log(&server);
}

#[test]
fn uclient_wrong_password_fails() {
    let server = Server::start();
    let peer = CoturnPeer::start();
    let _serial = UCLIENT_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = tool("turnutils_uclient");
    cmd.args(["-u", USER, "-w", "not-wonderland", "-n", "5", "-m", "1"]);
    cmd.args(["-e", "127.0.0.1", "-r", &peer.port.to_string()]);
    cmd.args(["-p", &server.addr.port().to_string(), "127.0.0.1"]);
    let out = run_with_timeout(cmd, UCLIENT_LIMIT);
    assert!(!out.timed_out, "uclient hung:\n{}", out.output);
    assert_ne!(
        out.code,
        Some(0),
        "uclient succeeded with a wrong password:\n{}",
        out.output
    );
    assert!(
        out.output.contains("Cannot complete Allocation"),
        "uclient failed for another reason than the refused Allocate:\n{}",
        out.output
    );
    assert!(
        parse_summary(&out.output).is_none_or(|s| s.received == 0),
        "data was relayed with a wrong password:\n{}",
        out.output
    );
    check_server_log(&server);
}

#[test]
fn summary_parser_reads_uclient_output() {
    let text = "\
0: : Total connect time is 1
3: : start_mclient: msz=2, tot_send_msgs=42, tot_recv_msgs=41, tot_send_bytes ~ 7140, tot_recv_bytes ~ 6970
6: : start_mclient: tot_send_msgs=100, tot_recv_msgs=98
6: : start_mclient: tot_send_bytes ~ 17000, tot_recv_bytes ~ 16660
6: : Total transmit time is 6
6: : Total lost packets 2 (2.000000%), total send dropped 1 (1.000000%)
";
    let s = parse_summary(text).expect("summary");
    assert_eq!(
        (
            s.sent,
            s.received,
            s.sent_bytes,
            s.received_bytes,
            s.lost,
            s.send_dropped
        ),
        (100, 98, 17000, 16660, 2, 1)
    );
    assert!(parse_summary("0: : channel bind: error 400 (Bad Request)\n").is_none());
}
