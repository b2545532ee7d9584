//! Fleet mode's control side (SPEC §7): the store is one more source of changes. Before the
//! runtime starts, [`prepare`] finds the fleet's document (seeding it create-if-absent from
//! this replica's file, or, with the store down, reading `<config>.fleet-cache`); then
//! [`spawn`] watches the document and the drains and applies every revision through the
//! same validation, stage and commit as a file reload (a bad revision changes nothing and is
//! reported), and [`change`] turns an API change into a compare-and-swap of the document.
//!
//! Layout: [`start`] (before the runtime starts), [`follow`] (the watch and the background
//! tasks), [`revision`] (applying one revision), [`write`] (changes and rollout steps as
//! compare-and-swaps), [`act`] (a follower's rollout action).

mod act;
mod follow;
mod revision;
mod start;
mod write;

pub use act::{act, ActError};
pub use follow::spawn;
pub use revision::RevisionError;
pub use start::{prepare, FleetStartError, Prepared};
pub use write::{change, commit_progress, write, write_pending, MOVED};
