//! The registry of backends keyed by identity: per-backend state survives reloads for backends
//! that stay; backends a reload removes are drained and then closed (sozu's Normal → Closing →
//! Closed lifecycle).

use super::backend::{EjectionBudget, RAMP_FLOOR};
use super::http_client::{ClientTemplate, UpstreamClient};
use super::{Backend, BackendId, Health, Pool};
use crate::config::{BackendAddr, Config, PoolConfig};
use prometheus::IntCounterVec;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The runtime pools of one snapshot, by name.
pub type RuntimePools = HashMap<Arc<str>, Arc<Pool>>;

/// How long a backend removed by a reload stays open for requests that loaded the snapshot
/// from before the reload (they pick within microseconds of loading it).
const REMOVAL_GRACE: Duration = Duration::from_millis(250);

/// What a rebuild changed among backends.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Background tasks a [`Registry::sync`] asks for: the caller (the layer that owns task
/// lifecycles) starts them, so the registry never spawns a health checker itself. Breakers
/// need none: the registry's one watcher times each trip (see [`Registry::watch_breakers`]).
#[derive(Debug, Default)]
#[must_use = "the backends need their health checkers started"]
pub struct ToStart {
    /// Backends whose health checks were switched on (new or not): each needs a checker.
    pub health: Vec<Arc<Backend>>,
}

/// All backends, current and draining. Touched by reloads and the admin API, never by requests.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Background tasks (health, breaker, drains), stopped at shutdown.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Folder of the config file, for relative TLS paths.
    pub base: Option<PathBuf>,
    /// `veer_circuit_breaker_trips_total`, when metrics are kept.
    trips: Option<IntCounterVec>,
    /// Woken by a sync that met a name never resolved (the DNS task resolves it at once).
    pub dns_wake: tokio::sync::Notify,
    /// Told of every breaker trip (through the pools' [`EjectionBudget`]); its watcher starts
    /// the task that times the trip. Nothing waits per backend while breakers are closed.
    tripped: Arc<tokio::sync::Notify>,
    watching: std::sync::Once,
}

#[derive(Debug, Default)]
struct Inner {
    backends: BTreeMap<BackendId, Arc<Backend>>,
    /// Removed by a reload, still finishing in-flight requests.
    draining: Vec<Arc<Backend>>,
    pools: HashMap<Arc<str>, Arc<EjectionBudget>>,
    /// The last good addresses of each (pool, name) backend, set by the DNS task.
    resolved: HashMap<(Arc<str>, BackendAddr), Arc<[std::net::SocketAddr]>>,
    /// A sync has run: backends created after it are new (slow start ramps them).
    started: bool,
    /// The runtime pools of the last sync: a pool whose config did not change is handed to
    /// the next snapshot as it is (its backends, balancer order and position), not rebuilt.
    last: HashMap<Arc<str>, Arc<Pool>>,
}

/// Errors applying pools to the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("pool {pool}: {source}")]
    Client {
        pool: String,
        #[source]
        source: crate::tls::UpstreamTlsError,
    },
}

