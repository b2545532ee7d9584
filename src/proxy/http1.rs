//! veer's own HTTP/1.1 server loop for the common downstream request, so that an idle
//! keep-alive connection holds no buffer (nginx's way): it waits for readability with
//! nothing allocated, takes a read buffer from a small per-thread pool when bytes arrive,
//! and gives it back once the request's head has been read and its answer written.
//!
//! The loop serves only a plain HTTP/1.1 request without a body: no `Content-Length`,
//! `Transfer-Encoding`, `Upgrade`, `Expect` or `TE`, not CONNECT, a head that fits one
//! buffer. Anything else (a body, an upgrade, HTTP/1.0, h2c's preface, a head httparse or
//! `http` refuses, one too large) hands the connection, with the bytes read so far, to
//! hyper for the rest of its life ([`super::server::serve_connection`]), which answers
//! exactly as it always has; so the framing and smuggling surface stays hyper's, and what is
//! read here is what hyper would read (the same httparse, the same header limit). The answer
//! is written as hyper writes it (`role.rs`'s server encoder): the same status line, header
//! order and spelling, `date`, `content-length`/`transfer-encoding` rules and `connection:
//! close` when the connection ends after it.
//!
//! Timeouts as in [`super::server`]: the first head is due within `header_read_timeout` of
//! the connection's start, each later one from its first byte; an idle connection is closed
//! after `idle_timeout`; none runs while a request is being answered. No timer per
//! connection: its deadline is an atomic in a slot of the timer all connections share
//! ([`super::activity::IdleTimers`]), which the request path moves with a store, never a
//! lock. Shutdown gives an idle connection SHUTDOWN_LINGER for a request already on its way,
//! lets a partial head be read and a request in flight finish, each answer saying
//! `connection: close`.
//!
//! What an idle connection holds (issue 15; x86_64, tokio 1.54): its task's cell, 256 bytes
//! (tokio's 104 around the 136-byte future: [`Conn`] and a reference); its socket's
//! registration, tokio's `ScheduledIo`, 256 bytes (128 aligned, in an `Arc`); its timer slot,
//! 64 bytes (and a 16-byte entry in the sweeper's heap). After its first request, the request
//! path's context no more: it goes back to a per-thread pool when the connection goes idle,
//! and the next request takes one from there ([`ConnCtx`]: 128 bytes, and the formatted
//! client address, about 40; a TLS connection's, made at its accept, stays with it).

use super::accept::ConnGuard;
use super::activity::{IdleTimers, SlotRef};
use super::body::{ProxyBody, RequestBody};
use super::{handle, ConnCtx, ConnInfo};
use crate::config::Config;
use crate::runtime::Live;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The read buffer a connection takes while it reads a head (hyper's first read size).
const BUF: usize = 8192;
/// Buffers (and header maps) each worker thread keeps for reuse.
const POOL: usize = 64;
/// What each pool keeps when its thread parks ([`trim_pools`]): a burst of clients grows the
/// pools to POOL, and that memory would otherwise stay (issue 15: 0.5 KiB of each idle
/// connection at 1,000 clients); a steady load of up to KEEP requests at once frees nothing.
const KEEP: usize = 16;
/// hyper's limit on request header lines (more get its 431).
const MAX_HEADERS: usize = 100;
/// Body bytes copied beside the head into one write; larger frames are written as they are.
const COALESCE: usize = 16 * 1024;

/// A downstream socket that can say it is readable without being handed a buffer.
pub(super) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Socket for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_ref();
        // Plaintext (or a close_notify) rustls already holds is readable now.
        if !tls.wants_read() {
            return Poll::Ready(Ok(()));
        }
        tcp.poll_read_ready(cx)
    }
}

// ---------------------------------------------------------------------------------------
// Per-thread pools: no lock, and a busy connection costs no allocation for its buffers.

thread_local! {
    static BUFS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static WBUFS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    /// Request contexts of connections gone idle, for the next connection's request.
    static CTXS: RefCell<Vec<ConnCtx>> = const { RefCell::new(Vec::new()) };
}

