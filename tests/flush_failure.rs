//! Failed syncs and odd timeouts: a flush racing a failed fsync never reports the lost bytes
//! as durable, a failed consume-queue sync never lets the checkpoint vouch for entries, the
//! checkpoint keeps up under steady async load, and a timeout of `Duration::MAX` means no
//! deadline rather than a panic.

mod common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::{Receiver, Sender, unbounded};
use rocketstore::layout;
use rocketstore::{
    CheckpointTimes, Error, FlushMode, IoHook, MessageStore, PutStatus, StoreConfig,
};

/// Fails the first sync of a file whose path contains `part`, after signalling it and
/// (when `block`) waiting to be released; later syncs succeed, as a retried fsync does on
/// Linux after the kernel dropped the dirty pages.
struct FailFirstSync {
    part: &'static str,
    block: bool,
    calls: AtomicUsize,
    reached: (Sender<()>, Receiver<()>),
    release: (Sender<()>, Receiver<()>),
}

impl FailFirstSync {
    fn new(part: &'static str, block: bool) -> Arc<Self> {
        Arc::new(FailFirstSync {
            part,
            block,
            calls: AtomicUsize::new(0),
            reached: unbounded(),
            release: unbounded(),
        })
    }
}

impl IoHook for FailFirstSync {
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        if !path.to_string_lossy().contains(self.part) {
            return Ok(());
        }
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = self.reached.0.send(());
            if self.block {
                let _ = self.release.1.recv();
            }
            return Err(io::Error::other("injected sync failure"));
        }
        Ok(())
    }
}

fn never_flushes() -> FlushMode {
    FlushMode::Async {
        interval: Duration::from_secs(3600),
        least_pages: 1 << 20,
        thorough_interval: Duration::from_secs(3600),
    }
}

#[test]
fn a_flush_waiting_behind_a_failed_fsync_does_not_report_success() {
    let dir = tempfile::tempdir().unwrap();
    let hook = FailFirstSync::new(layout::COMMIT_LOG_DIR, true);
    let store = Arc::new(
        MessageStore::open(config(dir.path(), never_flushes()).io_hook(hook.clone())).unwrap(),
    );
    store.put_message(&message("F", 0, "f", 0)).unwrap();
    let s = Arc::clone(&store);
    let first = std::thread::spawn(move || s.flush());
    hook.reached.1.recv().unwrap(); // the first flush is inside its fsync

    let (tx, rx) = unbounded();
    let s = Arc::clone(&store);
    let second = std::thread::spawn(move || {
        let r = s.flush();
        tx.send(()).unwrap();
        r
    });
    // Give the second flush the chance to queue behind the first (a probe, not a
    // condition of success), then let the first fail.
    let _ = rx.recv_timeout(Duration::from_millis(200));
    hook.release.0.send(()).unwrap();
    assert!(first.join().unwrap().is_err());
    let second = second.join().unwrap();
    assert!(
        matches!(second, Err(Error::Poisoned { .. })),
        "the lost bytes were reported durable: {second:?}"
    );
    assert_eq!(store.flushed_physical_offset(), 0);
    assert!(store.put_message(&message("F", 0, "f", 1)).is_err());
}

#[test]
fn duration_max_means_no_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(
        dir.path(),
        FlushMode::Sync {
            timeout: Duration::MAX,
        },
    ))
    .unwrap();
    let put = store.put_message(&message("M", 0, "m", 0)).unwrap();
    assert_eq!(put.status, PutStatus::Ok);
    let fut = pollster::block_on(store.put_message_async(message("M", 0, "m", 1))).unwrap();
    assert_eq!(fut.status, PutStatus::Ok);
    assert!(store.wait_dispatched(fut.physical_offset, Duration::MAX));
    assert_eq!(store.max_offset_in_queue("M", 0), 2);
}

fn checkpoint(dir: &Path) -> CheckpointTimes {
    CheckpointTimes::read(&layout::checkpoint_file(dir))
        .unwrap()
        .unwrap_or_default()
}

