//! What the machine allows, measured the same way as the store, so each store figure reads
//! as a fraction of it: fdatasync latency of a 4 KiB append (into freshly allocated blocks
//! and into blocks written once before), and copy bandwidth into a fresh and a pre-touched
//! file mapping. `cargo bench --bench limits`

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const FILE: u64 = 64 << 20;

fn fdatasync(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits/fdatasync_4KiB_append");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    let block = vec![7u8; 4096];
    for (name, written_before) in [("fresh_blocks", false), ("written_blocks", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let dir = tempfile::tempdir().unwrap();
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.path().join("f"))
                    .unwrap();
                // Allocated like a commit-log file (fallocate), written over once with
                // zeros for the "written blocks" case, then synced.
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, FILE).unwrap();
                if written_before {
                    let zeros = vec![0u8; 1 << 20];
                    for off in (0..FILE).step_by(zeros.len()) {
                        file.write_all_at(&zeros, off).unwrap();
                    }
                }
                file.sync_all().unwrap();
                let started = Instant::now();
                for i in 0..iters {
                    file.write_all_at(&block, (i * 4096) % FILE).unwrap();
                    file.sync_data().unwrap();
                }
                started.elapsed()
            })
        });
    }
    g.finish();
}

fn copy_bandwidth(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits/copy_64MiB_into_file_mapping");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(FILE));
    let chunk = vec![3u8; 1 << 20];
    for (name, touched) in [("fresh", false), ("touched", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    total += rocketstore::probe::copy_into_mapping(
                        dir.path(),
                        FILE as usize,
                        touched,
                        &chunk,
                    )
                    .unwrap();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fdatasync, copy_bandwidth);
criterion_main!(benches);
