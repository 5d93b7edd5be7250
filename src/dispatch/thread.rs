//! The thread of one dispatcher: reads the readable part of the commit log from its own
//! position, feeds each record to its sink, ends each round with a commit, and on its own
//! schedule flushes and records its durable progress. Failures are counted and retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::commit_log::record::{Records, Step};
use crate::commit_log::{CommitLog, DEEP_AFTER, DEEP_SLEEP};
use crate::dispatch::{DispatcherStats, Sink};
use crate::error::{Error, Result};

/// Pause before a dispatcher retries a failed round or flush.
pub(crate) const RETRY: Duration = Duration::from_millis(100);
/// Longest sleep while nothing is new and the dispatcher was busy lately (appends are
/// found by polling then; idle longer, it sleeps until woken: `Wakeup::sleep_deep`).
const POLL: Duration = Duration::from_millis(1);

struct Shared {
    name: String,
    log: Arc<CommitLog>,
    flush_interval: Duration,
    dispatched: AtomicU64,
    durable: AtomicU64,
    failures: AtomicU64,
    error: Mutex<Option<String>>,
    stop: AtomicBool,
    exited: AtomicBool,
    /// The thread panicked: it will never move again.
    panicked: AtomicBool,
    progress: Mutex<()>,
    progressed: Condvar,
}

pub(crate) struct DispatcherThread {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl DispatcherThread {
    /// The dispatcher's thread, while it runs.
    pub(crate) fn thread_id(&self) -> Option<std::thread::ThreadId> {
        self.thread.lock().as_ref().map(|t| t.thread().id())
    }

