//! Opens a store in a temporary directory, puts messages and reads them back (by offset
//! and by key) in both flush modes, and prints what it did and how fast.
//!
//! `cargo run --release --example quickstart`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rocketstore::{FlushMode, Message, MessageStore, PutStatus, StoreConfig};

const BODY: usize = 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let body = Bytes::from(vec![b'x'; BODY]);
    for (name, mode, threads, per_thread) in [
        ("async flush", FlushMode::default(), 1, 200_000u64),
        ("sync flush (group commit)", FlushMode::sync(), 4, 5_000u64),
    ] {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(MessageStore::open(
            StoreConfig::new(dir.path())
                .commit_log_file_size(256 << 20)
                .flush_mode(mode),
        )?);
        println!("== {name}: store at {}", dir.path().display());

        let started = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (store, body) = (Arc::clone(&store), body.clone());
                std::thread::spawn(move || -> rocketstore::Result<Vec<(u64, Duration)>> {
                    let mut puts = Vec::with_capacity(per_thread as usize);
                    for i in 0..per_thread {
                        let msg = Message::new("QuickStart", t as u32, body.clone())
                            .with_tags("TagA")
                            .with_keys([format!("key-{t}-{i}")]);
                        let begin = Instant::now();
                        let put = store.put_message(&msg)?;
                        assert_eq!(put.status, PutStatus::Ok);
                        assert_eq!(put.queue_offset, i);
                        puts.push((put.physical_offset, begin.elapsed()));
                    }
                    Ok(puts)
                })
            })
            .collect();
        let mut puts = Vec::new();
        for w in workers {
            puts.extend(w.join().expect("producer thread")?);
        }
        let took = started.elapsed();
        let n = puts.len() as f64;
        let mut latencies: Vec<Duration> = puts.iter().map(|p| p.1).collect();
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "put   {} msgs of {BODY} B from {threads} thread(s) in {took:.2?}: {:.0} msg/s, {:.0} MB/s, latency p50 {:.1?} p99 {:.1?}",
            puts.len(),
            n / took.as_secs_f64(),
            n * BODY as f64 / took.as_secs_f64() / 1e6,
            pct(0.50),
            pct(0.99),
        );

        let started = Instant::now();
        for (offset, _) in &puts {
            let m = store
                .lookup_message(*offset)?
                .ok_or("a stored message is missing")?;
            if m.body != body || !m.crc_ok() || m.tags() != Some("TagA") {
                return Err("a message came back different".into());
            }
        }
        let took = started.elapsed();
        println!(
            "read  {} msgs back by physical offset, all intact, in {took:.2?}: {:.0} msg/s",
            puts.len(),
            n / took.as_secs_f64()
        );
        // By key, through the key index (built by its own dispatcher thread).
        let end = store.max_physical_offset();
        let started = Instant::now();
        if !store.wait_dispatcher("index", end, Duration::from_secs(60)) {
            return Err("the key index did not catch up".into());
        }
        let caught_up = started.elapsed();
        let started = Instant::now();
        let probes = 1_000u64.min(per_thread);
        for i in 0..probes {
            let found = store.query_message("QuickStart", &format!("key-0-{i}"), 4, 0, i64::MAX)?;
            if found.messages.len() != 1 || found.messages[0].queue_offset != i {
                return Err(format!("key-0-{i} was not found once").into());
            }
        }
        let took = started.elapsed();
        println!(
            "query {probes} keys, each found once, in {took:.2?}: {:.1?} per query (the index caught up {caught_up:.2?} after the last put)",
            took / probes as u32
        );
        println!(
            "log   {} bytes written, {} flushed",
            store.max_physical_offset(),
            store.flushed_physical_offset()
        );
        store.shutdown()?;

        let reopened =
            MessageStore::open(StoreConfig::new(dir.path()).commit_log_file_size(256 << 20))?;
        let next = reopened.put_message(&Message::new("QuickStart", 0u32, body.clone()))?;
        println!(
            "reopen continues at offset {} with queue offset {}\n",
            next.physical_offset, next.queue_offset
        );
    }
    Ok(())
}
