//! A SockJS endpoint (protocol 0.3.3, as `sockjs-client` 1.6 speaks it),
//! mounted under a prefix (the demo's `/ws`), that hands each new session
//! to a protocol as a [`Session`] (STOMP in the demo, an echo in tests).
//!
//! Paths under the prefix:
//! - `/`: the greeting; `/info` (GET, OPTIONS): `websocket`,
//!   `cookie_needed`, `origins` and `entropy`;
//! - `/{server}/{session}/websocket`: the WebSocket transport, SockJS
//!   frames in text messages; `/websocket`: a plain WebSocket, one text
//!   message per message;
//! - `/{server}/{session}/xhr` (polling), `xhr_streaming` and
//!   `eventsource`: the receiving requests of the HTTP transports, and
//!   `xhr_send`: the client's messages to a session they opened.
//!
//! Frames (see [`frame`]): `o` opens, `h` is a heartbeat (every
//! [`Settings::heartbeat`], `[demo] sockjs_heartbeat`), `a[...]` carries
//! messages, `c[code,"reason"]` closes: `c[3000,"Go away!"]` when the
//! protocol ends, `c[2010,"Another connection still open"]` to a second
//! receiving request of a session (the first is left alone), and the
//! limits' codes below. The iframe, htmlfile and JSONP transports are not
//! served (404): `sockjs-client` uses them only where none of these work.
//!
//! Cross-origin pages: a request whose `Origin` is neither one of `[demo]
//! allowed_origins` nor the demo's own (as `/signal` decides, see
//! [`super::own_origin`]) gets 403, whatever the path; the others get
//! `Access-Control-Allow-Origin` with their origin (`*` without one) and
//! `Access-Control-Allow-Credentials: true`. The protocol's suite answers
//! the opaque origin `null` with `*`; here it is refused, as on `/signal`.
//!
//! Limits (a session lives across HTTP requests, so the demo's cap on
//! connections does not bound sessions):
//! - at most [`Settings::sessions_per_ip`] ([`SESSIONS_PER_IP`]) sessions
//!   per IP address or IPv6 /64 and [`Settings::max_sessions`]
//!   ([`MAX_SESSIONS`]) in all, over every transport: one over them is
//!   answered `c[1013,"Too many sessions"]`; when the endpoint is full, a
//!   newcomer from a site (an address, or an IPv6 /48) holding fewer than
//!   the busiest takes the place of the busiest's oldest session, closed
//!   with that frame, so a few addresses cannot lock everyone out;
//! - an `xhr_send` body over [`MAX_MESSAGE`] is answered 413 and closes its
//!   session with `c[1009,"Message too big"]` (so does a WebSocket message
//!   over it); a malformed one is answered 500 and changes nothing;
//! - what a session's client has not taken yet is bounded by
//!   [`OUTBOX_BYTES`], and what its protocol has not read yet by
//!   [`INBOX_BYTES`] (a sender waits up to [`INBOX_WAIT`] for room):
//!   past either the session is closed with `c[1008,...]`; a WebSocket
//!   whose client takes nothing for [`WRITE_STALL`] is closed;
//! - a session with no receiving request for [`Settings::disconnect_delay`]
//!   (`[demo] sockjs_disconnect_delay`) is closed; a closed one answers
//!   its close frame for that long, then is forgotten;
//! - a receiving request ends after [`RECEIVER_LIFETIME`] (a poll with
//!   `h`), and a streaming one after [`Settings::response_limit`] bytes
//!   ([`RESPONSE_LIMIT`]): the client opens the next one, as the protocol
//!   intends.
//!
//! A session belongs to the address that opened it: another address gets
//! 404 for its id.
//!
//! [`router`] gives the endpoint's axum router, with its own answer
//! timeout. Mount it outside [`http::limits`]: its 4 KiB body cap would
//! refuse `xhr_send` bodies this endpoint takes.

pub mod frame;
mod sessions;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Bytes;
use tower_http::timeout::TimeoutLayer;

