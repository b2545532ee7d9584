//! Starting and stopping a whole veer: runtime, proxy listeners, admin listener, background
//! tasks, and graceful shutdown.

use crate::config::Config;
use crate::control::Control;
use crate::proxy::server::{bind, Connections};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::proxy::listeners::{ListenerChanges, Listeners, StagedListeners, StartError};

/// A running veer.
pub struct Running {
    pub rt: Arc<Control>,
    /// Bound proxy addresses (ports resolved when the config said 0).
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub listeners: Arc<Listeners>,
    conns: Arc<Connections>,
    admin_stop: CancellationToken,
    tasks: TaskTracker,
}

/// How to start veer, beyond the config.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Reload the config file when it changes (otherwise only on SIGHUP and the API).
    pub watch_config: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions { watch_config: true }
    }
}

/// Start veer with a validated config. `path` is the config file (None for the demo); with
/// one, the file is watched and reloaded when it changes.
pub async fn start(config: Config, path: Option<PathBuf>) -> Result<Running, StartError> {
    start_with(config, path, StartOptions::default()).await
}

/// [`start`] with options.
pub async fn start_with(
    config: Config,
    path: Option<PathBuf>,
    opts: StartOptions,
) -> Result<Running, StartError> {
    let admin_addr = config.admin.listen;
    let token = std::env::var(&config.admin.token_env)
        .ok()
        .filter(|t| !t.is_empty());
    if token.is_none() && !admin_addr.ip().is_loopback() {
        return Err(StartError::NoToken {
            addr: admin_addr,
            env: config.admin.token_env.clone(),
        });
    }
    let max_conns = config.server.max_connections;
    let rt = Control::new(config.clone(), path.clone())?;
    let conns = Arc::new(Connections::new(max_conns));
    let tasks = TaskTracker::new();
    let listeners = Arc::new(Listeners::new(
        rt.runtime.clone(),
        conns.clone(),
        max_conns,
        tasks.clone(),
    ));
    let _ = rt.listeners.set(Arc::downgrade(&listeners));
    let (listen, tls_listen) = listeners.ensure(&config, path.as_deref())?;
    let admin_listener = bind(admin_addr).map_err(|e| StartError::Bind {
        addr: admin_addr,
        source: e,
    })?;
    let admin = admin_listener.local_addr().unwrap_or(admin_addr);
    let admin_stop = CancellationToken::new();
    tasks.spawn(crate::admin::serve(
        rt.clone(),
        admin_listener,
        admin_stop.clone(),
    ));
    if let Some(path) = path.filter(|_| opts.watch_config) {
        tasks.spawn(crate::control::watch(rt.clone(), path));
    }
    let weak = Arc::downgrade(&listeners);
    crate::control::watch::spawn_cert_watcher(
        rt.clone(),
        move || weak.upgrade()?.tls_config(),
        &tasks,
        rt.shutdown.clone(),
    );
    // Backends by name: their first addresses before veer says it is ready; slow start.
    crate::control::dns::start(&rt, &tasks).await;
    rt.registry.tasks.spawn(crate::upstream::slow_start::run(
        rt.registry.clone(),
        rt.registry.shutdown.clone(),
    ));
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
        if tokio::time::timeout(drain, self.conns.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                "drain timeout reached; closing remaining connections"
            );
        }
        self.rt.registry.close_all();
        self.admin_stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
    }
}

/// Reload the config file (SIGHUP). Errors are logged and counted by the reload itself.
pub async fn reload_from_signal(rt: &Arc<Control>) {
    let _ = crate::control::reload(rt, crate::control::Trigger::Signal).await;
}
