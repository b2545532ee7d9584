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

/// Is this header for this hop only, whatever `Connection` says? `HTTP2-Settings` only
/// means something on an `h2c` upgrade, which veer never forwards.
fn is_fixed_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "keep-alive"
            | "http2-settings"
    ) || name.starts_with("proxy-")
}

/// May `Connection` name this header to have it dropped? Not the ones the message cannot do
/// without (`Host`, `Content-Length`), nor the forwarding headers a proxy in front added:
/// `Connection: X-Forwarded-For` would otherwise erase the real client from the chain.
fn connection_may_strip(name: &str) -> bool {
    let protected = name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("forwarded")
        || name
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-forwarded-"));
    !protected
}

/// Remove hop-by-hop headers: the fixed set, `Keep-Alive`, `HTTP2-Settings`, every
/// `Proxy-*`, and whatever `Connection` names (except what [`connection_may_strip`] keeps).
/// With `upgrade`, `Connection: upgrade` and `Upgrade` are kept. With `keep_te_trailers`,
/// `TE: trailers` is kept (gRPC over HTTP/2 needs it). A message with `Transfer-Encoding`
/// also loses its `Content-Length`: the body is decoded by its transfer coding (RFC 9112
/// §6.3) and re-framed by whoever sends it on, so both framings are never passed along.
/// Says whether there was a `Transfer-Encoding` (seen by the same scan of the names).
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool, keep_te_trailers: bool) -> bool {
    // One look at the names decides: most requests carry none of these, and only the names
    // present are removed (each removal hashes the name).
    let (mut fixed, mut keep_alive, mut h2_settings, mut proxy) = ([false; 6], false, false, false);
    for k in h.keys() {
        let s = k.as_str();
        if !is_fixed_hop(s) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
            fixed[i] = true;
        } else if s == "keep-alive" {
            keep_alive = true;
        } else if s == "http2-settings" {
            h2_settings = true;
        } else {
            proxy = true;
        }
    }
    // Connection is the only way to name more hop-by-hop headers, so without any of the
    // fixed set present (and no upgrade to mark) there is nothing to do.
    let had_te = fixed[3]; // HOP_BY_HOP[3]: Transfer-Encoding
    if !upgrade && !keep_alive && !h2_settings && !proxy && !fixed.contains(&true) {
        return had_te;
    }
    let te_trailers = keep_te_trailers
        && fixed[1]
        && h.get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    if fixed[0] {
        // Values are shared bytes: cloning them copies nothing (and rarely is there more
        // than one, so the rest stays unallocated).
        let mut values = h.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let rest: Vec<HeaderValue> = values.cloned().collect();
        for v in first.iter().chain(rest.iter()) {
            let Ok(s) = v.to_str() else { continue };
            for name in s.split(',') {
                let name = name.trim();
                if (upgrade && name.eq_ignore_ascii_case("upgrade")) || !connection_may_strip(name)
                {
                    continue;
                }
                // By &str: matched case-insensitively without allocating; an invalid name
                // matches nothing.
                h.remove(name);
            }
        }
    }
    for (n, present) in HOP_BY_HOP.iter().zip(fixed) {
        if !present || (upgrade && (n == header::CONNECTION || n == header::UPGRADE)) {
            continue;
        }
        h.remove(n);
    }
    if had_te {
        h.remove(header::CONTENT_LENGTH);
    }
    if keep_alive {
        h.remove("keep-alive");
    }
    if h2_settings {
        h.remove("http2-settings");
    }
    if proxy {
        // Any other Proxy-* header is for this hop only.
        let names: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for k in names {
            h.remove(k);
        }
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    had_te
}

/// Is a request's `Transfer-Encoding` exactly `chunked`? hyper checks only that chunked
/// comes last and decodes it once: any coding before it (`gzip, chunked`) would reach the
/// backend still applied but no longer announced (the header is hop-by-hop), and chunked
/// twice is invalid (RFC 9112 §6.1).
pub fn only_chunked(h: &HeaderMap) -> bool {
    let mut codings = 0;
    for v in h.get_all(header::TRANSFER_ENCODING) {
        let Ok(s) = v.to_str() else { return false };
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !t.eq_ignore_ascii_case("chunked") {
                return false;
            }
            codings += 1;
        }
    }
    codings <= 1
}

