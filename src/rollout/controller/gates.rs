//! SPEC §10 in the controller: rollout order (`waiting` until the rollouts named in `after`
//! succeeded; a rollback rolls back its dependents first), external gates judged in phases
//! (`before` the first step, after each `step`, `after` 100%), and hotfix runs.

use super::{Controller, AUTO};
use crate::config::{GateWhen, RolloutConfig, RolloutState};
use crate::rollout::external::{self, Answer, Phase, PhaseVerdict};
use crate::rollout::notify::{EventKind, GateResult};
use crate::rollout::stats::Figures;
use crate::rollout::{ActOptions, Action, ActionError, Command};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The step clock written with a commit: (step start, approval deadline).
pub(super) type Clock = (Option<Instant>, Option<Instant>);

/// External gate checks in flight: each runs as a task of its own (so a slow gate never
/// holds the controller's loop) and reports here; answers of an older phase are ignored.
pub(super) struct GateChecks {
    pub(super) tx: mpsc::UnboundedSender<(u64, usize, Instant, Answer)>,
    pub(super) rx: mpsc::UnboundedReceiver<(u64, usize, Instant, Answer)>,
    pub(super) generation: u64,
    pub(super) tasks: Vec<tokio::task::AbortHandle>,
}

impl GateChecks {
    pub(super) fn new() -> GateChecks {
        let (tx, rx) = mpsc::unbounded_channel();
        GateChecks {
            tx,
            rx,
            generation: 0,
            tasks: Vec::new(),
        }
    }

