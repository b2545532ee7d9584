//! Where a request goes, as plain functions over one snapshot's [`Route`]: the sticky bucket,
//! an override, and a backend from the chosen pool or, when it has nothing available, from the
//! pools it falls back to (SPEC §2 `fallback`). The proxy calls them per request; the status
//! API calls [`effective_buckets`] to show where traffic goes now.
//!
//! Fallback order, for a request whose pool has nothing available: the route's other pools
//! with a weight above 0, then (with `fallback = true`) the pools at weight 0 — after a
//! completed swap the idle slot is the last production. Within each group the pools come in
//! the bucket's weighted rendezvous order (linkerd's "zero the weight and choose again"), so a
//! user falls back to the same pool every time and the fallen-back share spreads by weight.

use super::pool_override::{judge, Forced};
use super::split::{bucket_of, score};
use super::Route;
use crate::config::{Fallback, Sticky};
use crate::upstream::{Lease, Pool};
use http::HeaderMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Find a cookie's value in the request's `Cookie` headers.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The pool chosen for a request, before any backend is picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Index into the route's pools.
    pub pool: usize,
    /// The sticky bucket (also orders the fallback).
    pub bucket: u32,
    /// A `Set-Cookie` value, when veer minted the sticky id.
    pub set_cookie: Option<String>,
}

/// Choose the pool of a request from `peer`: forced by an allowed override, else the pool of
/// its sticky bucket under today's weights. A rejected override is counted and ignored.
/// `tls`: the request came over a TLS listener (a minted cookie is `Secure` by default).
pub fn choose(route: &Route, headers: &HeaderMap, peer: IpAddr, tls: bool) -> Choice {
    let (bucket, set_cookie) = sticky_bucket(route, headers, peer, tls);
    let pool = match forced_pool(route, headers, peer) {
        Forced::Pool(i) => i,
        Forced::Rejected => {
            route.metrics.override_rejected.inc();
            route.table.pool_of(bucket)
        }
        Forced::No => route.table.pool_of(bucket),
    };
    Choice {
        pool,
        bucket,
        set_cookie,
    }
}

/// The request's sticky bucket, and the `Set-Cookie` value when a cookie key was missing and
/// veer minted one (random id, `Path=/`, `HttpOnly`, `SameSite=Lax`, and the route's
/// `max_age` and `secure`; `Secure` by default over TLS).
pub fn sticky_bucket(
    route: &Route,
    headers: &HeaderMap,
    peer: IpAddr,
    tls: bool,
) -> (u32, Option<String>) {
    match &route.config.sticky {
        Sticky::None => (route.state.next_bucket(), None),
        Sticky::Cookie(c) => match cookie(headers, &c.name) {
            Some(v) if !v.is_empty() => (bucket_of(v.as_bytes()), None),
            _ => {
                let id = format!("{:032x}", rand::random::<u128>());
                let b = bucket_of(id.as_bytes());
                (b, Some(c.set_cookie(&id, tls)))
            }
        },
        Sticky::Header(name) => match headers.get(name.as_str()) {
            Some(v) if !v.is_empty() => (bucket_of(v.as_bytes()), None),
            _ => (client_ip_bucket(peer), None),
        },
        Sticky::ClientIp => (client_ip_bucket(peer), None),
    }
}

/// The bucket of a client address (an IPv4-mapped IPv6 peer as its IPv4 address).
pub fn client_ip_bucket(peer: IpAddr) -> u32 {
    match peer.to_canonical() {
        IpAddr::V4(a) => bucket_of(&a.octets()),
        IpAddr::V6(a) => bucket_of(&a.octets()),
    }
}

/// What the route's override header (else cookie) asks for, judged by `allow_from` and
/// `secret_env`.
pub fn forced_pool(route: &Route, headers: &HeaderMap, peer: IpAddr) -> Forced {
    let Some(o) = &route.config.override_ else {
        return Forced::No;
    };
    let value = o
        .header
        .as_ref()
        .and_then(|h| headers.get(h.as_str()).and_then(|v| v.to_str().ok()))
        .or_else(|| o.cookie.as_ref().and_then(|c| cookie(headers, c)));
    match value {
        None => Forced::No,
        Some(v) => judge(o, v, peer, |name| route.pool_index(name)),
    }
}

