//! Downstream listeners and connections: HTTP/1.1 and h2c (prior knowledge) on plain
//! listeners, HTTP/1.1 and HTTP/2 by ALPN on TLS listeners; slow-client limits; graceful
//! shutdown (keep-alive clients told to close, HTTP/2 GOAWAY, in-flight requests finish).

use super::{handle, ConnInfo};
use crate::config::ServerConfig;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where connections come from and how they are wrapped.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(Arc<ArcSwap<rustls::ServerConfig>>),
}

/// Shared by all listeners: the connection limit and the set of live connections.
#[derive(Debug)]
pub struct Connections {
    pub limit: Arc<Semaphore>,
    pub tracker: TaskTracker,
    /// Cancelled to ask every connection to finish gracefully.
    pub closing: CancellationToken,
}

impl Connections {
    pub fn new(max: usize) -> Self {
        Connections {
            limit: Arc::new(Semaphore::new(max)),
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
        }
    }
}

/// Bind a listener with a deep backlog (connections over `max_connections` wait there).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accept connections until `stop` is cancelled.
pub async fn accept_loop(
    rt: Arc<Runtime>,
    listener: TcpListener,
    transport: Transport,
    conns: Arc<Connections>,
    stop: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            p = conns.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let rt = rt.clone();
        let transport = transport.clone();
        let closing = conns.closing.clone();
        conns.tracker.spawn(async move {
            let _permit = permit;
            serve_stream(rt, stream, peer, transport, closing).await;
        });
    }
}

async fn serve_stream(rt: Arc<Runtime>, stream: TcpStream, peer: SocketAddr, transport: Transport, closing: CancellationToken) {
    let settings = rt.config().server.clone();
    match transport {
        Transport::Plain => {
            let info = ConnInfo { peer, scheme: "http" };
            serve_connection(rt, stream, info, &settings, closing).await
        }
        Transport::Tls(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.load_full());
            // The handshake counts against the header read timeout: a silent client is dropped.
            match tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let info = ConnInfo { peer, scheme: "https" };
                    serve_connection(rt, tls, info, &settings, closing).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Activity of one connection, for the idle timeout.
struct Activity {
    active: AtomicU32,
    /// Milliseconds since `start` of the last request start or end.
    last: AtomicU64,
    start: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

struct ActiveGuard(Arc<Activity>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Serve one connection until it ends, is idle too long, or shutdown asks it to close.
pub async fn serve_connection<I>(rt: Arc<Runtime>, io: I, info: ConnInfo, settings: &ServerConfig, closing: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        active: AtomicU32::new(0),
        last: AtomicU64::new(0),
        start: Instant::now(),
    });
    let act = activity.clone();
    let info = Arc::new(info);
    let service = service_fn(move |req| {
        let rt = rt.clone();
        let info = info.clone();
        act.active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(act.clone());
        async move {
            let resp = handle(&rt, &info, req).await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle = settings.idle_timeout;
    let mut shutting = false;
    loop {
        let last = Duration::from_millis(activity.last.load(Ordering::Relaxed));
        let idle_deadline = activity.start + last + idle;
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %info_peer(&activity, &closing), error = %e, "connection ended with error");
                }
                return;
            }
            _ = closing.cancelled(), if !shutting => {
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(idle_deadline), if !shutting => {
                let last_now = Duration::from_millis(activity.last.load(Ordering::Relaxed));
                if activity.active.load(Ordering::Relaxed) == 0 && last_now == last {
                    shutting = true;
                    conn.as_mut().graceful_shutdown();
                } else if activity.active.load(Ordering::Relaxed) > 0 {
                    activity.touch();
                }
            }
        }
    }
}

fn info_peer(_a: &Activity, _c: &CancellationToken) -> &'static str {
    "downstream"
}
