//! One backend's upstream connections, on hyper's low-level client connections rather than
//! hyper-util's pooled client: an HTTP/1.1 request checks an idle connection out of a
//! lock-free queue and the response body puts it back when it ends; an HTTP/2 pool shares one
//! multiplexed connection. The pooled client costed a boxed future, a mutex-guarded checkout
//! and a task spawned per request to wait for the connection to come back; this costs a queue
//! pop and push.

use super::body::UpstreamBody;
use super::h1::{self, InlineConn};
use super::http_client::{BodySlot, Connector, UpBody};
use super::idle::IdleQueue;
use crate::body::ClientFault;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;

/// Idle pooled connections are retired before a typical backend keep-alive timeout (60 s), so
/// veer never sends a request on a connection the backend is about to close.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Idle HTTP/1.1 connections kept per backend; more than this many idle at once are closed.
const MAX_IDLE: usize = 1024;

/// How often idle connections past [`POOL_IDLE_TIMEOUT`] are closed when no request comes to
/// take them.
const REAP_EVERY: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (TCP, TLS or the HTTP/2 preface): nothing reached the
    /// backend.
    #[error("connect: {0}")]
    Connect(#[source] BoxError),
    /// The exchange failed on an established connection.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The backend's answer was not valid HTTP/1.1.
    #[error("invalid response: {0}")]
    Protocol(String),
    /// The client's request body failed while it was being sent (malformed, cut short, too
    /// slow): the exchange was aborted on the client's account, not the backend's.
    #[error("client request body {0}")]
    Downstream(ClientFault),
}

/// Which side of an exchange failed (as pingora-error's `ErrorSource`). Only the upstream's
/// failures count against a backend: its breaker, rollout gate, retries and 5xx counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Upstream,
    Downstream,
}

impl UpstreamError {
    /// Did the request fail before any connection to the backend existed?
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// Which side failed.
    pub fn side(&self) -> ErrorSource {
        match self {
            UpstreamError::Downstream(_) => ErrorSource::Downstream,
            _ => ErrorSource::Upstream,
        }
    }

    /// How the client's body failed, when that is why the exchange did.
    pub fn client_fault(&self) -> Option<ClientFault> {
        match self {
            UpstreamError::Downstream(f) => Some(*f),
            _ => None,
        }
    }

    /// hyper's error for an exchange whose request body streamed from `body`: the body's own
    /// failure when it had one (hyper reports it as its error, or, over HTTP/2, as the
    /// reset it sent for it), else the backend's.
    fn exchange(e: hyper::Error, body: Option<&BodySlot>) -> Self {
        if let Some(f) = body.and_then(BodySlot::fault) {
            return UpstreamError::Downstream(f);
        }
        // The body ended short of its declared length: it ended so on the client's side.
        if body.is_some() && e.is_body_write_aborted() {
            return UpstreamError::Downstream(ClientFault::Gone);
        }
        UpstreamError::Http(e)
    }
}

struct Idle {
    tx: http1::SendRequest<UpBody>,
    since: Instant,
}

/// The connections of one backend's client.
pub struct Conns {
    connector: Connector,
    /// Whether the connector is asked for TLS: the scheme of the URI it is given is all it
    /// reads (the dialer always dials the backend's address), so no per-backend URI is kept.
    tls: bool,
    http2: bool,
    /// The authority for a `Host` header when a request has none.
    authority: http::uri::Authority,
    /// Both queues take memory as they fill ([`IdleQueue`]): a backend costs what it uses.
    idle: IdleQueue<Idle>,
    /// Connections of the fast path ([`h1`]), which owns them between exchanges.
    inline_idle: IdleQueue<InlineConn>,
    shared: arc_swap::ArcSwapOption<http2::SendRequest<UpBody>>,
    /// Held while an HTTP/2 connection is being made, so a burst of requests makes one.
    h2_connecting: tokio::sync::Mutex<()>,
    reaper: AtomicBool,
    /// [`POOL_IDLE_TIMEOUT`] and [`REAP_EVERY`]; shorter in tests.
    idle_timeout: Duration,
    reap_every: Duration,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns")
            .field("tls", &self.tls)
            .field("http2", &self.http2)
            .field("idle", &self.idle.len())
            .finish()
    }
}

/// The HTTP/1.1 connection an upstream response came on, to be put back in its pool when the
/// response body has been read to its end. Dropped before that, the connection closes.
#[derive(Default)]
pub struct Checkin(Option<(Arc<Conns>, http1::SendRequest<UpBody>)>);

impl std::fmt::Debug for Checkin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Checkin(conn)"
        } else {
            "Checkin"
        })
    }
}

