//! Progressive rollouts (filled in by the rollout work, issue 6).
