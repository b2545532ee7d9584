//! The HTTP/2 harness: clients for h2c (prior knowledge over TCP) and h2 over TLS, with the
//! `h2` crate or hyper, and a request body fed frame by frame.

use super::tls::{client_config, handshake};
use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// An HTTP/2 client with prior knowledge over plain TCP (h2c).
pub async fn h2c_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// An HTTP/2 client over TLS (ALPN h2) to `addr`, trusting `roots`, asking for `name`.
pub async fn h2_tls_client(
    addr: SocketAddr,
    name: &str,
    roots: rustls::RootCertStore,
) -> h2::client::SendRequest<Bytes> {
    let tls = handshake(addr, Some(name), client_config(Some(roots), &[b"h2"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A hyper HTTP/2 client over TLS (ALPN h2, any certificate) to `addr`, asking for
/// `grpc.test`.
pub async fn h2_client_tls<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = handshake(addr, Some("grpc.test"), client_config(None, &[b"h2"])).await;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// A request or response body fed frame by frame from a channel.
pub struct ChannelBody(pub mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// The next frame of a response body, within 10 s.
pub async fn next_frame(body: &mut Incoming) -> Frame<Bytes> {
    tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("no frame in time")
        .expect("body ended early")
        .expect("body error")
}

/// A hyper HTTP/1.1 and HTTP/2 client that speaks HTTP/2 only (h2c with prior knowledge).
pub fn h2c_hyper_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// `GET https://{authority}{path}` with an empty body.
pub fn h2_get(authority: &str, path: &str) -> Request<http_body_util::Full<Bytes>> {
    Request::get(format!("https://{authority}{path}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap()
}
