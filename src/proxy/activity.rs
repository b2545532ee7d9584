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

// ---------------------------------------------------------------------------------------
// One timer for all of veer's own HTTP/1.1 connections (nginx's timer tree, HAProxy's
// lazily re-queued task timers): an idle connection holds no `Sleep` (a tokio timer entry is
// 112 bytes in every connection's task) and waits for no cancellation token (72 more); it has
// a small shared slot with its deadline, which the request path moves with a plain atomic
// store. One sweeper task keeps a heap of when to look at each slot again.
//
// Exact without a lock per request: a slot is looked at again no later than `check`
// (min(header_read_timeout, idle_timeout)) after the last look, and no deadline the request
// path sets falls less than `check` after it is set; so the deadline in force is always due
// no earlier than the slot's next look. Only a deadline moved earlier from elsewhere (the
// linger of a shutdown) is pushed onto the heap directly.

/// No deadline (a request is being answered).
const NEVER: u64 = u64::MAX;
/// The sweeper found the deadline passed (so the connection needs no clock to see it).
const EXPIRED: u64 = u64::MAX - 1;

/// The shared timer behind every connection of veer's own HTTP/1.1 loop.
pub(super) struct IdleTimers {
    heap: std::sync::Mutex<TimerHeap>,
    /// Wakes the sweeper when a look due sooner than its next one is pushed.
    sooner: Notify,
    /// Deadlines are nanoseconds since this instant.
    base: Instant,
    /// Shutdown: every slot's connection is woken to see it.
    closing: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for IdleTimers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleTimers")
            .field("slots", &self.lock().looks.len())
            .finish()
    }
}

#[derive(Default)]
struct TimerHeap {
    looks: std::collections::BinaryHeap<Look>,
    /// A sweeper task is running (it ends when no slot is left).
    sweeping: bool,
    /// Shutdown has been passed on to every slot.
    closed: bool,
}

/// When to look at a slot next.
struct Look {
    at: u64,
    slot: Arc<TimerSlot>,
}

impl PartialEq for Look {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for Look {}
impl PartialOrd for Look {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Look {
    // The earliest on top of the (max-)heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at)
    }
}

/// One connection's deadline, shared with the sweeper.
pub(super) struct TimerSlot {
    /// Nanoseconds since the timers' base; `NEVER` for none.
    deadline: AtomicU64,
    /// How long after a look the next one is due at the latest (see the section's comment).
    check: u64,
    waker: futures_util::task::AtomicWaker,
}

impl IdleTimers {
    pub(super) fn new(closing: tokio_util::sync::CancellationToken) -> Self {
        IdleTimers {
            heap: std::sync::Mutex::new(TimerHeap::default()),
            sooner: Notify::new(),
            base: Instant::now(),
            closing,
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base)
            .as_nanos()
            .min(EXPIRED as u128 - 1) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TimerHeap> {
        self.heap.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection, due at `deadline`; `check` is
    /// min(header_read_timeout, idle_timeout). Must be called inside the runtime (it may
    /// start the sweeper).
    pub(super) fn register(self: &Arc<Self>, deadline: Instant, check: Duration) -> SlotRef {
        let slot = Arc::new(TimerSlot {
            deadline: AtomicU64::new(self.ns(deadline)),
            check: (check.as_nanos().min(u64::MAX as u128) as u64).max(1),
            waker: futures_util::task::AtomicWaker::new(),
        });
        let now = self.ns(Instant::now());
        let at = self.ns(deadline).min(now.saturating_add(slot.check));
        self.push(at, slot.clone());
        SlotRef(slot)
    }

    /// Look at `slot` at `at` (sooner than the heap would).
    pub(super) fn look_at(self: &Arc<Self>, slot: &Arc<TimerSlot>, at: Instant) {
        self.push(self.ns(at), slot.clone());
    }

    fn push(self: &Arc<Self>, at: u64, slot: Arc<TimerSlot>) {
        let mut h = self.lock();
        let sooner = h.looks.peek().is_none_or(|top| at < top.at);
        h.looks.push(Look { at, slot });
        if !h.sweeping {
            h.sweeping = true;
            tokio::spawn(sweep(self.clone()));
        } else if sooner {
            self.sooner.notify_one();
        }
    }

    /// Wake the connections whose deadline has passed; the next look's time, or `None` (and
    /// the sweeper ends) once no slot is left.
    fn sweep_once(&self) -> Option<u64> {
        let now = self.ns(Instant::now());
        let mut h = self.lock();
        if !h.closed && self.closing.is_cancelled() {
            // Every connection is told; an idle one then lingers at most SHUTDOWN_LINGER
            // from now, so no look may be later than that.
            h.closed = true;
            let linger = now.saturating_add(super::server::SHUTDOWN_LINGER.as_nanos() as u64);
            let looks = std::mem::take(&mut h.looks);
            h.looks = looks
                .into_iter()
                .map(|mut l| {
                    l.slot.waker.wake();
                    l.at = l.at.min(linger);
                    l
                })
                .collect();
        }
        while h.looks.peek().is_some_and(|top| top.at <= now) {
            let Some(Look { slot, .. }) = h.looks.pop() else {
                break;
            };
            if Arc::strong_count(&slot) == 1 {
                continue; // its connection has ended
            }
            let d = slot.deadline.load(Ordering::Acquire);
            // Passed, unless the connection has moved it meanwhile (it is busy again).
            let passed = d <= now
                && slot
                    .deadline
                    .compare_exchange(d, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
            let next = if passed {
                slot.waker.wake();
                now.saturating_add(slot.check)
            } else {
                d.min(now.saturating_add(slot.check))
            };
            h.looks.push(Look { at: next, slot });
        }
        match h.looks.peek() {
            Some(top) => Some(top.at),
            None => {
                h.sweeping = false;
                None
            }
        }
    }
}

async fn sweep(timers: Arc<IdleTimers>) {
    let sleep = tokio::time::sleep_until(timers.base);
    tokio::pin!(sleep);
    loop {
        let Some(next) = timers.sweep_once() else {
            return;
        };
        sleep
            .as_mut()
            .reset(timers.base + Duration::from_nanos(next));
        let closed = timers.lock().closed;
        tokio::select! {
            _ = sleep.as_mut() => {}
            _ = timers.sooner.notified() => {}
            _ = timers.closing.cancelled(), if !closed => {}
        }
    }
}

/// A connection's hold on its slot. Dropped with the connection: the slot's waker (which
/// keeps the connection task's memory) goes at once, the slot at its next look.
pub(super) struct SlotRef(Arc<TimerSlot>);

impl std::ops::Deref for SlotRef {
    type Target = Arc<TimerSlot>;
    fn deref(&self) -> &Arc<TimerSlot> {
        &self.0
    }
}

impl Drop for SlotRef {
    fn drop(&mut self) {
        drop(self.0.waker.take());
    }
}

impl TimerSlot {
    /// The connection's deadline from now on (`None`: none).
    pub(super) fn set(&self, timers: &IdleTimers, at: Option<Instant>) {
        let v = at.map_or(NEVER, |at| timers.ns(at));
        self.deadline.store(v, Ordering::Release);
    }

    /// Lower the deadline to `at` if it is later (and have the sweeper look then).
    pub(super) fn lower(self: &Arc<Self>, timers: &Arc<IdleTimers>, at: Instant) {
        let v = timers.ns(at);
        let lowered = self
            .deadline
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d != EXPIRED && d > v).then_some(v)
            })
            .is_ok();
        if lowered {
            timers.look_at(self, at);
        }
    }

