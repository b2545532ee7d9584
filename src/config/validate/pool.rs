//! Validating `[pools.*]`: backends, TLS to them, health checks, breakers.

use super::*;

pub(super) fn build_pool(
    cx: &mut Ctx<'_>,
    name: &str,
    span: Range<usize>,
    raw: Spanned<RawPool>,
) -> Option<PoolConfig> {
    let field = |f: &str| format!("pools.{name}.{f}");
    let raw = raw.into_inner();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        cx.err(
            span.clone(),
            format!("pools: invalid pool name {name:?}; use letters, digits, '-' and '_'"),
        );
    }
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    let list_span = raw.backends.span();
    let listed = raw.backends.get_ref().len();
    for b in raw.backends.into_inner() {
        let bspan = b.span();
        let (addr, weight) = match b.into_inner() {
            RawBackend::Addr(a) => (a, 1),
            RawBackend::Table(t) => (t.addr, t.weight.unwrap_or(1)),
        };
        let Some(a) = BackendAddr::parse(&addr) else {
            cx.err(
                bspan.clone(),
                format!(
                    "{}: invalid address {addr:?}; expected IP:PORT, [IPv6]:PORT or NAME:PORT like \"127.0.0.1:8080\" or \"api.internal:8080\"",
                    field("backends")
                ),
            );
            continue;
        };
        if !(1..=10_000).contains(&weight) {
            cx.err(
                bspan.clone(),
                format!(
                    "{}: weight {weight} of {addr} is out of range 1..=10000",
                    field("backends")
                ),
            );
        }
        if !seen.insert(a.clone()) {
            cx.err(
                bspan,
                format!("{}: backend {addr} is listed twice", field("backends")),
            );
        }
        backends.push(BackendConfig {
            addr: a,
            weight: weight.clamp(1, 10_000) as u32,
        });
    }
    if listed == 0 {
        cx.err(
            list_span,
            format!("{}: a pool needs at least one backend", field("backends")),
        );
    }
    let lb = match raw.lb.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("round_robin", _)) => LbKind::RoundRobin,
        Some(("least_request", _)) => LbKind::LeastRequest,
        Some((other, sp)) => {
            cx.err(
                sp,
                format!(
                    "{}: unknown balancer {other:?}; expected \"round_robin\" or \"least_request\"",
                    field("lb")
                ),
            );
            LbKind::RoundRobin
        }
    };
    let connect_timeout = cx.duration(
        &raw.connect_timeout,
        &field("connect_timeout"),
        Duration::from_secs(1),
    );
    let protocol = match raw
        .protocol
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("h1", _)) => Protocol::H1,
        Some(("h2", _)) => Protocol::H2,
        Some(("h2c", _)) => Protocol::H2c,
        Some((other, sp)) => {
            cx.err(
                sp,
                format!(
                    "{}: unknown protocol {other:?}; expected \"h1\", \"h2\" or \"h2c\"",
                    field("protocol")
                ),
            );
            Protocol::H1
        }
    };
    let tls_span = raw.tls.as_ref().map(|t| t.span());
    let mut tls = match raw.tls.map(|t| t.into_inner()) {
        None | Some(RawUpstreamTls::Enabled(false)) => None,
        Some(RawUpstreamTls::Enabled(true)) => Some(UpstreamTls::default()),
        Some(RawUpstreamTls::Table(t)) => Some(UpstreamTls {
            ca: t.ca.map(PathBuf::from),
            sni: t.sni,
            insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
        }),
    };
    if raw.ca.is_some() || raw.sni.is_some() || raw.insecure_skip_verify.is_some() {
        match tls.as_mut() {
            Some(t) => {
                if let Some(ca) = raw.ca {
                    t.ca = Some(PathBuf::from(ca.into_inner()));
                }
                if let Some(sni) = raw.sni {
                    t.sni = Some(sni.into_inner());
                }
                if let Some(v) = raw.insecure_skip_verify {
                    t.insecure_skip_verify = v;
                }
            }
            None => cx.err(
                tls_span.unwrap_or(span.clone()),
                format!(
                    "{}: ca, sni and insecure_skip_verify need tls = true",
                    field("tls")
                ),
            ),
        }
    }
    if protocol == Protocol::H2 && tls.is_none() {
        cx.err(
            span.clone(),
            format!(
                "{}: protocol \"h2\" needs tls = true (use \"h2c\" for cleartext HTTP/2)",
                field("protocol")
            ),
        );
    }
    if let Some(ca) = tls.as_ref().and_then(|t| t.ca.as_ref()) {
        let path = resolve(cx.file, ca);
        if let Err(e) = std::fs::metadata(&path) {
            cx.err(
                span.clone(),
                format!(
                    "{}: cannot read CA file {}: {e}",
                    field("ca"),
                    path.display()
                ),
            );
        }
    }
    let health_check = raw.health_check.map(|h| {
        let h = h.into_inner();
        let d = HealthCheckConfig::default();
        let path = match h.path {
            None => d.path.clone(),
            Some(p) => match health_path_problem(p.get_ref()) {
                None => p.into_inner(),
                Some(why) => {
                    cx.err(p.span(), format!("{}: path {:?} {why}", field("health_check.path"), p.get_ref()));
                    d.path.clone()
                }
            },
        };
        let expect_status = match &h.expect_status {
            None => d.expect_status,
            Some(s) => match parse_status_range(s.get_ref()) {
                Some(r) => r,
                None => {
                    cx.err(s.span(), format!("{}: invalid status range {:?}; expected like \"200-399\" or \"200\"", field("health_check.expect_status"), s.get_ref()));
                    d.expect_status
                }
            },
        };
        HealthCheckConfig {
            path,
            interval: cx.duration(&h.interval, &field("health_check.interval"), d.interval),
            timeout: cx.duration(&h.timeout, &field("health_check.timeout"), d.timeout),
            healthy_threshold: cx.int(&h.healthy_threshold, &field("health_check.healthy_threshold"), 1, 1000, 2) as u32,
            unhealthy_threshold: cx.int(&h.unhealthy_threshold, &field("health_check.unhealthy_threshold"), 1, 1000, 3) as u32,
            expect_status,
            jitter: d.jitter,
        }
    });
    let circuit_breaker = match raw.circuit_breaker {
        None => BreakerConfig::default(),
        Some(b) => {
            let b = b.into_inner();
            let d = BreakerConfig::default();
            BreakerConfig {
                consecutive_failures: cx.int(
                    &b.consecutive_failures,
                    &field("circuit_breaker.consecutive_failures"),
                    0,
                    1_000_000,
                    5,
                ) as u32,
                open_for: cx.duration(&b.open_for, &field("circuit_breaker.open_for"), d.open_for),
                half_open_requests: cx.int(
                    &b.half_open_requests,
                    &field("circuit_breaker.half_open_requests"),
                    1,
                    1_000_000,
                    1,
                ) as u32,
                max_concurrent_requests: cx.int(
                    &b.max_concurrent_requests,
                    &field("circuit_breaker.max_concurrent_requests"),
                    0,
                    100_000_000,
                    0,
                ) as u32,
                grpc_status_failures: b.grpc_status_failures.unwrap_or(false),
                jitter: d.jitter,
            }
        }
    };
    let dns_refresh = cx.duration(&raw.dns_refresh, &field("dns_refresh"), DEFAULT_DNS_REFRESH);
    if dns_refresh < Duration::from_secs(1) {
        if let Some(s) = &raw.dns_refresh {
            cx.err(
                s.span(),
                format!("{}: must be at least 1s", field("dns_refresh")),
            );
        }
    }
    // A pool with errors is still returned so that routes naming it are not reported as
    // naming a missing pool; its errors are already recorded.
    Some(PoolConfig {
        name: name.to_string(),
        backends,
        lb,
        connect_timeout,
        protocol,
        tls: tls.map(Box::new),
        health_check: health_check.map(Box::new),
        circuit_breaker,
        dns_refresh,
        slow_start: Some(cx.duration(&raw.slow_start, &field("slow_start"), Duration::ZERO))
            .filter(|d| !d.is_zero()),
    })
}

/// Why a health-check path cannot be sent as the target of `GET PATH HTTP/1.1`, if it
/// cannot: the request line allows only visible ASCII, and `http`'s parser is the judge of
/// the rest (it would drop a `#fragment` without a word, so that is refused here first).
pub(super) fn health_path_problem(p: &str) -> Option<&'static str> {
    if !p.starts_with('/') {
        return Some("must start with '/'");
    }
    if p.contains(['\r', '\n']) {
        return Some("must not contain CR or LF");
    }
    if p.contains([' ', '\t']) {
        return Some("must not contain spaces (percent-encode them as %20)");
    }
    if p.bytes().any(|b| b.is_ascii_control()) {
        return Some("must not contain control characters");
    }
    if !p.is_ascii() {
        return Some("must be ASCII (percent-encode other characters)");
    }
    if p.contains('#') {
        return Some("must not contain '#' (a fragment is never sent)");
    }
    match p.parse::<http::uri::PathAndQuery>() {
        Ok(pq) if pq.as_str() == p => None,
        _ => Some("is not a valid request path"),
    }
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.trim().parse().ok()?;
    let b: u16 = b.trim().parse().ok()?;
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}
