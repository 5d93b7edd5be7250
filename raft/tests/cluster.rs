//! A three-node cluster in one process, over the in-memory router: election, puts,
//! failover, catching up by log and by snapshot, a divergent tail, and a seeded run of
//! partitions and restarts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rocketstore::Message;
use rocketstore_raft::Error;

fn body(i: usize) -> Vec<u8> {
    format!("message-{i:06}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_is_elected_and_every_replica_stores_the_same_bytes() {
    let cluster = Cluster::start(3, raft_config(None)).await;
    let mut acked = Vec::new();
    for i in 0..120 {
        let put = cluster.put(&body(i), (i % QUEUES as usize) as u32).await;
        acked.push((i, put));
    }
    // Queue offsets count up per queue, in put order.
    for (i, put) in &acked {
        assert_eq!(put.queue_offset, (*i / QUEUES as usize) as u64);
    }
    cluster.converge().await;
    let content = assert_replicas_identical(&cluster);
    assert_eq!(content.len(), acked.len());
    for (i, put) in &acked {
        let (b, t) = &content[&((*i % QUEUES as usize) as u32, put.queue_offset)];
        assert_eq!(&b[..], &body(*i)[..]);
        assert_eq!(*t, put.store_timestamp);
    }
    // A follower refuses puts and names the leader.
    let leader = cluster.leader().await;
    let follower = cluster.members.iter().find(|id| **id != leader).unwrap();
    let refused = cluster.nodes[follower]
        .put(Message::new(TOPIC, 0u32, Bytes::from_static(b"x")))
        .await;
    assert!(
        matches!(refused, Err(Error::NotLeader { leader: Some(l) }) if l == leader),
        "{refused:?}"
    );
    // A message every replica refuses is refused to the producer before it is proposed:
    // a topic no store takes, or properties that leave no room for the replication
    // layer's own. Nothing reaches the Raft log.
    let log_index = || {
        let raft = cluster.nodes[&leader].raft().clone();
        move || raft.metrics().borrow().last_log_index
    };
    let before = log_index()();
    let bad = cluster.nodes[&leader]
        .put(Message::new("bad topic!", 0u32, Bytes::from_static(b"x")))
        .await;
    assert!(matches!(bad, Err(Error::Rejected(_))), "{bad:?}");
    let full = Message::new(TOPIC, 0u32, Bytes::from_static(b"x")).with_property(
        "P",
        "v".repeat(rocketstore::format::MAX_PROPERTIES_LEN - 10),
    );
    rocketstore::format::encode(&full, &"127.0.0.1:1".parse().unwrap(), 1 << 20)
        .expect("a store takes it as it is");
    let full = cluster.nodes[&leader].put(full).await;
    assert!(matches!(full, Err(Error::Rejected(_))), "{full:?}");
    // A record larger than a commit-log file (64 KiB here), its body within the limit.
    let wide = Message::new(TOPIC, 0u32, vec![b'w'; 100 << 10]);
    let wide = cluster.nodes[&leader].put(wide).await;
    assert!(matches!(wide, Err(Error::Rejected(_))), "{wide:?}");
    assert_eq!(log_index()(), before, "a refused put was proposed");
    // One that reaches the log all the same (proposed by other means, or before the check
    // existed) is refused by every replica's apply alike, and the replicas go on.
    let raft = cluster.nodes[&leader].raft().clone();
    let wide = Message::new(TOPIC, 1u32 << 31, Bytes::from_static(b"x"));
    let batch = rocketstore_raft::PutBatch {
        puts: vec![rocketstore_raft::PutRequest::new(wide, 0)],
    };
    let written = raft.client_write(batch).await.expect("the entry commits");
    assert!(
        matches!(
            written.data.puts[0],
            rocketstore_raft::PutResponse::Rejected(_)
        ),
        "{:?}",
        written.data.puts
    );
    // A producer cannot pass off a position in the Raft log as its own property.
    let forged = Message::new(TOPIC, 0u32, Bytes::from_static(b"x"))
        .with_property(rocketstore_raft::PROPERTY_RAFT_LOG_ID, "999.1.999999.0.1");
    let forged = cluster.nodes[&leader].put(forged).await;
    assert!(matches!(forged, Err(Error::Rejected(_))), "{forged:?}");
    cluster.converge().await;
    assert_eq!(assert_replicas_identical(&cluster).len(), acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_stops_a_new_one_serves_every_acknowledged_message() {
    let mut cluster = Cluster::start(3, raft_config(None)).await;
    let mut acked = BTreeMap::new();
    for i in 0..100 {
        let put = cluster.put(&body(i), 0).await;
        acked.insert(put.queue_offset, body(i));
    }
    let old = cluster.leader().await;
    cluster.stop(old).await;
    let new = cluster.leader().await;
    assert_ne!(new, old);
    cluster.converge().await;
    let content = content(cluster.nodes[&new].store());
    for (offset, b) in &acked {
        assert_eq!(&content[&(0, *offset)].0[..], &b[..], "offset {offset}");
    }
    // The new leader continues the queue where the old one left it.
    let next = cluster.put(b"after failover", 0).await;
    assert_eq!(next.queue_offset, acked.len() as u64);
    // The old leader comes back as a follower and catches up.
    cluster.open(old).await;
    cluster.converge().await;
    let all = assert_replicas_identical(&cluster);
    assert_eq!(all.len(), acked.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_follower_catches_up_by_log() {
    let cluster = Cluster::start(3, raft_config(None)).await;
    cluster.put(b"before", 1).await;
    let leader = cluster.leader().await;
    let follower = *cluster.members.iter().find(|id| **id != leader).unwrap();
    cluster.router.isolate(follower);
    for i in 0..150 {
        cluster.put(&body(i), (i % 2) as u32).await;
    }
    let behind = cluster.nodes[&follower]
        .raft()
        .metrics()
        .borrow()
        .last_applied;
    let ahead = cluster.nodes[&leader]
        .raft()
        .metrics()
        .borrow()
        .last_applied;
    assert!(behind < ahead, "the isolated follower fell behind");
    cluster.router.heal(follower);
    cluster.converge().await;
    assert_eq!(assert_replicas_identical(&cluster).len(), 151);
    assert_eq!(
        cluster.nodes[&follower].raft().metrics().borrow().snapshot,
        None,
        "caught up by log alone"
    );
}

/// Three nodes that snapshot every 40 entries and keep no log behind it, with 20 puts
/// replicated everywhere; returns the cluster, its leader and a follower. Small chunks
/// make a leader resend through the lazily read stream.
async fn snapshotting_cluster() -> (Cluster, u64, u64) {
    let mut config = (*raft_config(Some(40))).clone();
    config.snapshot_max_chunk_size = 16 << 10;
    let cluster = Cluster::start(3, std::sync::Arc::new(config)).await;
    for i in 0..20 {
        cluster.put(&body(i), 0).await;
    }
    let leader = cluster.leader().await;
    let follower = *cluster.members.iter().find(|id| **id != leader).unwrap();
    cluster.converge().await;
    (cluster, leader, follower)
}

/// Puts 200 messages of 3 KB (enough to roll the 64 KiB log files a few times, with blank
/// ends), and waits until the leader has purged its log past what an isolated follower
/// holds.
async fn put_until_the_leader_purges(cluster: &Cluster, leader: u64) {
    let big = vec![b'x'; 3000];
    for i in 0..200 {
        let mut b = big.clone();
        b.extend_from_slice(&body(i));
        cluster.put(&b, (i % QUEUES as usize) as u32).await;
    }
    cluster.nodes[&leader]
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > 30),
            "the leader purges its log",
        )
        .await
        .expect("the leader purges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_purged_log_catches_up_by_snapshot() {
    // A follower that misses more than the leader keeps must take the snapshot (the log
    // files themselves) to catch up.
    let (mut cluster, leader, follower) = snapshotting_cluster().await;
    cluster.router.isolate(follower);
    put_until_the_leader_purges(&cluster, leader).await;
    cluster.router.heal(follower);
    cluster.converge().await;
    // The leader purged what the follower lacked, so only a snapshot could bring it here.
    assert_eq!(assert_replicas_identical(&cluster).len(), 220);
    // It goes on by log afterwards, and reopens (its Raft log was purged past its end).
    cluster.put(b"after the snapshot", 2).await;
    cluster.converge().await;
    cluster.stop(follower).await;
    cluster.open(follower).await;
    cluster.put(b"after a restart", 2).await;
    cluster.converge().await;
    assert_eq!(assert_replicas_identical(&cluster).len(), 222);
}

/// Holds the first commit-log sync after it is armed until released, then fails it.
#[derive(Default)]
struct FailOneSync {
    armed: std::sync::atomic::AtomicBool,
    entered: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    release: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl rocketstore::IoHook for FailOneSync {
    fn before_sync(&self, path: &std::path::Path) -> std::io::Result<()> {
        let commit_log = path.components().any(|c| c.as_os_str() == "commitlog");
        if !commit_log || !self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(entered) = self.entered.lock().unwrap().take() {
            let _ = entered.send(());
        }
        if let Some(release) = self.release.lock().unwrap().take() {
            let _ = release.recv();
        }
        Err(std::io::Error::other("injected: the disk failed a sync"))
    }
}

/// A follower far behind takes a snapshot whose install stalls on a sync and then fails;
/// the node is then dropped the hard way. openraft queues the install and the purge of the
/// Raft log up to it together: the purge goes ahead once the install is recorded as begun
/// (its stream synced), and no sooner. Returns the cluster, the follower, its state
/// directory and the Raft log index its log was purged to meanwhile.
async fn fail_an_install() -> (Cluster, u64, std::path::PathBuf, Option<u64>) {
    let (mut cluster, leader, follower) = snapshotting_cluster().await;
    cluster.stop(follower).await;
    let hook = std::sync::Arc::new(FailOneSync::default());
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *hook.entered.lock().unwrap() = Some(entered_tx);
    *hook.release.lock().unwrap() = Some(release_rx);
    cluster
        .open_with(
            follower,
            Some(hook.clone() as std::sync::Arc<dyn rocketstore::IoHook>),
        )
        .await;
    cluster.router.isolate(follower);
    put_until_the_leader_purges(&cluster, leader).await;
    let applied_before = cluster.nodes[&follower]
        .raft()
        .metrics()
        .borrow()
        .last_applied
        .map(|l| l.index);
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    cluster.router.heal(follower);
    // The install's appends reach the stalled sync.
    tokio::task::spawn_blocking(move || entered.recv_timeout(WAIT))
        .await
        .unwrap()
        .expect("the install syncs the store");
    let state = cluster
        .dir
        .path()
        .join(format!("node-{follower}/raft/state"));
    assert!(state.join("installing").exists());
    // Recorded as begun: the follower's log is purged up to the snapshot meanwhile.
    let purged = cluster.nodes[&follower]
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.map(|p| p.index) > applied_before,
            "the follower purges its log while the install is stalled",
        )
        .await
        .expect("the purge goes ahead")
        .purged
        .map(|p| p.index);
    release.send(()).unwrap();
    // The install fails (the store is poisoned), which stops the node's Raft; then the node
    // is dropped the hard way.
    cluster.nodes[&follower]
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.running_state.is_err(),
            "the failed install stops raft",
        )
        .await
        .expect("raft stops");
    cluster.router.remove(follower);
    let node = cluster.nodes.remove(&follower).unwrap();
    let _ = node.raft().shutdown().await;
    drop(node);
    (cluster, follower, state, purged)
}

/// The restart finishes the failed install from the stream it kept: rolled back, the node
/// could never apply its next entry (the entries the snapshot stands for are gone from
/// its log, and its store does not hold them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_that_fails_is_finished_at_the_restart() {
    let (mut cluster, follower, state, purged) = fail_an_install().await;
    // The reopen finishes the install from the stream it kept.
    cluster.open(follower).await;
    assert!(!state.join("installing").exists());
    let record = state_file(&state.join("snapshot")).expect("the install is recorded");
    let installed = record["meta"]["last_log_id"]["index"].as_u64();
    // The snapshot the purge waited for, or a later one.
    assert!(installed >= purged, "{record}");
    cluster.converge().await;
    assert_eq!(assert_replicas_identical(&cluster).len(), 220);
    cluster.put(b"after the restart", 1).await;
    cluster.converge().await;
    assert_eq!(assert_replicas_identical(&cluster).len(), 221);
}

/// When the failed install cannot be finished (its stream gone) and the log is purged up
/// to it, the node refuses to open, keeping the install's record, rather than roll back
/// to a state it could never go on from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinishable_install_past_the_purge_refuses_the_open() {
    let (mut cluster, follower, state, _) = fail_an_install().await;
    let installing = state_file(&state.join("installing")).expect("the install's record");
    std::fs::remove_file(state.join(installing["stream"].as_str().unwrap())).unwrap();
    let err = cluster.reopen_with(follower, None).await.unwrap_err();
    assert!(err.to_string().contains("cannot be rolled back"), "{err}");
    assert!(state.join("installing").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_truncates_its_uncommitted_divergent_tail() {
    let mut cluster = Cluster::start(3, raft_config(None)).await;
    for i in 0..10 {
        cluster.put(&body(i), 0).await;
    }
    cluster.converge().await;
    let old = cluster.leader().await;
    let old_term = cluster.nodes[&old].raft().metrics().borrow().current_term;
    // Cut the leader off; it still takes puts into its own log, which can never commit.
    cluster.router.isolate(old);
    let stranded: Vec<_> = (0..5)
        .map(|i| {
            let raft = cluster.nodes[&old].raft().clone();
            tokio::spawn(async move {
                let req = rocketstore_raft::PutRequest::new(
                    Message::new(TOPIC, 0u32, Bytes::from(format!("stranded-{i}"))),
                    0,
                );
                let batch = rocketstore_raft::PutBatch { puts: vec![req] };
                raft.client_write(batch).await
            })
        })
        .collect();
    let old_node = cluster.nodes[&old].raft().clone();
    old_node
        .wait(Some(WAIT))
        .metrics(
            |m| {
                m.last_log_index
                    .is_some_and(|i| i >= m.last_applied.map_or(0, |a| a.index) + 5)
            },
            "the stranded entries reach the old leader's log",
        )
        .await
        .expect("stranded entries appended");
    // The others elect a leader and commit other entries at those indexes.
    let others = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != old)
        .collect::<Vec<_>>();
    let old_store = cluster.nodes.remove(&old).unwrap();
    let new = cluster.leader().await;
    assert_ne!(new, old);
    for i in 0..8 {
        cluster.put(format!("committed-{i}").as_bytes(), 0).await;
    }
    cluster.nodes.insert(old, old_store);
    cluster.router.heal(old);
    cluster.converge().await;
    // Not one stranded put was acknowledged, and none was stored anywhere.
    for handle in stranded {
        let r = handle.await.unwrap();
        assert!(r.is_err(), "a stranded put was acknowledged: {r:?}");
    }
    // Deposed: it took the newer term (whatever it has become since, on a busy machine).
    assert!(cluster.nodes[&old].raft().metrics().borrow().current_term > old_term);
    let content = assert_replicas_identical(&cluster);
    assert_eq!(content.len(), 18);
    assert!(content.values().all(|(b, _)| !b.starts_with(b"stranded")));
    assert_eq!(others.len(), 2);
    // The old leader's own Raft log no longer holds its stranded entries: it truncated
    // them and took the new leader's.
    let mut log = cluster.nodes[&old].log().clone();
    let entries = openraft::RaftLogReader::try_get_log_entries(&mut log, ..)
        .await
        .expect("read the raft log");
    assert!(!entries.is_empty());
    for e in entries {
        if let openraft::EntryPayload::Normal(batch) = e.payload {
            assert!(
                batch.puts.iter().all(|p| !p.body.starts_with(b"stranded")),
                "entry {} still stranded",
                e.log_id
            );
        }
    }
}

/// Random partitions, restarts and puts, from a seed; then everything heals and every
/// replica must hold every acknowledged message at its acknowledged queue offset, and
/// the same bytes as every other.
async fn chaos(seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster::start(3, raft_config_fast_elections(Some(60))).await;
    let mut acked: BTreeMap<(u32, u64), Vec<u8>> = BTreeMap::new();
    let mut offsets: Vec<u64> = Vec::new();
    let mut n = 0usize;
    for _ in 0..steps {
        match rng.below(10) {
            0 => {
                let id = 1 + rng.below(3);
                cluster.router.isolate(id);
            }
            1 => cluster.router.heal_all(),
            2 => {
                let id = 1 + rng.below(3);
                // Keep a majority running, so that puts can go on.
                if cluster.nodes.len() == 3 {
                    cluster.stop(id).await;
                } else if !cluster.nodes.contains_key(&id) {
                    // Half the time as after a crash under async flush: the store lost
                    // its tail, back to some record past its last snapshot.
                    if rng.below(2) == 0 && !offsets.is_empty() {
                        let cut = offsets[rng.below(offsets.len() as u64) as usize];
                        lose_store_tail(&cluster, id, cut);
                    }
                    cluster.open(id).await;
                }
            }
            _ => {
                let queue = rng.below(u64::from(QUEUES)) as u32;
                let b = format!("seed-{seed}-put-{n}").into_bytes();
                n += 1;
                // With a minority cut off the put may not commit in time: it is then
                // not acknowledged, and may or may not be stored.
                // With a node stopped and another cut off there is no majority: no put.
                let Some(leader) = cluster.try_leader(Duration::from_secs(2)).await else {
                    continue;
                };
                let msg = Message::new(TOPIC, queue, Bytes::from(b.clone()));
                let put = tokio::time::timeout(
                    Duration::from_millis(500),
                    cluster.nodes[&leader].put(msg),
                )
                .await;
                if let Ok(Ok(put)) = put {
                    offsets.push(put.physical_offset);
                    let previous = acked.insert((queue, put.queue_offset), b);
                    assert!(
                        previous.is_none(),
                        "seed {seed}: an offset acknowledged twice"
                    );
                }
            }
        }
    }
    cluster.router.heal_all();
    for id in 1..=3 {
        if !cluster.nodes.contains_key(&id) {
            cluster.open(id).await;
        }
    }
    // One more put commits everything before it on the current leader's term.
    cluster.put(b"final", 0).await;
    cluster.converge().await;
    let content = assert_replicas_identical(&cluster);
    for (key, b) in &acked {
        let stored = content.get(key).map(|(b, _)| &b[..]);
        assert_eq!(
            stored,
            Some(&b[..]),
            "seed {seed}: acknowledged {key:?} lost or changed"
        );
    }
    assert!(!acked.is_empty(), "seed {seed}: nothing was acknowledged");
}

/// Cuts the stopped node's store back to `cut` (a record start on every replica), if that
/// lies past its last snapshot and within its log: what a crash under async flush can do.
fn lose_store_tail(cluster: &Cluster, id: u64, cut: u64) {
    let state = cluster
        .dir
        .path()
        .join(format!("node-{id}/raft/state/snapshot"));
    let snapshot_end = state_file(&state).map_or(0, |v| v["end"].as_u64().expect("an end"));
    if cut < snapshot_end {
        return;
    }
    let config =
        rocketstore::StoreConfig::new(cluster.store_root(id)).commit_log_file_size(64 << 10);
    // Past this store's end (it missed those puts) the cut is refused: nothing to lose.
    if rocketstore::MessageStore::truncate_log(&config, cut).is_ok() {
        eprintln!("CUT node {id} at {cut}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_partitions_and_restarts_lose_nothing_acknowledged() {
    let seeds: u64 = std::env::var("RAFT_CHAOS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for seed in 1..=seeds {
        chaos(seed, 60).await;
    }
}

/// The store of a replica lost its tail in a crash (async flush), part-way through a
/// batch entry and across several entries: on restart it applies again, from the Raft
/// log, exactly the puts it lost, and its files come out byte-identical to the others'.
/// Puts ten messages to queue 3 in one Raft entry through `leader`; returns where each
/// was stored.
async fn put_ten_in_one_entry(cluster: &Cluster, leader: u64) -> Vec<u64> {
    let puts = (0..10)
        .map(|i| {
            rocketstore_raft::PutRequest::new(
                Message::new(TOPIC, 3u32, Bytes::from(format!("batched-{i}"))),
                1_700_000_000_000 + i,
            )
        })
        .collect();
    let batch = cluster.nodes[&leader]
        .raft()
        .client_write(rocketstore_raft::PutBatch { puts })
        .await
        .expect("the batch commits");
    batch
        .data
        .puts
        .iter()
        .map(|p| match p {
            rocketstore_raft::PutResponse::Stored {
                physical_offset, ..
            } => *physical_offset,
            other => panic!("not stored: {other:?}"),
        })
        .collect()
}

/// Cuts the stopped node `id`'s store at `cut`, as a lost tail.
fn cut_store(cluster: &Cluster, id: u64, cut: u64) {
    let config =
        rocketstore::StoreConfig::new(cluster.store_root(id)).commit_log_file_size(64 << 10);
    rocketstore::MessageStore::truncate_log(&config, cut).expect("cut the store's tail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_store_lost_its_tail_applies_the_lost_puts_again() {
    let mut cluster = Cluster::start(3, raft_config(None)).await;
    for i in 0..20 {
        cluster.put(&body(i), (i % 2) as u32).await;
    }
    let leader = cluster.leader().await;
    let offsets = put_ten_in_one_entry(&cluster, leader).await;
    for i in 20..30 {
        cluster.put(&body(i), (i % 2) as u32).await;
    }
    cluster.converge().await;
    let whole = assert_replicas_identical(&cluster);
    let victim = *cluster.members.iter().find(|id| **id != leader).unwrap();
    // Cut inside the batch (after its fourth put), then reopen: the store keeps three of
    // the ten and nothing after.
    for cut in [offsets[3], offsets[0]] {
        cluster.stop(victim).await;
        cut_store(&cluster, victim, cut);
        cluster.open(victim).await;
        cluster.converge().await;
        assert_eq!(assert_replicas_identical(&cluster), whole, "cut at {cut}");
    }
}

/// A replica recovered with an entry only partly stored (its tail lost) takes a snapshot
/// before it applies that entry again: the snapshot must end before the entry's stored
/// puts, or a restart from it (or a replica installing it) applies them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_while_an_entry_is_partly_stored_leaves_its_puts_out() {
    let mut cluster = Cluster::start(3, raft_config(None)).await;
    for i in 0..10 {
        cluster.put(&body(i), 0).await;
    }
    let leader = cluster.leader().await;
    let cut = put_ten_in_one_entry(&cluster, leader).await[3];
    cluster.converge().await;
    let whole = assert_replicas_identical(&cluster);
    let victim = *cluster.members.iter().find(|id| **id != leader).unwrap();
    cluster.stop(victim).await;
    cut_store(&cluster, victim, cut);
    // Reopened cut off from the others, so the entry is not applied again; a snapshot now.
    snapshot_cut_off(&mut cluster, victim).await;
    // Restart from the snapshot alone (the applied hint gone).
    cluster.stop(victim).await;
    let state = cluster.dir.path().join(format!("node-{victim}/raft/state"));
    std::fs::remove_file(state.join("applied")).unwrap();
    cluster.router.heal(victim);
    cluster.open(victim).await;
    cluster.converge().await;
    assert_eq!(assert_replicas_identical(&cluster), whole);
}

/// Reopens the stopped node `victim` cut off from the others (so that nothing is applied
/// to it again) and has it take a snapshot of what it holds.
async fn snapshot_cut_off(cluster: &mut Cluster, victim: u64) {
    cluster.router.isolate(victim);
    cluster.open(victim).await;
    let raft = cluster.nodes[&victim].raft().clone();
    raft.trigger().snapshot().await.expect("trigger a snapshot");
    raft.wait(Some(WAIT))
        .metrics(|m| m.snapshot.is_some(), "the victim takes a snapshot")
        .await
        .expect("a snapshot");
}

/// What [`an_entry_ending_in_a_refused_put`] leaves.
struct RefusedTail {
    cluster: Cluster,
    /// A follower whose store lost the second entry's second put.
    victim: u64,
    /// Every message, before the loss.
    whole: Content,
    /// The Raft index of the entry whose last put was refused.
    first_index: u64,
    /// Where the second entry's first put is stored.
    second_start: u64,
}

/// Commits an entry whose last put is refused, then an entry of two puts, and stops a
/// follower with the second entry's second put cut from its store.
async fn an_entry_ending_in_a_refused_put() -> RefusedTail {
    let mut cluster = Cluster::start(3, raft_config(None)).await;
    for i in 0..5 {
        cluster.put(&body(i), 0).await;
    }
    let leader = cluster.leader().await;
    let write = |puts: Vec<rocketstore_raft::PutRequest>| {
        let raft = cluster.nodes[&leader].raft().clone();
        async move {
            let r = raft
                .client_write(rocketstore_raft::PutBatch { puts })
                .await
                .expect("the batch commits");
            (r.log_id.index, r.data.puts)
        }
    };
    let put = |topic: &str, i: i64| {
        rocketstore_raft::PutRequest::new(
            Message::new(topic, 1u32, Bytes::from(format!("entry-{i}"))),
            1_700_000_000_000 + i,
        )
    };
    let stored = |r: &rocketstore_raft::PutResponse| match r {
        rocketstore_raft::PutResponse::Stored {
            physical_offset, ..
        } => *physical_offset,
        other => panic!("not stored: {other:?}"),
    };
    // Its last put has a topic no store accepts.
    let (first_index, first) =
        write(vec![put(TOPIC, 0), put(TOPIC, 1), put("bad topic!", 2)]).await;
    assert!(
        matches!(first[2], rocketstore_raft::PutResponse::Rejected(_)),
        "{first:?}"
    );
    let (_, second) = write(vec![put(TOPIC, 3), put(TOPIC, 4)]).await;
    cluster.converge().await;
    let whole = assert_replicas_identical(&cluster);
    let victim = *cluster.members.iter().find(|id| **id != leader).unwrap();
    // The victim keeps the second entry's first put only.
    cluster.stop(victim).await;
    let config =
        rocketstore::StoreConfig::new(cluster.store_root(victim)).commit_log_file_size(64 << 10);
    rocketstore::MessageStore::truncate_log(&config, stored(&second[1]))
        .expect("cut the store's tail");
    RefusedTail {
        cluster,
        victim,
        whole,
        first_index,
        second_start: stored(&second[0]),
    }
}

/// An entry whose last put is refused leaves no record saying it ended; a later entry
/// whose first put is stored says it. A replica that lost the later entry's tail applies
/// neither entry's stored puts twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_ending_in_a_refused_put_is_not_applied_twice_after_a_lost_tail() {
    let RefusedTail {
        mut cluster,
        victim,
        whole,
        ..
    } = an_entry_ending_in_a_refused_put().await;
    cluster.open(victim).await;
    cluster.converge().await;
    assert_eq!(assert_replicas_identical(&cluster), whole);
}

/// A snapshot taken there claims the entry whose last put was refused, since it holds
/// that entry's puts, and ends where the partly stored entry begins: a replica that
/// installed it would otherwise store the first entry's puts again (it claimed only the
/// entry before them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_next_to_a_partly_stored_entry_claims_what_it_holds() {
    let RefusedTail {
        mut cluster,
        victim,
        first_index,
        second_start,
        ..
    } = an_entry_ending_in_a_refused_put().await;
    // Reopened cut off from the others (the entry is not applied again), the applied hint
    // gone so that the log's tail is walked; a snapshot now.
    let state = cluster.dir.path().join(format!("node-{victim}/raft/state"));
    std::fs::remove_file(state.join("applied")).unwrap();
    snapshot_cut_off(&mut cluster, victim).await;
    let record = state_file(&state.join("snapshot")).expect("the snapshot is recorded");
    let claimed = record["meta"]["last_log_id"]["index"].as_u64();
    assert_eq!(claimed, Some(first_index), "{record}");
    assert_eq!(record["end"].as_u64(), Some(second_start), "{record}");
}

/// A fourth node joins from an empty store after the leader purged its log: it is filled
/// from a snapshot (the log from its first byte), becomes a voter, and ends identical.
/// Reads behind a read barrier are linearizable on the leader; a follower refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_from_an_empty_store_and_reads_behind_a_barrier() {
    let mut config = (*raft_config(Some(40))).clone();
    config.snapshot_max_chunk_size = 32 << 10;
    let mut cluster = Cluster::start(3, std::sync::Arc::new(config)).await;
    let big = vec![b'y'; 2000];
    for i in 0..150 {
        let mut b = big.clone();
        b.extend_from_slice(&body(i));
        cluster.put(&b, (i % QUEUES as usize) as u32).await;
    }
    let leader = cluster.leader().await;
    cluster.nodes[&leader]
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some(), "the leader purges its log")
        .await
        .expect("the leader purges");
    cluster.open(4).await;
    cluster.members.push(4);
    cluster.nodes[&leader]
        .add_voter(4, "node-4")
        .await
        .expect("node 4 joins");
    let voters: Vec<u64> = cluster.nodes[&leader]
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, [1, 2, 3, 4]);
    let put = cluster.put(b"with four voters", 1).await;
    cluster.converge().await;
    let content = assert_replicas_identical(&cluster);
    assert_eq!(content.len(), 151);
    assert_eq!(&content[&(1, put.queue_offset)].0[..], b"with four voters");
    // Linearizable reads: through the leader's barrier; a follower names the leader.
    // A put, then the barrier: the queue read that follows sees it, with no other wait.
    let leader = cluster.leader().await;
    let put = cluster.put(b"read after the barrier", 3).await;
    cluster.nodes[&leader]
        .read_barrier()
        .await
        .expect("the leader's barrier");
    let got = cluster.nodes[&leader]
        .store()
        .get_message(TOPIC, 3, put.queue_offset, 1)
        .unwrap();
    assert_eq!(&got.messages[0].body[..], b"read after the barrier");
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let refused = cluster.nodes[&follower].read_barrier().await;
    assert!(
        matches!(refused, Err(Error::NotLeader { .. })),
        "{refused:?}"
    );
    // And it leaves again.
    cluster.nodes[&leader]
        .remove_voter(4)
        .await
        .expect("node 4 leaves");
    cluster.put(b"with three again", 2).await;
}

