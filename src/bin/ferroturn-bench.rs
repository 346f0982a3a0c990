//! ferroturn-bench: ferroturn side by side with coturn's turnserver and a
//! zero-protocol UDP forwarder, interleaved A B C A B C, medians and ratios.
//!
//! ```sh
//! cargo build --release --bin ferroturn --bin ferroturn-bench
//! cargo run --release --bin ferroturn-bench            # full run, ≤ 15 min on 2 cores
//! cargo run --release --bin ferroturn-bench -- --quick # smoke test, ~1 min
//! # two builds side by side, one column each (README: Comparing two builds)
//! cargo run --release --bin ferroturn-bench -- --ferroturn prev=PATH --ferroturn new=PATH
//! # in network namespaces joined by veths, with the kernel fast path (root)
//! cargo run --release --bin ferroturn-bench -- --topology veth
//! ```
//!
//! Everything runs on 127.0.0.0/8, or with `--topology veth` in network
//! namespaces of its own (netns.rs). Every loop is bounded in count and time.

#[path = "ferroturn-bench/answerer.rs"]
mod answerer;
#[path = "ferroturn-bench/dtls.rs"]
mod dtls;
#[path = "ferroturn-bench/forwarder.rs"]
mod forwarder;
#[path = "ferroturn-bench/load.rs"]
mod load;
#[path = "ferroturn-bench/msgcost.rs"]
mod msgcost;
#[path = "ferroturn-bench/net.rs"]
mod net;
#[path = "ferroturn-bench/netns.rs"]
mod netns;
#[path = "ferroturn-bench/propagation.rs"]
mod propagation;
#[path = "ferroturn-bench/servers.rs"]
mod servers;
#[path = "ferroturn-bench/stats.rs"]
mod stats;
#[path = "ferroturn-bench/tcp_relay.rs"]
mod tcp_relay;
#[path = "ferroturn-bench/turn.rs"]
mod turn;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

use load::{Echo, Flow};
use servers::{Build, Kind, Paths, Place, Server, Target};
use stats::{median, percentile};

