//! Progressive rollouts: a route's `[routes.rollout]` walks the `to` pool's share of the
//! traffic through `steps`, judging a gate at each one, and rolls back on its own when the
//! new pool misbehaves (SPEC §2, §3, §5).
//!
//! - [`stats`]: per-step counters the request path feeds (atomics only) through the route's
//!   [`StatsSlot`] — see [`observe`].
//! - [`gate`]: the verdict at the end of a step, and the fail-fast rule during it.
//! - [`controller`]: one background task per route with a rollout: the state machine, the
//!   clock (tokio time, so tests drive it with paused time), operator actions.
//! - [`persist`]: progress as one change (split, `state`, `step`), written into the config
//!   file or the state file, or kept in memory when neither can be written.
//! - [`notify`]: events POSTed to `notify_url`.
//! - [`fleet`](mod@fleet): fleet mode's gate on the whole fleet's traffic.
//!
//! [`Rollouts`] (owned by the control layer) keeps the controllers: [`Rollouts::sync`] runs every
//! time a config is made live, starts a controller for a new or changed `[routes.rollout]`
//! (resuming from the persisted `state`/`step` when veer starts), keeps the running one when
//! only the persisted progress changed, and stops the ones whose rollout is gone.
//!
//! A controller decides; it makes its progress live through a [`Committer`] (implemented by
//! the control layer, which writes first and then applies), so rollout/ never imports it.
//!
//! In `/api/status` a route's `rollout` is `{"state", "step" (index into steps), "weight"
//! (percent on `to`), "gate": {…figures, verdict, reason…}}` ([`status_json`]).

pub mod controller;
pub mod external;
pub mod fleet;
pub mod gate;
pub mod notify;
pub mod persist;
/// The per-step counters live with the other counters (metrics/, below routing/), so a
/// route can hold its slot without importing rollout/.
pub use crate::metrics::step as stats;
pub use crate::metrics::step::{observe, StatsSlot};

use crate::config::state::{Change, Unwritable};
use crate::config::{Config, RolloutConfig, RolloutState};
use crate::runtime::Live;
use controller::CommitError;
use serde_json::{json, Value};
use stats::{Figures, SideFigures, StepStats};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a controller's progress becomes live, implemented by the control layer (the one way a
/// change happens): under the change lock, `edit` builds the change from the live config (or
/// says why the progress no longer applies), which is then written and applied; `how` says
/// what to do when it cannot be written.
pub trait Committer: Send + Sync {
    fn commit<'a>(&'a self, edit: Edit<'a>, how: Unwritable, note: Note) -> Committing<'a>;
}

/// Step `k` of a rollout with `n` steps as people read it: `step 1 of 0-3`. One numbering
/// everywhere (issue 20): the API's and the file's `step`, the log's `step` field and these
/// words all count from 0, step K being entry K of `[routes.rollout] steps`.
pub fn step_text(k: usize, n: usize) -> String {
    format!("step {k} of 0-{}", n.saturating_sub(1))
}

/// Who asked for a controller's progress and why, for the audit trail: `who` is the API
/// token's name for an operator action, `None` when the controller moved on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Note {
    pub who: Option<String>,
    pub why: Option<String>,
}

/// Builds a controller's change from the live config, under the change lock.
pub type Edit<'a> = Box<dyn FnOnce(&Config) -> Result<Change, CommitError> + Send + 'a>;

/// A [`Committer::commit`] in progress.
pub type Committing<'a> = Pin<Box<dyn Future<Output = Result<(), CommitError>> + Send + 'a>>;

/// An operator action (`POST /api/routes/{route}/rollout/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Approve,
    Promote,
    Abort,
    /// All traffic back to the baseline: an abort while the rollout runs, and after it
    /// succeeded a new change that undoes it (the rollout ends `rolled_back`).
    Rollback,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "start" => Action::Start,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "approve" => Action::Approve,
            "promote" => Action::Promote,
            "abort" => Action::Abort,
            "rollback" => Action::Rollback,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Approve => "approve",
            Action::Promote => "promote",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
        }
    }
}

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    #[error("route {0:?} has no [routes.rollout]")]
    NoRollout(String),
    #[error("unknown rollout action {0:?}: use start, pause, resume, approve, promote, abort or rollback")]
    UnknownAction(String),
    /// The action does not fit the rollout's state.
    #[error("{0}")]
    Conflict(String),
    #[error("the change was not made: {0}")]
    Commit(#[source] controller::CommitError),
    #[error("the rollout controller of route {0:?} is not running")]
    Stopped(String),
}

