//! Property tests of veer's own downstream HTTP/1.1 loop (src/proxy/http1.rs): pipelined
//! body-less requests (the loop's own), mixed with ones it hands to hyper (a body, HTTP/1.0),
//! sent over one raw connection whole and split at random byte boundaries (a fixed
//! pipeline at every boundary), to an upstream that answers each with a body of a length
//! and framing the request asks for. The reference is a strict reading of both sides: the
//! upstream must get each request once, in order, with its method, target and headers; the
//! client must read one answer per request, in order, framed so that a strict reader finds
//! exactly the body the upstream sent (none for HEAD), and after `Connection: close` the
//! connection ends with nothing more served.
//!
//! The case count is `PROPTEST_CASES` (default [`DEFAULT_CASES`]).

mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::fuzz::{read_chunked, runner, Chunked};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEFAULT_CASES: u32 = 120;

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    /// A request body (hyper serves the connection from then on).
    body: Option<Vec<u8>>,
    http10: bool,
    /// The answer: body length, and chunked (a streamed body) or a content-length.
    answer_len: usize,
    chunked: bool,
    close: bool,
}

/// What the upstream saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn answer_body(id: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + ((i + id) % 26) as u8).collect()
}

fn encode(reqs: &[Req]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, r) in reqs.iter().enumerate() {
        let version = if r.http10 { "1.0" } else { "1.1" };
        out.extend_from_slice(
            format!("{} {} HTTP/{version}\r\nHost: app\r\n", r.method, r.path).as_bytes(),
        );
        out.extend_from_slice(format!("X-Id: {id}\r\nX-Len: {}\r\n", r.answer_len).as_bytes());
        if r.chunked {
            out.extend_from_slice(b"X-Chunked: 1\r\n");
        }
        for (k, v) in &r.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if r.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if r.http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        if let Some(b) = &r.body {
            out.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if let Some(b) = &r.body {
            out.extend_from_slice(b);
        }
    }
    out
}

/// One answer read strictly: status, lower-cased headers, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// HTTP/1.0 (hyper answers an HTTP/1.0 request in kind).
    http10: bool,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_answer(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_req: bool,
) -> Result<Answer, String> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = r.code.unwrap();
                let http10 = r.version == Some(0);
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let no_body = head_req || status == 204 || status == 304;
                loop {
                    let rest = &buf[n..];
                    let done = if no_body {
                        Some((Vec::new(), 0))
                    } else if get("transfer-encoding")
                        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
                    {
                        match read_chunked(rest) {
                            Chunked::Done(d, None) => Some((d.data, d.len)),
                            Chunked::Incomplete => None,
                            other => return Err(format!("bad chunked answer: {other:?}")),
                        }
                    } else if let Some(len) = get("content-length") {
                        let len: usize =
                            len.parse().map_err(|_| format!("content-length {len}"))?;
                        (rest.len() >= len).then(|| (rest[..len].to_vec(), len))
                    } else {
                        return Err(format!("answer without framing: {headers:?}"));
                    };
                    if let Some((body, used)) = done {
                        buf.drain(..n + used);
                        return Ok(Answer {
                            status,
                            http10,
                            headers,
                            body,
                        });
                    }
                    fill(s, buf).await?;
                }
            }
            Ok(httparse::Status::Partial) => fill(s, buf).await?,
            Err(e) => {
                return Err(format!(
                    "unreadable answer ({e}): {:?}",
                    String::from_utf8_lossy(buf)
                ))
            }
        }
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut b = [0u8; 8192];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
        Ok(Ok(0)) => Err("connection closed mid-answer".into()),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&b[..n]);
            Ok(())
        }
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer in 5 s".into()),
    }
}

struct Harness {
    veer: support::Veer,
    seen: Arc<Mutex<Vec<Seen>>>,
    rt: tokio::runtime::Runtime,
}

