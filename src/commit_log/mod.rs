//! The commit log: one append-only sequence of records across fixed-size mapped files.
//!
//! Positions, all commit-log offsets:
//! - `write_offset`: end of the appended records, published by the writer (under the put
//!   lock) after the copy;
//! - `flushed_offset`: end of the durable records, published by whoever flushes (under the
//!   flush lock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub(crate) mod confirm;
pub(crate) mod flush;
pub(crate) mod record;
mod reopen;
pub(crate) mod replicate;
pub(crate) mod start;
pub(crate) mod wake;

use crate::commit_log::record::{BLANK_RECORD_LEN, EncodedRecord, Peek};
use crate::config::{StoreConfig, Warmup};
use crate::error::{Error, Result};
use crate::fs::allocate::{Allocator, warm_first};
use crate::fs::disk::DiskWatch;
use crate::fs::file_queue::MappedFileQueue;
use crate::fs::mapped_file::FileWriter;
use crate::fs::ops::ReplaceFailed;
use crate::message::StoredMessage;
use crate::stats::{Counters, LogFigures, StoreStats};
pub(crate) use reopen::{RecoverySink, ScanFrom, ScanPlan};

/// Wakes the log's reader threads when new bytes become readable: the dispatch thread
/// when it sleeps between polls (flushes, waiting readers and topic deletions ring it),
/// and every reader sleeping deeply (see [`Wakeup::sleep_deep`]). Costs one or two
/// atomic loads when nobody sleeps.
#[derive(Default)]
pub(crate) struct Wakeup {
    pub(crate) sleeping: AtomicBool,
    pub(crate) thread: OnceLock<Thread>,
    /// Threads that read new records (the dispatch thread, the key index's and broker
    /// dispatchers' threads). While busy they look for new records every millisecond;
    /// idle for a while, they sleep up to `DEEP_SLEEP`, counted in `deep`, and whoever
    /// makes records readable wakes them.
    readers: parking_lot::Mutex<Vec<Thread>>,
    deep: std::sync::atomic::AtomicUsize,
}

/// Light polls in a row that found nothing before a reader sleeps deeply...
pub(crate) const DEEP_AFTER: u32 = 20;
/// ...for at most this long (an idle store's readers wake 10 times a second, not 1,000).
pub(crate) const DEEP_SLEEP: Duration = Duration::from_millis(100);

impl Wakeup {
    /// Wakes the dispatch thread if it sleeps, and every reader sleeping deeply.
    pub(crate) fn wake(&self) {
        if self.sleeping.load(Ordering::Acquire)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        self.wake_deep();
    }

    /// Wakes the readers sleeping deeply. Callers made records readable with a SeqCst
    /// store (or read-modify-write) before; `sleep_deep` announces a sleep with a SeqCst
    /// increment before its SeqCst re-check, so one of the two sees the other.
    pub(crate) fn wake_deep(&self) {
        if self.deep.load(Ordering::SeqCst) > 0 {
            for t in self.readers.lock().iter() {
                t.unpark();
            }
        }
    }

    /// Unparks the dispatch thread whether or not it says it sleeps (a spare unpark only
    /// costs it one extra look), and every reader sleeping deeply: for work it cannot see
    /// in the log's offsets, a topic deletion or a waiting reader.
    pub(crate) fn ring(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
        self.wake_deep();
    }

    /// The calling thread reads records and may sleep deeply.
    pub(crate) fn register_reader(&self) {
        self.readers.lock().push(std::thread::current());
    }

    /// Sleeps up to `longest` ([`DEEP_SLEEP`]) unless `more()` (read with SeqCst loads
    /// after the announcement) says records arrived meanwhile.
    pub(crate) fn sleep_deep(&self, longest: Duration, more: impl Fn() -> bool) {
        self.deep.fetch_add(1, Ordering::SeqCst);
        if !more() {
            std::thread::park_timeout(longest);
        }
        self.deep.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The next queue offset of every topic/queue.
pub(crate) type QueueOffsets = HashMap<String, HashMap<u32, u64>>;

/// Where a put (of one record or a batch) landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Appended {
    pub physical_offset: u64,
    pub queue_offset: u64,
    pub wrote_bytes: u32,
    pub store_timestamp: i64,
    pub count: u32,
    /// When the append returned (the put lock released), by the monotonic clock: where
    /// an async put's latency ends.
    pub at: Instant,
}

/// A reader's view of one file, kept between reads.
#[derive(Default)]
pub(crate) struct ReadCursor {
    view: Option<(u64, bytes::Bytes)>,
    limit: u64,
}

/// What only the holder of the put lock may touch.
struct AppendState {
    writer: FileWriter,
    allocator: Allocator,
    /// Next queue offset of each topic/queue.
    queue_offsets: QueueOffsets,
    last_store_timestamp: i64,
    /// Store times come from the reading of the monotonic clock each append takes anyway.
    wall: WallClock,
    closed: bool,
}

/// The wall clock in milliseconds, read as an anchor (a wall-clock reading and the
/// monotonic instant just before it) plus the monotonic time since, re-anchored every
/// `REANCHOR`: an append reads one clock instead of two (each read costs about 30 ns
/// here, a few percent of an async put). The two clocks run at the same rate (NTP slews
/// both), so only a step of the wall clock separates them, and it shows within
/// `REANCHOR` of running time (the monotonic clock stops while the machine is
/// suspended: after a resume too). Kept in nanoseconds and rounded down once, and the
/// anchor's instant is read before its wall-clock reading, so a store time is never
/// below a wall-clock reading taken before it (a born time).
struct WallClock {
    /// The anchor's instant and its wall-clock time in ns since the epoch (u64 lasts
    /// until 2554; 64-bit arithmetic keeps a 128-bit division off every put).
    anchor: Option<(Instant, u64)>,
}

impl WallClock {
    const REANCHOR: Duration = Duration::from_millis(100);