impl ActionError {
    /// The HTTP status for the admin API.
    pub fn status(&self) -> http::StatusCode {
        match self {
            ActionError::UnknownRoute(_) | ActionError::NoRollout(_) => http::StatusCode::NOT_FOUND,
            ActionError::UnknownAction(_) => http::StatusCode::BAD_REQUEST,
            ActionError::Conflict(_) | ActionError::Commit(_) | ActionError::Stopped(_) => {
                http::StatusCode::CONFLICT
            }
        }
    }
}

/// A rollout's state as the controller publishes it.
#[derive(Debug, Clone)]
pub struct Status {
    pub def: Arc<RolloutConfig>,
    pub baseline: String,
    pub state: RolloutState,
    /// Index into `steps`.
    pub step: usize,
    pub step_started: Option<Instant>,
    pub approval_deadline: Option<Instant>,
    /// Fleet mode: the running step's start as written (Unix ms), which names its counts.
    pub step_started_ms: u64,
    /// The running step's statistics (read live for the status).
    pub stats: Option<Arc<StepStats>>,
    /// Figures kept from the last judgement once the step's statistics are gone (the failing
    /// figures of a rollback).
    pub figures: Option<Figures>,
    /// The last gate verdict.
    pub verdict: Option<notify::GateResult>,
    /// Why the rollout waits, failed, or ended.
    pub reason: Option<String>,
    /// A hotfix run (`[routes.rollout.hotfix]`; `def` holds its steps).
    pub hotfix: bool,
    /// The last answer of every external gate asked so far (SPEC §10 `gate.external`).
    pub external: Vec<external::Answer>,
    /// External gates being judged now and not passed yet.
    pub gates_pending: Vec<String>,
    /// Who paused the rollout.
    pub paused_by: Option<String>,
}

impl Status {
    /// The weight (percent of traffic on `to`) the rollout's state stands for.
    pub fn target_weight(&self) -> Option<u32> {
        match self.state {
            RolloutState::Succeeded => Some(100),
            RolloutState::RolledBack => Some(0),
            RolloutState::Pending | RolloutState::Waiting => None,
            _ => self.def.steps.get(self.step).copied(),
        }
    }
}

/// How an operator action is asked for.
#[derive(Debug, Clone, Default)]
pub struct ActOptions {
    /// `?force=true`: go on in memory when the progress cannot be written.
    pub force: bool,
    /// `start?hotfix=true`: the expedited path of `[routes.rollout.hotfix]`.
    pub hotfix: bool,
    /// Who asks (the API token's name), shown in the state (`paused_by`) and the log.
    pub who: Option<String>,
    /// Why, when it is not the operator's own action (a forced manual split pauses).
    pub why: Option<String>,
    /// An abort that a rollback of a rollout this one depends on sent: the sender rolls back
    /// every dependent itself, in order, so this one does not pass it on.
    pub cascaded: bool,
}

struct Command {
    action: Action,
    opts: ActOptions,
    reply: oneshot::Sender<Result<Status, ActionError>>,
}

/// The running controller of one route.
pub(crate) struct Handle {
    def: RolloutConfig,
    cancel: CancellationToken,
    cmd: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
}

/// How a controller begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new or changed rollout: from the first step.
    Fresh,
    /// veer (re)started: where the config file says the rollout stood.
    Resume {
        state: Option<RolloutState>,
        step: Option<usize>,
        /// Fleet mode: the standing another replica's write moved the rollout from (the
        /// controller reports the move as the action it was).
        moved_from: Option<RolloutState>,
    },
}

/// The rollout controllers of a runtime, by route name.
#[derive(Default)]
pub struct Rollouts {
    bound: OnceLock<(Weak<Live>, Weak<dyn Committer>)>,
    /// Shared with the controllers (weakly): rollout order reads the rollouts a controller
    /// waits for and rolls back the ones that depend on it.
    handles: Arc<Peers>,
}

/// The controllers by route name.
pub(crate) type Peers = Mutex<HashMap<String, Handle>>;

/// The status of `route`'s rollout, from the controllers' shared map.
pub(crate) fn peer_status(peers: &Peers, route: &str) -> Option<Status> {
    let handles = peers.lock().unwrap_or_else(|e| e.into_inner());
    handles.get(route).map(|h| h.status.borrow().clone())
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rollouts")
    }
}

