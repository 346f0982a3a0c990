//! The signaling demo (`ferroturn demo`): the TURN server plus an HTTP
//! server on `[demo] address` with
//! - `/`: the call page (data channel chat, optional camera and microphone,
//!   "relay only", live selected candidate pair),
//! - `/trickle-ice`: candidate gathering against any STUN/TURN server,
//! - `/ice-servers`: `iceServers` JSON with short-lived REST credentials,
//! - `/signal`: WebSocket signaling in mesh rooms of up to `[demo]
//!   room_size` peers, and the classic tutorial's `{event, data}` broadcast
//!   for sessions outside rooms (see [`signal`]).
//! - `/stomp`: STOMP 1.0–1.2 over a plain WebSocket (subprotocols
//!   `v12.stomp`, `v11.stomp`, `v10.stomp`), the broker of [`stomp`].
//!
//! Pages and scripts are embedded in the binary.
//!
//! HTTP is hyper's and axum's, the WebSocket axum's (tungstenite), with
//! the limits of [`http::serve`] (head within [`http::HEAD_TIMEOUT`], the
//! whole exchange within [`http::CONNECTION_TIMEOUT`], capped head and
//! body).
//!
//! Limits, since the demo runs inside the TURN process: one IP address
//! (or IPv6 /64) holds at most `[demo] connections_per_ip` connections,
//! pages and WebSockets together, and the server [`MAX_CONNECTIONS`] (a
//! new connection closes the oldest idle one, see [`http::Slots`]); a
//! WebSocket that sends nothing, not even a pong to the server's pings,
//! for `[demo] idle_timeout` seconds is closed; a WebSocket message over
//! [`signal::MAX_MESSAGE`] gets an error, and a frame or message over
//! [`WS_HARD_LIMIT`] closes the connection (1009); other sessions'
//! messages fill at most [`RELAY_BYTES`] of a client's outbox (the excess
//! is dropped and its sender gets `peer-busy`), and a client that lets
//! its own answers pile up past [`OUTBOX_BYTES`], or reads nothing for
//! [`STALL_TIMEOUT`] while full, is disconnected, which the other
//! members of its room see as `peer-left`; a session sending more
//! than [`signal::RATE_BURST`] messages at once, or more than
//! [`signal::RATE_PER_SECOND`] a second after that, has the excess dropped
//! (and is told once per run of drops), and so has one sending more than
//! [`signal::BYTES_BURST`] at once or [`signal::BYTES_PER_SECOND`] after
//! that.

pub mod ice;
pub mod session;
pub mod signal;
pub mod sockjs;
pub mod stomp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use crate::config::Config;
use crate::http::{self, Caps, Listener};
use ice::IceConfig;
use signal::{Delivery, Hub, PeerId};

/// Connections held at once, from all clients.
pub const MAX_CONNECTIONS: usize = 512;
/// Bytes queued for one WebSocket client, counting [`MESSAGE_OVERHEAD`]
/// per message; a client whose own answers pile up past it unread is
/// disconnected (others' messages stop at [`RELAY_BYTES`]).
/// Four of the largest signaling messages (64 KiB): at most 128 MiB for
/// [`MAX_CONNECTIONS`] inside the TURN process.
pub const OUTBOX_BYTES: usize = 256 << 10;
/// What a queued message costs beyond its payload, so that a flood of
/// tiny messages is bounded too.
const MESSAGE_OVERHEAD: usize = 64;
/// Largest WebSocket frame or message read at all: one over
/// [`signal::MAX_MESSAGE`] but within this is read, answered with an
/// error and dropped; one over it closes the connection (1009). tungstenite
/// buffers a whole frame and a whole message, so a client makes the
/// server hold at most twice this of its input: 256 KiB, 128 MiB for
/// [`MAX_CONNECTIONS`], as much as their outboxes.
pub const WS_HARD_LIMIT: usize = 2 * signal::MAX_MESSAGE;
/// The answer to a connection over the caps, written without waiting for
/// its request.
const TOO_MANY: &str = "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nContent-Length: 62\r\nConnection: close\r\n\r\n429 Too Many Requests: too many connections from your address\n";
/// Time a closing WebSocket gets to flush its last frames.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The demo's connection limits and signaling settings (`[demo]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Silence after which a WebSocket is closed; pings go out every third
    /// of it while the client is silent.
    pub idle_timeout: Duration,
    /// Connections per IP address or IPv6 /64.
    pub per_ip: usize,
    /// Peers one room holds.
    pub room_size: usize,
    /// Origins besides the demo's own whose pages may open `/signal`.
    pub allowed_origins: Vec<String>,
    /// SockJS heartbeat interval and disconnect delay ([`sockjs`]).
    pub sockjs_heartbeat: Duration,
    pub sockjs_disconnect_delay: Duration,
    /// The STOMP broker's settings.
    pub stomp: stomp::Settings,
}

