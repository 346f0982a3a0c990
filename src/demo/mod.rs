//! The signaling demo (`ferroturn demo`): the TURN server plus an HTTP
//! server on `[demo] address` with
//! - `/`: the call page (data channel chat, optional camera and microphone,
//!   "relay only", live selected candidate pair),
//! - `/trickle-ice`: candidate gathering against any STUN/TURN server,
//! - `/ice-servers`: `iceServers` JSON with short-lived REST credentials,
//! - `/signal`: WebSocket signaling in rooms of two.
//!
//! Pages and scripts are embedded in the binary.
//!
//! Limits, since the demo runs inside the TURN process: every connection
//! must send its request head within [`http::HEAD_TIMEOUT`] and take its
//! answer within [`http::WRITE_TIMEOUT`]; one IP address (or IPv6 /64)
//! holds at most `[demo] connections_per_ip` connections, pages and
//! WebSockets together, and the server [`MAX_CONNECTIONS`] (a new
//! connection closes the oldest idle one, see [`http::Slots`]); a
//! WebSocket that sends nothing, not even a pong to the server's pings,
//! for `[demo] idle_timeout` seconds is closed; and a client that lets more
//! than [`OUTBOX_BYTES`] pile up unread is disconnected, which the other
//! member of its room sees as `peer-left`.

pub mod ice;
pub mod signal;
pub mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

use crate::config::Config;
use crate::http::{self, HeadError, Peer, Request, Response, Slot, Slots};
use ice::IceConfig;
use signal::{Delivery, Hub, PeerId};
use websocket::{Message, close_code};

/// Connections held at once, from all clients.
pub const MAX_CONNECTIONS: usize = 512;
/// Bytes queued for one WebSocket client, counting [`MESSAGE_OVERHEAD`]
/// per message; a client that lets more pile up unread is disconnected.
/// Four of the largest signaling messages (64 KiB): at most 128 MiB for
/// [`MAX_CONNECTIONS`] inside the TURN process.
pub const OUTBOX_BYTES: usize = 256 << 10;
/// What a queued message costs beyond its payload, so that a flood of
/// tiny messages is bounded too.
const MESSAGE_OVERHEAD: usize = 64;
/// Time a closing WebSocket gets to flush its last frames.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The demo's connection limits (`[demo]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Silence after which a WebSocket is closed; pings go out every third
    /// of it while the client is silent.
    pub idle_timeout: Duration,
    /// Connections per IP address or IPv6 /64.
    pub per_ip: usize,
}

impl Limits {
    pub fn from_config(c: &crate::config::Demo) -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(c.idle_timeout),
            per_ip: c.connections_per_ip,
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
    let app = Arc::new(App {
        ice,
        signal: Mutex::new(Signal::default()),
        next_id: AtomicU64::new(1),
        slots: Slots::new(MAX_CONNECTIONS, limits.per_ip),
        idle: limits.idle_timeout,
    });
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::warn!("demo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = app.slots.admit(Peer::of_ip(from.ip())) else {
            // Over the cap with nothing idle to close: say so at once,
            // without waiting for the request.
            tracing::debug!(client = %from, "demo: too many connections from one client");
            let r = Response::error(429, "too many connections from your address");
            let _ = stream.try_write(&r.with("Retry-After", "1").to_bytes(false));
            continue;
        };
        let id = slot.id();
        let task = {
            let app = app.clone();
            tokio::spawn(async move { connection(stream, from, &app, slot).await })
        };
        app.slots.attach(id, task.abort_handle());
    }
}

struct App {
    ice: IceConfig,
    signal: Mutex<Signal>,
    next_id: AtomicU64,
    slots: Arc<Slots>,
    idle: Duration,
}

/// The hub and the outbox of every connected signaling client.
#[derive(Default)]
struct Signal {
    hub: Hub,
    outboxes: HashMap<PeerId, Outbox>,
}

/// Where messages for one client wait for its writer, bounded in bytes.
struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Bytes queued, by [`Outgoing::cost`].
    queued: Arc<AtomicUsize>,
    /// Woken when the client is to be cut off: its outbox overflowed.
    kick: Arc<Notify>,
}

impl Signal {
    /// Queue `deliveries`; a client whose outbox is full is dropped (its
    /// connection closes at once, unflushed).
    fn deliver(&mut self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            self.send(d.to, Outgoing::Text(d.text));
        }
    }

    fn send(&mut self, to: PeerId, o: Outgoing) {
        let Some(out) = self.outboxes.get(&to) else {
            return;
        };
        let cost = o.cost();
        let queued = out.queued.fetch_add(cost, Ordering::Relaxed) + cost;
        if queued > OUTBOX_BYTES || out.tx.send(o).is_err() {
            tracing::info!(
                peer = to,
                queued,
                "demo: signaling client does not read its messages, disconnecting"
            );
            out.kick.notify_one();
            self.outboxes.remove(&to);
        }
    }
}

