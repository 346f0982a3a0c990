//! The TOML configuration: schema, validation, and the settings derived
//! from it. Every error names the file, the key and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::{Redacted, StaticUser, parse_key_hex};
use crate::policy::Cidr;

/// The `[limits]` the engine enforces (defined with the engine, in its crate).
pub use crate::engine::Limits;

/// The most `server.workers` may be. Each worker has up to two threads (UDP
/// and streams), so the systemd unit's `TasksMax=` is sized from this.
pub const MAX_WORKERS: usize = 256;

/// The credentials of the bundled `config.toml`. They are published with
/// ferroturn, so a server that accepts them on a listener other than
/// loopback is an open relay: `parse` refuses that.
pub const EXAMPLE_SECRETS: [&str; 1] = ["change-me"];
/// The bundled `config.toml`'s static users (name, password); see
/// [`EXAMPLE_SECRETS`].
pub const EXAMPLE_USERS: [(&str, &str); 1] = [("alice", "wonderland")];

/// A configuration error: `FILE: KEY: REASON`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    realm: String,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    listen: Vec<RawListen>,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    peers: RawPeers,
    #[serde(default)]
    allocation: RawAllocation,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    demo: RawDemo,
    #[serde(default)]
    limits: RawLimits,
    metrics: Option<RawMetrics>,
    admin: Option<RawAdmin>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default)]
    workers: usize,
    udp_threads: Option<String>,
    udp_scheduling: Option<String>,
    alternate: Option<String>,
    drain_timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: String,
    transports: Vec<String>,
    #[serde(default = "yes")]
    turn: bool,
    cert: Option<String>,
    key: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    #[serde(default = "default_relay_address")]
    address: String,
    #[serde(default)]
    public_address: Option<String>,
    #[serde(default = "default_ports")]
    ports: String,
    address_v6: Option<String>,
    public_address_v6: Option<String>,
    default_family: Option<String>,
}

impl Default for RawRelay {
    fn default() -> Self {
        RawRelay {
            address: default_relay_address(),
            public_address: None,
            ports: default_ports(),
            address_v6: None,
            public_address_v6: None,
            default_family: None,
        }
    }
}

fn default_relay_address() -> String {
    "0.0.0.0".into()
}
fn default_ports() -> String {
    "49152-65535".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    secrets: Vec<String>,
    /// Files holding one secret each (paths, not secret).
    #[serde(default)]
    secret_files: Vec<String>,
    #[serde(default)]
    users: BTreeMap<String, RawUser>,
    #[serde(default)]
    nonce_lifetime: Option<u64>,
    #[serde(default = "yes")]
    strict_expiry: bool,
    #[serde(default)]
    expiry_grace: u64,
}

impl fmt::Debug for RawAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawAuth")
            .field("secrets", &vec![Redacted; self.secrets.len()])
            .field("secret_files", &self.secret_files)
            .field("users", &self.users)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("strict_expiry", &self.strict_expiry)
            .field("expiry_grace", &self.expiry_grace)
            .finish()
    }
}

/// One `[auth] users` value as written: a string (a password, or coturn's
/// `0x…` MD5 key), or a table `{ password = "…" }` / `{ md5 = "0x…",
/// sha256 = "0x…" }`.
enum RawUser {
    Text(String),
    Table {
        password: Option<String>,
        md5: Option<String>,
        sha256: Option<String>,
    },
}

impl fmt::Debug for RawUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &Option<String>| v.as_ref().map(|_| Redacted);
        match self {
            RawUser::Text(_) => f.write_str("Text(<redacted>)"),
            RawUser::Table {
                password,
                md5,
                sha256,
            } => f
                .debug_struct("Table")
                .field("password", &set(password))
                .field("md5", &set(md5))
                .field("sha256", &set(sha256))
                .finish(),
        }
    }
}

