//! Every kind of bad input gets its own typed error, and the store keeps working.

mod common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use crossbeam_channel::{Receiver, Sender};
use rocketstore::layout;
use rocketstore::{Error, FlushMode, IoHook, Message, MessageStore, PutStatus, StoreConfig};

fn assert_still_works(store: &MessageStore, expected_queue_offset: u64) {
    let put = store.put_message(&message("Good", 0, "g", 0)).unwrap();
    assert_eq!(put.status, PutStatus::Ok);
    assert_eq!(put.queue_offset, expected_queue_offset);
    assert_eq!(
        store
            .lookup_message(put.physical_offset)
            .unwrap()
            .unwrap()
            .body,
        body("g", 0)
    );
}

#[test]
fn each_bad_input_is_refused_and_the_next_good_put_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(
        StoreConfig::new(dir.path())
            .commit_log_file_size(SMALL_FILE)
            .max_message_size(1024)
            .flush_mode(sync_mode()),
    )
    .unwrap();
    let mut good = 0;
    let mut check = |err: Error, pred: fn(&Error) -> bool| {
        assert!(pred(&err), "unexpected error: {err}");
        assert!(!err.to_string().is_empty());
        assert_still_works(&store, good);
        good += 1;
    };
    let put = |m: Message| store.put_message(&m).unwrap_err();

    check(put(Message::new("", 0u32, Bytes::new())), |e| {
        matches!(
            e,
            Error::InvalidTopic {
                reason: "empty",
                ..
            }
        )
    });
    check(
        put(Message::new("x".repeat(256), 0u32, Bytes::new())),
        |e| matches!(e, Error::InvalidTopic { .. }),
    );
    check(put(Message::new("../etc", 0u32, Bytes::new())), |e| {
        matches!(e, Error::InvalidTopic { .. })
    });
    // RocketMQ reads the queue id as a signed 32-bit number.
    check(
        put(Message::new("T", 1u32 << 31, Bytes::new())),
        |e| matches!(e, Error::InvalidQueueId { queue_id } if *queue_id == 1 << 31),
    );
    check(put(Message::new("T", 0u32, vec![0u8; 1025])), |e| {
        matches!(
            e,
            Error::MessageTooLarge {
                size: 1025,
                max: 1024
            }
        )
    });
    check(
        put(Message::new("T", 0u32, Bytes::new()).with_property("big", "v".repeat(40_000))),
        |e| matches!(e, Error::PropertiesTooLarge { max: 32767, .. }),
    );
    check(
        put(Message::new("T", 0u32, Bytes::new()).with_property("a\u{1}b", "v")),
        |e| matches!(e, Error::InvalidProperty { .. }),
    );
    check(
        put(Message::new("T", 0u32, Bytes::new()).with_property("", "v")),
        |e| matches!(e, Error::InvalidProperty { .. }),
    );
    check(
        store
            .put_messages(&[message("T", 0, "b", 0), message("T", 1, "b", 1)])
            .unwrap_err(),
        |e| matches!(e, Error::InvalidBatch { .. }),
    );
    check(
        store
            .put_messages(&[message("T", 0, "b", 0), message("U", 0, "b", 1)])
            .unwrap_err(),
        |e| matches!(e, Error::InvalidBatch { .. }),
    );
    check(store.put_messages(&[]).unwrap_err(), |e| {
        matches!(e, Error::InvalidBatch { .. })
    });
    let big_batch: Vec<_> = (0..20)
        .map(|_| Message::new("T", 0u32, vec![1u8; 200]))
        .collect();
    check(store.put_messages(&big_batch).unwrap_err(), |e| {
        matches!(e, Error::BatchTooLarge { max: 1024, .. })
    });
    // Small bodies with large properties: the records, not the bodies, are over.
    let props: Vec<_> = (0..3)
        .map(|_| Message::new("T", 0u32, vec![1u8; 10]).with_property("p", "v".repeat(30_000)))
        .collect();
    check(
        store.put_messages(&props).unwrap_err(),
        |e| matches!(e, Error::BatchTooLarge { max, .. } if *max == 1024 + (64 << 10)),
    );
    // A batch of one message takes what a single put takes.
    let one = [Message::new("T", 0u32, vec![2u8; 1024])];
    assert_eq!(store.put_messages(&one).unwrap().message_count, 1);
    // A topic of 128..=255 bytes is valid and uses record version 2.
    let long = store
        .put_message(&Message::new("L".repeat(255), 0u32, Bytes::new()))
        .unwrap();
    assert_eq!(
        store
            .lookup_message(long.physical_offset)
            .unwrap()
            .unwrap()
            .version,
        2
    );
}

#[test]
fn a_batch_gets_consecutive_offsets_in_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), sync_mode());
    store.put_message(&message("Batch", 2, "x", 0)).unwrap();
    let batch: Vec<_> = (1..=40).map(|i| message("Batch", 2, "x", i)).collect();
    for _ in 0..20 {
        let r = store.put_messages(&batch).unwrap();
        assert_eq!(r.message_count, 40);
        assert_eq!(
            r.physical_offset / SMALL_FILE,
            (r.end_offset() - 1) / SMALL_FILE
        );
        let mut at = r.physical_offset;
        for (i, m) in batch.iter().enumerate() {
            let got = store.lookup_message(at).unwrap().unwrap();
            assert_eq!(got.queue_offset, r.queue_offset + i as u64);
            assert_eq!(got.body, m.body);
            assert_eq!(got.store_timestamp, r.store_timestamp);
            at += u64::from(got.total_size);
        }
        assert_eq!(at, r.end_offset());
    }
}

