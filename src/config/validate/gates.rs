//! Validating the SPEC §10 parts of `[routes.rollout]`: external gates, the hotfix path, the
//! progress veer writes beside `state`/`step`, and (over the whole config) rollout order.

use super::*;

/// The `[[routes.rollout.gates]]` of route `route`.
pub(super) fn build_gates(
    cx: &mut Ctx<'_>,
    route: &str,
    raw: Option<Spanned<Vec<Spanned<RawGate>>>>,
) -> Vec<GateConfig> {
    let Some(raw) = raw else { return Vec::new() };
    let mut out: Vec<GateConfig> = Vec::new();
    for g in raw.into_inner() {
        let gspan = g.span();
        let g = g.into_inner();
        let name = g.name.get_ref().clone();
        let field = |f: &str| format!("routes.{route}.rollout.gates.{name}.{f}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            cx.err(
                g.name.span(),
                format!(
                    "{}: invalid gate name {name:?}; use letters, digits, '-', '_' and '.'",
                    field("name")
                ),
            );
        }
        if out.iter().any(|o| o.name == name) {
            cx.err(
                g.name.span(),
                format!("routes.{route}.rollout.gates: duplicate gate name {name:?}"),
            );
        }
        let when = match &g.when {
            None => GateWhen::Step,
            Some(w) => GateWhen::parse(w.get_ref()).unwrap_or_else(|| {
                cx.err(
                    w.span(),
                    format!(
                        "{}: {:?} is not one of \"before\", \"step\", \"after\"",
                        field("when"),
                        w.get_ref()
                    ),
                );
                GateWhen::Step
            }),
        };
        let check = match (&g.prometheus, &g.webhook) {
            (Some(p), None) => {
                check_url(cx, p, &field("prometheus"));
                let query = match &g.query {
                    Some(q) if !q.get_ref().trim().is_empty() => q.get_ref().clone(),
                    Some(q) => {
                        cx.err(q.span(), format!("{}: the query is empty", field("query")));
                        String::new()
                    }
                    None => {
                        cx.err(
                            p.span(),
                            format!("{}: a prometheus gate needs a `query`", field("query")),
                        );
                        String::new()
                    }
                };
                let min = g.min.as_ref().map(|v| *v.get_ref());
                let max = g.max.as_ref().map(|v| *v.get_ref());
                if min.is_none() && max.is_none() {
                    cx.err(
                        p.span(),
                        format!(
                            "routes.{route}.rollout.gates.{name}: a prometheus gate needs `min` and/or `max`"
                        ),
                    );
                }
                for v in [&g.min, &g.max].into_iter().flatten() {
                    if !v.get_ref().is_finite() {
                        cx.err(v.span(), format!("routes.{route}.rollout.gates.{name}: bounds must be finite numbers"));
                    }
                }
                if let (Some(lo), Some(hi), Some(s)) = (min, max, &g.min) {
                    if lo > hi {
                        cx.err(
                            s.span(),
                            format!("{}: {lo} is above max {hi}", field("min")),
                        );
                    }
                }
                GateCheck::Prometheus {
                    url: p.get_ref().trim_end_matches('/').to_string(),
                    query,
                    min,
                    max,
                }
            }
            (None, Some(w)) => {
                check_url(cx, w, &field("webhook"));
                for (k, v) in [
                    ("query", g.query.as_ref().map(|q| q.span())),
                    ("min", g.min.as_ref().map(|q| q.span())),
                    ("max", g.max.as_ref().map(|q| q.span())),
                ] {
                    if let Some(sp) = v {
                        cx.err(
                            sp,
                            format!("{}: only a prometheus gate has `{k}`", field(k)),
                        );
                    }
                }
                GateCheck::Webhook {
                    url: w.get_ref().clone(),
                }
            }
            (Some(_), Some(w)) => {
                cx.err(
                    w.span(),
                    format!("routes.{route}.rollout.gates.{name}: a gate is either `prometheus` or `webhook`, not both"),
                );
                GateCheck::Webhook {
                    url: w.get_ref().clone(),
                }
            }
            (None, None) => {
                cx.err(
                    gspan.clone(),
                    format!("routes.{route}.rollout.gates.{name}: needs `prometheus = URL` (with `query`) or `webhook = URL`"),
                );
                GateCheck::Webhook { url: String::new() }
            }
        };
        let interval = cx.duration(&g.interval, &field("interval"), Duration::from_secs(10));
        if interval.is_zero() {
            if let Some(s) = &g.interval {
                cx.err(
                    s.span(),
                    format!("{}: must be above zero", field("interval")),
                );
            }
        }
        let timeout = cx.duration(&g.timeout, &field("timeout"), Duration::from_secs(300));
        let steady_for = cx.duration(&g.steady_for, &field("steady_for"), Duration::ZERO);
        if steady_for >= timeout {
            if let Some(s) = g.steady_for.as_ref().or(g.timeout.as_ref()) {
                cx.err(
                    s.span(),
                    format!(
                        "routes.{route}.rollout.gates.{name}: steady_for ({}) must be shorter than timeout ({}), or the gate can never pass",
                        format_duration(steady_for),
                        format_duration(timeout)
                    ),
                );
            }
        }
        let mut headers = Vec::new();
        if let Some(h) = g.headers {
            for (k, v) in h.into_inner() {
                let key = k.get_ref();
                if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
                    cx.err(
                        k.span(),
                        format!("{}: {key:?} is not a header name", field("headers")),
                    );
                    continue;
                }
                let value = match v.get_ref().strip_prefix("env:") {
                    Some(var) if !var.is_empty() => HeaderValue::Env(var.to_string()),
                    Some(_) => {
                        cx.err(
                            v.span(),
                            format!("{}: \"env:\" needs a variable name", field("headers")),
                        );
                        continue;
                    }
                    None => {
                        if http::HeaderValue::from_str(v.get_ref()).is_err() {
                            cx.err(
                                v.span(),
                                format!(
                                    "{}: the value of {key:?} is not a valid header value",
                                    field("headers")
                                ),
                            );
                            continue;
                        }
                        HeaderValue::Literal(v.get_ref().clone())
                    }
                };
                headers.push((key.clone(), value));
            }
        }
        out.push(GateConfig {
            name,
            when,
            check,
            interval,
            timeout,
            steady_for,
            headers,
            hotfix: g.hotfix.unwrap_or(false),
        });
    }
    out
}

