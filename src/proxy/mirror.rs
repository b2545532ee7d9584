//! Mirroring (SPEC §11): a copy of a chosen request goes to the route's mirror pool once the
//! client's own request has been sent (its answer's head is in), its answer is digested and
//! thrown away, and, with `compare`, judged against the answer the client got.
//!
//! The client's request never waits for the copy: the copy runs in a task of its own, takes
//! a place under the route's `max_in_flight` at once or is dropped (counted), goes through the
//! mirror pool's balancer and breakers like any request (nothing available: dropped), is
//! never retried, and counts in neither the route's rollout statistics nor its retry budget
//! nor `veer_requests_total`. A request body is teed up to `max_body` as it streams to the
//! primary ([`crate::body::Teed`]); a larger one is not copied. Both answers' bodies are
//! digested (SHA-256) as they pass, the client's on its way to the client ([`Tap`]); neither
//! is ever held whole.
//!
//! Routes without mirroring pay one branch in `dispatch` (`route.mirror` is `None`) and
//! nothing else: no allocation, and the request future is the same size (the mirrored
//! variant is boxed).

use super::body::{ProxyBody, RequestBody};
use super::{headers, ConnCtx};
use crate::body::{BodyError, Teed};
use crate::metrics::mirror::{Outcome, Sample};
use crate::routing::{MirrorTarget, Route};
use crate::upstream::http_client::{BodySlot, UpBody};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::{Body, Frame};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::oneshot;

/// The header every copy carries, so backends can skip side effects.
pub static X_VEER_MIRROR: HeaderName = HeaderName::from_static("x-veer-mirror");

/// How long a copy waits for the client's answer to end before it gives up comparing (a
/// long download or a stream): the copy's own place is given back before this wait.
const CLIENT_WAIT: Duration = Duration::from_secs(300);

/// Is a request of `bucket` among the `percent_bp` hundredths of a percent copied? Exactly
/// `percent_bp` buckets of 10,000 are, so a user's requests are copied together: those at
/// the top of the split's bucket order ([`crate::routing::split::position`]), where a
/// two-pool split's second pool takes the bottom. The copied users are then the last a
/// rollout moves, and requests without a sticky key (which walk the buckets in the order
/// the split is exact for) are copied in the exact share too.
pub fn copied(bucket: u32, percent_bp: u32) -> bool {
    let top = crate::routing::BUCKETS - 1 - crate::routing::split::position(bucket);
    top < percent_bp
}

/// What a copy needs of its request, taken before the request is forwarded.
pub(super) struct Copy {
    ctx: ConnCtx,
    route: Arc<Route>,
    method: Method,
    path_and_query: http::uri::PathAndQuery,
    headers: HeaderMap,
    host: Option<HeaderValue>,
    /// The teed request body, for a request that has one.
    body: Option<oneshot::Receiver<Bytes>>,
    request_timeout: Duration,
    body_wait: Duration,
}

/// Decide whether this request is copied and, if so, take what the copy needs (and tee its
/// body). Called only for a route with mirroring.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    ctx: &ConnCtx,
    route: &Arc<Route>,
    m: &MirrorTarget,
    req: &mut Request<RequestBody>,
    pool_idx: usize,
    bucket: u32,
    upgrade: bool,
    host: &Option<HeaderValue>,
    server: &crate::config::ServerConfig,
) -> Option<Box<Copy>> {
    let c = &m.config;
    if upgrade
        || !c.copies(req.method())
        || !copied(bucket, c.percent_bp)
        || route
            .pools
            .get(pool_idx)
            .is_some_and(|p| Arc::ptr_eq(p, &m.pool))
    {
        return None;
    }
    let body = if req.body().is_end_stream() {
        None
    } else {
        // A body known to be larger is not copied (nor teed).
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let hinted = req.body().size_hint().lower();
        if declared.is_some_and(|n| n > c.max_body) || hinted > c.max_body {
            return None;
        }
        let body = std::mem::replace(req.body_mut(), RequestBody::Empty);
        let (teed, rx) = Teed::wrap(body, usize::try_from(c.max_body).unwrap_or(usize::MAX));
        *req.body_mut() = teed;
        Some(rx)
    };
    Some(Box::new(Copy {
        ctx: ctx.clone(),
        route: route.clone(),
        method: req.method().clone(),
        path_and_query: req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        headers: req.headers().clone(),
        host: host.clone(),
        body,
        request_timeout: server.request_timeout,
        body_wait: server.request_body_timeout.max(server.request_timeout),
    }))
}

