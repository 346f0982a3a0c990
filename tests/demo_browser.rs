//! The demo's pages in headless Chromium (driven through chromedriver)
//! against a `ferroturn demo` on 127.0.0.1:
//! - the trickle-ICE page gathers a `srflx` and a `relay` candidate with the
//!   credentials `/ice-servers` minted, and a 401 error and no relay
//!   candidate with a wrong password;
//! - two call pages meet in a room through `/signal`, connect with "relay
//!   only", exchange 50 data-channel messages each way, and `getStats()`
//!   reports a relay/relay selected pair; both restart ICE at the same
//!   moment, the offers cross, and the call goes on;
//! - four call pages in one room with "relay only" make a full mesh: all
//!   six pairs connect through ferroturn (negotiating at once from both
//!   ends: perfect negotiation settles the collisions), exchange messages
//!   both ways, and each end of each pair reports a relay/relay pair and
//!   a bitrate on its tile;
//! - the classic tutorial's client (no join, `{event, data}` messages),
//!   served from another origin listed in `[demo] allowed_origins`, opens a
//!   data channel between two pages through `/signal`.

mod browser;

use std::time::{Duration, Instant};

use browser::webdriver::Driver;
use browser::{Demo, DemoConfig, Net, TempDir};
use serde_json::Value;

fn candidates_of(v: &Value, kind: &str) -> Vec<Value> {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == kind)
        .cloned()
        .collect()
}

#[test]
fn trickle_ice_page_finds_srflx_and_relay_and_reports_401() {
    let started = Instant::now();
    let dir = TempDir::new("trickle");
    let demo = Demo::start(&Net::Host, DemoConfig::loopback(), dir.path());
    let (lo, hi) = demo.config.relay_ports;
    let driver = Driver::start_on_free_port(Net::Host, dir.path());
    let s = driver.session("trickle");
    s.goto(&demo.url("/trickle-ice"));
    s.wait_until(
        "window.ferroturnTrickle && ferroturnTrickle.ready",
        Duration::from_secs(10),
    )
    .expect("the page loads /ice-servers");

    // The form holds this server's URIs and freshly minted REST credentials.
    let urls = s.eval("document.getElementById('urls').value");
    let turn_udp = format!("turn:{}?transport=udp", demo.config.listen);
    assert!(urls.as_str().unwrap().contains(&turn_udp), "{urls}");
    let username = s.eval("document.getElementById('username').value");
    let username = username.as_str().unwrap();
    let (expiry, name) = username.split_once(':').expect("REST username");
    assert!(
        name.starts_with("demo-"),
        "a name of this visitor's own: {name}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "ttl 600: {expiry} vs {now}"
    );

    // Gather with the right credentials: srflx and relay candidates.
    s.click("#gather");
    s.wait_until("ferroturnTrickle.done", Duration::from_secs(30))
        .expect("gathering ends");
    let found = s.eval("ferroturnTrickle.candidates");
    let errors = s.eval("ferroturnTrickle.errors");
    eprintln!("candidates: {found}\nerrors: {errors}");
    let srflx = candidates_of(&found, "srflx");
    assert!(!srflx.is_empty(), "no srflx candidate: {found}");
    let relay = candidates_of(&found, "relay");
    assert!(!relay.is_empty(), "no relay candidate: {found}");
    for r in &relay {
        assert_eq!(r["address"], "127.0.0.1", "{r}");
        let port = r["port"].as_u64().unwrap();
        assert!(
            (lo as u64..=hi as u64).contains(&port),
            "relay port {port} outside {lo}-{hi}"
        );
    }
    assert!(
        !errors
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["errorCode"] == 401),
        "unexpected 401: {errors}"
    );
    // The page shows them too.
    let table = s.text("#candidates");
    assert!(
        table.contains("relay") && table.contains("srflx"),
        "{table}"
    );

    // A wrong password: a 401 error, and no relay candidate.
    s.type_into("#credential", "not-the-password");
    s.click("#gather");
    s.wait_until("ferroturnTrickle.done", Duration::from_secs(30))
        .expect("gathering ends");
    let found = s.eval("ferroturnTrickle.candidates");
    let errors = s.eval("ferroturnTrickle.errors");
    eprintln!("wrong password: candidates: {found}\nerrors: {errors}");
    assert!(candidates_of(&found, "relay").is_empty(), "{found}");
    let e401: Vec<&Value> = errors
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["errorCode"] == 401)
        .collect();
    assert!(!e401.is_empty(), "no 401 error: {errors}");
    assert!(
        e401[0]["url"].as_str().unwrap().starts_with("turn:"),
        "{errors}"
    );
    assert!(s.text("#errors").contains("401"));
    // STUN needs no credentials: srflx still appears.
    assert!(!candidates_of(&found, "srflx").is_empty(), "{found}");
    eprintln!("trickle-ICE test took {:?}", started.elapsed());
}

