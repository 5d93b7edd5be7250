//! The recovery rule: only a torn tail (invalid records past the last point known durable)
//! may be cut. Damage below that point refuses the open and deletes nothing; rebuilding
//! consume queues never changes the commit log; a missing, short or holed queue is rebuilt
//! from the log, never restarted at 0.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rocketstore::layout;
use rocketstore::{CheckpointTimes, Error, GetStatus, Message, MessageStore, PutResult};

fn kib_body(topic: &str, i: u64) -> Bytes {
    let mut v = format!("{topic}-{i}-").into_bytes();
    v.resize(1024, b'a' + (i % 26) as u8);
    Bytes::from(v)
}

/// 300 puts of 1 KiB over two topics, clean shutdown.
fn two_topic_store(dir: &Path) -> Vec<(String, PutResult)> {
    let store = open(dir, sync_mode());
    let puts = (0..300u64)
        .map(|i| {
            let topic = if i % 2 == 0 { "TopicA" } else { "TopicB" };
            let r = store
                .put_message(&Message::new(topic, 0u32, kib_body(topic, i)))
                .unwrap();
            (topic.to_owned(), r)
        })
        .collect();
    store.shutdown().unwrap();
    puts
}

fn log_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(layout::commit_log_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v.into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Flips one byte in the body of the record at `offset` (inside file 0).
fn flip_body_byte(dir: &Path, offset: u64, body: &[u8]) {
    let path = layout::commit_log_file(dir, 0);
    let bytes = fs::read(&path).unwrap();
    let from = offset as usize;
    let pos = from
        + bytes[from..]
            .windows(body.len())
            .position(|w| w == body)
            .expect("body in the record");
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[bytes[pos + 100] ^ 0x40], (pos + 100) as u64)
        .unwrap();
}

#[test]
fn a_damaged_record_with_lost_queues_refuses_the_open_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let puts = two_topic_store(dir.path());
    flip_body_byte(dir.path(), 0, &kib_body("TopicA", 0));
    fs::remove_dir_all(layout::consume_queue_dir(dir.path())).unwrap();
    let before = log_files(dir.path());
    assert!(before.len() >= 5);

    for round in 0..2 {
        let err = MessageStore::open(config(dir.path(), sync_mode())).unwrap_err();
        match &err {
            Error::Corrupted { offset, reason } => {
                assert_eq!(*offset, 0, "round {round}: {err}");
                assert!(reason.contains("00000000000000000000"), "{err}");
            }
            other => panic!("round {round}: expected Corrupted, got {other}"),
        }
        // The commit log is untouched, file for file, byte for byte.
        assert!(
            log_files(dir.path()) == before,
            "round {round}: log changed"
        );
    }

    // The operator's override cuts the log at the damage, knowingly.
    let store =
        MessageStore::open(config(dir.path(), sync_mode()).truncate_damaged_log(true)).unwrap();
    assert_eq!(store.max_physical_offset(), 0);
    assert_eq!(store.max_offset_in_queue("TopicA", 0), 0);
    drop(puts);
}

#[test]
fn damage_below_the_checkpoint_after_a_crash_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let puts = two_topic_store(dir.path());
    // A record of the file the crash recovery scans (the one holding the checkpoint's
    // offsets), well below what the checkpoint vouches for.
    let last_file = puts.last().unwrap().1.physical_offset / SMALL_FILE * SMALL_FILE;
    assert!(last_file > 0);
    let (topic, victim) = puts
        .iter()
        .find(|(_, p)| p.physical_offset >= last_file + 4096)
        .unwrap()
        .clone();
    let path = layout::commit_log_file(dir.path(), last_file);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let at = victim.physical_offset - last_file + u64::from(victim.wrote_bytes) - 200;
    file.write_all_at(&[0xEE], at).unwrap();
    drop(file);
    crash_refuses_at(dir.path(), victim.physical_offset);
    let _ = topic;
}

/// After a crash, the open refuses with `Corrupted` at `offset` and changes no log file.
fn crash_refuses_at(dir: &Path, offset: u64) {
    let before = log_files(dir);
    fs::write(layout::abort_file(dir), b"").unwrap();
    let err = MessageStore::open(config(dir, sync_mode())).unwrap_err();
    match &err {
        Error::Corrupted { offset: at, .. } => assert_eq!(*at, offset, "{err}"),
        other => panic!("expected Corrupted, got {other}"),
    }
    assert!(log_files(dir) == before, "log changed");
}

/// A record whose magic code is damaged into the blank record's, below what the
/// checkpoint vouches for: taken for the file's end, it hid every record after it in the
/// file (the scan never checked them, and a crash's re-indexing dropped them). A blank
/// record says how many bytes it fills; one that does not fill the rest of its file is
/// damage.
#[test]
fn a_blank_record_that_does_not_end_its_file_is_damage_not_an_end() {
    let dir = tempfile::tempdir().unwrap();
    let puts = two_topic_store(dir.path());
    let last_file = puts.last().unwrap().1.physical_offset / SMALL_FILE * SMALL_FILE;
    let in_last: Vec<_> = puts
        .iter()
        .filter(|(_, p)| p.physical_offset >= last_file)
        .collect();
    assert!(in_last.len() >= 3);
    let victim = in_last[1].1;
    let path = layout::commit_log_file(dir.path(), last_file);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let at = victim.physical_offset - last_file;
    file.write_all_at(&rocketstore::format::BLANK_MAGIC.to_be_bytes(), at + 4)
        .unwrap();
    drop(file);
    crash_refuses_at(dir.path(), victim.physical_offset);
}

/// A real blank record whose size field alone is damaged (nothing but zeros after it)
/// still ends its file: the recovery scan that meets it takes every record after it.
#[test]
fn a_blank_record_whose_size_alone_is_damaged_still_ends_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let puts = two_topic_store(dir.path());
    let blank_at = puts
        .iter()
        .filter(|(_, p)| p.physical_offset < SMALL_FILE)
        .map(|(_, p)| p.end_offset())
        .max()
        .unwrap();
    assert!(blank_at < SMALL_FILE);
    let path = layout::commit_log_file(dir.path(), 0);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0x7F, 0x7F], blank_at).unwrap();
    drop(file);
    // A crash whose queues vouch for nothing: the scan reads the first file again.
    let cp_path = layout::checkpoint_file(dir.path());
    let cp = CheckpointTimes::read(&cp_path).unwrap().unwrap();
    CheckpointTimes {
        logics_offset: 0,
        ..cp
    }
    .write(&cp_path)
    .unwrap();
    fs::remove_file(layout::queue_table_file(dir.path())).unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    for topic in ["TopicA", "TopicB"] {
        assert_eq!(store.max_offset_in_queue(topic, 0), 150, "{topic}");
    }
    let last = puts.last().unwrap().1;
    assert_eq!(store.max_physical_offset(), last.end_offset());
}

