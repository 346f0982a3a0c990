//! The configuration reference: every key of the TOML file, in one table.
//!
//! The man page `ferroturn.toml(5)`, the README's "Configuration reference"
//! and the bundled `config.toml` are written from, or checked against, this
//! table, and so is the parser in [`crate::config`], which takes the
//! default of every key the file leaves out from here: its tests fail when
//! a key is accepted but not listed here (or listed but not accepted), when
//! a listed default is not what the parser uses, and when the README or
//! `config.toml` leaves a key out. A key is documented once, here, and its
//! default written once, here.
//!
//! To add a key: add its field to its table's struct in `config.rs` (and to
//! `Restart` or `Live`), its row to [`KEYS`], a line (set or commented out)
//! to `config.toml`, then run `cargo test --lib config_keys`, which prints
//! the README table to paste when it differs.

use clap_mangen::roff::{Roff, bold, italic, roman};

/// One key of the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The table it belongs to: `""` for the top level, `"listen"` for each
    /// `[[listen]]` entry, else the `[section]`.
    pub section: &'static str,
    pub name: &'static str,
    /// Its TOML type as the reference shows it.
    pub kind: &'static str,
    pub default: KeyDefault,
    /// What it does. `code` goes between backticks (bold in the man page);
    /// no `|`, which would end a Markdown table cell.
    pub doc: &'static str,
}

