//! # rocketstore
//!
//! The storage engine of an Apache-RocketMQ-style message broker, to embed in a broker.
//!
//! Messages are appended to one **commit log** made of fixed-size memory-mapped files, in
//! RocketMQ's byte format. A **sync (group-commit)** or **async** flush thread, chosen in
//! [`StoreConfig`], makes them durable.
//!
//! A message travels: [`MessageStore`] (facade) → `format` (encode, outside any lock) →
//! `commit_log` (the put lock: offsets, store time, copy) → `mapped_file` → `flush`
//! (group commit or timer) → the caller's acknowledgement.
//!
//! ```
//! use bytes::Bytes;
//! use rocketstore::{FlushMode, Message, MessageStore, StoreConfig};
//!
//! # fn main() -> rocketstore::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = MessageStore::open(
//!     StoreConfig::new(dir.path())
//!         .commit_log_file_size(1 << 20)
//!         .flush_mode(FlushMode::sync()),
//! )?;
//! let put = store.put_message(&Message::new("TopicA", 0u32, Bytes::from_static(b"hi")))?;
//! let got = store.lookup_message(put.physical_offset)?.unwrap();
//! assert_eq!(&got.body[..], b"hi");
//! assert!(got.crc_ok());
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/FORMAT.md` for every byte on disk and `docs/DESIGN.md` for threads, locks and
//! guarantees.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod allocate;
mod checkpoint;
mod commit_log;
mod config;
mod consume_queue;
mod consume_queues;
mod dispatch;
mod error;
mod flush;
pub mod format;
mod get;
mod io_hook;
mod lock;
mod mapped_file;
mod mapped_file_queue;
mod message;
mod recovery;
mod store;

pub use checkpoint::CheckpointTimes;
pub use config::{FlushMode, MIN_FILE_SIZE, StoreConfig, Warmup};
pub use error::{Error, Result};
pub use flush::PutFuture;
pub use get::{GetResult, GetStatus, TagFilter};
pub use io_hook::IoHook;
pub use message::{
    KEY_SEPARATOR, Message, MessageId, PROPERTY_KEYS, PROPERTY_TAGS, Properties, PutResult,
    PutStatus, StoredMessage,
};
pub use store::MessageStore;

/// Measurement hooks for the benches; not part of the supported API.
#[doc(hidden)]
pub use mapped_file::probe;

/// The README's examples, compiled as doc tests so the README stays true to the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
