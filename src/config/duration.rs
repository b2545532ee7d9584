//! Durations as written in the config: `"250ms"`, `"2s"`, `"1m"`, `"1h"`, or combined `"1m30s"`.

use std::time::Duration;

/// Parse a duration string; the error says what was expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; expected something like \"250ms\", \"2s\" or \"1m\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?}; expected a number and a unit (ms, s, m, h, d), like \"250ms\""
            ));
        }
        let num: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid number in duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => num / 1000.0,
            "s" => num,
            "m" => num * 60.0,
            "h" => num * 3600.0,
            "d" => num * 86_400.0,
            "us" | "µs" => num / 1_000_000.0,
            "" => {
                return Err(format!(
                    "duration {s:?} has no unit; write \"{s}s\" or \"{s}ms\""
                ))
            }
            other => {
                return Err(format!(
                    "unknown unit {other:?} in duration {s:?}; use ms, s, m, h or d"
                ))
            }
        };
        if !secs.is_finite() || secs > 1e9 {
            return Err(format!("duration {s:?} is too large"));
        }
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

/// Format a duration the way the config writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}us", d.as_micros());
    }
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }
}
