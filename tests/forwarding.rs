//! What veer forwards and how (issue 2): hop-by-hop and forwarding headers, bodies and their
//! framing (Expect: 100-continue, Content-Length with Transfer-Encoding, HEAD), and upgrades
//! (WebSocket tunnels). Real upstreams and a real veer over sockets.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Headers.

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let up = echo_head_upstream().await;
    let veer = start_veer(&format!(
        "[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        up.addr
    ))
    .await;
    let req = "GET /echo?q=1 HTTP/1.1\r\n\
               Host: shop.example.com:8080\r\n\
               Connection: close, X-Secret\r\n\
               X-Secret: s3cret\r\n\
               Keep-Alive: timeout=5\r\n\
               TE: trailers, deflate\r\n\
               Trailer: x-checksum\r\n\
               Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
               Proxy-Connection: keep-alive\r\n\
               Upgrade: h2c\r\n\
               X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\
               X-Forwarded-Proto: https\r\n\
               X-Keep: yes\r\n\
               \r\n";
    let raw_resp = raw(veer.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw_resp), 200, "{raw_resp}");
    let body = raw_resp.split_once("\r\n\r\n").unwrap().1;
    assert!(body.starts_with("GET /echo?q=1 HTTP/1.1"), "{body}");
    let seen = echoed(body);
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            echoed_get(&seen, gone).is_empty(),
            "{gone} reached the upstream: {body}"
        );
    }
    assert_eq!(
        echoed_get(&seen, "host"),
        ["shop.example.com:8080"],
        "Host kept"
    );
    assert_eq!(echoed_get(&seen, "x-keep"), ["yes"]);
    assert_eq!(
        echoed_get(&seen, "x-forwarded-for"),
        ["10.0.0.1, 10.0.0.2, 127.0.0.1"]
    );
    assert_eq!(
        echoed_get(&seen, "x-forwarded-proto"),
        ["http"],
        "set, not trusted from the client"
    );
    assert_eq!(
        echoed_get(&seen, "x-forwarded-host"),
        ["shop.example.com:8080"]
    );

    // Response side, through a keep-alive client.
    let got = get(&veer.url("/")).await;
    assert_eq!(got.status, 200);
    for gone in [
        "x-resp-hop",
        "keep-alive",
        "proxy-agent",
        "trailer",
        "upgrade",
    ] {
        assert!(
            got.headers.get(gone).is_none(),
            "{gone} reached the client: {:?}",
            got.headers
        );
    }
    assert!(
        got.headers
            .get_all("connection")
            .iter()
            .all(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive")),
        "upstream's Connection leaked: {:?}",
        got.headers
    );
    assert_eq!(got.header("x-resp-keep"), Some("1"));
    // Without a prior X-Forwarded-For, it is just the client.
    let seen = echoed(&got.body);
    assert_eq!(echoed_get(&seen, "x-forwarded-for"), ["127.0.0.1"]);

    // A request with a body goes another way upstream (not the body-less fast path): the
    // same forwarding headers, each once.
    let req = "POST /echo HTTP/1.1\r\n\
               Host: shop.example.com\r\n\
               X-Forwarded-For: 10.0.0.9\r\n\
               X-Forwarded-Host: spoofed.example\r\n\
               Content-Length: 5\r\n\
               Connection: close\r\n\
               \r\nhello";
    let raw_resp = raw(veer.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw_resp), 200, "{raw_resp}");
    let seen = echoed(raw_resp.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(
        echoed_get(&seen, "x-forwarded-for"),
        ["10.0.0.9, 127.0.0.1"]
    );
    assert_eq!(echoed_get(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed_get(&seen, "x-forwarded-host"), ["shop.example.com"]);
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Bodies and framing.

#[tokio::test]
async fn expect_100_continue_does_not_stall() {
    let up = counting_upstream().await;
    let veer = start_veer(&format!(
        "[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        up.addr
    ))
    .await;
    let mut s = TcpStream::connect(veer.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // A client waits for 100 Continue before sending the body; veer must send it promptly.
    let (interim, _) = tokio::time::timeout(Duration::from_secs(3), read_head_body(&mut s))
        .await
        .expect("no 100 Continue: the upload stalls")
        .expect("connection closed");
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "100 Continue took {:?}",
        started.elapsed()
    );
    s.write_all(b"hello world").await.unwrap();
    let (head, body) = tokio::time::timeout(Duration::from_secs(5), read_head_body(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, b"11");

    // The hyper client's own Expect handling works too (it sends the body at once).
    let req = Request::post(veer.url("/upload"))
        .header("expect", "100-continue")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    let got = send(req).await;
    assert_eq!((got.status, got.body.as_str()), (200, "10"));
    veer.shutdown().await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_forwarded_with_both() {
    let backend = raw_backend(|_| {
        Answer::ReplyAndClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
        )
    })
    .await;
    let veer = start_veer(&one_pool(backend.addr, "")).await;
    let smuggles: [&[u8]; 2] = [
        b"POST /a HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    let mut forwarded = 0;
    for req in smuggles {
        let resp = raw(veer.addr, req, Duration::from_secs(5)).await;
        let status = status_of(&resp);
        assert!(status == 200 || status == 400, "{resp}");
        forwarded += usize::from(status == 200);
    }
    let seen = backend.seen();
    assert_eq!(
        seen.len(),
        forwarded,
        "a request answered 400 still reached the upstream"
    );
    for h in &seen {
        let te = h.header("transfer-encoding");
        let cl = h.header("content-length");
        assert!(
            te.is_empty() || cl.is_empty(),
            "forwarded with both framings:\n{}",
            h.head
        );
        // What arrives is the chunked body, intact.
        if !te.is_empty() {
            let body = String::from_utf8_lossy(&h.body);
            assert!(body.contains("hello"), "{}{body}", h.head);
        }
    }
    // Not even a request with a TE the proxy cannot frame (no final chunked) gets through.
    let before = backend.seen().len();
    let resp = raw(
        veer.addr,
        b"POST /c HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert_eq!(
        backend.seen().len(),
        before,
        "a request with bad framing reached the upstream"
    );
    veer.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Upgrades.

/// A WebSocket echo server on a raw listener.
async fn ws_echo_upstream() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = ws_echo_upstream().await;
    let veer = start_veer(&format!(
        "[pools.ws]\nbackends = [\"{up}\"]\n[[routes]]\nname = \"ws\"\nsplit = {{ ws = 1 }}\n",
    ))
    .await;
    let tcp = TcpStream::connect(veer.addr).await.unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(format!("ws://{}/chat", veer.addr), tcp),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello through veer")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.into_text().unwrap(), "hello through veer");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.into_data(), big);
    ws.close(None).await.unwrap();
    drop(ws);
    veer.shutdown().await;
}

#[tokio::test]
async fn websocket_tunnel_counts_as_a_connection_and_is_cut_by_a_drain() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = ws_echo_upstream().await;
    let veer = start_veer(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 1\n\
         [pools.ws]\nbackends = [\"{up}\"]\n[[routes]]\nname = \"ws\"\nsplit = {{ ws = 1 }}\n",
    ))
    .await;
    let tcp = TcpStream::connect(veer.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/chat", veer.addr), tcp)
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap(),
        "one"
    );
    // The tunnel holds the only connection slot.
    let mut other = TcpStream::connect(veer.addr).await.unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(400), read_head_body(&mut other)).await;
    assert!(
        waited.is_err(),
        "served beside an open tunnel with max_connections = 1"
    );
    // Draining the backend cuts the tunnel at the drain timeout.
    let started = Instant::now();
    veer.rt()
        .registry
        .set_draining("ws", up, true, Duration::from_millis(300));
    let end = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "tunnel still open after the drain timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // The slot is free again: the waiting connection is served (503: its only backend drains).
    let (head, _) = tokio::time::timeout(Duration::from_secs(3), read_head_body(&mut other))
        .await
        .expect("slot not released when the tunnel ended")
        .unwrap();
    assert_eq!(status_of(&head), 503, "{head}");
    veer.shutdown().await;
}

#[tokio::test]
async fn head_requests_keep_the_upstream_length() {
    let up = upstream("0123456789").await;
    let veer = start_veer(&one_pool(up.addr, "")).await;
    let resp = raw(
        veer.addr,
        b"HEAD / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let lower = resp.to_ascii_lowercase();
    let (head, body) = lower.split_once("\r\n\r\n").unwrap();
    assert_eq!(header_value(head, "content-length"), Some("10"), "{resp}");
    assert!(body.is_empty(), "a HEAD answer has no body: {body:?}");
    veer.shutdown().await;
}

/// An idle keep-alive connection gives its request context (with the client's formatted
/// address) back to a per-worker pool, and the next request takes one (issue 15): requests
/// from two client addresses, interleaved on connections that go idle between them, are each
/// forwarded with their own `X-Forwarded-For`.
#[tokio::test]
async fn a_reused_request_context_forwards_each_clients_own_address() {
    let up = echo_head_upstream().await;
    let veer = start_veer(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        up.addr
    ))
    .await;
    let connect = |ip: &'static str| async move {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        s.connect(veer.addr).await.unwrap()
    };
    let mut a = connect("127.0.0.1").await;
    let mut b = connect("127.0.0.2").await;
    for round in 0..4 {
        for (s, ip) in [(&mut a, "127.0.0.1"), (&mut b, "127.0.0.2")] {
            s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let body = String::from_utf8_lossy(&read_answer(s).await.2).into_owned();
            let seen = echoed(&body);
            assert_eq!(echoed_get(&seen, "x-forwarded-for"), [ip], "round {round}");
        }
    }
    veer.shutdown().await;
}
