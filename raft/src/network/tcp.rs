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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{Error, NodeId, ReplicatedStore, TypeConfig};

/// Frames larger than this are refused (a snapshot chunk is at most openraft's
/// `snapshot_max_chunk_size`, 3 MiB by default). The buffer grows as the bytes arrive,
/// so a length alone reserves at most 16 KiB.
pub const MAX_FRAME: usize = 64 << 20;

/// A served connection that starts no request for this long is closed. Peers and
/// clients reconnect: a [`Client`] does not reuse a connection idle for half of this,
/// and checks that one it reuses is still open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A frame that has started must arrive whole within this long, and an answer must be
/// taken by the peer within this long.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many connections are served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 1024;

/// The first reservation for a frame's bytes; it doubles as they arrive, never past the
/// frame's length.
const FIRST_RESERVE: usize = 16 << 10;

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

async fn write_frame<T: Serialize>(
    stream: &mut (impl AsyncWrite + Unpin),
    value: &T,
) -> io::Result<()> {
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
    let buf = read_bytes(stream, len).await?;
    ciborium::from_reader(&buf[..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `len` bytes. Memory is reserved only for what has a chance of arriving: a peer that
/// announces 64 MiB and sends nothing costs one small buffer, and the buffer never grows
/// past `len`.
async fn read_bytes(stream: &mut (impl AsyncRead + Unpin), len: usize) -> io::Result<Vec<u8>> {
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes"),
        ));
    }
    let mut buf = Vec::new();
    while buf.len() < len {
        if buf.len() == buf.capacity() {
            let grown = (2 * buf.capacity()).max(FIRST_RESERVE).min(len);
            buf.reserve_exact(grown - buf.len());
        }
        let room = (buf.capacity().min(len) - buf.len()) as u64;
        if stream.take(room).read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("a frame of {len} bytes ended after {}", buf.len()),
            ));
        }
    }
    Ok(buf)
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
    /// The connection and when its last answer came. Taken out while a request is in
    /// flight, and put back only once its answer is read: a call given up half way (its
    /// future dropped by a caller's own timeout, as openraft's are) leaves no connection
    /// whose next bytes are the old answer.
    stream: Option<(TcpStream, tokio::time::Instant)>,
}

impl Client {
    /// A client of the node at `addr` (connects at first use).
    pub fn new(addr: impl Into<String>) -> Client {
        Client {
            addr: addr.into(),
            stream: None,
        }
    }

    /// Sends `req` and waits for the answer, at most `timeout`. An answer of another kind
    /// than the request's is an error.
    pub async fn call(&mut self, req: &Request, timeout: Duration) -> io::Result<Response> {
        let result = tokio::time::timeout(timeout, self.call_inner(req)).await;
        result.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "rpc timed out")))
    }

    async fn call_inner(&mut self, req: &Request) -> io::Result<Response> {
        // Closed by the node (idle, or restarted), or idle long enough that the node may
        // be closing it: a request sent on it could be lost with no way to tell whether
        // it was served.
        let reusable = |(stream, used): &(TcpStream, tokio::time::Instant)| {
            used.elapsed() < IDLE_TIMEOUT / 2 && still_open(stream)
        };
        let mut stream = match self.stream.take().filter(reusable) {
            Some((stream, _)) => stream,
            None => {
                let stream = TcpStream::connect(&self.addr).await?;
                stream.set_nodelay(true)?;
                stream
            }
        };
        write_frame(&mut stream, req).await?;
        let resp: Response = read_frame(&mut stream).await?;
        if !answers(req, &resp) {
            // Whatever put it there, the connection is out of step: drop it.
            return Err(unexpected());
        }
        self.stream = Some((stream, tokio::time::Instant::now()));
        Ok(resp)
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

/// Whether `resp` is of the kind that answers `req`.
fn answers(req: &Request, resp: &Response) -> bool {
    matches!(
        (req, resp),
        (Request::Append(_), Response::Append(_))
            | (Request::Snapshot(_), Response::Snapshot(_))
            | (Request::Vote(_), Response::Vote(_))
            | (Request::Put { .. }, Response::Put(_))
            | (Request::Read { .. }, Response::Read(_))
            | (Request::Status, Response::Status(_))
            | (Request::Initialize(_), Response::Initialize(_))
    )
}

fn unexpected() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "an answer to another request")
}

/// Serves Raft RPCs and client requests for `node` on `listener`, for ever: at most
/// [`MAX_CONNECTIONS`] at once. A failed accept (out of file descriptors, say) is logged
/// and retried after a pause. To stop serving (and shut the node down), use
/// [`serve_until`].
pub async fn serve(listener: TcpListener, node: Arc<ReplicatedStore>) -> io::Result<()> {
    serve_until(listener, node, std::future::pending()).await
}

