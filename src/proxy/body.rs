//! The response body veer sends back: an upstream body streamed through (holding the
//! backend lease until it ends), or a small body veer made. The client's request body and its
//! faults live in [`crate::body`] (re-exported here).

pub use crate::body::{BodyClock, BodyError, BodyLimit, ClientBodyError, ClientFault, RequestBody};
use crate::upstream::http_client::{BodySlot, Checkin, UpstreamBody};
use crate::upstream::Lease;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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
        /// The request's body, still streaming up: if it failed on the client's side, a
        /// response that breaks off is not the backend's failure.
        request: Option<Arc<BodySlot>>,
    },
    Full(Option<Bytes>),
    /// Any of the above, with the request's access log entry (only when the log is on).
    Logged(Box<super::access::Logged>),
    /// An upstream answer digested as it streams to the client, for a mirrored copy's
    /// comparison (SPEC §11).
    Tapped(Box<super::mirror::Tap>),
}

impl ProxyBody {
    /// Stream an upstream body, holding the backend lease until it ends.
    pub fn upstream(
        body: UpstreamBody,
        mut checkin: Checkin,
        lease: Lease,
        body_timeout: Duration,
        request: Option<Arc<BodySlot>>,
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
            request,
        }
    }
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
    /// veer's own answer (not a backend's), seen through the access log's wrapper.
    pub fn is_full(&self) -> bool {
        match self {
            ProxyBody::Full(_) => true,
            ProxyBody::Logged(l) => l.inner.is_full(),
            ProxyBody::Upstream { .. } | ProxyBody::Tapped(_) => false,
        }
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
                request,
            } => {
                // A drain timeout cuts the backend's connection, which ends this body with an
                // error: nothing to watch here for that.
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if polled.is_pending() {
                    if stall.expired(cx) {
                        // A backend that went silent mid-body counts as failed.
                        broke_off(lease, checkin, None);
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
                        // trailers (a no-op for a response already judged), unless it was
                        // cut because the client's own body failed.
                        broke_off(lease, checkin, request.as_deref());
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                        // gRPC's status arrives here; judged only when the verdict was
                        // deferred to the trailers (`Lease::record` counts once).
                        if let (Some(l), Some(t)) = (lease.as_mut(), frame.trailers_ref()) {
                            l.record(crate::upstream::http_client::grpc_ok(t));
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
            ProxyBody::Logged(l) => {
                let polled = Pin::new(&mut l.inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &polled {
                    if let Some(d) = f.data_ref() {
                        l.bytes += d.len() as u64;
                    }
                }
                polled
            }
            ProxyBody::Tapped(t) => t.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Logged(l) => l.inner.is_end_stream(),
            ProxyBody::Tapped(t) => t.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Logged(l) => l.inner.size_hint(),
            ProxyBody::Tapped(t) => t.inner.size_hint(),
        }
    }
}

/// An upstream body that broke off: its backend counts a failure (once: `Lease::record`) and
/// its connection is not reused. A break the client's request body caused is not counted.
fn broke_off(lease: &mut Option<Lease>, checkin: &mut Checkin, request: Option<&BodySlot>) {
    if let Some(mut l) = lease.take() {
        if request.and_then(BodySlot::fault).is_none() {
            l.record(false);
        }
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
