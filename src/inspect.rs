//! Read-only access to a store's files, for tools: the `dump` example is a printer over
//! this module. Nothing here opens the store, takes its lock or writes; a store that
//! crashed, or one another process is writing, can be read. Damage is reported, never
//! repaired.
//!
//! - [`LogFiles`]: the commit-log files, walked record by record ([`LogFiles::walk`]) or
//!   read at an offset ([`LogFiles::record`]), and the checks of a consume-queue or key-index
//!   entry against the record it points at.
//! - [`queue_entries`]: the entries of one consume-queue file.
//! - [`IndexFileBytes`]: one key-index file, its header, entries and slots.
//! - [`Target`]: which of these a path names, and [`verify`]: every check of them.
//!
//! ```
//! use bytes::Bytes;
//! use rocketstore::inspect::{Item, LogFiles};
//! use rocketstore::{Message, MessageStore, StoreConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20))?;
//! store.put_message(&Message::new("TopicA", 0u32, Bytes::from_static(b"hi")))?;
//! store.shutdown()?;
//!
//! let log = LogFiles::of_store(dir.path())?;
//! let mut topics = Vec::new();
//! for (start, path) in log.files() {
//!     LogFiles::walk(path, *start, |item| {
//!         if let Item::Record { record, .. } = item {
//!             topics.push(record.topic.to_owned());
//!         }
//!         Ok(std::ops::ControlFlow::Continue(()))
//!     })?;
//! }
//! assert_eq!(topics, ["TopicA"]);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{self, CQ_ENTRY_LEN, CqEntry, RecordView, Records, Step};
use crate::fs::mapped_file::is_zero;
use crate::index::file::{ENTRY_LEN, HEADER_LEN, IndexEntry, IndexHeader, entry_pos, slot_pos};
use crate::layout;

/// Commit-log files are read this much at a time (more when one record is larger).
const WINDOW: usize = 64 << 20;

/// What a walk over a commit-log file meets ([`LogFiles::walk`]).
#[derive(Debug)]
pub enum Item<'a> {
    /// A record that parses, at `offset` (where it lies, whatever its own field says).
    Record {
        /// The commit-log offset of its first byte.
        offset: u64,
        /// The record; its CRC is not checked ([`RecordView::crc_ok`]).
        record: RecordView<'a>,
    },
    /// The blank record closing a file, with the bytes it leaves unused.
    Blank {
        /// The commit-log offset of the blank record.
        offset: u64,
        /// Bytes from it to the end of the file.
        unused: u64,
    },
    /// Bytes that are neither a record, a blank nor zeros: the walk stops in this file.
    Damaged {
        /// The commit-log offset of the damage.
        offset: u64,
        /// What is wrong, for people.
        reason: String,
    },
}

/// What a path names in a store's layout ([`Target::of`]).
#[derive(Debug, Clone)]
pub enum Target {
    /// A store root: it holds `commitlog/`.
    Store(PathBuf),
    /// `commitlog/`, or one commit-log file.
    CommitLog(LogFiles),
    /// `index/` or one index file, in the store at `root`.
    Index {
        /// The store root.
        root: PathBuf,
        /// The index files, oldest first.
        files: Vec<PathBuf>,
    },
    /// The checkpoint file.
    Checkpoint(PathBuf),
    /// A consume-queue directory or one of its files.
    Queue {
        /// The store root.
        root: PathBuf,
        /// The queue's topic.
        topic: String,
        /// The queue's id.
        queue_id: u32,
        /// `(first byte in the queue, path)` of each file, oldest first.
        files: Vec<(u64, PathBuf)>,
    },
}

