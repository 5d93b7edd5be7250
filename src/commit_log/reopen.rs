//! Finding where the log ends when a store is opened again: scan every record, rebuild the
//! queue offsets, and after an unclean exit cut the log at the first invalid record.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{self, Peek, RecordView};
use crate::mapped_file::{FileWriter, MappedFile, sync_dir};

/// Told about the records a reopen scans, so consume queues can be checked or rebuilt.
pub(crate) trait RecoverySink {
    /// Called once, before any record, with the commit-log offset the scan starts at.
    fn begin(&mut self, start_offset: u64) -> Result<()>;
    /// Called for every valid record from the start offset on, in log order. Returning
    /// false rejects the record: the log ends before it, as at an invalid record.
    fn record(&mut self, view: &RecordView<'_>) -> Result<bool>;
    /// Called after the records of each file, with the last store time seen so far.
    fn file_done(&mut self, last_store_timestamp: i64) -> Result<()>;
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

/// Walks the valid records of `file` from its start, handing each to `sink`; returns where
/// they end and why. An error of the sink ends the whole reopen.
fn scan_file(
    file: &Arc<MappedFile>,
    sink: &mut dyn RecoverySink,
    last_ts: &mut i64,
    check_crc: bool,
) -> Result<(usize, Stop)> {
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
            Ok(Peek::Blank) => return Ok((bytes.len(), Stop::FileEnd)),
            Ok(Peek::Empty) => return Ok((pos, Stop::Empty)),
            Err(e) => return Ok((pos, Stop::Invalid(e))),
        };
        let view = match format::parse(&rest[..size], offset) {
            Ok(v) => v,
            Err(e) => return Ok((pos, Stop::Invalid(e))),
        };
        if check_crc && !view.crc_ok() {
            return Ok((
                pos,
                Stop::Invalid(Error::corrupted(offset, "body CRC mismatch")),
            ));
        }
        if view.physical_offset != offset {
            let reason = format!("record says it is at {}", view.physical_offset);
            return Ok((pos, Stop::Invalid(Error::corrupted(offset, reason))));
        }
        if let Err(e) = format::validate_topic(view.topic) {
            return Ok((pos, Stop::Invalid(Error::corrupted(offset, e.to_string()))));
        }
        if !format::properties_well_formed(view.properties) {
            return Ok((
                pos,
                Stop::Invalid(Error::corrupted(offset, "malformed properties")),
            ));
        }
        if !sink.record(&view)? {
            let reason = "queue offset out of sequence for its queue";
            return Ok((pos, Stop::Invalid(Error::corrupted(offset, reason))));
        }
        *last_ts = (*last_ts).max(view.store_timestamp);
        pos += size;
    }
    Ok((pos, Stop::FileEnd))
}

/// Store time of the first record of `file`, if it has a readable one.
fn first_timestamp(file: &Arc<MappedFile>) -> Option<i64> {
    let bytes = file.visible_from(0)?;
    match format::peek(&bytes, file.start_offset()).ok()? {
        Peek::Record { size } => format::parse(&bytes[..size], file.start_offset())
            .ok()
            .map(|v| v.store_timestamp),
        _ => None,
    }
}

/// How far before the checkpoint time recovery starts, as RocketMQ does, so records
/// stamped in the same instant are never skipped.
const RECOVERY_SLACK_MS: i64 = 3_000;

/// Scans `files` (non-empty, in order) and returns the writer positioned at the end of the
/// log, with the latest store time seen. `files` keeps every file of the log, the
/// writer's last.
///
/// After a clean exit only the last file is scanned, and it must be whole: an invalid
/// record is refused with [`Error::Corrupted`] rather than silently dropping what follows.
/// After an unclean exit the scan starts at the last file whose first record is older than
/// `recovery_point` (the checkpoint; the first file without one), and the first invalid
/// record (or a gap) ends the log: under sync flush nothing after it was ever
/// acknowledged, because a put is acknowledged only once every byte before its end is
/// durable. The files after that point are removed and the tail of the last one is zeroed,
/// so stale bytes cannot later pass for records.
pub(super) fn scan_and_truncate(
    files: &mut Vec<Arc<MappedFile>>,
    clean: bool,
    recovery_point: Option<i64>,
    check_crc: bool,
    sink: &mut dyn RecoverySink,
) -> Result<(FileWriter, i64)> {
    let first = if clean {
        files.len() - 1
    } else {
        match recovery_point {
            Some(point) => files
                .iter()
                .rposition(|f| first_timestamp(f).is_some_and(|ts| ts <= point - RECOVERY_SLACK_MS))
                .unwrap_or(0),
            None => 0,
        }
    };
    sink.begin(files[first].start_offset())?;
    let mut last_ts = 0i64;
    let mut end = None;
    for (i, file) in files.iter().enumerate().skip(first) {
        let last = i + 1 == files.len();
        let (pos, stop) = scan_file(file, sink, &mut last_ts, check_crc || !clean)?;
        if !clean {
            // What a crashed process left in the page cache becomes durable before the
            // checkpoint or any reader relies on it.
            file.sync_all()?;
        }
        match stop {
            Stop::FileEnd if !last => {
                sink.file_done(last_ts)?;
                continue;
            }
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
    sink.file_done(last_ts)?;
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
    Ok((writer, last_ts))
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
