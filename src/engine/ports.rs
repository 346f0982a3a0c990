//! The pool of relay ports one engine may hand out.

use std::collections::VecDeque;

use crate::addr::RelayPort;

/// Free relay ports, in shuffled order; a released port goes to the back so
/// that it is reused last (stale peer traffic then finds nobody).
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
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
        PortPool { free: ports.into() }
    }

    /// Take a free port, an even one if `even` (RFC 8656 §14.6 EVEN-PORT).
    pub fn take(&mut self, even: bool) -> Option<RelayPort> {
        if !even {
            return self.free.pop_front().map(RelayPort);
        }
        let i = self.free.iter().position(|p| p % 2 == 0)?;
        self.free.remove(i).map(RelayPort)
    }

    /// Take an even port and the odd one after it (EVEN-PORT with the R
    /// bit, RFC 8656 §14.6: the next-higher port is reserved).
    pub fn take_pair(&mut self) -> Option<(RelayPort, RelayPort)> {
        let i = self
            .free
            .iter()
            .position(|&p| p % 2 == 0 && p < u16::MAX && self.free.contains(&(p + 1)))?;
        let even = self.free.remove(i)?;
        let j = self.free.iter().position(|&p| p == even + 1)?;
        let odd = self.free.remove(j)?;
        Some((RelayPort(even), RelayPort(odd)))
    }

    /// Give a port back.
    pub fn release(&mut self, port: RelayPort) {
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
