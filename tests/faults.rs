//! Injected faults in file creation, allocation and rename, and damaged stores at open:
//! each gives a clear error, nothing acknowledged is affected, and the store goes on.

mod common;

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use common::*;
use rocketstore::layout;
use rocketstore::{Error, IoHook, MessageStore};

/// Fails the named step of commit-log file creation while `armed` holds that step.
#[derive(Default)]
struct FailStep {
    armed: AtomicU8,
}

const CREATE: u8 = 1;
const ALLOCATE: u8 = 2;
const RENAME: u8 = 3;

impl FailStep {
    fn fail(&self, step: u8, path: &Path) -> io::Result<()> {
        let commit_log = path
            .parent()
            .is_some_and(|p| p.ends_with(layout::COMMIT_LOG_DIR));
        if commit_log && self.armed.load(Ordering::SeqCst) == step {
            return Err(io::Error::other(format!("injected failure of step {step}")));
        }
        Ok(())
    }
}

impl IoHook for FailStep {
    fn before_create(&self, path: &Path) -> io::Result<()> {
        self.fail(CREATE, path)
    }
    fn before_allocate(&self, path: &Path) -> io::Result<()> {
        self.fail(ALLOCATE, path)
    }
    fn before_rename(&self, path: &Path) -> io::Result<()> {
        self.fail(RENAME, path)
    }
}

#[test]
fn a_failed_create_allocate_or_rename_fails_the_roll_and_the_store_goes_on() {
    for (step, op) in [
        (CREATE, "create"),
        (ALLOCATE, "allocate"),
        (RENAME, "rename"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(FailStep::default());
        let store = MessageStore::open(
            config(dir.path(), sync_mode())
                .preallocate(false)
                .io_hook(hook.clone()),
        )
        .unwrap();
        hook.armed.store(step, Ordering::SeqCst);
        let mut acked = Vec::new();
        let err = loop {
            let i = acked.len() as u64;
            match store.put_message(&message("F", 0, "f", i)) {
                Ok(r) => acked.push(r),
                Err(e) => break e,
            }
        };
        match &err {
            Error::Io { op: got, .. } => assert_eq!(*got, op, "{err}"),
            other => panic!("{op}: unexpected {other}"),
        }
        assert!(err.to_string().contains("injected"), "{err}");
        // No half-made file is left under a real name.
        let names: Vec<_> = fs::read_dir(layout::commit_log_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["00000000000000000000"], "{op}: {names:?}");
        for (i, r) in acked.iter().enumerate() {
            let m = store.lookup_message(r.physical_offset).unwrap().unwrap();
            assert_eq!(m.body, body("f", i as u64));
        }
        hook.armed.store(0, Ordering::SeqCst);
        let next = store.put_message(&message("F", 0, "f", 0)).unwrap();
        assert_eq!(next.queue_offset, acked.len() as u64);
        assert_eq!(next.physical_offset, SMALL_FILE);
    }
}

#[test]
fn after_a_failed_roll_under_sync_flush_the_file_end_is_flushed_and_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailStep::default());
    let store = MessageStore::open(
        config(dir.path(), sync_mode())
            .preallocate(false)
            .io_hook(hook.clone()),
    )
    .unwrap();
    hook.armed.store(ALLOCATE, Ordering::SeqCst);
    let mut i = 0;
    while store.put_message(&message("F", 0, "f", i)).is_ok() {
        i += 1;
    }
    // The failed put ended the first file with a blank record. No put follows (a disk
    // that stays full): the blank must still become durable, or readers and dispatch
    // stop short of the log's end, and whoever waits for it (a topic deletion, a caller
    // of wait_dispatched_to) waits forever.
    let end = store.max_physical_offset();
    assert_eq!(end, SMALL_FILE);
    assert!(
        store.wait_dispatched_to(end, std::time::Duration::from_secs(10)),
        "dispatch stopped at {} of {end}",
        store.flushed_physical_offset()
    );
    assert_eq!(store.flushed_physical_offset(), end);
    store.delete_topic("F").unwrap();
    hook.armed.store(0, Ordering::SeqCst);
    let next = store.put_message(&message("F", 0, "f", 0)).unwrap();
    assert_eq!((next.physical_offset, next.queue_offset), (SMALL_FILE, 0));
}

