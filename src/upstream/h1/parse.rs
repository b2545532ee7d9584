//! Reading a response head, and the framing it gives the body that follows.

use super::{MAX_HEAD, MAX_HEADERS};
use crate::upstream::body::UpstreamBody;
use crate::upstream::conn_pool::UpstreamError;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};

/// A whole response head, if the buffer holds one.
pub(super) fn try_parse(buf: &BytesMut) -> Result<Option<Parsed>, UpstreamError> {
    // Uninitialised: filling 100 empty headers per response costs more than parsing five.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => parse_head(&resp, buf, len).map(Some),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err(UpstreamError::Protocol("response head too large".into()))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(UpstreamError::Protocol(e.to_string())),
    }
}

pub(super) enum Length {
    Fixed(u64),
    Chunked,
    Close,
}

pub(super) struct Framing {
    pub(super) length: Length,
    pub(super) keep_alive: bool,
}

pub(super) type Parsed = (usize, Response<UpstreamBody>, Framing);

fn parse_head(
    r: &httparse::Response<'_, '_>,
    buf: &BytesMut,
    len: usize,
) -> Result<Parsed, UpstreamError> {
    let bad = |m: &str| UpstreamError::Protocol(m.to_string());
    let status = StatusCode::from_u16(r.code.unwrap_or(0)).map_err(|_| bad("bad status"))?;
    let version = match r.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Header values are slices of one shared copy of the head, not one allocation each.
    let shared = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let mut length = None::<u64>;
    let mut length_repeated = false;
    let mut chunked = false;
    let mut has_te = false;
    let mut keep_alive = version == Version::HTTP_11;
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("bad header name"))?;
        let start = h.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(shared.slice(start..start + h.value.len()))
            .map_err(|_| bad("bad header value"))?;
        if name == header::CONTENT_LENGTH {
            // Every line, and every item of a list (`5, 5`), must be the same number: any
            // other answer cannot be framed, and guessing would truncate or hang (as hyper).
            for item in value.as_bytes().split(|&b| b == b',') {
                let n =
                    content_length(item.trim_ascii()).ok_or_else(|| bad("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("conflicting content-length"));
                }
                length_repeated |= length.is_some();
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            has_te = true;
            // Only a final `chunked` frames the body; anything else reads to the close.
            chunked = value.to_str().ok().is_some_and(|s| {
                s.rsplit(',')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            });
        } else if name == header::CONNECTION {
            // Only close and keep-alive (the usual case): read here and dropped, so the
            // hop-by-hop pass has nothing to do. A Connection naming other headers is kept
            // for that pass to act on.
            let mut only_ours = true;
            if let Ok(s) = value.to_str() {
                for t in s.split(',').map(str::trim) {
                    if t.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if t.eq_ignore_ascii_case("keep-alive") {
                        keep_alive |= version == Version::HTTP_10;
                    } else {
                        only_ours = false;
                    }
                }
            }
            if only_ours {
                continue;
            }
        } else if name.as_str() == "keep-alive" {
            continue; // hop-by-hop, and its parameters mean nothing to veer
        }
        headers.append(name, value);
    }
    if let (true, Some(n)) = (length_repeated, length) {
        // Relayed as the one value it is: not every client takes a list.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let length = if has_te {
        // An HTTP/1.0 message cannot be chunked: its framing is faulty (RFC 9112 §6.1).
        if version == Version::HTTP_10 {
            return Err(bad("transfer-encoding in an HTTP/1.0 response"));
        }
        // With a Content-Length as well, the transfer coding frames the body (RFC 9112
        // §6.3; the hop-by-hop pass drops the Content-Length before relaying), and a backend
        // that sent both is not trusted with the connection afterwards.
        if length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Length::Chunked
        } else {
            Length::Close
        }
    } else {
        match length {
            Some(n) => Length::Fixed(n),
            None => Length::Close,
        }
    };
    let mut resp = Response::new(UpstreamBody::Empty);
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok((len, resp, Framing { length, keep_alive }))
}

/// Make a Content-Length said more than once (`5, 5`, or two lines, which the parser
/// accepted only as the same number) one line with the one value, as [`parse_head`] does on
/// the fast path: not every client takes a list. One lookup when it is said once.
pub(crate) fn single_content_length(h: &mut HeaderMap) {
    let mut values = h.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), more) = (values.next(), values.next().is_some()) else {
        return;
    };
    if !more && !first.as_bytes().contains(&b',') {
        return;
    }
    let n = first
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .and_then(|d| content_length(d.trim_ascii()));
    if let Some(n) = n {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// A Content-Length value: digits only (no sign, no spaces inside), fitting in a u64.
fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
