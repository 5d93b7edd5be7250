//! Opening the store's data: the commit log, the consume queues and the checkpoint, and
//! bringing the queues in line with the log after a clean or an unclean exit.

use crate::checkpoint::{Checkpoint, CheckpointTimes};
use crate::commit_log::record::{self, RecordView};
use crate::commit_log::{CommitLog, RecoverySink, ScanFrom, ScanPlan};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::layout;
use crate::queue::consume_queue::{Indexed, Load, MAX_QUEUE_OFFSET};
use crate::queue::deleted::DeletedTopics;
use crate::queue::entry::CqEntry;
use crate::queue::queues::{ConsumeQueues, TableRow, remove_topic_dir};
use crate::stats::OpenStats;

/// The recovered store data.
pub(crate) struct Recovered {
    pub log: CommitLog,
    pub queues: ConsumeQueues,
    pub checkpoint: Checkpoint,
    /// Indexing stopped for lack of disk space: the offset dispatch resumes at, and the
    /// store time before it. Opening never needs new space; dispatch retries until it
    /// finds some.
    pub resume_dispatch: Option<(u64, i64)>,
    /// What the recovery read, for the stats.
    pub open: OpenStats,
}

/// Opens the log and the queues.
///
/// - After a clean exit only the last commit-log file is read; each of its records must be
///   indexed, and every queue of the queue table the shutdown wrote must be there, whole.
/// - After an unclean exit the log is scanned from the checkpoint, a torn tail (invalid
///   records at or past the checkpoint's durable offset) is cut, and every record from the
///   scan's start is indexed again.
/// - An invalid record below the durable point refuses the open ([`Error::Corrupted`]).
/// - Whenever the queues do not line up with the log they are rebuilt from the whole log,
///   which is read but never changed.
pub(crate) fn recover(
    config: &StoreConfig,
    clean: bool,
    poisoned_at: Option<u64>,
    deleted: &DeletedTopics,
) -> Result<Recovered> {
    let started = std::time::Instant::now();
    // A deletion not done left the topic's old queues, and no entry of the new topic:
    // they go, and the scan indexes the new topic's records (all past the checkpoint).
    // Recorded done at once: the scan may index the new topic's records (and checkpoint
    // past them) before the open ends, and a later open must not remove them again.
    for topic in deleted.not_done() {
        remove_topic_dir(
            &layout::consume_queue_dir(&config.root_dir),
            &topic,
            config.io_hook.as_ref(),
        )?;
        deleted.mark_done(&topic)?;
    }
    let path = layout::checkpoint_file(&config.root_dir);
    let times = CheckpointTimes::read(&path)?;
    // Read before anything rewrites the checkpoint (see `ScanPlan::trust_log_start`).
    let trust_log_start = CheckpointTimes::intact(&path);
    let checkpoint = Checkpoint::open(path, times.unwrap_or_default())?;
    let vouched = times.map_or(0, |t| t.physic_offset);
    let table_path = layout::queue_table_file(&config.root_dir);
    // Every queue and its next offset when the store was last opened or cleanly shut
    // down: exact after a clean exit, a lower bound after a crash (queues only grow, and
    // a crash cuts only what came after the last open).
    let mut read = ConsumeQueues::read_table(&table_path)?.unwrap_or_default();
    // A deleted topic's rows describe its old queues when the table was written before the
    // deletion (its log end at or below the cutoff, or unknown).
    let log_end = read.log_end;
    read.rows.retain(|row| {
        deleted
            .cutoff(&row.topic)
            .is_none_or(|cutoff| log_end.is_some_and(|end| end > cutoff))
    });
    // After a clean exit, a table written when the log ended where it ends now is exact:
    // with enough queues, they are read at first use instead of at open.
    let lazy_rows =
        if clean && read.exact_at(vouched) && read.rows.len() >= config.lazy_queue_load_threshold {
            &read.rows[..]
        } else {
            &[]
        };
    let table = &read.rows;
    let mut rebuilt_queues = false;
    let have = |queues: &ConsumeQueues, row: &TableRow| {
        queues
            .get(&row.topic, row.queue_id)
            .map_or(0, |q| q.max_offset())
    };
    let short_queue = |queues: &ConsumeQueues| {
        table.iter().find_map(|row| {
            let (have, want) = (have(queues, row), row.next);
            // Queues only grow while the store runs, so the table is a lower bound; after a
            // clean exit it is usually exact, but may be the one of the last open (when a
            // full disk kept the shutdown from writing it).
            (have < want).then(|| {
                format!(
                    "consume queue {}/{} holds {have} entries, it held {want}",
                    row.topic, row.queue_id
                )
            })
        })
    };

    // After a clean exit whose queue table is exact, the scan starts at the last record a
    // queue indexed: what follows it must be its end (or records no queue indexes), and
    // nothing before it in the last file needs reading again, unless CRCs are to be
    // checked.
    let last_indexed = table.iter().map(|row| row.last_physical).max();
    let from = match last_indexed {
        Some(at) if read.exact_at(vouched) && !config.verify_crc_on_clean_open => {
            ScanFrom::LastRecord(at)
        }
        _ => ScanFrom::LastFile,
    };
    let plan = if clean {
        ScanPlan {
            from,
            durable: u64::MAX,
            expected_end: vouched,
            check_crc: config.verify_crc_on_clean_open,
            repair: false,
            truncate_damage: config.truncate_damaged_log,
            written_below: vouched,
            rewrite_from: poisoned_at,
            known_store_time: times.map_or(0, |t| t.physic),
            trust_log_start,
        }
    } else {
        ScanPlan {
            from: times.map_or(ScanFrom::Start, |t| match t.recovery_offset() {
                Some(offset) => ScanFrom::Offset(offset),
                None => ScanFrom::Checkpoint(t.recovery_point()),
            }),
            durable: vouched,
            expected_end: vouched,
            check_crc: true,
            repair: true,
            truncate_damage: config.truncate_damaged_log,
            written_below: vouched,
            rewrite_from: poisoned_at,
            known_store_time: times.map_or(0, |t| t.physic),
            trust_log_start,
        }
    };
    let mode = if clean {
        Mode::Verify
    } else {
        Mode::FromCheckpoint
    };
    // Phase timings, for whoever runs with debug logs on (`examples/many_queues.rs --log`).
    let lap = |what: &str| log::debug!("recovery: {what} after {:?}", started.elapsed());
    let mut sink = QueueRebuild::new(config, mode, checkpoint, lazy_rows, deleted);
    if !clean && let Some(offset) = times.and_then(|t| t.recovery_offset()) {
        sink.index_from = offset;
    }
    let mut log = CommitLog::open(config, plan, &mut sink)?;
    lap("queues loaded and log scanned");
    sink.commit()?;
    lap("scanned records indexed");
    let queues = sink.queues.as_ref().expect("begin() is always called");
    queues.position_expired(table, log.min_offset())?;
    let mismatch = if let Some(why) = sink.mismatch.take() {
        Some(why)
    } else if clean && times.is_some_and(|t| t.logics == 0) && log.write_offset() > log.min_offset()
    {
        // Every run that indexed a record leaves a queue time; 0 over a log that holds
        // records means a rebuild began (it stores 0 before it empties the queues) and was
        // not finished, or a queue was found damaged. A refused open still releases the
        // store as cleanly shut down, and the checks of a clean open need not see empty
        // queues (they read the last file, and the table, which a store written by others
        // lacks).
        Some("the checkpoint's queue time is 0: the consume queues are not known whole".into())
    } else if sink.stalled.is_some() {
        // The queues are short by design: dispatch finishes them once space is found.
        None
    } else if let Some(why) = queues.damaged() {
        Some(why)
    } else if let Some(why) = short_queue(queues) {
        Some(why)
    } else {
        last_entries_mismatch(&log, queues)
    };
    lap("queues checked against the log and the table");
    if let Some(why) = mismatch {
        log::warn!("{why}: rebuilding every consume queue from the commit log");
        rebuilt_queues = true;
        drop(log);
        sink = QueueRebuild::new(config, Mode::Rebuild, sink.checkpoint, &[], deleted);
        // The same rule as the first pass: after a clean exit every invalid record is
        // damage and the log is only read; after a crash a torn tail may still be cut. A
        // record whose queue offset does not continue its (now empty, rebuilt) queue is
        // invalid: only damage to its header can cause that.
        // The first pass synced the log up to where it ended and the checkpoint says so:
        // nothing below that may be cut now (it may have been acknowledged), only refused.
        let rebuild = ScanPlan {
            from: ScanFrom::Start,
            check_crc: true,
            durable: plan.durable.max(sink.checkpoint.times().physic_offset),
            ..plan
        };
        log = CommitLog::open(config, rebuild, &mut sink)?;
        sink.commit()?;
        let queues = sink.queues.as_ref().expect("begin() is always called");
        queues.position_expired(table, log.min_offset())?;
        if let Some(why) = short_queue(queues)
            && !config.truncate_damaged_log
            && sink.stalled.is_none()
        {
            // Rebuilt from the whole log and still short: the log lacks records it had.
            return Err(Error::corrupted(
                log.write_offset(),
                format!("{why}, and the commit log holds no more of its records"),
            ));
        }
    }
    let queues = sink.queues.expect("begin() is always called");
    // Entries a crash left past a queue's end go; queues reopened after retention start at
    // their first entry still in the log. In that order: a queue whose entries all point
    // below the log's start keeps its files (and so its next offset), where raising its
    // minimum first would make it look as if the load had kept nothing.
    let log_start = log.min_offset();
    queues.set_log_start(log_start);
    for (_, _, q) in queues.all() {
        q.clear_stale_tail()?;
        if log_start > 0 {
            q.delete_below(log_start)?;
        }
    }
    lap("stale tails cleared");
    let mut next = queues.next_offsets();
    for ((topic, queue_id), offset) in sink.stalled_next.drain() {
        let at = next.entry(topic).or_default().entry(queue_id).or_default();
        *at = (*at).max(offset);
    }
    log.restore_queue_offsets(next);
    let mut checkpoint = sink.checkpoint;
    let cp = checkpoint.times();
    if cp.physic_offset > log.write_offset() || cp.logics_offset > log.write_offset() {
        // Only the operator's override cuts below the log's durable point; the queues'
        // may lie past a torn tail (dispatch runs ahead of the log's flushes).
        checkpoint.store(CheckpointTimes {
            physic_offset: cp.physic_offset.min(log.write_offset()),
            logics_offset: cp.logics_offset.min(log.write_offset()),
            ..cp
        })?;
    }
    // The lower bound for the next open, whatever happens to this run: needed when the
    // queues differ from the table. On a full disk the old table is kept while it is still
    // a lower bound; removing it needs no space.
    // While indexing is stalled the queues are short by design: the old table stays.
    let changed =
        table.len() != queues.all().len() || table.iter().any(|row| have(&queues, row) != row.next);
    if (changed || !table_path.exists())
        && sink.stalled.is_none()
        && let Err(e) = queues.write_table(&table_path, log.write_offset(), &[])
    {
        let shrank = table.iter().any(|row| have(&queues, row) < row.next);
        log::warn!("the queue table could not be written: {e}");
        if shrank {
            // Durably: a table that came back would refuse the next open.
            crate::fs::ops::remove_file_with(&table_path, config.io_hook.as_ref())?;
            crate::fs::ops::sync_dir(config.root())?;
        }
    }
    lap("queue table written");
    // A crash may have cut the log below a deletion's cutoff: the next record of the
    // topic, at the log's end, belongs to the new topic.
    deleted.clamp_to(log.write_offset())?;
    if let Err(e) = deleted.retire_below(log.min_offset()) {
        log::warn!("old deletions are kept in the deleted-topics file: {e}");
    }
    log::info!(
        "{} recovery took {:?}: scanned {} bytes from offset {}, {} records, log ends at {}",
        if clean { "normal" } else { "abnormal" },
        started.elapsed(),
        sink.scanned_bytes,
        sink.start_offset,
        sink.records,
        log.write_offset(),
    );
    if let Some((at, _)) = sink.stalled {
        log::warn!(
            "out of disk space while indexing: the consume queues lag the log from offset \
             {at}; dispatch catches up once space is freed, and puts are refused until then"
        );
    }
    Ok(Recovered {
        log,
        queues,
        checkpoint,
        resume_dispatch: sink.stalled,
        open: OpenStats {
            clean_exit: clean,
            scanned_from: sink.start_offset,
            scanned_records: sink.records,
            scanned_bytes: sink.scanned_bytes,
            indexed_records: sink.indexed,
            rebuilt_queues,
            took: started.elapsed(),
        },
    })
}