/// A second open of a running node is refused before it reads anything: the Raft log's
/// open cuts what looks like a torn tail, and an append in flight on the running node
/// looks like one (it would then finish past a cut, and its acknowledged entries be lost
/// at the next restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_a_running_node_is_refused_and_changes_nothing() {
    use std::io::Write;
    let mut cluster = Cluster::start(1, raft_config(None)).await;
    for i in 0..5 {
        cluster.put(&body(i), 0).await;
    }
    let segments = cluster.dir.path().join("node-1/raft/log/log");
    let last = std::fs::read_dir(&segments)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .expect("a segment");
    // The first bytes of an append in flight: a frame header whose length runs past the
    // end of the file.
    let len: u32 = 4096;
    let mut header = len.to_be_bytes().to_vec();
    header.extend_from_slice(&(!len).to_be_bytes());
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&header)
        .unwrap();
    let size = std::fs::metadata(&last).unwrap().len();
    for running in [
        "open",
        "dropped without a shutdown, its Raft held by the router",
    ] {
        if running != "open" {
            // The lock goes with the last user of the node's Raft log, not its handle.
            drop(cluster.nodes.remove(&1));
        }
        let err = cluster.try_open_with(1, None).await.unwrap_err();
        assert!(
            matches!(err, Error::Store(rocketstore::Error::StoreLocked { .. })),
            "node {running}: {err}"
        );
        let now = std::fs::metadata(&last).unwrap().len();
        assert_eq!(now, size, "node {running}: nothing was cut");
    }
}

