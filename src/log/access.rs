//! The access log (SPEC.md §8): one line per request, built by the request path as an
//! [`Entry`] only when the log is on, handed to a bounded queue without waiting, and
//! formatted and written by one writer thread through a buffered writer. A full queue drops
//! the line and counts it (`veer_access_log_dropped_total`); a request never waits for the
//! log. A file target is reopened on [`AccessLog::reopen`] (SIGUSR1, after logrotate moved
//! it).

use crate::config::{AccessFormat, AccessTarget, LogConfig};
use http::{HeaderValue, Method, Version};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Lines waiting for the writer; past this they are dropped (and counted).
pub const QUEUE: usize = 8192;

/// One request, as the access log records it. Strings are the request's own header values
/// (shared bytes, nothing copied); the writer formats them.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub method: Method,
    pub host: Option<HeaderValue>,
    /// Path and query, as forwarded.
    pub path: String,
    pub version: Version,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    /// To the response headers of the last attempt.
    pub upstream: Option<Duration>,
    pub route: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub attempts: u32,
    /// The SNI name of a TLS connection (`Some("")` for TLS without SNI).
    pub tls: Option<Arc<str>>,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    /// Why veer answered itself (`no_backend`, `timeout`, …), if it did.
    pub error: Option<&'static str>,
}

enum Msg {
    Line(Box<Entry>),
    /// Write out everything before this, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The request path's handle on the access log.
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
    sample: f64,
    dropped: prometheus::IntCounter,
    reopen: Arc<AtomicBool>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

/// Where lines are written, and how to open it again.
enum Sink {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Sink {
    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Sink::Stdout => Box::new(io::stdout()),
            Sink::Stderr => Box::new(io::stderr()),
            Sink::File(p) => Box::new(open_append(p)?),
        })
    }
}

fn open_append(p: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

impl AccessLog {
    /// Open the target and start the writer thread; `None` when the log is off. A file that
    /// cannot be opened is an error at start, not a silent loss later.
    pub fn start(
        config: &LogConfig,
        dropped: prometheus::IntCounter,
    ) -> io::Result<Option<AccessLog>> {
        Self::start_with_queue(config, dropped, QUEUE)
    }

    /// [`AccessLog::start`] with a queue of `queue` lines (tests use a small one).
    pub fn start_with_queue(
        config: &LogConfig,
        dropped: prometheus::IntCounter,
        queue: usize,
    ) -> io::Result<Option<AccessLog>> {
        let sink = match &config.access {
            AccessTarget::Off => return Ok(None),
            AccessTarget::Stdout => Sink::Stdout,
            AccessTarget::Stderr => Sink::Stderr,
            AccessTarget::File(p) => Sink::File(p.clone()),
        };
        let out = sink.open().map_err(|e| match &sink {
            Sink::File(p) => io::Error::new(
                e.kind(),
                format!("cannot open the access log {}: {e}", p.display()),
            ),
            _ => e,
        })?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let reopen = Arc::new(AtomicBool::new(false));
        let format = config.access_format;
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("veer-access-log".into())
            .spawn(move || write_loop(rx, sink, out, format, flag))?;
        Ok(Some(AccessLog {
            tx,
            sample: config.access_sample,
            dropped,
            reopen,
        }))
    }

    /// Whether a request with this answer is logged: every 5xx and every answer veer gave
    /// itself for an error, the rest at `access_sample`.
    pub fn keeps(&self, status: u16, error: bool) -> bool {
        status >= 500 || error || self.sample >= 1.0 || rand::random::<f64>() < self.sample
    }

    /// Queue a line without waiting: a full queue drops it and counts it.
    pub fn submit(&self, e: Box<Entry>) {
        if self.tx.try_send(Msg::Line(e)).is_err() {
            self.dropped.inc();
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Reopen a file target before the next line (SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // Wake a writer waiting on an empty queue; a full queue means it is awake anyway.
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.try_send(Msg::Flush(tx));
    }

    /// Wait (up to `limit`) until every line queued before this call is written.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = async {
            if self.tx.send(Msg::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        let _ = tokio::time::timeout(limit, done).await;
    }
}

/// How long a written line may wait in the buffer for more. Writing (and waking the writer)
/// once per batch instead of once per line is most of what the log costs: nginx's
/// `access_log … buffer= flush=` for the same reason.
const FLUSH_EVERY: Duration = Duration::from_millis(25);

/// The writer thread: lines are formatted into one buffer and written at most every
/// [`FLUSH_EVERY`] (or when the buffer fills, or when someone waits for a flush). While lines
/// are buffered the thread naps instead of waiting on the queue, so a busy proxy's requests
/// enqueue without waking it.
fn write_loop(
    mut rx: mpsc::Receiver<Msg>,
    sink: Sink,
    out: Box<dyn Write + Send>,
    format: AccessFormat,
    reopen: Arc<AtomicBool>,
) {
    use tokio::sync::mpsc::error::TryRecvError;
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(1024);
    let mut written = std::time::Instant::now();
    loop {
        let msg = if out.buffer().is_empty() {
            match rx.blocking_recv() {
                Some(m) => m,
                None => break,
            }
        } else {
            match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let due = written + FLUSH_EVERY;
                    let now = std::time::Instant::now();
                    if now < due {
                        std::thread::sleep(due - now);
                        continue;
                    }
                    flush(&mut out, &sink, &reopen);
                    written = std::time::Instant::now();
                    continue;
                }
            }
        };
        match msg {
            Msg::Line(e) => {
                if out.buffer().is_empty() {
                    // The first line of a batch starts its wait.
                    written = std::time::Instant::now();
                }
                line.clear();
                match format {
                    AccessFormat::Json => json_line(&e, &mut line),
                    AccessFormat::Combined => combined_line(&e, &mut line),
                }
                line.push(b'\n');
                if let Err(e) = out.write_all(&line) {
                    tracing::warn!(error = %e, "access log write failed");
                }
            }
            Msg::Flush(done) => {
                flush(&mut out, &sink, &reopen);
                let _ = done.send(());
            }
        }
    }
    let _ = out.flush();
}

/// Write what is buffered; then reopen the file when SIGUSR1 asked for it.
fn flush(out: &mut BufWriter<Box<dyn Write + Send>>, sink: &Sink, reopen: &AtomicBool) {
    if let Err(e) = out.flush() {
        tracing::warn!(error = %e, "access log write failed");
    }
    if reopen.swap(false, Ordering::AcqRel) {
        if let Sink::File(p) = sink {
            match sink.open() {
                Ok(f) => {
                    *out = BufWriter::with_capacity(64 * 1024, f);
                    tracing::info!(file = %p.display(), "access log reopened");
                }
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "cannot reopen the access log; still writing to the old file")
                }
            }
        }
    }
}

