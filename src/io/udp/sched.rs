//! `udp_scheduling = "auto"`: when a UDP driver thread runs under
//! SCHED_BATCH and when under SCHED_OTHER, decided from its own run-queue
//! waits. Plain logic over values; the driver reads the numbers
//! ([`crate::io::poll::RunDelay`]) and applies the answer
//! ([`crate::io::poll::set_batch`]).
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
//! - under batch, [`Auto::STRIKES`] samples in a row whose mean wait per
//!   run exceeds [`Auto::DEMOTE`] switch to normal (one sample may be a
//!   host stall; a busy CPU makes most samples long), and so does one
//!   sample over [`Auto::SEVERE`];
//! - under normal, mean waits below [`Auto::PROMOTE`] for the hold time
//!   switch back to batch. The hold is [`Auto::HOLD_MIN`], and doubles up
//!   to [`Auto::HOLD_MAX`] each time batch fails again within
//!   [`Auto::QUICK`] of a retry: a host that stays busy costs one short
//!   batch spell per retry.

use std::time::{Duration, Instant};

use crate::io::poll::Waits;

/// The two policies "auto" moves between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Normal,
    Batch,
}

/// The "auto" state of one thread.
#[derive(Debug)]
pub struct Auto {
    policy: Policy,
    /// Where the current sample began.
    base: Waits,
    /// Under batch: since when. Under normal: since when every sample was
    /// calm.
    since: Option<Instant>,
    /// Under batch: long samples in a row.
    strikes: u32,
    /// How long normal must stay calm before batch is tried again.
    hold: Duration,
}

impl Auto {
    /// Mean wait per run above which a sample counts against batch: a woken
    /// relay thread queues behind other tasks' slices.
    pub const DEMOTE: Duration = Duration::from_micros(50);
    /// Long samples in a row that end batch.
    pub const STRIKES: u32 = 2;
    /// Mean wait per run that ends batch at once.
    pub const SEVERE: Duration = Duration::from_millis(1);
    /// Mean wait per run below which the CPUs count as free.
    pub const PROMOTE: Duration = Duration::from_micros(25);
    /// Fewer runs than this make no sample; they add to the next one.
    pub const MIN_RUNS: u64 = 8;
    pub const HOLD_MIN: Duration = Duration::from_secs(1);
    pub const HOLD_MAX: Duration = Duration::from_secs(64);
    /// Batch that ends sooner than this after it began failed a retry.
    pub const QUICK: Duration = Duration::from_secs(2);

