//! The retry rules (SPEC §2 `[routes.retry]`) and one attempt's accounting.
//!
//! A request whose body started streaming is never sent again; a connect failure is retried
//! for any method (nothing reached a backend); a reset before the answer for idempotent
//! methods, or when the body was never sent (the backend did not get the whole request); a
//! 502/503/504 or timeout for idempotent methods only (unless `idempotent_only = false`),
//! because the backend may have acted on the request. Retries are paid for from the route's
//! budget (`RouteCounters::withdraw`), so a failing pool cannot double its own load.

use crate::config::RetryConfig;
use crate::routing::Route;
use crate::upstream::http_client::{
    grpc_verdict, BodySlot, Checkin, ErrorSource, GrpcVerdict, UpstreamBody, UpstreamError,
};
use crate::upstream::{Backend, Lease};
use http::{Method, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::body::ClientFault;

/// What one attempt came to.
pub(super) enum Outcome {
    Response(Response<UpstreamBody>, Checkin),
    /// A failed exchange (also a connection cut by a drain timeout, and a client's body that
    /// failed: see [`UpstreamError::side`]).
    Error(UpstreamError),
    Timeout,
}

/// Where an attempt is accounted: the route, the pool (index in the route), the backend and
/// its slot in the pool, and when the attempt started.
pub(super) struct Attempt<'a> {
    pub route: &'a Route,
    pub pool: usize,
    pub backend: &'a Arc<Backend>,
    pub slot: usize,
    pub started: Instant,
}

impl Outcome {
    /// Account the attempt, once, whatever comes next (a retry or the answer): the lease's
    /// verdict (balancer and breaker), the route's status counters and latency, and the
    /// rollout step. A client's body that failed is the client's fault: counted under its
    /// status, and nothing else (no breaker, gate or 5xx).
    pub(super) fn record(&self, at: &Attempt<'_>, lease: &mut Lease) {
        match self {
            Outcome::Response(resp, _) => {
                let status = resp.status();
                // gRPC statuses count only where the pool says so; most come in the trailers,
                // judged by the body as they pass.
                let grpc = grpc_verdict(at.backend, resp.headers());
                let failed = status.is_server_error() || grpc == GrpcVerdict::Failed;
                if grpc != GrpcVerdict::AtTrailers {
                    lease.record(!failed);
                }
                let took = at.started.elapsed();
                at.route.metrics.duration[at.pool].observe(took.as_secs_f64());
                at.count(status.as_u16(), Some(took));
                at.observe_rollout(failed);
            }
            Outcome::Error(e) if e.side() == ErrorSource::Downstream => {
                at.count(e.client_fault().unwrap_or(ClientFault::Gone).code(), None);
            }
            Outcome::Error(e) => {
                lease.record(false);
                at.count(502, None);
                at.observe_rollout(true);
                at.warn(e);
            }
            Outcome::Timeout => {
                lease.record(false);
                at.count(504, None);
                at.observe_rollout(true);
                at.warn(&"timeout: no response headers within request_timeout");
            }
        }
    }
}

impl Attempt<'_> {
    /// A failed attempt (connect refused, reset, timeout, broken answer) at warn, naming the
    /// route, pool and backend: at most once per backend every
    /// [`WARN_EVERY_MS`](crate::upstream::backend::WARN_EVERY_MS), saying how many failed
    /// meanwhile, so a dead backend does not flood the log.
    fn warn(&self, error: &dyn std::fmt::Display) {
        if let Some(unlogged) = self.backend.warn_failure() {
            tracing::warn!(
                route = %self.route.config.name,
                pool = %self.route.pools[self.pool].name,
                backend = %self.backend.addr_label,
                unlogged,
                "upstream attempt failed: {error}"
            );
        }
    }

    fn count(&self, status: u16, took: Option<Duration>) {
        count(self.route, self.pool, self.backend, self.slot, status, took);
    }

    /// Feed the route's running rollout step, if any (atomics only).
    fn observe_rollout(&self, failed: bool) {
        if self.route.config.rollout.is_some() {
            let name = &self.route.pools[self.pool].name;
            crate::rollout::observe(
                &self.route.state.rollout,
                name,
                failed,
                self.started.elapsed(),
            );
        }
    }
}

/// Count a status under the backend that answered (or failed), and the time to its answer's
/// headers when it answered (the status console's per-backend p99).
pub(super) fn count(
    route: &Route,
    pool: usize,
    backend: &Arc<Backend>,
    slot: usize,
    status: u16,
    took: Option<Duration>,
) {
    let backends = &route.pools[pool].backends;
    // The lease's slot is right unless the backend came from a newer snapshot (`pick_live`).
    let i = if backends.get(slot).is_some_and(|b| Arc::ptr_eq(b, backend)) {
        Some(slot)
    } else {
        backends.iter().position(|b| Arc::ptr_eq(b, backend))
    };
    if let Some(i) = i {
        let c = &route.metrics.codes[pool][i];
        c.inc(status);
        if let Some(took) = took {
            c.observe_latency(took);
        }
    }
}

/// What the rules allow after an attempt that was not the client's fault.
pub(super) struct Allowed {
    /// Another attempt is left and the body never started streaming.
    any: bool,
    /// … and the method may be sent twice (or the route allows any).
    pub idempotent: bool,
    /// There is a body and none of it was sent.
    body_unsent: bool,
}

impl Allowed {
    pub(super) fn after(
        attempt: u32,
        retry: &RetryConfig,
        idempotent: bool,
        slot: Option<&BodySlot>,
    ) -> Allowed {
        let body_taken = slot.is_some_and(|s| s.is_taken());
        let any = attempt < retry.attempts && !body_taken;
        Allowed {
            any,
            idempotent: any && (idempotent || !retry.idempotent_only),
            body_unsent: slot.is_some() && !body_taken,
        }
    }

    /// After a failed exchange: a connect failure, or a reset before any of the body went,
    /// is retried for any method; anything else for idempotent ones.
    pub(super) fn after_error(&self, connect: bool) -> bool {
        ((connect || self.body_unsent) && self.any) || self.idempotent
    }
}

pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The wait before attempt `attempt` (2 or more): exponential from `backoff`, with jitter
/// (half to all of it), so retries of many requests do not arrive together.
pub(super) fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let base = retry.backoff.as_secs_f64() * 2f64.powi(attempt as i32 - 2);
    let jittered = base * (0.5 + rand::random::<f64>() * 0.5);
    if jittered > 0.0 {
        Duration::from_secs_f64(jittered)
    } else {
        Duration::ZERO
    }
}
