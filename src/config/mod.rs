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
use std::sync::Arc;
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
    /// Pools by name (sorted, so iteration order is stable). Pools and routes are shared
    /// (`Arc`) by the copies of a config (the state file's overlay, the snapshot, the runtime
    /// pools and routes), so each costs its memory once (issue 15); `route_mut` and
    /// `pool_mut` copy one on write.
    pub pools: BTreeMap<String, Arc<PoolConfig>>,
    pub routes: Vec<Arc<RouteConfig>>,
    /// `[cluster]`: fleet mode (SPEC §7); `None`: one replica on its own.
    pub cluster: Option<ClusterConfig>,
    /// Non-fatal findings (for example a certificate expiring soon), shown by `veer check`.
    pub warnings: Vec<String>,
    /// What text the config was read from (not part of what it says).
    pub source: SourceDigest,
}

/// A digest of the text a config was parsed from, so the file watcher's first look at the
/// file compares bytes instead of parsing it again (issue 15). Provenance, not content: two
/// configs that say the same are equal whatever text they came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceDigest(pub Option<u64>);

impl SourceDigest {
    /// The digest of config text (the file watcher hashes what it reads the same way).
    pub fn of(text: &str) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        text.hash(&mut h);
        SourceDigest(Some(h.finish()))
    }
}

impl PartialEq for SourceDigest {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Checks the certificate files a config names, for validation to report with their
/// entries' positions. Implemented by `tls::CertificateFiles`: config/ stays pure.
pub trait CertificateCheck: Sync {
    /// Errors by `[[tls.certificates]]` index, and warnings (e.g. expiring soon).
    fn check(&self, tls: &TlsConfig, config_file: &Path) -> (Vec<(usize, String)>, Vec<String>);
}

/// Run a parse on a thread of its own that ends with it (issue 15). A parse's scratch (the
/// TOML document, spanned strings: megabytes for a config of a thousand routes) is freed
/// when it returns, but mimalloc gives freed pages back to the OS only later, when the
/// thread that freed them allocates again, and veer's main thread hardly does once it
/// serves: the scratch stayed resident for good. A thread that exits hands its pages back
/// at once (its segments are purged when abandoned). Costs one thread start (~20 µs).
pub(crate) fn scratch_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let mut f = Some(f);
    let ran = std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("veer-config".into())
            .spawn_scoped(s, || f.take().map(|f| f()));
        h.ok().map(|h| h.join())
    });
    match ran {
        Some(Ok(Some(v))) => v,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        // No thread to be had: parse here (its scratch comes back later, or not).
        _ => f.take().expect("not run yet")(),
    }
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
        scratch_thread(|| validate::validate_with(path, text, Some(certs)))
    }

    /// [`Config::load`] with the certificate files checked (see [`Config::parse_checked`]).
    pub fn load_checked(path: &Path, certs: &dyn CertificateCheck) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(path, format!("cannot read config file: {e}")))?;
        Config::parse_checked(path, &text, certs)
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name).map(|r| &**r)
    }

    pub fn route_mut(&mut self, name: &str) -> Option<&mut RouteConfig> {
        self.routes
            .iter_mut()
            .find(|r| r.name == name)
            .map(Arc::make_mut)
    }

    pub fn pool_mut(&mut self, name: &str) -> Option<&mut PoolConfig> {
        self.pools.get_mut(name).map(Arc::make_mut)
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
