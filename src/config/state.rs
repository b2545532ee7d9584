//! The state file (`[server] state_file`, SPEC §3): where API changes and rollout progress go
//! when the config file is not veer's to write (a Kubernetes ConfigMap volume, a file owned by
//! another user), laid over the config at start and at every reload.
//!
//! Every entry remembers what the config file said for the same key when it was written
//! (`was`). Laying the state over a config keeps an entry only while the config still says
//! that: an operator who edits the config's split of a route, or its `[routes.rollout]`, wins,
//! and the entry is dropped. The file is veer's own (atomic replace, created if missing; its
//! folder must exist):
//!
//! ```toml
//! [routes.web.split]
//! set = { blue = 0, green = 100 }
//! was = { blue = 100, green = 0 }
//!
//! [routes.web.rollout]
//! state = "succeeded"
//! step = 3
//! was = "to=green steps=[5, 25, 50, 100] step_interval=1m …"
//!
//! [pools.blue]
//! draining = ["127.0.0.1:9001"]
//! ```
//!
//! Without a state file the same entries are kept in memory for rollout progress that cannot
//! be written into the config file, so a reload does not take a running rollout's weight away.

use super::writeback::{self, WritebackError};
use super::{Config, ConfigError, ConfigErrors, ProgressMeta, RolloutConfig, RolloutState};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use toml_edit::DocumentMut;

/// A route's weights, sorted by pool name (as [`super::RouteConfig::split`]).
pub type Split = Vec<(String, u32)>;

/// Entries laid over a config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// Route → its split.
    pub splits: BTreeMap<String, SplitEntry>,
    /// Route → its rollout's progress.
    pub rollouts: BTreeMap<String, RolloutEntry>,
    /// (pool, backend) → drained. `false` (an undrain) only matters in changes not yet
    /// written, where it overrides a drain on disk; it is never written.
    pub drains: BTreeMap<(String, SocketAddr), bool>,
}

/// A split set through the API or by a rollout step.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitEntry {
    pub set: Split,
    /// The config file's split of the route when this was written.
    pub was: Split,
}

/// A rollout's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutEntry {
    pub state: RolloutState,
    pub step: usize,
    /// [`describe`] of the config file's `[routes.rollout]` when this was written.
    pub was: String,
    /// The step's clock, the definition's fingerprint, a hotfix run.
    pub meta: ProgressMeta,
}

/// What to do with a change that cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritable {
    /// Change nothing: the API answers 409.
    Refuse,
    /// `?force=true`: apply it in memory only, until the next reload (or the next change
    /// written into the config file, which rereads it); `"persisted": false` until then.
    Force,
    /// A rollout's progress: apply it in memory and keep it over reloads, so a rollout never
    /// waits on a file; written with the next write that succeeds.
    Remember,
}

/// One change made through the API or by a rollout, in the form every target takes: the
/// config document (write-back), a config in memory, and the state file.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Split {
        route: String,
        split: Split,
    },
    /// A rollout step: the split and `state`/`step` of `[routes.rollout]` together.
    Progress {
        route: String,
        split: Split,
        state: RolloutState,
        step: usize,
        /// Written with the step: its clock, the definition's fingerprint, a hotfix run.
        meta: ProgressMeta,
    },
    /// Drain state lives outside the config file; only a state file keeps it over a restart.
    Drain {
        pool: String,
        addr: SocketAddr,
        on: bool,
    },
}

impl Change {
    /// The route or pool the change is about (for messages).
    pub fn subject(&self) -> String {
        match self {
            Change::Split { route, .. } | Change::Progress { route, .. } => {
                format!("route {route:?}")
            }
            Change::Drain { pool, addr, .. } => format!("backend {addr} of pool {pool:?}"),
        }
    }

