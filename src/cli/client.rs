//! A small client for veer's admin API (SPEC §3), used by the `veer status`, `split`, `swap`,
//! `drain`, `undrain`, `reload` and `rollout` commands.
//!
//! Every call answers the API's JSON document, or a [`AdminError`] that carries the API's own
//! error message, so the command line can print it and exit non-zero.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

/// The admin address used when none is given.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9901";

/// Why an admin API call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid admin URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("cannot reach the admin API at {url}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("the admin API at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("reading the admin API's answer")]
    Body(#[source] hyper::Error),
    /// The API answered with an error status; `message` is its `{"error": "…"}` text and
    /// `details` the `"errors"` list some answers add (a reload's `FILE:LINE:COL` errors).
    #[error("{message} (HTTP {status}){}", indented(.details))]
    Api {
        status: StatusCode,
        message: String,
        details: Vec<String>,
        /// The whole error document, for `--json`.
        body: Value,
    },
    #[error("the admin API answered {status} with a body that is not JSON")]
    Json {
        status: StatusCode,
        #[source]
        source: serde_json::Error,
    },
}

fn indented(lines: &[String]) -> String {
    lines.iter().map(|l| format!("\n  {l}")).collect()
}

impl AdminError {
    /// The HTTP status the API answered, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            AdminError::Api { status, .. } | AdminError::Json { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one veer's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `scheme://authority`, without a trailing slash.
    base: String,
    /// Any path prefix of the base URL (for an admin API behind a path-routing proxy).
    prefix: String,
    token: Option<String>,
    timeout: Duration,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client for the admin API at `url` (`http://host:port`), sending `token` as a bearer
    /// token when given.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, AdminError> {
        let bad = |reason| AdminError::BadUrl {
            url: url.to_string(),
            reason,
        };
        // A bare `host:port` is common enough on a command line to accept.
        let full = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = full.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("the admin API speaks plain HTTP; use http://")),
            _ => return Err(bad("the scheme must be http")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let prefix = uri.path().trim_end_matches('/').to_string();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Ok(AdminClient {
            base: format!("http://{authority}"),
            prefix,
            token: token.filter(|t| !t.is_empty()),
            timeout: Duration::from_secs(30),
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Change how long one call may take (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL calls go to.
    pub fn url(&self) -> String {
        format!("{}{}", self.base, self.prefix)
    }

    /// `GET /api/status`.
    pub async fn status(&self) -> Result<Value, AdminError> {
        self.call(Method::GET, "/api/status".into(), None).await
    }

    /// `PUT /api/routes/{route}/split` with `{pool: weight, …}`.
    pub async fn split(&self, route: &str, weights: &[(String, u32)]) -> Result<Value, AdminError> {
        let body: serde_json::Map<String, Value> = weights
            .iter()
            .map(|(p, w)| (p.clone(), Value::from(*w)))
            .collect();
        let path = format!("/api/routes/{}/split", segment(route));
        self.call(Method::PUT, path, Some(Value::Object(body)))
            .await
    }

    /// `POST /api/routes/{route}/swap`, with `?force=true` when `force`.
    pub async fn swap(&self, route: &str, force: bool) -> Result<Value, AdminError> {
        let q = if force { "?force=true" } else { "" };
        let path = format!("/api/routes/{}/swap{q}", segment(route));
        self.call(Method::POST, path, None).await
    }

    /// `POST /api/pools/{pool}/backends/{addr}/drain` (or `undrain` when `drain` is false).
    pub async fn drain(&self, pool: &str, addr: &str, drain: bool) -> Result<Value, AdminError> {
        let action = if drain { "drain" } else { "undrain" };
        let path = format!(
            "/api/pools/{}/backends/{}/{action}",
            segment(pool),
            segment(addr)
        );
        self.call(Method::POST, path, None).await
    }

    /// `POST /api/reload`.
    pub async fn reload(&self) -> Result<Value, AdminError> {
        self.call(Method::POST, "/api/reload".into(), None).await
    }

    /// `POST /api/routes/{route}/rollout/{action}` (`?hotfix=true` for an expedited start).
    pub async fn rollout(
        &self,
        route: &str,
        action: &str,
        hotfix: bool,
    ) -> Result<Value, AdminError> {
        let q = if hotfix { "?hotfix=true" } else { "" };
        let path = format!(
            "/api/routes/{}/rollout/{}{q}",
            segment(route),
            segment(action)
        );
        self.call(Method::POST, path, None).await
    }

    async fn call(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        let url = format!("{}{}{}", self.base, self.prefix, path);
        let bad = |reason| AdminError::BadUrl {
            url: url.clone(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a valid request URL"))?;
        let body = match body {
            Some(v) => Bytes::from(v.to_string()),
            None => Bytes::new(),
        };
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("veer/", env!("CARGO_PKG_VERSION"))),
        );
        if !body.is_empty() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(t) = &self.token {
            let v =
                HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| AdminError::BadUrl {
                    url: url.clone(),
                    reason: "the token holds characters not allowed in a header",
                })?;
            h.insert(header::AUTHORIZATION, v);
        }
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|source| AdminError::Request {
                    url: self.url(),
                    source,
                })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(AdminError::Body)?
                .to_bytes();
            Ok::<_, AdminError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| AdminError::Timeout {
                url: self.url(),
                timeout: self.timeout,
            })??;
        decode(status, &bytes)
    }
}