fn check_url(cx: &mut Ctx<'_>, s: &Spanned<String>, field: &str) {
    let ok = s.get_ref().parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http") | Some("https")) && u.authority().is_some()
    });
    if !ok {
        cx.err(
            s.span(),
            format!(
                "{field}: {:?} is not an http:// or https:// URL",
                s.get_ref()
            ),
        );
    }
}

/// Steps as percentages 0..=100, increasing, at least one.
pub(super) fn build_steps(
    cx: &mut Ctx<'_>,
    raw: Spanned<Vec<Spanned<i64>>>,
    field: &str,
) -> Vec<u32> {
    let span = raw.span();
    let steps: Vec<u32> = raw
        .into_inner()
        .into_iter()
        .map(|s| {
            if !(0..=100).contains(s.get_ref()) {
                cx.err(
                    s.span(),
                    format!("{field}: {} is not a percentage 0..=100", s.get_ref()),
                );
            }
            (*s.get_ref()).clamp(0, 100) as u32
        })
        .collect();
    if steps.is_empty() {
        cx.err(span, format!("{field}: needs at least one step"));
    } else if steps.windows(2).any(|w| w[0] >= w[1]) {
        cx.err(span, format!("{field}: steps must increase"));
    }
    steps
}

/// `[routes.rollout.hotfix]`.
pub(super) fn build_hotfix(
    cx: &mut Ctx<'_>,
    route: &str,
    raw: Option<Spanned<RawHotfix>>,
    normal_interval: Duration,
    normal_min: u64,
) -> Option<HotfixConfig> {
    let h = raw?.into_inner();
    let field = |f: &str| format!("routes.{route}.rollout.hotfix.{f}");
    Some(HotfixConfig {
        steps: build_steps(cx, h.steps, &field("steps")),
        step_interval: cx.duration(&h.step_interval, &field("step_interval"), normal_interval),
        min_requests: cx.int(
            &h.min_requests,
            &field("min_requests"),
            0,
            i64::MAX,
            normal_min,
        ),
    })
}