/// [`serve`] until `stop` resolves: then stops accepting, ends every connection (a
/// request being served is dropped; a client's put may still be applied, as after any
/// lost answer), and returns once none is left, so that no clone of `node` remains here
/// and the caller can take it back and shut it down:
///
/// ```no_run
/// # async fn run(node: rocketstore_raft::ReplicatedStore, listener: tokio::net::TcpListener) {
/// use std::sync::Arc;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let node = Arc::new(node);
/// let server = tokio::spawn(rocketstore_raft::network::tcp::serve_until(
///     listener,
///     Arc::clone(&node),
///     async { let _ = stopped.await; },
/// ));
/// // ... until the broker stops:
/// let _ = stop.send(());
/// server.await.unwrap().unwrap();
/// let node = Arc::into_inner(node).expect("nothing else holds the node");
/// node.shutdown().await.unwrap();
/// # }
/// ```
pub async fn serve_until(
    listener: TcpListener,
    node: Arc<ReplicatedStore>,
    stop: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        // Connections that ended: their tasks are not kept.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            _ = &mut stop => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("accept: {e}");
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        // Only latency depends on it.
        let _ = stream.set_nodelay(true);
        let node = Arc::clone(&node);
        connections.spawn(async move {
            serve_connection(stream, &node).await;
            drop(slot);
        });
    }
    connections.shutdown().await;
    Ok(())
}

/// One connection's requests, one at a time, until the peer goes, falls silent, or takes
/// too long to send a request or take an answer.
async fn serve_connection(mut stream: TcpStream, node: &ReplicatedStore) {
    while let Some(req) = next_request(&mut stream, IDLE_TIMEOUT, FRAME_TIMEOUT).await {
        // A client sends nothing while its request is served: anything readable meanwhile
        // (its end of stream, most likely: it gave up) ends the wait for it. A put is
        // proposed before it is waited for, and goes on without it. Raft's requests always
        // run to their end: openraft writes a snapshot chunk inside the request, and one
        // dropped half way would leave the received stream out of step with its offset.
        let raft = matches!(
            req,
            Request::Append(_) | Request::Snapshot(_) | Request::Vote(_)
        );
        let mut byte = [0u8; 1];
        let resp = if raft {
            handle(node, req).await
        } else {
            tokio::select! {
                resp = handle(node, req) => resp,
                _ = stream.peek(&mut byte) => break,
            }
        };
        match tokio::time::timeout(FRAME_TIMEOUT, write_frame(&mut stream, &resp)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
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
    async fn a_frame_buffer_grows_no_further_than_its_length() {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let len = 3 * FIRST_RESERVE + 17;
        let writer = tokio::spawn(async move { ours.write_all(&vec![7u8; len]).await });
        let got = read_bytes(&mut theirs, len).await.unwrap();
        assert_eq!((got.len(), got.capacity()), (len, len));
        assert!(got.iter().all(|b| *b == 7));
        writer.await.unwrap().unwrap();
    }

    /// A node on `listener` that answers each connection's requests with `Status`
    /// answers numbered in order, holding the first answer until `release` fires.
    fn numbering_node(
        listener: TcpListener,
        release: Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut number = 0;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                while let Ok(req) = read_frame::<Request>(&mut stream).await {
                    assert!(matches!(req, Request::Status));
                    number += 1;
                    if number == 1 {
                        release.notified().await;
                    }
                    let answer = Status {
                        id: number,
                        ..status()
                    };
                    if write_frame(&mut stream, &Response::Status(answer))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        })
    }

    #[tokio::test]
    async fn a_call_given_up_by_its_caller_leaves_no_answer_for_the_next() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = Client::new(listener.local_addr().unwrap().to_string());
        let release = Arc::new(tokio::sync::Notify::new());
        let node = numbering_node(listener, Arc::clone(&release));
        // The caller's own deadline (openraft's, around every RPC) ends the call before
        // the client's: the node holds the answer until after it.
        let call = client.call(&Request::Status, Duration::from_secs(60));
        let given_up = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(given_up.is_err());
        release.notify_one();
        // The late answer (number 1) must not be taken for this call's.
        assert_eq!(client.status().await.unwrap().id, 2);
        node.abort();
    }

    #[tokio::test]
    async fn an_answer_of_another_kind_is_refused_and_its_connection_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = Client::new(listener.local_addr().unwrap().to_string());
        let node = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _: Request = read_frame(&mut stream).await.unwrap();
            write_frame(&mut stream, &Response::Read(Vec::new()))
                .await
                .unwrap();
            // Then the right answer, which a kept connection would give the next call.
            write_frame(&mut stream, &Response::Status(status()))
                .await
                .unwrap();
            let (mut fresh, _) = listener.accept().await.unwrap();
            let _: Request = read_frame(&mut fresh).await.unwrap();
            let answer = Status { id: 8, ..status() };
            write_frame(&mut fresh, &Response::Status(answer))
                .await
                .unwrap();
            stream
        });
        let err = client.status().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(client.status().await.unwrap().id, 8);
        drop(node.await.unwrap());
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
        // Wait until the client's end has the node's end of stream.
        let (stream, _) = client.stream.as_ref().unwrap();
        assert_eq!(stream.peek(&mut [0u8; 1]).await.unwrap(), 0);
        assert_eq!(client.status().await.unwrap().term, 3);
        node.await.unwrap();
    }
}
