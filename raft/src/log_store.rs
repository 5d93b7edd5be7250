//! The durable Raft log: openraft's [`RaftLogStorage`] on segment files.
//!
//! ```text
//! {dir}/log/{first index:020}   segments of frames: [len u32][!len u32][crc32 u32][entry]
//! {dir}/vote                    the vote (a state file: JSON and its CRC)
//! {dir}/purged                  the last purged log id (a state file)
//! ```
//!
//! An append writes its frames into the page cache and returns; a flush thread then makes
//! them durable with one `fdatasync` for every append waiting (group commit) and only then
//! reports them to openraft, which counts a replica's vote for an entry only after that.
//! The open syncs the last segment it read (a killed process's unsynced frames are still
//! in the page cache), and the state machine applies nothing until every append submitted
//! is synced, so a store's record never outlives its entry's frame.
//! A segment is synced before the next one starts, so only the last segment can end in a
//! torn frame after a crash; it is cut there, and a damaged frame anywhere else refuses
//! the open.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

pub(crate) use flusher::AppendProgress;
type Flush = flusher::Flush<LogFlushed<TypeConfig>>;
#[cfg(test)]
pub(crate) use flusher::Synced;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::request::{decode_entry, encode_entry};
use crate::state_file::{read_state, write_state};
use crate::{NodeId, TypeConfig};

/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// `[len u32][!len u32][crc32 of the entry u32]`: the length is stored twice, so a damaged
/// length is told apart from a frame a crash cut short.
const FRAME_HEADER: usize = 12;

/// openraft's log storage for one node. Cheap to clone: clones share the log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    flush: Arc<Flush>,
    /// What the state machine has durably snapshotted, for purges to wait on.
    purge_gate: Arc<Mutex<Option<watch::Receiver<Covered>>>>,
    /// The node's lock file, held until the node shuts down or the last clone goes.
    node_lock: Arc<Mutex<Option<File>>>,
}

/// How far the state machine's durably recorded snapshot reaches, published for the Raft
/// log's purges: a purge waits until the entries it forgets are covered, so that a node
/// never holds a log purged past what its state machine can recover to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Covered {
    /// Index of the last entry the recorded snapshot holds.
    pub upto: Option<u64>,
    /// Index of the last entry of a snapshot whose install is recorded as begun, its
    /// stream synced: a restart finishes it, or refuses to open while it cannot.
    pub recoverable: Option<u64>,
    /// A snapshot install failed before it was recorded, or the node is stopping: no
    /// purge waiting may go ahead.
    pub failed: bool,
}

struct Segment {
    first_index: u64,
    file: Arc<File>,
    len: u64,
}

#[derive(Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    log_id: LogId<NodeId>,
}