use super::session::{self, Outgoing, Session};
use crate::http;
use frame::Wrap;
use sessions::{Attach, Inbox, Opened, Refused, Registry};

/// What runs the protocol of each new session; it returns when the
/// session's `incoming` ends (or sooner, closing it).
pub type Handler = Arc<dyn Fn(Session) -> BoxFuture<'static, ()> + Send + Sync>;

/// Sessions one IP address (or IPv6 /64) may hold at once.
pub const SESSIONS_PER_IP: usize = 64;
/// Sessions the endpoint holds at once. Each costs at most
/// [`OUTBOX_BYTES`] + [`INBOX_BYTES`] of queued messages: 192 MiB for
/// all of them, inside the TURN process.
pub const MAX_SESSIONS: usize = 512;
/// Largest message (an `xhr_send` body, a WebSocket message), as the
/// demo's signaling and STOMP frames.
pub const MAX_MESSAGE: usize = super::signal::MAX_MESSAGE;
/// Bytes of messages a session's client has not taken yet; past it the
/// session is closed, `c[1008,"Client does not read its messages"]`.
pub const OUTBOX_BYTES: usize = 256 << 10;
/// Bytes of messages the protocol has not read yet; a new message waits up
/// to [`INBOX_WAIT`] for room, then the session is closed, `c[1008,"Client
/// sends faster than it is served"]`.
pub const INBOX_BYTES: usize = 128 << 10;
/// How long a client's message waits for its protocol to make room.
pub const INBOX_WAIT: Duration = Duration::from_secs(5);
/// Bytes after which a streaming response (`xhr_streaming`,
/// `eventsource`) ends and the client opens the next: the client keeps a
/// response's whole text until it ends (the protocol's default).
pub const RESPONSE_LIMIT: usize = 128 << 10;
/// Longest life of a receiving request: the demo's HTTP server gives a
/// connection [`http::CONNECTION_TIMEOUT`] from its accept, its head
/// included; a receiver ends well within it (a poll with a heartbeat, a
/// stream by ending), so that the client sees a clean end and opens the
/// next one.
pub const RECEIVER_LIFETIME: Duration = http::CONNECTION_TIMEOUT
    .saturating_sub(http::HEAD_TIMEOUT)
    .saturating_sub(Duration::from_secs(5));
/// How long a WebSocket write may wait for its client to read.
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// Largest WebSocket frame or message read at all: a message's JSON
/// escapes may make it longer than the [`MAX_MESSAGE`] it decodes to.
const WS_LIMIT: usize = 4 * MAX_MESSAGE;
/// Time a closing WebSocket gets to flush its last frames.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Heartbeat interval unless `[demo] sockjs_heartbeat` says otherwise.
pub const DEFAULT_HEARTBEAT: u64 = 25;
/// Disconnect delay unless `[demo] sockjs_disconnect_delay` says
/// otherwise.
pub const DEFAULT_DISCONNECT_DELAY: u64 = 5;

/// Close codes and reasons of the frames this endpoint sends by itself.
pub mod close {
    /// The protocol ended the session without saying why.
    pub const GO_AWAY: (u16, &str) = (3000, "Go away!");
    /// A second receiving request while one is open.
    pub const ANOTHER_RECEIVER: (u16, &str) = (2010, "Another connection still open");
    /// Over [`super::MAX_SESSIONS`] or [`super::SESSIONS_PER_IP`].
    pub const TOO_MANY: (u16, &str) = (1013, "Too many sessions");
    /// A message over [`super::MAX_MESSAGE`].
    pub const TOO_BIG: (u16, &str) = (1009, "Message too big");
    /// The client left [`super::OUTBOX_BYTES`] untaken.
    pub const SLOW_READER: (u16, &str) = (1008, "Client does not read its messages");
    /// The protocol had no room for the client's messages for
    /// [`super::INBOX_WAIT`].
    pub const TOO_FAST: (u16, &str) = (1008, "Client sends faster than it is served");
    /// A WebSocket message that is not text, or not SockJS's JSON.
    pub const UNSUPPORTED: (u16, &str) = (1003, "Text messages only");
}

