//! The request path: accept loop and connections ([`server`]), header rewriting
//! ([`headers`]), the downstream body ([`body`]) and the forwarding logic (here).
//!
//! Per request: one snapshot load, route match, pool by sticky bucket and split, backend by
//! the pool's balancer, then forward with retries on a different backend where safe.

pub mod access;
pub mod body;
pub mod headers;
mod http2;
pub mod listeners;
pub mod server;

use crate::config::Protocol;
use crate::routing::{choice, Route};
use crate::runtime::{Runtime, Snapshot};
use crate::upstream::h1::Head;
use crate::upstream::http_client::{
    BodySlot, Checkin, ErrorSource, GrpcVerdict, UpBody, UpstreamBody, UpstreamError,
};
use crate::upstream::{Backend, Lease};
use body::{BodyLimit, ClientFault, ProxyBody, RequestBody};
use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What the request path knows about the downstream connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// "http" or "https".
    pub scheme: &'static str,
    /// The peer's address as an `X-Forwarded-For` entry, formatted once per connection.
    pub client_ip: HeaderValue,
    /// TLS: the SNI name the client asked for ("" without one); `None` for plain HTTP. For
    /// the access log.
    pub tls: Option<Arc<str>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, scheme: &'static str) -> Self {
        ConnInfo {
            peer,
            scheme,
            client_ip: headers::client_ip_value(peer.ip()),
            tls: None,
        }
    }

    /// A TLS connection's, with the SNI name it asked for.
    pub fn tls(peer: SocketAddr, sni: Option<&str>) -> Self {
        ConnInfo {
            tls: Some(Arc::from(sni.unwrap_or(""))),
            ..ConnInfo::new(peer, "https")
        }
    }
}

/// Why veer answered itself instead of relaying an upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No route matches.
    NoRoute,
    /// Request malformed in a way hyper let through (a bad Host, a body whose framing breaks).
    BadRequest,
    /// Nothing usable in the chosen pools.
    NoBackend,
    /// Upstream broke the protocol, reset, or could not be reached.
    BadGateway,
    /// Upstream did not answer in time.
    Timeout,
    /// The client's request body did not arrive in time.
    ClientTimeout,
    /// The client's request body was cut short (it closed or reset first).
    ClientGone,
}

impl From<ClientFault> for Failure {
    fn from(f: ClientFault) -> Self {
        match f {
            ClientFault::Malformed => Failure::BadRequest,
            ClientFault::Gone => Failure::ClientGone,
            ClientFault::Slow => Failure::ClientTimeout,
        }
    }
}

impl Failure {
    fn status(self) -> StatusCode {
        match self {
            Failure::NoRoute => StatusCode::NOT_FOUND,
            Failure::BadRequest | Failure::ClientGone => StatusCode::BAD_REQUEST,
            Failure::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Failure::BadGateway => StatusCode::BAD_GATEWAY,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Failure::NoRoute => "no route for this host and path\n",
            Failure::BadRequest => "bad request\n",
            Failure::NoBackend => "no backend available\n",
            Failure::BadGateway => "bad gateway\n",
            Failure::Timeout => "upstream timed out\n",
            Failure::ClientTimeout => "request body not received in time\n",
            Failure::ClientGone => "request body incomplete\n",
        }
    }

