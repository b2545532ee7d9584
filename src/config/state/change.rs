//! [`Change`]: one change made through the API or by a rollout, in every form it takes (the
//! config document, a config in memory, a state entry), and the split check it must pass.

use super::{RolloutEntry, Split, SplitEntry, State};
use crate::config::writeback::{self, WritebackError};
use crate::config::{Config, ProgressMeta, RolloutConfig, RolloutState};
use std::net::SocketAddr;
use toml_edit::DocumentMut;

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
                    .and_then(|r| r.rollout.as_deref())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::state::tests::{config, ROLLOUT};

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
