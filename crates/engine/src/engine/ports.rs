//! The relay ports of the whole server: one pool that every engine (UDP
//! shard or stream worker) takes from, so that clients of any transport can
//! use the whole `relay.ports` range.
//!
//! A port is one bit in a table of atomics per relay address; an engine
//! owns a port from the moment its compare-and-swap clears that bit until
//! it sets the bit again. Only the control path (Allocate, and the end of
//! an allocation or reservation) touches the pool: no lock, no allocation,
//! and the data path never comes here.
//!
//! The choice is random (RFC 8656 §7.2 asks for unpredictable relay
//! ports): a take starts at a random port of the range and gives the first
//! free one from there, wrapping round. That was chosen over leasing chunks
//! of ports to each engine because a chunk held by an idle engine is a
//! chunk another engine cannot use: with one table, the last free port is
//! free for everyone, and exhaustion (508) means the range is full.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::addr::RelayPort;

/// Words of a table with one bit per port number (the pool's and the
/// live relay ports' in [`super::quota::ServerState`]).
pub(super) const WORDS: usize = 65_536 / 64;
/// The even ports of a word (bit `i` is port `64 * word + i`).
const EVEN: u64 = 0x5555_5555_5555_5555;
/// How many times one word is retried when other engines keep changing it;
/// past that the take moves on to the next word.
const CAS_TRIES: usize = 64;

/// One relay address of the server, as the pool knows it: the first half
/// of the key (relay address, port) the pool hands out. [`Relay::MAIN`] is
/// the first configured relay address together with its IPv6 twin when
/// there is one, and each further one (`relay.address` as a list) is a
/// `Relay` of its own, with its IPv6 twin if it has one. An address and
/// its twin draw from one set of port numbers, as they always have: a
/// dual-stack allocation gets two different ports of one `Relay`. Every
/// relay address has the same range, `relay.ports`
/// ([`PortPool::join_like`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Relay(pub u8);

impl Relay {
    /// The first configured relay address (and its IPv6 twin).
    pub const MAIN: Relay = Relay(0);
}

/// How many relay addresses the pool keys at most (`relay.address`
/// lists at most this many).
pub const MAX_RELAYS: usize = 32;

/// The ports of one relay address.
#[derive(Debug)]
struct Ports {
    /// Set once for each port of the range ([`PortPool::join`]), never cleared.
    member: Box<[AtomicU64]>,
    /// Set while the port is free: always within `member`.
    free: Box<[AtomicU64]>,
    /// The lowest and highest word that holds a member, so that a take
    /// scans the range and not the whole port space.
    first: AtomicUsize,
    last: AtomicUsize,
}

impl Ports {
    fn new() -> Self {
        let words = || (0..WORDS).map(|_| AtomicU64::new(0)).collect();
        Ports {
            member: words(),
            free: words(),
            first: AtomicUsize::new(WORDS),
            last: AtomicUsize::new(0),
        }
    }

    /// The words that hold members: `(first, count)`, or `None` when empty.
    fn span(&self) -> Option<(usize, usize)> {
        let (first, last) = (
            self.first.load(Ordering::Relaxed),
            self.last.load(Ordering::Relaxed),
        );
        (first <= last).then(|| (first, last - first + 1))
    }
}

/// Every relay port of the server, keyed by (relay address, port).
///
/// Relaxed atomics suffice: whoever clears a port's bit owns the port, and
/// the read-modify-writes of one word are ordered among themselves; a port
/// carries no other memory between engines.
/// A relay's tables (16 KiB) are made when it first joins, so that an
/// unused relay key costs a pointer.
#[derive(Debug)]
pub struct PortPool {
    relays: Box<[OnceLock<Ports>]>,
}

impl Default for PortPool {
    /// A pool for up to [`MAX_RELAYS`] relay addresses.
    fn default() -> Self {
        PortPool::new(MAX_RELAYS)
    }
}

impl PortPool {
    /// An empty pool for `relays` relay addresses (`Relay(0)` to
    /// `Relay(relays - 1)`); ports come in with [`PortPool::join`].
    pub fn new(relays: usize) -> Self {
        PortPool {
            relays: (0..relays.max(1)).map(|_| OnceLock::new()).collect(),
        }
    }

