//! The TOML configuration: its types, the rules between its values, and
//! what a reload changes. Every error names the file, the key and the
//! reason (`FILE: KEY: REASON`).
//!
//! A file is read in three steps:
//! 1. serde deserializes it into `RawConfig`, whose values already have their
//!    types (addresses, CIDRs, the port range, names of a few values); a
//!    value that is not one gives the reason its type's `TryFrom` states,
//!    and serde's path to it is the key. A key left out takes the default
//!    of the reference table, [`crate::config_keys::KEYS`], where each
//!    default is written once.
//! 2. `RawConfig::check` applies the rules between values and their ranges.
//! 3. `RawConfig::into_config` reads the secret files, derives what follows
//!    from other keys, and splits the settings into the [`Restart`] part,
//!    which only a restart applies, and the [`Live`] part, which a reload
//!    replaces whole ([`Config::reload`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{DeserializeOwned, IntoDeserializer};

use crate::auth::{Redacted, StaticUser, parse_key_hex};
use crate::config_keys::{KEYS, KeyDefault};
use crate::engine::ports;
use crate::policy::Cidr;

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

/// Most secrets a config may name, `[auth] secrets` and `secret_files`
/// together.
pub const MAX_SECRETS: usize = 8;

/// Most bytes a file of `[auth] secret_files` may hold. A secret is one
/// line; the bound keeps a wrong path (a log, an image) from being read
/// whole at every start and reload.
const SECRET_FILE_MAX: u64 = 64 * 1024;

/// Where the admin API listens when `[admin]` names no address.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/ferroturn/admin.sock";

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

/// A key and the reason its value is refused; [`parse`] adds the file.
type Refusal = (String, String);

fn refuse<T>(key: impl Into<String>, reason: impl Into<String>) -> Result<T, Refusal> {
    Err((key.into(), reason.into()))
}

// ---- The validated configuration ------------------------------------------

/// A validated configuration: what only a restart applies, and what a
/// reload replaces. Its `Debug` shows how many secrets there are and which
/// users, never a secret, password, key or token.
#[derive(Debug, Clone)]
#[cfg_attr(test, derive(PartialEq))]
pub struct Config {
    pub path: PathBuf,
    pub restart: Restart,
    pub live: Live,
}