impl Limits {
    pub fn from_config(c: &crate::config::Demo) -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(c.idle_timeout),
            per_ip: c.connections_per_ip,
            room_size: c.room_size,
            allowed_origins: c.allowed_origins.clone(),
            sockjs_heartbeat: Duration::from_secs(c.sockjs_heartbeat),
            sockjs_disconnect_delay: Duration::from_secs(c.sockjs_disconnect_delay),
            stomp: stomp::Settings {
                heartbeat: Duration::from_millis(c.stomp_heartbeat),
                room_size: c.room_size,
                sessions_per_ip: c.stomp_sessions_per_ip,
            },
        }
    }
}

/// Embedded assets: path, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("assets/call.html"),
    ),
    (
        "/trickle-ice",
        "text/html; charset=utf-8",
        include_str!("assets/trickle-ice.html"),
    ),
    (
        "/call.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/call.js"),
    ),
    (
        "/trickle-ice.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/trickle-ice.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    // The call page's way in when WebSocket is blocked: the browser
    // builds of sockjs-client 1.6.1 (MIT) and @stomp/stompjs 7.5.0
    // (Apache-2.0), unchanged from the npm packages tests/js pins (their
    // licences sit beside them; tests/demo_vendor.rs compares the bytes).
    (
        "/vendor/sockjs.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/vendor/sockjs.min.js"),
    ),
    (
        "/vendor/stomp.umd.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/vendor/stomp.umd.min.js"),
    ),
];

/// Pages may load only their own scripts and styles and talk only to
/// this origin (ICE traffic is not governed by CSP).
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Run the TURN server and the demo's HTTP server until SIGINT or SIGTERM.
pub fn run(config: Config) -> std::io::Result<()> {
    let server = crate::io::Server::start(config.clone())?;
    let ice = ice_config(&config, &server.listen);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let listener = TcpListener::bind(config.live.demo.address).await?;
        let addr = listener.local_addr()?;
        tracing::info!(address = %addr, "demo: open http://{addr}/ (call) and http://{addr}/trickle-ice");
        tokio::select! {
            r = serve(listener, ice, Limits::from_config(&config.live.demo)) => r,
            r = crate::io::wait_for_signal() => r,
            r = server.watch_host(&config) => r,
        }
    });
    tracing::info!("shutting down");
    server.stop();
    result
}

/// The `/ice-servers` settings for `config`, with the listen ports the
/// server actually bound (`bound`, in config order). STUN-only listeners
/// (`turn = false`) get a `stun:` URI only.
pub fn ice_config(config: &Config, bound: &[SocketAddr]) -> IceConfig {
    let mut c = config.clone();
    for (l, b) in c.restart.listen.iter_mut().zip(bound) {
        l.address.set_port(b.port());
        if !l.turn {
            // ice_urls gives turn: URIs for every transport listed.
            l.udp = false;
            l.tcp = false;
        }
    }
    IceConfig {
        urls: crate::io::ice_urls(&c),
        secret: config.live.secrets.first().cloned(),
        ttl: config.live.demo.credential_ttl,
    }
}

/// Serve the demo on `listener` forever.
pub async fn serve(listener: TcpListener, ice: IceConfig, limits: Limits) -> std::io::Result<()> {
    let sockjs_settings = sockjs::Settings::from_limits(&limits);
    let broker = Arc::new(stomp::Broker::new(limits.stomp));
    let app = Arc::new(App {
        ice,
        signal: Mutex::new(Signal::new(limits.room_size)),
        next_id: AtomicU64::new(1),
        idle: limits.idle_timeout,
        allowed_origins: limits.allowed_origins,
        stomp: broker.clone(),
    });
    // SockJS sessions at /ws carry STOMP, to the same broker as /stomp.
    // SockJS sits outside `http::limits`: its xhr_send bodies may be up to
    // 64 KiB, and it applies its own caps and timeouts.
    let over_sockjs: sockjs::Handler =
        Arc::new(move |session| Box::pin(stomp::serve(broker.clone(), session)));
    let router = http::limits(Router::new().fallback(answer).with_state(app))
        .nest("/ws", sockjs::router(sockjs_settings, over_sockjs));
    let caps = Caps {
        total: MAX_CONNECTIONS,
        per_peer: limits.per_ip,
    };
    http::serve(
        Listener::Tcp(listener),
        "demo",
        caps,
        Some(TOO_MANY),
        router,
    )
    .await;
    Ok(())
}

struct App {
    ice: IceConfig,
    signal: Mutex<Signal>,
    next_id: AtomicU64,
    idle: Duration,
    allowed_origins: Vec<String>,
    stomp: Arc<stomp::Broker>,
}

/// The hub and the outbox of every connected signaling client.
struct Signal {
    hub: Hub,
    outboxes: HashMap<PeerId, Outbox>,
    /// The origin of the hub's clock ([`Hub::advance`]).
    started: Instant,
}

/// Where messages for one client wait for its writer, bounded in bytes.
struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Bytes queued, by [`Outgoing::cost`].
    queued: Arc<AtomicUsize>,
    /// Messages the writer has handed to the socket so far.
    written: Arc<AtomicU64>,
    /// Since when messages of other sessions found no room here, and what
    /// `written` was then: a client that reads nothing during
    /// [`STALL_TIMEOUT`] of that is cut off.
    full_since: Option<(Instant, u64)>,
    /// Woken when the client is to be cut off: it does not read.
    kick: Arc<Notify>,
}

