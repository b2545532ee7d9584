//! Upstreams that answer with what they saw: the request head, the body's length, or the
//! version, X-Forwarded-Proto and authority.

use super::{respond, upstream_with, Upstream};
use http_body_util::BodyExt;

/// An upstream that answers with the request head it received, one `name: value` a line,
/// after a first line `METHOD PATH VERSION`, and sets hop-by-hop response headers.
pub async fn echo_head_upstream() -> Upstream {
    upstream_with(|req| async move {
        let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<bin>")));
        }
        let mut r = respond(200, out);
        let h = r.headers_mut();
        h.insert("connection", "x-resp-hop".parse().unwrap());
        h.insert("x-resp-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-agent", "upstream".parse().unwrap());
        h.insert("trailer", "x-checksum".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("x-resp-keep", "1".parse().unwrap());
        r
    })
    .await
}

/// The header lines [`echo_head_upstream`] echoed, as (name, value) pairs.
pub fn echoed(body: &str) -> Vec<(String, String)> {
    body.lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every echoed value of header `name`.
pub fn echoed_get<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// An upstream counting the request body bytes it receives, answering with the count.
pub async fn counting_upstream() -> Upstream {
    upstream_with(|req| async move {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return respond(500, format!("body error: {e}")),
            }
        }
        respond(200, n.to_string())
    })
    .await
}

/// An upstream that answers with what it saw: HTTP version, X-Forwarded-Proto, authority.
pub async fn echo_upstream() -> Upstream {
    upstream_with(|req| async move {
        let xfp = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            })
            .unwrap_or_default();
        respond(200, format!("{:?} {xfp} {host}", req.version()))
    })
    .await
}
