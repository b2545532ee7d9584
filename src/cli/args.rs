//! The command line's arguments: the clap definitions of every `veer` command (the handlers
//! are in main.rs and the other cli/ files), with `veer --help`'s environment, logging and
//! signals text.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Environment, logging and signals, for `veer --help`.
const AFTER_HELP: &str = "\
Environment:
  VEER_ADMIN_TOKEN      bearer token: the admin API's (`[admin] token_env` names the
                        variable veer run reads; the admin commands always send this one)
  VEER_ADMIN            admin API URL for the admin commands (default http://127.0.0.1:9901)
  VEER_WORKERS          worker threads for veer run, over `[server] workers`
  VEER_OVERRIDE_SECRET  the secret `veer override-token` reads unless --secret-env names another
  [admin] tokens        named tokens, each in the variable it names (\"env:VAR\")

Logging:
  VEER_LOG      what is logged, as an EnvFilter (e.g. info, veer=debug,hyper=warn); default info
  RUST_LOG      read when VEER_LOG is not set
  NO_COLOR      set (non-empty): no colours; colours are used only when stderr is a terminal
  [log] format = \"json\" in the config: one JSON object a line (no colours)

Signals (veer run):
  SIGHUP        reload the config file
  SIGUSR1       reopen the access log file (after logrotate moved it)
  SIGUSR2       upgrade in place: start the binary at the same path with the same arguments,
                hand it the listening sockets, then finish in-flight requests and exit 0
  SIGTERM/INT   graceful shutdown";

#[derive(Parser, Debug)]
#[command(
    name = "veer",
    version,
    about = "A traffic-shifting reverse proxy for blue/green and canary releases",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Config file (same as `veer run --config FILE`).
    #[arg(long, global = false, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Run {
        /// Config file (TOML); watched, and reloaded when it changes.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file: every error as FILE:LINE:COL, and what `veer run` would refuse.
    Check {
        /// Config file (TOML) to validate.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start two demo pools and the proxy in front of them at 90/10.
    Demo {
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin listen address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// Start green at 0% and roll it out (5 → 25 → 50 → 100%, 10 s steps); see the README, "Canary releases".
        #[arg(long)]
        rollout: bool,
        /// Roll green out as --rollout does, but wait for an approval at each step (the status page's approve button, or `veer rollout web approve`).
        #[arg(long)]
        approval: bool,
    },
    /// Show routes, splits, rollouts and every backend's health, breaker, in-flight and draining.
    Status {
        #[command(flatten)]
        api: AdminOpts,
    },
    /// Set a route's split: `veer split web blue=90 green=10`.
    Split {
        /// Route name.
        route: String,
        /// POOL=WEIGHT pairs (relative non-negative integer weights).
        #[arg(required = true, value_name = "POOL=WEIGHT", value_parser = parse_weight)]
        weights: Vec<(String, u32)>,
        #[command(flatten)]
        api: AdminOpts,
    },
    /// Exchange the weights of a route's two pools (blue/green slot swap).
    Swap {
        /// Route name.
        route: String,
        /// Swap even when the pool gaining traffic has no healthy backend.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: AdminOpts,
    },
    /// Drain one backend: no new requests; in-flight ones finish.
    Drain {
        /// Pool name, as in the config.
        pool: String,
        /// Backend address, HOST:PORT as in the config.
        addr: String,
        #[command(flatten)]
        api: AdminOpts,
    },
    /// Put a drained backend back into service.
    Undrain {
        /// Pool name, as in the config.
        pool: String,
        /// Backend address, HOST:PORT as in the config.
        addr: String,
        #[command(flatten)]
        api: AdminOpts,
    },
    /// Reload the config file now.
    Reload {
        #[command(flatten)]
        api: AdminOpts,
    },
    /// Drive a route's progressive rollout.
    Rollout {
        /// Route name.
        route: String,
        /// start (from step 0), pause, resume, approve (the next step), promote (all traffic
        /// to the new pool now), abort (roll back a running rollout) or rollback (abort, or,
        /// after the rollout succeeded, all traffic back to the baseline as a new change).
        /// Steps count from 0, as the API's `step` does: step K is entry K of `steps`.
        #[arg(value_parser = parse_action, value_name = "ACTION")]
        action: crate::rollout::Action,
        /// With `start`: the expedited path of `[routes.rollout.hotfix]` (fewer, shorter
        /// steps; still gated).
        #[arg(long)]
        hotfix: bool,
        #[command(flatten)]
        api: AdminOpts,
    },
    /// Fleet mode: the fleet's config document and members in etcd (`[cluster]` of --config).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Print the override value that forces POOL where `override.secret_env` is set.
    ///
    /// The value is POOL.HEX, HEX the lowercase hex HMAC-SHA256 of POOL keyed with the secret
    /// from the env var; send it in the route's override header or cookie.
    #[command(
        after_help = "Example: curl -H \"x-veer-pool: $(veer override-token green)\" http://127.0.0.1:8080/"
    )]
    OverrideToken {
        /// Pool name, as in the config.
        pool: String,
        /// Env var holding the secret (the route's `override.secret_env`).
        #[arg(long, value_name = "NAME", default_value = crate::routing::pool_override::DEFAULT_SECRET_ENV)]
        secret_env: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// Validate FILE and make its pools and routes the fleet's document (every replica applies it).
    Push {
        /// The local config file whose [cluster] names the store.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A config file (only its [pools.*] and [[routes]] are pushed).
        file: PathBuf,
    },
    /// Print the fleet's document.
    Pull {
        /// The local config file whose [cluster] names the store.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// The fleet as the store sees it: document revision, leader, replicas.
    Status {
        /// The local config file whose [cluster] names the store.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print the status as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

/// Where the admin API is and how to print its answers.
#[derive(clap::Args, Debug)]
pub struct AdminOpts {
    /// Admin API URL (env VEER_ADMIN). The bearer token is read from VEER_ADMIN_TOKEN.
    #[arg(long, env = "VEER_ADMIN", value_name = "URL", default_value = crate::cli::DEFAULT_ADMIN)]
    pub admin: String,
    /// Print the API's JSON answer (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// The library's rollout actions, as the CLI spells them.
fn parse_action(s: &str) -> Result<crate::rollout::Action, String> {
    crate::rollout::Action::parse(s).ok_or_else(|| {
        format!(
            "unknown action {s:?}; use start, pause, resume, approve, promote, abort or rollback"
        )
    })
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (pool, w) = s
        .split_once('=')
        .ok_or_else(|| format!("expected POOL=WEIGHT, got {s:?}"))?;
    let pool = pool.trim();
    if pool.is_empty() {
        return Err(format!("expected POOL=WEIGHT, got {s:?}"));
    }
    let w = w
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("weight of {pool} must be a non-negative integer, got {w:?}"))?;
    Ok((pool.to_string(), w))
}