impl Outbox {
    fn new(tx: mpsc::UnboundedSender<Outgoing>, kick: Arc<Notify>) -> Outbox {
        Outbox {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            written: Arc::new(AtomicU64::new(0)),
            full_since: None,
            kick,
        }
    }
}

/// What the messages of other sessions (relayed, or news of their joining
/// and leaving) may fill of a client's outbox; the rest is kept for the
/// client's own answers, so that others cannot make those overflow.
const RELAY_BYTES: usize = OUTBOX_BYTES - signal::MAX_MESSAGE;
/// How long a client may leave its outbox full of others' messages
/// without reading any of it before it is cut off as one that does not
/// read. While its writer gets anything out, it stays.
const STALL_TIMEOUT: Duration = Duration::from_secs(3);

impl Signal {
    fn new(room_size: usize) -> Signal {
        Signal {
            hub: Hub::new(room_size),
            outboxes: HashMap::new(),
            started: Instant::now(),
        }
    }

    /// Bring the hub's clock to now, before it hears of a session.
    fn advance_clock(&mut self) {
        let now = self.started.elapsed().as_micros() as u64;
        self.hub.advance(now);
    }

    /// Queue `deliveries`, caused by a message (or the leaving) of `from`.
    /// Its own answers always go in; a client whose own answers overflow
    /// its outbox is dropped (its connection closes at once, unflushed).
    /// What goes to others is dropped when it would fill their outbox past
    /// [`RELAY_BYTES`], and `from` is told (`peer-busy`, once per call):
    /// one session never cuts off another by sending it much.
    fn deliver(&mut self, from: PeerId, deliveries: Vec<Delivery>) {
        let mut refused = false;
        for d in deliveries {
            if d.to == from {
                self.send(d.to, Outgoing::Text(d.text));
            } else if !self.relay(d.to, Outgoing::Text(d.text)) {
                refused = true;
            }
        }
        if refused {
            self.send(from, Outgoing::Text(signal::Error::PeerBusy.to_json()));
        }
    }

    /// Queue `o` from another session for `to` if its outbox has room
    /// within [`RELAY_BYTES`]; false if it was dropped. A client that has
    /// read nothing for [`STALL_TIMEOUT`] while full is cut off.
    fn relay(&mut self, to: PeerId, o: Outgoing) -> bool {
        let Some(out) = self.outboxes.get_mut(&to) else {
            return true;
        };
        let queued = out.queued.load(Ordering::Relaxed);
        if queued + o.cost() <= RELAY_BYTES {
            out.full_since = None;
            self.send(to, o);
            return true;
        }
        let written = out.written.load(Ordering::Relaxed);
        let now = Instant::now();
        match out.full_since {
            Some((since, then)) if then == written => {
                if now.duration_since(since) >= STALL_TIMEOUT {
                    self.cut_off(to, queued);
                }
            }
            _ => out.full_since = Some((now, written)),
        }
        false
    }

    fn send(&mut self, to: PeerId, o: Outgoing) {
        let Some(out) = self.outboxes.get(&to) else {
            return;
        };
        let cost = o.cost();
        let queued = out.queued.fetch_add(cost, Ordering::Relaxed) + cost;
        if queued > OUTBOX_BYTES || out.tx.send(o).is_err() {
            self.cut_off(to, queued);
        }
    }

    /// Drop `to`, which does not read its messages: its connection closes
    /// at once, unflushed.
    fn cut_off(&mut self, to: PeerId, queued: usize) {
        tracing::info!(
            peer = to,
            queued,
            "demo: signaling client does not read its messages, disconnecting"
        );
        if let Some(out) = self.outboxes.remove(&to) {
            out.kick.notify_one();
        }
    }
}

enum Outgoing {
    Text(String),
    Ping,
    Close(u16, String),
}

impl Outgoing {
    /// What the message counts against [`OUTBOX_BYTES`].
    fn cost(&self) -> usize {
        MESSAGE_OVERHEAD
            + match self {
                Outgoing::Text(t) => t.len(),
                Outgoing::Ping => 0,
                Outgoing::Close(_, r) => r.len(),
            }
    }
}

