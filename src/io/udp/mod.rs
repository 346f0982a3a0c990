//! The UDP data plane: shards ([`shard`]), and the threads that drive
//! them.
//!
//! A [`Shard`] is one engine host with its SO_REUSEPORT listener sockets.
//! Shards are plain values, moved whole between driver threads, and a
//! shard is driven by one thread at a time: the data path takes no lock.
//! At low load one thread drives every shard from one epoll set, so that a
//! packet costs one wake-up of one thread (on a small machine a wake-up that
//! crosses CPUs costs more than the packet's own work). When that thread is
//! busy, each shard goes to a thread of its own; when the load falls again,
//! they come back ([`placement`] decides). With `udp_threads = "dedicated"`
//! each shard keeps a thread of its own from the start instead, and no
//! shard moves: lower tail latency on a small VM, more CPU per packet. Each
//! driver also picks its own scheduling policy ([`sched`]).

pub mod dtls;
mod placement;
mod sched;
mod shard;

pub use placement::Balance;
pub use shard::Shard;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::UdpScheduling;
use crate::io::poll::{self, Epoll, EventFd};
use placement::{Move, Window};

/// The log target of this data plane's lines (it was one file once).
const LOG: &str = "ferroturn::io::udp";

/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// How often a driver measures its own load.
const WINDOW: Duration = Duration::from_millis(50);

/// The driver's own eventfd's token: shards arrived, or stop.
const INBOX: u64 = u64::MAX;

/// What the drivers share: where to send a shard, their loads, stop.
pub struct Drivers {
    inboxes: Vec<(std::sync::mpsc::Sender<Box<Shard>>, Arc<EventFd>)>,
    /// Each driver's load over its last window, per mille of a core.
    loads: Vec<AtomicU32>,
    /// How many shards each driver holds.
    held: Vec<AtomicUsize>,
    stop: AtomicBool,
    /// How many shards there are in all.
    shards: usize,
    /// When shards move; `None`: each stays with its own thread.
    balance: Option<Balance>,
    /// Whether each driver runs under SCHED_BATCH now.
    batch: Vec<AtomicBool>,
}

impl Drivers {
    /// Stop every driver; each closes the allocations of its shards.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for (_, wake) in &self.inboxes {
            wake.signal();
        }
    }

    /// How many shards each driver holds now (a shard on its way from one
    /// to another is counted by neither).
    pub fn placement(&self) -> Vec<usize> {
        self.held
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .collect()
    }

    /// How many drivers run under SCHED_BATCH now.
    pub fn batch_threads(&self) -> usize {
        self.batch
            .iter()
            .filter(|b| b.load(Ordering::Relaxed))
            .count()
    }

    /// Hand `shard` to driver `to`; back if that driver is gone.
    fn send(&self, to: usize, shard: Box<Shard>) -> Result<(), Box<Shard>> {
        let (tx, wake) = &self.inboxes[to];
        tx.send(shard).map_err(|e| e.0)?;
        wake.signal();
        Ok(())
    }
}

/// A thread driving some of the shards.
struct Driver {
    id: usize,
    epoll: Epoll,
    wake: Arc<EventFd>,
    inbox: std::sync::mpsc::Receiver<Box<Shard>>,
    // Boxed: a shard moves between threads as one pointer.
    #[allow(clippy::vec_box)]
    shards: Vec<Box<Shard>>,
    drivers: Arc<Drivers>,
    /// The current load window: its start, and the thread's CPU time then.
    window: (Instant, Duration),
    /// Since when the summed load stays under [`Balance::merge`].
    calm_since: Option<Instant>,
    /// Every driver's shard count and load, as last read (see
    /// [`Self::balance`]).
    held_seen: Vec<usize>,
    loads_seen: Vec<u32>,
    /// `udp_scheduling = "auto"`: the policy rule and this thread's
    /// counters it reads.
    auto: Option<(sched::Auto, poll::RunDelay)>,
}

