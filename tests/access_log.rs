//! The access log (SPEC.md §8, issue 16): one line per request with the fields §8 names, as
//! JSON or combined, written off the request path; sampling that keeps every 5xx and every
//! answer veer gave itself; a full queue that drops and counts instead of blocking; SIGUSR1
//! reopening the file; request ids kept, made, forwarded and returned.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

fn log_section(extra: &str) -> String {
    format!("[log]\naccess = \"access.log\"\n{extra}\n")
}

/// Wait until the log file has `n` lines (a line is written when its answer has been sent).
async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let p = path.to_path_buf();
    eventually(
        &format!("{n} access log lines in {}", path.display()),
        Duration::from_secs(5),
        || read_lines(&p).len() >= n,
    )
    .await;
    read_lines(path)
}

fn log_path(veer: &Veer) -> PathBuf {
    veer.dir.path().join("access.log")
}

/// An upstream that records the X-Request-Id it got and answers 404 on /missing.
async fn recording_upstream() -> (Upstream, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let up = upstream_with(move |req| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(
                req.headers()
                    .get("x-request-id")
                    .map(|v| v.to_str().unwrap().to_string()),
            );
            if req.uri().path() == "/missing" {
                respond(404, "nope")
            } else {
                respond(200, "hello")
            }
        }
    })
    .await;
    (up, seen)
}

#[tokio::test]
async fn one_json_line_per_request_with_every_field() {
    let (up, _) = recording_upstream().await;
    let veer = start_veer(&format!(
        "{}[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        log_section(""),
        up.addr
    ))
    .await;
    let got = send(
        http::Request::get(veer.url("/hello?x=1"))
            .header("user-agent", "test-agent/1")
            .header("referer", "http://ref.example/")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(get(&veer.url("/missing")).await.status, 404);
    // veer answers itself: the only backend drained.
    assert!(veer
        .rt()
        .registry
        .set_draining("app", up.addr, true, Duration::from_secs(1)));
    assert_eq!(get(&veer.url("/x")).await.status, 503);
    wait_lines(&log_path(&veer), 3).await;
    let lines = json_lines(&log_path(&veer));
    assert_eq!(lines.len(), 3, "{lines:?}");
    let ok = &lines[0];
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
        assert!(ok.get(k).is_some(), "{k} missing: {ok}");
    }
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/hello?x=1");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["route"], "web");
    assert_eq!(ok["pool"], "app");
    assert_eq!(ok["backend"], up.addr.to_string());
    assert_eq!(ok["attempts"], 1);
    assert_eq!(ok["bytes_out"], 5);
    assert_eq!(ok["user_agent"], "test-agent/1");
    assert_eq!(ok["referer"], "http://ref.example/");
    assert_eq!(ok["tls"], serde_json::Value::Null);
    assert_eq!(ok["error"], serde_json::Value::Null);
    assert!(ok["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok["duration_ms"].as_f64().unwrap() >= ok["upstream_ms"].as_f64().unwrap());
    assert_eq!(
        ok["request_id"].as_str().unwrap(),
        got.header("x-request-id").unwrap()
    );
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));

    let missing = &lines[1];
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["error"], serde_json::Value::Null, "{missing}");
    assert_eq!(missing["backend"], up.addr.to_string());

    let own = &lines[2];
    assert_eq!(own["status"], 503);
    assert_eq!(own["error"], "no_backend", "{own}");
    assert_eq!(own["backend"], serde_json::Value::Null);
    assert_eq!(own["upstream_ms"], serde_json::Value::Null);
    assert_eq!(own["route"], "web");
    veer.shutdown().await;
}

