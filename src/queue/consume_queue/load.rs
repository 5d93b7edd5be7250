//! Opening a queue's files: the load at open (the end found, the entries checked, what a
//! crash left dropped), the load at first use of a queue left clean with many others, and
//! the stale tail zeroed after a crash recovery.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{ConsumeQueue, Load, QueueFiles, TableEnd, WINDOW};
use crate::error::{Error, Result};
use crate::fs::file_queue::list_files;
use crate::fs::io_hook::IoHook;
use crate::fs::mapped_file::{PAGE_SIZE, is_zero};
use crate::fs::ops;
use crate::fs::sparse_file;
use crate::queue::entry::{CQ_ENTRY_LEN, CqEntry};
use crate::search::partition_point;

/// The files of a queue being loaded, open, first to last.
struct Loading<'a> {
    dir: &'a Path,
    files: Vec<(u64, File)>,
    file_size: u64,
    /// The written part of a small queue's last file, read once: `(queue offset of its
    /// first byte, bytes)`. The load's later reads within it cost no system call (with
    /// 100,000 queues, five `pread`s each).
    window: std::cell::RefCell<Option<(u64, Vec<u8>)>>,
}

impl Loading<'_> {
    fn entries_per_file(&self) -> u64 {
        self.file_size / CQ_ENTRY_LEN as u64
    }

    /// Queue offset of the first file's first entry.
    fn first(&self) -> u64 {
        self.files[0].0 / CQ_ENTRY_LEN as u64
    }

    fn file_of(&self, at: u64) -> Option<&(u64, File)> {
        let index = at.checked_sub(self.first())? / self.entries_per_file();
        self.files.get(usize::try_from(index).ok()?)
    }

    /// Reads the entries `at..at + buf.len() / 20`, all in one file.
    fn read(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        if let Some((first, bytes)) = &*self.window.borrow()
            && let Some(pos) = at.checked_sub(*first)
            && let Some(have) = bytes.get(pos as usize * CQ_ENTRY_LEN..)
            && have.len() >= buf.len()
        {
            buf.copy_from_slice(&have[..buf.len()]);
            return Ok(());
        }
        let Some((start, file)) = self.file_of(at) else {
            buf.fill(0);
            return Ok(());
        };
        let path = sparse_file::path_in(self.dir, *start);
        let pos = at * CQ_ENTRY_LEN as u64 - start;
        let n = sparse_file::read_at(file, &path, buf, pos)?;
        buf[n..].fill(0);
        Ok(())
    }

    fn entry(&self, at: u64) -> Result<Option<CqEntry>> {
        let mut buf = [0u8; CQ_ENTRY_LEN];
        self.read(at, &mut buf)?;
        Ok(CqEntry::decode(&buf))
    }

    /// Checks that the entries from queue offset `from` to `end` are all written, with
    /// commit-log offsets that grow: a zeroed entry below the end would stop every reader
    /// at it. Costs one pass over the written entries (20 bytes per message).
    fn check(&self, from: u64, end: u64) -> Result<Option<String>> {
        const BATCH: u64 = 3276;
        let mut prev: Option<u64> = None;
        let mut buf = vec![0u8; BATCH as usize * CQ_ENTRY_LEN];
        let mut at = from;
        while at < end {
            let in_file = self.entries_per_file() - at % self.entries_per_file();
            let n = BATCH.min(end - at).min(in_file);
            let bytes = &mut buf[..n as usize * CQ_ENTRY_LEN];
            self.read(at, bytes)?;
            for (i, chunk) in bytes.chunks_exact(CQ_ENTRY_LEN).enumerate() {
                let offset = at + i as u64;
                match CqEntry::decode(chunk.try_into().expect("20 bytes")) {
                    None => return Ok(Some(format!("entry {offset} is not written"))),
                    Some(e) if prev.is_some_and(|p| e.physical_offset <= p) => {
                        return Ok(Some(format!(
                            "entry {offset} points before the previous one"
                        )));
                    }
                    Some(e) => prev = Some(e.physical_offset),
                }
            }
            at += n;
        }
        Ok(None)
    }

    /// Removes the files from index `from` on. The directory is synced by the queue's
    /// next sync (the removal counts as a name change), before the checkpoint moves: until
    /// then a crash may bring the files back, and the next recovery drops them again.
    fn remove(&self, from: usize, hook: Option<&Arc<dyn IoHook>>) -> Result<()> {
        self.window.borrow_mut().take();
        for (start, _) in &self.files[from..] {
            let path = sparse_file::path_in(self.dir, *start);
            ops::remove_file_with(&path, hook)?;
        }
        Ok(())
    }
}

