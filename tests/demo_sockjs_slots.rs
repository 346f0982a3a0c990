//! The demo's connection slots (`http::Slots`) and SockJS's `xhr_send`,
//! whose handler reads its body from the client: a connection that sends
//! an `xhr_send` head and then trickles (or withholds) its body must stay
//! a connection that makes room for others, not one marked busy (never
//! closed) for as long as the client likes. Else a few addresses that
//! hold such requests lock every visitor out of the demo.
//!
//! In-process server on a loopback port, raw HTTP clients; every wait is
//! bounded, and the server ends with the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ferroturn::demo::session::{Outgoing, Session};
use ferroturn::demo::sockjs::{self, Handler, Settings};
use ferroturn::http::{self, Caps, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connections one address may hold here.
const PER_PEER: usize = 4;

/// An echo protocol.
fn echo() -> Handler {
    Arc::new(|mut s: Session| {
        Box::pin(async move {
            while let Some(m) = s.incoming.recv().await {
                if s.outgoing.send(Outgoing::Text(m)).await.is_err() {
                    break;
                }
            }
        })
    })
}

/// The demo's mounting of SockJS, with a small cap per address.
async fn start() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pages = http::limits(Router::new().fallback(|| async { "a page" }));
    let router = pages.nest("/ws", sockjs::router(Settings::default(), echo()));
    let caps = Caps {
        total: 64,
        per_peer: PER_PEER,
    };
    let task = tokio::spawn(http::serve(
        Listener::Tcp(listener),
        "sockjs-slots-test",
        caps,
        None,
        router,
    ));
    (addr, task)
}

/// Send `head` (and no more) on a new connection.
async fn open(to: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// What the server answers on `s`, until it closes, at most 5 s.
async fn answer(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `answer` is a poll's 200 carrying the open frame (chunked).
fn is_open_frame(answer: &str) -> bool {
    answer.starts_with("HTTP/1.1 200") && answer.contains("\r\no\n")
}

fn poll_head(session: &str) -> String {
    format!("POST /ws/000/{session}/xhr HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
}

/// An address holds its cap of connections, each an `xhr_send` to its own
/// session whose body never comes: its next request (a poll) is still let
/// in, one of the withheld sends making room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xhr_sends_that_withhold_their_body_make_room() {
    let (to, server) = start().await;
    let opened = answer(open(to, &poll_head("held")).await).await;
    assert!(is_open_frame(&opened), "{opened:?}");
    let send_head =
        "POST /ws/000/held/xhr_send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n";
    let mut slow = Vec::new();
    for _ in 0..PER_PEER {
        slow.push(open(to, send_head).await);
    }
    // Their heads are read and their handlers wait for the bodies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = answer(open(to, &poll_head("newcomer")).await).await;
    server.abort();
    assert!(
        is_open_frame(&got),
        "a poll behind {PER_PEER} withheld xhr_send bodies got {got:?}"
    );
}
