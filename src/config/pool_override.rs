//! The parts of `[routes.override]` that are data (SPEC §2): address blocks and the valid
//! token of every pool; `crate::routing::pool_override` judges a request with them.
//!
//! `allow_from` is a list of address blocks matched against the client's peer address (an
//! IPv4-mapped IPv6 peer is matched as the IPv4 address it is). `secret_env` names an env var
//! holding a secret; the value must then be `POOL.HEX`, HEX the lowercase hex
//! HMAC-SHA256(secret, POOL). The valid value of every pool is computed once, when the config
//! is loaded ([`Tokens`]), so a request costs one constant-time compare and no HMAC. Both may
//! be set; then both must hold. An override that does not hold is ignored and counted.

use std::fmt;
use std::net::IpAddr;

/// The env var `veer override-token` reads the secret from by default.
pub const DEFAULT_SECRET_ENV: &str = "VEER_OVERRIDE_SECRET";

/// An address block of `allow_from`: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `ADDR/LEN` or a bare address (all of its bits). Host bits set below the prefix are
    /// an error, as they are almost always a typo for another block.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block like \"10.0.0.0/8\""))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(p) if p <= max && !l.starts_with('+') => p,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        // A block written as IPv4-mapped IPv6 matches the IPv4 peers it names.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let c = Cidr { net: addr, prefix };
        if c.masked(addr) != bits(addr) {
            let net = match addr {
                IpAddr::V4(_) => IpAddr::V4((c.masked(addr) as u32).into()),
                IpAddr::V6(_) => IpAddr::V6(c.masked(addr).into()),
            };
            return Err(format!(
                "{s:?} has bits set past its /{prefix} prefix; did you mean \"{net}/{prefix}\"?"
            ));
        }
        Ok(c)
    }

    /// Is `ip` in the block? IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(ip) == bits(self.net)
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix);
        if host_bits >= 128 {
            0
        } else {
            bits(ip) & !((1u128 << host_bits) - 1)
        }
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Why a secret could not be read from the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0:?} is not set")]
    Unset(String),
    #[error("environment variable {0:?} is empty")]
    Empty(String),
    #[error("environment variable {0:?} is not valid UTF-8")]
    NotUnicode(String),
}

/// The override secret from env var `name`; unset or empty is an error (an empty HMAC key
/// would make every token public).
pub fn read_secret(name: &str) -> Result<String, SecretError> {
    match std::env::var(name) {
        Ok(s) if s.is_empty() => Err(SecretError::Empty(name.to_string())),
        Ok(s) => Ok(s),
        Err(std::env::VarError::NotPresent) => Err(SecretError::Unset(name.to_string())),
        Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::NotUnicode(name.to_string())),
    }
}

/// The override value that forces `pool` under `secret`: `POOL.HEX`, HEX the lowercase hex
/// HMAC-SHA256(secret, POOL). `veer override-token` prints it.
pub fn token(secret: &[u8], pool: &str) -> String {
    use std::fmt::Write;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, pool.as_bytes());
    let mut out = String::with_capacity(pool.len() + 1 + 64);
    out.push_str(pool);
    out.push('.');
    for b in tag.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The valid override value of each pool, by pool name. Computed for every pool of the
/// config, so a split changed through the API (which may name other pools) still finds them.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens(Box<[(Box<str>, Box<str>)]>);

impl Tokens {
    pub fn new<'a>(secret: &[u8], pools: impl IntoIterator<Item = &'a str>) -> Tokens {
        Tokens(
            pools
                .into_iter()
                .map(|p| (p.into(), token(secret, p).into()))
                .collect(),
        )
    }

    /// Is `value` the token of `pool`? In constant time over the token's length.
    pub fn matches(&self, pool: &str, value: &str) -> bool {
        self.0
            .iter()
            .find(|(p, _)| &**p == pool)
            .is_some_and(|(_, t)| constant_time_eq(t.as_bytes(), value.as_bytes()))
    }
}

/// The tokens are credentials: never in logs or `{:?}` output.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens([redacted; {}])", self.0.len())
    }
}

/// Compare without stopping at the first difference, so the time taken does not tell how much
/// of a guess was right. The length is not secret (it is the pool name's plus 65).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(
            c.contains(ip("::ffff:10.9.9.9")),
            "v4-mapped is matched as v4"
        );
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.7")));
        assert!(!all.contains(ip("2001:db8::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        let mapped = Cidr::parse("::ffff:192.168.0.0/112").unwrap();
        assert_eq!(mapped.to_string(), "192.168.0.0/16");
        assert!(mapped.contains(ip("192.168.4.4")));
    }

    #[test]
    fn bad_cidrs_say_why() {
        for (s, want) in [
            ("10.0.0.0/33", "the prefix length must be 0 to 32"),
            ("10.0.0.0/+8", "the prefix length"),
            ("10.0.0.0/", "the prefix length"),
            ("::/129", "0 to 128"),
            ("example.com/8", "not an IP address"),
            ("10.1.0.0/8", "did you mean \"10.0.0.0/8\"?"),
            ("2001:db8::1/32", "did you mean \"2001:db8::/32\"?"),
        ] {
            let e = Cidr::parse(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn tokens_are_hmac_sha256_in_lowercase_hex() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let t = token(b"Jefe", "what do ya want for nothing?");
        assert_eq!(
            t,
            "what do ya want for nothing?.5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let t = Tokens::new(b"k", ["blue", "green"]);
        assert!(t.matches("green", &token(b"k", "green")));
        assert!(!t.matches("blue", &token(b"k", "green")));
        assert!(!t.matches("green", &token(b"other", "green")));
        assert!(!t.matches("red", &token(b"k", "red")));
        assert_eq!(format!("{t:?}"), "Tokens([redacted; 2])");
    }
}
