//! Retention: expired commit-log files and the consume-queue files below the log's new
//! start are deleted, never the file being written; readers holding messages keep them;
//! offsets below the new minimum report `OffsetTooSmall`; reopening and rebuilding after
//! deletion keep the queues' offsets.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use rocketstore::layout;
use rocketstore::{GetStatus, MessageStore, StoreConfig};

fn cfg(dir: &Path) -> StoreConfig {
    config(dir, sync_mode())
        .consume_queue_entries_per_file(64)
        .file_reserved_time(Duration::ZERO)
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn expired_files_go_and_everything_after_them_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    let puts: Vec<_> = (0..1500u64)
        .map(|i| {
            store
                .put_message(&message("Ret", (i % 2) as u32, "r", i))
                .unwrap()
        })
        .collect();
    let last = puts.last().unwrap();
    settled(&store);
    let held = store
        .lookup_message(puts[0].physical_offset)
        .unwrap()
        .unwrap();
    let cq_files_before = count(&layout::queue_dir(dir.path(), "Ret", 0));

    let removed = store.delete_expired_files().unwrap();
    assert!(removed >= 5, "removed {removed}");
    let min = store.min_physical_offset();
    assert_eq!(
        min,
        last.physical_offset / SMALL_FILE * SMALL_FILE,
        "all but the writer's file"
    );
    // Only the writer's file (and the next one, prepared ahead) are left.
    for entry in fs::read_dir(layout::commit_log_dir(dir.path())).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name.parse::<u64>().unwrap() >= min, "{name} survived");
    }
    // A reader holding a message from a deleted file still has it.
    assert_eq!(held.body, body("r", 0));
    assert!(
        store
            .lookup_message(puts[0].physical_offset)
            .unwrap()
            .is_none()
    );
    assert!(count(&layout::queue_dir(dir.path(), "Ret", 0)) < cq_files_before);

    for q in 0..2u32 {
        let qmin = store.min_offset_in_queue("Ret", q);
        assert!(qmin > 0);
        let g = store.get_message("Ret", q, 0, 8).unwrap();
        assert_eq!(g.status, GetStatus::OffsetTooSmall);
        assert_eq!(g.next_offset, qmin);
        let g = store.get_message("Ret", q, qmin, 8).unwrap();
        assert_eq!(g.status, GetStatus::Found);
        assert!(g.messages[0].physical_offset >= min);
        let expected: Vec<_> = puts
            .iter()
            .enumerate()
            .filter(|(i, p)| (*i as u32) % 2 == q && p.physical_offset >= min)
            .collect();
        assert_eq!(g.messages[0].physical_offset, expected[0].1.physical_offset);
        assert_eq!(qmin, expected[0].1.queue_offset);
    }
    let next = store.put_message(&message("Ret", 0, "r", 0)).unwrap();
    assert_eq!(next.queue_offset, 750);
    drop(store);

    // A clean reopen keeps the minimums.
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.min_physical_offset(), min);
    let qmin0 = store.min_offset_in_queue("Ret", 0);
    assert!(qmin0 > 0);
    assert_eq!(store.max_offset_in_queue("Ret", 0), 751);
    drop(store);

    // Lost queues after a crash are rebuilt from what is left of the log, at the same
    // queue offsets.
    fs::remove_dir_all(layout::consume_queue_dir(dir.path())).unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.max_offset_in_queue("Ret", 0), 751);
    let qmin = store.min_offset_in_queue("Ret", 0);
    let g = store.get_message("Ret", 0, qmin, 4).unwrap();
    assert_eq!(g.status, GetStatus::Found);
    assert_eq!(g.messages[0].queue_offset, qmin);
    assert!(g.messages[0].physical_offset >= min);
    assert_eq!(
        store
            .put_message(&message("Ret", 0, "r", 1))
            .unwrap()
            .queue_offset,
        751
    );
    drop(store);
    // And that rebuilt queue reopens cleanly.
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.max_offset_in_queue("Ret", 0), 752);
    assert_eq!(store.min_offset_in_queue("Ret", 0), qmin);
}

#[test]
fn fresh_files_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(
        config(dir.path(), sync_mode()).file_reserved_time(Duration::from_secs(3600)),
    )
    .unwrap();
    for i in 0..800 {
        store.put_message(&message("Keep", 0, "k", i)).unwrap();
    }
    assert_eq!(store.delete_expired_files().unwrap(), 0);
    assert_eq!(store.min_physical_offset(), 0);
    settled(&store);
    assert_eq!(
        store.get_message("Keep", 0, 0, 1).unwrap().status,
        GetStatus::Found
    );
}

