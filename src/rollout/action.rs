//! Operator actions (`POST /api/routes/{route}/rollout/{action}`): their names and why one
//! is refused.

use super::controller;

/// An operator action (`POST /api/routes/{route}/rollout/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Approve,
    Promote,
    Abort,
    /// All traffic back to the baseline: an abort while the rollout runs, and after it
    /// succeeded a new change that undoes it (the rollout ends `rolled_back`).
    Rollback,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "start" => Action::Start,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "approve" => Action::Approve,
            "promote" => Action::Promote,
            "abort" => Action::Abort,
            "rollback" => Action::Rollback,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Approve => "approve",
            Action::Promote => "promote",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
        }
    }
}

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    #[error("route {0:?} has no [routes.rollout]")]
    NoRollout(String),
    #[error("unknown rollout action {0:?}: use start, pause, resume, approve, promote, abort or rollback")]
    UnknownAction(String),
    /// The action does not fit the rollout's state.
    #[error("{0}")]
    Conflict(String),
    #[error("the change was not made: {0}")]
    Commit(#[source] controller::CommitError),
    #[error("the rollout controller of route {0:?} is not running")]
    Stopped(String),
}

impl ActionError {
    /// The HTTP status for the admin API.
    pub fn status(&self) -> http::StatusCode {
        match self {
            ActionError::UnknownRoute(_) | ActionError::NoRollout(_) => http::StatusCode::NOT_FOUND,
            ActionError::UnknownAction(_) => http::StatusCode::BAD_REQUEST,
            ActionError::Conflict(_) | ActionError::Commit(_) | ActionError::Stopped(_) => {
                http::StatusCode::CONFLICT
            }
        }
    }
}