    fn of(&self, relay: Relay) -> &Ports {
        self.relays[relay.0 as usize].get_or_init(Ports::new)
    }

    /// Add the ports of `like` to `relay`, free, as [`PortPool::join`]
    /// does: every relay address has the range of the first.
    pub fn join_like(&self, relay: Relay, like: Relay) {
        let from = self.of(like);
        let Some((first, count)) = from.span() else {
            return;
        };
        let ports: Vec<u16> = (first..first + count)
            .flat_map(|w| {
                let bits = from.member[w].load(Ordering::Relaxed);
                (0..64u16)
                    .filter(move |b| bits & (1 << b) != 0)
                    .map(move |b| (w * 64) as u16 + b)
            })
            .collect();
        self.join(relay, &ports);
    }

    /// Add `ports` of `relay` to the pool, free. A port already in the pool
    /// stays as it is (taken or free), so every engine may join the same
    /// range.
    pub fn join(&self, relay: Relay, ports: &[u16]) {
        let r = self.of(relay);
        for &p in ports {
            let (w, bit) = (p as usize / 64, 1u64 << (p % 64));
            // The span first, so that a taker never misses a free port.
            r.first.fetch_min(w, Ordering::Relaxed);
            r.last.fetch_max(w, Ordering::Relaxed);
            if r.member[w].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
                r.free[w].fetch_or(bit, Ordering::Relaxed);
            }
        }
    }

    /// Take a free port of `relay`, an even one if `even` (RFC 8656 §14.6
    /// EVEN-PORT). `random` picks where the search starts.
    pub fn take(&self, relay: Relay, even: bool, random: u64) -> Option<RelayPort> {
        let want = if even { EVEN } else { !0 };
        self.search(relay, random, |word, mask| take_one(word, mask & want))
            .map(RelayPort)
    }

    /// Take an even port of `relay` and the odd one after it, together
    /// (EVEN-PORT with the R bit, RFC 8656 §14.6: the next-higher port is
    /// reserved). Both are in one word, so one compare-and-swap takes both.
    pub fn take_pair(&self, relay: Relay, random: u64) -> Option<(RelayPort, RelayPort)> {
        self.search(relay, random, take_two)
            .map(|even| (RelayPort(even), RelayPort(even + 1)))
    }

    /// From a random port of the range onwards, wrapping round: the first
    /// port that `grab` takes from its word, masked to the ports at or past
    /// the start in the first word visited and before it on the way back.
    fn search(
        &self,
        relay: Relay,
        random: u64,
        grab: impl Fn(&AtomicU64, u64) -> Option<u32>,
    ) -> Option<u16> {
        let r = self.of(relay);
        let (first, count) = r.span()?;
        let start = (random % (count as u64 * 64)) as usize;
        let (w0, b0) = (start / 64, start % 64);
        // count + 1 visits: the start word's high part first, its low part last.
        for i in 0..=count {
            let w = first + (w0 + i) % count;
            let mask = match i {
                0 => !0u64 << b0,
                _ if i == count => !(!0u64 << b0),
                _ => !0,
            };
            if let Some(b) = grab(&r.free[w], mask) {
                return Some((w * 64) as u16 + b as u16);
            }
        }
        None
    }

    /// Give a port of `relay` back.
    pub fn release(&self, relay: Relay, port: RelayPort) {
        let r = self.of(relay);
        let (w, bit) = (port.0 as usize / 64, 1u64 << (port.0 % 64));
        debug_assert!(
            r.member[w].load(Ordering::Relaxed) & bit != 0,
            "{} is not a relay port",
            port.0
        );
        let was = r.free[w].fetch_or(bit, Ordering::Relaxed);
        debug_assert!(was & bit == 0, "{} released twice", port.0);
    }

    /// Whether `relay` has at least `n` free ports now (counting stops
    /// there).
    pub fn free_at_least(&self, relay: Relay, n: usize) -> bool {
        let r = self.of(relay);
        let Some((first, count)) = r.span() else {
            return n == 0;
        };
        let mut seen = 0;
        for w in &r.free[first..first + count] {
            seen += w.load(Ordering::Relaxed).count_ones() as usize;
            if seen >= n {
                return true;
            }
        }
        seen >= n
    }

    /// Free ports of `relay` now.
    pub fn free(&self, relay: Relay) -> usize {
        let r = self.of(relay);
        let Some((first, count)) = r.span() else {
            return 0;
        };
        r.free[first..first + count]
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum()
    }
}

