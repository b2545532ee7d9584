//! Raw config → typed [`Config`], collecting every problem with its line and column.

use super::raw::*;
use super::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn at(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = self.at(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    /// The errors in file order (a stable sort keeps same-place errors as found).
    fn sorted(&mut self) -> ConfigErrors {
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_key(|e| (e.line, e.col));
        ConfigErrors(errors)
    }

    fn duration(&mut self, v: &Option<S<String>>, field: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.err(s.span(), format!("{field}: {e}"));
                    default
                }
            },
        }
    }

    fn int(&mut self, v: &Option<S<i64>>, field: &str, min: i64, max: i64, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) if (min..=max).contains(s.get_ref()) => *s.get_ref() as u64,
            Some(s) => {
                self.err(
                    s.span(),
                    format!("{field}: {} is out of range {min}..={max}", s.get_ref()),
                );
                default
            }
        }
    }

    fn addr(&mut self, s: &str, span: Range<usize>, field: &str) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    span,
                    format!(
                        "{field}: invalid address {s:?}; expected IP:PORT like \"127.0.0.1:8080\""
                    ),
                );
                None
            }
        }
    }
}

/// Validate config text. `file` names the file in errors.
pub fn validate(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx {
        file,
        text,
        errors: Vec::new(),
    };
    // Syntax first; then every unknown key, wrong type and missing key at once.
    let mut blanks = Vec::new();
    let mut only_unknown_pairs = true;
    match toml_edit::ImDocument::parse(text) {
        Ok(doc) => {
            for e in super::schema::check(&doc) {
                match e.unknown_pair.filter(|r| own_lines(text, r)) {
                    Some(r) => blanks.push(r),
                    None => only_unknown_pairs = false,
                }
                cx.err(e.offset..e.offset, e.message);
            }
        }
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.err(span, format!("invalid TOML: {}", toml_message(e.message())));
            return Err(ConfigErrors(cx.errors));
        }
    }
    if !cx.errors.is_empty() && !only_unknown_pairs {
        // Values of the wrong type cannot be built into a config, so meaning is checked
        // once the shape is right.
        return Err(cx.sorted());
    }
    // Unknown `key = value` lines are blanked with spaces (offsets and lines unchanged), so
    // the rest of the file is still checked and every problem is reported in one go.
    let cleaned;
    let text = if blanks.is_empty() {
        text
    } else {
        let mut bytes = text.as_bytes().to_vec();
        for r in &blanks {
            for b in &mut bytes[r.clone()] {
                if *b != b'\n' {
                    *b = b' ';
                }
            }
        }
        cleaned = String::from_utf8_lossy(&bytes).into_owned();
        cleaned.as_str()
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            // The schema walk should have caught everything serde rejects; keep its word.
            let span = e.span().unwrap_or(0..0);
            cx.err(span, first_line(e.message()).to_string());
            return Err(cx.sorted());
        }
    };
    let config = build(&mut cx, raw);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(cx.sorted())
    }
}

/// Does `r` cover whole lines of its own (only blanks before it, only blanks or a comment
/// after it)? Then blanking it leaves valid TOML.
fn own_lines(text: &str, r: &Range<usize>) -> bool {
    if r.end > text.len() || !text.is_char_boundary(r.start) || !text.is_char_boundary(r.end) {
        return false;
    }
    let before = &text[..r.start];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let after = &text[r.end..];
    let rest = after.split('\n').next().unwrap_or("").trim_start();
    before[line_start..].trim().is_empty() && (rest.is_empty() || rest.starts_with('#'))
}

fn first_line(s: &str) -> &str {
    s.trim().lines().next().unwrap_or("")
}

