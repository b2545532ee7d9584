//! # veer
//!
//! A traffic-shifting reverse proxy for blue/green deployments and canaries: weighted splits
//! with sticky users, active health checks, per-backend circuit breakers, draining, live
//! reloads and progressive rollouts, in one binary.
//!
//! ## Layout
//!
//! Layers, bottom to top; a module imports only from its own layer or the ones below it
//! (`tests/layers.rs` keeps the rule and lists the few imports that still break it):
//!
//! ```text
//!  8  main.rs, client.rs            the binary; the admin API client
//!  7  app, demo                     start and graceful shutdown; `veer demo`
//!  6  admin                         admin API, status page, /metrics endpoint
//!  5  control                       the one way a change happens: stage, apply, commit;
//!                                   reload (file, SIGHUP, API), changes, watchers
//!  4  proxy, rollout                listeners, connections, forwarding, retries; rollouts
//!  3  health, runtime               health checkers; the live snapshot behind an ArcSwap
//!  2  upstream                      backends, pools, balancers, connection pools
//!  1  tls, breaker, routing, metrics
//!  0  config, body                  text in, typed Config out; the client's request body
//! ```
//!
//! - [`config`]: the TOML file → raw serde structs → validated, typed [`config::Config`].
//!   [`body`]: the client's request body and how it fails, shared by proxy and upstream.
//! - [`tls`]: certificates for HTTPS listeners and TLS to upstreams. [`routing`]: route
//!   matching, sticky buckets and the weighted split table. [`metrics`]: Prometheus.
//! - [`upstream`]: backend identity and state (survives reloads), pools and balancers, each
//!   backend's connection pool (with a fast path for body-less HTTP/1.1), draining.
//! - [`health`], [`breaker`]: background tasks that decide; the request path only reads gates.
//! - [`runtime`]: the live [`runtime::Snapshot`] behind one `ArcSwap`.
//! - [`proxy`]: listeners, connections (hyper for HTTP/1.1 and h2c, the h2 crate directly for
//!   HTTP/2 over TLS), forwarding, header rewriting, retries. [`rollout`]: the progressive
//!   rollout controller.
//! - [`control`]: staging, applying and committing every change (file watcher, SIGHUP,
//!   admin API, rollout steps, certificate watcher).
//! - [`admin`]: admin API, status page, metrics endpoint.
//! - [`cli`]: the admin API client behind `veer status`, `split`, `swap`, `drain`, `reload`,
//!   and the rendering of its answers.
//! - [`app`]: start and graceful shutdown of a whole veer. [`demo`]: `veer demo`.
//! - [`client`]: the admin API client behind `veer status`, `split`, `swap`, `drain`, `reload`.
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
pub mod handover;
pub mod health;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod rollout;
pub mod routing;
pub mod runtime;
pub mod tls;
pub mod upstream;
