//! SockJS 0.3.3 framing, the part with no I/O: the frames the server sends
//! (`o`, `h`, `a[...]`, `c[code,"reason"]`), the JSON escaping they need,
//! how each HTTP transport wraps them, what a client may send, and the
//! rules for the server and session ids of a URL.
//!
//! The frames and the escaping follow the protocol's test suite
//! (sockjs-protocol 0.3.3, "Protocol and framing", "JSONEncoding").

use serde_json::Value;

/// The open frame, sent once when a session starts.
pub const OPEN: &str = "o";
/// The heartbeat frame.
pub const HEARTBEAT: &str = "h";
/// Longest server or session id accepted in a URL.
pub const MAX_ID: usize = 64;
/// What starts every `xhr_streaming` response: 2048 `h` and a newline,
/// so that browsers that buffer the first 2 KiB of a response show the
/// frames after it at once.
pub const STREAMING_PRELUDE_LEN: usize = 2048;

/// Whether the server must write `c` as a `\uXXXX` escape: the control
/// characters, which JSON requires, and the ranges the protocol lists as
/// mangled on their way to a browser (`escapable_by_server`: zero-width
/// and directional marks, line and paragraph separators, invisible
/// operators, the specials block).
pub fn must_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{200c}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{2060}'..='\u{206f}'
        | '\u{fff0}'..='\u{ffff}')
}

/// Append `s` to `out` as a JSON string literal, with every character of
/// [`must_escape`] as `\uXXXX` (the usual short forms for `"`, `\`, and
/// `\n`, `\r`, `\t`, `\b`, `\f`).
pub fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if must_escape(c) => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The most bytes `s` takes on its way out on any transport: its JSON
/// quoting in a frame ([`push_quoted`]: six bytes for a `\uXXXX` escape,
/// two for a short one) and a comma, with `%` counted as the three bytes
/// of eventsource's escape ([`Wrap::Events`]).
pub fn wire_len(s: &str) -> usize {
    let quoted: usize = s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            '%' => 3,
            c if must_escape(c) => 6,
            c => c.len_utf8(),
        })
        .sum();
    quoted + 3
}

/// What a quoted message costs in a frame at most: six bytes for each
/// escaped character, the quotes and a comma.
pub fn quoted_len_bound(s: &str) -> usize {
    s.len() * 6 + 3
}

/// `a[...]`: the messages in one frame.
pub fn messages<'a>(msgs: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("a[");
    for (i, m) in msgs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_quoted(&mut out, m);
    }
    out.push(']');
    out
}

/// `c[code,"reason"]`.
pub fn close(code: u16, reason: &str) -> String {
    let mut out = format!("c[{code},");
    push_quoted(&mut out, reason);
    out.push(']');
    out
}

/// How an HTTP transport carries frames in its response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    /// `xhr` and `xhr_streaming`: each frame and a newline.
    Lines,
    /// `eventsource`: `data: FRAME\r\n\r\n`, with `%`, CR, LF and NUL of
    /// the frame percent-encoded (the client runs `decodeURI` on each
    /// event's data).
    Events,
}

impl Wrap {
    /// What the response starts with before any frame.
    pub fn prelude(self, streaming: bool) -> String {
        match self {
            Wrap::Lines if streaming => {
                let mut p = "h".repeat(STREAMING_PRELUDE_LEN);
                p.push('\n');
                p
            }
            Wrap::Lines => String::new(),
            Wrap::Events => "\r\n".into(),
        }
    }

    /// One frame as it goes into the body.
    pub fn frame(self, frame: &str) -> String {
        match self {
            Wrap::Lines => {
                let mut out = String::with_capacity(frame.len() + 1);
                out.push_str(frame);
                out.push('\n');
                out
            }
            Wrap::Events => {
                let mut out = String::with_capacity(frame.len() + 10);
                out.push_str("data: ");
                for c in frame.chars() {
                    match c {
                        '%' => out.push_str("%25"),
                        '\r' => out.push_str("%0D"),
                        '\n' => out.push_str("%0A"),
                        '\0' => out.push_str("%00"),
                        c => out.push(c),
                    }
                }
                out.push_str("\r\n\r\n");
                out
            }
        }
    }
}

/// Why a client's payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Nothing at all (`xhr_send` answers "Payload expected.").
    Empty,
    /// Not a JSON string or array of strings ("Broken JSON encoding.").
    Broken,
}

/// The messages of a client's payload: a JSON array of strings, or one
/// JSON string (the protocol allows both on every transport). An empty
/// array is no message.
pub fn parse_payload(body: &[u8]) -> Result<Vec<String>, Payload> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Payload::Empty);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::String(s)) => Ok(vec![s]),
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(Payload::Broken),
            })
            .collect(),
        _ => Err(Payload::Broken),
    }
}

/// Whether `id` may be a server or session id: 1 to [`MAX_ID`] visible
/// ASCII characters, no dot (the protocol's "Session URLs": not empty, no
/// dots) and no slash.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'/')
}

