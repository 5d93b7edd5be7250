//! Fixed-size files read and written by position (pread/pwrite), not mapped, whose disk
//! blocks are allocated in chunks as they fill: the consume queues' files.
//!
//! A store with a hundred thousand queues cannot map a file per queue (Linux allows 65,530
//! mappings per process by default) nor allocate every file whole (6 MB each by default).
//! Written by position, a write to a hole on a full disk fails with `ENOSPC` instead of
//! raising SIGBUS, and the chunked allocation ahead of the writer keeps a small queue's cost
//! at a page of disk.
//!
//! Descriptors are kept in a bounded [`FileCache`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::mapped_file::PAGE_SIZE;

/// The first chunk of blocks allocated for a file; each later chunk doubles the allocated
/// size, up to [`MAX_CHUNK`].
pub(crate) const FIRST_CHUNK: u64 = PAGE_SIZE as u64;
/// The largest chunk allocated at once.
pub(crate) const MAX_CHUNK: u64 = 1 << 20;

/// Creates `path` as a file of `size` bytes holding no blocks yet (a hole reads as zeros),
/// replacing any file there. Needs no free space. Not synced: the caller makes the name
/// durable (see `ConsumeQueues::flush`).
pub(crate) fn create(path: &Path, size: u64, hook: Option<&Arc<dyn IoHook>>) -> Result<File> {
    if let Some(h) = hook {
        h.before_create(path)
            .map_err(|e| Error::io("create", path, e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    file.set_len(size)
        .map_err(|e| Error::io("create", path, e))?;
    Ok(file)
}

/// Opens an existing file of `size` bytes for reading and writing. A longer file is refused
/// with [`Error::BadStoreFile`]; a shorter one too, unless `extend_short` (after a crash,
/// which can leave a new file's length unwritten): its missing tail is then added as a
/// hole, which needs no free space and reads as zeros (never-written entries).
pub(crate) fn open(path: &Path, size: u64, extend_short: bool) -> Result<File> {
    let (file, len) = crate::fs::ops::open_existing(path)?;
    if len > size || (len < size && !extend_short) {
        return Err(Error::BadStoreFile {
            path: path.to_owned(),
            reason: format!("size is {len} bytes, the configured file size is {size}"),
        });
    }
    if len < size {
        log::warn!(
            "{} is {len} bytes, short of {size}: extending it",
            path.display()
        );
        file.set_len(size)
            .map_err(|e| Error::io("extend", path, e))?;
    }
    Ok(file)
}

/// Turns readahead off for this descriptor (only: other descriptors of the file keep
/// theirs). A load reads a few entries of each queue's file; with readahead, each read
/// also read and zeroed the file's holes around them in large folios: 9% of a crash
/// reopen's samples at 100,000 queues, in `memset` alone. Advice only: a failure is
/// ignored.
pub(crate) fn read_sparsely(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Random);
}

/// Opens again a file of this store whose size was checked when it was loaded or created
/// (a descriptor cache miss): no `stat`, which with many queues is one system call in four.
/// A file cut short since then reads as unwritten entries past its end, as a hole would.
pub(crate) fn reopen(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

/// Allocates the blocks of `from..to` (fallocate), so that writes there cannot fail for
/// lack of space. Fails with `ENOSPC` on a full disk, having written nothing.
pub(crate) fn allocate(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    hook: Option<&Arc<dyn IoHook>>,
) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    if let Some(h) = hook {
        h.before_allocate(path)
            .map_err(|e| Error::io("allocate", path, e))?;
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, from, to - from) {
        Ok(()) => Ok(()),
        // Without fallocate the write itself allocates, and fails cleanly when it cannot.
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
        Err(e) => Err(Error::io("allocate", path, e.into())),
    }
}

/// What stands for [`allocate`] when the write that follows allocates its own single page
/// (and fails with `ENOSPC` as cleanly): only the hook's `before_allocate`, so that tests
/// can still fail it as a full disk would.
pub(crate) fn allocated_by_write(path: &Path, hook: Option<&Arc<dyn IoHook>>) -> Result<()> {
    match hook {
        Some(h) => h
            .before_allocate(path)
            .map_err(|e| Error::io("allocate", path, e)),
        None => Ok(()),
    }
}

/// How far to allocate when a write must reach `need` and `allocated` bytes are allocated:
/// the allocated size doubles (from [`FIRST_CHUNK`], by at most [`MAX_CHUNK`]), rounded to
/// pages, never past `size`.
pub(crate) fn next_allocation(allocated: u64, need: u64, size: u64) -> u64 {
    let page = PAGE_SIZE as u64;
    let grown = allocated + allocated.clamp(FIRST_CHUNK, MAX_CHUNK);
    grown
        .max(need)
        .div_ceil(page)
        .saturating_mul(page)
        .min(size)
}

/// Writes all of `bytes` at `pos`. `path` names the file in an error: it is built only
/// then, which keeps a path's allocation off the consume queues' commits.
pub(crate) fn write_at(
    file: &File,
    path: impl FnOnce() -> PathBuf,
    bytes: &[u8],
    pos: u64,
) -> Result<()> {
    file.write_all_at(bytes, pos)
        .map_err(|e| Error::io("write", path(), e))
}

/// Reads `buf.len()` bytes at `pos`; fewer only at the end of the file.
pub(crate) fn read_at(file: &File, path: &Path, buf: &mut [u8], pos: u64) -> Result<usize> {
    read_fully(file, buf, pos).map_err(|e| Error::io("read", path, e))
}

/// [`read_at`] without a path to name: the read path builds one only for an error.
pub(crate) fn read_fully(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Makes the written bytes of `file` durable (fdatasync), through the hook.
pub(crate) fn sync_data(file: &File, path: &Path, hook: Option<&Arc<dyn IoHook>>) -> Result<()> {
    if let Some(h) = hook {
        h.before_sync(path)
            .map_err(|e| Error::io("sync", path, e))?;
    }
    rustix::fs::fdatasync(file).map_err(|e| Error::io("sync", path, e.into()))
}

/// Makes everything written on the filesystem holding `dir` durable, names included, in one
/// call (syncfs): how many queues' files are synced at once. `dir` must stay open from
/// before the writes, so that a write-back error since then is reported here.
pub(crate) fn sync_filesystem(
    dir: &File,
    path: &Path,
    hook: Option<&Arc<dyn IoHook>>,
) -> Result<()> {
    if let Some(h) = hook {
        h.before_sync(path)
            .map_err(|e| Error::io("sync", path, e))?;
    }
    rustix::fs::syncfs(dir).map_err(|e| Error::io("sync", path, e.into()))
}

/// Where the data of the file may end at or after `from`: the start of the first hole
/// (SEEK_HOLE), or the file's size when the filesystem cannot tell. Bytes past it read as
/// zeros.
pub(crate) fn data_end(file: &File, path: &Path, from: u64) -> Result<u64> {
    use rustix::fs::{SeekFrom, seek};
    match seek(file, SeekFrom::Hole(from)) {
        Ok(end) => Ok(end),
        Err(e) if e == rustix::io::Errno::NXIO => Ok(from),
        Err(_) => file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("stat", path, e)),
    }
}

/// Where the next data of the file starts at or after `from` (SEEK_DATA): bytes before it
/// read as zeros. `None` when only a hole follows; `Some(from)` when the filesystem
/// cannot tell.
pub(crate) fn data_start(file: &File, from: u64) -> Result<Option<u64>> {
    use rustix::fs::{SeekFrom, seek};
    match seek(file, SeekFrom::Data(from)) {
        Ok(at) => Ok(Some(at)),
        Err(e) if e == rustix::io::Errno::NXIO => Ok(None),
        Err(_) => Ok(Some(from)),
    }
}

/// A file's key in the [`FileCache`]: its owner (a number unique in the store) and its
/// start offset.
pub(crate) type FileKey = (u64, u64);

/// Open descriptors of sparse files, at most `capacity` of them; when full, an arbitrary one
/// is closed to make room.
///
/// Its users open a file into the cache only while no removal of that file can run, and
/// forget a file before removing it, so the cache never holds a descriptor of a removed
/// file (which a writer would write to in vain).
pub(crate) struct FileCache {
    capacity: usize,
    files: Mutex<HashMap<FileKey, Arc<File>>>,
}

impl FileCache {
    pub(crate) fn new(capacity: usize) -> Self {
        FileCache {
            capacity: capacity.max(1),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// The cached descriptor of `key`, if any.
    pub(crate) fn get(&self, key: FileKey) -> Option<Arc<File>> {
        self.files.lock().get(&key).cloned()
    }

    /// The cached descriptor of `key`, or `open()`'s, then cached.
    pub(crate) fn get_or_open(
        &self,
        key: FileKey,
        open: impl FnOnce() -> Result<File>,
    ) -> Result<Arc<File>> {
        if let Some(f) = self.get(key) {
            return Ok(f);
        }
        let file = Arc::new(open()?);
        self.insert(key, Arc::clone(&file));
        Ok(file)
    }

    /// Caches `file` as `key`, replacing any descriptor there.
    pub(crate) fn insert(&self, key: FileKey, file: Arc<File>) {
        let mut files = self.files.lock();
        if files.len() >= self.capacity && !files.contains_key(&key) {
            let victim = files.keys().next().copied();
            if let Some(victim) = victim {
                files.remove(&victim);
            }
        }
        files.insert(key, file);
    }

    /// Closes the cached descriptor of `key` (readers holding it keep it until they finish).
    pub(crate) fn forget(&self, key: FileKey) {
        self.files.lock().remove(&key);
    }

    /// How many descriptors are cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.files.lock().len()
    }
}

/// The path of the file starting at `start` in `dir`.
pub(crate) fn path_in(dir: &Path, start: u64) -> PathBuf {
    dir.join(crate::layout::file_name(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_new_file_holds_no_blocks_and_grows_by_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = create(&path, 6_000_000, None).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 6_000_000);
        assert_eq!(meta.blocks(), 0, "a new file takes no disk");
        let to = next_allocation(0, 20, 6_000_000);
        assert_eq!(to, FIRST_CHUNK);
        allocate(&file, &path, 0, to, None).unwrap();
        write_at(&file, || path.clone(), &[7; 20], 0).unwrap();
        let blocks = file.metadata().unwrap().blocks() * 512;
        assert!(
            blocks <= 16 * 1024,
            "{blocks} bytes allocated for one entry"
        );
        let mut buf = [0u8; 40];
        assert_eq!(read_at(&file, &path, &mut buf, 0).unwrap(), 40);
        assert_eq!(&buf[..20], &[7; 20]);
        assert_eq!(&buf[20..], &[0; 20], "past the written bytes: zeros");
    }

    #[test]
    fn allocation_doubles_up_to_the_chunk_limit_and_the_file_size() {
        assert_eq!(next_allocation(4096, 4100, 1 << 30), 8192);
        assert_eq!(next_allocation(8192, 8200, 1 << 30), 16384);
        assert_eq!(next_allocation(4 << 20, (4 << 20) + 1, 1 << 30), 5 << 20);
        assert_eq!(next_allocation(0, 100_000, 1 << 30), 102_400);
        assert_eq!(next_allocation(5_996_544, 6_000_000, 6_000_000), 6_000_000);
    }

    #[test]
    fn open_refuses_a_long_file_and_extends_a_short_one_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [1u8; 100]).unwrap();
        assert!(matches!(
            open(&path, 60, true),
            Err(Error::BadStoreFile { .. })
        ));
        assert!(matches!(
            open(&path, 200, false),
            Err(Error::BadStoreFile { .. })
        ));
        let file = open(&path, 200, true).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 200);
        let mut buf = [9u8; 200];
        read_at(&file, &path, &mut buf, 0).unwrap();
        assert_eq!(&buf[..100], &[1; 100]);
        assert_eq!(&buf[100..], &[0; 100]);
    }

    #[test]
    fn the_cache_stays_bounded_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(2);
        for i in 0..5u64 {
            let path = dir.path().join(i.to_string());
            cache
                .get_or_open((1, i), || create(&path, 10, None))
                .unwrap();
            assert!(cache.len() <= 2);
        }
        assert!(cache.get((1, 4)).is_some(), "the newest is kept");
        cache.forget((1, 4));
        assert!(cache.get((1, 4)).is_none());
    }
}
