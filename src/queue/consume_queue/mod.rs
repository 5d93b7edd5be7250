//! One consume queue: the index of a topic/queue, 20-byte entries pointing into the commit
//! log, in files of a fixed number of entries under `{root}/consumequeue/{topic}/{queue}/`.
//!
//! The dispatch thread is the only writer (recovery writes before the store is shared). It
//! adds entries to a pending batch and [`ConsumeQueue::commit`]s it with one positional
//! write; readers see entries below the published `max_offset`, read by position.
//!
//! Files are sparse (see `fs::sparse_file`): a new file costs no disk until entries fill
//! it, and its creation is not synced on the spot; `ConsumeQueues::flush` makes the new
//! names durable with the entries, before the checkpoint vouches for them.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::mapped_file::PAGE_SIZE;
use crate::fs::ops;
use crate::fs::sparse_file::{self, FileCache};
use crate::queue::entry::{CQ_ENTRY_LEN, CqEntry};
use crate::search::partition_point;

mod load;

/// How a queue's files are taken at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// As found (after a clean exit).
    Keep,
    /// Entries pointing at or past this commit-log offset are dropped: recovery after a
    /// crash indexes those records again.
    DropFrom(u64),
    /// The queues are rebuilt from the log: the queue is emptied, unless it is expired
    /// (kept as it is: nothing could rebuild it, and its files hold its position).
    Rebuild,
}

/// What putting an entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Indexed {
    /// Appended at the end.
    Appended,
    /// The same entry was already there: nothing written.
    Already,
    /// A different entry is already at that queue offset: nothing written.
    Conflict(String),
    /// The queue offset is past the queue's end: writing it would leave a hole.
    Gap(String),
}

/// What every queue of a store shares: the file size, the fault hook and the descriptors.
pub(crate) struct QueueFiles {
    pub file_size: u64,
    pub hook: Option<Arc<dyn IoHook>>,
    pub cache: FileCache,
    next_key: AtomicU64,
    /// The commit log's first offset, for queues loaded after the open: their minimum
    /// moves past entries of deleted records.
    pub log_start: AtomicU64,
    /// A queue loaded after the open did not match the queue table: the store must not be
    /// marked clean, so that the next open checks and rebuilds the queues.
    pub suspect: AtomicBool,
    /// False once the store's shutdown has released the queues; held shared by a queue's
    /// load (which changes files) for as long as it runs.
    pub open: parking_lot::RwLock<bool>,
}

impl QueueFiles {
    pub(crate) fn new(file_size: u64, hook: Option<Arc<dyn IoHook>>, open_files: usize) -> Self {
        QueueFiles {
            file_size,
            hook,
            cache: FileCache::new(open_files),
            next_key: AtomicU64::new(0),
            log_start: AtomicU64::new(0),
            suspect: AtomicBool::new(false),
            open: parking_lot::RwLock::new(true),
        }
    }

    /// No queue loads from now on (each fails with `ShutDown`); waits for those running.
    pub(crate) fn close(&self) {
        *self.open.write() = false;
    }

    /// A queue was found damaged at run time: the store is not marked clean, and the next
    /// open checks and rebuilds the queues.
    pub(crate) fn mark_suspect(&self) {
        if !self.suspect.swap(true, Ordering::AcqRel) {
            log::error!("a consume queue is damaged: the next open checks and rebuilds them");
        }
    }
}

/// Entries a load reads at once when it searches a file's end.
const WINDOW: u64 = 4096;

/// No file (in `tail_rewritten`).
const NONE: u64 = u64::MAX;

/// A batch is written out once it holds this many bytes, whoever commits it.
const MAX_PENDING: usize = 64 * 1024;

/// The largest queue offset an entry can have: its byte offset in the queue's files
/// must fit RocketMQ's signed 64-bit file offsets (and ours, in u64 arithmetic).
pub(crate) const MAX_QUEUE_OFFSET: u64 = i64::MAX as u64 / CQ_ENTRY_LEN as u64;

/// Room a queue's pending buffer gets at a round's second entry: 16 entries, 320 bytes.
const FIRST_PENDING: usize = 16 * CQ_ENTRY_LEN;

/// The writer's side of a queue.
#[derive(Default)]
struct Tail {
    /// Encoded entries from `max_offset` on, not yet written.
    pending: Vec<u8>,
    /// `(file start, bytes allocated in it)` of the file last written: blocks up to there
    /// are allocated.
    allocated: (u64, u64),
    /// `(queue offset after it, commit-log offset)` of the last entry written or found
    /// at load, for the queue table; stale once the end moves elsewhere.
    last: (u64, u64),
}

/// A point a sync must reach: the bytes written, and the names created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncPoint {
    written: u64,
    names: u64,
    /// Start of the file whose stale tail was zeroed, if any.
    rewritten: Option<u64>,
}