struct Inner {
    dir: PathBuf,
    segments: Vec<Segment>,
    segment_bytes: u64,
    /// Frame bytes appended since open.
    bytes_written: u64,
    entries: BTreeMap<u64, Loc>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn segment_dir(dir: &Path) -> PathBuf {
    dir.join("log")
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    segment_dir(dir).join(format!("{first_index:020}"))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parent, each new directory's name synced in its parent:
/// files synced inside a directory whose own entry never reached the disk are lost with
/// it on a power cut (a vote, a segment: a node that comes back empty can vote twice).
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        // A relative name with no parent lives in the current directory.
        let parent = created.parent().filter(|p| !p.as_os_str().is_empty());
        sync_dir(parent.unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Syncs the last segment as the open found it. A process killed before its flush thread
/// synced an append leaves the frame in the page cache, where the next open, in the same
/// boot, reads it back as if it were durable: openraft then counts it, answers the
/// leader that it holds the entry, and applies it once committed, so the store's record
/// of it could reach the disk while the frame is lost on a power cut. Earlier segments
/// were synced before the next one began.
fn sync_loaded(segment: &Segment) -> io::Result<()> {
    #[cfg(test)]
    tests::LOADED_SYNCS.with(|s| s.borrow_mut().push(segment.first_index));
    segment.file.sync_data()
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("raft log {}: {what}", path.display()),
    )
}

impl LogStore {
    /// Opens (or creates) the Raft log under `dir`, cutting a torn tail of its last
    /// segment. A damaged frame before that, or entries that do not follow each other,
    /// refuse the open.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        LogStore::open_sized(dir, SEGMENT_BYTES)
    }

    fn open_sized(dir: &Path, segment_bytes: u64) -> io::Result<LogStore> {
        create_dir_durable(&segment_dir(dir))?;
        let vote = read_state(&dir.join("vote"))?;
        let last_purged: Option<LogId<NodeId>> = read_state(&dir.join("purged"))?;
        let mut firsts = Vec::new();
        for item in fs::read_dir(segment_dir(dir))? {
            let item = item?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            match name.parse::<u64>() {
                Ok(first) if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) => {
                    firsts.push(first)
                }
                _ if name.ends_with(".tmp") => fs::remove_file(item.path())?,
                _ => return Err(corrupt(&item.path(), "not a segment name")),
            }
        }
        firsts.sort_unstable();
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            segment_bytes,
            bytes_written: 0,
            entries: BTreeMap::new(),
            last_purged,
            vote,
        };
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            inner.load_segment(first, i + 1 == count)?;
        }
        if let Some(last) = inner.segments.last() {
            sync_loaded(last)?;
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            flush: Flush::start(),
            purge_gate: Arc::new(Mutex::new(None)),
            node_lock: Arc::new(Mutex::new(None)),
        })
    }

    /// Keeps the node's lock file (locked) until [`release_lock`](Self::release_lock) or
    /// until the last clone of this log is dropped: openraft's core holds clones, and may
    /// run on after the node's handle is dropped without a shutdown.
    pub(crate) fn hold_lock(&self, lock: File) {
        *self.node_lock.lock() = Some(lock);
    }

    /// Releases the node's lock: the node has shut down.
    pub(crate) fn release_lock(&self) {
        self.node_lock.lock().take();
    }

    /// Index of the last entry purged, if any.
    pub(crate) fn last_purged_index(&self) -> Option<u64> {
        self.inner.lock().last_purged.map(|l| l.index)
    }

    /// From now on a purge waits until `covered` reaches the entries it forgets.
    /// openraft queues a received snapshot's install and the purge of the log up to it
    /// together, and runs the purge at once: without the wait, a crash or a failure
    /// during the install leaves the log purged past what the state machine holds, and
    /// the node can never apply its next entry. The wait ends once the install is
    /// recorded as begun (its stream synced; a restart finishes it), not when it ends:
    /// openraft waits for the purge on its core task, which serves nothing else meanwhile.
    pub(crate) fn gate_purges(&self, covered: watch::Receiver<Covered>) {
        *self.purge_gate.lock() = Some(covered);
    }

    /// How many appends were submitted so far, and a watch of how many are synced: a
    /// proposer waits for the append after its proposal to be synced before it proposes
    /// again, since openraft handles one append at a time and each costs a sync; the
    /// state machine waits for every append submitted to be synced before it applies.
    pub(crate) fn append_progress(&self) -> AppendProgress {
        self.flush.progress()
    }

    /// Bytes of frames appended since this log was opened.
    pub fn bytes_written(&self) -> u64 {
        self.inner.lock().bytes_written
    }

    /// The id of the entry at `index`, if the log holds it.
    pub(crate) fn log_id_at(&self, index: u64) -> Option<LogId<NodeId>> {
        self.inner.lock().entries.get(&index).map(|loc| loc.log_id)
    }

    /// The last log id present, if any (for tests and the operator).
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let inner = self.inner.lock();
        inner.last_log_id()
    }

    fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let locs: Vec<(Loc, Arc<File>)> = {
            let inner = self.inner.lock();
            inner
                .entries
                .range(range)
                .map(|(_, loc)| (*loc, inner.segment_file(loc.segment)))
                .collect()
        };
        locs.into_iter()
            .map(|(loc, file)| {
                let mut buf = vec![0; loc.len as usize];
                file.read_exact_at(&mut buf, loc.offset + FRAME_HEADER as u64)
                    .map_err(|e| StorageIOError::read_log_at_index(loc.log_id.index, &e))?;
                decode_entry(&buf).ok_or_else(|| {
                    let e = corrupt(Path::new("entry"), format!("index {}", loc.log_id.index));
                    StorageIOError::read_log_at_index(loc.log_id.index, &e).into()
                })
            })
            .collect()
    }
}

