//! The proxy listeners, keyed by address, so a reload can add and remove them without
//! touching the others: staged (bound, TLS loaded) before a change goes live, committed after.

use super::accept::{accept_loop, listen, Connections, Transport};
use crate::config::Config;
use crate::runtime::Live;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
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
    #[error("admin API on non-loopback {addr} needs a token: set the {env} environment variable (or one named in [admin] tokens)")]
    NoToken { addr: SocketAddr, env: String },
    /// Fleet mode could not start (`[cluster]`).
    #[error("{0}")]
    Cluster(String),
    #[error("{0}")]
    AccessLog(#[source] std::io::Error),
}

/// A listener's identity in the config: address as written, and whether it is TLS.
type ListenKey = (SocketAddr, bool);

/// A serving listener: bound address, its accept loop's stop, and a duplicate of the socket
/// for an upgrade's handover.
type Running = (SocketAddr, CancellationToken, Option<OwnedFd>);

/// The proxy listeners, keyed by address, so a reload can add and remove them without
/// touching the others.
pub struct Listeners {
    rt: Arc<Live>,
    conns: Arc<Connections>,
    /// The certificate set shared by every TLS listener; swapped on reload.
    tls: Mutex<Option<Arc<ArcSwap<rustls::ServerConfig>>>>,
    /// Bound address, the accept loop's stop, and a duplicate of the socket to hand to the
    /// next binary on an upgrade (closed with the entry).
    live: Mutex<HashMap<ListenKey, Running>>,
    /// The connection limit as configured, and what the semaphore still has to give back.
    limit: Arc<Mutex<ConnLimit>>,
    tasks: TaskTracker,
}

#[derive(Default)]
struct ConnLimit {
    target: usize,
    /// Permits over `target` still out (held by connections opened before a lowering).
    owed: usize,
    /// Cancels the task waiting to take the owed permits back.
    pending: Option<CancellationToken>,
}

/// Listeners bound (and TLS loaded) for a new config but not yet serving: the part of a
/// reload that can fail, done before anything changes.
pub struct StagedListeners {
    wanted: Vec<ListenKey>,
    fresh: Vec<(ListenKey, TcpListener)>,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
}

/// Listener addresses a reload added and removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ListenerChanges {
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
}

