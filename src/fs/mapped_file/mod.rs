//! One fixed-size, fully allocated file mapped into memory. With [`words`] (a file mapped
//! as shared atomic words, the key index's), the only module where `unsafe` compiles.
//!
//! Concurrency contract, enforced by types:
//! - at most one [`FileWriter`] exists per file, and it only writes at or past the published
//!   write position;
//! - readers only build slices below the published write position, and those bytes never
//!   change again;
//! - every slice owns an `Arc<MappedFile>`, so the mapping outlives every reader.

pub(crate) mod words;

use parking_lot::Mutex;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::ops::{remove_file_with, sync_dir_with};
use crate::layout;

/// How commit-log files are prepared before the writer reaches them.
///
/// All of it runs on the allocation threads (one prepares the next file, one works just
/// ahead of the writer), off the put path: a writer that needs the next file never waits
/// for its warm-up to finish, and a writer that catches up with the thread working ahead
/// of it waits at most for the chunk that thread is writing. See `docs/BENCHMARKS.md` for
/// the measurements behind the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmup {
    /// Only allocate the file; the writer takes the page faults.
    None,
    /// Map the pages just ahead of the writer writable (32 MiB, in aligned 2 MiB chunks)
    /// so the writer finds them mapped and takes no page fault. Where the device's
    /// read-ahead window is under 2 MiB (or unknown), each chunk is first written as zeros
    /// into the page cache (not synced), so that write-back later handles whole 2 MiB
    /// folios where the file system has them (see `MappedFile::touch_ahead`). Working
    /// only ahead keeps few dirty zero pages around for a sync of the whole filesystem to
    /// write back.
    Touch,
    /// Write zeros just ahead of the writer (32 MiB, in 4 MiB chunks) and sync them, so
    /// every block a record lands in was written once before: a sync put's fdatasync then
    /// overwrites data instead of converting an unwritten extent, which costs a journal
    /// commit. Zeroing keeps pace with the writer instead of zeroing whole files ahead.
    /// It stands down while the writer goes faster than 300 MB/s: flushes are then large
    /// enough that the conversion costs little per byte, and the zeros would double the
    /// bytes the disk writes.
    ZeroAndFlush,
}

/// Page size used for warm-up and dirty-page accounting.
pub(crate) const PAGE_SIZE: usize = 4096;

/// Whether the kernel knows `MADV_POPULATE_WRITE` (Linux 5.14 and later), which
/// [`MappedFile::touch_ahead`] needs. Asked once, with an empty range: the kernel checks
/// the advice before the length.
pub(crate) fn populate_write_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let known = memmap2::MmapMut::map_anon(PAGE_SIZE)
            .and_then(|m| m.advise_range(memmap2::Advice::PopulateWrite, 0, 0))
            .is_ok();
        if !known {
            log::warn!("no MADV_POPULATE_WRITE here: async warm-up touches whole files ahead");
        }
        known
    })
}

/// Whether pages faulted in through a mapping of files in `dir` come in folios smaller
/// than 2 MiB: the page cache reads a faulting page in with its neighbours, as much as
/// the device's read-ahead window, and gives the range folios no larger. The window is
/// read from the block device's queue (a partition's disk for a partition), else from
/// the file system's `bdi` (NFS, FUSE). True when it is under 2 MiB or cannot be read
/// (overlay, tmpfs, btrfs): writing zeros first is then merely wasted where folios were
/// large anyway, never wrong.
pub(crate) fn faults_give_small_folios(dir: &Path) -> bool {
    let Ok(st) = rustix::fs::stat(dir) else {
        return true;
    };
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let block = format!("/sys/dev/block/{major}:{minor}");
    let candidates = [
        format!("{block}/queue/read_ahead_kb"),
        format!("{block}/../queue/read_ahead_kb"),
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
    ];
    // A partition has no queue of its own; its disk's is one level up. Without a
    // `partition` file, `..` is not a disk.
    let is_partition = Path::new(&block).join("partition").exists();
    let window = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1 || is_partition)
        .find_map(|(_, path)| {
            std::fs::read_to_string(path)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        });
    window.is_none_or(|kb| kb < 2048)
}

pub(crate) struct MappedFile {
    path: PathBuf,
    /// The mapping outlives the descriptor it was made from, so no descriptor is held per
    /// file: a store with thousands of files does not run out of them.
    map: MmapRaw,
    start_offset: u64,
    size: usize,
    /// Bytes below this are written and immutable; published with Release.
    write_pos: AtomicUsize,
    /// Bytes below this are durable.
    flushed_pos: AtomicUsize,
    writer_taken: AtomicBool,
    hook: Option<Arc<dyn IoHook>>,
    /// Zero- and touch-ahead (see [`MappedFile::zero_ahead`]): once it allowed them
    /// (`FileWriter::allow_zero_ahead`), the writer writes nothing at or past this, which
    /// it raises before a copy that needs it, by 64 KiB steps (`RESERVE_STEP`), or to the
    /// end of the file when it fills the rest...
    reserved: AtomicUsize,
    /// ...and the start of the chunk the ahead thread is writing zeros to (`usize::MAX`
    /// when none). Each side publishes its own and then reads the other's, both SeqCst, so
    /// at least one of them sees the conflict: the writer waits, or the zeroer steps aside.
    zero_claim: AtomicUsize,
    /// Bytes from the writer's position up to here are written zeros, durable.
    zeroed_to: AtomicUsize,
    /// Touch-ahead (see [`MappedFile::touch_ahead`]): how far it got. The pages it
    /// touched below this are zeros in the page cache, mapped writable; a toucher that
    /// fell behind skips the pages nearer the writer.
    touched_to: AtomicUsize,
    /// The writer reserves its bytes before it writes them (`FileWriter::allow_zero_ahead`).
    zero_ahead_allowed: AtomicBool,
    /// A zero-ahead sync of this file failed: the kernel may have reported (and so cleared)
    /// a write-back error of the records' pages with it, so the next flush must fail too.
    zero_sync_failed: Mutex<Option<(io::ErrorKind, String)>>,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("write_pos", &self.write_pos())
            .field("flushed_pos", &self.flushed_pos())
            .finish()
    }
}

