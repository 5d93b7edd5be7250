//! The key index and `query_message`: keys and unique keys found, newest first, within the
//! time window; collisions never return foreign messages; files roll, are capped and go
//! with the log; a crash keeps what the index had made durable.

mod common;

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

use bytes::Bytes;
use rocketstore::format::{INDEX_ENTRY_LEN, INDEX_HEADER_LEN, INDEX_SLOT_LEN, IndexHeader};
use rocketstore::layout;
use rocketstore::{Message, MessageStore, PROPERTY_UNIQ_KEY, StoreConfig, TRANSACTION_PREPARED};

use common::{Rng, config, sync_mode};

const LONG: Duration = Duration::from_secs(30);

fn indexed(store: &MessageStore) {
    assert!(store.wait_dispatcher("index", store.max_physical_offset(), LONG));
}

fn bodies(store: &MessageStore, topic: &str, key: &str, max: usize) -> Vec<Bytes> {
    store
        .query_message(topic, key, max, 0, i64::MAX)
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.body)
        .collect()
}

fn keyed(topic: &str, body: &str, keys: &[&str]) -> Message {
    Message::new(topic, 0, Bytes::from(body.to_owned())).with_keys(keys.iter().copied())
}

#[test]
fn keys_and_unique_keys_are_found_newest_first_in_their_topic_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    store
        .put_message(&keyed("A", "a1", &["order-1", "user-7"]))
        .unwrap();
    store.put_message(&keyed("B", "b1", &["order-1"])).unwrap();
    store
        .put_message(&keyed("A", "a2", &["order-1"]).with_property(PROPERTY_UNIQ_KEY, "U-42"))
        .unwrap();
    let mut half = keyed("A", "half", &["order-1"]);
    half.sys_flag = TRANSACTION_PREPARED;
    store.put_message(&half).unwrap();
    indexed(&store);

    assert_eq!(bodies(&store, "A", "order-1", 32), ["a2", "a1"]);
    assert_eq!(bodies(&store, "A", "order-1", 1), ["a2"]);
    assert_eq!(bodies(&store, "B", "order-1", 32), ["b1"]);
    assert_eq!(bodies(&store, "A", "user-7", 32), ["a1"]);
    assert_eq!(bodies(&store, "A", "U-42", 32), ["a2"]);
    assert!(
        bodies(&store, "A", "order", 32).is_empty(),
        "whole keys only"
    );
    assert!(bodies(&store, "C", "order-1", 32).is_empty());

    // The time window is the messages' store time.
    let a1 = &store
        .query_message("A", "user-7", 1, 0, i64::MAX)
        .unwrap()
        .messages[0];
    let at = a1.store_timestamp;
    assert_eq!(
        store
            .query_message("A", "user-7", 8, at, at)
            .unwrap()
            .messages
            .len(),
        1
    );
    assert!(
        store
            .query_message("A", "user-7", 8, at + 1, i64::MAX)
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(
        store
            .query_message("A", "user-7", 8, 0, at - 1)
            .unwrap()
            .messages
            .is_empty()
    );

    let r = store
        .query_message("A", "order-1", 32, 0, i64::MAX)
        .unwrap();
    assert!(r.index_last_update_offset >= r.messages[0].physical_offset);
    assert!(r.index_last_update_timestamp >= r.messages[0].store_timestamp);
    let stats = store.stats();
    assert_eq!(stats.dispatchers[0].name, "index");
    assert_eq!(stats.dispatchers[0].lag_bytes, 0);
    assert_eq!(stats.dispatchers[0].failures, 0);
    // The checkpoint's index time (RocketMQ's third field) follows the index.
    let last = store
        .lookup_message(r.messages[0].physical_offset)
        .unwrap()
        .unwrap()
        .store_timestamp;
    store.shutdown().unwrap();
    let cp = rocketstore::CheckpointTimes::read(&layout::checkpoint_file(dir.path()))
        .unwrap()
        .unwrap();
    assert!(cp.index >= last, "index time {} < {last}", cp.index);
}