/// Any request: pages and `/ice-servers` to GET and HEAD, `/signal` to a
/// WebSocket upgrade.
async fn answer(
    State(app): State<Arc<App>>,
    Extension(client): Extension<http::Client>,
    req: Request,
) -> Response {
    let head_only = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head_only {
        let mut r = http::error(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if req.uri().path() == "/stomp" && !head_only {
        return match upgrade_refusal(req.headers(), &app.allowed_origins) {
            None => stomp_upgrade(req, app, client).await,
            Some(refusal) => refusal,
        };
    }
    if req.uri().path() == "/signal" && !head_only {
        return match upgrade_refusal(req.headers(), &app.allowed_origins) {
            None => upgrade(req, app, client).await,
            Some(refusal) => refusal,
        };
    }
    let visitor = client
        .addr
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    route(req.uri().path(), &app, visitor)
}

/// The response to a plain GET of `path`.
fn route(path: &str, app: &App, visitor: IpAddr) -> Response {
    if path == "/ice-servers" {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = ice::ice_servers(&app.ice, now, visitor).to_string();
        return (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response();
    }
    if path == "/signal" || path == "/stomp" {
        return websocket_only("WebSocket only");
    }
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, ctype, body)) => (
            [
                (header::CONTENT_TYPE, *ctype),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => http::error(StatusCode::NOT_FOUND, &format!("no page at {path}")),
    }
}

/// 426 with `Upgrade: websocket`.
fn websocket_only(text: &str) -> Response {
    let mut r = http::error(StatusCode::UPGRADE_REQUIRED, text);
    r.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    r
}

/// Whether header `name` holds `token` in its comma-separated lists
/// (case-insensitive), as `Connection: keep-alive, Upgrade` does.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Check a WebSocket opening handshake (RFC 6455 §4.2.1) beyond what
/// axum checks: the refusal to answer, if any. A request with an `Origin`
/// (RFC 6454 §7; browsers send one) must come from a page of `allowed`
/// (`[demo] allowed_origins`, lower case) or of the demo's own origin, see
/// [`own_origin`]; one without (not a browser) may connect.
pub(crate) fn upgrade_refusal(headers: &HeaderMap, allowed: &[String]) -> Option<Response> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Some(websocket_only("WebSocket only"));
    }
    if text(header::SEC_WEBSOCKET_VERSION) != Some("13") {
        let mut r = websocket_only("WebSocket version 13 only");
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Some(r);
    }
    // The base64 of 16 bytes (§4.1).
    let key_ok = text(header::SEC_WEBSOCKET_KEY).is_some_and(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k.trim())
            .is_ok_and(|k| k.len() == 16)
    });
    if !key_ok {
        return Some(http::error(
            StatusCode::BAD_REQUEST,
            "missing or invalid Sec-WebSocket-Key",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let listed = origin != "null" && allowed.iter().any(|a| a.eq_ignore_ascii_case(origin));
        if !listed && !own_origin(origin, text(header::HOST)) {
            return Some(http::error(
                StatusCode::FORBIDDEN,
                "cross-origin signaling refused",
            ));
        }
    }
    None
}

/// Whether `origin` is the demo's own for a request with Host `host`:
/// `http://` and that Host, which must name this machine without DNS (an
/// IP literal or `localhost`, [`http::is_local_authority`]). A page that
/// reached the demo by a domain name could be another site's after DNS
/// rebinding (which sets Host too), so names must be listed in `[demo]
/// allowed_origins`. An opaque origin (`null`: sandboxed frames, files)
/// never matches.
pub(crate) fn own_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host.map(str::trim) else {
        return false;
    };
    let Some(authority) = origin
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &origin[7..])
    else {
        return false;
    };
    authority.eq_ignore_ascii_case(host) && http::is_local_authority(host, &[])
}

/// Switch a checked request to a WebSocket, which takes over the
/// connection's slot: evicting it to make room aborts the signaling task.
async fn upgrade(req: Request, app: Arc<App>, client: http::Client) -> Response {
    let from = client
        .addr
        .map_or_else(|| "-".to_owned(), |a| a.to_string());
    let source = http::Peer::of_ip(
        client
            .addr
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip()),
    );
    upgrade_to(req, &client, &[], move |socket| {
        tracing::debug!(client = %from, "demo: signaling connected");
        signaling(socket, app, source)
    })
    .await
}

/// Switch a checked request to a WebSocket offering `protocols`, served by
/// the task `run` makes. The task takes over the connection's slot.
async fn upgrade_to<F, T>(
    req: Request,
    client: &http::Client,
    protocols: &'static [&'static str],
    run: F,
) -> Response
where
    F: FnOnce(WebSocket) -> T + Send + 'static,
    T: std::future::Future<Output = ()> + Send + 'static,
{
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(refused) => return refused.into_response(),
    };
    let slot = client.take_slot();
    ws.protocols(protocols.iter().copied())
        .max_message_size(WS_HARD_LIMIT)
        .max_frame_size(WS_HARD_LIMIT)
        // Small buffers, grown only for what a client does send: an idle
        // signaling connection costs little.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            let task = tokio::spawn(run(socket));
            // A WebSocket stays idle in its slot: when the server is
            // full, a newcomer closes the oldest one of the client holding
            // the most, so that a few addresses that keep theirs alive
            // (they answer pings) cannot hold every slot and lock every
            // visitor out.
            if let Some(slot) = &slot {
                slot.attach(task.abort_handle());
            }
            let _ = task.await;
            drop(slot);
        })
}

