//! The state file's text: written (commented, stable order) and read back, its errors named
//! with line and column.

use super::{RolloutEntry, Split, SplitEntry, State};
use crate::config::{ConfigError, ConfigErrors, ProgressMeta, RolloutState};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use toml_edit::DocumentMut;

impl State {
    /// The state file's text. `config` names the config file in the header comment.
    pub fn to_toml(&self, config: Option<&Path>) -> String {
        use toml_edit::{value, Array, InlineTable, Item, Table};
        let inline = |s: &Split| {
            let mut t = InlineTable::new();
            for (p, w) in s {
                t.insert(p, (*w as i64).into());
            }
            toml_edit::Value::InlineTable(t)
        };
        let mut doc = DocumentMut::new();
        let mut routes = Table::new();
        routes.set_implicit(true);
        let names: std::collections::BTreeSet<&String> =
            self.splits.keys().chain(self.rollouts.keys()).collect();
        for name in names {
            let mut rt = Table::new();
            rt.set_implicit(true);
            if let Some(e) = self.splits.get(name) {
                let mut t = Table::new();
                t.insert("set", Item::Value(inline(&e.set)));
                t.insert("was", Item::Value(inline(&e.was)));
                rt.insert("split", Item::Table(t));
            }
            if let Some(e) = self.rollouts.get(name) {
                let mut t = Table::new();
                t.insert("state", value(e.state.as_str()));
                t.insert("step", value(e.step as i64));
                t.insert("was", value(e.was.as_str()));
                let m = &e.meta;
                if let Some(v) = m.step_started_ms {
                    t.insert("step_started_ms", value(v.min(i64::MAX as u64) as i64));
                }
                if let Some(v) = m.approval_deadline_ms {
                    t.insert("approval_deadline_ms", value(v.min(i64::MAX as u64) as i64));
                }
                if let Some(f) = &m.fingerprint {
                    t.insert("fingerprint", value(f.as_str()));
                }
                if m.hotfix {
                    t.insert("mode", value("hotfix"));
                }
                rt.insert("rollout", Item::Table(t));
            }
            routes.insert(name, Item::Table(rt));
        }
        if !routes.is_empty() {
            doc.insert("routes", Item::Table(routes));
        }
        let mut pools: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((pool, addr), on) in &self.drains {
            if *on {
                pools.entry(pool).or_default().push(addr.to_string());
            }
        }
        if !pools.is_empty() {
            let mut pt = Table::new();
            pt.set_implicit(true);
            for (pool, addrs) in pools {
                let mut t = Table::new();
                t.insert("draining", value(addrs.iter().collect::<Array>()));
                pt.insert(pool, Item::Table(t));
            }
            doc.insert("pools", Item::Table(pt));
        }
        let of = config
            .map(|p| format!(" {}", p.display()))
            .unwrap_or_default();
        format!(
            "# veer state: changes made through the admin API and rollout progress, laid over the\n\
             # config{of} at start and at every reload. Written by veer (atomic replace).\n\
             # `was` is what the config said when the entry was written: once the config says\n\
             # something else for that key, the config wins and the entry is dropped.\n\n{doc}"
        )
    }

