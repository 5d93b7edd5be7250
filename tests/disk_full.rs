//! A full disk: on a real, size-limited filesystem (a tmpfs this test mounts, which needs
//! root, as CI runs; otherwise it skips with the reason), puts fail with a clear I/O error
//! once no new file can be allocated, nothing acknowledged is affected, reads keep working,
//! and puts work again as soon as space is freed, without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rocketstore::layout;
use rocketstore::{Error, GetStatus, MessageStore};

/// A tmpfs of `size` mounted for the life of the value.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// [`SmallFs::mount`], or `None` after saying why the test is skipped.
    fn mount_or_skip(size: &str) -> Option<SmallFs> {
        Self::mount(size)
            .inspect_err(|why| println!("skipped: {why}"))
            .ok()
    }

    fn mount(size: &str) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes `path` until the filesystem has no room left (another writer filling the disk).
fn fill_up(path: impl AsRef<Path>) {
    use std::io::Write;
    let mut filler = std::fs::File::create(path).unwrap();
    let block = vec![1u8; 4096];
    while filler.write_all(&block).is_ok() {}
}

fn is_no_space(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(28))
}

/// A put refused for lack of space: the log's own ENOSPC, or the refusal while dispatch
/// cannot write the consume queues (whichever file the filesystem fills up on).
fn is_full_refusal(e: &Error) -> bool {
    is_no_space(e)
        || matches!(e, Error::DispatchStalled { reason } if reason.contains("os error 28"))
}

#[test]
fn a_full_disk_refuses_puts_keeps_reads_and_recovers_when_space_is_freed() {
    let Some(fs) = SmallFs::mount_or_skip("1m") else {
        return;
    };
    // Ballast to free later.
    let ballast: PathBuf = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 256 * 1024]).unwrap();
    let root = fs.path().join("store");
    // The commit log is what fills up here (the index would take the space first). The
    // disk-usage guard is off: this test is about the filesystem's own ENOSPC, and the
    // guard's refusal above 90% (sampled on its own thread) would race with it.
    let store_config = config(&root, sync_mode())
        .consume_queue_entries_per_file(256)
        .index_enabled(false)
        .disk_full_ratio(1.0);
    let store = MessageStore::open(store_config.clone()).unwrap();

    let mut acked = Vec::new();
    let err = loop {
        let i = acked.len() as u64;
        match store.put_message(&message("Full", (i % 2) as u32, "f", i)) {
            Ok(r) => acked.push((i, r)),
            Err(e) => break e,
        }
        assert!(acked.len() < 100_000, "the filesystem never filled");
    };
    assert!(is_full_refusal(&err), "expected ENOSPC, got: {err}");
    assert!(acked.len() > 100, "only {} puts fitted", acked.len());
    // Refused again while the disk stays full, each time with a clear error.
    for _ in 0..3 {
        let e = store.put_message(&message("Full", 0, "f", 0)).unwrap_err();
        assert!(is_full_refusal(&e), "{e}");
    }
    // Nothing acknowledged is affected, and reads keep working.
    for (i, r) in &acked {
        let m = store.lookup_message(r.physical_offset).unwrap().unwrap();
        assert_eq!(m.body, body("f", *i));
    }
    // Free space. (Not before: with the disk-usage guard off, the allocation thread's
    // next log file may have taken the last blocks the consume queues needed, and
    // dispatch then waits for space, as `DispatchStalled` tells producers. It took one
    // run in ten here once the store kept one more 4 KiB file, `log_start`.)
    std::fs::remove_file(&ballast).unwrap();
    // Everything acknowledged is dispatched and read back through its queue.
    let last = acked.last().unwrap().1;
    assert!(store.wait_dispatched(last.physical_offset, Duration::from_secs(30)));
    let g = store.get_message("Full", 0, 0, 8).unwrap();
    assert_eq!(g.status, GetStatus::Found);
    // Messages keep their file mapped: let go of them, or the filesystem stays busy.
    drop(g);

    // Puts resume without a restart, continuing the queue offsets.
    let next = store
        .put_message(&message("Full", 0, "f", 0))
        .expect("puts work again once space is freed");
    let expected = acked.iter().filter(|(i, _)| i % 2 == 0).count() as u64;
    assert_eq!(next.queue_offset, expected);
    assert!(store.wait_dispatched(next.physical_offset, Duration::from_secs(30)));
    store.shutdown().unwrap();
    drop(store);

    // And the store reopens cleanly with everything in it.
    let store = MessageStore::open(store_config).unwrap();
    assert_eq!(store.max_offset_in_queue("Full", 0), expected + 1);
    drop(store);
    drop(fs);
}

