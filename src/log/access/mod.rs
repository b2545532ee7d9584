//! The access log (SPEC.md §8): one line per request, built by the request path as an
//! [`Entry`] only when the log is on, handed to a bounded queue without waiting, and
//! formatted and written by one writer thread. A full queue drops the line and counts it
//! (`veer_access_log_dropped_total`); a request never waits for the log. A file target is
//! reopened on [`AccessLog::reopen`] (SIGUSR1, after logrotate moved it).
//!
//! What a logged request costs is kept near nginx's: entries are recycled boxes (the
//! writer hands each one back, its text buffer kept), the request's strings are copied into
//! that one buffer (a reference to the request's header bytes would pin the connection's
//! read buffer until the line is written, so the connection could not reuse it), and lines
//! are formatted by hand straight into the writer's buffer, with the time formatted once a
//! second ([`format`]).

mod format;
pub use format::{combined_line, json_line, json_str, rfc3339};
use format::{combined_line_cached, json_line_cached, Cache};

use crate::config::{AccessFormat, AccessTarget, LogConfig};
use crossbeam_queue::ArrayQueue;
use http::{Method, Version};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer; past this they are dropped (and counted).
pub const QUEUE: usize = 8192;

/// Entries kept for reuse; more than this in flight are allocated (and freed) as usual.
const RECYCLED: usize = 1024;

/// An entry's text buffer larger than this is not kept for reuse.
const KEPT_TEXT: usize = 2048;

/// The request's strings an [`Entry`] carries, copied into its one text buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    RequestId = 0,
    Host = 1,
    /// Path and query, as received.
    Path = 2,
    UserAgent = 3,
    Referer = 4,
}

const TEXTS: usize = 5;
/// A text field not set.
const UNSET: (u32, u32) = (u32::MAX, 0);

/// One request, as the access log records it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    /// When the request began, by [`now`] (its `duration` runs from here).
    pub started: u64,
    pub client_ip: IpAddr,
    /// `None` for a request refused before its head was read (its path and protocol are
    /// then unknown too).
    pub method: Option<Method>,
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
    /// Why veer answered itself (`no_backend`, `timeout`, …), if it did.
    pub error: Option<&'static str>,
    text: Vec<u8>,
    spans: [(u32, u32); TEXTS],
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            time: UNIX_EPOCH,
            started: now(),
            client_ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            method: Some(Method::GET),
            version: Version::HTTP_11,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            upstream: None,
            route: None,
            pool: None,
            backend: None,
            attempts: 0,
            tls: None,
            error: None,
            text: Vec::new(),
            spans: [UNSET; TEXTS],
        }
    }
}

impl Entry {
    /// Set a text field (a copy of `v`; `None` logs as null or `-`). Each field once.
    pub fn set_text(&mut self, field: Text, v: Option<&[u8]>) {
        self.spans[field as usize] = match v {
            None => UNSET,
            Some(v) => {
                let start = self.text.len();
                self.text.extend_from_slice(v);
                (start as u32, self.text.len() as u32)
            }
        };
    }

    /// A text field, if set.
    pub fn text(&self, field: Text) -> Option<&[u8]> {
        let (s, e) = self.spans[field as usize];
        self.text.get(s as usize..e as usize)
    }

    /// Ready for the next request: the names it shares are let go, its buffer kept.
    fn clear(&mut self) {
        self.route = None;
        self.pool = None;
        self.backend = None;
        self.tls = None;
        self.error = None;
        self.upstream = None;
        self.attempts = 0;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.status = 0;
        self.text.clear();
        self.spans = [UNSET; TEXTS];
    }
}

/// What the request path and the writer share: the queue of lines, and how the writer is
/// woken. The queue is a lock-free ring (crossbeam's `ArrayQueue`, ~40 instructions a push
/// and a pop where tokio's mpsc cost ~250 a line with its semaphore); the writer is woken
/// only when it sleeps with nothing to do, so a busy proxy's requests push without a syscall.
struct Shared {
    queue: ArrayQueue<Box<Entry>>,
    /// The writer is parked, or about to be: whoever pushes next unparks it.
    parked: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
    /// Someone waits in [`AccessLog::flush`] (their answers are in `flushed`).
    flush: AtomicBool,
    flushed: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// SIGUSR1 asked for the file to be reopened.
    reopen: AtomicBool,
    /// The log's handle is gone: write out what is queued and end.
    closed: AtomicBool,
}

