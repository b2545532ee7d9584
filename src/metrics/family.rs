//! Series held as plain numbers and written into the exposition at scrape time, instead of
//! registered Prometheus label sets (issue 15: a registered series costs hundreds of bytes; a
//! thousand routes' series were a third of what a route held).

use super::reg;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A counter of a route's, kept as an atomic and written into the exposition at scrape time
/// (issue 15: a registered Prometheus series costs hundreds of bytes for its label set; a
/// thousand routes' series were a third of what a route held).
#[derive(Debug, Clone, Default)]
pub struct Count(Arc<AtomicU64>);

impl Count {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A family of series per route held as plain numbers and written into the exposition at
/// scrape time (issue 15: a registered Prometheus series is hundreds of bytes of label pairs
/// and maps, and a thousand routes had thousands). Its users make a Prometheus vec's calls.
pub struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    counter: bool,
    series: Mutex<SeriesMap>,
}

/// A [`Family`]'s series by label values.
/// A B-tree: no spare slots for a family of a thousand routes' series (issue 15).
type SeriesMap = BTreeMap<Box<[Box<str>]>, Arc<AtomicI64>>;

/// One series of a [`Family`].
#[derive(Debug, Clone)]
pub struct Series(Arc<AtomicI64>);

impl Series {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Family {
    pub(super) fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        counter: bool,
    ) -> Self {
        Family {
            name,
            help,
            labels,
            counter,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeriesMap> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The series of these label values (in the family's label order), made at zero.
    pub fn with_label_values(&self, values: &[&str]) -> Series {
        let mut series = self.lock();
        let key: Box<[Box<str>]> = values.iter().map(|v| Box::from(*v)).collect();
        Series(series.entry(key).or_default().clone())
    }

    /// Drop a series; whether there was one.
    pub fn remove_label_values(&self, values: &[&str]) -> bool {
        let mut series = self.lock();
        let key: Box<[Box<str>]> = values.iter().map(|v| Box::from(*v)).collect();
        series.remove(&key).is_some()
    }

    /// Register this scrape's copy in `r`.
    pub(super) fn write(&self, r: &prometheus::Registry) {
        let series = self.lock();
        if self.counter {
            let v = reg(
                r,
                IntCounterVec::new(Opts::new(self.name, self.help), self.labels).unwrap(),
            );
            for (k, n) in series.iter() {
                let k: Vec<&str> = k.iter().map(|s| &**s).collect();
                v.with_label_values(&k)
                    .inc_by(n.load(Ordering::Relaxed).max(0) as u64);
            }
        } else {
            let v = reg(
                r,
                IntGaugeVec::new(Opts::new(self.name, self.help), self.labels).unwrap(),
            );
            for (k, n) in series.iter() {
                let k: Vec<&str> = k.iter().map(|s| &**s).collect();
                v.with_label_values(&k).set(n.load(Ordering::Relaxed));
            }
        }
    }
}
