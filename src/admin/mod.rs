//! The admin listener: liveness and readiness, Prometheus metrics, the status API and page.

pub mod status;

use crate::app::Listeners;
use crate::proxy::server::bind as _bind;
use crate::runtime::Runtime;
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

type AdminResponse = Response<Full<Bytes>>;

/// Serve the admin API until `stop`.
pub async fn serve(rt: Arc<Runtime>, listeners: Arc<Listeners>, listener: TcpListener, stop: CancellationToken) {
    let _ = _bind;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let rt = rt.clone();
        let listeners = listeners.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let rt = rt.clone();
                let listeners = listeners.clone();
                async move { Ok::<_, Infallible>(route(&rt, &listeners, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, v: &serde_json::Value) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON error: `{"error": "…"}`.
pub fn error(status: StatusCode, msg: impl std::fmt::Display) -> AdminResponse {
    json(status, &serde_json::json!({ "error": msg.to_string() }))
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn route(rt: &Arc<Runtime>, _listeners: &Arc<Listeners>, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
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
            rt.metrics.render(&rt.registry),
        ),
        (&Method::GET, "/api/status") => json(StatusCode::OK, &status::status_json(rt)),
        _ if path.starts_with("/api/") => error(StatusCode::NOT_FOUND, format!("no such endpoint: {} {}", req.method(), path)),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}