    fn ms_at(&mut self, now: Instant) -> i64 {
        if let Some((at, ns)) = self.anchor {
            let since = now.saturating_duration_since(at);
            if since < Self::REANCHOR {
                // Below 100 ms: the nanoseconds fit in u64 many times over.
                return (ns.saturating_add(since.as_nanos() as u64) / 1_000_000) as i64;
            }
        }
        // A fresh instant, not `now`: the thread may have been preempted since `now`, and
        // pairing it with a later wall-clock reading would put every store time until the
        // next anchor ahead by that much.
        let at = Instant::now();
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.anchor = Some((at, ns));
        (ns / 1_000_000) as i64
    }
}

pub(crate) struct CommitLog {
    files: MappedFileQueue,
    state: PutLock<AppendState>,
    /// When the current holder took the put lock, in ns since `epoch` (+1); 0 when free.
    lock_taken_at: AtomicU64,
    epoch: Instant,
    busy_limit: Duration,
    slow_put_threshold: Duration,
    write_offset: AtomicU64,
    /// Under sync flush, the end of what the writer has made visible (see
    /// [`CommitLog::commit_staged`]); the write offset is further while bytes are gathered.
    committed_offset: AtomicU64,
    flushed_offset: AtomicU64,
    /// Messages and record bytes appended since the open, counted with the write offset.
    appended: AtomicU64,
    appended_bytes: AtomicU64,
    /// Messages appended when the last flush started (under the flush lock).
    flushed_messages: AtomicU64,
    counters: Arc<Counters>,
    /// Sync flush: readers see only flushed bytes, and records go in through the file.
    sync_flush: bool,
    /// Reads check each body's CRC (`StoreConfig::verify_crc_on_read`).
    verify_crc_on_read: bool,
    /// Where the log starts, recorded before retention deletes a file (`start`).
    log_start: Mutex<start::LogStart>,
    flush_lock: Mutex<()>,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<Arc<std::io::Error>>>,
    /// The abort marker, where a poisoning is recorded for the next open.
    abort_path: std::path::PathBuf,
    io_hook: Option<Arc<dyn crate::IoHook>>,
    wakeup: Arc<Wakeup>,
    disk: DiskWatch,
    /// Replication: the offset below which records are replicated to enough replicas.
    confirm: confirm::Confirm,
    /// Offsets that retention must keep (a log being streamed), and what it is retiring.
    holds: Mutex<Holds>,
}

/// What retention must keep, and what it is retiring.
#[derive(Default)]
struct Holds {
    /// Held offsets, with how many hold each.
    offsets: std::collections::BTreeMap<u64, usize>,
    /// While retention retires the log below this offset, no hold below it is granted.
    retiring: u64,
}

impl CommitLog {
    /// Opens `{root}/commitlog/`, creating it when missing, and finds where to continue
    /// (see [`reopen::scan_and_truncate`]); `sink` sees every record scanned.
    pub(crate) fn open(
        config: &StoreConfig,
        plan: ScanPlan,
        sink: &mut dyn RecoverySink,
    ) -> Result<CommitLog> {
        let clean = !plan.repair;
        let dir = config.commit_log_dir();
        crate::fs::ops::create_dir_durable(&dir, config.io_hook.as_ref())?;
        let file_size = config.commit_log_file_size;
        let mut loaded =
            MappedFileQueue::load_files(&dir, file_size, config.io_hook.clone(), !clean)?
                .into_iter()
                .map(Arc::new)
                .collect::<Vec<_>>();
        // Files below the recorded start went by retention; a first file past it means
        // the files between are missing, and their acknowledged records with them.
        let log_start_path = crate::layout::log_start_file(config.root());
        let mut log_start = start::LogStart::open(log_start_path.clone(), config.io_hook.clone())?;
        if let (Some(first), Some(recorded)) = (loaded.first(), log_start.recorded())
            && first.start_offset() != recorded
        {
            let first = first.start_offset();
            if !plan.trust_log_start {
                // Another writer ran since (see `ScanPlan::trust_log_start`): the files are
                // taken as they are, and their start recorded now, before this open (or a
                // later one) rewrites the checkpoint with a CRC that would vouch for the
                // stale record.
                log::warn!(
                    "another writer ran on the store: its log starts at {first}, not at the \
                     recorded {recorded}"
                );
                log_start.record(first)?;
            } else if first > recorded {
                let reason = format!(
                    "the commit-log files from offset {recorded} to {first} are missing: \
                     retention deleted the log below {recorded} only (to accept the loss, \
                     remove {} or set `truncate_damaged_log`)",
                    log_start_path.display()
                );
                if !config.truncate_damaged_log {
                    return Err(Error::BadStoreFile { path: dir, reason });
                }
                log::error!("{reason}; accepted, as configured");
            }
        }
        let counters = Arc::new(Counters::default());
        let mut allocator = Allocator::new(
            dir.clone(),
            file_size as usize,
            config.io_hook.clone(),
            config.preallocate,
            config.effective_warmup(),
            Arc::clone(&counters),
        )?;
        let mut unused = reopen::split_unused_tail(&mut loaded, plan.written_below);

        if loaded.is_empty() && plan.expected_end > 0 && !plan.truncate_damage {
            return Err(Error::corrupted(
                0,
                format!(
                    "{} holds no file, but the checkpoint vouches for records up to {}",
                    dir.display(),
                    plan.expected_end
                ),
            ));
        }
        let (writer, last_store_timestamp) = match loaded.is_empty() {
            // A new store. The start of its first file is touched when that is the warm-up
            // (the ahead thread touches the rest just ahead of the writer), since unwarmed
            // pages made async puts 1.2–1.7× slower; zeroing and flushing is not worth
            // stalling the open for.
            true => {
                let mut first = allocator.take(0)?;
                if config.effective_warmup() == Warmup::Touch {
                    let upto = warm_first(Warmup::Touch, file_size as usize);
                    first.warm_until(Warmup::Touch, allocator.touch_zeros(), upto, &|| false)?;
                }
                let writer =
                    FileWriter::new(Arc::new(first), 0).expect("a new file has no other owner");
                loaded.push(Arc::clone(writer.file()));
                sink.begin(0, 0)?;
                (writer, 0)
            }
            false => reopen::scan_and_truncate(&mut loaded, plan, sink, &mut unused)?,
        };
        // The scan accepted the log: the unused files past it are reused as the next
        // files, as long as they follow the writer's file without a gap (a scan that cut
        // the log in an earlier file removed them, with the ones between); the others go,
        // newest first. After a crash a reused one is zeroed first: a power cut may have
        // kept pages of it the writer had reached and lost its first, which `is_unused`
        // reads. Zeroing in place costs about 0.1 s per GiB; removing it instead cost
        // 0.75 s here (its warmed pages and blocks freed), and the allocation thread then
        // made another.
        let mut next = writer.file().start_offset() + file_size;
        let mut remove = Vec::new();
        for spare in unused {
            let mut file = match Arc::try_unwrap(spare) {
                Ok(file) if remove.is_empty() && file.start_offset() == next => file,
                Ok(file) => {
                    remove.push(Arc::new(file));
                    continue;
                }
                Err(shared) => {
                    remove.push(shared);
                    continue;
                }
            };
            if clean || file.zero_unread().unwrap_or(false) {
                allocator.adopt(file);
                next += file_size;
            } else {
                remove.push(Arc::new(file));
            }
        }
        reopen::remove_files(remove)?;
        let files = MappedFileQueue::new(file_size);
        for file in loaded {
            files.push(file);
        }
        let write_offset = writer.offset();
        let disk = DiskWatch::new(
            config.commit_log_dir(),
            config.disk_full_ratio,
            config.disk_check_interval,
        );
        disk.maybe_sample();
        log::info!(
            "commit log opened: {} files, write offset {write_offset}",
            files.files_from(0).len(),
        );
        // The allocation thread starts preparing files only once the whole open has
        // succeeded (`start_preparing`): an open refused later, say while rebuilding the
        // consume queues, must leave the log directory as it found it.
        let mut writer = writer;
        if config.flush_mode.is_sync() {
            through_file(&mut writer);
        }
        Ok(CommitLog {
            appended: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            flushed_messages: AtomicU64::new(0),
            counters,
            sync_flush: config.flush_mode.is_sync(),
            verify_crc_on_read: config.verify_crc_on_read,
            log_start: Mutex::new(log_start),
            files,
            state: PutLock::new(AppendState {
                writer,
                allocator,
                queue_offsets: HashMap::new(),
                last_store_timestamp,
                wall: WallClock { anchor: None },
                closed: false,
            }),
            lock_taken_at: AtomicU64::new(0),
            epoch: Instant::now(),
            busy_limit: config.busy_limit,
            slow_put_threshold: config.slow_put_threshold,
            write_offset: AtomicU64::new(write_offset),
            committed_offset: AtomicU64::new(write_offset),
            flushed_offset: AtomicU64::new(write_offset),
            flush_lock: Mutex::new(()),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            abort_path: crate::layout::abort_file(config.root()),
            io_hook: config.io_hook.clone(),
            wakeup: Arc::new(Wakeup::default()),
            disk,
            confirm: confirm::Confirm::new(config.read_confirmed_only),
            holds: Mutex::new(Holds::default()),
        })
    }

