//! Deleting a topic: its consume queues go, its messages are never returned again (by
//! queue or by key, after a clean reopen, a crash or a rebuild), and it starts again at
//! queue offset 0.

mod common;

use std::fs;
use std::time::Duration;

use rocketstore::layout;
use rocketstore::{Error, GetStatus, MessageStore, StoreConfig};

use common::{checkpoint_vouches_below, config, message, sync_mode};

const LONG: Duration = Duration::from_secs(30);

fn cfg(dir: &std::path::Path) -> StoreConfig {
    config(dir, sync_mode())
}

/// Bodies of queue `q` of `topic`, in order, and what the key `key` finds.
fn seen(store: &MessageStore, topic: &str, q: u32, key: &str) -> (Vec<String>, usize) {
    assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    assert!(store.wait_dispatcher("index", store.max_physical_offset(), LONG));
    let got = store.get_message(topic, q, 0, 1000).unwrap();
    let bodies = got
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body[..8]).into_owned())
        .collect();
    let by_key = store.query_message(topic, key, 100, 0, i64::MAX).unwrap();
    (bodies, by_key.messages.len())
}

fn setup(dir: &std::path::Path) -> MessageStore {
    let store = MessageStore::open(cfg(dir)).unwrap();
    for i in 0..30 {
        store
            .put_message(&message("Gone", (i % 3) as u32, "old", i))
            .unwrap();
        store.put_message(&message("Kept", 0, "kept", i)).unwrap();
    }
    store.delete_topic("Gone").unwrap();
    assert!(
        !layout::queue_dir(dir, "Gone", 0).exists(),
        "its consume queues are removed"
    );
    for i in 0..5 {
        let put = store
            .put_message(&message("Gone", 0, "new", 100 + i))
            .unwrap();
        assert_eq!(put.queue_offset, i, "the topic starts again at 0");
    }
    store
}

fn check(store: &MessageStore) {
    let (bodies, old_key) = seen(store, "Gone", 0, "k3");
    assert_eq!(bodies.len(), 5);
    assert!(bodies.iter().all(|b| b.starts_with("new-")), "{bodies:?}");
    assert_eq!(old_key, 0, "the old message is not found by its key");
    assert_eq!(seen(store, "Gone", 0, "k103").1, 1, "the new one is");
    assert_eq!(
        store.get_message("Gone", 1, 0, 8).unwrap().status,
        GetStatus::NoMessageInQueue
    );
    let (kept, kept_key) = seen(store, "Kept", 0, "k3");
    assert_eq!(
        (kept.len(), kept_key),
        (30, 1),
        "other topics are untouched"
    );
}

#[test]
fn a_deleted_topic_stays_deleted_across_reopens_crashes_and_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let store = setup(dir.path());
    check(&store);
    store.shutdown().unwrap();
    drop(store);

    // Clean reopen.
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    check(&store);
    store.shutdown().unwrap();
    drop(store);

    // After a crash whose checkpoint vouched for nothing: the whole log is scanned again.
    checkpoint_vouches_below(dir.path(), 0);
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    check(&store);
    store.shutdown().unwrap();
    drop(store);

    // With the consume queues gone: rebuilt from the log, without the deleted messages.
    fs::remove_dir_all(layout::consume_queue_dir(dir.path())).unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    check(&store);
    let next = store.put_message(&message("Gone", 0, "new", 105)).unwrap();
    assert_eq!(next.queue_offset, 5);
}

#[test]
fn a_deletion_cut_short_by_a_crash_is_completed_by_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let store = MessageStore::open(cfg(dir.path())).unwrap();
        for i in 0..10 {
            store.put_message(&message("Gone", 0, "old", i)).unwrap();
        }
        store.max_physical_offset()
    };
    assert!(layout::queue_dir(dir.path(), "Gone", 0).exists());
    // The deletion recorded, its queues not removed yet.
    write_deleted(dir.path(), &format!("Gone {end} 0\n"));
    fs::write(layout::abort_file(dir.path()), b"").unwrap();

    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert!(!layout::queue_dir(dir.path(), "Gone", 0).exists());
    assert_eq!(
        store.get_message("Gone", 0, 0, 8).unwrap().status,
        GetStatus::NoMessageInQueue
    );
    assert_eq!(
        store
            .put_message(&message("Gone", 0, "new", 0))
            .unwrap()
            .queue_offset,
        0
    );
    let recorded = fs::read_to_string(layout::deleted_topics_file(dir.path())).unwrap();
    assert!(recorded.contains(&format!("Gone {end} 1")), "{recorded}");
}

struct ChannelWaker(crossbeam_channel::Sender<()>);

