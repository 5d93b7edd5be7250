//! The key index: `{root}/index/`, RocketMQ's index files, through which
//! [`MessageStore::query_message`](crate::MessageStore::query_message) finds messages by
//! key.
//!
//! - `file`: one index file (header, hash slots, chained entries).
//! - `writer`: the dispatcher that adds an entry per key of each record, in log order, and
//!   records its durable progress.
//! - this module: the set of files, opened (and cut back after a crash), queried, and
//!   deleted with the commit log or past the configured cap.
//!
//! Keys are `topic#key`, for each space-separated word of the `KEYS` property and for the
//! `UNIQ_KEY` property. Several keys can share a hash: every candidate is read from the
//! log and kept only when its topic and one of its keys match, so a query never returns
//! another topic's or another key's message.

pub(crate) mod file;
pub(crate) mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::commit_log::CommitLog;
use crate::config::IndexShape;
use crate::dispatch::progress::{Progress, ProgressFile};
use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::ops;
use crate::message::{PROPERTY_KEYS, PROPERTY_UNIQ_KEY, StoredMessage};
use crate::queue::deleted::DeletedTopics;
use file::{IndexFile, key_hash};

/// Length of an index file's name: its creation time, `yyyyMMddHHmmssSSS`.
const NAME_LEN: usize = 17;
/// Every name is below this (17 digits).
const NAME_LIMIT: u64 = 10u64.pow(NAME_LEN as u32);

/// The path of the index file named `name` in `dir`.
fn path_of(dir: &Path, name: u64) -> PathBuf {
    dir.join(format!("{name:0NAME_LEN$}"))
}

/// What [`MessageStore::query_message`](crate::MessageStore::query_message) found.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct QueryResult {
    /// The messages with the key, newest first.
    pub messages: Vec<StoredMessage>,
    /// Store time of the last message indexed (RocketMQ's `indexLastUpdateTimestamp`).
    pub index_last_update_timestamp: i64,
    /// Commit-log offset of the last message indexed (`indexLastUpdatePhyoffset`).
    pub index_last_update_offset: u64,
    /// Fewer messages than asked for were found, and more may exist: the query read as
    /// many candidates of other keys (hash collisions) as
    /// [`StoreConfig::index_query_max_mismatches`](crate::StoreConfig::index_query_max_mismatches)
    /// allows and stopped there, or a candidate could not be read (an error other than
    /// damage, logged).
    pub incomplete: bool,
}

pub(crate) struct KeyIndex {
    dir: PathBuf,
    shape: IndexShape,
    /// Oldest first; the last one is written.
    files: RwLock<Vec<Arc<IndexFile>>>,
    /// The highest file name ever seen or recorded: a new name is higher (the clock may
    /// go back).
    floor: AtomicU64,
    /// Fault seam for the files' creation, allocations, syncs and removals.
    hook: Option<Arc<dyn IoHook>>,
}

/// Set in the second progress word when the writer closed cleanly: every entry counted
/// and every slot was synced, and nothing was written after.
pub(crate) const CLOSED_CLEANLY: u64 = 1 << 63;

