//! The fallback proof, in network namespaces this test creates and removes
//! (see `browser/netns.rs`): ferroturn and its demo run in a "public"
//! namespace; two headless Chromiums, each in a namespace behind its own NAT
//! router, call each other through the demo's call page.
//!
//! 0. The trickle-ICE page behind a NAT gathers srflx and relay candidates.
//! 1. Symmetric NATs, STUN only: both browsers learn their public address
//!    (srflx), yet the call does not connect within 15 s.
//! 2. Symmetric NATs, STUN and TURN: the call connects, over the relay.
//! 3. Control: port-preserving NATs, STUN only: the call connects directly
//!    (no relay), so it is the relay that gets through the symmetric NATs.
//!
//! Needs root, iproute2, iptables, chromium and chromium-driver.

mod browser;

use std::path::Path;
use std::time::{Duration, Instant};

use browser::netns::{self, Nat, Topology};
use browser::webdriver::{Driver, Session};
use browser::{Demo, DemoConfig, Net, TempDir};
use serde_json::Value;

/// How long the STUN-only call behind symmetric NATs is given.
const NO_CONNECT_WINDOW: Duration = Duration::from_secs(15);
/// How long a call that should connect is given.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

struct Outcome {
    connected: bool,
    /// Selected pair per page (a, b), when connected.
    pairs: [Value; 2],
    /// Local candidates gathered per page.
    candidates: [Value; 2],
    states: [Value; 2],
    elapsed: Duration,
}

fn join(s: &Session, url: &str) {
    s.goto(url);
    s.wait_until("window.ferroturnCall", Duration::from_secs(10))
        .expect("call page loaded");
    s.click("#join");
}

/// One call between a page in each client namespace; `params` go into the
/// page URL (room, servers).
fn call(a: &Driver, b: &Driver, demo: &Demo, params: &str, limit: Duration) -> Outcome {
    let url = demo.url(&format!("/?{params}"));
    let sa = a.session("a");
    let sb = b.session("b");
    join(&sa, &url);
    sa.wait_until(
        "ferroturnCall.signaling === 'waiting for peers'",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| {
        panic!(
            "a did not join: {}",
            sa.eval("JSON.stringify(ferroturnCall)")
        )
    });
    let start = Instant::now();
    join(&sb, &url);
    let deadline = start + limit;
    let connected = loop {
        let open = |s: &Session| {
            s.eval("ferroturnCall.channelOpen && ferroturnCall.pair !== null") == true
        };
        if open(&sa) && open(&sb) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = start.elapsed();
    let get = |s: &Session, what: &str| s.eval(&format!("ferroturnCall.{what}"));
    let outcome = Outcome {
        connected,
        pairs: [get(&sa, "pair"), get(&sb, "pair")],
        candidates: [get(&sa, "candidates"), get(&sb, "candidates")],
        states: [
            sa.eval("[ferroturnCall.signaling, ferroturnCall.iceConnectionState, ferroturnCall.connectionState, ferroturnCall.errors]"),
            sb.eval("[ferroturnCall.signaling, ferroturnCall.iceConnectionState, ferroturnCall.connectionState, ferroturnCall.errors]"),
        ],
        elapsed,
    };
    if connected {
        // The data channel carries messages both ways.
        assert_eq!(sa.eval("ferroturnCall.say('ping from a')"), true);
        assert_eq!(sb.eval("ferroturnCall.say('ping from b')"), true);
        sa.wait_until(
            "ferroturnCall.received.includes('ping from b')",
            Duration::from_secs(5),
        )
        .expect("b's message reaches a");
        sb.wait_until(
            "ferroturnCall.received.includes('ping from a')",
            Duration::from_secs(5),
        )
        .expect("a's message reaches b");
    }
    eprintln!(
        "{params}: connected={connected} after {elapsed:?}\n  a: pair {} state {}\n  b: pair {} state {}\n  a candidates {}\n  b candidates {}",
        outcome.pairs[0],
        outcome.states[0],
        outcome.pairs[1],
        outcome.states[1],
        outcome.candidates[0],
        outcome.candidates[1]
    );
    outcome
}

fn has_srflx_at(candidates: &Value, addr: &str) -> bool {
    candidates
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "srflx" && c["address"] == addr)
}

fn relay_in(pair: &Value) -> bool {
    pair["local"]["type"] == "relay" || pair["remote"]["type"] == "relay"
}