    /// Begin under batch (nothing says the host is busy) with `now` and the
    /// thread's counters `w`.
    pub fn new(now: Instant, w: Waits) -> Auto {
        Auto {
            policy: Policy::Batch,
            base: w,
            since: Some(now),
            strikes: 0,
            hold: Self::HOLD_MIN,
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
        let waited = w.delay.saturating_sub(self.base.delay).as_nanos();
        let mean = Duration::from_nanos((waited / u128::from(runs)) as u64);
        self.base = w;
        match self.policy {
            Policy::Batch => {
                if mean <= Self::DEMOTE {
                    self.strikes = 0;
                    return None;
                }
                self.strikes += 1;
                if self.strikes < Self::STRIKES && mean <= Self::SEVERE {
                    return None;
                }
                let lasted = self.since.map_or(Duration::ZERO, |s| now - s);
                self.hold = if lasted < Self::QUICK {
                    (self.hold * 2).min(Self::HOLD_MAX)
                } else {
                    Self::HOLD_MIN
                };
                self.policy = Policy::Normal;
                self.since = None;
                self.strikes = 0;
                Some(Policy::Normal)
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

    /// `t` and `a` after 2 s of calm batch: the next demotion is not a
    /// failed retry.
    fn settled() -> (Thread, Auto) {
        let mut t = Thread::new();
        let mut a = Auto::new(t.now, t.w);
        for _ in 0..40 {
            assert_eq!(t.window(&mut a, 500, 5 * US), None);
        }
        (t, a)
    }

    /// Busy windows (500 µs a run) until batch ends; how many it took.
    fn demote(t: &mut Thread, a: &mut Auto) -> usize {
        (1..=10)
            .find(|_| t.window(a, 50, 500 * US) == Some(Policy::Normal))
            .expect("demoted")
    }

    /// Calm windows until batch returns; the hold they made up.
    fn promote(t: &mut Thread, a: &mut Auto) -> Duration {
        let mut n = 0u32;
        while t.window(a, 500, 10 * US).is_none() {
            n += 1;
            assert!(n < 2000);
        }
        // The first calm window starts the hold, the last one ends it.
        50 * MS * n
    }

    #[test]
    fn batch_holds_while_waits_stay_under_the_demote_threshold() {
        // Short waits, and waits between PROMOTE and DEMOTE.
        for wait in [5 * US, 40 * US] {
            let (mut t, mut a) = settled();
            for _ in 0..100 {
                assert_eq!(t.window(&mut a, 500, wait), None);
            }
            assert_eq!(a.policy(), Policy::Batch);
        }
    }

    #[test]
    fn long_waits_in_two_samples_leave_batch_and_calm_brings_it_back_after_the_hold() {
        let (mut t, mut a) = settled();
        assert_eq!(demote(&mut t, &mut a), 2);
        assert_eq!(a.policy(), Policy::Normal);
        assert_eq!(promote(&mut t, &mut a), Auto::HOLD_MIN);
        assert_eq!(a.policy(), Policy::Batch);
    }

    #[test]
    fn one_long_sample_alone_is_forgiven_unless_severe() {
        let (mut t, mut a) = settled();
        for _ in 0..10 {
            assert_eq!(t.window(&mut a, 50, 500 * US), None);
            assert_eq!(t.window(&mut a, 500, 5 * US), None);
        }
        assert_eq!(a.policy(), Policy::Batch);
        assert_eq!(t.window(&mut a, 50, 2 * MS), Some(Policy::Normal));
    }

    #[test]
    fn a_busy_window_under_normal_restarts_the_hold() {
        let (mut t, mut a) = settled();
        demote(&mut t, &mut a);
        for _ in 0..15 {
            assert_eq!(t.window(&mut a, 500, 10 * US), None);
        }
        // Normal's own waits between the thresholds count as busy too.
        assert_eq!(t.window(&mut a, 500, 40 * US), None);
        assert_eq!(promote(&mut t, &mut a), Auto::HOLD_MIN);
    }

    #[test]
    fn few_runs_add_up_before_they_count() {
        let (mut t, mut a) = settled();
        // 3 + 3 runs: no sample yet, however long they waited.
        // The 8th run completes a sample, mean (6 × 0.5 ms + 2 × 0) / 8:
        // the first strike. The second sample ends batch.
        assert_eq!(t.window(&mut a, 3, 500 * US), None);
        assert_eq!(t.window(&mut a, 3, 500 * US), None);
        assert_eq!(t.window(&mut a, 2, Duration::ZERO), None);
        assert_eq!(t.window(&mut a, 8, 200 * US), Some(Policy::Normal));
    }

    #[test]
    fn the_hold_doubles_while_retries_fail_and_starts_over_after_a_lasting_batch() {
        let (mut t, mut a) = settled();
        let mut holds = Vec::new();
        for _ in 0..8 {
            demote(&mut t, &mut a);
            holds.push(promote(&mut t, &mut a).as_secs());
        }
        assert_eq!(holds, [1, 2, 4, 8, 16, 32, 64, 64]);
        // Batch that lasts QUICK before it ends again: the hold starts over.
        for _ in 0..40 {
            assert_eq!(t.window(&mut a, 500, 5 * US), None);
        }
        demote(&mut t, &mut a);
        assert_eq!(promote(&mut t, &mut a), Auto::HOLD_MIN);
    }
}