    pub fn response(self) -> Response<ProxyBody> {
        let mut r = Response::new(ProxyBody::full(self.message()));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            Failure::NoBackend => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // After a malformed request or a body cut short, the connection's framing can no
            // longer be trusted.
            Failure::BadRequest | Failure::ClientTimeout | Failure::ClientGone => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        r
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The connection a request came on, shared by its requests.
pub type ConnCtx = Arc<(Arc<Runtime>, ConnInfo)>;

/// Handle one downstream request end to end. What can be decided at once (the route, the
/// pool, a malformed request) is, before the future is made; the future owns all it needs,
/// and is only as large as forwarding needs (it sits in every request in flight, and is
/// moved into its box once).
pub fn handle(
    ctx: ConnCtx,
    mut req: Request<RequestBody>,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
    use futures_util::future::FutureExt;
    let id = access::request_id(&mut req);
    // Built only when the access log is on.
    let log = access::Pending::begin(&ctx, &req, &id);
    dispatch(ctx, req, log).map(move |(resp, log)| access::finish(resp, id, log))
}

type Logged = (Response<ProxyBody>, Option<access::Pending>);

/// [`handle`] with the request's log entry, handed back with the answer.
fn dispatch(
    ctx: ConnCtx,
    mut req: Request<RequestBody>,
    mut log: Option<access::Pending>,
) -> impl Future<Output = Logged> + Send + 'static {
    use futures_util::future::{ready, FutureExt};
    let (rt, conn) = (&ctx.0, &ctx.1);
    // Authority-form (`GET host:80`) is for CONNECT only (RFC 9112 §3.2.3): it has no path
    // to route, and is a malformed request, not a missing route.
    if req.uri().scheme().is_none()
        && req.uri().authority().is_some()
        && req.method() != Method::CONNECT
    {
        return Either::Left(ready(access::own(Failure::BadRequest, log)));
    }
    // Raw bytes beyond ASCII are no URI (RFC 3986), and backends differ on how to read them.
    let ascii = req
        .uri()
        .path_and_query()
        .is_none_or(|pq| pq.as_str().is_ascii());
    if !ascii || !headers::only_chunked(req.headers()) {
        return Either::Left(ready(access::own(Failure::BadRequest, log)));
    }
    let snap = rt.snapshot();
    // The host: the request target's authority where there is one (absolute-form over
    // HTTP/1.1, RFC 9112 §3.2.2, and HTTP/2's :authority both win over a Host header), else
    // Host (required in HTTP/1.1, and only once either way). It becomes the Host the backend
    // gets; the target goes on in origin-form.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (host_header, second) = (hosts.next().cloned(), hosts.next().is_some());
    if second {
        return Either::Left(ready(access::own(Failure::BadRequest, log)));
    }
    let host_value =
        match req.uri().authority() {
            None => host_header,
            Some(a) => {
                if !req.uri().scheme_str().is_none_or(|s| {
                    s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https")
                }) {
                    return Either::Left(ready(access::own(Failure::BadRequest, log)));
                }
                match host_header {
                    // HTTP/2 clients often send both, the same.
                    Some(h) if h.as_bytes() == a.as_str().as_bytes() => Some(h),
                    // The target's authority wins, but an invalid Host is still a malformed
                    // request (RFC 9112 §3.2).
                    Some(h) if !valid_host(h.as_bytes()) => {
                        return Either::Left(ready(access::own(Failure::BadRequest, log)))
                    }
                    _ => {
                        let Ok(h) = HeaderValue::from_str(a.as_str()) else {
                            return Either::Left(ready(access::own(Failure::BadRequest, log)));
                        };
                        req.headers_mut().insert(header::HOST, h.clone());
                        Some(h)
                    }
                }
            }
        };
    let raw_host = match &host_value {
        Some(v) if valid_host(v.as_bytes()) => v.to_str().unwrap_or_default(),
        Some(_) => return Either::Left(ready(access::own(Failure::BadRequest, log))),
        None if req.version() == Version::HTTP_11 => {
            return Either::Left(ready(access::own(Failure::BadRequest, log)))
        }
        None => "",
    };
    let host = crate::routing::normalize_host(raw_host);
    // Routed and forwarded as the backend would read the path: unreserved characters
    // percent-decoded, dot-segments resolved (nothing allocated when there is neither). A
    // malformed escape is a malformed request.
    let normalized = match crate::routing::normalize_path(req.uri().path()) {
        Ok(n) => n,
        Err(_) => return Either::Left(ready(access::own(Failure::BadRequest, log))),
    };
    if let Some(path) = normalized {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        match http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq)) {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return Either::Left(ready(access::own(Failure::BadRequest, log))),
        }
        match Uri::from_parts(parts) {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => return Either::Left(ready(access::own(Failure::BadRequest, log))),
        }
    }
    let Some(route) = snap.router.find(&host, req.uri().path()).cloned() else {
        return Either::Left(ready(access::own(Failure::NoRoute, log)));
    };
    if let Some(l) = log.as_mut() {
        l.route(&route.name);
    }

    // Which pool: forced by an allowed override, else the user's bucket under today's weights.
    let choice = choice::choose(&route, req.headers(), conn.peer.ip());
    let (pool_idx, bucket, new_cookie) = (choice.pool, choice.bucket, choice.set_cookie);

    // Only an upgrade veer tunnels is forwarded as one; any other (h2c) goes on as plain
    // HTTP/1.1 with its Upgrade stripped.
    let upgrade = req.version() == Version::HTTP_11
        && headers::is_tunnelled_upgrade(req.headers(), &snap.config.server.upgrades);
    // Boxed with the config that judges the backend's 101: upgrades are rare, and this sits
    // in every request's future.
    let down_upgrade =
        upgrade.then(|| Box::new((hyper::upgrade::on(&mut req), snap.config.clone())));
    let (parts, body) = req.into_parts();
    let forwarding = forward(
        ctx, snap, route, parts, body, pool_idx, bucket, host_value, upgrade, log,
    );
    Either::Right(forwarding.map(move |(mut resp, pending, mut log)| {
        if let (Some(down), Some(p)) = (down_upgrade, pending) {
            let (down, config) = *down;
            // A switch to anything but an upgrade veer tunnels is the backend breaking the
            // exchange: no tunnel (dropping `p` closes its connection).
            let switched_to = resp.headers().get(header::UPGRADE);
            if !switched_to.is_some_and(|v| headers::upgrade_allowed(v, &config.server.upgrades)) {
                tracing::debug!(upgrade = ?switched_to, "backend switched to a protocol not tunnelled");
                return access::own(Failure::BadGateway, log);
            }
            // The tunnel's one log line is written when it closes.
            tunnel(down, p, log.take());
        }
        if let Some(c) = new_cookie {
            if let Ok(v) = HeaderValue::from_str(&c) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        (resp, log)
    }))
}

