//! The ordered, fixed-size files behind the commit log or one consume queue, each named by
//! the offset of its first byte. It knows files and offsets, not records.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::mapped_file::{MappedFile, extend_file};
use crate::fs::ops;
use crate::layout;

/// The files of one log, contiguous: file `i` starts at `first + i * file_size`, so the
/// file holding an offset is found by one division.
pub(crate) struct MappedFileQueue {
    file_size: u64,
    files: RwLock<Vec<Arc<MappedFile>>>,
}

impl MappedFileQueue {
    pub(crate) fn new(file_size: u64) -> Self {
        MappedFileQueue {
            file_size,
            files: RwLock::new(Vec::new()),
        }
    }

    pub(crate) fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The file holding `offset`, if it exists.
    pub(crate) fn find(&self, offset: u64) -> Option<Arc<MappedFile>> {
        let files = self.files.read();
        let first = files.first()?.start_offset();
        let index = offset.checked_sub(first)? / self.file_size;
        files.get(usize::try_from(index).ok()?).cloned()
    }

    /// Files from the one holding `from` up to the last, in order.
    pub(crate) fn files_from(&self, from: u64) -> Vec<Arc<MappedFile>> {
        let files = self.files.read();
        let Some(first) = files.first().map(|f| f.start_offset()) else {
            return Vec::new();
        };
        let skip = (from.saturating_sub(first) / self.file_size) as usize;
        files.iter().skip(skip).cloned().collect()
    }

    /// The first file, unless it is the only one (the one being written).
    pub(crate) fn first_of_several(&self) -> Option<Arc<MappedFile>> {
        let files = self.files.read();
        (files.len() > 1).then(|| Arc::clone(&files[0]))
    }

    /// Offset of the first byte still stored.
    pub(crate) fn min_offset(&self) -> Option<u64> {
        self.files.read().first().map(|f| f.start_offset())
    }

    /// Removes files from the front while `expired` says so, always keeping the last
    /// `keep` files, and unlinks them. Readers holding slices of a removed file keep its
    /// mapping until they drop them. Returns the removed files.
    pub(crate) fn remove_front_while(
        &self,
        keep: usize,
        mut expired: impl FnMut(&Arc<MappedFile>) -> bool,
    ) -> Result<Vec<Arc<MappedFile>>> {
        let mut files = self.files.write();
        let removable = files.len().saturating_sub(keep);
        let n = files[..removable].iter().take_while(|f| expired(f)).count();
        let mut removed: Vec<_> = files.drain(..n).collect();
        drop(files);
        for i in 0..removed.len() {
            if let Err(e) = removed[i].remove() {
                // The file is still on disk: it and the ones after it go back to the front
                // of the list, or a later deletion would leave a gap in the files.
                let back = removed.split_off(i);
                self.files.write().splice(0..0, back);
                if let Some(file) = removed.first() {
                    file.sync_parent()?;
                }
                return Err(e);
            }
        }
        if let Some(file) = removed.first() {
            file.sync_parent()?;
        }
        Ok(removed)
    }

    /// Appends the next file; it must start where the last one ends.
    pub(crate) fn push(&self, file: Arc<MappedFile>) {
        let mut files = self.files.write();
        if let Some(last) = files.last() {
            assert_eq!(
                last.start_offset() + self.file_size,
                file.start_offset(),
                "mapped files must be contiguous"
            );
        }
        files.push(file);
    }

    /// Opens every file in the directory, in offset order. Leftover `.tmp` files of an
    /// interrupted allocation are removed; any other stray name, a file of the wrong size,
    /// a misaligned name or a gap between files is refused with [`Error::BadStoreFile`].
    /// With `repair_short` (recovery after a crash), a file shorter than `file_size` is
    /// extended with zeros: its missing tail counts as never written, and recovery ends the
    /// log at the first record it lacks.
    pub(crate) fn load_files(
        dir: &Path,
        file_size: u64,
        hook: Option<Arc<dyn IoHook>>,
        repair_short: bool,
    ) -> Result<Vec<MappedFile>> {
        let offsets = list_files(dir, file_size, hook.as_ref())?;
        for &offset in offsets.iter().filter(|_| repair_short) {
            let path = dir.join(layout::file_name(offset));
            let len = fs::metadata(&path)
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            if len < file_size {
                log::warn!(
                    "{} is {len} bytes, short of {file_size}: extending it with zeros",
                    path.display()
                );
                extend_file(&path, file_size)?;
            }
        }
        offsets
            .into_iter()
            .map(|offset| {
                MappedFile::open(
                    &dir.join(layout::file_name(offset)),
                    offset,
                    file_size as usize,
                    hook.clone(),
                )
            })
            .collect()
    }
}

