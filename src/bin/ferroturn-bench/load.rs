//! The data plane: a UDP echo peer, paced ChannelData trials measuring loss
//! and round trips, and the bounded search for the highest loss-free rate.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::net::{self, Out, Recv};

/// Socket buffers of the generator and the echo peer: they must not be
/// where packets drop.
pub const GEN_BUF: usize = 16 << 20;

/// One flow: a client address (IP_PKTINFO source on the generator socket),
/// where its ChannelData goes, and its channel number.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: SocketAddrV4,
    pub channel: u16,
}

/// A UDP echo peer on its own thread: recvmmsg, sendmmsg back to each
/// source. Stops when dropped.
pub struct Echo {
    pub addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn start() -> std::io::Result<Echo> {
        Echo::start_on(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 0))
    }

    /// An echo peer on `addr` (its socket lives in the calling thread's
    /// network namespace).
    pub fn start_on(addr: SocketAddrV4) -> std::io::Result<Echo> {
        let s = net::udp(addr, GEN_BUF, Some(Duration::from_millis(100)))?;
        let addr = match s.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                let fd = s.as_raw_fd();
                let mut rx = Recv::new(net::BATCH);
                while !st.load(Ordering::Relaxed) {
                    let n = rx.recv(fd, 0, net::BATCH, 0, libc::MSG_WAITFORONE);
                    if n == 0 {
                        continue;
                    }
                    let outs: Vec<Out> = (0..n)
                        .map(|i| Out {
                            src: None,
                            dst: rx.from[i],
                            data: &rx.bufs[i][..rx.lens[i]],
                        })
                        .collect();
                    net::send_batch(fd, &outs);
                }
            })?;
        Ok(Echo {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Trial {
    pub target: f64,
    /// Achieved send rate (packets/s).
    pub rate: f64,
    pub sent: u64,
    pub received: u64,
    /// Round-trip times in ns, when asked for.
    pub rtts: Vec<u64>,
}

impl Trial {
    /// Loss-free at the rate asked for: ≤ 0.1 % lost, and the sender
    /// within 3 % of its target (short of it, the generator is the limit).
    pub fn passed(&self) -> bool {
        self.loss() <= MAX_LOSS && self.rate >= 0.97 * self.target
    }

    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - self.received.min(self.sent) as f64 / self.sent as f64
    }
}

const HDR: usize = 4 + 4 + 8 + 8; // channel, length, trial id, seq, send time

/// Send ChannelData round-robin over `flows` at `rate` packets/s for `dur`
/// (payload `payload` bytes), and count what comes back. Bounded: sends stop
/// at `dur`, the receiver waits at most 400 ms more.
pub fn trial(
    sock: &UdpSocket,
    flows: &[Flow],
    payload: usize,
    rate: f64,
    dur: Duration,
    want_rtt: bool,
    id: u32,
) -> Trial {
    let fd = sock.as_raw_fd();
    let payload = payload.max(HDR - 4);
    let base = Instant::now();
    let sent_total = AtomicU64::new(u64::MAX);
    let received = AtomicU64::new(0);
    let done_sending = AtomicBool::new(false);
    let mut rtts = Vec::new();
    let mut sent = 0u64;
    let mut elapsed = dur;
    std::thread::scope(|sc| {
        let rx = sc.spawn(|| {
            let mut rtts = Vec::new();
            if want_rtt {
                rtts.reserve((rate * dur.as_secs_f64()) as usize + 16);
            }
            let mut r = Recv::new(net::BATCH);
            let mut got = 0u64;
            let mut drain_end: Option<Instant> = None;
            loop {
                let n = r.recv(fd, 0, net::BATCH, 0, libc::MSG_WAITFORONE);
                let now_ns = base.elapsed().as_nanos() as u64;
                for i in 0..n {
                    let p = &r.bufs[i][..r.lens[i]];
                    if p.len() != 4 + payload
                        || u16::from_be_bytes([p[2], p[3]]) as usize != payload
                        || u32::from_be_bytes(p[4..8].try_into().unwrap()) != id
                    {
                        continue;
                    }
                    got += 1;
                    if want_rtt {
                        let t = u64::from_be_bytes(p[16..24].try_into().unwrap());
                        rtts.push(now_ns.saturating_sub(t));
                    }
                }
                received.store(got, Ordering::Relaxed);
                if done_sending.load(Ordering::Acquire) {
                    let end = *drain_end
                        .get_or_insert_with(|| Instant::now() + Duration::from_millis(400));
                    if got >= sent_total.load(Ordering::Relaxed) || Instant::now() >= end {
                        break;
                    }
                }
            }
            rtts
        });

        let mut bufs = vec![[0u8; net::SLOT]; net::BATCH];
        for b in bufs.iter_mut() {
            b[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
            b[4..8].copy_from_slice(&id.to_be_bytes());
        }
        net::precise_sleeps();
        let start = Instant::now();
        let mut flow = 0usize;
        loop {
            let el = start.elapsed();
            if el >= dur {
                elapsed = el;
                break;
            }
            let due = (rate * el.as_secs_f64()) as u64 + 1;
            if due <= sent {
                // Sleep (never spin: the server shares these cores) until
                // the next packet is due.
                let wait = (sent as f64 / rate - el.as_secs_f64()).max(0.000_001);
                std::thread::sleep(Duration::from_secs_f64(wait));
                continue;
            }
            let n = ((due - sent) as usize).min(net::BATCH);
            let now_ns = base.elapsed().as_nanos() as u64;
            let mut dsts = [(
                Ipv4Addr::UNSPECIFIED,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            ); net::BATCH];
            for i in 0..n {
                let f = &flows[flow];
                flow = (flow + 1) % flows.len();
                let b = &mut bufs[i];
                b[0..2].copy_from_slice(&f.channel.to_be_bytes());
                b[8..16].copy_from_slice(&(sent + i as u64).to_be_bytes());
                b[16..24].copy_from_slice(&now_ns.to_be_bytes());
                dsts[i] = (f.src, f.dst);
            }
            let outs: Vec<Out> = (0..n)
                .map(|i| Out {
                    src: Some(dsts[i].0),
                    dst: dsts[i].1,
                    data: &bufs[i][..4 + payload],
                })
                .collect();
            // What the kernel refused is never on the wire: not sent.
            sent += net::send_batch(fd, &outs) as u64;
        }
        sent_total.store(sent, Ordering::Relaxed);
        done_sending.store(true, Ordering::Release);
        rtts = rx.join().unwrap();
    });
    Trial {
        target: rate,
        rate: sent as f64 / elapsed.as_secs_f64(),
        sent,
        received: received.load(Ordering::Relaxed),
        rtts,
    }
}

/// Loss allowed at a "loss-free" rate.
pub const MAX_LOSS: f64 = 0.001;

/// Whether a search's log says the generator, not the server, stopped it:
/// its lowest failing rate fell short of its target without losing
/// packets. False when nothing failed.
pub fn generator_limited(log: &[Trial]) -> bool {
    log.iter()
        .filter(|t| !t.passed())
        .min_by(|a, b| a.target.total_cmp(&b.target))
        .is_some_and(|t| t.loss() <= MAX_LOSS)
}

/// The highest achieved send rate with ≤ 0.1 % loss: grow ×1.6 from
/// `start` until a trial fails, then bisect; at most `steps` trials, stops
/// when the bracket is within 5 %. A trial whose sender fell 3 % short of
/// its target counts as failed (the generator is then the limit).
pub fn search(mut run: impl FnMut(f64) -> Trial, start: f64, steps: usize) -> (f64, Vec<Trial>) {
    let mut lo = 0.0f64; // best passing achieved rate
    let mut lo_target = 0.0f64;
    let mut hi: Option<f64> = None;
    let mut g = start;
    let mut log = Vec::new();
    for _ in 0..steps {
        let t = run(g);
        let pass = t.passed();
        if pass {
            if t.rate > lo {
                lo = t.rate;
            }
            lo_target = lo_target.max(g);
        } else {
            hi = Some(hi.map_or(g, |h: f64| h.min(g)));
        }
        log.push(t);
        g = match hi {
            None => g * 1.6,
            Some(h) if lo_target == 0.0 => h / 2.0,
            Some(h) => {
                if h / lo_target < 1.05 {
                    break;
                }
                (lo_target + h) / 2.0
            }
        };
        if g < 500.0 {
            break;
        }
    }
    (lo, log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(target: f64, rate: f64, sent: u64, received: u64) -> Trial {
        Trial {
            target,
            rate,
            sent,
            received,
            rtts: Vec::new(),
        }
    }

    #[test]
    fn the_lowest_failure_says_who_stopped_a_search() {
        let ok = t(50e3, 50e3, 40_000, 40_000);
        // 80k failed short of its rate without loss: the generator.
        let short = t(80e3, 70e3, 56_000, 56_000);
        // 128k lost packets: the server (but 80k failed lower).
        let lossy = t(128e3, 127e3, 100_000, 90_000);
        assert!(generator_limited(&[
            ok.clone(),
            lossy.clone(),
            short.clone()
        ]));
        // The lowest failure lost packets: the server.
        let lossy_low = t(70e3, 70e3, 56_000, 50_000);
        assert!(!generator_limited(&[ok.clone(), short, lossy_low]));
        // Nothing failed: no limit found at all.
        assert!(!generator_limited(&[ok]));
        assert!(!generator_limited(&[]));
        let _ = lossy;
    }
}
