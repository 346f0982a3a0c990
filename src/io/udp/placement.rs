//! When UDP shards move between driver threads: the decision each driver
//! takes at the end of a load window, as plain logic over values. The
//! driver measures its load ([`super::Driver`]), asks [`decide`], and moves
//! shards as told (see [`Balance`] for the rule).

use std::time::{Duration, Instant};

/// When shards move between threads. Loads are per mille of one core,
/// measured over one load window of the thread's own CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// Load above which the driver of several shards sends the others to
    /// their own threads.
    pub split: u32,
    /// Summed load of all drivers below which the last driver holding
    /// shards hands them back to driver 0, once it stayed there for `calm`.
    pub merge: u32,
    pub calm: Duration,
}

impl Default for Balance {
    /// Split at 60 % of a core, merge under 50 % summed for a second. The
    /// merge mark is lower than the split mark: one thread does the work of
    /// two with less CPU, so a merge does not split again.
    fn default() -> Self {
        Balance {
            split: 600,
            merge: 500,
            calm: Duration::from_secs(1),
        }
    }
}

/// What one driver sees at the end of a window.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    /// This driver.
    pub id: usize,
    /// Its load over the window that ended.
    pub load: u32,
    /// How many shards each driver holds (this one's own count included).
    pub held: &'a [usize],
    /// Each driver's load over its last window (this one's included).
    pub loads: &'a [u32],
}

/// Where a driver's shards go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Nowhere.
    Stay,
    /// Each shard to its own thread: shard `i` to driver `i % threads`.
    Spread,
    /// Every shard back to driver 0.
    Merge,
}

impl Move {
    /// The driver that shard `shard` goes to, of `threads`, for a driver
    /// `from` that moves its shards this way.
    pub fn destination(self, shard: usize, from: usize, threads: usize) -> usize {
        match self {
            Move::Stay => from,
            Move::Spread => shard % threads,
            Move::Merge => 0,
        }
    }
}

/// The move of driver `w.id` after a window, under `b`, at `now`.
/// `calm_since` is the driver's own memory (since when the summed load
/// stayed under [`Balance::merge`]), updated here. Driver 0 spreads the
/// shards when it is busy; the last other driver holding shards merges them
/// back to driver 0 once all drivers together stayed calm for
/// [`Balance::calm`]; one driver merges at a time, the last first.
pub fn decide(w: Window, b: Balance, now: Instant, calm_since: &mut Option<Instant>) -> Move {
    let threads = w.held.len();
    if threads < 2 {
        return Move::Stay;
    }
    if w.id == 0 {
        return if w.load > b.split {
            Move::Spread
        } else {
            Move::Stay
        };
    }
    let last = (1..threads).rev().find(|&j| w.held[j] > 0);
    if w.held[w.id] == 0 || last != Some(w.id) {
        *calm_since = None;
        return Move::Stay;
    }
    let sum: u32 = w.loads.iter().sum();
    if sum >= b.merge {
        *calm_since = None;
        return Move::Stay;
    }
    let since = *calm_since.get_or_insert(now);
    if now.duration_since(since) >= b.calm {
        *calm_since = None;
        return Move::Merge;
    }
    Move::Stay
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The default marks, with a calm spell of 100 ms.
    fn quick() -> Balance {
        Balance {
            calm: 100 * MS,
            ..Balance::default()
        }
    }

    fn window<'a>(id: usize, load: u32, held: &'a [usize], loads: &'a [u32]) -> Window<'a> {
        Window {
            id,
            load,
            held,
            loads,
        }
    }

    #[test]
    fn driver_zero_spreads_only_above_the_split_mark() {
        let b = Balance::default();
        let t = Instant::now();
        let mut calm = None;
        let busy = window(0, 601, &[3, 0, 0], &[601, 0, 0]);
        assert_eq!(decide(busy, b, t, &mut calm), Move::Spread);
        let at_mark = window(0, 600, &[3, 0, 0], &[600, 0, 0]);
        assert_eq!(decide(at_mark, b, t, &mut calm), Move::Stay);
        // A single thread has nowhere to send shards.
        let alone = window(0, 1000, &[3], &[1000]);
        assert_eq!(decide(alone, b, t, &mut calm), Move::Stay);
        assert_eq!(Move::Spread.destination(5, 0, 3), 2);
        assert_eq!(Move::Merge.destination(5, 2, 3), 0);
        assert_eq!(Move::Stay.destination(5, 1, 3), 1);
    }

    #[test]
    fn the_last_driver_merges_after_a_calm_spell_and_no_other_does() {
        let b = quick();
        let t = Instant::now();
        let held = [1, 1, 1];
        let loads = [100, 100, 100];
        // Driver 1 is not the last holding shards: it never merges.
        let mut calm1 = Some(t);
        let w1 = window(1, 100, &held, &loads);
        assert_eq!(decide(w1, b, t + 500 * MS, &mut calm1), Move::Stay);
        assert_eq!(calm1, None);
        // Driver 2 is: calm from its first window on, merging after `calm`.
        let mut calm2 = None;
        let w2 = window(2, 100, &held, &loads);
        assert_eq!(decide(w2, b, t, &mut calm2), Move::Stay);
        assert_eq!(calm2, Some(t));
        assert_eq!(decide(w2, b, t + 99 * MS, &mut calm2), Move::Stay);
        assert_eq!(decide(w2, b, t + 100 * MS, &mut calm2), Move::Merge);
        assert_eq!(calm2, None, "a merge starts the next calm spell afresh");
        // Once driver 2 is empty, driver 1 is the last.
        let w1 = window(1, 100, &[2, 1, 0], &[100, 100, 0]);
        assert_eq!(decide(w1, b, t, &mut calm1), Move::Stay);
        assert_eq!(decide(w1, b, t + 100 * MS, &mut calm1), Move::Merge);
    }

    #[test]
    fn a_busy_spell_restarts_the_calm_clock() {
        let b = quick();
        let t = Instant::now();
        let held = [1, 1];
        let mut calm = None;
        let calm_w = window(1, 200, &held, &[200, 200]);
        let busy_w = window(1, 300, &held, &[250, 300]);
        assert_eq!(decide(calm_w, b, t, &mut calm), Move::Stay);
        // 550 summed: at or over the merge mark, the clock stops.
        assert_eq!(decide(busy_w, b, t + 60 * MS, &mut calm), Move::Stay);
        assert_eq!(calm, None);
        assert_eq!(decide(calm_w, b, t + 120 * MS, &mut calm), Move::Stay);
        assert_eq!(decide(calm_w, b, t + 219 * MS, &mut calm), Move::Stay);
        assert_eq!(decide(calm_w, b, t + 220 * MS, &mut calm), Move::Merge);
        // An empty driver never merges.
        let empty = window(1, 0, &[2, 0], &[0, 0]);
        assert_eq!(decide(empty, b, t + 999 * MS, &mut calm), Move::Stay);
    }
}
