//! One replica: its message store, its Raft log, and the openraft instance over them.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, LogId, RaftNetworkFactory};
use rocketstore::{Message, MessageStore, StoreConfig};

use crate::request::{PutRequest, PutResponse};
use crate::{LogStore, NodeId, Raft, StateMachine, TypeConfig};

/// What can go wrong on a replicated store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local message store failed.
    #[error(transparent)]
    Store(#[from] rocketstore::Error),
    /// The Raft log or the state machine's files failed.
    #[error("raft storage: {0}")]
    Io(#[from] io::Error),
    /// This node is not the leader; put through `leader` (if known).
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// Every replica refused the message (an invalid topic, property or size).
    #[error("message refused: {0}")]
    Rejected(String),
    /// openraft failed: no quorum in time, shutting down, or a fatal storage error.
    #[error("raft: {0}")]
    Raft(String),
}

/// An acknowledged replicated put: committed by a majority, and applied here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put {
    /// The Raft log entry that carries it.
    pub log_id: LogId<NodeId>,
    /// Byte offset of its record in every replica's commit log.
    pub physical_offset: u64,
    /// Its position in its queue, on every replica.
    pub queue_offset: u64,
    /// The store time recorded, on every replica.
    pub store_timestamp: i64,
}

/// One replica of a replicated message store.
pub struct ReplicatedStore {
    id: NodeId,
    raft: Raft,
    store: Arc<MessageStore>,
    log: LogStore,
    state_machine: StateMachine,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ReplicatedStore {
    /// Opens node `id`: its message store with `store_config`, its Raft log and state
    /// under `raft_dir`, and openraft over them, talking through `network`. Every replica
    /// must use the same commit-log file size and message limits, so that they apply
    /// puts into the same bytes. The store's flush mode may be async: the Raft log is what
    /// makes a put durable, and puts the store lost in a crash are applied again.
    pub async fn open<N>(
        id: NodeId,
        store_config: StoreConfig,
        raft_dir: &Path,
        raft_config: Arc<openraft::Config>,
        network: N,
    ) -> Result<ReplicatedStore, Error>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let dir = raft_dir.to_path_buf();
        let (store, log, state_machine) = tokio::task::spawn_blocking(move || {
            let store = Arc::new(MessageStore::open(store_config)?);
            let log = LogStore::open(&dir.join("log"))?;
            let state_machine = StateMachine::open(Arc::clone(&store), &dir.join("state"))?;
            Ok::<_, Error>((store, log, state_machine))
        })
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))??;
        let raft = Raft::new(id, raft_config, network, log.clone(), state_machine.clone())
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        Ok(ReplicatedStore {
            id,
            raft,
            store,
            log,
            state_machine,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The openraft instance (membership changes, metrics, and the RPC entry points a
    /// network hands requests to).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// This replica's message store, for reads. Writing to it directly would make the
    /// replica differ from the others: put through [`ReplicatedStore::put`].
    pub fn store(&self) -> &Arc<MessageStore> {
        &self.store
    }

    /// This node's Raft log.
    pub fn log(&self) -> &LogStore {
        &self.log
    }

    /// The last Raft log id applied to the store.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.state_machine.last_applied()
    }

    /// Makes a new cluster of `members` (id, address), run once on one node.
    pub async fn initialize(
        &self,
        members: impl IntoIterator<Item = (NodeId, String)>,
    ) -> Result<(), Error> {
        let members: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    /// Waits until this node knows a leader, and returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<NodeId, Error> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        metrics
            .current_leader
            .ok_or_else(|| Error::Raft("no leader".into()))
    }

    /// The leader this node knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Puts `msg` through the Raft log: resolves once a majority holds it durably and
    /// this node (the leader) has applied it. The store time is chosen here, by the
    /// leader, and every replica records it. On a follower: [`Error::NotLeader`].
    pub async fn put(&self, msg: Message) -> Result<Put, Error> {
        let req = PutRequest::new(msg, now_ms());
        match self.raft.client_write(req).await {
            Ok(resp) => match resp.data {
                PutResponse::Stored {
                    physical_offset,
                    queue_offset,
                    store_timestamp,
                } => Ok(Put {
                    log_id: resp.log_id,
                    physical_offset,
                    queue_offset,
                    store_timestamp,
                }),
                PutResponse::Rejected(reason) => Err(Error::Rejected(reason)),
                PutResponse::None => Err(Error::Raft("a put applied as no put".into())),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }

    /// Stops openraft, then shuts the store down cleanly.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let store = self.store;
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .map_err(|e| Error::Io(io::Error::other(e)))??;
        Ok(())
    }
}