/// What the reopen scan does with each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Clean exit: check the last file's records are indexed.
    Verify,
    /// Unclean exit: index again every record from the checkpoint on.
    FromCheckpoint,
    /// The queues did not line up: index every record of the log into empty queues. A
    /// record whose queue offset does not continue its queue ends the log.
    Rebuild,
}

/// Checks or re-indexes each record the reopen scan meets.
struct QueueRebuild<'a> {
    config: &'a StoreConfig,
    /// Records of deleted topics below their cutoffs are not indexed.
    deleted: &'a DeletedTopics,
    /// The queues read at first use (after a clean exit, from an exact queue table).
    table: &'a [TableRow],
    mode: Mode,
    queues: Option<ConsumeQueues>,
    checkpoint: Checkpoint,
    /// Why the queues do not line up with the log, once found.
    mismatch: Option<String>,
    start_offset: u64,
    /// After a crash, records below this offset have durable queue entries (the
    /// checkpoint says so): the scan validates them but indexes from here on.
    index_from: u64,
    log_start: u64,
    records: u64,
    scanned_bytes: u64,
    /// Records indexed again.
    indexed: u64,
    /// Verify mode: the last record of the scanned file (topic, queue id, queue offset,
    /// its entry), the buffer reused from record to record.
    last: (String, u32, u64, Option<CqEntry>),
    /// Everything indexed below this offset is written (a commit succeeded), and the
    /// store time before it.
    committed: (u64, i64),
    /// Indexing stopped for lack of space: where dispatch must resume (see `committed`).
    stalled: Option<(u64, i64)>,
    /// After a stall, the next queue offset of each queue met, so that the log continues
    /// them.
    stalled_next: std::collections::HashMap<(String, u32), u64>,
}

