//! One consume queue: the index of a topic/queue, 20-byte entries pointing into the commit
//! log, in files of a fixed number of entries under `{root}/consumequeue/{topic}/{queue}/`.
//!
//! The dispatch thread is the only writer (recovery writes before the store is shared);
//! readers see entries below the published `max_offset`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::fs::file_queue::MappedFileQueue;
use crate::fs::io_hook::IoHook;
use crate::fs::mapped_file::{FileWriter, MappedFile};
use crate::fs::ops::create_dir_durable;
use crate::queue::entry::{CQ_ENTRY_LEN, CqEntry};
use crate::search::partition_point;

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

pub(crate) struct ConsumeQueue {
    dir: PathBuf,
    file_size: u64,
    hook: Option<Arc<dyn IoHook>>,
    files: MappedFileQueue,
    writer: Mutex<Option<FileWriter>>,
    /// Queue offset of the first entry still stored.
    min_offset: AtomicU64,
    /// Next queue offset: entries below it are written and visible.
    max_offset: AtomicU64,
    /// Byte position (in the queue's logical file space) flushed so far.
    flushed: AtomicU64,
    /// Why the entries found at load cannot be trusted (a zeroed entry below the end, or
    /// entries out of order): recovery then rebuilds the queues from the log.
    damage: Option<String>,
    /// The queue holds nothing and its next entry may come at any queue offset: a new
    /// queue (the log's start may have been deleted by retention). A queue emptied by crash
    /// recovery is instead positioned exactly where its next entry must go.
    free_start: AtomicBool,
    /// Expired (every entry points below the log's start) and kept by a rebuild: the first
    /// record of it the rebuild meets, if any, wins over the dead entries (they go, and the
    /// queue starts again at that record), unless it simply continues them.
    restartable: AtomicBool,
}

impl std::fmt::Debug for ConsumeQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeQueue")
            .field("dir", &self.dir)
            .field("max_offset", &self.max_offset())
            .finish()
    }
}

/// Checks that the entries from queue offset `from` to `end` are all written, with commit-
/// log offsets that grow: a zeroed entry below the end would stop every reader at it.
/// Costs one pass over the written entries (20 bytes per message).
fn check_entries(
    files: &[Arc<MappedFile>],
    from: u64,
    end: u64,
    entries_per_file: u64,
) -> Option<String> {
    let first = files.first()?.start_offset() / CQ_ENTRY_LEN as u64;
    let mut prev: Option<u64> = None;
    let mut at = from;
    while at < end {
        let index = ((at - first) / entries_per_file) as usize;
        let file = files.get(index)?;
        let in_file = at % entries_per_file;
        let n = (entries_per_file - in_file).min(end - at);
        let bytes = file.slice(in_file as usize * CQ_ENTRY_LEN, n as usize * CQ_ENTRY_LEN)?;
        for (i, chunk) in bytes.chunks_exact(CQ_ENTRY_LEN).enumerate() {
            let offset = at + i as u64;
            let entry = CqEntry::decode(chunk.try_into().expect("20 bytes"));
            match entry {
                None => return Some(format!("entry {offset} is not written")),
                Some(e) if prev.is_some_and(|p| e.physical_offset <= p) => {
                    return Some(format!("entry {offset} points before the previous one"));
                }
                Some(e) => prev = Some(e.physical_offset),
            }
        }
        at += n;
    }
    None
}

fn entry_at(file: &Arc<MappedFile>, pos: usize) -> Option<CqEntry> {
    let bytes = file.slice(pos, CQ_ENTRY_LEN)?;
    CqEntry::decode(bytes[..].try_into().expect("20 bytes"))
}

impl ConsumeQueue {
    /// An empty queue whose directory is created with its first entry.
    pub(crate) fn new(dir: PathBuf, file_size: u64, hook: Option<Arc<dyn IoHook>>) -> Self {
        ConsumeQueue {
            dir,
            file_size,
            hook,
            files: MappedFileQueue::new(file_size),
            writer: Mutex::new(None),
            min_offset: AtomicU64::new(0),
            max_offset: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            damage: None,
            free_start: AtomicBool::new(true),
            restartable: AtomicBool::new(false),
        }
    }

    /// A queue whose files could not be loaded, to be rebuilt: holds nothing, and says why.
    pub(crate) fn damaged(
        dir: PathBuf,
        file_size: u64,
        hook: Option<Arc<dyn IoHook>>,
        why: String,
    ) -> Self {
        let mut q = ConsumeQueue::new(dir, file_size, hook);
        q.damage = Some(why);
        *q.free_start.get_mut() = false;
        q
    }

