//! Choosing where a request goes: route matching by host and longest path prefix
//! ([`Router`]), then the pool by weighted split over sticky buckets ([`split`]).

pub mod choice;
pub mod pool_override;
pub mod split;

use crate::config::{HostPattern, RouteConfig};
use crate::metrics::RouteMetrics;
use crate::upstream::Pool;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

pub use split::{bucket_of, SplitTable, BUCKETS};

/// A route in one snapshot.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub config: Arc<RouteConfig>,
    /// The route's pools, in split order, and their weights.
    pub pools: Vec<Arc<Pool>>,
    pub weights: Vec<u32>,
    pub table: SplitTable,
    /// State that outlives snapshots (retry budget, counters).
    pub state: Arc<RouteCounters>,
    pub metrics: RouteMetrics,
    /// `[routes.mirror]`: where copies go (boxed: most routes have none).
    pub mirror: Option<Box<MirrorTarget>>,
}

/// A route's mirroring in one snapshot (SPEC §11).
#[derive(Debug)]
pub struct MirrorTarget {
    pub config: crate::config::MirrorConfig,
    pub pool: Arc<Pool>,
    pub counts: crate::metrics::mirror::Counts,
}

impl Route {
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| &*p.name == name)
    }
}

/// Per-route counters kept across reloads: the bucket sequence, the retry budget, the running
/// rollout step's statistics.
#[derive(Debug)]
pub struct RouteCounters {
    /// Spreads unsticky requests over the buckets evenly (a low-discrepancy sequence).
    seq: AtomicU64,
    /// Retry budget in thousandths of a retry.
    budget: AtomicI64,
    /// The running rollout step's statistics, fed by the request path (empty without one).
    pub rollout: crate::metrics::step::StatsSlot,
    /// Mirroring's copies in flight and differing samples (SPEC §11).
    pub mirror: Arc<crate::metrics::mirror::MirrorStats>,
}

/// Retries always allowed in reserve, so a quiet route can still retry.
const BUDGET_MIN_RESERVE: i64 = 10_000;
/// The most a route can save up (so a long quiet spell cannot fund a retry storm).
const BUDGET_CAP: i64 = 100_000;

impl Default for RouteCounters {
    fn default() -> Self {
        RouteCounters {
            seq: AtomicU64::new(0),
            budget: AtomicI64::new(BUDGET_MIN_RESERVE),
            rollout: Default::default(),
            mirror: Default::default(),
        }
    }
}

impl RouteCounters {
    /// The next bucket for a request with no sticky key.
    pub fn next_bucket(&self) -> u32 {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        // Golden-ratio stepping visits the buckets evenly, so the split is exact over a run.
        ((n.wrapping_mul(6_180_339_887) % 10_000_000_000) / 1_000_000) as u32 % BUCKETS
    }

    /// Every request adds `percent` hundredths of a retry to the budget.
    pub fn deposit(&self, percent: u32) {
        if percent == 0 {
            return;
        }
        let add = percent as i64 * 10;
        let _ = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < BUDGET_CAP).then_some((b + add).min(BUDGET_CAP))
            });
    }

    /// Give back a retry taken with [`RouteCounters::withdraw`] that could not be sent.
    pub fn refund(&self) {
        self.budget.fetch_add(1000, Ordering::Relaxed);
    }

    /// Take one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }
}

/// Routes of one snapshot, ordered for matching.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(mut routes: Vec<Arc<Route>>) -> Self {
        // Longest prefix first; among equal prefixes, exact hosts before wildcards.
        routes.sort_by_key(|r| std::cmp::Reverse(r.config.path_prefix.len()));
        Router { routes }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// The route for a host (without port, any case) and path.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let mut best: Option<(&Arc<Route>, u8)> = None;
        for r in &self.routes {
            if let Some((b, _)) = best {
                if r.config.path_prefix.len() < b.config.path_prefix.len() {
                    break;
                }
            }
            if !prefix_matches(&r.config.path_prefix, path) {
                continue;
            }
            let rank = r
                .config
                .hosts
                .iter()
                .filter(|h| h.matches(host))
                .map(|h| match h {
                    HostPattern::Exact(_) => 3,
                    HostPattern::Suffix(_) => 2,
                    HostPattern::Any => 1,
                })
                .max();
            if let Some(rank) = rank {
                if best.is_none_or(|(_, br)| rank > br) {
                    best = Some((r, rank));
                }
            }
        }
        best.map(|(r, _)| r)
    }
}

/// `/api` matches `/api`, `/api/x` and `/api?q` but not `/apix`; a prefix ending in `/`
/// matches anything under it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

/// Normalise a Host header or authority: no port, lower case, no trailing dot.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets' content.
        raw.split(']').next().map(|h| &h[1..]).unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// The path as veer routes and forwards it, `None` when it is already so (nearly always,
/// found without allocating: see `needs_normalizing`). Two normalisations, both keeping the meaning (RFC 3986
/// §6.2.2) while making it what the backend will read:
/// - percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded, so
///   `/%73ecret` is routed as `/secret` (HAProxy's `percent-decode-unreserved`); what stays
///   encoded (reserved characters like `%2F`, and the rest) gets upper-case hex.
/// - dot-segments are resolved (§5.2.4), also encoded ones (`%2e%2e`), so `/api/../admin`
///   is routed as `/admin` and cannot slip under the `/api` route's prefix.
///
/// A `%` not followed by two hex digits is malformed (RFC 3986 `pct-encoded`): left in, it
/// could join decoded characters into a new escape (`%%37%33` would become `%73`), read one
/// way by veer and another by the backend.
pub fn normalize_path(path: &str) -> Result<Option<String>, MalformedPath> {
    if !needs_normalizing(path)? {
        return Ok(None);
    }
    let decoded = decode_unreserved(path);
    let resolved = remove_dot_segments(&decoded);
    Ok((resolved != path).then_some(resolved))
}

