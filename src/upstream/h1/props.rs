//! Property tests of the fast path's response reading (a stable stand-in for cargo-fuzz):
//! the chunked decoder and the response-head parser, on generated and mutated inputs, whole
//! and split at every byte boundary, compared with strict readings (RFC 9112): the same
//! bytes and trailers, or an error for both; never a panic, never more than the input holds.
//!
//! The case count is `PROPTEST_CASES` (default [`DEFAULT_CASES`]).

use super::*;
use crate::upstream::testing::{backend, client, get, Reply};
use http::Version;
use http_body::Body as _;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

#[path = "../../../tests/support/fuzz.rs"]
mod fuzz;
use fuzz::{read_chunked, Chunked, Mutation};

/// Cases per property when `PROPTEST_CASES` is not set: the whole file stays within a few
/// seconds of a debug build.
const DEFAULT_CASES: u32 = 128;

fn runner() -> TestRunner {
    fuzz::runner(DEFAULT_CASES)
}

/// Holes in `parse_head`, the response framing that other work on this issue is changing
/// (item 7): a case that needs one is still run (it must not panic) but not compared. The
/// first is item 7 itself; the others were found by these properties and are left to that
/// work (same function). Remove an entry once its fix is merged.
const KNOWN_HOLES_FIXED_ELSEWHERE: &[HeadHole] = &[
    // `Transfer-Encoding: chunked,` (an empty list element, to be ignored) reads to the close.
    HeadHole::EmptyTeElement,
    // HTTP/1.0 `Connection: close, keep-alive`: the later keep-alive undoes the close, and
    // the connection the backend closes goes back to the pool.
    HeadHole::Http10CloseAndKeepAlive,
];

// ---------------------------------------------------------------------------------------
// Generated chunked bodies.

#[derive(Debug, Clone)]
enum Size {
    /// The data's length in hex, upper or lower case, with leading zeros.
    Exact { upper: bool, zeros: usize },
    /// Off by this much from the data's length.
    Off(i8),
    /// A literal size field (garbage, overflow, signs).
    Literal(&'static str),
}

#[derive(Debug, Clone)]
struct ChunkSpec {
    data: Vec<u8>,
    size: Size,
    ext: &'static str,
    /// The line ending after the size line and after the data.
    eol: &'static str,
    data_end: &'static str,
}

#[derive(Debug, Clone)]
struct BodySpec {
    chunks: Vec<ChunkSpec>,
    last: &'static str,
    trailers: Vec<&'static str>,
    trailer_eol: &'static str,
    end: &'static str,
    /// Bytes after the body (the next response on the connection).
    extra: &'static str,
    muts: Vec<Mutation>,
}

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        12 => Just("\r\n"),
        1 => Just("\n"),
        1 => Just("\r"),
        1 => Just(""),
        1 => Just("\r\r\n"),
    ]
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        10 => (any::<bool>(), prop_oneof![6 => Just(0usize), 1 => 1usize..20])
            .prop_map(|(upper, zeros)| Size::Exact { upper, zeros }),
        1 => (-3i8..=3).prop_map(Size::Off),
        1 => prop::sample::select(vec![
            "zz", "ffffffffffffffffff", "10000000000000000", "+5", "-1", " 5", "0x5", "",
            "5 ", "5\t", "1_0", "٣", "FFFFFFFFFFFFFFFF",
        ])
        .prop_map(Size::Literal),
    ]
}

fn ext() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => Just(""),
        4 => prop::sample::select(vec![
            ";a", ";a=b", ";name=\"quoted value\"", " ; a = b", ";a;b=1", ";q=\"a\\\"b\"",
        ]),
        2 => prop::sample::select(vec![";", "; =", ";a=", ";\x01", ";a\nb", ";a\rb", " x", ";é"]),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..4))
            .prop_map(|(p, v)| Mutation::Insert(p, v)),
        (any::<usize>(), 1usize..4).prop_map(|(p, n)| Mutation::Delete(p, n)),
    ]
}

