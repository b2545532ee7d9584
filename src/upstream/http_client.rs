//! The upstream HTTP client: one per backend (so draining a backend can close exactly its
//! connections, see [`super::conn_pool`]) speaking the pool's protocol (HTTP/1.1, HTTP/2 over TLS
//! by ALPN, or h2c) with optional TLS; and [`UpBody`], a request body that can be handed to a
//! second backend when the first never took it (connect failure).
//!
//! The connector always dials the backend's own address, whatever host the request URI names,
//! and presents a fixed TLS server name (the pool's `sni`, else the backend IP), so URIs can
//! carry the name the backend expects without any DNS lookup.

use super::conn_pool::Conns;
use crate::body::{BodyClock, BodyError, BodyLimit, ClientBodyError, ClientFault, RequestBody};
use crate::config::{PoolConfig, Protocol};
use crate::tls::UpstreamTlsError;
use crate::upstream::Backend;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::HeaderMap;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::FixedServerNameResolver;
use hyper_util::client::legacy::connect::HttpConnector;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;

pub use super::body::UpstreamBody;
pub use super::conn_pool::{Checkin, ErrorSource, UpstreamError};

pub type Connector = hyper_rustls::HttpsConnector<Dial>;

/// A connection to a backend, TLS or not.
pub type ConnIo = hyper_rustls::MaybeHttpsStream<CutIo<TcpIo>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP to one backend's address, whatever host and port the request URI names: the URI
/// carries the name the backend expects (and TLS uses the pool's fixed server name), never a
/// place to look up. Every connection is registered in the client's [`CutSet`].
#[derive(Debug, Clone)]
pub struct Dial {
    http: HttpConnector,
    target: Uri,
    cuts: Arc<CutSet>,
}

type TcpIo = <HttpConnector as tower::Service<Uri>>::Response;

impl tower::Service<Uri> for Dial {
    type Response = CutIo<TcpIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let connecting = self.http.call(self.target.clone());
        let cuts = self.cuts.clone();
        Box::pin(async move {
            let io = connecting.await?;
            Ok(CutIo {
                inner: io,
                flag: cuts.register(),
            })
        })
    }
}

/// The connections of one backend's client, so a drain that reaches its timeout can cut
/// every request still on them at once. The request path never touches the list: it is
/// locked only when a connection is made and when a drain cuts.
#[derive(Debug, Default)]
pub struct CutSet {
    cut: AtomicBool,
    conns: std::sync::Mutex<Vec<std::sync::Weak<CutFlag>>>,
}

/// One connection's cut signal: a flag and the waker of the task driving the connection.
#[derive(Debug, Default)]
pub struct CutFlag {
    cut: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl CutSet {
    fn register(&self) -> Arc<CutFlag> {
        let flag = Arc::new(CutFlag::default());
        flag.cut
            .store(self.cut.load(Ordering::Acquire), Ordering::Release);
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|w| w.strong_count() > 0);
        conns.push(Arc::downgrade(&flag));
        flag
    }

    /// Fail every connection of this client (and any it makes from now on): requests waiting
    /// on them get an error, streaming bodies and tunnels end.
    pub fn cut_all(&self) {
        self.cut.store(true, Ordering::Release);
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for flag in conns.iter().filter_map(|w| w.upgrade()) {
            flag.cut.store(true, Ordering::Release);
            flag.waker.wake();
        }
    }
}

/// A backend connection that fails at once when its client is cut.
#[derive(Debug)]
pub struct CutIo<T> {
    inner: T,
    flag: Arc<CutFlag>,
}

impl<T> CutIo<T> {
    fn check(&self) -> std::io::Result<()> {
        if self.flag.cut.load(Ordering::Acquire) {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "backend connection cut by drain timeout",
            ))
        } else {
            Ok(())
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for CutIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Whoever waits to read is whom a cut must wake (an atomic register, no lock).
        self.flag.waker.register(cx.waker());
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for CutIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection>
    hyper_util::client::legacy::connect::Connection for CutIo<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected()
    }
}

/// The client for one backend, and how to address it.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    pub(crate) conns: Arc<Conns>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The authority written into upstream request URIs that have no better one: the pool's
    /// `sni` with the backend's port, else the backend address.
    pub authority: http::uri::Authority,
    /// The pool speaks HTTP/2 (`h2` or `h2c`).
    pub http2: bool,
    /// Every connection this client made, for cutting them at a drain timeout.
    pub cuts: Arc<CutSet>,
}

/// What the clients of one pool's backends share: the TLS setup (roots, verifier, ALPN),
/// built once per pool rather than once per backend. A pool without TLS never uses it, so all
/// of them share one.
#[derive(Clone)]
pub struct ClientTemplate {
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTemplate")
    }
}

