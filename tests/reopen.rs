//! Reopening: the lock keeps a store single-opened, a clean reopen continues exactly after
//! the last record, and an unclean one drops and zeroes a damaged tail.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use common::*;
use rocketstore::format;
use rocketstore::layout;
use rocketstore::{Error, MessageStore, PutResult};

#[test]
fn a_second_open_fails_until_the_first_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), sync_mode());
    let err = MessageStore::open(config(dir.path(), sync_mode())).unwrap_err();
    assert!(matches!(err, Error::StoreLocked { .. }), "{err}");
    assert!(layout::abort_file(dir.path()).exists());
    let put = first.put_message(&message("L", 0, "l", 0)).unwrap();
    first.shutdown().unwrap();
    assert!(
        !layout::abort_file(dir.path()).exists(),
        "clean shutdown leaves no abort marker"
    );
    // Shut down, the first handle no longer holds the lock, but still reads.
    let second = open(dir.path(), sync_mode());
    assert!(matches!(
        first.put_message(&message("L", 0, "l", 1)),
        Err(Error::ShutDown)
    ));
    assert_eq!(
        first
            .lookup_message(put.physical_offset)
            .unwrap()
            .unwrap()
            .queue_offset,
        0
    );
    assert_eq!(
        second
            .put_message(&message("L", 0, "l", 1))
            .unwrap()
            .queue_offset,
        1
    );
}

fn fill(store: &MessageStore, n: u64) -> Vec<PutResult> {
    (0..n)
        .map(|i| store.put_message(&message("R", 0, "r", i)).unwrap())
        .collect()
}

/// A sync store of `n` puts of R/0 ([`fill`]), closed: its directory and the puts.
fn closed_store(n: u64) -> (tempfile::TempDir, Vec<PutResult>) {
    let dir = tempfile::tempdir().unwrap();
    let puts = fill(&open(dir.path(), sync_mode()), n);
    (dir, puts)
}

/// Overwrites the commit log with `bytes` at log offset `at` (within one file).
fn damage_log(dir: &std::path::Path, at: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(commit_log_file(dir, at))
        .unwrap();
    file.write_all_at(bytes, at % SMALL_FILE).unwrap();
}

/// Flips a byte inside the body of `put`'s record: its CRC no longer matches.
fn flip_body_byte(dir: &std::path::Path, put: &PutResult) {
    damage_log(
        dir,
        put.physical_offset + u64::from(put.wrote_bytes) - 30,
        &[0xEE],
    );
}

/// `n` puts round-robin over queues 0, 1 and 2 of topic R.
fn fill_spread(store: &MessageStore, n: u64) -> Vec<PutResult> {
    (0..n)
        .map(|i| {
            store
                .put_message(&message("R", (i % 3) as u32, "r", i))
                .unwrap()
        })
        .collect()
}

/// Queue R/0 holds exactly `puts` (all of them R/0's), and the next put continues it.
fn assert_queue_whole(store: &MessageStore, puts: &[PutResult]) {
    let g = store.get_message("R", 0, 0, puts.len()).unwrap();
    assert_eq!(g.messages.len(), puts.len());
    for (m, p) in g.messages.iter().zip(puts) {
        assert_eq!(m.physical_offset, p.physical_offset);
    }
    let n = puts.len() as u64;
    let next = store.put_message(&message("R", 0, "r", n)).unwrap();
    assert_eq!(next.queue_offset, n);
}

fn commit_log_file(dir: &std::path::Path, offset: u64) -> std::path::PathBuf {
    layout::commit_log_file(dir, offset / SMALL_FILE * SMALL_FILE)
}