impl MappedFile {
    /// Creates `{dir}/{offset:020}` of `size` bytes, allocated on disk before it is mapped,
    /// so a full disk fails here and never as SIGBUS on a later write. The file is built
    /// under a `.tmp` name and renamed, so a crash never leaves a short file with a real name.
    pub(crate) fn create(
        dir: &Path,
        start_offset: u64,
        size: usize,
        hook: Option<Arc<dyn IoHook>>,
    ) -> Result<MappedFile> {
        let path = dir.join(layout::file_name(start_offset));
        let tmp = dir.join(layout::tmp_file_name(start_offset));
        if let Some(h) = &hook {
            h.before_create(&path)
                .map_err(|e| Error::io("create", &path, e))?;
        }
        let result = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| Error::io("create", &tmp, e))?;
            if let Some(h) = &hook {
                h.before_allocate(&path)
                    .map_err(|e| Error::io("allocate", &tmp, e))?;
            }
            allocate(&file, size as u64).map_err(|e| Error::io("allocate", &tmp, e))?;
            file.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
            if let Some(h) = &hook {
                h.before_rename(&path)
                    .map_err(|e| Error::io("rename", &path, e))?;
            }
            fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
            sync_dir_with(dir, hook.as_ref())?;
            Ok(file)
        })();
        let file = match result {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        Self::map(path, file, start_offset, size, 0, hook)
    }

    /// Opens an existing file, which must be exactly `size` bytes. Everything in it is
    /// visible to readers until [`FileWriter::new`] sets the real write position.
    pub(crate) fn open(
        path: &Path,
        start_offset: u64,
        size: usize,
        hook: Option<Arc<dyn IoHook>>,
    ) -> Result<MappedFile> {
        let (file, len) = crate::fs::ops::open_existing(path)?;
        if len != size as u64 {
            return Err(Error::BadStoreFile {
                path: path.to_owned(),
                reason: format!("size is {len} bytes, the configured file size is {size}"),
            });
        }
        Self::map(path.to_owned(), file, start_offset, size, size, hook)
    }

    fn map(
        path: PathBuf,
        file: File,
        start_offset: u64,
        size: usize,
        visible: usize,
        hook: Option<Arc<dyn IoHook>>,
    ) -> Result<MappedFile> {
        let map = MmapOptions::new()
            .len(size)
            .map_raw(&file)
            .map_err(|e| Error::io("mmap", &path, e))?;
        drop(file);
        Ok(MappedFile {
            path,
            map,
            start_offset,
            size,
            write_pos: AtomicUsize::new(visible),
            flushed_pos: AtomicUsize::new(visible),
            writer_taken: AtomicBool::new(false),
            hook,
            reserved: AtomicUsize::new(visible),
            zero_claim: AtomicUsize::new(usize::MAX),
            zeroed_to: AtomicUsize::new(0),
            touched_to: AtomicUsize::new(0),
            zero_ahead_allowed: AtomicBool::new(false),
            zero_sync_failed: Mutex::new(None),
        })
    }

    /// Warms the first `upto` bytes of the file as `warmup` says, giving up at the next
    /// 2 MiB once `give_up` says so. With `zeros`, `Touch` writes each chunk's zeros
    /// through a descriptor before it maps the chunk, as [`MappedFile::touch_ahead`] does
    /// and for the same reason (the caller decides: [`faults_give_small_folios`]).
    pub(crate) fn warm_until(
        &mut self,
        warmup: Warmup,
        zeros: bool,
        upto: usize,
        give_up: &dyn Fn() -> bool,
    ) -> Result<()> {
        const CHUNK: usize = 2 << 20;
        let base = self.map.as_mut_ptr();
        let upto = upto.min(self.size);
        // Where writing zeros fails, touching alone warms the file as well, only in
        // smaller folios.
        let mut fd = match warmup {
            Warmup::Touch if zeros && upto > 0 && populate_write_supported() => {
                OpenOptions::new().write(true).open(&self.path).ok()
            }
            _ => None,
        };
        for start in (0..upto).step_by(CHUNK) {
            if give_up() {
                break;
            }
            let len = CHUNK.min(upto - start);
            match warmup {
                Warmup::None => return Ok(()),
                Warmup::Touch => {
                    let failed = fd.as_ref().and_then(|f| write_zeros(f, start, len).err());
                    if let Some(e) = failed {
                        log::debug!("warming {} by touching only: {e}", self.path.display());
                        fd = None;
                    }
                    let populated = populate_write_supported()
                        && self
                            .map
                            .advise_range(memmap2::Advice::PopulateWrite, start, len)
                            .inspect_err(|e| log::debug!("warming by touching: {e}"))
                            .is_ok();
                    if !populated {
                        for page in (start..start + len).step_by(PAGE_SIZE) {
                            // SAFETY: `page < size`, so the pointer is inside the live
                            // mapping; `&mut self` means no writer or reader exists; the
                            // file holds zeros, so writing 0 changes nothing anyone could
                            // observe.
                            unsafe { base.add(page).write_volatile(0) };
                        }
                    }
                    *self.touched_to.get_mut() = start + len;
                }
                Warmup::ZeroAndFlush => {
                    // SAFETY: `start + len <= size`, inside the mapping; `&mut self` excludes
                    // every other access while we write.
                    unsafe { std::ptr::write_bytes(base.add(start), 0, len) };
                    self.map
                        .flush_range(start, len)
                        .map_err(|e| Error::io("warm-up flush", &self.path, e))?;
                    *self.zeroed_to.get_mut() = start + len;
                }
            }
        }
        Ok(())
    }

    /// Writes zeros over the next bytes past what is zeroed already, while the file is
    /// being written, and syncs them, unless the zeroed bytes already reach `ahead` bytes
    /// past the writer. `file` is the zeroing thread's own descriptor of this file.
    ///
    /// Blocks a file was allocated with are *unwritten* extents: the first fdatasync after
    /// data lands in one must also commit the extent's conversion to the journal, which
    /// costs several times a plain overwrite. Zeroing just ahead of the writer turns them
    /// into written blocks before any record lands there, at the pace the writer goes, so
    /// a sync put's fdatasync is an overwrite and the disk is never busy zeroing a whole
    /// file the writer will not reach for minutes. (The ahead thread does not call this
    /// while the writer goes fast: see `ZERO_AHEAD_MAX_RATE` in `fs/allocate.rs`.)
    ///
    /// The zeros go in with `pwrite` and are synced with `fdatasync`, both on the zeroing
    /// thread's own descriptor: Linux reports a write-back error once per open file, so a
    /// sync through the mapping's file here could take the report of a failed write-back
    /// of records away from the flush that must see it. The writer never waits on the
    /// sync, and waits on the zeroing only if it catches up with the chunk being zeroed
    /// (the caller keeps chunks small, which also keeps the writer's syncs from queueing
    /// long behind theirs); a zeroer that finds the writer already in its chunk skips
    /// past it.
    pub(crate) fn zero_ahead(&self, file: &File, chunk: usize, ahead: usize) -> Result<ZeroAhead> {
        if !self.zero_ahead_allowed.load(Ordering::Acquire) {
            return Ok(ZeroAhead::Done);
        }
        let reserved = self.reserved.load(Ordering::SeqCst);
        let from = self
            .zeroed_to
            .load(Ordering::Acquire)
            .max(reserved.next_multiple_of(PAGE_SIZE));
        if from >= self.size {
            return Ok(ZeroAhead::Done);
        }
        if from >= reserved.saturating_add(ahead) {
            return Ok(ZeroAhead::Idle);
        }
        let len = chunk.min(self.size - from);
        self.zero_claim.store(from, Ordering::SeqCst);
        if self.reserved.load(Ordering::SeqCst) > from {
            // The writer got here first: start again past it.
            self.zero_claim.store(usize::MAX, Ordering::SeqCst);
            return Ok(ZeroAhead::Zeroed);
        }
        // The writer reserves the bytes it is about to write before it copies and then
        // checks the claim (both SeqCst); we published the claim and then saw its
        // reservation end at or below `from`, so it waits for the claim to clear before
        // writing past `from`. Readers never look past the write position.
        let written = write_zeros(file, from, len);
        self.zero_claim.store(usize::MAX, Ordering::SeqCst);
        // Zeros that did not go in leave the file as it was: the ahead thread stops
        // zeroing it, and the writer's own syncs see any write-back error of its pages.
        written.map_err(|e| Error::io("zero-ahead write", &self.path, e))?;
        // Like the warm-up of a new file, this sync is not a fault seam of `IoHook`: tests
        // stall and fail the syncs that make records durable. A real failure here fails
        // the file's next flush (below), and with it the store.
        if let Err(e) = file.sync_data() {
            *self.zero_sync_failed.lock() = Some((e.kind(), e.to_string()));
            return Err(Error::io("zero-ahead", &self.path, e));
        }
        self.zeroed_to.fetch_max(from + len, Ordering::AcqRel);
        Ok(ZeroAhead::Zeroed)
    }

    /// Maps the next chunk (up to the next multiple of `chunk`) past what is touched
    /// already writable, unless the touched pages reach `ahead` bytes past the writer
    /// already, so the writer's copies take no page fault.
    ///
    /// With `zeros` (the ahead thread's own descriptor of this file, where
    /// [`faults_give_small_folios`]), the chunk is first filled with zeros in the page
    /// cache by one `pwrite`, under the same claim as [`MappedFile::zero_ahead`] (the
    /// writer must have allowed it: [`FileWriter::allow_zero_ahead`]), but not synced.
    /// Where the file system has large folios (XFS; ext4 since Linux 6.16; measured on
    /// ext4 under 6.18), the page cache then holds it in one 2 MiB folio, which the
    /// mapping maps whole; elsewhere both ways give 4 KiB pages.
    /// Faulting fresh pages in through the mapping (`MADV_POPULATE_WRITE` alone) gives
    /// folios as large as the device's read-ahead window, 128 KiB by default: a write-back
    /// of the records must then write-protect and flush the TLB page by page, which made
    /// an `msync` of 512 MiB take 1.7 s instead of 0.3 s here, and held async puts to half
    /// their speed. With zeros the toucher never claims within a chunk of the writer's
    /// reservation (one that fell behind skips ahead), since a writer reaching a claimed
    /// chunk waits for its `pwrite`.
    ///
    /// Without `zeros`, `MADV_POPULATE_WRITE` faults pages in as a write would, without
    /// changing a byte: safe beside the writer without any claim, from the writer on.
    ///
    /// Why not the whole next file at once: a touched page is a dirty page of zeros, and a
    /// sync of the whole filesystem (the consume queues' flush, with many queues) writes
    /// every one of them to disk, doubling the disk's write load (measured: 4.1–4.4 GB
    /// written for 2.2 GB of records) and stalling the next file's allocation behind it.
    pub(crate) fn touch_ahead(
        &self,
        zeros: Option<&File>,
        chunk: usize,
        ahead: usize,
    ) -> Result<ZeroAhead> {
        let Some(file) = zeros else {
            return self.populate_ahead(chunk, ahead);
        };
        if !self.zero_ahead_allowed.load(Ordering::Acquire) {
            return Ok(ZeroAhead::Done);
        }
        let reserved = self.reserved.load(Ordering::SeqCst);
        // Never within a chunk of the writer's reservation: a writer reaching a claimed
        // chunk waits for its `pwrite`. A toucher that fell behind skips ahead and leaves
        // the writer to fault the pages between in itself, as with no warm-up. (Keeping
        // half the lead instead made the writer fault more and wait less: with four
        // producers and 128 KiB read-ahead, 0.60–0.66 M/s against 0.71–0.75 M/s.)
        let floor = (reserved + chunk).next_multiple_of(chunk);
        let from = self
            .touched_to
            .load(Ordering::Acquire)
            .max(floor)
            .min(self.size);
        if from >= self.size {
            return Ok(ZeroAhead::Done);
        }
        if from >= reserved.saturating_add(ahead) {
            return Ok(ZeroAhead::Idle);
        }
        // Up to the next multiple of `chunk`, so that chunks are aligned.
        let len = (chunk - from % chunk).min(self.size - from);
        self.zero_claim.store(from, Ordering::SeqCst);
        if self.reserved.load(Ordering::SeqCst) > from {
            self.zero_claim.store(usize::MAX, Ordering::SeqCst);
            return Ok(ZeroAhead::Zeroed);
        }
        // As in `zero_ahead`: the writer waits for the claim to clear before it writes
        // past `from`.
        let written = write_zeros(file, from, len);
        self.zero_claim.store(usize::MAX, Ordering::SeqCst);
        if let Err(e) = written {
            // Mapping the pages still spares the writer its faults, in smaller folios.
            log::debug!("touching {} without zeros first: {e}", self.path.display());
        }
        // Safe beside the writer: `MADV_POPULATE_WRITE` faults pages in as a write would,
        // without changing a byte.
        self.map
            .advise_range(memmap2::Advice::PopulateWrite, from, len)
            .map_err(|e| Error::io("touch-ahead", &self.path, e))?;
        self.touched_to.fetch_max(from + len, Ordering::AcqRel);
        Ok(ZeroAhead::Zeroed)
    }

    /// [`MappedFile::touch_ahead`] without zeros: maps the next chunk writable, from the
    /// writer's page on.
    fn populate_ahead(&self, chunk: usize, ahead: usize) -> Result<ZeroAhead> {
        let writer = self.write_pos();
        let from = self
            .touched_to
            .load(Ordering::Acquire)
            .max(writer - writer % PAGE_SIZE);
        if from >= self.size {
            return Ok(ZeroAhead::Done);
        }
        if from >= writer.saturating_add(ahead) {
            return Ok(ZeroAhead::Idle);
        }
        let len = (chunk - from % chunk).min(self.size - from);
        self.map
            .advise_range(memmap2::Advice::PopulateWrite, from, len)
            .map_err(|e| Error::io("touch-ahead", &self.path, e))?;
        self.touched_to.fetch_max(from + len, Ordering::AcqRel);
        Ok(ZeroAhead::Zeroed)
    }

    /// Whether the writer lets a thread write zeros ahead of it.
    pub(crate) fn zero_ahead_allowed(&self) -> bool {
        self.zero_ahead_allowed.load(Ordering::Acquire)
    }

    /// How far past the start the file is zeroed or touched ahead of its writer.
    #[cfg(test)]
    pub(crate) fn ahead_to(&self) -> usize {
        let zeroed = self.zeroed_to.load(Ordering::Acquire);
        zeroed.max(self.touched_to.load(Ordering::Acquire))
    }

    /// Makes the whole file read as zeros, durably, without reading it (see
    /// [`FileWriter::zero_tail`]); `&mut self` proves nobody else sees it. False when the
    /// file system cannot.
    pub(crate) fn zero_unread(&mut self) -> Result<bool> {
        zero_range_unread(&self.path, 0, self.size)
    }

    /// Whether nothing was ever written at the start of the file.
    pub(crate) fn is_unused(self: &Arc<Self>) -> bool {
        self.slice(0, 8).is_some_and(|b| b.iter().all(|&x| x == 0))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file from its directory (readers keep the mapping), through the hook.
    pub(crate) fn remove(&self) -> Result<()> {
        remove_file_with(&self.path, self.hook.as_ref())
    }

    /// Syncs the directory holding the file, through the hook.
    pub(crate) fn sync_parent(&self) -> Result<()> {
        let dir = self.path.parent().expect("files live in a directory");
        sync_dir_with(dir, self.hook.as_ref())
    }

    /// Commit-log offset of the first byte of this file.
    pub(crate) fn start_offset(&self) -> u64 {
        self.start_offset
    }

    /// File size in bytes.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// End of the bytes readers may see.
    pub(crate) fn write_pos(&self) -> usize {
        self.write_pos.load(Ordering::Acquire)
    }

    pub(crate) fn flushed_pos(&self) -> usize {
        self.flushed_pos.load(Ordering::Acquire)
    }

    /// A zero-copy view of `len` bytes at `pos`, or `None` when any of it lies at or past
    /// the published write position. The view keeps the mapping alive.
    pub(crate) fn slice(self: &Arc<Self>, pos: usize, len: usize) -> Option<Bytes> {
        let end = pos.checked_add(len)?;
        if end > self.write_pos() {
            return None;
        }
        Some(Bytes::from_owner(MappedSlice {
            file: Arc::clone(self),
            pos,
            len,
        }))
    }

    /// Everything visible from `pos` to the write position.
    pub(crate) fn visible_from(self: &Arc<Self>, pos: usize) -> Option<Bytes> {
        let len = self.write_pos().checked_sub(pos)?;
        self.slice(pos, len)
    }

    /// Makes every written byte durable (msync of the dirty range, which on Linux is an
    /// fdatasync of that range) and returns the new flushed position. Callers serialise
    /// flushes of one file (the commit log's flush lock).
    pub(crate) fn flush(&self) -> Result<usize> {
        self.check_zero_syncs()?;
        let write = self.write_pos();
        let flushed = self.flushed_pos();
        if write > flushed {
            if let Some(h) = &self.hook {
                h.before_sync(&self.path)
                    .map_err(|e| Error::io("sync", &self.path, e))?;
            }
            self.map
                .flush_range(flushed, write - flushed)
                .map_err(|e| Error::io("sync", &self.path, e))?;
            // A zero-ahead sync that failed while this one ran may have written back (and
            // failed on) record pages this sync then found clean.
            self.check_zero_syncs()?;
            self.flushed_pos.store(write, Ordering::Release);
        }
        Ok(write.max(flushed))
    }

    /// The failure of a zero-ahead sync of this file, if one failed.
    fn check_zero_syncs(&self) -> Result<()> {
        match self.zero_sync_failed.lock().clone() {
            None => Ok(()),
            Some((kind, why)) => {
                let e = io::Error::new(
                    kind,
                    format!("a zero-ahead sync of this file failed: {why}"),
                );
                Err(Error::io("sync", &self.path, e))
            }
        }
    }
}

