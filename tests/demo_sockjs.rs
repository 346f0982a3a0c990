//! The demo's SockJS endpoint (`src/demo/sockjs`), served in-process by
//! the demo's HTTP stack (`http::serve`) on a loopback port under `/ws`,
//! with an echo protocol behind it: `sockjs-client` 1.6.1 under Node
//! (`tests/js/sockjs_echo.js`, installed by `npm ci` in tests/js) over
//! each transport forced in turn, and a raw HTTP client for what the
//! client library does not show (caps, bad bodies, concurrent receivers,
//! framing details).
//!
//! Everything talks to 127.0.0.0/8; every wait is bounded; servers and
//! Node processes end with their test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use ferroturn::demo::session::{Outgoing, Session};
use ferroturn::demo::sockjs::{self, Handler, Settings};
use ferroturn::http::{self, Caps, Listener};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const TRANSPORTS: [&str; 4] = ["websocket", "xhr-streaming", "xhr-polling", "eventsource"];

/// The echo protocol: each message back as it came; `close` closes the
/// session with `c[3000,"Go away!"]`. `live` counts the sessions whose
/// protocol still runs (it ends when the transport ends the session).
fn echo(live: Arc<AtomicUsize>) -> Handler {
    Arc::new(move |mut s: Session| {
        let live = live.clone();
        Box::pin(async move {
            live.fetch_add(1, Ordering::SeqCst);
            while let Some(m) = s.incoming.recv().await {
                let out = if m == "close" {
                    Outgoing::Close {
                        code: 3000,
                        reason: "Go away!".into(),
                    }
                } else {
                    Outgoing::Text(m)
                };
                if s.outgoing.send(out).await.is_err() {
                    break;
                }
            }
            live.fetch_sub(1, Ordering::SeqCst);
        })
    })
}

struct Server {
    addr: SocketAddr,
    live: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(settings: Settings) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let live = Arc::new(AtomicUsize::new(0));
        // Mounted as the demo will: the other pages under the listeners'
        // common limits (4 KiB bodies), SockJS nested beside them with its
        // own.
        let pages = http::limits(Router::new().fallback(|| async { "a page" }));
        let router = pages.nest("/ws", sockjs::router(settings, echo(live.clone())));
        let caps = Caps {
            total: 512,
            per_peer: 256,
        };
        let task = tokio::spawn(http::serve(
            Listener::Tcp(listener),
            "sockjs-test",
            caps,
            None,
            router,
        ));
        Server { addr, live, task }
    }

    fn url(&self) -> String {
        format!("http://{}/ws", self.addr)
    }

    /// Wait until `n` protocols run, at most `within`.
    async fn wait_live(&self, n: usize, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.live.load(Ordering::SeqCst) == n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.live.load(Ordering::SeqCst) == n
    }
}

fn quick(heartbeat_ms: u64, delay_ms: u64) -> Settings {
    Settings {
        heartbeat: Duration::from_millis(heartbeat_ms),
        disconnect_delay: Duration::from_millis(delay_ms),
        ..Settings::default()
    }
}

fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        dir.join("node_modules/sockjs-client").is_dir(),
        "sockjs-client is not installed: run `npm ci --ignore-scripts` in tests/js (tests/run.sh does)"
    );
    dir
}

