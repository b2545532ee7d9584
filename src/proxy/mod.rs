//! The request path: accept loop and connections ([`server`]), header rewriting
//! ([`headers`]), the downstream body ([`body`]), the request's checks and route choice
//! (here), forwarding with retries (`forward`, with the rules and accounting in `retry`).
//!
//! Per request: one snapshot load, route match, pool by sticky bucket and split, backend by
//! the pool's balancer, then forward with retries on a different backend where safe.

pub mod accept;
pub mod access;
mod activity;
pub mod body;
mod forward;
pub mod headers;
mod http1;
pub use http1::trim_pools;
mod http2;
pub mod listeners;
pub mod mirror;
mod retry;
pub mod server;

use crate::routing::choice;
use crate::runtime::Live;
use body::{ClientFault, ProxyBody, RequestBody};
use forward::{forward, tunnel};
use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

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

/// The connection a request came on, shared by its requests.
pub type ConnCtx = Arc<(Arc<Live>, ConnInfo)>;

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
        let answer = access::own(Failure::NoRoute, log);
        if http_body::Body::is_end_stream(req.body()) {
            return Either::Left(ready(answer));
        }
        let wait = snap.config.server.request_body_timeout;
        return Either::Right(Either::Right(discard_body(req.into_body(), wait, answer)));
    };
    if let Some(l) = log.as_mut() {
        l.route(&route.name);
    }

    // Which pool: forced by an allowed override, else the user's bucket under today's weights.
    let choice = choice::choose(&route, req.headers(), conn.peer.ip(), conn.tls.is_some());
    let (pool_idx, bucket, new_cookie) = (choice.pool, choice.bucket, choice.set_cookie);

    // Only an upgrade veer tunnels is forwarded as one; any other (h2c) goes on as plain
    // HTTP/1.1 with its Upgrade stripped.
    let upgrade = req.version() == Version::HTTP_11
        && headers::is_tunnelled_upgrade(req.headers(), &snap.config.server.upgrades);
    // Boxed with the config that judges the backend's 101: upgrades are rare, and this sits
    // in every request's future.
    let down_upgrade =
        upgrade.then(|| Box::new((hyper::upgrade::on(&mut req), snap.config.clone())));
    // Mirroring: one branch for a route without it.
    let copy = match route.mirror.as_deref() {
        None => None,
        Some(m) => mirror::prepare(
            &ctx,
            &route,
            m,
            &mut req,
            pool_idx,
            bucket,
            upgrade,
            &host_value,
            &snap.config.server,
        ),
    };
    let (parts, body) = req.into_parts();
    let forwarding = forward(
        ctx, snap, route, parts, body, pool_idx, bucket, host_value, upgrade, log,
    );
    let answered =
        move |(resp, pending, log, _)| answer(resp, pending, log, down_upgrade, new_cookie);
    match copy {
        None => Either::Right(Either::Left(forwarding.map(answered))),
        // Boxed: the mirrored variant must not make every request's future larger.
        Some(copy) => {
            let mirrored: Boxed =
                Box::pin(forwarding.map(move |(mut resp, pending, log, pool)| {
                    mirror::launch(copy, &mut resp, pool);
                    answered((resp, pending, log, pool))
                }));
            Either::Right(Either::Right(mirrored))
        }
    }
}

/// The rare answers that wait on something first, behind one pointer.
type Boxed = std::pin::Pin<Box<dyn Future<Output = Logged> + Send>>;

/// The most of an unrouted request's body read and thrown away so its connection can carry
/// the next request; a larger one closes the connection after the answer.
const DISCARD_LIMIT: usize = 64 * 1024;

/// An answer veer gives without a backend to a well-formed request whose body is still on
/// its way: the body is read to its end first (up to [`DISCARD_LIMIT`] bytes, within
/// `request_body_timeout`), as nginx discards it, so the connection stays open for the next
/// request. Answering first left hyper to close the connection whenever the rest of the body
/// had not arrived by the time the answer was written, so keep-alive depended on timing.
fn discard_body(mut body: RequestBody, wait: std::time::Duration, answer: Logged) -> Boxed {
    Box::pin(async move {
        use http_body_util::BodyExt;
        let read = async {
            let mut left = DISCARD_LIMIT;
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len());
                if n > left {
                    break;
                }
                left -= n;
            }
        };
        let _ = tokio::time::timeout(wait, read).await;
        answer
    })
}

/// The answer the client gets: an upgrade's tunnel started, a minted sticky cookie set.
fn answer(
    mut resp: Response<ProxyBody>,
    pending: Option<forward::PendingTunnel>,
    mut log: Option<access::Pending>,
    down_upgrade: Option<Box<(hyper::upgrade::OnUpgrade, Arc<crate::config::Config>)>>,
    new_cookie: Option<String>,
) -> Logged {
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
