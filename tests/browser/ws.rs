//! A WebSocket client for the signaling tests, on ferroturn's own frame
//! codec (whose encoding is checked against RFC 6455's examples in its unit
//! tests) with the client-side rules: frames masked, server frames not.

use std::net::SocketAddr;
use std::time::Duration;

use ferroturn::demo::websocket::{self, Message, Reader};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// How long a client waits for a message it expects.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Client {
    reader: Reader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// Send a raw HTTP request head to `addr` and return the response head
/// and the bytes after it.
pub async fn raw_head(addr: SocketAddr, head: &str) -> (String, Vec<u8>, TcpStream) {
    raw_head_on(TcpStream::connect(addr).await.expect("connect"), head).await
}

/// [`raw_head`] on a connected stream.
pub async fn raw_head_on(mut s: TcpStream, head: &str) -> (String, Vec<u8>, TcpStream) {
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(RECV_TIMEOUT, s.read(&mut chunk))
            .await
            .expect("response head in time")
            .unwrap();
        if n == 0 {
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    (String::from_utf8_lossy(&buf).into_owned(), rest, s)
}

impl Client {
    /// Open `/signal` on `addr` (with an Origin of that address, as a page
    /// served there would send).
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_on(addr, TcpStream::connect(addr).await.expect("connect")).await
    }

    /// [`Client::connect`] over `stream`, already connected to `addr`
    /// (from a chosen source address, with small buffers, ...).
    pub async fn connect_on(addr: SocketAddr, stream: TcpStream) -> Client {
        let head = format!(
            "GET /signal HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let (resp, rest, stream) = raw_head_on(stream, &head).await;
        assert!(resp.starts_with("HTTP/1.1 101 "), "upgrade refused: {resp}");
        let accept = websocket::accept_key(KEY);
        assert!(
            resp.contains(&format!("Sec-WebSocket-Accept: {accept}\r\n")),
            "wrong accept key: {resp}"
        );
        let (rd, writer) = stream.into_split();
        Client {
            reader: Reader::client(rd, rest, 1 << 20),
            writer,
        }
    }

    /// Send raw bytes (a hand-made frame).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("send");
    }

    /// Send a text message.
    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(&websocket::encode(
            websocket::TEXT,
            text.as_bytes(),
            Some(MASK),
        ))
        .await;
    }

    /// Send a JSON value as text.
    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    /// The next message, within [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Message {
        tokio::time::timeout(RECV_TIMEOUT, self.reader.next())
            .await
            .expect("a message within 5 s")
            .expect("a well-formed message")
    }

    /// The next message, or what ended the connection (no time limit).
    pub async fn recv_raw(&mut self) -> Result<Message, websocket::Error> {
        self.reader.next().await
    }

    /// The next message, which must be JSON text.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Message::Text(t) => serde_json::from_str(&t).expect("JSON from the server"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next message must be `{"type":"error","code":code,...}`; its text.
    pub async fn expect_error(&mut self, code: &str) -> String {
        let v = self.recv_json().await;
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], code, "{v}");
        let text = v["message"].as_str().expect("a message").to_owned();
        assert!(!text.is_empty());
        text
    }

    /// Nothing arrives for `d` (and the connection stays open).
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(m) = tokio::time::timeout(d, self.reader.next()).await {
            panic!("expected nothing, got {m:?}");
        }
    }

    /// Read until the server closes: the close code it sent, if any.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(RECV_TIMEOUT, self.reader.next())
                .await
                .expect("close within 5 s")
            {
                Ok(Message::Close(code)) => return code,
                Ok(_) => continue,
                Err(websocket::Error::Closed) => return None,
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    /// Close the TCP connection without a close frame (a crashed browser).
    pub async fn drop_connection(self) {
        let Client { reader, mut writer } = self;
        let _ = writer.shutdown().await;
        drop(reader);
        drop(writer);
    }
}
