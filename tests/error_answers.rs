//! The errors veer answers itself, each provoked for real (issue 2): 400 for a malformed
//! request, 431 for an oversized head, 502 for a broken or unreachable upstream, 503 when no
//! backend is available, 504 after the request timeout.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::*;

// ---------------------------------------------------------------------------------------------
// Errors veer answers itself, each provoked for real.

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_the_upstream() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let bad: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Bad\x01Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Bad: a\x00b\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: app\r\n\r\n",
        // HTTP/1.1 without Host, and with two.
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: evil.example/x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@app\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app app\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for req in bad {
        let started = Instant::now();
        let resp = raw(veer.addr, req, Duration::from_secs(3)).await;
        assert_eq!(
            status_of(&resp),
            400,
            "{:?} got {resp:?}",
            String::from_utf8_lossy(req)
        );
        // `raw` reads until the peer closes: the connection is not kept after a 400.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "kept open after 400: {:?}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(up.hits(), 0, "a malformed request reached the upstream");
    // And a good one on the same proxy does reach it.
    assert_eq!(get(&veer.url("/")).await.status, 200);
    assert_eq!(up.hits(), 1);
    veer.shutdown().await;
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let up = upstream("app").await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_header_bytes = 16384\n",
    ))
    .await;
    let big = "a".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nHost: app\r\nX-Big: {big}\r\n\r\n");
    let resp = raw(veer.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&resp), 431, "{resp:.200}");
    // Many small headers adding up count the same.
    let many: String = (0..1000)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(20)))
        .collect();
    let req = format!("GET / HTTP/1.1\r\nHost: app\r\n{many}\r\n");
    let resp = raw(veer.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&resp), 431, "{resp:.200}");
    assert_eq!(up.hits(), 0);
    // A head under the limit passes.
    let ok = get_with(&veer.url("/"), &[("x-medium", &"c".repeat(8000))]).await;
    assert_eq!(ok.status, 200);
    veer.shutdown().await;
}

#[tokio::test]
async fn upstream_that_closes_without_answering_gives_502() {
    let backend = raw_backend(|_| Answer::Close).await;
    let veer = start_veer(&one_pool(backend.addr, "")).await;
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert!(!backend.seen().is_empty(), "the upstream was reached");
    let post = send(
        Request::post(veer.url("/"))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 502);
    veer.shutdown().await;
}

#[tokio::test]
async fn upstream_answering_garbage_gives_502() {
    let garbage = raw_backend(|_| {
        Answer::ReplyAndClose(b"SSH-2.0-OpenSSH_9.0\r\nnot http at all\r\n\r\n".to_vec())
    })
    .await;
    let veer = start_veer(&one_pool(garbage.addr, "")).await;
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 502, "{}", got.body);
    let two_lengths = raw_backend(|_| {
        Answer::ReplyAndClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\nabc".to_vec(),
        )
    })
    .await;
    let veer2 = start_veer(&one_pool(two_lengths.addr, "")).await;
    let got = get(&veer2.url("/")).await;
    assert_eq!(got.status, 502, "{}", got.body);
    veer.shutdown().await;
    veer2.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_gives_502() {
    let dead = dead_addr().await;
    let veer = start_veer(&one_pool(dead, "")).await;
    let started = Instant::now();
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    veer.shutdown().await;
}

#[tokio::test]
async fn no_available_backend_gives_503_with_retry_after_at_once() {
    let (blue, green, veer) = blue_green_veer("{ blue = 90, green = 10 }", "").await;
    let reg = &veer.rt().registry;
    // Fallback: with blue drained, its share goes to green.
    assert!(reg.set_draining("blue", blue.addr, true, Duration::from_secs(1)));
    let counts = count_bodies(&veer.url("/"), 100, &[]).await;
    assert_eq!(counts.get("green"), Some(&100), "{counts:?}");
    // Nothing left: 503 with Retry-After, without waiting.
    assert!(reg.set_draining("green", green.addr, true, Duration::from_secs(1)));
    let started = Instant::now();
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 503, "{}", got.body);
    assert!(got.header("retry-after").is_some(), "{:?}", got.headers);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // Undrained: served again.
    assert!(reg.set_draining("green", green.addr, false, Duration::from_secs(1)));
    assert_eq!(get(&veer.url("/")).await.body, "green");
    veer.shutdown().await;
}

#[tokio::test]
async fn no_fallback_means_503_for_the_chosen_pool() {
    let (_blue, green, veer) = blue_green_veer(
        "{ blue = 50, green = 50 }",
        "fallback = false\nsticky = { header = \"x-user\" }",
    )
    .await;
    veer.rt()
        .registry
        .set_draining("green", green.addr, true, Duration::from_secs(1));
    let mut codes = HashMap::<u16, usize>::new();
    for i in 0..100 {
        let got = get_with(&veer.url("/"), &[("x-user", &format!("u{i}"))]).await;
        if got.status == 503 {
            assert!(got.header("retry-after").is_some());
        } else {
            assert_eq!(got.body, "blue");
        }
        *codes.entry(got.status).or_default() += 1;
    }
    assert!(codes.get(&503).copied().unwrap_or(0) > 20, "{codes:?}");
    assert!(codes.get(&200).copied().unwrap_or(0) > 20, "{codes:?}");
    veer.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_gives_504_after_request_timeout() {
    let up = upstream_with(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        respond(200, "late")
    })
    .await;
    let veer = start_veer(&one_pool(
        up.addr,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nrequest_timeout = \"300ms\"\n",
    ))
    .await;
    let started = Instant::now();
    let got = get(&veer.url("/")).await;
    let took = started.elapsed();
    assert_eq!(got.status, 504, "{}", got.body);
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "{took:?}"
    );
    veer.shutdown().await;
}
