//! The live state of a running veer, as the data plane reads it: the current [`Snapshot`]
//! (one `ArcSwap` load per request), the backend [`Registry`] and the metrics. Changes are
//! made by the control layer (`control::Control`), which builds new snapshots through
//! [`Live::apply`].

use crate::config::{Config, RouteConfig};
use crate::metrics::Metrics;
use crate::routing::{Route, RouteCounters, Router, SplitTable};
use crate::upstream::registry::{BackendChanges, RegistryError};
use crate::upstream::{Pool, Registry};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// Everything a request needs, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub loaded_at: SystemTime,
    pub config: Arc<Config>,
    pub router: Router,
    pub pools: HashMap<Arc<str>, Arc<Pool>>,
}

/// What applying a config changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub version: u64,
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    /// Routes whose split changed: name → new weights.
    pub weights_changed: HashMap<String, HashMap<String, u32>>,
    #[serde(flatten)]
    pub backends: BackendChanges,
}

/// The running proxy's shared state.
#[derive(Debug)]
pub struct Live {
    snapshot: ArcSwap<Snapshot>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// The config file, when there is one (not in `veer demo`).
    pub config_path: Option<PathBuf>,
    route_states: Mutex<HashMap<String, Arc<RouteCounters>>>,
    version: AtomicU64,
    ready: AtomicBool,
    /// Cancelled when graceful shutdown begins.
    pub shutdown: CancellationToken,
    /// Fleet mode (`[cluster]`, SPEC §7): set once at start; unset for a single replica.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Fleet>>,
    /// The access log, when `[log] access` is on (set once by `app::start`).
    pub access_log: std::sync::OnceLock<crate::log::access::AccessLog>,
}

