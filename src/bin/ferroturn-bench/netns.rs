//! `--topology veth`: the relays between three network namespaces joined
//! by two veth pairs, as a kernel fast path (issue 19) sees traffic, and
//! the whole machine's CPU per relayed packet.
//!
//! ```text
//!  ftbench-c                  ftbench-s (the server)                 ftbench-p
//!  eth0 10.77.1.2 ---- to-client 10.77.1.1   to-peer 10.77.2.1 ---- eth0 10.77.2.2
//!  clients 10.78.0.0/16       forwarder relays 10.77.3.0/24          echo peer
//! ```
//!
//! The servers run in the server namespace (`ip netns exec`); the bench's
//! generator runs on a thread that entered the client namespace (setns(2):
//! sockets made after it live there), its echo peer on a socket made in the
//! peer namespace. Every client address of 10.78.0.0/16 is local in the
//! client namespace (a `local` route on lo), so one generator socket
//! speaks for many clients, as on loopback. The server namespace forwards
//! IP: the no-relay baseline sends straight to the echo peer through it.
//!
//! On veth an XDP program runs in the softirq of the thread that sent the
//! packet, so the server's own process time misses it: CPU is the busy time
//! of the whole machine from /proc/stat (user, nice, system, irq, softirq)
//! during a trial, less that of the same offered load with no relay, per
//! relayed packet. On a machine shared with other work, the CPU time of
//! every other process (not this bench, its servers or a kernel thread)
//! is taken out of both: a busy host otherwise leaves no idle time for the
//! relay's cost to show in.
//!
//! The namespaces are removed when the run ends, on a panic (the guard's
//! drop), on SIGINT, SIGTERM and SIGHUP (a thread that waits for them),
//! and, after a SIGKILL, when the next run starts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::load::{self, Echo, Flow};
use crate::net::{self, Out, Recv};
use crate::servers::{self, Kind, Paths, Place, Server, Target};
use crate::stats::median;
use crate::{FLOWS, Plan, Results, fixed_flows, gen_socket, push, server_flows, throughput};

pub const CLIENT: &str = "ftbench-c";
pub const SERVER: &str = "ftbench-s";
pub const PEER: &str = "ftbench-p";
const ALL: [&str; 3] = [CLIENT, SERVER, PEER];

const SERVER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
const SERVER_PEER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
/// The server namespace's two veths: `[fastpath] interfaces`.
pub const SERVER_INTERFACES: &[&str] = &["to-client", "to-peer"];

/// The place of the servers: listener on the client side, relay addresses
/// on the peer side.
pub fn place() -> Place {
    Place {
        listen: SERVER_CLIENT_SIDE,
        relay: SERVER_PEER_SIDE,
        peers: "10.77.2.0/24",
        forwarder_relays: Ipv4Addr::new(10, 77, 3, 0),
        netns: Some(SERVER),
        interfaces: SERVER_INTERFACES,
    }
}

/// Client addresses: 10.78.0.1 up to 10.78.255.254.
fn sources() -> net::Sources {
    net::Sources::range(Ipv4Addr::new(10, 78, 0, 1), Ipv4Addr::new(10, 78, 255, 255))
}