/// Fails every allocation of a consume-queue file while armed.
#[derive(Default)]
struct FailQueueAllocate(std::sync::atomic::AtomicBool);

impl IoHook for FailQueueAllocate {
    fn before_allocate(&self, path: &Path) -> io::Result<()> {
        let queue = path
            .components()
            .any(|c| c.as_os_str() == layout::CONSUME_QUEUE_DIR);
        if queue && self.0.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected queue allocation failure"));
        }
        Ok(())
    }
}

#[test]
fn a_reader_waiting_on_a_failing_dispatch_does_not_make_it_spin() {
    // Dispatch retries a failed round after a pause. A reader waiting for it rings it
    // awake, and the failed round wakes the reader: each must not cut the other's wait
    // short, or the two spin on both cores for as long as the failure lasts (a full disk).
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailQueueAllocate::default());
    let store = MessageStore::open(config(dir.path(), sync_mode()).io_hook(hook.clone())).unwrap();
    hook.0.store(true, Ordering::SeqCst);
    let put = store.put_message(&message("W", 0, "w", 0)).unwrap();
    let before = store.stats().dispatch_failures;
    assert!(!store.wait_dispatched(put.physical_offset, std::time::Duration::from_secs(1)));
    let rounds = store.stats().dispatch_failures - before;
    // One retry per 100 ms: about ten in the second; before the fix, thousands.
    assert!(rounds <= 40, "{rounds} failed rounds in one second");
    hook.0.store(false, Ordering::SeqCst);
    assert!(store.wait_dispatched(put.physical_offset, std::time::Duration::from_secs(30)));
}

/// Records the directories synced.
#[derive(Default)]
struct SyncedDirs(std::sync::Mutex<Vec<std::path::PathBuf>>);

impl IoHook for SyncedDirs {
    fn before_sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.lock().unwrap().push(dir.to_owned());
        Ok(())
    }
}

#[test]
fn a_new_store_directory_is_durable_in_its_parent() {
    // Without a sync of the parent, a power cut may take the new root (and every
    // acknowledged put in it) away: a directory entry is durable only once its directory
    // is synced.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a").join("store");
    let hook = Arc::new(SyncedDirs::default());
    let store = MessageStore::open(config(&root, sync_mode()).io_hook(hook.clone())).unwrap();
    store.put_message(&message("D", 0, "d", 0)).unwrap();
    let synced = hook.0.lock().unwrap().clone();
    for parent in [dir.path().to_owned(), dir.path().join("a")] {
        assert!(synced.contains(&parent), "{parent:?} not in {synced:?}");
    }
}

/// Fails the allocation of one commit-log file while armed; records every file begun.
struct FailFile {
    path: std::path::PathBuf,
    armed: std::sync::atomic::AtomicBool,
    begun: std::sync::Mutex<Vec<std::path::PathBuf>>,
}

impl IoHook for FailFile {
    fn before_create(&self, path: &Path) -> io::Result<()> {
        self.begun.lock().unwrap().push(path.to_owned());
        Ok(())
    }
    fn before_allocate(&self, path: &Path) -> io::Result<()> {
        if self.armed.load(Ordering::SeqCst) && path == self.path {
            return Err(io::Error::other("injected allocation failure"));
        }
        Ok(())
    }
}