/// With one hash slot every key shares a chain; with a few, many keys collide. Every query
/// must match an in-memory multimap of what was put, whatever collides, across rolled files.
#[test]
fn queries_match_a_multimap_whatever_collides() {
    for (seed, slots, entries) in [(1u64, 1u32, 64u32), (2, 3, 50), (3, 7, 1000), (4, 64, 16)] {
        let dir = tempfile::tempdir().unwrap();
        let store = MessageStore::open(
            config(dir.path(), sync_mode())
                .index_file_shape(slots, entries)
                .index_max_files(0),
        )
        .unwrap();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let topics = ["T1", "T2", "T3"];
        let mut model: HashMap<(String, String), Vec<Bytes>> = HashMap::new();
        for i in 0..300u64 {
            let topic = topics[rng.below(3) as usize];
            let keys: Vec<String> = (0..rng.below(4))
                .map(|_| format!("k{}", rng.below(20)))
                .collect();
            let body = Bytes::from(format!("{topic}-{i}"));
            let mut m = Message::new(topic, rng.below(2) as u32, body.clone());
            if !keys.is_empty() {
                m = m.with_keys(keys.iter());
            }
            if rng.below(4) == 0 {
                m = m.with_property(PROPERTY_UNIQ_KEY, format!("u{i}"));
                model
                    .entry((topic.into(), format!("u{i}")))
                    .or_default()
                    .push(body.clone());
            }
            let mut seen = std::collections::HashSet::new();
            for k in &keys {
                if seen.insert(k.clone()) {
                    model
                        .entry((topic.into(), k.clone()))
                        .or_default()
                        .push(body.clone());
                }
            }
            store.put_message(&m).unwrap();
        }
        indexed(&store);
        for topic in topics {
            for k in (0..20)
                .map(|k| format!("k{k}"))
                .chain((0..300).map(|i| format!("u{i}")))
            {
                let mut want = model
                    .get(&(topic.into(), k.clone()))
                    .cloned()
                    .unwrap_or_default();
                want.reverse();
                assert_eq!(
                    bodies(&store, topic, &k, 1000),
                    want,
                    "seed {seed}, {slots} slots: {topic}#{k}"
                );
            }
        }
    }
}

fn index_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(layout::index_dir(root))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn files_roll_over_and_the_cap_removes_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(
        config(dir.path(), sync_mode())
            .index_file_shape(16, 11)
            .index_max_files(3),
    )
    .unwrap();
    // Ten entries per file: 50 keys make five files, of which the newest three stay.
    for i in 0..50 {
        store
            .put_message(&keyed("T", &format!("m{i}"), &[&format!("k{i}")]))
            .unwrap();
    }
    indexed(&store);
    assert_eq!(index_files(dir.path()).len(), 3);
    assert!(bodies(&store, "T", "k19", 8).is_empty(), "capped away");
    assert_eq!(bodies(&store, "T", "k20", 8), ["m20"]);
    assert_eq!(bodies(&store, "T", "k49", 8), ["m49"]);

    // An independent reader: each file's header and entries, in RocketMQ's layout.
    for path in index_files(dir.path()) {
        let bytes = fs::read(&path).unwrap();
        let len = INDEX_HEADER_LEN + 16 * INDEX_SLOT_LEN + 11 * INDEX_ENTRY_LEN;
        assert_eq!(bytes.len() as u64, len);
        let h = IndexHeader::decode(bytes[..40].try_into().unwrap());
        assert!(h.count > 1 && h.count <= 11, "{h:?}");
        assert!(h.begin_offset <= h.end_offset && h.begin_timestamp <= h.end_timestamp);
    }
}

#[test]
fn index_files_go_with_the_commit_log_files_they_point_into() {
    index_files_go_with_the_log(false);
}

/// A failed sync fails every later flush of the index in that run; its files of deleted
/// commit-log files still go (on a full disk above all), or they pile up to
/// `index_max_files`.
#[test]
fn index_files_go_with_the_log_even_while_the_index_cannot_sync() {
    index_files_go_with_the_log(true);
}

