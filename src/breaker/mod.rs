//! Per-backend circuit breaker.
//!
//! The request path only reads the [`Gate`] and records outcomes into atomics. The request
//! whose failure reaches `consecutive_failures` opens the gate itself (one compare-and-swap),
//! so not one more request reaches a failing backend, and so does a failed half-open trial;
//! everything timed (how long to stay open, half-open, backoff, decay, closing again) runs in
//! a background task per backend ([`spawn`]), woken through a `Notify` — linkerd's failure
//! accrual with the trip moved to the foreground.
//!
//! Open time grows exponentially with repeated trips (`open_for`, ×2 per recent trip, capped at
//! [`MAX_OPEN`] or `open_for` if larger, plus jitter), like Envoy's outlier ejection time; each
//! `open_for` spent closed forgives one trip. No more than half of a pool's backends (at least
//! one) are ejected by breakers at once: a backend that would exceed that stays closed and
//! keeps serving, so a misclassification cannot empty a pool.
//!
//! Who moves the state: a request moves it from closed to open (after taking an ejection slot
//! of the pool) and from half-open to open; the task moves it from open to half-open and from
//! open or half-open to closed (giving the slot back), and retires it when the backend is gone.
//! Each transition is a compare-and-swap from the state its mover saw, so a trip happens once
//! however many requests fail at the same moment, and its slot is given back once.

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

/// The state word of a backend whose breaker task has ended: never trips again (so no
/// ejection slot can be taken that nobody would give back); shown as closed.
const RETIRED: u8 = 3;
const CLOSED: u8 = BreakerState::Closed as u8;
const OPEN: u8 = BreakerState::Open as u8;
const HALF_OPEN: u8 = BreakerState::HalfOpen as u8;

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
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
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

    /// Record the outcome of a request; `trial` is what [`Gate::try_acquire`] returned and
    /// `pool` holds the pool's ejection count. Returns whether this outcome opened the gate.
    pub fn record(&self, success: bool, trial: bool, pool: &EjectionBudget) -> bool {
        if trial {
            let opened = if success {
                self.trial_ok.fetch_add(1, Ordering::AcqRel);
                false
            } else {
                self.trial_failed.fetch_add(1, Ordering::AcqRel);
                // No further trial of this round goes out: the backend failed one. The slot
                // taken at the trip is still held, so nothing to take here.
                self.flip(HALF_OPEN, OPEN)
            };
            self.wake.notify_one();
            return opened;
        }
        if success {
            // Load first: a healthy backend should not write a shared cache line per request.
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let t = self.threshold.load(Ordering::Relaxed);
        if t == 0 || n < t || self.state.load(Ordering::Acquire) != CLOSED {
            return false;
        }
        // This failure reaches the threshold: open now, within the pool's ejection cap. At the
        // cap the backend stays closed and serving; its next failure tries again, so it trips
        // as soon as another backend's breaker closes.
        if !pool.try_eject() {
            return false;
        }
        if self.flip(CLOSED, OPEN) {
            self.wake.notify_one();
            if let Some(watcher) = &pool.tripped {
                watcher.notify_one();
            }
            true
        } else {
            // Another request tripped it first (it holds its own slot), or the task retired.
            pool.release_ejection();
            false
        }
    }

    fn flip(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    // ---- used by the state machine task ----

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Acquire)
    }

    pub(crate) fn threshold(&self) -> u32 {
        self.threshold.load(Ordering::Relaxed)
    }

    /// Open → half-open with `permits` trials. Only the task moves the state out of open.
    pub(crate) fn half_open(&self, permits: u32) {
        self.trial_ok.store(0, Ordering::Release);
        self.trial_failed.store(0, Ordering::Release);
        self.permits.store(permits, Ordering::Release);
        self.flip(OPEN, HALF_OPEN);
    }

    /// Half-open → closed, unless a trial failed meanwhile (then the gate is open again).
    pub(crate) fn close_after_trials(&self) -> bool {
        // Failures are zeroed before closed is published: a late failure must not find the
        // gate closed with the old count and trip it again at once.
        self.failures.store(0, Ordering::Release);
        self.permits.store(0, Ordering::Release);
        self.flip(HALF_OPEN, CLOSED)
    }

    /// Open or half-open → closed, whatever the trials say (the breaker was switched off).
    pub(crate) fn force_close(&self) {
        self.failures.store(0, Ordering::Release);
        self.permits.store(0, Ordering::Release);
        // Only a failed trial moves the state meanwhile (half-open → open).
        let mut cur = self.state.load(Ordering::Acquire);
        while cur == OPEN || cur == HALF_OPEN {
            match self
                .state
                .compare_exchange(cur, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
    }

    /// The backend is gone: no trip from now on. Returns whether it was ejected (open or
    /// half-open), so its slot must be given back.
    pub(crate) fn retire(&self) -> bool {
        matches!(self.state.swap(RETIRED, Ordering::AcqRel), OPEN | HALF_OPEN)
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
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The ejection budget of a pool: pool-wide state that outlives snapshots.
#[derive(Debug, Default)]
pub struct EjectionBudget {
    /// Backends whose breaker is open or half-open now.
    pub ejected: AtomicU32,
    /// Backends in the pool now (not counting removed ones).
    pub size: AtomicU32,
    /// Told of every trip in the pool, when one watcher starts the timing of trips (an
    /// [`episode`] each) instead of a task per backend waiting for one.
    pub tripped: Option<Arc<Notify>>,
}

impl EjectionBudget {
    /// Take one ejection slot, unless the pool is at its cap ([`max_ejected`]):
    /// the request that trips a breaker takes it, the breaker's task gives it back on closing.
    pub fn try_eject(&self) -> bool {
        let cap = max_ejected(self.size.load(Ordering::Relaxed));
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                (e < cap).then_some(e + 1)
            })
            .is_ok()
    }

    /// Give back a slot taken with [`EjectionBudget::try_eject`].
    pub fn release_ejection(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| e.checked_sub(1));
    }
}

