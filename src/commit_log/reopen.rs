//! Finding where the log ends when a store is opened again: scan every record, rebuild the
//! queue offsets, and after an unclean exit cut the log at the first invalid record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::commit_log::record::{BLANK_RECORD_LEN, RecordView, Records, Step, blank_fills};
use crate::error::{Error, Result};
use crate::fs::mapped_file::{FileWriter, MappedFile};

/// Told about the records a reopen scans, so consume queues can be checked or rebuilt.
pub(crate) trait RecoverySink {
    /// Called once, before any record, with the commit-log offset the scan starts at and
    /// the offset the log starts at.
    fn begin(&mut self, start_offset: u64, log_start: u64) -> Result<()>;
    /// Called for every valid record from the start offset on, in log order. Returning
    /// false rejects the record: the log ends before it, as at an invalid record.
    fn record(&mut self, view: &RecordView<'_>) -> Result<bool>;
    /// Called after the records of each file, with the last store time seen so far and the
    /// offset the valid records reach; `last` for the file the log ends in.
    fn file_done(&mut self, last_store_timestamp: i64, end: u64, last: bool) -> Result<()>;
}

/// Why the records of a file stopped.
enum Stop {
    /// A blank end record, or records up to the last byte: the log goes on in the next file.
    FileEnd,
    /// Zeros: nothing was written past here.
    Empty,
    /// Bytes that are not a valid record.
    Invalid(Error),
}

/// Walks the valid records of `file` from its start, handing each to `sink`; returns where
/// they end and why. An error of the sink ends the whole reopen.
fn scan_file(
    file: &Arc<MappedFile>,
    from: usize,
    sink: &mut dyn RecoverySink,
    times: &mut StoreTimes,
    check_crc: bool,
) -> Result<(usize, Stop)> {
    let bytes = file
        .visible_from(0)
        .expect("an opened file is fully visible");
    let start = file.start_offset() + from as u64;
    let mut records = Records::new(&bytes[from..], start).verified(check_crc);
    while let Some(step) = records.next() {
        let view = match step {
            Ok(Step::Record(view)) => view,
            Ok(Step::Blank) => {
                // A blank record fills the rest of its file and says how much that is
                // (RocketMQ's too): one that does not is damage, not an end. Taken on its
                // magic alone, a damaged record there would hide the rest of the file.
                let pos = from + records.position();
                let (declared, fills) = blank_fills(&bytes[pos..], bytes.len() - pos);
                let rest_zero = || bytes[pos + BLANK_RECORD_LEN..].iter().all(|&b| b == 0);
                if !fills && rest_zero() {
                    // Only the size damaged: nothing follows it but the zeros a blank
                    // leaves. Still the file's end.
                    log::warn!(
                        "{}: the blank record at {} says it fills {declared} bytes, not the {} \
                         left, but only zeros follow it: taken for the file's end",
                        file.path().display(),
                        records.offset(),
                        bytes.len() - pos
                    );
                } else if !fills {
                    let reason = format!(
                        "a blank record of {declared} bytes, {} before the file's end",
                        bytes.len() - pos
                    );
                    let e = Error::corrupted(records.offset(), reason);
                    return Ok((pos, Stop::Invalid(e)));
                }
                return Ok((bytes.len(), Stop::FileEnd));
            }
            Ok(Step::Empty) => return Ok((from + records.position(), Stop::Empty)),
            Err(e) => return Ok((from + records.position(), Stop::Invalid(e))),
        };
        if !sink.record(&view)? {
            let pos = from + records.position() - view.total_size as usize;
            let reason = "queue offset out of sequence for its queue";
            let e = Error::corrupted(view.physical_offset, reason);
            return Ok((pos, Stop::Invalid(e)));
        }
        times.see(view.store_timestamp);
    }
    Ok((from + records.position(), Stop::FileEnd))
}

/// Where in `file` a scan may start at commit-log offset `offset`: there when a valid
/// record (one whose PHYSICALOFFSET names that very offset) starts there, else at the
/// file's start.
fn record_start(file: &Arc<MappedFile>, offset: u64) -> usize {
    let Some(pos) = offset
        .checked_sub(file.start_offset())
        .filter(|&p| p < file.size() as u64)
    else {
        return 0;
    };
    let bytes = file
        .visible_from(0)
        .expect("an opened file is fully visible");
    let first = Records::new(&bytes[pos as usize..], offset)
        .verified(false)
        .next();
    match first {
        Some(Ok(Step::Record(_))) => pos as usize,
        _ => 0,
    }
}

/// Store time of the first record of `file`, if it has a readable one.
fn first_timestamp(file: &Arc<MappedFile>) -> Option<i64> {
    let bytes = file.visible_from(0)?;
    match Records::new(&bytes, file.start_offset()).next()? {
        Ok(Step::Record(view)) => Some(view.store_timestamp),
        _ => None,
    }
}

/// Most of the log a crash recovery asks the kernel to read ahead of its scan: the scan
/// reads it all anyway, and no more than this is asked for at once.
const PREFETCH_MAX: u64 = 1 << 30;

/// Runs `work` while a short-lived thread asks the kernel to read `from..to` of the log
/// (`files` from the one holding `from`; at most `PREFETCH_MAX`) into the page cache.
/// The thread stops asking once `work` is done (a request may wait for the disk); without
/// a thread, `work` runs alone. A hint only: whoever reads the pages later reads them
/// anyway.
fn prefetched<T>(
    files: &[Arc<MappedFile>],
    from: u64,
    to: u64,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let to = to.min(from.saturating_add(PREFETCH_MAX));
    let ranges: Vec<_> = files
        .iter()
        .take_while(|f| f.start_offset() < to)
        .map(|f| {
            let begin = from.saturating_sub(f.start_offset()) as usize;
            let end = (to - f.start_offset()).min(f.size() as u64) as usize;
            (Arc::clone(f), begin, end)
        })
        .collect();
    if ranges.is_empty() {
        return work();
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let done = &done;
        let _ = std::thread::Builder::new()
            .name("rocketstore-log-prefetch".into())
            .spawn_scoped(scope, move || {
                for (file, begin, end) in ranges {
                    file.will_need(begin, end, || done.load(Ordering::Acquire));
                }
            });
        let result = work();
        done.store(true, Ordering::Release);
        result
    })
}

