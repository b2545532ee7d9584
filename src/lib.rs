//! # veer
//!
//! A traffic-shifting reverse proxy for blue/green deployments and canaries: weighted splits
//! with sticky users, active health checks, per-backend circuit breakers, draining, live
//! reloads and progressive rollouts, in one binary.
//!
//! ## Layout
//!
//! Layers, bottom to top; a module imports only from its own layer or the ones below it, and
//! no two folders import each other (`tests/layers.rs` keeps the rule):
//!
//! ```text
//!  9  main.rs, cli                  the binary; the admin API client and its tables
//!  8  app, demo                     start and graceful shutdown; `veer demo`
//!  7  admin                         admin API, status page, /metrics endpoint
//!  6  control                       the one way a change happens: stage, apply, commit;
//!                                   reload (file, SIGHUP, API), changes, rollout steps,
//!                                   watchers; owns the listeners and the rollout set
//!  5  proxy, rollout                listeners, connections, forwarding, retries; rollouts
//!                                   (decide, and hand their progress to control through
//!                                   the rollout::Committer trait)
//!  4  health, runtime               health checkers; the live snapshot behind an ArcSwap
//!  3  routing                       matching, sticky buckets, split tables, override and
//!                                   fallback choice over a snapshot's pools
//!  2  upstream                      backends, pools, balancers, connection pools
//!  1  tls, breaker, metrics, dns    certificates; breaker state machines; counters;
//!                                   looking up backend names
//!  0  config, body                  text in, typed Config out; the client's request body
//! ```
//!
//! - [`config`]: the TOML file → raw serde structs → validated, typed [`config::Config`].
//!   It reads no file but the one it is given: certificate files are checked by
//!   [`tls::CertificateFiles`] when the caller passes it ([`config::Config::load_checked`]).
//!   [`body`]: the client's request body and how it fails, shared by proxy and upstream.
//! - [`tls`]: certificates for HTTPS listeners and TLS to upstreams. [`breaker`]: the
//!   per-backend circuit breaker. [`metrics`]: Prometheus counters and a rollout step's
//!   counters ([`metrics::step`]).
//! - [`upstream`]: backend identity and state (survives reloads), pools and balancers, each
//!   backend's connection pool (with a fast path for body-less HTTP/1.1), draining.
//! - [`routing`]: route matching, sticky buckets, the weighted split table, and the choice
//!   of pool (override, fallback) and backend for a request.
//! - [`health`]: background checkers that decide; the request path only reads gates.
//! - [`runtime`]: the live [`runtime::Snapshot`] behind one `ArcSwap`.
//! - [`proxy`]: listeners, connections (hyper for HTTP/1.1 and h2c, the h2 crate directly for
//!   HTTP/2 over TLS), forwarding, header rewriting, retries. [`rollout`]: the progressive
//!   rollout controllers.
//! - [`control`]: [`control::Control`] and every change (file watcher, SIGHUP, admin API,
//!   rollout steps, certificate watcher): staged, validated, applied, committed.
//! - [`admin`]: admin API, status page, metrics endpoint.
//! - [`app`]: start and graceful shutdown of a whole veer. [`demo`]: `veer demo`.
//! - [`cli`]: the admin API client behind `veer status`, `split`, `swap`, `drain`, `reload`,
//!   and the rendering of its answers.
//!
//! The request path does one snapshot load, reads atomics, and takes no lock; every decision
//! about health, breakers and rollouts is made by background tasks.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod dns;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod rollout;
pub mod routing;
pub mod runtime;
pub mod tls;
pub mod upstream;
