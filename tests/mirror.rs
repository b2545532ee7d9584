//! Mirroring (SPEC §11) over real sockets: copies reach the mirror pool and only the primary
//! answers, writes are copied only when listed, `percent` holds by sticky bucket, a slow or
//! dead mirror pool changes nothing for clients, the in-flight bound drops and counts,
//! comparison counts `same`/`differ` with samples, and bodies are digested as they stream.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// What a test upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    mirror: Option<String>,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An upstream answering `name`, recording every request (its body read first).
async fn recording(name: &'static str) -> (Upstream, Log) {
    let log: Log = Arc::default();
    let l = log.clone();
    let up = upstream_with(move |req: Request<hyper::body::Incoming>| {
        let l = l.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            l.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                mirror: parts
                    .headers
                    .get("x-veer-mirror")
                    .map(|v| v.to_str().unwrap().to_string()),
                body: body.to_vec(),
            });
            respond(200, name)
        }
    })
    .await;
    (up, log)
}

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap().clone()
}

async fn status(veer: &Veer) -> Value {
    json_of(&admin_call(veer.admin, "GET", "/api/status", "").await)
}

/// The `mirror` object of route `name` in `/api/status`.
async fn mirror_status(veer: &Veer, name: &str) -> Value {
    let s = status(veer).await;
    s["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name}: {s}"))["mirror"]
        .clone()
}

fn count(m: &Value, result: &str) -> u64 {
    m["counts"][result].as_u64().unwrap_or(0)
}

/// Wait (polling the status API, bounded) until `f` holds for route `name`'s mirror object.
async fn until_mirror(veer: &Veer, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let m = mirror_status(veer, name).await;
        if f(&m) {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The mirror object once its copies have settled: none in flight, and the same count of
/// accounted copies on two reads a tick apart (copies start in their own tasks, a moment
/// after the client's answer).
async fn settled(veer: &Veer, name: &str) -> Value {
    let accounted = |m: &Value| {
        ["sent", "dropped", "error", "same", "differ"]
            .iter()
            .map(|r| count(m, r))
            .sum::<u64>()
    };
    let mut last = until_mirror(veer, name, "a copy accounted", |m| accounted(m) > 0).await;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = mirror_status(veer, name).await;
        if accounted(&now) == accounted(&last) && now["in_flight"] == 0 {
            return now;
        }
        last = now;
    }
}

async fn post(url: &str, body: &'static str) -> Got {
    send(
        Request::post(url)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap(),
    )
    .await
}

fn config(blue: SocketAddr, green: SocketAddr, routes: &str) -> String {
    format!(
        "[pools.blue]\nbackends = [\"{blue}\"]\n[pools.green]\nbackends = [\"{green}\"]\n{routes}"
    )
}

#[tokio::test]
async fn every_get_is_copied_answers_come_from_the_primary_and_writes_only_when_listed() {
    let (blue, blue_log) = recording("blue").await;
    let (green, green_log) = recording("green").await;
    let routes = "[[routes]]\nname = \"web\"\nsplit = { blue = 100, green = 0 }\n\
         [routes.mirror]\nto = \"green\"\n\
         [[routes]]\nname = \"writes\"\npath_prefix = \"/w\"\nsplit = { blue = 100, green = 0 }\n\
         [routes.mirror]\nto = \"green\"\nmethods = [\"GET\", \"post\"]\n";
    let veer = start_veer(&config(blue.addr, green.addr, routes)).await;

    for i in 0..40 {
        let g = get(&veer.url(&format!("/page/{i}"))).await;
        assert_eq!((g.status, g.body.as_str()), (200, "blue"));
    }
    // Not listed on `web`: answered, never copied.
    for _ in 0..5 {
        assert_eq!(post(&veer.url("/form"), "secret").await.body, "blue");
    }
    // Listed on `writes`: copied with its body.
    assert_eq!(post(&veer.url("/w/x"), "hello").await.body, "blue");
    let m = until_mirror(&veer, "web", "40 copies of web's GETs", |m| {
        count(m, "sent") == 40
    })
    .await;
    assert_eq!(m["to"], "green");
    assert_eq!(m["methods"], serde_json::json!(["GET", "HEAD"]));
    until_mirror(&veer, "writes", "the POST's copy", |m| {
        count(m, "sent") == 1
    })
    .await;

    let g = seen(&green_log);
    assert_eq!(g.len(), 41, "{g:?}");
    assert!(g.iter().all(|s| s.mirror.as_deref() == Some("1")), "{g:?}");
    let gets: Vec<&Seen> = g.iter().filter(|s| s.method == "GET").collect();
    assert_eq!(gets.len(), 40);
    for i in 0..40 {
        assert!(
            gets.iter().any(|s| s.path == format!("/page/{i}")),
            "/page/{i}"
        );
    }
    let posts: Vec<&Seen> = g.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 1, "only the listed route's POST: {posts:?}");
    assert_eq!(
        (posts[0].path.as_str(), &posts[0].body[..]),
        ("/w/x", &b"hello"[..])
    );
    // The primary got every request, none marked as a copy.
    let b = seen(&blue_log);
    assert_eq!(b.len(), 46);
    assert!(b.iter().all(|s| s.mirror.is_none()));
    assert_eq!(
        b.iter()
            .filter(|s| s.method == "POST" && s.body == b"secret")
            .count(),
        5
    );
    // Copies are counted apart from the route's requests.
    let metrics = get(&veer.admin_url("/metrics")).await.body;
    assert_eq!(
        metric_sample(
            &metrics,
            "veer_mirror_requests_total",
            &["route=\"web\"", "result=\"sent\""]
        ),
        Some(40.0)
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "veer_requests_total",
            &["route=\"web\"", "pool=\"green\""]
        ),
        0.0,
        "copies are not the route's requests"
    );
    veer.shutdown().await;
}

