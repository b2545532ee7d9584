//! Per-step statistics of a rollout, fed by the request path with atomics only.
//!
//! One [`StepStats`] lives for one step: the controller swaps a fresh one into the route's
//! slot when a step starts, so nothing is ever reset under the request path's feet. Every
//! upstream attempt to the rolled-out pool (`to`) or the baseline counts: a failure hidden by a
//! retry on another backend still says something about the pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where the request path finds the current step's statistics (empty unless a step runs).
pub type StatsSlot = arc_swap::ArcSwapOption<StepStats>;

/// Count one upstream attempt for the route's rollout, if a step is running: the request
/// path's whole part in rollouts.
#[inline]
pub fn observe(slot: &StatsSlot, pool: &str, failed: bool, elapsed: Duration) {
    if let Some(s) = &*slot.load() {
        s.record(pool, failed, elapsed);
    }
}

/// Latency buckets: 8 per power of two of microseconds, up to 2^37 µs (about 38 hours).
const OCTAVES: usize = 38;
const SUB: usize = 8;
const BUCKETS: usize = OCTAVES * SUB;

/// Counters for one side (the rolled-out pool or the baseline) in one step.
#[derive(Debug)]
pub struct Side {
    requests: AtomicU64,
    failures: AtomicU64,
    /// Requests slower than the gate's `max_p99`, counted exactly so the p99 verdict does not
    /// depend on the histogram's resolution.
    slow: AtomicU64,
    /// Requests since the last success (the current run of failures).
    streak: AtomicU64,
    hist: Box<[AtomicU64]>,
}

impl Default for Side {
    fn default() -> Self {
        Side {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            streak: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The bucket of a latency in microseconds: log-linear, relative width 1/8.
fn bucket(us: u64) -> usize {
    let us = us.max(1);
    let msb = 63 - us.leading_zeros() as usize;
    if msb >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = if msb >= 3 {
        ((us >> (msb - 3)) & 7) as usize
    } else {
        ((us << (3 - msb)) & 7) as usize
    };
    msb * SUB + sub
}

/// The upper bound (µs) of a bucket.
fn bucket_upper(i: usize) -> u64 {
    let msb = i / SUB;
    let sub = (i % SUB) as u64;
    // Values in the bucket are (8 + sub) << (msb - 3) up to the next one, exclusive.
    if msb >= 3 {
        ((8 + sub + 1) << (msb - 3)) - 1
    } else {
        ((8 + sub + 1) >> (3 - msb)).max(1)
    }
}

impl Side {
    fn record(&self, failed: bool, elapsed: Duration, slow_over_us: u64) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.streak.fetch_add(1, Ordering::Relaxed);
        } else if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
        if us > slow_over_us {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.hist[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy of the counters (each read once).
    pub fn figures(&self) -> SideFigures {
        let hist: Vec<u64> = self
            .hist
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let in_hist: u64 = hist.iter().sum();
        // Nearest rank: the ceil(0.99 n)-th smallest latency.
        let p99 = (in_hist > 0).then(|| {
            let rank = (in_hist * 99).div_ceil(100).max(1);
            let mut seen = 0;
            let mut at = BUCKETS - 1;
            for (i, n) in hist.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    at = i;
                    break;
                }
            }
            Duration::from_micros(bucket_upper(at))
        });
        SideFigures {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
            streak: self.streak.load(Ordering::Relaxed),
            p99,
        }
    }
}

/// A read of one side's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SideFigures {
    pub requests: u64,
    pub failures: u64,
    /// Requests slower than `max_p99`.
    pub slow: u64,
    /// Failures since the last success.
    pub streak: u64,
    /// Estimated p99 (upper bound of its histogram bucket, within 12.5%).
    pub p99: Option<Duration>,
}

impl SideFigures {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }
}

