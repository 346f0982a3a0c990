//! The kernel fast path (`[fastpath] mode = "on"`): an XDP program relays
//! ChannelData of the channels the engine has bound for UDP clients
//! (RFC 8656 §12), so those packets never wake a thread.
//!
//! - [`mirror`]: the engine's [`Grant`] reports as map changes (pure).
//! - `kernel` (feature `fastpath`): the program, its maps and links.
//! - [`FastPath`]: the loaded, attached program, shared by every host.
//! - [`HostPath`]: one host's mirror; it applies the map changes and, once
//!   a second, at a report (at most once per [`FORCED_SYNC_FLOOR`]) and
//!   when a channel leaves, hands what the kernel relayed to the engine
//!   ([`Engine::kernel_relayed`]), so that traffic, usage, sessions and
//!   metrics count packets whichever path carried them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::addr::AllocId;
use crate::config::{Config, FastpathMode};
use crate::engine::stats::{Direction, TrafficCount};
use crate::engine::{Engine, Grant, KernelRelayed};

pub mod mirror;

#[cfg(feature = "fastpath")]
mod kernel;
#[cfg(not(feature = "fastpath"))]
#[path = "absent.rs"]
mod kernel;

pub use kernel::Kernel;
use mirror::{Mirror, Op, Pools, Slots};

const LOG: &str = "ferroturn::io";

/// How often each host reads the kernel's counts.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The least time between a host's last read of the kernel's counts and
/// one a report (a `/metrics` scrape, an admin sessions call) forces: a
/// read walks every channel slot of the host (a system call each), and
/// reports come as fast as any client of those endpoints asks. Within it
/// a report shows the counts of the last read, at most this old.
pub const FORCED_SYNC_FLOOR: Duration = Duration::from_millis(100);

/// When a host reads the kernel's counts: every [`SYNC_EVERY`], and at a
/// report unless it read them less than [`FORCED_SYNC_FLOOR`] before.
/// Pure: the caller gives the time and does the read when told to.
#[derive(Debug, Clone, Copy)]
struct SyncTimes {
    /// When the periodic read is due.
    next: Instant,
    /// The last read, of either kind.
    last: Option<Instant>,
}

impl SyncTimes {
    fn new(now: Instant) -> Self {
        SyncTimes {
            next: now + SYNC_EVERY,
            last: None,
        }
    }

    /// Whether the periodic read is due at `now`; if so it is taken as
    /// done then.
    fn periodic(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.read_at(now);
        true
    }

    /// Whether a report at `now` reads the kernel: not if the last read
    /// is less than [`FORCED_SYNC_FLOOR`] old. If so it is taken as done
    /// then.
    fn forced(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < FORCED_SYNC_FLOOR)
        {
            return false;
        }
        self.read_at(now);
        true
    }

    fn read_at(&mut self, now: Instant) {
        self.last = Some(now);
        self.next = now + SYNC_EVERY;
    }
}

/// How the program runs on the interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Off,
    /// In the network stack, after the socket buffer is made (any driver).
    Generic,
    /// In the driver, before the socket buffer is made.
    Native,
}

impl AttachMode {
    pub const ALL: [AttachMode; 3] = [AttachMode::Off, AttachMode::Generic, AttachMode::Native];

    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Off => "off",
            AttachMode::Generic => "generic",
            AttachMode::Native => "native",
        }
    }
}

/// A moment on both clocks: the engine's [`Instant`] and CLOCK_MONOTONIC,
/// the program's (`bpf_ktime_get_ns`), so that expiry times carry over.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub instant: Instant,
    pub monotonic_ns: u64,
}

impl Clock {
    /// `at` on the program's clock.
    pub fn monotonic_ns(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(d) => self.monotonic_ns.saturating_add(d.as_nanos() as u64),
            None => self
                .monotonic_ns
                .saturating_sub((self.instant - at).as_nanos() as u64),
        }
    }
}

/// One channel's counts in the kernel, by direction (the engine's
/// [`Direction`] order): packets and application data bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChanCount {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

