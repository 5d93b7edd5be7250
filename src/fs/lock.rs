//! The files that say a process has the store open: `{root}/lock`, held with an exclusive
//! OS lock for the life of the store, and `{root}/abort`, present while it runs. Finding
//! `abort` at open means the last run did not shut down cleanly.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::fs::ops::{self, sync_dir};
use crate::layout;

const POISON_PREFIX: &str = "poisoned at flushed offset ";

/// Records in the abort marker that the store was poisoned with `flushed` as its last good
/// flushed offset, so that the next open writes everything past it again before trusting a
/// sync: after a failed fsync the kernel may mark dirty pages clean without writing them,
/// and a reopen in the same boot would read them back from the page cache.
///
/// The marker is replaced whole (a temporary file renamed over it), never truncated and
/// written again: a failure or crash between the two would leave it empty, and an empty
/// marker forgets a poisoning recorded before (a full disk, which often causes the
/// poisoning, fails exactly that write).
pub(crate) fn record_poison(abort: &Path, flushed: u64, hook: ops::Hook<'_>) -> Result<()> {
    ops::replace_file(
        abort,
        format!("{POISON_PREFIX}{flushed}\n").as_bytes(),
        hook,
    )
}

pub(crate) struct StoreLock {
    /// The OS lock lives as long as this descriptor; `None` once released.
    file: Mutex<Option<File>>,
    root: PathBuf,
    last_exit_clean: bool,
    poisoned_at: Option<u64>,
    /// Counted in [`HOLDERS`] until dropped, released or not.
    holder: Holder,
}

/// The roots (by device and inode) of every [`StoreLock`] alive in this process, once
/// per lock. A store's lock outlives the OS lock: after `shutdown` the handle still serves
/// reads from its mappings until it is dropped, so an operation that rewrites files in
/// place (`truncate_log`) must wait for every such handle, not only for the OS lock.
static HOLDERS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// Told whenever a lock leaves [`HOLDERS`].
static HOLDER_GONE: parking_lot::Condvar = parking_lot::Condvar::new();

/// A root's entry in [`HOLDERS`], with the root directory held open: its inode number
/// cannot be given to another directory while the entry stands (a root removed and made
/// again would otherwise pass for the old one).
struct Holder(Option<((u64, u64), File)>);

/// The identity of the directory `root`.
fn root_id(root: &Path) -> Option<((u64, u64), File)> {
    use std::os::unix::fs::MetadataExt;
    let dir = File::open(root).ok()?;
    let m = dir.metadata().ok()?;
    Some(((m.dev(), m.ino()), dir))
}

/// Waits up to `grace` until at most `allowed` locks of `id` are alive; whether they are.
fn wait_for_holders(id: (u64, u64), allowed: usize, grace: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + grace;
    let mut holders = HOLDERS.lock();
    loop {
        if holders.iter().filter(|h| **h == id).count() <= allowed {
            return true;
        }
        if HOLDER_GONE.wait_until(&mut holders, deadline).timed_out() {
            return holders.iter().filter(|h| **h == id).count() <= allowed;
        }
    }
}

/// Waits up to `grace` for every handle of the store at `root` alive in this process
/// (open, or shut down and not dropped) to be dropped; whether none is left. Called
/// before taking the OS lock, so that opens are not refused meanwhile.
pub(crate) fn wait_unheld(root: &Path, grace: std::time::Duration) -> bool {
    root_id(root).is_none_or(|(id, _)| wait_for_holders(id, 0, grace))
}

impl Holder {
    fn new(root: &Path) -> Holder {
        let held = root_id(root);
        if let Some((id, _)) = &held {
            HOLDERS.lock().push(*id);
        }
        Holder(held)
    }

    /// Whether this is the only lock of its root alive.
    fn alone(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|(id, _)| wait_for_holders(*id, 1, std::time::Duration::ZERO))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some((id, _)) = &self.0 {
            let id = *id;
            let mut holders = HOLDERS.lock();
            if let Some(at) = holders.iter().position(|h| *h == id) {
                holders.swap_remove(at);
            }
            HOLDER_GONE.notify_all();
        }
    }
}

impl StoreLock {
    /// Takes the exclusive lock (failing at once if another open store holds it, in this
    /// process or another) and raises the abort marker.
    pub(crate) fn acquire(root: &Path) -> Result<StoreLock> {
        let path = layout::lock_file(root);
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
        let abort = layout::abort_file(root);
        // Errors refuse the open: taken for "no marker", they would open a crashed store
        // as a clean one (its tail unchecked, its marker then removed), or forget a
        // recorded poisoning.
        let (last_exit_clean, poisoned_at) = match std::fs::read(&abort) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let at = text
                    .trim()
                    .strip_prefix(POISON_PREFIX)
                    .and_then(|n| n.parse().ok());
                (false, at)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (true, None),
            Err(e) => return Err(Error::io("read", &abort, e)),
        };
        // Kept as it is when present: a poisoning it records is cleared only once an open
        // has acted on it.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&abort)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("create", &abort, e))?;
        sync_dir(root)?;
        Ok(StoreLock {
            file: Mutex::new(Some(file)),
            root: root.to_owned(),
            last_exit_clean,
            poisoned_at,
            holder: Holder::new(root),
        })
    }

    /// Whether another handle of this process still has the store: open, or shut down
    /// but not dropped (its reads go on from its mappings).
    pub(crate) fn held_elsewhere(&self) -> bool {
        !self.holder.alone()
    }

    /// Whether the previous run shut down cleanly (no abort marker was found).
    pub(crate) fn last_exit_clean(&self) -> bool {
        self.last_exit_clean
    }

    /// Forgets a recorded poisoning: recovery has written and synced what lay past it.
    pub(crate) fn clear_poison(&self) -> Result<()> {
        if self.poisoned_at.is_none() {
            return Ok(());
        }
        let abort = layout::abort_file(&self.root);
        File::create(&abort)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("write", &abort, e))
    }

    /// The flushed offset at which the previous run was poisoned by a failed flush, if it
    /// was (and could record it): bytes past it may be in the page cache but not on disk.
    pub(crate) fn poisoned_at(&self) -> Option<u64> {
        self.poisoned_at
    }

    /// Releases the lock, first removing the abort marker when `clean` (everything is
    /// flushed). Idempotent.
    pub(crate) fn release(&self, clean: bool) -> Result<()> {
        let mut file = self.file.lock();
        if file.is_none() {
            return Ok(());
        }
        if clean {
            let abort = layout::abort_file(&self.root);
            ops::remove_existing(&abort, None)?;
            sync_dir(&self.root)?;
        }
        *file = None;
        Ok(())
    }
}
