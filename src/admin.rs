//! The admin API: HTTP with JSON answers, on the Unix socket
//! `/run/ferroturn/admin.sock` by default (`[admin] socket`, mode 0660, so
//! only the service's user and group can connect), and on a TCP address if
//! `[admin] address` is set, which then needs a bearer token
//! (`[admin] token`). The token is rotated by a reload.
//!
//! Only requests whose `Host` is an IP literal or `localhost` are answered
//! (421 otherwise, 400 for HTTP/1.1 without `Host`): a web page that
//! reached a loopback port by DNS rebinding sends its own name there.
//!
//! - `GET /sessions`: `{"sessions": [SessionInfo, ...]}`, every live
//!   allocation with its user, client address and transport, relay address,
//!   age and traffic each way; with `[cluster]`, those of every live node,
//!   each with its `node` (another node's traffic as of its last write).
//! - `DELETE /sessions/{relay_port}`: close the allocation on that relay
//!   port; `{"closed": 1}`, or 404.
//! - `DELETE /users/{name}/sessions`: close every allocation of a user
//!   (name percent-encoded); `{"closed": N}`, N may be 0 (this node's;
//!   with `[cluster]` every other node closes its own within a second).
//! - `GET /revocations`: `{"revocations": [{"name", "until"}, ...]}`,
//!   the names refused now and the Unix time each revocation ends.
//! - `PUT /revocations/{name}?until=UNIX`: refuse the name's Allocates and
//!   Refreshes (401) until then and close its allocations, on every node
//!   of a cluster; `{"name", "until", "closed"}` (this node's closed).
//! - `DELETE /revocations/{name}`: lift it; `{"removed": true|false}`.
//!
//! When a token is configured every request needs
//! `Authorization: Bearer TOKEN` (compared in constant time), else 401.
//! Errors are `{"error": "..."}` with 400, 401, 404 or 405.
//!
//! [`client`] is the other side, used by `ferroturn sessions` and
//! `ferroturn kill`.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, UnixListener};

use crate::config;
use crate::engine::Session;
use crate::engine::stats::{Direction, Transport};
use crate::http::{self, Caps, Listener, LocalOnly};
use crate::io::Control;

/// Connections held at once per listener, and per client (IP address,
/// IPv6 /64, or local user). A request is answered in milliseconds, so
/// these are only ever full of idle sockets, which make room
/// ([`http::Slots`]).
pub const CAPS: Caps = Caps {
    total: 256,
    per_peer: 64,
};

/// File mode of the admin socket: the service's user and group.
pub const SOCKET_MODE: u32 = 0o660;

/// One session as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The cluster node that holds it (`cluster.node`); absent without
    /// `[cluster]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub user: String,
    /// The client's address as the server sees it (`IP:PORT`).
    pub client: String,
    /// `udp`, `tcp` or `tls`: how the client reaches the server.
    pub transport: String,
    /// The relayed transport address (`IP:PORT`).
    pub relay: String,
    /// `udp`, or `tcp` for a TCP allocation (RFC 6062); a node that does
    /// not say has only UDP relays.
    #[serde(default = "udp")]
    pub relay_transport: String,
    pub relay_port: u16,
    /// The IPv6 relay of a dual-stack allocation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_v6: Option<String>,
    pub age_seconds: u64,
    /// Relayed from the client to peers.
    pub to_peer: TrafficReport,
    /// Relayed from peers to the client.
    pub to_client: TrafficReport,
}

fn udp() -> String {
    "udp".to_owned()
}

/// Packets and bytes in one direction, as the admin API reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficReport {
    pub packets: u64,
    pub bytes: u64,
}

