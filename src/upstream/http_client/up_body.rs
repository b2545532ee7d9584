//! [`UpBody`]: the request body as the upstream client sends it, taken from a [`BodySlot`]
//! shared between attempts, so a retry can still send a body no attempt took.

use crate::body::{BodyClock, BodyError, BodyLimit, ClientBodyError, ClientFault, RequestBody};
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Notify;

/// The downstream body waiting to be sent upstream. Shared between attempts: the first attempt
/// that polls it takes it; if no attempt polled it, a retry can still send it. It also says
/// how the body is doing, for the request's deadline and for telling a client's fault from
/// a backend's.
#[derive(Debug)]
pub struct BodySlot {
    slot: ArrayQueue<Taken>,
    hint: SizeHint,
    /// Progress of the upload, so request_timeout can start when the body has been sent
    /// and a stalled client can be told from a slow backend.
    progress: AtomicU64,
    /// Bytes of the body read from the client so far (the access log's `bytes_in`).
    received: AtomicU64,
    done: AtomicBool,
    waiting_on_client: AtomicBool,
    /// How the client's body failed ([`ClientFault`] as `fault_code`), 0 while it has not.
    fault: AtomicU8,
    /// The backend has answered: the request-body limit no longer applies (see `Taken`).
    answered: AtomicBool,
    done_wake: Notify,
}

/// The client's body as an attempt takes it: the body, its first frame if it was read ahead
/// of any attempt, and its clock.
#[derive(Debug)]
struct Taken {
    body: RequestBody,
    first: Option<Frame<Bytes>>,
    clock: BodyClock,
}

impl Taken {
    /// The next frame, with the body's time accounted and its failures made [`ClientBodyError`]s
    /// (recorded in the slot, so the exchange's error can say whose fault it was).
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        slot: &BodySlot,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(f) = self.first.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                let n = f.data_ref().map_or(0, |d| d.len());
                self.clock.got(n);
                slot.received.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = ClientFault::of(&*e);
                Poll::Ready(Some(Err(slot.failed(fault, Some(e)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // Once the backend has answered, the exchange may be a full-duplex stream
                // (gRPC) paced by the application, and a 408 can no longer be sent.
                if slot.answered.load(Ordering::Acquire) {
                    self.clock.stop();
                }
                if self.clock.waiting(cx) {
                    return Poll::Ready(Some(Err(slot.failed(ClientFault::Slow, None))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.body.size_hint();
        let Some(n) = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map(|d| d.len() as u64)
        else {
            return rest;
        };
        let mut h = SizeHint::new();
        if let Some(u) = rest.upper() {
            h.set_upper(u.saturating_add(n));
        }
        h.set_lower(rest.lower().saturating_add(n));
        h
    }
}

fn fault_code(f: ClientFault) -> u8 {
    match f {
        ClientFault::Malformed => 1,
        ClientFault::Gone => 2,
        ClientFault::Slow => 3,
    }
}

impl BodySlot {
    /// `None` for a request without a body (nothing to keep).
    pub fn new(body: RequestBody, limit: BodyLimit) -> Option<Arc<Self>> {
        if body.is_end_stream() {
            return None;
        }
        let hint = body.size_hint();
        let slot = ArrayQueue::new(1);
        let _ = slot.push(Taken {
            body,
            first: None,
            clock: BodyClock::new(limit),
        });
        Some(Arc::new(BodySlot {
            slot,
            hint,
            progress: AtomicU64::new(0),
            received: AtomicU64::new(0),
            done: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
            fault: AtomicU8::new(0),
            answered: AtomicBool::new(false),
            done_wake: Notify::new(),
        }))
    }

    /// Read the body's first frame before anything is sent upstream, so framing that is bad
    /// from its first byte (or a client that never sends any) costs no backend anything.
    /// `Ok(false)`: the body turned out empty. Only before any attempt (while `this` is the
    /// only reference).
    pub fn poll_first(
        this: &mut Arc<Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, ClientFault>> {
        let Some(me) = Arc::get_mut(this) else {
            return Poll::Ready(Ok(true));
        };
        let Some(mut t) = me.slot.pop() else {
            return Poll::Ready(Ok(true));
        };
        let polled = if t.first.is_some() {
            Poll::Ready(Ok(true))
        } else {
            match t.poll_frame(cx, me) {
                Poll::Ready(Some(Ok(f))) => {
                    t.first = Some(f);
                    Poll::Ready(Ok(true))
                }
                Poll::Ready(Some(Err(_))) => {
                    Poll::Ready(Err(me.fault().unwrap_or(ClientFault::Gone)))
                }
                Poll::Ready(None) => Poll::Ready(Ok(false)),
                Poll::Pending => Poll::Pending,
            }
        };
        me.hint = t.size_hint();
        let _ = me.slot.push(t);
        polled
    }

    /// Has an attempt taken (started streaming) the body?
    pub fn is_taken(&self) -> bool {
        self.slot.is_empty()
    }

    /// Frames of the body sent so far.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Acquire)
    }

    /// Bytes of the body read from the client so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Was the last poll of the body left waiting for the client (rather than the backend
    /// not reading)?
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Acquire)
    }

    /// How the client's body failed, if it has.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.fault.load(Ordering::Acquire) {
            1 => Some(ClientFault::Malformed),
            2 => Some(ClientFault::Gone),
            3 => Some(ClientFault::Slow),
            _ => None,
        }
    }

    /// The backend's answer is being relayed: the request-body limit stops here.
    pub fn set_answered(&self) {
        self.answered.store(true, Ordering::Release);
    }

    /// Record how the body failed and make the error the upstream client gets.
    fn failed(&self, fault: ClientFault, source: Option<BodyError>) -> BodyError {
        let _ =
            self.fault
                .compare_exchange(0, fault_code(fault), Ordering::AcqRel, Ordering::Acquire);
        Box::new(ClientBodyError { fault, source })
    }

    /// Wait until the whole body has been handed to the upstream connection.
    pub async fn sent(&self) {
        loop {
            let woken = self.done_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }

    fn mark_done(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.done_wake.notify_waiters();
        }
    }
}

/// Request body sent upstream.
#[derive(Debug, Default)]
pub struct UpBody {
    slot: Option<Arc<BodySlot>>,
    body: Option<Taken>,
}

impl UpBody {
    pub fn empty() -> Self {
        UpBody::default()
    }

    pub fn from_slot(slot: &Option<Arc<BodySlot>>) -> Self {
        UpBody {
            slot: slot.clone(),
            body: None,
        }
    }

    /// The slot this body streams from, if any.
    pub(crate) fn slot(&self) -> Option<&Arc<BodySlot>> {
        self.slot.as_ref()
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.body.is_none() {
            match this.slot.as_ref().and_then(|s| s.slot.pop()) {
                Some(b) => this.body = Some(b),
                None => {
                    this.slot = None;
                    return Poll::Ready(None);
                }
            }
        }
        let (Some(b), Some(s)) = (this.body.as_mut(), this.slot.as_deref()) else {
            return Poll::Ready(None);
        };
        let polled = b.poll_frame(cx, s);
        s.waiting_on_client
            .store(polled.is_pending(), Ordering::Release);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                s.progress.fetch_add(1, Ordering::AcqRel);
                if b.is_end_stream() {
                    s.mark_done();
                }
            }
            Poll::Ready(_) => s.mark_done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match (&self.body, &self.slot) {
            (Some(b), _) => b.is_end_stream(),
            (None, Some(_)) => false,
            (None, None) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.body, &self.slot) {
            (Some(b), _) => b.size_hint(),
            (None, Some(s)) => s.hint,
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