/// Run `sockjs_echo.js` and return the JSON line it prints.
async fn node(url: &str, transport: &str, mode: &str, idle_ms: u64) -> Value {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("sockjs_echo.js")
        .arg(url)
        .arg(transport)
        .arg(mode)
        .arg(idle_ms.to_string())
        .current_dir(js_dir())
        .env("NODE_ENV", "production")
        .kill_on_drop(true);
    let limit = Duration::from_millis(45_000 + idle_ms);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .expect("node finishes in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no output from node ({transport}, {mode}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A TCP connection to `to` from `from` (any port).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Send one request on `s` (the server answers one per connection).
async fn write_request(
    s: &mut TcpStream,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Read a whole answer (to the end of the connection) and take it apart,
/// undoing chunked coding.
async fn read_answer(s: &mut TcpStream) -> Answer {
    finish_answer(s, String::new()).await
}

/// [`read_answer`] of a connection of which `seen` was read already.
async fn finish_answer(s: &mut TcpStream, seen: String) -> Answer {
    let mut raw = seen.into_bytes();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a head");
    let status = head[9..12].parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Answer {
        status,
        head: head.to_owned(),
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    body
}

async fn request(
    from: [u8; 4],
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut s = connect_from(from, to).await;
    write_request(&mut s, to, method, path, headers, body).await;
    read_answer(&mut s).await
}

const LOCAL: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

async fn poll(to: SocketAddr, session: &str) -> Answer {
    request(
        LOCAL,
        to,
        "POST",
        &format!("/ws/000/{session}/xhr"),
        &[],
        b"",
    )
    .await
}

async fn send(to: SocketAddr, session: &str, body: &[u8]) -> Answer {
    request(
        LOCAL,
        to,
        "POST",
        &format!("/ws/000/{session}/xhr_send"),
        &[],
        body,
    )
    .await
}

/// Read from `s` until what came holds `needle`, at most `within`.
async fn read_until(s: &mut TcpStream, seen: &mut String, needle: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 8192];
    while !seen.contains(needle) {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => return false,
        }
    }
    true
}

/// `sockjs-client` connects, sends, gets each message back (escaped
/// characters included) and closes, over each transport forced in turn;
/// once the clients are gone, every session ends after the disconnect
/// delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_client_echoes_over_every_transport() {
    let server = Server::start(quick(25_000, 1000)).await;
    for t in TRANSPORTS {
        let r = node(&server.url(), t, "echo", 0).await;
        assert_eq!(r["ok"], true, "{t}: {r}");
        assert_eq!(r["used"], t, "{t}: {r}");
        assert_eq!(r["code"], 1000, "{t}: {r}");
        assert_eq!(r["received"][0], "hello", "{t}: {r}");
    }
    assert!(
        server.wait_live(0, Duration::from_secs(10)).await,
        "sessions left: {}",
        server.live.load(Ordering::SeqCst)
    );
}

/// Heartbeats keep a quiet session open past the disconnect delay (1 s)
/// on every transport: the client counts them and is still echoed after
/// 3.5 s of quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_session_open() {
    let server = Server::start(quick(700, 1000)).await;
    for t in TRANSPORTS {
        let r = node(&server.url(), t, "idle", 3500).await;
        eprintln!("{t}: {r}");
        assert_eq!(r["ok"], true, "{t}: {r}");
        let beats = r["heartbeats"].as_u64().unwrap();
        assert!(beats >= 2, "{t}: {beats} heartbeats in 3.5 s: {r}");
    }
}

/// The protocol closes the session: the client sees `c[3000,"Go away!"]`
/// as its close event, over each transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_closes_a_session() {
    let server = Server::start(quick(25_000, 1000)).await;
    for t in TRANSPORTS {
        let r = node(&server.url(), t, "close", 0).await;
        assert_eq!(r["ok"], true, "{t}: {r}");
        assert_eq!(r["code"], 3000, "{t}: {r}");
        assert_eq!(r["reason"], "Go away!", "{t}: {r}");
    }
}