    /// Edit the config file's document (comments and layout kept).
    pub fn edit_doc(&self, doc: &mut DocumentMut) -> Result<(), WritebackError> {
        match self {
            Change::Split { route, split } => writeback::set_split(doc, route, split),
            Change::Progress {
                route,
                split,
                state,
                step,
                meta,
            } => {
                writeback::set_split(doc, route, split)?;
                writeback::set_rollout_progress(doc, route, *state, *step, meta)
            }
            Change::Drain { .. } => Ok(()),
        }
    }

    /// The same change on a config in memory. The route was checked to exist.
    pub fn edit_config(&self, config: &mut Config) {
        match self {
            Change::Split { route, split } => {
                if let Some(r) = config.route_mut(route) {
                    r.split = split.clone();
                }
            }
            Change::Progress {
                route,
                split,
                state,
                step,
                meta,
            } => {
                if let Some(r) = config.route_mut(route) {
                    r.split = split.clone();
                    if let Some(ro) = r.rollout.as_mut() {
                        ro.state = Some(*state);
                        ro.step = Some(*step);
                        ro.progress = meta.clone();
                    }
                }
            }
            Change::Drain { .. } => {}
        }
    }

    /// Record the change in `state`, with what `base` (the config file's own config) says
    /// for the same key.
    pub fn record(&self, state: &mut State, base: &Config) {
        let base_split = |route: &str| {
            base.route(route)
                .map(|r| r.split.clone())
                .unwrap_or_default()
        };
        match self {
            Change::Split { route, split } => {
                state.splits.insert(
                    route.clone(),
                    SplitEntry {
                        set: split.clone(),
                        was: base_split(route),
                    },
                );
            }
            Change::Progress {
                route,
                split,
                state: st,
                step,
                meta,
            } => {
                state.splits.insert(
                    route.clone(),
                    SplitEntry {
                        set: split.clone(),
                        was: base_split(route),
                    },
                );
                let was = base
                    .route(route)
                    .and_then(|r| r.rollout.as_ref())
                    .map(describe)
                    .unwrap_or_default();
                state.rollouts.insert(
                    route.clone(),
                    RolloutEntry {
                        state: *st,
                        step: *step,
                        was,
                        meta: meta.clone(),
                    },
                );
            }
            Change::Drain { pool, addr, on } => {
                state.drains.insert((pool.clone(), *addr), *on);
            }
        }
    }

    /// Drop the change's keys from `state` (the config file holds them now).
    pub fn forget(&self, state: &mut State) {
        match self {
            Change::Split { route, .. } => {
                state.splits.remove(route);
            }
            Change::Progress { route, .. } => {
                state.splits.remove(route);
                state.rollouts.remove(route);
            }
            Change::Drain { pool, addr, .. } => {
                state.drains.remove(&(pool.clone(), *addr));
            }
        }
    }
}

/// The `was` of a rollout entry: its definition and the progress the config file records,
/// spelled out so the state file stays readable and stable across versions. Keep in step with
/// [`RolloutConfig::definition_eq`].
pub fn describe(r: &RolloutConfig) -> String {
    format!(
        "{} state={} step={}",
        r.definition_text(),
        r.state.map_or("-", |s| s.as_str()),
        r.step.map_or_else(|| "-".to_string(), |s| s.to_string()),
    )
}

/// Can `route`'s split be what `config` says: pools that exist, weights in range, not all
/// zero, and two pools with the rollout's `to` among them when the route has a rollout.
/// The same rules as the config file's (validate.rs), for a split that never was text.
pub fn check_split(config: &Config, route: &str) -> Result<(), String> {
    let Some(rc) = config.route(route) else {
        return Err(format!("no route named {route:?}"));
    };
    if rc.split.is_empty() {
        return Err(format!("the split of route {route:?} names no pool"));
    }
    for (p, w) in &rc.split {
        if !config.pools.contains_key(p) {
            return Err(format!("pool {p:?} does not exist"));
        }
        if *w > 1_000_000 {
            return Err(format!("weight {w} of {p:?} is over 1000000"));
        }
    }
    if rc.split.iter().all(|(_, w)| *w == 0) {
        return Err("all weights are zero; at least one pool needs a positive weight".into());
    }
    if let Some(r) = &rc.rollout {
        if rc.split.len() != 2 || rc.weight_of(&r.to).is_none() {
            return Err(format!(
                "route {route:?} has a rollout of {:?}, which needs a split of exactly two pools with {:?} among them",
                r.to, r.to
            ));
        }
    }
    Ok(())
}

