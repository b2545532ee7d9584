//! External rollout gates (SPEC §10): Prometheus instant queries and webhooks, asked by the
//! rollout controller's own task (never on the request path) at each gate's `interval` until
//! they pass, kept passing for `steady_for`, or their `timeout` runs out.
//!
//! - [`check`]: one check of one gate → an [`Answer`] (`pass`, `fail` or `error`). An error
//!   (unreachable, timed out, a bad or empty answer, a header's env var unset) is never a pass.
//! - [`Phase`]: the gates of one `when` being judged together, as a pure state machine on
//!   tokio's clock: which gates are due, what an answer does, and the verdict (all passed,
//!   waiting until an instant, or timed out naming the gate).

use super::notify::{self, HttpsClient};
use crate::config::{GateCheck, GateConfig, GateWhen, HeaderValue};
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Largest answer read from a gate (a query result or a webhook's body).
const MAX_ANSWER: usize = 1 << 20;
/// Bound on one check: the gate's interval, within these limits.
const MIN_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// What one check said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Error => "error",
        }
    }
}

/// The answer of one check, as shown under `gate.external` in `/api/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub name: String,
    pub when: &'static str,
    pub result: Outcome,
    /// A Prometheus gate's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// A webhook's HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Unix time (ms) of the check.
    pub time_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer {
    /// For messages: "value 0.7 (max 0.5)", "HTTP 503", "error: connection refused".
    pub fn describe(&self) -> String {
        match (&self.error, self.value, self.status) {
            (Some(e), _, _) => format!("error: {e}"),
            (None, Some(v), _) => format!("value {v}"),
            (None, None, Some(s)) => format!("HTTP {s}"),
            _ => self.result.as_str().to_string(),
        }
    }
}

/// The HTTP client of one controller's gates.
#[derive(Clone)]
pub struct Client {
    http: HttpsClient,
}

impl Client {
    /// A client for `gates` (TLS roots loaded only when one of them is https).
    pub fn new(gates: &[GateConfig]) -> Option<Client> {
        let https = gates.iter().any(|g| {
            let url = match &g.check {
                GateCheck::Prometheus { url, .. } | GateCheck::Webhook { url } => url,
            };
            url.starts_with("https:")
        });
        match notify::client(https) {
            Ok(http) => Some(Client { http }),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up TLS for rollout gates; they will error");
                None
            }
        }
    }
}

fn now_ms() -> u64 {
    super::persist::wall_ms(Instant::now())
}

/// Ask `gate` once. `status` is the rollout's status JSON (a webhook's body).
pub async fn check(client: Option<&Client>, gate: &GateConfig, status: &Bytes) -> Answer {
    let time_ms = now_ms();
    let mut a = Answer {
        name: gate.name.clone(),
        when: gate.when.as_str(),
        result: Outcome::Error,
        value: None,
        status: None,
        time_ms,
        error: None,
    };
    let Some(client) = client else {
        a.error = Some("no HTTP client (TLS setup failed)".into());
        return a;
    };
    let limit = gate.interval.clamp(MIN_CHECK_TIMEOUT, MAX_CHECK_TIMEOUT);
    let r = tokio::time::timeout(limit, ask(client, gate, status)).await;
    match r {
        Err(_) => {
            a.error = Some(format!(
                "no answer within {}",
                crate::config::format_duration(limit)
            ))
        }
        Ok(Err(e)) => a.error = Some(e),
        Ok(Ok(Asked::Value(v))) => {
            a.value = Some(v);
            a.result = match &gate.check {
                GateCheck::Prometheus { min, max, .. }
                    if min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m) =>
                {
                    Outcome::Pass
                }
                _ => Outcome::Fail,
            };
        }
        Ok(Ok(Asked::Status(s))) => {
            a.status = Some(s);
            a.result = if (200..300).contains(&s) {
                Outcome::Pass
            } else {
                Outcome::Fail
            };
        }
    }
    a
}

enum Asked {
    Value(f64),
    Status(u16),
}