impl MappedFile {
    /// Writes bytes `from..to` of the file back over themselves through the file (not the
    /// mapping), so their pages are dirty again and the next sync really writes them.
    ///
    /// Recovery does this for what lies past the checkpoint's durable offset: if an fsync
    /// failed earlier in this boot, the kernel may have marked those pages clean without
    /// writing them, and a sync would then "succeed" for bytes that are not on the disk.
    pub(crate) fn rewrite(self: &Arc<Self>, from: usize, to: usize) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        if from >= to {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| Error::io("open", &self.path, e))?;
        let mut at = from;
        while at < to {
            let len = CHUNK.min(to - at);
            let bytes = self
                .slice(at, len)
                .expect("recovery rewrites only visible bytes");
            file.write_all_at(&bytes, at as u64)
                .map_err(|e| Error::io("rewrite", &self.path, e))?;
            at += len;
        }
        Ok(())
    }

    /// Asks the kernel to start reading `from..to` (clamped to the file) into the page
    /// cache: a recovery scan that follows finds the pages there. A hint only: an error is
    /// ignored, as a failed read shows where the scan reads. A request may wait for the
    /// disk once its queue is full; `stop` is asked between requests.
    pub(crate) fn will_need(&self, from: usize, to: usize, stop: impl Fn() -> bool) {
        // Linux reads at most the device's readahead size per call (8 MiB of a 60 MB
        // range here), so the range is asked for a chunk at a time.
        const CHUNK: usize = 4 << 20;
        let to = to.min(self.size);
        let mut at = from;
        while at < to && !stop() {
            let len = CHUNK.min(to - at);
            let _ = self.map.advise_range(memmap2::Advice::WillNeed, at, len);
            at += len;
        }
    }

    /// Syncs every dirty page of the file, whoever wrote it (used by recovery, for pages a
    /// crashed process left in the page cache).
    pub(crate) fn sync_all(&self) -> Result<()> {
        if let Some(h) = &self.hook {
            h.before_sync(&self.path)
                .map_err(|e| Error::io("sync", &self.path, e))?;
        }
        self.map
            .flush()
            .map_err(|e| Error::io("sync", &self.path, e))
    }
}

