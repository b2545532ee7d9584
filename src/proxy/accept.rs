//! Listening and accepting: the listening sockets (inherited or bound), the connection
//! limit, and each accepted connection handed to the HTTP/1.1 loop, TLS, or HTTP/2.

use super::activity::IdleTimers;
use super::http1::{Conn, Ctx};
use super::server::serve_h2;
use super::ConnInfo;
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
    /// The timeouts of veer's own HTTP/1.1 connections (one timer for all of them).
    pub(super) timers: Arc<IdleTimers>,
}

impl Connections {
    pub fn new(max: usize) -> Self {
        let closing = CancellationToken::new();
        Connections {
            limit: Arc::new(Semaphore::new(max)),
            tracker: TaskTracker::new(),
            timers: Arc::new(IdleTimers::new(closing.clone())),
            closing,
        }
    }
}

/// A connection's place under `max_connections`, given back when it ends; also the way to
/// the shared connection state (one pointer, where a semaphore permit and a cancellation
/// token would be two more in every connection).
pub(super) struct ConnGuard(pub(super) Arc<Connections>);

impl ConnGuard {
    /// Hold `permit`'s place (it is given back by this guard's drop instead).
    fn new(permit: tokio::sync::OwnedSemaphorePermit, conns: &Arc<Connections>) -> Self {
        permit.forget();
        ConnGuard(conns.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        // What dropping the permit would do.
        self.0.limit.add_permits(1);
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
        let guard = ConnGuard::new(permit, &conns);
        // A plain connection's task is its HTTP/1.1 loop itself, unboxed: the task's cell
        // is then all an idle connection costs besides its socket (see `http1::Conn`).
        match &transport {
            Transport::Plain => {
                let conn = Conn::new(stream, Ctx::Plain(rt.clone(), peer), guard);
                conns.tracker.spawn(super::http1::serve(conn));
            }
            Transport::Tls(cfg) => {
                conns
                    .tracker
                    .spawn(serve_tls(rt.clone(), stream, peer, cfg.clone(), guard));
            }
        }
    }
}

async fn serve_tls(
    rt: Arc<Live>,
    stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<ArcSwap<rustls::ServerConfig>>,
    guard: ConnGuard,
) {
    // The config of the connection's start, shared (a copy of the server settings would
    // cost every idle connection its own allocations).
    let config = rt.config();
    let settings = &config.server;
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.load_full());
    // The handshake counts against the header read timeout: a silent client is dropped.
    // Boxed: the handshake's state is large, and gone once it is done.
    match tokio::time::timeout(
        settings.header_read_timeout,
        Box::pin(acceptor.accept(stream)),
    )
    .await
    {
        Ok(Ok(tls)) => {
            let info = ConnInfo::tls(peer, tls.get_ref().1.server_name());
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                let closing = guard.0.closing.clone();
                Box::pin(serve_h2(rt, tls, info, settings, closing)).await
            } else {
                let ctx = Ctx::Ready(Arc::new((rt, info)));
                Box::pin(super::http1::serve(Conn::new(tls, ctx, guard))).await
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

#[cfg(test)]
mod sizes {
    use super::*;
    use std::mem::size_of_val;

    /// What tokio's task cell adds to the spawned future on x86_64 (tokio 1.54, `Cell`: a
    /// 32-byte header, scheduler and id, the stage's tag and a 48-byte trailer), and the
    /// cell's alignment (128).
    const CELL_OVERHEAD: usize = 104;
    const CELL_ALIGN: usize = 128;

    /// An idle plain connection is its task's cell (this), its socket's registration
    /// (tokio's `ScheduledIo`, 256 bytes) and its timer slot (64): under 1 KiB (issue 15).
    #[tokio::test]
    async fn a_plain_connection_task_fits_256_bytes() {
        let text = "[pools.blue]\nbackends = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"web\"\nsplit = { blue = 100 }\n";
        let c = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let rt = crate::runtime::Live::new(c, None).unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let conns = Arc::new(Connections::new(10));
        let permit = conns.limit.clone().acquire_owned().await.unwrap();
        let guard = ConnGuard::new(permit, &conns);
        let conn = Conn::new(accepted, Ctx::Plain(rt.clone(), peer), guard);
        let conn_bytes = size_of_val(&conn);
        // As accept_loop spawns it.
        let task = conns.tracker.track_future(super::super::http1::serve(conn));
        let future = size_of_val(&task);
        let cell = (future + CELL_OVERHEAD).div_ceil(CELL_ALIGN) * CELL_ALIGN;
        println!("Conn {conn_bytes} B, the task's future {future} B, its cell {cell} B");
        assert!(
            cell <= 256,
            "the task's future is {future} B: its cell is {cell} B"
        );
        drop(task);
        // The place under max_connections is given back with the connection.
        assert_eq!(conns.limit.available_permits(), 10);
    }
}
