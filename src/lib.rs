//! # veer
//!
//! A traffic-shifting reverse proxy for blue/green deployments and canaries: weighted splits
//! with sticky users, active health checks, per-backend circuit breakers, draining, live
//! reloads and progressive rollouts, in one binary.
//!
//! ## Layout
//!
//! - [`config`]: the TOML file → raw serde structs → validated, typed [`config::Config`].
//! - [`runtime`]: the live [`runtime::Snapshot`] behind one `ArcSwap`, and the one way to
//!   change it ([`runtime::Runtime::apply`]).
//! - [`routing`]: route matching, sticky buckets and the weighted split table.
//! - [`upstream`]: backend identity and state (survives reloads), pools and balancers, each
//!   backend's connection pool (with a fast path for body-less HTTP/1.1), draining.
//! - [`health`], [`breaker`]: background tasks that decide; the request path only reads gates.
//! - [`proxy`]: listeners, connections (hyper for HTTP/1.1 and h2c, the h2 crate directly for
//!   HTTP/2 over TLS), forwarding, header rewriting, retries.
//! - [`admin`]: admin API, status page, metrics endpoint. [`metrics`]: Prometheus.
//! - [`cli`]: the admin API client behind `veer status`, `split`, `swap`, `drain`, `reload`,
//!   and the rendering of its answers.
//! - [`rollout`]: the progressive rollout controller.
//! - [`tls`]: certificates for HTTPS listeners and TLS to upstreams.
//! - [`app`]: start and graceful shutdown of a whole veer. [`demo`]: `veer demo`.
//!
//! The request path does one snapshot load, reads atomics, and takes no lock; every decision
//! about health, breakers and rollouts is made by background tasks.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod rollout;
pub mod routing;
pub mod runtime;
pub mod tls;
pub mod upstream;
