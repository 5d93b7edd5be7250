//! The raw-log primitives any replication scheme builds on (RocketMQ's HA, or a Raft log):
//! ship whole records from a leader, append them on a follower, cut a follower's
//! diverged tail, and a confirm offset that limits readers and acknowledgements.

use std::sync::Arc;

use bytes::Bytes;

use super::MessageStore;
use std::os::unix::fs::FileExt;

use crate::commit_log::record::{
    BLANK_MAGIC, BLANK_RECORD_LEN, MAGIC_V1, MAGIC_V2, Records, Step, blank_fills,
};
use crate::commit_log::replicate::{LogHold, ReplicatedPut};
use crate::config::{FlushMode, StoreConfig};
use crate::error::{Error, Result};
use crate::fs::lock::StoreLock;
use crate::fs::ops;
use crate::layout;
use crate::message::Message;

impl MessageStore {
    /// Whole records of the commit log from `from` (where a record starts), raw, at most
    /// `max_bytes` of them but always the first, never past the end of `from`'s file: the
    /// bytes a leader ships to a follower's [`append_log`](Self::append_log). A file's
    /// closing blank record is shipped too (alone at the end), so the follower moves to its
    /// next file where the leader did. Under sync flush only durable bytes are shipped.
    /// Empty at the log's end (under sync flush, at its flushed end);
    /// [`Error::OutOfRange`] below its start or past its end (the asker diverged).
    ///
    /// ```
    /// # use rocketstore::{Message, MessageStore, StoreConfig};
    /// # let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    /// # let cfg = |d: &std::path::Path| StoreConfig::new(d).commit_log_file_size(1 << 20);
    /// let leader = MessageStore::open(cfg(a.path()))?;
    /// let follower = MessageStore::open(cfg(b.path()))?;
    /// leader.put_message(&Message::new("T", 0u32, &b"replicated"[..]))?;
    /// let mut at = follower.max_physical_offset();
    /// loop {
    ///     let bytes = leader.read_log(at, 64 << 10)?;
    ///     if bytes.is_empty() { break; }
    ///     at = follower.append_log(at, &bytes)?;
    /// }
    /// assert_eq!(&follower.lookup_message(0)?.unwrap().body[..], b"replicated");
    /// # Ok::<(), rocketstore::Error>(())
    /// ```
    pub fn read_log(&self, from: u64, max_bytes: usize) -> Result<Bytes> {
        let limit = self.inner.log.shippable_offset();
        self.inner.log.read_raw_range(from, max_bytes, limit)
    }

    /// Appends `bytes`, read from a leader with [`read_log`](Self::read_log) at `at`, to
    /// this follower's log, whose end must be `at` ([`Error::LogMismatch`] otherwise).
    /// Every record is checked before any is published: its format and body CRC, its
    /// physical offset equal to its position, and queue offsets that continue each queue.
    /// A damaged range, a gap or an overlap is refused ([`Error::Corrupted`],
    /// [`Error::LogMismatch`]) with nothing written. The records keep the leader's store
    /// times, so the follower's files are byte-identical to the leader's; dispatch then
    /// builds its consume queues and key index. Under sync flush the bytes are durable when
    /// this returns. Returns the log's new end.
    pub fn append_log(&self, at: u64, bytes: &[u8]) -> Result<u64> {
        let open = self.inner.open.read();
        if !*open {
            return Err(Error::ShutDown);
        }
        let appended = self.inner.log.append_raw(at, bytes)?;
        if matches!(self.inner.config.flush_mode, FlushMode::Sync { .. }) {
            self.inner.log.flush()?;
        }
        Ok(appended.end)
    }

    /// Keeps retention from deleting the file holding `from` and every later one until
    /// the returned guard drops, so a leader can stream its log (a snapshot) without a
    /// file going mid-way. Retention, by age or by disk pressure, waits meanwhile.
    /// [`Error::OutOfRange`] when `from` is already below the log's start.
    ///
    /// ```
    /// # use rocketstore::{MessageStore, StoreConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20))?;
    /// let hold = store.hold_log(store.min_physical_offset())?;
    /// // ... stream store.read_log(..) from hold.offset() ...
    /// drop(hold);
    /// # Ok::<(), rocketstore::Error>(())
    /// ```
    pub fn hold_log(&self, from: u64) -> Result<LogHold> {
        LogHold::new(Arc::clone(&self.inner.log), from)
    }

    /// The offset below which records are replicated to enough replicas (0 at open).
    pub fn confirm_offset(&self) -> u64 {
        self.inner.log.confirm_offset()
    }

    /// Sets the confirm offset (the replication layer's commit point; it may move back
    /// after a truncation). It must be where a record starts, or at or past the log's end
    /// ([`Error::Corrupted`] otherwise). An offset past the end is taken as the end, as
    /// RocketMQ's HA client takes the smaller of the master's and its own: records
    /// appended or put later are confirmed only when it is set again. With
    /// [`StoreConfig::read_confirmed_only`], readers see only records below it; puts from
    /// [`put_message_replicated`](Self::put_message_replicated) resolve once it passes them.
    pub fn set_confirm_offset(&self, offset: u64) -> Result<()> {
        self.inner.log.set_confirm_offset(offset)
    }

