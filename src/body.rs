//! The request body a client sends (hyper's, or the h2 crate's for HTTP/2 served without
//! hyper), how it can fail ([`ClientFault`]) and how long it may take ([`BodyClock`]). Layer 0:
//! shared by the proxy (which receives it) and the upstream client (which streams it on), so
//! neither imports the other for it.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Errors while streaming a response body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body.
#[derive(Debug)]
pub enum RequestBody {
    /// None: a request veer's own HTTP/1.1 loop read (it serves only those without a body).
    Empty,
    /// HTTP/1.1 and h2c, served by hyper.
    Hyper(hyper::body::Incoming),
    /// HTTP/2 over TLS, served on the h2 crate directly (see `server::h2`).
    H2 {
        recv: h2::RecvStream,
        /// The request's Content-Length, if it gave one (h2 checks the data against it).
        length: Option<u64>,
        data_done: bool,
    },
    /// A body veer holds whole: a mirrored request's copy of the client's (SPEC §11).
    Full(Option<Bytes>),
    /// The client's body with a copy kept, for a mirrored request (see [`Teed`]).
    Teed(Box<Teed>),
}

/// A client's body streamed on as it comes, with a copy of it kept up to `max` bytes for a
/// mirrored request. The copy is handed over when the body has ended; a body larger than
/// `max`, or one that fails, hands over nothing (and frees what it kept at once).
#[derive(Debug)]
pub struct Teed {
    inner: RequestBody,
    kept: bytes::BytesMut,
    max: usize,
    tx: Option<tokio::sync::oneshot::Sender<Bytes>>,
}

impl Teed {
    /// Tee `body`: the receiver gets the whole body once it has been read, if it is at most
    /// `max` bytes.
    pub fn wrap(
        body: RequestBody,
        max: usize,
    ) -> (RequestBody, tokio::sync::oneshot::Receiver<Bytes>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let t = Teed {
            inner: body,
            kept: bytes::BytesMut::new(),
            max,
            tx: Some(tx),
        };
        (RequestBody::Teed(Box::new(t)), rx)
    }

    fn keep(&mut self, d: &Bytes) {
        if self.tx.is_none() {
            return;
        }
        if self.kept.len() + d.len() > self.max {
            // Too large to copy: give up the copy, and its memory, now.
            self.tx = None;
            self.kept = bytes::BytesMut::new();
        } else {
            self.kept.extend_from_slice(d);
        }
    }

    fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(self.kept.split().freeze());
        }
    }
}

impl Drop for Teed {
    fn drop(&mut self) {
        // Read to its end without a last poll (a Content-Length body), or never polled
        // because it was empty: complete all the same.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

impl RequestBody {
    pub fn h2(recv: h2::RecvStream, headers: &http::HeaderMap) -> Self {
        let length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse().ok());
        RequestBody::H2 {
            recv,
            length,
            data_done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H2 {
                recv, data_done, ..
            } => {
                if !*data_done {
                    match std::task::ready!(recv.poll_data(cx)) {
                        Some(Ok(data)) => {
                            // Taken off the stream: the client may send that much more.
                            let _ = recv.flow_control().release_capacity(data.len());
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => *data_done = true,
                    }
                }
                match std::task::ready!(recv.poll_trailers(cx)) {
                    Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Teed(t) => {
                let polled = Pin::new(&mut t.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            t.keep(d);
                        }
                        if t.inner.is_end_stream() {
                            t.finish();
                        }
                    }
                    Poll::Ready(None) => t.finish(),
                    Poll::Ready(Some(Err(_))) => t.tx = None,
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::H2 { recv, .. } => recv.is_end_stream(),
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Teed(t) => t.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::H2 {
                length: Some(n), ..
            } => SizeHint::with_exact(*n),
            RequestBody::H2 { .. } => SizeHint::default(),
            RequestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Teed(t) => t.inner.size_hint(),
        }
    }
}

/// How a client's request body failed. Never the backend's fault: none of these reaches a
/// breaker, a rollout gate, a retry or a backend's 5xx count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Framing that cannot be read: a bad chunk-size line, more or less data than an HTTP/2
    /// request's content-length. Answered 400.
    Malformed,
    /// The client closed or reset before its body was complete. Counted under code 499
    /// (nginx's "client closed request"); whatever is answered, nobody is there to read it.
    Gone,
    /// The body did not arrive in time (`request_body_timeout`, `request_body_min_rate`): 408.
    Slow,
}

impl ClientFault {
    /// Which fault an error from a client's body is. hyper's HTTP/1.1 decoder reports bad
    /// framing as `InvalidInput`/`InvalidData` and a body cut short as `UnexpectedEof`; h2
    /// resets a stream itself (PROTOCOL_ERROR) for data that breaks its content-length.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(f) = e.downcast_ref::<ClientBodyError>() {
                return f.fault;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                        ClientFault::Malformed
                    }
                    _ => ClientFault::Gone,
                };
            }
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                return if h2.is_library() && h2.reason() == Some(h2::Reason::PROTOCOL_ERROR) {
                    ClientFault::Malformed
                } else {
                    ClientFault::Gone
                };
            }
            cur = e.source();
        }
        ClientFault::Gone
    }

    /// The code the request is counted under in `veer_requests_total`.
    pub fn code(self) -> u16 {
        match self {
            ClientFault::Malformed => 400,
            ClientFault::Gone => 499,
            ClientFault::Slow => 408,
        }
    }
}

