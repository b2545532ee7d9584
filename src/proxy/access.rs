//! The request path's side of the access log and request IDs (SPEC.md §8): the request ID
//! is settled first thing; the log entry is started only when the access log is on, filled
//! in as the request is routed and forwarded, and handed to the writer when the answer has
//! been sent ([`Logged`], the response body's wrapper) or, for an upgrade, when the tunnel
//! closes. Nothing here waits or takes a lock.

use super::body::ProxyBody;
use super::{ConnCtx, Failure};
use crate::log::access::{self, Entry, Text};
use crate::log::request_id;
use crate::upstream::http_client::BodySlot;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use std::sync::Arc;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's ID: a sane incoming `X-Request-Id` is kept (one only: two are replaced),
/// otherwise one is made and set on the request, so the backend gets it.
///
/// The value is marked sensitive: HPACK then never indexes it. Every request's ID is new, and
/// indexing each one filled the HTTP/2 encoder's table with IDs, evicting the headers worth
/// keeping and walking a chain of old IDs on every answer (~3,500 instructions a request).
pub fn request_id<B>(req: &mut Request<B>) -> HeaderValue {
    let kept = {
        let mut all = req.headers().get_all(&X_REQUEST_ID).iter();
        matches!((all.next(), all.next()), (Some(v), None) if request_id::sane(v))
    };
    // Looked up again only when kept: most requests bring no ID, and pay one lookup.
    if kept {
        if let Some(v) = req.headers_mut().get_mut(&X_REQUEST_ID) {
            v.set_sensitive(true);
            return v.clone();
        }
    }
    let mut id = request_id::generate();
    id.set_sensitive(true);
    req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// A request's log entry while it is handled, with the connection it needs at the end. One
/// dropped unwritten (the client went away before its answer) is written with status 499,
/// as nginx does.
pub struct Pending {
    entry: Option<Box<Entry>>,
    ctx: ConnCtx,
    /// The request body, while it streams: `bytes_in` is what was read of it.
    body: Option<Arc<BodySlot>>,
}

impl Pending {
    /// The entry for `req`, when the access log is on (else nothing is built). Its strings
    /// are copied: holding the request's own header bytes would keep the connection's read
    /// buffer from being reused until the line is written.
    pub fn begin<B>(ctx: &ConnCtx, req: &Request<B>, id: &HeaderValue) -> Option<Pending> {
        let log = ctx.0.access_log.get()?;
        let h = req.headers();
        let info = &ctx.1;
        let mut e = log.entry();
        // The one clock read at the start: the writer places it on the wall clock.
        e.started = access::now();
        e.client_ip = info.peer.ip();
        e.method = Some(req.method().clone());
        e.version = req.version();
        e.tls = info.tls.clone();
        e.set_text(Text::RequestId, Some(id.as_bytes()));
        // One walk over the headers instead of a hashed lookup for each (the first value of
        // each, as `get` gives).
        let (mut host, mut agent, mut referer) = (None, None, None);
        for (name, value) in h {
            if *name == header::USER_AGENT {
                agent = agent.or(Some(value.as_bytes()));
            } else if *name == header::REFERER {
                referer = referer.or(Some(value.as_bytes()));
            } else if *name == header::HOST {
                host = host.or(Some(value.as_bytes()));
            }
        }
        let host = match req.uri().authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => host,
        };
        e.set_text(Text::Host, host);
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        e.set_text(Text::Path, Some(path.as_bytes()));
        e.set_text(Text::UserAgent, agent);
        e.set_text(Text::Referer, referer);
        Some(Pending {
            entry: Some(e),
            ctx: ctx.clone(),
            body: None,
        })
    }

    /// The request's body is read through `slot`: `bytes_in` counts what it gives.
    pub fn body(&mut self, slot: &Arc<BodySlot>) {
        self.body = Some(slot.clone());
    }

    /// The route the request matched.
    pub fn route(&mut self, route: &Arc<str>) {
        if let Some(e) = self.entry.as_mut() {
            e.route = Some(route.clone());
        }
    }

    /// An attempt answered (or failed) on `backend` of `pool`; `upstream` is the time to its
    /// response headers, when it answered.
    pub fn attempt(
        &mut self,
        pool: &Arc<str>,
        backend: &Arc<str>,
        upstream: Option<std::time::Duration>,
    ) {
        if let Some(e) = self.entry.as_mut() {
            e.attempts += 1;
            e.pool = Some(pool.clone());
            e.backend = Some(backend.clone());
            e.upstream = upstream;
        }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.entry.as_ref().map_or(0, |e| e.attempts)
    }

    /// The pool chosen, before any backend (a 503 with none left still names it).
    pub fn pool(&mut self, pool: &Arc<str>) {
        if let Some(e) = self.entry.as_mut() {
            e.pool = Some(pool.clone());
        }
    }

    /// veer answered itself, for this reason.
    pub fn failed(&mut self, why: &'static str) {
        if let Some(e) = self.entry.as_mut() {
            e.error = Some(why);
        }
    }

    /// Hand the finished entry to the writer (when sampling keeps it).
    fn submit(mut self, status: u16, bytes_in: Option<u64>, bytes_out: u64) {
        self.write(status, bytes_in, bytes_out);
    }

    fn write(&mut self, status: u16, bytes_in: Option<u64>, bytes_out: u64) {
        let Some(mut e) = self.entry.take() else {
            return;
        };
        let Some(log) = self.ctx.0.access_log.get() else {
            return;
        };
        if !log.keeps(status, e.error.is_some()) {
            log.recycle(e);
            return;
        }
        e.status = status;
        e.bytes_out = bytes_out;
        e.bytes_in = match (bytes_in, &self.body) {
            (Some(b), _) => b,
            (None, Some(slot)) => slot.received(),
            (None, None) => 0,
        };
        e.duration = std::time::Duration::from_nanos(access::now().saturating_sub(e.started));
        log.submit(e);
    }

    /// A tunnel (WebSocket) closed after this many bytes each way: its one line.
    pub fn tunnel_closed(self, bytes_in: u64, bytes_out: u64) {
        self.submit(101, Some(bytes_in), bytes_out);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.entry.is_some() {
            // Handled no further: the client went away before its answer.
            self.failed("client_gone");
            self.write(499, None, 0);
        }
    }
}