impl Registry {
    pub fn new(base: Option<PathBuf>) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            base,
            trips: None,
            dns_wake: tokio::sync::Notify::new(),
            tripped: Arc::new(tokio::sync::Notify::new()),
            watching: std::sync::Once::new(),
        }
    }

    /// Count breaker trips into this counter (labels pool, backend).
    pub fn with_trips_metric(mut self, trips: IntCounterVec) -> Self {
        self.trips = Some(trips);
        self
    }

    /// Check that every pool's client can be built (TLS material readable), without applying.
    pub fn check_clients(&self, config: &Config) -> Result<(), RegistryError> {
        for pc in config.pools.values() {
            UpstreamClient::check(pc, self.base.as_deref()).map_err(|e| RegistryError::Client {
                pool: pc.name.clone(),
                source: e,
            })?;
        }
        Ok(())
    }

    /// Make the registry match `config`: reuse backends that stay, create new ones, drain the
    /// removed. Returns the runtime pools for a new snapshot and what changed.
    pub fn sync(
        self: &Arc<Self>,
        config: &Config,
        old: Option<&Config>,
    ) -> Result<(RuntimePools, BackendChanges, ToStart), RegistryError> {
        self.watching.call_once(|| {
            self.tasks.spawn(self.clone().watch_breakers());
        });
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes = BackendChanges::default();
        let mut start = ToStart::default();
        let mut pools = HashMap::new();
        let mut keep = BTreeMap::new();
        let mut unresolved = false;
        let mut last = std::mem::take(&mut inner.last);
        for pc in config.pools.values() {
            let name: Arc<str> = pc.name.as_str().into();
            let members = expand(pc, &name, &inner.resolved, &mut unresolved);
            if let Some(pool) = last.remove(pc.name.as_str()) {
                // Unchanged: the same config and, for names, the same addresses.
                let same_members = pool.backends.len() == members.len()
                    && pool
                        .backends
                        .iter()
                        .zip(&members)
                        .all(|(b, (id, _))| b.id == *id);
                if (Arc::ptr_eq(&pool.config, pc) || *pool.config == **pc)
                    && same_members
                    && Self::keep_pool(&mut inner, &pool, &mut keep)
                {
                    pools.insert(pool.name.clone(), pool);
                    continue;
                }
            }
            let pc_arc = Arc::clone(pc);
            let shared = inner
                .pools
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(EjectionBudget {
                        tripped: Some(self.tripped.clone()),
                        ..EjectionBudget::default()
                    })
                })
                .clone();
            let old_pc = old.and_then(|o| o.pools.get(&pc.name));
            let transport_changed = old_pc.is_some_and(|o| {
                o.protocol != pc.protocol
                    || o.tls != pc.tls
                    || o.connect_timeout != pc.connect_timeout
            });
            let mut list = Vec::with_capacity(members.len());
            let mut weights = Vec::with_capacity(members.len());
            // Built when the first of the pool's backends needs a client, once per pool.
            let mut template = None;
            for (id, weight) in members {
                let mut fresh = false;
                let backend = match inner.backends.remove(&id) {
                    Some(b) => {
                        if transport_changed {
                            b.set_client(self.client_from(&mut template, &id, pc)?);
                        }
                        b
                    }
                    None => {
                        fresh = true;
                        changes.added.push(id.to_string());
                        let b = Arc::new(Backend::new(
                            id.clone(),
                            self.client_from(&mut template, &id, pc)?,
                            pc_arc.clone(),
                            shared.clone(),
                        ));
                        if pc.slow_start.is_some() && inner.started {
                            // New: it starts at 10% (the slow-start task ramps it from here).
                            b.set_ramp(RAMP_FLOOR, RAMP_FLOOR);
                        }
                        b
                    }
                };
                if self.configure(&backend, &pc_arc, fresh) {
                    start.health.push(backend.clone());
                }
                keep.insert(id, backend.clone());
                list.push(backend);
                weights.push(weight);
            }
            shared.size.store(list.len() as u32, Ordering::Relaxed);
            pools.insert(name, Arc::new(Pool::new(pc_arc, list, weights)));
        }
        inner.started = true;
        inner.resolved.retain(|(pool, addr), _| {
            config
                .pools
                .get(pool.as_ref())
                .is_some_and(|p| p.backends.iter().any(|b| &b.addr == addr))
        });
        if unresolved {
            self.dns_wake.notify_one();
        }
        // What is left was removed by this config.
        let removed = std::mem::replace(&mut inner.backends, keep);
        for (id, b) in removed {
            changes.removed.push(id.to_string());
            b.mark_removed();
            inner.draining.push(b.clone());
            self.spawn_drain(b, config.server.drain_timeout);
        }
        inner
            .pools
            .retain(|name, _| config.pools.contains_key(name.as_ref()));
        inner.last = pools.clone();
        Ok((pools, changes, start))
    }

    /// Carry an unchanged pool over to the next snapshot: its backends stay as they are.
    /// False (nothing moved) when one of them is no longer current (the pool is rebuilt).
    fn keep_pool(
        inner: &mut Inner,
        pool: &Pool,
        keep: &mut BTreeMap<BackendId, Arc<Backend>>,
    ) -> bool {
        let current =
            |b: &Arc<Backend>| inner.backends.get(&b.id).is_some_and(|c| Arc::ptr_eq(c, b));
        if !pool.backends.iter().all(current) {
            return false;
        }
        for b in &pool.backends {
            if let Some((id, b)) = inner.backends.remove_entry(&b.id) {
                keep.insert(id, b);
            }
        }
        true
    }

    fn client(&self, id: &BackendId, pc: &PoolConfig) -> Result<UpstreamClient, RegistryError> {
        let err = |e| RegistryError::Client {
            pool: pc.name.clone(),
            source: e,
        };
        // TLS to an address found by a name verifies that name unless `sni` says otherwise.
        if let Some(name) = id.name.as_deref() {
            if let Some(tls) = pc.tls.as_ref().filter(|t| t.sni.is_none()) {
                let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
                let mut named = pc.clone();
                named.tls = Some(Box::new(crate::config::UpstreamTls {
                    sni: Some(host.to_string()),
                    ..(**tls).clone()
                }));
                return UpstreamClient::new(id.addr, &named, self.base.as_deref()).map_err(err);
            }
        }
        UpstreamClient::new(id.addr, pc, self.base.as_deref()).map_err(err)
    }

    /// Record what a name backend resolved to. True when that changes the backends (the
    /// caller then rebuilds the snapshot).
    pub fn set_resolved(
        &self,
        pool: &str,
        name: &BackendAddr,
        addrs: Vec<std::net::SocketAddr>,
    ) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Arc::<str>::from(pool), name.clone());
        if inner.resolved.get(&key).is_some_and(|a| **a == *addrs) {
            return false;
        }
        inner.resolved.insert(key, addrs.into());
        true
    }

    /// The last good addresses of a name backend, if it was ever resolved.
    pub fn resolved(&self, pool: &str, name: &BackendAddr) -> Option<Arc<[std::net::SocketAddr]>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .resolved
            .get(&(Arc::<str>::from(pool), name.clone()))
            .cloned()
    }

    /// The breaker watcher: at every trip, start a task to time each backend whose breaker
    /// was opened and has none (a trip's timing ends with it: a closed breaker costs no task).
    /// Trips are rare, so looking over every backend then is cheap; a trip while it looks
    /// leaves a wake-up for the next round.
    async fn watch_breakers(self: Arc<Self>) {
        let me = Arc::downgrade(&self);
        let (tripped, shutdown) = (self.tripped.clone(), self.shutdown.clone());
        drop(self);
        loop {
            tokio::select! {
                _ = tripped.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(me) = me.upgrade() else { return };
            for b in me.all() {
                if b.claim_breaker_timing() {
                    let trips = me
                        .trips
                        .as_ref()
                        .map(|t| t.with_label_values(&[&*b.id.pool, &*b.addr_label]));
                    me.tasks.spawn(b.breaker_trips(trips));
                }
            }
        }
    }

    /// A backend's client from its pool's template, building the template on first use.
    fn client_from(
        &self,
        template: &mut Option<ClientTemplate>,
        id: &BackendId,
        pc: &PoolConfig,
    ) -> Result<UpstreamClient, RegistryError> {
        let err = |e| RegistryError::Client {
            pool: pc.name.clone(),
            source: e,
        };
        if id.name.is_some() && pc.tls.as_ref().is_some_and(|t| t.sni.is_none()) {
            // Verified against the name it was found by: its own TLS setup (rare).
            return self.client(id, pc);
        }
        let addr = id.addr;
        let t = match template {
            Some(t) => t,
            None => template.insert(ClientTemplate::new(pc, self.base.as_deref()).map_err(err)?),
        };
        UpstreamClient::with_template(addr, pc, t).map_err(err)
    }

    /// Apply the pool's settings to a backend; start or stop its health checker. `fresh`: the
    /// backend was just created (it has never served).
    /// Follow `pc`; true when the backend's health checks were switched on (it needs a checker).
    fn configure(&self, b: &Arc<Backend>, pc: &Arc<PoolConfig>, fresh: bool) -> bool {
        let had_checks = b.is_checked();
        let old_pc = b.pool_config();
        b.set_pool_config(pc.clone());
        b.breaker
            .set_threshold(pc.circuit_breaker.consecutive_failures);
        b.set_max_concurrent(pc.circuit_breaker.max_concurrent_requests);
        if !fresh && old_pc.circuit_breaker != pc.circuit_breaker {
            // Let the breaker task see a switched-off breaker at once.
            b.breaker.wake.notify_one();
        }
        match (&pc.health_check, had_checks) {
            (Some(_), false) => {
                // A backend that was serving when checks were switched on keeps serving until
                // the checker says otherwise; a brand-new one waits for its first pass.
                b.set_health(if fresh {
                    Health::Unknown
                } else {
                    Health::Healthy
                });
                b.set_checked(true);
                return true;
            }
            (None, true) => {
                b.set_checked(false);
                // Retire the checker now, so a probe still running cannot write a verdict.
                b.next_health_epoch();
                b.set_health(Health::Unknown);
            }
            (Some(new), true) if old_pc.health_check.as_ref() != Some(new) => {
                // New interval or path: probe with it now rather than after the old interval.
                b.health_wake.notify_waiters();
            }
            _ => {}
        }
        false
    }

    /// Drain a backend: wait for its in-flight requests (bounded by `timeout`), then close it.
    fn spawn_drain(self: &Arc<Self>, b: Arc<Backend>, timeout: Duration) {
        let me = self.clone();
        self.tasks.spawn(async move {
            // Requests that loaded the snapshot from before the reload may still lease this
            // backend for a moment (see `Backend::try_lease`); close it only once they had
            // the chance and it is idle.
            let grace_end = tokio::time::Instant::now() + REMOVAL_GRACE;
            let idle_after_grace = async {
                loop {
                    b.wait_idle().await;
                    if tokio::time::Instant::now() >= grace_end {
                        break;
                    }
                    tokio::time::sleep_until(grace_end).await;
                }
            };
            let waited = tokio::time::timeout(timeout.max(REMOVAL_GRACE), idle_after_grace).await;
            if waited.is_err() {
                tracing::warn!(backend = %b.id, in_flight = b.in_flight(), "drain timeout reached; cutting remaining requests");
                b.cut_in_flight();
            } else {
                tracing::info!(backend = %b.id, "backend drained");
            }
            b.close();
            // Close its pooled connections now, even if an old snapshot still holds the backend.
            me.close_connections(&b);
            let mut inner = me.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.draining.retain(|x| !Arc::ptr_eq(x, &b));
        });
    }

    /// Drain (or undrain) a backend that stays in the config. After a drain completes its
    /// pooled connections are closed by swapping in a fresh client.
    pub fn set_draining(
        self: &Arc<Self>,
        pool: &str,
        addr: std::net::SocketAddr,
        on: bool,
        timeout: Duration,
    ) -> bool {
        let Some(b) = self.get(pool, addr) else {
            return false;
        };
        let was = b.is_draining();
        b.set_draining(on);
        if on && !was {
            tracing::info!(backend = %b.id, in_flight = b.in_flight(), "backend draining");
            let me = self.clone();
            self.tasks.spawn(async move {
                let waited = tokio::select! {
                    r = tokio::time::timeout(timeout, b.wait_idle()) => r,
                    _ = b.closed.cancelled() => return,
                };
                if !b.is_draining() {
                    return; // undrained meanwhile
                }
                if waited.is_err() {
                    tracing::warn!(backend = %b.id, in_flight = b.in_flight(), "drain timeout reached; cutting remaining requests");
                    b.cut_in_flight();
                }
                me.close_connections(&b);
                tracing::info!(backend = %b.id, "backend drained; connections closed");
            });
        } else if !on && was {
            tracing::info!(backend = %b.id, "backend undrained");
        }
        true
    }

    /// Drop a backend's pooled connections by giving it a fresh client; connections still
    /// carrying a response close when that response ends.
    fn close_connections(&self, b: &Backend) {
        let pc = b.pool_config();
        match self.client(&b.id, &pc) {
            Ok(c) => b.set_client(c),
            Err(e) => {
                tracing::warn!(backend = %b.id, error = %e, "cannot rebuild client to close connections")
            }
        }
    }

    /// The current backend of `pool` at `addr` (an `IP:PORT` one first, else one a name
    /// resolved to).
    pub fn get(&self, pool: &str, addr: std::net::SocketAddr) -> Option<Arc<Backend>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = inner.backends.get(&BackendId::ip(pool.into(), addr)) {
            return Some(b.clone());
        }
        inner
            .backends
            .values()
            .find(|b| &*b.id.pool == pool && b.id.addr == addr)
            .cloned()
    }

    /// The current backends (not those draining after removal), in id order: grouped by pool.
    pub fn current(&self) -> Vec<Arc<Backend>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.backends.values().cloned().collect()
    }

    /// Every backend: current ones in id order, then those still draining after removal.
    /// Every backend's gauges, for `/metrics`.
    pub fn gauges(&self) -> Vec<crate::metrics::BackendGauges> {
        self.all().iter().map(|b| b.gauges()).collect()
    }

    pub fn all(&self) -> Vec<Arc<Backend>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .backends
            .values()
            .chain(inner.draining.iter())
            .cloned()
            .collect()
    }

    /// Stop background tasks and cut everything (after graceful shutdown).
    pub fn close_all(&self) {
        self.shutdown.cancel();
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for b in inner.backends.values().chain(inner.draining.iter()) {
            b.cut_in_flight();
            b.close();
        }
    }
}

