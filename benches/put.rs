//! Put throughput: 100 B / 1 KiB / 4 KiB bodies, async and sync flush, 1 and 4 threads,
//! batches, `put_message_async` with many in flight, and file rolls.
//! `cargo bench --bench put`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rocketstore::{FlushMode, Message, MessageStore, StoreConfig};

fn store(mode: FlushMode) -> (tempfile::TempDir, Arc<MessageStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(
        StoreConfig::new(dir.path())
            .commit_log_file_size(256 << 20)
            .flush_mode(mode),
    )
    .unwrap();
    (dir, Arc::new(store))
}

/// Times `iters` puts spread over `threads` threads, each to its own queue.
fn put_parallel(store: &Arc<MessageStore>, threads: u64, iters: u64, body: &Bytes) -> Duration {
    let per = iters.div_ceil(threads);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (store, body) = (Arc::clone(store), body.clone());
            std::thread::spawn(move || {
                let msg = Message::new("Bench", t as u32, body);
                for _ in 0..per {
                    store.put_message(&msg).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    started.elapsed()
}

fn bench_put(c: &mut Criterion) {
    for (mode_name, mode) in [("async", FlushMode::default()), ("sync", FlushMode::sync())] {
        let mut g = c.benchmark_group(format!("put/{mode_name}"));
        g.sample_size(10).measurement_time(Duration::from_secs(5));
        for size in [100usize, 1024, 4096] {
            for threads in [1u64, 4] {
                let body = Bytes::from(vec![b'x'; size]);
                g.throughput(Throughput::Elements(1));
                g.bench_with_input(
                    BenchmarkId::new(format!("{size}B"), format!("{threads}t")),
                    &threads,
                    |b, &threads| {
                        // A fresh store per sample keeps the log from growing without bound.
                        b.iter_custom(|iters| {
                            let (_dir, store) = store(mode);
                            put_parallel(&store, threads, iters, &body)
                        })
                    },
                );
            }
        }
        g.finish();
    }
}

fn bench_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("put_batch/async");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let batch: Vec<_> = (0..32)
        .map(|_| Message::new("Bench", 0u32, Bytes::from(vec![b'x'; 1024])))
        .collect();
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("32x1KiB", |b| {
        b.iter_custom(|iters| {
            let (_dir, store) = store(FlushMode::default());
            let started = Instant::now();
            for _ in 0..iters {
                store.put_messages(&batch).unwrap();
            }
            started.elapsed()
        })
    });
    g.finish();
}

/// `put_message_async` under sync flush with 64 futures outstanding from one thread: the
/// group commit covers many puts per fdatasync.
fn bench_async_inflight(c: &mut Criterion) {
    let mut g = c.benchmark_group("put_async/sync");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    let body = Bytes::from(vec![b'x'; 1024]);
    g.bench_function("1KiB_inflight64", |b| {
        b.iter_custom(|iters| {
            let (_dir, store) = store(FlushMode::sync());
            let started = Instant::now();
            let mut pending = std::collections::VecDeque::new();
            for _ in 0..iters {
                pending.push_back(store.put_message_async(Message::new(
                    "Bench",
                    0u32,
                    body.clone(),
                )));
                if pending.len() >= 64 {
                    pollster::block_on(pending.pop_front().unwrap()).unwrap();
                }
            }
            for f in pending {
                pollster::block_on(f).unwrap();
            }
            started.elapsed()
        })
    });
    g.finish();
}

/// Puts into 64 KiB files, so a file roll every ~60 messages: what a roll costs when the
/// next file is prepared in the background.
fn bench_roll(c: &mut Criterion) {
    let mut g = c.benchmark_group("roll/async");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    let body = Bytes::from(vec![b'x'; 1024]);
    g.bench_function("1KiB_into_64KiB_files", |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir().unwrap();
            let store =
                MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(64 << 10))
                    .unwrap();
            let msg = Message::new("Bench", 0u32, body.clone());
            let started = Instant::now();
            for _ in 0..iters {
                store.put_message(&msg).unwrap();
            }
            started.elapsed()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_put,
    bench_batch,
    bench_async_inflight,
    bench_roll
);
criterion_main!(benches);
