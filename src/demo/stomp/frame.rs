//! STOMP frames (STOMP 1.0, 1.1 and 1.2, "Frames and Headers"): a pure
//! codec with no I/O, tested with values.
//!
//! A frame is a command line, header lines `name:value`, an empty line,
//! the body and a NUL; any number of EOLs (heart-beats) may come between
//! frames. EOL is `\n` or `\r\n` (1.2 §"Augmented BNF"; accepted from
//! clients of every version). A `content-length` header gives the body's
//! length in bytes, so that the body may hold NULs; without it the body
//! ends at the first NUL. When a header repeats, the first one counts
//! (1.2 §"Repeated Header Entries"; 1.0 says nothing, and the same rule
//! is used for it).
//!
//! Header escaping differs by version: 1.0 has none, 1.1 escapes `\n`,
//! `:` and `\` as `\\n`, `\\c`, `\\\\`, and 1.2 adds `\\r` for CR (1.2
//! §"Value Encoding"). CONNECT and CONNECTED are never escaped (1.2, for
//! compatibility with 1.0), which is why a [`Decoder`] reads with 1.0 rules
//! until the version is agreed.
//!
//! Limits, so that a client cannot make the server buffer much: a frame
//! (command, headers and body) of at most [`MAX_FRAME`] bytes, at most
//! [`MAX_HEADERS`] headers of at most [`MAX_HEADER_LINE`] bytes each.

use std::fmt;

/// Largest frame read, in bytes, from its command to its NUL.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most header lines one frame may have.
pub const MAX_HEADERS: usize = 32;
/// Longest header line (or command line), in bytes, escapes included.
pub const MAX_HEADER_LINE: usize = 2048;