    /// Starts each rebuilt queue at its next offset; called once, before the first put.
    pub(crate) fn restore_queue_offsets(&self, table: QueueOffsets) {
        self.state.lock().queue_offsets = table;
    }

    /// Latest store time in the log.
    pub(crate) fn last_store_timestamp(&self) -> i64 {
        self.state.lock().last_store_timestamp
    }

    /// The oldest file and the offset it ends at, unless it is the file being written.
    pub(crate) fn oldest_file(&self) -> Option<(std::path::PathBuf, u64)> {
        let file = self.files.first_of_several()?;
        Some((
            file.path().to_owned(),
            file.start_offset() + self.file_size(),
        ))
    }

    /// Keeps the files from the one holding `from` on until [`CommitLog::release`]; refused
    /// ([`Error::OutOfRange`]) below the log's start, or below a file retention is
    /// retiring. Checked and taken under the lock retention retires under, so no file goes
    /// between the two.
    pub(crate) fn hold(&self, from: u64) -> Result<()> {
        let mut holds = self.holds.lock();
        let start = self.min_offset().max(holds.retiring);
        if from < start {
            return Err(Error::OutOfRange {
                offset: from,
                start,
                end: self.write_offset(),
            });
        }
        *holds.offsets.entry(from).or_insert(0) += 1;
        Ok(())
    }

    /// Ends one [`CommitLog::hold`] of `from`.
    pub(crate) fn release(&self, from: u64) {
        let mut holds = self.holds.lock();
        if let Some(n) = holds.offsets.get_mut(&from) {
            *n -= 1;
            if *n == 0 {
                holds.offsets.remove(&from);
            }
        }
    }

    /// Starts retiring the log below `end` (retention, before it moves the queues'
    /// minimums past it): false, and nothing starts, when a hold keeps a byte below it.
    /// From here until [`CommitLog::end_retire`] no hold below `end` is granted.
    pub(crate) fn begin_retire(&self, end: u64) -> bool {
        let mut holds = self.holds.lock();
        if holds
            .offsets
            .keys()
            .next()
            .is_some_and(|lowest| *lowest < end)
        {
            return false;
        }
        holds.retiring = end;
        true
    }

    /// Ends [`CommitLog::begin_retire`], whether the file went or not.
    pub(crate) fn end_retire(&self) {
        self.holds.lock().retiring = 0;
    }

    /// Records where the log starts, once an open has succeeded (see `start`). Best
    /// effort: an open does not fail for it (say, no room on a full disk for the file).
    /// A failure leaves the record as it was: absent (no protection yet), above the first
    /// file (kept, as after a crash between a record and its deletion), or below it after
    /// the operator's override (the next open refuses again).
    pub(crate) fn record_start(&self) {
        if let Err(e) = self.log_start.lock().record(self.min_offset()) {
            log::warn!("recording where the log starts: {e}");
        }
    }

    /// Records `end` as the log's start, before retention removes the oldest file (which
    /// must end there, below the writer's file): a crash between the two leaves a file
    /// below the recorded start, which the next open keeps; the other order could leave a
    /// file missing above it, which the next open would refuse.
    ///
    /// Where no start is recorded (a store written before the record existed, or one
    /// whose record was lost), a failure to create it does not stop the deletion: nothing
    /// recorded protects nothing, and the next open takes the start from the files, as
    /// this one did. On a full disk the record's first block may be what is missing.
    pub(crate) fn record_start_at(&self, end: u64) -> Result<()> {
        if self.min_offset() + self.file_size() != end || self.write_offset() < end {
            return Ok(());
        }
        let mut start = self.log_start.lock();
        match start.record(end) {
            Err(e) if start.recorded().is_none() => {
                log::warn!("deleting the log's first file without recording its start: {e}");
                Ok(())
            }
            recorded => recorded,
        }
    }