/// The endpoint's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interval of heartbeat frames on an otherwise quiet receiver.
    pub heartbeat: Duration,
    /// How long a session may have no receiving request.
    pub disconnect_delay: Duration,
    /// Origins besides the demo's own whose pages may use the endpoint
    /// (`[demo] allowed_origins`, lower case).
    pub allowed_origins: Vec<String>,
    pub sessions_per_ip: usize,
    pub max_sessions: usize,
    pub response_limit: usize,
}

impl Settings {
    /// The demo's settings.
    pub fn from_limits(l: &super::Limits) -> Settings {
        Settings {
            heartbeat: l.sockjs_heartbeat,
            disconnect_delay: l.sockjs_disconnect_delay,
            allowed_origins: l.allowed_origins.clone(),
            sessions_per_ip: SESSIONS_PER_IP,
            max_sessions: MAX_SESSIONS,
            response_limit: RESPONSE_LIMIT,
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            heartbeat: Duration::from_secs(DEFAULT_HEARTBEAT),
            disconnect_delay: Duration::from_secs(DEFAULT_DISCONNECT_DELAY),
            allowed_origins: Vec::new(),
            sessions_per_ip: SESSIONS_PER_IP,
            max_sessions: MAX_SESSIONS,
            response_limit: RESPONSE_LIMIT,
        }
    }
}

struct Endpoint {
    settings: Settings,
    handler: Handler,
    registry: Arc<Registry>,
}

/// The endpoint's router, to nest under its prefix (`Router::nest("/ws",
/// router(...))`): requests need the [`http::Client`] that [`http::serve`]
/// puts in their extensions.
pub fn router(settings: Settings, handler: Handler) -> Router {
    let endpoint = Arc::new(Endpoint {
        registry: Registry::new(&settings),
        settings,
        handler,
    });
    Router::new()
        .fallback(answer)
        .with_state(endpoint)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            http::ANSWER_TIMEOUT,
        ))
}

/// The cache rule of every dynamic answer (the suite's
/// `verify_not_cached`).
const NO_CACHE: &str = "no-store, no-cache, must-revalidate, max-age=0";
/// What an OPTIONS answer may be cached for: a year.
const YEAR: u64 = 31_536_000;

/// A request's transport, the last part of a session URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Xhr,
    XhrStreaming,
    XhrSend,
    EventSource,
}

impl Transport {
    fn of(name: &str) -> Option<Transport> {
        Some(match name {
            "websocket" => Transport::WebSocket,
            "xhr" => Transport::Xhr,
            "xhr_streaming" => Transport::XhrStreaming,
            "xhr_send" => Transport::XhrSend,
            "eventsource" => Transport::EventSource,
            _ => return None,
        })
    }

    /// The method it takes besides OPTIONS.
    fn method(self) -> Method {
        match self {
            Transport::WebSocket | Transport::EventSource => Method::GET,
            _ => Method::POST,
        }
    }
}

/// What a path under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Greeting,
    Info,
    RawWebSocket,
    Session { id: String, transport: Transport },
    NotFound,
}

fn route(path: &str) -> Route {
    match path {
        "" | "/" => return Route::Greeting,
        "/info" => return Route::Info,
        "/websocket" => return Route::RawWebSocket,
        _ => {}
    }
    let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
    let (Some(server), Some(id), Some(transport), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::NotFound;
    };
    match Transport::of(transport) {
        Some(transport) if frame::valid_id(server) && frame::valid_id(id) => Route::Session {
            id: id.to_owned(),
            transport,
        },
        _ => Route::NotFound,
    }
}

/// The CORS headers a request gets, once its origin is let in.
struct Cors {
    origin: Option<HeaderValue>,
    request_headers: Option<HeaderValue>,
}

