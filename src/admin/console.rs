//! The status console's figures (issue 20): a sampler task reads the counters that exist,
//! once a second, into fixed-size rings, and `GET /api/series` (an extension of SPEC §3)
//! hands a copy to the status page.
//!
//! - Per pool, 15 minutes at 1 s: requests and server errors (5xx) per second. Per pool and
//!   per backend, the last minute: requests/s, error rate and p99 (from the per-backend
//!   latency histograms of [`crate::metrics::latency`]). Requests are upstream attempts as
//!   `veer_requests_total` counts them (a retried request counts once per attempt), summed
//!   over every route that uses the pool; a pool's figures add the 503s of requests that
//!   found none of its backends available.
//! - Per route, 15 minutes: each pool's configured share of the split and where traffic
//!   actually goes (the split as backends' state and the fallback make it).
//! - Per route with a rollout: the timeline of the steps this veer has seen (start time,
//!   the gate's figures and verdict), and the last [`FINISHED`] finished rollouts. They live
//!   here, in the sampler, not in the rollout layer: they are what the sampler saw of
//!   `/api/status`'s `rollout` once a second (the start of the running step is exact, from
//!   its elapsed time), and they start empty when veer starts.
//!
//! Nothing here is on the request path: the request path only adds to atomics. The rings are
//! owned by [`Console`] behind a mutex that only the sampler (once a second) and the admin
//! handler take, each briefly. Memory is bounded: a ring keeps runs of equal values (an idle
//! pool's zeros, a split that does not move) and never more than its length of them.

use crate::control::Control;
use crate::metrics::latency::{self, BUCKETS};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Samples kept per series: 15 minutes at one a second.
pub const SECONDS: usize = 900;
/// The window of the per-pool and per-backend figures.
pub const MINUTE: usize = 60;
/// Finished rollouts kept per route.
pub const FINISHED: usize = 5;
/// How often the sampler reads the counters.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A series of per-tick values, kept as runs of equal values: at most `cap + 1` runs, covering
/// at least the last `cap` ticks.
#[derive(Debug)]
struct Ring<T> {
    cap: usize,
    /// (first tick, value) of each run, oldest first.
    runs: VecDeque<(u64, T)>,
}

impl<T: Clone + PartialEq> Ring<T> {
    fn new(cap: usize) -> Self {
        Ring {
            cap,
            runs: VecDeque::new(),
        }
    }

    fn push(&mut self, tick: u64, v: T) {
        if self.runs.back().map(|(_, last)| last) != Some(&v) {
            if self.runs.is_empty() {
                // Room for one run only: an idle pool's or backend's series (issue 15: most
                // of a large config's) never has a second, and a first push would make four.
                self.runs.reserve_exact(1);
            }
            self.runs.push_back((tick, v));
        }
        // A run is dropped once the run after it covers the whole window.
        let start = (tick + 1).saturating_sub(self.cap as u64);
        while self.runs.len() > 1 && self.runs[1].0 <= start {
            self.runs.pop_front();
        }
        while self.runs.len() > self.cap + 1 {
            self.runs.pop_front();
        }
    }

    /// The window `from..=to` as `[offset, value]` pairs, offset from `from`: each value
    /// holds until the next pair's offset, and ticks before the first pair have no sample.
    /// Equal neighbours (after `f`) are one pair, so an idle or steady series is a few bytes.
    fn runs_json(&self, from: u64, to: u64, f: impl Fn(&T) -> Value) -> Value {
        let mut out: Vec<Value> = Vec::new();
        let mut last: Option<Value> = None;
        for (i, (first, v)) in self.runs.iter().enumerate() {
            let end = self.runs.get(i + 1).map_or(u64::MAX, |n| n.0);
            if end <= from || *first > to {
                continue;
            }
            let v = f(v);
            if last.as_ref() == Some(&v) {
                continue;
            }
            out.push(json!([(*first).max(from) - from, v]));
            last = Some(v);
        }
        Value::Array(out)
    }

    /// The values of ticks `from..=to`, `None` before the first one pushed.
    fn window(&self, from: u64, to: u64) -> Vec<Option<T>> {
        let mut out = Vec::with_capacity((to + 1).saturating_sub(from) as usize);
        let mut i = 0;
        for t in from..=to {
            while i + 1 < self.runs.len() && self.runs[i + 1].0 <= t {
                i += 1;
            }
            out.push(
                self.runs
                    .get(i)
                    .filter(|(first, _)| *first <= t)
                    .map(|(_, v)| v.clone()),
            );
        }
        out
    }
}

