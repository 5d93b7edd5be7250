//! Reading by topic, queue and offset through the consume queues.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rocketstore::layout;
use rocketstore::{
    BoundaryType, FlushMode, GetRequest, GetStatus, Message, MessageStore, PutResult, StoreConfig,
    TagFilter, format,
};

const WAIT: Duration = Duration::from_secs(30);

fn put_all(store: &MessageStore, topic: &str, queues: u32, n: u64) -> Vec<(u32, u64, PutResult)> {
    let puts: Vec<_> = (0..n)
        .map(|i| {
            let q = (i % u64::from(queues)) as u32;
            let tag = if i % 2 == 0 { "even" } else { "odd" };
            let m = message(topic, q, "g", i).with_tags(tag);
            (q, i, store.put_message(&m).unwrap())
        })
        .collect();
    settled(store);
    puts
}

#[test]
fn every_message_reads_back_through_its_queue_in_order() {
    for mode in [sync_mode(), async_mode()] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), mode);
        let puts = put_all(&store, "Get", 3, 900);
        for q in 0..3u32 {
            let expected: Vec<_> = puts.iter().filter(|p| p.0 == q).collect();
            assert_eq!(store.max_offset_in_queue("Get", q), expected.len() as u64);
            assert_eq!(store.min_offset_in_queue("Get", q), 0);
            let mut offset = 0;
            let mut seen = 0;
            loop {
                let r = store.get_message("Get", q, offset, 32).unwrap();
                if r.status == GetStatus::OffsetOverflowOne {
                    break;
                }
                assert_eq!(r.status, GetStatus::Found);
                assert!(r.messages.len() <= 32);
                for m in &r.messages {
                    let (_, i, put) = expected[seen];
                    assert_eq!(m.queue_offset, seen as u64);
                    assert_eq!(m.physical_offset, put.physical_offset);
                    assert_eq!(m.body, body("g", *i));
                    seen += 1;
                }
                assert_eq!(r.next_offset, offset + r.messages.len() as u64);
                offset = r.next_offset;
            }
            assert_eq!(seen, expected.len());
        }
    }
}

#[test]
fn statuses_follow_rocketmq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), async_mode());
    // An unknown queue is an empty one, as in RocketMQ (queues are created on demand).
    let r = store.get_message("Nope", 0, 0, 32).unwrap();
    assert_eq!(r.status, GetStatus::NoMessageInQueue);
    assert_eq!((r.next_offset, r.min_offset, r.max_offset), (0, 0, 0));
    put_all(&store, "S", 1, 10);
    assert_eq!(
        store.get_message("S", 0, 10, 32).unwrap().status,
        GetStatus::OffsetOverflowOne
    );
    let bad = store.get_message("S", 0, 50, 32).unwrap();
    assert_eq!(bad.status, GetStatus::OffsetOverflowBadly);
    assert_eq!(bad.next_offset, 10);
    assert_eq!(
        store.get_message("S", 1, 0, 32).unwrap().status,
        GetStatus::NoMessageInQueue
    );
    let found = store.get_message("S", 0, 4, 3).unwrap();
    assert_eq!(found.status, GetStatus::Found);
    assert_eq!(found.messages.len(), 3);
    assert_eq!((found.min_offset, found.max_offset), (0, 10));
}

#[test]
fn tag_filter_and_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        MessageStore::open(config(dir.path(), async_mode()).max_transfer_bytes(1000)).unwrap();
    put_all(&store, "F", 1, 100);
    let odd = TagFilter::parse("odd");
    let r = store
        .get_message_filtered("F", 0, 0, 10, Some(&odd))
        .unwrap();
    assert_eq!(r.status, GetStatus::Found);
    assert!(r.messages.iter().all(|m| m.tags() == Some("odd")));
    assert!(r.messages.iter().all(|m| m.queue_offset % 2 == 1));
    let none = TagFilter::parse("missing");
    let r = store
        .get_message_filtered("F", 0, 0, 10, Some(&none))
        .unwrap();
    assert_eq!(r.status, GetStatus::NoMatchedMessage);
    assert_eq!(
        r.next_offset, 100,
        "skipped entries still advance the offset"
    );
    // The byte budget caps a batch, but one message always comes back.
    let r = store.get_message("F", 0, 0, 32).unwrap();
    let total: u32 = r.messages.iter().map(|m| m.total_size).sum();
    assert!(total <= 1000 && r.messages.len() < 32, "{total} bytes");
    let tiny = MessageStore::open(
        config(tempfile::tempdir().unwrap().path(), async_mode()).max_transfer_bytes(1),
    )
    .unwrap();
    let p = tiny.put_message(&message("T", 0, "t", 0)).unwrap();
    assert!(tiny.wait_dispatched(p.physical_offset, WAIT));
    assert_eq!(tiny.get_message("T", 0, 0, 32).unwrap().messages.len(), 1);
}

