//! Sync flush: acknowledged bytes are flushed, a stalled flush times out, a failed flush
//! poisons the store; `put_message_async` under several executors.

mod common;

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use rocketstore::{Error, FlushMode, IoHook, MessageStore, PutStatus};

/// `producers` threads each put `each` messages to `topic` (queue = producer), checking
/// that every acknowledged put is within the flushed offset.
fn put_durably(store: &Arc<MessageStore>, producers: u32, each: u64, topic: &'static str) {
    let threads: Vec<_> = (0..producers)
        .map(|p| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                for i in 0..each {
                    let put = store.put_message(&message(topic, p, "k", i)).unwrap();
                    assert_eq!(put.status, PutStatus::Ok);
                    assert!(put.end_offset() <= store.flushed_physical_offset());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn an_acknowledged_put_is_within_the_flushed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), sync_mode()));
    put_durably(&store, 4, 300, "S");
    assert_eq!(store.flushed_physical_offset(), store.max_physical_offset());
}

/// A sync store whose flushes stall in `hook` (armed) and time out after 50 ms.
fn open_stalled(dir: &Path) -> (MessageStore, Arc<StallSync>) {
    let hook = StallSync::new(true);
    let mode = FlushMode::Sync {
        timeout: Duration::from_millis(50),
    };
    let store = MessageStore::open(config(dir, mode).io_hook(hook.clone())).unwrap();
    (store, hook)
}

#[test]
fn a_stalled_flush_gives_flush_disk_timeout_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hook) = open_stalled(dir.path());
    let put = store.put_message(&message("T", 0, "t", 0)).unwrap();
    assert_eq!(put.status, PutStatus::FlushDiskTimeout);
    hook.wait_stalled(); // the flush really was stuck in sync
    assert!(store.flushed_physical_offset() < put.end_offset());
    hook.release();
    let next = store.put_message(&message("T", 0, "t", 1)).unwrap();
    assert_eq!(next.status, PutStatus::Ok);
    assert_eq!(next.queue_offset, 1);
    assert!(store.flushed_physical_offset() >= next.end_offset());
    let first = store.lookup_message(put.physical_offset).unwrap().unwrap();
    assert_eq!(first.body, body("t", 0));
}

/// Producers that piled up behind a stuck flush are all woken by the flush after it. They
/// appended while the first flush was under way, so they sleep on the other futex word
/// than the first producer, and one wake-up must reach all eight. A producer left asleep
/// would still return `Ok` at its deadline (the flush did cover it), so the check is that
/// each returns long before that deadline.
#[test]
fn a_flush_wakes_every_producer_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StallSync::new(true);
    let mode = FlushMode::Sync {
        timeout: Duration::from_secs(3600),
    };
    let config = config(dir.path(), mode).io_hook(hook.clone());
    let store = Arc::new(MessageStore::open(config).unwrap());
    let (done_tx, done) = crossbeam_channel::unbounded();
    let put = |i: u64| {
        let (store, done_tx) = (Arc::clone(&store), done_tx.clone());
        std::thread::spawn(move || {
            let put = store.put_message(&message("W", 0, "w", i)).unwrap();
            done_tx.send(put).unwrap();
        })
    };
    let mut threads = vec![put(0)];
    hook.wait_stalled();
    threads.extend((1..=8).map(put));
    // Every record is appended (its producer waits, or is about to) before the stuck
    // flush goes on; the next flush covers the eight.
    while store.stats().puts < 9 {
        std::thread::yield_now();
    }
    hook.release();
    for _ in 0..9 {
        let put = done
            .recv_timeout(Duration::from_secs(60))
            .expect("a producer the flush covered was left asleep");
        assert_eq!(put.status, PutStatus::Ok);
        assert!(put.end_offset() <= store.flushed_physical_offset());
    }
    for t in threads {
        t.join().unwrap();
    }
}

struct FailSync(AtomicBool);

