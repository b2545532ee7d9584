//! Human output for the command line: the admin API's JSON answers as text and tables.

use serde_json::Value;

/// `veer status`: the config version, a table of routes and their splits, rollouts in progress
/// or finished, and a table of every backend.
pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let version = v["config"]["version"].as_u64().unwrap_or(0);
    match v["config"]["loaded_at"].as_u64() {
        Some(at) if at > 0 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(at);
            out.push_str(&format!(
                "config v{version}, loaded {} ({} ago)\n",
                utc(at),
                ago(now.saturating_sub(at))
            ));
        }
        _ => out.push_str(&format!("config v{version}\n")),
    }
    if v["cluster"].is_object() {
        out.push_str(&super::cluster::render(&v["cluster"]));
    }
    // The audit trail's newest entry (issue 20): what changed last, who and when.
    if let Some(what) = v["last_change"]["what"].as_str() {
        let when = v["last_change"]["when"].as_str().unwrap_or("-");
        let who = v["last_change"]["who"].as_str().unwrap_or("-");
        out.push_str(&format!("last change: {what} (by {who}, {when})\n"));
    }
    if v["persisted"] == Value::Bool(false) {
        out.push_str("warning: some changes live in memory only (not written to the config or state file); a restart loses them\n");
    }

    let empty = Vec::new();
    let routes = v["routes"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let hosts = r["hosts"]
                .as_array()
                .map(|h| {
                    h.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let prefix = r["path_prefix"].as_str().unwrap_or("");
            let matches = format!("{hosts} {prefix}").trim().to_string();
            vec![text(&r["name"]), matches, split_text(&r["split"])]
        })
        .collect();
    out.push_str("\nROUTES\n");
    if rows.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table(&["ROUTE", "MATCH", "SPLIT"], &rows));
    }

    let rollouts: Vec<Vec<String>> = routes
        .iter()
        .filter(|r| r["rollout"].is_object())
        .map(|r| {
            let ro = &r["rollout"];
            vec![
                text(&r["name"]),
                if ro["hotfix"] == true {
                    format!("{} (hotfix)", text(&ro["state"]))
                } else {
                    text(&ro["state"])
                },
                step_text(ro),
                weight_text(ro),
                detail_text(ro),
            ]
        })
        .collect();
    if !rollouts.is_empty() {
        out.push_str("\nROLLOUTS\n");
        out.push_str(&table(
            &["ROUTE", "STATE", "STEP", "WEIGHT", "DETAIL"],
            &rollouts,
        ));
    }

    let mut rows = Vec::new();
    if let Some(pools) = v["pools"].as_object() {
        for (pool, p) in pools {
            let backends = p["backends"].as_array().unwrap_or(&empty);
            if backends.is_empty() {
                rows.push(vec![
                    pool.clone(),
                    "(no backends)".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            for b in backends {
                let draining = match (b["draining"].as_bool(), b["removed"].as_bool()) {
                    (_, Some(true)) => "yes (removed)",
                    (Some(true), _) => "yes",
                    _ => "no",
                };
                rows.push(vec![
                    pool.clone(),
                    text(&b["addr"]),
                    text(&b["weight"]),
                    text(&b["health"]),
                    text(&b["breaker"]).replace('_', "-"),
                    text(&b["in_flight"]),
                    draining.into(),
                ]);
            }
        }
    }
    out.push_str("\nBACKENDS\n");
    if rows.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table(
            &[
                "POOL",
                "BACKEND",
                "WEIGHT",
                "HEALTH",
                "BREAKER",
                "IN-FLIGHT",
                "DRAINING",
            ],
            &rows,
        ));
    }
    out
}

/// `veer split` and `veer swap`: the route's split as the API answered it.
pub fn render_split(route: &str, v: &Value) -> String {
    let split = if v["split"].is_object() {
        &v["split"]
    } else {
        v
    };
    match split.as_object() {
        Some(m) if !m.is_empty() && m.values().all(Value::is_number) => {
            format!("{route}: {}\n", split_text(split))
        }
        _ => format!("{route}: split changed\n"),
    }
}

/// `veer reload`: what the reload changed.
pub fn render_reload(v: &Value) -> String {
    if v["changed"] == Value::Bool(false) {
        return match v["version"].as_u64() {
            Some(n) => format!("reloaded: no changes (config v{n} stays live)\n"),
            None => "reloaded: no changes\n".to_string(),
        };
    }
    let mut out = match v["version"].as_u64() {
        Some(n) => format!("reloaded: config v{n}\n"),
        None => "reloaded\n".to_string(),
    };
    let mut changed = false;
    let mut list = |label: &str, key: &str, out: &mut String| {
        let items: Vec<String> = v[key]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        if !items.is_empty() {
            changed = true;
            out.push_str(&format!("  {label}: {}\n", items.join(", ")));
        }
    };
    list("routes added", "routes_added", &mut out);
    list("routes removed", "routes_removed", &mut out);
    list("backends added", "added", &mut out);
    list("backends removed (draining)", "removed", &mut out);
    list("listeners added", "listeners_added", &mut out);
    list("listeners removed", "listeners_removed", &mut out);
    if let Some(w) = v["weights_changed"].as_object() {
        for (route, split) in w {
            changed = true;
            out.push_str(&format!("  split of {route}: {}\n", split_text(split)));
        }
    }
    if !changed {
        out.push_str("  no changes\n");
    }
    out
}

