//! The parts of `[routes.rollout]` from SPEC §10: external gates, rollout order (`after`), the
//! baseline comparison, the hotfix path, and the progress veer writes beside `state`/`step`
//! (the step's clock, the definition's fingerprint, a hotfix run), so a restart resumes the
//! same clock and a definition edited while veer was down starts anew.

use super::{format_duration, Config, RolloutConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// When an external gate is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateWhen {
    /// Before the first step (traffic still all on the baseline).
    Before,
    /// After each step's built-in gate passed.
    Step,
    /// After the last step, with `to` at 100% (post-promotion analysis).
    After,
}

impl GateWhen {
    pub fn parse(s: &str) -> Option<GateWhen> {
        Some(match s {
            "before" => GateWhen::Before,
            "step" => GateWhen::Step,
            "after" => GateWhen::After,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GateWhen::Before => "before",
            GateWhen::Step => "step",
            GateWhen::After => "after",
        }
    }
}

/// What an external gate asks.
#[derive(Debug, Clone, PartialEq)]
pub enum GateCheck {
    /// An instant query (`GET {url}/api/v1/query?query=…`) whose single value must lie within
    /// `min..=max`.
    Prometheus {
        url: String,
        query: String,
        min: Option<f64>,
        max: Option<f64>,
    },
    /// The rollout's status POSTed as JSON; a 2xx answer passes.
    Webhook { url: String },
}

/// A header value: written out, or read from an environment variable at each check
/// (`"env:NAME"`), so a secret never sits in the config file.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    Literal(String),
    Env(String),
}

/// One `[[routes.rollout.gates]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    pub name: String,
    pub when: GateWhen,
    pub check: GateCheck,
    /// Asked again at this interval until it passes…
    pub interval: Duration,
    /// …or the rollout rolls back when it has not passed by then.
    pub timeout: Duration,
    /// It must keep passing this long.
    pub steady_for: Duration,
    pub headers: Vec<(String, HeaderValue)>,
    /// Also judged on a hotfix run.
    pub hotfix: bool,
}

/// `[routes.rollout.hotfix]`: the expedited path's steps and clock.
#[derive(Debug, Clone, PartialEq)]
pub struct HotfixConfig {
    pub steps: Vec<u32>,
    pub step_interval: Duration,
    pub min_requests: u64,
}

/// Progress veer writes with `state` and `step` (never part of the definition).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProgressMeta {
    /// Unix time (ms) the current step started.
    pub step_started_ms: Option<u64>,
    /// Unix time (ms) by which an awaited approval must come.
    pub approval_deadline_ms: Option<u64>,
    /// [`RolloutConfig::fingerprint`] of the definition the progress belongs to.
    pub fingerprint: Option<String>,
    /// The run is a hotfix (`mode = "hotfix"`).
    pub hotfix: bool,
}

impl RolloutConfig {
    /// The definition spelled out (everything but the persisted progress): two definitions
    /// are the same rollout exactly when these agree. The first part is the same text older
    /// versions wrote into the state file's `was`; the §10 parts follow only when used, so a
    /// rollout that does not use them keeps its fingerprint across an upgrade.
    pub fn definition_text(&self) -> String {
        let d = format_duration;
        let mut s = format!(
            "to={} steps={:?} step_interval={} min_requests={} max_error_rate={} max_p99={} approval={} approval_timeout={} notify_url={}",
            self.to,
            self.steps,
            d(self.step_interval),
            self.min_requests,
            self.max_error_rate,
            d(self.max_p99),
            self.approval,
            d(self.approval_timeout),
            self.notify_url.as_deref().unwrap_or("-"),
        );
        if !self.after.is_empty() {
            s += &format!(" after={:?}", self.after);
        }
        if self.mirror_step {
            s += &format!(" mirror_step max_diff_rate={}", self.max_diff_rate);
        }
        if let Some(m) = self.max_error_rate_vs_baseline {
            s += &format!(" max_error_rate_vs_baseline={m}");
        }
        if let Some(h) = &self.hotfix {
            s += &format!(
                " hotfix=(steps={:?} step_interval={} min_requests={})",
                h.steps,
                d(h.step_interval),
                h.min_requests
            );
        }
        for g in &self.gates {
            let check = match &g.check {
                GateCheck::Prometheus {
                    url,
                    query,
                    min,
                    max,
                } => format!("prometheus={url} query={query:?} min={min:?} max={max:?}"),
                GateCheck::Webhook { url } => format!("webhook={url}"),
            };
            let headers: Vec<String> = g
                .headers
                .iter()
                .map(|(k, v)| match v {
                    HeaderValue::Literal(v) => format!("{k}={v:?}"),
                    HeaderValue::Env(n) => format!("{k}=env:{n}"),
                })
                .collect();
            s += &format!(
                " gate=(name={:?} when={} {check} interval={} timeout={} steady_for={} headers=[{}] hotfix={})",
                g.name,
                g.when.as_str(),
                d(g.interval),
                d(g.timeout),
                d(g.steady_for),
                headers.join(","),
                g.hotfix
            );
        }
        s
    }