#[test]
fn a_lost_queue_of_another_topic_is_rebuilt_after_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), sync_mode());
        for i in 0..50 {
            store.put_message(&message("Early", 0, "e", i)).unwrap();
        }
        // Enough of another topic that the last file holds none of `Early`.
        for i in 0..600 {
            store.put_message(&message("Late", 0, "l", i)).unwrap();
        }
        store.shutdown().unwrap();
    }
    fs::remove_dir_all(layout::consume_queue_dir(dir.path()).join("Early")).unwrap();
    let store = open(dir.path(), sync_mode());
    assert_eq!(store.max_offset_in_queue("Early", 0), 50);
    let next = store.put_message(&message("Early", 0, "e", 50)).unwrap();
    assert_eq!(next.queue_offset, 50, "queue restarted instead of rebuilt");
    assert!(store.wait_dispatched(next.physical_offset, Duration::from_secs(30)));
    let got = store.get_message("Early", 0, 0, 100).unwrap();
    assert_eq!(got.messages.len(), 51);
    for (i, m) in got.messages.iter().enumerate() {
        assert_eq!(m.queue_offset, i as u64);
    }
}

#[test]
fn a_lost_or_short_queue_is_rebuilt_after_a_crash() {
    for short in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || config(dir.path(), sync_mode()).consume_queue_entries_per_file(16);
        let early: Vec<_> = {
            let store = MessageStore::open(cfg()).unwrap();
            let mut early = Vec::new();
            for i in 0..600 {
                store.put_message(&message("Late", 0, "l", i)).unwrap();
                if i % 12 == 0 {
                    early.push(store.put_message(&message("Early", 0, "e", i)).unwrap());
                }
            }
            store.shutdown().unwrap();
            early
        };
        let last = early.last().unwrap();
        let last_file = last.physical_offset / SMALL_FILE * SMALL_FILE;
        assert!(early[0].physical_offset < last_file, "Early spans the log");
        let q = layout::queue_dir(dir.path(), "Early", 0);
        if short {
            // Lose the last file of the queue: entries 48 and 49.
            fs::remove_file(q.join(layout::file_name(48 * 20))).unwrap();
        } else {
            fs::remove_dir_all(&q).unwrap();
        }
        // A crash whose checkpoint lets recovery start at the last file: the queue's
        // earlier entries lie before the scan.
        fs::write(layout::abort_file(dir.path()), b"").unwrap();
        let path = layout::checkpoint_file(dir.path());
        let cp = CheckpointTimes::read(&path).unwrap().unwrap();
        CheckpointTimes {
            physic: i64::MAX / 2,
            logics: i64::MAX / 2,
            physic_offset: last_file,
            ..cp
        }
        .write(&path)
        .unwrap();

        let store = MessageStore::open(cfg()).unwrap();
        let ctx = format!("short={short}");
        assert_eq!(store.min_offset_in_queue("Early", 0), 0, "{ctx}");
        assert_eq!(store.max_offset_in_queue("Early", 0), 50, "{ctx}");
        assert_eq!(store.max_offset_in_queue("Late", 0), 600, "{ctx}");
        let mut got = Vec::new();
        let mut offset = 0;
        while offset < 50 {
            let g = store.get_message("Early", 0, offset, 16).unwrap();
            assert_eq!(g.status, GetStatus::Found, "{ctx} at {offset}");
            got.extend(g.messages.iter().map(|m| m.physical_offset));
            offset = g.next_offset;
        }
        let want: Vec<_> = early.iter().map(|p| p.physical_offset).collect();
        assert_eq!(got, want, "{ctx}");
        let next = store.put_message(&message("Early", 0, "e", 50)).unwrap();
        assert_eq!(next.queue_offset, 50, "{ctx}");
    }
}

#[test]
fn a_zeroed_entry_inside_a_queue_is_detected_and_the_queue_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).consume_queue_entries_per_file(4);
    let puts: Vec<_> = {
        let store = MessageStore::open(cfg()).unwrap();
        (0..12)
            .map(|i| store.put_message(&message("Z", 0, "z", i)).unwrap())
            .collect()
    };
    let first = layout::queue_dir(dir.path(), "Z", 0).join(layout::file_name(0));
    let file = OpenOptions::new().write(true).open(&first).unwrap();
    file.write_all_at(&[0u8; 20], 20).unwrap();
    drop(file);

    let store = MessageStore::open(cfg()).unwrap();
    let mut offset = 0;
    let mut seen = Vec::new();
    while offset < 12 {
        let got = store.get_message("Z", 0, offset, 3).unwrap();
        assert_eq!(got.status, GetStatus::Found, "stuck at {offset}");
        assert!(got.next_offset > offset, "stuck at {offset}");
        seen.extend(got.messages.iter().map(|m| m.physical_offset));
        offset = got.next_offset;
    }
    let want: Vec<_> = puts.iter().map(|p| p.physical_offset).collect();
    assert_eq!(seen, want);
}

#[test]
fn the_checkpoint_records_a_durable_offset_and_a_refused_open_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let puts = two_topic_store(dir.path());
    let cp = CheckpointTimes::read(&layout::checkpoint_file(dir.path()))
        .unwrap()
        .unwrap();
    let end = puts.last().unwrap().1.end_offset();
    assert_eq!(cp.physic_offset, end, "{cp:?}");
    assert_eq!(cp.physic, puts.last().unwrap().1.store_timestamp);
}

#[test]
fn a_log_shorter_than_the_checkpoint_vouches_for_is_refused() {
    // The last file deleted, every file deleted, or zeros over the middle of the last one:
    // each would silently drop acknowledged messages if taken for the end of the log.
    for (case, unclean) in [
        ("last file gone", false),
        ("all files gone", false),
        ("zeros in the last file", false),
        ("zeros in the last file", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let puts = two_topic_store(dir.path());
        let last = &puts.last().unwrap().1;
        let last_file = last.physical_offset / SMALL_FILE * SMALL_FILE;
        let log = layout::commit_log_dir(dir.path());
        match case {
            "last file gone" => {
                // The last written file and the one prepared after it.
                for e in fs::read_dir(&log).unwrap() {
                    let p = e.unwrap().path();
                    let start: u64 = p.file_name().unwrap().to_str().unwrap().parse().unwrap();
                    if start >= last_file {
                        fs::remove_file(p).unwrap();
                    }
                }
            }
            "all files gone" => {
                for e in fs::read_dir(&log).unwrap() {
                    fs::remove_file(e.unwrap().path()).unwrap();
                }
            }
            _ => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(log.join(layout::file_name(last_file)))
                    .unwrap();
                let len = (last.end_offset() - last_file) as usize;
                f.write_all_at(&vec![0u8; len], 0).unwrap();
            }
        }
        if unclean {
            fs::write(layout::abort_file(dir.path()), b"").unwrap();
        }
        let before = log_files(dir.path());
        let err = MessageStore::open(config(dir.path(), sync_mode())).unwrap_err();
        assert!(matches!(err, Error::Corrupted { .. }), "{case}: {err}");
        assert!(log_files(dir.path()) == before, "{case}: log changed");
    }
}