impl<'a> QueueRebuild<'a> {
    fn new(
        config: &'a StoreConfig,
        mode: Mode,
        checkpoint: Checkpoint,
        table: &'a [TableRow],
        deleted: &'a DeletedTopics,
    ) -> Self {
        QueueRebuild {
            config,
            deleted,
            table,
            mode,
            queues: None,
            checkpoint,
            mismatch: None,
            start_offset: 0,
            index_from: 0,
            log_start: 0,
            records: 0,
            scanned_bytes: 0,
            indexed: 0,
            last: (String::new(), 0, 0, None),
            committed: (0, 0),
            stalled: None,
            stalled_next: std::collections::HashMap::new(),
        }
    }

    /// Indexing failed with `e`: for lack of space, indexing stops here (the scan goes on,
    /// to find the log's end) and dispatch resumes at the last commit; else it fails.
    fn stall(&mut self, e: Error) -> Result<()> {
        if !e.is_no_space() {
            return Err(e);
        }
        if self.stalled.is_none() {
            log::warn!("recovery stops indexing: {e}");
            self.stalled = Some(self.committed);
        }
        Ok(())
    }

    /// Writes the pending entries, or stalls for lack of space.
    fn commit(&mut self) -> Result<()> {
        if self.stalled.is_some() {
            return Ok(());
        }
        match self.queues.as_ref().map(ConsumeQueues::commit) {
            Some(Err(e)) => self.stall(e),
            _ => Ok(()),
        }
    }

