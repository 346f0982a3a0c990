//! A minimal HTTP/1.1 server side: read one request head, write one
//! response, close. Enough for a handful of embedded pages, a JSON endpoint,
//! the WebSocket upgrade (demo), `/metrics` and the admin API; request
//! bodies are neither expected nor read. Plus [`fetch`], the blocking
//! one-shot client the `ferroturn sessions` and `kill` commands use.
//!
//! Connections are held in [`Slots`]: a connection must send its whole
//! request head within [`HEAD_TIMEOUT`], however it trickles, and when a
//! client (an IP address, an IPv6 /64, or a local user on a Unix socket)
//! or the whole listener is at its cap, the oldest connection that is not
//! being answered is closed to make room. Idle sockets therefore can
//! neither hold every slot nor keep a real request out.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::AbortHandle;

use crate::addr::Origin;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers accepted.
const MAX_HEADERS: usize = 64;
/// Time a client gets to send its whole request head, from the moment it
/// is accepted: a sender that trickles a byte at a time is cut off too.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    /// HTTP/1.1 (or a later 1.x), which must send `Host`; false for 1.0.
    pub http11: bool,
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
    let Some(minor) = version.strip_prefix("HTTP/1.") else {
        return Err(HeadError::Malformed("not HTTP/1.x"));
    };
    if minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit()) {
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
        http11: minor != "0",
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

    /// A JSON body `{"error": text}` with `status`, never cached.
    pub fn json_error(status: u16, text: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": text }))
    }

    /// A JSON body with `status`, never cached.
    pub fn json(status: u16, body: &impl serde::Serialize) -> Response {
        let mut r = Response::ok(
            "application/json",
            serde_json::to_vec(body).expect("serializable"),
        )
        .with("Cache-Control", "no-store");
        r.status = status;
        r
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
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Time a client gets to take a whole response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a `Host` value names this machine without DNS: an IPv4
/// literal, a bracketed IPv6 literal or `localhost`, or one of the names in
/// `also` (configured by the operator, lower case), each with an optional
/// port (RFC 9110 §7.2, RFC 3986 §3.2.2). A page that reached a loopback
/// listener by DNS rebinding sends its own domain name here, so it is told
/// apart.
pub fn is_local_authority(host: &str, also: &[String]) -> bool {
    let (name_ok, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) => (v6.parse::<Ipv6Addr>().is_ok(), port),
            None => return false,
        },
        None => {
            let (name, port) = host.split_at(host.find(':').unwrap_or(host.len()));
            let ok = name.eq_ignore_ascii_case("localhost")
                || name.parse::<Ipv4Addr>().is_ok()
                || also.iter().any(|a| name.eq_ignore_ascii_case(a));
            (ok, port)
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    name_ok && port_ok
}

/// The refusal for a request to a local-only listener (admin, metrics)
/// whose `Host` is not [`is_local_authority`] (with the extra names
/// `also`): 421 for a foreign name, 400 for an HTTP/1.1 request without
/// exactly one `Host` (RFC 9112 §3.2). `None` when the request may be
/// answered.
pub fn local_host_refusal(req: &Request, also: &[String]) -> Option<Response> {
    let mut hosts = req.headers.iter().filter(|(n, _)| n == "host");
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some(Response::json_error(400, "more than one Host header"));
    }
    match host {
        None if req.http11 => Some(Response::json_error(
            400,
            "an HTTP/1.1 request needs a Host header",
        )),
        None => None,
        Some((_, h)) if is_local_authority(h, also) => None,
        Some(_) => Some(Response::json_error(
            421,
            "this server answers only requests addressed to an IP address or localhost (Host header)",
        )),
    }
}

/// Who a connection comes from, for per-client caps: an IPv4 address, an
/// IPv6 /64 (one host or home network usually holds a whole /64), or the
/// user id of a process on a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Net(Origin),
    Uid(u32),
}

impl Peer {
    /// The peer of an IP address ([`Origin`]).
    pub fn of_ip(ip: IpAddr) -> Peer {
        Peer::Net(Origin::of(ip))
    }
}

/// A byte stream of a TCP or Unix connection.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// A TCP or Unix listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// The next connection and whom it comes from.
    pub async fn accept(&self) -> std::io::Result<(Box<dyn Conn>, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, from) = l.accept().await?;
                Ok((Box::new(s), Peer::of_ip(from.ip())))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                // SO_PEERCRED cannot fail on a connected Unix socket; if it
                // did, every such client would share one cap.
                let uid = s.peer_cred().map_or(u32::MAX, |c| c.uid());
                Ok((Box::new(s), Peer::Uid(uid)))
            }
        }
    }
}

