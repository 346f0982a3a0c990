//! What the HTTP listeners (the demo, `/metrics`, the admin API) add to
//! hyper and axum: per-client connection caps that close idle connections
//! to make room ([`Slots`]), the accept loop that applies them with
//! hyper's limits and timeouts ([`serve`]), the `Host` check of the
//! local-only listeners ([`check_host`]), and [`fetch`], the blocking
//! one-shot client of `ferroturn sessions` and `kill`, on hyper's client.
//!
//! hyper reads and writes HTTP/1.1 (RFC 9112). A request head must arrive
//! whole within [`HEAD_TIMEOUT`] of the accept, however it trickles
//! (hyper's header read timeout, armed before the first byte); it may hold
//! at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers (431 otherwise).
//! One request is answered per connection, which is then closed.
//! tower-http refuses bodies over [`MAX_BODY`] (413, none of these
//! listeners reads one) and bounds a handler to [`ANSWER_TIMEOUT`] (503);
//! a connection gets [`CONNECTION_TIMEOUT`] in all until its answer is
//! written or it has become a WebSocket.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::AbortHandle;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::addr::Origin;

/// Largest request head accepted (request line and headers): hyper's
/// read buffer, which a head must fit.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers accepted.
pub const MAX_HEADERS: usize = 64;
/// Time a client gets to send its whole request head, from the moment it
/// is accepted: a sender that trickles a byte at a time is cut off too.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a handler gets to make its answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets to take a whole response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection's whole life up to the end of its answer (or its switch
/// to a WebSocket).
pub const CONNECTION_TIMEOUT: Duration = HEAD_TIMEOUT
    .saturating_add(ANSWER_TIMEOUT)
    .saturating_add(WRITE_TIMEOUT);
/// Largest request body announced: these listeners read none.
pub const MAX_BODY: usize = 4 * 1024;

/// An error status with a one-line plain-text body,
/// `404 Not Found: TEXT`.
pub fn error(status: StatusCode, text: &str) -> Response {
    let reason = status.canonical_reason().unwrap_or("Status");
    let body = format!("{} {reason}: {text}\n", status.as_u16());
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A JSON body with `status`, never cached.
pub fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("serializable");
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

/// A JSON body `{"error": text}` with `status`, never cached.
pub fn json_error(status: StatusCode, text: &str) -> Response {
    json(status, &serde_json::json!({ "error": text }))
}

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
pub fn local_host_refusal(
    version: Version,
    headers: &HeaderMap,
    also: &[String],
) -> Option<Response> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some(json_error(
            StatusCode::BAD_REQUEST,
            "more than one Host header",
        ));
    }
    match host {
        None if version >= Version::HTTP_11 => Some(json_error(
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request needs a Host header",
        )),
        None => None,
        Some(h) if h.to_str().is_ok_and(|h| is_local_authority(h.trim(), also)) => None,
        Some(_) => Some(json_error(
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers only requests addressed to an IP address or localhost (Host header)",
        )),
    }
}

/// A local-only listener's `Host` rule: its name for the log, the names
/// it answers besides IP literals and `localhost`, and when it last
/// logged a refusal (its own, so that a flood at one listener cannot
/// silence another's warning).
#[derive(Clone)]
pub struct LocalOnly {
    name: &'static str,
    also: Arc<[String]>,
    warned: Arc<Sparse>,
}

impl LocalOnly {
    pub fn new(name: &'static str, also: Vec<String>) -> LocalOnly {
        LocalOnly {
            name,
            also: also.into(),
            warned: Arc::new(Sparse::new()),
        }
    }
}

/// Middleware: requests refused by [`local_host_refusal`] never reach the
/// handler (a web page must not reach a loopback listener by DNS
/// rebinding); a refusal is logged at most every 10 s.
pub async fn check_host(State(rule): State<LocalOnly>, req: Request, next: Next) -> Response {
    let Some(refusal) = local_host_refusal(req.version(), req.headers(), &rule.also) else {
        return next.run(req).await;
    };
    if rule.warned.due() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        let name = rule.name;
        tracing::warn!(host, path = %req.uri().path(), "{name}: request for a foreign Host refused (a web page trying DNS rebinding?); such lines are logged at most every 10 s");
    }
    refusal
}

/// The limits every listener puts on a request: a body cap and a time
/// for the answer.
pub fn limits(router: Router) -> Router {
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            ANSWER_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
}

/// The client of a request, put in its extensions by [`serve`]: who it
/// is, and its connection's place in [`Slots`].
#[derive(Clone)]
pub struct Client {
    pub peer: Peer,
    /// The TCP address, none on a Unix socket.
    pub addr: Option<SocketAddr>,
    slot: Arc<Mutex<Option<Slot>>>,
}