impl Shared {
    /// Wake the writer if it sleeps. The fence orders the caller's push (or flag) before the
    /// look at `parked`, as the writer's own fence orders `parked` before its last look at
    /// the queue: one of the two sees the other.
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            if let Some(t) = self.writer.get() {
                t.unpark();
            }
        }
    }
}

/// The request path's handle on the access log.
pub struct AccessLog {
    shared: Arc<Shared>,
    sample: f64,
    dropped: prometheus::IntCounter,
    free: Arc<ArrayQueue<Box<Entry>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake();
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
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(queue.max(1)),
            parked: AtomicBool::new(false),
            writer: OnceLock::new(),
            flush: AtomicBool::new(false),
            flushed: Mutex::new(Vec::new()),
            reopen: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let free = Arc::new(ArrayQueue::new(RECYCLED));
        let writer = Writer {
            shared: shared.clone(),
            sink,
            out,
            buf: Vec::with_capacity(BUFFER),
            format: config.access_format,
            free: free.clone(),
            clock: (0, 0),
            cache: Cache::default(),
        };
        let thread = std::thread::Builder::new()
            .name("veer-access-log".into())
            .spawn(move || writer.run())?;
        let _ = shared.writer.set(thread.thread().clone());
        Ok(Some(AccessLog {
            shared,
            sample: config.access_sample,
            dropped,
            free,
        }))
    }

    /// An empty entry for a request: a recycled one when there is one.
    pub fn entry(&self) -> Box<Entry> {
        self.free.pop().unwrap_or_default()
    }

    /// Whether a request with this answer is logged: every 5xx and every answer veer gave
    /// itself for an error, the rest at `access_sample`.
    pub fn keeps(&self, status: u16, error: bool) -> bool {
        status >= 500 || error || self.sample >= 1.0 || rand::random::<f64>() < self.sample
    }

    /// Queue a line without waiting: a full queue drops it and counts it.
    pub fn submit(&self, e: Box<Entry>) {
        match self.shared.queue.push(e) {
            Ok(()) => self.shared.wake(),
            Err(e) => {
                self.dropped.inc();
                self.recycle(e);
            }
        }
    }

    /// An entry not written (sampled out, dropped) goes back for reuse.
    pub fn recycle(&self, e: Box<Entry>) {
        recycle(&self.free, e);
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Reopen a file target before the next line (SIGUSR1).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.shared.wake();
    }

    /// Wait (up to `limit`) until every line queued before this call is written.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared
            .flushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        self.shared.flush.store(true, Ordering::Release);
        self.shared.wake();
        let _ = tokio::time::timeout(limit, rx).await;
    }
}

fn recycle(free: &ArrayQueue<Box<Entry>>, mut e: Box<Entry>) {
    if e.text.capacity() <= KEPT_TEXT {
        e.clear();
        let _ = free.push(e);
    }
}

/// How long a written line may wait in the buffer for more. Writing (and waking the writer)
/// once per batch instead of once per line is most of what the log costs: nginx's
/// `access_log … buffer= flush=` for the same reason.
const FLUSH_EVERY: Duration = Duration::from_millis(25);

/// The writer's buffer: lines are formatted into it, and it is written out when it holds
/// this much (or [`FLUSH_EVERY`] after its first line).
const BUFFER: usize = 64 * 1024;

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    sink: Sink,
    out: Box<dyn Write + Send>,
    /// Formatted lines not written yet.
    buf: Vec<u8>,
    format: AccessFormat,
    free: Arc<ArrayQueue<Box<Entry>>>,
    /// The wall clock and the monotonic one ([`now`]) read together, once a batch, in
    /// nanoseconds: a line's time is its request's start placed on the wall clock, so the
    /// request path reads one clock, not two.
    clock: (u64, u64),
    cache: Cache,
}