fn index_files_go_with_the_log(failing_syncs: bool) {
    let dir = tempfile::tempdir().unwrap();
    let hook = std::sync::Arc::new(FailIndexSync::default());
    let cfg = config(dir.path(), sync_mode())
        .index_file_shape(16, 11)
        .file_reserved_time(Duration::ZERO)
        .io_hook(hook.clone());
    let store = MessageStore::open(cfg).unwrap();
    let big = "x".repeat(6000);
    for i in 0..60 {
        store
            .put_message(&keyed("T", &format!("{big}{i}"), &[&format!("k{i}")]))
            .unwrap();
    }
    indexed(&store);
    hook.armed
        .store(failing_syncs, std::sync::atomic::Ordering::SeqCst);
    let before = index_files(dir.path()).len();
    assert!(before >= 5);
    assert!(store.delete_expired_files().unwrap() > 0);
    let log_start = store.min_physical_offset();
    // The index removes its files at its next flush (one more put makes one), one after
    // the other: wait until none is left that points only below the log.
    store.put_message(&keyed("T", "last", &["last"])).unwrap();
    indexed(&store);
    let only_below = || {
        index_files(dir.path()).into_iter().filter(|path| {
            // A file removed since the listing points nowhere.
            fs::read(path).is_ok_and(|bytes| {
                let h = IndexHeader::decode(bytes[..40].try_into().unwrap());
                h.count > 1 && h.end_offset < log_start
            })
        })
    };
    let deadline = std::time::Instant::now() + LONG;
    while let Some(path) = only_below().next() {
        assert!(
            std::time::Instant::now() < deadline,
            "{path:?} points only below the log, and was never removed"
        );
        std::thread::park_timeout(Duration::from_millis(10));
    }
    assert!(index_files(dir.path()).len() < before);
    assert_eq!(bodies(&store, "T", "k59", 8).len(), 1);
    assert_eq!(bodies(&store, "T", "last", 8), ["last"]);
}

#[test]
fn after_a_crash_the_index_keeps_its_files_and_indexes_only_what_was_not_durable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).index_file_shape(8, 400);
    let store = MessageStore::open(cfg()).unwrap();
    for i in 0..100 {
        store
            .put_message(&keyed("T", &format!("m{i}"), &[&format!("k{i}"), "all"]))
            .unwrap();
    }
    indexed(&store);
    store.shutdown().unwrap();
    drop(store);
    let files = index_files(dir.path());
    assert_eq!(files.len(), 1);

    // As after a crash in which writes past the index's recorded progress reached the
    // disk in part: garbage entries past the last one, a slot and the header's count
    // pointing at them.
    let mut bytes = fs::read(&files[0]).unwrap();
    let h = IndexHeader::decode(bytes[..40].try_into().unwrap());
    let entries_at = (INDEX_HEADER_LEN + 8 * INDEX_SLOT_LEN) as usize;
    let entry = |n: u32| entries_at + n as usize * INDEX_ENTRY_LEN as usize;
    let mut rng = Rng(77);
    for b in &mut bytes[entry(h.count)..entry(h.count + 6)] {
        *b = rng.next() as u8;
    }
    for slot in [0usize, 3, 5] {
        let at = INDEX_HEADER_LEN as usize + slot * 4;
        bytes[at..at + 4].copy_from_slice(&(h.count + 2).to_be_bytes());
    }
    bytes[36..40].copy_from_slice(&(h.count + 6).to_be_bytes());
    fs::write(&files[0], &bytes).unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    indexed(&store);
    assert_eq!(
        index_files(dir.path()),
        files,
        "the file is kept, not rebuilt"
    );
    assert_eq!(bodies(&store, "T", "all", 1000).len(), 100);
    for i in (0..100).step_by(7) {
        assert_eq!(bodies(&store, "T", &format!("k{i}"), 8), [format!("m{i}")]);
    }
    // And it goes on, in the same file.
    store
        .put_message(&keyed("T", "m100", &["k100", "all"]))
        .unwrap();
    indexed(&store);
    assert_eq!(bodies(&store, "T", "all", 1000).len(), 101);
    assert_eq!(index_files(dir.path()), files);
}

#[test]
fn without_its_progress_the_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode());
    let store = MessageStore::open(cfg()).unwrap();
    for i in 0..20 {
        store
            .put_message(&keyed("T", &format!("m{i}"), &[&format!("k{i}")]))
            .unwrap();
    }
    indexed(&store);
    drop(store);
    fs::remove_file(layout::dispatch_progress_file(dir.path(), "index")).unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    indexed(&store);
    for i in 0..20 {
        assert_eq!(
            bodies(&store, "T", &format!("k{i}"), 8),
            [format!("m{i}")],
            "no duplicate"
        );
    }
}