#[test]
fn offset_by_time_finds_the_first_message_at_or_after_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), async_mode());
    let puts = put_all(&store, "Time", 1, 300);
    for probe in [0usize, 1, 150, 299] {
        let ts = puts[probe].2.store_timestamp;
        let offset = store.offset_by_time("Time", 0, ts).unwrap();
        let first_at_ts = puts.iter().position(|p| p.2.store_timestamp >= ts).unwrap();
        assert_eq!(offset, first_at_ts as u64);
    }
    assert_eq!(store.offset_by_time("Time", 0, i64::MAX).unwrap(), 300);
    assert_eq!(store.offset_by_time("Time", 0, 0).unwrap(), 0);
    assert_eq!(store.offset_by_time("Nope", 0, 0).unwrap(), 0);

    // The upper boundary: the last message stored at or before the time.
    for probe in [0usize, 1, 150, 299] {
        let ts = puts[probe].2.store_timestamp;
        let offset = store
            .offset_by_time_with("Time", 0, ts, BoundaryType::Upper)
            .unwrap();
        let last_at_ts = puts
            .iter()
            .rposition(|p| p.2.store_timestamp <= ts)
            .unwrap();
        assert_eq!(offset, last_at_ts as u64);
    }
    let upper = |ts| {
        store
            .offset_by_time_with("Time", 0, ts, BoundaryType::Upper)
            .unwrap()
    };
    assert_eq!(upper(i64::MAX), 299);
    assert_eq!(upper(0), 0, "every message is newer: the min offset");

    // Where each message is, and when it was stored.
    let first = puts[0].2;
    assert_eq!(
        store.earliest_message_time("Time", 0).unwrap(),
        Some(first.store_timestamp)
    );
    assert_eq!(store.earliest_message_time("Nope", 0).unwrap(), None);
    let p = puts[123].2;
    assert_eq!(
        store.message_store_time("Time", 0, 123).unwrap(),
        Some(p.store_timestamp)
    );
    assert_eq!(
        store.commit_log_offset_in_queue("Time", 0, 123).unwrap(),
        Some(p.physical_offset)
    );
    assert_eq!(
        store.commit_log_offset_in_queue("Time", 0, 300).unwrap(),
        None
    );
}

#[test]
fn consume_queues_roll_and_survive_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).consume_queue_entries_per_file(64);
    let puts = {
        let store = MessageStore::open(cfg()).unwrap();
        put_all(&store, "Roll", 2, 500)
    };
    let files = std::fs::read_dir(layout::queue_dir(dir.path(), "Roll", 0))
        .unwrap()
        .count();
    assert!(files >= 4, "250 entries in files of 64: {files} files");
    let store = MessageStore::open(cfg()).unwrap();
    for q in 0..2 {
        assert_eq!(store.max_offset_in_queue("Roll", q), 250);
    }
    let r = store.get_message("Roll", 1, 100, 32).unwrap();
    let expected: Vec<_> = puts
        .iter()
        .filter(|p| p.0 == 1)
        .skip(100)
        .take(32)
        .collect();
    assert_eq!(r.messages.len(), 32);
    for (m, p) in r.messages.iter().zip(expected) {
        assert_eq!(m.physical_offset, p.2.physical_offset);
    }
    let next = store.put_message(&message("Roll", 1, "g", 9)).unwrap();
    assert_eq!(next.queue_offset, 250);
}