impl SessionInfo {
    pub fn from_session(s: &Session) -> SessionInfo {
        let t = |dir: Direction| TrafficReport {
            packets: s.traffic[dir.index()].packets,
            bytes: s.traffic[dir.index()].bytes,
        };
        SessionInfo {
            node: None,
            user: s.user.clone(),
            client: s.client.remote.to_string(),
            transport: Transport::of(s.client.via).name().to_owned(),
            relay: s.relayed.to_string(),
            relay_transport: if s.tcp { "tcp" } else { "udp" }.to_owned(),
            relay_port: s.relayed.port(),
            relay_v6: s.relayed_extra.map(|r| r.to_string()),
            age_seconds: s.age.as_secs(),
            to_peer: t(Direction::ToPeer),
            to_client: t(Direction::ToClient),
        }
    }
}

/// The body of `GET /sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

/// One revocation, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub name: String,
    /// The Unix time (seconds) it ends.
    pub until: u64,
}

/// The body of `GET /revocations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationList {
    pub revocations: Vec<Revocation>,
}

/// The body of a successful `PUT /revocations/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub name: String,
    pub until: u64,
    pub closed: usize,
}

/// The body of `DELETE /revocations/{name}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Removed {
    pub removed: bool,
}

/// The longest a revocation may last: a year.
pub const MAX_REVOCATION_SECS: u64 = 366 * 86_400;

/// The body of a successful `DELETE`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Closed {
    pub closed: usize,
}

/// The running admin API: its token, which a reload replaces, and the
/// socket file it removes when dropped.
pub struct Admin {
    token: Token,
    socket: Option<(PathBuf, u64)>,
}

/// The SHA-256 of the bearer token, if one is required.
type Token = Arc<RwLock<Option<[u8; 32]>>>;

impl Admin {
    /// Bind the listeners of `section` (the Unix socket, the TCP address, or
    /// both) and serve them on the current runtime. An error names the
    /// listener and what went wrong.
    pub async fn start(section: &config::Admin, control: Control) -> std::io::Result<Admin> {
        let token: Token = Arc::new(RwLock::new(
            section.token.as_deref().map(|t| digest(t.as_bytes())),
        ));
        // Made first, so that the socket is removed again if the TCP
        // listener cannot be bound.
        let mut admin = Admin {
            token: token.clone(),
            socket: None,
        };
        let mut listeners = Vec::new();
        if let Some(path) = &section.socket {
            let l = bind_socket(path)?;
            let ino = std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0);
            admin.socket = Some((path.clone(), ino));
            tracing::info!(socket = %path.display(), "admin listening");
            listeners.push(Listener::Unix(l));
        }
        if let Some(addr) = section.address {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("admin listener {addr}: {e}"))
            })?;
            tracing::info!(address = %l.local_addr()?, "admin listening");
            listeners.push(Listener::Tcp(l));
        }
        for l in listeners {
            tokio::spawn(serve(l, token.clone(), control.clone()));
        }
        Ok(admin)
    }

    /// Apply a reloaded `[admin]`: the new token is required from the next
    /// request on, the old one is refused; no connection is dropped.
    pub fn reload(&self, section: Option<&config::Admin>) {
        let new = section
            .and_then(|s| s.token.as_deref())
            .map(|t| digest(t.as_bytes()));
        let mut t = self.token.write().unwrap();
        if *t != new {
            *t = new;
            tracing::info!("admin: token replaced");
        }
    }
}

impl Drop for Admin {
    /// Remove the socket file, if it is still the one this server made.
    fn drop(&mut self) {
        if let Some((path, ino)) = &self.socket
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == *ino)
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Bind the admin socket at `path` with mode [`SOCKET_MODE`]. A socket
/// left by a server that is gone is replaced; a live one (another server
/// answers there) or a file that is not a socket is an error naming the
/// path. The parent directory is made (mode 0750) if missing: systemd's
/// `RuntimeDirectory=ferroturn` normally does that for `/run/ferroturn`.
///
/// The socket is bound under a temporary name, given its mode, and then
/// renamed into place, so that it is never reachable with the mode the
/// umask would give it.
pub fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::io::{Error, ErrorKind};
    let fail = |what: String| Error::other(format!("admin socket {}: {what}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail(
                    "another process is listening on it (is ferroturn already running?)".into(),
                ));
            }
        }
        Ok(_) => {
            return Err(fail(
                "exists and is not a socket; remove it or set [admin] socket to another path"
                    .into(),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| fail("has no parent directory".into()))?;
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(dir)
            .map_err(|e| {
                fail(format!(
                    "cannot create {}: {e} (under systemd, RuntimeDirectory=ferroturn creates /run/ferroturn; else set [admin] socket to a directory the server may write)",
                    dir.display()
                ))
            })?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(|e| fail(e.to_string()))?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(fail(e.to_string()));
    }
    Ok(listener)
}

