//! Mobility with TURN (RFC 8016) against a running server: a raw client
//! allocates over UDP, relays to an echo peer, moves to a new source
//! socket (often another UDP shard: the server runs four) with its ticket
//! and keeps relaying; tickets of others, altered and used ones fail; with
//! mobility off the Allocate gets 405. And coturn's `turnutils_uclient -M`
//! (Debian package `coturn`), which asks for mobility and reconnects from a
//! new port before its Refresh, relays without loss.

mod common;
mod raw;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::coturn::{CoturnPeer, parse_summary, tool};
use common::{EchoPeer, PASSWORD, REALM, Server, ServerConfig, USER, run_with_timeout};
use ferroturn::proto::stun::{self as wire, Message, Request};
use raw::{Link, RawClient};
use stun::message::*;

/// MOBILITY-TICKET (RFC 8016 §3.4).
const TICKET: stun::attributes::AttrType = stun::attributes::AttrType(0x8030);
/// The log line of a move that crossed shards (engine/mobility.rs).
const CROSSED: &str = "allocation handed to another shard";
/// Moves made; with four shards each crosses with odds of 3 in 4 (the
/// kernel hashes the new 4-tuple), so that none crossing in 10 has odds of
/// about one in a million.
const MOVES: usize = 10;
/// The log line of a move within one shard.
const LOCAL: &str = "allocation moved";
const CHANNEL: u16 = 0x4000;
/// How long an echo may take to come back through the relay.
const SETTLE: Duration = Duration::from_secs(2);

fn mobile_server() -> Server {
    Server::start_with(ServerConfig {
        workers: Some(4),
        users: vec![
            (USER.into(), PASSWORD.into()),
            ("bob".into(), "builder".into()),
        ],
        mobility: Some(true),
        log_level: "info".into(),
        ..Default::default()
    })
}

fn client(server: &Server, user: &str, pass: &str) -> RawClient {
    RawClient::udp(server.addr, REALM, user, pass)
}

fn ticket(r: &Message) -> Vec<u8> {
    assert_eq!(wire::error_code(r), None, "expected success: {r:?}");
    wire::attr(r, TICKET).expect("MOBILITY-TICKET").to_vec()
}

fn refresh(c: &mut RawClient, t: &[u8]) -> Message {
    c.signed(Request::new(METHOD_REFRESH).lifetime(600).attr(TICKET, t))
}

fn udp(c: &RawClient) -> &UdpSocket {
    match &c.link {
        Link::Udp(s) => s,
        Link::Tcp(_) => unreachable!("UDP clients only"),
    }
}