/// Declares [`Restart`] with the key that names each field in the warning
/// a reload gives when the file changes it; [`Restart::changed`] compares
/// field by field, in declaration order.
macro_rules! restart_only {
    ($(#[$m:meta])* pub struct $name:ident {
        $($(#[$fm:meta])* $key:literal => $field:ident: $ty:ty,)*
    }) => {
        $(#[$m])*
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl $name {
            /// The keys whose settings differ in `new`, in field order.
            pub fn changed(&self, new: &$name) -> Vec<&'static str> {
                let mut keys = Vec::new();
                $(if self.$field != new.$field {
                    keys.push($key);
                })*
                keys
            }
        }
    };
}

restart_only! {
    /// The settings only a restart applies: sockets, threads, and the
    /// realm, which keys and nonces derive from. A reload keeps the running
    /// ones and warns with the key of each that the file changed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Restart {
        /// The `[[listen]]` entries (their TLS files are live:
        /// [`Live::tls`]).
        "listen" => listen: Vec<Listen>,
        "relay" => relay: Relay,
        /// `server.workers`, with 0 resolved to the CPU count.
        "server.workers" => workers: usize,
        "server.udp_threads" => udp_threads: UdpThreads,
        "server.udp_scheduling" => udp_scheduling: UdpScheduling,
        "realm" => realm: String,
        "log.format" => log_format: LogFormat,
        /// `/metrics`, if the file has a `[metrics]` section.
        "metrics" => metrics: Option<Metrics>,
        /// The admin API's listeners, if the file has an `[admin]` section
        /// (its token is live: [`Live::admin_token`]).
        "admin" => admin: Option<AdminListeners>,
        /// Users and secrets from Redis, if the file has a `[cluster]`
        /// section.
        "cluster" => cluster: Option<Cluster>,
        /// NAT behaviour discovery (RFC 5780), if the file has a
        /// `[nat_behaviour]` section.
        "nat_behaviour" => nat_behaviour: Option<NatBehaviour>,
        /// The kernel fast path for bound channels (`[fastpath]`).
        "fastpath" => fastpath: Fastpath,
    }
}

/// The settings a reload applies: [`Config::reload`] takes them whole from
/// the new file.
#[derive(Clone)]
#[cfg_attr(test, derive(PartialEq))]
pub struct Live {
    /// The certificate and key of each TLS `[[listen]]` entry.
    pub tls: Vec<TlsFiles>,
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
    pub allocation: Allocation,
    pub log_level: String,
    pub demo: Demo,
    /// The admin API's bearer token (`admin.token`).
    pub admin_token: Option<String>,
    /// Sent with 300 Try Alternate to new Allocates while draining.
    pub alternate: Option<SocketAddr>,
    /// Sent instead to clients on TLS listeners: another server's TLS
    /// listener, and the name its certificate carries.
    pub alternate_tls: Option<SocketAddr>,
    pub alternate_domain: Option<String>,
    /// Seconds existing allocations may live on after SIGTERM.
    pub drain_timeout: u64,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Fields added later stay out until listed here: unlisted is safe.
        f.debug_struct("Live")
            .field("tls", &self.tls)
            .field("secrets", &vec![Redacted; self.secrets.len()])
            .field("users", &self.users)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("strict_expiry", &self.strict_expiry)
            .field("expiry_grace", &self.expiry_grace)
            .field("limits", &self.limits)
            .field("stream_limits", &self.stream_limits)
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .field("allocation", &self.allocation)
            .field("log_level", &self.log_level)
            .field("demo", &self.demo)
            .field("admin_token", &self.admin_token.as_ref().map(|_| Redacted))
            .field("alternate", &self.alternate)
            .field("alternate_tls", &self.alternate_tls)
            .field("alternate_domain", &self.alternate_domain)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Where a draining server sends new Allocates (see
    /// [`crate::engine::Redirect`]).
    pub fn redirect(&self) -> crate::engine::Redirect {
        crate::engine::Redirect {
            alternate: self.alternate,
            tls: self
                .alternate_tls
                .map(|address| crate::engine::TlsAlternate {
                    address,
                    domain: self.alternate_domain.clone(),
                }),
        }
    }
}

impl Config {
    /// A reload to `new`: its live part whole, this configuration's
    /// restart-only part, and the keys of the restart-only settings `new`
    /// changes. Those stay as they run, so that the next reload compares
    /// against them (and warns again) and never applies them.
    pub fn reload(&self, new: Config) -> (Config, Vec<&'static str>) {
        let changed = self.restart.changed(&new.restart);
        let mut live = new.live;
        // The token rotates, but is never taken away from a running TCP
        // listener: a file that moves the API to the Unix socket only (a
        // restart away) needs no token, and must not leave the TCP
        // listener open until then. A file without `[admin]` (also a
        // restart away) keeps the running token too.
        let keeps_token = match &new.restart.admin {
            None => true,
            Some(_) => self
                .restart
                .admin
                .as_ref()
                .is_some_and(|a| a.address.is_some()),
        };
        if live.admin_token.is_none() && keeps_token {
            live.admin_token = self.live.admin_token.clone();
        }
        let kept = Config {
            path: new.path,
            restart: self.restart.clone(),
            live,
        };
        (kept, changed)
    }

    /// The admin API as configured: its listeners and its token.
    pub fn admin(&self) -> Option<Admin> {
        self.restart.admin.as_ref().map(|a| Admin {
            address: a.address,
            socket: a.socket.clone(),
            token: self.live.admin_token.clone(),
        })
    }
}

impl Live {
    /// The TLS files of `[[listen]]` entry `listen` if it is at `address`:
    /// a running TLS listener takes new files from the same entry only.
    pub fn tls_files(&self, listen: usize, address: SocketAddr) -> Option<&TlsFiles> {
        self.tls
            .iter()
            .find(|t| t.listen == listen && t.address == address)
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
    /// DTLS over UDP (RFC 7350): datagrams in DTLS records, with the
    /// entry's certificate and key.
    pub dtls: bool,
    /// With `proxy_protocol = true`: the load balancers (`proxy_from`) whose
    /// PROXY protocol header names the client; none otherwise.
    pub proxy_from: Option<Vec<Cidr>>,
}

/// The PEM certificate chain and private key of a TLS `[[listen]]` entry:
/// read at start, and again by every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The entry's index in `[[listen]]`, and its address.
    pub listen: usize,
    pub address: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Declares an enum that a key names by one of a few strings, and its
/// `TryFrom<String>`, whose error lists them.
macro_rules! named_values {
    ($(#[$m:meta])* pub enum $name:ident {
        $($(#[$vm:meta])* $text:literal => $variant:ident,)*
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "String")]
        pub enum $name {
            $($(#[$vm])* $variant,)*
        }

        impl TryFrom<String> for $name {
            type Error = Reason;
            fn try_from(v: String) -> Result<Self, Reason> {
                match v.as_str() {
                    $($text => Ok($name::$variant),)*
                    _ => Err(Reason(format!(
                        "{v:?}: expected {}",
                        either(&[$(concat!("\"", $text, "\"")),*])
                    ))),
                }
            }
        }
    };
}

/// `"a", "b" or "c"`.
fn either(names: &[&str]) -> String {
    let (last, rest) = names.split_last().expect("at least one value");
    match rest {
        [] => (*last).to_owned(),
        _ => format!("{} or {last}", rest.join(", ")),
    }
}

named_values! {
    /// Which relay family an Allocate without REQUESTED-ADDRESS-FAMILY gets.
    pub enum DefaultFamily {
        /// IPv4, as RFC 8656 §7.2 says.
        "ipv4" => Ipv4,
        /// The family the client came in with.
        "same-as-client" => SameAsClient,
    }
}

named_values! {
    /// How the UDP workers use their threads (`server.udp_threads`).
    pub enum UdpThreads {
        /// One thread drives every worker while it is lightly loaded; each
        /// worker gets a thread of its own when that thread is busy.
        "adaptive" => Adaptive,
        /// Each worker has a thread of its own at any load.
        "dedicated" => Dedicated,
    }
}

named_values! {
    /// The scheduling policy of the UDP data-plane threads
    /// (`server.udp_scheduling`).
    pub enum UdpScheduling {
        /// SCHED_BATCH while the thread's own run-queue waits stay short,
        /// SCHED_OTHER while other tasks keep the CPUs busy (`io::sched`).
        "auto" => Auto,
        /// SCHED_OTHER, as every other thread.
        "normal" => Normal,
        /// SCHED_BATCH: a woken relay thread does not preempt the task
        /// running on its CPU (good when peers or clients share the host;
        /// under CPU contention a packet may wait for that task's slice to
        /// end).
        "batch" => Batch,
    }
}

named_values! {
    /// Whether the kernel fast path relays bound channels (`fastpath.mode`).
    pub enum FastpathMode {
        /// Every packet goes through ferroturn's threads.
        "off" => Off,
        /// Bound channels of UDP clients are relayed by an XDP program;
        /// ferroturn refuses to start if it cannot attach it.
        "on" => On,
    }
}

/// The `[fastpath]` section: the kernel fast path for bound channels
/// (README, "Kernel fast path").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fastpath {
    pub mode: FastpathMode,
    /// The interfaces to attach to; empty: those that carry the UDP
    /// listeners' and relay addresses (found at start).
    pub interfaces: Vec<String>,
}

named_values! {
    /// Log output format.
    pub enum LogFormat {
        "text" => Text,
        "json" => Json,
    }
}

/// The admin API's listeners: a Unix socket (the default, guarded by its
/// file mode), a TCP address (always with a token), or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminListeners {
    /// TCP listener, if `admin.address` is set.
    pub address: Option<SocketAddr>,
    /// Unix socket, mode 0660: `admin.socket`, or [`DEFAULT_ADMIN_SOCKET`]
    /// when no address is set.
    pub socket: Option<PathBuf>,
}

/// The admin API as configured ([`Config::admin`]): its listeners and the
/// token every request needs, if set (always set with an address).
#[derive(Clone, PartialEq, Eq)]
pub struct Admin {
    pub address: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub token: Option<String>,
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

/// The `[metrics]` section: Prometheus `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub address: SocketAddr,
    /// Names (lower case) `/metrics` answers to in `Host`, besides IP
    /// literals and `localhost`.
    pub hosts: Vec<String>,
}

/// The `[cluster]` section: the Redis this node reads users and secrets
/// from, and the node's name. Its `Debug` hides the URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct Cluster {
    /// A `redis://` URL, password and database included.
    pub redis: String,
    /// This node's name: `cluster.node`, or the host name.
    pub node: String,
    /// `cluster.heartbeat`: how often this node rewrites its rows in Redis
    /// (counts, sessions); they expire after three of these.
    pub heartbeat: std::time::Duration,
    /// `cluster.usage_stream_max`: the length the usage stream is trimmed
    /// to (about: Redis trims whole nodes).
    pub usage_stream_max: u64,
    /// Load spreading: `cluster.advertise` (or what the listeners give),
    /// `advertise_tls_name` and `redirect_above`.
    pub advertise: Vec<crate::cluster::load::Advertised>,
    pub advertise_tls_name: Option<String>,
    pub redirect_above: Option<crate::cluster::load::Threshold>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Everything between "//" and the last '@' may hold a password.
        let shown = match (self.redis.split_once("//"), self.redis.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}//<redacted>{}", &self.redis[at..]),
            _ => self.redis.clone(),
        };
        f.debug_struct("Cluster")
            .field("redis", &shown)
            .field("node", &self.node)
            .field("heartbeat", &self.heartbeat)
            .field("usage_stream_max", &self.usage_stream_max)
            .field("advertise", &self.advertise)
            .field("advertise_tls_name", &self.advertise_tls_name)
            .field("redirect_above", &self.redirect_above)
            .finish()
    }
}

/// The `[nat_behaviour]` section: RFC 5780 NAT behaviour discovery on
/// four UDP sockets, the `[[listen]]` entry `listen` (the one UDP listener
/// of `other_address`'s family) and the three pairs of its address and
/// port with `other_address` and `other_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatBehaviour {
    /// The index of the primary UDP listener.
    pub listen: usize,
    pub other_address: IpAddr,
    pub other_port: u16,
}

/// This machine's host name, the default `cluster.node`.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes a
    // NUL-terminated name into it (truncated if longer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match rc {
        0 if len > 0 => String::from_utf8_lossy(&buf[..len]).into_owned(),
        _ => "ferroturn".to_owned(),
    }
}

/// Quotas and rate limits, defined beside the engine that enforces them.
pub use crate::engine::Limits;

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
    /// The reference table's defaults.
    fn default() -> Self {
        RawLimits::default().stream_limits()
    }
}

/// The relay settings. The first relay address is in the fields of its
/// own; `relay.address` as a list adds the others in `more`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// Where relay sockets bind.
    pub address: IpAddr,
    /// What XOR-RELAYED-ADDRESS advertises.
    pub public_address: IpAddr,
    /// Inclusive port range, of every relay address.
    pub ports: (u16, u16),
    /// Where IPv6 relay sockets bind, if IPv6 relays are enabled.
    pub address_v6: Option<IpAddr>,
    /// What XOR-RELAYED-ADDRESS advertises for IPv6 relays.
    pub public_address_v6: Option<IpAddr>,
    pub default_family: DefaultFamily,
    /// The relay addresses after the first, each with its IPv6 twin if
    /// `relay.address_v6` lists one at its place.
    pub more: Vec<crate::engine::RelayAddress>,
}

impl Relay {
    /// How many relay addresses there are.
    pub fn count(&self) -> usize {
        1 + self.more.len()
    }
}

// ---- Values of their types ---------------------------------------------

/// Why a value is not of its type, from the type's `TryFrom`. Its
/// `Display` starts with a mark (`REASON_MARK`), so that [`parse`] shows it as
/// `KEY: REASON` like a rule's refusal: no line number (toml's own
/// messages get one) and never hidden (it quotes no secret).
#[derive(Debug)]
pub struct Reason(String);

/// Starts the text of a [`Reason`] in a deserialization error.
const REASON_MARK: char = '\u{1f}';

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{REASON_MARK}{}", self.0)
    }
}