impl State {
    pub fn is_empty(&self) -> bool {
        self.splits.is_empty() && self.rollouts.is_empty() && self.drains.is_empty()
    }

    /// `self` with `newer`'s entries on top.
    pub fn merged(&self, newer: &State) -> State {
        let mut out = self.clone();
        out.splits
            .extend(newer.splits.iter().map(|(k, v)| (k.clone(), v.clone())));
        out.rollouts
            .extend(newer.rollouts.iter().map(|(k, v)| (k.clone(), v.clone())));
        out.drains
            .extend(newer.drains.iter().map(|(k, v)| (k.clone(), *v)));
        out
    }

    /// Lay the entries over `base` (the config file's config). Entries the config overrode
    /// (it no longer says what it said when they were written), or that no longer fit it, are
    /// removed from `self`; each removal is described in the returned list.
    pub fn lay_over(&mut self, base: &Config) -> (Config, Vec<String>) {
        let mut config = base.clone();
        let mut dropped = Vec::new();
        self.splits.retain(|route, e| {
            let Some(rc) = base.route(route) else {
                dropped.push(format!("split of route {route:?}: the route is gone"));
                return false;
            };
            if rc.split != e.was {
                dropped.push(format!(
                    "split of route {route:?}: the config changed it (to {}), and the config wins",
                    show(&rc.split)
                ));
                return false;
            }
            let mut c = config.clone();
            Change::Split {
                route: route.clone(),
                split: e.set.clone(),
            }
            .edit_config(&mut c);
            if let Err(why) = check_split(&c, route) {
                dropped.push(format!("split of route {route:?}: {why}"));
                return false;
            }
            config = c;
            true
        });
        self.rollouts.retain(|route, e| {
            let Some(def) = base.route(route).and_then(|r| r.rollout.as_ref()) else {
                dropped.push(format!("rollout of route {route:?}: the config has none"));
                return false;
            };
            if describe(def) != e.was {
                dropped.push(format!(
                    "rollout of route {route:?}: the config's [routes.rollout] changed, and the config wins"
                ));
                return false;
            }
            if let Some(r) = config.route_mut(route).and_then(|r| r.rollout.as_mut()) {
                r.state = Some(e.state);
                r.step = Some(e.step.min(r.steps.len().saturating_sub(1)));
                r.progress = e.meta.clone();
            }
            true
        });
        self.drains.retain(|(pool, addr), _| {
            let present = base
                .pools
                .get(pool)
                // A name's addresses are known only once resolved: a drain in a pool with
                // names is kept (it applies if the address comes back).
                .is_some_and(|p| {
                    p.backends.iter().any(|b| match &b.addr {
                        crate::config::BackendAddr::Ip(a) => a == addr,
                        crate::config::BackendAddr::Name { port, .. } => *port == addr.port(),
                    })
                });
            if !present {
                dropped.push(format!(
                    "drain of {addr} in pool {pool:?}: the config no longer has that backend"
                ));
            }
            present
        });
        (config, dropped)
    }

