//! `veer demo`: two demo pools on loopback and the proxy in front at 90/10; with
//! `--rollout`, a canary rollout of green instead (see the README, "Canary releases"); with
//! `--approval`, that rollout waits for an approval at each step.

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
/// `/data/…` answers the same on every backend of either colour, except for the share set
/// with `POST /diff?rate=0.1` (the pool's answers that differ: a dark launch to compare).
pub struct DemoBackend {
    pub colour: &'static str,
    pub name: String,
    pub addr: SocketAddr,
    fail_per_mille: Arc<AtomicU32>,
    diff_per_mille: Arc<AtomicU32>,
}

impl DemoBackend {
    pub fn set_failure_rate(&self, rate: f64) {
        self.fail_per_mille
            .store((rate.clamp(0.0, 1.0) * 1000.0) as u32, Ordering::Relaxed);
    }

    /// The share of `/data` answers that differ (as `POST /diff?rate=…` sets it).
    pub fn set_diff_rate(&self, rate: f64) {
        self.diff_per_mille
            .store((rate.clamp(0.0, 1.0) * 1000.0) as u32, Ordering::Relaxed);
    }
}

/// Start a demo backend on an ephemeral loopback port.
pub async fn start_backend(colour: &'static str, name: String) -> std::io::Result<DemoBackend> {
    start_backend_sharing(colour, name, Arc::default(), Arc::default()).await
}

/// Start `count` demo backends named `{colour}-1`… that share one failure share, so
/// `POST /fail?rate=…` to any of them (for example through the proxy with
/// `x-veer-pool: green`) sets it for the whole pool.
pub async fn start_pool(colour: &'static str, count: usize) -> std::io::Result<Vec<DemoBackend>> {
    let fail = Arc::new(AtomicU32::new(0));
    let diff = Arc::new(AtomicU32::new(0));
    let mut out = Vec::with_capacity(count);
    for i in 1..=count {
        out.push(
            start_backend_sharing(colour, format!("{colour}-{i}"), fail.clone(), diff.clone())
                .await?,
        );
    }
    Ok(out)
}

async fn start_backend_sharing(
    colour: &'static str,
    name: String,
    fail: Arc<AtomicU32>,
    diff: Arc<AtomicU32>,
) -> std::io::Result<DemoBackend> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let f2 = fail.clone();
    let d2 = diff.clone();
    let n2 = name.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let fail = f2.clone();
            let diff = d2.clone();
            let name = n2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let fail = fail.clone();
                    let diff = diff.clone();
                    let name = name.clone();
                    async move {
                        if let Some(r) = data_answer(&name, &diff, &req) {
                            return Ok::<_, Infallible>(r);
                        }
                        Ok::<_, Infallible>(demo_answer(colour, &name, &fail, req))
                    }
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
        diff_per_mille: diff,
    })
}

/// `POST /diff?rate=…` and `/data/…` (the dark launch's endpoints), else `None`.
fn data_answer(
    name: &str,
    diff: &AtomicU32,
    req: &Request<Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path();
    let text = if path == "/diff" {
        let rate = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("rate=")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            .clamp(0.0, 1.0);
        diff.store((rate * 1000.0) as u32, Ordering::Relaxed);
        format!(
            "{name}: answering {:.0}% of /data differently\n",
            rate * 100.0
        )
    } else if path == "/data" || path.starts_with("/data/") {
        let per_mille = diff.load(Ordering::Relaxed);
        if per_mille > 0 && rand::random::<u32>() % 1000 < per_mille {
            format!("data for {path}, changed\n")
        } else {
            format!("data for {path}\n")
        }
    } else {
        return None;
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        "x-served-by",
        http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("demo")),
    );
    Some(r)
}

fn demo_answer(
    colour: &str,
    name: &str,
    fail: &AtomicU32,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/health" {
        return Response::new(Full::new(Bytes::from_static(b"ok\n")));
    }
    if path == "/fail" {
        return set_failure(colour, name, fail, req.uri().query());
    }
    let per_mille = fail.load(Ordering::Relaxed);
    if per_mille > 0 && rand::random::<u32>() % 1000 < per_mille {
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "{colour} {name}: injected failure\n"
        ))));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(format!(
        "hello from {colour} ({name})\n"
    ))));
    r.headers_mut().insert(
        "x-served-by",
        http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("demo")),
    );
    r
}

