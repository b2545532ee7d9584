//! The admin listener: liveness and readiness, Prometheus metrics, the status API and page.

pub mod api;
pub mod console;
pub mod guard;
pub mod rollout;
pub mod status;

use crate::control::Control;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every admin answer: small, fully buffered.
pub type AdminResponse = Response<Full<Bytes>>;

/// Serve the admin API until `stop`.
pub async fn serve(rt: Arc<Control>, listener: TcpListener, stop: CancellationToken) {
    // The bound address (port resolved) decides which Hosts are this listener (guard.rs).
    let Ok(local) = listener.local_addr() else {
        tracing::error!("admin listener has no local address; not serving");
        return;
    };
    // Without a token the API is open only to this machine.
    let loopback = local.ip().is_loopback();
    // The status console's sampler lives as long as the admin listener.
    let console = console::Console::new();
    tokio::spawn(console::run(rt.clone(), console.clone(), stop.clone()));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let rt = rt.clone();
        let console = console.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let rt = rt.clone();
                let console = console.clone();
                async move { Ok::<_, Infallible>(route(&rt, &console, local, loopback, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            // Kept-alive connections (a status page polling) end with the listener: answers in
            // progress finish, then the connection closes, so a client reconnects to whatever
            // listens next (a restarted veer).
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, v: &serde_json::Value) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON error: `{"error": "…"}`.
pub fn error(status: StatusCode, msg: impl std::fmt::Display) -> AdminResponse {
    json(status, &serde_json::json!({ "error": msg.to_string() }))
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn route(
    rt: &Arc<Control>,
    console: &console::Console,
    local: std::net::SocketAddr,
    loopback: bool,
    req: Request<Incoming>,
) -> AdminResponse {
    let path = req.uri().path().to_string();
    // DNS rebinding and cross-site requests are refused before anything else (guard.rs).
    let host = match guard::authority(&req) {
        Ok(h) => h,
        Err(why) if !guard::any_host(&path) => return error(StatusCode::BAD_REQUEST, why),
        Err(_) => None,
    };
    let config = rt.config();
    if let Some(h) = host.as_ref().filter(|_| !guard::any_host(&path)) {
        if !guard::host_allowed(local, &config.admin.hosts, h) {
            return guard::misdirected(h);
        }
    }
    if path == "/api" || path.starts_with("/api/") {
        if let Some(refused) = guard::check_mutation(&req, host.as_ref(), &config.admin.hosts) {
            return refused;
        }
        let who = match api::authorize(rt, req.headers(), loopback) {
            Ok(who) => who,
            Err(why) => return api::unauthorized(why),
        };
        return api_route(rt, console, req, &who).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => status::page(),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            if rt.is_ready() {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            rt.metrics.render(&rt.registry.gauges()),
        ),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The `/api/*` endpoints (SPEC §3), after the token check. Path segments are
/// percent-decoded; a known path with the wrong method gets 405.
async fn api_route(
    rt: &Arc<Control>,
    console: &console::Console,
    req: Request<Incoming>,
    who: &str,
) -> AdminResponse {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<String> = path
        .trim_start_matches("/api")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .map(api::percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let allowed = match segs.as_slice() {
        ["status"] | ["changes"] => Method::GET,
        // The status console's time series (an extension of SPEC §3; console.rs).
        ["series"] => Method::GET,
        ["routes", _, "split"] => Method::PUT,
        ["routes", _, "swap"] | ["routes", _, "rollout", _] | ["reload"] => Method::POST,
        ["pools", _, "backends", _, "drain" | "undrain"] => Method::POST,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {method} {path}"),
            )
        }
    };
    if method != allowed {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes {allowed}, not {method}"),
        );
        if let Ok(v) = HeaderValue::from_str(allowed.as_str()) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    }
    match segs.as_slice() {
        ["status"] => json(StatusCode::OK, &status::status_json(rt)),
        // The audit trail, newest first (SPEC §3).
        ["changes"] => json(StatusCode::OK, &rt.audit.changes_json()),
        ["series"] => json(StatusCode::OK, &console.json()),
        ["routes", route, "split"] => api::put_split(rt, route, &query, req.into_body(), who).await,
        ["routes", route, "swap"] => api::swap(rt, route, &query, who).await,
        // Progressive rollouts: start, pause, resume, approve, promote, abort.
        ["routes", route, "rollout", action] => {
            rollout::handle(rt, route, action, &query, who).await
        }
        ["pools", pool, "backends", addr, op] => {
            api::drain(rt, pool, addr, *op == "drain", &query, who).await
        }
        ["reload"] => api::reload(rt, who).await,
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        ),
    }
}