pub(crate) struct ConsumeQueue {
    dir: PathBuf,
    io: Arc<QueueFiles>,
    /// This queue's files in the descriptor cache.
    key: u64,
    /// Start of the first file and end of the last (file-space bytes), if any file exists.
    span: RwLock<Option<(u64, u64)>>,
    tail: Mutex<Tail>,
    /// Queue offset of the first entry still stored.
    min_offset: AtomicU64,
    /// Next queue offset: entries below it are written and visible.
    max_offset: AtomicU64,
    /// Byte position (in the queue's logical file space) synced so far.
    flushed: AtomicU64,
    /// Files and directories created so far, and how many of those are durably named.
    names_created: AtomicU64,
    names_synced: AtomicU64,
    /// Loaded after a crash: entries past the end may remain, until `clear_stale_tail`.
    stale_tail: AtomicBool,
    /// The load found every byte of the queue's files zero past this queue offset
    /// (`u64::MAX`: not known).
    zeros_past: u64,
    /// Queue offset the load ended the queue at: entries from here on were indexed since.
    loaded_end: u64,
    /// `clear_stale_tail` zeroed bytes of the file starting here (`NONE` when not), which
    /// the next sync must make durable.
    tail_rewritten: AtomicU64,
    /// Why the entries found at load cannot be trusted (a zeroed entry below the end, or
    /// entries out of order): recovery then rebuilds the queues from the log.
    damage: Option<Box<str>>,
    /// The queue holds nothing and its next entry may come at any queue offset: a new
    /// queue (the log's start may have been deleted by retention). A queue emptied by crash
    /// recovery is instead positioned exactly where its next entry must go.
    free_start: AtomicBool,
    /// Expired (every entry points below the log's start) and kept by a rebuild: the first
    /// record of it the rebuild meets, if any, wins over the dead entries (they go, and the
    /// queue starts again at that record), unless it simply continues them.
    restartable: AtomicBool,
    /// Listed in `ConsumeQueues`' batch of queues with pending entries.
    pub(crate) in_batch: AtomicBool,
    /// Its directory was made ahead of its first file ([`ConsumeQueue::make_dir`]).
    dir_made: AtomicBool,
    /// Someone waits for this queue's next entries (see `queue::arrival`).
    pub(crate) watched: AtomicBool,
    /// Its topic was deleted and its files removed: a holder of an old reference reads
    /// nothing from it and never loads or trims it.
    pub(crate) dropped: AtomicBool,
    /// Not loaded yet (opened after a clean exit): what the queue table says it holds. Its
    /// files are read at first use ([`ConsumeQueue::ensure_loaded`]).
    unloaded: Mutex<Option<TableEnd>>,
    is_unloaded: AtomicBool,
    /// Found not to match the queue table when first read (see
    /// [`ConsumeQueue::try_load`]): its files may not say where its entries begin, so
    /// retention neither raises its minimum nor removes its files; the next open rebuilds
    /// it from the log.
    pub(super) found_damaged: AtomicBool,
}

/// A queue's end as the queue table records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableEnd {
    /// The next queue offset.
    pub next: u64,
    /// Commit-log offset of the last entry's record (0 when none).
    pub last_physical: u64,
}

impl std::fmt::Debug for ConsumeQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeQueue")
            .field("dir", &self.dir)
            .field("max_offset", &self.max_offset())
            .finish()
    }
}

impl Drop for ConsumeQueue {
    fn drop(&mut self) {
        if let Some((first, end)) = *self.span.get_mut() {
            for start in (first..end).step_by(self.io.file_size as usize) {
                self.io.cache.forget((self.key, start));
            }
        }
    }
}

impl ConsumeQueue {
    /// An empty queue whose directory is created with its first entry.
    pub(crate) fn new(dir: PathBuf, io: Arc<QueueFiles>) -> Self {
        let key = io.next_key.fetch_add(1, Ordering::Relaxed);
        ConsumeQueue {
            dir,
            io,
            key,
            span: RwLock::new(None),
            tail: Mutex::new(Tail::default()),
            min_offset: AtomicU64::new(0),
            max_offset: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            names_created: AtomicU64::new(0),
            names_synced: AtomicU64::new(0),
            stale_tail: AtomicBool::new(false),
            zeros_past: u64::MAX,
            loaded_end: 0,
            tail_rewritten: AtomicU64::new(NONE),
            damage: None,
            free_start: AtomicBool::new(true),
            restartable: AtomicBool::new(false),
            in_batch: AtomicBool::new(false),
            dir_made: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            unloaded: Mutex::new(None),
            is_unloaded: AtomicBool::new(false),
            found_damaged: AtomicBool::new(false),
        }
    }

    /// A queue whose files could not be loaded, to be rebuilt: holds nothing, and says why.
    pub(crate) fn damaged(dir: PathBuf, io: Arc<QueueFiles>, why: String) -> Self {
        let mut q = ConsumeQueue::new(dir, io);
        q.damage = Some(why.into());
        *q.free_start.get_mut() = false;
        q
    }

    /// Why this queue's entries could not be trusted when it was loaded, if so.
    pub(crate) fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    fn hook(&self) -> Option<&Arc<dyn IoHook>> {
        self.io.hook.as_ref()
    }

    /// Whether the queue holds nothing and has no history: its first entry may come at
    /// any queue offset.
    pub(crate) fn is_fresh(&self) -> bool {
        self.free_start.load(Ordering::Acquire)
    }

    /// Whether a rebuild kept the queue as expired (every entry points below the log's
    /// start): a record of it in the log starts it again at that record's offset.
    pub(crate) fn is_restartable(&self) -> bool {
        self.restartable.load(Ordering::Acquire)
    }

