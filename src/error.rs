//! The one error type of the crate.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in the store, named for what the caller did or met.
///
/// Validation errors (`InvalidTopic`, `MessageTooLarge`, …) reject one call and leave the
/// store fully usable. [`Error::Poisoned`] is different: after a failed flush the store
/// refuses every later write until it is reopened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The topic is empty, too long (over 255 bytes) or has a character outside
    /// RocketMQ's allowed set `[%|a-zA-Z0-9_-]`.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The queue id is past `i32::MAX`: RocketMQ reads the field as a signed 32-bit
    /// number, and its tools could not read the queue's directory name.
    #[error("invalid queue id {queue_id}: at most {}", i32::MAX)]
    InvalidQueueId {
        /// The queue id as given.
        queue_id: u32,
    },
    /// The body is larger than the configured maximum message size.
    #[error("message body of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// Body size in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The encoded record does not fit in one commit-log file.
    #[error("record of {size} bytes does not fit in a commit-log file (at most {max} bytes)")]
    RecordTooLarge {
        /// Encoded record size in bytes.
        size: usize,
        /// The largest record a file can hold.
        max: usize,
    },
    /// The encoded properties are longer than the record format allows (32767 bytes).
    #[error("properties of {size} bytes exceed the maximum of {max} bytes")]
    PropertiesTooLarge {
        /// Encoded size of the properties in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A property name or value holds one of the separator bytes `0x01`/`0x02`, or a name is empty.
    #[error("invalid property {name:?}: {reason}")]
    InvalidProperty {
        /// The property name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A batch is empty or mixes topics or queues.
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// Why it was refused.
        reason: String,
    },
    /// The bodies of a batch add up to more than the maximum message size, or its records
    /// to more than that plus 64 KiB.
    #[error("batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge {
        /// The batch's body bytes, or its records' bytes when those are over.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The append lock has been held longer than the configured busy limit: the page cache
    /// (or the disk behind it) is not keeping up, so the put is refused at once.
    #[error(
        "page cache busy: the append lock has been held for {held_ms} ms (limit {limit_ms} ms)"
    )]
    PageCacheBusy {
        /// How long the current holder has held the lock, in ms.
        held_ms: u64,
        /// The configured limit, in ms.
        limit_ms: u64,
    },
    /// The disk holding the store is fuller than the configured limit; puts are refused
    /// until space is freed (reads go on).
    #[error("disk {:.1}% full, over the {:.1}% limit: put refused until space is freed", used_ratio * 100.0, limit * 100.0)]
    DiskFull {
        /// Used fraction of the filesystem at the last sample.
        used_ratio: f64,
        /// The configured limit.
        limit: f64,
    },
    /// Dispatch cannot write the consume queues for lack of disk space, so the put is
    /// refused rather than stored unindexed. Dispatch retries by itself and puts are
    /// accepted again as soon as it succeeds (free some space).
    #[error("put refused: the consume queues cannot be written ({reason}); free disk space")]
    DispatchStalled {
        /// The failure dispatch met.
        reason: String,
    },
    /// An earlier flush failed (or a background thread panicked); the store refuses writes
    /// because a retried fsync can falsely report success. Reopen the store to recover.
    /// Also what [`MessageStore::shutdown`](crate::MessageStore::shutdown) returns when it
    /// could not mark the store clean, for any cause.
    #[error("store is poisoned by an earlier failure ({cause}); reopen it")]
    Poisoned {
        /// What poisoned the store: the failed I/O (its kind kept, its text naming the
        /// operation and file), or a background thread's panic. Shared by every call the
        /// store refuses.
        #[source]
        cause: Arc<io::Error>,
    },
    /// The store has been shut down.
    #[error("store is shut down")]
    ShutDown,
    /// Another open store (in this process or another) holds the store's lock file.
    #[error("store is already open: {path} is locked by another process or handle")]
    StoreLocked {
        /// The lock file.
        path: PathBuf,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A file in the store directory has the wrong name or size, or the files do not line up.
    #[error("bad store file {path}: {reason}")]
    BadStoreFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes that should hold a record do not.
    #[error("corrupted record at offset {offset}: {reason}")]
    Corrupted {
        /// Offset of the record (in the commit log, or in the buffer being decoded).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An offset outside the commit log as stored (below its first file, or past its end).
    #[error("offset {offset} is outside the log ({start}..{end})")]
    OutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The log's first offset still stored.
        start: u64,
        /// The log's end (as far as the call may read).
        end: u64,
    },
    /// Bytes for a follower's log were offered at another offset than its end.
    #[error("append at {at} refused: the log ends at {end}")]
    LogMismatch {
        /// Where the bytes were offered.
        at: u64,
        /// Where the log ends.
        end: u64,
    },
    /// A dispatcher failed: the key index (named `index`), or a broker's
    /// [`Dispatch`](crate::Dispatch).
    #[error("dispatcher {name} failed: {source}")]
    Dispatcher {
        /// The dispatcher's name.
        name: String,
        /// What it returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An I/O operation failed.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The error a caller meets once the store is poisoned by `cause`.
    pub(crate) fn poisoned(cause: &Arc<io::Error>) -> Self {
        Error::Poisoned {
            cause: cause.clone(),
        }
    }

    /// This error as an `io::Error` of the same kind (`Other` when it is not an I/O
    /// failure), whose text is this error's: what a poisoning keeps of its cause.
    pub(crate) fn to_io(&self, context: &str) -> Arc<io::Error> {
        let kind = match self {
            Error::Io { source, .. } => source.kind(),
            Error::Poisoned { cause } => cause.kind(),
            _ => io::ErrorKind::Other,
        };
        Arc::new(io::Error::new(kind, format!("{context}: {self}")))
    }

    /// Whether this is a failure for lack of disk space (`ENOSPC`, or a quota).
    pub(crate) fn is_no_space(&self) -> bool {
        matches!(self, Error::Io { source, .. }
            if source.kind() == io::ErrorKind::StorageFull
                || source.kind() == io::ErrorKind::QuotaExceeded)
    }

    /// Whether the process (or the system) ran out of file descriptors: a load spread
    /// over many threads may then be done again on one.
    pub(crate) fn is_out_of_descriptors(&self) -> bool {
        matches!(self, Error::Io { source, .. }
            if [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE]
                .iter()
                .any(|e| source.raw_os_error() == Some(e.raw_os_error())))
    }

    pub(crate) fn corrupted(offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupted {
            offset,
            reason: reason.into(),
        }
    }
}