/// The program, loaded and attached, shared by every host.
pub struct FastPath {
    kernel: Kernel,
    pools: Mutex<Pools>,
    /// By `[[listen]]` index: UDP TURN listeners on a specific address.
    listeners: Vec<Option<SocketAddr>>,
    /// The interfaces it is attached to, and how.
    pub interfaces: Vec<(String, AttachMode)>,
    /// Relayed in the kernel, by direction: packets, bytes.
    pub packets: [AtomicU64; 2],
    pub bytes: [AtomicU64; 2],
    /// Channels in the kernel now, over every host.
    pub channels: AtomicU64,
}

impl FastPath {
    /// With `mode = "on"`: load the program and attach it to the
    /// configured interfaces (or those that carry the addresses of the UDP
    /// listeners, bound at `listen`, and of the relay); why not, if it
    /// cannot. `None` with `mode = "off"`.
    pub fn start(config: &Config, listen: &[SocketAddr]) -> Result<Option<Arc<FastPath>>, String> {
        let f = &config.restart.fastpath;
        if f.mode == FastpathMode::Off {
            return Ok(None);
        }
        let listeners: Vec<Option<SocketAddr>> = (config.restart.listen.iter().zip(listen))
            .map(|(l, a)| (l.udp && l.turn && !a.ip().is_unspecified()).then_some(*a))
            .collect();
        let interfaces = match f.interfaces.is_empty() {
            false => f.interfaces.clone(),
            true => {
                let relay = &config.restart.relay;
                let mut wanted: Vec<IpAddr> = listeners.iter().flatten().map(|a| a.ip()).collect();
                wanted.push(relay.address);
                wanted.extend(relay.address_v6);
                wanted.extend(
                    relay
                        .more
                        .iter()
                        .flat_map(|r| [Some(r.bind), r.bind_v6])
                        .flatten(),
                );
                if let Some(w) = wanted.iter().find(|ip| ip.is_unspecified()) {
                    return Err(format!(
                        "fastpath.interfaces: a relay address is {w}: name the interfaces its traffic crosses"
                    ));
                }
                interfaces_of(&wanted)?
            }
        };
        let kernel = Kernel::load().map_err(|e| format!("fastpath.mode: {e}"))?;
        let mut attached = Vec::new();
        for name in &interfaces {
            let mode = kernel
                .attach(name)
                .map_err(|e| format!("fastpath.interfaces: {e}"))?;
            if !forwarding(name) {
                tracing::warn!(
                    target: LOG,
                    interface = %name,
                    "fast path: forwarding is off here (net.ipv4.conf.{name}.forwarding): the kernel \
                     will not route relayed packets, which stay in userspace"
                );
            }
            attached.push((name.clone(), mode));
        }
        tracing::info!(
            target: LOG,
            interfaces = ?attached,
            "fast path attached: bound channels of UDP clients are relayed in the kernel"
        );
        Ok(Some(Arc::new(FastPath {
            kernel,
            pools: Mutex::new(Pools {
                channels: Slots::new(kernel::SLOTS),
                allocs: Slots::new(kernel::SLOTS),
            }),
            listeners,
            interfaces: attached,
            packets: Default::default(),
            bytes: Default::default(),
            channels: AtomicU64::new(0),
        })))
    }

    /// The weakest mode over the interfaces (generic if any is).
    pub fn mode(&self) -> AttachMode {
        let mut m = AttachMode::Off;
        for (_, i) in &self.interfaces {
            m = match (m, *i) {
                (AttachMode::Off, x) => x,
                (_, AttachMode::Generic) | (AttachMode::Generic, _) => AttachMode::Generic,
                (x, _) => x,
            };
        }
        m
    }

    /// Detach from every interface: from now on every packet goes to
    /// userspace, whose engines still hold every channel.
    pub fn detach(&self) {
        self.kernel.detach_all();
    }
}