/// STOMP's WebSocket subprotocols (STOMP 1.2 §"Using STOMP with
/// WebSocket" is silent; these are the names browsers' STOMP clients and
/// brokers use), preferred first.
const STOMP_PROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];
/// Time one write to a `/stomp` client may take: one that reads nothing
/// does not hold its connection longer.
const STOMP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Switch a checked request for `/stomp` to a WebSocket carrying one STOMP
/// session ([`stomp::serve`]); it takes over the connection's slot, as
/// `/signal`'s do.
async fn stomp_upgrade(req: Request, app: Arc<App>, client: http::Client) -> Response {
    let ip = client
        .addr
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    upgrade_to(req, &client, &STOMP_PROTOCOLS, move |socket| {
        stomp_socket(socket, app, ip)
    })
    .await
}

/// Carry one STOMP session over `socket`: the client's text messages (and
/// binary ones holding UTF-8) to the protocol, the protocol's to the
/// client. A client silent (no message, no pong) for `[demo]
/// idle_timeout` is closed; it is pinged every third of that while silent.
async fn stomp_socket(socket: WebSocket, app: Arc<App>, ip: IpAddr) {
    let (session, to_protocol, mut from_protocol) = session::pair(ip);
    let mut protocol = tokio::spawn(stomp::serve(app.stomp.clone(), session));
    let (mut sink, mut stream) = socket.split();
    let every = app.idle / 3;
    let mut heard = Instant::now();
    let mut ping = tokio::time::interval_at((Instant::now() + every).into(), every);
    // A message read from the client that the protocol has no room for
    // yet: the client is not read further meanwhile, but what the protocol
    // sends still goes out, so that it can make room.
    let mut unread: Option<String> = None;
    let end: Option<(u16, String)> = loop {
        tokio::select! {
            m = stream.next(), if unread.is_none() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                    Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                        Ok(t) => t,
                        Err(_) => break Some((close_code::INVALID, "STOMP frames are UTF-8 text".into())),
                    },
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        heard = Instant::now();
                        continue;
                    }
                    Some(Err(e)) => break websocket_fault(e),
                };
                heard = Instant::now();
                unread = Some(text);
            }
            permit = to_protocol.reserve(), if unread.is_some() => {
                let (Ok(permit), Some(text)) = (permit, unread.take()) else {
                    break None;
                };
                permit.send(text);
            }
            o = from_protocol.recv() => match o {
                Some(session::Outgoing::Text(t)) => {
                    if !write(&mut sink, Message::Text(t.into())).await {
                        break None;
                    }
                }
                Some(session::Outgoing::Close { code, reason }) => break Some((code, reason)),
                None => break Some((close_code::NORMAL, String::new())),
            },
            _ = ping.tick() => {
                if heard.elapsed() >= app.idle {
                    break Some((close_code::AWAY, "idle timeout".into()));
                }
                if heard.elapsed() >= every && !write(&mut sink, Message::Ping(Default::default())).await {
                    break None;
                }
            }
        }
    };
    // The protocol sees the client gone.
    drop(to_protocol);
    if let Some((code, mut reason)) = end {
        // A close frame's reason fits in 123 bytes (RFC 6455 §5.5).
        while reason.len() > 123 {
            reason.pop();
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        write(&mut sink, Message::Close(Some(frame))).await;
    }
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, sink.close()).await;
    if tokio::time::timeout(FLUSH_TIMEOUT, &mut protocol)
        .await
        .is_err()
    {
        protocol.abort();
    }
}

/// Write `m` within [`STOMP_WRITE_TIMEOUT`]; false if that failed.
async fn write(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>, m: Message) -> bool {
    matches!(
        tokio::time::timeout(STOMP_WRITE_TIMEOUT, sink.send(m)).await,
        Ok(Ok(()))
    )
}

/// The close code for a WebSocket read error, `None` when the connection
/// is simply gone.
fn websocket_fault(e: axum::Error) -> Option<(u16, String)> {
    let e = e.into_inner().downcast::<tungstenite::Error>().ok()?;
    let code = match *e {
        tungstenite::Error::Capacity(_) => close_code::SIZE,
        tungstenite::Error::Utf8(_) => close_code::INVALID,
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => return None,
        tungstenite::Error::Protocol(_) => close_code::PROTOCOL,
        _ => return None,
    };
    Some((code, e.to_string()))
}

/// How a signaling connection ended.
enum End {
    /// The client closed, or broke the protocol.
    Read,
    /// The socket failed under the writer.
    Writer,
    /// Its outbox overflowed: it does not read.
    Overflow,
    /// Nothing heard for the idle timeout.
    Idle,
}

