//! Downstream listeners and connections: HTTP/1.1 and h2c (prior knowledge) on plain
//! listeners, HTTP/1.1 and HTTP/2 by ALPN on TLS listeners; slow-client limits; graceful
//! shutdown (keep-alive clients told to close, HTTP/2 GOAWAY, in-flight requests finish).

use super::body::{BodyError, ProxyBody, RequestBody};
use super::{handle, ConnInfo};
use crate::config::ServerConfig;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
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

async fn serve_stream(
    rt: Arc<Runtime>,
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
    rt: Arc<Runtime>,
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

/// What one connection is doing, for its timeouts: the request path and the IO wrapper
/// update it with atomics; the connection's own loop turns it into a deadline.
pub(super) struct Activity {
    /// Requests being handled, counted until their response body has been sent.
    active: AtomicU32,
    /// Milliseconds since `start` of the last request end (or the start).
    last: AtomicU64,
    /// Milliseconds since `start`, plus one, when bytes of a request head began to arrive
    /// on an idle connection; 0 while no head is being read.
    head_since: AtomicU64,
    /// False once the connection's socket is dropped; after an upgrade that is when the
    /// tunnel ends.
    io_open: AtomicBool,
    /// Wakes the connection task when the socket is dropped (the end of a tunnel).
    changed: Notify,
    start: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            active: AtomicU32::new(0),
            last: AtomicU64::new(0),
            // A new connection owes us its first request head within header_read_timeout.
            head_since: AtomicU64::new(1),
            io_open: AtomicBool::new(true),
            changed: Notify::new(),
            start: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The next deadline: none while requests run; header_read_timeout from the first byte
    /// of a head; idle_timeout from the last request otherwise.
    fn deadline(&self, header_read: Duration, idle: Duration) -> Option<(Instant, Expiry)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head > 0 {
            let at = self.start + Duration::from_millis(head - 1) + header_read;
            return Some((at, Expiry::Head));
        }
        let at = self.start + Duration::from_millis(self.last.load(Ordering::Acquire)) + idle;
        Some((at, Expiry::Idle))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head took too long (slowloris): the connection is dropped.
    Head,
    /// No request for idle_timeout: the connection is closed gracefully.
    Idle,
}

/// Counts a request as active from the moment hyper hands it over until its response body
/// has been sent (or dropped).
pub(super) struct ActiveGuard(Arc<Activity>);

impl ActiveGuard {
    pub(super) fn new(a: &Arc<Activity>) -> Self {
        a.head_since.store(0, Ordering::Release);
        a.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(a.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.last.store(a.now_ms(), Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The downstream response body, holding the request's [`ActiveGuard`] until it ends.
struct Tracked {
    inner: ProxyBody,
    _guard: ActiveGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection's IO, watched for the first bytes of each HTTP/1.1 request head (so the
/// header timeout runs from the first byte, and an idle keep-alive connection is governed by
/// idle_timeout alone). HTTP/2 connections, recognised by their preface, are not watched:
/// their frames (pings, window updates) are not request heads.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
    /// Bytes of the HTTP/2 preface matched so far; `PREFACE_NO` once it cannot be HTTP/2.
    preface: u8,
}

const PREFACE_NO: u8 = u8::MAX;

impl<I> Watched<I> {
    fn new(io: I, activity: &Arc<Activity>) -> Self {
        Watched {
            io,
            activity: activity.clone(),
            preface: 0,
        }
    }

    fn saw(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.preface != PREFACE_NO && (self.preface as usize) < H2_PREFACE.len() {
            let at = self.preface as usize;
            let n = data.len().min(H2_PREFACE.len() - at);
            if data[..n] == H2_PREFACE[at..at + n] {
                self.preface += n as u8;
                if self.preface as usize == H2_PREFACE.len() {
                    self.activity.head_since.store(0, Ordering::Release);
                }
                return;
            }
            self.preface = PREFACE_NO;
        }
        if self.preface != PREFACE_NO {
            return; // HTTP/2
        }
        let a = &self.activity;
        if a.active.load(Ordering::Acquire) == 0 && a.head_since.load(Ordering::Acquire) == 0 {
            a.head_since.store(a.now_ms() + 1, Ordering::Release);
        }
    }
}

impl<I> Drop for Watched<I> {
    fn drop(&mut self) {
        self.activity.io_open.store(false, Ordering::Release);
        self.activity.changed.notify_one();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let me = &mut *self;
            me.saw(&buf.filled()[before..]);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serve one connection with hyper until it ends, is idle too long, is too slow sending a
/// request head, or shutdown asks it to close. `h1_only` after veer's own loop has served
/// requests on it (an HTTP/2 preface is only one at a connection's start).
pub async fn serve_connection<I>(
    rt: Arc<Runtime>,
    io: I,
    info: ConnInfo,
    settings: &ServerConfig,
    closing: CancellationToken,
    h1_only: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let act = activity.clone();
    let peer = info.peer;
    // One shared context: one reference count per request, not one per field.
    let ctx = Arc::new((rt, info));
    let closing_now = closing.clone();
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        use futures_util::FutureExt;
        let guard = ActiveGuard::new(&act);
        let h2 = req.version() == http::Version::HTTP_2;
        // Shutting down (or upgrading): an HTTP/1.1 client is told to close with this answer,
        // so it opens its next connection (to the new process) instead of losing a request
        // to a close.
        let close = !h2 && closing_now.is_cancelled();
        // What can be decided at once is, here; the future is boxed once (it is a few KiB,
        // and hyper and the executor would move it several times).
        let handling = handle(ctx.clone(), req.map(RequestBody::Hyper));
        let fut: Pin<Box<dyn Future<Output = Result<_, Infallible>> + Send>> =
            Box::pin(handling.map(move |mut resp| {
                // veer's own `Connection: close` (after a 400 or 408) is HTTP/1.1's; hyper
                // would drop it from an HTTP/2 answer with a warning each time.
                if h2 && resp.body().is_full() {
                    resp.headers_mut().remove(http::header::CONNECTION);
                }
                if close && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(resp.map(|inner| Tracked {
                    inner,
                    _guard: guard,
                }))
            }));
        fut
    });
    let streams = StreamExec::default();
    let mut builder = auto::Builder::new(streams.clone());
    if h1_only {
        builder = builder.http1_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        // Enforced by the loop below from the first byte of a head; hyper's own timer would
        // also run while a keep-alive connection is idle and cut it short of idle_timeout.
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(header_list_limit(settings))
        .max_concurrent_streams(MAX_STREAMS)
        // No HTTP/2 pings: see `bind` for how dead clients are found.
        .keep_alive_interval(None);
    let io = Watched::new(io, &activity);
    // Boxed so it can be dropped on completion, to tell an upgraded socket from a closed one.
    let mut conn = Box::pin(Driven {
        conn: Box::pin(builder.serve_connection_with_upgrades(TokioIo::new(io), service)),
        ended: None,
        exec: streams,
        running: FuturesUnordered::new(),
    });
    run(
        conn.as_mut(),
        |c| {
            if let Some(c) = c.conn() {
                c.graceful_shutdown();
            }
        },
        &activity,
        settings,
        &closing,
        peer,
    )
    .await;
    drop(conn);
    // An upgraded connection lives on as a tunnel: it still counts against max_connections
    // and graceful shutdown waits for it (the tunnel is cut at drain timeout).
    while activity.io_open.load(Ordering::Acquire) {
        activity.changed.notified().await;
    }
}

/// Streams one HTTP/2 client may have open at once (hyper's and h2's connections alike).
pub(super) const MAX_STREAMS: u32 = 256;

/// `max_header_bytes` as HTTP/2's header list limit (larger request heads get 431).
pub(super) fn header_list_limit(settings: &ServerConfig) -> u32 {
    settings.max_header_bytes.min(u32::MAX as usize) as u32
}

/// An HTTP/2 connection over TLS (ALPN h2), served without hyper (see [`super::http2`]).
async fn serve_h2<I>(
    rt: Arc<Runtime>,
    io: I,
    info: ConnInfo,
    settings: &ServerConfig,
    closing: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let peer = info.peer;
    let io = Watched::new(io, &activity);
    let ctx = Arc::new((rt, info));
    let mut conn = std::pin::pin!(super::http2::H2Conn::new(
        io,
        settings,
        ctx,
        activity.clone()
    ));
    run(
        conn.as_mut(),
        |c| c.get_mut().graceful_shutdown(),
        &activity,
        settings,
        &closing,
        peer,
    )
    .await;
}

/// Run a connection until it ends, is idle too long, is too slow sending a request head, or
/// shutdown asks it to close (`shutdown` then tells it to finish what is in flight).
async fn run<C, E>(
    mut conn: Pin<&mut C>,
    shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    settings: &ServerConfig,
    closing: &CancellationToken,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let (header_read, idle) = (settings.header_read_timeout, settings.idle_timeout);
    // The loop is never woken per request (that would cost a timer re-arm each time): it
    // looks again at least every `check`, which is soon enough to arm each deadline exactly,
    // since none falls less than `check` after what starts it.
    let check = header_read.min(idle);
    let timer = tokio::time::sleep(check);
    tokio::pin!(timer);
    let mut shutting = false;
    // Shutdown found the connection idle: it is closed at this instant (see below).
    let mut linger: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut at = match activity.deadline(header_read, idle) {
            Some((at, _)) => at.min(now + check),
            None => now + check,
        };
        if let Some(l) = linger {
            at = at.min(l);
        }
        timer.as_mut().reset(at);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                return;
            }
            _ = closing.cancelled(), if !shutting => {
                shutting = true;
                // An idle keep-alive connection closed this instant can lose a request the
                // client is sending right now. It gets a moment: a request that comes is
                // answered with `Connection: close` (see `serve_connection`), and the
                // connection closes after it, or at the end of the moment.
                if activity.active.load(Ordering::Acquire) > 0 {
                    shutdown(conn.as_mut());
                } else {
                    linger = Some(Instant::now() + SHUTDOWN_LINGER.min(idle));
                }
            }
            _ = timer.as_mut() => {
                if linger.is_some_and(|l| l <= Instant::now()) {
                    linger = None;
                    shutdown(conn.as_mut());
                    continue;
                }
                // Re-read: a request may have started since the deadline was computed.
                match activity.deadline(header_read, idle) {
                    // A slow head is cut even during shutdown.
                    Some((at, Expiry::Head)) if at <= Instant::now() => {
                        tracing::debug!(%peer, "request head not received in time; closing");
                        return;
                    }
                    Some((at, Expiry::Idle)) if at <= Instant::now() && !shutting => {
                        shutting = true;
                        shutdown(conn.as_mut());
                    }
                    _ => {}
                }
            }
        }
    }
}

/// How long shutdown leaves an idle connection open for a request already on its way.
pub(super) const SHUTDOWN_LINGER: Duration = Duration::from_millis(500);

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor hyper hands each HTTP/2 stream to: streams run inside their connection's own
/// task (see [`Driven`]) instead of one spawned task each, which saves a task allocation, a
/// trip through the scheduler and several copies of the stream's future per request. A
/// connection's streams then share one thread, as in HAProxy and nginx; connections still
/// spread over the workers.
#[derive(Clone, Default)]
struct StreamExec(Arc<crossbeam_queue::SegQueue<StreamFuture>>);

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // Called from within the connection's poll, which takes the new stream right after.
        self.0.push(Box::pin(fut));
    }
}

/// A connection and the streams it started: done when both are.
struct Driven<C, E> {
    conn: Pin<Box<C>>,
    /// The connection's own result, once it has ended.
    ended: Option<Result<(), E>>,
    exec: StreamExec,
    running: FuturesUnordered<StreamFuture>,
}

impl<C, E: Unpin> Driven<C, E> {
    /// The connection, while it runs.
    fn conn(self: Pin<&mut Self>) -> Option<Pin<&mut C>> {
        let me = self.get_mut();
        me.ended.is_none().then_some(me.conn.as_mut())
    }
}

impl<C, E> Future for Driven<C, E>
where
    C: Future<Output = Result<(), E>>,
    E: Unpin,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        use futures_util::StreamExt;
        let me = self.get_mut();
        if me.ended.is_none() {
            if let Poll::Ready(r) = me.conn.as_mut().poll(cx) {
                me.ended = Some(r);
            }
        }
        while let Some(f) = me.exec.0.pop() {
            me.running.push(f);
        }
        // Streams still answering when the connection ends (the client went away) are run
        // to their end, as spawned tasks would be.
        while let Poll::Ready(Some(())) = me.running.poll_next_unpin(cx) {}
        match me.ended.take() {
            Some(r) if me.running.is_empty() => Poll::Ready(r),
            other => {
                me.ended = other;
                Poll::Pending
            }
        }
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