#[test]
fn consume_queue_entries_have_rocketmq_layout() {
    let dir = tempfile::tempdir().unwrap();
    let p = {
        let store = open(dir.path(), sync_mode());
        let m = Message::new("Layout", 7u32, Bytes::from_static(b"x")).with_tags("TagA");
        let p = store.put_message(&m).unwrap();
        store
            .put_message(&Message::new("Layout", 7u32, Bytes::from_static(b"y")))
            .unwrap();
        p
    };
    let file = layout::queue_dir(dir.path(), "Layout", 7).join(layout::file_name(0));
    let bytes = std::fs::read(file).unwrap();
    assert_eq!(bytes.len(), 300_000 * 20);
    let mut expected = Vec::new();
    expected.extend_from_slice(&(p.physical_offset as i64).to_be_bytes());
    expected.extend_from_slice(&(p.wrote_bytes as i32).to_be_bytes());
    expected.extend_from_slice(&2_598_919i64.to_be_bytes()); // "TagA".hashCode()
    assert_eq!(&bytes[..20], &expected[..]);
    // No tags: hash 0.
    assert_eq!(&bytes[32..40], &[0u8; 8]);
    assert_eq!(&bytes[40..60], &[0u8; 20]);
}

#[test]
fn under_sync_flush_readers_never_see_unflushed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StallSync::new(false);
    let store = MessageStore::open(
        StoreConfig::new(dir.path())
            .commit_log_file_size(SMALL_FILE)
            .flush_mode(FlushMode::Sync {
                timeout: Duration::from_millis(20),
            })
            .index_file_shape(SMALL_INDEX_SLOTS, SMALL_INDEX_ENTRIES)
            .io_hook(hook.clone()),
    )
    .unwrap();
    let first = store.put_message(&message("U", 0, "u", 0)).unwrap();
    // The short timeout is for the stalled put below; on a busy machine the first flush
    // may outlast it too, so it is made durable here either way.
    if !first.is_ok() {
        assert!(store.flush().unwrap() >= first.end_offset());
    }
    assert!(store.wait_dispatched(first.physical_offset, WAIT));
    hook.arm();
    let second = store.put_message(&message("U", 0, "u", 1)).unwrap();
    assert_eq!(second.status, rocketstore::PutStatus::FlushDiskTimeout);
    hook.wait_stalled();
    // Written but not durable: neither indexed nor readable.
    assert!(!store.wait_dispatched(second.physical_offset, Duration::from_millis(50)));
    assert_eq!(store.max_offset_in_queue("U", 0), 1);
    assert!(
        store
            .lookup_message(second.physical_offset)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.get_message("U", 0, 1, 32).unwrap().status,
        GetStatus::OffsetOverflowOne
    );
    hook.release();
    assert!(store.wait_dispatched(second.physical_offset, WAIT));
    assert_eq!(
        store.get_message("U", 0, 1, 32).unwrap().messages[0].body,
        body("u", 1)
    );
}

/// Fails the creation of consume-queue files while armed.
struct FailQueueCreate(std::sync::atomic::AtomicBool);

impl rocketstore::IoHook for FailQueueCreate {
    fn before_create(&self, path: &std::path::Path) -> std::io::Result<()> {
        let queue_file = path
            .components()
            .any(|c| c.as_os_str() == layout::CONSUME_QUEUE_DIR);
        if queue_file && self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: no space for a queue file"));
        }
        Ok(())
    }
}

#[test]
fn dispatch_retries_after_a_failure_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hook = std::sync::Arc::new(FailQueueCreate(true.into()));
    let store = MessageStore::open(config(dir.path(), async_mode()).io_hook(hook.clone())).unwrap();
    let puts: Vec<_> = (0..50)
        .map(|i| store.put_message(&message("Retry", 0, "r", i)).unwrap())
        .collect();
    // The commit log took every put; the queue cannot be created yet.
    assert!(!store.wait_dispatched(puts[0].physical_offset, Duration::from_millis(300)));
    assert_eq!(store.max_offset_in_queue("Retry", 0), 0);
    hook.0.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(store.wait_dispatched(puts[49].physical_offset, WAIT));
    let g = store.get_message("Retry", 0, 0, 64).unwrap();
    assert_eq!(g.messages.len(), 50);
    for (m, p) in g.messages.iter().zip(&puts) {
        assert_eq!(m.physical_offset, p.physical_offset);
    }
    store.shutdown().unwrap();
}