/// One signaling client, from the 101 until it leaves.
async fn signaling(socket: WebSocket, app: Arc<App>, source: http::Peer) {
    let app = &*app;
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let kick = Arc::new(Notify::new());
    let outbox = Outbox::new(tx, kick.clone());
    let counters = (outbox.queued.clone(), outbox.written.clone());
    {
        let mut s = app.signal.lock().unwrap();
        s.outboxes.insert(id, outbox);
        s.advance_clock();
        s.hub.connect(id, source);
    }
    let mut writer = tokio::spawn(write_loop(sink, rx, counters));
    // However this ends, also when the task is aborted to make room for
    // another connection: out of its room and its outbox, writer stopped.
    let _leave = Leave {
        id,
        app,
        writer: writer.abort_handle(),
    };
    // Microseconds from `start` to the last complete frame received.
    let start = Instant::now();
    let heard = AtomicU64::new(0);
    let end = tokio::select! {
        _ = read_loop(id, &mut stream, app, start, &heard) => End::Read,
        _ = &mut writer => End::Writer,
        _ = kick.notified() => End::Overflow,
        _ = keepalive(id, app, start, &heard) => End::Idle,
    };
    {
        let mut s = app.signal.lock().unwrap();
        if let End::Idle = end {
            tracing::debug!(peer = id, "demo: signaling client silent too long, closing");
            s.send(id, Outgoing::Close(close_code::AWAY, "idle timeout".into()));
        }
        leave(&mut s, id);
    }
    match end {
        End::Writer => {}
        // It does not read: flushing would only wait.
        End::Overflow => writer.abort(),
        End::Read | End::Idle => {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, &mut writer).await;
            writer.abort();
        }
    }
    tracing::debug!(peer = id, "demo: signaling disconnected");
}

/// Take `id` out of its room (the other member hears `peer-left`) and drop
/// its outbox, which lets its writer finish what is queued and end. Doing
/// it twice does nothing.
fn leave(s: &mut Signal, id: PeerId) {
    let out = s.hub.disconnect(id);
    s.deliver(id, out);
    s.outboxes.remove(&id);
}

/// A signaling client's membership, ended when dropped: in the normal end
/// [`signaling`] has left already and lets the writer flush; when the task
/// is aborted (evicted to make room) the writer is stopped too.
struct Leave<'a> {
    id: PeerId,
    app: &'a App,
    writer: tokio::task::AbortHandle,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut s = self.app.signal.lock().unwrap_or_else(|e| e.into_inner());
        if s.outboxes.contains_key(&self.id) {
            leave(&mut s, self.id);
            self.writer.abort();
        }
    }
}

/// Ping a silent client every third of the idle timeout; return once it
/// has been silent for the whole timeout (so it is closed between one and
/// four thirds of the timeout after the last frame it sent). `heard` is
/// when that frame came, in microseconds from `start`.
async fn keepalive(id: PeerId, app: &App, start: Instant, heard: &AtomicU64) {
    let idle = app.idle.as_micros() as u64;
    let every = app.idle / 3;
    let mut tick = tokio::time::interval_at((start + every).into(), every);
    loop {
        tick.tick().await;
        let silent =
            (start.elapsed().as_micros() as u64).saturating_sub(heard.load(Ordering::Relaxed));
        if silent >= idle {
            return;
        }
        if silent >= every.as_micros() as u64 {
            app.signal.lock().unwrap().send(id, Outgoing::Ping);
        }
    }
}

