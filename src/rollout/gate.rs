//! The gate a rollout step must pass, and the fail-fast rule that ends a step early.
//!
//! At the end of `step_interval` the step is judged on everything the rolled-out pool saw in
//! the step: it passes when the pool had at least `min_requests` requests, an error rate of at
//! most `max_error_rate`, a p99 latency of at most `max_p99`, and still has a healthy backend
//! (health-checked or unchecked, not draining, breaker not open).
//! Fewer requests: the step waits (and is judged as soon as they arrive).
//!
//! p99 ≤ `max_p99` is decided exactly, without the histogram: with `n` requests the
//! nearest-rank p99 is at most `max_p99` exactly when no more than `n - ceil(0.99 n)` of them
//! were slower.
//!
//! **Fail fast.** Waiting out the step when the pool is plainly broken would serve errors for
//! nothing, so the controller also checks continuously and rolls back before the step ends
//! when a breach is beyond reasonable doubt — judged on at least `min_requests` requests (and
//! at least one), and either
//! - a run of failures: the last `min_requests` requests all failed, and a pool failing at
//!   exactly `max_error_rate` would produce such a run with less than 0.1% chance; or
//! - a significant excess: the failures (or the slow requests, against the 1% a p99 allows)
//!   are so far above the allowed rate that a pool within the limit would show that many with
//!   less than 0.1% chance. The chance is bounded with the Chernoff bound
//!   `P[X ≥ k] ≤ exp(-n · KL(k/n ‖ p))`, so the test errs on the side of waiting.
//!
//! With `max_error_rate = 0` any failure is a certain breach (the step's count can only grow).

use super::stats::Figures;
use crate::config::RolloutConfig;

/// How sure a fail-fast verdict must be: the chance that a pool within the limit shows the
/// figures seen is below this.
pub const FAIL_FAST_CONFIDENCE: f64 = 0.001;

/// The outcome of judging a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// Not enough evidence yet; the reason says what is missing.
    Wait(String),
    Fail(String),
}

/// The most slow requests (over `max_p99`) that `n` requests may have with p99 ≤ `max_p99`.
pub fn slow_allowed(n: u64) -> u64 {
    n - (n * 99).div_ceil(100)
}

/// Judge a rollout's "mirror" step whose interval is over (SPEC §11): no user is on `to`,
/// so the step is judged on the route's mirrored copies compared in the step. It passes with
/// at least `min_requests` compared copies of which at most `max_diff_rate` differed, and
/// `to` still able to take traffic.
pub fn judge_mirror(
    def: &RolloutConfig,
    m: &crate::metrics::step::MirrorFigures,
    healthy: bool,
    to: &str,
) -> Verdict {
    if !healthy {
        return Verdict::Fail(format!(
            "pool {to} has no backend that can take traffic (healthy, not draining, breaker not open)"
        ));
    }
    if m.compared < def.min_requests {
        return Verdict::Wait(format!(
            "waiting for mirrored traffic: {} of {} copies to {to} compared",
            m.compared, def.min_requests
        ));
    }
    if m.diff_rate() > def.max_diff_rate {
        return Verdict::Fail(format!(
            "difference rate {} over {}: {} of {} mirrored copies to {to} answered differently",
            pct(m.diff_rate()),
            pct(def.max_diff_rate),
            m.differ,
            m.compared
        ));
    }
    Verdict::Pass
}

/// Judge a step whose interval is over.
pub fn judge(def: &RolloutConfig, f: &Figures, healthy: bool, to: &str) -> Verdict {
    let c = &f.canary;
    if !healthy {
        return Verdict::Fail(format!(
            "pool {to} has no backend that can take traffic (healthy, not draining, breaker not open)"
        ));
    }
    if c.requests < def.min_requests {
        return Verdict::Wait(format!(
            "waiting for traffic: {} of {} requests to {to}",
            c.requests, def.min_requests
        ));
    }
    if c.error_rate() > allowed_error_rate(def, f) {
        return Verdict::Fail(format!(
            "error rate {} over {}: {} of {} requests to {to} failed",
            pct(c.error_rate()),
            allowed_text(def, f),
            c.failures,
            c.requests
        ));
    }
    if c.slow > slow_allowed(c.requests) {
        return Verdict::Fail(slow_reason(def, f, to));
    }
    Verdict::Pass
}

