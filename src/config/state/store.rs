//! [`Store`]: the entries in memory and their file, written before a change is made live,
//! laid over every reload; and the warnings when changes would not survive a restart.

use super::{Change, State};
use crate::config::writeback;
use crate::config::{Config, ConfigErrors};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a change could not be written to the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file on disk did not read at start: veer does not write over what it cannot read.
    #[error("the state file {path} could not be read at start, so veer does not write over it (fix or remove it, then reload): {errors}")]
    Unread { path: PathBuf, errors: ConfigErrors },
}

/// The runtime's state entries: what the state file holds, what could not be written yet,
/// and whether a `?force=true` change lives only in memory. Every method is called under the
/// runtime's change lock; the mutex only gives interior mutability.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    /// The state file, when the config names one.
    path: Option<PathBuf>,
    /// The config file, named in the state file's header.
    config_path: Option<PathBuf>,
    /// The config file's own config (before the state is laid over it).
    base: Arc<Config>,
    /// As last read from or written to the state file.
    disk: State,
    /// Recorded but not written: rollout progress that could not be written anywhere, or
    /// changes the state file refused. Laid over `disk`.
    unwritten: State,
    /// The state file did not read (at start): it is not written over until a reload reads it.
    unread: Option<ConfigErrors>,
    /// A `?force=true` change was applied in memory only since the last reload.
    forced: bool,
}

/// A reload's state, prepared beside its config and installed once that config is live.
#[derive(Debug)]
pub struct Prepared {
    inner: Inner,
    /// The config to make live: the config file's, with the state laid over it.
    pub config: Config,
    /// Entries the config overrode or that no longer fit it.
    pub dropped: Vec<String>,
}

