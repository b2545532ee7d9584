//! `POST /api/routes/{route}/rollout/{action}` (SPEC §3): `start`, `pause`, `resume`,
//! `approve`, `promote` (straight to 100) or `abort` (roll back).
//!
//! 200 with `{"route", "action", "rollout": {…as in /api/status…}}`; 404 for an unknown route
//! or a route without `[routes.rollout]`; 400 for an unknown action; 409 when the action does
//! not fit the rollout's state or its progress cannot be written (nothing changes then, unless
//! `?force=true`: then it goes on in memory, and `/api/status` shows `"persisted": false`).

use super::{error, json, AdminResponse};
use crate::cluster::FleetError;
use crate::control::fleet::ActError;
use crate::control::{ChangeError, Control};
use crate::rollout::controller::{CommitError, Refused};
use crate::rollout::ActionError;
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
    let answer = || {
        json(
            StatusCode::OK,
            &serde_json::json!({
                "route": route,
                "action": action,
                "rollout": crate::rollout::status_json(&rt.rollouts, rt, route),
            }),
        )
    };
    match act(rt, route, action, opts).await {
        Ok(()) => answer(),
        Err(Refusal::Action(e)) => error(e.status(), e),
        Err(Refusal::Answer(a)) => a,
    }
}

/// Why [`act`] did nothing: the action's own refusal (its status), or the answer to give.
pub(super) enum Refusal {
    Action(ActionError),
    Answer(AdminResponse),
}

/// Run a rollout action on this replica's controller, or, in fleet mode on a replica that
/// does not lead, write it into the fleet's document for the leader to follow.
pub(super) async fn act(
    rt: &Arc<Control>,
    route: &str,
    action: &str,
    opts: crate::rollout::ActOptions,
) -> Result<(), Refusal> {
    if let Some(fleet) = rt.cluster.get().filter(|f| !f.is_leader()) {
        return match crate::control::fleet::act(rt, fleet, route, action, &opts).await {
            Ok(_) => Ok(()),
            Err(ActError::Action(e)) => Err(Refusal::Action(e)),
            Err(ActError::Change(e)) => Err(Refusal::Answer(super::api::change_error(e))),
        };
    }
    match rt.rollouts.act_opts(rt, route, action, opts).await {
        Ok(_) => Ok(()),
        Err(e) => Err(match refused_by_store(&e) {
            Some(e) => Refusal::Answer(super::api::change_error(e)),
            None => Refusal::Action(e),
        }),
    }
}

/// The control layer's refusal inside an action's error, when the store was its reason
/// (fleet mode: 503 as for any API change, not 409).
fn refused_by_store(e: &ActionError) -> Option<ChangeError> {
    let ActionError::Commit(CommitError::Change(Refused(inner))) = e else {
        return None;
    };
    match inner.downcast_ref::<ChangeError>()? {
        ChangeError::Cluster(FleetError::Unreachable(why)) => {
            Some(ChangeError::Cluster(FleetError::Unreachable(why.clone())))
        }
        _ => None,
    }
}