fn slow_reason(def: &RolloutConfig, f: &Figures, to: &str) -> String {
    let c = &f.canary;
    format!(
        "p99 over {}: {} of {} requests to {to} were slower ({} allowed)",
        crate::config::format_duration(def.max_p99),
        c.slow,
        c.requests,
        slow_allowed(c.requests)
    )
}

/// The error rate `to` may have in the step: `max_error_rate`, or with
/// `max_error_rate_vs_baseline = m` the baseline's rate in the same step times `m`, plus
/// `max_error_rate` as slack (SPEC §10). With the comparison, `to` is judged against the
/// baseline instead of an absolute limit: when both pools fail alike (a shared dependency is
/// down) the release is not to blame, and `to` failing at three times the baseline's rate is.
pub fn allowed_error_rate(def: &RolloutConfig, f: &Figures) -> f64 {
    match def.max_error_rate_vs_baseline {
        None => def.max_error_rate,
        Some(m) => (m * f.baseline.error_rate() + def.max_error_rate).min(1.0),
    }
}

fn allowed_text(def: &RolloutConfig, f: &Figures) -> String {
    match def.max_error_rate_vs_baseline {
        None => pct(def.max_error_rate),
        Some(m) => format!(
            "{} ({m}× the baseline's {} plus {})",
            pct(allowed_error_rate(def, f)),
            pct(f.baseline.error_rate()),
            pct(def.max_error_rate)
        ),
    }
}

/// A breach certain enough to roll back before the step ends; see the module docs.
pub fn fail_fast(def: &RolloutConfig, f: &Figures, to: &str) -> Option<String> {
    let c = &f.canary;
    let allowed = allowed_error_rate(def, f);
    if let Some(r) = run_of_failures(def, allowed, c.streak, to) {
        return Some(r);
    }
    if c.requests < def.min_requests.max(1) {
        return None;
    }
    if c.failures > 0 && significant(c.failures, c.requests, allowed) {
        return Some(format!(
            "error rate {} over {}: {} of {} requests to {to} failed (fail fast)",
            pct(c.error_rate()),
            allowed_text(def, f),
            c.failures,
            c.requests
        ));
    }
    if c.slow > slow_allowed(c.requests) && significant(c.slow, c.requests, 0.01) {
        return Some(format!("{} (fail fast)", slow_reason(def, f, to)));
    }
    None
}

/// The "mirror" step's fail fast (SPEC §11): at least `min_requests` (and one) compared
/// copies, of which so many differed that a pool within `max_diff_rate` would show that many
/// with less than [`FAIL_FAST_CONFIDENCE`] chance. No user is on `to` yet, but a release that
/// plainly answers differently need not wait out the step.
pub fn fail_fast_mirror(
    def: &RolloutConfig,
    m: &crate::metrics::step::MirrorFigures,
    to: &str,
) -> Option<String> {
    if m.compared < def.min_requests.max(1) || !significant(m.differ, m.compared, def.max_diff_rate)
    {
        return None;
    }
    Some(format!(
        "difference rate {} over {}: {} of {} mirrored copies to {to} answered differently (fail fast)",
        pct(m.diff_rate()),
        pct(def.max_diff_rate),
        m.differ,
        m.compared
    ))
}

/// The last `min_requests` (at least one) requests all failed, and such a run is unlikely
/// for a pool failing at the allowed rate.
fn run_of_failures(def: &RolloutConfig, p: f64, streak: u64, to: &str) -> Option<String> {
    if streak < def.min_requests.max(1) {
        return None;
    }
    let unlikely = p <= 0.0 || (p < 1.0 && streak as f64 * p.ln() < FAIL_FAST_CONFIDENCE.ln());
    unlikely.then(|| format!("the last {streak} requests to {to} all failed (fail fast)"))
}

