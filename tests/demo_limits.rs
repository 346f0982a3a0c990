//! The demo's limits over real sockets, each with the well-behaved peer
//! checked to keep working: a WebSocket that stays silent (no message, no
//! pong to the server's pings) is closed after `[demo] idle_timeout`; one
//! IP address holds at most `[demo] connections_per_ip` connections, idle
//! HTTP sockets making room for real requests; and a peer that does not
//! read is cut off once its outbox passes 256 KiB, while the other member of
//! its room only hears `peer-left`. A real browser's page, which answers
//! the server's pings by itself, stays connected through several timeouts.
//!
//! Everything talks to 127.0.0.0/8, and every loop is bounded in count and
//! time.

// The tests hold SERIAL across awaits on purpose: each test's runtime
// blocks its own thread, and the lock only keeps tests apart.
#![allow(clippy::await_holding_lock)]

mod browser;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use browser::webdriver::Driver;
use browser::ws::frame::{self as websocket, Message};
use browser::ws::{Client, raw_head_on};
use browser::{Demo, DemoConfig, Net, TempDir};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

const MASK: Option<[u8; 4]> = Some([9, 8, 7, 6]);

/// One test at a time: the browser's start-up must not compete with the
/// floods of the others for the two CPUs.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start(tag: &str, keys: &str) -> (TempDir, Demo) {
    let dir = TempDir::new(tag);
    let demo = Demo::start_with(&Net::Host, DemoConfig::loopback(), dir.path(), keys);
    (dir, demo)
}

/// A TCP connection to `to` from `from` (any port), with a receive buffer
/// of `rcvbuf` bytes if given.
async fn connect_from(from: [u8; 4], to: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), s.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Join `room`, where `peers` are already; the id the server gave.
async fn join(c: &mut Client, room: &str, peers: &[u64]) -> u64 {
    c.send_json(&json!({"type": "join", "room": room})).await;
    let v = c.recv_json().await;
    let id = v["id"].as_u64().expect("joined gives an id");
    assert_eq!(
        v,
        json!({"type": "joined", "room": room, "id": id, "peers": peers})
    );
    id
}

fn peer_joined(id: u64) -> Value {
    json!({"type": "peer-joined", "from": id})
}

fn peer_left(id: u64) -> Value {
    json!({"type": "peer-left", "from": id})
}

