//! Decoding a fast-path response body (whole, fixed length, chunked, or to the close) while
//! it holds the connection.

use super::{BoxError, InlineConn, MAX_HEADERS, MAX_LINE, READ_CHUNK, READ_MAX};
use crate::upstream::conn_pool::Conns;
use bytes::{Buf, Bytes};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

pub(super) enum State {
    /// The whole body, already read.
    Full(Option<Bytes>),
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    Eof,
    Done,
}

#[derive(Clone, Copy)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers, then the blank line.
    Trailers,
}

/// A fast-path response body: it owns the connection until the body ends, then puts it back
/// in the pool (or closes it when the exchange cannot be trusted to have left it clean).
pub struct UpstreamBodyInline {
    pub(super) state: State,
    pub(super) conn: Option<InlineConn>,
    pub(super) conns: Arc<Conns>,
    pub(super) reusable: bool,
}

impl std::fmt::Debug for UpstreamBodyInline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamBodyInline")
    }
}

impl UpstreamBodyInline {
    /// The body has ended: give the connection back if it is clean.
    pub(super) fn finish(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.reusable && c.buf.is_empty() {
                self.conns.check_in_inline(c);
            }
        }
        if !matches!(self.state, State::Full(Some(_))) {
            self.state = State::Done;
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None; // closes it
        self.state = State::Done;
        Poll::Ready(Some(Err(e.into())))
    }

    /// Read more, failing on an early close.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let want = match &self.state {
            State::Length(rem) => usize::try_from(*rem).unwrap_or(READ_MAX),
            State::Chunked(Chunk::Data(rem)) => usize::try_from(*rem).unwrap_or(READ_MAX),
            _ => READ_CHUNK,
        };
        let Some(c) = self.conn.as_mut() else {
            return Poll::Ready(Err("connection gone".into()));
        };
        match ready!(c.poll_fill_up_to(cx, want)) {
            Ok(0) => Poll::Ready(Err("backend closed the connection mid-body".into())),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl Body for UpstreamBodyInline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        loop {
            match &mut me.state {
                State::Done => return Poll::Ready(None),
                State::Full(b) => {
                    let b = b.take();
                    me.state = State::Done;
                    return Poll::Ready(b.map(|b| Ok(Frame::data(b))));
                }
                State::Length(0) => {
                    me.finish();
                    return Poll::Ready(None);
                }
                State::Length(rem) => {
                    let buf = &mut me.conn.as_mut().expect("conn while reading").buf;
                    if !buf.is_empty() {
                        let n = (*rem).min(buf.len() as u64);
                        let data = buf.split_to(n as usize).freeze();
                        *rem -= n;
                        if *rem == 0 {
                            me.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if let Err(e) = ready!(me.poll_more(cx)) {
                        return me.fail(e);
                    }
                }
                State::Eof => {
                    let Some(c) = me.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if !c.buf.is_empty() {
                        let data = c.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(c.poll_fill_up_to(cx, READ_MAX)) {
                        Ok(0) => {
                            me.conn = None;
                            me.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return me.fail(e),
                    }
                }
                State::Chunked(step) => {
                    let step = *step;
                    match me.poll_chunk(step, cx) {
                        Poll::Ready(Ok(Some(frame))) => return Poll::Ready(Some(Ok(frame))),
                        Poll::Ready(Ok(None)) => {}
                        Poll::Ready(Err(e)) => return me.fail(e),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.state,
            State::Done | State::Full(None) | State::Length(0)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            State::Full(None) | State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}

impl UpstreamBodyInline {
    /// One step of the chunked decoder: a frame, or `None` to go round again (state moved).
    fn poll_chunk(
        &mut self,
        step: Chunk,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, BoxError>> {
        let buf = &mut self.conn.as_mut().ok_or("connection gone")?.buf;
        match step {
            Chunk::Size => {
                if let Some(end) = find(buf, b"\r\n") {
                    let size = chunk_size(&buf[..end]).ok_or("bad chunk size")?;
                    buf.advance(end + 2);
                    self.state = State::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                    return Poll::Ready(Ok(None));
                }
                if buf.len() > MAX_LINE {
                    return Poll::Ready(Err("chunk size line too long".into()));
                }
            }
            Chunk::Data(rem) => {
                if !buf.is_empty() {
                    let n = rem.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = State::Chunked(if n == rem {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(rem - n)
                    });
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
            }
            Chunk::DataEnd => {
                if buf.len() >= 2 {
                    if &buf[..2] != b"\r\n" {
                        return Poll::Ready(Err("missing CRLF after chunk".into()));
                    }
                    buf.advance(2);
                    self.state = State::Chunked(Chunk::Size);
                    return Poll::Ready(Ok(None));
                }
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
                // httparse says where the section ends (it also takes a bare LF as a line
                // end): the body ends there, not at the next CRLF CRLF further on.
                let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let parsed = match httparse::parse_headers(buf, &mut raw) {
                    Ok(httparse::Status::Complete((n, hs))) => {
                        let mut trailers = HeaderMap::new();
                        for h in hs {
                            if let (Ok(k), Ok(v)) = (
                                HeaderName::from_bytes(h.name.as_bytes()),
                                HeaderValue::from_bytes(h.value),
                            ) {
                                trailers.append(k, v);
                            }
                        }
                        Some((n, trailers))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(_) => return Poll::Ready(Err("bad trailers".into())),
                };
                if let Some((n, trailers)) = parsed {
                    buf.advance(n);
                    self.finish();
                    return Poll::Ready(Ok(Some(Frame::trailers(trailers))));
                }
                if buf.len() > MAX_LINE {
                    return Poll::Ready(Err("trailers too long".into()));
                }
            }
        }
        ready!(self.poll_more(cx))?;
        Poll::Ready(Ok(None))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A chunk-size line without its CRLF (RFC 9112 §7.1): hex digits, then extensions, which
/// are ignored (§7.1.1). No sign, no leading whitespace, no bare CR or other control byte:
/// a size read more loosely than the next hop reads it is a way to split a response.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let size = line[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(16)?
            .checked_add((d as char).to_digit(16)?.into())
    });
    let ext = &line[digits..];
    let ext = &ext[ext.iter().take_while(|&&b| b == b' ' || b == b'\t').count()..];
    let clean = ext.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    (digits > 0 && clean && (ext.is_empty() || ext[0] == b';')).then_some(size?)
}