/// The connections of one listener, with a cap per [`Peer`] and a cap in
/// all. A new connection is always let in if some connection can make room
/// for it: when its peer is at its cap, that peer's oldest idle connection
/// is closed; when the listener is full, the oldest idle connection of the
/// peer holding the most is closed (else the oldest idle one of anybody).
/// Idle means not marked busy: still sending its head, waiting for its
/// response to be read, or anything its owner did not mark. Only when
/// nothing is idle is the new connection refused.
pub struct Slots {
    table: Mutex<Table>,
    max: usize,
    per_peer: usize,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// By id, that is in the order they were let in.
    conns: BTreeMap<u64, Entry>,
}

struct Entry {
    peer: Peer,
    busy: bool,
    abort: Option<AbortHandle>,
}

impl Table {
    fn oldest_idle(&self, of: impl Fn(Peer) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .find(|(_, e)| !e.busy && of(e.peer))
            .map(|(&id, _)| id)
    }

    /// Connections of `peer` now (a scan: a listener holds a few hundred).
    fn held_by(&self, peer: Peer) -> usize {
        self.conns.values().filter(|e| e.peer == peer).count()
    }

    /// The peer holding the most connections.
    fn heaviest(&self) -> Option<Peer> {
        let mut counts: HashMap<Peer, usize> = HashMap::new();
        for e in self.conns.values() {
            *counts.entry(e.peer).or_default() += 1;
        }
        counts.into_iter().max_by_key(|&(_, n)| n).map(|(p, _)| p)
    }
}

/// A connection's place in [`Slots`], given up when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    pub fn new(max: usize, per_peer: usize) -> Arc<Slots> {
        Arc::new(Slots {
            table: Mutex::new(Table::default()),
            max: max.max(1),
            per_peer: per_peer.max(1),
        })
    }

    /// A place for a new connection from `peer`, closing an idle one if
    /// that is what it takes; `None`: refused, nothing was idle.
    pub fn admit(self: &Arc<Self>, peer: Peer) -> Option<Slot> {
        let mut t = self.table.lock().unwrap();
        let victim = if t.held_by(peer) >= self.per_peer {
            Some(t.oldest_idle(|p| p == peer)?)
        } else if t.conns.len() >= self.max {
            let heaviest = t.heaviest();
            Some(
                t.oldest_idle(|p| Some(p) == heaviest)
                    .or_else(|| t.oldest_idle(|_| true))?,
            )
        } else {
            None
        };
        let evicted = victim
            .and_then(|id| t.conns.remove(&id))
            .and_then(|e| e.abort);
        let id = t.next;
        t.next += 1;
        t.conns.insert(
            id,
            Entry {
                peer,
                busy: false,
                abort: None,
            },
        );
        drop(t);
        if let Some(a) = evicted {
            tracing::debug!("connection closed to make room for another");
            a.abort();
        }
        Some(Slot {
            slots: self.clone(),
            id,
        })
    }

    /// The task serving connection `id`, to be aborted if the connection
    /// is evicted. One evicted before this call (or already ended) is
    /// aborted now.
    pub fn attach(&self, id: u64, task: AbortHandle) {
        let mut t = self.table.lock().unwrap();
        match t.conns.get_mut(&id) {
            Some(e) => e.abort = Some(task),
            None => task.abort(),
        }
    }

    /// Connections held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.lock().unwrap().conns.len()
    }

    /// Whether no connection is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Slot {
    /// The slot's id, for [`Slots::attach`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Mark the connection busy (never evicted) or idle again.
    pub fn set_busy(&self, busy: bool) {
        if let Some(e) = self.slots.table.lock().unwrap().conns.get_mut(&self.id) {
            e.busy = busy;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.table.lock().unwrap().conns.remove(&self.id);
    }
}

/// How many connections a listener of [`serve_each`] holds.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// In all.
    pub total: usize,
    /// Per [`Peer`].
    pub per_peer: usize,
}

