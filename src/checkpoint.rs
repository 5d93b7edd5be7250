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
/// Offset of the index message timestamp (kept for compatibility; no index yet).
pub const POS_INDEX_TIMESTAMP: usize = 16;

/// The three timestamps, ms since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointTimes {
    /// Store time of a record such that it and every record before it are durable.
    pub physic: i64,
    /// Store time of a record such that the consume-queue entries of it and every record
    /// before it are durable.
    pub logics: i64,
    /// Store time up to which the key index is durable (unused: there is no index yet).
    pub index: i64,
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
        }))
    }

    /// The time recovery may start from: the older of the commit-log and consume-queue times.
    pub fn recovery_point(&self) -> i64 {
        self.physic.min(self.logics)
    }
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
        let mut b = [0u8; 24];
        b[POS_PHYSIC_TIMESTAMP..8].copy_from_slice(&times.physic.to_be_bytes());
        b[POS_LOGICS_TIMESTAMP..16].copy_from_slice(&times.logics.to_be_bytes());
        b[POS_INDEX_TIMESTAMP..24].copy_from_slice(&times.index.to_be_bytes());
        self.file
            .write_all_at(&b, 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io("write checkpoint", &self.path, e))?;
        self.times = times;
        Ok(())
    }
}