/// Declares a type read from a TOML string: `$parse` turns the string
/// `$v` into the type or the reason it is not one.
macro_rules! from_string {
    ($(#[$m:meta])* $name:ident($inner:ty), |$v:ident| $parse:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "String")]
        struct $name($inner);

        impl TryFrom<String> for $name {
            type Error = Reason;
            fn try_from($v: String) -> Result<Self, Reason> {
                let parsed: Result<$inner, String> = $parse;
                parsed.map($name).map_err(Reason)
            }
        }
    };
}

/// A value, or a list of values of its type: `"10.0.0.1"` or
/// `["10.0.0.1", "10.0.0.2"]`. A single value is read by its own type, so
/// that its errors stay what they are for a key that takes one.
#[derive(Debug)]
struct OneOrMany<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(|t| OneOrMany(vec![t]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut all = Vec::new();
                while let Some(t) = seq.next_element()? {
                    all.push(t);
                }
                Ok(OneOrMany(all))
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

from_string! {
    /// An `IP:PORT` address.
    #[derive(Debug, Copy)]
    SockAddr(SocketAddr),
    |v| v.parse().map_err(|_| format!("{v:?} is not an IP:PORT address"))
}

from_string! {
    /// An IP address of either family.
    #[derive(Debug, Copy)]
    Ip(IpAddr),
    |v| v.parse().map_err(|_| format!("{v:?} is not an IP address"))
}

from_string! {
    /// An IPv6 address.
    #[derive(Debug, Copy)]
    Ipv6(IpAddr),
    |v| match v.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() => Ok(ip),
        _ => Err(format!("{v:?} is not an IPv6 address")),
    }
}

from_string! {
    /// An IPv6 address clients can reach: not `::`.
    #[derive(Debug, Copy)]
    ReachableIpv6(IpAddr),
    |v| match v.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() && !ip.is_unspecified() => Ok(ip),
        _ => Err(format!("{v:?} is not a reachable IPv6 address")),
    }
}

from_string! {
    /// An inclusive port range `START-END`, ports 1 to 65535.
    #[derive(Debug, Copy)]
    PortRange((u16, u16)),
    |v| port_range(&v)
}

from_string! {
    /// A network interface's name as the kernel takes it: 1 to 15 bytes,
    /// no `/`, no white space.
    #[derive(Debug)]
    InterfaceName(String),
    |v| {
        let ok = (1..=15).contains(&v.len())
            && v.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        match ok {
            true => Ok(v),
            false => Err(format!(
                "{v:?} is not an interface name (1 to 15 characters, no '/', no spaces)"
            )),
        }
    }
}

from_string! {
    /// An address or CIDR range.
    #[derive(Debug)]
    CidrText(Cidr),
    |v| v.parse()
}

from_string! {
    /// A host name, in lower case: no port, no IP literal.
    #[derive(Debug)]
    HostName(String),
    |v| {
        let name_ok = (1..=253).contains(&v.len())
            && v.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        match name_ok {
            true => Ok(v.to_ascii_lowercase()),
            false => Err(format!(
                "{v:?} is not a host name (no port, no IP address: those are always accepted)"
            )),
        }
    }
}

from_string! {
    /// A DNS name as a certificate names a host: labels of 1 to 63
    /// letters, digits and hyphens, no hyphen at either end (RFC 1123
    /// §2.1), at most 253 characters (255 bytes in DNS wire form, the
    /// most ALTERNATE-DOMAIN carries, RFC 8489 §14.16); in lower case.
    #[derive(Debug)]
    DomainName(String),
    |v| {
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if v.parse::<IpAddr>().is_ok() {
            Err(format!("{v:?} is an IP address, not a DNS name"))
        } else if v.len() > 253 {
            Err("longer than 253 characters, the most a DNS name can be".to_owned())
        } else if !v.split('.').all(label_ok) {
            Err(format!(
                "{v:?} is not a DNS name (labels of letters, digits and inner hyphens, 1 to 63 each, dot-separated)"
            ))
        } else {
            Ok(v.to_ascii_lowercase())
        }
    }
}

from_string! {
    /// A web origin as browsers send it in `Origin` (RFC 6454 §6.1):
    /// `http` or `https`, `://`, a host and an optional port; no path.
    /// Kept in lower case.
    #[derive(Debug)]
    Origin(String),
    |v| {
        let lower = v.to_ascii_lowercase();
        let authority = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        let ok = authority.is_some_and(|a| {
            !a.is_empty()
                && a.len() <= 260
                && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
        match ok {
            true => Ok(lower),
            false => Err(format!(
                "{v:?} is not an origin: scheme://host[:port] with http or https, no path"
            )),
        }
    }
}

from_string! {
    /// A log level or tracing filter.
    #[derive(Debug)]
    LogLevel(String),
    // Only levels and `target=level` lists reach tracing-subscriber: its
    // directive parser slices at byte offsets and panicked inside a
    // multi-byte character, and span and field filters (`[span{field=…}]`)
    // compile regular expressions, which a crafted value grew past 1 GB.
    |v| match v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" _:=,-.".contains(&b))
        .then(|| tracing_subscriber::EnvFilter::try_new(&v))
    {
        Some(Ok(_)) => Ok(v),
        _ => Err(format!(
            "{v:?} is not a level (error, warn, info, debug, trace) or filter"
        )),
    }
}

from_string! {
    /// The admin API's bearer token: printable ASCII, as an HTTP header
    /// carries it.
    Token(String),
    |v| if v.is_empty() {
        Err("must not be empty".to_owned())
    } else if !v.bytes().all(|b| b.is_ascii_graphic()) {
        Err("must be printable ASCII without spaces (it is sent in an HTTP header)".to_owned())
    } else {
        Ok(v)
    }
}

from_string! {
    /// The admin API's Unix socket: an absolute path that fits `sun_path`.
    #[derive(Debug)]
    SocketPath(PathBuf),
    |v| {
        let p = PathBuf::from(v);
        if !p.is_absolute() {
            Err(format!("{:?} must be an absolute path", p.display()))
        } else if p.as_os_str().len() > 107 {
            // sun_path holds 108 bytes with the terminating NUL.
            Err("longer than 107 bytes, the most a Unix socket path can be".to_owned())
        } else {
            Ok(p)
        }
    }
}

from_string! {
    /// One REST secret of `auth.secrets`: not empty.
    Secret(String),
    |v| match v.is_empty() {
        true => Err("must not be empty".to_owned()),
        false => Ok(v),
    }
}

from_string! {
    /// `cluster.redis`: a `redis://` or `rediss://` (TLS) URL that
    /// redis-rs can parse.
    RedisUrl(String),
    |v| if !v.starts_with("redis://") && !v.starts_with("rediss://") {
        Err("is not a redis:// or rediss:// URL".to_owned())
    } else if redis::Client::open(v.as_str()).is_err() {
        Err("is not a Redis URL redis-rs can parse (redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB])".to_owned())
    } else {
        Ok(v)
    }
}

from_string! {
    /// `cluster.node`: 1 to 64 printable ASCII characters, no spaces.
    #[derive(Debug)]
    NodeName(String),
    |v| if (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(v)
    } else {
        Err(format!("{v:?} is not a node name (1 to 64 printable ASCII characters, no spaces)"))
    }
}

from_string! {
    /// One `cluster.advertise` entry: `udp:IP:PORT`, `tcp:…` or `tls:…`.
    #[derive(Debug)]
    AdvertiseEntry(crate::cluster::load::Advertised),
    |v| crate::cluster::load::Advertised::parse(&v)
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Redacted.fmt(f)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Redacted.fmt(f)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Redacted.fmt(f)
    }
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
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

/// The transports of a `[[listen]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
struct Transports {
    udp: bool,
    tcp: bool,
    tls: bool,
    dtls: bool,
}

impl TryFrom<Vec<String>> for Transports {
    type Error = Reason;
    fn try_from(names: Vec<String>) -> Result<Self, Reason> {
        let refuse = |r: &str| Err(Reason(r.to_owned()));
        if names.is_empty() {
            return refuse("name at least one of \"udp\", \"tcp\"");
        }
        let mut t = Transports {
            udp: false,
            tcp: false,
            tls: false,
            dtls: false,
        };
        for name in &names {
            match name.as_str() {
                "udp" => t.udp = true,
                "tcp" => t.tcp = true,
                "tls" => t.tls = true,
                "dtls" => t.dtls = true,
                other => {
                    return Err(Reason(format!(
                        "unknown transport {other:?}: expected \"udp\", \"tcp\" or \"tls\""
                    )));
                }
            }
        }
        if t.tls && t.tcp {
            return refuse(
                "\"tcp\" and \"tls\" cannot share a port: give each its own [[listen]] entry",
            );
        }
        if t.dtls && t.udp {
            return refuse(
                "\"udp\" and \"dtls\" cannot share a port: give each its own [[listen]] entry",
            );
        }
        Ok(t)
    }
}

// ---- The file as written ----------------------------------------------

/// The default the reference table ([`KEYS`]) gives key `name` of
/// `section`, as a `T`: the table is where each default is written. A key
/// the table leaves unset is `None` (its type is an `Option`).
fn table_default<T: DeserializeOwned>(section: &str, name: &str) -> T {
    // A key the table lacks or requires, or a default its type refuses,
    // panics: every parse takes the defaults of the tables it has.
    let default = KEYS
        .iter()
        .find(|k| k.section == section && k.name == name)
        .map(|k| k.default);
    let value = match default {
        Some(KeyDefault::Value(v)) => {
            T::deserialize(toml::de::ValueDeserializer::new(v)).map_err(|e| e.message().to_owned())
        }
        Some(KeyDefault::Unset(_)) => T::deserialize(().into_deserializer())
            .map_err(|e: serde::de::value::Error| e.to_string()),
        other => Err(format!("{other:?}")),
    };
    value.unwrap_or_else(|e| panic!("{section}.{name}: {e}"))
}

/// Declares a table of the file whose keys all have a default: serde
/// takes a key left out from its `Default`, the reference table's
/// defaults.
macro_rules! table {
    ($(#[$m:meta])* $vis:vis struct $name:ident in $section:literal {
        $($(#[$fm:meta])* $fvis:vis $field:ident: $ty:ty,)*
    }) => {
        #[derive(Debug, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        $(#[$m])*
        $vis struct $name {
            $($(#[$fm])* $fvis $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $($field: table_default($section, stringify!($field)),)*
                }
            }
        }
    };
}

/// The file as written (raw: before the rules between values and the split
/// into restart-only and live settings), each value of its type. serde
/// names these structs in its messages ("expected struct RawServer"),
/// which operators see: their names stay.
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
    allocation: Allocation,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    demo: Demo,
    #[serde(default)]
    limits: RawLimits,
    metrics: Option<RawMetrics>,
    admin: Option<RawAdmin>,
    cluster: Option<RawCluster>,
    nat_behaviour: Option<RawNatBehaviour>,
    #[serde(default)]
    fastpath: RawFastpath,
}

table! {
    struct RawFastpath in "fastpath" {
        mode: FastpathMode,
        interfaces: Vec<InterfaceName>,
    }
}

/// The `[nat_behaviour]` section as written; `other_address` and
/// `other_port` are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNatBehaviour {
    listen: Option<SockAddr>,
    other_address: Ip,
    other_port: u16,
}

/// The `[cluster]` section as written; `redis` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    redis: RedisUrl,
    node: Option<NodeName>,
    #[serde(default = "default_heartbeat")]
    heartbeat: u32,
    #[serde(default = "default_usage_stream_max")]
    usage_stream_max: u32,
    #[serde(default)]
    advertise: Vec<AdvertiseEntry>,
    advertise_tls_name: Option<DomainName>,
    redirect_above: Option<f64>,
}

/// `cluster.heartbeat`'s default, seconds.
fn default_heartbeat() -> u32 {
    table_default("cluster", "heartbeat")
}

/// `cluster.usage_stream_max`'s default, entries.
fn default_usage_stream_max() -> u32 {
    table_default("cluster", "usage_stream_max")
}

table! {
    struct RawServer in "server" {
        workers: usize,
        udp_threads: UdpThreads,
        udp_scheduling: UdpScheduling,
        alternate: Option<SockAddr>,
        alternate_tls: Option<SockAddr>,
        alternate_domain: Option<DomainName>,
        drain_timeout: u64,
    }
}

/// One `[[listen]]` entry; `address` and `transports` are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: SockAddr,
    transports: Transports,
    #[serde(default = "listen_turn")]
    turn: bool,
    cert: Option<String>,
    key: Option<String>,
    #[serde(default = "listen_proxy_protocol")]
    proxy_protocol: bool,
    proxy_from: Option<Vec<CidrText>>,
}

