//! The key index's dispatcher: one entry per key of each record, in log order, into the
//! active index file (a new one when it is full); at each flush the files written are
//! synced, then the progress is recorded with the active file and its entry count, which
//! is exactly what a crash lets the next open keep.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::commit_log::record::RecordView;
use crate::dispatch::progress::{Progress, ProgressFile};
use crate::dispatch::{INDEX_NAME, Sink};
use crate::error::{Error, Result};
use crate::index::file::{IndexFile, index_hash};
use crate::index::{CLOSED_CLEANLY, KeyIndex};

pub(crate) struct IndexWriter {
    index: Arc<KeyIndex>,
    progress: ProgressFile,
    /// Files written since the last flush.
    dirty: Vec<Arc<IndexFile>>,
    /// The file entries go to, and whether it is in `dirty`. Only this writer changes
    /// which file is the index's last (by rolling), so it is looked up only at a roll.
    current: Option<(Arc<IndexFile>, bool)>,
    /// The record being indexed and how many of its keys are in: a round retried after a
    /// failure skips what it already added, so no entry is ever written twice.
    done: (u64, usize),
    /// Store time up to which the index is durable, for the checkpoint's index field.
    durable_time: Arc<AtomicI64>,
    /// A sync of an index file failed: its pages may never reach the disk, and a later
    /// sync would not say so (Linux reports a failed write-back once), so no progress
    /// is recorded again in this run. The next open cuts the index back to the last
    /// progress recorded and indexes again from there.
    sync_failed: Option<String>,
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
            current: None,
            done: (0, 0),
            durable_time,
            sync_failed: None,
        }
    }

    /// The file to put entries in, in `dirty`.
    fn file(&mut self) -> Result<&Arc<IndexFile>> {
        if self.current.as_ref().is_none_or(|(f, _)| f.is_full()) {
            let file = match self.index.active() {
                Some(f) if !f.is_full() => f,
                _ => self.index.roll()?,
            };
            self.current = Some((file, false));
        }
        let (file, listed) = self.current.as_mut().expect("set above");
        if !*listed {
            if !self.dirty.iter().any(|d| Arc::ptr_eq(d, file)) {
                self.dirty.push(Arc::clone(file));
            }
            *listed = true;
        }
        Ok(file)
    }

    fn put(&mut self, hash: u32, offset: u64, timestamp: i64) -> Result<()> {
        loop {
            if self.file()?.put(hash, offset, timestamp)? {
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
        // A few keys at a time: their hash slots (random places in a 20 MB table, a
        // cache miss each) are all read before the first entry is put, so the misses
        // overlap instead of following one another.
        const AT_ONCE: usize = 8;
        let mut keys = view.index_keys().skip(skip).peekable();
        let mut i = skip;
        while keys.peek().is_some() {
            let mut hashes = [0u32; AT_ONCE];
            let mut n = 0;
            for key in keys.by_ref().take(AT_ONCE) {
                hashes[n] = index_hash(&[view.topic, "#", key]);
                n += 1;
            }
            let file = self.file()?;
            for &hash in &hashes[..n] {
                file.touch_slot(hash);
            }
            for &hash in &hashes[..n] {
                self.put(hash, offset, view.store_timestamp)?;
                i += 1;
                self.done.1 = i;
            }
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
        if let Some(e) = &self.sync_failed {
            return Err(Error::io(
                "sync",
                self.index.dir(),
                std::io::Error::other(format!(
                    "an earlier sync of the key index failed ({e}): its progress is not \
                     recorded again in this run; the next open indexes again from the last \
                     progress recorded"
                )),
            ));
        }
        for f in &self.dirty {
            if let Err(e) = f.sync() {
                self.sync_failed = Some(e.to_string());
                return Err(e);
            }
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
        if let Some((_, listed)) = &mut self.current {
            *listed = false;
        }
        self.durable_time.store(timestamp, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IndexShape;

    /// A progress record whose active file has a name of more than 17 digits (its CRC
    /// whole) would make the next file's name one the next open refuses: it is taken as
    /// no progress, and the index starts again with a name an open takes.
    #[test]
    fn a_recorded_file_name_past_17_digits_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (mut progress, _) = ProgressFile::open(dir.path().join("progress")).unwrap();
        let shape = IndexShape {
            slots: 4,
            entries: 4,
            max_files: 0,
        };
        let damaged = Progress {
            offset: 0,
            timestamp: 0,
            aux: [10u64.pow(17), 0],
        };
        let index = KeyIndex::open(
            dir.path().join("index"),
            shape,
            &mut progress,
            Some(damaged),
            (0, 0),
            None,
        )
        .unwrap();
        let file = index.roll().unwrap();
        let name = file
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(name.len(), 17, "{name}");
        drop((file, index));
        let (mut progress, last) = ProgressFile::open(dir.path().join("progress")).unwrap();
        KeyIndex::open(
            dir.path().join("index"),
            shape,
            &mut progress,
            last,
            (0, 0),
            None,
        )
        .unwrap();
    }

    /// Every file written since the last flush is synced by the next one: the file the
    /// writer keeps putting into is listed again after each flush, and a file it rolled
    /// away from stays listed until then.
    #[test]
    fn each_flush_syncs_every_file_written_since_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let (mut progress, none) = ProgressFile::open(dir.path().join("progress")).unwrap();
        let shape = IndexShape {
            slots: 4,
            entries: 4,
            max_files: 0,
        };
        let index = KeyIndex::open(
            dir.path().join("index"),
            shape,
            &mut progress,
            none,
            (0, 0),
            None,
        )
        .unwrap();
        let mut w = IndexWriter::new(Arc::new(index), progress, Arc::new(AtomicI64::new(0)));
        let listed =
            |w: &IndexWriter| -> Vec<_> { w.dirty.iter().map(|f| f.path().to_owned()).collect() };
        let active = |w: &IndexWriter| w.index.active().unwrap().path().to_owned();
        w.put(1, 100, 1_000).unwrap();
        assert_eq!(listed(&w), [active(&w)]);
        w.flush(200, 1_000).unwrap();
        assert!(listed(&w).is_empty());
        w.put(2, 200, 1_000).unwrap();
        assert_eq!(
            listed(&w),
            [active(&w)],
            "the same file, written after the flush"
        );
        let first = active(&w);
        // Three entries fit a file of four (entry 0 is never used): the fourth rolls.
        w.put(3, 300, 1_000).unwrap();
        assert_eq!(active(&w), first);
        assert!(w.index.active().unwrap().is_full());
        w.put(9, 900, 1_000).unwrap();
        assert_ne!(active(&w), first, "rolled");
        assert_eq!(listed(&w), [first, active(&w)]);
        w.flush(1_000, 1_000).unwrap();
        assert!(listed(&w).is_empty());
    }
}