/// What a key is when the file does not set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// The value, written in TOML, that the parser takes when the key is
    /// left out: setting the key to it changes nothing (a test holds the
    /// parser to that).
    Value(&'static str),
    /// The key must be given.
    Required,
    /// No value of its own: the feature is off, or the value follows from
    /// another key. The text says which (Markdown, as `Key::doc`).
    Unset(&'static str),
}

impl Key {
    /// How the reference names the key: `realm`, `server.workers`,
    /// `[[listen]] address`.
    pub fn path(&self) -> String {
        match self.section {
            "" => self.name.to_owned(),
            "listen" => format!("[[listen]] {}", self.name),
            s => format!("{s}.{}", self.name),
        }
    }
}

/// The tables of the file, in the order of the reference, each with what
/// it is for. `""` is the top level.
pub const SECTIONS: &[(&str, &str)] = &[
    ("", "Keys outside any table."),
    (
        "server",
        "Threads, draining and what only a restart changes.",
    ),
    (
        "listen",
        "One `[[listen]]` entry per address the server answers STUN and TURN on; at least one is needed.",
    ),
    (
        "relay",
        "Where relay sockets bind and what clients are told about them.",
    ),
    (
        "auth",
        "Credentials: TURN REST API secrets and static users. TURN needs at least one of `secrets`, `secret_files` and `users`: ferroturn never relays for anonymous clients.",
    ),
    (
        "peers",
        "Which peer addresses clients may relay to, on top of the built-in policy that refuses loopback, private, link-local, documentation and other special-purpose ranges.",
    ),
    (
        "allocation",
        "Lifetimes and channel numbers of allocations.",
    ),
    (
        "limits",
        "Quotas and rate limits, all on by default; every refusal is counted in `/metrics`. A reload applies them.",
    ),
    ("log", "Logging to stderr (the journal under systemd)."),
    (
        "metrics",
        "Prometheus `/metrics`, off unless the section is present.",
    ),
    (
        "admin",
        "The admin API (`ferroturn sessions`, `ferroturn kill`), off unless the section is present.",
    ),
    (
        "demo",
        "The signaling demo's web server (`ferroturn demo`, which reads the file once: it has no reload).",
    ),
    (
        "cluster",
        "Users and REST secrets from Redis, in coturn's schema (README, \"Cluster (Redis)\"); off unless the section is present. Needs a restart.",
    ),
    (
        "nat_behaviour",
        "NAT behaviour discovery (RFC 5780; README, \"NAT behaviour discovery\"): a second address and port, off unless the section is present. Needs a restart.",
    ),
    (
        "fastpath",
        "The kernel fast path (README, \"Kernel fast path\"): an XDP program relays the channels bound by UDP clients. Needs a build with the cargo feature `fastpath`, and a restart.",
    ),
];

use KeyDefault::{Required, Unset, Value};

/// Every key, grouped by section in the order of [`SECTIONS`].
pub const KEYS: &[Key] = &[
    Key {
        section: "",
        name: "realm",
        kind: "string",
        default: Required,
        doc: "Realm of the long-term credentials (RFC 8489 §9.2), sent in 401 challenges and mixed into static users' keys. Needs a restart.",
    },
    Key {
        section: "server",
        name: "workers",
        kind: "integer",
        default: Value("0"),
        doc: "Workers, each with its own SO_REUSEPORT sockets and allocations; `0` is one per CPU core, at most 256. UDP workers share one thread (`ferroturn-u0`) at low load and get one each (`ferroturn-u*`) when busy; TCP/TLS listeners add a tokio thread per worker (`ferroturn-w*`). Needs a restart.",
    },
    Key {
        section: "server",
        name: "udp_threads",
        kind: "string",
        default: Value("\"adaptive\""),
        doc: "`\"adaptive\"`: UDP workers share a thread at low load, as above (least CPU per packet); `\"dedicated\"`: each UDP worker keeps its own thread at any load, as coturn's relay threads (shorter tail latency at low load on a small VM, more CPU per packet there). Needs a restart.",
    },
    Key {
        section: "server",
        name: "udp_scheduling",
        kind: "string",
        default: Value("\"auto\""),
        doc: "The UDP threads' scheduling policy. `\"batch\"`: SCHED_BATCH, a woken relay thread does not preempt the task on its CPU, so a sender on the same host sleeps first and the hand-over stays on one CPU (much shorter round trips when peers or clients share the host), but under CPU contention a packet waits for another task's slice. `\"normal\"`: SCHED_OTHER. `\"auto\"`: each thread under batch while its run-queue waits stay short, under normal from two 50 ms samples in a row whose mean wait exceeds 50 µs per run (or one over 1 ms); batch is tried again after 1 s of calm (up to 64 s while retries fail at once). Needs a restart.",
    },
    Key {
        section: "server",
        name: "alternate",
        kind: "string",
        default: Unset("none"),
        doc: "`IP:PORT` of another server, sent with 300 Try Alternate to new Allocate requests while draining (after SIGTERM); without it they get 508.",
    },
    Key {
        section: "server",
        name: "alternate_tls",
        kind: "string",
        default: Unset("`server.alternate`"),
        doc: "`IP:PORT` of the other server's TLS listener, sent instead of `alternate` to clients on TLS listeners while draining (ALTERNATE-SERVER).",
    },
    Key {
        section: "server",
        name: "alternate_domain",
        kind: "string",
        default: Unset("none"),
        doc: "The DNS name the certificate of `alternate_tls` carries, sent with it as ALTERNATE-DOMAIN (RFC 8489 §14.16) so that a TLS client can verify the other server; needs `alternate_tls`. Without it the client checks the name it used for this server.",
    },
    Key {
        section: "server",
        name: "drain_timeout",
        kind: "integer",
        default: Value("60"),
        doc: "Seconds allocations may live on after SIGTERM before they are closed and the process exits. Keep it under the unit's `TimeoutStopSec=` (90 s).",
    },
    Key {
        section: "listen",
        name: "address",
        kind: "string",
        default: Required,
        doc: "`IP:PORT` to listen on, IPv4 or IPv6 (`\"[::]:3478\"`). Needs a restart.",
    },
    Key {
        section: "listen",
        name: "transports",
        kind: "array of strings",
        default: Required,
        doc: "`\"udp\"`, `\"tcp\"`, `\"tls\"`, `\"dtls\"` (TURN over DTLS 1.2 on UDP, RFC 7350; 5349 by convention); `\"tcp\"` and `\"tls\"` cannot share an entry, nor `\"udp\"` and `\"dtls\"`. Needs a restart.",
    },
    Key {
        section: "listen",
        name: "turn",
        kind: "boolean",
        default: Value("true"),
        doc: "`false` makes a STUN-only listener: Binding is answered, TURN requests get 400. A server whose listeners are all STUN-only needs no `[auth]`. Needs a restart.",
    },
    Key {
        section: "listen",
        name: "cert",
        kind: "string",
        default: Unset("none"),
        doc: "PEM certificate chain (leaf first) of a `\"tls\"` or `\"dtls\"` listener; required with it, refused without. Read again on reload (new sessions get it).",
    },
    Key {
        section: "listen",
        name: "key",
        kind: "string",
        default: Unset("none"),
        doc: "PEM private key (PKCS#8, RSA or EC) of `cert`; read again on reload.",
    },
    Key {
        section: "listen",
        name: "proxy_protocol",
        kind: "boolean",
        default: Value("false"),
        doc: "`true`: every connection starts with a PROXY protocol header (v1 text or v2 binary, as HAProxy's `send-proxy`/`send-proxy-v2`, an AWS NLB or a Kubernetes load balancer send it; before the TLS handshake on `\"tls\"`), and the client address it carries is the client's for everything (XOR-MAPPED-ADDRESS, nonces, per-IP limits, logs, sessions). A connection from outside `proxy_from`, or whose header is malformed or not whole within 5 s, is closed. `\"tcp\"` and `\"tls\"` entries only. Needs a restart.",
    },
    Key {
        section: "listen",
        name: "proxy_from",
        kind: "array of strings",
        default: Unset("none"),
        doc: "The load balancers' addresses or CIDRs (up to 64), required and non-empty with `proxy_protocol = true`, refused without. Only they may connect to the entry; their own address is exempt from the per-IP limits there. Needs a restart.",
    },
    Key {
        section: "relay",
        name: "address",
        kind: "string or array of strings",
        default: Value("\"0.0.0.0\""),
        doc: "IPv4 address relay sockets bind to, or a list of up to 32 (`[\"10.0.0.1\", \"10.0.0.2\"]`): each has the whole `ports` range, so one node holds that many allocations per address; an Allocate takes a port of one of them, tried in turn from a random one. `0.0.0.0` only alone. Needs a restart.",
    },
    Key {
        section: "relay",
        name: "public_address",
        kind: "string or array of strings",
        default: Unset("`relay.address`"),
        doc: "What XOR-RELAYED-ADDRESS tells clients; required when `relay.address` is unspecified (`0.0.0.0`): this host's public IP behind 1:1 NAT. With a list of relay addresses, a list of as many, each advertised for the relay address at its place. Needs a restart.",
    },
    Key {
        section: "relay",
        name: "ports",
        kind: "string",
        default: Value("\"49152-65535\""),
        doc: "Relay port range `START-END`, inclusive; open it (UDP) in the firewall. Needs a restart.",
    },
    Key {
        section: "relay",
        name: "address_v6",
        kind: "string or array of strings",
        default: Unset("none"),
        doc: "IPv6 address relay sockets bind to; enables IPv6 relays (REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY). A list gives the first relay addresses an IPv6 twin each, in order (at most as many as `relay.address`); an address and its twin share one set of port numbers, and IPv6 relays come from the addresses that have one. Needs a restart.",
    },
    Key {
        section: "relay",
        name: "public_address_v6",
        kind: "string or array of strings",
        default: Unset("`relay.address_v6`"),
        doc: "Advertised IPv6 relay address; required when `relay.address_v6` is unspecified (`::`). A list of as many as `relay.address_v6`, in its order. Needs a restart.",
    },
    Key {
        section: "relay",
        name: "default_family",
        kind: "string",
        default: Value("\"ipv4\""),
        doc: "Relay family of an Allocate without REQUESTED-ADDRESS-FAMILY: `\"ipv4\"` (RFC 8656) or `\"same-as-client\"`. Needs a restart.",
    },
    Key {
        section: "auth",
        name: "secrets",
        kind: "array of strings",
        default: Value("[]"),
        doc: "TURN REST API shared secrets (coturn's `use-auth-secret`): username `<unix-expiry>:<name>`, password base64(HMAC-SHA1(secret, username)). Any one verifies, so a secret is rotated by adding the new one first; at most 8 (each is tried on every REST request, about 9 µs per secret for a 4 KB request). The bundled `\"change-me\"` is refused while a TURN listener is off loopback.",
    },
    Key {
        section: "auth",
        name: "secret_files",
        kind: "array of strings",
        default: Value("[]"),
        doc: "Files each holding one REST secret (its first line, without surrounding blanks): absolute paths to regular files of at most 64 KiB, read at start, by `ferroturn check` and at every reload, so rewriting a file and reloading rotates its secret. A missing, unreadable or empty file stops startup (a reload keeps the running configuration). They count with `secrets`, at most 8 in all. The Debian package names `/etc/ferroturn/secret`, a random secret written at install (root:ferroturn 0640).",
    },
    Key {
        section: "auth",
        name: "users",
        kind: "table",
        default: Value("{}"),
        doc: "Static users: `name = \"password\"`; `name = \"0x<32 hex>\"`, the MD5 key (coturn's form; MD5 password algorithm only); `name = { md5 = \"0x...\", sha256 = \"0x<64 hex>\" }`, either key or both; `name = { password = \"0x...\" }`, a password that starts with `0x`. `ferroturn password` prints the keys. The bundled `alice`/`wonderland` (in any form) is refused while a TURN listener is off loopback.",
    },
    Key {
        section: "auth",
        name: "nonce_lifetime",
        kind: "integer",
        default: Value("600"),
        doc: "Seconds before a NONCE is stale (438); 10–86400.",
    },
    Key {
        section: "auth",
        name: "strict_expiry",
        kind: "boolean",
        default: Value("true"),
        doc: "Close a REST credential's allocations when it expires (requests with it get 401 from then on).",
    },
    Key {
        section: "auth",
        name: "expiry_grace",
        kind: "integer",
        default: Value("0"),
        doc: "Seconds after a REST credential's expiry before its allocations close.",
    },
    Key {
        section: "peers",
        name: "allow",
        kind: "array of strings",
        default: Value("[]"),
        doc: "CIDRs a client may reach although the built-in policy denies them (a LAN with an SFU, `\"127.0.0.0/8\"` for tests). Unspecified, broadcast and multicast addresses stay refused.",
    },
    Key {
        section: "peers",
        name: "deny",
        kind: "array of strings",
        default: Value("[]"),
        doc: "Extra CIDRs denied; wins over `allow`.",
    },
    Key {
        section: "allocation",
        name: "lifetime",
        kind: "integer",
        default: Value("600"),
        doc: "Seconds granted when the client asks for less or nothing (RFC 8656 §7.2).",
    },
    Key {
        section: "allocation",
        name: "max_lifetime",
        kind: "integer",
        default: Value("3600"),
        doc: "Most seconds a client may ask for; at least `lifetime`.",
    },
    Key {
        section: "allocation",
        name: "legacy_channel_numbers",
        kind: "boolean",
        default: Value("false"),
        doc: "Also accept channels 0x5000–0x7FFF, which RFC 5766 allowed and RFC 8656 keeps for DTLS-SRTP (coturn's `turnutils_uclient` picks them).",
    },
    Key {
        section: "allocation",
        name: "permission_lifetime",
        kind: "integer",
        default: Value("300"),
        doc: "Seconds a permission lives after its last refresh (RFC 8656 §9 fixes 300); 1–300. Shorter only to watch expiry in tests: clients refresh on the RFC's schedule, so below it their peers drop between refreshes.",
    },
    Key {
        section: "allocation",
        name: "channel_lifetime",
        kind: "integer",
        default: Value("600"),
        doc: "Seconds a channel binding lives after its last refresh (RFC 8656 §12 fixes 600); 1–600. Shorter only to watch expiry in tests; an expired binding stays on hold for 300 seconds or this, whichever is less.",
    },
    Key {
        section: "allocation",
        name: "mobility",
        kind: "boolean",
        default: Value("false"),
        doc: "Mobility (RFC 8016): an Allocate over UDP with MOBILITY-TICKET gets a ticket, and a Refresh with it from a new address moves the allocation there; off, such an Allocate gets 405.",
    },
    Key {
        section: "limits",
        name: "allocations_per_user",
        kind: "integer",
        default: Value("10"),
        doc: "Allocations one user (static or REST name) may hold at once; 486 beyond; at least 1.",
    },
    Key {
        section: "limits",
        name: "total_allocations",
        kind: "integer",
        default: Value("0"),
        doc: "Allocations the server holds at once; 508 beyond. `0` is one per relay port of every relay address.",
    },
    Key {
        section: "limits",
        name: "permissions_per_allocation",
        kind: "integer",
        default: Value("10"),
        doc: "Permissions per allocation; 508 beyond; at least 1.",
    },
    Key {
        section: "limits",
        name: "channels_per_allocation",
        kind: "integer",
        default: Value("10"),
        doc: "Channels per allocation; 508 beyond; 1–4096.",
    },
    Key {
        section: "limits",
        name: "connections_per_allocation",
        kind: "integer",
        default: Value("16"),
        doc: "Peer connections per TCP allocation (RFC 6062), connecting, waiting for their ConnectionBind or bound; a Connect beyond gets 508, a peer connecting beyond is closed. `0`: TCP allocations relay nothing.",
    },
    Key {
        section: "limits",
        name: "bandwidth",
        kind: "integer",
        default: Value("6250000"),
        doc: "Bytes per second per allocation and direction (6250000 is 50 Mbit/s); the excess is dropped (on a TCP allocation's data connections, held back), the session survives. `0` is off.",
    },
    Key {
        section: "limits",
        name: "packet_rate",
        kind: "integer",
        default: Value("10000"),
        doc: "Packets per second per allocation and direction; the excess is dropped. `0` is off.",
    },
    Key {
        section: "limits",
        name: "unauthenticated_rate",
        kind: "integer",
        default: Value("100"),
        doc: "Unauthenticated answers (400, 401, 438) per second per source IP, so that the server reflects no flood. `0` is off.",
    },
    Key {
        section: "limits",
        name: "stream_message_timeout",
        kind: "integer",
        default: Value("10"),
        doc: "Seconds a TCP/TLS connection has to finish each STUN message or ChannelData frame from its first byte, and its TLS handshake; 1–300.",
    },
    Key {
        section: "limits",
        name: "stream_allocation_timeout",
        kind: "integer",
        default: Value("60"),
        doc: "Seconds a TCP/TLS connection may stay without an allocation, from connecting and from the end of each allocation it held (coturn's `max-allocate-timeout`); 1–3600.",
    },
    Key {
        section: "limits",
        name: "connections_per_ip",
        kind: "integer",
        default: Value("64"),
        doc: "TCP/TLS connections per source IPv4 address or IPv6 /64, over all workers; `0` is no cap (behind a proxy that shows every client with one address).",
    },
    Key {
        section: "limits",
        name: "tls_handshakes_per_ip",
        kind: "integer",
        default: Value("8"),
        doc: "TLS handshakes in progress per source address or /64; 1 to `connections_per_ip` (`0` only with that at `0`).",
    },
    Key {
        section: "limits",
        name: "stream_queue_bytes",
        kind: "integer",
        default: Value("65536"),
        doc: "Bytes queued for a TCP/TLS client that does not read; frames beyond are dropped (one frame of any size fits an empty queue); 4096–16777216.",
    },
    Key {
        section: "limits",
        name: "stream_connections",
        kind: "integer",
        default: Value("16384"),
        doc: "TCP/TLS connections the whole server holds at once; more are closed at accept; 1–1048576. With the bounds per connection (about 230 KiB for a hostile TLS client), the server's memory budget: raise the unit's `MemoryMax=` with it.",
    },
    Key {
        section: "log",
        name: "level",
        kind: "string",
        default: Value("\"info\""),
        doc: "`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as `\"ferroturn=debug\"`. `RUST_LOG` overrides it. A reload applies it.",
    },
    Key {
        section: "log",
        name: "format",
        kind: "string",
        default: Value("\"text\""),
        doc: "`\"text\"` or `\"json\"` (one object per line). Needs a restart.",
    },
    Key {
        section: "metrics",
        name: "address",
        kind: "string",
        default: Value("\"127.0.0.1:9641\""),
        doc: "`IP:PORT` of the Prometheus `/metrics` listener (text format 0.0.4). Needs a restart.",
    },
    Key {
        section: "metrics",
        name: "hosts",
        kind: "array of strings",
        default: Value("[]"),
        doc: "Host names `/metrics` answers to besides IP literals and `localhost` (the names Prometheus scrapes it by; no port). Other `Host` headers get 421.",
    },
    Key {
        section: "admin",
        name: "socket",
        kind: "string",
        default: Unset("`/run/ferroturn/admin.sock` without `admin.address`"),
        doc: "Absolute path of the admin API's Unix socket, mode 0660, owned by the server's user and group: its file mode is the access control, no token needed. Needs a restart.",
    },
    Key {
        section: "admin",
        name: "address",
        kind: "string",
        default: Unset("none"),
        doc: "`IP:PORT` to serve the admin API over TCP too; requires `admin.token`. Needs a restart.",
    },
    Key {
        section: "admin",
        name: "token",
        kind: "string",
        default: Unset("none"),
        doc: "Bearer token every admin request must carry (`Authorization: Bearer TOKEN`); required with `admin.address`; printable ASCII without spaces. A reload rotates it.",
    },
    Key {
        section: "demo",
        name: "address",
        kind: "string",
        default: Value("\"127.0.0.1:8080\""),
        doc: "`IP:PORT` of the demo's web server (call page, trickle-ICE page, signaling, `/ice-servers`).",
    },
    Key {
        section: "demo",
        name: "credential_ttl",
        kind: "integer",
        default: Value("3600"),
        doc: "Seconds the REST credentials `/ice-servers` mints stay valid; 60–86400.",
    },
    Key {
        section: "demo",
        name: "idle_timeout",
        kind: "integer",
        default: Value("60"),
        doc: "Seconds a demo WebSocket may stay silent (no message, no pong) before it is closed; 1–3600.",
    },
    Key {
        section: "demo",
        name: "connections_per_ip",
        kind: "integer",
        default: Value("32"),
        doc: "Connections one IP address (or IPv6 /64) may hold on the demo's web server; 1–4096.",
    },
    Key {
        section: "demo",
        name: "room_size",
        kind: "integer",
        default: Value("4"),
        doc: "Peers one signaling room holds; the call page connects each to every other (a full mesh); 2–8.",
    },
    Key {
        section: "demo",
        name: "allowed_origins",
        kind: "array of strings",
        default: Value("[]"),
        doc: "Origins (`https://app.example:8443`) besides the demo's own whose pages may open `/signal`; others get 403. At most 32.",
    },
    Key {
        section: "demo",
        name: "sockjs_heartbeat",
        kind: "integer",
        default: Value("25"),
        doc: "Seconds between SockJS heartbeat frames (`h`) on a quiet `/ws` session; 1–300.",
    },
    Key {
        section: "demo",
        name: "sockjs_disconnect_delay",
        kind: "integer",
        default: Value("5"),
        doc: "Seconds a SockJS session may go without a receiving request (or a closed one keeps answering its close frame) before it is dropped; 1–300.",
    },
    Key {
        section: "demo",
        name: "stomp_heartbeat",
        kind: "integer",
        default: Value("10000"),
        doc: "Milliseconds between STOMP heart-beats the broker offers each way (`/stomp`, SockJS); each way runs at the larger of this and the client's figure, and a session silent for twice the agreed client interval is closed; 0 (none) or 100–600000.",
    },
    Key {
        section: "demo",
        name: "stomp_sessions_per_ip",
        kind: "integer",
        default: Value("64"),
        doc: "STOMP sessions one IP address (or IPv6 /64) may hold at once, over `/stomp` and SockJS together; 1–4096.",
    },
    Key {
        section: "cluster",
        name: "redis",
        kind: "string",
        default: Required,
        doc: "`redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` of the Redis (or Valkey) holding users under `turn/realm/REALM/user/NAME/key` or `/password` and secrets in the set `turn/realm/REALM/secret`; `rediss://` for TLS, its certificate checked against the system's roots (or the file `SSL_CERT_FILE` names). Needs a restart.",
    },
    Key {
        section: "cluster",
        name: "node",
        kind: "string",
        default: Unset("this host's name"),
        doc: "This node's name among the nodes sharing the Redis (1 to 64 printable ASCII characters). Needs a restart.",
    },
    Key {
        section: "cluster",
        name: "heartbeat",
        kind: "integer",
        default: Value("10"),
        doc: "Seconds between this node's rewrites of its rows in Redis (its per-user allocation counts and its sessions), 1–60. They expire after three heartbeats, so a node that dies stops counting against any quota, and its sessions leave `ferroturn sessions`, within 3 × this (30 s by default). Needs a restart.",
    },
    Key {
        section: "cluster",
        name: "usage_stream_max",
        kind: "integer",
        default: Value("100000"),
        doc: "Entries kept in the usage stream `ferroturn/realm/REALM/usage` (every node's allocation events with node, duration and traffic; README \"Usage events\"), 10–100000000: each write trims it to about this many (Redis trims whole nodes of `stream-node-max-entries` entries, 100 by default, so up to that many more stay). Needs a restart.",
    },
    Key {
        section: "cluster",
        name: "advertise",
        kind: "array of strings",
        default: Unset(
            "each TURN `[[listen]]` entry on a specific address (not `0.0.0.0`, `::` or a PROXY protocol listener), per transport",
        ),
        doc: "Where other nodes send this node's share of clients (300 Try Alternate, ALTERNATE-SERVER): `TRANSPORT:IP:PORT` entries, `udp:203.0.113.5:3478`, `tcp:[2001:db8::5]:3478`, `tls:203.0.113.5:5349`, at most one per transport and family; a client is only sent to an address of its own family and transport. Required with `redirect_above` when a listener cannot give it. Needs a restart.",
    },
    Key {
        section: "cluster",
        name: "advertise_tls_name",
        kind: "string",
        default: Unset("none: TLS clients check the name they used"),
        doc: "The DNS name this node's TLS certificate carries, sent with its `tls:` address as ALTERNATE-DOMAIN (RFC 8489 §14.16) to TLS clients another node redirects here. Needs a restart.",
    },
    Key {
        section: "cluster",
        name: "redirect_above",
        kind: "float",
        default: Unset("never on load; a draining node still redirects"),
        doc: "A load fraction in (0, 1]: while this node's load (the larger of its allocations ÷ `limits.total_allocations` and the share of relay ports in use) is above it, a new Allocate is answered 300 Try Alternate with the least-loaded other node that is live, not draining and below this; with no such node it is served here. Needs a restart.",
    },
    Key {
        section: "nat_behaviour",
        name: "listen",
        kind: "string",
        default: Unset("the one UDP `[[listen]]` entry of `other_address`'s family"),
        doc: "`IP:PORT` of the UDP `[[listen]]` entry to pair with (its address must be a specific one, not `0.0.0.0` or `::`): the primary address and port. Needs a restart.",
    },
    Key {
        section: "nat_behaviour",
        name: "other_address",
        kind: "string",
        default: Required,
        doc: "The second IP address of this host, of the primary's family. Binding requests are answered on four UDP sockets, the primary and other address each with the primary and other port, with RESPONSE-ORIGIN and OTHER-ADDRESS; CHANGE-REQUEST, RESPONSE-PORT (to the client's own IP only) and PADDING are honoured there. The three extra sockets answer Binding only (TURN requests get 400). Needs a restart.",
    },
    Key {
        section: "nat_behaviour",
        name: "other_port",
        kind: "integer",
        default: Required,
        doc: "The second port, not the primary's and outside `relay.ports`. Needs a restart.",
    },
    Key {
        section: "fastpath",
        name: "mode",
        kind: "string",
        default: Value("\"off\""),
        doc: "`\"on\"`: an XDP program relays ChannelData of channels bound by clients of UDP listeners on a specific address, with their peers of the same family, in the kernel (counted exactly, within the allocation's ceilings); everything else stays in userspace. ferroturn refuses to start when it cannot attach the program (needs CAP_BPF and CAP_NET_ADMIN, and the feature `fastpath`). Attaching XDP resets the link on some drivers. `\"off\"`: every packet goes through ferroturn's threads. Needs a restart.",
    },
    Key {
        section: "fastpath",
        name: "interfaces",
        kind: "array of strings",
        default: Value("[]"),
        doc: "The interfaces to attach to (native XDP where the driver has it, generic otherwise); empty: those that carry the UDP listeners' and relay addresses (a wildcard relay address then refuses to start: name them). Routing relayed packets needs forwarding on for them (`net.ipv4.conf.IF.forwarding`, `net.ipv6.conf.all.forwarding`): without it they stay in userspace. Needs a restart.",
    },
];

/// The keys of one section, in table order.
pub fn keys_of(section: &str) -> impl Iterator<Item = &'static Key> + '_ {
    KEYS.iter().filter(move |k| k.section == section)
}

/// How a section is written in a file: `[server]`, `[[listen]]`; the top
/// level has no header.
pub fn header(section: &str) -> String {
    match section {
        "" => String::new(),
        "listen" => "[[listen]]".to_owned(),
        s => format!("[{s}]"),
    }
}

/// The default column of the reference.
fn default_markdown(d: KeyDefault) -> String {
    match d {
        Value(v) => format!("`{v}`"),
        Required => "(required)".to_owned(),
        Unset(text) => text.to_owned(),
    }
}

/// The README's "Configuration reference" table, as Markdown: one row per
/// key, in table order.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for k in KEYS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.path(),
            k.kind,
            default_markdown(k.default),
            k.doc
        ));
    }
    out
}

