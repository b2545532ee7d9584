//! Writing a rollout's progress into the config (the file when there is one, else memory):
//! the split, and `state` and `step` in `[routes.rollout]`, so a restart resumes where the
//! rollout stood.

use crate::config::writeback::{route_table, set_split, WritebackError};
use crate::config::{Config, RolloutState};
use toml_edit::DocumentMut;

/// Progress to record.
#[derive(Debug, Clone)]
pub struct Progress {
    pub split: Vec<(String, u32)>,
    pub state: RolloutState,
    pub step: usize,
}

/// Edit the document: split, `rollout.state`, `rollout.step`.
pub fn edit_doc(doc: &mut DocumentMut, route: &str, p: &Progress) -> Result<(), WritebackError> {
    set_split(doc, route, &p.split)?;
    let t = route_table(doc, route)?;
    let state = toml_edit::Value::from(p.state.as_str());
    let step = toml_edit::Value::from(p.step as i64);
    match t.get_mut("rollout") {
        Some(toml_edit::Item::Table(r)) => {
            set_value(r.entry("state"), state);
            set_value(r.entry("step"), step);
        }
        Some(toml_edit::Item::Value(toml_edit::Value::InlineTable(r))) => {
            r.insert("state", state);
            r.insert("step", step);
        }
        _ => {
            return Err(WritebackError::Edit(format!(
                "route {route:?} has no [routes.rollout] table"
            )))
        }
    }
    Ok(())
}

/// Replace a value, keeping the comment that trails it.
fn set_value(entry: toml_edit::Entry<'_>, v: toml_edit::Value) {
    match entry {
        toml_edit::Entry::Occupied(mut o) => {
            let item = o.get_mut();
            let mut v = v;
            if let Some(old) = item.as_value() {
                *v.decor_mut() = old.decor().clone();
            }
            *item = toml_edit::Item::Value(v);
        }
        toml_edit::Entry::Vacant(e) => {
            e.insert(toml_edit::Item::Value(v));
        }
    }
}

/// The same change on a config in memory (no file: `veer demo`).
pub fn edit_config(config: &mut Config, route: &str, p: &Progress) -> Result<(), WritebackError> {
    let rc = config
        .route_mut(route)
        .ok_or_else(|| WritebackError::Edit(format!("no route named {route:?}")))?;
    rc.split = p.split.clone();
    let r = rc
        .rollout
        .as_mut()
        .ok_or_else(|| WritebackError::Edit(format!("route {route:?} has no rollout")))?;
    r.state = Some(p.state);
    r.step = Some(p.step);
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
