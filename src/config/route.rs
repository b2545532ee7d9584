//! A typed `[[routes]]`: host patterns, sticky users, the override, fallback, retries, and
//! its `[routes.rollout]` with the rollout's state.

use super::{GateConfig, HotfixConfig, MirrorConfig, ProgressMeta};
use std::fmt;
use std::time::Duration;

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
    /// Boxed, as the mirror: most routes have neither, and a route's memory counts (issue 15).
    pub rollout: Option<Box<RolloutConfig>>,
    /// `[routes.mirror]` (SPEC §11).
    pub mirror: Option<Box<MirrorConfig>>,
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
