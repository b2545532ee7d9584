//! The fast path for the commonest upstream exchange: an HTTP/1.1 request without a body
//! (GET, HEAD, DELETE…), written and answered by the request's own task on a pooled
//! connection. hyper's client runs each connection as a task of its own and hands requests
//! and responses to it over channels, which costs two task wake-ups and several copies per
//! request; here the request head is one write and the response head one parse, and a body
//! that came with the head is answered from memory with the connection already back in the
//! pool. Everything else (request bodies, upgrades, HTTP/2) goes through hyper.

use super::client::ConnIo;
use super::conns::{Conns, UpstreamError};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

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
pub fn eligible(req: &Request<super::client::UpBody>) -> bool {
    req.method() != Method::CONNECT
        && http_body::Body::is_end_stream(req.body())
        && !req.headers().contains_key(header::UPGRADE)
}

/// A body-less HTTP/1.1 request head, borrowed. The proxy sends its copy of the downstream
/// request this way: nothing is built, and nothing cloned for a possible retry.
pub struct Head<'a> {
    pub method: &'a Method,
    /// Origin-form target: `/path?query`.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// Does `headers` have a Host? Without one, the backend's authority is sent.
    pub has_host: bool,
    /// Written after `headers` (veer's `X-Forwarded-*`): they never go into the map, which
    /// saves an insert (a hash and a probe) each.
    pub extra: &'a [(&'static HeaderName, HeaderValue)],
}

impl<'a> Head<'a> {
    /// The head of a request that already has all it sends (a Host among its headers).
    pub fn of(req: &'a Request<super::client::UpBody>) -> Self {
        Head {
            method: req.method(),
            target: req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            headers: req.headers(),
            has_host: true,
            extra: &[],
        }
    }
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

/// A whole response head, if the buffer holds one.
fn try_parse(buf: &BytesMut) -> Result<Option<Parsed>, UpstreamError> {
    // Uninitialised: filling 100 empty headers per response costs more than parsing five.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => parse_head(&resp, buf, len).map(Some),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err(UpstreamError::Protocol("response head too large".into()))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(UpstreamError::Protocol(e.to_string())),
    }
}

fn write_head(out: &mut Vec<u8>, req: &Head<'_>, default_host: &str) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.has_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(default_host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let line = |out: &mut Vec<u8>, k: &HeaderName, v: &HeaderValue| {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    for (k, v) in req.headers {
        line(out, k, v);
    }
    for (k, v) in req.extra {
        line(out, k, v);
    }
    // A body-less request of a method that usually has one says so, as hyper does.
    if matches!(*req.method, Method::POST | Method::PUT | Method::PATCH)
        && !req.headers.contains_key(header::CONTENT_LENGTH)
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

enum Length {
    Fixed(u64),
    Chunked,
    Close,
}

struct Framing {
    length: Length,
    keep_alive: bool,
}

type Parsed = (usize, Response<UpstreamBody>, Framing);