/// Statistics of one rollout step: the rolled-out pool and the baseline.
#[derive(Debug)]
pub struct StepStats {
    /// The rolled-out pool's name.
    pub to: Box<str>,
    /// The baseline pool's name.
    pub baseline: Box<str>,
    /// `max_p99` in microseconds: attempts slower than this count as slow.
    slow_over_us: u64,
    pub canary: Side,
    pub base: Side,
    /// Mirrored copies compared during the step, and those that differed (a rollout's
    /// "mirror" step is judged on these, SPEC §11).
    mirror_compared: AtomicU64,
    mirror_differ: AtomicU64,
}

/// Count one compared mirror copy for the route's rollout, if a step is running (from the
/// copy's task, never the client's request path).
pub fn observe_mirror(slot: &StatsSlot, differ: bool) {
    if let Some(s) = &*slot.load() {
        s.mirror_compared.fetch_add(1, Ordering::Relaxed);
        if differ {
            s.mirror_differ.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A read of a step's compared mirror copies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorFigures {
    pub compared: u64,
    pub differ: u64,
}

impl MirrorFigures {
    pub fn diff_rate(&self) -> f64 {
        if self.compared == 0 {
            0.0
        } else {
            self.differ as f64 / self.compared as f64
        }
    }
}

impl StepStats {
    pub fn new(to: &str, baseline: &str, max_p99: Duration) -> Self {
        StepStats {
            to: to.into(),
            baseline: baseline.into(),
            slow_over_us: max_p99.as_micros().min(u64::MAX as u128) as u64,
            canary: Side::default(),
            base: Side::default(),
            mirror_compared: AtomicU64::new(0),
            mirror_differ: AtomicU64::new(0),
        }
    }

    pub fn mirror_figures(&self) -> MirrorFigures {
        MirrorFigures {
            compared: self.mirror_compared.load(Ordering::Relaxed),
            differ: self.mirror_differ.load(Ordering::Relaxed),
        }
    }

    /// Count one upstream attempt to `pool` (the request path's only rollout work).
    pub fn record(&self, pool: &str, failed: bool, elapsed: Duration) {
        if pool == &*self.to {
            self.canary.record(failed, elapsed, self.slow_over_us);
        } else if pool == &*self.baseline {
            self.base.record(failed, elapsed, self.slow_over_us);
        }
    }

    pub fn figures(&self) -> Figures {
        Figures {
            canary: self.canary.figures(),
            baseline: self.base.figures(),
        }
    }
}

/// A read of a step's statistics, both sides.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub canary: SideFigures,
    pub baseline: SideFigures,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotone_and_tight() {
        let mut last = 0;
        for us in [
            1u64, 2, 3, 7, 8, 9, 15, 16, 100, 1000, 12_345, 500_000, 10_000_000,
        ] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            let up = bucket_upper(b);
            assert!(up >= us, "{us} above its bucket's bound {up}");
            assert!(
                up as f64 <= us as f64 * 1.13 + 1.0,
                "{us}: bound {up} too loose"
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn p99_and_counts() {
        let s = StepStats::new("green", "blue", Duration::from_millis(500));
        for i in 0..1000 {
            let ms = if i % 100 == 0 { 900 } else { 10 };
            s.record("green", i % 50 == 0, Duration::from_millis(ms));
        }
        s.record("blue", true, Duration::from_millis(1));
        s.record("other", true, Duration::from_millis(1));
        let f = s.figures();
        assert_eq!(f.canary.requests, 1000);
        assert_eq!(f.canary.failures, 20);
        assert_eq!(f.canary.slow, 10);
        let p99 = f.canary.p99.unwrap();
        assert!(
            p99 >= Duration::from_millis(10) && p99 < Duration::from_millis(12),
            "{p99:?}"
        );
        assert_eq!(f.baseline.requests, 1);
        assert_eq!(f.baseline.streak, 1);
        for _ in 0..20 {
            s.record("green", false, Duration::from_millis(950));
        }
        let p99 = s.figures().canary.p99.unwrap();
        assert!(p99 >= Duration::from_millis(900), "{p99:?}");
    }
}