#[test]
fn above_the_disk_full_ratio_puts_are_refused_until_space_is_freed() {
    let Some(fs) = SmallFs::mount_or_skip("4m") else {
        return;
    };
    let root = fs.path().join("store");
    let cfg = || {
        config(&root, sync_mode())
            .consume_queue_entries_per_file(256)
            .disk_full_ratio(0.6)
            .disk_check_interval(Duration::from_millis(5))
    };
    let store = MessageStore::open(cfg()).unwrap();
    let first = store.put_message(&message("Ratio", 0, "r", 0)).unwrap();
    assert!(!store.is_disk_full());

    // Push usage over 60% with ballast: the store notices and refuses, distinctly.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 3 << 20]).unwrap();
    let started = std::time::Instant::now();
    while !store.is_disk_full() {
        assert!(started.elapsed() < Duration::from_secs(30), "never noticed");
        std::thread::yield_now();
    }
    let err = store.put_message(&message("Ratio", 0, "r", 1)).unwrap_err();
    assert!(
        matches!(err, Error::DiskFull { limit, .. } if limit == 0.6),
        "{err}"
    );
    assert!(
        store
            .lookup_message(first.physical_offset)
            .unwrap()
            .is_some()
    );

    // Free it: puts resume by themselves.
    std::fs::remove_file(&ballast).unwrap();
    let started = std::time::Instant::now();
    while store.is_disk_full() {
        assert!(started.elapsed() < Duration::from_secs(30), "never resumed");
        std::thread::yield_now();
    }
    let next = store.put_message(&message("Ratio", 0, "r", 1)).unwrap();
    assert_eq!(next.queue_offset, 1);
    store.shutdown().unwrap();
    drop(store);
    drop(fs);
}