impl Writer {
    /// Lines are formatted into one buffer and written at most every [`FLUSH_EVERY`] (or
    /// when the buffer fills, or when someone waits for a flush). While lines are buffered
    /// the thread naps instead of sleeping until woken, so a busy proxy's requests enqueue
    /// without waking it.
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut first = Instant::now();
        loop {
            // Answers taken before the queue is drained: every line queued before a flush
            // was asked for is written before it is answered.
            let waiting = if shared.flush.swap(false, Ordering::AcqRel) {
                std::mem::take(&mut *shared.flushed.lock().unwrap_or_else(|p| p.into_inner()))
            } else {
                Vec::new()
            };
            while let Some(e) = shared.queue.pop() {
                if self.buf.is_empty() {
                    // The first line of a batch starts its wait.
                    first = Instant::now();
                    self.clock = (wall_now(), now());
                }
                self.line(e);
            }
            let closed = shared.closed.load(Ordering::Acquire);
            if !waiting.is_empty() || shared.reopen.load(Ordering::Acquire) || closed {
                self.flush();
                for w in waiting {
                    let _ = w.send(());
                }
                if closed && shared.queue.is_empty() {
                    break;
                }
                continue;
            }
            if !self.buf.is_empty() {
                let due = first + FLUSH_EVERY;
                let now = Instant::now();
                if now < due {
                    std::thread::park_timeout(due - now);
                } else {
                    self.flush();
                }
                continue;
            }
            // Nothing to do: sleep until a request (or a flush, a reopen, the end) wakes us.
            shared.parked.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if shared.queue.is_empty()
                && !shared.flush.load(Ordering::Acquire)
                && !shared.reopen.load(Ordering::Acquire)
                && !shared.closed.load(Ordering::Acquire)
            {
                std::thread::park();
            }
            shared.parked.store(false, Ordering::SeqCst);
        }
    }

    fn line(&mut self, e: Box<Entry>) {
        let ms = wall(self.clock, e.started) / 1_000_000;
        match self.format {
            AccessFormat::Json => json_line_cached(&e, ms, &mut self.buf, &mut self.cache),
            AccessFormat::Combined => combined_line_cached(&e, ms, &mut self.buf, &mut self.cache),
        }
        self.buf.push(b'\n');
        recycle(&self.free, e);
        if self.buf.len() >= BUFFER {
            self.write();
        }
    }

    fn write(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Err(e) = self.out.write_all(&self.buf) {
            tracing::warn!(error = %e, "access log write failed");
        }
        self.buf.clear();
    }

    /// Write what is buffered; then reopen the file when SIGUSR1 asked for it.
    fn flush(&mut self) {
        self.write();
        if let Err(e) = self.out.flush() {
            tracing::warn!(error = %e, "access log write failed");
        }
        if self.shared.reopen.swap(false, Ordering::AcqRel) {
            if let Sink::File(p) = &self.sink {
                match self.sink.open() {
                    Ok(f) => {
                        self.out = f;
                        tracing::info!(file = %p.display(), "access log reopened");
                    }
                    Err(e) => {
                        tracing::warn!(file = %p.display(), error = %e, "cannot reopen the access log; still writing to the old file")
                    }
                }
            }
        }
    }
}

/// `at` (by [`now`]) on the wall clock, in nanoseconds since 1970, by its distance from
/// `clock`'s pair of readings.
fn wall((sys, mono): (u64, u64), at: u64) -> u64 {
    sys.saturating_sub(mono.saturating_sub(at)) + at.saturating_sub(mono)
}

/// The monotonic clock (`CLOCK_MONOTONIC`, as `Instant` reads it), in nanoseconds: a plain
/// number, so that a request's duration and the writer's placing of it on the wall clock
/// are a subtraction each (`Instant`'s cost ~90 instructions apiece).
pub fn now() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(t.tv_nsec() as u64),
        Err(_) => 0,
    }
}

/// The wall clock in nanoseconds since 1970 (0 before it).
fn wall_now() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(super) fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

#[cfg(test)]
mod tests {
    use super::format::*;
    use super::*;
    use proptest::prelude::*;

    fn entry() -> Entry {
        let mut e = Entry {
            // 2026-12-01T11:50:26.250Z
            time: UNIX_EPOCH + Duration::from_millis(1_796_125_826_250),
            client_ip: "10.0.0.7".parse().unwrap(),
            method: Some(Method::GET),
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
            error: Some("no_backend"),
            ..Entry::default()
        };
        e.set_text(Text::RequestId, Some(b"abc123"));
        e.set_text(Text::Host, Some(b"app.example"));
        e.set_text(Text::Path, Some(b"/a?b=1"));
        e.set_text(Text::UserAgent, Some(b"curl/8 \"x\""));
        e.set_text(Text::Referer, None);
        e
    }

