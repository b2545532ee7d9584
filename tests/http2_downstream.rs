//! HTTP/2 from clients: h2c with prior knowledge, and h2 over TLS (served on h2 without
//! hyper): flow control, resets, cut bodies, shutdown, idle timeout and head limits.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

// ---------------------------------------------------------------------------------------------
// HTTP/2.

#[tokio::test]
async fn h2c_prior_knowledge_downstream() {
    let up = echo_head_upstream().await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let client = h2c_hyper_client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let url = veer.url(&format!("/h2/{i}"));
        tasks.push(tokio::spawn(async move {
            let resp = client
                .request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let body = t.await.unwrap();
        // The upstream gets HTTP/1.1 with a Host taken from :authority.
        assert!(body.starts_with(&format!("GET /h2/{i} HTTP/1.1")), "{body}");
        let seen = echoed(&body);
        assert_eq!(
            echoed_get(&seen, "host"),
            [veer.addr.to_string().as_str()],
            "{body}"
        );
        assert_eq!(
            echoed_get(&seen, "x-forwarded-host"),
            [veer.addr.to_string().as_str()]
        );
    }
    veer.shutdown().await;
}

/// An upstream that sends `first`, then each of `then` after `gap`, then (with `stall`)

#[tokio::test]
async fn h2c_uploads_stream() {
    let up = counting_upstream().await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let client = h2c_hyper_client();
    let payload = Bytes::from(vec![7u8; 8 * 1024 * 1024]);
    let resp = client
        .request(
            Request::post(veer.url("/up"))
                .body(Full::new(payload))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (8 * 1024 * 1024).to_string());
    veer.shutdown().await;
}

// ---------- downstream HTTP/2 over TLS, served on h2 without hyper ----------

type H2Full = hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>;

/// An HTTP/2 client over TLS with HTTP/2's default windows (64 KiB - 1) and no window
/// growth, so a large download has to wait for the client's window updates.
async fn h2_client_small_window(addr: SocketAddr) -> H2Full {
    let tls = handshake(addr, Some("grpc.test"), client_config(None, &[b"h2"])).await;
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .adaptive_window(false)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A large body of bytes that says where each one belongs.
fn patterned(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

fn routed_pool(up: &Upstream) -> String {
    format!(
        "{CERT}[pools.web]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nhosts = [\"grpc.test\"]\nsplit = {{ web = 100 }}\n",
        up.addr
    )
}

#[tokio::test]
async fn http2_over_tls_moves_large_bodies_both_ways_under_flow_control() {
    const DOWN: usize = 4 * 1024 * 1024;
    const UP: usize = 3 * 1024 * 1024 + 17;
    let up = upstream_with(|req: Request<Incoming>| async move {
        if req.method() == http::Method::POST {
            let got = req.into_body().collect().await.unwrap().to_bytes();
            let intact = got == patterned(got.len());
            return respond(200, format!("{} {intact}", got.len()));
        }
        let mut r = Response::new(body(patterned(DOWN)));
        r.headers_mut()
            .insert("content-length", DOWN.to_string().parse().unwrap());
        r
    })
    .await;
    let v = start_in(tls_dir_with_cert().await, &routed_pool(&up)).await;
    let mut client = h2_client_small_window(v.tls).await;

    // Download: 64 times the client's window, so veer waits for window updates throughout.
    let resp = client
        .send_request(h2_get("grpc.test", "/big"))
        .await
        .unwrap();
    assert_eq!(
        (resp.status(), resp.version()),
        (StatusCode::OK, Version::HTTP_2)
    );
    let got = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("download stalled")
        .unwrap()
        .to_bytes();
    assert_eq!(got.len(), DOWN);
    assert!(got == patterned(DOWN), "download corrupted");

    // Upload: more than veer's own 1 MiB windows, with a Content-Length.
    let req = Request::post("https://grpc.test/up")
        .header("content-length", UP.to_string())
        .body(http_body_util::Full::new(patterned(UP)))
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, format!("{UP} true"));

    // veer's own answer (no route for this host) says how long it is.
    let resp = client
        .send_request(h2_get("elsewhere.test", "/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let len: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes().len(),
        len
    );
    v.veer.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls_client_reset_cancels_the_request_and_frees_the_backend() {
    use futures_util::StreamExt;
    let up = upstream_with(|req: Request<Incoming>| async move {
        if req.uri().path() == "/hang" {
            std::future::pending::<()>().await;
        }
        // One chunk, then silence.
        let s = futures_util::stream::once(async {
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"first")))
        })
        .chain(futures_util::stream::pending());
        Response::new(BodyExt::boxed(http_body_util::StreamBody::new(s)))
    })
    .await;
    let v = start_in(tls_dir_with_cert().await, &routed_pool(&up)).await;
    let backend = v.veer.rt().registry.get("web", up.addr).unwrap();
    let mut client = h2_client_small_window(v.tls).await;

    // Reset while veer waits for the backend's answer.
    let pending = client.send_request(h2_get("grpc.test", "/hang"));
    let waiting = tokio::spawn(pending);
    eventually("request at the backend", Duration::from_secs(5), || {
        backend.in_flight() == 1
    })
    .await;
    waiting.abort(); // drops the response future: the client resets the stream
    eventually(
        "lease released after the reset",
        Duration::from_secs(5),
        || backend.in_flight() == 0,
    )
    .await;

    // Reset while veer streams a body that has stalled.
    let resp = client
        .send_request(h2_get("grpc.test", "/stall"))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = next_frame(&mut body).await.into_data().unwrap();
    assert_eq!(first, "first");
    assert_eq!(backend.in_flight(), 1);
    drop(body);
    eventually(
        "lease released after the reset",
        Duration::from_secs(5),
        || backend.in_flight() == 0,
    )
    .await;

    // The connection itself is fine.
    client.ready().await.unwrap();
    let resp = client
        .send_request(h2_get("elsewhere.test", "/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    v.veer.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls_a_cut_upstream_body_resets_the_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that promises 100 bytes, sends 5 and closes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
                    .await;
            });
        }
    });
    let v = start_with_cert(
        &format!(
            "[pools.web]\nbackends = [\"{addr}\"]\n[[routes]]\nname = \"web\"\nhosts = [\"*\"]\nsplit = {{ web = 100 }}\n"
        ),
    )
    .await;
    let mut client = h2_client_small_window(v.tls).await;
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        // The reset may come with the head, before the client has taken the response.
        let resp = client.send_request(h2_get("grpc.test", "/")).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.map(|_| ())
    })
    .await
    .expect("cut body never ended");
    let e = got.expect_err("a cut body must not look complete");
    assert!(format!("{e:?}").contains("INTERNAL_ERROR"), "{e:?}");
    v.veer.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls_shutdown_lets_the_request_in_flight_finish() {
    let (at_backend, arrived) = tokio::sync::oneshot::channel::<()>();
    let at_backend = Arc::new(std::sync::Mutex::new(Some(at_backend)));
    let (go, release) = tokio::sync::watch::channel(false);
    let up = upstream_with(move |_req| {
        let at_backend = at_backend.clone();
        let mut release = release.clone();
        async move {
            if let Some(tx) = at_backend.lock().unwrap().take() {
                let _ = tx.send(());
            }
            let _ = release.wait_for(|go| *go).await;
            respond(200, "finished")
        }
    })
    .await;
    let v = start_in(tls_dir_with_cert().await, &routed_pool(&up)).await;
    let mut client = h2_client_small_window(v.tls).await;
    let answer = tokio::spawn(client.send_request(h2_get("grpc.test", "/slow")));
    arrived.await.unwrap();
    let shutdown = tokio::spawn(v.veer.shutdown());
    // Shutdown waits for the request; the backend answers only now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!shutdown.is_finished(), "shutdown did not wait");
    go.send(true).unwrap();
    let resp = answer.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "finished");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown hung")
        .unwrap();
}

