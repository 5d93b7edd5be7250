//! The dispatch thread: reads new records from the commit log and indexes them in the
//! consume queues; flushes the consume queues and the checkpoint on its own schedule.
//!
//! Under sync flush it reads only flushed bytes, so nothing a crash could take back is
//! ever indexed or served (RocketMQ issue #8239).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::checkpoint::{Checkpoint, CheckpointTimes};
use crate::commit_log::CommitLog;
use crate::consume_queue::Indexed;
use crate::consume_queues::ConsumeQueues;
use crate::error::{Error, Result};
use crate::format::{self, CqEntry, Peek, RecordView};
use crate::retention::Retention;

/// Indexes one record in its consume queue.
pub(crate) fn index_record(queues: &ConsumeQueues, view: &RecordView<'_>) -> Result<Indexed> {
    let entry = CqEntry {
        physical_offset: view.physical_offset,
        size: view.total_size,
        tag_hash: format::tag_hash(format::find_tags(view.properties)),
    };
    queues
        .get_or_create(view.topic, view.queue_id)
        .put(view.queue_offset, entry)
}

/// Wakes the dispatch thread when new bytes become readable; costs one atomic load when
/// the thread is already awake.
#[derive(Default)]
pub(crate) struct Wakeup {
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Wakeup {
    pub(crate) fn wake(&self) {
        if self.sleeping.load(Ordering::Acquire)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }
}

struct Shared {
    log: Arc<CommitLog>,
    queues: Arc<ConsumeQueues>,
    retention: Arc<Retention>,
    wakeup: Arc<Wakeup>,
    sync_flush: bool,
    flush_interval: Duration,
    /// Commit-log offset up to which every record is indexed.
    dispatched: AtomicU64,
    /// Store time of the last record indexed.
    dispatched_timestamp: AtomicU64,
    stop: AtomicBool,
    /// Wakes callers of `wait_dispatched`.
    progress: Mutex<()>,
    progressed: Condvar,
    checkpoint: Mutex<Checkpoint>,
    failure: Mutex<Option<String>>,
}

pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Dispatcher {
    /// Starts dispatching at the end of `log`: recovery has indexed everything before it.
    pub(crate) fn start(
        log: Arc<CommitLog>,
        queues: Arc<ConsumeQueues>,
        retention: Arc<Retention>,
        checkpoint: Checkpoint,
        sync_flush: bool,
        flush_interval: Duration,
    ) -> Result<Dispatcher> {
        let wakeup = Arc::clone(log.wakeup());
        let from = log.write_offset();
        let from_timestamp = log.last_store_timestamp();
        let shared = Arc::new(Shared {
            log,
            queues,
            retention,
            wakeup,
            sync_flush,
            flush_interval,
            dispatched: AtomicU64::new(from),
            dispatched_timestamp: AtomicU64::new(from_timestamp as u64),
            stop: AtomicBool::new(false),
            progress: Mutex::new(()),
            progressed: Condvar::new(),
            checkpoint: Mutex::new(checkpoint),
            failure: Mutex::new(None),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("rocketstore-dispatch".into())
            .spawn(move || run(&s))
            .map_err(|e| Error::io("spawn dispatch thread", "", e))?;
        let _ = shared.wakeup.thread.set(thread.thread().clone());
        Ok(Dispatcher {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Commit-log offset up to which every record is indexed and readable by queue.
    pub(crate) fn dispatched_offset(&self) -> u64 {
        self.shared.dispatched.load(Ordering::Acquire)
    }

    /// Waits until the record at `physical_offset` is indexed; false on timeout.
    pub(crate) fn wait_dispatched(&self, physical_offset: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.progress.lock();
        while self.dispatched_offset() <= physical_offset {
            if self.shared.stop.load(Ordering::Acquire) && self.thread.lock().is_none() {
                return false;
            }
            self.shared.wakeup.wake();
            if self
                .shared
                .progressed
                .wait_until(&mut guard, deadline)
                .timed_out()
            {
                return self.dispatched_offset() > physical_offset;
            }
        }
        true
    }

    /// Indexes what is left, flushes the queues and the checkpoint, stops the thread. Fails
    /// when that last round failed (the next open then recovers as after a crash).
    pub(crate) fn shutdown(&self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.shared.wakeup.thread.get() {
            t.unpark();
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        self.shared.progressed.notify_all();
        match self.shared.failure.lock().clone() {
            Some(cause) => Err(Error::Poisoned { cause }),
            None => Ok(()),
        }
    }
}

/// Pause before retrying after a failed dispatch or queue flush.
const RETRY: Duration = Duration::from_millis(100);

/// Longest the dispatch thread sleeps while appends may be arriving unannounced.
const POLL: Duration = Duration::from_millis(1);

fn run(s: &Shared) {
    let mut last_flush = Instant::now();
    loop {
        // This thread also samples disk usage (for the put path's disk-full refusal) and
        // applies retention after each sample.
        if let Some(used) = s.log.disk().maybe_sample()
            && let Err(e) = s.retention.maybe_clean(
                &s.log,
                &s.queues,
                used,
                s.dispatched.load(Ordering::Acquire),
            )
        {
            log::error!("retention failed: {e}");
        }
        let stopping = s.stop.load(Ordering::Acquire);
        let result = dispatch_available(s).and_then(|progressed| {
            let due = last_flush.elapsed() >= s.flush_interval;
            if due || stopping {
                flush_and_checkpoint(s)?;
                last_flush = Instant::now();
            }
            Ok(progressed)
        });
        match result {
            Ok(_) if stopping => {
                *s.failure.lock() = None;
                return;
            }
            Ok(progressed) => {
                *s.failure.lock() = None;
                if progressed {
                    continue;
                }
            }
            Err(e) => {
                // A full disk or a failed sync may pass: retry after a pause. Indexing is
                // idempotent, so records indexed before the failure are simply found again.
                let mut failure = s.failure.lock();
                if failure.is_none() {
                    log::error!("dispatch failed, retrying every {RETRY:?}: {e}");
                }
                *failure = Some(e.to_string());
                drop(failure);
                s.progressed.notify_all();
                if stopping {
                    return;
                }
                std::thread::park_timeout(RETRY);
                continue;
            }
        }
        // Nothing new: sleep until a flush or a waiting reader wakes us, or for at most
        // POLL (appends under async flush are picked up by polling).
        s.wakeup.sleeping.store(true, Ordering::Release);
        if readable_end(s) <= s.dispatched.load(Ordering::Acquire)
            && !s.stop.load(Ordering::Acquire)
        {
            let wait = s.flush_interval.saturating_sub(last_flush.elapsed());
            std::thread::park_timeout(wait.clamp(Duration::from_micros(50), POLL));
        }
        s.wakeup.sleeping.store(false, Ordering::Release);
    }
}

fn readable_end(s: &Shared) -> u64 {
    if s.sync_flush {
        s.log.flushed_offset()
    } else {
        s.log.write_offset()
    }
}

/// Indexes every readable record not yet indexed. Returns whether anything was.
fn dispatch_available(s: &Shared) -> Result<bool> {
    let end = readable_end(s);
    let start = s.dispatched.load(Ordering::Acquire);
    let mut at = start;
    while at < end {
        // The readable bytes from `at` to the end of its file (records never span files).
        let bytes = match s.log.bytes_at(at, end) {
            Some(b) if !b.is_empty() => b,
            _ => break,
        };
        let mut pos = 0usize;
        let mut next_file = None;
        let mut last_ts = None;
        while pos < bytes.len() {
            let offset = at + pos as u64;
            match format::peek(&bytes[pos..], offset)? {
                Peek::Record { size } => {
                    let view = format::parse(&bytes[pos..pos + size], offset)?;
                    index_record(&s.queues, &view)?;
                    last_ts = Some(view.store_timestamp);
                    pos += size;
                }
                Peek::Blank => {
                    let file_size = s.log.file_size();
                    next_file = Some((offset / file_size + 1) * file_size);
                    break;
                }
                Peek::Empty => {
                    return Err(Error::corrupted(offset, "no record below the readable end"));
                }
            }
        }
        at = next_file.unwrap_or(at + pos as u64);
        if let Some(ts) = last_ts {
            s.dispatched_timestamp.store(ts as u64, Ordering::Release);
        }
        s.dispatched.store(at, Ordering::Release);
        let _guard = s.progress.lock();
        s.progressed.notify_all();
    }
    Ok(at > start)
}

/// Flushes the consume queues and records how far everything is durable.
fn flush_and_checkpoint(s: &Shared) -> Result<()> {
    s.queues.flush()?;
    let ts = s.dispatched_timestamp.load(Ordering::Acquire) as i64;
    let mut cp = s.checkpoint.lock();
    let old = cp.times();
    // Under sync flush everything dispatched is flushed; under async only when the
    // flush thread has caught up with dispatch.
    let flushed = s.sync_flush || s.log.flushed_offset() >= s.dispatched.load(Ordering::Acquire);
    cp.store(CheckpointTimes {
        physic: if flushed { ts } else { old.physic },
        logics: ts,
        index: old.index,
    })
}