    /// Removes the oldest file if it still ends at `end` and is not the file being written
    /// (retention records the new start first: [`CommitLog::record_start_at`]).
    pub(crate) fn remove_oldest_file(&self, end: u64) -> Result<bool> {
        let size = self.file_size();
        let mut first = true;
        let removed = self.files.remove_front_while(1, |file| {
            std::mem::take(&mut first) && file.start_offset() + size == end
        })?;
        Ok(!removed.is_empty())
    }

    /// The disk-usage watch that may refuse puts.
    pub(crate) fn disk(&self) -> &DiskWatch {
        &self.disk
    }

    /// Rung whenever bytes are flushed, replicated or confirmed. Appends under async flush
    /// only wake readers sleeping deeply: waking a thread per put would cost a futex call
    /// and a context switch each (measured: async puts 5× slower), so busy readers poll
    /// every millisecond instead.
    pub(crate) fn wakeup(&self) -> &Arc<Wakeup> {
        &self.wakeup
    }

    pub(crate) fn file_size(&self) -> u64 {
        self.files.file_size()
    }

    /// End of the appended records.
    pub(crate) fn write_offset(&self) -> u64 {
        self.write_offset.load(Ordering::Acquire)
    }

    /// End of the durable records.
    pub(crate) fn flushed_offset(&self) -> u64 {
        self.flushed_offset.load(Ordering::Acquire)
    }

    /// [`CommitLog::readable_offset`] after a SeqCst fence, for a reader's last look
    /// before it sleeps deeply (see `Wakeup::sleep_deep`).
    pub(crate) fn readable_offset_before_sleep(&self) -> u64 {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.readable_offset()
    }

    /// End of what readers may see (`lookup_message`, and dispatch, through which
    /// `get_message` sees the rest): the flushed offset under sync
    /// flush, so nothing a crash could take back is ever served; the written offset under
    /// async flush.
    pub(crate) fn readable_offset(&self) -> u64 {
        let shippable = self.shippable_offset();
        if self.confirm.limits_readers() {
            shippable.min(self.confirm_offset())
        } else {
            shippable
        }
    }

    /// What a leader may ship to followers: the durable end under sync flush (so nothing
    /// a crash could take back is replicated), else the written end.
    pub(crate) fn shippable_offset(&self) -> u64 {
        if self.sync_flush {
            self.flushed_offset()
        } else {
            self.write_offset()
        }
    }

    /// Lets the allocation threads prepare the next file and work ahead of the writer;
    /// the store calls it once its open has succeeded.
    pub(crate) fn start_preparing(&self) {
        let mut state = self.state.lock();
        let state = &mut *state;
        let next = state.writer.file().start_offset() + self.file_size();
        state.allocator.activate(&mut state.writer);
        state.allocator.prepare(next);
    }