impl ClientTemplate {
    /// The template for a pool with this config; `base` resolves relative paths.
    pub fn new(
        pool: &PoolConfig,
        base: Option<&std::path::Path>,
    ) -> Result<Self, UpstreamTlsError> {
        if pool.tls.is_none() {
            static PLAIN: std::sync::OnceLock<ClientTemplate> = std::sync::OnceLock::new();
            if let Some(t) = PLAIN.get() {
                return Ok(t.clone());
            }
            let t = Self::build(pool, base)?;
            return Ok(PLAIN.get_or_init(|| t).clone());
        }
        Self::build(pool, base)
    }

    fn build(pool: &PoolConfig, base: Option<&std::path::Path>) -> Result<Self, UpstreamTlsError> {
        let mut tls = crate::tls::upstream_client_config(pool, base)?;
        // ALPN offers exactly the pool's protocol (nothing for HTTP/1.1, as hyper-rustls does).
        tls.alpn_protocols = if pool.protocol == Protocol::H1 {
            Vec::new()
        } else {
            vec![b"h2".to_vec()]
        };
        // Each backend keeps its own sessions (see `UpstreamClient::with_template`).
        tls.resumption = rustls::client::Resumption::disabled();
        Ok(ClientTemplate { tls: Arc::new(tls) })
    }

    /// The TLS config of one backend's client: the pool's, with a session cache of its own
    /// sized for the one server name it talks to (the default holds 32 servers' worth, about
    /// 16 KiB per backend).
    fn for_backend(&self, pool: &PoolConfig) -> Arc<rustls::ClientConfig> {
        if pool.tls.is_none() {
            return self.tls.clone();
        }
        let mut tls = (*self.tls).clone();
        tls.resumption = rustls::client::Resumption::in_memory_sessions(TICKETS_PER_SERVER);
        Arc::new(tls)
    }
}

/// TLS 1.3 tickets rustls keeps per server (its `MAX_TLS13_TICKETS_PER_SERVER`): a cache of
/// this size holds one server.
const TICKETS_PER_SERVER: usize = 8;

impl UpstreamClient {
    /// Build the client for `addr` in a pool with this config; `base` resolves relative paths.
    pub fn new(
        addr: SocketAddr,
        pool: &PoolConfig,
        base: Option<&std::path::Path>,
    ) -> Result<Self, UpstreamTlsError> {
        Self::with_template(addr, pool, &ClientTemplate::new(pool, base)?)
    }

    /// Build the client for `addr` in a pool with this config from the pool's template.
    pub fn with_template(
        addr: SocketAddr,
        pool: &PoolConfig,
        template: &ClientTemplate,
    ) -> Result<Self, UpstreamTlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(pool.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let target = format!("http://{addr}")
            .parse()
            .map_err(|_| UpstreamTlsError::BadSni(addr.to_string()))?;
        let cuts = Arc::new(CutSet::default());
        let dial = Dial {
            http,
            target,
            cuts: cuts.clone(),
        };
        let name = crate::tls::upstream_server_name(pool, addr)?;
        let http2 = pool.protocol != Protocol::H1;
        // https or http, by the target's scheme.
        let connector = hyper_rustls::HttpsConnector::new(
            dial,
            template.for_backend(pool),
            false,
            Arc::new(FixedServerNameResolver::new(name)),
        );
        let authority: http::uri::Authority =
            match pool.tls.as_ref().and_then(|t| t.sni.as_ref()) {
                Some(sni) => format!("{sni}:{}", addr.port()).parse(),
                None => addr.to_string().parse(),
            }
            .map_err(|_| UpstreamTlsError::BadSni(addr.to_string()))?;
        let scheme = if pool.tls.is_some() { "https" } else { "http" };
        let target = format!("{scheme}://{addr}")
            .parse()
            .map_err(|_| UpstreamTlsError::BadSni(addr.to_string()))?;
        Ok(UpstreamClient {
            conns: Conns::new(connector, target, http2, authority.clone()),
            scheme,
            authority,
            http2,
            cuts,
        })
    }

    /// Send a request (absolute URI, or origin-form for HTTP/1.1) on one of the backend's connections and wait for the
    /// response head. The future owns what it needs; the [`Checkin`] goes with the response
    /// body and gives the connection back when the body has been read to its end.
    pub fn send(
        &self,
        req: http::Request<UpBody>,
    ) -> impl Future<Output = Result<(http::Response<UpstreamBody>, Checkin), UpstreamError>>
           + Send
           + 'static {
        self.conns.clone().send(req)
    }

    /// Send a body-less HTTP/1.1 request from a borrowed head: the fast path without a request
    /// built for it (see [`super::h1::Head`]). Only for HTTP/1.1 pools.
    pub fn send_head<'a>(
        &self,
        head: super::h1::Head<'a>,
    ) -> impl Future<Output = Result<(http::Response<UpstreamBody>, Checkin), UpstreamError>> + Send + 'a
    {
        debug_assert!(!self.http2);
        self.conns.clone().send_head(head)
    }

    /// Check that a pool's client can be built (TLS material readable) and warn when its
    /// backends' certificates go unverified. Called once per pool at every config load.
    pub fn check(
        pool: &PoolConfig,
        base: Option<&std::path::Path>,
    ) -> Result<(), UpstreamTlsError> {
        // The address does not matter here (a name's are not known yet); the TLS material does.
        let first = &pool.backends[0].addr;
        let addr = first
            .ip()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], first.port())));
        UpstreamClient::new(addr, pool, base)?;
        if pool.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            tracing::warn!(
                pool = %pool.name,
                "insecure_skip_verify = true: backend TLS certificates are NOT verified"
            );
        }
        Ok(())
    }
}

