//! The commit log: one append-only sequence of records across fixed-size mapped files.
//!
//! Positions, all commit-log offsets:
//! - `write_offset`: end of the appended records, published by the writer (under the put
//!   lock) after the copy;
//! - `flushed_offset`: end of the durable records, published by whoever flushes (under the
//!   flush lock).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::allocate::Allocator;
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::format::{self, BLANK_RECORD_LEN, EncodedRecord, Peek};
use crate::mapped_file::{FileWriter, MappedFile, sync_dir};
use crate::mapped_file_queue::MappedFileQueue;
use crate::message::{StoredMessage, now_ms};

/// Where a put (of one record or a batch) landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Appended {
    pub physical_offset: u64,
    pub queue_offset: u64,
    pub wrote_bytes: u32,
    pub store_timestamp: i64,
    pub count: u32,
}

/// What only the holder of the put lock may touch.
struct AppendState {
    writer: FileWriter,
    allocator: Allocator,
    /// Next queue offset of each topic/queue.
    queue_offsets: HashMap<String, HashMap<u32, u64>>,
    last_store_timestamp: i64,
    closed: bool,
}

pub(crate) struct CommitLog {
    files: MappedFileQueue,
    state: Mutex<AppendState>,
    /// When the current holder took the put lock, in ns since `epoch` (+1); 0 when free.
    lock_taken_at: AtomicU64,
    epoch: Instant,
    busy_limit: Duration,
    slow_put_threshold: Duration,
    write_offset: AtomicU64,
    flushed_offset: AtomicU64,
    flush_lock: Mutex<()>,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<String>>,
}