/// The next text message of `c`, answering pings on the way (as a browser
/// does); how many pings it answered.
async fn next_text(c: &mut Client) -> (Value, usize) {
    let mut pongs = 0;
    for _ in 0..100 {
        match c.recv().await {
            Message::Ping(p) => {
                c.send_raw(&websocket::encode(websocket::PONG, &p, MASK))
                    .await;
                pongs += 1;
            }
            Message::Text(t) => return (serde_json::from_str(&t).unwrap(), pongs),
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("100 pings and no text");
}

/// An offer from `a` (peer `ids.0`) to `b` (peer `ids.1`) and an answer
/// back, answering pings.
async fn relay_both_ways(a: &mut Client, b: &mut Client, ids: (u64, u64), tag: &str) {
    let (ia, ib) = ids;
    let sdp = format!("v=0\r\ns={tag}\r\n");
    a.send_json(&json!({"type": "offer", "to": ib, "sdp": sdp}))
        .await;
    assert_eq!(
        next_text(b).await.0,
        json!({"type": "offer", "from": ia, "to": ib, "sdp": sdp})
    );
    b.send_json(&json!({"type": "answer", "to": ia, "sdp": sdp}))
        .await;
    assert_eq!(
        next_text(a).await.0,
        json!({"type": "answer", "from": ib, "to": ia, "sdp": sdp})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_closed_and_a_live_one_stays() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const IDLE: Duration = Duration::from_secs(2);
    let (_dir, demo) = start("demo-idle", "idle_timeout = 2");
    let addr = demo.config.http;
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    let ia = join(&mut a, "idle", &[]).await;
    let ib = join(&mut b, "idle", &[ia]).await;
    let joined = Instant::now();
    assert_eq!(next_text(&mut a).await.0, peer_joined(ib));

    // b never answers: it gets pings, then a close frame "going away".
    let silent = tokio::spawn(async move {
        let mut pings = 0;
        for _ in 0..100 {
            match b.recv().await {
                Message::Ping(_) => pings += 1,
                Message::Close(code) => return (pings, code, joined.elapsed()),
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no close after 100 messages");
    });
    // a answers the pings: it hears peer-left, and only that.
    let (left, pongs) = next_text(&mut a).await;
    assert_eq!(left, peer_left(ib));
    let (pings, code, after) = silent.await.unwrap();
    assert!(pings >= 1, "the server pings a silent client first");
    assert_eq!(code, Some(websocket::close_code::GOING_AWAY));
    assert!(
        after >= IDLE,
        "closed after {after:?}, before the idle timeout"
    );
    assert!(after < IDLE * 3, "closed after {after:?}");
    eprintln!("a silent peer was closed {after:?} after it joined, after {pings} pings");

    // a lives on past several timeouts, as long as it answers pings, and
    // relays with a newcomer.
    let mut more = pongs;
    let until = Instant::now() + IDLE * 2;
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), a.recv()).await {
            Ok(Message::Ping(p)) => {
                a.send_raw(&websocket::encode(websocket::PONG, &p, MASK))
                    .await;
                more += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {}
        }
    }
    assert!(more >= 2, "{more} pings answered");
    let mut c = Client::connect(addr).await;
    let ic = join(&mut c, "idle", &[ia]).await;
    assert_eq!(next_text(&mut a).await.0, peer_joined(ic));
    relay_both_ways(&mut a, &mut c, (ia, ic), "after the timeout").await;
    assert!(demo.log_text().is_empty() || !demo.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_cap_and_idle_sockets_make_room() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, demo) = start("demo-cap", "connections_per_ip = 4");
    let addr = demo.config.http;
    let get = format!("GET /ice-servers HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // Four WebSockets from 127.0.0.1: the cap, all live.
    let mut ws = Vec::new();
    for _ in 0..4 {
        ws.push(Client::connect(addr).await);
    }
    // The oldest and the newest share a room.
    let i0 = join(&mut ws[0], "evict", &[]).await;
    let i3 = join(&mut ws[3], "evict", &[i0]).await;
    assert_eq!(next_text(&mut ws[0]).await.0, peer_joined(i3));
    // A fifth connection from there is let in and closes that address's
    // oldest connection, a WebSocket: an address competes with itself.
    let s = connect_from([127, 0, 0, 1], addr, None).await;
    let (resp, _, _) = raw_head_on(s, &get).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let mut oldest = ws.remove(0);
    let closed = tokio::time::timeout(Duration::from_secs(3), oldest.recv_raw()).await;
    assert!(
        matches!(closed, Ok(Ok(Message::Close(_))) | Ok(Err(_))),
        "the oldest WebSocket was not closed: {closed:?}"
    );
    // It left its room as a client that goes does: the other hears it.
    assert_eq!(next_text(&mut ws[2]).await.0, peer_left(i0));
    // Other addresses are not affected.
    let s = connect_from([127, 0, 0, 2], addr, None).await;
    let (resp, _, _) = raw_head_on(s, &get).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    // The other WebSockets still work.
    let (first, rest) = ws.split_at_mut(1);
    let i1 = join(&mut first[0], "cap", &[]).await;
    let i2 = join(&mut rest[0], "cap", &[i1]).await;
    assert_eq!(next_text(&mut first[0]).await.0, peer_joined(i2));
    relay_both_ways(&mut first[0], &mut rest[0], (i1, i2), "at the cap").await;

    // Twenty idle sockets from 127.0.0.3: a real request from there still
    // gets in (the oldest idle ones are closed to make room), and only the
    // cap's worth stay open.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect_from([127, 0, 0, 3], addr, None).await);
    }
    let s = connect_from([127, 0, 0, 3], addr, None).await;
    let (resp, _, _) = raw_head_on(s, &get).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let mut open = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await;
        if read.is_err() {
            open += 1;
        }
    }
    assert!(open <= 4, "{open} idle sockets of one address still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_is_cut_off_and_the_other_goes_on() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, demo) = start("demo-outbox", "");
    let addr = demo.config.http;
    let mut a = Client::connect(addr).await;
    // b reads nothing, on a small receive buffer so that the server's
    // socket fills soon.
    let stream = connect_from([127, 0, 0, 1], addr, Some(4096)).await;
    let mut b = Client::connect_on(addr, stream).await;
    let ia = join(&mut a, "outbox", &[]).await;
    let ib = join(&mut b, "outbox", &[ia]).await;
    assert_eq!(a.recv_json().await, peer_joined(ib));
    // Two more members, so that b's socket buffers fill three times as
    // fast (each sender's bytes are rate-limited).
    let mut c = Client::connect(addr).await;
    let ic = join(&mut c, "outbox", &[ia, ib]).await;
    assert_eq!(a.recv_json().await, peer_joined(ic));
    let mut d = Client::connect(addr).await;
    let id = join(&mut d, "outbox", &[ia, ib, ic]).await;
    assert_eq!(a.recv_json().await, peer_joined(id));
    assert_eq!(c.recv_json().await, peer_joined(id));
    let mut senders = [a, c, d];

    // a, c and d send offers of 60 kB to b until each hears peer-left.
    // Once b's outbox is full, their offers are dropped for b and they
    // hear peer-busy (and rate-limited past their bursts: 256 KiB, then
    // 64 KiB a second each); b, which reads nothing, is cut off once its
    // socket buffers are full and it has read nothing for the stall
    // timeout (3 s). At most 10000 rounds and 60 s.
    let offer = json!({"type": "offer", "to": ib, "sdp": format!("v=0\r\n{}", "a".repeat(60_000))});
    let stop = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let mut busy = 0;
    let mut left = [false; 3];
    while sent < 10_000 && left.contains(&false) && Instant::now() < stop {
        for (k, s) in senders.iter_mut().enumerate() {
            if left[k] {
                continue;
            }
            s.send_json(&offer).await;
            sent += 1;
            while let Ok(m) = tokio::time::timeout(Duration::from_millis(2), s.recv()).await {
                let Message::Text(t) = m else {
                    panic!("unexpected {m:?}")
                };
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["code"].as_str() {
                    Some("peer-busy") => busy += 1,
                    Some("rate-limited") => {}
                    _ => {
                        assert_eq!(v, peer_left(ib));
                        left[k] = true;
                        break;
                    }
                }
            }
        }
    }
    assert_eq!(left, [true; 3], "b was not cut off after {sent} offers");
    assert!(busy > 0, "the senders were never told b is busy");
    // Offers sent after b was cut name a peer no longer in the room: each
    // gets unknown-peer (or rate-limited, or peer-busy for one sent
    // before), and nothing else comes.
    let mut late = 0;
    for s in &mut senders {
        while let Ok(m) = tokio::time::timeout(Duration::from_millis(300), s.recv()).await {
            let Message::Text(t) = m else {
                panic!("unexpected {m:?}")
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            assert!(
                matches!(
                    v["code"].as_str(),
                    Some("unknown-peer" | "rate-limited" | "peer-busy")
                ),
                "{v}"
            );
            late += 1;
            assert!(late <= sent, "more errors than offers");
        }
    }
    eprintln!("b was cut off after {sent} offers of 60 kB ({busy} peer-busy)");
    assert!(
        demo.log_text().contains("does not read its messages"),
        "{}",
        demo.log_text()
    );

    // b's connection is closed: what it reads ends within 10 s (bounded in
    // messages too).
    let stop = Instant::now() + Duration::from_secs(10);
    let mut ended = false;
    for _ in 0..1000 {
        let Some(left) = stop.checked_duration_since(Instant::now()) else {
            break;
        };
        match tokio::time::timeout(left, b.recv_raw()).await {
            Ok(Ok(Message::Close(_))) | Ok(Err(_)) => {
                ended = true;
                break;
            }
            Ok(Ok(_)) => {}
            Err(_) => break,
        }
    }
    assert!(ended, "b's connection is still open");

    // The senders are undisturbed: a newcomer joins and relays both ways
    // with a and with d.
    let mut e = Client::connect(addr).await;
    let ie = join(&mut e, "outbox", &[ia, ic, id]).await;
    for s in &mut senders {
        assert_eq!(s.recv_json().await, peer_joined(ie));
    }
    let [a, _, d] = &mut senders;
    relay_both_ways(a, &mut e, (ia, ie), "after the cut").await;
    relay_both_ways(d, &mut e, (id, ie), "after the cut").await;
}

/// A slow loris (a request head a byte at a time) and a silent socket
/// are closed at the head deadline, while a page asked for meanwhile from
/// the same address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_or_silent_client_is_cut_at_the_head_deadline() {
    use tokio::io::AsyncWriteExt;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, demo) = start("demo-loris", "");
    let addr = demo.config.http;
    let deadline = ferroturn::http::HEAD_TIMEOUT;
    let start = Instant::now();
    let mut loris = connect_from([127, 0, 0, 5], addr, None).await;
    let mut silent = connect_from([127, 0, 0, 5], addr, None).await;
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".repeat(4);
    let mut cut = None;
    let mut served = false;
    // Bounded: 50 rounds of 200 ms.
    for round in 0..50 {
        if loris.write_all(&head[round..round + 1]).await.is_err() {
            cut = Some(start.elapsed());
            break;
        }
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), loris.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => {
                cut = Some(start.elapsed());
                break;
            }
            Ok(Ok(_)) => panic!("an answer to half a head"),
            Err(_) => {}
        }
        if round == 5 {
            let get = "GET /ice-servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            let s = connect_from([127, 0, 0, 5], addr, None).await;
            let (resp, _, _) = raw_head_on(s, get).await;
            assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
            served = true;
        }
    }
    let cut = cut.expect("the slow loris was cut off within 10 s");
    assert!(served);
    assert!(cut >= deadline, "cut after {cut:?}, before the deadline");
    assert!(
        cut <= deadline + Duration::from_secs(2),
        "cut after {cut:?}"
    );
    let mut b = [0u8; 1];
    let silent_end = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut b)).await;
    assert!(
        matches!(silent_end, Ok(Ok(0) | Err(_))),
        "the silent socket is still open: {silent_end:?}"
    );
    eprintln!("a slow loris was cut {cut:?} after it connected");
}

