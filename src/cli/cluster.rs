//! `veer cluster push|pull|status`: the fleet's document and members, read and written in
//! the store named by a local file's `[cluster]` (SPEC §7).

use crate::cluster::{self, document, Fleet, FleetError};
use crate::config::{Config, ConfigErrors};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

/// Why a cluster command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterCliError {
    #[error("{0}")]
    Config(String),
    /// The file to push is invalid: every error, `FILE:LINE:COL: message`.
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// The fleet the local file's `[cluster]` names (the CLI takes no leadership).
pub fn open(local: &Path) -> Result<Arc<Fleet>, ClusterCliError> {
    let config = Config::load(local).map_err(|e| ClusterCliError::Config(e.to_string()))?;
    let cfg = config.cluster.ok_or_else(|| {
        ClusterCliError::Config(format!("{}: no [cluster] section", local.display()))
    })?;
    let etcd = cluster::connect(&cfg).map_err(ClusterCliError::Config)?;
    Ok(Fleet::new(
        Arc::new(etcd),
        &cfg.prefix,
        "veer-cli".into(),
        cfg.lease_ttl,
    ))
}

/// Validate `file` (a whole config file, or only its pools and routes) and make its pools
/// and routes the fleet's document. The new revision.
pub async fn push(fleet: &Fleet, file: &Path) -> Result<i64, ClusterCliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ClusterCliError::Config(format!("{}: cannot read: {e}", file.display())))?;
    // Checked as the file it is, so errors point into it.
    Config::parse(file, &text).map_err(ClusterCliError::Invalid)?;
    let doc = document::seed_text(&text).map_err(ClusterCliError::Config)?;
    fleet.push(&doc).await.map_err(|e| match e {
        FleetError::Invalid(errors) => ClusterCliError::Invalid(errors),
        e => e.into(),
    })
}

/// The document and its revision.
pub async fn pull(fleet: &Fleet) -> Result<cluster::Revision, ClusterCliError> {
    Ok(fleet.read_document().await?.ok_or(FleetError::NoDocument)?)
}

/// The fleet as the store sees it: document revision, leader, replicas.
pub async fn status(fleet: &Fleet) -> Result<Value, ClusterCliError> {
    let doc = fleet.read_document().await?;
    let leader = fleet
        .store
        .get(&fleet.leader_key(), false)
        .await
        .map_err(FleetError::from)?;
    let p = fleet.nodes_prefix();
    let nodes = fleet.store.get(&p, true).await.map_err(FleetError::from)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Ok(json!({
        "prefix": fleet.prefix,
        "revision": doc.map(|d| d.revision),
        "leader": leader.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        "nodes": nodes.kvs.iter().map(|kv| {
            let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            json!({
                "node": &kv.key[p.len()..],
                "last_seen_ms": now.saturating_sub(v["seen_ms"].as_u64().unwrap_or(0)),
            })
        }).collect::<Vec<_>>(),
    }))
}

/// `veer cluster status` and the fleet part of `veer status`, for people.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    if let Some(node) = v["node"].as_str() {
        out.push_str(&format!(
            "fleet: this replica is {node}{}, store {}, document revision {}\n",
            if v["is_leader"] == true {
                " (leader)"
            } else {
                ""
            },
            v["store"].as_str().unwrap_or("?"),
            v["revision"]
        ));
    } else {
        out.push_str(&format!(
            "fleet {}: document revision {}\n",
            v["prefix"].as_str().unwrap_or("?"),
            v["revision"]
        ));
    }
    out.push_str(&format!(
        "leader: {}\n",
        v["leader"].as_str().unwrap_or("none")
    ));
    for n in v["nodes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<24} seen {} ms ago\n",
            n["node"].as_str().unwrap_or("?"),
            n["last_seen_ms"]
        ));
    }
    if let Some(e) = v["document_error"].as_str() {
        out.push_str(&format!("the last document revision was refused: {e}\n"));
    }
    out
}
