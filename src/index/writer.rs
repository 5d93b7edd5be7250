//! The key index's dispatcher: one entry per key of each record, in log order, into the
//! active index file (a new one when it is full); at each flush the files written are
//! synced, then the progress is recorded with the active file and its entry count, which
//! is exactly what a crash lets the next open keep.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::commit_log::record::RecordView;
use crate::dispatch::progress::{Progress, ProgressFile};
use crate::dispatch::{INDEX_NAME, Sink};
use crate::error::Result;
use crate::index::file::{IndexFile, index_hash};
use crate::index::{CLOSED_CLEANLY, KeyIndex};

pub(crate) struct IndexWriter {
    index: Arc<KeyIndex>,
    progress: ProgressFile,
    /// Files written since the last flush.
    dirty: Vec<Arc<IndexFile>>,
    /// The record being indexed and how many of its keys are in: a round retried after a
    /// failure skips what it already added, so no entry is ever written twice.
    done: (u64, usize),
    /// Store time up to which the index is durable, for the checkpoint's index field.
    durable_time: Arc<AtomicI64>,
}

impl IndexWriter {
    pub(crate) fn new(
        index: Arc<KeyIndex>,
        progress: ProgressFile,
        durable_time: Arc<AtomicI64>,
    ) -> IndexWriter {
        IndexWriter {
            index,
            progress,
            dirty: Vec::new(),
            done: (0, 0),
            durable_time,
        }
    }

    fn put(&mut self, hash: u32, offset: u64, timestamp: i64) -> Result<()> {
        loop {
            let file = match self.index.active() {
                Some(f) if !f.is_full() => f,
                _ => self.index.roll()?,
            };
            if !self.dirty.iter().any(|d| Arc::ptr_eq(d, &file)) {
                self.dirty.push(Arc::clone(&file));
            }
            if file.put(hash, offset, timestamp)? {
                return Ok(());
            }
        }
    }
}

impl Sink for IndexWriter {
    fn name(&self) -> &str {
        INDEX_NAME
    }

    fn start(&mut self, _from: u64) -> Result<()> {
        // `KeyIndex::open` has already cut the files back to `from`.
        Ok(())
    }

    fn dispatch(&mut self, view: &RecordView<'_>) -> Result<()> {
        if view.is_hidden() {
            return Ok(());
        }
        let offset = view.physical_offset;
        let (done_at, done_keys) = self.done;
        if offset < done_at {
            return Ok(());
        }
        let skip = if offset == done_at { done_keys } else { 0 };
        self.done = (offset, skip);
        for (i, key) in view.index_keys().enumerate().skip(skip) {
            let hash = index_hash(&[view.topic, "#", key]);
            self.put(hash, offset, view.store_timestamp)?;
            self.done.1 = i + 1;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        Ok(())
    }

    fn flush(&mut self, offset: u64, timestamp: i64) -> Result<()> {
        self.record(offset, timestamp, 0)
    }

    fn close(&mut self, offset: u64, timestamp: i64) -> Result<()> {
        self.record(offset, timestamp, CLOSED_CLEANLY)
    }

    fn maintain(&mut self, log_start: u64) {
        let gone = self.index.delete_below(log_start);
        if gone > 0 {
            log::info!("removed {gone} index files of deleted commit-log files");
        }
    }
}

impl IndexWriter {
    /// Syncs the files written since the last record, then records the progress: every
    /// record below `offset` is indexed, in the active file's first entries up to its
    /// count (with `mark`: whether the writer closed cleanly).
    fn record(&mut self, offset: u64, timestamp: i64, mark: u64) -> Result<()> {
        for f in &self.dirty {
            f.sync()?;
        }
        let active = self.index.active();
        let (name, count) = active.map_or((0, 0), |f| {
            let name = f
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (name, u64::from(f.header().count.saturating_sub(1)))
        });
        self.progress.store(Progress {
            offset,
            timestamp,
            aux: [name, count | mark],
        })?;
        self.dirty.clear();
        self.durable_time.store(timestamp, Ordering::Release);
        Ok(())
    }
}
