//! Per-backend circuit breaker.
//!
//! The request path only reads the [`Gate`] and records outcomes into atomics; the state machine
//! (closed → open → half-open → closed) runs in a background task per backend
//! ([`spawn`]), woken through a `Notify` when a threshold is crossed — linkerd's failure accrual.
//!
//! Open time grows exponentially with repeated trips (`open_for`, ×2 per recent trip, capped at
//! [`MAX_OPEN`] or `open_for` if larger, plus jitter), like Envoy's outlier ejection time; each
//! `open_for` spent closed forgives one trip. No more than half of a pool's backends (at least
//! one) are ejected by breakers at once: a backend that would exceed that stays closed and
//! keeps serving, so a misclassification cannot empty a pool.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use tokio::sync::Notify;

/// Breaker state as shown in the status API and the metric (0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
    fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// The part of the breaker the request path touches: atomics only.
#[derive(Debug, Default)]
pub struct Gate {
    state: AtomicU8,
    /// Trial requests still allowed while half-open.
    permits: AtomicU32,
    /// Consecutive failures seen while closed.
    failures: AtomicU32,
    /// Outcomes of trial requests while half-open.
    trial_ok: AtomicU32,
    trial_failed: AtomicU32,
    /// Failure threshold (0 = breaker disabled); set from the pool config.
    threshold: AtomicU32,
    /// Wakes the state-machine task.
    pub(crate) wake: Notify,
}

impl Gate {
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_threshold(&self, n: u32) {
        self.threshold.store(n, Ordering::Relaxed);
    }

    /// Would a request be let through now (without taking a trial permit)?
    pub fn is_passable(&self) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => self.permits.load(Ordering::Acquire) > 0,
        }
    }

    /// Take the right to send one request. `Some(true)` marks a half-open trial.
    pub fn try_acquire(&self) -> Option<bool> {
        match self.state() {
            BreakerState::Closed => Some(false),
            BreakerState::Open => None,
            BreakerState::HalfOpen => self
                .permits
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
                .ok()
                .map(|_| true),
        }
    }

    /// Give back a trial permit that was taken but not used (the request went elsewhere).
    pub fn release_trial(&self) {
        self.permits.fetch_add(1, Ordering::AcqRel);
    }

    /// Record the outcome of a request; `trial` is what [`Gate::try_acquire`] returned.
    pub fn record(&self, success: bool, trial: bool) {
        if trial {
            if success {
                self.trial_ok.fetch_add(1, Ordering::AcqRel);
            } else {
                self.trial_failed.fetch_add(1, Ordering::AcqRel);
            }
            self.wake.notify_one();
            return;
        }
        if success {
            // Load first: a healthy backend should not write a shared cache line per request.
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
        } else {
            let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
            let t = self.threshold.load(Ordering::Relaxed);
            if t > 0 && n >= t {
                self.wake.notify_one();
            }
        }
    }

    // ---- used by the state machine task ----

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Acquire)
    }

    pub(crate) fn threshold(&self) -> u32 {
        self.threshold.load(Ordering::Relaxed)
    }

    pub(crate) fn open(&self) {
        self.permits.store(0, Ordering::Release);
        self.state
            .store(BreakerState::Open as u8, Ordering::Release);
    }

    pub(crate) fn half_open(&self, permits: u32) {
        self.trial_ok.store(0, Ordering::Release);
        self.trial_failed.store(0, Ordering::Release);
        self.permits.store(permits, Ordering::Release);
        self.state
            .store(BreakerState::HalfOpen as u8, Ordering::Release);
    }

    pub(crate) fn close(&self) {
        self.failures.store(0, Ordering::Release);
        self.permits.store(0, Ordering::Release);
        self.state
            .store(BreakerState::Closed as u8, Ordering::Release);
    }

    /// (successful trials, failed trials) since half-open began.
    pub(crate) fn trials(&self) -> (u32, u32) {
        (
            self.trial_ok.load(Ordering::Acquire),
            self.trial_failed.load(Ordering::Acquire),
        )
    }
}

