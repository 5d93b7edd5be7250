//! `{root}/dispatch/{name}`: how far a dispatcher's work is durable, so that after a crash
//! it is replayed from there and no further back.
//!
//! Two slots 4 KiB apart, written in turn, each holding a sequence number, the offset,
//! the store time before it, two words the dispatcher keeps for itself, and a CRC. A write
//! goes to the older slot and is synced: a torn write damages only that slot, and the
//! other still holds the last progress. The slots lie in different 4 KiB blocks, so that
//! a drive that tears a whole physical sector (a 512e drive) cannot damage both. Files
//! written before 0.2 have their second slot at 512; it is read too, and the higher
//! sequence number of the two layouts wins (writes go to the new places only).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::fs::ops;

const SLOT: u64 = 4096;

/// Where the second slot was before 0.2.
const OLD_SLOT: u64 = 512;
const RECORD: usize = 8 * 5 + 4;

/// A dispatcher's durable progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Every record that starts below this commit-log offset is durably dispatched.
    pub offset: u64,
    /// Store time of the last record below `offset` (0 when unknown).
    pub timestamp: i64,
    /// The dispatcher's own words (the key index: its active file and entry count).
    pub aux: [u64; 2],
}

pub(crate) struct ProgressFile {
    path: PathBuf,
    file: File,
    seq: u64,
    last: Option<Progress>,
}

impl ProgressFile {
    /// Opens (or creates, durably) the progress file at `path`; returns it with the last
    /// progress recorded, `None` for a new file or one whose slots are both damaged.
    pub(crate) fn open(path: PathBuf) -> Result<(ProgressFile, Option<Progress>)> {
        let dir = path.parent().expect("a progress file lives in a directory");
        ops::create_dir_durable(dir, None)?;
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        if !existed {
            file.sync_all().map_err(|e| Error::io("sync", &path, e))?;
            ops::sync_dir(dir)?;
        }
        let mut best: Option<(u64, Progress, u64)> = None;
        for at in [0, OLD_SLOT, SLOT] {
            let mut b = [0u8; RECORD];
            let n = crate::fs::sparse_file::read_fully(&file, &mut b, at)
                .map_err(|e| Error::io("read", &path, e))?;
            if n < RECORD {
                continue;
            }
            if let Some((seq, p)) = decode(&b)
                && best.is_none_or(|(s, _, _)| seq > s)
            {
                best = Some((seq, p, at));
            }
        }
        if existed && best.is_none() {
            log::warn!(
                "{} holds no valid progress: its dispatcher starts again from the log's start",
                path.display()
            );
        }
        // After an old-layout slot, a sequence number is skipped so that the next write
        // goes to the slot at 4096, not into the block that holds the newest record.
        let seq = best.map_or(0, |(s, _, at)| if at == OLD_SLOT { s + 1 } else { s });
        let last = best.map(|(_, p, _)| p);
        Ok((
            ProgressFile {
                path,
                file,
                seq,
                last,
            },
            last,
        ))
    }

    /// Records `progress` durably (nothing is written when it has not changed).
    pub(crate) fn store(&mut self, progress: Progress) -> Result<()> {
        if self.last == Some(progress) {
            return Ok(());
        }
        let seq = self.seq + 1;
        let b = encode(seq, &progress);
        self.file
            .write_all_at(&b, (seq % 2) * SLOT)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io("write progress", &self.path, e))?;
        self.seq = seq;
        self.last = Some(progress);
        Ok(())
    }
}

fn encode(seq: u64, p: &Progress) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    b[0..8].copy_from_slice(&seq.to_be_bytes());
    b[8..16].copy_from_slice(&p.offset.to_be_bytes());
    b[16..24].copy_from_slice(&p.timestamp.to_be_bytes());
    b[24..32].copy_from_slice(&p.aux[0].to_be_bytes());
    b[32..40].copy_from_slice(&p.aux[1].to_be_bytes());
    let crc = crc32fast::hash(&b[..40]);
    b[40..44].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Sequence numbers stay below it.