#[test]
fn a_file_prepared_ahead_that_fails_leaves_no_gap_in_the_names() {
    // The allocation thread prepares two files ahead. When the first of them fails, the
    // second must not be made: a file past a missing one would refuse the next open.
    let dir = tempfile::tempdir().unwrap();
    let log = layout::commit_log_dir(dir.path());
    let hook = Arc::new(FailFile {
        path: log.join(layout::file_name(SMALL_FILE)),
        armed: true.into(),
        begun: Default::default(),
    });
    let cfg = config(dir.path(), sync_mode())
        .preallocate(true)
        .io_hook(hook.clone());
    let store = MessageStore::open(cfg.clone()).unwrap();
    let mut acked = Vec::new();
    let err = loop {
        match store.put_message(&message("G", 0, "g", acked.len() as u64)) {
            Ok(r) => acked.push(r),
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("injected"), "{err}");
    let names = || -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(), [layout::file_name(0)]);
    // The failed roll collected what the thread made of both files: the second was never
    // begun (removing it afterwards would leave a crash meanwhile with a gap).
    let second = log.join(layout::file_name(2 * SMALL_FILE));
    assert!(!hook.begun.lock().unwrap().contains(&second));
    // Once the disk lets it, the writer makes the file itself and goes on through the
    // next roll, into files the thread prepared again.
    hook.armed.store(false, Ordering::SeqCst);
    while acked.last().unwrap().physical_offset < 2 * SMALL_FILE {
        let i = acked.len() as u64;
        acked.push(store.put_message(&message("G", 0, "g", i)).unwrap());
    }
    store.shutdown().unwrap();
    let store = MessageStore::open(cfg).unwrap();
    for (i, r) in acked.iter().enumerate() {
        let m = store.lookup_message(r.physical_offset).unwrap().unwrap();
        assert_eq!(m.body, body("g", i as u64));
    }
    store.shutdown().unwrap();
}

/// Fails the directory syncs the allocation thread makes while armed: its files are then
/// renamed into place but their preparation fails. Records any moment a commit-log file
/// is begun while the one before it is missing, or removed while the one after it exists:
/// a crash then would leave a gap in the names.
#[derive(Default)]
struct FailThreadDirSync {
    armed: std::sync::atomic::AtomicBool,
    gaps: std::sync::Mutex<Vec<String>>,
}

impl FailThreadDirSync {
    /// Records a gap when the commit-log file `delta` files after `path` exists (or, with
    /// `missing`, does not).
    fn check(&self, path: &Path, delta: i64, missing: bool, what: &str) {
        if !path
            .parent()
            .is_some_and(|p| p.ends_with(layout::COMMIT_LOG_DIR))
        {
            return;
        }
        let Some(at) = path
            .file_name()
            .and_then(|n| n.to_str()?.parse::<i64>().ok())
        else {
            return;
        };
        let Ok(other) = u64::try_from(at + delta * SMALL_FILE as i64) else {
            return;
        };
        let other = path.with_file_name(layout::file_name(other));
        if other.exists() != missing {
            let state = if missing { "missing" } else { "there" };
            let gap = format!("{path:?} {what} while {other:?} is {state}");
            self.gaps.lock().unwrap().push(gap);
        }
    }
}

impl IoHook for FailThreadDirSync {
    fn before_create(&self, path: &Path) -> io::Result<()> {
        self.check(path, -1, true, "begun");
        Ok(())
    }
    fn before_remove(&self, path: &Path) -> io::Result<()> {
        self.check(path, 1, false, "removed");
        Ok(())
    }
    fn before_sync_dir(&self, dir: &Path) -> io::Result<()> {
        let thread = std::thread::current();
        if self.armed.load(Ordering::SeqCst)
            && thread.name() == Some("rocketstore-allocate")
            && dir.ends_with(layout::COMMIT_LOG_DIR)
        {
            return Err(io::Error::other("injected directory sync failure"));
        }
        Ok(())
    }
}

