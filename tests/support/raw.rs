//! HTTP/1.1 spoken byte by byte: a raw TCP backend that records what it read of each request
//! and answers with exact bytes, and a raw client that reads responses as they frame
//! themselves. For the hostile-input tests, where what matters is the bytes on the wire.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Reading HTTP/1.1 off a stream.

pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read more into `buf`; false at the end of the stream.
pub async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
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

/// The first value of header `name` (lower case) in a parsed header list.
pub fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One message head read off a stream.
pub struct Head {
    /// The head as received, up to and with the blank line.
    pub text: String,
    pub first: String,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
}

/// Read one message head from the front of `buf` (reading more as needed) and take it out of
/// `buf`. `None` if the stream ends first.
pub async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    let end = loop {
        if let Some(i) = find_bytes(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(s, buf).await {
            return None;
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut lines = text.split("\r\n");
    let first = lines.next()?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head {
        text,
        first,
        headers,
    })
}

/// Decode a chunked body from the front of `buf` into `add` (reading more as needed, what
/// arrived of a cut chunk included), leaving what follows it in `buf`; trailers are read and
/// dropped. False if the stream ends first or the framing is broken.
pub async fn read_chunked(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    add: &mut impl FnMut(&[u8]),
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

/// Read `n` body bytes from the front of `buf` into `add`; false (what arrived given to
/// `add`) if the stream ends first.
async fn read_sized(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    n: usize,
    add: &mut impl FnMut(&[u8]),
) -> bool {
    while buf.len() < n {
        if !fill(s, buf).await {
            add(buf);
            buf.clear();
            return false;
        }
    }
    add(&buf[..n]);
    buf.drain(..n);
    true
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    header_of(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

// ---------------------------------------------------------------------------------------------
// A raw recording backend.

/// One request as a [`RawBackend`] read it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The head as received.
    pub head: String,
    pub method: String,
    pub target: String,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as decoded so far (chunked framing removed).
    pub body: Vec<u8>,
    /// The body arrived whole, as its framing said; false for a request cut off (or one whose
    /// body is still arriving).
    pub complete: bool,
}

impl Seen {
    /// Every value of header `name` (lower case), in order.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the backend does once it has read a whole request.
pub enum Answer {
    /// Write these bytes and read the next request on the same connection.
    Reply(Vec<u8>),
    /// Write these bytes (a 101), then echo every byte that arrives.
    SwitchAndEcho(Vec<u8>),
    /// Write these bytes, then close the connection.
    ReplyAndClose(Vec<u8>),
    /// Close the connection without a word.
    Close,
}

/// `200 OK` with `text` as a Content-Length body.
pub fn ok(text: &str) -> Answer {
    Answer::Reply(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        )
        .into_bytes(),
    )
}

/// The 101 a backend sends to switch to `proto`.
pub fn switch_to(proto: &str) -> Answer {
    Answer::SwitchAndEcho(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: {proto}\r\nconnection: upgrade\r\n\r\n"
        )
        .into_bytes(),
    )
}

/// A raw HTTP/1.1 backend that records each request it reads (head, decoded body, whether
/// the body was complete) and its connections. A request is recorded when its head arrives,
/// answered once its body is whole; a cut-off one is not answered.
pub struct RawBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    echoed: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl RawBackend {
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
    /// Wait (up to 5 s) until every connection to this backend has closed.
    pub async fn all_closed(&self) {
        super::eventually(
            "the backend's connections to close",
            Duration::from_secs(5),
            || self.open() == 0,
        )
        .await;
    }
    /// Bytes echoed after a switch: anything here went through a tunnel.
    pub fn echoed(&self) -> usize {
        self.echoed.load(Ordering::SeqCst)
    }
}

impl Drop for RawBackend {
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

type AnswerFn = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// A [`RawBackend`] answering each whole request with `answer`'s bytes.
pub async fn raw_backend(answer: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> RawBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = RawBackend {
        addr: l.local_addr().unwrap(),
        accepted: Arc::default(),
        open: Arc::default(),
        seen: Arc::default(),
        echoed: Arc::default(),
        stop: CancellationToken::new(),
    };
    let answer: AnswerFn = Arc::new(answer);
    let (a, o, seen, echoed, st) = (
        b.accepted.clone(),
        b.open.clone(),
        b.seen.clone(),
        b.echoed.clone(),
        b.stop.clone(),
    );
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = l.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                _ = st.cancelled() => return,
            };
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(o.clone());
            let (seen, echoed, answer, st) =
                (seen.clone(), echoed.clone(), answer.clone(), st.clone());
            tokio::spawn(async move {
                let _guard = guard;
                tokio::select! {
                    _ = serve_conn(stream, seen, echoed, answer) => {}
                    _ = st.cancelled() => {}
                }
            });
        }
    });
    b
}