/// Whether every byte of `bytes` is zero, compared against zeros a block at a time (memcmp
/// runs many times faster than a byte loop: recovery checks a whole file's tail with it).
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    bytes
        .chunks(ZEROS.len())
        .all(|chunk| chunk == &ZEROS[..chunk.len()])
}

/// Asks the CPU to bring the cache line holding `bytes[at]` into its caches, without
/// waiting for it; nothing when `at` is outside `bytes` or the CPU has no such hint. The
/// log's readers (the dispatchers) walk records whose header and tail lie a kilobyte
/// apart, each a cache miss when read in turn; hinted a few records ahead, the misses
/// overlap with the work on the records before them.
#[inline(always)]
pub(crate) fn prefetch(bytes: &[u8], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(byte) = bytes.get(at) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has. It is a hint that
        // never faults and writes nothing, and the pointer is to a byte of a live slice.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(byte).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, at);
}

/// [`prefetch`] with intent to write, for a pointer into a mapping. A build whose target
/// has `prfchw` emits `PREFETCHW`, which brings the line in owned; the default x86_64
/// target has not, and the compiler emits a read prefetch, which brings in owned
/// (exclusive) a line no other cache holds, as the lines ahead of the writer are: either
/// way a store to it does not wait for a read for ownership.
#[inline(always)]
fn prefetch_write(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
        // SAFETY: as in `prefetch`: a prefetch (whichever instruction the target gets) is
        // a hint that never faults and changes no memory, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_ET0>(at.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Allocates `len` bytes of real disk blocks; falls back to writing zeros where the
/// filesystem has no fallocate.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            let zeros = vec![0u8; 1 << 20];
            let mut left = len;
            let mut w = io::BufWriter::new(file);
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            w.flush()
        }
        Err(e) => Err(e.into()),
    }
}

/// Extends a file to `len` bytes of allocated zeros and syncs it.
pub(crate) fn extend_file(path: &Path, len: u64) -> Result<()> {
    let (file, have) = crate::fs::ops::open_existing(path)?;
    if have < len {
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), have, len - have)
            .map_err(|e| Error::io("allocate", path, e.into()))?;
    }
    file.sync_all().map_err(|e| Error::io("sync", path, e))
}

/// The ranges of `[from, to)` in the file at `path` that may hold data, by `SEEK_DATA` and
/// `SEEK_HOLE`, so a caller can skip what is known to read as zeros; the whole range when
/// the file system cannot tell.
fn data_ranges(path: &Path, from: usize, to: usize) -> Result<Vec<(usize, usize)>> {
    use rustix::fs::{SeekFrom, seek};
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut ranges = Vec::new();
    let mut at = from as u64;
    while at < to as u64 {
        let data = match seek(&file, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only holes from here to the end
            Err(_) => return Ok(vec![(from, to)]),
        };
        if data >= to as u64 {
            break;
        }
        let hole = match seek(&file, SeekFrom::Hole(data)) {
            Ok(h) => h.min(to as u64),
            Err(_) => return Ok(vec![(from, to)]),
        };
        if hole <= data {
            return Ok(vec![(from, to)]);
        }
        ranges.push((data as usize, hole as usize));
        at = hole;
    }
    Ok(ranges)
}

/// Writes `len` zeros at `at` through `file`, in writes of up to 2 MiB (the page cache
/// gives each aligned write a folio of its size).
fn write_zeros(file: &File, at: usize, len: usize) -> io::Result<()> {
    static ZEROS: [u8; 2 << 20] = [0; 2 << 20];
    let mut done = 0;
    while done < len {
        let n = ZEROS.len().min(len - done);
        file.write_all_at(&ZEROS[..n], (at + done) as u64)?;
        done += n;
    }
    Ok(())
}

/// What one [`MappedFile::zero_ahead`] (or [`MappedFile::touch_ahead`]) step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroAhead {
    /// Zeroed (touched) a chunk, or stepped past the writer: call again.
    Zeroed,
    /// Far enough ahead of the writer for now (or, for zero-ahead, standing down for a
    /// fast writer).
    Idle,
    /// Reached the end of the file.
    Done,
}

/// The owner behind a reader's `Bytes`: a range of a file, and the `Arc` keeping it mapped.
struct MappedSlice {
    file: Arc<MappedFile>,
    pos: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `slice` only builds a MappedSlice when `pos + len <= write_pos`, loaded with
        // Acquire after the writer's Release store, so the bytes are initialised and visible.
        // Bytes below the write position are never written again (FileWriter only writes at
        // or past it, and FileWriter::new refuses to lower it while any slice exists), and
        // `self.file` keeps the mapping alive for as long as this slice lives.
        unsafe { std::slice::from_raw_parts(self.file.map.as_ptr().add(self.pos), self.len) }
    }
}

/// The single writer of one file. Owning it is the right to write past the write position.
pub(crate) struct FileWriter {
    file: Arc<MappedFile>,
    pos: usize,
    /// When set, bytes go in with `pwrite` on this descriptor instead of a copy into the
    /// mapping (readers still read the mapping: it shows the same page cache)...
    through: Option<File>,
    /// ...gathered here first, from file position `staged_at`, and written by
    /// [`FileWriter::commit`] (one `pwrite` per group commit instead of one per put).
    staged: Vec<u8>,
    staged_at: usize,
    /// A zeroing thread may write ahead of this writer (`allow_zero_ahead`): a write past
    /// `reserved_to` then reserves its bytes first, up to the next `RESERVE_STEP`, so that
    /// most writes publish nothing. Plain writers skip that.
    zeroer: bool,
    reserved_to: usize,
    /// The mapping's bytes up to here have been hinted to the CPU for writing
    /// (`WRITE_PREFETCH_LEAD` ahead of the position).
    prefetched_to: usize,
    /// Writes that waited for the zeroing thread's claim, and how long, since the last
    /// [`FileWriter::take_ahead_waits`].
    ahead_waits: u32,
    ahead_wait: Duration,
}

/// How far ahead of its position the writer hints the CPU to fetch the mapping's cache
/// lines (see [`prefetch_write`]). The pages were zeroed long before (by the ahead
/// thread) and their lines have left the caches: without the hint each line of a record
/// is a read for ownership that the copy waits for, and the put lock's atomic publish
/// waits on in turn.
const WRITE_PREFETCH_LEAD: usize = 4 << 10;

/// How far a writer reserves at once, past the end of the write that needs it: most puts
/// then skip the two SeqCst accesses a reservation costs, and the zeroing thread keeps at
/// most this much further from the writer.
const RESERVE_STEP: usize = 64 << 10;

impl FileWriter {
    /// Takes the writer of `file`, setting its write position (and flushed position, since
    /// the bytes come from disk or are new) to `pos`. Refused (`None`) when a writer was
    /// taken before or when anyone else holds the file (a reader's slice, the file queue):
    /// lowering the position under a live reader would let the writer change its bytes.
    pub(crate) fn new(mut file: Arc<MappedFile>, pos: usize) -> Option<FileWriter> {
        let f = Arc::get_mut(&mut file)?;
        if *f.writer_taken.get_mut() || pos > f.size {
            return None;
        }
        *f.writer_taken.get_mut() = true;
        *f.reserved.get_mut() = pos;
        let zeroed = f.zeroed_to.get_mut();
        *zeroed = (*zeroed).max(pos);
        *f.write_pos.get_mut() = pos;
        *f.flushed_pos.get_mut() = pos;
        Some(FileWriter {
            file,
            pos,
            through: None,
            staged: Vec::new(),
            staged_at: pos,
            zeroer: false,
            reserved_to: pos,
            prefetched_to: pos,
            ahead_waits: 0,
            ahead_wait: Duration::ZERO,
        })
    }

    pub(crate) fn file(&self) -> &Arc<MappedFile> {
        &self.file
    }

    /// Bytes left in the file.
    pub(crate) fn remaining(&self) -> usize {
        self.file.size - self.pos
    }

    /// Commit-log offset of the next byte to write.
    pub(crate) fn offset(&self) -> u64 {
        self.file.start_offset + self.pos as u64
    }

    /// Copies `bytes` at the write position without publishing them.
    /// Panics if they do not fit: callers check [`FileWriter::remaining`] first.
    /// Writes through the file (`pwrite`) from now on instead of copying into the mapping,
    /// gathering the bytes in memory until [`FileWriter::commit`].
    ///
    /// For the sync flush path: on ext4 a write through a mapping into a page that a sync
    /// just wrote back costs a page fault that waits milliseconds (measured: 5.9 ms per
    /// 1 KiB write plus msync against 0.26 ms with `pwrite` plus fdatasync), and a sync
    /// writer keeps writing into the page it just synced. The bytes are gathered because a
    /// `pwrite` per put cost the producers more than the copy itself (the system call, and
    /// the inode lock it shares with the zero-ahead thread), while the flush that makes
    /// them durable comes once per group.
    pub(crate) fn write_through_file(&mut self) -> Result<()> {
        let path = &self.file.path;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        self.through = Some(file);
        Ok(())
    }