/// Fails, while armed, the creation of a queue's first consume-queue file, or the sync of
/// any; signals each failure.
struct QueueFaults {
    fail_create: std::sync::atomic::AtomicBool,
    fail_sync: std::sync::atomic::AtomicBool,
    failed: (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
}

impl QueueFaults {
    fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(QueueFaults {
            fail_create: Default::default(),
            fail_sync: Default::default(),
            failed: crossbeam_channel::unbounded(),
        })
    }

    fn signal(&self) -> std::io::Result<()> {
        let _ = self.failed.0.send(());
        Err(std::io::Error::other("injected queue-file failure"))
    }
}

impl rocketstore::IoHook for QueueFaults {
    fn before_create(&self, path: &Path) -> std::io::Result<()> {
        if self.fail_create.load(std::sync::atomic::Ordering::SeqCst)
            && path.to_string_lossy().contains(layout::CONSUME_QUEUE_DIR)
            && path.ends_with(layout::file_name(0))
        {
            return self.signal();
        }
        Ok(())
    }
    fn before_sync(&self, path: &Path) -> std::io::Result<()> {
        if self.fail_sync.load(std::sync::atomic::Ordering::SeqCst)
            && path.to_string_lossy().contains(layout::CONSUME_QUEUE_DIR)
        {
            return self.signal();
        }
        Ok(())
    }
}

#[test]
fn a_rebuild_that_fails_halfway_is_done_again_by_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).consume_queue_entries_per_file(16);
    let puts: Vec<_> = {
        let store = MessageStore::open(cfg()).unwrap();
        let mut puts = Vec::new();
        for i in 0..300 {
            if i == 200 {
                // Not synchronisation: store times more than recovery's 3 s slack apart,
                // so that a recovery from the checkpoint starts past the first files.
                std::thread::sleep(Duration::from_millis(3500));
            }
            let msg = Message::new("A", 0u32, kib_body("A", i));
            puts.push(store.put_message(&msg).unwrap());
        }
        puts
    };
    assert!(puts[199].physical_offset / SMALL_FILE > 1);
    // A hole in the queue forces a rebuild; the rebuild fails once it has emptied the queues.
    let first = layout::queue_dir(dir.path(), "A", 0).join(layout::file_name(0));
    OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .write_all_at(&[0u8; 20], 20)
        .unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let hook = QueueFaults::new();
    hook.fail_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(MessageStore::open(cfg().io_hook(hook.clone())).is_err());
    assert!(hook.failed.1.try_recv().is_ok(), "the rebuild did not run");

    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.min_offset_in_queue("A", 0), 0);
    assert_eq!(store.max_offset_in_queue("A", 0), 300);
    let got = store.get_message("A", 0, 0, 16).unwrap();
    assert_eq!(got.status, GetStatus::Found);
    assert_eq!(got.messages[0].physical_offset, puts[0].physical_offset);
}

/// Fails the creation of the first consume-queue file of one topic's queues.
struct FailTopicCreate(&'static str, crossbeam_channel::Sender<()>);

impl rocketstore::IoHook for FailTopicCreate {
    fn before_create(&self, path: &Path) -> std::io::Result<()> {
        let queue = path.parent().and_then(Path::parent);
        if queue.is_some_and(|t| t.ends_with(self.0)) && path.ends_with(layout::file_name(0)) {
            let _ = self.1.send(());
            return Err(std::io::Error::other("injected queue-file failure"));
        }
        Ok(())
    }
}

/// The gap a clean open's failed rebuild used to leave: nothing else tells the next clean
/// open that the queues were emptied when there is no queue table (a store written by
/// RocketMQ or 0.1) and the last file holds no indexed record to check. The rebuild
/// fails in its second file, after the first was done.
#[test]
fn a_clean_open_whose_rebuild_fails_leaves_the_rebuild_to_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let (t, u) = {
        let store = open(dir.path(), sync_mode());
        let put = |topic: &str, i: u64| {
            let msg = Message::new(topic, 0u32, kib_body(topic, i));
            store.put_message(&msg).unwrap()
        };
        let t: Vec<_> = (0..40).map(|i| put("T", i)).collect();
        // U's records all lie in the second file.
        while store.max_physical_offset() < SMALL_FILE {
            put("Pad", 0);
        }
        let u: Vec<_> = (0..20).map(|i| put("U", i)).collect();
        // Then only transaction halves (never indexed), until the last file holds nothing
        // but them.
        let mut i = 0;
        while store.max_physical_offset() < 2 * SMALL_FILE + 4096 {
            let mut half = Message::new("T", 0u32, kib_body("half", i));
            half.sys_flag = rocketstore::TRANSACTION_PREPARED;
            store.put_message(&half).unwrap();
            i += 1;
        }
        store.shutdown().unwrap();
        (t, u)
    };
    assert!(u[0].physical_offset >= SMALL_FILE && u[19].end_offset() < 2 * SMALL_FILE);
    fs::remove_file(layout::queue_table_file(dir.path())).unwrap();
    // T's last entry points at its first record: a rebuild is due; it fails once it has
    // emptied the queues and rebuilt those of the first file.
    patch_entry(
        dir.path(),
        "T",
        0,
        39,
        t[0].physical_offset,
        t[0].wrote_bytes,
    );
    let (tx, failed) = crossbeam_channel::unbounded();
    let cfg = || config(dir.path(), sync_mode());
    let hook = std::sync::Arc::new(FailTopicCreate("U", tx));
    assert!(MessageStore::open(cfg().io_hook(hook)).is_err());
    assert!(failed.try_recv().is_ok(), "the rebuild did not reach U");

    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.max_offset_in_queue("U", 0), 20, "U was left empty");
    assert!(store.stats().open.rebuilt_queues);
    for (topic, puts) in [("T", &t), ("U", &u)] {
        let got = store.get_message(topic, 0, 0, 64).unwrap();
        let offsets: Vec<_> = got.messages.iter().map(|m| m.physical_offset).collect();
        let want: Vec<_> = puts.iter().map(|p| p.physical_offset).collect();
        assert_eq!(offsets, want, "{topic}");
    }
}

#[test]
fn after_a_failed_queue_sync_the_durable_offset_still_follows_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let hook = QueueFaults::new();
    hook.fail_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let store = MessageStore::open(
        config(dir.path(), sync_mode())
            .consume_queue_flush_interval(Duration::from_millis(5))
            .io_hook(hook.clone()),
    )
    .unwrap();
    let puts: Vec<_> = (0..300)
        .map(|i| store.put_message(&message("A", 0, "a", i)).unwrap())
        .collect();
    hook.failed.1.recv().unwrap();
    assert!(store.shutdown().is_err(), "the queues were not durable");
    let cp = CheckpointTimes::read(&layout::checkpoint_file(dir.path()))
        .unwrap()
        .unwrap();
    // The queues' time is frozen, the log's durable offset is not: damage in records
    // acknowledged after the failure is refused, never cut as a torn tail.
    assert_eq!(cp.logics, 0, "{cp:?}");
    assert_eq!(
        cp.physic_offset,
        puts.last().unwrap().end_offset(),
        "{cp:?}"
    );
}