/// The client's answer as the comparison needs it.
struct ClientAnswer {
    status: u16,
    headers: HeaderMap,
    digest: oneshot::Receiver<Digested>,
}

/// The client has its answer's head: send the copy (in its own task). An answer veer made
/// itself (no backend, a timeout, a bad request) has nothing to compare and is not copied;
/// nor is one the mirror pool gave (`pool`, the request fell back to it): that pool has had
/// the request once, and its answer compared with itself says nothing.
pub(super) fn launch(copy: Box<Copy>, resp: &mut Response<ProxyBody>, pool: usize) {
    if resp.body().is_full() {
        return;
    }
    let Some(m) = copy.route.mirror.as_deref() else {
        return;
    };
    if copy
        .route
        .pools
        .get(pool)
        .is_some_and(|p| Arc::ptr_eq(p, &m.pool))
    {
        return;
    }
    let client = if m.config.compare {
        let (tx, rx) = oneshot::channel();
        let inner = std::mem::replace(resp.body_mut(), ProxyBody::empty());
        *resp.body_mut() = ProxyBody::Tapped(Box::new(Tap::new(
            inner,
            tx,
            copy.route.state.mirror.clone(),
        )));
        Some(ClientAnswer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            digest: rx,
        })
    } else {
        None
    };
    tokio::spawn(run(copy, client));
}

/// A body's length and SHA-256, computed as it streams.
pub struct BodyDigest {
    ctx: ring::digest::Context,
    len: u64,
}

impl Default for BodyDigest {
    fn default() -> Self {
        BodyDigest {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }
}

impl BodyDigest {
    pub fn update(&mut self, d: &[u8]) {
        self.ctx.update(d);
        self.len += d.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digested {
        Digested {
            len: self.len,
            sha256: self.ctx.finish(),
        }
    }
}

/// A whole body's digest.
#[derive(Debug, Clone)]
pub struct Digested {
    pub len: u64,
    sha256: ring::digest::Digest,
}

impl PartialEq for Digested {
    fn eq(&self, o: &Self) -> bool {
        self.len == o.len && self.sha256.as_ref() == o.sha256.as_ref()
    }
}

/// The client's answer body, digested on its way to the client. The digest is handed to
/// the copy when the body has ended (also when the writer stops at its Content-Length
/// without a last poll); a body cut short hands over nothing.
pub struct Tap {
    pub(super) inner: ProxyBody,
    digest: Option<BodyDigest>,
    /// The body's length as its head says, when it says it.
    expect: Option<u64>,
    tx: Option<oneshot::Sender<Digested>>,
    stats: Arc<crate::metrics::mirror::MirrorStats>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("inner", &self.inner).finish()
    }
}

impl Tap {
    fn new(
        inner: ProxyBody,
        tx: oneshot::Sender<Digested>,
        stats: Arc<crate::metrics::mirror::MirrorStats>,
    ) -> Self {
        Tap {
            expect: inner.size_hint().exact(),
            inner,
            digest: Some(BodyDigest::default()),
            tx: Some(tx),
            stats,
        }
    }

    fn finish(&mut self) {
        if let (Some(tx), Some(d)) = (self.tx.take(), self.digest.take()) {
            let _ = tx.send(d.finish());
        }
    }

    fn complete(&self) -> bool {
        self.inner.is_end_stream()
            || self
                .expect
                .is_some_and(|n| self.digest.as_ref().is_some_and(|d| d.len() == n))
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(data)) = (self.digest.as_mut(), f.data_ref()) {
                    d.update(data);
                    self.stats.add_digested(data.len() as u64);
                }
                if self.complete() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.tx = None,
            Poll::Pending => {}
        }
        polled
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.complete() {
            self.finish();
        }
    }
}