impl Inner {
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .last_key_value()
            .map(|(_, loc)| loc.log_id)
            .or(self.last_purged)
    }

    fn segment_file(&self, first_index: u64) -> Arc<File> {
        let i = self
            .segments
            .binary_search_by_key(&first_index, |s| s.first_index)
            .expect("every entry's segment is open");
        Arc::clone(&self.segments[i].file)
    }

    fn load_segment(&mut self, first: u64, last: bool) -> io::Result<()> {
        let path = segment_path(&self.dir, first);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let bytes = fs::read(&path)?;
        let mut at = 0usize;
        let mut torn = None;
        while at < bytes.len() {
            let Some(frame) = frame_at(&bytes, at) else {
                torn = Some(at);
                break;
            };
            let Some(entry) = decode_entry(frame) else {
                torn = Some(at);
                break;
            };
            let index = entry.log_id.index;
            let purged = self.last_purged.map(|p| p.index);
            if purged.is_some_and(|p| index <= p) {
                // Purged: no longer part of the log, whatever follows it.
                at += FRAME_HEADER + frame.len();
                continue;
            }
            let expected = match (self.entries.last_key_value(), purged) {
                (Some((i, _)), _) => i + 1,
                (None, Some(p)) => p + 1,
                (None, None) => first,
            };
            if index != expected {
                return Err(corrupt(&path, format!("index {index} follows {expected}")));
            }
            self.entries.insert(
                index,
                Loc {
                    segment: first,
                    offset: at as u64,
                    len: frame.len() as u32,
                    log_id: entry.log_id,
                },
            );
            at += FRAME_HEADER + frame.len();
        }
        if let Some(at) = torn {
            // Only what a torn append leaves (see `is_torn_tail`) was never synced, and so
            // never reported to openraft. A whole frame that fails its CRC may have been
            // acknowledged: losing it could let this node vote against entries it promised
            // to keep, so it refuses the open.
            if !last || !is_torn_tail(&bytes[at..], at) {
                return Err(corrupt(&path, format!("damaged frame at byte {at}")));
            }
            log::warn!(
                "raft log {}: cutting a torn tail at byte {at} of {}",
                path.display(),
                bytes.len()
            );
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        self.segments.push(Segment {
            first_index: first,
            file: Arc::new(file),
            len: torn.unwrap_or(bytes.len()) as u64,
        });
        Ok(())
    }

    /// Writes `frames` (entries from `first_index` on) at the end of the log, starting a
    /// segment when the last one is full; returns the files to sync.
    fn write(&mut self, frames: &[(LogId<NodeId>, Vec<u8>)]) -> io::Result<Vec<Arc<File>>> {
        let mut touched: Vec<Arc<File>> = Vec::new();
        for (log_id, frame) in frames {
            let full = self
                .segments
                .last()
                .is_none_or(|s| s.len >= self.segment_bytes);
            if full {
                if let Some(last) = self.segments.last() {
                    // Only the last segment may ever end torn.
                    last.file.sync_data()?;
                }
                let path = segment_path(&self.dir, log_id.index);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                sync_dir(&segment_dir(&self.dir))?;
                self.segments.push(Segment {
                    first_index: log_id.index,
                    file: Arc::new(file),
                    len: 0,
                });
            }
            let segment = self
                .segments
                .last_mut()
                .expect("a segment was just ensured");
            segment.file.write_all_at(frame, segment.len)?;
            self.entries.insert(
                log_id.index,
                Loc {
                    segment: segment.first_index,
                    offset: segment.len,
                    len: (frame.len() - FRAME_HEADER) as u32,
                    log_id: *log_id,
                },
            );
            segment.len += frame.len() as u64;
            self.bytes_written += frame.len() as u64;
            if !touched.iter().any(|f| Arc::ptr_eq(f, &segment.file)) {
                touched.push(Arc::clone(&segment.file));
            }
        }
        Ok(touched)
    }

    /// Removes entries from `index` on, durably.
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some(cut) = self.entries.get(&index).copied() else {
            return Ok(());
        };
        self.entries.split_off(&index);
        while let Some(last) = self.segments.last() {
            if last.first_index <= cut.segment {
                break;
            }
            fs::remove_file(segment_path(&self.dir, last.first_index))?;
            self.segments.pop();
        }
        sync_dir(&segment_dir(&self.dir))?;
        let segment = self.segments.last_mut().expect("the cut's segment remains");
        segment.file.set_len(cut.offset)?;
        segment.file.sync_all()?;
        segment.len = cut.offset;
        Ok(())
    }

    /// Forgets entries up to `log_id`, deleting every segment that holds only those.
    fn purge(&mut self, log_id: LogId<NodeId>) -> io::Result<()> {
        write_state(&self.dir.join("purged"), &log_id)?;
        self.last_purged = Some(log_id);
        self.entries = self.entries.split_off(&(log_id.index + 1));
        if self.entries.is_empty() {
            // Purged past the last entry (a snapshot installed on a follower far behind):
            // nothing is left, and the next entry starts a segment of its own, so no
            // segment mixes the old entries with ones that do not follow them.
            for gone in self.segments.drain(..) {
                fs::remove_file(segment_path(&self.dir, gone.first_index))?;
            }
            return sync_dir(&segment_dir(&self.dir));
        }
        while self.segments.len() > 1 && self.segments[1].first_index <= log_id.index + 1 {
            let gone = self.segments.remove(0);
            fs::remove_file(segment_path(&self.dir, gone.first_index))?;
        }
        Ok(())
    }
}

