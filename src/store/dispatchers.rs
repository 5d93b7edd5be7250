//! Starting the dispatchers besides the consume queues at open: the key index, then the
//! broker's own, each from its durable progress clamped to the log the recovery left.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use crate::commit_log::CommitLog;
use crate::config::StoreConfig;
use crate::dispatch::progress::{Progress, ProgressFile};
use crate::dispatch::thread::DispatcherThread;
use crate::dispatch::{Dispatch, External, INDEX_NAME, Sink};
use crate::error::Result;
use crate::fs::lock::StoreLock;
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

/// Opens the key index (when enabled) and starts every dispatcher's thread.
pub(super) fn start_dispatchers(
    config: &StoreConfig,
    log: &Arc<CommitLog>,
    lock: &StoreLock,
    index_time: Arc<AtomicI64>,
    broker: Vec<Box<dyn Dispatch>>,
) -> Result<(Option<Arc<KeyIndex>>, Vec<DispatcherThread>)> {
    let root = config.root();
    let interval = config.consume_queue_flush_interval;
    let mut threads = Vec::new();
    let mut index = None;
    if config.index_enabled {
        let (progress_file, progress) =
            ProgressFile::open(layout::dispatch_progress_file(root, INDEX_NAME))?;
        let (from, timestamp) = resume_point(log, progress);
        let key_index = Arc::new(KeyIndex::open(
            layout::index_dir(root),
            config.index_shape(),
            progress,
            from,
            lock.last_exit_clean(),
        )?);
        let writer = IndexWriter::new(Arc::clone(&key_index), progress_file, index_time);
        let sink: Box<dyn Sink> = Box::new(writer);
        threads.push(DispatcherThread::start(
            Arc::clone(log),
            sink,
            from,
            timestamp,
            interval,
        )?);
        index = Some(key_index);
    }
    for d in broker {
        let (external, progress) = External::new(d, root)?;
        let (from, timestamp) = resume_point(log, progress);
        threads.push(DispatcherThread::start(
            Arc::clone(log),
            Box::new(external),
            from,
            timestamp,
            interval,
        )?);
    }
    Ok((index, threads))
}