/// The longest a breaker stays open by backoff alone (Envoy's default `max_ejection_time`).
pub const MAX_OPEN: Duration = Duration::from_secs(300);

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

async fn wait_wake(gate: &Gate, closed: &CancellationToken) -> Woke {
    tokio::select! {
        _ = gate.wake.notified() => Woke::Go,
        _ = closed.cancelled() => Woke::Closed,
    }
}

/// How a half-open round ended.
enum Verdict {
    Passed,
    Failed,
    /// The breaker was switched off.
    Off,
}

/// What a breaker remembers between trips: how many were recent (for the backoff) and since
/// when it has been closed (one trip forgiven per `open_for` closed).
#[derive(Debug, Clone, Copy)]
pub struct History {
    trips: u32,
    closed_since: Instant,
}

impl Default for History {
    fn default() -> Self {
        History {
            trips: 0,
            closed_since: Instant::now(),
        }
    }
}

/// How a trip's [`episode`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Episode {
    /// Closed again (the ejection slot given back).
    Closed,
    /// The backend was closed meanwhile: the caller retires the gate.
    Gone,
}

/// The timed part of the state machine: open (opened by a request) → half-open → closed, or
/// open again with a longer open time. Knows only its gate, the pool's ejection `budget`, its
/// config (read at each step, so a reload is followed), when to stop (`closed`) and a `name`
/// for logs; `trips_metric` counts openings (`veer_circuit_breaker_trips_total`). Runs for
/// the gate's whole life; [`episode`] is one trip of it, for a caller that times only trips.
pub async fn run<G, C>(
    gate: G,
    budget: Arc<EjectionBudget>,
    config: C,
    closed: CancellationToken,
    name: String,
    trips_metric: Option<IntCounter>,
) where
    G: std::ops::Deref<Target = Gate>,
    C: Fn() -> BreakerConfig,
{
    let gate: &Gate = &gate;
    let mut history = History::default();
    loop {
        // Closed: a request opens the gate (`Gate::record`) and wakes us.
        if let Woke::Closed = wait_wake(gate, &closed).await {
            break;
        }
        if gate.state() != BreakerState::Open {
            continue;
        }
        let ended = episode(
            gate,
            &budget,
            &config,
            &closed,
            &name,
            trips_metric.as_ref(),
            &mut history,
        )
        .await;
        if ended == Episode::Gone {
            break;
        }
    }
    // The backend is gone: no trip from now on, and its ejection slot goes back to the pool.
    if gate.retire() {
        budget.release_ejection();
    }
}