#[test]
fn above_the_clean_ratio_expired_files_go_without_waiting_for_the_hour() {
    let dir = tempfile::tempdir().unwrap();
    // Any real filesystem is more than 0.1% used, so every disk sample cleans.
    let store = MessageStore::open(
        cfg(dir.path())
            .disk_clean_ratios(0.001, 1.0)
            .disk_check_interval(Duration::from_millis(5)),
    )
    .unwrap();
    let mut last = 0;
    for i in 0..800u64 {
        last = store
            .put_message(&message("Auto", 0, "a", i))
            .unwrap()
            .physical_offset;
    }
    let started = std::time::Instant::now();
    while store.min_physical_offset() < last / SMALL_FILE * SMALL_FILE {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "retention never ran"
        );
        std::thread::yield_now();
    }
    assert!(store.wait_dispatched(last, Duration::from_secs(30)));
    let qmin = store.min_offset_in_queue("Auto", 0);
    assert!(qmin > 0);
    assert_eq!(
        store.get_message("Auto", 0, qmin, 1).unwrap().status,
        GetStatus::Found
    );
}

/// Stalls the removal of commit-log files until released; counts them.
struct StallRemove {
    removed: std::sync::atomic::AtomicUsize,
    block: bool,
    reached: (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
    release: (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
}

impl StallRemove {
    fn new(block: bool) -> std::sync::Arc<Self> {
        std::sync::Arc::new(StallRemove {
            removed: Default::default(),
            block,
            reached: crossbeam_channel::unbounded(),
            release: crossbeam_channel::unbounded(),
        })
    }
}

impl rocketstore::IoHook for StallRemove {
    fn before_remove(&self, path: &Path) -> std::io::Result<()> {
        if path
            .parent()
            .is_some_and(|p| p.ends_with(layout::COMMIT_LOG_DIR))
        {
            self.removed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = self.reached.0.send(());
            if self.block {
                let _ = self.release.1.recv();
            }
        }
        Ok(())
    }
}

fn fill_files(store: &MessageStore, n: u64) -> Vec<rocketstore::PutResult> {
    let puts: Vec<_> = (0..n)
        .map(|i| store.put_message(&message("Ret", 0, "r", i)).unwrap())
        .collect();
    settled(store);
    puts
}

#[test]
fn a_slow_deletion_does_not_stall_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StallRemove::new(true);
    let store = MessageStore::open(
        cfg(dir.path())
            .disk_clean_ratios(0.0, 1.0)
            .disk_check_interval(Duration::from_millis(5))
            .io_hook(hook.clone()),
    )
    .unwrap();
    fill_files(&store, 1500);
    hook.reached.1.recv().unwrap(); // retention is stuck unlinking a file
    // Indexing and reading go on meanwhile.
    let put = store.put_message(&message("Other", 0, "o", 0)).unwrap();
    let indexed = store.wait_dispatched(put.physical_offset, Duration::from_secs(10));
    for _ in 0..64 {
        let _ = hook.release.0.send(());
    }
    assert!(indexed, "dispatch waited for the deletion");
    assert_eq!(
        store.get_message("Other", 0, 0, 1).unwrap().messages.len(),
        1
    );
}

#[test]
fn retention_deletes_one_file_per_interval_and_shutdown_cuts_the_series_short() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StallRemove::new(false);
    let store = MessageStore::open(
        cfg(dir.path())
            .disk_clean_ratios(0.0, 1.0)
            .disk_check_interval(Duration::from_millis(5))
            .file_delete_interval(Duration::from_secs(3600))
            .io_hook(hook.clone()),
    )
    .unwrap();
    fill_files(&store, 1500);
    hook.reached.1.recv().unwrap(); // the first deletion
    // Shutdown does not wait out the interval, and nothing else was deleted meanwhile.
    store.shutdown().unwrap();
    assert_eq!(
        hook.removed.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "deletions were not spaced out"
    );
}

#[test]
fn a_reopened_queue_starts_at_its_first_entry_still_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    let puts = fill_files(&store, 1500);
    assert!(store.delete_expired_files().unwrap() > 0);
    let min = store.min_offset_in_queue("Ret", 0);
    let min_physical = store.min_physical_offset();
    assert!(puts[min as usize].physical_offset >= min_physical);
    assert!(puts[min as usize - 1].physical_offset < min_physical);
    store.shutdown().unwrap();
    drop(store);

    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.min_offset_in_queue("Ret", 0), min);
    let got = store.get_message("Ret", 0, min, 4).unwrap();
    assert_eq!(got.status, GetStatus::Found);
    assert_eq!(
        got.messages[0].physical_offset,
        puts[min as usize].physical_offset
    );
}

/// Fails the first removal of a commit-log file.
struct FailOneUnlink(std::sync::atomic::AtomicBool);

