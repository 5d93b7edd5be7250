//! `{root}/checkpoint`: RocketMQ's 4 KiB file of three timestamps saying how far the
//! commit log and the consume queues are known to be durable, so that recovery after a
//! crash starts near the end instead of at the beginning.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Size of the checkpoint file.
pub const CHECKPOINT_LEN: usize = 4096;
/// Offset of the physic (commit log) message timestamp.
pub const POS_PHYSIC_TIMESTAMP: usize = 0;
/// Offset of the logics (consume queue) message timestamp.
pub const POS_LOGICS_TIMESTAMP: usize = 8;
/// Offset of the index message timestamp.
pub const POS_INDEX_TIMESTAMP: usize = 16;
/// Offset of the durable commit-log offset (ours; RocketMQ keeps fields of its own at 24
/// and 32, so ours sits clear of them). Zero in a checkpoint written by RocketMQ or by
/// rocketstore 0.1: nothing is vouched for by offset, only by the timestamps.
pub const POS_PHYSIC_OFFSET: usize = 64;
/// Offset of the consume queues' durable commit-log offset (ours, after the one above).
/// Zero where it was never written: recovery then starts from the logics timestamp.
pub const POS_LOGICS_OFFSET: usize = 72;
/// Offset of a CRC-32 of the bytes before it (ours). The logics offset is trusted only
/// under a matching CRC: a checkpoint that RocketMQ or an older rocketstore rewrote in
/// place (their fields only) leaves a stale logics offset behind, which must not count.
pub const POS_FIELDS_CRC: usize = 80;
/// Bytes of the checkpoint that carry fields; the rest of its 4 KiB is zeros.
const FIELDS_LEN: usize = POS_FIELDS_CRC + 4;

/// The checkpoint's fields: three timestamps (ms since the Unix epoch) and two offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointTimes {
    /// Store time of a record such that it and every record before it are durable.
    pub physic: i64,
    /// Store time of a record such that the consume-queue entries of it and every record
    /// before it are durable.
    pub logics: i64,
    /// Store time up to which the key index is durable (kept for RocketMQ's tools; the
    /// index's own progress file is what recovery uses).
    pub index: i64,
    /// Commit-log offset below which every byte is durable and was valid when written: the
    /// end of the record whose store time is `physic`. Recovery after a crash may cut the
    /// log only at or past it; an invalid record below it is damage, and the open is
    /// refused.
    pub physic_offset: u64,
    /// Commit-log offset below which every record's consume-queue entries are durable (a
    /// record boundary; 0 when unknown). Recovery after a crash re-indexes from here, not
    /// from a time less a slack.
    pub logics_offset: u64,
}