    /// [`put_message_async`](Self::put_message_async), resolving only once the message is
    /// both acknowledged under the flush mode (durable, under sync flush) and below the
    /// confirm offset: a producer acknowledged by it is acknowledged only after
    /// replication. Resolves to [`Error::ShutDown`] if the store shuts down first.
    pub fn put_message_replicated(&self, msg: Message) -> ReplicatedPut {
        ReplicatedPut::new(self.put_message_async(msg), Arc::clone(&self.inner.log))
    }

    /// Cuts the commit log of the closed store at `config.root_dir` back to `to`, which
    /// must be where a record starts or the log's end: for a follower whose tail diverged
    /// from a new leader. Everything from `to` on is removed durably; the next open then
    /// recovers as after a crash, which cuts every consume queue, the key index and the
    /// dispatchers' progress back to the log. Refused ([`Error::StoreLocked`]) while the
    /// store is open, or shut down and not dropped within 5 s in this process (such a
    /// handle still serves reads from the files this rewrites), and ([`Error::Corrupted`])
    /// at an offset inside a record.
    pub fn truncate_log(config: &StoreConfig, to: u64) -> Result<()> {
        config.validate()?;
        // Handles being dropped (a task finishing after a shutdown) are waited for before
        // the OS lock is taken, so that opens meanwhile are not refused; checked again
        // under the lock.
        let lock_file = || Error::StoreLocked {
            path: layout::lock_file(config.root()),
        };
        if !crate::fs::lock::wait_unheld(config.root(), DROP_GRACE) {
            return Err(lock_file());
        }
        let lock = StoreLock::acquire(config.root())?;
        if lock.held_elsewhere() {
            // A handle shut down but not dropped still reads the files this would
            // rewrite in place. Nothing was changed: the marker is left as it was found.
            let _ = lock.release(lock.last_exit_clean());
            return Err(lock_file());
        }
        let result = truncate_files(config, to);
        // Unclean whatever happened: the next open checks and cuts everything to the log.
        let _ = lock.release(false);
        result
    }
}

/// How long `truncate_log` waits for shut-down handles of the store to be dropped (a
/// task still finishing with one, say) before it refuses.
const DROP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn truncate_files(config: &StoreConfig, to: u64) -> Result<()> {
    let dir = layout::commit_log_dir(config.root());
    let files = layout::data_files(&dir).map_err(|e| Error::io("list", &dir, e))?;
    let size = config.commit_log_file_size;
    let Some((start, path)) = files.iter().rev().find(|(s, _)| *s <= to).cloned() else {
        return Err(Error::OutOfRange {
            offset: to,
            start: files.first().map_or(0, |f| f.0),
            end: 0,
        });
    };
    if to == start + size && files.last().is_some_and(|(last, _)| *last == start) {
        // The log's end is this file's end and the next file was never made: nothing
        // lies at or past `to`, provided the file's records (and its closing blank)
        // reach its end; a torn file ends below `to`.
        let file = std::fs::File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        return check_boundary(&file, &path, (start, to), 4 << 20, true);
    }
    if to >= start + size {
        return Err(Error::corrupted(to, "past the end of its file"));
    }
    // `to` must be a record boundary of its file: read up to it, and the header there.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    let rel = (to - start) as usize;
    check_boundary(&file, &path, (start, to), 4 << 20, false)?;
    // The queue table goes first: it describes queues about to shrink, and an open that
    // found it over a cut log would refuse the store (queues shorter than the table with
    // no records left to fill them). Without it the next open checks every queue against
    // the log. Nothing else has changed yet when its removal fails.
    ops::remove_file_with(
        &layout::queue_table_file(config.root()),
        config.io_hook.as_ref(),
    )?;
    ops::sync_dir(config.root())?;
    // Then the checkpoint vouches for nothing past the cut, and the record at `to` goes
    // (synced): from here a crash leaves a log the next open ends at `to` by itself.
    let cp_path = layout::checkpoint_file(config.root());
    if let Some(times) = crate::checkpoint::CheckpointTimes::read(&cp_path)? {
        if !crate::checkpoint::CheckpointTimes::intact(&cp_path) {
            // Another writer ran since (see `ScanPlan::trust_log_start`), so the recorded
            // start is not trusted; the rewrite below gives the checkpoint a CRC that
            // would vouch for it. It goes first: the next open records the files' start.
            ops::remove_file_with(&layout::log_start_file(config.root()), None)?;
            ops::sync_dir(config.root())?;
        }
        crate::checkpoint::CheckpointTimes {
            physic_offset: times.physic_offset.min(to),
            ..times
        }
        .write(&cp_path)?;
    }
    let zeros = vec![0u8; 1 << 20];
    let size = size as usize;
    let head = (size - rel).min(BLANK_RECORD_LEN);
    file.write_all_at(&zeros[..head], to - start)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io("write", &path, e))?;
    // Later files go, newest first, each removal synced before the next (a file system
    // that reorders them could otherwise leave a gap, which the next open refuses); then
    // the rest of `to`'s file is zeroed and synced.
    for (_, p) in files.iter().rev().filter(|(s, _)| *s > start) {
        ops::remove_file_with(p, config.io_hook.as_ref())?;
        ops::sync_dir(&dir)?;
    }
    let mut at = rel + head;
    let mut buf = vec![0u8; zeros.len()];
    while at < size {
        let n = (size - at).min(zeros.len());
        let got = crate::fs::sparse_file::read_fully(&file, &mut buf[..n], at as u64)
            .map_err(|e| Error::io("read", &path, e))?;
        if buf[..got].iter().any(|&b| b != 0) {
            file.write_all_at(&zeros[..n], at as u64)
                .map_err(|e| Error::io("write", &path, e))?;
        }
        at += n;
    }
    file.sync_all().map_err(|e| Error::io("sync", &path, e))
}