#[test]
fn a_rebuild_after_retention_and_lost_queue_entries_never_cuts_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let hook = QueueFaults::new();
    let cfg = || {
        config(dir.path(), sync_mode())
            .consume_queue_entries_per_file(64)
            .consume_queue_flush_interval(Duration::from_millis(5))
            .file_reserved_time(Duration::ZERO)
    };
    let store = MessageStore::open(cfg().io_hook(hook.clone())).unwrap();
    let put = |i: u64| {
        store
            .put_message(&Message::new("A", 0u32, kib_body("A", i)))
            .unwrap()
    };
    let mut puts: Vec<_> = (0..270).map(put).collect();
    // Wait until a checkpoint covers the first 270 entries.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while CheckpointTimes::read(&layout::checkpoint_file(dir.path()))
        .unwrap()
        .unwrap_or_default()
        .logics
        < puts.last().unwrap().store_timestamp
    {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        std::thread::yield_now();
    }
    hook.fail_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    puts.extend((270..300).map(put));
    hook.failed.1.recv().unwrap(); // a queue sync failed: those entries may be lost
    settled(&store); // retention deletes only what the queues and the index have seen
    assert!(store.delete_expired_files().unwrap() > 0);
    // The log now starts after entry 270: the lost entries lie below its start.
    assert!(store.min_physical_offset() > puts[270].physical_offset);
    assert!(store.shutdown().is_err());
    drop(store);
    // A power cut loses the entries written since the last good queue sync.
    for e in fs::read_dir(layout::queue_dir(dir.path(), "A", 0)).unwrap() {
        let p = e.unwrap().path();
        let first = p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            / 20;
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        for q in first.max(270)..first + 64 {
            f.write_all_at(&[0u8; 20], (q - first) * 20).unwrap();
        }
    }
    let store = MessageStore::open(cfg()).unwrap();
    let end = puts.last().unwrap().end_offset();
    assert_eq!(
        store.max_physical_offset(),
        end,
        "acknowledged records were cut"
    );
    assert_eq!(store.max_offset_in_queue("A", 0), 300);
    let min = store.min_offset_in_queue("A", 0);
    let got = store.get_message("A", 0, min, 1).unwrap();
    assert_eq!(
        got.messages[0].physical_offset,
        puts[min as usize].physical_offset
    );
}

#[test]
fn a_queue_whose_records_all_expired_survives_a_rebuild_and_keeps_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || retention_config(dir.path());
    {
        let store = store_with_an_expired_queue(dir.path(), 300);
        assert_eq!(store.min_offset_in_queue("Old", 0), 5, "Old wholly expired");
    }
    // Damage to another queue's entries forces a full rebuild.
    let q = layout::queue_dir(dir.path(), "New", 0);
    let mut files: Vec<_> = fs::read_dir(&q)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    OpenOptions::new()
        .write(true)
        .open(files.last().unwrap())
        .unwrap()
        .write_all_at(&[0u8; 20], 2 * 20)
        .unwrap();
    for round in 0..2 {
        // Twice: the second open must not need the rebuild again.
        let store = MessageStore::open(cfg()).unwrap();
        assert_eq!(store.max_offset_in_queue("New", 0), 300, "round {round}");
        assert_eq!(store.max_offset_in_queue("Old", 0), 5, "round {round}");
    }
    let store = MessageStore::open(cfg()).unwrap();
    let next = store
        .put_message(&Message::new("Old", 0u32, kib_body("Old", 5)))
        .unwrap();
    assert_eq!(
        next.queue_offset, 5,
        "an expired queue restarted its offsets"
    );
}

#[test]
fn a_missing_consume_queue_file_is_rebuilt_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).consume_queue_entries_per_file(16);
    let puts: Vec<_> = {
        let store = MessageStore::open(cfg()).unwrap();
        (0..60)
            .map(|i| store.put_message(&message("Q", 0, "q", i)).unwrap())
            .collect()
    };
    let gap = layout::queue_dir(dir.path(), "Q", 0).join(layout::file_name(16 * 20));
    fs::remove_file(gap).unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.max_offset_in_queue("Q", 0), 60);
    let got = store.get_message("Q", 0, 16, 1).unwrap();
    assert_eq!(got.messages[0].physical_offset, puts[16].physical_offset);
}

#[test]
fn a_crash_after_retention_reopens_without_a_needless_rebuild_or_refusal() {
    const FILE: u64 = SMALL_FILE;
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        config(dir.path(), sync_mode())
            .consume_queue_entries_per_file(64)
            .file_reserved_time(Duration::from_secs(3600))
    };
    let put = |s: &MessageStore, topic: &str, i: u64| {
        s.put_message(&Message::new(topic, 0u32, kib_body(topic, i)))
            .unwrap()
    };
    let fill_to_next_file = |s: &MessageStore| {
        let start = s.max_physical_offset() / FILE;
        let mut i = 0;
        while s.max_physical_offset() / FILE == start
            || s.max_physical_offset().is_multiple_of(FILE)
        {
            put(s, "New", i);
            i += 1;
        }
    };
    {
        let store = MessageStore::open(cfg()).unwrap();
        for i in 0..5 {
            put(&store, "Old", i);
        }
        // Q's first 64 entries (one consume-queue file) lie in files that will expire.
        for i in 0..64 {
            put(&store, "Q", i);
        }
        fill_to_next_file(&store);
        let kept_from = store.max_physical_offset() / FILE * FILE;
        fill_to_next_file(&store);
        // Not synchronisation: store times more than recovery's 3 s slack apart, so that
        // recovery from the checkpoint starts past Q's first file.
        std::thread::sleep(Duration::from_millis(3500));
        let q64 = put(&store, "Q", 64);
        assert!(store.wait_dispatched(q64.physical_offset, Duration::from_secs(30)));
        let hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        for e in fs::read_dir(layout::commit_log_dir(dir.path())).unwrap() {
            let p = e.unwrap().path();
            let start: u64 = p.file_name().unwrap().to_str().unwrap().parse().unwrap();
            if start < kept_from {
                let f = fs::File::options().write(true).open(&p).unwrap();
                f.set_modified(hours_ago).unwrap();
            }
        }
        assert!(store.delete_expired_files().unwrap() > 0);
        assert_eq!(store.min_physical_offset(), kept_from);
        assert_eq!(store.min_offset_in_queue("Q", 0), 64);
    }
    fs::write(layout::abort_file(dir.path()), b"").unwrap(); // as after a crash
    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.max_offset_in_queue("Q", 0), 65);
    assert_eq!(store.min_offset_in_queue("Q", 0), 64);
    assert_eq!(store.max_offset_in_queue("Old", 0), 5);
}