#[test]
fn a_pull_takes_a_byte_limit_of_its_own_and_raw_records_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), sync_mode());
    let puts = put_all(&store, "B", 1, 20);
    let size = |i: usize| puts[i].2.wrote_bytes as usize;
    // Room for two records and a half: two come back.
    let limit = size(0) + size(1) + size(2) / 2;
    let got = store
        .get(&GetRequest::new("B", 0, 0).max_count(32).max_bytes(limit))
        .unwrap();
    assert_eq!(got.messages.len(), 2);
    assert_eq!(got.next_offset, 2);
    // One message always fits.
    let got = store.get(&GetRequest::new("B", 0, 5).max_bytes(1)).unwrap();
    assert_eq!(got.messages.len(), 1);

    // Raw: each record whole, as in the log, with the same limits and filter.
    assert!(puts.last().unwrap().2.physical_offset < SMALL_FILE);
    let log = std::fs::read(layout::commit_log_file(dir.path(), 0)).unwrap();
    let odd = TagFilter::parse("odd");
    let raw = store
        .get_raw(&GetRequest::new("B", 0, 0).max_count(4).filter(&odd))
        .unwrap();
    assert_eq!(raw.status, GetStatus::Found);
    assert_eq!(raw.records.len(), 4);
    for (k, rec) in raw.records.iter().enumerate() {
        let i = 2 * k + 1;
        let at = puts[i].2.physical_offset;
        let view = format::parse(rec, at).unwrap();
        assert_eq!(view.physical_offset, at);
        assert_eq!(rec.len(), size(i));
        assert_eq!(view.body_bytes(), &body("g", i as u64)[..]);
        let start = at as usize;
        assert_eq!(
            rec[..],
            log[start..start + rec.len()],
            "the stored bytes, unchanged"
        );
    }
    assert_eq!(raw.next_offset, 8);
}

#[test]
fn a_damaged_entry_is_an_error_and_the_entries_around_it_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        MessageStore::open(config(dir.path(), sync_mode()).consume_queue_entries_per_file(10))
            .unwrap();
    put_all(&store, "D", 1, 25);
    // Entry 3 of the first queue file damaged on disk while the store runs.
    let file = layout::queue_dir(dir.path(), "D", 0).join(layout::file_name(0));
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .write_all_at(&[0u8; 20], 3 * 20)
        .unwrap();
    let got = store.get_message("D", 0, 0, 32).unwrap();
    assert_eq!(got.status, GetStatus::Found);
    assert_eq!(
        (got.messages.len(), got.next_offset),
        (3, 3),
        "served up to the damage"
    );
    // Never a skip past the rest of the file (entries 4 to 9 are intact): an error, again
    // and again, until the broker moves on knowingly or a reopen rebuilds the queue.
    for _ in 0..2 {
        let err = store.get_message("D", 0, 3, 32).unwrap_err();
        assert!(
            matches!(err, rocketstore::Error::BadStoreFile { .. }),
            "{err}"
        );
    }
    let got = store.get_message("D", 0, 4, 32).unwrap();
    assert_eq!(got.status, GetStatus::Found);
    assert_eq!(got.messages[0].queue_offset, 4);
    assert_eq!(got.messages.len(), 21);
    assert!(
        store.shutdown().is_err(),
        "left for the next open to rebuild"
    );
    let store =
        MessageStore::open(config(dir.path(), sync_mode()).consume_queue_entries_per_file(10))
            .unwrap();
    let got = store.get_message("D", 0, 0, 32).unwrap();
    assert_eq!(got.messages.len(), 25, "rebuilt from the log");
}