/// Is this an HTTP/1.1 upgrade request that veer tunnels? It needs `Connection: upgrade`
/// and an `Upgrade` offering only protocols in `allowed` (`[server] upgrades`). Any other
/// upgrade is not one, `h2c` above all (a raw tunnel past veer's parser, routing and
/// limits): the request is answered as plain HTTP/1.1, its `Upgrade` stripped as hop-by-hop,
/// as Envoy and HAProxy do.
pub fn is_tunnelled_upgrade(h: &HeaderMap, allowed: &[String]) -> bool {
    let mut offers = h.get_all(header::UPGRADE).iter().peekable();
    offers.peek().is_some()
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
        && offers.all(|v| upgrade_allowed(v, allowed))
}

/// Does this `Upgrade` value name only protocols in `allowed` (by name, any case, a
/// `/version` ignored; `"*"` allows every protocol but h2c), and at least one? Also judges a
/// backend's 101: a switch to anything else never becomes a tunnel.
pub fn upgrade_allowed(value: &HeaderValue, allowed: &[String]) -> bool {
    let Ok(s) = value.to_str() else { return false };
    s.split(',').all(|p| {
        let name = p.split('/').next().unwrap_or("").trim();
        // h2c is refused whatever the config says (validation refuses it too).
        !name.is_empty()
            && !name.eq_ignore_ascii_case("h2c")
            && allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(name))
    })
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client's address as an `X-Forwarded-For` entry, made once per connection. A
/// dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; they are logged as a.b.c.d.
pub fn client_ip_value(client: IpAddr) -> HeaderValue {
    use std::io::Write;
    // The longest IPv6 text is 45 bytes: no allocation but the value's own.
    let mut buf = [0u8; 64];
    let mut w = &mut buf[..];
    let _ = write!(w, "{}", client.to_canonical());
    let n = 64 - w.len();
    HeaderValue::from_bytes(&buf[..n]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// veer's `X-Forwarded-*` lines for one request: computed once, then written straight into
/// the upstream head by the fast path, or put into each attempt's own headers otherwise.
pub struct Forwarded {
    lines: [(&'static HeaderName, HeaderValue); 3],
    len: usize,
}

impl Forwarded {
    /// Take the request's own `X-Forwarded-*` out of `h` and make the lines that replace
    /// them: `X-Forwarded-For` with the client (see [`client_ip_value`]) appended to prior
    /// hops, `X-Forwarded-Proto`, and `X-Forwarded-Host` when there is a host (else a prior
    /// one stays as it was).
    pub fn take(
        h: &mut HeaderMap,
        client: &HeaderValue,
        scheme: &'static str,
        host: Option<&HeaderValue>,
    ) -> Self {
        // One scan of the names (no hashing) says whether there are prior hops at all:
        // most requests come straight from a client.
        let prior = h.keys().any(|k| k.as_str().starts_with("x-forwarded-"));
        let xff = if prior && h.contains_key(&XFF) {
            // One string, one allocation: prior hops (all lines, in order), then us.
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
            xff.push_str(client.to_str().unwrap_or_default());
            HeaderValue::try_from(xff).unwrap_or_else(|_| client.clone())
        } else {
            // No prior hops: the connection's own value, shared, not copied.
            client.clone()
        };
        if prior {
            h.remove(&XFF);
            h.remove(&XFP);
            if host.is_some() {
                h.remove(&XFH);
            }
        }
        let proto = HeaderValue::from_static(scheme);
        match host {
            Some(host) => Forwarded {
                lines: [(&XFF, xff), (&XFP, proto), (&XFH, host.clone())],
                len: 3,
            },
            None => Forwarded {
                lines: [(&XFF, xff), (&XFP, proto.clone()), (&XFH, proto)],
                len: 2,
            },
        }
    }

    pub fn lines(&self) -> &[(&'static HeaderName, HeaderValue)] {
        &self.lines[..self.len]
    }

    /// Put the lines into `h` (a request that does not take the fast path).
    pub fn apply(&self, h: &mut HeaderMap) {
        for (k, v) in self.lines() {
            h.insert(*k, v.clone());
        }
    }
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
    fn nothing_hop_by_hop_leaves_headers_alone() {
        let mut h = HeaderMap::new();
        h.insert("host", "a.example".parse().unwrap());
        h.insert("x-proxyish", "1".parse().unwrap());
        let before = h.clone();
        assert!(
            !strip_hop_by_hop(&mut h, false, true),
            "no Transfer-Encoding"
        );
        assert_eq!(h, before);
    }

    #[test]
    fn connection_names_any_case_and_upgrade_kept() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade, X-Secret".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        assert!(
            strip_hop_by_hop(&mut h, true, false),
            "Transfer-Encoding was there"
        );
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");

        // An upgrade answer without Connection still gets one.
        let mut h = HeaderMap::new();
        strip_hop_by_hop(&mut h, true, false);
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn connection_cannot_name_what_the_message_needs() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "Host, content-length, X-Forwarded-For, x-forwarded-host, Forwarded, x-gone"
                .parse()
                .unwrap(),
        );
        for k in [
            "host",
            "content-length",
            "x-forwarded-for",
            "x-forwarded-host",
        ] {
            h.insert(k, "1".parse().unwrap());
        }
        h.insert("forwarded", "for=1".parse().unwrap());
        h.insert("x-gone", "1".parse().unwrap());
        h.insert("http2-settings", "AAMAAABk".parse().unwrap());
        strip_hop_by_hop(&mut h, false, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "content-length",
                "forwarded",
                "host",
                "x-forwarded-for",
                "x-forwarded-host"
            ]
        );
    }

    #[test]
    fn transfer_encoding_takes_content_length_with_it() {
        let mut h = HeaderMap::new();
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-length", "5".parse().unwrap());
        assert!(strip_hop_by_hop(&mut h, false, false));
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn only_allowed_upgrades_are_tunnelled() {
        let allowed = ["websocket".to_string()];
        let req = |up: &str, conn: &str| {
            let mut h = HeaderMap::new();
            h.insert("upgrade", up.parse().unwrap());
            h.insert("connection", conn.parse().unwrap());
            is_tunnelled_upgrade(&h, &allowed)
        };
        assert!(req("websocket", "Upgrade"));
        assert!(req("WebSocket", "keep-alive, upgrade"));
        assert!(
            !req("websocket", "keep-alive"),
            "Connection must say upgrade"
        );
        assert!(!req("h2c", "Upgrade, HTTP2-Settings"));
        assert!(
            !req("websocket, h2c", "upgrade"),
            "every offer must be allowed"
        );
        assert!(!req("", "upgrade"));
        assert!(!is_tunnelled_upgrade(&HeaderMap::new(), &allowed));
        // h2c never, whatever the list says.
        let h2c = HeaderValue::from_static("h2c");
        assert!(!upgrade_allowed(&h2c, &["h2c".to_string()]));
        assert!(upgrade_allowed(
            &HeaderValue::from_static("x-custom/2, websocket"),
            &["websocket".to_string(), "x-custom".to_string()]
        ));
    }

    #[test]
    fn te_trailers_kept_when_asked() {
        let mut h = HeaderMap::new();
        h.insert("te", "gzip, Trailers".parse().unwrap());
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h["te"], "trailers");
        let mut h = HeaderMap::new();
        h.insert("te", "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h, false, true);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarded_for_without_prior_hops() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", "kept.example".parse().unwrap());
        Forwarded::take(
            &mut h,
            &client_ip_value("2001:db8::1".parse().unwrap()),
            "http",
            None,
        )
        .apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        // Without a host of its own, veer leaves a prior hop's X-Forwarded-Host alone.
        assert_eq!(h["x-forwarded-host"], "kept.example");
        let v = client_ip_value(
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                .parse()
                .unwrap(),
        );
        assert_eq!(v, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn forwarded_for_joins_every_prior_line() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.2, 10.0.0.3".parse().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        h.insert("x-forwarded-proto", "http".parse().unwrap());
        h.insert("x-forwarded-host", "old.example".parse().unwrap());
        let fwd = Forwarded::take(
            &mut h,
            &client_ip_value(mapped),
            "https",
            Some(&HeaderValue::from_static("a.example")),
        );
        // Taken out of the request: the fast path writes the lines after its headers.
        assert!(h.is_empty(), "{h:?}");
        let lines: Vec<_> = fwd
            .lines()
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    "x-forwarded-for",
                    "10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7".parse().unwrap()
                ),
                ("x-forwarded-proto", HeaderValue::from_static("https")),
                ("x-forwarded-host", HeaderValue::from_static("a.example")),
            ]
        );
        fwd.apply(&mut h);
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }

    #[test]
    fn only_a_single_chunked_coding_is_forwarded() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            only_chunked(&h)
        };
        assert!(te(&[]));
        assert!(te(&["chunked"]));
        assert!(te(&[" Chunked "]));
        assert!(te(&["chunked,"]));
        assert!(!te(&["gzip, chunked"]));
        assert!(!te(&["gzip", "chunked"]));
        assert!(!te(&["chunked, chunked"]));
        assert!(!te(&["chunked", "chunked"]));
    }
}
