//! Prometheus metrics (SPEC §5). Request counts are plain atomics on the request path, folded
//! into the Prometheus counters at scrape time, so serving a request never takes the
//! `MetricVec` lock. Label values come only from config names and status codes, so random
//! paths cannot grow the series.

mod family;
pub mod latency;
pub mod mirror;
pub mod step;

pub use family::{Count, Family, Series};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A backend's state as its gauges show it, read off the registry at scrape time (the
/// caller reads it: metrics/ holds counters and knows no backend type).
#[derive(Debug, Clone)]
pub struct BackendGauges {
    pub pool: Arc<str>,
    pub addr: Arc<str>,
    pub in_flight: u64,
    pub healthy: bool,
    /// `veer_backend_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: u8,
    pub draining: bool,
}

/// Counts of responses by status code for one (route, pool, backend): a block of 100 counters
/// per status class, allocated at the class's first response, so a backend that has answered
/// nothing costs a few words and one that only ever answers 2xx costs one block.
#[derive(Debug, Default)]
pub struct CodeCounters {
    /// `OnceBox`: one word a class (`OnceLock<Box<_>>` is two); every backend of every route
    /// has one of these per pool (issue 15).
    classes: [once_cell::race::OnceBox<[AtomicU64; 100]>; 5],
    /// Time to the answer's headers, made at the first answer (the status console's p99).
    latency: OnceLock<latency::Latency>,
}

impl CodeCounters {
    pub fn inc(&self, status: u16) {
        let i = (status.clamp(100, 599) - 100) as usize;
        let class = &self.classes[i / 100];
        // Allocates once per class; from then on an atomic load.
        let block = class.get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        block[i % 100].fetch_add(1, Ordering::Relaxed);
    }

    /// Count an answer's time to its headers.
    pub fn observe_latency(&self, took: std::time::Duration) {
        self.latency.get_or_init(Default::default).observe(took);
    }

    /// All answers counted and the server errors (5xx) among them.
    pub fn totals(&self) -> (u64, u64) {
        let (mut all, mut errors) = (0, 0);
        for (code, n) in self.counted() {
            all += n;
            if code >= 500 {
                errors += n;
            }
        }
        (all, errors)
    }

    /// Add the latency histogram's counts into `into`, made when there are any.
    pub fn add_latency_to(&self, into: &mut Option<Box<[u64; latency::BUCKETS]>>) {
        if let Some(l) = self.latency.get() {
            l.add_to(into.get_or_insert_with(|| Box::new([0; latency::BUCKETS])));
        }
    }

    /// (status code, count) of every code counted at least once.
    fn counted(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.classes.iter().enumerate().flat_map(|(c, class)| {
            class.get().into_iter().flat_map(move |block| {
                block.iter().enumerate().filter_map(move |(i, n)| {
                    let n = n.load(Ordering::Relaxed);
                    (n > 0).then_some((100 * (c as u16 + 1) + i as u16, n))
                })
            })
        })
    }
}

/// `veer_request_duration_seconds` bucket bounds: from 100 µs, so a proxy's sub-millisecond
/// latencies resolve (issue 20), to 30 s (the default request timeout), 1-2.5-5 per decade.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// A route's latency histogram for one pool, made at its first observation: a histogram
/// series is about a kilobyte, and most routes of a large config see no traffic for most of
/// their pools. From then on an atomic load before the observation.
#[derive(Debug, Clone)]
pub struct LazyHistogram {
    vec: HistogramVec,
    route: Arc<str>,
    pool: Arc<str>,
    made: OnceLock<Histogram>,
    /// Cleared when a reload removes the route (its series go): a request still on it then
    /// must not make its series again.
    alive: Arc<AtomicBool>,
}

impl LazyHistogram {
    pub fn observe(&self, v: f64) {
        if let Some(h) = self.made.get() {
            return h.observe(v);
        }
        if self.alive.load(Ordering::Acquire) {
            self.made
                .get_or_init(|| self.vec.with_label_values(&[&*self.route, &*self.pool]))
                .observe(v);
        }
    }
}

/// What a route keeps across snapshots for its metrics: whether its lazily made series may
/// still be made ([`LazyHistogram`]), and its counters.
#[derive(Debug)]
struct RouteSeries {
    alive: Arc<AtomicBool>,
    retries: Count,
    override_rejected: Count,
}