impl Cors {
    /// Let `headers`' origin in; `None` if it is refused.
    fn check(headers: &HeaderMap, allowed: &[String]) -> Option<Cors> {
        let origin = headers.get(header::ORIGIN);
        if let Some(o) = origin {
            let text = o.to_str().unwrap_or("");
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let listed = text != "null" && allowed.iter().any(|a| a.eq_ignore_ascii_case(text));
            if !listed && !super::own_origin(text, host) {
                return None;
            }
        }
        Some(Cors {
            origin: origin.cloned(),
            request_headers: headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .filter(|v| !v.is_empty())
                .cloned(),
        })
    }

    fn apply(&self, r: &mut Response) {
        let h = r.headers_mut();
        match &self.origin {
            Some(o) => {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
                h.insert(header::VARY, HeaderValue::from_static("Origin"));
            }
            None => {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if let Some(v) = &self.request_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
    }
}

/// Every request under the prefix.
async fn answer(State(ep): State<Arc<Endpoint>>, req: Request) -> Response {
    let Some(cors) = Cors::check(req.headers(), &ep.settings.allowed_origins) else {
        return http::error(
            StatusCode::FORBIDDEN,
            "cross-origin SockJS refused: list the page's origin in [demo] allowed_origins",
        );
    };
    let route = route(req.uri().path());
    let method = req.method().clone();
    let mut response = match (route, &method) {
        (Route::Greeting, &Method::GET | &Method::HEAD) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=UTF-8"),
                (header::CACHE_CONTROL, "public, max-age=31536000"),
            ],
            "Welcome to SockJS!\n",
        )
            .into_response(),
        (Route::Greeting, _) => not_allowed("GET, HEAD"),
        (Route::Info, &Method::GET) => info(&ep.settings),
        (Route::Info, &Method::OPTIONS) => options("OPTIONS, GET"),
        (Route::Info, _) => not_allowed("OPTIONS, GET"),
        (Route::RawWebSocket, &Method::GET) => return websocket(ep, req, false).await,
        (Route::RawWebSocket, _) => not_allowed("GET"),
        (Route::Session { transport, .. }, m) if *m == Method::OPTIONS => {
            if transport == Transport::WebSocket {
                not_allowed("GET")
            } else {
                options(&format!("OPTIONS, {}", transport.method()))
            }
        }
        (Route::Session { transport, .. }, m) if *m != transport.method() => {
            if transport == Transport::WebSocket {
                not_allowed("GET")
            } else {
                not_allowed(&format!("OPTIONS, {}", transport.method()))
            }
        }
        (Route::Session { transport, id }, _) => {
            let client = client_of(&req);
            match transport {
                Transport::WebSocket => return websocket(ep, req, true).await,
                Transport::XhrSend => send(&ep, &id, client, req).await,
                Transport::Xhr => receive(&ep, &id, client, Wrap::Lines, false),
                Transport::XhrStreaming => receive(&ep, &id, client, Wrap::Lines, true),
                Transport::EventSource => receive(&ep, &id, client, Wrap::Events, true),
            }
        }
        (Route::NotFound, _) => http::error(StatusCode::NOT_FOUND, "no such SockJS path"),
    };
    cors.apply(&mut response);
    response
}

/// Who sent a request: its [`http::Peer`] for the caps and its address.
#[derive(Debug, Clone, Copy)]
struct Source {
    peer: http::Peer,
    ip: IpAddr,
}

fn client_of(req: &Request) -> Source {
    match req.extensions().get::<http::Client>() {
        Some(c) => Source {
            peer: c.peer,
            ip: c.addr.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip()),
        },
        None => Source {
            peer: http::Peer::of_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        },
    }
}