    /// The definition without the persisted progress: a change here starts a new rollout.
    pub fn definition_eq(&self, other: &RolloutConfig) -> bool {
        self.definition_text() == other.definition_text()
    }

    /// A short stable hash of [`Self::definition_text`] (FNV-1a, 64 bits, hex), saved with
    /// the progress: when the file's definition no longer matches it, the progress belongs to
    /// another rollout and the rollout starts anew.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.definition_text().bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Does the persisted progress belong to this definition? (No fingerprint: written by
    /// an older veer, trusted as before.)
    pub fn progress_matches(&self) -> bool {
        self.progress
            .fingerprint
            .as_deref()
            .is_none_or(|f| f == self.fingerprint())
    }

    /// Steps, interval and minimum of a run: the hotfix's on a hotfix run.
    pub fn run_steps(&self, hotfix: bool) -> (&[u32], Duration, u64) {
        match (&self.hotfix, hotfix) {
            (Some(h), true) => (&h.steps, h.step_interval, h.min_requests),
            _ => (&self.steps, self.step_interval, self.min_requests),
        }
    }
}

/// The routes whose rollouts depend on `route`'s, directly or not, dependents first: each
/// one comes before every route it depends on (a post-order of the reversed `after` edges,
/// reversed). `route` itself is not in the list.
pub fn dependents_first(config: &Config, route: &str) -> Vec<String> {
    let mut rdeps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for rc in &config.routes {
        if let Some(r) = &rc.rollout {
            for a in &r.after {
                rdeps.entry(a.as_str()).or_default().push(rc.name.as_str());
            }
        }
    }
    // Depth-first from `route` along "is depended on by"; a node is emitted after all its
    // dependents' subtrees, so reversing the post-order puts dependents before dependencies.
    fn visit<'a>(
        n: &'a str,
        rdeps: &BTreeMap<&'a str, Vec<&'a str>>,
        seen: &mut BTreeSet<&'a str>,
        out: &mut Vec<&'a str>,
    ) {
        if !seen.insert(n) {
            return;
        }
        for d in rdeps.get(n).into_iter().flatten() {
            visit(d, rdeps, seen, out);
        }
        out.push(n);
    }
    let mut seen = BTreeSet::new();
    let mut post = Vec::new();
    visit(route, &rdeps, &mut seen, &mut post);
    // The post-order ends with `route`; what comes before is already dependents-first
    // within each branch, but a shared dependent must come before every dependency: order
    // by the longest path from `route` instead, deepest first.
    post.pop();
    let depth = longest_paths(route, &rdeps);
    let mut out: Vec<&str> = post;
    out.sort_by(|a, b| depth[b].cmp(&depth[a]).then(a.cmp(b)));
    out.into_iter().map(str::to_string).collect()
}

