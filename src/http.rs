//! A minimal HTTP/1.1 server side: read one request head, write one
//! response, close. Enough for a handful of embedded pages, a JSON endpoint,
//! the WebSocket upgrade (demo), `/metrics` and the admin API; request
//! bodies are neither expected nor read. Plus [`fetch`], the blocking
//! one-shot client the `ferroturn sessions` and `kill` commands use.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers accepted.
const MAX_HEADERS: usize = 64;
/// Time a client gets to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    /// Header names lower-cased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` holds `token` in its comma-separated list
    /// (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The connection closed or failed first.
    Closed,
    /// Longer than [`MAX_HEAD`] or more than 64 headers.
    TooLarge,
    /// Not HTTP/1.x.
    Malformed(&'static str),
}

/// Parse a complete head (up to and including the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().ok_or(HeadError::Malformed("empty"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed("not HTTP/1.x"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(HeadError::Malformed("target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            break;
        }
        let (name, value) = l
            .split_once(':')
            .ok_or(HeadError::Malformed("header without colon"))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(HeadError::Malformed("bad header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        if headers.len() > MAX_HEADERS {
            return Err(HeadError::TooLarge);
        }
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
    })
}

/// Read one request head from `stream`. Bytes after the head (there should
/// be none before a response) are returned too.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Request, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf[searched_from..], b"\r\n\r\n") {
            let end = searched_from + i + 4;
            let rest = buf.split_off(end);
            return Ok((parse_head(&buf)?, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response: status, extra headers and a body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 with a body of `content_type`.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: body.into(),
        }
    }

    /// An error status with a one-line plain-text body.
    pub fn error(status: u16, text: &str) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: format!("{status} {}: {text}\n", reason(status)).into_bytes(),
        }
    }

    /// Add a header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire; `head_only` for HEAD requests.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        if self.status == 101 {
            // The connection is switching protocols: it carries its own headers.
            out.push_str("\r\n");
        } else {
            out.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                self.body.len()
            ));
        }
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }

    /// Write the response and flush.
    pub async fn write<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        head_only: bool,
    ) -> std::io::Result<()> {
        stream.write_all(&self.to_bytes(head_only)).await?;
        stream.flush().await
    }
}

/// The reason phrase of the statuses this server uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Time a client gets to take a whole response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve one request per connection on `listener` forever: read the head
/// (within [`HEAD_TIMEOUT`]), answer with `handler`, close. At most `max`
/// connections are served at once; more get 503. A HEAD request gets the
/// head of `handler`'s answer to it. `name` labels the log lines.
pub async fn serve_each<F, Fut>(listener: TcpListener, name: &'static str, max: usize, handler: F)
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::warn!("{name}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let overloaded = active.fetch_add(1, Ordering::Relaxed) >= max;
        let guard = Active(active.clone());
        let handler = handler.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
            let (response, head_only) = match head {
                Ok(Ok((req, _))) => {
                    let head_only = req.method == "HEAD";
                    if overloaded {
                        let r = Response::error(503, "too many connections");
                        (r.with("Retry-After", "1"), head_only)
                    } else {
                        (handler(req).await, head_only)
                    }
                }
                Ok(Err(HeadError::Closed)) | Err(_) => return,
                Ok(Err(HeadError::TooLarge)) => {
                    (Response::error(431, "request head too large"), false)
                }
                Ok(Err(HeadError::Malformed(why))) => (Response::error(400, why), false),
            };
            let write = response.write(&mut stream, head_only);
            let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
        });
    }
}

/// Counts a connection until dropped.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Largest response body [`fetch`] accepts.
pub const MAX_FETCH: u64 = 64 * 1024 * 1024;

/// One blocking HTTP/1.1 request to `addr` (`Connection: close`, no body):
/// the status code and the body. Every step is bounded by `timeout`.
pub fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Error, ErrorKind};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.take(MAX_FETCH + MAX_HEAD as u64).read_to_end(&mut raw)?;
    let bad = |why: &str| Error::new(ErrorKind::InvalidData, format!("bad HTTP answer: {why}"));
    let end = find(&raw, b"\r\n\r\n").ok_or_else(|| bad("no complete head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad("no status line"));
    };
    let status: u16 = match code.parse() {
        Ok(c) if version.starts_with("HTTP/1.") => c,
        _ => return Err(bad("no status line")),
    };
    let length = lines.find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = raw.split_off(end + 4);
    if method == "HEAD" {
        body.clear();
    } else if let Some(n) = length {
        if body.len() < n {
            return Err(bad("body shorter than Content-Length"));
        }
        body.truncate(n);
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_browser_upgrade_head() {
        let head = b"GET /signal?x=1 HTTP/1.1\r\nHost: a:8080\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let r = parse_head(head).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/signal");
        assert_eq!(r.query, "x=1");
        assert_eq!(r.header("host"), Some("a:8080"));
        assert!(r.header_has_token("connection", "upgrade"));
        assert!(!r.header_has_token("connection", "close"));
    }

    #[test]
    fn refuses_malformed_heads() {
        for head in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(head), Err(HeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse_head(many.as_bytes()), Err(HeadError::TooLarge));
    }

    #[tokio::test]
    async fn reads_a_head_split_across_reads_and_caps_size() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let w = tokio::spawn(async move {
            for part in [
                &b"GET / HT"[..],
                b"TP/1.1\r\nHost: x\r",
                b"\n\r",
                b"\nextra",
            ] {
                a.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            a
        });
        let (r, rest) = read_head(&mut b).await.unwrap();
        assert_eq!(r.path, "/");
        assert_eq!(r.header("host"), Some("x"));
        let _a = w.await.unwrap();
        assert!(b"extra".starts_with(&rest));

        let (mut a, mut b) = tokio::io::duplex(MAX_HEAD * 2);
        a.write_all(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD)).as_bytes())
            .await
            .unwrap();
        assert_eq!(read_head(&mut b).await.unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let bytes = Response::ok("text/plain", "hi")
            .with("X-A", "1")
            .to_bytes(false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("X-A: 1\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\nhi"));
        let up = Response {
            status: 101,
            headers: vec![("Connection", "Upgrade".into())],
            body: Vec::new(),
        };
        let text = String::from_utf8(up.to_bytes(false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n"
        );
        let head = Response::error(404, "no").to_bytes(true);
        assert!(String::from_utf8(head).unwrap().ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn serve_each_answers_and_fetch_reads_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_each(listener, "test", 4, |req: Request| async move {
            let auth = req.header("authorization").unwrap_or("-").to_owned();
            Response::ok("text/plain", format!("{} {} {auth}", req.method, req.path))
        }));
        let got = tokio::task::spawn_blocking(move || {
            let t = Duration::from_secs(5);
            let a = fetch(addr, "DELETE", "/x/y", &[("Authorization", "Bearer t")], t);
            let b = fetch(addr, "HEAD", "/z", &[], t);
            (a.unwrap(), b.unwrap())
        })
        .await
        .unwrap();
        assert_eq!(got.0, (200, b"DELETE /x/y Bearer t".to_vec()));
        assert_eq!(got.1, (200, Vec::new()));
    }
}
