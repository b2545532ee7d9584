//! Which requests the admin listener serves at all, before any token check: web pages must
//! not be able to use it through the visitor's browser.
//!
//! - **Host** (DNS rebinding: a page on `rebind.evil.example` whose name is re-pointed at
//!   127.0.0.1 is same-origin with the admin API): every path but `/healthz` and `/readyz`
//!   answers only to a `Host` that is the listener's own address, `localhost` or a loopback
//!   address (on any port: `kubectl port-forward` and `ssh -L` change it), an IP address on
//!   the listener's port when it is bound to `0.0.0.0`/`[::]` (a Kubernetes probe or a
//!   Prometheus scrape by pod IP), or a name of `[admin] hosts`. Anything else gets **421
//!   Misdirected Request** (RFC 9110 §15.5.20: this server is not the one the URI names),
//!   not 403: nothing about the client is refused, the name is. Liveness and readiness answer
//!   any Host: they tell nothing and change nothing, and a probe that fails over a Host name
//!   restarts a healthy pod.
//! - **Cross-site mutations** (CSRF: a `text/plain` POST is a "simple" request a browser sends
//!   cross-site without asking): a non-GET/HEAD `/api/*` call is refused with **403** when
//!   `Sec-Fetch-Site` is `cross-site` or its `Origin` is not the origin it was sent to (or a
//!   name of `[admin] hosts`), and with **415** when it carries a body that is not
//!   `Content-Type: application/json` (which no page can send cross-origin without a CORS
//!   preflight, and the admin API answers none). A body-less POST needs no content type:
//!   browsers add `Origin` to every POST, so the origin check covers it.
//!
//! Requests without `Host` (HTTP/1.0, as HAProxy's default health check sends) are not
//! browser requests and pass the Host check.

use super::{error, AdminResponse};
use crate::config::{split_authority, AdminHost};
use http::{header, HeaderMap, Method, Request, StatusCode};
use hyper::body::Body;
use std::net::{IpAddr, SocketAddr};

/// A request's target authority: host (lowercase, no trailing dot, IPv6 in brackets) and port.
pub type Authority = (String, Option<u16>);

/// Paths that answer whatever the Host: liveness and readiness.
pub fn any_host(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// The authority the request was sent to: the URI's (HTTP/2 `:authority`, or an
/// absolute-form target, which RFC 9112 §3.2.2 puts before `Host`), else the `Host` header.
/// `Ok(None)` without either; `Err` says what is wrong with a malformed or repeated Host
/// (for a 400).
pub fn authority<B>(req: &Request<B>) -> Result<Option<Authority>, String> {
    if let Some(a) = req.uri().authority() {
        return split_authority(a.as_str())
            .map(Some)
            .ok_or_else(|| bad_host(a.as_str()));
    }
    let mut values = req.headers().get_all(header::HOST).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Host header".into());
    }
    let s = v.to_str().map_err(|_| bad_host("(not text)"))?;
    split_authority(s.trim())
        .map(Some)
        .ok_or_else(|| bad_host(s))
}

fn bad_host(h: &str) -> String {
    format!("malformed Host {h:?}; expected host[:port]")
}

/// Does the admin listener bound at `listen` answer to `host`?
pub fn host_allowed(listen: SocketAddr, hosts: &[AdminHost], host: &Authority) -> bool {
    let (name, port) = (host.0.as_str(), host.1);
    if hosts.iter().any(|h| h.matches(name, port)) {
        return true;
    }
    if name == "localhost" {
        return true;
    }
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let Ok(ip) = literal.parse::<IpAddr>() else {
        // A name: only from `hosts`, since any name can be pointed at this address.
        return false;
    };
    let ip = ip.to_canonical();
    if ip.is_loopback() {
        return true;
    }
    let own = listen.ip().to_canonical();
    port.unwrap_or(80) == listen.port() && (own.is_unspecified() || ip == own)
}

/// The 421 for a Host the listener does not answer to.
pub fn misdirected(host: &Authority) -> AdminResponse {
    let shown = match host.1 {
        Some(p) => format!("{}:{p}", host.0),
        None => host.0.clone(),
    };
    error(
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "this admin listener does not answer to Host {shown:?}; reach it by its address or localhost, or add the name to [admin] hosts"
        ),
    )
}

/// Refuse a non-GET/HEAD `/api/*` request a web page could have sent cross-site: `Some`
/// answer when refused. `host` is the request's own authority (already allowed).
pub fn check_mutation<B: Body>(
    req: &Request<B>,
    host: Option<&Authority>,
    hosts: &[AdminHost],
) -> Option<AdminResponse> {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site") {
        if site.as_bytes().eq_ignore_ascii_case(b"cross-site") {
            return Some(error(
                StatusCode::FORBIDDEN,
                "cross-site request refused (Sec-Fetch-Site: cross-site): the admin API takes changes only from its own pages and from non-browser clients",
            ));
        }
    }
    if let Some(why) = origin_refused(h, host, hosts) {
        return Some(error(StatusCode::FORBIDDEN, why));
    }
    if has_body(req) && !is_json(h) {
        let given = h
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let msg = match given {
            Some(ct) => format!(
                "the request body must be JSON (Content-Type: application/json), not {ct:?}"
            ),
            None => {
                "the request body must be JSON: send Content-Type: application/json".to_string()
            }
        };
        return Some(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg));
    }
    None
}