    /// The counters this log and the rest of the store keep.
    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The stats: the counters, with what the log knows itself (`dispatched`: how far
    /// dispatch has indexed).
    /// Dispatch is failing for lack of space (`Some(why)`): puts are refused until it is
    /// not (`None`).
    pub(crate) fn set_dispatch_stalled(&self, why: Option<String>) {
        self.disk.set_dispatch_stalled(why);
    }

    pub(crate) fn stats(&self, dispatched: u64) -> StoreStats {
        self.counters.snapshot(|| {
            let (flushed, written) = (self.flushed_offset(), self.write_offset());
            LogFigures {
                puts: self.appended.load(Ordering::Relaxed),
                put_bytes: self.appended_bytes.load(Ordering::Relaxed),
                flush_lag_bytes: written.saturating_sub(flushed),
                dispatch_lag_bytes: self.readable_offset().saturating_sub(dispatched),
            }
        })
    }

    /// First offset still stored.
    pub(crate) fn min_offset(&self) -> u64 {
        self.files.min_offset().unwrap_or(0)
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.is_poisoned() {
            return Err(self.poison_error());
        }
        Ok(())
    }

    /// The error every write gets once the log is poisoned.
    pub(crate) fn poison_error(&self) -> Error {
        let cause = self.poison_cause.lock().clone();
        let cause = cause.unwrap_or_else(|| Arc::new(std::io::Error::other("poisoned")));
        Error::poisoned(&cause)
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn poison(&self, cause: &Error) {
        self.poison_with(cause.to_io("flush failed"));
    }

    /// Refuses every later write and flush, for `cause` (the first cause is kept).
    pub(crate) fn poison_with(&self, cause: Arc<std::io::Error>) {
        let mut slot = self.poison_cause.lock();
        if slot.is_none() {
            log::error!("refusing further writes: {cause}");
            *slot = Some(cause);
            let flushed = self.flushed_offset();
            if let Err(e) =
                crate::fs::lock::record_poison(&self.abort_path, flushed, self.io_hook.as_ref())
            {
                log::error!("could not record the poisoning for the next open: {e}");
            }
        }
        self.poisoned.store(true, Ordering::Release);
    }

    /// Marks the put lock, just taken, as held from `since` until the mark drops, for
    /// [`CommitLog::lock_held_for`]. Called by whoever holds it. A panic under the mark
    /// clears it too (the lock stays usable, and puts must not read as page-cache busy
    /// for good), and poisons the log: the writer's state may no longer match its file.
    fn mark_held(&self, since: Instant) -> HeldMark<'_> {
        let taken_at = since.duration_since(self.epoch).as_nanos() as u64 + 1;
        self.lock_taken_at.store(taken_at, Ordering::Release);
        HeldMark {
            log: self,
            // A put from a destructor during another panic's unwind is not a panic
            // under the lock.
            unwinding: std::thread::panicking(),
        }
    }

    /// How long the current holder has held the put lock, if it is held.
    pub(crate) fn lock_held_for(&self) -> Option<Duration> {
        let taken = self.lock_taken_at.load(Ordering::Acquire);
        (taken != 0).then(|| {
            let now = self.epoch.elapsed().as_nanos() as u64 + 1;
            Duration::from_nanos(now.saturating_sub(taken))
        })
    }

    /// RocketMQ's "OS page cache busy": the put lock has been held past the busy limit.
    pub(crate) fn is_busy(&self) -> bool {
        self.lock_held_for().is_some_and(|h| h > self.busy_limit)
    }

    /// Starts `topic` again at queue offset 0, under the put lock: `before(cutoff)` runs
    /// first with the offset the next record will get at the earliest (the caller makes
    /// the deletion durable there), then the topic's next queue offsets are forgotten. No
    /// record of the topic is appended between the two. Returns the cutoff. A failure of
    /// `before` that may have left the deletion on disk poisons the log; one known to
    /// have left nothing (before the rename) leaves the topic as it was.
    pub(crate) fn reset_topic(
        &self,
        topic: &str,
        before: impl FnOnce(u64) -> std::result::Result<(), ReplaceFailed>,
    ) -> Result<u64> {
        self.check_poisoned()?;
        let mut state = self.state.lock();
        if state.closed {
            return Err(Error::ShutDown);
        }
        let cutoff = state.writer.offset();
        // Counted as a hold of the put lock (`PageCacheBusy`): the record is synced.
        let mark = self.mark_held(Instant::now());
        let recorded = before(cutoff);
        drop(mark);
        match recorded {
            Ok(()) => {}
            Err(ReplaceFailed {
                error,
                maybe_replaced: false,
            }) => return Err(error),
            Err(ReplaceFailed { error, .. }) => {
                // Whether the deletion reached the disk is unknown (a failed directory
                // sync after the rename): a put that continued the old offsets could
                // then meet a deletion at the next open. The log refuses writes until it
                // is reopened, which reads whichever state the disk holds.
                self.poison_with(error.to_io("recording a topic deletion"));
                return Err(error);
            }
        }
        state.queue_offsets.remove(topic);
        Ok(cutoff)
    }

    /// Appends already-encoded records of one topic/queue, all in one file, assigning
    /// consecutive queue offsets. Only this runs under the put lock.
    ///
    /// `started` is the caller's reading of the clock, taken after the messages' born
    /// times and before it encoded them: when the put lock is free, it stands for the
    /// moment the lock was taken (see [`CommitLog::append_stamped`]).
    pub(crate) fn append(
        &self,
        records: &mut [EncodedRecord],
        topic: &str,
        queue_id: u32,
        started: Instant,
    ) -> Result<Appended> {
        self.append_stamped(records, topic, queue_id, None, started)
    }

    /// [`CommitLog::append`] with the store time chosen by the caller (a replicated log's
    /// leader) instead of the clock; it is still raised to the last store time, so store
    /// times never decrease in log order.
    ///
    /// When the put lock is free, the caller's `started` stands for the moment it was
    /// taken, which saves a reading of the clock (about 20 ns of an async put's 400-500
    /// here): the store time and the lock hold that `PageCacheBusy` measures then start
    /// at most the encoding of the records earlier (under a millisecond for the largest
    /// message), and a store time is still never below a born time read before `started`.
    /// A put that waited for the lock reads the clock once it has it.
    pub(crate) fn append_stamped(
        &self,
        records: &mut [EncodedRecord],
        topic: &str,
        queue_id: u32,
        store_time: Option<i64>,
        started: Instant,
    ) -> Result<Appended> {
        self.check_poisoned()?;
        self.disk.check()?;
        if let Some(held) = self.lock_held_for().filter(|h| *h > self.busy_limit) {
            self.counters.page_cache_busy();
            return Err(Error::PageCacheBusy {
                held_ms: held.as_millis() as u64,
                limit_ms: self.busy_limit.as_millis() as u64,
            });
        }
        let total: usize = records.iter().map(EncodedRecord::len).sum();
        let max = self.file_size() as usize - BLANK_RECORD_LEN;
        if total > max {
            return Err(Error::RecordTooLarge { size: total, max });
        }

        let (mut state, now) = match self.state.try_lock() {
            Some(state) => (state, started),
            None => {
                let state = self.state.lock();
                (state, Instant::now())
            }
        };
        let mark = self.mark_held(now);
        let result = self.append_locked(
            &mut state,
            records,
            (topic, queue_id),
            total,
            (store_time, now),
        );
        drop(mark);
        drop(state);
        if !self.sync_flush && !self.confirm.limits_readers() {
            // Under async flush records are readable once written (with replication
            // limiting readers, once confirmed: the confirm move rings).
            self.wakeup.wake_deep();
        }
        let end = Instant::now();
        let took = end.saturating_duration_since(now);
        if took > self.slow_put_threshold {
            log::warn!("put to {topic}/{queue_id} spent {took:?} in the append path");
        }
        result.map(|appended| Appended {
            at: end,
            ..appended
        })
    }

    /// How the writer publishes the write offset. Under async flush the records are
    /// readable once it moves, and `append_stamped` then wakes the readers sleeping
    /// deeply: SeqCst, see `Wakeup::wake_deep`. Under sync flush the flush publishes them.
    fn write_offset_order(&self) -> Ordering {
        match self.sync_flush {
            true => Ordering::Release,
            false => Ordering::SeqCst,
        }
    }

    fn append_locked(
        &self,
        state: &mut AppendState,
        records: &mut [EncodedRecord],
        (topic, queue_id): (&str, u32),
        total: usize,
        (store_time, mut now): (Option<i64>, Instant),
    ) -> Result<Appended> {
        if state.closed {
            return Err(Error::ShutDown);
        }
        // Again under the lock (and after a roll, which can take long): a failed flush
        // poisons the log while puts wait for the lock, and every put that writes after
        // it must fail, under async flush too, where nothing else would fail it.
        self.check_poisoned()?;
        if total + BLANK_RECORD_LEN > state.writer.remaining() {
            self.roll(state)?;
            now = Instant::now();
            self.check_poisoned()?;
        }
        let next_queue_offset = queue_slot(&mut state.queue_offsets, topic, queue_id);
        let queue_offset = *next_queue_offset;
        let store_timestamp = store_time
            .unwrap_or_else(|| state.wall.ms_at(now))
            .max(state.last_store_timestamp);
        let physical_offset = state.writer.offset();
        let mut at = physical_offset;
        let mut next = queue_offset;
        for record in records.iter_mut() {
            // A transaction's half or rollback record takes queue offset 0 and leaves its
            // queue where it is: it never reaches a consume queue.
            let offset = if record.is_hidden() { 0 } else { next };
            next += u64::from(!record.is_hidden());
            record.assign(offset, at, store_timestamp);
            if let Err(e) = state.writer.write(record.as_bytes()) {
                return Err(self.write_failed(state, e));
            }
            at += record.len() as u64;
        }
        state.writer.publish();
        self.count_ahead_waits(&mut state.writer);
        let count = records.len() as u32;
        self.appended.fetch_add(u64::from(count), Ordering::Relaxed);
        self.appended_bytes
            .fetch_add(total as u64, Ordering::Relaxed);
        self.write_offset.store(at, self.write_offset_order());
        state.last_store_timestamp = store_timestamp;
        *next_queue_offset = next;
        Ok(Appended {
            physical_offset,
            queue_offset: if records[0].is_hidden() {
                0
            } else {
                queue_offset
            },
            wrote_bytes: total as u32,
            store_timestamp,
            count,
            // Replaced by `append_stamped` with its reading after the lock is released.
            at: now,
        })
    }

    /// A write into the page cache failed (through the file, under sync flush): nothing of
    /// the append is published, nor what was gathered since the last commit (none of it
    /// was acknowledged: only a flush that wrote and synced it does that), and the log
    /// refuses further writes, as after a failed flush, since the kernel's view of the
    /// file can no longer be trusted. The write offset goes back to the visible end.
    fn write_failed(&self, state: &mut AppendState, e: Error) -> Error {
        state.writer.rewind();
        self.poison_with(e.to_io("write failed"));
        self.write_offset
            .store(state.writer.offset(), Ordering::SeqCst);
        e
    }

    /// Counts the writer's waits for the thread working ahead of it, if any.
    #[inline]
    fn count_ahead_waits(&self, writer: &mut FileWriter) {
        if let Some((waits, took)) = writer.take_ahead_waits() {
            self.counters.ahead_waited(waits, took);
        }
    }

    /// Ends the current file with a blank record and continues in the next one.
    fn roll(&self, state: &mut AppendState) -> Result<()> {
        let left = state.writer.remaining();
        if left > 0 && left < BLANK_RECORD_LEN {
            // Only a damaged or foreign file ends so: no writer here leaves such a tail.
            return Err(Error::corrupted(
                state.writer.offset(),
                format!("{left} bytes left in the file, too few for its closing blank"),
            ));
        }
        if left > 0 {
            if let Err(e) = state.writer.write(&record::blank_record(left)) {
                return Err(self.write_failed(state, e));
            }
            state.writer.fill();
            state.writer.publish();
            self.count_ahead_waits(&mut state.writer);
            self.write_offset
                .store(state.writer.offset(), self.write_offset_order());
        }
        // Through the file, the bytes gathered for this file go in before the writer
        // leaves it (a flush syncs files in order, each up to its visible end).
        if let Err(e) = state.writer.commit() {
            return Err(self.write_failed(state, e));
        }
        let next = state.writer.offset();
        // All of it is visible: a flush while the next file is awaited need not wait for
        // the put lock.
        self.committed_offset.store(next, Ordering::Release);
        let file = state.allocator.take(next)?;
        let mut writer = FileWriter::new(Arc::new(file), 0).expect("a new file has no other owner");
        if self.sync_flush {
            through_file(&mut writer);
        }
        self.files.push(Arc::clone(writer.file()));
        state.allocator.activate(&mut writer);
        state.writer = writer;
        state.allocator.prepare(next + self.file_size());
        Ok(())
    }

    /// Flushes everything appended so far and returns the new flushed offset. A failure
    /// poisons the log.
    pub(crate) fn flush(&self) -> Result<u64> {
        self.check_poisoned()?;
        let _guard = self.flush_lock.lock();
        // Checked again under the lock: a flush that failed while we waited for it may
        // have lost dirty pages, and syncing the same range again would "succeed".
        self.check_poisoned()?;
        let (target, messages) = self.commit_staged()?;
        let from = self.flushed_offset();
        if target <= from {
            return Ok(from);
        }
        let started = Instant::now();
        let mut flushed = from;
        for file in self.files.files_from(from) {
            if file.start_offset() >= target {
                break;
            }
            match file.flush() {
                Ok(pos) => flushed = file.start_offset() + pos as u64,
                Err(e) => {
                    self.poison(&e);
                    return Err(e);
                }
            }
        }
        // Counted before the flushed offset is published, so that whoever sees its bytes
        // durable (Acquire) also sees them counted.
        let before = self.flushed_messages.swap(messages, Ordering::Relaxed);
        let covered = messages.saturating_sub(before);
        self.counters
            .flushed(flushed - from, covered, started.elapsed());
        self.flushed_offset.fetch_max(flushed, Ordering::SeqCst);
        self.wakeup.wake();
        Ok(self.flushed_offset())
    }

    /// Writes what the writer gathered through the file (sync flush), so that everything
    /// below the returned offset is in the page cache and visible, and returns it with
    /// the count of messages appended below it. Takes the put lock, briefly, only when
    /// something was gathered since the last commit; a failed write poisons the log.
    pub(crate) fn commit_staged(&self) -> Result<(u64, u64)> {
        self.commit_staged_with(|| Some(self.state.lock()))
            .expect("a blocking lock is always taken")
    }

    /// [`CommitLog::commit_staged`] only if the put lock is free (`None` when it is
    /// not): for a thread that must not wait behind a put or a flush's write.
    pub(crate) fn try_commit_staged(&self) -> Option<Result<(u64, u64)>> {
        self.commit_staged_with(|| self.state.try_lock())
    }

    fn commit_staged_with<'a>(
        &'a self,
        lock: impl FnOnce() -> Option<std::sync::MutexGuard<'a, AppendState>>,
    ) -> Option<Result<(u64, u64)>> {
        // The message count is for the flush stats only.
        let unlocked = || (self.write_offset(), self.appended.load(Ordering::Relaxed));
        if !self.sync_flush {
            return Some(Ok(unlocked()));
        }
        if self.write_offset() == self.committed_offset() {
            return Some(Ok(unlocked()));
        }
        if let Err(e) = self.check_poisoned() {
            return Some(Err(e));
        }
        let mut state = lock()?;
        // Counted as a hold of the put lock (`PageCacheBusy`): a large write can be slow.
        let mark = self.mark_held(Instant::now());
        let committed = state.writer.commit();
        drop(mark);
        if let Err(e) = committed {
            return Some(Err(self.write_failed(&mut state, e)));
        }
        let end = state.writer.offset();
        self.committed_offset.store(end, Ordering::Release);
        Some(Ok((end, self.appended.load(Ordering::Relaxed))))
    }

