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

    /// The refusal for a put, if the disk is over the limit.
    pub(crate) fn check(&self) -> crate::Result<()> {
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