#[test]
fn a_clean_store_opens_and_shuts_down_cleanly_on_a_full_disk() {
    let Some(fs) = SmallFs::mount_or_skip("4m") else {
        return;
    };
    let root = fs.path().join("store");
    let cfg = || {
        config(&root, sync_mode())
            .consume_queue_entries_per_file(64)
            .disk_full_ratio(1.0)
            .disk_clean_ratios(1.0, 1.0)
    };
    let puts: Vec<_> = {
        let store = MessageStore::open(cfg()).unwrap();
        (0..40u64)
            .map(|i| {
                store
                    .put_message(&message("T", (i % 4) as u32, "t", i))
                    .unwrap()
            })
            .collect()
    };
    // Another writer fills the filesystem.
    fill_up(fs.path().join("filler"));
    for round in 0..2 {
        let store = MessageStore::open(cfg()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        for p in &puts {
            assert!(store.lookup_message(p.physical_offset).unwrap().is_some());
        }
        store.shutdown().unwrap();
        assert!(
            !layout::abort_file(&root).exists(),
            "round {round}: not marked clean"
        );
    }
    std::fs::remove_file(fs.path().join("filler")).unwrap();
}

#[test]
fn a_disk_filled_by_queue_creation_leaves_a_store_that_opens_and_serves_every_acknowledged_message()
{
    let Some(fs) = SmallFs::mount_or_skip("6m") else {
        return;
    };
    // Ballast, freed at the end to let dispatch finish.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 256 * 1024]).unwrap();
    let root = fs.path().join("store");
    let cfg = || {
        config(&root, async_mode())
            .commit_log_file_size(1 << 20)
            // No next file prepared ahead: opening would free its space.
            .preallocate(false)
            .disk_full_ratio(1.0)
            .consume_queue_flush_interval(Duration::from_millis(10))
    };
    let store = MessageStore::open(cfg()).unwrap();
    // One message to each new queue, each indexed before the next: every queue costs a
    // directory and a page of disk, until there is none.
    let mut acked = Vec::new();
    let stalled = loop {
        let q = acked.len() as u32;
        assert!(q < 10_000, "the filesystem never filled");
        let r = store
            .put_message(&message("Many", q, "m", u64::from(q)))
            .unwrap();
        acked.push((u64::from(q), r));
        let indexed = loop {
            if store.wait_dispatched(r.physical_offset, Duration::from_millis(20)) {
                break true;
            }
            if store.stats().dispatch_error.is_some() {
                break false;
            }
        };
        if !indexed {
            break q;
        }
    };
    assert!(stalled > 50, "only {stalled} queues fitted");
    // Visible in the stats, and new puts are refused with a clear error.
    let stats = store.stats();
    assert!(stats.dispatch_failures > 0);
    assert!(stats.dispatch_error.unwrap().contains("No space"));
    let refused = store.put_message(&message("Many", 0, "x", 0)).unwrap_err();
    assert!(
        matches!(refused, Error::DispatchStalled { .. }),
        "{refused}"
    );
    // Everything acknowledged is readable by offset; the queues indexed serve by queue.
    let check = |store: &MessageStore, indexed_below: u32| {
        for (i, r) in &acked {
            let m = store.lookup_message(r.physical_offset).unwrap().unwrap();
            assert_eq!(m.body, body("m", *i));
            if (*i as u32) < indexed_below {
                let g = store.get_message("Many", *i as u32, 0, 4).unwrap();
                assert_eq!(g.status, GetStatus::Found, "queue {i}");
                assert_eq!(g.messages[0].body, body("m", *i));
            }
        }
    };
    check(&store, stalled);
    // The shutdown cannot index the last message: the store is left to recover.
    assert!(store.shutdown().is_err());
    drop(store);

    // Whatever space is left another writer takes.
    let filler = fs.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[1u8; 4096]).is_ok() {}
    }
    // Opening needs no space, on the still-full filesystem, and serves the same.
    let store = MessageStore::open(cfg()).expect("a full disk must not keep the store closed");
    check(&store, stalled);
    let unindexed = store.get_message("Many", stalled, 0, 4).unwrap();
    assert!(unindexed.messages.is_empty(), "no space to index it yet");
    println!(
        "{stalled} queues fitted; {:?}",
        store.stats().dispatch_error
    );
    // Space freed: dispatch finishes by itself, every queue serves its message, puts are
    // accepted again.
    std::fs::remove_file(&ballast).unwrap();
    std::fs::remove_file(&filler).unwrap();
    let (_, last) = acked.last().unwrap();
    assert!(store.wait_dispatched(last.physical_offset, Duration::from_secs(30)));
    check(&store, u32::MAX);
    assert!(store.stats().dispatch_error.is_none());
    let next = store.put_message(&message("Many", 0, "m", 0)).unwrap();
    assert_eq!(next.queue_offset, 1);
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(cfg()).unwrap();
    check(&store, u32::MAX);
    drop(store);
    drop(fs);
}

/// A store with no recorded start (written before `log_start` existed, or the file
/// removed) on a full disk: the record cannot be created, and retention must still free
/// space. Nothing recorded means nothing to protect: the next open takes the start from
/// the files, as this one did.
#[test]
fn retention_frees_a_full_disk_where_no_start_was_recorded() {
    let Some(fs) = SmallFs::mount_or_skip("4m") else {
        return;
    };
    let root = fs.path().join("store");
    let cfg = || {
        config(&root, sync_mode())
            .consume_queue_entries_per_file(64)
            .file_reserved_time(Duration::ZERO)
            .disk_full_ratio(1.0)
            .disk_clean_ratios(1.0, 1.0)
    };
    let puts: Vec<_> = {
        let store = MessageStore::open(cfg()).unwrap();
        let puts: Vec<_> = (0..1200u64)
            .map(|i| store.put_message(&message("T", 0, "t", i)).unwrap())
            .collect();
        store.shutdown().unwrap();
        puts
    };
    assert!(puts.last().unwrap().physical_offset > 3 * SMALL_FILE);
    std::fs::remove_file(layout::log_start_file(&root)).unwrap();
    fill_up(fs.path().join("filler"));
    let store = MessageStore::open(cfg()).unwrap();
    let last = puts.last().unwrap();
    assert!(store.wait_dispatched(last.physical_offset, Duration::from_secs(30)));
    let removed = store.delete_expired_files();
    assert!(
        removed.as_ref().is_ok_and(|n| *n > 0),
        "retention freed nothing: {removed:?}"
    );
    let min = store.min_physical_offset();
    let m = store.lookup_message(last.physical_offset).unwrap().unwrap();
    assert_eq!(m.body, body("t", 1199));
    store.shutdown().unwrap();
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let store = MessageStore::open(cfg()).unwrap();
    assert_eq!(store.min_physical_offset(), min);
    store.shutdown().unwrap();
}