fn body_spec() -> impl Strategy<Value = BodySpec> {
    let chunk = (
        prop::collection::vec(
            prop_oneof![4 => b'a'..=b'z', 1 => any::<u8>(), 1 => Just(b'\r'), 1 => Just(b'\n')],
            1..40,
        ),
        size(),
        ext(),
        eol(),
        eol(),
    )
        .prop_map(|(data, size, ext, eol, data_end)| ChunkSpec {
            data,
            size,
            ext,
            eol,
            data_end,
        });
    (
        prop::collection::vec(chunk, 0..6),
        prop::sample::select(vec!["0", "0", "000", "0;done=1", "0 "]),
        prop::collection::vec(
            prop_oneof![
                6 => prop::sample::select(vec!["x-checksum: 42", "X-T: a b ", "grpc-status:0"]),
                1 => prop::sample::select(vec!["bad line", " folded", "x:\x01", ": v", "x y: 1"]),
            ],
            0..3,
        ),
        eol(),
        eol(),
        prop_oneof![4 => Just(""), 1 => Just("HTTP/1.1 200 OK\r\n"), 1 => Just("\r\n")],
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(mutation(), 1..3)],
    )
        .prop_map(
            |(chunks, last, trailers, trailer_eol, end, extra, muts)| BodySpec {
                chunks,
                last,
                trailers,
                trailer_eol,
                end,
                extra,
                muts,
            },
        )
}

fn encode(spec: &BodySpec) -> Vec<u8> {
    let mut out = Vec::new();
    for c in &spec.chunks {
        let size = match &c.size {
            Size::Exact { upper, zeros } => {
                let hex = if *upper {
                    format!("{:X}", c.data.len())
                } else {
                    format!("{:x}", c.data.len())
                };
                format!("{}{hex}", "0".repeat(*zeros))
            }
            Size::Off(d) => format!("{:x}", (c.data.len() as i64 + *d as i64).max(1)),
            Size::Literal(s) => s.to_string(),
        };
        out.extend_from_slice(size.as_bytes());
        out.extend_from_slice(c.ext.as_bytes());
        out.extend_from_slice(c.eol.as_bytes());
        out.extend_from_slice(&c.data);
        out.extend_from_slice(c.data_end.as_bytes());
    }
    out.extend_from_slice(spec.last.as_bytes());
    out.extend_from_slice(b"\r\n");
    for t in &spec.trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(spec.trailer_eol.as_bytes());
    }
    out.extend_from_slice(spec.end.as_bytes());
    out.extend_from_slice(spec.extra.as_bytes());
    fuzz::mutate(&mut out, &spec.muts, 0..0);
    out
}

/// The reference's reading of a valid body.
fn reference_done(b: &[u8]) -> (fuzz::Decoded, Option<&'static str>) {
    match read_chunked(b) {
        Chunked::Done(d, l) => (d, l),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(b)),
    }
}