#[test]
fn an_unclean_exit_drops_a_damaged_tail_and_zeroes_it() {
    // Each case writes something past the last record, as a crash could leave it.
    type Damage = Box<dyn Fn(&PutResult) -> Vec<u8>>;
    let cases: Vec<(&str, Damage)> = vec![
        ("garbage", Box::new(|_| vec![0xAB; 300])),
        (
            "half a record",
            Box::new(|last| {
                let store = last.msg_id.store_host;
                let mut r = format::encode(&message("R", 0, "r", 999), &store, 1 << 20).unwrap();
                r.assign(last.queue_offset + 1, last.end_offset(), 0);
                r.as_bytes()[..r.len() / 2].to_vec()
            }),
        ),
        (
            "a record with a bad CRC",
            Box::new(|last| {
                let store = last.msg_id.store_host;
                let mut r = format::encode(&message("R", 0, "r", 999), &store, 1 << 20).unwrap();
                r.assign(last.queue_offset + 1, last.end_offset(), 0);
                let mut b = r.as_bytes().to_vec();
                let n = b.len();
                b[n - 20] ^= 0x55; // inside the body
                b
            }),
        ),
    ];
    for (name, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let puts = {
            let store = open(dir.path(), sync_mode());
            fill(&store, 700)
        };
        let last = *puts.last().unwrap();
        let path = commit_log_file(dir.path(), last.end_offset());
        let at = last.end_offset() % SMALL_FILE;
        damage_log(dir.path(), last.end_offset(), &damage(&last));
        fs::write(layout::abort_file(dir.path()), b"").unwrap();

        let store = open(dir.path(), sync_mode());
        assert_eq!(store.max_physical_offset(), last.end_offset(), "{name}");
        let on_disk = fs::read(&path).unwrap();
        assert!(
            on_disk[at as usize..].iter().all(|&b| b == 0),
            "{name}: stale tail not zeroed"
        );
        for p in &puts {
            let m = store.lookup_message(p.physical_offset).unwrap().unwrap();
            assert_eq!(m.queue_offset, p.queue_offset, "{name}");
        }
        let next = store.put_message(&message("R", 0, "r", 700)).unwrap();
        assert_eq!(next.physical_offset, last.end_offset(), "{name}");
        assert_eq!(next.queue_offset, 700, "{name}");
    }
}

/// A store of 10 records, shut down with its next two files prepared ahead.
fn store_with_a_prepared_file() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), async_mode());
    fill(&store, 10);
    let second = commit_log_file(dir.path(), 2 * SMALL_FILE);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !second.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "never prepared two ahead"
        );
        std::thread::park_timeout(std::time::Duration::from_millis(1));
    }
    store.shutdown().unwrap();
    dir
}

