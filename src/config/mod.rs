//! Configuration: the file as written ([`raw`]), checked key by key ([`schema`]), turned into
//! the typed [`Config`] by [`validate`], and written back by [`writeback`], or, with
//! `[server] state_file`, kept in a state file laid over it ([`state`]).

pub mod duration;
pub mod mirror;
pub mod pool_override;
pub mod raw;
pub mod rollout;
pub mod schema;
pub mod state;
pub mod validate;
pub mod writeback;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::{format_duration, parse_duration};
pub use mirror::MirrorConfig;
pub use rollout::{GateCheck, GateConfig, GateWhen, HeaderValue, HotfixConfig, ProgressMeta};

/// One problem in a config file, located at a line and column (both 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every problem found in one config file; never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub(crate) fn single(file: &Path, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: 1,
            col: 1,
            message: message.into(),
        }])
    }
}

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

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub workers: usize,
    pub tls_listen: Vec<SocketAddr>,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    /// An upstream response body that sends nothing for this long is cut (0: never).
    pub body_timeout: Duration,
    /// A request body must arrive within this, extended by 1 s per `request_body_min_rate`
    /// bytes received, and never be silent for longer; else 408 (0: no limit).
    pub request_body_timeout: Duration,
    /// Bytes per second a request body earns its extra second with (0: no extension).
    pub request_body_min_rate: u64,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub drain_timeout: Duration,
    /// Upgrade protocols tunnelled (lower case); any other `Upgrade` is stripped and the
    /// request answered as plain HTTP/1.1. Never `h2c`.
    pub upgrades: Vec<String>,
    /// Where API changes and rollout progress are written instead of the config file
    /// (resolved against the config file's folder); `None`: into the config file itself.
    pub state_file: Option<PathBuf>,
    /// Name servers for backends by name; empty: the system's (`/etc/resolv.conf`, hosts).
    pub dns_servers: Vec<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            workers: 0,
            tls_listen: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(10),
            request_body_min_rate: 500,
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 65536,
            max_connections: 10000,
            drain_timeout: Duration::from_secs(30),
            upgrades: vec!["*".to_string()],
            state_file: None,
            dns_servers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_env: String,
    /// Host names the admin listener answers to besides its own address and localhost.
    pub hosts: Vec<AdminHost>,
    /// `[admin] tokens`: named tokens, each read from an env var; the name goes to the audit
    /// trail as who made a change.
    pub tokens: Vec<NamedToken>,
}

/// One `[admin] tokens` entry: `name = "env:VAR"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedToken {
    pub name: String,
    /// The env var holding the token (never the token itself: a config file is no place for it).
    pub env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token_env: "VEER_ADMIN_TOKEN".into(),
            hosts: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

/// `[log]`: veer's own log lines and the access log (SPEC.md §8).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// veer's own log lines on stderr.
    pub format: LogFormat,
    pub access: AccessTarget,
    pub access_format: AccessFormat,
    /// Fraction of requests logged (0..=1); 5xx answers and veer's own errors always are.
    pub access_sample: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            access: AccessTarget::Off,
            access_format: AccessFormat::Json,
            access_sample: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTarget {
    Off,
    Stdout,
    Stderr,
    /// A file, appended to (resolved against the config file's folder), reopened on SIGUSR1.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// One JSON object a line.
    Json,
    /// Apache/nginx combined, followed by veer's fields as `key=value`.
    Combined,
}

/// One `[admin] hosts` entry: `name` answers on any port, `name:port` on that port only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminHost {
    /// Lowercase, without a trailing dot; an IPv6 address keeps its brackets.
    pub name: String,
    pub port: Option<u16>,
}

impl AdminHost {
    /// Parse `name`, `name:port`, `IP`, `IP:port` or `[v6]:port`; `Err` says why not.
    pub fn parse(s: &str) -> Result<AdminHost, String> {
        if s.contains('*') {
            return Err(format!(
                "{s:?}: wildcards are not allowed; list each name the admin API is reached by"
            ));
        }
        let (name, port) = split_authority(s)
            .ok_or_else(|| format!("{s:?} is not a host name, host:port or IP address"))?;
        Ok(AdminHost { name, port })
    }

