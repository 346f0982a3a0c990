//! Starting and stopping the servers under test, and reading their CPU
//! time and RSS from /proc.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net;
use crate::turn;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Forwarder,
    /// The zero-work answerer of the control-plane test (answerer.rs),
    /// sleeping in `epoll_wait` between requests as ferroturn does.
    Answerer,
    /// The same with one thread that polls its socket for 50 µs after its
    /// last datagram before it sleeps.
    AnswererPoll,
    /// The same with one thread that polls its socket without sleeping.
    AnswererSpin,
    Coturn,
    Ferroturn,
    /// ferroturn with `[server] udp_threads = "dedicated"`.
    FerroturnDedicated,
    /// ferroturn with `[server] udp_scheduling = "batch"`.
    FerroturnBatch,
    /// ferroturn with `[server] udp_scheduling = "normal"`.
    FerroturnNormal,
    /// ferroturn with `[cluster]`, on a `redis-server` the bench starts.
    FerroturnCluster,
    /// ferroturn with its kernel fast path, `[fastpath] mode = "on"` on
    /// the place's interfaces (issue 19; the veth topology, netns.rs).
    FerroturnFastpath,
}

impl Kind {
    /// Every kind, in the order a run takes them.
    pub const ALL: [Kind; 11] = [
        Kind::Forwarder,
        Kind::Answerer,
        Kind::AnswererPoll,
        Kind::AnswererSpin,
        Kind::Coturn,
        Kind::Ferroturn,
        Kind::FerroturnNormal,
        Kind::FerroturnBatch,
        Kind::FerroturnDedicated,
        Kind::FerroturnCluster,
        Kind::FerroturnFastpath,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Forwarder => "forwarder",
            Kind::Answerer => "answerer",
            Kind::AnswererPoll => "answerer-poll",
            Kind::AnswererSpin => "answerer-spin",
            Kind::Coturn => "coturn",
            Kind::Ferroturn => "ferroturn",
            Kind::FerroturnDedicated => "ferroturn-dedicated",
            Kind::FerroturnBatch => "ferroturn-batch",
            Kind::FerroturnNormal => "ferroturn-normal",
            Kind::FerroturnCluster => "ferroturn-cluster",
            Kind::FerroturnFastpath => "ferroturn-fastpath",
        }
    }
    /// What a ferroturn variant changes, as the report names it.
    pub fn setting(self) -> String {
        match self {
            Kind::FerroturnCluster => "`[cluster]` (a local redis-server)".to_owned(),
            Kind::FerroturnFastpath => "`[fastpath] mode = \"on\"`".to_owned(),
            k => format!("`[server] {}`", k.server_keys().trim()),
        }
    }
    /// The column of this kind for ferroturn build `build`: `ferroturn`
    /// becomes the build's name (`ferroturn-normal` becomes `new-normal`).
    pub fn label(self, build: &str) -> String {
        self.name().replacen("ferroturn", build, 1)
    }
    pub fn is_turn(self) -> bool {
        self != Kind::Forwarder
    }
    pub fn is_ferroturn(self) -> bool {
        !matches!(
            self,
            Kind::Forwarder
                | Kind::Coturn
                | Kind::Answerer
                | Kind::AnswererPoll
                | Kind::AnswererSpin
        )
    }
    /// Answers the control-plane cycle and nothing else: only `ctl` runs.
    pub fn control_only(self) -> bool {
        matches!(
            self,
            Kind::Answerer | Kind::AnswererPoll | Kind::AnswererSpin
        )
    }
    /// What a ferroturn variant sets in `[server]` (nothing: the defaults).
    pub fn server_keys(self) -> &'static str {
        match self {
            Kind::FerroturnDedicated => "udp_threads = \"dedicated\"\n",
            Kind::FerroturnBatch => "udp_scheduling = \"batch\"\n",
            Kind::FerroturnNormal => "udp_scheduling = \"normal\"\n",
            _ => "",
        }
    }
}

/// Channels the forwarder maps (flows of the 100-allocation tests).
pub const FORWARDER_CHANNELS: usize = 100;

/// Relay port ranges, distinct. coturn gets the larger one: it keeps the
/// ports of deleted allocations for up to a minute, and the control-plane
/// test makes ~30,000 of them. (A port that is taken, e.g. an ephemeral one
/// in coturn's range, is retried by both servers.)
pub const FERROTURN_PORTS: (u16, u16) = (1024, 16383);
pub const COTURN_PORTS: (u16, u16) = (16384, 65535);