enum Outgoing {
    Text(String),
    Ping,
    Pong(Vec<u8>),
    Close(u16, String),
}

impl Outgoing {
    /// What the message counts against [`OUTBOX_BYTES`].
    fn cost(&self) -> usize {
        MESSAGE_OVERHEAD
            + match self {
                Outgoing::Text(t) => t.len(),
                Outgoing::Ping => 0,
                Outgoing::Pong(p) => p.len(),
                Outgoing::Close(_, r) => r.len(),
            }
    }
}

async fn connection(mut stream: TcpStream, from: SocketAddr, app: &App, _slot: Slot) {
    let head = tokio::time::timeout(http::HEAD_TIMEOUT, http::read_head(&mut stream)).await;
    let answer = |r: Response, head_only: bool| async move {
        let mut stream = stream;
        let write = r.write(&mut stream, head_only);
        let ok = matches!(
            tokio::time::timeout(http::WRITE_TIMEOUT, write).await,
            Ok(Ok(()))
        );
        ok.then_some(stream)
    };
    let (req, leftover) = match head {
        Ok(Ok(r)) => r,
        Ok(Err(HeadError::Closed)) | Err(_) => return,
        Ok(Err(HeadError::TooLarge)) => {
            answer(Response::error(431, "request head too large"), false).await;
            return;
        }
        Ok(Err(HeadError::Malformed(why))) => {
            answer(Response::error(400, why), false).await;
            return;
        }
    };
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        let r = Response::error(405, "only GET and HEAD").with("Allow", "GET, HEAD");
        answer(r, false).await;
        return;
    }
    if req.path == "/signal" && !head_only {
        match upgrade(&req) {
            Ok(r) => {
                if let Some(stream) = answer(r, false).await {
                    tracing::debug!(client = %from, "demo: signaling connected");
                    // A WebSocket stays idle in its slot: when the server
                    // is full, a newcomer closes the oldest one of the
                    // client holding the most, so that a few addresses
                    // that keep theirs alive (they answer pings) cannot
                    // hold every slot and lock every visitor out.
                    signaling(stream, leftover, app).await;
                }
            }
            Err(r) => {
                answer(r, false).await;
            }
        }
        return;
    }
    answer(route(&req, app, from.ip()), head_only).await;
}

/// The response to a plain GET.
fn route(req: &Request, app: &App, visitor: std::net::IpAddr) -> Response {
    if req.path == "/ice-servers" {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = ice::ice_servers(&app.ice, now, visitor).to_string();
        return Response::ok("application/json", body).with("Cache-Control", "no-store");
    }
    if req.path == "/signal" {
        return Response::error(426, "WebSocket only").with("Upgrade", "websocket");
    }
    match ASSETS.iter().find(|(p, _, _)| *p == req.path) {
        Some((_, ctype, body)) => Response::ok(ctype, *body)
            .with("Content-Security-Policy", CSP)
            .with("X-Content-Type-Options", "nosniff")
            .with("Cache-Control", "no-cache"),
        None => Response::error(404, &format!("no page at {}", req.path)),
    }
}

