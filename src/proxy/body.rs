//! Bodies on the client side: the request body a client sends (hyper's, or the h2 crate's
//! for HTTP/2 served without hyper), and the response body veer sends back: an upstream body
//! streamed through (holding the backend lease until it ends), or a small body veer made.

use crate::upstream::client::Checkin;
use crate::upstream::client::UpstreamBody;
use crate::upstream::Lease;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Errors while streaming a response body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body.
#[derive(Debug)]
pub enum RequestBody {
    /// HTTP/1.1 and h2c, served by hyper.
    Hyper(hyper::body::Incoming),
    /// HTTP/2 over TLS, served on the h2 crate directly (see `server::h2`).
    H2 {
        recv: h2::RecvStream,
        /// The request's Content-Length, if it gave one (h2 checks the data against it).
        length: Option<u64>,
        data_done: bool,
    },
}

impl RequestBody {
    pub fn h2(recv: h2::RecvStream, headers: &http::HeaderMap) -> Self {
        let length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse().ok());
        RequestBody::H2 {
            recv,
            length,
            data_done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H2 {
                recv, data_done, ..
            } => {
                if !*data_done {
                    match std::task::ready!(recv.poll_data(cx)) {
                        Some(Ok(data)) => {
                            // Taken off the stream: the client may send that much more.
                            let _ = recv.flow_control().release_capacity(data.len());
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => *data_done = true,
                    }
                }
                match std::task::ready!(recv.poll_trailers(cx)) {
                    Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::H2 { recv, .. } => recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::H2 {
                length: Some(n), ..
            } => SizeHint::with_exact(*n),
            RequestBody::H2 { .. } => SizeHint::default(),
        }
    }
}

/// A downstream response body.
#[derive(Debug)]
pub enum ProxyBody {
    Upstream {
        body: UpstreamBody,
        /// The connection the body comes on, given back to its pool at the body's end.
        checkin: Checkin,
        lease: Option<Lease>,
        /// Cut the body when the backend sends nothing for this long (`body_timeout`).
        stall: Stall,
    },
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// Stream an upstream body, holding the backend lease until it ends.
    pub fn upstream(
        body: UpstreamBody,
        mut checkin: Checkin,
        lease: Lease,
        body_timeout: Duration,
    ) -> Self {
        // An empty body is never polled (the server sees its end at once): the connection
        // is free now.
        if body.is_end_stream() {
            checkin.release();
        }
        ProxyBody::Upstream {
            body,
            checkin,
            lease: Some(lease),
            stall: Stall::new(body_timeout),
        }
    }
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                body,
                checkin,
                lease,
                stall,
            } => {
                // A drain timeout cuts the backend's connection, which ends this body with an
                // error: nothing to watch here for that.
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if polled.is_pending() {
                    if stall.expired(cx) {
                        // A backend that went silent mid-body counts as failed.
                        broke_off(lease, checkin);
                        *body = UpstreamBody::Empty; // closes the connection
                        let e = format!("upstream body sent nothing for {:?}", stall.limit);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    return Poll::Pending;
                }
                stall.progress();
                match polled {
                    Poll::Ready(None) => {
                        // Done: the backend's in-flight count drops now, not when hyper
                        // gets round to dropping the body.
                        checkin.release();
                        lease.take();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // A response cut short fails a gRPC call still waiting for its
                        // trailers (a no-op for a response already judged).
                        broke_off(lease, checkin);
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                        // gRPC's status arrives here; judged only when the verdict was
                        // deferred to the trailers (`Lease::record` counts once).
                        if let (Some(l), Some(t)) = (lease.as_mut(), frame.trailers_ref()) {
                            l.record(crate::upstream::client::grpc_ok(t));
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        // A server that sees the end after this frame never polls again.
                        if body.is_end_stream() {
                            checkin.release();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// An upstream body that broke off: its backend counts a failure (once: `Lease::record`) and
/// its connection is not reused.
fn broke_off(lease: &mut Option<Lease>, checkin: &mut Checkin) {
    if let Some(mut l) = lease.take() {
        l.record(false);
    }
    checkin.forget();
}

/// The body-idle timer of an upstream body: armed only when the body has to wait (a body
/// that is all there never touches a timer), pushed back after each frame.
#[derive(Debug)]
pub struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since the timer was last set.
    moved: bool,
}

impl Stall {
    fn new(limit: Duration) -> Self {
        Stall {
            limit,
            timer: None,
            moved: false,
        }
    }

    fn progress(&mut self) {
        self.moved = true;
    }

    /// Has the body been waiting for longer than the limit? Registers the wake-up if not.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.limit.is_zero() {
            return false;
        }
        if self.timer.is_none() || self.moved {
            let deadline = tokio::time::Instant::now() + self.limit;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.moved = false;
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}