/// An HTTP-date (RFC 9110 §5.6.7, IMF-fixdate) for `secs` after the Unix
/// epoch, for `Expires`.
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wire_len` is never below what a message takes in a frame, on
    /// either wrapping.
    #[test]
    fn wire_len_bounds_a_message_on_the_wire() {
        for m in [
            "",
            "plain",
            "\u{1}\u{0}\u{1f}",
            "%%%",
            "\"\\\n\r\t\u{8}\u{c}",
            "\u{2028}\u{200e}\u{fff9}é😀",
        ] {
            let alone = messages([m]);
            let wire = Wrap::Events
                .frame(&alone)
                .len()
                .max(Wrap::Lines.frame(&alone).len());
            // "a[" "]" and the wrapping are the frame's, not the message's.
            assert!(wire - "data: a[]\r\n\r\n".len() <= wire_len(m), "{m:?}");
        }
    }

    #[test]
    fn frames() {
        assert_eq!(messages(["a", "b\"c"]), r#"a["a","b\"c"]"#);
        assert_eq!(messages(Vec::<&str>::new()), "a[]");
        assert_eq!(close(3000, "Go away!"), r#"c[3000,"Go away!"]"#);
        assert_eq!(
            close(2010, "Another connection still open"),
            r#"c[2010,"Another connection still open"]"#
        );
        assert_eq!(Wrap::Lines.frame("o"), "o\n");
        assert_eq!(Wrap::Events.frame("o"), "data: o\r\n\r\n");
        let p = Wrap::Lines.prelude(true);
        assert_eq!(p.len(), 2049);
        assert!(p.starts_with("hhhh") && p.ends_with("h\n"));
        assert_eq!(Wrap::Lines.prelude(false), "");
        assert_eq!(Wrap::Events.prelude(true), "\r\n");
    }

    /// The suite's EventSource case: the control characters arrive escaped
    /// in the JSON, and the event data escapes what would end an event.
    #[test]
    fn eventsource_wrapping() {
        let frame = messages(["  \u{0}\n\r "]);
        assert_eq!(frame, r#"a["  \u0000\n\r "]"#);
        assert_eq!(
            Wrap::Events.frame(&frame),
            "data: a[\"  \\u0000\\n\\r \"]\r\n\r\n"
        );
        assert_eq!(
            Wrap::Events.frame("a[\"50%\"]\n"),
            "data: a[\"50%25\"]%0A\r\n\r\n"
        );
    }

    /// Every character of the suite's `escapable_by_server` above U+00FF
    /// goes out as `\uXXXX`, as the suite's `test_xhr_server_encodes`
    /// expects, and so does every control character; the rest goes out as
    /// it is, and the result is JSON that reads back as the input.
    #[test]
    fn escaping_follows_the_protocol() {
        let escaped: Vec<u32> = (0..=0xffffu32)
            .filter_map(char::from_u32)
            .filter(|c| must_escape(*c))
            .map(|c| c as u32)
            .collect();
        let mut want: Vec<u32> = (0..=0x1f).collect();
        want.extend(0x200c..=0x200f);
        want.extend(0x2028..=0x202f);
        want.extend(0x2060..=0x206f);
        want.extend(0xfff0..=0xffff);
        assert_eq!(escaped, want);

        // The suite's server_killer_string: those above U+00FF, in order.
        let killer: String = want
            .iter()
            .filter(|&&c| c >= 255)
            .map(|&c| char::from_u32(c).unwrap())
            .collect();
        let mut quoted = String::new();
        push_quoted(&mut quoted, &killer);
        let expected: String = std::iter::once("\"".to_owned())
            .chain(
                want.iter()
                    .filter(|&&c| c >= 255)
                    .map(|c| format!("\\u{c:04x}")),
            )
            .chain(std::iter::once("\"".to_owned()))
            .collect();
        assert_eq!(quoted, expected);

        let all: String = (0..=0x10ffffu32).filter_map(char::from_u32).collect();
        let mut q = String::new();
        push_quoted(&mut q, &all);
        assert!(q.len() <= quoted_len_bound(&all));
        assert_eq!(serde_json::from_str::<String>(&q).unwrap(), all);
        assert!(
            !q.chars()
                .skip(1)
                .take(q.chars().count() - 2)
                .any(must_escape)
        );
        let plain = "héllo \u{7f}\u{ad}\u{feff} 日本 😀";
        let mut p = String::new();
        push_quoted(&mut p, plain);
        assert_eq!(p, format!("\"{plain}\""));
    }

    #[test]
    fn payloads() {
        assert_eq!(
            parse_payload(br#"["a","b"]"#),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_payload(br#""a""#), Ok(vec!["a".into()]));
        assert_eq!(parse_payload(b"[]"), Ok(vec![]));
        // The client escapes many characters; they decode.
        assert_eq!(
            parse_payload(br#"["\u0000\u2028\ud83d\ude00"]"#),
            Ok(vec!["\u{0}\u{2028}😀".into()])
        );
        assert_eq!(parse_payload(b""), Err(Payload::Empty));
        assert_eq!(parse_payload(b" \n"), Err(Payload::Empty));
        for broken in [
            &br#"["x"#[..],
            b"[1]",
            b"{}",
            b"null",
            b"[\"a\",[\"b\"]]",
            b"\xff",
        ] {
            assert_eq!(parse_payload(broken), Err(Payload::Broken), "{broken:?}");
        }
    }

    /// The suite's "Session URLs": any value but an empty one or one with
    /// dots; and not longer than [`MAX_ID`].
    #[test]
    fn ids() {
        for ok in ["a", "_", "1", "000", "abcdefgh_i-j%20", &"x".repeat(MAX_ID)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a.",
            "a.b",
            "a/b",
            "a b",
            "é",
            &"x".repeat(MAX_ID + 1),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