/// Take a backend lease for a request: from pool `chosen`, else from the pools it falls back
/// to, in order. `tried` are backends already tried (see [`crate::upstream::pool::backend_key`]).
pub fn pick(route: &Route, chosen: usize, bucket: u32, tried: &[usize]) -> Option<(usize, Lease)> {
    std::iter::once(chosen)
        .chain(FallbackOrder::new(
            &route.pools,
            &route.weights,
            chosen,
            bucket,
            route.config.fallback,
        ))
        .find_map(|i| route.pools[i].pick(tried).map(|l| (i, l)))
}

/// Anything with a pool name: a snapshot's pools, or plain names in tests.
pub trait PoolName {
    fn pool_name(&self) -> &str;
}

impl PoolName for Arc<Pool> {
    fn pool_name(&self) -> &str {
        &self.name
    }
}

impl PoolName for &str {
    fn pool_name(&self) -> &str {
        self
    }
}

/// The pools a request of `bucket` whose pool `chosen` has nothing falls back to, in order
/// (see the module docs). Allocates nothing: each step scans the pools for the best score
/// after the one last given (routes have a handful of pools).
#[derive(Debug, Clone)]
pub struct FallbackOrder<'a, N> {
    pools: &'a [N],
    weights: &'a [u32],
    chosen: usize,
    bucket: u32,
    /// The group being walked: 0 the weighted pools, 1 the pools at weight 0.
    group: u8,
    /// How many groups the fallback setting allows (0, 1 or 2).
    groups: u8,
    last: Option<(f64, usize)>,
}

impl<'a, N: PoolName> FallbackOrder<'a, N> {
    pub fn new(
        pools: &'a [N],
        weights: &'a [u32],
        chosen: usize,
        bucket: u32,
        fallback: Fallback,
    ) -> Self {
        FallbackOrder {
            pools,
            weights,
            chosen,
            bucket,
            group: 0,
            groups: match fallback {
                Fallback::Off => 0,
                Fallback::Weighted => 1,
                Fallback::All => 2,
            },
            last: None,
        }
    }
}

/// Rendezvous order: higher score first, the lower index on a tie (as [`super::split::rendezvous`]).
fn before(a: (f64, usize), b: (f64, usize)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

impl<N: PoolName> Iterator for FallbackOrder<'_, N> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        loop {
            if self.group >= self.groups {
                return None;
            }
            let idle = self.group == 1;
            let mut best: Option<(f64, usize)> = None;
            for (i, p) in self.pools.iter().enumerate() {
                let w = self.weights.get(i).copied().unwrap_or(0);
                if i == self.chosen || (w == 0) != idle {
                    continue;
                }
                // The idle pools are ordered as if of equal weight.
                let s = (score(self.bucket, p.pool_name(), w.max(1)), i);
                if self.last.is_some_and(|l| !before(l, s)) {
                    continue;
                }
                if best.is_none_or(|b| before(s, b)) {
                    best = Some(s);
                }
            }
            match best {
                Some(b) => {
                    self.last = Some(b);
                    return Some(b.1);
                }
                None => {
                    self.group += 1;
                    self.last = None;
                }
            }
        }
    }
}

/// Buckets (of [`super::BUCKETS`]) each of the route's pools gets now, for requests without an
/// override: the split, with the share of pools that have nothing available moved where the
/// fallback sends it. What is not counted gets 503. Off the request path (status API).
pub fn effective_buckets(route: &Route) -> Vec<u32> {
    let available: Vec<bool> = route.pools.iter().map(|p| p.has_available()).collect();
    effective_split(
        &route.pools,
        &route.weights,
        route.config.fallback,
        &available,
        |b| route.table.pool_of(b),
    )
}

