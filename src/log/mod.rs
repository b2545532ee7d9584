//! Logs: veer's own log lines ([`init`], text or JSON on stderr), the access log
//! ([`access`]) and request IDs ([`request_id`]). SPEC.md §8.
//!
//! A leaf: it knows the config and nothing of the request path, which hands it finished
//! [`access::Entry`] values.

pub mod access;
pub mod request_id;

use crate::config::LogFormat;
use std::io::IsTerminal;

/// Whether text log lines may carry ANSI colours: only on a terminal, and never with
/// `NO_COLOR` set to anything but the empty string (no-color.org).
pub fn colours(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The filter: `VEER_LOG`, else `RUST_LOG`, else "info".
fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("VEER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Install the process's log subscriber (stderr). A second call changes nothing.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    let _ = match format {
        // Log shippers parse this; no colour codes in it, ever.
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => {
            let ansi = colours(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            builder.with_ansi(ansi).try_init()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))));
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
    }
}