impl Target {
    /// What `path` names; an `InvalidInput` error when it is none of a store's parts.
    /// The path is made absolute first, so `.` or a bare file name work from inside the
    /// store.
    pub fn of(path: &Path) -> io::Result<Target> {
        let path = &std::fs::canonicalize(path).map_err(|e| invalid(path, e))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parent = path.parent().unwrap_or(Path::new("/"));
        let root_of = |p: &Path| p.parent().unwrap_or(Path::new("/")).to_path_buf();
        Ok(if path.is_dir() && layout::commit_log_dir(path).is_dir() {
            Target::Store(path.to_path_buf())
        } else if path.is_dir() && name == layout::COMMIT_LOG_DIR {
            Target::CommitLog(LogFiles::in_dir(path)?)
        } else if name == layout::CHECKPOINT_FILE && path.is_file() {
            Target::Checkpoint(path.to_path_buf())
        } else if let Some((root, topic, queue_id)) = layout::parse_queue_path(path) {
            let files = match path.is_dir() {
                true => layout::data_files(path).map_err(|e| invalid(path, e))?,
                false => LogFiles::one(path).files,
            };
            Target::Queue {
                root,
                topic,
                queue_id,
                files,
            }
        } else if path.is_dir() && name == layout::INDEX_DIR {
            let files = index_files(path)?;
            Target::Index {
                root: root_of(path),
                files,
            }
        } else if path.is_file() && parent.file_name() == Some(layout::INDEX_DIR.as_ref()) {
            let files = vec![path.to_path_buf()];
            Target::Index {
                root: root_of(parent),
                files,
            }
        } else if path.is_file() && layout::parse_file_name(name).is_some() {
            Target::CommitLog(LogFiles::one(path))
        } else {
            let why = "not a store root, commit log, consume queue, index or checkpoint";
            return Err(invalid(path, why));
        })
    }
}

/// Something [`verify`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong: `record`, `commit log` (files missing at its start), `queue entry
    /// {topic}/{queue} #{queue offset}`, `index slot`, or `index entry {n} of {file}`.
    pub what: String,
    /// The commit-log offset it concerns; for an index slot, the slot's number; for bytes
    /// in a consume queue that are not an entry, their position in the queue.
    pub offset: u64,
    /// Why, for people; several reasons are joined by `; `.
    pub reason: String,
}

/// What [`LogFiles::check_queue_entry`] says of an entry whose tag is not its record's
/// tag hash.
const TAG_HASH_DIFFERS: &str = "tag hash differs";