/// toml_edit's parse message on one line: "invalid array, expected `]`".
fn toml_message(s: &str) -> String {
    s.trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

fn build(cx: &mut Ctx<'_>, raw: RawConfig) -> Config {
    let server = build_server(cx, raw.server);
    let admin = build_admin(cx, raw.admin);
    let cert_spans: Vec<Range<usize>> = raw
        .tls
        .as_ref()
        .and_then(|t| t.certificates.as_ref())
        .map_or_else(Vec::new, |v| v.iter().map(|c| c.span()).collect());
    let tls = TlsConfig {
        certificates: raw
            .tls
            .and_then(|t| t.certificates)
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let c = c.into_inner();
                CertConfig {
                    cert: PathBuf::from(c.cert.into_inner()),
                    key: PathBuf::from(c.key.into_inner()),
                }
            })
            .collect(),
    };
    if !server.tls_listen.is_empty() && tls.certificates.is_empty() {
        cx.err(
            0..0,
            "server.tls_listen is set but [[tls.certificates]] is empty",
        );
    }

    let mut pools = BTreeMap::new();
    match raw.pools {
        None => cx.err(0..0, "no [pools.*] defined; at least one pool is required"),
        Some(p) => {
            for (name, pool) in p {
                let span = name.span();
                let name = name.into_inner();
                if let Some(pc) = build_pool(cx, &name, span, pool) {
                    pools.insert(name, pc);
                }
            }
        }
    }

    let mut routes = Vec::new();
    match raw.routes {
        None => cx.err(
            0..0,
            "no [[routes]] defined; at least one route is required",
        ),
        Some(r) => {
            let mut names: HashMap<String, usize> = HashMap::new();
            let mut matchers: HashMap<(String, String), String> = HashMap::new();
            for route in r.into_inner() {
                let span = route.span();
                let route = route.into_inner();
                let name_span = route.name.span();
                // Each host as written, with its place, for the duplicate check below.
                let hosts: Vec<(String, Range<usize>)> = match &route.hosts {
                    Some(h) => h
                        .get_ref()
                        .iter()
                        .map(|h| (h.get_ref().trim().to_ascii_lowercase(), h.span()))
                        .collect(),
                    None => vec![("*".to_string(), name_span.clone())],
                };
                if let Some(rc) = build_route(cx, span.clone(), route, &pools) {
                    if let Some(first) = names.get(&rc.name) {
                        let msg = format!(
                            "routes: duplicate route name {:?} (first defined on line {first})",
                            rc.name
                        );
                        cx.err(name_span.clone(), msg);
                    } else {
                        let line = cx.at(name_span.start).0;
                        names.insert(rc.name.clone(), line);
                    }
                    for (host, host_span) in hosts {
                        let key = (host, rc.path_prefix.clone());
                        if let Some(other) = matchers.get(&key) {
                            let msg = format!(
                                "routes.{}: host {:?} with path_prefix {:?} is already routed by route {:?}",
                                rc.name, key.0, rc.path_prefix, other
                            );
                            cx.err(host_span, msg);
                        } else {
                            matchers.insert(key, rc.name.clone());
                        }
                    }
                    routes.push(rc);
                }
            }
        }
    }

    // Certificate files: readable, key matching, valid now (expiring soon is a warning).
    let mut warnings = Vec::new();
    if !tls.certificates.is_empty() {
        let (errors, soon) = crate::tls::check_certificates(&tls, cx.file);
        for (i, msg) in errors {
            cx.err(cert_spans.get(i).cloned().unwrap_or(0..0), msg);
        }
        warnings = soon;
    }

    Config {
        server,
        admin,
        tls,
        pools,
        routes,
        warnings,
    }
}