/// Zeroes what a crash left past position `pos` of the file being written, up to its first
/// hole; returns whether it wrote anything. Writes only where a byte is not zero, so a
/// clean tail needs neither I/O nor space.
fn zero_tail(file: &File, path: &Path, pos: u64, size: u64) -> Result<bool> {
    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK];
    let mut dirty = false;
    // Every data range to the end of the file: write-back may have kept a later page and
    // not an earlier one.
    let mut from = pos;
    while from < size {
        let Some(start) = sparse_file::data_start(file, from)? else {
            break;
        };
        let end = sparse_file::data_end(file, path, start)?.min(size);
        let mut at = start;
        while at < end {
            let len = CHUNK.min((end - at) as usize);
            let n = sparse_file::read_at(file, path, &mut buf[..len], at)?;
            if !is_zero(&buf[..n]) {
                buf[..n].fill(0);
                sparse_file::write_at(file, || path.to_owned(), &buf[..n], at)?;
                dirty = true;
            }
            if n < len {
                break;
            }
            at += len as u64;
        }
        from = end.max(start + 1);
    }
    if dirty {
        log::warn!("zeroed a stale tail in {}", path.display());
    }
    Ok(dirty)
}

impl ConsumeQueue {
    /// A queue left clean by the last run, its files read at first use: until then it is
    /// what the queue table says (`end`). Opening a hundred thousand queues this way costs
    /// no file access.
    pub(crate) fn unloaded(dir: PathBuf, io: Arc<QueueFiles>, end: TableEnd) -> Self {
        let mut q = ConsumeQueue::new(dir, io);
        *q.unloaded.get_mut() = Some(end);
        *q.is_unloaded.get_mut() = true;
        *q.max_offset.get_mut() = end.next;
        // Seen only while its files cannot be read: no reader is sent past an entry.
        *q.min_offset.get_mut() = 0;
        *q.free_start.get_mut() = false;
        q
    }

    /// Whether the queue's files were read.
    pub(crate) fn is_loaded(&self) -> bool {
        !self.is_unloaded.load(Ordering::Acquire)
    }

    /// The queue's end for the queue table: `(next offset, commit-log offset of the last
    /// entry's record)`, without reading its files when they were not read.
    pub(crate) fn table_end(&self) -> (u64, u64) {
        if let Some(end) = *self.unloaded.lock() {
            return (end.next, end.last_physical);
        }
        let max = self.max_offset();
        let (known_at, physical) = self.tail.lock().last;
        if known_at == max && max > self.min_offset() {
            // Written or loaded last: no read (with many queues, a file open each).
            return (max, physical);
        }
        let last = max
            .checked_sub(1)
            .and_then(|at| self.entry(at))
            .map_or(0, |e| e.physical_offset);
        (max, last)
    }

    /// Reads the files of a queue opened unloaded, and checks them against the queue
    /// table: the same end, entries that pass the load check, the same last record. A
    /// queue that does not match is logged, keeps the table's end (so that dispatch
    /// continues its offsets and never meets a gap; the missing entries read as absent),
    /// and makes the store's next open check and rebuild the queues. Never called with
    /// the tail locked.
    pub(super) fn ensure_loaded(&self) {
        match self.try_load() {
            Ok(()) | Err(Error::ShutDown) => {}
            Err(e) => log::error!("reading consume queue {}: {e}", self.dir.display()),
        }
    }

