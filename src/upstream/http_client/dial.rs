//! Dialling one backend: TCP to its own address whatever the URI names, every connection
//! registered so draining the backend can cut exactly its connections.

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

pub type Connector = hyper_rustls::HttpsConnector<Dial>;

/// A connection to a backend, TLS or not.
pub type ConnIo = hyper_rustls::MaybeHttpsStream<CutIo<TcpIo>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP to one backend's address, whatever host and port the request URI names: the URI
/// carries the name the backend expects (and TLS uses the pool's fixed server name), never a
/// place to look up. Every connection is registered in the client's [`CutSet`].
#[derive(Debug, Clone)]
pub struct Dial {
    pub(super) http: HttpConnector,
    /// The backend's address (the URI for the connector is made at each dial: a connection
    /// is rare beside what a kept `Uri` costs every backend).
    pub(super) addr: std::net::SocketAddr,
    pub(super) cuts: Arc<CutSet>,
}

type TcpIo = <HttpConnector as tower::Service<Uri>>::Response;

impl tower::Service<Uri> for Dial {
    type Response = CutIo<TcpIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let target: Result<Uri, _> = format!("http://{}", self.addr).parse();
        let connecting = target.map(|t| self.http.call(t));
        let cuts = self.cuts.clone();
        Box::pin(async move {
            let io = connecting?.await?;
            Ok(CutIo {
                inner: io,
                flag: cuts.register(),
            })
        })
    }
}

/// The connections of one backend's client, so a drain that reaches its timeout can cut
/// every request still on them at once. The request path never touches the list: it is
/// locked only when a connection is made and when a drain cuts.
#[derive(Debug, Default)]
pub struct CutSet {
    cut: AtomicBool,
    conns: std::sync::Mutex<Vec<std::sync::Weak<CutFlag>>>,
}

/// One connection's cut signal: a flag and the waker of the task driving the connection.
#[derive(Debug, Default)]
pub struct CutFlag {
    cut: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl CutSet {
    fn register(&self) -> Arc<CutFlag> {
        let flag = Arc::new(CutFlag::default());
        flag.cut
            .store(self.cut.load(Ordering::Acquire), Ordering::Release);
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|w| w.strong_count() > 0);
        conns.push(Arc::downgrade(&flag));
        flag
    }

    /// Fail every connection of this client (and any it makes from now on): requests waiting
    /// on them get an error, streaming bodies and tunnels end.
    pub fn cut_all(&self) {
        self.cut.store(true, Ordering::Release);
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for flag in conns.iter().filter_map(|w| w.upgrade()) {
            flag.cut.store(true, Ordering::Release);
            flag.waker.wake();
        }
    }
}

/// A backend connection that fails at once when its client is cut.
#[derive(Debug)]
pub struct CutIo<T> {
    inner: T,
    flag: Arc<CutFlag>,
}

impl<T> CutIo<T> {
    fn check(&self) -> std::io::Result<()> {
        if self.flag.cut.load(Ordering::Acquire) {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "backend connection cut by drain timeout",
            ))
        } else {
            Ok(())
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for CutIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Whoever waits to read is whom a cut must wake (an atomic register, no lock).
        self.flag.waker.register(cx.waker());
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for CutIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection>
    hyper_util::client::legacy::connect::Connection for CutIo<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected()
    }
}
