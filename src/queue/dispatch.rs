//! The dispatch thread: reads new records from the commit log and indexes them in the
//! consume queues; flushes the consume queues and the checkpoint on its own schedule.
//!
//! Under sync flush it reads only flushed bytes, so nothing a crash could take back is
//! ever indexed or served (RocketMQ issue #8239).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::checkpoint::{Checkpoint, CheckpointTimes};
use crate::commit_log::record::{RecordView, Records, Step};
use crate::commit_log::{CommitLog, DEEP_AFTER, DEEP_SLEEP, Wakeup};
use crate::dispatch::thread::{RETRY, pause_after_failure};
use crate::error::{Error, Result};
use crate::queue::consume_queue::Indexed;
use crate::queue::deleted::DeletedTopics;
use crate::queue::queues::ConsumeQueues;

/// Indexes one record in its consume queue's pending batch (a transaction's half or
/// rollback record, or a record of a deleted topic, gets no entry). At run time a record its queue
/// cannot take (another entry at its queue offset, or a hole before it) means the log and
/// the queue disagree: corruption.
fn index_record(
    queues: &ConsumeQueues,
    deleted: &DeletedTopics,
    view: &RecordView<'_>,
) -> Result<()> {
    if view.is_hidden() || deleted.hides(view.topic, view.physical_offset) {
        return Ok(());
    }
    let entry = queues.entry_of(view);
    match queues.index(view.topic, view.queue_id, view.queue_offset, entry)? {
        Indexed::Appended | Indexed::Already => Ok(()),
        Indexed::Conflict(reason) | Indexed::Gap(reason) => {
            Err(Error::corrupted(view.physical_offset, reason))
        }
    }
}

struct Shared {
    log: Arc<CommitLog>,
    queues: Arc<ConsumeQueues>,
    deleted: Arc<DeletedTopics>,
    wakeup: Arc<Wakeup>,
    flush_interval: Duration,
    /// Commit-log offset up to which every record is indexed.
    dispatched: Arc<AtomicU64>,
    /// Store time of the last record indexed.
    dispatched_timestamp: AtomicU64,
    stop: AtomicBool,
    /// The thread has ended (normally or by a panic): nothing more will be indexed.
    exited: AtomicBool,
    /// Wakes callers of `wait_dispatched`.
    progress: Mutex<()>,
    progressed: Condvar,
    checkpoint: Mutex<Checkpoint>,
    /// Store time up to which the key index is durable, for the checkpoint's index field
    /// (set by the index's dispatcher).
    index_time: Arc<AtomicI64>,
    /// The last round's error, while it lasts.
    failure: Mutex<Option<Arc<std::io::Error>>>,
    /// A consume-queue sync failed. A retried sync may report success for pages the kernel
    /// already dropped, so the checkpoint never advances again in this run, and shutdown
    /// leaves the store to be recovered as after a crash.
    queue_sync_failed: Mutex<Option<Arc<std::io::Error>>>,
}

pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Dispatcher {
    /// The dispatch thread, while it runs.
    pub(crate) fn thread_id(&self) -> Option<std::thread::ThreadId> {
        self.thread.lock().as_ref().map(|t| t.thread().id())
    }

    /// Starts dispatching at the end of `log` (recovery has indexed everything before it)
    /// or, when recovery could not index everything for lack of space, at `resume`:
    /// `(offset of the first record not indexed, store time before it)`.
    pub(crate) fn start(
        log: Arc<CommitLog>,
        queues: Arc<ConsumeQueues>,
        checkpoint: Checkpoint,
        flush_interval: Duration,
        resume: Option<(u64, i64)>,
        index_time: Arc<AtomicI64>,
        deleted: Arc<DeletedTopics>,
    ) -> Result<Dispatcher> {
        let wakeup = Arc::clone(log.wakeup());
        let (from, from_timestamp) =
            resume.unwrap_or_else(|| (log.write_offset(), log.last_store_timestamp()));
        let shared = Arc::new(Shared {
            index_time,
            deleted,
            log,
            queues,
            wakeup,
            flush_interval,
            dispatched: Arc::new(AtomicU64::new(from)),
            dispatched_timestamp: AtomicU64::new(from_timestamp as u64),
            stop: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            progress: Mutex::new(()),
            progressed: Condvar::new(),
            checkpoint: Mutex::new(checkpoint),
            failure: Mutex::new(None),
            queue_sync_failed: Mutex::new(None),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("rocketstore-dispatch".into())
            .spawn(move || {
                let _exit = ExitGuard(&s);
                run(&s);
            })
            .map_err(|e| Error::io("spawn dispatch thread", "", e))?;
        let _ = shared.wakeup.thread.set(thread.thread().clone());
        Ok(Dispatcher {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stores a queue time of 0 in the checkpoint (see `queue_time`), after the thread
    /// has stopped: for a queue found damaged during the shutdown.
    pub(crate) fn forget_queue_time(&self) -> Result<()> {
        let mut cp = self.shared.checkpoint.lock();
        let times = cp.times();
        cp.store(CheckpointTimes {
            logics: 0,
            logics_offset: 0,
            ..times
        })
    }

    /// Stores the key index's latest durable time in the checkpoint, after the index's
    /// dispatcher has stopped (its last flush came after this thread's last checkpoint).
    pub(crate) fn store_index_time(&self) -> Result<()> {
        let mut cp = self.shared.checkpoint.lock();
        let times = cp.times();
        let index = self.shared.index_time.load(Ordering::Acquire);
        cp.store(CheckpointTimes { index, ..times })
    }

    /// Why dispatch is failing, while it is.
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.failure.lock().as_ref().map(|e| e.to_string())
    }

    /// Commit-log offset up to which every record is indexed and readable by queue.
    pub(crate) fn dispatched_offset(&self) -> u64 {
        self.shared.dispatched.load(Ordering::Acquire)
    }

    /// The dispatched offset, shared with the retention thread.
    pub(crate) fn dispatched_handle(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.dispatched)
    }

    /// Waits until the record at `physical_offset` is indexed; false on timeout or once
    /// the thread has ended. A timeout too large to add to now means no deadline.
    pub(crate) fn wait_dispatched(&self, physical_offset: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |dispatched| dispatched > physical_offset)
    }

    /// Waits until every record starting below `end` is indexed (`end` is any offset: a
    /// record's start, or the log's end as `max_physical_offset` gives it).
    pub(crate) fn wait_dispatched_to(&self, end: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |dispatched| dispatched >= end)
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(u64) -> bool) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = self.shared.progress.lock();
        while !done(self.dispatched_offset()) {
            // Only atomics are read under `progress`: the thread needs `progress` to
            // publish, so waiting here on any other lock could deadlock with it.
            if self.shared.exited.load(Ordering::Acquire) {
                return false;
            }
            self.shared.wakeup.ring();
            match deadline {
                Some(deadline) => {
                    if self
                        .shared
                        .progressed
                        .wait_until(&mut guard, deadline)
                        .timed_out()
                    {
                        return done(self.dispatched_offset());
                    }
                }
                None => self.shared.progressed.wait(&mut guard),
            }
        }
        true
    }

    /// Waits until `done()` holds, checked after each dispatch round; false on timeout or
    /// once the thread has ended.
    pub(crate) fn wait_for(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        self.wait_until(timeout, |_| done())
    }

    /// Indexes what is left, flushes the queues and the checkpoint, stops the thread. Fails
    /// when that last round failed, when a queue sync failed earlier, or when the thread
    /// panicked (the next open then recovers as after a crash).
    pub(crate) fn shutdown(&self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.shared.wakeup.thread.get() {
            t.unpark();
        }
        // The handle is taken out first: no lock is held while joining.
        let handle = self.thread.lock().take();
        if let Some(t) = handle
            && t.join().is_err()
        {
            // The exit guard has recorded the panic and poisoned the log.
            log::error!("the dispatch thread panicked");
        }
        if let Some(cause) = self.shared.failure.lock().clone() {
            return Err(Error::poisoned(&cause));
        }
        if let Some(cause) = self.shared.queue_sync_failed.lock().clone() {
            return Err(Error::poisoned(&cause));
        }
        Ok(())
    }
}

impl Shared {
    /// A round succeeded: any failure is over.
    fn recovered(&self) {
        if self.failure.lock().take().is_some() {
            log::info!("dispatch succeeded again");
            self.log.set_dispatch_stalled(None);
        }
    }
}

/// Marks the thread as ended however it ends, waking every waiter. A panic poisons the
/// store: nothing would index new records any more, and readers would wait forever.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let s = self.0;
        if std::thread::panicking() {
            let cause = Arc::new(std::io::Error::other("the dispatch thread panicked"));
            *s.failure.lock() = Some(cause.clone());
            s.log.poison_with(cause);
        }
        let _guard = s.progress.lock();
        s.exited.store(true, Ordering::Release);
        s.progressed.notify_all();
        // Nothing will arrive any more: long polls end.
        s.queues.arrivals().close();
    }
}