/// Checks everything `target` holds and calls `problem` for each thing wrong; returns how
/// many records and entries it checked. Every record's body CRC and physical-offset field;
/// every consume-queue entry against its record ([`LogFiles::check_queue_entry`]); every
/// key-index slot and entry ([`LogFiles::check_index_entry`]), in files of
/// `index_shape = (slots, entries)`. A store root checks all three. Queues and index files
/// need their store's `commitlog/`; a checkpoint has nothing to check.
pub fn verify(
    target: &Target,
    index_shape: (u32, u32),
    mut problem: impl FnMut(Problem) -> io::Result<()>,
) -> io::Result<u64> {
    let mut checked = 0;
    let mut report = |what: &dyn Fn() -> String, offset, why: Vec<String>| match why.is_empty() {
        true => Ok(()),
        false => problem(Problem {
            what: what(),
            offset,
            reason: why.join("; "),
        }),
    };
    let needs_log = |root: &Path| {
        let log = LogFiles::of_store(root).unwrap_or_default();
        match log.files.is_empty() {
            true => Err(invalid(root, "checking it needs the store's commitlog/")),
            false => Ok(log),
        }
    };
    let (log, queues, index) = match target {
        Target::Store(root) => {
            let index = match layout::index_dir(root).is_dir() {
                true => index_files(&layout::index_dir(root))?,
                false => Vec::new(),
            };
            let mut queues = Vec::new();
            for dir in layout::queue_dirs(root)? {
                if let Some((_, topic, id)) = layout::parse_queue_path(&dir) {
                    let files = layout::data_files(&dir).map_err(|e| invalid(&dir, e))?;
                    queues.push((topic, id, files));
                }
            }
            (LogFiles::of_store(root)?, queues, index)
        }
        Target::CommitLog(log) => (log.clone(), Vec::new(), Vec::new()),
        Target::Queue {
            root,
            topic,
            queue_id,
            files,
        } => {
            let queue = (topic.clone(), *queue_id, files.clone());
            (needs_log(root)?, vec![queue], Vec::new())
        }
        Target::Index { root, files } => (needs_log(root)?, Vec::new(), files.clone()),
        Target::Checkpoint(_) => return Ok(0),
    };
    if matches!(target, Target::Store(_) | Target::CommitLog(_)) {
        // Where each file's walk ended, when it ended on zeros before the file's end.
        let mut zeros_at = Vec::new();
        for (start, path) in log.files() {
            let mut stopped = false;
            let used = LogFiles::walk(path, *start, |item| {
                match item {
                    Item::Record { offset, record } => {
                        checked += 1;
                        report(&|| "record".into(), offset, check_record(offset, &record))?;
                    }
                    Item::Damaged { offset, reason } => {
                        let why = vec![format!("{reason}; the rest of the file is not read")];
                        report(&|| "record".into(), offset, why)?;
                        stopped = true;
                    }
                    Item::Blank { .. } => stopped = true,
                }
                Ok(ControlFlow::Continue(()))
            })?;
            let len = std::fs::metadata(path)?.len();
            zeros_at.push((!stopped && used < len).then_some(start + used));
            // Zeros end a file the log went on from: the records after them are real.
            if used > 0 {
                for at in zeros_at.drain(..zeros_at.len() - 1).flatten() {
                    let why = vec![
                        "zeros where a record or the closing blank record should be, \
                        yet later files hold records"
                            .to_string(),
                    ];
                    report(&|| "record".into(), at, why)?;
                }
            }
        }
    }
    // Entries below the log's first file point at records retention deleted: readers skip
    // them, and so does the check.
    let log_start = log.files().first().map_or(0, |f| f.0);
    if let Target::Store(root) = target {
        // As the open checks: files below the start retention recorded are missing, not
        // deleted (believed only while the checkpoint is rocketstore's own).
        let recorded = crate::commit_log::start::read(&layout::log_start_file(root))
            .map_err(|e| invalid(root, e))?;
        if let Some(recorded) = recorded
            && log_start > recorded
            && crate::checkpoint::CheckpointTimes::intact(&layout::checkpoint_file(root))
        {
            let why = vec![format!(
                "the commit-log files from {recorded} to {log_start} are missing: retention \
                 recorded the log's start at {recorded} (the open refuses the store)"
            )];
            report(&|| "commit log".into(), recorded, why)?;
        }
    }
    // A store opened with a `TagCode` keeps codes the broker's rule chose in some entries
    // (a delivery time, say), which nothing here can compute: their tags are not checked.
    let tag_codes = match target {
        Target::Store(root) | Target::Queue { root, .. } => layout::tag_code_file(root).exists(),
        _ => false,
    };
    for (topic, id, files) in &queues {
        for (start, path) in files {
            for (qo, e) in queue_entries(path, *start)? {
                let what = || format!("queue entry {topic}/{id} #{qo}");
                let Some(e) = e else {
                    let why = vec!["not an entry: its size or offset is out of range".into()];
                    report(&what, qo.saturating_mul(CQ_ENTRY_LEN as u64), why)?;
                    continue;
                };
                if e.physical_offset >= log_start {
                    checked += 1;
                    let mut why = log.check_queue_entry(&e, topic, *id, qo)?;
                    if tag_codes {
                        why.retain(|w| w != TAG_HASH_DIFFERS);
                    }
                    report(&what, e.physical_offset, why)?;
                }
            }
        }
    }
    for path in &index {
        let file = IndexFileBytes::read(path, index_shape.0, index_shape.1)?;
        let count = file.header().count.min(index_shape.1);
        for (slot, v) in file.bad_slots() {
            let why = vec![format!("points at entry {v} of {count}")];
            report(&|| "index slot".into(), u64::from(slot), why)?;
        }
        for (n, e) in file.entries().filter(|(_, e)| e.offset >= log_start) {
            checked += 1;
            let what = || format!("index entry {n} of {}", path.display());
            report(&what, e.offset, log.check_index_entry(&e, n)?)?;
        }
    }
    Ok(checked)
}

/// The commit-log files of a store, oldest first, with their starting offsets.
#[derive(Debug, Clone, Default)]
pub struct LogFiles {
    files: Vec<(u64, PathBuf)>,
}

