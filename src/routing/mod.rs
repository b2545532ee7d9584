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
    pub state: Arc<RouteState>,
    pub metrics: RouteMetrics,
}

impl Route {
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| &*p.name == name)
    }
}

/// Per-route state kept across reloads.
#[derive(Debug)]
pub struct RouteState {
    /// Spreads unsticky requests over the buckets evenly (a low-discrepancy sequence).
    seq: AtomicU64,
    /// Retry budget in thousandths of a retry.
    budget: AtomicI64,
    /// The running rollout step's statistics, fed by the request path (empty without one).
    pub rollout: crate::rollout::StatsSlot,
}

/// Retries always allowed in reserve, so a quiet route can still retry.
const BUDGET_MIN_RESERVE: i64 = 10_000;
/// The most a route can save up (so a long quiet spell cannot fund a retry storm).
const BUDGET_CAP: i64 = 100_000;

impl Default for RouteState {
    fn default() -> Self {
        RouteState {
            seq: AtomicU64::new(0),
            budget: AtomicI64::new(BUDGET_MIN_RESERVE),
            rollout: Default::default(),
        }
    }
}

impl RouteState {
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

    /// Give back a retry taken with [`RouteState::withdraw`] that could not be sent.
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

/// The path with its dot-segments resolved (RFC 3986 §5.2.4), also when they are
/// percent-encoded (`%2e`): `None` when there are none, which is nearly always and costs one
/// scan. veer routes and forwards the resolved path, so `/api/../admin` is routed as `/admin`
/// (the backend would read it so) and cannot slip under the `/api` route's prefix.
pub fn resolve_dot_segments(path: &str) -> Option<String> {
    fn dot_kind(seg: &str) -> u8 {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        match s.as_str() {
            "." => 1,
            ".." => 2,
            _ => 0,
        }
    }
    // The cheap test first: no `/.` and no `%2e` means no dot-segment.
    if !(path.contains("/.") || path.contains("%2e") || path.contains("%2E")) {
        return None;
    }
    let has_dots = path
        .split('/')
        .any(|seg| !seg.is_empty() && seg.len() <= 6 && dot_kind(seg) > 0);
    if !has_dots {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    for (i, seg) in segs.iter().enumerate() {
        let kind = if seg.len() <= 6 { dot_kind(seg) } else { 0 };
        match kind {
            1 => {}
            2 => {
                out.pop();
            }
            _ => out.push(seg),
        }
        // A dot-segment at the end leaves the path ending in `/` (`/a/b/..` is `/a/`).
        if kind > 0 && i == last {
            out.push("");
        }
    }
    let mut resolved = String::with_capacity(path.len());
    for seg in &out {
        resolved.push('/');
        resolved.push_str(seg);
    }
    if resolved.is_empty() {
        resolved.push('/');
    }
    Some(resolved)
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
            ("/a//b/../c", Some("/a//c")),
            ("/plain/path", None),
            ("/file.tar.gz", None),
            ("/.well-known/x", None),
            ("/...", None),
            ("/", None),
        ] {
            assert_eq!(resolve_dot_segments(raw).as_deref(), want, "{raw}");
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
        let s = RouteState::default();
        let mut low = 0;
        for _ in 0..1000 {
            if s.next_bucket() < 1000 {
                low += 1;
            }
        }
        assert!((95..=105).contains(&low), "{low}");
    }
}
