//! An in-process cluster over the in-memory router, and ways to compare its replicas.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::{Config, ServerState, SnapshotPolicy};
use rocketstore::{FlushMode, Message, MessageStore, StoreConfig, layout};
use rocketstore_raft::network::Router;
use rocketstore_raft::{Error, NodeId, Put, ReplicatedStore};
use tempfile::TempDir;

pub const TOPIC: &str = "RaftTopic";
pub const QUEUES: u32 = 4;
pub const WAIT: Duration = Duration::from_secs(30);

/// What a replica holds: per (queue, queue offset), the body and store time.
pub type Content = BTreeMap<(u32, u64), (Bytes, i64)>;

pub fn raft_config(snapshot_every: Option<u64>) -> Arc<Config> {
    // Elections only when a test stops or cuts off a leader: a busy CI machine can stall
    // a leader's heartbeats for a few hundred milliseconds, and a test whose leader
    // changed under it would fail for no fault of the code.
    raft_config_timed(snapshot_every, 100, 800..1600)
}

/// Fast elections, for tests built to ride through leader changes (the chaos test, whose
/// partitions and restarts wait for many elections).
pub fn raft_config_fast_elections(snapshot_every: Option<u64>) -> Arc<Config> {
    raft_config_timed(snapshot_every, 50, 200..400)
}