const MAX_SEQ: u64 = 1 << 62;

fn decode(b: &[u8; RECORD]) -> Option<(u64, Progress)> {
    let word = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let crc = u32::from_be_bytes(b[40..44].try_into().expect("4 bytes"));
    let seq = word(0);
    // A sequence number past 2^62 was never written (one a nanosecond would take 146
    // years to get there) and could not be counted on from without overflowing.
    if seq == 0 || seq >= MAX_SEQ || crc32fast::hash(&b[..40]) != crc {
        return None;
    }
    Some((
        seq,
        Progress {
            offset: word(8),
            timestamp: word(16) as i64,
            aux: [word(24), word(32)],
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatch").join("d");
        let (mut f, none) = ProgressFile::open(path.clone()).unwrap();
        assert_eq!(none, None);
        let p = |offset| Progress {
            offset,
            timestamp: 7,
            aux: [1, 2],
        };
        f.store(p(10)).unwrap();
        f.store(p(20)).unwrap();
        drop(f);
        let (mut f, last) = ProgressFile::open(path.clone()).unwrap();
        assert_eq!(last, Some(p(20)));
        f.store(p(30)).unwrap();
        drop(f);
        // The newest slot torn: the one before it holds.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xFF; 4], SLOT + 10).unwrap();
        let (_, last) = ProgressFile::open(path.clone()).unwrap();
        assert_eq!(last, Some(p(20)));
    }

    /// A slot whose CRC is whole but whose sequence number could not be counted on from
    /// (past 2^62) is not taken: the other slot holds, and the next store goes on.
    #[test]
    fn a_sequence_number_out_of_range_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatch").join("d");
        let (mut f, _) = ProgressFile::open(path.clone()).unwrap();
        f.store(at(10)).unwrap(); // sequence 1: the second slot
        drop(f);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&encode(u64::MAX, &at(99)), 0).unwrap();
        let (mut f, last) = ProgressFile::open(path.clone()).unwrap();
        assert_eq!(last, Some(at(10)));
        f.store(at(20)).unwrap();
        drop(f);
        assert_eq!(ProgressFile::open(path).unwrap().1, Some(at(20)));
    }

    fn at(offset: u64) -> Progress {
        Progress {
            offset,
            timestamp: 7,
            aux: [1, 2],
        }
    }

    /// A drive that tears a whole 4 KiB physical sector (a 512e drive's read-modify-write)
    /// damages only one slot: the slots lie in different blocks.
    #[test]
    fn a_torn_first_block_leaves_the_other_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatch").join("d");
        let (mut f, _) = ProgressFile::open(path.clone()).unwrap();
        f.store(at(10)).unwrap(); // sequence 1: the second slot
        f.store(at(20)).unwrap(); // sequence 2: the first slot
        drop(f);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xA5; 4096], 0).unwrap();
        let (_, last) = ProgressFile::open(path.clone()).unwrap();
        assert_eq!(last, Some(at(10)));
    }

    /// A file written with 512-byte slots (before 0.2) is read, and its progress goes on.
    #[test]
    fn a_file_with_the_old_slot_size_is_read_and_superseded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatch").join("d");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = vec![0u8; 512 + RECORD];
        bytes[..RECORD].copy_from_slice(&encode(4, &at(40)));
        bytes[512..].copy_from_slice(&encode(5, &at(50)));
        std::fs::write(&path, bytes).unwrap();
        let (mut f, last) = ProgressFile::open(path.clone()).unwrap();
        assert_eq!(last, Some(at(50)));
        f.store(at(60)).unwrap();
        drop(f);
        // The first write went outside the block of the newest old record: a torn first
        // block leaves it.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xA5; 4096], 0).unwrap();
        let (mut f, last) = ProgressFile::open(path.clone()).unwrap();
        assert_eq!(last, Some(at(60)));
        f.store(at(70)).unwrap();
        drop(f);
        let (_, last) = ProgressFile::open(path.clone()).unwrap();
        assert_eq!(last, Some(at(70)));
    }
}