impl IoHook for FailSync {
    fn before_sync(&self, _path: &Path) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            Err(io::Error::other("injected fsync failure"))
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_failed_flush_poisons_the_store() {
    for mode in [sync_mode(), async_mode()] {
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(FailSync(AtomicBool::new(false)));
        let store = MessageStore::open(config(dir.path(), mode).io_hook(hook.clone())).unwrap();
        let good = store.put_message(&message("P", 0, "p", 0)).unwrap();
        store.flush().unwrap();
        hook.0.store(true, Ordering::SeqCst);

        let failed = store
            .put_message(&message("P", 0, "p", 1))
            .and_then(|_| store.flush());
        assert!(
            failed.is_err(),
            "the flush after the injected failure succeeded"
        );
        for i in 2..5 {
            let err = store.put_message(&message("P", 0, "p", i)).unwrap_err();
            assert!(matches!(err, Error::Poisoned { .. }), "{err}");
            assert!(err.to_string().contains("injected fsync failure"), "{err}");
        }
        // Even with the disk healthy again the store stays poisoned until reopened.
        hook.0.store(false, Ordering::SeqCst);
        assert!(matches!(
            store.put_message(&message("P", 0, "p", 9)),
            Err(Error::Poisoned { .. })
        ));
        // Reads keep working.
        let m = store.lookup_message(good.physical_offset).unwrap().unwrap();
        assert_eq!(m.body, body("p", 0));
        assert!(store.shutdown().is_err());
        drop(store);

        let store = MessageStore::open(config(dir.path(), mode)).unwrap();
        let m = store.lookup_message(good.physical_offset).unwrap().unwrap();
        assert_eq!(m.body, body("p", 0));
        store.put_message(&message("P", 0, "p", 10)).unwrap();
    }
}

#[test]
fn put_message_async_under_tokio() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), sync_mode()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let futures: Vec<_> = (0..200)
            .map(|i| store.put_message_async(message("A", (i % 2) as u32, "a", i)))
            .collect();
        let mut out = Vec::new();
        for f in futures {
            out.push(f.await.unwrap());
        }
        out
    });
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.status, PutStatus::Ok);
        assert_eq!(r.queue_offset, i as u64 / 2);
        assert!(r.end_offset() <= store.flushed_physical_offset());
        let m = store.lookup_message(r.physical_offset).unwrap().unwrap();
        assert_eq!(m.body, body("a", i as u64));
    }
}

#[test]
fn put_message_async_under_a_minimal_executor() {
    for mode in [sync_mode(), async_mode()] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), mode);
        let futures: Vec<_> = (0..100)
            .map(|i| store.put_message_async(message("B", 0, "b", i)))
            .collect();
        for (i, f) in futures.into_iter().enumerate() {
            let r = pollster::block_on(f).unwrap();
            assert_eq!(r.queue_offset, i as u64);
            assert_eq!(r.status, PutStatus::Ok);
        }
        // Errors arrive through the future too.
        let bad = pollster::block_on(store.put_message_async(message("bad topic", 0, "b", 0)));
        assert!(matches!(bad, Err(Error::InvalidTopic { .. })));
    }
}

#[test]
fn put_message_async_times_out_like_put_message() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hook) = open_stalled(dir.path());
    let r = pollster::block_on(store.put_message_async(message("T", 0, "t", 0))).unwrap();
    assert_eq!(r.status, PutStatus::FlushDiskTimeout);
    hook.wait_stalled();
    hook.release();
    let r = pollster::block_on(store.put_message_async(message("T", 0, "t", 1))).unwrap();
    assert_eq!(r.status, PutStatus::Ok);
}

struct FullDiskSync(AtomicBool);

impl IoHook for FullDiskSync {
    fn before_sync(&self, _path: &Path) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected ENOSPC",
            ));
        }
        Ok(())
    }
}

#[test]
fn a_poisoned_store_keeps_the_io_error_as_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FullDiskSync(AtomicBool::new(false)));
    let store = MessageStore::open(config(dir.path(), sync_mode()).io_hook(hook.clone())).unwrap();
    hook.0.store(true, Ordering::SeqCst);
    let _ = store.put_message(&message("P", 0, "p", 0));
    let err = store.put_message(&message("P", 0, "p", 1)).unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    let source = std::error::Error::source(&err).expect("the cause is the source");
    let io = source
        .downcast_ref::<Arc<io::Error>>()
        .expect("the shared io::Error");
    assert_eq!(io.kind(), io::ErrorKind::StorageFull);
    assert!(io.to_string().contains("injected ENOSPC"), "{io}");
    assert!(store.shutdown().is_err());
}

/// The bytes of `put`, read from the commit-log file (the page cache), not the mapping.
fn in_file(dir: &Path, put: &rocketstore::PutResult) -> Vec<u8> {
    let log = rocketstore::layout::commit_log_dir(dir);
    let file = std::fs::read(log.join(rocketstore::layout::file_name(0))).unwrap();
    let at = put.physical_offset as usize;
    file[at..at + put.wrote_bytes as usize].to_vec()
}