impl std::task::Wake for ChannelWaker {
    fn wake(self: std::sync::Arc<Self>) {
        let _ = self.0.send(());
    }
}

#[test]
fn a_long_poll_on_a_deleted_queue_ends() {
    use std::future::Future;
    use std::task::{Context, Poll};
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    store.put_message(&message("Gone", 0, "old", 0)).unwrap();
    assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    let (tx, woken) = crossbeam_channel::unbounded();
    let waker = std::task::Waker::from(std::sync::Arc::new(ChannelWaker(tx)));
    let mut cx = Context::from_waker(&waker);
    let mut arrival = store.message_arrival("Gone", 0, 1);
    assert_eq!(
        std::pin::Pin::new(&mut arrival).poll(&mut cx),
        Poll::Pending
    );
    store.delete_topic("Gone").unwrap();
    woken
        .recv_timeout(LONG)
        .expect("the deletion wakes waiters on its queues");
    // The wait ends: the consumer pulls again and finds the topic started over.
    assert_eq!(
        std::pin::Pin::new(&mut arrival).poll(&mut cx),
        Poll::Ready(true)
    );
    let pulled = store.get_message("Gone", 0, 1, 8).unwrap();
    assert_eq!(pulled.status, GetStatus::NoMessageInQueue);
}

/// The consumer pulled up to the queue's end, then the topic was deleted, then it began
/// its long poll there: the wait ends at once, as the waits the deletion released did,
/// instead of sleeping out its timeout while the topic starts over. A wait at the new
/// queue's start still waits, and one at the old end is told when the queue is back.
#[test]
fn a_long_poll_begun_just_after_the_deletion_ends_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    for i in 0..3 {
        store.put_message(&message("Gone", 0, "old", i)).unwrap();
    }
    assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    store.delete_topic("Gone").unwrap();
    assert!(store.wait_for_message("Gone", 0, 3, Duration::from_secs(2)));
    assert!(!store.wait_for_message("Gone", 0, 0, Duration::from_millis(50)));
    store.put_message(&message("Gone", 0, "new", 0)).unwrap();
    assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    assert!(!store.wait_for_message("Gone", 0, 3, Duration::from_millis(50)));
}

/// The file `delete_topic` keeps, written by hand (FORMAT.md, "Deleted topics").
fn write_deleted(dir: &std::path::Path, rows: &str) {
    let mut text = format!("rocketstore-deleted-topics-v1\n{rows}");
    let crc = crc32fast::hash(text.as_bytes());
    text.push_str(&format!("crc {crc}\n"));
    fs::write(layout::deleted_topics_file(dir), text).unwrap();
}

#[test]
fn a_deletion_completed_by_an_open_is_not_repeated_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    for i in 0..10 {
        store.put_message(&message("Gone", 0, "old", i)).unwrap();
    }
    let cutoff = store.max_physical_offset();
    store.delete_topic("Gone").unwrap();
    for i in 0..5 {
        store
            .put_message(&message("Gone", 0, "new", 100 + i))
            .unwrap();
    }
    // Files after them, so that a scan moves the checkpoint past the new topic's records.
    for i in 0..800 {
        store.put_message(&message("Other", 0, "o", i)).unwrap();
    }
    assert!(store.max_physical_offset() > 3 * common::SMALL_FILE);
    store.shutdown().unwrap();
    drop(store);
    // As if the deletion had not been marked done, and a crash came before the checkpoint
    // covered the new topic's records.
    write_deleted(dir.path(), &format!("Gone {cutoff} 0\n"));
    checkpoint_vouches_below(dir.path(), 0);
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(seen(&store, "Gone", 0, "k3").0.len(), 5);
    drop(store);
    // A crash again: the new topic's queue, indexed by that open, stays.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    let (bodies, _) = seen(&store, "Gone", 0, "k3");
    assert_eq!(bodies.len(), 5, "{bodies:?}");
    assert!(bodies.iter().all(|b| b.starts_with("new-")));
}

#[test]
fn a_crash_that_cuts_the_log_below_a_deletion_moves_its_cutoff_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    let mut puts = Vec::new();
    for i in 0..10 {
        puts.push(store.put_message(&message("Gone", 0, "old", i)).unwrap());
    }
    store.delete_topic("Gone").unwrap();
    store.shutdown().unwrap();
    drop(store);
    // The tail, from message 6 on, torn by the crash (the deletion's cutoff lies past it).
    let torn = puts[6].physical_offset;
    checkpoint_vouches_below(dir.path(), torn);
    use std::os::unix::fs::FileExt;
    fs::OpenOptions::new()
        .write(true)
        .open(layout::commit_log_file(dir.path(), 0))
        .unwrap()
        .write_all_at(&[0u8; 64], torn)
        .unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.max_physical_offset(), torn);
    // The topic's next message lands where the cut records were: it is the new topic's.
    let next = store.put_message(&message("Gone", 0, "new", 100)).unwrap();
    assert_eq!((next.physical_offset, next.queue_offset), (torn, 0));
    let (bodies, by_key) = seen(&store, "Gone", 0, "k100");
    assert_eq!(
        (bodies.len(), by_key),
        (1, 1),
        "the new message is served, not hidden"
    );
    assert_eq!(seen(&store, "Gone", 0, "k3").1, 0, "old ones stay deleted");
}