/// A [`RawBackend`] answering `got N` (N body bytes) to each whole request (the head only to
/// a HEAD).
pub async fn recorder() -> RawBackend {
    raw_backend(|req| {
        let text = format!("got {}", req.body.len());
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", text.len());
        if req.method.eq_ignore_ascii_case("HEAD") {
            Answer::Reply(head.into_bytes())
        } else {
            Answer::Reply((head + &text).into_bytes())
        }
    })
    .await
}

async fn serve_conn(
    mut s: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    echoed: Arc<AtomicUsize>,
    answer: AnswerFn,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut s, &mut buf).await else {
            return;
        };
        let mut parts = head.first.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let chunked = is_chunked(&head.headers);
        let length = header_of(&head.headers, "content-length").map(|v| v.parse::<usize>());
        let idx = {
            let mut v = seen.lock().unwrap();
            v.push(Seen {
                head: head.text,
                method,
                target,
                headers: head.headers,
                body: Vec::new(),
                complete: false,
            });
            v.len() - 1
        };
        let mut add = |data: &[u8]| seen.lock().unwrap()[idx].body.extend_from_slice(data);
        let whole = if chunked {
            read_chunked(&mut s, &mut buf, &mut add).await
        } else {
            match length {
                Some(Ok(n)) => read_sized(&mut s, &mut buf, n, &mut add).await,
                Some(Err(_)) => false,
                None => true,
            }
        };
        if !whole {
            return; // cut off or malformed: nothing to answer
        }
        let req = {
            let mut v = seen.lock().unwrap();
            v[idx].complete = true;
            v[idx].clone()
        };
        match answer(&req) {
            Answer::Reply(bytes) => {
                if s.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Answer::ReplyAndClose(bytes) => {
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
                return;
            }
            Answer::Close => return,
            Answer::SwitchAndEcho(bytes) => {
                if s.write_all(&bytes).await.is_err() {
                    return;
                }
                if !buf.is_empty() {
                    echoed.fetch_add(buf.len(), Ordering::SeqCst);
                    let _ = s.write_all(&buf).await;
                }
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            echoed.fetch_add(n, Ordering::SeqCst);
                            if s.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw client.

/// One response as a raw client read it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// The head as received.
    pub head: String,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    /// Decoded (chunked framing removed).
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Read one response from the front of `buf` (reading more as needed): a 1xx, 204 or 304 has
/// no body (after an interim 1xx the caller reads the final response next), else Transfer-Encoding, Content-Length or the end of the stream frames it. `None`
/// if the peer closed before a whole one.
pub async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Resp> {
    let head = read_head(s, buf).await?;
    let status: u16 = head.first.split(' ').nth(1)?.parse().ok()?;
    let mut body = Vec::new();
    let mut add = |d: &[u8]| body.extend_from_slice(d);
    let whole = if (100..200).contains(&status) || status == 204 || status == 304 {
        true
    } else if header_of(&head.headers, "transfer-encoding").is_some() {
        read_chunked(s, buf, &mut add).await
    } else if let Some(n) = header_of(&head.headers, "content-length") {
        let n: usize = n.parse().ok()?;
        read_sized(s, buf, n, &mut add).await
    } else {
        while fill(s, buf).await {}
        add(buf);
        buf.clear();
        true
    };
    whole.then_some(Resp {
        status,
        head: head.text,
        headers: head.headers,
        body,
    })
}

/// One HTTP/1.1 response read off a raw stream: status, head, decoded body. Panics if none
/// comes within 10 s or the peer closes before a whole one.
pub async fn read_answer(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(s, &mut Vec::new()))
        .await
        .expect("no answer in time")
        .expect("closed without an answer");
    (r.status, r.head, r.body)
}

/// One response read off `s` (see [`read_response`]) as its head and decoded body; `None`
/// if the peer closed before a whole one. Unbounded: callers that expect silence put their
/// own timeout around it.
pub async fn read_head_body(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    read_response(s, &mut Vec::new())
        .await
        .map(|r| (r.head, r.body))
}

/// Wait until the peer closes the stream (read returns 0 or an error), up to `limit`.
/// Returns how long it took, or `None` if it stayed open.
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// A client connection to veer, reading responses as they frame themselves.
pub struct RawClient {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        RawClient {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Send `bytes` and read one response (a 101's head only). Panics on a timeout: a
    /// hang is a failure here.
    pub async fn send(&mut self, bytes: &[u8]) -> Option<Resp> {
        self.s.write_all(bytes).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.read())
            .await
            .expect("no answer within 10s")
    }

    pub async fn read(&mut self) -> Option<Resp> {
        read_response(&mut self.s, &mut self.buf).await
    }

    /// Did the connection end (or stay silent) within `wait`, with nothing more read?
    pub async fn nothing_more(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(wait, self.s.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => self.buf.is_empty(),
            Ok(Ok(_)) => false,
        }
    }
}

/// Read a response head only (the answer to a HEAD has no body), bounded at 10 s; what
/// arrived if the peer closes first.
pub async fn read_head_only(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("no answer in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The status code of a raw response (0 if there is none).
pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