    /// [`ConsumeQueue::ensure_loaded`], failing on an I/O error, which leaves the queue
    /// unread (nothing served from it, nothing appended to it) for the next use to retry.
    /// After the store's shutdown it fails with [`Error::ShutDown`] and reads nothing: a
    /// load changes files (it removes leftovers and files past the end), and another open
    /// may own them by then.
    pub(crate) fn try_load(&self) -> Result<()> {
        if !self.is_unloaded.load(Ordering::Acquire) || self.dropped.load(Ordering::Acquire) {
            return Ok(());
        }
        let open = self.io.open.read();
        if !*open {
            return Err(Error::ShutDown);
        }
        let mut unloaded = self.unloaded.lock();
        let Some(end) = *unloaded else {
            return Ok(());
        };
        // The log's start as retention left it: a queue it trimmed starts past entry 0.
        let start = self.io.log_start.load(Ordering::SeqCst);
        let loaded =
            match ConsumeQueue::load(self.dir.clone(), Arc::clone(&self.io), Load::Keep, start) {
                Err(e @ Error::Io { .. }) => return Err(e),
                other => other,
            };
        let mut tail = self.tail.lock();
        let log_start = self.io.log_start.load(Ordering::SeqCst);
        // A queue kept only as a position (its files removed, its row naming no live
        // record): nothing to read, and it goes on at the row's offset. Only retention
        // leaves one, so the log no longer starts at 0; a row's 0 there names the log's
        // first record (or that its last entry could not be read), never "no record".
        let position_only =
            matches!(&loaded, Ok(q) if q.span.read().is_none()) && end.last_physical < log_start;
        let why = match &loaded {
            _ if position_only => None,
            Ok(q) if q.damage().is_some() => q.damage().map(str::to_owned),
            Ok(q) if q.max_offset() != end.next => Some(format!(
                "holds entries up to {}, the queue table says {}",
                q.max_offset(),
                end.next
            )),
            Ok(q) => {
                let last = end.next.checked_sub(1).and_then(|at| {
                    let mut buf = [0u8; CQ_ENTRY_LEN];
                    q.read_checked(at * CQ_ENTRY_LEN as u64, &mut buf, false)
                        .ok()
                        .filter(|found| *found)
                        .and_then(|_| CqEntry::decode(&buf))
                });
                match last {
                    Some(e) if e.physical_offset != end.last_physical => Some(format!(
                        "its last entry points at {}, the queue table says {}",
                        e.physical_offset, end.last_physical
                    )),
                    _ => None,
                }
            }
            Err(e) => Some(e.to_string()),
        };
        if let Ok(q) = &loaded {
            // Adopt what was read (its descriptors were not cached: nothing to move).
            *self.span.write() = *q.span.read();
            let loaded_tail = q.tail.lock();
            tail.allocated = loaded_tail.allocated;
            tail.last = loaded_tail.last;
            drop(loaded_tail);
            self.min_offset.store(q.min_offset(), Ordering::Release);
            self.max_offset.store(q.max_offset(), Ordering::Release);
            self.flushed
                .store(q.flushed.load(Ordering::Acquire), Ordering::Release);
            self.free_start.store(q.is_fresh(), Ordering::Release);
        }
        if position_only {
            self.min_offset.store(end.next, Ordering::Release);
            self.max_offset.store(end.next, Ordering::Release);
            self.free_start.store(false, Ordering::Release);
        }
        if let Some(why) = &why {
            log::error!(
                "consume queue {} does not match the queue table ({why}); it goes on at {}, \
                 and the next open rebuilds the queues",
                self.dir.display(),
                end.next
            );
            self.io.suspect.store(true, Ordering::Release);
            if self.max_offset() != end.next || loaded.is_err() {
                let min = self.min_offset.load(Ordering::Acquire).min(end.next);
                self.min_offset.store(min, Ordering::Release);
                self.max_offset.store(end.next, Ordering::Release);
                self.flushed
                    .fetch_min(end.next * CQ_ENTRY_LEN as u64, Ordering::AcqRel);
                self.free_start.store(false, Ordering::Release);
            }
        }
        drop(tail);
        let damaged = why.is_some();
        // Published before the queue is seen loaded: retention then leaves it alone.
        self.found_damaged.store(damaged, Ordering::Release);
        // The minimum follows the log's start before anyone sees the queue loaded;
        // retention stores the start (SeqCst) before it skips unloaded queues, and the
        // start is read again after the SeqCst store below, so one of the two sees the
        // other. Not for a damaged queue: its files may not say where its entries begin,
        // and a reader must never be sent past messages the log still holds.
        if !damaged {
            self.raise_min_in(log_start, false);
        }
        *unloaded = None;
        self.is_unloaded.store(false, Ordering::SeqCst);
        if !damaged {
            self.raise_min_in(self.io.log_start.load(Ordering::SeqCst), false);
        }
        drop(unloaded);
        Ok(())
    }