#[test]
fn a_file_prepared_ahead_that_fails_after_its_rename_is_made_again_by_the_writer() {
    // Every file ahead is renamed into place, then its preparation fails: the writer
    // makes each itself when it rolls, puts never fail, and no file is ever begun past a
    // missing one or removed before a later one.
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(FailThreadDirSync::default());
    hook.armed.store(true, Ordering::SeqCst);
    let cfg = config(dir.path(), sync_mode())
        .preallocate(true)
        .io_hook(hook.clone());
    let store = MessageStore::open(cfg.clone()).unwrap();
    let mut acked: Vec<rocketstore::PutResult> = Vec::new();
    while acked
        .last()
        .is_none_or(|r| r.physical_offset < 3 * SMALL_FILE)
    {
        let i = acked.len() as u64;
        acked.push(store.put_message(&message("H", 0, "h", i)).unwrap());
    }
    hook.armed.store(false, Ordering::SeqCst);
    while acked.last().unwrap().physical_offset < 5 * SMALL_FILE {
        let i = acked.len() as u64;
        acked.push(store.put_message(&message("H", 0, "h", i)).unwrap());
    }
    store.shutdown().unwrap();
    assert_eq!(*hook.gaps.lock().unwrap(), Vec::<String>::new());
    let store = MessageStore::open(cfg).unwrap();
    for (i, r) in acked.iter().enumerate() {
        let m = store.lookup_message(r.physical_offset).unwrap().unwrap();
        assert_eq!(m.body, body("h", i as u64));
    }
    store.shutdown().unwrap();
}

#[test]
fn damaged_stores_give_clear_errors_or_documented_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let puts: Vec<_> = {
        let store = open(dir.path(), sync_mode());
        (0..300)
            .map(|i| store.put_message(&message("D", 0, "d", i)).unwrap())
            .collect()
    };
    let log = layout::commit_log_dir(dir.path());

    // A stray file name in commitlog/: refused, naming the file.
    fs::write(log.join("notes.txt"), b"x").unwrap();
    let err = MessageStore::open(config(dir.path(), sync_mode())).unwrap_err();
    assert!(matches!(err, Error::BadStoreFile { .. }) && err.to_string().contains("notes.txt"));
    fs::remove_file(log.join("notes.txt")).unwrap();

    // A commit-log file of the wrong size after a clean exit: refused.
    let first = log.join(layout::file_name(0));
    let saved = fs::read(&first).unwrap();
    fs::write(&first, &saved[..1000]).unwrap();
    let err = MessageStore::open(config(dir.path(), sync_mode())).unwrap_err();
    assert!(err.to_string().contains("size"), "{err}");
    fs::write(&first, &saved).unwrap();

    // A truncated checkpoint: recovery after a crash scans the whole log instead.
    fs::write(layout::checkpoint_file(dir.path()), b"\x00\x01").unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = open(dir.path(), sync_mode());
    for p in &puts {
        assert!(store.lookup_message(p.physical_offset).unwrap().is_some());
    }
    assert_eq!(store.max_offset_in_queue("D", 0), 300);
    drop(store);

    // A missing consume-queue directory: rebuilt from the log.
    fs::remove_dir_all(layout::consume_queue_dir(dir.path()).join("D")).unwrap();
    let store = open(dir.path(), sync_mode());
    assert_eq!(store.max_offset_in_queue("D", 0), 300);
    assert_eq!(
        store.get_message("D", 0, 299, 1).unwrap().messages[0].physical_offset,
        puts[299].physical_offset
    );

    // A stray directory in the consume-queue tree: refused, naming it.
    drop(store);
    fs::create_dir_all(layout::consume_queue_dir(dir.path()).join("bad name")).unwrap();
    let err = MessageStore::open(config(dir.path(), sync_mode())).unwrap_err();
    assert!(matches!(err, Error::BadStoreFile { .. }), "{err}");
}

/// Records every directory sync.
#[derive(Default)]
struct RecordDirSyncs {
    dirs: std::sync::Mutex<Vec<std::path::PathBuf>>,
}