/// The inode of each commit-log file, by name.
fn inodes(d: &std::path::Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = fs::read_dir(layout::commit_log_dir(d))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Puts to R/0 of a store made by [`store_with_a_prepared_file`] until the log rolls into
/// its second file, and checks the record there reads back.
fn roll_into_the_second_file(store: &MessageStore) {
    let mut puts = fill(store, 400);
    let rolled = puts.pop().unwrap();
    assert!(rolled.physical_offset >= SMALL_FILE);
    assert_eq!(
        store
            .lookup_message(rolled.physical_offset)
            .unwrap()
            .unwrap()
            .queue_offset,
        409
    );
}

#[test]
fn a_clean_reopen_reuses_the_prepared_files() {
    let dir = store_with_a_prepared_file();
    let before = inodes(dir.path());
    assert_eq!(before.len(), 3, "two files are prepared ahead: {before:?}");
    let store = open(dir.path(), async_mode());
    // Roll into the prepared file and check both were the ones on disk, not new ones.
    roll_into_the_second_file(&store);
    let after = inodes(dir.path());
    assert_eq!(&after[..3], &before[..]);
}

#[test]
fn a_crash_reopen_reuses_the_prepared_file_once_zeroed() {
    use std::os::unix::fs::MetadataExt;
    let dir = store_with_a_prepared_file();
    let spare = commit_log_file(dir.path(), SMALL_FILE);
    assert!(spare.exists(), "the next file is prepared ahead");
    // A crash, after a power cut kept a later page of the prepared file but not its
    // first: it looks unused, yet holds stale bytes.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let file = OpenOptions::new().write(true).open(&spare).unwrap();
    file.write_all_at(&[0xEE; 512], 8192).unwrap();
    drop(file);
    let inode = fs::metadata(&spare).unwrap().ino();
    let second = commit_log_file(dir.path(), 2 * SMALL_FILE);
    let file = OpenOptions::new().write(true).open(&second).unwrap();
    file.write_all_at(&[0xEE; 512], 8192).unwrap();
    drop(file);
    let second_inode = fs::metadata(&second).unwrap().ino();
    let store = open(dir.path(), async_mode());
    assert_eq!(
        fs::metadata(&spare).unwrap().ino(),
        inode,
        "reused, not made again"
    );
    assert!(fs::read(&spare).unwrap().iter().all(|&b| b == 0), "zeroed");
    // The second one too.
    assert_eq!(fs::metadata(&second).unwrap().ino(), second_inode);
    assert!(fs::read(&second).unwrap().iter().all(|&b| b == 0), "zeroed");
    roll_into_the_second_file(&store);
}

#[test]
fn a_damaged_store_time_in_the_future_does_not_become_every_later_store_time() {
    let (dir, puts) = closed_store(3);
    // STORETIMESTAMP is outside the body CRC: its top byte damaged, the last record says
    // it was stored thousands of years from now.
    let last = puts[2];
    let at = last.physical_offset + (format::POS_BORN_HOST + 8) as u64;
    damage_log(dir.path(), at, &[0x10]);
    let store = open(dir.path(), sync_mode());
    let damaged = store.lookup_message(last.physical_offset).unwrap().unwrap();
    assert!(damaged.store_timestamp > last.store_timestamp + 1_000_000_000_000);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let next = store.put_message(&message("R", 0, "r", 3)).unwrap();
    assert!(
        (before..before + 60_000).contains(&next.store_timestamp),
        "stored at {} at {before}",
        next.store_timestamp
    );
}

#[test]
fn a_damaged_body_is_never_served_and_the_store_goes_on() {
    let (dir, puts) = closed_store(50);
    let victim = puts[20];
    flip_body_byte(dir.path(), &victim);

    // A clean open trusts bodies by default (no CRC pass over the log): reads check them.
    let store = open(dir.path(), sync_mode());
    let corrupted_at_victim = |e: Error| match e {
        Error::Corrupted { offset, .. } => assert_eq!(offset, victim.physical_offset),
        other => panic!("unexpected {other}"),
    };
    corrupted_at_victim(store.get_message("R", 0, 20, 1).unwrap_err());
    corrupted_at_victim(store.lookup_message(victim.physical_offset).unwrap_err());
    corrupted_at_victim(
        store
            .get_raw(&rocketstore::GetRequest::new("R", 0, 20).max_count(1))
            .unwrap_err(),
    );
    // A batch serves what lies before the damage and stops there.
    let before = store.get_message("R", 0, 0, 50).unwrap();
    assert_eq!(before.messages.len(), 20);
    assert_eq!(before.next_offset, 20);
    let raw = store
        .get_raw(&rocketstore::GetRequest::new("R", 0, 0).max_count(50))
        .unwrap();
    assert_eq!((raw.records.len(), raw.next_offset), (20, 20));
    // Past it, and for new puts, the store goes on.
    let after = store.get_message("R", 0, 21, 50).unwrap();
    assert_eq!(after.messages.len(), 29);
    let next = store.put_message(&message("R", 0, "r", 50)).unwrap();
    assert_eq!(next.queue_offset, 50);
    assert!(store.wait_dispatched(next.physical_offset, std::time::Duration::from_secs(30)));
    let got = store.get_message("R", 0, 50, 1).unwrap();
    assert_eq!(got.messages[0].physical_offset, next.physical_offset);
    drop(store);
    // Turned off, the read trusts the body: the caller checks it (`crc_ok`).
    let store =
        MessageStore::open(config(dir.path(), sync_mode()).verify_crc_on_read(false)).unwrap();
    let got = store.get_message("R", 0, 20, 1).unwrap();
    assert!(!got.messages[0].crc_ok());
}

#[test]
fn after_a_clean_exit_a_damaged_record_refuses_the_open_instead_of_dropping_data() {
    let (dir, puts) = closed_store(50);
    let victim = puts[20];
    flip_body_byte(dir.path(), &victim);

    // Without the CRC check a clean reopen trusts bodies; with it, it refuses the open.
    let err = MessageStore::open(config(dir.path(), sync_mode()).verify_crc_on_clean_open(true))
        .unwrap_err();
    match err {
        Error::Corrupted { offset, .. } => assert_eq!(offset, victim.physical_offset),
        other => panic!("unexpected {other}"),
    }
    // Refusing again and again: a failed open leaves the store as clean as it found it.
    assert!(!layout::abort_file(dir.path()).exists());
    assert!(
        MessageStore::open(config(dir.path(), sync_mode()).verify_crc_on_clean_open(true)).is_err()
    );
    // Marking the exit unclean does not make the store cut durable records either.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let err = MessageStore::open(config(dir.path(), sync_mode())).unwrap_err();
    assert!(matches!(err, Error::Corrupted { offset, .. } if offset == victim.physical_offset));
    // The documented way to accept the loss: the operator's override.
    let store =
        MessageStore::open(config(dir.path(), sync_mode()).truncate_damaged_log(true)).unwrap();
    assert_eq!(store.max_physical_offset(), victim.physical_offset);
    assert_eq!(
        store
            .put_message(&message("R", 0, "r", 0))
            .unwrap()
            .queue_offset,
        20
    );
}

#[test]
fn after_an_unclean_exit_a_missing_blank_record_ends_the_log_there() {
    let (dir, puts) = closed_store(400);
    let first_in_second = puts
        .iter()
        .position(|p| p.physical_offset >= SMALL_FILE)
        .expect("the puts span two files");
    let end_of_first = puts[first_in_second - 1].end_offset();
    // Lose the blank record at the end of the first file, as a crash could.
    let file = OpenOptions::new()
        .write(true)
        .open(commit_log_file(dir.path(), 0))
        .unwrap();
    file.write_all_at(&[0u8; 8], end_of_first).unwrap();
    drop(file);

    // After a crash that came before the checkpoint covered it, the log ends there and
    // the later file goes.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    checkpoint_vouches_below(dir.path(), end_of_first);
    let store = open(dir.path(), sync_mode());
    assert_eq!(store.max_physical_offset(), end_of_first);
    assert!(
        !commit_log_file(dir.path(), SMALL_FILE).exists() || {
            // The file may be back as the freshly prepared next file, but empty.
            fs::read(commit_log_file(dir.path(), SMALL_FILE))
                .unwrap()
                .iter()
                .all(|&b| b == 0)
        }
    );
    for p in &puts[..first_in_second] {
        assert!(store.lookup_message(p.physical_offset).unwrap().is_some());
    }
    assert!(
        store
            .lookup_message(puts[first_in_second].physical_offset)
            .unwrap()
            .is_none()
    );
    let next = store.put_message(&message("R", 0, "r", 0)).unwrap();
    assert_eq!(next.queue_offset, first_in_second as u64);
}

#[test]
fn lost_consume_queues_are_rebuilt_from_the_log() {
    let (dir, puts) = closed_store(300);
    fs::remove_dir_all(layout::consume_queue_dir(dir.path())).unwrap();
    let store = open(dir.path(), sync_mode());
    assert_eq!(store.max_offset_in_queue("R", 0), 300);
    assert_queue_whole(&store, &puts);
}

/// The last file's first offset, for a log ending at `end`.
fn last_file_start(end: u64) -> u64 {
    (end - 1) / SMALL_FILE * SMALL_FILE
}

#[test]
fn a_clean_reopen_reads_the_log_from_the_last_indexed_record_on() {
    let dir = tempfile::tempdir().unwrap();
    let (last, end) = {
        let store = open(dir.path(), sync_mode());
        let puts = fill_spread(&store, 300);
        // Two transaction halves end the log: no queue indexes them.
        let mut half = message("R", 0, "h", 0);
        half.sys_flag = 0x4;
        store.put_message(&half).unwrap();
        store.put_message(&half).unwrap();
        let end = store.max_physical_offset();
        store.shutdown().unwrap();
        (*puts.last().unwrap(), end)
    };
    assert!(
        last_file_start(end) > 0,
        "the log spans files, and the last file holds many records"
    );
    let store = open(dir.path(), sync_mode());
    let o = store.stats().open;
    assert!(o.clean_exit && !o.rebuilt_queues, "{o:?}");
    assert_eq!(o.scanned_from, last.physical_offset);
    assert_eq!(
        o.scanned_records, 3,
        "the last indexed record and the halves"
    );
    assert_eq!(store.max_physical_offset(), end);
    let next = store.put_message(&message("R", 2, "r", 300)).unwrap();
    assert_eq!((next.physical_offset, next.queue_offset), (end, 100));
    store.shutdown().unwrap();

    // Asked to check the CRCs, a clean open reads the whole last file again.
    let config = config(dir.path(), sync_mode()).verify_crc_on_clean_open(true);
    let store = MessageStore::open(config).unwrap();
    let end = store.max_physical_offset();
    assert_eq!(store.stats().open.scanned_from, last_file_start(end));
    store.shutdown().unwrap();

    // After a crash the scan starts at the checkpoint, and re-indexes.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = open(dir.path(), sync_mode());
    let o = store.stats().open;
    assert!(!o.clean_exit && o.scanned_records > 0, "{o:?}");
    assert_eq!(store.max_physical_offset(), end);
}

/// Rewrites the queue table with each row's last record offset changed by `f`, under a
/// matching CRC: a table that reads as valid but lies.
fn rewrite_table_last_records(dir: &std::path::Path, f: impl Fn(u64) -> u64) {
    let path = layout::queue_table_file(dir);
    let text = fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().filter(|l| !l.starts_with("crc ")).enumerate() {
        let mut fields: Vec<String> = line.split(' ').map(str::to_owned).collect();
        if i > 0 {
            let last: u64 = fields[3].parse().unwrap();
            fields[3] = f(last).to_string();
        }
        out.push_str(&fields.join(" "));
        out.push('\n');
    }
    let crc = crc32fast::hash(out.as_bytes());
    out.push_str(&format!("crc {crc}\n"));
    fs::write(&path, out).unwrap();
}

#[test]
fn a_queue_table_naming_no_record_makes_a_clean_open_read_the_whole_last_file() {
    let dir = tempfile::tempdir().unwrap();
    let puts = {
        let store = open(dir.path(), sync_mode());
        let puts = fill(&store, 300);
        store.shutdown().unwrap();
        puts
    };
    let end = store_end(&puts);
    // One byte into the record: no record starts there.
    rewrite_table_last_records(dir.path(), |last| last + 1);
    let store = open(dir.path(), sync_mode());
    let o = store.stats().open;
    assert_eq!(o.scanned_from, last_file_start(end), "{o:?}");
    assert!(!o.rebuilt_queues);
    assert_eq!(store.max_physical_offset(), end);
    assert_queue_whole(&store, &puts);
}

/// Rewrites the checkpoint's consume-queue offset (and marks the exit unclean), as a crash
/// whose last checkpoint had the queues durable up to `offset` leaves it.
fn crash_with_queues_durable_below(dir: &std::path::Path, offset: u64) {
    let path = layout::checkpoint_file(dir);
    let cp = rocketstore::CheckpointTimes::read(&path).unwrap().unwrap();
    rocketstore::CheckpointTimes {
        logics_offset: offset,
        ..cp
    }
    .write(&path)
    .unwrap();
    fs::write(layout::abort_file(dir), b"").unwrap();
}

#[test]
fn after_a_crash_only_records_past_the_checkpoint_are_indexed_again() {
    let dir = tempfile::tempdir().unwrap();
    let puts = {
        let store = open(dir.path(), sync_mode());
        let puts = fill_spread(&store, 300);
        store.shutdown().unwrap();
        puts
    };
    let end = store_end(&puts);
    let last_file = last_file_start(end);
    // The checkpoint a clean shutdown leaves covers everything: nothing is indexed again,
    // though the file it lies in is scanned (and checked) from its start.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = open(dir.path(), sync_mode());
    let o = store.stats().open;
    assert!(!o.clean_exit, "{o:?}");
    assert_eq!(o.indexed_records, 0, "{o:?}");
    assert_eq!(o.scanned_from, last_file);
    store.shutdown().unwrap();

    // Queues durable only up to the 250th record: the 50 after it are indexed again, and
    // every queue reads back whole.
    crash_with_queues_durable_below(dir.path(), puts[250].physical_offset);
    let store = open(dir.path(), sync_mode());
    let o = store.stats().open;
    assert_eq!(o.indexed_records, 50, "{o:?}");
    assert!(o.scanned_from <= puts[250].physical_offset && !o.rebuilt_queues);
    for q in 0..3u32 {
        let got = store.get_message("R", q, 0, 300).unwrap();
        let want: Vec<_> = puts.iter().skip(q as usize).step_by(3).collect();
        assert_eq!(got.messages.len(), want.len());
        for (m, p) in got.messages.iter().zip(want) {
            assert_eq!(
                (m.physical_offset, m.queue_offset),
                (p.physical_offset, p.queue_offset)
            );
        }
    }
    let next = store.put_message(&message("R", 1, "r", 300)).unwrap();
    assert_eq!((next.physical_offset, next.queue_offset), (end, 100));
    store.shutdown().unwrap();

    // A checkpoint without the offset (an older store's, or RocketMQ's) falls back to its
    // times, which (with their slack) cover every record here.
    crash_with_queues_durable_below(dir.path(), 0);
    let store = open(dir.path(), sync_mode());
    let o = store.stats().open;
    assert_eq!(o.scanned_from, 0, "{o:?}");
    assert_eq!(o.indexed_records, 301, "{o:?}");
}

/// Fails every sync of a consume-queue file or of `consumequeue/` while armed.
#[derive(Default)]
struct FailQueueSyncs {
    armed: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicU64,
}

impl rocketstore::IoHook for FailQueueSyncs {
    fn before_sync(&self, path: &std::path::Path) -> std::io::Result<()> {
        let queues = path
            .components()
            .any(|c| c.as_os_str() == layout::CONSUME_QUEUE_DIR);
        if queues && self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(std::io::Error::other("injected queue sync failure"));
        }
        Ok(())
    }
}

