//! Disk-usage watch: above a configured ratio the store refuses puts with
//! [`Error::DiskFull`](crate::Error::DiskFull) until space is freed, instead of running the
//! disk to the last block. Sampled by the retention thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub(crate) struct DiskWatch {
    dir: PathBuf,
    limit: f64,
    interval: Duration,
    full: AtomicBool,
    /// Dispatch cannot write the consume queues for lack of space: why.
    stalled: Mutex<Option<String>>,
    is_stalled: AtomicBool,
    /// Last sampled used ratio, as f64 bits.
    used: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl DiskWatch {
    pub(crate) fn new(dir: PathBuf, limit: f64, interval: Duration) -> Self {
        DiskWatch {
            dir,
            limit,
            interval,
            full: AtomicBool::new(false),
            stalled: Mutex::new(None),
            is_stalled: AtomicBool::new(false),
            used: AtomicU64::new(0f64.to_bits()),
            last: Mutex::new(None),
        }
    }

    /// Samples the filesystem when the interval has passed; returns the used fraction when
    /// it did.
    pub(crate) fn maybe_sample(&self) -> Option<f64> {
        {
            let mut last = self.last.lock();
            if last.is_some_and(|t| t.elapsed() < self.interval) {
                return None;
            }
            *last = Some(Instant::now());
        }
        self.sample()
    }

    /// Samples the filesystem now (retention, between two deletions of a series): updates
    /// the disk-full refusal and returns the used fraction (`None` if it cannot be read).
    pub(crate) fn sample(&self) -> Option<f64> {
        let st = rustix::fs::statvfs(&self.dir).ok()?;
        let used = used_ratio(st.f_blocks, st.f_bfree, st.f_bavail)?;
        self.used.store(used.to_bits(), Ordering::Relaxed);
        let was = self.full.swap(used > self.limit, Ordering::AcqRel);
        if was != (used > self.limit) {
            if used > self.limit {
                log::warn!(
                    "disk {:.1}% used, over the {:.1}% limit: refusing puts",
                    used * 100.0,
                    self.limit * 100.0
                );
            } else {
                log::info!("disk {:.1}% used: accepting puts again", used * 100.0);
            }
        }
        Some(used)
    }

    /// Records that dispatch is failing for lack of space (`Some(why)`), or is not.
    pub(crate) fn set_dispatch_stalled(&self, why: Option<String>) {
        let mut stalled = self.stalled.lock();
        if stalled.is_none() && why.is_some() {
            log::warn!("dispatch is out of disk space: refusing puts until it succeeds");
        } else if stalled.is_some() && why.is_none() {
            log::info!("dispatch succeeded again: accepting puts");
        }
        self.is_stalled.store(why.is_some(), Ordering::Release);
        *stalled = why;
    }

    /// The refusal for a put, if the disk is over the limit or dispatch is out of space.
    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.is_stalled.load(Ordering::Acquire)
            && let Some(reason) = self.stalled.lock().clone()
        {
            return Err(crate::Error::DispatchStalled { reason });
        }
        if self.full.load(Ordering::Acquire) {
            return Err(crate::Error::DiskFull {
                used_ratio: f64::from_bits(self.used.load(Ordering::Relaxed)),
                limit: self.limit,
            });
        }
        Ok(())
    }

    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }
}

/// The used fraction of a filesystem of `blocks` blocks, `free` of them free and
/// `available` of those free to unprivileged users, as `df` shows it and RocketMQ computes
/// it: used blocks over used plus available ones. The blocks the filesystem reserves for
/// root count as neither, so the ratio is the same whoever runs the store (a store running
/// as root may write into them, but should not count on it). `None` for a filesystem with
/// no blocks to speak of.
fn used_ratio(blocks: u64, free: u64, available: u64) -> Option<f64> {
    let used = blocks.saturating_sub(free);
    let usable = used.saturating_add(available);
    (usable > 0).then(|| used as f64 / usable as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_blocks_count_neither_as_used_nor_as_available() {
        // A filesystem seen here: 252 GiB, 54 GiB used, 37 GiB available, and the rest
        // reserved for root. `df` shows 59% used; counting the reserve as used would
        // read 85% and have retention delete unexpired files.
        let used = used_ratio(66_053_021, 52_005_757, 9_774_208).unwrap();
        assert!((used - 0.5897).abs() < 1e-3, "{used}");
        // The usual 5% reserve: half the blocks used reads as 52.6%, not 55%.
        let used = used_ratio(1000, 500, 450).unwrap();
        assert!((used - 500.0 / 950.0).abs() < 1e-9, "{used}");
    }

    #[test]
    fn full_and_empty_filesystems() {
        assert_eq!(used_ratio(1000, 50, 0), Some(1.0));
        assert_eq!(used_ratio(1000, 1000, 1000), Some(0.0));
        assert_eq!(used_ratio(0, 0, 0), None);
        // Inconsistent figures (free above the total) never read as negative.
        assert_eq!(used_ratio(10, 20, 5), Some(0.0));
    }
}
