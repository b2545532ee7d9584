//! A typed `[pools.*]`: its backends (addresses or names), balancing, protocol, upstream TLS,
//! health checks and circuit breaker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    pub tls: Option<Box<UpstreamTls>>,
    pub health_check: Option<Box<HealthCheckConfig>>,
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
