//! HTTP/2 from clients over TLS, served on the h2 crate directly. hyper's HTTP/2 server is a
//! layer over the same crate; without it each request saves hyper's per-stream machinery: a
//! boxed stream future handed to an executor, header passes veer has already made (hop-by-hop
//! stripping, Content-Length), a capacity handshake with h2 before every body frame, and three
//! IO adapters around every read and write. h2c (HTTP/2 without TLS) stays on hyper, which
//! tells it from HTTP/1.1 by its preface.

use super::body::{ProxyBody, RequestBody};
use super::server::{ActiveGuard, Activity};
use super::{handle, ConnInfo};
use crate::config::ServerConfig;
use crate::runtime::Runtime;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

/// Flow-control windows a client may fill before veer reads on: hyper's defaults, so uploads
/// are not held to HTTP/2's 64 KiB default.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONN_WINDOW: u32 = 1024 * 1024;
/// A first body chunk this small is sent at once, without waiting for window space (h2 holds
/// it until the window allows); larger ones, and every later one, wait for space, so a slow
/// client holds the backend back rather than veer buffering the body.
const SEND_AT_ONCE: usize = 16 * 1024;

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One client connection speaking HTTP/2: done when the connection has ended and each of its
/// requests has finished. Requests run inside the connection's own task, as with hyper (see
/// `server::StreamExec`).
pub(super) struct H2Conn<I> {
    state: State<I>,
    running: FuturesUnordered<StreamFuture>,
    ctx: Arc<(Arc<Runtime>, ConnInfo)>,
    activity: Arc<Activity>,
    /// Graceful shutdown was asked for (perhaps before the handshake finished).
    closing: bool,
}

enum State<I> {
    Handshake(h2::server::Handshake<I, Bytes>),
    Serving(h2::server::Connection<I, Bytes>),
    Ended(Option<Result<(), h2::Error>>),
}

impl<I> H2Conn<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(super) fn new(
        io: I,
        settings: &ServerConfig,
        ctx: Arc<(Arc<Runtime>, ConnInfo)>,
        activity: Arc<Activity>,
    ) -> Self {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_concurrent_streams(256)
            .max_header_list_size(settings.max_header_bytes.min(u32::MAX as usize) as u32);
        H2Conn {
            state: State::Handshake(b.handshake(io)),
            running: FuturesUnordered::new(),
            ctx,
            activity,
            closing: false,
        }
    }

    /// Take no new requests (GOAWAY) and end once those in flight are done.
    pub(super) fn graceful_shutdown(&mut self) {
        self.closing = true;
        if let State::Serving(c) = &mut self.state {
            c.graceful_shutdown();
        }
    }
}

impl<I> Future for H2Conn<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        loop {
            match &mut me.state {
                State::Handshake(h) => match Pin::new(h).poll(cx) {
                    Poll::Ready(Ok(mut c)) => {
                        if me.closing {
                            c.graceful_shutdown();
                        }
                        me.state = State::Serving(c);
                    }
                    Poll::Ready(Err(e)) => me.state = State::Ended(Some(Err(e))),
                    Poll::Pending => break,
                },
                // Accepting also drives the connection: reads frames, writes what the
                // requests queued.
                State::Serving(c) => match c.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        let guard = ActiveGuard::new(&me.activity);
                        let ctx = me.ctx.clone();
                        me.running
                            .push(Box::pin(serve_request(ctx, guard, req, respond)));
                    }
                    Poll::Ready(Some(Err(e))) => me.state = State::Ended(Some(Err(e))),
                    Poll::Ready(None) => me.state = State::Ended(Some(Ok(()))),
                    Poll::Pending => break,
                },
                State::Ended(_) => break,
            }
        }
        // Requests still answering when the connection ends (the client went away) run to
        // their end; they notice the connection is gone at their next send.
        while let Poll::Ready(Some(())) = me.running.poll_next_unpin(cx) {}
        match &mut me.state {
            State::Ended(r) if me.running.is_empty() => Poll::Ready(r.take().unwrap_or(Ok(()))),
            _ => Poll::Pending,
        }
    }
}

/// Handle one request and send its response. A client that resets the stream (or closes the
/// connection) before the answer cancels the request, as with hyper.
async fn serve_request(
    ctx: Arc<(Arc<Runtime>, ConnInfo)>,
    _guard: ActiveGuard,
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let (rt, info) = &*ctx;
    let (parts, recv) = req.into_parts();
    let body = RequestBody::h2(recv, &parts.headers);
    let mut handling = pin!(handle(rt, info, Request::from_parts(parts, body)));
    let resp = poll_fn(|cx| match handling.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        },
    })
    .await;
    let Some(resp) = resp else {
        return;
    };
    let (mut parts, body) = resp.into_parts();
    let end = body.is_end_stream();
    // veer's own answers say how long they are; relayed ones carry the backend's framing.
    if let (ProxyBody::Full(_), false) = (&body, end) {
        if let Some(n) = body.size_hint().exact() {
            parts
                .headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(n));
        }
    }
    // Hop-by-hop headers are gone already (`relay`); h2 refuses a head that has any.
    let send = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "response head not sent");
            return;
        }
    };
    if !end {
        pipe(body, send).await;
    }
}

/// Stream a response body to the client: data as it comes, under the client's flow control,
/// then trailers or the end of the stream. A body that fails resets the stream, so the client
/// sees an error, never a clean end.
async fn pipe(body: ProxyBody, mut send: h2::SendStream<Bytes>) {
    let mut body = pin!(body);
    let mut first = true;
    loop {
        let frame = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(Some(f)),
            // Waiting on the backend: notice meanwhile a client that gave up.
            Poll::Pending => match send.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        })
        .await;
        let frame = match frame {
            None => return, // reset by the client; dropping the body releases the backend
            Some(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(f))) => f,
        };
        match frame.into_data() {
            Ok(data) => {
                let eos = body.is_end_stream();
                let at_once = first && data.len() <= SEND_AT_ONCE;
                if !at_once && !wait_for_window(&mut send, data.len()).await {
                    return;
                }
                first = false;
                if send.send_data(data, eos).is_err() || eos {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.reserve_capacity(0);
                    let _ = send.send_trailers(trailers);
                } else {
                    let _ = send.send_data(Bytes::new(), true);
                }
                return;
            }
        }
    }
}

/// Wait until the client's window has room for some of the next `len` bytes; false when the
/// stream or connection is gone.
async fn wait_for_window(send: &mut h2::SendStream<Bytes>, len: usize) -> bool {
    send.reserve_capacity(len);
    while send.capacity() == 0 {
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            _ => return false,
        }
    }
    true
}