/// Rewrites, in node `id`'s stopped store, the entry index named by the `nth` record from
/// the end (0: the last) to `index` (the same number of digits): the RAFT_LOG_ID property
/// is not under the record's CRC, so nothing in the store notices.
fn forge_applied_index(cluster: &Cluster, id: u64, nth: usize, index: &str) {
    let root = cluster.store_root(id);
    let needle = format!("{}\u{1}", rocketstore_raft::PROPERTY_RAFT_LOG_ID).into_bytes();
    let mut found = Vec::new();
    for (start, bytes) in commit_log_files(&root) {
        let mut from = 0;
        while let Some(i) = bytes[from..]
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
        {
            let value_at = from + i + needle.len();
            let len = bytes[value_at..].iter().position(|b| *b == 2).unwrap();
            let value = std::str::from_utf8(&bytes[value_at..value_at + len]).unwrap();
            found.push((start, value_at, value.to_owned()));
            from = value_at + len;
        }
    }
    let (start, value_at, value) = found[found.len() - 1 - nth].clone();
    // term.node.index.at.of: the third part is the index.
    let parts: Vec<&str> = value.split('.').collect();
    assert_eq!(parts[2].len(), index.len(), "{value}");
    let skip: usize = parts[..2].iter().map(|p| p.len() + 1).sum();
    let path = rocketstore::layout::commit_log_file(&root, start);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[value_at + skip..value_at + skip + index.len()].copy_from_slice(index.as_bytes());
    std::fs::write(&path, bytes).unwrap();
}

