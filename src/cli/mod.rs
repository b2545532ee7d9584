//! The command line's library half: [`client`], the admin API client behind `veer status`,
//! `split`, `swap`, `drain`, `undrain`, `reload` and `rollout`; and [`render`], which turns
//! its JSON answers into text and tables; [`cluster`]: `veer cluster push|pull|status`;
//! [`args`]: the clap definitions of every command.

pub mod args;
pub mod check;
pub mod client;
pub mod cluster;
pub mod render;

pub use client::{AdminClient, AdminError, DEFAULT_ADMIN};