/// Turn an answer into its JSON document, or the API's error.
fn decode(status: StatusCode, bytes: &[u8]) -> Result<Value, AdminError> {
    let parsed = if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(Value::Null)
    } else {
        serde_json::from_slice::<Value>(bytes)
    };
    if status.is_success() {
        return parsed.map_err(|source| AdminError::Json { status, source });
    }
    let message = match &parsed {
        Ok(v) => match v.get("error") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => v.to_string(),
        },
        // Not JSON (a proxy in between, or an older veer): show the text as it came.
        Err(_) => String::from_utf8_lossy(bytes).trim().to_string(),
    };
    let message = if message.is_empty() || message == "null" {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        message
    };
    let details = match &parsed {
        Ok(v) => v["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        e.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| e.to_string())
                    })
                    .filter(|e| *e != message)
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let body = match parsed {
        Ok(v) if v.is_object() => v,
        _ => serde_json::json!({ "error": message }),
    };
    Err(AdminError::Api {
        status,
        message,
        details,
        body,
    })
}

/// Percent-encode one path segment (route, pool and action names, `host:port` addresses).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("web"), "web");
        assert_eq!(segment("127.0.0.1:9001"), "127.0.0.1:9001");
        assert_eq!(segment("[::1]:80"), "%5B::1%5D:80");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn errors_carry_the_api_message() {
        let e = decode(
            StatusCode::CONFLICT,
            br#"{"error":"pool green has no healthy backend"}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::CONFLICT));
        assert_eq!(
            e.to_string(),
            "pool green has no healthy backend (HTTP 409 Conflict)"
        );
        let e = decode(StatusCode::BAD_GATEWAY, b"bad gateway\n").unwrap_err();
        assert_eq!(e.to_string(), "bad gateway (HTTP 502 Bad Gateway)");
        let e = decode(StatusCode::NOT_FOUND, b"").unwrap_err();
        assert_eq!(e.to_string(), "not found (HTTP 404 Not Found)");
        assert_eq!(decode(StatusCode::ACCEPTED, b"").unwrap(), Value::Null);
        let e = decode(
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid config","errors":["veer.toml:3:10: unknown key `splt`"]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config (HTTP 400 Bad Request)\n  veer.toml:3:10: unknown key `splt`"
        );
        assert!(decode(StatusCode::OK, b"<html>").is_err());
    }

    #[test]
    fn urls() {
        assert!(AdminClient::new("https://x:1", None).is_err());
        assert!(AdminClient::new("ftp://x:1", None).is_err());
        let c = AdminClient::new("127.0.0.1:9901", Some(String::new())).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:9901");
        assert!(c.token.is_none());
        let c = AdminClient::new("http://h:1/veer/", None).unwrap();
        assert_eq!(c.url(), "http://h:1/veer");
    }
}