    /// Does a request's `Host` (already split by [`split_authority`]) name this entry?
    pub fn matches(&self, name: &str, port: Option<u16>) -> bool {
        self.name == name && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// Split an HTTP authority (`Host` header value) into its lowercased host, without a
/// trailing dot (an IPv6 literal keeps its brackets), and its port. `None` when it is not a
/// well-formed `host[:port]`: empty, userinfo, a path, spaces, a bad port.
pub fn split_authority(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        let (h, p) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let h = h.strip_suffix('.').unwrap_or(h);
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !ok {
            return None;
        }
        (h.to_ascii_lowercase(), p)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// `[cluster]`: the replicas sharing `prefix` on an etcd v3 cluster form one fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Member URLs (`http://` or `https://`).
    pub etcd: Vec<String>,
    /// Key prefix of the fleet, without a trailing `/`.
    pub prefix: String,
    /// This replica's name; empty: host name and admin port ([`ClusterConfig::node_name`]).
    pub node: String,
    pub lease_ttl: Duration,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    /// TLS to etcd (resolved against the config file's folder).
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClusterConfig {
    /// `node`, or `HOST:ADMIN_PORT` when it is empty.
    pub fn node_name(&self, admin: SocketAddr) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "veer".into());
        format!("{host}:{}", admin.port())
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    pub certificates: Vec<CertConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbKind {
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    H1,
    H2,
    H2c,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub addr: BackendAddr,
    pub weight: u32,
}

/// A backend as written: an address, or a name resolved to addresses (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendAddr {
    Ip(SocketAddr),
    /// `NAME:PORT`; `host` is lower case, without a trailing dot.
    Name {
        host: String,
        port: u16,
    },
}

impl BackendAddr {
    /// Parse `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT` (a DNS name of letters, digits, '-'
    /// and dots). None when it is none of them.
    pub fn parse(s: &str) -> Option<BackendAddr> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(BackendAddr::Ip(a));
        }
        let (host, port) = s.rsplit_once(':')?;
        let port =
            (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()))
                .then(|| port.parse::<u16>().ok())
                .flatten()
                .filter(|&p| p != 0)?;
        let host = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        // An all-digit last label would be a mistyped IPv4 address, not a name.
        let last_numeric = host
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) || last_numeric {
            return None;
        }
        Some(BackendAddr::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The address of an `IP:PORT` backend.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            BackendAddr::Ip(a) => Some(*a),
            BackendAddr::Name { .. } => None,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            BackendAddr::Ip(a) => a.port(),
            BackendAddr::Name { port, .. } => *port,
        }
    }
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAddr::Ip(a) => write!(f, "{a}"),
            BackendAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub sni: Option<String>,
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub backends: Vec<BackendConfig>,
    pub lb: LbKind,
    pub connect_timeout: Duration,
    pub protocol: Protocol,
    pub tls: Option<UpstreamTls>,
    pub health_check: Option<HealthCheckConfig>,
    pub circuit_breaker: BreakerConfig,
    /// Longest time between two resolutions of a name backend (its TTL may make it shorter).
    pub dns_refresh: Duration,
    /// A backend that starts taking traffic ramps from 10% to its full weight over this.
    pub slow_start: Option<Duration>,
}

/// `dns_refresh` when the pool does not set it.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive range of statuses that count as a pass.
    pub expect_status: (u16, u16),
    /// Random extra delay per probe, as a fraction of `interval`; 0 in tests.
    pub jitter: f64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/health".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expect_status: (200, 399),
            jitter: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// 0 disables the breaker.
    pub consecutive_failures: u32,
    pub open_for: Duration,
    pub half_open_requests: u32,
    /// 0 = unlimited.
    pub max_concurrent_requests: u32,
    /// Count a non-zero `grpc-status` as a failure.
    pub grpc_status_failures: bool,
    /// Random extra open time per trip, as a fraction of it; 0 in tests.
    pub jitter: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            open_for: Duration::from_secs(10),
            half_open_requests: 1,
            max_concurrent_requests: 0,
            grpc_status_failures: false,
            jitter: 0.1,
        }
    }
}

/// A host pattern of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    None,
    Cookie(StickyCookie),
    Header(String),
    ClientIp,
}

/// `sticky = { cookie = "veer_id", max_age = "30d", secure = true }`: the cookie veer sets
/// when a request has none (`Path=/; HttpOnly; SameSite=Lax`, plus these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    pub name: String,
    /// `Max-Age`; none: a session cookie.
    pub max_age: Option<std::time::Duration>,
    /// `Secure`: always (`true`), never (`false`), or by default only on TLS listeners.
    pub secure: Option<bool>,
}