/// The progress veer wrote beside `state`/`step`.
pub(super) fn progress_meta(
    cx: &mut Ctx<'_>,
    route: &str,
    started: &Option<Spanned<i64>>,
    deadline: &Option<Spanned<i64>>,
    fingerprint: Option<Spanned<String>>,
    mode: &Option<Spanned<String>>,
) -> ProgressMeta {
    let field = |f: &str| format!("routes.{route}.rollout.{f}");
    let ms = |cx: &mut Ctx<'_>, v: &Option<Spanned<i64>>, f: &str| {
        v.as_ref().and_then(|v| match u64::try_from(*v.get_ref()) {
            Ok(x) => Some(x),
            Err(_) => {
                cx.err(
                    v.span(),
                    format!("{}: a time in unix milliseconds is not negative", field(f)),
                );
                None
            }
        })
    };
    let hotfix = match mode {
        None => false,
        Some(m) if m.get_ref() == "hotfix" => true,
        Some(m) if m.get_ref() == "normal" => false,
        Some(m) => {
            cx.err(
                m.span(),
                format!(
                    "{}: {:?} is not \"normal\" or \"hotfix\"",
                    field("mode"),
                    m.get_ref()
                ),
            );
            false
        }
    };
    ProgressMeta {
        step_started_ms: ms(cx, started, "step_started_ms"),
        approval_deadline_ms: ms(cx, deadline, "approval_deadline_ms"),
        fingerprint: fingerprint.map(|f| f.into_inner()),
        hotfix,
    }
}

/// A route's `after` entries with their places.
pub(super) type Afters = Vec<(String, Range<usize>)>;

