//! A rollout's progress as one [`Change`]: the split, and `state` and `step` in
//! `[routes.rollout]`, so a restart resumes where the rollout stood, with the step's clock
//! (its start and any approval deadline, as unix milliseconds), the definition's fingerprint
//! and whether the run is a hotfix written beside them ([`ProgressMeta`]). Where it is written
//! (the config file, the state file, or memory only) is decided by [`crate::control`];
//! [`Progress::record`] and [`resume_clock`] are the one place that turns the controller's
//! clock into what is stored and back, for any store (the fleet's too).

use crate::config::state::Change;
use crate::config::writeback::WritebackError;
use crate::config::{Config, ProgressMeta, RolloutConfig, RolloutState};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use toml_edit::DocumentMut;

/// Progress to record.
#[derive(Debug, Clone)]
pub struct Progress {
    pub split: Vec<(String, u32)>,
    pub state: RolloutState,
    pub step: usize,
    pub meta: ProgressMeta,
}

impl Progress {
    /// The progress of a rollout of `def` at `step` in `state`, with the step's clock
    /// (`started`, and `deadline` while an approval is awaited) turned into wall-clock time.
    pub fn record(
        def: &RolloutConfig,
        split: Vec<(String, u32)>,
        state: RolloutState,
        step: usize,
        started: Option<Instant>,
        deadline: Option<Instant>,
        hotfix: bool,
    ) -> Progress {
        Progress {
            split,
            state,
            step,
            meta: ProgressMeta {
                step_started_ms: started.map(wall_ms),
                approval_deadline_ms: deadline.map(wall_ms),
                fingerprint: Some(def.fingerprint()),
                hotfix,
            },
        }
    }

    /// The change that records this progress of `route`.
    pub fn change(&self, route: &str) -> Change {
        Change::Progress {
            route: route.to_string(),
            split: self.split.clone(),
            state: self.state,
            step: self.step,
            meta: self.meta.clone(),
        }
    }
}

/// The step's clock a resumed rollout runs on: (step start, approval deadline), from what
/// [`Progress::record`] stored.
pub fn resume_clock(meta: &ProgressMeta) -> (Option<Instant>, Option<Instant>) {
    (
        meta.step_started_ms.map(instant_of),
        meta.approval_deadline_ms.map(instant_of),
    )
}

/// Wall-clock time and tokio's clock, read once: persisted times are wall-clock (they must
/// mean the same after a restart), and the controller runs on tokio's clock (paused in
/// tests). Converting through one anchor keeps both exact.
fn anchor() -> (u64, Instant) {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (wall, Instant::now())
    })
}

/// Unix milliseconds of a tokio instant.
pub fn wall_ms(at: Instant) -> u64 {
    let (wall, base) = anchor();
    if at >= base {
        wall.saturating_add((at - base).as_millis() as u64)
    } else {
        wall.saturating_sub((base - at).as_millis() as u64)
    }
}

/// The tokio instant of unix milliseconds `ms`. A time before this machine's monotonic clock
/// began (a step started before a reboot) is clamped to the earliest instant representable.
pub fn instant_of(ms: u64) -> Instant {
    let (wall, base) = anchor();
    if ms >= wall {
        base + Duration::from_millis(ms - wall)
    } else {
        let mut back = Duration::from_millis(wall - ms);
        loop {
            if let Some(t) = base.checked_sub(back) {
                return t;
            }
            back /= 2;
            if back.is_zero() {
                return base;
            }
        }
    }
}

/// Edit the document: split, `rollout.state`, `rollout.step`.
pub fn edit_doc(doc: &mut DocumentMut, route: &str, p: &Progress) -> Result<(), WritebackError> {
    p.change(route).edit_doc(doc)
}

/// The same change on a config in memory.
pub fn edit_config(config: &mut Config, route: &str, p: &Progress) -> Result<(), WritebackError> {
    let rc = config
        .route(route)
        .ok_or_else(|| WritebackError::Edit(format!("no route named {route:?}")))?;
    if rc.rollout.is_none() {
        return Err(WritebackError::Edit(format!(
            "route {route:?} has no rollout"
        )));
    }
    p.change(route).edit_config(config);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_round_trips_through_wall_time() {
        let t = Instant::now();
        tokio::time::advance(Duration::from_secs(90)).await;
        let later = Instant::now();
        let d = wall_ms(later) - wall_ms(t);
        assert!((89_999..=90_001).contains(&d), "{d}");
        // Exact to the millisecond (what is stored).
        let close = |a: Instant, b: Instant| {
            let gap = if a > b { a - b } else { b - a };
            gap < Duration::from_millis(1)
        };
        assert!(close(instant_of(wall_ms(t)), t));
        assert!(close(
            instant_of(wall_ms(later) + 5),
            later + Duration::from_millis(5)
        ));
    }

    #[test]
    fn edits_table_and_inline_forms() {
        let text = r#"[[routes]]
name = "web"
split = { blue = 90, green = 10 } # the split
[routes.rollout]
to = "green"
steps = [5, 50, 100]
state = "progressing" # written by veer
"#;
        let mut doc: DocumentMut = text.parse().unwrap();
        let p = Progress {
            split: vec![("blue".into(), 50), ("green".into(), 50)],
            state: RolloutState::Paused,
            step: 1,
            meta: ProgressMeta::default(),
        };
        edit_doc(&mut doc, "web", &p).unwrap();
        let out = doc.to_string();
        assert!(
            out.contains("split = { blue = 50, green = 50 } # the split"),
            "{out}"
        );
        assert!(
            out.contains("state = \"paused\" # written by veer"),
            "{out}"
        );
        assert!(out.contains("step = 1"), "{out}");
        assert!(!out.contains("step_started_ms"), "{out}");
        let with_clock = Progress {
            meta: ProgressMeta {
                step_started_ms: Some(1_700_000_000_000),
                approval_deadline_ms: None,
                fingerprint: Some("00ff".into()),
                hotfix: true,
            },
            ..p.clone()
        };
        edit_doc(&mut doc, "web", &with_clock).unwrap();
        let out = doc.to_string();
        assert!(out.contains("step_started_ms = 1700000000000"), "{out}");
        assert!(out.contains("fingerprint = \"00ff\""), "{out}");
        assert!(out.contains("mode = \"hotfix\""), "{out}");
        // Clearing the clock removes the keys again.
        edit_doc(&mut doc, "web", &p).unwrap();
        let out = doc.to_string();
        assert!(
            !out.contains("step_started_ms") && !out.contains("mode"),
            "{out}"
        );

        let inline = "[[routes]]\nname = \"web\"\nsplit = { blue = 1, green = 0 }\nrollout = { to = \"green\", steps = [100] }\n";
        let mut doc: DocumentMut = inline.parse().unwrap();
        edit_doc(&mut doc, "web", &p).unwrap();
        let out = doc.to_string();
        assert!(
            out.contains("state = \"paused\"") && out.contains("step = 1"),
            "{out}"
        );

        let none = "[[routes]]\nname = \"web\"\nsplit = { blue = 1, green = 0 }\n";
        let mut doc: DocumentMut = none.parse().unwrap();
        assert!(edit_doc(&mut doc, "web", &p).is_err());
    }
}