async fn read_loop(
    id: PeerId,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    app: &App,
    start: Instant,
    heard: &AtomicU64,
) {
    // tungstenite answers pings and close frames by itself (RFC 6455
    // §5.5.2, §5.5.1): the pong or the close goes out with the next read
    // or write.
    let mut rate = signal::Rate::default();
    while let Some(msg) = stream.next().await {
        let now = start.elapsed().as_micros() as u64;
        if msg.is_ok() {
            heard.store(now, Ordering::Relaxed);
        }
        let mut s = app.signal.lock().unwrap();
        let len = match &msg {
            Ok(Message::Text(t)) => Some(t.len()),
            Ok(Message::Binary(b)) => Some(b.len()),
            _ => None,
        };
        if let Some(len) = len {
            // One over the limit is answered with an error, not passed:
            // it costs no more than the largest one passed.
            match rate.take(now, len.min(signal::MAX_MESSAGE)) {
                signal::Admit::Pass => {}
                signal::Admit::DropAndWarn => {
                    s.deliver(id, vec![Delivery::error(id, &signal::Error::RateLimited)]);
                    continue;
                }
                signal::Admit::Drop => continue,
            }
        }
        let too_large = |s: &mut Signal, n: usize| {
            s.deliver(id, vec![Delivery::error(id, &signal::Error::TooLarge(n))]);
        };
        match msg {
            Ok(Message::Text(text)) if text.len() > signal::MAX_MESSAGE => {
                too_large(&mut s, text.len());
            }
            Ok(Message::Text(text)) => {
                s.advance_clock();
                let out = s.hub.message(id, &text);
                s.deliver(id, out);
            }
            Ok(Message::Binary(b)) if b.len() > signal::MAX_MESSAGE => too_large(&mut s, b.len()),
            Ok(Message::Binary(_)) => {
                s.deliver(id, vec![Delivery::error(id, &signal::Error::Binary)]);
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(Message::Close(_)) => return,
            Err(e) => {
                let Ok(e) = e.into_inner().downcast::<tungstenite::Error>() else {
                    return;
                };
                let code = match *e {
                    tungstenite::Error::Capacity(
                        tungstenite::error::CapacityError::MessageTooLong { size, .. },
                    ) => {
                        too_large(&mut s, size);
                        close_code::SIZE
                    }
                    tungstenite::Error::Utf8(_) => close_code::INVALID,
                    tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ) => return,
                    tungstenite::Error::Protocol(_) => close_code::PROTOCOL,
                    _ => return,
                };
                s.send(id, Outgoing::Close(code, e.to_string()));
                return;
            }
        }
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    (queued, written): (Arc<AtomicUsize>, Arc<AtomicU64>),
) {
    while let Some(o) = rx.recv().await {
        let cost = o.cost();
        let (msg, last) = match o {
            Outgoing::Text(t) => (Message::Text(t.into()), false),
            Outgoing::Ping => (Message::Ping(Default::default()), false),
            Outgoing::Close(code, mut reason) => {
                // A close frame's reason fits in 123 bytes (RFC 6455 §5.5).
                while reason.len() > 123 {
                    reason.pop();
                }
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                (Message::Close(Some(frame)), true)
            }
        };
        if sink.send(msg).await.is_err() || last {
            break;
        }
        queued.fetch_sub(cost, Ordering::Relaxed);
        written.fetch_add(1, Ordering::Relaxed);
    }
    // Flushes what tungstenite queued by itself (the answer to the
    // client's close frame) and ends the connection.
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_config_uses_bound_ports_and_skips_stun_only_listeners() {
        let text = r#"
realm = "r"
[[listen]]
address = "192.0.2.1:0"
transports = ["udp", "tcp"]
[[listen]]
address = "192.0.2.1:3479"
transports = ["udp"]
turn = false
[relay]
address = "192.0.2.1"
[auth]
secrets = ["first", "second"]
[demo]
credential_ttl = 120
"#;
        let config = crate::config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let bound: Vec<SocketAddr> = vec![
            "192.0.2.1:40000".parse().unwrap(),
            "192.0.2.1:3479".parse().unwrap(),
        ];
        let ice = ice_config(&config, &bound);
        assert_eq!(
            ice.urls,
            [
                "stun:192.0.2.1:40000",
                "turn:192.0.2.1:40000?transport=udp",
                "turn:192.0.2.1:40000?transport=tcp",
                "stun:192.0.2.1:3479",
            ]
        );
        assert_eq!(ice.secret.as_deref(), Some("first"));
        assert_eq!(ice.ttl, 120);
    }

    #[test]
    fn routes_and_upgrade_checks() {
        let app = App {
            ice: IceConfig {
                urls: vec!["stun:192.0.2.1:3478".into()],
                secret: None,
                ttl: 60,
            },
            signal: Mutex::new(Signal::new(4)),
            next_id: AtomicU64::new(1),
            idle: Duration::from_secs(60),
            allowed_origins: vec!["https://app.example".into()],
            stomp: Arc::new(stomp::Broker::new(stomp::Settings::default())),
        };
        let visitor: IpAddr = "127.0.0.1".parse().unwrap();
        for (path, status) in [
            ("/", 200),
            ("/trickle-ice", 200),
            ("/call.js", 200),
            ("/ice-servers", 200),
            ("/signal", 426),
            ("/stomp", 426),
            ("/x", 404),
        ] {
            assert_eq!(route(path, &app, visitor).status(), status, "{path}");
        }
        let page = route("/", &app, visitor);
        assert!(page.headers().contains_key(header::CONTENT_SECURITY_POLICY));

        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, HeaderValue::from_static(v));
            }
            h
        };
        let ws = [
            ("host", "192.0.2.1:1"),
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("origin", "http://192.0.2.1:1"),
        ];
        assert!(upgrade_refusal(&headers(&ws), &app.allowed_origins).is_none());
        let status = |pairs: &[(&'static str, &'static str)]| {
            upgrade_refusal(&headers(pairs), &app.allowed_origins)
                .unwrap()
                .status()
        };
        // An origin the operator listed may connect (any case), and only
        // that one.
        let mut listed = ws;
        listed[5] = ("origin", "https://App.example");
        assert!(upgrade_refusal(&headers(&listed), &app.allowed_origins).is_none());
        listed[5] = ("origin", "http://app.example");
        assert_eq!(status(&listed), 403);
        // One header changed at a time: another site's page, an old
        // version, a key that is not 16 bytes, no Upgrade in Connection.
        for (i, changed, want) in [
            (5, ("origin", "http://b:1"), 403),
            (3, ("sec-websocket-version", "8"), 426),
            (4, ("sec-websocket-key", "c2hvcnQ="), 400),
            (2, ("connection", "keep-alive"), 426),
        ] {
            let mut h = ws;
            h[i] = changed;
            assert_eq!(status(&h), want, "{changed:?}");
        }
    }
}

#[cfg(test)]
mod origin_tests {
    use super::*;

