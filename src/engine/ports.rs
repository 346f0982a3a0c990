//! The pool of relay ports one engine may hand out.

use std::collections::VecDeque;

use crate::addr::RelayPort;

/// Free relay ports, in shuffled order; a released port goes to the back so
/// that it is reused last (stale peer traffic then finds nobody).
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    /// One bit per port: set while the port is in `free`.
    is_free: Box<[u64]>,
}

impl PortPool {
    /// A pool of `ports`, shuffled with `seed` (RFC 8656 §7.2 asks for
    /// unpredictable relay ports).
    pub fn new(mut ports: Vec<u16>, seed: u64) -> Self {
        let mut x = seed | 1;
        for i in (1..ports.len()).rev() {
            // xorshift64*: good enough to shuffle, not used for secrets.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ports.swap(i, (r % (i as u64 + 1)) as usize);
        }
        let mut is_free = vec![0u64; 1024].into_boxed_slice();
        for &p in &ports {
            is_free[p as usize / 64] |= 1 << (p % 64);
        }
        PortPool {
            free: ports.into(),
            is_free,
        }
    }

    /// Take a free port, an even one if `even` (RFC 8656 §14.6 EVEN-PORT).
    pub fn take(&mut self, even: bool) -> Option<RelayPort> {
        let p = if even {
            let i = self.free.iter().position(|p| p % 2 == 0)?;
            self.free.remove(i)?
        } else {
            self.free.pop_front()?
        };
        self.mark(p, false);
        Some(RelayPort(p))
    }

    fn mark(&mut self, p: u16, free: bool) {
        let (w, b) = (p as usize / 64, 1u64 << (p % 64));
        if free {
            self.is_free[w] |= b;
        } else {
            self.is_free[w] &= !b;
        }
    }

    fn free_bit(&self, p: u16) -> bool {
        self.is_free[p as usize / 64] & (1 << (p % 64)) != 0
    }

    /// Take an even port and the odd one after it (EVEN-PORT with the R
    /// bit, RFC 8656 §14.6: the next-higher port is reserved).
    pub fn take_pair(&mut self) -> Option<(RelayPort, RelayPort)> {
        // One pass over the free list, the partner looked up in the bitmap.
        let i = self
            .free
            .iter()
            .position(|&p| p % 2 == 0 && p < u16::MAX && self.free_bit(p + 1))?;
        let even = self.free.remove(i)?;
        let j = self.free.iter().position(|&p| p == even + 1)?;
        let odd = self.free.remove(j)?;
        self.mark(even, false);
        self.mark(odd, false);
        Some((RelayPort(even), RelayPort(odd)))
    }

    /// Give a port back.
    pub fn release(&mut self, port: RelayPort) {
        self.mark(port.0, true);
        self.free.push_back(port.0);
    }

    pub fn len(&self) -> usize {
        self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_each_port_once() {
        let mut p = PortPool::new((100..110).collect(), 7);
        let mut got: Vec<u16> = std::iter::from_fn(|| p.take(false).map(|r| r.0)).collect();
        got.sort();
        assert_eq!(got, (100..110).collect::<Vec<_>>());
        assert!(p.take(false).is_none());
        p.release(RelayPort(105));
        p.release(RelayPort(104));
        assert_eq!(p.take_pair(), Some((RelayPort(104), RelayPort(105))));
        p.release(RelayPort(105));
        assert!(p.take(true).is_none());
        assert_eq!(p.take(false), Some(RelayPort(105)));
    }
}