async fn ask(client: &Client, gate: &GateConfig, status: &Bytes) -> Result<Asked, String> {
    let mut req = match &gate.check {
        GateCheck::Prometheus { url, query, .. } => Request::builder()
            .method(Method::GET)
            .uri(format!("{url}/api/v1/query?query={}", encode(query)))
            .body(Full::new(Bytes::new())),
        GateCheck::Webhook { url } => Request::builder()
            .method(Method::POST)
            .uri(url.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(status.clone())),
    }
    .map_err(|e| format!("bad request: {e}"))?;
    let h = req.headers_mut();
    h.insert(
        header::USER_AGENT,
        http::HeaderValue::from_static(concat!("veer/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, v) in &gate.headers {
        let value = match v {
            HeaderValue::Literal(s) => s.clone(),
            HeaderValue::Env(var) => std::env::var(var)
                .map_err(|_| format!("environment variable {var} (header {name}) is not set"))?,
        };
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::from_str(&value)
            .map_err(|_| format!("the value of header {name} is not a valid header value"))?;
        h.insert(name, value);
    }
    let resp = client.http.request(req).await.map_err(|e| {
        // The legacy client's error hides the cause (connection refused…) in its source.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    })?;
    let code = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    match &gate.check {
        GateCheck::Webhook { .. } => Ok(Asked::Status(code)),
        GateCheck::Prometheus { .. } => prometheus_value(code, &body).map(Asked::Value),
    }
}

/// The single value of an instant query's answer: a vector of exactly one sample, or a
/// scalar. Anything else (an error status, no sample, several, NaN) is an error.
pub fn prometheus_value(code: u16, body: &[u8]) -> Result<f64, String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| format!("HTTP {code}: not a Prometheus API answer (JSON expected)"))?;
    if v["status"] != "success" {
        let kind = v["errorType"].as_str().unwrap_or("error");
        let msg = v["error"].as_str().unwrap_or("no reason given");
        return Err(format!("HTTP {code}: Prometheus {kind}: {msg}"));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([one]) => &one["value"],
            Some([]) => return Err("the query returned no sample (empty result)".into()),
            Some(many) => {
                return Err(format!(
                    "the query returned {} samples; a gate needs exactly one (aggregate it, e.g. sum(…))",
                    many.len()
                ))
            }
            None => return Err("the vector result is not a list".into()),
        },
        other => {
            return Err(format!(
                "result type {} is not a vector or a scalar",
                other.unwrap_or("(none)")
            ))
        }
    };
    let value = sample
        .get(1)
        .and_then(|x| x.as_str())
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| "the sample has no numeric value".to_string())?;
    if value.is_nan() {
        return Err("the query's value is NaN".into());
    }
    Ok(value)
}

/// Percent-encode a query parameter value (RFC 3986 unreserved characters kept).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One gate being judged in a phase.
#[derive(Debug, Clone)]
struct Run {
    gate: Arc<GateConfig>,
    /// When its next check is due (none while one is in flight, or once passed).
    next: Option<Instant>,
    /// Start of the current run of passes.
    passing_since: Option<Instant>,
    passed: bool,
    last: Option<Answer>,
}

/// The verdict of a phase.
#[derive(Debug, Clone, PartialEq)]
pub enum PhaseVerdict {
    /// Every gate passed (and kept passing for its `steady_for`).
    Passed,
    /// Not yet: look again at this instant (or when an answer comes).
    Waiting(Option<Instant>),
    /// A gate did not pass within its `timeout`; the reason names it.
    TimedOut(String),
}

/// The gates of one `when`, judged together from `started`.
#[derive(Debug, Clone)]
pub struct Phase {
    pub when: GateWhen,
    started: Instant,
    runs: Vec<Run>,
}

impl Phase {
    /// The gates of `gates` that judge `when` (on a hotfix run, only `hotfix = true` ones);
    /// `None` when there are none.
    pub fn new(gates: &[GateConfig], when: GateWhen, hotfix: bool, now: Instant) -> Option<Phase> {
        let runs: Vec<Run> = gates
            .iter()
            .filter(|g| g.when == when && (!hotfix || g.hotfix))
            .map(|g| Run {
                gate: Arc::new(g.clone()),
                next: Some(now),
                passing_since: None,
                passed: false,
                last: None,
            })
            .collect();
        (!runs.is_empty()).then_some(Phase {
            when,
            started: now,
            runs,
        })
    }

    /// The gates whose check is due at `now`, marked in flight.
    pub fn due(&mut self, now: Instant) -> Vec<(usize, Arc<GateConfig>)> {
        let mut out = Vec::new();
        for (i, r) in self.runs.iter_mut().enumerate() {
            if !r.passed && r.next.is_some_and(|t| t <= now) {
                r.next = None;
                out.push((i, r.gate.clone()));
            }
        }
        out
    }

    /// Take in the answer of gate `i`'s check, begun at `asked` (the next one is due an
    /// interval after that).
    pub fn record(&mut self, i: usize, answer: Answer, asked: Instant, now: Instant) {
        let Some(r) = self.runs.get_mut(i) else {
            return;
        };
        if answer.result == Outcome::Pass {
            let since = *r.passing_since.get_or_insert(asked);
            if asked.saturating_duration_since(since) >= r.gate.steady_for {
                r.passed = true;
            }
        } else {
            r.passing_since = None;
        }
        r.last = Some(answer);
        r.next = (!r.passed).then(|| (asked + r.gate.interval).max(now));
    }

    /// The last answer of every gate in the phase (`None` before its first).
    pub fn answers(&self) -> impl Iterator<Item = (&GateConfig, Option<&Answer>)> {
        self.runs.iter().map(|r| (&*r.gate, r.last.as_ref()))
    }