/// The copy's whole life: wait for its body, take a place, send, digest the answer, compare.
async fn run(c: Box<Copy>, client: Option<ClientAnswer>) {
    let Copy {
        ctx,
        route,
        method,
        path_and_query,
        mut headers,
        host,
        body,
        request_timeout,
        body_wait,
    } = *c;
    let Some(m) = route.mirror.as_deref() else {
        return;
    };
    // A body larger than max_body, or one that failed or was never read whole: no copy.
    let body = match body {
        None => None,
        Some(rx) => match tokio::time::timeout(body_wait, rx).await {
            Ok(Ok(b)) => Some(b),
            _ => return,
        },
    };
    let stats = &route.state.mirror;
    let Some(place) = stats.try_start(m.config.max_in_flight) else {
        m.counts.inc(Outcome::Dropped);
        return;
    };
    let Some(mut lease) = m.pool.pick(&[]) else {
        m.counts.inc(Outcome::Dropped);
        return;
    };
    let backend = lease.backend.clone();
    let client_guard = backend.client_guard();
    let http2 = client_guard.http2;
    let had_te = headers::strip_hop_by_hop(&mut headers, false, http2);
    if had_te || body.is_none() {
        headers.remove(header::CONTENT_LENGTH);
    }
    headers.remove(header::EXPECT);
    let conn = &ctx.1;
    headers::Forwarded::take(&mut headers, &conn.client_ip, conn.scheme, host.as_ref())
        .apply(&mut headers);
    headers.insert(X_VEER_MIRROR.clone(), HeaderValue::from_static("1"));
    if let Some(b) = &body {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
    }
    let uri = if http2 {
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .unwrap_or_else(|| client_guard.authority.clone());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(match client_guard.scheme {
            "https" => http::uri::Scheme::HTTPS,
            _ => http::uri::Scheme::HTTP,
        });
        parts.authority = Some(authority);
        parts.path_and_query = Some(path_and_query.clone());
        match Uri::from_parts(parts) {
            Ok(u) => u,
            Err(_) => {
                m.counts.inc(Outcome::Error);
                return;
            }
        }
    } else {
        Uri::from(path_and_query.clone())
    };
    let slot = body.map(|b| {
        BodySlot::new(
            RequestBody::Full(Some(b)),
            crate::body::BodyLimit {
                timeout: Duration::ZERO,
                min_rate: 0,
            },
        )
    });
    let mut up = Request::new(UpBody::from_slot(&slot.flatten()));
    *up.method_mut() = method.clone();
    *up.uri_mut() = uri;
    if http2 {
        *up.version_mut() = Version::HTTP_2;
        headers.remove(header::HOST);
    } else {
        *up.version_mut() = Version::HTTP_11;
    }
    *up.headers_mut() = headers;
    let sending = client_guard.send(up);
    drop(client_guard);
    // The head within request_timeout, and the body within as long again.
    let (resp, mut checkin) = match tokio::time::timeout(request_timeout, sending).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::debug!(backend = %backend.id, error = %e, "mirrored copy failed");
            lease.record(false);
            m.counts.inc(Outcome::Error);
            return;
        }
        Err(_) => {
            tracing::debug!(backend = %backend.id, "mirrored copy timed out");
            lease.record(false);
            m.counts.inc(Outcome::Error);
            return;
        }
    };
    lease.record(!resp.status().is_server_error());
    let (mut parts, mut up_body) = resp.into_parts();
    let mut digest = BodyDigest::default();
    let read = tokio::time::timeout(request_timeout, async {
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut up_body).poll_frame(cx)).await {
            let f = f?;
            if let Some(d) = f.data_ref() {
                digest.update(d);
                stats.add_digested(d.len() as u64);
            }
        }
        Ok::<(), BodyError>(())
    })
    .await;
    match read {
        Ok(Ok(())) => checkin.release(),
        _ => {
            checkin.forget();
            m.counts.inc(Outcome::Error);
            return;
        }
    }
    drop(lease);
    drop(place);
    let Some(client) = client else {
        m.counts.inc(Outcome::Sent);
        return;
    };
    // The client's answer cut short (or too long to wait for): nothing to compare.
    let Ok(Ok(theirs)) = tokio::time::timeout(CLIENT_WAIT, client.digest).await else {
        return;
    };
    headers::strip_hop_by_hop(&mut parts.headers, false, false);
    let ours = digest.finish();
    let differing = differing_headers(&client.headers, &parts.headers, &m.config.ignore_headers);
    let status = parts.status.as_u16();
    let same = status == client.status && differing.is_empty() && ours == theirs;
    crate::metrics::step::observe_mirror(&route.state.rollout, !same);
    if same {
        m.counts.inc(Outcome::Same);
        return;
    }
    m.counts.inc(Outcome::Differ);
    stats.push_sample(Sample {
        time_ms: std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        method: method.to_string(),
        path: path_and_query.path().to_string(),
        status: client.status,
        mirror_status: status,
        headers: differing,
        body_len: theirs.len,
        mirror_body_len: ours.len,
        body_differs: ours != theirs,
    });
}