#[test]
fn a_tag_sharing_the_hash_of_the_filter_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), sync_mode());
    // Java's "Aa".hashCode() == "BB".hashCode(): the consume queue cannot tell them apart.
    assert_eq!(format::tag_hash(Some("Aa")), format::tag_hash(Some("BB")));
    let mut last = None;
    for (i, tag) in ["Aa", "BB", "Aa", "*"].into_iter().enumerate() {
        last = Some(
            store
                .put_message(&message("H", 0, "h", i as u64).with_tags(tag))
                .unwrap(),
        );
    }
    assert!(store.wait_dispatched(last.unwrap().physical_offset, WAIT));
    let served = |expression: &str| {
        let filter = TagFilter::parse(expression);
        let got = store
            .get_message_filtered("H", 0, 0, 32, Some(&filter))
            .unwrap();
        let tags: Vec<String> = got
            .messages
            .iter()
            .map(|m| m.tags().unwrap().into())
            .collect();
        (tags, got.next_offset)
    };
    assert_eq!(served("Aa"), (vec!["Aa".into(), "Aa".into()], 4));
    // `*` inside an expression is a tag, not "everything".
    assert_eq!(served("BB || *").0, ["BB", "*"]);
}

/// Delivery time instead of the tag hash, as RocketMQ's schedule service expects.
struct DelayAt;

impl rocketstore::TagCode for DelayAt {
    fn tag_code(&self, record: &format::RecordView<'_>) -> Option<i64> {
        (record.topic == "SCHEDULE_TOPIC_XXXX")
            .then(|| record.property("DELAY_AT")?.parse().ok())
            .flatten()
    }
}

/// A tag filter on a topic whose entries hold a broker's code (not the tag hash) still
/// finds the messages with its tags: the hash is no guide there, the record's tag is.
#[test]
fn a_tag_filter_finds_messages_whose_entries_hold_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        MessageStore::open(config(dir.path(), sync_mode()).tag_code(std::sync::Arc::new(DelayAt)))
            .unwrap();
    let topic = "SCHEDULE_TOPIC_XXXX";
    let put = |tag: &str, at: &str| {
        let msg = Message::new(topic, 0, Bytes::from_static(b"later"))
            .with_tags(tag)
            .with_property("DELAY_AT", at);
        store.put_message(&msg).unwrap()
    };
    let a = put("A", "1767225600000");
    let b = put("B", "1767225600001");
    assert!(store.wait_dispatched(b.physical_offset, WAIT));
    for (expression, want) in [("A", vec![a]), ("B", vec![b]), ("A || B", vec![a, b])] {
        let filter = rocketstore::TagFilter::parse(expression);
        let got = store
            .get_message_filtered(topic, 0, 0, 8, Some(&filter))
            .unwrap();
        let got: Vec<_> = got.messages.iter().map(|m| m.physical_offset).collect();
        let want: Vec<_> = want.iter().map(|p| p.physical_offset).collect();
        assert_eq!(got, want, "{expression}");
    }
}