/// 405 with `Allow`, no body (the suite's `verify405`).
fn not_allowed(allow: &str) -> Response {
    let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
    if let Ok(v) = HeaderValue::from_str(allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// A preflight's answer, cacheable for a year.
fn options(methods: &str) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000"),
    );
    if let Ok(v) = HeaderValue::from_str(&frame::http_date(now + YEAR)) {
        h.insert(header::EXPIRES, v);
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(YEAR));
    if let Ok(v) = HeaderValue::from_str(methods) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    r
}

/// `/info`: what the client needs before it picks a transport.
fn info(settings: &Settings) -> Response {
    let _ = settings;
    let mut entropy = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut entropy);
    let body = serde_json::json!({
        "websocket": true,
        "cookie_needed": false,
        "origins": ["*:*"],
        "entropy": u32::from_be_bytes(entropy),
    })
    .to_string();
    (
        [
            (header::CONTENT_TYPE, "application/json; charset=UTF-8"),
            (header::CACHE_CONTROL, NO_CACHE),
        ],
        body,
    )
        .into_response()
}

/// A receiving request: `xhr` (one answer), `xhr_streaming` or
/// `eventsource` (frames as they come, until [`RESPONSE_LIMIT`] or
/// [`RECEIVER_LIFETIME`]).
fn receive(ep: &Endpoint, id: &str, from: Source, wrap: Wrap, streaming: bool) -> Response {
    let content_type = match wrap {
        Wrap::Lines => "application/javascript; charset=UTF-8",
        Wrap::Events => "text/event-stream; charset=UTF-8",
    };
    let head = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, NO_CACHE),
    ];
    let prelude = wrap.prelude(streaming);
    // A whole answer of one frame.
    let once = |frame: String| {
        let mut body = prelude.clone();
        body.push_str(&wrap.frame(&frame));
        (head.clone(), body).into_response()
    };
    let session = match ep.registry.open(id, from.peer, from.ip, &ep.handler) {
        Opened::Session(s) => s,
        Opened::Refused(Refused::Full) => {
            return once(frame::close(close::TOO_MANY.0, close::TOO_MANY.1));
        }
        Opened::Refused(Refused::Foreign) => {
            return http::error(StatusCode::NOT_FOUND, "no such session");
        }
    };
    let receiver = match session.attach() {
        Attach::Closed(frame) => return once(frame),
        Attach::Busy => {
            return once(frame::close(
                close::ANOTHER_RECEIVER.0,
                close::ANOTHER_RECEIVER.1,
            ));
        }
        Attach::Receiver(r) => r,
    };
    let stream = sessions::ReceiverBody {
        receiver,
        wrap,
        streaming,
        prelude: Some(prelude),
        heartbeat: ep.settings.heartbeat,
        limit: ep.settings.response_limit,
    }
    .into_stream();
    (head, Body::from_stream(stream)).into_response()
}

/// `xhr_send`: the client's messages, into its session's protocol.
async fn send(ep: &Endpoint, id: &str, from: Source, req: Request) -> Response {
    let Some(session) = ep.registry.find(id, from.peer) else {
        return http::error(StatusCode::NOT_FOUND, "no such session");
    };
    let text_head = |status: StatusCode, body: &'static str| {
        (
            status,
            [
                (header::CONTENT_TYPE, "text/plain; charset=UTF-8"),
                (header::CACHE_CONTROL, NO_CACHE),
            ],
            body,
        )
            .into_response()
    };
    let too_big = |n: Option<u64>| {
        session.close(close::TOO_BIG);
        let n = n.map_or_else(|| "more than the limit".to_owned(), |n| n.to_string());
        tracing::debug!(session = id, "sockjs: message too big, closing the session");
        http::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "message too large: {n} bytes, the limit is {MAX_MESSAGE}; the session is closed"
            ),
        )
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_MESSAGE as u64) {
        return too_big(announced);
    }
    // While the body comes, the client sets the pace: the connection is
    // not busy (never closed to make room, see `http::Slots`) but idle, so
    // that requests whose bodies trickle or never come cannot hold every
    // slot. It is busy again once the body is in, and its slot is given
    // back with the answer (the connection then only writes it and
    // closes).
    let slot = req
        .extensions()
        .get::<http::Client>()
        .and_then(http::Client::take_slot);
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), MAX_MESSAGE)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_big(None),
        Err(_) => return http::error(StatusCode::BAD_REQUEST, "the request body broke off"),
    };
    if let Some(slot) = &slot {
        slot.set_busy(true);
    }
    let messages = match frame::parse_payload(&body) {
        Ok(m) => m,
        Err(frame::Payload::Empty) => {
            return text_head(StatusCode::INTERNAL_SERVER_ERROR, "Payload expected.");
        }
        Err(frame::Payload::Broken) => {
            return text_head(StatusCode::INTERNAL_SERVER_ERROR, "Broken JSON encoding.");
        }
    };
    match session.deliver(messages).await {
        Ok(()) => text_head(StatusCode::NO_CONTENT, ""),
        Err(sessions::InboxError::Closed) => {
            http::error(StatusCode::NOT_FOUND, "the session is closed")
        }
        Err(sessions::InboxError::TooFast) => {
            session.close(close::TOO_FAST);
            http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the session's messages are not read fast enough; it is closed",
            )
        }
    }
}