/// Run 1 leaves a queue table saying T/0 holds 5; run 2 puts T/0 5..10, retention deletes
/// every file holding T/0 0..10, T/0 10..13 follow, and the run crashes: its table is the
/// one of its open (run 1's). Returns the config to reopen with.
fn store_with_a_stale_table_row(dir: &Path) -> rocketstore::StoreConfig {
    let cfg = || {
        config(dir, sync_mode())
            .consume_queue_entries_per_file(64)
            .file_reserved_time(Duration::ZERO)
    };
    let put = |s: &MessageStore, t: &str, i: u64| {
        s.put_message(&Message::new(t, 0u32, kib_body(t, i)))
            .unwrap()
    };
    {
        let store = MessageStore::open(cfg()).unwrap();
        for i in 0..5 {
            put(&store, "T", i);
        }
    }
    let table = fs::read(layout::queue_table_file(dir)).unwrap();
    {
        let store = MessageStore::open(cfg()).unwrap();
        for i in 5..10 {
            put(&store, "T", i);
        }
        for i in 0..150 {
            put(&store, "F", i);
        }
        settled(&store);
        assert!(store.delete_expired_files().unwrap() > 0);
        assert_eq!(store.min_offset_in_queue("T", 0), 10, "T 0..10 all expired");
        for i in 10..13 {
            put(&store, "T", i);
        }
    }
    fs::write(layout::queue_table_file(dir), &table).unwrap();
    fs::write(layout::abort_file(dir), b"").unwrap();
    cfg()
}

#[test]
fn a_stale_table_row_never_positions_a_queue_that_has_records_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_with_a_stale_table_row(dir.path());
    // Damage to the queue's own files forces its rebuild.
    fs::write(layout::queue_dir(dir.path(), "T", 0).join("junk"), b"x").unwrap();
    let store = MessageStore::open(cfg).unwrap();
    assert_eq!(store.max_offset_in_queue("T", 0), 13);
    assert_eq!(store.min_offset_in_queue("T", 0), 10);
    let got = store.get_message("T", 0, 10, 3).unwrap();
    assert_eq!(got.messages.len(), 3);
}

/// After a crash, an expired queue (every entry points below the log's start) keeps its
/// files: its next offset must not live only in the queue table, which a crash before
/// the open rewrote it, or `truncate_log` (which removes it), or a full disk, leaves
/// stale or absent; the queue would restart lower and give its offsets again.
#[test]
fn an_expired_queue_keeps_its_files_through_a_crash_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || retention_config(dir.path());
    drop(store_with_an_expired_queue(dir.path(), 300));
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    {
        let store = MessageStore::open(cfg()).unwrap();
        assert_eq!(store.max_offset_in_queue("Old", 0), 5);
    }
    // The state a crash of that open leaves before it wrote the queue table.
    fs::remove_file(layout::queue_table_file(dir.path())).unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.max_offset_in_queue("Old", 0), 5);
    let next = store
        .put_message(&Message::new("Old", 0u32, kib_body("Old", 5)))
        .unwrap();
    assert_eq!(
        next.queue_offset, 5,
        "an expired queue restarted its offsets"
    );
}

#[test]
fn an_expired_queue_with_a_damaged_tail_keeps_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || retention_config(dir.path());
    drop(store_with_an_expired_queue(dir.path(), 150));
    // Old's last entry zeroed: derived data, of messages already deleted.
    let q = layout::queue_dir(dir.path(), "Old", 0).join(layout::file_name(0));
    OpenOptions::new()
        .write(true)
        .open(q)
        .unwrap()
        .write_all_at(&[0u8; 20], 4 * 20)
        .unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.max_offset_in_queue("New", 0), 150);
    let next = store
        .put_message(&Message::new("Old", 0u32, kib_body("Old", 5)))
        .unwrap();
    assert_eq!(next.queue_offset, 5);
}

#[test]
fn a_queue_table_that_does_not_parse_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), sync_mode());
        store.put_message(&message("T", 0, "t", 0)).unwrap();
    }
    fs::write(
        layout::queue_table_file(dir.path()),
        "rocketstore-queue-table-v1 1\nT 0 1\n",
    )
    .unwrap();
    let store = open(dir.path(), sync_mode());
    assert_eq!(store.max_offset_in_queue("T", 0), 1);
}

#[test]
fn a_damaged_entry_that_makes_a_live_queue_look_expired_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || retention_config(dir.path());
    let (last, log_start) = {
        let store = MessageStore::open(cfg()).unwrap();
        let mut last = None;
        for i in 0..200 {
            last = Some(
                store
                    .put_message(&Message::new("A", 0u32, kib_body("A", i)))
                    .unwrap(),
            );
        }
        let last = last.unwrap();
        settled(&store);
        assert!(store.delete_expired_files().unwrap() > 0);
        (last, store.min_physical_offset())
    };
    // One byte of the last entry: its record now seems to lie below the log's start.
    let mut files: Vec<_> = fs::read_dir(layout::queue_dir(dir.path(), "A", 0))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let path = files.last().unwrap();
    let bytes = fs::read(path).unwrap();
    let n = bytes
        .chunks_exact(20)
        .take_while(|c| c[8..12] != [0, 0, 0, 0])
        .count();
    let pos = (n - 1) * 20;
    let stored = u64::from_be_bytes(bytes[pos..pos + 8].try_into().unwrap());
    assert_eq!(stored, last.physical_offset);
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(&[0], (pos + 5) as u64)
        .unwrap();
    assert!(stored & !0xff_0000 < log_start);
    // A rebuild is needed: the table says A ends at 200, and the damaged entry differs.
    fs::remove_file(layout::queue_table_file(dir.path())).unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.max_offset_in_queue("A", 0), 200);
    let got = store.get_message("A", 0, 199, 1).unwrap();
    assert_eq!(got.messages[0].physical_offset, last.physical_offset);
    assert_eq!(store.max_physical_offset(), last.end_offset());
}

/// Overwrites fields of the consume-queue entry `queue_offset` of `topic`/`queue_id`.
fn patch_entry(
    dir: &Path,
    topic: &str,
    queue_id: u32,
    queue_offset: u64,
    physical: u64,
    size: u32,
) {
    let byte = queue_offset * 20;
    let file = layout::queue_dir(dir, topic, queue_id).join(layout::file_name(0));
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&physical.to_be_bytes());
    b[8..].copy_from_slice(&size.to_be_bytes());
    OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .write_all_at(&b, byte)
        .unwrap();
}

/// Five messages each in T/0 and T/1, then T/0's last entry pointed at T/1's last record
/// (entries still rise, lengths agree). Returns the puts of each queue.
fn last_entry_pointing_at_another_queue(
    dir: &Path,
    cfg: rocketstore::StoreConfig,
) -> (Vec<PutResult>, Vec<PutResult>) {
    let (a, b): (Vec<_>, Vec<_>) = {
        let store = MessageStore::open(cfg).unwrap();
        (0..5)
            .map(|i| {
                (
                    store.put_message(&message("T", 0, "a", i)).unwrap(),
                    store.put_message(&message("T", 1, "b", i)).unwrap(),
                )
            })
            .unzip()
    };
    patch_entry(dir, "T", 0, 4, b[4].physical_offset, b[4].wrote_bytes);
    (a, b)
}