fn lossy(v: &HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

fn ms(d: Duration) -> f64 {
    // Microsecond precision is plenty and keeps lines short.
    (d.as_micros() as f64) / 1000.0
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    request_id: &'a str,
    client_ip: IpAddr,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    protocol: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    route: Option<&'a str>,
    pool: Option<&'a str>,
    backend: Option<&'a str>,
    attempts: u32,
    tls: Option<&'a str>,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
    error: Option<&'a str>,
}

/// One JSON object with every field of SPEC.md §8.
pub fn json_line(e: &Entry, out: &mut Vec<u8>) {
    let time = rfc3339(e.time);
    let host = e.host.as_ref().map(lossy);
    let ua = e.user_agent.as_ref().map(lossy);
    let referer = e.referer.as_ref().map(lossy);
    let line = JsonLine {
        time: &time,
        request_id: &lossy(&e.request_id),
        client_ip: e.client_ip,
        method: e.method.as_str(),
        host: host.as_deref(),
        path: &e.path,
        protocol: protocol(e.version),
        status: e.status,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        duration_ms: ms(e.duration),
        upstream_ms: e.upstream.map(ms),
        route: e.route.as_deref(),
        pool: e.pool.as_deref(),
        backend: e.backend.as_deref(),
        attempts: e.attempts,
        tls: e.tls.as_deref(),
        user_agent: ua.as_deref(),
        referer: referer.as_deref(),
        error: e.error,
    };
    let _ = serde_json::to_writer(out, &line);
}

/// Apache/nginx combined (`IP - - [time] "request" status bytes "referer" "agent"`), so
/// goaccess and existing parsers read it, then veer's fields as `key=value` (`-` for none).
pub fn combined_line(e: &Entry, out: &mut Vec<u8>) {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(256);
    let quoted = |s: &mut String, v: &[u8]| {
        s.push('"');
        escape(s, v);
        s.push('"');
    };
    let _ = write!(s, "{} - - [{}] \"", e.client_ip, clf_time(e.time));
    escape(&mut s, e.method.as_str().as_bytes());
    s.push(' ');
    escape(&mut s, e.path.as_bytes());
    let _ = write!(
        s,
        " {}\" {} {} ",
        protocol(e.version),
        e.status,
        e.bytes_out
    );
    quoted(&mut s, e.referer.as_ref().map_or(b"-", |v| v.as_bytes()));
    s.push(' ');
    quoted(&mut s, e.user_agent.as_ref().map_or(b"-", |v| v.as_bytes()));
    let field = |s: &mut String, k: &str, v: Option<&[u8]>| {
        let _ = write!(s, " {k}=");
        match v {
            Some(v) if !v.is_empty() => escape(s, v),
            _ => s.push('-'),
        }
    };
    field(&mut s, "request_id", Some(e.request_id.as_bytes()));
    field(&mut s, "host", e.host.as_ref().map(|h| h.as_bytes()));
    field(&mut s, "route", e.route.as_deref().map(str::as_bytes));
    field(&mut s, "pool", e.pool.as_deref().map(str::as_bytes));
    field(&mut s, "backend", e.backend.as_deref().map(str::as_bytes));
    let _ = write!(
        s,
        " attempts={} bytes_in={} duration_ms={}",
        e.attempts,
        e.bytes_in,
        ms(e.duration)
    );
    match e.upstream {
        Some(u) => {
            let _ = write!(s, " upstream_ms={}", ms(u));
        }
        None => s.push_str(" upstream_ms=-"),
    }
    field(&mut s, "tls", e.tls.as_deref().map(str::as_bytes));
    field(&mut s, "error", e.error.map(str::as_bytes));
    out.extend_from_slice(s.as_bytes());
}

/// nginx's escaping: `"`, `\` and bytes outside visible ASCII as `\xHH`, so a field can
/// never end early or forge a line.
fn escape(s: &mut String, v: &[u8]) {
    use std::fmt::Write as _;
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(s, "\\x{b:02X}");
        } else {
            s.push(b as char);
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

struct Parts {
    y: i64,
    mo: u32,
    d: u32,
    h: u64,
    mi: u64,
    s: u64,
    millis: u32,
}

fn parts(t: SystemTime) -> Parts {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    Parts {
        y,
        mo,
        d,
        h: rem / 3600,
        mi: rem % 3600 / 60,
        s: rem % 60,
        millis: since.subsec_millis(),
    }
}

/// `2026-12-01T11:50:26.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let p = parts(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.y, p.mo, p.d, p.h, p.mi, p.s, p.millis
    )
}