impl StickyCookie {
    /// The `Set-Cookie` value for a new id, on a connection that is TLS or not.
    pub fn set_cookie(&self, id: &str, tls: bool) -> String {
        let max_age = self
            .max_age
            .map(|d| format!("; Max-Age={}", d.as_secs()))
            .unwrap_or_default();
        let secure = if self.secure.unwrap_or(tls) {
            "; Secure"
        } else {
            ""
        };
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Lax{max_age}{secure}",
            self.name
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Override {
    pub header: Option<String>,
    pub cookie: Option<String>,
    /// Peers that may force a pool (empty: any peer).
    pub allow_from: Vec<crate::config::pool_override::Cidr>,
    /// The env var `secret_env` named; with it, the value must be a token (see `tokens`).
    pub secret_env: Option<String>,
    /// With `secret_env`: the one valid value of each pool, computed at load so a request
    /// costs one constant-time compare.
    pub tokens: Option<crate::config::pool_override::Tokens>,
}

/// Where a route's traffic goes when the pool chosen for a request has nothing available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fallback {
    /// `fallback = false`: nowhere (503).
    Off,
    /// `fallback = "weighted"`: the route's other pools with a weight above 0.
    Weighted,
    /// `fallback = true`: those, then the route's pools at weight 0 (the idle slot).
    #[default]
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total tries, the first one included.
    pub attempts: u32,
    pub backoff: Duration,
    pub idempotent_only: bool,
    pub budget_percent: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            backoff: Duration::from_millis(25),
            idempotent_only: true,
            budget_percent: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub path_prefix: String,
    /// Pool name and relative weight, sorted by pool name.
    pub split: Vec<(String, u32)>,
    pub sticky: Sticky,
    pub override_: Option<Override>,
    pub fallback: Fallback,
    pub retry: RetryConfig,
    pub rollout: Option<RolloutConfig>,
    /// `[routes.mirror]` (SPEC §11).
    pub mirror: Option<MirrorConfig>,
}

impl RouteConfig {
    pub fn weight_of(&self, pool: &str) -> Option<u32> {
        self.split.iter().find(|(p, _)| p == pool).map(|(_, w)| *w)
    }
}

/// Where a rollout stands, as written back into the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Pending,
    /// Not started yet: waiting for the rollouts named in `after`, or for `before` gates.
    Waiting,
    Progressing,
    Paused,
    AwaitingApproval,
    Succeeded,
    RolledBack,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Pending => "pending",
            RolloutState::Waiting => "waiting",
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::AwaitingApproval => "awaiting_approval",
            RolloutState::Succeeded => "succeeded",
            RolloutState::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RolloutState::Pending,
            "waiting" => RolloutState::Waiting,
            "progressing" => RolloutState::Progressing,
            "paused" => RolloutState::Paused,
            "awaiting_approval" => RolloutState::AwaitingApproval,
            "succeeded" => RolloutState::Succeeded,
            "rolled_back" => RolloutState::RolledBack,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, RolloutState::Succeeded | RolloutState::RolledBack)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    pub to: String,
    pub steps: Vec<u32>,
    pub step_interval: Duration,
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_p99: Duration,
    pub approval: bool,
    pub approval_timeout: Duration,
    pub notify_url: Option<String>,
    /// Persisted progress: `None` when the file has none (a new rollout).
    pub state: Option<RolloutState>,
    /// Persisted index into `steps`.
    pub step: Option<usize>,
    /// SPEC §10: the routes whose rollouts must have succeeded before this one starts.
    pub after: Vec<String>,
    /// SPEC §10: external gates, in file order.
    pub gates: Vec<GateConfig>,
    /// SPEC §10: `to`'s error rate may be at most this multiple of the baseline's (plus
    /// `max_error_rate`).
    pub max_error_rate_vs_baseline: Option<f64>,
    /// SPEC §10: `[routes.rollout.hotfix]`.
    pub hotfix: Option<HotfixConfig>,
    /// Persisted with `state`/`step`: the step's clock, fingerprint, hotfix run.
    pub progress: ProgressMeta,
    /// SPEC §11: `steps` starts with `"mirror"` (held in `steps` as 0): no user is moved,
    /// and the step is judged on the route's compared mirror copies.
    pub mirror_step: bool,
    /// SPEC §11: the most compared copies that may differ in the mirror step (0..=1).
    pub max_diff_rate: f64,
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