/// Is `k` of `n` so far above the rate `p` that a pool at rate `p` would show it with less
/// than [`FAIL_FAST_CONFIDENCE`] chance? (Chernoff bound on the binomial tail.)
pub fn significant(k: u64, n: u64, p: f64) -> bool {
    if n == 0 || k == 0 {
        return false;
    }
    if p <= 0.0 {
        return true;
    }
    if p >= 1.0 {
        return false;
    }
    let q = k as f64 / n as f64;
    if q <= p {
        return false;
    }
    n as f64 * kl(q, p) > -FAIL_FAST_CONFIDENCE.ln()
}

/// Kullback–Leibler divergence of Bernoulli(q) from Bernoulli(p), 0 < p < 1.
fn kl(q: f64, p: f64) -> f64 {
    let a = if q > 0.0 { q * (q / p).ln() } else { 0.0 };
    let b = if q < 1.0 {
        (1.0 - q) * ((1.0 - q) / (1.0 - p)).ln()
    } else {
        0.0
    };
    a + b
}

/// A rate as a percentage for messages: "1.5%".
pub fn pct(r: f64) -> String {
    let p = r * 100.0;
    if p == p.trunc() {
        format!("{p:.0}%")
    } else if p >= 1.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::stats::SideFigures;
    use std::time::Duration;

    fn def(min: u64, rate: f64) -> RolloutConfig {
        RolloutConfig {
            to: "green".into(),
            steps: vec![5, 25, 50, 100],
            step_interval: Duration::from_secs(60),
            min_requests: min,
            max_error_rate: rate,
            max_p99: Duration::from_millis(500),
            approval: false,
            approval_timeout: Duration::from_secs(1800),
            notify_url: None,
            state: None,
            step: None,
            after: Vec::new(),
            gates: Vec::new(),
            max_error_rate_vs_baseline: None,
            hotfix: None,
            progress: Default::default(),
            mirror_step: false,
            max_diff_rate: 0.01,
        }
    }

    #[test]
    fn the_mirror_step_fails_fast_only_beyond_reasonable_doubt() {
        use crate::metrics::step::MirrorFigures;
        let d = def(20, 0.0);
        let d = RolloutConfig {
            max_diff_rate: 0.05,
            ..d
        };
        let m = |compared, differ| MirrorFigures { compared, differ };
        // Too few copies compared: never, however many differ.
        assert_eq!(fail_fast_mirror(&d, &m(19, 19), "green"), None);
        // 3 of 40 at an allowed 5%: quite possible for a pool within the limit.
        assert_eq!(fail_fast_mirror(&d, &m(40, 3), "green"), None);
        // Half of them differ: certain.
        let r = fail_fast_mirror(&d, &m(40, 20), "green").unwrap();
        assert_eq!(
            r,
            "difference rate 50% over 5%: 20 of 40 mirrored copies to green answered differently (fail fast)"
        );
        // With max_diff_rate = 0 one differing copy is a certain breach.
        let strict = RolloutConfig {
            max_diff_rate: 0.0,
            ..def(1, 0.0)
        };
        assert!(fail_fast_mirror(&strict, &m(1, 1), "green").is_some());
        assert_eq!(fail_fast_mirror(&strict, &m(5, 0), "green"), None);
    }

    fn fig(requests: u64, failures: u64, slow: u64, streak: u64) -> Figures {
        Figures {
            canary: SideFigures {
                requests,
                failures,
                slow,
                streak,
                p99: None,
            },
            baseline: SideFigures::default(),
        }
    }

    #[test]
    fn judge_waits_passes_fails() {
        let d = def(100, 0.01);
        assert!(
            matches!(judge(&d, &fig(99, 0, 0, 0), true, "green"), Verdict::Wait(r) if r.contains("99 of 100"))
        );
        assert_eq!(judge(&d, &fig(100, 1, 1, 0), true, "green"), Verdict::Pass);
        assert!(
            matches!(judge(&d, &fig(100, 2, 0, 0), true, "green"), Verdict::Fail(r) if r.contains("error rate 2%"))
        );
        assert!(
            matches!(judge(&d, &fig(100, 0, 2, 0), true, "green"), Verdict::Fail(r) if r.contains("p99"))
        );
        assert!(
            matches!(judge(&d, &fig(1000, 0, 0, 0), false, "green"), Verdict::Fail(r) if r.contains("healthy"))
        );
    }

    #[test]
    fn baseline_comparison_judges_against_the_baseline() {
        let mut d = def(100, 0.01);
        d.max_error_rate_vs_baseline = Some(2.0);
        let both = |to_fail: u64, base_fail: u64| Figures {
            canary: SideFigures {
                requests: 1000,
                failures: to_fail,
                ..Default::default()
            },
            baseline: SideFigures {
                requests: 1000,
                failures: base_fail,
                ..Default::default()
            },
        };
        // Both at 10%: passes (the absolute 1% alone would fail it), and no fail fast.
        assert_eq!(judge(&d, &both(100, 100), true, "green"), Verdict::Pass);
        assert!(fail_fast(&d, &both(100, 100), "green").is_none());
        // `to` at 3× the baseline: fails, and the reason says against what.
        match judge(&d, &both(300, 100), true, "green") {
            Verdict::Fail(r) => assert!(r.contains("2× the baseline's 10% plus 1%"), "{r}"),
            v => panic!("{v:?}"),
        }
        // A clean baseline leaves the slack: 1% passes, 2% fails.
        assert_eq!(judge(&d, &both(10, 0), true, "green"), Verdict::Pass);
        assert!(matches!(
            judge(&d, &both(20, 0), true, "green"),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn slow_allowance_is_nearest_rank() {
        assert_eq!(slow_allowed(0), 0);
        assert_eq!(slow_allowed(99), 0);
        assert_eq!(slow_allowed(100), 1);
        assert_eq!(slow_allowed(199), 1);
        assert_eq!(slow_allowed(200), 2);
    }

    #[test]
    fn fail_fast_needs_evidence() {
        let d = def(100, 0.01);
        // 10% failing: certain once enough requests are in.
        assert!(
            fail_fast(&d, &fig(50, 5, 0, 0), "green").is_none(),
            "below min_requests"
        );
        assert!(fail_fast(&d, &fig(100, 10, 0, 0), "green").is_some());
        // 2% on 100 requests fails the gate at the end, but is not yet certain.
        assert!(fail_fast(&d, &fig(100, 2, 0, 0), "green").is_none());
        assert!(fail_fast(&d, &fig(100, 6, 0, 0), "green").is_none());
        assert!(fail_fast(&d, &fig(100, 7, 0, 0), "green").is_some());
        // A run of min_requests failures.
        assert!(fail_fast(&d, &fig(100, 100, 0, 100), "green")
            .unwrap()
            .contains("last 100"));
        // Slow requests: 10% slow is certain, 2% is not.
        assert!(fail_fast(&d, &fig(200, 0, 20, 0), "green")
            .unwrap()
            .contains("p99"));
        assert!(fail_fast(&d, &fig(200, 0, 4, 0), "green").is_none());
        // Zero tolerance: one failure is a certain breach.
        assert!(fail_fast(&def(10, 0.0), &fig(10, 1, 0, 0), "green").is_some());
        // Everything allowed: never.
        assert!(fail_fast(&def(10, 1.0), &fig(10, 10, 0, 10), "green").is_none());
    }

    #[test]
    fn run_of_failures_respects_the_allowed_rate() {
        // min_requests 0: a single failure is not a run when 30% may fail.
        let d = def(0, 0.3);
        assert!(fail_fast(&d, &fig(1, 1, 0, 1), "green").is_none());
        assert!(fail_fast(&d, &fig(6, 6, 0, 6), "green").is_some());
    }

    #[test]
    fn percentages() {
        assert_eq!(pct(0.01), "1%");
        assert_eq!(pct(0.015), "1.5%");
        assert_eq!(pct(0.0025), "0.25%");
    }
}
