//! Prometheus metrics (SPEC §5): every name and label after real traffic (200s, a 503, a 502),
//! values that match the traffic, bounded label values, and series that follow the config.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// One sample line: metric name and its labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// The text exposition, parsed: series → value, and family name → type.
struct Scrape {
    samples: BTreeMap<Series, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE line");
                types.insert(name.to_string(), ty.to_string());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (head, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match head.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (head, ""),
            };
            let mut map = BTreeMap::new();
            // Label values here never hold `",` (config names, addresses, codes).
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").expect("label pair");
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            let series = Series {
                name: name.to_string(),
                labels: map,
            };
            samples.insert(series, value.parse::<f64>().expect("sample value"));
        }
        Scrape { samples, types }
    }

    /// The value of `name{labels}` (labels given exactly), if exported.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = Series {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.samples.get(&key).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in:\n{}", self.dump(name)))
    }

    fn dump(&self, prefix: &str) -> String {
        self.samples
            .iter()
            .filter(|(s, _)| s.name.starts_with(prefix))
            .map(|(s, v)| format!("{}{:?} {v}\n", s.name, s.labels))
            .collect()
    }

    /// Every series of one family, with its label names.
    fn label_names(&self, name: &str) -> BTreeSet<Vec<String>> {
        self.samples
            .keys()
            .filter(|s| s.name == name)
            .map(|s| s.labels.keys().cloned().collect())
            .collect()
    }

    fn series(&self) -> BTreeSet<Series> {
        self.samples.keys().cloned().collect()
    }
}

async fn scrape(veer: &Veer) -> Scrape {
    let got = get(&veer.admin_url("/metrics")).await;
    assert_eq!(got.status, 200);
    assert!(
        got.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        got.headers
    );
    Scrape::parse(&got.body)
}

/// Blue and green answer 200; `sick` never passes its health check (so its route answers
/// 503 at once); `dead` refuses connections (502).
async fn setup() -> (Veer, Vec<Upstream>, std::net::SocketAddr) {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    let sick = upstream_with(|req| async move {
        if req.uri().path() == "/health" {
            respond(500, "no")
        } else {
            respond(200, "sick")
        }
    })
    .await;
    let dead = dead_addr().await;
    let config = format!(
        r#"
[pools.blue]
backends = ["{blue}"]
[pools.green]
backends = ["{green}"]
[pools.sick]
backends = ["{sick}"]
[pools.sick.health_check]
path = "/health"
interval = "1s"
[pools.dead]
backends = ["{dead}"]
[pools.dead.circuit_breaker]
consecutive_failures = 100

[[routes]]
name = "web"
hosts = ["app.test", "*.app.test"]
path_prefix = "/"
split = {{ blue = 90, green = 10 }}
override = {{ header = "x-veer-pool" }}
retry = {{ attempts = 1 }}

[[routes]]
name = "sickly"
hosts = ["*"]
path_prefix = "/sick"
split = {{ sick = 1 }}
fallback = false
retry = {{ attempts = 1 }}

[[routes]]
name = "broken"
hosts = ["*"]
path_prefix = "/broken"
split = {{ dead = 1 }}
retry = {{ attempts = 1 }}
"#,
        blue = blue.addr,
        green = green.addr,
        sick = sick.addr,
        dead = dead
    );
    let veer = start_veer(&config).await;
    (veer, vec![blue, green, sick], dead)
}

