//! Header rewriting between downstream and upstream (SPEC §6).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Remove hop-by-hop headers: the fixed set, `Keep-Alive`, every `Proxy-*`, and whatever
/// `Connection` names. With `upgrade`, `Connection: upgrade` and `Upgrade` are kept.
/// With `keep_te_trailers`, `TE: trailers` is kept (gRPC over HTTP/2 needs it).
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool, keep_te_trailers: bool) {
    let mut named: Vec<HeaderName> = Vec::new();
    for v in h.get_all(header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for name in s.split(',') {
                let name = name.trim();
                if upgrade && name.eq_ignore_ascii_case("upgrade") {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    named.push(n);
                }
            }
        }
    }
    let te_trailers = keep_te_trailers
        && h.get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        if upgrade && (n == header::CONNECTION || n == header::UPGRADE) {
            continue;
        }
        h.remove(n);
    }
    h.remove("keep-alive");
    // Any other Proxy-* header is for this hop only.
    let proxy: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for k in proxy {
        h.remove(k);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Is this an HTTP/1.1 upgrade request (WebSocket and the like)?
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Append the client to `X-Forwarded-For`; set `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn add_forwarded(
    h: &mut HeaderMap,
    client: IpAddr,
    scheme: &'static str,
    host: Option<&HeaderValue>,
) {
    use std::fmt::Write;
    // One string, one allocation: prior hops (all X-Forwarded-For lines, in order), then us.
    let mut xff = String::with_capacity(48);
    for v in h.get_all(&XFF) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                xff.push_str(s);
                xff.push_str(", ");
            }
        }
    }
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; log them as a.b.c.d.
    let _ = write!(xff, "{}", client.to_canonical());
    if let Ok(v) = HeaderValue::try_from(xff) {
        h.insert(XFF.clone(), v);
    }
    h.insert(XFP.clone(), HeaderValue::from_static(scheme));
    if let Some(host) = host {
        h.insert(XFH.clone(), host.clone());
    }
}

/// Find a cookie's value in the request's `Cookie` headers.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_named_and_fixed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authorization", "x".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarded_for_joins_every_prior_line() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.2, 10.0.0.3".parse().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        add_forwarded(
            &mut h,
            mapped,
            "https",
            Some(&HeaderValue::from_static("a.example")),
        );
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; veer_id=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "veer_id"), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
