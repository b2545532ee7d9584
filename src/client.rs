//! A small client for veer's admin API (SPEC §3), used by the `veer status`, `split`, `swap`,
//! `drain`, `undrain`, `reload` and `rollout` commands.
//!
//! Every call answers the API's JSON document, or a [`ClientError`] that carries the API's own
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
pub enum ClientError {
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

impl ClientError {
    /// The HTTP status the API answered, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Json { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A rollout action accepted by `POST /api/routes/{route}/rollout/{action}`.
pub const ROLLOUT_ACTIONS: [&str; 6] = ["start", "pause", "resume", "approve", "promote", "abort"];

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
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bad = |reason| ClientError::BadUrl {
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
    pub async fn status(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/api/status".into(), None).await
    }

    /// `PUT /api/routes/{route}/split` with `{pool: weight, …}`.
    pub async fn split(
        &self,
        route: &str,
        weights: &[(String, u32)],
    ) -> Result<Value, ClientError> {
        let body: serde_json::Map<String, Value> = weights
            .iter()
            .map(|(p, w)| (p.clone(), Value::from(*w)))
            .collect();
        let path = format!("/api/routes/{}/split", segment(route));
        self.call(Method::PUT, path, Some(Value::Object(body)))
            .await
    }

    /// `POST /api/routes/{route}/swap`, with `?force=true` when `force`.
    pub async fn swap(&self, route: &str, force: bool) -> Result<Value, ClientError> {
        let q = if force { "?force=true" } else { "" };
        let path = format!("/api/routes/{}/swap{q}", segment(route));
        self.call(Method::POST, path, None).await
    }

    /// `POST /api/pools/{pool}/backends/{addr}/drain` (or `undrain` when `drain` is false).
    pub async fn drain(&self, pool: &str, addr: &str, drain: bool) -> Result<Value, ClientError> {
        let action = if drain { "drain" } else { "undrain" };
        let path = format!(
            "/api/pools/{}/backends/{}/{action}",
            segment(pool),
            segment(addr)
        );
        self.call(Method::POST, path, None).await
    }

    /// `POST /api/reload`.
    pub async fn reload(&self) -> Result<Value, ClientError> {
        self.call(Method::POST, "/api/reload".into(), None).await
    }

    /// `POST /api/routes/{route}/rollout/{action}`.
    pub async fn rollout(&self, route: &str, action: &str) -> Result<Value, ClientError> {
        let path = format!("/api/routes/{}/rollout/{}", segment(route), segment(action));
        self.call(Method::POST, path, None).await
    }

    async fn call(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{}{}", self.base, self.prefix, path);
        let bad = |reason| ClientError::BadUrl {
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
                HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| ClientError::BadUrl {
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
                .map_err(|source| ClientError::Request {
                    url: self.url(),
                    source,
                })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(ClientError::Body)?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.url(),
                timeout: self.timeout,
            })??;
        decode(status, &bytes)
    }
}

/// Turn an answer into its JSON document, or the API's error.
fn decode(status: StatusCode, bytes: &[u8]) -> Result<Value, ClientError> {
    let parsed = if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(Value::Null)
    } else {
        serde_json::from_slice::<Value>(bytes)
    };
    if status.is_success() {
        return parsed.map_err(|source| ClientError::Json { status, source });
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
    Err(ClientError::Api {
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

// ---- human output for the command line ----

/// `veer status`: the config version, a table of routes and their splits, rollouts in progress
/// or finished, and a table of every backend.
pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let version = v["config"]["version"].as_u64().unwrap_or(0);
    match v["config"]["loaded_at"].as_u64() {
        Some(at) if at > 0 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(at);
            out.push_str(&format!(
                "config v{version}, loaded {} ({} ago)\n",
                utc(at),
                ago(now.saturating_sub(at))
            ));
        }
        _ => out.push_str(&format!("config v{version}\n")),
    }
    if v["persisted"] == Value::Bool(false) {
        out.push_str("warning: some changes live in memory only (not written to the config or state file); a restart loses them\n");
    }

    let empty = Vec::new();
    let routes = v["routes"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let hosts = r["hosts"]
                .as_array()
                .map(|h| {
                    h.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let prefix = r["path_prefix"].as_str().unwrap_or("");
            let matches = format!("{hosts} {prefix}").trim().to_string();
            vec![text(&r["name"]), matches, split_text(&r["split"])]
        })
        .collect();
    out.push_str("\nROUTES\n");
    if rows.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table(&["ROUTE", "MATCH", "SPLIT"], &rows));
    }

    let rollouts: Vec<Vec<String>> = routes
        .iter()
        .filter(|r| r["rollout"].is_object())
        .map(|r| {
            let ro = &r["rollout"];
            vec![
                text(&r["name"]),
                text(&ro["state"]),
                step_text(ro),
                weight_text(ro),
                detail_text(ro),
            ]
        })
        .collect();
    if !rollouts.is_empty() {
        out.push_str("\nROLLOUTS\n");
        out.push_str(&table(
            &["ROUTE", "STATE", "STEP", "WEIGHT", "DETAIL"],
            &rollouts,
        ));
    }

    let mut rows = Vec::new();
    if let Some(pools) = v["pools"].as_object() {
        for (pool, p) in pools {
            let backends = p["backends"].as_array().unwrap_or(&empty);
            if backends.is_empty() {
                rows.push(vec![
                    pool.clone(),
                    "(no backends)".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            for b in backends {
                let draining = match (b["draining"].as_bool(), b["removed"].as_bool()) {
                    (_, Some(true)) => "yes (removed)",
                    (Some(true), _) => "yes",
                    _ => "no",
                };
                rows.push(vec![
                    pool.clone(),
                    text(&b["addr"]),
                    text(&b["weight"]),
                    text(&b["health"]),
                    text(&b["breaker"]).replace('_', "-"),
                    text(&b["in_flight"]),
                    draining.into(),
                ]);
            }
        }
    }
    out.push_str("\nBACKENDS\n");
    if rows.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table(
            &[
                "POOL",
                "BACKEND",
                "WEIGHT",
                "HEALTH",
                "BREAKER",
                "IN-FLIGHT",
                "DRAINING",
            ],
            &rows,
        ));
    }
    out
}

/// `veer split` and `veer swap`: the route's split as the API answered it.
pub fn render_split(route: &str, v: &Value) -> String {
    let split = if v["split"].is_object() {
        &v["split"]
    } else {
        v
    };
    match split.as_object() {
        Some(m) if !m.is_empty() && m.values().all(Value::is_number) => {
            format!("{route}: {}\n", split_text(split))
        }
        _ => format!("{route}: split changed\n"),
    }
}

/// `veer reload`: what the reload changed.
pub fn render_reload(v: &Value) -> String {
    if v["changed"] == Value::Bool(false) {
        return match v["version"].as_u64() {
            Some(n) => format!("reloaded: no changes (config v{n} stays live)\n"),
            None => "reloaded: no changes\n".to_string(),
        };
    }
    let mut out = match v["version"].as_u64() {
        Some(n) => format!("reloaded: config v{n}\n"),
        None => "reloaded\n".to_string(),
    };
    let mut changed = false;
    let mut list = |label: &str, key: &str, out: &mut String| {
        let items: Vec<String> = v[key]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        if !items.is_empty() {
            changed = true;
            out.push_str(&format!("  {label}: {}\n", items.join(", ")));
        }
    };
    list("routes added", "routes_added", &mut out);
    list("routes removed", "routes_removed", &mut out);
    list("backends added", "added", &mut out);
    list("backends removed (draining)", "removed", &mut out);
    list("listeners added", "listeners_added", &mut out);
    list("listeners removed", "listeners_removed", &mut out);
    if let Some(w) = v["weights_changed"].as_object() {
        for (route, split) in w {
            changed = true;
            out.push_str(&format!("  split of {route}: {}\n", split_text(split)));
        }
    }
    if !changed {
        out.push_str("  no changes\n");
    }
    out
}

/// `veer rollout ROUTE ACTION`: the rollout's state after the action.
pub fn render_rollout_answer(route: &str, action: &str, v: &Value) -> String {
    let ro = if v["rollout"].is_object() {
        &v["rollout"]
    } else {
        v
    };
    if !ro["state"].is_string() {
        return format!("{route}: rollout {action}: ok\n");
    }
    let mut line = format!("{route}: rollout {}", text(&ro["state"]));
    let step = step_text(ro);
    if step != "-" {
        line.push_str(&format!(" at step {step}"));
    }
    let weight = weight_text(ro);
    if weight != "-" {
        line.push_str(&format!(" ({weight})"));
    }
    let detail = detail_text(ro);
    if detail != "-" {
        line.push_str(&format!("; {detail}"));
    }
    line.push('\n');
    line
}

/// A JSON scalar as plain text (strings without quotes, null as `-`).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `blue=90 (90%)  green=10 (10%)`.
fn split_text(split: &Value) -> String {
    let Some(m) = split.as_object() else {
        return "-".into();
    };
    let total: u64 = m.values().filter_map(Value::as_u64).sum();
    m.iter()
        .map(|(pool, w)| {
            let w = w.as_u64().unwrap_or(0);
            format!("{pool}={w} ({})", percent(w, total))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn percent(w: u64, total: u64) -> String {
    if total == 0 {
        return "0%".into();
    }
    let tenths = (w * 1000 + total / 2) / total;
    if tenths % 10 == 0 {
        format!("{}%", tenths / 10)
    } else {
        format!("{}.{}%", tenths / 10, tenths % 10)
    }
}

/// `2/4` when the rollout lists its steps, else the step index as given.
fn step_text(ro: &Value) -> String {
    let Some(step) = ro["step"].as_u64() else {
        return "-".into();
    };
    match ro["steps"].as_array() {
        // `step` is the index into `steps`, shown counting from one.
        Some(steps) if !steps.is_empty() => {
            format!("{}/{}", (step + 1).min(steps.len() as u64), steps.len())
        }
        _ => step.to_string(),
    }
}

/// `green 25%`: the rolled-out pool and its share of the route's traffic.
fn weight_text(ro: &Value) -> String {
    match (ro["to"].as_str(), &ro["weight"]) {
        (_, Value::Null) => "-".into(),
        (Some(to), w) => format!("{to} {}%", text(w)),
        (None, w) => format!("{}%", text(w)),
    }
}

/// Why the rollout is where it is: the step's figures against the gate, the verdict, time
/// spent in the step or left for an approval, and the reason the controller gives.
fn detail_text(ro: &Value) -> String {
    let g = &ro["gate"];
    let mut parts = Vec::new();
    if let Some(n) = g["requests"].as_u64() {
        match g["min_requests"].as_u64() {
            Some(min) => parts.push(format!("requests {n}/{min}")),
            None => parts.push(format!("requests {n}")),
        }
    }
    if let Some(r) = g["error_rate"].as_f64() {
        match g["max_error_rate"].as_f64() {
            Some(max) => parts.push(format!("errors {} (max {})", rate(r), rate(max))),
            None => parts.push(format!("errors {}", rate(r))),
        }
    }
    if let Some(p) = g["p99_ms"].as_f64() {
        match g["max_p99_ms"].as_f64() {
            Some(max) => parts.push(format!("p99 {}ms (max {}ms)", num(p), num(max))),
            None => parts.push(format!("p99 {}ms", num(p))),
        }
    }
    if let Some(v) = g["verdict"]
        .as_str()
        .filter(|v| !v.is_empty() && *v != "none")
    {
        parts.push(format!("verdict {v}"));
    }
    if let (Some(e), Some(i)) = (
        ro["step_elapsed_ms"].as_f64(),
        ro["step_interval_ms"].as_f64(),
    ) {
        parts.push(format!("{} of {} in step", secs(e), secs(i)));
    }
    if let Some(left) = ro["approval_remaining_ms"].as_f64() {
        parts.push(format!("approval due within {}", secs(left)));
    }
    if parts.is_empty() {
        // A rollout object of another shape: show its gate's plain figures.
        if let Some(gate) = g.as_object() {
            let figures: Vec<String> = gate
                .iter()
                .filter(|(k, v)| !v.is_object() && !v.is_array() && !v.is_null() && *k != "reason")
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            if !figures.is_empty() {
                parts.push(figures.join(" "));
            }
        }
    }
    for reason in [&g["reason"], &ro["reason"], &ro["message"]] {
        if let Some(s) = reason.as_str().filter(|s| !s.is_empty()) {
            parts.push(s.to_string());
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// `1.25%` from a rate of 0.0125.
fn rate(r: f64) -> String {
    format!("{}%", num(r * 100.0))
}

/// A number with at most two decimals and no trailing zeros.
fn num(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// `42s`, `3m 5s` from milliseconds.
fn secs(ms: f64) -> String {
    ago((ms / 1000.0).round().max(0.0) as u64)
}

/// Left-aligned columns, two spaces apart, indented by two.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            l.push(' ');
            l.push_str(c);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 1));
            }
        }
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `2025-01-31 12:00:00 UTC` from Unix seconds.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `42s`, `3m 5s`, `2h 10m`, `3d 4h`.
fn ago(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
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

    #[test]
    fn status_renders_as_tables() {
        let v = serde_json::json!({
            "config": {"version": 3, "loaded_at": 0},
            "routes": [{"name": "web", "hosts": ["*"], "path_prefix": "/", "split": {"blue": 90, "green": 10},
                        "rollout": {"state": "progressing", "step": 1, "steps": [5, 25, 50, 100], "to": "green", "weight": 25,
                                    "step_elapsed_ms": 12000.0, "step_interval_ms": 60000.0,
                        "gate": {"requests": 120, "min_requests": 100, "error_rate": 0.0125, "max_error_rate": 0.01,
                                 "p99_ms": 12.5, "max_p99_ms": 500.0, "verdict": "pending", "reason": null}}}],
            "pools": {"blue": {"backends": [{"addr": "127.0.0.1:9001", "weight": 1, "health": "healthy",
                        "breaker": "half_open", "draining": true, "in_flight": 3}]}}
        });
        let s = render_status(&v);
        assert!(s.starts_with("config v3\n"), "{s}");
        assert!(
            s.contains("  web    * /    blue=90 (90%)  green=10 (10%)"),
            "{s}"
        );
        assert!(s.contains("progressing  2/4   green 25%"), "{s}");
        assert!(
            s.contains("requests 120/100, errors 1.25% (max 1%), p99 12.5ms (max 500ms), verdict pending, 12s of 1m 0s in step"),
            "{s}"
        );
        assert!(
            s.contains("  blue  127.0.0.1:9001  1       healthy  half-open  3          yes"),
            "{s}"
        );
        assert!(!s.contains("memory only"), "{s}");
        let mut v = v;
        v["persisted"] = Value::Bool(false);
        let s = render_status(&v);
        assert!(
            s.contains("\nwarning: some changes live in memory only"),
            "{s}"
        );
    }

    #[test]
    fn small_formats() {
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(0, 0), "0%");
        assert_eq!(percent(50, 100), "50%");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34:56 UTC");
        assert_eq!(ago(125), "2m 5s");
        let ro = serde_json::json!({"state": "paused", "step": 0, "steps": [5, 100], "to": "green", "weight": 5,
                                    "gate": {"reason": "paused by operator"}});
        assert_eq!(
            render_rollout_answer("web", "pause", &ro),
            "web: rollout paused at step 1/2 (green 5%); paused by operator\n"
        );
        assert_eq!(
            render_rollout_answer("web", "pause", &Value::Null),
            "web: rollout pause: ok\n"
        );
        assert_eq!(
            render_split("web", &serde_json::json!({"blue": 1, "green": 1})),
            "web: blue=1 (50%)  green=1 (50%)\n"
        );
        assert_eq!(
            render_reload(&serde_json::json!({"version": 2})),
            "reloaded: config v2\n  no changes\n"
        );
        assert_eq!(
            render_reload(&serde_json::json!({"changed": false, "version": 2})),
            "reloaded: no changes (config v2 stays live)\n"
        );
        let v = serde_json::json!({
            "changed": true, "version": 3, "routes_added": ["api"], "routes_removed": [],
            "weights_changed": {"web": {"blue": 60, "green": 40}},
            "added": ["green/127.0.0.1:9101"], "removed": ["blue/127.0.0.1:9002"],
            "listeners_added": ["http://127.0.0.1:8081"], "listeners_removed": []
        });
        assert_eq!(
            render_reload(&v),
            "reloaded: config v3\n  routes added: api\n  backends added: green/127.0.0.1:9101\n  \
             backends removed (draining): blue/127.0.0.1:9002\n  listeners added: http://127.0.0.1:8081\n  \
             split of web: blue=60 (60%)  green=40 (40%)\n"
        );
    }
}
