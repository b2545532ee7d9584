//! The typed `[server]`, `[admin]`, `[log]`, `[cluster]` and `[tls]` sections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