/// A request whose pool has nothing available falls back (SPEC §2) onto the mirror pool: that
/// pool answers it once, and no copy follows (its answer compared with itself says nothing).
#[tokio::test]
async fn a_request_that_falls_back_onto_the_mirror_pool_is_not_copied_to_it() {
    let (blue, blue_log) = recording("blue").await;
    let (green, green_log) = recording("green").await;
    let routes = "[[routes]]\nname = \"web\"\nsplit = { blue = 100, green = 0 }\nfallback = true\n\
         [routes.mirror]\nto = \"green\"\n";
    let veer = start_veer(&config(blue.addr, green.addr, routes)).await;
    // Copied while blue answers.
    assert_eq!(get(&veer.url("/before")).await.body, "blue");
    until_mirror(&veer, "web", "the first copy", |m| count(m, "sent") == 1).await;

    let drained = admin_call(
        veer.admin,
        "POST",
        &format!("/api/pools/blue/backends/{}/drain", blue.addr),
        "",
    )
    .await;
    assert_eq!(drained.status, 202, "{}", drained.body);
    for i in 0..20 {
        let g = get(&veer.url(&format!("/fell/{i}"))).await;
        assert_eq!((g.status, g.body.as_str()), (200, "green"), "{i}");
    }
    // Blue back: copies again. Once those have settled, a copy of a fallen-back request
    // would have been counted and seen by green too.
    let undrained = admin_call(
        veer.admin,
        "POST",
        &format!("/api/pools/blue/backends/{}/undrain", blue.addr),
        "",
    )
    .await;
    assert!(undrained.status < 300, "{}", undrained.body);
    let mut after = 0;
    while count(&mirror_status(&veer, "web").await, "sent") < 2 {
        assert_eq!(get(&veer.url("/after")).await.status, 200);
        after += 1;
        assert!(after < 200, "blue never came back");
    }
    let m = settled(&veer, "web").await;
    assert_eq!(count(&m, "sent"), 2, "{m}");
    let g = seen(&green_log);
    let fell: Vec<&Seen> = g.iter().filter(|s| s.path.starts_with("/fell/")).collect();
    assert_eq!(
        fell.len(),
        20,
        "each fallen-back request reached green once: {g:?}"
    );
    assert!(fell.iter().all(|s| s.mirror.is_none()), "{fell:?}");
    assert!(seen(&blue_log)
        .iter()
        .all(|s| !s.path.starts_with("/fell/")));
    veer.shutdown().await;
}