/// A Host is a name or an IP literal with an optional port (RFC 9112 §3.2): anything else
/// (spaces, `/`, `@`, control bytes, a second colon, a port that is not digits) is a
/// malformed request, never forwarded.
fn valid_host(h: &[u8]) -> bool {
    let name = |s: &[u8]| {
        s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    let port = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    match h {
        [b'[', rest @ ..] => match rest.iter().position(|&b| b == b']') {
            Some(end) => {
                let (ip, after) = (&rest[..end], &rest[end + 1..]);
                !ip.is_empty()
                    && ip
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                    && match after {
                        [] => true,
                        [b':', p @ ..] => port(p),
                        _ => false,
                    }
            }
            None => false,
        },
        _ => match h.iter().position(|&b| b == b':') {
            Some(c) => name(&h[..c]) && port(&h[c + 1..]),
            None => name(h),
        },
    }
}

/// A request that chose its route on a snapshot a reload has just replaced can find that
/// snapshot's backends already draining: take the backend from the live snapshot instead
/// (same route and pool, by name), so a reload never turns into a 503.
fn pick_live(
    rt: &Runtime,
    snap: &Snapshot,
    route: &Route,
    pool_idx: usize,
    bucket: u32,
) -> Option<(usize, Lease)> {
    let live = rt.snapshot();
    if live.version == snap.version {
        return None;
    }
    let live_route = live.router.get(&route.name)?;
    let j = live_route.pool_index(&route.pools[pool_idx].name)?;
    let (k, lease) = choice::pick(live_route, j, bucket, &[])?;
    // Accounted under the request's own route, by pool name.
    let i = route.pool_index(&live_route.pools[k].name)?;
    Some((i, lease))
}

/// The most backends one request tries (validation caps `retry.attempts` at 10).
const MAX_TRIED: usize = 10;

/// Not an `async fn`: its arguments would each be kept twice in the future (as arguments and
/// as the locals they move into); an `async move` block uses what it captures in place.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn forward(
    ctx: ConnCtx,
    snap: Arc<Snapshot>,
    route: Arc<Route>,
    mut parts: http::request::Parts,
    body: RequestBody,
    pool_idx: usize,
    bucket: u32,
    host_value: Option<HeaderValue>,
    upgrade: bool,
    mut log: Option<access::Pending>,
) -> impl Future<
    Output = (
        Response<ProxyBody>,
        Option<PendingTunnel>,
        Option<access::Pending>,
    ),