/// A path with a `%` that starts no escape: the request is malformed (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedPath;

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The escape `%XY` at `b[0..3]`, if it is one: the byte and whether its hex was lower case.
fn escape_at(b: &[u8]) -> Option<(u8, bool)> {
    match b {
        [b'%', h, l, ..] => {
            let v = hex_val(*h)? << 4 | hex_val(*l)?;
            Some((v, h.is_ascii_lowercase() || l.is_ascii_lowercase()))
        }
        _ => None,
    }
}

/// Is a segment starting at `b` (just after a `/`) `.` or `..`?
fn dot_segment(b: &[u8]) -> bool {
    let end = b.iter().position(|&c| c == b'/').unwrap_or(b.len());
    matches!(&b[..end], b"." | b"..")
}

/// Is there an escape to decode or re-case, or a dot-segment? (An encoded dot is an
/// escape to decode, so it is found as one.) Also finds a malformed escape, which is never
/// let through. The common case, neither `%` nor `/.`, costs two of std's vectorised
/// searches (fewer than the dot-segment check alone used to make) and allocates nothing.
fn needs_normalizing(path: &str) -> Result<bool, MalformedPath> {
    let (pct, dot) = (path.contains('%'), path.contains("/."));
    if !pct && !dot {
        return Ok(false);
    }
    let b = path.as_bytes();
    let mut needs = false;
    if pct {
        for (i, _) in path.match_indices('%') {
            match escape_at(&b[i..]) {
                None => return Err(MalformedPath),
                Some((v, lower)) => needs |= lower || is_unreserved(v),
            }
        }
    }
    Ok(needs
        || (dot
            && path
                .match_indices("/.")
                .any(|(i, _)| dot_segment(&b[i + 1..]))))
}

fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match escape_at(&b[i..]) {
            Some((v, _)) if is_unreserved(v) => {
                out.push(v);
                i += 3;
            }
            Some(_) => {
                out.extend_from_slice(&[
                    b'%',
                    b[i + 1].to_ascii_uppercase(),
                    b[i + 2].to_ascii_uppercase(),
                ]);
                i += 3;
            }
            // Not an escape (the scan found none malformed): copied as it is.
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were replaced, by ASCII: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// RFC 3986 §5.2.4 on a path starting with `/`: `.` segments go, `..` takes the one before
/// with it, and a dot-segment at the end leaves the path ending in `/` (`/a/b/..` is `/a/`).
/// Empty segments are kept (`/a//b/../c` is `/a//c`). A path without `/` at its start (`*`)
/// is left alone.
fn remove_dot_segments(path: &str) -> String {
    let Some(rest) = path.strip_prefix('/') else {
        return path.to_string();
    };
    let mut out = String::with_capacity(path.len());
    let mut segs = rest.split('/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        match seg {
            "." => {}
            ".." => out.truncate(out.rfind('/').unwrap_or(0)),
            _ => {
                out.push('/');
                out.push_str(seg);
                continue;
            }
        }
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved_only_where_present() {
        for (raw, want) in [
            ("/api/../admin", Some("/admin")),
            ("/api/./v1", Some("/api/v1")),
            ("/api/%2e%2e/admin", Some("/admin")),
            ("/api/%2E./admin", Some("/admin")),
            ("/a/b/..", Some("/a/")),
            ("/a/.", Some("/a/")),
            ("/../../x", Some("/x")),
            ("/..", Some("/")),
            ("/.", Some("/")),
            ("/a//b/../c", Some("/a//c")),
            ("/a/b/../../..", Some("/")),
            ("/plain/path", None),
            ("/file.tar.gz", None),
            ("/.well-known/x", None),
            ("/a/.b/..c/", None),
            ("/...", None),
            ("/", None),
            ("*", None),
        ] {
            assert_eq!(normalize_path(raw).unwrap().as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_the_rest_upper_cased() {
        for (raw, want) in [
            ("/%73ecret/x", Some("/secret/x")),
            ("/%41%7a%30%2D%2e%5F%7e", Some("/Az0-._~")),
            // Reserved and other characters stay encoded, in upper case.
            ("/a%2Fb", None),
            ("/a%2fb", Some("/a%2Fb")),
            ("/%2f%3a%20%c3%a9", Some("/%2F%3A%20%C3%A9")),
            ("/a%20b%2F", None),
            // An encoded `%` is not decoded again.
            ("/%252e%252e/x", None),
            ("/%2525", None),
            // Both at once, decoded before the dot-segments are resolved.
            ("/api/.%2e/%73ecret/./x", Some("/secret/x")),
            ("/%2e", Some("/")),
            ("/caf\u{e9}/%61", Some("/caf\u{e9}/a")),
        ] {
            assert_eq!(normalize_path(raw).unwrap().as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn a_percent_that_starts_no_escape_is_malformed() {
        // `%%37%33` would decode to `%73`: veer and the backend would read it differently.
        for raw in ["/a%zz", "/a%4", "/a%", "/%%37%33ecret", "/ok/%g0", "/%2e%"] {
            assert_eq!(normalize_path(raw), Err(MalformedPath), "{raw}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/v1"));
    }

    #[test]
    fn hosts_normalise() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
    }

    #[test]
    fn unsticky_buckets_spread() {
        let s = RouteCounters::default();
        let mut low = 0;
        for _ in 0..1000 {
            if s.next_bucket() < 1000 {
                low += 1;
            }
        }
        assert!((95..=105).contains(&low), "{low}");
    }
}