#[tokio::test]
async fn a_body_larger_than_max_body_is_not_copied() {
    let (blue, _) = recording("blue").await;
    let (green, green_log) = recording("green").await;
    let routes = "[[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n\
         [routes.mirror]\nto = \"green\"\nmethods = [\"POST\"]\nmax_body = 8\n";
    let veer = start_veer(&config(blue.addr, green.addr, routes)).await;
    assert_eq!(post(&veer.url("/big"), "0123456789").await.body, "blue");
    // A chunked body (no length given) that grows past the bound while it streams.
    let chunks = futures_util::stream::iter(["0123", "4567", "89ab"].map(|c| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
            c.as_bytes(),
        )))
    }));
    let req = Request::post(veer.url("/chunked"))
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "blue");
    assert_eq!(post(&veer.url("/small"), "01234567").await.body, "blue");
    until_mirror(&veer, "web", "the small POST's copy", |m| {
        count(m, "sent") == 1
    })
    .await;
    let g = seen(&green_log);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(
        (g[0].path.as_str(), &g[0].body[..]),
        ("/small", &b"01234567"[..])
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn percent_holds_within_three_points_and_by_sticky_bucket() {
    let (blue, _) = recording("blue").await;
    let (green, green_log) = recording("green").await;
    let routes = "[[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n\
         [routes.mirror]\nto = \"green\"\npercent = 25\n\
         [[routes]]\nname = \"users\"\npath_prefix = \"/u\"\nsplit = { blue = 1 }\nsticky = { header = \"x-user\" }\n\
         [routes.mirror]\nto = \"green\"\npercent = 50\n";
    let veer = start_veer(&config(blue.addr, green.addr, routes)).await;
    let n = 4000;
    let counts = count_bodies(&veer.url("/"), n, &[]).await;
    assert_eq!(counts.get("blue"), Some(&n));
    // Every copy ends as sent (none dropped: the bound is far away).
    let copies = settled(&veer, "web").await;
    let sent = count(&copies, "sent");
    let share = sent as f64 / n as f64 * 100.0;
    assert!((22.0..=28.0).contains(&share), "{share}% copied of 25%");
    assert_eq!(count(&copies, "dropped") + count(&copies, "error"), 0);
    assert_eq!(seen(&green_log).len() as u64, sent);

    // A user's requests are copied together: all or none of each user's.
    for u in 0..20 {
        for _ in 0..5 {
            let g = get_with(
                &veer.url(&format!("/u/{u}")),
                &[("x-user", &format!("user-{u}"))],
            )
            .await;
            assert_eq!(g.body, "blue");
        }
    }
    let m = settled(&veer, "users").await;
    let users = count(&m, "sent");
    let g = seen(&green_log);
    let mut per_user = vec![0; 20];
    for s in g.iter().filter(|s| s.path.starts_with("/u/")) {
        per_user[s.path[3..].parse::<usize>().unwrap()] += 1;
    }
    assert!(per_user.iter().all(|&c| c == 0 || c == 5), "{per_user:?}");
    assert_eq!(per_user.iter().sum::<u64>(), users);
    assert!(users > 0 && users < 100, "{users} of 100 copied at 50%");
    veer.shutdown().await;
}

/// Time `n` sequential GETs of `url`.
async fn timed(url: &str, n: usize) -> Duration {
    let c = client();
    let start = Instant::now();
    for _ in 0..n {
        let r = c
            .request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "blue");
    }
    start.elapsed()
}