/// A damaged entry index in a stored record (not under its CRC) must not become the
/// replica's last applied entry: past the Raft log's end it would purge the whole log at
/// the start, and make the node's log look newer than every other's; out of order it
/// would skip entries. The open is refused instead, and the node opens again once the
/// record is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_index_in_a_stored_record_refuses_the_open() {
    let mut cluster = Cluster::start(3, raft_config(None)).await;
    for i in 0..30 {
        cluster.put(&body(i), 0).await;
    }
    cluster.converge().await;
    let leader = cluster.leader().await;
    let victim = *cluster.members.iter().find(|id| **id != leader).unwrap();
    let last = cluster.nodes[&victim].log().last_log_id().unwrap().index;
    assert!((10..99).contains(&last), "{last}");
    cluster.stop(victim).await;
    let state = cluster.dir.path().join(format!("node-{victim}/raft/state"));
    std::fs::remove_file(state.join("applied")).unwrap();
    let pristine = commit_log_files(&cluster.store_root(victim));
    // The last record says it came from an entry past the log's end; then a record in
    // the middle says it came from the last record's entry (in the log, but out of order).
    for (nth, index) in [(0, "99".to_owned()), (10, last.to_string())] {
        forge_applied_index(&cluster, victim, nth, &index);
        match cluster.reopen_with(victim, None).await {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}"),
            Err(e) => panic!("record {nth}: expected InvalidData, got {e}"),
            Ok(()) => panic!(
                "record {nth}: opened, applied up to {:?}, log ends at {:?}",
                cluster.nodes[&victim].last_applied(),
                cluster.nodes[&victim].log().last_log_id()
            ),
        }
        for (start, bytes) in &pristine {
            let path = rocketstore::layout::commit_log_file(&cluster.store_root(victim), *start);
            std::fs::write(path, bytes).unwrap();
        }
    }
    assert_eq!(
        cluster.nodes.len(),
        2,
        "the refused opens left the node closed"
    );
    cluster.open(victim).await;
    cluster.converge().await;
    assert_replicas_identical(&cluster);
}

