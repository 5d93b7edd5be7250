//! The dispatchers besides the consume queues, at open: the key index, then the broker's
//! own, each resuming from its durable progress clamped to the log the recovery left.
//!
//! Two steps, so that a refused open leaves no thread behind: `prepare` opens the files
//! and calls each dispatcher's `start` (no thread yet, and anything may fail); `Prepared::
//! spawn` starts the threads once the rest of the store is up.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use crate::commit_log::CommitLog;
use crate::config::StoreConfig;
use crate::dispatch::progress::{Progress, ProgressFile};
use crate::dispatch::thread::DispatcherThread;
use crate::dispatch::{Dispatch, External, INDEX_NAME, Sink};
use crate::error::Result;
use crate::index::KeyIndex;
use crate::index::writer::IndexWriter;
use crate::layout;

/// Where a dispatcher with `progress` resumes in `log`, and the store time before it:
/// its progress, unless the log no longer reaches there (a crash cut the log's tail below
/// it, or retention deleted the log's start above it). Without progress: the log's start.
fn resume_point(log: &CommitLog, progress: Option<Progress>) -> (u64, i64) {
    let (start, end) = (log.min_offset(), log.write_offset());
    match progress {
        Some(p) if p.offset >= start && p.offset <= end => (p.offset, p.timestamp),
        Some(p) if p.offset > end => (end, log.last_store_timestamp()),
        _ => (start, 0),
    }
}

/// The dispatchers, ready to run.
pub(super) struct Prepared {
    pub index: Option<Arc<KeyIndex>>,
    sinks: Vec<(Box<dyn Sink>, u64, i64)>,
}

/// Opens the key index (when enabled) and each broker dispatcher's progress, records
/// where each resumes, and calls their `start`. Starts no thread.
pub(super) fn prepare(
    config: &StoreConfig,
    log: &CommitLog,
    index_time: Arc<AtomicI64>,
    broker: Vec<Box<dyn Dispatch>>,
) -> Result<Prepared> {
    let root = config.root();
    let mut sinks: Vec<(Box<dyn Sink>, u64, i64)> = Vec::new();
    let mut index = None;
    if config.index_enabled {
        let (mut progress_file, progress) =
            ProgressFile::open(layout::dispatch_progress_file(root, INDEX_NAME))?;
        let (from, timestamp) = resume_point(log, progress);
        let key_index = Arc::new(KeyIndex::open(
            layout::index_dir(root),
            config.index_shape(),
            &mut progress_file,
            progress,
            (from, timestamp),
        )?);
        let writer = IndexWriter::new(Arc::clone(&key_index), progress_file, index_time);
        sinks.push((Box::new(writer), from, timestamp));
        index = Some(key_index);
    }
    for d in broker {
        let (mut external, progress) = External::new(d, root)?;
        let (from, timestamp) = resume_point(log, progress);
        if progress.is_some_and(|p| p.offset != from) {
            // Recorded before `start` is told: a crash now must not bring the old point
            // back, past records the dispatcher was told to forget.
            external.record(from, timestamp)?;
        }
        sinks.push((Box::new(external), from, timestamp));
    }
    for (sink, from, _) in &mut sinks {
        sink.start(*from)?;
    }
    Ok(Prepared { index, sinks })
}

impl Prepared {
    /// Starts every dispatcher's thread.
    pub(super) fn spawn(
        self,
        log: &Arc<CommitLog>,
        config: &StoreConfig,
    ) -> Result<(Option<Arc<KeyIndex>>, Vec<DispatcherThread>)> {
        let mut threads: Vec<DispatcherThread> = Vec::new();
        for (sink, from, timestamp) in self.sinks {
            match DispatcherThread::start(
                Arc::clone(log),
                sink,
                from,
                timestamp,
                config.consume_queue_flush_interval,
            ) {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // No thread left behind by a refused open.
                    for t in &threads {
                        let _ = t.shutdown();
                    }
                    return Err(e);
                }
            }
        }
        Ok((self.index, threads))
    }
}
