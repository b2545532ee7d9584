//! Backends by name (SPEC §9): the task that resolves every `NAME:PORT` backend at start and
//! again when its records' TTL runs out (bounded by 1 s and the pool's `dns_refresh`), hands
//! the addresses to the registry and, when they changed, rebuilds the snapshot (new addresses
//! become backends, health-checked before they serve; vanished ones drain). A failed lookup
//! keeps the last good addresses. Requests never wait on any of this.

use super::Control;
use crate::config::{BackendAddr, Config};
use crate::dns::{refresh_after, Resolver};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// A failed lookup is tried again after this, or after `dns_refresh` when that is shorter.
const RETRY: Duration = Duration::from_secs(5);
/// How long start waits for the first lookups before it goes on without them.
const FIRST_ROUND: Duration = Duration::from_secs(5);

type Key = (String, BackendAddr);

/// Resolve the config's names once (bounded by a few seconds), then keep them resolved in a
/// task on `tasks` until shutdown.
pub async fn start(rt: &Arc<Control>, tasks: &TaskTracker) {
    let mut names = Names::default();
    if tokio::time::timeout(FIRST_ROUND, names.round(rt))
        .await
        .is_err()
    {
        tracing::warn!(
            "backend names not all resolved after {FIRST_ROUND:?}; going on, they are tried again"
        );
    }
    let rt = rt.clone();
    tasks.spawn(async move { names.run(&rt).await });
}

#[derive(Default)]
struct Names {
    resolver: Option<Resolver>,
    /// When each (pool, name) is due next.
    next: HashMap<Key, Instant>,
}

impl Names {
    async fn run(&mut self, rt: &Arc<Control>) {
        loop {
            let due = self.next.values().min().copied();
            tokio::select! {
                _ = rt.shutdown.cancelled() => return,
                _ = rt.registry.dns_wake.notified() => {}
                _ = sleep_until(due) => {}
            }
            self.round(rt).await;
        }
    }

    /// Look up every name that is due (or new), then rebuild the snapshot if addresses changed.
    async fn round(&mut self, rt: &Arc<Control>) {
        let config = rt.config();
        let wanted = names(&config);
        self.next.retain(|k, _| wanted.iter().any(|(w, _)| w == k));
        if wanted.is_empty() {
            return;
        }
        let servers = &config.server.dns_servers;
        if self.resolver.as_ref().map(|r| r.servers()) != Some(servers.as_slice()) {
            match Resolver::new(servers) {
                Ok(r) => self.resolver = Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up DNS resolution of backend names");
                    self.resolver = None;
                }
            }
        }
        let now = Instant::now();
        let due: Vec<&(Key, Duration)> = wanted
            .iter()
            .filter(|(k, _)| self.next.get(k).is_none_or(|&t| t <= now))
            .collect();
        let lookups = due.iter().map(|((_, name), _)| {
            let resolver = self.resolver.clone();
            async move {
                let BackendAddr::Name { host, port } = name else {
                    unreachable!("only names are looked up")
                };
                match resolver {
                    Some(r) => r.resolve(host, *port).await.map_err(|e| e.to_string()),
                    None => Err("no resolver".to_string()),
                }
            }
        });
        let results = futures_util::future::join_all(lookups).await;
        let now = Instant::now();
        let mut changed = false;
        for (((pool, name), refresh), result) in due.into_iter().zip(results) {
            let counter = |result: &str| {
                rt.metrics
                    .dns_resolutions
                    .with_label_values(&[pool.as_str(), result])
                    .inc()
            };
            let after = match result {
                Ok(found) => {
                    counter("success");
                    if rt.registry.set_resolved(pool, name, found.addrs.clone()) {
                        tracing::info!(pool, name = %name, addrs = ?found.addrs, "backend name resolved to new addresses");
                        changed = true;
                    }
                    refresh_after(found.ttl, *refresh)
                }
                Err(e) => {
                    counter("failure");
                    let kept = rt.registry.resolved(pool, name).map_or(0, |a| a.len());
                    tracing::warn!(pool, name = %name, error = %e, kept, "cannot resolve backend name; keeping its last addresses");
                    RETRY.min(*refresh)
                }
            };
            self.next.insert((pool.clone(), name.clone()), now + after);
        }
        if changed {
            rebuild(rt).await;
        }
    }
}

/// Make the registry's new addresses live: the same config, built again.
async fn rebuild(rt: &Arc<Control>) {
    let _lock = rt.change_lock.lock().await;
    let config = (*rt.config()).clone();
    match rt.apply(config) {
        Ok(report) => {
            tracing::info!(added = ?report.backends.added, removed = ?report.backends.removed, "backends changed by DNS");
            // A drain kept by the state applies to an address that came back.
            rt.apply_drains();
        }
        Err(e) => tracing::warn!(error = %e, "cannot apply the resolved backends"),
    }
}

/// Every (pool, name) of the config, with its pool's `dns_refresh`.
fn names(config: &Config) -> Vec<(Key, Duration)> {
    let mut out = Vec::new();
    for pc in config.pools.values() {
        for bc in &pc.backends {
            if let BackendAddr::Name { .. } = bc.addr {
                out.push(((pc.name.clone(), bc.addr.clone()), pc.dns_refresh));
            }
        }
    }
    out
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// `veer check`: the names of `config` that do not resolve now, with why. Never an error:
/// DNS where `check` runs may not be DNS where veer runs.
pub async fn unresolvable(config: &Config) -> Vec<String> {
    let resolver = match Resolver::new(&config.server.dns_servers) {
        Ok(r) => r,
        Err(e) => return vec![e.to_string()],
    };
    let wanted = names(config);
    let lookups = wanted.iter().map(|((pool, name), _)| {
        let r = resolver.clone();
        async move {
            let BackendAddr::Name { host, port } = name else {
                unreachable!("only names are looked up")
            };
            r.resolve(host, *port)
                .await
                .err()
                .map(|e| format!("pools.{pool}.backends: cannot resolve {name} now: {e}"))
        }
    });
    futures_util::future::join_all(lookups)
        .await
        .into_iter()
        .flatten()
        .collect()
}