impl<'de> Deserialize<'de> for RawUser {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            password: Option<String>,
            md5: Option<String>,
            sha256: Option<String>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawUser;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a password, an MD5 key 0x…, or a table with password, md5 or sha256")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawUser, E> {
                Ok(RawUser::Text(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawUser, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawUser::Table {
                    password: t.password,
                    md5: t.md5,
                    sha256: t.sha256,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The credential of static user `name` (RFC 8489 §9.2.2): a password, or
/// long-term keys. A string that starts with `0x` is an MD5 key, as in
/// coturn's `user=NAME:0x…`; a password that starts with `0x` is written
/// as a table, `{ password = "0x…" }`. The error never quotes the value.
fn static_user(name: &str, raw: &RawUser) -> Result<StaticUser, (String, String)> {
    let key = format!("auth.users.{name}");
    let md5_form =
        "0x and 32 hex digits, MD5(user:realm:password) as `ferroturn password` prints it";
    let sha256_form = "0x and 64 hex digits, SHA-256(user:realm:password) as `ferroturn password --toml` prints it";
    match raw {
        RawUser::Text(t) if t.is_empty() => Err((key, "must not be empty".into())),
        RawUser::Text(t) if t.starts_with("0x") => match parse_key_hex(t) {
            Some(k) => Ok(StaticUser::Keys {
                md5: Some(k),
                sha256: None,
            }),
            None => Err((
                key,
                format!(
                    "a value that starts with 0x is an MD5 key (as in coturn): expected {md5_form}; \
                     a password that starts with 0x is written {name} = {{ password = \"0x…\" }}"
                ),
            )),
        },
        RawUser::Text(t) => Ok(StaticUser::Password(t.clone())),
        RawUser::Table {
            password: Some(_),
            md5,
            sha256,
        } if md5.is_some() || sha256.is_some() => Err((
            key,
            "give either password or keys (md5, sha256), not both".into(),
        )),
        RawUser::Table {
            password: Some(p), ..
        } => match p.is_empty() {
            true => Err((format!("{key}.password"), "must not be empty".into())),
            false => Ok(StaticUser::Password(p.clone())),
        },
        RawUser::Table {
            password: None,
            md5: None,
            sha256: None,
        } => Err((key, "give password, md5 or sha256".into())),
        RawUser::Table { md5, sha256, .. } => {
            let md5 = match md5 {
                None => None,
                Some(k) => Some(
                    parse_key_hex(k)
                        .ok_or_else(|| (format!("{key}.md5"), format!("expected {md5_form}")))?,
                ),
            };
            let sha256 =
                match sha256 {
                    None => None,
                    Some(k) => Some(parse_key_hex(k).ok_or_else(|| {
                        (format!("{key}.sha256"), format!("expected {sha256_form}"))
                    })?),
                };
            Ok(StaticUser::Keys { md5, sha256 })
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPeers {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAllocation {
    lifetime: Option<u32>,
    max_lifetime: Option<u32>,
    #[serde(default)]
    legacy_channel_numbers: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    allocations_per_user: Option<u32>,
    total_allocations: Option<u32>,
    permissions_per_allocation: Option<u32>,
    channels_per_allocation: Option<u32>,
    bandwidth: Option<u64>,
    packet_rate: Option<u32>,
    unauthenticated_rate: Option<u32>,
    stream_message_timeout: Option<u64>,
    stream_allocation_timeout: Option<u64>,
    connections_per_ip: Option<u32>,
    tls_handshakes_per_ip: Option<u32>,
    stream_queue_bytes: Option<u32>,
    stream_connections: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDemo {
    address: Option<String>,
    credential_ttl: Option<u64>,
    idle_timeout: Option<u64>,
    connections_per_ip: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    address: Option<String>,
    hosts: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: Option<String>,
    socket: Option<String>,
    token: Option<String>,
}

impl fmt::Debug for RawAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawAdmin")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| Redacted))
            .finish_non_exhaustive()
    }
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub address: SocketAddr,
    pub udp: bool,
    pub tcp: bool,
    /// false: a STUN-only listener (Binding answered, TURN refused).
    pub turn: bool,
    pub tls: bool,
    /// PEM certificate chain and private key, for `tls`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Which relay family an Allocate without REQUESTED-ADDRESS-FAMILY gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultFamily {
    /// IPv4, as RFC 8656 §7.2 says.
    Ipv4,
    /// The family the client came in with.
    SameAsClient,
}

/// How the UDP workers use their threads (`server.udp_threads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpThreads {
    /// One thread drives every worker while it is lightly loaded; each
    /// worker gets a thread of its own when that thread is busy.
    Adaptive,
    /// Each worker has a thread of its own at any load.
    Dedicated,
}

/// The scheduling policy of the UDP data-plane threads
/// (`server.udp_scheduling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpScheduling {
    /// SCHED_BATCH while the thread's own run-queue waits stay short,
    /// SCHED_OTHER while other tasks keep the CPUs busy (`io::sched`).
    Auto,
    /// SCHED_OTHER, as every other thread.
    Normal,
    /// SCHED_BATCH: a woken relay thread does not preempt the task running
    /// on its CPU (good when peers or clients share the host; under CPU
    /// contention a packet may wait for that task's slice to end).
    Batch,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Most secrets a config may name, `[auth] secrets` and `secret_files`
/// together.
pub const MAX_SECRETS: usize = 8;

/// Most bytes a file of `[auth] secret_files` may hold. A secret is one
/// line; the bound keeps a wrong path (a log, an image) from being read
/// whole at every start and reload.
const SECRET_FILE_MAX: u64 = 64 * 1024;

/// Where the admin API listens when `[admin]` names no address.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/ferroturn/admin.sock";

/// The admin API's listeners: a Unix socket (the default, guarded by its
/// file mode), a TCP address (always with a token), or both.
#[derive(Clone, PartialEq, Eq)]
pub struct Admin {
    /// TCP listener, if `admin.address` is set.
    pub address: Option<SocketAddr>,
    /// Unix socket, mode 0660: `admin.socket`, or [`DEFAULT_ADMIN_SOCKET`]
    /// when no address is set.
    pub socket: Option<PathBuf>,
    /// Bearer token required by every request, if set (always set with
    /// an address). Changed by a reload.
    pub token: Option<String>,
}

impl Admin {
    /// The listeners only, which only a restart changes.
    fn listeners(&self) -> (Option<SocketAddr>, Option<&Path>) {
        (self.address, self.socket.as_deref())
    }
}

impl fmt::Debug for Admin {
    /// Whether a token is set, never the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("address", &self.address)
            .field("socket", &self.socket)
            .field("token", &self.token.as_ref().map(|_| Redacted))
            .finish()
    }
}

/// What one TCP or TLS client may cost (the stream keys of `[limits]`).
/// Shared by every stream worker and changed by a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Seconds a connection has to finish a STUN message or ChannelData
    /// frame (RFC 8656 §12.5 framing) from its first byte; also the TLS
    /// handshake's deadline.
    pub message_timeout: u64,
    /// Seconds a connection may live without an allocation: from its
    /// accept, and again from the end of each allocation it held.
    pub allocation_timeout: u64,
    /// Connections one source IP (an IPv6 /64) may hold; 0 = no cap.
    pub connections_per_ip: u32,
    /// TLS handshakes one source IP (an IPv6 /64) may run at once; 0 = no cap.
    pub tls_handshakes_per_ip: u32,
    /// Bytes of answers and relayed data queued for one client that does
    /// not read; further frames are dropped (one frame of any size goes
    /// into an empty queue).
    pub queue_bytes: u32,
    /// Stream connections the whole server holds at once (all workers):
    /// with the per-connection bounds, the server's memory budget.
    pub connections: u32,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            message_timeout: 10,
            allocation_timeout: 60,
            connections_per_ip: 64,
            tls_handshakes_per_ip: 8,
            queue_bytes: 65_536,
            connections: 16_384,
        }
    }
}

/// The relay settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// Where relay sockets bind.
    pub address: IpAddr,
    /// What XOR-RELAYED-ADDRESS advertises.
    pub public_address: IpAddr,
    /// Inclusive port range.
    pub ports: (u16, u16),
    /// Where IPv6 relay sockets bind, if IPv6 relays are enabled.
    pub address_v6: Option<IpAddr>,
    /// What XOR-RELAYED-ADDRESS advertises for IPv6 relays.
    pub public_address_v6: Option<IpAddr>,
    pub default_family: DefaultFamily,
}

/// A validated configuration. Its `Debug` shows how many secrets there
/// are and which users, never a secret, password, key or token.
#[derive(Clone)]
#[cfg_attr(test, derive(PartialEq))]
pub struct Config {
    pub path: PathBuf,
    pub realm: String,
    pub workers: usize,
    pub udp_threads: UdpThreads,
    pub udp_scheduling: UdpScheduling,
    pub listen: Vec<Listen>,
    pub relay: Relay,
    /// REST secrets: those of `auth.secrets`, then one per file of
    /// `auth.secret_files` (read at every start and reload).
    pub secrets: Vec<String>,
    /// Static users: a password or long-term keys each.
    pub users: BTreeMap<String, StaticUser>,
    pub nonce_lifetime: u64,
    /// Close a REST credential's allocations when it expires (plus grace).
    pub strict_expiry: bool,
    pub expiry_grace: u64,
    pub limits: Limits,
    /// What one TCP or TLS client may cost.
    pub stream_limits: StreamLimits,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// Default and maximum allocation lifetime in seconds (RFC 8656 §7.2).
    pub lifetime: u32,
    pub max_lifetime: u32,
    /// Accept RFC 5766 channel numbers 0x5000–0x7FFF too.
    pub legacy_channel_numbers: bool,
    pub log_level: String,
    pub log_format: LogFormat,
    pub demo: Demo,
    /// Where `/metrics` is served (Prometheus text), if enabled.
    pub metrics: Option<SocketAddr>,
    /// Names (lower case) `/metrics` answers to in `Host`, besides IP
    /// literals and `localhost` (`[metrics] hosts`).
    pub metrics_hosts: Vec<String>,
    pub admin: Option<Admin>,
    /// Sent with 300 Try Alternate to new Allocates while draining.
    pub alternate: Option<SocketAddr>,
    /// Seconds existing allocations may live on after SIGTERM.
    pub drain_timeout: u64,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Fields added later stay out until listed here: unlisted is safe.
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("realm", &self.realm)
            .field("workers", &self.workers)
            .field("udp_threads", &self.udp_threads)
            .field("udp_scheduling", &self.udp_scheduling)
            .field("listen", &self.listen)
            .field("relay", &self.relay)
            .field("secrets", &vec![Redacted; self.secrets.len()])
            .field("users", &self.users)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("strict_expiry", &self.strict_expiry)
            .field("expiry_grace", &self.expiry_grace)
            .field("limits", &self.limits)
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .field("lifetime", &self.lifetime)
            .field("max_lifetime", &self.max_lifetime)
            .field("legacy_channel_numbers", &self.legacy_channel_numbers)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("demo", &self.demo)
            .field("metrics", &self.metrics)
            .field("admin", &self.admin)
            .field("alternate", &self.alternate)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

/// The `[demo]` section: the signaling demo's HTTP server (`ferroturn demo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demo {
    /// Where the demo's HTTP server listens (default 127.0.0.1:8080).
    pub address: SocketAddr,
    /// Lifetime in seconds of the TURN REST credentials `/ice-servers` mints.
    pub credential_ttl: u64,
    /// Seconds a signaling WebSocket may stay silent (no message, no pong
    /// to the server's pings) before it is closed.
    pub idle_timeout: u64,
    /// Connections (pages and WebSockets) one IP address, or IPv6 /64,
    /// may hold at once.
    pub connections_per_ip: usize,
}

/// The `[admin]` section: a TCP address needs a token (the API can close
/// any session, and a token is what keeps other local users and web pages
/// out); without an address it is a Unix socket.
fn admin_section(
    a: &RawAdmin,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Admin, ConfigError> {
    let token = match &a.token {
        Some(t) if t.is_empty() => return Err(err("admin.token", "must not be empty".into())),
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(err(
                "admin.token",
                "must be printable ASCII without spaces (it is sent in an HTTP header)".into(),
            ));
        }
        t => t.clone(),
    };
    let address = match &a.address {
        None => None,
        Some(v) => Some(sockaddr(v).map_err(|r| err("admin.address", r))?),
    };
    if let (Some(addr), None) = (address, &token) {
        return Err(err(
            "admin.token",
            format!(
                "required with admin.address ({addr}), loopback too: any local user or web page could otherwise close sessions; or drop admin.address to use the Unix socket {DEFAULT_ADMIN_SOCKET}"
            ),
        ));
    }
    let socket = match (&a.socket, address) {
        (Some(p), _) => Some(PathBuf::from(p)),
        (None, None) => Some(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
        (None, Some(_)) => None,
    };
    if let Some(p) = &socket {
        if !p.is_absolute() {
            return Err(err(
                "admin.socket",
                format!("{:?} must be an absolute path", p.display()),
            ));
        }
        // sun_path holds 108 bytes with the terminating NUL.
        if p.as_os_str().len() > 107 {
            return Err(err(
                "admin.socket",
                "longer than 107 bytes, the most a Unix socket path can be".into(),
            ));
        }
    }
    Ok(Admin {
        address,
        socket,
        token,
    })
}

/// Read and validate the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        key: "(file)".into(),
        reason: e.to_string(),
    })?;
    parse(path, &text)
}

