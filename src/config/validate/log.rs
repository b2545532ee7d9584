//! Validating `[log]` (SPEC.md §8).

use super::*;

pub(super) fn build_log(cx: &mut Ctx<'_>, raw: Option<Spanned<RawLog>>) -> LogConfig {
    let d = LogConfig::default();
    let Some(raw) = raw else { return d };
    let raw = raw.into_inner();
    let format = match raw
        .format
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("text", _)) => LogFormat::Text,
        Some(("json", _)) => LogFormat::Json,
        Some((other, span)) => {
            cx.err(
                span,
                format!("log.format: unknown format {other:?}; use \"text\" or \"json\""),
            );
            d.format
        }
    };
    let access = match raw
        .access
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("off", _)) => AccessTarget::Off,
        Some(("stdout", _)) => AccessTarget::Stdout,
        Some(("stderr", _)) => AccessTarget::Stderr,
        Some(("", span)) => {
            cx.err(
                span,
                "log.access: must not be empty; use \"off\", \"stdout\", \"stderr\" or a file path",
            );
            AccessTarget::Off
        }
        Some((path, _)) => AccessTarget::File(resolve(cx.file, Path::new(path))),
    };
    let access_format = match raw
        .access_format
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("json", _)) => AccessFormat::Json,
        Some(("combined", _)) => AccessFormat::Combined,
        Some((other, span)) => {
            cx.err(
                span,
                format!(
                    "log.access_format: unknown format {other:?}; use \"json\" or \"combined\""
                ),
            );
            d.access_format
        }
    };
    let access_sample = match &raw.access_sample {
        None => d.access_sample,
        Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            cx.err(
                s.span(),
                format!(
                    "log.access_sample: {} is out of range 0..=1 (a fraction of requests)",
                    s.get_ref()
                ),
            );
            d.access_sample
        }
    };
    LogConfig {
        format,
        access,
        access_format,
        access_sample,
    }
}
