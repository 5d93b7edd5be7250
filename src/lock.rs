//! The files that say a process has the store open: `{root}/lock`, held with an exclusive
//! OS lock for the life of the store, and `{root}/abort`, present while it runs. Finding
//! `abort` at open means the last run did not shut down cleanly.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::mapped_file::sync_dir;

/// Name of the lock file under the root.
pub(crate) const LOCK_FILE: &str = "lock";
/// Name of the abort marker under the root.
pub(crate) const ABORT_FILE: &str = "abort";

pub(crate) struct StoreLock {
    /// The OS lock lives as long as this descriptor; `None` once released.
    file: Mutex<Option<File>>,
    root: PathBuf,
    last_exit_clean: bool,
}

impl StoreLock {
    /// Takes the exclusive lock (failing at once if another open store holds it, in this
    /// process or another) and raises the abort marker.
    pub(crate) fn acquire(root: &Path) -> Result<StoreLock> {
        let path = root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(Error::StoreLocked { path });
            }
            Err(e) => return Err(Error::io("lock", &path, e.into())),
        }
        let abort = root.join(ABORT_FILE);
        let last_exit_clean = !abort.exists();
        File::create(&abort)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("create", &abort, e))?;
        sync_dir(root)?;
        Ok(StoreLock {
            file: Mutex::new(Some(file)),
            root: root.to_owned(),
            last_exit_clean,
        })
    }

    /// Whether the previous run shut down cleanly (no abort marker was found).
    pub(crate) fn last_exit_clean(&self) -> bool {
        self.last_exit_clean
    }

    /// Releases the lock, first removing the abort marker when `clean` (everything is
    /// flushed). Idempotent.
    pub(crate) fn release(&self, clean: bool) -> Result<()> {
        let mut file = self.file.lock();
        if file.is_none() {
            return Ok(());
        }
        if clean {
            let abort = self.root.join(ABORT_FILE);
            fs::remove_file(&abort).map_err(|e| Error::io("remove", &abort, e))?;
            sync_dir(&self.root)?;
        }
        *file = None;
        Ok(())
    }
}