impl IoHook for RecordDirSyncs {
    fn before_sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.dirs.lock().unwrap().push(dir.to_owned());
        Ok(())
    }
}

#[test]
fn new_queue_directories_and_removed_queue_files_are_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(RecordDirSyncs::default());
    let cfg = || {
        config(dir.path(), sync_mode())
            .consume_queue_entries_per_file(4)
            .io_hook(hook.clone())
    };
    let store = MessageStore::open(cfg()).unwrap();
    let put = store.put_message(&message("NewTopic", 7, "n", 0)).unwrap();
    assert!(store.wait_dispatched(put.physical_offset, std::time::Duration::from_secs(30)));
    // New names are synced with the entries, before the checkpoint vouches for them: at
    // the latest by the flush of a clean shutdown.
    store.shutdown().unwrap();
    drop(store);
    let cq = layout::consume_queue_dir(dir.path());
    let synced = hook.dirs.lock().unwrap().clone();
    // The queue directory's name lives in the topic directory, whose name lives in
    // consumequeue/: both must be synced, or a crash can lose the path to the entries.
    assert!(synced.contains(&cq.join("NewTopic")), "{synced:?}");
    assert!(synced.contains(&cq), "{synced:?}");
    assert!(synced.contains(&cq.join("NewTopic/7")), "{synced:?}");
    let store = MessageStore::open(cfg()).unwrap();
    for i in 1..10 {
        store.put_message(&message("NewTopic", 7, "n", i)).unwrap();
    }
    drop(store);

    // A crash whose last checkpoint had only the first entry durable: recovery drops and
    // re-creates the queue files past it; their removal is synced too, by the first
    // queue flush after the open at the latest (here, the shutdown's).
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let cp_path = layout::checkpoint_file(dir.path());
    let cp = rocketstore::CheckpointTimes::read(&cp_path)
        .unwrap()
        .unwrap();
    rocketstore::CheckpointTimes {
        logics_offset: put.physical_offset + u64::from(put.wrote_bytes),
        ..cp
    }
    .write(&cp_path)
    .unwrap();
    hook.dirs.lock().unwrap().clear();
    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.max_offset_in_queue("NewTopic", 7), 10);
    store.shutdown().unwrap();
    let synced = hook.dirs.lock().unwrap().clone();
    assert!(synced.contains(&cq.join("NewTopic/7")), "{synced:?}");
}