fn build_server(cx: &mut Ctx<'_>, raw: Option<S<RawServer>>) -> ServerConfig {
    let d = ServerConfig::default();
    let Some(raw) = raw else { return d };
    let raw = raw.into_inner();
    let addrs =
        |cx: &mut Ctx<'_>, v: Option<S<Vec<S<String>>>>, field: &str, default: Vec<SocketAddr>| {
            match v {
                None => default,
                Some(list) => list
                    .into_inner()
                    .into_iter()
                    .filter_map(|a| cx.addr(a.get_ref(), a.span(), field))
                    .collect(),
            }
        };
    let listen = addrs(cx, raw.listen, "server.listen", d.listen.clone());
    let tls_listen = addrs(cx, raw.tls_listen, "server.tls_listen", Vec::new());
    ServerConfig {
        listen,
        tls_listen,
        workers: cx.int(&raw.workers, "server.workers", 0, 1024, 0) as usize,
        header_read_timeout: cx.duration(
            &raw.header_read_timeout,
            "server.header_read_timeout",
            d.header_read_timeout,
        ),
        request_timeout: cx.duration(
            &raw.request_timeout,
            "server.request_timeout",
            d.request_timeout,
        ),
        body_timeout: cx.duration(&raw.body_timeout, "server.body_timeout", d.body_timeout),
        request_body_timeout: cx.duration(
            &raw.request_body_timeout,
            "server.request_body_timeout",
            d.request_body_timeout,
        ),
        request_body_min_rate: cx.int(
            &raw.request_body_min_rate,
            "server.request_body_min_rate",
            0,
            1 << 40,
            d.request_body_min_rate,
        ),
        idle_timeout: cx.duration(&raw.idle_timeout, "server.idle_timeout", d.idle_timeout),
        max_header_bytes: cx.int(
            &raw.max_header_bytes,
            "server.max_header_bytes",
            1024,
            16 << 20,
            65536,
        ) as usize,
        max_connections: cx.int(
            &raw.max_connections,
            "server.max_connections",
            1,
            10_000_000,
            10000,
        ) as usize,
        drain_timeout: cx.duration(&raw.drain_timeout, "server.drain_timeout", d.drain_timeout),
        upgrades: match raw.upgrades {
            None => d.upgrades,
            Some(list) => build_upgrades(cx, list.into_inner()),
        },
        state_file: raw.state_file.and_then(|s| state_file(cx, s)),
    }
}