/// The worker thread is about to park (nothing to run; tokio's `on_thread_park`): what its
/// pools hold beyond KEEP of each goes back to the allocator. A pool is only as large as the
/// most requests served at once since the last park, so this frees memory once a burst is
/// over, and costs a length check per pool while the load stays within KEEP.
pub fn trim_pools() {
    fn trim<T>(pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>) {
        pool.with_borrow_mut(|p| p.truncate(KEEP));
    }
    trim(&BUFS);
    trim(&MAPS);
    trim(&WBUFS);
    trim(&CTXS);
}

fn take_buf() -> BytesMut {
    BUFS.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(BUF))
}

/// Back to the pool if nothing else holds part of it (a request's head is dropped by now).
fn give_buf(mut b: BytesMut) {
    b.clear();
    if b.try_reclaim(BUF) {
        BUFS.with_borrow_mut(|p| {
            if p.len() < POOL {
                p.push(b)
            }
        });
    }
}

fn take_map() -> HeaderMap {
    MAPS.with_borrow_mut(Vec::pop).unwrap_or_default()
}

fn give_map(mut m: HeaderMap) {
    m.clear();
    // A map grown by an unusual answer is not kept.
    if m.capacity() <= 64 {
        MAPS.with_borrow_mut(|p| {
            if p.len() < POOL {
                p.push(m)
            }
        });
    }
}

fn take_wbuf() -> Vec<u8> {
    WBUFS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(1024))
}

fn give_wbuf(mut w: Vec<u8>) {
    w.clear();
    if w.capacity() <= COALESCE + BUF {
        WBUFS.with_borrow_mut(|p| {
            if p.len() < POOL {
                p.push(w)
            }
        });
    }
}

/// The `date` value, formatted once a second per thread (as hyper does).
fn extend_date(dst: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == text.len() {
                text.copy_from_slice(s.as_bytes());
                *at = secs;
            }
        }
        dst.extend_from_slice(text);
    });
}

// ---------------------------------------------------------------------------------------
// The connection loop.

/// What the request path knows of the connection, made at its first request: a plain
/// connection that never sends one costs no context (and no formatted client address).
pub(super) enum Ctx {
    Plain(Arc<Live>, SocketAddr),
    Ready(ConnCtx),
}

impl Ctx {
    fn rt(&self) -> &Arc<Live> {
        match self {
            Ctx::Plain(rt, _) => rt,
            Ctx::Ready(c) => &c.0,
        }
    }

    fn peer(&self) -> SocketAddr {
        match self {
            Ctx::Plain(_, peer) => *peer,
            Ctx::Ready(c) => c.1.peer,
        }
    }

    /// The context for a request: a pooled one (made at some earlier request on this
    /// thread) filled in with this connection's address, or a new one.
    fn get(&mut self) -> ConnCtx {
        match self {
            Ctx::Ready(c) => c.clone(),
            Ctx::Plain(rt, peer) => {
                // A pooled context nothing else holds, filled in with this connection's
                // address, else a new one.
                let c = CTXS
                    .with_borrow_mut(Vec::pop)
                    .and_then(|mut c| {
                        let (r, info) = Arc::get_mut(&mut c)?;
                        if !Arc::ptr_eq(r, rt) {
                            *r = rt.clone();
                        }
                        // Formatted again only for another address (mostly the same few
                        // clients, or one balancer in front).
                        if info.peer.ip() != peer.ip() {
                            info.client_ip = super::headers::client_ip_value(peer.ip());
                        }
                        info.peer = *peer;
                        Some(c)
                    })
                    .unwrap_or_else(|| Arc::new((rt.clone(), ConnInfo::new(*peer, "http"))));
                *self = Ctx::Ready(c.clone());
                c
            }
        }
    }

    /// Going idle: the context goes back to the thread's pool if nothing else holds it (a
    /// mirror copy or a body still in flight may), so an idle connection keeps only the
    /// runtime and its address (issue 15: the context and the formatted address were
    /// 0.17 KiB of each idle keep-alive connection), and the next request costs no
    /// allocation.
    fn release(&mut self) {
        let Ctx::Ready(c) = self else { return };
        // A TLS connection's context (made at its accept, with its SNI name) is its own.
        if Arc::strong_count(c) != 1 || c.1.scheme != "http" || c.1.tls.is_some() {
            return;
        }
        let (rt, peer) = (c.0.clone(), c.1.peer);
        let Ctx::Ready(c) = std::mem::replace(self, Ctx::Plain(rt, peer)) else {
            return;
        };
        CTXS.with_borrow_mut(|p| {
            if p.len() < POOL {
                p.push(c)
            }
        });
    }

