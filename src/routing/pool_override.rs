//! Who may force a pool with the route's `override` header or cookie (SPEC §2): see
//! [`crate::config::pool_override`] for `allow_from` and the tokens; [`judge`] decides a
//! request's override with them.

pub use crate::config::pool_override::{
    read_secret, token, Cidr, SecretError, Tokens, DEFAULT_SECRET_ENV,
};
use std::net::IpAddr;

/// What a request's override value does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// No override (none configured, no value sent, or a name that is no pool of the route
    /// when overrides are unrestricted): the split decides.
    No,
    /// Force the route's pool at this index.
    Pool(usize),
    /// An override that is not allowed (peer outside `allow_from`, or a value that is not a
    /// valid token): ignored, the split decides, and it is counted.
    Rejected,
}

/// Judge an override `value` from `peer`. `pool_index` finds a pool of the route by name.
pub fn judge(
    o: &crate::config::Override,
    value: &str,
    peer: IpAddr,
    pool_index: impl Fn(&str) -> Option<usize>,
) -> Forced {
    let value = value.trim();
    if !o.allow_from.is_empty() && !o.allow_from.iter().any(|c| c.contains(peer)) {
        return Forced::Rejected;
    }
    match &o.tokens {
        None => pool_index(value).map_or(Forced::No, Forced::Pool),
        Some(tokens) => {
            // POOL.HEX: the pool is all before the last dot (a pool name may hold dots).
            let Some((pool, _)) = value.rsplit_once('.') else {
                return Forced::Rejected;
            };
            match pool_index(pool) {
                Some(i) if tokens.matches(pool, value) => Forced::Pool(i),
                _ => Forced::Rejected,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Override;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn judge_names(o: &Override, value: &str, peer: &str) -> Forced {
        let names = ["blue", "green.v2"];
        judge(o, value, ip(peer), |n| names.iter().position(|p| *p == n))
    }

    #[test]
    fn who_may_force_a_pool() {
        let open = Override::default();
        assert_eq!(judge_names(&open, " green.v2 ", "1.2.3.4"), Forced::Pool(1));
        assert_eq!(judge_names(&open, "red", "1.2.3.4"), Forced::No);

        let cidr = Override {
            allow_from: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            ..Override::default()
        };
        assert_eq!(judge_names(&cidr, "blue", "10.0.0.1"), Forced::Pool(0));
        assert_eq!(
            judge_names(&cidr, "blue", "::ffff:10.0.0.1"),
            Forced::Pool(0)
        );
        assert_eq!(judge_names(&cidr, "blue", "127.0.0.1"), Forced::Rejected);

        let secret = Override {
            tokens: Some(Tokens::new(b"s3", ["blue", "green.v2"])),
            ..Override::default()
        };
        let good = token(b"s3", "green.v2");
        assert_eq!(judge_names(&secret, &good, "1.2.3.4"), Forced::Pool(1));
        assert_eq!(
            judge_names(&secret, "green.v2", "1.2.3.4"),
            Forced::Rejected
        );
        assert_eq!(
            judge_names(&secret, &token(b"wrong", "green.v2"), "1.2.3.4"),
            Forced::Rejected
        );
        // Blue's token does not force green, nor does it with the name swapped.
        let blue = token(b"s3", "blue");
        let swapped = format!("green.v2{}", &blue[4..]);
        assert_eq!(judge_names(&secret, &swapped, "1.2.3.4"), Forced::Rejected);
        let upper = format!("blue.{}", blue[5..].to_uppercase());
        assert_eq!(
            judge_names(&secret, &upper, "1.2.3.4"),
            Forced::Rejected,
            "lowercase hex only"
        );
        assert_eq!(
            judge_names(&secret, &format!("{good}0"), "1.2.3.4"),
            Forced::Rejected
        );

        let both = Override {
            allow_from: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            ..secret.clone()
        };
        assert_eq!(judge_names(&both, &good, "10.1.1.1"), Forced::Pool(1));
        assert_eq!(judge_names(&both, &good, "192.168.1.1"), Forced::Rejected);
        assert_eq!(judge_names(&both, "green.v2", "10.1.1.1"), Forced::Rejected);
    }
}