/// A deletion that could not be written (here its temporary file cannot be created) is
/// known not to be on disk: the call fails, and the store goes on as if it was never
/// asked, without poisoning itself; the deletion succeeds once it can be written.
#[test]
fn a_deletion_that_cannot_be_written_fails_without_poisoning_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    for i in 0..3 {
        store.put_message(&message("Gone", 0, "old", i)).unwrap();
    }
    let tmp = layout::deleted_topics_file(dir.path()).with_extension("tmp");
    fs::create_dir(&tmp).unwrap();
    assert!(store.delete_topic("Gone").is_err());
    // Nothing was deleted: puts continue the topic's offsets.
    let put = store.put_message(&message("Gone", 0, "old", 3)).unwrap();
    assert_eq!(put.queue_offset, 3);
    fs::remove_dir(&tmp).unwrap();
    store.delete_topic("Gone").unwrap();
    let put = store.put_message(&message("Gone", 0, "new", 0)).unwrap();
    assert_eq!(put.queue_offset, 0);
    store.shutdown().unwrap();
}

/// Fails the first sync of `dir` once armed, counting every sync of it.
struct FailFirstDirSync {
    dir: std::path::PathBuf,
    armed: std::sync::atomic::AtomicBool,
    syncs: std::sync::atomic::AtomicUsize,
}

impl rocketstore::IoHook for FailFirstDirSync {
    fn before_sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if dir != self.dir || !self.armed.load(SeqCst) {
            return Ok(());
        }
        if self.syncs.fetch_add(1, SeqCst) == 0 {
            return Err(std::io::Error::other("injected EIO"));
        }
        Ok(())
    }
}

/// The removal of a deleted topic's queues whose directory sync failed is retried: the
/// retry finds the directory gone, and must still sync its parent before the deletion
/// is recorded done (a power cut could otherwise bring the old queues back, done).
#[test]
fn a_failed_sync_of_a_deleted_topics_queues_is_synced_again_before_done() {
    let dir = tempfile::tempdir().unwrap();
    let hook = std::sync::Arc::new(FailFirstDirSync {
        dir: layout::consume_queue_dir(dir.path()),
        armed: false.into(),
        syncs: 0.into(),
    });
    let store = MessageStore::open(cfg(dir.path()).io_hook(hook.clone())).unwrap();
    let mut puts: Vec<_> = (0..3)
        .map(|i| store.put_message(&message("Gone", 0, "old", i)).unwrap())
        .collect();
    let last = puts.pop().unwrap();
    assert!(store.wait_dispatched(last.physical_offset, LONG));
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    store.delete_topic("Gone").unwrap();
    assert!(!layout::queue_dir(dir.path(), "Gone", 0).exists());
    assert!(
        hook.syncs.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "recorded done without a directory sync after the failed one"
    );
    store.shutdown().unwrap();
}

/// A deleted-topics row is a directory the open removes. One whose CRC matches but whose
/// topic is `..` named the store's root (`consumequeue/..`): the open emptied it and came
/// up with no messages.
#[test]
fn a_row_naming_the_root_refuses_the_open_and_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    for i in 0..20 {
        store.put_message(&message("Kept", 0, "kept", i)).unwrap();
    }
    let end = store.max_physical_offset();
    store.shutdown().unwrap();
    drop(store);
    for topic in ["..", ""] {
        write_deleted(dir.path(), &format!("{topic} 0 0\n"));
        fs::write(layout::abort_file(dir.path()), b"").unwrap();
        let open = MessageStore::open(cfg(dir.path()));
        assert!(
            matches!(open, Err(Error::BadStoreFile { .. })),
            "{topic:?}: {:?}",
            open.map(|s| s.max_physical_offset())
        );
        assert!(layout::commit_log_file(dir.path(), 0).exists());
        assert!(layout::queue_dir(dir.path(), "Kept", 0).exists());
    }
    fs::remove_file(layout::deleted_topics_file(dir.path())).unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.max_physical_offset(), end);
    assert_eq!(seen(&store, "Kept", 0, "k3").0.len(), 20);
}
