//! Reopening: abnormal recovery of a 1 GiB commit log (scan, validate and re-index every
//! record), the same for 128 MiB of records early in a 1 GiB file (the tail past them is
//! checked too), and a normal reopen of a store with 1,000 queues and 4 GiB of log.
//! `cargo bench --bench recovery`; `RECOVERY_BENCH_GIB` scales both logs down or up.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rocketstore::layout;
use rocketstore::{Message, MessageStore, StoreConfig};

fn gib() -> f64 {
    std::env::var("RECOVERY_BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

fn fill(dir: &Path, bytes: u64, queues: u32) -> u64 {
    let store = MessageStore::open(StoreConfig::new(dir)).unwrap();
    let body = Bytes::from(vec![b'r'; 1024]);
    let mut i = 0u64;
    while store.max_physical_offset() < bytes {
        let q = (i % u64::from(queues)) as u32;
        store
            .put_message(&Message::new(format!("T{}", q % 10), q, body.clone()))
            .unwrap();
        i += 1;
    }
    store.shutdown().unwrap();
    store.max_physical_offset()
}

/// Times `iters` opens of the store in `dir`, whose log ends at `size`; with `crash`, each
/// after a crash: the abort marker is there and the checkpoint promises nothing.
fn reopen(dir: &Path, size: u64, iters: u64, crash: bool) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        if crash {
            std::fs::write(layout::abort_file(dir), b"").unwrap();
            std::fs::write(layout::checkpoint_file(dir), [0u8; 4096]).unwrap();
        }
        let started = Instant::now();
        let store = MessageStore::open(StoreConfig::new(dir)).unwrap();
        total += started.elapsed();
        assert_eq!(store.max_physical_offset(), size);
        store.shutdown().unwrap();
    }
    total
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10).measurement_time(Duration::from_secs(20));

    let dir = tempfile::tempdir().unwrap();
    let size = fill(
        dir.path(),
        (gib() * (1u64 << 30) as f64) as u64 - (1 << 20),
        4,
    );
    g.throughput(Throughput::Bytes(size));
    g.bench_function("abnormal_1GiB", |b| {
        b.iter_custom(|iters| reopen(dir.path(), size, iters, true))
    });

    // A crash early in a 1 GiB file: 128 MiB of records, and the rest of the file a tail
    // that recovery must make sure holds nothing.
    let dir = tempfile::tempdir().unwrap();
    let size = fill(dir.path(), 128 << 20, 4);
    g.throughput(Throughput::Bytes(size));
    g.bench_function("abnormal_128MiB_in_1GiB_file", |b| {
        b.iter_custom(|iters| reopen(dir.path(), size, iters, true))
    });

    let dir = tempfile::tempdir().unwrap();
    let size = fill(
        dir.path(),
        (gib() * 4.0 * (1u64 << 30) as f64) as u64 - (1 << 20),
        1000,
    );
    g.throughput(Throughput::Bytes(size));
    g.bench_function("normal_1000_queues_4GiB", |b| {
        b.iter_custom(|iters| reopen(dir.path(), size, iters, false))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
