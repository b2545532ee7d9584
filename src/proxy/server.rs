//! Serving one downstream connection: with hyper (HTTP/1.1 after veer's own loop hands a
//! connection over, h2c by prior knowledge) or with the h2 crate (HTTP/2 by ALPN on TLS);
//! slow-client limits; graceful shutdown (keep-alive clients told to close, HTTP/2 GOAWAY,
//! in-flight requests finish). Accepting is [`super::accept`]; the activity counters behind the
//! timeouts are [`super::activity`].

use super::activity::{ActiveGuard, Activity, Expiry, GuardedBody, HeadWatch};
use super::body::RequestBody;
use super::{handle, ConnInfo};
use crate::config::ServerConfig;
use crate::runtime::Live;
use futures_util::stream::FuturesUnordered;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Serve one connection with hyper until it ends, is idle too long, is too slow sending a
/// request head, or shutdown asks it to close. `h1_only` after veer's own loop has served
/// requests on it (an HTTP/2 preface is only one at a connection's start).
pub async fn serve_connection<I>(
    rt: Arc<Live>,
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
    let log_ctx = ctx.clone();
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
                Ok::<_, Infallible>(resp.map(|inner| GuardedBody {
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
    let io = HeadWatch::new(io, &activity);
    // Boxed so it can be dropped on completion, to tell an upgraded socket from a closed one.
    let mut conn = Box::pin(WithStreams {
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
        // A head hyper refused (and answered), or one that did not come in time, gets its
        // access log line here: no request reached the request path.
        |end| match end {
            Ended::Error(e) => {
                if let Some((status, why)) = super::access::hyper_refusal(&**e) {
                    super::access::refused(&log_ctx, status, why);
                }
            }
            Ended::HeadTimeout => super::access::refused(&log_ctx, 408, "header_timeout"),
        },
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
pub(super) async fn serve_h2<I>(
    rt: Arc<Live>,
    io: I,
    info: ConnInfo,
    settings: &ServerConfig,
    closing: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let peer = info.peer;
    let io = HeadWatch::new(io, &activity);
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
        // An HTTP/2 connection error refuses no request with a status (a stream's refusal
        // is the stream's), and a head timeout here is a client that never sent its
        // preface: no access log line for either.
        |_| {},
    )
    .await;
}

/// How a connection ended without a request to log, for [`run`]'s `ended`.
enum Ended<'a, E> {
    /// The connection's error (hyper's parse errors, which it has answered, among them).
    Error(&'a E),
    /// A request head began and did not arrive within header_read_timeout.
    HeadTimeout,
}

/// Run a connection until it ends, is idle too long, is too slow sending a request head, or
/// shutdown asks it to close (`shutdown` then tells it to finish what is in flight).
#[allow(clippy::too_many_arguments)]
async fn run<C, E>(
    mut conn: Pin<&mut C>,
    shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    settings: &ServerConfig,
    closing: &CancellationToken,
    peer: SocketAddr,
    ended: impl FnOnce(Ended<'_, E>),
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
                    ended(Ended::Error(&e));
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
                        ended(Ended::HeadTimeout);
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
/// task (see [`WithStreams`]) instead of one spawned task each, which saves a task allocation, a
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
struct WithStreams<C, E> {
    conn: Pin<Box<C>>,
    /// The connection's own result, once it has ended.
    ended: Option<Result<(), E>>,
    exec: StreamExec,
    running: FuturesUnordered<StreamFuture>,
}

impl<C, E: Unpin> WithStreams<C, E> {
    /// The connection, while it runs.
    fn conn(self: Pin<&mut Self>) -> Option<Pin<&mut C>> {
        let me = self.get_mut();
        me.ended.is_none().then_some(me.conn.as_mut())
    }
}

impl<C, E> Future for WithStreams<C, E>
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
