//! A rollout's progress as one [`Change`]: the split, and `state` and `step` in
//! `[routes.rollout]`, so a restart resumes where the rollout stood. Where it is written (the
//! config file, the state file, or memory only) is decided by [`crate::control`].

use crate::config::state::{Change, StepClock};
use crate::config::writeback::WritebackError;
use crate::config::{Config, RolloutState};
use toml_edit::DocumentMut;

/// Progress to record.
#[derive(Debug, Clone)]
pub struct Progress {
    pub split: Vec<(String, u32)>,
    pub state: RolloutState,
    pub step: usize,
    /// Fleet mode: the step clock written with it (`None`: a single replica writes none).
    pub clock: Option<StepClock>,
}

impl Progress {
    /// The change that records this progress of `route`.
    pub fn change(&self, route: &str) -> Change {
        Change::Progress {
            route: route.to_string(),
            split: self.split.clone(),
            state: self.state,
            step: self.step,
            clock: self.clock,
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
            clock: None,
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
