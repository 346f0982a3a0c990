//! The demo's pages in headless Chromium (driven through chromedriver)
//! against a `ferroturn demo` on 127.0.0.1:
//! - the trickle-ICE page gathers a `srflx` and a `relay` candidate with the
//!   credentials `/ice-servers` minted, and a 401 error and no relay
//!   candidate with a wrong password;
//! - two call pages meet in a room through `/signal`, connect with "relay
//!   only", exchange 50 data-channel messages each way, and `getStats()`
//!   reports a relay/relay selected pair.

mod browser;

use std::time::{Duration, Instant};

use browser::webdriver::Driver;
use browser::{Demo, DemoConfig, Net, TempDir, free_port};
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
    let driver = Driver::start(Net::Host, free_port(), dir.path());
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
    let driver = Driver::start(Net::Host, free_port(), dir.path());
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
        "ferroturnCall.signaling === 'waiting for peer'",
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
        assert_eq!(s.text("#pair-local td:nth-child(2)"), "relay");
        assert_eq!(s.eval("ferroturnCall.connectionState"), "connected");
    }

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