#[tokio::test]
async fn a_mirror_answering_in_two_seconds_does_not_slow_the_client() {
    let (blue, _) = recording("blue").await;
    let green = upstream_with(|_req| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        respond(200, "green")
    })
    .await;
    let routes = "[[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nsplit = { blue = 1 }\n\
         [[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n\
         [routes.mirror]\nto = \"green\"\ncompare = true\n";
    let veer = start_veer(&config(blue.addr, green.addr, routes)).await;
    // Warm both paths' connections, then the same number of requests with and without.
    timed(&veer.url("/plain/x"), 3).await;
    timed(&veer.url("/x"), 1).await;
    let n = 20;
    let plain = timed(&veer.url("/plain/x"), n).await;
    let mirrored = timed(&veer.url("/x"), n).await;
    // Had a copy delayed the client even once, the mirrored run would take over 2 s.
    assert!(
        mirrored < plain * 5 + Duration::from_millis(250) && mirrored < Duration::from_secs(2),
        "with mirroring {mirrored:?}, without {plain:?}"
    );
    // The copies were all in flight at the mirror meanwhile, and are compared when it answers.
    let m = mirror_status(&veer, "web").await;
    assert!(m["in_flight"].as_u64().unwrap() >= 10, "{m}");
    until_mirror(&veer, "web", "the slow copies compared", |m| {
        count(m, "same") + count(m, "differ") == n as u64 + 1
    })
    .await;
    veer.shutdown().await;
}