    pub fn verdict(&self, now: Instant) -> PhaseVerdict {
        let mut wake: Option<Instant> = None;
        let mut earliest = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        for r in self.runs.iter().filter(|r| !r.passed) {
            let deadline = self.started + r.gate.timeout;
            if now >= deadline {
                let last = r
                    .last
                    .as_ref()
                    .map(|a| format!("; last answer: {}", a.describe()))
                    .unwrap_or_else(|| "; no answer yet".into());
                let steady = if r.passing_since.is_some() {
                    format!(
                        " (passing, but not yet for {})",
                        crate::config::format_duration(r.gate.steady_for)
                    )
                } else {
                    String::new()
                };
                return PhaseVerdict::TimedOut(format!(
                    "gate {:?} ({}) did not pass within {}{steady}{last}",
                    r.gate.name,
                    r.gate.when.as_str(),
                    crate::config::format_duration(r.gate.timeout)
                ));
            }
            earliest(deadline);
            if let Some(t) = r.next {
                earliest(t);
            }
        }
        if self.runs.iter().all(|r| r.passed) {
            PhaseVerdict::Passed
        } else {
            PhaseVerdict::Waiting(wake)
        }
    }

    /// For the status: the gates not passed yet.
    pub fn pending_names(&self) -> Vec<&str> {
        self.runs
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.gate.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(name: &str, steady: u64, timeout: u64) -> GateConfig {
        GateConfig {
            name: name.into(),
            when: GateWhen::Step,
            check: GateCheck::Webhook {
                url: "http://127.0.0.1:1/".into(),
            },
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(timeout),
            steady_for: Duration::from_secs(steady),
            headers: Vec::new(),
            hotfix: false,
        }
    }

    fn answer(result: Outcome) -> Answer {
        Answer {
            name: "g".into(),
            when: "step",
            result,
            value: None,
            status: Some(if result == Outcome::Pass { 200 } else { 500 }),
            time_ms: 0,
            error: None,
        }
    }

    #[test]
    fn prometheus_answers() {
        let vec1 = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.25"]}]}}"#;
        assert_eq!(prometheus_value(200, vec1), Ok(0.25));
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"3"]}}"#;
        assert_eq!(prometheus_value(200, scalar), Ok(3.0));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(prometheus_value(200, empty).unwrap_err().contains("empty"));
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#;
        assert!(prometheus_value(200, two)
            .unwrap_err()
            .contains("2 samples"));
        let err = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#;
        assert_eq!(
            prometheus_value(400, err).unwrap_err(),
            "HTTP 400: Prometheus bad_data: parse error at char 4"
        );
        assert!(prometheus_value(502, b"<html>")
            .unwrap_err()
            .contains("not a Prometheus"));
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(prometheus_value(200, nan).is_err());
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(prometheus_value(200, matrix)
            .unwrap_err()
            .contains("matrix"));
    }

    #[test]
    fn encoding_keeps_promql_intact() {
        assert_eq!(
            encode("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_phase_waits_for_every_gate_and_times_out_naming_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let gates = vec![gate("a", 0, 60), gate("b", 0, 60)];
        let mut p = Phase::new(&gates, GateWhen::Step, false, t0).unwrap();
        assert!(Phase::new(&gates, GateWhen::Before, false, t0).is_none());
        assert!(
            Phase::new(&gates, GateWhen::Step, true, t0).is_none(),
            "hotfix: only hotfix gates"
        );
        let due = p.due(t0);
        assert_eq!(due.len(), 2);
        assert!(p.due(t0).is_empty(), "in flight");
        p.record(0, answer(Outcome::Pass), t0, t0 + s);
        p.record(1, answer(Outcome::Error), t0, t0 + s);
        assert_eq!(p.verdict(t0 + s), PhaseVerdict::Waiting(Some(t0 + 10 * s)));
        assert_eq!(p.pending_names(), vec!["b"]);
        // b fails until the timeout: rolled back, b named with its last answer.
        for k in 1..6 {
            let at = t0 + 10 * k * s;
            assert_eq!(p.due(at).len(), 1);
            p.record(1, answer(Outcome::Fail), at, at);
        }
        match p.verdict(t0 + 60 * s) {
            PhaseVerdict::TimedOut(r) => {
                assert!(
                    r.contains("gate \"b\"") && r.contains("within 1m") && r.contains("HTTP 500"),
                    "{r}"
                )
            }
            v => panic!("{v:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn steady_for_needs_passes_over_the_whole_span() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let gates = vec![gate("g", 20, 300)];
        let mut p = Phase::new(&gates, GateWhen::Step, false, t0).unwrap();
        p.due(t0);
        p.record(0, answer(Outcome::Pass), t0, t0);
        assert!(matches!(p.verdict(t0), PhaseVerdict::Waiting(_)));
        // A failure resets the run.
        p.due(t0 + 10 * s);
        p.record(0, answer(Outcome::Fail), t0 + 10 * s, t0 + 10 * s);
        for k in [20u32, 30] {
            p.due(t0 + k * s);
            p.record(0, answer(Outcome::Pass), t0 + k * s, t0 + k * s);
            assert!(
                matches!(p.verdict(t0 + k * s), PhaseVerdict::Waiting(_)),
                "{k}"
            );
        }
        p.due(t0 + 40 * s);
        p.record(0, answer(Outcome::Pass), t0 + 40 * s, t0 + 40 * s);
        assert_eq!(p.verdict(t0 + 40 * s), PhaseVerdict::Passed);
    }
}