impl rocketstore::IoHook for FailOneUnlink {
    fn before_remove(&self, path: &Path) -> std::io::Result<()> {
        if path
            .parent()
            .is_some_and(|p| p.ends_with(layout::COMMIT_LOG_DIR))
            && self.0.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(std::io::Error::other("injected unlink failure"));
        }
        Ok(())
    }
}

#[test]
fn a_failed_unlink_leaves_no_gap_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let hook = std::sync::Arc::new(FailOneUnlink(std::sync::atomic::AtomicBool::new(true)));
    {
        let store = MessageStore::open(cfg(dir.path()).io_hook(hook.clone())).unwrap();
        fill_files(&store, 1500);
        // The first deletion fails on the first file; it stays, and so does everything after.
        assert!(store.delete_expired_files().is_err());
        assert_eq!(store.min_physical_offset(), 0);
        // The next call deletes from the front again.
        assert!(store.delete_expired_files().unwrap() > 0);
        store.shutdown().unwrap();
        assert!(
            matches!(
                store.delete_expired_files(),
                Err(rocketstore::Error::ShutDown)
            ),
            "a shut-down handle must not delete files another opener may own"
        );
    }
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    let min = store.min_offset_in_queue("Ret", 0);
    assert_eq!(
        store.get_message("Ret", 0, min, 1).unwrap().status,
        GetStatus::Found
    );
}

#[test]
fn a_held_log_keeps_its_files_until_the_hold_drops() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    let puts = fill_files(&store, 1500);
    // Hold from the third file on: the first two may go, nothing from the third.
    let third = 2 * SMALL_FILE;
    let hold = store.hold_log(third).unwrap();
    assert_eq!(hold.offset(), third);
    assert_eq!(store.delete_expired_files().unwrap(), 2);
    assert_eq!(store.min_physical_offset(), third);
    let in_third = puts.iter().find(|p| p.physical_offset >= third).unwrap();
    assert!(store.read_log(in_third.physical_offset, 4096).is_ok());
    // Below the log's start nothing can be held.
    assert!(matches!(
        store.hold_log(0),
        Err(rocketstore::Error::OutOfRange { .. })
    ));
    // Released: retention goes on.
    drop(hold);
    assert!(store.delete_expired_files().unwrap() > 0);
    assert!(store.min_physical_offset() > third);
}

#[test]
fn no_hold_is_granted_on_a_file_retention_is_deleting() {
    let dir = tempfile::tempdir().unwrap();
    let hook = StallRemove::new(true);
    let store =
        std::sync::Arc::new(MessageStore::open(cfg(dir.path()).io_hook(hook.clone())).unwrap());
    fill_files(&store, 1500);
    let first = store.min_physical_offset();
    let deleting = {
        let store = std::sync::Arc::clone(&store);
        std::thread::spawn(move || store.delete_expired_files())
    };
    hook.reached.1.recv().unwrap(); // retention is unlinking the first file
    // Asked for while the file is going (its unlink held by the hook; the log already
    // starts past it), the hold is refused, never granted on a file that then vanishes.
    // `hold_log` never waits. (The earlier window, between retention marking the file
    // retiring and taking it out of the log, has no I/O to stall at: `CommitLog::hold`
    // refuses below `retiring` for it, which no test here reaches.)
    assert!(matches!(
        store.hold_log(first).map(|h| h.offset()),
        Err(rocketstore::Error::OutOfRange { .. })
    ));
    for _ in 0..64 {
        let _ = hook.release.0.send(());
    }
    assert!(deleting.join().unwrap().unwrap() > 0);
    assert!(store.min_physical_offset() > first);
    assert!(store.hold_log(store.min_physical_offset()).is_ok());
}

#[test]
fn a_first_file_gone_missing_is_refused_and_one_retention_deleted_is_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = MessageStore::open(cfg(dir.path())).unwrap();
        fill_log_files(&store, "M", 4);
        settled(&store);
        // Retention deletes the first file: the log now starts at the second.
        assert!(store.delete_expired_files().unwrap() >= 1);
        store.shutdown().unwrap();
    }
    let start = {
        let store = MessageStore::open(cfg(dir.path())).unwrap();
        let start = store.min_physical_offset();
        assert!(start >= SMALL_FILE);
        store.shutdown().unwrap();
        start
    };
    // Now the log's first file disappears (an operator's mistake, a damaged directory):
    // the open must not take it for retention and drop its acknowledged messages.
    fs::remove_file(layout::commit_log_file(dir.path(), start)).unwrap();
    let err = MessageStore::open(cfg(dir.path())).unwrap_err();
    assert!(
        matches!(&err, rocketstore::Error::BadStoreFile { reason, .. } if reason.contains("missing")),
        "{err}"
    );
    // Refused again, unchanged; the operator's override accepts the loss.
    assert!(MessageStore::open(cfg(dir.path())).is_err());
    let store = MessageStore::open(cfg(dir.path()).truncate_damaged_log(true)).unwrap();
    assert_eq!(store.min_physical_offset(), start + SMALL_FILE);
    store.shutdown().unwrap();
    drop(store);
    // Accepted once: the next open is a plain one.
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.min_physical_offset(), start + SMALL_FILE);
}

