//! Per-backend circuit breaker.
//!
//! The request path only reads the [`Gate`] and records outcomes into atomics; the state machine
//! (closed → open → half-open → closed) runs in a background task per backend
//! ([`run`]), woken through a `Notify` when a threshold is crossed — linkerd's failure accrual.

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
        self.state.store(BreakerState::Open as u8, Ordering::Release);
    }

    pub(crate) fn half_open(&self, permits: u32) {
        self.trial_ok.store(0, Ordering::Release);
        self.trial_failed.store(0, Ordering::Release);
        self.permits.store(permits, Ordering::Release);
        self.state.store(BreakerState::HalfOpen as u8, Ordering::Release);
    }

    pub(crate) fn close(&self) {
        self.failures.store(0, Ordering::Release);
        self.permits.store(0, Ordering::Release);
        self.state.store(BreakerState::Closed as u8, Ordering::Release);
    }

    /// (successful trials, failed trials) since half-open began.
    pub(crate) fn trials(&self) -> (u32, u32) {
        (
            self.trial_ok.load(Ordering::Acquire),
            self.trial_failed.load(Ordering::Acquire),
        )
    }

    pub(crate) fn reset_failures(&self) {
        self.failures.store(0, Ordering::Release);
    }
}

use crate::upstream::Backend;
use std::sync::Arc;
use tokio_util::task::TaskTracker;

/// Start the breaker state machine of a backend; it ends when the backend is closed.
pub fn spawn(backend: &Arc<Backend>, tasks: &TaskTracker) {
    // Filled in by the resilience work (issue 3).
    let _ = (backend, tasks);
}
