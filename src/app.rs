//! Starting and stopping a whole veer: runtime, proxy listeners, admin listener, background
//! tasks, and graceful shutdown.

use crate::config::Config;
use crate::proxy::server::{accept_loop, bind, Connections, Transport};
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors starting veer.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] crate::upstream::registry::RegistryError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("admin API on non-loopback {addr} needs a token: set the {env} environment variable")]
    NoToken { addr: SocketAddr, env: String },
}

/// The proxy listeners, keyed by address, so a reload can add and remove them without
/// touching the others.
pub struct Listeners {
    rt: Arc<Runtime>,
    conns: Arc<Connections>,
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    live: Mutex<HashMap<(SocketAddr, bool), (SocketAddr, CancellationToken)>>,
    tasks: TaskTracker,
}

impl Listeners {
    /// Make the set of listeners match the config. Returns the bound addresses (plain, tls).
    pub fn ensure(&self, plain: &[SocketAddr], tls: &[SocketAddr]) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>), StartError> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: Vec<(SocketAddr, bool)> = plain
            .iter()
            .map(|a| (*a, false))
            .chain(tls.iter().map(|a| (*a, true)))
            .collect();
        // Bind all new ones first, so a failure changes nothing.
        let mut fresh = Vec::new();
        for key in &wanted {
            if live.contains_key(key) {
                continue;
            }
            let l = bind(key.0).map_err(|e| StartError::Bind { addr: key.0, source: e })?;
            fresh.push((*key, l));
        }
        live.retain(|key, (_, stop)| {
            let keep = wanted.contains(key);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (key, l) in fresh {
            let bound = l.local_addr().unwrap_or(key.0);
            let stop = CancellationToken::new();
            let transport = match (key.1, &self.tls) {
                (true, Some(t)) => Transport::Tls(t.clone()),
                _ => Transport::Plain,
            };
            tracing::info!(addr = %bound, tls = key.1, "listening");
            self.tasks.spawn(accept_loop(self.rt.clone(), l, transport, self.conns.clone(), stop.clone()));
            live.insert(key, (bound, stop));
        }
        let mut p = Vec::new();
        let mut t = Vec::new();
        for key in &wanted {
            if let Some((bound, _)) = live.get(key) {
                if key.1 {
                    t.push(*bound);
                } else {
                    p.push(*bound);
                }
            }
        }
        Ok((p, t))
    }

    fn stop_all(&self) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for (_, stop) in live.values() {
            stop.cancel();
        }
    }
}

/// A running veer.
pub struct Running {
    pub rt: Arc<Runtime>,
    /// Bound proxy addresses (ports resolved when the config said 0).
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub listeners: Arc<Listeners>,
    conns: Arc<Connections>,
    admin_stop: CancellationToken,
    tasks: TaskTracker,
}

/// Start veer with a validated config. `path` is the config file (None for the demo).
pub async fn start(config: Config, path: Option<PathBuf>) -> Result<Running, StartError> {
    let admin_addr = config.admin.listen;
    let token = std::env::var(&config.admin.token_env).ok().filter(|t| !t.is_empty());
    if token.is_none() && !admin_addr.ip().is_loopback() {
        return Err(StartError::NoToken {
            addr: admin_addr,
            env: config.admin.token_env.clone(),
        });
    }
    let tls = if config.server.tls_listen.is_empty() {
        None
    } else {
        let file = path.clone().unwrap_or_default();
        Some(Arc::new(ArcSwap::new(crate::tls::server_config(&config, &file)?)))
    };
    let max_conns = config.server.max_connections;
    let (plain, tls_addrs) = (config.server.listen.clone(), config.server.tls_listen.clone());
    let rt = Runtime::new(config, path)?;
    let conns = Arc::new(Connections::new(max_conns));
    let tasks = TaskTracker::new();
    let listeners = Arc::new(Listeners {
        rt: rt.clone(),
        conns: conns.clone(),
        tls,
        live: Mutex::new(HashMap::new()),
        tasks: tasks.clone(),
    });
    let (listen, tls_listen) = listeners.ensure(&plain, &tls_addrs)?;
    let admin_listener = bind(admin_addr).map_err(|e| StartError::Bind { addr: admin_addr, source: e })?;
    let admin = admin_listener.local_addr().unwrap_or(admin_addr);
    let admin_stop = CancellationToken::new();
    tasks.spawn(crate::admin::serve(rt.clone(), listeners.clone(), admin_listener, admin_stop.clone()));
    rt.set_ready(true);
    tracing::info!(%admin, "admin API listening");
    Ok(Running {
        rt,
        listen,
        tls_listen,
        admin,
        listeners,
        conns,
        admin_stop,
        tasks,
    })
}

impl Running {
    /// Graceful shutdown: not ready at once, stop accepting, ask connections to close, let
    /// in-flight requests finish (up to `drain_timeout`), then stop everything.
    pub async fn shutdown(self) {
        let drain = self.rt.config().server.drain_timeout;
        self.rt.shutdown.cancel();
        self.listeners.stop_all();
        self.conns.closing.cancel();
        self.conns.tracker.close();
        if tokio::time::timeout(drain, self.conns.tracker.wait()).await.is_err() {
            tracing::warn!(?drain, "drain timeout reached; closing remaining connections");
        }
        self.rt.registry.close_all();
        self.admin_stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
    }
}

/// Reload the config file (SIGHUP). Filled in by the live-control work.
pub async fn reload_from_signal(rt: &Arc<Runtime>) {
    let _ = rt;
}