#[tokio::test]
async fn a_retried_request_logs_two_attempts() {
    // The first request anywhere gets a 503, everything after 200: with two backends the
    // first request is retried on the other one.
    let n = Arc::new(AtomicUsize::new(0));
    let mk = |n: Arc<AtomicUsize>| {
        upstream_with(move |_| {
            let first = n.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    respond(503, "busy")
                } else {
                    respond(200, "ok")
                }
            }
        })
    };
    let (a, b) = (mk(n.clone()).await, mk(n.clone()).await);
    let veer = start_veer(&format!(
        "{}[pools.app]\nbackends = [\"{}\", \"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n\
         retry = {{ attempts = 2, backoff = \"1ms\" }}\n",
        log_section(""),
        a.addr,
        b.addr
    ))
    .await;
    assert_eq!(get(&veer.url("/")).await.status, 200);
    wait_lines(&log_path(&veer), 1).await;
    let line = &json_lines(&log_path(&veer))[0];
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["status"], 200);
    veer.shutdown().await;
}

#[tokio::test]
async fn sampling_keeps_every_5xx_and_veer_error() {
    let (up, _) = recording_upstream().await;
    let dead = dead_addr().await;
    let veer = start_veer(&format!(
        "{}[pools.app]\nbackends = [\"{}\"]\n[pools.dead]\nbackends = [\"{dead}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n\
         [[routes]]\nname = \"down\"\nhosts = [\"down.test\"]\nsplit = {{ dead = 1 }}\nretry = {{ attempts = 1 }}\n",
        log_section("access_sample = 0.0"),
        up.addr
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(get(&veer.url("/")).await.status, 200);
    }
    for _ in 0..3 {
        let got = send(
            http::Request::get(veer.url("/"))
                .header("host", "down.test")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 502);
    }
    wait_lines(&log_path(&veer), 3).await;
    veer.rt()
        .access_log
        .get()
        .unwrap()
        .flush(Duration::from_secs(2))
        .await;
    let lines = json_lines(&log_path(&veer));
    assert_eq!(lines.len(), 3, "only the 502s are kept: {lines:?}");
    for l in &lines {
        assert_eq!(l["status"], 502);
        assert_eq!(l["error"], "connect_failed", "{l}");
        assert_eq!(l["route"], "down");
    }
    veer.shutdown().await;
}

#[tokio::test]
async fn combined_format_is_read_by_clf_parsers() {
    let (up, _) = recording_upstream().await;
    let veer = start_veer(&format!(
        "{}[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        log_section("access_format = \"combined\""),
        up.addr
    ))
    .await;
    let got = get(&veer.url("/a/b?c=d")).await;
    let line = wait_lines(&log_path(&veer), 1).await.remove(0);
    let rid = got.header("x-request-id").unwrap().to_string();
    // IP - - [dd/Mon/yyyy:HH:MM:SS +0000] "GET /a/b?c=d HTTP/1.1" 200 5 "-" "-" veer fields
    let (clf, veer_fields) = line.split_once(" request_id=").unwrap();
    assert!(clf.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        clf.contains("] \"GET /a/b?c=d HTTP/1.1\" 200 5 \"-\" \"-\""),
        "{line}"
    );
    assert!(veer_fields.starts_with(&rid), "{line}");
    assert!(line.contains(" route=web pool=app "), "{line}");
    assert!(line.contains(" attempts=1 "), "{line}");
    assert!(line.ends_with(" error=-"), "{line}");
    veer.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_kept_made_forwarded_and_returned() {
    let (up, seen) = recording_upstream().await;
    let veer = start_veer(&format!(
        "{}[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        log_section(""),
        up.addr
    ))
    .await;
    let with = |id: &str| {
        http::Request::get(veer.url("/"))
            .header("x-request-id", id)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    // A sane one is kept.
    let kept = send(with("client-id-123")).await;
    assert_eq!(kept.header("x-request-id"), Some("client-id-123"));
    // Too long, or with a space: replaced.
    let long = "x".repeat(200);
    let replaced = send(with(&long)).await;
    let new_id = replaced.header("x-request-id").unwrap().to_string();
    assert_ne!(new_id, long);
    assert_eq!(new_id.len(), 32);
    let spaced = send(with("a b")).await;
    assert_ne!(spaced.header("x-request-id"), Some("a b"));
    // None: made.
    let made = get(&veer.url("/")).await;
    let made_id = made.header("x-request-id").unwrap().to_string();
    assert_eq!(made_id.len(), 32);
    assert_ne!(made_id, new_id);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].as_deref(), Some("client-id-123"));
    assert_eq!(seen[1].as_deref(), Some(new_id.as_str()));
    assert_eq!(seen[3].as_deref(), Some(made_id.as_str()));
    wait_lines(&log_path(&veer), 4).await;
    let logged = json_lines(&log_path(&veer));
    assert_eq!(logged[0]["request_id"], "client-id-123");
    assert_eq!(logged[3]["request_id"], made_id.as_str());
    veer.shutdown().await;
}

