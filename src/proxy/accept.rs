//! Listening and accepting: the listening sockets (inherited or bound), the connection
//! limit, and each accepted connection handed to the HTTP/1.1 loop, TLS, or HTTP/2.

use super::server::serve_h2;
use super::ConnInfo;
use crate::config::ServerConfig;
use crate::runtime::Live;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
    // Dead clients are found by TCP keepalive, the kernel's work with no timer of ours per
    // connection (HTTP/2 pings would cost every request a lock and a clock read). Accepted
    // sockets inherit it from the listener.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(CLIENT_KEEPALIVE_IDLE)
        .with_interval(Duration::from_secs(10));
    socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The listener handed over for `addr` (a parent veer's during an upgrade, systemd's), else a
/// freshly bound one: an inherited address is never bound again.
pub fn listen(kind: crate::handover::Kind, addr: SocketAddr) -> std::io::Result<TcpListener> {
    match crate::handover::take_listener(kind, addr) {
        Some(l) => {
            l.set_nonblocking(true)?;
            // systemd's sockets come without veer's options.
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(CLIENT_KEEPALIVE_IDLE)
                .with_interval(Duration::from_secs(10));
            socket2::SockRef::from(&l).set_tcp_keepalive(&keepalive)?;
            tracing::info!(%addr, "listening on an inherited socket");
            TcpListener::from_std(l)
        }
        None => bind(addr),
    }
}

/// How long a client connection is silent before the kernel probes it (then every 10 s;
/// the kernel's probe count, 9 by default, decides when it gives up).
const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Accept connections until `stop` is cancelled.
pub async fn accept_loop(
    rt: Arc<Live>,
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

async fn serve_stream(
    rt: Arc<Live>,
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    closing: CancellationToken,
) {
    // The config of the connection's start, shared (a copy of the server settings would
    // cost every idle connection its own allocations).
    let config = rt.config();
    let settings = &config.server;
    // Each kind of connection is boxed: this future, inside every connection's task, is
    // then only as large as the one it serves (an idle HTTP/1.1 connection carries no h2 or
    // TLS handshake state).
    match transport {
        Transport::Plain => {
            let info = ConnInfo::new(peer, "http");
            Box::pin(super::http1::serve(rt, stream, info, settings, closing)).await
        }
        Transport::Tls(cfg) => Box::pin(serve_tls(rt, stream, peer, cfg, settings, closing)).await,
    }
}

async fn serve_tls(
    rt: Arc<Live>,
    stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<ArcSwap<rustls::ServerConfig>>,
    settings: &ServerConfig,
    closing: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.load_full());
    // The handshake counts against the header read timeout: a silent client is dropped.
    match tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let info = ConnInfo::tls(peer, tls.get_ref().1.server_name());
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                Box::pin(serve_h2(rt, tls, info, settings, closing)).await
            } else {
                Box::pin(super::http1::serve(rt, tls, info, settings, closing)).await
            }
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_tcp_keepalive() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let s = socket2::SockRef::from(&accepted);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), CLIENT_KEEPALIVE_IDLE);
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
    }
}
