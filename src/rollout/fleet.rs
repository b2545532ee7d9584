//! Fleet mode (SPEC §7): one rollout judged on the whole fleet's traffic. Every replica that
//! does not lead counts the running step of each rollout the document shows ([`Counting`])
//! and publishes the counts under its own lease ([`counters_json`]); the leader's controller
//! judges the gate on its own counts plus theirs ([`sum`]): requests, failures and requests
//! slower than `max_p99` add up exactly, so the fleet-wide p99 verdict stays exact.

use super::persist::Progress;
use super::stats::{Figures, SideFigures, StepStats};
use super::{ActOptions, Action, ActionError};
use crate::config::{Config, ProgressMeta, RolloutState, RouteConfig};
use crate::metrics::step::MirrorFigures;
use crate::runtime::Live;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use crate::cluster::StepId;

/// The steps a follower counts, by route.
#[derive(Default)]
pub struct Counting {
    steps: HashMap<String, (StepId, Arc<StepStats>)>,
}

fn side_json(f: &SideFigures) -> Value {
    json!({
        "requests": f.requests,
        "failures": f.failures,
        "slow": f.slow,
        "p99_us": f.p99.map(|d| d.as_micros() as u64),
    })
}

fn side_of(v: &Value) -> SideFigures {
    SideFigures {
        requests: v["requests"].as_u64().unwrap_or(0),
        failures: v["failures"].as_u64().unwrap_or(0),
        slow: v["slow"].as_u64().unwrap_or(0),
        streak: 0,
        p99: v["p99_us"].as_u64().map(Duration::from_micros),
    }
}

fn mirror_json(m: &MirrorFigures) -> Value {
    json!({ "compared": m.compared, "differ": m.differ })
}

impl Counting {
    /// Follow the live config: count the running step of every rollout in it (a new
    /// statistics slot when the step changes), stop counting finished ones.
    pub fn sync(&mut self, rt: &Live, live: &Config) {
        let Some(fleet) = rt.cluster.get() else {
            return;
        };
        let snap = rt.snapshot();
        let mut seen = Vec::new();
        for rc in &live.routes {
            let Some(def) = &rc.rollout else { continue };
            let running = matches!(
                def.state,
                Some(RolloutState::Progressing | RolloutState::AwaitingApproval)
            );
            let (Some(step), Some(started), true) =
                (def.step, def.progress.step_started_ms, running)
            else {
                continue;
            };
            let Some(route) = snap.router.get(&rc.name) else {
                continue;
            };
            let id = (step, started);
            seen.push(rc.name.clone());
            let current = route.state.rollout.load_full();
            match self.steps.get(&rc.name) {
                // Ours, still in the slot (a reload keeps the route's state).
                Some((sid, s))
                    if *sid == id && current.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)) => {}
                _ => {
                    let baseline = rc
                        .split
                        .iter()
                        .map(|(p, _)| p.as_str())
                        .find(|p| *p != def.to)
                        .unwrap_or_default();
                    // The step's own counters, the same ones a controller of this
                    // replica counted into when it led (or will when it leads).
                    let s = fleet.step_counts(&rc.name, id, || {
                        Arc::new(StepStats::new(&def.to, baseline, def.max_p99))
                    });
                    route.state.rollout.store(Some(s.clone()));
                    self.steps.insert(rc.name.clone(), (id, s));
                }
            }
        }
        self.steps.retain(|name, (_, s)| {
            let keep = seen.contains(name);
            if !keep {
                if let Some(route) = snap.router.get(name) {
                    route.state.rollout.compare_and_swap(&Some(s.clone()), None);
                }
            }
            keep
        });
    }

    /// Stop counting (this replica leads now): its controllers go on with the same counters
    /// (see `Fleet::step_counts`), so the slots are left to them.
    pub fn clear(&mut self) {
        self.steps.clear();
    }

    /// What this replica publishes: `{route: {step, started_ms, to, baseline}}`.
    pub fn counters_json(&self) -> Vec<u8> {
        let mut m = Map::new();
        for (name, ((step, started), s)) in &self.steps {
            let f = s.figures();
            m.insert(
                name.clone(),
                json!({
                    "step": step,
                    "started_ms": started,
                    "to": side_json(&f.canary),
                    "baseline": side_json(&f.baseline),
                    "mirror": mirror_json(&s.mirror_figures()),
                }),
            );
        }
        Value::Object(m).to_string().into_bytes()
    }
}