impl LogFiles {
    /// The files under `root`'s `commitlog/`.
    pub fn of_store(root: &Path) -> io::Result<LogFiles> {
        LogFiles::in_dir(&layout::commit_log_dir(root))
    }

    /// The commit-log files in `dir`.
    pub fn in_dir(dir: &Path) -> io::Result<LogFiles> {
        let files = layout::data_files(dir).map_err(|e| invalid(dir, e))?;
        Ok(LogFiles { files })
    }

    /// One file; its starting offset is its name (0 when the name is not an offset).
    pub fn one(path: &Path) -> LogFiles {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let start = layout::parse_file_name(name).unwrap_or(0);
        LogFiles {
            files: vec![(start, path.to_path_buf())],
        }
    }

    /// `(starting offset, path)` of each file, oldest first.
    pub fn files(&self) -> &[(u64, PathBuf)] {
        &self.files
    }

    /// Walks the records of the file at `path` (starting at commit-log offset `start`),
    /// oldest first, until `visit` breaks, the file's blank record, zeros, damage or the
    /// end of the file. Returns how far the walk got within the file: the end of the last
    /// record visited (or of the blank record). Reads at most 64 MiB at a time, more only
    /// for a larger (well-formed) record.
    pub fn walk(
        path: &Path,
        start: u64,
        visit: impl FnMut(Item<'_>) -> io::Result<ControlFlow<()>>,
    ) -> io::Result<u64> {
        LogFiles::walk_in_windows(path, start, WINDOW, visit)
    }

    fn walk_in_windows(
        path: &Path,
        start: u64,
        window: usize,
        mut visit: impl FnMut(Item<'_>) -> io::Result<ControlFlow<()>>,
    ) -> io::Result<u64> {
        let len = regular_file_len(path)?;
        let file = std::fs::File::open(path)?;
        if start.checked_add(len).is_none() {
            return Err(invalid(
                path,
                "its name is an offset too large for its length",
            ));
        }
        let len = len as usize;
        // A window holds at least a record's header, so that each read makes progress.
        let window = window.max(format::BLANK_RECORD_LEN);
        let (mut base, mut want) = (0usize, window);
        loop {
            let mut buf = vec![0u8; want.min(len - base)];
            file.read_exact_at(&mut buf, base as u64)?;
            let last_window = base + buf.len() == len;
            let mut records = Records::new(&buf, start + base as u64);
            while let Some(step) = records.next() {
                let at = base + records.position();
                let offset = start + at as u64;
                // A stop the window's end may have caused (a header cut short reads as
                // zeros or as damage) is read again from a window starting there.
                let rest = &buf[at - base..];
                let cut = !last_window
                    && match &step {
                        Ok(Step::Record(_)) => false,
                        Ok(_) => rest.len() < format::BLANK_RECORD_LEN,
                        Err(_) => cut_by_window(rest, len - at),
                    };
                let flow = match step {
                    _ if cut => break,
                    Ok(Step::Record(record)) => {
                        let offset = offset - u64::from(record.total_size);
                        visit(Item::Record { offset, record })?
                    }
                    Ok(Step::Blank) => {
                        let unused = (len - at) as u64;
                        // As the open takes it: a blank that does not fill the rest of
                        // its file is damage (a damaged magic code), not the file's end.
                        let (declared, fills) =
                            crate::commit_log::record::blank_fills(rest, len - at);
                        if !fills {
                            let reason = format!(
                                "a blank record of {declared} bytes, {unused} before the file's end"
                            );
                            let _ = visit(Item::Damaged { offset, reason })?;
                            return Ok(at as u64);
                        }
                        let _ = visit(Item::Blank { offset, unused })?;
                        return Ok((at + format::BLANK_RECORD_LEN) as u64);
                    }
                    Ok(Step::Empty) => return Ok(at as u64),
                    Err(e) => {
                        let reason = e.to_string();
                        let _ = visit(Item::Damaged { offset, reason })?;
                        return Ok(at as u64);
                    }
                };
                if flow.is_break() {
                    return Ok(at as u64);
                }
            }
            let pos = records.position();
            if last_window && pos == buf.len() {
                return Ok(len as u64);
            }
            // The window ends inside a record: read again from its start, whole (its size
            // is known once its header was read whole, and then checked by cut_by_window).
            let rest = &buf[pos..];
            let size = match rest.len() >= format::BLANK_RECORD_LEN {
                true => size_field(rest).max(0) as usize,
                false => 0,
            };
            want = window.max(size);
            base += pos;
        }
    }

    /// The bytes of the record at commit-log `offset`, or why there is none there. Only a
    /// header with a record's magic code, whose size fits in its file, is read further.
    pub fn record(&self, offset: u64) -> io::Result<Result<Vec<u8>, String>> {
        let Some((start, path)) = self.files.iter().rev().find(|(s, _)| *s <= offset) else {
            return Ok(Err("no commit-log file holds this offset".into()));
        };
        let file = std::fs::File::open(path)?;
        let at = offset - start;
        let left = file.metadata()?.len().saturating_sub(at);
        let mut header = [0u8; format::BLANK_RECORD_LEN];
        if file.read_exact_at(&mut header, at).is_err() {
            return Ok(Err("points past the end of its file".into()));
        }
        let Some(size) = record_size(&header).filter(|&size| size as u64 <= left) else {
            let size = size_field(&header);
            return Ok(Err(format!(
                "no record here (header of size {size} and no record's magic code, or past its file)"
            )));
        };
        let mut buf = vec![0u8; size];
        file.read_exact_at(&mut buf, at)?;
        Ok(Ok(buf))
    }

    /// Calls `check` with the record at `offset`; a missing or unreadable record is one
    /// problem.
    fn with_record(
        &self,
        offset: u64,
        check: impl FnOnce(&RecordView<'_>, &mut Vec<String>),
    ) -> io::Result<Vec<String>> {
        let mut why = Vec::new();
        match self.record(offset)? {
            Err(reason) => why.push(reason),
            Ok(buf) => match Records::new(&buf, offset).next() {
                Some(Ok(Step::Record(v))) => check(&v, &mut why),
                Some(Err(e)) => why.push(e.to_string()),
                _ => why.push("no record here".into()),
            },
        }
        Ok(why)
    }

    /// What is wrong with consume-queue entry `e` of `topic`/`queue_id` at `queue_offset`:
    /// the record it points at must exist, have its size, topic, queue, queue offset and
    /// tag hash, and a good body CRC. Empty when nothing is. (A store opened with a
    /// [`TagCode`](crate::TagCode) stores other codes in some entries: [`verify`] leaves
    /// the tag out there.)
    pub fn check_queue_entry(
        &self,
        e: &CqEntry,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> io::Result<Vec<String>> {
        self.with_record(e.physical_offset, |v, why| {
            if v.total_size != e.size {
                why.push(format!("size {} vs record {}", e.size, v.total_size));
            }
            if (v.topic, v.queue_id, v.queue_offset) != (topic, queue_id, queue_offset) {
                let (t, q, o) = (v.topic, v.queue_id, v.queue_offset);
                why.push(format!("record is {t}/{q} #{o}"));
            }
            if CqEntry::of(v).tag_hash != e.tag_hash {
                why.push(TAG_HASH_DIFFERS.into());
            }
            if !v.crc_ok() {
                why.push("record body CRC mismatch".into());
            }
        })
    }

    /// What is wrong with key-index entry `e` (number `n` in its file): its chain must
    /// only go back, and the record it points at must have a key hashing to it.
    pub fn check_index_entry(&self, e: &IndexEntry, n: u32) -> io::Result<Vec<String>> {
        let mut why = self.with_record(e.offset, |v, why| {
            let key_of = |k: &str| format::key_hash(&format!("{}#{k}", v.topic));
            if !v.index_keys().any(|k| key_of(k) == e.hash) {
                why.push(format!(
                    "no key of the {} record hashes to {}",
                    v.topic, e.hash
                ));
            }
        })?;
        if e.prev >= n {
            why.insert(0, format!("chain goes forward to entry {}", e.prev));
        }
        Ok(why)
    }
}

/// What is wrong with the record found at commit-log `offset`: a body CRC mismatch, or a
/// physical-offset field naming another place. Empty when nothing is.
pub fn check_record(offset: u64, v: &RecordView<'_>) -> Vec<String> {
    let mut why = Vec::new();
    if !v.crc_ok() {
        why.push("body CRC mismatch".to_string());
    }
    if v.physical_offset != offset {
        why.push(format!("record says it is at {}", v.physical_offset));
    }
    why
}

/// The properties of a record in stored order, as text even when they are not UTF-8.
pub fn properties(v: &RecordView<'_>) -> Vec<(String, String)> {
    String::from_utf8_lossy(v.properties)
        .split(char::from(format::PROPERTY_SEPARATOR))
        .filter_map(|p| p.split_once(char::from(format::NAME_VALUE_SEPARATOR)))
        .map(|(k, val)| (k.to_owned(), val.to_owned()))
        .collect()
}

/// What the records of one queue add up to ([`Totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTotal {
    /// Records.
    pub messages: u64,
    /// Bytes of the records.
    pub bytes: u64,
    /// Lowest and highest queue offset.
    pub queue_offsets: [u64; 2],
    /// Earliest and latest store time, ms since the epoch.
    pub stored: [i64; 2],
}

/// Per topic and queue totals of the records added.
#[derive(Debug, Clone, Default)]
pub struct Totals(pub BTreeMap<(String, u32), QueueTotal>);

impl Totals {
    /// Counts the record `v`.
    pub fn add(&mut self, v: &RecordView<'_>) {
        let (qo, ts) = (v.queue_offset, v.store_timestamp);
        let first = QueueTotal {
            messages: 0,
            bytes: 0,
            queue_offsets: [qo; 2],
            stored: [ts; 2],
        };
        let t = self
            .0
            .entry((v.topic.to_owned(), v.queue_id))
            .or_insert(first);
        t.messages += 1;
        t.bytes += u64::from(v.total_size);
        t.queue_offsets = [t.queue_offsets[0].min(qo), t.queue_offsets[1].max(qo)];
        t.stored = [t.stored[0].min(ts), t.stored[1].max(ts)];
    }
}

/// The entries of the consume-queue file at `path`, which starts at byte `start` of its
/// queue, with their queue offsets, up to the first unwritten (all-zero) entry. `None` is
/// 20 bytes that are written but not an entry (a size or offset out of range): damage.
pub fn queue_entries(path: &Path, start: u64) -> io::Result<Vec<(u64, Option<CqEntry>)>> {
    // No consume-queue file is larger (`consume_queue_entries_per_file` is bounded so).
    if regular_file_len(path)? > i32::MAX as u64 {
        return Err(invalid(path, "larger than any consume-queue file"));
    }
    let bytes = std::fs::read(path)?;
    let entries = bytes
        .chunks_exact(CQ_ENTRY_LEN)
        .take_while(|c| !is_zero(c))
        .map(|c| CqEntry::decode(c.try_into().expect("chunks of an entry")));
    Ok((start / CQ_ENTRY_LEN as u64..).zip(entries).collect())
}

/// The length of the regular file at `path`; an `InvalidInput` error for anything else
/// (a FIFO would block the open for ever, a device has no end).
fn regular_file_len(path: &Path) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(invalid(path, "not a regular file"));
    }
    Ok(meta.len())
}

/// The key-index files in `dir`, oldest first (their names are their creation times); any
/// other file there is an error, as it is to the store.
pub fn index_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let files = crate::index::list(dir).map_err(|e| invalid(dir, e))?;
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// One key-index file read whole, shaped by the store's slot and entry counts.
#[derive(Debug, Clone)]
pub struct IndexFileBytes {
    bytes: Vec<u8>,
    slots: u32,
    entries: u32,
}

impl IndexFileBytes {
    /// Reads the file at `path`; an error when its length is not that of a file of
    /// `slots` hash slots and `entries` entries (the store's `index_hash_slots` and
    /// `index_entries`).
    pub fn read(path: &Path, slots: u32, entries: u32) -> io::Result<IndexFileBytes> {
        let expected = format::index_file_len(slots, entries);
        // Checked before reading: any file under a directory named `index` comes here.
        let len = regular_file_len(path)?;
        if len != expected {
            let why = format!(
                "{len} bytes, not {expected}: not an index file of {slots} slots and {entries} \
                 entries (the store's index_hash_slots and index_entries)"
            );
            return Err(invalid(path, why));
        }
        let bytes = std::fs::read(path)?;
        if bytes.len() as u64 != expected {
            return Err(invalid(path, "its length changed while it was read"));
        }
        Ok(IndexFileBytes {
            bytes,
            slots,
            entries,
        })
    }

