//! The `/api/status` document (SPEC §3).

use crate::control::Control;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Map, Value};
use std::time::UNIX_EPOCH;

/// The status page for people (`GET /`): one self-contained HTML file that polls
/// `/api/status` every second and asks for the admin token when the API wants one.
const PAGE: &str = include_str!("page.html");

/// `GET /`: the status page.
pub fn page() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Everything is inline and the page only talks to this admin API; nothing else may load.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Routes, splits, rollouts and every backend's state, as JSON.
pub fn status_json(rt: &Control) -> Value {
    let snap = rt.snapshot();
    let loaded_at = snap
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let routes: Vec<Value> = snap
        .config
        .routes
        .iter()
        .map(|r| {
            let split: Map<String, Value> =
                r.split.iter().map(|(p, w)| (p.clone(), json!(w))).collect();
            json!({
                "name": r.name,
                "hosts": r.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                "path_prefix": r.path_prefix,
                "split": split,
                "effective": effective(&snap, &r.name),
                "rollout": crate::rollout::status_json(&rt.rollouts, rt, &r.name),
                // SPEC §11: null without [routes.mirror].
                "mirror": snap.router.get(&r.name).map_or(Value::Null, |r| crate::proxy::mirror::status_json(r)),
            })
        })
        .collect();
    let mut pools = Map::new();
    let all = rt.registry.all();
    for (name, pc) in &snap.config.pools {
        let pool = snap.pools.get(name.as_str());
        let backends: Vec<Value> = all
            .iter()
            .filter(|b| &*b.id.pool == name.as_str())
            .map(|b| {
                let weight = configured_weight(pc, pool.map(|p| &**p), b);
                let weight_now = if b.is_available() {
                    weight * f64::from(b.ramp_own())
                        / f64::from(crate::upstream::backend::RAMP_FULL)
                } else {
                    0.0
                };
                let mut v = json!({
                    "addr": &*b.addr_label,
                    "weight": number(weight),
                    "weight_now": number(weight_now),
                    "health": if b.is_checked() { b.health().as_str() } else { "healthy" },
                    "breaker": b.breaker.state().as_str(),
                    "draining": b.is_draining(),
                    "removed": b.is_removed(),
                    "in_flight": b.in_flight(),
                    // `health` keeps SPEC's values; the page shows an unchecked backend as such.
                    "health_checked": b.is_checked(),
                });
                if let Some(n) = &b.id.name {
                    v["name"] = json!(&**n);
                }
                v
            })
            .collect();
        pools.insert(name.clone(), json!({ "backends": backends }));
    }
    json!({
        "config": { "version": snap.version, "loaded_at": loaded_at },
        "routes": routes,
        "pools": pools,
        // False while a change lives in memory only (SPEC §3): a restart would lose it.
        "persisted": rt.state.persisted(),
        // Fleet mode (SPEC §7): null for a single replica.
        "cluster": rt.cluster.get().map(|f| f.status_json()),
        // The audit trail's newest entry (issue 20): {who, what, source, when, when_ms}.
        "last_change": rt.audit.last_change_json(),
    })
}

/// A backend's weight as configured: an `IP:PORT` one's own, an address of a name its share
/// of the name's weight (split evenly over the addresses it has now); 0 once removed.
fn configured_weight(
    pc: &crate::config::PoolConfig,
    pool: Option<&crate::upstream::Pool>,
    b: &crate::upstream::Backend,
) -> f64 {
    use crate::config::BackendAddr;
    if b.is_removed() {
        return 0.0;
    }
    let found = pc.backends.iter().find(|c| match (&c.addr, &b.id.name) {
        (BackendAddr::Ip(a), None) => *a == b.id.addr,
        (BackendAddr::Name { .. }, Some(n)) => c.addr.to_string() == **n,
        _ => false,
    });
    let Some(c) = found else { return 0.0 };
    let share = match (&b.id.name, pool) {
        (Some(n), Some(p)) => p
            .backends
            .iter()
            .filter(|x| x.id.name.as_ref() == Some(n))
            .count()
            .max(1),
        _ => 1,
    };
    f64::from(c.weight) / share as f64
}

/// A whole number as an integer, else rounded to two decimals.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!((x * 100.0).round() / 100.0)
    }
}

/// Where the route's traffic goes now, in percent per pool: the split as the backends' state
/// and the fallback make it (overrides aside). What the pools do not add up to gets 503.
fn effective(snap: &crate::runtime::Snapshot, route: &str) -> Value {
    let Some(r) = snap.router.get(route) else {
        return Value::Null;
    };
    let buckets = crate::routing::choice::effective_buckets(r);
    let per_percent = f64::from(crate::routing::BUCKETS) / 100.0;
    let shares: Map<String, Value> = r
        .pools
        .iter()
        .zip(buckets)
        .map(|(p, b)| (p.name.to_string(), json!(f64::from(b) / per_percent)))
        .collect();
    Value::Object(shares)
}