/// The reason veer gives in the log for answering itself.
pub fn reason(f: Failure, connect: bool) -> &'static str {
    match f {
        Failure::NoRoute => "no_route",
        Failure::BadRequest => "bad_request",
        Failure::NoBackend => "no_backend",
        Failure::BadGateway if connect => "connect_failed",
        Failure::BadGateway => "upstream_failed",
        Failure::Timeout => "timeout",
        Failure::ClientTimeout => "client_timeout",
        Failure::ClientGone => "client_gone",
    }
}

/// Note in the entry, if any, that veer answered itself with `f`.
pub fn answered_self(log: &mut Option<Pending>, f: Failure, connect: bool) {
    if let Some(l) = log.as_mut() {
        l.failed(reason(f, connect));
    }
}

/// veer's own answer for `f`, logged as such.
pub fn own(f: Failure, log: Option<Pending>) -> (Response<ProxyBody>, Option<Pending>) {
    let log = log.map(|mut p| {
        p.failed(reason(f, false));
        p
    });
    (f.response(), log)
}

/// The answer as it leaves: the request ID on it, and the log entry riding on its body
/// until the body has been sent (a 101's entry has gone with its tunnel).
pub fn finish(
    mut resp: Response<ProxyBody>,
    id: HeaderValue,
    log: Option<Pending>,
) -> Response<ProxyBody> {
    resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    match log {
        None => resp,
        Some(pending) => {
            let status = resp.status().as_u16();
            resp.map(|inner| {
                ProxyBody::Logged(Box::new(Logged {
                    inner,
                    pending: Some(pending),
                    status,
                    bytes: 0,
                }))
            })
        }
    }
}

/// A response body that counts what it sends and writes the request's log line when it is
/// done (sent, or dropped: a client gone mid-body still gets its line).
pub struct Logged {
    pub(super) inner: ProxyBody,
    pending: Option<Pending>,
    status: u16,
    pub(super) bytes: u64,
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.submit(self.status, None, self.bytes);
        }
    }
}

impl std::fmt::Debug for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logged")
            .field("inner", &self.inner)
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// A request veer refused before there was one to handle: hyper's answer to a head it could
/// not read (`status` as hyper wrote it), or a head that did not arrive within
/// `header_read_timeout` (408, nothing written: the connection is closed, as nginx logs it).
/// Its line has what the connection knows (client, TLS name); method, host and path are
/// null. Never sampled away: it is veer's own error.
pub fn refused(ctx: &ConnCtx, status: u16, why: &'static str) {
    let Some(log) = ctx.0.access_log.get() else {
        return;
    };
    let mut e = log.entry();
    e.started = access::now();
    e.client_ip = ctx.1.peer.ip();
    e.method = None;
    e.tls = ctx.1.tls.clone();
    e.status = status;
    e.error = Some(why);
    log.submit(e);
}

/// The status hyper answered a connection's error with, and the log's reason for it; `None`
/// when hyper wrote no answer (an I/O error, an HTTP/2 preface on an HTTP/1-only connection,
/// hyper's own internal error). As hyper 1.x's `Server::on_error` (proto/h1/role.rs) answers:
/// 431 for a head over `max_buf_size` or too many headers, 414 for a URI too long, 400 for
/// a bad method, URI, version or header.
pub fn hyper_refusal(e: &(dyn std::error::Error + 'static)) -> Option<(u16, &'static str)> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() {
        return None;
    }
    // hyper tells its kinds apart only by their text (TooLarge and UriTooLong share
    // `is_parse_too_large`; Internal has no test of its own).
    let text = e.to_string();
    Some(if e.is_parse_too_large() {
        if text.starts_with("URI too long") {
            (414, "uri_too_long")
        } else {
            (431, "header_too_large")
        }
    } else if text.starts_with("internal error") {
        return None;
    } else {
        (400, "bad_request")
    })
}
