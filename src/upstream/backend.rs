//! One backend: its identity and the state that outlives config reloads.

pub use crate::breaker::EjectionBudget;
use crate::breaker::{BreakerState, Episode, Gate};
use crate::config::PoolConfig;
use crate::upstream::http_client::UpstreamClient;
use arc_swap::ArcSwap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A backend is (pool, name, address): the same address in two pools is two backends, and
/// each address a name resolves to is a backend of its own (SPEC §9), which keeps its state
/// for as long as the name keeps resolving to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId {
    pub pool: Arc<str>,
    /// `NAME:PORT` for an address found by resolving a name; None for an `IP:PORT` backend.
    pub name: Option<Arc<str>>,
    pub addr: SocketAddr,
}

impl BackendId {
    /// An `IP:PORT` backend of `pool`.
    pub fn ip(pool: Arc<str>, addr: SocketAddr) -> Self {
        BackendId {
            pool,
            name: None,
            addr,
        }
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            None => write!(f, "{}/{}", self.pool, self.addr),
            Some(n) => write!(f, "{}/{}={}", self.pool, n, self.addr),
        }
    }
}

/// Slow start's full weight, in thousandths.
pub const RAMP_FULL: u32 = 1000;

/// At most one warning about failed attempts per backend in this time.
pub const WARN_EVERY_MS: u64 = 10_000;

/// Milliseconds on a monotonic clock that starts at 1 (0 means "never" to
/// [`Backend::warn_failure`]).
fn warn_clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + 1
}
/// Where slow start begins: 10% of the backend's weight.
pub const RAMP_FLOOR: u32 = 100;

/// Active health as last judged by the checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Per-backend state: counters are atomics, read by the request path without a lock.
pub struct Backend {
    pub id: BackendId,
    /// The address as a string, for metric labels and JSON.
    pub addr_label: Arc<str>,
    in_flight: AtomicU32,
    health: AtomicU8,
    /// Whether the pool has an active health check (otherwise health does not gate traffic).
    checked: AtomicBool,
    /// Generation of the health checker: a checker whose generation is not current stops, so
    /// switching checks off and on again never leaves two checkers running.
    health_epoch: AtomicU64,
    /// Wakes the health checker when its config changed (new interval, path, or checks off).
    pub(crate) health_wake: Notify,
    draining: AtomicBool,
    /// Set when a reload removed the backend; it drains and is then dropped.
    removed: AtomicBool,
    /// Bulkhead limit (0 = unlimited).
    max_concurrent: AtomicU32,
    /// Slow start, in thousandths of the backend's weight: the high half is its own ramp (for
    /// `weight_now`), the low half that ramp relative to the pool's most advanced backend
    /// (what the balancers use). Written by the slow-start task, read by the request path.
    ramp: AtomicU32,
    pub breaker: Gate,
    /// Notified when in-flight reaches zero, so a drain can finish early.
    idle: Notify,
    /// Cancelled when the backend is finally closed: cuts what is left in flight and stops
    /// its background tasks.
    pub closed: CancellationToken,
    client: ArcSwap<UpstreamClient>,
    /// The current config of the backend's pool; background tasks read it on each round.
    pool_config: ArcSwap<PoolConfig>,
    /// State shared by the pool's backends across reloads (breaker ejection count).
    pub pool_shared: Arc<EjectionBudget>,
    /// A task times this backend's breaker now: one is started per trip (see
    /// [`Backend::breaker_trips`]), none waits while the breaker is closed.
    breaker_timed: AtomicBool,
    /// The breaker's memory between trips; only the task timing a trip touches it.
    breaker_history: Mutex<crate::breaker::History>,
    /// When a failed attempt was last logged at warn (ms on [`warn_clock_ms`]; 0: never):
    /// a failing backend logs once per [`WARN_EVERY_MS`], not once per request.
    warned_ms: AtomicU64,
    /// Failed attempts not logged since the last warning.
    unwarned: AtomicU32,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("id", &self.id)
            .field("in_flight", &self.in_flight())
            .field("health", &self.health())
            .field("breaker", &self.breaker.state())
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Backend {
    pub fn new(
        id: BackendId,
        client: UpstreamClient,
        pool_config: Arc<PoolConfig>,
        pool_shared: Arc<EjectionBudget>,
    ) -> Self {
        let closed = CancellationToken::new();
        Backend {
            pool_config: ArcSwap::new(pool_config),
            pool_shared,
            addr_label: id.addr.to_string().into(),
            id,
            in_flight: AtomicU32::new(0),
            health: AtomicU8::new(Health::Unknown as u8),
            checked: AtomicBool::new(false),
            health_epoch: AtomicU64::new(0),
            health_wake: Notify::new(),
            draining: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            max_concurrent: AtomicU32::new(0),
            ramp: AtomicU32::new(pack_ramp(RAMP_FULL, RAMP_FULL)),
            breaker: Gate::default(),
            idle: Notify::new(),
            closed,
            client: ArcSwap::from_pointee(client),
            breaker_timed: AtomicBool::new(false),
            breaker_history: Mutex::default(),
            warned_ms: AtomicU64::new(0),
            unwarned: AtomicU32::new(0),
        }
    }

    /// A failed attempt on this backend: `Some(n)` when it is to be logged at warn now, `n`
    /// the failures not logged since the last warning; `None` within [`WARN_EVERY_MS`] of it.
    /// Atomics only (the request path takes no lock).
    pub fn warn_failure(&self) -> Option<u32> {
        let now = warn_clock_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY_MS;
        if !due
            || self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unwarned.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.unwarned.swap(0, Ordering::Relaxed))
    }

