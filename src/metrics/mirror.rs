//! Mirroring's counters and state (SPEC §11): `veer_mirror_requests_total{route,result}`, the
//! bound on copies in flight (a counter of atomics: a copy that cannot start at once is
//! dropped, never queued), and the latest differing samples for `/api/status`.
//!
//! The client's request path never touches any of it: the copy's own task does (and the
//! samples' lock is taken there, on a difference, or by a status read).

use prometheus::IntCounter;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Differing samples kept per route.
pub const SAMPLES: usize = 20;

/// What became of one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Compared: the same status, headers and body.
    Same,
    /// Compared: something differed (a sample is kept).
    Differ,
    /// The copy failed: no connection, a broken or late answer.
    Error,
    /// Not sent: too many copies in flight, or nothing available in the mirror pool.
    Dropped,
    /// Answered, not compared (`compare = false`).
    Sent,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Same,
        Outcome::Differ,
        Outcome::Error,
        Outcome::Dropped,
        Outcome::Sent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Same => "same",
            Outcome::Differ => "differ",
            Outcome::Error => "error",
            Outcome::Dropped => "dropped",
            Outcome::Sent => "sent",
        }
    }
}

/// A route's `veer_mirror_requests_total` series, one handle per result (lock-free to bump).
#[derive(Debug, Clone)]
pub struct Counts {
    by: [IntCounter; 5],
}

impl Counts {
    pub fn new(vec: &prometheus::IntCounterVec, route: &str) -> Self {
        Counts {
            by: Outcome::ALL.map(|o| vec.with_label_values(&[route, o.as_str()])),
        }
    }

    pub fn inc(&self, o: Outcome) {
        self.by[o as usize].inc();
    }

    pub fn get(&self, o: Outcome) -> u64 {
        self.by[o as usize].get()
    }
}

/// One differing copy, as `/api/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub method: String,
    pub path: String,
    /// The client's answer's status and the copy's.
    pub status: u16,
    pub mirror_status: u16,
    /// Header names whose values differed (or that only one side had).
    pub headers: Vec<String>,
    /// The bodies' lengths (the body itself is only digested, never kept).
    pub body_len: u64,
    pub mirror_body_len: u64,
    /// The bodies' digests differed.
    pub body_differs: bool,
}

impl Sample {
    pub fn json(&self) -> Value {
        json!({
            "time_ms": self.time_ms,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "mirror_status": self.mirror_status,
            "headers": self.headers,
            "body_len": self.body_len,
            "mirror_body_len": self.mirror_body_len,
            "body_differs": self.body_differs,
        })
    }
}

/// A route's mirroring state, kept across reloads (in its `RouteCounters`).
#[derive(Debug, Default)]
pub struct MirrorStats {
    in_flight: AtomicU32,
    /// Body bytes digested so far, both sides (the client's answer and the copy's): shows
    /// the digests advancing while the bodies stream.
    digested: AtomicU64,
    samples: Mutex<VecDeque<Sample>>,
}

/// A copy's place under the bound; given back when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<MirrorStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl MirrorStats {
    /// A place for one more copy, if fewer than `max` are in flight.
    pub fn try_start(self: &Arc<Self>, max: u32) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(self.clone()))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn add_digested(&self, n: u64) {
        self.digested.fetch_add(n, Ordering::Relaxed);
    }

    pub fn digested(&self) -> u64 {
        self.digested.load(Ordering::Relaxed)
    }

    /// Keep a differing sample (the oldest goes beyond [`SAMPLES`]).
    pub fn push_sample(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == SAMPLES {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// The samples, newest first.
    pub fn samples(&self) -> Vec<Sample> {
        let q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_never_exceeded_and_places_come_back() {
        let s = Arc::new(MirrorStats::default());
        let a = s.try_start(2).unwrap();
        let _b = s.try_start(2).unwrap();
        assert!(s.try_start(2).is_none());
        drop(a);
        assert_eq!(s.in_flight(), 1);
        assert!(s.try_start(2).is_some());
    }

    #[test]
    fn samples_keep_the_latest_twenty_newest_first() {
        let s = MirrorStats::default();
        for i in 0..25 {
            s.push_sample(Sample {
                time_ms: i,
                method: "GET".into(),
                path: format!("/{i}"),
                status: 200,
                mirror_status: 500,
                headers: vec![],
                body_len: 0,
                mirror_body_len: 0,
                body_differs: false,
            });
        }
        let got = s.samples();
        assert_eq!(got.len(), SAMPLES);
        assert_eq!(got[0].path, "/24");
        assert_eq!(got[19].path, "/5");
    }
}
