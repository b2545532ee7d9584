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
    pub fn rt(&self) -> &Arc<veer::runtime::Runtime> {
        &self.running.as_ref().unwrap().rt
    }
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
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

async fn start_with(dir: tempfile::TempDir, path: PathBuf, config: veer::config::Config) -> Veer {
    let running = veer::app::start(config, Some(path.clone()))
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
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(veer_bin())
        .args(["run", "--config"])
        .arg(path)
        .env("VEER_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let log2 = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("veer: proxy=") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line.clone());
                }
            }
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
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

// ---------------------------------------------------------------- shared by tests/hostile_routing.rs

/// The value of the /metrics sample `name` whose labels include every one of `labels`
/// (like `route="web"`).
pub fn metric_sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
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
    panic!("this test needs a headless browser: install Debian's chromium or set VEER_CHROMIUM");
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

// ---------------------------------------------------------------------------------------------
// Hostile request bodies (tests/hostile_bodies.rs): an upstream that records what it received
// of each request, raw HTTP/1.1 responses, and HTTP/2 clients (h2c and over TLS).

/// What a [`Recorder`] saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub head: String,
    /// The body as decoded so far (chunked framing removed).
    pub body: Vec<u8>,
    /// The body arrived whole, as its framing said; false for a request cut off.
    pub complete: bool,
}

/// A raw HTTP/1.1 upstream that records each request it reads (head, body, whether the body
/// was complete) and its connections, and answers `got N` (N body bytes) to each complete one.
pub struct Recorder {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    stop: CancellationToken,
}

impl Recorder {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    /// Every request seen so far, in the order their heads arrived.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Start a [`Recorder`].
pub async fn recorder() -> Recorder {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let (a, o, s, st) = (accepted.clone(), open.clone(), seen.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = l.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                _ = st.cancelled() => return,
            };
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(o.clone());
            let (seen, st) = (s.clone(), st.clone());
            tokio::spawn(async move {
                let _guard = guard;
                tokio::select! {
                    _ = record_conn(stream, seen) => {}
                    _ = st.cancelled() => {}
                }
            });
        }
    });
    Recorder {
        addr,
        accepted,
        open,
        seen,
        stop,
    }
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of a header in a lower-cased head, if present.
pub fn header_value<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim())
}

async fn fill(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn record_conn(mut s: tokio::net::TcpStream, seen: Arc<std::sync::Mutex<Vec<Seen>>>) {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find_bytes(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut s, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let idx = {
            let mut v = seen.lock().unwrap();
            v.push(Seen {
                head: head.clone(),
                body: Vec::new(),
                complete: false,
            });
            v.len() - 1
        };
        let add = |data: &[u8]| seen.lock().unwrap()[idx].body.extend_from_slice(data);
        let lower = head.to_ascii_lowercase();
        let whole =
            if header_value(&lower, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                read_chunked(&mut s, &mut buf, &add).await
            } else if let Some(n) = header_value(&lower, "content-length") {
                let Ok(n) = n.parse::<usize>() else { return };
                loop {
                    if buf.len() >= n {
                        add(&buf[..n]);
                        buf.drain(..n);
                        break true;
                    }
                    if !fill(&mut s, &mut buf).await {
                        add(&buf);
                        break false;
                    }
                }
            } else {
                true
            };
        if !whole {
            return; // cut off: nothing to answer
        }
        let n = {
            let mut v = seen.lock().unwrap();
            v[idx].complete = true;
            v[idx].body.len()
        };
        let text = format!("got {n}");
        let resp = if lower.starts_with("head ") {
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", text.len())
        } else {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Decode a chunked body into `add`; false if it is cut off or malformed.
async fn read_chunked(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    add: &impl Fn(&[u8]),
) -> bool {
    loop {
        let line_end = loop {
            if let Some(i) = find_bytes(buf, b"\r\n") {
                break i;
            }
            if !fill(s, buf).await {
                return false;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
        else {
            return false;
        };
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let end = loop {
                    if let Some(i) = find_bytes(buf, b"\r\n") {
                        break i;
                    }
                    if !fill(s, buf).await {
                        return false;
                    }
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return true;
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(s, buf).await {
                add(&buf[..buf.len().min(size)]);
                return false;
            }
        }
        add(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return false;
        }
        buf.drain(..size + 2);
    }
}

/// One HTTP/1.1 response read off a raw stream: status, head, body (Content-Length or
/// chunked). `None` if the peer closed before a whole one.
pub async fn read_http_response(s: &mut tokio::net::TcpStream) -> Option<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find_bytes(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(s, &mut buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let lower = head.to_ascii_lowercase();
    let body = if header_value(&lower, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while find_bytes(&buf[head_end..], b"0\r\n\r\n").is_none() {
            if !fill(s, &mut buf).await {
                return None;
            }
        }
        buf[head_end..].to_vec()
    } else {
        let want: usize = header_value(&lower, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() - head_end < want {
            if !fill(s, &mut buf).await {
                return None;
            }
        }
        buf[head_end..head_end + want].to_vec()
    };
    Some((status, head, body))
}

/// An HTTP/2 client with prior knowledge over plain TCP (h2c).
pub async fn h2c_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A CA-signed certificate for `name` written as `cert.pem` and `key.pem` into `dir`, and
/// the roots a client needs to trust it.
pub fn write_test_cert(dir: &std::path::Path, name: &str) -> rustls::RootCertStore {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    roots
}

/// An HTTP/2 client over TLS (ALPN h2) to `addr`, trusting `roots`, asking for `name`.
pub async fn h2_tls_client(
    addr: SocketAddr,
    name: &str,
    roots: rustls::RootCertStore,
) -> h2::client::SendRequest<Bytes> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// The value of a Prometheus sample (`name{labels}` exactly as exported), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(k, _)| *k == series))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
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