/// What one replica published of `route`'s step `id` (`None`: unreadable, or another step).
fn published_step(raw: &[u8], route: &str, id: StepId) -> Option<Value> {
    let mut v = serde_json::from_slice::<Value>(raw).ok()?;
    let r = v.get_mut(route)?.take();
    (r["step"].as_u64() == Some(id.0 as u64) && r["started_ms"].as_u64() == Some(id.1)).then_some(r)
}

/// The leader's `local` figures of `route`'s step `id` plus every other replica's published
/// counts of the same step; and the replicas that contributed.
pub fn sum(
    local: Figures,
    remote: &[(String, Vec<u8>)],
    route: &str,
    id: StepId,
) -> (Figures, Vec<String>) {
    let mut f = local;
    let mut from = Vec::new();
    for (node, raw) in remote {
        let Some(r) = published_step(raw, route, id) else {
            continue;
        };
        for (mine, theirs) in [
            (&mut f.canary, side_of(&r["to"])),
            (&mut f.baseline, side_of(&r["baseline"])),
        ] {
            mine.requests += theirs.requests;
            mine.failures += theirs.failures;
            mine.slow += theirs.slow;
            mine.p99 = mine.p99.max(theirs.p99);
        }
        from.push(node.clone());
    }
    (f, from)
}

/// The leader's `local` compared mirror copies of `route`'s step `id` plus every other
/// replica's of the same step (a "mirror" step is judged on the whole fleet's copies, as any
/// other step on its requests).
pub fn sum_mirror(
    local: MirrorFigures,
    remote: &[(String, Vec<u8>)],
    route: &str,
    id: StepId,
) -> MirrorFigures {
    let mut m = local;
    for (_, raw) in remote {
        let Some(r) = published_step(raw, route, id) else {
            continue;
        };
        m.compared += r["mirror"]["compared"].as_u64().unwrap_or(0);
        m.differ += r["mirror"]["differ"].as_u64().unwrap_or(0);
    }
    m
}

/// A rollout action taken on a replica that does not lead (SPEC §7: API changes on any
/// replica are compare-and-swap writes of the document): the progress it writes, by route,
/// judged on the standing of the rollouts in `doc` (the document as the store holds it) by
/// the rules the leader's controller applies to the same action ([`super::controller`]'s
/// `act`). An action that does not fit the standing is refused with the same words. The
/// leader's controller then goes on from what was written (`Rollouts::adopt`), so what needs
/// the controller stays its own: a `start` is written as `waiting` at step 0, from which the
/// leader starts the run (rollout order, `before` gates, the hotfix path) as it starts any;
/// an `abort` rolls back every unfinished rollout that depends on this one first, in the same
/// write.
pub fn follower_action(
    doc: &Config,
    route: &str,
    action: Action,
    opts: &ActOptions,
    now_ms: u64,
) -> Result<Vec<(String, Progress)>, ActionError> {
    use RolloutState::*;
    let rc = doc
        .route(route)
        .ok_or_else(|| ActionError::UnknownRoute(route.to_string()))?;
    let def = rc
        .rollout
        .as_ref()
        .ok_or_else(|| ActionError::NoRollout(route.to_string()))?;
    let state = def.state.unwrap_or(Pending);
    let conflict = |what: &str| {
        ActionError::Conflict(format!(
            "cannot {what}: the rollout of route {route:?} is {}",
            state.as_str()
        ))
    };
    let running = matches!(state, Progressing | Paused | AwaitingApproval);
    let hotfix = match action {
        Action::Start if opts.hotfix && def.hotfix.is_none() => {
            return Err(ActionError::Conflict(format!(
                "route {route:?} has no [routes.rollout.hotfix] to start"
            )))
        }
        Action::Start => opts.hotfix,
        _ => def.progress.hotfix && def.hotfix.is_some(),
    };
    let steps = def.run_steps(hotfix).0;
    let last = steps.len().saturating_sub(1);
    let step = def.step.unwrap_or(0).min(last);
    let weight = |k: usize| Some(steps.get(k).copied().unwrap_or(0));
    // (state, step, weight on `to` (None: the split stays), the step's start)
    let (next, at, w, started) = match action {
        Action::Start if running || state == Waiting => {
            return Err(conflict("start (abort it first)"))
        }
        Action::Start => (Waiting, 0, None, None),
        Action::Pause if !matches!(state, Progressing | AwaitingApproval) => {
            return Err(conflict("pause"))
        }
        Action::Pause => (Paused, step, weight(step), None),
        Action::Resume if state != Paused => return Err(conflict("resume")),
        // What the pause interrupted is not written, so (as after a restart) the step starts
        // over: a full interval of fresh statistics.
        Action::Resume => (Progressing, step, weight(step), Some(now_ms)),
        Action::Approve if state != AwaitingApproval => return Err(conflict("approve")),
        Action::Approve => {
            let k = (step + 1).min(last);
            (Progressing, k, weight(k), Some(now_ms))
        }
        Action::Promote if !(running || matches!(state, Pending | Waiting)) => {
            return Err(conflict("promote (start it again first)"))
        }
        Action::Promote => (Succeeded, last, Some(100), None),
        // Undo a finished rollout: the baseline takes all traffic again (the leader's rule).
        Action::Rollback if state == Succeeded => (RolledBack, step, Some(0), None),
        Action::Abort if state == Succeeded => {
            return Err(ActionError::Conflict(format!(
                "cannot abort: the rollout of route {route:?} succeeded; `rollback` moves all traffic back to the baseline"
            )))
        }
        Action::Abort | Action::Rollback if !(running || matches!(state, Pending | Waiting)) => {
            return Err(conflict(action.as_str()))
        }
        Action::Abort | Action::Rollback => (RolledBack, step, Some(0), None),
    };
    let mut out = Vec::new();
    if matches!(action, Action::Abort | Action::Rollback) && !opts.cascaded {
        for dep in crate::config::rollout::dependents_first(doc, route) {
            let Some((drc, d)) = doc.route(&dep).and_then(|r| Some((r, r.rollout.as_ref()?)))
            else {
                continue;
            };
            if d.state.is_some_and(RolloutState::is_final) {
                continue;
            }
            let at = d.step.unwrap_or(0);
            out.push((
                dep.clone(),
                progress_of(drc, d, RolledBack, at, Some(0), None, d.progress.hotfix),
            ));
        }
    }
    out.push((
        route.to_string(),
        progress_of(rc, def, next, at, w, started, hotfix),
    ));
    Ok(out)
}

