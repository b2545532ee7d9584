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
//! The state machine is here; operator actions in `actions`, writing progress in
//! `writeback`, logging and notifying events in `events`, SPEC §10 (rollout order, external
//! gates, hotfix runs) in `gates`.

mod actions;
mod events;
mod gates;
mod writeback;

use super::external::{self, Answer, Phase, PhaseVerdict};
use super::gate::{self, Verdict};
use super::notify::{EventKind, GateResult, Notifier};
use super::persist;
use super::stats::{Figures, StepStats};
use super::{Command, Committer, Handle, Peers, Start, Status};
use crate::config::state::Unwritable;
use crate::config::writeback::WritebackError;
use crate::config::{format_duration, RolloutConfig, RolloutState, RouteConfig};
use crate::runtime::Live;
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
    rt: &Arc<Live>,
    committer: Weak<dyn Committer>,
    peers: Weak<Peers>,
    route: &RouteConfig,
    def: &RolloutConfig,
    start: Start,
) -> Handle {
    let orig = Arc::new(def.clone());
    let hotfix = matches!(start, Start::Resume { state: Some(_), .. }) && def.progress.hotfix;
    let def = Arc::new(gates::run_def(def, hotfix));
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
        Start::Resume { state, step, .. } => {
            (state.unwrap_or(RolloutState::Pending), step.unwrap_or(0))
        }
    };
    let status = Status {
        def: def.clone(),
        baseline: baseline.clone(),
        state,
        step,
        step_started: None,
        step_started_ms: 0,
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
        fleet_nodes: std::sync::Mutex::new(FleetNodes::default()),
        orig: orig.clone(),
        peers,
        hotfix,
        gate_client: (!orig.gates.is_empty())
            .then(|| external::Client::new(&orig.gates))
            .flatten(),
        phase: None,
        checks: gates::GateChecks::new(),
        answers: Vec::new(),
        paused_by: None,
        resume_clock: matches!(start, Start::Resume { .. })
            .then(|| persist::resume_clock(&orig.progress)),
        before_passed: false,
        step_gates_done: false,
        after_gates_done: false,
        no_cascade: false,
        acting: None,
        why: None,
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

#[derive(Default)]
struct FleetNodes {
    step: super::fleet::StepId,
    seen: std::collections::BTreeSet<String>,
    gone: std::collections::BTreeSet<String>,
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

    /// Publish the status and the step gauge.
    pub(super) fn publish(&self) {
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
            step_started_ms: self.step_started_ms(),
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

    /// Put `stats` in the route's slot (or clear it when it still holds ours).
    pub(super) fn install_stats(&mut self, stats: Option<Arc<StepStats>>) {
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

    /// The running step's start as written with it (unix ms): with the step, it names the
    /// step whose counts the fleet's replicas publish and sum.
    fn step_started_ms(&self) -> u64 {
        persist::wall_ms(self.step_started)
    }

    /// Fleet mode: this replica's figures of the running step plus the other replicas'
    /// published counts of the same step (SPEC §7); a single replica's own figures.
    fn fleet_figures(&self, own: Figures) -> Figures {
        let Some(fleet) = self.rt.upgrade().and_then(|rt| rt.cluster.get().cloned()) else {
            return own;
        };
        let id = (self.step, self.step_started_ms());
        let (sum, from) = super::fleet::sum(own, &fleet.remote_counters(), &self.route, id);
        let mut n = self.fleet_nodes.lock().unwrap_or_else(|p| p.into_inner());
        if n.step != id {
            *n = FleetNodes {
                step: id,
                ..FleetNodes::default()
            };
        }
        let from: std::collections::BTreeSet<String> = from.into_iter().collect();
        let gone: Vec<String> = n.seen.difference(&from).cloned().collect();
        n.gone.extend(gone);
        n.gone.retain(|g| !from.contains(g));
        n.seen.extend(from);
        sum
    }

    /// Fleet mode: a new leader judges nothing before it has read the other replicas'
    /// counts once (a step it resumes past its end would be judged on its own share alone).
    fn fleet_counts_ready(&self) -> bool {
        self.rt
            .upgrade()
            .and_then(|rt| rt.cluster.get().map(|f| f.counters_read()))
            .unwrap_or(true)
    }

    /// A gate reason, with the replicas whose counts of this step left with them.
    fn with_fleet_note(&self, reason: String) -> String {
        let n = self.fleet_nodes.lock().unwrap_or_else(|p| p.into_inner());
        if n.gone.is_empty() || n.step != (self.step, self.step_started_ms()) {
            return reason;
        }
        let names: Vec<&str> = n.gone.iter().map(String::as_str).collect();
        format!(
            "{reason} (replica {} left the fleet; its counts of this step are gone)",
            names.join(", ")
        )
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

    /// Empty statistics for a new step (or an approval wait) of this rollout.
    pub(super) fn fresh_stats(&self) -> Arc<StepStats> {
        Arc::new(StepStats::new(
            &self.def.to,
            &self.baseline,
            self.def.max_p99,
        ))
    }

    /// The running step's statistics: fleet mode, this replica's counters of the step (the
    /// same ones it counted into while it followed, when it resumes a step it counted);
    /// otherwise fresh ones.
    fn step_stats(&self) -> Arc<StepStats> {
        match self.rt.upgrade().and_then(|rt| rt.cluster.get().cloned()) {
            Some(fleet) => {
                fleet.step_counts(&self.route, (self.step, self.step_started_ms()), || {
                    self.fresh_stats()
                })
            }
            None => self.fresh_stats(),
        }
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
                if !mirror {
                    if let Some(reason) = gate::fail_fast(&self.def, &f, &self.def.to) {
                        self.gate_failed(reason, f).await;
                        return;
                    }
                }
                // Fail fast on what is known (safety first), but a step's verdict waits for
                // the whole fleet's counts.
                if now >= self.step_started + self.def.step_interval && self.fleet_counts_ready() {
                    let verdict = if mirror {
                        let m = stats.mirror_figures();
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
