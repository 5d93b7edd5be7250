//! `MessageStore::stats`: what the store counts, checked against what a test did.

mod common;

use std::time::Duration;

use common::*;
use rocketstore::{FlushMode, GetStatus, MessageStore, ROCKETMQ_PUT_BUCKETS_MS};

#[test]
fn stats_count_puts_flushes_gets_and_rolls() {
    let dir = tempfile::tempdir().unwrap();
    // Small files so that 300 puts roll several times.
    let store =
        MessageStore::open(config(dir.path(), sync_mode()).commit_log_file_size(64 << 10)).unwrap();
    let before = store.stats();
    assert_eq!((before.puts, before.flushes, before.get_hits), (0, 0, 0));

    let mut bytes = 0;
    for i in 0..300 {
        bytes += u64::from(
            store
                .put_message(&message("S", (i % 3) as u32, "s", i))
                .unwrap()
                .wrote_bytes,
        );
    }
    let batch: Vec<_> = (0..5).map(|i| message("S", 0, "b", i)).collect();
    bytes += u64::from(store.put_messages(&batch).unwrap().wrote_bytes);
    let last = store.max_physical_offset();
    assert!(store.wait_dispatched(last - 1, Duration::from_secs(10)));
    assert_eq!(
        store.get_message("S", 1, 0, 10).unwrap().status,
        GetStatus::Found
    );
    assert_ne!(
        store.get_message("S", 1, 1_000, 10).unwrap().status,
        GetStatus::Found
    );
    assert_ne!(
        store.get_message("Nope", 0, 0, 10).unwrap().status,
        GetStatus::Found
    );

    let s = store.stats();
    assert_eq!(s.puts, 305);
    assert_eq!(s.put_bytes, bytes);
    // Every blocking put is timed: 300 single puts and one batch.
    assert_eq!(s.put_latency_us.total(), 301);
    assert_eq!(s.put_latency_rocketmq_ms.total(), 301);
    assert_eq!(
        s.put_latency_rocketmq_ms.upper_bounds,
        ROCKETMQ_PUT_BUCKETS_MS
    );
    // Sync flush: everything acknowledged is flushed, by at least one flush per group.
    assert_eq!(s.flushed_messages, 305);
    assert!(s.flushes >= 1 && s.flushes <= 301, "{}", s.flushes);
    assert!(s.flushed_bytes >= bytes, "{} < {bytes}", s.flushed_bytes);
    assert_eq!(s.messages_per_flush.total(), s.flushes);
    assert_eq!(s.flush_latency_us.total(), s.flushes);
    assert_eq!(s.flush_lag_bytes, 0);
    assert_eq!(s.dispatch_lag_bytes, 0);
    assert_eq!((s.get_hits, s.get_misses), (1, 2));
    assert_eq!(s.page_cache_busy, 0);
    store.shutdown().unwrap();
}

#[test]
fn stats_show_the_flush_lag_under_async_flush() {
    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let mode = FlushMode::Async {
        interval: hour,
        least_pages: u32::MAX,
        thorough_interval: hour,
    };
    let store = open(dir.path(), mode);
    for i in 0..10 {
        store.put_message(&message("A", 0, "a", i)).unwrap();
    }
    let s = store.stats();
    assert_eq!(s.puts, 10);
    // Nothing has asked for a flush yet, and the interval is long: the lag is everything.
    assert_eq!(
        s.flush_lag_bytes + store.flushed_physical_offset(),
        store.max_physical_offset()
    );
    store.flush().unwrap();
    let s = store.stats();
    assert_eq!(s.flush_lag_bytes, 0);
    assert_eq!(s.flushed_messages, 10);
    store.shutdown().unwrap();
}
