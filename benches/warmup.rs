//! Which warm-up of new commit-log files makes puts fastest, per flush mode.
//!
//! Each iteration opens a fresh store with small files and times puts across several
//! rolls, so every file but the first was prepared by the allocation thread.
//! `cargo bench --bench warmup`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rocketstore::{FlushMode, Message, MessageStore, StoreConfig, Warmup};

fn run(mode: FlushMode, warmup: Warmup, file_size: u64, body: usize, files: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(
        StoreConfig::new(dir.path())
            .commit_log_file_size(file_size)
            .flush_mode(mode)
            .warmup(warmup),
    )
    .unwrap();
    let msg = Message::new("Warm", 0u32, Bytes::from(vec![1u8; body]));
    // Fill the first file untimed: it is created inline at open.
    while store.max_physical_offset() < file_size {
        store.put_message(&msg).unwrap();
    }
    let started = Instant::now();
    while store.max_physical_offset() < file_size * (files + 1) {
        store.put_message(&msg).unwrap();
    }
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let warmups = [
        ("none", Warmup::None),
        ("touch", Warmup::Touch),
        ("zero_and_flush", Warmup::ZeroAndFlush),
    ];
    let cases = [
        ("async_1k", FlushMode::default(), 64 << 20, 1024, 3),
        ("sync_4k", FlushMode::sync(), 2 << 20, 4096, 3),
    ];
    for (case, mode, file_size, body, files) in cases {
        let mut g = c.benchmark_group(format!("warmup/{case}"));
        g.sample_size(10).measurement_time(Duration::from_secs(10));
        g.throughput(Throughput::Bytes(file_size * files));
        for (name, warmup) in warmups {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| run(mode, warmup, file_size, body, files))
                        .sum()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