/// A put that times out behind a stuck flush is stored: its bytes are in the page cache
/// (they survive a crash of the process) while the flush is still stuck, for a blocking
/// put and for a future alike. (The first put's bytes went in with the stuck flush; those
/// after it are gathered until their puts time out.)
#[test]
fn a_timed_out_put_is_in_the_page_cache_while_the_flush_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hook) = open_stalled(dir.path());
    let first = store.put_message(&message("T", 0, "t", 0)).unwrap();
    assert_eq!(first.status, PutStatus::FlushDiskTimeout);
    hook.wait_stalled();
    let has = |put: &rocketstore::PutResult, i: u64| {
        let b = body("t", i);
        in_file(dir.path(), put).windows(b.len()).any(|w| w == b)
    };
    let put = store.put_message(&message("T", 0, "t", 1)).unwrap();
    let put_in_file = has(&put, 1);
    let later = pollster::block_on(store.put_message_async(message("T", 0, "t", 2))).unwrap();
    let later_in_file = has(&later, 2);
    let still_stuck = store.flushed_physical_offset() < first.end_offset();
    // Released before asserting: a stuck flush would hang the store's shutdown.
    hook.release();
    assert_eq!(put.status, PutStatus::FlushDiskTimeout);
    assert!(put_in_file, "the timed-out put is not in the file");
    assert_eq!(later.status, PutStatus::FlushDiskTimeout);
    assert!(
        later_in_file,
        "the timed-out future's put is not in the file"
    );
    assert!(still_stuck);
}

/// A confirm offset at a record the writer has only gathered (the flush is stuck) is
/// where a record starts: the check sees the gathered bytes.
#[test]
fn a_confirm_offset_may_name_a_gathered_record() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hook) = open_stalled(dir.path());
    let first = store.put_message(&message("T", 0, "t", 0)).unwrap();
    assert_eq!(first.status, PutStatus::FlushDiskTimeout);
    hook.wait_stalled();
    let gathered = store.put_message_async(message("T", 0, "t", 1));
    let second_at = first.end_offset();
    let at_record = store.set_confirm_offset(second_at);
    let inside = store.set_confirm_offset(second_at + 3);
    // Released before asserting: a stuck flush would hang the store's shutdown.
    hook.release();
    at_record.unwrap();
    assert!(matches!(inside, Err(Error::Corrupted { .. })));
    let second = pollster::block_on(gathered).unwrap();
    assert_eq!(second.physical_offset, second_at);
}

/// Producers are woken whoever's flush covers them: the group-commit thread's own, or a
/// `MessageStore::flush` from another thread racing it (whose flush the group-commit
/// thread finds already done and must still release them for). A producer left asleep
/// returns `FlushDiskTimeout` at its deadline, 30 s away, though its put was durable
/// long before. (Without the release before the group-commit thread sleeps, one run in
/// three here left a producer asleep.)
#[test]
fn producers_are_woken_by_flushes_from_other_threads_too() {
    let dir = tempfile::tempdir().unwrap();
    let mode = FlushMode::Sync {
        timeout: Duration::from_secs(30),
    };
    let store = Arc::new(MessageStore::open(config(dir.path(), mode)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut flushes = 0u64;
            while !stop.load(Ordering::Acquire) {
                store.flush().unwrap();
                flushes += 1;
            }
            flushes
        })
    };
    put_durably(&store, 8, 250, "F");
    stop.store(true, Ordering::Release);
    assert!(flusher.join().unwrap() > 0);
    assert_eq!(store.flushed_physical_offset(), store.max_physical_offset());
}

/// The deletion tests' hook: stalls commit-log syncs (`log`, armed), stalls syncs of the
/// deleted-topics file (which `delete_topic` writes under the put lock) while
/// `deletion` is armed, and fails syncs of the store's root directory once `fail_root`
/// is set (a deletion then poisons the store after its rename).
struct DeletionHook {
    root: std::path::PathBuf,
    log: Arc<StallSync>,
    deletion: Arc<StallSync>,
    fail_root: AtomicBool,
}

impl DeletionHook {
    fn new(root: &Path, stall_deletion: bool) -> Arc<Self> {
        Arc::new(DeletionHook {
            root: root.to_path_buf(),
            log: StallSync::new(true),
            deletion: StallSync::new(stall_deletion),
            fail_root: AtomicBool::new(false),
        })
    }
}

impl IoHook for DeletionHook {
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        if path.starts_with(rocketstore::layout::commit_log_dir(&self.root)) {
            return self.log.before_sync(path);
        }
        if path.starts_with(&self.root) && path.extension().is_some_and(|e| e == "tmp") {
            return self.deletion.before_sync(path);
        }
        Ok(())
    }
    fn before_sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fail_root.load(Ordering::SeqCst) && dir == self.root {
            return Err(io::Error::other("injected EIO"));
        }
        Ok(())
    }
}