> + Send {
    async move {
        let (rt, conn, snap, route) = (&*ctx.0, &ctx.1, &*snap, &route);
        let retry = &route.config.retry;
        let idempotent = is_idempotent(&parts.method);
        let h2_upstream = route
            .pools
            .iter()
            .any(|p| p.config.protocol != Protocol::H1);
        let had_te = headers::strip_hop_by_hop(&mut parts.headers, upgrade, h2_upstream);
        if had_te {
            // Never forward both framings: the body is re-framed by the upstream client.
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        // veer answers 100-continue itself when it starts reading the body.
        parts.headers.remove(header::EXPECT);
        // `handle` put the host from :authority into Host when there was none.
        let has_host = host_value.is_some();
        let fwd = headers::Forwarded::take(
            &mut parts.headers,
            &conn.client_ip,
            conn.scheme,
            host_value.as_ref(),
        );
        // Shared bytes: cloning it per attempt copies nothing.
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let mut slot = BodySlot::new(
            body,
            BodyLimit {
                timeout: snap.config.server.request_body_timeout,
                min_rate: snap.config.server.request_body_min_rate,
            },
        );
        // An HTTP/1.x body is read up to its first frame before anything goes upstream: framing
        // bad from its first byte, or a client that sends nothing, then costs no backend
        // anything. Not over HTTP/2, where a stream may wait for the answer before it sends
        // (gRPC), nor for an upgrade.
        if slot.is_some()
            && matches!(parts.version, Version::HTTP_10 | Version::HTTP_11)
            && !upgrade
            && parts.method != Method::CONNECT
        {
            match read_first(&mut slot).await {
                Ok(true) => {}
                Ok(false) => slot = None, // an empty body: nothing to stream
                Err(fault) => {
                    if let Some(c) = route.metrics.codes[pool_idx].last() {
                        c.inc(fault.code());
                    }
                    access::answered_self(&mut log, Failure::from(fault), false);
                    return (Failure::from(fault).response(), None, log);
                }
            }
        }
        // A body-less plain request goes to an HTTP/1.1 pool by the fast path, written from
        // `parts` as they are: no request built, no headers cloned for a retry.
        let plain = slot.is_none() && !upgrade && parts.method != Method::CONNECT;
        route.state.deposit(retry.budget_percent);
        let timeout = snap.config.server.request_timeout;
        let body_timeout = snap.config.server.body_timeout;

        // Backends already tried, so a retry goes elsewhere. Validation caps attempts at 10; a
        // fixed array keeps this off the heap.
        let mut tried = [0usize; MAX_TRIED];
        let mut n_tried = 0;
        // The downstream host as an HTTP/2 :authority, parsed on first need.
        let mut h2_authority: Option<Option<http::uri::Authority>> = None;
        let mut last_failure = Failure::NoBackend;
        // Whether the last failure was a connect failure (for the access log's `error`).
        let mut last_connect = false;
        let mut last_pool = pool_idx;
        // A retryable upstream answer (502/503/504) is kept until a retry is really sent, so when
        // none can be (no budget, no other backend) the client gets that answer, not veer's own.
        // Boxed: it lives in every request's future but is only ever filled on the retry path.
        let mut held: Option<Box<(Response<UpstreamBody>, Checkin, Lease)>> = None;
        for attempt in 1..=retry.attempts {
            if attempt > 1 {
                // Retries are paid for from the route's budget, so a failing pool cannot double
                // its own load.
                if !route.state.withdraw() {
                    break;
                }
                let base = retry.backoff.as_secs_f64() * 2f64.powi(attempt as i32 - 2);
                let jittered = base * (0.5 + rand::random::<f64>() * 0.5);
                if jittered > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(jittered)).await;
                }
            }
            let picked = choice::pick(route, pool_idx, bucket, &tried[..n_tried]).or_else(|| {
                if attempt == 1 {
                    pick_live(rt, snap, route, pool_idx, bucket)
                } else {
                    None
                }
            });
            let Some((pidx, mut lease)) = picked else {
                if attempt > 1 {
                    route.state.refund();
                }
                break;
            };
            if attempt > 1 {
                route.metrics.retries.inc();
            }
            held = None;
            last_pool = pidx;
            let backend = lease.backend.clone();
            let backend_slot = lease.slot;
            if let Some(t) = tried.get_mut(n_tried) {
                *t = crate::upstream::pool::backend_key(&backend);
                n_tried += 1;
            }
            let client = backend.client_guard();
            let started = Instant::now();
            // The request future owns or borrows what it needs: the client guard is not held
            // across an await.
            let request = if plain && !client.http2 {
                Either::Left(client.send_head(Head {
                    method: &parts.method,
                    target: path_and_query.as_str(),
                    headers: &parts.headers,
                    has_host,
                    extra: fwd.lines(),
                }))
            } else {
                let uri = if client.http2 {
                    // HTTP/2 has no Host header: the downstream host travels as :authority, as
                    // Host does over HTTP/1.1 (the connector dials the backend whatever the URI
                    // names).
                    let authority = host_value
                        .as_ref()
                        .and_then(|h| {
                            h2_authority
                                .get_or_insert_with(|| {
                                    h.to_str()
                                        .ok()
                                        .and_then(|h| h.parse::<http::uri::Authority>().ok())
                                })
                                .clone()
                        })
                        .unwrap_or_else(|| client.authority.clone());
                    // Built from parts: nothing is parsed again.
                    let mut uri = http::uri::Parts::default();
                    uri.scheme = Some(match client.scheme {
                        "https" => http::uri::Scheme::HTTPS,
                        _ => http::uri::Scheme::HTTP,
                    });
                    uri.authority = Some(authority);
                    uri.path_and_query = Some(path_and_query.clone());
                    let Ok(uri) = Uri::from_parts(uri) else {
                        access::answered_self(&mut log, Failure::BadRequest, false);
                        return (Failure::BadRequest.response(), None, log);
                    };
                    uri
                } else {
                    // HTTP/1.1 sends origin-form (`/path?query`) as it is.
                    Uri::from(path_and_query.clone())
                };
                let mut up = Request::new(UpBody::from_slot(&slot));
                *up.method_mut() = parts.method.clone();
                *up.uri_mut() = uri;
                // The last possible attempt needs no copy kept for a retry.
                let mut headers = if attempt == retry.attempts {
                    std::mem::take(&mut parts.headers)
                } else {
                    parts.headers.clone()
                };
                fwd.apply(&mut headers);
                if client.http2 {
                    *up.version_mut() = Version::HTTP_2;
                    headers.remove(header::HOST);
                } else {
                    *up.version_mut() = Version::HTTP_11;
                    // hyper sends no body for a GET or HEAD of unknown length unless the
                    // request says it is chunked: say so, or the body would be dropped.
                    if matches!(parts.method, Method::GET | Method::HEAD)
                        && slot.is_some()
                        && http_body::Body::size_hint(up.body()).exact().is_none()
                    {
                        headers.insert(
                            header::TRANSFER_ENCODING,
                            HeaderValue::from_static("chunked"),
                        );
                    }
                }
                *up.headers_mut() = headers;
                // Boxed: requests with bodies and HTTP/2 pools are the rarer case, and their
                // future would make every request's future larger.
                Either::Right(Box::pin(client.send(up)))
            };
            drop(client);
            // A drain that reaches its timeout cuts the backend's connections: the request then
            // fails like any broken exchange (see `CutSet`), with no per-request watcher.
            let result = tokio::select! {
                r = request => match r {
                    Ok((r, c)) => Outcome::Response(r, c),
                    Err(e) => Outcome::Error(e),
                },
                late = deadline(slot.as_deref(), timeout) => late,
            };
            // Retry rules: a request whose body started streaming is never sent again; a connect
            // failure is retried for any method (nothing reached a backend); a reset before the
            // answer for idempotent methods, or when the body was never sent (the backend did not
            // get the whole request); a 502/503/504 or timeout for idempotent methods only (unless
            // `idempotent_only = false`), because the backend may have acted on the request.
            let body_taken = slot.as_ref().is_some_and(|s| s.is_taken());
            let body_unsent = slot.is_some() && !body_taken;
            let can_retry_any = attempt < retry.attempts && !body_taken;
            let can_retry_idem = can_retry_any && (idempotent || !retry.idempotent_only);
            if let Some(l) = log.as_mut() {
                let answered = matches!(result, Outcome::Response(..)).then(|| started.elapsed());
                l.attempt(&route.pools[pidx].name, &backend.addr_label, answered);
            }
            match result {
                Outcome::Response(resp, checkin) => {
                    let status = resp.status();
                    // gRPC statuses count only where the pool says so; most come in the trailers,
                    // judged by the body as they pass.
                    let grpc = crate::upstream::http_client::grpc_verdict(&backend, resp.headers());
                    let failed = status.is_server_error() || grpc == GrpcVerdict::Failed;
                    if grpc != GrpcVerdict::AtTrailers {
                        lease.record(!failed);
                    }
                    route.metrics.duration[pidx].observe(started.elapsed().as_secs_f64());
                    count(route, pidx, &backend, backend_slot, status.as_u16());
                    rollout_observe(route, pidx, failed, started);
                    if matches!(status.as_u16(), 502..=504) && can_retry_idem {
                        held = Some(Box::new((resp, checkin, lease)));
                        continue;
                    }
                    let (r, t) = relay(resp, checkin, lease, upgrade, body_timeout, slot.as_ref());
                    return (r, t, log);
                }
                Outcome::Error(e) if e.side() == ErrorSource::Downstream => {
                    // The client's body failed (malformed, cut short, too slow) and the exchange
                    // was aborted for it: the backend saw a broken request, never a complete
                    // one, and nothing of this is its failure (no breaker, rollout gate, retry
                    // or 5xx count).
                    let fault = e.client_fault().unwrap_or(ClientFault::Gone);
                    tracing::debug!(backend = %backend.id, error = %e, "request body failed");
                    count(route, pidx, &backend, backend_slot, fault.code());
                    access::answered_self(&mut log, Failure::from(fault), false);
                    return (Failure::from(fault).response(), None, log);
                }
                Outcome::Error(e) => {
                    lease.record(false);
                    let connect = e.is_connect();
                    last_connect = connect;
                    tracing::debug!(backend = %backend.id, error = ?e, "upstream request failed");
                    count(route, pidx, &backend, backend_slot, 502);
                    rollout_observe(route, pidx, true, started);
                    last_failure = Failure::BadGateway;
                    let reset_retryable = body_unsent;
                    if ((connect || reset_retryable) && can_retry_any) || can_retry_idem {
                        continue;
                    }
                    access::answered_self(&mut log, Failure::BadGateway, connect);
                    return (Failure::BadGateway.response(), None, log);
                }
                Outcome::Timeout => {
                    lease.record(false);
                    count(route, pidx, &backend, backend_slot, 504);
                    rollout_observe(route, pidx, true, started);
                    last_failure = Failure::Timeout;
                    if can_retry_idem {
                        continue;
                    }
                    access::answered_self(&mut log, Failure::Timeout, false);
                    return (Failure::Timeout.response(), None, log);
                }
            }
        }
        if let Some(h) = held {
            let (resp, checkin, lease) = *h;
            let (r, t) = relay(resp, checkin, lease, upgrade, body_timeout, slot.as_ref());
            return (r, t, log);
        }
        if last_failure == Failure::NoBackend {
            let none = route.metrics.codes[last_pool].last();
            if let Some(c) = none {
                c.inc(503);
            }
        }
        if let Some(l) = log.as_mut() {
            if l.attempts() == 0 {
                l.pool(&route.pools[last_pool].name);
            }
        }
        access::answered_self(&mut log, last_failure, last_connect);
        (last_failure.response(), None, log)
    }
}

