//! Judging the running step at each check: fail fast, the gate at the step's end, the
//! approval deadline.

use super::{Controller, AUTO};
use crate::config::{format_duration, RolloutState};
use crate::rollout::gate::{self, Verdict};
use crate::rollout::notify::{EventKind, GateResult};
use crate::rollout::stats::Figures;
use tokio::time::Instant;

impl Controller {
    pub(super) async fn check(&mut self) {
        let now = Instant::now();
        if self.phase.is_some() && self.judge_phase().await {
            return;
        }
        match self.state {
            RolloutState::Pending if self.pending_start => self.start_fresh().await,
            RolloutState::Waiting => {
                if self.phase.is_none() {
                    self.start_fresh().await;
                }
                if self.state == RolloutState::Waiting {
                    self.schedule();
                }
            }
            RolloutState::Progressing if self.phase.is_some() => {
                // External gates are being judged; the built-in gate already passed, but a
                // certain breach still rolls back.
                if let Some(stats) = self.stats.clone() {
                    let f = stats.figures();
                    if let Some(reason) = gate::fail_fast(&self.def, &f, &self.def.to) {
                        self.gate_failed(reason, f).await;
                        return;
                    }
                }
                self.schedule();
            }
            RolloutState::Progressing => {
                let Some(stats) = self.stats.clone() else {
                    // A resume whose write failed: try again.
                    if let Err(e) = self
                        .enter_step(self.step, EventKind::Resumed, true, AUTO)
                        .await
                    {
                        tracing::debug!(route = %self.route, error = %e, "resume retry failed");
                        self.schedule();
                    }
                    return;
                };
                let f = self.fleet_figures(stats.figures());
                // SPEC §11: the "mirror" step moves no user; it is judged on compared copies.
                let mirror = self.at_mirror_step();
                let fail_fast = if mirror {
                    gate::fail_fast_mirror(&self.def, &self.fleet_mirror(), &self.def.to)
                } else {
                    gate::fail_fast(&self.def, &f, &self.def.to)
                };
                if let Some(reason) = fail_fast {
                    self.gate_failed(reason, f).await;
                    return;
                }
                // Fail fast on what is known (safety first), but a step's verdict waits for
                // the whole fleet's counts.
                if now >= self.step_started + self.def.step_interval && self.fleet_counts_ready() {
                    let verdict = if mirror {
                        let m = self.fleet_mirror();
                        gate::judge_mirror(&self.def, &m, self.pool_healthy(), &self.def.to)
                    } else {
                        gate::judge(&self.def, &f, self.pool_healthy(), &self.def.to)
                    };
                    match verdict {
                        Verdict::Pass => {
                            if !self.passed_logged {
                                self.passed_logged = true;
                                self.verdict = Some(GateResult::Passed);
                                self.reason = None;
                                self.emit(EventKind::Gate, Some(GateResult::Passed), Some(&f));
                            }
                            self.builtin_passed(f).await;
                        }
                        Verdict::Fail(reason) => {
                            let reason = self.with_fleet_note(reason);
                            self.gate_failed(reason, f).await;
                            return;
                        }
                        Verdict::Wait(reason) => {
                            let reason = self.with_fleet_note(reason);
                            let first = self.verdict != Some(GateResult::Waiting);
                            self.verdict = Some(GateResult::Waiting);
                            self.reason = Some(reason);
                            if first {
                                self.emit(EventKind::Gate, Some(GateResult::Waiting), Some(&f));
                            }
                            self.publish();
                        }
                    }
                }
                if self.state == RolloutState::Progressing {
                    self.schedule();
                }
            }
            RolloutState::AwaitingApproval => {
                if let Some(stats) = self.stats.clone() {
                    let f = self.fleet_figures(stats.figures());
                    if let Some(reason) = gate::fail_fast(&self.def, &f, &self.def.to) {
                        self.gate_failed(reason, f).await;
                        return;
                    }
                }
                if self.approval_deadline.is_some_and(|d| now >= d) {
                    let reason = format!(
                        "approval not given within {}",
                        format_duration(self.def.approval_timeout)
                    );
                    let f = self.stats.as_ref().map(|s| s.figures());
                    self.roll_back(reason, f, AUTO).await.ok();
                    return;
                }
                self.schedule();
            }
            _ => self.next_check = None,
        }
    }

    /// The gate failed (at the step's end or by fail fast): report it, then roll back.
    pub(super) async fn gate_failed(&mut self, reason: String, f: Figures) {
        self.verdict = Some(GateResult::Failed);
        self.reason = Some(reason.clone());
        self.emit(EventKind::Gate, Some(GateResult::Failed), Some(&f));
        self.roll_back(reason, Some(f), AUTO).await.ok();
    }
}