impl Rollouts {
    /// Tie to the runtime the controllers read and the committer they change it through
    /// (before the first config is synced).
    pub fn bind(&self, rt: &Arc<Live>, committer: Weak<dyn Committer>) {
        let _ = self.bound.set((Arc::downgrade(rt), committer));
    }

    /// Called after `new` went live (`old` was live before; `None` at startup): start,
    /// restart or stop controllers as the `[routes.rollout]` definitions changed.
    pub fn sync(&self, old: Option<&Config>, new: &Config) {
        self.sync_moved(old, new, &[]);
    }

    /// [`Rollouts::sync`]; `moved`: routes whose rollout another replica moved, from which
    /// state (their controllers were stopped by [`Rollouts::adopt`]).
    fn sync_moved(&self, old: Option<&Config>, new: &Config, moved: &[(&str, RolloutState)]) {
        let Some((rt, committer)) = self
            .bound
            .get()
            .and_then(|(rt, c)| Some((rt.upgrade()?, c.clone())))
        else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!("rollouts need a tokio runtime; not started");
            return;
        }
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        // Fleet mode: only the leader runs rollout controllers; the others serve the steps
        // it writes into the document.
        if new.cluster.is_some() && !rt.cluster.get().is_some_and(|f| f.is_leader()) {
            for (name, h) in handles.drain() {
                h.cancel.cancel();
                tracing::debug!(route = %name, "rollout controller stopped: not the fleet's leader");
            }
            return;
        }
        for rc in &new.routes {
            let Some(def) = &rc.rollout else { continue };
            let start = match handles.get(&rc.name) {
                Some(h) if h.def.definition_eq(def) => continue,
                Some(_) => Start::Fresh,
                None => match old {
                    Some(o)
                        if !o
                            .route(&rc.name)
                            .and_then(|r| r.rollout.as_ref())
                            .is_some_and(|d| d.definition_eq(def)) =>
                    {
                        Start::Fresh
                    }
                    // Progress saved for another definition (edited while veer was down)
                    // belongs to another rollout: start anew.
                    _ if !def.progress_matches() => {
                        tracing::info!(route = %rc.name, "the rollout definition changed since its progress was saved; starting it anew");
                        Start::Fresh
                    }
                    _ => Start::Resume {
                        state: def.state,
                        step: def.step,
                        moved_from: moved.iter().find(|(n, _)| *n == rc.name).map(|(_, s)| *s),
                    },
                },
            };
            if let Some(h) = handles.remove(&rc.name) {
                tracing::info!(route = %rc.name, "rollout definition changed; starting it anew");
                h.cancel.cancel();
            }
            handles.insert(
                rc.name.clone(),
                controller::spawn(
                    &rt,
                    committer.clone(),
                    Arc::downgrade(&self.handles),
                    rc,
                    def,
                    start,
                ),
            );
        }
        handles.retain(|name, h| {
            let keep = new.route(name).is_some_and(|r| r.rollout.is_some());
            if !keep {
                tracing::info!(route = %name, "rollout removed from the config; controller stopped");
                h.cancel.cancel();
                let _ = rt.metrics.rollout_step.remove_label_values(&[name]);
            }
            keep
        });
    }

    /// Fleet mode: leadership here started or ended. The leader resumes every rollout where
    /// the document says it stands (with its step clock); a replica that lost it stops its
    /// controllers at once.
    pub fn leadership_changed(&self, live: &Config) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .for_each(|(_, h)| h.cancel.cancel());
        self.sync(None, live);
    }

    /// Fleet mode, on the leader: a revision another replica wrote (a rollout action taken
    /// there, or a document pushed by hand) moved a rollout from `old`'s standing. Its
    /// controller starts again from where the document now says it stands, with the step
    /// clock written there, as a new leader's does; nothing else is touched.
    pub fn adopt(&self, old: &Config, new: &Config) {
        let standing = |d: &RolloutConfig| (d.state, d.step, d.progress.clone());
        let moved: Vec<(&str, RolloutState)> = new
            .routes
            .iter()
            .filter_map(|rc| {
                let def = rc.rollout.as_ref()?;
                let was = old.route(&rc.name)?.rollout.as_ref()?;
                (was.definition_eq(def) && standing(was) != standing(def))
                    .then(|| (rc.name.as_str(), was.state.unwrap_or(RolloutState::Pending)))
            })
            .collect();
        if moved.is_empty() {
            return;
        }
        {
            let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            for (name, _) in &moved {
                if let Some(h) = handles.remove(*name) {
                    tracing::info!(route = %name, "rollout moved by another replica; the leader goes on from the document");
                    h.cancel.cancel();
                }
            }
        }
        self.sync_moved(None, new, &moved);
    }

    /// The published status of a route's rollout.
    pub fn status(&self, route: &str) -> Option<Status> {
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.get(route).map(|h| h.status.borrow().clone())
    }

    /// Follow a route's rollout status (changes on every transition).
    pub fn watch(&self, route: &str) -> Option<watch::Receiver<Status>> {
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.get(route).map(|h| h.status.clone())
    }

    /// Run an operator action and return the status after it.
    pub async fn act(&self, rt: &Live, route: &str, action: &str) -> Result<Status, ActionError> {
        self.act_with(rt, route, action, false).await
    }

    /// [`Rollouts::act`]; with `force` the action goes on in memory when its progress cannot
    /// be written (`?force=true`), instead of changing nothing.
    pub async fn act_with(
        &self,
        rt: &Live,
        route: &str,
        action: &str,
        force: bool,
    ) -> Result<Status, ActionError> {
        let opts = ActOptions {
            force,
            ..Default::default()
        };
        self.act_opts(rt, route, action, opts).await
    }

    /// [`Rollouts::act`] with every option ([`ActOptions`]).
    pub async fn act_opts(
        &self,
        rt: &Live,
        route: &str,
        action: &str,
        opts: ActOptions,
    ) -> Result<Status, ActionError> {
        let config = rt.config();
        let rc = config
            .route(route)
            .ok_or_else(|| ActionError::UnknownRoute(route.to_string()))?;
        if rc.rollout.is_none() {
            return Err(ActionError::NoRollout(route.to_string()));
        }
        let action =
            Action::parse(action).ok_or_else(|| ActionError::UnknownAction(action.to_string()))?;
        if let Some(f) = rt.cluster.get().filter(|f| !f.is_leader()) {
            return Err(ActionError::Conflict(format!(
                "this replica is not the fleet's leader; rollout actions go to the leader ({})",
                f.leader().unwrap_or_else(|| "none yet".into())
            )));
        }
        let cmd = {
            let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            handles
                .get(route)
                .map(|h| h.cmd.clone())
                .ok_or_else(|| ActionError::Stopped(route.to_string()))?
        };
        let (tx, rx) = oneshot::channel();
        cmd.send(Command {
            action,
            opts,
            reply: tx,
        })
        .await
        .map_err(|_| ActionError::Stopped(route.to_string()))?;
        rx.await
            .map_err(|_| ActionError::Stopped(route.to_string()))?
    }
}