impl Checkin {
    /// The response was read to its end: its connection can carry another request.
    pub fn release(&mut self) {
        if let Some((conns, tx)) = self.0.take() {
            conns.check_in(tx);
        }
    }

    /// The connection must not be reused (it was upgraded, or the response was abandoned).
    pub fn forget(&mut self) {
        self.0 = None;
    }
}

type Sending =
    Pin<Box<dyn Future<Output = Result<(Response<UpstreamBody>, Checkin), UpstreamError>> + Send>>;

impl Conns {
    pub fn new(
        connector: Connector,
        tls: bool,
        http2: bool,
        authority: http::uri::Authority,
    ) -> Arc<Self> {
        Arc::new(Conns {
            connector,
            tls,
            http2,
            authority,
            idle: IdleQueue::new(MAX_IDLE),
            inline_idle: IdleQueue::new(MAX_IDLE),
            shared: arc_swap::ArcSwapOption::empty(),
            h2_connecting: tokio::sync::Mutex::new(()),
            reaper: AtomicBool::new(false),
            idle_timeout: POOL_IDLE_TIMEOUT,
            reap_every: REAP_EVERY,
        })
    }

    /// Idle connections currently pooled.
    pub fn idle_count(&self) -> usize {
        self.idle.len() + self.inline_idle.len()
    }

    /// Send a request (absolute URI, or origin-form for HTTP/1.1) and wait for the response
    /// head. A request that a pooled connection closed under before taking it is sent again
    /// on another connection (nothing of it reached the backend).
    ///
    /// Only the fast path's future is kept inline: it is in every request's future, and the
    /// others (hyper's, a few KiB) are boxed so they do not make all of them larger.
    pub fn send(
        self: Arc<Self>,
        mut req: Request<UpBody>,
    ) -> impl Future<Output = Result<(Response<UpstreamBody>, Checkin), UpstreamError>> + Send + 'static
    {
        use futures_util::future::Either;
        if self.http2 {
            return Either::Right(self.send_h2(req));
        }
        self.prepare_h1(&mut req);
        if h1::eligible(&req) {
            Either::Left(self.send_inline(req))
        } else {
            // hyper writes the URI as given: it must be origin-form (`/path?query`).
            if req.method() != Method::CONNECT && req.uri().scheme().is_some() {
                let pq = req.uri().path_and_query().cloned();
                *req.uri_mut() = Uri::from(pq.unwrap_or_else(|| PathAndQuery::from_static("/")));
            }
            Either::Right(Box::pin(self.send_h1(req)))
        }
    }

    /// HTTP/1.1 through hyper: requests with a body, and upgrades.
    async fn send_h1(
        self: Arc<Self>,
        mut req: Request<UpBody>,
    ) -> Result<(Response<UpstreamBody>, Checkin), UpstreamError> {
        // hyper takes any 101 as a switch: one to a request that asked for none is the
        // backend breaking the protocol (as on the fast path), never a tunnel.
        let asked_upgrade =
            req.headers().contains_key(header::UPGRADE) || req.method() == Method::CONNECT;
        let body = req.body().slot().cloned();
        loop {
            let (mut tx, reused) = match self.check_out() {
                Some(tx) => (tx, true),
                None => (self.connect_h1().await?, false),
            };
            if !tx.is_ready() {
                // The connection has not yet picked up after its last response.
                if let Err(e) = tx.ready().await {
                    if reused {
                        continue;
                    }
                    return Err(e.into());
                }
            }
            match tx.try_send_request(req).await {
                Ok(resp)
                    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS && !asked_upgrade =>
                {
                    return Err(UpstreamError::Protocol(
                        "101 Switching Protocols without an upgrade request".into(),
                    ));
                }
                Ok(mut resp) => {
                    h1::single_content_length(resp.headers_mut());
                    let resp = resp.map(UpstreamBody::Hyper);
                    return Ok((resp, Checkin(Some((self, tx)))));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(UpstreamError::exchange(e.into_error(), body.as_deref())),
                },
            }
        }
    }

    /// The fast path: a body-less HTTP/1.1 request on a connection this task drives itself.
    async fn send_inline(
        self: Arc<Self>,
        req: Request<UpBody>,
    ) -> Result<(Response<UpstreamBody>, Checkin), UpstreamError> {
        self.send_head(h1::Head::of(&req)).await
    }