impl Client {
    fn set_busy(&self, busy: bool) {
        if let Some(s) = &*self.slot.lock().unwrap() {
            s.set_busy(busy);
        }
    }

    /// The connection's slot, for a task that outlives the HTTP exchange
    /// (a WebSocket) to hold and [`Slot::attach`] itself to; idle, as a
    /// WebSocket is unless its owner says otherwise.
    pub fn take_slot(&self) -> Option<Slot> {
        let slot = self.slot.lock().unwrap().take();
        if let Some(s) = &slot {
            s.set_upgraded();
        }
        slot
    }
}

/// A connection of a [`Listener`].
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Serve `router` on `listener` until the process ends, one request per
/// connection. Connections are held in [`Slots`] of `caps`; one that
/// cannot be let in gets `refusal` written (if any, without waiting for
/// its request) and is closed. Each request carries its [`Client`]. `name`
/// labels the log lines.
pub async fn serve(
    listener: Listener,
    name: &'static str,
    caps: Caps,
    refusal: Option<&'static str>,
    router: Router,
) {
    let slots = Slots::new(caps.total, caps.per_peer);
    loop {
        let (stream, peer) = match listener.accept().await {
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
            if let (Some(r), Stream::Tcp(s)) = (refusal, &stream) {
                let _ = s.try_write(r.as_bytes());
            }
            continue;
        };
        let id = slot.id();
        let client = |addr| Client {
            peer,
            addr,
            slot: Arc::new(Mutex::new(Some(slot))),
        };
        let router = router.clone();
        let task = match stream {
            Stream::Tcp(s) => {
                let client = client(s.peer_addr().ok());
                tokio::spawn(connection(s, client, router))
            }
            Stream::Unix(s) => tokio::spawn(connection(s, client(None), router)),
        };
        slots.attach(id, task.abort_handle());
    }
}

/// One connection: one request, answered by `router` (with upgrades, for
/// WebSockets), within [`CONNECTION_TIMEOUT`].
async fn connection<S>(stream: S, client: Client, router: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        let client = client.clone();
        let mut router = router.clone();
        async move {
            // Origin-form only (RFC 9112 §3.2.1): an absolute URI would
            // carry its own authority past the Host check.
            let uri = req.uri();
            if uri.authority().is_some() || !uri.path().starts_with('/') {
                return Ok::<_, Infallible>(error(
                    StatusCode::BAD_REQUEST,
                    "the request target must be a path",
                ));
            }
            req.extensions_mut().insert(client.clone());
            // Busy while its answer is made: never closed to make room.
            client.set_busy(true);
            let answer = tower_service::Service::call(&mut router, req.map(Body::new)).await;
            client.set_busy(false);
            answer
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(false);
    let conn = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
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

/// A TCP or Unix listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// The next connection and whom it comes from.
    pub async fn accept(&self) -> std::io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, from) = l.accept().await?;
                Ok((Stream::Tcp(s), Peer::of_ip(from.ip())))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                // SO_PEERCRED cannot fail on a connected Unix socket; if it
                // did, every such client would share one cap.
                let uid = s.peer_cred().map_or(u32::MAX, |c| c.uid());
                Ok((Stream::Unix(s), Peer::Uid(uid)))
            }
        }
    }
}

/// The connections of one listener, with a cap per [`Peer`] and a cap in
/// all. A new connection is always let in if some connection can make room
/// for it: when its peer is at its cap, one of that peer's idle connections
/// is closed; when the listener is full, one of the idle connections of the
/// site holding the most is closed (else one of anybody's). A site is a
/// [`Peer`], except that the /64s of one IPv6 /48 count as one: whoever
/// holds many /64s usually holds them in one /48. Of the candidates, one
/// still sending its request head goes first, then one whose answer is
/// being read, then a WebSocket; the oldest first within each. Idle means
/// not marked busy: still sending its head, waiting for its response to be
/// read, or anything its owner did not mark. Only when nothing is idle is
/// the new connection refused.
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
    stage: Stage,
    abort: Option<AbortHandle>,
}

/// How far a connection got, in the order they are closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// No complete request head yet.
    Head,
    /// Its request was answered (the answer may still be read).
    Answered,
    /// A WebSocket (its slot was taken by a long-lived task).
    Upgraded,
}

/// Whom the cap on the whole listener weighs: a [`Peer`], with the /64s
/// of an IPv6 /48 counted as one ([`Origin::site`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    Peer(Peer),
    /// The top 48 bits of an IPv6 address.
    V6(u64),
}

impl Site {
    pub fn of(peer: Peer) -> Site {
        match peer {
            Peer::Net(o) => o.site().map_or(Site::Peer(peer), Site::V6),
            Peer::Uid(_) => Site::Peer(peer),
        }
    }
}