#[test]
fn a_disabled_index_refuses_queries_and_bad_shapes_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode()).index_enabled(false)).unwrap();
    assert!(matches!(
        store.query_message("T", "k", 1, 0, i64::MAX),
        Err(rocketstore::Error::InvalidConfig { .. })
    ));
    drop(store);
    for (slots, entries) in [(0, 100), (10, 1)] {
        let e = MessageStore::open(StoreConfig::new(dir.path()).index_file_shape(slots, entries));
        assert!(
            matches!(e, Err(rocketstore::Error::InvalidConfig { .. })),
            "{slots}/{entries}"
        );
    }
    // Index files written with another shape are refused with a clear error.
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    store.put_message(&keyed("T", "m", &["k"])).unwrap();
    indexed(&store);
    drop(store);
    let e = MessageStore::open(config(dir.path(), sync_mode()).index_file_shape(7, 100));
    assert!(
        matches!(e, Err(rocketstore::Error::BadStoreFile { .. })),
        "{e:?}"
    );
    // The refused open left nothing running and the store unlocked and clean.
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    assert_eq!(bodies(&store, "T", "k", 8), ["m"]);
}

/// Puts forty messages keyed `k{i}` and `all` into a new store, indexes them, closes it,
/// then tears the log at the thirtieth as a crash would (zeroed, past what the checkpoint
/// vouches for). Returns where the log is cut, and where the last record began.
fn forty_keyed_then_torn_at_the_thirtieth(dir: &std::path::Path, cfg: StoreConfig) -> (u64, u64) {
    let store = MessageStore::open(cfg).unwrap();
    let puts: Vec<_> = (0..40)
        .map(|i| {
            store
                .put_message(&keyed("T", &format!("m{i}"), &[&format!("k{i}"), "all"]))
                .unwrap()
        })
        .collect();
    indexed(&store);
    store.shutdown().unwrap();
    drop(store);
    let cut = puts[30].physical_offset;
    common::tear_log_at(dir, cut);
    (cut, puts[39].physical_offset)
}

/// A crash cut the log below what the index had recorded (as under async flush, where the
/// index sees records the log then loses; simulated here by tearing a synced tail). The
/// index forgets their entries, records its new point before anything else, and neither a
/// second crash nor new records at the same offsets
/// bring stale entries back.
#[test]
fn when_the_log_is_cut_below_the_index_the_index_follows_it_across_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).index_file_shape(8, 400);
    let (cut, _) = forty_keyed_then_torn_at_the_thirtieth(dir.path(), cfg());

    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.max_physical_offset(), cut);
    indexed(&store);
    // The index's own end, not only what queries find (a stale entry at a cut record's
    // offset is hidden from them: no record starts there any more).
    let ends = store.query_message("T", "all", 1000, 0, i64::MAX).unwrap();
    assert!(
        ends.index_last_update_offset < cut,
        "the index ends at {} past the cut {cut}",
        ends.index_last_update_offset
    );
    assert_eq!(bodies(&store, "T", "all", 1000).len(), 30);
    assert!(bodies(&store, "T", "k35", 8).is_empty());
    // New records take the cut records' offsets, with other keys.
    for i in 100..105 {
        store
            .put_message(&keyed("T", &format!("m{i}"), &[&format!("k{i}"), "all"]))
            .unwrap();
    }
    indexed(&store);
    drop(store);
    // Crash again before anything: the reopened index still agrees with the log.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    indexed(&store);
    let all = bodies(&store, "T", "all", 1000);
    assert_eq!(all.len(), 35, "each record once: {all:?}");
    assert_eq!(bodies(&store, "T", "k102", 8), ["m102"]);
    assert!(bodies(&store, "T", "k31", 8).is_empty());
    assert_eq!(bodies(&store, "T", "k29", 8), ["m29"]);
}

