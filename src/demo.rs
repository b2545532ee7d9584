//! `veer demo`: two demo pools on loopback and the proxy in front at 90/10.

use crate::config::Config;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// One demo backend: answers with its colour and name; `/health` answers 200.
/// Its failure share (per mille) can be set live with `POST /fail?rate=0.1`.
pub struct DemoBackend {
    pub colour: &'static str,
    pub name: String,
    pub addr: SocketAddr,
    fail_per_mille: Arc<AtomicU32>,
}

impl DemoBackend {
    pub fn set_failure_rate(&self, rate: f64) {
        self.fail_per_mille
            .store((rate.clamp(0.0, 1.0) * 1000.0) as u32, Ordering::Relaxed);
    }
}

/// Start a demo backend on an ephemeral loopback port.
pub async fn start_backend(colour: &'static str, name: String) -> std::io::Result<DemoBackend> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let fail = Arc::new(AtomicU32::new(0));
    let f2 = fail.clone();
    let n2 = name.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let fail = f2.clone();
            let name = n2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let fail = fail.clone();
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(demo_answer(colour, &name, &fail, req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(DemoBackend {
        colour,
        name,
        addr,
        fail_per_mille: fail,
    })
}

fn demo_answer(colour: &str, name: &str, fail: &AtomicU32, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/health" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    if path == "/fail" {
        let rate = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("rate=")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        fail.store((rate.clamp(0.0, 1.0) * 1000.0) as u32, Ordering::Relaxed);
        return Response::new(Full::new(Bytes::from(format!("{name}: failing {:.0}% of requests\n", rate * 100.0))));
    }
    let per_mille = fail.load(Ordering::Relaxed);
    if per_mille > 0 && rand::random::<u32>() % 1000 < per_mille {
        let mut r = Response::new(Full::new(Bytes::from(format!("{colour} {name}: injected failure\n"))));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(format!("hello from {colour} ({name})\n"))));
    r.headers_mut().insert("x-served-by", http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("demo")));
    r
}

/// The demo's config text, with its backends and listen addresses filled in.
pub fn demo_config(listen: SocketAddr, admin: SocketAddr, blue: &[SocketAddr], green: &[SocketAddr]) -> String {
    let list = |v: &[SocketAddr]| v.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"[server]
listen = ["{listen}"]

[admin]
listen = "{admin}"

[pools.blue]
backends = [{blue}]
[pools.blue.health_check]
path = "/health"
interval = "1s"

[pools.green]
backends = [{green}]
[pools.green.health_check]
path = "/health"
interval = "1s"

[[routes]]
name = "web"
split = {{ blue = 90, green = 10 }}
sticky = {{ cookie = "veer_id" }}
override = {{ header = "x-veer-pool", cookie = "veer_pool" }}
"#,
        blue = list(blue),
        green = list(green),
    )
}

/// Build and validate the demo config.
pub fn config(listen: SocketAddr, admin: SocketAddr, blue: &[SocketAddr], green: &[SocketAddr]) -> Config {
    Config::parse(Path::new("<demo>"), &demo_config(listen, admin, blue, green)).expect("the demo config is valid")
}