    fn into_parts(self) -> (Arc<Live>, ConnInfo) {
        match self {
            Ctx::Plain(rt, peer) => (rt, ConnInfo::new(peer, "http")),
            Ctx::Ready(c) => Arc::try_unwrap(c).unwrap_or_else(|c| (*c).clone()),
        }
    }
}

/// One downstream HTTP/1.1 connection: all it holds while idle. It is the connection task's
/// whole future (with `serve`'s few bytes), so this is what an idle connection costs besides
/// its socket's registration: keep it small (`a_plain_connection_task_fits_256_bytes`).
pub(super) struct Conn<S> {
    io: S,
    ctx: Ctx,
    /// The connection limit's place and the shared connection state.
    guard: ConnGuard,
    /// The config of the connection's start, shared (a copy of the server settings would
    /// cost every connection its own allocations).
    config: Arc<Config>,
    /// The connection's deadline, in the timer shared by all connections.
    slot: SlotRef,
    /// Requests have been answered on it (an HTTP/2 preface is only one at the start).
    served: bool,
    /// An answer has been written and no byte of the next head has been read: that head's
    /// clock starts at its first byte (the first head's, at the connection's start).
    idle: bool,
    /// Shutdown found it idle: it closes at the end of SHUTDOWN_LINGER.
    lingering: bool,
}

/// What follows the requests whose bytes have come.
enum Next {
    Idle,
    Close,
    /// A request for hyper, with the bytes read so far.
    Hyper(BytesMut),
}

impl<S: Socket> Conn<S> {
    /// A new connection: its first head is due within header_read_timeout.
    pub(super) fn new(io: S, ctx: Ctx, guard: ConnGuard) -> Self {
        let config = ctx.rt().config();
        let s = &config.server;
        let check = s
            .header_read_timeout
            .min(s.idle_timeout)
            .max(Duration::from_millis(1));
        let slot = guard
            .0
            .timers
            .register(Instant::now() + s.header_read_timeout, check);
        Conn {
            io,
            ctx,
            guard,
            config,
            slot,
            served: false,
            idle: false,
            lingering: false,
        }
    }

    fn timers(&self) -> &Arc<IdleTimers> {
        &self.guard.0.timers
    }

