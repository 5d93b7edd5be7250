//! A file mapped as big-endian 32-bit words that one writer stores and any number of
//! readers load at the same time (the key index's files, whose hash slots are rewritten in
//! place while queries walk them).
//!
//! Every access goes through an `AtomicU32`, so a reader racing the writer sees either the
//! old or the new word, never a torn one, and no access is a data race. A writer publishes
//! with `Release` and a reader observes with `Acquire`: a reader that sees a published word
//! sees every word stored before it.
//!
//! Writing a page that has no disk block behind it would raise SIGBUS on a full disk: a
//! caller allocates ([`MappedWords::allocate`]) every page before it stores into it.
//! Loading from a hole is fine (it reads as zeros).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::fs::sparse_file;

pub(crate) struct MappedWords {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    words: usize,
}

impl std::fmt::Debug for MappedWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedWords")
            .field("path", &self.path)
            .field("words", &self.words)
            .finish()
    }
}

impl MappedWords {
    /// Maps all of `file`, whose length must be a non-zero multiple of 4.
    pub(crate) fn map(file: File, path: PathBuf) -> Result<MappedWords> {
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        if len == 0 || !len.is_multiple_of(4) {
            return Err(Error::BadStoreFile {
                path,
                reason: format!("{len} bytes is not a whole number of 4-byte words"),
            });
        }
        let map = MmapOptions::new()
            .len(len as usize)
            .map_raw(&file)
            .map_err(|e| Error::io("mmap", &path, e))?;
        Ok(MappedWords {
            path,
            file,
            map,
            words: len as usize / 4,
        })
    }