impl Table {
    /// The idle connection of a peer matching `of` to close first: the
    /// earliest [`Stage`], the oldest within it.
    fn first_idle(&self, of: impl Fn(Peer) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, e)| !e.busy && of(e.peer))
            .min_by_key(|&(&id, e)| (e.stage, id))
            .map(|(&id, _)| id)
    }

    /// Connections of `peer` now (a scan: a listener holds a few hundred).
    fn held_by(&self, peer: Peer) -> usize {
        self.conns.values().filter(|e| e.peer == peer).count()
    }

    /// The site holding the most connections; of sites holding as many,
    /// one whose idle connection of the earliest [`Stage`] is earliest (so
    /// that a tie between many small sites closes a connection still
    /// sending its head rather than a WebSocket).
    fn heaviest(&self) -> Option<Site> {
        // Per site: connections, and the earliest idle stage (None: none
        // idle) reversed so that earlier weighs more.
        let mut counts: HashMap<Site, (usize, Option<Reverse<Stage>>)> = HashMap::new();
        for e in self.conns.values() {
            let c = counts.entry(Site::of(e.peer)).or_default();
            c.0 += 1;
            if !e.busy {
                c.1 = c.1.max(Some(Reverse(e.stage)));
            }
        }
        counts.into_iter().max_by_key(|&(_, c)| c).map(|(s, _)| s)
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
            Some(t.first_idle(|p| p == peer)?)
        } else if t.conns.len() >= self.max {
            let heaviest = t.heaviest();
            Some(
                t.first_idle(|p| Some(Site::of(p)) == heaviest)
                    .or_else(|| t.first_idle(|_| true))?,
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
                stage: Stage::Head,
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

    /// Whether connection `id` is still held (not evicted, not ended).
    #[cfg(test)]
    pub fn holds(&self, id: u64) -> bool {
        self.table.lock().unwrap().conns.contains_key(&id)
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

    /// Make `task` the one aborted when this connection is evicted (a
    /// WebSocket's task, once the HTTP exchange is over).
    pub fn attach(&self, task: AbortHandle) {
        self.slots.attach(self.id, task);
    }

    /// Mark the connection busy (never evicted) or idle again; busy also
    /// means its request head is in.
    pub fn set_busy(&self, busy: bool) {
        if let Some(e) = self.slots.table.lock().unwrap().conns.get_mut(&self.id) {
            e.busy = busy;
            e.stage = e.stage.max(Stage::Answered);
        }
    }

    /// Mark the connection a WebSocket, idle: closed to make room only
    /// after connections still in their HTTP exchange.
    fn set_upgraded(&self) {
        if let Some(e) = self.slots.table.lock().unwrap().conns.get_mut(&self.id) {
            e.busy = false;
            e.stage = Stage::Upgraded;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.table.lock().unwrap().conns.remove(&self.id);
    }
}

/// How many connections a listener of [`serve`] holds.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// In all.
    pub total: usize,
    /// Per [`Peer`].
    pub per_peer: usize,
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
/// the status code and the body (at most [`MAX_FETCH`] bytes). Connecting,
/// the answer's head and its body each get `timeout`. The `Host` is the
/// address, or `localhost` on a Unix socket. Not for a thread that runs
/// an async runtime.
pub fn fetch(
    dest: &Dest,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let host = match dest {
        Dest::Tcp(a) => a.to_string(),
        Dest::Unix(_) => "localhost".to_owned(),
    };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .header(header::CONNECTION, "close");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(std::io::Error::other)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match dest {
            Dest::Tcp(a) => {
                exchange(within(timeout, TcpStream::connect(a)).await??, req, timeout).await
            }
            Dest::Unix(p) => {
                exchange(
                    within(timeout, UnixStream::connect(p)).await??,
                    req,
                    timeout,
                )
                .await
            }
        }
    })
}

/// `f`, or a TimedOut error after `limit`.
async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> std::io::Result<T> {
    tokio::time::timeout(limit, f).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?}"),
        )
    })
}

async fn exchange<S>(
    stream: S,
    req: hyper::Request<http_body_util::Empty<Bytes>>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let bad = |e: &dyn fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad HTTP answer: {e}"),
        )
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad(&e))?;
    let conn = tokio::spawn(conn);
    let answer = async {
        let res = within(timeout, sender.send_request(req))
            .await?
            .map_err(|e| bad(&e))?;
        let status = res.status().as_u16();
        let body = http_body_util::Limited::new(res.into_body(), MAX_FETCH);
        let body = within(timeout, body.collect())
            .await?
            .map_err(|e| bad(&*e))?
            .to_bytes();
        Ok((status, body.to_vec()))
    }
    .await;
    conn.abort();
    answer
}