#[test]
fn the_checkpoint_vouches_for_entries_recovery_indexed_only_once_they_are_synced() {
    let dir = tempfile::tempdir().unwrap();
    let puts = {
        let store = open(dir.path(), sync_mode());
        let puts = fill_spread(&store, 300);
        store.shutdown().unwrap();
        puts
    };
    let durable = puts[250].physical_offset;
    crash_with_queues_durable_below(dir.path(), durable);
    // Recovery indexes the 50 records past the checkpoint, but leaves syncing them to the
    // dispatch thread, whose syncs all fail: the store opens and serves them, the
    // checkpoint never moves past what was durable, and the shutdown reports the failure.
    let hook = std::sync::Arc::new(FailQueueSyncs::default());
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let store = MessageStore::open(config(dir.path(), sync_mode()).io_hook(hook.clone())).unwrap();
    assert_eq!(store.stats().open.indexed_records, 50);
    let got = store.get_message("R", 1, 0, 300).unwrap();
    assert_eq!(got.messages.len(), 100);
    assert!(
        store.shutdown().is_err(),
        "a failed queue sync fails the shutdown"
    );
    assert!(hook.failed.load(std::sync::atomic::Ordering::SeqCst) > 0);
    let cp = rocketstore::CheckpointTimes::read(&layout::checkpoint_file(dir.path()))
        .unwrap()
        .unwrap();
    assert!(
        cp.logics_offset <= durable,
        "the checkpoint vouches for unsynced entries: {cp:?}"
    );
    // The next open indexes them again, and this time they are synced.
    let store = open(dir.path(), sync_mode());
    let o = store.stats().open;
    assert!(!o.clean_exit && o.indexed_records == 50, "{o:?}");
    for q in 0..3u32 {
        assert_eq!(
            store.get_message("R", q, 0, 300).unwrap().messages.len(),
            100
        );
    }
    store.shutdown().unwrap();
    let cp = rocketstore::CheckpointTimes::read(&layout::checkpoint_file(dir.path()))
        .unwrap()
        .unwrap();
    assert_eq!(cp.logics_offset, store_end(&puts));
}