/// How far before the checkpoint time recovery starts, as RocketMQ does, so records
/// stamped in the same instant are never skipped.
const RECOVERY_SLACK_MS: i64 = 3_000;

/// Where the reopen scan starts and what it may do with an invalid record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanPlan {
    /// Which file the scan starts at.
    pub from: ScanFrom,
    /// Offset below which every byte was durable and valid (the checkpoint's durable
    /// offset; everything after a clean exit). An invalid record below it is damage.
    pub durable: u64,
    /// Offset the log must reach (the checkpoint's durable offset): a log that ends
    /// before it lost a file or the end of one, which is damage too.
    pub expected_end: u64,
    /// Check each body's CRC.
    pub check_crc: bool,
    /// After an unclean exit: sync what the scan read, and cut a torn tail (invalid
    /// records at or past `durable`), zeroing what follows.
    pub repair: bool,
    /// The operator's override: cut the log at damage too, instead of refusing the open.
    pub truncate_damage: bool,
    /// Offset below which the checkpoint says records were written: a file starting below
    /// it is never taken for an unused, prepared file, even when its first bytes are zeros.
    pub written_below: u64,
    /// The last run was poisoned by a failed flush with this flushed offset: what lies
    /// past it is written again before it is synced.
    pub rewrite_from: Option<u64>,
    /// Whether `{root}/log_start` is to be believed: the checkpoint is intact as this store
    /// last wrote it, so no other writer (RocketMQ, an older rocketstore), whose retention
    /// does not record the start, ran since.
    pub trust_log_start: bool,
    /// A store time the log is known to have reached (the checkpoint's; 0 when none): the
    /// reference for the first record scanned (see [`StoreTimes`]).
    pub known_store_time: i64,
}

/// How far a store time may jump past the one before it (and past the clock) and still
/// count: more is damage.
const MAX_STORE_TIME_JUMP_MS: i64 = 24 * 3600 * 1000;