    /// The file's header.
    pub fn header(&self) -> IndexHeader {
        IndexHeader::decode(
            self.bytes[..HEADER_LEN as usize]
                .try_into()
                .expect("40 bytes"),
        )
    }

    /// The written entries with their numbers (entry 0 is never used).
    pub fn entries(&self) -> impl Iterator<Item = (u32, IndexEntry)> + '_ {
        (1..self.header().count.min(self.entries)).map(move |n| {
            let at = entry_pos(self.slots, n) as usize;
            let b = &self.bytes[at..at + ENTRY_LEN as usize];
            (n, IndexEntry::decode(b.try_into().expect("20 bytes")))
        })
    }

    /// Each hash slot pointing past the written entries, with what it points at.
    pub fn bad_slots(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let count = self.header().count.min(self.entries).max(1);
        (0..self.slots).filter_map(move |s| {
            let at = slot_pos(s) as usize;
            let v = u32::from_be_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes"));
            (v >= count).then_some((s, v))
        })
    }
}

/// The size field at the start of `rest`, or 0 when fewer than 4 bytes remain.
fn size_field(rest: &[u8]) -> i32 {
    rest.get(..4)
        .map_or(0, |b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
}

/// Whether the bytes at a stop (`rest` of a window, `file_left` of the file) are a record
/// the end of the window cut off, rather than damage.
fn cut_by_window(rest: &[u8], file_left: usize) -> bool {
    rest.len() < format::BLANK_RECORD_LEN
        || record_size(rest).is_some_and(|size| size <= file_left && size > rest.len())
}

/// The size a record header at the start of `bytes` gives, when it is a record's: a
/// message magic code and a size of at least a record's fixed fields.
fn record_size(bytes: &[u8]) -> Option<usize> {
    let magic = u32::from_be_bytes(bytes.get(4..8)?.try_into().expect("4 bytes"));
    let size = size_field(bytes);
    ([format::MAGIC_V1, format::MAGIC_V2].contains(&magic) && size >= format::MIN_RECORD_LEN as i32)
        .then_some(size as usize)
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> io::Error {
    let text = format!("{}: {why}", path.display());
    io::Error::new(io::ErrorKind::InvalidInput, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, MessageStore, StoreConfig};

    /// Every `(item kind, offset)` of a walk over each file, and how far each file is used.
    fn walk_all(log: &LogFiles, window: usize) -> Vec<(&'static str, u64)> {
        let mut seen = Vec::new();
        for (start, path) in log.files() {
            let used = LogFiles::walk_in_windows(path, *start, window, |item| {
                seen.push(match item {
                    Item::Record { offset, .. } => ("record", offset),
                    Item::Blank { offset, .. } => ("blank", offset),
                    Item::Damaged { offset, .. } => ("damaged", offset),
                });
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
            seen.push(("used", used));
        }
        seen
    }

    #[test]
    fn windows_smaller_than_a_record_walk_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(64 << 10))
            .unwrap();
        for i in 0..400usize {
            let body = vec![b'x'; 50 + (i * 37) % 400];
            store.put_message(&Message::new("Win", 0u32, body)).unwrap();
        }
        store.shutdown().unwrap();
        let log = LogFiles::of_store(dir.path()).unwrap();
        let whole = walk_all(&log, WINDOW);
        assert_eq!(whole.iter().filter(|(k, _)| *k == "record").count(), 400);
        assert!(
            whole.iter().any(|(k, _)| *k == "blank"),
            "a file ends in a blank"
        );
        for window in [1, 100, 1000, 4096] {
            assert_eq!(walk_all(&log, window), whole, "window {window}");
        }
    }
}
