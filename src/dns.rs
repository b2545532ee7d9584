//! Resolving backend names (SPEC §9): A and AAAA records through hickory-resolver, with the
//! system's configuration (`/etc/resolv.conf`, `/etc/hosts`) or the name servers of
//! `[server] dns_servers`. Only background tasks and `veer check` resolve; a request never
//! waits on DNS.

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::time::Duration;

/// The shortest time between two lookups of one name, whatever its TTL.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// A resolver for backend names.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    servers: Vec<SocketAddr>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("servers", &self.servers)
            .finish()
    }
}

/// What one lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Sorted, without duplicates, each with the backend's port.
    pub addrs: Vec<SocketAddr>,
    /// How long the records may be kept (their TTL).
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read the system resolver configuration: {0}")]
    System(String),
    #[error("{0}")]
    Lookup(String),
    #[error("no A or AAAA record")]
    Empty,
}

impl Resolver {
    /// The system's resolver when `servers` is empty, else one asking these name servers
    /// (UDP, then TCP for truncated answers) and not reading `/etc/hosts`.
    pub fn new(servers: &[SocketAddr]) -> Result<Self, DnsError> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| DnsError::System(e.to_string()))?
        } else {
            let mut group = NameServerConfigGroup::with_capacity(servers.len() * 2);
            for &s in servers {
                group.push(NameServerConfig::new(s, Protocol::Udp));
                group.push(NameServerConfig::new(s, Protocol::Tcp));
            }
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                provider,
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts = builder.options_mut();
        // Both families: a name may have only AAAA records, or both.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        // veer asks again only when the TTL ran out; a cache would only hide changes.
        opts.cache_size = 0;
        Ok(Resolver {
            inner: builder.build(),
            servers: servers.to_vec(),
        })
    }

    /// The name servers this resolver asks (empty: the system's).
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Look `host` up (A and AAAA); every address gets `port`.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Resolution, DnsError> {
        // Search domains and ndots apply as the system's resolver would apply them.
        let found = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| DnsError::Lookup(e.to_string()))?;
        let ttl = found
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        let mut addrs: Vec<SocketAddr> = found
            .iter()
            .map(|ip| SocketAddr::new(ip.to_canonical(), port))
            .collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(DnsError::Empty);
        }
        Ok(Resolution { addrs, ttl })
    }
}

/// When to look a name up again: its TTL, bounded by [`MIN_REFRESH`] and the pool's
/// `dns_refresh`.
pub fn refresh_after(ttl: Duration, dns_refresh: Duration) -> Duration {
    ttl.clamp(MIN_REFRESH, dns_refresh.max(MIN_REFRESH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_bounded() {
        let s = Duration::from_secs;
        assert_eq!(refresh_after(Duration::ZERO, s(30)), s(1));
        assert_eq!(refresh_after(s(5), s(30)), s(5));
        assert_eq!(refresh_after(s(300), s(30)), s(30));
    }
}