    /// Wait with nothing held: a buffer with the next request's first bytes, or `None` when
    /// the connection is to close (the client closed it, its deadline passed, shutdown).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<BytesMut>> {
        match self.io.poll_readable(cx) {
            Poll::Ready(Err(_)) => return Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let mut b = take_buf();
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut b) {
                    Poll::Ready(Ok(n)) if n > 0 => return Poll::Ready(Some(b)),
                    Poll::Ready(_) => {
                        give_buf(b);
                        return Poll::Ready(None);
                    }
                    // Not readable after all (the socket will wake the task).
                    Poll::Pending => give_buf(b),
                }
            }
            Poll::Pending => {}
        }
        if !self.lingering && self.guard.0.closing.is_cancelled() {
            // A request may already be on its way (a keep-alive client does not know yet):
            // it gets SHUTDOWN_LINGER to arrive, and is answered with `Connection: close`,
            // as on the hyper path.
            self.lingering = true;
            let at = Instant::now() + super::server::SHUTDOWN_LINGER;
            self.slot.lower(&self.guard.0.timers, at);
        }
        if self.slot.poll_expired(cx) {
            tracing::debug!(peer = %self.ctx.peer(), "connection idle or silent too long; closing");
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Serve the requests whose bytes have come, starting with `b`'s.
    async fn requests(&mut self, mut b: BytesMut) -> Next {
        loop {
            // Read until the head is complete, or it is one for hyper.
            let head = loop {
                match parse(&mut b) {
                    Parsed::Fast(h) => break h,
                    Parsed::Partial if b.len() < BUF => {
                        if self.idle {
                            self.idle = false;
                            let at = Instant::now() + self.config.server.header_read_timeout;
                            self.slot.set(self.timers(), Some(at));
                        }
                        if b.len() == b.capacity() {
                            // A pipelined head at the end of the previous buffer.
                            let mut fresh = take_buf();
                            fresh.extend_from_slice(&b);
                            b = fresh;
                        }
                        // A head half received when shutdown begins is read to its end
                        // (bounded by header_read_timeout) and answered, not cut.
                        let (io, slot) = (&mut self.io, &self.slot);
                        let mut late = false;
                        let more = poll_fn(|cx| {
                            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut b) {
                                // Closed or broken mid-head: hyper says nothing either.
                                Poll::Ready(r) => Poll::Ready(matches!(r, Ok(n) if n > 0)),
                                Poll::Pending if slot.poll_expired(cx) => {
                                    late = true;
                                    Poll::Ready(false)
                                }
                                Poll::Pending => Poll::Pending,
                            }
                        })
                        .await;
                        if late {
                            super::access::refused(&self.ctx.get(), 408, "header_timeout");
                        }
                        if !more {
                            tracing::debug!(peer = %self.ctx.peer(), "request head not received in time, or the client went; closing");
                            give_buf(b);
                            return Next::Close;
                        }
                    }
                    Parsed::Partial | Parsed::Hyper => return Next::Hyper(b),
                }
            };
            self.idle = false;
            self.served = true;
            // No deadline while it is answered.
            self.slot.set(self.timers(), None);
            let ctx = self.ctx.get();
            let go_on = exchange(ctx, &mut self.io, &mut b, head, &self.guard.0.closing).await;
            if !go_on {
                give_buf(b);
                return Next::Close;
            }
            self.idle = true;
            if b.is_empty() {
                self.ctx.release();
            }
            let at = Instant::now() + self.config.server.idle_timeout;
            self.slot.set(self.timers(), Some(at));
            if b.is_empty() {
                give_buf(b);
                return Next::Idle;
            }
        }
    }

    /// hyper serves the rest of the connection, starting with the bytes read so far (its own
    /// timers from now on).
    fn hand_over(self, b: BytesMut) -> Pin<Box<impl Future<Output = ()> + Send>> {
        let Conn {
            io,
            ctx,
            guard,
            config,
            served,
            ..
        } = self;
        let (rt, info) = ctx.into_parts();
        let io = Rewind {
            pre: b.freeze(),
            io,
        };
        Box::pin(async move {
            let closing = guard.0.closing.clone();
            super::server::serve_connection(rt, io, info, &config.server, closing, served).await;
            drop(guard);
        })
    }
}

/// Serve one downstream HTTP/1.1 connection (see the module's doc). This future is the
/// connection's task: while idle it holds the [`Conn`] and a reference, nothing else. (An
/// `async fn` would hold its argument twice: as the argument and as the local it becomes.)
#[allow(clippy::manual_async_fn)] // see above: an `async fn` is 112 bytes larger
pub(super) fn serve<S: Socket>(mut conn: Conn<S>) -> impl Future<Output = ()> + Send {
    async move {
        // Written so that no buffer or answer is held across an await here (each would
        // stay in the task's cell for the connection's life).
        let hyper = loop {
            let serving = match poll_fn(|cx| conn.poll_idle(cx)).await {
                None => return,
                // Boxed: what serving takes (the head, the request's future, the answer)
                // is held only while there is a request; one allocation per request, as
                // hyper's path boxes its request future once.
                Some(b) => Box::pin(conn.requests(b)),
            };
            match serving.await {
                Next::Idle => {}
                Next::Close => return,
                // Boxed too: hyper's connection is large.
                Next::Hyper(b) => break conn.hand_over(b),
            }
        };
        hyper.await
    }
}

/// A request head read here, ready for [`handle`].
struct Head {
    req: Request<RequestBody>,
    keep_alive: bool,
}

// Returned once per head and moved on at once: a box would cost each request an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    /// Not for this loop: hyper reads it (and answers an error as it always has).
    Hyper,
    Fast(Head),
}