/// Can the pool take traffic at all: a backend that is healthy (or unchecked), not draining,
/// and whose breaker is not open? The gate fails a step whose pool cannot.
pub fn can_serve(pool: &crate::upstream::Pool) -> bool {
    pool.backends.iter().any(|b| {
        b.is_healthy()
            && !b.is_draining()
            && b.breaker.state() != crate::breaker::BreakerState::Open
    })
}

/// The current step's statistics of a route (what the request path feeds), if a step runs.
pub fn stats(rt: &Live, route: &str) -> Option<Arc<StepStats>> {
    rt.snapshot().router.get(route)?.state.rollout.load_full()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn side_json(f: &SideFigures) -> Value {
    json!({
        "requests": f.requests,
        "errors": f.failures,
        "error_rate": f.error_rate(),
        "p99_ms": f.p99.map(ms),
        "slow": f.slow,
    })
}

/// The gate figures of a step as JSON (for the status and events).
pub fn figures_json(def: &RolloutConfig, f: &Figures) -> Value {
    let mut c = f.canary;
    // Keep the estimated p99 on the side of the exact verdict (the estimate is within 12.5%).
    if let Some(p) = c.p99 {
        c.p99 = Some(if c.slow > gate::slow_allowed(c.requests) {
            p.max(def.max_p99 + Duration::from_micros(1))
        } else {
            p.min(def.max_p99)
        });
    }
    let mut v = side_json(&c);
    v["baseline"] = side_json(&f.baseline);
    v
}

/// Fleet mode, on a replica that does not lead: the rollout as the document says it stands
/// (the leader's controller walks it). `null` otherwise.
fn follower_json(rt: &Live, route: &str) -> Value {
    if rt.cluster.get().is_none() {
        return Value::Null;
    }
    let snap = rt.snapshot();
    let Some(rc) = snap.config.route(route) else {
        return Value::Null;
    };
    let Some(def) = &rc.rollout else {
        return Value::Null;
    };
    let total: u64 = rc.split.iter().map(|(_, w)| *w as u64).sum();
    let weight = rc
        .weight_of(&def.to)
        .map(|w| (w as u64 * 100 + total / 2).checked_div(total).unwrap_or(0));
    json!({
        "state": def.state.unwrap_or(RolloutState::Pending).as_str(),
        "step": def.step.unwrap_or(0),
        "steps": def.steps,
        "weight": weight,
        "to": def.to,
        "approval": def.approval,
        "step_interval_ms": ms(def.step_interval),
        "step_started_ms": def.progress.step_started_ms,
        "approval_deadline_ms": def.progress.approval_deadline_ms,
        "led_by": rt.cluster.get().and_then(|f| f.leader()),
    })
}

/// The `rollout` object of a route in `/api/status`: `null` without a rollout.
pub fn status_json(rollouts: &Rollouts, rt: &Live, route: &str) -> Value {
    let Some(s) = rollouts.status(route) else {
        return follower_json(rt, route);
    };
    status_value(rt, route, &s)
}

/// [`status_json`] of a status in hand (a controller's own, for its webhooks).
pub fn status_value(rt: &Live, route: &str, s: &Status) -> Value {
    let snap = rt.snapshot();
    let weight = snap.config.route(route).and_then(|rc| {
        let total: u64 = rc.split.iter().map(|(_, w)| *w as u64).sum();
        let w = rc.weight_of(&s.def.to)? as u64;
        Some((w * 100 + total / 2).checked_div(total).unwrap_or(0))
    });
    let now = Instant::now();
    let def = &s.def;
    let healthy = snap.pools.get(def.to.as_str()).map(|p| can_serve(p));
    let figures = s
        .stats
        .as_ref()
        .map(|st| st.figures())
        .map(|f| match rt.cluster.get() {
            // Fleet mode: the figures the leader judges on, the whole fleet's.
            Some(fleet) => {
                fleet::sum(
                    f,
                    &fleet.remote_counters(),
                    route,
                    (s.step, s.step_started_ms),
                )
                .0
            }
            None => f,
        });
    let figures = figures.or(s.figures);
    let mut gate = figures
        .map(|f| figures_json(def, &f))
        .unwrap_or_else(|| json!({}));
    gate["min_requests"] = json!(def.min_requests);
    gate["max_error_rate"] = json!(def.max_error_rate);
    gate["max_error_rate_vs_baseline"] = json!(def.max_error_rate_vs_baseline);
    gate["max_p99_ms"] = json!(ms(def.max_p99));
    gate["healthy"] = json!(healthy);
    gate["verdict"] = json!(s.verdict.map_or(
        if s.stats.is_some() { "pending" } else { "none" },
        notify::GateResult::as_str
    ));
    gate["reason"] = json!(s.reason);
    gate["external"] = json!(s.external);
    gate["external_pending"] = json!(s.gates_pending);
    // SPEC §11: the mirror step shows as "mirror" in `steps`, judged on compared copies.
    let steps: Vec<Value> = def
        .steps
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 && def.mirror_step {
                json!("mirror")
            } else {
                json!(w)
            }
        })
        .collect();
    if def.mirror_step {
        let m = s.stats.as_ref().map(|st| st.mirror_figures());
        gate["max_diff_rate"] = json!(def.max_diff_rate);
        if let (Some(m), 0) = (m, s.step) {
            gate["mirror"] = json!({
                "compared": m.compared,
                "differ": m.differ,
                "diff_rate": m.diff_rate(),
            });
        }
    }
    json!({
        "state": s.state.as_str(),
        "step": s.step,
        "mirror_step": def.mirror_step && s.step == 0,
        "steps": steps,
        "weight": weight,
        "to": def.to,
        "baseline": s.baseline,
        "approval": def.approval,
        "hotfix": s.hotfix,
        "after": def.after,
        "paused_by": s.paused_by,
        "step_interval_ms": ms(def.step_interval),
        "step_started_ms": s.step_started.map(persist::wall_ms),
        "step_elapsed_ms": s.step_started.map(|t| ms(now.saturating_duration_since(t))),
        "approval_deadline_ms": s.approval_deadline.map(persist::wall_ms),
        "approval_remaining_ms": s.approval_deadline.map(|t| ms(t.saturating_duration_since(now))),
        "gate": gate,
    })
}
