//! Writing a request head: one buffer, one write.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};

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
    pub fn of(req: &'a Request<crate::upstream::http_client::UpBody>) -> Self {
        Head {
            method: req.method(),
            target: req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            headers: req.headers(),
            has_host: true,
            extra: &[],
        }
    }
}

pub(super) fn write_head(out: &mut Vec<u8>, req: &Head<'_>, default_host: &str) {
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