#[tokio::test]
async fn a_websocket_is_one_line_at_its_end() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let veer = start_veer(&format!(
        "{}[pools.ws]\nbackends = [\"{up}\"]\n[[routes]]\nname = \"ws\"\nsplit = {{ ws = 1 }}\n",
        log_section("")
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(veer.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/chat", veer.addr), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap(),
        "ping"
    );
    // Open tunnel: nothing logged yet.
    veer.rt()
        .access_log
        .get()
        .unwrap()
        .flush(Duration::from_secs(2))
        .await;
    assert!(read_lines(&log_path(&veer)).is_empty());
    ws.close(None).await.unwrap();
    drop(ws);
    wait_lines(&log_path(&veer), 1).await;
    let line = &json_lines(&log_path(&veer))[0];
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["route"], "ws");
    assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
    assert!(line["bytes_in"].as_u64().unwrap() > 0, "{line}");
    veer.shutdown().await;
}

/// The writer stuck on a pipe nobody reads: requests go on at full speed, the lines that do
/// not fit are dropped and counted.
#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A reader that opens the pipe and never reads (opening the write end waits for it).
    let f = fifo.clone();
    let _reader = std::thread::spawn(move || {
        let _held = std::fs::File::open(f).unwrap();
        std::thread::sleep(Duration::from_secs(60));
    });
    let (up, _) = recording_upstream().await;
    let veer = start_veer(&format!(
        "[log]\naccess = \"{}\"\n[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        fifo.display(),
        up.addr
    ))
    .await;
    let big = "y".repeat(4000);
    let started = std::time::Instant::now();
    // Lines of ~4 KiB: the pipe (64 KiB) and the queue fill after a few thousand.
    let c = client();
    for _ in 0..(veer::log::access::QUEUE + 2000) {
        let req = http::Request::get(veer.url("/"))
            .header("user-agent", &big)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), c.request(req))
            .await
            .expect("a request waited for the access log")
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let dropped = veer.rt().metrics.access_log_dropped.get();
    assert!(dropped > 0, "nothing dropped");
    let metrics = get(&veer.admin_url("/metrics")).await.body;
    assert!(
        metrics.contains(&format!("veer_access_log_dropped_total {dropped}"))
            || metrics.contains("veer_access_log_dropped_total "),
        "{metrics}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    // Not `shutdown`: its flush would wait on the stuck writer (bounded, but slow).
    drop(veer);
}

/// SIGUSR1 after logrotate moved the file: new lines go to a new file at the configured
/// path, the old file keeps what it had.
#[tokio::test]
async fn sigusr1_reopens_the_file() {
    let (up, _) = recording_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veer.toml");
    std::fs::write(
        &path,
        with_listeners(&format!(
            "{}[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
            log_section(""),
            up.addr
        )),
    )
    .unwrap();
    let veer = spawn_veer(&path).await;
    let log = dir.path().join("access.log");
    let url = format!("http://{}/", veer.addr);
    get(&url).await;
    wait_lines(&log, 1).await;
    let moved = dir.path().join("access.log.1");
    std::fs::rename(&log, &moved).unwrap();
    veer.signal("USR1");
    let v = veer.stderr.clone();
    eventually("the reopen is logged", Duration::from_secs(5), || {
        v.lock().unwrap().contains("access log reopened")
    })
    .await;
    get(&format!("http://{}/after", veer.addr)).await;
    let fresh = wait_lines(&log, 1).await;
    assert!(fresh[0].contains("\"path\":\"/after\""), "{fresh:?}");
    let old = read_lines(&moved);
    assert_eq!(old.len(), 1, "{old:?}");
    assert!(old[0].contains("\"path\":\"/\""));
}