    fn clf_time(t: SystemTime) -> String {
        let mut out = Vec::new();
        clf_time_into(&mut out, t);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn times_are_utc_rfc3339_and_clf() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_125_826_250);
        assert_eq!(rfc3339(t), "2026-12-01T11:50:26.250Z");
        assert_eq!(clf_time(t), "01/Dec/2026:11:50:26 +0000");
        // The same second again (from the cache), another millisecond.
        assert_eq!(
            rfc3339(t + Duration::from_millis(7)),
            "2026-12-01T11:50:26.257Z"
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400) + Duration::from_millis(999);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.999Z");
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
        assert_eq!(out, reference::json(&entry()));
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

    /// Quotes, backslashes, control bytes, DEL, UTF-8 and bytes that are not UTF-8, in every
    /// text field, in both formats.
    #[test]
    fn hostile_bytes_are_escaped_in_both_formats() {
        let nasty: &[u8] = b"a\"b\\c\nd\re\tf\x00g\x1fh\x7fi\xc3\xa9j\xffk\xc3";
        let mut e = Entry {
            upstream: Some(Duration::from_micros(2000)),
            ..entry()
        };
        e.text.clear();
        for f in [
            Text::RequestId,
            Text::Host,
            Text::Path,
            Text::UserAgent,
            Text::Referer,
        ] {
            e.set_text(f, Some(nasty));
        }
        let mut json = Vec::new();
        json_line(&e, &mut json);
        assert_eq!(json, reference::json(&e));
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let lossy = String::from_utf8_lossy(nasty);
        for k in ["request_id", "host", "path", "user_agent", "referer"] {
            assert_eq!(v[k], *lossy, "{k}");
        }
        let text = String::from_utf8(json).unwrap();
        assert!(
            text.contains(r#""path":"a\"b\\c\nd\re\tf\u0000g\u001fh"#),
            "{text}"
        );
        assert_eq!(v["upstream_ms"], 2.0);
        assert!(text.contains(r#""upstream_ms":2.0,"#), "{text}");

        let mut clf = Vec::new();
        combined_line(&e, &mut clf);
        assert_eq!(clf, reference::combined(&e));
        // Nothing but visible ASCII: no field can end early or forge a line.
        assert!(clf.iter().all(|b| (0x20..0x7f).contains(b)), "{clf:?}");
        let clf = String::from_utf8(clf).unwrap();
        let esc = r"a\x22b\x5Cc\x0Ad\x0De\x09f\x00g\x1Fh\x7Fi\xC3\xA9j\xFFk\xC3";
        assert!(clf.contains(&format!("\"GET {esc} HTTP/1.1\"")), "{clf}");
        assert!(
            clf.contains(&format!(" request_id={esc} host={esc} ")),
            "{clf}"
        );
        assert!(clf.contains(" upstream_ms=2 "), "{clf}");
    }

    #[test]
    fn milliseconds_print_as_ryu_and_display_do() {
        for micros in [
            0u64,
            1,
            10,
            100,
            999,
            1000,
            1001,
            1500,
            12_340,
            2_000_000,
            86_400_000_123,
        ] {
            let d = Duration::from_micros(micros);
            let f = micros as f64 / 1000.0;
            let (mut j, mut c) = (Vec::new(), Vec::new());
            millis(&mut j, d, true);
            millis(&mut c, d, false);
            assert_eq!(
                String::from_utf8(j).unwrap(),
                serde_json::to_string(&f).unwrap()
            );
            assert_eq!(String::from_utf8(c).unwrap(), f.to_string());
        }
    }

    /// The formats as they were written with serde_json and `format!`: the hand-written
    /// ones must give the same bytes.
    mod reference {
        use super::super::format::*;
        use super::super::*;
        use std::fmt::Write as _;

        fn lossy(v: Option<&[u8]>) -> Option<String> {
            v.map(|v| String::from_utf8_lossy(v).into_owned())
        }

        fn ms(d: Duration) -> f64 {
            (d.as_micros() as f64) / 1000.0
        }

        #[derive(serde::Serialize)]
        struct JsonLine<'a> {
            time: &'a str,
            request_id: &'a str,
            client_ip: IpAddr,
            method: Option<&'a str>,
            host: Option<&'a str>,
            path: Option<String>,
            protocol: Option<&'a str>,
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

        pub fn json(e: &Entry) -> Vec<u8> {
            let host = lossy(e.text(Text::Host));
            let ua = lossy(e.text(Text::UserAgent));
            let referer = lossy(e.text(Text::Referer));
            let line = JsonLine {
                time: &rfc3339_plain(e.time),
                request_id: &lossy(Some(e.text(Text::RequestId).unwrap_or_default())).unwrap(),
                client_ip: e.client_ip,
                method: e.method.as_ref().map(Method::as_str),
                host: host.as_deref(),
                path: e
                    .method
                    .as_ref()
                    .and_then(|_| lossy(Some(e.text(Text::Path).unwrap_or(b"/")))),
                protocol: e.method.as_ref().map(|_| protocol(e.version)),
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
            serde_json::to_vec(&line).unwrap()
        }

        /// The time formatted from nothing, each time.
        pub fn rfc3339_plain(t: SystemTime) -> String {
            let p = parts(t);
            let ms = t
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_millis();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}Z",
                p.y, p.mo, p.d, p.h, p.mi, p.s
            )
        }

        pub fn clf_plain_time(t: SystemTime) -> String {
            let p = parts(t);
            let month = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ][(p.mo - 1) as usize];
            format!(
                "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
                p.d, p.y, p.h, p.mi, p.s
            )
        }

        fn escape(s: &mut String, v: &[u8]) {
            for &b in v {
                if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                    let _ = write!(s, "\\x{b:02X}");
                } else {
                    s.push(b as char);
                }
            }
        }

        pub fn combined(e: &Entry) -> Vec<u8> {
            let mut s = String::new();
            let quoted = |s: &mut String, v: &[u8]| {
                s.push('"');
                escape(s, v);
                s.push('"');
            };
            let _ = write!(s, "{} - - [{}] \"", e.client_ip, clf_plain_time(e.time));
            match &e.method {
                None => s.push('-'),
                Some(m) => {
                    escape(&mut s, m.as_str().as_bytes());
                    s.push(' ');
                    escape(&mut s, e.text(Text::Path).unwrap_or(b"/"));
                    let _ = write!(s, " {}", protocol(e.version));
                }
            }
            let _ = write!(s, "\" {} {} ", e.status, e.bytes_out);
            quoted(&mut s, e.text(Text::Referer).unwrap_or(b"-"));
            s.push(' ');
            quoted(&mut s, e.text(Text::UserAgent).unwrap_or(b"-"));
            let field = |s: &mut String, k: &str, v: Option<&[u8]>| {
                let _ = write!(s, " {k}=");
                match v {
                    Some(v) if !v.is_empty() => escape(s, v),
                    _ => s.push('-'),
                }
            };
            field(&mut s, "request_id", e.text(Text::RequestId));
            field(&mut s, "host", e.text(Text::Host));
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
            s.into_bytes()
        }
    }