use crate::config::BreakerConfig;
use crate::upstream::backend::PoolShared;
use crate::upstream::Backend;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// The longest a breaker stays open by backoff alone (Envoy's default `max_ejection_time`).
pub const MAX_OPEN: Duration = Duration::from_secs(300);

/// Start the breaker state machine of a backend; it ends when the backend is closed.
/// `trips` counts openings (the `veer_circuit_breaker_trips_total` series of this backend).
pub fn spawn(backend: &Arc<Backend>, tasks: &TaskTracker, trips: Option<IntCounter>) {
    tasks.spawn(run(backend.clone(), trips));
}

/// How long the breaker stays open after its `trips`-th recent trip (1-based), before jitter.
pub fn open_duration(cfg: &BreakerConfig, trips: u32) -> Duration {
    let cap = MAX_OPEN.max(cfg.open_for);
    let factor = 1u32 << trips.saturating_sub(1).min(20);
    cfg.open_for.saturating_mul(factor).min(cap)
}

/// Recent trips left after `closed` time spent closed: one forgiven per `open_for`.
pub fn decayed(trips: u32, closed: Duration, open_for: Duration) -> u32 {
    if open_for.is_zero() {
        return 0;
    }
    let forgiven = (closed.as_nanos() / open_for.as_nanos()).min(u32::MAX as u128) as u32;
    trips.saturating_sub(forgiven)
}

/// The most backends of a pool of `size` that breakers may eject at once.
pub fn max_ejected(size: u32) -> u32 {
    (size / 2).max(1)
}

/// Count one more ejected backend in the pool, unless that would pass the cap.
fn try_eject(pool: &PoolShared) -> bool {
    let cap = max_ejected(pool.size.load(std::sync::atomic::Ordering::Relaxed));
    pool.ejected
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
            (e < cap).then_some(e + 1)
        })
        .is_ok()
}

fn release(pool: &PoolShared) {
    let _ = pool
        .ejected
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| e.checked_sub(1));
}

fn jittered(d: Duration, jitter: f64) -> Duration {
    let j = jitter.clamp(0.0, 1.0);
    if j == 0.0 {
        d
    } else {
        d.mul_f64(1.0 + j * rand::random::<f64>())
    }
}

/// How a wait in the state machine ended.
enum Woke {
    /// The gate was notified (an outcome or a config change) or the timer ran out.
    Go,
    /// The backend was closed: the task ends.
    Closed,
}

async fn wait_wake(b: &Backend) -> Woke {
    tokio::select! {
        _ = b.breaker.wake.notified() => Woke::Go,
        _ = b.closed.cancelled() => Woke::Closed,
    }
}

