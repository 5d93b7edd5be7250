//! The record codec, public for tools and brokers: RocketMQ's commit-log record and
//! consume-queue entry, byte for byte (`docs/FORMAT.md`).
//!
//! This module is a facade: the codec lives with the data it describes, the record in the
//! commit log and the entry in the consume queue. What is here is the supported surface:
//! encode a message into a record and place it ([`encode`], [`EncodedRecord::assign`]),
//! read records back ([`peek`], [`parse`], [`decode`], [`Records`]), and build or read a
//! consume-queue entry ([`CqEntry`]); read a key-index file ([`IndexHeader`],
//! [`IndexEntry`], [`key_hash`]).

pub use crate::commit_log::record::*;
pub use crate::index::file::{
    ENTRY_LEN as INDEX_ENTRY_LEN, HEADER_LEN as INDEX_HEADER_LEN, IndexEntry, IndexHeader,
    SLOT_LEN as INDEX_SLOT_LEN, index_file_len, key_hash,
};
pub use crate::queue::entry::{CQ_ENTRY_LEN, CqEntry, tag_hash};
