use crate::upstream::testing::{backend, client, exchange, get, request, until, Reply};
use http_body_util::BodyExt;

#[tokio::test]
async fn a_body_that_came_with_the_head_frees_the_connection_at_once() {
    let b = backend(|_| Reply::ok("hello")).await;
    let c = client(b.addr);
    let (resp, _) = c.send(get(&c)).await.unwrap();
    // Back in the pool before the body is even read.
    assert_eq!(c.conns.idle_count(), 1);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    for _ in 0..3 {
        assert_eq!(exchange(&c, get(&c)).await.1, "hello");
    }
    assert_eq!(b.accepted(), 1);
}

#[tokio::test]
async fn the_request_head_carries_method_path_and_headers() {
    let b = backend(|head| {
        let echo = head.replace("\r\n", "|");
        Reply::ok(&echo)
    })
    .await;
    let c = client(b.addr);
    let req = http::Request::get(format!("http://{}/a/b?x=1", c.authority))
        .header("x-test", "yes")
        .body(crate::upstream::http_client::UpBody::empty())
        .unwrap();
    let (_, echoed, _) = exchange(&c, req).await;
    assert!(echoed.starts_with("GET /a/b?x=1 HTTP/1.1|"), "{echoed}");
    assert!(echoed.contains("x-test: yes"), "{echoed}");
    assert!(
        echoed.contains(&format!("host: {}", c.authority)),
        "{echoed}"
    );
    // A body-less POST says its length.
    let (_, echoed, _) = exchange(&c, request(&c, "POST")).await;
    assert!(echoed.contains("content-length: 0"), "{echoed}");
}