/// `/fail?rate=R`: the share of requests (0 to 1) every backend of the pool fails from now on.
/// The answer names the pool, since the rate is the pool's, whichever backend took it.
fn set_failure(
    colour: &str,
    name: &str,
    fail: &AtomicU32,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let given = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("rate=")));
    let rate = given.and_then(|v| v.parse::<f64>().ok());
    let Some(rate) = rate.filter(|r| (0.0..=1.0).contains(r)) else {
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "pool {colour}: rate must be a number from 0 to 1 (POST /fail?rate=0.2 fails 20% of the pool's requests); got {}\n",
            given.map_or("nothing".to_string(), |g| format!("{g:?}"))
        ))));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    fail.store((rate * 1000.0).round() as u32, Ordering::Relaxed);
    let pct = (rate * 1000.0).round() / 10.0;
    Response::new(Full::new(Bytes::from(format!(
        "pool {colour}: every {colour} backend now fails {pct}% of its requests (set through {name})\n"
    ))))
}

/// The demo's config text, with its backends and listen addresses filled in.
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    blue: &[SocketAddr],
    green: &[SocketAddr],
) -> String {
    demo_config_with(listen, admin, blue, green, false)
}

/// Where `veer demo --rollout`'s smoke-test webhook gate is POSTed: a one-line local server
/// the README starts (any 2xx answer passes).
pub const DEMO_GATE: &str = "127.0.0.1:9911";

/// The `[routes.rollout]` of `veer demo --rollout`: quick steps, so a walk from 5% to 100%
/// takes under a minute with a little traffic. Route web waits for the rollout of route api
/// (SPEC §10 order), then for the smoke-test webhook before its first step; a hotfix takes
/// two 5 s steps.
pub const DEMO_ROLLOUT: &str = r#"
[routes.rollout]
to = "green"
after = ["api"]
steps = [5, 25, 50, 100]
step_interval = "10s"
min_requests = 20
max_error_rate = 0.05
max_p99 = "250ms"

[routes.rollout.hotfix]
steps = [50, 100]
step_interval = "5s"
min_requests = 10

[[routes.rollout.gates]]
name = "smoke"
when = "before"
webhook = "http://DEMO_GATE/smoke"
interval = "2s"
timeout = "10m"
hotfix = true
"#;

/// Route api of `veer demo --rollout`, rolled out first.
const DEMO_API: &str = r#"
[[routes]]
name = "api"
path_prefix = "/api"
split = { blue = 100, green = 0 }

[routes.rollout]
to = "green"
steps = [50, 100]
step_interval = "10s"
min_requests = 10
max_error_rate = 0.05
"#;

/// Route data of `veer demo --rollout`: a dark launch. Every request is mirrored to green and
/// compared (`POST /diff?rate=` makes green's answers differ), and the rollout starts with a
/// mirror step that moves no user until the copies agree.
const DEMO_DATA: &str = r#"
[[routes]]
name = "data"
path_prefix = "/data"
split = { blue = 100, green = 0 }

[routes.mirror]
to = "green"
compare = true
ignore_headers = ["x-served-by"]

[routes.rollout]
to = "green"
steps = ["mirror", 50, 100]
step_interval = "10s"
min_requests = 20
max_diff_rate = 0.02
max_error_rate = 0.05
"#;

/// What `veer demo --approval` adds to the rollout: every step waits for an approval (the
/// status page's button, `veer rollout web approve`, or the API).
pub const DEMO_APPROVAL: &str = "approval = true\napproval_timeout = \"10m\"\n";

/// How `veer demo` runs: a plain split, a rollout, or a rollout that waits for approvals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DemoMode {
    #[default]
    Split,
    Rollout,
    Approval,
}

/// The demo's config text; with `rollout`, green starts at 0% and is rolled out.
pub fn demo_config_with(
    listen: SocketAddr,
    admin: SocketAddr,
    blue: &[SocketAddr],
    green: &[SocketAddr],
    rollout: bool,
) -> String {
    let mode = if rollout {
        DemoMode::Rollout
    } else {
        DemoMode::Split
    };
    demo_config_mode(listen, admin, blue, green, mode)
}