fn listen_turn() -> bool {
    table_default("listen", "turn")
}

fn listen_proxy_protocol() -> bool {
    table_default("listen", "proxy_protocol")
}

/// Most `proxy_from` ranges of one `[[listen]]` entry (each accept checks
/// them all).
const MAX_PROXY_FROM: usize = 64;

/// `proxy_protocol` on `[[listen]]` entry `i`: on TCP or TLS only, with a
/// non-empty `proxy_from`; `proxy_from` only with it.
fn check_proxy(i: usize, l: &RawListen) -> Result<(), Refusal> {
    let from = l.proxy_from.as_deref();
    if !l.proxy_protocol {
        if from.is_some() {
            return refuse(
                format!("listen[{i}].proxy_from"),
                "only used with proxy_protocol = true",
            );
        }
        return Ok(());
    }
    if l.transports.udp || l.transports.dtls {
        return refuse(
            format!("listen[{i}].proxy_protocol"),
            "PROXY protocol headers come on \"tcp\" and \"tls\" only: give \"udp\" its own [[listen]] entry",
        );
    }
    match from.map_or(0, <[_]>::len) {
        0 => refuse(
            format!("listen[{i}].proxy_from"),
            "required with proxy_protocol = true: the load balancers' addresses or CIDRs (only they may connect)",
        ),
        n if n > MAX_PROXY_FROM => refuse(
            format!("listen[{i}].proxy_from"),
            format!("at most {MAX_PROXY_FROM} ranges"),
        ),
        _ => Ok(()),
    }
}

table! {
    struct RawRelay in "relay" {
        address: OneOrMany<Ip>,
        public_address: Option<OneOrMany<Ip>>,
        ports: PortRange,
        address_v6: Option<OneOrMany<Ipv6>>,
        public_address_v6: Option<OneOrMany<ReachableIpv6>>,
        default_family: DefaultFamily,
    }
}

table! {
    struct RawAuth in "auth" {
        secrets: Vec<Secret>,
        /// Files holding one secret each (paths, not secret).
        secret_files: Vec<String>,
        users: BTreeMap<String, RawUser>,
        nonce_lifetime: u64,
        strict_expiry: bool,
        expiry_grace: u64,
    }
}

table! {
    struct RawPeers in "peers" {
        allow: Vec<CidrText>,
        deny: Vec<CidrText>,
    }
}

table! {
    /// The `[allocation]` section, live as the file gives it.
    #[derive(Clone, PartialEq, Eq)]
    #[serde(expecting = "struct RawAllocation")]
    pub struct Allocation in "allocation" {
        /// Default and maximum allocation lifetime in seconds (RFC 8656
        /// §7.2).
        pub lifetime: u32,
        pub max_lifetime: u32,
        /// Accept RFC 5766 channel numbers 0x5000–0x7FFF too.
        pub legacy_channel_numbers: bool,
        /// Seconds a permission (RFC 8656 §9) and a channel binding (§12)
        /// live after their last refresh; the RFC's values by default.
        pub permission_lifetime: u32,
        pub channel_lifetime: u32,
        /// Mobility (RFC 8016): MOBILITY-TICKETs, and allocations that
        /// follow their UDP client to a new address.
        pub mobility: bool,
    }
}

impl Allocation {
    /// `permission_lifetime` in 1–300 and `channel_lifetime` in 1–600: the
    /// RFC's values are the most, since clients refresh on their schedule
    /// and a longer life would keep a peer reachable after its client
    /// stopped asking (RFC 8656 §9, §12); shorter is for watching expiry.
    fn check_entry_lifetimes(&self) -> Result<(), Refusal> {
        use crate::engine::allocation::{CHANNEL_LIFETIME_SECS, PERMISSION_LIFETIME_SECS};
        let rows = [
            (
                "allocation.permission_lifetime",
                self.permission_lifetime,
                PERMISSION_LIFETIME_SECS,
            ),
            (
                "allocation.channel_lifetime",
                self.channel_lifetime,
                CHANNEL_LIFETIME_SECS,
            ),
        ];
        for (key, v, most) in rows {
            if !(1..=most).contains(&u64::from(v)) {
                return refuse(
                    key,
                    format!("must be 1–{most} seconds (RFC 8656's value is the most)"),
                );
            }
        }
        Ok(())
    }
}