fn parse_head(
    r: &httparse::Response<'_, '_>,
    buf: &BytesMut,
    len: usize,
) -> Result<Parsed, UpstreamError> {
    let bad = |m: &str| UpstreamError::Protocol(m.to_string());
    let status = StatusCode::from_u16(r.code.unwrap_or(0)).map_err(|_| bad("bad status"))?;
    let version = match r.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Header values are slices of one shared copy of the head, not one allocation each.
    let shared = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let mut length = None::<u64>;
    let mut length_repeated = false;
    let mut chunked = false;
    let mut has_te = false;
    let mut keep_alive = version == Version::HTTP_11;
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("bad header name"))?;
        let start = h.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(shared.slice(start..start + h.value.len()))
            .map_err(|_| bad("bad header value"))?;
        if name == header::CONTENT_LENGTH {
            // Every line, and every item of a list (`5, 5`), must be the same number: any
            // other answer cannot be framed, and guessing would truncate or hang (as hyper).
            for item in value.as_bytes().split(|&b| b == b',') {
                let n =
                    content_length(item.trim_ascii()).ok_or_else(|| bad("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("conflicting content-length"));
                }
                length_repeated |= length.is_some();
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            has_te = true;
            // Only a final `chunked` frames the body; anything else reads to the close.
            chunked = value.to_str().ok().is_some_and(|s| {
                s.rsplit(',')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            });
        } else if name == header::CONNECTION {
            // Only close and keep-alive (the usual case): read here and dropped, so the
            // hop-by-hop pass has nothing to do. A Connection naming other headers is kept
            // for that pass to act on.
            let mut only_ours = true;
            if let Ok(s) = value.to_str() {
                for t in s.split(',').map(str::trim) {
                    if t.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if t.eq_ignore_ascii_case("keep-alive") {
                        keep_alive |= version == Version::HTTP_10;
                    } else {
                        only_ours = false;
                    }
                }
            }
            if only_ours {
                continue;
            }
        } else if name.as_str() == "keep-alive" {
            continue; // hop-by-hop, and its parameters mean nothing to veer
        }
        headers.append(name, value);
    }
    if let (true, Some(n)) = (length_repeated, length) {
        // Relayed as the one value it is: not every client takes a list.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let length = if has_te {
        // An HTTP/1.0 message cannot be chunked: its framing is faulty (RFC 9112 §6.1).
        if version == Version::HTTP_10 {
            return Err(bad("transfer-encoding in an HTTP/1.0 response"));
        }
        // With a Content-Length as well, the transfer coding frames the body (RFC 9112
        // §6.3; the hop-by-hop pass drops the Content-Length before relaying), and a backend
        // that sent both is not trusted with the connection afterwards.
        if length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Length::Chunked
        } else {
            Length::Close
        }
    } else {
        match length {
            Some(n) => Length::Fixed(n),
            None => Length::Close,
        }
    };
    let mut resp = Response::new(UpstreamBody::Empty);
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok((len, resp, Framing { length, keep_alive }))
}

/// Make a Content-Length said more than once (`5, 5`, or two lines, which the parser
/// accepted only as the same number) one line with the one value, as [`parse_head`] does on
/// the fast path: not every client takes a list. One lookup when it is said once.
pub(crate) fn single_content_length(h: &mut HeaderMap) {
    let mut values = h.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), more) = (values.next(), values.next().is_some()) else {
        return;
    };
    if !more && !first.as_bytes().contains(&b',') {
        return;
    }
    let n = first
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .and_then(|d| content_length(d.trim_ascii()));
    if let Some(n) = n {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// A Content-Length value: digits only (no sign, no spaces inside), fitting in a u64.
fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

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

enum State {
    /// The whole body, already read.
    Full(Option<Bytes>),
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    Eof,
    Done,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers, then the blank line.
    Trailers,
}

/// A fast-path response body: it owns the connection until the body ends, then puts it back
/// in the pool (or closes it when the exchange cannot be trusted to have left it clean).
pub struct UpstreamBodyInline {
    state: State,
    conn: Option<InlineConn>,
    conns: Arc<Conns>,
    reusable: bool,
}

impl std::fmt::Debug for UpstreamBodyInline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamBodyInline")
    }
}

impl UpstreamBodyInline {
    /// The body has ended: give the connection back if it is clean.
    fn finish(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.reusable && c.buf.is_empty() {
                self.conns.check_in_inline(c);
            }
        }
        if !matches!(self.state, State::Full(Some(_))) {
            self.state = State::Done;
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None; // closes it
        self.state = State::Done;
        Poll::Ready(Some(Err(e.into())))
    }