/// Largest response body [`fetch`] accepts.
pub const MAX_FETCH: usize = 64 * 1024 * 1024;

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

    #[tokio::test]
    async fn serve_answers_over_tcp_and_unix_and_fetch_reads_it() {
        let caps = Caps {
            total: 4,
            per_peer: 4,
        };
        let router = Router::new().fallback(|req: Request| async move {
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let unix = req.extensions().get::<Client>().unwrap().addr.is_none();
            format!("{} {} {auth} {unix}", req.method(), req.uri().path())
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Dest::Tcp(listener.local_addr().unwrap());
        tokio::spawn(serve(
            Listener::Tcp(listener),
            "test",
            caps,
            None,
            router.clone(),
        ));
        let dir = std::env::temp_dir().join(format!("ferroturn-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let unix = UnixListener::bind(&path).unwrap();
        tokio::spawn(serve(Listener::Unix(unix), "test", caps, None, router));
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
        assert_eq!(got.0, (200, b"DELETE /x/y Bearer t false".to_vec()));
        assert_eq!(got.1, (200, Vec::new()));
        assert_eq!(got.2, (200, b"GET /u - true".to_vec()));
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
    }

    #[test]
    fn local_host_refusals() {
        let status = |version: Version, hosts: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in hosts {
                h.append(header::HOST, axum::http::HeaderValue::from_static(v));
            }
            local_host_refusal(version, &h, &[]).map(|r| r.status().as_u16())
        };
        assert_eq!(status(Version::HTTP_11, &["127.0.0.1:1"]), None);
        assert_eq!(status(Version::HTTP_10, &[]), None);
        assert_eq!(status(Version::HTTP_11, &[]), Some(400));
        assert_eq!(status(Version::HTTP_11, &["localhost", "a.b"]), Some(400));
        assert_eq!(status(Version::HTTP_10, &["rebind.example"]), Some(421));
        assert_eq!(status(Version::HTTP_11, &["a.example:9642"]), Some(421));
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

    /// Many IPv6 /64s of one /48 weigh as one site: a newcomer closes
    /// one of theirs, not a WebSocket of a /48 holding a single one.
    #[test]
    fn slots_weigh_ipv6_by_48_and_close_heads_before_websockets() {
        let peer = |ip: &str| Peer::of_ip(ip.parse().unwrap());
        let slots = Slots::new(4, 2);
        let websocket = slots.admit(peer("2001:db8:1::1")).unwrap();
        websocket.set_upgraded();
        // One connection from each of three /64s of another /48, also
        // WebSockets: by /64 every peer holds one.
        let many: Vec<Slot> = (1..=3)
            .map(|n| {
                let s = slots.admit(peer(&format!("2001:db8:2:{n}::1"))).unwrap();
                s.set_upgraded();
                s
            })
            .collect();
        let mut newcomers = Vec::new();
        for n in 1..=2 {
            newcomers.push(slots.admit(peer(&format!("198.51.100.{n}"))).unwrap());
            assert!(
                slots.holds(websocket.id()),
                "the lone /48's WebSocket stays"
            );
        }
        assert_eq!(many.iter().filter(|s| slots.holds(s.id())).count(), 1);

        // At a peer's cap, its connection still sending its head goes
        // before its older WebSocket.
        let slots = Slots::new(8, 2);
        let a = peer("192.0.2.1");
        let websocket = slots.admit(a).unwrap();
        websocket.set_upgraded();
        let head = slots.admit(a).unwrap();
        let _next = slots.admit(a).unwrap();
        assert!(slots.holds(websocket.id()));
        assert!(!slots.holds(head.id()));

        // A full listener, every site holding one: the connection still
        // sending its head is closed, not the older WebSockets (nor one
        // whose answer is being read, before the head).
        let slots = Slots::new(4, 2);
        let sockets: Vec<Slot> = (1..=2)
            .map(|n| {
                let s = slots.admit(peer(&format!("192.0.2.{n}"))).unwrap();
                s.set_upgraded();
                s
            })
            .collect();
        let answered = slots.admit(peer("192.0.2.3")).unwrap();
        answered.set_busy(true);
        answered.set_busy(false);
        let head = slots.admit(peer("192.0.2.4")).unwrap();
        let newcomer = slots.admit(peer("198.51.100.1")).unwrap();
        newcomer.set_busy(true);
        assert!(!slots.holds(head.id()));
        assert!(slots.holds(answered.id()));
        assert!(sockets.iter().all(|s| slots.holds(s.id())));
        let _next = slots.admit(peer("198.51.100.2")).unwrap();
        assert!(!slots.holds(answered.id()));
        assert!(sockets.iter().all(|s| slots.holds(s.id())));
    }
}