/// What one second added to a pool's or a backend's counters.
#[derive(Debug, Clone, Default, PartialEq)]
struct Second {
    requests: u64,
    errors: u64,
    /// Latency buckets that grew, and by how much.
    latency: Vec<(u8, u32)>,
}

/// Cumulative counters as read in one tick (no histogram before the first answer, so an
/// idle backend costs a few words).
#[derive(Clone, Default)]
struct Reading {
    requests: u64,
    errors: u64,
    latency: Option<Box<[u64; BUCKETS]>>,
}

impl Reading {
    fn add(&mut self, c: &crate::metrics::CodeCounters) {
        let (n, e) = c.totals();
        self.requests += n;
        self.errors += e;
        c.add_latency_to(&mut self.latency);
    }
}

/// One pool's or backend's figures: the last reading and what each second added.
struct Tally {
    prev: Option<Reading>,
    seconds: Ring<Second>,
}

impl Tally {
    fn new(cap: usize) -> Self {
        Tally {
            prev: None,
            seconds: Ring::new(cap),
        }
    }

    /// Record what the counters added since the last tick. Counters that went down (a route
    /// removed, its counters gone) count as a fresh start, not as negative traffic.
    fn tick(&mut self, tick: u64, now: Reading) {
        let sec = match &self.prev {
            Some(p) if now.requests >= p.requests => Second {
                requests: now.requests - p.requests,
                errors: now.errors.saturating_sub(p.errors),
                latency: match (&now.latency, &p.latency) {
                    (None, _) => Vec::new(),
                    (Some(n), p) => n
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (i, n.saturating_sub(p.as_ref().map_or(0, |p| p[i]))))
                        .filter(|(_, d)| *d > 0)
                        .map(|(i, d)| (i as u8, d.min(u64::from(u32::MAX)) as u32))
                        .collect(),
                },
            },
            _ => Second::default(),
        };
        self.seconds.push(tick, sec);
        self.prev = Some(now);
    }

    /// Requests/s, error rate and p99 over the last minute (of the ticks seen).
    fn minute(&self, tick: u64, ticks_seen: u64) -> Value {
        let from = (tick + 1).saturating_sub(MINUTE as u64);
        let secs = ticks_seen.clamp(1, MINUTE as u64);
        let (mut n, mut e) = (0u64, 0u64);
        let mut hist = [0u64; BUCKETS];
        for s in self.seconds.window(from, tick).into_iter().flatten() {
            n += s.requests;
            e += s.errors;
            for (b, c) in &s.latency {
                hist[*b as usize] += u64::from(*c);
            }
        }
        json!({
            "requests": n,
            "rps": round2(n as f64 / secs as f64),
            "error_rate": if n == 0 { 0.0 } else { round4(e as f64 / n as f64) },
            "p99_ms": latency::quantile_us(&hist, 0.99).map(|us| round2(us as f64 / 1000.0)),
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Per pool (split order), the configured share and where traffic goes, in hundredths of a
/// percent.
type Shares = (Vec<u16>, Vec<u16>);

/// A route's split over time.
struct RouteSeries {
    pools: Vec<String>,
    shares: Ring<Shares>,
}

/// One step of a rollout as the sampler saw it.
#[derive(Debug, Clone)]
struct StepSeen {
    step: u64,
    weight: Value,
    /// Unix ms; exact for a step seen running (from its elapsed time), else when seen.
    started_ms: u64,
    ended_ms: Option<u64>,
    /// The gate's figures as last seen during the step.
    gate: Value,
    /// "passed", "failed", "promoted", or null while running.
    verdict: Option<&'static str>,
}

/// A rollout as the sampler saw it.
#[derive(Debug, Clone)]
struct Timeline {
    steps_def: Value,
    to: Value,
    started_ms: u64,
    ended_ms: Option<u64>,
    state: String,
    steps: Vec<StepSeen>,
}

impl Timeline {
    fn json(&self) -> Value {
        json!({
            "to": self.to,
            "steps": self.steps_def,
            "state": self.state,
            "started_ms": self.started_ms,
            "ended_ms": self.ended_ms,
            "timeline": self.steps.iter().map(|s| json!({
                "step": s.step,
                "weight": s.weight,
                "started_ms": s.started_ms,
                "ended_ms": s.ended_ms,
                "gate": s.gate,
                "verdict": s.verdict,
            })).collect::<Vec<_>>(),
        })
    }
}

fn finished_state(s: &str) -> bool {
    matches!(s, "succeeded" | "rolled_back")
}

#[derive(Default)]
struct Rollouts {
    current: Option<Timeline>,
    /// Newest first.
    finished: VecDeque<Value>,
}

impl Rollouts {
    /// Follow a route's `rollout` (as in `/api/status`) one tick on.
    fn observe(&mut self, r: &Value, now_ms: u64) {
        let Some(state) = r["state"].as_str() else {
            return;
        };
        let step = r["step"].as_u64().unwrap_or(0);
        let done = finished_state(state);
        let fresh = match &self.current {
            None => !done,
            Some(t) => {
                t.steps_def != r["steps"]
                    || t.to != r["to"]
                    || (t.ended_ms.is_some() && !done)
                    || t.steps.last().is_some_and(|s| step < s.step && !done)
            }
        };
        if fresh {
            self.current = Some(Timeline {
                steps_def: r["steps"].clone(),
                to: r["to"].clone(),
                started_ms: now_ms,
                ended_ms: None,
                state: state.to_string(),
                steps: Vec::new(),
            });
        }
        let Some(t) = self.current.as_mut() else {
            return;
        };
        if t.ended_ms.is_some() {
            return;
        }
        t.state = state.to_string();
        // Waiting for the rollouts it comes after (SPEC §10): no step has started yet.
        if state == "waiting" {
            return;
        }
        let started = r["step_elapsed_ms"]
            .as_u64()
            .map_or(now_ms, |e| now_ms.saturating_sub(e));
        let moved = t.steps.last().is_none_or(|s| s.step != step);
        if moved && !done {
            if let Some(last) = t.steps.last_mut() {
                last.ended_ms.get_or_insert(started);
                last.verdict.get_or_insert("passed");
            }
            if t.steps.is_empty() {
                t.started_ms = started;
            }
            t.steps.push(StepSeen {
                step,
                weight: r["weight"].clone(),
                started_ms: started,
                ended_ms: None,
                gate: Value::Null,
                verdict: None,
            });
        }
        if let Some(last) = t.steps.last_mut() {
            if !done || last.step == step {
                last.gate = r["gate"].clone();
            }
        }
        if done {
            if let Some(last) = t.steps.last_mut() {
                last.ended_ms.get_or_insert(now_ms);
                last.verdict.get_or_insert(match state {
                    "succeeded" if step > last.step => "promoted",
                    "succeeded" => "passed",
                    _ => "failed",
                });
            }
            t.ended_ms = Some(now_ms);
            self.finished.push_front(t.json());
            self.finished.truncate(FINISHED);
        }
    }
}

/// Everything the sampler keeps.
struct Rings {
    /// Ticks taken so far; the last one is `ticks - 1`.
    ticks: u64,
    /// Wall clock of the last tick (Unix ms).
    now_ms: u64,
    pools: BTreeMap<String, Tally>,
    /// B-trees rather than hash maps here and for the pools: no spare slots (a hash table of
    /// thousands of backends was half empty; issue 15).
    backends: BTreeMap<(String, String), Tally>,
    routes: BTreeMap<String, RouteSeries>,
    rollouts: HashMap<String, Rollouts>,
}

/// The console's rings, shared by the sampler and the admin handler.
#[derive(Clone)]
pub struct Console {
    rings: Arc<Mutex<Rings>>,
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Console {
    pub fn new() -> Self {
        Console {
            rings: Arc::new(Mutex::new(Rings {
                ticks: 0,
                now_ms: 0,
                pools: BTreeMap::new(),
                backends: BTreeMap::new(),
                routes: BTreeMap::new(),
                rollouts: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read the counters once. The readings are taken before the lock.
    pub fn sample(&self, rt: &Control) {
        let now_ms = unix_ms(SystemTime::now());
        let snap = rt.snapshot();
        let mut pools: BTreeMap<String, Reading> = BTreeMap::new();
        let mut backends: HashMap<(String, String), Reading> = HashMap::new();
        for name in snap.config.pools.keys() {
            pools.entry(name.clone()).or_default();
        }
        for b in snap.pools.values().flat_map(|p| p.backends.iter()) {
            backends
                .entry((b.id.pool.to_string(), b.addr_label.to_string()))
                .or_default();
        }
        let mut shares = Vec::new();
        for route in snap.router.routes() {
            for (p, pool) in route.pools.iter().enumerate() {
                let Some(codes) = route.metrics.codes.get(p) else {
                    continue;
                };
                let pr = pools.entry(pool.name.to_string()).or_default();
                // The last entry counts requests that found no backend of the pool.
                for c in codes {
                    pr.add(c);
                }
                for (b, c) in pool.backends.iter().zip(codes) {
                    backends
                        .entry((pool.name.to_string(), b.addr_label.to_string()))
                        .or_default()
                        .add(c);
                }
            }
            let total: u64 = route.weights.iter().map(|w| u64::from(*w)).sum();
            let configured: Vec<u16> = route
                .weights
                .iter()
                .map(|w| {
                    (u64::from(*w) * 10_000)
                        .checked_div(total)
                        .unwrap_or(0)
                        .min(10_000) as u16
                })
                .collect();
            let per = u64::from(crate::routing::BUCKETS);
            let effective: Vec<u16> = crate::routing::choice::effective_buckets(route)
                .into_iter()
                .map(|b| (u64::from(b) * 10_000 / per).min(10_000) as u16)
                .collect();
            let names: Vec<String> = route.pools.iter().map(|p| p.name.to_string()).collect();
            shares.push((route.name.to_string(), names, (configured, effective)));
        }
        let rollouts: Vec<(String, Value)> = snap
            .config
            .routes
            .iter()
            .filter(|r| r.rollout.is_some())
            .map(|r| {
                (
                    r.name.clone(),
                    crate::rollout::status_json(&rt.rollouts, rt, &r.name),
                )
            })
            .collect();

        let mut g = self.lock();
        let tick = g.ticks;
        g.ticks += 1;
        g.now_ms = now_ms;
        g.pools.retain(|k, _| pools.contains_key(k));
        for (name, r) in pools {
            g.pools
                .entry(name)
                .or_insert_with(|| Tally::new(SECONDS))
                .tick(tick, r);
        }
        g.backends.retain(|k, _| backends.contains_key(k));
        for (key, r) in backends {
            g.backends
                .entry(key)
                .or_insert_with(|| Tally::new(MINUTE))
                .tick(tick, r);
        }
        g.routes
            .retain(|k, _| shares.iter().any(|(name, _, _)| name == k));
        for (name, names, s) in shares {
            let rs = g.routes.entry(name).or_insert_with(|| RouteSeries {
                pools: names.clone(),
                shares: Ring::new(SECONDS),
            });
            if rs.pools != names {
                // The route's pools changed: its history is of other pools.
                rs.pools = names;
                rs.shares = Ring::new(SECONDS);
            }
            rs.shares.push(tick, s);
        }
        g.rollouts
            .retain(|k, _| rollouts.iter().any(|(name, _)| name == k));
        for (name, r) in rollouts {
            g.rollouts.entry(name).or_default().observe(&r, now_ms);
        }
    }

    /// `GET /api/series`.
    pub fn json(&self) -> Value {
        let g = self.lock();
        if g.ticks == 0 {
            return json!({ "interval_ms": INTERVAL.as_millis() as u64, "length": 0, "now_ms": null,
                           "pools": {}, "routes": {} });
        }
        let last = g.ticks - 1;
        let from = (last + 1).saturating_sub(SECONDS as u64);
        let mut pools = Map::new();
        for (name, t) in &g.pools {
            let rps = t.seconds.runs_json(from, last, |s| json!(s.requests));
            let err = t.seconds.runs_json(from, last, |s| {
                json!(if s.requests == 0 {
                    0.0
                } else {
                    round4(s.errors as f64 / s.requests as f64)
                })
            });
            let mut backends = Map::new();
            for ((pool, addr), b) in &g.backends {
                if pool == name {
                    backends.insert(addr.clone(), b.minute(last, g.ticks));
                }
            }
            pools.insert(
                name.clone(),
                json!({
                    "requests": rps,
                    "error_rate": err,
                    "minute": t.minute(last, g.ticks),
                    "backends": backends,
                }),
            );
        }
        let mut routes = Map::new();
        for (name, rs) in &g.routes {
            let series = |pick: fn(&Shares) -> &Vec<u16>| -> Map<String, Value> {
                rs.pools
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let v = rs.shares.runs_json(from, last, |s| {
                            pick(s)
                                .get(i)
                                .map_or(Value::Null, |x| json!(f64::from(*x) / 100.0))
                        });
                        (p.clone(), v)
                    })
                    .collect()
            };
            let mut v = json!({
                "pools": rs.pools,
                "weight": series(|s| &s.0),
                "effective": series(|s| &s.1),
            });
            if let Some(ro) = g.rollouts.get(name) {
                v["rollout"] = ro.current.as_ref().map_or(Value::Null, Timeline::json);
                v["finished"] = json!(ro.finished);
            }
            routes.insert(name.clone(), v);
        }
        json!({
            "interval_ms": INTERVAL.as_millis() as u64,
            "length": last + 1 - from,
            "now_ms": g.now_ms,
            "pools": pools,
            "routes": routes,
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The sampler: one reading a second until `stop` (tokio time, so tests drive it with
/// paused time). A tick that comes late is skipped, not caught up in a burst.
pub async fn run(rt: Arc<Control>, console: Console, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => console.sample(&rt),
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_ring_keeps_runs_and_forgets_what_left_the_window() {
        let mut r = Ring::new(3);
        for (t, v) in [1, 1, 2, 2, 2, 3].into_iter().enumerate() {
            r.push(t as u64, v);
        }
        assert_eq!(r.window(3, 5), vec![Some(2), Some(2), Some(3)]);
        assert!(r.runs.len() <= 4, "{:?}", r.runs);
        assert_eq!(r.runs.front().map(|x| x.1), Some(2));
        let mut idle = Ring::new(900);
        for t in 0..10_000 {
            idle.push(t, 0u64);
        }
        assert_eq!(idle.runs.len(), 1, "equal values are one run");
        let mut busy = Ring::new(900);
        for t in 0..10_000u64 {
            busy.push(t, t);
        }
        assert!(busy.runs.len() <= 901, "bounded: {}", busy.runs.len());
        assert_eq!(busy.window(9_998, 9_999), vec![Some(9_998), Some(9_999)]);
        assert_eq!(Ring::<u8>::new(3).window(0, 1), vec![None, None]);
    }

    fn config() -> Config {
        Config::parse(
            std::path::Path::new("veer.toml"),
            r#"
[pools.blue]
backends = ["127.0.0.1:9", "127.0.0.1:10"]
[pools.green]
backends = ["127.0.0.1:11"]
[[routes]]
name = "web"
split = { blue = 75, green = 25 }
"#,
        )
        .expect("config")
    }

    /// Count `n` answers of `status` taking `ms` on a route's pool's backend, as the request
    /// path does.
    fn answer(rt: &Control, pool: usize, backend: usize, n: u64, status: u16, ms: u64) {
        let snap = rt.snapshot();
        let route = snap.router.get("web").unwrap();
        let c = &route.metrics.codes[pool][backend];
        for _ in 0..n {
            c.inc(status);
            c.observe_latency(Duration::from_millis(ms));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sampler_reads_once_a_second_exactly() {
        let rt = Control::new(config(), None).unwrap();
        let console = Console::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(run(rt.clone(), console.clone(), stop.clone()));
        // The first reading is at once.
        tokio::task::yield_now().await;
        assert_eq!(console.lock().ticks, 1);

        // Second 1: blue's first backend 10 answers (2 of them 503, one slow), green 4.
        answer(&rt, 0, 0, 7, 200, 5);
        answer(&rt, 0, 0, 2, 503, 5);
        answer(&rt, 0, 0, 1, 200, 800);
        answer(&rt, 1, 0, 4, 200, 20);
        tokio::time::advance(INTERVAL).await;
        tokio::task::yield_now().await;
        // Second 2: blue's second backend 10 answers; nothing else.
        answer(&rt, 0, 1, 10, 200, 1);
        tokio::time::advance(INTERVAL).await;
        tokio::task::yield_now().await;
        // Second 3: nothing.
        tokio::time::advance(INTERVAL).await;
        tokio::task::yield_now().await;
        assert_eq!(console.lock().ticks, 4);

        let s = console.json();
        assert_eq!(s["length"], 4);
        let blue = &s["pools"]["blue"];
        // Run-length: [offset, value] pairs.
        assert_eq!(blue["requests"], json!([[0, 0], [1, 10], [3, 0]]));
        assert_eq!(blue["error_rate"], json!([[0, 0.0], [1, 0.2], [2, 0.0]]));
        // 20 requests over the 4 seconds seen; 2 errors; p99 is the slow one's bucket.
        assert_eq!(blue["minute"]["requests"], 20);
        assert_eq!(blue["minute"]["rps"], 5.0);
        assert_eq!(blue["minute"]["error_rate"], 0.1);
        let p99 = blue["minute"]["p99_ms"].as_f64().unwrap();
        assert!((800.0..1000.0).contains(&p99), "{p99}");
        let b0 = &blue["backends"]["127.0.0.1:9"];
        assert_eq!(b0["requests"], 10);
        assert_eq!(b0["error_rate"], 0.2);
        let b1 = &blue["backends"]["127.0.0.1:10"];
        assert_eq!(b1["rps"], 2.5);
        assert_eq!(b1["error_rate"], 0.0);
        let p99 = b1["p99_ms"].as_f64().unwrap();
        assert!((1.0..1.25).contains(&p99), "{p99}");
        assert_eq!(
            s["pools"]["green"]["requests"],
            json!([[0, 0], [1, 4], [2, 0]])
        );
        assert_eq!(
            s["pools"]["green"]["backends"]["127.0.0.1:11"]["p99_ms"],
            20.48
        );
        // The split: configured and effective shares, per second.
        assert_eq!(s["routes"]["web"]["weight"]["blue"], json!([[0, 75.0]]));
        assert_eq!(s["routes"]["web"]["effective"]["green"], json!([[0, 25.0]]));

        // A minute later only the last minute counts: nothing.
        for _ in 0..MINUTE {
            tokio::time::advance(INTERVAL).await;
            tokio::task::yield_now().await;
        }
        let s = console.json();
        assert_eq!(s["length"], 64);
        assert_eq!(s["pools"]["blue"]["minute"]["requests"], 0);
        assert_eq!(s["pools"]["blue"]["minute"]["p99_ms"], Value::Null);
        assert_eq!(s["pools"]["blue"]["requests"][1], json!([1, 10]));

        // After 15 minutes the series are full length and no longer.
        for _ in 0..SECONDS {
            tokio::time::advance(INTERVAL).await;
            tokio::task::yield_now().await;
        }
        let s = console.json();
        assert_eq!(s["length"], SECONDS);
        // The window starts after the traffic: one run of zeros from its first second.
        assert_eq!(s["pools"]["blue"]["requests"], json!([[0, 0]]));
        assert!(console.lock().pools["blue"].seconds.runs.len() <= 2);
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn a_rollout_timeline_and_the_finished_ones() {
        let mut r = Rollouts::default();
        let status = |state: &str, step: u64, elapsed: u64, requests: u64| {
            let weight = [10, 50, 100][step as usize];
            json!({"state": state, "step": step, "steps": [10, 50, 100], "to": "green",
                   "weight": weight, "step_elapsed_ms": elapsed,
                   "gate": {"requests": requests, "verdict": "pending"}})
        };
        r.observe(&status("progressing", 0, 500, 1), 10_000);
        r.observe(&status("progressing", 0, 1500, 7), 11_000);
        r.observe(&status("progressing", 1, 200, 0), 12_000);
        let t = r.current.as_ref().unwrap().json();
        assert_eq!(t["started_ms"], 9_500);
        assert_eq!(t["timeline"][0]["started_ms"], 9_500);
        assert_eq!(t["timeline"][0]["ended_ms"], 11_800);
        assert_eq!(t["timeline"][0]["verdict"], "passed");
        assert_eq!(t["timeline"][0]["gate"]["requests"], 7);
        assert_eq!(t["timeline"][1]["verdict"], Value::Null);
        assert!(r.finished.is_empty());
        let mut failed = status("rolled_back", 1, 0, 3);
        failed["step_elapsed_ms"] = Value::Null;
        r.observe(&failed, 13_000);
        r.observe(&failed, 14_000);
        assert_eq!(r.finished.len(), 1, "a finished rollout is kept once");
        let f = &r.finished[0];
        assert_eq!(f["state"], "rolled_back");
        assert_eq!(f["ended_ms"], 13_000);
        assert_eq!(f["timeline"][1]["verdict"], "failed");
        assert_eq!(f["timeline"][1]["gate"]["requests"], 3);
        // A new rollout starts a new timeline; only the last FINISHED are kept.
        for i in 0..FINISHED as u64 + 2 {
            r.observe(&status("progressing", 0, 0, 0), 20_000 + i * 10);
            r.observe(&status("succeeded", 2, 0, 0), 20_005 + i * 10);
        }
        assert_eq!(r.finished.len(), FINISHED);
        assert_eq!(r.finished[0]["state"], "succeeded");
        assert_eq!(r.finished[0]["timeline"][0]["verdict"], "promoted");
    }
}