    /// Makes a queue that holds nothing, or only entries of deleted records and fewer than
    /// `next`, continue exactly at `next`: its earlier messages are gone from the log.
    pub(crate) fn position(&self, next: u64) -> Result<()> {
        self.ensure_loaded();
        let _tail = self.tail.lock();
        let dead_and_short = self.restartable.load(Ordering::Acquire) && self.max_offset() < next;
        if dead_and_short {
            self.remove_all_files(true)?;
            self.restartable.store(false, Ordering::Release);
            self.free_start.store(true, Ordering::Release);
        }
        if self.is_fresh() {
            let next = next.max(self.max_offset());
            self.min_offset.store(next, Ordering::Release);
            self.max_offset.store(next, Ordering::Release);
            self.free_start.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Identifies this queue for as long as the store is open.
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// Next queue offset (one past the last entry).
    pub(crate) fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    /// Next queue offset, counting the entries pending (not yet committed).
    pub(crate) fn next_offset(&self) -> u64 {
        let tail = self.tail.lock();
        self.max_offset() + (tail.pending.len() / CQ_ENTRY_LEN) as u64
    }

    /// First queue offset still stored.
    pub(crate) fn min_offset(&self) -> u64 {
        self.ensure_loaded();
        self.min_offset.load(Ordering::Acquire)
    }

    fn file_size(&self) -> u64 {
        self.io.file_size
    }

    /// Removes the first file (by retention; never the last one), forgetting its
    /// descriptor first. Called with the tail locked.
    fn remove_first_file(&self, start: u64) -> Result<()> {
        self.io.cache.forget((self.key, start));
        ops::remove_file_with(&sparse_file::path_in(&self.dir, start), self.hook())?;
        let mut span = self.span.write();
        *span = span
            .map(|(first, end)| (first + self.file_size(), end))
            .filter(|(first, end)| first < end);
        Ok(())
    }

    /// Forgets the descriptors of this queue's files (its directory is being removed).
    pub(crate) fn forget_cached(&self) {
        let _tail = self.tail.lock();
        if let Some((first, end)) = *self.span.read() {
            let mut start = first;
            while start < end {
                self.io.cache.forget((self.key, start));
                start += self.file_size();
            }
        }
    }

    /// Removes every file (the tail locked, nothing pending), syncing the directory now or,
    /// without `sync_now`, at the queue's next sync.
    fn remove_all_files(&self, sync_now: bool) -> Result<()> {
        let mut removed = false;
        loop {
            let span = *self.span.read();
            let Some((first, _)) = span else { break };
            self.remove_first_file(first)?;
            removed = true;
        }
        if removed && sync_now {
            ops::sync_dir_with(&self.dir, self.hook())?;
        } else if removed {
            self.names_created.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Deletes the files whose entries all point below `min_physical` (the commit log's new
    /// start), keeping the file being written, and moves the minimum offset to the first
    /// entry still pointing into the log. Returns how many files went.
    pub(crate) fn delete_below(&self, min_physical: u64) -> Result<usize> {
        if self.dropped.load(Ordering::Acquire) {
            return Ok(0);
        }
        if !self.is_loaded() {
            // Not read since a lazy open. One that never filled a file keeps only the file
            // being written, and its minimum follows the log's start when it loads; one
            // that did is read now, or an idle queue would keep every file for good.
            let entries_per_file = self.file_size() / CQ_ENTRY_LEN as u64;
            if self
                .unloaded
                .lock()
                .is_none_or(|end| end.next <= entries_per_file)
            {
                return Ok(0);
            }
            if let Err(e) = self.try_load() {
                log::warn!(
                    "reading consume queue {} to trim it: {e}",
                    self.dir.display()
                );
                return Ok(0);
            }
            if !self.is_loaded() {
                return Ok(0);
            }
        }
        // Found damaged when it was read (here or before): see `raise_min`.
        if self.found_damaged.load(Ordering::Acquire) {
            return Ok(0);
        }
        let _tail = self.tail.lock();
        let mut removed = 0;
        let result = loop {
            let Some((first, end)) = *self.span.read() else {
                break Ok(());
            };
            if end - first <= self.file_size() {
                break Ok(());
            }
            let last_entry = (first + self.file_size()) / CQ_ENTRY_LEN as u64 - 1;
            if self
                .entry_in(last_entry, true)
                .is_none_or(|e| e.physical_offset >= min_physical)
            {
                break Ok(());
            }
            if let Err(e) = self.remove_first_file(first) {
                break Err(e);
            }
            removed += 1;
        };
        if removed > 0 {
            ops::sync_dir_with(&self.dir, self.hook())?;
        }
        result?;
        self.raise_min_in(min_physical, true);
        Ok(removed)
    }

    /// Moves the minimum offset to the first entry pointing at or past `min_physical`:
    /// done before the commit-log files below it go, so that a reader never starts at an
    /// entry whose record is gone.
    pub(crate) fn raise_min(&self, min_physical: u64) {
        // A queue not loaded yet applies the log's start when it loads (the caller stored
        // it in `QueueFiles::log_start` first, SeqCst, as the load reads it).
        if self.is_unloaded.load(Ordering::SeqCst) {
            return;
        }
        // A queue found damaged at first use: a reader must never be sent past messages
        // the log still holds, and its files no longer say where they begin.
        if self.found_damaged.load(Ordering::Acquire) {
            return;
        }
        self.raise_min_in(min_physical, false);
    }

    fn raise_min_in(&self, min_physical: u64, tail_held: bool) {
        let max = self.max_offset();
        let from = self
            .span
            .read()
            .map_or(max, |(first, _)| first / CQ_ENTRY_LEN as u64)
            .max(self.min_offset.load(Ordering::Acquire));
        // An entry that cannot be read counts as live: a failed read must never move the
        // minimum past messages still stored.
        let failed = std::cell::Cell::new(false);
        let dead = |at: u64| {
            if at >= max {
                return false;
            }
            let mut buf = [0u8; CQ_ENTRY_LEN];
            match self.read_checked(at * CQ_ENTRY_LEN as u64, &mut buf, tail_held) {
                // An entry that does not decode is damage, not a dead entry: counted
                // live, like one that cannot be read.
                Ok(true) => CqEntry::decode(&buf).is_some_and(|e| e.physical_offset < min_physical),
                // Its file is gone: retention removed it.
                Ok(false) => true,
                Err(e) => {
                    log::error!("reading consume queue {}: {e}", self.dir.display());
                    failed.set(true);
                    false
                }
            }
        };
        // Below the first file there is nothing to read, whatever the probes find.
        self.min_offset.fetch_max(from, Ordering::AcqRel);
        if from >= max || !dead(from) {
            // The usual case, checked with one read: no entry to skip.
            return;
        }
        let first_live = partition_point(from..max, dead);
        if !failed.get() {
            self.min_offset.fetch_max(first_live, Ordering::AcqRel);
        }
    }

    /// Reads `buf.len()` bytes at file-space position `byte`, all in one file: `Ok(false)`
    /// when the file is not there (deleted by retention meanwhile, or not created yet), an
    /// error when it cannot be read. `tail_held`: the caller holds the tail lock.
    fn read_checked(&self, byte: u64, buf: &mut [u8], tail_held: bool) -> Result<bool> {
        let start = byte / self.file_size() * self.file_size();
        // The path is built only to open the file or to name it in an error: a cached
        // descriptor makes a read one hash lookup and one pread.
        let path = || sparse_file::path_in(&self.dir, start);
        let file = match self.io.cache.get((self.key, start)) {
            Some(f) => f,
            None => {
                // Opened under the tail lock, which every removal holds: the descriptor
                // cached is never one of a removed file.
                let _tail = (!tail_held).then(|| self.tail.lock());
                // A queue whose topic is being deleted holds nothing: its files may
                // already be gone, or belong to the topic started again.
                if self.dropped.load(Ordering::Acquire) {
                    return Ok(false);
                }
                let span = *self.span.read();
                let Some((first, end)) = span else {
                    return Ok(false);
                };
                if start < first || start >= end {
                    return Ok(false);
                }
                self.io
                    .cache
                    .get_or_open((self.key, start), || sparse_file::reopen(&path()))?
            }
        };
        match sparse_file::read_fully(&file, buf, byte - start) {
            Ok(n) if n == buf.len() => Ok(true),
            Ok(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short file");
                Err(Error::io("read", path(), e))
            }
            Err(e) => Err(Error::io("read", path(), e)),
        }
    }

    /// The entry at `queue_offset`, if written.
    pub(crate) fn entry(&self, queue_offset: u64) -> Option<CqEntry> {
        self.ensure_loaded();
        self.entry_in(queue_offset, false)
    }

    fn entry_in(&self, queue_offset: u64, tail_held: bool) -> Option<CqEntry> {
        self.entry_checked(queue_offset, tail_held)
            .unwrap_or_else(|e| {
                log::error!("reading consume queue {}: {e}", self.dir.display());
                None
            })
    }

    /// [`ConsumeQueue::entry_in`], telling a failure to read from an entry not there.
    fn entry_checked(&self, queue_offset: u64, tail_held: bool) -> Result<Option<CqEntry>> {
        if queue_offset >= self.max_offset() {
            return Ok(None);
        }
        let mut buf = [0u8; CQ_ENTRY_LEN];
        let found = self.read_checked(queue_offset * CQ_ENTRY_LEN as u64, &mut buf, tail_held)?;
        Ok(found.then(|| CqEntry::decode(&buf)).flatten())
    }

    /// Entries per file.
    pub(crate) fn entries_per_file(&self) -> u64 {
        self.file_size() / CQ_ENTRY_LEN as u64
    }

    /// Up to `max` entries from `queue_offset`, stopping at the end of a file or at the
    /// first entry that is not written. Empty when the file is not there; an error when it
    /// could not be read (worth retrying).
    pub(crate) fn entries(&self, queue_offset: u64, max: usize) -> Result<Vec<CqEntry>> {
        self.try_load()?;
        let end = self
            .max_offset()
            .min(queue_offset.saturating_add(max as u64));
        if queue_offset >= end {
            return Ok(Vec::new());
        }
        let per_file = self.entries_per_file();
        let n = (end - queue_offset).min(per_file - queue_offset % per_file) as usize;
        let mut buf = vec![0u8; n * CQ_ENTRY_LEN];
        let found = self.read_checked(queue_offset * CQ_ENTRY_LEN as u64, &mut buf, false)?;
        let entries: Vec<_> = match found {
            true => buf
                .chunks_exact(CQ_ENTRY_LEN)
                .map_while(|c| CqEntry::decode(c.try_into().expect("20 bytes")))
                .collect(),
            // No file there. Retention removes files only below the minimum, so above it
            // this is a file lost on disk (or one a read at first use could not load),
            // whose messages the log still holds: the same error as damage below.
            false => Vec::new(),
        };
        if entries.is_empty() {
            // Gone since the read began: the topic dropped (a new queue may have made a
            // file of the same name, zeros below its start), or the queue restarted or
            // trimmed past the offset. Not damage: the reader moves on, as for a file
            // that is not there.
            if self.dropped.load(Ordering::Acquire) || queue_offset < self.min_offset() {
                return Ok(Vec::new());
            }
            // Below the queue's end, in a file that is there, yet no entry: damage (or
            // an entry lost while the queue was believed durable). An error rather than
            // an empty answer, which a reader would take for a missing file and skip past
            // messages the log still holds; the next open rebuilds the queue from the log.
            self.io.mark_suspect();
            return Err(Error::BadStoreFile {
                path: sparse_file::path_in(
                    &self.dir,
                    queue_offset / per_file * per_file * CQ_ENTRY_LEN as u64,
                ),
                reason: format!(
                    "entry {queue_offset} is not a valid entry (below the queue's end {end})"
                ),
            });
        }
        Ok(entries)
    }

    /// Indexes `entry` at `queue_offset`, in the pending batch ([`ConsumeQueue::commit`]
    /// writes and publishes it). Idempotent: the same entry at an indexed or pending offset
    /// adds nothing. A different entry there, or an offset past the end, adds nothing and
    /// says so; an error is an I/O failure (writing out a full batch).
    pub(crate) fn put(&self, queue_offset: u64, entry: CqEntry) -> Result<Indexed> {
        self.try_load()?;
        if queue_offset > MAX_QUEUE_OFFSET {
            // Read from a damaged header: no queue file could hold it. Checked before
            // anything moves, a restart below included.
            return Ok(Indexed::Gap(format!(
                "consume queue {}: queue offset {queue_offset} is past any queue file",
                self.dir.display()
            )));
        }
        let mut tail = self.tail.lock();
        if self.restartable.load(Ordering::Acquire) {
            // A rebuild kept this queue as expired, yet the log holds a record of it (or, at
            // run time, its next message arrives): the log wins. The dead entries go and
            // the queue goes on from this record. Each step can be retried after a failure.
            // It is emptied for readers before its files go (its entries are all dead): a
            // reader between the two finds nothing to read, not entries whose file is
            // missing.
            self.min_offset.store(queue_offset, Ordering::Release);
            self.max_offset.store(queue_offset, Ordering::Release);
            self.remove_all_files(true)?;
            self.flushed
                .store(queue_offset * CQ_ENTRY_LEN as u64, Ordering::Release);
            self.free_start.store(false, Ordering::Release);
            self.restartable.store(false, Ordering::Release);
        }
        let max = self.max_offset();
        let mut next = max + (tail.pending.len() / CQ_ENTRY_LEN) as u64;
        if queue_offset < next {
            let have = if queue_offset >= max {
                let at = (queue_offset - max) as usize * CQ_ENTRY_LEN;
                CqEntry::decode(
                    tail.pending[at..at + CQ_ENTRY_LEN]
                        .try_into()
                        .expect("20 bytes"),
                )
            } else {
                // A failure to read is not a different entry: it is returned (and the
                // round retried) rather than reported as damage.
                self.entry_checked(queue_offset, true)?
            };
            return match have {
                Some(e) if e == entry => Ok(Indexed::Already),
                _ => Ok(Indexed::Conflict(format!(
                    "consume queue {} already holds a different entry at {queue_offset}",
                    self.dir.display()
                ))),
            };
        }
        if queue_offset > next && self.is_fresh() {
            // A fresh queue starts where its first message is (the log's start may have
            // been deleted by retention): its first file is the one holding that offset.
            self.min_offset.store(queue_offset, Ordering::Release);
            self.max_offset.store(queue_offset, Ordering::Release);
            next = queue_offset;
        }
        if queue_offset > next {
            return Ok(Indexed::Gap(format!(
                "consume queue {} would skip from {next} to {queue_offset}",
                self.dir.display()
            )));
        }
        if tail.pending.len() == CQ_ENTRY_LEN {
            // A round's second entry: room for more, rather than growing through four
            // reallocations (the buffer is freed at each commit). Not at the first: a
            // rebuild that gives a million queues one entry each would hold 320 MB.
            tail.pending.reserve(FIRST_PENDING - CQ_ENTRY_LEN);
        }
        tail.pending.extend_from_slice(&entry.encode());
        self.free_start.store(false, Ordering::Release);
        if tail.pending.len() >= MAX_PENDING {
            self.write_pending(&mut tail)?;
        }
        Ok(Indexed::Appended)
    }

    /// Writes the pending entries and makes them visible. On failure (a full disk) what
    /// was written stays visible and the rest stays pending, to be committed again.
    pub(crate) fn commit(&self) -> Result<()> {
        let mut tail = self.tail.lock();
        self.write_pending(&mut tail)
    }

    fn write_pending(&self, tail: &mut Tail) -> Result<()> {
        let size = self.file_size();
        while !tail.pending.is_empty() {
            let at = self.max_offset();
            let byte = at * CQ_ENTRY_LEN as u64;
            let start = byte / size * size;
            let pos = byte - start;
            let n = (tail.pending.len() as u64).min(size - pos) as usize;
            let file = self.writable(start)?;
            // Named only for an allocation or an error: building it on every commit (here
            // and in `writable`) cost the dispatch thread a tenth of its time with 100 B
            // records.
            let path = || sparse_file::path_in(&self.dir, start);
            let need = pos + n as u64;
            let (alloc_file, allocated) = tail.allocated;
            let allocated = if alloc_file == start {
                allocated
            } else {
                pos / PAGE_SIZE as u64 * PAGE_SIZE as u64
            };
            if need > allocated {
                let mut to = sparse_file::next_allocation(allocated, need, size);
                // A file's first page, when the write lies inside it: the write itself
                // allocates it, and fails with ENOSPC as cleanly, having written nothing
                // (a write straddling two pages could write the first and fail on the
                // second). One system call less for each new queue (26 µs on average
                // under `perf trace`, of about 190 µs of system calls in all).
                let single = allocated == 0 && need <= PAGE_SIZE as u64;
                let path = path();
                let allocated_now = match single {
                    true => sparse_file::allocated_by_write(&path, self.hook()),
                    false => sparse_file::allocate(&file, &path, allocated, to, self.hook()),
                };
                if let Err(e) = allocated_now {
                    if !e.is_no_space() {
                        return Err(e);
                    }
                    // Nearly full: what this write needs may still fit.
                    to = need.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
                    sparse_file::allocate(&file, &path, allocated, to.min(size), self.hook())?;
                }
                tail.allocated = (start, to.min(size));
            }
            sparse_file::write_at(&file, path, &tail.pending[..n], pos)?;
            let last = CqEntry::decode(
                tail.pending[n - CQ_ENTRY_LEN..n]
                    .try_into()
                    .expect("20 bytes"),
            );
            tail.pending.drain(..n);
            let end = at + (n / CQ_ENTRY_LEN) as u64;
            tail.last = (end, last.map_or(0, |e| e.physical_offset));
            self.max_offset.store(end, Ordering::Release);
        }
        // Freed, not kept: with 100,000 queues the buffers of their last commits held
        // 9 MiB, and a busy queue allocates one per commit, beside a `pwrite`.
        tail.pending = Vec::new();
        Ok(())
    }

    /// The open file starting at `start`, created (with its directory) when it is the next
    /// one. Called by the writer only.
    fn writable(&self, start: u64) -> Result<Arc<File>> {
        let span = *self.span.read();
        // Built only when a file is opened or created (see `write_pending`).
        let path = || sparse_file::path_in(&self.dir, start);
        match span {
            Some((first, end)) if first <= start && start < end => self
                .io
                .cache
                .get_or_open((self.key, start), || sparse_file::reopen(&path())),
            Some((_, end)) if end != start => Err(Error::BadStoreFile {
                path: path(),
                reason: format!("the queue's files end at {end}, the next one would not follow"),
            }),
            _ => {
                if span.is_none() {
                    self.make_dir()?;
                }
                let file = Arc::new(sparse_file::create(&path(), self.file_size(), self.hook())?);
                self.io.cache.insert((self.key, start), Arc::clone(&file));
                let mut span = self.span.write();
                *span = Some((
                    span.map_or(start, |(first, _)| first),
                    start + self.file_size(),
                ));
                self.names_created.fetch_add(1, Ordering::AcqRel);
                Ok(file)
            }
        }
    }

    /// Makes the queue's directory, ahead of its first file (see `queue::commit`), unless
    /// made already.
    pub(crate) fn make_dir(&self) -> Result<()> {
        if !self.dir_made.load(Ordering::Acquire) {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| Error::io("create directory", &self.dir, e))?;
            self.dir_made.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Whether the queue has no file yet: its next write creates its directory and first
    /// file (about 120 µs of kernel time here).
    pub(crate) fn has_no_file(&self) -> bool {
        self.span.read().is_none()
    }

    /// What a sync must cover for everything written so far to be durable, or `None` when
    /// it already is.
    pub(crate) fn unsynced(&self) -> Option<SyncPoint> {
        if !self.is_loaded() {
            return None;
        }
        let point = SyncPoint {
            written: self.max_offset() * CQ_ENTRY_LEN as u64,
            names: self.names_created.load(Ordering::Acquire),
            rewritten: Some(self.tail_rewritten.load(Ordering::Acquire)).filter(|&s| s != NONE),
        };
        let done = point.written <= self.flushed.load(Ordering::Acquire)
            && point.names <= self.names_synced.load(Ordering::Acquire)
            && point.rewritten.is_none();
        (!done).then_some(point)
    }

    /// Syncs this queue's written files up to `point` and, when it created any, its
    /// directory and the two above (topic, then `consumequeue/`), so that a crash cannot
    /// lose the path to its entries.
    pub(crate) fn sync(&self, point: SyncPoint) -> Result<()> {
        let size = self.file_size();
        let from = self.flushed.load(Ordering::Acquire);
        // Held so that retention removes no file meanwhile.
        let _tail = self.tail.lock();
        let span = *self.span.read();
        if let Some((first, end)) = span {
            // Files below the first are gone (retention), or never existed (a queue that
            // began inside a later file).
            let mut starts: Vec<u64> = Vec::new();
            if point.written > from {
                let mut start = (from / size * size).max(first);
                while start < point.written.min(end) {
                    starts.push(start);
                    start += size;
                }
            }
            if let Some(start) = point.rewritten
                && !starts.contains(&start)
                && first <= start
                && start < end
            {
                starts.push(start);
            }
            for start in starts {
                let path = sparse_file::path_in(&self.dir, start);
                let file = self
                    .io
                    .cache
                    .get_or_open((self.key, start), || sparse_file::reopen(&path))?;
                sparse_file::sync_data(&file, &path, self.hook())?;
            }
        }
        if point.names > self.names_synced.load(Ordering::Acquire) {
            let mut dir = Some(self.dir.as_path());
            for _ in 0..3 {
                let Some(d) = dir else { break };
                ops::sync_dir_with(d, self.hook())?;
                dir = d.parent();
            }
        }
        self.synced(point);
        Ok(())
    }

    /// Records that `point` is durable (synced by [`ConsumeQueue::sync`] or by a sync of
    /// the whole filesystem).
    pub(crate) fn synced(&self, point: SyncPoint) {
        self.flushed.fetch_max(point.written, Ordering::AcqRel);
        self.names_synced.fetch_max(point.names, Ordering::AcqRel);
        if let Some(start) = point.rewritten {
            let _ = self.tail_rewritten.compare_exchange(
                start,
                NONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn entry(i: u64) -> CqEntry {
        CqEntry {
            physical_offset: i * 100,
            size: 100,
            tag_hash: i as i64,
        }
    }

    fn io(file_size: u64) -> Arc<QueueFiles> {
        Arc::new(QueueFiles::new(file_size, None, 4))
    }

    fn commit_and_sync(q: &ConsumeQueue) {
        q.commit().unwrap();
        if let Some(point) = q.unsynced() {
            q.sync(point).unwrap();
        }
        assert!(q.unsynced().is_none());
    }

    #[test]
    fn a_queue_offset_past_any_queue_file_is_refused_not_wrapped() {
        // A damaged QUEUEOFFSET (the CRC covers only the body) read by a rebuild: as a
        // fresh queue's first entry it must not become the queue's start, whose byte
        // offset would overflow (a panic in debug builds, a wrap into file 0 in release).
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::new(dir.path().join("T/0"), io(5 * CQ_ENTRY_LEN as u64));
        for damaged in [1u64 << 63 | 3, u64::MAX, MAX_QUEUE_OFFSET + 1] {
            assert!(
                matches!(q.put(damaged, entry(3)).unwrap(), Indexed::Gap(_)),
                "{damaged}"
            );
        }
        q.commit().unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (0, 0));
        assert_eq!(q.put(0, entry(0)).unwrap(), Indexed::Appended);
        q.commit().unwrap();
        assert_eq!(q.max_offset(), 1);
        // A queue a rebuild kept as expired restarts at its next record: not at this one,
        // and its files stay.
        q.restartable.store(true, Ordering::Release);
        assert!(matches!(
            q.put(u64::MAX, entry(9)).unwrap(),
            Indexed::Gap(_)
        ));
        assert_eq!((q.min_offset(), q.max_offset()), (0, 1));
        assert_eq!(q.entries(0, 1).unwrap(), [entry(0)]);
    }

    #[test]
    fn put_is_idempotent_and_refuses_gaps_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::new(dir.path().join("T/0"), io(5 * CQ_ENTRY_LEN as u64));
        for i in 0..12 {
            assert_eq!(q.put(i, entry(i)).unwrap(), Indexed::Appended);
        }
        // Pending entries are not visible, and a pending entry put again adds nothing.
        assert_eq!(q.max_offset(), 0);
        assert_eq!(q.put(11, entry(11)).unwrap(), Indexed::Already);
        assert!(matches!(q.put(11, entry(3)).unwrap(), Indexed::Conflict(_)));
        q.commit().unwrap();
        assert_eq!(q.max_offset(), 12);
        // Re-dispatching indexed records writes nothing.
        assert_eq!(q.put(3, entry(3)).unwrap(), Indexed::Already);
        assert!(
            matches!(q.put(3, entry(4)).unwrap(), Indexed::Conflict(_)),
            "a different entry at an indexed offset"
        );
        assert!(matches!(q.put(14, entry(14)).unwrap(), Indexed::Gap(_)));
        q.commit().unwrap();
        assert_eq!(q.max_offset(), 12, "neither wrote anything");
        assert_eq!(
            q.entries(4, 10).unwrap(),
            (4..5).map(entry).collect::<Vec<_>>()
        );
        assert_eq!(q.entry(11), Some(entry(11)));
        commit_and_sync(&q);
        drop(q);

        // Reopened: the end is found again; with keep_below, later entries are dropped.
        let q = ConsumeQueue::load(dir.path().join("T/0"), io(100), Load::Keep, 0).unwrap();
        assert_eq!(q.max_offset(), 12);
        drop(q);
        let q =
            ConsumeQueue::load(dir.path().join("T/0"), io(100), Load::DropFrom(700), 0).unwrap();
        assert_eq!(q.max_offset(), 7);
        assert_eq!(q.entry(7), None);
        assert_eq!(q.put(7, entry(7)).unwrap(), Indexed::Appended);
        q.commit().unwrap();
        // Recovery zeroes what was dropped and not written again.
        q.clear_stale_tail().unwrap();
        assert!(q.unsynced().is_some(), "the zeroed tail must be synced");
        commit_and_sync(&q);
        drop(q);
        let q = ConsumeQueue::load(dir.path().join("T/0"), io(100), Load::Keep, 0).unwrap();
        assert_eq!(q.max_offset(), 8, "the dropped entries were zeroed");
    }

    #[test]
    fn a_stale_tail_indexed_again_whole_needs_no_zeroing_unless_bytes_lie_past_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1000 * CQ_ENTRY_LEN as u64;
        let path = dir.path().join("T/0");
        let q = ConsumeQueue::new(path.clone(), io(size));
        for i in 0..12 {
            q.put(i, entry(i)).unwrap();
        }
        commit_and_sync(&q);
        drop(q);
        // A crash recovery re-indexing from 700 writes the same five entries again: what
        // the load dropped is all written over, and the rest of the file was zeros.
        let q = ConsumeQueue::load(path.clone(), io(size), Load::DropFrom(700), 0).unwrap();
        assert_eq!(q.max_offset(), 7);
        assert!(!q.indexed_since_load());
        for i in 7..12 {
            assert_eq!(q.put(i, entry(i)).unwrap(), Indexed::Appended);
        }
        commit_and_sync(&q);
        assert!(q.indexed_since_load());
        q.clear_stale_tail().unwrap();
        assert!(q.unsynced().is_none(), "nothing was zeroed");
        drop(q);

        // Bytes past a hole (a stale block a power cut left): the load cannot vouch for
        // the zeros past its entries, and the tail is zeroed even when re-indexed whole.
        let file = path.join(crate::layout::file_name(0));
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 20], 16384).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let q = ConsumeQueue::load(path.clone(), io(size), Load::DropFrom(700), 0).unwrap();
        assert_eq!(q.max_offset(), 7);
        for i in 7..12 {
            assert_eq!(q.put(i, entry(i)).unwrap(), Indexed::Appended);
        }
        commit_and_sync(&q);
        q.clear_stale_tail().unwrap();
        commit_and_sync(&q);
        drop(q);
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            bytes[16384..16404].iter().all(|&b| b == 0),
            "the stale block was zeroed"
        );
        let q = ConsumeQueue::load(path, io(size), Load::Keep, 0).unwrap();
        assert_eq!(q.max_offset(), 12);
    }

    #[test]
    fn the_table_end_names_the_last_entry_however_the_end_was_reached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("T/0");
        let q = ConsumeQueue::new(path.clone(), io(100));
        for i in 0..7 {
            q.put(i, entry(i)).unwrap();
        }
        commit_and_sync(&q);
        assert_eq!(q.table_end(), (7, 600));
        drop(q);
        let q = ConsumeQueue::load(path.clone(), io(100), Load::Keep, 0).unwrap();
        assert_eq!(q.table_end(), (7, 600));
        drop(q);
        // Entries dropped at load: the end is an entry the load did not keep in mind.
        let q = ConsumeQueue::load(path.clone(), io(100), Load::DropFrom(300), 0).unwrap();
        assert_eq!(q.table_end(), (3, 200));
        q.put(3, entry(3)).unwrap();
        q.commit().unwrap();
        assert_eq!(q.table_end(), (4, 300));
    }

    #[test]
    fn a_small_queue_takes_a_page_of_disk_and_finds_its_end_in_a_big_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let size = 300_000 * CQ_ENTRY_LEN as u64;
        let q = ConsumeQueue::new(dir.path().join("T/0"), io(size));
        for i in 0..3 {
            q.put(i, entry(i + 1)).unwrap();
        }
        commit_and_sync(&q);
        drop(q);
        let file = dir.path().join("T/0").join(crate::layout::file_name(0));
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.len(), size, "RocketMQ's file size");
        assert!(meta.blocks() * 512 <= 16 * 1024, "{} blocks", meta.blocks());
        let q = ConsumeQueue::load(dir.path().join("T/0"), io(size), Load::Keep, 0).unwrap();
        assert_eq!(q.max_offset(), 3);
        assert_eq!(
            q.entries(0, 10).unwrap(),
            (1..4).map(entry).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_queue_grows_across_files_and_retention_removes_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let io = io(4 * CQ_ENTRY_LEN as u64);
        let q = ConsumeQueue::new(dir.path().join("T/1"), Arc::clone(&io));
        for i in 0..10 {
            q.put(i, entry(i + 1)).unwrap();
            if i % 3 == 0 {
                q.commit().unwrap();
            }
        }
        commit_and_sync(&q);
        assert_eq!(q.max_offset(), 10);
        assert!(io.cache.len() <= 4);
        // Files [0,4) and [4,8) point below 900; the last file is always kept.
        assert_eq!(q.delete_below(900).unwrap(), 2);
        assert_eq!(q.min_offset(), 8);
        assert_eq!(q.entry(3), None);
        assert_eq!(q.entry(9), Some(entry(10)));
        drop(q);
        // Loaded with the log's start past the records retention deleted: a queue starts
        // past entry 0 only then (with the log at 0 its missing head is damage).
        let q = ConsumeQueue::load(dir.path().join("T/1"), io, Load::Keep, 900).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (8, 10));
    }