/// Text in the tables' light markup as roff inlines: what stands between
/// backticks in bold, the rest in roman.
fn inlines(text: &str) -> Vec<clap_mangen::roff::Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(i, part)| if i % 2 == 1 { bold(part) } else { roman(part) })
        .collect()
}

/// The manual page `ferroturn.toml(5)` in roff: every section and key of
/// [`SECTIONS`] and [`KEYS`], with type, default and meaning.
pub fn man_page(version: &str) -> String {
    let mut r = Roff::new();
    r.control(
        "TH",
        [
            "FERROTURN.TOML",
            "5",
            "\"\"",
            &format!("ferroturn {version}"),
            "File Formats",
        ],
    );
    // Neither hyphenate nor stretch: key names and paths stay whole.
    r.control("nh", []);
    r.control("ad", ["l"]);
    r.control("SH", ["NAME"]);
    r.text([roman(
        "ferroturn.toml - configuration file of the ferroturn STUN/TURN server",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([bold("/etc/ferroturn/config.toml")]);
    r.control("SH", ["DESCRIPTION"]);
    r.text(inlines(
        "ferroturn reads one TOML file, named with `--config FILE` (see ferroturn(1)). Keys outside a table come first, then one table per section below; every key but `realm` and the `[[listen]]` entries may be left out, and then has the default shown.",
    ));
    r.control("PP", []);
    r.text(inlines(
        "A key the server does not know, a value of the wrong type and a value out of range are errors: the server does not start, and prints `FILE: KEY: REASON`. `ferroturn check --config FILE` validates a file the same way without starting.",
    ));
    r.control("PP", []);
    r.text(inlines(
        "On SIGHUP (`systemctl reload ferroturn`) the file is read again and, if valid, applied without dropping a session: secrets, users, peers, limits, the log level, TLS certificates and the admin token. Keys marked \"Needs a restart\" keep their running value until the next start; an invalid file is refused and the running configuration stays.",
    ));
    for (section, about) in SECTIONS {
        let title = match *section {
            "" => "TOP-LEVEL KEYS".to_owned(),
            s => header(s),
        };
        r.control("SH", [title.as_str()]);
        r.text(inlines(about));
        for k in keys_of(section) {
            let default = match k.default {
                Value(v) => vec![roman(" (default: "), bold(v), roman(")")],
                Required => vec![roman(" (required)")],
                Unset(text) => {
                    let mut v = vec![roman(" (default: ")];
                    v.extend(inlines(text));
                    v.push(roman(")"));
                    v
                }
            };
            let mut tag = vec![bold(k.name), roman(" = "), italic(k.kind)];
            tag.extend(default);
            r.control("TP", []);
            r.text(tag);
            r.text(inlines(k.doc));
        }
    }
    r.control("SH", ["EXAMPLE"]);
    r.text(inlines(
        "A server for others, with REST credentials minted by a backend and metrics on loopback:",
    ));
    r.control("PP", []);
    r.control("nf", []);
    r.control("RS", ["4"]);
    for line in [
        "realm = \"example.org\"",
        "",
        "[[listen]]",
        "address = \"0.0.0.0:3478\"",
        "transports = [\"udp\", \"tcp\"]",
        "",
        "[relay]",
        "address = \"0.0.0.0\"",
        "public_address = \"203.0.113.10\"",
        "",
        "[auth]",
        "secrets = [\"output of: openssl rand -base64 32\"]",
        "",
        "[metrics]",
        "address = \"127.0.0.1:9641\"",
    ] {
        r.text([roman(line)]);
    }
    r.control("RE", []);
    r.control("fi", []);
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([bold("/etc/ferroturn/config.toml")]);
    r.text(inlines(
        "The file the systemd unit runs the server with; mode 0640, owner root, group ferroturn: it holds secrets.",
    ));
    r.control("SH", ["SEE ALSO"]);
    r.text([bold("ferroturn"), roman("(1)")]);
    r.render()
}

/// The field names a serde `Deserialize` struct accepts: the list that
/// `deny_unknown_fields` checks keys against, read by asking the type to
/// deserialize from a probe that only records it. The tests compare the
/// parser's tables with [`KEYS`] through this.
#[cfg(test)]
pub(crate) fn fields_of<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor, value::Error};

    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            *self.0 = fields;
            Err(Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    fn sections() -> Vec<&'static str> {
        SECTIONS.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn keys_are_grouped_by_section_in_order_and_unique() {
        let order = sections();
        let mut last = 0;
        let mut seen = BTreeSet::new();
        for k in KEYS {
            let at = order
                .iter()
                .position(|s| *s == k.section)
                .unwrap_or_else(|| panic!("{}: section not in SECTIONS", k.path()));
            assert!(at >= last, "{} is out of its section's place", k.path());
            last = at;
            assert!(seen.insert(k.path()), "{} is listed twice", k.path());
            assert!(!k.doc.contains('|'), "{}: `|` ends a table cell", k.path());
            assert_eq!(
                k.doc.matches('`').count() % 2,
                0,
                "{}: odd backticks",
                k.path()
            );
        }
        for s in order {
            assert!(keys_of(s).next().is_some(), "section {s:?} has no key");
        }
    }

    /// The parser's tables (serde's field lists, which its
    /// `deny_unknown_fields` enforce) hold exactly the keys of [`KEYS`].
    #[test]
    fn the_table_lists_exactly_the_keys_the_parser_accepts() {
        let accepted: BTreeMap<&str, &[&str]> =
            crate::config::accepted_keys().into_iter().collect();
        let top: BTreeSet<&str> = accepted[""].iter().copied().collect();
        let listed_top: BTreeSet<&str> = keys_of("").map(|k| k.name).collect();
        let tables: BTreeSet<&str> = top.difference(&listed_top).copied().collect();
        let listed_tables: BTreeSet<&str> =
            sections().into_iter().filter(|s| !s.is_empty()).collect();
        assert_eq!(
            tables, listed_tables,
            "the file's tables (left: the parser's, right: SECTIONS); or a top-level key is missing from KEYS"
        );
        for s in sections() {
            let parser: BTreeSet<&str> = accepted
                .get(s)
                .unwrap_or_else(|| panic!("config::accepted_keys() has no entry for {s:?}"))
                .iter()
                .copied()
                .filter(|k| !(s.is_empty() && tables.contains(k)))
                .collect();
            let listed: BTreeSet<&str> = keys_of(s).map(|k| k.name).collect();
            assert_eq!(
                parser, listed,
                "keys of {s:?}: left the parser's, right config_keys::KEYS"
            );
        }
    }

    /// A minimal valid file, as (section, key) -> TOML value.
    fn base() -> BTreeMap<(&'static str, &'static str), &'static str> {
        BTreeMap::from([
            (("", "realm"), "\"example.org\""),
            (("listen", "address"), "\"127.0.0.1:3478\""),
            (("listen", "transports"), "[\"udp\"]"),
            (("relay", "public_address"), "\"203.0.113.10\""),
            (("auth", "secrets"), "[\"s3cret\"]"),
            (("auth", "users"), "{ alice = \"liddell\" }"),
        ])
    }

    /// A file of `keys`, each section present that a key names or
    /// `extra` lists.
    fn file(keys: &BTreeMap<(&str, &str), &str>, extra: &str) -> String {
        let mut out = String::new();
        for s in sections() {
            let lines: Vec<String> = keys
                .iter()
                .filter(|((sec, _), _)| *sec == s)
                .map(|((_, k), v)| format!("{k} = {v}\n"))
                .collect();
            if !lines.is_empty() || (s == extra && !s.is_empty()) {
                out.push_str(&format!("{}\n", header(s)));
                out.extend(lines);
            }
        }
        out
    }

    /// Leaving a key out and setting it to its listed default give the
    /// same configuration: the parser uses the default the table shows.
    #[test]
    fn listed_defaults_are_the_parsers() {
        let parse = |text: &str| crate::config::parse(Path::new("t.toml"), text);
        for k in KEYS {
            let Value(v) = k.default else { continue };
            let toml_type = toml::from_str::<toml::Table>(&format!("x = {v}"))
                .unwrap_or_else(|e| panic!("{}: default {v} is no TOML value: {e}", k.path()))["x"]
                .type_str();
            let expected = match k.kind {
                "array of strings" => "array",
                // Its default is the one-address form.
                "string or array of strings" => "string",
                other => other,
            };
            assert_eq!(
                toml_type,
                expected,
                "{}: default {v} is not of its type",
                k.path()
            );
            let mut without = base();
            if k.section == "cluster" {
                // The section needs its one required key.
                without.insert(("cluster", "redis"), "\"redis://127.0.0.1:6379\"");
            }
            without.remove(&(k.section, k.name));
            let mut with = without.clone();
            with.insert((k.section, k.name), v);
            let omitted = parse(&file(&without, k.section))
                .unwrap_or_else(|e| panic!("{} left out: {e}", k.path()));
            let set = parse(&file(&with, k.section))
                .unwrap_or_else(|e| panic!("{} = {v}: {e}", k.path()));
            assert!(
                omitted == set,
                "{}: the parser's default is not {v}:\n{omitted:?}\n{set:?}",
                k.path()
            );
        }
        // And the comparison sees a change: a value other than the default differs.
        let mut other = base();
        other.insert(("auth", "nonce_lifetime"), "601");
        assert!(parse(&file(&base(), "")).unwrap() != parse(&file(&other, "")).unwrap());
    }

    /// Every table refuses a key it does not know, so that the field lists
    /// compared above are the whole of what it accepts.
    #[test]
    fn every_table_refuses_an_unknown_key() {
        for s in sections() {
            let mut keys = base();
            keys.insert((s, "no_such_key"), "1");
            let e = crate::config::parse(Path::new("t.toml"), &file(&keys, s)).unwrap_err();
            assert!(
                e.key.starts_with(s) && e.reason.contains("no_such_key"),
                "{s:?}: {e}"
            );
        }
    }

    /// The README's "Configuration reference" holds the table as
    /// [`markdown_table`] writes it.
    #[test]
    fn the_readme_reference_is_the_table() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("\n## Configuration reference\n")
            .expect("README has a Configuration reference");
        let rest = &readme[start + 1..];
        let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 4)];
        let table = markdown_table();
        assert!(
            section.contains(&table),
            "README.md's Configuration reference differs from config_keys::KEYS; the table should read:\n{table}"
        );
    }

    /// Where a line of `config.toml` opens a table (`[server]`, or
    /// commented out, `#[admin]`), the table's name.
    fn table_header(line: &str) -> Option<&str> {
        let l = line.trim_start_matches('#').trim();
        let name = l.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"));
        let name = name.or_else(|| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?;
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_')
            .then_some(name)
    }

    /// The key a line of `config.toml` sets, as written or commented out
    /// with one `#` and at most one space (`# alternate = ...`); prose in
    /// comments is indented further or has no `name =`.
    fn set_key(line: &str) -> Option<&str> {
        let l = line
            .strip_prefix('#')
            .map_or(line, |l| l.strip_prefix(' ').unwrap_or(l));
        let (name, _) = l.split_once(" = ")?;
        (!name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        .then_some(name)
    }

    /// The bundled `config.toml` shows every key, set or commented out, in
    /// its own table, and no key that the table does not list.
    #[test]
    fn the_bundled_config_shows_every_key() {
        let mut section = "";
        let mut shown = BTreeSet::new();
        for line in include_str!("../config.toml").lines() {
            if let Some(s) = table_header(line) {
                section = s;
            } else if let Some(k) = set_key(line) {
                shown.insert((section, k));
            }
        }
        let listed: BTreeSet<(&str, &str)> = KEYS.iter().map(|k| (k.section, k.name)).collect();
        let missing: Vec<_> = listed.difference(&shown).collect();
        assert!(missing.is_empty(), "config.toml does not show {missing:?}");
        let unknown: Vec<_> = shown.difference(&listed).collect();
        assert!(
            unknown.is_empty(),
            "config.toml shows keys KEYS lacks: {unknown:?}"
        );
    }
}