/// A protocol version (the `version` header of CONNECTED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// Every version this server speaks, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.as_str() == s.trim())
    }

    /// The highest version in an `accept-version` value (`1.0,1.1,1.2`) that
    /// this server speaks; none listed is 1.0 (1.1 §"Protocol Negotiation").
    pub fn negotiate(accept: Option<&str>) -> Option<Version> {
        match accept {
            None => Some(Version::V1_0),
            Some(list) => list.split(',').filter_map(Version::parse).max(),
        }
    }

    /// The `version` header of an ERROR refusing a version: what this
    /// server speaks.
    pub fn supported() -> &'static str {
        "1.0,1.1,1.2"
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One frame: its command, its headers in order (repeats kept, see
/// [`Frame::header`]) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Frame {
    pub fn new(command: &str) -> Frame {
        Frame {
            command: command.to_owned(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// This frame with one more header.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Frame {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// This frame with `body`, its `content-type` and its `content-length`.
    pub fn with_body(self, content_type: &str, body: impl Into<String>) -> Frame {
        let body = body.into();
        let mut f = self
            .with("content-type", content_type)
            .with("content-length", body.len().to_string());
        f.body = body;
        f
    }

    /// The value of header `name`: the first, when it repeats.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The frame as `version` writes it. CONNECTED is never escaped; a
    /// character a version cannot carry in a header (a newline in 1.0, a
    /// CR in 1.0 and 1.1) becomes a space.
    pub fn serialize(&self, version: Version) -> String {
        let mut out = String::with_capacity(self.command.len() + self.body.len() + 64);
        out.push_str(&self.command);
        out.push('\n');
        let raw = self.command == "CONNECTED" || self.command == "CONNECT";
        for (n, v) in &self.headers {
            escape_into(&mut out, n, version, raw);
            out.push(':');
            escape_into(&mut out, v, version, raw);
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.body);
        out.push('\0');
        out
    }
}

fn escape_into(out: &mut String, s: &str, version: Version, raw: bool) {
    for c in s.chars() {
        match (c, version) {
            ('\n' | '\r', Version::V1_0) | ('\r', Version::V1_1) => out.push(' '),
            ('\n' | '\r', _) if raw => out.push(' '),
            (_, _) if raw || version == Version::V1_0 => out.push(c),
            ('\n', _) => out.push_str("\\n"),
            ('\r', _) => out.push_str("\\r"),
            (':', _) => out.push_str("\\c"),
            ('\\', _) => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
}

/// Why the input is not a frame this server reads. Any of these ends the
/// session with an ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame longer than [`MAX_FRAME`] (the length seen so far, or the
    /// declared `content-length`).
    TooLarge(usize),
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// A header or command line over [`MAX_HEADER_LINE`].
    LineTooLong,
    /// Anything else: what is wrong.
    Malformed(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(
                f,
                "frame too large: {n} bytes or more, the limit is {MAX_FRAME}"
            ),
            FrameError::TooManyHeaders => {
                write!(f, "too many headers: the limit is {MAX_HEADERS}")
            }
            FrameError::LineTooLong => write!(
                f,
                "header line too long: the limit is {MAX_HEADER_LINE} bytes"
            ),
            FrameError::Malformed(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

/// Reads frames out of a stream of text: whole frames, several in one
/// message or one split over several (see [`Decoder::push`]).
///
/// It reads incrementally: each byte received is looked at a bounded
/// number of times however the frame is cut into pieces (a head line once
/// complete, a body byte once while looking for its NUL), so a client
/// sending a frame a byte at a time costs no more than sending it whole.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    version: Version,
    /// The frame being read: what of its head is parsed so far.
    head: Head,
    /// Where to go on reading in `buf`: the next head line, or the next
    /// body byte to look at for the NUL.
    at: usize,
}

#[derive(Debug, Default)]
struct Head {
    command: Option<String>,
    headers: Vec<(String, String)>,
    /// Where the body starts, once the head is complete, and its
    /// `content-length`.
    body: Option<(usize, Option<usize>)>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder reading with 1.0 rules (for CONNECT).
    pub fn new() -> Decoder {
        Decoder {
            buf: Vec::new(),
            version: Version::V1_0,
            head: Head::default(),
            at: 0,
        }
    }

    /// Read headers with `version`'s escapes from now on.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// Add text received. What a client can make the decoder hold is
    /// bounded by [`Decoder::next_frame`], which fails once a frame being
    /// read grows past [`MAX_FRAME`]; the caller reads all frames after
    /// each push.
    pub fn push(&mut self, text: &str) {
        self.buf.extend_from_slice(text.as_bytes());
    }

    /// The next complete frame, `None` when more input is needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        match self.advance() {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) if self.buf.len() > MAX_FRAME => {
                Some(Err(FrameError::TooLarge(self.buf.len())))
            }
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn advance(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.head.command.is_none() && self.at == 0 {
            // Heart-beats: EOLs between frames.
            let mut skip = 0;
            loop {
                match self.buf.get(skip..) {
                    Some([b'\n', ..]) => skip += 1,
                    Some([b'\r', b'\n', ..]) => skip += 2,
                    _ => break,
                }
            }
            self.buf.drain(..skip);
            if self.buf.is_empty() || self.buf == b"\r" {
                return Ok(None);
            }
        }
        while self.head.body.is_none() {
            let Some((text, next)) = line(&self.buf, self.at)? else {
                return Ok(None);
            };
            let text = text.to_vec();
            self.at = next;
            self.head_line(&text)?;
        }
        let Some((start, length)) = self.head.body else {
            return Ok(None);
        };
        let body_end = match length {
            Some(n) if n > MAX_FRAME => return Err(FrameError::TooLarge(n)),
            Some(n) if start + n + 1 > MAX_FRAME => {
                return Err(FrameError::TooLarge(start + n + 1));
            }
            Some(n) => {
                if self.buf.len() <= start + n {
                    return Ok(None);
                }
                if self.buf[start + n] != 0 {
                    return Err(FrameError::Malformed(
                        "no NUL after the content-length bytes of the body".into(),
                    ));
                }
                start + n
            }
            None => match self.buf[self.at..].iter().position(|&b| b == 0) {
                Some(i) => self.at + i,
                None => {
                    self.at = self.buf.len();
                    return Ok(None);
                }
            },
        };
        let end = body_end + 1;
        if end > MAX_FRAME {
            return Err(FrameError::TooLarge(end));
        }
        let body = utf8(&self.buf[start..body_end], "the body")?;
        let head = std::mem::take(&mut self.head);
        self.buf.drain(..end);
        self.at = 0;
        Ok(Some(Frame {
            command: head.command.unwrap_or_default(),
            headers: head.headers,
            body,
        }))
    }

    /// One complete line of the head: the command, a header, or the empty
    /// line that ends the head.
    fn head_line(&mut self, text: &[u8]) -> Result<(), FrameError> {
        let Some(command) = &self.head.command else {
            if text.is_empty() || !text.iter().all(u8::is_ascii_uppercase) {
                return Err(FrameError::Malformed(format!(
                    "expected a command (capital letters), got {:?}",
                    String::from_utf8_lossy(&text[..text.len().min(32)])
                )));
            }
            self.head.command = Some(utf8(text, "the command")?);
            return Ok(());
        };
        if text.is_empty() {
            let length = self
                .head
                .headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| {
                    v.trim().parse::<usize>().map_err(|_| {
                        FrameError::Malformed(format!("content-length {v:?} is not a number"))
                    })
                })
                .transpose()?;
            self.head.body = Some((self.at, length));
            return Ok(());
        }
        if self.head.headers.len() == MAX_HEADERS {
            return Err(FrameError::TooManyHeaders);
        }
        // CONNECT is read with 1.0 rules: no escapes.
        let version = if command == "CONNECT" || command == "STOMP" {
            Version::V1_0
        } else {
            self.version
        };
        let Some(colon) = text.iter().position(|&b| b == b':') else {
            return Err(FrameError::Malformed(format!(
                "header line without a colon: {:?}",
                String::from_utf8_lossy(&text[..text.len().min(32)])
            )));
        };
        let name = unescape(&utf8(&text[..colon], "a header name")?, version)?;
        let value = unescape(&utf8(&text[colon + 1..], "a header value")?, version)?;
        self.head.headers.push((name, value));
        Ok(())
    }
}

/// One line of `buf` from `at`: its text without the EOL, and where the
/// next line starts; `None` when the EOL has not come yet.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let rest = &buf[at..];
    match rest.iter().position(|&b| b == b'\n' || b == 0) {
        Some(i) if rest[i] == 0 => Err(FrameError::Malformed(
            "a NUL before the end of the command or a header".into(),
        )),
        Some(i) => {
            let text = rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]);
            if text.len() > MAX_HEADER_LINE {
                return Err(FrameError::LineTooLong);
            }
            Ok(Some((text, at + i + 1)))
        }
        None if rest.len() > MAX_HEADER_LINE + 1 => Err(FrameError::LineTooLong),
        None => Ok(None),
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, FrameError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| FrameError::Malformed(format!("{what} is not UTF-8")))
}

/// Undo header escapes (1.1 and 1.2 §"Value Encoding"); an escape the
/// version does not define is an error.
fn unescape(s: &str, version: Version) -> Result<String, FrameError> {
    if version == Version::V1_0 || !s.contains('\\') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match (chars.next(), version) {
            (Some('n'), _) => out.push('\n'),
            (Some('c'), _) => out.push(':'),
            (Some('\\'), _) => out.push('\\'),
            (Some('r'), Version::V1_2) => out.push('\r'),
            (other, _) => {
                return Err(FrameError::Malformed(format!(
                    "undefined escape \\{} in STOMP {version}",
                    other.map(String::from).unwrap_or_default()
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(version: Version, input: &[&str]) -> Vec<Result<Frame, FrameError>> {
        let mut d = Decoder::new();
        d.set_version(version);
        let mut out = Vec::new();
        for text in input {
            d.push(text);
            while let Some(f) = d.next_frame() {
                let stop = f.is_err();
                out.push(f);
                if stop {
                    return out;
                }
            }
        }
        out
    }

    fn one(version: Version, input: &str) -> Result<Frame, FrameError> {
        let mut got = frames(version, &[input]);
        assert_eq!(got.len(), 1, "{input:?}: {got:?}");
        got.remove(0)
    }

    #[test]
    fn reads_frames_with_either_eol_and_heart_beats_between() {
        let input = "\n\r\nSEND\r\ndestination:/topic/a\r\n\r\nhello\0\n\n\nSEND\ndestination:/topic/b\n\nworld\0\r\n";
        let got = frames(Version::V1_2, &[input]);
        assert_eq!(got.len(), 2);
        let a = got[0].as_ref().unwrap();
        assert_eq!(a.command, "SEND");
        assert_eq!(a.header("destination"), Some("/topic/a"));
        assert_eq!(a.body, "hello");
        assert_eq!(got[1].as_ref().unwrap().body, "world");
    }

    #[test]
    fn a_frame_may_arrive_in_pieces() {
        let input = "SEND\ndestination:/topic/a\ncontent-length:5\n\nab\0de\0";
        for cut in 1..input.len() {
            let got = frames(Version::V1_1, &[&input[..cut], &input[cut..]]);
            assert_eq!(got.len(), 1, "cut at {cut}");
            assert_eq!(got[0].as_ref().unwrap().body, "ab\0de", "cut at {cut}");
        }
    }

    /// Fed a byte at a time, the same frames come out.
    #[test]
    fn a_byte_at_a_time() {
        let input = "\nSEND\r\nk\\c:v\\n\r\ncontent-length:3\n\na\0b\0\nMESSAGE\nx:y\n\nbody\0\n";
        let pieces: Vec<String> = input.chars().map(String::from).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let got = frames(Version::V1_2, &pieces);
        let whole = frames(Version::V1_2, &[input]);
        assert_eq!(got, whole);
        assert_eq!(got.len(), 2);
        let f = got[0].as_ref().unwrap();
        assert_eq!(f.headers[0], ("k:".to_owned(), "v\n".to_owned()));
        assert_eq!(f.body, "a\0b");
        assert_eq!(got[1].as_ref().unwrap().body, "body");
    }

    #[test]
    fn content_length_bodies_hold_nuls_and_must_end_with_one() {
        let f = one(Version::V1_2, "SEND\ncontent-length:3\n\na\0b\0").unwrap();
        assert_eq!(f.body, "a\0b");
        let e = one(Version::V1_2, "SEND\ncontent-length:2\n\nabc\0").unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)), "{e:?}");
        let e = one(Version::V1_2, "SEND\ncontent-length:x\n\n\0").unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)), "{e:?}");
        // The length counts bytes: é is two.
        assert_eq!(
            one(Version::V1_2, "SEND\ncontent-length:2\n\né\0")
                .unwrap()
                .body,
            "é"
        );
        // One that cuts a character in two is not UTF-8.
        let e = one(Version::V1_2, "SEND\ncontent-length:1\n\né\0").unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)), "{e:?}");
    }

    #[test]
    fn escapes_depend_on_the_version() {
        let input = "SEND\na\\cb:x\\ny\\\\z\\r\n\n\0";
        let f = one(Version::V1_2, input).unwrap();
        assert_eq!(f.headers, [("a:b".to_owned(), "x\ny\\z\r".to_owned())]);
        // 1.1 has no \r escape.
        let e = one(Version::V1_1, input).unwrap_err();
        assert!(
            matches!(&e, FrameError::Malformed(m) if m.contains("\\r")),
            "{e:?}"
        );
        let f = one(Version::V1_1, "SEND\na\\cb:x\\ny\\\\z\n\n\0").unwrap();
        assert_eq!(f.headers, [("a:b".to_owned(), "x\ny\\z".to_owned())]);
        // 1.0 has none: the backslashes stay, the first colon splits.
        let f = one(Version::V1_0, input).unwrap();
        assert_eq!(
            f.headers,
            [("a\\cb".to_owned(), "x\\ny\\\\z\\r".to_owned())]
        );
        // An undefined escape, and CONNECT read unescaped whatever the version.
        assert!(one(Version::V1_2, "SEND\na:\\t\n\n\0").is_err());
        let f = one(Version::V1_2, "CONNECT\nlogin:a\\b\n\n\0").unwrap();
        assert_eq!(f.header("login"), Some("a\\b"));
    }

    #[test]
    fn serialize_escapes_per_version_and_round_trips() {
        let f = Frame::new("MESSAGE")
            .with("dest:ination", "a\nb\\c\rd")
            .with_body("text/plain", "x\0y");
        for v in Version::ALL {
            let text = f.serialize(v);
            let back = one(v, &text).unwrap();
            let want = match v {
                Version::V1_0 => ("dest:ination", "a b\\c d"),
                Version::V1_1 => ("dest:ination", "a\nb\\c d"),
                Version::V1_2 => ("dest:ination", "a\nb\\c\rd"),
            };
            if v == Version::V1_0 {
                // 1.0 splits at the first colon.
                assert_eq!(back.headers[0], ("dest".into(), "ination:a b\\c d".into()));
            } else {
                assert_eq!(back.headers[0], (want.0.into(), want.1.into()), "{v}");
            }
            assert_eq!(back.body, "x\0y", "{v}");
            assert_eq!(back.header("content-length"), Some("3"));
        }
        // CONNECTED is never escaped.
        let c = Frame::new("CONNECTED")
            .with("server", "a:b")
            .serialize(Version::V1_2);
        assert_eq!(c, "CONNECTED\nserver:a:b\n\n\0");
    }

    #[test]
    fn the_first_of_repeated_headers_counts() {
        let f = one(Version::V1_2, "SEND\nto:1\nto:2\n\n\0").unwrap();
        assert_eq!(f.header("to"), Some("1"));
        assert_eq!(f.headers.len(), 2);
    }

    #[test]
    fn malformed_frames_are_refused() {
        for input in [
            "send\n\n\0",
            "SEND X\n\n\0",
            "\0",
            "SEND\nno colon\n\n\0",
            "SEND\na:\\\n\n\0",
        ] {
            let e = one(Version::V1_2, input).unwrap_err();
            assert!(matches!(e, FrameError::Malformed(_)), "{input:?}: {e:?}");
        }
    }

    #[test]
    fn sizes_are_capped() {
        // A body over the limit, whole or still arriving.
        let big = format!("SEND\n\n{}\0", "x".repeat(MAX_FRAME));
        assert!(matches!(
            one(Version::V1_2, &big),
            Err(FrameError::TooLarge(_))
        ));
        let got = frames(Version::V1_2, &[&big[..MAX_FRAME + 5]]);
        assert!(matches!(got[..], [Err(FrameError::TooLarge(_))]), "{got:?}");
        let e = one(
            Version::V1_2,
            &format!("SEND\ncontent-length:{}\n\n", MAX_FRAME + 1),
        );
        assert_eq!(e, Err(FrameError::TooLarge(MAX_FRAME + 1)));
        // Just under the limit passes.
        let fits = format!("SEND\n\n{}\0", "x".repeat(MAX_FRAME - 7));
        assert_eq!(fits.len(), MAX_FRAME);
        assert!(one(Version::V1_2, &fits).is_ok());
        // Headers: count and length.
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}:v\n")).collect();
        let e = one(Version::V1_2, &format!("SEND\n{many}\n\0"));
        assert_eq!(e, Err(FrameError::TooManyHeaders));
        let long = format!("SEND\nh:{}\n\n\0", "v".repeat(MAX_HEADER_LINE));
        assert_eq!(one(Version::V1_2, &long), Err(FrameError::LineTooLong));
        // A line that never ends is refused before it is long.
        let got = frames(
            Version::V1_2,
            &[&format!("SEND\nh:{}", "v".repeat(MAX_HEADER_LINE))],
        );
        assert_eq!(got, [Err(FrameError::LineTooLong)]);
    }

    #[test]
    fn versions_are_negotiated_from_accept_version() {
        assert_eq!(Version::negotiate(None), Some(Version::V1_0));
        assert_eq!(Version::negotiate(Some("1.1,1.0")), Some(Version::V1_1));
        assert_eq!(Version::negotiate(Some("1.0,1.1,1.2")), Some(Version::V1_2));
        assert_eq!(Version::negotiate(Some("1.2, 2.0")), Some(Version::V1_2));
        assert_eq!(Version::negotiate(Some("2.0")), None);
        assert_eq!(Version::negotiate(Some("")), None);
    }
}
