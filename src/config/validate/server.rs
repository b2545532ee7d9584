//! Validating `[server]` and `[admin]`.

use super::*;

pub(super) fn build_server(cx: &mut Ctx<'_>, raw: Option<Spanned<RawServer>>) -> ServerConfig {
    let d = ServerConfig::default();
    let Some(raw) = raw else { return d };
    let raw = raw.into_inner();
    let addrs = |cx: &mut Ctx<'_>,
                 v: Option<Spanned<Vec<Spanned<String>>>>,
                 field: &str,
                 default: Vec<SocketAddr>| {
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
        dns_servers: addrs(cx, raw.dns_servers, "server.dns_servers", Vec::new()),
    }
}

/// `server.upgrades`: protocol names as `Upgrade` carries them (tokens), lower-cased. `h2c`
/// is refused: an h2c upgrade would turn the connection into a tunnel past veer's parser,
/// routing and limits (HTTP/2 clients use prior knowledge instead).
pub(super) fn build_upgrades(cx: &mut Ctx<'_>, list: Vec<Spanned<String>>) -> Vec<String> {
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
pub(super) fn state_file(cx: &mut Ctx<'_>, s: Spanned<String>) -> Option<PathBuf> {
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

pub(super) fn build_admin(cx: &mut Ctx<'_>, raw: Option<Spanned<RawAdmin>>) -> AdminConfig {
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
    let tokens = build_tokens(cx, raw.tokens);
    AdminConfig {
        listen,
        token_env,
        hosts,
        tokens,
    }
}

/// `[admin] tokens = { alice = "env:TOKEN_ALICE" }`: names are who made a change (the
/// audit trail); values name env vars, so no secret lives in the file.
fn build_tokens(
    cx: &mut Ctx<'_>,
    raw: Option<Spanned<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>>,
) -> Vec<NamedToken> {
    let mut out = Vec::new();
    for (name, value) in raw.map(|t| t.into_inner()).unwrap_or_default() {
        let n = name.get_ref();
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        {
            cx.err(
                name.span(),
                format!("admin.tokens: invalid name {n:?} (letters, digits, '-', '_', '.', '@')"),
            );
            continue;
        }
        if n == "admin" {
            cx.err(
                name.span(),
                "admin.tokens: \"admin\" is the name of the token_env token; choose another",
            );
            continue;
        }
        match value.get_ref().strip_prefix("env:") {
            Some(env) if !env.is_empty() && !env.contains('=') => out.push(NamedToken {
                name: n.clone(),
                env: env.to_string(),
            }),
            _ => cx.err(
                value.span(),
                format!(
                    "admin.tokens.{n}: must be \"env:VAR\", the env var holding the token (a token is never written in the file)"
                ),
            ),
        }
    }
    out
}
