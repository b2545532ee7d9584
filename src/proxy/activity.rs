//! What a connection is doing, for its timeouts: the request-activity counters the request
//! path and the IO wrapper update with atomics, the guard that counts a request active until
//! its response body has been sent, and the IO wrapper that notices each HTTP/1.1 request
//! head's first byte.

use super::body::{BodyError, ProxyBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What one connection is doing, for its timeouts: the request path and the IO wrapper
/// update it with atomics; the connection's own loop turns it into a deadline.
pub(super) struct Activity {
    /// Requests being handled, counted until their response body has been sent.
    pub(super) active: AtomicU32,
    /// Milliseconds since `start` of the last request end (or the start).
    pub(super) last: AtomicU64,
    /// Milliseconds since `start`, plus one, when bytes of a request head began to arrive
    /// on an idle connection; 0 while no head is being read.
    pub(super) head_since: AtomicU64,
    /// False once the connection's socket is dropped; after an upgrade that is when the
    /// tunnel ends.
    pub(super) io_open: AtomicBool,
    /// Wakes the connection task when the socket is dropped (the end of a tunnel).
    pub(super) changed: Notify,
    pub(super) start: Instant,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            active: AtomicU32::new(0),
            last: AtomicU64::new(0),
            // A new connection owes us its first request head within header_read_timeout.
            head_since: AtomicU64::new(1),
            io_open: AtomicBool::new(true),
            changed: Notify::new(),
            start: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The next deadline: none while requests run; header_read_timeout from the first byte
    /// of a head; idle_timeout from the last request otherwise.
    pub(super) fn deadline(
        &self,
        header_read: Duration,
        idle: Duration,
    ) -> Option<(Instant, Expiry)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head > 0 {
            let at = self.start + Duration::from_millis(head - 1) + header_read;
            return Some((at, Expiry::Head));
        }
        let at = self.start + Duration::from_millis(self.last.load(Ordering::Acquire)) + idle;
        Some((at, Expiry::Idle))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// A request head took too long (slowloris): the connection is dropped.
    Head,
    /// No request for idle_timeout: the connection is closed gracefully.
    Idle,
}

/// Counts a request as active from the moment hyper hands it over until its response body
/// has been sent (or dropped).
pub(super) struct ActiveGuard(Arc<Activity>);

impl ActiveGuard {
    pub(super) fn new(a: &Arc<Activity>) -> Self {
        a.head_since.store(0, Ordering::Release);
        a.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(a.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.last.store(a.now_ms(), Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The downstream response body, holding the request's [`ActiveGuard`] until it ends.
pub(super) struct GuardedBody {
    pub(super) inner: ProxyBody,
    pub(super) _guard: ActiveGuard,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection's IO, watched for the first bytes of each HTTP/1.1 request head (so the
/// header timeout runs from the first byte, and an idle keep-alive connection is governed by
/// idle_timeout alone). HTTP/2 connections, recognised by their preface, are not watched:
/// their frames (pings, window updates) are not request heads.
pub(super) struct HeadWatch<I> {
    io: I,
    activity: Arc<Activity>,
    /// Bytes of the HTTP/2 preface matched so far; `PREFACE_NO` once it cannot be HTTP/2.
    preface: u8,
}

const PREFACE_NO: u8 = u8::MAX;

impl<I> HeadWatch<I> {
    pub(super) fn new(io: I, activity: &Arc<Activity>) -> Self {
        HeadWatch {
            io,
            activity: activity.clone(),
            preface: 0,
        }
    }

    fn saw(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.preface != PREFACE_NO && (self.preface as usize) < H2_PREFACE.len() {
            let at = self.preface as usize;
            let n = data.len().min(H2_PREFACE.len() - at);
            if data[..n] == H2_PREFACE[at..at + n] {
                self.preface += n as u8;
                if self.preface as usize == H2_PREFACE.len() {
                    self.activity.head_since.store(0, Ordering::Release);
                }
                return;
            }
            self.preface = PREFACE_NO;
        }
        if self.preface != PREFACE_NO {
            return; // HTTP/2
        }
        let a = &self.activity;
        if a.active.load(Ordering::Acquire) == 0 && a.head_since.load(Ordering::Acquire) == 0 {
            a.head_since.store(a.now_ms() + 1, Ordering::Release);
        }
    }
}

impl<I> Drop for HeadWatch<I> {
    fn drop(&mut self) {
        self.activity.io_open.store(false, Ordering::Release);
        self.activity.changed.notify_one();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeadWatch<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let me = &mut *self;
            me.saw(&buf.filled()[before..]);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadWatch<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