    /// Under sync flush, the end of the records in the page cache (visible); gathered
    /// records lie past it.
    pub(crate) fn committed_offset(&self) -> u64 {
        self.committed_offset.load(Ordering::Acquire)
    }

    /// The record at `offset`, if one starts there below `limit`.
    pub(crate) fn read(&self, offset: u64, limit: u64) -> Result<Option<StoredMessage>> {
        self.read_with(&mut ReadCursor::default(), offset, limit, None)
    }

    /// [`CommitLog::read`] reusing the file view held by `cursor`, so reading many records
    /// of one file costs one file lookup.
    pub(crate) fn read_with(
        &self,
        cursor: &mut ReadCursor,
        offset: u64,
        limit: u64,
        topic_hint: Option<&Arc<str>>,
    ) -> Result<Option<StoredMessage>> {
        let Some((pos, _)) = self.record_in_view(cursor, offset, limit)? else {
            return Ok(None);
        };
        let (_, bytes) = cursor.view.as_ref().expect("record_in_view() covered it");
        // The body's CRC is checked on every read unless turned off: a clean open does
        // not check bodies (`verify_crc_on_clean_open`), and a byte damaged on disk
        // since must come back as an error, never as a changed message.
        let msg = record::decode_at(bytes, pos, offset, self.verify_crc_on_read, topic_hint)?;
        if msg.physical_offset != offset {
            return Err(Error::corrupted(offset, "no record starts here"));
        }
        Ok(Some(msg))
    }