#[test]
fn a_broker_supplies_the_tag_code_of_delayed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).tag_code(std::sync::Arc::new(DelayAt));
    let entry_tag = |topic: &str, at: u64| {
        let file = layout::queue_dir(dir.path(), topic, 0).join(layout::file_name(0));
        let bytes = std::fs::read(file).unwrap();
        let e: [u8; 20] = bytes[at as usize * 20..at as usize * 20 + 20]
            .try_into()
            .unwrap();
        format::CqEntry::decode(&e).unwrap().tag_hash
    };
    let store = MessageStore::open(cfg()).unwrap();
    let delayed = Message::new("SCHEDULE_TOPIC_XXXX", 0, Bytes::from_static(b"later"))
        .with_tags("T")
        .with_property("DELAY_AT", "1767225600000");
    store.put_message(&delayed).unwrap();
    let normal = store
        .put_message(&message("Plain", 0, "p", 0).with_tags("T"))
        .unwrap();
    assert!(store.wait_dispatched(normal.physical_offset, WAIT));
    // A schedule service reads the codes back through the store.
    let read = |topic: &str| store.queue_entries(topic, 0, 0, 8).unwrap()[0].tag_hash;
    assert_eq!(read("SCHEDULE_TOPIC_XXXX"), 1_767_225_600_000);
    assert_eq!(read("Plain"), format::tag_hash(Some("T")));
    store.shutdown().unwrap();
    drop(store);
    assert_eq!(entry_tag("SCHEDULE_TOPIC_XXXX", 0), 1_767_225_600_000);
    assert_eq!(entry_tag("Plain", 0), format::tag_hash(Some("T")));
    // The dumper's verify takes the store as sound: the code is not the tag's hash, by
    // the broker's rule, which it cannot know.
    let target = rocketstore::inspect::Target::of(dir.path()).unwrap();
    let shape = (common::SMALL_INDEX_SLOTS, common::SMALL_INDEX_ENTRIES);
    let mut problems = Vec::new();
    let checked = rocketstore::inspect::verify(&target, shape, |p| {
        problems.push(p);
        Ok(())
    })
    .unwrap();
    assert!(checked >= 4 && problems.is_empty(), "{problems:?}");
    // Recovery computes the same codes again: after a crash the entries are the same.
    std::fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    store.shutdown().unwrap();
    drop(store);
    assert_eq!(entry_tag("SCHEDULE_TOPIC_XXXX", 0), 1_767_225_600_000);
    // Opening without the rule, or with another, would rebuild the queues with other
    // codes: refused.
    let without = MessageStore::open(config(dir.path(), sync_mode()));
    assert!(
        matches!(without, Err(rocketstore::Error::InvalidConfig { .. })),
        "{without:?}"
    );
    struct Other;
    impl rocketstore::TagCode for Other {
        fn tag_code(&self, _: &format::RecordView<'_>) -> Option<i64> {
            None
        }
        fn name(&self) -> &str {
            "other"
        }
    }
    let other = config(dir.path(), sync_mode()).tag_code(std::sync::Arc::new(Other));
    assert!(matches!(
        MessageStore::open(other),
        Err(rocketstore::Error::InvalidConfig { .. })
    ));
    // A recorded name that is not text is a damaged file, refused as one.
    let recorded = rocketstore::layout::tag_code_file(dir.path());
    let name = std::fs::read(&recorded).unwrap();
    std::fs::write(&recorded, b"\xffdelay\n").unwrap();
    let damaged = MessageStore::open(cfg());
    assert!(
        matches!(damaged, Err(rocketstore::Error::BadStoreFile { .. })),
        "{damaged:?}"
    );
    std::fs::write(&recorded, name).unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    store.shutdown().unwrap();
    assert_eq!(entry_tag("SCHEDULE_TOPIC_XXXX", 0), 1_767_225_600_000);
}

/// A queue read at first use after retention moved the log's start: a pull from its old
/// start is told where the first stored message is, and finds it there.
#[test]
fn a_queue_read_at_first_use_after_retention_starts_at_its_first_stored_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        config(dir.path(), sync_mode())
            .lazy_queue_load_threshold(0)
            .file_reserved_time(Duration::ZERO)
    };
    {
        let store = MessageStore::open(cfg()).unwrap();
        put_all(&store, "W", 1, 600);
        store.put_message(&message("Other", 0, "o", 0)).unwrap();
    }
    // Reopened: the queue is read at its first use; retention deletes old log files first.
    let store = MessageStore::open(cfg()).unwrap();
    assert!(store.delete_expired_files().unwrap() > 0);
    let start = store.min_physical_offset();
    let got = store.get_message("W", 0, 0, 8).unwrap();
    assert_eq!(got.status, GetStatus::OffsetTooSmall, "{got:?}");
    assert!(got.next_offset > 0);
    let g = store.get_message("W", 0, got.next_offset, 8).unwrap();
    assert_eq!(g.status, GetStatus::Found);
    assert!(g.messages[0].physical_offset >= start);
    assert_eq!(g.messages[0].queue_offset, got.next_offset);
}