/// The progress `state` at `step` of `def` on route `rc`, `to` at `weight` percent (`None`:
/// the split as it is).
fn progress_of(
    rc: &RouteConfig,
    def: &crate::config::RolloutConfig,
    state: RolloutState,
    step: usize,
    weight: Option<u32>,
    started_ms: Option<u64>,
    hotfix: bool,
) -> Progress {
    let split = rc
        .split
        .iter()
        .map(|(p, w0)| {
            let w = match weight {
                Some(w) if *p == def.to => w,
                Some(w) => 100 - w,
                None => *w0,
            };
            (p.clone(), w)
        })
        .collect();
    Progress {
        split,
        state,
        step,
        meta: ProgressMeta {
            step_started_ms: started_ms,
            approval_deadline_ms: None,
            fingerprint: Some(def.fingerprint()),
            hotfix,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_at(state: &str, step: usize) -> Config {
        let text = format!(
            "[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[pools.green]\nbackends = [\"127.0.0.1:9002\"]\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 90, green = 10 }}\n[routes.rollout]\nto = \"green\"\nsteps = [10, 50, 100]\napproval = true\nstate = \"{state}\"\nstep = {step}\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nsplit = {{ blue = 50, green = 50 }}\n[routes.rollout]\nto = \"green\"\nsteps = [50, 100]\nafter = [\"web\"]\nstate = \"waiting\"\n"
        );
        Config::parse(std::path::Path::new("doc"), &text).unwrap()
    }

    fn act(state: &str, step: usize, action: Action, now: u64) -> Result<Progress, ActionError> {
        let mut out = follower_action(
            &doc_at(state, step),
            "web",
            action,
            &ActOptions::default(),
            now,
        )?;
        Ok(out.pop().unwrap().1)
    }

    #[test]
    fn a_follower_action_is_judged_on_the_documents_standing() {
        let green = |p: &Progress| p.split.iter().find(|(n, _)| n == "green").unwrap().1;
        let approve = act("awaiting_approval", 0, Action::Approve, 7).unwrap();
        assert_eq!(
            (approve.state, approve.step, green(&approve)),
            (RolloutState::Progressing, 1, 50)
        );
        assert_eq!(approve.meta.step_started_ms, Some(7), "the step starts now");
        assert!(approve.meta.fingerprint.is_some());
        let pause = act("progressing", 1, Action::Pause, 7).unwrap();
        assert_eq!(
            (pause.state, pause.step, green(&pause)),
            (RolloutState::Paused, 1, 50)
        );
        let resume = act("paused", 1, Action::Resume, 9).unwrap();
        assert_eq!((resume.state, resume.step), (RolloutState::Progressing, 1));
        assert_eq!(resume.meta.step_started_ms, Some(9));
        let promote = act("progressing", 0, Action::Promote, 9).unwrap();
        assert_eq!(
            (promote.state, promote.step, green(&promote)),
            (RolloutState::Succeeded, 2, 100)
        );
        // A start is left to the leader, which starts a `waiting` rollout as it starts any.
        let start = act("rolled_back", 1, Action::Start, 9).unwrap();
        assert_eq!(
            (start.state, start.step, green(&start)),
            (RolloutState::Waiting, 0, 10)
        );
        // An abort rolls back the unfinished rollouts that depend on this one, first.
        let out = follower_action(
            &doc_at("paused", 1),
            "web",
            Action::Abort,
            &ActOptions::default(),
            9,
        )
        .unwrap();
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        assert!(out
            .iter()
            .all(|(_, p)| p.state == RolloutState::RolledBack && green(p) == 0));
        // What does not fit the standing is refused as the leader refuses it.
        for (state, action) in [
            ("progressing", Action::Approve),
            ("paused", Action::Pause),
            ("progressing", Action::Resume),
            ("progressing", Action::Start),
            ("succeeded", Action::Abort),
            ("rolled_back", Action::Promote),
        ] {
            let e = act(state, 0, action, 1).unwrap_err();
            assert!(
                matches!(&e, ActionError::Conflict(m) if m.contains(state)),
                "{state} {action:?}: {e}"
            );
            assert_eq!(e.status(), http::StatusCode::CONFLICT);
        }
        let hot = ActOptions {
            hotfix: true,
            ..Default::default()
        };
        let e =
            follower_action(&doc_at("rolled_back", 0), "web", Action::Start, &hot, 1).unwrap_err();
        assert!(e.to_string().contains("no [routes.rollout.hotfix]"), "{e}");
    }

    #[test]
    fn sums_only_the_same_step_and_keeps_slow_counts_exact() {
        let side = |r, f, s| SideFigures {
            requests: r,
            failures: f,
            slow: s,
            streak: 0,
            p99: None,
        };
        let local = Figures {
            canary: side(10, 1, 2),
            baseline: side(20, 0, 0),
        };
        let a = br#"{"web": {"step": 1, "started_ms": 5, "to": {"requests": 7, "failures": 2, "slow": 1, "p99_us": 900}, "baseline": {"requests": 3}}}"#.to_vec();
        let old = br#"{"web": {"step": 0, "started_ms": 1, "to": {"requests": 100}}}"#.to_vec();
        let (f, from) = sum(local, &[("a".into(), a), ("b".into(), old)], "web", (1, 5));
        assert_eq!(f.canary.requests, 17);
        assert_eq!(f.canary.failures, 3);
        assert_eq!(f.canary.slow, 3);
        assert_eq!(f.canary.p99, Some(Duration::from_micros(900)));
        assert_eq!(f.baseline.requests, 23);
        assert_eq!(from, vec!["a".to_string()]);
    }

    #[test]
    fn mirror_copies_sum_over_the_same_step_and_are_published() {
        let a =
            br#"{"web": {"step": 0, "started_ms": 5, "mirror": {"compared": 30, "differ": 4}}}"#
                .to_vec();
        let old =
            br#"{"web": {"step": 0, "started_ms": 1, "mirror": {"compared": 100, "differ": 100}}}"#
                .to_vec();
        let none = br#"{"web": {"step": 0, "started_ms": 5}}"#.to_vec();
        let local = MirrorFigures {
            compared: 10,
            differ: 1,
        };
        let remote = [("a".into(), a), ("b".into(), old), ("c".into(), none)];
        let m = sum_mirror(local, &remote, "web", (0, 5));
        assert_eq!((m.compared, m.differ), (40, 5));
        // What a follower publishes reads back the same way.
        let s = Arc::new(StepStats::new("green", "blue", Duration::from_millis(500)));
        crate::metrics::step::observe_mirror(&arc_swap::ArcSwapOption::new(Some(s.clone())), true);
        let mut c = Counting::default();
        c.steps.insert("web".into(), ((0, 5), s));
        let published = [("f".to_string(), c.counters_json())];
        let m = sum_mirror(MirrorFigures::default(), &published, "web", (0, 5));
        assert_eq!((m.compared, m.differ), (1, 1));
    }
}
