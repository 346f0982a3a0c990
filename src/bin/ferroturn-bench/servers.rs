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
    Coturn,
    Ferroturn,
    /// ferroturn with `[server] udp_threads = "dedicated"`.
    FerroturnDedicated,
    /// ferroturn with `[server] udp_scheduling = "batch"`.
    FerroturnBatch,
    /// ferroturn with `[server] udp_scheduling = "normal"`.
    FerroturnNormal,
}

impl Kind {
    /// Every kind, in the order a run takes them.
    pub const ALL: [Kind; 6] = [
        Kind::Forwarder,
        Kind::Coturn,
        Kind::Ferroturn,
        Kind::FerroturnNormal,
        Kind::FerroturnBatch,
        Kind::FerroturnDedicated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Forwarder => "forwarder",
            Kind::Coturn => "coturn",
            Kind::Ferroturn => "ferroturn",
            Kind::FerroturnDedicated => "ferroturn-dedicated",
            Kind::FerroturnBatch => "ferroturn-batch",
            Kind::FerroturnNormal => "ferroturn-normal",
        }
    }
    pub fn is_turn(self) -> bool {
        self != Kind::Forwarder
    }
    pub fn is_ferroturn(self) -> bool {
        !matches!(self, Kind::Forwarder | Kind::Coturn)
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

pub struct Paths {
    pub ferroturn: PathBuf,
    pub turnserver: PathBuf,
    pub me: PathBuf,
    pub dir: PathBuf,
    /// ferroturn's `[server] workers`.
    pub ferroturn_workers: usize,
}

pub struct Server {
    pub addr: SocketAddrV4,
    child: Child,
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

/// `keys`: more lines for `[server]`.
fn ferroturn_config(port: u16, workers: usize, keys: &str, limits: bool) -> String {
    let mut s = format!(
        r#"realm = "{realm}"
[server]
workers = {workers}
{keys}[[listen]]
address = "127.0.0.1:{port}"
transports = ["udp"]
[relay]
address = "127.0.0.1"
ports = "{lo}-{hi}"
[auth]
users = {{ {user} = "{pass}" }}
# Two REST secrets, as during a rotation: a REST name costs one HMAC each
# (the msgcost test measures it).
secrets = ["bench-rotation-old-secret", "bench-rotation-new-secret"]
[peers]
allow = ["127.0.0.0/8"]
[log]
level = "info"
"#,
        realm = turn::REALM,
        user = turn::USER,
        pass = turn::PASS,
        lo = FERROTURN_PORTS.0,
        hi = FERROTURN_PORTS.1,
    );
    if limits {
        // Like coturn's defaults: no per-user quota, no rate limits.
        s.push_str(
            "[limits]\nallocations_per_user = 1000000\nbandwidth = 0\npacket_rate = 0\nunauthenticated_rate = 0\n",
        );
    }
    s
}

impl Server {
    pub fn start(kind: Kind, paths: &Paths, echo: SocketAddrV4) -> Result<Server, String> {
        let port = net::free_port();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut cmd = match kind {
            Kind::Forwarder => {
                let mut c = Command::new(&paths.me);
                c.args([
                    "--forwarder",
                    &addr.to_string(),
                    &echo.to_string(),
                    &FORWARDER_CHANNELS.to_string(),
                ]);
                c.stdout(Stdio::piped());
                c
            }
            Kind::Coturn => {
                let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
                let mut c = Command::new(&paths.turnserver);
                c.args([
                    "-n",
                    "--listening-ip",
                    "127.0.0.1",
                    "--relay-ip",
                    "127.0.0.1",
                ]);
                c.args(["--listening-port", &port.to_string()]);
                c.args(["--min-port", &COTURN_PORTS.0.to_string()]);
                c.args(["--max-port", &COTURN_PORTS.1.to_string()]);
                c.args(["--relay-threads", &threads.to_string()]);
                c.args(["--lt-cred-mech", "--realm", turn::REALM]);
                c.args(["--user", &format!("{}:{}", turn::USER, turn::PASS)]);
                c.args(["--allow-loopback-peers", "--no-cli", "--no-rfc5780"]);
                c.args(["--no-tcp", "--no-tls", "--no-dtls", "--no-tcp-relay"]);
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
                let file = paths.dir.join("ferroturn.toml");
                // Newer builds take [limits]; older ones refuse the section.
                let mut chosen = None;
                for limits in [true, false] {
                    std::fs::write(
                        &file,
                        ferroturn_config(port, paths.ferroturn_workers, kind.server_keys(), limits),
                    )
                    .map_err(|e| e.to_string())?;
                    let ok = Command::new(&paths.ferroturn)
                        .args(["check", "--config"])
                        .arg(&file)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false);
                    if ok {
                        chosen = Some(limits);
                        break;
                    }
                }
                if chosen.is_none() {
                    return Err(format!("ferroturn check refused {}", file.display()));
                }
                let mut c = Command::new(&paths.ferroturn);
                c.arg("--config").arg(&file);
                c.stdout(Stdio::null());
                c
            }
        };
        cmd.stdin(Stdio::null()).stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", kind.name()))?;
        let ready = match kind {
            Kind::Forwarder => {
                use std::io::BufRead;
                let mut line = String::new();
                let out = child.stdout.take().unwrap();
                std::io::BufReader::new(out).read_line(&mut line).is_ok() && line.trim() == "ready"
            }
            _ => turn::wait_ready(addr, Duration::from_secs(10)),
        };
        let mut s = Server { addr, child };
        if !ready {
            s.stop();
            return Err(format!("{} did not come up on {addr}", kind.name()));
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
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Busy CPU seconds of the whole machine so far (user + nice + system).
pub fn machine_busy() -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let l = s.lines().next()?.to_string();
            let f: Vec<f64> = l
                .split_whitespace()
                .skip(1)
                .take(3)
                .filter_map(|v| v.parse().ok())
                .collect();
            (f.len() == 3).then(|| f.iter().sum::<f64>() / tick)
        })
        .unwrap_or(0.0)
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