/// Removes `ballast` when the first commit-log file is removed: space comes back in the
/// middle of a series of deletions retention began for lack of it.
struct FreeOnFirstRemoval {
    log_dir: PathBuf,
    ballast: PathBuf,
}

impl rocketstore::IoHook for FreeOnFirstRemoval {
    fn before_remove(&self, path: &Path) -> std::io::Result<()> {
        if path.starts_with(&self.log_dir) && self.ballast.exists() {
            std::fs::remove_file(&self.ballast)?;
        }
        Ok(())
    }
}

/// Space freed during a paced series of deletions is seen at the next step: puts are
/// accepted again then, and the series, begun for lack of space, stops there instead
/// of deleting every expired file first.
#[test]
fn space_freed_during_retention_ends_the_refusal_and_the_series() {
    let Some(fs) = SmallFs::mount_or_skip("4m") else {
        return;
    };
    let root = fs.path().join("store");
    let ballast = fs.path().join("ballast");
    let hook = std::sync::Arc::new(FreeOnFirstRemoval {
        log_dir: layout::commit_log_dir(&root),
        ballast: ballast.clone(),
    });
    // Never the daily hour: only the disk's state starts a series.
    let hour = (utc_hour() + 12) % 24;
    let cfg = || {
        config(&root, sync_mode())
            .consume_queue_entries_per_file(64)
            .file_reserved_time(Duration::ZERO)
            .delete_hour(hour)
            .disk_full_ratio(0.9)
            .disk_clean_ratios(0.85, 1.0)
            .disk_check_interval(Duration::from_millis(20))
            .file_delete_interval(Duration::from_millis(50))
    };
    // Filled while closed (and retention wanted nothing: the disk had room), then the
    // filesystem filled by another writer.
    {
        let store = MessageStore::open(cfg().disk_clean_ratios(1.0, 1.0)).unwrap();
        for i in 0..2400u64 {
            store.put_message(&message("T", 0, "t", i)).unwrap();
        }
        store.shutdown().unwrap();
    }
    let files = || {
        std::fs::read_dir(layout::commit_log_dir(&root))
            .unwrap()
            .count()
    };
    let before = files();
    assert!(before >= 8, "{before} files");
    fill_up(&ballast);
    let store = MessageStore::open(cfg().io_hook(hook)).unwrap();
    // Refused for lack of space, then (the first deletion freed the ballast) accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut refused = false;
    loop {
        match store.put_message(&message("T", 0, "t", 0)) {
            Err(Error::DiskFull { .. }) => refused = true,
            Err(e) if is_full_refusal(&e) => refused = true,
            // (On a slow start, retention may free the ballast before the first put.)
            Ok(_) if refused || !ballast.exists() => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(std::time::Instant::now() < deadline, "never accepted again");
        std::thread::yield_now();
    }
    let after = files();
    store.shutdown().unwrap();
    assert!(!ballast.exists(), "the ballast was never freed");
    assert!(
        after + 3 >= before,
        "{before} files before, {after} when puts were accepted again"
    );
}

/// The hour of the day in UTC (the store's daily hour is local time: twelve hours from
/// this one is far from it wherever the zone is less than twelve hours away).
fn utc_hour() -> u8 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ((secs / 3600) % 24) as u8
}