impl Store {
    /// The store at start, from the config file's config: reads the state file it names and
    /// returns the config to make live. A state file that cannot be read is logged; veer starts
    /// on the config alone and leaves that file alone until a reload reads it.
    pub fn open(base: Config, config_path: Option<&Path>) -> (Store, Config) {
        let path = base.server.state_file.clone();
        let (disk, unread) = match &path {
            None => (State::default(), None),
            Some(p) => match State::load(p) {
                Ok(s) => (s, None),
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!("{e}");
                    }
                    tracing::error!(state_file = %p.display(), "the state file cannot be read; starting from the config alone, and not writing the state file until a reload reads it");
                    (State::default(), Some(errors))
                }
            },
        };
        let mut inner = Inner {
            path,
            config_path: config_path.map(Path::to_path_buf),
            base: Arc::new(base),
            disk,
            unwritten: State::default(),
            unread,
            forced: false,
        };
        let (config, dropped) = inner.disk.lay_over(&inner.base);
        for d in &dropped {
            tracing::info!(state_file = ?inner.path, "state entry dropped: {d}");
        }
        if !dropped.is_empty() {
            if let Err(e) = inner.write(&inner.disk.clone()) {
                tracing::warn!("{e}");
            }
        }
        if let Some(p) = &inner.path {
            if !inner.disk.is_empty() {
                tracing::info!(state_file = %p.display(), "state file laid over the config");
            }
        }
        (
            Store {
                inner: Mutex::new(inner),
            },
            config,
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state file, when the live config names one.
    pub fn path(&self) -> Option<PathBuf> {
        self.lock().path.clone()
    }

    /// Does everything live survive a restart: no change applied in memory only, nothing
    /// recorded that could not be written? (`"persisted"` in `/api/status`.)
    pub fn persisted(&self) -> bool {
        let i = self.lock();
        !i.forced && i.unwritten.is_empty()
    }

    /// Backends drained through the API, as the state keeps them (applied at start and at
    /// every reload).
    pub fn drains(&self) -> Vec<(String, SocketAddr, bool)> {
        let i = self.lock();
        i.disk
            .merged(&i.unwritten)
            .drains
            .into_iter()
            .map(|((p, a), on)| (p, a, on))
            .collect()
    }

    /// Write `change` into the state file (with everything not yet written). Nothing changes
    /// in memory when the write fails. Returns what to pass to [`Store::restore`] to undo it.
    pub fn write_change(&self, change: &Change) -> Result<Undo, StateError> {
        let mut i = self.lock();
        let path = i.path.clone().ok_or_else(|| StateError::Write {
            path: PathBuf::new(),
            source: std::io::Error::other("no state file configured"),
        })?;
        if let Some(errors) = &i.unread {
            return Err(StateError::Unread {
                path,
                errors: errors.clone(),
            });
        }
        let mut next = i.disk.merged(&i.unwritten);
        change.record(&mut next, &i.base);
        // Drop undrains (absence on disk says the same) and splits back at the config's.
        next.drains.retain(|_, on| *on);
        next.splits.retain(|_, e| e.set != e.was);
        i.write(&next)?;
        let undo = Undo {
            disk: std::mem::replace(&mut i.disk, next),
            unwritten: std::mem::take(&mut i.unwritten),
        };
        Ok(undo)
    }

    /// Put the state file and the entries back as they were before [`Store::write_change`]
    /// (its change could not be applied after all).
    pub fn restore(&self, undo: Undo) {
        let mut i = self.lock();
        if let Err(e) = i.write(&undo.disk) {
            tracing::error!("cannot restore the state file after a failed apply: {e}");
        }
        i.disk = undo.disk;
        i.unwritten = undo.unwritten;
    }

    /// Keep `change` in memory only (it could not be written): laid over the config at every
    /// reload, and `persisted` is false until it is written.
    pub fn remember(&self, change: &Change) {
        let mut i = self.lock();
        let base = i.base.clone();
        change.record(&mut i.unwritten, &base);
    }

    /// A `?force=true` change went live in memory only: `persisted` is false until a reload.
    pub fn mark_forced(&self) {
        self.lock().forced = true;
    }

    /// The config file was written with `change` and now reads as `base`: its keys are no
    /// longer the state's, and `base` is what later entries compare with.
    pub fn written_to_config(&self, change: &Change, base: Config) {
        let mut i = self.lock();
        change.forget(&mut i.disk);
        change.forget(&mut i.unwritten);
        i.base = Arc::new(base);
        // The live config was rebuilt from the file: nothing forced is left in it.
        i.forced = false;
    }

    /// `base` with the state laid over it, but for the keys of `except` (a change being
    /// written into the config file). Drops nothing: what no longer fits is dropped at the
    /// next reload.
    pub fn lay_over(&self, base: &Config, except: Option<&Change>) -> Config {
        let i = self.lock();
        let mut s = i.disk.merged(&i.unwritten);
        if let Some(c) = except {
            c.forget(&mut s);
        }
        s.lay_over(base).0
    }

    /// Prepare a reload of the config file, now read as `base`: read the state file it names
    /// again (an operator may have edited or removed it), keep what could not be written yet,
    /// and lay both over `base`. A state file that does not read fails the reload.
    pub fn prepare_reload(&self, base: Config) -> Result<Prepared, ConfigErrors> {
        let cur = self.lock().clone();
        let path = base.server.state_file.clone();
        let mut disk = match &path {
            Some(p) => State::load(p)?,
            None => State::default(),
        };
        let (_, mut dropped) = disk.lay_over(&base);
        let mut unwritten = cur.unwritten;
        let (_, more) = unwritten.lay_over(&base);
        dropped.extend(more);
        let (config, _) = disk.merged(&unwritten).lay_over(&base);
        let inner = Inner {
            path,
            config_path: cur.config_path,
            base: Arc::new(base),
            disk,
            unwritten,
            unread: None,
            forced: false,
        };
        Ok(Prepared {
            inner,
            config,
            dropped,
        })
    }

    /// Make a prepared reload's state current (its config is live): the state file is
    /// rewritten when entries were dropped or changes wait to be written.
    pub fn install(&self, p: Prepared) {
        for d in &p.dropped {
            tracing::info!("state entry dropped: {d}");
        }
        let mut inner = p.inner;
        if inner.path.is_some() && (!p.dropped.is_empty() || !inner.unwritten.is_empty()) {
            let mut next = inner.disk.merged(&inner.unwritten);
            next.drains.retain(|_, on| *on);
            next.splits.retain(|_, e| e.set != e.was);
            match inner.write(&next) {
                Ok(()) => {
                    inner.disk = next;
                    inner.unwritten = State::default();
                }
                Err(e) => tracing::warn!("{e}; the changes stay in memory"),
            }
        }
        *self.lock() = inner;
    }
}

/// How to undo a [`Store::write_change`].
#[derive(Debug)]
pub struct Undo {
    disk: State,
    unwritten: State,
}

impl Inner {
    fn write(&self, state: &State) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = state.to_toml(self.config_path.as_deref());
        writeback::write_atomic_create(path, text.as_bytes()).map_err(|e| StateError::Write {
            path: path.clone(),
            source: e,
        })
    }
}

/// Problems that keep changes from surviving a restart, for `veer check` and the start of
/// `veer run`: a config file veer cannot write and no `state_file`, or a state file that
/// cannot be written or read.
pub fn persistence_warnings(config_path: &Path, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    match &config.server.state_file {
        None => {
            if let Err(e) = writeback::probe_writable(config_path) {
                out.push(format!(
                    "cannot write the config file {} ({e}): API changes will answer 409 (or, with ?force=true, last only until a reload) and rollouts run in memory (a restart starts them over); set [server] state_file = \"/var/lib/veer/state.toml\" to keep them in a file of their own",
                    config_path.display()
                ));
            }
        }
        Some(p) => {
            if let Err(e) = writeback::probe_writable_or_creatable(p) {
                out.push(format!(
                    "cannot write the state file {} ({e}): API changes will answer 409 (or, with ?force=true, last only until a reload) and rollouts run in memory (a restart starts them over)",
                    p.display()
                ));
            }
            if let Err(errors) = State::load(p) {
                out.extend(errors.0.iter().map(|e| e.to_string()));
            }
        }
    }
    out
}