    /// Why this queue's entries could not be trusted when it was loaded, if so.
    pub(crate) fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// Opens the queue in `dir`. Its end is the first unwritten entry of the last file,
    /// found by binary search (entries are written in order); `how` says what is kept.
    /// Its written entries are checked (none zero, offsets rising). Rebuilding, a queue
    /// whose last entry points below `log_start` (the commit log's start) is expired: no
    /// record could rebuild it, so its files are kept, and they give way to the log if a
    /// record of it turns up after all.
    pub(crate) fn load(
        dir: PathBuf,
        file_size: u64,
        hook: Option<Arc<dyn IoHook>>,
        how: Load,
        log_start: u64,
    ) -> Result<Self> {
        let keep_below = match how {
            Load::Keep => None,
            Load::DropFrom(offset) => Some(offset),
            Load::Rebuild => Some(0),
        };
        let mut files: Vec<Arc<MappedFile>> =
            MappedFileQueue::load_files(&dir, file_size, hook.clone(), how != Load::Keep)?
                .into_iter()
                .map(Arc::new)
                .collect();
        let mut q = ConsumeQueue::new(dir, file_size, hook);
        let Some(last) = files.last() else {
            return Ok(q);
        };
        let entries_per_file = file_size / CQ_ENTRY_LEN as u64;
        let first = files[0].start_offset() / CQ_ENTRY_LEN as u64;
        // First unwritten entry in the last file.
        let written = |from: u64| {
            partition_point(from..entries_per_file, |at| {
                entry_at(last, at as usize * CQ_ENTRY_LEN).is_some()
            })
        };
        let mut end = last.start_offset() / CQ_ENTRY_LEN as u64 + written(0);
        // A queue may begin inside its first file (rebuilt from a log whose start was
        // deleted): its first written entry is its minimum.
        let first_written = if entry_at(&files[0], 0).is_some() {
            first
        } else {
            let n = (files[0].size() / CQ_ENTRY_LEN) as u64;
            let skip = (0..n)
                .find(|&i| entry_at(&files[0], i as usize * CQ_ENTRY_LEN).is_some())
                .unwrap_or(n);
            first + skip
        };
        if files.len() == 1 && end <= first_written {
            // The binary search assumes entries from the file's start; redo it from the
            // first written entry.
            end = first + written(first_written - first);
        }
        let last_entry = (end > first_written)
            .then(|| {
                let at = end - 1;
                entry_at(
                    &files[((at - first) / entries_per_file) as usize],
                    ((at % entries_per_file) as usize) * CQ_ENTRY_LEN,
                )
            })
            .flatten();
        // Checked in every mode: a damaged last entry can look like an expired one.
        let damage = check_entries(&files, first_written.min(end), end, entries_per_file);
        let expired =
            how == Load::Rebuild && last_entry.is_some_and(|e| e.physical_offset < log_start);
        if expired && damage.is_some() {
            // Dead entries, damaged: nothing to keep them for. The queue continues from its
            // end (the table may move it further), unless the log has a record of it.
            for file in &files {
                file.remove()?;
            }
            files[0].sync_parent()?;
            *q.min_offset.get_mut() = end;
            *q.max_offset.get_mut() = end;
            *q.free_start.get_mut() = false;
            *q.restartable.get_mut() = true;
            return Ok(q);
        }
        let keep_below = if expired { None } else { keep_below };
        if let Some(limit) = keep_below {
            // First entry pointing at or past `limit` (offsets grow with queue offsets).
            end = partition_point(first_written.min(end)..end, |at| {
                let file = &files[((at - first) / entries_per_file) as usize];
                let pos = ((at % entries_per_file) as usize) * CQ_ENTRY_LEN;
                entry_at(file, pos).is_some_and(|e| e.physical_offset < limit)
            });
        }
        if how != Load::Rebuild {
            q.damage = damage;
        }
        if keep_below.is_some() && end <= first_written {
            // Nothing kept. Rebuilding, the queue starts again at its first record in the
            // log; otherwise its next entry must be the first one dropped.
            for file in &files {
                file.remove()?;
            }
            files[0].sync_parent()?;
            if how != Load::Rebuild {
                *q.min_offset.get_mut() = first_written;
                *q.max_offset.get_mut() = first_written;
                *q.free_start.get_mut() = false;
            }
            return Ok(q);
        }
        // Files wholly past the end go; the end's file takes the writer.
        let keep = (((end - first) / entries_per_file) as usize + 1).min(files.len());
        let past_end = files.split_off(keep);
        for file in &past_end {
            file.remove()?;
        }
        if let Some(file) = past_end.first() {
            file.sync_parent()?;
        }
        let last = files.pop().expect("keep >= 1");
        let pos = ((end - last.start_offset() / CQ_ENTRY_LEN as u64) as usize) * CQ_ENTRY_LEN;
        let mut writer = FileWriter::new(last, pos).ok_or_else(|| Error::BadStoreFile {
            path: q.dir.clone(),
            reason: "consume queue file still in use".into(),
        })?;
        if keep_below.is_some() {
            writer.zero_tail()?;
        }
        for file in files {
            q.files.push(file);
        }
        q.files.push(Arc::clone(writer.file()));
        *q.writer.get_mut() = Some(writer);
        *q.min_offset.get_mut() = first_written.max(first).min(end);
        *q.max_offset.get_mut() = end;
        *q.flushed.get_mut() = end * CQ_ENTRY_LEN as u64;
        *q.free_start.get_mut() = false;
        *q.restartable.get_mut() = expired;
        Ok(q)
    }

