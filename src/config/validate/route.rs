//! Validating `[[routes]]`: matching, split, sticky, overrides, fallback, retries and the route's rollout.

use super::*;

pub(super) fn build_route(
    cx: &mut Ctx<'_>,
    span: Range<usize>,
    raw: RawRoute,
    pools: &BTreeMap<String, Arc<PoolConfig>>,
) -> Option<RouteConfig> {
    let name = raw.name.get_ref().clone();
    let field = |f: &str| format!("routes.{name}.{f}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        cx.err(
            raw.name.span(),
            format!("routes: invalid route name {name:?}; use letters, digits, '-', '_' and '.'"),
        );
    }
    let hosts = match raw.hosts {
        None => vec![HostPattern::Any],
        Some(h) => {
            let hspan = h.span();
            let list: Vec<HostPattern> = h
                .into_inner()
                .into_iter()
                .filter_map(|h| {
                    let s = h.get_ref().trim().to_ascii_lowercase();
                    if s == "*" {
                        Some(HostPattern::Any)
                    } else if let Some(rest) = s.strip_prefix("*.") {
                        if rest.is_empty() || rest.contains('*') {
                            cx.err(h.span(), format!("{}: invalid host pattern {:?}", field("hosts"), h.get_ref()));
                            None
                        } else {
                            Some(HostPattern::Suffix(format!(".{rest}")))
                        }
                    } else if s.is_empty() || s.contains('*') || s.contains('/') {
                        cx.err(h.span(), format!("{}: invalid host pattern {:?}; use an exact name, \"*.example.com\" or \"*\"", field("hosts"), h.get_ref()));
                        None
                    } else {
                        Some(HostPattern::Exact(s))
                    }
                })
                .collect();
            if list.is_empty() {
                cx.err(
                    hspan,
                    format!(
                        "{}: needs at least one host (\"*\" matches all)",
                        field("hosts")
                    ),
                );
            }
            list
        }
    };
    let path_prefix = match raw.path_prefix {
        None => "/".to_string(),
        Some(p) if p.get_ref().starts_with('/') => p.into_inner(),
        Some(p) => {
            cx.err(
                p.span(),
                format!(
                    "{}: {:?} must start with '/'",
                    field("path_prefix"),
                    p.get_ref()
                ),
            );
            "/".to_string()
        }
    };
    let table_span = raw.split.span();
    let split_span = raw
        .split
        .get_ref()
        .values()
        .next()
        .map_or(table_span.clone(), |w| w.span());
    let mut split = Vec::new();
    for (pool, w) in raw.split.into_inner() {
        let pool_span = pool.span();
        let pool = pool.into_inner();
        if !pools.contains_key(&pool) {
            let known: Vec<&str> = pools.keys().map(|s| s.as_str()).collect();
            cx.err(
                pool_span,
                format!(
                    "{}: pool {:?} does not exist (pools: {})",
                    field("split"),
                    pool,
                    known.join(", ")
                ),
            );
        }
        if !(0..=1_000_000).contains(w.get_ref()) {
            cx.err(
                w.span(),
                format!(
                    "{}: weight {} of {:?} must be a non-negative integer up to 1000000",
                    field("split"),
                    w.get_ref(),
                    pool
                ),
            );
        }
        split.push((pool, (*w.get_ref()).clamp(0, 1_000_000) as u32));
    }
    if split.is_empty() {
        cx.err(table_span, format!("{}: names no pool", field("split")));
    } else if split.iter().all(|(_, w)| *w == 0) {
        cx.err(
            split_span,
            format!(
                "{}: all weights are zero; at least one pool needs a positive weight",
                field("split")
            ),
        );
    }
    let sticky = match raw.sticky {
        None => Sticky::None,
        Some(s) => {
            let sp = s.span();
            let s = s.into_inner();
            if s.cookie.is_none() && (s.max_age.is_some() || s.secure.is_some()) {
                cx.err(
                    sp.clone(),
                    format!(
                        "{}: max_age and secure are attributes of a sticky cookie; they need cookie = \"NAME\"",
                        field("sticky")
                    ),
                );
            }
            let n = s.cookie.is_some() as u8
                + s.header.is_some() as u8
                + s.client_ip.unwrap_or(false) as u8;
            if n > 1 {
                cx.err(
                    sp,
                    format!(
                        "{}: choose one of cookie, header or client_ip",
                        field("sticky")
                    ),
                );
            }
            if let Some(c) = s.cookie {
                if !valid_token(c.get_ref()) {
                    cx.err(
                        c.span(),
                        format!(
                            "{}: invalid cookie name {:?}",
                            field("sticky.cookie"),
                            c.get_ref()
                        ),
                    );
                }
                let max_age = s
                    .max_age
                    .as_ref()
                    .and_then(|m| match parse_duration(m.get_ref()) {
                        Ok(d) if d.as_secs() >= 1 => Some(d),
                        Ok(_) => {
                            cx.err(
                                m.span(),
                                format!(
                                    "{}: must be at least 1s (leave it out for a session cookie)",
                                    field("sticky.max_age")
                                ),
                            );
                            None
                        }
                        Err(e) => {
                            cx.err(m.span(), format!("{}: {e}", field("sticky.max_age")));
                            None
                        }
                    });
                Sticky::Cookie(StickyCookie {
                    name: c.into_inner(),
                    max_age,
                    secure: s.secure,
                })
            } else if let Some(h) = s.header {
                if http::HeaderName::from_bytes(h.get_ref().as_bytes()).is_err() {
                    cx.err(
                        h.span(),
                        format!(
                            "{}: invalid header name {:?}",
                            field("sticky.header"),
                            h.get_ref()
                        ),
                    );
                }
                Sticky::Header(h.into_inner().to_ascii_lowercase())
            } else if s.client_ip.unwrap_or(false) {
                Sticky::ClientIp
            } else {
                Sticky::None
            }
        }
    };
    let override_ = raw.override_.map(|o| {
        let o = o.into_inner();
        if let Some(h) = &o.header {
            if http::HeaderName::from_bytes(h.get_ref().as_bytes()).is_err() {
                cx.err(
                    h.span(),
                    format!(
                        "{}: invalid header name {:?}",
                        field("override.header"),
                        h.get_ref()
                    ),
                );
            }
        }
        if let Some(c) = &o.cookie {
            if !valid_token(c.get_ref()) {
                cx.err(
                    c.span(),
                    format!(
                        "{}: invalid cookie name {:?}",
                        field("override.cookie"),
                        c.get_ref()
                    ),
                );
            }
        }
        let allow_from = match o.allow_from {
            None => Vec::new(),
            Some(list) if list.get_ref().is_empty() => {
                cx.err(
                    list.span(),
                    format!(
                        "{}: lists no address block (leave it out to let any peer override)",
                        field("override.allow_from")
                    ),
                );
                Vec::new()
            }
            Some(list) => list
                .into_inner()
                .into_iter()
                .filter_map(|c| {
                    crate::config::pool_override::Cidr::parse(c.get_ref().trim())
                        .map_err(|e| {
                            cx.err(c.span(), format!("{}: {e}", field("override.allow_from")))
                        })
                        .ok()
                })
                .collect(),
        };
        // The secret is read now, so a missing one fails the load (not the first request), and
        // every pool's token is computed once.
        let (secret_env, tokens) = match o.secret_env {
            None => (None, None),
            Some(env) if env.get_ref().is_empty() => {
                cx.err(
                    env.span(),
                    format!("{}: must not be empty", field("override.secret_env")),
                );
                (None, None)
            }
            Some(env) => match crate::config::pool_override::read_secret(env.get_ref()) {
                Ok(secret) => {
                    let pools = pools.keys().map(String::as_str);
                    let tokens =
                        crate::config::pool_override::Tokens::new(secret.as_bytes(), pools);
                    (Some(env.into_inner()), Some(tokens))
                }
                Err(e) => {
                    cx.err(env.span(), format!("{}: {e}", field("override.secret_env")));
                    (None, None)
                }
            },
        };
        Override {
            header: o.header.map(|h| h.into_inner().to_ascii_lowercase()),
            cookie: o.cookie.map(|c| c.into_inner()),
            allow_from,
            secret_env,
            tokens,
        }
    });
    let fallback = match raw.fallback {
        None => Fallback::All,
        Some(f) => match f.get_ref() {
            RawFallback::Bool(true) => Fallback::All,
            RawFallback::Bool(false) => Fallback::Off,
            RawFallback::Word(w) if w == "weighted" => Fallback::Weighted,
            RawFallback::Word(w) => {
                cx.err(
                    f.span(),
                    format!(
                        "{}: expected true, false or \"weighted\", found {w:?}",
                        field("fallback")
                    ),
                );
                Fallback::All
            }
        },
    };
    let retry = match raw.retry {
        None => RetryConfig::default(),
        Some(r) => {
            let r = r.into_inner();
            let d = RetryConfig::default();
            RetryConfig {
                attempts: cx.int(&r.attempts, &field("retry.attempts"), 1, 10, 2) as u32,
                backoff: cx.duration(&r.backoff, &field("retry.backoff"), d.backoff),
                idempotent_only: r.idempotent_only.unwrap_or(true),
                budget_percent: cx.int(
                    &r.budget_percent,
                    &field("retry.budget_percent"),
                    0,
                    100,
                    20,
                ) as u32,
            }
        }
    };
    let mirror = raw
        .mirror
        .map(|m| super::mirror::build_mirror(cx, &name, m, &split, pools));
    let rollout = raw.rollout.map(|r| {
        let r = r.into_inner();
        if !split.iter().any(|(p, _)| p == r.to.get_ref()) {
            cx.err(
                r.to.span(),
                format!(
                    "{}: pool {:?} is not in the route's split",
                    field("rollout.to"),
                    r.to.get_ref()
                ),
            );
        }
        if split.len() != 2 {
            cx.err(
                r.to.span(),
                format!(
                    "{}: a rollout needs a split of exactly two pools (the baseline and `to`)",
                    field("rollout")
                ),
            );
        }
        let (steps, mirror_step) = mirror_steps(cx, r.steps, &field("rollout.steps"));
        let steps = super::gates::build_steps(cx, steps, &field("rollout.steps"));
        let max_diff_rate = match &r.max_diff_rate {
            None => 0.01,
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                cx.err(
                    v.span(),
                    format!(
                        "{}: {} is not a rate between 0 and 1",
                        field("rollout.max_diff_rate"),
                        v.get_ref()
                    ),
                );
                0.01
            }
        };
        if let Some(at) = mirror_step.clone() {
            let fits = mirror
                .as_ref()
                .is_some_and(|m| m.to == *r.to.get_ref() && m.compare);
            if !fits {
                cx.err(
                    at,
                    format!(
                        "{}: a \"mirror\" step needs [routes.mirror] with to = {:?} and compare = true",
                        field("rollout.steps"),
                        r.to.get_ref()
                    ),
                );
            }
        }
        let max_error_rate = match r.max_error_rate {
            None => 0.01,
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                cx.err(
                    v.span(),
                    format!(
                        "{}: {} is not a rate between 0 and 1",
                        field("rollout.max_error_rate"),
                        v.get_ref()
                    ),
                );
                0.01
            }
        };
        let state = r.state.as_ref().and_then(|s| {
            let st = RolloutState::parse(s.get_ref());
            if st.is_none() {
                cx.err(
                    s.span(),
                    format!(
                        "{}: unknown state {:?}",
                        field("rollout.state"),
                        s.get_ref()
                    ),
                );
            }
            st
        });
        let step = match &r.step {
            None => None,
            // Written by veer. Editing `steps` to fewer entries may leave it past the end:
            // that is a changed definition, which starts anew, so clamp rather than refuse.
            Some(s) if *s.get_ref() >= 0 => {
                Some((*s.get_ref() as usize).min(steps.len().saturating_sub(1)))
            }
            Some(s) => {
                cx.err(
                    s.span(),
                    format!(
                        "{}: step index {} is negative",
                        field("rollout.step"),
                        s.get_ref()
                    ),
                );
                None
            }
        };
        let step_interval = cx.duration(
            &r.step_interval,
            &field("rollout.step_interval"),
            Duration::from_secs(60),
        );
        let min_requests = cx.int(
            &r.min_requests,
            &field("rollout.min_requests"),
            0,
            i64::MAX,
            100,
        );
        let max_error_rate_vs_baseline = r.max_error_rate_vs_baseline.as_ref().and_then(|v| {
            let m = *v.get_ref();
            if m.is_finite() && m >= 0.0 {
                Some(m)
            } else {
                cx.err(
                    v.span(),
                    format!(
                        "{}: {m} is not a non-negative multiple",
                        field("rollout.max_error_rate_vs_baseline")
                    ),
                );
                None
            }
        });
        let gates = super::gates::build_gates(cx, &name, r.gates);
        let hotfix = super::gates::build_hotfix(cx, &name, r.hotfix, step_interval, min_requests);
        let progress = super::gates::progress_meta(
            cx,
            &name,
            &r.step_started_ms,
            &r.approval_deadline_ms,
            r.fingerprint,
            &r.mode,
        );
        RolloutConfig {
            after: r
                .after
                .map(|a| a.into_inner().into_iter().map(|s| s.into_inner()).collect())
                .unwrap_or_default(),
            gates,
            max_error_rate_vs_baseline,
            hotfix,
            progress,
            to: r.to.into_inner(),
            steps,
            step_interval,
            min_requests,
            max_error_rate,
            max_p99: cx.duration(
                &r.max_p99,
                &field("rollout.max_p99"),
                Duration::from_millis(500),
            ),
            approval: r.approval.unwrap_or(false),
            approval_timeout: cx.duration(
                &r.approval_timeout,
                &field("rollout.approval_timeout"),
                Duration::from_secs(1800),
            ),
            notify_url: r
                .notify_url
                .map(|u| u.into_inner())
                .filter(|u| !u.is_empty()),
            state,
            step,
            mirror_step: mirror_step.is_some(),
            max_diff_rate,
        }
    });
    let _ = span;
    Some(RouteConfig {
        name,
        hosts,
        path_prefix,
        split,
        sticky,
        override_,
        fallback,
        retry,
        rollout: rollout.map(Box::new),
        mirror: mirror.map(Box::new),
    })
}

/// Rollout steps as written: percentages, the first of which may be `"mirror"` (SPEC §11),
/// held as 0 (no user moves). The span of the mirror step when there is one.
fn mirror_steps(
    cx: &mut Ctx<'_>,
    raw: Spanned<Vec<Spanned<RawStep>>>,
    field: &str,
) -> (Spanned<Vec<Spanned<i64>>>, Option<Range<usize>>) {
    let span = raw.span();
    let mut mirror = None;
    let mut out = Vec::new();
    for (i, s) in raw.into_inner().into_iter().enumerate() {
        let at = s.span();
        match s.into_inner() {
            RawStep::Percent(p) => out.push(Spanned::new(at, p)),
            RawStep::Word(w) if w == "mirror" && i == 0 => {
                mirror = Some(at.clone());
                out.push(Spanned::new(at, 0));
            }
            RawStep::Word(w) if w == "mirror" => cx.err(
                at,
                format!("{field}: \"mirror\" can only be the first step"),
            ),
            RawStep::Word(w) => cx.err(
                at,
                format!("{field}: {w:?} is not a percentage 0..=100 or \"mirror\""),
            ),
        }
    }
    (Spanned::new(span, out), mirror)
}
