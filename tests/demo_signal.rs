//! `ferroturn demo`'s HTTP endpoints and `/signal` over real sockets:
//! malformed JSON, oversized messages, unknown types, binary frames, a
//! member too many and a broken frame each get a clear error, and the
//! peers of the room never see any of it and go on relaying. In mesh rooms
//! messages reach only the member they name; one addressed to another
//! room's peer or to an unknown id, and a flood, get their answer while
//! the rest of the room carries on. Sessions outside rooms form the
//! tutorial's broadcast group (`{event, data}` to every other one),
//! bounded per address. Pages of origins in `[demo] allowed_origins` may
//! connect.

mod browser;

use std::net::SocketAddr;
use std::time::Duration;

use browser::ws::frame as websocket;
use browser::ws::{Client, raw_head};
use browser::{Demo, DemoConfig, Net, SECRET, STATIC_PASSWORD, TempDir, http_get, http_request};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(300);

fn start(tag: &str) -> (TempDir, Demo) {
    let dir = TempDir::new(tag);
    let demo = Demo::start(&Net::Host, DemoConfig::loopback(), dir.path());
    (dir, demo)
}

/// A signaling client and the peer id the server gave it.
struct Peer {
    c: Client,
    id: u64,
}

/// Connect and join `room`, where `members` are already (who each hear
/// `peer-joined`).
async fn member(addr: SocketAddr, room: &str, members: &mut [&mut Peer]) -> Peer {
    let mut c = Client::connect(addr).await;
    c.send_json(&json!({"type": "join", "room": room})).await;
    let v = c.recv_json().await;
    let id = v["id"].as_u64().expect("joined gives an id");
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    assert_eq!(
        v,
        json!({"type": "joined", "room": room, "id": id, "peers": ids})
    );
    for m in members.iter_mut() {
        assert_eq!(
            m.c.recv_json().await,
            json!({"type": "peer-joined", "from": id})
        );
    }
    Peer { c, id }
}

/// Two clients in room `room`, past the join handshake.
async fn pair(addr: SocketAddr, room: &str) -> (Peer, Peer) {
    let mut a = member(addr, room, &mut []).await;
    let b = member(addr, room, &mut [&mut a]).await;
    (a, b)
}

/// `from` sends an offer to `to`, which gets exactly it, marked with
/// both ids; `from` gets nothing.
async fn relays(from: &mut Peer, to: &mut Peer, tag: &str) {
    let sdp = format!("v=0\r\ns={tag}\r\n");
    from.c
        .send_json(&json!({"type": "offer", "to": to.id, "sdp": sdp}))
        .await;
    assert_eq!(
        to.c.recv_json().await,
        json!({"type": "offer", "from": from.id, "to": to.id, "sdp": sdp}),
        "relayed unchanged"
    );
    from.c.expect_silence(QUIET).await;
}