/// The same cut, with a run between that leaves the index out (`index_enabled(false)`):
/// that run's open must still take the index back to the log, or the run after it resumes
/// the index at a point inside a record the middle run wrote, fails every round, and never
/// indexes another key.
#[test]
fn a_run_without_the_index_after_a_cut_still_takes_it_back_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).index_file_shape(8, 400);
    let (cut, last) = forty_keyed_then_torn_at_the_thirtieth(dir.path(), cfg());

    // Without the index: records of the cut ones' size, so the index's old progress
    // falls on a boundary of theirs and looks like a place to resume.
    let store = MessageStore::open(cfg().index_enabled(false)).unwrap();
    assert_eq!(store.max_physical_offset(), cut);
    for i in 50..90 {
        store
            .put_message(&keyed("T", &format!("n{i}"), &[&format!("k{i}"), "all"]))
            .unwrap();
    }
    assert!(store.max_physical_offset() > last);
    store.shutdown().unwrap();
    drop(store);

    let store = MessageStore::open(cfg()).unwrap();
    indexed(&store);
    let index = store.stats().dispatchers;
    let index = index.iter().find(|d| d.name == "index").unwrap();
    assert_eq!(index.error, None, "{index:?}");
    // k52 lies between the cut and the old progress, k80 past it.
    assert_eq!(bodies(&store, "T", "k52", 8), ["n52"]);
    assert_eq!(bodies(&store, "T", "k80", 8), ["n80"]);
    assert_eq!(bodies(&store, "T", "k29", 8), ["m29"]);
    assert!(bodies(&store, "T", "k35", 8).is_empty());
    assert_eq!(bodies(&store, "T", "all", 1000).len(), 70);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Entry times are seconds after the file's begin time. A file whose begin time tells
/// nothing (its first message stamped at the epoch, as a replicated or imported record
/// can be) or is damaged still answers a query with a time window: its entries are all
/// candidates, each checked against its message's own store time, and nothing overflows.
#[test]
fn a_file_whose_begin_time_tells_nothing_still_answers_windowed_queries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).index_file_shape(8, 4);
    let store = MessageStore::open(cfg()).unwrap();
    store
        .put_message_stamped(&keyed("T", "epoch", &["old"]), 0)
        .unwrap();
    for i in 0..8 {
        store
            .put_message(&keyed("T", &format!("m{i}"), &[&format!("k{i}")]))
            .unwrap();
    }
    indexed(&store);
    let since = now_ms() - 60_000;
    let windowed = |store: &MessageStore, key: &str| -> Vec<Bytes> {
        let r = store.query_message("T", key, 8, since, i64::MAX).unwrap();
        r.messages.into_iter().map(|m| m.body).collect()
    };
    assert_eq!(windowed(&store, "k1"), ["m1"]);
    assert!(windowed(&store, "old").is_empty(), "outside the window");
    assert_eq!(bodies(&store, "T", "old", 8), ["epoch"]);
    store.shutdown().unwrap();
    drop(store);

    // A damaged begin time in the oldest file's header.
    let oldest = index_files(dir.path()).remove(0);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(oldest)
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&0x7FFF_FFFF_FFFF_FF00u64.to_be_bytes(), 0)
        .unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(windowed(&store, "k1"), ["m1"]);
    assert_eq!(bodies(&store, "T", "k0", 8), ["m0"]);
    assert_eq!(windowed(&store, "k7"), ["m7"]);
}

/// Fails the next sync of a key-index file once armed.
#[derive(Default)]
struct FailIndexSync {
    armed: std::sync::atomic::AtomicBool,
}

impl rocketstore::IoHook for FailIndexSync {
    fn before_sync(&self, path: &std::path::Path) -> std::io::Result<()> {
        let index = path.components().any(|c| c.as_os_str() == "index");
        if index && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: the disk failed a sync"));
        }
        Ok(())
    }
}