/// Retention removed a queue's first files in one run; the next, reading queues at first
/// use, loads it starting past entry 0, as retention left it: not damage (the log's start
/// moved too), its minimum where its first stored entry is, and the store closed clean.
#[test]
fn a_queue_trimmed_by_retention_loads_at_first_use_without_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        config(dir.path(), sync_mode())
            .lazy_queue_load_threshold(0)
            .consume_queue_entries_per_file(100)
            .file_reserved_time(Duration::ZERO)
    };
    let min = {
        let store = MessageStore::open(cfg()).unwrap();
        put_all(&store, "W", 1, 600);
        store.put_message(&message("Other", 0, "o", 0)).unwrap();
        settled(&store);
        assert!(store.delete_expired_files().unwrap() > 0);
        let min = store.min_offset_in_queue("W", 0);
        assert!(min >= 100, "the queue's first file went: {min}");
        assert!(
            !layout::queue_dir(dir.path(), "W", 0)
                .join(layout::file_name(0))
                .exists()
        );
        store.shutdown().unwrap();
        min
    };
    let store = MessageStore::open(cfg()).unwrap();
    let got = store.get_message("W", 0, min, 8).unwrap();
    assert_eq!(got.status, GetStatus::Found, "{got:?}");
    assert_eq!(store.min_offset_in_queue("W", 0), min);
    store.shutdown().expect("closed clean: nothing to rebuild");
}

/// An entry damaged after the open, met by the time search or by `locate`: an error, not
/// a probe taken for "not older" that turns the search's answer into a wrong offset.
#[test]
fn offset_by_time_over_a_damaged_entry_is_an_error_not_a_wrong_offset() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    let puts: Vec<_> = (0..10)
        .map(|i| {
            store
                .put_message_stamped(&message("Time", 0, "t", i), 1_000_000 + i as i64 * 1000)
                .unwrap()
        })
        .collect();
    assert!(store.wait_dispatched_to(store.max_physical_offset(), Duration::from_secs(30)));
    assert_eq!(
        store
            .offset_by_time("Time", 0, puts[8].store_timestamp)
            .unwrap(),
        8
    );
    // Entry 5, the search's first probe, zeroed.
    std::fs::OpenOptions::new()
        .write(true)
        .open(layout::queue_dir(dir.path(), "Time", 0).join(layout::file_name(0)))
        .unwrap()
        .write_all_at(&[0u8; 20], 5 * 20)
        .unwrap();
    let got = store.offset_by_time("Time", 0, puts[8].store_timestamp);
    assert!(got.is_err(), "{got:?}");
    assert!(store.message_store_time("Time", 0, 5).is_err());
    assert_eq!(
        store.message_store_time("Time", 0, 6).unwrap(),
        Some(puts[6].store_timestamp)
    );
}

/// Entries rise with queue offsets, so an entry below the log's start after (or right
/// behind) a live one is damage: never a "removed" message to step over.
#[test]
fn an_entry_damaged_to_point_below_the_log_start_is_an_error_not_a_skip() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store =
        MessageStore::open(config(dir.path(), sync_mode()).file_reserved_time(Duration::ZERO))
            .unwrap();
    let puts = put_all(&store, "W", 1, 1500);
    assert!(store.delete_expired_files().unwrap() > 0);
    let start = store.min_physical_offset();
    let k = 1490u64;
    assert!(puts[k as usize - 2].2.physical_offset >= start);
    // Entry k points at offset 0, long deleted; its size and tag stay.
    std::fs::OpenOptions::new()
        .write(true)
        .open(layout::queue_dir(dir.path(), "W", 0).join(layout::file_name(0)))
        .unwrap()
        .write_all_at(&[0u8; 8], k * 20)
        .unwrap();
    let got = store.get_message("W", 0, k - 2, 8).unwrap();
    let offsets: Vec<_> = got.messages.iter().map(|m| m.queue_offset).collect();
    assert_eq!(offsets, [k - 2, k - 1], "served past the damaged entry");
    assert_eq!(got.next_offset, k);
    // From the damaged entry itself (its predecessor is live): an error, every time.
    for _ in 0..2 {
        let err = store.get_message("W", 0, k, 8).unwrap_err();
        assert!(matches!(err, rocketstore::Error::Corrupted { .. }), "{err}");
    }
    // The messages after it are still served.
    let got = store.get_message("W", 0, k + 1, 8).unwrap();
    assert_eq!(got.messages[0].queue_offset, k + 1);
}

