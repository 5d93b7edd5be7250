//! A TCP transport: Raft RPCs between nodes, and a small client protocol (put, read,
//! status, initialize) for producers and tools.
//!
//! Each frame is `[len u32 BE][CBOR]`. A connection carries one request at a time; a
//! node keeps one connection per peer and reconnects after an error. CBOR rather than
//! JSON: bodies travel as byte strings, not arrays of numbers.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId};
use rocketstore::{GetStatus, Message};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Error, NodeId, ReplicatedStore, TypeConfig};

/// Frames larger than this are refused (a snapshot chunk is at most openraft's
/// `snapshot_max_chunk_size`, 3 MiB by default). The buffer grows as the bytes arrive,
/// so a length alone reserves no memory.
pub const MAX_FRAME: usize = 64 << 20;

/// A served connection that starts no request for this long is closed. Peers and
/// clients reconnect: a [`Client`] checks that its connection is still open before it
/// sends on it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A frame that has started must arrive whole within this long.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// The first reservation for a frame's bytes; the rest grows as they arrive.
const FIRST_RESERVE: usize = 64 << 10;

/// A request to a node.
#[derive(Serialize, Deserialize)]
pub enum Request {
    /// Raft: append entries.
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft: a snapshot chunk.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Raft: a vote.
    Vote(VoteRequest<NodeId>),
    /// Client: put a message through this node (it must lead).
    Put {
        /// Topic.
        topic: String,
        /// Queue.
        queue_id: u32,
        /// Body.
        body: Bytes,
    },
    /// Client: up to `max` messages of a queue from `offset`, from this replica, once it
    /// has indexed everything it applied.
    Read {
        /// Topic.
        topic: String,
        /// Queue.
        queue_id: u32,
        /// First queue offset.
        offset: u64,
        /// At most this many.
        max: u32,
    },
    /// Client: this node's view of the cluster.
    Status,
    /// Client: make a new cluster of these members (id, address).
    Initialize(Vec<(NodeId, String)>),
}

/// A node's answer.
#[derive(Serialize, Deserialize)]
pub enum Response {
    /// To [`Request::Append`].
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Snapshot`].
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Put`].
    Put(Result<Acked, PutRefused>),
    /// To [`Request::Read`]: (queue offset, body) pairs.
    Read(Vec<(u64, Bytes)>),
    /// To [`Request::Status`].
    Status(Status),
    /// To [`Request::Initialize`]: an error's text, if any.
    Initialize(Option<String>),
}

/// An acknowledged put, as a client sees it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Acked {
    /// Its Raft log id.
    pub log_id: LogId<NodeId>,
    /// Its queue offset, on every replica.
    pub queue_offset: u64,
    /// Its commit-log offset, on every replica.
    pub physical_offset: u64,
}

/// Why a put was not acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PutRefused {
    /// This node does not lead; the leader it knows of.
    NotLeader(Option<NodeId>),
    /// Every replica refuses the message.
    Rejected(String),
    /// Anything else: the put may or may not have been committed.
    Failed(String),
}

/// A node's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The node.
    pub id: NodeId,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// The last log id it applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// Its commit log's end.
    pub log_end: u64,
    /// Bytes its Raft log appended since it started.
    pub raft_log_bytes: u64,
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> io::Result<()> {
    let mut buf = vec![0u8; 4];
    ciborium::into_writer(value, &mut buf).map_err(io::Error::other)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&buf).await
}