    /// Notes the queue offset after `view`'s, for a queue that indexing no longer reaches.
    /// A queue offset that cannot be its queue's (QUEUEOFFSET is not under the body CRC)
    /// is treated as indexing treats it: from empty queues, a damaged record (false); from
    /// the checkpoint, a sign that the queues may be what is wrong (a queue file's tail
    /// lost), so the queues are rebuilt, which decides. Taken as it is, a damaged offset
    /// would move its queue's next offset far on.
    fn track_next(&mut self, view: &RecordView<'_>) -> bool {
        let Err(reason) = self.next_after_stall(view) else {
            return true;
        };
        if self.mode == Mode::Rebuild {
            return false;
        }
        self.mismatch = Some(reason);
        true
    }

    /// Records `view`'s queue offset as its queue's last since the stall, if it can be:
    /// in range, continuing the queue's records since the stall, and the first of them at
    /// most what was indexed of the queue (an entry indexed already, seen again, is
    /// lower); for a queue nothing was indexed of (absent, or empty and fresh: emptied by a
    /// rebuild), 0 when the scan began at the log's very start (otherwise its records may
    /// lie below the scan: it cannot be told); for one kept expired, any.
    fn next_after_stall(&mut self, view: &RecordView<'_>) -> std::result::Result<(), String> {
        let (topic, id, at) = (view.topic, view.queue_id, view.queue_offset);
        let key = (topic.to_owned(), id);
        let expected = match self.stalled_next.get(&key) {
            Some(next) => Some(*next),
            None => match self
                .queues
                .as_ref()
                .expect("begin() comes first")
                .get(topic, id)
            {
                // Emptied by a rebuild (or new), or kept expired: indexing starts such a
                // queue at its first record's offset (see `ConsumeQueue::index`).
                Some(q) if q.is_restartable() => None,
                Some(q) if !q.is_fresh() => (at > q.next_offset()).then(|| q.next_offset()),
                _ if self.start_offset == 0 => (at > 0).then_some(0),
                _ => None,
            },
        };
        let fits = at <= MAX_QUEUE_OFFSET && expected.is_none_or(|e| e == at);
        if !fits {
            let want = expected.map_or("a queue offset in range".into(), |e| e.to_string());
            return Err(format!(
                "{topic}/{id}: queue offset {at} where {want} was due"
            ));
        }
        self.stalled_next.insert(key, at + 1);
        Ok(())
    }
}