/// Time searches and point lookups read the record an entry names with the checks `get`
/// makes: a record zeroed in the log, or one of another queue, is `Corrupted`, never
/// "not stored" nor a wrong offset.
#[test]
fn time_lookups_over_a_damaged_or_foreign_record_are_errors() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    let puts: Vec<_> = (0..100)
        .map(|i| {
            let ts = 1_000_000 + i as i64 * 1000;
            let other = store
                .put_message_stamped(&message("Other", 0, "o", i), ts)
                .unwrap();
            let mine = store
                .put_message_stamped(&message("Time", 0, "t", i), ts)
                .unwrap();
            (mine, other)
        })
        .collect();
    assert!(store.wait_dispatched_to(store.max_physical_offset(), Duration::from_secs(30)));
    let at = |i: usize| puts[i].0.store_timestamp;
    assert_eq!(store.offset_by_time("Time", 0, at(80)).unwrap(), 80);
    let log = layout::commit_log_file(dir.path(), 0);
    let log = std::fs::OpenOptions::new().write(true).open(log).unwrap();
    // Record 50 (the search's first probe) zeroed where it starts.
    log.write_all_at(&[0u8; 8], puts[50].0.physical_offset)
        .unwrap();
    fn corrupted<T>(r: rocketstore::Result<T>) -> bool {
        matches!(r, Err(rocketstore::Error::Corrupted { .. }))
    }
    assert!(corrupted(store.offset_by_time("Time", 0, at(80))));
    assert!(corrupted(store.message_store_time("Time", 0, 50)));
    assert!(corrupted(store.commit_log_offset_in_queue("Time", 0, 50)));
    // Entry 60 pointed at the other queue's record 60 (same size, same time).
    let entry = layout::queue_dir(dir.path(), "Time", 0).join(layout::file_name(0));
    std::fs::OpenOptions::new()
        .write(true)
        .open(entry)
        .unwrap()
        .write_all_at(&puts[60].1.physical_offset.to_be_bytes(), 60 * 20)
        .unwrap();
    assert!(corrupted(store.message_store_time("Time", 0, 60)));
    assert!(corrupted(store.commit_log_offset_in_queue("Time", 0, 60)));
    // The intact ones still answer.
    assert_eq!(
        store.commit_log_offset_in_queue("Time", 0, 70).unwrap(),
        Some(puts[70].0.physical_offset)
    );
}

/// A damaged entry pointing at a copy of a record carried inside another message's body:
/// the copy names the offset it was copied from, not where it lies, so neither `get`
/// nor `get_raw` serves it.
#[test]
fn a_record_copied_inside_a_body_is_served_by_neither_get_nor_get_raw() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    store.put_message(&message("T", 0, "t", 0)).unwrap();
    assert!(store.wait_dispatched_to(store.max_physical_offset(), Duration::from_secs(30)));
    let raw = store.get_raw(&GetRequest::new("T", 0, 0)).unwrap().records[0].clone();
    let carrier = store
        .put_message(&Message::new("Carrier", 0u32, raw.clone()))
        .unwrap();
    let bytes = std::fs::read(layout::commit_log_file(dir.path(), 0)).unwrap();
    let from = carrier.physical_offset as usize;
    let inner = from
        + bytes[from..]
            .windows(raw.len())
            .position(|w| w == &raw[..])
            .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(layout::queue_dir(dir.path(), "T", 0).join(layout::file_name(0)))
        .unwrap()
        .write_all_at(&(inner as u64).to_be_bytes(), 0)
        .unwrap();
    let corrupted = |e: &rocketstore::Error| matches!(e, rocketstore::Error::Corrupted { .. });
    assert!(corrupted(&store.get_message("T", 0, 0, 1).unwrap_err()));
    let raw_got = store.get_raw(&GetRequest::new("T", 0, 0));
    assert!(raw_got.as_ref().is_err_and(corrupted), "{raw_got:?}");
}
