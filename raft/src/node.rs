//! One replica: its message store, its Raft log, and the openraft instance over them.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::BTreeSet;

use openraft::ChangeMembers;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, LogId, RaftNetworkFactory};
use rocketstore::{Message, MessageStore, StoreConfig};
use tokio::sync::{mpsc, oneshot};

use crate::request::{BatchPosition, PutBatch, PutRequest, PutResponse};
use crate::{LogStore, NodeId, Raft, StateMachine, TypeConfig};

/// A batch proposed as one Raft entry holds at most this many puts...
pub const MAX_BATCH_PUTS: usize = 1024;
/// ...and at most this many bytes of puts ([`PutRequest::encoded_len_estimate`]), unless
/// its one put is larger.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// A put larger than this ([`PutRequest::encoded_len_estimate`]) is refused
/// ([`Error::Rejected`]), whatever the store's `max_message_size`: the entry carrying it
/// must fit a frame of the TCP transport ([`crate::network::tcp::MAX_FRAME`]), or no
/// follower could ever receive it and every later put would wait behind it.
pub const MAX_PUT_BYTES: usize = crate::network::tcp::MAX_FRAME / 2;
/// The longest a read barrier waits for the store to index what is applied.
const READ_BARRIER_WAIT: Duration = Duration::from_secs(10);
/// The longest the proposer waits for its last entry to reach the log.
const PACE_LIMIT: Duration = Duration::from_millis(20);

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
    proposals: mpsc::UnboundedSender<Pending>,
}

/// Locks `{dir}/raft.lock` for a node's life (held by its Raft log, see
/// [`LogStore::hold_lock`]): a second open of the same node, in this process or another,
/// is refused with `StoreLocked` before it reads or repairs anything. (Not `lock`: the
/// directory may be the store's root, whose own lock that is.)
fn lock_node(dir: &Path) -> Result<std::fs::File, Error> {
    crate::log_store::create_dir_durable(dir)?;
    let path = dir.join("raft.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(Error::Store(rocketstore::Error::StoreLocked { path }))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Io(e)),
    }
}

/// A put waiting to be proposed, and where its outcome goes.
struct Pending {
    req: PutRequest,
    done: oneshot::Sender<Result<Put, Error>>,
}

/// Proposes the puts waiting, as one entry each time round: while openraft syncs its log
/// for one entry, the next batch gathers (group commit above the Raft log). Entries go to
/// openraft in the order their puts arrived here.
async fn propose(raft: Raft, log: LogStore, mut pending: mpsc::UnboundedReceiver<Pending>) {
    // A put that would have taken the last batch past its bytes: the next batch's first.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match pending.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let mut bytes = first.req.encoded_len_estimate();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_PUTS {
            match pending.try_recv() {
                Ok(p) if bytes + p.req.encoded_len_estimate() > MAX_BATCH_BYTES => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.req.encoded_len_estimate();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (puts, waiting): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.req, p.done)).unzip();
        let progress = log.append_progress();
        let submitted = progress.submitted();
        let mut synced = progress.synced();
        match raft.client_write_ff(PutBatch { puts }).await {
            Ok(outcome) => {
                let (answered, mut is_answered) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    match outcome.await {
                        Ok(outcome) => deliver(outcome, waiting),
                        Err(_) => {
                            for done in waiting {
                                let _ = done.send(Err(Error::Raft("raft stopped".into())));
                            }
                        }
                    }
                    let _ = answered.send(true);
                });
                // Pace: let this entry reach the log (openraft syncs one append at a time)
                // while the next batch gathers. Not past an answer (a follower refuses at
                // once) or a short bound (the entry may go elsewhere).
                let _ = tokio::time::timeout(PACE_LIMIT, async {
                    tokio::select! {
                        _ = synced.wait_for(|s| s.count > submitted) => {}
                        _ = is_answered.wait_for(|a| *a) => {}
                    }
                })
                .await;
            }
            Err(fatal) => {
                for done in waiting {
                    let _ = done.send(Err(Error::Raft(fatal.to_string())));
                }
            }
        }
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id,
        },
        e => Error::Raft(e.to_string()),
    }
}

