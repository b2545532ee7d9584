//! The control layer: the one way a change happens — stage, validate, apply, commit —
//! whatever its source (the config file watcher, SIGHUP, `POST /api/reload`, an admin API
//! edit, a rollout step, the certificate watcher). Every path validates fully first and holds
//! [`Runtime::change_lock`](crate::runtime::Runtime::change_lock), so a bad file or a failed
//! write changes nothing, and changes are applied one at a time.
//!
//! - [`apply`](mod@apply): stage a validated config (clients, listeners, certificates) and commit it.
//! - [`reload`](mod@reload): reload the config file (file change, SIGHUP, API).
//! - [`change`](mod@change): API edits and rollout progress, written back (SPEC §3) then applied.
//! - [`watch`](mod@watch): the config file watcher and the certificate watcher.
//! - [`fleet`](mod@fleet): fleet mode: the store's document as one more source of changes.

pub mod apply;
pub mod change;
pub mod fleet;
pub mod reload;
pub mod watch;

pub use apply::{commit, stage, ApplyError, ReloadReport, Staged};
pub use change::{change, change_locked, ChangeError, Unwritable};
pub use reload::{reload, ReloadError, Trigger};
pub use watch::{watch, DEBOUNCE};
