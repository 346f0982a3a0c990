//! RFC 6455 WebSocket: the opening handshake's accept key, frame encoding,
//! and a message reader that reassembles fragments, answers nothing by
//! itself, and skips over messages larger than its limit instead of
//! buffering them.
//!
//! Both roles are here: the server reads masked frames and writes unmasked
//! ones; the tests' client does the opposite.

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Text frame opcode.
pub const TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const BINARY: u8 = 0x2;
/// Close frame opcode.
pub const CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const PING: u8 = 0x9;
/// Pong frame opcode.
pub const PONG: u8 = 0xA;
const CONTINUATION: u8 = 0x0;

/// Close codes (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Whether `key` is the base64 of 16 bytes, as RFC 6455 §4.1 requires.
pub fn valid_key(key: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .is_ok_and(|k| k.len() == 16)
}

/// One frame with FIN set: `opcode`, `payload`, masked with `mask` (clients
/// must mask, servers must not).
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A close frame with `code` and a short `reason`.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut r = reason;
    while r.len() > 123 {
        r = &r[..r.char_indices().last().map_or(0, |(i, _)| i)];
    }
    payload.extend_from_slice(r.as_bytes());
    encode(CLOSE, &payload, mask)
}

/// A message as the reader returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer's close code, if it sent one.
    Close(Option<u16>),
    /// A data message of this many bytes or more was skipped: over the limit.
    TooLarge(u64),
}

/// Errors after which the connection must be closed with
/// [`Error::close_code`].
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// The stream ended or failed.
    Closed,
    /// A framing rule was broken; the text says which.
    Protocol(&'static str),
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A frame longer than the hard limit: not even worth skipping.
    Huge(u64),
}

impl Error {
    /// The close code to send before closing.
    pub fn close_code(&self) -> u16 {
        match self {
            Error::Closed | Error::Protocol(_) => close_code::PROTOCOL_ERROR,
            Error::InvalidUtf8 => close_code::INVALID_DATA,
            Error::Huge(_) => close_code::TOO_BIG,
        }
    }
}