/// Clear the lowest bit of `word` within `want` that is set; which one.
fn take_one(word: &AtomicU64, want: u64) -> Option<u32> {
    take_where(word, |cur| cur & want, 1)
}

/// Clear the lowest even bit of `word` within `want` that is set together
/// with the bit after it; the even one.
fn take_two(word: &AtomicU64, want: u64) -> Option<u32> {
    take_where(word, |cur| cur & (cur >> 1) & EVEN & want, 0b11)
}

/// Clear `bits` shifted to the lowest bit of `candidates(word)`, in one
/// compare-and-swap (retried while other engines change the word); that
/// bit's number.
fn take_where(word: &AtomicU64, candidates: impl Fn(u64) -> u64, bits: u64) -> Option<u32> {
    let mut cur = word.load(Ordering::Relaxed);
    for _ in 0..CAS_TRIES {
        let found = candidates(cur);
        if found == 0 {
            return None;
        }
        let b = found.trailing_zeros();
        match word.compare_exchange_weak(
            cur,
            cur & !(bits << b),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(b),
            Err(seen) => cur = seen,
        }
    }
    None
}

/// xorshift64*: the next of a sequence of unpredictable-enough numbers for
/// where a port search starts (the state comes from the system's
/// randomness in the server); not for secrets.
pub fn next_random(state: &mut u64) -> u64 {
    let mut x = *state | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    const M: Relay = Relay::MAIN;

    fn pool(ports: impl IntoIterator<Item = u16>) -> PortPool {
        let p = PortPool::default();
        p.join(M, &ports.into_iter().collect::<Vec<_>>());
        p
    }

    #[test]
    fn hands_out_each_port_once() {
        let p = pool(100..110);
        let mut seed = 7;
        let mut got: Vec<u16> =
            std::iter::from_fn(|| p.take(M, false, next_random(&mut seed)).map(|r| r.0)).collect();
        got.sort();
        assert_eq!(got, (100..110).collect::<Vec<_>>());
        assert!(p.take(M, false, 0).is_none());
        assert_eq!(p.free(M), 0);
        p.release(M, RelayPort(105));
        p.release(M, RelayPort(104));
        assert_eq!(p.free(M), 2);
        assert_eq!(
            p.take_pair(M, 12345),
            Some((RelayPort(104), RelayPort(105)))
        );
        p.release(M, RelayPort(105));
        assert!(p.take(M, true, 3).is_none(), "105 is odd");
        assert!(p.take_pair(M, 3).is_none(), "104 is taken");
        assert_eq!(p.take(M, false, 99), Some(RelayPort(105)));
    }

    #[test]
    fn even_ports_and_pairs_across_word_edges() {
        // 127 and 128 are in different words: not a pair (128 is even, 129
        // is not in the range).
        let p = pool([127, 128]);
        assert!(p.take_pair(M, 0).is_none());
        assert_eq!(p.take(M, true, 0), Some(RelayPort(128)));
        assert!(p.take(M, true, 0).is_none());
        assert_eq!(p.take(M, false, 0), Some(RelayPort(127)));
        // Every start position finds the one pair of a range.
        let p = pool([63, 64, 65, 66, 191]);
        for r in 0..400 {
            let got = p.take_pair(M, r);
            assert_eq!(got, Some((RelayPort(64), RelayPort(65))), "start {r}");
            p.release(M, RelayPort(64));
            p.release(M, RelayPort(65));
        }
    }

    #[test]
    fn every_start_finds_the_last_free_port() {
        let range: Vec<u16> = (49_000..49_300).collect();
        let p = pool(range.iter().copied());
        for &last in &[49_000u16, 49_063, 49_064, 49_151, 49_299] {
            // Take everything but `last`, then search from every start.
            let taken: Vec<u16> = range.iter().copied().filter(|&q| q != last).collect();
            for &q in &taken {
                let (w, bit) = (q as usize / 64, 1u64 << (q % 64));
                p.of(M).free[w].fetch_and(!bit, Ordering::Relaxed);
            }
            for r in 0..512 {
                assert_eq!(p.take(M, false, r), Some(RelayPort(last)), "start {r}");
                p.release(M, RelayPort(last));
            }
            for &q in &taken {
                p.release(M, RelayPort(q));
            }
            assert_eq!(p.free(M), range.len());
        }
    }

    #[test]
    fn the_start_is_spread_over_the_range() {
        // A fresh range: the first port taken is where the search starts.
        let mut seed = 0x1234_5678;
        let firsts: HashSet<u16> = (0..200)
            .map(|_| {
                let p = pool(50_000..50_100);
                p.take(M, false, next_random(&mut seed)).unwrap().0
            })
            .collect();
        assert!(firsts.len() > 60, "{} distinct first ports", firsts.len());
    }

    #[test]
    fn joining_twice_keeps_what_is_taken() {
        let p = pool(10..20);
        let a = p.take(M, false, 4).unwrap();
        p.join(M, &(10..30).collect::<Vec<_>>());
        assert_eq!(p.free(M), 19, "{} stays taken, 20-29 joined", a.0);
        let rest: Vec<RelayPort> = (0..19).filter_map(|r| p.take(M, false, r)).collect();
        assert_eq!(rest.len(), 19);
        assert!(!rest.contains(&a));
    }

    #[test]
    fn relays_are_separate() {
        let p = PortPool::new(2);
        p.join(Relay(0), &[7000]);
        p.join(Relay(1), &[7000, 7001]);
        assert_eq!(p.take(Relay(0), false, 0), Some(RelayPort(7000)));
        assert_eq!(p.take(Relay(1), false, 0), Some(RelayPort(7000)));
        assert_eq!((p.free(Relay(0)), p.free(Relay(1))), (0, 1));
        assert!(p.take(Relay(0), false, 1).is_none());
    }

    #[test]
    fn a_relay_joins_the_range_of_another() {
        let p = PortPool::default();
        p.join(Relay(0), &[7000, 7001, 7100]);
        let a = p.take(Relay(0), false, 0).unwrap();
        p.join_like(Relay(3), Relay(0));
        p.join_like(Relay(3), Relay(0));
        assert_eq!(
            (p.free(Relay(0)), p.free(Relay(3))),
            (2, 3),
            "{} taken at 0 only",
            a.0
        );
        let mut got: Vec<u16> = (0..3)
            .filter_map(|r| p.take(Relay(3), false, r))
            .map(|q| q.0)
            .collect();
        got.sort_unstable();
        assert_eq!(got, [7000, 7001, 7100]);
        assert_eq!(p.free(Relay(1)), 0, "never joined");
    }

    #[test]
    fn threads_share_the_range_and_get_each_port_once() {
        // Four engines on four threads take single ports and pairs until
        // the range is empty; every port is handed out exactly once, then
        // all come back.
        const N: usize = 2_000;
        let range: Vec<u16> = (40_000..40_000 + N as u16).collect();
        let p = Arc::new(pool(range.iter().copied()));
        let go = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (p, go) = (p.clone(), go.clone());
                std::thread::spawn(move || {
                    let mut seed = t + 1;
                    go.wait();
                    let mut got = Vec::new();
                    for i in 0..N {
                        let r = next_random(&mut seed);
                        if i % 3 == 0
                            && let Some((a, b)) = p.take_pair(M, r)
                        {
                            assert_eq!((a.0 % 2, b.0), (0, a.0 + 1));
                            got.extend([a.0, b.0]);
                            continue;
                        }
                        match p.take(M, i % 5 == 0, r) {
                            Some(q) => got.push(q.0),
                            None if p.free(M) == 0 => break,
                            None => {}
                        }
                    }
                    got
                })
            })
            .collect();
        let got: Vec<Vec<u16>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut all: Vec<u16> = got.concat();
        all.sort_unstable();
        assert_eq!(all, range, "each port exactly once, none left over");
        assert_eq!(p.free(M), 0);
        for q in all {
            p.release(M, RelayPort(q));
        }
        assert_eq!(p.free(M), range.len());
    }
}