/// Checks that `to` is a record boundary of the file at `path` (first offset `start`):
/// the records from the file's start end exactly there. Read in windows of `window` bytes
/// (a record larger than one is read whole), not up to `to` at once: that could be a
/// whole file, 1 GiB by default.
fn check_boundary(
    file: &std::fs::File,
    path: &std::path::Path,
    (start, to): (u64, u64),
    window: usize,
    ends_file: bool,
) -> Result<()> {
    let rel = (to - start) as usize;
    let not_a_boundary = || Error::corrupted(to, "not where a record starts or the log ends");
    // With `ends_file`, `to` is the file's end: the file's closing blank reaches it.
    let blank_closes = |at_blank: &[u8], at: usize| {
        ends_file
            && at_blank.len() >= BLANK_RECORD_LEN
            && at_blank[4..8] == BLANK_MAGIC.to_be_bytes()
            && blank_fills(at_blank, rel - at).1
    };
    let mut base = 0;
    let mut buf = Vec::new();
    while base < rel {
        // The record at `base` may be larger than a window: its size field says, once its
        // magic code says it is a record (a damaged header must not size the read).
        let mut header = [0u8; 8];
        file.read_exact_at(&mut header, base as u64)
            .map_err(|e| Error::io("read", path, e))?;
        if blank_closes(&header, base) {
            return Ok(());
        }
        let magic = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
        if magic != MAGIC_V1 && magic != MAGIC_V2 {
            return Err(not_a_boundary());
        }
        let size = i32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        let size = usize::try_from(size).unwrap_or(0);
        if base + size > rel {
            return Err(not_a_boundary());
        }
        buf.resize(window.max(size).min(rel - base), 0);
        file.read_exact_at(&mut buf, base as u64)
            .map_err(|e| Error::io("read", path, e))?;
        let mut records = Records::new(&buf, start + base as u64);
        loop {
            let pos = records.position();
            let rest = &buf[pos..];
            if rest.is_empty() {
                break;
            }
            // A record the window cuts short is read again from its start.
            let cut = match rest.get(..4) {
                Some(b) => {
                    let size = i32::from_be_bytes(b.try_into().expect("4 bytes"));
                    usize::try_from(size).is_ok_and(|s| s > rest.len())
                }
                None => true,
            };
            if cut && base + buf.len() < rel {
                break;
            }
            if blank_closes(rest, base + pos) {
                return Ok(());
            }
            match records.next() {
                Some(Ok(Step::Record(_))) => {}
                _ => return Err(not_a_boundary()),
            }
        }
        base += records.position();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record start (and the end of the last record) is a boundary, whatever the
    /// window, smaller than a record or not; every other offset is not.
    #[test]
    fn boundaries_are_found_across_windows() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path()).commit_log_file_size(1 << 16);
        let store = MessageStore::open(config).unwrap();
        let mut starts = Vec::new();
        for i in 0..40usize {
            let body = vec![b'x'; 10 + i * 37 % 500];
            let msg = crate::Message::new("T", 0u32, body);
            starts.push(store.put_message(&msg).unwrap().physical_offset);
        }
        let end = store.max_physical_offset();
        drop(store);
        starts.push(end);
        let path = layout::commit_log_file(dir.path(), 0);
        let file = std::fs::File::open(&path).unwrap();
        for window in [8, 100, 333, 4096, 1 << 20] {
            for (i, &at) in starts.iter().enumerate() {
                let ok = check_boundary(&file, &path, (0, at), window, false);
                assert!(ok.is_ok(), "window {window}, record {i}: {ok:?}");
                if at > 0 {
                    let inside = check_boundary(&file, &path, (0, at - 1), window, false);
                    assert!(
                        matches!(inside, Err(Error::Corrupted { .. })),
                        "{window} {i}"
                    );
                }
            }
        }
    }
}
