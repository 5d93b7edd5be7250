//! Dispatchers besides the consume queues: each reads the commit log in order on its own
//! thread, from its own durable progress, so a slow one never holds up the consume queues
//! (or another dispatcher).
//!
//! - [`Dispatch`]: the trait a broker implements to see every record (RocketMQ's
//!   `CommitLogDispatcher`), registered at open with
//!   [`MessageStore::open_with`](crate::MessageStore::open_with).
//! - `Sink`: what the thread drives; the key index is one, a broker's [`Dispatch`] is
//!   wrapped into one.
//! - `thread`: the loop (read, dispatch, commit, flush, record progress, retry).
//! - `progress`: the durable progress file, `{root}/dispatch/{name}`.
//!
//! The consume queues are the first dispatcher. They keep their own thread (`queue::dispatch`)
//! because puts wait on them (sync-flush readers, the disk-full guard) and recovery
//! rebuilds them inside the log scan; they follow the same contract: log order,
//! idempotent replay from a durable point, a lag in the stats.

pub(crate) mod progress;
pub(crate) mod thread;

use crate::commit_log::record::RecordView;
use crate::error::{Error, Result};

/// The error a [`Dispatch`] returns: anything that describes what went wrong.
pub type DispatchError = Box<dyn std::error::Error + Send + Sync>;

/// A broker's own consumer of the commit log, fed every record in log order on a thread
/// of its own, with its progress made durable by the store.
///
/// The contract:
/// - [`start`](Dispatch::start) comes first, once, with the offset dispatch resumes at.
/// - [`dispatch`](Dispatch::dispatch) sees every record from there, in log order (a
///   round retried after a failure hands its records again), including a transaction's half and rollback records (check
///   [`RecordView::is_hidden`]). Under sync flush it sees only durable records.
/// - [`commit`](Dispatch::commit) ends a round of records.
/// - [`flush`](Dispatch::flush) makes everything seen so far durable. When it returns
///   `Ok`, the store records that those records never need to be seen again.
/// - After a crash, records after the last successful flush are dispatched again: what
///   was kept of them must be overwritten or forgotten (the `start` offset says where).
/// - An error stops nothing: it is counted and shown in
///   [`StoreStats::dispatchers`](crate::StoreStats::dispatchers), logged, and the round is
///   retried from its first record after a pause. Records before that point are not seen
///   again.
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
/// use std::time::Duration;
/// use rocketstore::{Dispatch, DispatchError, Message, MessageStore, StoreConfig};
/// use rocketstore::format::RecordView;
///
/// /// Counts the bytes of every message body.
/// struct BodyBytes(Arc<AtomicU64>);
///
/// impl Dispatch for BodyBytes {
///     fn name(&self) -> &str { "body-bytes" }
///     fn dispatch(&mut self, record: &RecordView<'_>) -> Result<(), DispatchError> {
///         self.0.fetch_add(record.body_bytes().len() as u64, Ordering::Relaxed);
///         Ok(())
///     }
///     fn flush(&mut self) -> Result<(), DispatchError> { Ok(()) }
/// }
///
/// # fn main() -> rocketstore::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let total = Arc::new(AtomicU64::new(0));
/// let config = StoreConfig::new(dir.path()).commit_log_file_size(1 << 20);
/// let store = MessageStore::open_with(config, vec![Box::new(BodyBytes(Arc::clone(&total)))])?;
/// store.put_message(&Message::new("T", 0u32, &b"hello"[..]))?;
/// assert!(store.wait_dispatcher("body-bytes", store.max_physical_offset(), Duration::from_secs(10)));
/// assert_eq!(total.load(Ordering::Relaxed), 5);
/// # Ok(())
/// # }
/// ```
pub trait Dispatch: Send + 'static {
    /// The dispatcher's name: its progress is kept in `{root}/dispatch/{name}`, and its
    /// stats carry it. ASCII letters, digits, `-`, `_` and `.`; unique in the store; and
    /// `index` is the key index's.
    fn name(&self) -> &str;

    /// Dispatch resumes at commit-log offset `from`: every record below it was flushed by
    /// this dispatcher in an earlier run, or deleted by retention (on the first run, `from`
    /// is the log's first offset). Anything kept of records at or past `from` is stale.
    fn start(&mut self, from: u64) -> Result<(), DispatchError> {
        let _ = from;
        Ok(())
    }

    /// One record, in log order.
    fn dispatch(&mut self, record: &RecordView<'_>) -> Result<(), DispatchError>;

    /// The end of a round of records.
    fn commit(&mut self) -> Result<(), DispatchError> {
        Ok(())
    }

    /// Makes everything dispatched so far durable.
    fn flush(&mut self) -> Result<(), DispatchError>;
}

