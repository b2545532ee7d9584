//! Backends and pools: identity and per-backend state ([`backend`]), the runtime pool and its
//! balancers ([`pool`]), the upstream HTTP client ([`http_client`]) with each backend's
//! connection pool ([`conn_pool`]), its HTTP/1.1 fast path ([`h1`]) and the response body
//! either reads ([`body`]), and the registry that keeps per-backend state across reloads and
//! drains what a reload removes ([`registry`]).

pub mod backend;
pub mod body;
pub mod conn_pool;
pub mod h1;
pub mod http_client;
mod idle;
pub mod pool;
pub mod registry;
pub mod slow_start;
#[cfg(test)]
mod testing;

pub use backend::{Backend, BackendId, Health, Lease};
pub use pool::Pool;
pub use registry::Registry;