#[test]
fn a_crash_between_recording_the_start_and_deleting_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fill_log_files(&MessageStore::open(cfg(dir.path())).unwrap(), "K", 2);
    // Retention recorded the new start, then the process died before the unlink.
    write_log_start(dir.path(), SMALL_FILE);
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(
        store.min_physical_offset(),
        0,
        "the file below stays readable"
    );
    let got = store.get_message("K", 0, 0, 1).unwrap();
    assert_eq!(got.messages[0].physical_offset, 0);
    // And the open recorded the start it accepted.
    let recorded = fs::read(layout::log_start_file(dir.path())).unwrap();
    assert_eq!(recorded[..8], 0u64.to_be_bytes());
}

#[test]
fn a_start_recorded_before_another_writer_ran_is_not_believed() {
    // RocketMQ's store, or an older rocketstore, run on the directory: their retention
    // deletes files without recording the start. Their checkpoint writes (their fields
    // only) break the checkpoint's CRC, which tells the next open so.
    let dir = tempfile::tempdir().unwrap();
    fill_log_files(&MessageStore::open(cfg(dir.path())).unwrap(), "O", 3);
    // The other writer: its checkpoint write, then its retention.
    let checkpoint = layout::checkpoint_file(dir.path());
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&checkpoint)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &1_900_000_000_000i64.to_be_bytes(), 0)
        .unwrap();
    drop(file);
    fs::remove_file(layout::commit_log_file(dir.path(), 0)).unwrap();
    // An open refused late (here by a dispatcher's start) after it had rewritten the
    // checkpoint, whose CRC then vouches again: the start it accepted is recorded anyway,
    // or every later open would refuse the store.
    struct Refuses;
    impl rocketstore::Dispatch for Refuses {
        fn name(&self) -> &str {
            "refuses"
        }
        fn start(&mut self, _from: u64) -> Result<(), rocketstore::DispatchError> {
            Err("not today".into())
        }
        fn dispatch(
            &mut self,
            _: &rocketstore::format::RecordView<'_>,
        ) -> Result<(), rocketstore::DispatchError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), rocketstore::DispatchError> {
            Ok(())
        }
    }
    assert!(MessageStore::open_with(cfg(dir.path()), vec![Box::new(Refuses)]).is_err());
    let recorded = fs::read(layout::log_start_file(dir.path())).unwrap();
    assert_eq!(recorded[..8], SMALL_FILE.to_be_bytes());
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.min_physical_offset(), SMALL_FILE);
}

/// A queue left unread since a clean open (many queues open lazily) still has its files
/// below the log's new start deleted by retention, though nobody reads or writes it.
#[test]
fn retention_trims_a_queue_nobody_used_since_a_lazy_open() {
    let dir = tempfile::tempdir().unwrap();
    let lazy = || cfg(dir.path()).lazy_queue_load_threshold(1);
    let idle = {
        let store = MessageStore::open(lazy()).unwrap();
        for i in 0..300u64 {
            store.put_message(&message("Idle", 0, "i", i)).unwrap();
        }
        for i in 0..600u64 {
            store.put_message(&message("Busy", 0, "b", i)).unwrap();
        }
        // One entry of the idle queue stays in the log after retention.
        let last = store.put_message(&message("Idle", 0, "i", 300)).unwrap();
        // The log's last record is another queue's: an open reads that one's files.
        store.put_message(&message("Busy", 0, "b", 600)).unwrap();
        store.shutdown().unwrap();
        last
    };
    let idle_dir = layout::queue_dir(dir.path(), "Idle", 0);
    let files_before = count(&idle_dir);
    assert!(files_before >= 5, "{files_before} files");
    // Reopened (clean: the queues load at first use), and every file but the writer's,
    // which holds the idle queue's last message, deleted.
    let store = MessageStore::open(lazy()).unwrap();
    assert!(store.delete_expired_files().unwrap() > 0);
    assert!(store.min_physical_offset() > 0);
    assert!(store.min_physical_offset() <= idle.physical_offset);
    let files_after = count(&idle_dir);
    assert!(
        files_after < files_before,
        "the idle queue kept its {files_before} files"
    );
    // Its last message is still served, at its offset.
    let got = store.get_message("Idle", 0, 300, 1).unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].body, body("i", 300));
    store.shutdown().unwrap();
}
