//! `POST /api/routes/{route}/rollout/{action}` (SPEC §3): `start`, `pause`, `resume`,
//! `approve`, `promote` (straight to 100) or `abort` (roll back).
//!
//! 200 with `{"route", "action", "rollout": {…as in /api/status…}}`; 404 for an unknown route
//! or a route without `[routes.rollout]`; 400 for an unknown action; 409 when the action does
//! not fit the rollout's state or the config file cannot be written (nothing changes then).

use super::{error, json, AdminResponse};
use crate::runtime::Runtime;
use http::StatusCode;
use std::sync::Arc;

/// Run a rollout action on a route. Called after the token check; `query` is the raw query
/// string (no options yet).
pub async fn handle(rt: &Arc<Runtime>, route: &str, action: &str, query: &str) -> AdminResponse {
    let _ = query;
    match rt.rollouts.act(rt, route, action).await {
        Ok(_) => json(
            StatusCode::OK,
            &serde_json::json!({
                "route": route,
                "action": action,
                "rollout": crate::rollout::status_json(rt, route),
            }),
        ),
        Err(e) => error(e.status(), e),
    }
}