    /// Whether reads check bodies' CRCs (`StoreConfig::verify_crc_on_read`).
    pub(crate) fn verifies_reads(&self) -> bool {
        self.verify_crc_on_read
    }

    /// Points `cursor` at the readable file holding `offset` and finds the record starting
    /// there: its position in the view and its size (the peek checks that it fits). `None`
    /// when no record starts there below `limit`.
    fn record_in_view(
        &self,
        cursor: &mut ReadCursor,
        offset: u64,
        limit: u64,
    ) -> Result<Option<(usize, usize)>> {
        // Offsets below the first file are not found by the file lookup.
        if offset >= limit || !self.cover(cursor, offset, limit) {
            return Ok(None);
        }
        let (start, bytes) = cursor.view.as_ref().expect("cover() checked it");
        let pos = (offset - start) as usize;
        match record::peek(&bytes[pos..], offset)? {
            Peek::Record { size } => Ok(Some((pos, size))),
            Peek::Blank | Peek::Empty => Ok(None),
        }
    }

    /// Points `cursor` at the readable part (below `limit`) of the file holding `offset`;
    /// false when no readable byte is there.
    fn cover(&self, cursor: &mut ReadCursor, offset: u64, limit: u64) -> bool {
        let covers = |c: &ReadCursor| {
            c.view.as_ref().is_some_and(|(start, bytes)| {
                offset >= *start && offset < *start + bytes.len() as u64
            }) && c.limit == limit
        };
        if covers(cursor) {
            return true;
        }
        let Some(file) = self.files.find(offset) else {
            return false;
        };
        let visible = (limit - file.start_offset()).min(file.write_pos() as u64) as usize;
        cursor.view = file.slice(0, visible).map(|b| (file.start_offset(), b));
        cursor.limit = limit;
        covers(cursor)
    }

    /// The bytes of the record at `offset`, if one starts there below `limit`: a slice of
    /// the mapped file, without a copy. Its fields are not checked (see `record::parse`).
    pub(crate) fn read_raw_with(
        &self,
        cursor: &mut ReadCursor,
        offset: u64,
        limit: u64,
    ) -> Result<Option<bytes::Bytes>> {
        let Some((pos, size)) = self.record_in_view(cursor, offset, limit)? else {
            return Ok(None);
        };
        let (_, bytes) = cursor.view.as_ref().expect("record_in_view() covered it");
        Ok(Some(bytes.slice(pos..pos + size)))
    }

    /// The readable bytes from `offset` to the end of its file or to `limit`, whichever
    /// comes first, without a copy.
    pub(crate) fn bytes_at(&self, offset: u64, limit: u64) -> Option<bytes::Bytes> {
        let file = self.files.find(offset)?;
        let pos = (offset - file.start_offset()) as usize;
        let visible = (limit.saturating_sub(file.start_offset()) as usize).min(file.write_pos());
        file.slice(pos, visible.checked_sub(pos)?)
    }

    /// Whether a record or a file's blank starts at `offset` (below `limit`): a record
    /// that passes recovery's checks, its PHYSICALOFFSET naming `offset` (a body's bytes
    /// can look like a size and a magic, not like that), or a blank that fills the rest
    /// of its file.
    pub(crate) fn starts_record(&self, offset: u64, limit: u64) -> bool {
        let Some(file) = self.files.find(offset) else {
            return false;
        };
        let left = file.size() - (offset - file.start_offset()) as usize;
        let bytes = self.bytes_at(offset, limit).unwrap_or_default();
        match record::Records::new(&bytes, offset).verified(false).next() {
            Some(Ok(record::Step::Record(_))) => true,
            Some(Ok(record::Step::Blank)) => record::blank_fills(&bytes, left).1,
            _ => false,
        }
    }

    /// Refuses further puts and stops the allocation threads; the caller then flushes.
    /// Puts waiting for the confirm offset are woken and resolve to `ShutDown`.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        let stopping = state.allocator.stop();
        drop(state);
        // Joined without the put lock (see `Allocator::stop`).
        stopping.join();
        self.confirm.close();
    }
}

