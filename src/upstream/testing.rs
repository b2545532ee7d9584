//! Test backends that speak raw HTTP/1.1, for the upstream client's tests.

use super::body::UpstreamBody;
use super::http_client::{UpBody, UpstreamClient};
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the backend sends for one request head.
pub struct Reply {
    pub bytes: Vec<u8>,
    /// Close the connection after sending (without saying so).
    pub close: bool,
}

impl Reply {
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Self {
        Reply {
            bytes: bytes.into(),
            close: false,
        }
    }

    pub fn ok(body: &str) -> Self {
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    pub fn then_close(mut self) -> Self {
        self.close = true;
        self
    }
}

pub struct Backend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Backend {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    /// Connections that ended so far (closed by either side).
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A keep-alive backend answering each request head (bodies are not expected) with `reply`.
pub async fn backend(reply: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Backend {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let (c, reply) = (c.clone(), reply.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let r = reply(&head);
                        let _ = s.write_all(&r.bytes).await;
                        if r.close {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Backend {
        addr,
        accepted,
        closed,
    }
}

/// The upstream client of a one-backend HTTP/1.1 pool.
pub fn client(addr: SocketAddr) -> UpstreamClient {
    client_speaking(addr, "h1")
}

/// The upstream client of a one-backend pool speaking `protocol`.
pub fn client_speaking(addr: SocketAddr, protocol: &str) -> UpstreamClient {
    let text = format!(
        "[pools.p]\nbackends = [\"{addr}\"]\nprotocol = \"{protocol}\"\n\
         [[routes]]\nname = \"r\"\nsplit = {{ p = 100 }}\n"
    );
    let cfg = crate::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
    UpstreamClient::new(addr, &cfg.pools["p"], None).unwrap()
}

pub fn request(c: &UpstreamClient, method: &str) -> Request<UpBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://{}/", c.authority))
        .body(UpBody::empty())
        .unwrap()
}

pub fn get(c: &UpstreamClient) -> Request<UpBody> {
    request(c, "GET")
}

/// Send a request and read the answer to its end, as the proxy does: the status, the body
/// and the trailers.
pub async fn exchange(
    c: &UpstreamClient,
    req: Request<UpBody>,
) -> (Response<()>, String, Option<HeaderMap>) {
    let (resp, mut checkin) = c.send(req).await.unwrap();
    let (parts, body): (_, UpstreamBody) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    checkin.release();
    let trailers = collected.trailers().cloned();
    let text = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    (Response::from_parts(parts, ()), text, trailers)
}

pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An h2c backend answering `ok`, counting the connections it accepted.
pub async fn h2c_backend() -> Backend {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Backend {
        addr,
        accepted,
        closed,
    }
}
