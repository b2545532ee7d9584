//! Starting in fleet mode: find the fleet's document before the runtime starts (seed it from
//! this replica's file, or read `<config>.fleet-cache` while the store is down), and keep
//! that cache written.

use crate::cluster::{self, document, Fleet, FleetError, Revision};
use crate::config::Config;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a starting replica waits for the store before it serves its cache.
const START_WAIT: Duration = Duration::from_secs(5);

/// Why fleet mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetStartError {
    #[error("[cluster]: {0}")]
    Setup(String),
    #[error("[cluster]: the store has no fleet document and this file has no [pools.*] and [[routes]] to seed it with")]
    NothingToSeed,
    #[error("[cluster]: the store is unreachable ({0}) and there is no usable {1} to start from")]
    NoCache(String, String),
    #[error(
        "[cluster]: the fleet document in the store is invalid and there is no usable cache:\n{0}"
    )]
    Invalid(crate::config::ConfigErrors),
}

/// What a replica starts with in fleet mode.
pub struct Prepared {
    /// The local file's sections with the fleet's pools and routes.
    pub config: Config,
    pub fleet: Arc<Fleet>,
}

/// Connect, and find the config to start with: the store's document (seeded from `local`'s
/// pools and routes when the store has none), or, when the store cannot be reached, the
/// last document this replica applied (`<config>.fleet-cache`).
pub async fn prepare(
    local: Config,
    local_text: &str,
    path: Option<&Path>,
) -> Result<Prepared, FleetStartError> {
    let cfg = local
        .cluster
        .clone()
        .ok_or_else(|| FleetStartError::Setup("no [cluster] section".into()))?;
    let etcd = cluster::connect(&cfg).map_err(FleetStartError::Setup)?;
    let fleet = Fleet::new(
        Arc::new(etcd),
        &cfg.prefix,
        cfg.node_name(local.admin.listen),
        cfg.lease_ttl,
    );
    let has_own = !local.pools.is_empty() && !local.routes.is_empty();
    let found = tokio::time::timeout(START_WAIT, async {
        match fleet.read_document().await? {
            Some(r) => Ok(r),
            None if has_own => {
                let seed = document::seed_text(local_text).map_err(FleetError::Edit)?;
                fleet.seed(&seed).await
            }
            None => Err(FleetError::NoDocument),
        }
    })
    .await
    .unwrap_or_else(|_| Err(FleetError::Unreachable("timed out".into())));
    let cache = path.map(document::cache_path);
    let from_cache = || -> Option<(i64, Config)> {
        let text = std::fs::read_to_string(cache.as_ref()?).ok()?;
        let (rev, doc) = document::parse_cache(&text)?;
        match document::parse(&fleet.doc_name(), doc) {
            Ok(c) => Some((rev, c)),
            Err(e) => {
                tracing::error!("the fleet cache is invalid; not used:\n{e}");
                None
            }
        }
    };
    let (rev, doc) = match found {
        Ok(r) => {
            fleet.set_store_up(true);
            match document::parse(&fleet.doc_name(), &r.text) {
                Ok(doc) => {
                    write_cache(path, &r);
                    (r.revision, doc)
                }
                Err(e) => {
                    tracing::error!(
                        "the fleet document in the store is invalid; starting from the cache:\n{e}"
                    );
                    fleet.set_document_error(r.revision, &e);
                    from_cache().ok_or(FleetStartError::Invalid(e))?
                }
            }
        }
        Err(FleetError::NoDocument) => return Err(FleetStartError::NothingToSeed),
        Err(e) => {
            let name = cache
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_else(|| "fleet cache".into());
            let (rev, doc) = from_cache().ok_or(FleetStartError::NoCache(e.to_string(), name))?;
            tracing::warn!(
                revision = rev,
                "cluster store unreachable ({e}); serving the fleet's config from the cache"
            );
            (rev, doc)
        }
    };
    let config = document::overlay(&local, &doc);
    fleet.set_applied(rev, Arc::new(doc));
    Ok(Prepared { config, fleet })
}

pub(super) fn write_cache(path: Option<&Path>, r: &Revision) {
    let Some(path) = path else { return };
    let cache = document::cache_path(path);
    let text = document::cache_text(r.revision, &r.text);
    if let Err(e) = crate::config::writeback::write_atomic_create(&cache, text.as_bytes()) {
        tracing::warn!(file = %cache.display(), "cannot write the fleet cache: {e}");
    }
}