/// Start `threads` drivers for `shards`. With a `balance`, every shard
/// begins with driver 0 (one thread, until the load asks for more; see
/// [`Balance`]); without, shard `i` stays with driver `i % threads`.
/// `scheduling`: the drivers' policy ([`poll::set_batch`], [`sched`]).
/// Returns what stops them, and their threads.
#[allow(clippy::vec_box)]
pub fn start(
    shards: Vec<Box<Shard>>,
    threads: usize,
    balance: Option<Balance>,
    scheduling: UdpScheduling,
) -> std::io::Result<(Arc<Drivers>, Vec<std::thread::JoinHandle<()>>)> {
    // No UDP listener: no shard, and no thread to drive one.
    let threads = if shards.is_empty() { 0 } else { threads.max(1) };
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..threads {
        let (tx, rx) = std::sync::mpsc::channel();
        inboxes.push((tx, Arc::new(EventFd::new()?)));
        receivers.push(rx);
    }
    let drivers = Arc::new(Drivers {
        inboxes,
        loads: (0..threads).map(|_| AtomicU32::new(0)).collect(),
        held: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
        stop: AtomicBool::new(false),
        shards: shards.len(),
        balance,
        batch: (0..threads).map(|_| AtomicBool::new(false)).collect(),
    });
    for s in shards {
        let to = if balance.is_some() {
            0
        } else {
            s.index % threads
        };
        // Every driver's receiver is alive: it is in `receivers`.
        let _ = drivers.send(to, s);
    }
    let mut handles = Vec::new();
    for (id, inbox) in receivers.into_iter().enumerate() {
        match spawn(&drivers, id, inbox, scheduling) {
            Ok(h) => handles.push(h),
            Err(e) => {
                drivers.stop();
                return Err(e);
            }
        }
    }
    Ok((drivers, handles))
}

/// Start driver `id`'s thread. A panic there (a bug) ends the process, so
/// that a supervisor restarts it: at low load one driver holds every shard.
fn spawn(
    drivers: &Arc<Drivers>,
    id: usize,
    inbox: std::sync::mpsc::Receiver<Box<Shard>>,
    scheduling: UdpScheduling,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let epoll = Epoll::new()?;
    let wake = drivers.inboxes[id].1.clone();
    poll::add(epoll.raw(), wake.raw(), INBOX)?;
    let d = Driver {
        id,
        epoll,
        wake,
        inbox,
        shards: Vec::new(),
        drivers: drivers.clone(),
        // Set again on the driver's own thread, whose CPU clock it reads.
        window: (Instant::now(), Duration::ZERO),
        calm_since: None,
        held_seen: vec![0; drivers.inboxes.len()],
        loads_seen: vec![0; drivers.inboxes.len()],
        auto: None,
    };
    std::thread::Builder::new()
        .name(format!("ferroturn-u{id}"))
        .spawn(move || {
            let mut d = d;
            d.set_scheduling(scheduling);
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.run()));
            if run.is_err() {
                tracing::error!(target: LOG, driver = id, "UDP driver thread panicked; aborting");
                std::process::abort();
            }
        })
}

impl Driver {
    /// Apply `scheduling` to this (the driver's own) thread.
    fn set_scheduling(&mut self, scheduling: UdpScheduling) {
        let id = self.id;
        let mut auto = || -> std::io::Result<()> {
            let rd = poll::RunDelay::open()?;
            let w = rd.read()?;
            poll::set_batch(true)?;
            self.auto = Some((sched::Auto::new(Instant::now(), w), rd));
            Ok(())
        };
        let batch = match scheduling {
            UdpScheduling::Normal => return,
            UdpScheduling::Batch => poll::set_batch(true),
            UdpScheduling::Auto => auto(),
        };
        match batch {
            Ok(()) => self.drivers.batch[id].store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!(
                target: LOG,
                driver = id,
                "udp_scheduling = {:?} not applied, the thread stays normal: {e} (under a system call filter, allow sched_setscheduler)",
                format!("{scheduling:?}").to_lowercase()
            ),
        }
    }