/// The state machine: closed → open → half-open → closed (or open again).
async fn run(b: Arc<Backend>, trips_metric: Option<IntCounter>) {
    let gate = &b.breaker;
    let mut trips = 0u32;
    let mut closed_since = Instant::now();
    'closed: loop {
        // Closed: wait until the consecutive failures reach the threshold.
        if let Woke::Closed = wait_wake(&b).await {
            break;
        }
        let threshold = gate.threshold();
        if threshold == 0 || gate.consecutive_failures() < threshold {
            continue;
        }
        if !try_eject(&b.pool_shared) {
            // At the ejection cap: stay closed and serving. The next failure tries again, so
            // the backend trips as soon as another one's breaker closes.
            tracing::debug!(backend = %b.id, "breaker would open but half the pool is already ejected");
            continue;
        }
        trips = decayed(
            trips,
            closed_since.elapsed(),
            b.pool_config().circuit_breaker.open_for,
        ) + 1;
        loop {
            // Open: no requests for the (grown) open time.
            gate.open();
            if let Some(m) = &trips_metric {
                m.inc();
            }
            let cfg = b.pool_config().circuit_breaker.clone();
            let open = jittered(open_duration(&cfg, trips), cfg.jitter);
            tracing::warn!(backend = %b.id, open_for = ?open, trips, "circuit breaker opened");
            let until = Instant::now() + open;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = b.breaker.wake.notified() => {
                        if gate.threshold() == 0 {
                            break;
                        }
                    }
                    _ = b.closed.cancelled() => break 'closed,
                }
            }
            // Half-open: let the trial requests through and judge them.
            let cfg = b.pool_config().circuit_breaker.clone();
            if gate.threshold() == 0 {
                // The breaker was switched off while open.
                break;
            }
            let needed = cfg.half_open_requests.max(1);
            gate.half_open(needed);
            tracing::info!(backend = %b.id, trials = needed, "circuit breaker half-open");
            let passed = loop {
                if let Woke::Closed = wait_wake(&b).await {
                    break 'closed;
                }
                if gate.threshold() == 0 {
                    break true;
                }
                let (ok, failed) = gate.trials();
                if failed > 0 {
                    break false;
                }
                if ok >= needed {
                    break true;
                }
            };
            if passed {
                break;
            }
            trips = trips.saturating_add(1);
        }
        gate.close();
        release(&b.pool_shared);
        closed_since = Instant::now();
        tracing::info!(backend = %b.id, "circuit breaker closed");
    }
    // The backend is gone: give its ejection slot back to the pool.
    if gate.state() != BreakerState::Closed {
        gate.close();
        release(&b.pool_shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(open_for: u64) -> BreakerConfig {
        BreakerConfig {
            open_for: Duration::from_secs(open_for),
            jitter: 0.0,
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn open_time_doubles_per_trip_and_is_capped() {
        let c = cfg(10);
        let secs: Vec<u64> = (1..=8).map(|n| open_duration(&c, n).as_secs()).collect();
        assert_eq!(secs, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(open_duration(&c, u32::MAX), MAX_OPEN);
        // An open_for above the cap is honoured as is.
        assert_eq!(open_duration(&cfg(600), 3).as_secs(), 600);
    }

    #[test]
    fn trips_decay_one_per_open_for_closed() {
        let o = Duration::from_secs(10);
        assert_eq!(decayed(3, Duration::from_secs(9), o), 3);
        assert_eq!(decayed(3, Duration::from_secs(10), o), 2);
        assert_eq!(decayed(3, Duration::from_secs(35), o), 0);
        assert_eq!(decayed(3, Duration::from_secs(1), Duration::ZERO), 0);
    }

    #[test]
    fn at_most_half_a_pool_but_at_least_one() {
        assert_eq!(max_ejected(1), 1);
        assert_eq!(max_ejected(2), 1);
        assert_eq!(max_ejected(3), 1);
        assert_eq!(max_ejected(4), 2);
        assert_eq!(max_ejected(5), 2);
        assert_eq!(max_ejected(0), 1);
    }

    #[test]
    fn ejection_slots_are_counted() {
        let p = PoolShared::default();
        p.size.store(4, Ordering::Relaxed);
        assert!(try_eject(&p));
        assert!(try_eject(&p));
        assert!(!try_eject(&p));
        release(&p);
        assert!(try_eject(&p));
        release(&p);
        release(&p);
        release(&p);
        assert_eq!(p.ejected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn gate_counts_failures_and_trials() {
        let g = Gate::default();
        g.set_threshold(2);
        assert_eq!(g.try_acquire(), Some(false));
        g.record(false, false);
        g.record(true, false);
        assert_eq!(g.consecutive_failures(), 0);
        g.record(false, false);
        g.record(false, false);
        assert_eq!(g.consecutive_failures(), 2);
        g.open();
        assert!(!g.is_passable());
        assert_eq!(g.try_acquire(), None);
        g.half_open(1);
        assert_eq!(g.try_acquire(), Some(true));
        assert_eq!(g.try_acquire(), None);
        g.release_trial();
        assert_eq!(g.try_acquire(), Some(true));
        g.record(true, true);
        assert_eq!(g.trials(), (1, 0));
        g.close();
        assert_eq!(g.state(), BreakerState::Closed);
        assert_eq!(g.consecutive_failures(), 0);
    }
}
