//! Raw-log primitives for replication: a leader reads whole records of its log as bytes
//! (`read_raw_range`), a follower appends exactly those bytes at its own end
//! (`append_raw`), checked record by record before any of them is published, so the
//! follower's files stay byte-identical to the leader's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::{CommitLog, queue_slot};
use crate::commit_log::flush::PutFuture;
use crate::commit_log::record::{BLANK_RECORD_LEN, Peek, Records, Step, blank_fills, peek};
use crate::error::{Error, Result};
use crate::message::PutResult;

/// What a follower's append added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AppendedRaw {
    /// The log's end after the append (past the file's end when the bytes ended with
    /// the file's blank record: the log goes on in the next file).
    pub end: u64,
    /// Message records appended.
    pub records: u32,
}

impl CommitLog {
    /// Whole records from `from` below `limit`, at most `max_bytes` of them (but always
    /// the first), never past the end of `from`'s file. The file's closing blank record
    /// counts as a record, so a follower that appends it moves to the next file where the
    /// leader did. Empty at `limit`.
    pub(crate) fn read_raw_range(&self, from: u64, max_bytes: usize, limit: u64) -> Result<Bytes> {
        if from > self.write_offset() {
            // Past this log's end: the caller's log has diverged from this one.
            return Err(Error::OutOfRange {
                offset: from,
                start: self.min_offset(),
                end: self.write_offset(),
            });
        }
        if from >= limit {
            return Ok(Bytes::new());
        }
        let bytes = self.bytes_at(from, limit);
        // The start is read after the bytes: retention may delete `from`'s file meanwhile,
        // and finding no file then is not the log's end, which empty means.
        let start = self.min_offset();
        if from < start {
            return Err(Error::OutOfRange {
                offset: from,
                start,
                end: limit,
            });
        }
        let Some(bytes) = bytes else {
            return Ok(Bytes::new());
        };
        let mut pos = 0usize;
        while pos < bytes.len() {
            let at = from + pos as u64;
            let size = match peek(&bytes[pos..], at)? {
                Peek::Record { size } => size,
                // The file's closing blank: its 8 bytes end what is shipped from this file.
                Peek::Blank => BLANK_RECORD_LEN,
                Peek::Empty => break,
            };
            if pos > 0 && pos + size > max_bytes {
                break;
            }
            pos += size;
            if size == BLANK_RECORD_LEN {
                // A record is never this small: the file's closing blank.
                break;
            }
        }
        if pos == 0 {
            return Err(Error::corrupted(from, "no record starts here"));
        }
        Ok(bytes.slice(..pos))
    }

    /// Appends `bytes` (whole records read from a leader's log at `at`) at this log's end,
    /// which must be `at`. Every record is checked first: format, body CRC, its physical
    /// offset equal to its position, a valid topic, and queue offsets that continue each
    /// queue (0 for a transaction's half or rollback). A blank record may only end the
    /// bytes, and must close the file exactly as it closes here; without one, the records
    /// must leave room for it (or fill the file). Nothing is written unless
    /// everything passes. Store times are kept as the leader stamped them.
    pub(crate) fn append_raw(&self, at: u64, bytes: &[u8]) -> Result<AppendedRaw> {
        self.check_poisoned()?;
        self.disk.check()?;
        let mut state = self.state.lock();
        if state.closed {
            return Err(Error::ShutDown);
        }
        let end = state.writer.offset();
        if at != end {
            return Err(Error::LogMismatch { at, end });
        }
        if state.writer.remaining() == 0 {
            // The log ends exactly at a file's end (reopened there, or a roll failed after
            // the last append): the next file first.
            self.roll(&mut state)?;
        }
        let room = state.writer.remaining();
        if bytes.len() > room {
            return Err(Error::corrupted(
                at,
                format!(
                    "{} bytes do not fit the {room} left in the file",
                    bytes.len()
                ),
            ));
        }
        // Check everything before writing anything.
        let mut next: HashMap<(&str, u32), u64> = HashMap::new();
        let mut records = Records::new(bytes, at).verified(true);
        let (mut count, mut last_ts, mut blank_at) = (0u32, None, None);
        while let Some(step) = records.next() {
            match step? {
                Step::Record(v) => {
                    let key = (v.topic, v.queue_id);
                    if v.is_hidden() {
                        if v.queue_offset != 0 {
                            let reason =
                                "a transaction's half or rollback record holds queue offset 0";
                            return Err(Error::corrupted(v.physical_offset, reason));
                        }
                    } else {
                        let expected = match next.get(&key) {
                            Some(n) => *n,
                            None => state
                                .queue_offsets
                                .get(v.topic)
                                .and_then(|q| q.get(&v.queue_id))
                                .copied()
                                .unwrap_or(0),
                        };
                        if v.queue_offset != expected {
                            return Err(Error::corrupted(
                                v.physical_offset,
                                format!(
                                    "{}/{} queue offset {} does not continue the queue at {expected}",
                                    v.topic, v.queue_id, v.queue_offset
                                ),
                            ));
                        }
                        next.insert(key, expected + 1);
                    }
                    count += 1;
                    last_ts = Some(v.store_timestamp);
                }
                Step::Blank => {
                    let pos = records.position();
                    let (declared, fills) = blank_fills(&bytes[pos..], room - pos);
                    if pos + BLANK_RECORD_LEN != bytes.len() || !fills {
                        return Err(Error::corrupted(
                            records.offset(),
                            format!(
                                "a blank record of {declared} bytes must end the bytes and the file ({} left)",
                                room - pos
                            ),
                        ));
                    }
                    blank_at = Some(pos);
                    break;
                }
                Step::Empty => {
                    return Err(Error::corrupted(
                        records.offset(),
                        "zeros where a record should be",
                    ));
                }
            }
        }
        let records_len = blank_at.unwrap_or(bytes.len());
        if blank_at.is_none() && records.position() != bytes.len() {
            return Err(Error::corrupted(
                records.offset(),
                "the bytes end inside a record",
            ));
        }
        let left = room - records_len;
        if blank_at.is_none() && left > 0 && left < BLANK_RECORD_LEN {
            // No writer leaves such a tail: the blank record that closes a file would not fit.
            return Err(Error::corrupted(
                at + records_len as u64,
                format!(
                    "the records leave {left} bytes in the file, too few for its closing blank"
                ),
            ));
        }
        // Write, publish, and move the queues on.
        if let Err(e) = state.writer.write(&bytes[..records_len]) {
            return Err(self.write_failed(&mut state, e));
        }
        state.writer.publish();
        let new_end = at + records_len as u64;
        // SeqCst: see `Wakeup::wake_deep`, which `wake` below calls.
        self.write_offset.store(new_end, Ordering::SeqCst);
        self.appended.fetch_add(u64::from(count), Ordering::Relaxed);
        self.appended_bytes
            .fetch_add(records_len as u64, Ordering::Relaxed);
        for ((topic, queue_id), n) in next {
            *queue_slot(&mut state.queue_offsets, topic, queue_id) = n;
        }
        if let Some(ts) = last_ts {
            state.last_store_timestamp = state.last_store_timestamp.max(ts);
        }
        if blank_at.is_some()
            && let Err(e) = self.roll(&mut state)
        {
            // The same blank record the leader wrote is in and published; the next file
            // could not be made: the next append retries it.
            log::warn!("a follower's next commit-log file: {e}");
        }
        self.wakeup.wake();
        Ok(AppendedRaw {
            end: state.writer.offset(),
            records: count,
        })
    }
}