table! {
    struct RawLimits in "limits" {
        allocations_per_user: u32,
        total_allocations: u32,
        permissions_per_allocation: u32,
        channels_per_allocation: u32,
        connections_per_allocation: u32,
        bandwidth: u64,
        packet_rate: u32,
        unauthenticated_rate: u32,
        stream_message_timeout: u64,
        stream_allocation_timeout: u64,
        connections_per_ip: u32,
        tls_handshakes_per_ip: u32,
        stream_queue_bytes: u32,
        stream_connections: u32,
    }
}

table! {
    /// The `[demo]` section: the signaling demo's HTTP server (`ferroturn
    /// demo`), as the file gives it.
    #[derive(Clone, PartialEq, Eq)]
    #[serde(expecting = "struct RawDemo")]
    pub struct Demo in "demo" {
        /// Where the demo's HTTP server listens.
        #[serde(deserialize_with = "sockaddr")]
        pub address: SocketAddr,
        /// Lifetime in seconds of the TURN REST credentials `/ice-servers`
        /// mints.
        pub credential_ttl: u64,
        /// Seconds a signaling WebSocket may stay silent (no message, no
        /// pong to the server's pings) before it is closed.
        pub idle_timeout: u64,
        /// Connections (pages and WebSockets) one IP address, or IPv6 /64,
        /// may hold at once.
        pub connections_per_ip: usize,
        /// Peers one signaling room holds (a full mesh: each has a peer
        /// connection to every other).
        pub room_size: usize,
        /// Origins (`scheme://host[:port]`, lower case) besides the demo's
        /// own whose pages may open `/signal`.
        #[serde(deserialize_with = "origins")]
        pub allowed_origins: Vec<String>,
        /// Seconds between SockJS heartbeat frames on a quiet session.
        pub sockjs_heartbeat: u64,
        /// Seconds a SockJS session may have no receiving request before
        /// it is closed.
        pub sockjs_disconnect_delay: u64,
        /// Milliseconds between STOMP heart-beats the demo's broker offers
        /// each way (0: none).
        pub stomp_heartbeat: u64,
        /// STOMP sessions (over `/stomp` or SockJS) one IP address, or
        /// IPv6 /64, may hold at once.
        pub stomp_sessions_per_ip: usize,
    }
}

/// A list of [`Origin`]s as strings.
fn origins<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<Origin>::deserialize(d).map(|v| v.into_iter().map(|o| o.0).collect())
}

/// An `IP:PORT` value ([`SockAddr`]) as a `SocketAddr`.
fn sockaddr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    SockAddr::deserialize(d).map(|a| a.0)
}

table! {
    struct RawLog in "log" {
        level: LogLevel,
        format: LogFormat,
    }
}

table! {
    struct RawMetrics in "metrics" {
        address: SockAddr,
        hosts: Vec<HostName>,
    }
}

