//! Retention: RocketMQ's cleaning rules. Commit-log files older than the reserved time go
//! at the configured hour, or at once when the disk is fuller than the clean ratio; above
//! the force ratio the oldest go whatever their age. Never the file being written. Then
//! consume-queue files whose entries all point below the log's new start go too.
//!
//! Deleting never races a reader: a removed file is unlinked, and its mapping lives on
//! until the last reader's slice of it is dropped.
//!
//! The rules run on a thread of their own (`rocketstore-retention`), which also samples
//! disk usage for the put path's disk-full refusal: unlinking a large file can take long
//! enough to stall whatever thread does it, and it must not be the dispatch thread. It
//! deletes one file at a time, `file_delete_interval` apart, so deleting many files never
//! becomes one burst of I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{Datelike, Timelike};

use parking_lot::Mutex;

use crate::commit_log::CommitLog;
use crate::config::StoreConfig;
use crate::dispatch::thread::Position;
use crate::error::Result;
use crate::queue::queues::ConsumeQueues;

/// Everyone who reads the log in order: the consume queues' dispatch thread and the
/// other dispatchers (the key index, the broker's). The consume queues hold the log's
/// start always. The others hold it against the age rule and the operator's call, so a
/// dispatcher that lags (or fails for a while) sees every record; under disk pressure
/// (above the clean ratio) they do not, since a dispatcher stuck for good (failing each
/// round, or needing space only retention can free) would otherwise keep the disk full
/// and every put refused. Deleting records a dispatcher has not seen is logged as an
/// error, and the dispatcher reports the gap when it reaches it. A dispatcher whose
/// thread panicked holds nothing.
pub(crate) struct Readers {
    pub(crate) queues: Arc<AtomicU64>,
    pub(crate) others: Vec<Position>,
}

impl Readers {
    /// The offset below which the consume queues have indexed every record.
    fn queues(&self) -> u64 {
        self.queues.load(Ordering::Acquire)
    }

    /// The offset below which every reader has seen every record.
    pub(crate) fn floor(&self) -> u64 {
        self.others
            .iter()
            .filter_map(Position::holds)
            .fold(self.queues(), u64::min)
    }

    /// The dispatchers that have not seen everything below `offset`.
    fn behind(&self, offset: u64) -> Vec<&str> {
        self.others
            .iter()
            .filter(|p| p.seen().is_some_and(|at| at < offset))
            .map(Position::name)
            .collect()
    }
}

pub(crate) struct Retention {
    reserved: Duration,
    delete_interval: Duration,
    disk_check_interval: Duration,
    hour: u8,
    clean_ratio: f64,
    force_ratio: f64,
    /// The day (since the epoch) of the last run at the configured hour.
    last_daily_run: Mutex<Option<u64>>,
    /// Held while files are deleted: the retention thread and an operator's call never
    /// delete at once, so files always go strictly from the front.
    deleting: Mutex<()>,
}

impl Retention {
    pub(crate) fn new(config: &StoreConfig) -> Self {
        Retention {
            reserved: config.file_reserved_time,
            delete_interval: config.file_delete_interval,
            disk_check_interval: config.disk_check_interval,
            hour: config.delete_hour,
            clean_ratio: config.disk_clean_ratio,
            force_ratio: config.disk_force_clean_ratio,
            last_daily_run: Mutex::new(None),
            deleting: Mutex::new(()),
        }
    }

    /// Applies the rules after a disk sample (`used`: used fraction of the filesystem),
    /// one file at a time, pausing `pace` after each deletion. Only files wholly below
    /// `dispatched` may go: the dispatchers still read the rest (see [`Readers`]).
    pub(crate) fn maybe_clean(
        &self,
        log: &CommitLog,
        queues: &ConsumeQueues,
        used: f64,
        readers: &Readers,
        pace: &mut dyn FnMut() -> bool,
    ) -> Result<usize> {
        // Under disk pressure only the consume queues hold the log (see `Readers`).
        let mut pressed = used > self.clean_ratio;
        let floor = |pressed: bool| match pressed {
            true => readers.queues(),
            false => readers.floor(),
        };
        let mut dispatched = floor(pressed);
        // The configured hour is local time, as RocketMQ's `deleteWhen`.
        let local = chrono::Local::now();
        let (day, hour) = (
            local.date_naive().num_days_from_ce() as u64,
            local.hour() as u8,
        );
        let daily = hour == self.hour && {
            let mut last = self.last_daily_run.lock();
            let due = *last != Some(day);
            *last = Some(day);
            due
        };
        let mut removed = 0;
        let was_pressed = pressed;
        if daily || pressed {
            // One expired file per step, paced, until none is left (or we are stopped, or
            // the pressure that started the series is gone).
            loop {
                let n = self.delete_files(log, queues, Some(self.reserved), dispatched, 1)?;
                removed += n;
                if n == 0 || !pace() {
                    break;
                }
                // Sampled again after each step: the disk-full refusal ends as soon as
                // there is room, and the dispatchers hold the log again once the pressure
                // is gone.
                if let Some(now) = log.disk().sample() {
                    pressed = now > self.clean_ratio;
                    dispatched = floor(pressed);
                }
                if !daily && !pressed {
                    break;
                }
            }
        }
        if used > self.force_ratio {
            removed += self.delete_files(log, queues, None, dispatched, 1)?;
        }
        if removed > 0 && was_pressed {
            let behind = readers.behind(log.min_offset());
            if !behind.is_empty() {
                log::error!(
                    "the disk is {:.0}% used: retention deleted records below {} that the \
                     {} dispatcher(s) had not seen",
                    used * 100.0,
                    log.min_offset(),
                    behind.join(", ")
                );
            }
        }
        Ok(removed)
    }