/// Whether `rest`, from a frame that did not read back, is what a torn append leaves: a
/// frame that runs past the end of the file, or nothing but zeros.
///
/// Pages of an append that was never synced may reach the disk in any order, so a torn
/// frame may also be whole but hold a page that was never written: a zero header, or a
/// page that reads as zeros from where the frame enters it (see `has_unwritten_page`),
/// the header's own second half included. Only a frame whose length
/// checks out and whose pages are all there, yet fails its CRC, is damage.
fn is_torn_tail(rest: &[u8], offset: usize) -> bool {
    if rest.iter().all(|b| *b == 0) {
        return true;
    }
    let Some(header) = rest.get(..FRAME_HEADER) else {
        return true;
    };
    if header.iter().all(|b| *b == 0) {
        return true;
    }
    let word = |i: usize| u32::from_be_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != !word(4) {
        // A header cut by a page boundary whose second page was never written.
        return has_unwritten_page(rest, FRAME_HEADER, offset);
    }
    let end = FRAME_HEADER + word(0) as usize;
    end > rest.len() || has_unwritten_page(rest, end, offset)
}

/// Whether the frame `rest[..end]`, at file offset `offset`, lies partly in a page that
/// was never written: one whose bytes are all zeros, from where the frame enters it to
/// the page's end (or the end of the file). A written page holds the frame's bytes there,
/// and a page the frame shares with the frame before it holds that frame's bytes: only a
/// page never written reads as zeros throughout, however little of the frame it holds.
fn has_unwritten_page(rest: &[u8], end: usize, offset: usize) -> bool {
    const PAGE: usize = 4096;
    let mut i = 0;
    while i < end.min(rest.len()) {
        let page_end = (((offset + i) / PAGE + 1) * PAGE - offset).min(rest.len());
        if rest[i..page_end].iter().all(|b| *b == 0) {
            return true;
        }
        i = page_end;
    }
    false
}

/// The payload of the frame at `at`, if a whole frame with a matching CRC is there.
fn frame_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let header = bytes.get(at..at + FRAME_HEADER)?;
    let word = |i: usize| u32::from_be_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    let (len, check, crc) = (word(0), word(4), word(8));
    if len == 0 || check != !len {
        return None;
    }
    let payload = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len as usize)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