impl RecoverySink for QueueRebuild<'_> {
    fn begin(&mut self, start_offset: u64, log_start: u64) -> Result<()> {
        self.start_offset = start_offset;
        self.index_from = self.index_from.max(start_offset);
        self.log_start = log_start;
        // After an unclean exit, entries from the scan's start on are indexed again; a
        // rebuild starts from empty queues (entries below the log's start point at deleted
        // records and are not kept).
        let how = match self.mode {
            Mode::Verify => Load::Keep,
            Mode::FromCheckpoint => Load::DropFrom(self.index_from),
            Mode::Rebuild => Load::Rebuild,
        };
        if self.mode == Mode::Rebuild {
            // The rebuild is about to empty every queue: until it is done, the checkpoint
            // must not let a later open start past the log's start and trust them.
            let cp = self.checkpoint.times();
            self.checkpoint.store(CheckpointTimes {
                physic: 0,
                logics: 0,
                logics_offset: 0,
                ..cp
            })?;
        }
        self.committed = (self.index_from, self.checkpoint.times().logics);
        let mut queues = ConsumeQueues::load(
            layout::consume_queue_dir(&self.config.root_dir),
            self.config.consume_queue_entries_per_file,
            self.config.io_hook.clone(),
            how,
            log_start,
            self.table,
        )?;
        queues.tag_code = self.config.tag_code.clone();
        log::debug!("recovery: {} queues loaded", queues.all().len());
        self.queues = Some(queues);
        if self.mode != Mode::Rebuild
            && let Some(why) = self.queues.as_ref().and_then(ConsumeQueues::damaged)
        {
            // Nothing is indexed into queues that will be rebuilt anyway.
            self.mismatch = Some(why);
        }
        Ok(())
    }

    fn record(&mut self, view: &RecordView<'_>) -> Result<bool> {
        self.records += 1;
        self.scanned_bytes += u64::from(view.total_size);
        if self.mismatch.is_some() {
            return Ok(true);
        }
        if view.is_hidden() || self.deleted.hides(view.topic, view.physical_offset) {
            // A transaction's half or rollback record (no queue offset), or a record of a
            // deleted topic: no entry.
            return Ok(true);
        }
        if self.stalled.is_some() {
            return Ok(self.track_next(view));
        }
        if self.mode == Mode::FromCheckpoint
            && view.physical_offset < self.index_from
            && self
                .queues
                .as_ref()
                .expect("begin() comes first")
                .get(view.topic, view.queue_id)
                .is_some_and(|q| view.queue_offset < q.max_offset())
        {
            // Validated by the scan; its entry is durable and kept. One its queue lacks
            // (the queue's tail was damaged since it was synced: it loaded shorter) is
            // indexed again below, as the time rule's whole-file re-index did.
            return Ok(true);
        }
        let entry = self
            .queues
            .as_ref()
            .expect("begin() comes first")
            .entry_of(view);
        if self.mode == Mode::Verify {
            // A clean exit drained the dispatch, and records are indexed in log order: the
            // file's last record is checked in `file_done` (and every queue's length against
            // the queue table). A lookup per record measured a third of a clean open.
            let last = &mut self.last;
            last.0.clear();
            last.0.push_str(view.topic);
            (last.1, last.2, last.3) = (view.queue_id, view.queue_offset, Some(entry));
            return Ok(true);
        }
        let queues = self.queues.as_ref().expect("begin() comes first");
        if self.mode == Mode::FromCheckpoint
            && view.queue_offset > 0
            && self.index_from > self.log_start
            && queues
                .get(view.topic, view.queue_id)
                .is_none_or(|q| q.is_fresh())
        {
            // The queue's earlier entries lie before the scan: only a rebuild finds them.
            self.mismatch = Some(format!(
                "consume queue {}/{} is missing or empty",
                view.topic, view.queue_id
            ));
            return Ok(true);
        }
        let indexed = match queues.index(view.topic, view.queue_id, view.queue_offset, entry) {
            Ok(indexed) => indexed,
            Err(e) => {
                self.stall(e)?;
                return Ok(self.track_next(view));
            }
        };
        self.indexed += u64::from(matches!(indexed, Indexed::Appended));
        match indexed {
            Indexed::Appended | Indexed::Already => Ok(true),
            // Rebuilding from empty queues, a queue offset that does not continue its queue
            // can only be a damaged record.
            Indexed::Conflict(_) | Indexed::Gap(_) if self.mode == Mode::Rebuild => Ok(false),
            // From the checkpoint, the queues are behind what it promised: rebuild.
            Indexed::Conflict(reason) | Indexed::Gap(reason) => {
                self.mismatch = Some(reason);
                Ok(true)
            }
        }
    }

    fn file_done(&mut self, last_store_timestamp: i64, end: u64, last: bool) -> Result<()> {
        if self.mode == Mode::Verify {
            // The last record is its queue's last entry, and nothing is indexed past it.
            let queues = self.queues.as_ref().expect("begin() comes first");
            let (topic, id, last, entry) = &self.last;
            if let Some(entry) = entry {
                let queue = queues.get(topic, *id);
                let max = queue.as_ref().map_or(0, |q| q.max_offset());
                let indexed = queue.and_then(|q| q.entry(*last));
                if self.mismatch.is_none() && (max != last + 1 || indexed != Some(*entry)) {
                    self.mismatch = Some(format!(
                        "consume queue {topic}/{id} ends at {max}, its last record is {last} at {}",
                        entry.physical_offset
                    ));
                }
            }
            return Ok(());
        }
        if self.mismatch.is_some() {
            return Ok(());
        }
        self.commit()?;
        if self.stalled.is_some() {
            return Ok(());
        }
        self.committed = (end, last_store_timestamp);
        let old = self.checkpoint.times();
        // The scan synced the log up to `end`.
        let mut times = CheckpointTimes {
            physic: last_store_timestamp,
            physic_offset: old.physic_offset.max(end),
            // The queues' old durable point may lie past where the scan cut the log (under
            // async flush dispatch runs ahead of the log's flushes): entries past the cut
            // point at records that are gone, and the log's next records take their
            // offsets. It must not vouch for anything past the log's end.
            logics: match old.logics_offset > end {
                true => old.logics.min(last_store_timestamp),
                false => old.logics,
            },
            logics_offset: old.logics_offset.min(end),
            ..old
        };
        if !last && self.mode != Mode::Rebuild {
            // Progress through a long log survives a crash during recovery: the next one
            // starts here. Not a rebuild's: its queue time stays 0 until it is done (the
            // dispatch thread's first flush), so that a rebuild that fails or crashes at
            // any file is done again by the next open, clean or not.
            self.queues.as_ref().expect("begin() comes first").flush()?;
            times.logics = last_store_timestamp;
            // Entries below `index_from` were kept, durable; past it, those indexed again.
            times.logics_offset = end.max(self.index_from);
        }
        // After the last file the queues are not synced here: the dispatch thread's first
        // flush syncs them and only then moves the checkpoint's queue fields past what
        // recovery indexed. With many queues that sync is the longest part of a crash
        // reopen (one dirty page per queue; 3.5 s for 100,000 here), and nothing needs it
        // before then: until it is done the checkpoint still says to index from where it
        // did, so a crash meanwhile indexes the same records again.
        self.checkpoint.store(times)
    }
}

