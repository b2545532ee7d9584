//! Hostile request bodies (issue 12, items 2 to 4), over real sockets against a recording
//! upstream: malformed framing gets 400 and never a complete request upstream; valid bodies
//! on GET and HEAD are forwarded, never dropped; a client's broken body is never the
//! backend's failure; slow bodies get 408 and give their upstream connection back.

mod support;

use bytes::Bytes;
use http::Request;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/// One pool `app` over `backends` (breaker at 3 consecutive failures), one route for every
/// host; `server` holds extra `[server]` lines, `route` extra route keys.
fn config(backends: &[SocketAddr], server: &str, route: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n\
         [pools.app]\nbackends = [{}]\n\
         [pools.app.circuit_breaker]\nconsecutive_failures = 3\n\
         [[routes]]\nname = \"app\"\nhosts = [\"*\"]\nsplit = {{ app = 100 }}\n{route}\n",
        list.join(", ")
    )
}

async fn start(backends: &[SocketAddr], server: &str) -> Veer {
    start_veer(&config(backends, server, "")).await
}

/// A veer that also listens for HTTPS (certificate for `bodies.test`), its TLS address, and
/// the roots a client trusts it with.
async fn start_tls(backend: SocketAddr, server: &str) -> (Veer, SocketAddr, rustls::RootCertStore) {
    let dir = tempfile::tempdir().unwrap();
    let roots = write_test_cert(dir.path(), "bodies.test");
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[tls.certificates]]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n{}",
        config(
            &[backend],
            &format!("tls_listen = [\"127.0.0.1:0\"]\n{server}"),
            ""
        )
    );
    let path = dir.path().join("veer.toml");
    std::fs::write(&path, text).unwrap();
    let veer = start_veer_file(dir, path).await;
    let tls = veer.running.as_ref().unwrap().tls_listen[0];
    (veer, tls, roots)
}

/// Write `bytes` on a new connection and read the response (bounded).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_answer(&mut s).await
}

/// Sum of `veer_requests_total` over the series with this code.
fn requests_with_code(metrics: &str, code: u16) -> f64 {
    metric_sum(
        metrics,
        "veer_requests_total",
        &[&format!("code=\"{code}\"")],
    )
}

/// Sum of `veer_circuit_breaker_trips_total` over every backend.
fn breaker_trips(metrics: &str) -> f64 {
    metric_sum(metrics, "veer_circuit_breaker_trips_total", &[])
}

async fn metrics_of(veer: &Veer) -> String {
    get(&veer.admin_url("/metrics")).await.body
}

/// The breaker state of every backend, from /api/status.
async fn breakers(veer: &Veer) -> Vec<String> {
    let status: serde_json::Value =
        serde_json::from_str(&get(&veer.admin_url("/api/status")).await.body).unwrap();
    status["pools"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["breaker"].as_str().unwrap().to_string())
        .collect()
}