#[test]
fn relay_gets_calls_through_symmetric_nats() {
    let started = Instant::now();
    // Declared first, so dropped last: processes go before the namespaces.
    let topo = Topology::create();
    let dir = TempDir::new("netns");
    for d in ["pub", "a", "b"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let config = DemoConfig {
        listen: format!("{}:3478", netns::SERVER_IP).parse().unwrap(),
        relay: netns::SERVER_IP.into(),
        relay_ports: (40000, 40199),
        allow: vec![netns::SUBNET.into()],
        http: format!("{}:8080", netns::SERVER_IP).parse().unwrap(),
        allocations_per_user: 10,
    };
    let demo = Demo::start(&Net::Ns(netns::PUBLIC.into()), config, &dir.join("pub"));
    let da = Driver::start(
        Net::Ns(netns::CLIENT_A.into()),
        9515,
        Path::new(&dir.join("a")),
    );
    let db = Driver::start(
        Net::Ns(netns::CLIENT_B.into()),
        9515,
        Path::new(&dir.join("b")),
    );
    let setup = started.elapsed();

    topo.set_nat(Nat::Symmetric);

    // 0. The trickle-ICE page behind a NAT: srflx at the router's public
    // address, relay at the server's.
    {
        let s = da.session("trickle");
        s.goto(&demo.url("/trickle-ice?autogather=1"));
        s.wait_until(
            "window.ferroturnTrickle && ferroturnTrickle.done",
            Duration::from_secs(30),
        )
        .expect("gathering ends");
        let found = s.eval("ferroturnTrickle.candidates");
        eprintln!("trickle ICE behind NAT: {found}");
        assert!(has_srflx_at(&found, netns::ROUTER_A_WAN), "{found}");
        let relay = found
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "relay" && c["address"] == netns::SERVER_IP);
        assert!(relay, "{found}");
    }

    // 1. Symmetric NATs, STUN only: no connection.
    let stun_only = call(
        &da,
        &db,
        &demo,
        "room=sym-stun&servers=stun",
        NO_CONNECT_WINDOW,
    );
    assert!(
        !stun_only.connected,
        "connected without TURN behind symmetric NATs: {:?}",
        stun_only.pairs
    );
    for (i, wan) in [netns::ROUTER_A_WAN, netns::ROUTER_B_WAN]
        .iter()
        .enumerate()
    {
        // STUN worked: each browser knows its NAT's public address; it is
        // the mapping that changes per destination that defeats the call.
        assert!(
            has_srflx_at(&stun_only.candidates[i], wan),
            "no srflx candidate at {wan}: {}",
            stun_only.candidates[i]
        );
        assert!(
            !stun_only.candidates[i]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "relay"),
            "STUN only gathered a relay candidate"
        );
        assert_ne!(
            stun_only.states[i][2], "connected",
            "{}",
            stun_only.states[i]
        );
    }

    // 2. Symmetric NATs, STUN and TURN: connects over the relay.
    let with_turn = call(&da, &db, &demo, "room=sym-turn", CONNECT_LIMIT);
    assert!(
        with_turn.connected,
        "no connection with TURN: {:?}\nferroturn log:\n{}",
        with_turn.states,
        demo.log_text()
    );
    for pair in &with_turn.pairs {
        assert!(relay_in(pair), "selected pair without relay: {pair}");
        let relay_side = if pair["local"]["type"] == "relay" {
            "local"
        } else {
            "remote"
        };
        assert_eq!(pair[relay_side]["address"], netns::SERVER_IP, "{pair}");
        let port = pair[relay_side]["port"].as_u64().unwrap();
        assert!((40000..=40199).contains(&port), "{pair}");
    }

    // 3. Control: port-preserving NATs, STUN only: connects directly.
    topo.set_nat(Nat::PortPreserving);
    let direct = call(&da, &db, &demo, "room=pp-stun&servers=stun", CONNECT_LIMIT);
    assert!(
        direct.connected,
        "no direct connection behind port-preserving NATs: {:?}",
        direct.states
    );
    for (pair, other_wan) in direct
        .pairs
        .iter()
        .zip([netns::ROUTER_B_WAN, netns::ROUTER_A_WAN])
    {
        assert!(!relay_in(pair), "{pair}");
        // The remote end is the other browser's NAT: a srflx (or, learned
        // from its checks, prflx) candidate.
        let remote = &pair["remote"];
        assert!(
            remote["type"] == "srflx" || remote["type"] == "prflx",
            "{pair}"
        );
        assert_eq!(remote["address"], other_wan, "{pair}");
    }
    eprintln!(
        "netns test: setup {setup:?}; symmetric+STUN waited {:?}; symmetric+TURN connected in {:?}; port-preserving+STUN connected in {:?}; total {:?}",
        stun_only.elapsed,
        with_turn.elapsed,
        direct.elapsed,
        started.elapsed()
    );
    drop((da, db, demo));
    drop(topo);
    for ns in [netns::PUBLIC, netns::CLIENT_A, netns::CLIENT_B] {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "namespace {ns} left behind"
        );
    }
}
