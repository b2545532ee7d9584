//! The moves between states: start, resume, enter a step, await approval, advance, succeed,
//! roll back, finish.

use super::{CommitError, Controller, AUTO};
use crate::config::state::Unwritable;
use crate::config::{format_duration, RolloutState};
use crate::rollout::notify::EventKind;
use crate::rollout::stats::Figures;
use crate::rollout::Start;
use std::time::Duration;
use tokio::time::Instant;

impl Controller {
    pub(super) async fn begin(&mut self, start: Start) {
        let (state, step) = match start {
            Start::Fresh
            | Start::Resume {
                state: None | Some(RolloutState::Waiting),
                ..
            } => (None, 0),
            Start::Resume {
                state: Some(s),
                step,
                ..
            } => (Some(s), step.unwrap_or(0).min(self.last_step())),
        };
        // Fleet mode: an action taken on another replica moved the rollout; it is reported
        // here, by the controller, as that action.
        let moved = match start {
            Start::Resume { moved_from, .. } => moved_from,
            Start::Fresh => None,
        };
        self.step = step;
        match state {
            None => {
                self.pending_start = true;
                self.start_fresh().await;
            }
            Some(RolloutState::Progressing) => {
                // The file already says where we are; make sure the split agrees. (The
                // "resumed" event logs it.)
                let event = match moved {
                    Some(RolloutState::AwaitingApproval) => {
                        self.emit(EventKind::Approved, None, None);
                        EventKind::Step
                    }
                    _ => EventKind::Resumed,
                };
                if let Err(e) = self.enter_step(step, event, true, AUTO).await {
                    tracing::error!(route = %self.route, error = %e, "cannot resume rollout step; will retry");
                    self.state = RolloutState::Progressing;
                    self.next_check = Some(Instant::now() + self.tick);
                    self.publish();
                }
            }
            Some(RolloutState::AwaitingApproval) => {
                tracing::info!(route = %self.route, step, "rollout resumes awaiting approval");
                self.state = RolloutState::AwaitingApproval;
                self.await_approval(false);
            }
            Some(s) if moved.is_some() => {
                self.state = s;
                let via = "through another replica";
                match s {
                    RolloutState::Succeeded => {
                        self.finish(format!("promoted {via}"), None, EventKind::Succeeded)
                    }
                    RolloutState::RolledBack => {
                        self.finish(format!("rolled back {via}"), None, EventKind::RolledBack)
                    }
                    RolloutState::Paused => {
                        self.reason = Some(format!("paused {via}"));
                        self.publish();
                        self.emit(EventKind::Paused, None, None);
                    }
                    _ => self.publish(),
                }
            }
            Some(s) => {
                if s == RolloutState::Paused {
                    tracing::info!(route = %self.route, step, "rollout resumes paused");
                }
                self.state = s;
                self.publish();
            }
        }
    }

    pub(super) async fn start_fresh(&mut self) {
        if self.hold_before_start() {
            return;
        }
        match self.enter_step(0, EventKind::Started, false, AUTO).await {
            Ok(()) => self.pending_start = false,
            Err(CommitError::Superseded | CommitError::Gone) => {}
            Err(e) => {
                if self.reason.as_deref() != Some(&e.to_string()) {
                    tracing::error!(route = %self.route, error = %e, "cannot start rollout; retrying");
                }
                self.reason = Some(e.to_string());
                self.next_check = Some(Instant::now() + self.tick.max(Duration::from_millis(500)));
                self.publish();
            }
        }
    }

    /// Set the weight of step `k` and start its clock and statistics.
    pub(super) async fn enter_step(
        &mut self,
        k: usize,
        event: EventKind,
        resumed: bool,
        how: Unwritable,
    ) -> Result<(), CommitError> {
        let weight = self.weight_of_step(k);
        // A resume keeps the persisted clock: the step goes on where it stood.
        let started = self
            .resume_clock
            .take()
            .and_then(|c| c.0)
            .filter(|_| resumed)
            .unwrap_or_else(Instant::now);
        let needs_write = !resumed || !self.split_matches(weight, RolloutState::Progressing, k);
        if needs_write {
            self.why = Some(match event {
                EventKind::Started if self.hotfix => "hotfix rollout started".into(),
                EventKind::Started => "rollout started".into(),
                EventKind::Resumed => "resumed".into(),
                _ if resumed => "approved".into(),
                _ => format!("the gate passed at step {}", k.saturating_sub(1)),
            });
            self.commit(
                weight,
                RolloutState::Progressing,
                k,
                (Some(started), None),
                how,
            )
            .await?;
        }
        self.state = RolloutState::Progressing;
        self.step = k;
        self.paused_from = None;
        self.step_started = started;
        self.approval_deadline = None;
        self.step_gates_done = false;
        self.phase = None;
        self.checks.reset();
        self.figures = None;
        self.verdict = None;
        self.reason = None;
        self.passed_logged = false;
        self.install_stats(Some(self.step_stats()));
        self.schedule();
        self.publish();
        self.emit(event, None, None);
        Ok(())
    }