/// Holds the first consume-queue allocation until released, then, while armed, fails
/// every one of a queue numbered `fail_from` or above as a full disk would; counts both,
/// and notes the names of the threads that failed.
#[derive(Default)]
struct QueuesOutOfSpace {
    hold: std::sync::atomic::AtomicBool,
    armed: std::sync::atomic::AtomicBool,
    fail_from: u32,
    entered: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    failed_on: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl IoHook for QueuesOutOfSpace {
    fn before_allocate(&self, path: &Path) -> io::Result<()> {
        let queue = path
            .ancestors()
            .any(|p| p.ends_with(layout::CONSUME_QUEUE_DIR));
        if !queue {
            return Ok(());
        }
        self.entered.fetch_add(1, Ordering::SeqCst);
        while self.hold.load(Ordering::SeqCst) {
            std::thread::park_timeout(std::time::Duration::from_millis(1));
        }
        // `consumequeue/{topic}/{queue}/{file}`
        let queue_id = path
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok());
        if self.armed.load(Ordering::SeqCst) && queue_id.is_some_and(|id| id >= self.fail_from) {
            let me = std::thread::current().name().unwrap_or("").to_owned();
            if me == "rocketstore-dispatch" {
                // The dispatch thread's half of a two-thread round fails only once the
                // second thread's has (bounded, in case no second thread runs).
                wait_until_or_timeout(|| {
                    self.failed_on
                        .lock()
                        .unwrap()
                        .contains("rocketstore-queue-commit")
                });
            }
            self.failed.fetch_add(1, Ordering::SeqCst);
            self.failed_on.lock().unwrap().insert(me);
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        Ok(())
    }
}

/// Waits until `done` holds, for at most 10 s.
fn wait_until_or_timeout(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() && std::time::Instant::now() < deadline {
        std::thread::park_timeout(std::time::Duration::from_millis(1));
    }
}

/// Waits until `done` holds, for at most 30 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::park_timeout(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_dispatch_round_over_many_queues_that_fails_publishes_every_queue_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Arc::new(QueuesOutOfSpace {
        fail_from: 75,
        ..QueuesOutOfSpace::default()
    });
    hook.hold.store(true, Ordering::SeqCst);
    hook.armed.store(true, Ordering::SeqCst);
    let store = MessageStore::open(config(dir.path(), async_mode()).io_hook(hook.clone())).unwrap();
    // Dispatch's first round holds at its first allocation while the puts go on, so a
    // later round creates the other queues' files, from two threads: the dispatch thread
    // from the front of the batch, the second one from its back, where the queues that
    // cannot get space are.
    let puts: Vec<_> = (0..300u64)
        .map(|i| {
            store
                .put_message(&message("P", (i % 150) as u32, "p", i))
                .unwrap()
        })
        .collect();
    wait_until("dispatch never allocated", || {
        hook.entered.load(Ordering::SeqCst) > 0
    });
    hook.hold.store(false, Ordering::SeqCst);
    wait_until("the second thread never failed", || {
        hook.failed_on
            .lock()
            .unwrap()
            .contains("rocketstore-queue-commit")
    });
    // No queue without space could write its file: none of them serves a message.
    for q in 75..150u32 {
        let r = store.get_message("P", q, 0, 8).unwrap();
        assert!(r.messages.is_empty(), "queue {q}: {:?}", r.status);
    }
    hook.armed.store(false, Ordering::SeqCst);
    for q in 0..150u32 {
        assert!(
            store.wait_for_message("P", q, 1, std::time::Duration::from_secs(30)),
            "queue {q} never got its second message"
        );
        let r = store.get_message("P", q, 0, 8).unwrap();
        let got: Vec<_> = r.messages.iter().map(|m| m.physical_offset).collect();
        let want = [
            puts[q as usize].physical_offset,
            puts[q as usize + 150].physical_offset,
        ];
        assert_eq!(got, want, "queue {q}");
    }
    store.shutdown().unwrap();
}

/// Fails the allocation of one queue's files as a full disk would, while armed.
struct QueueDirFull {
    dir: std::path::PathBuf,
    armed: std::sync::atomic::AtomicBool,
}