#[test]
fn two_call_pages_connect_through_the_relay_and_chat() {
    let started = Instant::now();
    let dir = TempDir::new("call");
    let demo = Demo::start(&Net::Host, DemoConfig::loopback(), dir.path());
    let (lo, hi) = demo.config.relay_ports;
    let driver = Driver::start_on_free_port(Net::Host, dir.path());
    let a = driver.session("a");
    let b = driver.session("b");
    let page = demo.url("/?room=relay-test&relay=1");
    for s in [&a, &b] {
        s.goto(&page);
        s.wait_until("window.ferroturnCall", Duration::from_secs(10))
            .expect("page script loaded");
        assert_eq!(s.eval("document.getElementById('relay').checked"), true);
    }
    a.click("#join");
    a.wait_until(
        "ferroturnCall.signaling === 'waiting for peers'",
        Duration::from_secs(10),
    )
    .expect("first peer joined");
    b.click("#join");
    for s in [&a, &b] {
        s.wait_until("ferroturnCall.channelOpen", Duration::from_secs(20))
            .unwrap_or_else(|| {
                panic!(
                    "data channel did not open: {}\nferroturn log:\n{}",
                    s.eval("JSON.stringify(ferroturnCall)"),
                    demo.log_text()
                )
            });
    }
    let connected = started.elapsed();

    // 50 messages each way, in order, none lost or echoed.
    for i in 0..50 {
        assert_eq!(a.eval(&format!("ferroturnCall.say('a{i}')")), true);
        assert_eq!(b.eval(&format!("ferroturnCall.say('b{i}')")), true);
    }
    let want_a: Vec<String> = (0..50).map(|i| format!("b{i}")).collect();
    let want_b: Vec<String> = (0..50).map(|i| format!("a{i}")).collect();
    for (s, want) in [(&a, &want_a), (&b, &want_b)] {
        s.wait_until(
            "ferroturnCall.received.length >= 50",
            Duration::from_secs(10),
        )
        .expect("50 messages arrive");
        let got: Vec<String> = serde_json::from_value(s.eval("ferroturnCall.received")).unwrap();
        assert_eq!(&got, want);
    }

    // getStats(): both ends use relay candidates on this server.
    for s in [&a, &b] {
        let pair = s
            .wait_until(
                "ferroturnCall.pair && ferroturnCall.pair.local.type === 'relay' && ferroturnCall.pair",
                Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("no relay pair: {}", s.eval("JSON.stringify(ferroturnCall.pair)")));
        eprintln!("selected pair: {pair}");
        for side in ["local", "remote"] {
            assert_eq!(pair[side]["type"], "relay", "{pair}");
            assert_eq!(pair[side]["address"], "127.0.0.1", "{pair}");
            let port = pair[side]["port"].as_u64().unwrap();
            assert!((lo as u64..=hi as u64).contains(&port), "{pair}");
        }
        assert_eq!(s.text(".tile .path"), "relay");
        assert_eq!(s.eval("ferroturnCall.connectionState"), "connected");
    }

    // Both pages restart ICE at the same moment (a time on the clock they
    // share): their offers cross on a connected link, the polite one rolls
    // its own back, and the call goes on over a new relay pair.
    let collisions =
        |s: &browser::webdriver::Session<'_>| s.eval("ferroturnCall.collisions").as_u64().unwrap();
    // Two offers made at the same moment need not cross on a busy machine
    // (one may arrive before the other is made): up to three tries.
    let mut crossed = 0;
    for attempt in 1..=3 {
        let before = collisions(&a) + collisions(&b);
        let at = a.eval("Date.now() + 500").as_u64().unwrap();
        for s in [&a, &b] {
            let schedule = format!(
                "setTimeout(() => Object.keys(ferroturnCall.peers).forEach((id) => ferroturnCall.renegotiate(id)), {at} - Date.now()); return true;"
            );
            assert_eq!(s.exec(&schedule, serde_json::json!([])).unwrap(), true);
        }
        std::thread::sleep(Duration::from_millis(1500));
        for s in [&a, &b] {
            s.wait_until(
                "(p => p.signalingState === 'stable' && p.connectionState === 'connected' && p.channelOpen)(Object.values(ferroturnCall.peers)[0])",
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("renegotiation did not settle: {}", s.eval("JSON.stringify(ferroturnCall.peers)")));
        }
        crossed = collisions(&a) + collisions(&b) - before;
        eprintln!("simultaneous ICE restarts, try {attempt}: {crossed} collisions");
        if crossed >= 1 {
            break;
        }
    }
    assert!(
        crossed >= 1,
        "the offers did not cross in 3 tries: glare was not exercised"
    );
    assert_eq!(a.eval("ferroturnCall.say('after the restart')"), true);
    b.wait_until(
        "ferroturnCall.received.includes('after the restart')",
        Duration::from_secs(5),
    )
    .expect("the call goes on after the restart");
    assert_eq!(a.eval("ferroturnCall.errors"), serde_json::json!([]));
    assert_eq!(b.eval("ferroturnCall.errors"), serde_json::json!([]));

    // Hanging up tells the other page, which can take a new call.
    a.click("#hangup");
    b.wait_until(
        "ferroturnCall.signaling.startsWith('peer left')",
        Duration::from_secs(5),
    )
    .expect("peer left shown");
    eprintln!(
        "call test: connected after {connected:?}, total {:?}",
        started.elapsed()
    );
}