#[test]
fn a_queue_whose_last_entry_points_at_another_record_is_rebuilt() {
    for crashed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) =
            last_entry_pointing_at_another_queue(dir.path(), config(dir.path(), sync_mode()));
        if crashed {
            fs::write(layout::abort_file(dir.path()), b"").unwrap();
        }
        let store = open(dir.path(), sync_mode());
        let got = store.get_message("T", 0, 4, 1).unwrap();
        assert_eq!(
            got.messages[0].physical_offset, a[4].physical_offset,
            "crashed={crashed}: a reader of T/0 got another queue's message"
        );
    }
}

#[test]
fn a_live_queue_whose_last_entry_looks_expired_is_checked_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || retention_config(dir.path());
    let puts: Vec<_> = {
        let store = MessageStore::open(cfg()).unwrap();
        for i in 0..150 {
            store
                .put_message(&Message::new("F", 0u32, kib_body("F", i)))
                .unwrap();
        }
        settled(&store);
        assert!(store.delete_expired_files().unwrap() > 0);
        let puts = (0..10)
            .map(|i| store.put_message(&message("T", 0, "t", i)).unwrap())
            .collect();
        // The log's last record belongs to another queue.
        store.put_message(&message("G", 0, "g", 0)).unwrap();
        puts
    };
    // T/0's last entry now points below the log's start, as an expired queue's would.
    patch_entry(dir.path(), "T", 0, 9, 0, puts[9].wrote_bytes);
    let store = MessageStore::open(cfg()).unwrap();
    let got = store.get_message("T", 0, 0, 10).unwrap();
    assert_eq!(got.messages.len(), 10);
    assert_eq!(got.messages[9].physical_offset, puts[9].physical_offset);
}

/// Sizes consume-queue files at 64 entries and expires commit-log files at once.
fn retention_config(dir: &Path) -> rocketstore::StoreConfig {
    config(dir, sync_mode())
        .consume_queue_entries_per_file(64)
        .file_reserved_time(Duration::ZERO)
}

/// Queue Old/0 gets 5 messages, New/0 `new` more; retention then deletes every file but
/// the last, so every record of Old/0 is gone from the log.
fn store_with_an_expired_queue(dir: &Path, new: u64) -> MessageStore {
    let store = MessageStore::open(retention_config(dir)).unwrap();
    for i in 0..5 {
        store
            .put_message(&Message::new("Old", 0u32, kib_body("Old", i)))
            .unwrap();
    }
    for i in 0..new {
        store
            .put_message(&Message::new("New", 0u32, kib_body("New", i)))
            .unwrap();
    }
    settled(&store);
    assert!(store.delete_expired_files().unwrap() > 0);
    store
}

/// Queues read at first use (`lazy_queue_load_threshold(0)`), as a store with many queues
/// opens after a clean exit.
fn lazy(dir: &Path) -> rocketstore::StoreConfig {
    config(dir, sync_mode()).lazy_queue_load_threshold(0)
}

#[test]
fn a_queue_read_at_first_use_never_serves_another_queues_message_and_is_rebuilt_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = last_entry_pointing_at_another_queue(dir.path(), lazy(dir.path()));
    {
        let store = MessageStore::open(lazy(dir.path())).unwrap();
        // The damage is found when the queue is first read, and never served.
        let err = store.get_message("T", 0, 4, 1).unwrap_err();
        assert!(matches!(err, Error::Corrupted { .. }), "{err}");
        let intact = store.get_message("T", 0, 0, 4).unwrap();
        assert_eq!(intact.messages.len(), 4);
        let other = store.get_message("T", 1, 4, 1).unwrap();
        assert_eq!(other.messages[0].physical_offset, b[4].physical_offset);
        // Not marked clean: the next open checks and rebuilds.
        assert!(store.shutdown().is_err());
    }
    let store = MessageStore::open(lazy(dir.path())).unwrap();
    let got = store.get_message("T", 0, 4, 1).unwrap();
    assert_eq!(got.messages[0].physical_offset, a[4].physical_offset);
}

/// Puts `n` messages to S/0 and then one to S/1 (so that the log's last record is another
/// queue's, and a clean open reads that one), in a store opened with `cfg`, and closes it.
fn put_to_s0_then_s1(cfg: rocketstore::StoreConfig, n: u64) -> Vec<PutResult> {
    let store = MessageStore::open(cfg).unwrap();
    let puts = (0..n)
        .map(|i| store.put_message(&message("S", 0, "s", i)).unwrap())
        .collect();
    store.put_message(&message("S", 1, "s", 0)).unwrap();
    puts
}

/// Zeroes `len` bytes at `at` of S/0's first queue file.
fn zero_s0_file0(dir: &Path, at: u64, len: usize) {
    let file = layout::queue_dir(dir, "S", 0).join(layout::file_name(0));
    OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .write_all_at(&vec![0u8; len], at)
        .unwrap();
}

#[test]
fn a_queue_read_at_first_use_and_found_short_goes_on_at_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let puts = put_to_s0_then_s1(lazy(dir.path()), 5);
    // The last two entries lost on disk.
    zero_s0_file0(dir.path(), 3 * 20, 40);
    {
        let store = MessageStore::open(lazy(dir.path())).unwrap();
        assert_eq!(store.max_offset_in_queue("S", 0), 5, "the table's end");
        let got = store.get_message("S", 0, 0, 8).unwrap();
        assert_eq!(got.messages.len(), 3, "served no further than intact");
        assert_eq!(got.next_offset, 3);
        // Where the damage is, an error: never a skip past the two lost entries, whose
        // messages the log still holds.
        let err = store.get_message("S", 0, 3, 8).unwrap_err();
        assert!(matches!(err, Error::BadStoreFile { .. }), "{err}");
        // Dispatch goes on at the queue's offsets: no gap, no conflict.
        let next = store.put_message(&message("S", 0, "s", 5)).unwrap();
        assert_eq!(next.queue_offset, 5);
        assert!(store.wait_dispatched(next.physical_offset, Duration::from_secs(30)));
        let got = store.get_message("S", 0, 5, 1).unwrap();
        assert_eq!(got.messages[0].physical_offset, next.physical_offset);
        assert!(
            store.shutdown().is_err(),
            "left for the next open to rebuild"
        );
    }
    let store = MessageStore::open(lazy(dir.path())).unwrap();
    let got = store.get_message("S", 0, 0, 8).unwrap();
    assert_eq!(got.messages.len(), 6, "rebuilt from the log");
    for (m, p) in got.messages.iter().zip(&puts) {
        assert_eq!(m.physical_offset, p.physical_offset);
    }
}