fn harness() -> Harness {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let veer = rt.block_on(async {
        let record = seen.clone();
        let up = support::upstream_with(move |req| {
            let record = record.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let h = |k: &str| {
                    parts
                        .headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let id: usize = h("x-id").parse().unwrap_or(0);
                let len: usize = h("x-len").parse().unwrap_or(0);
                let headers = parts
                    .headers
                    .iter()
                    .filter(|(k, _)| k.as_str().starts_with("x-t-"))
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                record.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    headers,
                    body: body.to_vec(),
                });
                let data = Bytes::from(answer_body(id, len));
                if h("x-chunked") == "1" {
                    // Several frames of unknown total: veer frames it chunked.
                    let pieces: Vec<Result<hyper::body::Frame<Bytes>, hyper::Error>> = data
                        .chunks(700)
                        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
                        .collect();
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(pieces));
                    http::Response::new(body.boxed())
                } else {
                    support::respond(200, data)
                }
            }
        })
        .await;
        let veer = support::start_veer(&format!(
            "[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
            up.addr
        ))
        .await;
        std::mem::forget(up); // lives as long as the test process
        veer
    });
    Harness { veer, seen, rt }
}

impl Harness {
    fn check(&self, reqs: &[Req], splits: &[usize]) -> Result<(), String> {
        self.rt.block_on(self.exchange(reqs, splits))
    }

