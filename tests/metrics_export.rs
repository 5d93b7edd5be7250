//! `StoreStats::export_metrics` (the `metrics` feature): what a broker's recorder receives,
//! checked against the snapshot it came from. CI runs it with `--features metrics`.
#![cfg(feature = "metrics")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use parking_lot::Mutex;
use rocketstore::MessageStore;

/// Every value a recorder was given, by name and labels (`name{k=v,...}`).
#[derive(Default)]
struct Capture(Arc<Mutex<BTreeMap<String, f64>>>);

struct Slot {
    values: Arc<Mutex<BTreeMap<String, f64>>>,
    key: String,
}

impl CounterFn for Slot {
    fn increment(&self, value: u64) {
        *self.values.lock().entry(self.key.clone()).or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.values.lock().insert(self.key.clone(), value as f64);
    }
}

impl GaugeFn for Slot {
    fn increment(&self, value: f64) {
        *self.values.lock().entry(self.key.clone()).or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self.values.lock().entry(self.key.clone()).or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.values.lock().insert(self.key.clone(), value);
    }
}

impl HistogramFn for Slot {
    fn record(&self, value: f64) {
        self.values.lock().insert(self.key.clone(), value);
    }
}

impl Capture {
    fn slot(&self, key: &Key) -> Arc<Slot> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let key = match labels.is_empty() {
            true => key.name().to_owned(),
            false => format!("{}{{{}}}", key.name(), labels.join(",")),
        };
        Arc::new(Slot {
            values: Arc::clone(&self.0),
            key,
        })
    }

    fn get(&self, key: &str) -> f64 {
        *self
            .0
            .lock()
            .get(key)
            .unwrap_or_else(|| panic!("{key} was not exported"))
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.slot(key))
    }
}

#[test]
fn the_export_carries_the_snapshot_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    for i in 0..40 {
        store
            .put_message(&message("M", (i % 2) as u32, "k", i))
            .unwrap();
    }
    assert!(store.wait_dispatched(store.max_physical_offset() - 1, Duration::from_secs(10)));
    store.get_message("M", 0, 0, 5).unwrap();
    let stats = store.stats();
    let capture = Capture::default();
    metrics::with_local_recorder(&capture, || stats.export_metrics());

    assert_eq!(capture.get("rocketstore_puts_total"), 40.0);
    assert_eq!(
        capture.get("rocketstore_put_bytes_total"),
        stats.put_bytes as f64
    );
    assert_eq!(
        capture.get("rocketstore_flushes_total"),
        stats.flushes as f64
    );
    assert_eq!(capture.get("rocketstore_get_hits_total"), 1.0);
    // Every bucket of a histogram, its counts adding up to the puts.
    let buckets: f64 = stats
        .put_latency_us
        .upper_bounds
        .iter()
        .map(u64::to_string)
        .chain(["+Inf".to_owned()])
        .map(|b| capture.get(&format!("rocketstore_put_latency_us{{bucket={b}}}")))
        .sum();
    assert_eq!(buckets, 40.0);
    assert_eq!(
        capture.get("rocketstore_put_latency_rocketmq_ms{bucket=0}")
            + capture.get("rocketstore_put_latency_rocketmq_ms{bucket=10}")
            + capture.get("rocketstore_put_latency_rocketmq_ms{bucket=+Inf}"),
        (stats.put_latency_rocketmq_ms.counts[0]
            + stats.put_latency_rocketmq_ms.counts[1]
            + stats.put_latency_rocketmq_ms.counts[12]) as f64
    );
    // The key index, by name.
    let index = stats
        .dispatchers
        .iter()
        .find(|d| d.name == "index")
        .expect("the key index runs by default");
    assert_eq!(
        capture.get("rocketstore_dispatcher_lag_bytes{dispatcher=index}"),
        index.lag_bytes as f64
    );
    assert_eq!(
        capture.get("rocketstore_dispatcher_failures_total{dispatcher=index}"),
        0.0
    );

    // After a clean shutdown, the next open says so.
    drop(store);
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    let capture = Capture::default();
    metrics::with_local_recorder(&capture, || store.stats().export_metrics());
    assert_eq!(capture.get("rocketstore_open_clean_exit"), 1.0);
    assert_eq!(
        capture.get("rocketstore_puts_total"),
        0.0,
        "counts run from the open"
    );
}
