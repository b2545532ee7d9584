//! The audit trail (issue 20, SPEC §3 `GET /api/changes`): every change that goes live —
//! an API call, a file reload, SIGHUP, a rollout step, a fleet revision — is recorded here
//! once, by the control layer that makes it live: one log line (target `veer::audit`) and
//! one entry in a bounded ring of the last [`KEEP`] changes.

use crate::config::state::Change;
use crate::config::state::Split;
use crate::config::Config;
use crate::runtime::ApplyReport;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many changes the ring keeps (SPEC §3: the last 100).
pub const KEEP: usize = 100;

/// Where a change came from (`source` of `/api/changes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    File,
    Signal,
    Rollout,
    Fleet,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::File => "file",
            Source::Signal => "signal",
            Source::Rollout => "rollout",
            Source::Fleet => "fleet",
        }
    }
}

/// Who made a change and through what. `who` is the API token's name (`"admin"` for the
/// single `token_env` token), or the source's name for changes nobody made through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub who: String,
    pub source: Source,
    /// Why, when the change has a reason of its own (a rollout step's gate verdict).
    pub why: Option<String>,
}

impl Origin {
    /// A change made through the admin API by the token named `who`.
    pub fn api(who: &str) -> Origin {
        Origin {
            who: who.to_string(),
            source: Source::Api,
            why: None,
        }
    }

    /// A change nobody made through the API: who is the source itself.
    pub fn of(source: Source) -> Origin {
        Origin {
            who: source.as_str().to_string(),
            source,
            why: None,
        }
    }

    /// The same origin, with a reason.
    pub fn because(mut self, why: Option<String>) -> Origin {
        self.why = why;
        self
    }
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Unix milliseconds.
    pub time_ms: u64,
    pub who: String,
    pub source: Source,
    pub what: String,
}

impl Entry {
    /// `{"time", "time_ms", "who", "source", "what"}` (`time`: RFC 3339, UTC).
    pub fn to_json(&self) -> Value {
        json!({
            "time": crate::log::access::rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(self.time_ms)),
            "time_ms": self.time_ms,
            "who": self.who,
            "source": self.source.as_str(),
            "what": self.what,
        })
    }
}

/// The last [`KEEP`] changes. A change is rare (never per request), so a plain mutex.
#[derive(Debug, Default)]
pub struct Audit {
    ring: Mutex<VecDeque<Entry>>,
}

impl Audit {
    /// Log the change once (target `veer::audit`) and keep it in the ring.
    pub fn record(&self, origin: &Origin, what: String) {
        tracing::info!(
            target: "veer::audit",
            who = %origin.who,
            source = origin.source.as_str(),
            "{what}"
        );
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(Entry {
            time_ms,
            who: origin.who.clone(),
            source: origin.source,
            what,
        });
    }

    /// The changes kept, newest first.
    pub fn recent(&self) -> Vec<Entry> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }

    /// The newest change.
    pub fn last(&self) -> Option<Entry> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.back().cloned()
    }

    /// `GET /api/changes`: the changes kept, newest first.
    pub fn changes_json(&self) -> Value {
        Value::Array(self.recent().iter().map(Entry::to_json).collect())
    }

    /// `last_change` of `/api/status`: `{"who", "what", "source", "when", "when_ms"}`, or
    /// null before the first change.
    pub fn last_change_json(&self) -> Value {
        match self.last() {
            None => Value::Null,
            Some(e) => {
                let t = e.to_json();
                json!({
                    "who": e.who,
                    "what": e.what,
                    "source": e.source.as_str(),
                    "when": t["time"],
                    "when_ms": e.time_ms,
                })
            }
        }
    }
}

/// `blue=90 green=10`.
pub fn split_text(split: &Split) -> String {
    split
        .iter()
        .map(|(p, w)| format!("{p}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What an API edit or a rollout step changed, against the config that was live before.
/// `why`: the rollout's reason, when it has one.
pub fn describe_change(old: &Config, change: &Change, why: Option<&str>) -> String {
    let old_split = |route: &str| {
        old.route(route)
            .map(|r| split_text(&r.split))
            .unwrap_or_else(|| "-".into())
    };
    let why = why.map(|w| format!(": {w}")).unwrap_or_default();
    match change {
        Change::Split { route, split } => format!(
            "route {route:?} split {} -> {}",
            old_split(route),
            split_text(split)
        ),
        Change::Progress {
            route,
            split,
            state,
            step,
            ..
        } => format!(
            "route {route:?} rollout {} at step {step}, split {} -> {}{why}",
            state.as_str(),
            old_split(route),
            split_text(split)
        ),
        Change::Drain { pool, addr, on } => format!(
            "backend {addr} of pool {pool:?} {}",
            if *on {
                "drained"
            } else {
                "restored (undrained)"
            }
        ),
    }
}

/// What a reload or a fleet revision changed (from what was applied).
pub fn describe_apply(old: &Config, new: &Config, r: &ApplyReport) -> String {
    let mut parts = Vec::new();
    if !r.routes_added.is_empty() {
        parts.push(format!("routes added: {}", r.routes_added.join(", ")));
    }
    if !r.routes_removed.is_empty() {
        parts.push(format!("routes removed: {}", r.routes_removed.join(", ")));
    }
    let mut changed: Vec<&String> = r.weights_changed.keys().collect();
    changed.sort();
    for route in changed {
        let split = |c: &Config| {
            c.route(route)
                .map(|rc| split_text(&rc.split))
                .unwrap_or_else(|| "-".into())
        };
        parts.push(format!(
            "route {route:?} split {} -> {}",
            split(old),
            split(new)
        ));
    }
    if !r.backends.added.is_empty() {
        parts.push(format!("backends added: {}", r.backends.added.join(", ")));
    }
    if !r.backends.removed.is_empty() {
        parts.push(format!(
            "backends removed (draining): {}",
            r.backends.removed.join(", ")
        ));
    }
    if parts.is_empty() {
        parts.push("settings changed".into());
    }
    format!("config version {}: {}", r.version, parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_hundred_newest_first() {
        let a = Audit::default();
        assert_eq!(a.last_change_json(), Value::Null);
        for i in 0..(KEEP + 5) {
            a.record(&Origin::api("alice"), format!("change {i}"));
        }
        let recent = a.recent();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent[0].what, format!("change {}", KEEP + 4));
        assert_eq!(recent[KEEP - 1].what, "change 5");
        let last = a.last_change_json();
        assert_eq!(last["who"], "alice");
        assert!(last["when"].as_str().unwrap().ends_with('Z'), "{last}");
    }
}