/// How a response counts for the circuit breaker under the pool's gRPC rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcVerdict {
    /// Not gRPC, or the pool does not count gRPC statuses: judge by HTTP status.
    NotCounted,
    /// A trailers-only answer: its `grpc-status` is in the headers.
    Failed,
    Ok,
    /// The status comes in the trailers: judge when they arrive.
    AtTrailers,
}

/// Judge a response's headers under the rule of the backend's pool (`grpc_status_failures`).
pub fn grpc_verdict(backend: &Backend, headers: &HeaderMap) -> GrpcVerdict {
    let is_grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // The content type first: plain HTTP never loads the pool config.
    if !is_grpc || !backend.pool_config().circuit_breaker.grpc_status_failures {
        return GrpcVerdict::NotCounted;
    }
    match headers.get("grpc-status") {
        Some(_) if grpc_ok(headers) => GrpcVerdict::Ok,
        Some(_) => GrpcVerdict::Failed,
        None => GrpcVerdict::AtTrailers,
    }
}

/// Is the `grpc-status` in these trailers (or trailers-only headers) a success? The codes
/// that count as failures are those that map to an HTTP 5xx (UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), the same rule as for plain HTTP: a
/// client's bad argument or a missing entity says nothing about the backend's health.
pub fn grpc_ok(trailers: &HeaderMap) -> bool {
    let code = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u32>().ok());
    // A missing or garbled status is a protocol failure.
    !matches!(code, None | Some(2 | 4 | 12 | 13 | 14 | 15))
}

/// The downstream body waiting to be sent upstream. Shared between attempts: the first attempt
/// that polls it takes it; if no attempt polled it, a retry can still send it. It also says
/// how the body is doing, for the request's deadline and for telling a client's fault from
/// a backend's.
#[derive(Debug)]
pub struct BodySlot {
    slot: ArrayQueue<Taken>,
    hint: SizeHint,
    /// Progress of the upload, so request_timeout can start when the body has been sent
    /// and a stalled client can be told from a slow backend.
    progress: AtomicU64,
    /// Bytes of the body read from the client so far (the access log's `bytes_in`).
    received: AtomicU64,
    done: AtomicBool,
    waiting_on_client: AtomicBool,
    /// How the client's body failed ([`ClientFault`] as `fault_code`), 0 while it has not.
    fault: AtomicU8,
    /// The backend has answered: the request-body limit no longer applies (see `Taken`).
    answered: AtomicBool,
    done_wake: Notify,
}

/// The client's body as an attempt takes it: the body, its first frame if it was read ahead
/// of any attempt, and its clock.
#[derive(Debug)]
struct Taken {
    body: RequestBody,
    first: Option<Frame<Bytes>>,
    clock: BodyClock,
}