async fn read_frame<T: DeserializeOwned>(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<T> {
    let len = stream.read_u32().await? as usize;
    read_body(stream, len).await
}

/// The frame whose length was read: its bytes, decoded.
async fn read_body<T: DeserializeOwned>(
    stream: &mut (impl AsyncRead + Unpin),
    len: usize,
) -> io::Result<T> {
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes"),
        ));
    }
    // Reserve only what has a chance of arriving: a peer that announces 64 MiB and
    // sends nothing costs one small buffer, not the whole frame.
    let mut buf = Vec::with_capacity(len.min(FIRST_RESERVE));
    let got = stream.take(len as u64).read_to_end(&mut buf).await?;
    if got < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("a frame of {len} bytes ended after {got}"),
        ));
    }
    ciborium::from_reader(&buf[..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The next request on a served connection: `None` once the peer is gone or silent for
/// `idle`, or its frame is damaged or slower than `frame`.
async fn next_request(
    stream: &mut (impl AsyncRead + Unpin),
    idle: Duration,
    frame: Duration,
) -> Option<Request> {
    let len = tokio::time::timeout(idle, stream.read_u32())
        .await
        .ok()?
        .ok()? as usize;
    tokio::time::timeout(frame, read_body(stream, len))
        .await
        .ok()?
        .ok()
}

/// One connection to a node, reconnecting after an error.
pub struct Client {
    addr: String,
    stream: Option<TcpStream>,
}

impl Client {
    /// A client of the node at `addr` (connects at first use).
    pub fn new(addr: impl Into<String>) -> Client {
        Client {
            addr: addr.into(),
            stream: None,
        }
    }

    /// Sends `req` and waits for the answer, at most `timeout`.
    pub async fn call(&mut self, req: &Request, timeout: Duration) -> io::Result<Response> {
        let result = tokio::time::timeout(timeout, self.call_inner(req)).await;
        let result = result
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "rpc timed out")));
        if result.is_err() {
            // The stream may hold half a frame: never reuse it.
            self.stream = None;
        }
        result
    }

    async fn call_inner(&mut self, req: &Request) -> io::Result<Response> {
        if self.stream.as_ref().is_some_and(|s| !still_open(s)) {
            // Closed by the node (idle, or restarted): a request sent on it would be
            // lost with no way to tell whether it was served.
            self.stream = None;
        }
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        write_frame(stream, req).await?;
        read_frame(stream).await
    }

    /// Puts a message through this node.
    pub async fn put(
        &mut self,
        topic: &str,
        queue_id: u32,
        body: Bytes,
        timeout: Duration,
    ) -> io::Result<Result<Acked, PutRefused>> {
        let req = Request::Put {
            topic: topic.to_string(),
            queue_id,
            body,
        };
        match self.call(&req, timeout).await? {
            Response::Put(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    /// Up to `max` messages of a queue from `offset`, as this replica holds them.
    pub async fn read(
        &mut self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max: u32,
    ) -> io::Result<Vec<(u64, Bytes)>> {
        let req = Request::Read {
            topic: topic.to_string(),
            queue_id,
            offset,
            max,
        };
        match self.call(&req, Duration::from_secs(10)).await? {
            Response::Read(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    /// The node's view of the cluster.
    pub async fn status(&mut self) -> io::Result<Status> {
        match self.call(&Request::Status, Duration::from_secs(2)).await? {
            Response::Status(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    /// Makes a new cluster of `members`, through this node.
    pub async fn initialize(&mut self, members: Vec<(NodeId, String)>) -> io::Result<()> {
        match self
            .call(&Request::Initialize(members), Duration::from_secs(10))
            .await?
        {
            Response::Initialize(None) => Ok(()),
            Response::Initialize(Some(e)) => Err(io::Error::other(e)),
            _ => Err(unexpected()),
        }
    }
}

/// Whether a connection with no request in flight is still open: the node sends nothing
/// unasked, so anything readable (its end of stream, or stray bytes) means it is not.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn unexpected() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "an answer to another request")
}

/// Serves Raft RPCs and client requests for `node` on `listener`, until the listener
/// fails.
pub async fn serve(listener: TcpListener, node: Arc<ReplicatedStore>) -> io::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            while let Some(req) = next_request(&mut stream, IDLE_TIMEOUT, FRAME_TIMEOUT).await {
                let resp = handle(&node, req).await;
                if write_frame(&mut stream, &resp).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn handle(node: &ReplicatedStore, req: Request) -> Response {
    let raft = node.raft();
    match req {
        Request::Append(r) => Response::Append(raft.append_entries(r).await),
        Request::Snapshot(r) => Response::Snapshot(raft.install_snapshot(r).await),
        Request::Vote(r) => Response::Vote(raft.vote(r).await),
        Request::Put {
            topic,
            queue_id,
            body,
        } => Response::Put(match node.put(Message::new(topic, queue_id, body)).await {
            Ok(p) => Ok(Acked {
                log_id: p.log_id,
                queue_offset: p.queue_offset,
                physical_offset: p.physical_offset,
            }),
            Err(Error::NotLeader { leader }) => Err(PutRefused::NotLeader(leader)),
            Err(Error::Rejected(r)) => Err(PutRefused::Rejected(r)),
            Err(e) => Err(PutRefused::Failed(e.to_string())),
        }),
        Request::Read {
            topic,
            queue_id,
            offset,
            max,
        } => {
            // What this replica applied, once indexed (reads by queue see only that).
            let store = Arc::clone(node.store());
            let _ = tokio::task::spawn_blocking(move || {
                store.wait_dispatched_to(store.max_physical_offset(), Duration::from_secs(5))
            })
            .await;
            let got = node
                .store()
                .get_message(&topic, queue_id, offset, max as usize);
            Response::Read(match got {
                Ok(g) if g.status == GetStatus::Found => g
                    .messages
                    .into_iter()
                    .map(|m| (m.queue_offset, m.body))
                    .collect(),
                _ => Vec::new(),
            })
        }
        Request::Status => {
            let m = raft.metrics().borrow().clone();
            Response::Status(Status {
                id: m.id,
                leader: m.current_leader,
                term: m.current_term,
                last_applied: m.last_applied,
                log_end: node.store().max_physical_offset(),
                raft_log_bytes: node.log().bytes_written(),
            })
        }
        Request::Initialize(members) => {
            Response::Initialize(node.initialize(members).await.err().map(|e| e.to_string()))
        }
    }
}

/// Node-to-node Raft RPCs over TCP; peers are reached at their `BasicNode` address.
#[derive(Clone, Default)]
pub struct TcpNetwork;

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> TcpPeer {
        TcpPeer {
            target,
            client: Client::new(node.addr.clone()),
        }
    }
}

/// The connection to one peer.
pub struct TcpPeer {
    target: NodeId,
    client: Client,
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl TcpPeer {
    async fn rpc<T, E: std::error::Error>(
        &mut self,
        req: Request,
        option: &RPCOption,
        pick: impl FnOnce(Response) -> Option<Result<T, RaftError<NodeId, E>>>,
    ) -> Result<T, RpcError<E>> {
        let resp = self
            .client
            .call(&req, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match pick(resp) {
            Some(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            None => Err(RPCError::Unreachable(Unreachable::new(&unexpected()))),
        }
    }
}

impl RaftNetwork<TypeConfig> for TcpPeer {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        // A frame a peer would refuse would be retried forever: ask openraft for fewer
        // entries instead (it sends up to 300, and one can hold 4 MiB of bodies).
        let estimate: usize = req
            .entries
            .iter()
            .map(|e| match &e.payload {
                openraft::EntryPayload::Normal(b) => b
                    .puts
                    .iter()
                    .map(|p| p.encoded_len_estimate())
                    .sum::<usize>(),
                _ => 256,
            })
            .sum();
        if estimate > MAX_FRAME / 2 && req.entries.len() > 1 {
            let hint = (req.entries.len() as u64 / 2).max(1);
            return Err(RPCError::PayloadTooLarge(
                openraft::error::PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.rpc(Request::Append(req), &option, |r| match r {
            Response::Append(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.rpc(Request::Snapshot(req), &option, |r| match r {
            Response::Snapshot(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.rpc(Request::Vote(req), &option, |r| match r {
            Response::Vote(r) => Some(r),
            _ => None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            id: 7,
            leader: None,
            term: 3,
            last_applied: None,
            log_end: 0,
            raft_log_bytes: 0,
        }
    }

    #[tokio::test]
    async fn a_frame_announced_longer_than_what_arrives_is_refused() {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
        ours.write_u32(MAX_FRAME as u32).await.unwrap();
        ours.write_all(&[0xa0; 10]).await.unwrap();
        drop(ours);
        let err = read_frame::<Request>(&mut theirs).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("ended after 10"), "{err}");
    }

    #[tokio::test]
    async fn a_frame_longer_than_the_limit_is_refused_before_its_bytes() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        ours.write_u32(MAX_FRAME as u32 + 1).await.unwrap();
        let err = read_frame::<Request>(&mut theirs).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_first_reservation_arrives_whole() {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let body = Bytes::from(vec![0x5a; 3 * FIRST_RESERVE + 17]);
        let req = Request::Put {
            topic: "t".into(),
            queue_id: 1,
            body: body.clone(),
        };
        let mut buf = vec![0u8; 4];
        ciborium::into_writer(&req, &mut buf).unwrap();
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let writer = tokio::spawn(async move { ours.write_all(&buf).await });
        match read_frame::<Request>(&mut theirs).await.unwrap() {
            Request::Put { body: got, .. } => assert_eq!(got, body),
            _ => panic!("another request"),
        }
        writer.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_given_up_after_the_idle_timeout() {
        let (_ours, mut theirs) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        assert!(
            next_request(&mut theirs, IDLE_TIMEOUT, FRAME_TIMEOUT)
                .await
                .is_none()
        );
        assert!(started.elapsed() >= IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stops_arriving_is_given_up_after_the_frame_timeout() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        ours.write_u32(1000).await.unwrap();
        ours.write_all(&[0; 10]).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(
            next_request(&mut theirs, IDLE_TIMEOUT, FRAME_TIMEOUT)
                .await
                .is_none()
        );
        let waited = started.elapsed();
        assert!(
            waited >= FRAME_TIMEOUT && waited < IDLE_TIMEOUT,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_client_reconnects_when_the_node_closed_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // A node that answers one request per connection, then closes it (as an idle
        // close would between requests).
        let node = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.unwrap();
                let req: Request = read_frame(&mut stream).await.unwrap();
                assert!(matches!(req, Request::Status));
                write_frame(&mut stream, &Response::Status(status()))
                    .await
                    .unwrap();
                stream.shutdown().await.unwrap();
            }
        });
        let mut client = Client::new(addr);
        assert_eq!(client.status().await.unwrap().id, 7);
        // The node has closed the first connection: wait until the client can see it.
        let stream = client.stream.as_ref().unwrap();
        stream.readable().await.unwrap();
        assert_eq!(client.status().await.unwrap().term, 3);
        node.await.unwrap();
    }
}