/// Reads messages from a stream.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Frames must be masked (server side) or must not be (client side).
    expect_masked: bool,
    /// Largest message returned; longer ones are skipped as [`Message::TooLarge`].
    max_message: usize,
    /// Longest frame skipped; longer ones are [`Error::Huge`].
    max_skip: u64,
    /// The data message being reassembled, kept across the control frames
    /// returned between its fragments: opcode and payload, `None` payload
    /// when it went over the limit and is being skipped.
    partial: Option<(u8, Option<Vec<u8>>)>,
    /// Bytes skipped of the message being skipped.
    skipped: u64,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A server-side reader: `leftover` are bytes read after the HTTP head.
    pub fn server(inner: R, leftover: Vec<u8>, max_message: usize) -> Reader<R> {
        Reader {
            inner,
            buf: leftover,
            expect_masked: true,
            max_message,
            max_skip: (max_message as u64).saturating_mul(16).max(1 << 20),
            partial: None,
            skipped: 0,
        }
    }

    /// A client-side reader (frames from the server are not masked).
    pub fn client(inner: R, leftover: Vec<u8>, max_message: usize) -> Reader<R> {
        Reader {
            expect_masked: false,
            ..Reader::server(inner, leftover, max_message)
        }
    }

    /// The next message; control frames between fragments come first.
    pub async fn next(&mut self) -> Result<Message, Error> {
        loop {
            let h = self.header().await?;
            if h.opcode >= 0x8 {
                if !h.fin || h.len > 125 {
                    return Err(Error::Protocol(
                        "control frame fragmented or over 125 bytes",
                    ));
                }
                let payload = self.payload(&h).await?;
                return Ok(match h.opcode {
                    CLOSE => Message::Close(
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                    ),
                    PING => Message::Ping(payload),
                    PONG => Message::Pong(payload),
                    _ => return Err(Error::Protocol("unknown control opcode")),
                });
            }
            let opcode = match (h.opcode, &self.partial) {
                (CONTINUATION, Some((op, _))) => *op,
                (CONTINUATION, None) => return Err(Error::Protocol("continuation without start")),
                (TEXT | BINARY, None) => h.opcode,
                (TEXT | BINARY, Some(_)) => {
                    return Err(Error::Protocol("new message inside a fragmented one"));
                }
                _ => return Err(Error::Protocol("unknown data opcode")),
            };
            let (_, acc) = self.partial.get_or_insert((opcode, Some(Vec::new())));
            let have = acc.as_ref().map_or(0, |a| a.len() as u64);
            if acc.is_some() && have + h.len <= self.max_message as u64 {
                let payload = self.payload(&h).await?;
                if let Some((_, Some(acc))) = &mut self.partial {
                    acc.extend_from_slice(&payload);
                }
            } else {
                if h.len > self.max_skip {
                    return Err(Error::Huge(have + self.skipped + h.len));
                }
                self.skipped += have + h.len;
                *acc = None;
                self.skip(h.len).await?;
            }
            if h.fin {
                let (op, acc) = self.partial.take().unwrap();
                let skipped = std::mem::take(&mut self.skipped);
                return match acc {
                    None => Ok(Message::TooLarge(skipped)),
                    Some(data) if op == TEXT => String::from_utf8(data)
                        .map(Message::Text)
                        .map_err(|_| Error::InvalidUtf8),
                    Some(data) => Ok(Message::Binary(data)),
                };
            }
        }
    }

    async fn header(&mut self) -> Result<Header, Error> {
        self.fill(2).await?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        if b0 & 0x70 != 0 {
            return Err(Error::Protocol("reserved bits set"));
        }
        let masked = b1 & 0x80 != 0;
        if masked != self.expect_masked {
            return Err(Error::Protocol(if self.expect_masked {
                "client frames must be masked"
            } else {
                "server frames must not be masked"
            }));
        }
        let (len, mut at) = match b1 & 0x7F {
            126 => {
                self.fill(4).await?;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as u64, 4)
            }
            127 => {
                self.fill(10).await?;
                let len = u64::from_be_bytes(self.buf[2..10].try_into().unwrap());
                if len >> 63 != 0 {
                    return Err(Error::Protocol("frame length with the high bit set"));
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        let mask = if masked {
            self.fill(at + 4).await?;
            let m: [u8; 4] = self.buf[at..at + 4].try_into().unwrap();
            at += 4;
            Some(m)
        } else {
            None
        };
        self.buf.drain(..at);
        Ok(Header {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0F,
            len,
            mask,
        })
    }

    async fn payload(&mut self, h: &Header) -> Result<Vec<u8>, Error> {
        let n = h.len as usize;
        self.fill(n).await?;
        let mut p: Vec<u8> = self.buf.drain(..n).collect();
        if let Some(m) = h.mask {
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        Ok(p)
    }

    async fn skip(&mut self, mut n: u64) -> Result<(), Error> {
        let take = (self.buf.len() as u64).min(n) as usize;
        self.buf.drain(..take);
        n -= take as u64;
        let mut chunk = [0u8; 8192];
        while n > 0 {
            let want = (chunk.len() as u64).min(n) as usize;
            let got = self
                .inner
                .read(&mut chunk[..want])
                .await
                .map_err(|_| Error::Closed)?;
            if got == 0 {
                return Err(Error::Closed);
            }
            n -= got as u64;
        }
        Ok(())
    }

    async fn fill(&mut self, n: usize) -> Result<(), Error> {
        let mut chunk = [0u8; 8192];
        while self.buf.len() < n {
            let got = self
                .inner
                .read(&mut chunk)
                .await
                .map_err(|_| Error::Closed)?;
            if got == 0 {
                return Err(Error::Closed);
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
        Ok(())
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    mask: Option<[u8; 4]>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key("c2hvcnQ="));
        assert!(!valid_key("not base64!"));
    }

    #[test]
    fn encodes_rfc_6455_examples() {
        // §5.7: a single-frame unmasked and masked text message "Hello".
        assert_eq!(
            encode(TEXT, b"Hello", None),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(
            encode(TEXT, b"Hello", Some(MASK)),
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        assert_eq!(
            &encode(BINARY, &[0; 256], None)[..4],
            [0x82, 0x7E, 0x01, 0x00]
        );
        assert_eq!(
            &encode(BINARY, &[0; 65536], None)[..10],
            [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        let c = close_frame(1000, &"é".repeat(100), None);
        assert!(c.len() <= 127 && std::str::from_utf8(&c[4..]).is_ok());
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Message, Error>> {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        a.write_all(&bytes).await.unwrap();
        drop(a);
        let mut r = Reader::server(b, Vec::new(), max);
        let mut out = Vec::new();
        loop {
            let m = r.next().await;
            let end = m.is_err();
            out.push(m);
            if end {
                return out;
            }
        }
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = encode(opcode, payload, Some(MASK));
        if !fin {
            f[0] &= 0x7F;
        }
        f
    }

    #[tokio::test]
    async fn reassembles_fragments_with_control_frames_between() {
        let mut bytes = frame(false, TEXT, b"Hel");
        bytes.extend(frame(true, PING, b"p"));
        bytes.extend(frame(true, CONTINUATION, b"lo"));
        bytes.extend(frame(true, CLOSE, &1000u16.to_be_bytes()));
        let out = read_all(bytes, 100).await;
        assert_eq!(
            out,
            vec![
                Ok(Message::Ping(b"p".to_vec())),
                Ok(Message::Text("Hello".into())),
                Ok(Message::Close(Some(1000))),
                Err(Error::Closed)
            ]
        );
    }

    #[tokio::test]
    async fn skips_oversized_messages_and_goes_on() {
        let mut bytes = frame(true, TEXT, &[b'a'; 101]);
        bytes.extend(frame(false, TEXT, &[b'a'; 60]));
        bytes.extend(frame(true, CONTINUATION, &[b'a'; 60]));
        bytes.extend(frame(true, TEXT, b"ok"));
        let out = read_all(bytes, 100).await;
        assert_eq!(
            out,
            vec![
                Ok(Message::TooLarge(101)),
                Ok(Message::TooLarge(120)),
                Ok(Message::Text("ok".into())),
                Err(Error::Closed)
            ]
        );
        // A frame announcing more than the skip limit ends the connection.
        let mut huge = vec![0x81, 0xFF];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert_eq!(read_all(huge, 100).await, vec![Err(Error::Huge(1 << 40))]);
    }

    #[tokio::test]
    async fn enforces_framing_rules() {
        let unmasked = encode(TEXT, b"x", None);
        let bad_utf8 = frame(true, TEXT, &[0xff, 0xfe]);
        let mut rsv = frame(true, TEXT, b"x");
        rsv[0] |= 0x40;
        let long_ping = frame(true, PING, &[0; 126]);
        let lone_cont = frame(true, CONTINUATION, b"x");
        let mut nested = frame(false, TEXT, b"x");
        nested.extend(frame(true, TEXT, b"y"));
        for (bytes, want) in [
            (unmasked, Error::Protocol("client frames must be masked")),
            (bad_utf8, Error::InvalidUtf8),
            (rsv, Error::Protocol("reserved bits set")),
            (
                long_ping,
                Error::Protocol("control frame fragmented or over 125 bytes"),
            ),
            (lone_cont, Error::Protocol("continuation without start")),
            (
                nested,
                Error::Protocol("new message inside a fragmented one"),
            ),
        ] {
            let out = read_all(bytes, 100).await;
            assert_eq!(out.last().unwrap(), &Err(want));
        }
        assert_eq!(Error::InvalidUtf8.close_code(), 1007);
    }

    #[tokio::test]
    async fn client_reader_takes_unmasked_frames_and_leftovers() {
        let first = encode(TEXT, b"one", None);
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&encode(BINARY, b"two", None)).await.unwrap();
        let mut r = Reader::client(b, first, 100);
        assert_eq!(r.next().await, Ok(Message::Text("one".into())));
        assert_eq!(r.next().await, Ok(Message::Binary(b"two".to_vec())));
    }
}