/// Read a head off the front of `b` if it is complete and one this loop serves; leaves `b`
/// as it was otherwise.
fn parse(b: &mut BytesMut) -> Parsed {
    const UNINIT: MaybeUninit<httparse::Header<'static>> = MaybeUninit::uninit();
    let mut slots = [UNINIT; MAX_HEADERS];
    let mut ranges = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let base = b.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    // hyper's own parser settings (its defaults).
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, b, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    if req.version != Some(1) {
        return Parsed::Hyper;
    }
    let Ok(method) = Method::from_bytes(req.method.unwrap_or_default().as_bytes()) else {
        return Parsed::Hyper;
    };
    if method == Method::CONNECT {
        return Parsed::Hyper;
    }
    let path = req.path.unwrap_or_default().as_bytes();
    let path_range = (at(path), at(path) + path.len() as u32);
    // Uri parsing drops a `#fragment`, and with it any raw byte beyond ASCII after the `#`:
    // such a target is malformed all the same, so it keeps its bytes (with `#` as `%23`)
    // for the request path's check to answer 400.
    let hidden = !path.is_ascii() && path.contains(&b'#');
    let mut keep_alive = true;
    let n = req.headers.len();
    for (h, r) in req.headers.iter().zip(ranges.iter_mut()) {
        let name = h.name.as_bytes();
        let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        if is("content-length")
            || is("transfer-encoding")
            || is("upgrade")
            || is("expect")
            || is("te")
        {
            return Parsed::Hyper;
        }
        if is("connection") && has_close(h.value) {
            keep_alive = false;
        }
        *r = (
            at(name),
            at(name) + name.len() as u32,
            at(h.value),
            at(h.value) + h.value.len() as u32,
        );
    }
    let rest = b.split_off(len);
    let head = std::mem::replace(b, rest).freeze();
    let slice = |(s, e): (u32, u32)| head.slice(s as usize..e as usize);
    let target = if hidden {
        let raw = &head[path_range.0 as usize..path_range.1 as usize];
        let mut v = Vec::with_capacity(raw.len() + 2);
        for &c in raw {
            match c {
                b'#' => v.extend_from_slice(b"%23"),
                c => v.push(c),
            }
        }
        Bytes::from(v)
    } else {
        slice(path_range)
    };
    let Ok(uri) = Uri::from_maybe_shared(target) else {
        return undo(b, head);
    };
    let mut headers = take_map();
    headers.reserve(n);
    for &(ns, ne, vs, ve) in &ranges[..n] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize]);
        let value = HeaderValue::from_maybe_shared(slice((vs, ve)));
        match (name, value) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => {
                give_map(headers);
                return undo(b, head);
            }
        }
    }
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Fast(Head { req, keep_alive })
}

/// Put a head split off by [`parse`] back in front of what followed it (a rare refusal).
fn undo(b: &mut BytesMut, head: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + b.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(b);
    *b = whole;
    Parsed::Hyper
}

/// Does a `Connection` value carry `close` (hyper's reading: comma-separated tokens)?
fn has_close(v: &[u8]) -> bool {
    std::str::from_utf8(v)
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// Answer one request; true if the connection stays open for the next. While the request
/// is handled, the socket is watched for the client going away (as hyper does), which
/// drops the request; bytes of a pipelined request are kept in `b`.
async fn exchange<S: Socket>(
    ctx: ConnCtx,
    io: &mut S,
    b: &mut BytesMut,
    head: Head,
    closing: &CancellationToken,
) -> bool {
    let method = head.req.method().clone();
    let handling = handle(ctx, head.req);
    tokio::pin!(handling);
    let mut watching = b.is_empty();
    let resp = loop {
        tokio::select! {
            biased;
            resp = &mut handling => break resp,
            r = poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, b)), if watching => {
                match r {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => watching = false,
                }
            }
        }
    };
    // Shutdown began while it was handled: this answer is the connection's last.
    let keep_alive = head.keep_alive && !closing.is_cancelled();
    write_response(io, resp, &method, keep_alive).await
}

/// How the body follows the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 answer of unknown length).
    Close,
}