fn peer_left(p: &Peer) -> Value {
    json!({"type": "peer-left", "from": p.id})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_errors_and_never_disturb_the_room() {
    // Rooms of two, as the demo had before mesh rooms.
    let dir = TempDir::new("signal");
    let demo = Demo::start_with(
        &Net::Host,
        DemoConfig::loopback(),
        dir.path(),
        "room_size = 2",
    );
    let addr = demo.config.http;
    let (mut a, mut b) = pair(addr, "room-1").await;
    relays(&mut a, &mut b, "first").await;
    relays(&mut b, &mut a, "reply").await;

    // Malformed JSON, wrong schema, unknown types: an error to the sender.
    a.c.send_text("{\"type\": \"offer\", \"sdp\": ").await;
    assert!(
        a.c.expect_error("bad-json")
            .await
            .contains("malformed JSON")
    );
    a.c.send_text("[\"offer\"]").await;
    a.c.expect_error("bad-message").await;
    a.c.send_json(&json!({"type": "offer", "to": b.id, "sdp": 42}))
        .await;
    a.c.expect_error("bad-message").await;
    a.c.send_json(&json!({"type": "offer", "to": b.id, "sdp": "v=0", "evil": true}))
        .await;
    a.c.expect_error("bad-message").await;
    // No addressee.
    a.c.send_json(&json!({"type": "offer", "sdp": "v=0"})).await;
    a.c.expect_error("bad-message").await;
    a.c.send_json(&json!({"type": "subscribe", "topic": "all"}))
        .await;
    let text = a.c.expect_error("unknown-type").await;
    assert!(text.contains("subscribe"), "{text}");

    // Oversized: one frame of 100 kB, then a message of 3 fragments.
    let big = json!({"type": "offer", "to": b.id, "sdp": format!("v=0{}", "x".repeat(100_000))});
    a.c.send_json(&big).await;
    let text = a.c.expect_error("too-large").await;
    assert!(text.contains("65536"), "{text}");
    let mask = Some([1, 2, 3, 4]);
    let part = vec![b'x'; 30_000];
    let mut frames = websocket::encode(websocket::TEXT, &part, mask);
    frames[0] &= 0x7F; // not FIN
    let mut middle = websocket::encode(0, &part, mask);
    middle[0] &= 0x7F;
    frames.extend(middle);
    frames.extend(websocket::encode(0, &part, mask));
    a.c.send_raw(&frames).await;
    a.c.expect_error("too-large").await;

    // Binary messages are refused.
    a.c.send_raw(&websocket::encode(websocket::BINARY, b"\x00\x01", mask))
        .await;
    a.c.expect_error("binary").await;

    // Pings are answered, and the connection goes on.
    a.c.send_raw(&websocket::encode(websocket::PING, b"hi", mask))
        .await;
    assert_eq!(a.c.recv().await, websocket::Message::Pong(b"hi".to_vec()));

    // None of that reached b, and the room still relays both ways.
    b.c.expect_silence(QUIET).await;
    relays(&mut a, &mut b, "after errors").await;
    relays(&mut b, &mut a, "still fine").await;

    // A third member: "room full"; the others hear nothing of it.
    let mut c = Client::connect(addr).await;
    c.send_json(&json!({"type": "join", "room": "room-1"}))
        .await;
    let text = c.expect_error("room-full").await;
    assert!(
        text.contains("room full") && text.contains("2 peers"),
        "{text}"
    );
    c.send_json(&json!({"type": "offer", "to": a.id, "sdp": "v=0"}))
        .await;
    c.expect_error("not-joined").await;
    a.c.expect_silence(QUIET).await;
    b.c.expect_silence(QUIET).await;
    // c can use another room.
    c.send_json(&json!({"type": "join", "room": "room-2"}))
        .await;
    let joined = c.recv_json().await;
    assert_eq!(joined["type"], "joined");
    let mut c = Peer {
        id: joined["id"].as_u64().unwrap(),
        c,
    };

    // A candidate and end-of-candidates pass, unchanged.
    let cand = json!({
        "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"});
    a.c.send_json(&json!({"type": "candidate", "to": b.id, "candidate": cand}))
        .await;
    assert_eq!(
        b.c.recv_json().await,
        json!({"type": "candidate", "from": a.id, "to": b.id, "candidate": cand})
    );
    a.c.send_json(&json!({"type": "candidate", "to": b.id, "candidate": null}))
        .await;
    assert_eq!(
        b.c.recv_json().await,
        json!({"type": "candidate", "from": a.id, "to": b.id, "candidate": null})
    );

    // A message over the hard limit (128 KiB, twice the largest
    // accepted) is not read at all: an error, then close 1009; the other
    // member is told its peer left, and a new member takes the place.
    let (mut f, mut g) = pair(addr, "room-4").await;
    let over = json!({"type": "offer", "to": g.id, "sdp": format!("v=0{}", "x".repeat(140_000))});
    f.c.send_json(&over).await;
    f.c.expect_error("too-large").await;
    // The rest of the message stays unread, so the close frame may be lost
    // to the reset that closing such a socket sends.
    let code = f.c.expect_close().await;
    assert!(matches!(code, Some(1009) | None), "{code:?}");
    assert_eq!(g.c.recv_json().await, peer_left(&f));
    let mut h = member(addr, "room-4", &mut [&mut g]).await;
    relays(&mut g, &mut h, "after the hard limit").await;

    // A frame announcing 1 TiB: an error, then the server closes with
    // 1009; b is told its peer left.
    let mut huge = vec![0x81, 0xFF];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    a.c.send_raw(&huge).await;
    a.c.expect_error("too-large").await;
    assert_eq!(a.c.expect_close().await, Some(1009));
    assert_eq!(b.c.recv_json().await, peer_left(&a));

    // The place is free again: c leaves room-2 and joins b.
    c.c.send_json(&json!({"type": "bye"})).await;
    c.c.send_json(&json!({"type": "join", "room": "room-1"}))
        .await;
    assert_eq!(
        c.c.recv_json().await,
        json!({"type": "joined", "room": "room-1", "id": c.id, "peers": [b.id]})
    );
    assert_eq!(
        b.c.recv_json().await,
        json!({"type": "peer-joined", "from": c.id})
    );
    relays(&mut b, &mut c, "new peer").await;

    // Unmasked client frames break the protocol: close 1002, b hears
    // peer-left.
    c.c.send_raw(&websocket::encode(websocket::TEXT, b"{}", None))
        .await;
    assert_eq!(c.c.expect_close().await, Some(1002));
    assert_eq!(b.c.recv_json().await, peer_left(&c));

    // A peer whose connection just drops: the other hears peer-left.
    let (d, mut e) = pair(addr, "room-3").await;
    let gone = peer_left(&d);
    d.c.drop_connection().await;
    assert_eq!(e.c.recv_json().await, gone);

    // A close frame is answered with a close frame.
    e.c.send_raw(&websocket::close_frame(1000, "bye", mask))
        .await;
    assert_eq!(e.c.expect_close().await, Some(1000));
}

/// Receive text messages on `c` for `quiet` after the last one (at most
/// `max`): how many were offers from `from`, and the error codes.
async fn drain(c: &mut Client, from: u64, max: usize) -> (usize, Vec<String>) {
    let mut offers = 0;
    let mut errors = Vec::new();
    for _ in 0..max {
        let Ok(m) = tokio::time::timeout(QUIET, c.recv()).await else {
            return (offers, errors);
        };
        let websocket::Message::Text(t) = m else {
            panic!("unexpected {m:?}")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("offer") if v["from"] == from => offers += 1,
            Some("error") => errors.push(v["code"].as_str().unwrap().to_owned()),
            _ => panic!("unexpected {v}"),
        }
    }
    panic!("more than {max} messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_rooms_reach_only_the_member_addressed() {
    let (_dir, demo) = start("mesh");
    let addr = demo.config.http;
    // Four members (the default room size), each told of the ones after.
    let mut a = member(addr, "mesh", &mut []).await;
    let mut b = member(addr, "mesh", &mut [&mut a]).await;
    let mut c = member(addr, "mesh", &mut [&mut a, &mut b]).await;
    let mut d = member(addr, "mesh", &mut [&mut a, &mut b, &mut c]).await;
    // Each pair relays both ways, and nobody else hears it.
    let mut all = [&mut a, &mut b, &mut c, &mut d];
    for i in 0..4 {
        for j in 0..4 {
            if i == j {
                continue;
            }
            let (from, to) = if i < j {
                let (l, r) = all.split_at_mut(j);
                (&mut *l[i], &mut *r[0])
            } else {
                let (l, r) = all.split_at_mut(i);
                (&mut *r[0], &mut *l[j])
            };
            relays(from, to, &format!("{i}-{j}")).await;
        }
    }
    for p in all.iter_mut() {
        p.c.expect_silence(QUIET).await;
    }
    // A fifth: room full, for four.
    let mut e = Client::connect(addr).await;
    e.send_json(&json!({"type": "join", "room": "mesh"})).await;
    assert!(e.expect_error("room-full").await.contains("4 peers"));

    // Another room's peer, an id nobody has, and oneself: unknown-peer to
    // the sender only.
    let mut other = member(addr, "elsewhere", &mut []).await;
    for to in [other.id, 999_999, a.id] {
        a.c.send_json(&json!({"type": "offer", "to": to, "sdp": "v=0"}))
            .await;
        let text = a.c.expect_error("unknown-peer").await;
        assert!(text.contains(&to.to_string()), "{text}");
    }
    other.c.expect_silence(QUIET).await;
    for p in [&mut b, &mut c, &mut d] {
        p.c.expect_silence(QUIET).await;
    }

    // A flood: 1000 offers to b as fast as a can send. The first 200 pass
    // (the burst), then a is told it is rate-limited and the excess is
    // dropped; c and d hear nothing of it.
    let started = std::time::Instant::now();
    for k in 0..1000 {
        a.c.send_json(&json!({"type": "offer", "to": b.id, "sdp": format!("v=0\r\ns={k}\r\n")}))
            .await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (at_b, _) = drain(&mut b.c, a.id, 2000).await;
    let (_, errors) = drain(&mut a.c, a.id, 2000).await;
    eprintln!(
        "flood: 1000 offers in {elapsed:.2} s, {at_b} reached b, {} rate-limited errors",
        errors.len()
    );
    assert!(errors.iter().all(|e| e == "rate-limited"), "{errors:?}");
    assert!(!errors.is_empty(), "the flooder is told");
    // The burst and what the rate allows while the flood lasted (the
    // drains above add at most a few tenths of a second).
    assert!(at_b >= 200, "{at_b}");
    let allowed = 200.0 + 50.0 * (started.elapsed().as_secs_f64() + 1.0);
    assert!((at_b as f64) <= allowed, "{at_b} > {allowed}");
    c.c.expect_silence(QUIET).await;
    d.c.expect_silence(QUIET).await;
    // The rest of the room carries on at once, and a too after a second.
    relays(&mut c, &mut d, "during the penalty").await;
    relays(&mut b, &mut c, "b too").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    relays(&mut a, &mut d, "after the flood").await;

    // Oversized: an error to the sender, and the room carries on.
    let big = json!({"type": "offer", "to": b.id, "sdp": format!("v=0{}", "x".repeat(70_000))});
    d.c.send_json(&big).await;
    d.c.expect_error("too-large").await;
    b.c.expect_silence(QUIET).await;
    relays(&mut d, &mut b, "after the oversized one").await;

    // One leaves: the three others hear it, and only they.
    let gone = peer_left(&c);
    c.c.drop_connection().await;
    for p in [&mut a, &mut b, &mut d] {
        assert_eq!(p.c.recv_json().await, gone);
    }
    other.c.expect_silence(QUIET).await;
    relays(&mut a, &mut b, "after a leaves").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorials_group_passes_messages_to_every_other_session() {
    let (_dir, demo) = start("group");
    let addr = demo.config.http;
    // A room member: not in the group.
    let mut r = member(addr, "room", &mut []).await;
    // Three sessions that never join, as the tutorial's clients.
    let mut t = Vec::new();
    for _ in 0..3 {
        t.push(Client::connect(addr).await);
    }
    // The tutorial's messages reach every other session of the group,
    // exactly as sent, never the sender, never a room.
    let offer = r#"{"event":"offer","data":{"type":"offer","sdp":"v=0\r\n"}}"#;
    t[0].send_text(offer).await;
    for c in &mut t[1..] {
        assert_eq!(c.recv().await, websocket::Message::Text(offer.into()));
    }
    let cand = r#"{"event":"candidate","data":{"candidate":"candidate:1 1 udp 1 192.0.2.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}"#;
    t[1].send_text(cand).await;
    for i in [0, 2] {
        assert_eq!(t[i].recv().await, websocket::Message::Text(cand.into()));
    }
    for c in &mut t[..2] {
        c.expect_silence(QUIET).await;
    }
    r.c.expect_silence(QUIET).await;
    // A room member's {event, data}: an error to it; the group hears
    // nothing.
    r.c.send_text(offer).await;
    r.c.expect_error("in-room").await;
    // Bad tutorial messages: an error to the sender only.
    t[2].send_text(r#"{"event":"hello","data":1}"#).await;
    t[2].expect_error("unknown-type").await;
    t[2].send_text(r#"{"event":"offer"}"#).await;
    t[2].expect_error("bad-message").await;
    // The group holds at most 4 sessions of one address: a fourth joins
    // it, a fifth does not and is told so when it speaks.
    let mut fourth = Client::connect(addr).await;
    let mut fifth = Client::connect(addr).await;
    fifth.send_text(offer).await;
    let text = fifth.expect_error("group-full").await;
    assert!(text.contains("4 per address"), "{text}");
    for c in t.iter_mut() {
        c.expect_silence(QUIET).await;
    }
    t[2].send_text(offer).await;
    for c in t[..2].iter_mut().chain([&mut fourth]) {
        assert_eq!(c.recv().await, websocket::Message::Text(offer.into()));
    }
    fifth.expect_silence(QUIET).await;
    // A member that joins a room leaves the group; its place goes to the
    // next one that speaks.
    fourth
        .send_json(&json!({"type": "join", "room": "later"}))
        .await;
    assert_eq!(fourth.recv_json().await["type"], "joined");
    fifth.send_text(cand).await;
    for c in t.iter_mut() {
        assert_eq!(c.recv().await, websocket::Message::Text(cand.into()));
    }
    fourth.expect_silence(QUIET).await;
    r.c.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_may_connect_and_others_not() {
    let dir = TempDir::new("origins");
    let demo = Demo::start_with(
        &Net::Host,
        DemoConfig::loopback(),
        dir.path(),
        r#"allowed_origins = ["https://app.example:8443"]"#,
    );
    let addr = demo.config.http;
    let head = |origin: &str| {
        format!(
            "GET /signal HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
        )
    };
    for (origin, status) in [
        ("https://app.example:8443", "101"),
        ("https://APP.example:8443", "101"),
        (&format!("http://{addr}") as &str, "101"),
        ("http://app.example:8443", "403"),
        ("https://app.example", "403"),
        ("https://evil.example", "403"),
    ] {
        let (resp, _, _) = raw_head(addr, &head(origin)).await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status} ")),
            "{origin} -> {resp}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_is_checked() {
    let (_dir, demo) = start("handshake");
    let addr = demo.config.http;
    let base = format!(
        "GET /signal HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    );
    let cases = [
        // No WebSocket version 13.
        (
            format!("{base}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
            "426",
        ),
        // A key that is not 16 bytes of base64.
        (
            format!("{base}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n"),
            "400",
        ),
        // Another site's page.
        (
            format!(
                "{base}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://evil.example\r\n\r\n"
            ),
            "403",
        ),
        // A plain GET.
        (
            format!("GET /signal HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
            "426",
        ),
    ];
    for (head, status) in cases {
        let (resp, _, _) = raw_head(addr, &head).await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status} ")),
            "{head:?} -> {resp}"
        );
    }
}

#[test]
fn pages_and_ice_servers_are_served() {
    let (_dir, demo) = start("http");
    let addr = demo.config.http;
    let net = Net::Host;
    for (path, needle) in [
        ("/", "ferroturn call demo"),
        ("/trickle-ice", "Trickle ICE"),
        ("/call.js", "RTCPeerConnection"),
        ("/trickle-ice.js", "icecandidateerror"),
        ("/style.css", "font"),
    ] {
        let (status, body) = http_get(&net, addr, path).unwrap();
        assert_eq!(status, 200, "{path}");
        assert!(String::from_utf8_lossy(&body).contains(needle), "{path}");
    }
    assert_eq!(http_get(&net, addr, "/nope").unwrap().0, 404);
    assert_eq!(http_get(&net, addr, "/../etc/passwd").unwrap().0, 404);
    let post = http_request(&net, addr, "POST", "/", Some("x"), Duration::from_secs(5));
    assert_eq!(post.unwrap().0, 405);

    // /ice-servers: the STUN and TURN URIs of the listener, and REST
    // credentials from the first secret that expire in credential_ttl.
    let (status, body) = http_get(&net, addr, "/ice-servers").unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let listen = demo.config.listen;
    let servers = v["iceServers"].as_array().unwrap();
    assert_eq!(servers[0]["urls"], json!([format!("stun:{listen}")]));
    assert_eq!(
        servers[1]["urls"],
        json!([
            format!("turn:{listen}?transport=udp"),
            format!("turn:{listen}?transport=tcp")
        ])
    );
    let user = servers[1]["username"].as_str().unwrap();
    let (expiry, name) = user.split_once(':').unwrap();
    assert_eq!(
        name,
        ferroturn::demo::ice::visitor_name(SECRET, "127.0.0.1".parse().unwrap())
    );
    let expiry: u64 = expiry.parse().unwrap();
    assert_eq!(v["expires"], expiry);
    assert_eq!(v["ttl"], 600);
    assert_eq!(
        servers[1]["credential"],
        ferroturn::auth::rest_password(SECRET.as_bytes(), user)
    );
    // No static password of [auth] users reaches the page.
    assert!(!String::from_utf8_lossy(&body).contains(STATIC_PASSWORD));

    // A request head over 16 KiB: 431.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (resp, _, _) = rt.block_on(raw_head(addr, &head));
    assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    // 65 headers: 431; a 1 GB body announced: 413, without reading it; an
    // absolute URI: 400. The pages are still served.
    let headers = (0..64).map(|i| format!("X-{i}: 1\r\n")).collect::<String>();
    for (head, status) in [
        (format!("GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\n"), "431"),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n".to_owned(),
            "413",
        ),
        (
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "400",
        ),
    ] {
        let (resp, _, _) = rt.block_on(raw_head(addr, &head));
        assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
    }
    assert_eq!(http_get(&net, addr, "/").unwrap().0, 200);
}
