//! `ferroturn demo`'s HTTP endpoints and `/signal` over real sockets:
//! malformed JSON, oversized messages, unknown types, binary frames, a
//! third member and a broken frame each get a clear error, and the two
//! peers of the room never see any of it and go on relaying.

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

/// Two clients in room `room`, past the join handshake.
async fn pair(addr: SocketAddr, room: &str) -> (Client, Client) {
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    a.send_json(&json!({"type": "join", "room": room})).await;
    assert_eq!(
        a.recv_json().await,
        json!({"type": "joined", "room": room, "peers": 0})
    );
    b.send_json(&json!({"type": "join", "room": room})).await;
    assert_eq!(
        b.recv_json().await,
        json!({"type": "joined", "room": room, "peers": 1})
    );
    assert_eq!(a.recv_json().await, json!({"type": "peer-joined"}));
    (a, b)
}

/// `from` sends an offer; `to` gets exactly it, and `from` gets nothing.
async fn relays(from: &mut Client, to: &mut Client, tag: &str) {
    let offer = json!({"type": "offer", "sdp": format!("v=0\r\ns={tag}\r\n")});
    from.send_json(&offer).await;
    assert_eq!(to.recv_json().await, offer, "relayed unchanged");
    from.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_errors_and_never_disturb_the_room() {
    let (_dir, demo) = start("signal");
    let addr = demo.config.http;
    let (mut a, mut b) = pair(addr, "room-1").await;
    relays(&mut a, &mut b, "first").await;
    relays(&mut b, &mut a, "reply").await;

    // Malformed JSON, wrong schema, unknown types: an error to the sender.
    a.send_text("{\"type\": \"offer\", \"sdp\": ").await;
    assert!(a.expect_error("bad-json").await.contains("malformed JSON"));
    a.send_text("[\"offer\"]").await;
    a.expect_error("bad-message").await;
    a.send_json(&json!({"type": "offer", "sdp": 42})).await;
    a.expect_error("bad-message").await;
    a.send_json(&json!({"type": "offer", "sdp": "v=0", "evil": true}))
        .await;
    a.expect_error("bad-message").await;
    a.send_json(&json!({"type": "subscribe", "topic": "all"}))
        .await;
    let text = a.expect_error("unknown-type").await;
    assert!(text.contains("subscribe"), "{text}");

    // Oversized: one frame of 100 kB, then a message of 3 fragments.
    let big = json!({"type": "offer", "sdp": format!("v=0{}", "x".repeat(100_000))});
    a.send_json(&big).await;
    let text = a.expect_error("too-large").await;
    assert!(text.contains("65536"), "{text}");
    let mask = Some([1, 2, 3, 4]);
    let part = vec![b'x'; 30_000];
    let mut frames = websocket::encode(websocket::TEXT, &part, mask);
    frames[0] &= 0x7F; // not FIN
    let mut middle = websocket::encode(0, &part, mask);
    middle[0] &= 0x7F;
    frames.extend(middle);
    frames.extend(websocket::encode(0, &part, mask));
    a.send_raw(&frames).await;
    a.expect_error("too-large").await;

    // Binary messages are refused.
    a.send_raw(&websocket::encode(websocket::BINARY, b"\x00\x01", mask))
        .await;
    a.expect_error("binary").await;

    // Pings are answered, and the connection goes on.
    a.send_raw(&websocket::encode(websocket::PING, b"hi", mask))
        .await;
    assert_eq!(a.recv().await, websocket::Message::Pong(b"hi".to_vec()));

    // None of that reached b, and the room still relays both ways.
    b.expect_silence(QUIET).await;
    relays(&mut a, &mut b, "after errors").await;
    relays(&mut b, &mut a, "still fine").await;

    // A third member: "room full"; the others hear nothing of it.
    let mut c = Client::connect(addr).await;
    c.send_json(&json!({"type": "join", "room": "room-1"}))
        .await;
    let text = c.expect_error("room-full").await;
    assert!(text.contains("room full"), "{text}");
    c.send_json(&json!({"type": "offer", "sdp": "v=0"})).await;
    c.expect_error("not-joined").await;
    a.expect_silence(QUIET).await;
    b.expect_silence(QUIET).await;
    // c can use another room.
    c.send_json(&json!({"type": "join", "room": "room-2"}))
        .await;
    assert_eq!(c.recv_json().await["type"], "joined");

    // A candidate and end-of-candidates pass, unchanged.
    let cand = json!({"type": "candidate", "candidate": {
        "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}});
    a.send_json(&cand).await;
    assert_eq!(b.recv_json().await, cand);
    a.send_json(&json!({"type": "candidate", "candidate": null}))
        .await;
    assert_eq!(
        b.recv_json().await,
        json!({"type": "candidate", "candidate": null})
    );

    // A message over the hard limit (128 KiB, twice the largest
    // accepted) is not read at all: an error, then close 1009; the other
    // member is told its peer left, and a new member takes the place.
    let (mut f, mut g) = pair(addr, "room-4").await;
    let over = json!({"type": "offer", "sdp": format!("v=0{}", "x".repeat(140_000))});
    f.send_json(&over).await;
    f.expect_error("too-large").await;
    // The rest of the message stays unread, so the close frame may be lost
    // to the reset that closing such a socket sends.
    let code = f.expect_close().await;
    assert!(matches!(code, Some(1009) | None), "{code:?}");
    assert_eq!(g.recv_json().await, json!({"type": "peer-left"}));
    let mut h = Client::connect(addr).await;
    h.send_json(&json!({"type": "join", "room": "room-4"}))
        .await;
    assert_eq!(h.recv_json().await["peers"], 1);
    assert_eq!(g.recv_json().await, json!({"type": "peer-joined"}));
    relays(&mut g, &mut h, "after the hard limit").await;

    // A frame announcing 1 TiB: an error, then the server closes with
    // 1009; b is told its peer left.
    let mut huge = vec![0x81, 0xFF];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    a.send_raw(&huge).await;
    a.expect_error("too-large").await;
    assert_eq!(a.expect_close().await, Some(1009));
    assert_eq!(b.recv_json().await, json!({"type": "peer-left"}));

    // The place is free again: c leaves room-2 and joins b.
    c.send_json(&json!({"type": "bye"})).await;
    c.send_json(&json!({"type": "join", "room": "room-1"}))
        .await;
    assert_eq!(c.recv_json().await["peers"], 1);
    assert_eq!(b.recv_json().await, json!({"type": "peer-joined"}));
    relays(&mut b, &mut c, "new peer").await;

    // Unmasked client frames break the protocol: close 1002, b hears
    // peer-left.
    c.send_raw(&websocket::encode(websocket::TEXT, b"{}", None))
        .await;
    assert_eq!(c.expect_close().await, Some(1002));
    assert_eq!(b.recv_json().await, json!({"type": "peer-left"}));

    // A peer whose connection just drops: the other hears peer-left.
    let (d, mut e) = pair(addr, "room-3").await;
    d.drop_connection().await;
    assert_eq!(e.recv_json().await, json!({"type": "peer-left"}));

    // A close frame is answered with a close frame.
    e.send_raw(&websocket::close_frame(1000, "bye", mask)).await;
    assert_eq!(e.expect_close().await, Some(1000));
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
