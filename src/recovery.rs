//! Opening the store's data: the commit log, the consume queues and the checkpoint, and
//! bringing the queues in line with the log after a clean or an unclean exit.

use crate::checkpoint::{Checkpoint, CheckpointTimes};
use crate::commit_log::{CommitLog, RecoverySink};
use crate::config::StoreConfig;
use crate::consume_queues::ConsumeQueues;
use crate::dispatch::index_record;
use crate::error::{Error, Result};
use crate::format::{self, CqEntry, RecordView};

/// Name of the checkpoint file under the root.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";

/// The recovered store data.
pub(crate) struct Recovered {
    pub log: CommitLog,
    pub queues: ConsumeQueues,
    pub checkpoint: Checkpoint,
}

/// Opens the log and the queues. After a clean exit only the last commit-log file is read,
/// and its records must be indexed; after an unclean one the log is scanned from the
/// checkpoint, cut at its first invalid record, and every record from there is indexed
/// again. Whenever the queues do not line up with the log they are rebuilt from scratch.
pub(crate) fn recover(config: &StoreConfig, clean: bool) -> Result<Recovered> {
    let started = std::time::Instant::now();
    let path = config.root_dir.join(CHECKPOINT_FILE);
    let times = CheckpointTimes::read(&path)?;
    let checkpoint = Checkpoint::open(path, times.unwrap_or_default())?;
    let point = times.map(|t| t.recovery_point());

    let mode = if clean {
        Mode::Verify
    } else {
        Mode::FromCheckpoint
    };
    let mut sink = QueueRebuild::new(config, mode, checkpoint);
    let mut log = CommitLog::open(config, clean, point, &mut sink)?;
    if sink.mismatch {
        log::warn!("consume queues do not match the commit log: rebuilding them from the log");
        drop(log);
        sink = QueueRebuild::new(config, Mode::Rebuild, sink.checkpoint);
        log = CommitLog::open(config, false, None, &mut sink)?;
    }
    let queues = sink.queues.expect("begin() is always called");
    log.restore_queue_offsets(queues.next_offsets());
    log::info!(
        "{} recovery took {:?}: scanned {} bytes from offset {}, {} records, log ends at {}",
        if clean { "normal" } else { "abnormal" },
        started.elapsed(),
        sink.scanned_bytes,
        sink.start_offset,
        sink.records,
        log.write_offset(),
    );
    Ok(Recovered {
        log,
        queues,
        checkpoint: sink.checkpoint,
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
    mode: Mode,
    queues: Option<ConsumeQueues>,
    checkpoint: Checkpoint,
    mismatch: bool,
    start_offset: u64,
    records: u64,
    scanned_bytes: u64,
    /// Verify mode: the last record seen (topic, queue id, queue offset, its entry).
    last: (String, u32, u64, Option<CqEntry>),
}

impl<'a> QueueRebuild<'a> {
    fn new(config: &'a StoreConfig, mode: Mode, checkpoint: Checkpoint) -> Self {
        QueueRebuild {
            config,
            mode,
            queues: None,
            checkpoint,
            mismatch: false,
            start_offset: 0,
            records: 0,
            scanned_bytes: 0,
            last: (String::new(), 0, 0, None),
        }
    }
}

impl RecoverySink for QueueRebuild<'_> {
    fn begin(&mut self, start_offset: u64) -> Result<()> {
        self.start_offset = start_offset;
        // After an unclean exit, entries from the scan's start on are indexed again.
        let keep_below = (self.mode != Mode::Verify).then_some(start_offset);
        self.queues = Some(ConsumeQueues::load(
            self.config.root_dir.join("consumequeue"),
            self.config.consume_queue_entries_per_file,
            self.config.io_hook.clone(),
            keep_below,
        )?);
        Ok(())
    }

    fn record(&mut self, view: &RecordView<'_>) -> Result<bool> {
        self.records += 1;
        self.scanned_bytes += u64::from(view.total_size);
        if self.mismatch {
            return Ok(true);
        }
        let queues = self.queues.as_ref().expect("begin() comes first");
        if self.mode == Mode::Verify {
            // Records are indexed in log order and a clean exit drains the dispatch, so
            // checking the last record's entry (in `file_done`) proves them all.
            let last = &mut self.last;
            last.0.clear();
            last.0.push_str(view.topic);
            last.1 = view.queue_id;
            last.2 = view.queue_offset;
            last.3 = Some(CqEntry {
                physical_offset: view.physical_offset,
                size: view.total_size,
                tag_hash: format::tag_hash(format::find_tags(view.properties)),
            });
            return Ok(true);
        }
        match index_record(queues, view) {
            Ok(_) => Ok(true),
            // Rebuilding from empty queues, a queue offset that does not continue its queue
            // can only be a damaged record.
            Err(Error::Corrupted { .. }) if self.mode == Mode::Rebuild => Ok(false),
            // From the checkpoint, the queues are behind what it promised: rebuild.
            Err(Error::Corrupted { .. }) => {
                self.mismatch = true;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    fn file_done(&mut self, last_store_timestamp: i64) -> Result<()> {
        if self.mode == Mode::Verify {
            let (topic, queue_id, queue_offset, expected) = &self.last;
            if let Some(expected) = expected {
                let queue = self.queues.as_ref().expect("begin() comes first");
                let queue = queue.get(topic, *queue_id);
                let indexed = queue.as_ref().and_then(|q| q.entry(*queue_offset));
                let at_end = queue.is_some_and(|q| q.max_offset() == queue_offset + 1);
                self.mismatch = indexed.as_ref() != Some(expected) || !at_end;
            }
            return Ok(());
        }
        if self.mismatch {
            return Ok(());
        }
        // Progress survives a crash during recovery: the next one starts here.
        self.queues.as_ref().expect("begin() comes first").flush()?;
        let index = self.checkpoint.times().index;
        self.checkpoint.store(CheckpointTimes {
            physic: last_store_timestamp,
            logics: last_store_timestamp,
            index,
        })
    }
}
