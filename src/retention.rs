//! Retention: RocketMQ's cleaning rules. Commit-log files older than the reserved time go
//! at the configured hour, or at once when the disk is fuller than the clean ratio; above
//! the force ratio the oldest go whatever their age. Never the file being written. Then
//! consume-queue files whose entries all point below the log's new start go too.
//!
//! Deleting never races a reader: a removed file is unlinked, and its mapping lives on
//! until the last reader's slice of it is dropped.

use std::time::Duration;

use chrono::{Datelike, Timelike};

use parking_lot::Mutex;

use crate::commit_log::CommitLog;
use crate::config::StoreConfig;
use crate::consume_queues::ConsumeQueues;
use crate::error::Result;

pub(crate) struct Retention {
    reserved: Duration,
    hour: u8,
    clean_ratio: f64,
    force_ratio: f64,
    /// The day (since the epoch) of the last run at the configured hour.
    last_daily_run: Mutex<Option<u64>>,
}

impl Retention {
    pub(crate) fn new(config: &StoreConfig) -> Self {
        Retention {
            reserved: config.file_reserved_time,
            hour: config.delete_hour,
            clean_ratio: config.disk_clean_ratio,
            force_ratio: config.disk_force_clean_ratio,
            last_daily_run: Mutex::new(None),
        }
    }

    /// Applies the rules after a disk sample (`used`: used fraction of the filesystem).
    /// Only files wholly below `dispatched` may go: the dispatch thread still reads the rest.
    pub(crate) fn maybe_clean(
        &self,
        log: &CommitLog,
        queues: &ConsumeQueues,
        used: f64,
        dispatched: u64,
    ) -> Result<usize> {
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
        if daily || used > self.clean_ratio {
            removed += delete_files(log, queues, Some(self.reserved), dispatched)?;
        }
        if used > self.force_ratio {
            removed += delete_files(log, queues, None, dispatched)?;
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
        delete_files(log, queues, Some(self.reserved), dispatched)
    }
}

/// Deletes commit-log files older than `older_than` (or, with `None`, the single oldest
/// file), never the one being written, then the consume-queue files wholly below the log's
/// new start. Returns how many commit-log files went.
fn delete_files(
    log: &CommitLog,
    queues: &ConsumeQueues,
    older_than: Option<Duration>,
    dispatched: u64,
) -> Result<usize> {
    let mut budget = if older_than.is_some() { usize::MAX } else { 1 };
    let removed = log.delete_front_files(|path, end| {
        if budget == 0 || end > dispatched {
            return false;
        }
        let old = match older_than {
            None => true,
            Some(age) => std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e >= age),
        };
        if old {
            budget -= 1;
        }
        old
    })?;
    if removed > 0 {
        let min = log.min_offset();
        log::info!("retention removed {removed} commit-log file(s); the log now starts at {min}");
        for (_, _, q) in queues.all() {
            q.delete_below(min)?;
        }
    }
    Ok(removed)
}
