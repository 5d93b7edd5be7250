//! `MessageStore`: the facade a broker embeds.

use std::sync::Arc;

use std::time::{Duration, Instant};

use crate::commit_log::flush::{Flusher, PutFuture};
use crate::commit_log::record::{self, EncodedRecord};
use crate::commit_log::{Appended, CommitLog};
use crate::config::{FlushMode, StoreConfig};
use crate::dispatch::thread::DispatcherThread;
use crate::dispatch::{Dispatch, INDEX_NAME};
use crate::error::{Error, Result};
use crate::fs::lock::StoreLock;
use crate::index::{KeyIndex, QueryResult};
use crate::layout;
use crate::message::{Message, MessageId, PutResult, PutStatus, StoredMessage};
use crate::queue::deleted::DeletedTopics;
use crate::queue::dispatch::Dispatcher;
use crate::queue::long_poll::MessageArrival;
use crate::queue::queues::ConsumeQueues;
use crate::queue::read::{
    self, BoundaryType, GetRequest, GetResult, GetStatus, RawGetResult, TagFilter,
};
use crate::stats::StoreStats;
mod dispatchers;
mod recovery;
mod replication;
mod retention;

use recovery::recover;
use retention::{Readers, Retention, RetentionThread};

/// An embedded RocketMQ-style message store: one commit log of fixed-size mapped files,
/// made durable by a sync (group-commit) or async flush thread.
///
/// `MessageStore` is `Send + Sync`: share it (for example in an `Arc`) and put from many
/// threads at once. Dropping it shuts it down cleanly.
///
/// ```
/// use bytes::Bytes;
/// use rocketstore::{FlushMode, Message, MessageStore, PutStatus, StoreConfig};
///
/// # fn main() -> rocketstore::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = MessageStore::open(
///     StoreConfig::new(dir.path())
///         .commit_log_file_size(1 << 20)
///         .flush_mode(FlushMode::sync()),
/// )?;
/// let msg = Message::new("TopicA", 0u32, Bytes::from_static(b"hello")).with_tags("TagA");
/// let put = store.put_message(&msg)?;
/// assert_eq!(put.status, PutStatus::Ok);
/// assert_eq!(put.queue_offset, 0);
///
/// let stored = store.lookup_message(put.physical_offset)?.expect("just stored");
/// assert_eq!(&stored.body[..], b"hello");
/// assert_eq!(stored.tags(), Some("TagA"));
/// store.shutdown()?;
/// # Ok(())
/// # }
/// ```
pub struct MessageStore {
    inner: Arc<Inner>,
}

/// The store's parts. A [`MessageStore`] holds them through an `Arc` so that a shutdown
/// that cannot run on the thread dropping the store (one of the store's own threads,
/// which it must join) can run on a thread of its own.
struct Inner {
    config: StoreConfig,
    log: Arc<CommitLog>,
    queues: Arc<ConsumeQueues>,
    retention: Arc<Retention>,
    /// Where every dispatcher stands: retention deletes only below all of them.
    readers: Arc<Readers>,
    retention_thread: RetentionThread,
    flusher: Flusher,
    dispatcher: Dispatcher,
    /// The key index, when enabled.
    index: Option<Arc<KeyIndex>>,
    /// Dispatchers besides the consume queues: the key index's first, then the broker's.
    side: Vec<DispatcherThread>,
    /// Deleted topics and their cutoffs.
    deleted: Arc<DeletedTopics>,
    lock: StoreLock,
    /// Held for the whole of a shutdown, so a second caller waits for the first and gets
    /// its outcome; `Some` once it is done.
    shutdown_outcome: parking_lot::Mutex<Option<Outcome>>,
    /// False once shutdown begins. Operations that change files hold it shared, so none
    /// runs after the store's lock is released (another process may own the files then).
    open: parking_lot::RwLock<bool>,
    /// What the open's recovery read.
    open_stats: crate::stats::OpenStats,
    /// The store's long-lived threads that can run a caller's code (wakers, broker
    /// dispatchers): a shutdown there cannot join them.
    own_threads: Vec<std::thread::ThreadId>,
}

/// How a shutdown ended.
#[derive(Debug, Clone)]
enum Outcome {
    /// Everything flushed and indexed; the store is marked clean.
    Clean,
    /// Not marked clean (the next open recovers as after a crash), for this reason.
    Unclean(Arc<std::io::Error>),
}

impl std::fmt::Debug for MessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStore")
            .field("root_dir", &self.inner.config.root_dir)
            .field("write_offset", &self.inner.log.write_offset())
            .field("flushed_offset", &self.inner.log.flushed_offset())
            .finish()
    }
}

impl MessageStore {
    /// Creates the store under `config.root_dir`, or reopens it and continues after the
    /// last record. Fails on an invalid config, a damaged store directory, or when the
    /// store is already open ([`Error::StoreLocked`]).
    pub fn open(config: StoreConfig) -> Result<MessageStore> {
        Self::open_with(config, Vec::new())
    }