/// The metric handles a route in one snapshot uses.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// Per pool (split order).
    pub duration: Vec<LazyHistogram>,
    /// Per pool, per backend (pool order), plus one last entry for "no backend".
    pub codes: Vec<Vec<Arc<CodeCounters>>>,
    pub retries: Count,
    /// Overrides ignored because they were not allowed (`veer_override_rejected_total`).
    pub override_rejected: Count,
}

/// A route's split: (pool, weight) in split order.
type Split = Vec<(Arc<str>, u32)>;

/// `veer_circuit_breaker_trips_total`'s name and help.
const TRIPS: (&str, &str) = (
    "veer_circuit_breaker_trips_total",
    "Times a backend's breaker opened.",
);

/// (route, pool, backend): names shared with the snapshot, so a series key allocates nothing.
type CodeKey = (Arc<str>, Arc<str>, Arc<str>);

/// All of veer's metrics.
pub struct Metrics {
    pub registry: prometheus::Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// Not registered: the exposition gives every backend a series, at zero before its
    /// first trip, at scrape time.
    pub breaker_trips: IntCounterVec,
    pub reloads: IntCounterVec,
    pub rollout_step: Family,
    pub rollouts: Family,
    /// SPEC §10: every external gate check, by route, gate and result.
    pub rollout_gate_checks: IntCounterVec,
    /// `veer_dns_resolutions_total{pool,result}`: lookups of backend names (SPEC §9).
    pub dns_resolutions: IntCounterVec,
    /// Access log lines dropped because the writer's queue was full (issue 16).
    pub access_log_dropped: prometheus::IntCounter,
    /// Upgrades in place (SIGUSR2) by result (issue 16).
    pub upgrades: IntCounterVec,
    /// `veer_mirror_requests_total{route,result}` (SPEC §11).
    pub mirror_requests: IntCounterVec,
    /// A B-tree: a series per (route, pool, backend) of a large config, and a hash table's
    /// spare slots were a third of what they cost (issue 15).
    codes: Mutex<BTreeMap<CodeKey, Arc<CodeCounters>>>,
    /// The live config's routes, with their split (pool, weight) as it last went live.
    routes: Mutex<HashMap<Arc<str>, (Split, RouteSeries)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &prometheus::Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = prometheus::Registry::new();
        let counter =
            |n: &str, h: &str, l: &[&str]| reg(&r, IntCounterVec::new(Opts::new(n, h), l).unwrap());
        let m = Metrics {
            requests: counter(
                "veer_requests_total",
                "Requests answered, by route, pool, backend and status code.",
                &["route", "pool", "backend", "code"],
            ),
            duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "veer_request_duration_seconds",
                        "Time until the upstream's response headers, by route and pool.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["route", "pool"],
                )
                .unwrap(),
            ),
            breaker_trips: IntCounterVec::new(
                Opts::new(TRIPS.0, TRIPS.1),
                &["pool", "backend"],
            )
            .unwrap(),
            reloads: counter(
                "veer_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            ),
            rollout_step: Family::new(
                "veer_rollout_step",
                "Current rollout step index of a route (-1 when none).",
                &["route"],
                false,
            ),
            rollouts: Family::new(
                "veer_rollouts_total",
                "Finished rollouts by result.",
                &["route", "result"],
                true,
            ),
            rollout_gate_checks: counter(
                "veer_rollout_gate_checks_total",
                "External rollout gate checks by result (pass, fail, error).",
                &["route", "gate", "result"],
            ),
            dns_resolutions: counter(
                "veer_dns_resolutions_total",
                "Lookups of backend names, by pool and result (success or failure).",
                &["pool", "result"],
            ),
            access_log_dropped: reg(
                &r,
                prometheus::IntCounter::new(
                    "veer_access_log_dropped_total",
                    "Access log lines dropped because the writer could not keep up.",
                )
                .unwrap(),
            ),
            upgrades: counter(
                "veer_upgrades_total",
                "Upgrades in place (SIGUSR2) by result: success (the new process took over) or failure (it did not; this one serves on).",
                &["result"],
            ),
            mirror_requests: counter(
                "veer_mirror_requests_total",
                "Mirrored copies by route and result: same or differ (compared), error, dropped (not sent: too many in flight or nothing available), sent (not compared).",
                &["route", "result"],
            ),
            registry: r,
            codes: Mutex::new(BTreeMap::new()),
            routes: Mutex::new(HashMap::new()),
        };
        // Counters start at zero so dashboards and alerts see them before the first event.
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
            m.upgrades.with_label_values(&[result]);
        }
        m
    }

    /// Bring the per-route series in line with a config about to go live: a rollout step of
    /// -1 and zeroed rollout counters for routes seen for the first time, and no series left
    /// for routes that are gone. (Weights, retries and rejected overrides are written at
    /// scrape time, [`Metrics::render`].)
    pub fn routes_changed(&self, config: &crate::config::Config) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut now: HashMap<Arc<str>, (Split, RouteSeries)> =
            HashMap::with_capacity(config.routes.len());
        for rc in &config.routes {
            let (name, series) = match routes.remove_entry(rc.name.as_str()) {
                Some((name, (_, series))) => (name, series),
                None => {
                    // The rollout controller owns the step from here on.
                    self.rollout_step.with_label_values(&[&rc.name]).set(-1);
                    for result in ["succeeded", "rolled_back"] {
                        self.rollouts.with_label_values(&[&rc.name, result]);
                    }
                    let series = RouteSeries {
                        alive: Arc::new(AtomicBool::new(true)),
                        retries: Count::default(),
                        override_rejected: Count::default(),
                    };
                    (rc.name.as_str().into(), series)
                }
            };
            let split = rc
                .split
                .iter()
                .map(|(p, w)| (p.as_str().into(), *w))
                .collect();
            now.insert(name, (split, series));
        }
        // What is left is gone.
        if !routes.is_empty() {
            let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
            for (route, (pools, series)) in routes.drain() {
                series.alive.store(false, Ordering::Release);
                for (p, _) in &pools {
                    let _ = self.duration.remove_label_values(&[&route, p]);
                }
                let _ = self.rollout_step.remove_label_values(&[&route]);
                for result in ["succeeded", "rolled_back"] {
                    let _ = self.rollouts.remove_label_values(&[&route, result]);
                }
                for o in mirror::Outcome::ALL {
                    let _ = self
                        .mirror_requests
                        .remove_label_values(&[&route, o.as_str()]);
                }
                codes.retain(|(r, pool, backend), c| {
                    if *r != route {
                        return true;
                    }
                    for (code, _) in c.counted() {
                        let code = code.to_string();
                        let _ = self.requests.remove_label_values(&[
                            &**r,
                            &**pool,
                            &**backend,
                            code.as_str(),
                        ]);
                    }
                    false
                });
            }
        }
        *routes = now;
    }

    /// Handles for a route over its pools (name and backend labels, in the route's order);
    /// called when a snapshot is built, after [`Metrics::routes_changed`] with its config.
    pub fn route_metrics(&self, route: &str, pools: &[(&str, Vec<&str>)]) -> RouteMetrics {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        let mut per_pool = Vec::with_capacity(pools.len());
        let none: Arc<str> = "".into();
        let (route_name, alive, retries, override_rejected) = {
            let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            if !routes.contains_key(route) {
                // Not in a config that went live (a caller outside a snapshot build): counted,
                // and written out, until the next config goes live.
                let series = RouteSeries {
                    alive: Arc::new(AtomicBool::new(true)),
                    retries: Count::default(),
                    override_rejected: Count::default(),
                };
                routes.insert(route.into(), (Vec::new(), series));
            }
            let (name, (_, series)) = routes.get_key_value(route).expect("inserted above");
            (
                name.clone(),
                series.alive.clone(),
                series.retries.clone(),
                series.override_rejected.clone(),
            )
        };
        let mut names = Vec::with_capacity(pools.len());
        for (name, backends) in pools {
            let pool: Arc<str> = (*name).into();
            names.push(pool.clone());
            let labels = backends.iter().copied().chain(std::iter::once(""));
            let list = labels
                .map(|backend| {
                    let backend = if backend.is_empty() {
                        none.clone()
                    } else {
                        backend.into()
                    };
                    codes
                        .entry((route_name.clone(), pool.clone(), backend))
                        .or_default()
                        .clone()
                })
                .collect();
            per_pool.push(list);
        }
        RouteMetrics {
            duration: names
                .into_iter()
                .map(|pool| LazyHistogram {
                    vec: self.duration.clone(),
                    route: route_name.clone(),
                    pool,
                    made: OnceLock::new(),
                    alive: alive.clone(),
                })
                .collect(),
            codes: per_pool,
            retries,
            override_rejected,
        }
    }

    /// Fold the request counts into `veer_requests_total`.
    fn sync(&self) {
        let codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        for ((route, pool, backend), c) in codes.iter() {
            for (code, n) in c.counted() {
                let code = code.to_string();
                let counter = self.requests.with_label_values(&[
                    &**route,
                    &**pool,
                    &**backend,
                    code.as_str(),
                ]);
                let prev = counter.get();
                if n > prev {
                    counter.inc_by(n - prev);
                }
            }
        }
    }

    /// The families written at scrape time, built for this scrape and dropped after it (issue
    /// 15: per backend and per route, registered series were most of what metrics held): the
    /// backends' gauges and breaker trips (as given), each route's split weights (as the
    /// live config says) and its counters.
    fn scrape_families(&self, backends: &[BackendGauges]) -> Vec<prometheus::proto::MetricFamily> {
        let r = prometheus::Registry::new();
        let gauge =
            |n: &str, h: &str, l: &[&str]| reg(&r, IntGaugeVec::new(Opts::new(n, h), l).unwrap());
        let counter =
            |n: &str, h: &str, l: &[&str]| reg(&r, IntCounterVec::new(Opts::new(n, h), l).unwrap());
        let in_flight = gauge(
            "veer_upstream_in_flight",
            "Requests in flight to a backend.",
            &["pool", "backend"],
        );
        let healthy = gauge(
            "veer_backend_healthy",
            "1 when the backend takes traffic by its health checks.",
            &["pool", "backend"],
        );
        let breaker_state = gauge(
            "veer_circuit_breaker_state",
            "Circuit breaker: 0 closed, 1 open, 2 half-open.",
            &["pool", "backend"],
        );
        let draining = gauge(
            "veer_backend_draining",
            "1 while a backend drains.",
            &["pool", "backend"],
        );
        let trips = counter(TRIPS.0, TRIPS.1, &["pool", "backend"]);
        // The trips counted so far, by (pool, backend); a gone backend's series goes.
        let mut tripped: HashMap<(String, String), u64> = HashMap::new();
        let collected = prometheus::core::Collector::collect(&self.breaker_trips);
        for m in collected.iter().flat_map(|f| f.get_metric()) {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            let v = m.get_counter().get_value() as u64;
            tripped.insert((label("pool"), label("backend")), v);
        }
        let mut live: HashSet<(&str, &str)> = HashSet::with_capacity(backends.len());
        for b in backends {
            let l = [&*b.pool, &*b.addr];
            live.insert((&*b.pool, &*b.addr));
            in_flight.with_label_values(&l).set(b.in_flight as i64);
            healthy.with_label_values(&l).set(b.healthy as i64);
            breaker_state
                .with_label_values(&l)
                .set(b.breaker_state as i64);
            draining.with_label_values(&l).set(b.draining as i64);
            // Exists (at zero) before the first trip.
            let t = tripped.get(&(b.pool.to_string(), b.addr.to_string()));
            trips.with_label_values(&l).inc_by(t.copied().unwrap_or(0));
        }
        for (pool, addr) in tripped.keys() {
            if !live.contains(&(pool.as_str(), addr.as_str())) {
                let _ = self.breaker_trips.remove_label_values(&[pool, addr]);
            }
        }
        let weight = gauge(
            "veer_route_weight",
            "Current split weight of a pool in a route.",
            &["route", "pool"],
        );
        let retries = counter(
            "veer_retries_total",
            "Requests retried on another backend.",
            &["route"],
        );
        let rejected = counter(
            "veer_override_rejected_total",
            "Pool overrides ignored because the peer or the token was not allowed.",
            &["route"],
        );
        for (route, (split, series)) in self.routes.lock().unwrap_or_else(|e| e.into_inner()).iter()
        {
            for (p, w) in split {
                weight.with_label_values(&[route, p]).set(i64::from(*w));
            }
            retries
                .with_label_values(&[route])
                .inc_by(series.retries.get());
            rejected
                .with_label_values(&[route])
                .inc_by(series.override_rejected.get());
        }
        self.rollout_step.write(&r);
        self.rollouts.write(&r);
        r.gather()
    }

    /// The text exposition, current as of now, with every backend's gauges as given.
    pub fn render(&self, backends: &[BackendGauges]) -> String {
        self.sync();
        let mut families = self.registry.gather();
        families.extend(self.scrape_families(backends));
        // As one registry's gather gives them: by name.
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