fn frame(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let mut out = vec![0; FRAME_HEADER];
    encode_entry(entry, &mut out);
    let len = (out.len() - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&out[FRAME_HEADER..]);
    out[..4].copy_from_slice(&len.to_be_bytes());
    out[4..8].copy_from_slice(&(!len).to_be_bytes());
    out[8..12].copy_from_slice(&crc.to_be_bytes());
    out
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        self.entries(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let inner = self.inner.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        write_state(&inner.dir.join("vote"), vote).map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        Ok(self.inner.lock().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let frames: Vec<_> = entries
            .into_iter()
            .map(|e| (*e.get_log_id(), frame(&e)))
            .collect();
        let mut inner = self.inner.lock();
        let files = inner
            .write(&frames)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Counted before the entries can be read (the lock is let go): an apply that reads
        // them waits for this append's sync.
        self.flush.submit(files, callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        inner
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let gate = self.purge_gate.lock().clone();
        if let Some(mut covered) = gate {
            let reached = covered
                .wait_for(|c| c.failed || c.upto.max(c.recoverable) >= Some(log_id.index))
                .await
                .map(|c| !c.failed);
            if !matches!(reached, Ok(true)) {
                let e = io::Error::other(format!(
                    "not purging the raft log up to {log_id}: the snapshot covering it was not recorded"
                ));
                return Err(StorageIOError::write_logs(&e).into());
            }
        }
        let mut inner = self.inner.lock();
        inner
            .purge(log_id)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

mod flusher {
    //! The flush thread: one `fdatasync` for all appends waiting, then their callbacks.

    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// What is told when an append's sync is done: openraft's callback.
    pub(crate) trait Completion: Send + 'static {
        fn completed(self, result: io::Result<()>);
    }

    impl Completion for LogFlushed<TypeConfig> {
        fn completed(self, result: io::Result<()>) {
            self.log_io_completed(result);
        }
    }

    type Job<C> = (Vec<Arc<File>>, C);

    /// How far the flush thread has come.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub(crate) struct Synced {
        /// Appends whose sync has completed (or failed).
        pub count: u64,
        /// A sync failed: no append from then on is durable.
        pub failed: bool,
    }

    /// Where the log's appends stand: how many were handed to the flush thread, and a
    /// watch of how many it has synced. Cheap to clone.
    #[derive(Clone)]
    pub(crate) struct AppendProgress {
        submitted: Arc<AtomicU64>,
        synced: watch::Receiver<Synced>,
    }

    impl AppendProgress {
        /// Progress made of these parts (tests drive them by hand).
        #[cfg(test)]
        pub(crate) fn from_parts(
            submitted: Arc<AtomicU64>,
            synced: watch::Receiver<Synced>,
        ) -> AppendProgress {
            AppendProgress { submitted, synced }
        }

        /// Appends handed to the flush thread so far.
        pub(crate) fn submitted(&self) -> u64 {
            self.submitted.load(Ordering::Acquire)
        }

        /// A watch of the flush thread's progress.
        pub(crate) fn synced(&self) -> watch::Receiver<Synced> {
            self.synced.clone()
        }

        /// Whether both are the progress of the same log.
        #[cfg(test)]
        pub(crate) fn is_of_same_log(&self, other: &AppendProgress) -> bool {
            Arc::ptr_eq(&self.submitted, &other.submitted)
        }

        /// Waits until every append submitted before the call is durable. An error if a
        /// sync failed, or the flush thread panicked.
        pub(crate) async fn all_synced(&self) -> io::Result<()> {
            let target = self.submitted();
            let mut synced = self.synced();
            let reached = synced
                .wait_for(|s| s.failed || s.count >= target)
                .await
                .map(|s| *s)
                .map_err(|_| io::Error::other("the raft log was closed"))?;
            if reached.failed {
                return Err(io::Error::other(
                    "a raft log fdatasync failed: its appends are not durable",
                ));
            }
            Ok(())
        }
    }

    /// The way to the flush thread; `None` once the thread has panicked.
    type Way<C> = Mutex<Option<std::sync::mpsc::Sender<Job<C>>>>;

    pub(crate) struct Flush<C> {
        tx: Arc<Way<C>>,
        /// Appends handed to the thread.
        submitted: Arc<AtomicU64>,
        /// The thread's progress.
        synced: watch::Sender<Synced>,
    }

    impl<C: Completion> Flush<C> {
        pub(crate) fn start() -> Arc<Flush<C>> {
            let (tx, rx) = std::sync::mpsc::channel::<Job<C>>();
            let tx: Arc<Way<C>> = Arc::new(Mutex::new(Some(tx)));
            // Weak: the thread must not keep its own channel open (it stops once the
            // `Flush` goes).
            let closing = Arc::downgrade(&tx);
            let synced = watch::Sender::new(Synced::default());
            let progress = synced.clone();
            thread::Builder::new()
                .name("raft-log-flush".into())
                .spawn(move || {
                    /// A panic ends the thread with appends waiting: whoever waits
                    /// for them (an apply) is told the log failed, and every append
                    /// queued or submitted from then on is answered with the panic as
                    /// its error (openraft 0.9.25 also fails an append whose callback
                    /// is dropped, but without the reason; the round's own appends,
                    /// dropped by the unwind, still go that way).
                    struct FailOnPanic<C: Completion> {
                        progress: watch::Sender<Synced>,
                        closing: std::sync::Weak<Way<C>>,
                        rx: std::sync::mpsc::Receiver<Job<C>>,
                    }
                    impl<C: Completion> Drop for FailOnPanic<C> {
                        fn drop(&mut self) {
                            if !thread::panicking() {
                                return;
                            }
                            self.progress.send_modify(|s| s.failed = true);
                            // No send from here on (`submit` fails those itself), then
                            // every one before is answered.
                            if let Some(tx) = self.closing.upgrade() {
                                tx.lock().take();
                            }
                            while let Ok((_, callback)) = self.rx.try_recv() {
                                callback.completed(Err(io::Error::other(
                                    "the raft log's flush thread panicked",
                                )));
                            }
                        }
                    }
                    let guard = FailOnPanic {
                        progress,
                        closing,
                        rx,
                    };
                    let (progress, rx) = (&guard.progress, &guard.rx);
                    // After a failed fdatasync the kernel may have dropped the dirty pages
                    // and a later sync can succeed without them: every flush from then on
                    // fails.
                    let mut failed: Option<io::ErrorKind> = None;
                    while let Ok(first) = rx.recv() {
                        let mut jobs = vec![first];
                        jobs.extend(rx.try_iter());
                        let mut files: Vec<Arc<File>> = Vec::new();
                        for f in jobs.iter().flat_map(|(fs, _)| fs) {
                            if !files.iter().any(|g| Arc::ptr_eq(f, g)) {
                                files.push(Arc::clone(f));
                            }
                        }
                        if failed.is_none()
                            && let Err(e) = files.iter().try_for_each(|f| f.sync_data())
                        {
                            log::error!(
                                "raft log fdatasync failed: {e}; the log refuses all further appends"
                            );
                            failed = Some(e.kind());
                        }
                        let count = jobs.len() as u64;
                        for (_, callback) in jobs {
                            callback.completed(match failed {
                                None => Ok(()),
                                Some(kind) => Err(io::Error::new(kind, "an earlier raft log fdatasync failed")),
                            });
                        }
                        progress.send_modify(|s| {
                            s.count += count;
                            s.failed = failed.is_some();
                        });
                    }
                })
                .expect("spawn the raft log flush thread");
            Arc::new(Flush {
                tx,
                submitted: Arc::new(AtomicU64::new(0)),
                synced,
            })
        }

        /// Appends submitted so far, and a watch of those synced.
        pub(crate) fn progress(&self) -> AppendProgress {
            AppendProgress {
                submitted: Arc::clone(&self.submitted),
                synced: self.synced.subscribe(),
            }
        }

        pub(crate) fn submit(&self, files: Vec<Arc<File>>, callback: C) {
            self.submitted.fetch_add(1, Ordering::AcqRel);
            // The thread stops only once this sender is dropped, or by a panic, which
            // takes the sender away under this lock: the append is then told why it
            // failed.
            let sending = self.tx.lock();
            let refused = match sending.as_ref() {
                Some(tx) => tx.send((files, callback)).err().map(|e| e.0.1),
                None => Some(callback),
            };
            drop(sending);
            if let Some(callback) = refused {
                callback.completed(Err(io::Error::other(
                    "the raft log's flush thread is gone (it panicked)",
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    #[test]
    fn directories_are_created_with_their_missing_parents_and_again_without_error() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durable(&deep).unwrap();
        // A file in the way is an error, not a silent success.
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(create_dir_durable(&dir.path().join("f/g")).is_err());
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        let put = crate::PutRequest::new(
            rocketstore::Message::new("T", 0u32, format!("entry {index} of term {term}")),
            index as i64,
        );
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(crate::PutBatch { puts: vec![put] }),
        }
    }

    fn write(log: &LogStore, entries: &[Entry<TypeConfig>]) {
        let frames: Vec<_> = entries.iter().map(|e| (e.log_id, frame(e))).collect();
        let files = log.inner.lock().write(&frames).unwrap();
        files.iter().for_each(|f| f.sync_data().unwrap());
    }

    fn all(log: &LogStore) -> Vec<Entry<TypeConfig>> {
        log.entries(..).unwrap()
    }

    fn segments(dir: &Path) -> Vec<u64> {
        let mut v: Vec<u64> = fs::read_dir(segment_dir(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
            .collect();
        v.sort_unstable();
        v
    }

    const SMALL: u64 = 1024;

    thread_local! {
        /// The first indexes of loaded segments synced by opens on this thread.
        pub(super) static LOADED_SYNCS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Frames a killed process wrote and never synced are read back by the next open as
    /// if durable (the page cache still holds them): the open syncs them before openraft
    /// can count or apply them.
    #[test]
    fn the_open_syncs_what_it_read_of_the_last_segment() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = (1..=30).map(|i| entry(1, i)).collect();
        {
            let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
            write(&log, &entries[..20]);
            // The last appends reach the page cache only: the process dies before its
            // flush thread syncs them.
            let frames: Vec<_> = entries[20..].iter().map(|e| (e.log_id, frame(e))).collect();
            log.inner.lock().write(&frames).unwrap();
        }
        let last = *segments(dir.path()).last().unwrap();
        assert!(last > 1, "the entries span segments");
        LOADED_SYNCS.with(|s| s.borrow_mut().clear());
        let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
        assert_eq!(all(&log), entries);
        assert_eq!(LOADED_SYNCS.with(|s| s.borrow().clone()), [last]);
        // An empty log has nothing to sync.
        let empty = tempfile::tempdir().unwrap();
        LogStore::open_sized(empty.path(), SMALL).unwrap();
        assert_eq!(LOADED_SYNCS.with(|s| s.borrow().clone()), [last]);
    }

    #[test]
    fn entries_survive_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = (1..=60).map(|i| entry(1 + i / 20, i)).collect();
        {
            let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
            write(&log, &entries);
            assert_eq!(all(&log), entries);
        }
        assert!(segments(dir.path()).len() > 3, "small segments roll");
        let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
        assert_eq!(all(&log), entries);
        assert_eq!(log.entries(10..13).unwrap(), entries[9..12].to_vec());
        assert_eq!(log.last_log_id(), Some(entries[59].log_id));
    }

    #[test]
    fn a_torn_last_frame_is_cut_and_damage_before_it_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = (1..=30).map(|i| entry(1, i)).collect();
        {
            let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
            write(&log, &entries);
        }
        let segs = segments(dir.path());
        let last = segment_path(dir.path(), *segs.last().unwrap());
        let len = fs::metadata(&last).unwrap().len();
        // A frame cut short: the last entry was never synced, so never reported.
        let file = OpenOptions::new().write(true).open(&last).unwrap();
        file.set_len(len - 3).unwrap();
        let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
        assert_eq!(all(&log), entries[..29].to_vec());
        drop(log);
        // Appending goes on where the cut was.
        let replacement = entry(2, 30);
        {
            let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
            write(&log, std::slice::from_ref(&replacement));
        }
        let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
        assert_eq!(all(&log).last().unwrap(), &replacement);
        drop(log);
        // A flipped byte in a whole frame of the last segment is damage too: that frame
        // may have been acknowledged.
        let last_bytes = fs::read(&last).unwrap();
        let mut flipped = last_bytes.clone();
        flipped[10] ^= 0x40;
        fs::write(&last, &flipped).unwrap();
        let err = LogStore::open_sized(dir.path(), SMALL)
            .err()
            .expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        fs::write(&last, &last_bytes).unwrap();
        // A flipped byte in an earlier segment is damage, not a torn tail.
        let first = segment_path(dir.path(), segs[0]);
        let mut bytes = fs::read(&first).unwrap();
        bytes[20] ^= 0xFF;
        fs::write(&first, bytes).unwrap();
        let err = LogStore::open_sized(dir.path(), SMALL)
            .err()
            .expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn a_frame_with_a_page_never_written_is_a_torn_append() {
        let dir = tempfile::tempdir().unwrap();
        let big = |i: u64| {
            let put = crate::PutRequest::new(
                rocketstore::Message::new("T", 0u32, vec![b'z'; 10_000]),
                i as i64,
            );
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(crate::PutBatch { puts: vec![put] }),
            }
        };
        let written: Vec<_> = (1..=5).map(big).collect();
        {
            let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
            write(&log, &written);
        }
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        // The fourth frame starts past 3 × 10,000 bytes: zero the page after that.
        let page = (3 * 10_100 / 4096 + 2) * 4096;
        bytes[page..page + 4096].fill(0);
        fs::write(&path, &bytes).unwrap();
        let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
        let got = all(&log);
        assert!(got.len() == 3 || got.len() == 4, "{} entries", got.len());
        assert_eq!(&got[..], &written[..got.len()]);
    }

    /// A torn append whose last page was never written, where the frame holds only a few
    /// bytes of that page (under a sector): still a torn tail, cut, not damage that
    /// refuses the open.
    #[test]
    fn a_frame_with_only_a_few_bytes_in_a_page_never_written_is_a_torn_append() {
        let dir = tempfile::tempdir().unwrap();
        let put = |i: u64, len: usize| {
            let put = crate::PutRequest::new(
                rocketstore::Message::new("T", 0u32, vec![b'z'; len]),
                i as i64,
            );
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(crate::PutBatch { puts: vec![put] }),
            }
        };
        let frame_len = |bytes: &[u8], at: usize| {
            FRAME_HEADER + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
        };
        let path = segment_path(dir.path(), 1);
        // Two frames, then a third sized to end 100 bytes into a page.
        let first: Vec<_> = (1..=2).map(|i| put(i, 10_000)).collect();
        {
            let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
            write(&log, &first);
        }
        let bytes = fs::read(&path).unwrap();
        let overhead = frame_len(&bytes, 0) - 10_000;
        let start = bytes.len();
        let target_end = (start + overhead + 8_000).next_multiple_of(4096) + 100;
        let third = put(3, target_end - start - overhead);
        {
            let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
            write(&log, std::slice::from_ref(&third));
        }
        let mut bytes = fs::read(&path).unwrap();
        assert_eq!(start + frame_len(&bytes, start), target_end);
        // The last page never reached the disk.
        let page = target_end - 100;
        bytes[page..].fill(0);
        fs::write(&path, &bytes).unwrap();
        let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
        assert_eq!(all(&log), first);
    }

    #[test]
    fn truncate_and_purge_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = (1..=60).map(|i| entry(1, i)).collect();
        {
            let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
            write(&log, &entries);
            // Cut back into an earlier segment, then write a new term's entries there.
            log.inner.lock().truncate(25).unwrap();
            assert_eq!(all(&log), entries[..24].to_vec());
            write(&log, &(25..=40).map(|i| entry(3, i)).collect::<Vec<_>>());
            log.inner.lock().purge(entries[17].log_id).unwrap();
        }
        let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
        let got = all(&log);
        assert_eq!(got.first().unwrap().log_id.index, 19);
        assert_eq!(got.len(), 40 - 18);
        assert!(
            got.iter()
                .all(|e| (e.log_id.index <= 24) == (e.log_id.leader_id.term == 1))
        );
        assert_eq!(log.inner.lock().last_purged, Some(entries[17].log_id));
        let first_segment = segments(dir.path())[0];
        assert!(
            first_segment > 1 && first_segment <= 19,
            "purged segments are deleted"
        );
    }

    /// A purge point damaged into another valid one (a digit of its index) would skip
    /// committed entries: it refuses the open instead.
    #[test]
    fn a_purge_point_with_a_damaged_digit_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = (1..=30).map(|i| entry(1, i)).collect();
        {
            let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
            write(&log, &entries);
            log.inner.lock().purge(entries[11].log_id).unwrap();
        }
        let path = dir.path().join("purged");
        let text = fs::read_to_string(&path).unwrap();
        let json = text.lines().next().unwrap();
        assert!(json.contains(r#""index":12"#), "{text}");
        fs::write(&path, text.replacen(r#""index":12"#, r#""index":19"#, 1)).unwrap();
        let err = LogStore::open_sized(dir.path(), SMALL)
            .err()
            .expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("purged"), "{err}");
        // Put back, it opens with every entry past the purge.
        fs::write(&path, &text).unwrap();
        let log = LogStore::open_sized(dir.path(), SMALL).unwrap();
        assert_eq!(all(&log), entries[12..].to_vec());
    }

    #[test]
    fn a_purge_past_the_last_entry_leaves_a_log_that_goes_on_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<_> = (1..=22).map(|i| entry(1, i)).collect();
        let new: Vec<_> = (221..=230).map(|i| entry(2, i)).collect();
        {
            let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
            write(&log, &old);
            // A snapshot at 220 was installed: the log is purged past its end.
            log.inner.lock().purge(entry(2, 220).log_id).unwrap();
            assert!(all(&log).is_empty());
            assert_eq!(log.last_log_id(), Some(entry(2, 220).log_id));
            write(&log, &new);
        }
        let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
        assert_eq!(all(&log), new);
        drop(log);
        // A crash between recording the purge and deleting the segment left the old
        // entries in front of the new ones in one file: they are skipped, not a gap.
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
            write(&log, &old);
            write_state(&dir.path().join("purged"), &entry(2, 220).log_id).unwrap();
            log.inner.lock().last_purged = Some(entry(2, 220).log_id);
            log.inner.lock().entries.clear();
            write(&log, &new);
        }
        let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
        assert_eq!(all(&log), new);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A last segment cut anywhere, or with any byte flipped, opens to a prefix of
        /// what was written (never another entry, never a panic), or is refused.
        #[test]
        fn a_damaged_last_segment_opens_to_a_prefix(cut in 0usize..4000, flip in proptest::option::of((0usize..4000, 1u8..=255))) {
            let dir = tempfile::tempdir().unwrap();
            let written: Vec<_> = (1..=20).map(|i| entry(1, i)).collect();
            {
                let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
                write(&log, &written);
            }
            let path = segment_path(dir.path(), 1);
            let mut bytes = fs::read(&path).unwrap();
            bytes.truncate(cut.min(bytes.len()));
            if let Some((at, x)) = flip && at < bytes.len() {
                bytes[at] ^= x;
            }
            fs::write(&path, &bytes).unwrap();
            if let Ok(log) = LogStore::open_sized(dir.path(), 1 << 20) {
                let got = all(&log);
                proptest::prop_assert!(got.len() <= written.len());
                proptest::prop_assert_eq!(&got[..], &written[..got.len()]);
            }
        }
    }

    #[test]
    fn entries_that_do_not_follow_each_other_refuse_the_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogStore::open_sized(dir.path(), 1 << 20).unwrap();
            write(&log, &[entry(1, 1), entry(1, 2), entry(1, 4)]);
        }
        assert!(LogStore::open_sized(dir.path(), 1 << 20).is_err());
    }

    /// Tells a channel it was called, or panics (a bug in the completion, or anywhere in
    /// the flush thread's round).
    enum Probe {
        Tell(std::sync::mpsc::Sender<bool>),
        Panic,
    }

    impl flusher::Completion for Probe {
        fn completed(self, result: io::Result<()>) {
            match self {
                Probe::Tell(tx) => tx.send(result.is_ok()).unwrap(),
                Probe::Panic => panic!("injected: the flush thread panics"),
            }
        }
    }

    /// A flush thread that panics ends every wait for its appends with an error (an
    /// apply waiting on them fails instead of hanging for good), appends synced before
    /// the panic included in the count.
    #[tokio::test]
    async fn a_panic_of_the_flush_thread_fails_the_waits_instead_of_hanging_them() {
        let flush = flusher::Flush::<Probe>::start();
        let progress = flush.progress();
        let (tx, rx) = std::sync::mpsc::channel();
        flush.submit(Vec::new(), Probe::Tell(tx));
        assert!(rx.recv().unwrap());
        progress.all_synced().await.unwrap();
        assert_eq!(progress.synced().borrow().count, 1);

        flush.submit(Vec::new(), Probe::Panic);
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(30), progress.all_synced()).await;
        let err = waited.expect("the wait ends").unwrap_err();
        assert!(err.to_string().contains("not durable"), "{err}");
        assert!(progress.synced().borrow().failed);
        // An append submitted after the panic is told it failed.
        let (tx, rx) = std::sync::mpsc::channel();
        flush.submit(Vec::new(), Probe::Tell(tx));
        assert!(!rx.recv().unwrap());
    }
}