    fn ws_headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("host", host),
        ] {
            h.insert(k, HeaderValue::from_str(v).unwrap());
        }
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    /// A page's origin matching Host is the demo's own only when Host
    /// names this machine without DNS (a rebinding page sets both to its
    /// name), with the http scheme; `null` never passes, not even listed;
    /// a client without Origin does.
    #[test]
    fn own_origin_is_an_ip_literal_or_localhost_over_http() {
        let allowed = vec!["https://app.example".to_owned(), "null".to_owned()];
        let refused = |origin: &str, host: &str| {
            upgrade_refusal(&ws_headers(Some(origin), host), &allowed).map(|r| r.status().as_u16())
        };
        for (origin, host) in [
            ("http://evil.example:8080", "evil.example:8080"),
            ("http://turn.example", "turn.example"),
            ("null", "null"),
            ("null", "127.0.0.1:8080"),
            ("https://127.0.0.1:8080", "127.0.0.1:8080"),
            ("ws://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1:8081", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080", "rebind.example:8080"),
        ] {
            assert_eq!(refused(origin, host), Some(403), "{origin} / {host}");
        }
        for (origin, host) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("HTTP://LocalHost:8080", "localhost:8080"),
            ("http://[::1]:8080", "[::1]:8080"),
            ("http://192.0.2.7", "192.0.2.7"),
            ("https://app.example", "turn.example"),
        ] {
            assert_eq!(refused(origin, host), None, "{origin} / {host}");
        }
        assert!(upgrade_refusal(&ws_headers(None, "turn.example"), &allowed).is_none());
    }
}

#[cfg(test)]
mod outbox_tests {
    use super::*;

    /// A hub with members 1 to 4 (different addresses, all in the
    /// tutorial's group), with their outboxes' receiving ends.
    fn group_of_four() -> (Signal, Vec<mpsc::UnboundedReceiver<Outgoing>>) {
        let mut s = Signal::new(4);
        let mut rxs = Vec::new();
        for id in 1..=4u64 {
            let (tx, rx) = mpsc::unbounded_channel();
            s.outboxes
                .insert(id, Outbox::new(tx, Arc::new(Notify::new())));
            s.hub.connect(
                id,
                http::Peer::of_ip(format!("198.51.100.{id}").parse().unwrap()),
            );
            rxs.push(rx);
        }
        assert_eq!(s.hub.group().len(), 4);
        (s, rxs)
    }

    fn largest_broadcast() -> String {
        let pad = "x".repeat(signal::MAX_MESSAGE - 40);
        let msg = format!(r#"{{"event":"offer","data":"{pad}"}}"#);
        assert!(msg.len() <= signal::MAX_MESSAGE);
        msg
    }

    fn texts(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            if let Outgoing::Text(t) = o {
                out.push(t);
            }
        }
        out
    }

    /// Five of the largest broadcasts from one member, before any writer
    /// runs, cut off nobody: what does not fit a receiver's share of its
    /// outbox is dropped for that receiver and the sender hears
    /// `peer-busy`.
    #[test]
    fn a_burst_from_one_member_cuts_off_nobody() {
        let (mut s, mut rxs) = group_of_four();
        let msg = largest_broadcast();
        for _ in 0..5 {
            let out = s.hub.message(1, &msg);
            s.deliver(1, out);
        }
        let mut left: Vec<_> = s.outboxes.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(left, [1, 2, 3, 4], "every member is still connected");
        for id in 2..=4u64 {
            let queued = s.outboxes[&id].queued.load(Ordering::Relaxed);
            assert!(queued <= RELAY_BYTES, "{id}: {queued}");
            let got = texts(&mut rxs[id as usize - 1]);
            assert!(!got.is_empty() && got.len() < 5, "{id}: {}", got.len());
            assert!(got.iter().all(|t| *t == msg));
        }
        let errors = texts(&mut rxs[0]);
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|t| t.contains("peer-busy")), "{errors:?}");
        // The receivers' own answers still find room.
        let out = s.hub.message(2, "not json");
        s.deliver(2, out);
        assert!(s.outboxes.contains_key(&2));
        assert!(texts(&mut rxs[1])[0].contains("bad-json"));
    }

    /// A receiver that reads nothing while its outbox stays full is cut
    /// off after STALL_TIMEOUT; one whose writer got something out stays.
    #[test]
    fn a_receiver_that_reads_nothing_is_cut_off_after_the_stall_timeout() {
        let (mut s, _rxs) = group_of_four();
        let msg = largest_broadcast();
        for _ in 0..4 {
            let out = s.hub.message(1, &msg);
            s.deliver(1, out);
        }
        // Full and refused since long enough ago: 2 read something since
        // then, 3 and 4 did not.
        let past = Instant::now() - STALL_TIMEOUT;
        for id in 2..=4u64 {
            let out = s.outboxes.get_mut(&id).unwrap();
            assert!(out.full_since.is_some(), "{id}");
            out.full_since = Some((past, 0));
        }
        s.outboxes[&2].written.store(1, Ordering::Relaxed);
        let out = s.hub.message(1, &msg);
        s.deliver(1, out);
        let mut left: Vec<_> = s.outboxes.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(left, [1, 2]);
    }
}