    async fn exchange(&self, reqs: &[Req], splits: &[usize]) -> Result<(), String> {
        let input = encode(reqs);
        self.seen.lock().unwrap().clear();
        let mut s = TcpStream::connect(self.veer.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut from = 0;
        for &to in splits.iter().chain(std::iter::once(&input.len())) {
            let to = to.clamp(from, input.len());
            if to == from {
                continue;
            }
            // veer may have closed after a `Connection: close` while the rest was sent.
            if s.write_all(&input[from..to]).await.is_err() {
                break;
            }
            from = to;
            if from < input.len() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Served: up to and including the first that closes.
        let served = reqs
            .iter()
            .position(|r| r.close)
            .map_or(reqs.len(), |i| i + 1);
        let mut buf = Vec::new();
        for (id, r) in reqs[..served].iter().enumerate() {
            let a = read_answer(&mut s, &mut buf, r.method == "HEAD")
                .await
                .map_err(|e| format!("answer {id}: {e}"))?;
            if a.status != 200 {
                return Err(format!(
                    "answer {id}: status {} ({:?})",
                    a.status, a.headers
                ));
            }
            let want = if r.method == "HEAD" {
                Vec::new()
            } else {
                answer_body(id, r.answer_len)
            };
            if a.body != want {
                return Err(format!(
                    "answer {id}: body {} bytes, want {}",
                    a.body.len(),
                    want.len()
                ));
            }
            if !a.headers.iter().any(|(k, _)| k == "date") {
                return Err(format!("answer {id}: no date"));
            }
            let says = |t: &str| {
                a.headers
                    .iter()
                    .any(|(k, v)| k == "connection" && v.to_ascii_lowercase().contains(t))
            };
            // An HTTP/1.0 answer closes unless it says keep-alive.
            let closes = says("close") || a.http10 && !says("keep-alive");
            if r.close != closes {
                return Err(format!(
                    "answer {id}: connection close {closes}, want {}",
                    r.close
                ));
            }
        }
        if served < reqs.len() || reqs.last().is_some_and(|r| r.close) {
            // Closed after the answer to `Connection: close`, nothing more said.
            let mut rest = [0u8; 1024];
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await {
                Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => {}
                other => return Err(format!("not closed after close: {other:?}, {buf:?}")),
            }
        }
        let seen = self.seen.lock().unwrap().clone();
        if seen.len() != served {
            return Err(format!(
                "upstream saw {} requests, want {served}: {seen:?}",
                seen.len()
            ));
        }
        for (id, (r, got)) in reqs.iter().zip(&seen).enumerate() {
            let want = Seen {
                method: r.method.to_string(),
                path: r.path.clone(),
                headers: r.headers.clone(),
                body: r.body.clone().unwrap_or_default(),
            };
            if *got != want {
                return Err(format!("request {id}: upstream saw {got:?}, want {want:?}"));
            }
        }
        Ok(())
    }
}

fn req() -> impl Strategy<Value = Req> {
    let method = prop::sample::select(vec!["GET", "GET", "HEAD", "DELETE", "OPTIONS", "POST"]);
    let path = "/[a-z0-9_.~-]{0,12}(/[a-z0-9]{1,6}){0,3}";
    let header = ("x-t-[a-z]{1,8}", "[!-~]([ -~]{0,30}[!-~])?");
    (
        method,
        path,
        prop::collection::vec(header, 0..5),
        prop::option::weighted(0.15, prop::collection::vec(any::<u8>(), 0..40)),
        prop::bool::weighted(0.1),
        prop_oneof![0..200usize, 0..20_000usize],
        any::<bool>(),
    )
        .prop_map(
            |(method, path, mut headers, body, http10, answer_len, chunked)| {
                // One of each name (the upstream's map keeps the first of repeated ones).
                let mut names = std::collections::HashSet::new();
                headers.retain(|(k, _)| names.insert(k.clone()));
                let path = if path.is_empty() || path.contains("/.") || path.contains("..") {
                    "/p".to_string()
                } else {
                    path
                };
                Req {
                    method,
                    path,
                    headers,
                    body: if method == "POST" {
                        Some(body.unwrap_or_default())
                    } else {
                        body.filter(|_| false)
                    },
                    http10,
                    answer_len,
                    chunked: chunked && !http10,
                    close: false,
                }
            },
        )
}

fn pipeline() -> impl Strategy<Value = (Vec<Req>, bool)> {
    (
        prop::collection::vec(req(), 1..5),
        prop::bool::weighted(0.3),
    )
}

#[test]
fn pipelined_requests_split_anywhere_are_answered_in_order_as_a_strict_reader_reads_them() {
    let h = harness();
    let strategy = (pipeline(), prop::collection::vec(any::<usize>(), 0..4));
    let result = runner(DEFAULT_CASES).run(&strategy, |((mut reqs, close_at), split)| {
        if close_at {
            let i = split.first().copied().unwrap_or(0) % reqs.len();
            reqs[i].close = true;
        }
        let len = encode(&reqs).len();
        let mut split: Vec<usize> = split.iter().map(|p| p % (len + 1)).collect();
        split.sort_unstable();
        h.check(&reqs, &split).map_err(|e| {
            TestCaseError::fail(format!(
                "{e}\ninput: {:?}",
                String::from_utf8_lossy(&encode(&reqs))
            ))
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_fixed_pipeline_split_at_every_byte_boundary_is_answered_the_same() {
    let h = harness();
    let r = |method: &'static str, path: &str, answer_len: usize, chunked: bool| Req {
        method,
        path: path.into(),
        headers: vec![("x-t-a".into(), "one".into())],
        body: None,
        http10: false,
        answer_len,
        chunked,
        close: false,
    };
    let mut last = r("GET", "/c", 5, false);
    last.close = true;
    let mut post = r("POST", "/d", 3, false);
    post.body = Some(b"hello".to_vec());
    for reqs in [
        vec![
            r("GET", "/a", 3000, true),
            r("HEAD", "/b", 10, false),
            last.clone(),
        ],
        vec![r("GET", "/a", 0, false), post, r("GET", "/e", 2, true)],
    ] {
        let len = encode(&reqs).len();
        for k in 1..len {
            if let Err(e) = h.check(&reqs, &[k]) {
                panic!(
                    "split at {k}: {e}\ninput: {:?}",
                    String::from_utf8_lossy(&encode(&reqs))
                );
            }
        }
    }
}