table! {
    struct RawAdmin in "admin" {
        address: Option<SockAddr>,
        socket: Option<SocketPath>,
        token: Option<Token>,
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
fn static_user(name: &str, raw: &RawUser) -> Result<StaticUser, Refusal> {
    let key = format!("auth.users.{name}");
    let md5_form =
        "0x and 32 hex digits, MD5(user:realm:password) as `ferroturn password` prints it";
    let sha256_form = "0x and 64 hex digits, SHA-256(user:realm:password) as `ferroturn password --toml` prints it";
    match raw {
        RawUser::Text(t) if t.is_empty() => refuse(key, "must not be empty"),
        RawUser::Text(t) if t.starts_with("0x") => match parse_key_hex(t) {
            Some(k) => Ok(StaticUser::Keys {
                md5: Some(k),
                sha256: None,
            }),
            None => refuse(
                key,
                format!(
                    "a value that starts with 0x is an MD5 key (as in coturn): expected {md5_form}; \
                     a password that starts with 0x is written {name} = {{ password = \"0x…\" }}"
                ),
            ),
        },
        RawUser::Text(t) => Ok(StaticUser::Password(t.clone())),
        RawUser::Table {
            password: Some(_),
            md5,
            sha256,
        } if md5.is_some() || sha256.is_some() => {
            refuse(key, "give either password or keys (md5, sha256), not both")
        }
        RawUser::Table {
            password: Some(p), ..
        } => match p.is_empty() {
            true => refuse(format!("{key}.password"), "must not be empty"),
            false => Ok(StaticUser::Password(p.clone())),
        },
        RawUser::Table {
            password: None,
            md5: None,
            sha256: None,
        } => refuse(key, "give password, md5 or sha256"),
        RawUser::Table { md5, sha256, .. } => {
            fn hex<const N: usize>(
                v: &Option<String>,
                key: String,
                form: &str,
            ) -> Result<Option<[u8; N]>, Refusal> {
                match v {
                    None => Ok(None),
                    Some(k) => match parse_key_hex(k) {
                        Some(k) => Ok(Some(k)),
                        None => refuse(key, format!("expected {form}")),
                    },
                }
            }
            Ok(StaticUser::Keys {
                md5: hex(md5, format!("{key}.md5"), md5_form)?,
                sha256: hex(sha256, format!("{key}.sha256"), sha256_form)?,
            })
        }
    }
}

// ---- Rules between values ----------------------------------------------

/// Whether `v` lies in `lo..=hi`; else `key` with the reason (`unit`
/// follows the bounds in it).
fn between<T: PartialOrd + fmt::Display + Copy>(
    key: &str,
    v: T,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<(), Refusal> {
    match (lo..=hi).contains(&v) {
        true => Ok(()),
        false => refuse(key, format!("must be between {lo} and {hi}{unit}")),
    }
}

impl RawConfig {
    /// The rules between values and the ranges of numbers, in the order
    /// the file's sections come; the first refusal.
    fn check(&self) -> Result<(), Refusal> {
        if self.realm.trim().is_empty() {
            return refuse("realm", "must not be empty");
        }
        if self.server.workers > MAX_WORKERS {
            return refuse("server.workers", format!("at most {MAX_WORKERS}"));
        }
        if self.server.alternate_domain.is_some() && self.server.alternate_tls.is_none() {
            return refuse("server.alternate_domain", "needs server.alternate_tls");
        }
        self.check_listen()?;
        self.relay.check()?;
        self.check_nat_behaviour()?;
        self.check_fastpath()?;
        self.check_auth()?;
        self.limits.check()?;
        let a = &self.allocation;
        if a.lifetime == 0 {
            return refuse("allocation.lifetime", "must be positive");
        }
        if a.max_lifetime < a.lifetime {
            return refuse(
                "allocation.max_lifetime",
                "must not be less than allocation.lifetime",
            );
        }
        a.check_entry_lifetimes()?;
        if let Some(RawAdmin {
            address: Some(addr),
            token: None,
            ..
        }) = &self.admin
        {
            return refuse(
                "admin.token",
                format!(
                    "required with admin.address ({}), loopback too: any local user or web page could otherwise close sessions; or drop admin.address to use the Unix socket {DEFAULT_ADMIN_SOCKET}",
                    addr.0
                ),
            );
        }
        if let Some(c) = &self.cluster {
            between("cluster.heartbeat", c.heartbeat, 1, 60, " seconds")?;
            between(
                "cluster.usage_stream_max",
                c.usage_stream_max,
                10,
                100_000_000,
                " entries",
            )?;
            self.check_spread(c)?;
        }
        let d = &self.demo;
        between("demo.idle_timeout", d.idle_timeout, 1, 3600, " seconds")?;
        between("demo.connections_per_ip", d.connections_per_ip, 1, 4096, "")?;
        between("demo.room_size", d.room_size, 2, 8, " peers")?;
        between(
            "demo.sockjs_heartbeat",
            d.sockjs_heartbeat,
            1,
            300,
            " seconds",
        )?;
        between(
            "demo.sockjs_disconnect_delay",
            d.sockjs_disconnect_delay,
            1,
            300,
            " seconds",
        )?;
        if d.stomp_heartbeat != 0 && !(100..=600_000).contains(&d.stomp_heartbeat) {
            return refuse(
                "demo.stomp_heartbeat",
                "must be 0 (no heart-beats) or between 100 and 600000 ms",
            );
        }
        between(
            "demo.stomp_sessions_per_ip",
            d.stomp_sessions_per_ip,
            1,
            4096,
            "",
        )?;
        if d.allowed_origins.len() > 32 {
            return refuse("demo.allowed_origins", "at most 32 origins");
        }
        between(
            "demo.credential_ttl",
            d.credential_ttl,
            60,
            86_400,
            " seconds",
        )
    }

    /// At least one entry; a TLS entry has a certificate and key, others
    /// none.
    /// `cluster.advertise`, `advertise_tls_name` and `redirect_above`.
    fn check_spread(&self, c: &RawCluster) -> Result<(), Refusal> {
        use crate::cluster::load;
        if let Some(r) = c.redirect_above
            && !(r > 0.0 && r <= 1.0)
        {
            return refuse(
                "cluster.redirect_above",
                "must be above 0 and at most 1 (a load fraction)",
            );
        }
        let listed: Vec<load::Advertised> = c.advertise.iter().map(|a| a.0).collect();
        // One per family and transport: at most [`load::MAX_ADVERTISED`].
        if let Some(d) = load::duplicate(&listed) {
            return refuse(
                "cluster.advertise",
                format!("{d}: a second entry of its transport and family"),
            );
        }
        let derivable = self
            .listen
            .iter()
            .all(|l| !l.turn || (!l.address.0.ip().is_unspecified() && !l.proxy_protocol));
        if listed.is_empty() && c.redirect_above.is_some() && !derivable {
            return refuse(
                "cluster.advertise",
                "required with cluster.redirect_above when a TURN [[listen]] address is 0.0.0.0, :: or behind a PROXY protocol balancer: the TRANSPORT:IP:PORT other nodes send clients to",
            );
        }
        let tls = !listed.is_empty()
            && listed
                .iter()
                .any(|a| a.transport == crate::engine::stats::Transport::Tls);
        let tls_listener = listed.is_empty()
            && derivable
            && self.listen.iter().any(|l| l.turn && l.transports.tls);
        if c.advertise_tls_name.is_some() && !tls && !tls_listener {
            return refuse(
                "cluster.advertise_tls_name",
                "needs a tls: entry in cluster.advertise (or a TLS [[listen]] entry)",
            );
        }
        Ok(())
    }

    fn check_listen(&self) -> Result<(), Refusal> {
        if self.listen.is_empty() {
            return refuse("listen", "at least one [[listen]] entry is needed");
        }
        for (i, l) in self.listen.iter().enumerate() {
            for (name, v) in [("cert", &l.cert), ("key", &l.key)] {
                let secure = if l.transports.tls { "tls" } else { "dtls" };
                match (l.transports.tls || l.transports.dtls, v) {
                    (true, None) => {
                        return refuse(
                            format!("listen[{i}].{name}"),
                            format!("a \"{secure}\" listener needs a PEM {name} file"),
                        );
                    }
                    (false, Some(_)) => {
                        return refuse(
                            format!("listen[{i}].{name}"),
                            "only used with transports = [\"tls\"]",
                        );
                    }
                    _ => {}
                }
            }
            check_proxy(i, l)?;
        }
        Ok(())
    }

    /// `[nat_behaviour]` pairs with the one UDP listener of its address's
    /// family, on a specific address; the other address and port differ
    /// from it and stay out of the relay range (RFC 5780 §6: the four
    /// sockets answer from distinct addresses and ports).
    fn check_nat_behaviour(&self) -> Result<(), Refusal> {
        self.nat_listener().map(|_| ())
    }

    /// `fastpath.mode = "on"` needs a UDP TURN listener on a specific
    /// address: the program keys a client's flow by the address it sent
    /// to, and ChannelData to it leaves from there. (A build without the
    /// fast path refuses to start with it: `check` is the same for both.)
    fn check_fastpath(&self) -> Result<(), Refusal> {
        if self.fastpath.mode == FastpathMode::Off {
            return Ok(());
        }
        let specific = self
            .listen
            .iter()
            .any(|l| l.transports.udp && l.turn && !l.address.0.ip().is_unspecified());
        if !specific {
            return refuse(
                "fastpath.mode",
                "\"on\" needs a UDP [[listen]] entry with TURN on a specific address (not 0.0.0.0 or ::): clients of wildcard listeners stay in userspace",
            );
        }
        Ok(())
    }

    /// The index of the UDP listener `[nat_behaviour]` pairs with, if the
    /// section is there.
    fn nat_listener(&self) -> Result<Option<usize>, Refusal> {
        let Some(n) = &self.nat_behaviour else {
            return Ok(None);
        };
        let other = n.other_address.0;
        let family = if other.is_ipv4() { "IPv4" } else { "IPv6" };
        if other.is_unspecified() || other.is_multicast() {
            return refuse(
                "nat_behaviour.other_address",
                format!("{other} is not an address this host can answer from"),
            );
        }
        let udp = (self.listen.iter().enumerate()).filter(|(_, l)| l.transports.udp);
        let i = match n.listen.map(|a| a.0) {
            Some(named) => match udp.clone().find(|(_, l)| l.address.0 == named) {
                Some((i, _)) => i,
                None => {
                    return refuse(
                        "nat_behaviour.listen",
                        format!("no [[listen]] entry with \"udp\" has the address {named}"),
                    );
                }
            },
            None => {
                let same: Vec<usize> = udp
                    .filter(|(_, l)| l.address.0.is_ipv4() == other.is_ipv4())
                    .map(|(i, _)| i)
                    .collect();
                match same.as_slice() {
                    &[i] => i,
                    [] => {
                        return refuse(
                            "nat_behaviour",
                            format!(
                                "needs a UDP [[listen]] entry of the {family} family to pair with"
                            ),
                        );
                    }
                    _ => {
                        return refuse(
                            "nat_behaviour.listen",
                            format!(
                                "{} UDP [[listen]] entries of the {family} family: name the one to pair with",
                                same.len()
                            ),
                        );
                    }
                }
            }
        };
        let primary = self.listen[i].address.0;
        if primary.is_ipv4() != other.is_ipv4() {
            return refuse(
                "nat_behaviour.other_address",
                format!("must be of the family of listen[{i}] ({primary})"),
            );
        }
        if primary.ip().is_unspecified() {
            return refuse(
                "nat_behaviour",
                format!(
                    "listen[{i}] ({primary}) must name one address: answers leave from the address a client sent to, and RESPONSE-ORIGIN tells it"
                ),
            );
        }
        if other == primary.ip() {
            return refuse(
                "nat_behaviour.other_address",
                format!("must differ from listen[{i}]'s address ({primary})"),
            );
        }
        if n.other_port == 0 || n.other_port == primary.port() {
            return refuse(
                "nat_behaviour.other_port",
                format!("must be a port other than 0 and listen[{i}]'s ({primary})"),
            );
        }
        let (lo, hi) = self.relay.ports.0;
        if let Some(p) = [n.other_port, primary.port()]
            .into_iter()
            .find(|p| (lo..=hi).contains(p))
        {
            return refuse(
                "nat_behaviour.other_port",
                format!("port {p} lies in relay.ports ({lo}-{hi}), where relay sockets bind"),
            );
        }
        Ok(Some(i))
    }

    /// TURN needs credentials; at most [`MAX_SECRETS`] secrets.
    fn check_auth(&self) -> Result<(), Refusal> {
        let a = &self.auth;
        let turn = self.listen.iter().any(|l| l.turn);
        if turn
            && a.secrets.is_empty()
            && a.secret_files.is_empty()
            && a.users.is_empty()
            && self.cluster.is_none()
        {
            return refuse(
                "auth",
                "no credentials configured: set auth.secrets, auth.secret_files or auth.users (TURN never relays without authentication)",
            );
        }
        // Each secret costs every signed request under a REST name its own
        // HMACs (the server cannot tell which one minted it): a rotation
        // needs two or three, so a long list is a cost for nothing.
        if a.secrets.len() > MAX_SECRETS {
            return refuse(
                "auth.secrets",
                format!(
                    "at most {MAX_SECRETS} (each is tried on every REST request; a rotation needs 2)"
                ),
            );
        }
        if a.secrets.len() + a.secret_files.len() > MAX_SECRETS {
            return refuse(
                "auth.secret_files",
                format!(
                    "at most {MAX_SECRETS} secrets in auth.secrets and auth.secret_files together (each is tried on every REST request)"
                ),
            );
        }
        if a.users.keys().any(String::is_empty) {
            return refuse("auth.users", "user names must not be empty");
        }
        between(
            "auth.nonce_lifetime",
            a.nonce_lifetime,
            10,
            86_400,
            " seconds",
        )
    }
}

impl RawRelay {
    /// The addresses' families, and an advertised address clients can
    /// reach for each; lists of one address each, none twice, and no
    /// unspecified one among several (it would bind them all).
    fn check(&self) -> Result<(), Refusal> {
        let addresses: Vec<IpAddr> = self.address.0.iter().map(|a| a.0).collect();
        list(
            "relay.address",
            &addresses,
            ports::MAX_RELAYS,
            "the most relay addresses ferroturn keeps",
        )?;
        if let Some(public) = &self.public_address {
            same_length(
                "relay.public_address",
                public.0.len(),
                "relay.address",
                addresses.len(),
            )?;
        }
        for (i, &address) in addresses.iter().enumerate() {
            match self.public_address.as_ref().map(|p| p.0[i].0) {
                Some(p) if p.is_ipv4() != address.is_ipv4() => {
                    return refuse(
                        "relay.public_address",
                        "must be of the same address family as relay.address",
                    );
                }
                Some(p) if p.is_unspecified() => {
                    return refuse(
                        "relay.public_address",
                        "must be an address clients can reach, not unspecified",
                    );
                }
                None if address.is_unspecified() => {
                    return refuse(
                        "relay.public_address",
                        format!(
                            "required when relay.address is {address}: clients must be told a reachable relay address"
                        ),
                    );
                }
                _ => {}
            }
            if address.is_ipv6() {
                return refuse(
                    "relay.address",
                    "must be IPv4; IPv6 relays are set with relay.address_v6",
                );
            }
        }
        let v6: Vec<IpAddr> = (self.address_v6.iter())
            .flat_map(|l| l.0.iter().map(|a| a.0))
            .collect();
        if self.address_v6.is_some() {
            // An IPv6 twin for each of the first relay addresses at most.
            list(
                "relay.address_v6",
                &v6,
                addresses.len(),
                "one IPv6 twin for each relay.address",
            )?;
        }
        match (&self.public_address_v6, &self.address_v6) {
            (Some(_), None) => refuse("relay.public_address_v6", "needs relay.address_v6"),
            (Some(p), Some(_)) => same_length(
                "relay.public_address_v6",
                p.0.len(),
                "relay.address_v6",
                v6.len(),
            ),
            (None, Some(_)) => match v6.iter().find(|a| a.is_unspecified()) {
                Some(a) => refuse(
                    "relay.public_address_v6",
                    format!(
                        "required when relay.address_v6 is {a}: clients must be told a reachable relay address"
                    ),
                ),
                None => Ok(()),
            },
            (None, None) => Ok(()),
        }
    }

    fn relay(&self) -> Relay {
        let at = |i: usize| {
            let bind = self.address.0[i].0;
            let bind_v6 = self
                .address_v6
                .as_ref()
                .and_then(|l| l.0.get(i))
                .map(|a| a.0);
            crate::engine::RelayAddress {
                bind,
                public: self.public_address.as_ref().map_or(bind, |p| p.0[i].0),
                bind_v6,
                public_v6: (self.public_address_v6.as_ref())
                    .and_then(|p| p.0.get(i))
                    .map(|p| p.0)
                    .or(bind_v6),
            }
        };
        let first = at(0);
        Relay {
            address: first.bind,
            public_address: first.public,
            ports: self.ports.0,
            address_v6: first.bind_v6,
            public_address_v6: first.public_v6,
            default_family: self.default_family,
            more: (1..self.address.0.len()).map(at).collect(),
        }
    }
}

/// A list of relay addresses under `key`: at least one, at most `most`
/// (`why` says why), none twice, and an unspecified one only alone.
fn list(key: &str, addresses: &[IpAddr], most: usize, why: &str) -> Result<(), Refusal> {
    if addresses.is_empty() {
        return refuse(key, "must name at least one address");
    }
    if addresses.len() > most {
        let n = addresses.len();
        return refuse(key, format!("lists {n} addresses, at most {most}: {why}"));
    }
    for (i, a) in addresses.iter().enumerate() {
        if addresses[..i].contains(a) {
            return refuse(key, format!("{a} is listed twice"));
        }
        if a.is_unspecified() && addresses.len() > 1 {
            return refuse(
                key,
                format!("{a} binds every address: it cannot be one of several"),
            );
        }
    }
    Ok(())
}

/// `key` lists one address for each of `of`'s.
fn same_length(key: &str, len: usize, of: &str, want: usize) -> Result<(), Refusal> {
    match len == want {
        true => Ok(()),
        false => refuse(
            key,
            format!("lists {len} addresses, {of} {want}: one for each"),
        ),
    }
}

impl RawLimits {
    /// Quotas of at least 1; stream timeouts that cannot be turned off
    /// (that would reopen the trickling attack); per-IP caps that can (0),
    /// for servers behind a proxy or NAT that shows every client with one
    /// address.
    fn check(&self) -> Result<(), Refusal> {
        for (key, v) in [
            ("limits.allocations_per_user", self.allocations_per_user),
            (
                "limits.permissions_per_allocation",
                self.permissions_per_allocation,
            ),
            (
                "limits.channels_per_allocation",
                self.channels_per_allocation,
            ),
        ] {
            if v == 0 {
                return refuse(key, "must be at least 1");
            }
        }
        if self.channels_per_allocation > 4096 {
            return refuse(
                "limits.channels_per_allocation",
                "at most 4096 (the channel number range)",
            );
        }
        let s = self.stream_limits();
        between("limits.stream_connections", s.connections, 1, 1 << 20, "")?;
        between(
            "limits.stream_message_timeout",
            s.message_timeout,
            1,
            300,
            " seconds",
        )?;
        between(
            "limits.stream_allocation_timeout",
            s.allocation_timeout,
            1,
            3600,
            " seconds",
        )?;
        if s.connections_per_ip != 0
            && (s.tls_handshakes_per_ip == 0 || s.tls_handshakes_per_ip > s.connections_per_ip)
        {
            return refuse(
                "limits.tls_handshakes_per_ip",
                format!(
                    "must be between 1 and limits.connections_per_ip ({}): a handshake is a connection",
                    s.connections_per_ip
                ),
            );
        }
        between(
            "limits.stream_queue_bytes",
            s.queue_bytes,
            4096,
            16 << 20,
            " bytes",
        )
    }

    /// The engines' quotas; a total of 0 is one allocation per relay port
    /// of every relay address.
    fn limits(&self, relay: &Relay) -> Limits {
        let (lo, hi) = relay.ports;
        Limits {
            allocations_per_user: self.allocations_per_user,
            total_allocations: match self.total_allocations {
                0 => ((hi - lo) as u32 + 1) * relay.count() as u32,
                n => n,
            },
            permissions_per_allocation: self.permissions_per_allocation,
            channels_per_allocation: self.channels_per_allocation,
            connections_per_allocation: self.connections_per_allocation,
            bandwidth: self.bandwidth,
            packet_rate: self.packet_rate,
            unauthenticated_rate: self.unauthenticated_rate,
        }
    }

    fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            message_timeout: self.stream_message_timeout,
            allocation_timeout: self.stream_allocation_timeout,
            connections_per_ip: self.connections_per_ip,
            tls_handshakes_per_ip: self.tls_handshakes_per_ip,
            queue_bytes: self.stream_queue_bytes,
            connections: self.stream_connections,
        }
    }
}

// ---- From the file to the configuration ---------------------------------

impl RawConfig {
    /// The configuration of this checked file: the secret files read,
    /// users' credentials made, what follows from other keys derived, and
    /// the settings split into their restart-only and live parts.
    fn into_config(self, path: &Path) -> Result<Config, Refusal> {
        // Every secret with the key that names it in an error: the inline
        // ones, then one per file, read now (at start, `check` and every
        // reload).
        let mut secrets: Vec<(String, String)> = (self.auth.secrets.iter().enumerate())
            .map(|(i, s)| (format!("auth.secrets[{i}]"), s.0.clone()))
            .collect();
        for (i, path) in self.auth.secret_files.iter().enumerate() {
            let key = format!("auth.secret_files[{i}]");
            match secret_files_entry(path) {
                Ok(secret) => secrets.push((key, secret)),
                Err(r) => return refuse(key, r),
            }
        }
        let mut users = BTreeMap::new();
        for (name, raw) in &self.auth.users {
            users.insert(name.clone(), static_user(name, raw)?);
        }
        let listen: Vec<Listen> = (self.listen.iter())
            .map(|l| Listen {
                address: l.address.0,
                udp: l.transports.udp,
                tcp: l.transports.tcp,
                turn: l.turn,
                tls: l.transports.tls,
                dtls: l.transports.dtls,
                proxy_from: (l.proxy_protocol)
                    .then(|| l.proxy_from.iter().flatten().map(|c| c.0).collect()),
            })
            .collect();
        refuse_bundled_credentials(&listen, &secrets, &users, &self.realm)?;
        let derived_advertise = crate::cluster::load::from_listeners(&listen);
        let tls = (self.listen.iter().enumerate())
            .filter_map(|(i, l)| match (&l.cert, &l.key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    listen: i,
                    address: l.address.0,
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                }),
                _ => None,
            })
            .collect();
        let nat_behaviour = match (self.nat_listener()?, &self.nat_behaviour) {
            (Some(listen), Some(n)) => Some(NatBehaviour {
                listen,
                other_address: n.other_address.0,
                other_port: n.other_port,
            }),
            _ => None,
        };
        let relay = self.relay.relay();
        let workers = match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let admin = self.admin.as_ref().map(|a| AdminListeners {
            address: a.address.as_ref().map(|a| a.0),
            socket: match (&a.socket, &a.address) {
                (Some(p), _) => Some(p.0.clone()),
                (None, None) => Some(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
                (None, Some(_)) => None,
            },
        });
        let cidrs = |list: &[CidrText]| list.iter().map(|c| c.0).collect();
        let live = Live {
            tls,
            secrets: secrets.into_iter().map(|(_, s)| s).collect(),
            users,
            nonce_lifetime: self.auth.nonce_lifetime,
            strict_expiry: self.auth.strict_expiry,
            expiry_grace: self.auth.expiry_grace,
            limits: self.limits.limits(&relay),
            stream_limits: self.limits.stream_limits(),
            allow: cidrs(&self.peers.allow),
            deny: cidrs(&self.peers.deny),
            allocation: self.allocation,
            log_level: self.log.level.0,
            demo: self.demo,
            admin_token: self
                .admin
                .as_ref()
                .and_then(|a| a.token.clone())
                .map(|t| t.0),
            alternate: self.server.alternate.map(|a| a.0),
            alternate_tls: self.server.alternate_tls.map(|a| a.0),
            alternate_domain: self.server.alternate_domain.map(|d| d.0),
            drain_timeout: self.server.drain_timeout,
        };
        let restart = Restart {
            listen,
            relay,
            workers,
            udp_threads: self.server.udp_threads,
            udp_scheduling: self.server.udp_scheduling,
            realm: self.realm,
            log_format: self.log.format,
            metrics: self.metrics.map(|m| Metrics {
                address: m.address.0,
                hosts: m.hosts.into_iter().map(|h| h.0).collect(),
            }),
            admin,
            cluster: self.cluster.map(|c| Cluster {
                redis: c.redis.0,
                node: c.node.map_or_else(host_name, |n| n.0),
                heartbeat: std::time::Duration::from_secs(c.heartbeat.into()),
                usage_stream_max: c.usage_stream_max.into(),
                advertise: match c.advertise.is_empty() {
                    true => derived_advertise,
                    false => c.advertise.into_iter().map(|a| a.0).collect(),
                },
                advertise_tls_name: c.advertise_tls_name.map(|d| d.0),
                redirect_above: c.redirect_above.map(crate::cluster::load::Threshold),
            }),
            nat_behaviour,
            fastpath: Fastpath {
                mode: self.fastpath.mode,
                interfaces: self.fastpath.interfaces.into_iter().map(|i| i.0).collect(),
            },
        };
        Ok(Config {
            path: path.to_owned(),
            restart,
            live,
        })
    }
}