impl Live {
    /// Build the runtime with its first config. Must be called inside a tokio runtime.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Arc<Self>, RegistryError> {
        // Built on a thread that ends, as the config was parsed: the first build's scratch
        // (maps, copies, label strings) goes back to the OS at once rather than staying
        // with the allocator of a thread that hardly allocates again (issue 15).
        let handle = tokio::runtime::Handle::current();
        crate::config::scratch_thread(move || {
            let _in = handle.enter();
            Self::build(config, config_path)
        })
    }

    fn build(config: Config, config_path: Option<PathBuf>) -> Result<Arc<Self>, RegistryError> {
        let base = config_path
            .as_ref()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()));
        let metrics = Arc::new(Metrics::new());
        let registry =
            Arc::new(Registry::new(base).with_trips_metric(metrics.breaker_trips.clone()));
        let route_states = Mutex::new(HashMap::new());
        let empty = Snapshot {
            version: 0,
            loaded_at: SystemTime::now(),
            config: Arc::new(config.clone()),
            router: Router::default(),
            pools: HashMap::new(),
        };
        let rt = Arc::new(Live {
            snapshot: ArcSwap::from_pointee(empty),
            registry,
            metrics,
            config_path,
            route_states,
            version: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            cluster: std::sync::OnceLock::new(),
            access_log: std::sync::OnceLock::new(),
        });
        rt.build_and_swap(config, None)?;
        Ok(rt)
    }

    /// The current snapshot (for one request, or one admin call).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn config(&self) -> Arc<Config> {
        self.snapshot.load().config.clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_cancelled()
    }

    pub fn set_ready(&self, on: bool) {
        self.ready.store(on, Ordering::Release);
    }

    /// Make `config` live atomically. Backends that stay keep their state; removed ones drain.
    /// Only the control layer calls it (it also starts and stops rollouts, under its lock).
    pub fn apply(&self, config: Config) -> Result<ApplyReport, RegistryError> {
        let old = self.config();
        self.build_and_swap(config, Some(&old))
    }

    fn build_and_swap(
        &self,
        config: Config,
        old: Option<&Config>,
    ) -> Result<ApplyReport, RegistryError> {
        self.registry.check_clients(&config)?;
        let (pools, backends, start) = self.registry.sync(&config, old)?;
        // Before the swap, as when the registry spawned them: a new backend's checker runs
        // from the first request that can pick it.
        for b in start.health {
            crate::health::spawn(&b, &self.registry.tasks);
        }
        // First, so the routes built below find their series (and a new route's defaults).
        self.metrics.routes_changed(&config);
        let mut states = self.route_states.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut report = ApplyReport {
            backends,
            ..Default::default()
        };
        // A route whose config and pools did not change is carried over as it is (issue 15:
        // a reload that changes one weight rebuilds that route, not the thousand others).
        let current = self.snapshot.load_full();
        let previous: HashMap<&str, &Arc<Route>> = current
            .router
            .routes()
            .iter()
            .map(|r| (&*r.name, r))
            .collect();
        for rc in &config.routes {
            let state = states.entry(rc.name.clone()).or_default().clone();
            routes.push(match previous.get(rc.name.as_str()) {
                Some(r) if unchanged(r, rc, &pools) => Arc::clone(r),
                _ => Arc::new(self.build_route(rc, &pools, state)),
            });
            match old.and_then(|o| o.route(&rc.name)) {
                None if old.is_some() => report.routes_added.push(rc.name.clone()),
                Some(o) if o.split != rc.split => {
                    report
                        .weights_changed
                        .insert(rc.name.clone(), rc.split.iter().cloned().collect());
                }
                _ => {}
            }
        }
        if let Some(old) = old {
            for r in &old.routes {
                if config.route(&r.name).is_none() {
                    report.routes_removed.push(r.name.clone());
                }
            }
        }
        states.retain(|name, _| config.route(name).is_some());
        drop(states);
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        report.version = version;
        self.snapshot.store(Arc::new(Snapshot {
            version,
            loaded_at: SystemTime::now(),
            config: Arc::new(config),
            router: Router::new(routes),
            pools,
        }));
        Ok(report)
    }

    fn build_route(
        &self,
        rc: &Arc<RouteConfig>,
        pools: &HashMap<Arc<str>, Arc<Pool>>,
        state: Arc<RouteCounters>,
    ) -> Route {
        let route_pools: Vec<Arc<Pool>> = rc
            .split
            .iter()
            .map(|(p, _)| pools[p.as_str()].clone())
            .collect();
        let weights: Vec<u32> = rc.split.iter().map(|(_, w)| *w).collect();
        let names: Vec<&str> = rc.split.iter().map(|(p, _)| p.as_str()).collect();
        Route {
            name: rc.name.as_str().into(),
            config: Arc::clone(rc),
            table: SplitTable::new(&names, &weights),
            metrics: self
                .metrics
                .route_metrics(&rc.name, &metric_labels(&route_pools)),
            pools: route_pools,
            weights,
            state,
            mirror: rc.mirror.as_ref().and_then(|m| {
                Some(Box::new(crate::routing::MirrorTarget {
                    config: (**m).clone(),
                    pool: pools.get(m.to.as_str())?.clone(),
                    counts: crate::metrics::mirror::Counts::new(
                        &self.metrics.mirror_requests,
                        &rc.name,
                    ),
                }))
            }),
        }
    }
}

/// Does `route` (of the live snapshot) stand as it is for `rc` over the new `pools`?
fn unchanged(route: &Route, rc: &Arc<RouteConfig>, pools: &HashMap<Arc<str>, Arc<Pool>>) -> bool {
    let same_mirror = match (&route.mirror, &rc.mirror) {
        (Some(m), Some(c)) => pools
            .get(c.to.as_str())
            .is_some_and(|now| Arc::ptr_eq(now, &m.pool)),
        (None, None) => true,
        _ => false,
    };
    same_mirror
        && (Arc::ptr_eq(&route.config, rc) || *route.config == **rc)
        && route.pools.len() == rc.split.len()
        && route.pools.iter().zip(&rc.split).all(|(p, (name, _))| {
            pools
                .get(name.as_str())
                .is_some_and(|now| Arc::ptr_eq(now, p))
        })
}

/// Each pool's name and backend labels, for its route's metric handles.
fn metric_labels(pools: &[Arc<Pool>]) -> Vec<(&str, Vec<&str>)> {
    pools
        .iter()
        .map(|p| {
            (
                &*p.name,
                p.backends.iter().map(|b| &*b.addr_label).collect(),
            )
        })
        .collect()
}