/// Write an answer as hyper's server would; true if the connection can be reused.
async fn write_response<S: Socket>(
    io: &mut S,
    resp: Response<ProxyBody>,
    method: &Method,
    keep_alive: bool,
) -> bool {
    let (mut parts, mut body) = resp.into_parts();
    let len = if body.is_end_stream() {
        None
    } else {
        Some(body.size_hint().exact())
    };
    if !keep_alive {
        // hyper's `enforce_version` for an HTTP/1.1 peer when keep-alive is off.
        let closes = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_close(v.as_bytes()));
        if !closes {
            parts
                .headers
                .append(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    let mut w = take_wbuf();
    let encoded = encode_head(&mut w, &mut parts, len, method, keep_alive);
    give_map(std::mem::take(&mut parts.headers));
    let Ok((framing, last)) = encoded else {
        give_wbuf(w);
        return false;
    };
    let ok = write_body(io, &mut w, &mut body, framing).await;
    give_wbuf(w);
    ok && !last && framing != Framing::Close
}

/// The body after the head in `w` (written together when the body's first bytes are there).
async fn write_body<S: Socket>(
    io: &mut S,
    w: &mut Vec<u8>,
    body: &mut ProxyBody,
    framing: Framing,
) -> bool {
    let mut left = match framing {
        Framing::Length(0) => return io.write_all(w).await.is_ok() && flush(io).await,
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // What is there now goes out with what is queued; wait only with nothing queued.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !w.is_empty() {
                    if io.write_all(w).await.is_err() || !flush(io).await {
                        return false;
                    }
                    w.clear();
                }
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        match frame {
            None => {
                if framing == Framing::Chunked {
                    w.extend_from_slice(b"0\r\n\r\n");
                } else if framing != Framing::Close && left != 0 {
                    // Shorter than its content-length: the answer is broken off.
                    return false;
                }
                return io.write_all(w).await.is_ok() && flush(io).await;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing the connection");
                return false;
            }
            Some(Ok(frame)) => {
                // Trailers are not sent: this loop serves no request with `TE: trailers`.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if let Framing::Length(_) = framing {
                    if data.len() as u64 > left {
                        tracing::debug!("response body longer than its content-length");
                        return false;
                    }
                    left -= data.len() as u64;
                }
                if framing == Framing::Chunked {
                    w.extend_from_slice(format_args_hex(data.len()).as_slice());
                }
                if w.len() + data.len() <= COALESCE {
                    w.extend_from_slice(&data);
                } else {
                    if write_two(io, w, &data).await.is_err() {
                        return false;
                    }
                    w.clear();
                }
                if framing == Framing::Chunked {
                    w.extend_from_slice(b"\r\n");
                }
                if framing == Framing::Length(0) || left == 0 {
                    // Complete: hyper does not wait for the body's end either.
                    return io.write_all(w).await.is_ok() && flush(io).await;
                }
            }
        }
    }
}

async fn flush<S: Socket>(io: &mut S) -> bool {
    io.flush().await.is_ok()
}