/// The store is poisoned while a flush is stuck (so the flush thread cannot fail the
/// waiting futures): a future whose deadline passes then must fail, not report its put
/// stored with `FlushDiskTimeout`. A gathered put's bytes never reach the file once the
/// log refuses writes, and the next open gives its offset to another message.
#[test]
fn a_future_timing_out_on_a_poisoned_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let hook = DeletionHook::new(dir.path(), false);
    let mode = FlushMode::Sync {
        timeout: Duration::from_millis(200),
    };
    let store = MessageStore::open(config(dir.path(), mode).io_hook(hook.clone())).unwrap();
    let first = store.put_message_async(message("T", 0, "t", 0));
    hook.log.wait_stalled();
    let gathered = store.put_message_async(message("T", 0, "t", 1));
    hook.fail_root.store(true, Ordering::SeqCst);
    let deleted = store.delete_topic("X");
    let first = pollster::block_on(first);
    let gathered = pollster::block_on(gathered);
    // Released before asserting: a stuck flush would hang the store's shutdown.
    hook.log.release();
    assert!(deleted.is_err());
    assert!(
        matches!(gathered, Err(Error::Poisoned { .. })),
        "{gathered:?}"
    );
    assert!(matches!(first, Err(Error::Poisoned { .. })), "{first:?}");
    assert!(store.shutdown().is_err());
}

/// While another thread holds the put lock in the kernel, futures whose bytes are in the
/// page cache still time out on time; one whose bytes are only gathered times out once
/// they can be written.
#[test]
fn futures_time_out_while_the_put_lock_is_held_in_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let hook = DeletionHook::new(dir.path(), true);
    let mode = FlushMode::Sync {
        timeout: Duration::from_millis(100),
    };
    let store =
        Arc::new(MessageStore::open(config(dir.path(), mode).io_hook(hook.clone())).unwrap());
    // In the page cache: the stuck flush wrote it before its sync.
    let written = store.put_message_async(message("T", 0, "t", 0));
    hook.log.wait_stalled();
    let gathered = store.put_message_async(message("T", 0, "t", 1));
    let deleting = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.delete_topic("X"))
    };
    hook.deletion.wait_stalled();
    let resolve = |f: rocketstore::PutFuture| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || tx.send(pollster::block_on(f)).unwrap());
        rx
    };
    let (written, gathered) = (resolve(written), resolve(gathered));
    let written = written.recv_timeout(Duration::from_secs(10));
    // The put lock is still held: the gathered put's bytes cannot be in the page cache.
    let gathered_early = gathered.recv_timeout(Duration::from_millis(200)).is_ok();
    // Released before asserting: stuck syncs would hang the store's shutdown.
    hook.deletion.release();
    let gathered = gathered.recv_timeout(Duration::from_secs(10));
    hook.log.release();
    let written = written.expect("timed out on time").unwrap();
    assert_eq!(written.status, PutStatus::FlushDiskTimeout);
    assert!(
        !gathered_early,
        "a gathered put reported stored before it was written"
    );
    assert_eq!(
        gathered.unwrap().unwrap().status,
        PutStatus::FlushDiskTimeout
    );
    deleting.join().unwrap().unwrap();
    Arc::try_unwrap(store).ok().unwrap().shutdown().unwrap();
}

/// A waker that puts again at once, on whatever thread wakes it.
struct PutAgain {
    store: Arc<MessageStore>,
    done: crossbeam_channel::Sender<()>,
}

impl std::task::Wake for PutAgain {
    fn wake(self: Arc<Self>) {
        let again = self.store.put_message_async(message("T", 0, "t", 1));
        drop(again);
        let _ = self.done.send(());
    }
}

/// A future's waker runs on the store's flush thread: one that puts again at once must
/// not find the store's locks held (it would deadlock the flush thread).
#[test]
fn a_waker_that_puts_again_does_not_deadlock_the_flush_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hook) = open_stalled(dir.path());
    let store = Arc::new(store);
    let mut future = Box::pin(store.put_message_async(message("T", 0, "t", 0)));
    hook.wait_stalled();
    let (done, woken) = crossbeam_channel::bounded(2);
    let waker = std::task::Waker::from(Arc::new(PutAgain {
        store: Arc::clone(&store),
        done,
    }));
    let polled = future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    assert!(polled.is_pending());
    drop(waker);
    hook.release();
    if woken.recv_timeout(Duration::from_secs(10)).is_err() {
        // Dropping the store would join the deadlocked flush thread: fail instead.
        std::mem::forget(store);
        panic!("the waker's put never returned");
    }
    assert_eq!(
        store
            .put_message(&message("T", 0, "t", 2))
            .unwrap()
            .queue_offset,
        2
    );
}