fn listen_label((addr, tls): &ListenKey) -> String {
    if *tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

impl Listeners {
    /// Listeners for `rt`, none bound yet (see [`Listeners::ensure`]).
    pub fn new(
        rt: Arc<Live>,
        conns: Arc<Connections>,
        max_conns: usize,
        tasks: TaskTracker,
    ) -> Self {
        Listeners {
            rt,
            conns,
            tls: Mutex::new(None),
            live: Mutex::new(HashMap::new()),
            limit: Arc::new(Mutex::new(ConnLimit {
                target: max_conns,
                ..ConnLimit::default()
            })),
            tasks,
        }
    }

    /// Bind the listeners `config` adds and load its TLS certificates, changing nothing yet.
    /// `config_file` resolves relative certificate paths.
    pub fn stage(
        &self,
        config: &Config,
        config_file: Option<&Path>,
    ) -> Result<StagedListeners, StartError> {
        let tls = if config.server.tls_listen.is_empty() {
            None
        } else {
            let file = config_file.map(Path::to_path_buf).unwrap_or_default();
            Some(crate::tls::server_config(config, &file)?)
        };
        let wanted: Vec<ListenKey> = config
            .server
            .listen
            .iter()
            .map(|a| (*a, false))
            .chain(config.server.tls_listen.iter().map(|a| (*a, true)))
            .collect();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh = Vec::new();
        for key in &wanted {
            if live.contains_key(key) || fresh.iter().any(|(k, _)| k == key) {
                continue;
            }
            let kind = if key.1 {
                crate::handover::Kind::Https
            } else {
                crate::handover::Kind::Http
            };
            let l = listen(kind, key.0).map_err(|e| StartError::Bind {
                addr: key.0,
                source: e,
            })?;
            fresh.push((*key, l));
        }
        Ok(StagedListeners {
            wanted,
            fresh,
            tls,
            max_connections: config.server.max_connections,
        })
    }

    /// Start serving on the staged listeners and stop the ones the config no longer names.
    /// Connections already accepted are never touched: they finish on their own.
    pub fn commit(&self, staged: StagedListeners) -> ListenerChanges {
        let mut changes = ListenerChanges::default();
        let tls = {
            let mut slot = self.tls.lock().unwrap_or_else(|e| e.into_inner());
            match (staged.tls, slot.as_ref()) {
                (Some(cfg), Some(cur)) => cur.store(cfg),
                (Some(cfg), None) => *slot = Some(Arc::new(ArcSwap::new(cfg))),
                (None, _) => {}
            }
            slot.clone()
        };
        self.resize(staged.max_connections);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|key, (bound, stop, _)| {
            let keep = staged.wanted.contains(key);
            if !keep {
                tracing::info!(addr = %bound, tls = key.1, "listener removed");
                changes.listeners_removed.push(listen_label(key));
                stop.cancel();
            }
            keep
        });
        for (key, l) in staged.fresh {
            let bound = l.local_addr().unwrap_or(key.0);
            let dup = l.as_fd().try_clone_to_owned().ok();
            let stop = CancellationToken::new();
            let transport = match (key.1, &tls) {
                (true, Some(t)) => Transport::Tls(t.clone()),
                _ => Transport::Plain,
            };
            tracing::info!(addr = %bound, tls = key.1, "listening");
            self.tasks.spawn(accept_loop(
                self.rt.clone(),
                l,
                transport,
                self.conns.clone(),
                stop.clone(),
            ));
            live.insert(key, (bound, stop, dup));
            changes.listeners_added.push(listen_label(&key));
        }
        changes
    }

    /// Make the set of listeners match the config. Returns the bound addresses (plain, tls).
    pub fn ensure(
        &self,
        config: &Config,
        config_file: Option<&Path>,
    ) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>), StartError> {
        let staged = self.stage(config, config_file)?;
        self.commit(staged);
        Ok(self.bound())
    }

    /// The bound addresses (ports resolved when the config said 0), plain then TLS, each in
    /// config order.
    pub fn bound(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let config = self.rt.config();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let pick = |addrs: &[SocketAddr], tls: bool| -> Vec<SocketAddr> {
            addrs
                .iter()
                .filter_map(|a| live.get(&(*a, tls)).map(|(bound, _, _)| *bound))
                .collect()
        };
        (
            pick(&config.server.listen, false),
            pick(&config.server.tls_listen, true),
        )
    }

    /// Follow a `max_connections` change. Raising adds permits at once; lowering takes back
    /// the free permits now and the rest as open connections end (none are cut).
    fn resize(&self, max: usize) {
        let mut limit = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        // A shrink still waiting for connections to end is recomputed from scratch.
        if let Some(pending) = limit.pending.take() {
            pending.cancel();
        }
        let current = limit.target + limit.owed;
        limit.target = max;
        limit.owed = 0;
        if max > current {
            self.conns.limit.add_permits(max - current);
        } else if max < current {
            let want = current - max;
            let taken = self.conns.limit.forget_permits(want);
            if taken < want {
                let owed = want - taken;
                limit.owed = owed;
                let token = CancellationToken::new();
                limit.pending = Some(token.clone());
                let (conns, me) = (self.conns.clone(), self.limit.clone());
                self.tasks.spawn(async move {
                    let permits = tokio::select! {
                        p = conns.limit.acquire_many(owed as u32) => p,
                        _ = token.cancelled() => return,
                    };
                    let mut limit = me.lock().unwrap_or_else(|e| e.into_inner());
                    // A newer resize counted these as still owed: give them back.
                    if let (Ok(p), false) = (permits, token.is_cancelled()) {
                        p.forget();
                        limit.owed = 0;
                        limit.pending = None;
                    }
                });
            }
        }
    }

    /// The certificate set the TLS listeners share (`None` until a config has TLS listeners).
    pub fn tls_config(&self) -> Option<Arc<ArcSwap<rustls::ServerConfig>>> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stop accepting on every listener (graceful shutdown).
    pub fn stop_all(&self) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for (_, stop, fd) in live.values_mut() {
            stop.cancel();
            // The duplicate kept for an upgrade keeps the socket listening (new connections
            // would wait in its backlog, never answered): close it with the listener.
            drop(fd.take());
        }
    }

    /// Every listening socket with its handover name, duplicated, for the next binary of an
    /// upgrade in place.
    pub fn handover(&self) -> Vec<(String, OwnedFd)> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter()
            .filter_map(|((addr, tls), (_, _, fd))| {
                let kind = if *tls {
                    crate::handover::Kind::Https
                } else {
                    crate::handover::Kind::Http
                };
                let fd = fd.as_ref()?.try_clone().ok()?;
                Some((crate::handover::name(kind, *addr), fd))
            })
            .collect()
    }
}
