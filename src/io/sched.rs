//! `udp_scheduling = "auto"`: when a UDP driver thread runs under
//! SCHED_BATCH and when under SCHED_OTHER, decided from its own run-queue
//! waits. Plain logic over values; the driver reads the numbers
//! ([`super::poll::RunDelay`]) and applies the answer
//! ([`super::poll::set_batch`]).
//!
//! SCHED_BATCH (sched(7)) takes the same CPU share as SCHED_OTHER, but a
//! woken batch thread never preempts the task running on its CPU. On an
//! idle host that keeps a sender on the same host (a client, an SFU, the
//! peer) running until it sleeps, so the relay and the next wakee share one
//! warm CPU instead of waking an idle one: lower latency and less CPU. When
//! other tasks keep the CPUs busy, the same rule makes every wake-up wait
//! for someone else's slice. That cost shows directly in the thread's run
//! delay (the time it spent runnable but not running), so:
//!
//! - under batch, a window whose mean wait per run exceeds
//!   [`Auto::DEMOTE`] switches to normal;
//! - under normal, mean waits below [`Auto::PROMOTE`] for the hold time
//!   switch back to batch. The hold is [`Auto::HOLD_MIN`] after the first
//!   demotion and doubles with each further one up to [`Auto::HOLD_MAX`]
//!   (a host that stays busy costs one short batch window per retry); it
//!   starts over once batch has lasted [`Auto::HOLD_MAX`].

use std::time::{Duration, Instant};

/// The two policies "auto" moves between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Normal,
    Batch,
}

/// A thread's cumulative scheduler statistics: time spent waiting on a run
/// queue, and the number of times it was put on a CPU
/// (`/proc/thread-self/schedstat`, fields 2 and 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Waits {
    pub delay: Duration,
    pub runs: u64,
}

/// The "auto" state of one thread.
#[derive(Debug)]
pub struct Auto {
    policy: Policy,
    /// Where the current measurement began.
    base: Waits,
    /// Under normal: since when every sample was calm. Under batch: since
    /// when batch holds.
    since: Option<Instant>,
    /// How long normal must stay calm before batch is tried again.
    hold: Duration,
    /// The hold after the next demotion.
    next_hold: Duration,
}

impl Auto {
    /// Mean wait per run above which batch is left: a woken relay thread
    /// queues behind other tasks' slices.
    pub const DEMOTE: Duration = Duration::from_micros(100);
    /// Mean wait per run below which the CPUs count as free.
    pub const PROMOTE: Duration = Duration::from_micros(25);
    /// Fewer runs than this make no sample; they add to the next one.
    pub const MIN_RUNS: u64 = 8;
    pub const HOLD_MIN: Duration = Duration::from_secs(1);
    pub const HOLD_MAX: Duration = Duration::from_secs(64);

    /// Begin under batch (nothing says the host is busy) with `now` and the
    /// thread's counters `w`.
    pub fn new(now: Instant, w: Waits) -> Auto {
        Auto {
            policy: Policy::Batch,
            base: w,
            since: Some(now),
            hold: Self::HOLD_MIN,
            next_hold: Self::HOLD_MIN,
        }
    }

