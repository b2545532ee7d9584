//! `[routes.mirror]` (SPEC §11): a copy of a share of the route's requests goes to another
//! pool, its answer compared with the client's and thrown away.

/// A route's mirroring, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// The pool copies go to.
    pub to: String,
    /// Share of the route's requests copied, in hundredths of a percent (0..=10,000): one
    /// per sticky bucket, so a user's requests are copied together.
    pub percent_bp: u32,
    /// Methods copied (upper case); by default GET and HEAD only.
    pub methods: Vec<http::Method>,
    /// Compare the copy's answer with the client's.
    pub compare: bool,
    /// Headers left out of the comparison, besides the hop-by-hop ones and `date`.
    pub ignore_headers: Vec<http::HeaderName>,
    /// A request with a larger body is not copied (its body is teed up to this).
    pub max_body: u64,
    /// Copies in flight at most; one more is dropped (and counted), never queued.
    pub max_in_flight: u32,
}

/// `max_body` when the route does not set it.
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024;
/// `max_in_flight` when the route does not set it.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 100;

impl MirrorConfig {
    /// Is a request of this method copied?
    pub fn copies(&self, m: &http::Method) -> bool {
        self.methods.iter().any(|x| x == m)
    }
}

/// Parse a size: a number of bytes, or a number with `B`, `KB`/`KiB`, `MB`/`MiB` or
/// `GB`/`GiB` (SI units are powers of ten, the `i` ones powers of two).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}; expected a number of bytes or a size like \"64KiB\"")
    })?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in size {s:?}; use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v > u64::MAX as f64 / 2.0 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64 KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2kb"), Ok(2000));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }
}
