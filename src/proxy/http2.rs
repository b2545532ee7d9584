//! HTTP/2 from clients over TLS, served on the h2 crate directly. hyper's HTTP/2 server is a
//! layer over the same crate; without it each request saves hyper's per-stream machinery: a
//! boxed stream future handed to an executor, header passes veer has already made (hop-by-hop
//! stripping, Content-Length), a capacity handshake with h2 before every body frame, and three
//! IO adapters around every read and write. h2c (HTTP/2 without TLS) stays on hyper, which
//! tells it from HTTP/1.1 by its preface.

use super::activity::{ActiveGuard, Activity};
use super::body::{ProxyBody, RequestBody};
use super::{handle, ConnCtx};
use crate::config::ServerConfig;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
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
    ctx: ConnCtx,
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
        ctx: ConnCtx,
        activity: Arc<Activity>,
    ) -> Self {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_concurrent_streams(super::server::MAX_STREAMS)
            .max_header_list_size(super::server::header_list_limit(settings));
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
                        me.running.push(serve_request(&me.ctx, guard, req, respond));
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

pin_project_lite::pin_project! {
    /// One request: handled, then its response sent. A client that resets the stream (or
    /// closes the connection) before the answer cancels the request, as with hyper. A named
    /// state machine rather than an async block: it holds the request's future once, not
    /// beside copies of what went into it, so the box each request lives in stays small.
    struct Serve<F> {
        #[pin]
        handling: F,
        respond: Option<h2::server::SendResponse<Bytes>>,
        pipe: Option<Pipe>,
        _guard: ActiveGuard,
    }
}

fn serve_request(
    ctx: &ConnCtx,
    guard: ActiveGuard,
    req: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
) -> StreamFuture {
    let (parts, recv) = req.into_parts();
    let body = RequestBody::h2(recv, &parts.headers);
    Box::pin(Serve {
        handling: handle(ctx.clone(), Request::from_parts(parts, body)),
        respond: Some(respond),
        pipe: None,
        _guard: guard,
    })
}

impl<F> Future for Serve<F>
where
    F: Future<Output = Response<ProxyBody>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = self.project();
        if let Some(pipe) = me.pipe {
            return Pin::new(pipe).poll(cx);
        }
        let Some(respond) = me.respond else {
            return Poll::Ready(());
        };
        let resp = match me.handling.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                return match respond.poll_reset(cx) {
                    // Dropping the request's future (with the Serve) cancels it.
                    Poll::Ready(_) => {
                        *me.respond = None;
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
        };
        let (mut parts, body) = resp.into_parts();
        let end = body.is_end_stream();
        // veer's own answers say how long they are; relayed ones carry the backend's framing.
        if body.is_full() {
            // An HTTP/1.1 `Connection: close` (after a 400 or 408) means nothing here, and h2
            // refuses to send a head that has it.
            parts.headers.remove(header::CONNECTION);
            if let (false, Some(n)) = (end, body.size_hint().exact()) {
                parts
                    .headers
                    .entry(header::CONTENT_LENGTH)
                    .or_insert_with(|| HeaderValue::from(n));
            }
        }
        // Hop-by-hop headers are gone already (`relay`); h2 refuses a head that has any.
        let sent = respond.send_response(Response::from_parts(parts, ()), end);
        *me.respond = None; // the request's future is done: never polled again
        let send = match sent {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "response head not sent");
                return Poll::Ready(());
            }
        };
        if end {
            return Poll::Ready(());
        }
        let pipe = me.pipe.insert(Pipe {
            body,
            send,
            first: true,
            waiting: None,
        });
        Pin::new(pipe).poll(cx)
    }
}

/// A response body on its way to the client: data as it comes, under the client's flow
/// control, then trailers or the end of the stream. A body that fails resets the stream, so
/// the client sees an error, never a clean end.
struct Pipe {
    body: ProxyBody,
    send: h2::SendStream<Bytes>,
    first: bool,
    /// A chunk waiting for room in the client's window (and whether it ends the body).
    waiting: Option<(Bytes, bool)>,
}

impl Future for Pipe {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = self.get_mut();
        loop {
            if let Some((data, eos)) = me.waiting.take() {
                while me.send.capacity() == 0 {
                    match me.send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(_) => return Poll::Ready(()), // the stream is gone
                        Poll::Pending => {
                            me.waiting = Some((data, eos));
                            return Poll::Pending;
                        }
                    }
                }
                if me.send.send_data(data, eos).is_err() || eos {
                    return Poll::Ready(());
                }
            }
            let frame = match Pin::new(&mut me.body).poll_frame(cx) {
                Poll::Ready(f) => f,
                // Waiting on the backend: notice meanwhile a client that gave up (dropping
                // the body then releases the backend).
                Poll::Pending => {
                    return match me.send.poll_reset(cx) {
                        Poll::Ready(_) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    }
                }
            };
            let frame = match frame {
                None => {
                    let _ = me.send.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "response body failed; resetting the stream");
                    me.send.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                Some(Ok(f)) => f,
            };
            match frame.into_data() {
                Ok(data) => {
                    let eos = me.body.is_end_stream();
                    let at_once = me.first && data.len() <= SEND_AT_ONCE;
                    me.first = false;
                    if at_once {
                        if me.send.send_data(data, eos).is_err() || eos {
                            return Poll::Ready(());
                        }
                    } else {
                        me.send.reserve_capacity(data.len());
                        me.waiting = Some((data, eos));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        me.send.reserve_capacity(0);
                        let _ = me.send.send_trailers(trailers);
                    } else {
                        let _ = me.send.send_data(Bytes::new(), true);
                    }
                    return Poll::Ready(());
                }
            }
        }
    }
}
