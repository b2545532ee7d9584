//! Timeouts and limits on real sockets (issue 2): slow and idle clients, the connection limit,
//! response bodies that stall, slow and stalled uploads, and a drain cutting a stalled body.

mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Slow and idle clients, connection limits.

#[tokio::test]
async fn slowloris_is_dropped_after_header_read_timeout() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nheader_read_timeout = \"500ms\"\nidle_timeout = \"30s\"\n",
    ))
    .await;
    // Trickles a header line every 100 ms, never finishing the head.
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = loop {
        if started.elapsed() > Duration::from_secs(5) {
            break false;
        }
        if s.write_all(b"X-A: b\r\n").await.is_err() {
            break true;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    };
    let took = started.elapsed();
    assert!(closed, "slowloris still connected after {took:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.is_empty() || status_of(&text) == 408, "{text}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2000),
        "{took:?}"
    );

    // A client that connects and says nothing is dropped on the same clock.
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("silent client kept");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    assert_eq!(up.hits(), 0);
    veer.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nidle_timeout = \"400ms\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head_body(&mut s).await.unwrap();
    assert_eq!(status_of(&head), 200);
    let took = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("idle connection kept");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn keep_alive_outlives_header_read_timeout_while_idle() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nheader_read_timeout = \"200ms\"\nidle_timeout = \"5s\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_head_body(&mut s)
            .await
            .expect("keep-alive connection closed early");
        assert_eq!(status_of(&head), 200);
        assert_eq!(body, b"app");
        // Idle between requests for longer than header_read_timeout, within idle_timeout.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    veer.shutdown().await;
}

#[tokio::test]
async fn max_connections_makes_extra_connections_wait() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 2\n",
    ))
    .await;
    let req = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n";
    let mut c1 = TcpStream::connect(veer.addr).await.unwrap();
    let mut c2 = TcpStream::connect(veer.addr).await.unwrap();
    for c in [&mut c1, &mut c2] {
        c.write_all(req).await.unwrap();
        assert_eq!(status_of(&read_head_body(c).await.unwrap().0), 200);
    }
    // The third connects (the kernel backlog takes it) but is not served.
    let mut c3 = TcpStream::connect(veer.addr).await.unwrap();
    c3.write_all(req).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), read_head_body(&mut c3)).await;
    assert!(
        waited.is_err(),
        "third connection served over max_connections: {waited:?}"
    );
    // One closes: the third is served.
    drop(c1);
    let (head, _) = tokio::time::timeout(Duration::from_secs(3), read_head_body(&mut c3))
        .await
        .expect("third connection still waiting after one closed")
        .unwrap();
    assert_eq!(status_of(&head), 200);
    // The second still works.
    c2.write_all(req).await.unwrap();
    assert_eq!(status_of(&read_head_body(&mut c2).await.unwrap().0), 200);
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Response and upload bodies over time.

async fn trickling_upstream(gap: Duration, then: usize, stall: bool) -> Upstream {
    upstream_with(move |_req| async move {
        use futures_util::StreamExt;
        let first = futures_util::stream::once(async {
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"first")))
        });
        let rest = futures_util::stream::iter(0..then).then(move |_| async move {
            tokio::time::sleep(gap).await;
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b".")))
        });
        let s = first.chain(rest);
        let s: std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send + Sync>> = if stall {
            Box::pin(s.chain(futures_util::stream::pending()))
        } else {
            Box::pin(s)
        };
        http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(s)))
    })
    .await
}

#[tokio::test]
async fn a_response_body_that_goes_silent_is_cut_after_body_timeout() {
    let up = trickling_upstream(Duration::from_millis(50), 2, true).await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nbody_timeout = \"300ms\"\n",
    ))
    .await;
    let resp = get_streaming(&veer.url("/events")).await;
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    // The data that came is delivered, then the body ends in an error, not a clean end.
    let got = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
    assert!(got.is_ok(), "silent body never cut");
    assert!(got.unwrap().is_err(), "a cut body must not look complete");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let backend = veer.rt().registry.get("app", up.addr).unwrap();
    eventually("lease released", Duration::from_secs(2), || {
        backend.in_flight() == 0
    })
    .await;
    veer.shutdown().await;
}

#[tokio::test]
async fn a_slow_but_steady_response_body_is_not_cut() {
    // Eight gaps of 100 ms: 800 ms in all, each gap well inside a 400 ms body_timeout.
    let up = trickling_upstream(Duration::from_millis(100), 8, false).await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nbody_timeout = \"400ms\"\n",
    ))
    .await;
    let got = get(&veer.url("/slow")).await;
    assert_eq!((got.status, got.body.as_str()), (200, "first........"));
    veer.shutdown().await;
}

#[tokio::test]
async fn a_drain_timeout_cuts_a_stalled_response_body() {
    use futures_util::StreamExt;
    let up = upstream_with(|_req| async {
        // One chunk, then silence: a long poll or an event stream.
        let s = futures_util::stream::once(async {
            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(b"first")))
        })
        .chain(futures_util::stream::pending());
        http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(s)))
    })
    .await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let resp = get_streaming(&veer.url("/events")).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    let backend = veer.rt().registry.get("app", up.addr).unwrap();
    assert_eq!(backend.in_flight(), 1);
    let started = Instant::now();
    veer.rt()
        .registry
        .set_draining("app", up.addr, true, Duration::from_millis(300));
    let next = tokio::time::timeout(Duration::from_secs(3), body.frame()).await;
    assert!(next.is_ok(), "stalled body not cut by the drain timeout");
    assert!(!matches!(next, Ok(Some(Ok(_)))), "{next:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    eventually("lease released", Duration::from_secs(2), || {
        backend.in_flight() == 0
    })
    .await;
    veer.shutdown().await;
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_by_request_timeout() {
    // request_timeout runs until the response headers once the request is sent; an upload
    // still arriving is not a slow upstream.
    let up = counting_upstream().await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nrequest_timeout = \"400ms\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        s.write_all(b"x").await.unwrap();
    }
    let (head, body) = tokio::time::timeout(Duration::from_secs(5), read_head_body(&mut s))
        .await
        .unwrap()
        .expect("a response");
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, b"10");
    veer.shutdown().await;
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_does_not_count_against_the_backend() {
    let up = counting_upstream().await;
    // A body stalled on the client answers to request_body_timeout (request_timeout counts
    // only once the body is sent).
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nrequest_timeout = \"200ms\"\nrequest_body_timeout = \"200ms\"\n",
    ))
    .await;
    let backend = veer.rt().registry.get("app", up.addr).unwrap();
    // As many stalled uploads as the breaker's consecutive_failures (5).
    for _ in 0..5 {
        let mut s = TcpStream::connect(veer.addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\nhalf")
            .await
            .unwrap();
        let started = Instant::now();
        let (head, _) = tokio::time::timeout(Duration::from_secs(5), read_head_body(&mut s))
            .await
            .expect("a stalled upload is never answered")
            .expect("closed without an answer");
        assert_eq!(status_of(&head), 408, "{head}");
        assert!(
            started.elapsed() >= Duration::from_millis(180),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        backend.breaker.state().as_str(),
        "closed",
        "slow clients tripped the backend's breaker"
    );
    assert_eq!(get(&veer.url("/")).await.status, 200);
    veer.shutdown().await;
}