/// Serve one request per connection on `listener` forever: read the head
/// (within [`HEAD_TIMEOUT`]), answer with `handler`, close. Only requests
/// whose `Host` is an IP literal, `localhost` or one of the names `hosts`
/// reach `handler` ([`local_host_refusal`]). Connections are held in
/// [`Slots`] of `caps`; a connection that cannot be let in is closed at
/// once. A HEAD request gets the head of `handler`'s answer to it. `name`
/// labels the log lines.
pub async fn serve_each<F, Fut>(
    listener: Listener,
    name: &'static str,
    caps: Caps,
    hosts: Vec<String>,
    handler: F,
) where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let slots = Slots::new(caps.total, caps.per_peer);
    let hosts: Arc<[String]> = hosts.into();
    // When this listener last logged a refused Host: its own, so that a
    // flood at one listener cannot silence another's warning.
    let last_warned = Arc::new(Sparse::default());
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::warn!("{name}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = slots.admit(peer) else {
            tracing::debug!(?peer, "{name}: connection refused, every slot is busy");
            continue;
        };
        let handler = handler.clone();
        let hosts = hosts.clone();
        let last_warned = last_warned.clone();
        let id = slot.id();
        let task = tokio::spawn(async move {
            let slot = slot;
            let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
            let (response, head_only) = match head {
                Ok(Ok((req, _))) => {
                    let head_only = req.method == "HEAD";
                    match local_host_refusal(&req, &hosts) {
                        Some(refusal) => {
                            if last_warned.due() {
                                let host = req.header("host").unwrap_or("-");
                                tracing::warn!(host, path = %req.path, "{name}: request for a foreign Host refused (a web page trying DNS rebinding?); such lines are logged at most every 10 s");
                            }
                            (refusal, head_only)
                        }
                        None => {
                            slot.set_busy(true);
                            let r = handler(req).await;
                            slot.set_busy(false);
                            (r, head_only)
                        }
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
        slots.attach(id, task.abort_handle());
    }
}

/// Lets a log line through at most once every 10 s, measured on the
/// monotonic clock (a wall clock stepped back would mute it).
#[derive(Default)]
pub struct Sparse {
    /// When the line was last let through, in seconds after `START`, plus 1
    /// (0: never).
    last: std::sync::atomic::AtomicU64,
}

impl Sparse {
    pub const fn new() -> Sparse {
        Sparse {
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the line may be logged now (and it counts as logged).
    pub fn due(&self) -> bool {
        use std::sync::atomic::Ordering;
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs()
            + 1;
        let then = self.last.load(Ordering::Relaxed);
        (then == 0 || now >= then + 10)
            && self
                .last
                .compare_exchange(then, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Largest response body [`fetch`] accepts.
pub const MAX_FETCH: u64 = 64 * 1024 * 1024;

/// Where [`fetch`] connects: a TCP address or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Tcp(a) => write!(f, "{a}"),
            Dest::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One blocking HTTP/1.1 request to `dest` (`Connection: close`, no body):
/// the status code and the body. Every step is bounded by `timeout`. The
/// `Host` is the address, or `localhost` on a Unix socket.
pub fn fetch(
    dest: &Dest,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    match dest {
        Dest::Tcp(addr) => {
            let s = std::net::TcpStream::connect_timeout(addr, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            exchange(s, &addr.to_string(), method, path, headers)
        }
        Dest::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            exchange(s, "localhost", method, path, headers)
        }
    }
}

fn exchange(
    mut s: impl Read + Write,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Error, ErrorKind};
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
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
    fn a_sparse_line_passes_once_per_ten_seconds_and_per_owner() {
        let (a, b) = (Sparse::new(), Sparse::new());
        assert!(a.due());
        assert!(!a.due(), "the second within 10 s");
        assert!(b.due(), "another owner's line is its own");
    }

    #[test]
    fn parses_a_browser_upgrade_head() {
        let head = b"GET /signal?x=1 HTTP/1.1\r\nHost: a:8080\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let r = parse_head(head).unwrap();
        assert!(r.http11);
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
        let addr = Dest::Tcp(listener.local_addr().unwrap());
        let caps = Caps {
            total: 4,
            per_peer: 4,
        };
        let handler = |req: Request| async move {
            let auth = req.header("authorization").unwrap_or("-").to_owned();
            Response::ok("text/plain", format!("{} {} {auth}", req.method, req.path))
        };
        let none = Vec::new();
        tokio::spawn(serve_each(
            Listener::Tcp(listener),
            "test",
            caps,
            none.clone(),
            handler,
        ));
        let dir = std::env::temp_dir().join(format!("ferroturn-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let unix = UnixListener::bind(&path).unwrap();
        tokio::spawn(serve_each(
            Listener::Unix(unix),
            "test",
            caps,
            none,
            handler,
        ));
        let got = tokio::task::spawn_blocking(move || {
            let t = Duration::from_secs(5);
            let a = fetch(&addr, "DELETE", "/x/y", &[("Authorization", "Bearer t")], t);
            let b = fetch(&addr, "HEAD", "/z", &[], t);
            let c = fetch(&Dest::Unix(path), "GET", "/u", &[], t);
            (a.unwrap(), b.unwrap(), c.unwrap())
        })
        .await
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got.0, (200, b"DELETE /x/y Bearer t".to_vec()));
        assert_eq!(got.1, (200, Vec::new()));
        assert_eq!(got.2, (200, b"GET /u -".to_vec()));
    }

    #[test]
    fn local_authorities_are_ip_literals_and_localhost() {
        for h in [
            "127.0.0.1",
            "127.0.0.1:9642",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9642",
            "[2001:db8::1]:1",
            "localhost",
            "LocalHost:9641",
        ] {
            assert!(is_local_authority(h, &[]), "{h}");
        }
        for h in [
            "",
            ":80",
            "evil.example",
            "evil.example:9642",
            "localhost.",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "127.1",
            "::1",
            "[::1",
            "[::1]x",
            "[evil]:80",
            "127.0.0.1:",
            "127.0.0.1:80:80",
            "127.0.0.1:123456",
            "127.0.0.1:8a",
            "[fe80::1%25eth0]",
        ] {
            assert!(!is_local_authority(h, &[]), "{h:?}");
        }
        let also = ["turn1.example.org".to_owned()];
        assert!(is_local_authority("TURN1.example.org:9641", &also));
        assert!(is_local_authority("turn1.example.org", &also));
        assert!(!is_local_authority("turn2.example.org", &also));
        assert!(!is_local_authority("turn1.example.org.evil", &also));
        let req = |head: &str| parse_head(head.as_bytes()).unwrap();
        let status = |head: &str| local_host_refusal(&req(head), &[]).map(|r| r.status);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"), None);
        assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), None);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: localhost\r\nHost: a.b\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("GET / HTTP/1.0\r\nHost: rebind.example\r\n\r\n"),
            Some(421)
        );
        let r = local_host_refusal(&req("GET / HTTP/1.1\r\nHost: a.example:9642\r\n\r\n"), &[])
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(body["error"].as_str().unwrap().contains("Host"), "{body}");
    }

    #[test]
    fn slots_evict_idle_connections_never_busy_ones() {
        let a = Peer::of_ip("127.0.0.1".parse().unwrap());
        let b = Peer::of_ip("::ffff:127.0.0.2".parse().unwrap());
        assert_eq!(b, Peer::Net(Origin::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(
            Peer::of_ip("2001:db8::1".parse().unwrap()),
            Peer::of_ip("2001:db8::2:3".parse().unwrap()),
            "one /64"
        );
        let slots = Slots::new(4, 3);
        // a fills its cap; a fourth connection of a evicts a's oldest.
        let a1 = slots.admit(a).unwrap();
        let a2 = slots.admit(a).unwrap();
        let a3 = slots.admit(a).unwrap();
        a2.set_busy(true);
        let a4 = slots.admit(a).unwrap();
        assert_eq!(slots.len(), 3);
        drop(a1); // already evicted: dropping it changes nothing
        assert_eq!(slots.len(), 3);
        // The next eviction of a skips busy a2 and takes a3.
        let a5 = slots.admit(a).unwrap();
        assert_eq!(slots.len(), 3);
        drop(a3);
        assert_eq!(slots.len(), 3);
        // b gets in; the listener is now full (4), and another b evicts
        // from the heaviest peer, a, not from b.
        let b1 = slots.admit(b).unwrap();
        let b2 = slots.admit(b).unwrap();
        assert_eq!(slots.len(), 4);
        drop(b1);
        assert_eq!(slots.len(), 3, "b1 was not evicted");
        // Nothing idle: refused.
        for s in [&a2, &a4, &a5, &b2] {
            s.set_busy(true);
        }
        let b3 = slots.admit(b).unwrap();
        b3.set_busy(true);
        assert!(slots.admit(b).is_none());
        assert!(slots.admit(Peer::Uid(1000)).is_none());
        drop((a2, a4, a5, b2, b3));
        assert!(slots.is_empty());
    }
}
