//! `{root}/log_start`: where the commit log starts. Retention records the new start
//! durably before it deletes a file, so that an open can tell the log's first files
//! deleted by retention from first files gone missing (an operator's mistake, a damaged
//! directory), which would otherwise look alike: a log that simply starts later.
//!
//! Twelve bytes, written in place and synced: the offset (big-endian) and a CRC-32 of it.
//! A store written before the file existed, or a damaged file, has no recorded start:
//! the open then accepts the files as they are and records their start.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::ops;

const LEN: usize = 12;

pub(crate) struct LogStart {
    path: PathBuf,
    hook: Option<std::sync::Arc<dyn IoHook>>,
    file: Option<File>,
    recorded: Option<u64>,
}

impl LogStart {
    /// Reads the recorded start, if any (a damaged record is logged and ignored).
    pub(crate) fn open(
        path: PathBuf,
        hook: Option<std::sync::Arc<dyn IoHook>>,
    ) -> Result<LogStart> {
        let recorded = read(&path)?;
        Ok(LogStart {
            path,
            hook,
            file: None,
            recorded,
        })
    }

    pub(crate) fn recorded(&self) -> Option<u64> {
        self.recorded
    }

    /// Records `start` durably (creating the file, durably, the first time).
    pub(crate) fn record(&mut self, start: u64) -> Result<()> {
        if self.recorded == Some(start) {
            return Ok(());
        }
        let hook = self.hook.as_ref();
        if self.file.is_none() {
            let existed = self.path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(|e| Error::io("open", &self.path, e))?;
            if !existed && let Some(dir) = self.path.parent() {
                ops::sync_dir_with(dir, hook)?;
            }
            self.file = Some(file);
        }
        let file = self.file.as_ref().expect("opened above");
        let offset = start.to_be_bytes();
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(&offset);
        b[8..].copy_from_slice(&crc32fast::hash(&offset).to_be_bytes());
        file.write_all_at(&b, 0)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("write log start", &self.path, e))?;
        self.recorded = Some(start);
        Ok(())
    }
}

/// The recorded start, if any (`None` too for a damaged record, logged).
pub(crate) fn read(path: &Path) -> Result<Option<u64>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    match bytes.get(..LEN) {
        Some(b) if crc32fast::hash(&b[..8]).to_be_bytes() == b[8..] => Ok(Some(
            u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        )),
        _ => {
            log::warn!(
                "{} is damaged: the log's start is taken from its files",
                path.display()
            );
            Ok(None)
        }
    }
}