/// Has a sync writer write through the file (see `FileWriter::write_through_file`); if its
/// descriptor cannot be opened, it goes on copying into the mapping, which is as safe,
/// only slower, rather than failing a put or a roll halfway.
fn through_file(writer: &mut FileWriter) {
    if let Err(e) = writer.write_through_file() {
        log::warn!("writing through the mapping instead: {e}");
    }
}

/// The next-queue-offset slot of a topic/queue, created at 0.
fn queue_slot<'a>(table: &'a mut QueueOffsets, topic: &str, queue_id: u32) -> &'a mut u64 {
    if !table.contains_key(topic) {
        table.insert(topic.to_owned(), HashMap::new());
    }
    table
        .get_mut(topic)
        .expect("inserted above")
        .entry(queue_id)
        .or_default()
}

/// The put lock's hold as `lock_held_for` sees it; see [`CommitLog::mark_held`].
struct HeldMark<'a> {
    log: &'a CommitLog,
    /// The thread was already unwinding when the mark was taken.
    unwinding: bool,
}

impl Drop for HeldMark<'_> {
    fn drop(&mut self) {
        self.log.lock_taken_at.store(0, Ordering::Release);
        if std::thread::panicking() && !self.unwinding {
            self.log.poison_with(Arc::new(std::io::Error::other(
                "a panic under the put lock",
            )));
        }
    }
}

/// The put lock: a futex-based mutex that spins briefly and then sleeps.
///
/// *Why not `parking_lot::Mutex`:* under contention it calls `sched_yield` up to seven
/// times before it parks. With more runnable threads than cores (producers, dispatch, the
/// key index, the allocation thread on two cores here), a yield hands the core away for a
/// whole time slice: producers of the load example waited 5–84 ms after such yields
/// (`perf sched timehist`); with this lock their p99 fell from 15–42 to 3–5 µs.
pub(crate) struct PutLock<T>(std::sync::Mutex<T>);

impl<T> PutLock<T> {
    pub(crate) fn new(value: T) -> Self {
        PutLock(std::sync::Mutex::new(value))
    }

    /// The lock; a panic while it was held (which poisons the log where the hold is
    /// marked, see [`CommitLog::mark_held`]) does not make it unusable.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lock if it is free now, without waiting; like [`PutLock::lock`], a panic while
    /// it was held does not make it unusable.
    pub(crate) fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, T>> {
        match self.0.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_follows_the_monotonic_one_between_anchors() {
        use crate::message::now_ms;
        let mut wall = WallClock { anchor: None };
        let t0 = Instant::now();
        let before = now_ms();
        let ms = wall.ms_at(t0);
        assert!(ms >= before && ms <= now_ms(), "anchored at {ms}");
        let (at, anchor_ns) = wall.anchor.unwrap();
        assert!(
            at >= t0,
            "the anchor's instant is read with its wall-clock reading"
        );
        // Within the anchor's reach: the anchor plus the monotonic time since.
        let later = at + Duration::from_micros(42_700);
        assert_eq!(
            wall.ms_at(later),
            ((anchor_ns + 42_700_000) / 1_000_000) as i64
        );
        // An instant before the anchor (another thread's reading) never goes back.
        assert_eq!(wall.ms_at(t0), ms);
        // Past it: a new wall-clock reading, not the anchor plus 10 minutes.
        let before = now_ms();
        let reanchored = wall.ms_at(t0 + Duration::from_secs(600));
        assert!(
            reanchored >= before && reanchored <= now_ms(),
            "{reanchored}"
        );
        assert!(wall.anchor.unwrap().1 > anchor_ns);
    }

    /// A panic while the put lock's hold is marked clears the mark (puts must not read
    /// as page-cache busy for good) and poisons the log (puts get a typed error).
    #[test]
    fn a_panic_under_the_put_lock_poisons_the_log_and_clears_the_busy_mark() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::StoreConfig::new(dir.path()).commit_log_file_size(1 << 16);
        let store = crate::MessageStore::open(config).unwrap();
        let msg = crate::Message::new("T", 0u32, b"body".to_vec());
        store.put_message(&msg).unwrap();
        let log = store.commit_log();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _state = log.state.lock();
            let _mark = log.mark_held(Instant::now());
            assert!(log.lock_held_for().is_some());
            panic!("inside the append");
        }));
        assert!(panicked.is_err());
        assert!(log.lock_held_for().is_none());
        assert!(!log.is_busy());
        let refused = store.put_message(&msg);
        assert!(
            matches!(refused, Err(Error::Poisoned { .. })),
            "{refused:?}"
        );
        assert_eq!(store.get_message("T", 0, 0, 1).unwrap().messages.len(), 1);
    }

    #[test]
    fn a_reader_sleeping_deeply_is_woken_by_new_records() {
        let wakeup = Arc::new(Wakeup::default());
        let readable = Arc::new(AtomicU64::new(0));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let reader = {
            let (wakeup, readable) = (Arc::clone(&wakeup), Arc::clone(&readable));
            std::thread::spawn(move || {
                wakeup.register_reader();
                // Far longer than the test waits: only a wake-up ends this sleep.
                while readable.load(Ordering::SeqCst) == 0 {
                    wakeup.sleep_deep(Duration::from_secs(3600), || {
                        readable.load(Ordering::SeqCst) > 0
                    });
                }
                tx.send(()).unwrap();
            })
        };
        // Once it sleeps (or is about to), records arrive and the writer rings.
        while wakeup.deep.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        readable.store(1, Ordering::SeqCst);
        wakeup.wake();
        assert!(
            rx.recv_timeout(Duration::from_secs(30)).is_ok(),
            "the reader was not woken"
        );
        reader.join().unwrap();
    }

    #[test]
    fn a_store_time_is_never_below_a_wall_clock_reading_taken_before_it() {
        // A message's born time is such a reading: store minus born must not go negative.
        use crate::message::now_ms;
        let mut wall = WallClock { anchor: None };
        for _ in 0..200_000 {
            let born = now_ms();
            let stored = wall.ms_at(Instant::now());
            assert!(stored >= born, "stored {stored} < born {born}");
        }
    }
}
