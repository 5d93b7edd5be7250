//! Replicates a [`rocketstore`] message store through [openraft]: a put is acknowledged
//! once a majority of replicas hold it in their Raft log, and every replica applies the
//! committed puts to its own store in log order, with the store time the leader chose,
//! so queue offsets, store times and record bytes are the same on every replica.
//!
//! - [`LogStore`]: the durable Raft log (segment files, group-committed `fdatasync`).
//! - [`StateMachine`]: applies committed puts to the store; a snapshot is the store's
//!   commit log itself, streamed lazily ([`SnapshotData`]).
//! - [`ReplicatedStore`]: one node: open, put through the leader, read from the store.
//! - [`network`]: an in-process network (for tests and benches) and a TCP one.
//!
//! Why a separate Raft log rather than the commit log as the Raft log, and what it costs,
//! is in `docs/REPLICATION.md`.
//!
//! ```
//! use std::sync::Arc;
//! use rocketstore::{FlushMode, Message, StoreConfig};
//! use rocketstore_raft::{ReplicatedStore, network::Router};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), rocketstore_raft::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let router = Router::default();
//! let config = Arc::new(openraft::Config::default().validate().unwrap());
//! let node = ReplicatedStore::open(
//!     1,
//!     StoreConfig::new(dir.path().join("store")).commit_log_file_size(1 << 20),
//!     &dir.path().join("raft"),
//!     config,
//!     router.network(1),
//! )
//! .await?;
//! router.add(1, node.raft().clone());
//! node.initialize([(1, "node-1".to_string())]).await?;
//! node.wait_leader(std::time::Duration::from_secs(30)).await?;
//! let put = node.put(Message::new("TopicA", 0u32, &b"replicated"[..])).await?;
//! assert_eq!(put.queue_offset, 0);
//! node.shutdown().await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]
// openraft's `StorageError` is large by design, and its traits return it.
#![allow(clippy::result_large_err)]

mod log_store;
pub mod network;
mod node;
mod request;
mod snapshot;
mod state_file;
mod state_machine;

pub use log_store::{LogStore, SEGMENT_BYTES};
pub use node::{Error, MAX_BATCH_BYTES, MAX_BATCH_PUTS, MAX_PUT_BYTES, Put, ReplicatedStore};
pub use request::{BatchPosition, BatchResponse, PutBatch, PutRequest, PutResponse};
pub use snapshot::SnapshotData;
pub use state_machine::StateMachine;

/// A node's id in the cluster.
pub type NodeId = u64;

/// The property in which every applied message records where in the Raft log it comes
/// from ([`BatchPosition`], `term.node.index.at.of`): how a replica learns, from its own
/// log, how far it has applied.
pub const PROPERTY_RAFT_LOG_ID: &str = "RAFT_LOG_ID";

openraft::declare_raft_types!(
    /// openraft's types for a replicated message store.
    pub TypeConfig:
        D = PutBatch,
        R = BatchResponse,
        SnapshotData = SnapshotData,
);

/// openraft's `Raft` for a replicated message store.
pub type Raft = openraft::Raft<TypeConfig>;
