//! Backend resilience (issue 3): health checks, circuit breakers, bulkheads, retries, fallback
//! and draining.
//!
//! The breaker's clock-driven state machine runs against a [`Live`] on tokio's paused clock
//! (no sockets, so time is exact). Everything that needs sockets (probes, 503 classification,
//! retries, draining) runs with real upstreams on 127.0.0.1:0 and short real intervals; health
//! thresholds are checked exactly by having the upstream record, at each probe, the verdict
//! veer had reached from the probes before it.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use veer::breaker::BreakerState;
use veer::config::Config;
use veer::runtime::Live;
use veer::upstream::{Backend, Health};

// ---------------------------------------------------------------- helpers

/// Every jitter set to zero, so timings are exact.
fn no_jitter(c: &mut Config) {
    for p in c.pools.values_mut().map(std::sync::Arc::make_mut) {
        p.circuit_breaker.jitter = 0.0;
        if let Some(h) = &mut p.health_check {
            h.jitter = 0.0;
        }
    }
}

/// Parse config text (listeners on port 0 added) with every jitter set to zero.
fn config(text: &str) -> Config {
    let mut c = Config::parse(Path::new("veer.toml"), &with_listeners(text))
        .unwrap_or_else(|e| panic!("config invalid:\n{e}"));
    no_jitter(&mut c);
    c
}

/// Start veer in-process from config text, with zero jitter.
async fn start(text: &str) -> Veer {
    start_veer_tweaked(text, no_jitter).await
}

fn backend(rt: &Live, pool: &str, addr: SocketAddr) -> Arc<Backend> {
    rt.registry.get(pool, addr).expect("backend exists")
}

/// Let spawned tasks run without moving the (paused) clock.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Record one request outcome on a backend, as the proxy does.
fn outcome(b: &Arc<Backend>, success: bool) -> bool {
    match b.try_lease() {
        Some(mut l) => {
            l.record(success);
            true
        }
        None => false,
    }
}

fn trips(rt: &Live, pool: &str, addr: SocketAddr) -> u64 {
    rt.metrics
        .breaker_trips
        .with_label_values(&[pool, &addr.to_string()])
        .get()
}

/// Bodies of `n` GETs, counted.
async fn bodies(url: &str, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let got = get(url).await;
        *m.entry(format!("{} {}", got.status, got.body)).or_default() += 1;
    }
    m
}

/// A GET running in the background.
fn spawn_get(url: String) -> tokio::task::JoinHandle<Got> {
    tokio::spawn(async move { get(&url).await })
}

fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// An upstream whose answer status can be changed while it runs; counts hits (all paths).
async fn switchable(name: &'static str, status: u16) -> (Upstream, Arc<AtomicU16>) {
    let s = Arc::new(AtomicU16::new(status));
    let s2 = s.clone();
    let up = upstream_with(move |_req| {
        let code = s2.load(Ordering::SeqCst);
        async move { respond(code, name) }
    })
    .await;
    (up, s)
}

