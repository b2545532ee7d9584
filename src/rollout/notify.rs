//! Rollout events: logged by the controller, and POSTed as JSON to `notify_url` by a
//! delivery task per rollout. Delivery never blocks the rollout: events queue (bounded) and a
//! failed POST is retried a few times with backoff, then logged and dropped.

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Tries per event (the first one included).
pub const ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled for each further one.
pub const BACKOFF: Duration = Duration::from_millis(500);
/// Bound on one delivery attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events waiting for delivery beyond this are dropped (and logged).
const QUEUE: usize = 256;

/// What happened to a rollout (its name in logs, events and `veer_rollouts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Not started yet: waiting for the rollouts in `after`, or for `before` gates.
    Waiting,
    Started,
    Step,
    Gate,
    AwaitingApproval,
    Approved,
    Paused,
    Resumed,
    Succeeded,
    RolledBack,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Waiting => "waiting",
            EventKind::Started => "started",
            EventKind::Step => "step",
            EventKind::Gate => "gate",
            EventKind::AwaitingApproval => "awaiting_approval",
            EventKind::Approved => "approved",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Succeeded => "succeeded",
            EventKind::RolledBack => "rolled_back",
        }
    }
}

/// The built-in gate's last verdict on a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateResult {
    Passed,
    /// Not enough evidence yet.
    Waiting,
    Failed,
}

impl GateResult {
    pub fn as_str(self) -> &'static str {
        match self {
            GateResult::Passed => "passed",
            GateResult::Waiting => "waiting",
            GateResult::Failed => "failed",
        }
    }
}

/// One rollout event, as logged and as POSTed.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub route: String,
    pub event: EventKind,
    pub state: &'static str,
    /// Index into `steps`.
    pub step: usize,
    /// Percent of the route's traffic on `to`.
    pub weight: u32,
    pub to: String,
    pub baseline: String,
    /// For `gate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<GateResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The step's figures, for `gate` and final events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<serde_json::Value>,
    /// A hotfix run (`[routes.rollout.hotfix]`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hotfix: bool,
    /// Who made it happen through the API (the token's name): an approval, a pause, an
    /// abort; absent when the rollout moved on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// Unix time in milliseconds.
    pub time_ms: u64,
}

impl Event {
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Queue for one rollout's notifications; `None` inside when no `notify_url` is set.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Event>>,
}

impl Notifier {
    /// Start the delivery task for `url` (none when `url` is `None`). It ends when the
    /// notifier is dropped and its queue is empty, or at `stop`.
    pub fn start(url: Option<&str>, stop: CancellationToken) -> Notifier {
        let Some(url) = url else {
            return Notifier::default();
        };
        let uri: http::Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(%url, error = %e, "rollout notify_url is not a valid URL; events are only logged");
                return Notifier::default();
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(uri, rx, stop));
        Notifier { tx: Some(tx) }
    }

    /// Queue an event; never waits.
    pub fn send(&self, e: Event) {
        if let Some(tx) = &self.tx {
            if let Err(e) = tx.try_send(e) {
                tracing::warn!(error = %e, "rollout notification queue full; event dropped");
            }
        }
    }
}

pub(super) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(super) fn client(https: bool) -> Result<HttpsClient, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn deliver(uri: http::Uri, mut rx: mpsc::Receiver<Event>, stop: CancellationToken) {
    let client = match client(uri.scheme_str() == Some("https")) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%uri, error = %e, "cannot set up TLS for rollout notifications; events are only logged");
            return;
        }
    };
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => return },
            _ = stop.cancelled() => return,
        };
        let body = match serde_json::to_vec(&event) {
            Ok(b) => Bytes::from(b),
            Err(_) => continue,
        };
        let mut wait = BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let req = Request::builder()
                .method(Method::POST)
                .uri(uri.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    header::USER_AGENT,
                    concat!("veer/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(body.clone()));
            let Ok(req) = req else { break };
            let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(req)).await;
            let error = match outcome {
                Ok(Ok(resp)) if resp.status().is_success() => break,
                Ok(Ok(resp)) => format!("answered {}", resp.status()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            if attempt == ATTEMPTS {
                tracing::warn!(route = %event.route, event = event.event.as_str(), %uri, %error, attempts = ATTEMPTS, "rollout notification not delivered; giving up");
                break;
            }
            tracing::debug!(route = %event.route, event = event.event.as_str(), %uri, %error, attempt, "rollout notification failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            wait *= 2;
        }
    }
}
