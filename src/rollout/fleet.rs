//! Fleet mode (SPEC §7): one rollout judged on the whole fleet's traffic. Every replica that
//! does not lead counts the running step of each rollout the document shows ([`Counting`])
//! and publishes the counts under its own lease ([`counters_json`]); the leader's controller
//! judges the gate on its own counts plus theirs ([`sum`]): requests, failures and requests
//! slower than `max_p99` add up exactly, so the fleet-wide p99 verdict stays exact.

use super::stats::{Figures, SideFigures, StepStats};
use crate::config::{Config, RolloutState};
use crate::runtime::Runtime;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Which step a count belongs to: its index and its start (Unix ms), as the document says.
pub type StepId = (usize, u64);

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

impl Counting {
    /// Follow the live config: count the running step of every rollout in it (a new
    /// statistics slot when the step changes), stop counting finished ones.
    pub fn sync(&mut self, rt: &Runtime, live: &Config) {
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
                    let s = Arc::new(StepStats::new(&def.to, baseline, def.max_p99));
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

    /// Stop counting (this replica leads now; its controllers count).
    pub fn clear(&mut self, rt: &Runtime) {
        let snap = rt.snapshot();
        for (name, (_, s)) in self.steps.drain() {
            if let Some(route) = snap.router.get(&name) {
                route.state.rollout.compare_and_swap(&Some(s), None);
            }
        }
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
                }),
            );
        }
        Value::Object(m).to_string().into_bytes()
    }
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
        let Ok(v) = serde_json::from_slice::<Value>(raw) else {
            continue;
        };
        let r = &v[route];
        if r["step"].as_u64() != Some(id.0 as u64) || r["started_ms"].as_u64() != Some(id.1) {
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
