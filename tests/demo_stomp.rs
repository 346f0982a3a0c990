//! STOMP on `ferroturn demo`'s `/stomp`, with the clients apps use, from
//! npm under Node (`@stomp/stompjs` 7.5.0's `Client` and `stompjs` 2.3.3's
//! `Stomp.over`, both over the `ws` package; tests/js/stomp_*.js): each
//! connects, subscribes to a topic, sends and receives; three join a
//! room and one signals another by peer id, which only the addressee gets,
//! on `/user/queue/signal`; heart-beats keep an idle session open past
//! twice the (shortened) interval. A raw WebSocket client checks the
//! subprotocol negotiation, that a session which stops sending is closed,
//! and the hostile inputs: a malformed frame and an oversized one (ERROR
//! and close), a flood from one session (it is slowed and told) and a
//! signal to another room's member (an error to the sender): each gets
//! its answer while two members of a room go on signaling undisturbed.
//!
//! The same clients then run over SockJS at `/ws` (sockjs-client 1.6.1 as
//! their socket), with each SockJS transport forced in turn.
//!
//! The Node clients are installed by tests/run.sh (`npm ci` in tests/js,
//! versions pinned by its package-lock.json).

mod browser;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use browser::ws::frame::{self as websocket, Message, Reader};
use browser::ws::raw_head;
use browser::{Demo, DemoConfig, Net, TempDir};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The server's heart-beat offer in these tests, milliseconds.
const HEARTBEAT_MS: u64 = 300;
const WAIT: Duration = Duration::from_secs(5);
const MASK: [u8; 4] = [1, 2, 3, 4];

fn start(tag: &str, keys: &str) -> (TempDir, Demo) {
    let dir = TempDir::new(tag);
    let demo = Demo::start_with(&Net::Host, DemoConfig::loopback(), dir.path(), keys);
    (dir, demo)
}

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Run `node SCRIPT URL ARGS…` in tests/js (at most 30 s) and return the
/// JSON line it printed.
fn node(script: &str, url: &str, args: &[&str]) -> Value {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/@stomp/stompjs").is_dir()
            && dir.join("node_modules/stompjs").is_dir(),
        "the npm clients are missing: run `npm ci` in tests/js (tests/run.sh does)"
    );
    // Tests run in parallel and run the same scripts: a number of its own
    // per run keeps their output files apart.
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = std::env::temp_dir().join(format!(
        "stomp-{}-{run}-{script}-{}.out",
        std::process::id(),
        args.join("-")
    ));
    let err_path = out_path.with_extension("err");
    let mut child = Command::new("node")
        .arg(script)
        .arg(url)
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("node (Node.js 20) on PATH");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    match status {
        Some(s) if s.success() => {}
        other => panic!("node {script} {args:?}: {other:?}\nstdout: {out}\nstderr: {err}"),
    }
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("node {script}: {e}: {out:?}"))
}

#[test]
fn npm_clients_connect_subscribe_send_receive_and_signal_in_a_room() {
    let (_dir, demo) = start("stomp-npm", &format!("stomp_heartbeat = {HEARTBEAT_MS}"));
    let url = format!("ws://{}/stomp", demo.config.http);
    let idle_ms = (5 * HEARTBEAT_MS).to_string();
    let hb = HEARTBEAT_MS.to_string();
    for (script, version) in [("stomp_v7.js", "1.2"), ("stomp_v2.js", "1.1")] {
        let r = node(script, &url, &["pubsub"]);
        assert_eq!(r["version"], version, "{script}: {r}");
        assert_eq!(r["first"], "hello", "{script}: {r}");
        assert_eq!(r["contentType"], "text/plain", "{script}: {r}");
        assert!(
            r["destination"]
                .as_str()
                .unwrap()
                .starts_with("/topic/pubsub-")
        );
        // 20000 bytes: stompjs 2.3 sent it in two WebSocket messages.
        assert_eq!(r["secondLength"], 20000, "{script}: {r}");

        let r = node(script, &url, &["room"]);
        let ids: Vec<u64> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let (a, b) = (ids[0], ids[1]);
        assert_eq!(r["bPeers"], json!([a]), "{script}: {r}");
        assert_eq!(r["seenByA"], json!({"type": "peer-joined", "from": b}));
        assert_eq!(
            r["signal"],
            json!({"type": "offer", "sdp": "v=0\r\ns=stomp\r\n", "from": a, "to": b}),
            "{script}: {r}"
        );
        assert_eq!(r["from"], a.to_string());
        assert_eq!(r["error"], "unknown-peer", "{script}: {r}");
        // Nothing reached the sender, the third member, or anyone's
        // error queue but the sender's.
        assert_eq!(r["strays"], 0, "{script}: {r}");

        // Idle for five intervals, more than twice the agreed one: the
        // heart-beats both ways keep it open.
        let r = node(script, &url, &["idle", &hb, &idle_ms]);
        assert_eq!(r["open"], true, "{script}: {r}");
        assert_eq!(r["body"], "still here", "{script}: {r}");
    }
    let log = demo.log_text();
    assert!(!log.contains("heart-beat timeout"), "{log}");
}