/// The longest path (in edges) from `root` to every node reachable along `edges` (which
/// must have no cycle among them; validation refuses cycles).
fn longest_paths<'a>(
    root: &'a str,
    edges: &BTreeMap<&'a str, Vec<&'a str>>,
) -> BTreeMap<&'a str, usize> {
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    depth.insert(root, 0);
    let mut frontier = vec![root];
    // Bellman-Ford-like relaxation; bounded by the node count in an acyclic graph.
    let limit = edges.len() + 1;
    for _ in 0..limit {
        let mut next = Vec::new();
        for n in frontier {
            let dn = depth[n];
            for d in edges.get(n).into_iter().flatten() {
                if depth.get(d).is_none_or(|x| *x < dn + 1) {
                    depth.insert(d, dn + 1);
                    next.push(*d);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    depth
}

/// A cycle in the `after` edges (`route → the routes it waits for`), as the route names
/// along it with the first repeated at the end: `["a", "b", "a"]`.
pub fn find_cycle<'a>(edges: &BTreeMap<&'a str, Vec<&'a str>>) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn dfs<'a>(
        n: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match marks.get(n) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut c = path[from..].to_vec();
                c.push(n);
                return Some(c);
            }
            None => {}
        }
        marks.insert(n, Mark::Open);
        path.push(n);
        for d in edges.get(n).into_iter().flatten() {
            if let Some(c) = dfs(d, edges, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(n, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in edges.keys() {
        let mut path = Vec::new();
        if let Some(c) = dfs(n, edges, &mut marks, &mut path) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges<'a>(e: &[(&'a str, &[&'a str])]) -> BTreeMap<&'a str, Vec<&'a str>> {
        e.iter().map(|(k, v)| (*k, v.to_vec())).collect()
    }

    #[test]
    fn cycles_are_found_with_their_path() {
        assert_eq!(
            find_cycle(&edges(&[("web", &["api"]), ("api", &["db"])])),
            None
        );
        assert_eq!(
            find_cycle(&edges(&[("web", &["api"]), ("api", &["web"])])),
            Some(vec!["api", "web", "api"])
        );
        assert_eq!(find_cycle(&edges(&[("a", &["a"])])), Some(vec!["a", "a"]));
        // A diamond is no cycle.
        assert_eq!(
            find_cycle(&edges(&[
                ("web", &["api", "auth"]),
                ("api", &["db"]),
                ("auth", &["db"])
            ])),
            None
        );
    }

    fn config_with(after: &[(&str, &[&str])]) -> Config {
        let mut text = String::from(
            "[pools.a]\nbackends = [\"127.0.0.1:1\"]\n[pools.b]\nbackends = [\"127.0.0.1:2\"]\n",
        );
        for (i, (name, deps)) in after.iter().enumerate() {
            text += &format!(
                "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{i}\"\nsplit = {{ a = 1, b = 0 }}\n[routes.rollout]\nto = \"b\"\nsteps = [100]\nafter = {deps:?}\n"
            );
        }
        Config::parse(std::path::Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn dependents_come_before_what_they_depend_on() {
        // db ← api ← web ← portal, and db ← auth ← portal.
        let c = config_with(&[
            ("db", &[]),
            ("api", &["db"]),
            ("auth", &["db"]),
            ("web", &["api"]),
            ("portal", &["web", "auth"]),
        ]);
        let order = dependents_first(&c, "db");
        assert_eq!(order, vec!["portal", "web", "api", "auth"]);
        assert_eq!(dependents_first(&c, "api"), vec!["portal", "web"]);
        assert!(dependents_first(&c, "portal").is_empty());
    }

    #[test]
    fn fingerprint_follows_the_definition_only() {
        let c = config_with(&[("api", &[])]);
        let mut r = c.routes[0].rollout.clone().unwrap();
        let fp = r.fingerprint();
        r.state = Some(super::super::RolloutState::Progressing);
        r.step = Some(0);
        r.progress.step_started_ms = Some(5);
        assert_eq!(r.fingerprint(), fp, "progress is not definition");
        r.steps = vec![50, 100];
        assert_ne!(r.fingerprint(), fp);
        assert_eq!(fp.len(), 16);
    }
}