/// After a failed sync of an index file its pages may never reach the disk, and a retried
/// sync would report success (Linux reports a failed write-back once). So the index
/// records no progress again in this run: a crash then cuts it back to what was synced,
/// never keeping entries that could be zeros. The next open indexes again from there.
#[test]
fn after_a_failed_index_sync_no_progress_is_recorded_until_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let hook = std::sync::Arc::new(FailIndexSync::default());
    let cfg =
        || config(dir.path(), sync_mode()).consume_queue_flush_interval(Duration::from_millis(20));
    let store = MessageStore::open(cfg().io_hook(hook.clone())).unwrap();
    let put = |store: &MessageStore, i: usize| {
        store
            .put_message(&keyed("T", &format!("m{i}"), &[&format!("k{i}")]))
            .unwrap()
    };
    for i in 0..10 {
        put(&store, i);
    }
    indexed(&store);
    let index_stats = |store: &MessageStore| {
        store
            .stats()
            .dispatchers
            .into_iter()
            .find(|d| d.name == "index")
            .unwrap()
    };
    let deadline = std::time::Instant::now() + LONG;
    while index_stats(&store).durable_offset < store.max_physical_offset() {
        assert!(
            std::time::Instant::now() < deadline,
            "the index records its progress"
        );
        std::thread::yield_now();
    }
    let synced = index_stats(&store).durable_offset;
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 10..20 {
        put(&store, i);
    }
    // Everything is indexed in memory; from then on no round clears the flush's failure.
    indexed(&store);
    let after = index_stats(&store).failures.max(2) + 1;
    // The failed flush is retried, and keeps failing.
    while index_stats(&store).failures < after {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            index_stats(&store)
        );
        std::thread::yield_now();
    }
    let stats = index_stats(&store);
    assert_eq!(stats.durable_offset, synced, "{stats:?}");
    assert!(stats.error.is_some());
    // Queries still see what is indexed in memory.
    assert_eq!(bodies(&store, "T", "k15", 8), ["m15"]);
    assert!(
        store.shutdown().is_err(),
        "the index could not be made durable"
    );
    drop(store);

    let store = MessageStore::open(cfg()).unwrap();
    indexed(&store);
    for i in [0, 9, 10, 19] {
        assert_eq!(bodies(&store, "T", &format!("k{i}"), 8), [format!("m{i}")]);
    }
    assert_eq!(index_stats(&store).failures, 0);
}

/// Puts `m{i}` with key `k{i}` for each `i` below `n` into a store opened with `cfg`,
/// waits until the index holds them all, and shuts the store down cleanly.
fn put_keyed_and_close(cfg: StoreConfig, n: usize) {
    let store = MessageStore::open(cfg).unwrap();
    for i in 0..n {
        store
            .put_message(&keyed("T", &format!("m{i}"), &[&format!("k{i}")]))
            .unwrap();
    }
    indexed(&store);
    store.shutdown().unwrap();
}

/// The index's files removed by hand while its progress stays (an operator clearing
/// space, say): the progress names a file that is gone, so the index is rebuilt from the
/// log's start instead of resuming where it was, with every earlier key lost for good.
#[test]
fn an_index_whose_files_were_removed_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).index_file_shape(8, 400);
    put_keyed_and_close(cfg(), 20);
    assert!(!index_files(dir.path()).is_empty());
    fs::remove_dir_all(layout::index_dir(dir.path())).unwrap();

    let store = MessageStore::open(cfg()).unwrap();
    store.put_message(&keyed("T", "m20", &["k20"])).unwrap();
    indexed(&store);
    assert_eq!(bodies(&store, "T", "k3", 8), ["m3"]);
    assert_eq!(bodies(&store, "T", "k20", 8), ["m20"]);
}

/// A damaged header of a full, older index file (a zeroed first block, its hash slots
/// with it; a count that went wrong) says nothing of its entries, which were synced
/// before any progress naming a later file: the open keeps them all and rebuilds the
/// header and slots from them, instead of cutting the file to what the header counts
/// (and zeroing every key it held).
#[test]
fn a_damaged_header_of_an_older_index_file_loses_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).index_file_shape(16, 11);
    // Ten entries per file: three full files and one more.
    put_keyed_and_close(cfg(), 35);
    let files = index_files(dir.path());
    assert_eq!(files.len(), 4);
    let header = |path: &std::path::Path| {
        IndexHeader::decode(fs::read(path).unwrap()[..40].try_into().unwrap())
    };
    let before = header(&files[1]);
    // Header and slots: the whole first block of a file of the default shape holds only
    // those.
    let mut bytes = fs::read(&files[0]).unwrap();
    bytes[..(INDEX_HEADER_LEN + 16 * INDEX_SLOT_LEN) as usize].fill(0);
    fs::write(&files[0], &bytes).unwrap();
    let mut bytes = fs::read(&files[1]).unwrap();
    bytes[36..40].copy_from_slice(&3u32.to_be_bytes());
    fs::write(&files[1], &bytes).unwrap();

    for crash in [false, true] {
        if crash {
            fs::write(layout::abort_file(dir.path()), b"").unwrap();
        }
        let store = MessageStore::open(cfg()).unwrap();
        indexed(&store);
        for i in 0..35 {
            assert_eq!(
                bodies(&store, "T", &format!("k{i}"), 8),
                [format!("m{i}")],
                "k{i} (crash open: {crash})"
            );
        }
        assert_eq!(index_files(dir.path()), files);
        let repaired = header(&files[1]);
        assert_eq!(
            (repaired.count, repaired.begin_offset, repaired.end_offset),
            (before.count, before.begin_offset, before.end_offset)
        );
        let first = header(&files[0]);
        assert_eq!(first.count, 11, "{first:?}");
        assert!(first.end_offset < before.begin_offset, "{first:?}");
        store.shutdown().unwrap();
    }
}