#[test]
fn invalid_configs_and_offsets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for size in [1000, 4097, 1 << 40] {
        let err = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(size))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    }
    // A record larger than a file.
    let store = MessageStore::open(
        StoreConfig::new(dir.path())
            .commit_log_file_size(SMALL_FILE)
            .max_message_size(1 << 20),
    )
    .unwrap();
    let err = store
        .put_message(&Message::new("T", 0u32, vec![0u8; 70_000]))
        .unwrap_err();
    assert!(matches!(err, Error::RecordTooLarge { .. }), "{err}");
    let put = store.put_message(&message("T", 0, "t", 0)).unwrap();
    // An offset inside a record is refused, one past the end is simply absent.
    assert!(matches!(
        store.lookup_message(put.physical_offset + 3),
        Err(Error::Corrupted { .. })
    ));
    assert!(store.lookup_message(put.end_offset()).unwrap().is_none());
    assert!(store.lookup_message(u64::MAX).unwrap().is_none());
}

/// Settings that would delete unexpired files or spin a thread are refused at open, with
/// the setting named.
#[test]
fn ratios_out_of_range_and_zero_intervals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = || StoreConfig::new(dir.path()).commit_log_file_size(SMALL_FILE);
    let zero = Duration::ZERO;
    let async_zero = FlushMode::Async {
        interval: zero,
        least_pages: 4,
        thorough_interval: Duration::from_secs(1),
    };
    let cases: Vec<(&str, StoreConfig)> = vec![
        // 0 as "off" would refuse every put that found the append lock held.
        ("busy_limit", base().busy_limit(zero)),
        // 0 as "off" would delete the oldest file, whatever its age, at every sample.
        (
            "disk_force_clean_ratio",
            base().disk_clean_ratios(0.75, 0.0),
        ),
        // RocketMQ's percentages.
        ("disk_clean_ratio", base().disk_clean_ratios(75.0, 85.0)),
        (
            "disk_force_clean_ratio",
            base().disk_clean_ratios(0.75, 85.0),
        ),
        ("disk_clean_ratio", base().disk_clean_ratios(f64::NAN, 0.85)),
        ("disk_clean_ratio", base().disk_clean_ratios(-0.1, 0.85)),
        ("interval", base().flush_mode(async_zero)),
        (
            "timeout",
            base().flush_mode(FlushMode::Sync { timeout: zero }),
        ),
        ("disk_check_interval", base().disk_check_interval(zero)),
        (
            "consume_queue_flush_interval",
            base().consume_queue_flush_interval(zero),
        ),
    ];
    for (field, cfg) in cases {
        match MessageStore::open(cfg) {
            Err(Error::InvalidConfig { reason }) => {
                assert!(reason.contains(field), "{field}: {reason}")
            }
            other => panic!("{field}: {:?}", other.map(|_| "opened")),
        }
    }
    // The bounds themselves are accepted.
    let store = MessageStore::open(base().disk_clean_ratios(0.0, 1.0)).unwrap();
    store.shutdown().unwrap();
}

/// Stalls the creation of the next commit-log file until released, so a roll holds the
/// put lock.
struct StallCreate {
    armed: AtomicBool,
    stalled: Sender<()>,
    release: Receiver<()>,
}

impl IoHook for StallCreate {
    fn before_create(&self, path: &Path) -> io::Result<()> {
        let commit_log = path
            .parent()
            .is_some_and(|p| p.ends_with(layout::COMMIT_LOG_DIR));
        if commit_log && self.armed.swap(false, Ordering::SeqCst) {
            let _ = self.stalled.send(());
            let _ = self.release.recv();
        }
        Ok(())
    }
}

#[test]
fn a_put_lock_held_too_long_refuses_new_puts_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (stalled_tx, stalled_rx) = crossbeam_channel::unbounded();
    let (release_tx, release_rx) = crossbeam_channel::unbounded();
    let hook = Arc::new(StallCreate {
        armed: AtomicBool::new(false),
        stalled: stalled_tx,
        release: release_rx,
    });
    let store = Arc::new(
        MessageStore::open(
            config(dir.path(), async_mode())
                .preallocate(false)
                .busy_limit(Duration::from_millis(20))
                .io_hook(hook.clone()),
        )
        .unwrap(),
    );
    hook.armed.store(true, Ordering::SeqCst);
    // Fill the first file from another thread; its roll stalls inside the put lock.
    let filler = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            let mut n = 0;
            while store.max_physical_offset() < SMALL_FILE {
                store.put_message(&message("Busy", 0, "b", n)).unwrap();
                n += 1;
            }
            n
        })
    };
    stalled_rx.recv().unwrap();
    // Until the lock has been held for 20 ms a put would queue behind it; once the store
    // reports itself busy, puts are refused at once.
    let started = Instant::now();
    while !store.is_page_cache_busy() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never became busy"
        );
        std::thread::yield_now();
    }
    for queue in 0..3 {
        let err = store
            .put_message(&message("Busy", queue, "b", 0))
            .unwrap_err();
        assert!(
            matches!(err, Error::PageCacheBusy { limit_ms: 20, .. }),
            "{err}"
        );
    }
    release_tx.send(()).unwrap();
    let n = filler.join().unwrap();
    let put = store.put_message(&message("Busy", 0, "b", n)).unwrap();
    assert_eq!(put.queue_offset, n);
}