impl std::fmt::Display for ClientFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientFault::Malformed => "malformed",
            ClientFault::Gone => "cut short by the client",
            ClientFault::Slow => "not received in time",
        })
    }
}

/// A client's request body failed: what the upstream client gets from the body it streams,
/// so the failure is told from the backend's own.
#[derive(Debug, thiserror::Error)]
#[error("request body {fault}")]
pub struct ClientBodyError {
    pub fault: ClientFault,
    #[source]
    pub source: Option<BodyError>,
}

/// `[server] request_body_timeout` and `request_body_min_rate`: a request body must arrive
/// within `timeout`, extended by 1 s per `min_rate` bytes received (Apache's MinRate), and is
/// never silent for longer than `timeout` (nginx's `client_body_timeout`). Only time veer
/// spends waiting on the client counts: a backend slow to take the body does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    /// Zero: no limit.
    pub timeout: Duration,
    /// Zero: no extension (the whole body within `timeout`).
    pub min_rate: u64,
}

impl BodyLimit {
    /// When a wait that began at `since` runs out, for a client that has sent `received`
    /// bytes and kept veer waiting `waited` in earlier waits; `None` without a limit.
    pub fn expiry(&self, since: Instant, received: u64, waited: Duration) -> Option<Instant> {
        if self.timeout.is_zero() {
            return None;
        }
        let earned = match self.min_rate {
            0 => Duration::ZERO,
            r => {
                let nanos = u128::from(received) * 1_000_000_000 / u128::from(r);
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
        };
        let allowance = self.timeout.saturating_add(earned).saturating_sub(waited);
        Some(since + allowance.min(self.timeout))
    }
}

/// A request body's account under its [`BodyLimit`], kept by whoever polls the body. The
/// timer is armed only when the body has to wait, once per wait.
#[derive(Debug)]
pub struct BodyClock {
    limit: BodyLimit,
    received: u64,
    /// Time spent waiting on the client in waits that have ended.
    waited: Duration,
    /// When the current wait began.
    since: Option<Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl BodyClock {
    pub fn new(limit: BodyLimit) -> Self {
        BodyClock {
            limit,
            received: 0,
            waited: Duration::ZERO,
            since: None,
            timer: None,
        }
    }

    /// The body gave `bytes` more: a wait, if any, has ended.
    pub fn got(&mut self, bytes: usize) {
        if let Some(since) = self.since.take() {
            self.waited += since.elapsed();
        }
        self.received += bytes as u64;
    }

    /// The body has nothing yet: has the client run out of time? Registers the wake-up if not.
    pub fn waiting(&mut self, cx: &mut Context<'_>) -> bool {
        if self.limit.timeout.is_zero() {
            return false;
        }
        let fresh = self.since.is_none();
        let since = *self.since.get_or_insert_with(Instant::now);
        let Some(at) = self.limit.expiry(since, self.received, self.waited) else {
            return false;
        };
        if fresh {
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// Stop counting (the backend has answered): drops the timer.
    pub fn stop(&mut self) {
        self.limit.timeout = Duration::ZERO;
        self.timer = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    fn limit(timeout_ms: u64, min_rate: u64) -> BodyLimit {
        BodyLimit {
            timeout: Duration::from_millis(timeout_ms),
            min_rate,
        }
    }

    /// Start (or go on with) a wait on the client: false unless the client has run out.
    async fn wait_begins(clock: &mut BodyClock) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(clock.waiting(cx))).await
    }

    /// Wait on the client until its time runs out; how long that took.
    async fn runs_out(clock: &mut BodyClock) -> Duration {
        let start = Instant::now();
        std::future::poll_fn(|cx| {
            if clock.waiting(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        start.elapsed()
    }

    /// The client keeps veer waiting `ms`, then sends `bytes`.
    async fn sends_after(clock: &mut BodyClock, ms: u64, bytes: usize) {
        assert!(!wait_begins(clock).await, "ran out early");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        clock.got(bytes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_runs_out_after_the_timeout() {
        let mut clock = BodyClock::new(limit(2000, 1000));
        assert_eq!(runs_out(&mut clock).await, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_earn_a_second_per_min_rate_bytes() {
        let mut clock = BodyClock::new(limit(2000, 1000));
        // 2 s + 1 s earned, 1.5 s used; then 0.5 s earned, 1 s used: 3.5 - 2.5 = 1 s left,
        // less than the 2 s silence bound.
        sends_after(&mut clock, 1500, 1000).await;
        sends_after(&mut clock, 1000, 500).await;
        assert_eq!(runs_out(&mut clock).await, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn one_byte_a_second_at_a_min_rate_of_1000_lasts_the_timeout() {
        // The R-U-Dead-Yet upload: each byte earns 1 ms, each second costs one.
        let mut clock = BodyClock::new(limit(2000, 1000));
        sends_after(&mut clock, 1000, 1).await;
        assert_eq!(runs_out(&mut clock).await, Duration::from_millis(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_bounded_by_the_timeout_whatever_was_earned() {
        let mut clock = BodyClock::new(limit(2000, 1000));
        clock.got(1_000_000); // 1000 s earned at once
        assert_eq!(runs_out(&mut clock).await, Duration::from_secs(2));
        // And again after more bytes: each silence starts its own bound.
        let mut clock = BodyClock::new(limit(2000, 1000));
        sends_after(&mut clock, 1900, 1_000_000).await;
        sends_after(&mut clock, 1900, 10).await;
        assert_eq!(runs_out(&mut clock).await, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_min_rate_the_whole_body_gets_the_timeout() {
        let mut clock = BodyClock::new(limit(2000, 0));
        sends_after(&mut clock, 1500, 1_000_000).await;
        assert_eq!(runs_out(&mut clock).await, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_client_was_not_waited_on_does_not_count() {
        let mut clock = BodyClock::new(limit(2000, 0));
        sends_after(&mut clock, 1500, 10).await;
        // The backend does not take the body for a minute: no wait on the client.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(runs_out(&mut clock).await, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_is_no_limit_and_stop_ends_the_limit() {
        let mut clock = BodyClock::new(limit(0, 500));
        assert!(!wait_begins(&mut clock).await);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!wait_begins(&mut clock).await);
        assert!(clock.timer.is_none(), "no timer without a limit");

        let mut clock = BodyClock::new(limit(1000, 500));
        assert!(!wait_begins(&mut clock).await);
        clock.stop();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!wait_begins(&mut clock).await);
        assert!(clock.timer.is_none());
    }

    #[test]
    fn expiry_saturates_instead_of_overflowing() {
        let now = Instant::now();
        let l = limit(1000, 1);
        // Earned time beyond any Duration is capped by the silence bound.
        assert_eq!(
            l.expiry(now, u64::MAX, Duration::ZERO),
            Some(now + Duration::from_secs(1))
        );
        // A client that used more than it earned runs out at once.
        assert_eq!(l.expiry(now, 0, Duration::from_secs(5)), Some(now));
        assert_eq!(limit(0, 1).expiry(now, 0, Duration::ZERO), None);
    }

    #[test]
    fn body_errors_are_classified_by_what_broke() {
        use std::io::{Error, ErrorKind};
        let malformed = Error::new(ErrorKind::InvalidInput, "invalid chunk size line");
        assert_eq!(ClientFault::of(&malformed), ClientFault::Malformed);
        let too_long = Error::new(ErrorKind::InvalidData, "chunk extensions over limit");
        assert_eq!(ClientFault::of(&too_long), ClientFault::Malformed);
        let cut = Error::new(
            ErrorKind::UnexpectedEof,
            "end of file before message length reached",
        );
        assert_eq!(ClientFault::of(&cut), ClientFault::Gone);
        let reset = Error::new(ErrorKind::ConnectionReset, "reset");
        assert_eq!(ClientFault::of(&reset), ClientFault::Gone);
        // Found under the error that wraps it (as hyper wraps its decoder's).
        let wrapped = ClientBodyError {
            fault: ClientFault::Slow,
            source: None,
        };
        assert_eq!(ClientFault::of(&wrapped), ClientFault::Slow);
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Error);
        let nested = Outer(Error::new(ErrorKind::InvalidInput, "bad"));
        assert_eq!(ClientFault::of(&nested), ClientFault::Malformed);
        // A client's own reset is it going away, not bad framing.
        let h2 = h2::Error::from(h2::Reason::CANCEL);
        assert_eq!(ClientFault::of(&h2), ClientFault::Gone);
    }
}