/// Check a WebSocket opening handshake; the 101 to send, or the error.
fn upgrade(req: &Request) -> Result<Response, Response> {
    if !req.header_has_token("upgrade", "websocket")
        || !req.header_has_token("connection", "upgrade")
    {
        return Err(Response::error(426, "WebSocket only").with("Upgrade", "websocket"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(
            Response::error(426, "WebSocket version 13 only").with("Sec-WebSocket-Version", "13")
        );
    }
    let Some(key) = req
        .header("sec-websocket-key")
        .filter(|k| websocket::valid_key(k))
    else {
        return Err(Response::error(400, "missing or invalid Sec-WebSocket-Key"));
    };
    // Browsers send Origin: only pages of this origin may signal here.
    if let (Some(origin), Some(host)) = (req.header("origin"), req.header("host")) {
        let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
        if !authority.eq_ignore_ascii_case(host) {
            return Err(Response::error(403, "cross-origin signaling refused"));
        }
    }
    Ok(Response {
        status: 101,
        headers: vec![
            ("Upgrade", "websocket".into()),
            ("Connection", "Upgrade".into()),
            ("Sec-WebSocket-Accept", websocket::accept_key(key)),
        ],
        body: Vec::new(),
    })
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
async fn signaling(stream: TcpStream, leftover: Vec<u8>, app: &App) {
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let kick = Arc::new(Notify::new());
    app.signal.lock().unwrap().outboxes.insert(
        id,
        Outbox {
            tx,
            queued: queued.clone(),
            kick: kick.clone(),
        },
    );
    let mut writer = tokio::spawn(write_loop(wr, rx, queued));
    // However this ends, also when the task is aborted to make room for
    // another connection: out of its room and its outbox, writer stopped.
    let _leave = Leave {
        id,
        app,
        writer: writer.abort_handle(),
    };
    let mut reader = websocket::Reader::server(rd, leftover, signal::MAX_MESSAGE);
    // Microseconds from `start` to the last complete frame received.
    let start = Instant::now();
    let heard = AtomicU64::new(0);
    let end = tokio::select! {
        _ = read_loop(id, &mut reader, app, start, &heard) => End::Read,
        _ = &mut writer => End::Writer,
        _ = kick.notified() => End::Overflow,
        _ = keepalive(id, app, start, &heard) => End::Idle,
    };
    {
        let mut s = app.signal.lock().unwrap();
        if let End::Idle = end {
            tracing::debug!(peer = id, "demo: signaling client silent too long, closing");
            s.send(
                id,
                Outgoing::Close(close_code::GOING_AWAY, "idle timeout".into()),
            );
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
    s.deliver(out);
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
    reader: &mut websocket::Reader<impl tokio::io::AsyncRead + Unpin>,
    app: &App,
    start: Instant,
    heard: &AtomicU64,
) {
    loop {
        let msg = reader.next().await;
        if msg.is_ok() {
            heard.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        let mut s = app.signal.lock().unwrap();
        match msg {
            Ok(Message::Text(text)) => {
                let out = s.hub.message(id, &text);
                s.deliver(out);
            }
            Ok(Message::Binary(_)) => {
                s.deliver(vec![Delivery::error(id, &signal::Error::Binary)]);
            }
            Ok(Message::TooLarge(n)) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                s.deliver(vec![Delivery::error(id, &signal::Error::TooLarge(n))]);
            }
            Ok(Message::Ping(p)) => s.send(id, Outgoing::Pong(p)),
            Ok(Message::Pong(_)) => {}
            Ok(Message::Close(_)) => {
                s.send(id, Outgoing::Close(close_code::NORMAL, String::new()));
                return;
            }
            Err(websocket::Error::Closed) => return,
            Err(e) => {
                if let websocket::Error::Huge(n) = e {
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    s.deliver(vec![Delivery::error(id, &signal::Error::TooLarge(n))]);
                }
                s.send(id, Outgoing::Close(e.close_code(), format!("{e:?}")));
                return;
            }
        }
    }
}

async fn write_loop(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(o) = rx.recv().await {
        let cost = o.cost();
        let (bytes, last) = match o {
            Outgoing::Text(t) => (
                websocket::encode(websocket::TEXT, t.as_bytes(), None),
                false,
            ),
            Outgoing::Ping => (websocket::encode(websocket::PING, b"", None), false),
            Outgoing::Pong(p) => (websocket::encode(websocket::PONG, &p, None), false),
            Outgoing::Close(code, reason) => (websocket::close_frame(code, &reason, None), true),
        };
        if wr.write_all(&bytes).await.is_err() || last {
            break;
        }
        queued.fetch_sub(cost, Ordering::Relaxed);
    }
    let _ = wr.shutdown().await;
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
            signal: Mutex::new(Signal::default()),
            next_id: AtomicU64::new(1),
            slots: Slots::new(1, 1),
            idle: Duration::from_secs(60),
        };
        let get = |path: &str, headers: &[(&str, &str)]| Request {
            method: "GET".into(),
            path: path.into(),
            query: String::new(),
            http11: true,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        for (path, status) in [
            ("/", 200),
            ("/trickle-ice", 200),
            ("/call.js", 200),
            ("/ice-servers", 200),
            ("/signal", 426),
            ("/x", 404),
        ] {
            assert_eq!(
                route(&get(path, &[]), &app, "127.0.0.1".parse().unwrap()).status,
                status,
                "{path}"
            );
        }
        let page = route(&get("/", &[]), &app, "127.0.0.1".parse().unwrap());
        assert!(
            page.headers
                .iter()
                .any(|(n, _)| *n == "Content-Security-Policy")
        );

        let ws = [
            ("host", "a:1"),
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("origin", "http://a:1"),
        ];
        let ok = upgrade(&get("/signal", &ws)).unwrap();
        assert_eq!(ok.status, 101);
        assert!(ok.headers.contains(&(
            "Sec-WebSocket-Accept",
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_string()
        )));
        let mut other = ws;
        other[5] = ("origin", "http://b:1");
        assert_eq!(upgrade(&get("/signal", &other)).unwrap_err().status, 403);
        let mut old = ws;
        old[3] = ("sec-websocket-version", "8");
        assert_eq!(upgrade(&get("/signal", &old)).unwrap_err().status, 426);
    }
}