impl KeyIndex {
    /// Opens `dir` for a writer that resumes at commit-log offset `from` (the store time
    /// before it: `timestamp`), given the progress the writer last recorded in
    /// `progress_file` (`progress`):
    /// - files created after that record hold nothing durable, and go;
    /// - the file written then keeps exactly the entries the record counts (see
    ///   [`IndexFile::cut`]), unless the writer closed cleanly;
    /// - entries of messages at or past `from` go (the log was cut below the progress);
    /// - without any progress, the files cannot be trusted: they go, and the writer
    ///   indexes the log again from its start.
    ///
    /// What will be kept is recorded as the new progress before any file changes, so a
    /// crash during the open leaves a record the next open can apply again.
    pub(crate) fn open(
        dir: PathBuf,
        shape: IndexShape,
        progress_file: &mut ProgressFile,
        progress: Option<Progress>,
        (from, timestamp): (u64, i64),
        hook: Option<Arc<dyn IoHook>>,
    ) -> Result<KeyIndex> {
        ops::create_dir_durable(&dir, hook.as_ref())?;
        // A recorded active file whose name has more than 17 digits was never written (the
        // next name would be one the next open refuses): the progress is damaged, and the
        // files are not trusted, as without any.
        let progress = progress.filter(|p| p.aux[0] < NAME_LIMIT);
        let names = list(&dir)?;
        let floor = names.iter().map(|(n, _)| *n).max().unwrap_or(0);
        let (active, kept, clean) = progress.map_or((0, 0, false), |p| {
            let kept = u32::try_from(p.aux[1] & !CLOSED_CLEANLY).unwrap_or(u32::MAX);
            (p.aux[0], kept, p.aux[1] & CLOSED_CLEANLY != 0)
        });
        // The plan: the files kept, each with the entries it keeps.
        let mut doomed = Vec::new();
        let mut kept_files: Vec<(u64, IndexFile, u32)> = Vec::new();
        // Older files whose header disagrees with their entries: damaged.
        let mut damaged = HashSet::new();
        for (name, path) in names {
            if progress.is_none() || name > active {
                log::warn!(
                    "{}: index file not covered by the index's durable progress; removing it",
                    path.display()
                );
                doomed.push(path);
                continue;
            }
            let f = IndexFile::open(&path, (shape.slots, shape.entries), hook.clone())?;
            // The file written at the last record keeps what it counts. Older ones were
            // full, and synced before any progress naming a later file was recorded: they
            // keep every entry they hold, whatever their header says (a damaged header
            // must not cut them).
            let count = if name == active {
                kept.min(shape.entries - 1)
            } else {
                let written = f.written();
                if f.header().count != written + 1 {
                    log::warn!(
                        "{}: the header counts {} entries, the file holds {written}; \
                         keeping them all and rebuilding the header and hash slots",
                        path.display(),
                        i64::from(f.header().count) - 1,
                    );
                    damaged.insert(name);
                }
                written
            };
            kept_files.push((name, f, count));
        }
        // Entries of messages the log no longer holds, at `from` and past: entries are in
        // log order, and the kept ones are intact.
        let mut i = kept_files.len();
        while i > 0 {
            i -= 1;
            let (_, f, count) = &mut kept_files[i];
            if *count == 0 {
                continue;
            }
            if f.entry(1).offset >= from {
                let (_, f, _) = kept_files.remove(i);
                doomed.push(f.path().to_owned());
                continue;
            }
            if f.entry(*count).offset >= from {
                let (mut lo, mut hi) = (1, *count);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if f.entry(mid).offset < from {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                *count = lo - 1;
            }
            break;
        }
        let (new_active, new_count) = kept_files.last().map_or((0, 0), |(n, _, c)| (*n, *c));
        let unchanged = clean
            && doomed.is_empty()
            && progress.is_some_and(|p| p.offset == from && p.aux[0] == new_active)
            && kept == new_count
            && kept_files
                .last()
                .is_none_or(|(_, f, c)| f.header().count == c + 1);
        // Recorded first; from here on the next open applies this same plan. The clean
        // mark goes too: the writer is about to change the files.
        progress_file.store(Progress {
            offset: from,
            timestamp,
            aux: [new_active, u64::from(new_count)],
        })?;
        for path in &doomed {
            ops::remove_file_with(path, hook.as_ref())?;
        }
        if !doomed.is_empty() {
            ops::sync_dir_with(&dir, hook.as_ref())?;
        }
        let mut files = Vec::new();
        for (name, f, count) in kept_files {
            if damaged.contains(&name) {
                f.rebuild_slots(count)?;
                f.cut(count)?;
            } else if name == new_active && !unchanged {
                f.cut(count)?;
            } else if f.header().count != count + 1 {
                // An older file the log's cut reaches into.
                f.cut(count)?;
            }
            files.push(Arc::new(f));
        }
        Ok(KeyIndex {
            dir,
            shape,
            files: RwLock::new(files),
            floor: AtomicU64::new(floor.max(active)),
            hook,
        })
    }

    /// The index's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file being written, if any.
    pub(crate) fn active(&self) -> Option<Arc<IndexFile>> {
        self.files.read().last().cloned()
    }

    /// Starts a new file (the last one is full, or there is none), named by the time now
    /// and later than every other name. Past the configured cap, the oldest file goes.
    pub(crate) fn roll(&self) -> Result<Arc<IndexFile>> {
        let now: u64 = chrono::Local::now()
            .format("%Y%m%d%H%M%S%3f")
            .to_string()
            .parse()
            .expect("17 digits");
        let name = now.max(self.floor.load(Ordering::Relaxed) + 1);
        let path = path_of(&self.dir, name);
        let f = Arc::new(IndexFile::create(
            &path,
            (self.shape.slots, self.shape.entries),
            self.hook.clone(),
        )?);
        if let Err(e) = ops::sync_dir_with(&self.dir, self.hook.as_ref()) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.floor.store(name, Ordering::Relaxed);
        let mut files = self.files.write();
        files.push(Arc::clone(&f));
        while self.shape.max_files > 0 && files.len() > self.shape.max_files {
            let old = files.remove(0);
            log::warn!(
                "the key index holds {} files, over its cap of {}: removing the oldest, {}; \
                 keys of messages before offset {} can no longer be queried",
                self.shape.max_files + 1,
                self.shape.max_files,
                old.path().display(),
                old.header().end_offset
            );
            if let Err(e) = self.remove(old.path()) {
                log::error!("removing {}: {e}", old.path().display());
            }
        }
        Ok(f)
    }

    /// Removes every file but the active one whose messages all lie below `log_start`
    /// (deleted by retention). Returns how many went.
    pub(crate) fn delete_below(&self, log_start: u64) -> usize {
        let mut files = self.files.write();
        let mut gone = 0;
        while files.len() > 1 {
            let h = files[0].header();
            if h.count > 1 && h.end_offset >= log_start {
                break;
            }
            let old = files.remove(0);
            match self.remove(old.path()) {
                Ok(()) => gone += 1,
                Err(e) => log::error!("removing {}: {e}", old.path().display()),
            }
        }
        gone
    }

    /// Removes one of the index's files, through the fault seam.
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        if let Some(h) = &self.hook {
            h.before_remove(path)?;
        }
        std::fs::remove_file(path)
    }

