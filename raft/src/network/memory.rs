//! An in-process network: requests go straight to the target's `Raft`, unless the
//! router has cut the link, in which case the target is unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;

use crate::{NodeId, Raft, TypeConfig};

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

#[derive(Default)]
struct Links {
    nodes: BTreeMap<NodeId, Raft>,
    /// Nodes cut off from every other.
    isolated: BTreeSet<NodeId>,
}

/// The in-process network of a cluster. Cheap to clone: clones share the links.
#[derive(Clone, Default)]
pub struct Router {
    links: Arc<Mutex<Links>>,
}

impl Router {
    /// Makes node `id` reachable through its `raft`.
    pub fn add(&self, id: NodeId, raft: Raft) {
        self.links.lock().nodes.insert(id, raft);
    }

    /// Removes node `id` (stopped): it is unreachable until added again.
    pub fn remove(&self, id: NodeId) {
        self.links.lock().nodes.remove(&id);
    }

    /// Cuts node `id` off from every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        self.links.lock().isolated.insert(id);
    }

    /// Reconnects node `id`.
    pub fn heal(&self, id: NodeId) {
        self.links.lock().isolated.remove(&id);
    }

    /// Reconnects every node.
    pub fn heal_all(&self) {
        self.links.lock().isolated.clear();
    }

    /// The network node `from` talks through.
    pub fn network(&self, from: NodeId) -> RouterNetwork {
        RouterNetwork {
            router: self.clone(),
            from,
            target: from,
        }
    }

    fn target(&self, from: NodeId, to: NodeId) -> Result<Raft, Unreachable> {
        let links = self.links.lock();
        let cut = links.isolated.contains(&from) || links.isolated.contains(&to);
        match links.nodes.get(&to) {
            Some(raft) if !cut => Ok(raft.clone()),
            _ => Err(Unreachable::new(&io::Error::new(
                io::ErrorKind::NotConnected,
                format!("{from} cannot reach {to}"),
            ))),
        }
    }

    /// Sends through the link, and drops the reply if the link was cut meanwhile.
    async fn call<T, E, F>(&self, from: NodeId, to: NodeId, f: F) -> Result<T, RpcError<E>>
    where
        E: std::error::Error,
        F: AsyncFnOnce(Raft) -> Result<T, RaftError<NodeId, E>>,
    {
        let raft = self.target(from, to).map_err(RPCError::Unreachable)?;
        let reply = f(raft).await;
        self.target(from, to).map_err(RPCError::Unreachable)?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
    }
}

/// Node `from`'s side of the [`Router`]; as a connection, the link to `target`.
#[derive(Clone)]
pub struct RouterNetwork {
    router: Router,
    from: NodeId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for RouterNetwork {
    type Network = RouterNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> RouterNetwork {
        RouterNetwork {
            router: self.router.clone(),
            from: self.from,
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for RouterNetwork {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.router
            .call(self.from, self.target, async move |raft| {
                raft.append_entries(req).await
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.router
            .call(self.from, self.target, async move |raft| {
                raft.install_snapshot(req).await
            })
            .await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.router
            .call(self.from, self.target, async move |raft| {
                raft.vote(req).await
            })
            .await
    }
}
