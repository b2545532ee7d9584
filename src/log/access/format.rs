//! The access log's lines, formatted by hand: the same bytes serde_json and `Display` gave, at
//! a fraction of the cost (no `fmt` machinery, no String per field, no UTF-8 round trip for
//! plain ASCII), and the time strings made once a second.

use super::{protocol, Entry, Text};
use http::Version;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------
// Formatting by hand: the same bytes serde_json and `Display` gave, at a fraction of the
// cost (no `fmt` machinery, no String per field, no UTF-8 round trip for plain ASCII).

/// A decimal number, two digits at a time.
pub(super) fn num(out: &mut Vec<u8>, mut v: u64) {
    const PAIRS: &[u8; 200] =
        b"00010203040506070809101112131415161718192021222324252627282930313233343536373839\
        40414243444546474849505152535455565758596061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    // Most numbers logged (statuses, attempts, small sizes) have three digits or fewer.
    if v < 10 {
        out.push(b'0' + v as u8);
        return;
    }
    if v < 100 {
        let d = v as usize * 2;
        out.extend_from_slice(&PAIRS[d..d + 2]);
        return;
    }
    if v < 1000 {
        let d = (v % 100) as usize * 2;
        out.extend_from_slice(&[b'0' + (v / 100) as u8, PAIRS[d], PAIRS[d + 1]]);
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

/// Milliseconds with microsecond precision, as the shortest decimal that reads back as
/// `micros / 1000.0` (what ryu and `Display` print for it): `1.5`, `0.012`, `3`. `json`
/// writes a whole number as `3.0`, as serde_json does.
pub(super) fn millis(out: &mut Vec<u8>, d: Duration, json: bool) {
    // In u64 (as_micros is u128, dearer): exact for the next 584,000 years.
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()));
    num(out, micros / 1000);
    let frac = micros % 1000;
    if frac == 0 {
        if json {
            out.extend_from_slice(b".0");
        }
        return;
    }
    // Three places, trailing zeros dropped.
    let places = [
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let len = if frac % 100 == 0 {
        2
    } else if frac % 10 == 0 {
        3
    } else {
        4
    };
    out.extend_from_slice(&places[..len]);
}

/// Each byte's decimal digits (their count first), for IPv4 addresses.
const fn octets() -> [[u8; 4]; 256] {
    let mut t = [[0u8; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let n = i as u8;
        t[i] = if n >= 100 {
            [3, b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10]
        } else if n >= 10 {
            [2, b'0' + n / 10, b'0' + n % 10, 0]
        } else {
            [1, b'0' + n, 0, 0]
        };
        i += 1;
    }
    t
}

static OCTETS: [[u8; 4]; 256] = octets();

pub(super) fn ip(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            // Assembled on the stack and copied once.
            let mut b = [0u8; 16];
            let mut n = 0;
            for (k, o) in v4.octets().into_iter().enumerate() {
                if k > 0 {
                    b[n] = b'.';
                    n += 1;
                }
                let t = &OCTETS[usize::from(o)];
                b[n..n + 3].copy_from_slice(&t[1..]);
                n += usize::from(t[0]);
            }
            out.extend_from_slice(&b[..n]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

pub(super) const LO: u64 = 0x0101_0101_0101_0101;
pub(super) const HI: u64 = 0x8080_8080_8080_8080;

/// Does any byte of `w` equal `b`? (Exact about whether one does, the classic SWAR test.)
pub(super) fn has_byte(w: u64, b: u8) -> bool {
    let x = w ^ (LO * u64::from(b));
    x.wrapping_sub(LO) & !x & HI != 0
}

/// Does any byte of `w` lie below 0x20 (a control byte)?
pub(super) fn has_control(w: u64) -> bool {
    w.wrapping_sub(LO * 0x20) & !w & HI != 0
}

/// Bytes that stand in a JSON string as they are: all but `"`, `\` and control bytes.
pub(super) fn json_plain(b: u8) -> bool {
    b >= 0x20 && b != b'"' && b != b'\\'
}

/// A word with a byte that a JSON string must escape, or beyond ASCII.
fn json_unplain(w: u64) -> bool {
    has_control(w) || w & HI != 0 || has_byte(w, b'"') || has_byte(w, b'\\')
}

/// How many leading bytes of `s` are plain in a JSON string and ASCII (so copied as
/// they are): eight at a time (the last eight overlapping the ones before), then one by one.
pub(super) fn plain_ascii(s: &[u8]) -> usize {
    let mut n = 0;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        if json_unplain(u64::from_le_bytes(w.try_into().expect("eight bytes"))) {
            break;
        }
        n += 8;
    }
    if n < s.len() && s.len() >= 8 && n + 8 > s.len() {
        let last = &s[s.len() - 8..];
        if !json_unplain(u64::from_le_bytes(last.try_into().expect("eight bytes"))) {
            return s.len();
        }
    }
    n + s[n..]
        .iter()
        .position(|&b| !json_plain(b) || b >= 0x80)
        .unwrap_or(s.len() - n)
}

/// `s` as a JSON string (quoted), escaped as serde_json escapes it; bytes that are not
/// UTF-8 become U+FFFD, as `String::from_utf8_lossy` makes them.
pub fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    json_inner(out, s);
    out.push(b'"');
}

/// [`json_str`] without the quotes.
fn json_inner(out: &mut Vec<u8>, s: &[u8]) {
    let plain = plain_ascii(s);
    out.extend_from_slice(&s[..plain]);
    let rest = &s[plain..];
    if !rest.is_empty() {
        if rest.is_ascii() {
            json_escape(out, rest);
        } else {
            for chunk in rest.utf8_chunks() {
                json_escape(out, chunk.valid().as_bytes());
                if !chunk.invalid().is_empty() {
                    out.extend_from_slice("\u{FFFD}".as_bytes());
                }
            }
        }
    }
}

/// Valid UTF-8, escaped: runs of plain bytes are copied whole, eight bytes checked at a time.
pub(super) fn json_escape(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (mut i, mut run) = (0, 0);
    while i < s.len() {
        while let Some(w) = s.get(i..i + 8) {
            let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
            if has_control(w) || has_byte(w, b'"') || has_byte(w, b'\\') {
                break;
            }
            i += 8;
        }
        let Some(&b) = s.get(i) else { break };
        if !json_plain(b) {
            out.extend_from_slice(&s[run..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                _ => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]),
            }
            run = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&s[run..]);
}

/// Names (route, pool, backend, SNI) as written, escaped once: they are the config's (or
/// the connection's) and repeat line after line. Found by the `Arc` (a few per field), held
/// so that its address cannot be reused by another name while it is here.
#[derive(Default)]
pub(super) struct Names {
    fields: [Recent; 4],
}

/// Which of [`Names`]' fields.
#[derive(Clone, Copy)]
enum Of {
    Route = 0,
    Pool = 1,
    Backend = 2,
    Tls = 3,
}

/// The names last seen in one field, escaped.
#[derive(Default)]
struct Recent {
    slots: [Option<(Arc<str>, Vec<u8>)>; 4],
    next: usize,
}

impl Names {
    /// `n` escaped by `esc`, from here when it was escaped before.
    fn put(&mut self, of: Of, out: &mut Vec<u8>, n: &Arc<str>, esc: fn(&mut Vec<u8>, &[u8])) {
        let r = &mut self.fields[of as usize];
        for (k, v) in r.slots.iter().flatten() {
            if Arc::ptr_eq(k, n) {
                out.extend_from_slice(v);
                return;
            }
        }
        let mut v = Vec::with_capacity(n.len() + 2);
        esc(&mut v, n.as_bytes());
        out.extend_from_slice(&v);
        r.slots[r.next] = Some((n.clone(), v));
        r.next = (r.next + 1) % r.slots.len();
    }

    fn json(&mut self, of: Of, out: &mut Vec<u8>, n: &Option<Arc<str>>) {
        match n {
            Some(n) => self.put(of, out, n, json_str),
            None => out.extend_from_slice(b"null"),
        }
    }

    /// ` key=value` as [`field`] writes it.
    fn field(&mut self, of: Of, out: &mut Vec<u8>, k: &str, n: &Option<Arc<str>>) {
        match n {
            Some(n) if !n.is_empty() => {
                out.push(b' ');
                out.extend_from_slice(k.as_bytes());
                out.push(b'=');
                self.put(of, out, n, escape);
            }
            _ => field(out, k, None),
        }
    }
}

/// One JSON object with every field of SPEC.md §8, in this order (compact, as serde_json
/// writes it).
pub fn json_line(e: &Entry, out: &mut Vec<u8>) {
    json_line_cached(e, unix_ms(e.time), out, &mut Cache::default());
}

/// The request's strings as they stand in a JSON line: copied as they are when `plain`
/// (one scan of them all said nothing is to be escaped), escaped otherwise.
fn jtext(out: &mut Vec<u8>, plain: bool, v: &[u8]) {
    if plain {
        out.extend_from_slice(v);
    } else {
        json_inner(out, v);
    }
}

/// A quoted [`jtext`], or `null`.
fn jtext_opt(out: &mut Vec<u8>, plain: bool, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            out.push(b'"');
            jtext(out, plain, v);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// [`json_line`] at `wall_ms` (milliseconds since 1970), with the names and the time
/// strings made once, in `c`.
pub(super) fn json_line_cached(e: &Entry, wall_ms: u64, out: &mut Vec<u8>, c: &mut Cache) {
    // The request's strings lie side by side in one buffer and nearly never hold anything
    // to escape: one scan over them all, then each is a plain copy.
    let plain = json_all_plain(&e.text);
    out.extend_from_slice(b"{\"time\":\"");
    c.times.rfc3339(out, wall_ms);
    out.extend_from_slice(b"\",\"request_id\":\"");
    jtext(out, plain, e.text(Text::RequestId).unwrap_or_default());
    out.extend_from_slice(b"\",\"client_ip\":\"");
    ip(out, e.client_ip);
    match &e.method {
        // A request refused before its head was read has none of these.
        None => {
            out.extend_from_slice(b"\",\"method\":null,\"host\":");
            jtext_opt(out, plain, e.text(Text::Host));
            out.extend_from_slice(b",\"path\":null,\"protocol\":null,\"status\":");
        }
        Some(m) => {
            out.extend_from_slice(b"\",\"method\":\"");
            // A method is an HTTP token (the http crate admits nothing else): no byte of it
            // is escaped.
            out.extend_from_slice(m.as_str().as_bytes());
            out.extend_from_slice(b"\",\"host\":");
            jtext_opt(out, plain, e.text(Text::Host));
            out.extend_from_slice(b",\"path\":\"");
            jtext(out, plain, e.text(Text::Path).unwrap_or(b"/"));
            let tail: &[u8] = match e.version {
                Version::HTTP_11 => b"\",\"protocol\":\"HTTP/1.1\",\"status\":",
                Version::HTTP_2 => b"\",\"protocol\":\"HTTP/2.0\",\"status\":",
                v => {
                    out.extend_from_slice(b"\",\"protocol\":\"");
                    out.extend_from_slice(protocol(v).as_bytes());
                    b"\",\"status\":"
                }
            };
            out.extend_from_slice(tail);
        }
    }
    num(out, e.status.into());
    out.extend_from_slice(b",\"bytes_in\":");
    num(out, e.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    num(out, e.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, e.duration, true);
    out.extend_from_slice(b",\"upstream_ms\":");
    match e.upstream {
        Some(u) => millis(out, u, true),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"route\":");
    c.names.json(Of::Route, out, &e.route);
    out.extend_from_slice(b",\"pool\":");
    c.names.json(Of::Pool, out, &e.pool);
    out.extend_from_slice(b",\"backend\":");
    c.names.json(Of::Backend, out, &e.backend);
    out.extend_from_slice(b",\"attempts\":");
    num(out, e.attempts.into());
    out.extend_from_slice(b",\"tls\":");
    c.names.json(Of::Tls, out, &e.tls);
    out.extend_from_slice(b",\"user_agent\":");
    jtext_opt(out, plain, e.text(Text::UserAgent));
    out.extend_from_slice(b",\"referer\":");
    jtext_opt(out, plain, e.text(Text::Referer));
    match e.error {
        None => out.extend_from_slice(b",\"error\":null}"),
        Some(why) => {
            out.extend_from_slice(b",\"error\":");
            json_str(out, why.as_bytes());
            out.push(b'}');
        }
    }
}

/// nginx's escaping: `"`, `\` and bytes outside visible ASCII as `\xHH`, so a field can
/// never end early or forge a line. Runs of plain bytes are copied whole.
pub(super) fn escape(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if clf_plain(s) {
        out.extend_from_slice(s);
        return;
    }
    let (mut i, mut run) = (0, 0);
    while i < s.len() {
        while let Some(w) = s.get(i..i + 8) {
            let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
            if has_control(w)
                || w & HI != 0
                || has_byte(w, 0x7f)
                || has_byte(w, b'"')
                || has_byte(w, b'\\')
            {
                break;
            }
            i += 8;
        }
        let Some(&b) = s.get(i) else { break };
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(&s[run..i]);
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
            run = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&s[run..]);
}

/// Nothing in `s` that the combined format escapes.
pub(super) fn clf_plain(s: &[u8]) -> bool {
    all_words(
        s,
        |w| json_flags(w) | del_flags(w),
        |b| b != b'"' && b != b'\\' && (0x20..0x7f).contains(&b),
    )
}

/// The high bit of a byte of the result is set for each byte of `w` that a JSON string
/// escapes or that is beyond ASCII (and perhaps for bytes above one that is: exact about
/// whether there is one, the classic SWAR tests), no branch taken.
fn json_flags(w: u64) -> u64 {
    let q = w ^ (LO * u64::from(b'"'));
    let b = w ^ (LO * u64::from(b'\\'));
    w | (w.wrapping_sub(LO * 0x20) & !w) | (q.wrapping_sub(LO) & !q) | (b.wrapping_sub(LO) & !b)
}

/// As [`json_flags`], for DEL (escaped by the combined format only).
fn del_flags(w: u64) -> u64 {
    let d = w ^ (LO * 0x7f);
    d.wrapping_sub(LO) & !d
}

/// Whether no byte of `s` is flagged: `flags` on eight bytes at a time, OR-ed together and
/// looked at once (the last eight overlapping the ones before), `plain` for fewer than eight.
fn all_words(s: &[u8], flags: impl Fn(u64) -> u64, plain: impl Fn(u8) -> bool) -> bool {
    if s.len() < 8 {
        return s.iter().all(|&b| plain(b));
    }
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().expect("eight bytes"));
    let mut words = s.chunks_exact(8);
    let mut acc = 0;
    for w in &mut words {
        acc |= flags(word(w));
    }
    if !words.remainder().is_empty() {
        acc |= flags(word(&s[s.len() - 8..]));
    }
    acc & HI == 0
}

/// Nothing in `s` that a JSON string escapes, and all of it ASCII.
pub(super) fn json_all_plain(s: &[u8]) -> bool {
    all_words(s, json_flags, |b| json_plain(b) && b < 0x80)
}

/// ` key=value`, `-` for none (or empty).
pub(super) fn field(out: &mut Vec<u8>, k: &str, v: Option<&[u8]>) {
    out.push(b' ');
    out.extend_from_slice(k.as_bytes());
    out.push(b'=');
    match v {
        Some(v) if !v.is_empty() => escape(out, v),
        _ => out.push(b'-'),
    }
}

/// The request's strings as they stand in a combined line: as they are when `plain`,
/// escaped otherwise.
fn ctext(out: &mut Vec<u8>, plain: bool, v: &[u8]) {
    if plain {
        out.extend_from_slice(v);
    } else {
        escape(out, v);
    }
}

/// ` key=value` as [`field`] writes it, for the request's strings.
fn cfield(out: &mut Vec<u8>, key: &[u8], plain: bool, v: Option<&[u8]>) {
    out.extend_from_slice(key);
    match v {
        Some(v) if !v.is_empty() => ctext(out, plain, v),
        _ => out.push(b'-'),
    }
}

/// Apache/nginx combined (`IP - - [time] "request" status bytes "referer" "agent"`), so
/// goaccess and existing parsers read it, then veer's fields as `key=value` (`-` for none).
pub fn combined_line(e: &Entry, out: &mut Vec<u8>) {
    combined_line_cached(e, unix_ms(e.time), out, &mut Cache::default());
}

/// [`combined_line`] at `wall_ms`, with the names and the time strings made once, in `c`.
pub(super) fn combined_line_cached(e: &Entry, wall_ms: u64, out: &mut Vec<u8>, c: &mut Cache) {
    // One scan over all the request's strings, as in [`json_line_cached`].
    let plain = clf_plain(&e.text);
    ip(out, e.client_ip);
    out.extend_from_slice(b" - - [");
    c.times.clf(out, wall_ms / 1000);
    match &e.method {
        // No request line read: `"-"`, as nginx writes it.
        None => out.extend_from_slice(b"] \"-\" "),
        Some(m) => {
            out.extend_from_slice(b"] \"");
            // An HTTP token: nothing in it is escaped.
            out.extend_from_slice(m.as_str().as_bytes());
            out.push(b' ');
            ctext(out, plain, e.text(Text::Path).unwrap_or(b"/"));
            let tail: &[u8] = match e.version {
                Version::HTTP_11 => b" HTTP/1.1\" ",
                Version::HTTP_2 => b" HTTP/2.0\" ",
                v => {
                    out.push(b' ');
                    out.extend_from_slice(protocol(v).as_bytes());
                    b"\" "
                }
            };
            out.extend_from_slice(tail);
        }
    }
    num(out, e.status.into());
    out.push(b' ');
    num(out, e.bytes_out);
    out.extend_from_slice(b" \"");
    ctext(out, plain, e.text(Text::Referer).unwrap_or(b"-"));
    out.extend_from_slice(b"\" \"");
    ctext(out, plain, e.text(Text::UserAgent).unwrap_or(b"-"));
    out.push(b'"');
    cfield(
        out,
        b" request_id=",
        plain,
        Some(e.text(Text::RequestId).unwrap_or_default()),
    );
    cfield(out, b" host=", plain, e.text(Text::Host));
    c.names.field(Of::Route, out, "route", &e.route);
    c.names.field(Of::Pool, out, "pool", &e.pool);
    c.names.field(Of::Backend, out, "backend", &e.backend);
    out.extend_from_slice(b" attempts=");
    num(out, e.attempts.into());
    out.extend_from_slice(b" bytes_in=");
    num(out, e.bytes_in);
    out.extend_from_slice(b" duration_ms=");
    millis(out, e.duration, false);
    out.extend_from_slice(b" upstream_ms=");
    match e.upstream {
        Some(u) => millis(out, u, false),
        None => out.push(b'-'),
    }
    c.names.field(Of::Tls, out, "tls", &e.tls);
    field(out, "error", e.error.map(str::as_bytes));
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
pub(super) fn civil(days: i64) -> (i64, u32, u32) {
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

pub(super) struct Parts {
    pub(super) y: i64,
    pub(super) mo: u32,
    pub(super) d: u32,
    pub(super) h: u64,
    pub(super) mi: u64,
    pub(super) s: u64,
}

pub(super) fn parts(t: SystemTime) -> Parts {
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
    }
}

/// `2026-12-01T11:50:26.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    Times::default().rfc3339(&mut out, unix_ms(t));
    String::from_utf8(out).unwrap_or_default()
}

/// Milliseconds since 1970 (0 for a time before).
pub(super) fn unix_ms(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    since.as_secs() * 1000 + u64::from(since.subsec_millis())
}

/// The second last formatted, as RFC 3339 (milliseconds patched in per line) and as the
/// common log format's time: nginx caches its time strings the same way.
pub(super) struct Times {
    at: u64,
    rfc: Vec<u8>,
    clf: Vec<u8>,
}

impl Default for Times {
    fn default() -> Self {
        Times {
            at: u64::MAX,
            rfc: Vec::new(),
            clf: Vec::new(),
        }
    }
}

impl Times {
    /// The strings for second `secs`, made when it is not the one held.
    fn at(&mut self, secs: u64) -> &Self {
        if self.at != secs {
            self.make(secs);
        }
        self
    }

    #[cold]
    fn make(&mut self, secs: u64) {
        let p = parts(UNIX_EPOCH + Duration::from_secs(secs));
        self.rfc.clear();
        let _ = write!(
            self.rfc,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
            p.y, p.mo, p.d, p.h, p.mi, p.s
        );
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        self.clf.clear();
        let _ = write!(
            self.clf,
            "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
            p.d,
            MONTHS[(p.mo - 1) as usize],
            p.y,
            p.h,
            p.mi,
            p.s
        );
        self.at = secs;
    }

    /// `2026-12-01T11:50:26.123Z` for `ms` since 1970.
    pub(super) fn rfc3339(&mut self, out: &mut Vec<u8>, ms: u64) {
        let rfc = &self.at(ms / 1000).rfc;
        let ms = (ms % 1000) as u32;
        let digits = [
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
        ];
        // Years of four digits (until 9999) make 24 bytes: copied whole with the
        // milliseconds over the `000` of `.000Z`, no length to look at.
        if let Ok(mut a) = <[u8; 24]>::try_from(&rfc[..]) {
            a[20..23].copy_from_slice(&digits);
            out.extend_from_slice(&a);
        } else {
            let at = out.len() + rfc.len() - 4;
            out.extend_from_slice(rfc);
            out[at..at + 3].copy_from_slice(&digits);
        }
    }

    /// `01/Dec/2026:11:50:26 +0000` (the common log format's time).
    pub(super) fn clf(&mut self, out: &mut Vec<u8>, secs: u64) {
        let clf = &self.at(secs).clf;
        match <[u8; 26]>::try_from(&clf[..]) {
            Ok(a) => out.extend_from_slice(&a),
            Err(_) => out.extend_from_slice(clf),
        }
    }
}

/// What the writer makes once and uses line after line: the names escaped, the time strings.
#[derive(Default)]
pub(super) struct Cache {
    names: Names,
    pub(super) times: Times,
}

/// `01/Dec/2026:11:50:26 +0000` for `t`.
#[cfg(test)]
pub(super) fn clf_time_into(out: &mut Vec<u8>, t: SystemTime) {
    Times::default().clf(out, unix_ms(t) / 1000);
}
