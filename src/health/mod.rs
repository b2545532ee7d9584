//! Active health checks.

use crate::upstream::Backend;
use std::sync::Arc;
use tokio_util::task::TaskTracker;

/// Start the health checker of a backend whose pool has a `health_check`.
pub fn spawn(backend: &Arc<Backend>, tasks: &TaskTracker) {
    // Filled in by the resilience work (issue 3).
    let _ = (backend, tasks);
}