/// Longest the dispatch thread sleeps while it was busy lately and appends may arrive
/// unannounced (idle longer, it sleeps until woken: `Wakeup::sleep_deep`).
const POLL: Duration = Duration::from_millis(1);

/// Most dispatch marks kept while the flush lags behind dispatch; older ones are dropped
/// (the checkpoint then advances a little less far, never too far).
const MAX_MARKS: usize = 1 << 16;

/// Where dispatch rounds ended, `(commit-log offset, store time of the last record
/// before it)`, oldest first: the checkpoint picks the last one already flushed.
type Marks = VecDeque<(u64, i64)>;

fn run(s: &Shared) {
    let mut last_flush = Instant::now();
    let mut marks = Marks::new();
    // Rounds in a row that found nothing to dispatch.
    let mut idle: u32 = 0;
    s.wakeup.register_reader();
    loop {
        let stopping = s.stop.load(Ordering::Acquire);
        let result = dispatch_available(s, &mut marks).and_then(|progressed| {
            let due = last_flush.elapsed() >= s.flush_interval;
            if due || stopping {
                flush_and_checkpoint(s, &mut marks)?;
                last_flush = Instant::now();
            }
            Ok(progressed)
        });
        match result {
            Ok(_) if stopping => {
                s.recovered();
                return;
            }
            Ok(progressed) => {
                s.recovered();
                if progressed {
                    idle = 0;
                    continue;
                }
            }
            Err(e) => {
                // A full disk or a failed file creation may pass: retry after a pause.
                // Indexing is idempotent, so records indexed before the failure are simply
                // found again. The checkpoint still follows the log's flushes meanwhile.
                if last_flush.elapsed() >= s.flush_interval {
                    if let Err(e) = flush_and_checkpoint(s, &mut marks) {
                        log::error!("checkpoint failed: {e}");
                    }
                    last_flush = Instant::now();
                }
                s.log.counters().dispatch_failed();
                if e.is_no_space() {
                    s.log.set_dispatch_stalled(Some(e.to_string()));
                }
                let mut failure = s.failure.lock();
                if failure.is_none() {
                    log::error!("dispatch failed, retrying every {RETRY:?}: {e}");
                }
                *failure = Some(e.to_io("dispatch failed"));
                drop(failure);
                {
                    let _guard = s.progress.lock();
                    s.progressed.notify_all();
                }
                if stopping {
                    return;
                }
                pause_after_failure(&s.stop);
                continue;
            }
        }
        // Nothing new: sleep until a flush or a waiting reader wakes us, or for at most
        // POLL (appends under async flush are picked up by polling while busy); idle for
        // a while, until an append wakes us (`Wakeup::sleep_deep`).
        idle = idle.saturating_add(1);
        s.wakeup.sleeping.store(true, Ordering::Release);
        if s.log.readable_offset() <= s.dispatched.load(Ordering::Acquire)
            && !s.stop.load(Ordering::Acquire)
        {
            if idle >= DEEP_AFTER {
                // Never past the next queue flush and checkpoint.
                let until_flush = s.flush_interval.saturating_sub(last_flush.elapsed());
                let longest = DEEP_SLEEP.min(until_flush).max(Duration::from_micros(50));
                s.wakeup.sleep_deep(longest, || {
                    s.log.readable_offset_before_sleep() > s.dispatched.load(Ordering::Acquire)
                        || s.stop.load(Ordering::SeqCst)
                });
            } else {
                let wait = s.flush_interval.saturating_sub(last_flush.elapsed());
                std::thread::park_timeout(wait.clamp(Duration::from_micros(50), POLL));
            }
        }
        s.wakeup.sleeping.store(false, Ordering::Release);
    }
}