/// Send one ChannelData from `c` and wait up to `wait` for the echo
/// peer's answer through the relay: whether it came back, as ChannelData
/// on `CHANNEL`.
fn round_trip(c: &mut RawClient, payload: &[u8], wait: Duration) -> bool {
    let frame = c.channel_data(CHANNEL, payload);
    c.send(&frame);
    let s = udp(c);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let end = Instant::now() + wait;
    let mut got = false;
    while Instant::now() < end {
        match s.recv_from(&mut buf) {
            Ok((n, _)) if n >= 4 && buf[..4] == frame[..4] && &buf[4..n] == payload => {
                got = true;
                break;
            }
            // Anything else (a late retransmitted answer): read on.
            Ok(_) => {}
            Err(_) => {}
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    got
}

#[test]
fn a_udp_client_moves_with_its_ticket_and_keeps_relaying() {
    let server = mobile_server();
    let peer = EchoPeer::start();
    let mut c = client(&server, USER, PASSWORD);
    let r = c.signed(
        Request::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(TICKET, &[]),
    );
    let mut current = ticket(&r);
    let relayed = wire::xor_address(&r, stun::attributes::ATTR_XOR_RELAYED_ADDRESS).unwrap();
    c.channel_bind(CHANNEL, peer.addr);
    assert!(round_trip(&mut c, b"before any move", SETTLE));

    for i in 0..MOVES {
        let mut next = client(&server, USER, PASSWORD);
        assert_ne!(next.local_addr(), c.local_addr());
        let r = refresh(&mut next, &current);
        let newer = ticket(&r);
        assert_ne!(newer, current, "move {i}: a new ticket");
        // Data both ways from the new 5-tuple, through the same relay.
        let payload = format!("after move {i}");
        assert!(
            round_trip(&mut next, payload.as_bytes(), SETTLE),
            "move {i}"
        );
        assert_eq!(peer.senders(), vec![relayed], "one relay address all along");
        // The old socket's data reaches nobody any more.
        let echoed = peer.received();
        let old = round_trip(&mut c, b"from the old address", Duration::from_millis(500));
        assert!(!old, "move {i}");
        assert_eq!(peer.received(), echoed, "move {i}: the old 5-tuple relayed");

        // The used ticket, replayed by the same user from a third address.
        let mut third = client(&server, USER, PASSWORD);
        assert_eq!(wire::error_code(&refresh(&mut third, &current)), Some(437));
        (c, current) = (next, newer);
    }

    // Another user with the newest ticket: 441; an altered ticket: 400.
    let mut bob = client(&server, "bob", "builder");
    assert_eq!(wire::error_code(&refresh(&mut bob, &current)), Some(441));
    let mut forged = current.clone();
    forged[6] = if forged[6] == b'A' { b'B' } else { b'A' };
    let mut other = client(&server, USER, PASSWORD);
    assert_eq!(wire::error_code(&refresh(&mut other, &forged)), Some(400));
    // Neither moved it.
    assert!(round_trip(&mut c, b"still here", SETTLE));
    // A UDP shard writes its lines at the end of its round, after the
    // answers: wait for the last lines.
    let counts = || {
        let log = server.log();
        (log.matches(CROSSED).count(), log.matches(LOCAL).count())
    };
    let end = Instant::now() + Duration::from_secs(5);
    while counts().0 + counts().1 < MOVES && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (crossed, local) = counts();
    eprintln!("{crossed} of {MOVES} moves crossed shards, {local} stayed");
    assert_eq!(crossed + local, MOVES);
    assert!(crossed > 0, "no move crossed shards");
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn mobility_off_refuses_the_ticket_with_405() {
    let server = Server::start_with(ServerConfig {
        workers: Some(2),
        ..Default::default()
    });
    let mut c = client(&server, USER, PASSWORD);
    let r = c.signed(
        Request::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(TICKET, &[]),
    );
    assert_eq!(wire::error_code(&r), Some(405));
    // Over TCP too, with mobility on: a stream allocation has nothing to move.
    let on = mobile_server();
    let mut t = RawClient::tcp(on.addr, REALM, USER, PASSWORD);
    let r = t.signed(
        Request::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(TICKET, &[]),
    );
    assert_eq!(wire::error_code(&r), Some(405));
}

#[test]
fn uclient_with_mobility_relays_without_loss() {
    let server = Server::start_with(ServerConfig {
        workers: Some(4),
        legacy_channel_numbers: Some(true),
        mobility: Some(true),
        log_level: "info".into(),
        ..Default::default()
    });
    let peer = CoturnPeer::start();
    let mut cmd = tool("turnutils_uclient");
    cmd.args([
        "-M", "-u", USER, "-w", PASSWORD, "-n", "50", "-m", "4", "-l", "170",
    ]);
    cmd.args(["-e", "127.0.0.1", "-r", &peer.port.to_string()]);
    cmd.args(["-p", &server.addr.port().to_string(), "127.0.0.1"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let context = format!(
        "turnutils_uclient -M (exit {:?}):\n{}",
        out.code, out.output
    );
    assert!(!out.timed_out, "{context}");
    assert_eq!(out.code, Some(0), "{context}");
    let s = parse_summary(&out.output).unwrap_or_else(|| panic!("no summary: {context}"));
    s.assert_complete(50 * 4, &context);
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    let moves = log.matches(LOCAL).count() + log.matches(CROSSED).count();
    eprintln!("uclient -M: {moves} moves");
    assert!(moves > 0, "uclient moved no allocation:\n{context}\n{log}");
}

/// A server with mobility, `[metrics]` and the admin API's Unix socket.
struct Watched {
    child: common::KillOnDrop,
    addr: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    socket: std::path::PathBuf,
    _dir: common::TempDir,
}

impl Watched {
    fn start() -> Watched {
        let config = ServerConfig {
            workers: Some(4),
            mobility: Some(true),
            ..Default::default()
        };
        let mut last = String::new();
        for _ in 0..3 {
            let dir = common::TempDir::new("mobility-admin");
            let (port, metrics) = (common::free_port(), common::free_port());
            let socket = dir.path().join("admin.sock");
            let mut toml = config.to_toml(port, common::relay_block());
            toml.push_str(&format!(
                "\n[metrics]\naddress = \"127.0.0.1:{metrics}\"\n\n[admin]\nsocket = \"{}\"\n",
                socket.display()
            ));
            let config_path = dir.path().join("ferroturn.toml");
            std::fs::write(&config_path, toml).unwrap();
            let addr = std::net::SocketAddr::from((common::LOCALHOST, port));
            let metrics = std::net::SocketAddr::from((common::LOCALHOST, metrics));
            let log = dir.path().join("ferroturn.log");
            let up = || std::net::TcpStream::connect(metrics).is_ok() && socket.exists();
            match common::spawn_ferroturn(&config_path, &log, addr, up) {
                Ok(child) => {
                    return Watched {
                        child: common::KillOnDrop(child),
                        addr,
                        metrics,
                        socket,
                        _dir: dir,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("ferroturn did not start: {last}");
    }

    /// The clients of `ferroturn sessions --json`.
    fn session_clients(&self) -> Vec<String> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferroturn"));
        cmd.args(["sessions", "--json", "--admin"])
            .arg(&self.socket);
        let out = run_with_timeout(cmd, Duration::from_secs(30));
        assert_eq!(out.code, Some(0), "{}", out.output);
        let v: serde_json::Value = serde_json::from_str(&out.output).expect("JSON");
        v["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["client"].as_str().expect("client").to_owned())
            .collect()
    }

    /// The value of `series` on `/metrics`.
    fn metric(&self, series: &str) -> Option<u64> {
        common::sample(&common::scrape(self.metrics).unwrap(), series)
    }
}

#[test]
fn the_admin_api_and_metrics_show_the_move() {
    let server = Watched::start();
    let mut c = RawClient::udp(server.addr, REALM, USER, PASSWORD);
    let r = c.signed(
        Request::new(METHOD_ALLOCATE)
            .transport(17)
            .attr(TICKET, &[]),
    );
    let first = ticket(&r);
    assert_eq!(server.session_clients(), vec![c.local_addr().to_string()]);
    assert_eq!(server.metric("ferroturn_mobility_moves_total"), Some(0));
    let mut moved = RawClient::udp(server.addr, REALM, USER, PASSWORD);
    ticket(&refresh(&mut moved, &first));
    assert_eq!(
        server.session_clients(),
        vec![moved.local_addr().to_string()]
    );
    assert_eq!(server.metric("ferroturn_mobility_moves_total"), Some(1));
    drop(server.child);
}