/// See [`BodySlot::poll_first`].
fn read_first(
    slot: &mut Option<Arc<BodySlot>>,
) -> impl Future<Output = Result<bool, ClientFault>> + Send + '_ {
    std::future::poll_fn(move |cx| match slot.as_mut() {
        Some(s) => BodySlot::poll_first(s, cx),
        None => std::task::Poll::Ready(Ok(false)),
    })
}

enum Outcome {
    Response(Response<UpstreamBody>, Checkin),
    /// A failed exchange (also a connection cut by a drain timeout, and a client's body that
    /// failed: see [`UpstreamError::side`]).
    Error(UpstreamError),
    Timeout,
}

/// The request's deadline: a plain timer for a request without a body (the common case,
/// kept small as it sits in every request's future), else [`upload_deadline`].
fn deadline(
    slot: Option<&BodySlot>,
    timeout: Duration,
) -> impl std::future::Future<Output = Outcome> + Send + '_ {
    use futures_util::future::Either;
    match slot {
        None => Either::Left(async move {
            tokio::time::sleep(timeout).await;
            Outcome::Timeout
        }),
        Some(s) => Either::Right(Box::pin(upload_deadline(s, timeout))),
    }
}

/// With a request body, `request_timeout` counts from the end of the body: an upload still
/// arriving keeps the clock from starting, as long as each stretch of `timeout` brings more
/// of it or the body is waiting on the client. A backend not reading the body times out
/// here; a client slow to send it answers to its own clock (`request_body_timeout`, kept by
/// whoever reads the body, see `BodyClock`), which fails the exchange as the client's fault.
async fn upload_deadline(s: &BodySlot, timeout: Duration) -> Outcome {
    loop {
        let seen = s.progress();
        tokio::select! {
            _ = s.sent() => {
                tokio::time::sleep(timeout).await;
                return Outcome::Timeout;
            }
            _ = tokio::time::sleep(timeout) => {
                if !s.is_taken() {
                    return Outcome::Timeout; // never got as far as sending the body
                }
                if s.progress() == seen && !s.waiting_on_client() {
                    return Outcome::Timeout;
                }
            }
        }
    }
}