/// Run `cmd` (split on spaces) in namespace `ns`, or here with `None`.
fn sh(ns: Option<&str>, cmd: &str) -> Result<(), String> {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let mut c = Command::new("ip");
    match ns {
        Some(ns) => c.args(["netns", "exec", ns]).args(&args),
        None if args[0] == "ip" => c.args(&args[1..]),
        None => return Err(format!("{cmd}: not an ip command")),
    };
    let out = c
        .output()
        .map_err(|e| format!("{cmd}: cannot run: {e} (iproute2 is needed)"))?;
    if !out.status.success() {
        return Err(format!(
            "{} {cmd}: {}: {}",
            ns.unwrap_or("(host)"),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// Kill every process in `ns` (servers this bench started) and delete it;
/// its veths go with it. Bounded: three rounds of kills, 5 s of waiting.
fn remove(ns: &str) {
    if !exists(ns) {
        return;
    }
    for _ in 0..3 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p > 1 && p != std::process::id() as i32)
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    let t = Instant::now();
    while exists(ns) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove_all() {
    for ns in ALL {
        remove(ns);
    }
}

/// The three namespaces; removed on drop.
pub struct Topology {
    _private: (),
}

impl Topology {
    /// Build the topology, after removing the leftovers of a killed run.
    pub fn create() -> Result<Topology, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("--topology veth needs root (network namespaces)".into());
        }
        remove_all();
        // The guard exists before the first namespace: a failure halfway
        // still removes what was made.
        let t = Topology { _private: () };
        for ns in ALL {
            sh(None, &format!("ip netns add {ns}"))?;
            sh(Some(ns), "ip link set lo up")?;
        }
        for (side, far, ns) in [("to-client", "eth0", CLIENT), ("to-peer", "eth0", PEER)] {
            sh(
                None,
                &format!("ip link add {side} netns {SERVER} type veth peer name {far} netns {ns}"),
            )?;
        }
        let s = Some(SERVER);
        sh(
            s,
            &format!("ip addr add {SERVER_CLIENT_SIDE}/24 dev to-client"),
        )?;
        sh(s, &format!("ip addr add {SERVER_PEER_SIDE}/24 dev to-peer"))?;
        sh(s, "ip link set to-client up")?;
        sh(s, "ip link set to-peer up")?;
        // Back to the clients; the forwarder's relayed addresses are local.
        sh(s, &format!("ip route add 10.78.0.0/16 via {CLIENT_IP}"))?;
        sh(s, "ip route add local 10.77.3.0/24 dev lo")?;
        for (ns, ip, gw) in [
            (CLIENT, CLIENT_IP, SERVER_CLIENT_SIDE),
            (PEER, PEER_IP, SERVER_PEER_SIDE),
        ] {
            sh(Some(ns), &format!("ip addr add {ip}/24 dev eth0"))?;
            sh(Some(ns), "ip link set eth0 up")?;
            sh(Some(ns), &format!("ip route add default via {gw}"))?;
        }
        sh(Some(CLIENT), "ip route add local 10.78.0.0/16 dev lo")?;
        in_ns(SERVER, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|e| format!("ip_forward in {SERVER}: {e}"))
        })??;
        // A frame that an XDP program redirects into a veth is taken only
        // if the veth's other end polls with NAPI: GRO on (or an XDP
        // program there). And the outer ends compute their UDP checksums
        // in full (transmit checksum offload off): a program that updates
        // a checksum for what it rewrote needs a whole one to start from.
        // On for the outer ends, for every server alike.
        for ns in [CLIENT, PEER] {
            for (what, cmd, on) in [
                ("GRO", ETHTOOL_SGRO, true),
                ("tx checksum offload", ETHTOOL_STXCSUM, false),
            ] {
                if let Err(e) = in_ns(ns, || set_feature("eth0", cmd, on))? {
                    eprintln!("warning: {what} on {ns} eth0: {e} (a fast path may drop)");
                }
            }
        }
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        remove_all();
    }
}

/// Move the calling thread into namespace `ns`: sockets it makes from now
/// on live there.
fn enter(ns: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `f` on a thread of its own inside namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns).map_err(|e| format!("setns {ns}: {e}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| format!("a thread in {ns} panicked"))?
    })
}

