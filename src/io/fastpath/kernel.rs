//! The XDP program (bpf/relay.bpf.c, compiled by build.rs) loaded with
//! libbpf, its maps, and its attachments: BPF links, which the kernel
//! takes down with the last descriptor, so a process that dies, however
//! it dies, leaves nothing attached.

use std::ffi::CString;
use std::net::SocketAddr;
use std::time::Instant;

use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, Object, ObjectBuilder};

use super::mirror::{FlowKey, FlowTarget};
use super::{AttachMode, ChanCount, Clock};

/// The program's object file, as build.rs compiled it.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/relay.bpf.o"));

/// The entries of the program's array maps (MAX_CHANNELS in the C).
pub const SLOTS: u32 = 65_536;

/// The loaded program, its maps and its links.
pub struct Kernel {
    object: Object,
    flows: MapHandle,
    counts: MapHandle,
    limits: MapHandle,
    relayed: MapHandle,
    links: std::sync::Mutex<Vec<Link>>,
}

impl Kernel {
    /// Load the program and its maps (not attached anywhere).
    pub fn load() -> Result<Kernel, String> {
        Kernel::load_as(false)
    }

    /// Load it; `unit_test`: with the route lookup off, for
    /// BPF_PROG_TEST_RUN (frames go back out with fixed MACs).
    pub fn load_as(unit_test: bool) -> Result<Kernel, String> {
        let mut open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(|e| format!("opening the XDP program: {e}"))?;
        if unit_test {
            let mut rodata = open
                .maps_mut()
                .find(|m| m.name().to_string_lossy().ends_with(".rodata"))
                .ok_or("the XDP program has no .rodata")?;
            let v = rodata.initial_value_mut().ok_or("no .rodata value")?;
            v[..4].copy_from_slice(&1u32.to_ne_bytes());
        }
        let object = open.load().map_err(|e| {
            format!("loading the XDP program (needs CAP_BPF and CAP_NET_ADMIN): {e}")
        })?;
        let map = |name: &str| -> Result<MapHandle, String> {
            let m = object
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| format!("the XDP program has no map {name}"))?;
            MapHandle::try_from(&m).map_err(|e| format!("map {name}: {e}"))
        };
        Ok(Kernel {
            flows: map("flows")?,
            counts: map("chan_counts")?,
            limits: map("alloc_limits")?,
            relayed: map("alloc_relayed")?,
            links: std::sync::Mutex::new(Vec::new()),
            object,
        })
    }

    fn program(&self) -> libbpf_rs::ProgramMut<'_> {
        self.object
            .progs_mut()
            .next()
            .expect("the object has its program")
    }

    /// Attach to interface `name` through a BPF link: native XDP where the
    /// driver has it, generic otherwise.
    pub fn attach(&self, name: &str) -> Result<AttachMode, String> {
        let c = CString::new(name).map_err(|_| format!("{name:?}: not an interface name"))?;
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            return Err(format!(
                "interface {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let link = self
            .program()
            .attach_xdp(index as i32)
            .map_err(|e| format!("attaching XDP to {name}: {e}"))?;
        let mode = query_mode(index as i32);
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(link);
        Ok(mode)
    }

    /// Detach from every interface (packets go to userspace from now on).
    pub fn detach_all(&self) {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn put(&self, k: &FlowKey, t: &FlowTarget, clock: &Clock) -> Result<(), String> {
        self.flows
            .update(&key_bytes(k), &target_bytes(t, clock), MapFlags::ANY)
            .map_err(|e| format!("flow update: {e}"))
    }

    pub fn delete(&self, k: &FlowKey) {
        // Absent is fine: it was never put (a failed update) or is gone.
        let _ = self.flows.delete(&key_bytes(k));
    }

    /// Reset allocation slot `slot` with these ceilings: the program fills
    /// its buckets at its first packet.
    pub fn ceilings(&self, slot: u32, packet_rate: u64, bandwidth: u64) -> Result<(), String> {
        // Nothing relayed in userspace yet for the slot's new allocation.
        self.relayed_in_userspace(slot, 0, [0; 2], [0; 2])?;
        // Past this a bucket's arithmetic would overflow: no ceiling then.
        const MAX_RATE: u64 = 10_000_000_000;
        let clamp = |r: u64| if r > MAX_RATE { 0 } else { r };
        let mut v = [0u8; LIMIT_LEN];
        v[8..16].copy_from_slice(&clamp(packet_rate).to_ne_bytes());
        v[16..24].copy_from_slice(&clamp(bandwidth).to_ne_bytes());
        // Under the entry's lock, as the program updates it: a packet of
        // the slot's last allocation still in flight on another CPU must
        // see the old buckets or the new ones, never half of each.
        self.limits
            .update(&slot.to_ne_bytes(), &v, MapFlags::LOCK)
            .map_err(|e| format!("ceilings update: {e}"))
    }

    /// What allocation slot `slot`'s allocation relayed in userspace since
    /// its ceilings were set (packets and bytes by direction), as of
    /// `at_ns` (the program's clock): the program takes each new amount
    /// from the slot's buckets, so that both paths share one ceiling.
    pub fn relayed_in_userspace(
        &self,
        slot: u32,
        at_ns: u64,
        packets: [u64; 2],
        bytes: [u64; 2],
    ) -> Result<(), String> {
        let mut v = [0u8; RELAYED_LEN];
        v[8..16].copy_from_slice(&at_ns.to_ne_bytes());
        for (i, w) in [packets[0], packets[1], bytes[0], bytes[1]]
            .iter()
            .enumerate()
        {
            v[16 + i * 8..24 + i * 8].copy_from_slice(&w.to_ne_bytes());
        }
        // Under the entry's lock, as the program reads it.
        self.relayed
            .update(&slot.to_ne_bytes(), &v, MapFlags::LOCK)
            .map_err(|e| format!("relayed update: {e}"))
    }

    /// The counts of channel slot `slot`.
    pub fn count(&self, slot: u32) -> ChanCount {
        // Into a buffer on the stack: a host reads every slot at each sync.
        let mut v = [0u8; 32];
        let found = self
            .counts
            .lookup_into(&slot.to_ne_bytes(), &mut v, MapFlags::ANY);
        let Ok(true) = found else {
            return ChanCount::default();
        };
        let w = |i: usize| u64::from_ne_bytes(v[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        ChanCount {
            packets: [w(0), w(1)],
            bytes: [w(2), w(3)],
        }
    }

    /// Zero channel slot `slot`'s counts (its flows are gone).
    pub fn zero(&self, slot: u32) {
        let _ = self
            .counts
            .update(&slot.to_ne_bytes(), &[0u8; 32], MapFlags::ANY);
    }

    /// Packets allocation slot `slot` dropped over its ceilings, by
    /// direction.
    pub fn limited(&self, slot: u32) -> [u64; 2] {
        let mut v = [0u8; LIMIT_LEN];
        // Under the entry's lock, as the program counts them.
        let found = self
            .limits
            .lookup_into(&slot.to_ne_bytes(), &mut v, MapFlags::LOCK);
        let Ok(true) = found else {
            return [0; 2];
        };
        let w = |at: usize| u64::from_ne_bytes(v[at..at + 8].try_into().expect("8 bytes"));
        [w(LIMIT_LEN - 16), w(LIMIT_LEN - 8)]
    }

    /// Run the program once on `frame` (BPF_PROG_TEST_RUN, no interface):
    /// its verdict and the frame as it left.
    pub fn test_run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
        let mut out = vec![0u8; frame.len() + 64];
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let o = self
            .program()
            .test_run(input)
            .map_err(|e| format!("test run: {e}"))?;
        let ret = o.return_value;
        let len = o.data.map_or(0, |d| d.len());
        out.truncate(len);
        Ok((ret, out))
    }
}

/// How XDP runs on interface `index`, as the kernel reports it.
fn query_mode(index: i32) -> AttachMode {
    let mut opts: libbpf_rs::libbpf_sys::bpf_xdp_query_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of_val(&opts) as _;
    let rc = unsafe { libbpf_rs::libbpf_sys::bpf_xdp_query(index, 0, &mut opts) };
    match (rc, opts.attach_mode as u32) {
        (0, libbpf_rs::libbpf_sys::XDP_ATTACHED_DRV) => AttachMode::Native,
        (0, libbpf_rs::libbpf_sys::XDP_ATTACHED_SKB) => AttachMode::Generic,
        (0, libbpf_rs::libbpf_sys::XDP_ATTACHED_HW) => AttachMode::Native,
        _ => AttachMode::Generic,
    }
}

/// sizeof(struct alloc_limit).
const LIMIT_LEN: usize = 168;
/// sizeof(struct alloc_relayed).
const RELAYED_LEN: usize = 48;

/// An address as the program keys it: IPv4 as `::ffff:a.b.c.d`.
fn ip16(a: SocketAddr) -> [u8; 16] {
    match a {
        SocketAddr::V4(v) => v.ip().to_ipv6_mapped().octets(),
        SocketAddr::V6(v) => v.ip().octets(),
    }
}

/// struct flow_key.
pub fn key_bytes(k: &FlowKey) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[0..16].copy_from_slice(&ip16(k.src));
    b[16..32].copy_from_slice(&ip16(k.dst));
    b[32..34].copy_from_slice(&k.src.port().to_be_bytes());
    b[34..36].copy_from_slice(&k.dst.port().to_be_bytes());
    b[36..38].copy_from_slice(&k.channel.to_be_bytes());
    b
}

/// struct flow_target, its expiry on the program's clock.
pub fn target_bytes(t: &FlowTarget, clock: &Clock) -> [u8; 56] {
    let mut b = [0u8; 56];
    b[0..16].copy_from_slice(&ip16(t.src));
    b[16..32].copy_from_slice(&ip16(t.dst));
    b[32..34].copy_from_slice(&t.src.port().to_be_bytes());
    b[34..36].copy_from_slice(&t.dst.port().to_be_bytes());
    b[36..38].copy_from_slice(&t.channel.to_be_bytes());
    b[40..44].copy_from_slice(&t.chan_slot.to_ne_bytes());
    b[44..48].copy_from_slice(&t.alloc_slot.to_ne_bytes());
    b[48..56].copy_from_slice(&clock.monotonic_ns(t.expires).to_ne_bytes());
    b
}

impl Clock {
    /// Now, on both clocks.
    pub fn now() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Clock {
            instant: Instant::now(),
            monotonic_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }
}

#[cfg(test)]
mod tests;