/// Never compared: framing (the bodies are compared by digest and length) and the date.
fn always_ignored(n: &HeaderName) -> bool {
    n == header::DATE || n == header::CONTENT_LENGTH || n == header::TRANSFER_ENCODING
}

/// The names of headers whose values differ between the two answers (or that only one
/// has), sorted, less the ignored ones. Hop-by-hop headers are already gone from both.
pub fn differing_headers(a: &HeaderMap, b: &HeaderMap, ignore: &[HeaderName]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in a.keys().chain(b.keys()) {
        if always_ignored(name) || ignore.contains(name) || out.iter().any(|o| o == name.as_str()) {
            continue;
        }
        let (x, y) = (a.get_all(name), b.get_all(name));
        if !x.iter().eq(y.iter()) {
            out.push(name.as_str().to_string());
        }
    }
    out.sort();
    out
}

/// A route's `mirror` object in `/api/status`: null without mirroring, else the target, the
/// counts by result, the difference rate of compared copies and the latest differing
/// samples, newest first.
pub fn status_json(route: &Route) -> serde_json::Value {
    use serde_json::json;
    let Some(m) = route.mirror.as_deref() else {
        return serde_json::Value::Null;
    };
    let s = &route.state.mirror;
    let counts: serde_json::Map<String, serde_json::Value> = Outcome::ALL
        .iter()
        .map(|o| (o.as_str().to_string(), json!(m.counts.get(*o))))
        .collect();
    let (same, differ) = (m.counts.get(Outcome::Same), m.counts.get(Outcome::Differ));
    let compared = same + differ;
    json!({
        "to": m.config.to,
        "percent": f64::from(m.config.percent_bp) / 100.0,
        "methods": m.config.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
        "compare": m.config.compare,
        "max_in_flight": m.config.max_in_flight,
        "in_flight": s.in_flight(),
        "counts": counts,
        "diff_rate": if compared == 0 { serde_json::Value::Null } else { json!(differ as f64 / compared as f64) },
        "bytes_digested": s.digested(),
        "samples": s.samples().iter().map(Sample::json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_share_of_buckets_is_copied() {
        for bp in [0, 1, 500, 2_500, 5_000, 9_999, 10_000] {
            let n = (0..crate::routing::BUCKETS)
                .filter(|&b| copied(b, bp))
                .count();
            assert_eq!(n as u32, bp, "{bp}");
        }
        // A larger share only adds buckets.
        for b in 0..crate::routing::BUCKETS {
            if copied(b, 1_000) {
                assert!(copied(b, 2_000));
            }
        }
    }

    #[test]
    fn headers_compare_less_the_ignored_ones() {
        let mut a = HeaderMap::new();
        let mut b = HeaderMap::new();
        a.insert("content-type", "text/plain".parse().unwrap());
        b.insert("content-type", "text/html".parse().unwrap());
        a.insert("date", "Mon".parse().unwrap());
        b.insert("date", "Tue".parse().unwrap());
        a.insert("x-request-id", "1".parse().unwrap());
        b.insert("x-request-id", "2".parse().unwrap());
        a.insert("content-length", "5".parse().unwrap());
        b.append("x-only-b", "1".parse().unwrap());
        a.append("vary", "a".parse().unwrap());
        a.append("vary", "b".parse().unwrap());
        b.append("vary", "a".parse().unwrap());
        b.append("vary", "b".parse().unwrap());
        let ignore = [HeaderName::from_static("x-request-id")];
        assert_eq!(
            differing_headers(&a, &b, &ignore),
            vec!["content-type".to_string(), "x-only-b".to_string()]
        );
        assert!(differing_headers(&a, &a, &[]).is_empty());
    }

    #[test]
    fn digests_do_not_depend_on_how_the_body_is_cut() {
        let body = vec![7u8; 100_000];
        let mut one = BodyDigest::default();
        one.update(&body);
        let mut many = BodyDigest::default();
        for c in body.chunks(333) {
            many.update(c);
        }
        assert_eq!(one.finish(), many.finish());
        let mut other = BodyDigest::default();
        other.update(&body[1..]);
        other.update(&[8]);
        let mut same = BodyDigest::default();
        same.update(&body);
        assert_ne!(other.finish(), same.finish());
    }
}