#[tokio::test]
async fn http2_over_tls_idle_connection_is_closed_after_idle_timeout() {
    let up = echo_upstream().await;
    let v = start_in_with(
        tls_dir_with_cert().await,
        "idle_timeout = \"300ms\"\n",
        &routed_pool(&up),
    )
    .await;
    let tls = handshake(v.tls, Some("grpc.test"), client_config(None, &[b"h2"])).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    let resp = send
        .send_request(
            Request::get("https://grpc.test/")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    // GOAWAY after the idle timeout: the client's connection ends cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("idle HTTP/2 connection never closed")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    v.veer.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls_oversized_request_head_gets_431() {
    let up = echo_upstream().await;
    let v = start_in_with(
        tls_dir_with_cert().await,
        "max_header_bytes = 16384\n",
        &routed_pool(&up),
    )
    .await;
    let mut client = h2_client_small_window(v.tls).await;
    let mut req = h2_get("grpc.test", "/");
    req.headers_mut()
        .insert("x-big", "a".repeat(20_000).parse().unwrap());
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(up.hits(), 0);
    // A head under the limit passes, on the same connection.
    let mut req = h2_get("grpc.test", "/");
    req.headers_mut()
        .insert("x-medium", "c".repeat(8000).parse().unwrap());
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    v.veer.shutdown().await;
}

/// The patched h2 (vendor/h2/VEER.md) gives its read, write and HPACK scratch buffers back
/// whenever a connection is idle and takes new ones at the next frame: on one connection,
/// requests after idle periods still move large bodies both ways intact, and headers the
/// client's HPACK table refers to (inserted while other buffers were live) still read right.
#[tokio::test]
async fn http2_over_tls_moves_large_bodies_after_idle_periods_on_one_connection() {
    const DOWN: usize = 1024 * 1024 + 5;
    const UP: usize = 2 * 1024 * 1024 + 3;
    let up = upstream_with(|req: Request<Incoming>| async move {
        let seen = format!(
            "{} {} {}",
            req.uri().path(),
            req.headers()["host"].to_str().unwrap(),
            req.headers()["x-long"].to_str().unwrap().len()
        );
        if req.method() == http::Method::POST {
            let got = req.into_body().collect().await.unwrap().to_bytes();
            let intact = got == patterned(got.len());
            return respond(200, format!("{seen} {} {intact}", got.len()));
        }
        if req.uri().path() == "/big" {
            let mut r = Response::new(body(patterned(DOWN)));
            r.headers_mut()
                .insert("content-length", DOWN.to_string().parse().unwrap());
            return r;
        }
        respond(200, seen)
    })
    .await;
    let v = start_in(tls_dir_with_cert().await, &routed_pool(&up)).await;
    let mut client = h2_client_small_window(v.tls).await;
    // Long enough for a Huffman-coded value and more than one frame's worth of reads.
    let long = "v".repeat(3000);
    let req = |method: http::Method, path: &str, body: Bytes| {
        Request::builder()
            .method(method)
            .uri(format!("https://grpc.test{path}"))
            .header("x-long", long.as_str())
            .body(http_body_util::Full::new(body))
            .unwrap()
    };
    for round in 0..3 {
        // Small: answered, then the connection has no stream and waits.
        let resp = client
            .send_request(req(http::Method::GET, "/small", Bytes::new()))
            .await
            .unwrap();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, "/small grpc.test 3000", "round {round}");
        // Not timing logic: the server parks the idle connection right after its answer is
        // flushed, and this gives it the moment to do so before the next request. The
        // asserts hold either way.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let resp = client
            .send_request(req(http::Method::GET, "/big", Bytes::new()))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .expect("download stalled")
            .unwrap()
            .to_bytes();
        assert!(got == patterned(DOWN), "round {round}: download corrupted");
        tokio::time::sleep(Duration::from_millis(50)).await;

        let resp = client
            .send_request(req(http::Method::POST, "/up", patterned(UP)))
            .await
            .unwrap();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            text,
            format!("/up grpc.test 3000 {UP} true"),
            "round {round}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    v.veer.shutdown().await;
}