/// The start offsets of the data files in `dir`, in order. Leftover `.tmp` files of an
/// interrupted allocation are removed; any other stray name, a misaligned name or a gap
/// between files is refused with [`Error::BadStoreFile`].
pub(crate) fn list_files(
    dir: &Path,
    file_size: u64,
    hook: Option<&Arc<dyn IoHook>>,
) -> Result<Vec<u64>> {
    let mut offsets = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if layout::is_tmp_file_name(&name) {
            log::info!("removing unfinished allocation {}", path.display());
            ops::remove_file_with(&path, hook)?;
            continue;
        }
        let bad = |reason: String| Error::BadStoreFile {
            path: path.clone(),
            reason,
        };
        let offset = layout::parse_file_name(&name).ok_or_else(|| {
            bad("not a data file name (20 decimal digits, at most i64::MAX)".into())
        })?;
        if !offset.is_multiple_of(file_size) {
            return Err(bad(format!(
                "offset {offset} is not a multiple of the file size {file_size}"
            )));
        }
        offsets.push(offset);
    }
    offsets.sort_unstable();
    for pair in offsets.windows(2) {
        if pair[1] != pair[0] + file_size {
            return Err(Error::BadStoreFile {
                path: dir.join(layout::file_name(pair[1])),
                reason: format!("gap in the files: the previous file starts at {}", pair[0]),
            });
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_is_by_division() {
        let dir = tempfile::tempdir().unwrap();
        let q = MappedFileQueue::new(65536);
        for i in 0..3u64 {
            let f = MappedFile::create(dir.path(), (i + 2) * 65536, 65536, None).unwrap();
            q.push(Arc::new(f));
        }
        assert!(q.find(65536).is_none());
        assert_eq!(q.find(2 * 65536).unwrap().start_offset(), 2 * 65536);
        assert_eq!(q.find(3 * 65536 + 17).unwrap().start_offset(), 3 * 65536);
        assert_eq!(q.find(5 * 65536 - 1).unwrap().start_offset(), 4 * 65536);
        assert!(q.find(5 * 65536).is_none());
        assert_eq!(q.files_from(3 * 65536 + 5).len(), 2);
    }

    #[test]
    fn load_refuses_stray_names_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        MappedFile::create(dir.path(), 0, 65536, None).unwrap();
        MappedFile::create(dir.path(), 2 * 65536, 65536, None).unwrap();
        let err = MappedFileQueue::load_files(dir.path(), 65536, None, false).unwrap_err();
        assert!(err.to_string().contains("gap"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let err = MappedFileQueue::load_files(dir.path(), 65536, None, false).unwrap_err();
        assert!(matches!(err, Error::BadStoreFile { .. }), "{err}");

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(layout::file_name(100)), b"x").unwrap();
        let err = MappedFileQueue::load_files(dir.path(), 65536, None, false).unwrap_err();
        assert!(err.to_string().contains("multiple"), "{err}");

        // A name past RocketMQ's signed offsets, a multiple of the file size within one
        // file of u64::MAX: its end would overflow.
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(layout::file_name(u64::MAX / 65536 * 65536)),
            b"x",
        )
        .unwrap();
        let err = MappedFileQueue::load_files(dir.path(), 65536, None, false).unwrap_err();
        assert!(err.to_string().contains("i64::MAX"), "{err}");
    }

    #[test]
    fn load_removes_unfinished_allocations() {
        let dir = tempfile::tempdir().unwrap();
        MappedFile::create(dir.path(), 0, 65536, None).unwrap();
        fs::write(dir.path().join(layout::tmp_file_name(65536)), b"x").unwrap();
        let files = MappedFileQueue::load_files(dir.path(), 65536, None, false).unwrap();
        assert_eq!(files.len(), 1);
        assert!(!dir.path().join(layout::tmp_file_name(65536)).exists());
    }
}
