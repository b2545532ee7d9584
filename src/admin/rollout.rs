//! `POST /api/routes/{route}/rollout/{action}` (SPEC §3): `start`, `pause`, `resume`,
//! `approve`, `promote` (straight to 100) or `abort` (roll back).
//!
//! 200 with `{"route", "action", "rollout": {…as in /api/status…}}`; 404 for an unknown route
//! or a route without `[routes.rollout]`; 400 for an unknown action; 409 when the action does
//! not fit the rollout's state or its progress cannot be written (nothing changes then, unless
//! `?force=true`: then it goes on in memory, and `/api/status` shows `"persisted": false`).

use super::{error, json, AdminResponse};
use crate::control::Control;
use http::StatusCode;
use std::sync::Arc;

/// Run a rollout action on a route. Called after the token check; `query` is the raw query
/// string: `force=true` applies the action in memory when its progress cannot be written.
/// `who`: the name of the token used (the audit trail and the rollout's state say it).
pub async fn handle(
    rt: &Arc<Control>,
    route: &str,
    action: &str,
    query: &str,
    who: &str,
) -> AdminResponse {
    if rt.config().route(route).is_none() {
        return super::api::no_route(&rt.config(), route);
    }
    let opts = crate::rollout::ActOptions {
        force: super::api::query_flag(query, "force"),
        hotfix: super::api::query_flag(query, "hotfix"),
        who: Some(who.to_string()),
        why: None,
        cascaded: false,
    };
    if opts.hotfix && action != "start" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("?hotfix=true goes with start, not {action}"),
        );
    }
    match rt.rollouts.act_opts(rt, route, action, opts).await {
        Ok(_) => json(
            StatusCode::OK,
            &serde_json::json!({
                "route": route,
                "action": action,
                "rollout": crate::rollout::status_json(&rt.rollouts, rt, route),
            }),
        ),
        Err(e) => error(e.status(), e),
    }
}