/// The same npm clients over SockJS at `/ws` (sockjs-client 1.6.1 as their
/// socket), each SockJS transport forced in turn: STOMP over every way in
/// that `new SockJS('/ws')` may pick.
#[test]
fn npm_clients_over_each_sockjs_transport() {
    let (_dir, demo) = start("stomp-sockjs", &format!("stomp_heartbeat = {HEARTBEAT_MS}"));
    let idle_ms = (5 * HEARTBEAT_MS).to_string();
    let hb = HEARTBEAT_MS.to_string();
    for transport in ["websocket", "xhr-streaming", "xhr-polling", "eventsource"] {
        let url = format!("sockjs+{transport}:http://{}/ws", demo.config.http);
        for (script, version) in [("stomp_v7.js", "1.2"), ("stomp_v2.js", "1.1")] {
            let what = format!("{script} over {transport}");
            let r = node(script, &url, &["pubsub"]);
            assert_eq!(r["version"], version, "{what}: {r}");
            assert_eq!(r["first"], "hello", "{what}: {r}");
            assert_eq!(r["secondLength"], 20000, "{what}: {r}");

            let r = node(script, &url, &["room"]);
            let ids: Vec<u64> = r["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let (a, b) = (ids[0], ids[1]);
            assert_eq!(r["bPeers"], json!([a]), "{what}: {r}");
            assert_eq!(
                r["signal"],
                json!({"type": "offer", "sdp": "v=0\r\ns=stomp\r\n", "from": a, "to": b}),
                "{what}: {r}"
            );
            assert_eq!(r["error"], "unknown-peer", "{what}: {r}");
            assert_eq!(r["strays"], 0, "{what}: {r}");

            // Heart-beats at 300 ms keep an idle session open for 1.5 s.
            let r = node(script, &url, &["idle", &hb, &idle_ms]);
            assert_eq!(r["open"], true, "{what}: {r}");
            assert_eq!(r["body"], "still here", "{what}: {r}");
        }
    }
    let log = demo.log_text();
    assert!(!log.contains("heart-beat timeout"), "{log}");
}

/// A STOMP client over a raw WebSocket, reading one frame per message.
struct Raw {
    reader: Reader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// A frame as the test reads it: command, headers (first wins), body.
#[derive(Debug)]
struct Got {
    command: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Open `/stomp` offering `protocols`; the response head too.
async fn open(
    addr: SocketAddr,
    protocols: Option<&str>,
    origin: Option<&str>,
) -> (String, Option<Raw>) {
    let mut head = format!(
        "GET /stomp HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        head += &format!("Sec-WebSocket-Protocol: {p}\r\n");
    }
    if let Some(o) = origin {
        head += &format!("Origin: {o}\r\n");
    }
    head += "\r\n";
    let (resp, rest, stream) = raw_head(addr, &head).await;
    if !resp.starts_with("HTTP/1.1 101 ") {
        return (resp, None);
    }
    let (rd, writer) = stream.into_split();
    let raw = Raw {
        reader: Reader::client(rd, rest, 1 << 20),
        writer,
    };
    (resp, Some(raw))
}

/// The value of header `name` in a response head.
fn head_value(resp: &str, name: &str) -> Option<String> {
    resp.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

impl Raw {
    /// Open `/stomp` and CONNECT with 1.2 and `heart_beat`; the peer id.
    async fn connect(addr: SocketAddr, heart_beat: &str) -> (Raw, u64) {
        let (resp, raw) = open(addr, Some("v12.stomp"), None).await;
        let mut raw = raw.unwrap_or_else(|| panic!("upgrade refused: {resp}"));
        raw.send(&format!(
            "CONNECT\naccept-version:1.2\nhost:demo\nheart-beat:{heart_beat}\n\n\0"
        ))
        .await;
        let f = raw.frame().await;
        assert_eq!(f.command, "CONNECTED", "{f:?}");
        assert_eq!(f.header("version"), Some("1.2"));
        let id = f.header("user-name").unwrap().parse().unwrap();
        (raw, id)
    }

    /// Connect, subscribe to the room's events, the signal and error
    /// queues, join `room`; the peer id and the ids already there.
    async fn member(addr: SocketAddr, room: &str) -> (Raw, u64, Vec<u64>) {
        let (mut raw, id) = Raw::connect(addr, "0,0").await;
        raw.send(&format!(
            "SUBSCRIBE\nid:events\ndestination:/topic/room/{room}\n\n\0SUBSCRIBE\nid:signal\ndestination:/user/queue/signal\n\n\0SUBSCRIBE\nid:errors\ndestination:/user/queue/errors\n\n\0SEND\ndestination:/app/room/{room}/join\n\n\0"
        ))
        .await;
        let v = raw.frame().await.json();
        assert_eq!(v["type"], "joined", "{v}");
        assert_eq!(v["id"], id);
        let peers = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        (raw, id, peers)
    }

    async fn send(&mut self, text: &str) {
        self.send_raw(&websocket::encode(
            websocket::TEXT,
            text.as_bytes(),
            Some(MASK),
        ))
        .await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("send");
    }

    async fn signal(&mut self, room: &str, to: u64, sdp: &str) {
        let body = json!({"type": "offer", "sdp": sdp}).to_string();
        self.send(&format!(
            "SEND\ndestination:/app/room/{room}/signal\nto:{to}\ncontent-type:application/json\ncontent-length:{}\n\n{body}\0",
            body.len()
        ))
        .await;
    }

    /// The next message: a frame, or `None` for a heart-beat.
    async fn message(&mut self) -> Result<Option<Got>, Option<u16>> {
        loop {
            match tokio::time::timeout(WAIT, self.reader.next())
                .await
                .expect("a message within 5 s")
            {
                Ok(Message::Text(t)) => return Ok(parse(&t)),
                Ok(Message::Close(code)) => return Err(code),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_)) => continue,
                Err(_) => return Err(None),
            }
        }
    }

    /// The next frame, skipping heart-beats.
    async fn frame(&mut self) -> Got {
        loop {
            match self.message().await {
                Ok(Some(f)) => return f,
                Ok(None) => continue,
                Err(code) => panic!("closed ({code:?}) while a frame was expected"),
            }
        }
    }

    /// The next frame must be an ERROR, then the close: its `message`
    /// header and the close code.
    async fn fault(&mut self) -> (String, Option<u16>) {
        let f = self.frame().await;
        assert_eq!(f.command, "ERROR", "{f:?}");
        assert!(!f.body.is_empty(), "{f:?}");
        let code = loop {
            match self.message().await {
                Ok(None) => continue,
                Ok(Some(f)) => panic!("a frame after ERROR: {f:?}"),
                Err(code) => break code,
            }
        };
        (f.header("message").unwrap_or("").to_owned(), code)
    }

    /// The next frame must be an error MESSAGE with `code`.
    async fn error(&mut self, code: &str) -> String {
        let f = self.frame().await;
        assert_eq!(f.header("destination"), Some("/user/queue/errors"), "{f:?}");
        let v = f.json();
        assert_eq!(v["code"], code, "{v}");
        v["message"].as_str().unwrap().to_owned()
    }

    /// The next signal, skipping (and counting) those from `skip`.
    async fn signal_from(&mut self, from: u64, skip: Option<u64>) -> (Value, usize) {
        let mut skipped = 0;
        loop {
            let f = self.frame().await;
            assert_eq!(f.header("destination"), Some("/user/queue/signal"), "{f:?}");
            let sender: u64 = f.header("from").unwrap().parse().unwrap();
            if Some(sender) == skip {
                skipped += 1;
                continue;
            }
            assert_eq!(sender, from, "{f:?}");
            return (f.json(), skipped);
        }
    }

    /// Nothing but heart-beats for `d`.
    async fn quiet(&mut self, d: Duration) {
        if let Ok(m) = tokio::time::timeout(d, self.reader.next()).await {
            match m {
                Ok(Message::Text(t)) if parse(&t).is_none() => {}
                other => panic!("expected nothing, got {other:?}"),
            }
        }
    }
}

/// One frame from the server (one per message), `None` for a heart-beat.
fn parse(text: &str) -> Option<Got> {
    let text = text.trim_start_matches(['\n', '\r']);
    if text.is_empty() {
        return None;
    }
    let (head, rest) = text.split_once("\n\n").expect("a frame head");
    let mut lines = head.lines();
    let command = lines.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("name:value");
            (n.to_owned(), v.to_owned())
        })
        .collect();
    let body = match headers.iter().find(|(n, _)| n == "content-length") {
        Some((_, n)) => rest[..n.parse::<usize>().unwrap()].to_owned(),
        None => rest.trim_end_matches('\0').to_owned(),
    };
    Some(Got {
        command,
        headers,
        body,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocols_origins_and_a_silent_session_is_closed() {
    let (_dir, demo) = start("stomp-silent", &format!("stomp_heartbeat = {HEARTBEAT_MS}"));
    let addr = demo.config.http;
    // The subprotocol is the first the server knows of those offered;
    // none offered, none answered.
    for (offered, chosen) in [
        (Some("v12.stomp, v11.stomp, v10.stomp"), Some("v12.stomp")),
        (Some("v10.stomp"), Some("v10.stomp")),
        (Some("mqtt, v11.stomp"), Some("v11.stomp")),
        (None, None),
    ] {
        let (resp, raw) = open(addr, offered, None).await;
        assert!(raw.is_some(), "{resp}");
        assert_eq!(
            head_value(&resp, "sec-websocket-protocol").as_deref(),
            chosen,
            "{resp}"
        );
    }
    // Another site's page is refused, as on /signal.
    let (resp, raw) = open(addr, Some("v12.stomp"), Some("http://evil.example")).await;
    assert!(raw.is_none() && resp.starts_with("HTTP/1.1 403 "), "{resp}");
    let (resp, raw) = open(addr, None, Some(&format!("http://{addr}"))).await;
    assert!(raw.is_some(), "{resp}");

    // Heart-beats agreed at 300 ms each way: the server's EOLs arrive,
    // and a client that stops sending is closed after twice 300 ms.
    let (mut raw, _) = Raw::connect(addr, &format!("{HEARTBEAT_MS},{HEARTBEAT_MS}")).await;
    let start = Instant::now();
    let mut beats = 0;
    let (message, code) = loop {
        match raw.message().await {
            Ok(None) => beats += 1,
            Ok(Some(f)) => {
                assert_eq!(f.command, "ERROR", "{f:?}");
                let code = loop {
                    match raw.message().await {
                        Ok(None) => continue,
                        Ok(Some(f)) => panic!("a frame after ERROR: {f:?}"),
                        Err(code) => break code,
                    }
                };
                break (f.header("message").unwrap().to_owned(), code);
            }
            Err(code) => panic!("closed without ERROR: {code:?}"),
        }
    };
    let silent = start.elapsed();
    assert_eq!(message, "heart-beat timeout");
    assert_eq!(code, Some(1001));
    assert!(beats >= 1, "{beats} heart-beats before the close");
    assert!(
        silent >= Duration::from_millis(2 * HEARTBEAT_MS),
        "{silent:?}"
    );

    // A client that sends EOLs stays open past that.
    let (mut raw, _) = Raw::connect(addr, &format!("{HEARTBEAT_MS},0")).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS / 2)).await;
        raw.send("\n").await;
    }
    raw.send("SEND\ndestination:/topic/x\nreceipt:alive\n\n\0")
        .await;
    let f = raw.frame().await;
    assert_eq!(
        (f.command.as_str(), f.header("receipt-id")),
        ("RECEIPT", Some("alive"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_their_answer_and_the_room_carries_on() {
    let (_dir, demo) = start("stomp-hostile", "");
    let addr = demo.config.http;
    let (mut b, bid, _) = Raw::member(addr, "calm").await;
    let (mut c, cid, peers) = Raw::member(addr, "calm").await;
    assert_eq!(peers, [bid]);
    assert_eq!(
        b.frame().await.json(),
        json!({"type": "peer-joined", "from": cid})
    );
    let mut round = 0;
    // The room works: c signals b, b answers c.
    let mut carries_on = async |b: &mut Raw, c: &mut Raw, skip: Option<u64>| -> usize {
        round += 1;
        c.signal("calm", bid, &format!("v=0\r\ns=c{round}\r\n"))
            .await;
        let (v, skipped) = b.signal_from(cid, skip).await;
        assert_eq!(v["sdp"], format!("v=0\r\ns=c{round}\r\n"));
        b.signal("calm", cid, &format!("v=0\r\ns=b{round}\r\n"))
            .await;
        let (v, _) = c.signal_from(bid, None).await;
        assert_eq!(v["sdp"], format!("v=0\r\ns=b{round}\r\n"));
        skipped
    };
    carries_on(&mut b, &mut c, None).await;

    // 1. A malformed frame (a header without a colon): ERROR, close.
    let (mut h, _, _) = Raw::member(addr, "calm").await;
    for m in [&mut b, &mut c] {
        assert_eq!(m.frame().await.json()["type"], "peer-joined");
    }
    h.send("SEND\ndestination /app/room/calm/signal\n\n\0")
        .await;
    let (message, code) = h.fault().await;
    assert_eq!((message.as_str(), code), ("malformed frame", Some(1008)));
    for m in [&mut b, &mut c] {
        assert_eq!(m.frame().await.json()["type"], "peer-left");
    }
    carries_on(&mut b, &mut c, None).await;

    // 2. A frame over 64 KiB (in one WebSocket message under the
    // transport's limit): ERROR, close 1009.
    let (mut h, _) = Raw::connect(addr, "0,0").await;
    let body = "x".repeat(70 * 1024);
    h.send(&format!("SEND\ndestination:/topic/big\n\n{body}\0"))
        .await;
    let (message, code) = h.fault().await;
    assert_eq!((message.as_str(), code), ("frame too large", Some(1009)));
    // And one announced by content-length, sent in pieces.
    let (mut h, _) = Raw::connect(addr, "0,0").await;
    h.send("SEND\ndestination:/topic/big\ncontent-length:80000\n\n")
        .await;
    let (message, _) = h.fault().await;
    assert_eq!(message, "frame too large");
    carries_on(&mut b, &mut c, None).await;

    // 3. A flood from one member: 600 signals to b at once. The rate
    // limit drops the excess and tells the sender (after, perhaps,
    // peer-busy for those b's outbox had no room for); nobody is closed.
    let (mut h, hid, _) = Raw::member(addr, "calm").await;
    for m in [&mut b, &mut c] {
        assert_eq!(m.frame().await.json()["type"], "peer-joined");
    }
    let offer = json!({"type": "offer", "sdp": "v=0\r\ns=flood\r\n"}).to_string();
    let one = format!(
        "SEND\ndestination:/app/room/calm/signal\nto:{bid}\ncontent-length:{}\n\n{offer}\0",
        offer.len()
    );
    let burst = one.repeat(600);
    h.send(&burst).await;
    let text = loop {
        let f = h.frame().await;
        assert_eq!(f.header("destination"), Some("/user/queue/errors"), "{f:?}");
        let v = f.json();
        match v["code"].as_str() {
            Some("peer-busy") => continue,
            Some("rate-limited") => break v["message"].as_str().unwrap().to_owned(),
            _ => panic!("{v}"),
        }
    };
    assert!(text.contains("too many messages"), "{text}");
    // b got at most the burst (200) of them, c none; b's may still come
    // after c's next signal (two senders' frames reach b in no set order).
    let mut skipped = carries_on(&mut b, &mut c, Some(hid)).await;
    // The flooder is still connected, and answered once its budget
    // refills (50 messages a second).
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.send("SEND\ndestination:/topic/x\nreceipt:after-flood\n\n\0")
        .await;
    loop {
        let f = h.frame().await;
        if f.command == "RECEIPT" {
            assert_eq!(f.header("receipt-id"), Some("after-flood"));
            break;
        }
    }
    drop(h);
    loop {
        let f = b.frame().await;
        if f.header("from").and_then(|s| s.parse().ok()) == Some(hid) {
            skipped += 1;
            continue;
        }
        assert_eq!(f.json()["type"], "peer-left", "{f:?}");
        break;
    }
    assert!((1..=200).contains(&skipped), "{skipped}");
    assert_eq!(c.frame().await.json()["type"], "peer-left");

    // 4. A signal to another room's member, and to an unknown
    // destination: an error to the sender alone.
    let (mut h, _, _) = Raw::member(addr, "elsewhere").await;
    h.signal("elsewhere", bid, "v=0\r\n").await;
    let text = h.error("unknown-peer").await;
    assert!(text.contains(&bid.to_string()), "{text}");
    h.signal("calm", bid, "v=0\r\n").await;
    h.error("not-in-room").await;
    h.send("SEND\ndestination:/queue/anything\n\nx\0").await;
    h.error("unknown-destination").await;
    b.quiet(Duration::from_millis(300)).await;
    c.quiet(Duration::from_millis(300)).await;
    carries_on(&mut b, &mut c, None).await;
}