    #[cfg(test)]
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Feed the thread's counters at `now`; returns the policy to switch
    /// to, if it changes.
    pub fn sample(&mut self, now: Instant, w: Waits) -> Option<Policy> {
        let runs = w.runs.saturating_sub(self.base.runs);
        if runs < Self::MIN_RUNS {
            return None;
        }
        let mean = w.delay.saturating_sub(self.base.delay) / runs as u32;
        self.base = w;
        match self.policy {
            Policy::Batch => {
                let held = self.since.map_or(Duration::ZERO, |s| now - s);
                if mean > Self::DEMOTE {
                    self.hold = self.next_hold;
                    self.next_hold = (self.hold * 2).min(Self::HOLD_MAX);
                    self.policy = Policy::Normal;
                    self.since = None;
                    return Some(Policy::Normal);
                }
                if held >= Self::HOLD_MAX {
                    self.next_hold = Self::HOLD_MIN;
                }
                None
            }
            Policy::Normal => {
                if mean >= Self::PROMOTE {
                    self.since = None;
                    return None;
                }
                let since = *self.since.get_or_insert(now);
                if now - since < self.hold {
                    return None;
                }
                self.policy = Policy::Batch;
                self.since = Some(now);
                Some(Policy::Batch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    /// Counters that advance by `runs` runs of `wait` each per call.
    struct Thread {
        w: Waits,
        now: Instant,
    }

    impl Thread {
        fn new() -> Thread {
            Thread {
                w: Waits::default(),
                now: Instant::now(),
            }
        }
        /// One 50 ms window of `runs` runs waiting `wait` each.
        fn window(&mut self, auto: &mut Auto, runs: u64, wait: Duration) -> Option<Policy> {
            self.now += 50 * MS;
            self.w.runs += runs;
            self.w.delay += wait * runs as u32;
            auto.sample(self.now, self.w)
        }
    }

    #[test]
    fn batch_holds_while_waits_stay_short() {
        let mut t = Thread::new();
        let mut a = Auto::new(t.now, t.w);
        for _ in 0..100 {
            assert_eq!(t.window(&mut a, 500, 5 * US), None);
        }
        assert_eq!(a.policy(), Policy::Batch);
    }

    #[test]
    fn long_waits_leave_batch_at_once_and_calm_brings_it_back_after_the_hold() {
        let mut t = Thread::new();
        let mut a = Auto::new(t.now, t.w);
        assert_eq!(t.window(&mut a, 50, 2 * MS), Some(Policy::Normal));
        // The first calm window starts the hold (1 s after one demotion).
        let mut calm = 0;
        let back = loop {
            calm += 1;
            if let Some(p) = t.window(&mut a, 500, 10 * US) {
                break p;
            }
            assert!(calm < 100);
        };
        assert_eq!(back, Policy::Batch);
        assert_eq!(calm, 21, "1 s of 50 ms windows after the first calm one");
    }

    #[test]
    fn a_busy_window_under_normal_restarts_the_hold() {
        let mut t = Thread::new();
        let mut a = Auto::new(t.now, t.w);
        t.window(&mut a, 50, 2 * MS);
        for _ in 0..15 {
            assert_eq!(t.window(&mut a, 500, 10 * US), None);
        }
        // Normal's own waits between the thresholds count as busy too.
        assert_eq!(t.window(&mut a, 500, 40 * US), None);
        for _ in 0..20 {
            assert_eq!(t.window(&mut a, 500, 10 * US), None);
        }
        assert_eq!(t.window(&mut a, 500, 10 * US), Some(Policy::Batch));
    }

    #[test]
    fn waits_between_the_thresholds_keep_either_policy() {
        let mut t = Thread::new();
        let mut a = Auto::new(t.now, t.w);
        for _ in 0..100 {
            assert_eq!(t.window(&mut a, 500, 60 * US), None);
        }
        assert_eq!(a.policy(), Policy::Batch);
    }

    #[test]
    fn few_runs_add_up_before_they_count() {
        let mut t = Thread::new();
        let mut a = Auto::new(t.now, t.w);
        // 3 + 3 runs: no sample yet, however long they waited.
        assert_eq!(t.window(&mut a, 3, 5 * MS), None);
        assert_eq!(t.window(&mut a, 3, 5 * MS), None);
        // The 8th run completes the sample: mean (6 × 5 ms + 2 × 0) / 8.
        assert_eq!(t.window(&mut a, 2, Duration::ZERO), Some(Policy::Normal));
    }

    #[test]
    fn the_hold_doubles_per_demotion_up_to_the_cap_and_resets_after_a_long_batch() {
        let mut t = Thread::new();
        let mut a = Auto::new(t.now, t.w);
        // Each round: demote, then count calm windows until batch returns.
        let mut holds = Vec::new();
        for _ in 0..8 {
            assert_eq!(t.window(&mut a, 50, 2 * MS), Some(Policy::Normal));
            let mut n = 0u32;
            while t.window(&mut a, 500, 10 * US).is_none() {
                n += 1;
                assert!(n < 2000);
            }
            holds.push(50 * MS * n);
        }
        let secs: Vec<u64> = holds.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 64]);
        // Batch lasting the cap resets the hold: the next retry is 1 s away.
        for _ in 0..(64 * 20) {
            assert_eq!(t.window(&mut a, 500, 5 * US), None);
        }
        assert_eq!(t.window(&mut a, 50, 2 * MS), Some(Policy::Normal));
        let mut n = 0u32;
        while t.window(&mut a, 500, 10 * US).is_none() {
            n += 1;
        }
        assert_eq!(n, 20);
    }
}