/// A queue read at first use whose files cannot be loaded (here a stray file in its
/// directory) goes on at the table's end with no file listed. Its reads must fail, not
/// answer as if its files were deleted by retention: a consumer would skip every message,
/// which the log still holds. The next open rebuilds it.
#[test]
fn a_queue_whose_files_fail_to_load_at_first_use_is_an_error_not_a_skip() {
    let dir = tempfile::tempdir().unwrap();
    let puts = put_to_s0_then_s1(lazy(dir.path()), 5);
    std::fs::write(layout::queue_dir(dir.path(), "S", 0).join("stray"), b"").unwrap();
    {
        let store = MessageStore::open(lazy(dir.path())).unwrap();
        let err = store.get_message("S", 0, 0, 8).unwrap_err();
        assert!(matches!(err, Error::BadStoreFile { .. }), "{err}");
        assert_eq!(store.max_offset_in_queue("S", 0), 5);
        assert!(
            store.shutdown().is_err(),
            "left for the next open to rebuild"
        );
    }
    std::fs::remove_file(layout::queue_dir(dir.path(), "S", 0).join("stray")).unwrap();
    let store = MessageStore::open(lazy(dir.path())).unwrap();
    let got = store.get_message("S", 0, 0, 8).unwrap();
    let offsets: Vec<_> = got.messages.iter().map(|m| m.physical_offset).collect();
    let want: Vec<_> = puts.iter().map(|p| p.physical_offset).collect();
    assert_eq!(offsets, want);
}

/// The head of a queue lost on disk (its first entries zeroed, or its first file gone)
/// is not taken for retention while the commit log still starts at 0: the queue is
/// rebuilt from the log, and its minimum stays at 0 with every message readable.
#[test]
fn a_queue_that_lost_its_head_is_rebuilt_while_the_log_starts_at_zero() {
    for lose_file in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || config(dir.path(), sync_mode()).consume_queue_entries_per_file(4);
        let puts = put_to_s0_then_s1(cfg(), 10);
        if lose_file {
            let first = layout::queue_dir(dir.path(), "S", 0).join(layout::file_name(0));
            std::fs::remove_file(first).unwrap();
        } else {
            zero_s0_file0(dir.path(), 0, 20);
        }
        let store = MessageStore::open(cfg()).unwrap();
        assert_eq!(
            store.min_offset_in_queue("S", 0),
            0,
            "lose file: {lose_file}"
        );
        let mut got = Vec::new();
        let mut at = 0;
        while at < 10 {
            let r = store.get_message("S", 0, at, 8).unwrap();
            assert!(!r.messages.is_empty(), "at {at}: {:?}", r.status);
            got.extend(r.messages.iter().map(|m| m.physical_offset));
            at = r.next_offset;
        }
        let want: Vec<_> = puts.iter().map(|p| p.physical_offset).collect();
        assert_eq!(got, want, "lose file: {lose_file}");
    }
}

/// The same loss met by a read at first use: the read fails (and the next open rebuilds)
/// instead of answering `OffsetTooSmall`, which moves the consumer past the lost head.
#[test]
fn a_queue_read_at_first_use_that_lost_its_head_fails_the_read() {
    let dir = tempfile::tempdir().unwrap();
    put_to_s0_then_s1(lazy(dir.path()), 5);
    zero_s0_file0(dir.path(), 0, 20);
    let store = MessageStore::open(lazy(dir.path())).unwrap();
    let err = store.get_message("S", 0, 0, 8).unwrap_err();
    assert!(matches!(err, Error::BadStoreFile { .. }), "{err}");
    assert_eq!(store.min_offset_in_queue("S", 0), 0);
    assert!(
        store.shutdown().is_err(),
        "left for the next open to rebuild"
    );
    drop(store);
    let store = MessageStore::open(lazy(dir.path())).unwrap();
    assert_eq!(store.get_message("S", 0, 0, 8).unwrap().messages.len(), 5);
}

#[test]
fn a_stale_or_damaged_queue_table_never_opens_queues_at_its_word() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = MessageStore::open(lazy(dir.path())).unwrap();
        for i in 0..3 {
            store.put_message(&message("Q", 0, "q", i)).unwrap();
        }
    }
    let table = layout::queue_table_file(dir.path());
    let old = fs::read(&table).unwrap();
    {
        let store = MessageStore::open(lazy(dir.path())).unwrap();
        for i in 3..6 {
            store.put_message(&message("Q", 0, "q", i)).unwrap();
        }
        store.put_message(&message("Q", 1, "q", 0)).unwrap();
    }
    // The table of the earlier run, as if this run's shutdown could not replace it: a
    // lower bound, not the queues' end.
    fs::write(&table, &old).unwrap();
    {
        let store = MessageStore::open(lazy(dir.path())).unwrap();
        assert_eq!(store.max_offset_in_queue("Q", 0), 6);
        let next = store.put_message(&message("Q", 0, "q", 6)).unwrap();
        assert_eq!(next.queue_offset, 6, "offsets 3..6 are taken");
    }
    // A damaged table (one digit of a row changed) is ignored, not believed.
    let text = fs::read_to_string(&table).unwrap();
    assert!(text.contains("Q 0 7 "), "{text}");
    fs::write(&table, text.replace("Q 0 7 ", "Q 0 9 ")).unwrap();
    let store = MessageStore::open(lazy(dir.path())).unwrap();
    assert_eq!(store.max_offset_in_queue("Q", 0), 7);
    let next = store.put_message(&message("Q", 0, "q", 7)).unwrap();
    assert_eq!(next.queue_offset, 7);
    assert!(store.wait_dispatched(next.physical_offset, Duration::from_secs(30)));
    let got = store.get_message("Q", 0, 0, 16).unwrap();
    assert_eq!(got.messages.len(), 8, "{:?}", got.status);
}

/// Fails the removal of one file while armed.
struct FailRemoveOf {
    path: PathBuf,
    armed: std::sync::atomic::AtomicBool,
}

impl rocketstore::IoHook for FailRemoveOf {
    fn before_remove(&self, path: &Path) -> std::io::Result<()> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) && path == self.path {
            return Err(std::io::Error::other("injected removal failure"));
        }
        Ok(())
    }
}

/// The commit-log file names, checked to have no gap.
fn names_without_gap(dir: &Path) -> Vec<u64> {
    let mut starts: Vec<u64> = fs::read_dir(layout::commit_log_dir(dir))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .into_string()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    starts.sort();
    for (i, start) in starts.iter().enumerate() {
        assert_eq!(
            *start,
            i as u64 * SMALL_FILE,
            "a gap in the names: {starts:?}"
        );
    }
    starts
}