    /// Whether the queue holds nothing and has no history: its first entry may come at
    /// any queue offset.
    pub(crate) fn is_fresh(&self) -> bool {
        self.free_start.load(Ordering::Acquire)
    }

    /// Makes a queue that holds nothing, or only entries of deleted records and fewer than
    /// `next`, continue exactly at `next`: its earlier messages are gone from the log.
    pub(crate) fn position(&self, next: u64) -> Result<()> {
        let mut writer = self.writer.lock();
        let dead_and_short = self.restartable.load(Ordering::Acquire) && self.max_offset() < next;
        if dead_and_short {
            *writer = None;
            self.files.remove_front_while(0, |_| true)?;
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

    /// Next queue offset (one past the last entry).
    pub(crate) fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    /// First queue offset still stored.
    pub(crate) fn min_offset(&self) -> u64 {
        self.min_offset.load(Ordering::Acquire)
    }

    /// Deletes the files whose entries all point below `min_physical` (the commit log's new
    /// start), keeping the file being written, and moves the minimum offset to the first
    /// entry still pointing into the log. Returns how many files went.
    pub(crate) fn delete_below(&self, min_physical: u64) -> Result<usize> {
        let _writer = self.writer.lock();
        let removed = self.files.remove_front_while(1, |file| {
            let last = file.size() - CQ_ENTRY_LEN;
            entry_at(file, last).is_some_and(|e| e.physical_offset < min_physical)
        })?;
        self.raise_min(min_physical);
        Ok(removed.len())
    }

    /// Moves the minimum offset to the first entry pointing at or past `min_physical`:
    /// done before the commit-log files below it go, so that a reader never starts at an
    /// entry whose record is gone.
    pub(crate) fn raise_min(&self, min_physical: u64) {
        let max = self.max_offset();
        let from = self
            .files
            .min_offset()
            .map_or(max, |o| o / CQ_ENTRY_LEN as u64)
            .max(self.min_offset());
        let first_live = partition_point(from..max, |at| {
            self.entry(at)
                .is_none_or(|e| e.physical_offset < min_physical)
        });
        self.min_offset.fetch_max(first_live, Ordering::AcqRel);
    }

    /// The entry at `queue_offset`, if written.
    pub(crate) fn entry(&self, queue_offset: u64) -> Option<CqEntry> {
        if queue_offset >= self.max_offset() {
            return None;
        }
        let byte = queue_offset * CQ_ENTRY_LEN as u64;
        let file = self.files.find(byte)?;
        entry_at(&file, (byte - file.start_offset()) as usize)
    }

    /// Up to `max` entries from `queue_offset`, stopping at the end of a file.
    pub(crate) fn entries(&self, queue_offset: u64, max: usize) -> Vec<CqEntry> {
        let end = self
            .max_offset()
            .min(queue_offset.saturating_add(max as u64));
        if queue_offset >= end {
            return Vec::new();
        }
        let byte = queue_offset * CQ_ENTRY_LEN as u64;
        let Some(file) = self.files.find(byte) else {
            return Vec::new();
        };
        let pos = (byte - file.start_offset()) as usize;
        let in_file = (file.write_pos().saturating_sub(pos) / CQ_ENTRY_LEN) as u64;
        let n = (end - queue_offset).min(in_file) as usize;
        let Some(bytes) = file.slice(pos, n * CQ_ENTRY_LEN) else {
            return Vec::new();
        };
        bytes
            .chunks_exact(CQ_ENTRY_LEN)
            .map_while(|c| CqEntry::decode(c.try_into().expect("20 bytes")))
            .collect()
    }

    /// Indexes `entry` at `queue_offset`. Idempotent: the same entry at an indexed offset
    /// writes nothing. A different entry there, or an offset past the end, writes nothing
    /// and says so; an error is an I/O failure.
    pub(crate) fn put(&self, queue_offset: u64, entry: CqEntry) -> Result<Indexed> {
        let mut writer = self.writer.lock();
        if self.restartable.load(Ordering::Acquire) {
            // A rebuild kept this queue as expired, yet the log holds a record of it (or, at
            // run time, its next message arrives): the log wins. The dead entries go and
            // the queue goes on from this record. Each step can be retried after a failure;
            // readers meanwhile see the queue as it was (its entries are all dead).
            *writer = None;
            self.files.remove_front_while(0, |_| true)?;
            *writer = Some(self.new_file(queue_offset)?);
            self.min_offset.store(queue_offset, Ordering::Release);
            self.max_offset.store(queue_offset, Ordering::Release);
            self.free_start.store(false, Ordering::Release);
        }
        let mut next = self.max_offset();
        if queue_offset < next {
            return match self.entry(queue_offset) {
                Some(e) if e == entry => Ok(Indexed::Already),
                _ => Ok(Indexed::Conflict(format!(
                    "consume queue {} already holds a different entry at {queue_offset}",
                    self.dir.display()
                ))),
            };
        }
        if queue_offset > next && self.is_fresh() {
            // A fresh queue starts where its first message is (the log's start may have
            // been deleted by retention): begin inside the file that holds that offset.
            *writer = Some(self.new_file(queue_offset)?);
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
        if writer.as_ref().is_none_or(|w| w.remaining() < CQ_ENTRY_LEN) {
            *writer = Some(self.new_file(next)?);
        }
        let w = writer.as_mut().expect("set above");
        w.write(&entry.encode())?;
        w.publish();
        self.max_offset.store(next + 1, Ordering::Release);
        self.free_start.store(false, Ordering::Release);
        self.restartable.store(false, Ordering::Release);
        Ok(Indexed::Appended)
    }

    /// Creates the file holding `queue_offset` and a writer positioned at its entry.
    fn new_file(&self, queue_offset: u64) -> Result<FileWriter> {
        create_dir_durable(&self.dir, self.hook.as_ref())?;
        let byte = queue_offset * CQ_ENTRY_LEN as u64;
        let start = byte / self.file_size * self.file_size;
        let file =
            MappedFile::create(&self.dir, start, self.file_size as usize, self.hook.clone())?;
        let w = FileWriter::new(Arc::new(file), (byte - start) as usize)
            .expect("a new file has no other owner");
        self.files.push(Arc::clone(w.file()));
        Ok(w)
    }

    /// Flushes entries written since the last flush.
    pub(crate) fn flush(&self) -> Result<()> {
        let target = self.max_offset() * CQ_ENTRY_LEN as u64;
        let from = self.flushed.load(Ordering::Acquire);
        if target <= from {
            return Ok(());
        }
        for file in self.files.files_from(from) {
            if file.start_offset() >= target {
                break;
            }
            file.flush()?;
        }
        self.flushed.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> CqEntry {
        CqEntry {
            physical_offset: i * 100,
            size: 100,
            tag_hash: i as i64,
        }
    }

    #[test]
    fn put_is_idempotent_and_refuses_gaps_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::new(dir.path().join("T/0"), 5 * CQ_ENTRY_LEN as u64, None);
        for i in 0..12 {
            assert_eq!(q.put(i, entry(i)).unwrap(), Indexed::Appended);
        }
        // Re-dispatching indexed records writes nothing.
        assert_eq!(q.put(3, entry(3)).unwrap(), Indexed::Already);
        assert_eq!(q.max_offset(), 12);
        assert!(
            matches!(q.put(3, entry(4)).unwrap(), Indexed::Conflict(_)),
            "a different entry at an indexed offset"
        );
        assert!(matches!(q.put(14, entry(14)).unwrap(), Indexed::Gap(_)));
        assert_eq!(q.max_offset(), 12, "neither wrote anything");
        assert_eq!(q.entries(4, 10), (4..5).map(entry).collect::<Vec<_>>());
        assert_eq!(q.entry(11), Some(entry(11)));
        q.flush().unwrap();
        drop(q);

        // Reopened: the end is found again; with keep_below, later entries are dropped.
        let q = ConsumeQueue::load(dir.path().join("T/0"), 100, None, Load::Keep, 0).unwrap();
        assert_eq!(q.max_offset(), 12);
        drop(q);
        let q =
            ConsumeQueue::load(dir.path().join("T/0"), 100, None, Load::DropFrom(700), 0).unwrap();
        assert_eq!(q.max_offset(), 7);
        assert_eq!(q.entry(7), None);
        assert_eq!(q.put(7, entry(7)).unwrap(), Indexed::Appended);
    }
}