/// A reload: `new` with every setting that only a restart applies as
/// `running` has it, and the keys of those that differ. A `[[listen]]`
/// entry's TLS `cert` and `key` paths are live: a running TLS listener
/// takes them from the same entry of `new` if it names the same address.
pub fn keep_restart_only(running: &Config, new: Config) -> (Config, Vec<&'static str>) {
    let shape = |c: &Config| -> Vec<Listen> {
        c.listen
            .iter()
            .map(|l| Listen {
                cert: None,
                key: None,
                ..l.clone()
            })
            .collect()
    };
    let changed = [
        ("listen", shape(running) != shape(&new)),
        ("relay", running.relay != new.relay),
        ("server.workers", running.workers != new.workers),
        ("server.udp_threads", running.udp_threads != new.udp_threads),
        (
            "server.udp_scheduling",
            running.udp_scheduling != new.udp_scheduling,
        ),
        ("realm", running.realm != new.realm),
        ("log.format", running.log_format != new.log_format),
        (
            "metrics",
            running.metrics != new.metrics || running.metrics_hosts != new.metrics_hosts,
        ),
        (
            "admin",
            running.admin.as_ref().map(Admin::listeners)
                != new.admin.as_ref().map(Admin::listeners),
        ),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect();
    let listen = running
        .listen
        .iter()
        .enumerate()
        .map(|(i, l)| match new.listen.get(i) {
            Some(n) if l.tls && n.tls && n.address == l.address => Listen {
                cert: n.cert.clone(),
                key: n.key.clone(),
                ..l.clone()
            },
            _ => l.clone(),
        })
        .collect();
    let kept = Config {
        listen,
        relay: running.relay.clone(),
        workers: running.workers,
        udp_threads: running.udp_threads,
        udp_scheduling: running.udp_scheduling,
        realm: running.realm.clone(),
        log_format: running.log_format,
        metrics: running.metrics,
        metrics_hosts: running.metrics_hosts.clone(),
        // The listeners stay; the token is rotated by the reload, but never
        // taken away from a running TCP listener: a file that moves the API
        // to the Unix socket only (a restart away) needs no token, and must
        // not leave the TCP listener open until then.
        admin: running.admin.clone().map(|a| Admin {
            token: match &new.admin {
                Some(n) if n.token.is_some() || a.address.is_none() => n.token.clone(),
                _ => a.token.clone(),
            },
            ..a
        }),
        ..new
    };
    (kept, changed)
}

/// A secret or token read from a file or the environment: its first line,
/// without surrounding blanks (a trailing newline is no part of it); empty
/// is refused. `from` names the source in the error.
pub fn secret_text(text: &str, from: &str) -> Result<String, String> {
    let t = text.lines().next().unwrap_or("").trim();
    if t.is_empty() {
        return Err(format!("{from}: empty"));
    }
    Ok(t.to_owned())
}

/// [`secret_text`] of the file at `path`, given with `flag`.
pub fn secret_file(flag: &str, path: &Path) -> Result<String, String> {
    let from = format!("{flag} {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| format!("{from}: {e}"))?;
    secret_text(&text, &from)
}

/// The secret held by a file of `[auth] secret_files`: [`secret_text`] of
/// it, named by its path. The file is opened without blocking and must be
/// a regular file of at most [`SECRET_FILE_MAX`] bytes, so that a FIFO, a
/// device or a huge file named by mistake cannot hold up a start or a
/// reload (the reload runs on the server's main loop).
fn secret_files_entry(path: &str) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !Path::new(path).is_absolute() {
        return Err(format!(
            "{path:?} is not an absolute path (the server's working directory is no place to look)"
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path}: not a regular file"));
    }
    if meta.len() > SECRET_FILE_MAX {
        return Err(format!(
            "{path}: {} bytes, more than {SECRET_FILE_MAX}: a secret file holds the secret on its first line",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(SECRET_FILE_MAX)
        .read_to_string(&mut text)
        .map_err(|e| format!("{path}: {e}"))?;
    secret_text(&text, path)
}

/// The value of a key that names one of a few values, the first being the
/// default; else the reason.
fn one_of<T: Copy>(v: Option<&str>, values: &[(&str, T)]) -> Result<T, String> {
    let Some(v) = v else {
        return Ok(values[0].1);
    };
    if let Some((_, t)) = values.iter().find(|(name, _)| *name == v) {
        return Ok(*t);
    }
    let names: Vec<String> = values.iter().map(|(n, _)| format!("{n:?}")).collect();
    let (last, rest) = names.split_last().expect("at least one value");
    Err(format!("{v:?}: expected {} or {last}", rest.join(", ")))
}

/// Whether a key path (`auth.secrets[0]`, `admin`, …) lies in a section
/// whose values are secret: `[auth]` and `[admin]`.
fn holds_secrets(path: &str) -> bool {
    ["auth", "admin"].iter().any(|s| {
        path.strip_prefix(s)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    })
}

/// The first key of a TOML line: `[auth]` and `auth.secrets = …` give "auth".
fn first_key(line: &str) -> &str {
    line.trim_start_matches(|c: char| c == '[' || c.is_whitespace())
        .split(|c: char| c == ']' || c == '=' || c == '.' || c.is_whitespace())
        .next()
        .unwrap_or("")
        .trim_matches('"')
}

/// The section at byte `offset` of a TOML text, as far as a syntax error
/// lets us know it: the first key of the line there when it names a
/// section holding secrets (`auth.secrets = …`, `admin = { … }`), else the
/// last table header before it (`[auth]` gives "auth").
fn section_at(text: &str, offset: usize) -> &str {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let own = first_key(&text[line_start..]);
    if holds_secrets(own) {
        return own;
    }
    before[..line_start]
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map_or("", first_key)
}

/// A toml or serde message with every value it quotes hidden, for errors in
/// `[auth]` and `[admin]` (toml's messages quote the offending value: a
/// string as `"…"`, with escapes, anything else between backticks). Names
/// of fields and keys, which such messages also quote, are not secret and
/// stay when the message is about a field or key.
fn hide_values(msg: &str) -> String {
    if ["unknown field", "missing field", "duplicate"]
        .iter()
        .any(|p| msg.starts_with(p))
    {
        return msg.to_owned();
    }
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("(value hidden)");
            }
            '`' => {
                let quoted: String = chars.by_ref().take_while(|&c| c != '`').collect();
                // Punctuation the grammar expects (`]`, `=`, `#`) is no value.
                if quoted.chars().count() <= 3 && !quoted.chars().any(char::is_alphanumeric) {
                    out.push_str(&format!("`{quoted}`"));
                } else {
                    out.push_str("(value hidden)");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `ip` is a loopback address (also as an IPv4-mapped IPv6 one).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Whether `v` lies in `lo..=hi`; else the reason (`unit` follows the
/// bounds in it).
fn between<T: PartialOrd + fmt::Display + Copy>(
    v: T,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("must be between {lo} and {hi}{unit}"))
    }
}

/// An `IP:PORT` value, or the reason it is not one.
fn sockaddr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("{v:?} is not an IP:PORT address"))
}

/// The keys [`parse`] accepts, table by table: serde's field list of each
/// raw struct, which `deny_unknown_fields` holds files to. `config_keys`'
/// tests compare them with the reference table.
#[cfg(test)]
pub(crate) fn accepted_keys() -> Vec<(&'static str, &'static [&'static str])> {
    use crate::config_keys::fields_of as f;
    vec![
        ("", f::<RawConfig>()),
        ("server", f::<RawServer>()),
        ("listen", f::<RawListen>()),
        ("relay", f::<RawRelay>()),
        ("auth", f::<RawAuth>()),
        ("peers", f::<RawPeers>()),
        ("allocation", f::<RawAllocation>()),
        ("limits", f::<RawLimits>()),
        ("log", f::<RawLog>()),
        ("metrics", f::<RawMetrics>()),
        ("admin", f::<RawAdmin>()),
        ("demo", f::<RawDemo>()),
    ]
}

/// Validate configuration `text` as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let err = |key: &str, reason: String| ConfigError {
        file: file.clone(),
        key: key.to_owned(),
        reason,
    };
    let de = toml::Deserializer::new(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        // One line (toml puts "expected …" on a second one), so that a log
        // or journal entry holds all of it.
        let mut msg = inner
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let key = if key == "." || key.is_empty() {
            "(syntax)".to_string()
        } else {
            key
        };
        let section = match key.as_str() {
            "(syntax)" => inner.span().map_or("", |s| section_at(text, s.start)),
            k => k,
        };
        if holds_secrets(section) {
            msg = hide_values(&msg);
        }
        err(&key, format!("{msg}{line}"))
    })?;

    if raw.realm.trim().is_empty() {
        return Err(err("realm", "must not be empty".into()));
    }

    let workers = if raw.server.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else if raw.server.workers > MAX_WORKERS {
        return Err(err("server.workers", format!("at most {MAX_WORKERS}")));
    } else {
        raw.server.workers
    };

    let udp_threads = one_of(
        raw.server.udp_threads.as_deref(),
        &[
            ("adaptive", UdpThreads::Adaptive),
            ("dedicated", UdpThreads::Dedicated),
        ],
    )
    .map_err(|r| err("server.udp_threads", r))?;
    let udp_scheduling = one_of(
        raw.server.udp_scheduling.as_deref(),
        &[
            ("auto", UdpScheduling::Auto),
            ("normal", UdpScheduling::Normal),
            ("batch", UdpScheduling::Batch),
        ],
    )
    .map_err(|r| err("server.udp_scheduling", r))?;

    if raw.listen.is_empty() {
        return Err(err(
            "listen",
            "at least one [[listen]] entry is needed".into(),
        ));
    }
    let mut listen = Vec::new();
    for (i, l) in raw.listen.iter().enumerate() {
        let address = sockaddr(&l.address).map_err(|r| err(&format!("listen[{i}].address"), r))?;
        let mut entry = Listen {
            address,
            udp: false,
            tcp: false,
            turn: l.turn,
            tls: false,
            cert: l.cert.as_ref().map(PathBuf::from),
            key: l.key.as_ref().map(PathBuf::from),
        };
        if l.transports.is_empty() {
            return Err(err(
                &format!("listen[{i}].transports"),
                "name at least one of \"udp\", \"tcp\"".into(),
            ));
        }
        for t in &l.transports {
            match t.as_str() {
                "udp" => entry.udp = true,
                "tcp" => entry.tcp = true,
                "tls" => entry.tls = true,
                other => {
                    return Err(err(
                        &format!("listen[{i}].transports"),
                        format!(
                            "unknown transport {other:?}: expected \"udp\", \"tcp\" or \"tls\""
                        ),
                    ));
                }
            }
        }
        if entry.tls && entry.tcp {
            return Err(err(
                &format!("listen[{i}].transports"),
                "\"tcp\" and \"tls\" cannot share a port: give each its own [[listen]] entry"
                    .into(),
            ));
        }
        for (name, v) in [("cert", &entry.cert), ("key", &entry.key)] {
            match (entry.tls, v) {
                (true, None) => {
                    return Err(err(
                        &format!("listen[{i}].{name}"),
                        format!("a \"tls\" listener needs a PEM {name} file"),
                    ));
                }
                (false, Some(_)) => {
                    return Err(err(
                        &format!("listen[{i}].{name}"),
                        "only used with transports = [\"tls\"]".into(),
                    ));
                }
                _ => {}
            }
        }
        listen.push(entry);
    }

    let address: IpAddr = raw.relay.address.parse().map_err(|_| {
        err(
            "relay.address",
            format!("{:?} is not an IP address", raw.relay.address),
        )
    })?;
    let public_address = match &raw.relay.public_address {
        Some(p) => {
            let ip: IpAddr = p.parse().map_err(|_| {
                err(
                    "relay.public_address",
                    format!("{p:?} is not an IP address"),
                )
            })?;
            if ip.is_ipv4() != address.is_ipv4() {
                return Err(err(
                    "relay.public_address",
                    "must be of the same address family as relay.address".into(),
                ));
            }
            if ip.is_unspecified() {
                return Err(err(
                    "relay.public_address",
                    "must be an address clients can reach, not unspecified".into(),
                ));
            }
            ip
        }
        None if address.is_unspecified() => {
            return Err(err(
                "relay.public_address",
                format!(
                    "required when relay.address is {address}: clients must be told a reachable relay address"
                ),
            ));
        }
        None => address,
    };
    if address.is_ipv6() {
        return Err(err(
            "relay.address",
            "must be IPv4; IPv6 relays are set with relay.address_v6".into(),
        ));
    }
    let address_v6 = match &raw.relay.address_v6 {
        None => None,
        Some(a) => match a.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv6() => Some(ip),
            _ => {
                return Err(err(
                    "relay.address_v6",
                    format!("{a:?} is not an IPv6 address"),
                ));
            }
        },
    };
    let public_address_v6 = match (&raw.relay.public_address_v6, address_v6) {
        (Some(_), None) => {
            return Err(err(
                "relay.public_address_v6",
                "needs relay.address_v6".into(),
            ));
        }
        (Some(p), Some(_)) => match p.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv6() && !ip.is_unspecified() => Some(ip),
            _ => {
                return Err(err(
                    "relay.public_address_v6",
                    format!("{p:?} is not a reachable IPv6 address"),
                ));
            }
        },
        (None, Some(a)) if a.is_unspecified() => {
            return Err(err(
                "relay.public_address_v6",
                format!(
                    "required when relay.address_v6 is {a}: clients must be told a reachable relay address"
                ),
            ));
        }
        (None, a) => a,
    };
    let default_family = one_of(
        raw.relay.default_family.as_deref(),
        &[
            ("ipv4", DefaultFamily::Ipv4),
            ("same-as-client", DefaultFamily::SameAsClient),
        ],
    )
    .map_err(|r| err("relay.default_family", r))?;
    let ports = parse_ports(&raw.relay.ports).map_err(|r| err("relay.ports", r))?;

    let turn = listen.iter().any(|l| l.turn);
    if turn
        && raw.auth.secrets.is_empty()
        && raw.auth.secret_files.is_empty()
        && raw.auth.users.is_empty()
    {
        return Err(err(
            "auth",
            "no credentials configured: set auth.secrets, auth.secret_files or auth.users (TURN never relays without authentication)".into(),
        ));
    }
    // Each secret costs every signed request under a REST name its own
    // HMACs (the server cannot tell which one minted it): a rotation needs
    // two or three, so a long list is a cost for nothing.
    if raw.auth.secrets.len() > MAX_SECRETS {
        return Err(err(
            "auth.secrets",
            format!(
                "at most {MAX_SECRETS} (each is tried on every REST request; a rotation needs 2)"
            ),
        ));
    }
    if raw.auth.secrets.len() + raw.auth.secret_files.len() > MAX_SECRETS {
        return Err(err(
            "auth.secret_files",
            format!(
                "at most {MAX_SECRETS} secrets in auth.secrets and auth.secret_files together (each is tried on every REST request)"
            ),
        ));
    }
    for (i, s) in raw.auth.secrets.iter().enumerate() {
        if s.is_empty() {
            return Err(err(
                &format!("auth.secrets[{i}]"),
                "must not be empty".into(),
            ));
        }
    }
    // Every secret with the key that names it in an error: the inline ones,
    // then one per file, read now (at start, `check` and every reload).
    let mut secrets: Vec<(String, String)> = raw
        .auth
        .secrets
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("auth.secrets[{i}]"), s.clone()))
        .collect();
    for (i, path) in raw.auth.secret_files.iter().enumerate() {
        let key = format!("auth.secret_files[{i}]");
        let secret = secret_files_entry(path).map_err(|r| err(&key, r))?;
        secrets.push((key, secret));
    }
    let mut users = BTreeMap::new();
    for (u, raw_user) in &raw.auth.users {
        if u.is_empty() {
            return Err(err("auth.users", "user names must not be empty".into()));
        }
        let user = static_user(u, raw_user).map_err(|(key, reason)| err(&key, reason))?;
        users.insert(u.clone(), user);
    }
    // The first command must not make an open relay: the bundled example's
    // credentials are refused on any TURN listener off loopback.
    if let Some((i, l)) = listen
        .iter()
        .enumerate()
        .find(|(_, l)| l.turn && !is_loopback(l.address.ip()))
    {
        let why = format!(
            "refused while listen[{i}] ({}) is not loopback: anyone can read this credential in ferroturn's bundled config.toml and relay through this server",
            l.address
        );
        if let Some((key, _)) = secrets
            .iter()
            .find(|(_, s)| EXAMPLE_SECRETS.contains(&s.as_str()))
        {
            return Err(err(
                key,
                format!(
                    "is the bundled example's secret, {why}; set a secret of your own (e.g. `openssl rand -base64 32`) or listen on loopback only"
                ),
            ));
        }
        if let Some((name, _)) = EXAMPLE_USERS.iter().find(|(n, p)| {
            users
                .get(*n)
                .is_some_and(|u: &StaticUser| u.is(n, &raw.realm, p))
        }) {
            return Err(err(
                &format!("auth.users.{name}"),
                format!(
                    "is the bundled example's user and password, {why}; remove it or give it a password of your own"
                ),
            ));
        }
    }
    let nonce_lifetime = raw.auth.nonce_lifetime.unwrap_or(600);
    between(nonce_lifetime, 10, 86_400, " seconds").map_err(|r| err("auth.nonce_lifetime", r))?;

    let cidrs = |key: &str, list: &[String]| -> Result<Vec<Cidr>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, s)| s.parse().map_err(|r| err(&format!("{key}[{i}]"), r)))
            .collect()
    };
    let allow = cidrs("peers.allow", &raw.peers.allow)?;
    let deny = cidrs("peers.deny", &raw.peers.deny)?;

    let l = &raw.limits;
    let port_count = (ports.1 - ports.0) as u32 + 1;
    let d = Limits::default();
    let limits = Limits {
        allocations_per_user: l.allocations_per_user.unwrap_or(d.allocations_per_user),
        total_allocations: match l.total_allocations {
            None | Some(0) => port_count,
            Some(n) => n,
        },
        permissions_per_allocation: l
            .permissions_per_allocation
            .unwrap_or(d.permissions_per_allocation),
        channels_per_allocation: l
            .channels_per_allocation
            .unwrap_or(d.channels_per_allocation),
        bandwidth: l.bandwidth.unwrap_or(d.bandwidth),
        packet_rate: l.packet_rate.unwrap_or(d.packet_rate),
        unauthenticated_rate: l.unauthenticated_rate.unwrap_or(d.unauthenticated_rate),
    };
    for (key, v) in [
        ("limits.allocations_per_user", limits.allocations_per_user),
        (
            "limits.permissions_per_allocation",
            limits.permissions_per_allocation,
        ),
        (
            "limits.channels_per_allocation",
            limits.channels_per_allocation,
        ),
    ] {
        if v == 0 {
            return Err(err(key, "must be at least 1".into()));
        }
    }
    if limits.channels_per_allocation > 4096 {
        return Err(err(
            "limits.channels_per_allocation",
            "at most 4096 (the channel number range)".into(),
        ));
    }

    let stream_limits = stream_limits(l).map_err(|(key, r)| err(key, r))?;

    let lifetime = raw.allocation.lifetime.unwrap_or(600);
    let max_lifetime = raw.allocation.max_lifetime.unwrap_or(3600);
    if lifetime == 0 {
        return Err(err("allocation.lifetime", "must be positive".into()));
    }
    if max_lifetime < lifetime {
        return Err(err(
            "allocation.max_lifetime",
            "must not be less than allocation.lifetime".into(),
        ));
    }

    let log_format = one_of(
        raw.log.format.as_deref(),
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    )
    .map_err(|r| err("log.format", r))?;
    let metrics = match &raw.metrics {
        None => None,
        Some(m) => Some(
            sockaddr(m.address.as_deref().unwrap_or("127.0.0.1:9641"))
                .map_err(|r| err("metrics.address", r))?,
        ),
    };
    let mut metrics_hosts = Vec::new();
    for (i, h) in raw
        .metrics
        .as_ref()
        .and_then(|m| m.hosts.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name_ok = (1..=253).contains(&h.len())
            && h.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok {
            return Err(err(
                &format!("metrics.hosts[{i}]"),
                format!(
                    "{h:?} is not a host name (no port, no IP address: those are always accepted)"
                ),
            ));
        }
        metrics_hosts.push(h.to_ascii_lowercase());
    }
    let admin = match &raw.admin {
        None => None,
        Some(a) => Some(admin_section(a, &err)?),
    };
    let alternate = match &raw.server.alternate {
        None => None,
        Some(a) => Some(sockaddr(a).map_err(|r| err("server.alternate", r))?),
    };
    let drain_timeout = raw.server.drain_timeout.unwrap_or(60);

    let log_level = raw.log.level.unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        return Err(err(
            "log.level",
            format!("{log_level:?} is not a level (error, warn, info, debug, trace) or filter"),
        ));
    }

    let demo = Demo {
        address: match &raw.demo.address {
            Some(a) => sockaddr(a).map_err(|r| err("demo.address", r))?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        },
        credential_ttl: raw.demo.credential_ttl.unwrap_or(3600),
        idle_timeout: raw.demo.idle_timeout.unwrap_or(60),
        connections_per_ip: raw.demo.connections_per_ip.unwrap_or(32),
    };
    between(demo.idle_timeout, 1, 3600, " seconds").map_err(|r| err("demo.idle_timeout", r))?;
    between(demo.connections_per_ip, 1, 4096, "").map_err(|r| err("demo.connections_per_ip", r))?;
    between(demo.credential_ttl, 60, 86_400, " seconds")
        .map_err(|r| err("demo.credential_ttl", r))?;

    Ok(Config {
        path: path.to_owned(),
        realm: raw.realm,
        workers,
        udp_threads,
        udp_scheduling,
        listen,
        relay: Relay {
            address,
            public_address,
            ports,
            address_v6,
            public_address_v6,
            default_family,
        },
        secrets: secrets.into_iter().map(|(_, s)| s).collect(),
        users,
        nonce_lifetime,
        strict_expiry: raw.auth.strict_expiry,
        expiry_grace: raw.auth.expiry_grace,
        limits,
        stream_limits,
        allow,
        deny,
        lifetime,
        max_lifetime,
        legacy_channel_numbers: raw.allocation.legacy_channel_numbers,
        log_level,
        log_format,
        demo,
        metrics,
        metrics_hosts,
        admin,
        alternate,
        drain_timeout,
    })
}