/// Serve the admin API on `listener` until the process ends; every request
/// must carry `Authorization: Bearer TOKEN` while a token is set.
async fn serve(listener: Listener, token: Token, control: Control) {
    let router = Router::new()
        .fallback(answer)
        .with_state(control)
        .layer(from_fn_with_state(token, require_token));
    let router = http::limits(router).layer(from_fn_with_state(
        LocalOnly::new("admin", Vec::new()),
        http::check_host,
    ));
    http::serve(listener, "admin", CAPS, None, router).await;
}

/// Middleware: 401 for a request without the token (while one is set).
async fn require_token(State(token): State<Token>, req: Request, next: Next) -> Response {
    let want = *token.read().unwrap();
    if authorized(req.headers(), want.as_ref()) {
        return next.run(req).await;
    }
    static LAST: http::Sparse = http::Sparse::new();
    if LAST.due() {
        tracing::warn!(method = %req.method(), path = %req.uri().path(), "admin: request without the right token refused; such lines are logged at most every 10 s");
    }
    let mut r = http::json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ferroturn admin\""),
    );
    r
}

fn digest(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Whether `headers` carry the token (always, without one). Digests of
/// equal length are compared in constant time, so that neither the token's
/// content nor its length leaks through timing.
fn authorized(headers: &HeaderMap, token: Option<&[u8; 32]>) -> bool {
    let Some(want) = token else {
        return true;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, cred) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| cred.trim())
        })
    else {
        return false;
    };
    digest(given.as_bytes()).ct_eq(want).into()
}