    /// The fast path with a borrowed head (see [`h1::Head`]); the caller makes sure the
    /// request has no body and is no upgrade or CONNECT, and that this is an HTTP/1.1 pool.
    pub async fn send_head(
        self: Arc<Self>,
        head: h1::Head<'_>,
    ) -> Result<(Response<UpstreamBody>, Checkin), UpstreamError> {
        // A connection that closed before answering anything is tried again elsewhere only
        // when sending the request twice is harmless.
        let idempotent = matches!(
            *head.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        loop {
            let (conn, reused) = match self.check_out_inline() {
                Some(c) => (c, true),
                None => (self.connect_inline().await?, false),
            };
            match h1::exchange(&self, conn, &head).await {
                Ok(resp) => return Ok((resp, Checkin::default())),
                Err(h1::Failed::BeforeResponse(_)) if reused && idempotent => continue,
                Err(h1::Failed::BeforeResponse(e) | h1::Failed::Other(e)) => return Err(e),
            }
        }
    }

    /// The authority for a `Host` header when a request has none.
    pub(crate) fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    fn check_out_inline(&self) -> Option<InlineConn> {
        while let Some(mut c) = self.inline_idle.pop() {
            if c.since.elapsed() >= self.idle_timeout || !c.still_open() {
                continue;
            }
            return Some(c);
        }
        None
    }

    pub(crate) fn check_in_inline(&self, mut c: InlineConn) {
        c.since = Instant::now();
        let _ = self.inline_idle.push(c);
    }

    async fn connect_inline(self: &Arc<Self>) -> Result<InlineConn, UpstreamError> {
        let connecting: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            let io = self.dial().await?;
            self.start_reaper();
            Ok(InlineConn::new(io))
        });
        connecting.await
    }

    /// HTTP/1.1 wants a `Host` header: the URI's authority, else the backend's.
    fn prepare_h1(&self, req: &mut Request<UpBody>) {
        if !req.headers().contains_key(header::HOST) {
            let host = req
                .uri()
                .authority()
                .unwrap_or(&self.authority)
                .as_str()
                .to_owned();
            if let Ok(v) = HeaderValue::from_str(&host) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
    }

    fn check_out(&self) -> Option<http1::SendRequest<UpBody>> {
        while let Some(idle) = self.idle.pop() {
            if idle.tx.is_closed() || idle.since.elapsed() >= self.idle_timeout {
                continue; // dropping it closes it
            }
            return Some(idle.tx);
        }
        None
    }

    fn check_in(&self, tx: http1::SendRequest<UpBody>) {
        if tx.is_closed() {
            return;
        }
        // A full queue drops (closes) the connection.
        let _ = self.idle.push(Idle {
            tx,
            since: Instant::now(),
        });
    }

    async fn connect_h1(self: &Arc<Self>) -> Result<http1::SendRequest<UpBody>, UpstreamError> {
        // Boxed: the slow path should not make every request's future larger.
        let connecting: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            let io = self.dial().await?;
            let (tx, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended with error");
                }
            });
            self.start_reaper();
            Ok(tx)
        });
        connecting.await
    }

    async fn dial(&self) -> Result<super::http_client::ConnIo, UpstreamError> {
        self.connector
            .clone()
            .oneshot(Uri::from_static(if self.tls {
                "https://backend"
            } else {
                "http://backend"
            }))
            .await
            .map_err(UpstreamError::Connect)
    }

    fn send_h2(self: Arc<Self>, req: Request<UpBody>) -> Sending {
        Box::pin(async move {
            let mut req = req;
            let body = req.body().slot().cloned();
            loop {
                let current = self.shared.load_full();
                let (mut tx, reused) = match current {
                    Some(tx) if !tx.is_closed() => ((*tx).clone(), true),
                    _ => (self.connect_h2().await?, false),
                };
                if let Err(e) = tx.ready().await {
                    if reused {
                        continue; // closed now: the next round makes a new one
                    }
                    return Err(e.into());
                }
                match tx.try_send_request(req).await {
                    Ok(resp) => return Ok((resp.map(UpstreamBody::Hyper), Checkin::default())),
                    Err(mut e) => match e.take_message() {
                        Some(r) if reused => req = r,
                        _ => return Err(UpstreamError::exchange(e.into_error(), body.as_deref())),
                    },
                }
            }
        })
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<UpBody>, UpstreamError> {
        let _gate = self.h2_connecting.lock().await;
        if let Some(tx) = self.shared.load_full() {
            if !tx.is_closed() {
                return Ok((*tx).clone()); // another request made it meanwhile
            }
        }
        let io = self.dial().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with error");
            }
        });
        self.shared.store(Some(Arc::new(tx.clone())));
        Ok(tx)
    }

    /// Close idle connections past their time even when no request comes to find them.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Conns> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let every = match weak.upgrade() {
                    Some(me) => me.reap_every,
                    None => return,
                };
                tokio::time::sleep(every).await;
                let Some(me) = weak.upgrade() else { return };
                me.idle
                    .retain(|i| !i.tx.is_closed() && i.since.elapsed() < me.idle_timeout);
                me.inline_idle
                    .retain(|c| c.since.elapsed() < me.idle_timeout && c.still_open());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::testing::{backend, client, exchange, until, Reply};

    /// A request hyper's path takes (the fast path leaves upgrades to it).
    fn via_hyper(c: &crate::upstream::http_client::UpstreamClient) -> Request<UpBody> {
        Request::get(format!("http://{}/", c.authority))
            .header(http::header::UPGRADE, "none")
            .body(UpBody::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_carries_the_next_request() {
        let b = backend(|_| Reply::ok("ok")).await;
        let c = client(b.addr);
        for _ in 0..5 {
            assert_eq!(exchange(&c, via_hyper(&c)).await.1, "ok");
        }
        assert_eq!(b.accepted(), 1);
        assert_eq!(c.conns.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_response_not_read_to_its_end_closes_its_connection() {
        let b = backend(|_| Reply::ok("ok")).await;
        let c = client(b.addr);
        let (resp, checkin) = c.send(via_hyper(&c)).await.unwrap();
        drop((resp, checkin)); // abandoned: the connection's state is unknown
        until("the abandoned connection to close", || b.closed() == 1).await;
        assert_eq!(exchange(&c, via_hyper(&c)).await.1, "ok");
        assert_eq!(b.accepted(), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_connections_then_share_them() {
        let b = backend(|_| Reply::ok("ok")).await;
        let c = client(b.addr);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(c.send(via_hyper(&c)).await.unwrap());
        }
        assert_eq!(b.accepted(), 3);
        for (resp, mut checkin) in held {
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            checkin.release();
        }
        assert_eq!(c.conns.idle_count(), 3);
        for _ in 0..6 {
            assert_eq!(exchange(&c, via_hyper(&c)).await.1, "ok");
        }
        assert_eq!(b.accepted(), 3);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_not_used_again() {
        let b = backend(|_| Reply::ok("ok").then_close()).await;
        let c = client(b.addr);
        assert_eq!(exchange(&c, via_hyper(&c)).await.1, "ok");
        until("the backend to close", || b.closed() == 1).await;
        // The pooled connection notices the close on its own; the next request dials anew.
        until("the pooled connection to see the close", || {
            c.conns.idle.pop().map(|i| {
                let closed = i.tx.is_closed();
                let _ = c.conns.idle.push(i);
                closed
            }) != Some(false)
        })
        .await;
        assert_eq!(exchange(&c, via_hyper(&c)).await.1, "ok");
        assert_eq!(b.accepted(), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_retired_after_the_idle_timeout() {
        let b = backend(|_| Reply::ok("ok")).await;
        let mut c = client(b.addr);
        let conns = Arc::get_mut(&mut c.conns).unwrap();
        conns.idle_timeout = Duration::from_millis(100);
        conns.reap_every = Duration::from_millis(20);
        // One connection on each path.
        assert_eq!(exchange(&c, via_hyper(&c)).await.1, "ok");
        assert_eq!(
            exchange(&c, crate::upstream::testing::get(&c)).await.1,
            "ok"
        );
        assert_eq!(c.conns.idle_count(), 2);
        // The reaper closes them with no request coming to find them.
        until("the idle connections to be closed", || b.closed() == 2).await;
        assert_eq!(c.conns.idle_count(), 0);
        assert_eq!(exchange(&c, via_hyper(&c)).await.1, "ok");
        assert_eq!(b.accepted(), 3);
    }

    #[tokio::test]
    async fn a_dead_backend_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = client(addr);
        let err = c.send(via_hyper(&c)).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
        let err = c.send(crate::upstream::testing::get(&c)).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn an_http2_pool_shares_one_connection_even_when_a_burst_opens_it() {
        let b = crate::upstream::testing::h2c_backend().await;
        let c = crate::upstream::testing::client_speaking(b.addr, "h2c");
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let mut req = crate::upstream::testing::get(&c);
                *req.version_mut() = http::Version::HTTP_2;
                exchange(&c, req)
            })
            .collect();
        for (resp, body, _) in futures_util::future::join_all(burst).await {
            assert_eq!((resp.status().as_u16(), body.as_str()), (200, "ok"));
        }
        assert_eq!(b.accepted(), 1);
        assert_eq!(c.conns.idle_count(), 0); // nothing to check in: the connection is shared
    }
}