fn raft_config_timed(
    snapshot_every: Option<u64>,
    heartbeat_ms: u64,
    election_ms: std::ops::Range<u64>,
) -> Arc<Config> {
    let config = Config {
        cluster_name: "test".into(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: election_ms.start,
        election_timeout_max: election_ms.end,
        snapshot_policy: match snapshot_every {
            Some(n) => SnapshotPolicy::LogsSinceLast(n),
            None => SnapshotPolicy::Never,
        },
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    Arc::new(config.validate().expect("a valid raft config"))
}

pub struct Cluster {
    pub dir: TempDir,
    pub router: Router,
    pub config: Arc<Config>,
    pub nodes: BTreeMap<NodeId, ReplicatedStore>,
    pub members: Vec<NodeId>,
    /// Applied to every node's store config as it opens.
    pub tweak: fn(StoreConfig) -> StoreConfig,
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) and waits for a leader.
    pub async fn start(n: u64, config: Arc<Config>) -> Cluster {
        Cluster::start_tweaked(n, config, |c| c).await
    }

    /// [`Cluster::start`] with every store's config passed through `tweak`.
    pub async fn start_tweaked(
        n: u64,
        config: Arc<Config>,
        tweak: fn(StoreConfig) -> StoreConfig,
    ) -> Cluster {
        let mut cluster = Cluster {
            dir: tempfile::tempdir().expect("a temporary directory"),
            router: Router::default(),
            config,
            nodes: BTreeMap::new(),
            members: (1..=n).collect(),
            tweak,
        };
        for id in 1..=n {
            cluster.open(id).await;
        }
        cluster.nodes[&1]
            .initialize(cluster.members.iter().map(|id| (*id, format!("node-{id}"))))
            .await
            .expect("initialize");
        cluster.leader().await;
        cluster
    }

    pub fn store_root(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}/store"))
    }

    pub async fn open(&mut self, id: NodeId) {
        self.open_with(id, None).await;
    }

    /// Opens node `id`, its store's file operations through `hook` if one is given.
    pub async fn open_with(&mut self, id: NodeId, hook: Option<Arc<dyn rocketstore::IoHook>>) {
        self.reopen_with(id, hook).await.expect("open a node");
    }

    /// [`Cluster::try_open_with`] for a node dropped the hard way, which keeps its lock
    /// until openraft's tasks that still hold its Raft log have ended (they outlive
    /// `Raft::shutdown` briefly): waits for them, as a restarting process would.
    pub async fn reopen_with(
        &mut self,
        id: NodeId,
        hook: Option<Arc<dyn rocketstore::IoHook>>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_open_with(id, hook.clone()).await {
                Err(Error::Store(rocketstore::Error::StoreLocked { .. }))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                result => return result,
            }
        }
    }

    /// [`Cluster::open_with`], returning the error of an open that fails.
    pub async fn try_open_with(
        &mut self,
        id: NodeId,
        hook: Option<Arc<dyn rocketstore::IoHook>>,
    ) -> Result<(), Error> {
        let mut store = StoreConfig::new(self.store_root(id))
            .commit_log_file_size(64 << 10)
            .flush_mode(FlushMode::async_default())
            .index_file_shape(512, 4096);
        if let Some(hook) = hook {
            store = store.io_hook(hook);
        }
        let store = (self.tweak)(store);
        let node = ReplicatedStore::open(
            id,
            store,
            &self.dir.path().join(format!("node-{id}/raft")),
            Arc::clone(&self.config),
            self.router.network(id),
        )
        .await?;
        self.router.add(id, node.raft().clone());
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Stops node `id` cleanly; it stays a member.
    pub async fn stop(&mut self, id: NodeId) {
        self.router.remove(id);
        let node = self.nodes.remove(&id).expect("a running node");
        node.shutdown().await.expect("a clean shutdown");
    }

    /// The leader, once one running node is leader and known to a majority of running nodes.
    pub async fn leader(&self) -> NodeId {
        match self.try_leader(WAIT).await {
            Some(id) => id,
            None => {
                for (id, node) in &self.nodes {
                    let m = node.raft().metrics().borrow().clone();
                    eprintln!("node {id}: {:?} {m}", m.running_state);
                }
                panic!("no leader elected among {:?}", self.nodes.keys());
            }
        }
    }

    /// The leader, if one is elected within `wait`.
    pub async fn try_leader(&self, wait: Duration) -> Option<NodeId> {
        let deadline = Instant::now() + wait;
        loop {
            // A cut-off leader may still think it leads: the newest term wins.
            let leader = self
                .nodes
                .iter()
                .map(|(id, node)| (*id, node.raft().metrics().borrow().clone()))
                .filter(|(_, m)| m.state == ServerState::Leader)
                .max_by_key(|(_, m)| m.current_term);
            if let Some((id, _)) = leader {
                return Some(id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Puts through whichever node leads, retrying while leadership moves. A put is sent
    /// again only once the node it went to no longer leads: a slow put on a leader that
    /// still leads may yet commit, and sending it again would store it twice.
    pub async fn put(&self, body: &[u8], queue: u32) -> Put {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader().await;
            let msg = Message::new(TOPIC, queue, Bytes::copy_from_slice(body));
            let mut put = Box::pin(self.nodes[&leader].put(msg));
            loop {
                match tokio::time::timeout(Duration::from_secs(1), &mut put).await {
                    Ok(Ok(put)) => return put,
                    Ok(Err(Error::NotLeader { .. } | Error::Raft(_))) => break,
                    Ok(Err(e)) => panic!("put failed: {e}"),
                    Err(_) if self.leader().await == leader => {}
                    Err(_) => break,
                }
                assert!(Instant::now() < deadline, "no put succeeded");
            }
            assert!(Instant::now() < deadline, "no put succeeded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node has applied what the leader has logged.
    pub async fn converge(&self) {
        let leader = self.leader().await;
        let target = self.nodes[&leader].raft().metrics().borrow().last_log_index;
        for (id, node) in &self.nodes {
            let caught_up = node
                .raft()
                .wait(Some(WAIT))
                .applied_index_at_least(target, format!("node {id} catches up"))
                .await;
            if let Err(e) = caught_up {
                for (id, node) in &self.nodes {
                    let m = node.raft().metrics().borrow().clone();
                    eprintln!("node {id}: {:?} {m}", m.running_state);
                }
                panic!("a node did not catch up: {e}");
            }
        }
    }
}

/// Every message of the test topic on `store`, by queue and queue offset.
pub fn content(store: &MessageStore) -> Content {
    assert!(
        store.wait_dispatched_to(store.max_physical_offset(), WAIT),
        "dispatch catches up"
    );
    let mut all = Content::new();
    for queue in 0..QUEUES {
        let mut offset = 0;
        loop {
            let got = store
                .get_message(TOPIC, queue, offset, 256)
                .expect("a read");
            if got.messages.is_empty() {
                break;
            }
            for m in &got.messages {
                assert_eq!(m.queue_offset, offset, "queue offsets follow each other");
                all.insert((queue, offset), (m.body.clone(), m.store_timestamp));
                offset += 1;
            }
        }
    }
    all
}

/// The value in one of a node's small state files (`snapshot`, `installing`, ...): its
/// first line is JSON, its second the CRC; `None` when the file does not exist.
pub fn state_file(path: &Path) -> Option<serde_json::Value> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let json = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    Some(serde_json::from_slice(json).expect("a state file's first line is JSON"))
}

/// The bytes of every commit-log file under `root`, by name.
pub fn commit_log_files(root: &Path) -> BTreeMap<u64, Vec<u8>> {
    layout::data_files(&layout::commit_log_dir(root))
        .expect("list the commit log")
        .into_iter()
        .map(|(offset, path)| (offset, std::fs::read(path).expect("read a log file")))
        .collect()
}

/// Asserts that every running replica holds the same messages and the same log bytes.
///
/// Files the store prepared ahead of its writer (starting at or past its end) are left
/// out once checked to hold nothing: how many exist depends on when the allocation
/// thread last ran, not on what was replicated.
pub fn assert_replicas_identical(cluster: &Cluster) -> Content {
    let mut first: Option<(NodeId, Content, BTreeMap<u64, Vec<u8>>)> = None;
    for (id, node) in &cluster.nodes {
        node.store().flush().expect("flush");
        let c = content(node.store());
        let end = node.store().max_physical_offset();
        let mut files = commit_log_files(&cluster.store_root(*id));
        let ahead = files.split_off(&end.max(1));
        for (name, bytes) in &ahead {
            assert!(
                bytes.iter().all(|b| *b == 0),
                "node {id}'s log file {name}, past its end {end}, holds data"
            );
        }
        match &first {
            None => first = Some((*id, c, files)),
            Some((fid, fc, ff)) => {
                assert_eq!(&c, fc, "node {id} holds other messages than node {fid}");
                assert_eq!(
                    files.keys().collect::<Vec<_>>(),
                    ff.keys().collect::<Vec<_>>(),
                    "node {id}'s log files differ from node {fid}'s"
                );
                for (name, bytes) in &files {
                    assert!(
                        bytes == &ff[name],
                        "log file {name} of node {id} differs from node {fid}'s"
                    );
                }
            }
        }
    }
    first.map(|(_, c, _)| c).unwrap_or_default()
}

/// A small deterministic generator for the seeded tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