/// The first command must not make an open relay: the bundled example's
/// credentials are refused on any TURN listener off loopback. `secrets`
/// holds each secret with the key that names it.
fn refuse_bundled_credentials(
    listen: &[Listen],
    secrets: &[(String, String)],
    users: &BTreeMap<String, StaticUser>,
    realm: &str,
) -> Result<(), Refusal> {
    let Some((i, l)) = (listen.iter().enumerate())
        .find(|(_, l)| l.turn && !l.address.ip().to_canonical().is_loopback())
    else {
        return Ok(());
    };
    let why = format!(
        "refused while listen[{i}] ({}) is not loopback: anyone can read this credential in ferroturn's bundled config.toml and relay through this server",
        l.address
    );
    if let Some((key, _)) = secrets
        .iter()
        .find(|(_, s)| EXAMPLE_SECRETS.contains(&s.as_str()))
    {
        return refuse(
            key.as_str(),
            format!(
                "is the bundled example's secret, {why}; set a secret of your own (e.g. `openssl rand -base64 32`) or listen on loopback only"
            ),
        );
    }
    if let Some((name, _)) = EXAMPLE_USERS
        .iter()
        .find(|(n, p)| users.get(*n).is_some_and(|u| u.is(n, realm, p)))
    {
        return refuse(
            format!("auth.users.{name}"),
            format!(
                "is the bundled example's user and password, {why}; remove it or give it a password of your own"
            ),
        );
    }
    Ok(())
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

/// Validate configuration `text` as if read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let error = |(key, reason): Refusal| ConfigError {
        file: path.display().to_string(),
        key,
        reason,
    };
    let de = toml::Deserializer::new(text);
    let file: RawConfig =
        serde_path_to_error::deserialize(de).map_err(|e| error(deserialize_error(text, e)))?;
    file.check().map_err(error)?;
    file.into_config(path).map_err(error)
}