/// `01/Dec/2026:11:50:26 +0000` (the common log format's time).
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(t);
    format!(
        "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
        p.d,
        MONTHS[(p.mo - 1) as usize],
        p.y,
        p.h,
        p.mi,
        p.s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            // 2026-12-01T11:50:26.250Z
            time: UNIX_EPOCH + Duration::from_millis(1_796_125_826_250),
            request_id: HeaderValue::from_static("abc123"),
            client_ip: "10.0.0.7".parse().unwrap(),
            method: Method::GET,
            host: Some(HeaderValue::from_static("app.example")),
            path: "/a?b=1".into(),
            version: Version::HTTP_11,
            status: 503,
            bytes_in: 0,
            bytes_out: 21,
            duration: Duration::from_micros(1500),
            upstream: None,
            route: Some("web".into()),
            pool: Some("blue".into()),
            backend: None,
            attempts: 0,
            tls: None,
            user_agent: Some(HeaderValue::from_static("curl/8 \"x\"")),
            referer: None,
            error: Some("no_backend"),
        }
    }

    #[test]
    fn times_are_utc_rfc3339_and_clf() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_125_826_250);
        assert_eq!(rfc3339(t), "2026-12-01T11:50:26.250Z");
        assert_eq!(clf_time(t), "01/Dec/2026:11:50:26 +0000");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_line_has_every_field() {
        let mut out = Vec::new();
        json_line(&entry(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for k in [
            "time",
            "request_id",
            "client_ip",
            "method",
            "host",
            "path",
            "protocol",
            "status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "upstream_ms",
            "route",
            "pool",
            "backend",
            "attempts",
            "tls",
            "user_agent",
            "referer",
            "error",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["status"], 503);
        assert_eq!(v["error"], "no_backend");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["backend"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "curl/8 \"x\"");
    }

    #[test]
    fn combined_line_is_clf_then_veer_fields() {
        let mut out = Vec::new();
        combined_line(&entry(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "10.0.0.7 - - [01/Dec/2026:11:50:26 +0000] \"GET /a?b=1 HTTP/1.1\" 503 21 \"-\" \
             \"curl/8 \\x22x\\x22\" request_id=abc123 host=app.example route=web pool=blue \
             backend=- attempts=0 bytes_in=0 duration_ms=1.5 upstream_ms=- tls=- error=no_backend"
        );
    }

    #[test]
    fn sampling_keeps_every_5xx_and_error() {
        let cfg = LogConfig {
            access: AccessTarget::Stderr,
            access_sample: 0.0,
            ..LogConfig::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _g = rt.enter();
        let log = AccessLog::start(&cfg, prometheus::IntCounter::new("d", "d").unwrap())
            .unwrap()
            .unwrap();
        for _ in 0..1000 {
            assert!(log.keeps(500, false));
            assert!(log.keeps(503, true));
            assert!(log.keeps(400, true));
            assert!(!log.keeps(200, false));
        }
    }
}