    /// The state file's text. `config` names the config file in the header comment.
    pub fn to_toml(&self, config: Option<&Path>) -> String {
        use toml_edit::{value, Array, InlineTable, Item, Table};
        let inline = |s: &Split| {
            let mut t = InlineTable::new();
            for (p, w) in s {
                t.insert(p, (*w as i64).into());
            }
            toml_edit::Value::InlineTable(t)
        };
        let mut doc = DocumentMut::new();
        let mut routes = Table::new();
        routes.set_implicit(true);
        let names: std::collections::BTreeSet<&String> =
            self.splits.keys().chain(self.rollouts.keys()).collect();
        for name in names {
            let mut rt = Table::new();
            rt.set_implicit(true);
            if let Some(e) = self.splits.get(name) {
                let mut t = Table::new();
                t.insert("set", Item::Value(inline(&e.set)));
                t.insert("was", Item::Value(inline(&e.was)));
                rt.insert("split", Item::Table(t));
            }
            if let Some(e) = self.rollouts.get(name) {
                let mut t = Table::new();
                t.insert("state", value(e.state.as_str()));
                t.insert("step", value(e.step as i64));
                t.insert("was", value(e.was.as_str()));
                let m = &e.meta;
                if let Some(v) = m.step_started_ms {
                    t.insert("step_started_ms", value(v.min(i64::MAX as u64) as i64));
                }
                if let Some(v) = m.approval_deadline_ms {
                    t.insert("approval_deadline_ms", value(v.min(i64::MAX as u64) as i64));
                }
                if let Some(f) = &m.fingerprint {
                    t.insert("fingerprint", value(f.as_str()));
                }
                if m.hotfix {
                    t.insert("mode", value("hotfix"));
                }
                rt.insert("rollout", Item::Table(t));
            }
            routes.insert(name, Item::Table(rt));
        }
        if !routes.is_empty() {
            doc.insert("routes", Item::Table(routes));
        }
        let mut pools: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((pool, addr), on) in &self.drains {
            if *on {
                pools.entry(pool).or_default().push(addr.to_string());
            }
        }
        if !pools.is_empty() {
            let mut pt = Table::new();
            pt.set_implicit(true);
            for (pool, addrs) in pools {
                let mut t = Table::new();
                t.insert("draining", value(addrs.iter().collect::<Array>()));
                pt.insert(pool, Item::Table(t));
            }
            doc.insert("pools", Item::Table(pt));
        }
        let of = config
            .map(|p| format!(" {}", p.display()))
            .unwrap_or_default();
        format!(
            "# veer state: changes made through the admin API and rollout progress, laid over the\n\
             # config{of} at start and at every reload. Written by veer (atomic replace).\n\
             # `was` is what the config said when the entry was written: once the config says\n\
             # something else for that key, the config wins and the entry is dropped.\n\n{doc}"
        )
    }