fn not_allowed(allow: &'static str) -> Response {
    let mut r = http::json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("allowed here: {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Route an authorized request.
async fn answer(State(control): State<Control>, method: Method, uri: Uri) -> Response {
    let m = method.as_str();
    let parts: Vec<&str> = uri.path().split('/').skip(1).collect();
    match parts.as_slice() {
        ["sessions"] => match m {
            "GET" | "HEAD" => {
                let report = control.report(true).await;
                let local: Vec<SessionInfo> = report
                    .sessions
                    .iter()
                    .map(SessionInfo::from_session)
                    .collect();
                let mut sessions = crate::cluster::all_sessions(&control, local).await;
                sessions.sort_by(|a, b| {
                    (&a.node, &a.user, a.relay_port).cmp(&(&b.node, &b.user, b.relay_port))
                });
                http::json(StatusCode::OK, &SessionList { sessions })
            }
            _ => not_allowed("GET, HEAD"),
        },
        ["sessions", port] => {
            if m != "DELETE" {
                return not_allowed("DELETE");
            }
            let Some(port) = port.parse::<u16>().ok().filter(|&p| p != 0) else {
                return http::json_error(
                    StatusCode::BAD_REQUEST,
                    "a relay port is a number from 1 to 65535",
                );
            };
            if control.close_relay_port(port).await {
                tracing::info!(relay_port = port, "admin: session closed");
                http::json(StatusCode::OK, &Closed { closed: 1 })
            } else {
                http::json_error(
                    StatusCode::NOT_FOUND,
                    &format!("no session on relay port {port}"),
                )
            }
        }
        ["users", name, "sessions"] => {
            if m != "DELETE" {
                return not_allowed("DELETE");
            }
            let Some(user) = percent_decode(name).filter(|u| !u.is_empty()) else {
                return http::json_error(
                    StatusCode::BAD_REQUEST,
                    "the user name must be percent-encoded UTF-8",
                );
            };
            let closed = control.close_user(&user).await;
            tracing::info!(%user, closed, "admin: sessions of a user closed");
            tell_cluster(&control, crate::cluster::Op::Kill(user));
            http::json(StatusCode::OK, &Closed { closed })
        }
        ["revocations"] => match m {
            "GET" | "HEAD" => {
                let revocations = control
                    .shared()
                    .revocations(crate::cluster::unix_now())
                    .into_iter()
                    .map(|(name, until)| Revocation { name, until })
                    .collect();
                http::json(StatusCode::OK, &RevocationList { revocations })
            }
            _ => not_allowed("GET, HEAD"),
        },
        ["revocations", name] => {
            let Some(name) = percent_decode(name).filter(|u| !u.is_empty()) else {
                return http::json_error(
                    StatusCode::BAD_REQUEST,
                    "the name must be percent-encoded UTF-8",
                );
            };
            match m {
                "PUT" => revoke(&control, name, uri.query().unwrap_or("")).await,
                "DELETE" => {
                    let removed = control.shared().unrevoke(&name);
                    tracing::info!(user = %name, removed, "admin: revocation lifted");
                    tell_cluster(&control, crate::cluster::Op::Unrevoke(name));
                    http::json(StatusCode::OK, &Removed { removed })
                }
                _ => not_allowed("PUT, DELETE"),
            }
        }
        _ => http::json_error(
            StatusCode::NOT_FOUND,
            "no such resource; try GET /sessions, DELETE /sessions/{relay_port}, DELETE /users/{name}/sessions, GET /revocations, PUT or DELETE /revocations/{name}",
        ),
    }
}

/// `PUT /revocations/{name}?until=UNIX`: refuse `name` until then, close
/// its allocations here, and tell the other nodes.
async fn revoke(control: &Control, name: String, query: &str) -> Response {
    let now = crate::cluster::unix_now();
    let until = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("until="))
        .and_then(|v| v.parse::<u64>().ok());
    let Some(until) = until.filter(|&u| u > now && u <= now + MAX_REVOCATION_SECS) else {
        return http::json_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "give ?until=UNIX_SECONDS, after now and at most {} days ahead",
                MAX_REVOCATION_SECS / 86_400
            ),
        );
    };
    let shared = control.shared();
    if !shared.revoke(&name, until) {
        return http::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} names are revoked already: remove some first",
                crate::engine::quota::MAX_REVOKED
            ),
        );
    }
    shared.note_revocation();
    let closed = control.close_user(&name).await;
    tracing::info!(user = %name, until, closed, "admin: name revoked");
    tell_cluster(
        control,
        crate::cluster::Op::Revoke {
            name: name.clone(),
            until,
        },
    );
    http::json(
        StatusCode::OK,
        &Revoked {
            name,
            until,
            closed,
        },
    )
}

/// Hand an operator action to the cluster task, with `[cluster]`.
fn tell_cluster(control: &Control, op: crate::cluster::Op) {
    if crate::cluster::tell(control, op) == Some(false) {
        tracing::warn!("admin: the cluster task is far behind: this action reached this node only");
    }
}

/// Decode `%XX` escapes; `None` for a bad escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Escape every byte but the unreserved ones (RFC 3986 §2.3).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// The client side, for `ferroturn sessions` and `ferroturn kill`.
pub mod client {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
    use std::path::PathBuf;
    use std::time::Duration;

    use super::{
        Closed, Removed, Revocation, RevocationList, Revoked, SessionInfo, SessionList,
        percent_encode,
    };
    use crate::config::{Config, DEFAULT_ADMIN_SOCKET};
    use crate::http::Dest;

    /// The environment variable that may hold the token.
    pub const TOKEN_ENV: &str = "FERROTURN_ADMIN_TOKEN";
    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Where the admin API is, and the token to show it.
    #[derive(Clone)]
    pub struct Target {
        pub dest: Dest,
        pub token: Option<String>,
    }