/// Where the servers listen and relay, and the network namespace they run
/// in: loopback by default, the server namespace of the veth topology
/// with `--topology veth` (netns.rs).
#[derive(Clone, Debug)]
pub struct Place {
    pub listen: Ipv4Addr,
    pub relay: Ipv4Addr,
    /// Peers ferroturn may relay to (`[peers] allow`).
    pub peers: &'static str,
    /// The /24 of the forwarder's relayed addresses (local addresses).
    pub forwarder_relays: Ipv4Addr,
    /// The namespace the servers run in (`ip netns exec`); none: this one.
    pub netns: Option<&'static str>,
    /// `[fastpath] interfaces` of `ferroturn-fastpath`.
    pub interfaces: &'static [&'static str],
}

impl Place {
    pub fn loopback() -> Place {
        Place {
            listen: Ipv4Addr::LOCALHOST,
            relay: Ipv4Addr::LOCALHOST,
            peers: "127.0.0.0/8",
            forwarder_relays: Ipv4Addr::new(127, 0, 2, 0),
            netns: None,
            interfaces: &["lo"],
        }
    }

    /// A command that runs `program` in this place's namespace.
    fn command(&self, program: &Path) -> Command {
        match self.netns {
            Some(ns) => {
                // `ip netns exec` switches namespace and execs `program`
                // in its own process: the child's PID is the server's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

pub struct Paths {
    pub turnserver: PathBuf,
    pub me: PathBuf,
    pub dir: PathBuf,
    /// ferroturn's `[server] workers`.
    pub ferroturn_workers: usize,
    /// The `redis://` URL of the bench's redis-server, for
    /// `ferroturn-cluster`.
    pub redis: Option<String>,
    pub place: Place,
}

/// A `redis-server` on a loopback port, without persistence, for
/// `ferroturn-cluster`; killed with the bench.
pub struct RedisServer {
    pub url: String,
    child: Child,
}

impl RedisServer {
    pub fn start() -> Result<RedisServer, String> {
        let port = net::free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
        cmd.args(["--save", "", "--appendonly", "no"]);
        let child = spawn_quiet(&mut cmd)
            .map_err(|e| format!("redis-server: {e} (apt-get install redis-server)"))?;
        let mut r = RedisServer {
            url: format!("redis://127.0.0.1:{port}/0"),
            child,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                r.stop();
                return Err("redis-server did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ferroturn build under test: `--ferroturn NAME=PATH`, or the one
/// beside the bench binary, named `ferroturn`. Several builds run in one
/// invocation so that host noise falls on all of them alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    /// Column label: short, e.g. `prev` or `new`.
    pub name: String,
    /// Absolute, so that a bare file name is never looked up on PATH.
    pub path: PathBuf,
}

/// Columns the bench fills itself; a build may not take their names.
const RESERVED: [&str; 3] = ["generator", "forwarder", "coturn"];

/// Parse one `--ferroturn NAME=PATH`. The path must be an executable
/// file: a typo should stop the run now, not after minutes of other
/// servers.
pub fn parse_build(arg: &str) -> Result<Build, String> {
    let Some((name, path)) = arg.split_once('=') else {
        return Err("expected NAME=PATH, e.g. new=target/release/ferroturn".into());
    };
    if name.is_empty() {
        return Err("empty NAME before `=`".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "NAME `{name}` may hold only letters, digits, `-`, `_` and `.`"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!("NAME `{name}` is the label of another column"));
    }
    if path.is_empty() {
        return Err("empty PATH after `=`".into());
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a file"));
    }
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{path} is not executable"));
    }
    let path = std::fs::canonicalize(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(Build {
        name: name.to_string(),
        path,
    })
}

/// Every column label must be unique, variants included (`new-normal`
/// of build `new` against a build named `new-normal`).
pub fn check_builds(builds: &[Build]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for b in builds {
        if !seen.insert(b.name.as_str()) {
            return Err(format!("NAME `{}` is given twice", b.name));
        }
    }
    for b in builds {
        for k in Kind::ALL.into_iter().filter(|k| *k != Kind::Ferroturn) {
            let label = k.label(&b.name);
            if k.is_ferroturn() && seen.contains(label.as_str()) {
                return Err(format!(
                    "NAME `{label}` is also the label of build `{}` with {}",
                    b.name,
                    k.setting()
                ));
            }
        }
    }
    Ok(())
}

/// One server of a run: the column it fills (and results key), and for
/// ferroturn the build it runs.
#[derive(Clone, Debug)]
pub struct Target {
    pub kind: Kind,
    pub name: String,
    pub build: Option<Build>,
}

impl Target {
    pub fn new(kind: Kind, build: Option<&Build>) -> Target {
        let name = match build {
            Some(b) if kind.is_ferroturn() => kind.label(&b.name),
            _ => kind.name().to_string(),
        };
        Target {
            kind,
            name,
            build: build.filter(|_| kind.is_ferroturn()).cloned(),
        }
    }
    /// The column of this build's default configuration (for a variant's
    /// ratio), or the target's own name.
    pub fn base(&self) -> &str {
        self.build.as_ref().map_or(&self.name, |b| &b.name)
    }
}

pub struct Server {
    pub addr: SocketAddrV4,
    child: Child,
}

/// Start `cmd` without stdin, stdout or stderr, to die with the bench.
pub fn spawn_quiet(cmd: &mut Command) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(cmd);
    cmd.spawn()
}

/// Kill the child if the benchmark dies.
fn die_with_parent(c: &mut Command) {
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Stream listeners for the TCP-relay test (`tcp_relay.rs`): TCP on the
/// UDP listener's port, and TLS on `tls_port` with this certificate.
pub struct Streams {
    pub tls_port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `keys`: more lines for `[server]`.
pub fn ferroturn_config(
    port: u16,
    workers: usize,
    keys: &str,
    limits: bool,
    streams: Option<&Streams>,
    place: &Place,
) -> String {
    let transports = match streams {
        Some(_) => r#"["udp", "tcp"]"#,
        None => r#"["udp"]"#,
    };
    let mut s = format!(
        r#"realm = "{realm}"
[server]
workers = {workers}
{keys}[[listen]]
address = "{listen}:{port}"
transports = {transports}
[relay]
address = "{relay}"
ports = "{lo}-{hi}"
[auth]
users = {{ {user} = "{pass}" }}
# Two REST secrets, as during a rotation: a REST name costs one HMAC each
# (the msgcost test measures it).
secrets = ["bench-rotation-old-secret", "bench-rotation-new-secret"]
[peers]
allow = ["{peers}"]
[log]
level = "info"
"#,
        realm = turn::REALM,
        user = turn::USER,
        pass = turn::PASS,
        lo = FERROTURN_PORTS.0,
        hi = FERROTURN_PORTS.1,
        listen = place.listen,
        relay = place.relay,
        peers = place.peers,
    );
    if limits {
        // Like coturn's defaults: no per-user quota, no rate limits.
        s.push_str(
            "[limits]\nallocations_per_user = 1000000\nbandwidth = 0\npacket_rate = 0\nunauthenticated_rate = 0\n",
        );
    }
    if let Some(t) = streams {
        s.push_str(&format!(
            "[[listen]]\naddress = \"127.0.0.1:{}\"\ntransports = [\"tls\"]\ncert = {:?}\nkey = {:?}\n",
            t.tls_port,
            t.cert.display().to_string(),
            t.key.display().to_string()
        ));
    }
    s
}

/// `[fastpath]` on, on `place`'s interfaces (issue 19).
fn fastpath_section(place: &Place) -> String {
    let ifs: Vec<String> = place
        .interfaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect();
    format!(
        "[fastpath]\nmode = \"on\"\ninterfaces = [{}]\n",
        ifs.join(", ")
    )
}

impl Server {
    pub fn start(target: &Target, paths: &Paths, echo: SocketAddrV4) -> Result<Server, String> {
        Server::start_with(target, paths, echo, None)
    }

    /// With `streams`, a TURN server also listens on TCP (the UDP port)
    /// and TLS, and coturn relays over TCP (RFC 6062) too.
    pub fn start_with(
        target: &Target,
        paths: &Paths,
        echo: SocketAddrV4,
        streams: Option<&Streams>,
    ) -> Result<Server, String> {
        let kind = target.kind;
        let port = net::free_port();
        let place = &paths.place;
        let addr = SocketAddrV4::new(place.listen, port);
        let mut cmd = match kind {
            Kind::Forwarder => {
                let mut c = place.command(&paths.me);
                c.args([
                    "--forwarder",
                    &addr.to_string(),
                    &echo.to_string(),
                    &FORWARDER_CHANNELS.to_string(),
                    &place.forwarder_relays.to_string(),
                ]);
                c.stdout(Stdio::piped());
                c
            }
            Kind::Answerer | Kind::AnswererPoll | Kind::AnswererSpin => {
                // As many threads as ferroturn has UDP shards; one that
                // polls, so that the bench's client keeps a core.
                let threads = match (kind, paths.ferroturn_workers) {
                    (Kind::AnswererPoll | Kind::AnswererSpin, _) => 1,
                    (_, 0) => std::thread::available_parallelism().map_or(2, |n| n.get()),
                    (_, n) => n,
                };
                let mut c = place.command(&paths.me);
                c.args(["--answerer", &addr.to_string(), &threads.to_string()]);
                match kind {
                    Kind::AnswererPoll => c.arg("poll"),
                    Kind::AnswererSpin => c.arg("spin"),
                    _ => &mut c,
                };
                c.stdout(Stdio::null());
                c
            }
            Kind::Coturn => {
                let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
                let mut c = place.command(&paths.turnserver);
                c.args(["-n", "--listening-ip", &place.listen.to_string()]);
                c.args(["--relay-ip", &place.relay.to_string()]);
                c.args(["--listening-port", &port.to_string()]);
                c.args(["--min-port", &COTURN_PORTS.0.to_string()]);
                c.args(["--max-port", &COTURN_PORTS.1.to_string()]);
                c.args(["--relay-threads", &threads.to_string()]);
                c.args(["--lt-cred-mech", "--realm", turn::REALM]);
                c.args(["--user", &format!("{}:{}", turn::USER, turn::PASS)]);
                c.args(["--allow-loopback-peers", "--no-cli", "--no-rfc5780"]);
                match streams {
                    None => c.args(["--no-tcp", "--no-tls", "--no-dtls", "--no-tcp-relay"]),
                    Some(t) => c
                        .args(["--no-dtls", "--tls-listening-port", &t.tls_port.to_string()])
                        .arg("--cert")
                        .arg(&t.cert)
                        .arg("--pkey")
                        .arg(&t.key),
                };
                c.args([
                    "--no-software-attribute",
                    "--log-file",
                    "stdout",
                    "--simple-log",
                ]);
                c.arg("--pidfile").arg(paths.dir.join("turnserver.pid"));
                c.stdout(Stdio::null());
                c
            }
            // Ferroturn and its variants.
            _ => {
                let Some(build) = &target.build else {
                    return Err(format!("{}: no ferroturn binary", target.name));
                };
                // A config of its own per column. The listening port is
                // fresh each start; the relay range is shared, since only
                // one server runs at a time and the memory test needs
                // 10,000 of its ports.
                let file = paths.dir.join(format!("{}.toml", target.name));
                // Newer builds take [limits]; older ones refuse the section.
                let mut chosen = None;
                let mut refusal = None;
                for limits in [true, false] {
                    let mut text = ferroturn_config(
                        port,
                        paths.ferroturn_workers,
                        kind.server_keys(),
                        limits,
                        streams,
                        place,
                    );
                    if kind == Kind::FerroturnFastpath {
                        text.push_str(&fastpath_section(place));
                    }
                    if kind == Kind::FerroturnCluster {
                        let Some(url) = &paths.redis else {
                            return Err("no redis-server for ferroturn-cluster".into());
                        };
                        text.push_str(&format!("[cluster]\nredis = \"{url}\"\nnode = \"bench\"\n"));
                    }
                    std::fs::write(&file, text).map_err(|e| e.to_string())?;
                    let check = Command::new(&build.path)
                        .args(["check", "--config"])
                        .arg(&file)
                        .stdin(Stdio::null())
                        .output();
                    match check {
                        Ok(o) if o.status.success() => {
                            chosen = Some(limits);
                            break;
                        }
                        // The first refusal is the one that matters: the
                        // retry only drops [limits] for older builds.
                        Ok(o) => {
                            refusal.get_or_insert_with(|| {
                                let mut why = String::from_utf8_lossy(&o.stderr).into_owned();
                                why.push_str(&String::from_utf8_lossy(&o.stdout));
                                why.trim().to_string()
                            });
                        }
                        Err(e) => {
                            refusal.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                if chosen.is_none() {
                    return Err(format!(
                        "ferroturn check refused {}: {}",
                        file.display(),
                        refusal.unwrap_or_default()
                    ));
                }
                let mut c = place.command(&build.path);
                c.arg("--config").arg(&file);
                c.stdout(Stdio::null());
                c
            }
        };
        // In a namespace, what a server says goes to a file, so that a
        // server that does not come up says why.
        let log = paths.dir.join(format!("{}.stderr", target.name));
        let stderr = match place.netns {
            Some(_) => std::fs::File::create(&log).map_or(Stdio::null(), Stdio::from),
            None => Stdio::null(),
        };
        cmd.stdin(Stdio::null()).stderr(stderr);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", target.name))?;
        let ready = match kind {
            Kind::Forwarder => {
                use std::io::BufRead;
                let mut line = String::new();
                let out = child.stdout.take().unwrap();
                std::io::BufReader::new(out).read_line(&mut line).is_ok() && line.trim() == "ready"
            }
            _ => {
                turn::wait_ready(addr, Duration::from_secs(10))
                    && streams.is_none_or(|t| wait_listening(t.tls_port, Duration::from_secs(10)))
            }
        };
        let mut s = Server { addr, child };
        if !ready {
            s.stop();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = said.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "{} did not come up on {addr}{}{}",
                target.name,
                if tail.is_empty() { "" } else { ": " },
                tail.join(" / ")
            ));
        }
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime of the whole process, in seconds.
    pub fn cpu(&self) -> f64 {
        cpu_secs(self.pid())
    }

    /// Context switches of all its threads so far (voluntary ones are
    /// mostly sleeps until a socket is readable: wake-ups).
    pub fn switches(&self) -> u64 {
        switches(self.pid())
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` within
/// `wait`.
fn wait_listening(port: u16, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// SIGTERM to `child`, then SIGKILL after 3 s.
pub fn stop(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name in parentheses: state is field 3,
    // utime field 14, stime field 15.
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    (ut + st) / tick
}

pub fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
            n += status_value(&s, "voluntary_ctxt_switches:")
                + status_value(&s, "nonvoluntary_ctxt_switches:");
        }
    }
    n
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(0, |s| status_value(&s, "VmRSS:"))
}

/// The number after `key` in a /proc status file; 0 if absent.
fn status_value(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Find a program: an explicit path, else `name` beside this executable,
/// else on PATH.
pub fn locate(explicit: Option<&Path>, name: &str, beside: &Path) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.exists().then(|| p.to_path_buf());
    }
    let b = beside.join(name);
    if b.exists() {
        return Some(b);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.exists())
    })
}

/// The cpuidle driver, and how long a haltpoll guest polls before it halts
/// an idle vCPU (0: at once, so that every wake-up of it goes through the
/// hypervisor).
pub fn idle_driver() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let driver =
        read("/sys/devices/system/cpu/cpuidle/current_driver").unwrap_or_else(|| "unknown".into());
    match read("/sys/module/haltpoll/parameters/guest_halt_poll_ns") {
        Some(ns) if driver == "haltpoll" => format!("{driver}, guest_halt_poll_ns = {ns}"),
        _ => driver,
    }
}

/// The fields of /proc/stat's first line (user, nice, system, idle,
/// iowait, irq, softirq, steal, ...), in seconds.
pub fn stat_cpu_fields() -> Vec<f64> {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let l = s.lines().next()?.to_string();
            Some(
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse::<f64>().ok())
                    .map(|v| v / tick)
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// Busy CPU seconds of the whole machine so far (user + nice + system).
pub fn machine_busy() -> f64 {
    let f = stat_cpu_fields();
    if f.len() < 3 {
        return 0.0;
    }
    f[..3].iter().sum()
}

/// CPU seconds of the calling thread (the bench's client, during the
/// control-plane test).
pub fn thread_cpu() -> f64 {
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut r);
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    }
}

/// CPU seconds of this process and of its children that have exited (the
/// servers, once stopped and waited for).
pub fn own_cpu() -> f64 {
    let secs = |who| unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut r);
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    };
    secs(libc::RUSAGE_SELF) + secs(libc::RUSAGE_CHILDREN)
}

/// A self-signed P-256 certificate for localhost and 127.0.0.1 (an
/// end-entity one: webpki refuses a CA certificate as a server's), made by
/// the `openssl` CLI in `dir`: (NAME-cert.pem, NAME-key.pem).
pub fn self_signed(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-days", "2", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remove the directories `file` made.
    fn clean(files: &[&PathBuf]) {
        for f in files {
            let _ = std::fs::remove_dir_all(f.parent().unwrap());
        }
    }

    /// A file in a fresh directory of its own, with `mode`.
    fn file(name: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "ferroturn-bench-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_build_is_name_and_executable_path() {
        let exe = file("ok", 0o755);
        let b = parse_build(&format!("new={}", exe.display())).unwrap();
        assert_eq!(b.name, "new");
        assert_eq!(b.path, std::fs::canonicalize(&exe).unwrap());
        // Only the first `=` splits: a path may hold one.
        let odd = file("a=b", 0o700);
        let b = parse_build(&format!("prev.1={}", odd.display())).unwrap();
        assert_eq!(
            (b.name.as_str(), b.path.file_name().unwrap()),
            ("prev.1", "a=b".as_ref())
        );
        assert!(b.path.is_absolute());
        clean(&[&exe, &odd]);
    }

    #[test]
    fn bad_builds_are_refused_with_the_reason() {
        let exe = file("exe", 0o755);
        let plain = file("plain", 0o644);
        let dir = exe.parent().unwrap();
        let err = |arg: String| parse_build(&arg).unwrap_err();
        let e = err(exe.display().to_string());
        assert!(e.contains("expected NAME=PATH"), "{e}");
        let e = err(format!("={}", exe.display()));
        assert!(e.contains("empty NAME"), "{e}");
        let e = err("new=".to_string());
        assert!(e.contains("empty PATH"), "{e}");
        let e = err(format!("new={}", plain.display()));
        assert!(e.contains("is not executable"), "{e}");
        let e = err(format!("new={}", dir.display()));
        assert!(e.contains("is not a file"), "{e}");
        let e = err(format!("new={}/missing", dir.display()));
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
        let e = err(format!("coturn={}", exe.display()));
        assert!(e.contains("label of another column"), "{e}");
        let e = err(format!("a b={}", exe.display()));
        assert!(e.contains("may hold only"), "{e}");
        clean(&[&exe, &plain]);
    }

    #[test]
    fn the_veth_place_reaches_the_config() {
        let place = crate::netns::place();
        let mut text = ferroturn_config(3478, 0, "", true, None, &place);
        text.push_str(&fastpath_section(&place));
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["listen"][0]["address"].as_str(), Some("10.77.1.1:3478"));
        assert_eq!(v["relay"]["address"].as_str(), Some("10.77.2.1"));
        assert_eq!(v["peers"]["allow"][0].as_str(), Some("10.77.2.0/24"));
        assert_eq!(v["fastpath"]["mode"].as_str(), Some("on"));
        let ifs: Vec<&str> = v["fastpath"]["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.as_str())
            .collect();
        assert_eq!(ifs, ["to-client", "to-peer"]);
        // Loopback keeps its addresses.
        let lo = ferroturn_config(3478, 0, "", true, None, &Place::loopback());
        assert!(lo.contains("address = \"127.0.0.1:3478\"") && lo.contains("127.0.0.0/8"));
    }

    #[test]
    fn build_names_are_unique_columns() {
        let exe = file("uniq", 0o755);
        let b = |n: &str| parse_build(&format!("{n}={}", exe.display())).unwrap();
        assert_eq!(check_builds(&[b("prev"), b("new")]), Ok(()));
        let e = check_builds(&[b("new"), b("prev"), b("new")]).unwrap_err();
        assert!(e.contains("`new` is given twice"), "{e}");
        let e = check_builds(&[b("new"), b("new-normal")]).unwrap_err();
        assert!(
            e.contains("`new-normal`") && e.contains("udp_scheduling"),
            "{e}"
        );
        // Columns: the build's name, and its variants after it.
        let t = Target::new(Kind::FerroturnBatch, Some(&b("new")));
        assert_eq!((t.name.as_str(), t.base()), ("new-batch", "new"));
        let t = Target::new(Kind::Coturn, Some(&b("new")));
        assert_eq!((t.name.as_str(), t.build.is_none()), ("coturn", true));
        clean(&[&exe]);
    }
}