/// Refuses, once armed, every creation and allocation of a key-index file, as a full
/// disk does (`ENOSPC`); counts the refusals.
#[derive(Default)]
struct FullIndexDisk {
    armed: std::sync::atomic::AtomicBool,
    refused: std::sync::atomic::AtomicU64,
}

impl FullIndexDisk {
    fn check(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let index = path.components().any(|c| c.as_os_str() == "index");
        if index && self.armed.load(SeqCst) {
            self.refused.fetch_add(1, SeqCst);
            return Err(std::io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
}

impl rocketstore::IoHook for FullIndexDisk {
    fn before_create(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.check(path)
    }
    fn before_allocate(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.check(path)
    }
}

/// A disk too full for the key index's next blocks stalls only the index: puts and reads
/// by queue go on, and once space is back the index catches up, each key once, even for
/// the record whose keys the failure cut in two.
#[test]
fn a_full_disk_stalls_only_the_index_which_then_catches_up_without_duplicates() {
    // 20 slots and 300 entries: the first page allocated holds entries 1..=197, so the
    // 66th record's third key needs the next blocks; a file takes 99⅔ records.
    index_on_a_full_disk(300, &[300, 152]);
}

/// The same when a new index file cannot be made: the whole file fits the first
/// allocation, and the 50th record's third key needs the next file.
#[test]
fn a_full_disk_that_refuses_a_new_index_file_stalls_only_the_index() {
    index_on_a_full_disk(150, &[150, 150, 150, 4]);
}

/// 150 records of three keys each, into index files of 20 slots and `entries` entries,
/// with the disk refusing the index from the eleventh record until all are put; then the
/// index files' header counts.
fn index_on_a_full_disk(entries: u32, counts: &[u32]) {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let hook = std::sync::Arc::new(FullIndexDisk::default());
    let cfg = config(dir.path(), sync_mode())
        .index_file_shape(20, entries)
        .io_hook(hook.clone());
    let store = MessageStore::open(cfg).unwrap();
    let put = |i: usize| {
        let keys = [format!("k{i}"), format!("a{i}"), format!("b{i}")];
        let m = keyed("T", &format!("m{i}"), &[&keys[0], &keys[1], &keys[2]]);
        store.put_message(&m).unwrap()
    };
    for i in 0..10 {
        put(i);
    }
    indexed(&store);
    hook.armed.store(true, SeqCst);
    let mut last = None;
    for i in 10..150 {
        last = Some(put(i));
    }
    let last = last.unwrap();
    // The index is refused, and retries; the queue is not.
    let deadline = std::time::Instant::now() + LONG;
    while hook.refused.load(SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the index never asked"
        );
        std::thread::park_timeout(Duration::from_millis(5));
    }
    assert!(store.wait_dispatched(last.physical_offset, LONG));
    let got = store.get_message("T", 0, 140, 32).unwrap();
    assert_eq!(got.messages.len(), 10);
    assert!(bodies(&store, "T", "k120", 8).is_empty(), "not indexed yet");
    assert_eq!(bodies(&store, "T", "a40", 8), ["m40"]);

    hook.armed.store(false, SeqCst);
    indexed(&store);
    for i in 0..150 {
        for key in [format!("k{i}"), format!("a{i}"), format!("b{i}")] {
            assert_eq!(bodies(&store, "T", &key, 8), [format!("m{i}")], "{key}");
        }
    }
    // Each key once (450 entries), and no other file.
    let files = index_files(dir.path());
    let found: Vec<u32> = files
        .iter()
        .map(|path| IndexHeader::decode(fs::read(path).unwrap()[..40].try_into().unwrap()).count)
        .collect();
    assert_eq!(found, counts, "{files:?}");
}

/// Keys whose `topic#key` hashes collide (Java's `String.hashCode`: "Aa" and "BB" hash
/// alike, and so does every word made of them) make every one of their messages a
/// candidate for each other's queries. A query reads at most the configured number of
/// candidates that are not answers, and says when it stopped there; answers are bounded
/// by the query's own `max`.
#[test]
fn a_query_reads_at_most_its_cap_of_colliding_candidates_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let colliding: Vec<String> = (0..64u32)
        .map(|bits| {
            (0..6)
                .map(|i| if bits >> i & 1 == 0 { "Aa" } else { "BB" })
                .collect()
        })
        .collect();
    let hash = |key: &str| rocketstore::format::key_hash(&format!("T#{key}"));
    assert!(colliding.iter().all(|k| hash(k) == hash(&colliding[0])));
    // Eleven entries a file: the candidates, and the cap, run across files.
    let cfg = |cap: usize| {
        config(dir.path(), sync_mode())
            .index_file_shape(16, 12)
            .index_query_max_mismatches(cap)
    };
    let store = MessageStore::open(cfg(10)).unwrap();
    // The oldest holds the key asked for; twenty newer ones collide with it.
    for (i, key) in colliding.iter().take(21).enumerate() {
        store
            .put_message(&keyed("T", &format!("m{i}"), &[key, "plain"]))
            .unwrap();
    }
    indexed(&store);
    let query =
        |store: &MessageStore, key: &str| store.query_message("T", key, 8, 0, i64::MAX).unwrap();
    let capped = query(&store, &colliding[0]);
    assert!(capped.messages.is_empty() && capped.incomplete);
    // The newest colliding key is found, and the rest of its chain was not all read.
    let newest = query(&store, &colliding[20]);
    assert_eq!(newest.messages.len(), 1);
    assert!(newest.incomplete);
    // A key without colliding messages reads only its own, however many.
    let plain = query(&store, "plain");
    assert_eq!(plain.messages.len(), 8);
    assert!(!plain.incomplete);
    let all = store.query_message("T", "plain", 21, 0, i64::MAX).unwrap();
    assert_eq!((all.messages.len(), all.incomplete), (21, false));
    store.shutdown().unwrap();
    drop(store);

    // Without a cap, every candidate is read.
    let store = MessageStore::open(cfg(0)).unwrap();
    let whole = query(&store, &colliding[0]);
    assert_eq!(whole.messages.len(), 1);
    assert_eq!(&whole.messages[0].body[..], b"m0");
    assert!(!whole.incomplete);
}

/// The cap counts other keys' messages only: the key's own messages just past the time
/// window (entry times are whole seconds, so they are candidates) do not count, and a
/// deleted topic's old messages end the walk unread.
#[test]
fn a_query_s_cap_counts_neither_its_own_key_outside_the_window_nor_a_deleted_topic() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        MessageStore::open(config(dir.path(), sync_mode()).index_query_max_mismatches(5)).unwrap();
    // A whole second, ahead of every stamp so far: the file's first entry.
    let t0 = (now_ms() / 1000 + 10) * 1000;
    store
        .put_message_stamped(&keyed("T", "answer", &["hot"]), t0)
        .unwrap();
    for i in 0..20 {
        let m = keyed("T", &format!("later{i}"), &["hot"]);
        store.put_message_stamped(&m, t0 + 100 + i).unwrap();
    }
    for i in 0..20 {
        store
            .put_message(&keyed("D", &format!("old{i}"), &["k"]))
            .unwrap();
    }
    store.delete_topic("D").unwrap();
    store.put_message(&keyed("D", "new", &["k"])).unwrap();
    indexed(&store);

    let window = store.query_message("T", "hot", 8, t0, t0 + 50).unwrap();
    let found: Vec<_> = window.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(found, ["answer"]);
    assert!(!window.incomplete);
    let after = store.query_message("D", "k", 8, 0, i64::MAX).unwrap();
    let found: Vec<_> = after.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(found, ["new"]);
    assert!(!after.incomplete);
}
