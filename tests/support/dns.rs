//! A real DNS server on loopback for backends by name: hickory-server answering from an
//! in-memory zone on 127.0.0.1:0 (UDP and TCP), whose records a test changes while it runs and
//! which it can stop.

use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A running DNS server authoritative for one zone.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<InMemoryAuthority>,
    origin: Name,
    serial: AtomicU32,
    stop: CancellationToken,
}

impl DnsServer {
    /// Serve an empty zone `origin` (like "test.") on 127.0.0.1:0.
    pub async fn start(origin: &str) -> DnsServer {
        let origin = Name::from_str(origin).unwrap();
        let zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
        let soa = SOA::new(
            Name::from_str(&format!("ns.{origin}")).unwrap(),
            Name::from_str(&format!("admin.{origin}")).unwrap(),
            1,
            3600,
            600,
            86400,
            1,
        );
        zone.upsert(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1)
            .await;
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![zone.clone()]);
        // UDP and TCP on one port: a port free for UDP may be taken for TCP; try another.
        let (udp, tcp) = 'bind: {
            for _ in 0..50 {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
                    break 'bind (udp, tcp);
                }
            }
            panic!("no port free for both UDP and TCP");
        };
        let addr = udp.local_addr().unwrap();
        let mut server = ServerFuture::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, std::time::Duration::from_secs(5));
        let stop = server.shutdown_token().clone();
        tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        DnsServer {
            addr,
            zone,
            origin,
            serial: AtomicU32::new(1),
            stop,
        }
    }

    /// The full name of `label` in the zone ("api" → "api.test").
    pub fn name(&self, label: &str) -> String {
        format!("{label}.{}", self.origin)
            .trim_end_matches('.')
            .to_string()
    }

    /// Make `label`'s A and AAAA records exactly `ips`, with this TTL (seconds).
    pub async fn set(&self, label: &str, ips: &[IpAddr], ttl: u32) {
        let name = Name::from_str(&format!("{label}.{}", self.origin)).unwrap();
        let serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut records = self.zone.records_mut().await;
            for t in [RecordType::A, RecordType::AAAA] {
                records.remove(&RrKey::new(LowerName::new(&name), t));
            }
        }
        for ip in ips {
            let data = match ip {
                IpAddr::V4(a) => RData::A(A(*a)),
                IpAddr::V6(a) => RData::AAAA(AAAA(*a)),
            };
            assert!(
                self.zone
                    .upsert(Record::from_rdata(name.clone(), ttl, data), serial)
                    .await
            );
        }
    }

    /// Stop answering (the port closes).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An upstream for backends by name, bound to a given address (names give every address the
/// same port, so tests use 127.0.0.1:P, 127.0.0.2:P, … or [::1]:P).
pub struct NamedUpstream {
    pub up: super::Upstream,
    /// `/health` answers 200 while set, else 503.
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    /// `/slow` answers once a permit is added here.
    pub release: Arc<tokio::sync::Semaphore>,
    /// Requests seen on paths other than `/health`.
    pub served: Arc<std::sync::atomic::AtomicUsize>,
}

impl NamedUpstream {
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// A [`NamedUpstream`] on `addr` answering `name` (healthy at first).
pub async fn named_upstream(addr: SocketAddr, name: &'static str) -> NamedUpstream {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h, r, s) = (healthy.clone(), release.clone(), served.clone());
    let handler: super::Handler = Arc::new(move |req| {
        let (h, r, s) = (h.clone(), r.clone(), s.clone());
        Box::pin(async move {
            match req.uri().path() {
                "/health" if h.load(Ordering::SeqCst) => super::respond(200, "ok"),
                "/health" => super::respond(503, "down"),
                path => {
                    s.fetch_add(1, Ordering::SeqCst);
                    if path == "/slow" {
                        r.acquire().await.unwrap().forget();
                    }
                    super::respond(200, name)
                }
            }
        })
    });
    NamedUpstream {
        up: super::upstream_on(listener, handler).await,
        healthy,
        release,
        served,
    }
}

/// Can this machine bind the IPv6 loopback? (Some CI containers have no IPv6.)
pub fn have_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// A port free on every address in `ips` (bound on the first, tried on the rest).
pub fn common_port(ips: &[IpAddr]) -> u16 {
    'again: for _ in 0..50 {
        let first = std::net::TcpListener::bind(SocketAddr::new(ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        for ip in &ips[1..] {
            if std::net::TcpListener::bind(SocketAddr::new(*ip, port)).is_err() {
                continue 'again;
            }
        }
        return port;
    }
    panic!("no port free on all of {ips:?}");
}

/// An upstream on `addr` answering with the request head it saw (as
/// [`super::echo_head_upstream`] does: a first line, then `name: value` lines).
pub async fn echo_head_at(addr: SocketAddr) -> super::Upstream {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let handler: super::Handler = Arc::new(|req| {
        Box::pin(async move {
            let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<bin>")));
            }
            super::respond(200, out)
        })
    });
    super::upstream_on(listener, handler).await
}