/// Wait (at most 10 s) until `expr` holds on page `s`; its value, else a
/// panic with `what` and the page's view of member `peer`.
fn wait_for_link(s: &browser::webdriver::Session<'_>, peer: u64, expr: &str, what: &str) -> Value {
    s.wait_until(expr, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "{what}: {}",
                s.eval(&format!("JSON.stringify(ferroturnCall.peers[{peer}])"))
            )
        })
}

/// What each page sends each other member, and in what order.
const MESH_MESSAGES: usize = 10;

#[test]
fn four_call_pages_make_a_full_mesh_through_the_relay() {
    let started = Instant::now();
    let dir = TempDir::new("mesh");
    // Four pages from one address, each with a UDP and a TCP allocation
    // per member: 24 for the one REST user.
    let config = DemoConfig {
        allocations_per_user: 32,
        ..DemoConfig::loopback()
    };
    let demo = Demo::start(&Net::Host, config, dir.path());
    let (lo, hi) = demo.config.relay_ports;
    let driver = Driver::start_on_free_port(Net::Host, dir.path());
    let pages: Vec<_> = ["m0", "m1", "m2", "m3"]
        .iter()
        .map(|n| driver.session(n))
        .collect();
    let url = demo.url("/?room=mesh-test&relay=1");
    for s in &pages {
        s.goto(&url);
        s.wait_until("window.ferroturnCall", Duration::from_secs(10))
            .expect("page script loaded");
    }
    // Join one after the other without waiting: every newcomer and every
    // member it joins start negotiating at once.
    for s in &pages {
        s.click("#join");
    }
    let mut ids = Vec::new();
    for s in &pages {
        let id = s
            .wait_until("ferroturnCall.id", Duration::from_secs(10))
            .expect("joined");
        ids.push(id.as_u64().unwrap());
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 4, "four distinct peer ids: {ids:?}");
    let open3 = "Object.values(ferroturnCall.peers).filter((p) => p.channelOpen).length === 3";
    for s in &pages {
        if s.wait_until(open3, Duration::from_secs(30)).is_none() {
            for p in &pages {
                eprintln!(
                    "page state: {}\npage log:\n{}",
                    p.eval("JSON.stringify(ferroturnCall.peers)"),
                    p.text("#log")
                );
            }
            panic!("not every channel opened")
        }
    }
    let connected = started.elapsed();

    // Every page sends MESH_MESSAGES to each other member; each receives
    // exactly those, in order, from each.
    for (s, me) in pages.iter().zip(&ids) {
        for k in 0..MESH_MESSAGES {
            for to in ids.iter().filter(|&&i| i != *me) {
                let sent = s.eval(&format!("ferroturnCall.sayTo({to}, '{me}>{to}#{k}')"));
                assert_eq!(sent, true, "{me} to {to}");
            }
        }
    }
    for (s, me) in pages.iter().zip(&ids) {
        for from in ids.iter().filter(|&&i| i != *me) {
            let expr = format!(
                "ferroturnCall.peers[{from}].received.length >= {MESH_MESSAGES} && ferroturnCall.peers[{from}].received"
            );
            let got = wait_for_link(s, *from, &expr, &format!("{me} did not hear {from}"));
            let want: Vec<String> = (0..MESH_MESSAGES)
                .map(|k| format!("{from}>{me}#{k}"))
                .collect();
            let got: Vec<String> = serde_json::from_value(got).unwrap();
            assert_eq!(got, want, "at {me} from {from}");
        }
        let total = s.eval("ferroturnCall.received.length");
        assert_eq!(
            total,
            3 * MESH_MESSAGES as u64,
            "nothing else arrived at {me}"
        );
    }

    // getStats(): each end of each of the six pairs uses relay candidates
    // on this server, and its tile says so.
    let mut pairs = std::collections::BTreeSet::new();
    let mut collisions = 0;
    for (s, me) in pages.iter().zip(&ids) {
        for other in ids.iter().filter(|&&i| i != *me) {
            let expr = format!(
                "(p => p && p.pair && p.pair.local.type === 'relay' && p.pair.remote.type === 'relay' && p.pair)(ferroturnCall.peers[{other}])"
            );
            let pair = wait_for_link(s, *other, &expr, &format!("no relay pair {me}-{other}"));
            for side in ["local", "remote"] {
                assert_eq!(pair[side]["address"], "127.0.0.1", "{pair}");
                let port = pair[side]["port"].as_u64().unwrap();
                assert!((lo as u64..=hi as u64).contains(&port), "{pair}");
            }
            assert_eq!(
                s.eval(&format!("ferroturnCall.peers[{other}].connectionState")),
                "connected"
            );
            assert_eq!(s.text(&format!("#tile-{other} .path")), "relay");
            // The tile's bitrate, from two getStats() a second apart.
            let rate = wait_for_link(
                s,
                *other,
                &format!("ferroturnCall.peers[{other}].bitrate"),
                &format!("no bitrate {me}-{other}"),
            );
            assert!(rate["send"].is_u64() && rate["receive"].is_u64(), "{rate}");
            let shown = s.text(&format!("#tile-{other} .bitrate"));
            assert!(
                shown.contains("kbit/s out") && shown.contains("kbit/s in"),
                "{shown}"
            );
            pairs.insert((*me.min(other), *me.max(other)));
        }
        assert_eq!(s.eval("document.querySelectorAll('.tile').length"), 3);
        collisions += s.eval("ferroturnCall.collisions").as_u64().unwrap();
        let errors = s.eval("ferroturnCall.errors");
        assert_eq!(errors, serde_json::json!([]), "at {me}");
    }
    assert_eq!(pairs.len(), 6, "{pairs:?}");
    // Both ends of every pair offer at once: offers did cross, and every
    // pair still connected.
    assert!(collisions > 0, "no offers crossed: glare was not exercised");

    // A member hangs up: the other three drop its tile and keep their
    // links to each other.
    pages[0].click("#hangup");
    for s in &pages[1..] {
        s.wait_until(
            "Object.keys(ferroturnCall.peers).length === 2 && document.querySelectorAll('.tile').length === 2",
            Duration::from_secs(5),
        )
        .expect("the leaver's tile goes");
        assert_eq!(s.eval(open3.replace("=== 3", "=== 2").as_str()), true);
    }
    assert_eq!(
        pages[1].eval(&format!("ferroturnCall.sayTo({}, 'still here')", ids[2])),
        true
    );
    pages[2]
        .wait_until(
            &format!(
                "ferroturnCall.peers[{}].received.includes('still here')",
                ids[1]
            ),
            Duration::from_secs(5),
        )
        .expect("the rest of the mesh carries on");
    eprintln!(
        "mesh test: 6 pairs connected after {connected:?} ({collisions} offer collisions settled), total {:?}",
        started.elapsed()
    );
}