    /// Lets a zeroing thread write ahead of this writer ([`MappedFile::zero_ahead`] does
    /// nothing on a file whose writer did not allow it); from now on every write reserves
    /// its bytes first. Call it before handing the file to that thread.
    pub(crate) fn allow_zero_ahead(&mut self) {
        self.zeroer = true;
        self.reserved_to = self.pos;
        self.file.reserved.store(self.pos, Ordering::SeqCst);
        self.file.zero_ahead_allowed.store(true, Ordering::Release);
    }

    /// Forgets bytes written since the last [`FileWriter::publish`] (through the file, the
    /// last [`FileWriter::commit`]): after a failed write, the next one starts where
    /// readers' view ends.
    pub(crate) fn rewind(&mut self) {
        self.staged.clear();
        self.pos = self.file.write_pos();
        self.reserved_to = self.pos;
        self.file.reserved.store(self.pos, Ordering::SeqCst);
    }

    /// Writes `bytes` at the write position (not yet visible: see [`FileWriter::publish`]).
    /// Fails only when writing through the file fails; the position is then unchanged,
    /// and the bytes gathered before are lost (the caller rewinds and the log is poisoned).
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        assert!(
            bytes.len() <= self.remaining(),
            "write past the end of a mapped file"
        );
        let end = self.pos + bytes.len();
        if self.zeroer && end > self.reserved_to {
            let to = end.next_multiple_of(RESERVE_STEP).min(self.file.size);
            self.file.reserved.store(to, Ordering::SeqCst);
            self.wait_for_claims_below(to);
            self.reserved_to = to;
        }
        if self.through.is_some() {
            /// Gathered bytes written at once, whoever commits: memory stays bounded
            /// however many puts come between two flushes.
            const MOST_STAGED: usize = 4 << 20;
            if self.staged.len() + bytes.len() > MOST_STAGED {
                // Into the page cache, not yet visible: what is visible (and so what a
                // flush syncs) ends only where a put ended, at the next commit.
                self.write_staged()?;
            }
            if self.staged.is_empty() {
                self.staged_at = self.pos;
            }
            self.staged.extend_from_slice(bytes);
            self.pos = end;
            return Ok(());
        }
        // SAFETY: `pos + len <= size` (checked above), so the range is inside the mapping,
        // which `self.file` keeps alive. Only this writer exists for the file; the zeroing
        // thread writes only past the reservation published above (see `zero_ahead`), and
        // readers never look at or past the published write position, which is
        // <= `self.pos`, so nobody reads or writes these bytes concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.file.map.as_mut_ptr().add(self.pos),
                bytes.len(),
            )
        };
        self.pos += bytes.len();
        self.prefetch_ahead();
        Ok(())
    }

    /// Hints the CPU to fetch, for writing, the cache lines up to `WRITE_PREFETCH_LEAD`
    /// past the position that no earlier write hinted: each line once, a put or so before
    /// a copy needs it.
    #[inline]
    fn prefetch_ahead(&mut self) {
        let want = (self.pos + WRITE_PREFETCH_LEAD).min(self.file.size);
        let mut line = self.prefetched_to.max(self.pos) & !63;
        if line >= want {
            return;
        }
        let base = self.file.map.as_mut_ptr();
        while line < want {
            prefetch_write(base.wrapping_add(line));
            line += 64;
        }
        self.prefetched_to = want;
    }

    /// Marks the rest of the file as used (after a blank end record).
    pub(crate) fn fill(&mut self) {
        self.pos = self.file.size;
        self.reserved_to = self.pos;
        self.file.reserved.store(self.pos, Ordering::SeqCst);
        // The rest becomes visible with the next publish: no zeroing may be under way.
        self.wait_for_claims_below(self.pos);
    }

    /// Waits until the zeroing thread claims nothing below `to` (it is writing a chunk
    /// the writer reached: one short write), counting the wait.
    fn wait_for_claims_below(&mut self, to: usize) {
        if self.file.zero_claim.load(Ordering::SeqCst) >= to {
            return;
        }
        let started = Instant::now();
        while self.file.zero_claim.load(Ordering::SeqCst) < to {
            std::thread::yield_now();
        }
        self.ahead_waits += 1;
        self.ahead_wait += started.elapsed();
    }

    /// How many writes waited for the zeroing thread, and for how long, since the last
    /// call (`None` when none did).
    pub(crate) fn take_ahead_waits(&mut self) -> Option<(u32, Duration)> {
        if self.ahead_waits == 0 {
            return None;
        }
        let waited = (self.ahead_waits, self.ahead_wait);
        (self.ahead_waits, self.ahead_wait) = (0, Duration::ZERO);
        Some(waited)
    }

    /// Zeroes whatever non-zero bytes lie past the write position (the torn tail of a
    /// crashed writer) and syncs them, so no stale bytes can later pass for records.
    ///
    /// Where the file system can (ext4, XFS), the whole tail is declared zero without
    /// being read: its extents become unwritten again and its cached pages go. Reading it
    /// instead costs a page fault per page the warm-up touched: 0.9 s for the 960 MiB
    /// tail of a crashed run's 1 GiB file here, against milliseconds. Elsewhere only the
    /// file's data ranges are read: ranges the file system reports as holes (blocks
    /// allocated but never written, with nothing in the page cache) read as zeros by
    /// definition.
    pub(crate) fn zero_tail(&mut self) -> Result<()> {
        if self.pos < self.file.size && self.zero_range_unread()? {
            return Ok(());
        }
        self.zero_tail_by_writing()
    }

    /// [`FileWriter::zero_tail`] by reading the data ranges and writing zeros over what is
    /// not zero.
    fn zero_tail_by_writing(&mut self) -> Result<()> {
        const CHUNK: usize = 64 * 1024;
        let base = self.file.map.as_mut_ptr();
        let mut dirty: Option<(usize, usize)> = None;
        for (from, to) in data_ranges(&self.file.path, self.pos, self.file.size)? {
            let mut at = from;
            while at < to {
                let len = CHUNK.min(to - at);
                // SAFETY: `at + len <= to <= size`, inside the mapping kept alive by
                // `self.file`. The bytes lie at or past the write position, which only this
                // writer may touch, so no reader slice covers them and nobody writes them
                // concurrently.
                let chunk = unsafe { std::slice::from_raw_parts_mut(base.add(at), len) };
                if !is_zero(chunk) {
                    chunk.fill(0);
                    dirty = Some((dirty.map_or(at, |d| d.0), at + len));
                }
                at += len;
            }
        }
        if let Some((from, to)) = dirty {
            log::warn!(
                "zeroed {} bytes of stale tail in {}",
                to - from,
                self.file.path.display()
            );
            self.file
                .map
                .flush_range(from, to - from)
                .map_err(|e| Error::io("sync", &self.file.path, e))?;
        }
        Ok(())
    }

    /// [`FileWriter::zero_tail`] with `FALLOC_FL_ZERO_RANGE`, then a sync of the file
    /// (the extents' new state is metadata). False when the file system refuses it (not
    /// supported, or out of space for splitting an extent): zeroing by writing needs
    /// neither.
    fn zero_range_unread(&mut self) -> Result<bool> {
        zero_range_unread(&self.file.path, self.pos, self.file.size)
    }

    /// Makes everything written so far visible to readers, unless it is written through
    /// the file: [`FileWriter::commit`] does that then.
    pub(crate) fn publish(&self) {
        if self.through.is_none() {
            self.file.write_pos.store(self.pos, Ordering::Release);
        }
    }

    /// Writes the gathered bytes through the file and makes everything written so far
    /// visible to readers (and to [`MappedFile::flush`]). On failure nothing gathered is
    /// kept: the caller rewinds, and the log refuses writes from then on.
    pub(crate) fn commit(&mut self) -> Result<()> {
        self.write_staged()?;
        self.file.write_pos.store(self.pos, Ordering::Release);
        Ok(())
    }

    /// Writes the gathered bytes through the file without making them visible.
    fn write_staged(&mut self) -> Result<()> {
        if let Some(file) = &self.through
            && !self.staged.is_empty()
        {
            let written = file.write_all_at(&self.staged, self.staged_at as u64);
            self.staged.clear();
            written.map_err(|e| Error::io("write", &self.file.path, e))?;
        }
        Ok(())
    }
}

