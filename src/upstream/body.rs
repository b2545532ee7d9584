//! A response body from an upstream connection, whichever client read it.

use super::h1::UpstreamBodyInline;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from an upstream connection: hyper's, or the fast path's.
#[derive(Debug)]
pub enum UpstreamBody {
    Hyper(hyper::body::Incoming),
    Inline(UpstreamBodyInline),
    Empty,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Inline(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Inline(b) => b.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Inline(b) => b.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}
