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

use super::external::{self, Answer, Phase, PhaseVerdict};
use super::gate::{self, Verdict};
use super::notify::{Event, Notifier};
use super::persist::{self, Progress};
use super::stats::{Figures, StepStats};
use super::{
    figures_json, ActOptions, Action, ActionError, Command, Committer, Handle, Peers, Start, Status,
};
use crate::config::state::Unwritable;
use crate::config::writeback::WritebackError;
use crate::config::GateWhen;
use crate::config::{format_duration, RolloutConfig, RolloutState, RouteConfig};
use crate::runtime::Runtime;
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

/// Start the controller task for `route`.
pub(super) fn spawn(
    rt: &Arc<Runtime>,
    committer: Weak<dyn Committer>,
    peers: Weak<Peers>,
    route: &RouteConfig,
    def: &RolloutConfig,
    start: Start,
) -> Handle {
    let orig = Arc::new(def.clone());
    let hotfix = matches!(start, Start::Resume { state: Some(_), .. }) && def.progress.hotfix;
    let def = Arc::new(run_def(def, hotfix));
    let baseline = route
        .split
        .iter()
        .map(|(p, _)| p.as_str())
        .find(|p| *p != def.to)
        .unwrap_or_default()
        .to_string();
    let cancel = CancellationToken::new();
    let (state, step) = match start {
        Start::Fresh => (RolloutState::Pending, 0),
        Start::Resume { state, step } => {
            (state.unwrap_or(RolloutState::Pending), step.unwrap_or(0))
        }
    };
    let status = Status {
        def: def.clone(),
        baseline: baseline.clone(),
        state,
        step,
        step_started: None,
        approval_deadline: None,
        stats: None,
        figures: None,
        verdict: None,
        reason: None,
        hotfix,
        external: Vec::new(),
        gates_pending: Vec::new(),
        paused_by: None,
    };
    let (status_tx, status_rx) = watch::channel(status);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let tick = (def.step_interval / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let c = Controller {
        rt: Arc::downgrade(rt),
        committer,
        shutdown: rt.shutdown.clone(),
        notifier: Notifier::start(def.notify_url.as_deref(), rt.shutdown.clone()),
        route: route.name.clone(),
        def: def.clone(),
        baseline,
        cancel: cancel.clone(),
        status: status_tx,
        state,
        step,
        paused_from: None,
        step_started: Instant::now(),
        approval_deadline: None,
        stats: None,
        figures: None,
        verdict: None,
        reason: None,
        next_check: None,
        pending_start: false,
        passed_logged: false,
        tick,
        orig: orig.clone(),
        peers,
        hotfix,
        gate_client: (!orig.gates.is_empty())
            .then(|| external::Client::new(&orig.gates))
            .flatten(),
        phase: None,
        checks: GateChecks::new(),
        answers: Vec::new(),
        paused_by: None,
        resume_clock: matches!(start, Start::Resume { .. })
            .then(|| persist::resume_clock(&orig.progress)),
        before_passed: false,
        step_gates_done: false,
        after_gates_done: false,
        no_cascade: false,
    };
    tokio::spawn(c.run(start, cmd_rx));
    Handle {
        def: (*orig).clone(),
        cancel,
        cmd: cmd_tx,
        status: status_rx,
    }
}

struct Controller {
    rt: Weak<Runtime>,
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
    verdict: Option<&'static str>,
    reason: Option<String>,
    next_check: Option<Instant>,
    /// A fresh start could not be written yet; retried at each check.
    pending_start: bool,
    /// The running step's pass was already reported (its advance may be retried).
    passed_logged: bool,
    tick: Duration,
    // SPEC §10.
    /// The definition as configured (`def` is the run's: the hotfix steps on a hotfix run).
    orig: Arc<RolloutConfig>,
    /// The other controllers: the rollouts this one waits for, and its dependents.
    peers: Weak<Peers>,
    hotfix: bool,
    gate_client: Option<external::Client>,
    /// External gates being judged now.
    phase: Option<Phase>,
    checks: GateChecks,
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
}

/// The step clock written with a commit: (step start, approval deadline).
type Clock = (Option<Instant>, Option<Instant>);

/// External gate checks in flight: each runs as a task of its own (so a slow gate never
/// holds the controller's loop) and reports here; answers of an older phase are ignored.
struct GateChecks {
    tx: mpsc::UnboundedSender<(u64, usize, Instant, Answer)>,
    rx: mpsc::UnboundedReceiver<(u64, usize, Instant, Answer)>,
    generation: u64,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl GateChecks {
    fn new() -> GateChecks {
        let (tx, rx) = mpsc::unbounded_channel();
        GateChecks {
            tx,
            rx,
            generation: 0,
            tasks: Vec::new(),
        }
    }

    /// Drop the checks in flight (the phase they belong to is over).
    fn reset(&mut self) {
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
fn run_def(def: &RolloutConfig, hotfix: bool) -> RolloutConfig {
    let mut d = def.clone();
    if let (true, Some(h)) = (hotfix, &def.hotfix) {
        d.steps = h.steps.clone();
        d.step_interval = h.step_interval;
        d.min_requests = h.min_requests;
    }
    d
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Controller {
    async fn run(mut self, start: Start, mut cmds: mpsc::Receiver<Command>) {
        self.begin(start).await;
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                _ = self.shutdown.cancelled() => break,
                cmd = cmds.recv() => match cmd {
                    Some(c) => {
                        let r = self.act(c.action, c.opts).await;
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

    fn weight_of_step(&self, step: usize) -> u32 {
        self.def.steps.get(step).copied().unwrap_or(0)
    }

    fn last_step(&self) -> usize {
        self.def.steps.len().saturating_sub(1)
    }

    async fn begin(&mut self, start: Start) {
        let (state, step) = match start {
            Start::Fresh
            | Start::Resume {
                state: None | Some(RolloutState::Waiting),
                ..
            } => (None, 0),
            Start::Resume {
                state: Some(s),
                step,
            } => (Some(s), step.unwrap_or(0).min(self.last_step())),
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
                if let Err(e) = self.enter_step(step, "resumed", true, AUTO).await {
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
            Some(s) => {
                if s == RolloutState::Paused {
                    tracing::info!(route = %self.route, step, "rollout resumes paused");
                }
                self.state = s;
                self.publish();
            }
        }
    }

    async fn start_fresh(&mut self) {
        if self.hold_before_start() {
            return;
        }
        match self.enter_step(0, "started", false, AUTO).await {
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

    /// Publish the status and the step gauge.
    fn publish(&self) {
        let active = matches!(
            self.state,
            RolloutState::Progressing | RolloutState::Paused | RolloutState::AwaitingApproval
        );
        if let Some(rt) = self.rt.upgrade() {
            rt.metrics
                .rollout_step
                .with_label_values(&[&self.route])
                .set(if active { self.step as i64 } else { -1 });
        }
        self.status.send_replace(Status {
            def: self.def.clone(),
            baseline: self.baseline.clone(),
            state: self.state,
            step: self.step,
            step_started: (self.state == RolloutState::Progressing).then_some(self.step_started),
            approval_deadline: self
                .approval_deadline
                .filter(|_| self.state == RolloutState::AwaitingApproval),
            stats: self.stats.clone(),
            figures: self.figures,
            verdict: self.verdict,
            reason: self.reason.clone(),
            hotfix: self.hotfix,
            external: self.answers.clone(),
            gates_pending: self
                .phase
                .as_ref()
                .map(|p| p.pending_names().into_iter().map(String::from).collect())
                .unwrap_or_default(),
            paused_by: self.paused_by.clone(),
        });
    }

    /// Log and notify one event.
    fn emit(&self, event: &'static str, verdict: Option<&'static str>, figures: Option<&Figures>) {
        let weight = match self.state {
            RolloutState::Succeeded => 100,
            RolloutState::RolledBack | RolloutState::Pending | RolloutState::Waiting => 0,
            _ => self.weight_of_step(self.step),
        };
        let gate = figures.map(|f| figures_json(&self.def, f));
        let run = if self.hotfix {
            "hotfix rollout"
        } else {
            "rollout"
        };
        let reason = self.reason.clone();
        let (step, steps, to) = (self.step + 1, self.def.steps.len(), &self.def.to);
        let figs = figures
            .map(|f| {
                let c = &f.canary;
                let p99 = c.p99.map(format_duration).unwrap_or_else(|| "-".into());
                format!(
                    "{} requests to {to}, {} failed ({}), p99 {p99}",
                    c.requests,
                    c.failures,
                    gate::pct(c.error_rate())
                )
            })
            .unwrap_or_default();
        let why = reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let msg = match event {
            "waiting" => format!("{run} waiting, {to} at 0%{why}"),
            "started" | "step" | "resumed" => {
                format!("{run} {event}: step {step}/{steps}, {to} at {weight}%")
            }
            "gate" => format!(
                "{run} gate {} at step {step}/{steps} ({figs}){why}",
                verdict.unwrap_or("")
            ),
            "succeeded" => format!("{run} succeeded, {to} at 100%{why}"),
            "rolled_back" => format!(
                "{run} rolled back at step {step}/{steps}, all traffic to {}{why} ({figs})",
                self.baseline
            ),
            _ => format!("{run} {event} at step {step}/{steps}, {to} at {weight}%{why}"),
        };
        if event == "rolled_back" || verdict == Some("failed") {
            tracing::warn!(route = %self.route, event, step = self.step, weight, "{msg}");
        } else {
            tracing::info!(route = %self.route, event, step = self.step, weight, "{msg}");
        }
        self.notifier.send(Event {
            route: self.route.clone(),
            event,
            state: self.state.as_str(),
            step: self.step,
            weight,
            to: self.def.to.clone(),
            baseline: self.baseline.clone(),
            verdict,
            reason,
            gate,
            hotfix: self.hotfix,
            time_ms: Event::now_ms(),
        });
    }

    /// Put `stats` in the route's slot (or clear it when it still holds ours).
    fn install_stats(&mut self, stats: Option<Arc<StepStats>>) {
        let Some(rt) = self.rt.upgrade() else { return };
        let snap = rt.snapshot();
        let Some(route) = snap.router.get(&self.route) else {
            return;
        };
        match &stats {
            Some(s) => route.state.rollout.store(Some(s.clone())),
            None => {
                if let Some(ours) = &self.stats {
                    let ours = Some(ours.clone());
                    route.state.rollout.compare_and_swap(&ours, None);
                }
            }
        }
        self.stats = stats;
    }

    /// Write the progress (the config file, the state file, or memory without either) and
    /// make it live. `how`: what to do when it cannot be written (see [`Unwritable`]).
    async fn commit(
        &self,
        weight: u32,
        state: RolloutState,
        step: usize,
        clock: Clock,
        how: Unwritable,
    ) -> Result<(), CommitError> {
        let committer = self.committer.upgrade().ok_or(CommitError::Gone)?;
        let (cancel, route, def) = (&self.cancel, self.route.as_str(), &*self.orig);
        let hotfix = self.hotfix;
        let edit = Box::new(move |live: &crate::config::Config| {
            if cancel.is_cancelled() {
                return Err(CommitError::Superseded);
            }
            let rc = live.route(route).ok_or(CommitError::Superseded)?;
            if !rc.rollout.as_ref().is_some_and(|d| d.definition_eq(def)) {
                return Err(CommitError::Superseded);
            }
            let split: Vec<(String, u32)> = rc
                .split
                .iter()
                .map(|(p, _)| (p.clone(), if *p == def.to { weight } else { 100 - weight }))
                .collect();
            Ok(Progress::record(def, split, state, step, clock.0, clock.1, hotfix).change(route))
        });
        committer.commit(edit, how).await
    }

    fn pool_healthy(&self) -> bool {
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

    fn schedule(&mut self) {
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

    /// Set the weight of step `k` and start its clock and statistics.
    async fn enter_step(
        &mut self,
        k: usize,
        event: &'static str,
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
        self.install_stats(Some(self.fresh_stats()));
        self.schedule();
        self.publish();
        self.emit(event, None, None);
        Ok(())
    }

    /// Empty statistics for a new step (or an approval wait) of this rollout.
    fn fresh_stats(&self) -> Arc<StepStats> {
        Arc::new(StepStats::new(
            &self.def.to,
            &self.baseline,
            self.def.max_p99,
        ))
    }

    /// Does the live config already show this progress?
    fn split_matches(&self, weight: u32, state: RolloutState, step: usize) -> bool {
        let Some(rt) = self.rt.upgrade() else {
            return false;
        };
        let live = rt.config();
        live.route(&self.route).is_some_and(|rc| {
            let total: u32 = rc.split.iter().map(|(_, w)| *w).sum();
            rc.weight_of(&self.def.to)
                .is_some_and(|w| w * 100 == weight * total.max(1))
                && rc
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.state == Some(state) && r.step == Some(step))
        })
    }

    /// Enter `awaiting_approval` at the current step (already written); `emit` the event.
    fn await_approval(&mut self, emit: bool) {
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
            self.emit("awaiting_approval", None, None);
        }
    }

    async fn check(&mut self) {
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
                    if let Err(e) = self.enter_step(self.step, "resumed", true, AUTO).await {
                        tracing::debug!(route = %self.route, error = %e, "resume retry failed");
                        self.schedule();
                    }
                    return;
                };
                let f = stats.figures();
                if let Some(reason) = gate::fail_fast(&self.def, &f, &self.def.to) {
                    self.gate_failed(reason, f).await;
                    return;
                }
                if now >= self.step_started + self.def.step_interval {
                    match gate::judge(&self.def, &f, self.pool_healthy(), &self.def.to) {
                        Verdict::Pass => {
                            if !self.passed_logged {
                                self.passed_logged = true;
                                self.verdict = Some("passed");
                                self.reason = None;
                                self.emit("gate", Some("passed"), Some(&f));
                            }
                            self.builtin_passed(f).await;
                        }
                        Verdict::Fail(reason) => {
                            self.gate_failed(reason, f).await;
                            return;
                        }
                        Verdict::Wait(reason) => {
                            let first = self.verdict != Some("waiting");
                            self.verdict = Some("waiting");
                            self.reason = Some(reason);
                            if first {
                                self.emit("gate", Some("waiting"), Some(&f));
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
                    let f = stats.figures();
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
    async fn gate_failed(&mut self, reason: String, f: Figures) {
        self.verdict = Some("failed");
        self.reason = Some(reason.clone());
        self.emit("gate", Some("failed"), Some(&f));
        self.roll_back(reason, Some(f), AUTO).await.ok();
    }

    /// The step passed: next step, approval, or success.
    async fn advance(&mut self, f: Figures) {
        let result = if self.step >= self.last_step() {
            self.succeed("the last step passed".into(), Some(f), AUTO)
                .await
        } else if self.def.approval {
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
            self.enter_step(self.step + 1, "step", false, AUTO).await
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

    async fn succeed(
        &mut self,
        reason: String,
        f: Option<Figures>,
        how: Unwritable,
    ) -> Result<(), CommitError> {
        let last = self.last_step();
        self.commit(100, RolloutState::Succeeded, last, (None, None), how)
            .await?;
        self.phase = None;
        self.state = RolloutState::Succeeded;
        self.step = last;
        self.finish(reason, f, "succeeded");
        Ok(())
    }

    /// Roll back: all traffic to the baseline. Automatic rollbacks take effect in memory even
    /// when nothing can be written (safety first); operator aborts follow the API rule.
    async fn roll_back(
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
        self.finish(reason, f, "rolled_back");
        Ok(())
    }

    fn finish(&mut self, reason: String, f: Option<Figures>, result: &'static str) {
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
                .with_label_values(&[&self.route, result])
                .inc();
        }
        self.publish();
        self.emit(result, None, self.figures.as_ref());
    }

    fn conflict(&self, what: &str) -> ActionError {
        ActionError::Conflict(format!(
            "cannot {what}: the rollout of route {:?} is {}",
            self.route,
            self.state.as_str()
        ))
    }

    /// An operator action. `force` (`?force=true`): go on in memory when the progress cannot
    /// be written, as automatic steps do; otherwise such an action changes nothing (409).
    async fn act(&mut self, action: Action, opts: ActOptions) -> Result<Status, ActionError> {
        use RolloutState::*;
        let force = opts.force;
        let how = if force { AUTO } else { Unwritable::Refuse };
        let running = matches!(self.state, Progressing | Paused | AwaitingApproval);
        match action {
            Action::Start => {
                if running || self.state == Waiting {
                    return Err(self.conflict("start (abort it first)"));
                }
                if opts.hotfix && self.orig.hotfix.is_none() {
                    return Err(ActionError::Conflict(format!(
                        "route {:?} has no [routes.rollout.hotfix] to start",
                        self.route
                    )));
                }
                self.set_run(opts.hotfix);
                self.pending_start = false;
                self.before_passed = false;
                self.after_gates_done = false;
                self.paused_by = None;
                if !self.hold_before_start() {
                    self.enter_step(0, "started", false, how)
                        .await
                        .map_err(ActionError::Commit)?;
                }
            }
            Action::Pause => {
                if !matches!(self.state, Progressing | AwaitingApproval) {
                    return Err(self.conflict("pause"));
                }
                self.commit(
                    self.weight_of_step(self.step),
                    Paused,
                    self.step,
                    (None, None),
                    how,
                )
                .await
                .map_err(ActionError::Commit)?;
                // Gates being judged are asked again from the start on resume.
                self.phase = None;
                self.checks.reset();
                self.paused_by = Some(opts.who.clone().unwrap_or_else(|| "operator".into()));
                self.paused_from = Some(self.state);
                self.state = Paused;
                self.figures = self.stats.as_ref().map(|s| s.figures()).or(self.figures);
                self.install_stats(None);
                let who = opts.who.as_deref().unwrap_or("operator");
                self.reason = Some(match &opts.why {
                    Some(why) => format!("paused by {who} {why}"),
                    None => format!("paused by {who}"),
                });
                self.next_check = None;
                self.publish();
                self.emit("paused", None, None);
            }
            Action::Resume => {
                if self.state != Paused {
                    return Err(self.conflict("resume"));
                }
                self.paused_by = None;
                if self.paused_from == Some(AwaitingApproval) {
                    self.commit(
                        self.weight_of_step(self.step),
                        AwaitingApproval,
                        self.step,
                        (None, Some(Instant::now() + self.def.approval_timeout)),
                        how,
                    )
                    .await
                    .map_err(ActionError::Commit)?;
                    self.await_approval(false);
                    self.emit("resumed", None, None);
                } else {
                    // The step starts over: a full interval of fresh statistics.
                    self.enter_step(self.step, "resumed", false, how)
                        .await
                        .map_err(ActionError::Commit)?;
                }
            }
            Action::Approve => {
                if self.state != AwaitingApproval {
                    return Err(self.conflict("approve"));
                }
                let next = (self.step + 1).min(self.last_step());
                self.commit(
                    self.weight_of_step(next),
                    Progressing,
                    next,
                    (Some(Instant::now()), None),
                    how,
                )
                .await
                .map_err(ActionError::Commit)?;
                self.emit("approved", None, None);
                self.enter_step(next, "step", true, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
            Action::Promote => {
                if !(running || matches!(self.state, Pending | Waiting)) {
                    return Err(self.conflict("promote (start it again first)"));
                }
                let f = self.stats.as_ref().map(|s| s.figures());
                self.succeed("promoted by operator".into(), f, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
            Action::Abort => {
                if !(running || matches!(self.state, Pending | Waiting)) {
                    return Err(self.conflict("abort"));
                }
                let f = self.stats.as_ref().map(|s| s.figures()).or(self.figures);
                self.no_cascade = opts.cascaded;
                let reason = match (&opts.why, &opts.who) {
                    (Some(why), _) => why.clone(),
                    (None, Some(who)) => format!("aborted by {who}"),
                    (None, None) => "aborted by operator".into(),
                };
                self.roll_back(reason, f, how)
                    .await
                    .map_err(ActionError::Commit)?;
            }
        }
        Ok(self.status.borrow().clone())
    }
}

/// SPEC §10: rollout order, external gates, hotfix runs.
impl Controller {
    /// Switch the run to the hotfix path or back (the steps, interval and minimum).
    fn set_run(&mut self, hotfix: bool) {
        self.hotfix = hotfix && self.orig.hotfix.is_some();
        self.def = Arc::new(run_def(&self.orig, self.hotfix));
        self.tick =
            (self.def.step_interval / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    }

    /// The routes named in `after` whose rollouts have not succeeded.
    fn order_pending(&self) -> Vec<String> {
        let Some(peers) = self.peers.upgrade() else {
            return Vec::new();
        };
        self.orig
            .after
            .iter()
            .filter(|r| {
                super::peer_status(&peers, r).is_none_or(|s| s.state != RolloutState::Succeeded)
            })
            .cloned()
            .collect()
    }

    /// Before the first step: hold in `waiting` while the rollouts named in `after` have not
    /// succeeded, then while the `before` gates have not passed. True while holding.
    fn hold_before_start(&mut self) -> bool {
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

    fn hold(&mut self, reason: String) {
        let first = self.state != RolloutState::Waiting || self.reason.as_deref() != Some(&reason);
        self.state = RolloutState::Waiting;
        self.reason = Some(reason);
        self.schedule();
        self.publish();
        if first {
            self.emit("waiting", None, None);
        }
    }

    /// The built-in gate passed the step: judge the `step` gates, and after the last step
    /// the `after` gates, before advancing.
    async fn builtin_passed(&mut self, f: Figures) {
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

    fn start_phase(&mut self, p: Phase, what: &str) {
        let names = p.pending_names().join(", ");
        self.phase = Some(p);
        self.verdict = Some("waiting");
        self.reason = Some(format!(
            "built-in gate passed; waiting for gate(s) {names} ({what})"
        ));
        self.emit("gate", Some("waiting"), None);
        self.pump();
        self.schedule();
        self.publish();
    }

    /// Ask the phase's gates that are due.
    fn pump(&mut self) {
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
    fn webhook_body(&self) -> bytes::Bytes {
        let status = self.status.borrow().clone();
        let rollout = self
            .rt
            .upgrade()
            .map(|rt| super::status_value(&rt, &self.route, &status))
            .unwrap_or(serde_json::Value::Null);
        let v = serde_json::json!({ "route": self.route, "rollout": rollout });
        bytes::Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    async fn on_answer(&mut self, i: usize, asked: Instant, answer: Answer) {
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
    async fn judge_phase(&mut self) -> bool {
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
                self.verdict = Some("failed");
                self.reason = Some(reason.clone());
                self.emit("gate", Some("failed"), f.as_ref());
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
    async fn roll_back_dependents(&mut self, why: &str) {
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
