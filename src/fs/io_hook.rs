//! A seam around the file operations that can fail or stall, so tests can inject faults.

use std::io;
use std::path::Path;

/// Called by the store just before each file operation that touches the disk. Returning an
/// error makes the operation fail with that error; blocking stalls it.
///
/// Production code leaves [`StoreConfig::io_hook`](crate::StoreConfig::io_hook) unset.
/// Tests use it to prove what happens on a slow disk, a full disk or a failed fsync.
///
/// ```
/// use std::{io, path::Path, sync::Arc};
/// use rocketstore::{IoHook, StoreConfig};
///
/// struct FailingSync;
/// impl IoHook for FailingSync {
///     fn before_sync(&self, _path: &Path) -> io::Result<()> {
///         Err(io::Error::other("injected"))
///     }
/// }
/// let config = StoreConfig::new("/tmp/store").io_hook(Arc::new(FailingSync));
/// # let _ = config;
/// ```
pub trait IoHook: Send + Sync + 'static {
    /// Before a file is created: a commit-log, consume-queue or key-index file, or the
    /// temporary file a small metadata file (the deleted-topics record, the abort
    /// marker's poison record) is replaced through.
    fn before_create(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }

    /// Before blocks of a file are allocated (fallocate): a new commit-log file whole, a
    /// consume-queue or key-index file a chunk at a time as it fills. `path` is the file's
    /// final name.
    fn before_allocate(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }

    /// Before a new, fully allocated file is renamed into place under `path`.
    fn before_rename(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }

    /// Before dirty bytes of a file are synced to disk (msync/fdatasync).
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }

    /// Before a directory is synced, making the names created or removed in it durable.
    fn before_sync_dir(&self, dir: &Path) -> io::Result<()> {
        let _ = dir;
        Ok(())
    }

    /// Before a commit-log, consume-queue or key-index file is removed (retention, the
    /// index's file cap, or recovery cutting files past the end of the log).
    fn before_remove(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Ok(())
    }
}