    impl std::fmt::Debug for Target {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Target")
                .field("dest", &self.dest)
                .field("token", &self.token.as_ref().map(|_| crate::auth::Redacted))
                .finish()
        }
    }

    /// Where the token given to [`Target::resolve`] comes from.
    #[derive(Clone, Default)]
    pub enum TokenSource {
        /// `--token-file PATH`: the file's first line.
        File(PathBuf),
        /// `--token VALUE` (visible to every local user in `ps`).
        Arg(String),
        /// Neither: `$FERROTURN_ADMIN_TOKEN`, else `[admin] token`.
        #[default]
        None,
    }

    impl std::fmt::Debug for TokenSource {
        /// The file's path, never a token given as an argument.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
                TokenSource::Arg(_) => f.debug_tuple("Arg").field(&crate::auth::Redacted).finish(),
                TokenSource::None => f.write_str("None"),
            }
        }
    }

    impl Target {
        /// From `--admin` (an `IP:PORT` or a socket path), else `config`'s
        /// `[admin]` (its socket if it has one, else its address), else
        /// the socket `/run/ferroturn/admin.sock`; the token from `token`,
        /// else `$FERROTURN_ADMIN_TOKEN`, else `config`'s `[admin] token`.
        /// An unspecified configured address (`0.0.0.0`, `::`) is reached
        /// on loopback.
        pub fn resolve(
            admin: Option<&str>,
            token: TokenSource,
            config: Option<&Config>,
        ) -> Result<Target, String> {
            let section = config.and_then(Config::admin);
            let section = section.as_ref();
            let dest = match (admin, section, config) {
                (Some(a), _, _) if a.contains('/') => Dest::Unix(PathBuf::from(a)),
                (Some(a), _, _) => Dest::Tcp(
                    a.to_socket_addrs()
                        .ok()
                        .and_then(|mut i| i.next())
                        .ok_or_else(|| {
                            format!(
                                "--admin {a:?} is neither an address like 127.0.0.1:9642 nor a socket path"
                            )
                        })?,
                ),
                (None, Some(s), _) => match (&s.socket, s.address) {
                    (Some(p), _) => Dest::Unix(p.clone()),
                    (None, Some(mut a)) => {
                        if a.ip().is_unspecified() {
                            a.set_ip(match a.ip() {
                                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                            });
                        }
                        Dest::Tcp(a)
                    }
                    (None, None) => Dest::Unix(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
                },
                (None, None, Some(c)) => {
                    return Err(format!(
                        "{} has no [admin] section, so the server runs no admin API (or give --admin ADDRESS|SOCKET)",
                        c.path.display()
                    ));
                }
                (None, None, None) => Dest::Unix(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
            };
            let token = match token {
                TokenSource::File(p) => Some(crate::config::secret_file("--token-file", &p)?),
                TokenSource::Arg(t) => Some(t),
                // Read as a file is (first line, trimmed); an empty one
                // leaves the config's.
                TokenSource::None => std::env::var(TOKEN_ENV)
                    .ok()
                    .and_then(|t| crate::config::secret_text(&t, TOKEN_ENV).ok())
                    .or_else(|| section.and_then(|s| s.token.clone())),
            };
            Ok(Target { dest, token })
        }

        /// One request; the body of a 2xx answer, or a message that says
        /// what went wrong.
        fn call(&self, method: &str, path: &str) -> Result<Vec<u8>, String> {
            let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
            let mut headers = vec![("Accept", "application/json")];
            if let Some(b) = &bearer {
                headers.push(("Authorization", b.as_str()));
            }
            let a = &self.dest;
            let (status, body) = crate::http::fetch(a, method, path, &headers, TIMEOUT)
                .map_err(|e| {
                    let hint = match (a, e.kind()) {
                        (Dest::Unix(_), std::io::ErrorKind::PermissionDenied) => {
                            "the socket is for the server's user and group: run as one of them (e.g. sudo -u ferroturn ferroturn sessions)"
                        }
                        _ => {
                            "is ferroturn running with an [admin] section? give --admin ADDRESS|SOCKET or --config FILE"
                        }
                    };
                    format!("cannot reach the admin API at {a}: {e} ({hint})")
                })?;
            if (200..300).contains(&status) {
                return Ok(body);
            }
            let why = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
            Err(match status {
                401 if self.token.is_none() => format!(
                    "the admin API at {a} refused the request (401): it needs a token; give --token-file, ${TOKEN_ENV}, or --config with [admin] token"
                ),
                401 => format!("the admin API at {a} refused the request (401): wrong token"),
                s => format!("the admin API at {a} answered {s}: {why}"),
            })
        }

        /// `GET /sessions`, as the server sent it (JSON).
        pub fn sessions_json(&self) -> Result<String, String> {
            let body = self.call("GET", "/sessions")?;
            String::from_utf8(body).map_err(|_| "the admin API answered non-UTF-8".to_owned())
        }

        /// `GET /sessions`.
        pub fn sessions(&self) -> Result<Vec<SessionInfo>, String> {
            let body = self.call("GET", "/sessions")?;
            serde_json::from_slice::<SessionList>(&body)
                .map(|l| l.sessions)
                .map_err(|e| format!("unexpected answer from the admin API: {e}"))
        }

        /// `DELETE /users/{user}/sessions`: how many were closed.
        pub fn kill_user(&self, user: &str) -> Result<usize, String> {
            let path = format!("/users/{}/sessions", percent_encode(user));
            self.closed(&self.call("DELETE", &path)?)
        }

        /// `DELETE /sessions/{port}`: 1, or an error when there is none.
        pub fn kill_relay_port(&self, port: u16) -> Result<usize, String> {
            self.closed(&self.call("DELETE", &format!("/sessions/{port}"))?)
        }

        /// `PUT /revocations/{name}?until=UNIX`.
        pub fn revoke(&self, name: &str, until: u64) -> Result<Revoked, String> {
            let path = format!("/revocations/{}?until={until}", percent_encode(name));
            parse(&self.call("PUT", &path)?)
        }

        /// `DELETE /revocations/{name}`: whether there was one.
        pub fn unrevoke(&self, name: &str) -> Result<bool, String> {
            let path = format!("/revocations/{}", percent_encode(name));
            parse::<Removed>(&self.call("DELETE", &path)?).map(|r| r.removed)
        }

        /// `GET /revocations`.
        pub fn revocations(&self) -> Result<Vec<Revocation>, String> {
            parse::<RevocationList>(&self.call("GET", "/revocations")?).map(|l| l.revocations)
        }

        fn closed(&self, body: &[u8]) -> Result<usize, String> {
            serde_json::from_slice::<Closed>(body)
                .map(|c| c.closed)
                .map_err(|e| format!("unexpected answer from the admin API: {e}"))
        }
    }

    /// The default length of a revocation: a day, the longest lifetime of
    /// the REST credentials ferroturn itself mints (`demo.credential_ttl`).
    pub const DEFAULT_REVOCATION_SECS: u64 = 86_400;

    /// `--until` of `ferroturn revoke` as a Unix time: a duration from
    /// `now` (`90s`, `30m`, `12h`, `7d`) or an RFC 3339 time
    /// (`2026-12-24T18:00:00Z`, an offset like `+01:00`, fractions of a
    /// second dropped).
    pub fn parse_until(text: &str, now: u64) -> Result<u64, String> {
        let bad = || {
            format!(
                "--until {text:?} is neither a duration (90s, 30m, 12h, 7d) nor an RFC 3339 time (2026-12-24T18:00:00Z)"
            )
        };
        let t = text.trim();
        if let Some(unit) = t.chars().last().filter(|c| "smhd".contains(*c)) {
            let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
            let scale = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => 86_400,
            };
            return n
                .checked_mul(scale)
                .and_then(|d| now.checked_add(d))
                .ok_or_else(bad);
        }
        rfc3339(t).ok_or_else(bad)
    }

    /// An RFC 3339 date-time (§5.6) as Unix seconds.
    fn rfc3339(t: &str) -> Option<u64> {
        let b = t.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let s = t.get(r)?;
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse().ok())?
        };
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let mut rest = &t[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            rest = &frac[digits..];
        }
        let offset = match rest {
            "Z" | "z" => 0,
            // `+HH:MM` or `-HH:MM`, looked at as bytes: the text may hold
            // characters of several bytes anywhere.
            o if o.len() == 6
                && (o.starts_with('+') || o.starts_with('-'))
                && o.as_bytes()[3] == b':' =>
            {
                let m = num(t.len() - 5..t.len() - 3)? * 3600 + num(t.len() - 2..t.len())? * 60;
                if o.starts_with('-') { -m } else { m }
            }
            _ => return None,
        };
        let days_in = [
            31,
            28 + i64::from(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)),
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&mo)
            || d < 1
            || d > days_in[(mo - 1) as usize]
            || h > 23
            || mi > 59
            || sec > 60
        {
            return None;
        }
        // Days since 1970-01-01 of a proleptic Gregorian date.
        let (yy, mm) = if mo <= 2 {
            (y - 1, mo + 9)
        } else {
            (y, mo - 3)
        };
        let era = yy.div_euclid(400);
        let yoe = yy - era * 400;
        let doy = (153 * mm + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let unix = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
        u64::try_from(unix).ok()
    }

    fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
        serde_json::from_slice(body)
            .map_err(|e| format!("unexpected answer from the admin API: {e}"))
    }

    /// The session table `ferroturn sessions` prints.
    pub fn table(sessions: &[SessionInfo]) -> String {
        if sessions.is_empty() {
            return "no sessions\n".to_owned();
        }
        // A NODE column first when the sessions come from a cluster.
        let clustered = sessions.iter().any(|s| s.node.is_some());
        let header = [
            "NODE",
            "USER",
            "CLIENT",
            "TRANSPORT",
            "RELAY",
            "RELAY_TRANSPORT",
            "AGE",
            "TO_PEER_PKTS",
            "TO_PEER_BYTES",
            "TO_CLIENT_PKTS",
            "TO_CLIENT_BYTES",
        ];
        let rows: Vec<[String; 11]> = sessions
            .iter()
            .map(|s| {
                [
                    printable(s.node.as_deref().unwrap_or("")),
                    printable(&s.user),
                    s.client.clone(),
                    s.transport.clone(),
                    s.relay.clone(),
                    s.relay_transport.clone(),
                    age(s.age_seconds),
                    s.to_peer.packets.to_string(),
                    s.to_peer.bytes.to_string(),
                    s.to_client.packets.to_string(),
                    s.to_client.bytes.to_string(),
                ]
            })
            .collect();
        let mut width = header.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[&str]| {
            let mut l = String::new();
            let skip = usize::from(!clustered);
            for (i, (c, w)) in cells.iter().zip(width).enumerate().skip(skip) {
                // Text columns left-aligned, numbers right-aligned.
                if i < 6 {
                    l.push_str(&format!("{c:<w$}  "));
                } else {
                    l.push_str(&format!("{c:>w$}  "));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&header);
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            line(&cells);
        }
        let n = sessions.len();
        out.push_str(&format!("{n} session{}\n", if n == 1 { "" } else { "s" }));
        out
    }

    /// Control characters in a user name must not reach the terminal.
    fn printable(s: &str) -> String {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    }

    fn age(secs: u64) -> String {
        match secs {
            s if s < 60 => format!("{s}s"),
            s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
            s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(authorization: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in authorization {
            h.append(header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_token_is_checked() {
        let t = digest(b"s3cret");
        assert!(authorized(&req(&[]), None));
        assert!(!authorized(&req(&[]), Some(&t)));
        for (v, ok) in [
            ("Bearer s3cret", true),
            ("bearer  s3cret", true),
            ("Bearer s3cre", false),
            ("Bearer s3cret2", false),
            ("Basic s3cret", false),
            ("s3cret", false),
            ("Bearer ", false),
        ] {
            assert_eq!(authorized(&req(&[v]), Some(&t)), ok, "{v:?}");
        }
    }

    #[test]
    fn until_takes_durations_and_rfc3339() {
        use client::parse_until;
        let now = 1_000_000;
        assert_eq!(parse_until("90s", now), Ok(now + 90));
        assert_eq!(parse_until("30m", now), Ok(now + 1800));
        assert_eq!(parse_until("12h", now), Ok(now + 43_200));
        assert_eq!(parse_until("7d", now), Ok(now + 604_800));
        assert_eq!(parse_until("1970-01-01T00:00:00Z", now), Ok(0));
        assert_eq!(parse_until("2026-12-24T18:00:00Z", now), Ok(1_798_135_200));
        assert_eq!(
            parse_until("2026-12-24T19:00:00.250+01:00", now),
            Ok(1_798_135_200)
        );
        assert_eq!(
            parse_until("2000-02-29T00:00:00-00:30", now),
            Ok(951_784_200)
        );
        for bad in [
            "",
            "h",
            "-1h",
            "10x",
            "2026-02-29T00:00:00Z",
            "2026-12-24",
            "2026-12-24T18:00:00",
            "2026-13-01T00:00:00Z",
            "2026-12-24T18:00:00+0100",
            "99999999999999999999d",
        ] {
            assert!(parse_until(bad, now).is_err(), "{bad:?}");
        }
    }

    /// `--until` is the operator's text: an offset of six bytes holding a
    /// character of two is refused, not a panic of `ferroturn revoke`
    /// (slicing it cut that character in two).
    #[test]
    fn until_with_a_wide_character_in_the_offset_is_refused() {
        use client::parse_until;
        for bad in [
            "2026-12-24T18:00:00+0\u{e9}00",
            "2026-12-24T18:00:00+\u{e9}:00",
            "2026-12-24T18:00:00+01\u{e9}0",
            "2026-12-24T18:00:00\u{e9}01:00",
        ] {
            let got = std::panic::catch_unwind(|| parse_until(bad, 1_000_000));
            assert!(
                matches!(got, Ok(Err(_))),
                "{bad:?}: {:?}",
                got.map_err(|_| "panicked")
            );
        }
    }

    #[test]
    fn percent_coding_round_trips() {
        for s in ["alice", "1795000000:bob", "a b/c%d", "zoë"] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn table_lists_sessions() {
        let s = SessionInfo {
            node: None,
            user: "al\x1bice".into(),
            client: "127.0.0.1:5000".into(),
            transport: "udp".into(),
            relay: "127.0.0.1:10000".into(),
            relay_transport: "udp".into(),
            relay_port: 10000,
            relay_v6: None,
            age_seconds: 3725,
            to_peer: TrafficReport {
                packets: 3,
                bytes: 300,
            },
            to_client: TrafficReport {
                packets: 2,
                bytes: 20,
            },
        };
        let t = client::table(&[s.clone(), s.clone()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("USER "));
        assert!(lines[1].starts_with("al?ice  127.0.0.1:5000  udp"), "{t}");
        assert!(lines[1].contains("1h02m"));
        assert!(lines[1].ends_with(" 20"));
        assert_eq!(lines[3], "2 sessions");
        assert_eq!(client::table(&[]), "no sessions\n");
        // From a cluster: a NODE column first.
        let mut other = s.clone();
        other.node = Some("turn-2".into());
        let t = client::table(&[other, s]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE    USER "), "{t}");
        assert!(
            lines[1].starts_with("turn-2  al?ice  127.0.0.1:5000"),
            "{t}"
        );
        assert!(lines[2].starts_with("        al?ice"), "{t}");
    }
}