/// The classic tutorial's client, as it is written there: a WebSocket to
/// `/signal` without any join, `{event, data}` messages, and a data channel
/// created up front. `HOST` is replaced by the demo's address. Only the
/// URL differs from the tutorial's (`/signal` on the demo's port).
const TUTORIAL_PAGE: &str = include_str!("browser/tutorial.html");

/// Serve `page` on a port of its own (another origin than the demo's) to
/// at most `requests` requests; its address.
fn serve_page(page: String, requests: usize) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(requests) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let (status, body) = if head.starts_with(b"GET / ") {
                ("200 OK", page.as_str())
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn the_tutorial_client_opens_a_data_channel_through_the_demo() {
    let started = Instant::now();
    let dir = TempDir::new("tutorial");
    let config = DemoConfig::loopback();
    let page = TUTORIAL_PAGE.replace("HOST", &config.http.to_string());
    let site = serve_page(page, 20);
    let origin = format!("http://{site}");
    let demo = Demo::start_with(
        &Net::Host,
        config,
        dir.path(),
        &format!("allowed_origins = [{origin:?}]"),
    );
    let driver = Driver::start_on_free_port(Net::Host, dir.path());
    let a = driver.session("tutorial-a");
    let b = driver.session("tutorial-b");
    // Record what arrives on any channel, the page's own or announced.
    let record = "window.got = []; \
        const hear = (ch) => ch.addEventListener('message', (e) => got.push(e.data)); \
        hear(dataChannel); \
        peerConnection.addEventListener('datachannel', (e) => hear(e.channel)); \
        return true;";
    for s in [&a, &b] {
        s.goto(&format!("{origin}/"));
        s.wait_until(
            "typeof peerConnection !== 'undefined' && peerConnection && conn.readyState === 1",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| {
            panic!(
                "the tutorial page did not connect; log:\n{}",
                demo.log_text()
            )
        });
        assert_eq!(s.exec(record, serde_json::json!([])).unwrap(), true);
    }
    // As the tutorial says: call createOffer() on one side.
    a.eval("(createOffer(), true)");
    for s in [&a, &b] {
        s.wait_until("dataChannel.readyState === 'open'", Duration::from_secs(20))
            .unwrap_or_else(|| {
                panic!(
                    "no data channel: {}; log:\n{}",
                    s.eval("peerConnection.connectionState"),
                    demo.log_text()
                )
            });
    }
    // The tutorial's sendMessage() sends the input's text on dataChannel.
    for (s, text) in [(&a, "hello from a"), (&b, "hello from b")] {
        s.eval(&format!(
            "(document.getElementById('messageInput').value = '{text}', sendMessage(), true)"
        ));
    }
    for (s, want) in [(&a, "hello from b"), (&b, "hello from a")] {
        s.wait_until(&format!("got.includes('{want}')"), Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{want} did not arrive: {}", s.eval("JSON.stringify(got)")));
    }
    eprintln!("tutorial test took {:?}", started.elapsed());
}