/// The reference itself, on the grammar's corners.
#[test]
fn the_reference_reads_the_grammar() {
    let (d, l) = reference_done(
        b"5;a=1;b=\"x y\"\r\nhello\r\n00006 ; c\r\n world\r\n0\r\nX-T: 1 \r\n\r\nNEXT",
    );
    assert_eq!(d.data, b"hello world");
    assert_eq!(d.trailers, vec![("x-t".to_string(), b"1".to_vec())]);
    assert_eq!(
        &b"5;a=1;b=\"x y\"\r\nhello\r\n00006 ; c\r\n world\r\n0\r\nX-T: 1 \r\n\r\nNEXT"[d.len..],
        b"NEXT"
    );
    assert_eq!(l, None);
    assert_eq!(
        reference_done(b"5 \r\nhello\r\n0\r\n\r\n").1,
        Some("whitespace after the chunk size")
    );
    assert_eq!(
        reference_done(b"5;\r\nhello\r\n0\r\n\r\n").1,
        Some("chunk extension outside the grammar")
    );
    for bad in [
        &b"zz\r\n"[..],
        b"+5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"ffffffffffffffffff\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"0\r\n folded: x\r\n\r\n",
    ] {
        assert!(
            matches!(read_chunked(bad), Chunked::Invalid(_)),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    for short in [
        &b""[..],
        b"5",
        b"5\r",
        b"5\r\nhel",
        b"5\r\nhello\r",
        b"0\r\n",
        b"0\r\nx: 1\r\n",
    ] {
        assert_eq!(read_chunked(short), Chunked::Incomplete, "{short:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Driving the real decoder.

/// What veer's decoder made of a whole input.
#[derive(Debug, PartialEq)]
enum Got {
    /// The body ended: its data, trailers, whether the connection went back to the pool
    /// (only right when nothing followed the body in what had arrived), and how much had.
    Done {
        data: Vec<u8>,
        trailers: Vec<(String, Vec<u8>)>,
        reused: bool,
        fed: usize,
    },
    /// Still waiting for more (at the backend's close this is an error).
    Waiting {
        data_len: usize,
    },
    Error {
        data_len: usize,
        message: String,
    },
}

/// A fresh fast-path chunked body whose connection's buffer the test fills by hand, so every
/// split point is exact: a response head with `transfer-encoding: chunked` and nothing else,
/// on a connection to a backend that sends nothing more.
struct Harness {
    _backend: crate::upstream::testing::Backend,
    client: crate::upstream::http_client::UpstreamClient,
}

impl Harness {
    async fn new() -> Self {
        let b =
            backend(|_| Reply::raw("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")).await;
        let c = client(b.addr);
        Harness {
            _backend: b,
            client: c,
        }
    }

    async fn body(&self) -> UpstreamBodyInline {
        let (resp, _) = self.client.send(get(&self.client)).await.expect("exchange");
        match resp.into_body() {
            UpstreamBody::Inline(b) => {
                assert!(matches!(b.state, State::Chunked(Chunk::Size)));
                assert!(b.conn.as_ref().is_some_and(|c| c.buf.is_empty()));
                b
            }
            other => panic!("not the fast path: {other:?}"),
        }
    }

    /// Feed `input` in `pieces` (split points, ascending), polling to a standstill after each.
    async fn decode(&self, input: &[u8], splits: &[usize]) -> Got {
        let mut body = self.body().await;
        let idle_before = self.client.conns.idle_count();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let (mut data, mut trailers) = (Vec::new(), Vec::new());
        let mut from = 0;
        for &to in splits.iter().chain(std::iter::once(&input.len())) {
            let to = to.clamp(from, input.len());
            if let Some(c) = body.conn.as_mut() {
                c.buf.extend_from_slice(&input[from..to]);
            }
            from = to;
            loop {
                match Pin::new(&mut body).poll_frame(&mut cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        return Got::Done {
                            data,
                            trailers,
                            reused: self.client.conns.idle_count() > idle_before,
                            fed: from,
                        }
                    }
                    Poll::Ready(Some(Ok(f))) => match f.into_data() {
                        Ok(d) => {
                            assert!(!d.is_empty(), "an empty data frame");
                            data.extend_from_slice(&d)
                        }
                        Err(f) => {
                            let t = f.into_trailers().expect("data or trailers");
                            assert!(trailers.is_empty(), "two trailer frames");
                            trailers = t
                                .iter()
                                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                                .collect();
                        }
                    },
                    Poll::Ready(Some(Err(e))) => {
                        // After an error the body is over.
                        assert!(matches!(
                            Pin::new(&mut body).poll_frame(&mut cx),
                            Poll::Ready(None)
                        ));
                        return Got::Error {
                            data_len: data.len(),
                            message: e.to_string(),
                        };
                    }
                }
            }
        }
        Got::Waiting {
            data_len: data.len(),
        }
    }
}

/// Does veer's reading agree with the reference's?
fn check_chunked(input: &[u8], got: &Got) -> Result<(), String> {
    let data_len = match got {
        Got::Done { data, .. } => data.len(),
        Got::Waiting { data_len } | Got::Error { data_len, .. } => *data_len,
    };
    if data_len > input.len() {
        return Err(format!("{data_len} bytes decoded from {}", input.len()));
    }
    match (read_chunked(input), got) {
        (
            Chunked::Done(want, _),
            Got::Done {
                data,
                trailers,
                reused,
                fed,
            },
        ) => {
            if *data != want.data {
                return Err(format!(
                    "data {:?}, want {:?}",
                    lossy(data),
                    lossy(&want.data)
                ));
            }
            if *trailers != want.trailers {
                return Err(format!("trailers {trailers:?}, want {:?}", want.trailers));
            }
            // The body ends where the reference says: the connection is clean for the next
            // response exactly when nothing after the body had arrived yet.
            let nothing_after = want.len == *fed;
            if *reused != nothing_after {
                return Err(format!(
                    "connection reused: {reused}, with {fed} bytes in and the body {} long",
                    want.len
                ));
            }
            Ok(())
        }
        // veer's own limits (chunk-size line and trailer section, 4 KiB each).
        (Chunked::Done(want, _), Got::Error { .. })
            if want.longest_size_line > MAX_LINE || want.trailer_bytes > MAX_LINE =>
        {
            Ok(())
        }
        // A lenient reading is one a strict reader may refuse.
        (Chunked::Done(_, Some(_)), Got::Error { .. } | Got::Waiting { .. }) => Ok(()),
        (Chunked::Done(want, None), other) => Err(format!(
            "valid body ({} bytes) not read: {other:?}",
            want.data.len()
        )),
        (Chunked::Incomplete, Got::Waiting { .. } | Got::Error { .. }) => Ok(()),
        (Chunked::Invalid(_), Got::Waiting { .. } | Got::Error { .. }) => Ok(()),
        (want, got @ Got::Done { .. }) => Err(format!("{want:?}, but veer read {got:?}")),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn check_all_splits(h: &Harness, input: &[u8], random: &[Vec<usize>]) -> Result<(), String> {
    let whole = h.decode(input, &[]).await;
    check_chunked(input, &whole).map_err(|e| format!("unsplit: {e}"))?;
    let mut splits: Vec<Vec<usize>> = (1..input.len()).map(|k| vec![k]).collect();
    for r in random {
        let mut r: Vec<usize> = r.iter().map(|&p| p % (input.len() + 1)).collect();
        r.sort_unstable();
        splits.push(r);
    }
    for s in &splits {
        let got = h.decode(input, s).await;
        check_chunked(input, &got).map_err(|e| format!("split at {s:?}: {e}"))?;
        // Where the data stops may differ with the split; what was read may not.
        let same = match (&whole, &got) {
            (
                Got::Done { data, trailers, .. },
                Got::Done {
                    data: d2,
                    trailers: t2,
                    ..
                },
            ) => data == d2 && trailers == t2,
            (Got::Done { .. }, _) | (_, Got::Done { .. }) => false,
            _ => true,
        };
        if !same {
            return Err(format!("split at {s:?}: {got:?}, unsplit: {whole:?}"));
        }
    }
    Ok(())
}

fn run_async<T: std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    check: impl Fn(&tokio::runtime::Runtime, T) -> Result<(), String>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runner().run(&strategy, |input| {
        check(&rt, input).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn chunked_bodies_decode_as_the_reference_reads_them_at_every_split() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(Harness::new());
    let strategy = (
        body_spec(),
        prop::collection::vec(prop::collection::vec(any::<usize>(), 2..5), 0..3),
    );
    let result = runner().run(&strategy, |(spec, random)| {
        let input = encode(&spec);
        rt.block_on(check_all_splits(&h, &input, &random))
            .map_err(|e| TestCaseError::fail(format!("{e}\ninput: {:?}", lossy(&input))))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn random_bytes_as_a_chunked_body_never_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(Harness::new());
    let strategy = (
        prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(fuzz::INTERESTING.to_vec()),
                2 => b'0'..=b'9',
                1 => b'a'..=b'f',
                1 => any::<u8>(),
            ],
            0..64,
        ),
        prop::collection::vec(any::<usize>(), 0..4),
    );
    let result = runner().run(&strategy, |(input, splits)| {
        let mut splits: Vec<usize> = splits.iter().map(|&p| p % (input.len() + 1)).collect();
        splits.sort_unstable();
        let got = rt.block_on(h.decode(&input, &splits));
        check_chunked(&input, &got)
            .map_err(|e| TestCaseError::fail(format!("{e}\ninput: {:?}", lossy(&input))))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Fixed bodies, each at every split: the reproducers the properties found, and the
/// framing tricks any decoder must get right.
#[tokio::test]
async fn chunked_regressions_at_every_split() {
    let h = Harness::new().await;
    for input in [
        &b"5\r\nhello\r\n0\r\n\r\n"[..],
        b"5;a=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
        b"000005\r\nhello\r\n0000\r\n\r\n",
        b"A\r\n0123456789\r\n0\r\n\r\n",
        b"a\r\n0123456789\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"ffffffffffffffffff\r\nx\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"0\r\nbad line\r\n\r\n",
        b"0\r\n folded: x\r\n\r\n",
        b"zz\r\n",
        // A trailer line ending in a bare LF: the section ends at the first empty line (the
        // decoder once read on to the next CRLF CRLF, into the next response).
        b"0\r\nx-checksum: 42\n\r\n\r\n",
        b"0\r\nx: 1\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ] {
        check_all_splits(&h, input, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}\ninput: {:?}", lossy(input)));
    }
}

// ---------------------------------------------------------------------------------------
// The response head.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadHole {
    ClWithTe,
    SignedContentLength,
    EmptyTeElement,
    Http10CloseAndKeepAlive,
}

/// How a response's body is framed, as RFC 9112 §6.3 reads its head.
#[derive(Debug, Clone, PartialEq)]
enum WantLength {
    Fixed(u64),
    Chunked,
    Close,
    /// Invalid framing: only an error is right.
    Invalid,
    /// A Transfer-Encoding that is not text: reading to the close, or an error.
    CloseOrInvalid,
}

/// The strict reading of a response head: httparse's, with the framing rules on top.
struct WantHead {
    len: usize,
    status: u16,
    version: u8,
    /// Every header as httparse read it (lower-cased name, value bytes).
    headers: Vec<(String, Vec<u8>)>,
    length: WantLength,
    /// Duplicate identical Content-Length lines: an error is also right.
    lenient_length: bool,
    keep_alive: bool,
    holes: Vec<HeadHole>,
}

fn list(values: &[&[u8]]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn want_head(buf: &[u8]) -> Result<Option<WantHead>, ()> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut hs);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = r.code.unwrap();
    if status < 100 {
        return Err(());
    }
    let version = r.version.unwrap();
    let headers: Vec<(String, Vec<u8>)> = r
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let all = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let mut holes = Vec::new();
    let te = all("transfer-encoding");
    let cl = all("content-length");
    let mut lenient_length = false;
    let length = if !te.is_empty() && version == 0 {
        // Transfer-Encoding in an HTTP/1.0 answer: invalid (RFC 9112 §6.1), a 502.
        WantLength::Invalid
    } else if !te.is_empty() {
        if !cl.is_empty() {
            holes.push(HeadHole::ClWithTe);
        }
        let codings = list(&te);
        let text = te
            .iter()
            .all(|v| v.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t'));
        if codings.last().is_some_and(|c| c.is_empty()) {
            holes.push(HeadHole::EmptyTeElement);
        }
        let codings: Vec<&String> = codings.iter().filter(|c| !c.is_empty()).collect();
        if !text {
            WantLength::CloseOrInvalid
        } else if codings.last().is_some_and(|c| *c == "chunked") {
            WantLength::Chunked
        } else {
            WantLength::Close
        }
    } else if !cl.is_empty() {
        let values = list(&cl);
        let parsed: Vec<Option<u64>> = values
            .iter()
            .map(|v| {
                if v.starts_with('+') && v.len() > 1 && v[1..].bytes().all(|b| b.is_ascii_digit()) {
                    holes.push(HeadHole::SignedContentLength);
                }
                (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| v.parse().ok())
                    .flatten()
            })
            .collect();
        match parsed.first() {
            Some(Some(n)) if parsed.iter().all(|p| *p == Some(*n)) => {
                lenient_length = parsed.len() > 1;
                WantLength::Fixed(*n)
            }
            _ => WantLength::Invalid,
        }
    } else {
        WantLength::Close
    };
    let conn = list(&all("connection"));
    if version == 0 && conn.iter().any(|t| t == "close") && conn.iter().any(|t| t == "keep-alive") {
        holes.push(HeadHole::Http10CloseAndKeepAlive);
    }
    // A backend that framed an answer both ways is not trusted with another request.
    let both_framings = !te.is_empty() && !cl.is_empty();
    let keep_alive = !both_framings
        && if version == 1 {
            !conn.iter().any(|t| t == "close")
        } else {
            conn.iter().any(|t| t == "keep-alive") && !conn.iter().any(|t| t == "close")
        };
    Ok(Some(WantHead {
        len,
        status,
        version,
        headers,
        length,
        lenient_length,
        keep_alive,
        holes,
    }))
}

/// The headers veer keeps of a head it read: all but `Keep-Alive`, and `Connection` when it
/// only says close or keep-alive (read by the fast path itself). A `Connection` that is not
/// text is left out of the comparison: hop-by-hop either way.
fn kept(headers: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(k, v)| {
            if k == "connection" && !is_text(v) {
                return false;
            }
            if k == "keep-alive" {
                return false;
            }
            if k == "connection" {
                return !list(&[v]).iter().all(|t| t == "close" || t == "keep-alive");
            }
            true
        })
        .cloned()
        .collect()
}

fn is_text(v: &[u8]) -> bool {
    v.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
}

fn check_head(buf: &[u8]) -> Result<(), String> {
    let got = try_parse(&BytesMut::from(buf));
    let want = want_head(buf);
    match (want, got) {
        (Err(()), Err(_)) | (Ok(None), Ok(None)) => Ok(()),
        (Ok(None), Err(e)) if buf.len() > MAX_HEAD => {
            let _ = e;
            Ok(())
        }
        (Ok(Some(w)), Err(e)) => {
            let known_hole = w
                .holes
                .iter()
                .any(|h| KNOWN_HOLES_FIXED_ELSEWHERE.contains(h));
            if matches!(w.length, WantLength::Invalid | WantLength::CloseOrInvalid)
                || w.lenient_length
                || known_hole
                // Both framings: refusing the answer is allowed (RFC 9112 §6.3), veer does
                // when the length is also invalid.
                || w.holes.contains(&HeadHole::ClWithTe)
            {
                Ok(())
            } else {
                Err(format!("valid head refused: {e}"))
            }
        }
        (Ok(Some(w)), Ok(Some((len, resp, framing)))) => {
            if w.holes
                .iter()
                .any(|h| KNOWN_HOLES_FIXED_ELSEWHERE.contains(h))
            {
                return Ok(());
            }
            if len != w.len {
                return Err(format!("head length {len}, httparse {}", w.len));
            }
            if resp.status().as_u16() != w.status {
                return Err(format!("status {}, want {}", resp.status(), w.status));
            }
            let version = if w.version == 1 {
                Version::HTTP_11
            } else {
                Version::HTTP_10
            };
            if resp.version() != version {
                return Err(format!("version {:?}", resp.version()));
            }
            let mut got_headers: Vec<(String, Vec<u8>)> = resp
                .headers()
                .iter()
                .filter(|(k, v)| *k != "connection" || is_text(v.as_bytes()))
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect();
            // A HeaderMap groups values by name (in order within a name).
            let mut want_headers = kept(&w.headers);
            // Content-Length beside Transfer-Encoding means nothing (framing is chunked) and
            // the relay's hop-by-hop pass drops it (proxy::headers): not compared.
            if w.holes.contains(&HeadHole::ClWithTe) {
                want_headers.retain(|(k, _)| k != "content-length");
                got_headers.retain(|(k, _)| k != "content-length");
            }
            // The same length repeated is relayed once.
            if let (true, WantLength::Fixed(n)) = (w.lenient_length, &w.length) {
                want_headers.retain(|(k, _)| k != "content-length");
                want_headers.push(("content-length".into(), n.to_string().into_bytes()));
            }
            let by_name = |h: &[(String, Vec<u8>)]| {
                let mut m: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
                for (k, v) in h {
                    m.entry(k.clone()).or_default().push(v.clone());
                }
                m
            };
            if by_name(&got_headers) != by_name(&want_headers) {
                return Err(format!("headers {got_headers:?}, want {want_headers:?}"));
            }
            let got_length = match framing.length {
                Length::Fixed(n) => WantLength::Fixed(n),
                Length::Chunked => WantLength::Chunked,
                Length::Close => WantLength::Close,
            };
            let length_ok = got_length == w.length
                || (w.length == WantLength::CloseOrInvalid && got_length == WantLength::Close);
            if !length_ok {
                return Err(format!("framing {got_length:?}, want {:?}", w.length));
            }
            if framing.keep_alive != w.keep_alive {
                return Err(format!(
                    "keep-alive {}, want {}",
                    framing.keep_alive, w.keep_alive
                ));
            }
            Ok(())
        }
        (Err(()), Ok(Some(_))) => Err("httparse refuses what veer read".into()),
        (Ok(Some(_)), Ok(None)) => Err("a whole head left waiting".into()),
        (Err(()), Ok(None)) => Ok(()), // waits for more; the head is refused once complete
        (Ok(None), Ok(Some(_))) => Err("a partial head read as whole".into()),
        (Ok(None), Err(e)) => Err(format!("a partial head refused: {e}")),
    }
}

/// Every prefix of a head is still waiting, or already refused when the whole is: never a
/// different reading.
fn check_head_prefixes(buf: &[u8]) -> Result<(), String> {
    check_head(buf).map_err(|e| format!("whole: {e}"))?;
    let whole = try_parse(&BytesMut::from(buf));
    let whole_len = match &whole {
        Ok(Some((len, _, _))) => Some(*len),
        _ => None,
    };
    for k in 0..buf.len() {
        let part = try_parse(&BytesMut::from(&buf[..k]));
        match (&part, &whole) {
            (Ok(None), _) => {}
            (Err(_), Err(_)) => {}
            (Ok(Some((len, _, _))), _) if Some(*len) == whole_len => {}
            (p, _) => {
                return Err(format!(
                    "prefix of {k} bytes: {:?}, whole: {:?}",
                    p.as_ref()
                        .map(|o| o.as_ref().map(|x| x.0))
                        .map_err(|e| e.to_string()),
                    whole
                        .as_ref()
                        .map(|o| o.as_ref().map(|x| x.0))
                        .map_err(|e| e.to_string())
                ))
            }
        }
    }
    Ok(())
}

fn head_spec() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        4 => prop::sample::select(vec![
            "Content-Length: 5", "content-length: 0", "Content-Length: 5, 5",
            "Content-Length: +5", "Content-Length: -1", "Content-Length: 0x5",
            "Content-Length: 99999999999999999999", "Content-Length:", "Content-Length:  12 ",
            "Transfer-Encoding: chunked", "Transfer-Encoding: Chunked ", "Transfer-Encoding: gzip",
            "Transfer-Encoding: gzip, chunked", "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding: chunked,", "Transfer-Encoding: identity", "Transfer-Encoding:",
            "Connection: close", "Connection: keep-alive", "Connection: Keep-Alive, x-hop",
            "Connection: close, keep-alive", "Keep-Alive: timeout=5", "x-hop: 1",
        ]),
        3 => prop::sample::select(vec![
            "Server: test", "X-Value: a b\tc", "Set-Cookie: a=1", "Set-Cookie: b=2",
            "X-Empty:", "X-Obs: caf\u{e9}", "Date: Mon, 01 Jan 2024 00:00:00 GMT",
        ]),
        1 => prop::sample::select(vec![
            "Bad Header: x", " folded", "X-Nul: a\0b", "X-Ctl: \x01", ":no-name",
            "X-Del: \x7f", "X-CR: a\rb", "x\tname: y",
        ]),
    ];
    (
        prop::sample::select(vec![
            "HTTP/1.1 200 OK",
            "HTTP/1.0 200 OK",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 404 ",
            "HTTP/1.1 999 Odd",
            "HTTP/1.1 099 Low",
            "HTTP/1.1 20 Short",
            "HTTP/2 200 OK",
            "HTTP/1.1  200 OK",
            "http/1.1 200 OK",
            "HTTP/1.1 200",
            "HTTP/1.1 500 Server Error",
        ]),
        prop::collection::vec((header, eol()), 0..8),
        eol(),
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(mutation(), 1..3)],
    )
        .prop_map(|(status, headers, end, muts)| {
            let mut out = status.as_bytes().to_vec();
            out.extend_from_slice(b"\r\n");
            for (h, e) in headers {
                out.extend_from_slice(h.as_bytes());
                out.extend_from_slice(e.as_bytes());
            }
            out.extend_from_slice(end.as_bytes());
            out.extend_from_slice(b"body");
            fuzz::mutate(&mut out, &muts, 0..0);
            out
        })
}

#[test]
fn response_heads_read_as_httparse_reads_them_at_every_prefix() {
    run_async(head_spec(), |_, buf| {
        check_head_prefixes(&buf).map_err(|e| format!("{e}\nhead: {:?}", lossy(&buf)))
    });
}

#[test]
fn random_bytes_as_a_response_head_never_panic() {
    let bytes = prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(fuzz::INTERESTING.to_vec()),
            3 => prop::sample::select(b"HTTP/1. 2004OKContent-Length:chunked".to_vec()),
            1 => any::<u8>(),
        ],
        0..96,
    );
    run_async(bytes, |_, buf| {
        check_head(&buf).map_err(|e| format!("{e}\nhead: {:?}", lossy(&buf)))
    });
}

#[test]
fn head_regressions() {
    for head in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nx-hop: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        // One per entry of KNOWN_HOLES_FIXED_ELSEWHERE (checked once the entry is removed).
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ] {
        check_head_prefixes(head).unwrap_or_else(|e| panic!("{e}\nhead: {:?}", lossy(head)));
    }
}