    fn words(&self) -> &[AtomicU32] {
        // SAFETY: the mapping is `words * 4` bytes long, page-aligned (so 4-aligned), and
        // lives as long as `self`, which the returned slice borrows. `AtomicU32` has the
        // layout of `u32`, and every access to the mapping from this process goes through
        // these atomics, so concurrent loads and stores are not data races. Another process
        // could change the file under us; the store lock keeps other stores away, and a
        // word changed by anything else is only ever a wrong value, never undefined
        // behaviour for an atomic load.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU32>(), self.words) }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The word at index `at` (byte `4 * at`), decoded from big-endian.
    #[inline]
    pub(crate) fn load(&self, at: usize) -> u32 {
        u32::from_be(self.words()[at].load(Ordering::Acquire))
    }

    /// Stores `value` big-endian at word `at` (which must lie in an allocated page).
    #[inline]
    pub(crate) fn store(&self, at: usize, value: u32) {
        self.words()[at].store(value.to_be(), Ordering::Release);
    }

    /// The big-endian 64-bit value at 8-aligned word pair `at` (even), loaded whole: for
    /// values rewritten while readers look (a file header).
    #[inline]
    pub(crate) fn load_u64_aligned(&self, at: usize) -> u64 {
        u64::from_be(self.pair(at).load(Ordering::Acquire))
    }

    /// Stores a big-endian 64-bit value at word pair `at` (even) in one store. A pair
    /// accessed this way must never be accessed as two words.
    #[inline]
    pub(crate) fn store_u64_aligned(&self, at: usize, value: u64) {
        self.pair(at).store(value.to_be(), Ordering::Release);
    }

    fn pair(&self, at: usize) -> &AtomicU64 {
        assert!(
            at.is_multiple_of(2) && at + 1 < self.words,
            "word pair {at} is not 8-aligned inside the file"
        );
        // SAFETY: bytes `4 * at .. 4 * at + 8` lie inside the mapping (checked above), at a
        // multiple of 8 from its page-aligned start, so the pointer is valid and aligned
        // for `AtomicU64` for as long as `self` (which the reference borrows) keeps the
        // mapping. Callers access such a pair only through this 64-bit view, so no access
        // of another size overlaps it.
        unsafe { &*self.map.as_ptr().add(at * 4).cast::<AtomicU64>() }
    }

    /// The big-endian 64-bit value in words `at` and `at + 1`: two loads, for values that
    /// do not change once published (an index entry).
    #[inline]
    pub(crate) fn load_u64(&self, at: usize) -> u64 {
        (u64::from(self.load(at)) << 32) | u64::from(self.load(at + 1))
    }

    /// Stores a big-endian 64-bit value in words `at` and `at + 1`, before publishing it.
    #[inline]
    pub(crate) fn store_u64(&self, at: usize, value: u64) {
        self.store(at, (value >> 32) as u32);
        self.store(at + 1, value as u32);
    }

    /// Allocates disk blocks for bytes `from..to`, so stores there cannot fault on a full
    /// disk. Fails (typically `ENOSPC`) having changed nothing a reader can see. Only the
    /// file's one writer calls it.
    pub(crate) fn allocate(&self, from: u64, to: u64) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        match rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            from,
            to - from,
        ) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                // Without fallocate, writing the range's own bytes back through the file
                // allocates its blocks (and fails cleanly when it cannot). The caller is
                // the only writer, so the bytes written are the ones there: a reader sees
                // no change.
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; (to - from).min(1 << 20) as usize];
                let mut at = from;
                while at < to {
                    let n = (to - at).min(buf.len() as u64) as usize;
                    let got = sparse_file::read_fully(&self.file, &mut buf[..n], at)
                        .map_err(|e| Error::io("allocate", &self.path, e))?;
                    buf[got..n].fill(0);
                    self.file
                        .write_all_at(&buf[..n], at)
                        .map_err(|e| Error::io("allocate", &self.path, e))?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(Error::io("allocate", &self.path, e.into())),
        }
    }

    /// Zeroes every byte of `from..` that is not zero already, reading the file's data
    /// ranges only (holes and never-written blocks read as zeros and are skipped). Writes
    /// through the file, which allocates as it goes and fails cleanly on a full disk.
    pub(crate) fn zero_from(&self, from: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let len = self.words as u64 * 4;
        let mut at = from;
        let mut buf = vec![0u8; 1 << 20];
        let zeros = vec![0u8; 1 << 20];
        while at < len {
            let Some(start) = sparse_file::data_start(&self.file, at)? else {
                break;
            };
            let end = sparse_file::data_end(&self.file, &self.path, start)?.min(len);
            let mut pos = start;
            while pos < end {
                let n = (end - pos).min(buf.len() as u64) as usize;
                let got = sparse_file::read_fully(&self.file, &mut buf[..n], pos)
                    .map_err(|e| Error::io("read", &self.path, e))?;
                if !super::is_zero(&buf[..got]) {
                    self.file
                        .write_all_at(&zeros[..n], pos)
                        .map_err(|e| Error::io("write", &self.path, e))?;
                }
                pos += n as u64;
            }
            at = end.max(start + 1);
        }
        Ok(())
    }

    /// Makes every stored word and allocation durable.
    pub(crate) fn sync(&self) -> Result<()> {
        // fdatasync writes back pages dirtied through the mapping as well.
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_big_endian_on_disk_and_shared_with_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(24).unwrap();
        let w = MappedWords::map(file, path.clone()).unwrap();
        w.allocate(0, 24).unwrap();
        w.store(0, 0x0102_0304);
        w.store_u64(1, 0x0A0B_0C0D_0E0F_1011);
        assert_eq!(w.load(0), 0x0102_0304);
        assert_eq!(w.load_u64(1), 0x0A0B_0C0D_0E0F_1011);
        // A separate, 8-aligned pair, only ever accessed whole.
        w.store_u64_aligned(4, 0x1112_1314_1516_1718);
        assert_eq!(w.load_u64_aligned(4), 0x1112_1314_1516_1718);
        w.sync().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..12], &[1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17]);
        assert_eq!(
            &bytes[16..24],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
    }

    #[test]
    fn a_file_that_is_not_whole_words_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        std::fs::write(&path, [0u8; 6]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(matches!(
            MappedWords::map(file, path),
            Err(Error::BadStoreFile { .. })
        ));
    }
}