    #[derive(Default)]
    struct RecordSyncs(parking_lot::Mutex<Vec<PathBuf>>);

    impl IoHook for RecordSyncs {
        fn before_sync(&self, path: &Path) -> std::io::Result<()> {
            self.0.lock().push(path.to_owned());
            Ok(())
        }
    }

    #[test]
    fn a_stale_tail_zeroed_at_a_file_boundary_is_synced_before_it_counts_as_durable() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 * CQ_ENTRY_LEN as u64;
        let q = ConsumeQueue::new(dir.path().join("T/2"), io(size));
        for i in 0..8 {
            q.put(i, entry(i + 1)).unwrap();
        }
        commit_and_sync(&q);
        drop(q);
        // A crash cut the records of entries 4.. (at 500 and past): the end falls on the
        // second file's first byte.
        let hook = Arc::new(RecordSyncs::default());
        let hooked = Arc::new(QueueFiles::new(size, Some(hook.clone()), 4));
        let q = ConsumeQueue::load(dir.path().join("T/2"), hooked, Load::DropFrom(500), 0).unwrap();
        assert_eq!(q.max_offset(), 4);
        q.clear_stale_tail().unwrap();
        let point = q.unsynced().expect("zeroed bytes to sync");
        q.sync(point).unwrap();
        let second = dir.path().join("T/2").join(crate::layout::file_name(size));
        assert!(hook.0.lock().contains(&second), "{:?}", hook.0.lock());
        assert!(q.unsynced().is_none());
        drop(q);
        let q = ConsumeQueue::load(dir.path().join("T/2"), io(size), Load::Keep, 0).unwrap();
        assert_eq!(q.max_offset(), 4, "the dropped entries are gone");
    }
}