#[test]
fn a_browser_page_answers_the_pings_and_stays_in_its_room() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const IDLE: Duration = Duration::from_secs(2);
    let (dir, demo) = start("demo-idle-browser", "idle_timeout = 2");
    let driver = Driver::start_on_free_port(Net::Host, dir.path());
    let page = driver.session("idle");
    page.goto(&demo.url("/?room=idle-page"));
    page.wait_until("window.ferroturnCall", Duration::from_secs(10))
        .expect("page script loaded");
    page.click("#join");
    page.wait_until(
        "ferroturnCall.signaling === 'waiting for peers'",
        Duration::from_secs(10),
    )
    .expect("the page joined");
    // Three and a half timeouts with nothing to say: still connected (a
    // closed socket reads "closed (1001)").
    std::thread::sleep(IDLE * 7 / 2);
    assert_eq!(
        page.eval("ferroturnCall.signaling"),
        "waiting for peers",
        "{}",
        demo.log_text()
    );
    // And still in the room: a newcomer finds one peer there, and the page
    // sends it an offer.
    let page_id = page
        .eval("ferroturnCall.id")
        .as_u64()
        .expect("the page's id");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = Client::connect(demo.config.http).await;
        let ic = join(&mut c, "idle-page", &[page_id]).await;
        let offer = next_text(&mut c).await.0;
        assert_eq!(
            (&offer["type"], &offer["from"], &offer["to"]),
            (&json!("offer"), &json!(page_id), &json!(ic))
        );
    });
}
