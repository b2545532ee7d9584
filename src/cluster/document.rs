//! The fleet's config document: the `[pools.*]` and `[[routes]]` of the fleet as one TOML
//! text in the store (comments and layout kept), and what belongs to one replica staying in
//! its local file (`[server]`, `[admin]`, `[[tls.certificates]]`, `[cluster]`, `[log]`).

use crate::config::{Config, ConfigError, ConfigErrors};
use std::path::Path;

/// The top-level keys a document may hold.
const FLEET_KEYS: &[&str] = &["pools", "routes"];

/// The document to seed the store with: the local file's pools and routes, their comments
/// kept, everything else left out.
pub fn seed_text(local: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = local.parse().map_err(|e| format!("{e}"))?;
    let keys: Vec<String> = doc.iter().map(|(k, _)| k.to_string()).collect();
    for k in keys {
        if !FLEET_KEYS.contains(&k.as_str()) {
            doc.remove(&k);
        }
    }
    let text = doc.to_string();
    Ok(text.trim_start_matches('\n').to_string())
}

/// Validate a document (named `name` in errors, like `etcd:/veer/prod/config`): valid TOML,
/// only pools and routes, and a valid config of them (the same checks as a file).
pub fn parse(name: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let doc = toml_edit::ImDocument::parse(text);
    if let Ok(doc) = &doc {
        let mut errors = Vec::new();
        for (k, item) in doc.iter() {
            if FLEET_KEYS.contains(&k) {
                continue;
            }
            let at = doc
                .as_table()
                .key(k)
                .and_then(|key| key.span())
                .or_else(|| item.span())
                .unwrap_or(0..0)
                .start;
            let (line, col) = line_col(text, at);
            errors.push(ConfigError {
                file: name.to_path_buf(),
                line,
                col,
                message: format!(
                    "{k}: the fleet's document holds only [pools.*] and [[routes]]; [{k}] belongs in each replica's own file"
                ),
            });
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
    }
    Config::parse(name, text)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The config a replica runs: its own sections from `local`, the fleet's pools and routes
/// from `doc`.
pub fn overlay(local: &Config, doc: &Config) -> Config {
    let mut c = local.clone();
    c.pools = doc.pools.clone();
    c.routes = doc.routes.clone();
    c.warnings.extend(doc.warnings.iter().cloned());
    c
}

/// What is cached next to the config (`<config>.fleet-cache`): the last applied document,
/// its revision on the first line, so a restart during a store outage serves the fleet's
/// config.
pub fn cache_text(revision: i64, text: &str) -> String {
    format!("# veer fleet cache: revision {revision}\n{text}")
}

/// The revision and document of a cache file.
pub fn parse_cache(text: &str) -> Option<(i64, &str)> {
    let (first, rest) = text.split_once('\n')?;
    let rev = first
        .strip_prefix("# veer fleet cache: revision ")?
        .trim()
        .parse()
        .ok()?;
    Some((rev, rest))
}

/// `<config>.fleet-cache`.
pub fn cache_path(config: &Path) -> std::path::PathBuf {
    let mut s = config.as_os_str().to_os_string();
    s.push(".fleet-cache");
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "# local\n[server]\nlisten = [\"127.0.0.1:0\"]\n\n# the pools\n[pools.blue]\nbackends = [\"127.0.0.1:9001\"]  # v1\n\n[[routes]]\nname = \"web\"\nsplit = { blue = 100 }\n\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n";

    #[test]
    fn the_seed_keeps_pools_routes_and_their_comments_only() {
        let seed = seed_text(LOCAL).unwrap();
        assert!(seed.contains("# the pools"), "{seed}");
        assert!(seed.contains("# v1"), "{seed}");
        assert!(
            !seed.contains("[server]") && !seed.contains("[cluster]"),
            "{seed}"
        );
        let c = parse(Path::new("etcd:/t/config"), &seed).unwrap();
        assert_eq!(c.routes[0].name, "web");
    }

    #[test]
    fn a_document_with_replica_sections_is_refused_with_line_and_column() {
        let text = "[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n[server]\nworkers = 2\n";
        let e = parse(Path::new("etcd:/t/config"), text).unwrap_err();
        assert_eq!(e.0[0].line, 6, "{e}");
        assert!(e.to_string().starts_with("etcd:/t/config:6:"), "{e}");
        let bad = parse(Path::new("d"), "[pools.blue]\nbackends = []\n").unwrap_err();
        assert!(!bad.0.is_empty());
    }

    #[test]
    fn the_cache_keeps_revision_and_text() {
        let c = cache_text(42, "[pools.a]\n");
        assert_eq!(parse_cache(&c), Some((42, "[pools.a]\n")));
        assert_eq!(parse_cache("junk"), None);
        assert_eq!(
            cache_path(Path::new("/etc/veer.toml")),
            Path::new("/etc/veer.toml.fleet-cache")
        );
    }
}