#[tokio::test]
async fn chunked_bodies_and_trailers_are_decoded_and_the_connection_reused() {
    let b = backend(|_| {
        Reply::raw(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
        )
    })
    .await;
    let c = client(b.addr);
    for _ in 0..3 {
        let (resp, body, trailers) = exchange(&c, get(&c)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(body, "hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "42");
    }
    assert_eq!(b.accepted(), 1);
}

#[tokio::test]
async fn a_chunked_body_arriving_in_pieces_is_streamed() {
    let b = backend(|_| {
        let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for i in 0..200 {
            let piece = format!("line {i}\n");
            r.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
        }
        r.extend_from_slice(b"0\r\n\r\n");
        Reply::raw(r)
    })
    .await;
    let c = client(b.addr);
    let (_, body, trailers) = exchange(&c, get(&c)).await;
    assert_eq!(body.lines().count(), 200);
    assert!(body.ends_with("line 199\n"));
    assert!(trailers.is_none());
    assert_eq!(exchange(&c, get(&c)).await.1.lines().count(), 200);
    assert_eq!(b.accepted(), 1);
}

#[tokio::test]
async fn a_large_body_is_streamed_and_then_the_connection_reused() {
    let big = "x".repeat(300_000);
    let b = backend(move |_| Reply::ok(&big)).await;
    let c = client(b.addr);
    for _ in 0..2 {
        assert_eq!(exchange(&c, get(&c)).await.1.len(), 300_000);
    }
    assert_eq!(b.accepted(), 1);
}

#[tokio::test]
async fn an_abandoned_body_closes_its_connection() {
    let big = "x".repeat(300_000);
    let b = backend(move |_| Reply::ok(&big)).await;
    let c = client(b.addr);
    let (resp, _) = c.send(get(&c)).await.unwrap();
    drop(resp);
    until("the abandoned connection to close", || b.closed() == 1).await;
    assert_eq!(exchange(&c, get(&c)).await.1.len(), 300_000);
    assert_eq!(b.accepted(), 2);
}

#[tokio::test]
async fn a_body_without_length_is_read_to_the_close_and_not_reused() {
    let b = backend(|_| Reply::raw("HTTP/1.1 200 OK\r\n\r\nuntil the end").then_close()).await;
    let c = client(b.addr);
    for _ in 0..2 {
        assert_eq!(exchange(&c, get(&c)).await.1, "until the end");
    }
    assert_eq!(b.accepted(), 2);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_the_length_says() {
    let b = backend(|head| {
        if head.starts_with("HEAD") {
            Reply::raw("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        } else if head.starts_with("DELETE") {
            Reply::raw("HTTP/1.1 204 No Content\r\n\r\n")
        } else {
            Reply::raw("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n")
        }
    })
    .await;
    let c = client(b.addr);
    for m in ["HEAD", "DELETE", "GET", "HEAD"] {
        let (resp, body, _) = exchange(&c, request(&c, m)).await;
        assert_eq!(body, "", "{m}");
        if m == "HEAD" {
            assert_eq!(resp.headers()["content-length"], "5");
        }
    }
    assert_eq!(b.accepted(), 1);
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let b = backend(|_| {
        Reply::raw(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
             HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone",
        )
    })
    .await;
    let c = client(b.addr);
    let (resp, body, _) = exchange(&c, get(&c)).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(body, "done");
}

#[tokio::test]
async fn connection_close_and_http_1_0_answers_are_not_reused() {
    let b = backend(|head| {
        if head.contains("/old") {
            Reply::raw("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
        } else {
            Reply::raw("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        }
    })
    .await;
    let c = client(b.addr);
    assert_eq!(exchange(&c, get(&c)).await.1, "ok");
    let old = http::Request::get(format!("http://{}/old", c.authority))
        .body(crate::upstream::http_client::UpBody::empty())
        .unwrap();
    assert_eq!(exchange(&c, old).await.1, "ok");
    assert_eq!(c.conns.idle_count(), 0);
    assert_eq!(exchange(&c, get(&c)).await.1, "ok");
    assert_eq!(b.accepted(), 3);
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_replaced_without_an_error() {
    let b = backend(|_| Reply::ok("ok").then_close()).await;
    let c = client(b.addr);
    assert_eq!(exchange(&c, get(&c)).await.1, "ok");
    until("the backend to close", || b.closed() == 1).await;
    for _ in 0..3 {
        assert_eq!(exchange(&c, get(&c)).await.1, "ok");
    }
    assert_eq!(b.accepted(), 4);
}

/// A backend that answers the first request, then closes the second without a word.
async fn closes_second_request() -> crate::upstream::testing::Backend {
    let n = std::sync::atomic::AtomicUsize::new(0);
    backend(move |_| {
        if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            Reply::raw("").then_close()
        } else {
            Reply::ok("ok")
        }
    })
    .await
}

#[tokio::test]
async fn a_get_on_a_connection_closed_without_answer_is_sent_again() {
    // The backend answers the first request, then closes the next one without a word
    // (as a keep-alive timeout racing a request does).
    let b = closes_second_request().await;
    let c = client(b.addr);
    assert_eq!(exchange(&c, get(&c)).await.1, "ok");
    assert_eq!(exchange(&c, get(&c)).await.1, "ok");
    assert_eq!(b.accepted(), 2);
    // A POST is never sent twice: the same close is an error.
    let b = closes_second_request().await;
    let c = client(b.addr);
    assert_eq!(exchange(&c, request(&c, "POST")).await.1, "ok");
    assert!(c.send(request(&c, "POST")).await.is_err());
}

#[tokio::test]
async fn malformed_answers_are_errors_not_panics() {
    for bad in [
        "garbage\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
    ] {
        let b = backend(move |_| Reply::raw(bad).then_close()).await;
        let c = client(b.addr);
        match c.send(get(&c)).await {
            Err(_) => {}
            Ok((resp, _)) => assert!(
                resp.into_body().collect().await.is_err(),
                "accepted {bad:?}"
            ),
        }
    }
}

#[tokio::test]
async fn connection_headers_about_this_hop_are_dropped_others_left_for_stripping() {
    let b = backend(|head| {
        if head.contains("/named") {
            Reply::raw(
                "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nx-secret: 1\r\n\
                 content-length: 2\r\n\r\nok",
            )
        } else {
            Reply::raw(
                "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\
                 content-length: 2\r\n\r\nok",
            )
        }
    })
    .await;
    let c = client(b.addr);
    let (resp, _, _) = exchange(&c, get(&c)).await;
    assert!(resp.headers().get("connection").is_none());
    assert!(resp.headers().get("keep-alive").is_none());
    assert_eq!(resp.headers()["content-length"], "2");
    let named = http::Request::get(format!("http://{}/named", c.authority))
        .body(crate::upstream::http_client::UpBody::empty())
        .unwrap();
    let (resp, _, _) = exchange(&c, named).await;
    // Kept so the proxy's hop-by-hop pass removes what it names.
    assert_eq!(resp.headers()["connection"], "keep-alive, x-secret");
    assert_eq!(b.accepted(), 1);
}