/// What one dispatcher's thread has done, in [`StoreStats::dispatchers`](crate::StoreStats::dispatchers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatcherStats {
    /// The dispatcher's name (`index` for the key index).
    pub name: String,
    /// Every record below this commit-log offset is dispatched.
    pub dispatched_offset: u64,
    /// Every record below this offset is durably dispatched (replay starts here).
    pub durable_offset: u64,
    /// Readable bytes of the log not dispatched yet.
    pub lag_bytes: u64,
    /// Rounds that failed (each is retried).
    pub failures: u64,
    /// The last failure, while it lasts.
    pub error: Option<String>,
}

/// What the dispatcher thread drives: the key index, or a broker's [`Dispatch`].
pub(crate) trait Sink: Send + 'static {
    fn name(&self) -> &str;
    /// Where dispatch resumes and what was durable: called once, first.
    fn start(&mut self, from: u64) -> Result<()>;
    fn dispatch(&mut self, record: &RecordView<'_>) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
    /// Makes everything dispatched durable, then records that every record below `offset`
    /// (the last of them stored at `timestamp`) is.
    fn flush(&mut self, offset: u64, timestamp: i64) -> Result<()>;
    /// The thread is stopping after a successful last flush, which covered every record
    /// below `offset`: nothing more will be written.
    fn close(&mut self, offset: u64, timestamp: i64) -> Result<()> {
        let _ = (offset, timestamp);
        Ok(())
    }
    /// Housekeeping after each flush, whether it succeeded or not, given the log's first
    /// offset still stored.
    fn maintain(&mut self, log_start: u64) {
        let _ = log_start;
    }
}

/// A broker's [`Dispatch`] with its progress file.
pub(crate) struct External {
    inner: Box<dyn Dispatch>,
    name: String,
    progress: progress::ProgressFile,
}

impl External {
    /// Wraps `inner`; returns it with the offset its progress says replay starts at.
    pub(crate) fn new(
        inner: Box<dyn Dispatch>,
        root: &std::path::Path,
    ) -> Result<(External, Option<progress::Progress>)> {
        let name = inner.name().to_owned();
        validate_name(&name)?;
        let (progress, last) =
            progress::ProgressFile::open(crate::layout::dispatch_progress_file(root, &name))?;
        Ok((
            External {
                inner,
                name,
                progress,
            },
            last,
        ))
    }

    /// Records durably that dispatch resumes at `offset`.
    pub(crate) fn record(&mut self, offset: u64, timestamp: i64) -> Result<()> {
        self.progress.store(progress::Progress {
            offset,
            timestamp,
            aux: [0; 2],
        })
    }

    fn wrap(&self, source: DispatchError) -> Error {
        Error::Dispatcher {
            name: self.name.clone(),
            source,
        }
    }
}

impl Sink for External {
    fn name(&self) -> &str {
        &self.name
    }

    fn start(&mut self, from: u64) -> Result<()> {
        self.inner.start(from).map_err(|e| self.wrap(e))
    }

    fn dispatch(&mut self, record: &RecordView<'_>) -> Result<()> {
        self.inner.dispatch(record).map_err(|e| self.wrap(e))
    }

    fn commit(&mut self) -> Result<()> {
        self.inner.commit().map_err(|e| self.wrap(e))
    }

    fn flush(&mut self, offset: u64, timestamp: i64) -> Result<()> {
        self.inner.flush().map_err(|e| self.wrap(e))?;
        self.record(offset, timestamp)
    }
}

/// The name of the key index's dispatcher (and its progress file).
pub(crate) const INDEX_NAME: &str = "index";

/// A dispatcher name is a file name of plain characters.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        return Err(Error::InvalidConfig {
            reason: format!(
                "dispatcher name {name:?}: use 1 to 64 ASCII letters, digits, '-', '_' or '.'"
            ),
        });
    }
    Ok(())
}