const ETHTOOL_SGRO: u32 = 0x2c;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// An ethtool feature switch (`ETHTOOL_SGRO`, `ETHTOOL_STXCSUM`) of `dev`
/// in the calling thread's namespace, as `ethtool -K` sets it.
fn set_feature(dev: &str, cmd: u32, on: bool) -> std::io::Result<()> {
    #[repr(C)]
    struct Value {
        cmd: u32,
        data: u32,
    }
    /// struct ifreq with ifr_data (40 bytes on 64-bit Linux).
    #[repr(C)]
    struct Ifreq {
        name: [u8; 16],
        data: *mut Value,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut v = Value {
        cmd,
        data: u32::from(on),
    };
    let mut r = Ifreq {
        name: [0; 16],
        data: &mut v,
        _pad: [0; 16],
    };
    let n = dev.len().min(15);
    r.name[..n].copy_from_slice(&dev.as_bytes()[..n]);
    let s = UdpSocket::bind("0.0.0.0:0")?;
    if unsafe { libc::ioctl(s.as_raw_fd(), SIOCETHTOOL as _, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP remove the namespaces, then end the bench
/// (its servers die with it). Call before any other thread starts: the
/// signals are blocked in the caller and so in every thread it starts,
/// and one thread waits for them. (Child processes start with an empty
/// signal mask.)
fn clean_up_on_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let set = SigSet(set);
        std::thread::spawn(move || {
            let set = set;
            let mut sig = 0;
            if libc::sigwait(&set.0, &mut sig) == 0 {
                eprintln!("signal {sig}: removing the namespaces");
                remove_all();
                std::process::exit(128 + sig);
            }
        });
    }
}

struct SigSet(libc::sigset_t);
unsafe impl Send for SigSet {}

/// Busy CPU seconds of the whole machine so far: user, nice, system, irq
/// and softirq from /proc/stat (guest time is inside user already).
fn machine_busy() -> f64 {
    let f = servers::stat_cpu_fields();
    [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0.0))
        .sum()
}

/// CPU seconds so far of every process that is neither this bench nor one
/// of its descendants (the servers) nor a kernel thread (ksoftirqd and the
/// like do packet work): utime + stime + cutime + cstime, so that a
/// short-lived process reaped meanwhile still counts through its parent.
/// On a host shared with other work (builds, other benchmarks), this is
/// what the whole machine's busy time must shed to be this run's.
fn foreign_cpu() -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let me = std::process::id();
    // pid → (ppid, cpu ticks, kernel thread)
    let mut procs: BTreeMap<u32, (u32, f64, bool)> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After "(comm) ": state, ppid, pgrp, session, tty, tpgid, flags,
        // minflt, cminflt, majflt, cmajflt, utime, stime, cutime, cstime.
        let rest = &st[st.rfind(')').map_or(0, |i| i + 2)..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        const PF_KTHREAD: u64 = 0x0020_0000;
        let flags = f.get(6).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        procs.insert(
            pid,
            (
                num(1) as u32,
                num(11) + num(12) + num(13) + num(14),
                flags & PF_KTHREAD != 0,
            ),
        );
    }
    let ours = |mut pid: u32| {
        for _ in 0..64 {
            if pid == me {
                return true;
            }
            match procs.get(&pid) {
                Some(&(ppid, _, _)) if ppid > 0 => pid = ppid,
                _ => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|&(&pid, &(_, _, kthread))| !kthread && !ours(pid))
        .map(|(_, &(_, t, _))| t)
        .sum::<f64>()
        / tick
}

/// This run's busy CPU seconds so far: the whole machine's less every
/// other process's (see [`foreign_cpu`]); and the other processes' alone.
fn run_busy() -> (f64, f64) {
    let other = foreign_cpu();
    (machine_busy() - other, other)
}

/// CPU trial metrics, per server: whole machine less no relay, and the
/// server's own process, ns per relayed packet; loss during it.
const CPU_NET: &str = "machine ns/pkt";
const CPU_OWN: &str = "process ns/pkt";
const CPU_ALL: &str = "machine all ns/pkt";
const CPU_LOSS: &str = "cpu loss %";
/// The CPU trial of each server alternates with the no-relay one this
/// many times, each turn a quarter of the plan's CPU time.
const CPU_SLICES: u32 = 4;
/// The no-relay baseline: the whole machine's busy share, and ns per
/// forwarded packet; the machine's busy share idle before each repetition.
const BASE_BUSY: &str = "busy %";
const BASE_PER: &str = "base ns/pkt";
const IDLE_BUSY: &str = "idle busy %";
const OTHERS_BUSY: &str = "others busy %";
/// Throughput configurations (of the loopback table) and whether each
/// search stopped at the generator: the trial that failed fell short of
/// its rate without losing packets.
const TPUT: [(&str, usize, usize); 2] = [crate::TPUT[1], crate::TPUT[0]];
const LIMITED: [&str; 2] = ["gen-limited 100x200", "gen-limited 1x200"];
/// The label of the no-relay column.
const NO_RELAY: &str = "no relay";

/// Fixed-rate trials: this run's busy seconds (see [`run_busy`]), wall
/// seconds, packets sent and received by the generator, and the server
/// process's CPU seconds.
#[derive(Default)]
struct Sample {
    busy: f64,
    wall: f64,
    sent: u64,
    received: u64,
    own: f64,
}

impl Sample {
    fn add(&mut self, o: Sample) {
        self.busy += o.busy;
        self.wall += o.wall;
        self.sent += o.sent;
        self.received += o.received;
        self.own += o.own;
    }
    /// Relayed (or forwarded) packets: client-sent + received back.
    fn packets(&self) -> f64 {
        (self.sent + self.received).max(1) as f64
    }
    fn loss(&self) -> f64 {
        1.0 - self.received.min(self.sent) as f64 / self.sent.max(1) as f64
    }
}

fn cpu_trial(
    sock: &UdpSocket,
    flows: &[Flow],
    rate: f64,
    dur: Duration,
    trial_id: &mut u32,
    server: Option<&Server>,
) -> Sample {
    *trial_id += 1;
    let own0 = server.map_or(0.0, |s| s.cpu());
    let (b0, t0) = (run_busy().0, Instant::now());
    let t = load::trial(sock, flows, 200, rate, dur, false, *trial_id);
    let (busy, wall) = (run_busy().0 - b0, t0.elapsed().as_secs_f64());
    Sample {
        busy,
        wall,
        sent: t.sent,
        received: t.received,
        own: server.map_or(0.0, |s| s.cpu()) - own0,
    }
}

/// What the generator can push one way through the server namespace's IP
/// forwarding, unpaced: sendmmsg of 200 B as fast as it goes from
/// `threads` threads, each with its own socket, to a sink in the peer
/// namespace that counts what arrives. (pkt/s sent, pkt/s received.)
fn blast(threads: usize, dur: Duration) -> Result<(f64, f64), String> {
    let sink = in_ns(PEER, || {
        net::udp(
            SocketAddrV4::new(PEER_IP, 0),
            load::GEN_BUF,
            Some(Duration::from_millis(50)),
        )
    })?
    .map_err(|e| format!("sink: {e}"))?;
    let to = match sink.local_addr().map_err(|e| e.to_string())? {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let stop = AtomicBool::new(false);
    let got = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut r = Recv::new(net::BATCH);
            while !stop.load(Ordering::Relaxed) && start.elapsed() < dur * 3 {
                let n = r.recv(sink.as_raw_fd(), 0, net::BATCH, 0, libc::MSG_WAITFORONE);
                got.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        for _ in 0..threads {
            s.spawn(|| {
                let sock = gen_socket();
                let buf = [0x5au8; 200];
                let outs: Vec<Out> = (0..net::BATCH)
                    .map(|_| Out {
                        src: None,
                        dst: to,
                        data: &buf,
                    })
                    .collect();
                while start.elapsed() < dur {
                    sent.fetch_add(
                        net::send_batch(sock.as_raw_fd(), &outs) as u64,
                        Ordering::Relaxed,
                    );
                }
            });
        }
        // Senders end at `dur`; what is still in flight lands within 200 ms.
        while start.elapsed() < dur + Duration::from_millis(200) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let secs = dur.as_secs_f64();
    Ok((
        sent.load(Ordering::Relaxed) as f64 / secs,
        got.load(Ordering::Relaxed) as f64 / secs,
    ))
}

/// The whole veth run. `rate`: client-sent pkt/s of the CPU trials.
pub struct Veth<'a> {
    pub targets: &'a [Target],
    pub paths: &'a Paths,
    pub plan: &'a Plan,
    pub rate: f64,
    /// The label of userspace ferroturn (the first build).
    pub reference: &'a str,
}

/// What a run found, for the report.
#[derive(Default)]
struct Found {
    res: Results,
    /// Servers that could not be measured, and why.
    unavailable: BTreeMap<String, String>,
    /// The generator alone (blast): (threads, sent/s, received/s).
    blasts: Vec<(usize, f64, f64)>,
}

/// Build the topology, measure, remove the topology: the report.
pub fn run(v: &Veth) -> Result<String, String> {
    clean_up_on_signals();
    let started = Instant::now();
    let topo = Topology::create()?;
    let echo = in_ns(PEER, || Echo::start_on(SocketAddrV4::new(PEER_IP, 0)))?
        .map_err(|e| format!("echo peer: {e}"))?;
    let found = std::thread::scope(|s| {
        s.spawn(|| {
            enter(CLIENT).map_err(|e| format!("setns {CLIENT}: {e}"))?;
            Ok::<_, String>(measure(v, &echo))
        })
        .join()
        .map_err(|_| "the measurement panicked".to_string())?
    });
    drop(echo);
    drop(topo);
    let found = found?;
    Ok(report(v, &found, started.elapsed()))
}

fn measure(v: &Veth, echo: &Echo) -> Found {
    let plan = v.plan;
    let mut found = Found::default();
    let res = &mut found.res;
    let mut src = sources();
    let mut trial_id = 0x1000_0000u32;
    let secs = if plan.reps > 1 { 1.0 } else { 0.5 };
    for threads in [1, 2] {
        match blast(threads, Duration::from_secs_f64(secs)) {
            Ok((sent, got)) => {
                eprintln!(
                    "generator alone, {threads} thread(s) unpaced: {:.0}k pkt/s sent, {:.0}k received",
                    sent / 1e3,
                    got / 1e3
                );
                found.blasts.push((threads, sent, got));
            }
            Err(e) => eprintln!("generator alone: {e}"),
        }
    }
    let sock = gen_socket();
    let direct = fixed_flows(&mut src, echo.addr);
    for rep in 0..plan.reps {
        let (b0, o0) = run_busy();
        std::thread::sleep(Duration::from_secs(1));
        let (b1, o1) = run_busy();
        push(res, NO_RELAY, IDLE_BUSY, (b1 - b0) * 100.0);
        push(res, NO_RELAY, OTHERS_BUSY, (o1 - o0) * 100.0);
        eprintln!("[rep {}] no relay (IP forwarding in {SERVER})", rep + 1);
        let lim = throughput(
            plan,
            NO_RELAY,
            &sock,
            &direct,
            50_000.0,
            &TPUT,
            &mut trial_id,
            res,
        );
        for (k, l) in LIMITED.iter().zip(lim) {
            push(res, NO_RELAY, k, f64::from(u8::from(l)));
        }
        for t in v.targets {
            eprintln!("[rep {}] {}", rep + 1, t.name);
            if let Err(e) = one(v, t, echo, &sock, &direct, &mut src, &mut trial_id, res) {
                eprintln!("  {}: {e}", t.name);
                found.unavailable.insert(t.name.clone(), e);
            }
        }
    }
    found
}

/// One server in one repetition.
#[allow(clippy::too_many_arguments)]
fn one(
    v: &Veth,
    t: &Target,
    echo: &Echo,
    sock: &UdpSocket,
    direct: &[Flow],
    src: &mut net::Sources,
    trial_id: &mut u32,
    res: &mut Results,
) -> Result<(), String> {
    let plan = v.plan;
    let server = Server::start(t, v.paths, echo.addr)?;
    eprintln!("  pid {} on {}", server.pid(), server.addr);
    let flows = server_flows(t.kind, sock, &server, echo.addr, src, trial_id)?;
    let lim = throughput(plan, &t.name, sock, &flows, 30_000.0, &TPUT, trial_id, res);
    for (k, l) in LIMITED.iter().zip(lim) {
        push(res, &t.name, k, f64::from(u8::from(l)));
    }
    // The same offered load with no relay, in turns with the relay's, so
    // that both meet the same moments of a host whose other work comes and
    // goes: the machine's cost of generating, forwarding and echoing it.
    let (mut base, mut s) = (Sample::default(), Sample::default());
    let slice = plan.cpu / CPU_SLICES;
    for _ in 0..CPU_SLICES {
        base.add(cpu_trial(sock, direct, v.rate, slice, trial_id, None));
        s.add(cpu_trial(
            sock,
            &flows,
            v.rate,
            slice,
            trial_id,
            Some(&server),
        ));
    }
    let extra = s.busy - base.busy / base.wall * s.wall;
    let net_ns = extra / s.packets() * 1e9;
    let own_ns = s.own / s.packets() * 1e9;
    eprintln!(
        "  cpu at {:.0}k/s: machine {:.0} % busy, no relay {:.0} %: {net_ns:.0} ns per relayed packet (server process {own_ns:.0} ns), loss {:.3} %",
        v.rate / 1e3,
        s.busy / s.wall * 100.0,
        base.busy / base.wall * 100.0,
        s.loss() * 100.0
    );
    push(res, &t.name, CPU_NET, net_ns);
    push(res, &t.name, CPU_OWN, own_ns);
    push(res, &t.name, CPU_ALL, s.busy / s.packets() * 1e9);
    push(res, &t.name, CPU_LOSS, s.loss() * 100.0);
    push(res, NO_RELAY, BASE_BUSY, base.busy / base.wall * 100.0);
    push(res, NO_RELAY, BASE_PER, base.busy / base.packets() * 1e9);
    Ok(())
}

fn report(v: &Veth, f: &Found, total: Duration) -> String {
    let m = |t: &str, k: &'static str| {
        f.res
            .get(&(t.to_string(), k))
            .map_or(f64::NAN, |x| median(x))
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## ferroturn-bench, veth topology: medians of {} repetition(s), {cores} cores, {:.0} s\n",
        v.plan.reps,
        total.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "Client, server and peer namespaces joined by two veth pairs; the servers run in the server namespace. In a 1 s window with no load before each repetition (median), other processes used {:.0} % of a core and the rest of the machine (kernel threads, this bench) {:.0} %: on a machine other processes keep busy every figure is noisy, compare the ratios of one run.\n",
        m(NO_RELAY, OTHERS_BUSY),
        m(NO_RELAY, IDLE_BUSY)
    );
    let _ = writeln!(
        s,
        "Throughput: client-sent ChannelData/s at ≤ 0.1 % round-trip loss (the relay forwards twice that), \"generator limit\" where the search stopped because the generator fell short of the rate it was asked for without loss. CPU: at {:.0}k client-sent pkt/s over {FLOWS} allocations (200 B), whole-machine busy time (/proc/stat: user, nice, system, irq, softirq) less the CPU time of every other process (not this bench, its servers or a kernel thread), less the same for the same load sent straight to the echo peer through the server namespace's IP forwarding, per relayed packet (both directions); beside it, the same whole-machine time with nothing taken off (the no-relay row: per forwarded packet), and the server process's own utime+stime per relayed packet (what an XDP program's softirq time escapes). The no-relay load includes the kernel's IP forwarding of every packet, which a relay replaces by its own work: a relay's figure is its cost beyond forwarding, and can be below its process's own time (or, for a path cheaper than forwarding, below zero). Ratios are over `{}` (userspace).\n",
        v.rate / 1e3,
        v.reference
    );
    let tput = |t: &str, i: usize| {
        let x = m(t, TPUT[i].0);
        if !x.is_finite() {
            return "–".to_string();
        }
        let lim = m(t, LIMITED[i]) >= 0.5;
        format!(
            "{:.1} k{}",
            x / 1e3,
            if lim { " (generator limit)" } else { "" }
        )
    };
    let num = |x: f64| {
        if x.is_finite() {
            format!("{x:.0}")
        } else {
            "–".into()
        }
    };
    let ratio = |a: f64, b: f64| {
        if a.is_finite() && b.is_finite() && b != 0.0 {
            format!("{:.2}×", a / b)
        } else {
            "–".into()
        }
    };
    let r = v.reference;
    let _ = writeln!(
        s,
        "| server | throughput 100 allocations × 200 B | 1 allocation × 200 B | CPU ns per relayed packet, whole machine less no relay | whole machine, all of it | server process | loss in the CPU trial | throughput / {r} | CPU / {r} |\n|---|---|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        s,
        "| no relay (IP forwarding) | {} | {} | – | {} | – | – | {} | – |",
        tput(NO_RELAY, 0),
        tput(NO_RELAY, 1),
        num(m(NO_RELAY, BASE_PER)),
        ratio(m(NO_RELAY, TPUT[0].0), m(r, TPUT[0].0))
    );
    for t in v.targets {
        let n = t.name.as_str();
        let base = if t.kind == Kind::FerroturnFastpath {
            t.base()
        } else {
            r
        };
        let measured = f.res.keys().any(|(k, _)| k == n);
        if let (false, Some(why)) = (measured, f.unavailable.get(n)) {
            let why = why.replace('|', "/").replace('\n', " ");
            let _ = writeln!(s, "| {n} | unavailable: {why} | | | | | | | |");
            continue;
        }
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} | {} | {:.3} % | {} | {} |",
            tput(n, 0),
            tput(n, 1),
            num(m(n, CPU_NET)),
            num(m(n, CPU_ALL)),
            num(m(n, CPU_OWN)),
            m(n, CPU_LOSS),
            ratio(m(n, TPUT[0].0), m(base, TPUT[0].0)),
            ratio(m(n, CPU_NET), m(base, CPU_NET)),
        );
    }
    if !f.blasts.is_empty() {
        let _ = writeln!(
            s,
            "\nThe generator alone, unpaced sendmmsg of 200 B one way through the server namespace's IP forwarding to a counting sink in the peer namespace:"
        );
        for (threads, sent, got) in &f.blasts {
            let _ = writeln!(
                s,
                "- {threads} thread(s): {:.0} k pkt/s sent, {:.0} k pkt/s received",
                sent / 1e3,
                got / 1e3
            );
        }
    }
    let _ = writeln!(s, "\nPer repetition:\n");
    let mut names = vec![NO_RELAY];
    names.extend(v.targets.iter().map(|t| t.name.as_str()));
    for n in names {
        let mut line = format!("- {n}:");
        for ((t, k), vals) in &f.res {
            if t == n {
                let vs: Vec<String> = vals.iter().map(|x| format!("{x:.1}")).collect();
                let _ = write!(line, " {k} [{}];", vs.join(", "));
            }
        }
        let _ = writeln!(s, "{line}");
    }
    s
}