/// The two WebSocket transports: SockJS frames (`framed`) or plain
/// messages. Handshake checks are the demo's ([`super::upgrade_refusal`]).
async fn websocket(ep: Arc<Endpoint>, req: Request, framed: bool) -> Response {
    let has_upgrade = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if !has_upgrade {
        return http::error(
            StatusCode::BAD_REQUEST,
            "Can \"Upgrade\" only to \"WebSocket\".",
        );
    }
    if let Some(refusal) = super::upgrade_refusal(req.headers(), &ep.settings.allowed_origins) {
        return refusal;
    }
    let from = client_of(&req);
    let client = req.extensions().get::<http::Client>().cloned();
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(refused) => return refused.into_response(),
    };
    let slot = client.as_ref().and_then(http::Client::take_slot);
    ws.max_message_size(WS_LIMIT)
        .max_frame_size(WS_LIMIT)
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            let task = tokio::spawn(ws_session(socket, ep, from, framed));
            if let Some(slot) = &slot {
                slot.attach(task.abort_handle());
            }
            let _ = task.await;
            drop(slot);
        })
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

/// Write `msg`, waiting at most [`WRITE_STALL`] for the client.
async fn write(sink: &mut Sink, msg: Message) -> bool {
    matches!(
        tokio::time::timeout(WRITE_STALL, sink.send(msg)).await,
        Ok(Ok(()))
    )
}

/// Messages taken from the protocol at once into one `a[...]` frame.
const BATCH: usize = 64;