/// `veer rollout ROUTE ACTION`: the rollout's state after the action.
pub fn render_rollout_answer(route: &str, action: &str, v: &Value) -> String {
    let ro = if v["rollout"].is_object() {
        &v["rollout"]
    } else {
        v
    };
    if !ro["state"].is_string() {
        return format!("{route}: rollout {action}: ok\n");
    }
    let mut line = format!("{route}: rollout {}", text(&ro["state"]));
    let step = step_text(ro);
    if step != "-" {
        line.push_str(&format!(" at step {step}"));
    }
    let weight = weight_text(ro);
    if weight != "-" {
        line.push_str(&format!(" ({weight})"));
    }
    let detail = detail_text(ro);
    if detail != "-" {
        line.push_str(&format!("; {detail}"));
    }
    line.push('\n');
    line
}

/// A JSON scalar as plain text (strings without quotes, null as `-`).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `blue=90 (90%)  green=10 (10%)`.
fn split_text(split: &Value) -> String {
    let Some(m) = split.as_object() else {
        return "-".into();
    };
    let total: u64 = m.values().filter_map(Value::as_u64).sum();
    m.iter()
        .map(|(pool, w)| {
            let w = w.as_u64().unwrap_or(0);
            format!("{pool}={w} ({})", percent(w, total))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn percent(w: u64, total: u64) -> String {
    if total == 0 {
        return "0%".into();
    }
    let tenths = (w * 1000 + total / 2) / total;
    if tenths % 10 == 0 {
        format!("{}%", tenths / 10)
    } else {
        format!("{}.{}%", tenths / 10, tenths % 10)
    }
}

/// `1 of 0-3` when the rollout lists its steps, else the step as given: the API's `step`
/// (an index into `steps`, from 0), the one numbering of steps everywhere.
fn step_text(ro: &Value) -> String {
    let Some(step) = ro["step"].as_u64() else {
        return "-".into();
    };
    match ro["steps"].as_array() {
        Some(steps) if !steps.is_empty() => {
            format!("{step} of 0-{}", steps.len() - 1)
        }
        _ => step.to_string(),
    }
}

/// `green 25%`: the rolled-out pool and its share of the route's traffic.
fn weight_text(ro: &Value) -> String {
    match (ro["to"].as_str(), &ro["weight"]) {
        (_, Value::Null) => "-".into(),
        (Some(to), w) => format!("{to} {}%", text(w)),
        (None, w) => format!("{}%", text(w)),
    }
}

/// Why the rollout is where it is: the step's figures against the gate, the verdict, time
/// spent in the step or left for an approval, and the reason the controller gives.
fn detail_text(ro: &Value) -> String {
    let g = &ro["gate"];
    let mut parts = Vec::new();
    if let Some(n) = g["requests"].as_u64() {
        match g["min_requests"].as_u64() {
            Some(min) => parts.push(format!("requests {n}/{min}")),
            None => parts.push(format!("requests {n}")),
        }
    }
    if let Some(r) = g["error_rate"].as_f64() {
        match g["max_error_rate"].as_f64() {
            Some(max) => parts.push(format!("errors {} (max {})", rate(r), rate(max))),
            None => parts.push(format!("errors {}", rate(r))),
        }
    }
    if let Some(p) = g["p99_ms"].as_f64() {
        match g["max_p99_ms"].as_f64() {
            Some(max) => parts.push(format!("p99 {}ms (max {}ms)", num(p), num(max))),
            None => parts.push(format!("p99 {}ms", num(p))),
        }
    }
    if let Some(v) = g["verdict"]
        .as_str()
        .filter(|v| !v.is_empty() && *v != "none")
    {
        parts.push(format!("verdict {v}"));
    }
    if let (Some(e), Some(i)) = (
        ro["step_elapsed_ms"].as_f64(),
        ro["step_interval_ms"].as_f64(),
    ) {
        parts.push(format!("{} of {} in step", secs(e), secs(i)));
    }
    if let Some(left) = ro["approval_remaining_ms"].as_f64() {
        parts.push(format!("approval due within {}", secs(left)));
    }
    if parts.is_empty() {
        // A rollout object of another shape: show its gate's plain figures.
        if let Some(gate) = g.as_object() {
            let figures: Vec<String> = gate
                .iter()
                .filter(|(k, v)| !v.is_object() && !v.is_array() && !v.is_null() && *k != "reason")
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            if !figures.is_empty() {
                parts.push(figures.join(" "));
            }
        }
    }
    for reason in [&g["reason"], &ro["reason"], &ro["message"]] {
        if let Some(s) = reason.as_str().filter(|s| !s.is_empty()) {
            parts.push(s.to_string());
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// `1.25%` from a rate of 0.0125.
fn rate(r: f64) -> String {
    format!("{}%", num(r * 100.0))
}

/// A number with at most two decimals and no trailing zeros.
fn num(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// `42s`, `3m 5s` from milliseconds.
fn secs(ms: f64) -> String {
    ago((ms / 1000.0).round().max(0.0) as u64)
}

/// Left-aligned columns, two spaces apart, indented by two.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            l.push(' ');
            l.push_str(c);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 1));
            }
        }
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `2025-01-31 12:00:00 UTC` from Unix seconds.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `42s`, `3m 5s`, `2h 10m`, `3d 4h`.
fn ago(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_renders_as_tables() {
        let v = serde_json::json!({
            "config": {"version": 3, "loaded_at": 0},
            "routes": [{"name": "web", "hosts": ["*"], "path_prefix": "/", "split": {"blue": 90, "green": 10},
                        "rollout": {"state": "progressing", "step": 1, "steps": [5, 25, 50, 100], "to": "green", "weight": 25,
                                    "step_elapsed_ms": 12000.0, "step_interval_ms": 60000.0,
                        "gate": {"requests": 120, "min_requests": 100, "error_rate": 0.0125, "max_error_rate": 0.01,
                                 "p99_ms": 12.5, "max_p99_ms": 500.0, "verdict": "pending", "reason": null}}}],
            "pools": {"blue": {"backends": [{"addr": "127.0.0.1:9001", "weight": 1, "health": "healthy",
                        "breaker": "half_open", "draining": true, "in_flight": 3}]}}
        });
        let s = render_status(&v);
        assert!(s.starts_with("config v3\n"), "{s}");
        assert!(
            s.contains("  web    * /    blue=90 (90%)  green=10 (10%)"),
            "{s}"
        );
        assert!(s.contains("progressing  1 of 0-3  green 25%"), "{s}");
        assert!(
            s.contains("requests 120/100, errors 1.25% (max 1%), p99 12.5ms (max 500ms), verdict pending, 12s of 1m 0s in step"),
            "{s}"
        );
        assert!(
            s.contains("  blue  127.0.0.1:9001  1       healthy  half-open  3          yes"),
            "{s}"
        );
        assert!(!s.contains("memory only"), "{s}");
        let mut v = v;
        v["persisted"] = Value::Bool(false);
        let s = render_status(&v);
        assert!(
            s.contains("\nwarning: some changes live in memory only"),
            "{s}"
        );
    }

    #[test]
    fn small_formats() {
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(0, 0), "0%");
        assert_eq!(percent(50, 100), "50%");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34:56 UTC");
        assert_eq!(ago(125), "2m 5s");
        let ro = serde_json::json!({"state": "paused", "step": 0, "steps": [5, 100], "to": "green", "weight": 5,
                                    "gate": {"reason": "paused by operator"}});
        assert_eq!(
            render_rollout_answer("web", "pause", &ro),
            "web: rollout paused at step 0 of 0-1 (green 5%); paused by operator\n"
        );
        assert_eq!(
            render_rollout_answer("web", "pause", &Value::Null),
            "web: rollout pause: ok\n"
        );
        assert_eq!(
            render_split("web", &serde_json::json!({"blue": 1, "green": 1})),
            "web: blue=1 (50%)  green=1 (50%)\n"
        );
        assert_eq!(
            render_reload(&serde_json::json!({"version": 2})),
            "reloaded: config v2\n  no changes\n"
        );
        assert_eq!(
            render_reload(&serde_json::json!({"changed": false, "version": 2})),
            "reloaded: no changes (config v2 stays live)\n"
        );
        let v = serde_json::json!({
            "changed": true, "version": 3, "routes_added": ["api"], "routes_removed": [],
            "weights_changed": {"web": {"blue": 60, "green": 40}},
            "added": ["green/127.0.0.1:9101"], "removed": ["blue/127.0.0.1:9002"],
            "listeners_added": ["http://127.0.0.1:8081"], "listeners_removed": []
        });
        assert_eq!(
            render_reload(&v),
            "reloaded: config v3\n  routes added: api\n  backends added: green/127.0.0.1:9101\n  \
             backends removed (draining): blue/127.0.0.1:9002\n  listeners added: http://127.0.0.1:8081\n  \
             split of web: blue=60 (60%)  green=40 (40%)\n"
        );
    }
}