    /// Files, newest first.
    fn newest_first(&self) -> Vec<Arc<IndexFile>> {
        self.files.read().iter().rev().cloned().collect()
    }

    /// Up to `max` messages of `topic` with `key` (a word of `KEYS`, or the `UNIQ_KEY`)
    /// stored within `begin_ms..=end_ms`, newest first. Each candidate is read back from
    /// the log and checked; at most `mismatches` of other keys or topics are (0: no cap).
    pub(crate) fn query(
        &self,
        log: &CommitLog,
        deleted: &DeletedTopics,
        (topic, key): (&str, &str),
        (max, mismatches): (usize, usize),
        (begin_ms, end_ms): (i64, i64),
    ) -> Result<QueryResult> {
        let mismatches = if mismatches == 0 {
            usize::MAX
        } else {
            mismatches
        };
        let mut missed = 0usize;
        let full = format!("{topic}#{key}");
        let hash = key_hash(&full);
        let limit = log.readable_offset();
        let mut out = QueryResult::default();
        if let Some(f) = self.active() {
            let h = f.header();
            out.index_last_update_timestamp = h.end_timestamp;
            out.index_last_update_offset = h.end_offset;
        }
        let mut seen = HashSet::new();
        let mut failure = None;
        // The walk stopped for good: the cap was reached, or the topic's deletion.
        let mut stopped = false;
        for f in self.newest_first() {
            if out.messages.len() >= max || stopped {
                break;
            }
            let h = f.header();
            let outside = h.end_timestamp < begin_ms || h.begin_timestamp > end_ms;
            if h.count <= 1 || (h.times_usable() && outside) {
                continue;
            }
            f.walk(hash, begin_ms, end_ms, |offset| {
                if offset < log.min_offset() || seen.contains(&offset) {
                    return true;
                }
                if deleted.hides(topic, offset) {
                    // Candidates come newest first: every one from here on lies below
                    // the topic's deletion too, and none can be an answer.
                    stopped = true;
                    return false;
                }
                if missed == mismatches {
                    out.incomplete = true;
                    stopped = true;
                    return false;
                }
                seen.insert(offset);
                match log.read(offset, limit) {
                    Ok(Some(m)) if is_of(&m, topic, key) => {
                        // The key's own message: an answer if in the window. One outside
                        // it (entry times are whole seconds) is not a collision, and does
                        // not count towards the cap.
                        if (begin_ms..=end_ms).contains(&m.store_timestamp) {
                            out.messages.push(m);
                        }
                    }
                    Ok(_) => missed += 1,
                    // A record deleted or damaged since (its body's CRC included): not an
                    // answer, and not a reason to fail the query. Damage is logged; any
                    // other failure may hide an answer.
                    Err(e) => {
                        if matches!(e, Error::Corrupted { .. }) {
                            log::warn!("query {full}: a candidate is damaged: {e}");
                        } else {
                            out.incomplete = true;
                        }
                        missed += 1;
                        failure = Some(e);
                    }
                }
                out.messages.len() < max
            });
        }
        if let Some(e) = failure.filter(|_| out.messages.is_empty()) {
            log::warn!("query {full}: a candidate could not be read: {e}");
        }
        Ok(out)
    }
}

/// Whether `m` is a visible message of `topic` with `key`.
fn is_of(m: &StoredMessage, topic: &str, key: &str) -> bool {
    *m.topic == *topic
        && !crate::message::is_transaction_hidden(m.sys_flag)
        && (m.property(PROPERTY_UNIQ_KEY) == Some(key)
            || m.property(PROPERTY_KEYS)
                .is_some_and(|keys| keys.split(crate::message::KEY_SEPARATOR).any(|k| k == key)))
}

/// The number an index file's name stands for.
fn name_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    (name.len() == NAME_LEN && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// Whether `progress` names, as the file written last, one that is not in `dir`, and no
/// newer file is there: the index's files were removed by hand, and resuming from the
/// progress would leave every earlier key unfindable for good. Retention and the file
/// cap remove only older files, never the newest: after them a newer file remains (the
/// progress may name a removed file while its next record is not yet made), and the
/// open resumes as usual.
pub(crate) fn progress_file_is_gone(dir: &Path, progress: &Progress) -> bool {
    let active = progress.aux[0];
    if active == 0 || active >= NAME_LIMIT || path_of(dir, active).exists() {
        return false;
    }
    !list(dir).is_ok_and(|names| names.iter().any(|(name, _)| *name > active))
}

/// The index files in `dir`, oldest first. Any other file is refused: the directory is
/// the store's.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let read = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in read {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let path = entry.path();
        match name_of(&path) {
            Some(n) => out.push((n, path)),
            None => {
                return Err(Error::BadStoreFile {
                    path,
                    reason: "not an index file name (17 digits, its creation time)".into(),
                });
            }
        }
    }
    out.sort();
    Ok(out)
}