/// One WebSocket session, from the upgrade to its end: this task reads
/// the client into the protocol, [`ws_writer`] writes the protocol's
/// messages and the heartbeats, so that neither waits for the other.
async fn ws_session(socket: WebSocket, ep: Arc<Endpoint>, from: Source, framed: bool) {
    let (mut sink, mut stream) = socket.split();
    let Some(seat) = ep.registry.seat(from.peer) else {
        let (code, reason) = close::TOO_MANY;
        if framed {
            write(&mut sink, Message::Text(frame::close(code, reason).into())).await;
        }
        finish(&mut sink, framed, code, reason).await;
        return;
    };
    if framed && !write(&mut sink, Message::Text(frame::OPEN.into())).await {
        return;
    }
    let (session, in_tx, out_rx) = session::pair(from.ip);
    tokio::spawn((ep.handler)(session));
    let mut inbox = Inbox::new(in_tx);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let mut writer = tokio::spawn(ws_writer(
        sink,
        out_rx,
        stop_rx,
        framed,
        ep.settings.heartbeat,
    ));
    // Why the reader stops: a close for the writer to send, or none when
    // the client left or broke the protocol (the suite: broken JSON ends
    // the connection abruptly), or the writer ended first.
    enum Stop {
        Close((u16, &'static str)),
        Abrupt,
        WriterDone,
    }
    let stop = loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = &mut writer => break Stop::WriterDone,
            _ = seat.evicted.notified() => break Stop::Close(close::TOO_MANY),
        };
        let t = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => break Stop::Close(close::UNSUPPORTED),
            Some(Err(e)) if is_too_long(&e) => break Stop::Close(close::TOO_BIG),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Stop::Abrupt,
        };
        let messages = if framed {
            if t.is_empty() {
                continue;
            }
            match frame::parse_payload(t.as_bytes()) {
                Ok(m) => m,
                Err(_) => break Stop::Abrupt,
            }
        } else {
            vec![t.to_string()]
        };
        if messages.iter().map(String::len).sum::<usize>() > MAX_MESSAGE {
            break Stop::Close(close::TOO_BIG);
        }
        match inbox.push_all(messages).await {
            Ok(()) => {}
            Err(sessions::InboxError::TooFast) => break Stop::Close(close::TOO_FAST),
            // The protocol ended: the writer sends its close.
            Err(sessions::InboxError::Closed) => {}
        }
    };
    // The writer learns why before the protocol hears the end: a protocol
    // that ends at once drops its sender, and a writer that saw that first
    // would close with its own "Go away!" instead of this reason.
    if let Stop::Close(c) = &stop {
        let _ = stop_tx.send(owned(*c));
    }
    drop(inbox);
    match stop {
        Stop::Close(_) => {
            let flush = WRITE_STALL + FLUSH_TIMEOUT;
            if tokio::time::timeout(flush, &mut writer).await.is_err() {
                writer.abort();
            }
        }
        Stop::Abrupt => writer.abort(),
        Stop::WriterDone => {}
    }
    drop(seat);
}