/// Makes `from..to` of the file at `path` read as zeros without reading it, durably:
/// `FALLOC_FL_ZERO_RANGE` (its extents become unwritten again and their cached pages go,
/// dirty or not, even while mapped), then a sync of the file, since the extents' state is
/// metadata. False when the file system refuses (not supported, or out of space for
/// splitting an extent); the range is then still allocated, or this fails.
fn zero_range_unread(path: &Path, from: usize, to: usize) -> Result<bool> {
    use rustix::fs::{FallocateFlags, fallocate};
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let (at, len) = (from as u64, (to - from) as u64);
    let flags = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
    let zeroed = fallocate(&file, flags, at, len);
    if let Err(e) = zeroed {
        log::debug!("zeroing {from}..{to} of {} in place: {e}", path.display());
        // Some file systems free the blocks first: a failure may leave holes, which a
        // write through the mapping on a full disk would meet as SIGBUS. They are
        // allocated again, or the file is refused.
        if e != rustix::io::Errno::OPNOTSUPP {
            fallocate(&file, FallocateFlags::KEEP_SIZE, at, len)
                .map_err(|e| Error::io("allocate", path, e.into()))?;
        }
    }
    // Also after a failure: what part of the range it did zero must not revert to stale
    // bytes after a power cut once a fallback has read it as zeros.
    file.sync_all().map_err(|e| Error::io("sync", path, e))?;
    Ok(zeroed.is_ok())
}

