//! A replicated store of `--nodes` processes on localhost TCP, loaded by producers,
//! with the leader killed (SIGKILL) part-way.
//!
//! ```sh
//! cargo run --release -p rocketstore-raft --example cluster -- --nodes 3 --messages 50000 --kill-leader-at 25000
//! ```
//!
//! Each node is this program started again with `--serve`. The driver initializes the
//! cluster, runs `--producers` concurrent producers against the leader (following it when
//! it moves), kills the leader's process once `--kill-leader-at` puts are acknowledged,
//! and at the end reads every acknowledged message back from every surviving node. Then it
//! restarts the killed node, waits until it has caught up, and compares every node's
//! commit log byte for byte. It prints progress on stderr and one JSON line on stdout:
//! `acked`, `lost`, `msgs_per_s`, `p99_ack_ms`, `failover_ms`, the bytes written per
//! message, `restarted_rejoin_ms` and `replicas_identical`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use parking_lot::Mutex;
use rocketstore::{FlushMode, StoreConfig};
use rocketstore_raft::network::TcpNetwork;
use rocketstore_raft::network::tcp::{self, Client, PutRefused};
use rocketstore_raft::{NodeId, ReplicatedStore};

const TOPIC: &str = "ClusterTopic";

#[derive(Parser, Clone)]
struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Messages to acknowledge.
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Kill the leader's process once this many puts are acknowledged.
    #[arg(long)]
    kill_leader_at: Option<u64>,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 64)]
    producers: usize,
    /// Queues of the topic.
    #[arg(long, default_value_t = 8)]
    queues: u32,
    /// Commit-log file size of every node (default: the store's default, 1 GiB).
    #[arg(long)]
    file_size: Option<u64>,
    /// First TCP port; node i listens on base + i.
    #[arg(long, default_value_t = 17_400)]
    base_port: u16,
    /// Where the nodes keep their files (default: a temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up after this many seconds, counted from before the nodes start: kill every
    /// node and exit with status 2 (default: no limit). A node that hangs at start-up, a
    /// run that cannot elect a leader, or one that never converges, otherwise waits.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    deadline_secs: Option<u64>,
    /// Run as node N (started by the driver).
    #[arg(long, hide = true)]
    serve: Option<NodeId>,
}

fn addr(args: &Args, id: NodeId) -> String {
    format!("127.0.0.1:{}", args.base_port + id as u16)
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match args.serve {
        Some(id) => runtime.block_on(serve(args, id)),
        None => runtime.block_on(drive(args)),
    }
}

fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "rocketstore-cluster".into(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
        max_in_snapshot_log_to_keep: 5_000,
        ..Default::default()
    };
    Arc::new(config.validate().expect("a valid raft config"))
}

async fn serve(args: Args, id: NodeId) {
    let dir = args.dir.clone().expect("the driver passes --dir");
    let mut store = StoreConfig::new(dir.join(format!("node-{id}/store")))
        .flush_mode(FlushMode::async_default());
    if let Some(size) = args.file_size {
        store = store.commit_log_file_size(size);
    }
    let node = ReplicatedStore::open(
        id,
        store,
        &dir.join(format!("node-{id}/raft")),
        raft_config(),
        TcpNetwork,
    )
    .await
    .expect("open the node");
    let listener = tokio::net::TcpListener::bind(addr(&args, id))
        .await
        .expect("bind the node's port");
    println!("ready");
    tcp::serve(listener, Arc::new(node)).await.expect("serve");
}

struct Cluster {
    args: Args,
    children: Mutex<BTreeMap<NodeId, Child>>,
    leader: AtomicU64,
}

impl Cluster {
    fn alive(&self) -> Vec<NodeId> {
        self.children.lock().keys().copied().collect()
    }