/// Above this, weights of names are rounded rather than split exactly (keeps the smooth
/// round-robin period short).
const MAX_SPLIT_SCALE: u64 = 840;

/// The backends of a pool with their weights: an `IP:PORT` backend as written, a name as its
/// last good addresses, its weight split evenly over them. Weights are scaled by the least
/// common multiple of the address counts so every split is a whole number.
fn expand(
    pc: &PoolConfig,
    pool: &Arc<str>,
    resolved: &HashMap<(Arc<str>, BackendAddr), Arc<[std::net::SocketAddr]>>,
    unresolved: &mut bool,
) -> Vec<(BackendId, u32)> {
    let addrs = |a: &BackendAddr| resolved.get(&(pool.clone(), a.clone()));
    let mut scale: u64 = 1;
    for bc in &pc.backends {
        if let BackendAddr::Name { .. } = bc.addr {
            match addrs(&bc.addr) {
                Some(list) if !list.is_empty() => {
                    let n = list.len() as u64;
                    scale = scale / gcd(scale, n) * n;
                }
                _ => *unresolved = true,
            }
        }
    }
    let scale = scale.min(MAX_SPLIT_SCALE);
    let mut out = Vec::with_capacity(pc.backends.len());
    for bc in &pc.backends {
        let w = bc.weight as u64 * scale;
        match &bc.addr {
            BackendAddr::Ip(a) => out.push((BackendId::ip(pool.clone(), *a), w as u32)),
            BackendAddr::Name { .. } => {
                let Some(list) = addrs(&bc.addr) else {
                    continue;
                };
                let label: Arc<str> = bc.addr.to_string().into();
                let each = (w / list.len().max(1) as u64).max(1) as u32;
                for a in list.iter() {
                    let id = BackendId {
                        pool: pool.clone(),
                        name: Some(label.clone()),
                        addr: *a,
                    };
                    out.push((id, each));
                }
            }
        }
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_one_backend_per_address_with_its_weight_split_evenly() {
        let text = "[pools.p]\nbackends = [{ addr = \"127.0.0.1:9\", weight = 3 }, { addr = \"api.test:80\", weight = 2 }]\n\
                    [[routes]]\nname = \"r\"\nsplit = { p = 1 }\n";
        let config = Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let name = BackendAddr::parse("api.test:80").unwrap();
        let registry = Arc::new(Registry::new(None));
        // Never resolved: the pool has only its literal.
        let (pools, _, _) = registry.sync(&config, None).unwrap();
        assert_eq!(pools["p"].backends.len(), 1);
        let addrs: Vec<std::net::SocketAddr> = (1..=4)
            .map(|i| format!("10.0.0.{i}:80").parse().unwrap())
            .collect();
        assert!(registry.set_resolved("p", &name, addrs.clone()));
        assert!(
            !registry.set_resolved("p", &name, addrs.clone()),
            "no change"
        );
        let (pools, changes, _) = registry.sync(&config, Some(&config)).unwrap();
        let p = &pools["p"];
        assert_eq!(changes.added.len(), 4, "{changes:?}");
        // 3 : 2 between the literal and the name, the name's 2 split in four.
        assert_eq!(p.weights, vec![12, 2, 2, 2, 2]);
        assert!(p.backends[1..]
            .iter()
            .all(|b| b.id.name.as_deref() == Some("api.test:80")));
        let kept = p.backends[1].clone();
        // Two addresses go: they drain; the two that stay keep their state (same backend).
        assert!(registry.set_resolved("p", &name, addrs[..2].to_vec()));
        let (pools, changes, _) = registry.sync(&config, Some(&config)).unwrap();
        assert_eq!(changes.removed.len(), 2, "{changes:?}");
        assert_eq!(pools["p"].weights, vec![6, 2, 2]);
        assert!(Arc::ptr_eq(&pools["p"].backends[1], &kept));
        assert_eq!(
            registry.get("p", addrs[0]).map(|b| b.id.clone()),
            Some(kept.id.clone())
        );
        assert!(registry
            .all()
            .iter()
            .any(|b| b.id.addr == addrs[3] && b.is_removed()));
    }
}
