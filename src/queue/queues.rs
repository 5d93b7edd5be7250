//! Every consume queue of the store, by topic and queue id, loaded at open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::RwLock;

use crate::commit_log::QueueOffsets;
use crate::commit_log::record::RecordView;
use crate::commit_log::record::validate_topic;
use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::ops;
use crate::fs::sparse_file;
use crate::queue::arrival::Arrivals;
use crate::queue::commit;
use crate::queue::consume_queue::{
    ConsumeQueue, Indexed, Load, MAX_QUEUE_OFFSET, QueueFiles, TableEnd,
};
use crate::queue::entry::{CQ_ENTRY_LEN, CqEntry, TagCode};

type Table = HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>;

/// With this many queues, loading them takes `LOAD_THREADS` threads (a queue costs tens
/// of microseconds of system calls; a thread, tens in all)...
const PARALLEL_LOAD: usize = 128;
/// ...no more: from a cold cache a queue's load is about two random reads (its
/// directory's block, its file's first page, and a share of inode-table reads), each a
/// blocking system call, and more threads keep more of them in flight. This disk answered
/// 14k random 4 KiB reads a second at depth 1, 64k at 8 and 105k at 32; unclean opens of
/// one store of 100,000 queues, cold, took 5.0–5.5 s with 8 threads, 4.1–4.6 s with 16,
/// 3.9–4.2 s with 32 and 4.0 s with 64, the heap 50.4 → 52.3 MiB. A loading thread
/// allocates nothing that outlives it (paths and result places are made by the caller):
/// when each returned its queues in a vector of its own, a crash reopen on four threads
/// left the heap at 79–81 MiB instead of 55, the threads' allocator arenas keeping what
/// had been freed around those vectors.
const LOAD_THREADS: usize = 32;

/// Most consume-queue files kept open at once.
const OPEN_FILES: usize = 256;

/// A flush syncs each dirty queue on its own up to this many queues; past it, one sync of
/// the whole filesystem costs less than a sync per file (measured: 20,000 fdatasyncs of a
/// page took 8.7 s here, one syncfs after the same writes 0.7 s).
const SYNC_EACH_UP_TO: usize = 32;

/// A commit that creates at least this many queues' files creates them from two threads
/// ([`ConsumeQueues::commit`]).
const PARALLEL_CREATE: usize = 64;

pub(crate) struct ConsumeQueues {
    root: PathBuf,
    /// `consumequeue/`, open since the store opened, for syncs of the whole filesystem:
    /// a write-back error since then is reported through it.
    root_dir: std::fs::File,
    io: Arc<QueueFiles>,
    table: RwLock<Table>,
    /// Queues with entries pending since the last commit.
    batch: parking_lot::Mutex<Vec<Arc<ConsumeQueue>>>,
    /// Consumers waiting for entries.
    arrivals: Arrivals,
    /// Tag codes other than the tag hash (the store config's).
    pub(crate) tag_code: Option<Arc<dyn TagCode>>,
}

