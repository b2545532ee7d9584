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
//!
//! Here: the entries and laying them over a config; [`Change`] (one change, in every form
//! it takes) in `change`, the file's text (written and read back) in `file`, the [`Store`]
//! that holds the entries in memory and writes them in `store`.

mod change;
mod file;
mod store;

use super::{Config, ProgressMeta, RolloutState};
pub use change::{check_split, describe, Change};
use std::collections::BTreeMap;
use std::net::SocketAddr;
pub use store::{persistence_warnings, Prepared, StateError, Store, Undo};

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

/// A split as a dropped entry's message shows it (`blue=90 green=10`).
fn show(s: &Split) -> String {
    let parts: Vec<String> = s.iter().map(|(p, w)| format!("{p}={w}")).collect();
    parts.join(" ")
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
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    pub(super) fn config(split: &str, rollout: &str) -> Config {
        let text = format!(
            "[pools.blue]\nbackends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n[pools.green]\nbackends = [\"127.0.0.1:9101\"]\n[[routes]]\nname = \"web\"\nsplit = {split}\n{rollout}"
        );
        Config::parse(Path::new("veer.toml"), &text).unwrap()
    }

    pub(super) const ROLLOUT: &str = "[routes.rollout]\nto = \"green\"\nsteps = [10, 50, 100]\n";

    /// A state holding route web's rollout progress (blue, green weights; state; step) and
    /// a drain of blue's `drained`, recorded against `base`.
    pub(super) fn progressed_and_drained(
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
        fewer.pool_mut("blue").unwrap().backends.pop();
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
}
