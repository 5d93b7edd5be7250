//! Replicated put throughput (three nodes in one process over the in-memory router, so
//! three Raft logs and three stores share this machine's disk and cores) against one
//! store under sync flush, at the same concurrency and body size.
//!
//! `cargo bench -p rocketstore-raft --bench replicated`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rocketstore::{FlushMode, Message, MessageStore, StoreConfig};
use rocketstore_raft::ReplicatedStore;
use rocketstore_raft::network::Router;

const BODY: usize = 1024;
const FILE_SIZE: u64 = 1 << 30;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// `producers` tasks sharing `total` puts; returns the time they took.
async fn drive<F, Fut>(producers: usize, total: u64, put: F) -> Duration
where
    F: Fn(Message) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let body = Bytes::from(vec![b'x'; BODY]);
    let start = Instant::now();
    let per = total.div_ceil(producers as u64);
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let put = put.clone();
            let body = body.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    put(Message::new("BenchTopic", (p % 8) as u32, body.clone())).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a producer");
    }
    start.elapsed() * (total as u32) / (per * producers as u64) as u32
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Arc<ReplicatedStore>>,
    leader: Arc<ReplicatedStore>,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a directory");
    let router = Router::default();
    let config = Arc::new(
        openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        }
        .validate()
        .expect("a valid config"),
    );
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let store = StoreConfig::new(dir.path().join(format!("node-{id}/store")))
            .commit_log_file_size(FILE_SIZE)
            .flush_mode(FlushMode::async_default());
        let node = ReplicatedStore::open(
            id,
            store,
            &dir.path().join(format!("node-{id}/raft")),
            Arc::clone(&config),
            router.network(id),
        )
        .await
        .expect("open a node");
        router.add(id, node.raft().clone());
        nodes.push(Arc::new(node));
    }
    nodes[0]
        .initialize((1..=3).map(|id| (id, format!("node-{id}"))))
        .await
        .expect("initialize");
    let leader = nodes[0]
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let leader = Arc::clone(&nodes[leader as usize - 1]);
    Cluster {
        _dir: dir,
        nodes,
        leader,
    }
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("replicated_put_1KiB");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a directory");
    let single = Arc::new(
        MessageStore::open(
            StoreConfig::new(dir.path())
                .commit_log_file_size(FILE_SIZE)
                .flush_mode(FlushMode::sync()),
        )
        .expect("open the store"),
    );
    let cluster = rt.block_on(cluster());
    for producers in [1usize, 16, 64] {
        group.bench_with_input(
            BenchmarkId::new("single_node_sync", producers),
            &producers,
            |b, &p| {
                b.iter_custom(|n| {
                    let store = Arc::clone(&single);
                    rt.block_on(drive(p, n, move |m| {
                        let f = store.put_message_async(m);
                        async move {
                            f.await.expect("a durable put");
                        }
                    }))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("raft_3_nodes", producers),
            &producers,
            |b, &p| {
                b.iter_custom(|n| {
                    let leader = Arc::clone(&cluster.leader);
                    rt.block_on(drive(p, n, move |m| {
                        let leader = Arc::clone(&leader);
                        async move {
                            leader.put(m).await.expect("a replicated put");
                        }
                    }))
                })
            },
        );
    }
    group.finish();
    single.shutdown().expect("shutdown");
    let Cluster {
        _dir,
        nodes,
        leader,
        ..
    } = cluster;
    drop(leader);
    rt.block_on(async {
        for node in nodes {
            if let Ok(node) = Arc::try_unwrap(node) {
                let _ = node.shutdown().await;
            }
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
