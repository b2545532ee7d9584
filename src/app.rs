//! Starting and stopping a whole veer: runtime, proxy listeners, admin listener, background
//! tasks, and graceful shutdown.

use crate::config::Config;
use crate::control::Control;
use crate::proxy::accept::Connections;
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
    /// A duplicate of the admin socket and its handover name (by the address it was started
    /// on), for the next binary of an upgrade.
    admin_fd: Option<(String, std::os::fd::OwnedFd)>,
    tasks: TaskTracker,
}

/// How long the new binary of an upgrade has to say it is ready before it is killed.
pub const UPGRADE_READY_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Is any admin token set: `token_env`'s variable or one of `[admin] tokens`' (non-empty)?
pub fn has_admin_token(admin: &crate::config::AdminConfig) -> bool {
    std::iter::once(admin.token_env.as_str())
        .chain(admin.tokens.iter().map(|t| t.env.as_str()))
        .any(|env| std::env::var(env).is_ok_and(|t| !t.is_empty()))
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
    if !has_admin_token(&config.admin) && !admin_addr.ip().is_loopback() {
        return Err(StartError::NoToken {
            addr: admin_addr,
            env: config.admin.token_env.clone(),
        });
    }
    let max_conns = config.server.max_connections;
    // Fleet mode: the pools and routes come from the store (or its cache), before anything
    // is served.
    let (config, fleet) = match &config.cluster {
        None => (config, None),
        Some(_) => {
            let text = match &path {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| StartError::Cluster(format!("{}: {e}", p.display())))?,
                None => String::new(),
            };
            let p = crate::control::fleet::prepare(config, &text, path.as_deref())
                .await
                .map_err(|e| StartError::Cluster(e.to_string()))?;
            (p.config, Some(p.fleet))
        }
    };
    let rt = Control::new(config.clone(), path.clone())?;
    if let Some(log) =
        crate::log::access::AccessLog::start(&config.log, rt.metrics.access_log_dropped.clone())
            .map_err(StartError::AccessLog)?
    {
        let _ = rt.access_log.set(log);
    }
    let conns = Arc::new(Connections::new(max_conns));
    let tasks = TaskTracker::new();
    if let Some(fleet) = fleet {
        crate::control::fleet::spawn(&rt, fleet, &tasks);
    }
    let listeners = Arc::new(Listeners::new(
        rt.runtime.clone(),
        conns.clone(),
        max_conns,
        tasks.clone(),
    ));
    let _ = rt.listeners.set(Arc::downgrade(&listeners));
    let (listen, tls_listen) = listeners.ensure(&config, path.as_deref())?;
    let admin_listener = crate::proxy::accept::listen(crate::handover::Kind::Admin, admin_addr)
        .map_err(|e| StartError::Bind {
            addr: admin_addr,
            source: e,
        })?;
    let admin_fd = {
        use std::os::fd::AsFd;
        let name = crate::handover::name(crate::handover::Kind::Admin, admin_addr);
        admin_listener
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| (name, fd))
    };
    // An inherited socket the config no longer names is closed, not held forever.
    crate::handover::close_unclaimed();
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
        admin_fd,
        tasks,
    })
}

impl Running {
    /// Upgrade in place (SIGUSR2, SPEC.md §12): start the binary at the same path with the
    /// same arguments, hand it every listening socket (proxy, TLS, admin) and wait until it
    /// is ready. On `Ok` the caller shuts this process down gracefully; on `Err` the new
    /// process is gone (killed if it hung) and this one serves on. Counted either way.
    pub async fn upgrade(&self) -> Result<u32, crate::handover::UpgradeError> {
        let mut sockets = self.listeners.handover();
        if let Some((name, fd)) = &self.admin_fd {
            if let Ok(fd) = fd.try_clone() {
                sockets.push((name.clone(), fd));
            }
        }
        let result = crate::handover::start_successor(sockets, UPGRADE_READY_TIMEOUT).await;
        let label = if result.is_ok() { "success" } else { "failure" };
        self.rt.metrics.upgrades.with_label_values(&[label]).inc();
        if let Ok(pid) = result {
            // systemd follows the new process as the service's main one.
            crate::handover::sd_notify(&format!("MAINPID={pid}"));
        }
        result
    }

    /// Reopen the access log file (SIGUSR1, after logrotate moved it).
    pub fn reopen_access_log(&self) {
        if let Some(log) = self.rt.access_log.get() {
            log.reopen();
        }
    }

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
        if let Some(log) = self.rt.access_log.get() {
            log.flush(Duration::from_secs(1)).await;
        }
    }
}

/// Reload the config file (SIGHUP). Errors are logged and counted by the reload itself.
pub async fn reload_from_signal(rt: &Arc<Control>) {
    let _ = crate::control::reload(rt, crate::control::Trigger::Signal).await;
}