/// `server.upgrades`: protocol names as `Upgrade` carries them (tokens), lower-cased. `h2c`
/// is refused: an h2c upgrade would turn the connection into a tunnel past veer's parser,
/// routing and limits (HTTP/2 clients use prior knowledge instead).
fn build_upgrades(cx: &mut Ctx<'_>, list: Vec<S<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for p in list {
        let name = p.get_ref().trim().to_ascii_lowercase();
        if name == "h2c" {
            cx.err(
                p.span(),
                "server.upgrades: \"h2c\" is never tunnelled (HTTP/2 clients speak it to veer with prior knowledge)",
            );
        } else if !valid_token(&name) {
            cx.err(
                p.span(),
                format!(
                    "server.upgrades: {:?} is not a protocol name (a token like \"websocket\")",
                    p.get_ref()
                ),
            );
        } else if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// `server.state_file`: a file path, resolved against the config file's folder, that is not
/// the config file itself. Whether it can be written is a warning (`veer check`), not an
/// error: its folder often exists only where veer runs (a volume mounted into a pod).
fn state_file(cx: &mut Ctx<'_>, s: S<String>) -> Option<PathBuf> {
    let span = s.span();
    let raw = s.into_inner();
    if raw.trim().is_empty() || raw.ends_with('/') {
        cx.err(
            span,
            format!("server.state_file: {raw:?} is not a file path; use something like \"/var/lib/veer/state.toml\""),
        );
        return None;
    }
    let path = resolve(cx.file, Path::new(&raw));
    let same = path == cx.file
        || matches!(
            (std::fs::canonicalize(&path), std::fs::canonicalize(cx.file)),
            (Ok(a), Ok(b)) if a == b
        );
    if same {
        cx.err(
            span,
            "server.state_file: must not be the config file itself (it is written beside it, not into it)",
        );
        return None;
    }
    Some(path)
}

fn build_admin(cx: &mut Ctx<'_>, raw: Option<S<RawAdmin>>) -> AdminConfig {
    let d = AdminConfig::default();
    let Some(raw) = raw else { return d };
    let raw = raw.into_inner();
    let listen = match &raw.listen {
        None => d.listen,
        Some(s) => cx
            .addr(s.get_ref(), s.span(), "admin.listen")
            .unwrap_or(d.listen),
    };
    let token_env = match raw.token_env {
        None => d.token_env,
        Some(s) if s.get_ref().is_empty() => {
            cx.err(s.span(), "admin.token_env: must not be empty");
            d.token_env
        }
        Some(s) => s.into_inner(),
    };
    let mut hosts = Vec::new();
    for h in raw.hosts.map(|h| h.into_inner()).unwrap_or_default() {
        match AdminHost::parse(h.get_ref().trim()) {
            Ok(a) => hosts.push(a),
            Err(why) => cx.err(h.span(), format!("admin.hosts: {why}")),
        }
    }
    AdminConfig {
        listen,
        token_env,
        hosts,
    }
}

fn build_pool(
    cx: &mut Ctx<'_>,
    name: &str,
    span: Range<usize>,
    raw: S<RawPool>,
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
        let Some(a) = cx.addr(&addr, bspan.clone(), &field("backends")) else {
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
        if !seen.insert(a) {
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
    // A pool with errors is still returned so that routes naming it are not reported as
    // naming a missing pool; its errors are already recorded.
    Some(PoolConfig {
        name: name.to_string(),
        backends,
        lb,
        connect_timeout,
        protocol,
        tls,
        health_check,
        circuit_breaker,
    })
}

/// Why a health-check path cannot be sent as the target of `GET PATH HTTP/1.1`, if it
/// cannot: the request line allows only visible ASCII, and `http`'s parser is the judge of
/// the rest (it would drop a `#fragment` without a word, so that is refused here first).
fn health_path_problem(p: &str) -> Option<&'static str> {
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

/// Paths in the config are relative to the config file's folder.
pub fn resolve(config_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_file
            .parent()
            .map(|d| d.join(p))
            .unwrap_or_else(|| p.to_path_buf())
    }
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.trim().parse().ok()?;
    let b: u16 = b.trim().parse().ok()?;
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}

fn build_route(
    cx: &mut Ctx<'_>,
    span: Range<usize>,
    raw: RawRoute,
    pools: &BTreeMap<String, PoolConfig>,
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
                Sticky::Cookie(c.into_inner())
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
                    crate::routing::pool_override::Cidr::parse(c.get_ref().trim())
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
            Some(env) => match crate::routing::pool_override::read_secret(env.get_ref()) {
                Ok(secret) => {
                    let pools = pools.keys().map(String::as_str);
                    let tokens =
                        crate::routing::pool_override::Tokens::new(secret.as_bytes(), pools);
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
        let steps_span = r.steps.span();
        let steps: Vec<u32> = r
            .steps
            .into_inner()
            .into_iter()
            .map(|s| {
                if !(0..=100).contains(s.get_ref()) {
                    cx.err(
                        s.span(),
                        format!(
                            "{}: {} is not a percentage 0..=100",
                            field("rollout.steps"),
                            s.get_ref()
                        ),
                    );
                }
                (*s.get_ref()).clamp(0, 100) as u32
            })
            .collect();
        if steps.is_empty() {
            cx.err(
                steps_span.clone(),
                format!("{}: needs at least one step", field("rollout.steps")),
            );
        } else if steps.windows(2).any(|w| w[0] >= w[1]) {
            cx.err(
                steps_span.clone(),
                format!("{}: steps must increase", field("rollout.steps")),
            );
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
        RolloutConfig {
            to: r.to.into_inner(),
            steps,
            step_interval: cx.duration(
                &r.step_interval,
                &field("rollout.step_interval"),
                Duration::from_secs(60),
            ),
            min_requests: cx.int(
                &r.min_requests,
                &field("rollout.min_requests"),
                0,
                i64::MAX,
                100,
            ),
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
        rollout,
    })
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
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

    const OK: &str = r#"
[pools.blue]
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 }]
[pools.green]
backends = ["127.0.0.1:9101"]
[[routes]]
name = "web"
split = { blue = 90, green = 10 }
"#;

    #[test]
    fn admin_hosts_and_state_file_are_checked() {
        let text = format!(
            "[server]\nstate_file = \"state/veer-state.toml\"\n[admin]\nhosts = [\"Veer.Internal\", \"ops.example:8443\", \"10.0.0.5\"]\n{OK}"
        );
        let c = validate(Path::new("/etc/veer/veer.toml"), &text).unwrap();
        assert_eq!(
            c.server.state_file.as_deref(),
            Some(Path::new("/etc/veer/state/veer-state.toml"))
        );
        let hosts: Vec<(&str, Option<u16>)> = c
            .admin
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.port))
            .collect();
        assert_eq!(
            hosts,
            [
                ("veer.internal", None),
                ("ops.example", Some(8443)),
                ("10.0.0.5", None)
            ]
        );
        let bad = format!(
            "[server]\nstate_file = \"t.toml\"\n[admin]\nhosts = [\"*\", \"http://x\", \"a b\", \"x:99999\"]\n{OK}"
        );
        let e = errs(&bad);
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(
            e[0].starts_with("t.toml:2:14: server.state_file: must not be the config file"),
            "{e:#?}"
        );
        assert!(
            e[1].starts_with("t.toml:4:10: admin.hosts: \"*\": wildcards"),
            "{e:#?}"
        );
        assert!(e[2].contains("\"http://x\" is not a host name"), "{e:#?}");
    }

    #[test]
    fn minimal_config_is_valid() {
        let c = validate(Path::new("t.toml"), OK).unwrap();
        assert_eq!(c.pools["blue"].backends[1].weight, 2);
        assert_eq!(
            c.routes[0].split,
            vec![("blue".into(), 90), ("green".into(), 10)]
        );
        assert_eq!(c.routes[0].hosts, vec![HostPattern::Any]);
    }

    #[test]
    fn every_unknown_key_is_reported_with_position() {
        let e = errs(&format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nbogus = 1\n{OK}\n[admin]\nnope = 2\n"
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:3:1: unknown key \"bogus\""),
            "{e:?}"
        );
        assert!(e[1].contains("unknown key \"nope\""), "{e:?}");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let text = r#"
[server]
request_timeout = "3 parsecs"
listen = ["localhost-ish"]
[pools.blue]
backends = ["127.0.0.1:9001"]
[[routes]]
name = "web"
split = { blue = 0, red = 0 }
[[routes]]
name = "web"
split = { blue = 1 }
"#;
        let e = errs(text);
        assert!(
            e.iter()
                .any(|e| e.starts_with("t.toml:3:19:") && e.contains("request_timeout")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("t.toml:4:11:") && e.contains("invalid address")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.contains("pool \"red\" does not exist")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.contains("all weights are zero")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.contains("duplicate route name")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.contains("is already routed by")),
            "{e:?}"
        );
    }

    #[test]
    fn request_body_limits_default_parse_and_are_checked() {
        let d = validate(Path::new("t.toml"), OK).unwrap().server;
        assert_eq!(d.request_body_timeout, Duration::from_secs(10));
        assert_eq!(d.request_body_min_rate, 500);
        let c = validate(
            Path::new("t.toml"),
            &format!("[server]\nrequest_body_timeout = \"0s\"\nrequest_body_min_rate = 0\n{OK}"),
        )
        .unwrap()
        .server;
        assert_eq!(c.request_body_timeout, Duration::ZERO);
        assert_eq!(c.request_body_min_rate, 0);
        let e = errs(&format!(
            "[server]\nrequest_body_timeout = \"soon\"\nrequest_body_min_rate = -1\n{OK}"
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:2:24: server.request_body_timeout: invalid duration"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.toml:3:25: server.request_body_min_rate: -1 is out of range"),
            "{e:?}"
        );
        let e = errs(&format!("[server]\nrequest_body_min_rate = \"fast\"\n{OK}"));
        assert!(
            e.iter()
                .any(|e| e.starts_with("t.toml:2:25:") && e.contains("request_body_min_rate")),
            "{e:?}"
        );
    }

    #[test]
    fn host_patterns_match() {
        assert!(HostPattern::Suffix(".example.com".into()).matches("a.example.com"));
        assert!(!HostPattern::Suffix(".example.com".into()).matches("example.com"));
        assert!(HostPattern::Exact("a.com".into()).matches("A.com"));
    }

    #[test]
    fn fallback_is_a_boolean_or_weighted() {
        let route = |f: &str| format!("{OK}{f}\n");
        let c = validate(Path::new("t.toml"), OK).unwrap();
        assert_eq!(c.routes[0].fallback, Fallback::All, "the default");
        for (f, want) in [
            ("fallback = true", Fallback::All),
            ("fallback = false", Fallback::Off),
            ("fallback = \"weighted\"", Fallback::Weighted),
        ] {
            let c = validate(Path::new("t.toml"), &route(f)).unwrap();
            assert_eq!(c.routes[0].fallback, want, "{f}");
        }
        // The route table ends on line 8 of OK; the value starts at column 12.
        assert_eq!(
            errs(&route("fallback = \"idle\"")),
            vec!["t.toml:9:12: routes.web.fallback: expected true, false or \"weighted\", found \"idle\""]
        );
        assert_eq!(
            errs(&route("fallback = 1")),
            vec!["t.toml:9:12: routes.web.fallback: expected true, false or \"weighted\", found an integer"]
        );
    }

    #[test]
    fn override_allow_from_and_secret_env_are_checked_where_written() {
        let with = |o: &str| format!("{OK}override = {{ header = \"x-veer-pool\", {o} }}\n");
        let c = validate(
            Path::new("t.toml"),
            &with("allow_from = [\"10.0.0.0/8\", \"::1\"]"),
        )
        .unwrap();
        let o = c.routes[0].override_.as_ref().unwrap();
        assert_eq!(o.allow_from.len(), 2);
        assert_eq!(o.tokens, None);
        let e = errs(&with("allow_from = [\"10.0.0.0/8\", \"10.1.0.0/16x\"]"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:9:66: routes.web.override.allow_from: \"10.1.0.0/16x\""),
            "{e:?}"
        );
        let e = errs(&with("allow_from = []"));
        assert!(
            e[0].starts_with("t.toml:9:51: routes.web.override.allow_from: lists no address block"),
            "{e:?}"
        );

        // Only this test uses these variables.
        std::env::remove_var("VEER_TEST_VALIDATE_UNSET");
        std::env::set_var("VEER_TEST_VALIDATE_EMPTY", "");
        std::env::set_var("VEER_TEST_VALIDATE_SECRET", "s3cret");
        assert_eq!(
            errs(&with("secret_env = \"VEER_TEST_VALIDATE_UNSET\"")),
            vec!["t.toml:9:51: routes.web.override.secret_env: environment variable \"VEER_TEST_VALIDATE_UNSET\" is not set"]
        );
        assert_eq!(
            errs(&with("secret_env = \"VEER_TEST_VALIDATE_EMPTY\"")),
            vec!["t.toml:9:51: routes.web.override.secret_env: environment variable \"VEER_TEST_VALIDATE_EMPTY\" is empty"]
        );
        assert_eq!(
            errs(&with("secret_env = \"\"")),
            vec!["t.toml:9:51: routes.web.override.secret_env: must not be empty"]
        );
        let c = validate(
            Path::new("t.toml"),
            &with("secret_env = \"VEER_TEST_VALIDATE_SECRET\""),
        )
        .unwrap();
        let o = c.routes[0].override_.as_ref().unwrap();
        assert_eq!(o.secret_env.as_deref(), Some("VEER_TEST_VALIDATE_SECRET"));
        let tokens = o.tokens.as_ref().unwrap();
        let green = crate::routing::pool_override::token(b"s3cret", "green");
        assert!(tokens.matches("green", &green));
        // The secret never shows in the config's debug output.
        assert!(!format!("{c:?}").contains(&green[6..]));
    }
}