fn deliver(
    outcome: Result<ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, BasicNode>>,
    waiting: Vec<oneshot::Sender<Result<Put, Error>>>,
) {
    match outcome {
        Ok(resp) => {
            for (done, put) in waiting.into_iter().zip(resp.data.puts) {
                let _ = done.send(match put {
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
                    PutResponse::AlreadyApplied => {
                        Err(Error::Raft("applied before this node restarted".into()))
                    }
                });
            }
        }
        Err(ClientWriteError::ForwardToLeader(f)) => {
            for done in waiting {
                let _ = done.send(Err(Error::NotLeader {
                    leader: f.leader_id,
                }));
            }
        }
        Err(e) => {
            for done in waiting {
                let _ = done.send(Err(Error::Raft(e.to_string())));
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ReplicatedStore {
    /// Opens node `id`: its message store with `store_config`, its Raft log and state
    /// under `raft_dir`, and openraft over them, talking through `network`. Every replica
    /// must use the same commit-log file size, message limits and `store_host` (written
    /// into every record), so that they apply puts into the same bytes; nothing checks it. The store's flush mode may be async: the Raft log is what
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
        if store_config.read_confirmed_only {
            // Raft decides what is committed; readers limited to a confirm offset nobody
            // sets would see nothing, and recovery could not read the store's tail.
            return Err(Error::Store(rocketstore::Error::InvalidConfig {
                reason:
                    "read_confirmed_only has no place under Raft: only committed puts are applied"
                        .into(),
            }));
        }
        let dir = raft_dir.to_path_buf();
        let (store, log, state_machine) = tokio::task::spawn_blocking(move || {
            // Before anything is read: the Raft log's open cuts a torn tail, and a second
            // open of a running node would take the append in flight for one.
            let lock = lock_node(&dir)?;
            let state = dir.join("state");
            let log = LogStore::open(&dir.join("log"))?;
            // Held by every clone of the log, openraft's core's included: a node dropped
            // without `shutdown` keeps it while its core still runs.
            log.hold_lock(lock);
            let purged = log.last_purged_index();
            let unfinished =
                crate::state_machine::unfinished_install(&state, &store_config, purged)?;
            let mut store = MessageStore::open(store_config.clone())?;
            if let Some(installing) = unfinished
                && let Err(e) =
                    crate::state_machine::finish_unfinished_install(&store, &state, &installing)
            {
                log::warn!("the interrupted snapshot install could not be finished: {e}");
                // A store the failure poisoned does not close clean; dropped, it still
                // releases its lock, and what follows only needs that.
                if let Err(e) = store.shutdown() {
                    log::warn!("closing the store after the failed install: {e}");
                }
                drop(store);
                crate::state_machine::refuse_if_purged(&installing, purged, &e.to_string())?;
                crate::state_machine::roll_back_unfinished_install(
                    &state,
                    &store_config,
                    &installing,
                )?;
                store = MessageStore::open(store_config)?;
            }
            let store = Arc::new(store);
            let state_machine = StateMachine::open(Arc::clone(&store), &state)?;
            state_machine.check_log(&log)?;
            state_machine.apply_after_log_syncs(log.append_progress());
            Ok::<_, Error>((store, log, state_machine))
        })
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))??;
        let raft = Raft::new(id, raft_config, network, log.clone(), state_machine.clone())
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        // Armed after the start: openraft's own purge at startup goes up to the last entry
        // applied, which the store holds (its recovery read it back from the store).
        log.gate_purges(state_machine.covered());
        let (proposals, pending) = mpsc::unbounded_channel();
        tokio::spawn(propose(raft.clone(), log.clone(), pending));
        Ok(ReplicatedStore {
            id,
            raft,
            store,
            log,
            state_machine,
            proposals,
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
    /// leader, and every replica records it. A message carrying the reserved
    /// [`crate::PROPERTY_RAFT_LOG_ID`] property, or one the store would refuse once that
    /// property is added (its topic, body or properties), is refused before it is
    /// proposed ([`Error::Rejected`]), and so is one larger than [`MAX_PUT_BYTES`]. Puts
    /// made meanwhile travel in one Raft entry. On a follower: [`Error::NotLeader`]. On a
    /// leader whose store refuses puts for lack of space, that refusal
    /// ([`rocketstore::Error::DiskFull`] or `DispatchStalled`, in [`Error::Store`]): the
    /// put is not proposed, since committed entries the store cannot apply would pile up
    /// in memory. An [`Error::Raft`] (a leader change part-way, a shutdown) leaves the
    /// outcome unknown: the put may yet be applied.
    pub async fn put(&self, msg: Message) -> Result<Put, Error> {
        if msg
            .properties
            .iter()
            .any(|(name, _)| name == crate::PROPERTY_RAFT_LOG_ID)
        {
            return Err(Error::Rejected(format!(
                "the {} property is reserved for the replication layer",
                crate::PROPERTY_RAFT_LOG_ID
            )));
        }
        let req = PutRequest::new(msg, now_ms());
        if req.encoded_len_estimate() > MAX_PUT_BYTES {
            return Err(Error::Rejected(format!(
                "a put of about {} bytes is larger than the {MAX_PUT_BYTES} a Raft entry may carry",
                req.encoded_len_estimate()
            )));
        }
        if self.current_leader() == Some(self.id) {
            self.store.check_space()?;
        }
        // What every replica would refuse is refused here, before it takes a place in a
        // majority's Raft logs: the record as applied, with the longest position.
        let config = self.store.config();
        let applied = req.to_message(BatchPosition::longest());
        let len =
            rocketstore::format::encoded_len(&applied, &config.store_host, config.max_message_size)
                .map_err(|e| Error::Rejected(e.to_string()))?;
        let fits = config.commit_log_file_size as usize - rocketstore::format::BLANK_RECORD_LEN;
        if len > fits {
            let e = rocketstore::Error::RecordTooLarge {
                size: len,
                max: fits,
            };
            return Err(Error::Rejected(e.to_string()));
        }
        let (done, outcome) = oneshot::channel();
        self.proposals
            .send(Pending { req, done })
            .map_err(|_| Error::Raft("shut down".into()))?;
        outcome
            .await
            .unwrap_or_else(|_| Err(Error::Raft("shut down".into())))
    }

    /// Adds node `id`, reachable at `addr`, as a voter (on the leader): first as a
    /// learner that catches up (by log, or by snapshot from an empty store), then in the
    /// membership. Resolves once the change is committed.
    pub async fn add_voter(&self, id: NodeId, addr: impl Into<String>) -> Result<(), Error> {
        self.raft
            .add_learner(id, BasicNode::new(addr.into()), true)
            .await
            .map_err(membership_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    /// Removes node `id` from the voters and the cluster (on the leader).
    pub async fn remove_voter(&self, id: NodeId) -> Result<(), Error> {
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    /// Waits until a read from this node's store is linearizable: this node leads, a
    /// quorum still confirms it, it has applied everything committed before the call, and
    /// the store has indexed it (reads by queue see only dispatched messages). Reads on
    /// followers (or without this) may lag the leader.
    pub async fn read_barrier(&self) -> Result<(), Error> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => {
                let store = Arc::clone(&self.store);
                let indexed = tokio::task::spawn_blocking(move || {
                    store.wait_dispatched_to(store.max_physical_offset(), READ_BARRIER_WAIT)
                })
                .await
                .map_err(|e| Error::Io(io::Error::other(e)))?;
                match indexed {
                    true => Ok(()),
                    false => Err(Error::Raft(format!(
                        "the store did not index what is applied within {READ_BARRIER_WAIT:?}"
                    ))),
                }
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }

    /// Stops openraft, then shuts the store down cleanly.
    pub async fn shutdown(self) -> Result<(), Error> {
        // A purge waiting for an install holds openraft's core, which must be free to stop.
        self.state_machine.refuse_purges();
        self.raft
            .shutdown()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let store = self.store;
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .map_err(|e| Error::Io(io::Error::other(e)))??;
        // Not left to the clones' drops: the proposer task holds one until it sees its
        // channel closed, and a reopen right after this must find the node unlocked.
        self.log.release_lock();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's applies wait for its Raft log's syncs: openraft 0.9.25 happens to order
    /// them so already, and no cluster test would notice the wait left out.
    #[tokio::test]
    async fn a_node_applies_only_after_its_raft_log_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let router = crate::network::Router::default();
        let node = ReplicatedStore::open(
            1,
            StoreConfig::new(dir.path().join("store")).commit_log_file_size(64 << 10),
            &dir.path().join("raft"),
            Arc::new(openraft::Config::default().validate().unwrap()),
            router.network(1),
        )
        .await
        .unwrap();
        let waits_on = node.state_machine.log_syncs().expect("an apply waits");
        assert!(waits_on.is_of_same_log(&node.log.append_progress()));
        node.shutdown().await.unwrap();
    }
}
