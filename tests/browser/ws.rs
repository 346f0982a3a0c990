//! A WebSocket client for the signaling tests, frame by frame (so that a
//! test can send broken frames and leave pings unanswered), on
//! tungstenite's frame codec with the client-side rules: frames masked,
//! server frames not.

use std::net::SocketAddr;
use std::time::Duration;

use frame::{Message, Reader};
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
        let accept = frame::accept_key(KEY);
        assert!(
            // Header names are case-insensitive (RFC 9110 §5.1), values not.
            resp.lines()
                .any(|l| l
                    .split_once(':')
                    .is_some_and(|(n, v)| n.eq_ignore_ascii_case("sec-websocket-accept")
                        && v.trim() == accept)),
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
        self.send_raw(&frame::encode(frame::TEXT, text.as_bytes(), Some(MASK)))
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
    pub async fn recv_raw(&mut self) -> Result<Message, frame::Error> {
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
                Err(frame::Error::Closed) => return None,
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

/// RFC 6455 frames as a client sends and reads them, on tungstenite's
/// `Frame` and `FrameHeader`.
pub mod frame {
    use std::io::Cursor;

    use base64::Engine as _;
    use tokio::io::{AsyncRead, AsyncReadExt};
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tungstenite::protocol::frame::{Frame, FrameHeader};

    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;

    /// Close codes (RFC 6455 §7.4.1).
    pub mod close_code {
        pub const GOING_AWAY: u16 = 1001;
    }

    /// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
    pub fn accept_key(key: &str) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(key.as_bytes());
        ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        base64::engine::general_purpose::STANDARD.encode(ctx.finish())
    }

    /// One frame with FIN set: `opcode` (0 for a continuation),
    /// `payload`, masked with `mask` if given.
    pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let header = FrameHeader {
            opcode: OpCode::from(opcode),
            mask,
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, payload.to_vec().into())
            .format(&mut out)
            .expect("a frame");
        out
    }

    /// A close frame with `code` and `reason`.
    pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        encode(CLOSE, &payload, mask)
    }

    /// A message from the server.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Message {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        /// The close code, if one was sent.
        Close(Option<u16>),
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum Error {
        /// The stream ended or failed.
        Closed,
        /// The server broke a framing rule.
        Protocol(String),
    }

    /// Reads the server's messages, reassembling fragments.
    pub struct Reader<R> {
        inner: R,
        buf: Vec<u8>,
        max_message: usize,
    }

    impl<R: AsyncRead + Unpin> Reader<R> {
        /// `leftover`: bytes read after the HTTP head.
        pub fn client(inner: R, leftover: Vec<u8>, max_message: usize) -> Reader<R> {
            Reader {
                inner,
                buf: leftover,
                max_message,
            }
        }

        async fn frame(&mut self) -> Result<(FrameHeader, Vec<u8>), Error> {
            loop {
                let mut c = Cursor::new(&self.buf[..]);
                match FrameHeader::parse(&mut c) {
                    Ok(Some((h, len))) => {
                        if len > self.max_message as u64 {
                            return Err(Error::Protocol(format!("a frame of {len} bytes")));
                        }
                        let start = c.position() as usize;
                        let end = start + len as usize;
                        if self.buf.len() >= end {
                            if h.mask.is_some() {
                                return Err(Error::Protocol("a masked server frame".into()));
                            }
                            let payload = self.buf[start..end].to_vec();
                            self.buf.drain(..end);
                            return Ok((h, payload));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Error::Protocol(e.to_string())),
                }
                let mut chunk = [0u8; 16 * 1024];
                match self.inner.read(&mut chunk).await {
                    Ok(0) | Err(_) => return Err(Error::Closed),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }

        /// The next message; control frames between fragments come first.
        pub async fn next(&mut self) -> Result<Message, Error> {
            let mut partial: Option<(Data, Vec<u8>)> = None;
            loop {
                let (h, payload) = self.frame().await?;
                match h.opcode {
                    OpCode::Control(c) => {
                        return Ok(match c {
                            Control::Close => Message::Close(
                                (payload.len() >= 2)
                                    .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                            ),
                            Control::Ping => Message::Ping(payload),
                            Control::Pong => Message::Pong(payload),
                            Control::Reserved(_) => {
                                return Err(Error::Protocol("a reserved opcode".into()));
                            }
                        });
                    }
                    OpCode::Data(d) => {
                        let (kind, mut acc) = match (d, partial.take()) {
                            (Data::Continue, Some(p)) => p,
                            (Data::Text | Data::Binary, None) => (d, Vec::new()),
                            _ => return Err(Error::Protocol("bad fragment".into())),
                        };
                        acc.extend_from_slice(&payload);
                        if !h.is_final {
                            partial = Some((kind, acc));
                            continue;
                        }
                        return match kind {
                            Data::Text => String::from_utf8(acc)
                                .map(Message::Text)
                                .map_err(|_| Error::Protocol("text not UTF-8".into())),
                            _ => Ok(Message::Binary(acc)),
                        };
                    }
                }
            }
        }
    }
}