#[test]
fn a_failed_queue_sync_never_lets_the_checkpoint_advance() {
    let dir = tempfile::tempdir().unwrap();
    let hook = FailFirstSync::new(layout::CONSUME_QUEUE_DIR, false);
    let cfg = |d: &Path| -> StoreConfig {
        config(d, sync_mode()).consume_queue_flush_interval(Duration::from_millis(10))
    };
    let store = MessageStore::open(cfg(dir.path()).io_hook(hook.clone())).unwrap();
    let before = checkpoint(dir.path());
    let puts: Vec<_> = (0..20)
        .map(|i| store.put_message(&message("Q", 0, "q", i)).unwrap())
        .collect();
    hook.reached.1.recv().unwrap(); // the first queue sync has failed
    for i in 20..40 {
        store.put_message(&message("Q", 0, "q", i)).unwrap();
    }
    // The shutdown's queue sync "succeeds", but cannot vouch for what the failed one lost.
    assert!(store.shutdown().is_err());
    assert!(layout::abort_file(dir.path()).exists(), "marked clean");
    let after = checkpoint(dir.path());
    assert_eq!(after.logics, before.logics, "checkpoint advanced");
    drop(store);

    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.max_offset_in_queue("Q", 0), 40);
    let got = store.get_message("Q", 0, 0, 40).unwrap();
    assert_eq!(got.messages[0].physical_offset, puts[0].physical_offset);
    assert_eq!(got.messages.len(), 40);
}

#[test]
fn the_checkpoint_advances_while_dispatch_runs_ahead_of_the_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(
        config(dir.path(), never_flushes()).consume_queue_flush_interval(Duration::from_millis(5)),
    )
    .unwrap();
    let first: Vec<_> = (0..50)
        .map(|i| store.put_message(&message("C", 0, "c", i)).unwrap())
        .collect();
    store.flush().unwrap();
    let first_last = first.last().unwrap().physical_offset;
    assert!(store.wait_dispatched(first_last, Duration::from_secs(30)));
    let second: Vec<_> = (50..100)
        .map(|i| store.put_message(&message("C", 0, "c", i)).unwrap())
        .collect();
    let last = second.last().unwrap();
    assert!(store.wait_dispatched(last.physical_offset, Duration::from_secs(30)));
    assert!(store.flushed_physical_offset() < last.end_offset());
    // Observe the dispatch thread's next checkpoints until it covers the second batch.
    let deadline = Instant::now() + Duration::from_secs(30);
    let cp = loop {
        let cp = checkpoint(dir.path());
        if cp.logics >= last.store_timestamp || Instant::now() > deadline {
            break cp;
        }
        std::thread::yield_now();
    };
    assert!(cp.logics >= last.store_timestamp, "{cp:?}");
    let flushed_end = first.last().unwrap();
    assert_eq!(cp.physic_offset, flushed_end.end_offset(), "{cp:?}");
    assert_eq!(cp.physic, flushed_end.store_timestamp, "{cp:?}");
}

#[test]
fn a_poisoning_is_recorded_for_the_next_open_which_writes_the_tail_again() {
    let dir = tempfile::tempdir().unwrap();
    let hook = FailFirstSync::new(layout::COMMIT_LOG_DIR, false);
    let store = MessageStore::open(config(dir.path(), never_flushes()).io_hook(hook)).unwrap();
    let first = store.put_message(&message("F", 0, "f", 0)).unwrap();
    assert!(store.flush().is_err());
    let abort = layout::abort_file(dir.path());
    let recorded = std::fs::read_to_string(&abort).unwrap();
    assert_eq!(recorded.trim(), "poisoned at flushed offset 0");
    assert!(store.shutdown().is_err());
    drop(store);

    // The next open (same boot: the page cache still holds the record) writes the bytes
    // past that offset again before syncing them, then forgets the record.
    let store = open(dir.path(), sync_mode());
    assert_eq!(std::fs::read_to_string(&abort).unwrap(), "");
    let m = store
        .lookup_message(first.physical_offset)
        .unwrap()
        .unwrap();
    assert_eq!(m.body, body("f", 0));
}