    /// Bytes weighted towards what needs escaping.
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => 0x20u8..0x7f,
            1 => Just(b'"'),
            1 => Just(b'\\'),
            1 => 0u8..0x20,
            1 => 0x7fu8..=0xff,
        ];
        prop_oneof![
            proptest::collection::vec(byte, 0..40),
            any::<String>().prop_map(String::into_bytes),
        ]
    }

    fn texts() -> impl Strategy<Value = Vec<Option<Vec<u8>>>> {
        proptest::collection::vec(proptest::option::of(bytes()), TEXTS)
    }

    fn names() -> impl Strategy<Value = Option<Arc<str>>> {
        proptest::option::of(any::<String>().prop_map(Arc::from))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Every line is the bytes the serde_json and `format!` versions wrote, and reads
        /// back (as JSON) to the fields' lossy UTF-8.
        #[test]
        fn lines_match_the_serde_and_format_versions(
            texts in texts(),
            secs in 0u64..8_000_000_000,
            nanos in 0u32..1_000_000_000,
            v4 in any::<u32>(),
            v6 in any::<u128>(),
            six in any::<bool>(),
            status in any::<u16>(),
            bytes_in in any::<u64>(),
            bytes_out in any::<u64>(),
            // Microsecond durations up to about a year: beyond that the shortest decimal
            // of micros / 1000.0 need not have three places.
            duration in 0u64..(1 << 45),
            upstream in proptest::option::of(0u64..(1 << 45)),
            (route, pool, backend, tls) in (names(), names(), names(), names()),
            attempts in any::<u32>(),
            error in proptest::option::of(prop_oneof![Just("no_backend"), Just("bad_request")]),
            refused in proptest::bool::weighted(0.1),
        ) {
            let mut e = Entry {
                time: UNIX_EPOCH + Duration::new(secs, nanos),
                client_ip: if six {
                    IpAddr::from(std::net::Ipv6Addr::from(v6))
                } else {
                    IpAddr::from(std::net::Ipv4Addr::from(v4))
                },
                method: if refused { None } else { Some(Method::POST) },
                version: Version::HTTP_2,
                status,
                bytes_in,
                bytes_out,
                duration: Duration::from_micros(duration),
                upstream: upstream.map(Duration::from_micros),
                route,
                pool,
                backend,
                attempts,
                tls,
                error,
                ..Entry::default()
            };
            let fields = [Text::RequestId, Text::Host, Text::Path, Text::UserAgent, Text::Referer];
            for (f, t) in fields.into_iter().zip(&texts) {
                e.set_text(f, t.as_deref());
            }
            let mut json = Vec::new();
            json_line(&e, &mut json);
            let want = reference::json(&e);
            prop_assert_eq!(String::from_utf8_lossy(&json), String::from_utf8_lossy(&want));
            prop_assert_eq!(&json, &want);
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            for (f, k) in fields.into_iter().zip(["request_id", "host", "path", "user_agent", "referer"]) {
                match e.text(f) {
                    Some(_) if refused && k == "path" => prop_assert!(v[k].is_null()),
                    Some(t) => prop_assert_eq!(v[k].as_str().unwrap(), String::from_utf8_lossy(t)),
                    None => {}
                }
            }
            let mut clf = Vec::new();
            combined_line(&e, &mut clf);
            let want = reference::combined(&e);
            prop_assert_eq!(String::from_utf8_lossy(&clf), String::from_utf8_lossy(&want));
            prop_assert_eq!(&clf, &want);
        }

        /// The writer's way (one cache for a run of lines, times moving on by a few
        /// milliseconds or across seconds and days, the request's strings plain or not,
        /// line by line) gives the straightforward versions' bytes, line after line.
        #[test]
        fn a_run_of_cached_lines_matches_the_serde_and_format_versions(
            start in 0u64..8_000_000_000_000,
            run in proptest::collection::vec(
                (
                    prop_oneof![3 => 0u64..3, 1 => 0u64..2_000, 1 => 0u64..200_000_000],
                    texts(),
                    0usize..4,
                    proptest::bool::weighted(0.1),
                ),
                1..20,
            ),
        ) {
            let (mut jc, mut cc) = (Cache::default(), Cache::default());
            let mut at = start;
            for (step, texts, version, refused) in run {
                at += step;
                let mut e = Entry {
                    time: UNIX_EPOCH + Duration::from_millis(at),
                    method: if refused { None } else { Some(Method::GET) },
                    version: [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2, Version::HTTP_09][version],
                    status: 200,
                    route: Some("web".into()),
                    ..Entry::default()
                };
                let fields = [Text::RequestId, Text::Host, Text::Path, Text::UserAgent, Text::Referer];
                for (f, t) in fields.into_iter().zip(&texts) {
                    e.set_text(f, t.as_deref());
                }
                let (mut j, mut c) = (Vec::new(), Vec::new());
                json_line_cached(&e, at, &mut j, &mut jc);
                combined_line_cached(&e, at, &mut c, &mut cc);
                let (wj, wc) = (reference::json(&e), reference::combined(&e));
                prop_assert_eq!(String::from_utf8_lossy(&j), String::from_utf8_lossy(&wj));
                prop_assert_eq!(String::from_utf8_lossy(&c), String::from_utf8_lossy(&wc));
                prop_assert_eq!(j, wj);
                prop_assert_eq!(c, wc);
            }
        }

        /// The word-at-a-time scans that let the request's strings be copied as they are
        /// say what a look at each byte says (bytes to escape anywhere: first, last, inside
        /// the overlapping last word).
        #[test]
        fn plain_scans_agree_with_each_byte(s in bytes(), at in any::<proptest::sample::Index>(), b in any::<u8>()) {
            let mut s = s;
            if !s.is_empty() {
                let i = at.index(s.len());
                s[i] = b;
            }
            let json = s.iter().all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\');
            let clf = s.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
            prop_assert_eq!(json_all_plain(&s), json, "{:?}", s);
            prop_assert_eq!(clf_plain(&s), clf, "{:?}", s);
        }

        /// The escaper alone, against serde_json's writer and reader.
        #[test]
        fn json_strings_are_serde_json_strings(s in bytes()) {
            let mut out = Vec::new();
            json_str(&mut out, &s);
            let lossy = String::from_utf8_lossy(&s);
            prop_assert_eq!(&out, &serde_json::to_vec(&lossy).unwrap());
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, lossy);
        }
    }

    /// The writer's cache of escaped names gives the bytes escaping each time gives, for a
    /// name seen again and for names that change line by line (more than it holds).
    #[test]
    fn names_escaped_once_are_the_same_bytes() {
        let (mut jc, mut cc) = (Cache::default(), Cache::default());
        let mut e = entry();
        e.backend = Some("b\"1\\é".into());
        e.tls = Some("sni.example".into());
        for i in 0..12 {
            if i >= 3 {
                e.pool = Some(format!("pool-{i}\n").into());
            }
            let (mut j, mut c) = (Vec::new(), Vec::new());
            json_line_cached(&e, unix_ms(e.time), &mut j, &mut jc);
            combined_line_cached(&e, unix_ms(e.time), &mut c, &mut cc);
            assert_eq!(j, reference::json(&e));
            assert_eq!(c, reference::combined(&e));
        }
    }

    /// The time strings made once a second, at the edges: the last millisecond of a second,
    /// a day, a year, a century's leap day, and years past four digits.
    #[test]
    fn cached_times_at_second_day_and_year_boundaries() {
        let mut t = Times::default();
        let mut ms = |v: u64| {
            let mut out = Vec::new();
            t.rfc3339(&mut out, v);
            String::from_utf8(out).unwrap()
        };
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (999, "1970-01-01T00:00:00.999Z"),
            (1000, "1970-01-01T00:00:01.000Z"),
            (86_399_999, "1970-01-01T23:59:59.999Z"),
            (86_400_000, "1970-01-02T00:00:00.000Z"),
            (946_684_799_999, "1999-12-31T23:59:59.999Z"),
            (946_684_800_000, "2000-01-01T00:00:00.000Z"),
            (951_782_400_001, "2000-02-29T00:00:00.001Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
            (253_402_300_800_000, "10000-01-01T00:00:00.000Z"),
            (253_402_300_800_042, "10000-01-01T00:00:00.042Z"),
            (1_796_125_826_250, "2026-12-01T11:50:26.250Z"),
        ];
        for (v, want) in cases {
            assert_eq!(ms(v), want, "{v}");
            // And again, from the cache.
            assert_eq!(ms(v), want, "{v}");
        }
        let mut out = Vec::new();
        t.clf(&mut out, 253_402_300_800);
        assert_eq!(out, b"01/Jan/10000:00:00:00 +0000");
    }

    #[test]
    fn a_start_instant_is_placed_on_the_wall_clock() {
        let mono = now();
        let sys = 1_000_000_000_000;
        let ms = 1_000_000;
        assert_eq!(wall((sys, mono), mono), sys);
        assert_eq!(wall((sys, mono + 5 * ms), mono), sys - 5 * ms);
        assert_eq!(wall((sys, mono), mono + 7 * ms), sys + 7 * ms);
        // Never before 1970.
        assert_eq!(wall((ms, mono + 5 * ms), mono), 0);
        // The clock runs forward.
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() - a >= 2 * ms);
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