impl IoHook for QueueDirFull {
    fn before_allocate(&self, path: &Path) -> io::Result<()> {
        if self.armed.load(Ordering::SeqCst) && path.starts_with(&self.dir) {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        Ok(())
    }
}

/// Once a full disk stops crash recovery's indexing, the scan goes on to find the log's
/// end and notes each queue's next offset from its records, which the put path then
/// continues. QUEUEOFFSET is not under the body CRC: a damaged one was believed there,
/// and the queue's next put was numbered from it (2^40 on). It must continue its queue.
#[test]
fn a_damaged_queue_offset_after_recovery_stalls_on_a_full_disk_is_refused() {
    // Queue 0's first record after the stall (its queue on disk, or lost with it), and its
    // fourth.
    for (victim_at, queue_lost) in [(1, false), (1, true), (4, false)] {
        stalled_recovery_meets_a_damaged_queue_offset(victim_at, queue_lost);
    }
}

fn stalled_recovery_meets_a_damaged_queue_offset(victim_at: usize, queue_lost: bool) {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode());
    let puts: Vec<_> = {
        let store = MessageStore::open(cfg()).unwrap();
        let first = store.put_message(&message("A", 1, "a", 0)).unwrap();
        // Queue 0's records in the next file: the stall comes at the first file's end.
        fill_log_files(&store, "B", 1);
        let rest: Vec<_> = (0..6)
            .map(|i| store.put_message(&message("A", 0, "a", i)).unwrap())
            .collect();
        store.shutdown().unwrap();
        std::iter::once(first).chain(rest).collect()
    };
    // A crash whose queues vouch for nothing, queue 1's files lost: the scan indexes from
    // the log's start, and its first record needs a file the disk has no room for.
    assert!(puts[1].physical_offset >= SMALL_FILE);
    let path = layout::checkpoint_file(dir.path());
    let cp = rocketstore::CheckpointTimes::read(&path).unwrap().unwrap();
    let cp = rocketstore::CheckpointTimes {
        logics_offset: 0,
        ..cp
    };
    cp.write(&path).unwrap();
    let _ = fs::remove_file(layout::queue_table_file(dir.path()));
    fs::remove_dir_all(layout::queue_dir(dir.path(), "A", 1)).unwrap();
    if queue_lost {
        fs::remove_dir_all(layout::queue_dir(dir.path(), "A", 0)).unwrap();
    }
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    // The victim says it is 2^40 in its queue.
    let victim = puts[victim_at];
    fs::OpenOptions::new()
        .write(true)
        .open(layout::commit_log_file(dir.path(), SMALL_FILE))
        .unwrap()
        .write_all_at(
            &(1u64 << 40).to_be_bytes(),
            victim.physical_offset - SMALL_FILE + rocketstore::format::POS_QUEUE_OFFSET as u64,
        )
        .unwrap();
    let hook = Arc::new(QueueDirFull {
        dir: layout::queue_dir(dir.path(), "A", 1),
        armed: true.into(),
    });
    // Below what the checkpoint vouches for: refused, not cut and not believed.
    let case = format!("record {victim_at}, queue lost: {queue_lost}");
    match MessageStore::open(cfg().io_hook(hook)) {
        Err(Error::Corrupted { offset, .. }) => {
            assert_eq!(offset, victim.physical_offset, "{case}")
        }
        Err(e) => panic!("{case}: expected Corrupted, got {e}"),
        Ok(store) => panic!(
            "{case}: opened; queue 0's next put: {:?}",
            store
                .put_message(&message("A", 0, "a", 9))
                .map(|p| p.queue_offset)
        ),
    }
}

/// The same stall where nothing in the log is damaged but a queue lost the tail of its
/// file (derived data), its lost entries' records before the scan's start. That is the
/// queues' fault, not the log's: they are rebuilt (here before the stall: the rebuild
/// meets the stall, and the queue's records after it continue what it indexed), and
/// nothing is refused or cut.
#[test]
fn a_queue_short_on_disk_when_recovery_stalls_is_rebuilt_not_taken_for_damage() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode());
    let (end, next) = {
        let store = MessageStore::open(cfg()).unwrap();
        for i in 0..6 {
            store.put_message(&message("A", 0, "a", i)).unwrap();
        }
        fill_log_files(&store, "B", 1);
        // The record whose indexing stalls, then the file ends.
        store.put_message(&message("A", 1, "a", 0)).unwrap();
        fill_log_files(&store, "B", 2);
        let next = store.put_message(&message("A", 0, "a", 6)).unwrap();
        assert_eq!(next.queue_offset, 6);
        store.shutdown().unwrap();
        (store.max_physical_offset(), next)
    };
    // A crash whose queues vouch for the first file: the scan starts at the second.
    let path = layout::checkpoint_file(dir.path());
    let cp = rocketstore::CheckpointTimes::read(&path).unwrap().unwrap();
    rocketstore::CheckpointTimes {
        logics_offset: SMALL_FILE,
        ..cp
    }
    .write(&path)
    .unwrap();
    let _ = fs::remove_file(layout::queue_table_file(dir.path()));
    fs::remove_dir_all(layout::queue_dir(dir.path(), "A", 1)).unwrap();
    // Queue 0 lost its tail from entry 3 (records 3 to 5 are in the first file, below
    // the scan): it loads whole but short, so only the stalled scan can meet the misfit,
    // when record 6 comes where 3 is due.
    let queue_file = layout::queue_dir(dir.path(), "A", 0).join(layout::file_name(0));
    fs::OpenOptions::new()
        .write(true)
        .open(queue_file)
        .unwrap()
        .write_all_at(&[0u8; 80], 60)
        .unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let hook = Arc::new(QueueDirFull {
        dir: layout::queue_dir(dir.path(), "A", 1),
        armed: true.into(),
    });
    let store = MessageStore::open(cfg().io_hook(hook.clone())).expect("opens");
    assert_eq!(store.max_physical_offset(), end, "nothing cut");
    hook.armed.store(false, Ordering::SeqCst);
    let put = store.put_message(&message("A", 0, "a", 7)).unwrap();
    assert_eq!(
        put.queue_offset, 7,
        "the queue goes on after {}",
        next.queue_offset
    );
    assert!(store.wait_dispatched_to(
        store.max_physical_offset(),
        std::time::Duration::from_secs(30)
    ));
    assert_eq!(store.get_message("A", 0, 0, 16).unwrap().messages.len(), 8);
}