/// The demo's config text in a [`DemoMode`].
pub fn demo_config_mode(
    listen: SocketAddr,
    admin: SocketAddr,
    blue: &[SocketAddr],
    green: &[SocketAddr],
    mode: DemoMode,
) -> String {
    let rollout = mode != DemoMode::Split;
    let list = |v: &[SocketAddr]| {
        v.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (b, g) = if rollout { (100, 0) } else { (90, 10) };
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
split = {{ blue = {b}, green = {g} }}
sticky = {{ cookie = "veer_id" }}
override = {{ header = "x-veer-pool", cookie = "veer_pool" }}
{rollout}{api}{data}"#,
        blue = list(blue),
        green = list(green),
        rollout = match mode {
            DemoMode::Split => String::new(),
            DemoMode::Rollout => DEMO_ROLLOUT.replace("DEMO_GATE", DEMO_GATE),
            // Into web's [routes.rollout] itself, ahead of its sub-tables.
            DemoMode::Approval => DEMO_ROLLOUT.replace("DEMO_GATE", DEMO_GATE).replacen(
                "to = \"green\"\n",
                &format!("to = \"green\"\n{DEMO_APPROVAL}"),
                1,
            ),
        },
        api = if rollout { DEMO_API } else { "" },
        data = if rollout { DEMO_DATA } else { "" },
    )
}

/// Build and validate the demo config.
pub fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    blue: &[SocketAddr],
    green: &[SocketAddr],
) -> Config {
    config_with(listen, admin, blue, green, false)
}

/// Build and validate the demo config, with or without the rollout of green.
pub fn config_with(
    listen: SocketAddr,
    admin: SocketAddr,
    blue: &[SocketAddr],
    green: &[SocketAddr],
    rollout: bool,
) -> Config {
    Config::parse(
        Path::new("<demo>"),
        &demo_config_with(listen, admin, blue, green, rollout),
    )
    .expect("the demo config is valid")
}

/// Build and validate the demo config in a [`DemoMode`].
pub fn config_mode(
    listen: SocketAddr,
    admin: SocketAddr,
    blue: &[SocketAddr],
    green: &[SocketAddr],
    mode: DemoMode,
) -> Config {
    Config::parse(
        Path::new("<demo>"),
        &demo_config_mode(listen, admin, blue, green, mode),
    )
    .expect("the demo config is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_configs_are_valid() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let plain = config(a, a, &[a], &[a]);
        assert!(plain.routes[0].rollout.is_none());
        let r = config_with(a, a, &[a], &[a], true);
        let ro = r.routes[0].rollout.as_ref().expect("rollout");
        assert_eq!(ro.steps, vec![5, 25, 50, 100]);
        assert_eq!(ro.after, vec!["api".to_string()]);
        assert_eq!(ro.gates.len(), 1);
        assert!(ro.hotfix.is_some());
        assert_eq!(r.routes[0].weight_of("green"), Some(0));
        assert!(r.route("api").unwrap().rollout.is_some());
        let data = r.route("data").unwrap();
        assert!(data.rollout.as_ref().unwrap().mirror_step);
        assert!(data.mirror.as_ref().unwrap().compare);
        assert!(!ro.approval);
        let a = config_mode(a, a, &[a], &[a], DemoMode::Approval);
        let ro = a.routes[0].rollout.as_ref().expect("rollout");
        assert!(ro.approval);
        assert_eq!(ro.steps, vec![5, 25, 50, 100]);
        assert_eq!(ro.gates.len(), 1, "the gates stay");
        let api = a.route("api").unwrap().rollout.as_ref().unwrap();
        assert!(!api.approval, "only web's steps wait for approvals");
    }

    #[tokio::test]
    async fn fail_answers_name_the_pool_and_refuse_a_bad_rate() {
        let pool = start_pool("green", 2).await.unwrap();
        let call = |addr: SocketAddr, q: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("POST /fail{q} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = call(pool[1].addr, "?rate=0.25").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("pool green: every green backend now fails 25% of its requests (set through green-2)"),
            "{ok}"
        );
        // The rate is the pool's: the other backend has it too.
        assert_eq!(pool[0].fail_per_mille.load(Ordering::Relaxed), 250);
        for bad in ["?rate=lots", "?rate=2", ""] {
            let r = call(pool[0].addr, bad).await;
            assert!(r.starts_with("HTTP/1.1 400"), "{bad}: {r}");
            assert!(
                r.contains("pool green: rate must be a number from 0 to 1"),
                "{r}"
            );
        }
        assert_eq!(
            pool[0].fail_per_mille.load(Ordering::Relaxed),
            250,
            "a bad rate changes nothing"
        );
    }
}