#[tokio::test]
async fn every_spec_metric_and_label_after_traffic() {
    let (veer, ups, dead) = setup().await;
    let (blue, green, sick) = (
        ups[0].addr.to_string(),
        ups[1].addr.to_string(),
        ups[2].addr.to_string(),
    );
    let dead = dead.to_string();

    for _ in 0..20 {
        assert_eq!(
            get_with(
                &veer.url("/"),
                &[("host", "app.test"), ("x-veer-pool", "blue")]
            )
            .await
            .status,
            200
        );
    }
    for _ in 0..5 {
        assert_eq!(
            get_with(
                &veer.url("/x"),
                &[("host", "app.test"), ("x-veer-pool", "green")]
            )
            .await
            .status,
            200
        );
    }
    let r = get(&veer.url("/sick")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    let r = get(&veer.url("/broken")).await;
    assert_eq!(r.status, 502, "{}", r.body);

    let m = scrape(&veer).await;

    // Every family of SPEC §5 with its type and exactly its labels.
    let spec: &[(&str, &str, &[&str])] = &[
        (
            "veer_requests_total",
            "counter",
            &["backend", "code", "pool", "route"],
        ),
        (
            "veer_request_duration_seconds",
            "histogram",
            &["pool", "route"],
        ),
        ("veer_upstream_in_flight", "gauge", &["backend", "pool"]),
        ("veer_backend_healthy", "gauge", &["backend", "pool"]),
        ("veer_circuit_breaker_state", "gauge", &["backend", "pool"]),
        (
            "veer_circuit_breaker_trips_total",
            "counter",
            &["backend", "pool"],
        ),
        ("veer_retries_total", "counter", &["route"]),
        ("veer_route_weight", "gauge", &["pool", "route"]),
        ("veer_backend_draining", "gauge", &["backend", "pool"]),
        ("veer_config_reloads_total", "counter", &["result"]),
        ("veer_rollout_step", "gauge", &["route"]),
        ("veer_rollouts_total", "counter", &["result", "route"]),
    ];
    for (name, ty, labels) in spec {
        assert_eq!(
            m.types.get(*name).map(String::as_str),
            Some(*ty),
            "type of {name}"
        );
        let sample_name = if *ty == "histogram" {
            format!("{name}_count")
        } else {
            name.to_string()
        };
        let want: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        let got = m.label_names(&sample_name);
        assert_eq!(
            got,
            BTreeSet::from([want]),
            "labels of {sample_name}:\n{}",
            m.dump(name)
        );
    }

    // Request counts match the traffic, by route, pool, backend and code.
    let req = |route, pool, backend, code| {
        m.value(
            "veer_requests_total",
            &[
                ("route", route),
                ("pool", pool),
                ("backend", backend),
                ("code", code),
            ],
        )
    };
    assert_eq!(req("web", "blue", &blue, "200"), 20.0);
    assert_eq!(req("web", "green", &green, "200"), 5.0);
    // Nothing available: 503 at once, counted without a backend.
    assert_eq!(req("sickly", "sick", "", "503"), 1.0);
    assert_eq!(req("broken", "dead", &dead, "502"), 1.0);
    let count = |route, pool| {
        m.value(
            "veer_request_duration_seconds_count",
            &[("route", route), ("pool", pool)],
        )
    };
    assert_eq!(count("web", "blue"), 20.0);
    assert_eq!(count("web", "green"), 5.0);
    assert_eq!(
        m.value(
            "veer_request_duration_seconds_bucket",
            &[("route", "web"), ("pool", "blue"), ("le", "+Inf")]
        ),
        20.0
    );

    // Backend state, per (pool, backend).
    let b = |name, pool, backend| m.value(name, &[("pool", pool), ("backend", backend)]);
    assert_eq!(b("veer_backend_healthy", "blue", &blue), 1.0);
    assert_eq!(b("veer_backend_healthy", "sick", &sick), 0.0);
    assert_eq!(b("veer_circuit_breaker_state", "blue", &blue), 0.0);
    assert_eq!(b("veer_backend_draining", "green", &green), 0.0);
    assert_eq!(b("veer_upstream_in_flight", "blue", &blue), 0.0);
    assert_eq!(b("veer_circuit_breaker_trips_total", "dead", &dead), 0.0);

    // Routes: weights from the config; no rollout; counters exported from zero.
    assert_eq!(
        m.value("veer_route_weight", &[("route", "web"), ("pool", "blue")]),
        90.0
    );
    assert_eq!(
        m.value("veer_route_weight", &[("route", "web"), ("pool", "green")]),
        10.0
    );
    assert_eq!(m.value("veer_rollout_step", &[("route", "web")]), -1.0);
    assert_eq!(
        m.value(
            "veer_rollouts_total",
            &[("route", "web"), ("result", "rolled_back")]
        ),
        0.0
    );
    assert_eq!(m.value("veer_retries_total", &[("route", "web")]), 0.0);
    assert!(m
        .get("veer_config_reloads_total", &[("result", "success")])
        .is_some());
    assert!(m
        .get("veer_config_reloads_total", &[("result", "failure")])
        .is_some());
    veer.shutdown().await;
}

#[tokio::test]
async fn in_flight_gauge_follows_a_slow_request() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r2 = release.clone();
    let slow = upstream_with(move |_req| {
        let r = r2.clone();
        async move {
            r.notified().await;
            respond(200, "slow")
        }
    })
    .await;
    let config = format!(
        "[pools.slow]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ slow = 1 }}\n",
        slow.addr
    );
    let veer = start_veer(&config).await;
    let url = veer.url("/");
    let pending = tokio::spawn(async move { get(&url).await });
    let addr = slow.addr.to_string();
    let labels = [("pool", "slow"), ("backend", addr.as_str())];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if scrape(&veer).await.get("veer_upstream_in_flight", &labels) == Some(1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "in-flight gauge never reached 1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.notify_one();
    assert_eq!(pending.await.unwrap().status, 200);
    assert_eq!(
        scrape(&veer)
            .await
            .value("veer_upstream_in_flight", &labels),
        0.0
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn random_paths_and_hosts_add_no_series() {
    let (veer, ups, _dead) = setup().await;
    // Warm up every code path once so the series that legitimately exist are there.
    assert_eq!(
        get_with(
            &veer.url("/"),
            &[("host", "app.test"), ("x-veer-pool", "blue")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get_with(
            &veer.url("/"),
            &[("host", "app.test"), ("x-veer-pool", "green")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get_with(&veer.url("/"), &[("host", "nowhere.test")])
            .await
            .status,
        404
    );
    let before = scrape(&veer).await.series();

    let statuses = Arc::new(std::sync::Mutex::new(BTreeMap::<u16, usize>::new()));
    let mut tasks = Vec::new();
    for t in 0..10u64 {
        let base = veer.url("");
        let statuses = statuses.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100u64 {
                let n: u64 = rand::random();
                let path = format!("/{n:x}/{t}-{i}?q={n}&x=%2F..%2F{i}");
                // Half random hosts no route matches, half random subdomains of the app.
                let host = if i % 2 == 0 {
                    format!("h{n:x}.random.test")
                } else {
                    format!("u{n:x}.app.test")
                };
                let pool = if i % 3 == 0 { "green" } else { "blue" };
                let got = get_with(
                    &format!("{base}{path}"),
                    &[("host", &host), ("x-veer-pool", pool)],
                )
                .await;
                *statuses.lock().unwrap().entry(got.status).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    assert_eq!(statuses.get(&404), Some(&500), "{statuses:?}");
    assert_eq!(statuses.get(&200), Some(&500), "{statuses:?}");

    let after = scrape(&veer).await;
    let added: Vec<_> = after.series().difference(&before).cloned().collect();
    assert!(
        added.is_empty(),
        "random paths and hosts added series: {added:?}"
    );
    // The traffic was counted, just not as new series.
    let blue = ups[0].addr.to_string();
    let n = after.value(
        "veer_requests_total",
        &[
            ("route", "web"),
            ("pool", "blue"),
            ("backend", &blue),
            ("code", "200"),
        ],
    );
    assert!(n >= 300.0, "{n}");
    veer.shutdown().await;
}

#[tokio::test]
async fn series_follow_the_config() {
    let (veer, _ups, _dead) = setup().await;
    let rt = veer.rt().clone();
    assert_eq!(get(&veer.url("/broken")).await.status, 502);
    let m = scrape(&veer).await;
    assert!(m
        .get(
            "veer_route_weight",
            &[("route", "broken"), ("pool", "dead")]
        )
        .is_some());

    // Shift the split, take `green` out of it, and remove the `broken` route.
    let mut c = (*rt.config()).clone();
    c.route_mut("web").unwrap().split = vec![("blue".into(), 30), ("sick".into(), 70)];
    c.routes.retain(|r| r.name != "broken");
    rt.apply(c).expect("apply");

    let m = scrape(&veer).await;
    assert_eq!(
        m.value("veer_route_weight", &[("route", "web"), ("pool", "blue")]),
        30.0
    );
    assert_eq!(
        m.value("veer_route_weight", &[("route", "web"), ("pool", "sick")]),
        70.0
    );
    assert_eq!(
        m.get("veer_route_weight", &[("route", "web"), ("pool", "green")]),
        None
    );
    let left: Vec<_> = m
        .series()
        .into_iter()
        .filter(|s| s.labels.get("route").is_some_and(|r| r == "broken"))
        .collect();
    assert!(
        left.is_empty(),
        "series of a removed route remain: {left:?}"
    );
    // A route that stays keeps its counts.
    assert!(m.get("veer_rollout_step", &[("route", "web")]).is_some());
    veer.shutdown().await;
}
