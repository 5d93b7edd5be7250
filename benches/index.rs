//! The key index: `query_message` latency, and how fast the index is built from the log.
//! `cargo bench --bench index`
//!
//! - `query/1_of_200k`: one key among 200,000 messages of 2 keys each (default index
//!   geometry), the answer read back and checked.
//! - `build/2_keys`: the index dispatcher indexing 200,000 messages of 2 keys each from
//!   the log (a store written with the index off, reopened with it on: the index is built
//!   from the log's start), in messages per second.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rocketstore::{Message, MessageStore, PROPERTY_UNIQ_KEY, StoreConfig};

const MESSAGES: u64 = 200_000;

fn message(i: u64, body: &Bytes) -> Message {
    Message::new("Index", (i % 8) as u32, body.clone())
        .with_keys([format!("order-{i}")])
        .with_property(PROPERTY_UNIQ_KEY, format!("{i:016X}"))
}

fn fill(dir: &std::path::Path, index: bool) -> StoreConfig {
    let config = StoreConfig::new(dir).index_enabled(index);
    let store = MessageStore::open(config.clone()).unwrap();
    let body = Bytes::from(vec![b'x'; 100]);
    for i in 0..MESSAGES {
        store.put_message(&message(i, &body)).unwrap();
    }
    if index {
        assert!(store.wait_dispatcher(
            "index",
            store.max_physical_offset(),
            Duration::from_secs(120)
        ));
    }
    store.shutdown().unwrap();
    config
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = fill(dir.path(), true);
    let store = MessageStore::open(config).unwrap();
    let mut g = c.benchmark_group("query");
    let mut i = 0u64;
    g.bench_function("1_of_200k", |b| {
        b.iter(|| {
            i = (i + 7919) % MESSAGES;
            let r = store
                .query_message("Index", &format!("order-{i}"), 32, 0, i64::MAX)
                .unwrap();
            assert_eq!(r.messages.len(), 1);
            r.messages.len()
        })
    });
    g.finish();
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let config = fill(dir.path(), false).index_enabled(true);
    let mut g = c.benchmark_group("build");
    g.throughput(Throughput::Elements(MESSAGES));
    g.sample_size(10);
    g.bench_function("2_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _ = std::fs::remove_dir_all(rocketstore::layout::index_dir(dir.path()));
                let _ = std::fs::remove_file(rocketstore::layout::dispatch_progress_file(
                    dir.path(),
                    "index",
                ));
                // The index thread starts as the open's last step.
                let store = MessageStore::open(config.clone()).unwrap();
                let started = Instant::now();
                let end = store.max_physical_offset();
                assert!(store.wait_dispatcher("index", end, Duration::from_secs(120)));
                total += started.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
