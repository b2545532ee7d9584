//! The config file as written: serde structs with `deny_unknown_fields` and spans kept, so
//! validation can point at the line and column of every value it rejects.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// A value with its byte range in the file.
pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: Option<S<RawServer>>,
    #[serde(default)]
    pub admin: Option<S<RawAdmin>>,
    #[serde(default)]
    pub log: Option<S<RawLog>>,
    /// Not spanned: toml cannot span a table that only `[[tls.certificates]]` creates.
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub pools: Option<BTreeMap<S<String>, S<RawPool>>>,
    #[serde(default)]
    pub routes: Option<S<Vec<S<RawRoute>>>>,
    /// Fleet mode (SPEC §7).
    #[serde(default)]
    pub cluster: Option<S<RawCluster>>,
}

/// `[cluster]`: fleet mode on etcd (SPEC §7).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub etcd: Option<S<Vec<S<String>>>>,
    pub prefix: Option<S<String>>,
    pub node: Option<S<String>>,
    pub lease_ttl: Option<S<String>>,
    pub username_env: Option<S<String>>,
    pub password_env: Option<S<String>>,
    pub ca: Option<S<String>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<S<Vec<S<String>>>>,
    pub workers: Option<S<i64>>,
    pub tls_listen: Option<S<Vec<S<String>>>>,
    pub header_read_timeout: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub body_timeout: Option<S<String>>,
    pub request_body_timeout: Option<S<String>>,
    pub request_body_min_rate: Option<S<i64>>,
    pub idle_timeout: Option<S<String>>,
    pub max_header_bytes: Option<S<i64>>,
    pub max_connections: Option<S<i64>>,
    pub drain_timeout: Option<S<String>>,
    pub upgrades: Option<S<Vec<S<String>>>>,
    pub state_file: Option<S<String>>,
    pub dns_servers: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<S<String>>,
    pub token_env: Option<S<String>>,
    pub hosts: Option<S<Vec<S<String>>>>,
    /// Named tokens (issue 20): name = "env:VAR".
    pub tokens: Option<S<BTreeMap<S<String>, S<String>>>>,
}

/// `[log]` (issue 16).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<S<String>>,
    pub access: Option<S<String>>,
    pub access_format: Option<S<String>>,
    pub access_sample: Option<S<f64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Option<Vec<S<RawCert>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: S<String>,
    pub key: S<String>,
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
    pub backends: S<Vec<S<RawBackend>>>,
    pub lb: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub protocol: Option<S<String>>,
    pub tls: Option<S<RawUpstreamTls>>,
    pub ca: Option<S<String>>,
    pub sni: Option<S<String>>,
    pub insecure_skip_verify: Option<bool>,
    pub health_check: Option<S<RawHealthCheck>>,
    pub circuit_breaker: Option<S<RawBreaker>>,
    pub dns_refresh: Option<S<String>>,
    pub slow_start: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub healthy_threshold: Option<S<i64>>,
    pub unhealthy_threshold: Option<S<i64>>,
    pub expect_status: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub consecutive_failures: Option<S<i64>>,
    pub open_for: Option<S<String>>,
    pub half_open_requests: Option<S<i64>>,
    pub max_concurrent_requests: Option<S<i64>>,
    pub grpc_status_failures: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: S<String>,
    pub hosts: Option<S<Vec<S<String>>>>,
    pub path_prefix: Option<S<String>>,
    /// Keys keep their spans so an unknown pool is pointed at by name.
    pub split: S<BTreeMap<S<String>, S<i64>>>,
    pub sticky: Option<S<RawSticky>>,
    #[serde(rename = "override")]
    pub override_: Option<S<RawOverride>>,
    pub fallback: Option<S<RawFallback>>,
    pub retry: Option<S<RawRetry>>,
    pub rollout: Option<S<RawRollout>>,
    pub mirror: Option<S<RawMirror>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: Option<S<String>>,
    pub header: Option<S<String>>,
    pub client_ip: Option<bool>,
    /// Cookie attributes (issue 20): `max_age = "30d"`, `secure = true`.
    pub max_age: Option<S<String>>,
    pub secure: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub header: Option<S<String>>,
    pub cookie: Option<S<String>>,
    pub allow_from: Option<S<Vec<S<String>>>>,
    pub secret_env: Option<S<String>>,
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
    pub attempts: Option<S<i64>>,
    pub backoff: Option<S<String>>,
    pub idempotent_only: Option<bool>,
    pub budget_percent: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub to: S<String>,
    /// Percentages, the first of which may be `"mirror"` (SPEC §11).
    pub steps: S<Vec<S<RawStep>>>,
    /// SPEC §11: the mirror step's limit on compared copies that differ.
    pub max_diff_rate: Option<S<f64>>,
    pub step_interval: Option<S<String>>,
    pub min_requests: Option<S<i64>>,
    pub max_error_rate: Option<S<f64>>,
    pub max_p99: Option<S<String>>,
    pub approval: Option<bool>,
    pub approval_timeout: Option<S<String>>,
    pub notify_url: Option<S<String>>,
    /// Written back by veer: where the rollout stands, so a restart resumes there.
    pub state: Option<S<String>>,
    /// Written back by veer: the index into `steps` reached.
    pub step: Option<S<i64>>,
    // SPEC §10: gates, order, baseline comparison, hotfix.
    pub after: Option<S<Vec<S<String>>>>,
    pub gates: Option<S<Vec<S<RawGate>>>>,
    pub max_error_rate_vs_baseline: Option<S<f64>>,
    pub hotfix: Option<S<RawHotfix>>,
    /// Written back by veer with `state`/`step`: the step's clock (unix ms), the
    /// definition's fingerprint, and `mode = "hotfix"` for a hotfix run.
    pub step_started_ms: Option<S<i64>>,
    pub approval_deadline_ms: Option<S<i64>>,
    pub fingerprint: Option<S<String>>,
    pub mode: Option<S<String>>,
}

/// One `[[routes.rollout.gates]]` (SPEC §10).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub name: S<String>,
    pub when: Option<S<String>>,
    pub prometheus: Option<S<String>>,
    pub query: Option<S<String>>,
    pub min: Option<S<f64>>,
    pub max: Option<S<f64>>,
    pub webhook: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub steady_for: Option<S<String>>,
    pub headers: Option<S<BTreeMap<S<String>, S<String>>>>,
    pub hotfix: Option<bool>,
}

/// `[routes.rollout.hotfix]` (SPEC §10).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHotfix {
    pub steps: S<Vec<S<i64>>>,
    pub step_interval: Option<S<String>>,
    pub min_requests: Option<S<i64>>,
}

/// `[routes.mirror]` (SPEC §11).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub to: S<String>,
    pub percent: Option<S<f64>>,
    pub methods: Option<S<Vec<S<String>>>>,
    pub compare: Option<bool>,
    pub ignore_headers: Option<S<Vec<S<String>>>>,
    pub max_body: Option<S<RawSize>>,
    pub max_in_flight: Option<S<i64>>,
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