#[test]
fn the_checkpoint_never_vouches_for_queue_entries_past_a_log_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let puts = {
        let store = open(dir.path(), sync_mode());
        let puts = fill_spread(&store, 300);
        store.shutdown().unwrap();
        puts
    };
    // Under async flush dispatch runs ahead of the log's flushes: the last checkpoint had
    // the log durable to record 100 and the queues to record 250. Then a power cut took
    // the log from record 200 on (here: its body damaged, so it ends there).
    let cut = puts[200];
    let path = layout::checkpoint_file(dir.path());
    let cp = rocketstore::CheckpointTimes::read(&path).unwrap().unwrap();
    rocketstore::CheckpointTimes {
        physic_offset: puts[100].physical_offset,
        logics_offset: puts[250].physical_offset,
        ..cp
    }
    .write(&path)
    .unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    // A crashed run leaves the queue table of its open, which held less.
    fs::remove_file(layout::queue_table_file(dir.path())).unwrap();
    flip_body_byte(dir.path(), &cut);
    // Recovery cuts the log there; the queues' syncs fail, so nothing moves the
    // checkpoint's queue offset but recovery itself: it must not stay past the cut.
    let hook = std::sync::Arc::new(FailQueueSyncs::default());
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let store = MessageStore::open(config(dir.path(), sync_mode()).io_hook(hook.clone())).unwrap();
    assert_eq!(store.max_physical_offset(), cut.physical_offset);
    let cp = rocketstore::CheckpointTimes::read(&path).unwrap().unwrap();
    assert!(
        cp.logics_offset <= cut.physical_offset,
        "the checkpoint vouches for queue entries of records that are gone: {cp:?}"
    );
    // New records take the lost ones' offsets and queue offsets; after another crash
    // they are the ones the queues serve.
    let new: Vec<_> = (0..30)
        .map(|i| {
            store
                .put_message(&message("R", (i % 3) as u32, "new", i))
                .unwrap()
        })
        .collect();
    assert_eq!(new[0].physical_offset, cut.physical_offset);
    assert!(store.shutdown().is_err(), "the queue syncs failed");
    let store = open(dir.path(), sync_mode());
    for q in 0..3u32 {
        let got = store.get_message("R", q, 0, 300).unwrap();
        let want: Vec<_> = puts[..200]
            .iter()
            .skip(q as usize)
            .step_by(3)
            .chain(new.iter().skip(q as usize).step_by(3))
            .collect();
        assert_eq!(got.messages.len(), want.len());
        for (m, p) in got.messages.iter().zip(want) {
            assert_eq!(
                (m.physical_offset, m.queue_offset),
                (p.physical_offset, p.queue_offset)
            );
        }
    }
}