    /// Opens the queue in `dir`. Its end is the first unwritten entry of the last file,
    /// found by binary search (entries are written in order) below the file's first hole;
    /// `how` says what is kept. Its written entries are checked (none zero, offsets
    /// rising). Rebuilding, a queue whose last entry points below `log_start` (the commit
    /// log's start) is expired: no record could rebuild it, so its files are kept, and
    /// they give way to the log if a record of it turns up after all.
    ///
    /// Needs no free space: a short file (after a crash) is extended as a hole.
    pub(crate) fn load(
        dir: PathBuf,
        io: Arc<QueueFiles>,
        how: Load,
        log_start: u64,
    ) -> Result<Self> {
        let keep_below = match how {
            Load::Keep => None,
            Load::DropFrom(offset) => Some(offset),
            Load::Rebuild => Some(0),
        };
        let file_size = io.file_size;
        let hook = io.hook.clone();
        // Every descriptor the load uses is opened here, before it changes anything
        // (drops, zeroes or removes): a load that ran out of descriptors has at most
        // removed `.tmp` leftovers and extended short files as holes, so doing it again
        // finds the same queue (`ConsumeQueues::load` does, one at a time). Keep it so.
        let starts = list_files(&dir, file_size, hook.as_ref())?;
        let files = starts
            .into_iter()
            .map(|start| {
                let path = sparse_file::path_in(&dir, start);
                let file = sparse_file::open(&path, file_size, how != Load::Keep)?;
                sparse_file::read_sparsely(&file);
                Ok((start, file))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut q = ConsumeQueue::new(dir, io);
        if files.is_empty() {
            return Ok(q);
        }
        let l = Loading {
            dir: &q.dir,
            files,
            file_size,
            window: std::cell::RefCell::new(None),
        };
        let per_file = l.entries_per_file();
        let first = l.first();
        let (last_start, last) = l.files.last().expect("not empty");
        let last_path = sparse_file::path_in(&q.dir, *last_start);
        let last_first = last_start / CQ_ENTRY_LEN as u64;
        // First unwritten entry of the last file, from `from` on: entries wholly past the
        // file's first hole from there are unwritten. With it, whether every byte of the
        // file past that entry is known to be zero (known for a small queue only).
        let written = |from: u64| -> Result<(u64, bool, u64)> {
            let hole = sparse_file::data_end(last, &last_path, from * CQ_ENTRY_LEN as u64)?;
            let hi = hole.div_ceil(CQ_ENTRY_LEN as u64).clamp(from, per_file);
            if hi - from <= WINDOW {
                // A small queue: one read, searched in memory.
                let mut buf = vec![0u8; ((hi - from) as usize) * CQ_ENTRY_LEN];
                l.read(last_first + from, &mut buf)?;
                let end = partition_point(0..hi - from, |i| {
                    let at = i as usize * CQ_ENTRY_LEN;
                    CqEntry::decode(buf[at..at + CQ_ENTRY_LEN].try_into().expect("20 bytes"))
                        .is_some()
                });
                // Only a load that drops entries has a stale tail to vouch for.
                let zeros_past = keep_below.is_some()
                    && buf[end as usize * CQ_ENTRY_LEN..].iter().all(|&b| b == 0)
                    && sparse_file::data_start(last, hole)?.is_none_or(|at| at >= file_size);
                *l.window.borrow_mut() = Some((last_first + from, buf));
                return Ok((from + end, zeros_past, hole));
            }
            let mut failed = None;
            let end = partition_point(from..hi, |at| match l.entry(last_first + at) {
                Ok(e) => e.is_some(),
                Err(e) => {
                    failed.get_or_insert(e);
                    false
                }
            });
            failed.map_or(Ok((end, false, hole)), Err)
        };
        let (written_to, mut zeros_past, mut hole) = written(0)?;
        let mut end = last_first + written_to;
        // A queue may begin inside its first file (rebuilt from a log whose start was
        // deleted): its first written entry is its minimum.
        let first_written = if l.entry(first)?.is_some() {
            first
        } else {
            let file0 = &l.files[0].1;
            let data = sparse_file::data_start(file0, 0)?
                .map_or(per_file * CQ_ENTRY_LEN as u64, |at| at)
                / CQ_ENTRY_LEN as u64;
            let mut found = per_file;
            for i in data.min(per_file)..per_file {
                if l.entry(first + i)?.is_some() {
                    found = i;
                    break;
                }
            }
            first + found
        };
        if l.files.len() == 1 && end <= first_written {
            // The binary search assumes entries from the file's start; redo it from the
            // first written entry.
            let (to, zeros, data_end) = written(first_written - first)?;
            (end, zeros_past, hole) = (first + to, zeros, data_end);
        }
        if l.files.len() == 1 && first_written == first + per_file {
            // Its only file holds no entry (created, then a crash or a full disk before the
            // first write reached it): the queue holds nothing, like a new one. Read as a
            // queue positioned at the file's end, it would skip offsets.
            l.remove(0, hook.as_ref())?;
            *q.names_created.get_mut() += 1;
            return Ok(q);
        }
        let last_entry = match end.checked_sub(1).filter(|at| *at >= first_written) {
            Some(at) => l.entry(at)?,
            None => None,
        };
        // Checked in every mode: a damaged last entry can look like an expired one.
        // Only retention starts a queue past entry 0, and only by deleting the log's first
        // files: with the log still starting at 0, a queue whose first entries are
        // missing (its first file gone, or its first sectors zeroed) lost them. Its
        // minimum stays at 0, so that reads there fail instead of moving consumers on.
        let head_lost = log_start == 0 && first_written.min(end) > 0;
        let damage = l.check(first_written.min(end), end)?.or_else(|| {
            head_lost.then(|| {
                format!(
                    "its first entry is {}, yet the commit log still starts at 0",
                    first_written.min(end)
                )
            })
        });
        let expired =
            how == Load::Rebuild && last_entry.is_some_and(|e| e.physical_offset < log_start);
        if expired && damage.is_some() {
            // Dead entries, damaged: nothing to keep them for. The queue continues from its
            // end (the table may move it further), unless the log has a record of it.
            l.remove(0, hook.as_ref())?;
            *q.names_created.get_mut() += 1;
            *q.min_offset.get_mut() = end;
            *q.max_offset.get_mut() = end;
            *q.free_start.get_mut() = false;
            *q.restartable.get_mut() = true;
            return Ok(q);
        }
        let keep_below = if expired { None } else { keep_below };
        let written_end = end;
        if let Some(limit) = keep_below {
            // First entry pointing at or past `limit` (offsets grow with queue offsets).
            let mut failed = None;
            end = partition_point(first_written.min(end)..end, |at| match l.entry(at) {
                Ok(e) => e.is_some_and(|e| e.physical_offset < limit),
                Err(e) => {
                    failed.get_or_insert(e);
                    false
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if how != Load::Rebuild {
            q.damage = damage.map(Into::into);
        }
        if how == Load::Rebuild && end <= first_written {
            // Nothing kept: the queue starts again at its first record in the log.
            l.remove(0, hook.as_ref())?;
            *q.names_created.get_mut() += 1;
            return Ok(q);
        }
        // Files wholly past the end go; the end's file is written next. Dropping entries
        // after a crash, the dropped ones stay in place: indexing the same records again
        // writes the same bytes over them, and `clear_stale_tail` zeroes what is left.
        let keep = (((end - first) / per_file) as usize + 1).min(l.files.len());
        if keep < l.files.len() {
            l.remove(keep, hook.as_ref())?;
            *q.names_created.get_mut() += 1;
        }
        let end_start = l.files[keep - 1].0;
        let pos = end * CQ_ENTRY_LEN as u64 - end_start;
        *q.stale_tail.get_mut() = keep_below.is_some();
        // Past the entries found written, the file was zeros: once indexing the same
        // records again reaches that end, no stale entry can remain.
        q.zeros_past = if zeros_past && l.files.len() == keep {
            written_end
        } else {
            u64::MAX
        };
        q.loaded_end = end;
        let span_end = end_start + file_size;
        *q.span.get_mut() = Some((l.files[0].0, span_end));
        // Blocks before the last file's first hole exist (data, written or allocated): a
        // re-indexed entry there needs no allocation. At most one chunk is taken on trust,
        // for a filesystem that reports a sparse file as all data.
        let page = PAGE_SIZE as u64;
        let from_page = pos / page * page;
        let allocated = if end_start == *last_start {
            (hole / page * page).clamp(from_page, from_page + sparse_file::FIRST_CHUNK)
        } else {
            from_page
        };
        q.tail.get_mut().allocated = (end_start, allocated);
        if let Some(e) = last_entry.filter(|_| end == written_end) {
            q.tail.get_mut().last = (end, e.physical_offset);
        }
        *q.min_offset.get_mut() = match head_lost {
            true => 0,
            false => first_written.max(first).min(end),
        };
        *q.max_offset.get_mut() = end;
        *q.flushed.get_mut() = end * CQ_ENTRY_LEN as u64;
        *q.free_start.get_mut() = false;
        *q.restartable.get_mut() = expired;
        Ok(q)
    }

    /// Whether entries were indexed into this queue since it was loaded (by the recovery
    /// that loaded it, from records it had just scanned): its last entry then points at
    /// its record by construction.
    pub(crate) fn indexed_since_load(&self) -> bool {
        self.max_offset() > self.loaded_end
    }

    /// After recovery re-indexed what a crash left: zeroes the entries still past the end
    /// (of records the recovery cut), which would otherwise read as written at the next
    /// load. Writes only where a byte is not zero; the next sync makes it durable, before
    /// the checkpoint vouches for any entry after it.
    pub(crate) fn clear_stale_tail(&self) -> Result<()> {
        let _tail = self.tail.lock();
        if !self.stale_tail.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        if self.max_offset() >= self.zeros_past && self.max_offset() > self.min_offset() {
            // Indexed again over everything the load dropped, and zeros beyond.
            return Ok(());
        }
        if self.min_offset.load(Ordering::Acquire) == self.max_offset() {
            // Nothing kept and nothing indexed again: the files go, or the next load would
            // read a file of zeros as a queue positioned at its end. The queue table keeps
            // the position.
            return self.remove_all_files(false);
        }
        let size = self.file_size();
        let byte = self.max_offset() * CQ_ENTRY_LEN as u64;
        let start = byte / size * size;
        let span = *self.span.read();
        if !span.is_some_and(|(first, end)| first <= start && start < end) {
            return Ok(());
        }
        let path = sparse_file::path_in(&self.dir, start);
        let file = self
            .io
            .cache
            .get_or_open((self.key, start), || sparse_file::reopen(&path))?;
        if zero_tail(&file, &path, byte - start, size)? {
            self.tail_rewritten.store(start, Ordering::Release);
        }
        Ok(())
    }
}