    /// Once per load window under "auto": sample this thread's run-queue
    /// waits and switch policy when [`sched::Auto`] says so.
    fn reschedule(&mut self, now: Instant) {
        let Some((auto, rd)) = &mut self.auto else {
            return;
        };
        let Ok(w) = rd.read() else {
            return;
        };
        let Some(p) = auto.sample(now, w) else {
            return;
        };
        let batch = p == sched::Policy::Batch;
        match poll::set_batch(batch) {
            Ok(()) => {
                self.drivers.batch[self.id].store(batch, Ordering::Relaxed);
                tracing::debug!(driver = self.id, ?p, "UDP thread policy");
            }
            Err(e) => {
                tracing::warn!(target: LOG, driver = self.id, "udp_scheduling = \"auto\" stops: {e}");
                self.auto = None;
            }
        }
    }

    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        self.window = (Instant::now(), poll::thread_cpu());
        // The thread's log lines wait for the end of their round and leave
        // with one `write(2)` before it may sleep (src/log.rs).
        crate::log::hold();
        while !self.drivers.stop.load(Ordering::Acquire) {
            let timeout = self.timeout(Instant::now());
            let n = self.epoll.wait(&mut events, timeout);
            let now = Instant::now();
            for ev in &events[..n] {
                let tok = ev.u64;
                if tok == INBOX {
                    self.wake.clear();
                    self.adopt();
                    continue;
                }
                let index = (tok >> 56) as usize;
                // A shard handed on during this round has no events here.
                if let Some(s) = self.shards.iter_mut().find(|s| s.index == index) {
                    s.ready(now, (tok >> 48) & 0xff, tok as u32);
                }
            }
            for s in &mut self.shards {
                s.end_round(now);
            }
            self.end_window(now);
            crate::log::write_held();
        }
        // Shards on their way here are closed here too; one sent after
        // this comes back to its sender, which closes it (see `give`).
        loop {
            self.adopt();
            if self.shards.is_empty() {
                break;
            }
            for mut s in self.shards.drain(..) {
                s.close();
            }
        }
        crate::log::release();
    }

    /// Take the shards sent to this driver.
    fn adopt(&mut self) {
        let before = self.shards.len();
        while let Ok(mut s) = self.inbox.try_recv() {
            s.attach(&self.epoll);
            tracing::debug!(shard = s.index, driver = self.id, "shard moved");
            self.shards.push(s);
        }
        if self.shards.len() > before {
            self.drivers.held[self.id].store(self.shards.len(), Ordering::Relaxed);
            // The moves' system calls are not load: start a new window.
            self.window = (Instant::now(), poll::thread_cpu());
        }
    }

    /// How long to sleep: until the first engine deadline, and until the
    /// end of the load window while a merge may be due.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        let mut next = self.shards.iter().filter_map(|s| s.poll_timeout()).min();
        let merging = if self.drivers.balance.is_none() {
            false
        } else if self.id == 0 {
            self.shards.len() < self.drivers.shards
        } else {
            !self.shards.is_empty()
        };
        if merging {
            let end = self.window.0 + WINDOW;
            next = Some(next.map_or(end, |n| n.min(end)));
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    /// Once per [`WINDOW`]: measure this thread's load, then let
    /// [`Self::reschedule`] and [`Self::balance`] act on the window.
    fn end_window(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window.0);
        if elapsed < WINDOW {
            return;
        }
        let cpu = poll::thread_cpu();
        let used = cpu.saturating_sub(self.window.1);
        let load = (used.as_nanos() * 1000 / elapsed.as_nanos().max(1)).min(1000) as u32;
        self.window = (now, cpu);
        self.drivers.loads[self.id].store(load, Ordering::Relaxed);
        self.reschedule(now);
        if let Some(b) = self.drivers.balance {
            self.balance(now, load, b);
        }
    }

    /// Move shards after a window with `load`, as [`placement::decide`]
    /// says.
    fn balance(&mut self, now: Instant, load: u32, b: Balance) {
        if self.drivers.stop.load(Ordering::Acquire) {
            return;
        }
        // Read into buffers made at start: a window allocates nothing.
        for (seen, h) in self.held_seen.iter_mut().zip(&self.drivers.held) {
            *seen = h.load(Ordering::Relaxed);
        }
        for (seen, l) in self.loads_seen.iter_mut().zip(&self.drivers.loads) {
            *seen = l.load(Ordering::Relaxed);
        }
        self.held_seen[self.id] = self.shards.len();
        let window = Window {
            id: self.id,
            load,
            held: &self.held_seen,
            loads: &self.loads_seen,
        };
        let m = placement::decide(window, b, now, &mut self.calm_since);
        if m != Move::Stay {
            let sum: u32 = self.loads_seen.iter().sum();
            // The load that moved them: driver 0's own, or the sum.
            let why = if m == Move::Spread { load } else { sum };
            let (from, threads) = (self.id, self.held_seen.len());
            self.give(why, |s| m.destination(s.index, from, threads));
        }
    }

    /// Send each shard for which `to` names another driver to that driver.
    fn give(&mut self, load: u32, to: impl Fn(&Shard) -> usize) {
        let mut i = 0;
        while i < self.shards.len() {
            let dest = to(&self.shards[i]);
            if dest == self.id {
                i += 1;
                continue;
            }
            let mut s = self.shards.swap_remove(i);
            s.detach();
            tracing::debug!(
                load,
                shard = s.index,
                from = self.id,
                to = dest,
                "shard moves"
            );
            if let Err(mut s) = self.drivers.send(dest, s) {
                // That driver has stopped: so are we, nearly.
                s.close();
            }
        }
        self.drivers.held[self.id].store(self.shards.len(), Ordering::Relaxed);
        if self.shards.is_empty() {
            // Idle from now on; the merge rule sums every driver's load.
            self.drivers.loads[self.id].store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Credentials;
    use crate::engine::EngineConfig;
    use crate::policy::PeerPolicy;
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    use std::net::{SocketAddr, UdpSocket};

    /// A STUN Binding request (RFC 8489 §6) with transaction id `n`.
    fn binding(n: u32) -> [u8; 20] {
        let mut m = [0u8; 20];
        m[1] = 0x01;
        m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        m[8..12].copy_from_slice(&n.to_be_bytes());
        m
    }

    fn shard(index: usize) -> (Box<Shard>, SocketAddr) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let addr = sock.local_addr().unwrap();
        let lo = Ipv4Addr::LOCALHOST.into();
        let cfg = EngineConfig::new(
            Credentials::new("test", &[], &Default::default(), b"key", 600),
            PeerPolicy::new(vec![], vec![], vec![], (1, 1)),
            lo,
            lo,
            Vec::new(),
        );
        let no_dtls = (Vec::new(), Arc::new(Default::default()));
        let (s, _) = Shard::new(index, cfg, vec![(0, sock)], no_dtls, Instant::now(), 0).unwrap();
        (s, addr)
    }

    /// Send Bindings to every address for `dur`, one per address per
    /// millisecond; how many went to each, how many were answered, and
    /// the placements seen after every round.
    fn traffic(
        client: &UdpSocket,
        to: &[SocketAddr],
        dur: Duration,
        drivers: &Drivers,
    ) -> (u32, Vec<u32>, BTreeSet<Vec<usize>>) {
        let mut seen = BTreeSet::new();
        let mut sent = 0;
        let mut answered = vec![0; to.len()];
        let mut buf = [0u8; 256];
        let mut count = |answered: &mut Vec<u32>| {
            while let Ok((n, from)) = client.recv_from(&mut buf) {
                // A Binding success response (RFC 8489 §6.3.1).
                assert_eq!(&buf[..2], &[0x01, 0x01], "{n} bytes from {from}");
                answered[to.iter().position(|a| *a == from).unwrap()] += 1;
            }
        };
        let start = Instant::now();
        while start.elapsed() < dur {
            for a in to {
                client.send_to(&binding(sent), a).unwrap();
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
            count(&mut answered);
            seen.insert(drivers.placement());
        }
        let end = Instant::now();
        while answered.iter().any(|&n| n < sent) && end.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
            count(&mut answered);
        }
        (sent, answered, seen)
    }

    /// Wait up to 5 s for the placement `want`.
    fn wait_for(drivers: &Drivers, want: &[usize]) {
        let t = Instant::now();
        while drivers.placement() != want && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(drivers.placement(), want);
    }

    fn stop(drivers: Arc<Drivers>, threads: Vec<std::thread::JoinHandle<()>>) {
        drivers.stop();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn shards_spread_under_load_come_back_when_calm_and_lose_nothing() {
        let (shards, addrs): (Vec<_>, Vec<_>) = (0..3).map(shard).unzip();
        // Split at any traffic (0.5 % of a core: a driver relaying this
        // test's Bindings measured 19 ‰ or more, an idle one's timer wake-ups
        // 0-1 ‰, and split: 0 let an idle driver 0 split again now and then),
        // merge after a calm 200 ms whatever the load: under traffic the
        // shard moves to and fro several times a second.
        let balance = Balance {
            split: 5,
            merge: 1001,
            calm: Duration::from_millis(200),
        };
        let (drivers, threads) = start(shards, 3, Some(balance), UdpScheduling::Normal).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_nonblocking(true).unwrap();
        // Every shard starts with thread 0.
        wait_for(&drivers, &[3, 0, 0]);

        let (sent, answered, placements) =
            traffic(&client, &addrs, Duration::from_millis(1500), &drivers);
        assert!(sent > 100, "sent {sent}");
        assert_eq!(answered, vec![sent; 3], "every Binding answered");
        assert!(
            placements.contains(&vec![1, 1, 1]),
            "spread: {placements:?}"
        );
        // Merges go one thread at a time, the last first.
        assert!(
            placements.contains(&vec![2, 1, 0]),
            "merging: {placements:?}"
        );
        assert!(
            !placements.contains(&vec![2, 0, 1]),
            "thread 1 merged before thread 2: {placements:?}"
        );

        // No traffic: thread 0 is idle and the shards come back.
        wait_for(&drivers, &[3, 0, 0]);
        stop(drivers, threads);
    }

    #[test]
    fn dedicated_shards_keep_their_own_thread_at_any_load() {
        let (shards, addrs): (Vec<_>, Vec<_>) = (0..3).map(shard).unzip();
        let (drivers, threads) = start(shards, 2, None, UdpScheduling::Normal).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_nonblocking(true).unwrap();
        // Shard i with thread i % 2, from the start.
        wait_for(&drivers, &[2, 1]);
        let (sent, answered, mut placements) =
            traffic(&client, &addrs, Duration::from_millis(600), &drivers);
        assert!(sent > 50, "sent {sent}");
        assert_eq!(answered, vec![sent; 3], "every Binding answered");
        // Then idle for longer than the adaptive rule's calm second.
        std::thread::sleep(Duration::from_millis(1300));
        placements.insert(drivers.placement());
        assert_eq!(placements, BTreeSet::from([vec![2, 1]]), "no shard moved");
        stop(drivers, threads);
    }
}