/// A rebuild that stalls on a full disk, after retention deleted the log's head, meets a
/// record of a queue it emptied (all the queue's entries pointed into the log, the first
/// of them at a deleted record): the queue starts where its first remaining record is,
/// as indexing would start it, and the intact record is neither refused nor cut.
#[test]
fn a_stalled_rebuild_takes_an_emptied_queue_from_its_first_remaining_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).file_reserved_time(std::time::Duration::ZERO);
    let puts = {
        let store = MessageStore::open(cfg()).unwrap();
        let mut puts = vec![
            store.put_message(&message("C", 0, "c", 0)).unwrap(),
            store.put_message(&message("C", 0, "c", 1)).unwrap(),
        ];
        fill_log_files(&store, "B", 1);
        let end = store.max_physical_offset();
        let long = std::time::Duration::from_secs(30);
        assert!(store.wait_dispatched_to(end, long));
        assert!(store.wait_dispatcher_durable("index", end, long));
        assert_eq!(store.delete_expired_files().unwrap(), 1);
        // The stall comes at the end of file 1, past X's record; C's follows in file 2.
        puts.push(store.put_message(&message("X", 0, "x", 0)).unwrap());
        fill_log_files(&store, "B", 2);
        puts.push(store.put_message(&message("C", 0, "c", 2)).unwrap());
        store.shutdown().unwrap();
        puts
    };
    assert_eq!(puts[3].queue_offset, 2);
    assert!(puts[2].physical_offset < 2 * SMALL_FILE);
    assert!(puts[3].physical_offset >= 2 * SMALL_FILE);
    // A lost queue directory makes the open rebuild the queues from the log's start.
    fs::remove_dir_all(layout::queue_dir(dir.path(), "B", 0)).unwrap();
    let hook = Arc::new(QueueDirFull {
        dir: layout::queue_dir(dir.path(), "X", 0),
        armed: true.into(),
    });
    let store = MessageStore::open(cfg().io_hook(hook.clone())).unwrap();
    for put in &puts[2..] {
        let m = store.lookup_message(put.physical_offset).unwrap().unwrap();
        assert_eq!(m.queue_offset, put.queue_offset);
    }
    assert!(store.max_physical_offset() > puts[3].physical_offset);
    // With room again, the queue goes on from its record.
    hook.armed.store(false, Ordering::SeqCst);
    assert_eq!(
        store
            .put_message(&message("C", 0, "c", 3))
            .unwrap()
            .queue_offset,
        3
    );
}