/// One trip of a gate a request has just opened: the open time (grown by the recent trips in
/// `history`), half-open trials, and open again until they pass; then closed, the ejection
/// slot given back.
pub async fn episode<C: Fn() -> BreakerConfig>(
    gate: &Gate,
    budget: &EjectionBudget,
    config: &C,
    closed: &CancellationToken,
    name: &str,
    trips_metric: Option<&IntCounter>,
    history: &mut History,
) -> Episode {
    let mut trips = decayed(
        history.trips,
        history.closed_since.elapsed(),
        config().open_for,
    ) + 1;
    loop {
        // Open: no requests for the (grown) open time.
        if let Some(m) = trips_metric {
            m.inc();
        }
        let cfg = config();
        let open = jittered(open_duration(&cfg, trips), cfg.jitter);
        tracing::warn!(backend = %name, open_for = ?open, trips, failures = gate.consecutive_failures(), "circuit breaker opened");
        let until = Instant::now() + open;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = gate.wake.notified() => {
                    if gate.threshold() == 0 {
                        break;
                    }
                }
                _ = closed.cancelled() => return Episode::Gone,
            }
        }
        let verdict = if gate.threshold() == 0 {
            Verdict::Off
        } else {
            // Half-open: let the trial requests through and judge them.
            let needed = config().half_open_requests.max(1);
            gate.half_open(needed);
            tracing::info!(backend = %name, trials = needed, "circuit breaker half-open");
            loop {
                if let Woke::Closed = wait_wake(gate, closed).await {
                    return Episode::Gone;
                }
                if gate.threshold() == 0 {
                    break Verdict::Off;
                }
                // A failed trial has already opened the gate again (`Gate::record`).
                let (ok, failed) = gate.trials();
                if failed > 0 || gate.state() == BreakerState::Open {
                    break Verdict::Failed;
                }
                if ok >= needed {
                    break Verdict::Passed;
                }
            }
        };
        match verdict {
            Verdict::Passed => {
                if gate.close_after_trials() {
                    break;
                }
                // A trial failed just as the others passed: open again.
            }
            Verdict::Failed => {}
            Verdict::Off => {
                gate.force_close();
                break;
            }
        }
        // Open again (the request whose trial failed has already flipped it; this only
        // covers a failure counted without the flip).
        gate.flip(HALF_OPEN, OPEN);
        trips = trips.saturating_add(1);
    }
    budget.release_ejection();
    *history = History {
        trips,
        closed_since: Instant::now(),
    };
    tracing::info!(backend = %name, "circuit breaker closed");
    Episode::Closed
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
        let p = EjectionBudget::default();
        p.size.store(4, Ordering::Relaxed);
        assert!(p.try_eject());
        assert!(p.try_eject());
        assert!(!p.try_eject());
        p.release_ejection();
        assert!(p.try_eject());
        p.release_ejection();
        p.release_ejection();
        p.release_ejection();
        assert_eq!(p.ejected.load(Ordering::Relaxed), 0);
    }

    /// A closed gate that trips at `threshold` consecutive failures.
    fn gate(threshold: u32) -> Gate {
        let g = Gate::default();
        g.set_threshold(threshold);
        g
    }

    fn pool(size: u32) -> EjectionBudget {
        let p = EjectionBudget::default();
        p.size.store(size, Ordering::Relaxed);
        p
    }

    #[test]
    fn the_failure_that_reaches_the_threshold_opens_the_gate_itself() {
        let p = pool(2);
        let g = gate(3);
        assert_eq!(g.try_acquire(), Some(false));
        assert!(!g.record(false, false, &p));
        assert!(!g.record(true, false, &p));
        assert_eq!(g.consecutive_failures(), 0, "a success resets the count");
        assert!(!g.record(false, false, &p));
        assert!(!g.record(false, false, &p));
        assert_eq!(g.state(), BreakerState::Closed);
        assert!(g.record(false, false, &p), "the third failure trips");
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(p.ejected.load(Ordering::Relaxed), 1, "it took a slot");
        assert!(!g.is_passable());
        assert_eq!(g.try_acquire(), None, "the next request goes elsewhere");
        // Late failures of requests sent before the trip neither trip again nor take a slot.
        assert!(!g.record(false, false, &p));
        assert_eq!(p.ejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failed_trial_opens_the_gate_at_once_and_trials_are_counted() {
        let p = pool(2);
        let g = gate(1);
        assert!(g.record(false, false, &p));
        g.half_open(2);
        assert_eq!(g.state(), BreakerState::HalfOpen);
        assert_eq!(g.try_acquire(), Some(true));
        assert_eq!(g.try_acquire(), Some(true));
        assert_eq!(g.try_acquire(), None, "two trials, no more");
        g.release_trial();
        assert_eq!(g.try_acquire(), Some(true), "an unused permit comes back");
        assert!(!g.record(true, true, &p));
        assert_eq!(g.trials(), (1, 0));
        assert!(g.record(false, true, &p), "a failed trial re-opens");
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(g.trials(), (1, 1));
        assert!(
            !g.close_after_trials(),
            "the task cannot close over a failed trial"
        );
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(p.ejected.load(Ordering::Relaxed), 1, "still one slot");
        g.half_open(1);
        assert!(g.close_after_trials());
        assert_eq!(g.state(), BreakerState::Closed);
        assert_eq!(g.consecutive_failures(), 0);
    }

    #[test]
    fn at_the_cap_the_gate_stays_closed_and_the_next_failure_tries_again() {
        let p = pool(2);
        let (a, b) = (gate(2), gate(2));
        a.record(false, false, &p);
        assert!(a.record(false, false, &p));
        b.record(false, false, &p);
        assert!(!b.record(false, false, &p), "one of two is the cap");
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.record(false, false, &p));
        // a closes and gives its slot back: b's next failure trips.
        a.half_open(1);
        assert!(a.close_after_trials());
        p.release_ejection();
        assert!(b.record(false, false, &p));
        assert_eq!(p.ejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_retired_gate_never_trips() {
        let p = pool(2);
        let g = gate(1);
        assert!(!g.retire(), "closed: no slot to give back");
        assert!(!g.record(false, false, &p));
        assert_eq!(p.ejected.load(Ordering::Relaxed), 0, "no slot taken");
        let g = gate(1);
        assert!(g.record(false, false, &p));
        assert!(g.retire(), "open: its slot must be given back");
    }

    #[test]
    fn concurrent_failures_trip_once_and_take_one_slot() {
        for _ in 0..200 {
            let p = Arc::new(pool(8));
            let g = Arc::new(gate(3));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (p, g) = (p.clone(), g.clone());
                    std::thread::spawn(move || {
                        (0..5).filter(|_| g.record(false, false, &p)).count()
                    })
                })
                .collect();
            let flips: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(flips, 1);
            assert_eq!(g.state(), BreakerState::Open);
            assert_eq!(p.ejected.load(Ordering::Relaxed), 1);
        }
    }

    #[test]
    fn concurrent_trips_in_a_pool_never_pass_the_cap() {
        for _ in 0..100 {
            let p = Arc::new(pool(4));
            let gates: Vec<Arc<Gate>> = (0..4).map(|_| Arc::new(Gate::default())).collect();
            let threads: Vec<_> = gates
                .iter()
                .map(|g| {
                    let (p, g) = (p.clone(), g.clone());
                    g.set_threshold(1);
                    std::thread::spawn(move || {
                        for _ in 0..3 {
                            g.record(false, false, &p);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let open = gates
                .iter()
                .filter(|g| g.state() == BreakerState::Open)
                .count();
            assert_eq!(open, 2, "half of four");
            assert_eq!(p.ejected.load(Ordering::Relaxed), 2);
        }
    }

    // ---- the task, on tokio's paused clock (through a whole backend, as veer runs it)

    use crate::upstream::Backend;
    use tokio_util::task::TaskTracker;

    struct Harness {
        backend: Arc<Backend>,
        trips: IntCounter,
        tasks: TaskTracker,
    }

    impl Harness {
        fn new(threshold: u32, open_for: u64, half_open: u32, pool_size: u32) -> Harness {
            let mut pc = crate::config::PoolConfig {
                name: "p".into(),
                backends: Vec::new(),
                lb: crate::config::LbKind::RoundRobin,
                connect_timeout: Duration::from_secs(1),
                protocol: crate::config::Protocol::H1,
                tls: None,
                health_check: None,
                circuit_breaker: cfg(open_for),
                dns_refresh: crate::config::DEFAULT_DNS_REFRESH,
                slow_start: None,
            };
            pc.circuit_breaker.consecutive_failures = threshold;
            pc.circuit_breaker.half_open_requests = half_open;
            let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
            let client =
                crate::upstream::http_client::UpstreamClient::new(addr, &pc, None).unwrap();
            let tripped = Arc::new(Notify::new());
            let shared = Arc::new(EjectionBudget {
                tripped: Some(tripped.clone()),
                ..pool(pool_size)
            });
            let id = crate::upstream::BackendId::ip("p".into(), addr);
            let b = Arc::new(Backend::new(id, client, Arc::new(pc), shared));
            b.breaker.set_threshold(threshold);
            let trips = IntCounter::new("trips", "trips").unwrap();
            let tasks = TaskTracker::new();
            // As the registry's watcher does: a task times each trip.
            let (watched, counter, timers) = (b.clone(), trips.clone(), tasks.clone());
            tokio::spawn(async move {
                loop {
                    tripped.notified().await;
                    if watched.claim_breaker_timing() {
                        timers.spawn(watched.breaker_trips(Some(counter.clone())));
                    }
                }
            });
            Harness {
                backend: b,
                trips,
                tasks,
            }
        }
        fn gate(&self) -> &Gate {
            &self.backend.breaker
        }
        fn fail(&self, trial: bool) -> bool {
            self.gate().record(false, trial, &self.backend.pool_shared)
        }
        fn ejected(&self) -> u32 {
            self.backend.pool_shared.ejected.load(Ordering::Relaxed)
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// Advance the paused clock by `ms` and let the task run.
    async fn after(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        settle().await;
    }

    /// The state machine alone: a bare gate, an ejection budget and a config, no backend.
    #[tokio::test(start_paused = true)]
    async fn run_drives_a_bare_gate_with_its_budget_and_config() {
        let gate = Arc::new(Gate::default());
        gate.set_threshold(2);
        let budget = Arc::new(EjectionBudget::default());
        budget.size.store(2, Ordering::Relaxed);
        let open_for = Arc::new(std::sync::atomic::AtomicU64::new(10));
        let config = {
            let open_for = open_for.clone();
            move || BreakerConfig {
                consecutive_failures: 2,
                half_open_requests: 1,
                ..cfg(open_for.load(Ordering::Relaxed))
            }
        };
        let closed = CancellationToken::new();
        let trips = IntCounter::new("trips", "trips").unwrap();
        let task = tokio::spawn(run(
            gate.clone(),
            budget.clone(),
            config,
            closed.clone(),
            "bare".into(),
            Some(trips.clone()),
        ));
        settle().await;
        assert!(!gate.record(false, false, &budget));
        assert!(
            gate.record(false, false, &budget),
            "the second failure opens"
        );
        assert_eq!(budget.ejected.load(Ordering::Relaxed), 1);
        settle().await;
        assert_eq!(trips.get(), 1);
        after(9_999).await;
        assert_eq!(gate.state(), BreakerState::Open);
        after(1).await;
        assert_eq!(gate.state(), BreakerState::HalfOpen, "after open_for");
        assert_eq!(gate.try_acquire(), Some(true));
        gate.record(true, true, &budget);
        settle().await;
        assert_eq!(gate.state(), BreakerState::Closed);
        assert_eq!(budget.ejected.load(Ordering::Relaxed), 0, "slot given back");
        // The config is read at each step: a reload to 30 s is followed by the next trip.
        open_for.store(30, Ordering::Relaxed);
        after(60_000).await;
        gate.record(false, false, &budget);
        assert!(gate.record(false, false, &budget));
        settle().await;
        after(29_999).await;
        assert_eq!(gate.state(), BreakerState::Open);
        after(1).await;
        assert_eq!(gate.state(), BreakerState::HalfOpen);
        // Closing ends the task and gives the slot it held back.
        closed.cancel();
        task.await.unwrap();
        assert_eq!(budget.ejected.load(Ordering::Relaxed), 0);
        assert!(
            !gate.record(false, false, &budget),
            "a retired gate never trips"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_keeps_the_timing_of_a_trip_made_by_a_request() {
        let h = Harness::new(3, 10, 1, 2);
        settle().await;
        h.fail(false);
        h.fail(false);
        assert!(h.fail(false));
        // Open at once, before the task has run at all.
        assert_eq!(h.gate().state(), BreakerState::Open);
        settle().await;
        assert_eq!(h.trips.get(), 1, "the task counts the trip");
        after(9_999).await;
        assert_eq!(h.gate().state(), BreakerState::Open);
        after(1).await;
        assert_eq!(
            h.gate().state(),
            BreakerState::HalfOpen,
            "half-open after open_for"
        );
        // The trial fails: open again at once, for twice as long, counted as a second trip.
        assert_eq!(h.gate().try_acquire(), Some(true));
        assert!(h.fail(true));
        assert_eq!(h.gate().state(), BreakerState::Open);
        settle().await;
        assert_eq!(h.trips.get(), 2);
        after(19_999).await;
        assert_eq!(h.gate().state(), BreakerState::Open);
        after(1).await;
        assert_eq!(h.gate().state(), BreakerState::HalfOpen);
        assert_eq!(h.ejected(), 1, "one slot through it all");
        // A good trial closes it and gives the slot back.
        assert_eq!(h.gate().try_acquire(), Some(true));
        h.gate().record(true, true, &h.backend.pool_shared);
        settle().await;
        assert_eq!(h.gate().state(), BreakerState::Closed);
        assert_eq!(h.ejected(), 0);
        assert_eq!(h.trips.get(), 2);
        // Closed again, it counts from zero.
        h.fail(false);
        h.fail(false);
        settle().await;
        assert_eq!(h.gate().state(), BreakerState::Closed);
        assert!(h.fail(false));
        settle().await;
        assert_eq!(h.trips.get(), 3);
        // Soon after the last trip: the backoff goes on (40 s for the third recent trip).
        after(39_999).await;
        assert_eq!(h.gate().state(), BreakerState::Open);
        after(1).await;
        assert_eq!(h.gate().state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn all_trials_must_pass_and_late_outcomes_change_nothing() {
        let h = Harness::new(1, 5, 2, 2);
        settle().await;
        assert!(h.fail(false));
        after(5_000).await;
        assert_eq!(h.gate().state(), BreakerState::HalfOpen);
        let pool = &h.backend.pool_shared;
        assert_eq!(h.gate().try_acquire(), Some(true));
        h.gate().record(true, true, pool);
        settle().await;
        assert_eq!(
            h.gate().state(),
            BreakerState::HalfOpen,
            "one of two trials"
        );
        // A request leased before the trip fails late: no trip, no slot.
        assert!(!h.fail(false));
        assert_eq!(h.gate().try_acquire(), Some(true));
        h.gate().record(true, true, pool);
        settle().await;
        assert_eq!(h.gate().state(), BreakerState::Closed);
        assert_eq!(h.ejected(), 0);
        assert_eq!(
            h.gate().consecutive_failures(),
            0,
            "closing forgets old failures"
        );
        assert_eq!(h.trips.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn switched_off_while_open_closes_and_gives_the_slot_back() {
        let h = Harness::new(1, 60, 1, 2);
        settle().await;
        assert!(h.fail(false));
        settle().await;
        h.gate().set_threshold(0);
        h.gate().wake.notify_one();
        settle().await;
        assert_eq!(h.gate().state(), BreakerState::Closed);
        assert_eq!(h.ejected(), 0);
        for _ in 0..5 {
            assert!(!h.fail(false), "a switched-off breaker never trips");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_backend_gives_its_slot_back_once_and_never_trips_again() {
        let h = Harness::new(1, 60, 1, 2);
        settle().await;
        assert!(h.fail(false));
        settle().await;
        assert_eq!(h.ejected(), 1);
        h.backend.closed.cancel();
        h.tasks.close();
        h.tasks.wait().await;
        assert_eq!(h.ejected(), 0, "given back when the task ended");
        // A request cut by the close fails after it: no slot is taken that nobody would free.
        assert!(!h.fail(false));
        assert_eq!(h.ejected(), 0);
    }
}
