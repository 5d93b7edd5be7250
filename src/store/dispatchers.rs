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
use crate::error::{Error, Result};
use crate::index::KeyIndex;
use crate::index::writer::IndexWriter;
use crate::layout;

/// The progress taken, where a dispatcher with `progress` (read from `path`) resumes in
/// `log`, and the store time before it: its progress, unless the log no longer reaches
/// there (a crash cut the log's tail below it, or retention deleted the log's start
/// above it). Without progress: the log's start. A progress inside the log that is not where a record starts would
/// hand the dispatcher a record's middle, and no run records one: it is refused (a
/// broker's dispatcher cannot be told what to forget), unless `rebuild` may take it as
/// absent (the key index, which then starts again from the log's start).
fn resume_point(
    log: &CommitLog,
    progress: Option<Progress>,
    path: &std::path::Path,
    rebuild: bool,
) -> Result<(Option<Progress>, u64, i64)> {
    let (start, end) = (log.min_offset(), log.write_offset());
    let progress = match progress {
        Some(p) if p.offset > start && p.offset < end && !log.starts_record(p.offset, end) => {
            let reason = format!(
                "its progress {} is not where a record starts in the commit log",
                p.offset
            );
            if !rebuild {
                return Err(Error::BadStoreFile {
                    path: path.to_owned(),
                    reason: format!("{reason} (remove the file to dispatch from the log's start)"),
                });
            }
            log::warn!("{}: {reason}: taken as absent", path.display());
            None
        }
        other => other,
    };
    let (from, timestamp) = match progress {
        Some(p) if p.offset >= start && p.offset <= end => (p.offset, p.timestamp),
        Some(p) if p.offset > end => (end, log.last_store_timestamp()),
        Some(p) => {
            log::warn!(
                "a dispatcher's recorded progress {} lies below the log's start {start}: it \
                 resumes there, and the records between, deleted by retention, are not \
                 given to it again",
                p.offset
            );
            (start, 0)
        }
        None => (start, 0),
    };
    Ok((progress, from, timestamp))
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
        let path = layout::dispatch_progress_file(root, INDEX_NAME);
        let (mut progress_file, progress) = ProgressFile::open(path.clone())?;
        let dir = layout::index_dir(root);
        let progress = progress.filter(|p| {
            let gone = crate::index::progress_file_is_gone(&dir, p);
            if gone {
                log::warn!(
                    "{}: the key index's last file is gone: the index is rebuilt from the \
                     log's start",
                    path.display()
                );
            }
            !gone
        });
        // Progress taken as absent rebuilds the key index: its files are removed.
        let (progress, from, timestamp) = resume_point(log, progress, &path, true)?;
        let key_index = Arc::new(KeyIndex::open(
            dir,
            config.index_shape(),
            &mut progress_file,
            progress,
            (from, timestamp),
            config.io_hook.clone(),
        )?);
        let writer = IndexWriter::new(Arc::clone(&key_index), progress_file, index_time);
        sinks.push((Box::new(writer), from, timestamp));
        index = Some(key_index);
    }
    for d in broker {
        let (mut external, progress) = External::new(d, root)?;
        let path = layout::dispatch_progress_file(root, external.name());
        let (progress, from, timestamp) = resume_point(log, progress, &path, false)?;
        if progress.is_some_and(|p| p.offset != from) {
            // Recorded before `start` is told: a crash now must not bring the old point
            // back, past records the dispatcher was told to forget.
            external.record(from, timestamp)?;
        }
        sinks.push((Box::new(external), from, timestamp));
    }
    let names: Vec<&str> = sinks.iter().map(|(s, _, _)| s.name()).collect();
    take_back_absent(root, log, &names)?;
    for (sink, from, _) in &mut sinks {
        sink.start(*from)?;
    }
    Ok(Prepared { index, sinks })
}

/// Takes the progress of every dispatcher left out of this run (a broker dispatcher not
/// passed to the open, or the key index while disabled) back to the log, where the log no
/// longer reaches it: otherwise, when the dispatcher returns, it resumes at its old point,
/// which this run's records may have covered, past records it never saw or inside one.
/// A broker dispatcher's progress moves to the log's end (it is told at its next `start`
/// that anything past it is stale). The key index's is removed instead: its entries past
/// the cut would have to be forgotten too, so it is rebuilt from the log's start when it
/// is next enabled.
fn take_back_absent(root: &std::path::Path, log: &CommitLog, registered: &[&str]) -> Result<()> {
    let dir = layout::dispatch_dir(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", &dir, e)),
    };
    let end = log.write_offset();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if registered.contains(&name.as_str())
            || crate::dispatch::validate_name(&name).is_err()
            || !entry.file_type().is_ok_and(|t| t.is_file())
        {
            continue;
        }
        let (mut file, progress) = ProgressFile::open(entry.path())?;
        let Some(p) = progress.filter(|p| p.offset > end) else {
            continue;
        };
        log::warn!(
            "dispatcher {name:?} (not running) had progress {} past the log's end {end}: {}",
            p.offset,
            if name == INDEX_NAME {
                "the key index will be rebuilt from the log's start when next enabled"
            } else {
                "it resumes at the log's end"
            }
        );
        if name == INDEX_NAME {
            drop(file);
            crate::fs::ops::remove_file_with(&entry.path(), None)?;
            crate::fs::ops::sync_dir(&dir)?;
        } else {
            file.store(Progress {
                offset: end,
                timestamp: log.last_store_timestamp(),
                aux: p.aux,
            })?;
        }
    }
    Ok(())
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
