//! Every file-system call that changes what is on disk outside a mapping: create, rename,
//! remove and sync of files and directories. Each consults the [`IoHook`] first, so a test
//! can fail or stall any of them.
//!
//! The hook covers the data files (commit log, consume queues) and their directories, and
//! the deleted-topics file. The other control files (the lock, the abort marker, the
//! checkpoint and the queue table) pass `None`: a test that stalls every sync of the data
//! must still be able to open a store.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;

/// The hook as the store threads it through.
pub(crate) type Hook<'a> = Option<&'a Arc<dyn IoHook>>;

/// Makes a directory's entries (a created or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    sync_dir_with(dir, None)
}

/// [`sync_dir`], through the fault-injection hook.
pub(crate) fn sync_dir_with(dir: &Path, hook: Hook<'_>) -> Result<()> {
    if let Some(h) = hook {
        h.before_sync_dir(dir)
            .map_err(|e| Error::io("sync directory", dir, e))?;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", dir, e))
}

/// Creates `dir` and any missing parents, syncing the parent of each directory created, so
/// that a crash cannot lose the path to files made durable inside it.
pub(crate) fn create_dir_durable(dir: &Path, hook: Hook<'_>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        at = d.parent();
    }
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    // Outermost first: each new name is durable before anything is created below it.
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            // A relative name's parent may be empty: the current directory.
            let parent = match parent.as_os_str().is_empty() {
                true => Path::new("."),
                false => parent,
            };
            sync_dir_with(parent, hook)?;
        }
    }
    Ok(())
}

/// A small text file's content, `None` if there is no such file. Bytes that are not
/// UTF-8 are damage to the file (`BadStoreFile`), not an I/O error.
pub(crate) fn read_text(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(Error::BadStoreFile {
            path: path.to_owned(),
            reason: "not UTF-8 text".into(),
        }),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Opens an existing store file for reading and writing, with its length.
pub(crate) fn open_existing(path: &Path) -> Result<(File, u64)> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    Ok((file, len))
}

/// Removes a store file, through the fault-injection hook; a missing one is fine.
pub(crate) fn remove_file_with(path: &Path, hook: Hook<'_>) -> Result<()> {
    remove(path, hook, true, |p| fs::remove_file(p))
}

/// Removes a file that must exist (a missing one is an error), through the hook.
pub(crate) fn remove_existing(path: &Path, hook: Hook<'_>) -> Result<()> {
    remove(path, hook, false, |p| fs::remove_file(p))
}

/// Removes a directory and everything in it, through the hook; a missing one is fine.
pub(crate) fn remove_dir_all(dir: &Path, hook: Hook<'_>) -> Result<()> {
    remove(dir, hook, true, |p| fs::remove_dir_all(p))
}

fn remove(
    path: &Path,
    hook: Hook<'_>,
    missing_ok: bool,
    op: fn(&Path) -> io::Result<()>,
) -> Result<()> {
    if let Some(h) = hook {
        h.before_remove(path)
            .map_err(|e| Error::io("remove", path, e))?;
    }
    match op(path) {
        Err(e) if !(missing_ok && e.kind() == io::ErrorKind::NotFound) => {
            Err(Error::io("remove", path, e))
        }
        _ => Ok(()),
    }
}

/// Replaces `path` with `bytes` atomically and durably: a synced `.tmp` sibling renamed over
/// it, then the directory synced. A crash leaves the old file or the new one, never a mix.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], hook: Hook<'_>) -> Result<()> {
    replace_file_telling(path, bytes, hook).map_err(|f| f.error)
}

/// A failed [`replace_file_telling`].
#[derive(Debug)]
pub(crate) struct ReplaceFailed {
    pub(crate) error: Error,
    /// The rename was done (or tried): the new file may be on disk. When false, the old
    /// one is there unchanged.
    pub(crate) maybe_replaced: bool,
}

impl From<ReplaceFailed> for Error {
    fn from(f: ReplaceFailed) -> Error {
        f.error
    }
}

/// [`replace_file`], telling a failure before the rename (the old file stands, and the
/// temporary file is removed) from one at or after it (which file a crash would leave is
/// unknown until the directory is synced).
pub(crate) fn replace_file_telling(
    path: &Path,
    bytes: &[u8],
    hook: Hook<'_>,
) -> std::result::Result<(), ReplaceFailed> {
    let tmp = path.with_extension("tmp");
    let before_rename = |error: Error| {
        if tmp.is_file() {
            let _ = fs::remove_file(&tmp);
        }
        ReplaceFailed {
            error,
            maybe_replaced: false,
        }
    };
    if let Some(h) = hook {
        h.before_create(&tmp)
            .map_err(|e| before_rename(Error::io("create", &tmp, e)))?;
    }
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(h) = hook {
            h.before_sync(&tmp)?;
        }
        f.sync_all()
    };
    write().map_err(|e| before_rename(Error::io("write", &tmp, e)))?;
    if let Some(h) = hook {
        h.before_rename(path)
            .map_err(|e| before_rename(Error::io("rename", path, e)))?;
    }
    let after_rename = |error: Error| ReplaceFailed {
        error,
        maybe_replaced: true,
    };
    fs::rename(&tmp, path).map_err(|e| after_rename(Error::io("rename", path, e)))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    sync_dir_with(dir.unwrap_or(Path::new(".")), hook).map_err(after_rename)
}
