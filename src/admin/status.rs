//! The `/api/status` document (SPEC §3).

use crate::runtime::Runtime;
use serde_json::{json, Map, Value};
use std::time::UNIX_EPOCH;

/// Routes, splits, rollouts and every backend's state, as JSON.
pub fn status_json(rt: &Runtime) -> Value {
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
            let split: Map<String, Value> = r.split.iter().map(|(p, w)| (p.clone(), json!(w))).collect();
            json!({
                "name": r.name,
                "hosts": r.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                "path_prefix": r.path_prefix,
                "split": split,
                "rollout": Value::Null,
            })
        })
        .collect();
    let mut pools = Map::new();
    let all = rt.registry.all();
    for name in snap.config.pools.keys() {
        let backends: Vec<Value> = all
            .iter()
            .filter(|b| &*b.id.pool == name.as_str())
            .map(|b| {
                let weight = snap.config.pools[name]
                    .backends
                    .iter()
                    .find(|c| c.addr == b.id.addr)
                    .map(|c| c.weight)
                    .unwrap_or(0);
                json!({
                    "addr": &*b.addr_label,
                    "weight": weight,
                    "health": if b.is_checked() { b.health().as_str() } else { "healthy" },
                    "breaker": b.breaker.state().as_str(),
                    "draining": b.is_draining(),
                    "removed": b.is_removed(),
                    "in_flight": b.in_flight(),
                })
            })
            .collect();
        pools.insert(name.clone(), json!({ "backends": backends }));
    }
    json!({
        "config": { "version": snap.version, "loaded_at": loaded_at },
        "routes": routes,
        "pools": pools,
    })
}