/// Why the `Origin` header, if any, is not this admin API's own origin.
fn origin_refused(h: &HeaderMap, host: Option<&Authority>, hosts: &[AdminHost]) -> Option<String> {
    let mut values = h.get_all(header::ORIGIN).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return Some("more than one Origin header".into());
    }
    let s = String::from_utf8_lossy(v.as_bytes());
    let refused = || {
        Some(format!("cross-origin request refused: Origin {s:?} is not this admin API (reach it by its own address, or add the name to [admin] hosts)"))
    };
    // "null": a sandboxed frame, a file:// page, a redirect across origins.
    let Some((scheme, rest)) = s.split_once("://") else {
        return refused();
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return refused(),
    };
    let Some((name, port)) = split_authority(rest) else {
        return refused();
    };
    let port = port.unwrap_or(default_port);
    let same = host.is_some_and(|(hn, hp)| *hn == name && hp.unwrap_or(80) == port);
    if same || hosts.iter().any(|e| e.matches(&name, Some(port))) {
        None
    } else {
        refused()
    }
}

/// Does the request carry a body (a Content-Length above 0, or chunked)?
fn has_body<B: Body>(req: &Request<B>) -> bool {
    !req.body().is_end_stream() && req.body().size_hint().exact() != Some(0)
}

/// `Content-Type: application/json`, parameters (charset) allowed.
fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;

    fn a(s: &str) -> Authority {
        split_authority(s).unwrap()
    }

    #[test]
    fn hosts_the_listener_answers_to() {
        let lo: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let hosts = vec![
            AdminHost::parse("veer.internal").unwrap(),
            AdminHost::parse("admin.example:8443").unwrap(),
        ];
        for ok in [
            "127.0.0.1:9901",
            "localhost",
            "LOCALHOST:9901",
            "localhost:18001",
            "127.0.0.2:1",
            "[::1]:9901",
            "veer.internal",
            "veer.internal.:9901",
            "admin.example:8443",
        ] {
            assert!(host_allowed(lo, &hosts, &a(ok)), "{ok}");
        }
        for no in [
            "rebind.evil.example",
            "rebind.evil.example:9901",
            "10.0.0.5:9901",
            "admin.example",
            "admin.example:9901",
            "localhost.evil.example",
        ] {
            assert!(!host_allowed(lo, &hosts, &a(no)), "{no}");
        }
        // Bound to every address: any IP on the listener's port (the pod IP of a probe).
        let any: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        assert!(host_allowed(any, &[], &a("10.1.2.3:9901")));
        assert!(host_allowed(any, &[], &a("[fd00::5]:9901")));
        assert!(!host_allowed(any, &[], &a("10.1.2.3:80")));
        assert!(!host_allowed(any, &[], &a("10.1.2.3")));
        assert!(!host_allowed(any, &[], &a("pod.cluster.local:9901")));
        let own: SocketAddr = "10.0.0.5:80".parse().unwrap();
        assert!(host_allowed(own, &[], &a("10.0.0.5")));
        assert!(!host_allowed(own, &[], &a("10.0.0.6:80")));
    }

    fn req(method: &str, headers: &[(&str, &str)], body: &'static str) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri("/api/routes/web/swap");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    #[test]
    fn cross_site_mutations_are_refused() {
        let host = a("127.0.0.1:9901");
        let h = Some(&host);
        let status = |r: Option<AdminResponse>| r.map(|r| r.status().as_u16());
        assert_eq!(status(check_mutation(&req("POST", &[], ""), h, &[])), None);
        assert_eq!(
            status(check_mutation(
                &req("POST", &[("content-type", "text/plain")], "{}"),
                h,
                &[]
            )),
            Some(415)
        );
        assert_eq!(
            status(check_mutation(&req("PUT", &[], "{}"), h, &[])),
            Some(415)
        );
        assert_eq!(
            status(check_mutation(
                &req(
                    "PUT",
                    &[("content-type", "Application/JSON; charset=utf-8")],
                    "{}"
                ),
                h,
                &[]
            )),
            None
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:9902",
            "http://localhost:9901",
        ] {
            assert_eq!(
                status(check_mutation(
                    &req("POST", &[("origin", origin)], ""),
                    h,
                    &[]
                )),
                Some(403),
                "{origin}"
            );
        }
        assert_eq!(
            status(check_mutation(
                &req("POST", &[("origin", "http://127.0.0.1:9901")], ""),
                h,
                &[]
            )),
            None
        );
        let hosts = [AdminHost::parse("veer.example").unwrap()];
        assert_eq!(
            status(check_mutation(
                &req("POST", &[("origin", "https://veer.example")], ""),
                h,
                &hosts
            )),
            None
        );
        assert_eq!(
            status(check_mutation(
                &req("POST", &[("sec-fetch-site", "cross-site")], ""),
                h,
                &[]
            )),
            Some(403)
        );
        assert_eq!(
            status(check_mutation(
                &req("POST", &[("sec-fetch-site", "same-origin")], ""),
                h,
                &[]
            )),
            None
        );
        // Reads are not mutations.
        assert_eq!(
            status(check_mutation(
                &req("GET", &[("origin", "http://evil.example")], ""),
                h,
                &[]
            )),
            None
        );
    }
}
