//! Stable stand-ins for fuzzing (cargo-fuzz needs nightly): byte mutations, and a strict
//! reader of the chunked transfer coding (RFC 9112 §7.1), the reference the property tests
//! compare veer's decoders with (the request side through hyper, tests/prop_request_head.rs;
//! the upstream fast path, src/upstream/h1/props.rs), and the runner they share. Included by
//! path from the library's unit tests too.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size   = 1*HEXDIG
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext    = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! ```
//!
//! Where the RFC lets a recipient be lenient, the reading a lenient recipient would make is
//! given with the reason (a strict recipient refuses it; both are right).

#![allow(dead_code)]

/// A chunked body read to its end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    pub data: Vec<u8>,
    /// Trailer fields: lower-cased name, value without surrounding whitespace.
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Bytes of the input the body took (what follows is the next message).
    pub len: usize,
    /// The longest chunk-size line (without its CRLF), and the trailer section's length:
    /// a decoder may refuse a body over its own limits.
    pub longest_size_line: usize,
    pub trailer_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunked {
    /// Valid; with `Some(reason)`, only a lenient reader reads it (as given): a strict one
    /// refuses it.
    Done(Decoded, Option<&'static str>),
    /// The input ends inside the body.
    Incomplete,
    /// Invalid framing, whatever the reader.
    Invalid(&'static str),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Does `ext` (what follows the size digits, up to the CRLF) match `chunk-ext`?
fn ext_is_strict(ext: &[u8]) -> bool {
    let mut i = 0;
    let n = ext.len();
    let skip_ws = |i: &mut usize| {
        while *i < n && is_ws(ext[*i]) {
            *i += 1;
        }
    };
    loop {
        // BWS only before ";" (or "="): whitespace at the end is outside the grammar.
        let ws = i;
        skip_ws(&mut i);
        if i == n {
            return ws == i;
        }
        if ext[i] != b';' {
            return false;
        }
        i += 1;
        skip_ws(&mut i);
        let start = i;
        while i < n && is_tchar(ext[i]) {
            i += 1;
        }
        if i == start {
            return false; // an empty extension name
        }
        let mut j = i;
        skip_ws(&mut j);
        if j < n && ext[j] == b'=' {
            i = j + 1;
            skip_ws(&mut i);
            if i < n && ext[i] == b'"' {
                // quoted-string: qdtext / quoted-pair
                i += 1;
                loop {
                    if i >= n {
                        return false;
                    }
                    match ext[i] {
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\\' if i + 1 < n && (ext[i + 1] == b'\t' || ext[i + 1] >= 0x20) => i += 2,
                        b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
                        _ => return false,
                    }
                }
            } else {
                let start = i;
                while i < n && is_tchar(ext[i]) {
                    i += 1;
                }
                if i == start {
                    return false;
                }
            }
        }
        // BWS before the next ";" (or the end) is skipped at the top of the loop; anything
        // else right after a name or value is not part of the grammar.
        if i < n && !is_ws(ext[i]) && ext[i] != b';' {
            return false;
        }
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

/// One trailer field line (without its line ending), strictly.
fn trailer_field(line: &[u8]) -> Option<(String, Vec<u8>)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80)
    {
        return None;
    }
    let v = trim_ws(value);
    Some((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        v.to_vec(),
    ))
}

pub fn trim_ws(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Read a chunked body from the start of `buf`.
pub fn read_chunked(buf: &[u8]) -> Chunked {
    let mut out = Decoded::default();
    let mut lenient: Option<&'static str> = None;
    let mut at = 0;
    loop {
        // chunk-size [ chunk-ext ] CRLF
        let Some(eol) = find_crlf(buf, at) else {
            // A bare LF or CR (no CRLF yet) inside the size line is wrong whatever follows.
            let rest = &buf[at..];
            return match rest.iter().position(|&b| b == b'\n') {
                Some(_) => Chunked::Invalid("bare LF in a chunk-size line"),
                None if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                    Chunked::Invalid("chunk-size without digits")
                }
                None if rest.iter().any(|&b| !size_line_byte(b)) => {
                    Chunked::Invalid("bad byte in a chunk-size line")
                }
                None => Chunked::Incomplete,
            };
        };
        let line = &buf[at..eol];
        out.longest_size_line = out.longest_size_line.max(line.len());
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Chunked::Invalid("chunk-size without digits");
        }
        let mut size: u64 = 0;
        for &d in &line[..digits] {
            let v = (d as char).to_digit(16).unwrap() as u64;
            size = match size.checked_mul(16).and_then(|s| s.checked_add(v)) {
                Some(s) => s,
                None => return Chunked::Invalid("chunk-size overflows"),
            };
        }
        let ext = &line[digits..];
        if ext.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Chunked::Invalid("bare CR or LF in a chunk-size line");
        }
        if !ext_is_strict(ext) {
            // Extensions mean nothing to a proxy: a reader that skips to the CRLF reads the
            // same body (hyper does; RFC 9112 §7.1.1 says to ignore unknown ones).
            if ext.iter().all(|&b| is_ws(b)) {
                lenient.get_or_insert("whitespace after the chunk size");
            } else if ext.iter().all(|&b| b == b'\t' || b >= 0x20) && ext[0] != b'\x7f' {
                let first = trim_ws(ext).first().copied();
                if first != Some(b';') {
                    return Chunked::Invalid("garbage after the chunk size");
                }
                lenient.get_or_insert("chunk extension outside the grammar");
            } else if trim_ws(ext).first() == Some(&b';') {
                // A control byte inside an extension: the same holds, the CRLF still ends
                // the line (hyper skips it; veer re-frames the body, so the backend never
                // sees the extension).
                lenient.get_or_insert("control byte in a chunk extension");
            } else {
                return Chunked::Invalid("control byte after the chunk size");
            }
        }
        at = eol + 2;
        if size == 0 {
            break;
        }
        // chunk-data CRLF
        let Ok(size) = usize::try_from(size) else {
            return Chunked::Incomplete;
        };
        let Some(end) = at.checked_add(size) else {
            return Chunked::Incomplete;
        };
        if buf.len() < end {
            return Chunked::Incomplete;
        }
        out.data.extend_from_slice(&buf[at..end]);
        at = end;
        match buf.get(at..at + 2) {
            Some(b"\r\n") => at += 2,
            Some(_) => return Chunked::Invalid("chunk data not followed by CRLF"),
            None if buf.get(at).is_some_and(|&b| b != b'\r') => {
                return Chunked::Invalid("chunk data not followed by CRLF")
            }
            None => return Chunked::Incomplete,
        }
    }
    // trailer-section CRLF
    let trailers_start = at;
    loop {
        let rest = &buf[at..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if rest.contains(&b'\r') && !rest.ends_with(b"\r") {
                return Chunked::Invalid("bare CR in the trailer section");
            }
            return Chunked::Incomplete;
        };
        let (line, bare_lf) = match rest[..lf].strip_suffix(b"\r") {
            Some(l) => (l, false),
            None => (&rest[..lf], true),
        };
        if line.contains(&b'\r') {
            return Chunked::Invalid("bare CR in the trailer section");
        }
        if bare_lf {
            // RFC 9112 §2.2: a recipient MAY take a lone LF as the end of a field line.
            lenient.get_or_insert("bare LF in the trailer section");
        }
        at += lf + 1;
        if line.is_empty() {
            break;
        }
        if is_ws(line[0]) {
            return Chunked::Invalid("obs-fold in the trailer section");
        }
        match trailer_field(line) {
            Some(f) => out.trailers.push(f),
            None => return Chunked::Invalid("malformed trailer field"),
        }
    }
    out.trailer_bytes = at - trailers_start;
    out.len = at;
    Chunked::Done(out, lenient)
}

/// One random edit of a byte string; positions are taken modulo the length.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    Flip(usize, u8),
    /// Overwrite a byte with one that means something to HTTP.
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

/// Bytes that change how HTTP/1.1 reads a message.
pub const INTERESTING: &[u8] = b"\r\n\0 \t:;,=\"\x7f\x80\xff0aZ%/.\\#?@";

/// Apply `muts` to `bytes`, leaving `keep` (a byte range) as it is.
pub fn mutate(bytes: &mut Vec<u8>, muts: &[Mutation], keep: std::ops::Range<usize>) {
    let mut keep = keep;
    for m in muts {
        // Positions outside `keep`: [0, keep.start) and [keep.end, len].
        let free = bytes.len() - keep.len();
        let place = |p: usize, inclusive: bool| {
            let n = free + usize::from(inclusive);
            if n == 0 {
                return None;
            }
            let p = p % n;
            Some(if p < keep.start { p } else { p + keep.len() })
        };
        match m {
            Mutation::Flip(p, bit) => {
                if let Some(i) = place(*p, false) {
                    bytes[i] ^= 1 << (bit % 8);
                }
            }
            Mutation::Set(p, b) => {
                if let Some(i) = place(*p, false) {
                    bytes[i] = INTERESTING[*b as usize % INTERESTING.len()];
                }
            }
            Mutation::Insert(p, ins) => {
                if let Some(i) = place(*p, true) {
                    bytes.splice(i..i, ins.iter().copied());
                    if i <= keep.start {
                        keep = keep.start + ins.len()..keep.end + ins.len();
                    }
                }
            }
            Mutation::Delete(p, n) => {
                if let Some(i) = place(*p, false) {
                    // Never into `keep`.
                    let limit = if i < keep.start {
                        keep.start
                    } else {
                        bytes.len()
                    };
                    let j = (i + (*n).max(1)).min(limit);
                    bytes.drain(i..j);
                    if i < keep.start {
                        keep = keep.start - (j - i)..keep.end - (j - i);
                    }
                }
            }
        }
    }
}

/// Could this byte be part of a chunk-size line still being received?
fn size_line_byte(b: u8) -> bool {
    b == b'\t' || b == b'\r' || (b >= 0x20 && b != 0x7f)
}

/// Encode `data` as chunks of the given sizes (the last chunk takes what is left).
pub fn encode(data: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    for &s in sizes {
        if rest.is_empty() {
            break;
        }
        let n = s.clamp(1, rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
        out.extend_from_slice(rest);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A proptest runner for `PROPTEST_CASES` cases (default `default_cases`); reproducers go into
/// the reports and the regression tests, not into files.
pub fn runner(default_cases: u32) -> proptest::test_runner::TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        // A failing case over sockets can take seconds per shrink step (each waits out its
        // timeouts); unbounded shrinking then looks like a hang. Report within a minute.
        max_shrink_time: 60_000,
        ..proptest::test_runner::Config::default()
    })
}