/// `{len:X}\r\n` without an allocation.
fn format_args_hex(mut n: usize) -> HexLine {
    let mut out = HexLine {
        buf: [0; 18],
        start: 18,
    };
    out.start -= 2;
    out.buf[16] = b'\r';
    out.buf[17] = b'\n';
    loop {
        out.start -= 1;
        out.buf[out.start] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out
}

struct HexLine {
    buf: [u8; 18],
    start: usize,
}

impl HexLine {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Write `a` then `b`, vectored where the socket can.
async fn write_two<S: Socket>(io: &mut S, a: &[u8], b: &[u8]) -> io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() || !b.is_empty() {
        let bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &bufs)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The answer's head, as hyper's server encoder writes it (hyper 1.x, `proto/h1/role.rs`,
// lower-case headers): kept the same so a client sees no difference between the two paths.

fn can_chunked(method: &Method, status: StatusCode) -> bool {
    !(method == Method::HEAD
        || method == Method::CONNECT && status.is_success()
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

fn can_have_content_length(method: &Method, status: StatusCode) -> bool {
    !(status.is_informational()
        || method == Method::CONNECT && status.is_success()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

fn content_length_parse(v: &HeaderValue) -> Option<u64> {
    let s = v.to_str().ok()?.trim();
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_chunked(v: &HeaderValue) -> bool {
    v.to_str()
        .ok()
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// Encode the status line and headers into `dst`. `len`: `None` for no body, `Some(None)`
/// for one of unknown length. Returns the body's framing and whether the connection ends
/// after this answer; `Err` where hyper refuses the answer (it then closes the connection).
fn encode_head(
    dst: &mut Vec<u8>,
    parts: &mut http::response::Parts,
    len: Option<Option<u64>>,
    method: &Method,
    keep_alive: bool,
) -> Result<(Framing, bool), ()> {
    let status = parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS || status.is_informational() {
        // No upgrade comes this way, and hyper sends no 1xx as an answer.
        return Err(());
    }
    let mut is_last = !keep_alive;
    let custom_reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if parts.version != Version::HTTP_10 && status == StatusCode::OK && custom_reason.is_none() {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if parts.version == Version::HTTP_10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        match custom_reason {
            Some(r) => dst.extend_from_slice(r.as_bytes()),
            None => dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        dst.extend_from_slice(b"\r\n");
    }
    let http10 = parts.version == Version::HTTP_10;
    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut cur: Option<HeaderName> = None;
    let mut name_written = false;
    let mut must_write_chunked = false;
    let mut prev_len: Option<u64> = None;
    let end_line = |dst: &mut Vec<u8>, name_written: bool, chunked: bool| {
        if name_written {
            dst.extend_from_slice(if chunked { b", chunked\r\n" } else { b"\r\n" });
        }
    };
    for (name, value) in parts.headers.drain() {
        if let Some(n) = name {
            end_line(dst, name_written, must_write_chunked);
            name_written = false;
            cur = Some(n);
        }
        let Some(name) = cur.as_ref() else { continue };
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len && !name_written {
                    return Err(());
                }
                match len {
                    Some(Some(known)) => {
                        if !name_written {
                            framing = Framing::Length(known);
                            dst.extend_from_slice(b"content-length: ");
                            dst.extend_from_slice(value.as_bytes());
                            wrote_len = true;
                            name_written = true;
                        }
                        continue;
                    }
                    Some(None) => {
                        let Some(n) = content_length_parse(&value) else {
                            return Err(());
                        };
                        if let Some(prev) = prev_len {
                            if prev != n {
                                return Err(());
                            }
                            continue;
                        }
                        framing = Framing::Length(n);
                        dst.extend_from_slice(b"content-length: ");
                        dst.extend_from_slice(value.as_bytes());
                        wrote_len = true;
                        name_written = true;
                        prev_len = Some(n);
                        continue;
                    }
                    None => {
                        if method != Method::HEAD {
                            continue;
                        }
                    }
                }
                wrote_len = true;
            }
            header::TRANSFER_ENCODING => {
                if wrote_len && !name_written {
                    return Err(());
                }
                if http10 || !can_chunked(method, status) {
                    continue;
                }
                wrote_len = true;
                must_write_chunked = !is_chunked(&value);
                if !name_written {
                    framing = Framing::Chunked;
                    name_written = true;
                    dst.extend_from_slice(b"transfer-encoding: ");
                } else {
                    dst.extend_from_slice(b", ");
                }
                dst.extend_from_slice(value.as_bytes());
                continue;
            }
            header::CONNECTION => {
                if !is_last && has_close(value.as_bytes()) {
                    is_last = true;
                }
                if !name_written {
                    name_written = true;
                    dst.extend_from_slice(b"connection: ");
                } else {
                    dst.extend_from_slice(b", ");
                }
                dst.extend_from_slice(value.as_bytes());
                continue;
            }
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if http10 || !can_chunked(method, status) {
                    continue;
                }
                if !name_written {
                    name_written = true;
                    dst.extend_from_slice(b"trailer: ");
                } else {
                    dst.extend_from_slice(b", ");
                }
                dst.extend_from_slice(value.as_bytes());
                continue;
            }
            _ => {}
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    end_line(dst, name_written, must_write_chunked);
    if !wrote_len {
        framing = match len {
            Some(None) => {
                if http10 || !can_chunked(method, status) {
                    Framing::Close
                } else {
                    dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    Framing::Chunked
                }
            }
            None | Some(Some(0)) => {
                if can_have_content_length(method, status) && method != Method::HEAD {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(Some(n)) => {
                if can_have_content_length(method, status) {
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(itoa_u64(n).as_slice());
                    dst.extend_from_slice(b"\r\n");
                    Framing::Length(n)
                } else {
                    Framing::Length(0)
                }
            }
        };
    }
    if !can_chunked(method, status) {
        framing = Framing::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        extend_date(dst);
        dst.extend_from_slice(b"\r\n\r\n");
    } else {
        dst.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Close {
        is_last = true;
    }
    Ok((framing, is_last))
}

/// A decimal without an allocation.
fn itoa_u64(mut n: u64) -> HexLine {
    let mut out = HexLine {
        buf: [0; 18],
        start: 18,
    };
    if n >= 10u64.pow(18) {
        // Longer than the buffer: no body is that long.
        out.buf.copy_from_slice(b"999999999999999999");
        out.start = 0;
        return out;
    }
    loop {
        out.start -= 1;
        out.buf[out.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------

/// A socket with bytes already read from it in front, for hyper to read first.
struct Rewind<S> {
    pre: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let chunk = self.pre.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_without_allocating() {
        assert_eq!(format_args_hex(0).as_slice(), b"0\r\n");
        assert_eq!(format_args_hex(0x1a2b).as_slice(), b"1A2B\r\n");
        assert_eq!(
            format_args_hex(usize::MAX).as_slice(),
            b"FFFFFFFFFFFFFFFF\r\n"
        );
        assert_eq!(itoa_u64(0).as_slice(), b"0");
        assert_eq!(itoa_u64(1234567).as_slice(), b"1234567");
    }

    #[test]
    fn parking_trims_the_pools_to_keep() {
        for _ in 0..KEEP + 8 {
            give_buf(BytesMut::with_capacity(BUF));
            give_wbuf(Vec::with_capacity(1024));
            give_map(HeaderMap::new());
        }
        assert_eq!(BUFS.with_borrow(Vec::len), KEEP + 8);
        trim_pools();
        assert_eq!(BUFS.with_borrow(Vec::len), KEEP);
        assert_eq!(WBUFS.with_borrow(Vec::len), KEEP);
        assert_eq!(MAPS.with_borrow(Vec::len), KEEP);
        // Within KEEP nothing goes.
        let _ = take_buf();
        trim_pools();
        assert_eq!(BUFS.with_borrow(Vec::len), KEEP - 1);
    }

    #[test]
    fn heads_for_hyper_are_left_whole() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"[..],
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"CONNECT a:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let mut b = BytesMut::from(raw);
            assert!(matches!(parse(&mut b), Parsed::Hyper), "{raw:?}");
            assert_eq!(&b[..], raw);
        }
    }

    #[test]
    fn a_plain_head_is_read_and_what_follows_kept() {
        let raw = b"GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\nX-A: 1\r\n\r\nGET /next";
        let mut b = BytesMut::from(&raw[..]);
        let Parsed::Fast(h) = parse(&mut b) else {
            panic!("not read")
        };
        assert!(!h.keep_alive);
        assert_eq!(h.req.uri(), "/a?b");
        assert_eq!(h.req.headers()["x-a"], "1");
        assert_eq!(h.req.headers().len(), 3);
        assert_eq!(&b[..], b"GET /next");
        let mut partial = BytesMut::from(&raw[..20]);
        assert!(matches!(parse(&mut partial), Parsed::Partial));
    }

    fn encoded(
        resp: Response<ProxyBody>,
        method: Method,
        keep_alive: bool,
    ) -> (String, Framing, bool) {
        let (mut parts, body) = resp.into_parts();
        let len = if body.is_end_stream() {
            None
        } else {
            Some(body.size_hint().exact())
        };
        let mut dst = Vec::new();
        let (f, last) = encode_head(&mut dst, &mut parts, len, &method, keep_alive).unwrap();
        let text = String::from_utf8(dst).unwrap();
        let date = text.find("date: ").expect("a date");
        (text[..date].to_string(), f, last)
    }

    #[test]
    fn answers_are_framed_as_hyper_frames_them() {
        let r = Response::new(ProxyBody::full("hello"));
        assert_eq!(
            encoded(r, Method::GET, true),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n".into(),
                Framing::Length(5),
                false
            )
        );
        let mut r = Response::new(ProxyBody::empty());
        *r.status_mut() = StatusCode::NOT_FOUND;
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        assert_eq!(
            encoded(r, Method::GET, true),
            (
                "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n".into(),
                Framing::Length(0),
                true
            )
        );
        let mut r = Response::new(ProxyBody::empty());
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        assert_eq!(
            encoded(r, Method::HEAD, true),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n".into(),
                Framing::Length(0),
                false
            )
        );
        let mut r = Response::new(ProxyBody::full("x"));
        *r.status_mut() = StatusCode::NO_CONTENT;
        assert_eq!(
            encoded(r, Method::GET, true),
            (
                "HTTP/1.1 204 No Content\r\n".into(),
                Framing::Length(0),
                false
            )
        );
    }
}