/// Support for `benches/limits.rs`: the machine's copy bandwidth into a fresh or a
/// pre-touched file mapping, measured through this layer's own create, warm and write.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod probe {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::Warmup;
    use super::{FileWriter, MappedFile, faults_give_small_folios};
    use crate::error::Result;

    /// Creates a `size`-byte mapped file in `dir` (touching its pages first when `touched`)
    /// and returns how long copying `chunk` repeatedly over the whole file took.
    pub fn copy_into_mapping(
        dir: &Path,
        size: usize,
        touched: bool,
        chunk: &[u8],
    ) -> Result<Duration> {
        let mut file = MappedFile::create(dir, 0, size, None)?;
        if touched {
            file.warm_until(Warmup::Touch, faults_give_small_folios(dir), size, &|| {
                false
            })?;
        }
        let mut writer = FileWriter::new(Arc::new(file), 0).expect("a new file has no other owner");
        let started = Instant::now();
        while writer.remaining() >= chunk.len() {
            writer.write(chunk)?;
        }
        Ok(started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_takes_any_position_and_changes_nothing() {
        let bytes: Vec<u8> = (0..=255).collect();
        for at in [0, 63, 64, 255, 256, 4096, usize::MAX] {
            prefetch(&bytes, at);
        }
        prefetch(&[], 0);
        assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn create_allocates_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = MappedFile::create(dir.path(), 65536, 65536, None).unwrap();
        assert_eq!(f.path(), dir.path().join("00000000000000065536"));
        let meta = fs::metadata(f.path()).unwrap();
        assert_eq!(meta.len(), 65536);
        // Fully allocated: the blocks exist, it is not a sparse file.
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= 65536, "file is sparse");
        assert!(!dir.path().join(layout::tmp_file_name(65536)).exists());
    }

    #[test]
    fn readers_see_only_published_bytes_and_keep_the_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(MappedFile::create(dir.path(), 0, 65536, None).unwrap());
        let mut w = FileWriter::new(file, 0).unwrap();
        w.write(b"hello").unwrap();
        let file = Arc::clone(w.file());
        assert!(file.slice(0, 5).is_none(), "unpublished bytes are visible");
        w.publish();
        let s = file.slice(0, 5).unwrap();
        assert!(file.slice(0, 6).is_none());
        drop(w);
        drop(file);
        assert_eq!(&s[..], b"hello", "slice outlived its file handles");
    }

    /// Record `i` of [`write_records_to_the_end`]: sizes and bytes vary with `i`.
    fn record(i: usize) -> Vec<u8> {
        vec![(i % 251) as u8 + 1; 1000 + i % 97]
    }

    /// Writes and publishes records until under 2,000 bytes are left; returns where each
    /// starts and where they end.
    fn write_records_to_the_end(w: &mut FileWriter) -> (Vec<usize>, usize) {
        let end = w.offset() as usize + w.remaining() - 2000;
        write_records_up_to(w, end)
    }

    /// Writes and publishes records until the writer is at `end` or past it (a record is
    /// at most 1,096 bytes); returns where each starts and where they end.
    fn write_records_up_to(w: &mut FileWriter, end: usize) -> (Vec<usize>, usize) {
        let mut at = Vec::new();
        while (w.offset() as usize) < end {
            at.push(w.offset() as usize);
            w.write(&record(at.len() - 1)).unwrap();
            w.publish();
        }
        (at, w.offset() as usize)
    }

    /// A new file of `size` bytes at offset 0 in `dir`, its writer (letting a zeroing
    /// thread work ahead of it when `zeros`) and the file.
    fn new_writer(dir: &Path, size: usize, zeros: bool) -> (FileWriter, Arc<MappedFile>) {
        let file = Arc::new(MappedFile::create(dir, 0, size, None).unwrap());
        let mut w = FileWriter::new(file, 0).unwrap();
        if zeros {
            w.allow_zero_ahead();
        }
        let file = Arc::clone(w.file());
        (w, file)
    }

    /// Every record of [`write_records_to_the_end`] is intact, in the mapping and on
    /// disk, and the rest of the file reads as zeros.
    fn assert_records_then_zeros(file: &Arc<MappedFile>, at: &[usize], end: usize) {
        let bytes = file.slice(0, end).unwrap();
        for (n, pos) in at.iter().enumerate() {
            let r = record(n);
            assert_eq!(&bytes[*pos..*pos + r.len()], &r[..], "record {n} at {pos}");
        }
        let on_disk = fs::read(file.path()).unwrap();
        assert_eq!(&on_disk[..end], &bytes[..]);
        assert!(on_disk[end..].iter().all(|&b| b == 0));
    }

    #[test]
    fn zero_ahead_never_overwrites_what_the_writer_wrote() {
        // A writer racing the zeroing thread through a whole file: every record it wrote
        // is intact, and the bytes past the writer end up zero.
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let (mut w, file) = new_writer(dir.path(), size, true);
        let done = Arc::new(AtomicBool::new(false));
        // The writer starts once the zeroer has zeroed a chunk: on a busy machine the
        // writer could otherwise fill the file before the zeroer ever ran.
        let (started_tx, started) = crossbeam_channel::bounded(1);
        let zeroer = {
            let (file, done) = (Arc::clone(&file), Arc::clone(&done));
            std::thread::spawn(move || {
                let fd = OpenOptions::new().write(true).open(file.path()).unwrap();
                let mut chunks = 0;
                while !done.load(Ordering::Acquire) {
                    if file.zero_ahead(&fd, 64 << 10, 256 << 10).unwrap() == ZeroAhead::Zeroed {
                        chunks += 1;
                        let _ = started_tx.try_send(());
                    } else {
                        std::thread::yield_now();
                    }
                }
                chunks
            })
        };
        started
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the zeroer zeroes the first chunk ahead of a writer that has not begun");
        let (at, end) = write_records_to_the_end(&mut w);
        // Let the zeroer catch up with the end of the file, then stop it.
        let fd = OpenOptions::new().write(true).open(file.path()).unwrap();
        while file.zero_ahead(&fd, 64 << 10, usize::MAX).unwrap() != ZeroAhead::Done {}
        done.store(true, Ordering::Release);
        assert!(zeroer.join().unwrap() > 0, "the zeroer never ran");
        assert_records_then_zeros(&file, &at, end);
    }

    #[test]
    fn will_need_asks_a_chunk_at_a_time_until_stopped_and_takes_any_range() {
        // Linux reads at most its readahead size per request, so a range is asked for 4 MiB
        // at a time, and the caller may stop it between requests. Recovery derives its
        // ranges from the checkpoint: unaligned, empty, reversed or past the file's end,
        // none of which may fail, write or ask for anything past the file.
        let dir = tempfile::tempdir().unwrap();
        let size = 10 << 20;
        let file = MappedFile::create(dir.path(), 0, size, None).unwrap();
        // How often a walk looks at `stop`: before each request, and once more when told
        // to stop (`stop_after` requests made).
        let asks = |from: usize, to: usize, stop_after: usize| {
            let looked = std::cell::Cell::new(0);
            file.will_need(from, to, || {
                looked.set(looked.get() + 1);
                looked.get() > stop_after
            });
            looked.get()
        };
        assert_eq!(asks(0, size, usize::MAX), 3, "4 + 4 + 2 MiB");
        assert_eq!(asks(0, size, 1), 2, "one request, then stopped");
        assert_eq!(asks(4097, 4 * 4096 + 5, usize::MAX), 1);
        assert_eq!(asks(size - 1, usize::MAX, usize::MAX), 1);
        assert_eq!(asks(100, 100, usize::MAX), 0);
        assert_eq!(asks(9000, 10, usize::MAX), 0);
        assert_eq!(asks(size + 4096, size + 8192, usize::MAX), 0);
        let bytes = std::fs::read(file.path()).unwrap();
        assert_eq!(bytes.len(), size);
        assert!(is_zero(&bytes), "a hint writes nothing");
    }

    #[test]
    fn touch_ahead_keeps_what_the_writer_wrote_and_stays_just_ahead_of_it() {
        // The toucher works ahead of a writer racing it through a whole file, with zeros
        // first and without: every record stays intact, and the toucher never runs
        // further ahead than asked.
        if !populate_write_supported() {
            return;
        }
        for zeros in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (size, chunk, ahead) = (4 << 20, 64 << 10, 256 << 10);
            let (mut w, file) = new_writer(dir.path(), size, zeros);
            let open = |zeros: bool, f: &MappedFile| {
                zeros.then(|| OpenOptions::new().write(true).open(f.path()).unwrap())
            };
            let fd = open(zeros, &file);
            let touched = |f: &MappedFile| f.touched_to.load(Ordering::Acquire);
            while file.touch_ahead(fd.as_ref(), chunk, ahead).unwrap() == ZeroAhead::Zeroed {}
            assert_eq!(touched(&file), ahead, "touched before any write");
            let done = Arc::new(AtomicBool::new(false));
            let toucher = {
                let (file, done) = (Arc::clone(&file), Arc::clone(&done));
                std::thread::spawn(move || {
                    let fd = open(zeros, &file);
                    let mut most_ahead = 0;
                    while !done.load(Ordering::Acquire) {
                        if file.touch_ahead(fd.as_ref(), chunk, ahead).unwrap() != ZeroAhead::Zeroed
                        {
                            std::thread::yield_now();
                        }
                        // Read in this order: the writer only moves on.
                        let reached = touched(&file);
                        most_ahead = most_ahead.max(reached.saturating_sub(file.write_pos()));
                    }
                    most_ahead
                })
            };
            let (at, end) = write_records_to_the_end(&mut w);
            while file.touch_ahead(fd.as_ref(), chunk, ahead).unwrap() != ZeroAhead::Done {}
            done.store(true, Ordering::Release);
            let most_ahead = toucher.join().unwrap();
            // The writer reserves up to `RESERVE_STEP` past the end of its record (at
            // most 1,096 bytes) ahead of what it publishes.
            assert!(
                most_ahead <= ahead + chunk + RESERVE_STEP + 1096,
                "touched {most_ahead} past the writer (zeros: {zeros})"
            );
            assert_records_then_zeros(&file, &at, end);
        }
    }

    #[test]
    fn a_device_that_cannot_be_asked_counts_as_giving_small_folios() {
        // Zeros first is the safe choice where the read-ahead window is unknown.
        assert!(faults_give_small_folios(Path::new("/no/such/dir")));
    }

    #[test]
    fn touch_ahead_needs_the_writer_to_allow_it() {
        // Without the writer's reservations the zeros could land on its records: the
        // toucher does nothing.
        let dir = tempfile::tempdir().unwrap();
        let (_w, file) = new_writer(dir.path(), 1 << 20, false);
        let fd = OpenOptions::new().write(true).open(file.path()).unwrap();
        assert_eq!(
            file.touch_ahead(Some(&fd), 64 << 10, 256 << 10).unwrap(),
            ZeroAhead::Done
        );
        assert_eq!(file.touched_to.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_toucher_that_fell_behind_skips_past_the_writer() {
        // The writer is 3 MiB in and the toucher has done nothing: it starts at the chunk
        // boundary past the writer's reservation plus a chunk, never next to the writer.
        if !populate_write_supported() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (size, chunk) = (8 << 20, 2 << 20);
        let (mut w, file) = new_writer(dir.path(), size, true);
        let (at, end) = write_records_up_to(&mut w, 3 << 20);
        let fd = OpenOptions::new().write(true).open(file.path()).unwrap();
        let ahead = 4 << 20;
        assert_eq!(
            file.touch_ahead(Some(&fd), chunk, ahead).unwrap(),
            ZeroAhead::Zeroed
        );
        // One chunk of at most 2 MiB reached the end: it was 6..8 MiB (the reservation
        // ends just past 3 MiB, plus a chunk is past 5 MiB), and nothing is left.
        assert_eq!(file.touched_to.load(Ordering::Acquire), size);
        assert_eq!(
            file.touch_ahead(Some(&fd), chunk, ahead).unwrap(),
            ZeroAhead::Done
        );
        assert_records_then_zeros(&file, &at, end);
    }

    #[test]
    fn filling_the_rest_of_a_file_waits_for_a_claim() {
        // At a roll the rest of the file is published: not while zeros are being written
        // into it.
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let (mut w, file) = new_writer(dir.path(), size, true);
        w.write(&[1u8; 100]).unwrap();
        let w = waits_for_claim(&file, size / 2, w, |w| w.fill());
        assert_eq!(w.remaining(), 0);
    }

    /// Claims the chunk at `at` for a zeroing thread, runs `op` on `w` on another thread,
    /// and checks that `op` waits (200 ms here) until the claim is cleared; returns `w`.
    fn waits_for_claim(
        file: &MappedFile,
        at: usize,
        w: FileWriter,
        op: impl FnOnce(&mut FileWriter) + Send + 'static,
    ) -> FileWriter {
        file.zero_claim.store(at, Ordering::SeqCst);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let (started_tx, started) = crossbeam_channel::bounded(1);
        let worker = std::thread::spawn(move || {
            let mut w = w;
            started_tx.send(()).unwrap();
            op(&mut w);
            done_tx.send(()).unwrap();
            w
        });
        // However late the worker is scheduled, it meets the claim within the probe.
        started.recv().unwrap();
        assert!(
            done.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "went past a claimed chunk"
        );
        file.zero_claim.store(usize::MAX, Ordering::SeqCst);
        worker.join().unwrap()
    }

    #[test]
    fn a_writer_reserves_in_steps_and_waits_for_a_claim_inside_its_step() {
        // A zeroer's claim just past the writer's reservation: the next write that needs
        // more room waits for the claim to clear instead of writing under the zeros.
        let dir = tempfile::tempdir().unwrap();
        let (mut w, file) = new_writer(dir.path(), 1 << 20, true);
        w.write(&[1u8; 100]).unwrap();
        assert_eq!(file.reserved.load(Ordering::SeqCst), RESERVE_STEP);
        w.write(&[2u8; 100]).unwrap();
        assert_eq!(
            file.reserved.load(Ordering::SeqCst),
            RESERVE_STEP,
            "inside the step: nothing published"
        );
        let w = waits_for_claim(&file, RESERVE_STEP, w, |w| {
            w.write(&vec![3u8; RESERVE_STEP]).unwrap();
        });
        // The write reserved the next step.
        assert_eq!(file.reserved.load(Ordering::SeqCst), 2 * RESERVE_STEP);
        assert_eq!(w.offset() as usize, 200 + RESERVE_STEP);
        // The wait was counted, once (for however much of the 200 ms the claim was held
        // the writer's thread was already running).
        let mut w = w;
        let (waits, waited) = w.take_ahead_waits().expect("the wait counted");
        assert_eq!(waits, 1);
        assert!(!waited.is_zero());
        assert_eq!(w.take_ahead_waits(), None);
        w.write(&[4u8; 100]).unwrap();
        assert_eq!(w.take_ahead_waits(), None, "no claim, no wait");
    }

    /// Minor page faults this thread has taken.
    fn minor_faults() -> u64 {
        let stat = fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name, which may hold spaces: state is the first,
        // minflt (field 10 of the line) the eighth.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(7).unwrap().parse().unwrap()
    }

    #[test]
    fn writes_into_touched_pages_take_no_page_fault() {
        if !populate_write_supported() {
            return;
        }
        for zeros in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (touched, size) = (1 << 20, 2 << 20);
            let (mut w, file) = new_writer(dir.path(), size, zeros);
            let fd = zeros.then(|| OpenOptions::new().write(true).open(file.path()).unwrap());
            while file.touch_ahead(fd.as_ref(), 64 << 10, touched).unwrap() == ZeroAhead::Zeroed {}
            let mut faults_writing = |len: usize| {
                let before = minor_faults();
                for _ in 0..len / 1024 {
                    w.write(&[7u8; 1024]).unwrap();
                }
                minor_faults() - before
            };
            // With zeros the toucher keeps a chunk and more from the writer: it left the
            // first 64 KiB.
            faults_writing(64 << 10);
            let in_touched = faults_writing(touched - (64 << 10));
            let past_touched = faults_writing(size - touched);
            // 256 pages past: the count sees the faults where nothing was touched (fewer
            // where the kernel maps several pages per fault), and few where it was.
            assert!(
                past_touched >= 32,
                "{past_touched} faults past the touched pages (zeros: {zeros})"
            );
            assert!(
                in_touched * 8 <= past_touched,
                "{in_touched} faults in touched pages, {past_touched} past them (zeros: {zeros})"
            );
        }
    }

    #[test]
    fn a_failed_zero_ahead_sync_fails_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(MappedFile::create(dir.path(), 0, 65536, None).unwrap());
        let mut w = FileWriter::new(file, 0).unwrap();
        w.write(b"record").unwrap();
        w.publish();
        *w.file().zero_sync_failed.lock() = Some((io::ErrorKind::Other, "EIO".into()));
        let err = w.file().flush().unwrap_err();
        assert!(err.to_string().contains("zero-ahead sync"), "{err}");
        assert_eq!(w.file().flushed_pos(), 0);
    }

    /// Zeros that could not be written leave nothing for a flush to doubt: zero-ahead
    /// stops with an error, and the records' flushes go on.
    #[test]
    fn a_failed_zero_ahead_write_stops_zeroing_without_failing_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, file) = new_writer(dir.path(), 1 << 20, true);
        // A descriptor open for reading only: every pwrite of zeros fails (EBADF).
        let read_only = File::open(file.path()).unwrap();
        let err = file
            .zero_ahead(&read_only, 64 << 10, 256 << 10)
            .unwrap_err();
        assert!(err.to_string().contains("zero-ahead"), "{err}");
        w.write(b"record").unwrap();
        w.publish();
        assert_eq!(file.flush().unwrap(), 6);
        assert_eq!(file.flushed_pos(), 6);
        // Nothing was vouched for as zeroed, and a later step may try again.
        assert_eq!(file.zeroed_to.load(Ordering::Acquire), 0);
        let fd = OpenOptions::new().write(true).open(file.path()).unwrap();
        assert_eq!(
            file.zero_ahead(&fd, 64 << 10, 256 << 10).unwrap(),
            ZeroAhead::Zeroed
        );
    }

    /// The zeroing thread's sync fails while a flush's own sync runs: the flush must not
    /// vouch for its range either.
    #[test]
    fn a_zero_ahead_sync_failing_during_a_flush_fails_that_flush() {
        struct FailZeroingMeanwhile(std::sync::OnceLock<Arc<MappedFile>>);
        impl IoHook for FailZeroingMeanwhile {
            fn before_sync(&self, _: &Path) -> io::Result<()> {
                let file = self.0.get().expect("set");
                *file.zero_sync_failed.lock() = Some((io::ErrorKind::Other, "EIO".into()));
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(FailZeroingMeanwhile(std::sync::OnceLock::new()));
        let file = Arc::new(
            MappedFile::create(dir.path(), 0, 65536, Some(hook.clone() as Arc<dyn IoHook>))
                .unwrap(),
        );
        let mut w = FileWriter::new(file, 0).unwrap();
        let _ = hook.0.set(Arc::clone(w.file()));
        w.write(b"record").unwrap();
        w.publish();
        let err = w.file().flush().unwrap_err();
        assert!(err.to_string().contains("zero-ahead sync"), "{err}");
        assert_eq!(w.file().flushed_pos(), 0);
    }

    #[test]
    fn writing_through_the_file_is_seen_through_the_mapping_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(MappedFile::create(dir.path(), 0, 65536, None).unwrap());
        let mut w = FileWriter::new(file, 0).unwrap();
        w.write_through_file().unwrap();
        w.write(b"through ").unwrap();
        w.write(b"the file").unwrap();
        w.publish();
        // Gathered, not yet written: nobody sees it, and a flush has nothing to sync.
        assert_eq!(w.offset(), 16);
        assert!(w.file().slice(0, 16).is_none());
        assert_eq!(w.file().flush().unwrap(), 0);
        assert_eq!(fs::read(w.file().path()).unwrap()[..16], [0; 16]);
        w.commit().unwrap();
        assert_eq!(&w.file().slice(0, 16).unwrap()[..], b"through the file");
        // A rewind forgets what was not committed.
        w.write(b"lost").unwrap();
        w.rewind();
        assert_eq!(w.offset(), 16);
        w.write(b"!").unwrap();
        w.commit().unwrap();
        assert_eq!(&w.file().slice(0, 17).unwrap()[..], b"through the file!");
        assert_eq!(w.file().flush().unwrap(), 17);
        assert_eq!(
            &fs::read(w.file().path()).unwrap()[..17],
            b"through the file!"
        );
    }

    /// A file's last bytes are gathered, then the rest is marked used (a roll): the commit
    /// writes them where they were written, not before the end of the file.
    #[test]
    fn gathered_bytes_land_where_they_were_written_after_a_fill() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(MappedFile::create(dir.path(), 0, 8192, None).unwrap());
        let mut w = FileWriter::new(file, 0).unwrap();
        w.write_through_file().unwrap();
        w.write(b"first").unwrap();
        w.commit().unwrap();
        w.write(b"last").unwrap();
        w.fill();
        w.commit().unwrap();
        assert_eq!(w.file().write_pos(), 8192);
        let bytes = fs::read(w.file().path()).unwrap();
        assert_eq!(&bytes[..9], b"firstlast");
        assert!(bytes[9..].iter().all(|b| *b == 0));
    }

    #[test]
    fn zero_tail_clears_a_torn_tail_and_skips_the_never_written_rest() {
        let dir = tempfile::tempdir().unwrap();
        let size = 8 << 20;
        let file = MappedFile::create(dir.path(), 0, size, None).unwrap();
        let path = file.path().to_owned();
        drop(file);
        // A torn tail: garbage 1 MiB in, past a record boundary at 4096.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"valid", 0).unwrap();
        f.write_all_at(&[0xEE; 3000], 1 << 20).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let file = Arc::new(MappedFile::open(&path, 0, size, None).unwrap());
        let ranges = data_ranges(&path, 4096, size).unwrap();
        assert!(
            ranges.iter().any(|&(a, b)| a <= 1 << 20 && b > 1 << 20),
            "the garbage is in a data range: {ranges:?}"
        );
        let mut w = FileWriter::new(file, 4096).unwrap();
        w.zero_tail_by_writing().unwrap();
        let on_disk = fs::read(&path).unwrap();
        assert_eq!(&on_disk[..5], b"valid");
        assert!(on_disk[4096..].iter().all(|&b| b == 0));
    }

    #[test]
    fn zero_tail_clears_a_torn_tail_the_mapping_had_read() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let path = MappedFile::create(dir.path(), 0, size, None)
            .unwrap()
            .path()
            .to_owned();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"valid", 0).unwrap();
        // Stale bytes from the record boundary at 100 on, within the first page too.
        f.write_all_at(&[0xEE; 3000], 100).unwrap();
        f.write_all_at(&[0xEE; 3000], 2 << 20).unwrap();
        drop(f);
        let file = Arc::new(MappedFile::open(&path, 0, size, None).unwrap());
        // The mapping holds the stale pages (as after a crash, in the page cache).
        assert_eq!(file.slice(0, size).unwrap()[2 << 20], 0xEE);
        let mut w = FileWriter::new(file, 100).unwrap();
        w.zero_tail().unwrap();
        let on_disk = fs::read(&path).unwrap();
        assert_eq!(&on_disk[..5], b"valid");
        assert!(on_disk[100..].iter().all(|&b| b == 0));
        w.write(b"next").unwrap();
        // Published whole, so the rest of the mapping can be looked at.
        w.fill();
        w.publish();
        let seen = w.file().slice(0, size).unwrap();
        assert_eq!(&seen[100..104], b"next");
        assert!(
            seen[104..].iter().all(|&b| b == 0),
            "the mapping sees zeros"
        );
    }

    #[test]
    fn writer_is_unique_and_refused_while_readers_hold_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(MappedFile::create(dir.path(), 0, 65536, None).unwrap());
        let reader = Arc::clone(&file);
        assert!(FileWriter::new(file, 0).is_none());
        let w = FileWriter::new(reader, 0).unwrap();
        let again = Arc::clone(w.file());
        drop(w);
        assert!(FileWriter::new(again, 0).is_none(), "second writer taken");
    }

    #[test]
    fn open_refuses_wrong_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(layout::file_name(0));
        fs::write(&path, vec![0u8; 1000]).unwrap();
        let err = MappedFile::open(&path, 0, 65536, None).unwrap_err();
        assert!(matches!(err, Error::BadStoreFile { .. }), "{err}");
    }

    #[test]
    fn flush_advances_flushed_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = MappedFile::create(dir.path(), 0, 65536, None).unwrap();
        f.warm_until(Warmup::Touch, true, 65536, &|| false).unwrap();
        let mut w = FileWriter::new(Arc::new(f), 0).unwrap();
        w.write(&[7u8; 5000]).unwrap();
        w.publish();
        assert_eq!(w.file().flushed_pos(), 0);
        assert_eq!(w.file().flush().unwrap(), 5000);
        assert_eq!(w.file().flushed_pos(), 5000);
        let on_disk = fs::read(w.file().path()).unwrap();
        assert_eq!(&on_disk[..5000], &[7u8; 5000][..]);
    }
}
