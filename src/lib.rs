//! # rocketstore
//!
//! The storage engine of an Apache-RocketMQ-style message broker, to embed in a broker.
//!
//! Messages are appended to one **commit log** made of fixed-size memory-mapped files, in
//! RocketMQ's byte format. A **sync (group-commit)** or **async** flush thread, chosen in
//! [`StoreConfig`], makes them durable. A dispatch thread indexes them in per-queue
//! **consume queues**, through which [`MessageStore::get_message`] reads; after a crash,
//! recovery from the checkpoint brings the log and the queues back in line.
//!
//! Other dispatchers read the same log on threads of their own: the **key index**
//! (RocketMQ's index files, queried by [`MessageStore::query_message`]) and any
//! [`Dispatch`] a broker registers with [`MessageStore::open_with`]. Transaction halves
//! and rollbacks are stored but never consumed; long-polling consumers wait with
//! [`MessageStore::wait_for_message`] or [`MessageStore::message_arrival`];
//! [`MessageStore::delete_topic`] removes a topic for good.
//!
//! A message travels: [`MessageStore`] (facade) → `format` (encode, outside any lock) →
//! `commit_log` (the put lock: offsets, store time, copy) → `mapped_file` → `flush`
//! (group commit or timer) → the caller's acknowledgement; then `dispatch` →
//! `consume_queue` → `get` (the reader).
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use rocketstore::{FlushMode, GetStatus, Message, MessageStore, StoreConfig};
//!
//! # fn main() -> rocketstore::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = MessageStore::open(
//!     StoreConfig::new(dir.path())
//!         .commit_log_file_size(1 << 20)
//!         .flush_mode(FlushMode::sync()),
//! )?;
//! // Put: durable when it returns (sync flush).
//! let put = store.put_message(&Message::new("TopicA", 0u32, Bytes::from_static(b"hi")))?;
//! // Get by physical offset...
//! let got = store.lookup_message(put.physical_offset)?.unwrap();
//! assert_eq!(&got.body[..], b"hi");
//! assert!(got.crc_ok());
//! // ...or by topic, queue and queue offset, once the consume queue has indexed it.
//! assert!(store.wait_dispatched(put.physical_offset, Duration::from_secs(10)));
//! let batch = store.get_message("TopicA", 0, 0, 32)?;
//! assert_eq!(batch.status, GetStatus::Found);
//! assert_eq!(&batch.messages[0].body[..], b"hi");
//! store.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/FORMAT.md` for every byte on disk and `docs/DESIGN.md` for threads, locks and
//! guarantees.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
// `unsafe` compiles only in fs/mapped_file/ (the mapped-file layer).
#![deny(unsafe_code)]
// Panics are spelled `expect("why it cannot fail")`; tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod checkpoint;
mod commit_log;
mod config;
mod dispatch;
mod error;
pub mod format;
mod fs;
mod index;
pub mod inspect;
pub mod layout;
mod message;
mod queue;
mod search;
mod stats;
mod store;

pub use checkpoint::CheckpointTimes;
pub use commit_log::flush::PutFuture;
pub use commit_log::replicate::{LogHold, ReplicatedPut};
pub use config::{FlushMode, MIN_FILE_SIZE, StoreConfig};
pub use dispatch::{Dispatch, DispatchError, DispatcherStats};
pub use error::{Error, Result};
pub use fs::io_hook::IoHook;
pub use fs::mapped_file::Warmup;
pub use index::QueryResult;
pub use message::{
    KEY_SEPARATOR, Message, MessageId, PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQ_KEY, Properties,
    PutResult, PutStatus, StoredMessage, TRANSACTION_COMMIT, TRANSACTION_MASK,
    TRANSACTION_PREPARED, TRANSACTION_ROLLBACK, is_transaction_hidden,
};
pub use queue::entry::TagCode;
pub use queue::long_poll::MessageArrival;
pub use queue::read::{BoundaryType, GetRequest, GetResult, GetStatus, RawGetResult, TagFilter};
pub use stats::{Histogram, OpenStats, ROCKETMQ_PUT_BUCKETS_MS, StoreStats};
pub use store::MessageStore;

/// Measurement hooks for `benches/limits.rs`, behind the `bench-internals` feature; not
/// part of the supported API.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub use fs::mapped_file::probe;

/// The README's examples, compiled as doc tests so the README stays true to the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