#[derive(Parser)]
#[command(about = "ferroturn vs coturn vs a zero-protocol forwarder, on loopback")]
struct Opts {
    /// Smoke test: 1 repetition, short trials, 1,000 held allocations.
    #[arg(long)]
    quick: bool,
    /// Repetitions of A B C (default 3; 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Which to run, comma-separated: forwarder,coturn,ferroturn (its
    /// defaults) and its variants ferroturn-normal and ferroturn-batch
    /// (`udp_scheduling = "normal"`, `"batch"`) and ferroturn-dedicated
    /// (`udp_threads = "dedicated"`), ferroturn-cluster (with
    /// `[cluster]`, on a redis-server the bench starts) and
    /// ferroturn-fastpath (`[fastpath] mode = "on"`). Default:
    /// forwarder,coturn,ferroturn,ferroturn-normal; with `--topology
    /// veth`: forwarder,coturn,ferroturn,ferroturn-fastpath.
    #[arg(long)]
    servers: Option<String>,
    /// Where the servers run: `loopback` (127.0.0.0/8, the tests of
    /// --tests), or `veth`: client, server and peer network namespaces
    /// joined by veth pairs (root), measuring throughput and the whole
    /// machine's CPU per relayed packet against plain IP forwarding
    /// (--tests does not apply).
    #[arg(long, value_enum, default_value_t = Topology::Loopback)]
    topology: Topology,
    /// `--topology veth`: client-sent pkt/s of the CPU trials.
    #[arg(long, default_value_t = 20_000.0)]
    veth_rate: f64,
    /// Which tests, comma-separated: ceiling,mem,ctl,tput,lat,cpu,msgcost
    /// (msgcost: server CPU per hostile message, ferroturn only, once),
    /// tcprelay (RFC 6062 relayed MB/s over TCP and TLS, coturn and
    /// ferroturn),
    /// and propagation (not by default: how long a change takes to reach
    /// a second cluster node, with a redis-server and two ferroturn nodes
    /// of its own; 20 repetitions, 5 with --quick, or --reps), and dtls
    /// (not by default: DTLS handshakes/s and relayed round trips/s,
    /// coturn beside each build; src/bin/ferroturn-bench/dtls.rs).
    #[arg(long, default_value = "ceiling,mem,ctl,tput,lat,cpu,msgcost,tcprelay")]
    tests: String,
    /// Allocations held for the memory test (default 10,000; 1,000 with --quick).
    #[arg(long)]
    allocations: Option<usize>,
    /// A ferroturn build to measure, as NAME=PATH (NAME labels its
    /// column, e.g. `prev` or `new`); repeat it to compare builds side by
    /// side in one run. Default: `ferroturn` beside this binary, i.e.
    /// target/release/ferroturn.
    #[arg(long, value_name = "NAME=PATH", value_parser = servers::parse_build)]
    ferroturn: Vec<Build>,
    /// coturn's turnserver (default: on PATH; `apt-get install coturn`).
    #[arg(long)]
    turnserver: Option<PathBuf>,
    /// Busy threads that compete for the CPUs during the whole run: a
    /// contended host (e.g. `--hogs 2 --tests lat`). Default none.
    #[arg(long, default_value_t = 0)]
    hogs: usize,
    /// ferroturn's `[server] workers` (default 0: one per core).
    #[arg(long, default_value_t = 0)]
    ferroturn_workers: usize,
    /// Internal: run the forwarder (LISTEN PEER CHANNELS [RELAYS]).
    #[arg(long, num_args = 3..=4, hide = true)]
    forwarder: Option<Vec<String>>,
    /// Internal: run the zero-work answerer (LISTEN THREADS [poll|spin]).
    #[arg(long, num_args = 2..=3, hide = true)]
    answerer: Option<Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Topology {
    Loopback,
    Veth,
}

/// Durations and counts of one run mode.
struct Plan {
    reps: usize,
    trial: Duration,
    steps: usize,
    /// One latency trial's length, and trials per repetition: a host
    /// stall of a few ms moves one trial's p99, so the median is taken
    /// over every trial of every repetition.
    lat: Duration,
    lat_trials: usize,
    cpu: Duration,
    ctl: Duration,
    hold: usize,
}

/// Per (target, metric): one value per repetition.
type Results = BTreeMap<(String, &'static str), Vec<f64>>;

const TPUT: [(&str, usize, usize); 4] = [
    ("tput 1x200", 1, 200),
    ("tput 100x200", 100, 200),
    ("tput 1x1200", 1, 1200),
    ("tput 100x1200", 100, 1200),
];
const FLOWS: usize = 100;
/// The control-plane test: cycles in flight, and its metrics (rate, and
/// the server's CPU per cycle, which still compares builds when the
/// bench's one client thread, not the server, sets the rate).
const CTL: [(usize, &str, &str); 2] = [
    (64, "cycles/s", "ctl cpu µs/cycle"),
    (8, "ctl8 cycles/s", "ctl8 cpu µs/cycle"),
];
const CPU_RATE: f64 = 25_000.0;

fn main() {
    let o = Opts::parse();
    if let Some(f) = &o.forwarder {
        let parse = |s: &str| s.parse::<SocketAddrV4>().expect("IPv4 address:port");
        let relays = f.get(3).map_or(Ipv4Addr::new(127, 0, 2, 0), |r| {
            r.parse().expect("relayed addresses: an IPv4 address")
        });
        let r = forwarder::run(
            parse(&f[0]),
            parse(&f[1]),
            f[2].parse().expect("channels"),
            relays,
        );
        if let Err(e) = r {
            eprintln!("forwarder: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(a) = &o.answerer {
        let listen = a[0].parse::<SocketAddrV4>().expect("IPv4 address:port");
        let threads = a[1].parse().expect("threads");
        let wait = answerer::Wait::parse(a.get(2).map(String::as_str));
        if let Err(e) = answerer::run(listen, threads, wait) {
            eprintln!("answerer: {e}");
            std::process::exit(1);
        }
        return;
    }
    let plan = if o.quick {
        Plan {
            reps: o.reps.unwrap_or(1),
            trial: Duration::from_millis(300),
            steps: 7,
            lat: Duration::from_secs(1),
            lat_trials: 1,
            cpu: Duration::from_millis(1500),
            ctl: Duration::from_secs(1),
            hold: o.allocations.unwrap_or(1000),
        }
    } else {
        Plan {
            reps: o.reps.unwrap_or(3),
            trial: Duration::from_millis(800),
            steps: 8,
            lat: Duration::from_secs(2),
            lat_trials: 3,
            cpu: Duration::from_secs(4),
            ctl: Duration::from_secs(3),
            hold: o.allocations.unwrap_or(10_000),
        }
    };
    let veth = o.topology == Topology::Veth;
    let servers = o.servers.clone().unwrap_or_else(|| {
        match veth {
            false => "forwarder,coturn,ferroturn,ferroturn-normal",
            true => "forwarder,coturn,ferroturn,ferroturn-fastpath",
        }
        .to_string()
    });
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| servers.split(',').any(|s| s.trim() == k.name()))
        .collect();
    let tests: Vec<String> = o.tests.split(',').map(|s| s.trim().to_string()).collect();
    let on = |t: &str| tests.iter().any(|x| x == t);

    let me = std::env::current_exe().expect("own path");
    let beside = me.parent().unwrap().to_path_buf();
    let need = |k: Kind| kinds.contains(&k);
    let builds: Vec<Build> = if o.ferroturn.is_empty() {
        servers::locate(None, "ferroturn", &beside)
            .map(|path| Build {
                name: "ferroturn".into(),
                path,
            })
            .into_iter()
            .collect()
    } else {
        o.ferroturn.clone()
    };
    if let Err(e) = servers::check_builds(&builds) {
        eprintln!("--ferroturn: {e}");
        std::process::exit(2);
    }
    let turnserver = servers::locate(o.turnserver.as_deref(), "turnserver", &beside);
    if kinds.iter().any(|k| k.is_ferroturn()) && builds.is_empty() {
        eprintln!(
            "no ferroturn binary: run `cargo build --release --bin ferroturn` (or pass --ferroturn NAME=PATH)"
        );
        std::process::exit(2);
    }
    // Each kind in turn; a ferroturn kind once per build, builds side by
    // side so that they meet the same moment of the host.
    let targets: Vec<Target> = kinds
        .iter()
        .flat_map(|&k| {
            if k.is_ferroturn() {
                builds.iter().map(|b| Target::new(k, Some(b))).collect()
            } else {
                vec![Target::new(k, None)]
            }
        })
        .collect();
    if need(Kind::Coturn) && turnserver.is_none() {
        eprintln!("no turnserver: `apt-get install coturn` (or pass --turnserver)");
        std::process::exit(2);
    }
    let redis = match need(Kind::FerroturnCluster) {
        true => match servers::RedisServer::start() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        false => None,
    };
    let dir = std::env::temp_dir().join(format!("ferroturn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let paths = Paths {
        turnserver: turnserver.unwrap_or_default(),
        me,
        dir: dir.clone(),
        ferroturn_workers: o.ferroturn_workers,
        redis: redis.as_ref().map(|r| r.url.clone()),
        place: match veth {
            false => Place::loopback(),
            true => netns::place(),
        },
    };
    let nofile = net::raise_nofile();
    if nofile < plan.hold as u64 + 256 {
        eprintln!(
            "warning: open-files limit {nofile} is below {} allocations + 256; raise it (ulimit -Hn)",
            plan.hold
        );
    }

    if veth {
        let reference = builds.first().map_or("ferroturn", |b| b.name.as_str());
        let run = netns::Veth {
            targets: &targets,
            paths: &paths,
            plan: &plan,
            rate: o.veth_rate,
            reference,
        };
        let r = netns::run(&run);
        let _ = std::fs::remove_dir_all(&dir);
        match r {
            Ok(report) => print!("{report}"),
            Err(e) => {
                eprintln!("--topology veth: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let echo = Echo::start().expect("echo peer");
    let mut res: Results = BTreeMap::new();
    let mut src = net::Sources::new();
    let mut trial_id = 1u32;
    let started = Instant::now();
    let cpu0 = (servers::machine_busy(), servers::own_cpu());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The per-server tests; propagation and dtls alone run no server of
    // --servers in the main loop (dtls starts its own).
    let per_server = tests.iter().any(|t| t != "propagation" && t != "dtls");
    if per_server {
        eprintln!(
            "ferroturn-bench: {} rep(s) of {:?}, {cores} cores, echo peer {}",
            plan.reps,
            targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            echo.addr
        );
    }

    // TCP allocations: coturn and each build's default configuration.
    let tcp_relay = match on("tcprelay") {
        true => match tcp_relay::Bench::new(&dir) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("tcprelay: {e}");
                None
            }
        },
        false => None,
    };
    let hogs = Hogs::start(o.hogs, Duration::from_secs(3600));
    for rep in 0..plan.reps * usize::from(per_server) {
        if on("ceiling") {
            eprintln!(
                "[rep {}] generator ceiling (straight to the echo peer)",
                rep + 1
            );
            ceiling(&plan, &echo, &mut src, &mut trial_id, &mut res, &on);
        }
        for t in &targets {
            eprintln!(
                "[rep {}] {} ({:.0} s so far)",
                rep + 1,
                t.name,
                started.elapsed().as_secs_f64()
            );
            if let Err(e) = run_server(
                t,
                &paths,
                &plan,
                &echo,
                &mut src,
                &mut trial_id,
                &mut res,
                &on,
            ) {
                eprintln!("  {}: {e}", t.name);
            }
            let relays_tcp = matches!(t.kind, Kind::Coturn | Kind::Ferroturn);
            if let Some(b) = tcp_relay.as_ref().filter(|_| relays_tcp) {
                eprintln!("  {}: TCP allocations (RFC 6062)", t.name);
                let trial = plan.trial * 3;
                match b.run(t, &paths, echo.addr, trial) {
                    Ok(figures) => {
                        for (metric, v) in figures {
                            push(&mut res, &t.name, metric, v);
                        }
                    }
                    Err(e) => eprintln!("  {}: tcprelay: {e}", t.name),
                }
            }
        }
    }
    // The cost of the worst messages, once per build, against ferroturn alone.
    let mut costs = String::new();
    for b in builds
        .iter()
        .filter(|_| on("msgcost") && kinds.iter().any(|k| k.is_ferroturn()))
    {
        eprintln!(
            "message cost of {} ({:.0} s so far)",
            b.name,
            started.elapsed().as_secs_f64()
        );
        match Server::start(&Target::new(Kind::Ferroturn, Some(b)), &paths, echo.addr) {
            Ok(server) => {
                let each = if o.quick {
                    Duration::from_secs(1)
                } else {
                    Duration::from_secs(3)
                };
                if builds.len() > 1 {
                    let _ = write!(costs, "\n### {}: {}\n", b.name, b.path.display());
                }
                costs += &msgcost::table(&msgcost::run(&server, each));
            }
            Err(e) => eprintln!("  msgcost of {}: {e}", b.name),
        }
    }
    if on("dtls") {
        let each = Duration::from_secs(if o.quick { 1 } else { 3 });
        let coturn = need(Kind::Coturn);
        costs += &dtls::run(&builds, &paths, coturn, echo.addr, plan.reps, each);
    }
    if on("propagation") {
        costs += &run_propagation(&o, &builds, &dir, started);
    }
    drop(hogs);
    let _ = std::fs::remove_dir_all(&dir);
    let total = started.elapsed();
    // CPU the rest of the machine used meanwhile: the noise floor of this run.
    let foreign = (servers::machine_busy() - cpu0.0) - (servers::own_cpu() - cpu0.1);
    let foreign = (foreign / (total.as_secs_f64() * cores as f64)).max(0.0);
    if per_server {
        print!(
            "{}",
            report(
                &res,
                &plan,
                cores,
                total,
                foreign,
                &targets,
                &builds,
                paths.ferroturn_workers,
                o.hogs
            )
        );
    }
    print!("{costs}");
}

/// The cluster propagation test against the first build: its table, or
/// nothing (after saying why).
fn run_propagation(o: &Opts, builds: &[Build], dir: &std::path::Path, started: Instant) -> String {
    let Some(b) = builds.first() else {
        eprintln!("propagation: no ferroturn binary");
        return String::new();
    };
    eprintln!(
        "cluster propagation with {} ({:.0} s so far)",
        b.name,
        started.elapsed().as_secs_f64()
    );
    let reps = o.reps.unwrap_or(if o.quick { 5 } else { 20 });
    match propagation::run(&b.path, dir, reps) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("  propagation: {e}");
            String::new()
        }
    }
}

/// Threads that spin until dropped (or for at most `cap`), each competing
/// for a CPU like any busy process. They belong to this process, so the
/// report's "other processes" figure leaves them out.
struct Hogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hogs {
    fn start(n: usize, cap: Duration) -> Hogs {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) && t0.elapsed() < cap {
                        for _ in 0..100_000 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                        }
                    }
                })
            })
            .collect();
        Hogs { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn gen_socket() -> UdpSocket {
    net::udp(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        load::GEN_BUF,
        Some(Duration::from_millis(10)),
    )
    .expect("generator socket")
}

fn push(res: &mut Results, target: &str, metric: &'static str, v: f64) {
    res.entry((target.to_string(), metric)).or_default().push(v);
}

fn last_median(res: &Results, target: &str, metric: &'static str) -> Option<f64> {
    res.get(&(target.to_string(), metric))
        .map(|v| median(v))
        .filter(|m| m.is_finite() && *m > 0.0)
}

/// Throughput searches over `configs` (metric, flows, payload) for
/// `target`. For each, whether the generator stopped it: the lowest rate
/// that failed fell short of its target without losing packets.
#[allow(clippy::too_many_arguments)]
fn throughput(
    plan: &Plan,
    target: &str,
    sock: &UdpSocket,
    flows: &[Flow],
    default_start: f64,
    configs: &[(&'static str, usize, usize)],
    trial_id: &mut u32,
    res: &mut Results,
) -> Vec<bool> {
    let mut limited = Vec::new();
    for &(metric, n, payload) in configs {
        let start = last_median(res, target, metric).map_or(default_start, |m| m * 0.85);
        let (best, log) = load::search(
            |rate| {
                *trial_id += 1;
                let t = load::trial(
                    sock,
                    &flows[..n],
                    payload,
                    rate,
                    plan.trial,
                    false,
                    *trial_id,
                );
                std::thread::sleep(Duration::from_millis(50));
                t
            },
            start,
            plan.steps,
        );
        let steps: Vec<String> = log
            .iter()
            .map(|t| {
                format!(
                    "{:.0}k{}",
                    t.target / 1e3,
                    if t.passed() { "✓" } else { "✗" }
                )
            })
            .collect();
        eprintln!(
            "  {metric}: {:.1}k pkt/s  [{}]",
            best / 1e3,
            steps.join(" ")
        );
        push(res, target, metric, best);
        limited.push(load::generator_limited(&log));
    }
    limited
}

/// Round-trip percentiles at `rate` over `flows`, one value per trial.
#[allow(clippy::too_many_arguments)]
fn latency(
    plan: &Plan,
    target: &str,
    sock: &UdpSocket,
    flows: &[Flow],
    rate: f64,
    names: [&'static str; 3],
    trial_id: &mut u32,
    res: &mut Results,
) {
    for _ in 0..plan.lat_trials {
        *trial_id += 1;
        let mut t = load::trial(sock, flows, 200, rate, plan.lat, true, *trial_id);
        t.rtts.sort_unstable();
        let p = [50.0, 99.0, 99.9].map(|q| percentile(&t.rtts, q) / 1e3);
        eprintln!(
            "  rtt at {:.0}k/s over {} flow(s): p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, loss {:.3} %",
            rate / 1e3,
            flows.len(),
            p[0],
            p[1],
            p[2],
            t.loss() * 100.0
        );
        for (name, v) in names.into_iter().zip(p) {
            push(res, target, name, v);
        }
    }
}

fn ceiling(
    plan: &Plan,
    echo: &Echo,
    src: &mut net::Sources,
    trial_id: &mut u32,
    res: &mut Results,
    on: &dyn Fn(&str) -> bool,
) {
    let sock = gen_socket();
    let flows = fixed_flows(src, echo.addr);
    if on("tput") {
        throughput(
            plan,
            "generator",
            &sock,
            &flows,
            100_000.0,
            &TPUT,
            trial_id,
            res,
        );
    }
    if on("lat") {
        latency(
            plan,
            "generator",
            &sock,
            &flows[..1],
            1000.0,
            ["rtt1k p50", "rtt1k p99", "rtt1k p99.9"],
            trial_id,
            res,
        );
    }
}

/// FLOWS flows to `dst` from fresh client addresses, on channels 0x4000
/// upwards (the forwarder's; the echo peer ignores them).
fn fixed_flows(src: &mut net::Sources, dst: SocketAddrV4) -> Vec<Flow> {
    (0..FLOWS)
        .map(|i| Flow {
            src: src.next(),
            dst,
            channel: 0x4000 + i as u16,
        })
        .collect()
}

/// The flows of the data-plane tests through `server`: for a TURN server
/// FLOWS allocations, each channel-bound to `peer`; for the forwarder its
/// fixed channels. Every flow carries traffic once before measuring.
fn server_flows(
    kind: Kind,
    sock: &UdpSocket,
    server: &Server,
    peer: SocketAddrV4,
    src: &mut net::Sources,
    trial_id: &mut u32,
) -> Result<Vec<Flow>, String> {
    let flows: Vec<Flow> = if kind.is_turn() {
        let (st, mut clients) =
            turn::hold(sock, server.addr, FLOWS, 16, Duration::from_secs(20), |i| {
                turn::Client::new(src.next(), Some((0x4000 + i as u16, peer)))
            });
        if st.done < FLOWS {
            return Err(format!(
                "only {} of {FLOWS} channel-bound allocations{}",
                st.done,
                st.why()
            ));
        }
        clients.sort_by_key(|c| c.bind.map_or(0, |b| b.0));
        clients
            .iter()
            .map(|c| Flow {
                src: c.src,
                dst: server.addr,
                channel: c.bind.map_or(0, |b| b.0),
            })
            .collect()
    } else {
        fixed_flows(src, server.addr)
    };
    // Warm-up: every flow carries traffic once before measuring.
    *trial_id += 1;
    let w = load::trial(
        sock,
        &flows,
        200,
        5_000.0,
        Duration::from_millis(200),
        false,
        *trial_id,
    );
    if w.loss() > 0.01 {
        eprintln!("  warning: warm-up lost {:.1} %", w.loss() * 100.0);
    }
    Ok(flows)
}

#[allow(clippy::too_many_arguments)]
fn run_server(
    target: &Target,
    paths: &Paths,
    plan: &Plan,
    echo: &Echo,
    src: &mut net::Sources,
    trial_id: &mut u32,
    res: &mut Results,
    on: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let kind = target.kind;
    let mut server = Server::start(target, paths, echo.addr)?;
    let name = target.name.as_str();
    eprintln!("  pid {} on {}", server.pid(), server.addr);

    if kind.is_turn() && !kind.control_only() && on("mem") {
        std::thread::sleep(Duration::from_millis(300));
        let ctl = gen_socket();
        let idle = server.rss_kib();
        let (st, held) = turn::hold(
            &ctl,
            server.addr,
            plan.hold,
            64,
            Duration::from_secs(60),
            |_| turn::Client::new(src.next(), None),
        );
        std::thread::sleep(Duration::from_millis(300));
        let full = server.rss_kib();
        let mut it = held.into_iter();
        let del = turn::drive(
            &ctl,
            server.addr,
            turn::Plan::Delete,
            64,
            Instant::now() + Duration::from_secs(60),
            // Held clients finished their plan: delete from the first step.
            || it.next().map(turn::Client::restart),
            None,
        );
        // coturn frees a deleted allocation on its next timer tick.
        std::thread::sleep(Duration::from_secs(2));
        let after = server.rss_kib();
        let per = (full as f64 - idle as f64) * 1024.0 / st.done.max(1) as f64;
        eprintln!(
            "  memory: idle {idle} KiB, {} allocations held ({} failed{}, {:.1} s) {full} KiB = {per:.0} B each; {} deleted ({} failed{}): {after} KiB",
            st.done,
            st.failed,
            st.why(),
            st.secs,
            del.done,
            del.failed,
            del.why()
        );
        push(res, name, "rss idle", idle as f64 / 1024.0);
        if st.done >= plan.hold * 99 / 100 {
            push(res, name, "rss per alloc", per);
            push(res, name, "rss after delete", after as f64 - idle as f64);
        }
        // A fresh server for the rest: coturn keeps the ports and memory
        // of deleted allocations for up to a minute.
        server.stop();
        server = Server::start(target, paths, echo.addr)?;
        eprintln!("  restarted: pid {}", server.pid());
    }

    // 64 in flight: how many cycles the server can take; 8: what each
    // cycle costs when the server is not kept busy (a wake-up per request).
    for (i, (window, metric, cpu_metric)) in CTL.into_iter().enumerate() {
        if !(kind.is_turn() && on("ctl")) {
            break;
        }
        if i > 0 {
            // coturn holds the ports of finished allocations for a minute
            // and the first window used most of its range: a fresh server
            // for each window, whatever the kind.
            server.stop();
            server = Server::start(target, paths, echo.addr)?;
        }
        let ctl = gen_socket();
        let (c0, me0) = (server.cpu(), servers::thread_cpu());
        let st = turn::drive(
            &ctl,
            server.addr,
            turn::Plan::Cycle,
            window,
            Instant::now() + plan.ctl,
            || Some(turn::Client::new(src.next(), None)),
            None,
        );
        let (cpu, me) = (server.cpu() - c0, servers::thread_cpu() - me0);
        let rate = st.done as f64 / st.secs;
        let per = cpu / st.done.max(1) as f64 * 1e6;
        eprintln!(
            "  allocation cycles, {window} in flight: {} in {:.2} s = {rate:.0}/s ({} failed{}); server CPU {per:.1} µs per cycle ({:.0} % of a core), client {:.0} % of a core",
            st.done,
            st.secs,
            st.failed,
            st.why(),
            cpu / st.secs * 100.0,
            me / st.secs * 100.0
        );
        push(res, name, metric, rate);
        push(res, name, cpu_metric, per);
    }

    if kind.control_only() || !(on("tput") || on("lat") || on("cpu")) {
        return Ok(());
    }
    let sock = gen_socket();
    let flows = server_flows(kind, &sock, &server, echo.addr, src, trial_id)?;

    if on("tput") {
        throughput(plan, name, &sock, &flows, 30_000.0, &TPUT, trial_id, res);
    }
    if on("lat") {
        latency(
            plan,
            name,
            &sock,
            &flows[..1],
            1000.0,
            ["rtt1k p50", "rtt1k p99", "rtt1k p99.9"],
            trial_id,
            res,
        );
        latency(
            plan,
            name,
            &sock,
            &flows,
            10_000.0,
            ["rtt10k p50", "rtt10k p99", "rtt10k p99.9"],
            trial_id,
            res,
        );
    }
    if on("cpu") {
        *trial_id += 1;
        let (c0, s0) = (server.cpu(), server.switches());
        let t = load::trial(&sock, &flows, 200, CPU_RATE, plan.cpu, false, *trial_id);
        let (c1, s1) = (server.cpu(), server.switches());
        let cpu = c1 - c0;
        // Relayed: client → peer (sent, less what was lost on the way) and
        // peer → client (received); counted as sent + received.
        let relayed = (t.sent + t.received) as f64;
        let per_m = cpu / relayed * 1e6;
        eprintln!(
            "  cpu at {:.0}k/s: {cpu:.2} s for {:.0}k relayed = {per_m:.2} s per million ({:.0} % of a core), loss {:.3} %",
            CPU_RATE / 1e3,
            relayed / 1e3,
            cpu / plan.cpu.as_secs_f64() * 100.0,
            t.loss() * 100.0
        );
        push(res, name, "cpu s/M", per_m);
        push(res, name, "wakes/pkt", (s1 - s0) as f64 / relayed);
        push(
            res,
            name,
            "cpu % core",
            cpu / plan.cpu.as_secs_f64() * 100.0,
        );
    }
    server.stop();
    Ok(())
}

/// Metrics in report order: key, label, unit formatter.
const ROWS: &[(&str, &str)] = &[
    (
        "tput 1x200",
        "throughput, 1 allocation × 200 B (client-sent pkt/s at ≤ 0.1 % loss)",
    ),
    ("tput 100x200", "throughput, 100 allocations × 200 B"),
    ("tput 1x1200", "throughput, 1 allocation × 1200 B"),
    ("tput 100x1200", "throughput, 100 allocations × 1200 B"),
    ("rtt1k p50", "RTT p50 at 1 k pkt/s, 1 allocation (µs)"),
    ("rtt1k p99", "RTT p99 at 1 k pkt/s (µs)"),
    ("rtt1k p99.9", "RTT p99.9 at 1 k pkt/s (µs)"),
    ("rtt10k p50", "RTT p50 at 10 k pkt/s, 100 allocations (µs)"),
    ("rtt10k p99", "RTT p99 at 10 k pkt/s (µs)"),
    ("rtt10k p99.9", "RTT p99.9 at 10 k pkt/s (µs)"),
    (
        "cpu s/M",
        "server CPU s per million relayed packets at 25 k pkt/s",
    ),
    ("cpu % core", "server CPU at 25 k pkt/s (% of one core)"),
    (
        "wakes/pkt",
        "server context switches per relayed packet at 25 k pkt/s",
    ),
    (
        "cycles/s",
        "allocation cycles/s (Allocate→401, Allocate, Refresh 0)",
    ),
    (
        "ctl cpu µs/cycle",
        "server CPU per allocation cycle, 64 in flight (µs)",
    ),
    ("ctl8 cycles/s", "allocation cycles/s, 8 in flight (ctl8)"),
    (
        "ctl8 cpu µs/cycle",
        "server CPU per allocation cycle, 8 in flight (µs)",
    ),
    (
        "tcprelay 1",
        "TCP allocation (RFC 6062), client over TCP: relayed MB/s each way, 1 data connection",
    ),
    (
        "tcprelay 4",
        "the same, 4 allocations with a data connection each",
    ),
    ("tlsrelay 1", "the same, client over TLS, 1 data connection"),
    (
        "tcprelay 1 s/GB",
        "server CPU s per GB relayed each way, TCP allocation, 1 data connection",
    ),
    ("tcprelay 4 s/GB", "the same, 4 allocations"),
    ("tlsrelay 1 s/GB", "the same, client over TLS"),
    (
        "tcprelay stalls",
        "TCP allocations: data connections stalled at a trial's end (of 6 per repetition: nothing back for 0.5 s with bytes in flight)",
    ),
    ("rss idle", "RSS idle (MiB)"),
    ("rss per alloc", "RSS per held allocation (bytes)"),
    (
        "rss after delete",
        "RSS after deleting all, minus idle (KiB)",
    ),
];

fn fmt(metric: &str, v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if metric.starts_with("tput") {
        format!("{:.1} k", v / 1e3)
    } else if metric.ends_with("µs/cycle") {
        format!("{v:.1}")
    } else if metric.ends_with("s/GB") {
        format!("{v:.2}")
    } else if metric == tcp_relay::STALLS {
        format!("{v:.0}")
    } else if metric.contains("relay ") {
        format!("{v:.0} MB/s")
    } else if metric == "cpu s/M" || metric == "rss idle" || metric == "wakes/pkt" {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    res: &Results,
    plan: &Plan,
    cores: usize,
    total: Duration,
    foreign: f64,
    targets: &[Target],
    builds: &[Build],
    workers: usize,
    hogs: usize,
) -> String {
    // One column per build; with several, each later one is also set
    // against the first (`new / prev`).
    let names: Vec<&str> = builds.iter().map(|b| b.name.as_str()).collect();
    let m = |t: &str, k: &'static str| res.get(&(t.to_string(), k)).map_or(f64::NAN, |v| median(v));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## ferroturn-bench: medians of {} repetition(s), {cores} cores, {:.0} s, ferroturn with {}\n",
        plan.reps,
        total.as_secs_f64(),
        match workers {
            0 => "one worker per core".to_string(),
            n => format!("workers = {n}"),
        }
    );
    let _ = writeln!(
        s,
        "Other processes on this machine used {:.0} % of its CPU during the run (user+system time outside the benchmark and its servers; above a few % the figures are noisy, compare ratios within one run).\n",
        foreign * 100.0
    );
    let _ = writeln!(
        s,
        "CPU idle driver: {} (on a VM the round-trip times depend on it: README, Tail latency).\n",
        servers::idle_driver()
    );
    if hogs > 0 {
        let _ = writeln!(
            s,
            "{hogs} busy thread(s) competed for the CPUs during the whole run (--hogs).\n"
        );
    }
    if names.len() > 1 || names.first().is_some_and(|n| *n != "ferroturn") {
        for b in builds {
            let _ = writeln!(s, "- `{}`: {}", b.name, b.path.display());
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Throughput is client-sent ChannelData/s at ≤ 0.1 % round-trip loss (the relay forwards twice that: both directions). Ratios are ferroturn's value over the other's.\n"
    );
    let mut head = "| metric | generator ↔ echo | forwarder | coturn |".to_string();
    for n in &names {
        let _ = write!(head, " {n} |");
    }
    for n in &names {
        let _ = write!(head, " {n} / forwarder | {n} / coturn |");
    }
    for n in names.iter().skip(1) {
        let _ = write!(head, " {n} / {} |", names[0]);
    }
    let cols = head.matches('|').count() - 1;
    let _ = writeln!(s, "{head}\n|{}", "---|".repeat(cols));
    for (k, label) in ROWS {
        let g = m("generator", k);
        let f = m("forwarder", k);
        let c = m("coturn", k);
        let t: Vec<f64> = names.iter().map(|n| m(n, k)).collect();
        if [g, f, c].iter().chain(&t).all(|v| !v.is_finite()) {
            continue;
        }
        let _ = write!(
            s,
            "| {label} | {} | {} | {} |",
            fmt(k, g),
            fmt(k, f),
            fmt(k, c)
        );
        for v in &t {
            let _ = write!(s, " {} |", fmt(k, *v));
        }
        for v in &t {
            let _ = write!(s, " {} | {} |", ratio(*v, f), ratio(*v, c));
        }
        for v in t.iter().skip(1) {
            let _ = write!(s, " {} |", ratio(*v, t[0]));
        }
        let _ = writeln!(s);
    }

    // The control-plane rows against the zero-work answerers, where they ran.
    let answerers: Vec<&str> = targets
        .iter()
        .filter(|t| t.kind.control_only())
        .map(|t| t.name.as_str())
        .collect();
    if !answerers.is_empty() {
        let _ = writeln!(
            s,
            "
The control-plane test against the zero-work answerer (fixed answers: no state, crypto or log; src/bin/ferroturn-bench/answerer.rs). `answerer`: a thread per core under SCHED_BATCH, each sleeping in `epoll_wait` between requests, as ferroturn's UDP shards do once load has given each a thread of its own; `answerer-poll`: one thread that polls for 50 µs after its last datagram before it sleeps; `answerer-spin`: one thread that never sleeps.\n"
        );
        let mut head = "| metric |".to_string();
        for n in answerers.iter().chain(&names) {
            let _ = write!(head, " {n} |");
        }
        for n in &names {
            for a in &answerers {
                let _ = write!(head, " {n} / {a} |");
            }
        }
        let cols = head.matches('|').count() - 1;
        let _ = writeln!(s, "{head}\n|{}", "---|".repeat(cols));
        for (k, label) in ROWS
            .iter()
            .filter(|(k, _)| CTL.iter().any(|c| c.1 == *k || c.2 == *k))
        {
            let _ = write!(s, "| {label} |");
            for n in answerers.iter().chain(&names) {
                let _ = write!(s, " {} |", fmt(k, m(n, k)));
            }
            for n in &names {
                for a in &answerers {
                    let _ = write!(s, " {} |", ratio(m(n, k), m(a, k)));
                }
            }
            let _ = writeln!(s);
        }
    }

    // ferroturn's variants, where they ran.
    let mut variants = Vec::new();
    for t in targets
        .iter()
        .filter(|t| t.kind.is_ferroturn() && t.kind != Kind::Ferroturn)
    {
        let (d, base) = (t.name.as_str(), t.base());
        if !ROWS.iter().any(|(k, _)| m(d, k).is_finite()) {
            continue;
        }
        variants.push(d);
        let _ = writeln!(s, "\n{base} with {}:\n", t.kind.setting());
        let _ = writeln!(
            s,
            "| metric | {d} | / forwarder | / coturn | / {base} |\n|---|---|---|---|---|"
        );
        for (k, label) in ROWS {
            let v = m(d, k);
            if !v.is_finite() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} |",
                fmt(k, v),
                ratio(v, m("forwarder", k)),
                ratio(v, m("coturn", k)),
                ratio(v, m(base, k))
            );
        }
    }

    // Targets of issue 6, for ferroturn and each variant.
    let verdict = |ok: bool, v: f64| {
        if !v.is_finite() {
            "not measured"
        } else if ok {
            "met"
        } else {
            "**not met**"
        }
    };
    let mut named = names.clone();
    named.extend(&variants);
    let _ = writeln!(
        s,
        "\n| target (issues 6, 18) |{}\n|---|{}",
        named
            .iter()
            .map(|t| format!(" {t} | verdict |"))
            .collect::<String>(),
        "---|---|".repeat(named.len())
    );
    // (target, ferroturn over: "forwarder" | "coturn" | "" for its own
    // value, measurement, at most (true) or at least (false), the bound, unit)
    let goals: [(&str, &str, &'static str, bool, f64, &str); 12] = [
        (
            "100 allocations × 200 B ≥ 0.95× forwarder",
            "forwarder",
            "tput 100x200",
            false,
            0.95,
            "×",
        ),
        (
            "100 allocations × 200 B ≥ 1.1× coturn",
            "coturn",
            "tput 100x200",
            false,
            1.1,
            "×",
        ),
        (
            "1 allocation × 200 B ≥ 0.9× forwarder",
            "forwarder",
            "tput 1x200",
            false,
            0.9,
            "×",
        ),
        (
            "1 allocation × 200 B ≥ 1.7× coturn",
            "coturn",
            "tput 1x200",
            false,
            1.7,
            "×",
        ),
        (
            "idle RTT p50 ≤ 1.05× forwarder",
            "forwarder",
            "rtt1k p50",
            true,
            1.05,
            "×",
        ),
        (
            "RTT p99 at 20 k relayed pkt/s ≤ coturn",
            "coturn",
            "rtt10k p99",
            true,
            1.0,
            "×",
        ),
        (
            "CPU per relayed packet ≤ 1.1× forwarder",
            "forwarder",
            "cpu s/M",
            true,
            1.1,
            "×",
        ),
        (
            "allocation cycles/s ≥ 26,000",
            "",
            "cycles/s",
            false,
            26_000.0,
            "/s",
        ),
        (
            "RSS per allocation ≤ 4 KB",
            "",
            "rss per alloc",
            true,
            4096.0,
            " B",
        ),
        (
            "RSS within 1 MB of idle after deleting all",
            "",
            "rss after delete",
            true,
            1024.0,
            " KiB",
        ),
        // Issue 18.
        (
            "TCP-relay MB/s ≥ coturn (1 data connection)",
            "coturn",
            "tcprelay 1",
            false,
            1.0,
            "×",
        ),
        (
            "TLS TCP-relay MB/s ≥ coturn",
            "coturn",
            "tlsrelay 1",
            false,
            1.0,
            "×",
        ),
    ];
    for (name, base, key, at_most, bound, unit) in goals {
        let _ = write!(s, "| {name} |");
        for &t in &named {
            let v = match base {
                "" => m(t, key),
                b => m(t, key) / m(b, key),
            };
            let ok = if at_most { v <= bound } else { v >= bound };
            let shown = if !v.is_finite() {
                "–".to_string()
            } else {
                match unit {
                    "×" => format!("{v:.2}×"),
                    " KiB" => format!("{v:+.0} KiB"),
                    u => format!("{v:.0}{u}"),
                }
            };
            let _ = write!(s, " {shown} | {} |", verdict(ok, v));
        }
        let _ = writeln!(s);
    }

    // Every repetition (every trial, for the latencies), for the reader
    // who distrusts medians.
    let _ = writeln!(s, "\nPer repetition (latency: per trial):\n");
    let mut columns = vec!["generator"];
    columns.extend(targets.iter().map(|t| t.name.as_str()));
    for t in columns {
        let mut line = format!("- {t}:");
        for (k, _) in ROWS {
            if let Some(v) = res.get(&(t.to_string(), *k)) {
                let vs: Vec<String> = v.iter().map(|x| fmt(k, *x)).collect();
                let _ = write!(line, " {k} [{}];", vs.join(", "));
            }
        }
        let _ = writeln!(s, "{line}");
    }
    s
}