/// Feed the route's running rollout step, if any (atomics only).
fn rollout_observe(route: &Route, pool: usize, failed: bool, started: Instant) {
    if route.config.rollout.is_some() {
        let name = &route.pools[pool].name;
        crate::rollout::observe(&route.state.rollout, name, failed, started.elapsed());
    }
}

fn count(route: &Route, pool: usize, backend: &Arc<Backend>, slot: usize, status: u16) {
    let backends = &route.pools[pool].backends;
    // The lease's slot is right unless the backend came from a newer snapshot (`pick_live`).
    let i = if backends.get(slot).is_some_and(|b| Arc::ptr_eq(b, backend)) {
        Some(slot)
    } else {
        backends.iter().position(|b| Arc::ptr_eq(b, backend))
    };
    if let Some(i) = i {
        route.metrics.codes[pool][i].inc(status);
    }
}

/// Turn the upstream response into the downstream one. A request body still streaming up is
/// the application's from here (see `BodySlot::set_answered`).
fn relay(
    mut resp: Response<UpstreamBody>,
    mut checkin: Checkin,
    lease: Lease,
    upgrade: bool,
    body_timeout: Duration,
    request: Option<&Arc<BodySlot>>,
) -> (Response<ProxyBody>, Option<PendingTunnel>) {
    if let Some(s) = request {
        s.set_answered();
    }
    let switching = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let on = switching.then(|| hyper::upgrade::on(&mut resp));
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching, false);
    match on {
        // The lease travels with the tunnel: the backend is busy until the tunnel closes.
        Some(upstream) => {
            checkin.forget(); // the connection is the tunnel now
            (
                Response::from_parts(parts, ProxyBody::empty()),
                Some(PendingTunnel { upstream, lease }),
            )
        }
        None => (
            Response::from_parts(
                parts,
                ProxyBody::upstream(body, checkin, lease, body_timeout, request.cloned()),
            ),
            None,
        ),
    }
}

/// The upstream side of an accepted upgrade, waiting for the downstream side.
struct PendingTunnel {
    upstream: hyper::upgrade::OnUpgrade,
    lease: Lease,
}

/// Join the two upgraded connections and copy bytes both ways until either side closes.
fn tunnel(down: hyper::upgrade::OnUpgrade, p: PendingTunnel, log: Option<access::Pending>) {
    tokio::spawn(async move {
        let PendingTunnel { upstream, lease } = p;
        let (down, up) = match tokio::try_join!(down, upstream) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        // A tunnel is in flight like any request: a drain timeout or shutdown cuts the
        // backend connection under it, which ends the copy.
        let copied = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        drop(lease);
        if let Some(l) = log {
            let (client_to_backend, backend_to_client) = copied.unwrap_or((0, 0));
            l.tunnel_closed(client_to_backend, backend_to_client);
        }
    });
}