impl CheckpointTimes {
    /// Reads the checkpoint; `None` when the file is missing or too short to hold the three
    /// times (a truncated file is logged and ignored: recovery then scans the whole log).
    pub fn read(path: &Path) -> Result<Option<CheckpointTimes>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        if bytes.len() < POS_INDEX_TIMESTAMP + 8 {
            log::warn!(
                "{} is {} bytes, too short: recovery will scan the whole log",
                path.display(),
                bytes.len()
            );
            return Ok(None);
        }
        let at = |p: usize| i64::from_be_bytes(bytes[p..p + 8].try_into().expect("8 bytes"));
        Ok(Some(CheckpointTimes {
            physic: at(POS_PHYSIC_TIMESTAMP),
            logics: at(POS_LOGICS_TIMESTAMP),
            index: at(POS_INDEX_TIMESTAMP),
            physic_offset: if bytes.len() >= POS_PHYSIC_OFFSET + 8 {
                at(POS_PHYSIC_OFFSET) as u64
            } else {
                0
            },
            logics_offset: match fields_intact(&bytes) {
                true => at(POS_LOGICS_OFFSET) as u64,
                false => 0,
            },
        }))
    }

    /// Whether the checkpoint at `path` is intact as rocketstore last wrote it (its fields'
    /// CRC matches): no other writer (RocketMQ, rocketstore 0.1), which rewrites its own
    /// fields only, has run on the store since.
    pub(crate) fn intact(path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|bytes| fields_intact(&bytes))
    }

    /// The bytes at the start of the file (the rest of its 4 KiB is zeros). Bytes 24..64
    /// are RocketMQ's other fields; ours are not meaningful there, so they stay zero.
    fn encode(&self) -> [u8; FIELDS_LEN] {
        let mut b = [0u8; FIELDS_LEN];
        b[POS_PHYSIC_TIMESTAMP..8].copy_from_slice(&self.physic.to_be_bytes());
        b[POS_LOGICS_TIMESTAMP..16].copy_from_slice(&self.logics.to_be_bytes());
        b[POS_INDEX_TIMESTAMP..24].copy_from_slice(&self.index.to_be_bytes());
        b[POS_PHYSIC_OFFSET..POS_LOGICS_OFFSET].copy_from_slice(&self.physic_offset.to_be_bytes());
        b[POS_LOGICS_OFFSET..POS_FIELDS_CRC].copy_from_slice(&self.logics_offset.to_be_bytes());
        let crc = crc32fast::hash(&b[..POS_FIELDS_CRC]);
        b[POS_FIELDS_CRC..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Writes a whole checkpoint file and syncs it: for tools and tests that prepare a
    /// store (say, a copy that should be recovered from an earlier point). Never call it on
    /// the checkpoint of an open store.
    ///
    /// Written in place (created if missing), never truncated first: a crash midway
    /// leaves the old checkpoint or the new one, not an empty file, which would vouch
    /// for nothing and let the next open cut damage anywhere as a torn tail.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut b = vec![0u8; CHECKPOINT_LEN];
        b[..FIELDS_LEN].copy_from_slice(&self.encode());
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .and_then(|f| {
                f.write_all_at(&b, 0)?;
                f.sync_all()
            })
            .map_err(|e| Error::io("write checkpoint", path, e))
    }

    /// The time recovery may start from: the older of the commit-log and consume-queue times.
    pub fn recovery_point(&self) -> i64 {
        self.physic.min(self.logics)
    }

    /// The offset recovery may start from, when the checkpoint names one: the lower of the
    /// commit log's and the consume queues' durable offsets (under async flush the queues
    /// can be durable past the log). `None` for a checkpoint that names neither, or whose
    /// queue time was reset (a queue found damaged: everything is indexed again).
    pub fn recovery_offset(&self) -> Option<u64> {
        (self.logics_offset > 0 && self.physic_offset > 0 && self.logics > 0)
            .then(|| self.physic_offset.min(self.logics_offset))
    }
}

/// Whether a checkpoint's bytes hold our fields under a matching CRC.
fn fields_intact(bytes: &[u8]) -> bool {
    bytes.get(..FIELDS_LEN).is_some_and(|fields| {
        crc32fast::hash(&fields[..POS_FIELDS_CRC]).to_be_bytes() == fields[POS_FIELDS_CRC..]
    })
}

/// The open checkpoint file, rewritten in place.
pub(crate) struct Checkpoint {
    path: PathBuf,
    file: File,
    times: CheckpointTimes,
}

impl Checkpoint {
    pub(crate) fn open(path: PathBuf, times: CheckpointTimes) -> Result<Checkpoint> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        file.set_len(CHECKPOINT_LEN as u64)
            .map_err(|e| Error::io("resize", &path, e))?;
        Ok(Checkpoint { path, file, times })
    }

    pub(crate) fn times(&self) -> CheckpointTimes {
        self.times
    }

    /// Writes and syncs new times (only when they changed).
    pub(crate) fn store(&mut self, times: CheckpointTimes) -> Result<()> {
        if times == self.times {
            return Ok(());
        }
        let b = times.encode();
        self.file
            .write_all_at(&b, 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io("write checkpoint", &self.path, e))?;
        self.times = times;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logics_offset_under_fields_rewritten_by_an_older_writer_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        let times = CheckpointTimes {
            physic: 10,
            logics: 20,
            index: 30,
            physic_offset: 4000,
            logics_offset: 3000,
        };
        times.write(&path).unwrap();
        assert_eq!(CheckpointTimes::read(&path).unwrap(), Some(times));
        assert_eq!(times.recovery_offset(), Some(3000));
        // An older rocketstore rewrites its fields in place, bytes 0..72, and leaves ours.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&50i64.to_be_bytes(), POS_LOGICS_TIMESTAMP as u64)
            .unwrap();
        drop(file);
        let read = CheckpointTimes::read(&path).unwrap().unwrap();
        assert_eq!((read.logics, read.physic_offset), (50, 4000));
        assert_eq!(read.logics_offset, 0, "the stale offset is ignored");
        assert_eq!(
            read.recovery_offset(),
            None,
            "recovery falls back to the times"
        );
    }
}
