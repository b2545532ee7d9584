//! Forwarding one request: the attempts (a backend each, retried elsewhere where the rules
//! in `retry` allow), the request's deadline, and relaying the answer or an upgrade's tunnel.

use super::body::{BodyLimit, ClientFault, ProxyBody, RequestBody};
use super::retry::{self, is_idempotent, Allowed, Attempt, Outcome};
use super::{access, headers, ConnCtx, Failure};
use crate::config::Protocol;
use crate::routing::{choice, Route};
use crate::runtime::{Live, Snapshot};
use crate::upstream::h1::Head;
use crate::upstream::http_client::{BodySlot, Checkin, ErrorSource, UpBody, UpstreamBody};
use crate::upstream::Lease;
use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A request that chose its route on a snapshot a reload has just replaced can find that
/// snapshot's backends already draining: take the backend from the live snapshot instead
/// (same route and pool, by name), so a reload never turns into a 503.
fn pick_live(
    rt: &Live,
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

/// A retryable upstream answer kept back, with its pool's index.
type Held = (Response<UpstreamBody>, Checkin, Lease, usize);

/// The most backends one request tries (validation caps `retry.attempts` at 10).
const MAX_TRIED: usize = 10;

/// Not an `async fn`: its arguments would each be kept twice in the future (as arguments and
/// as the locals they move into); an `async move` block uses what it captures in place.
///
/// The output's last part is the index of the pool that answered (a fallback's, when the
/// request fell back), or of the chosen one when veer answered itself.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
pub(super) fn forward(
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
        usize,
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
        if let (Some(l), Some(s)) = (log.as_mut(), slot.as_ref()) {
            l.body(s);
        }
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
                    return (Failure::from(fault).response(), None, log, pool_idx);
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
        let mut held: Option<Box<Held>> = None;
        for attempt in 1..=retry.attempts {
            if attempt > 1 {
                // Retries are paid for from the route's budget, so a failing pool cannot double
                // its own load.
                if !route.state.withdraw() {
                    break;
                }
                let wait = retry::backoff(retry, attempt);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
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
                        return (Failure::BadRequest.response(), None, log, pool_idx);
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
            let allowed = Allowed::after(attempt, retry, idempotent, slot.as_deref());
            let at = Attempt {
                route,
                pool: pidx,
                backend: &backend,
                slot: backend_slot,
                started,
            };
            result.record(&at, &mut lease);
            if let Some(l) = log.as_mut() {
                let answered = matches!(result, Outcome::Response(..)).then(|| started.elapsed());
                l.attempt(&route.pools[pidx].name, &backend.addr_label, answered);
            }
            match result {
                Outcome::Response(resp, checkin) => {
                    if matches!(resp.status().as_u16(), 502..=504) && allowed.idempotent {
                        held = Some(Box::new((resp, checkin, lease, pidx)));
                        continue;
                    }
                    let (r, t) = relay(resp, checkin, lease, upgrade, body_timeout, slot.as_ref());
                    return (r, t, log, pidx);
                }
                Outcome::Error(e) if e.side() == ErrorSource::Downstream => {
                    // The client's body failed (malformed, cut short, too slow) and the exchange
                    // was aborted for it: the backend saw a broken request, never a complete
                    // one, and nothing of this is its failure (no breaker, rollout gate, retry
                    // or 5xx count).
                    let fault = e.client_fault().unwrap_or(ClientFault::Gone);
                    tracing::debug!(backend = %backend.id, error = %e, "request body failed");
                    access::answered_self(&mut log, Failure::from(fault), false);
                    return (Failure::from(fault).response(), None, log, pool_idx);
                }
                Outcome::Error(e) => {
                    tracing::debug!(backend = %backend.id, error = ?e, "upstream request failed");
                    last_failure = Failure::BadGateway;
                    last_connect = e.is_connect();
                    if allowed.after_error(last_connect) {
                        continue;
                    }
                    access::answered_self(&mut log, Failure::BadGateway, last_connect);
                    return (Failure::BadGateway.response(), None, log, pool_idx);
                }
                Outcome::Timeout => {
                    last_failure = Failure::Timeout;
                    if allowed.idempotent {
                        continue;
                    }
                    access::answered_self(&mut log, Failure::Timeout, false);
                    return (Failure::Timeout.response(), None, log, pool_idx);
                }
            }
        }
        if let Some(h) = held {
            let (resp, checkin, lease, pidx) = *h;
            let (r, t) = relay(resp, checkin, lease, upgrade, body_timeout, slot.as_ref());
            return (r, t, log, pidx);
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
        (last_failure.response(), None, log, last_pool)
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
pub(super) struct PendingTunnel {
    upstream: hyper::upgrade::OnUpgrade,
    lease: Lease,
}

/// Join the two upgraded connections and copy bytes both ways until either side closes.
pub(super) fn tunnel(
    down: hyper::upgrade::OnUpgrade,
    p: PendingTunnel,
    log: Option<access::Pending>,
) {
    tokio::spawn(async move {
        let PendingTunnel { upstream, lease } = p;
        let (down, up) = match tokio::try_join!(down, upstream) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                if let Some(l) = log {
                    l.tunnel_closed(0, 0);
                }
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