    /// Deletes now every file older than the reserved time and wholly below `dispatched`
    /// (the operator's call).
    pub(crate) fn delete_expired(
        &self,
        log: &CommitLog,
        queues: &ConsumeQueues,
        dispatched: u64,
    ) -> Result<usize> {
        self.delete_files(log, queues, Some(self.reserved), dispatched, usize::MAX)
    }
}

impl Retention {
    /// Deletes up to `budget` commit-log files older than `older_than` (any age with `None`),
    /// oldest first, never the one being written nor one not wholly below `dispatched`. Before
    /// each goes, every consume queue's minimum moves past its records; after, the consume-queue
    /// files wholly below the log's new start go too. Returns how many commit-log files went.
    fn delete_files(
        &self,
        log: &CommitLog,
        queues: &ConsumeQueues,
        older_than: Option<Duration>,
        dispatched: u64,
        budget: usize,
    ) -> Result<usize> {
        let _deleting = self.deleting.lock();
        let mut removed = 0;
        while removed < budget {
            let Some((path, end)) = log.oldest_file() else {
                break;
            };
            let old = match older_than {
                None => true,
                Some(age) => std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|e| e >= age),
            };
            // A replication layer streaming the log keeps the file; once retiring starts,
            // no new hold below `end` is granted, so the queues' minimums never move past
            // records that stay.
            if end > dispatched || !old || !log.begin_retire(end) {
                break;
            }
            // The new start is durable before anything moves past the file: a failed
            // record leaves the queues' minimums where they were, and the file in place.
            if let Err(e) = log.record_start_at(end) {
                log.end_retire();
                return Err(e);
            }
            queues.set_log_start(end);
            for (_, _, q) in queues.all() {
                q.raise_min(end);
            }
            let gone = log.remove_oldest_file(end);
            log.end_retire();
            if !gone? {
                break;
            }
            removed += 1;
        }
        if removed > 0 {
            let min = log.min_offset();
            log::info!(
                "retention removed {removed} commit-log file(s); the log now starts at {min}"
            );
            for (_, _, q) in queues.all() {
                q.delete_below(min)?;
            }
        }
        Ok(removed)
    }
}

/// The retention thread: samples the disk every `disk_check_interval` and applies the
/// rules after each sample.
pub(crate) struct RetentionThread {
    stop: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl RetentionThread {
    /// The retention thread, while it runs.
    pub(crate) fn thread_id(&self) -> Option<std::thread::ThreadId> {
        self.thread.lock().as_ref().map(|t| t.thread().id())
    }

    pub(crate) fn start(
        retention: Arc<Retention>,
        log: Arc<CommitLog>,
        queues: Arc<ConsumeQueues>,
        readers: Arc<Readers>,
    ) -> crate::Result<RetentionThread> {
        let stop = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
        let st = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("rocketstore-retention".into())
            .spawn(move || {
                // Waits `d` unless stopped first; true when not stopped.
                let pause = |d: Duration| {
                    let mut stopped = st.0.lock();
                    if !*stopped {
                        st.1.wait_for(&mut stopped, d);
                    }
                    !*stopped
                };
                loop {
                    if let Some(used) = log.disk().maybe_sample() {
                        let mut pace = || pause(retention.delete_interval);
                        if let Err(e) =
                            retention.maybe_clean(&log, &queues, used, &readers, &mut pace)
                        {
                            log::error!("retention failed: {e}");
                        }
                    }
                    if !pause(retention.disk_check_interval) {
                        return;
                    }
                }
            })
            .map_err(|e| crate::Error::io("spawn retention thread", "", e))?;
        Ok(RetentionThread {
            stop,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread, cutting a paced series of deletions short.
    pub(crate) fn shutdown(&self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        let handle = self.thread.lock().take();
        if let Some(t) = handle
            && t.join().is_err()
        {
            log::error!("the retention thread panicked");
        }
    }
}