impl CommitLog {
    /// Opens `{root}/commitlog/`, creating it when missing, and finds where to continue.
    /// After an unclean exit (`clean == false`) the stale tail past the last valid record
    /// is zeroed.
    pub(crate) fn open(config: &StoreConfig, clean: bool) -> Result<CommitLog> {
        let dir = config.commit_log_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let file_size = config.commit_log_file_size;
        let mut loaded = MappedFileQueue::load_files(&dir, file_size, config.io_hook.clone())?
            .into_iter()
            .map(Arc::new)
            .collect::<Vec<_>>();
        let mut allocator = Allocator::new(
            dir.clone(),
            file_size as usize,
            config.io_hook.clone(),
            config.preallocate,
            config.effective_warmup(),
        )?;
        if let Some(spare) = split_unused_tail(&mut loaded, clean)? {
            allocator.adopt(spare);
        }

        let mut scan = Scan::default();
        let writer = match loaded.pop() {
            // A new store: the first file is not warmed, so that opening stays instant.
            None => FileWriter::new(Arc::new(allocator.take(0)?), 0)
                .expect("a new file has no other owner"),
            Some(last) => {
                for file in &loaded {
                    scan.file(file, false)?;
                }
                let end = scan.file(&last, true)?;
                let mut writer = FileWriter::new(last, end).ok_or_else(|| Error::BadStoreFile {
                    path: dir.clone(),
                    reason: "last file still in use".into(),
                })?;
                if !clean {
                    writer.zero_tail()?;
                }
                writer
            }
        };
        let files = MappedFileQueue::new(file_size);
        for file in loaded {
            files.push(file);
        }
        files.push(Arc::clone(writer.file()));
        let write_offset = writer.offset();
        log::info!(
            "commit log opened: {} files, write offset {write_offset}, {} topic queues",
            files.files_from(0).len(),
            scan.queue_offsets.values().map(HashMap::len).sum::<usize>()
        );
        allocator.prepare(writer.file().start_offset() + file_size);
        Ok(CommitLog {
            files,
            state: Mutex::new(AppendState {
                writer,
                allocator,
                queue_offsets: scan.queue_offsets,
                last_store_timestamp: scan.last_store_timestamp,
                closed: false,
            }),
            lock_taken_at: AtomicU64::new(0),
            epoch: Instant::now(),
            busy_limit: config.busy_limit,
            slow_put_threshold: config.slow_put_threshold,
            write_offset: AtomicU64::new(write_offset),
            flushed_offset: AtomicU64::new(write_offset),
            flush_lock: Mutex::new(()),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
        })
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
        let cause = self.poison_cause.lock().clone().unwrap_or_default();
        Error::Poisoned { cause }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn poison(&self, cause: &Error) {
        let mut slot = self.poison_cause.lock();
        if slot.is_none() {
            log::error!("flush failed, refusing further writes: {cause}");
            *slot = Some(cause.to_string());
        }
        self.poisoned.store(true, Ordering::Release);
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

    /// Appends already-encoded records of one topic/queue, all in one file, assigning
    /// consecutive queue offsets. Only this runs under the put lock.
    pub(crate) fn append(
        &self,
        records: &mut [EncodedRecord],
        topic: &str,
        queue_id: u32,
    ) -> Result<Appended> {
        self.check_poisoned()?;
        if let Some(held) = self.lock_held_for().filter(|h| *h > self.busy_limit) {
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

        let mut state = self.state.lock();
        let start = Instant::now();
        let taken_at = start.duration_since(self.epoch).as_nanos() as u64 + 1;
        self.lock_taken_at.store(taken_at, Ordering::Release);
        let result = self.append_locked(&mut state, records, topic, queue_id, total);
        self.lock_taken_at.store(0, Ordering::Release);
        drop(state);
        let took = start.elapsed();
        if took > self.slow_put_threshold {
            log::warn!("put to {topic}/{queue_id} spent {took:?} in the append path");
        }
        result
    }

    fn append_locked(
        &self,
        state: &mut AppendState,
        records: &mut [EncodedRecord],
        topic: &str,
        queue_id: u32,
        total: usize,
    ) -> Result<Appended> {
        if state.closed {
            return Err(Error::ShutDown);
        }
        if total + BLANK_RECORD_LEN > state.writer.remaining() {
            self.roll(state)?;
        }
        let queue_offset = match state.queue_offsets.get(topic) {
            Some(queues) => queues.get(&queue_id).copied().unwrap_or(0),
            None => 0,
        };
        let store_timestamp = now_ms().max(state.last_store_timestamp);
        let physical_offset = state.writer.offset();
        let mut at = physical_offset;
        for (i, record) in records.iter_mut().enumerate() {
            record.assign(queue_offset + i as u64, at, store_timestamp);
            state.writer.write(record.as_bytes());
            at += record.len() as u64;
        }
        state.writer.publish();
        self.write_offset.store(at, Ordering::Release);
        state.last_store_timestamp = store_timestamp;
        let count = records.len() as u32;
        *queue_slot(&mut state.queue_offsets, topic, queue_id) = queue_offset + u64::from(count);
        Ok(Appended {
            physical_offset,
            queue_offset,
            wrote_bytes: total as u32,
            store_timestamp,
            count,
        })
    }

    /// Ends the current file with a blank record and continues in the next one.
    fn roll(&self, state: &mut AppendState) -> Result<()> {
        let left = state.writer.remaining();
        if left > 0 {
            state.writer.write(&format::blank_record(left));
            state.writer.fill();
            state.writer.publish();
            self.write_offset
                .store(state.writer.offset(), Ordering::Release);
        }
        let next = state.writer.offset();
        let file = state.allocator.take(next)?;
        let writer = FileWriter::new(Arc::new(file), 0).expect("a new file has no other owner");
        self.files.push(Arc::clone(writer.file()));
        state.writer = writer;
        state.allocator.prepare(next + self.file_size());
        Ok(())
    }

    /// Flushes everything appended so far and returns the new flushed offset. A failure
    /// poisons the log.
    pub(crate) fn flush(&self) -> Result<u64> {
        self.check_poisoned()?;
        let _guard = self.flush_lock.lock();
        let target = self.write_offset();
        let from = self.flushed_offset();
        if target <= from {
            return Ok(from);
        }
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
        self.flushed_offset.fetch_max(flushed, Ordering::AcqRel);
        Ok(self.flushed_offset())
    }

    /// The record at `offset`, if one starts there below `limit`.
    pub(crate) fn read(&self, offset: u64, limit: u64) -> Result<Option<StoredMessage>> {
        if offset >= limit || offset < self.min_offset() {
            return Ok(None);
        }
        let Some(file) = self.files.find(offset) else {
            return Ok(None);
        };
        let pos = (offset - file.start_offset()) as usize;
        let visible = (limit - file.start_offset()).min(file.write_pos() as u64) as usize;
        let Some(rest) = visible
            .checked_sub(pos)
            .and_then(|len| file.slice(pos, len))
        else {
            return Ok(None);
        };
        let size = match format::peek(&rest, offset)? {
            Peek::Record { size } => size,
            Peek::Blank | Peek::Empty => return Ok(None),
        };
        let msg = format::decode(&rest.slice(..size), offset, false)?;
        if msg.physical_offset != offset {
            return Err(Error::corrupted(offset, "no record starts here"));
        }
        Ok(Some(msg))
    }

    /// Refuses further puts and stops the allocation thread; the caller then flushes.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.allocator.shutdown();
    }
}

/// The next-queue-offset slot of a topic/queue, created at 0.
fn queue_slot<'a>(
    table: &'a mut HashMap<String, HashMap<u32, u64>>,
    topic: &str,
    queue_id: u32,
) -> &'a mut u64 {
    if !table.contains_key(topic) {
        table.insert(topic.to_owned(), HashMap::new());
    }
    table
        .get_mut(topic)
        .expect("inserted above")
        .entry(queue_id)
        .or_default()
}