/// Start the binary on `config` with these env vars; (its stderr so far, the process).
async fn veer_with_env(
    config: &str,
    env: &[(&str, &str)],
) -> (Arc<Mutex<String>>, tokio::process::Child, tempfile::TempDir) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veer.toml");
    std::fs::write(&path, with_listeners(config)).unwrap();
    let mut cmd = tokio::process::Command::new(veer_bin());
    cmd.args(["run", "--config"])
        .arg(&path)
        .env_remove("VEER_LOG")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let l = log.clone();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut l = l.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let l = log.clone();
    eventually("veer announces itself", Duration::from_secs(20), || {
        l.lock().unwrap().contains("veer: proxy=")
    })
    .await;
    (log, child, dir)
}

#[tokio::test]
async fn own_log_lines_are_json_with_format_json_and_rust_log_still_filters() {
    // A backend that is not there: the failed attempt is logged at debug.
    let dead = dead_addr().await;
    let config = format!(
        "[log]\nformat = \"json\"\n[pools.app]\nbackends = [\"{dead}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\nretry = {{ attempts = 1 }}\n"
    );
    let (log, _child, dir) = veer_with_env(&config, &[("RUST_LOG", "veer=debug")]).await;
    let _ = dir;
    let addr = {
        let text = log.lock().unwrap().clone();
        let line = text
            .lines()
            .find(|l| l.starts_with("veer: proxy="))
            .unwrap()
            .to_string();
        line.split("proxy=http://")
            .nth(1)
            .unwrap()
            .split([',', ' '])
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(get(&format!("http://{addr}/")).await.status, 502);
    let l = log.clone();
    // RUST_LOG (VEER_LOG unset) still chooses what is logged.
    eventually(
        "a debug line (RUST_LOG=veer=debug)",
        Duration::from_secs(5),
        || l.lock().unwrap().contains("\"level\":\"DEBUG\""),
    )
    .await;
    let text = log.lock().unwrap().clone();
    let mut levels = std::collections::BTreeSet::new();
    for v in json_values(text.lines().filter(|l| !l.starts_with("veer: proxy="))) {
        assert!(
            v.get("timestamp").is_some() && v.get("message").is_some(),
            "{v}"
        );
        levels.insert(v["level"].as_str().unwrap().to_string());
    }
    assert!(
        levels.contains("INFO") && levels.contains("DEBUG"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "colour codes in JSON logs");
}

#[tokio::test]
async fn text_logs_have_no_colour_codes_off_a_terminal() {
    let (up, _) = recording_upstream().await;
    let config = format!(
        "[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        up.addr
    );
    let (log, _child, _dir) = veer_with_env(&config, &[("VEER_LOG", "info")]).await;
    let text = log.lock().unwrap().clone();
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes on a pipe:\n{text:?}"
    );
}

/// A client that goes away before its answer still gets its line: 499, `client_gone`.
#[tokio::test]
async fn a_client_gone_before_the_answer_is_logged_as_499() {
    use tokio::io::AsyncWriteExt;
    let up = upstream_with(|_| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        respond(200, "late")
    })
    .await;
    let veer = start_veer(&format!(
        "{}[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        log_section(""),
        up.addr
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(veer.addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let hits = up.hits.clone();
    eventually(
        "the request reached the backend",
        Duration::from_secs(5),
        || hits.load(Ordering::SeqCst) > 0,
    )
    .await;
    drop(s);
    let line = &json_lines(&{
        wait_lines(&log_path(&veer), 1).await;
        log_path(&veer)
    })[0];
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["error"], "client_gone");
    assert_eq!(line["path"], "/slow");
    assert_eq!(line["route"], "web");
    veer.shutdown().await;
}

/// A backend that records each request's body (read whole) and answers 200.
async fn body_recording_upstream() -> (Upstream, Arc<Mutex<Vec<Vec<u8>>>>) {
    use http_body_util::BodyExt;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let up = upstream_with(move |req| {
        let s = s.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            s.lock().unwrap().push(body.to_vec());
            respond(200, "ok")
        }
    })
    .await;
    (up, seen)
}

/// `bytes_in` is what was read of the body: a chunked body counts its data (not its
/// framing), a sized one its length, one veer refused before reading counts 0.
#[tokio::test]
async fn bytes_in_counts_the_body_bytes_read() {
    let (up, seen) = body_recording_upstream().await;
    let veer = start_veer(&format!(
        "{}[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        log_section(""),
        up.addr
    ))
    .await;
    let chunked = raw(
        veer.addr,
        b"POST /chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 200"), "{chunked}");
    let sized = raw(
        veer.addr,
        b"POST /sized HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        Duration::from_secs(5),
    )
    .await;
    assert!(sized.starts_with("HTTP/1.1 200"), "{sized}");
    // No body at all.
    let short = raw(
        veer.addr,
        b"GET /nobody HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(short.starts_with("HTTP/1.1 200"), "{short}");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![b"hello, world".to_vec(), b"abc".to_vec(), Vec::new()]
    );
    let lines = wait_lines(&log_path(&veer), 3).await;
    let lines = json_values(lines.iter().map(String::as_str));
    let by_path = |p: &str| lines.iter().find(|l| l["path"] == p).unwrap().clone();
    assert_eq!(by_path("/chunked")["bytes_in"], 12, "{lines:?}");
    assert_eq!(by_path("/sized")["bytes_in"], 3, "{lines:?}");
    assert_eq!(by_path("/nobody")["bytes_in"], 0, "{lines:?}");
    veer.shutdown().await;
}