/// The names of the interfaces that hold `ips`.
fn interfaces_of(ips: &[IpAddr]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(format!(
            "fastpath.interfaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut found = vec![false; ips.len()];
    let mut p = ifap;
    while !p.is_null() {
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        let Some(ip) = (unsafe { sockaddr_ip(ifa.ifa_addr) }) else {
            continue;
        };
        for (i, want) in ips.iter().enumerate() {
            if *want == ip {
                found[i] = true;
                let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
                let name = name.to_string_lossy().into_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    unsafe { libc::freeifaddrs(ifap) };
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(format!(
            "fastpath.interfaces: no interface holds {}: name the interfaces",
            ips[i]
        ));
    }
    Ok(names)
}

/// The IP address of a `sockaddr`, if it is one.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match unsafe { (*sa).sa_family } as i32 {
        libc::AF_INET => {
            let s = unsafe { &*(sa as *const libc::sockaddr_in) };
            Some(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes()))
        }
        libc::AF_INET6 => {
            let s = unsafe { &*(sa as *const libc::sockaddr_in6) };
            Some(IpAddr::from(s.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

/// Whether IPv4 forwarding is on for interface `name`.
fn forwarding(name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/forwarding"))
        .is_ok_and(|v| v.trim() == "1")
}

/// One host's mirror of its engine's channels in the shared program.
pub struct HostPath {
    shared: Arc<FastPath>,
    mirror: Mirror,
    ops: Vec<Op>,
    /// Counts of each channel slot as last handed to the engine.
    seen: HashMap<u32, ChanCount>,
    /// Drops of each allocation slot as last handed to the engine.
    seen_limited: HashMap<u32, [u64; 2]>,
    /// Each allocation slot's share of the ceilings with userspace.
    shares: HashMap<u32, Share>,
    /// Channels of this host in the kernel, as last added to the total.
    counted: u64,
    times: SyncTimes,
    /// The slots a read goes over, copied out of the mirror first (the
    /// reports need `&mut self`). Kept and cleared, never dropped: a read
    /// runs once a second on every host and at reports, and with buffers
    /// already grown to the host's number of channels it allocates
    /// nothing.
    chan_slots: Vec<(AllocId, u32)>,
    alloc_slots: Vec<(AllocId, u32)>,
}

impl HostPath {
    pub fn new(shared: Arc<FastPath>, limits: &crate::engine::Limits, now: Instant) -> Self {
        let mirror = Mirror::new(
            shared.listeners.clone(),
            limits.packet_rate.into(),
            limits.bandwidth,
        );
        HostPath {
            shared,
            mirror,
            ops: Vec::new(),
            seen: HashMap::new(),
            seen_limited: HashMap::new(),
            shares: HashMap::new(),
            counted: 0,
            times: SyncTimes::new(now),
            chan_slots: Vec::new(),
            alloc_slots: Vec::new(),
        }
    }

    /// New ceilings after a reload: for allocations that enter from now
    /// on, and for those in the kernel now (their buckets start full
    /// again, as they did when they entered).
    pub fn set_ceilings(&mut self, engine: &mut Engine, limits: &crate::engine::Limits) {
        let (packet_rate, bandwidth) = (limits.packet_rate.into(), limits.bandwidth);
        // Every reload and address change sends its settings; rewriting a
        // slot starts its buckets full, a second's extra rate each time.
        if self.mirror.ceilings() == (packet_rate, bandwidth) {
            return;
        }
        self.mirror.set_ceilings(packet_rate, bandwidth);
        let mut allocs = std::mem::take(&mut self.alloc_slots);
        allocs.clear();
        allocs.extend(self.mirror.alloc_slots());
        for &(alloc, slot) in &allocs {
            // Their drops so far go to the engine before the reset.
            self.report_limited(engine, alloc, slot);
            match self.shared.kernel.ceilings(slot, packet_rate, bandwidth) {
                Ok(()) => {
                    self.seen_limited.insert(slot, [0; 2]);
                    self.shares.insert(slot, Share::from(engine, alloc));
                }
                Err(e) => tracing::debug!(target: LOG, "fast path: {e}"),
            }
        }
        self.alloc_slots = allocs;
    }

    /// Mirror one of the engine's reports; `relay` is the relayed transport
    /// address as packets arrive at it.
    pub fn grant(&mut self, engine: &mut Engine, g: &Grant, relay: SocketAddr) {
        {
            let mut pools = self.shared.pools.lock().unwrap_or_else(|e| e.into_inner());
            self.mirror.grant(g, relay, &mut pools, &mut self.ops);
        }
        if self.ops.is_empty() {
            return;
        }
        let clock = Clock::now();
        let shared = self.shared.clone();
        let k = &shared.kernel;
        // Drained, not consumed: the buffer is kept for the next report.
        let mut ops = std::mem::take(&mut self.ops);
        for op in ops.drain(..) {
            match op {
                Op::Put(key, target) => {
                    if let Err(e) = k.put(&key, &target, &clock) {
                        // Full map: this flow stays in userspace.
                        tracing::debug!(target: LOG, "fast path: {e}");
                    }
                }
                Op::Delete(key) => k.delete(&key),
                Op::Ceilings {
                    slot,
                    packet_rate,
                    bandwidth,
                } => {
                    // The slot was taken for this report's allocation.
                    self.shares.insert(slot, Share::from(engine, g.alloc));
                    if let Err(e) = k.ceilings(slot, packet_rate, bandwidth) {
                        tracing::debug!(target: LOG, "fast path: {e}");
                    }
                }
                Op::RetireChannel { slot, alloc } => {
                    self.report_channel(engine, alloc, slot);
                    self.seen.remove(&slot);
                    k.zero(slot);
                }
                Op::RetireAlloc { slot, alloc } => {
                    self.report_limited(engine, alloc, slot);
                    self.seen_limited.remove(&slot);
                    self.shares.remove(&slot);
                }
            }
        }
        self.ops = ops;
        self.count_channels();
    }

    /// When [`Self::sync`] is next due, while channels are in the kernel.
    pub fn due(&self) -> Option<Instant> {
        (self.counted > 0 || !self.seen.is_empty()).then_some(self.times.next)
    }

    /// Hand the engine what the kernel relayed since the last time, if due.
    pub fn sync(&mut self, engine: &mut Engine, now: Instant) {
        if self.times.periodic(now) {
            self.read(engine);
        }
    }

    /// For a report (metrics, sessions): hand the engine what the kernel
    /// relayed up to now, unless a read less than [`FORCED_SYNC_FLOOR`]
    /// ago did (the report then counts what that one read).
    pub fn sync_now(&mut self, engine: &mut Engine, now: Instant) {
        if self.times.forced(now) {
            self.read(engine);
        }
    }

    /// Read every slot of this host in the kernel: channel counts and
    /// allocation drops to the engine, what userspace relayed to the
    /// program.
    fn read(&mut self, engine: &mut Engine) {
        let mut chans = std::mem::take(&mut self.chan_slots);
        chans.clear();
        chans.extend(self.mirror.channel_slots());
        for &(alloc, slot) in &chans {
            self.report_channel(engine, alloc, slot);
        }
        self.chan_slots = chans;
        let mut allocs = std::mem::take(&mut self.alloc_slots);
        allocs.clear();
        allocs.extend(self.mirror.alloc_slots());
        let clock = Clock::now();
        for &(alloc, slot) in &allocs {
            self.report_limited(engine, alloc, slot);
            self.share(engine, alloc, slot, &clock);
        }
        self.alloc_slots = allocs;
    }

    /// Tell the program what allocation slot `slot` relayed in userspace
    /// since it was taken, if that grew: its buckets are debited with it.
    fn share(&mut self, engine: &Engine, alloc: AllocId, slot: u32, clock: &Clock) {
        let (Some(s), Some(now)) = (
            self.shares.get_mut(&slot),
            engine.relayed_in_userspace(alloc),
        ) else {
            return;
        };
        let since = std::array::from_fn(|i| TrafficCount {
            packets: now[i].packets.saturating_sub(s.base[i].packets),
            bytes: now[i].bytes.saturating_sub(s.base[i].bytes),
        });
        if since == s.written {
            return;
        }
        let r = self.shared.kernel.relayed_in_userspace(
            slot,
            clock.monotonic_ns,
            [since[0].packets, since[1].packets],
            [since[0].bytes, since[1].bytes],
        );
        match r {
            Ok(()) => s.written = since,
            Err(e) => tracing::debug!(target: LOG, "fast path: {e}"),
        }
    }

    fn report_channel(&mut self, engine: &mut Engine, alloc: AllocId, slot: u32) {
        let now = self.shared.kernel.count(slot);
        let was = self.seen.insert(slot, now).unwrap_or_default();
        for (i, dir) in [Direction::ToPeer, Direction::ToClient]
            .into_iter()
            .enumerate()
        {
            let packets = now.packets[i].saturating_sub(was.packets[i]);
            let bytes = now.bytes[i].saturating_sub(was.bytes[i]);
            if packets == 0 {
                continue;
            }
            self.shared.packets[i].fetch_add(packets, Ordering::Relaxed);
            self.shared.bytes[i].fetch_add(bytes, Ordering::Relaxed);
            let k = KernelRelayed {
                packets,
                bytes,
                limited: 0,
            };
            engine.kernel_relayed(alloc, dir, k);
        }
    }

    fn report_limited(&mut self, engine: &mut Engine, alloc: AllocId, slot: u32) {
        let now = self.shared.kernel.limited(slot);
        let was = self.seen_limited.insert(slot, now).unwrap_or_default();
        for (i, dir) in [Direction::ToPeer, Direction::ToClient]
            .into_iter()
            .enumerate()
        {
            let limited = now[i].saturating_sub(was[i]);
            if limited > 0 {
                let k = KernelRelayed {
                    limited,
                    ..Default::default()
                };
                engine.kernel_relayed(alloc, dir, k);
            }
        }
    }

    fn count_channels(&mut self) {
        let n = self.mirror.in_kernel() as u64;
        if n >= self.counted {
            self.shared
                .channels
                .fetch_add(n - self.counted, Ordering::Relaxed);
        } else {
            self.shared
                .channels
                .fetch_sub(self.counted - n, Ordering::Relaxed);
        }
        self.counted = n;
    }
}

/// One allocation slot's share of the ceilings with userspace: what the
/// engine had relayed for its allocation in userspace when the slot's
/// buckets were set, and what the program was last told since.
#[derive(Debug, Clone, Copy)]
struct Share {
    base: [TrafficCount; 2],
    written: [TrafficCount; 2],
}

impl Share {
    fn from(engine: &Engine, alloc: AllocId) -> Share {
        Share {
            base: engine.relayed_in_userspace(alloc).unwrap_or_default(),
            written: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of the kernel a run of reports makes, from `start`, at these
    /// offsets.
    fn forced_reads(start: Instant, at_ms: &[u64]) -> usize {
        let mut t = SyncTimes::new(start);
        at_ms
            .iter()
            .filter(|ms| t.forced(start + Duration::from_millis(**ms)))
            .count()
    }

    #[test]
    fn two_reports_within_the_floor_read_the_kernel_once() {
        let start = Instant::now();
        let floor = FORCED_SYNC_FLOOR.as_millis() as u64;
        assert_eq!(forced_reads(start, &[0, floor - 1]), 1);
        // A scraper in a tight loop: one read per floor, not per report.
        let tight: Vec<u64> = (0..1000).map(|i| i * floor / 100).collect();
        assert_eq!(forced_reads(start, &tight), 10);
    }

    #[test]
    fn a_report_after_the_floor_reads_the_kernel_again() {
        let start = Instant::now();
        let floor = FORCED_SYNC_FLOOR.as_millis() as u64;
        assert_eq!(forced_reads(start, &[0, floor]), 2);
        assert_eq!(forced_reads(start, &[0, floor - 1, floor + 1]), 2);
    }

    #[test]
    fn the_periodic_read_counts_for_the_floor_and_a_forced_one_delays_it() {
        let start = Instant::now();
        let ms = |m: u64| start + Duration::from_millis(m);
        let mut t = SyncTimes::new(start);
        assert!(!t.periodic(ms(999)));
        assert!(t.periodic(ms(1000)));
        // A report just after the periodic read shows its counts.
        assert!(!t.forced(ms(1050)));
        assert!(t.forced(ms(1100)));
        // The next periodic read is a second after the forced one.
        assert!(!t.periodic(ms(2000)));
        assert!(t.periodic(ms(2100)));
        assert_eq!(t.next, ms(3100));
    }
}