/// The store times a scan reads, for the floor later store times are raised to (they
/// never decrease in log order). STORETIMESTAMP lies outside the body's CRC: a damaged one
/// far in the future would otherwise become the store time of every later record, for
/// good (each carries it on), and the checkpoint's times and time lookups with it. A time
/// is left out when it jumps more than a day past the clock and past the time before it
/// (the record before, or for the first record scanned the checkpoint's time; the clock
/// alone when there is neither). A clock that is behind (reset before NTP ran) leaves
/// sound times standing; a store idle for more than a day while the clock is behind loses
/// only the first time after the gap (the next is judged against it, not the floor).
pub(crate) struct StoreTimes {
    /// The latest sound store time seen: the floor.
    pub floor: i64,
    /// The time before the next record's: the last one read, sound or not (0: none).
    reference: i64,
    now: i64,
}

impl StoreTimes {
    pub(crate) fn new(known: i64, now: i64) -> Self {
        StoreTimes {
            floor: 0,
            reference: known.max(0),
            now,
        }
    }

    pub(crate) fn see(&mut self, ts: i64) {
        let jumps_from = |from: i64| ts > from.saturating_add(MAX_STORE_TIME_JUMP_MS);
        let before = std::mem::replace(&mut self.reference, ts);
        if jumps_from(self.now) && (before <= 0 || jumps_from(before)) {
            log::warn!(
                "a record's store time {ts} is more than a day past the clock ({}) and the \
                 time before it ({before}): damaged, not a floor for later store times",
                self.now
            );
            return;
        }
        self.floor = self.floor.max(ts);
    }
}

/// The first file a reopen scan reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ScanFrom {
    /// The last file (a clean exit: everything before it is known indexed).
    LastFile,
    /// The last file from this offset on, when a record starts there (a clean exit whose
    /// queue table names the last record any queue indexed: the records before it were
    /// checked when they were written); else the whole last file.
    LastRecord(u64),
    /// The file holding this offset (the checkpoint's durable offsets, after a crash),
    /// from its start; the first file when the offset lies before the log.
    Offset(u64),
    /// The last file whose first record is older than this store time (the checkpoint),
    /// minus a slack; the first file when none is.
    Checkpoint(i64),
    /// The first file (rebuilding the consume queues from the whole log).
    Start,
}