    /// Claim the timing of this backend's breaker, which a request has just opened: true when
    /// no task times it yet, and the caller is to run [`Backend::breaker_trips`].
    pub fn claim_breaker_timing(&self) -> bool {
        self.breaker.state() == BreakerState::Open
            && !self.breaker_timed.swap(true, Ordering::AcqRel)
    }

    /// Time the trip of this backend's breaker that [`Backend::claim_breaker_timing`] claimed
    /// (open, half-open, closed again; [`crate::breaker::episode`]), and any trip that comes
    /// before the task has let go; ends when the breaker is closed, or the backend is.
    pub fn breaker_trips(
        self: &Arc<Self>,
        trips: Option<prometheus::IntCounter>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let b = self.clone();
        async move {
            let config = || b.pool_config().circuit_breaker.clone();
            let name = b.id.to_string();
            loop {
                let mut history = *b.breaker_history.lock().unwrap_or_else(|e| e.into_inner());
                let ended = crate::breaker::episode(
                    &b.breaker,
                    &b.pool_shared,
                    &config,
                    &b.closed,
                    &name,
                    trips.as_ref(),
                    &mut history,
                )
                .await;
                *b.breaker_history.lock().unwrap_or_else(|e| e.into_inner()) = history;
                if ended == Episode::Gone {
                    b.retire_breaker();
                    return;
                }
                b.breaker_timed.store(false, Ordering::Release);
                // A trip after the close but before the line above woke a watcher that found
                // the timing still claimed: take it again here, unless the watcher has.
                if !b.claim_breaker_timing() {
                    return;
                }
            }
        }
    }

    /// Close the backend for good: cut what it still has in flight, stop its tasks, and retire
    /// its breaker (no trip from now on; an ejection slot it held goes back to the pool).
    pub fn close(&self) {
        self.closed.cancel();
        self.retire_breaker();
    }

    fn retire_breaker(&self) {
        // Whoever retires first (the close, or the task timing a trip) gives the slot back.
        if self.breaker.retire() {
            self.pool_shared.release_ejection();
        }
    }

    pub fn pool_config(&self) -> Arc<PoolConfig> {
        self.pool_config.load_full()
    }

    pub(crate) fn set_pool_config(&self, c: Arc<PoolConfig>) {
        self.pool_config.store(c);
    }

