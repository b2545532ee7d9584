//! The `veer` binary as a process: graceful shutdown on SIGTERM, and memory that stays flat
//! while huge bodies stream through it (issue 2).

mod support;

use bytes::Bytes;
use futures_util::stream;
use http::Request;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Write a config file (listeners on port 0) into a temp dir and start the binary on it.
async fn veer_process(config: &str) -> (VeerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veer.toml");
    std::fs::write(&path, with_listeners(config)).unwrap();
    (spawn_veer(&path).await, dir)
}

fn one_pool(addr: SocketAddr, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{server_extra}\n\
         [pools.app]\nbackends = [\"{addr}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n"
    )
}

/// An HTTP/1.1 connection to `addr` with a boxed request body type.
async fn h1_conn(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<BoxBody<Bytes, Infallible>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn wait_exit(p: &mut VeerProcess, limit: Duration) -> std::process::ExitStatus {
    tokio::time::timeout(limit, p.child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "veer did not exit within {limit:?}; log:\n{}",
                p.stderr.lock().unwrap()
            )
        })
        .unwrap()
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let up = upstream_with(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        respond(200, "done")
    })
    .await;
    let (mut veer, _dir) = veer_process(&one_pool(up.addr, "")).await;
    let admin = format!("http://{}/readyz", veer.admin);
    assert_eq!(get(&admin).await.status, 200);

    // An idle keep-alive client that has already been served.
    let mut idle = TcpStream::connect(veer.addr).await.unwrap();
    idle.write_all(b"GET /fast HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A slow request in flight over HTTP/1.1 keep-alive, and another over h2c.
    let mut h1 = h1_conn(veer.addr).await;
    let req = Request::get("/slow")
        .header("host", "app")
        .body(Empty::new().boxed())
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let resp = h1.send_request(req).await.unwrap();
        let close = resp
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_string());
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, close, body)
    });
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let url = format!("http://{}/slow", veer.addr);
    let h2_in_flight = tokio::spawn(async move {
        let resp = h2
            .request(Request::get(url).body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    });
    eventually(
        "both slow requests reach the upstream",
        Duration::from_secs(5),
        || up.hits() >= 3,
    )
    .await;

    let signalled = Instant::now();
    veer.signal("TERM");
    // Not ready at once, while the requests are still in flight.
    loop {
        let got = get(&admin).await;
        if got.status == 503 {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "/readyz still {}",
            got.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before /readyz turned 503"
    );
    // The idle keep-alive connection is closed rather than left to linger.
    let closed = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle keep-alive connection kept: {closed:?}"
    );
    // No new connections are served.
    let refused = async {
        loop {
            match TcpStream::connect(veer.addr).await {
                Err(_) => return,
                Ok(mut s) => {
                    let _ = s
                        .write_all(b"GET /fast HTTP/1.1\r\nHost: app\r\n\r\n")
                        .await;
                    let mut b = [0u8; 64];
                    if matches!(
                        tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await,
                        Ok(Ok(0)) | Ok(Err(_))
                    ) {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), refused)
        .await
        .expect("new connections still served");

    let (status, close, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "done");
    assert_eq!(
        close.as_deref(),
        Some("close"),
        "keep-alive client not told to close"
    );
    let (status, body) = h2_in_flight.await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"done"[..]));

    let code = wait_exit(&mut veer, Duration::from_secs(5)).await;
    assert_eq!(
        code.code(),
        Some(0),
        "log:\n{}",
        veer.stderr.lock().unwrap()
    );
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}

#[tokio::test]
async fn sigterm_cuts_requests_at_drain_timeout() {
    let up = upstream_with(|_req| async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        respond(200, "too late")
    })
    .await;
    let (mut veer, _dir) = veer_process(&one_pool(up.addr, "drain_timeout = \"500ms\"")).await;
    let mut h1 = h1_conn(veer.addr).await;
    let req = Request::get("/")
        .header("host", "app")
        .body(Empty::new().boxed())
        .unwrap();
    let in_flight = tokio::spawn(async move { h1.send_request(req).await.map(|r| r.status()) });
    eventually("request in flight", Duration::from_secs(5), || {
        up.hits() >= 1
    })
    .await;
    let signalled = Instant::now();
    veer.signal("TERM");
    let code = wait_exit(&mut veer, Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    assert_eq!(code.code(), Some(0));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The client is not left hanging: it gets an error (or a gateway error), promptly.
    let r = tokio::time::timeout(Duration::from_secs(2), in_flight)
        .await
        .expect("client left hanging");
    assert!(!matches!(r, Ok(Ok(s)) if s.is_success()), "{r:?}");
}

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn huge_bodies_stream_both_ways_with_flat_memory() {
    const UP: u64 = 1024 * MIB;
    const DOWN: u64 = 512 * MIB;
    // The upstream counts what it receives, and serves a generated download.
    let up = upstream_with(|req| async move {
        if req.uri().path() == "/download" {
            let chunk = Bytes::from(vec![b'd'; 256 * 1024]);
            let n = DOWN / chunk.len() as u64;
            let s = stream::iter(
                (0..n).map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone()))),
            );
            let mut r = http::Response::new(BodyExt::boxed(StreamBody::new(s)));
            r.headers_mut().insert("content-length", DOWN.into());
            return r;
        }
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return respond(500, format!("body error after {n} bytes: {e}")),
            }
        }
        respond(200, n.to_string())
    })
    .await;
    let (mut veer, _dir) = veer_process(&one_pool(up.addr, "")).await;
    let pid = veer.pid();
    let baseline = peak_rss_kib(pid);

    // 1 GiB upload from a generator: the same 256 KiB buffer, sent 4096 times.
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let n = UP / chunk.len() as u64;
    let s = stream::iter((0..n).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
    let mut h1 = h1_conn(veer.addr).await;
    let req = Request::post("/upload")
        .header("host", "app")
        .header("content-length", UP)
        .body(BodyExt::boxed(StreamBody::new(s)))
        .unwrap();
    let started = Instant::now();
    let resp = h1.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let up_took = started.elapsed();
    assert_eq!(
        body,
        UP.to_string(),
        "the upstream counted a different size"
    );

    // 512 MiB download, counted as it arrives.
    let started = Instant::now();
    let req = Request::get("/download")
        .header("host", "app")
        .body(Empty::new().boxed())
        .unwrap();
    let resp = h1.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got: u64 = 0;
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    let down_took = started.elapsed();
    assert_eq!(got, DOWN);

    let peak = peak_rss_kib(pid);
    eprintln!(
        "upload 1 GiB in {up_took:.2?} ({:.0} MiB/s), download 512 MiB in {down_took:.2?} ({:.0} MiB/s); \
         veer VmHWM {} KiB (baseline {} KiB)",
        UP as f64 / MIB as f64 / up_took.as_secs_f64(),
        DOWN as f64 / MIB as f64 / down_took.as_secs_f64(),
        peak,
        baseline,
    );
    assert!(peak > 0, "could not read VmHWM");
    assert!(
        peak < 64 * 1024,
        "veer's peak RSS {peak} KiB is not under 64 MiB"
    );
    veer.signal("TERM");
    assert_eq!(
        wait_exit(&mut veer, Duration::from_secs(5)).await.code(),
        Some(0)
    );
}