/// Scans `files` (non-empty, in order) as `plan` says and returns the writer positioned at
/// the end of the log, with the latest store time seen. `files` keeps every file of the
/// log, the writer's last.
///
/// The log may be cut only at a torn tail: the first invalid record (or a file that ends
/// without its blank record) at or past `plan.durable`, after an unclean exit. Under sync
/// flush nothing past it was acknowledged, because a put is acknowledged only once every
/// byte before its end is durable. The files after that point are removed, with the
/// `unused` files past them, newest first (see [`remove_files`]), and the tail of the last
/// one is zeroed, so stale bytes cannot later pass for records. An invalid record below
/// `plan.durable` is damage to data that was durable: the open is refused with
/// [`Error::Corrupted`], naming the file and the offset, and nothing is changed (unless
/// the operator's override asks to cut there).
pub(super) fn scan_and_truncate(
    files: &mut Vec<Arc<MappedFile>>,
    plan: ScanPlan,
    sink: &mut dyn RecoverySink,
    unused: &mut Vec<Arc<MappedFile>>,
) -> Result<(FileWriter, i64)> {
    let first = match plan.from {
        ScanFrom::LastFile | ScanFrom::LastRecord(_) => files.len() - 1,
        ScanFrom::Start => 0,
        ScanFrom::Checkpoint(point) => files
            .iter()
            .rposition(|f| {
                first_timestamp(f).is_some_and(|ts| ts <= point.saturating_sub(RECOVERY_SLACK_MS))
            })
            .unwrap_or(0),
        ScanFrom::Offset(offset) => files
            .iter()
            .rposition(|f| f.start_offset() <= offset)
            .unwrap_or(0),
    };
    let mut from = match plan.from {
        ScanFrom::LastRecord(offset) => record_start(&files[first], offset),
        _ => 0,
    };
    let scan_start = files[first].start_offset() + from as u64;
    // After a crash the sink loads every consume queue first (seconds with many queues,
    // all random reads): meanwhile the kernel reads the part of the log the scan will
    // read for certain, up to the durable offset.
    let prefetch_to = if plan.repair { plan.durable } else { 0 };
    prefetched(&files[first..], scan_start, prefetch_to, || {
        sink.begin(scan_start, files[0].start_offset())
    })?;
    let mut times = StoreTimes::new(plan.known_store_time, crate::message::now_ms());
    let mut end = None;
    let mut cut = false;
    for (i, file) in files.iter().enumerate().skip(first) {
        let last = i + 1 == files.len();
        let (pos, stop) = scan_file(file, from, sink, &mut times, plan.check_crc)?;
        from = 0;
        if plan.repair {
            // What a crashed process left in the page cache becomes durable before the
            // checkpoint or any reader relies on it. After a poisoned run, what was not
            // flushed is written again first: a failed fsync may have left its pages marked
            // clean without being on the disk.
            if let Some(flushed) = plan.rewrite_from {
                let valid_end = match stop {
                    Stop::FileEnd => file.size(),
                    _ => pos,
                };
                let from = flushed.saturating_sub(file.start_offset());
                file.rewrite(from.min(valid_end as u64) as usize, valid_end)?;
            }
            file.sync_all()?;
        }
        let at = file.start_offset() + pos as u64;
        let invalid = match stop {
            Stop::FileEnd if !last => {
                sink.file_done(times.floor, file.start_offset() + file.size() as u64, false)?;
                continue;
            }
            Stop::FileEnd | Stop::Empty if last => None,
            Stop::FileEnd => unreachable!("handled above"),
            Stop::Empty => Some(Error::corrupted(
                at,
                "a file that is not the last ends without a blank record",
            )),
            Stop::Invalid(e) => Some(e),
        };
        if let Some(e) = invalid {
            let e = in_file(e, file);
            if at < plan.durable && !plan.truncate_damage {
                return Err(e);
            }
            if at < plan.durable {
                log::error!("operator override: cutting the log at damage, {at}: {e}");
            } else if plan.repair {
                log::warn!("torn tail: the log ends at {at}: {e}");
            } else {
                return Err(e);
            }
            cut = true;
        }
        if !cut && at < plan.expected_end {
            // Valid records up to here, then nothing: but the checkpoint vouched for more.
            let e = in_file(
                Error::corrupted(
                    at,
                    format!(
                        "the log ends here, but the checkpoint vouches for records up to {}: \
                         a file is missing or was cut short",
                        plan.expected_end
                    ),
                ),
                file,
            );
            if !plan.truncate_damage {
                return Err(e);
            }
            log::error!("operator override: accepting a log cut short at {at}: {e}");
            cut = true;
        }
        end = Some((i, pos));
        break;
    }
    let (index, pos) = end.expect("the loop ends at the last file at the latest");
    sink.file_done(times.floor, files[index].start_offset() + pos as u64, true)?;
    let dropped = files.split_off(index + 1);
    for file in &dropped {
        log::warn!(
            "removing {}: it lies past the end of the log",
            file.path().display()
        );
    }
    if !dropped.is_empty() {
        // Before the tail is zeroed, which on a full disk may need the space they hold;
        // newest first with the unused files past them, which cannot follow the writer's
        // file now.
        let mut remove = std::mem::take(unused);
        remove.extend(dropped);
        remove_files(remove)?;
    }
    let last = files.pop().expect("index < len");
    let mut writer = FileWriter::new(last, pos).ok_or_else(|| Error::BadStoreFile {
        path: files
            .first()
            .map(|f| f.path().to_owned())
            .unwrap_or_default(),
        reason: "last file still in use".into(),
    })?;
    if plan.repair || cut {
        writer.zero_tail()?;
    }
    files.push(Arc::clone(writer.file()));
    Ok((writer, times.floor))
}

/// Names the file a corruption was found in.
fn in_file(e: Error, file: &MappedFile) -> Error {
    match e {
        Error::Corrupted { offset, reason } => Error::Corrupted {
            offset,
            reason: format!("{reason} (in {})", file.path().display()),
        },
        other => other,
    }
}