    /// Read a state file's text; `path` names it in errors (`FILE:LINE:COL: message`).
    pub fn parse(path: &Path, text: &str) -> Result<State, ConfigErrors> {
        let file: raw::File = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            errors_at(path, text, at, e.message())
        })?;
        let mut state = State::default();
        let mut errors = Vec::new();
        let mut bad = |at: usize, msg: String| errors.push(error_at(path, text, at, msg));
        for (route, r) in file.routes {
            if let Some(s) = r.split {
                let at = s.span().start;
                let s = s.into_inner();
                match (split(&s.set), split(&s.was)) {
                    (Some(set), Some(was)) => {
                        state.splits.insert(route.clone(), SplitEntry { set, was });
                    }
                    _ => bad(
                        at,
                        format!("routes.{route}.split: weights must be integers 0..=1000000"),
                    ),
                }
            }
            if let Some(ro) = r.rollout {
                let at = ro.span().start;
                let ro = ro.into_inner();
                match (RolloutState::parse(&ro.state), usize::try_from(ro.step)) {
                    (Some(st), Ok(step)) => {
                        let ms = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
                        state.rollouts.insert(
                            route.clone(),
                            RolloutEntry {
                                state: st,
                                step,
                                was: ro.was,
                                meta: ProgressMeta {
                                    step_started_ms: ms(ro.step_started_ms),
                                    approval_deadline_ms: ms(ro.approval_deadline_ms),
                                    fingerprint: ro.fingerprint,
                                    hotfix: ro.mode.as_deref() == Some("hotfix"),
                                },
                            },
                        );
                    }
                    _ => bad(
                        at,
                        format!(
                            "routes.{route}.rollout: unknown state {:?} or negative step {}",
                            ro.state, ro.step
                        ),
                    ),
                }
            }
        }
        for (pool, p) in file.pools {
            for a in p.draining {
                match a.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => {
                        state.drains.insert((pool.clone(), addr), true);
                    }
                    Err(_) => bad(
                        a.span().start,
                        format!(
                            "pools.{pool}.draining: {:?} is not a backend address (IP:PORT)",
                            a.get_ref()
                        ),
                    ),
                }
            }
        }
        if errors.is_empty() {
            Ok(state)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Read the state file at `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => State::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(ConfigErrors::single(
                path,
                format!("cannot read state file: {e}"),
            )),
        }
    }
}

fn split(m: &BTreeMap<String, i64>) -> Option<Split> {
    m.iter()
        .map(|(p, w)| (0..=1_000_000).contains(w).then(|| (p.clone(), *w as u32)))
        .collect()
}

fn show(s: &Split) -> String {
    let parts: Vec<String> = s.iter().map(|(p, w)| format!("{p}={w}")).collect();
    parts.join(" ")
}

fn error_at(path: &Path, text: &str, at: usize, message: impl Into<String>) -> ConfigError {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or("");
    ConfigError {
        file: path.to_path_buf(),
        line: before.matches('\n').count() + 1,
        col: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
        message: message.into(),
    }
}

fn errors_at(path: &Path, text: &str, at: usize, message: &str) -> ConfigErrors {
    let first = message
        .trim()
        .lines()
        .next()
        .unwrap_or("invalid state file");
    ConfigErrors(vec![error_at(
        path,
        text,
        at,
        format!("state file: {first}"),
    )])
}

/// The state file as serde reads it.
mod raw {
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use toml::Spanned;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub routes: BTreeMap<String, Route>,
        #[serde(default)]
        pub pools: BTreeMap<String, Pool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub split: Option<Spanned<SplitEntry>>,
        pub rollout: Option<Spanned<RolloutEntry>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SplitEntry {
        pub set: BTreeMap<String, i64>,
        pub was: BTreeMap<String, i64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RolloutEntry {
        pub state: String,
        pub step: i64,
        pub was: String,
        #[serde(default)]
        pub step_started_ms: Option<i64>,
        #[serde(default)]
        pub approval_deadline_ms: Option<i64>,
        #[serde(default)]
        pub fingerprint: Option<String>,
        #[serde(default)]
        pub mode: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Pool {
        #[serde(default)]
        pub draining: Vec<Spanned<String>>,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(split: &str, rollout: &str) -> Config {
        let text = format!(
            "[pools.blue]\nbackends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n[pools.green]\nbackends = [\"127.0.0.1:9101\"]\n[[routes]]\nname = \"web\"\nsplit = {split}\n{rollout}"
        );
        Config::parse(Path::new("veer.toml"), &text).unwrap()
    }

    const ROLLOUT: &str = "[routes.rollout]\nto = \"green\"\nsteps = [10, 50, 100]\n";

    /// A state holding route web's rollout progress (blue, green weights; state; step) and
    /// a drain of blue's `drained`, recorded against `base`.
    fn progressed_and_drained(
        base: &Config,
        (blue, green): (u32, u32),
        state: RolloutState,
        step: usize,
        drained: &str,
    ) -> State {
        let mut s = State::default();
        Change::Progress {
            route: "web".into(),
            split: vec![("blue".into(), blue), ("green".into(), green)],
            state,
            step,
            meta: ProgressMeta {
                step_started_ms: Some(1_700_000_000_000),
                approval_deadline_ms: None,
                fingerprint: base
                    .route("web")
                    .and_then(|r| r.rollout.as_ref())
                    .map(|r| r.fingerprint()),
                hotfix: false,
            },
        }
        .record(&mut s, base);
        Change::Drain {
            pool: "blue".into(),
            addr: drained.parse().unwrap(),
            on: true,
        }
        .record(&mut s, base);
        s
    }

    #[test]
    fn entries_apply_while_the_config_says_what_it_said() {
        let base = config("{ blue = 100, green = 0 }", ROLLOUT);
        let s = progressed_and_drained(
            &base,
            (50, 50),
            RolloutState::Progressing,
            1,
            "127.0.0.1:9002",
        );
        let (c, dropped) = s.clone().lay_over(&base);
        assert!(dropped.is_empty(), "{dropped:?}");
        let r = c.route("web").unwrap();
        assert_eq!(r.split, vec![("blue".into(), 50), ("green".into(), 50)]);
        let ro = r.rollout.as_ref().unwrap();
        assert_eq!(
            (ro.state, ro.step),
            (Some(RolloutState::Progressing), Some(1))
        );

        // The config's split changed: the config wins, the split entry goes; the rollout
        // entry stays (its key did not change).
        let edited = config("{ blue = 90, green = 10 }", ROLLOUT);
        let mut s2 = s.clone();
        let (c, dropped) = s2.lay_over(&edited);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(dropped[0].contains("split of route \"web\""), "{dropped:?}");
        assert_eq!(c.route("web").unwrap().split[1], ("green".into(), 10));
        assert!(s2.splits.is_empty() && s2.rollouts.len() == 1);

        // A changed rollout definition drops its progress; a removed backend its drain.
        let other = "[routes.rollout]\nto = \"green\"\nsteps = [5, 100]\n";
        let edited = config("{ blue = 100, green = 0 }", other);
        let mut s3 = s.clone();
        let (c, dropped) = s3.lay_over(&edited);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert_eq!(
            c.route("web").unwrap().rollout.as_ref().unwrap().state,
            None
        );
        let mut fewer = edited.clone();
        fewer.pools.get_mut("blue").unwrap().backends.pop();
        let mut s4 = s.clone();
        let (_, dropped) = s4.lay_over(&fewer);
        assert!(
            dropped
                .iter()
                .any(|d| d.contains("drain of 127.0.0.1:9002")),
            "{dropped:?}"
        );
        assert!(s4.drains.is_empty());
    }

    #[test]
    fn the_file_reads_back_what_was_written() {
        let base = config("{ blue = 100, green = 0 }", ROLLOUT);
        let s = progressed_and_drained(
            &base,
            (0, 100),
            RolloutState::Succeeded,
            2,
            "127.0.0.1:9001",
        );
        let text = s.to_toml(Some(Path::new("/etc/veer/veer.toml")));
        assert!(text.contains("[routes.web.split]"), "{text}");
        assert!(text.contains("set = { blue = 0, green = 100 }"), "{text}");
        assert!(text.contains("draining = [\"127.0.0.1:9001\"]"), "{text}");
        assert_eq!(State::parse(Path::new("s.toml"), &text).unwrap(), s);
        assert_eq!(
            State::parse(Path::new("s.toml"), "").unwrap(),
            State::default()
        );
    }

    #[test]
    fn a_bad_state_file_is_named_with_line_and_column() {
        let e = State::parse(
            Path::new("s.toml"),
            "[routes.web.split]\nset = { blue = 1 }\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("s.toml:1:1: state file:"), "{e}");
        let e =
            State::parse(Path::new("s.toml"), "[pools.blue]\ndraining = [\"nope\"]\n").unwrap_err();
        assert!(e.to_string().starts_with("s.toml:2:13:"), "{e}");
        let e = State::parse(Path::new("s.toml"), "bogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn splits_that_cannot_be_are_refused() {
        let mut c = config("{ blue = 100, green = 0 }", ROLLOUT);
        assert!(check_split(&c, "web").is_ok());
        c.route_mut("web").unwrap().split = vec![("blue".into(), 1)];
        assert!(check_split(&c, "web").unwrap_err().contains("exactly two"));
        c.route_mut("web").unwrap().split = vec![("blue".into(), 0), ("green".into(), 0)];
        assert!(check_split(&c, "web").unwrap_err().contains("zero"));
        c.route_mut("web").unwrap().split = vec![("red".into(), 1), ("green".into(), 0)];
        assert!(check_split(&c, "web").unwrap_err().contains("red"));
    }
}