    /// [`open`](Self::open), with the broker's own dispatchers: each sees every record in
    /// log order on a thread of its own, from its own durable progress (see [`Dispatch`]).
    /// Names must be unique, and `index` is the key index's.
    pub fn open_with(
        config: StoreConfig,
        dispatchers: Vec<Box<dyn Dispatch>>,
    ) -> Result<MessageStore> {
        config.validate()?;
        let mut names = std::collections::HashSet::from([INDEX_NAME.to_owned()]);
        for d in &dispatchers {
            crate::dispatch::validate_name(d.name())?;
            if !names.insert(d.name().to_owned()) {
                return Err(Error::InvalidConfig {
                    reason: format!("two dispatchers are named {:?}", d.name()),
                });
            }
        }
        // Durably: a new root's name must reach the disk in its parent before anything
        // acknowledged is stored below it.
        crate::fs::ops::create_dir_durable(config.root(), config.io_hook.as_ref())?;
        let lock = StoreLock::acquire(config.root())?;
        if !lock.last_exit_clean() {
            log::warn!(
                "{} was not shut down cleanly; checking the log tail",
                config.root().display()
            );
        }
        if let Err(e) = check_tag_code(&config) {
            let _ = lock.release(lock.last_exit_clean());
            return Err(e);
        }
        let deleted_file = layout::deleted_topics_file(config.root());
        let deleted = match DeletedTopics::open(deleted_file, config.io_hook.clone()) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                let _ = lock.release(lock.last_exit_clean());
                return Err(e);
            }
        };
        let recovered = match recover(
            &config,
            lock.last_exit_clean(),
            lock.poisoned_at(),
            &deleted,
        ) {
            Ok(r) => r,
            Err(e) => {
                if !lock.last_exit_clean() {
                    recovery_failed(&config, &lock);
                }
                // A refused open must not turn a clean store into a crashed one: the next
                // attempt would then recover by cutting the log instead of refusing again.
                let _ = lock.release(lock.last_exit_clean());
                return Err(e);
            }
        };
        // The other dispatchers are prepared before any thread starts: a refusal (a bad
        // index file, a broker dispatcher's `start`) leaves nothing running.
        let index_time = Arc::new(std::sync::atomic::AtomicI64::new(
            recovered.checkpoint.times().index,
        ));
        let prepared = match dispatchers::prepare(
            &config,
            &recovered.log,
            Arc::clone(&index_time),
            dispatchers,
        ) {
            Ok(p) => p,
            Err(e) => {
                let _ = lock.release(lock.last_exit_clean());
                return Err(e);
            }
        };
        lock.clear_poison()?;
        let open_stats = recovered.open;
        let log = Arc::new(recovered.log);
        log.record_start();
        log.start_preparing();
        let queues = Arc::new(recovered.queues);
        let flusher = Flusher::start(Arc::clone(&log), config.flush_mode)?;
        let retention = Arc::new(Retention::new(&config));
        let dispatcher = Dispatcher::start(
            Arc::clone(&log),
            Arc::clone(&queues),
            recovered.checkpoint,
            config.consume_queue_flush_interval,
            recovered.resume_dispatch,
            index_time,
            Arc::clone(&deleted),
        )?;
        let (index, side) = match prepared.spawn(&log, &config) {
            Ok(spawned) => spawned,
            Err(e) => {
                // A refused open leaves no thread behind (the dispatch threads have no
                // `Drop` that stops them).
                let _ = dispatcher.shutdown();
                return Err(e);
            }
        };
        let readers = Arc::new(Readers {
            queues: dispatcher.dispatched_handle(),
            others: side.iter().map(DispatcherThread::position).collect(),
        });
        let retention_thread = match RetentionThread::start(
            Arc::clone(&retention),
            Arc::clone(&log),
            Arc::clone(&queues),
            Arc::clone(&readers),
        ) {
            Ok(thread) => thread,
            Err(e) => {
                // A refused open leaves no thread behind: the dispatchers started above
                // have no `Drop` that stops them.
                for d in &side {
                    let _ = d.shutdown();
                }
                let _ = dispatcher.shutdown();
                return Err(e);
            }
        };
        let own_threads = flusher
            .thread_ids()
            .into_iter()
            .chain(dispatcher.thread_id())
            .chain(side.iter().filter_map(DispatcherThread::thread_id))
            .chain(retention_thread.thread_id())
            .collect();
        let inner = Inner {
            own_threads,
            index,
            side,
            deleted,
            config,
            log,
            queues,
            retention,
            readers,
            retention_thread,
            flusher,
            dispatcher,
            lock,
            shutdown_outcome: parking_lot::Mutex::new(None),
            open: parking_lot::RwLock::new(true),
            open_stats,
        };
        Ok(MessageStore {
            inner: Arc::new(inner),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    fn encode(&self, msg: &Message) -> Result<EncodedRecord> {
        record::encode(
            msg,
            &self.inner.config.store_host,
            self.inner.config.max_message_size,
        )
    }

    /// Passes an append's outcome on. A failed append under sync flush may still have
    /// moved the log's end: a roll ends the full file with a blank record before it
    /// takes the next file, and that can fail (a full disk). No producer waits for the
    /// blank, so the flush is asked for here; otherwise readers and dispatch stop short
    /// of the log's end until some later put succeeds, and whoever waits for the end (a
    /// topic deletion) waits as long.
    fn after_append(&self, appended: Result<Appended>) -> Result<Appended> {
        if appended.is_err() && self.inner.config.flush_mode.is_sync() {
            let end = self.inner.log.write_offset();
            if end > self.inner.log.flushed_offset() {
                self.inner.flusher.request_flush(end);
            }
        }
        appended
    }

    fn result(&self, a: Appended, status: PutStatus) -> PutResult {
        PutResult {
            status,
            physical_offset: a.physical_offset,
            queue_offset: a.queue_offset,
            wrote_bytes: a.wrote_bytes,
            store_timestamp: a.store_timestamp,
            msg_id: MessageId {
                store_host: self.inner.config.store_host,
                physical_offset: a.physical_offset,
            },
            message_count: a.count,
        }
    }

    /// Appends one message and, under sync flush, waits until it is durable.
    ///
    /// Returns [`PutStatus::FlushDiskTimeout`] when the message is stored but the flush did
    /// not confirm it in time. Invalid messages are refused with a typed error and change
    /// nothing.
    pub fn put_message(&self, msg: &Message) -> Result<PutResult> {
        let started = Instant::now();
        let mut record = [self.encode(msg)?];
        let appended = self.after_append(self.inner.log.append(
            &mut record,
            &msg.topic,
            msg.queue_id,
            started,
        ))?;
        self.acknowledge(appended, started)
    }

    /// [`MessageStore::put_message`] with a store time chosen by the caller rather than
    /// the clock, as a replicated log applies messages with the time its leader assigned,
    /// so that every replica stores the same bytes. The time is raised to the last store
    /// time when it is older: store times never decrease in log order.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use rocketstore::{Message, MessageStore, StoreConfig};
    ///
    /// # fn main() -> rocketstore::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20))?;
    /// let msg = Message::new("TopicA", 0u32, Bytes::from_static(b"m0"));
    /// let put = store.put_message_stamped(&msg, 1_700_000_000_000)?;
    /// assert_eq!(put.store_timestamp, 1_700_000_000_000);
    /// let earlier = store.put_message_stamped(&msg, 5)?;
    /// assert_eq!(earlier.store_timestamp, 1_700_000_000_000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn put_message_stamped(&self, msg: &Message, store_timestamp: i64) -> Result<PutResult> {
        let started = Instant::now();
        let mut record = [self.encode(msg)?];
        let appended = self.after_append(self.inner.log.append_stamped(
            &mut record,
            &msg.topic,
            msg.queue_id,
            Some(store_timestamp),
            started,
        ))?;
        self.acknowledge(appended, started)
    }

    /// Appends a batch of messages of one topic and queue, with consecutive queue offsets,
    /// contiguously in one file. The result describes the first message; `wrote_bytes` and
    /// `message_count` cover the batch. Its bodies may add up to at most
    /// [`StoreConfig::max_message_size`] bytes, its records to at most 64 KiB more (as one
    /// message's record, with its headers and properties, is), and they must fit in one
    /// file.
    pub fn put_messages(&self, msgs: &[Message]) -> Result<PutResult> {
        let started = Instant::now();
        let first = msgs.first().ok_or_else(|| Error::InvalidBatch {
            reason: "empty batch".into(),
        })?;
        if let Some(other) = msgs
            .iter()
            .find(|m| m.topic != first.topic || m.queue_id != first.queue_id)
        {
            return Err(Error::InvalidBatch {
                reason: format!(
                    "mixes {}/{} with {}/{}",
                    first.topic, first.queue_id, other.topic, other.queue_id
                ),
            });
        }
        // Checked before anything is copied: each message (as `encode` checks it), the
        // bodies' sum, and the records' sum (small bodies with large properties must not
        // make a batch the put lock would copy for long: its records are bounded as one
        // message's are, body and all).
        let (host, max) = (
            &self.inner.config.store_host,
            self.inner.config.max_message_size,
        );
        let encoded = msgs
            .iter()
            .map(|m| record::encoded_len(m, host, max))
            .sum::<Result<usize>>()?;
        let size: usize = msgs.iter().map(|m| m.body.len()).sum();
        if size > max {
            return Err(Error::BatchTooLarge { size, max });
        }
        let max = max.saturating_add(BATCH_RECORD_SLACK);
        if encoded > max {
            return Err(Error::BatchTooLarge { size: encoded, max });
        }
        let mut records = msgs
            .iter()
            .map(|m| self.encode(m))
            .collect::<Result<Vec<_>>>()?;
        let appended = self.after_append(self.inner.log.append(
            &mut records,
            &first.topic,
            first.queue_id,
            started,
        ))?;
        self.acknowledge(appended, started)
    }

    /// Waits for the flush the mode asks for, and counts the put's latency: to the end of
    /// the append under async flush, to the flush under sync flush.
    fn acknowledge(&self, appended: Appended, started: Instant) -> Result<PutResult> {
        let (status, took) = match self.inner.config.flush_mode {
            FlushMode::Sync { .. } => {
                let end = appended.physical_offset + u64::from(appended.wrote_bytes);
                let status = self.inner.flusher.wait_durable(end)?;
                (status, started.elapsed())
            }
            FlushMode::Async { .. } => (
                PutStatus::Ok,
                appended.at.saturating_duration_since(started),
            ),
        };
        self.inner.log.counters().put_latency(took);
        Ok(self.result(appended, status))
    }

    /// Appends `msg` now, on the calling thread (a copy under the append lock), and returns
    /// a future that resolves when the put is acknowledged under the flush mode, without
    /// blocking: many puts can be in flight while the group commit makes them durable.
    /// Works under any executor (or none: the flush thread wakes the future).
    pub fn put_message_async(&self, msg: Message) -> PutFuture {
        let started = Instant::now();
        let appended = match self.encode(&msg).and_then(|r| {
            self.after_append(
                self.inner
                    .log
                    .append(&mut [r], &msg.topic, msg.queue_id, started),
            )
        }) {
            Ok(a) => a,
            Err(e) => return PutFuture::ready(Err(e)),
        };
        let result = self.result(appended, PutStatus::Ok);
        match self.inner.config.flush_mode {
            FlushMode::Sync { .. } => self.inner.flusher.ack_future(result),
            FlushMode::Async { .. } => PutFuture::ready(Ok(result)),
        }
    }

    /// The message whose record starts at `physical_offset`, or `None` when nothing
    /// readable is there. An offset inside a record is refused with [`Error::Corrupted`].
    pub fn lookup_message(&self, physical_offset: u64) -> Result<Option<StoredMessage>> {
        self.inner
            .log
            .read(physical_offset, self.inner.log.readable_offset())
    }

    /// Up to `max_count` messages of `topic`/`queue_id` from queue offset `offset`, capped
    /// at [`StoreConfig::max_transfer_bytes`] (one message always fits). Only indexed
    /// messages are returned: under sync flush that means durable ones.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use std::time::Duration;
    /// use rocketstore::{GetStatus, Message, MessageStore, StoreConfig};
    ///
    /// # fn main() -> rocketstore::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20))?;
    /// let put = store.put_message(&Message::new("TopicA", 0u32, Bytes::from_static(b"m0")))?;
    /// assert!(store.wait_dispatched(put.physical_offset, Duration::from_secs(10)));
    /// let got = store.get_message("TopicA", 0, 0, 32)?;
    /// assert_eq!(got.status, GetStatus::Found);
    /// assert_eq!(&got.messages[0].body[..], b"m0");
    /// assert_eq!(got.next_offset, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_message(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: usize,
    ) -> Result<GetResult> {
        self.get_message_filtered(topic, queue_id, offset, max_count, None)
    }

    /// [`get_message`](Self::get_message) keeping only messages whose tag passes `filter`
    /// (tag hash first, then the exact tag). Skipped messages still advance `next_offset`.
    pub fn get_message_filtered(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: usize,
        filter: Option<&TagFilter>,
    ) -> Result<GetResult> {
        let mut req = GetRequest::new(topic, queue_id, offset).max_count(max_count);
        req.filter = filter;
        self.get(&req)
    }

    /// The messages `req` asks for, within its count and byte limits. The RocketMQ
    /// statuses apply (see [`GetStatus`]); a consumer continues at `next_offset`, which
    /// always moves on past entries it cannot use.
    ///
    /// RocketMQ also caps a pull at 256 KiB / 32 messages when the data is in memory and
    /// 64 KiB / 8 when it is on disk; this store does not tell the two apart: the caller's
    /// limits (or [`StoreConfig::max_transfer_bytes`]) hold either way.
    pub fn get(&self, req: &GetRequest<'_>) -> Result<GetResult> {
        let got = read::get_message(
            &self.inner.log,
            &self.inner.queues,
            req,
            self.inner.config.max_transfer_bytes,
        )?;
        self.inner
            .log
            .counters()
            .got(got.status == GetStatus::Found);
        Ok(got)
    }

    /// [`get`](Self::get), returning each record's bytes as stored: zero-copy slices of the
    /// mapped files, for a pull response sent on without re-encoding. Records are checked
    /// to belong to the queue, as by `get`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use rocketstore::{format, GetRequest, GetStatus, Message, MessageStore, StoreConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20)).unwrap();
    /// let put = store.put_message(&Message::new("T", 0u32, &b"raw"[..])).unwrap();
    /// assert!(store.wait_dispatched(put.physical_offset, Duration::from_secs(10)));
    /// let raw = store.get_raw(&GetRequest::new("T", 0, 0)).unwrap();
    /// assert_eq!(raw.status, GetStatus::Found);
    /// let view = format::parse(&raw.records[0], put.physical_offset).unwrap();
    /// assert_eq!(view.body_bytes(), b"raw");
    /// ```
    pub fn get_raw(&self, req: &GetRequest<'_>) -> Result<RawGetResult> {
        let got = read::get_raw(
            &self.inner.log,
            &self.inner.queues,
            req,
            self.inner.config.max_transfer_bytes,
        )?;
        self.inner
            .log
            .counters()
            .got(got.status == GetStatus::Found);
        Ok(got)
    }

    /// A snapshot of what the store counted since it was opened: puts, put latency,
    /// flushes and group sizes, lags, refusals, roll waits and gets. Cheap enough to call
    /// every second for a metrics exporter.
    ///
    /// ```
    /// # use rocketstore::{Message, MessageStore, StoreConfig, FlushMode};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20).flush_mode(FlushMode::sync())).unwrap();
    /// store.put_message(&Message::new("T", 0u32, &b"x"[..])).unwrap();
    /// let stats = store.stats();
    /// assert_eq!(stats.puts, 1);
    /// assert!(stats.flushed_messages >= 1); // sync flush: durable when acknowledged
    /// assert_eq!(stats.put_latency_us.total(), 1);
    /// ```
    pub fn stats(&self) -> StoreStats {
        let mut stats = self
            .inner
            .log
            .stats(self.inner.dispatcher.dispatched_offset());
        stats.dispatch_error = self.inner.dispatcher.failure();
        stats.dispatchers = self
            .inner
            .side
            .iter()
            .map(DispatcherThread::stats)
            .collect();
        stats.open = self.inner.open_stats;
        stats
    }

    /// First queue offset of `topic`/`queue_id` still stored (0 for an unknown queue).
    pub fn min_offset_in_queue(&self, topic: &str, queue_id: u32) -> u64 {
        self.inner
            .queues
            .get(topic, queue_id)
            .map_or(0, |q| q.min_offset())
    }

    /// One past the last indexed queue offset of `topic`/`queue_id` (0 for an unknown queue).
    pub fn max_offset_in_queue(&self, topic: &str, queue_id: u32) -> u64 {
        self.inner
            .queues
            .get(topic, queue_id)
            .map_or(0, |q| q.max_offset())
    }

    /// The first queue offset whose message was stored at or after `timestamp_ms`, by
    /// binary search on store time; the max offset when every message is older.
    pub fn offset_by_time(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> Result<u64> {
        self.offset_by_time_with(topic, queue_id, timestamp_ms, BoundaryType::Lower)
    }

    /// The queue offset on `boundary`'s side of `timestamp_ms`: the first stored at or
    /// after it ([`BoundaryType::Lower`]), or the last stored at or before it
    /// ([`BoundaryType::Upper`]). 0 for an unknown queue.
    pub fn offset_by_time_with(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: i64,
        boundary: BoundaryType,
    ) -> Result<u64> {
        read::offset_by_time(
            &self.inner.log,
            &self.inner.queues,
            (topic, queue_id),
            timestamp_ms,
            boundary,
        )
    }

    /// Store time of the oldest message still stored in `topic`/`queue_id`; `None` for
    /// an empty or unknown queue.
    pub fn earliest_message_time(&self, topic: &str, queue_id: u32) -> Result<Option<i64>> {
        let min = self.min_offset_in_queue(topic, queue_id);
        Ok(
            read::locate(&self.inner.log, &self.inner.queues, (topic, queue_id), min)?
                .map(|(_, t)| t),
        )
    }

    /// Store time of the message at `queue_offset` of `topic`/`queue_id`, if stored.
    pub fn message_store_time(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<Option<i64>> {
        Ok(read::locate(
            &self.inner.log,
            &self.inner.queues,
            (topic, queue_id),
            queue_offset,
        )?
        .map(|(_, t)| t))
    }

    /// Up to `max` consume-queue entries of `topic`/`queue_id` from `queue_offset`: each
    /// message's commit-log offset, record size and tag code (the tag hash, or the code a
    /// [`TagCode`](crate::TagCode) chose, such as a delayed message's delivery time, which
    /// a schedule service reads here without reading the message). Fewer than `max` at
    /// the end of a queue file (ask again from the next offset) and before the first
    /// message not readable yet (under [`StoreConfig::read_confirmed_only`], past the
    /// confirm offset); empty below the queue's
    /// [`min_offset_in_queue`](Self::min_offset_in_queue), at or past its
    /// [`max_offset_in_queue`](Self::max_offset_in_queue), and for an unknown queue.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use rocketstore::{Message, MessageStore, StoreConfig, format};
    ///
    /// # fn main() -> rocketstore::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20))?;
    /// let put = store.put_message(&Message::new("T", 0u32, Bytes::from_static(b"m")).with_tags("A"))?;
    /// store.wait_dispatched(put.physical_offset, std::time::Duration::from_secs(5));
    /// let entries = store.queue_entries("T", 0, 0, 32)?;
    /// assert_eq!(entries[0].physical_offset, put.physical_offset);
    /// assert_eq!(entries[0].tag_hash, format::tag_hash(Some("A")));
    /// # Ok(())
    /// # }
    /// ```
    pub fn queue_entries(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        max: usize,
    ) -> Result<Vec<crate::format::CqEntry>> {
        let mut entries = match self.inner.queues.get(topic, queue_id) {
            Some(q) if queue_offset >= q.min_offset() => q.entries(queue_offset, max)?,
            _ => return Ok(Vec::new()),
        };
        // As reads do: nothing at or past what may be read (`read_confirmed_only`).
        let readable = self.inner.log.readable_offset();
        if let Some(cut) = entries.iter().position(|e| e.physical_offset >= readable) {
            entries.truncate(cut);
        }
        Ok(entries)
    }

    /// Commit-log offset of the message at `queue_offset` of `topic`/`queue_id`, if
    /// stored (RocketMQ's `getCommitLogOffsetInQueue`).
    pub fn commit_log_offset_in_queue(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Result<Option<u64>> {
        Ok(read::locate(
            &self.inner.log,
            &self.inner.queues,
            (topic, queue_id),
            queue_offset,
        )?
        .map(|(o, _)| o))
    }

    /// Commit-log offset up to which every record is indexed in its consume queue.
    pub fn dispatched_physical_offset(&self) -> u64 {
        self.inner.dispatcher.dispatched_offset()
    }

    /// Waits until the record that starts at `physical_offset` is indexed and so readable
    /// through [`get_message`](Self::get_message). Returns false when `timeout` passes
    /// first, or when the dispatch thread has ended.
    ///
    /// `physical_offset` must be where a record starts (a [`PutResult::physical_offset`]).
    /// To wait for everything written so far, pass the log's end to
    /// [`wait_dispatched_to`](Self::wait_dispatched_to) instead: no record starts there,
    /// so this method would wait for the next put.
    pub fn wait_dispatched(&self, physical_offset: u64, timeout: Duration) -> bool {
        self.inner
            .dispatcher
            .wait_dispatched(physical_offset, timeout)
    }

    /// Waits until every record that starts below `end` is indexed. Any offset is
    /// accepted; `wait_dispatched_to(store.max_physical_offset(), t)` waits for everything
    /// written so far (under sync flush, once it is durable). Returns false when `timeout`
    /// passes first, or when the dispatch thread has ended.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use rocketstore::{Message, MessageStore, StoreConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20)).unwrap();
    /// for i in 0..10u32 {
    ///     store.put_message(&Message::new("T", i % 2, &b"x"[..])).unwrap();
    /// }
    /// assert!(store.wait_dispatched_to(store.max_physical_offset(), Duration::from_secs(10)));
    /// assert_eq!(store.max_offset_in_queue("T", 1), 5);
    /// ```
    pub fn wait_dispatched_to(&self, end: u64, timeout: Duration) -> bool {
        self.inner.dispatcher.wait_dispatched_to(end, timeout)
    }

    /// Blocks until `topic`/`queue_id` holds a message at queue offset `offset` (its max
    /// offset has passed `offset`), for a long-polling consumer. Returns true at once when
    /// it already does, and also when the topic is deleted meanwhile (pull again to see);
    /// false when `timeout` passes first or the store shuts down. Woken by
    /// dispatch when it indexes the message, never by polling. The queue need not exist
    /// yet.
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// # use rocketstore::{Message, MessageStore, StoreConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = Arc::new(MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20)).unwrap());
    /// let producer = Arc::clone(&store);
    /// let t = std::thread::spawn(move || producer.put_message(&Message::new("T", 3u32, &b"x"[..])));
    /// assert!(store.wait_for_message("T", 3, 0, Duration::from_secs(10)));
    /// assert_eq!(store.get_message("T", 3, 0, 1).unwrap().messages.len(), 1);
    /// # t.join().unwrap().unwrap();
    /// ```
    pub fn wait_for_message(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        timeout: Duration,
    ) -> bool {
        self.message_arrival(topic, queue_id, offset).wait(timeout)
    }

    /// A future that resolves to true once `topic`/`queue_id` holds a message at queue
    /// offset `offset` (or the topic is deleted: pull again), or to false if the store
    /// shuts down first: the runtime-agnostic
    /// form of [`wait_for_message`](Self::wait_for_message). It has no timeout; race it
    /// against your runtime's timer, and drop it to cancel the wait.
    pub fn message_arrival(&self, topic: &str, queue_id: u32, offset: u64) -> MessageArrival {
        MessageArrival::new(Arc::clone(&self.inner.queues), topic, queue_id, offset)
    }

    /// Up to `max` messages of `topic` whose key is `key` (a word of the `KEYS` property,
    /// or the `UNIQ_KEY` property), stored within `begin_ms..=end_ms`, newest first, by the
    /// key index. Every candidate the index gives is read back and checked, so a hash
    /// collision never returns another key's or another topic's message. A message is
    /// found once the index has dispatched it (see
    /// [`wait_dispatcher`](Self::wait_dispatcher) with `"index"`). At most
    /// [`StoreConfig::index_query_max_mismatches`] candidates of other keys (hash
    /// collisions) are read: past them the result is marked
    /// [`incomplete`](QueryResult::incomplete). Fails with
    /// [`Error::InvalidConfig`] when the index is disabled.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use rocketstore::{Message, MessageStore, StoreConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20).index_file_shape(1024, 4096)).unwrap();
    /// let msg = Message::new("TopicA", 0u32, &b"paid"[..]).with_keys(["order-42"]);
    /// store.put_message(&msg).unwrap();
    /// assert!(store.wait_dispatcher("index", store.max_physical_offset(), Duration::from_secs(10)));
    /// let r = store.query_message("TopicA", "order-42", 32, 0, i64::MAX).unwrap();
    /// assert_eq!(r.messages.len(), 1);
    /// assert_eq!(&r.messages[0].body[..], b"paid");
    /// assert!(store.query_message("TopicB", "order-42", 32, 0, i64::MAX).unwrap().messages.is_empty());
    /// ```
    pub fn query_message(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin_ms: i64,
        end_ms: i64,
    ) -> Result<QueryResult> {
        let index = self
            .inner
            .index
            .as_ref()
            .ok_or_else(|| Error::InvalidConfig {
                reason: "the key index is disabled (StoreConfig::index_enabled)".into(),
            })?;
        if key.is_empty() {
            // No message has an empty key (a KEYS value with two spaces in a row does not
            // give it one).
            return Ok(QueryResult::default());
        }
        index.query(
            &self.inner.log,
            &self.inner.deleted,
            (topic, key),
            (max, self.inner.config.index_query_max_mismatches),
            (begin_ms, end_ms),
        )
    }

    /// Deletes `topic`: its consume queues go, durably, and none of its messages stored so
    /// far is returned again, by queue or by key (the records stay in the commit log until
    /// retention deletes their files). Puts to the topic that follow start it again at
    /// queue offset 0. Waits until dispatch has indexed everything put before the call (so
    /// while dispatch is stalled on a full disk, it waits for space); the deletion itself
    /// is durable before any later put to the topic is stored. Broker dispatchers still
    /// see the records: what they keep of them is theirs to delete.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use rocketstore::{GetStatus, Message, MessageStore, StoreConfig};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(1 << 20)).unwrap();
    /// store.put_message(&Message::new("Old", 0u32, &b"x"[..])).unwrap();
    /// store.delete_topic("Old").unwrap();
    /// assert_eq!(store.get_message("Old", 0, 0, 8).unwrap().status, GetStatus::NoMessageInQueue);
    /// assert_eq!(store.put_message(&Message::new("Old", 0u32, &b"y"[..])).unwrap().queue_offset, 0);
    /// ```
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        crate::commit_log::record::validate_topic(topic)?;
        let open = self.inner.open.read();
        if !*open {
            return Err(Error::ShutDown);
        }
        let deleted = &self.inner.deleted;
        self.inner
            .log
            .reset_topic(topic, |cutoff| deleted.record(topic, cutoff))?;
        // Recorded: a shutdown may come now (it completes the deletion as it drains).
        drop(open);
        self.inner.log.wakeup().ring();
        if !self
            .inner
            .dispatcher
            .wait_for(Duration::MAX, || deleted.is_done(topic))
        {
            // A dispatch thread that panicked poisoned the store: say so, not "stalled"
            // (which is for lack of space, and passes).
            if self.inner.log.is_poisoned() {
                return Err(self.inner.log.poison_error());
            }
            return Err(self
                .inner
                .dispatcher
                .failure()
                .map_or(Error::ShutDown, |reason| Error::DispatchStalled { reason }));
        }
        Ok(())
    }

    /// Waits until the dispatcher `name` (`"index"` for the key index, or a broker's
    /// [`Dispatch`]) has dispatched every record below `end`. False when `timeout` passes
    /// first, when its thread has ended, or when no dispatcher has that name.
    pub fn wait_dispatcher(&self, name: &str, end: u64, timeout: Duration) -> bool {
        self.inner
            .side
            .iter()
            .find(|d| d.name() == name)
            .is_some_and(|d| d.wait_to(end, timeout))
    }

    /// Waits until the dispatcher `name` has recorded, durably, that it dispatched every
    /// record below `end` (its flush ran, every `consume_queue_flush_interval`): a crash
    /// from then on does not give it those records again, and retention may delete them.
    /// False when `timeout` passes first, when its thread has ended, or when no
    /// dispatcher has that name.
    pub fn wait_dispatcher_durable(&self, name: &str, end: u64, timeout: Duration) -> bool {
        self.inner
            .side
            .iter()
            .find(|d| d.name() == name)
            .is_some_and(|d| d.wait_durable_to(end, timeout))
    }

    /// Whether puts are being refused with [`Error::PageCacheBusy`] right now: the append
    /// lock has been held longer than [`StoreConfig::busy_limit`].
    pub fn is_page_cache_busy(&self) -> bool {
        self.inner.log.is_busy()
    }

    /// Deletes now every commit-log file older than [`StoreConfig::file_reserved_time`]
    /// (never the one being written, nor one the dispatch thread, the key index or a
    /// broker's dispatcher has not finished with)
    /// and the consume-queue files wholly below the log's new start; returns how many commit-log files went. Readers holding messages from a
    /// deleted file keep them valid until they drop them.
    pub fn delete_expired_files(&self) -> Result<usize> {
        let open = self.inner.open.read();
        if !*open {
            return Err(Error::ShutDown);
        }
        self.inner.retention.delete_expired(
            &self.inner.log,
            &self.inner.queues,
            self.inner.readers.floor(),
        )
    }

    /// Whether puts are being refused with [`Error::DiskFull`]: the store's filesystem was
    /// fuller than [`StoreConfig::disk_full_ratio`] at the last sample.
    pub fn is_disk_full(&self) -> bool {
        self.inner.log.disk().is_full()
    }

    /// The refusal a put would get now for lack of space ([`Error::DiskFull`] or
    /// [`Error::DispatchStalled`]), if any: a layer that queues work for the store (a
    /// replication log) can refuse it up front instead of piling it up.
    pub fn check_space(&self) -> Result<()> {
        self.inner.log.disk().check()
    }

    /// Flushes everything appended so far and returns the flushed offset. A failure
    /// poisons the store.
    pub fn flush(&self) -> Result<u64> {
        self.inner.log.flush()
    }

    /// End of the commit log: the offset the next record will get (or the start of the
    /// next file when this one is full).
    pub fn max_physical_offset(&self) -> u64 {
        self.inner.log.write_offset()
    }

    /// First commit-log offset still stored.
    pub fn min_physical_offset(&self) -> u64 {
        self.inner.log.min_offset()
    }

    /// The commit log itself, for the crate's unit tests.
    #[cfg(test)]
    pub(crate) fn commit_log(&self) -> &CommitLog {
        &self.inner.log
    }

    /// End of the durable part of the commit log.
    pub fn flushed_physical_offset(&self) -> u64 {
        self.inner.log.flushed_offset()
    }

    /// Refuses further puts, stops the threads, flushes everything and releases the
    /// store's lock, so it can be opened again. Reads keep working until the handle is
    /// dropped, except through a queue not read since the open (past
    /// [`StoreConfig::lazy_queue_load_threshold`](crate::StoreConfig::lazy_queue_load_threshold)
    /// queues): `get_message` and the other reads of its entries fail with
    /// [`Error::ShutDown`], and its offsets are what the queue table says (its minimum 0).
    /// Also run on drop.
    ///
    /// Idempotent: a second call, even a concurrent one, waits until the first is done and
    /// returns the same outcome. Fails with [`Error::Poisoned`] when the store could not be
    /// marked clean, its cause saying why: the store is poisoned (a flush failed, or a
    /// background thread panicked), the consume queues or the key index could not be made
    /// durable, a consume queue was found damaged, or the lock's marker could not be
    /// removed. The next open then recovers as after a crash. Under
    /// [`StoreConfig::read_confirmed_only`](crate::StoreConfig::read_confirmed_only), a
    /// store whose queues stop at the confirm offset, short of the log's end, returns `Ok`
    /// but is also left for the next open to index the rest, as after a crash.
    ///
    /// Called from one of the store's own threads (a future's waker that polls its task
    /// there, a broker's [`Dispatch`](crate::Dispatch)), it cannot wait for those threads
    /// to stop: it starts the shutdown on a thread of its own and returns
    /// [`Error::ShutDown`] at once; a call from any other thread waits for the outcome.
    /// Dropping the last handle there does the same.
    pub fn shutdown(&self) -> Result<()> {
        match self.inner.on_own_thread() {
            false => self.inner.shutdown(),
            // A store thread, or one running a shutdown already (of this store, whose
            // outcome it holds the lock of, or of another whose waker called this).
            true => {
                if let Some(outcome) = self.inner.finished() {
                    return outcome;
                }
                Inner::shut_down_elsewhere(Arc::clone(&self.inner));
                Err(Error::ShutDown)
            }
        }
    }
}

/// How far a batch's records may exceed `max_message_size`: no single message's record
/// exceeds its body by more (32 KiB of properties, a 255-byte topic, the header).
const BATCH_RECORD_SLACK: usize = 64 << 10;

thread_local! {
    /// Set while this thread runs a store's shutdown: the wakers the shutdown wakes run
    /// here, and one that drops the last handle or calls `shutdown` must not wait for the
    /// outcome this thread is producing (its lock is not reentrant).
    static SHUTTING_DOWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Inner {
    /// Shuts down here, or waits for the shutdown another thread is running.
    fn shutdown(&self) -> Result<()> {
        let mut outcome = self.shutdown_outcome.lock();
        if outcome.is_none() {
            /// Puts the flag back as it was, even when the shutdown panics.
            struct Restore(bool);
            impl Drop for Restore {
                fn drop(&mut self) {
                    SHUTTING_DOWN.set(self.0);
                }
            }
            let _restore = Restore(SHUTTING_DOWN.replace(true));
            *outcome = Some(self.shut_down_now());
        }
        self.result(outcome.as_ref().expect("set above"))
    }

    fn result(&self, outcome: &Outcome) -> Result<()> {
        match outcome {
            Outcome::Clean => Ok(()),
            Outcome::Unclean(_) if self.log.is_poisoned() => Err(self.log.poison_error()),
            Outcome::Unclean(cause) => Err(Error::poisoned(cause)),
        }
    }

    /// The outcome of a shutdown that has finished; `None` while none has, or one is
    /// running (its thread holds the outcome's lock).
    fn finished(&self) -> Option<Result<()>> {
        let outcome = self.shutdown_outcome.try_lock()?;
        outcome.as_ref().map(|o| self.result(o))
    }

    /// Whether this is one of the store's own threads, which a shutdown joins, or a thread
    /// running a shutdown (of this store or another) already.
    fn on_own_thread(&self) -> bool {
        SHUTTING_DOWN.get() || self.own_threads.contains(&std::thread::current().id())
    }

    /// Runs the shutdown on a thread of its own, which holds the store until it is done.
    fn shut_down_elsewhere(inner: Arc<Inner>) {
        let kept = Arc::clone(&inner);
        let spawned = std::thread::Builder::new()
            .name("rocketstore-shutdown".into())
            .spawn(move || {
                if let Err(e) = inner.shutdown() {
                    log::error!("shutdown: {e}");
                }
            });
        match spawned {
            Ok(_) => drop(kept),
            Err(e) => {
                // Nothing else can stop the threads without joining the current one: the
                // store is leaked, open (its lock held) and unclean, until the process ends;
                // dropped here, its lock would go while its threads ran on.
                log::error!("the store could not start its shutdown thread: {e}");
                std::mem::forget(kept);
            }
        }
    }

    fn shut_down_now(&self) -> Outcome {
        *self.open.write() = false;
        self.log.close();
        self.flusher.shutdown();
        let indexed = self.dispatcher.shutdown();
        // The key index's last flush must succeed for the next open to trust its files
        // as they are; a broker's dispatcher only replays from its last progress.
        let indexed = self
            .side
            .iter()
            .fold(indexed, |result, d| match d.shutdown() {
                Err(e) if d.name() == INDEX_NAME => {
                    log::error!("the key index was not completed: {e}");
                    result.and(Err(e))
                }
                Err(e) => {
                    log::error!("{e}");
                    result
                }
                Ok(()) => result,
            });
        self.retention_thread.shutdown();
        if let Err(e) = self.dispatcher.store_index_time() {
            log::warn!("the checkpoint's index time: {e}");
        }
        // Only a store whose every byte and index entry reached the disk is marked clean;
        // the queue table lets the next open check that no queue went missing.
        let unclean = if self.log.is_poisoned() {
            Some(self.log.poison_error().to_io("shutdown"))
        } else if let Err(e) = indexed {
            log::error!("consume queues were not completed: {e}");
            Some(e.to_io("shutdown"))
        } else if let Err(e) = self.queues.write_table(
            &layout::queue_table_file(self.config.root()),
            self.log.write_offset(),
            // Their rows describe queues the next open removes first (the deletion waits
            // for a dispatch that stopped short: the confirm offset).
            &self.deleted.not_done(),
        ) {
            // A full disk must not turn a clean shutdown into a crash: the table of the last
            // open stays, and is still a lower bound (queues only grow while the store runs).
            log::warn!("the queue table could not be written, keeping the last one: {e}");
            None
        } else {
            None
        };
        // Checked last: a reader may find a damaged queue until the very end. From here
        // on a read loads no queue (a load changes files, and the next owner may be
        // writing them once the lock is released).
        self.queues.close();
        let unclean = if self.queues.suspect() {
            let why = "a consume queue was found damaged";
            log::error!("{why}: leaving the store for the next open to rebuild the queues");
            if let Err(e) = self.dispatcher.forget_queue_time() {
                log::error!("resetting the checkpoint's queue time: {e}");
            }
            unclean.or_else(|| Some(std::sync::Arc::new(std::io::Error::other(why))))
        } else {
            unclean
        };
        // Under `read_confirmed_only` dispatch stops at the confirm offset, and the queues
        // do not cover the log: the next open indexes the rest from the checkpoint, as after
        // a crash (a clean open takes the queues for whole, and would rebuild them all).
        let covered = self.dispatcher.dispatched_offset() >= self.log.write_offset();
        if unclean.is_none() && !covered {
            log::info!(
                "the consume queues end at {} (the confirm offset), the log at {}: the next \
                 open indexes the rest",
                self.dispatcher.dispatched_offset(),
                self.log.write_offset()
            );
        }
        if let Err(e) = self.lock.release(unclean.is_none() && covered) {
            log::error!("releasing the store lock: {e}");
            return Outcome::Unclean(e.to_io("releasing the store lock"));
        }
        match unclean {
            None => {
                log::info!("store shut down at offset {}", self.log.flushed_offset());
                Outcome::Clean
            }
            Some(cause) => Outcome::Unclean(cause),
        }
    }
}

impl Drop for MessageStore {
    fn drop(&mut self) {
        if self.inner.on_own_thread() {
            // The shutdown joins this thread: it runs on one of its own, once this thread
            // has returned from the caller's code it was running.
            if self.inner.finished().is_none() {
                Inner::shut_down_elsewhere(Arc::clone(&self.inner));
            }
        } else if let Err(e) = self.inner.shutdown() {
            log::error!("shutdown on drop: {e}");
        }
    }
}

/// A crash recovery failed, perhaps in a sync of the log: after a failed fsync the kernel
/// may mark the crashed run's pages clean without writing them, and the next open in the
/// same boot would read them back from the page cache and vouch for them. So the failure
/// is recorded as a poisoning at the offset the checkpoint vouches for (which advances
/// only past files synced), or the one recorded before if lower: the next open writes
/// everything past it again before it trusts a sync.
fn recovery_failed(config: &StoreConfig, lock: &StoreLock) {
    let checkpoint = layout::checkpoint_file(config.root());
    let vouched = crate::checkpoint::CheckpointTimes::read(&checkpoint)
        .ok()
        .flatten()
        .map_or(0, |t| t.physic_offset);
    let at = lock.poisoned_at().map_or(vouched, |p| p.min(vouched));
    let abort = layout::abort_file(config.root());
    if let Err(e) = crate::fs::lock::record_poison(&abort, at, config.io_hook.as_ref()) {
        log::error!("recording a failed recovery at offset {at}: {e}");
    }
}

/// Refuses to open a store with another `TagCode` than the one it was written with (see
/// [`TagCode::name`](crate::TagCode::name)); records the name when a store first gets one.
fn check_tag_code(config: &StoreConfig) -> Result<()> {
    let path = layout::tag_code_file(config.root());
    let recorded = crate::fs::ops::read_text(&path)?.map(|name| name.trim_end().to_owned());
    let wanted = config.tag_code.as_ref().map(|c| c.name().to_owned());
    match (recorded, wanted) {
        (None, None) => Ok(()),
        (Some(r), Some(w)) if r == w => Ok(()),
        (None, Some(w)) => crate::fs::ops::replace_file(&path, format!("{w}\n").as_bytes(), None),
        (r, w) => Err(Error::InvalidConfig {
            reason: format!(
                "the store's consume queues were written with tag code {:?}, this open has {:?}; \
                 opening would rebuild them with other codes",
                r.unwrap_or_else(|| "none".into()),
                w.unwrap_or_else(|| "none".into())
            ),
        }),
    }
}