/// Quotes, backslashes, bytes beyond ASCII and bytes that are not UTF-8 in headers, sent as
/// raw bytes: JSON lines stay JSON (with U+FFFD for what is not UTF-8),
/// combined lines stay one line of visible ASCII with `\xHH` escapes. (A path with them is
/// refused by the parser before veer sees a request: the unit tests cover paths.)
#[tokio::test]
async fn hostile_bytes_in_the_path_and_headers_are_escaped_in_both_formats() {
    let (up, _seen) = recording_upstream().await;
    let request: &[u8] = b"GET /a%22b?q={x}|y HTTP/1.1\r\nHost: app\r\n\
        User-Agent: a \"quoted\" \\back\\slash caf\xc3\xa9 \xff\xfe agent\r\n\
        Referer: http://x/\"};{\"forged\":1\r\nConnection: close\r\n\r\n";
    for format in ["json", "combined"] {
        let veer = start_veer(&format!(
            "{}[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
            log_section(&format!("access_format = \"{format}\"")),
            up.addr
        ))
        .await;
        let answer = raw(veer.addr, request, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
        let lines = wait_lines(&log_path(&veer), 1).await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        if format == "json" {
            let v = &json_values([line.as_str()])[0];
            assert_eq!(v["path"], "/a%22b?q={x}|y", "{line}");
            assert_eq!(
                v["user_agent"], "a \"quoted\" \\back\\slash caf\u{e9} \u{fffd}\u{fffd} agent",
                "{line}"
            );
            assert_eq!(v["referer"], "http://x/\"};{\"forged\":1", "{line}");
            assert!(v.get("forged").is_none());
        } else {
            assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
            assert!(line.contains("\"GET /a%22b?q={x}|y HTTP/1.1\" "), "{line}");
            assert!(
                line.contains(
                    " \"http://x/\\x22};{\\x22forged\\x22:1\" \"a \\x22quoted\\x22 \\x5Cback\\x5Cslash caf\\xC3\\xA9 \\xFF\\xFE agent\" "
                ),
                "{line}"
            );
        }
        veer.shutdown().await;
    }
}

/// An upstream that counts what reaches it.
async fn counting_upstream() -> (Upstream, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let up = upstream_with(move |_req| {
        c.fetch_add(1, Ordering::SeqCst);
        async { respond(200, "hello") }
    })
    .await;
    (up, n)
}

/// veer with the log on and sampling off (a refusal is veer's own error: always logged).
async fn refusing_veer(up: &Upstream, tweak: impl FnOnce(&mut veer::config::Config)) -> Veer {
    start_veer_tweaked(
        &format!(
            "{}[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
            log_section("access_sample = 0.0"),
            up.addr
        ),
        tweak,
    )
    .await
}

/// The one line a refused request left: nothing of its head, what the connection knows.
async fn refusal_line(veer: &Veer, status: u16, error: &str) {
    wait_lines(&log_path(veer), 1).await;
    veer.rt()
        .access_log
        .get()
        .unwrap()
        .flush(Duration::from_secs(2))
        .await;
    let lines = json_lines(&log_path(veer));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["status"], status, "{l}");
    assert_eq!(l["error"], error, "{l}");
    assert_eq!(l["client_ip"], "127.0.0.1", "{l}");
    for k in [
        "method", "path", "host", "protocol", "route", "backend", "tls",
    ] {
        assert!(l[k].is_null(), "{k} in {l}");
    }
    assert_eq!(l["attempts"], 0, "{l}");
}

