//! Memory per idle TLS HTTP/2 connection (issue 15): a veer process started here holds 200
//! idle h2 connections over TLS, each after one request, and its resident set
//! (`/proc/PID/status` VmRSS) may grow only by a bound per connection. The bound is generous
//! enough to be stable (a debug build, a shared machine) and far below what the h2 crate's
//! fixed buffers cost before veer patched them (vendor/h2/VEER.md): 34 KiB per connection in
//! benches/memory.sh, of which about 28 KiB were the 16 KiB write buffer, the 8 KiB read
//! buffer and the 4 KiB HPACK scratch. The figures beside HAProxy are benches/memory.sh's.

mod support;

use bytes::Bytes;
use http::Request;
use std::net::SocketAddr;
use support::*;

const CONNS: usize = 200;
/// KiB of RSS one idle TLS h2 connection may cost. Over TLS with HTTP/1.1 one costs about 12
/// (rustls's own state); h2's buffers added about 22 more before they were released when the
/// connection is idle.
const BOUND_KIB: f64 = 26.0;

/// An h2 connection over TLS that has had one request answered, its body read to the end.
async fn one_request(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tls = handshake(addr, Some("grpc.test"), client_config(None, &[b"h2"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    get(send).await
}

async fn get(send: h2::client::SendRequest<Bytes>) -> h2::client::SendRequest<Bytes> {
    let mut send = send.ready().await.unwrap();
    let req = Request::get("https://grpc.test/")
        .header("user-agent", "memory_h2")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"hello from upstream");
    send
}

async fn open(addr: SocketAddr, n: usize) -> Vec<h2::client::SendRequest<Bytes>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(one_request(addr).await);
    }
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_h2_connections_cost_little_memory_after_their_first_request() {
    let up = upstream_with(|_req| async move { respond(200, "hello from upstream") }).await;
    let dir = tls_dir_with_cert().await;
    let path = dir.path().join("veer.toml");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\nworkers = 1\n\
         idle_timeout = \"600s\"\nheader_read_timeout = \"600s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{CERT}\
         [pools.web]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ web = 1 }}\n",
        up.addr
    );
    std::fs::write(&path, config).unwrap();
    let p = spawn_veer(&path).await;
    let pid = p.pid();
    // The announcement names the TLS listener as https://ADDR.
    let tls: SocketAddr = {
        let log = p.stderr.lock().unwrap();
        let line = log.lines().find(|l| l.starts_with("veer: proxy=")).unwrap();
        line.split("https://")
            .nth(1)
            .unwrap()
            .split([',', ' '])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Warm up what is made once (session caches, upstream connections) with a few
    // connections, kept open: memory freed by many would stay with the allocator and hide
    // what the measured ones cost.
    let _warm = open(tls, 8).await;
    let base = settled(pid).await;
    let conns = open(tls, CONNS).await;
    let held = settled(pid).await;
    let per = held.saturating_sub(base) as f64 / CONNS as f64;
    println!("idle TLS h2 connection after one request: {per:.2} KiB");
    // Still open and served after the measurement.
    let last = conns.into_iter().last().unwrap();
    get(last).await;
    assert!(
        per < BOUND_KIB,
        "{per:.2} KiB per idle TLS h2 connection (bound {BOUND_KIB})"
    );
}