/// Send the head and first chunk of a chunked request, wait until the backend has the head,
/// then send a malformed chunk-size line: the request breaks mid-stream. The answer.
async fn malformed_mid_stream(veer: &Veer, rec: &RawBackend, method: &str) -> (u16, String) {
    let before = rec.seen().len();
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(
        format!("{method} /mid HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    eventually(
        "the backend to get the head",
        Duration::from_secs(5),
        || rec.seen().len() > before,
    )
    .await;
    s.write_all(b"zz\r\n").await.unwrap();
    let head = if method == "HEAD" {
        read_head_only(&mut s).await
    } else {
        read_answer(&mut s).await.1
    };
    (status_of(&head), head)
}

/// The answer to an HTTP/2 request sent with `body` in DATA frames (the last one ending the
/// stream): status and body, or the stream error.
async fn h2_send(
    client: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
    body: &[&'static [u8]],
) -> Result<(u16, String), h2::Error> {
    futures_util::future::poll_fn(|cx| client.poll_ready(cx)).await?;
    let (resp, mut send) = client.send_request(req, body.is_empty())?;
    for (i, part) in body.iter().enumerate() {
        send.send_data(Bytes::from_static(part), i + 1 == body.len())?;
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("no answer in time")?;
    let status = resp.status().as_u16();
    let mut recv = resp.into_body();
    let mut text = Vec::new();
    while let Some(d) = recv.data().await {
        let d = d?;
        let _ = recv.flow_control().release_capacity(d.len());
        text.extend_from_slice(&d);
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

fn h2_request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Item 2: malformed framing is a 400 whatever the method; valid bodies are never dropped.

#[tokio::test]
async fn a_malformed_first_chunk_gets_400_and_nothing_reaches_the_backend_whatever_the_method() {
    let rec = recorder().await;
    let veer = start(&[rec.addr], "").await;
    for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"] {
        let mut s = TcpStream::connect(veer.addr).await.unwrap();
        s.write_all(
            format!(
                "{method} /x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head_only(&mut s).await;
        assert_eq!(status_of(&head), 400, "{method}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{method}: {head}"
        );
    }
    // Not a byte of any of them reached the backend: not even a connection.
    assert_eq!(rec.accepted(), 0);
    assert!(rec.seen().is_empty(), "{:?}", rec.seen());
    assert_eq!(requests_with_code(&metrics_of(&veer).await, 400), 6.0);
    veer.shutdown().await;
}

#[tokio::test]
async fn a_malformed_chunk_mid_stream_aborts_the_upstream_request_and_gets_400() {
    let rec = recorder().await;
    let veer = start(&[rec.addr], "").await;
    for (i, method) in ["GET", "POST", "HEAD"].into_iter().enumerate() {
        let (status, head) = malformed_mid_stream(&veer, &rec, method).await;
        assert_eq!(status, 400, "{method}: {head}");
        // The backend got the head and the first chunk, then a broken request: the upstream
        // connection is cut, the body never completes.
        rec.all_closed().await;
        let seen = &rec.seen()[i];
        assert!(seen.head.starts_with(method), "{}", seen.head);
        assert_eq!(seen.body, b"hello", "{method}");
        assert!(
            !seen.complete,
            "{method}: a broken body reached the backend whole"
        );
    }
    assert_eq!(breakers(&veer).await, ["closed"]);
    veer.shutdown().await;
}

#[tokio::test]
async fn valid_bodies_on_get_and_head_are_forwarded_whole() {
    let rec = recorder().await;
    let veer = start(&[rec.addr], "").await;
    let chunked = "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";

    let (status, _, body) = exchange(
        veer.addr,
        format!("GET /search HTTP/1.1\r\nHost: app\r\n{chunked}").as_bytes(),
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"got 11"[..]));

    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(format!("HEAD /search HTTP/1.1\r\nHost: app\r\n{chunked}").as_bytes())
        .await
        .unwrap();
    assert_eq!(status_of(&read_head_only(&mut s).await), 200);

    let (status, _, body) = exchange(
        veer.addr,
        b"GET /search HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"got 5"[..]));

    // An empty chunked body is no body at all.
    let (status, _, body) = exchange(
        veer.addr,
        b"GET /empty HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"got 0"[..]));

    let seen = rec.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.iter().all(|s| s.complete), "{seen:?}");
    assert_eq!(seen[0].body, b"hello world");
    assert!(seen[0].head.starts_with("GET /search"), "{}", seen[0].head);
    assert_eq!(seen[1].body, b"hello world");
    assert!(seen[1].head.starts_with("HEAD /search"), "{}", seen[1].head);
    assert_eq!(seen[2].body, b"hello");
    assert!(seen[3].body.is_empty());
    veer.shutdown().await;
}

#[tokio::test]
async fn get_bodies_in_http2_data_frames_are_forwarded_over_h2c_and_https() {
    let rec = recorder().await;
    let (veer, tls, roots) = start_tls(rec.addr, "").await;
    let mut h2c = h2c_client(veer.addr).await;
    let mut h2 = h2_tls_client(tls, "bodies.test", roots).await;
    for (name, client, uri) in [
        ("h2c", &mut h2c, "http://app/search"),
        ("https", &mut h2, "https://bodies.test/search"),
    ] {
        // DATA frames without a content-length, on a GET and on a HEAD.
        let got = h2_send(client, h2_request("GET", uri, &[]), &[b"hello", b" world"])
            .await
            .unwrap();
        assert_eq!(got, (200, "got 11".to_string()), "{name}");
        let got = h2_send(client, h2_request("HEAD", uri, &[]), &[b"hello"])
            .await
            .unwrap();
        assert_eq!(got.0, 200, "{name}");
    }
    let seen = rec.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.iter().all(|s| s.complete), "{seen:?}");
    let bodies: Vec<&[u8]> = seen.iter().map(|s| &s.body[..]).collect();
    assert_eq!(
        bodies,
        [&b"hello world"[..], b"hello", b"hello world", b"hello"]
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn get_bodies_reach_an_http2_pool() {
    let up = upstream_with(|req: Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let v = format!("{:?}", req.version());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        respond(200, format!("{v} {}", String::from_utf8_lossy(&body)))
    })
    .await;
    let veer = start_veer(&format!(
        "[pools.app]\nbackends = [\"{}\"]\nprotocol = \"h2c\"\n\
         [[routes]]\nname = \"app\"\nhosts = [\"*\"]\nsplit = {{ app = 100 }}\n",
        up.addr
    ))
    .await;
    let (status, _, body) = exchange(
        veer.addr,
        b"GET /q HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"HTTP/2.0 hello"[..]));
    let mut h2c = h2c_client(veer.addr).await;
    let got = h2_send(&mut h2c, h2_request("GET", "http://app/q", &[]), &[b"hi"])
        .await
        .unwrap();
    assert_eq!(got, (200, "HTTP/2.0 hi".to_string()));
    veer.shutdown().await;
}

#[tokio::test]
async fn an_http2_body_that_breaks_its_content_length_never_reaches_the_backend_whole() {
    let rec = recorder().await;
    let (veer, tls, roots) = start_tls(rec.addr, "").await;
    let mut h2c = h2c_client(veer.addr).await;
    let mut h2 = h2_tls_client(tls, "bodies.test", roots).await;
    for (name, client, uri) in [
        ("h2c", &mut h2c, "http://app/up"),
        ("https", &mut h2, "https://bodies.test/up"),
    ] {
        // Longer than declared, and shorter.
        for (cl, parts) in [("4", &[&b"hello"[..]][..]), ("10", &[&b"abc"[..]][..])] {
            let got = h2_send(
                client,
                h2_request("POST", uri, &[("content-length", cl)]),
                parts,
            )
            .await;
            // h2 resets the stream itself (PROTOCOL_ERROR); if an answer gets out first, it is
            // a 400.
            if let Ok((status, _)) = got {
                assert_eq!(status, 400, "{name} content-length {cl}");
            }
        }
    }
    rec.all_closed().await;
    let seen = rec.seen();
    assert!(seen.iter().all(|s| !s.complete), "{seen:?}");
    // The clients are fine, and so is the backend.
    let got = h2_send(
        &mut h2c,
        h2_request("POST", "http://app/ok", &[]),
        &[b"fine"],
    )
    .await
    .unwrap();
    assert_eq!(got, (200, "got 4".to_string()));
    assert_eq!(breakers(&veer).await, ["closed"]);
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Item 3: a client's broken body is never the backend's failure.

#[tokio::test]
async fn malformed_and_cut_bodies_never_trip_the_breaker_of_a_lone_backend() {
    let rec = recorder().await;
    let veer = start(&[rec.addr], "").await;
    // Ten client faults against a breaker that opens at three consecutive failures.
    for _ in 0..3 {
        let (status, _, _) = exchange(
            veer.addr,
            b"POST /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        )
        .await;
        assert_eq!(status, 400);
    }
    for _ in 0..3 {
        let (status, head) = malformed_mid_stream(&veer, &rec, "POST").await;
        assert_eq!(status, 400, "{head}");
    }
    for _ in 0..4 {
        // Declares 1000 bytes, sends 10 and goes away once the backend has the head.
        let before = rec.seen().len();
        let mut s = TcpStream::connect(veer.addr).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        eventually(
            "the backend to get the head",
            Duration::from_secs(5),
            || rec.seen().len() > before,
        )
        .await;
        drop(s);
    }
    rec.all_closed().await;
    let seen = rec.seen();
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(seen.iter().all(|s| !s.complete), "{seen:?}");

    // The lone backend still takes traffic, its breaker never opened.
    assert_eq!(get(&veer.url("/after")).await.status, 200);
    assert_eq!(breakers(&veer).await, ["closed"]);
    let m = metrics_of(&veer).await;
    assert!(m.contains("veer_circuit_breaker_trips_total{"), "{m}");
    assert_eq!(breaker_trips(&m), 0.0, "{m}");
    for code in [500, 502, 503, 504] {
        assert_eq!(requests_with_code(&m, code), 0.0, "code {code}: {m}");
    }
    assert_eq!(requests_with_code(&m, 400), 6.0, "{m}");
    veer.shutdown().await;
}

#[tokio::test]
async fn broken_bodies_do_not_count_in_a_rollout_step() {
    let (base, canary) = (recorder().await, recorder().await);
    let veer = start_veer(&format!(
        "[pools.base]\nbackends = [\"{}\"]\n[pools.canary]\nbackends = [\"{}\"]\n\
         [[routes]]\nname = \"app\"\nhosts = [\"*\"]\nsplit = {{ base = 100, canary = 0 }}\n\
         [routes.rollout]\nto = \"canary\"\nsteps = [100]\nstep_interval = \"1h\"\nmin_requests = 1000\n",
        base.addr, canary.addr
    ))
    .await;
    let rt = veer.rt().clone();
    eventually("the step to run", Duration::from_secs(5), || {
        veer::rollout::stats(&rt, "app").is_some()
            && rt.config().route("app").unwrap().weight_of("canary") == Some(100)
    })
    .await;
    for _ in 0..3 {
        let mut s = TcpStream::connect(veer.addr).await.unwrap();
        s.write_all(
            b"POST /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        let n = canary.seen().len();
        eventually("the canary to get the head", Duration::from_secs(5), || {
            canary.seen().len() > n
        })
        .await;
        s.write_all(b"zz\r\n").await.unwrap();
        let (status, _, _) = read_answer(&mut s).await;
        assert_eq!(status, 400);
    }
    let f = veer::rollout::stats(&rt, "app").unwrap().figures().canary;
    assert_eq!((f.requests, f.failures), (0, 0), "{f:?}");
    assert_eq!(get(&veer.url("/ok")).await.status, 200);
    let f = veer::rollout::stats(&rt, "app").unwrap().figures().canary;
    assert_eq!((f.requests, f.failures), (1, 0), "{f:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn a_broken_body_is_not_retried_on_another_backend() {
    let (a, b) = (recorder().await, recorder().await);
    let veer = start_veer(&config(
        &[a.addr, b.addr],
        "",
        "retry = { attempts = 3, backoff = \"1ms\", idempotent_only = false }",
    ))
    .await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(
        b"PUT /doc HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    eventually("a backend to get the head", Duration::from_secs(5), || {
        a.seen().len() + b.seen().len() == 1
    })
    .await;
    s.write_all(b"zz\r\n").await.unwrap();
    let (status, _, _) = read_answer(&mut s).await;
    assert_eq!(status, 400);
    // The answer came after the only attempt there will be.
    assert_eq!(a.seen().len() + b.seen().len(), 1);
    assert_eq!(a.accepted() + b.accepted(), 1);
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Item 4: slow request bodies get 408 and give their upstream connection back.

const SLOW: &str = "request_body_timeout = \"2s\"\nrequest_body_min_rate = 1000\n";
const SLOW_1S: &str = "request_body_timeout = \"1s\"\nrequest_body_min_rate = 1000\n";

/// The R-U-Dead-Yet upload over HTTP/1.1: declares 100 kB, sends a byte a second. The status
/// and head it gets, and how long after its first byte.
async fn slow_http1_upload(addr: SocketAddr) -> (u16, String, Duration) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 100000\r\n\r\nx")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk))
            .await
            .expect("no answer in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let elapsed = started.elapsed();
    trickle.abort();
    let head = String::from_utf8_lossy(&buf).into_owned();
    (status_of(&head), head, elapsed)
}

/// The same over HTTP/2: one stream declaring 100 kB, a byte a second.
async fn slow_h2_upload(mut client: h2::client::SendRequest<Bytes>, uri: &str) -> (u16, Duration) {
    futures_util::future::poll_fn(|cx| client.poll_ready(cx))
        .await
        .unwrap();
    let (resp, mut send) = client
        .send_request(
            h2_request("POST", uri, &[("content-length", "100000")]),
            false,
        )
        .unwrap();
    send.send_data(Bytes::from_static(b"x"), false).unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if send.send_data(Bytes::from_static(b"x"), false).is_err() {
                return;
            }
        }
    });
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("no answer in time")
        .expect("the stream failed");
    trickle.abort();
    (resp.status().as_u16(), started.elapsed())
}

/// Every answer a 408 after 2 s (the timeout; a byte a second earns 1 ms each) and well before
/// the 100 s the upload would take.
fn assert_408_in_time(what: &str, status: u16, elapsed: Duration) {
    assert_eq!(status, 408, "{what}");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(4000),
        "{what}: 408 after {elapsed:?}"
    );
}

/// After the uploads: the backend got each of them, none whole, and every connection they
/// held is closed; the backend is still fine.
/// Wait until `n` uploads each hold a backend connection.
async fn uploads_hold(rec: &RawBackend, n: usize) {
    eventually(
        "each upload to hold a backend connection",
        Duration::from_secs(2),
        || rec.open() == n,
    )
    .await;
}

async fn assert_released(veer: &Veer, rec: &RawBackend, n: usize) {
    rec.all_closed().await;
    let seen = rec.seen();
    assert_eq!(seen.len(), n, "{seen:?}");
    assert!(seen.iter().all(|s| !s.complete), "{seen:?}");
    assert_eq!(breakers(veer).await, ["closed"]);
    let m = metrics_of(veer).await;
    assert_eq!(requests_with_code(&m, 408), n as f64, "{m}");
    assert_eq!(requests_with_code(&m, 504), 0.0, "{m}");
}

#[tokio::test]
async fn slow_http1_uploads_get_408_and_release_their_upstream_connections() {
    let rec = recorder().await;
    let veer = start(&[rec.addr], SLOW).await;
    let uploads: Vec<_> = (0..5)
        .map(|_| tokio::spawn(slow_http1_upload(veer.addr)))
        .collect();
    uploads_hold(&rec, 5).await;
    for u in uploads {
        let (status, head, elapsed) = u.await.unwrap();
        assert_408_in_time(&head, status, elapsed);
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    assert_released(&veer, &rec, 5).await;
    assert_eq!(get(&veer.url("/after")).await.status, 200);
    veer.shutdown().await;
}

/// Five slow uploads to `uri` over one HTTP/2 connection: each holds a backend connection
/// until its 408, then gives it back.
async fn five_slow_h2_uploads(
    veer: &Veer,
    rec: &RawBackend,
    client: h2::client::SendRequest<Bytes>,
    uri: &'static str,
    what: &str,
) {
    let uploads: Vec<_> = (0..5)
        .map(|_| tokio::spawn(slow_h2_upload(client.clone(), uri)))
        .collect();
    uploads_hold(rec, 5).await;
    for u in uploads {
        let (status, elapsed) = u.await.unwrap();
        assert_408_in_time(what, status, elapsed);
    }
    assert_released(veer, rec, 5).await;
}

#[tokio::test]
async fn slow_h2c_uploads_get_408_and_release_their_upstream_connections() {
    let rec = recorder().await;
    let veer = start(&[rec.addr], SLOW).await;
    let client = h2c_client(veer.addr).await;
    five_slow_h2_uploads(&veer, &rec, client, "http://app/up", "h2c").await;
    veer.shutdown().await;
}

#[tokio::test]
async fn slow_https_h2_uploads_get_408_and_release_their_upstream_connections() {
    let rec = recorder().await;
    let (veer, tls, roots) = start_tls(rec.addr, SLOW).await;
    let client = h2_tls_client(tls, "bodies.test", roots).await;
    five_slow_h2_uploads(&veer, &rec, client, "https://bodies.test/up", "https h2").await;
    veer.shutdown().await;
}

#[tokio::test]
async fn a_body_silent_for_the_timeout_gets_408_whatever_it_earned() {
    let rec = recorder().await;
    let veer = start(&[rec.addr], SLOW_1S).await;
    // 100 kB at once earns 100 s; then silence.
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 200000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![b'x'; 100_000]).await.unwrap();
    let started = Instant::now();
    let (status, _, _) = read_answer(&mut s).await;
    assert_eq!(status, 408);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    rec.all_closed().await;
    veer.shutdown().await;
}

#[tokio::test]
async fn a_client_that_sends_no_body_gets_408_without_costing_a_backend() {
    let rec = recorder().await;
    let veer = start(&[rec.addr], "request_body_timeout = \"500ms\"\n").await;
    let started = Instant::now();
    let (status, head, _) = exchange(
        veer.addr,
        b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n",
    )
    .await;
    assert_eq!(status, 408, "{head}");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rec.accepted(), 0);
    assert_eq!(requests_with_code(&metrics_of(&veer).await, 408), 1.0);
    veer.shutdown().await;
}

#[tokio::test]
async fn a_steady_upload_above_the_min_rate_is_not_cut_and_zero_is_no_limit() {
    let rec = recorder().await;
    // 500 bytes every 300 ms: 1667 bytes/s, above the 1000 asked for, for 1.8 s in all,
    // longer than the 1 s timeout.
    let veer = start(&[rec.addr], SLOW_1S).await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 3000\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..6 {
        s.write_all(&[b'x'; 500]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, _, body) = read_answer(&mut s).await;
    assert_eq!((status, &body[..]), (200, &b"got 3000"[..]));
    veer.shutdown().await;

    // "0s" turns the limit off: a pause a 1 s limit would answer with 408 is waited out.
    let veer = start(&[rec.addr], "request_body_timeout = \"0s\"\n").await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"world").await.unwrap();
    let (status, _, body) = read_answer(&mut s).await;
    assert_eq!((status, &body[..]), (200, &b"got 10"[..]));
    veer.shutdown().await;
}
