//! Test harness: real upstream servers and a real veer on 127.0.0.1:0, spoken to over sockets.
//! Shared by every integration test file (`mod support;`).

#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod config;
mod dns;
mod echo;
pub mod etcd;
mod h2;
mod metrics;
mod raw;
mod rollout;
mod rss;
mod tls;
// Not every test file uses every part.
#[allow(unused_imports)]
pub use config::*;
#[allow(unused_imports)]
pub use dns::*;
#[allow(unused_imports)]
pub use echo::*;
#[allow(unused_imports)]
pub use h2::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use rollout::*;
#[allow(unused_imports)]
pub use rss::*;
#[allow(unused_imports)]
pub use tls::*;

pub type BoxResp = Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>;
type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = BoxResp> + Send>> + Send + Sync>;

/// A running test upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests seen (all paths).
    pub hits: Arc<AtomicUsize>,
    pub stop: CancellationToken,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A full response body from bytes.
pub fn body(b: impl Into<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, hyper::Error> {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A response with a status and text.
pub fn respond(status: u16, text: impl Into<Bytes>) -> BoxResp {
    let mut r = Response::new(body(text));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

/// Start an upstream with a custom async handler.
pub async fn upstream_with<F, Fut>(f: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BoxResp> + Send + 'static,
{
    let handler: Handler = Arc::new(move |req| Box::pin(f(req)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    upstream_on(listener, handler).await
}

/// Start an upstream on a given listener (to restart one on the same port).
pub async fn upstream_on(listener: TcpListener, handler: Handler) -> Upstream {
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (h2, s2) = (hits.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = s2.cancelled() => return,
            };
            let handler = handler.clone();
            let hits = h2.clone();
            let stop = s2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    });
    Upstream { addr, hits, stop }
}

/// An upstream answering 200 with `name` on every path (and `/health`).
pub async fn upstream(name: &'static str) -> Upstream {
    upstream_with(move |_req| async move { respond(200, name) }).await
}

/// An address where nothing listens (bound then closed).
pub async fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A veer started in-process from config text.
pub struct Veer {
    pub running: Option<veer::app::Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Veer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
    pub fn rt(&self) -> &Arc<veer::control::Control> {
        &self.running.as_ref().unwrap().rt
    }
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
    /// Shut down and start again from the same config file (and folder).
    pub async fn restart(mut self) -> Veer {
        let running = self.running.take().expect("veer is running");
        running.shutdown().await;
        start_veer_file(self.dir, self.config_path).await
    }
}

/// Upstreams `blue` and `green` (each answering its name) and a veer over them with route
/// `web` at `split` and `route_extra` lines ([`blue_green`]).
pub async fn blue_green_veer(split: &str, route_extra: &str) -> (Upstream, Upstream, Veer) {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(blue.addr, green.addr, split, route_extra)).await;
    (blue, green, veer)
}

/// Config text with `listen` and admin on port 0 prepended unless the text has a `[server]`
/// or `[admin]` of its own.
pub fn with_listeners(config: &str) -> String {
    let mut out = String::new();
    if !config.contains("[server]") {
        out.push_str("[server]\nlisten = [\"127.0.0.1:0\"]\n");
    }
    if !config.contains("[admin]") {
        out.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    out.push_str(config);
    out
}

/// Start veer in this process from config text (listeners on port 0 added when absent).
pub async fn start_veer(config: &str) -> Veer {
    start_veer_tweaked(config, |_| {}).await
}

/// [`start_veer`], with the parsed config adjusted before it goes live (say, no jitter).
pub async fn start_veer_tweaked(
    config: &str,
    tweak: impl FnOnce(&mut veer::config::Config),
) -> Veer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veer.toml");
    std::fs::write(&path, with_listeners(config)).unwrap();
    let mut config =
        veer::config::Config::load(&path).unwrap_or_else(|e| panic!("config invalid:\n{e}"));
    tweak(&mut config);
    start_with(dir, path, config).await
}

/// Start veer from a config file already written.
pub async fn start_veer_file(dir: tempfile::TempDir, path: PathBuf) -> Veer {
    let config =
        veer::config::Config::load(&path).unwrap_or_else(|e| panic!("config invalid:\n{e}"));
    start_with(dir, path, config).await
}

/// [`start_veer_file`] with the file watcher off: only the API (or a signal) reloads.
pub async fn start_veer_file_unwatched(dir: tempfile::TempDir, path: PathBuf) -> Veer {
    let config =
        veer::config::Config::load(&path).unwrap_or_else(|e| panic!("config invalid:\n{e}"));
    let opts = veer::app::StartOptions {
        watch_config: false,
    };
    start_with_options(dir, path, config, opts).await
}

async fn start_with(dir: tempfile::TempDir, path: PathBuf, config: veer::config::Config) -> Veer {
    start_with_options(dir, path, config, veer::app::StartOptions::default()).await
}

async fn start_with_options(
    dir: tempfile::TempDir,
    path: PathBuf,
    config: veer::config::Config,
    opts: veer::app::StartOptions,
) -> Veer {
    let running = veer::app::start_with(config, Some(path.clone()), opts)
        .await
        .expect("veer starts");
    Veer {
        addr: running.listen[0],
        admin: running.admin,
        running: Some(running),
        dir,
        config_path: path,
    }
}

/// A pooled HTTP/1.1 client for tests.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A collected response.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Send a request and collect the answer.
pub async fn send(req: Request<Full<Bytes>>) -> Got {
    let resp = tokio::time::timeout(Duration::from_secs(30), client().request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// GET a URL and return the answer with its body still to be read (streaming tests).
pub async fn get_streaming(url: &str) -> Response<Incoming> {
    client()
        .request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

/// GET a URL.
pub async fn get(url: &str) -> Got {
    send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

/// GET with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Send `n` GETs spread over 8 concurrent keep-alive clients; count answers by body.
pub async fn count_bodies(
    url: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> std::collections::HashMap<String, usize> {
    use std::collections::HashMap;
    let client = client();
    let headers: Arc<Vec<(String, String)>> = Arc::new(
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            let url = url.to_string();
            let headers = headers.clone();
            let share = n / 8 + usize::from(t < n % 8);
            tokio::spawn(async move {
                let mut counts: HashMap<String, usize> = HashMap::new();
                for _ in 0..share {
                    let mut b = Request::get(&url);
                    for (k, v) in headers.iter() {
                        b = b.header(k, v);
                    }
                    let resp = client
                        .request(b.body(Full::new(Bytes::new())).unwrap())
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    *counts
                        .entry(String::from_utf8_lossy(&body).into_owned())
                        .or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

/// The share of the answers counted by [`count_bodies`] that were `key`.
pub fn share(counts: &std::collections::HashMap<String, usize>, key: &str) -> f64 {
    let all: usize = counts.values().sum();
    *counts.get(key).unwrap_or(&0) as f64 / all as f64
}

/// Send raw bytes on a fresh TCP connection and read until the peer closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Wait (polling, bounded) until `f` is true.
pub async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let start = std::time::Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `veer` binary built by cargo for integration tests.
pub fn veer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_veer")
}

/// A veer child process.
pub struct VeerProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stderr: Arc<std::sync::Mutex<String>>,
}

impl VeerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
    pub fn signal(&self, sig: &str) {
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
    }
}

/// Run `veer run --config PATH` and wait for its announcement line.
pub async fn spawn_veer(path: &std::path::Path) -> VeerProcess {
    spawn_veer_bin(std::path::Path::new(veer_bin()), path).await
}

/// [`spawn_veer`] with the binary at `bin` (a copy, say, that a test replaces).
pub async fn spawn_veer_bin(bin: &std::path::Path, path: &std::path::Path) -> VeerProcess {
    use tokio::io::{AsyncBufReadExt, BufReader};
    // A copy just written may still be open for writing in a child another test thread
    // forked meanwhile (ETXTBSY) until that child execs: try again shortly.
    let mut tries = 0;
    let mut child = loop {
        match tokio::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(path)
            .env("VEER_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => break r.unwrap(),
        }
    };
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let log2 = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            // Logged first: whoever the announcement wakes may read the log at once.
            {
                let mut l = log2.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
            if line.starts_with("veer: proxy=") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });
    let line = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("veer did not start in time")
        .expect("veer exited before announcing");
    // veer: proxy=http://A[,…] admin=http://B
    let proxy = line
        .split("proxy=http://")
        .nth(1)
        .unwrap()
        .split([',', ' '])
        .next()
        .unwrap();
    let admin = line.split("admin=http://").nth(1).unwrap().trim();
    VeerProcess {
        child,
        addr: proxy.parse().unwrap(),
        admin: admin.parse().unwrap(),
        stderr: log,
    }
}

/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A headless Chromium (Debian's `chromium`, or `VEER_CHROMIUM`), as the status page tests use.
pub fn chromium_binary() -> PathBuf {
    if let Ok(p) = std::env::var("VEER_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            if dir.join(name).is_file() {
                return dir.join(name);
            }
        }
    }
    panic!(
        "this test needs a headless browser, and none was found on PATH: \
         install Debian's chromium (`apt-get install -y chromium`) or set VEER_CHROMIUM"
    );
}

/// The DOM of `url` after its scripts have had `budget_ms` of virtual time (Chromium's
/// `--dump-dom`), for a page that renders what it fetched.
pub async fn rendered_dom(url: &str, budget_ms: u64) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(chromium_binary())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--dump-dom",
        ])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("chromium did not finish within 60 s")
        .expect("chromium runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file made unwritable for a test, even for root (tests run as root here): `chattr +i`
/// (immutable: no open for writing, no rename over it, whoever asks) where the filesystem
/// allows it, else mode 0444, which veer itself refuses to write. Undone on drop, so the
/// temp dir can be removed; declare it after the `Veer`/temp dir so it drops first.
pub struct Unwritable {
    pub path: PathBuf,
    /// `chattr +i` worked (else the mode is 0444).
    pub immutable: bool,
}

pub fn make_unwritable(path: &std::path::Path) -> Unwritable {
    use std::os::unix::fs::PermissionsExt;
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    Unwritable {
        path: path.to_path_buf(),
        immutable,
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.path)
                .status();
        }
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o644));
    }
}

/// Send `method path` to the admin API with a JSON body (empty: none).
pub async fn admin_call(admin: SocketAddr, method: &str, path: &str, body: &str) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    send(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

/// A response body as JSON.
pub fn json_of(g: &Got) -> serde_json::Value {
    serde_json::from_str(&g.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", g.body))
}

/// Byte mutations and a strict chunked reader for the property tests (the stable stand-in
/// for cargo-fuzz); the library's unit tests include the same file by path.
pub mod fuzz;

/// A file's lines (none when it does not exist yet).
pub fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Each line of `text` as one JSON value; a line that is not JSON fails the test, naming it.
pub fn json_values<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<serde_json::Value> {
    lines
        .into_iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A JSON-lines file (an access log) as its values.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    json_values(read_lines(path).iter().map(String::as_str))
}