/// Why some queue's last entry does not point at its own record: that record, at that
/// queue offset, of that size and tag hash (entries of records retention deleted are not
/// checked). One record read per queue; catches a wrong entry that the load-time check
/// (written, rising) and the queue table (lengths) cannot.
fn last_entries_mismatch(log: &CommitLog, queues: &ConsumeQueues) -> Option<String> {
    let (start, limit) = (log.min_offset(), log.write_offset());
    queues.all().into_iter().find_map(|(topic, id, q)| {
        if !q.is_loaded() || q.indexed_since_load() {
            // Checked against its table row when it is loaded; or its last entry was just
            // made from its record by the scan.
            return None;
        }
        let at = q
            .max_offset()
            .checked_sub(1)
            .filter(|at| *at >= q.min_offset())?;
        let why = |what: &str| Some(format!("consume queue {topic}/{id}: entry {at} {what}"));
        let Some(e) = q.entry(at) else {
            return why("is not written");
        };
        if e.physical_offset < start {
            return None;
        }
        let mut cursor = crate::commit_log::ReadCursor::default();
        let raw = log.read_raw_with(&mut cursor, e.physical_offset, limit);
        let view = raw
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .and_then(|b| record::parse(b, e.physical_offset).ok());
        match view {
            Some(v)
                if v.topic == topic
                    && v.queue_id == id
                    && v.queue_offset == at
                    && queues.entry_of(&v) == e =>
            {
                None
            }
            _ => why("does not point at its record"),
        }
    })
}