    /// Has the deadline passed? If not, the task is woken when it does. No clock is read:
    /// the sweeper marks a passed deadline.
    pub(super) fn poll_expired(&self, cx: &mut Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.deadline.load(Ordering::Acquire) == EXPIRED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio_util::sync::CancellationToken;

    /// Resolves when the slot's deadline has passed, with the time it did.
    async fn expiry(slot: &TimerSlot) -> Instant {
        poll_fn(|cx| {
            if slot.poll_expired(cx) {
                Poll::Ready(Instant::now())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_at_its_instant() {
        let timers = Arc::new(IdleTimers::new(CancellationToken::new()));
        let start = Instant::now();
        let slot = timers.register(start + ms(300), ms(300));
        assert_eq!(expiry(&slot).await - start, ms(300));
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_set_without_the_sweeper_knowing_fire_exactly() {
        // check = 100 ms (header_read_timeout), idle 1 s: the request path only stores.
        let timers = Arc::new(IdleTimers::new(CancellationToken::new()));
        let start = Instant::now();
        let slot = timers.register(start + ms(100), ms(100));
        // A head at 10 ms, answered; idle from 30 ms (deadline 1030 ms).
        tokio::time::sleep(ms(10)).await;
        slot.set(&timers, None);
        tokio::time::sleep(ms(20)).await;
        slot.set(&timers, Some(start + ms(1030)));
        // The next head's first byte at 737 ms, never completed: due at 837 ms.
        tokio::time::sleep(ms(707)).await;
        slot.set(&timers, Some(start + ms(837)));
        assert_eq!(expiry(&slot).await - start, ms(837));
        // Busy for a long time: never expires meanwhile.
        slot.set(&timers, None);
        let busy = tokio::time::timeout(ms(5_000), expiry(&slot)).await;
        assert!(busy.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lowered_deadline_and_shutdown_are_seen() {
        let closing = CancellationToken::new();
        let timers = Arc::new(IdleTimers::new(closing.clone()));
        let start = Instant::now();
        let a = timers.register(start + ms(60_000), ms(10_000));
        let b = timers.register(start + ms(60_000), ms(10_000));
        // Lowered from elsewhere: due at once at the new instant, not at the next look.
        a.lower(&timers, start + ms(250));
        assert_eq!(expiry(&a).await - start, ms(250));
        // Shutdown wakes every connection (to start its linger).
        let woken = Arc::new(AtomicU32::new(0));
        let w = woken.clone();
        let b2 = b.clone();
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| {
                if b2.poll_expired(cx) || w.fetch_add(1, Ordering::AcqRel) == 1 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await
        });
        tokio::time::sleep(ms(1)).await;
        closing.cancel();
        tokio::time::timeout(ms(1), waiting).await.unwrap().unwrap();
        assert_eq!(woken.load(Ordering::Acquire), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_ends_with_the_last_connection_and_starts_again() {
        let timers = Arc::new(IdleTimers::new(CancellationToken::new()));
        let slot = timers.register(Instant::now() + ms(100), ms(100));
        drop(slot);
        tokio::time::sleep(ms(500)).await;
        assert!(!timers.lock().sweeping);
        assert!(timers.lock().looks.is_empty());
        let start = Instant::now();
        let slot = timers.register(start + ms(40), ms(40));
        assert_eq!(expiry(&slot).await - start, ms(40));
    }
}
