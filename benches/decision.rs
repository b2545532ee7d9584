//! Micro-benchmarks of the per-request decision: route match, split (bucket + table) and
//! backend pick, on a snapshot built by the real `Live` from a realistic config.
//!
//!   cargo bench --bench decision
//!
//! Kept short (small sample, brief measurement) so it runs in well under a minute.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use veer::config::Config;
use veer::routing::bucket_of;
use veer::runtime::{Live, Snapshot};

/// Ten routes over several hosts and prefixes, pools balanced both ways.
const CONFIG: &str = r#"
[pools.blue]
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 }, "127.0.0.1:9003"]
[pools.green]
backends = ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103", "127.0.0.1:9104"]
lb = "least_request"
[pools.api]
backends = ["127.0.0.1:9201", "127.0.0.1:9202"]

[[routes]]
name = "web"
hosts = ["www.example.com", "example.com"]
split = { blue = 90, green = 10 }
sticky = { cookie = "veer_id" }
[[routes]]
name = "web-api"
hosts = ["www.example.com", "example.com"]
path_prefix = "/api"
split = { api = 1 }
[[routes]]
name = "web-api-v2"
hosts = ["www.example.com"]
path_prefix = "/api/v2"
split = { api = 1, green = 1 }
[[routes]]
name = "tenants"
hosts = ["*.example.com"]
split = { blue = 50, green = 50 }
[[routes]]
name = "tenants-static"
hosts = ["*.example.com"]
path_prefix = "/static"
split = { blue = 1 }
[[routes]]
name = "shop"
hosts = ["shop.example.org"]
split = { blue = 1, green = 1, api = 1 }
[[routes]]
name = "shop-checkout"
hosts = ["shop.example.org"]
path_prefix = "/checkout"
split = { green = 1 }
[[routes]]
name = "admin"
hosts = ["admin.example.net"]
split = { api = 1 }
[[routes]]
name = "health"
hosts = ["*"]
path_prefix = "/healthz"
split = { blue = 1 }
[[routes]]
name = "default"
split = { blue = 90, green = 10 }
"#;

fn snapshot() -> (tokio::runtime::Runtime, Arc<Live>, Arc<Snapshot>) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config = Config::parse(Path::new("bench.toml"), CONFIG).expect("bench config is valid");
    let rt = tokio
        .block_on(async { Live::new(config, None) })
        .expect("runtime");
    let snap = rt.snapshot();
    (tokio, rt, snap)
}

fn decision(c: &mut Criterion) {
    let (tokio, rt, snap) = snapshot();
    let _guard = tokio.enter();
    let router = &snap.router;

    let mut g = c.benchmark_group("route");
    for (label, host, path) in [
        ("exact_host_root", "www.example.com", "/index.html"),
        (
            "exact_host_longest_prefix",
            "www.example.com",
            "/api/v2/users/42",
        ),
        ("suffix_host", "acme.example.com", "/static/app.js"),
        ("catch_all", "unknown.test", "/healthz"),
    ] {
        assert!(
            router.find(host, path).is_some(),
            "{host}{path} has a route"
        );
        g.bench_function(label, |b| {
            b.iter(|| {
                router
                    .find(black_box(host), black_box(path))
                    .map(|r| r.weights.len())
            })
        });
    }
    g.bench_function("normalize_host_and_find", |b| {
        b.iter(|| {
            let host = veer::routing::normalize_host(black_box("WWW.Example.com:8080"));
            router
                .find(&host, black_box("/api/v2/x"))
                .map(|r| r.weights.len())
        })
    });
    g.finish();

    let web = router.get("web").expect("web route").clone();
    let shop = router.get("shop").expect("shop route").clone();
    let mut g = c.benchmark_group("split");
    g.bench_function("sticky_cookie_bucket_and_table", |b| {
        b.iter(|| {
            web.table
                .pool_of(bucket_of(black_box(b"3f2a9c0d4e5b6a7182930a1b2c3d4e5f")))
        })
    });
    g.bench_function("unsticky_sequence_and_table", |b| {
        b.iter(|| web.table.pool_of(web.state.next_bucket()))
    });
    g.bench_function("three_pool_table", |b| {
        b.iter(|| shop.table.pool_of(bucket_of(black_box(b"user-1234567"))))
    });
    g.finish();

    let blue = snap.pools["blue"].clone();
    let green = snap.pools["green"].clone();
    let mut g = c.benchmark_group("pick");
    g.bench_function("round_robin_weighted", |b| {
        b.iter(|| {
            let mut lease = blue.pick(&[]).expect("a backend");
            lease.record(true);
        })
    });
    g.bench_function("least_request_p2c", |b| {
        b.iter(|| {
            let mut lease = green.pick(&[]).expect("a backend");
            lease.record(true);
        })
    });
    g.bench_function("round_robin_one_excluded", |b| {
        let first = veer::upstream::pool::backend_key(&blue.backends[0]);
        let exclude = [first];
        b.iter(|| {
            let mut lease = blue.pick(black_box(&exclude)).expect("a backend");
            lease.record(true);
        })
    });
    g.finish();

    // The whole decision as the request path makes it: snapshot load, route, bucket, pool, pick.
    c.bench_function("decision/full", |b| {
        b.iter(|| {
            let snap = rt.snapshot();
            let route = snap
                .router
                .find(black_box("www.example.com"), black_box("/products/42"))
                .expect("route");
            let pool = route
                .table
                .pool_of(bucket_of(black_box(b"3f2a9c0d4e5b6a71")));
            let mut lease = route.pools[pool].pick(&[]).expect("a backend");
            lease.record(true);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = decision
}
criterion_main!(benches);