/// Indexes every readable record not yet indexed. Returns whether anything was.
fn dispatch_available(s: &Shared, marks: &mut Marks) -> Result<bool> {
    let end = s.log.readable_offset();
    let start = s.dispatched.load(Ordering::Acquire);
    drop_deleted(s, start)?;
    let mut at = start;
    while at < end {
        // The readable bytes from `at` to the end of its file (records never span files).
        let bytes = match s.log.bytes_at(at, end) {
            Some(b) if !b.is_empty() => b,
            _ => break,
        };
        let mut records = Records::new(&bytes, at);
        let mut next_file = None;
        let mut last_ts = None;
        for step in records.by_ref() {
            match step? {
                Step::Record(view) => {
                    if view.physical_offset >= s.deleted.next_cutoff() {
                        // The first record past a deletion: the topic's old queues go
                        // before anything of the new topic is indexed.
                        s.queues.commit()?;
                        drop_deleted(s, view.physical_offset)?;
                    }
                    index_record(&s.queues, &s.deleted, &view)?;
                    last_ts = Some(view.store_timestamp);
                }
                Step::Blank => {
                    let file_size = s.log.file_size();
                    next_file = Some((at / file_size + 1) * file_size);
                }
                Step::Empty => {
                    let reason = "no record below the readable end";
                    return Err(Error::corrupted(records.offset(), reason));
                }
            }
        }
        // The round's entries are written and visible before it counts as dispatched.
        s.queues.commit()?;
        let pos = records.position();
        at = next_file.unwrap_or(at + pos as u64);
        if let Some(ts) = last_ts {
            s.dispatched_timestamp.store(ts as u64, Ordering::Release);
        }
        let ts = s.dispatched_timestamp.load(Ordering::Acquire) as i64;
        if marks.len() == MAX_MARKS {
            marks.pop_front();
        }
        marks.push_back((at, ts));
        drop_deleted(s, at)?;
        // A failure ends before the progress is published: a producer that waited for
        // dispatch and then puts must not still be refused as stalled.
        s.recovered();
        s.dispatched.store(at, Ordering::Release);
        let _guard = s.progress.lock();
        s.progressed.notify_all();
    }
    Ok(at > start)
}

/// Removes the old consume queues of every topic whose deletion's cutoff is at or below
/// `offset` (every record before it is dispatched), and records each deletion as done.
fn drop_deleted(s: &Shared, offset: u64) -> Result<()> {
    if offset < s.deleted.next_cutoff() {
        return Ok(());
    }
    for topic in s.deleted.due(offset) {
        s.queues.drop_topic(&topic)?;
        s.deleted.mark_done(&topic)?;
        log::info!("topic {topic}: its consume queues are deleted");
    }
    let _guard = s.progress.lock();
    s.progressed.notify_all();
    Ok(())
}

/// Flushes the consume queues and records how far everything is durable.
///
/// - The log's durable offset is its flushed offset (always a record boundary), whatever
///   the queues do, so that a crash can cut only what was never flushed. Its time is that of
///   the last dispatch round the flush covers (under async flush the flush thread rarely
///   catches up with dispatch exactly, so waiting for that would leave the checkpoint
///   behind for as long as puts keep coming).
/// - The queues' time advances to what is dispatched, but never again after a failed queue
///   sync: recovery then starts from the last time that was true and re-indexes.
fn flush_and_checkpoint(s: &Shared, marks: &mut Marks) -> Result<()> {
    // This thread is the only one that indexes: the queues hold what is dispatched.
    let ts = s.dispatched_timestamp.load(Ordering::Acquire) as i64;
    let dispatched = s.dispatched.load(Ordering::Acquire);
    let mut queues_durable = s.queue_sync_failed.lock().is_none();
    if queues_durable && let Err(e) = s.queues.flush() {
        log::error!(
            "a consume-queue sync failed; the checkpoint's queue time stays where it is until \
             the store is reopened, which re-indexes from it: {e}"
        );
        *s.queue_sync_failed.lock() = Some(e.to_io("a consume-queue sync failed"));
        queues_durable = false;
    }
    let flushed = s.log.flushed_offset();
    let mut cp = s.checkpoint.lock();
    let old = cp.times();
    let mut physic = old.physic;
    while let Some(&(end, mark_ts)) = marks.front() {
        if end > flushed {
            break;
        }
        physic = physic.max(mark_ts);
        marks.pop_front();
    }
    let logics = queue_time(s, if queues_durable { ts } else { old.logics });
    cp.store(CheckpointTimes {
        physic,
        logics,
        index: s.index_time.load(Ordering::Acquire),
        physic_offset: old.physic_offset.max(flushed),
        logics_offset: match (logics, queues_durable) {
            (0, _) => 0,
            (_, true) => dispatched,
            (_, false) => old.logics_offset,
        },
    })
}

/// The checkpoint's queue time: `ts`, unless a consume queue was found damaged at run time.
/// Then 0, durably: the next open (after a crash, or the unclean shutdown that follows)
/// scans the whole log and indexes every record again, which rebuilds every queue.
fn queue_time(s: &Shared, ts: i64) -> i64 {
    if s.queues.suspect() { 0 } else { ts }
}