impl ConsumeQueues {
    /// Loads every queue under `{root}/consumequeue/`, as `how` says. A topic directory
    /// with an invalid name or a queue directory that is not a number is refused with a
    /// clear error. A queue whose files cannot be loaded (a gap, a stray or short file) is
    /// derived data: it is loaded empty and marked damaged, so recovery rebuilds it; when
    /// rebuilding, its directory is cleared.
    ///
    /// After a clean exit (`Load::Keep`), a queue the queue table (`rows`) lists is not read
    /// now: it opens as the table says, and its files are read and checked against its row
    /// at first use.
    pub(crate) fn load(
        root: PathBuf,
        entries_per_file: u32,
        hook: Option<Arc<dyn IoHook>>,
        how: Load,
        log_start: u64,
        rows: &[TableRow],
    ) -> Result<Self> {
        let file_size = u64::from(entries_per_file) * CQ_ENTRY_LEN as u64;
        ops::create_dir_durable(&root, hook.as_ref())?;
        let root_dir = std::fs::File::open(&root).map_err(|e| Error::io("open", &root, e))?;
        let io = Arc::new(QueueFiles::new(file_size, hook.clone(), OPEN_FILES));
        io.log_start.store(log_start, Ordering::SeqCst);
        let listed: HashMap<(&str, u32), TableEnd> = if how == Load::Keep {
            rows.iter()
                .map(|r| {
                    let end = TableEnd {
                        next: r.next,
                        last_physical: r.last_physical,
                    };
                    ((r.topic.as_str(), r.queue_id), end)
                })
                .collect()
        } else {
            HashMap::new()
        };
        let mut table = Table::new();
        let mut found = Vec::new();
        for (topic_dir, _) in list_dirs(&root)? {
            let topic = file_name(&topic_dir);
            validate_topic(&topic).map_err(|e| Error::BadStoreFile {
                path: topic_dir.clone(),
                reason: e.to_string(),
            })?;
            table.entry(topic.clone()).or_default();
            for (queue_dir, inode) in list_dirs(&topic_dir)? {
                let queue_id: u32 =
                    file_name(&queue_dir)
                        .parse()
                        .map_err(|_| Error::BadStoreFile {
                            path: queue_dir.clone(),
                            reason: "a queue directory must be named by its queue id".into(),
                        })?;
                if let Some(end) = listed.get(&(topic.as_str(), queue_id)) {
                    let q = ConsumeQueue::unloaded(queue_dir, Arc::clone(&io), *end);
                    let queues = table.entry(topic.clone()).or_default();
                    queues.insert(queue_id, Arc::new(q));
                } else {
                    found.push((topic.clone(), queue_id, queue_dir, inode));
                }
            }
        }
        // In inode order, which is about the order the queues were created in: their
        // inodes, directory blocks and first entries were allocated in that order too, so
        // a load from a cold cache reads the disk in order rather than at random.
        // Stable: equal inodes (a filesystem without them) keep the listing's order.
        found.sort_by_key(|(_, _, _, inode)| *inode);
        // Each load is given its directory's path, and its result's place, made here: a
        // loading thread allocates nothing that outlives it, or its allocator arena stays
        // resident, mixed with what the loads freed.
        let mut slots: Vec<Option<Result<ConsumeQueue>>> = Vec::with_capacity(found.len());
        slots.resize_with(found.len(), || None);
        let load_one = |dir: PathBuf| ConsumeQueue::load(dir, Arc::clone(&io), how, log_start);
        let load_into = |dirs: Vec<PathBuf>, out: &mut [Option<Result<ConsumeQueue>>]| {
            debug_assert_eq!(dirs.len(), out.len());
            for (dir, slot) in dirs.into_iter().zip(out) {
                *slot = Some(load_one(dir));
            }
        };
        let dirs_of = |part: &[(String, u32, PathBuf, u64)]| -> Vec<PathBuf> {
            part.iter().map(|(_, _, dir, _)| dir.clone()).collect()
        };
        if found.len() >= PARALLEL_LOAD {
            let per = found.len().div_ceil(LOAD_THREADS);
            // Parts whose thread cannot be had (a process limit) are loaded here after.
            let mut inline = Vec::new();
            std::thread::scope(|scope| {
                let threads: Vec<_> = found
                    .chunks(per)
                    .zip(slots.chunks_mut(per))
                    .enumerate()
                    .filter_map(|(i, (part, out))| {
                        let dirs = dirs_of(part);
                        let spawned = std::thread::Builder::new()
                            .name("rocketstore-queue-load".into())
                            .spawn_scoped(scope, || load_into(dirs, out));
                        match spawned {
                            Ok(thread) => Some(thread),
                            Err(_) => {
                                inline.push(i);
                                None
                            }
                        }
                    })
                    .collect();
                for thread in threads {
                    if let Err(panic) = thread.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
            });
            for i in inline {
                let range = i * per..((i + 1) * per).min(found.len());
                load_into(dirs_of(&found[range.clone()]), &mut slots[range]);
            }
            // A load holds every file of its queue open, so many threads at once can run
            // the process out of descriptors where one would not: those queues are loaded
            // again here, one at a time. A load opens all it uses before it changes
            // anything (see `ConsumeQueue::load`), so the second finds the same queue.
            for (slot, (_, _, dir, _)) in slots.iter_mut().zip(&found) {
                if matches!(slot, Some(Err(e)) if e.is_out_of_descriptors()) {
                    *slot = Some(load_one(dir.clone()));
                }
            }
        } else {
            load_into(dirs_of(&found), &mut slots);
        }
        let loaded = slots
            .into_iter()
            .map(|slot| slot.expect("every queue is loaded"));
        for ((topic, queue_id, queue_dir, _), loaded) in found.into_iter().zip(loaded) {
            let topic_dir = root.join(&topic);
            let queues = table.entry(topic).or_default();
            let q = match loaded {
                Ok(q) => q,
                Err(Error::BadStoreFile { path, reason }) => {
                    let why = format!("{}: {reason}", path.display());
                    if how == Load::Rebuild {
                        log::warn!("clearing consume queue {}: {why}", queue_dir.display());
                        ops::remove_dir_all(&queue_dir, hook.as_ref())?;
                        ops::sync_dir_with(&topic_dir, hook.as_ref())?;
                        ConsumeQueue::new(queue_dir, Arc::clone(&io))
                    } else {
                        ConsumeQueue::damaged(queue_dir, Arc::clone(&io), why)
                    }
                }
                Err(e) => return Err(e),
            };
            queues.insert(queue_id, Arc::new(q));
        }
        Ok(ConsumeQueues {
            root,
            root_dir,
            io,
            table: RwLock::new(table),
            batch: parking_lot::Mutex::new(Vec::new()),
            arrivals: Arrivals::default(),
            tag_code: None,
        })
    }

    /// The commit log's first offset, before retention raises the queues' minimums: a
    /// queue loaded later starts past it too.
    pub(crate) fn set_log_start(&self, offset: u64) {
        self.io.log_start.fetch_max(offset, Ordering::SeqCst);
    }

    /// Whether a queue loaded after the open did not match the queue table: the store must
    /// then be left for the next open to check (not marked clean).
    pub(crate) fn suspect(&self) -> bool {
        self.io.suspect.load(Ordering::Acquire)
    }

    /// No queue is read from its files from now on (the store is shutting down and
    /// another open may soon own them); waits for the reads running.
    pub(crate) fn close(&self) {
        self.io.close();
    }

    /// A queue was found damaged at run time: see [`ConsumeQueues::suspect`].
    pub(crate) fn mark_suspect(&self) {
        self.io.mark_suspect();
    }

    pub(crate) fn get(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.table.read().get(topic)?.get(&queue_id).cloned()
    }

    /// One past the last visible entry of `topic`/`queue_id` (0 for an unknown queue).
    pub(crate) fn max_offset(&self, topic: &str, queue_id: u32) -> u64 {
        self.get(topic, queue_id).map_or(0, |q| q.max_offset())
    }

    /// The entry that indexes `view`.
    pub(crate) fn entry_of(&self, view: &RecordView<'_>) -> CqEntry {
        CqEntry::with_code(view, self.tag_code.as_deref())
    }

    /// Who waits for entries (long polling).
    pub(crate) fn arrivals(&self) -> &Arrivals {
        &self.arrivals
    }

    /// After a scan of the log: positions every queue of `rows` that still holds nothing
    /// but whose records all lay below `log_start` (deleted by retention) at the next
    /// offset it had, so that its next message continues its offsets instead of starting
    /// again at 0. A queue that got records from the scan is left alone, however old its
    /// row: only the log says where a queue goes on.
    pub(crate) fn position_expired(&self, rows: &[TableRow], log_start: u64) -> Result<()> {
        for row in rows {
            if row.next > 0 && row.last_physical < log_start {
                self.get_or_create(&row.topic, row.queue_id)
                    .position(row.next)?;
            }
        }
        Ok(())
    }

    pub(crate) fn get_or_create(&self, topic: &str, queue_id: u32) -> Arc<ConsumeQueue> {
        if let Some(q) = self.get(topic, queue_id) {
            return q;
        }
        let mut table = self.table.write();
        let queues = table.entry(topic.to_owned()).or_default();
        let mut created = false;
        let q = Arc::clone(queues.entry(queue_id).or_insert_with(|| {
            created = true;
            let dir = self.root.join(topic).join(queue_id.to_string());
            Arc::new(ConsumeQueue::new(dir, Arc::clone(&self.io)))
        }));
        drop(table);
        if created {
            // After publishing the queue (see `queue::arrival`).
            self.arrivals.created(topic, queue_id, &q);
        }
        q
    }

    /// Indexes `entry` in its queue's pending batch (see [`ConsumeQueue::put`]);
    /// [`ConsumeQueues::commit`] writes and publishes the batch.
    pub(crate) fn index(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        entry: CqEntry,
    ) -> Result<Indexed> {
        let q = self.get_or_create(topic, queue_id);
        let indexed = q.put(queue_offset, entry)?;
        // Read first: a queue already in the batch (the usual case) costs no atomic write.
        if indexed == Indexed::Appended
            && !q.in_batch.load(Ordering::Acquire)
            && !q.in_batch.swap(true, Ordering::AcqRel)
        {
            self.batch.lock().push(q);
        }
        Ok(indexed)
    }

    /// Writes every pending entry and makes it visible. A queue that fails (a full disk)
    /// stays in the batch, with the ones after it, for the next commit.
    pub(crate) fn commit(&self) -> Result<()> {
        let batch = std::mem::take(&mut *self.batch.lock());
        // Rounds that create few queues and reopen few files (the steady state) stay on
        // this thread. A round that creates many queues, or that holds many more queues
        // than files are kept open (so opens most of their files again: 25 µs each; the
        // recovery after a crash that left 70,000 queues' entries to index again spent
        // 1.9 s in them on one thread), runs on two (see `queue::commit`).
        let creating = batch.iter().filter(|q| q.has_no_file()).count();
        let left = match batch.len() > 2 * OPEN_FILES || creating >= PARALLEL_CREATE {
            true => commit::commit_split(&batch),
            false => commit::commit_each(&batch),
        };
        // What failed stays in the batch for the next commit.
        if !left.queues.is_empty() {
            self.batch.lock().extend(left.queues);
        }
        // The queues that did publish (a queue may publish part of its entries early):
        // their waiters are told either way.
        self.arrivals.committed(&batch);
        left.error.map_or(Ok(()), Err)
    }

    /// Removes every queue of `topic`: out of the table, then its directory, durably.
    /// Waiters on its queues are woken (they find the topic empty, or its next queues).
    /// Nothing may be pending for it (the caller committed).
    pub(crate) fn drop_topic(&self, topic: &str) -> Result<()> {
        let removed = self.table.write().remove(topic);
        for q in removed.iter().flat_map(|qs| qs.values()) {
            q.dropped.store(true, Ordering::Release);
            q.forget_cached();
        }
        if let Some(qs) = &removed {
            self.arrivals.dropped(topic, qs.iter());
        }
        remove_topic_dir(&self.root, topic, self.io.hook.as_ref())
    }

    /// Every queue, for flushing and for rebuilding the next queue offsets.
    pub(crate) fn all(&self) -> Vec<(String, u32, Arc<ConsumeQueue>)> {
        let table = self.table.read();
        table
            .iter()
            .flat_map(|(t, qs)| {
                qs.iter()
                    .map(move |(id, q)| (t.clone(), *id, Arc::clone(q)))
            })
            .collect()
    }

    /// Next queue offset of every queue, counting entries still pending.
    pub(crate) fn next_offsets(&self) -> QueueOffsets {
        let table = self.table.read();
        table
            .iter()
            .map(|(t, qs)| {
                (
                    t.clone(),
                    qs.iter().map(|(id, q)| (*id, q.next_offset())).collect(),
                )
            })
            .collect()
    }

    /// Makes every committed entry and every created or removed file and directory
    /// durable: queue by queue when few changed, else with one sync of the filesystem.
    /// Needs no space (committing does: see [`ConsumeQueues::commit`]).
    pub(crate) fn flush(&self) -> Result<()> {
        let dirty: Vec<_> = {
            let table = self.table.read();
            table
                .values()
                .flat_map(|qs| qs.values())
                .filter_map(|q| q.unsynced().map(|point| (Arc::clone(q), point)))
                .collect()
        };
        if dirty.len() <= SYNC_EACH_UP_TO {
            for (q, point) in dirty {
                q.sync(point)?;
            }
        } else {
            sparse_file::sync_filesystem(&self.root_dir, &self.root, self.io.hook.as_ref())?;
            for (q, point) in dirty {
                q.synced(point);
            }
        }
        Ok(())
    }

    /// The first queue whose entries could not be trusted at load, and why.
    pub(crate) fn damaged(&self) -> Option<String> {
        self.all().into_iter().find_map(|(t, id, q)| {
            q.damage()
                .map(|why| format!("consume queue {t}/{id}: {why}"))
        })
    }

    /// Writes the queue table: every queue and its next offset, so that the next clean
    /// open can tell a queue that went missing or short from one that never existed.
    /// Written whole under a temporary name, synced and renamed into place.
    ///
    /// The header records `log_end`, the commit log's end when it was written: a table is
    /// known exact for a store whose log still ends there (see [`QueueTable::exact_at`]).
    /// The last line is a CRC of everything before it.
    pub(crate) fn write_table(
        &self,
        path: &Path,
        log_end: u64,
        leave_out: &[String],
    ) -> Result<()> {
        let mut rows: Vec<_> = self
            .all()
            .into_iter()
            .filter(|(t, _, _)| !leave_out.contains(t))
            .map(|(t, id, q)| {
                let (max, last) = q.table_end();
                (t, id, max, last)
            })
            .collect();
        rows.sort();
        let mut text = format!("{TABLE_HEADER} {} {log_end}\n", rows.len());
        for (t, id, max, last) in &rows {
            text.push_str(&format!("{t} {id} {max} {last}\n"));
        }
        let crc = crc32fast::hash(text.as_bytes());
        text.push_str(&format!("crc {crc}\n"));
        ops::replace_file(path, text.as_bytes(), None)
    }

    /// Reads the queue table; `None` when there is none (a store of an earlier version).
    /// It is written whole, so a table that does not parse is damage; it is derived data,
    /// so that is logged and the table ignored rather than refusing the open.
    pub(crate) fn read_table(path: &Path) -> Result<Option<QueueTable>> {
        match Self::parse_table(path) {
            Err(Error::BadStoreFile { reason, .. }) => {
                log::warn!("ignoring {}: {reason}", path.display());
                Ok(None)
            }
            other => other,
        }
    }

    fn parse_table(path: &Path) -> Result<Option<QueueTable>> {
        let Some(text) = crate::fs::ops::read_text(path)? else {
            return Ok(None);
        };
        let bad = |reason: &str| Error::BadStoreFile {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        // Version 3 ends with a CRC line and names the log's end; version 2 has neither.
        let (body, log_end) = if text.starts_with(TABLE_HEADER) {
            let crc_at = text.trim_end_matches('\n').rfind('\n').map_or(0, |i| i + 1);
            let crc = text[crc_at..]
                .trim_end()
                .strip_prefix("crc ")
                .and_then(|c| c.parse::<u32>().ok())
                .ok_or_else(|| bad("no CRC line"))?;
            if crc32fast::hash(&text.as_bytes()[..crc_at]) != crc {
                return Err(bad("the queue table's CRC does not match"));
            }
            let end = text
                .lines()
                .next()
                .and_then(|h| h.split(' ').nth(2))
                .and_then(|e| e.parse::<u64>().ok())
                .ok_or_else(|| bad("no log end in the queue-table header"))?;
            (&text[..crc_at], Some(end))
        } else {
            (&text[..], None)
        };
        let mut lines = body.lines();
        let count: usize = lines
            .next()
            .and_then(|h| {
                h.strip_prefix(TABLE_HEADER)
                    .or_else(|| h.strip_prefix(TABLE_HEADER_V2))
            })
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("no queue-table header"))?;
        let rows = lines
            .map(|line| {
                let mut f = line.split(' ');
                let row = (
                    f.next().map(str::to_owned),
                    f.next().and_then(|x| x.parse().ok()),
                    f.next().and_then(|x| x.parse().ok()),
                    f.next().and_then(|x| x.parse().ok()),
                );
                match row {
                    (Some(topic), Some(queue_id), Some(next), Some(last_physical))
                        if f.next().is_none() =>
                    {
                        // A row names a directory and an offset the queue goes on from:
                        // a topic that is no topic, or an offset no queue can reach, is
                        // damage, whatever the CRC says.
                        if validate_topic(&topic).is_err() {
                            return Err(bad("a queue-table row names no valid topic"));
                        }
                        if next > MAX_QUEUE_OFFSET {
                            return Err(bad("a queue-table row's next offset is out of range"));
                        }
                        Ok(TableRow {
                            topic,
                            queue_id,
                            next,
                            last_physical,
                        })
                    }
                    _ => Err(bad("a malformed queue-table row")),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if rows.len() != count {
            return Err(bad("the queue table is incomplete"));
        }
        Ok(Some(QueueTable { rows, log_end }))
    }
}

/// First line of `{root}/queue_table`, followed by the number of rows and the log's end.
const TABLE_HEADER: &str = "rocketstore-queue-table-v3";
/// The header of tables written before the log's end and the CRC were added.
const TABLE_HEADER_V2: &str = "rocketstore-queue-table-v2";

/// The queue table as read.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueTable {
    pub rows: Vec<TableRow>,
    /// The commit log's end when the table was written (unknown in version 2).
    pub log_end: Option<u64>,
}

impl QueueTable {
    /// Whether the table describes the queues of a log ending at `log_end` exactly: it was
    /// written when the log ended there, and a clean exit leaves queues that hold exactly
    /// what was dispatched. A table kept from an earlier open (its rewrite failed) is only
    /// a lower bound.
    pub(crate) fn exact_at(&self, log_end: u64) -> bool {
        self.log_end == Some(log_end)
    }
}

/// One queue of the queue table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableRow {
    pub topic: String,
    pub queue_id: u32,
    /// The queue's next offset.
    pub next: u64,
    /// Commit-log offset of its last entry's record (0 when it had none).
    pub last_physical: u64,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn list_dirs(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    use std::os::unix::fs::DirEntryExt;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let path = entry.path();
        // The type comes with the listing on most filesystems: no stat per queue.
        let is_dir = entry
            .file_type()
            .map(|t| t.is_dir() || (t.is_symlink() && path.is_dir()))
            .unwrap_or(false);
        if !is_dir {
            return Err(Error::BadStoreFile {
                path,
                reason: "expected a directory in the consume-queue tree".into(),
            });
        }
        out.push((path, entry.ino()));
    }
    // By bytes: comparing paths component by component costs more than the listing.
    out.sort_unstable_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    Ok(out)
}

/// Removes `{root}/{topic}/` (a deleted topic's consume queues) and syncs `root`. Synced
/// even when the directory is gone already: a retry after a failed sync must not record
/// the deletion done over a removal a power cut could still undo.
pub(crate) fn remove_topic_dir(
    root: &Path,
    topic: &str,
    hook: Option<&Arc<dyn IoHook>>,
) -> Result<()> {
    // The name comes from a file: `..` or an empty name would reach past the topic.
    validate_topic(topic)?;
    let dir = root.join(topic);
    if dir.exists() {
        ops::remove_dir_all(&dir, hook)?;
    }
    if !root.exists() {
        // No queue was ever written: nothing to remove or sync.
        return Ok(());
    }
    ops::sync_dir_with(root, hook)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &str) -> String {
        let count = rows.lines().count();
        let body = format!("{TABLE_HEADER} {count} 0\n{rows}");
        format!("{body}crc {}\n", crc32fast::hash(body.as_bytes()))
    }

    /// A row names a queue directory and the offset its queue goes on from: rows whose
    /// CRC matches but whose topic leaves `consumequeue/`, or whose offset no queue can
    /// reach (its byte position overflows), are damage and the table is ignored.
    #[test]
    fn rows_naming_no_topic_or_an_unreachable_offset_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue_table");
        std::fs::write(&path, table("T 0 5 0\n")).unwrap();
        let read = ConsumeQueues::read_table(&path).unwrap().unwrap();
        assert_eq!((read.rows[0].topic.as_str(), read.rows[0].next), ("T", 5));
        let max = MAX_QUEUE_OFFSET;
        for rows in [
            "../x 0 5 0\n".to_owned(),
            "a/b 0 5 0\n".to_owned(),
            "T 0 5 0\n.. 1 5 0\n".to_owned(),
            format!("T 0 {} 0\n", max + 1),
            format!("T 0 {} 0\n", u64::MAX),
        ] {
            std::fs::write(&path, table(&rows)).unwrap();
            assert!(
                matches!(
                    ConsumeQueues::parse_table(&path),
                    Err(Error::BadStoreFile { .. })
                ),
                "{rows:?}"
            );
            assert!(ConsumeQueues::read_table(&path).unwrap().is_none());
        }
        std::fs::write(&path, table(&format!("T 0 {max} 0\n"))).unwrap();
        assert!(ConsumeQueues::read_table(&path).unwrap().is_some());
    }
}