#[tokio::test]
async fn copies_over_the_bound_are_dropped_and_counted() {
    let (blue, _) = recording("blue").await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g2 = gate.clone();
    let green = upstream_with(move |_req| {
        let g = g2.clone();
        async move {
            let _ = g.acquire().await.unwrap();
            respond(200, "green")
        }
    })
    .await;
    let routes = "[[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n\
         [routes.mirror]\nto = \"green\"\nmax_in_flight = 2\n";
    let veer = start_veer(&config(blue.addr, green.addr, routes)).await;
    for _ in 0..10 {
        assert_eq!(get(&veer.url("/")).await.body, "blue");
    }
    let m = until_mirror(&veer, "web", "8 copies dropped", |m| {
        count(m, "dropped") == 8
    })
    .await;
    assert_eq!(m["in_flight"], 2);
    eventually(
        "both held copies at the mirror",
        Duration::from_secs(10),
        || green.hits() == 2,
    )
    .await;
    gate.add_permits(100);
    let m = until_mirror(&veer, "web", "the held copies answered", |m| {
        count(m, "sent") == 2
    })
    .await;
    assert_eq!(
        (count(&m, "dropped"), m["in_flight"].as_u64()),
        (8, Some(0))
    );
    // Places come back: the next copy goes.
    assert_eq!(get(&veer.url("/")).await.body, "blue");
    until_mirror(&veer, "web", "a copy after the release", |m| {
        count(m, "sent") == 3
    })
    .await;
    let metrics = get(&veer.admin_url("/metrics")).await.body;
    assert_eq!(
        metric_sample(
            &metrics,
            "veer_mirror_requests_total",
            &["route=\"web\"", "result=\"dropped\""]
        ),
        Some(8.0)
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn a_dead_mirror_pool_changes_nothing_for_clients() {
    let (blue, blue_log) = recording("blue").await;
    let dead = dead_addr().await;
    let routes = "[[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n\
         [routes.mirror]\nto = \"green\"\ncompare = true\n";
    let veer = start_veer(&config(blue.addr, dead, routes)).await;
    let n = 30;
    for i in 0..n {
        let g = get(&veer.url(&format!("/{i}"))).await;
        assert_eq!((g.status, g.body.as_str()), (200, "blue"));
    }
    // Connect failures count as errors until green's breaker opens; then copies are dropped.
    let m = until_mirror(&veer, "web", "every copy accounted", |m| {
        count(m, "error") + count(m, "dropped") == n
    })
    .await;
    assert!(count(&m, "error") >= 1, "{m}");
    assert!(
        count(&m, "dropped") >= 1,
        "the open breaker drops copies: {m}"
    );
    assert_eq!(count(&m, "same") + count(&m, "differ"), 0);
    assert_eq!(seen(&blue_log).len() as u64, n);
    veer.shutdown().await;
}

/// An upstream answering by path: `/same` alike on both sides; `/body`, `/status`,
/// `/header` differing on green; `/ignored` differing only in ignored headers.
async fn comparing(green: bool) -> Upstream {
    upstream_with(move |req: Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_string();
        let mut r = match (path.as_str(), green) {
            ("/body", true) => respond(200, "hello, world!"),
            ("/status", true) => respond(500, "hello"),
            _ => respond(200, "hello"),
        };
        let h = r.headers_mut();
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert(
            "x-server",
            if green { "green" } else { "blue" }.parse().unwrap(),
        );
        if path == "/header" && green {
            h.insert("x-extra", "1".parse().unwrap());
        }
        r
    })
    .await
}

#[tokio::test]
async fn compare_counts_same_and_differ_with_samples() {
    let (blue, green) = (comparing(false).await, comparing(true).await);
    let routes = "[[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n\
         [routes.mirror]\nto = \"green\"\ncompare = true\nignore_headers = [\"X-Server\", \"x-request-id\"]\n";
    let veer = start_veer(&config(blue.addr, green.addr, routes)).await;
    for _ in 0..5 {
        assert_eq!(get(&veer.url("/same")).await.body, "hello");
    }
    for p in ["/body", "/status", "/header"] {
        let g = get(&veer.url(p)).await;
        assert_eq!(
            (g.status, g.body.as_str()),
            (200, "hello"),
            "the client gets blue's answer"
        );
        assert!(g.header("x-extra").is_none());
    }
    let m = until_mirror(&veer, "web", "8 compared", |m| {
        count(m, "same") + count(m, "differ") == 8
    })
    .await;
    assert_eq!((count(&m, "same"), count(&m, "differ")), (5, 3), "{m}");
    assert_eq!(m["diff_rate"].as_f64(), Some(3.0 / 8.0));
    let samples = m["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3, "{m}");
    let by_path = |p: &str| {
        samples
            .iter()
            .find(|s| s["path"] == p)
            .unwrap_or_else(|| panic!("no sample for {p}: {m}"))
            .clone()
    };
    let body = by_path("/body");
    assert_eq!(body["method"], "GET");
    assert_eq!(
        (body["status"].as_u64(), body["mirror_status"].as_u64()),
        (Some(200), Some(200))
    );
    assert_eq!(
        (body["body_len"].as_u64(), body["mirror_body_len"].as_u64()),
        (Some(5), Some(13))
    );
    assert_eq!(body["body_differs"], true);
    assert_eq!(body["headers"], serde_json::json!([]));
    let status = by_path("/status");
    assert_eq!(
        (status["status"].as_u64(), status["mirror_status"].as_u64()),
        (Some(200), Some(500))
    );
    assert_eq!(status["body_differs"], false);
    let header = by_path("/header");
    assert_eq!(header["headers"], serde_json::json!(["x-extra"]));
    // Without ignore_headers, x-server would differ on every answer.
    let metrics = get(&veer.admin_url("/metrics")).await.body;
    for (result, n) in [
        ("same", 5.0),
        ("differ", 3.0),
        ("error", 0.0),
        ("dropped", 0.0),
    ] {
        assert_eq!(
            metric_sample(
                &metrics,
                "veer_mirror_requests_total",
                &["route=\"web\"", &format!("result=\"{result}\"")]
            ),
            Some(n),
            "{result}"
        );
    }
    // The status page shows them in its mirroring section.
    let dom = rendered_dom(&veer.admin_url("/"), 3000).await;
    assert!(dom.contains("data-mirror=\"web\""), "{dom}");
    for text in ["GET /header", "x-extra", "200 / 500", "same 5 · differ 3"] {
        assert!(dom.contains(text), "{text} not on the page");
    }
    veer.shutdown().await;
}

/// An upstream streaming 1 MiB of `fill` in 64 KiB chunks, holding the second half until
/// `gate` has a permit.
async fn streaming(fill: u8, gate: Arc<tokio::sync::Semaphore>) -> Upstream {
    upstream_with(move |_req| {
        let gate = gate.clone();
        async move {
            let chunks = futures_util::stream::unfold(0usize, move |i| {
                let gate = gate.clone();
                async move {
                    if i == 16 {
                        return None;
                    }
                    if i == 8 {
                        gate.acquire().await.unwrap().forget();
                    }
                    let frame = hyper::body::Frame::data(Bytes::from(vec![fill; 64 * 1024]));
                    Some((Ok::<_, hyper::Error>(frame), i + 1))
                }
            });
            let mut r = http::Response::new(http_body_util::StreamBody::new(chunks).boxed());
            r.headers_mut()
                .insert("content-length", (1u64 << 20).to_string().parse().unwrap());
            r
        }
    })
    .await
}

/// A 1 MiB answer is compared by digests that advance as the bodies stream: with both
/// upstreams holding the second half of their bodies, half of each body (1 MiB in all) has
/// already been digested; nothing waited for (or kept) a whole body. The digest itself is
/// a SHA-256 context and a length (`BodyDigest`), so no body is ever kept whole.
#[tokio::test]
async fn a_one_mib_answer_is_digested_as_it_streams() {
    let (gb, gg) = (
        Arc::new(tokio::sync::Semaphore::new(0)),
        Arc::new(tokio::sync::Semaphore::new(0)),
    );
    let blue = streaming(b'x', gb.clone()).await;
    let green = streaming(b'x', gg.clone()).await;
    let routes = "[[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n\
         [routes.mirror]\nto = \"green\"\ncompare = true\n";
    let veer = start_veer(&config(blue.addr, green.addr, routes)).await;
    let resp = get_streaming(&veer.url("/big")).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0usize;
    while got < 512 * 1024 {
        let f = body.frame().await.unwrap().unwrap();
        got += f.data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(
        got,
        512 * 1024,
        "the client has the first half while the rest is held"
    );
    until_mirror(&veer, "web", "half of each body digested", |m| {
        m["bytes_digested"].as_u64() == Some(1 << 20)
    })
    .await;
    gb.add_permits(1);
    gg.add_permits(1);
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(got, 1 << 20);
    let m = until_mirror(&veer, "web", "the copy compared", |m| count(m, "same") == 1).await;
    assert_eq!(m["bytes_digested"].as_u64(), Some(2 << 20));
    assert_eq!(count(&m, "differ"), 0);
    veer.shutdown().await;
}

/// Route `web` at blue 100 / green 0, mirrored to green with comparison, and a rollout of
/// green that starts with a mirror step.
fn dark_launch(blue: SocketAddr, green: SocketAddr, max_diff_rate: f64) -> String {
    dark_launch_every(blue, green, max_diff_rate, "200ms")
}

fn dark_launch_every(
    blue: SocketAddr,
    green: SocketAddr,
    max_diff_rate: f64,
    step_interval: &str,
) -> String {
    config(
        blue,
        green,
        &format!(
            "[[routes]]\nname = \"web\"\nsplit = {{ blue = 100, green = 0 }}\n\
             [routes.mirror]\nto = \"green\"\ncompare = true\n\
             [routes.rollout]\nto = \"green\"\nsteps = [\"mirror\", 100]\nstep_interval = \"{step_interval}\"\nmin_requests = 20\nmax_diff_rate = {max_diff_rate}\n"
        ),
    )
}

/// Send GETs to `url` until `stop` is set; every answer must be a 200.
fn traffic(
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let c = client();
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let r = c
                .request(Request::get(&url).body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.into_body().collect().await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    })
}

#[tokio::test]
async fn a_rollout_mirror_step_fails_on_a_high_difference_rate_before_any_user_moves() {
    let (blue, _) = recording("blue").await;
    // Green answers every request differently.
    let (green, green_log) = recording("green").await;
    let veer = start_veer(&dark_launch(blue.addr, green.addr, 0.05)).await;
    let rt = veer.rt().clone();
    let s = wait_step(&rt, 0).await;
    assert_eq!(s.target_weight(), Some(0), "the mirror step moves nobody");
    let st = veer::rollout::status_json(&rt.rollouts, &rt, "web");
    assert_eq!(st["steps"], serde_json::json!(["mirror", 100]));
    assert_eq!(st["mirror_step"], true);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = traffic(veer.url("/"), stop.clone());
    let s = wait_state(&rt, veer::config::RolloutState::RolledBack).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.await.unwrap();
    assert_eq!(s.step, 0, "rolled back at the mirror step");
    // The copies to green are not requests to green in the step's statistics.
    assert_eq!(s.figures.expect("the step's figures").canary.requests, 0);
    let reason = s.reason.unwrap_or_default();
    assert!(reason.contains("difference rate 100"), "{reason}");
    // The split never changed, and green only ever saw copies.
    assert_eq!(green_weight(&rt), 0);
    assert_eq!(
        rt.config().route("web").unwrap().weight_of("blue"),
        Some(100)
    );
    let g = seen(&green_log);
    assert!(g.len() >= 20, "{}", g.len());
    assert!(
        g.iter().all(|s| s.mirror.as_deref() == Some("1")),
        "a user reached green"
    );
    veer.shutdown().await;
}

/// A release that plainly answers differently rolls back without waiting out its mirror step
/// (an hour here): fail fast, as on error rates.
#[tokio::test]
async fn a_mirror_step_fails_fast_on_a_certain_difference_rate() {
    let (blue, _) = recording("blue").await;
    let (green, _) = recording("green").await;
    let veer = start_veer(&dark_launch_every(blue.addr, green.addr, 0.05, "1h")).await;
    let rt = veer.rt().clone();
    wait_step(&rt, 0).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = traffic(veer.url("/"), stop.clone());
    let s = wait_state(&rt, veer::config::RolloutState::RolledBack).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.await.unwrap();
    assert_eq!(s.step, 0);
    let reason = s.reason.unwrap_or_default();
    assert!(
        reason.contains("difference rate 100") && reason.ends_with("(fail fast)"),
        "{reason}"
    );
    assert_eq!(green_weight(&rt), 0, "nobody moved");
    veer.shutdown().await;
}

#[tokio::test]
async fn a_rollout_mirror_step_passes_on_a_low_difference_rate_then_moves_users() {
    let (blue, _) = recording("same").await;
    let (green, _) = recording("same").await;
    let veer = start_veer(&dark_launch(blue.addr, green.addr, 0.05)).await;
    let rt = veer.rt().clone();
    wait_step(&rt, 0).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = traffic(veer.url("/"), stop.clone());
    // Past the mirror step: users move to green.
    let s = wait_step(&rt, 1).await;
    assert_eq!(s.target_weight(), Some(100));
    let m = mirror_status(&veer, "web").await;
    assert!(count(&m, "same") >= 20 && count(&m, "differ") == 0, "{m}");
    let s = wait_state(&rt, veer::config::RolloutState::Succeeded).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.await.unwrap();
    assert_eq!(s.step, 1);
    assert_eq!(green_weight(&rt), 100);
    veer.shutdown().await;
}
