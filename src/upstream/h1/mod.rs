//! The fast path for the commonest upstream exchange: an HTTP/1.1 request without a body
//! (GET, HEAD, DELETE…), written and answered by the request's own task on a pooled
//! connection. hyper's client runs each connection as a task of its own and hands requests
//! and responses to it over channels, which costs two task wake-ups and several copies per
//! request; here the request head is one write and the response head one parse, and a body
//! that came with the head is answered from memory with the connection already back in the
//! pool. Everything else (request bodies, upgrades, HTTP/2) goes through hyper.
//!
//! By what each part does: `write` writes the request head, `parse` reads the response
//! head and its framing, `body` decodes the body that follows (fixed length, chunked, or to
//! the close); this file holds the pooled connection and the exchange that runs them in turn.

mod body;
mod parse;
/// Property tests of the head parser and chunked decoder against strict references.
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
mod write;

pub use body::UpstreamBodyInline;
pub(crate) use parse::single_content_length;
pub use write::Head;

use super::body::UpstreamBody;
use super::conn_pool::{Conns, UpstreamError};
use super::http_client::ConnIo;
use body::{Chunk, State};
use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parse::{try_parse, Length};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use write::write_head;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most response headers accepted (as hyper).
const MAX_HEADERS: usize = 100;
/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Read buffer growth per read for heads and small bodies.
const READ_CHUNK: usize = 8 * 1024;
/// The most read at once while streaming a large body (as hyper's adaptive buffer).
const READ_MAX: usize = 64 * 1024;
/// The longest chunk-size line or trailer section accepted.
const MAX_LINE: usize = 4 * 1024;

/// A pooled connection owned by one exchange at a time. Boxed: the TLS state makes it large,
/// and it moves between the pool, the request's future and the response body.
pub struct InlineConn(Box<Conn>);

pub struct Conn {
    io: TokioIo<ConnIo>,
    /// Bytes read but not yet consumed; empty between exchanges.
    buf: BytesMut,
    /// The request head being written; kept to save an allocation per request.
    head: Vec<u8>,
    pub(crate) since: Instant,
}

impl std::ops::Deref for InlineConn {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl std::ops::DerefMut for InlineConn {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.0
    }
}

impl InlineConn {
    pub fn new(io: ConnIo) -> Self {
        InlineConn(Box::new(Conn {
            io: TokioIo::new(io),
            buf: BytesMut::with_capacity(READ_CHUNK),
            head: Vec::with_capacity(512),
            since: Instant::now(),
        }))
    }
}

impl Conn {
    /// Is an idle connection still usable? A backend that closed it (or sent something
    /// unasked) makes it readable. Tokio remembers readiness, so this rarely costs a syscall.
    pub fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        matches!(
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.buf),
            Poll::Pending
        ) && self.buf.is_empty()
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        self.poll_fill_up_to(cx, READ_CHUNK)
    }

    /// Read what is there, with room for about `want` bytes: a large body streams in larger
    /// reads (fewer syscalls), a head or small body keeps the buffer small.
    fn poll_fill_up_to(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<std::io::Result<usize>> {
        let want = want.clamp(READ_CHUNK, READ_MAX);
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// Can this request take the fast path?
pub fn eligible(req: &Request<super::http_client::UpBody>) -> bool {
    req.method() != Method::CONNECT
        && http_body::Body::is_end_stream(req.body())
        && !req.headers().contains_key(header::UPGRADE)
}

/// Why an exchange on a reused connection failed: a connection the backend had closed
/// before reading the request can be tried again.
pub enum Failed {
    /// Nothing of a response arrived: an idempotent request may go again elsewhere.
    BeforeResponse(UpstreamError),
    Other(UpstreamError),
}

/// Write the request head and read the response head on `conn`.
pub async fn exchange(
    conns: &Arc<Conns>,
    mut conn: InlineConn,
    req: &Head<'_>,
) -> Result<Response<UpstreamBody>, Failed> {
    let mut head = std::mem::take(&mut conn.head);
    head.clear();
    write_head(&mut head, req, conns.authority().as_str());
    let written = conn.io.write_all(&head).await;
    conn.head = head;
    if let Err(e) = written {
        return Err(Failed::BeforeResponse(UpstreamError::Io(e)));
    }
    if let Err(e) = conn.io.flush().await {
        return Err(Failed::BeforeResponse(UpstreamError::Io(e)));
    }
    let head_only = *req.method == Method::HEAD;
    loop {
        // Read until a whole head is in the buffer.
        let parsed = loop {
            // Parsed in a plain function: the header array stays off this future.
            if let Some(p) = try_parse(&conn.buf).map_err(Failed::Other)? {
                break p;
            }
            let nothing_yet = conn.buf.is_empty();
            match conn.fill().await {
                Ok(0) if nothing_yet => {
                    return Err(Failed::BeforeResponse(UpstreamError::Protocol(
                        "connection closed before the response".into(),
                    )))
                }
                Ok(0) => {
                    return Err(Failed::Other(UpstreamError::Protocol(
                        "connection closed in the response head".into(),
                    )))
                }
                Ok(_) => {}
                Err(e) if nothing_yet => return Err(Failed::BeforeResponse(UpstreamError::Io(e))),
                Err(e) => return Err(Failed::Other(UpstreamError::Io(e))),
            }
        };
        let (head_len, mut resp, framing) = parsed;
        conn.buf.advance(head_len);
        let status = resp.status();
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Failed::Other(UpstreamError::Protocol(
                    "101 Switching Protocols without an upgrade request".into(),
                )));
            }
            continue; // 100 Continue, 103 Early Hints: the real answer follows
        }
        let no_body =
            head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        // A body read to the close leaves nothing to reuse.
        let reusable = framing.keep_alive && (no_body || !matches!(framing.length, Length::Close));
        let state = if no_body {
            State::Done
        } else {
            match framing.length {
                Length::Fixed(0) => State::Done,
                Length::Fixed(n) if (conn.buf.len() as u64) >= n => {
                    // The whole body came with the head: the connection is free at once. A
                    // small body is copied out, so the connection keeps its buffer to itself.
                    let n = n as usize;
                    let body = if n <= 4096 {
                        let b = Bytes::copy_from_slice(&conn.buf[..n]);
                        conn.buf.advance(n);
                        b
                    } else {
                        conn.buf.split_to(n).freeze()
                    };
                    State::Full(Some(body))
                }
                Length::Fixed(n) => State::Length(n),
                Length::Chunked => State::Chunked(Chunk::Size),
                Length::Close => State::Eof,
            }
        };
        let mut body = UpstreamBodyInline {
            state,
            conn: Some(conn),
            conns: conns.clone(),
            reusable,
        };
        if matches!(body.state, State::Done | State::Full(_)) {
            body.finish();
        }
        *resp.body_mut() = UpstreamBody::Inline(body);
        return Ok(resp);
    }
}