    /// Read more, failing on an early close.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let want = match &self.state {
            State::Length(rem) => usize::try_from(*rem).unwrap_or(READ_MAX),
            State::Chunked(Chunk::Data(rem)) => usize::try_from(*rem).unwrap_or(READ_MAX),
            _ => READ_CHUNK,
        };
        let Some(c) = self.conn.as_mut() else {
            return Poll::Ready(Err("connection gone".into()));
        };
        match ready!(c.poll_fill_up_to(cx, want)) {
            Ok(0) => Poll::Ready(Err("backend closed the connection mid-body".into())),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl Body for UpstreamBodyInline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        loop {
            match &mut me.state {
                State::Done => return Poll::Ready(None),
                State::Full(b) => {
                    let b = b.take();
                    me.state = State::Done;
                    return Poll::Ready(b.map(|b| Ok(Frame::data(b))));
                }
                State::Length(0) => {
                    me.finish();
                    return Poll::Ready(None);
                }
                State::Length(rem) => {
                    let buf = &mut me.conn.as_mut().expect("conn while reading").buf;
                    if !buf.is_empty() {
                        let n = (*rem).min(buf.len() as u64);
                        let data = buf.split_to(n as usize).freeze();
                        *rem -= n;
                        if *rem == 0 {
                            me.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if let Err(e) = ready!(me.poll_more(cx)) {
                        return me.fail(e);
                    }
                }
                State::Eof => {
                    let Some(c) = me.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if !c.buf.is_empty() {
                        let data = c.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(c.poll_fill_up_to(cx, READ_MAX)) {
                        Ok(0) => {
                            me.conn = None;
                            me.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return me.fail(e),
                    }
                }
                State::Chunked(step) => {
                    let step = *step;
                    match me.poll_chunk(step, cx) {
                        Poll::Ready(Ok(Some(frame))) => return Poll::Ready(Some(Ok(frame))),
                        Poll::Ready(Ok(None)) => {}
                        Poll::Ready(Err(e)) => return me.fail(e),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.state,
            State::Done | State::Full(None) | State::Length(0)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            State::Full(None) | State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}

impl UpstreamBodyInline {
    /// One step of the chunked decoder: a frame, or `None` to go round again (state moved).
    fn poll_chunk(
        &mut self,
        step: Chunk,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, BoxError>> {
        let buf = &mut self.conn.as_mut().ok_or("connection gone")?.buf;
        match step {
            Chunk::Size => {
                if let Some(end) = find(buf, b"\r\n") {
                    let size = chunk_size(&buf[..end]).ok_or("bad chunk size")?;
                    buf.advance(end + 2);
                    self.state = State::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                    return Poll::Ready(Ok(None));
                }
                if buf.len() > MAX_LINE {
                    return Poll::Ready(Err("chunk size line too long".into()));
                }
            }
            Chunk::Data(rem) => {
                if !buf.is_empty() {
                    let n = rem.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = State::Chunked(if n == rem {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(rem - n)
                    });
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
            }
            Chunk::DataEnd => {
                if buf.len() >= 2 {
                    if &buf[..2] != b"\r\n" {
                        return Poll::Ready(Err("missing CRLF after chunk".into()));
                    }
                    buf.advance(2);
                    self.state = State::Chunked(Chunk::Size);
                    return Poll::Ready(Ok(None));
                }
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
                // httparse says where the section ends (it also takes a bare LF as a line
                // end): the body ends there, not at the next CRLF CRLF further on.
                let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let parsed = match httparse::parse_headers(buf, &mut raw) {
                    Ok(httparse::Status::Complete((n, hs))) => {
                        let mut trailers = HeaderMap::new();
                        for h in hs {
                            if let (Ok(k), Ok(v)) = (
                                HeaderName::from_bytes(h.name.as_bytes()),
                                HeaderValue::from_bytes(h.value),
                            ) {
                                trailers.append(k, v);
                            }
                        }
                        Some((n, trailers))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(_) => return Poll::Ready(Err("bad trailers".into())),
                };
                if let Some((n, trailers)) = parsed {
                    buf.advance(n);
                    self.finish();
                    return Poll::Ready(Ok(Some(Frame::trailers(trailers))));
                }
                if buf.len() > MAX_LINE {
                    return Poll::Ready(Err("trailers too long".into()));
                }
            }
        }
        ready!(self.poll_more(cx))?;
        Poll::Ready(Ok(None))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use crate::upstream::testing::{backend, client, exchange, get, request, until, Reply};
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_that_came_with_the_head_frees_the_connection_at_once() {
        let b = backend(|_| Reply::ok("hello")).await;
        let c = client(b.addr);
        let (resp, _) = c.send(get(&c)).await.unwrap();
        // Back in the pool before the body is even read.
        assert_eq!(c.conns.idle_count(), 1);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        for _ in 0..3 {
            assert_eq!(exchange(&c, get(&c)).await.1, "hello");
        }
        assert_eq!(b.accepted(), 1);
    }

    #[tokio::test]
    async fn the_request_head_carries_method_path_and_headers() {
        let b = backend(|head| {
            let echo = head.replace("\r\n", "|");
            Reply::ok(&echo)
        })
        .await;
        let c = client(b.addr);
        let req = http::Request::get(format!("http://{}/a/b?x=1", c.authority))
            .header("x-test", "yes")
            .body(crate::upstream::client::UpBody::empty())
            .unwrap();
        let (_, echoed, _) = exchange(&c, req).await;
        assert!(echoed.starts_with("GET /a/b?x=1 HTTP/1.1|"), "{echoed}");
        assert!(echoed.contains("x-test: yes"), "{echoed}");
        assert!(
            echoed.contains(&format!("host: {}", c.authority)),
            "{echoed}"
        );
        // A body-less POST says its length.
        let (_, echoed, _) = exchange(&c, request(&c, "POST")).await;
        assert!(echoed.contains("content-length: 0"), "{echoed}");
    }

    #[tokio::test]
    async fn chunked_bodies_and_trailers_are_decoded_and_the_connection_reused() {
        let b = backend(|_| {
            Reply::raw(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                 5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
            )
        })
        .await;
        let c = client(b.addr);
        for _ in 0..3 {
            let (resp, body, trailers) = exchange(&c, get(&c)).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(body, "hello world");
            assert_eq!(trailers.unwrap()["x-checksum"], "42");
        }
        assert_eq!(b.accepted(), 1);
    }

    #[tokio::test]
    async fn a_chunked_body_arriving_in_pieces_is_streamed() {
        let b = backend(|_| {
            let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for i in 0..200 {
                let piece = format!("line {i}\n");
                r.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
            }
            r.extend_from_slice(b"0\r\n\r\n");
            Reply::raw(r)
        })
        .await;
        let c = client(b.addr);
        let (_, body, trailers) = exchange(&c, get(&c)).await;
        assert_eq!(body.lines().count(), 200);
        assert!(body.ends_with("line 199\n"));
        assert!(trailers.is_none());
        assert_eq!(exchange(&c, get(&c)).await.1.lines().count(), 200);
        assert_eq!(b.accepted(), 1);
    }

    #[tokio::test]
    async fn a_large_body_is_streamed_and_then_the_connection_reused() {
        let big = "x".repeat(300_000);
        let b = backend(move |_| Reply::ok(&big)).await;
        let c = client(b.addr);
        for _ in 0..2 {
            assert_eq!(exchange(&c, get(&c)).await.1.len(), 300_000);
        }
        assert_eq!(b.accepted(), 1);
    }

    #[tokio::test]
    async fn an_abandoned_body_closes_its_connection() {
        let big = "x".repeat(300_000);
        let b = backend(move |_| Reply::ok(&big)).await;
        let c = client(b.addr);
        let (resp, _) = c.send(get(&c)).await.unwrap();
        drop(resp);
        until("the abandoned connection to close", || b.closed() == 1).await;
        assert_eq!(exchange(&c, get(&c)).await.1.len(), 300_000);
        assert_eq!(b.accepted(), 2);
    }

    #[tokio::test]
    async fn a_body_without_length_is_read_to_the_close_and_not_reused() {
        let b = backend(|_| Reply::raw("HTTP/1.1 200 OK\r\n\r\nuntil the end").then_close()).await;
        let c = client(b.addr);
        for _ in 0..2 {
            assert_eq!(exchange(&c, get(&c)).await.1, "until the end");
        }
        assert_eq!(b.accepted(), 2);
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_whatever_the_length_says() {
        let b = backend(|head| {
            if head.starts_with("HEAD") {
                Reply::raw("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            } else if head.starts_with("DELETE") {
                Reply::raw("HTTP/1.1 204 No Content\r\n\r\n")
            } else {
                Reply::raw("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n")
            }
        })
        .await;
        let c = client(b.addr);
        for m in ["HEAD", "DELETE", "GET", "HEAD"] {
            let (resp, body, _) = exchange(&c, request(&c, m)).await;
            assert_eq!(body, "", "{m}");
            if m == "HEAD" {
                assert_eq!(resp.headers()["content-length"], "5");
            }
        }
        assert_eq!(b.accepted(), 1);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let b = backend(|_| {
            Reply::raw(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
                 HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone",
            )
        })
        .await;
        let c = client(b.addr);
        let (resp, body, _) = exchange(&c, get(&c)).await;
        assert_eq!(resp.status(), 201);
        assert_eq!(body, "done");
    }

    #[tokio::test]
    async fn connection_close_and_http_1_0_answers_are_not_reused() {
        let b = backend(|head| {
            if head.contains("/old") {
                Reply::raw("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
            } else {
                Reply::raw("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            }
        })
        .await;
        let c = client(b.addr);
        assert_eq!(exchange(&c, get(&c)).await.1, "ok");
        let old = http::Request::get(format!("http://{}/old", c.authority))
            .body(crate::upstream::client::UpBody::empty())
            .unwrap();
        assert_eq!(exchange(&c, old).await.1, "ok");
        assert_eq!(c.conns.idle_count(), 0);
        assert_eq!(exchange(&c, get(&c)).await.1, "ok");
        assert_eq!(b.accepted(), 3);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_backend_closed_is_replaced_without_an_error() {
        let b = backend(|_| Reply::ok("ok").then_close()).await;
        let c = client(b.addr);
        assert_eq!(exchange(&c, get(&c)).await.1, "ok");
        until("the backend to close", || b.closed() == 1).await;
        for _ in 0..3 {
            assert_eq!(exchange(&c, get(&c)).await.1, "ok");
        }
        assert_eq!(b.accepted(), 4);
    }

    /// A backend that answers the first request, then closes the second without a word.
    async fn closes_second_request() -> crate::upstream::testing::Backend {
        let n = std::sync::atomic::AtomicUsize::new(0);
        backend(move |_| {
            if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                Reply::raw("").then_close()
            } else {
                Reply::ok("ok")
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_get_on_a_connection_closed_without_answer_is_sent_again() {
        // The backend answers the first request, then closes the next one without a word
        // (as a keep-alive timeout racing a request does).
        let b = closes_second_request().await;
        let c = client(b.addr);
        assert_eq!(exchange(&c, get(&c)).await.1, "ok");
        assert_eq!(exchange(&c, get(&c)).await.1, "ok");
        assert_eq!(b.accepted(), 2);
        // A POST is never sent twice: the same close is an error.
        let b = closes_second_request().await;
        let c = client(b.addr);
        assert_eq!(exchange(&c, request(&c, "POST")).await.1, "ok");
        assert!(c.send(request(&c, "POST")).await.is_err());
    }

    #[tokio::test]
    async fn malformed_answers_are_errors_not_panics() {
        for bad in [
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            "HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        ] {
            let b = backend(move |_| Reply::raw(bad).then_close()).await;
            let c = client(b.addr);
            match c.send(get(&c)).await {
                Err(_) => {}
                Ok((resp, _)) => assert!(
                    resp.into_body().collect().await.is_err(),
                    "accepted {bad:?}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn connection_headers_about_this_hop_are_dropped_others_left_for_stripping() {
        let b = backend(|head| {
            if head.contains("/named") {
                Reply::raw(
                    "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nx-secret: 1\r\n\
                     content-length: 2\r\n\r\nok",
                )
            } else {
                Reply::raw(
                    "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\
                     content-length: 2\r\n\r\nok",
                )
            }
        })
        .await;
        let c = client(b.addr);
        let (resp, _, _) = exchange(&c, get(&c)).await;
        assert!(resp.headers().get("connection").is_none());
        assert!(resp.headers().get("keep-alive").is_none());
        assert_eq!(resp.headers()["content-length"], "2");
        let named = http::Request::get(format!("http://{}/named", c.authority))
            .body(crate::upstream::client::UpBody::empty())
            .unwrap();
        let (resp, _, _) = exchange(&c, named).await;
        // Kept so the proxy's hop-by-hop pass removes what it names.
        assert_eq!(resp.headers()["connection"], "keep-alive, x-secret");
        assert_eq!(b.accepted(), 1);
    }
}

/// A chunk-size line without its CRLF (RFC 9112 §7.1): hex digits, then extensions, which
/// are ignored (§7.1.1). No sign, no leading whitespace, no bare CR or other control byte:
/// a size read more loosely than the next hop reads it is a way to split a response.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let size = line[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(16)?
            .checked_add((d as char).to_digit(16)?.into())
    });
    let ext = &line[digits..];
    let ext = &ext[ext.iter().take_while(|&&b| b == b' ' || b == b'\t').count()..];
    let clean = ext.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    (digits > 0 && clean && (ext.is_empty() || ext[0] == b';')).then_some(size?)
}

#[cfg(test)]
#[path = "inline_prop.rs"]
mod props;