#[test]
fn a_torn_tail_in_an_earlier_file_removes_the_later_files_newest_first() {
    // A crash tore the log in its second file; the files after it (written, then unused
    // and prepared) must go. When a removal fails part-way the open is refused and the
    // names keep no gap, so that the next open can finish the job.
    let dir = tempfile::tempdir().unwrap();
    let puts = two_topic_store(dir.path());
    let before = names_without_gap(dir.path());
    assert!(before.len() >= 5, "{before:?}");
    let torn_at = puts
        .iter()
        .map(|(_, r)| r.physical_offset)
        .find(|&at| at > SMALL_FILE + 4096)
        .unwrap();
    let file = OpenOptions::new()
        .write(true)
        .open(layout::commit_log_file(dir.path(), SMALL_FILE))
        .unwrap();
    let pos = torn_at - SMALL_FILE;
    file.write_all_at(&vec![0u8; (SMALL_FILE - pos) as usize], pos)
        .unwrap();
    drop(file);
    checkpoint_vouches_below(dir.path(), torn_at);
    fs::write(layout::abort_file(dir.path()), b"").unwrap();

    let newest = *before.last().unwrap();
    let hook = std::sync::Arc::new(FailRemoveOf {
        path: layout::commit_log_file(dir.path(), newest),
        armed: true.into(),
    });
    let cfg = config(dir.path(), sync_mode()).io_hook(hook.clone());
    let err = MessageStore::open(cfg.clone()).unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    names_without_gap(dir.path());

    hook.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    let store = MessageStore::open(cfg).unwrap();
    assert_eq!(store.max_physical_offset(), torn_at);
    for (topic, r) in &puts {
        let found = store.lookup_message(r.physical_offset).unwrap();
        match r.physical_offset < torn_at {
            true => assert_eq!(&*found.unwrap().topic, topic.as_str()),
            false => assert!(found.is_none()),
        }
    }
    drop(store);
    let after = names_without_gap(dir.path());
    assert!(after.len() <= 2 + 2, "{after:?}");
}

#[test]
fn a_checkpoint_time_damaged_to_the_lowest_value_scans_everything_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let puts = two_topic_store(dir.path());
    // A crash, a queue lost, and a checkpoint whose queue time was reset (0: index
    // everything again) and whose log time reads as i64::MIN (a damaged sign byte).
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    fs::remove_dir_all(layout::queue_dir(dir.path(), "TopicB", 0)).unwrap();
    let path = layout::checkpoint_file(dir.path());
    let cp = CheckpointTimes::read(&path).unwrap().unwrap();
    CheckpointTimes {
        physic: i64::MIN,
        logics: 0,
        logics_offset: 0,
        ..cp
    }
    .write(&path)
    .unwrap();

    let store = open(dir.path(), sync_mode());
    for topic in ["TopicA", "TopicB"] {
        let want: Vec<_> = puts
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.physical_offset)
            .collect();
        let got = store.get_message(topic, 0, 0, 1000).unwrap();
        let got: Vec<_> = got.messages.iter().map(|m| m.physical_offset).collect();
        assert_eq!(got, want, "{topic}");
    }
}

/// A queue found damaged at first use keeps its minimum through retention: deleting an
/// older commit-log file must not move the minimum past messages the log still holds
/// (the damaged queue's files no longer say where its entries begin).
#[test]
fn retention_never_moves_a_damaged_queue_past_messages_the_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || lazy(dir.path()).file_reserved_time(Duration::ZERO);
    let puts = {
        let store = MessageStore::open(cfg()).unwrap();
        fill_log_files(&store, "F", 2);
        let puts: Vec<_> = (0..5)
            .map(|i| store.put_message(&message("S", 0, "s", i)).unwrap())
            .collect();
        store.put_message(&message("S", 1, "s", 0)).unwrap();
        puts
    };
    assert!(puts[0].physical_offset >= 2 * SMALL_FILE);
    fs::write(layout::queue_dir(dir.path(), "S", 0).join("stray"), b"").unwrap();
    {
        let store = MessageStore::open(cfg()).unwrap();
        let err = store.get_message("S", 0, 0, 8).unwrap_err();
        assert!(matches!(err, Error::BadStoreFile { .. }), "{err}");
        assert!(store.delete_expired_files().unwrap() > 0);
        assert!(store.min_physical_offset() > 0);
        assert_eq!(store.min_offset_in_queue("S", 0), 0);
        match store.get_message("S", 0, 0, 8) {
            Err(e) => assert!(matches!(e, Error::BadStoreFile { .. }), "{e}"),
            Ok(got) => {
                let offsets: Vec<_> = got.messages.iter().map(|m| m.physical_offset).collect();
                let want: Vec<_> = puts.iter().map(|p| p.physical_offset).collect();
                assert_eq!(offsets, want, "{:?}", got.status);
            }
        }
        assert!(
            store.shutdown().is_err(),
            "left for the next open to rebuild"
        );
    }
    fs::remove_file(layout::queue_dir(dir.path(), "S", 0).join("stray")).unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    let got = store.get_message("S", 0, 0, 8).unwrap();
    let offsets: Vec<_> = got.messages.iter().map(|m| m.physical_offset).collect();
    let want: Vec<_> = puts.iter().map(|p| p.physical_offset).collect();
    assert_eq!(offsets, want);
}

/// A queue whose files are lost on disk, read at first use, is an error even when its
/// last record is the log's very first (at offset 0, which the queue table also writes
/// for "none"): it is not taken for a queue retention emptied.
#[test]
fn a_queue_that_lost_its_files_is_an_error_even_when_its_record_is_at_offset_0() {
    let dir = tempfile::tempdir().unwrap();
    let put = {
        let store = MessageStore::open(lazy(dir.path())).unwrap();
        let put = store.put_message(&message("T", 0, "t", 0)).unwrap();
        store.put_message(&message("U", 0, "u", 0)).unwrap();
        put
    };
    assert_eq!(put.physical_offset, 0);
    let queue = layout::queue_dir(dir.path(), "T", 0);
    for file in fs::read_dir(&queue).unwrap() {
        fs::remove_file(file.unwrap().path()).unwrap();
    }
    {
        let store = MessageStore::open(lazy(dir.path())).unwrap();
        let got = store.get_message("T", 0, 0, 8);
        assert!(matches!(got, Err(Error::BadStoreFile { .. })), "{got:?}");
        assert!(
            store.shutdown().is_err(),
            "left for the next open to rebuild"
        );
    }
    let store = MessageStore::open(lazy(dir.path())).unwrap();
    let got = store.get_message("T", 0, 0, 8).unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].physical_offset, 0);
}

/// The same damage found first by retention (no reader came first): the trim reads the
/// queue, finds it damaged, and then leaves it alone too.
#[test]
fn retention_that_first_reads_a_damaged_queue_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        lazy(dir.path())
            .file_reserved_time(Duration::ZERO)
            .consume_queue_entries_per_file(4)
    };
    let puts = {
        let store = MessageStore::open(cfg()).unwrap();
        fill_log_files(&store, "F", 2);
        let puts: Vec<_> = (0..10)
            .map(|i| store.put_message(&message("S", 0, "s", i)).unwrap())
            .collect();
        store.put_message(&message("S", 1, "s", 0)).unwrap();
        puts
    };
    fs::write(layout::queue_dir(dir.path(), "S", 0).join("stray"), b"").unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    assert!(store.delete_expired_files().unwrap() > 0);
    assert!(store.min_physical_offset() > 0);
    assert_eq!(store.min_offset_in_queue("S", 0), 0);
    match store.get_message("S", 0, 0, 16) {
        Err(e) => assert!(matches!(e, Error::BadStoreFile { .. }), "{e}"),
        Ok(got) => {
            let offsets: Vec<_> = got.messages.iter().map(|m| m.physical_offset).collect();
            let want: Vec<_> = puts.iter().map(|p| p.physical_offset).collect();
            assert_eq!(offsets, want, "{:?}", got.status);
        }
    }
}