/// A test upstream that also counts its open connections.
struct Counted {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    /// Connections accepted in all.
    accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An upstream answering `name`, after 2 s on `/slow`, counting hits and open connections.
async fn counted(name: &'static str) -> Counted {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hits, conns, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        CancellationToken::new(),
    );
    let accepted = Arc::new(AtomicUsize::new(0));
    let (h, c, s, a) = (hits.clone(), conns.clone(), stop.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r { Ok((x, _)) => x, Err(_) => continue },
                _ = s.cancelled() => return,
            };
            c.fetch_add(1, Ordering::SeqCst);
            a.fetch_add(1, Ordering::SeqCst);
            let (h, c, s) = (h.clone(), c.clone(), s.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        Ok::<_, std::convert::Infallible>(respond(200, name))
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                tokio::select! {
                    _ = builder.serve_connection(TokioIo::new(stream), svc) => {}
                    _ = s.cancelled() => {}
                }
                c.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Counted {
        addr,
        hits,
        conns,
        accepted,
        stop,
    }
}

const NO_RETRY: &str = "retry = { attempts = 1 }";

// ---------------------------------------------------------------- circuit breaker (paused clock)

const BREAKER: &str = "[pools.p.circuit_breaker]\nconsecutive_failures = 3\nopen_for = \"10s\"\nhalf_open_requests = 1\n";

#[tokio::test(start_paused = true)]
async fn breaker_trips_after_exactly_consecutive_failures_then_one_trial_closes_it() {
    let (a, b) = (dead_addr().await, dead_addr().await);
    let rt = Live::new(
        config(&(pool("p", &[a, b], "") + BREAKER + &route("{ p = 1 }", ""))),
        None,
    )
    .unwrap();
    let ba = backend(&rt, "p", a);

    // A success in between resets the count: failures must be consecutive.
    assert!(outcome(&ba, false));
    assert!(outcome(&ba, false));
    assert!(outcome(&ba, true));
    settle().await;
    assert_eq!(ba.breaker.state(), BreakerState::Closed);
    assert!(outcome(&ba, false));
    assert!(outcome(&ba, false));
    settle().await;
    assert_eq!(
        ba.breaker.state(),
        BreakerState::Closed,
        "two failures do not trip"
    );
    assert!(outcome(&ba, false));
    settle().await;
    assert_eq!(ba.breaker.state(), BreakerState::Open, "the third does");
    assert_eq!(trips(&rt, "p", a), 1);
    assert!(ba.try_lease().is_none(), "an open breaker takes nothing");
    assert!(
        !rt.snapshot().pools["p"]
            .backends
            .iter()
            .all(|x| x.try_lease().is_none()),
        "the other backend serves"
    );

    // Open for exactly open_for.
    tokio::time::sleep(Duration::from_millis(9_999)).await;
    settle().await;
    assert_eq!(ba.breaker.state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(2)).await;
    settle().await;
    assert_eq!(ba.breaker.state(), BreakerState::HalfOpen);

    // One trial request, no more, until it is judged.
    let mut trial = ba.try_lease().expect("one trial is let through");
    assert!(ba.try_lease().is_none(), "only one trial");
    // A trial that ends without an outcome hands its permit back.
    drop(trial);
    trial = ba.try_lease().expect("the permit came back");
    trial.record(true);
    drop(trial);
    settle().await;
    assert_eq!(ba.breaker.state(), BreakerState::Closed);
    assert!(outcome(&ba, true));
    assert_eq!(trips(&rt, "p", a), 1);
}

#[tokio::test(start_paused = true)]
async fn repeated_trips_back_off_exponentially_and_the_backoff_decays() {
    let (a, b) = (dead_addr().await, dead_addr().await);
    let rt = Live::new(
        config(&(pool("p", &[a, b], "") + BREAKER + &route("{ p = 1 }", ""))),
        None,
    )
    .unwrap();
    let ba = backend(&rt, "p", a);
    let trip = || async {
        for _ in 0..3 {
            assert!(outcome(&ba, false));
        }
        settle().await;
        assert_eq!(ba.breaker.state(), BreakerState::Open);
    };
    // Checks that the breaker stays open for exactly `ms` milliseconds.
    let ba2 = &ba;
    let open_time = |ms: u64| async move {
        let ba = ba2;
        tokio::time::sleep(Duration::from_millis(ms - 1)).await;
        settle().await;
        assert_eq!(
            ba.breaker.state(),
            BreakerState::Open,
            "still open 1 ms before {ms} ms"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(
            ba.breaker.state(),
            BreakerState::HalfOpen,
            "half-open at {ms} ms"
        );
    };
    let fail_trial = || {
        let mut t = ba.try_lease().expect("trial");
        t.record(false);
    };

    trip().await;
    open_time(10_000).await;
    fail_trial();
    settle().await;
    assert_eq!(
        ba.breaker.state(),
        BreakerState::Open,
        "a failed trial opens it again"
    );
    open_time(20_000).await;
    fail_trial();
    settle().await;
    open_time(40_000).await;
    assert_eq!(trips(&rt, "p", a), 3);
    // A good trial closes it.
    ba.try_lease().expect("trial").record(true);
    settle().await;
    assert_eq!(ba.breaker.state(), BreakerState::Closed);

    // Tripping again soon after continues the backoff...
    tokio::time::sleep(Duration::from_secs(5)).await;
    trip().await;
    open_time(80_000).await;
    ba.try_lease().expect("trial").record(true);
    settle().await;
    // ...and a long closed spell forgives it: one trip per open_for.
    tokio::time::sleep(Duration::from_secs(25)).await;
    trip().await;
    open_time(40_000).await; // 4 trips - 2 forgiven + 1 = 3
    ba.try_lease().expect("trial").record(true);
    settle().await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    trip().await;
    open_time(10_000).await; // all forgiven
    assert_eq!(trips(&rt, "p", a), 6);
}

#[tokio::test(start_paused = true)]
async fn never_more_than_half_a_pool_is_ejected() {
    let addrs = [
        dead_addr().await,
        dead_addr().await,
        dead_addr().await,
        dead_addr().await,
    ];
    let rt = Live::new(
        config(&(pool("p", &addrs, "") + BREAKER + &route("{ p = 1 }", ""))),
        None,
    )
    .unwrap();
    let bs: Vec<_> = addrs.iter().map(|a| backend(&rt, "p", *a)).collect();
    // Every backend fails, one at a time.
    for b in &bs {
        for _ in 0..3 {
            assert!(outcome(b, false));
        }
        settle().await;
    }
    let open = |bs: &[Arc<Backend>]| {
        bs.iter()
            .filter(|b| b.breaker.state() != BreakerState::Closed)
            .count()
    };
    assert_eq!(open(&bs), 2, "only half of four");
    assert_eq!(bs[0].breaker.state(), BreakerState::Open);
    assert_eq!(bs[1].breaker.state(), BreakerState::Open);
    // The rest keep serving even while failing.
    for _ in 0..10 {
        assert!(outcome(&bs[2], false));
        assert!(outcome(&bs[3], false));
    }
    settle().await;
    assert_eq!(open(&bs), 2);
    // When one comes back, a failing one may trip in its place.
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    bs[0].try_lease().expect("trial").record(true);
    settle().await;
    assert_eq!(bs[0].breaker.state(), BreakerState::Closed);
    assert!(outcome(&bs[2], false));
    settle().await;
    assert_eq!(bs[2].breaker.state(), BreakerState::Open);
    assert_eq!(open(&bs), 2);
}

#[tokio::test(start_paused = true)]
async fn breaker_state_survives_a_config_apply() {
    let (a, b) = (dead_addr().await, dead_addr().await);
    let text = |w: u32| {
        pool("p", &[a, b], "")
            + BREAKER
            + &pool("q", &[b], "")
            + &route(&format!("{{ p = {w}, q = 1 }}"), "")
    };
    let rt = Live::new(config(&text(1)), None).unwrap();
    let ba = backend(&rt, "p", a);
    for _ in 0..3 {
        assert!(outcome(&ba, false));
    }
    settle().await;
    assert_eq!(ba.breaker.state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_secs(4)).await;
    rt.apply(config(&text(5))).unwrap();
    settle().await;
    let again = backend(&rt, "p", a);
    assert!(Arc::ptr_eq(&ba, &again), "the backend is kept by identity");
    assert_eq!(again.breaker.state(), BreakerState::Open);
    assert!(Arc::ptr_eq(&rt.snapshot().pools["p"].backends[0], &ba));
    // The open timer runs on: half-open 10 s after the trip, not 10 s after the reload.
    tokio::time::sleep(Duration::from_millis(5_999)).await;
    settle().await;
    assert_eq!(again.breaker.state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(2)).await;
    settle().await;
    assert_eq!(again.breaker.state(), BreakerState::HalfOpen);
    // Switching the breaker off closes it.
    rt.apply(config(
        &(pool(
            "p",
            &[a, b],
            "[pools.p.circuit_breaker]\nconsecutive_failures = 0\n",
        ) + &pool("q", &[b], "")
            + &route("{ p = 1, q = 1 }", "")),
    ))
    .unwrap();
    settle().await;
    assert_eq!(again.breaker.state(), BreakerState::Closed);
    for _ in 0..10 {
        assert!(outcome(&again, false));
    }
    settle().await;
    assert_eq!(again.breaker.state(), BreakerState::Closed);
}

// ---------------------------------------------------------------- circuit breaker (sockets)

#[tokio::test]
async fn a_backend_answering_503_trips_gets_one_trial_and_closes_when_it_succeeds() {
    let (bad, status) = switchable("bad", 503).await;
    let good = upstream("good").await;
    let veer = start(
        &(pool("p", &[bad.addr, good.addr], "")
            + "[pools.p.circuit_breaker]\nconsecutive_failures = 3\nopen_for = \"1s\"\n"
            + &route("{ p = 1 }", NO_RETRY)),
    )
    .await;
    let b = backend(veer.rt(), "p", bad.addr);
    let mut seen503 = 0;
    for _ in 0..12 {
        let got = get(&veer.url("/")).await;
        if got.status == 503 {
            assert_eq!(got.body, "bad", "the backend's own answer is relayed");
            seen503 += 1;
        }
    }
    assert_eq!(
        bad.hits(),
        3,
        "exactly consecutive_failures requests reach it"
    );
    assert_eq!(seen503, 3);
    eventually("breaker open", Duration::from_secs(1), || {
        b.breaker.state() == BreakerState::Open
    })
    .await;
    // After open_for, one trial; it fails, so the breaker opens again (for 2 s now).
    eventually("half-open", Duration::from_secs(3), || {
        b.breaker.state() == BreakerState::HalfOpen
    })
    .await;
    for _ in 0..6 {
        get(&veer.url("/")).await;
    }
    assert_eq!(bad.hits(), 4, "one trial only");
    assert_eq!(b.breaker.state(), BreakerState::Open);
    // The backend recovers; the next trial succeeds and the breaker closes.
    status.store(200, Ordering::SeqCst);
    eventually("half-open again", Duration::from_secs(4), || {
        b.breaker.state() == BreakerState::HalfOpen
    })
    .await;
    let counts = bodies(&veer.url("/"), 10).await;
    assert_eq!(b.breaker.state(), BreakerState::Closed);
    assert!(
        counts.get("200 bad").copied().unwrap_or(0) >= 4,
        "{counts:?}"
    );
    assert_eq!(trips(veer.rt(), "p", bad.addr), 2);
    // /api/status and /metrics show it.
    let status = get(&veer.admin_url("/api/status")).await;
    let json: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(json["pools"]["p"]["backends"][0]["breaker"], "closed");
    let metrics = get(&veer.admin_url("/metrics")).await.body;
    let line = format!(
        "veer_circuit_breaker_trips_total{{backend=\"{}\",pool=\"p\"}} 2",
        bad.addr
    );
    assert!(metrics.contains(&line), "{metrics}");
    veer.shutdown().await;
}

#[tokio::test]
async fn all_backends_down_gives_503_with_retry_after_at_once() {
    // Down by health check: both backends dead, never passed a probe.
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let hc = "[pools.p.health_check]\ninterval = \"100ms\"\ntimeout = \"50ms\"\n";
    let veer = start(&(pool("p", &[d1, d2], hc) + &route("{ p = 1 }", ""))).await;
    for _ in 0..3 {
        let started = Instant::now();
        let got = get(&veer.url("/")).await;
        assert_eq!(got.status, 503, "{}", got.body);
        assert!(got.header("retry-after").is_some(), "{:?}", got.headers);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }
    // After a few probes they are unhealthy, not unknown, and still 503 at once.
    let b = backend(veer.rt(), "p", d1);
    eventually("unhealthy", Duration::from_secs(3), || {
        b.health() == Health::Unhealthy
    })
    .await;
    let started = Instant::now();
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    veer.shutdown().await;

    // Down by circuit breaker: after the trip, 503 at once instead of another connect attempt.
    let dead = dead_addr().await;
    let veer = start(
        &(pool(
            "p",
            &[dead],
            "[pools.p.circuit_breaker]\nconsecutive_failures = 1\nopen_for = \"1m\"\n",
        ) + &route("{ p = 1 }", "")),
    )
    .await;
    assert_eq!(
        get(&veer.url("/")).await.status,
        502,
        "the connect failure itself"
    );
    let b = backend(veer.rt(), "p", dead);
    eventually("breaker open", Duration::from_secs(1), || {
        b.breaker.state() == BreakerState::Open
    })
    .await;
    let started = Instant::now();
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    veer.shutdown().await;
}

// ---------------------------------------------------------------- health checks (sockets)

/// What a health endpoint saw at each probe: the status it answered and veer's verdict on
/// the backend at that moment (which reflects every probe before this one).
type ProbeLog = Arc<Mutex<Vec<(u16, Health)>>>;

/// An upstream whose `/health` answers the given statuses in turn (the last one repeats while
/// `repeat_last` holds, then 200), logging each probe; other paths answer `name`.
async fn scripted(
    name: &'static str,
    script: Vec<u16>,
    who: Arc<OnceLock<Arc<Backend>>>,
) -> (Upstream, ProbeLog, Arc<AtomicUsize>) {
    let log: ProbeLog = Arc::new(Mutex::new(Vec::new()));
    let traffic = Arc::new(AtomicUsize::new(0));
    let (log2, traffic2) = (log.clone(), traffic.clone());
    let up = upstream_with(move |req| {
        let (log, traffic, who, script) =
            (log2.clone(), traffic2.clone(), who.clone(), script.clone());
        async move {
            if req.uri().path() != "/health" {
                traffic.fetch_add(1, Ordering::SeqCst);
                return respond(200, name);
            }
            assert_eq!(req.headers()["user-agent"], "veer-health-check");
            // The first probe may come before the test has looked the backend up.
            let b = loop {
                if let Some(b) = who.get() {
                    break b.clone();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let mut log = log.lock().unwrap();
            let status = script.get(log.len()).copied().unwrap_or(200);
            log.push((status, b.health()));
            respond(status, "")
        }
    })
    .await;
    (up, log, traffic)
}

/// The verdicts a checker must reach, by hand: the first pass admits a new backend, then
/// `unhealthy` consecutive failures eject it and `healthy` consecutive passes restore it.
fn expected(statuses: &[u16], healthy: usize, unhealthy: usize) -> Vec<Health> {
    let mut h = Health::Unknown;
    let mut out = vec![h];
    let (mut passes, mut fails) = (0, 0);
    for &s in statuses {
        let pass = (200..400).contains(&s);
        if pass {
            passes += 1;
            fails = 0;
        } else {
            fails += 1;
            passes = 0;
        }
        h = match h {
            Health::Unknown if pass => Health::Healthy,
            Health::Healthy if fails >= unhealthy => Health::Unhealthy,
            Health::Unhealthy if passes >= healthy => Health::Healthy,
            x => x,
        };
        out.push(h);
    }
    out
}

#[tokio::test]
async fn health_check_thresholds_remove_and_restore_a_backend() {
    // Probes 1-2 pass, 3-22 fail, then pass.
    let script: Vec<u16> = [200, 200]
        .into_iter()
        .chain(std::iter::repeat_n(500, 20))
        .collect();
    let who = Arc::new(OnceLock::new());
    let (sick, log, traffic) = scripted("sick", script.clone(), who.clone()).await;
    let well = upstream("well").await;
    let hc = "[pools.p.health_check]\npath = \"/health\"\ninterval = \"60ms\"\ntimeout = \"1s\"\nhealthy_threshold = 2\nunhealthy_threshold = 3\n";
    let veer = start(&(pool("p", &[sick.addr, well.addr], hc) + &route("{ p = 1 }", ""))).await;
    let b = backend(veer.rt(), "p", sick.addr);
    who.set(b.clone()).unwrap();

    eventually("first pass", Duration::from_secs(2), || {
        b.health() == Health::Healthy
    })
    .await;
    eventually("unhealthy", Duration::from_secs(3), || {
        b.health() == Health::Unhealthy
    })
    .await;
    // While unhealthy it gets no traffic.
    let before = traffic.load(Ordering::SeqCst);
    let counts = bodies(&veer.url("/"), 20).await;
    assert_eq!(counts.get("200 well"), Some(&20), "{counts:?}");
    assert_eq!(traffic.load(Ordering::SeqCst), before);
    let status: serde_json::Value =
        serde_json::from_str(&get(&veer.admin_url("/api/status")).await.body).unwrap();
    let rows = status["pools"]["p"]["backends"].as_array().unwrap().clone();
    let row = rows
        .iter()
        .find(|r| r["addr"] == sick.addr.to_string())
        .unwrap();
    assert_eq!(row["health"], "unhealthy");
    // Back after healthy_threshold passes.
    eventually("healthy again", Duration::from_secs(3), || {
        b.health() == Health::Healthy && log.lock().unwrap().len() > script.len() + 2
    })
    .await;
    let counts = bodies(&veer.url("/"), 10).await;
    assert_eq!(counts.get("200 sick"), Some(&5), "{counts:?}");
    assert_eq!(traffic.load(Ordering::SeqCst), before + 5);

    // Exactly: the verdict seen at each probe is the one the thresholds give for the probes
    // before it.
    let log = log.lock().unwrap().clone();
    let statuses: Vec<u16> = log.iter().map(|(s, _)| *s).collect();
    let want = expected(&statuses, 2, 3);
    let got: Vec<Health> = log.iter().map(|(_, h)| *h).collect();
    assert_eq!(got, want[..got.len()].to_vec(), "statuses {statuses:?}");
    // Unhealthy from the third failing probe (probe 5) up to the second passing one.
    assert_eq!(got[4], Health::Healthy);
    assert_eq!(got[5], Health::Unhealthy);
    assert_eq!(got[23], Health::Unhealthy);
    assert_eq!(got[24], Health::Healthy);
    veer.shutdown().await;
}

#[tokio::test]
async fn probes_reuse_one_connection() {
    let x = counted("x").await;
    let hc = "[pools.p.health_check]\ninterval = \"20ms\"\n";
    let veer = start(&(pool("p", &[x.addr], hc) + &route("{ p = 1 }", ""))).await;
    eventually("ten probes", Duration::from_secs(3), || {
        x.hits.load(Ordering::SeqCst) >= 10
    })
    .await;
    assert_eq!(x.accepted.load(Ordering::SeqCst), 1);
    // Requests share the backend's pool with the probes.
    assert_eq!(get(&veer.url("/")).await.body, "x");
    veer.shutdown().await;
}

#[tokio::test]
async fn health_checks_switched_off_and_on_by_reload() {
    let x = counted("x").await;
    let with = pool(
        "p",
        &[x.addr],
        "[pools.p.health_check]\ninterval = \"100ms\"\n",
    ) + &route("{ p = 1 }", "");
    let without = pool("p", &[x.addr], "") + &route("{ p = 1 }", "");
    let veer = start(&with).await;
    let rt = veer.rt().clone();
    let b = backend(&rt, "p", x.addr);
    eventually("healthy", Duration::from_secs(2), || {
        b.health() == Health::Healthy
    })
    .await;
    // Toggled quickly: never two checkers at once.
    for text in [&without, &with, &without, &with] {
        rt.apply(config(text)).unwrap();
    }
    assert!(
        b.is_healthy(),
        "a serving backend keeps serving when checks come back"
    );
    let before = x.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let probes = x.hits.load(Ordering::SeqCst) - before;
    assert!(
        (8..=12).contains(&probes),
        "one checker at 100 ms: {probes} probes in 1 s"
    );
    // Off: no more probes, and the backend counts as healthy.
    rt.apply(config(&without)).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = x.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(x.hits.load(Ordering::SeqCst), before, "checker stopped");
    assert!(b.is_healthy());
    assert_eq!(get(&veer.url("/")).await.body, "x");
    veer.shutdown().await;
}

#[tokio::test]
async fn a_new_backend_gets_nothing_before_its_first_pass() {
    let old = upstream("old").await;
    // The new backend's health endpoint holds its answer until the test lets go.
    let release = Arc::new(tokio::sync::Notify::new());
    let traffic = Arc::new(AtomicUsize::new(0));
    let (r2, t2) = (release.clone(), traffic.clone());
    let fresh = upstream_with(move |req| {
        let (r, t) = (r2.clone(), t2.clone());
        async move {
            if req.uri().path() == "/health" {
                r.notified().await;
                return respond(200, "");
            }
            t.fetch_add(1, Ordering::SeqCst);
            respond(200, "new")
        }
    })
    .await;
    let hc = "[pools.p.health_check]\ninterval = \"50ms\"\ntimeout = \"10s\"\n";
    let text = |addrs: &[SocketAddr]| pool("p", addrs, hc) + &route("{ p = 1 }", "");
    let veer = start(&text(&[old.addr])).await;
    let bo = backend(veer.rt(), "p", old.addr);
    eventually("old healthy", Duration::from_secs(2), || {
        bo.health() == Health::Healthy
    })
    .await;

    veer.rt()
        .apply(config(&text(&[old.addr, fresh.addr])))
        .unwrap();
    let bn = backend(veer.rt(), "p", fresh.addr);
    assert_eq!(bn.health(), Health::Unknown);
    assert_eq!(
        bo.health(),
        Health::Healthy,
        "the old backend's health survives the apply"
    );
    let counts = bodies(&veer.url("/"), 30).await;
    assert_eq!(counts.get("200 old"), Some(&30), "{counts:?}");
    assert_eq!(traffic.load(Ordering::SeqCst), 0);
    let status: serde_json::Value =
        serde_json::from_str(&get(&veer.admin_url("/api/status")).await.body).unwrap();
    let rows = status["pools"]["p"]["backends"].as_array().unwrap().clone();
    let row = rows
        .iter()
        .find(|r| r["addr"] == fresh.addr.to_string())
        .unwrap();
    assert_eq!(row["health"], "unknown");

    // One pass and it serves.
    release.notify_one();
    eventually("first pass", Duration::from_secs(2), || {
        bn.health() == Health::Healthy
    })
    .await;
    let counts = bodies(&veer.url("/"), 10).await;
    assert_eq!(counts.get("200 new"), Some(&5), "{counts:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn fallback_takes_the_share_of_an_unhealthy_pool_and_without_it_503() {
    let green = upstream("green").await;
    let dead = dead_addr().await;
    let hc = "[pools.blue.health_check]\ninterval = \"1s\"\n";
    let text = |fallback: bool| {
        pool("blue", &[dead], hc)
            + &pool("green", &[green.addr], "")
            + &route(
                "{ blue = 50, green = 50 }",
                &format!("fallback = {fallback}"),
            )
    };
    let veer = start(&text(true)).await;
    let counts = bodies(&veer.url("/"), 40).await;
    assert_eq!(counts.get("200 green"), Some(&40), "{counts:?}");
    veer.shutdown().await;

    let veer = start(&text(false)).await;
    let started = Instant::now();
    let counts = bodies(&veer.url("/"), 40).await;
    assert_eq!(counts.get("200 green"), Some(&20), "{counts:?}");
    assert_eq!(
        counts.get("503 no backend available\n"),
        Some(&20),
        "{counts:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    veer.shutdown().await;
}

// ---------------------------------------------------------------- bulkhead

#[tokio::test]
async fn bulkhead_skips_a_full_backend_and_all_full_gives_503() {
    // `/slow` is held until the test lets go; anything else answers at once.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = |name: &'static str, gate: Arc<tokio::sync::Semaphore>| async move {
        upstream_with(move |req| {
            let gate = gate.clone();
            async move {
                if req.uri().path() == "/slow" {
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
                respond(200, name)
            }
        })
        .await
    };
    let (a, b) = (slow("a", gate.clone()).await, slow("b", gate.clone()).await);
    let veer = start(
        &(pool(
            "p",
            &[a.addr, b.addr],
            "[pools.p.circuit_breaker]\nmax_concurrent_requests = 1\n",
        ) + &route("{ p = 1 }", NO_RETRY)),
    )
    .await;
    let (ba, bb) = (
        backend(veer.rt(), "p", a.addr),
        backend(veer.rt(), "p", b.addr),
    );
    let first = spawn_get(veer.url("/slow"));
    eventually("one in flight", Duration::from_secs(2), || {
        ba.in_flight() + bb.in_flight() == 1
    })
    .await;
    let (busy, free) = if ba.in_flight() == 1 {
        ("a", "b")
    } else {
        ("b", "a")
    };
    // The full backend is skipped: everything goes to the other.
    let counts = bodies(&veer.url("/"), 10).await;
    assert_eq!(
        counts.get(&format!("200 {free}")),
        Some(&10),
        "{counts:?}, busy {busy}"
    );
    // Both full: 503 with Retry-After, at once.
    let second = spawn_get(veer.url("/slow"));
    eventually("both in flight", Duration::from_secs(2), || {
        ba.in_flight() == 1 && bb.in_flight() == 1
    })
    .await;
    let started = Instant::now();
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 503, "{}", got.body);
    assert!(got.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    assert_eq!(get(&veer.url("/")).await.status, 200);
    veer.shutdown().await;
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn a_get_or_post_to_a_dead_backend_succeeds_elsewhere() {
    let dead = dead_addr().await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    let live = upstream_with(move |req| {
        let s = s2.clone();
        async move {
            use http_body_util::BodyExt;
            let method = req.method().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            s.lock()
                .unwrap()
                .push(format!("{method} {}", String::from_utf8_lossy(&body)));
            respond(200, "live")
        }
    })
    .await;
    let veer = start(
        &(pool(
            "p",
            &[dead, live.addr],
            "[pools.p.circuit_breaker]\nconsecutive_failures = 0\n",
        ) + &route("{ p = 1 }", "retry = { attempts = 2, backoff = \"1ms\" }")),
    )
    .await;
    // (Ten requests stay within the retry budget's reserve, whichever backend each tries first.)
    for _ in 0..6 {
        let got = get(&veer.url("/")).await;
        assert_eq!((got.status, got.body.as_str()), (200, "live"));
    }
    // A POST whose body was never sent is safe to send to another backend: a connect failure.
    for i in 0..4 {
        let got = send(post(
            &veer.url("/"),
            if i % 2 == 0 { "payload" } else { "" },
        ))
        .await;
        assert_eq!((got.status, got.body.as_str()), (200, "live"));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|s| *s == "POST payload").count(),
        2,
        "{seen:?}"
    );
    assert_eq!(seen.iter().filter(|s| *s == "POST ").count(), 2, "{seen:?}");
    assert_eq!(
        live.hits(),
        10,
        "each request reached the live backend once"
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn a_post_answered_503_is_not_retried_but_a_get_is() {
    let (bad, _) = switchable("bad", 503).await;
    let (good, _) = switchable("good", 200).await;
    let veer = start(
        &(pool(
            "p",
            &[bad.addr, good.addr],
            "[pools.p.circuit_breaker]\nconsecutive_failures = 0\n",
        ) + &route("{ p = 1 }", "retry = { attempts = 3, backoff = \"1ms\" }")),
    )
    .await;
    let mut answers = HashMap::<String, usize>::new();
    for i in 0..10 {
        let got = send(post(&veer.url("/"), if i % 2 == 0 { "x" } else { "" })).await;
        *answers
            .entry(format!("{} {}", got.status, got.body))
            .or_default() += 1;
    }
    // Round robin: half the POSTs reached the failing backend, once each, and got its 503.
    assert_eq!(answers.get("503 bad"), Some(&5), "{answers:?}");
    assert_eq!(answers.get("200 good"), Some(&5), "{answers:?}");
    assert_eq!(bad.hits() + good.hits(), 10, "no POST was sent twice");
    // A GET answered 503 goes to the other backend.
    let (bad_before, good_before) = (bad.hits(), good.hits());
    let counts = bodies(&veer.url("/"), 10).await;
    assert_eq!(counts.get("200 good"), Some(&10), "{counts:?}");
    assert_eq!(good.hits() - good_before, 10);
    assert!(
        bad.hits() > bad_before,
        "some GETs tried the failing backend first"
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn the_retry_budget_caps_retries_under_a_failing_pool() {
    let (a, _) = switchable("a", 503).await;
    let (b, _) = switchable("b", 503).await;
    let veer = start(
        &(pool(
            "p",
            &[a.addr, b.addr],
            "[pools.p.circuit_breaker]\nconsecutive_failures = 0\n",
        ) + &route(
            "{ p = 1 }",
            "retry = { attempts = 2, backoff = \"1ms\", budget_percent = 20 }",
        )),
    )
    .await;
    let n = 200;
    for _ in 0..n {
        let got = get(&veer.url("/")).await;
        assert_eq!(got.status, 503);
        assert!(
            got.body == "a" || got.body == "b",
            "the last upstream answer is relayed: {}",
            got.body
        );
    }
    let hits = a.hits() + b.hits();
    // Without a budget every request would be sent twice (400); the budget allows 20% of the
    // requests plus a small reserve of 10.
    assert!(hits >= n + 40, "retries happened: {hits}");
    assert!(hits <= n + 40 + 10, "retries were capped: {hits}");
    let metrics = get(&veer.admin_url("/metrics")).await.body;
    let retries: usize = metrics
        .lines()
        .find(|l| l.starts_with("veer_retries_total{route=\"web\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(retries, hits - n);
    veer.shutdown().await;
}

// ---------------------------------------------------------------- draining

#[tokio::test]
async fn a_drained_backend_finishes_its_request_and_gets_no_new_one() {
    let (x, y) = (counted("x").await, counted("y").await);
    let veer = start(&(pool("p", &[x.addr, y.addr], "") + &route("{ p = 1 }", ""))).await;
    let rt = veer.rt().clone();
    let slow = spawn_get(veer.url("/slow"));
    let (bx, by) = (backend(&rt, "p", x.addr), backend(&rt, "p", y.addr));
    eventually("in flight", Duration::from_secs(2), || {
        bx.in_flight() + by.in_flight() == 1
    })
    .await;
    let (busy, other, busy_up, other_up) = if bx.in_flight() == 1 {
        (&bx, &by, &x, &y)
    } else {
        (&by, &bx, &y, &x)
    };
    let _ = other;
    let busy_hits = busy_up.hits.load(Ordering::SeqCst);
    assert!(rt
        .registry
        .set_draining("p", busy.id.addr, true, Duration::from_secs(30)));

    // /api/status shows it draining with its request in flight.
    let status: serde_json::Value =
        serde_json::from_str(&get(&veer.admin_url("/api/status")).await.body).unwrap();
    let rows = status["pools"]["p"]["backends"].as_array().unwrap().clone();
    let row = rows
        .iter()
        .find(|r| r["addr"] == busy.id.addr.to_string())
        .unwrap();
    assert_eq!(row["draining"], true);
    assert_eq!(row["in_flight"], 1);
    // No new requests for it.
    let started = Instant::now();
    let counts = bodies(&veer.url("/"), 20).await;
    let other_name = if std::ptr::eq(other_up, &x) { "x" } else { "y" };
    assert_eq!(
        counts.get(&format!("200 {other_name}")),
        Some(&20),
        "{counts:?}"
    );
    assert_eq!(busy_up.hits.load(Ordering::SeqCst), busy_hits);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the drain runs in the background"
    );
    // Its request completes.
    let got = slow.await.unwrap();
    assert_eq!(got.status, 200);
    // Then its pooled connections close.
    eventually("connections closed", Duration::from_secs(3), || {
        busy_up.conns.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(
        other_up.conns.load(Ordering::SeqCst) > 0,
        "the other keeps its pooled connection"
    );
    assert_eq!(busy.in_flight(), 0);
    // Undrained, it serves again.
    assert!(rt
        .registry
        .set_draining("p", busy.id.addr, false, Duration::from_secs(30)));
    let counts = bodies(&veer.url("/"), 10).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn a_backend_removed_by_reload_drains_then_is_dropped() {
    let (x, y) = (counted("x").await, counted("y").await);
    let text = |addrs: &[SocketAddr]| pool("p", addrs, "") + &route("{ p = 1 }", "");
    let veer = start(&text(&[x.addr, y.addr])).await;
    let rt = veer.rt().clone();
    let bx = backend(&rt, "p", x.addr);
    // Put a 2 s request on x.
    let slow = loop {
        let h = spawn_get(veer.url("/slow"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        if bx.in_flight() == 1 {
            break h;
        }
        let _ = h.await;
    };
    let report = rt.apply(config(&text(&[y.addr]))).unwrap();
    assert_eq!(report.backends.removed, vec![format!("p/{}", x.addr)]);
    assert!(bx.is_draining() && bx.is_removed());
    assert!(rt.registry.get("p", x.addr).is_none());
    assert!(
        rt.registry.all().iter().any(|b| Arc::ptr_eq(b, &bx)),
        "still listed while draining"
    );
    let x_hits = x.hits.load(Ordering::SeqCst);
    let counts = bodies(&veer.url("/"), 10).await;
    assert_eq!(counts.get("200 y"), Some(&10), "{counts:?}");
    assert_eq!(x.hits.load(Ordering::SeqCst), x_hits);
    assert_eq!(
        slow.await.unwrap().status,
        200,
        "the in-flight request completes"
    );
    eventually("dropped", Duration::from_secs(3), || {
        !rt.registry.all().iter().any(|b| Arc::ptr_eq(b, &bx))
    })
    .await;
    assert!(bx.closed.is_cancelled());
    eventually("connections closed", Duration::from_secs(3), || {
        x.conns.load(Ordering::SeqCst) == 0
    })
    .await;
    veer.shutdown().await;
}

#[tokio::test]
async fn a_drain_timeout_cuts_what_is_left() {
    let (x, y) = (counted("x").await, counted("y").await);
    let veer = start(&(pool("p", &[x.addr, y.addr], "") + &route("{ p = 1 }", NO_RETRY))).await;
    let rt = veer.rt().clone();
    let slow = spawn_get(veer.url("/slow"));
    let (bx, by) = (backend(&rt, "p", x.addr), backend(&rt, "p", y.addr));
    eventually("in flight", Duration::from_secs(2), || {
        bx.in_flight() + by.in_flight() == 1
    })
    .await;
    let busy = if bx.in_flight() == 1 {
        bx.clone()
    } else {
        by.clone()
    };
    let started = Instant::now();
    rt.registry
        .set_draining("p", busy.id.addr, true, Duration::from_millis(200));
    let got = slow.await.unwrap();
    assert_eq!(got.status, 502, "cut at the drain timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    eventually("idle", Duration::from_secs(1), || busy.in_flight() == 0).await;
    // Undrained, it serves again (the cut applied only to what was in flight).
    rt.registry
        .set_draining("p", busy.id.addr, false, Duration::from_millis(200));
    let counts = bodies(&veer.url("/"), 10).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    veer.shutdown().await;
}
