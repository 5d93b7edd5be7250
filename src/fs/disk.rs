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
        let st = rustix::fs::statvfs(&self.dir).ok()?;
        if st.f_blocks == 0 {
            return None;
        }
        let used = 1.0 - st.f_bavail as f64 / st.f_blocks as f64;
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