/// Write the protocol's messages (batched into `a[...]` frames when
/// `framed`) and heartbeats (`h`, or pings on a plain WebSocket) until the
/// protocol closes or ends, the reader asks for a close (`stop`), or the
/// client stops taking what is written; then the close.
async fn ws_writer(
    mut sink: Sink,
    mut out_rx: tokio::sync::mpsc::Receiver<Outgoing>,
    mut stop: tokio::sync::oneshot::Receiver<(u16, String)>,
    framed: bool,
    every: Duration,
) {
    let text = |s: String| Message::Text(s.into());
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let end: Option<(u16, String)> = loop {
        tokio::select! {
            // A close the reader asks for goes before whatever else is
            // ready (the protocol's end among them).
            biased;
            c = &mut stop => break c.ok(),
            out = out_rx.recv() => match out {
                Some(Outgoing::Text(first)) if framed => {
                    // What else is waiting goes in the same frame; a close
                    // taken with it follows the frame.
                    let mut batch = vec![first];
                    let mut then_close = None;
                    while batch.len() < BATCH {
                        match out_rx.try_recv() {
                            Ok(Outgoing::Text(t)) => batch.push(t),
                            Ok(Outgoing::Close { code, reason }) => {
                                then_close = Some((code, reason));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let f = frame::messages(batch.iter().map(String::as_str));
                    if !write(&mut sink, text(f)).await {
                        break None;
                    }
                    if then_close.is_some() {
                        break then_close;
                    }
                }
                Some(Outgoing::Text(t)) => {
                    if !write(&mut sink, text(t)).await {
                        break None;
                    }
                }
                Some(Outgoing::Close { code, reason }) => break Some((code, reason)),
                None => break Some(owned(close::GO_AWAY)),
            },
            _ = beat.tick() => {
                let m = if framed { text(frame::HEARTBEAT.into()) } else { Message::Ping(Bytes::new()) };
                if !write(&mut sink, m).await {
                    break None;
                }
            }
        }
    };
    drop(out_rx);
    if let Some((code, reason)) = end {
        if framed {
            write(&mut sink, text(frame::close(code, &reason))).await;
        }
        finish(&mut sink, framed, code, &reason).await;
    }
}

fn owned((code, reason): (u16, &str)) -> (u16, String) {
    (code, reason.to_owned())
}

fn is_too_long(e: &axum::Error) -> bool {
    let Some(e) = std::error::Error::source(e) else {
        return false;
    };
    matches!(
        e.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Close the WebSocket: with the session's code on a plain one (a code
/// the WebSocket protocol lets an endpoint send, else 1011), with 1000 on
/// a framed one, whose code went in its `c` frame.
async fn finish(sink: &mut Sink, framed: bool, code: u16, reason: &str) {
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    let (code, reason) = match (framed, sendable) {
        (true, _) => (1000, "Normal closure".to_owned()),
        (false, true) => (code, reason.to_owned()),
        (false, false) => (1011, reason.to_owned()),
    };
    let mut reason = reason;
    // A close frame's reason fits in 123 bytes (RFC 6455 §5.5).
    while reason.len() > 123 {
        reason.pop();
    }
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/"), Route::Greeting);
        assert_eq!(route(""), Route::Greeting);
        assert_eq!(route("/info"), Route::Info);
        assert_eq!(route("/websocket"), Route::RawWebSocket);
        assert_eq!(
            route("/000/abc/xhr"),
            Route::Session {
                id: "abc".into(),
                transport: Transport::Xhr
            }
        );
        assert_eq!(
            route("/a/a/eventsource"),
            Route::Session {
                id: "a".into(),
                transport: Transport::EventSource
            }
        );
        // The suite's notFound and invalidPaths, and transports not served.
        for p in [
            "/a",
            "/a.html",
            "//",
            "///",
            "/a/a",
            "/a/a/",
            "/a/",
            "//xhr",
            "/a./a/xhr",
            "/a/a./xhr",
            "/./././xhr",
            "////xhr",
            "/a/a/htmlfile",
            "/a/a/jsonp",
            "/a/a/xhr/x",
            "/iframe.html",
        ] {
            assert_eq!(route(p), Route::NotFound, "{p}");
        }
    }

    #[test]
    fn cors_follows_the_origin_rule() {
        let allowed = vec!["https://app.example".to_owned()];
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.insert(*n, HeaderValue::from_static(v));
            }
            h
        };
        let status = |pairs: &[(&'static str, &'static str)]| {
            Cors::check(&headers(pairs), &allowed).map_or(Some(403), |_| None)
        };
        assert_eq!(status(&[("host", "127.0.0.1:8080")]), None);
        assert_eq!(
            status(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080")
            ]),
            None
        );
        assert_eq!(
            status(&[("host", "turn.example"), ("origin", "https://APP.example")]),
            None
        );
        assert_eq!(
            status(&[("host", "turn.example"), ("origin", "http://evil.example")]),
            Some(403)
        );
        assert_eq!(
            status(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
            Some(403)
        );
        assert_eq!(
            status(&[("host", "evil.example"), ("origin", "http://evil.example")]),
            Some(403)
        );

        let mut r = StatusCode::OK.into_response();
        Cors::check(
            &headers(&[
                ("host", "h"),
                ("origin", "https://app.example"),
                ("access-control-request-headers", "a, b"),
            ]),
            &allowed,
        )
        .unwrap()
        .apply(&mut r);
        let h = r.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "a, b");
        let mut r = StatusCode::OK.into_response();
        Cors::check(&headers(&[("host", "h")]), &allowed)
            .unwrap()
            .apply(&mut r);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(
            !r.headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_HEADERS)
        );
    }

    #[test]
    fn preflight_is_cacheable() {
        let r = options("OPTIONS, POST");
        assert_eq!(r.status(), 204);
        let h = r.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "OPTIONS, POST");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "31536000");
        assert!(
            h[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("public")
        );
        assert!(h[header::EXPIRES].to_str().unwrap().ends_with(" GMT"));
        assert!(RECEIVER_LIFETIME >= Duration::from_secs(5));
    }
}
