//! One route's rollout controller: a background task that owns the rollout's state machine.
//!
//! ```text
//!  pending ──start──▶ progressing(step k) ──gate passes──▶ progressing(k+1) … ──last passes──▶ succeeded
//!                         │   ▲      │ approval = true: awaiting_approval ──approve──▶ k+1
//!                     pause│   │resume └──── gate fails / fail fast / approval timeout / abort ──▶ rolled_back
//!                         ▼   │
//!                        paused            promote (any running state) ──▶ succeeded
//! ```
//!
//! Every transition that changes what traffic does, or what a restart must resume, is written
//! first (split + `state` + `step`, under the runtime's change lock, into the config file or
//! the state file) and only then made live. When nothing can be written (a read-only config
//! and no `state_file`), automatic transitions go on in memory with a warning, so a rollout is
//! never stuck; an operator action then changes nothing (409) unless `?force=true`. The clock
//! is tokio's, so tests drive it with paused time.
//!
//! The controller's state and its task loop are here; starting one in `spawn`, the moves
//! between states in `steps`, judging the running step in `judge`, the published status and
//! the step's statistics in `status`, the fleet's summed counts in `fleet_counts`, operator
//! actions in `actions`, writing progress in `writeback`, logging and notifying events in
//! `events`, SPEC §10 (rollout order, external gates, hotfix runs) in `gates`.

mod actions;
mod events;
mod fleet_counts;
mod gates;
mod judge;
mod spawn;
mod status;
mod steps;
mod writeback;

use super::external::{self, Answer, Phase, PhaseVerdict};
use super::notify::{GateResult, Notifier};
use super::stats::{Figures, StepStats};
use super::{Command, Committer, Peers, Start, Status};
use crate::config::state::Unwritable;
use crate::config::writeback::WritebackError;
use crate::config::{RolloutConfig, RolloutState};
use crate::runtime::Live;
use fleet_counts::FleetNodes;
pub(super) use spawn::spawn;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Automatic transitions never wait on a file: when the progress cannot be written it goes
/// on in memory (logged, `"persisted": false`), so a read-only config never leaves a rollout
/// stuck.
const AUTO: Unwritable = Unwritable::Remember;

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The control layer refused or failed the change (its own error, kept whole).
    #[error(transparent)]
    Change(Refused),
    #[error(transparent)]
    Edit(#[from] WritebackError),
    #[error("cannot apply the config: {0}")]
    Apply(#[from] crate::upstream::registry::RegistryError),
    #[error("the rollout was replaced by a newer definition")]
    Superseded,
    #[error("veer is shutting down")]
    Gone,
}

/// The control layer's reason for not making a change (its error type is above this layer).
#[derive(Debug)]
pub struct Refused(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

struct Controller {
    rt: Weak<Live>,
    committer: Weak<dyn Committer>,
    shutdown: CancellationToken,
    cancel: CancellationToken,
    notifier: Notifier,
    route: String,
    def: Arc<RolloutConfig>,
    baseline: String,
    status: watch::Sender<Status>,
    state: RolloutState,
    step: usize,
    /// What a pause interrupted, so resume goes back to it.
    paused_from: Option<RolloutState>,
    step_started: Instant,
    approval_deadline: Option<Instant>,
    stats: Option<Arc<StepStats>>,
    figures: Option<Figures>,
    verdict: Option<GateResult>,
    reason: Option<String>,
    next_check: Option<Instant>,
    /// A fresh start could not be written yet; retried at each check.
    pending_start: bool,
    /// The running step's pass was already reported (its advance may be retried).
    passed_logged: bool,
    tick: Duration,
    /// Fleet mode: the replicas whose counts of the running step were summed, and the ones
    /// that left since (their lease, and their counts, gone).
    fleet_nodes: std::sync::Mutex<FleetNodes>,
    // SPEC §10.
    /// The definition as configured (`def` is the run's: the hotfix steps on a hotfix run).
    orig: Arc<RolloutConfig>,
    /// The other controllers: the rollouts this one waits for, and its dependents.
    peers: Weak<Peers>,
    hotfix: bool,
    gate_client: Option<external::Client>,
    /// External gates being judged now.
    phase: Option<Phase>,
    checks: gates::GateChecks,
    /// The last answer of every gate asked so far.
    answers: Vec<Answer>,
    paused_by: Option<String>,
    /// The persisted step clock to resume on (taken by the first step entered).
    resume_clock: Option<(Option<Instant>, Option<Instant>)>,
    before_passed: bool,
    /// The current step's `step` gates passed (reset with each step).
    step_gates_done: bool,
    after_gates_done: bool,
    /// A rollback sent by the rollback of a rollout this one depends on: not passed on.
    no_cascade: bool,
    /// Who asks for the operator action being run (the API token's name), for the audit
    /// trail; `None` while the controller moves on its own.
    acting: Option<String>,
    /// Why the next progress is written (the audit trail's reason), set just before it.
    why: Option<String>,
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Controller {
    pub(super) async fn run(mut self, start: Start, mut cmds: mpsc::Receiver<Command>) {
        self.begin(start).await;
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                _ = self.shutdown.cancelled() => break,
                cmd = cmds.recv() => match cmd {
                    Some(c) => {
                        self.acting = c.opts.who.clone();
                        let r = self.act(c.action, c.opts).await;
                        self.acting = None;
                        let _ = c.reply.send(r);
                    }
                    None => break,
                },
                Some((generation, i, asked, answer)) = self.checks.rx.recv() => {
                    if generation == self.checks.generation {
                        self.on_answer(i, asked, answer).await
                    }
                }
                _ = sleep_until_opt(self.next_check) => self.check().await,
            }
        }
        self.install_stats(None);
    }

    pub(super) fn weight_of_step(&self, step: usize) -> u32 {
        self.def.steps.get(step).copied().unwrap_or(0)
    }

    /// At the "mirror" step (SPEC §11): the first step of a run whose steps start with it.
    pub(super) fn at_mirror_step(&self) -> bool {
        self.def.mirror_step && self.step == 0
    }

    pub(super) fn last_step(&self) -> usize {
        self.def.steps.len().saturating_sub(1)
    }

    pub(super) fn pool_healthy(&self) -> bool {
        self.rt
            .upgrade()
            .and_then(|rt| {
                rt.snapshot()
                    .pools
                    .get(self.def.to.as_str())
                    .map(|p| super::can_serve(p))
            })
            .unwrap_or(false)
    }

    pub(super) fn schedule(&mut self) {
        let now = Instant::now();
        let mut next = now + self.tick;
        match self.state {
            RolloutState::Progressing => {
                let end = self.step_started + self.def.step_interval;
                if now < end {
                    next = next.min(end);
                }
            }
            RolloutState::AwaitingApproval => {
                if let Some(d) = self.approval_deadline {
                    next = next.min(d.max(now));
                }
            }
            RolloutState::Pending if self.pending_start => {
                next = now + self.tick.max(Duration::from_millis(500));
            }
            // Waiting for other rollouts (polled) or before gates.
            RolloutState::Waiting => {
                next = now + self.tick.max(Duration::from_millis(200));
            }
            _ => {
                self.next_check = None;
                return;
            }
        }
        if let Some(p) = &self.phase {
            if let PhaseVerdict::Waiting(Some(t)) = p.verdict(now) {
                next = next.min(t.max(now));
            }
        }
        self.next_check = Some(next);
    }
}