    /// Asks the live nodes who leads, until one names a live leader.
    async fn find_leader(&self) -> NodeId {
        loop {
            for id in self.alive() {
                if let Ok(s) = Client::new(addr(&self.args, id)).status().await
                    && let Some(l) = s.leader.filter(|l| self.children.lock().contains_key(l))
                {
                    self.leader.store(l, Ordering::Release);
                    return l;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&self, id: NodeId) {
        if let Some(mut child) = self.children.lock().remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut *self.children.lock()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn body(i: u64, size: usize) -> Bytes {
    let mut b = format!("msg-{i:010}-").into_bytes();
    b.resize(size.max(b.len()), b'x');
    Bytes::from(b)
}

struct Acks {
    /// (message number, queue, queue offset)
    acked: Vec<(u64, u32, u64)>,
    latencies_us: Vec<u64>,
}

/// Starts node `id` as a child process, hands it to the cluster (so that a deadline or a
/// drop kills it), and waits until it listens. The wait for its "ready" line runs off the
/// runtime's threads, so the deadline can still fire while a node hangs at start-up.
async fn start_node(cluster: &Cluster, dir: &std::path::Path, id: NodeId) {
    let args = &cluster.args;
    let exe = std::env::current_exe().expect("this program's path");
    let mut cmd = Command::new(exe);
    cmd.arg("--serve")
        .arg(id.to_string())
        .arg("--dir")
        .arg(dir)
        .arg("--base-port")
        .arg(args.base_port.to_string())
        .stdout(Stdio::piped());
    if let Some(size) = args.file_size {
        cmd.arg("--file-size").arg(size.to_string());
    }
    let mut child = cmd.spawn().expect("start a node");
    let stdout = child.stdout.take().expect("piped");
    cluster.children.lock().insert(id, child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("the reading task ends");
    let line = line.expect("read the node's first line");
    assert_eq!(line.trim(), "ready", "node {id} did not start");
}

/// Waits until every node in `ids` has applied the same log id; false after `limit`.
async fn converge(args: &Args, ids: &[NodeId], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let mut applied = Vec::new();
        for id in ids {
            if let Ok(s) = Client::new(addr(args, *id)).status().await {
                applied.push(s.last_applied);
            }
        }
        if applied.len() == ids.len() && applied.windows(2).all(|w| w[0] == w[1]) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether every node's commit log holds the same bytes up to its end.
async fn logs_identical(args: &Args, dir: &std::path::Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut ends = Vec::new();
    for id in 1..=args.nodes {
        match Client::new(addr(args, id)).status().await {
            Ok(s) => ends.push(s.log_end),
            Err(_) => return false,
        }
    }
    if ends.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    let end = ends[0];
    let logs: Vec<Vec<(u64, PathBuf)>> = (1..=args.nodes)
        .map(|id| {
            let root = dir.join(format!("node-{id}/store"));
            rocketstore::layout::data_files(&rocketstore::layout::commit_log_dir(&root))
                .expect("list a commit log")
        })
        .collect();
    for (i, (start, path)) in logs[0].iter().enumerate() {
        if *start >= end {
            break;
        }
        let len = std::fs::metadata(path).expect("a log file").len();
        let upto = len.min(end - start);
        let files: Vec<std::fs::File> = logs
            .iter()
            .map(|l| std::fs::File::open(&l[i].1).expect("open a log file"))
            .collect();
        let mut at = 0;
        while at < upto {
            let n = (upto - at).min(8 << 20) as usize;
            let mut first = vec![0u8; n];
            files[0].read_exact_at(&mut first, at).expect("read");
            for f in &files[1..] {
                let mut other = vec![0u8; n];
                f.read_exact_at(&mut other, at).expect("read");
                if other != first {
                    return false;
                }
            }
            at += n as u64;
        }
    }
    true
}

async fn drive(args: Args) {
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().expect("a temporary directory")),
    };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.as_ref().expect("made above").path().to_path_buf());
    let cluster = Arc::new(Cluster {
        args: args.clone(),
        children: Mutex::new(BTreeMap::new()),
        leader: AtomicU64::new(0),
    });
    let Some(limit) = args.deadline_secs.map(Duration::from_secs) else {
        return start_and_run(args, dir, cluster).await;
    };
    let run = start_and_run(args, dir, Arc::clone(&cluster));
    if tokio::time::timeout(limit, run).await.is_err() {
        // Tasks still running hold the cluster: its nodes are killed here, not by its drop.
        for id in cluster.alive() {
            cluster.kill(id);
        }
        eprintln!("gave up: the run did not finish within {limit:?}");
        drop(temp);
        std::process::exit(2);
    }
}

/// Starts every node, then runs.
async fn start_and_run(args: Args, dir: PathBuf, cluster: Arc<Cluster>) {
    for id in 1..=args.nodes {
        start_node(&cluster, &dir, id).await;
    }
    run(args, dir, cluster).await;
}

/// The driver's run, on a cluster whose nodes are up.
async fn run(args: Args, dir: PathBuf, cluster: Arc<Cluster>) {
    let members = (1..=args.nodes).map(|id| (id, addr(&args, id))).collect();
    Client::new(addr(&args, 1))
        .initialize(members)
        .await
        .expect("initialize the cluster");
    let first = cluster.find_leader().await;
    eprintln!("{} nodes up, leader {first}", args.nodes);

    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let acks = Arc::new(Mutex::new(Acks {
        acked: Vec::with_capacity(args.messages as usize),
        latencies_us: Vec::with_capacity(args.messages as usize),
    }));
    let killed_at: Arc<Mutex<Option<(Instant, NodeId)>>> = Arc::new(Mutex::new(None));
    let failover: Arc<Mutex<Option<Duration>>> = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        let (cluster, next, done, acks) = (
            Arc::clone(&cluster),
            Arc::clone(&next),
            Arc::clone(&done),
            Arc::clone(&acks),
        );
        let (killed_at, failover) = (Arc::clone(&killed_at), Arc::clone(&failover));
        let args = args.clone();
        producers.push(tokio::spawn(async move {
            let mut clients: BTreeMap<NodeId, Client> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.messages {
                    break;
                }
                let queue = (i % u64::from(args.queues)) as u32;
                let b = body(i, args.body);
                let t0 = Instant::now();
                let acked = loop {
                    let leader = cluster.leader.load(Ordering::Acquire);
                    let client = clients
                        .entry(leader)
                        .or_insert_with(|| Client::new(addr(&args, leader)));
                    match client
                        .put(TOPIC, queue, b.clone(), Duration::from_secs(5))
                        .await
                    {
                        Ok(Ok(a)) => break a,
                        Ok(Err(PutRefused::NotLeader(Some(l))))
                            if cluster.children.lock().contains_key(&l) =>
                        {
                            cluster.leader.store(l, Ordering::Release);
                        }
                        Ok(Err(PutRefused::Rejected(r))) => panic!("message refused: {r}"),
                        // Unreachable, failed or no leader known: the put may or may not
                        // have committed; retry through whoever leads now.
                        _ => {
                            clients.remove(&leader);
                            cluster.find_leader().await;
                        }
                    }
                };
                let took = t0.elapsed();
                let count = {
                    let mut a = acks.lock();
                    a.acked.push((i, queue, acked.queue_offset));
                    a.latencies_us.push(took.as_micros() as u64);
                    a.acked.len() as u64
                };
                if let Some((k, victim)) = *killed_at.lock() {
                    let mut f = failover.lock();
                    // The first put a new leader acknowledges ends the failover.
                    if f.is_none() && acked.log_id.leader_id.node_id != victim {
                        *f = Some(k.elapsed());
                    }
                }
                if Some(count) == args.kill_leader_at {
                    let victim = cluster.leader.load(Ordering::Acquire);
                    eprintln!("{count} acknowledged: killing the leader, node {victim}");
                    cluster.kill(victim);
                    *killed_at.lock() = Some((Instant::now(), victim));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let progress = {
        let done = Arc::clone(&done);
        let messages = args.messages;
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!("acknowledged {now}/{messages} ({}/s)", now - last);
                last = now;
            }
        })
    };
    for p in producers {
        p.await.expect("a producer");
    }
    let elapsed = started.elapsed();
    progress.abort();

    // Wait until every surviving node has applied the same log, then read back.
    let alive = cluster.alive();
    assert!(
        converge(&args, &alive, Duration::from_secs(60)).await,
        "the survivors did not converge"
    );
    let acks = std::mem::replace(
        &mut *acks.lock(),
        Acks {
            acked: Vec::new(),
            latencies_us: Vec::new(),
        },
    );
    let mut lost = 0u64;
    for id in &alive {
        let mut client = Client::new(addr(&args, *id));
        let mut stored: BTreeMap<(u32, u64), Bytes> = BTreeMap::new();
        for queue in 0..args.queues {
            let mut offset = 0;
            loop {
                let got = client
                    .read(TOPIC, queue, offset, 256)
                    .await
                    .expect("read back");
                if got.is_empty() {
                    break;
                }
                for (o, b) in got {
                    stored.insert((queue, o), b);
                    offset = o + 1;
                }
            }
        }
        let missing = acks
            .acked
            .iter()
            .filter(|(i, q, o)| stored.get(&(*q, *o)) != Some(&body(*i, args.body)))
            .count() as u64;
        eprintln!(
            "node {id}: {} messages stored, {missing} acknowledged ones missing",
            stored.len()
        );
        lost = lost.max(missing);
    }
    // Bytes written per acknowledged message on the survivors: Raft log and commit log.
    let (mut raft_bytes, mut log_bytes) = (0u64, 0u64);
    for id in &alive {
        if let Ok(s) = Client::new(addr(&args, *id)).status().await {
            raft_bytes = raft_bytes.max(s.raft_log_bytes);
            log_bytes = log_bytes.max(s.log_end);
        }
    }
    let per = |b: u64| b as f64 / acks.acked.len().max(1) as f64;
    let mut lat = acks.latencies_us.clone();
    lat.sort_unstable();
    let p99 = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    let failover_ms = failover.lock().map(|d| d.as_secs_f64() * 1e3);
    // The killed node restarts: it recovers from its process crash (the page cache
    // survives a SIGKILL; the chaos test models what a power cut loses), catches up, and
    // must end byte-identical.
    let victim = killed_at.lock().map(|(_, v)| v);
    let rejoin_ms = match victim {
        Some(v) => {
            let t = Instant::now();
            start_node(&cluster, &dir, v).await;
            let all: Vec<NodeId> = (1..=args.nodes).collect();
            let caught_up = converge(&args, &all, Duration::from_secs(120)).await;
            eprintln!("node {v} restarted: caught up {caught_up}");
            caught_up.then(|| t.elapsed().as_secs_f64() * 1e3)
        }
        None => None,
    };
    let identical = logs_identical(&args, &dir).await;
    eprintln!("commit logs identical on every node: {identical}");
    println!(
        "{{\"acked\":{},\"lost\":{lost},\"msgs_per_s\":{:.0},\"p99_ack_ms\":{:.2},\"failover_ms\":{},\"raft_log_bytes_per_msg\":{:.0},\"commit_log_bytes_per_msg\":{:.0},\"restarted_rejoin_ms\":{},\"replicas_identical\":{identical},\"nodes\":{},\"body\":{},\"producers\":{}}}",
        acks.acked.len(),
        acks.acked.len() as f64 / elapsed.as_secs_f64(),
        p99 as f64 / 1e3,
        failover_ms.map_or("null".to_string(), |f| format!("{f:.0}")),
        per(raft_bytes),
        per(log_bytes),
        rejoin_ms.map_or("null".to_string(), |r| format!("{r:.0}")),
        args.nodes,
        args.body,
        args.producers
    );
}