    /// Runs `sink` (already started, see `Sink::start`) from commit-log offset `from` (a
    /// record boundary; `timestamp` is the store time of the record before it).
    pub(crate) fn start(
        log: Arc<CommitLog>,
        mut sink: Box<dyn Sink>,
        from: u64,
        timestamp: i64,
        flush_interval: Duration,
    ) -> Result<DispatcherThread> {
        let shared = Arc::new(Shared {
            name: sink.name().to_owned(),
            log,
            flush_interval,
            dispatched: AtomicU64::new(from),
            durable: AtomicU64::new(from),
            failures: AtomicU64::new(0),
            error: Mutex::new(None),
            stop: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            progress: Mutex::new(()),
            progressed: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("rocketstore-{}", shared.name))
            .spawn(move || {
                let _exit = ExitGuard(&s);
                run(&s, sink.as_mut(), from, timestamp);
            })
            .map_err(|e| Error::io("spawn dispatcher thread", "", e))?;
        Ok(DispatcherThread {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    /// Where the dispatcher stands, for retention.
    pub(crate) fn position(&self) -> Position {
        Position(Arc::clone(&self.shared))
    }

    pub(crate) fn stats(&self) -> DispatcherStats {
        let s = &self.shared;
        let dispatched = s.dispatched.load(Ordering::Acquire);
        DispatcherStats {
            name: s.name.clone(),
            dispatched_offset: dispatched,
            durable_offset: s.durable.load(Ordering::Acquire),
            lag_bytes: s.log.readable_offset().saturating_sub(dispatched),
            failures: s.failures.load(Ordering::Relaxed),
            error: s.error.lock().clone(),
        }
    }

    /// Waits until every record below `end` is dispatched; false on timeout, or once the
    /// thread has ended.
    pub(crate) fn wait_to(&self, end: u64, timeout: Duration) -> bool {
        self.wait_until(&self.shared.dispatched, end, timeout)
    }

    /// Waits until the dispatcher's progress past every record below `end` is durable
    /// (its flush ran); false on timeout, or once the thread has ended.
    pub(crate) fn wait_durable_to(&self, end: u64, timeout: Duration) -> bool {
        self.wait_until(&self.shared.durable, end, timeout)
    }

    fn wait_until(&self, at: &AtomicU64, end: u64, timeout: Duration) -> bool {
        let s = &self.shared;
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = s.progress.lock();
        while at.load(Ordering::Acquire) < end {
            if s.exited.load(Ordering::Acquire) {
                return false;
            }
            match deadline {
                Some(d) => {
                    if s.progressed.wait_until(&mut guard, d).timed_out() {
                        return at.load(Ordering::Acquire) >= end;
                    }
                }
                None => s.progressed.wait(&mut guard),
            }
        }
        true
    }

    /// Dispatches what is readable, flushes, and stops the thread. Fails when that last
    /// round or flush failed.
    pub(crate) fn shutdown(&self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        let handle = self.thread.lock().take();
        if let Some(t) = handle {
            t.thread().unpark();
            if t.join().is_err() {
                log::error!("the {} dispatcher thread panicked", self.shared.name);
                return Err(Error::Dispatcher {
                    name: self.shared.name.clone(),
                    source: "its thread panicked".into(),
                });
            }
        }
        match self.shared.error.lock().clone() {
            Some(e) => Err(Error::Dispatcher {
                name: self.shared.name.clone(),
                source: e.into(),
            }),
            None => Ok(()),
        }
    }
}

/// A dispatcher's position, as retention sees it: it deletes no file the dispatcher has
/// not wholly seen.
pub(crate) struct Position(Arc<Shared>);

impl Position {
    /// Every record below the offset returned is dispatched, and for a broker's
    /// dispatcher its progress past them is durable (after a crash it is given again
    /// every record past its recorded progress, so those must still be there; the key
    /// index needs no record it has indexed again). `None` once the thread has panicked
    /// (it will never move again, and holding the log for it would fill the disk). A
    /// thread stopped by shutdown still holds its place.
    pub(crate) fn holds(&self) -> Option<u64> {
        match self.0.name == crate::dispatch::INDEX_NAME {
            true => self.unless_panicked(&self.0.dispatched),
            false => self.unless_panicked(&self.0.durable),
        }
    }

    /// Every record below the offset returned is dispatched (recorded or not); `None`
    /// once the thread has panicked.
    pub(crate) fn seen(&self) -> Option<u64> {
        self.unless_panicked(&self.0.dispatched)
    }

    fn unless_panicked(&self, at: &AtomicU64) -> Option<u64> {
        (!self.0.panicked.load(Ordering::Acquire)).then(|| at.load(Ordering::Acquire))
    }

    pub(crate) fn name(&self) -> &str {
        &self.0.name
    }
}

impl Shared {
    /// A round or flush succeeded: any failure is over (cleared before waiters are told).
    fn succeeded(&self) {
        if self.error.lock().take().is_some() {
            log::info!("the {} dispatcher succeeded again", self.name);
        }
    }
}

struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let s = self.0;
        if std::thread::panicking() {
            *s.error.lock() = Some("the dispatcher thread panicked".into());
            s.panicked.store(true, Ordering::Release);
        }
        let _guard = s.progress.lock();
        s.exited.store(true, Ordering::Release);
        s.progressed.notify_all();
    }
}

fn run(s: &Shared, sink: &mut dyn Sink, from: u64, timestamp: i64) {
    let mut at = from;
    let mut ts = timestamp;
    let mut flushed = from;
    let mut last_flush = Instant::now();
    // Rounds in a row that found nothing new.
    let mut idle: u32 = 0;
    s.log.wakeup().register_reader();
    loop {
        let stopping = s.stop.load(Ordering::Acquire);
        let result = round(s, sink, &mut at, &mut ts).and_then(|progressed| {
            if (stopping || last_flush.elapsed() >= s.flush_interval) && at != flushed {
                if let Err(e) = sink.flush(at, ts) {
                    // Even then (a failed sync fails every later flush in the run): files
                    // of deleted log files still go, on a full disk above all.
                    sink.maintain(s.log.min_offset());
                    return Err(e);
                }
                flushed = at;
                s.durable.store(at, Ordering::Release);
                drop(s.progress.lock());
                s.progressed.notify_all();
                sink.maintain(s.log.min_offset());
                last_flush = Instant::now();
            }
            Ok(progressed)
        });
        match result {
            Ok(progressed) => {
                s.succeeded();
                if stopping {
                    if let Err(e) = sink.close(flushed, ts) {
                        log::error!("closing the {} dispatcher: {e}", s.name);
                        *s.error.lock() = Some(e.to_string());
                    }
                    return;
                }
                if progressed {
                    idle = 0;
                    continue;
                }
                idle = idle.saturating_add(1);
                // Idle for a while (and flushed): sleep until an append wakes us.
                if idle >= DEEP_AFTER && at == flushed {
                    s.log.wakeup().sleep_deep(DEEP_SLEEP, || {
                        s.log.readable_offset_before_sleep() > at || s.stop.load(Ordering::SeqCst)
                    });
                } else {
                    std::thread::park_timeout(POLL);
                }
            }
            Err(e) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                let mut error = s.error.lock();
                if error.is_none() {
                    log::error!(
                        "the {} dispatcher failed, retrying every {RETRY:?}: {e}",
                        s.name
                    );
                }
                *error = Some(e.to_string());
                drop(error);
                if stopping {
                    return;
                }
                pause_after_failure(&s.stop);
            }
        }
    }
}

/// Dispatches every readable record from `at`, a round per file; returns whether any was.
fn round(s: &Shared, sink: &mut dyn Sink, at: &mut u64, ts: &mut i64) -> Result<bool> {
    let start = *at;
    let log_start = s.log.min_offset();
    if *at < log_start {
        log::warn!(
            "the {} dispatcher fell behind retention: records {}..{log_start} were deleted \
             before it saw them",
            s.name,
            *at
        );
        *at = log_start;
    }
    let end = s.log.readable_offset();
    while *at < end {
        let bytes = match s.log.bytes_at(*at, end) {
            Some(b) if !b.is_empty() => b,
            _ => break,
        };
        let mut records = Records::new(&bytes, *at);
        let mut next_file = None;
        let mut last_ts = None;
        for step in records.by_ref() {
            match step? {
                Step::Record(view) => {
                    sink.dispatch(&view)?;
                    last_ts = Some(view.store_timestamp);
                }
                Step::Blank => {
                    let file_size = s.log.file_size();
                    next_file = Some((*at / file_size + 1) * file_size);
                }
                Step::Empty => {
                    let reason = "no record below the readable end";
                    return Err(Error::corrupted(records.offset(), reason));
                }
            }
        }
        sink.commit()?;
        *at = next_file.unwrap_or(*at + records.position() as u64);
        if let Some(t) = last_ts {
            *ts = t;
        }
        s.succeeded();
        s.dispatched.store(*at, Ordering::Release);
        let _guard = s.progress.lock();
        s.progressed.notify_all();
    }
    Ok(*at != start)
}

/// The pause before a dispatcher retries a failed round: `RETRY`, whatever wakes the
/// thread meanwhile (until `stop`). A reader waiting for dispatch rings the thread, and a
/// failed round wakes the readers: were either to cut the other's wait short, the two
/// would spin on both cores for as long as the failure lasts (23,000 failed rounds a
/// second here while a reader waited on a full disk).
pub(crate) fn pause_after_failure(stop: &AtomicBool) {
    let until = Instant::now() + RETRY;
    while !stop.load(Ordering::Acquire) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::park_timeout(left);
    }
}
