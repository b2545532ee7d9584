//! The config file as written: serde structs with `deny_unknown_fields` and spans kept, so
//! validation can point at the line and column of every value it rejects.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// A value with its byte range in the file.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: Option<Spanned<RawServer>>,
    #[serde(default)]
    pub admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub log: Option<Spanned<RawLog>>,
    /// Not spanned: toml cannot span a table that only `[[tls.certificates]]` creates.
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub pools: Option<BTreeMap<Spanned<String>, Spanned<RawPool>>>,
    #[serde(default)]
    pub routes: Option<Spanned<Vec<Spanned<RawRoute>>>>,
    /// Fleet mode (SPEC §7).
    #[serde(default)]
    pub cluster: Option<Spanned<RawCluster>>,
}

/// `[cluster]`: fleet mode on etcd (SPEC §7).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub etcd: Option<Spanned<Vec<Spanned<String>>>>,
    pub prefix: Option<Spanned<String>>,
    pub node: Option<Spanned<String>>,
    pub lease_ttl: Option<Spanned<String>>,
    pub username_env: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub workers: Option<Spanned<i64>>,
    pub tls_listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub request_body_timeout: Option<Spanned<String>>,
    pub request_body_min_rate: Option<Spanned<i64>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub upgrades: Option<Spanned<Vec<Spanned<String>>>>,
    pub state_file: Option<Spanned<String>>,
    pub dns_servers: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// Named tokens (issue 20): name = "env:VAR".
    pub tokens: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
}

/// `[log]` (issue 16).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
    pub access: Option<Spanned<String>>,
    pub access_format: Option<Spanned<String>>,
    pub access_sample: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Option<Vec<Spanned<RawCert>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// Spans do not survive serde's untagged enums, so the variants hold plain values and errors
/// point at the whole entry.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawBackend {
    Addr(String),
    Table(RawBackendTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTable {
    pub addr: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawUpstreamTls {
    Enabled(bool),
    Table(RawUpstreamTlsTable),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTlsTable {
    pub ca: Option<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub backends: Spanned<Vec<Spanned<RawBackend>>>,
    pub lb: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub ca: Option<Spanned<String>>,
    pub sni: Option<Spanned<String>>,
    pub insecure_skip_verify: Option<bool>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub circuit_breaker: Option<Spanned<RawBreaker>>,
    pub dns_refresh: Option<Spanned<String>>,
    pub slow_start: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    pub expect_status: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub open_for: Option<Spanned<String>>,
    pub half_open_requests: Option<Spanned<i64>>,
    pub max_concurrent_requests: Option<Spanned<i64>>,
    pub grpc_status_failures: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub path_prefix: Option<Spanned<String>>,
    /// Keys keep their spans so an unknown pool is pointed at by name.
    pub split: Spanned<BTreeMap<Spanned<String>, Spanned<i64>>>,
    pub sticky: Option<Spanned<RawSticky>>,
    #[serde(rename = "override")]
    pub override_: Option<Spanned<RawOverride>>,
    pub fallback: Option<Spanned<RawFallback>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub rollout: Option<Spanned<RawRollout>>,
    pub mirror: Option<Spanned<RawMirror>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub client_ip: Option<bool>,
    /// Cookie attributes (issue 20): `max_age = "30d"`, `secure = true`.
    pub max_age: Option<Spanned<String>>,
    pub secure: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub header: Option<Spanned<String>>,
    pub cookie: Option<Spanned<String>>,
    pub allow_from: Option<Spanned<Vec<Spanned<String>>>>,
    pub secret_env: Option<Spanned<String>>,
}

/// `fallback = true | false | "weighted"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawFallback {
    Bool(bool),
    Word(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<Spanned<i64>>,
    pub backoff: Option<Spanned<String>>,
    pub idempotent_only: Option<bool>,
    pub budget_percent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub to: Spanned<String>,
    /// Percentages, the first of which may be `"mirror"` (SPEC §11).
    pub steps: Spanned<Vec<Spanned<RawStep>>>,
    /// SPEC §11: the mirror step's limit on compared copies that differ.
    pub max_diff_rate: Option<Spanned<f64>>,
    pub step_interval: Option<Spanned<String>>,
    pub min_requests: Option<Spanned<i64>>,
    pub max_error_rate: Option<Spanned<f64>>,
    pub max_p99: Option<Spanned<String>>,
    pub approval: Option<bool>,
    pub approval_timeout: Option<Spanned<String>>,
    pub notify_url: Option<Spanned<String>>,
    /// Written back by veer: where the rollout stands, so a restart resumes there.
    pub state: Option<Spanned<String>>,
    /// Written back by veer: the index into `steps` reached.
    pub step: Option<Spanned<i64>>,
    // SPEC §10: gates, order, baseline comparison, hotfix.
    pub after: Option<Spanned<Vec<Spanned<String>>>>,
    pub gates: Option<Spanned<Vec<Spanned<RawGate>>>>,
    pub max_error_rate_vs_baseline: Option<Spanned<f64>>,
    pub hotfix: Option<Spanned<RawHotfix>>,
    /// Written back by veer with `state`/`step`: the step's clock (unix ms), the
    /// definition's fingerprint, and `mode = "hotfix"` for a hotfix run.
    pub step_started_ms: Option<Spanned<i64>>,
    pub approval_deadline_ms: Option<Spanned<i64>>,
    pub fingerprint: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
}

/// One `[[routes.rollout.gates]]` (SPEC §10).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub name: Spanned<String>,
    pub when: Option<Spanned<String>>,
    pub prometheus: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
    pub webhook: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub steady_for: Option<Spanned<String>>,
    pub headers: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    pub hotfix: Option<bool>,
}

/// `[routes.rollout.hotfix]` (SPEC §10).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHotfix {
    pub steps: Spanned<Vec<Spanned<i64>>>,
    pub step_interval: Option<Spanned<String>>,
    pub min_requests: Option<Spanned<i64>>,
}

/// `[routes.mirror]` (SPEC §11).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub to: Spanned<String>,
    pub percent: Option<Spanned<f64>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub compare: Option<bool>,
    pub ignore_headers: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_body: Option<Spanned<RawSize>>,
    pub max_in_flight: Option<Spanned<i64>>,
}

/// A size: a number of bytes or a string like `"64KiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

/// A rollout step: a percentage, or the word `"mirror"` (SPEC §11).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawStep {
    Percent(i64),
    Word(String),
}