/// The stream keys of `[limits]`, validated: the key and reason of the
/// first bad one. Timeouts cannot be turned off (that would reopen the
/// trickling attack); the per-IP caps can (0), for servers behind a proxy
/// or NAT that shows every client with one address.
fn stream_limits(l: &RawLimits) -> Result<StreamLimits, (&'static str, String)> {
    let d = StreamLimits::default();
    let s = StreamLimits {
        message_timeout: l.stream_message_timeout.unwrap_or(d.message_timeout),
        allocation_timeout: l.stream_allocation_timeout.unwrap_or(d.allocation_timeout),
        connections_per_ip: l.connections_per_ip.unwrap_or(d.connections_per_ip),
        tls_handshakes_per_ip: l.tls_handshakes_per_ip.unwrap_or(d.tls_handshakes_per_ip),
        queue_bytes: l.stream_queue_bytes.unwrap_or(d.queue_bytes),
        connections: l.stream_connections.unwrap_or(d.connections),
    };
    between(s.connections, 1, 1 << 20, "").map_err(|r| ("limits.stream_connections", r))?;
    between(s.message_timeout, 1, 300, " seconds")
        .map_err(|r| ("limits.stream_message_timeout", r))?;
    between(s.allocation_timeout, 1, 3600, " seconds")
        .map_err(|r| ("limits.stream_allocation_timeout", r))?;
    if s.connections_per_ip != 0
        && (s.tls_handshakes_per_ip == 0 || s.tls_handshakes_per_ip > s.connections_per_ip)
    {
        return Err((
            "limits.tls_handshakes_per_ip",
            format!(
                "must be between 1 and limits.connections_per_ip ({}): a handshake is a connection",
                s.connections_per_ip
            ),
        ));
    }
    between(s.queue_bytes, 4096, 16 << 20, " bytes")
        .map_err(|r| ("limits.stream_queue_bytes", r))?;
    Ok(s)
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range START-END"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: start is not a port number"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: end is not a port number"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 1 <= START <= END"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
realm = "example.org"
[[listen]]
address = "0.0.0.0:3478"
transports = ["udp", "tcp"]
[relay]
address = "0.0.0.0"
public_address = "203.0.113.10"
ports = "49152-65535"
[auth]
secrets = ["s3cret"]
users = { alice = "liddell" }
[peers]
allow = []
deny = []
"#;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    #[test]
    fn contract_example_parses() {
        let c = p(GOOD).unwrap();
        assert_eq!(c.relay.ports, (49152, 65535));
        assert_eq!(
            c.relay.public_address,
            "203.0.113.10".parse::<IpAddr>().unwrap()
        );
        assert!(c.listen[0].udp && c.listen[0].tcp);
        assert_eq!(c.users["alice"], "liddell".into());
        assert_eq!(c.udp_threads, UdpThreads::Adaptive);
        assert_eq!(c.udp_scheduling, UdpScheduling::Auto);
        let server = |line: &str| {
            p(&GOOD.replace("[[listen]]", &format!("[server]\n{line}\n[[listen]]"))).unwrap()
        };
        let c = server("udp_threads = \"dedicated\"");
        assert_eq!(c.udp_threads, UdpThreads::Dedicated);
        let c = server("udp_scheduling = \"batch\"");
        assert_eq!(c.udp_scheduling, UdpScheduling::Batch);
        let c = server("udp_scheduling = \"normal\"");
        assert_eq!(c.udp_scheduling, UdpScheduling::Normal);
    }

    #[test]
    fn a_reload_keeps_restart_only_settings_and_names_them() {
        let running = p(GOOD).unwrap();
        let new = p(&GOOD
            .replace("realm = \"example.org\"", "realm = \"other.org\"")
            .replace("liddell", "looking-glass")
            .replace(
                "[[listen]]",
                "[server]\nudp_scheduling = \"batch\"\n[[listen]]",
            ))
        .unwrap();
        let (kept, changed) = keep_restart_only(&running, new);
        assert_eq!(changed, ["server.udp_scheduling", "realm"]);
        assert_eq!(kept.realm, "example.org");
        assert_eq!(kept.udp_scheduling, UdpScheduling::Auto);
        // A live setting comes from the new file.
        assert_eq!(kept.users["alice"], "looking-glass".into());
        let (_, changed) = keep_restart_only(&running, running.clone());
        assert!(changed.is_empty(), "{changed:?}");

        // TLS paths are live for the same listener, and only for it.
        let tls = |addr: &str, cert: &str| {
            let text = GOOD.replace(
                "[[listen]]",
                &format!(
                    "[[listen]]\naddress = \"{addr}\"\ntransports = [\"tls\"]\ncert = \"{cert}\"\nkey = \"k.pem\"\n\n[[listen]]"
                ),
            );
            p(&text).unwrap()
        };
        let running = tls("127.0.0.1:5349", "old.pem");
        let (kept, changed) = keep_restart_only(&running, tls("127.0.0.1:5349", "new.pem"));
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(kept.listen[0].cert, Some(PathBuf::from("new.pem")));
        let (kept, changed) = keep_restart_only(&running, tls("127.0.0.1:5350", "new.pem"));
        assert_eq!(changed, ["listen"]);
        assert_eq!(kept.listen[0].cert, Some(PathBuf::from("old.pem")));
    }

    #[test]
    fn bundled_config_is_valid() {
        let text = include_str!("../config.toml");
        p(text).unwrap();
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = p(&GOOD.replace("49152-65535", "9-1")).unwrap_err();
        assert_eq!(e.key, "relay.ports");
        assert!(e.to_string().starts_with("t.toml: relay.ports: "));
        let e = p(&GOOD.replace("allow = []", "allow = [\"10.0.0.0/40\"]")).unwrap_err();
        assert_eq!(e.key, "peers.allow[0]");
        let e = p(&GOOD.replace("\nports =", "\nportz =")).unwrap_err();
        assert!(e.key.starts_with("relay"), "{e}");
        assert!(e.reason.contains("portz"), "{e}");
        let e = p(&GOOD.replace("\"udp\", \"tcp\"", "\"sctp\"")).unwrap_err();
        assert_eq!(e.key, "listen[0].transports");
        let e = p(&GOOD.replace("realm = \"example.org\"", "realm = 5")).unwrap_err();
        assert_eq!(e.key, "realm");
        let e = p(&GOOD.replace("[[listen]]", "[server]\nudp_threads = \"many\"\n[[listen]]"))
            .unwrap_err();
        assert_eq!(e.key, "server.udp_threads");
        assert!(e.reason.contains("\"dedicated\""), "{e}");
        let e = p(&GOOD.replace(
            "[[listen]]",
            "[server]\nudp_scheduling = \"fifo\"\n[[listen]]",
        ))
        .unwrap_err();
        assert_eq!(e.key, "server.udp_scheduling");
        assert_eq!(
            e.reason,
            "\"fifo\": expected \"auto\", \"normal\" or \"batch\""
        );
        let e = p(&GOOD.replace(
            "secrets = [\"s3cret\"]\nusers = { alice = \"liddell\" }",
            "",
        ))
        .unwrap_err();
        assert_eq!(e.key, "auth");
        let e = p(&format!("{GOOD}[limits]\npermissions_per_allocation = 0\n")).unwrap_err();
        assert_eq!(e.key, "limits.permissions_per_allocation");
    }

    #[test]
    fn admin_listens_on_a_unix_socket_unless_given_an_address_and_a_token() {
        let admin = |section: &str| p(&format!("{GOOD}[admin]\n{section}\n"));
        let a = admin("").unwrap().admin.unwrap();
        assert_eq!(
            (a.address, a.socket.as_deref(), a.token.as_deref()),
            (None, Some(Path::new(DEFAULT_ADMIN_SOCKET)), None)
        );
        assert!(p(GOOD).unwrap().admin.is_none(), "no section, no admin API");
        let a = admin("socket = \"/tmp/x/a.sock\"\ntoken = \"t\"")
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(a.socket.as_deref(), Some(Path::new("/tmp/x/a.sock")));
        assert_eq!(a.token.as_deref(), Some("t"));
        let a = admin("address = \"127.0.0.1:9642\"\ntoken = \"t\"")
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(a.address, Some("127.0.0.1:9642".parse().unwrap()));
        assert_eq!(a.socket, None);
        let both = "address = \"[::1]:9642\"\nsocket = \"/run/f/a.sock\"\ntoken = \"t\"";
        let a = admin(both).unwrap().admin.unwrap();
        assert!(a.address.is_some() && a.socket.is_some());

        for (section, key, reason) in [
            (
                "address = \"127.0.0.1:9642\"",
                "admin.token",
                "loopback too",
            ),
            ("address = \"0.0.0.0:9642\"", "admin.token", "required"),
            (
                "address = \"localhost:9642\"\ntoken = \"t\"",
                "admin.address",
                "IP:PORT",
            ),
            ("token = \"\"", "admin.token", "empty"),
            ("token = \"a b\"", "admin.token", "printable"),
            ("socket = \"admin.sock\"", "admin.socket", "absolute"),
            ("socket = \"/x\"\nport = 1", "admin.port", "unknown field"),
        ] {
            let e = admin(section).unwrap_err();
            assert_eq!(e.key, key, "{section}: {e}");
            assert!(e.reason.contains(reason), "{section}: {e}");
            assert!(e.to_string().starts_with(&format!("t.toml: {key}")), "{e}");
        }
        let long = format!("socket = \"/{}\"", "a".repeat(120));
        assert_eq!(admin(&long).unwrap_err().key, "admin.socket");
    }

    #[test]
    fn metrics_hosts_are_host_names() {
        let c = p(&format!(
            "{GOOD}[metrics]\nhosts = [\"Turn1.Example.org\", \"prom\"]\n"
        ))
        .unwrap();
        assert_eq!(c.metrics_hosts, ["turn1.example.org", "prom"]);
        for bad in ["turn1:9641", "", "a..b", "[::1]", "a b"] {
            let e = p(&format!("{GOOD}[metrics]\nhosts = [\"ok\", {bad:?}]\n")).unwrap_err();
            assert_eq!(e.key, "metrics.hosts[1]", "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_reload_rotates_the_admin_token_and_keeps_its_listeners() {
        let with = |section: &str| p(&format!("{GOOD}[admin]\n{section}\n")).unwrap();
        let running = with("address = \"127.0.0.1:9642\"\ntoken = \"old\"");
        let (kept, changed) = keep_restart_only(
            &running,
            with("address = \"127.0.0.1:9642\"\ntoken = \"new\""),
        );
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(kept.admin.as_ref().unwrap().token.as_deref(), Some("new"));
        let (kept, changed) = keep_restart_only(
            &running,
            with("address = \"127.0.0.1:9643\"\ntoken = \"new\""),
        );
        assert_eq!(changed, ["admin"]);
        let a = kept.admin.unwrap();
        assert_eq!(a.address, Some("127.0.0.1:9642".parse().unwrap()));
        assert_eq!(a.token.as_deref(), Some("new"), "the token still rotates");
        // On the socket, a token may come and go.
        let running = with("");
        let (kept, _) = keep_restart_only(&running, with("token = \"t\""));
        assert_eq!(kept.admin.unwrap().token.as_deref(), Some("t"));
    }

    #[test]
    fn stun_only_listeners_need_no_credentials_and_limits_default() {
        let text = GOOD
            .replace(
                "secrets = [\"s3cret\"]\nusers = { alice = \"liddell\" }",
                "",
            )
            .replace(
                "transports = [\"udp\", \"tcp\"]",
                "transports = [\"udp\"]\nturn = false",
            );
        let c = p(&text).unwrap();
        assert!(!c.listen[0].turn);
        assert_eq!(c.limits.allocations_per_user, 10);
        assert_eq!(c.limits.total_allocations, 65535 - 49152 + 1);
        assert!(c.strict_expiry);
    }

    #[test]
    fn stream_limits_default_validate_and_reload() {
        let c = p(GOOD).unwrap();
        assert_eq!(c.stream_limits, StreamLimits::default());
        assert_eq!(c.stream_limits.message_timeout, 10);
        assert_eq!(c.stream_limits.allocation_timeout, 60);
        assert_eq!(c.stream_limits.connections_per_ip, 64);
        assert_eq!(c.stream_limits.tls_handshakes_per_ip, 8);
        assert_eq!(c.stream_limits.queue_bytes, 65_536);
        let with = |lines: &str| p(&format!("{GOOD}[limits]\n{lines}\n"));
        let c = with("stream_message_timeout = 2\nstream_allocation_timeout = 5\nconnections_per_ip = 0\ntls_handshakes_per_ip = 0\nstream_queue_bytes = 4096").unwrap();
        assert_eq!(
            c.stream_limits,
            StreamLimits {
                message_timeout: 2,
                allocation_timeout: 5,
                connections_per_ip: 0,
                tls_handshakes_per_ip: 0,
                queue_bytes: 4096,
                connections: 16_384,
            }
        );
        for (line, key) in [
            (
                "stream_message_timeout = 0",
                "limits.stream_message_timeout",
            ),
            (
                "stream_message_timeout = 301",
                "limits.stream_message_timeout",
            ),
            (
                "stream_allocation_timeout = 0",
                "limits.stream_allocation_timeout",
            ),
            ("connections_per_ip = 4", "limits.tls_handshakes_per_ip"),
            ("tls_handshakes_per_ip = 0", "limits.tls_handshakes_per_ip"),
            ("stream_queue_bytes = 100", "limits.stream_queue_bytes"),
            (
                "stream_queue_bytes = 999999999",
                "limits.stream_queue_bytes",
            ),
            ("stream_queue_bytes = -1", "limits.stream_queue_bytes"),
            ("stream_connections = 0", "limits.stream_connections"),
        ] {
            let e = with(line).unwrap_err();
            assert_eq!(e.key, key, "{line}: {e}");
        }
        // Live on reload: nothing to restart.
        let running = p(GOOD).unwrap();
        let (kept, changed) = keep_restart_only(&running, with("connections_per_ip = 16").unwrap());
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(kept.stream_limits.connections_per_ip, 16);
    }

    #[test]
    fn at_most_eight_secrets() {
        let list = |n: usize| {
            let v: Vec<String> = (0..n).map(|i| format!("\"s{i}\"")).collect();
            GOOD.replace(
                "secrets = [\"s3cret\"]",
                &format!("secrets = [{}]", v.join(", ")),
            )
        };
        assert_eq!(p(&list(8)).unwrap().secrets.len(), 8);
        let e = p(&list(9)).unwrap_err();
        assert_eq!(e.key, "auth.secrets", "{e}");
        assert!(!e.to_string().contains("s8"), "no value: {e}");
    }

    #[test]
    fn secrets_from_files_and_the_environment_are_their_first_line() {
        assert_eq!(secret_text("tok\n", "x"), Ok("tok".into()));
        assert_eq!(secret_text("  tok  \r\nrest\n", "x"), Ok("tok".into()));
        assert_eq!(secret_text("\n", "$V"), Err("$V: empty".into()));
        let e = secret_file("--token-file", Path::new("/nonexistent/t")).unwrap_err();
        assert!(e.starts_with("--token-file /nonexistent/t: "), "{e}");
    }

    /// A scratch directory for secret files, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "ferroturn-config-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// Write `text` to `name` in the directory; its absolute path.
        fn file(&self, name: &str, text: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// GOOD with `auth.secrets` replaced by `secrets_line` and the files
    /// listed in `auth.secret_files`.
    fn with_files(secrets_line: &str, files: &[&str]) -> String {
        let list: Vec<String> = files.iter().map(|f| format!("{f:?}")).collect();
        GOOD.replace(
            "secrets = [\"s3cret\"]",
            &format!("{secrets_line}\nsecret_files = [{}]", list.join(", ")),
        )
    }

    #[test]
    fn secret_files_add_their_first_line_to_the_secrets() {
        let dir = Scratch::new("secret-files");
        let a = dir.file("a", "  from-file-a \nsecond line is ignored\n");
        let b = dir.file("b", "from-file-b");
        let c = p(&with_files("secrets = [\"s3cret\"]", &[&a, &b])).unwrap();
        assert_eq!(c.secrets, ["s3cret", "from-file-a", "from-file-b"]);
        // A file alone is a credential source: no secrets, no users.
        let only = with_files("", &[&b]).replace("users = { alice = \"liddell\" }", "");
        assert_eq!(p(&only).unwrap().secrets, ["from-file-b"]);
        // Neither its Debug nor the config's shows the secret; the path shows.
        let shown = format!("{c:?}");
        assert!(!shown.contains("from-file"), "{shown}");
        let raw: RawConfig = toml::from_str(&with_files("", &[&a])).unwrap();
        let shown = format!("{raw:?}");
        assert!(
            shown.contains(&a) && !shown.contains("from-file"),
            "{shown}"
        );
    }

    #[test]
    fn secret_files_are_read_again_by_every_load() {
        let dir = Scratch::new("secret-reload");
        let secret = dir.file("secret", "first\n");
        let config = dir.file("ferroturn.toml", &with_files("", &[&secret]));
        assert_eq!(load(Path::new(&config)).unwrap().secrets, ["first"]);
        dir.file("secret", "second\n");
        assert_eq!(load(Path::new(&config)).unwrap().secrets, ["second"]);
        std::fs::remove_file(&secret).unwrap();
        let e = load(Path::new(&config)).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            (config.as_str(), "auth.secret_files[0]")
        );
    }

    #[test]
    fn a_bad_secret_file_is_refused_with_file_key_and_reason() {
        let dir = Scratch::new("secret-bad");
        let fifo = dir.0.join("fifo");
        let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let fifo = fifo.display().to_string();
        let missing = dir.0.join("missing").display().to_string();
        let empty = dir.file("empty", " \n\nlater lines do not count\n");
        let big = dir.file("big", &"x".repeat(SECRET_FILE_MAX as usize + 1));
        let folder = dir.0.display().to_string();
        let good = dir.file("good", "fine");
        for (path, reason) in [
            (
                missing.as_str(),
                format!("{missing}: No such file or directory"),
            ),
            (empty.as_str(), format!("{empty}: empty")),
            (folder.as_str(), format!("{folder}: not a regular file")),
            // Opened without blocking, although no one writes to it.
            (fifo.as_str(), format!("{fifo}: not a regular file")),
            (big.as_str(), format!("{big}: 65537 bytes, more than 65536")),
            ("secret", "\"secret\" is not an absolute path".into()),
        ] {
            let e = p(&with_files("secrets = [\"s3cret\"]", &[&good, path])).unwrap_err();
            assert_eq!(
                (e.file.as_str(), e.key.as_str()),
                ("t.toml", "auth.secret_files[1]"),
                "{e}"
            );
            assert!(e.reason.starts_with(&reason), "{e}");
        }
    }

    #[test]
    fn secret_files_count_against_the_most_secrets() {
        let dir = Scratch::new("secret-count");
        let files: Vec<String> = (0..3)
            .map(|i| dir.file(&format!("s{i}"), &format!("f{i}")))
            .collect();
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        let inline = |n: usize| {
            let v: Vec<String> = (0..n).map(|i| format!("\"s{i}\"")).collect();
            format!("secrets = [{}]", v.join(", "))
        };
        assert_eq!(p(&with_files(&inline(5), &files)).unwrap().secrets.len(), 8);
        let e = p(&with_files(&inline(6), &files)).unwrap_err();
        assert_eq!(e.key, "auth.secret_files", "{e}");
        assert!(e.reason.starts_with("at most 8 secrets"), "{e}");
    }

    /// The bundled example's secret is refused off loopback also when a
    /// file holds it, and the error names the file's key.
    #[test]
    fn the_bundled_secret_in_a_file_is_refused_off_loopback() {
        let dir = Scratch::new("secret-bundled");
        let f = dir.file("secret", &format!("{}\n", EXAMPLE_SECRETS[0]));
        let e =
            p(&with_files("", &[&f]).replace("users = { alice = \"liddell\" }", "")).unwrap_err();
        assert_eq!(e.key, "auth.secret_files[0]", "{e}");
        assert!(
            e.reason.starts_with("is the bundled example's secret"),
            "{e}"
        );
        let lo = with_files("", &[&f])
            .replace("0.0.0.0:3478", "127.0.0.1:3478")
            .replace("users = { alice = \"liddell\" }", "");
        assert_eq!(p(&lo).unwrap().secrets, EXAMPLE_SECRETS);
    }

    #[test]
    fn a_reload_that_moves_the_admin_api_keeps_the_running_token() {
        let tcp = format!("{GOOD}[admin]\naddress = \"127.0.0.1:9642\"\ntoken = \"old-token\"\n");
        let running = p(&tcp).unwrap();
        // To the socket only, without a token: a restart is needed, and
        // until then the TCP listener keeps its token.
        let moved = p(&format!("{GOOD}[admin]\nsocket = \"/run/x/admin.sock\"\n")).unwrap();
        let (kept, changed) = keep_restart_only(&running, moved);
        assert_eq!(changed, ["admin"]);
        let a = kept.admin.unwrap();
        assert_eq!(a.address, Some("127.0.0.1:9642".parse().unwrap()));
        assert_eq!(a.token.as_deref(), Some("old-token"));
        // Same listener, new token: rotated.
        let rotated = p(&tcp.replace("old-token", "new-token")).unwrap();
        let (kept, changed) = keep_restart_only(&running, rotated);
        assert!(changed.is_empty());
        assert_eq!(kept.admin.unwrap().token.as_deref(), Some("new-token"));
    }

    #[test]
    fn bundled_credentials_are_refused_off_loopback() {
        // The list in the code is what the bundled file holds.
        let bundled = p(include_str!("../config.toml")).unwrap();
        assert_eq!(bundled.secrets, EXAMPLE_SECRETS);
        let users: Vec<(&str, &StaticUser)> =
            bundled.users.iter().map(|(n, u)| (n.as_str(), u)).collect();
        assert_eq!(users.len(), EXAMPLE_USERS.len());
        for ((name, user), (n, pw)) in users.iter().zip(EXAMPLE_USERS) {
            assert_eq!((*name, *user), (n, &StaticUser::from(pw)));
        }
        assert!(bundled.listen.iter().all(|l| l.address.ip().is_loopback()));

        let with = |listen: &str, auth: &str| {
            p(&format!(
                "realm = \"example.org\"\n[[listen]]\n{listen}\n[relay]\naddress = \"127.0.0.1\"\n[auth]\n{auth}\n"
            ))
        };
        let public = "address = \"0.0.0.0:3478\"\ntransports = [\"udp\"]";
        let key =
            crate::auth::key_hex(&crate::auth::Key::md5("alice", "example.org", "wonderland"));
        for (auth, bad_key) in [
            ("secrets = [\"mine\", \"change-me\"]", "auth.secrets[1]"),
            ("users = { alice = \"wonderland\" }", "auth.users.alice"),
            (
                &format!("users = {{ alice = \"{key}\" }}")[..],
                "auth.users.alice",
            ),
            (
                "users = { alice = { password = \"wonderland\" } }",
                "auth.users.alice",
            ),
        ] {
            let e = with(public, auth).unwrap_err();
            assert_eq!(e.key, bad_key, "{e}");
            assert!(
                e.reason
                    .contains("listen[0] (0.0.0.0:3478) is not loopback"),
                "{e}"
            );
            assert!(
                !e.reason.contains("wonderland") && !e.reason.contains("change-me"),
                "{e}"
            );
            // Loopback only (IPv4, IPv6, IPv4-mapped) is fine, and so is a
            // STUN-only listener anywhere.
            for listen in [
                "address = \"127.0.0.2:3478\"\ntransports = [\"udp\", \"tcp\"]",
                "address = \"[::1]:3478\"\ntransports = [\"udp\"]",
                "address = \"[::ffff:127.0.0.1]:3478\"\ntransports = [\"udp\"]",
                "address = \"0.0.0.0:3478\"\ntransports = [\"udp\"]\nturn = false\n[[listen]]\naddress = \"127.0.0.1:3479\"\ntransports = [\"tcp\"]",
            ] {
                with(listen, auth).unwrap();
            }
        }
        // Other users or passwords are not the example's.
        for auth in [
            "users = { alice = \"looking-glass\" }",
            "users = { bob = \"wonderland\" }",
            "secrets = [\"change-me-not\"]",
        ] {
            with(public, auth).unwrap();
        }
    }

    #[test]
    fn static_users_by_password_or_key() {
        use crate::auth::{Key, key_hex};
        use crate::proto::integrity::{ALGORITHM_MD5, ALGORITHM_SHA256};
        let md5 = key_hex(&Key::md5("carol", "example.org", "pw"));
        let sha = key_hex(&Key::sha256("carol", "example.org", "pw"));
        let user = |value: &str| {
            p(&GOOD.replace("alice = \"liddell\"", &format!("carol = {value}")))
                .map(|c| c.users["carol"].clone())
        };
        let keys = |u: &StaticUser| {
            [ALGORITHM_MD5, ALGORITHM_SHA256].map(|a| u.key(a, "carol", "example.org"))
        };
        let both = [
            Some(Key::md5("carol", "example.org", "pw")),
            Some(Key::sha256("carol", "example.org", "pw")),
        ];
        // coturn's 0x form: the MD5 key, so no SHA-256 password algorithm.
        assert_eq!(keys(&user(&format!("\"{md5}\"")).unwrap()), [both[0], None]);
        assert_eq!(
            keys(&user(&format!("\"{}\"", md5.to_uppercase().replace("0X", "0x"))).unwrap()),
            [both[0], None]
        );
        assert_eq!(keys(&user("\"pw\"").unwrap()), both);
        assert_eq!(
            keys(&user(&format!("{{ md5 = \"{md5}\", sha256 = \"{sha}\" }}")).unwrap()),
            both
        );
        assert_eq!(
            keys(&user(&format!("{{ sha256 = \"{sha}\" }}")).unwrap()),
            [None, both[1]]
        );
        // A password that starts with 0x, in the table form.
        assert_eq!(
            user("{ password = \"0xdeadbeef\" }").unwrap(),
            StaticUser::Password("0xdeadbeef".into())
        );
        for (value, key, says) in [
            (
                "\"0xdeadbeef\"",
                "auth.users.carol",
                "carol = { password = \"0x…\" }",
            ),
            (
                &format!("\"{sha}\"")[..],
                "auth.users.carol",
                "32 hex digits",
            ),
            ("\"\"", "auth.users.carol", "empty"),
            (
                "{ md5 = \"0x12\" }",
                "auth.users.carol.md5",
                "32 hex digits",
            ),
            (
                &format!("{{ sha256 = \"{md5}\" }}")[..],
                "auth.users.carol.sha256",
                "64 hex digits",
            ),
            (
                &format!("{{ password = \"pw\", md5 = \"{md5}\" }}")[..],
                "auth.users.carol",
                "not both",
            ),
            ("{ password = \"\" }", "auth.users.carol.password", "empty"),
            ("{}", "auth.users.carol", "give password, md5 or sha256"),
            (
                "{ pasword = \"x\" }",
                "auth.users.carol",
                "unknown field `pasword`",
            ),
            ("17", "auth.users.carol", "a password, an MD5 key"),
        ] {
            let e = user(value).unwrap_err();
            assert!(e.key.starts_with(key), "{value}: {e}");
            assert!(e.reason.contains(says), "{value}: {e}");
            assert!(
                !e.reason.contains("deadbeef") && !e.reason.contains(&md5[4..]),
                "{e}"
            );
        }
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let md5 = crate::auth::key_hex(&crate::auth::Key::md5("bob", "example.org", "pw"));
        let text = GOOD.replace(
            "alice = \"liddell\"",
            &format!(
                "alice = \"liddell\", bob = \"{md5}\", carol = {{ password = \"0xcarol-pw\" }}"
            ),
        ) + "[admin]\naddress = \"127.0.0.1:9642\"\ntoken = \"tok-e1f2\"\n";
        let c = p(&text).unwrap();
        let raw: RawConfig = toml::from_str(&text).unwrap();
        let creds = crate::auth::Credentials::new(&c.realm, &c.secrets, &c.users, b"nonce", 600);
        let ice = crate::demo::ice::IceConfig {
            urls: vec![],
            secret: c.secrets.first().cloned(),
            ttl: 60,
        };
        let target = crate::admin::client::Target {
            dest: crate::http::Dest::Tcp(c.admin.as_ref().unwrap().address.unwrap()),
            token: c.admin.as_ref().unwrap().token.clone(),
        };
        let token_arg = crate::admin::client::TokenSource::Arg("tok-e1f2".into());
        let shown = [
            format!("{c:?}"),
            format!("{:?}", c.admin),
            format!("{:?}", c.users),
            format!("{raw:?}"),
            format!("{:?}", raw.auth),
            format!("{:?}", raw.admin),
            format!("{creds:?}"),
            format!("{ice:?}"),
            format!("{target:?}"),
            format!("{token_arg:?}"),
            format!("{:?}", crate::auth::Key::md5("bob", "example.org", "pw")),
        ];
        for s in &shown {
            for secret in [
                "s3cret",
                "liddell",
                &md5[2..],
                &md5[2..12],
                "carol-pw",
                "tok-e1f2",
            ] {
                assert!(!s.contains(secret), "{secret:?} in {s}");
            }
            assert!(
                s.contains("<redacted>") || s.starts_with("Credentials"),
                "{s}"
            );
        }
        // What is not secret still shows.
        assert!(
            shown[0].contains("example.org") && shown[0].contains("\"alice\""),
            "{}",
            shown[0]
        );
    }

    #[test]
    fn errors_in_auth_and_admin_never_quote_a_value() {
        let cases = [
            GOOD.replace("secrets = [\"s3cret\"]", "secrets = \"hunter2-a\""),
            GOOD.replace(
                "secrets = [\"s3cret\"]",
                "secrets = [\"s3cret\", 4242424242]",
            ),
            GOOD.replace("alice = \"liddell\"", "alice = [\"hunter2-b\"]"),
            GOOD.replace("alice = \"liddell\"", "alice = 77777777"),
            GOOD.replace("secrets = [\"s3cret\"]", "secrets = [\"hunter2-c\" \"x\"]"),
            GOOD.replace("secrets = [\"s3cret\"]", "secrets = [\"hunter2-d\\q\"]"),
            GOOD.replace("alice = \"liddell\"", "alice = \"hunter2-e"),
            GOOD.replace("[auth]", "[auth]\nnonce_lifetime = \"hunter2-f\""),
            format!("{GOOD}[admin]\ntoken = 55555555\n"),
            format!("{GOOD}[admin]\ntoken = [\"hunter2-g\"]\n"),
            format!("{GOOD}[admin]\naddress = \"127.0.0.1:9642\" token = \"hunter2-h\"\n"),
            format!("admin.token = [\"hunter2-i\"]\n{GOOD}"),
            format!("admin.token = \"hunter2-k\" x\n{GOOD}"),
            GOOD.replace("alice = \"liddell\"", "alice = \"hunter2-l\" }, x = {"),
            format!("admin = {{ token = [\"hunter2-j\"] }}\n{GOOD}"),
        ];
        for text in &cases {
            let e = p(text).unwrap_err().to_string();
            for v in ["hunter2", "4242424242", "77777777", "55555555"] {
                assert!(!e.contains(v), "{v} in {e:?}, from\n{text}");
            }
            assert!(e.contains("(line "), "{e}");
        }
        // Elsewhere the value stays in the message, which helps.
        let e = p(&GOOD.replace("ports = \"49152-65535\"", "ports = 4915265535")).unwrap_err();
        assert!(e.to_string().contains("4915265535"), "{e}");
        let text = "realm = \"x\"\n[auth]\nsecrets = [\"a\" \"b\"]\n[peers]\nallow = [\n";
        assert_eq!(section_at(text, text.find("\"b").unwrap()), "auth");
        assert_eq!(section_at(text, text.len() - 1), "peers");
        assert_eq!(section_at("admin.token = 1 x", 16), "admin");
        assert_eq!(section_at("[ \"admin\" ]\ntoken = 1 x", 22), "admin");
        assert_eq!(
            hide_values("expected `]`, found \"a\\\"b\" or `c`"),
            "expected `]`, found (value hidden) or (value hidden)"
        );
        assert_eq!(
            hide_values("unknown field `sekrets`, expected one of `secrets`"),
            "unknown field `sekrets`, expected one of `secrets`"
        );
    }
}
