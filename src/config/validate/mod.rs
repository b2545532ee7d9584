//! Raw config → typed [`Config`], collecting every problem with its line and column.
//!
//! By section: `server` (`[server]`, `[admin]`), `pool` (`[pools.*]`), `route`
//! (`[[routes]]` with their rollouts); this file holds the shared `Ctx` (spans to line and
//! column, the common value checks), the entry point and the whole-config checks (TLS
//! certificates, overlapping routes).

mod cluster;
mod gates;
mod mirror;
mod pool;
mod route;
mod server;
#[cfg(test)]
mod tests;

use pool::build_pool;
use route::build_route;
use server::{build_admin, build_server};
mod log;

use super::raw::*;
use super::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use toml::Spanned;

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Reads the certificate files, when the caller asks for it (config/ reads no file but
    /// the config itself).
    certs: Option<&'a dyn super::CertificateCheck>,
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

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
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

    fn int(
        &mut self,
        v: &Option<Spanned<i64>>,
        field: &str,
        min: i64,
        max: i64,
        default: u64,
    ) -> u64 {
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

/// Validate config text. `file` names the file in errors. Certificate files are not read.
pub fn validate(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    validate_with(file, text, None)
}

/// [`validate`]; `certs`, when given, checks the `[[tls.certificates]]` files and its errors
/// point at their entries.
pub fn validate_with(
    file: &Path,
    text: &str,
    certs: Option<&dyn super::CertificateCheck>,
) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx {
        file,
        text,
        errors: Vec::new(),
        certs,
    };
    // Syntax first; then every unknown key, wrong type and missing key at once.
    let mut blanks = Vec::new();
    let mut only_unknown_pairs = true;
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => {
            for e in super::schema::check(&doc) {
                match e.unknown_pair.filter(|r| own_lines(text, r)) {
                    Some(r) => blanks.push(r),
                    None => only_unknown_pairs = false,
                }
                cx.err(e.offset..e.offset, e.message);
            }
            doc
        }
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            cx.err(span, format!("invalid TOML: {}", toml_message(e.message())));
            return Err(ConfigErrors(cx.errors));
        }
    };
    if !cx.errors.is_empty() && !only_unknown_pairs {
        // Values of the wrong type cannot be built into a config, so meaning is checked
        // once the shape is right.
        return Err(cx.sorted());
    }
    // Unknown `key = value` lines are blanked with spaces (offsets and lines unchanged), so
    // the rest of the file is still checked and every problem is reported in one go.
    // The document the schema walk read is deserialized as it is (issue 15: one parse per
    // load, not two); only a file with unknown pairs blanked is parsed again.
    let raw = if blanks.is_empty() {
        serde::Deserialize::deserialize(toml_edit::de::Deserializer::from(doc))
            .map_err(|e: toml_edit::de::Error| (e.span(), e.message().to_string()))
    } else {
        drop(doc);
        let mut bytes = text.as_bytes().to_vec();
        for r in &blanks {
            for b in &mut bytes[r.clone()] {
                if *b != b'\n' {
                    *b = b' ';
                }
            }
        }
        toml::from_str(&String::from_utf8_lossy(&bytes))
            .map_err(|e| (e.span(), e.message().to_string()))
    };
    let raw: RawConfig = match raw {
        Ok(r) => r,
        Err((span, message)) => {
            // The schema walk should have caught everything serde rejects; keep its word.
            cx.err(span.unwrap_or(0..0), first_line(&message).to_string());
            return Err(cx.sorted());
        }
    };
    let mut config = build(&mut cx, raw);
    config.source = super::SourceDigest::of(text);
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
    let log = log::build_log(cx, raw.log);
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

    let cluster = raw.cluster.map(|c| cluster::build_cluster(cx, c));
    let mut pools = BTreeMap::new();
    match raw.pools {
        // In fleet mode the pools and routes may live in the store alone.
        None if cluster.is_some() => {}
        None => cx.err(0..0, "no [pools.*] defined; at least one pool is required"),
        Some(p) => {
            for (name, pool) in p {
                let span = name.span();
                let name = name.into_inner();
                if let Some(pc) = build_pool(cx, &name, span, pool) {
                    pools.insert(name, Arc::new(pc));
                }
            }
        }
    }

    let mut routes = Vec::new();
    let mut afters = Vec::new();
    match raw.routes {
        None if cluster.is_some() => {}
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
                // `after` entries with their places, for the order check below.
                if let Some(a) = route
                    .rollout
                    .as_ref()
                    .and_then(|r| r.get_ref().after.as_ref())
                {
                    let list = a
                        .get_ref()
                        .iter()
                        .map(|d| (d.get_ref().clone(), d.span()))
                        .collect();
                    afters.push((route.name.get_ref().clone(), list));
                }
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
                    if let Some(&first) = names.get(&rc.name) {
                        // The line only for an error: counting lines for every route made
                        // loading a thousand routes quadratic in the file's size.
                        let first = cx.at(first).0;
                        let msg = format!(
                            "routes: duplicate route name {:?} (first defined on line {first})",
                            rc.name
                        );
                        cx.err(name_span.clone(), msg);
                    } else {
                        names.insert(rc.name.clone(), name_span.start);
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
                    routes.push(Arc::new(rc));
                }
            }
        }
    }

    gates::check_order(cx, &routes, &afters);

    // Certificate files: readable, key matching, valid now (expiring soon is a warning).
    let mut warnings = Vec::new();
    if let Some(certs) = cx.certs.filter(|_| !tls.certificates.is_empty()) {
        let (errors, soon) = certs.check(&tls, cx.file);
        for (i, msg) in errors {
            cx.err(cert_spans.get(i).cloned().unwrap_or(0..0), msg);
        }
        warnings = soon;
    }

    Config {
        server,
        admin,
        log,
        tls,
        pools,
        routes,
        cluster,
        warnings,
        source: Default::default(),
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

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