/// Rollout order over the whole config: every route named in an `after` exists and has a
/// rollout, and the `after` edges have no cycle. `afters` holds each route's entries as
/// written, with their places.
pub(super) fn check_order(
    cx: &mut Ctx<'_>,
    routes: &[Arc<RouteConfig>],
    afters: &[(String, Afters)],
) {
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut place: HashMap<(&str, &str), Range<usize>> = HashMap::new();
    for (route, list) in afters {
        for (dep, span) in list {
            let target = routes.iter().find(|r| r.name == *dep);
            match target {
                None => {
                    let known: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                    cx.err(
                        span.clone(),
                        format!(
                            "routes.{route}.rollout.after: no route named {dep:?} (routes: {})",
                            known.join(", ")
                        ),
                    );
                }
                Some(t) if t.rollout.is_none() => cx.err(
                    span.clone(),
                    format!("routes.{route}.rollout.after: route {dep:?} has no [routes.rollout] to wait for"),
                ),
                Some(_) => {
                    edges.entry(route.as_str()).or_default().push(dep.as_str());
                    place.entry((route.as_str(), dep.as_str())).or_insert(span.clone());
                }
            }
        }
    }
    if let Some(cycle) = crate::config::rollout::find_cycle(&edges) {
        let (a, b) = (cycle[0], cycle[1]);
        let span = place.get(&(a, b)).cloned().unwrap_or(0..0);
        cx.err(
            span,
            format!(
                "routes.{a}.rollout.after: rollout order has a cycle: {}",
                cycle.join(" waits for ")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        match validate(Path::new("t.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const POOLS: &str = "[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[pools.green]\nbackends = [\"127.0.0.1:9101\"]\n";

    fn route(name: &str, prefix: &str, rollout: &str) -> String {
        format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nsplit = {{ blue = 100, green = 0 }}\n[routes.rollout]\nto = \"green\"\nsteps = [10, 100]\n{rollout}")
    }

    #[test]
    fn gates_hotfix_and_baseline_are_read() {
        let text = format!(
            "{POOLS}{}",
            route(
                "web",
                "/",
                r#"max_error_rate_vs_baseline = 2.0
[routes.rollout.hotfix]
steps = [50, 100]
step_interval = "10s"
[[routes.rollout.gates]]
name = "errors"
prometheus = "http://127.0.0.1:9090/"
query = 'sum(rate(x[1m]))'
max = 0.5
interval = "5s"
timeout = "1m"
steady_for = "20s"
headers = { Authorization = "env:GATE_TOKEN", X-Team = "web" }
[[routes.rollout.gates]]
name = "smoke"
when = "before"
webhook = "http://ci.internal/gate"
hotfix = true
"#
            )
        );
        let c = validate(Path::new("t.toml"), &text).unwrap();
        let r = c.routes[0].rollout.as_ref().unwrap();
        assert_eq!(r.max_error_rate_vs_baseline, Some(2.0));
        let h = r.hotfix.as_ref().unwrap();
        assert_eq!(h.steps, vec![50, 100]);
        assert_eq!(h.step_interval, Duration::from_secs(10));
        assert_eq!(h.min_requests, 100, "from the normal path");
        assert_eq!(r.gates.len(), 2);
        let g = &r.gates[0];
        assert_eq!(
            g.check,
            GateCheck::Prometheus {
                url: "http://127.0.0.1:9090".into(),
                query: "sum(rate(x[1m]))".into(),
                min: None,
                max: Some(0.5)
            }
        );
        assert_eq!(
            (g.when, g.interval, g.timeout, g.steady_for),
            (
                GateWhen::Step,
                Duration::from_secs(5),
                Duration::from_secs(60),
                Duration::from_secs(20)
            )
        );
        assert!(g.headers.contains(&(
            "Authorization".into(),
            HeaderValue::Env("GATE_TOKEN".into())
        )));
        assert!(g
            .headers
            .contains(&("X-Team".into(), HeaderValue::Literal("web".into()))));
        assert!(!g.hotfix);
        assert_eq!(r.gates[1].when, GateWhen::Before);
        assert!(r.gates[1].hotfix);
    }

    #[test]
    fn bad_gates_are_named_where_written() {
        let text = format!(
            "{POOLS}{}",
            route(
                "web",
                "/",
                r#"[[routes.rollout.gates]]
name = "a"
when = "later"
webhook = "ftp://x"
[[routes.rollout.gates]]
name = "a"
prometheus = "http://p:9090"
[[routes.rollout.gates]]
name = "c"
[[routes.rollout.gates]]
name = "d"
webhook = "http://x/"
steady_for = "5m"
query = "up"
"#
            )
        );
        let e = errs(&text);
        let has = |line: usize, what: &str| {
            e.iter()
                .any(|m| m.starts_with(&format!("t.toml:{line}:")) && m.contains(what))
        };
        assert!(has(14, "\"later\" is not one of"), "{e:#?}");
        assert!(has(15, "not an http:// or https:// URL"), "{e:#?}");
        assert!(has(17, "duplicate gate name"), "{e:#?}");
        assert!(has(18, "needs a `query`"), "{e:#?}");
        assert!(has(18, "needs `min` and/or `max`"), "{e:#?}");
        assert!(
            e.iter()
                .any(|m| m.contains("gates.c: needs `prometheus = URL`")),
            "{e:#?}"
        );
        assert!(has(24, "must be shorter than timeout"), "{e:#?}");
        assert!(has(25, "only a prometheus gate has `query`"), "{e:#?}");
    }

    #[test]
    fn order_names_unknown_routes_and_cycles_with_their_place() {
        let text = format!(
            "{POOLS}{}{}{}",
            route("api", "/api", "after = [\"web\"]\n"),
            route("web", "/", "after = [\"api\", \"nope\"]\n"),
            "[[routes]]\nname = \"plain\"\npath_prefix = \"/p\"\nsplit = { blue = 1 }\n[[routes]]\nname = \"x\"\npath_prefix = \"/x\"\nsplit = { blue = 1, green = 0 }\n[routes.rollout]\nto = \"green\"\nsteps = [100]\nafter = [\"plain\"]\n"
        );
        let e = errs(&text);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(
            e.iter().any(|m| m.starts_with("t.toml:12:10: routes.api.rollout.after: rollout order has a cycle: api waits for web waits for api")),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|m| m
                .starts_with("t.toml:20:17: routes.web.rollout.after: no route named \"nope\"")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("route \"plain\" has no [routes.rollout]")),
            "{e:#?}"
        );
        let ok = format!(
            "{POOLS}{}{}",
            route("api", "/api", ""),
            route("web", "/", "after = [\"api\"]\n")
        );
        assert_eq!(errs(&ok), Vec::<String>::new());
    }
}