/// Takes the trailing files that hold nothing (prepared by the allocation thread, never
/// written) off `files`, keeping at least one file, and returns them first to last, for
/// reuse (after a crash, once zeroed: see [`CommitLog::open`](super::CommitLog::open)).
/// Nothing is removed here: a refused open deletes nothing.
pub(super) fn split_unused_tail(
    files: &mut Vec<Arc<MappedFile>>,
    written_below: u64,
) -> Vec<Arc<MappedFile>> {
    let mut unused = Vec::new();
    while files.len() > 1
        && files
            .last()
            .is_some_and(|f| f.start_offset() >= written_below && MappedFile::is_unused(f))
    {
        unused.push(files.pop().expect("len > 1"));
    }
    unused.reverse();
    unused
}

/// Removes files that lie past the end of the log, newest first, syncing their directory
/// after each: a failure, a crash or a power cut part-way leaves the names without a gap
/// (which would refuse every later open), whatever order the filesystem makes removals
/// durable in.
pub(super) fn remove_files(mut files: Vec<Arc<MappedFile>>) -> Result<()> {
    files.sort_by_key(|f| std::cmp::Reverse(f.start_offset()));
    for file in &files {
        file.remove()?;
        file.sync_parent()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::io_hook::IoHook;
    use std::path::Path;

    /// Fails the removal of one file.
    struct FailRemove(std::path::PathBuf);

    impl IoHook for FailRemove {
        fn before_remove(&self, path: &Path) -> std::io::Result<()> {
            match path == self.0 {
                true => Err(std::io::Error::other("injected")),
                false => Ok(()),
            }
        }
    }

    #[test]
    fn files_are_removed_newest_first_so_a_failure_leaves_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4096;
        let name = |n: u64| crate::layout::file_name(n * size as u64);
        let hook: Arc<dyn IoHook> = Arc::new(FailRemove(dir.path().join(name(2))));
        let files: Vec<_> = (0..4u64)
            .map(|n| {
                let at = n * size as u64;
                Arc::new(MappedFile::create(dir.path(), at, size, Some(hook.clone())).unwrap())
            })
            .collect();
        // Given oldest first, as a scan finds them.
        assert!(remove_files(files[1..].to_vec()).is_err());
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [name(0), name(1), name(2)]);
    }

    #[test]
    fn a_store_time_far_past_the_one_before_and_the_clock_is_not_a_floor() {
        const DAY: i64 = 24 * 3600 * 1000;
        let now = 1_800_000_000_000;
        // The clock right: a damaged time years ahead is left out, sound ones count.
        let mut t = StoreTimes::new(now - 5_000, now);
        t.see(now - 4_000);
        t.see(now + 400 * DAY);
        assert_eq!(t.floor, now - 4_000);
        t.see(now - 3_000);
        assert_eq!(t.floor, now - 3_000);
        // The clock a year behind (reset before NTP ran): sound times still count, so
        // store times keep rising.
        let behind = now - 365 * DAY;
        let mut t = StoreTimes::new(now - 5_000, behind);
        t.see(now - 4_000);
        assert_eq!(t.floor, now - 4_000);
        // Damaged and the clock behind: past both, left out.
        t.see(now + 400 * DAY);
        assert_eq!(t.floor, now - 4_000);
        // No checkpoint time: the clock alone judges the first record.
        let mut t = StoreTimes::new(0, now);
        t.see(now + 400 * DAY);
        assert_eq!(t.floor, 0);
        let mut t = StoreTimes::new(0, now);
        t.see(now + DAY / 2);
        assert_eq!(t.floor, now + DAY / 2);
        // A store idle for days is no jump to doubt while the clock agrees.
        let mut t = StoreTimes::new(now - 10 * DAY, now);
        t.see(now - 1_000);
        assert_eq!(t.floor, now - 1_000);
        // Idle for days and the clock behind: only the first time after the gap is left
        // out; the next is judged against it, and the floor goes on rising.
        let mut t = StoreTimes::new(now - 10 * DAY, behind);
        t.see(now - 10 * DAY + 1);
        t.see(now - 5_000);
        assert_eq!(t.floor, now - 10 * DAY + 1);
        t.see(now - 4_000);
        t.see(now - 3_000);
        assert_eq!(t.floor, now - 3_000);
        // A damaged time in the middle: the record after it counts again.
        let mut t = StoreTimes::new(now - 5_000, now);
        t.see(now + 400 * DAY);
        t.see(now - 2_000);
        assert_eq!(t.floor, now - 2_000);
    }
}
