//! Finding where the log ends when a store is opened again: scan every record, rebuild the
//! queue offsets, and after an unclean exit cut the log at the first invalid record.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{self, Peek};
use crate::mapped_file::{FileWriter, MappedFile, sync_dir};

/// The next-queue-offset slot of a topic/queue, created at 0.
pub(super) fn queue_slot<'a>(
    table: &'a mut HashMap<String, HashMap<u32, u64>>,
    topic: &str,
    queue_id: u32,
) -> &'a mut u64 {
    if !table.contains_key(topic) {
        table.insert(topic.to_owned(), HashMap::new());
    }
    table
        .get_mut(topic)
        .expect("inserted above")
        .entry(queue_id)
        .or_default()
}

/// What a scan of existing files learns.
#[derive(Default)]
pub(super) struct Scan {
    pub queue_offsets: HashMap<String, HashMap<u32, u64>>,
    pub last_store_timestamp: i64,
}

/// Why the records of a file stopped.
enum Stop {
    /// A blank end record, or records up to the last byte: the log goes on in the next file.
    FileEnd,
    /// Zeros: nothing was written past here.
    Empty,
    /// Bytes that are not a valid record.
    Invalid(Error),
}

impl Scan {
    /// Walks the valid records of `file` from its start; returns where they end and why.
    fn file(&mut self, file: &Arc<MappedFile>) -> (usize, Stop) {
        let start = file.start_offset();
        let bytes = file
            .visible_from(0)
            .expect("an opened file is fully visible");
        let mut pos = 0usize;
        while pos < bytes.len() {
            let offset = start + pos as u64;
            let rest = &bytes[pos..];
            let size = match format::peek(rest, offset) {
                Ok(Peek::Record { size }) => size,
                Ok(Peek::Blank) => return (bytes.len(), Stop::FileEnd),
                Ok(Peek::Empty) => return (pos, Stop::Empty),
                Err(e) => return (pos, Stop::Invalid(e)),
            };
            let view = match format::parse(&rest[..size], offset) {
                Ok(v) => v,
                Err(e) => return (pos, Stop::Invalid(e)),
            };
            if !view.crc_ok() {
                return (
                    pos,
                    Stop::Invalid(Error::corrupted(offset, "body CRC mismatch")),
                );
            }
            if view.physical_offset != offset {
                let reason = format!("record says it is at {}", view.physical_offset);
                return (pos, Stop::Invalid(Error::corrupted(offset, reason)));
            }
            let next = queue_slot(&mut self.queue_offsets, view.topic, view.queue_id);
            *next = (*next).max(view.queue_offset + 1);
            self.last_store_timestamp = self.last_store_timestamp.max(view.store_timestamp);
            pos += size;
        }
        (pos, Stop::FileEnd)
    }
}

/// Scans `files` (non-empty, in order) and returns the writer positioned at the end of the
/// log, with what the scan learned. `files` keeps every file of the log, the writer's last.
///
/// After a clean exit the log must be whole: an invalid record, or zeros before the end of
/// a file that is not the last, is refused with [`Error::Corrupted`] rather than silently
/// dropping what follows. After an unclean exit the first invalid record (or gap) ends the
/// log: under sync flush nothing after it was ever acknowledged, because a put is
/// acknowledged only once every byte before its end is durable. The files after that point
/// are removed and the tail of the last one is zeroed, so stale bytes cannot later pass
/// for records.
pub(super) fn scan_and_truncate(
    files: &mut Vec<Arc<MappedFile>>,
    clean: bool,
) -> Result<(FileWriter, Scan)> {
    let mut scan = Scan::default();
    let mut end = None;
    for (i, file) in files.iter().enumerate() {
        let last = i + 1 == files.len();
        let (pos, stop) = scan.file(file);
        match stop {
            Stop::FileEnd if !last => continue,
            Stop::FileEnd => {}
            Stop::Empty if last || !clean => {}
            Stop::Empty => {
                return Err(Error::corrupted(
                    file.start_offset() + pos as u64,
                    "a file that is not the last ends without a blank record",
                ));
            }
            Stop::Invalid(e) if !clean => {
                log::warn!("log ends at {}: {e}", file.start_offset() + pos as u64);
            }
            Stop::Invalid(e) => return Err(e),
        }
        end = Some((i, pos));
        break;
    }
    let (index, pos) = end.expect("the loop ends at the last file at the latest");
    let dropped = files.split_off(index + 1);
    for file in &dropped {
        log::warn!(
            "removing {}: it lies past the end of the log",
            file.path().display()
        );
        std::fs::remove_file(file.path()).map_err(|e| Error::io("remove", file.path(), e))?;
    }
    let last = files.pop().expect("index < len");
    if !dropped.is_empty() {
        sync_dir(last.path().parent().expect("files live in a directory"))?;
    }
    drop(dropped);
    let mut writer = FileWriter::new(last, pos).ok_or_else(|| Error::BadStoreFile {
        path: files
            .first()
            .map(|f| f.path().to_owned())
            .unwrap_or_default(),
        reason: "last file still in use".into(),
    })?;
    if !clean {
        writer.zero_tail()?;
    }
    files.push(Arc::clone(writer.file()));
    Ok((writer, scan))
}

/// Takes the trailing files that hold nothing (prepared by the allocation thread, never
/// written) off `files`, keeping at least one file. After a clean exit the first of them is
/// returned for reuse; every other one is deleted.
pub(super) fn split_unused_tail(
    files: &mut Vec<Arc<MappedFile>>,
    clean: bool,
) -> Result<Option<MappedFile>> {
    let mut unused = Vec::new();
    while files.len() > 1 && files.last().is_some_and(MappedFile::is_unused) {
        unused.push(files.pop().expect("len > 1"));
    }
    // `unused` runs from the last file back to the one right after the last used file.
    let spare = if clean {
        unused.pop().and_then(|f| Arc::try_unwrap(f).ok())
    } else {
        None
    };
    let removed = !unused.is_empty();
    for file in unused {
        std::fs::remove_file(file.path()).map_err(|e| Error::io("remove", file.path(), e))?;
    }
    if removed && let Some(last) = files.last() {
        sync_dir(last.path().parent().expect("files live in a directory"))?;
    }
    Ok(spare)
}