impl CommitLog {
    /// Offset below which every record is replicated to enough replicas.
    pub(crate) fn confirm_offset(&self) -> u64 {
        self.confirm.offset()
    }

    /// Sets the confirm offset (it may move back, after a truncation), wakes the readers
    /// it limits and the puts waiting for it. An offset past the log's end is taken as
    /// the end: it cannot vouch for records not yet held (a later local put would be
    /// taken as replicated, and readers would stop inside a record).
    pub(crate) fn set_confirm_offset(&self, offset: u64) -> Result<()> {
        // Whatever the writer gathered must be visible for the check below, which looks
        // only up to what that commit made visible (puts may gather more meanwhile).
        let (end, _) = self.commit_staged()?;
        let offset = offset.min(end);
        if offset < end && offset > self.min_offset() {
            // Readers stop there: it must be where a record (or a file's blank) starts.
            if !self.starts_record(offset, end) {
                return Err(Error::corrupted(offset, "not where a record starts"));
            }
        }
        self.confirm.set(offset);
        self.wakeup.wake();
        Ok(())
    }
}

/// Resolves once a put is both acknowledged under the flush mode (durable, under sync
/// flush) and below the confirm offset: replicated, so a producer can be acknowledged.
/// Returned by [`MessageStore::put_message_replicated`](crate::MessageStore::put_message_replicated).
/// Runtime-agnostic, like [`PutFuture`].
#[must_use = "the put is stored either way; await the future to learn whether it is replicated"]
pub struct ReplicatedPut {
    durable: PutFuture,
    result: Option<PutResult>,
    log: Arc<CommitLog>,
    id: u64,
}

impl std::fmt::Debug for ReplicatedPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedPut")
            .field("durable", &self.result.is_some())
            .finish()
    }
}

impl ReplicatedPut {
    pub(crate) fn new(durable: PutFuture, log: Arc<CommitLog>) -> ReplicatedPut {
        let id = log.confirm.new_id();
        ReplicatedPut {
            durable,
            result: None,
            log,
            id,
        }
    }
}

impl Future for ReplicatedPut {
    type Output = Result<PutResult>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match this.result {
            Some(r) => r,
            None => match Pin::new(&mut this.durable).poll(cx) {
                Poll::Ready(Ok(r)) => {
                    this.result = Some(r);
                    r
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            },
        };
        let end = result.physical_offset + u64::from(result.wrote_bytes);
        let confirm = &this.log.confirm;
        if this.log.confirm_offset() >= end {
            return Poll::Ready(Ok(result));
        }
        confirm.register(end, this.id, cx.waker());
        // Checked again after registering: a confirmation in between would not wake us.
        if this.log.confirm_offset() >= end {
            return Poll::Ready(Ok(result));
        }
        if confirm.is_closed() {
            return Poll::Ready(Err(Error::ShutDown));
        }
        Poll::Pending
    }
}

impl Drop for ReplicatedPut {
    fn drop(&mut self) {
        self.log.confirm.deregister(self.id);
    }
}

/// Keeps retention (by age or by disk pressure) from deleting the commit-log file that
/// holds an offset, and every later file, while it lives: for a replication layer that
/// streams the log to a follower. Returned by
/// [`MessageStore::hold_log`](crate::MessageStore::hold_log); released on drop.
pub struct LogHold {
    log: Arc<CommitLog>,
    from: u64,
}

impl LogHold {
    pub(crate) fn new(log: Arc<CommitLog>, from: u64) -> crate::error::Result<LogHold> {
        log.hold(from)?;
        Ok(LogHold { log, from })
    }

    /// The offset held.
    pub fn offset(&self) -> u64 {
        self.from
    }
}

impl Drop for LogHold {
    fn drop(&mut self) {
        self.log.release(self.from);
    }
}

impl std::fmt::Debug for LogHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHold").field("from", &self.from).finish()
    }
}
