//! A rollout action on a replica that does not lead: written to the document for the
//! leader to follow (SPEC §7).

use super::write::write;
use crate::cluster::{document, Fleet};
use crate::config::writeback::WritebackError;
use crate::control::apply::ReloadReport;
use crate::control::audit::Origin;
use crate::control::change::ChangeError;
use crate::control::Control;
use crate::rollout::{ActOptions, Action, ActionError};
use std::sync::{Arc, Mutex};

/// Why a rollout action taken on a replica that does not lead changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// The action does not fit the rollout's standing in the document (or names nothing).
    #[error(transparent)]
    Action(#[from] ActionError),
    /// The store refused the write or could not be reached.
    #[error(transparent)]
    Change(#[from] ChangeError),
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A rollout action on a replica that does not lead (SPEC §7): a compare-and-swap of the
/// document with the progress the action makes of the rollout's standing there, judged again
/// on the fresh revision a conflict brings (so a step the leader took meanwhile is neither
/// lost nor overwritten), applied here once written. The answer comes after the write is
/// durable in the store; the leader's controller goes on from it (`Rollouts::adopt`), and
/// every replica serves it from its watch. Forwarding to the leader instead would make the
/// action depend on one more process being reachable, and the store stays the one truth.
pub async fn act(
    rt: &Control,
    fleet: &Arc<Fleet>,
    route: &str,
    action: &str,
    opts: &ActOptions,
) -> Result<ReloadReport, ActError> {
    let config = rt.config();
    let rc = config
        .route(route)
        .ok_or_else(|| ActionError::UnknownRoute(route.to_string()))?;
    if rc.rollout.is_none() {
        return Err(ActionError::NoRollout(route.to_string()).into());
    }
    let action =
        Action::parse(action).ok_or_else(|| ActionError::UnknownAction(action.to_string()))?;
    let refused = Mutex::new(None::<ActionError>);
    let name = fleet.doc_name();
    let edit = |d: &mut toml_edit::DocumentMut| {
        let doc = document::parse(&name, &d.to_string()).map_err(|_| {
            WritebackError::Edit("the fleet's document in the store is invalid".into())
        })?;
        match crate::rollout::fleet::follower_action(&doc, route, action, opts, now_ms()) {
            Ok(writes) => writes.iter().try_for_each(|(r, p)| p.change(r).edit_doc(d)),
            Err(e) => {
                let msg = e.to_string();
                *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Err(WritebackError::Edit(msg))
            }
        }
    };
    let subject = format!("route {route:?}: rollout {}", action.as_str());
    match write(rt, fleet, &subject, &edit, false).await {
        Ok(r) => {
            tracing::info!(route, action = action.as_str(), leader = ?fleet.leader(), "rollout action written to the fleet document for the leader to follow");
            let who = opts
                .who
                .as_deref()
                .unwrap_or(crate::control::audit::Source::Api.as_str());
            rt.audit.record(
                &Origin::api(who).because(opts.why.clone()),
                format!("{subject}, written for the leader to follow"),
            );
            Ok(r)
        }
        Err(e) => Err(
            match refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(a) => a.into(),
                None => e.into(),
            },
        ),
    }
}