/// A message over 64 KiB ends the session with 1009 on the WebSocket
/// transport. Over HTTP the `xhr_send` is answered 413 and the session's
/// receiver gets `c[1009,"Message too big"]`; the client closes on
/// whichever it sees first (its sender reports 1006 "Sending error … 413").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_client_oversized_message() {
    let server = Server::start(quick(25_000, 1000)).await;
    for t in TRANSPORTS {
        let r = node(&server.url(), t, "big", 0).await;
        eprintln!("{t}: {r}");
        assert_eq!(r["ok"], true, "{t}: {r}");
        let code = r["code"].as_u64().unwrap();
        if t == "websocket" {
            assert_eq!(code, 1009, "{t}: {r}");
            assert_eq!(r["reason"], "Message too big", "{t}: {r}");
        } else {
            assert!(code == 1009 || code == 1006, "{t}: {r}");
            let reason = r["reason"].as_str().unwrap();
            assert!(
                reason == "Message too big" || reason.contains("413"),
                "{t}: {r}"
            );
        }
        assert!(r["received"].as_array().unwrap().is_empty(), "{t}: {r}");
    }
    assert!(server.wait_live(0, Duration::from_secs(10)).await);
}

/// A session whose client stops asking (no receiving request) is closed
/// after the disconnect delay: its protocol ends, `xhr_send` gets 404, and
/// the id opens a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_a_receiver_is_closed_after_the_disconnect_delay() {
    let server = Server::start(quick(25_000, 1000)).await;
    let to = server.addr;
    assert_eq!(poll(to, "quiet").await.body, "o\n");
    assert_eq!(send(to, "quiet", br#"["a"]"#).await.status, 204);
    assert!(server.wait_live(1, Duration::from_secs(2)).await);
    let start = Instant::now();
    assert!(
        server.wait_live(0, Duration::from_secs(5)).await,
        "still open"
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(500), "closed after {took:?}");
    assert_eq!(send(to, "quiet", br#"["b"]"#).await.status, 404);
    assert_eq!(poll(to, "quiet").await.body, "o\n", "a new session");
}

/// At most 64 sessions per address: the 65th from 127.0.0.1 gets
/// `c[1013,"Too many sessions"]` (and so does its WebSocket), while
/// 127.0.0.2 opens one and is echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_65th_session_from_one_address_is_refused() {
    let server = Server::start(quick(25_000, 20_000)).await;
    let to = server.addr;
    for i in 0..sockjs::SESSIONS_PER_IP {
        let a = poll(to, &format!("s{i}")).await;
        assert_eq!(a.body, "o\n", "session {i}");
    }
    let refused = poll(to, "s64").await;
    assert_eq!(refused.status, 200);
    assert_eq!(refused.body, "c[1013,\"Too many sessions\"]\n");
    let r = node(&server.url(), "websocket", "echo", 0).await;
    assert_eq!(r["code"], 1013, "{r}");
    assert_eq!(r["reason"], "Too many sessions", "{r}");
    // Another address is served.
    let other = |method, path: &str, body: &'static [u8]| {
        let path = path.to_owned();
        async move { request(OTHER, to, method, &path, &[], body).await }
    };
    assert_eq!(other("POST", "/ws/1/x/xhr", b"").await.body, "o\n");
    assert_eq!(
        other("POST", "/ws/1/x/xhr_send", br#"["hi"]"#).await.status,
        204
    );
    assert_eq!(other("POST", "/ws/1/x/xhr", b"").await.body, "a[\"hi\"]\n");
    // A session belongs to its address: another gets 404 for its id.
    assert_eq!(
        other("POST", "/ws/000/s1/xhr_send", br#"["x"]"#)
            .await
            .status,
        404
    );
    assert_eq!(other("POST", "/ws/000/s1/xhr", b"").await.status, 404);
    assert_eq!(server.live.load(Ordering::SeqCst), 65);
}

/// Malformed and oversized `xhr_send` bodies get their answers; the
/// malformed ones change nothing, the oversized one closes its session
/// with 1009, and another session on the same server id is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_their_answers_and_spare_other_sessions() {
    let server = Server::start(quick(25_000, 5000)).await;
    let to = server.addr;
    assert_eq!(poll(to, "bad").await.body, "o\n");
    assert_eq!(poll(to, "good").await.body, "o\n");

    for (body, status, text) in [
        (&br#"["x"#[..], 500, "Broken JSON encoding."),
        (b"[1]", 500, "Broken JSON encoding."),
        (b"{\"a\":1}", 500, "Broken JSON encoding."),
        (b"", 500, "Payload expected."),
    ] {
        let a = send(to, "bad", body).await;
        assert_eq!(a.status, status, "{body:?}");
        assert!(a.body.contains(text), "{body:?}: {}", a.body);
    }
    assert_eq!(send(to, "bad", br#"["still"]"#).await.status, 204);
    assert_eq!(poll(to, "bad").await.body, "a[\"still\"]\n");

    let big = format!("[\"{}\"]", "z".repeat(sockjs::MAX_MESSAGE));
    let a = send(to, "bad", big.as_bytes()).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(poll(to, "bad").await.body, "c[1009,\"Message too big\"]\n");
    // Closed: it keeps answering its close frame.
    assert_eq!(poll(to, "bad").await.body, "c[1009,\"Message too big\"]\n");

    assert_eq!(send(to, "good", br#"["fine"]"#).await.status, 204);
    assert_eq!(poll(to, "good").await.body, "a[\"fine\"]\n");
    assert_eq!(send(to, "nobody", br#"["x"]"#).await.status, 404);
    // A foreign page is refused; one listed or of the demo's own origin
    // is let in.
    let foreign = request(
        LOCAL,
        to,
        "POST",
        "/ws/000/good/xhr_send",
        &[("Origin", "http://evil.example")],
        br#"["x"]"#,
    )
    .await;
    assert_eq!(foreign.status, 403);
    let own = format!("http://{to}");
    let a = request(
        LOCAL,
        to,
        "POST",
        "/ws/000/good/xhr_send",
        &[("Origin", &own)],
        br#"["y"]"#,
    )
    .await;
    assert_eq!(a.status, 204);
    assert_eq!(a.header("access-control-allow-origin"), Some(own.as_str()));
    assert_eq!(poll(to, "good").await.body, "a[\"y\"]\n");
}

/// A second receiving request while one waits gets
/// `c[2010,"Another connection still open"]`; the first is left alone
/// and gets the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_receiver_is_turned_away() {
    let server = Server::start(quick(25_000, 5000)).await;
    let to = server.addr;
    assert_eq!(poll(to, "two").await.body, "o\n");
    let mut first = connect_from(LOCAL, to).await;
    write_request(&mut first, to, "POST", "/ws/000/two/xhr", &[], b"").await;
    let mut seen = String::new();
    assert!(read_until(&mut first, &mut seen, "\r\n\r\n", Duration::from_secs(5)).await);
    let second = poll(to, "two").await;
    assert_eq!(second.body, "c[2010,\"Another connection still open\"]\n");
    assert_eq!(send(to, "two", br#"["m"]"#).await.status, 204);
    assert!(
        read_until(&mut first, &mut seen, "a[\"m\"]\n", Duration::from_secs(5)).await,
        "{seen}"
    );
}

/// What the client library does not show: `/info`, the preflight, the
/// `xhr_streaming` prelude and its response limit, the `eventsource`
/// framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_details_over_raw_http() {
    let settings = Settings {
        response_limit: 4096,
        ..quick(25_000, 5000)
    };
    let server = Server::start(settings).await;
    let to = server.addr;

    let info = request(LOCAL, to, "GET", "/ws/info", &[], b"").await;
    assert_eq!(info.status, 200);
    let v: Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!(v["websocket"], true);
    assert_eq!(v["cookie_needed"], false);
    assert_eq!(v["origins"][0], "*:*");
    assert!(v["entropy"].is_u64());
    assert_eq!(info.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        info.header("cache-control"),
        Some("no-store, no-cache, must-revalidate, max-age=0")
    );
    let pre = request(
        LOCAL,
        to,
        "OPTIONS",
        "/ws/000/x/xhr_send",
        &[("Access-Control-Request-Headers", "content-type")],
        b"",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-methods"),
        Some("OPTIONS, POST")
    );
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(
        request(LOCAL, to, "GET", "/ws", &[], b"").await.body,
        "Welcome to SockJS!\n"
    );
    assert_eq!(
        request(LOCAL, to, "GET", "/ws/a/a./xhr", &[], b"")
            .await
            .status,
        404
    );
    // The pages keep their 4 KiB body cap; xhr_send takes up to 64 KiB.
    let five_k = vec![b'x'; 5000];
    assert_eq!(
        request(LOCAL, to, "POST", "/page", &[], &five_k)
            .await
            .status,
        413
    );
    assert_eq!(
        request(LOCAL, to, "GET", "/page", &[], b"").await.body,
        "a page"
    );
    assert_eq!(poll(to, "wide").await.body, "o\n");
    let wide = format!("[\"{}\"]", "w".repeat(60_000));
    assert_eq!(send(to, "wide", wide.as_bytes()).await.status, 204);
    assert_eq!(poll(to, "wide").await.body.len(), 60_000 + 6);
    assert_eq!(
        request(LOCAL, to, "GET", "/ws/000/x/xhr", &[], b"")
            .await
            .status,
        405
    );

    // xhr_streaming: the prelude, the open frame, a message, and the end
    // once 4096 bytes went out.
    let mut s = connect_from(LOCAL, to).await;
    write_request(&mut s, to, "POST", "/ws/000/stream/xhr_streaming", &[], b"").await;
    let mut seen = String::new();
    let prelude = format!("{}\n", "h".repeat(2048));
    assert!(
        read_until(&mut s, &mut seen, "o\n", Duration::from_secs(5)).await,
        "{seen}"
    );
    assert!(seen.contains(&prelude));
    let msg = "x".repeat(1000);
    for _ in 0..3 {
        let body = format!("[\"{msg}\"]");
        assert_eq!(send(to, "stream", body.as_bytes()).await.status, 204);
    }
    let a = finish_answer(&mut s, seen).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    assert!(a.body.starts_with(&prelude));
    assert!(
        a.body.ends_with("\"]\n"),
        "ended after the limit: {}",
        a.body.len()
    );
    // The rest waits for the next receiver.
    let mut total = a.body.matches(&msg).count();
    if total < 3 {
        total += poll(to, "stream").await.body.matches(&msg).count();
    }
    assert_eq!(total, 3);

    // eventsource: CRLF prelude, frames as events, escapes.
    let mut s = connect_from(LOCAL, to).await;
    write_request(&mut s, to, "GET", "/ws/000/events/eventsource", &[], b"").await;
    let mut seen = String::new();
    assert!(
        read_until(&mut s, &mut seen, "data: o\r\n\r\n", Duration::from_secs(5)).await,
        "{seen}"
    );
    assert!(seen.contains("text/event-stream"));
    let a = request(
        LOCAL,
        to,
        "POST",
        "/ws/000/events/xhr_send",
        &[],
        br#"["  \u0000\n\r 100%"]"#,
    )
    .await;
    assert_eq!(a.status, 204);
    assert!(
        read_until(
            &mut s,
            &mut seen,
            "data: a[\"  \\u0000\\n\\r 100%25\"]\r\n\r\n",
            Duration::from_secs(5)
        )
        .await,
        "{seen}"
    );
}

/// When the endpoint is full (4 sessions here), a newcomer from an address
/// holding fewer takes the place of the busiest address's oldest session,
/// which answers `c[1013,"Too many sessions"]`; once both hold as many,
/// the next is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_endpoint_makes_room_for_another_address() {
    let settings = Settings {
        max_sessions: 4,
        ..quick(25_000, 20_000)
    };
    let server = Server::start(settings).await;
    let to = server.addr;
    for i in 0..4 {
        assert_eq!(poll(to, &format!("f{i}")).await.body, "o\n");
    }
    assert_eq!(
        poll(to, "f4").await.body,
        "c[1013,\"Too many sessions\"]\n",
        "the busiest address itself gets no room"
    );
    let other = |path: String| async move { request(OTHER, to, "POST", &path, &[], b"").await };
    assert_eq!(other("/ws/0/g0/xhr".into()).await.body, "o\n");
    assert_eq!(other("/ws/0/g1/xhr".into()).await.body, "o\n");
    assert_eq!(
        other("/ws/0/g2/xhr".into()).await.body,
        "c[1013,\"Too many sessions\"]\n",
        "two each: nobody gives way"
    );
    // The two oldest of 127.0.0.1 were closed, the others live on.
    for (id, want) in [
        ("f0", "c[1013,\"Too many sessions\"]\n"),
        ("f1", "c[1013,\"Too many sessions\"]\n"),
    ] {
        assert_eq!(poll(to, id).await.body, want, "{id}");
    }
    assert_eq!(send(to, "f3", br#"["alive"]"#).await.status, 204);
    assert_eq!(poll(to, "f3").await.body, "a[\"alive\"]\n");
}

/// The plain WebSocket (`/ws/websocket`): messages go both ways as they
/// are, unframed, and the protocol's close arrives as the WebSocket's
/// close code and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_websocket_carries_messages_as_they_are() {
    let server = Server::start(quick(25_000, 1000)).await;
    let url = format!("ws://{}/ws/websocket", server.addr);
    let r = node_ws(&url, "plain").await;
    assert_eq!(r["received"][0], "hello", "{r}");
    assert_eq!(r["received"][1], r#"["not", "unwrapped"]"#, "{r}");
    assert_eq!(r["code"], 3000, "{r}");
    assert_eq!(r["reason"], "Go away!", "{r}");
    assert!(server.wait_live(0, Duration::from_secs(5)).await);
}

/// Run `sockjs_raw.js` and return the JSON line it prints.
async fn node_ws(url: &str, mode: &str) -> Value {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("sockjs_raw.js")
        .arg(url)
        .arg(mode)
        .current_dir(js_dir())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(45), cmd.output())
        .await
        .expect("node finishes in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("a line")).unwrap()
}

/// 1000 messages in one WebSocket frame, echoed: more than the protocol's
/// channels hold each way (64), so the reader waits for the protocol while
/// the writer drains it; all come back, then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_in_one_frame_comes_back_whole() {
    let server = Server::start(quick(25_000, 1000)).await;
    let url = format!("ws://{}/ws/000/burst/websocket", server.addr);
    let r = node_ws(&url, "flood").await;
    assert_eq!(r["echoed"], 1000, "{r}");
    assert_eq!(r["received"][0], "c[3000,\"Go away!\"]", "{r}");
    assert!(server.wait_live(0, Duration::from_secs(5)).await);
}

/// A client that sends but never takes its messages: past 256 KiB waiting
/// for it the session is closed with `c[1008,…]`; another session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed() {
    let server = Server::start(quick(25_000, 20_000)).await;
    let to = server.addr;
    assert_eq!(poll(to, "deaf").await.body, "o\n");
    assert_eq!(poll(to, "ok").await.body, "o\n");
    let chunk = format!("[\"{}\"]", "d".repeat(60_000));
    let mut refused = None;
    for i in 0..8 {
        let a = send(to, "deaf", chunk.as_bytes()).await;
        if a.status != 204 {
            refused = Some((i, a.status));
            break;
        }
        // Let the echo's answer reach the outbox before the next.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        refused.map(|r| r.1),
        Some(404),
        "sends after the close: {refused:?}"
    );
    assert!(refused.unwrap().0 >= 4, "{refused:?}");
    assert_eq!(
        poll(to, "deaf").await.body,
        "c[1008,\"Client does not read its messages\"]\n"
    );
    assert_eq!(send(to, "ok", br#"["fine"]"#).await.status, 204);
    assert_eq!(poll(to, "ok").await.body, "a[\"fine\"]\n");
}