/// A leader whose store refuses puts for lack of space refuses them up front, with the
/// store's typed error, instead of committing entries it cannot apply (they would pile
/// up in memory behind the stalled apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_is_full_refuses_puts_before_proposing_them() {
    let cluster = Cluster::start_tweaked(3, raft_config(None), |c| c.disk_full_ratio(1e-9)).await;
    let leader = cluster.leader().await;
    let node = &cluster.nodes[&leader];
    assert!(node.store().is_disk_full());
    let before = node.log().last_log_id();
    let msg = Message::new(TOPIC, 0u32, Bytes::from(body(0)));
    let put = tokio::time::timeout(WAIT, node.put(msg))
        .await
        .expect("refused at once, not proposed");
    assert!(
        matches!(put, Err(Error::Store(rocketstore::Error::DiskFull { .. }))),
        "{put:?}"
    );
    assert_eq!(node.log().last_log_id(), before, "nothing was proposed");
}

/// A put the store would take but no Raft entry may carry (larger than a TCP frame
/// allows) is refused, not proposed: no follower could receive it, and every later put
/// would wait behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_larger_than_an_entry_may_carry_is_refused() {
    let cluster = Cluster::start_tweaked(3, raft_config(None), |c| {
        c.commit_log_file_size(128 << 20).max_message_size(96 << 20)
    })
    .await;
    let leader = cluster.leader().await;
    let node = &cluster.nodes[&leader];
    let before = node.log().last_log_id();
    let huge = Bytes::from(vec![7u8; rocketstore_raft::MAX_PUT_BYTES + 1]);
    let put = tokio::time::timeout(WAIT, node.put(Message::new(TOPIC, 0u32, huge)))
        .await
        .expect("refused at once, not proposed");
    match put {
        Err(Error::Rejected(why)) => assert!(why.contains("Raft entry"), "{why}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(node.log().last_log_id(), before, "nothing was proposed");
}

/// A node served over TCP can be stopped and shut down: `serve_until` ends its
/// connections (an idle client's included) and lets go of the node, and the node
/// reopens with what it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_served_over_tcp_stops_serving_and_shuts_down() {
    use rocketstore_raft::network::tcp;
    let dir = tempfile::tempdir().unwrap();
    let store = || {
        rocketstore::StoreConfig::new(dir.path().join("store"))
            .commit_log_file_size(64 << 10)
            .index_file_shape(512, 4096)
    };
    let raft_dir = dir.path().join("raft");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let open = || {
        rocketstore_raft::ReplicatedStore::open(
            1,
            store(),
            &raft_dir,
            raft_config(None),
            tcp::TcpNetwork,
        )
    };
    let node = open().await.unwrap();
    node.initialize([(1, addr.clone())]).await.unwrap();
    node.wait_leader(WAIT).await.unwrap();
    let node = std::sync::Arc::new(node);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tcp::serve_until(
        listener,
        std::sync::Arc::clone(&node),
        async {
            let _ = stopped.await;
        },
    ));
    let mut client = tcp::Client::new(addr);
    let acked = client
        .put(TOPIC, 0, Bytes::from(body(0)), WAIT)
        .await
        .unwrap()
        .unwrap();
    // The client stays connected (idle) while the node stops.
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("serving ends")
        .unwrap()
        .unwrap();
    let node = std::sync::Arc::into_inner(node).expect("the server let go of the node");
    node.shutdown().await.unwrap();
    drop(client);
    let node = open().await.unwrap();
    let got = node.store().get_message(TOPIC, 0, 0, 8).unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].physical_offset, acked.physical_offset);
    node.shutdown().await.unwrap();
}
