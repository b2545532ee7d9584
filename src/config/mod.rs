//! Configuration: the file as written ([`raw`]), checked key by key ([`schema`]), turned into
//! the typed [`Config`] by [`validate`], and written back by [`writeback`], or, with
//! `[server] state_file`, kept in a state file laid over it ([`state`]).
//!
//! The typed [`Config`] is here; its parts by section in `server`, `pool` and `route`,
//! [`ConfigError`] in `error`.

pub mod duration;
mod error;
pub mod mirror;
mod pool;
pub mod pool_override;
pub mod raw;
pub mod rollout;
mod route;
pub mod schema;
mod server;
pub mod state;
pub mod validate;
pub mod writeback;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::{format_duration, parse_duration};
pub use mirror::MirrorConfig;
pub use rollout::{GateCheck, GateConfig, GateWhen, HeaderValue, HotfixConfig, ProgressMeta};

pub use error::{ConfigError, ConfigErrors};
pub use pool::{
    BackendAddr, BackendConfig, BreakerConfig, HealthCheckConfig, LbKind, PoolConfig, Protocol,
    UpstreamTls, DEFAULT_DNS_REFRESH,
};
pub use route::{
    Fallback, HostPattern, Override, RetryConfig, RolloutConfig, RolloutState, RouteConfig, Sticky,
    StickyCookie,
};
pub use server::{
    split_authority, AccessFormat, AccessTarget, AdminConfig, AdminHost, CertConfig, ClusterConfig,
    LogConfig, LogFormat, NamedToken, ServerConfig, TlsConfig,
};

/// The validated configuration: every value checked, every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub tls: TlsConfig,
    /// Pools by name (sorted, so iteration order is stable).
    pub pools: BTreeMap<String, PoolConfig>,
    pub routes: Vec<RouteConfig>,
    /// `[cluster]`: fleet mode (SPEC §7); `None`: one replica on its own.
    pub cluster: Option<ClusterConfig>,
    /// Non-fatal findings (for example a certificate expiring soon), shown by `veer check`.
    pub warnings: Vec<String>,
}

/// Checks the certificate files a config names, for validation to report with their
/// entries' positions. Implemented by `tls::CertificateFiles`: config/ stays pure.
pub trait CertificateCheck {
    /// Errors by `[[tls.certificates]]` index, and warnings (e.g. expiring soon).
    fn check(&self, tls: &TlsConfig, config_file: &Path) -> (Vec<(usize, String)>, Vec<String>);
}

impl Config {
    /// Read and validate a config file (certificate files not read: [`Config::load_checked`]).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(path, format!("cannot read config file: {e}")))?;
        Config::parse(path, &text)
    }

    /// Validate config text; `path` is only used to name the file in errors. Certificate
    /// files are not read (see [`Config::parse_checked`]).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        validate::validate(path, text)
    }

    /// [`Config::parse`], with the `[[tls.certificates]]` files checked by `certs` (readable,
    /// key matching, valid now); its errors point at the entries. What `veer check`, `veer
    /// run` and a reload use.
    pub fn parse_checked(
        path: &Path,
        text: &str,
        certs: &dyn CertificateCheck,
    ) -> Result<Config, ConfigErrors> {
        validate::validate_with(path, text, Some(certs))
    }

    /// [`Config::load`] with the certificate files checked (see [`Config::parse_checked`]).
    pub fn load_checked(path: &Path, certs: &dyn CertificateCheck) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(path, format!("cannot read config file: {e}")))?;
        Config::parse_checked(path, &text, certs)
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn route_mut(&mut self, name: &str) -> Option<&mut RouteConfig> {
        self.routes.iter_mut().find(|r| r.name == name)
    }

    /// One line for `veer check`.
    pub fn summary(&self) -> String {
        let backends: usize = self.pools.values().map(|p| p.backends.len()).sum();
        format!(
            "{} route(s), {} pool(s), {} backend(s), listening on {}",
            self.routes.len(),
            self.pools.len(),
            backends,
            self.server
                .listen
                .iter()
                .chain(self.server.tls_listen.iter())
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}