    /// Drop the checks in flight (the phase they belong to is over).
    pub(super) fn reset(&mut self) {
        self.generation += 1;
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for GateChecks {
    fn drop(&mut self) {
        self.reset();
    }
}

/// The definition a run follows: on a hotfix run, the hotfix's steps, interval and minimum.
pub(super) fn run_def(def: &RolloutConfig, hotfix: bool) -> RolloutConfig {
    let mut d = def.clone();
    if let (true, Some(h)) = (hotfix, &def.hotfix) {
        d.steps = h.steps.clone();
        // The hotfix path has no mirror step.
        d.mirror_step = false;
        d.step_interval = h.step_interval;
        d.min_requests = h.min_requests;
    }
    d
}

/// SPEC §10: rollout order, external gates, hotfix runs.
impl Controller {
    /// Switch the run to the hotfix path or back (the steps, interval and minimum).
    pub(super) fn set_run(&mut self, hotfix: bool) {
        self.hotfix = hotfix && self.orig.hotfix.is_some();
        self.def = Arc::new(run_def(&self.orig, self.hotfix));
        self.tick =
            (self.def.step_interval / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    }

    /// The routes named in `after` whose rollouts have not succeeded.
    pub(super) fn order_pending(&self) -> Vec<String> {
        let Some(peers) = self.peers.upgrade() else {
            return Vec::new();
        };
        self.orig
            .after
            .iter()
            .filter(|r| {
                crate::rollout::peer_status(&peers, r)
                    .is_none_or(|s| s.state != RolloutState::Succeeded)
            })
            .cloned()
            .collect()
    }

    /// Before the first step: hold in `waiting` while the rollouts named in `after` have not
    /// succeeded, then while the `before` gates have not passed. True while holding.
    pub(super) fn hold_before_start(&mut self) -> bool {
        let pending = self.order_pending();
        if !pending.is_empty() {
            let reason = format!(
                "waiting for the rollout of {} to succeed",
                pending
                    .iter()
                    .map(|r| format!("route {r:?}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
            self.hold(reason);
            return true;
        }
        if !self.before_passed {
            if let Some(p) = Phase::new(
                &self.orig.gates,
                GateWhen::Before,
                self.hotfix,
                Instant::now(),
            ) {
                let names = p.pending_names().join(", ");
                self.phase = Some(p);
                self.hold(format!("waiting for gate(s) {names} before the first step"));
                self.pump();
                return true;
            }
            self.before_passed = true;
        }
        false
    }

    pub(super) fn hold(&mut self, reason: String) {
        let first = self.state != RolloutState::Waiting || self.reason.as_deref() != Some(&reason);
        self.state = RolloutState::Waiting;
        self.reason = Some(reason);
        self.schedule();
        self.publish();
        if first {
            self.emit(EventKind::Waiting, None, None);
        }
    }

    /// The built-in gate passed the step: judge the `step` gates, and after the last step
    /// the `after` gates, before advancing.
    pub(super) async fn builtin_passed(&mut self, f: Figures) {
        let now = Instant::now();
        if !self.step_gates_done {
            if let Some(p) = Phase::new(&self.orig.gates, GateWhen::Step, self.hotfix, now) {
                self.start_phase(p, "step");
                return;
            }
            self.step_gates_done = true;
        }
        if self.step >= self.last_step() && !self.after_gates_done {
            if let Some(p) = Phase::new(&self.orig.gates, GateWhen::After, self.hotfix, now) {
                self.start_phase(p, "after 100%");
                return;
            }
            self.after_gates_done = true;
        }
        self.advance(f).await;
    }

    pub(super) fn start_phase(&mut self, p: Phase, what: &str) {
        let names = p.pending_names().join(", ");
        self.phase = Some(p);
        self.verdict = Some(GateResult::Waiting);
        self.reason = Some(format!(
            "built-in gate passed; waiting for gate(s) {names} ({what})"
        ));
        self.emit(EventKind::Gate, Some(GateResult::Waiting), None);
        self.pump();
        self.schedule();
        self.publish();
    }

    /// Ask the phase's gates that are due.
    pub(super) fn pump(&mut self) {
        let now = Instant::now();
        let Some(p) = self.phase.as_mut() else { return };
        let due = p.due(now);
        if due.is_empty() {
            return;
        }
        let body = self.webhook_body();
        self.checks.tasks.retain(|t| !t.is_finished());
        for (i, g) in due {
            let client = self.gate_client.clone();
            let body = body.clone();
            let tx = self.checks.tx.clone();
            let generation = self.checks.generation;
            let task = tokio::spawn(async move {
                let asked = Instant::now();
                let a = external::check(client.as_ref(), &g, &body).await;
                let _ = tx.send((generation, i, asked, a));
            });
            self.checks.tasks.push(task.abort_handle());
        }
    }

    /// What a webhook is POSTed: `{"route", "rollout": {…as in /api/status…}}`.
    pub(super) fn webhook_body(&self) -> bytes::Bytes {
        let status = self.status.borrow().clone();
        let rollout = self
            .rt
            .upgrade()
            .map(|rt| crate::rollout::status_value(&rt, &self.route, &status))
            .unwrap_or(serde_json::Value::Null);
        let v = serde_json::json!({ "route": self.route, "rollout": rollout });
        bytes::Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    pub(super) async fn on_answer(&mut self, i: usize, asked: Instant, answer: Answer) {
        if let Some(rt) = self.rt.upgrade() {
            rt.metrics
                .rollout_gate_checks
                .with_label_values(&[&self.route, &answer.name, answer.result.as_str()])
                .inc();
        }
        tracing::debug!(route = %self.route, gate = %answer.name, result = answer.result.as_str(), answer = %answer.describe(), "rollout gate checked");
        match self.answers.iter_mut().find(|a| a.name == answer.name) {
            Some(a) => *a = answer.clone(),
            None => self.answers.push(answer.clone()),
        }
        let Some(p) = self.phase.as_mut() else { return };
        p.record(i, answer, asked, Instant::now());
        if !self.judge_phase().await {
            self.schedule();
            self.publish();
        }
    }

    /// Act on the phase's verdict: go on when it passed, roll back when a gate timed out,
    /// ask what is due otherwise. True when the rollout moved on (or ended).
    pub(super) async fn judge_phase(&mut self) -> bool {
        let now = Instant::now();
        let Some(p) = &self.phase else { return false };
        let when = p.when;
        match p.verdict(now) {
            PhaseVerdict::Waiting(_) => {
                self.pump();
                false
            }
            PhaseVerdict::TimedOut(reason) => {
                let f = self.stats.as_ref().map(|s| s.figures()).or(self.figures);
                self.phase = None;
                self.verdict = Some(GateResult::Failed);
                self.reason = Some(reason.clone());
                self.emit(EventKind::Gate, Some(GateResult::Failed), f.as_ref());
                self.roll_back(reason, f, AUTO).await.ok();
                true
            }
            PhaseVerdict::Passed => {
                self.phase = None;
                self.checks.reset();
                tracing::info!(route = %self.route, when = when.as_str(), "rollout gates passed");
                match when {
                    GateWhen::Before => {
                        self.before_passed = true;
                        self.start_fresh().await;
                    }
                    GateWhen::Step | GateWhen::After => {
                        if when == GateWhen::Step {
                            self.step_gates_done = true;
                        } else {
                            self.after_gates_done = true;
                        }
                        let f = self.stats.as_ref().map(|s| s.figures()).unwrap_or_default();
                        self.builtin_passed(f).await;
                    }
                }
                if matches!(
                    self.state,
                    RolloutState::Progressing | RolloutState::Waiting
                ) {
                    self.schedule();
                }
                self.publish();
                true
            }
        }
    }

    /// Before this rollout rolls back, roll back every unfinished rollout that depends on it,
    /// directly or not, dependents first, each with a reason naming this one.
    pub(super) async fn roll_back_dependents(&mut self, why: &str) {
        let (Some(rt), Some(peers)) = (self.rt.upgrade(), self.peers.upgrade()) else {
            return;
        };
        let order = crate::config::rollout::dependents_first(&rt.config(), &self.route);
        for dep in order {
            let cmd = {
                let handles = peers.lock().unwrap_or_else(|e| e.into_inner());
                match handles.get(&dep) {
                    Some(h) if !h.status.borrow().state.is_final() => Some(h.cmd.clone()),
                    _ => None,
                }
            };
            let Some(cmd) = cmd else { continue };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let reason = format!(
                "rolled back because the rollout of route {:?} rolled back: {why}",
                self.route
            );
            tracing::warn!(route = %dep, cause = %self.route, "rolling back a dependent rollout first");
            let sent = cmd
                .send(Command {
                    action: Action::Abort,
                    opts: ActOptions {
                        force: true,
                        why: Some(reason),
                        who: Some("rollout".into()),
                        cascaded: true,
                        ..Default::default()
                    },
                    reply: tx,
                })
                .await;
            if sent.is_ok() {
                match rx.await {
                    Ok(Ok(_)) | Ok(Err(ActionError::Conflict(_))) | Err(_) => {}
                    Ok(Err(e)) => {
                        tracing::error!(route = %dep, cause = %self.route, error = %e, "dependent rollout could not be rolled back")
                    }
                }
            }
        }
    }
}