impl Taken {
    /// The next frame, with the body's time accounted and its failures made [`ClientBodyError`]s
    /// (recorded in the slot, so the exchange's error can say whose fault it was).
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        slot: &BodySlot,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(f) = self.first.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                let n = f.data_ref().map_or(0, |d| d.len());
                self.clock.got(n);
                slot.received.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = ClientFault::of(&*e);
                Poll::Ready(Some(Err(slot.failed(fault, Some(e)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // Once the backend has answered, the exchange may be a full-duplex stream
                // (gRPC) paced by the application, and a 408 can no longer be sent.
                if slot.answered.load(Ordering::Acquire) {
                    self.clock.stop();
                }
                if self.clock.waiting(cx) {
                    return Poll::Ready(Some(Err(slot.failed(ClientFault::Slow, None))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.body.size_hint();
        let Some(n) = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map(|d| d.len() as u64)
        else {
            return rest;
        };
        let mut h = SizeHint::new();
        if let Some(u) = rest.upper() {
            h.set_upper(u.saturating_add(n));
        }
        h.set_lower(rest.lower().saturating_add(n));
        h
    }
}

fn fault_code(f: ClientFault) -> u8 {
    match f {
        ClientFault::Malformed => 1,
        ClientFault::Gone => 2,
        ClientFault::Slow => 3,
    }
}

impl BodySlot {
    /// `None` for a request without a body (nothing to keep).
    pub fn new(body: RequestBody, limit: BodyLimit) -> Option<Arc<Self>> {
        if body.is_end_stream() {
            return None;
        }
        let hint = body.size_hint();
        let slot = ArrayQueue::new(1);
        let _ = slot.push(Taken {
            body,
            first: None,
            clock: BodyClock::new(limit),
        });
        Some(Arc::new(BodySlot {
            slot,
            hint,
            progress: AtomicU64::new(0),
            received: AtomicU64::new(0),
            done: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
            fault: AtomicU8::new(0),
            answered: AtomicBool::new(false),
            done_wake: Notify::new(),
        }))
    }

    /// Read the body's first frame before anything is sent upstream, so framing that is bad
    /// from its first byte (or a client that never sends any) costs no backend anything.
    /// `Ok(false)`: the body turned out empty. Only before any attempt (while `this` is the
    /// only reference).
    pub fn poll_first(
        this: &mut Arc<Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, ClientFault>> {
        let Some(me) = Arc::get_mut(this) else {
            return Poll::Ready(Ok(true));
        };
        let Some(mut t) = me.slot.pop() else {
            return Poll::Ready(Ok(true));
        };
        let polled = if t.first.is_some() {
            Poll::Ready(Ok(true))
        } else {
            match t.poll_frame(cx, me) {
                Poll::Ready(Some(Ok(f))) => {
                    t.first = Some(f);
                    Poll::Ready(Ok(true))
                }
                Poll::Ready(Some(Err(_))) => {
                    Poll::Ready(Err(me.fault().unwrap_or(ClientFault::Gone)))
                }
                Poll::Ready(None) => Poll::Ready(Ok(false)),
                Poll::Pending => Poll::Pending,
            }
        };
        me.hint = t.size_hint();
        let _ = me.slot.push(t);
        polled
    }

    /// Has an attempt taken (started streaming) the body?
    pub fn is_taken(&self) -> bool {
        self.slot.is_empty()
    }

    /// Frames of the body sent so far.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Acquire)
    }

    /// Bytes of the body read from the client so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Was the last poll of the body left waiting for the client (rather than the backend
    /// not reading)?
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Acquire)
    }

    /// How the client's body failed, if it has.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.fault.load(Ordering::Acquire) {
            1 => Some(ClientFault::Malformed),
            2 => Some(ClientFault::Gone),
            3 => Some(ClientFault::Slow),
            _ => None,
        }
    }

    /// The backend's answer is being relayed: the request-body limit stops here.
    pub fn set_answered(&self) {
        self.answered.store(true, Ordering::Release);
    }

    /// Record how the body failed and make the error the upstream client gets.
    fn failed(&self, fault: ClientFault, source: Option<BodyError>) -> BodyError {
        let _ =
            self.fault
                .compare_exchange(0, fault_code(fault), Ordering::AcqRel, Ordering::Acquire);
        Box::new(ClientBodyError { fault, source })
    }

    /// Wait until the whole body has been handed to the upstream connection.
    pub async fn sent(&self) {
        loop {
            let woken = self.done_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }

    fn mark_done(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.done_wake.notify_waiters();
        }
    }
}

/// Request body sent upstream.
#[derive(Debug, Default)]
pub struct UpBody {
    slot: Option<Arc<BodySlot>>,
    body: Option<Taken>,
}

impl UpBody {
    pub fn empty() -> Self {
        UpBody::default()
    }

    pub fn from_slot(slot: &Option<Arc<BodySlot>>) -> Self {
        UpBody {
            slot: slot.clone(),
            body: None,
        }
    }

    /// The slot this body streams from, if any.
    pub(crate) fn slot(&self) -> Option<&Arc<BodySlot>> {
        self.slot.as_ref()
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.body.is_none() {
            match this.slot.as_ref().and_then(|s| s.slot.pop()) {
                Some(b) => this.body = Some(b),
                None => {
                    this.slot = None;
                    return Poll::Ready(None);
                }
            }
        }
        let (Some(b), Some(s)) = (this.body.as_mut(), this.slot.as_deref()) else {
            return Poll::Ready(None);
        };
        let polled = b.poll_frame(cx, s);
        s.waiting_on_client
            .store(polled.is_pending(), Ordering::Release);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                s.progress.fetch_add(1, Ordering::AcqRel);
                if b.is_end_stream() {
                    s.mark_done();
                }
            }
            Poll::Ready(_) => s.mark_done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match (&self.body, &self.slot) {
            (Some(b), _) => b.is_end_stream(),
            (None, Some(_)) => false,
            (None, None) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.body, &self.slot) {
            (Some(b), _) => b.size_hint(),
            (None, Some(s)) => s.hint,
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