    /// What `/metrics` shows of this backend now.
    pub fn gauges(&self) -> crate::metrics::BackendGauges {
        crate::metrics::BackendGauges {
            pool: self.id.pool.clone(),
            addr: self.addr_label.clone(),
            in_flight: self.in_flight() as u64,
            healthy: self.is_healthy(),
            breaker_state: self.breaker.state() as u8,
            draining: self.is_draining(),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    /// Set by the health checker. Returns the previous value.
    pub fn set_health(&self, h: Health) -> Health {
        match self.health.swap(h as u8, Ordering::AcqRel) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    pub fn is_checked(&self) -> bool {
        self.checked.load(Ordering::Relaxed)
    }

    pub(crate) fn set_checked(&self, on: bool) {
        self.checked.store(on, Ordering::Relaxed);
    }

    /// The current health checker generation.
    pub(crate) fn health_epoch(&self) -> u64 {
        self.health_epoch.load(Ordering::Acquire)
    }

    /// Retire the running health checker (if any) and return the next generation.
    pub(crate) fn next_health_epoch(&self) -> u64 {
        let e = self.health_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.health_wake.notify_waiters();
        e
    }

    /// Healthy by the checker's account (or no checker configured).
    pub fn is_healthy(&self) -> bool {
        !self.is_checked() || self.health() == Health::Healthy
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Release);
        if on && self.in_flight() == 0 {
            self.idle.notify_waiters();
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
        self.set_draining(true);
    }

    pub(crate) fn set_max_concurrent(&self, n: u32) {
        self.max_concurrent.store(n, Ordering::Relaxed);
    }

    pub fn max_concurrent(&self) -> u32 {
        self.max_concurrent.load(Ordering::Relaxed)
    }

    /// The share of its weight the balancers give it now, in thousandths ([`RAMP_FULL`]
    /// outside slow start).
    #[inline]
    pub fn ramp(&self) -> u32 {
        self.ramp.load(Ordering::Relaxed) & 0xffff
    }

    /// Its own slow-start ramp, in thousandths of its weight (`weight_now`).
    pub fn ramp_own(&self) -> u32 {
        self.ramp.load(Ordering::Relaxed) >> 16
    }

    /// Set by the slow-start task (and for a backend created into a slow-start pool).
    pub fn set_ramp(&self, own: u32, relative: u32) {
        self.ramp.store(pack_ramp(own, relative), Ordering::Relaxed);
    }

    /// May new requests go here (ignoring the bulkhead)?
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_draining() && self.breaker.is_passable()
    }

    /// Cut every request now on this backend (a drain reached its timeout, or shutdown):
    /// its connections fail at once, so requests waiting on them, streaming bodies and
    /// tunnels end. The request path pays nothing for this: the cut lives in the connections.
    /// The registry swaps in a fresh client afterwards, so an undrained backend serves again.
    pub fn cut_in_flight(&self) {
        self.client().cuts.cut_all();
    }

    pub fn client(&self) -> Arc<UpstreamClient> {
        self.client.load_full()
    }

    /// The client without taking a reference count, for the request path: not to be held
    /// across an await.
    pub fn client_guard(&self) -> arc_swap::Guard<Arc<UpstreamClient>> {
        self.client.load()
    }

    /// Replace the client; the old one's idle connections close when its last user is done.
    pub fn set_client(&self, c: UpstreamClient) {
        self.client.store(Arc::new(c));
    }

    /// Try to start a request here: checks availability, the bulkhead and the breaker.
    pub fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        // A backend removed by a reload is in no newer snapshot, so only requests that loaded
        // the older one (just before the swap) can still reach it; they may use it until it
        // is closed, so a reload that replaces a whole pool never turns them into 503s.
        if !self.is_healthy()
            || (self.is_draining() && (!self.is_removed() || self.closed.is_cancelled()))
        {
            return None;
        }
        let max = self.max_concurrent();
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if max > 0 && prev >= max {
            self.end_one();
            return None;
        }
        match self.breaker.try_acquire() {
            Some(trial) => Some(Lease {
                backend: self.clone(),
                slot: 0,
                trial,
                recorded: false,
            }),
            None => {
                self.end_one();
                None
            }
        }
    }

    fn end_one(&self) {
        let prev = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if prev == 1 && self.is_draining() {
            self.idle.notify_waiters();
        }
    }

    /// Wait until nothing is in flight (for draining).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

fn pack_ramp(own: u32, relative: u32) -> u32 {
    (own.min(RAMP_FULL) << 16) | relative.min(RAMP_FULL)
}

/// A request's hold on a backend: counts in-flight until dropped, carries the breaker trial.
#[derive(Debug)]
pub struct Lease {
    pub backend: Arc<Backend>,
    /// The backend's index in the pool that leased it (for per-backend counters).
    pub slot: usize,
    trial: bool,
    recorded: bool,
}

impl Lease {
    /// Report the outcome to the breaker (once).
    pub fn record(&mut self, success: bool) {
        if !self.recorded {
            self.recorded = true;
            let b = &self.backend;
            b.breaker.record(success, self.trial, &b.pool_shared);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.recorded && self.trial {
            // A trial that never produced an outcome must not wedge the half-open state.
            self.backend.breaker.release_trial();
        }
        self.backend.end_one();
    }
}