/// The key and reason of an error from deserializing `text`. A reason a
/// value's type gives ([`Reason`]) shows as it is; toml's and serde's own
/// messages get the line, and in `[auth]` and `[admin]` no value.
fn deserialize_error(text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> Refusal {
    let key = e.path().to_string();
    let inner = e.into_inner();
    let key = match key.as_str() {
        "." | "" => "(syntax)".to_string(),
        _ => key,
    };
    if let Some(reason) = inner.message().strip_prefix(REASON_MARK) {
        return (key, reason.to_owned());
    }
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
    let section = match key.as_str() {
        "(syntax)" => inner.span().map_or("", |s| section_at(text, s.start)),
        k => k,
    };
    if holds_secrets(section) {
        msg = hide_values(&msg);
    }
    (key, format!("{msg}{line}"))
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

/// Whether a key path (`auth.secrets[0]`, `admin`, …) lies in a section
/// whose values are secret: `[auth]` and `[admin]`.
fn holds_secrets(path: &str) -> bool {
    ["auth", "admin", "cluster"].iter().any(|s| {
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

/// The keys [`parse`] accepts, table by table: serde's field list of each
/// table's struct, which `deny_unknown_fields` holds files to.
/// `config_keys`' tests compare them with the reference table.
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
        ("allocation", f::<Allocation>()),
        ("limits", f::<RawLimits>()),
        ("log", f::<RawLog>()),
        ("metrics", f::<RawMetrics>()),
        ("admin", f::<RawAdmin>()),
        ("demo", f::<Demo>()),
        ("cluster", f::<RawCluster>()),
        ("nat_behaviour", f::<RawNatBehaviour>()),
        ("fastpath", f::<RawFastpath>()),
    ]
}

#[cfg(test)]
mod tests;