#[tokio::test]
async fn a_malformed_head_gets_a_400_line_and_never_reaches_the_backend() {
    let (up, seen) = counting_upstream().await;
    let veer = refusing_veer(&up, |_| {}).await;
    let got = raw(
        veer.addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nno colon here\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    refusal_line(&veer, 400, "bad_request").await;
    assert_eq!(seen.load(Ordering::SeqCst), 0, "the backend saw it");
    veer.shutdown().await;
}

#[tokio::test]
async fn an_over_large_head_gets_a_431_line() {
    let (up, seen) = counting_upstream().await;
    let veer = refusing_veer(&up, |c| c.server.max_header_bytes = 16 * 1024).await;
    let mut head = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 40 * 1024));
    head.extend_from_slice(b"\r\n\r\n");
    let got = raw(veer.addr, &head, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    refusal_line(&veer, 431, "header_too_large").await;
    assert_eq!(seen.load(Ordering::SeqCst), 0, "the backend saw it");
    veer.shutdown().await;
}

/// A head begun and not finished within header_read_timeout, on veer's own HTTP/1.1 loop (a
/// first head) and on hyper's (a second head after a request with a body): the connection
/// is closed with nothing written, and logged as a 408.
#[tokio::test]
async fn a_head_that_does_not_arrive_in_time_gets_a_408_line() {
    let (up, seen) = counting_upstream().await;
    let veer = refusing_veer(&up, |c| {
        c.server.header_read_timeout = Duration::from_millis(200)
    })
    .await;
    // raw reads until veer closes the connection (bounded far above the timeout).
    let got = raw(
        veer.addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got, "", "nothing is written for a head that did not come");
    refusal_line(&veer, 408, "header_timeout").await;

    std::fs::remove_file(log_path(&veer)).unwrap();
    veer.rt().access_log.get().unwrap().reopen();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(veer.addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"hello") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 "));
        // The next head begins on hyper's connection and stops short.
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("veer closes a late head")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing is written for a head that did not come");
    }
    // The 200 is sampled away (access_sample = 0.0); the late head is not.
    refusal_line(&veer, 408, "header_timeout").await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "only the POST reached the backend"
    );
    veer.shutdown().await;
}