/// [`effective_buckets`] over plain parts: `pool_of` maps a bucket to its pool by the split.
pub fn effective_split<N: PoolName>(
    pools: &[N],
    weights: &[u32],
    fallback: Fallback,
    available: &[bool],
    pool_of: impl Fn(u32) -> usize,
) -> Vec<u32> {
    let mut counts = vec![0u32; pools.len()];
    let up = |i: usize| available.get(i).copied().unwrap_or(false);
    for bucket in 0..super::BUCKETS {
        let chosen = pool_of(bucket);
        let served = if up(chosen) {
            Some(chosen)
        } else {
            FallbackOrder::new(pools, weights, chosen, bucket, fallback).find(|&i| up(i))
        };
        if let Some(c) = served.and_then(|i| counts.get_mut(i)) {
            *c += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::split::{rendezvous, SplitTable};
    use crate::routing::BUCKETS;

    fn order(
        names: &[&str],
        weights: &[u32],
        chosen: usize,
        bucket: u32,
        f: Fallback,
    ) -> Vec<usize> {
        FallbackOrder::new(names, weights, chosen, bucket, f).collect()
    }

    #[test]
    fn weighted_pools_first_then_the_idle_ones() {
        let names = ["blue", "green"];
        // After a swap: blue idle at 0, green production. Green down: blue.
        assert_eq!(order(&names, &[0, 100], 1, 7, Fallback::All), vec![0]);
        assert_eq!(
            order(&names, &[0, 100], 1, 7, Fallback::Weighted),
            Vec::<usize>::new()
        );
        assert_eq!(
            order(&names, &[0, 100], 1, 7, Fallback::Off),
            Vec::<usize>::new()
        );
        // Both weighted: the other one, with any fallback but Off.
        assert_eq!(order(&names, &[90, 10], 0, 7, Fallback::Weighted), vec![1]);
        assert_eq!(order(&names, &[90, 10], 0, 7, Fallback::All), vec![1]);
        // A forced weight-0 pool falls back to the weighted ones.
        assert_eq!(order(&names, &[0, 100], 0, 7, Fallback::All), vec![1]);
    }

    #[test]
    fn each_group_is_in_rendezvous_order() {
        let names = ["a", "b", "c", "d", "e"];
        let weights = [5, 3, 2, 0, 0];
        for bucket in 0..BUCKETS {
            let got = order(&names, &weights, 0, bucket, Fallback::All);
            // The weighted group as rendezvous gives it, taking each pick away in turn.
            let mut w = weights.to_vec();
            w[0] = 0;
            let mut want = Vec::new();
            while let Some(i) = rendezvous(bucket, &names, &w, usize::MAX) {
                want.push(i);
                w[i] = 0;
            }
            assert_eq!(&got[..2], &want[..], "bucket {bucket}");
            // Then the idle group, as equals.
            let mut idle = [0, 0, 0, 1, 1];
            let first = rendezvous(bucket, &names, &idle, usize::MAX).unwrap();
            idle[first] = 0;
            let second = rendezvous(bucket, &names, &idle, usize::MAX).unwrap();
            assert_eq!(&got[2..], &[first, second], "bucket {bucket}");
        }
    }

    fn shares(names: &[&str], weights: &[u32], f: Fallback, available: &[bool]) -> Vec<u32> {
        let t = SplitTable::new(names, weights);
        effective_split(names, weights, f, available, |b| t.pool_of(b))
    }

    #[test]
    fn the_effective_split_follows_availability_and_fallback() {
        let names = ["blue", "green"];
        for (weights, f, available, want) in [
            ([90, 10], Fallback::All, [true, true], [9000, 1000]),
            ([90, 10], Fallback::All, [false, true], [0, 10_000]),
            ([90, 10], Fallback::Off, [false, true], [0, 1000]),
            // After a completed swap, production down: the idle slot takes it all...
            ([0, 100], Fallback::All, [true, false], [10_000, 0]),
            // ...unless only weighted pools may take it.
            ([0, 100], Fallback::Weighted, [true, false], [0, 0]),
            ([0, 100], Fallback::All, [false, false], [0, 0]),
        ] {
            assert_eq!(
                shares(&names, &weights, f, &available),
                want,
                "{weights:?} {f:?} {available:?}"
            );
        }
    }

    #[test]
    fn the_fallen_back_share_spreads_by_weight() {
        let names = ["a", "b", "c"];
        let s = shares(&names, &[50, 30, 20], Fallback::All, &[false, true, true]);
        assert_eq!(s[0], 0);
        assert_eq!(s[1] + s[2], BUCKETS);
        // b takes about 3/5 of the whole.
        assert!((5_600..6_400).contains(&s[1]), "{s:?}");
    }

    // ---- over a real snapshot

    fn runtime(route_extra: &str) -> Arc<crate::runtime::Live> {
        let text = format!(
            "[pools.blue]\nbackends = [\"127.0.0.1:9\"]\n[pools.green]\nbackends = [\"127.0.0.1:10\"]\n\
             [[routes]]\nname = \"web\"\nsplit = {{ blue = 0, green = 100 }}\n{route_extra}\n"
        );
        let c = crate::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        crate::runtime::Live::new(c, None).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn sticky_keys_give_buckets_and_a_missing_cookie_is_minted() {
        let rt = runtime("sticky = { cookie = \"uid\" }");
        let snap = rt.snapshot();
        let route = snap.router.get("web").unwrap();
        let c = choose(route, &headers(&[("cookie", "a=1; uid=u-42")]), PEER, false);
        assert_eq!(c.bucket, bucket_of(b"u-42"));
        assert_eq!(c.set_cookie, None);
        assert_eq!(c.pool, 1, "green has all the weight");
        let c = choose(route, &HeaderMap::new(), PEER, false);
        let v = c.set_cookie.expect("a cookie is minted");
        let id = v.strip_prefix("uid=").unwrap().split(';').next().unwrap();
        assert_eq!(c.bucket, bucket_of(id.as_bytes()));
        assert!(v.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{v}");

        let rt = runtime("sticky = { header = \"x-user\" }");
        let snap = rt.snapshot();
        let route = snap.router.get("web").unwrap();
        let c = choose(route, &headers(&[("x-user", "bob")]), PEER, false);
        assert_eq!(c.bucket, bucket_of(b"bob"));
        // Without the header: the client address, v4-mapped as v4.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            choose(route, &HeaderMap::new(), mapped, false).bucket,
            bucket_of(&[127, 0, 0, 1])
        );
    }

    #[tokio::test]
    async fn overrides_force_a_pool_only_when_allowed_and_rejections_are_counted() {
        let rt = runtime(
            "override = { header = \"x-veer-pool\", cookie = \"veer_pool\", allow_from = [\"10.0.0.0/8\"] }",
        );
        let snap = rt.snapshot();
        let route = snap.router.get("web").unwrap();
        let inside: IpAddr = "10.2.3.4".parse().unwrap();
        assert_eq!(
            choose(route, &headers(&[("x-veer-pool", "blue")]), inside, false).pool,
            0
        );
        assert_eq!(
            choose(
                route,
                &headers(&[("cookie", "veer_pool=blue")]),
                inside,
                false
            )
            .pool,
            0
        );
        assert_eq!(route.metrics.override_rejected.get(), 0);
        // From outside the block: the split decides, and it is counted.
        assert_eq!(
            choose(route, &headers(&[("x-veer-pool", "blue")]), PEER, false).pool,
            1
        );
        assert_eq!(route.metrics.override_rejected.get(), 1);
        // No override asked for: nothing counted.
        assert_eq!(choose(route, &HeaderMap::new(), PEER, false).pool, 1);
        assert_eq!(route.metrics.override_rejected.get(), 1);
    }

    #[tokio::test]
    async fn pick_falls_back_to_the_idle_slot_unless_told_not_to() {
        for (extra, want) in [
            ("", Some(0)),
            ("fallback = true", Some(0)),
            ("fallback = \"weighted\"", None),
            ("fallback = false", None),
        ] {
            let rt = runtime(extra);
            let snap = rt.snapshot();
            let route = snap.router.get("web").unwrap();
            assert_eq!(pick(route, 1, 5, &[]).map(|(i, _)| i), Some(1), "{extra}");
            // Green (production after a swap) drains: blue at weight 0 is the last production.
            rt.registry.set_draining(
                "green",
                "127.0.0.1:10".parse().unwrap(),
                true,
                std::time::Duration::from_secs(1),
            );
            assert_eq!(pick(route, 1, 5, &[]).map(|(i, _)| i), want, "{extra}");
            let eff = effective_buckets(route);
            let want_eff = if want.is_some() {
                vec![BUCKETS, 0]
            } else {
                vec![0, 0]
            };
            assert_eq!(eff, want_eff, "{extra}");
        }
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; veer_id=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "veer_id"), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
