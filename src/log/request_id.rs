//! `X-Request-Id`: a sane one from the client is kept; otherwise one is made here, without a
//! lock or a shared counter: each thread has a random 64-bit prefix and its own counter.

use http::HeaderValue;
use std::cell::Cell;

/// The longest incoming ID kept (longer ones are replaced, not cut).
pub const MAX_LEN: usize = 128;

/// An incoming ID is kept when it is 1..=128 bytes of visible ASCII (no spaces, no control
/// bytes, nothing a log line or a backend could misread).
pub fn sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

thread_local! {
    /// (prefix, next counter); the prefix is drawn on the thread's first ID.
    static NEXT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A new ID: 32 lowercase hex digits (the thread's random prefix, then its counter), the
/// shape of a W3C trace id.
pub fn generate() -> HeaderValue {
    let (prefix, n) = NEXT.with(|c| {
        let (mut prefix, n) = c.get();
        if prefix == 0 {
            prefix = rand::random::<u64>() | 1;
        }
        c.set((prefix, n.wrapping_add(1)));
        (prefix, n)
    });
    let mut out = [0u8; 32];
    hex(prefix, &mut out[..16]);
    hex(n, &mut out[16..]);
    HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_sane_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(sane(&a) && sane(&b));
        assert_eq!(a.len(), 32);
        // Same thread: same prefix, next counter.
        assert_eq!(a.as_bytes()[..16], b.as_bytes()[..16]);
        let other = std::thread::spawn(generate).join().unwrap();
        assert_ne!(other.as_bytes()[..16], a.as_bytes()[..16]);
    }

    #[test]
    fn only_bounded_visible_ascii_is_kept() {
        assert!(sane(&HeaderValue::from_static("abc-123_XYZ.7")));
        assert!(!sane(&HeaderValue::from_static("")));
        assert!(!sane(&HeaderValue::from_static("has space")));
        assert!(!sane(&HeaderValue::from_bytes(b"tab\there").unwrap()));
        assert!(!sane(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()));
        assert!(sane(&HeaderValue::from_str(&"a".repeat(MAX_LEN)).unwrap()));
        assert!(!sane(
            &HeaderValue::from_str(&"a".repeat(MAX_LEN + 1)).unwrap()
        ));
    }
}