/// Ten puts, a clean shutdown, and a checkpoint that vouches only below the sixth (as
/// after a crash that left the rest past the durable point).
fn ten_puts_vouched_below_the_sixth(dir: &Path) -> Vec<rocketstore::PutResult> {
    let puts: Vec<_> = {
        let store = open(dir, sync_mode());
        let puts = (0..10)
            .map(|i| store.put_message(&message("F", 0, "f", i)).unwrap())
            .collect();
        store.shutdown().unwrap();
        puts
    };
    checkpoint_vouches_below(dir, puts[5].physical_offset);
    puts
}

/// The next open acts on the recorded poisoning (and forgets it), then serves every put.
fn reopens_clean_and_serves(dir: &Path, puts: &[rocketstore::PutResult]) {
    let store = open(dir, sync_mode());
    let abort = layout::abort_file(dir);
    assert_eq!(std::fs::read_to_string(&abort).unwrap(), "");
    for (i, put) in puts.iter().enumerate() {
        let m = store.lookup_message(put.physical_offset).unwrap().unwrap();
        assert_eq!(m.body, body("f", i as u64));
    }
}

/// A crash recovery whose sync of the log fails may leave the crashed run's pages marked
/// clean without being on disk: the failed open records a poisoning at no more than what
/// the checkpoint vouched for, so that the next open (same boot) writes those bytes again
/// instead of trusting the page cache, then serves every message.
#[test]
fn a_recovery_whose_sync_fails_records_a_poisoning_for_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let puts = ten_puts_vouched_below_the_sixth(dir.path());
    let abort = layout::abort_file(dir.path());
    std::fs::write(&abort, b"").unwrap();
    let hook = FailFirstSync::new(layout::COMMIT_LOG_DIR, false);
    assert!(MessageStore::open(config(dir.path(), sync_mode()).io_hook(hook)).is_err());
    let recorded = std::fs::read_to_string(&abort).unwrap();
    let at: u64 = recorded
        .trim()
        .strip_prefix("poisoned at flushed offset ")
        .unwrap_or_else(|| panic!("no poisoning recorded: {recorded:?}"))
        .parse()
        .unwrap();
    assert!(at <= puts[5].physical_offset, "{at}");
    reopens_clean_and_serves(dir.path(), &puts);
}

/// Fails the first commit-log sync (as `FailFirstSync`) and every replacement of the abort
/// marker (a full disk).
struct FailLogSyncAndMarker(Arc<FailFirstSync>);

impl IoHook for FailLogSyncAndMarker {
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        self.0.before_sync(path)
    }

    fn before_create(&self, path: &Path) -> io::Result<()> {
        if path.ends_with(layout::abort_file(Path::new("")).with_extension("tmp")) {
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
}

/// A poisoning recorded by an earlier run survives a failed attempt to record a new one:
/// the marker is replaced whole or not at all, never left empty (an empty marker would
/// let the next open trust pages a failed sync may have left unwritten).
#[test]
fn a_poisoning_record_that_cannot_be_rewritten_keeps_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let puts = ten_puts_vouched_below_the_sixth(dir.path());
    let abort = layout::abort_file(dir.path());
    let before = format!("poisoned at flushed offset {}\n", puts[8].physical_offset);
    std::fs::write(&abort, &before).unwrap();
    let hook = Arc::new(FailLogSyncAndMarker(FailFirstSync::new(
        layout::COMMIT_LOG_DIR,
        false,
    )));
    assert!(MessageStore::open(config(dir.path(), sync_mode()).io_hook(hook)).is_err());
    assert_eq!(std::fs::read_to_string(&abort).unwrap(), before);
    reopens_clean_and_serves(dir.path(), &puts);
}