    /// Enter `awaiting_approval` at the current step (already written); `emit` the event.
    pub(super) fn await_approval(&mut self, emit: bool) {
        self.state = RolloutState::AwaitingApproval;
        let resumed = self.resume_clock.take().and_then(|c| c.1);
        self.approval_deadline =
            Some(resumed.unwrap_or_else(|| Instant::now() + self.def.approval_timeout));
        self.reason = Some(format!(
            "step {} ({}%) passed; approve the next step within {}",
            self.step,
            self.weight_of_step(self.step),
            format_duration(self.def.approval_timeout)
        ));
        // Keep watching the pool while waiting: a breach still rolls back.
        if self.stats.is_none() {
            self.install_stats(Some(self.fresh_stats()));
        }
        self.schedule();
        self.publish();
        if emit {
            self.emit(EventKind::AwaitingApproval, None, None);
        }
    }

    /// The step passed: next step, approval, or success.
    pub(super) async fn advance(&mut self, f: Figures) {
        let result = if self.step >= self.last_step() {
            self.succeed("the last step passed".into(), Some(f), AUTO)
                .await
        } else if self.def.approval {
            self.why = Some(format!(
                "the gate passed at step {}; waiting for approval",
                self.step
            ));
            match self
                .commit(
                    self.weight_of_step(self.step),
                    RolloutState::AwaitingApproval,
                    self.step,
                    (None, Some(Instant::now() + self.def.approval_timeout)),
                    AUTO,
                )
                .await
            {
                Ok(()) => {
                    self.figures = Some(f);
                    self.await_approval(true);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            self.enter_step(self.step + 1, EventKind::Step, false, AUTO)
                .await
        };
        if let Err(e) = result {
            // Hold at this step; the next check judges again and retries.
            let msg = format!("step passed but cannot advance: {e}");
            if self.reason.as_deref() != Some(msg.as_str()) {
                tracing::error!(route = %self.route, error = %e, "rollout cannot advance; holding at the current step");
                self.reason = Some(msg);
                self.publish();
            }
        }
    }

    pub(super) async fn succeed(
        &mut self,
        reason: String,
        f: Option<Figures>,
        how: Unwritable,
    ) -> Result<(), CommitError> {
        let last = self.last_step();
        self.why = Some(reason.clone());
        self.commit(100, RolloutState::Succeeded, last, (None, None), how)
            .await?;
        self.state = RolloutState::Succeeded;
        self.step = last;
        self.finish(reason, f, EventKind::Succeeded);
        Ok(())
    }

    /// Roll back: all traffic to the baseline. Automatic rollbacks take effect in memory even
    /// when nothing can be written (safety first); operator aborts follow the API rule.
    pub(super) async fn roll_back(
        &mut self,
        reason: String,
        f: Option<Figures>,
        how: Unwritable,
    ) -> Result<(), CommitError> {
        if !std::mem::take(&mut self.no_cascade) {
            self.roll_back_dependents(&reason).await;
        }
        self.phase = None;
        self.checks.reset();
        self.why = Some(reason.clone());
        if let Err(e) = self
            .commit(0, RolloutState::RolledBack, self.step, (None, None), how)
            .await
        {
            if how != Unwritable::Refuse {
                tracing::error!(route = %self.route, error = %e, "rollback could not be applied");
            }
            return Err(e);
        }
        self.state = RolloutState::RolledBack;
        self.finish(reason, f, EventKind::RolledBack);
        Ok(())
    }

    pub(super) fn finish(&mut self, reason: String, f: Option<Figures>, result: EventKind) {
        self.phase = None;
        self.checks.reset();
        self.figures = f.or(self.figures);
        self.reason = Some(reason);
        self.approval_deadline = None;
        self.paused_from = None;
        self.install_stats(None);
        self.next_check = None;
        if let Some(rt) = self.rt.upgrade() {
            rt.metrics
                .rollouts
                .with_label_values(&[&self.route, result.as_str()])
                .inc();
        }
        self.publish();
        self.emit(result, None, self.figures.as_ref());
    }
}
