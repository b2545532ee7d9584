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
//!
//! Here: the types the controllers and the control layer share; [`Rollouts`] in `rollouts`,
//! operator actions' names and refusals in `action`, the `/api/status` part in `json`.

mod action;
pub mod controller;
pub mod external;
pub mod fleet;
pub mod gate;
mod json;
pub mod notify;
pub mod persist;
mod rollouts;

/// The per-step counters live with the other counters (metrics/, below routing/), so a
/// route can hold its slot without importing rollout/.
pub use crate::metrics::step as stats;
pub use crate::metrics::step::{observe, StatsSlot};
pub use action::{Action, ActionError};
pub use json::{figures_json, status_json, status_value};
pub use rollouts::Rollouts;
pub(crate) use rollouts::{peer_status, Peers};

use crate::config::state::{Change, Unwritable};
use crate::config::{Config, RolloutConfig, RolloutState};
use crate::runtime::Live;
use controller::CommitError;
use stats::{Figures, StepStats};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