    /// Read a state file's text; `path` names it in errors (`FILE:LINE:COL: message`).
    pub fn parse(path: &Path, text: &str) -> Result<State, ConfigErrors> {
        let file: raw::File = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            errors_at(path, text, at, e.message())
        })?;
        let mut state = State::default();
        let mut errors = Vec::new();
        let mut bad = |at: usize, msg: String| errors.push(error_at(path, text, at, msg));
        for (route, r) in file.routes {
            if let Some(s) = r.split {
                let at = s.span().start;
                let s = s.into_inner();
                match (split(&s.set), split(&s.was)) {
                    (Some(set), Some(was)) => {
                        state.splits.insert(route.clone(), SplitEntry { set, was });
                    }
                    _ => bad(
                        at,
                        format!("routes.{route}.split: weights must be integers 0..=1000000"),
                    ),
                }
            }
            if let Some(ro) = r.rollout {
                let at = ro.span().start;
                let ro = ro.into_inner();
                match (RolloutState::parse(&ro.state), usize::try_from(ro.step)) {
                    (Some(st), Ok(step)) => {
                        let ms = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
                        state.rollouts.insert(
                            route.clone(),
                            RolloutEntry {
                                state: st,
                                step,
                                was: ro.was,
                                meta: ProgressMeta {
                                    step_started_ms: ms(ro.step_started_ms),
                                    approval_deadline_ms: ms(ro.approval_deadline_ms),
                                    fingerprint: ro.fingerprint,
                                    hotfix: ro.mode.as_deref() == Some("hotfix"),
                                },
                            },
                        );
                    }
                    _ => bad(
                        at,
                        format!(
                            "routes.{route}.rollout: unknown state {:?} or negative step {}",
                            ro.state, ro.step
                        ),
                    ),
                }
            }
        }
        for (pool, p) in file.pools {
            for a in p.draining {
                match a.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => {
                        state.drains.insert((pool.clone(), addr), true);
                    }
                    Err(_) => bad(
                        a.span().start,
                        format!(
                            "pools.{pool}.draining: {:?} is not a backend address (IP:PORT)",
                            a.get_ref()
                        ),
                    ),
                }
            }
        }
        if errors.is_empty() {
            Ok(state)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Read the state file at `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => State::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(ConfigErrors::single(
                path,
                format!("cannot read state file: {e}"),
            )),
        }
    }
}

fn split(m: &BTreeMap<String, i64>) -> Option<Split> {
    m.iter()
        .map(|(p, w)| (0..=1_000_000).contains(w).then(|| (p.clone(), *w as u32)))
        .collect()
}

fn error_at(path: &Path, text: &str, at: usize, message: impl Into<String>) -> ConfigError {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or("");
    ConfigError {
        file: path.to_path_buf(),
        line: before.matches('\n').count() + 1,
        col: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
        message: message.into(),
    }
}

fn errors_at(path: &Path, text: &str, at: usize, message: &str) -> ConfigErrors {
    let first = message
        .trim()
        .lines()
        .next()
        .unwrap_or("invalid state file");
    ConfigErrors(vec![error_at(
        path,
        text,
        at,
        format!("state file: {first}"),
    )])
}

/// The state file as serde reads it.
mod raw {
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use toml::Spanned;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub routes: BTreeMap<String, Route>,
        #[serde(default)]
        pub pools: BTreeMap<String, Pool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub split: Option<Spanned<SplitEntry>>,
        pub rollout: Option<Spanned<RolloutEntry>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SplitEntry {
        pub set: BTreeMap<String, i64>,
        pub was: BTreeMap<String, i64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RolloutEntry {
        pub state: String,
        pub step: i64,
        pub was: String,
        #[serde(default)]
        pub step_started_ms: Option<i64>,
        #[serde(default)]
        pub approval_deadline_ms: Option<i64>,
        #[serde(default)]
        pub fingerprint: Option<String>,
        #[serde(default)]
        pub mode: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Pool {
        #[serde(default)]
        pub draining: Vec<Spanned<String>>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::state::tests::{config, progressed_and_drained, ROLLOUT};

    #[test]
    fn the_file_reads_back_what_was_written() {
        let base = config("{ blue = 100, green = 0 }", ROLLOUT);
        let s = progressed_and_drained(
            &base,
            (0, 100),
            RolloutState::Succeeded,
            2,
            "127.0.0.1:9001",
        );
        let text = s.to_toml(Some(Path::new("/etc/veer/veer.toml")));
        assert!(text.contains("[routes.web.split]"), "{text}");
        assert!(text.contains("set = { blue = 0, green = 100 }"), "{text}");
        assert!(text.contains("draining = [\"127.0.0.1:9001\"]"), "{text}");
        assert_eq!(State::parse(Path::new("s.toml"), &text).unwrap(), s);
        assert_eq!(
            State::parse(Path::new("s.toml"), "").unwrap(),
            State::default()
        );
    }

    #[test]
    fn a_bad_state_file_is_named_with_line_and_column() {
        let e = State::parse(
            Path::new("s.toml"),
            "[routes.web.split]\nset = { blue = 1 }\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("s.toml:1:1: state file:"), "{e}");
        let e =
            State::parse(Path::new("s.toml"), "[pools.blue]\ndraining = [\"nope\"]\n").unwrap_err();
        assert!(e.to_string().starts_with("s.toml:2:13:"), "{e}");
        let e = State::parse(Path::new("s.toml"), "bogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