fn store_end(puts: &[PutResult]) -> u64 {
    let last = puts.last().unwrap();
    last.physical_offset + u64::from(last.wrote_bytes)
}

#[test]
fn a_record_zeroed_after_a_clean_exit_is_an_error_when_read_never_a_silent_skip() {
    let dir = tempfile::tempdir().unwrap();
    let puts = {
        let store = open(dir.path(), sync_mode());
        let puts = fill(&store, 300);
        store.shutdown().unwrap();
        puts
    };
    // A record of the last file, before the last indexed one: the clean open does not
    // read it (a bad sector returning zeros, say).
    let last_file = last_file_start(store_end(&puts));
    let victim = puts
        .iter()
        .find(|p| p.physical_offset > last_file && p.queue_offset < 299)
        .unwrap();
    damage_log(dir.path(), victim.physical_offset, &[0u8; 64]);

    let store = open(dir.path(), sync_mode());
    let before = store
        .get_message("R", 0, 0, victim.queue_offset as usize)
        .unwrap();
    assert_eq!(before.messages.len() as u64, victim.queue_offset);
    match store.get_message("R", 0, victim.queue_offset, 32) {
        Err(Error::Corrupted { offset, .. }) => assert_eq!(offset, victim.physical_offset),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    match store.get_raw(&rocketstore::GetRequest::new("R", 0, victim.queue_offset)) {
        Err(Error::Corrupted { offset, .. }) => assert_eq!(offset, victim.physical_offset),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    // Past it, the queue is served.
    let after = store
        .get_message("R", 0, victim.queue_offset + 1, 300)
        .unwrap();
    assert_eq!(after.messages.len() as u64, 299 - victim.queue_offset);
}

#[test]
fn after_a_crash_a_queue_tail_lost_below_the_checkpoint_is_indexed_again_from_the_scanned_file() {
    let dir = tempfile::tempdir().unwrap();
    let puts = {
        let store = open(dir.path(), sync_mode());
        let puts = fill(&store, 300);
        store.shutdown().unwrap();
        puts
    };
    assert!(
        puts[290].physical_offset >= last_file_start(store_end(&puts)),
        "the lost entries' records lie in the file the recovery scans"
    );
    // The queue's last ten entries, synced long ago, turn to zeros (a bad block), then a
    // crash: the queue loads ten entries short, below everything the checkpoint vouches for.
    let cq = layout::queue_dir(dir.path(), "R", 0).join(layout::file_name(0));
    let file = OpenOptions::new().write(true).open(&cq).unwrap();
    file.write_all_at(&[0u8; 200], 290 * 20).unwrap();
    drop(file);
    fs::write(layout::abort_file(dir.path()), b"").unwrap();

    let store = open(dir.path(), sync_mode());
    assert_eq!(store.max_offset_in_queue("R", 0), 300);
    assert_eq!(store.stats().open.indexed_records, 10);
    let got = store.get_message("R", 0, 280, 32).unwrap();
    let offsets: Vec<_> = got.messages.iter().map(|m| m.physical_offset).collect();
    let want: Vec<_> = puts[280..].iter().map(|p| p.physical_offset).collect();
    assert_eq!(offsets, want);
    let next = store.put_message(&message("R", 0, "r", 300)).unwrap();
    assert_eq!(next.queue_offset, 300);
}

/// After a crash every queue is loaded from its files: with hundreds of queues, by several
/// threads in inode order. Each queue must come back with its own entries, as loaded
/// (nothing rebuilt from the log, which would hide a queue given another's files), and
/// again after a clean reopen.
#[test]
fn an_unclean_reopen_loads_each_of_many_queues_as_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let queues = 300u32;
    let count = |q: u32| u64::from(q % 3) + 1;
    {
        let store = open(dir.path(), async_mode());
        for round in 0..3u64 {
            for q in (0..queues).filter(|q| round < count(*q)) {
                store
                    .put_message(&message("M", q, "m", u64::from(q) * 10 + round))
                    .unwrap();
            }
        }
        store.shutdown().unwrap();
    }
    // A crash as far as the next open can tell: every queue is loaded from its files.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let check = |store: &MessageStore| {
        for q in 0..queues {
            assert_eq!(store.max_offset_in_queue("M", q), count(q), "queue {q}");
            let got = store.get_message("M", q, 0, 8).unwrap();
            let bodies: Vec<_> = got.messages.iter().map(|m| m.body.clone()).collect();
            let want: Vec<_> = (0..count(q))
                .map(|r| body("m", u64::from(q) * 10 + r))
                .collect();
            assert_eq!(bodies, want, "queue {q}");
        }
    };
    let store = open(dir.path(), async_mode());
    let opened = store.stats().open;
    assert!(!opened.clean_exit && !opened.rebuilt_queues, "{opened:?}");
    check(&store);
    store.shutdown().unwrap();
    let store = open(dir.path(), async_mode());
    check(&store);
    store.shutdown().unwrap();
}
