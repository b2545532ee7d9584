//! Active health checks.
//!
//! One task per checked backend ([`spawn`]) sends `GET path` through the backend's own pooled
//! client (so a probe reuses a kept-alive connection), every `interval` plus a little jitter,
//! and flips the backend's health after `healthy_threshold` / `unhealthy_threshold`
//! consecutive results ([`Tracker`]). The request path only reads the verdict, an atomic.
//!
//! A backend that has never passed takes no traffic; its first pass makes it healthy at once
//! (Envoy does the same for new hosts), after that the thresholds apply.

use crate::config::HealthCheckConfig;
use crate::upstream::http_client::UpBody;
use crate::upstream::{Backend, Health};
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri, Version};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// Sent on every probe, so backends can tell probes from users in their logs.
pub const USER_AGENT: &str = "veer-health-check";

/// A probe answer body is read (to keep the connection reusable) up to this size.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Start the health checker of a backend whose pool has a `health_check`. A checker started
/// earlier for the same backend stops.
pub fn spawn(backend: &Arc<Backend>, tasks: &TaskTracker) {
    let epoch = backend.next_health_epoch();
    tasks.spawn(run(backend.clone(), epoch));
}

/// Consecutive probe results turned into health verdicts.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    passes: u32,
    failures: u32,
    ever_passed: bool,
}

impl Tracker {
    /// A tracker for a backend whose health is `current` now (a checker restarted by a reload
    /// keeps the verdict it finds; only a backend never judged gets the first-pass rule).
    pub fn new(current: Health) -> Self {
        Tracker {
            ever_passed: current != Health::Unknown,
            ..Tracker::default()
        }
    }

    /// Feed one probe result; returns the new health when it changes.
    pub fn observe(
        &mut self,
        current: Health,
        pass: bool,
        hc: &HealthCheckConfig,
    ) -> Option<Health> {
        if pass {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
        }
        let first_pass = pass && !self.ever_passed;
        self.ever_passed |= pass;
        let next = match current {
            _ if first_pass => Health::Healthy,
            Health::Unhealthy if self.passes >= hc.healthy_threshold => Health::Healthy,
            Health::Healthy | Health::Unknown if self.failures >= hc.unhealthy_threshold => {
                Health::Unhealthy
            }
            h => h,
        };
        (next != current).then_some(next)
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("status {0} outside {1}-{2}")]
    Status(u16, u16, u16),
    #[error("request failed: {0}")]
    Request(#[source] crate::upstream::http_client::UpstreamError),
    #[error("invalid probe URI: {0}")]
    Uri(#[source] http::Error),
}

/// Probe a backend once.
pub async fn probe(b: &Backend, hc: &HealthCheckConfig) -> Result<(), ProbeError> {
    let client = b.client();
    let uri = Uri::builder()
        .scheme(client.scheme)
        .authority(client.authority.clone())
        .path_and_query(hc.path.as_str())
        .build()
        .map_err(ProbeError::Uri)?;
    let mut req = Request::new(UpBody::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    *req.version_mut() = if client.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let exchange = async {
        let (resp, mut checkin) = client.send(req).await.map_err(ProbeError::Request)?;
        let status = resp.status().as_u16();
        // Read a small body to its end so the connection goes back to the pool; a large one
        // is dropped (that connection closes, which is fine for a probe).
        let mut body = resp.into_body();
        let mut read = 0usize;
        loop {
            match body.frame().await {
                None => {
                    checkin.release();
                    break;
                }
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, |d| d.len());
                    if read > MAX_PROBE_BODY {
                        break;
                    }
                }
                Some(Err(_)) => break,
            }
        }
        Ok(status)
    };
    let status = tokio::time::timeout(hc.timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout(hc.timeout))??;
    let (lo, hi) = hc.expect_status;
    if (lo..=hi).contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::Status(status, lo, hi))
    }
}

/// The delay before the next probe: `interval` stretched by up to `jitter` of itself, so the
/// probes of many backends do not line up.
fn next_delay(hc: &HealthCheckConfig) -> Duration {
    let jitter = hc.jitter.clamp(0.0, 1.0);
    if jitter == 0.0 {
        return hc.interval;
    }
    hc.interval.mul_f64(1.0 + jitter * rand::random::<f64>())
}

/// The checker loop: probe now, then every interval, until the backend closes, the pool drops
/// its health check, or a newer checker replaces this one.
async fn run(b: Arc<Backend>, epoch: u64) {
    let mut tracker = Tracker::new(b.health());
    loop {
        if b.closed.is_cancelled() || b.health_epoch() != epoch || !b.is_checked() {
            return;
        }
        let pc = b.pool_config();
        let Some(hc) = pc.health_check.as_ref() else {
            return;
        };
        let result = tokio::select! {
            r = probe(&b, hc) => r,
            _ = b.closed.cancelled() => return,
        };
        if b.health_epoch() != epoch {
            // Checks were switched off (or restarted) while this probe ran: its verdict is stale.
            return;
        }
        if let Err(e) = &result {
            tracing::debug!(backend = %b.id, error = %e, "health probe failed");
        }
        let current = b.health();
        if let Some(next) = tracker.observe(current, result.is_ok(), hc) {
            b.set_health(next);
            match (&result, next) {
                (Err(e), _) => {
                    tracing::warn!(backend = %b.id, from = current.as_str(), to = next.as_str(), reason = %e, "backend health changed")
                }
                (Ok(()), _) => {
                    tracing::info!(backend = %b.id, from = current.as_str(), to = next.as_str(), "backend health changed")
                }
            }
        }
        let delay = next_delay(hc);
        let wake = b.health_wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if b.health_epoch() != epoch {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake => {}
            _ = b.closed.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(healthy: u32, unhealthy: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            jitter: 0.0,
            ..HealthCheckConfig::default()
        }
    }

    /// Feed results and return the health after each.
    fn run(start: Health, results: &[bool], hc: &HealthCheckConfig) -> Vec<Health> {
        let mut t = Tracker::new(start);
        let mut h = start;
        results
            .iter()
            .map(|&r| {
                if let Some(n) = t.observe(h, r, hc) {
                    h = n;
                }
                h
            })
            .collect()
    }

    use Health::{Healthy as H, Unhealthy as U, Unknown as K};

    #[test]
    fn first_pass_makes_a_new_backend_healthy_at_once() {
        assert_eq!(run(K, &[true], &hc(3, 3)), vec![H]);
    }

    #[test]
    fn new_backend_failing_becomes_unhealthy_after_threshold_then_one_pass_admits_it() {
        assert_eq!(run(K, &[false, false, true], &hc(3, 2)), vec![K, U, H]);
    }

    #[test]
    fn thresholds_apply_after_the_first_pass() {
        let c = hc(2, 3);
        assert_eq!(
            run(
                K,
                &[true, false, false, true, false, false, false, true, true],
                &c
            ),
            vec![H, H, H, H, H, H, U, U, H]
        );
    }

    #[test]
    fn one_failure_between_passes_resets_the_count() {
        assert_eq!(
            run(U, &[true, false, true, true], &hc(2, 1)),
            vec![U, U, U, H]
        );
    }

    #[test]
    fn zero_jitter_is_exact() {
        let c = hc(1, 1);
        assert_eq!(next_delay(&c), c.interval);
        let j = HealthCheckConfig {
            jitter: 0.5,
            ..c.clone()
        };
        for _ in 0..100 {
            let d = next_delay(&j);
            assert!(d >= j.interval && d <= j.interval.mul_f64(1.5));
        }
    }
}