/// What a scan of existing files learns.
#[derive(Default)]
struct Scan {
    queue_offsets: HashMap<String, HashMap<u32, u64>>,
    last_store_timestamp: i64,
}

impl Scan {
    /// Walks the records of `file` and returns where they end. In the last file the first
    /// invalid record ends the log (it was never acknowledged: see docs/DESIGN.md); in
    /// earlier files it is an error.
    fn file(&mut self, file: &Arc<MappedFile>, last: bool) -> Result<usize> {
        let start = file.start_offset();
        let bytes = file
            .visible_from(0)
            .expect("an opened file is fully visible");
        let mut pos = 0usize;
        while pos < bytes.len() {
            let offset = start + pos as u64;
            let rest = &bytes[pos..];
            let outcome = format::peek(rest, offset).and_then(|peek| match peek {
                Peek::Record { size } => {
                    let view = format::parse(&rest[..size], offset)?;
                    if !view.crc_ok() {
                        return Err(Error::corrupted(offset, "body CRC mismatch"));
                    }
                    if view.physical_offset != offset {
                        return Err(Error::corrupted(
                            offset,
                            format!("record says it is at {}", view.physical_offset),
                        ));
                    }
                    Ok(Some(view))
                }
                Peek::Blank | Peek::Empty => Ok(None),
            });
            match outcome {
                Ok(Some(view)) => {
                    let next = queue_slot(&mut self.queue_offsets, view.topic, view.queue_id);
                    *next = (*next).max(view.queue_offset + 1);
                    self.last_store_timestamp = self.last_store_timestamp.max(view.store_timestamp);
                    pos += view.total_size as usize;
                }
                Ok(None) if matches!(format::peek(rest, offset), Ok(Peek::Blank)) => {
                    return Ok(bytes.len());
                }
                Ok(None) if last => return Ok(pos),
                Ok(None) => {
                    return Err(Error::corrupted(
                        offset,
                        "empty space before the end of a file that is not the last",
                    ));
                }
                Err(e) if last => {
                    log::warn!("log ends at {offset}: dropping the invalid tail ({e})");
                    return Ok(pos);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(pos)
    }
}

/// Takes the trailing files that hold nothing (prepared by the allocation thread, never
/// written) off `files`, keeping at least one file. After a clean exit the first of them is
/// returned for reuse; every other one is deleted.
fn split_unused_tail(files: &mut Vec<Arc<MappedFile>>, clean: bool) -> Result<Option<MappedFile>> {
    let mut unused = Vec::new();
    while files.len() > 1 && files.last().is_some_and(MappedFile::is_unused) {
        unused.push(files.pop().expect("len > 1"));
    }
    // `unused` runs from the last file back to the one right after the last used file.
    let spare = if clean {
        unused.pop().and_then(|f| Arc::try_unwrap(f).ok())
    } else {
        None
    };
    let removed = !unused.is_empty();
    for file in unused {
        std::fs::remove_file(file.path()).map_err(|e| Error::io("remove", file.path(), e))?;
    }
    if removed && let Some(last) = files.last() {
        sync_dir(last.path().parent().expect("files live in a directory"))?;
    }
    Ok(spare)
}
