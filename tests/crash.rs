//! Crash safety proven by SIGKILL: a child process puts messages and prints each one as it
//! is acknowledged; the test kills it at a random moment, reopens the store and checks that
//! every acknowledged message is there, intact, through both read paths.
//!
//! The child is this same test binary running the ignored test `crash_child`.
//! `CRASH_ROUNDS=500 cargo test --release --test crash` runs a long campaign.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use rocketstore::{FlushMode, GetStatus, Message, MessageStore, StoreConfig};

const QUEUES: u32 = 3;
const FILE_SIZE: u64 = 256 * 1024;
const CQ_ENTRIES: u32 = 1024;

fn store_config(dir: &Path, mode: FlushMode) -> StoreConfig {
    StoreConfig::new(dir)
        .commit_log_file_size(FILE_SIZE)
        .consume_queue_entries_per_file(CQ_ENTRIES)
        .consume_queue_flush_interval(Duration::from_millis(20))
        .flush_mode(mode)
        .index_file_shape(256, 2048)
}

fn mode_named(name: &str) -> FlushMode {
    match name {
        "sync" => sync_mode(),
        _ => async_mode(),
    }
}

/// The child: puts from several threads until killed, printing
/// `ACK queue queue_offset physical_offset crc len producer i` for each acknowledged put
/// (its key is `{producer}-{i}`).
#[test]
#[ignore = "run by the crash tests as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var("CRASH_CHILD_DIR") else {
        return;
    };
    let mode = mode_named(&std::env::var("CRASH_CHILD_MODE").unwrap());
    let seed: u64 = std::env::var("CRASH_CHILD_SEED").unwrap().parse().unwrap();
    let store = Arc::new(MessageStore::open(store_config(Path::new(&dir), mode)).unwrap());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    writeln!(out.lock().unwrap(), "READY").unwrap();
    let threads: Vec<_> = (0..3u64)
        .map(|p| {
            let (store, out) = (Arc::clone(&store), Arc::clone(&out));
            std::thread::spawn(move || {
                for i in 0.. {
                    let queue = ((p + i) % u64::from(QUEUES)) as u32;
                    let body = child_body(seed, p, i);
                    let crc = crc32fast::hash(&body);
                    let msg =
                        Message::new("Crash", queue, body.clone()).with_keys([format!("{p}-{i}")]);
                    let r = if i % 7 == 3 {
                        store.put_messages(&[msg.clone(), msg]).unwrap()
                    } else {
                        store.put_message(&msg).unwrap()
                    };
                    if !r.is_ok() {
                        continue; // not acknowledged as durable
                    }
                    let mut o = out.lock().unwrap();
                    let size = r.wrote_bytes / r.message_count;
                    for k in 0..u64::from(r.message_count) {
                        writeln!(
                            o,
                            "ACK {queue} {} {} {crc} {} {p} {i}",
                            r.queue_offset + k,
                            r.physical_offset + k * u64::from(size),
                            body.len(),
                        )
                        .unwrap();
                    }
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    queue: u32,
    queue_offset: u64,
    physical_offset: u64,
    crc: u32,
    len: usize,
    /// The message's key, `{producer}-{i}`, as the two numbers.
    key: (u64, u64),
}

/// Runs the child until it has acknowledged `acks` puts (or at once when 0), kills it with
/// SIGKILL and returns what it acknowledged.
fn run_child_and_kill(dir: &Path, mode: &str, seed: u64, acks: usize) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CRASH_CHILD_DIR", dir)
        .env("CRASH_CHILD_MODE", mode)
        .env("CRASH_CHILD_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = stdout.lines();
    let mut got = Vec::new();
    let mut ready = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.ends_with("READY") {
            ready = true;
        }
        if let Some(ack) = parse_ack(&line) {
            got.push(ack);
        }
        if ready && got.len() >= acks {
            break;
        }
    }
    child.kill().unwrap();
    // Everything printed before the kill was acknowledged too.
    for line in lines {
        if let Some(ack) = line.ok().as_deref().and_then(parse_ack) {
            got.push(ack);
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child ended by itself: {status:?}");
    got
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut f = line.strip_prefix("ACK ")?.split(' ');
    Some(Ack {
        queue: f.next()?.parse().ok()?,
        queue_offset: f.next()?.parse().ok()?,
        physical_offset: f.next()?.parse().ok()?,
        crc: f.next()?.parse().ok()?,
        len: f.next()?.parse().ok()?,
        key: (f.next()?.parse().ok()?, f.next()?.parse().ok()?),
    })
}

/// Reopens the store and checks every acknowledged message and the queues' density.
fn verify(dir: &Path, mode: FlushMode, acks: &HashMap<u64, Ack>) {
    let store = MessageStore::open(store_config(dir, mode)).unwrap();
    // Every acknowledged message is found by its key once the index has caught up.
    let end = store.max_physical_offset();
    assert!(store.wait_dispatcher("index", end, Duration::from_secs(30)));
    for ack in acks.values() {
        let key = format!("{}-{}", ack.key.0, ack.key.1);
        let found = store
            .query_message("Crash", &key, 100_000, 0, i64::MAX)
            .unwrap();
        assert!(
            found
                .messages
                .iter()
                .any(|m| m.physical_offset == ack.physical_offset),
            "acknowledged message not found by its key {key}: {ack:?}"
        );
    }
    for ack in acks.values() {
        let m = store
            .lookup_message(ack.physical_offset)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged message lost: {ack:?}"));
        assert_eq!(crc32fast::hash(&m.body), ack.crc, "{ack:?}");
        assert_eq!(m.body.len(), ack.len);
        assert_eq!((m.queue_id, m.queue_offset), (ack.queue, ack.queue_offset));
        let g = store
            .get_message("Crash", ack.queue, ack.queue_offset, 1)
            .unwrap();
        assert_eq!(g.status, GetStatus::Found, "{ack:?}");
        assert_eq!(g.messages[0].physical_offset, ack.physical_offset);
    }
    // Queues are dense and serve only valid messages.
    let end = store.max_physical_offset();
    for q in 0..QUEUES {
        let max = store.max_offset_in_queue("Crash", q);
        let mut offset = 0;
        while offset < max {
            let g = store.get_message("Crash", q, offset, 64).unwrap();
            assert_eq!(g.status, GetStatus::Found);
            for m in &g.messages {
                assert_eq!(m.queue_offset, offset, "queue {q} not dense");
                assert!(m.crc_ok());
                assert!(m.physical_offset < end);
                offset += 1;
            }
        }
    }
    // New puts continue right after the last record and the last queue offset.
    let before = store.max_offset_in_queue("Crash", 0);
    let next = store
        .put_message(&Message::new("Crash", 0u32, Bytes::from_static(b"after")))
        .unwrap();
    assert_eq!(next.queue_offset, before);
    assert!(next.physical_offset == end || next.physical_offset.is_multiple_of(FILE_SIZE));
    assert!(store.wait_dispatched(next.physical_offset, Duration::from_secs(30)));
    store.shutdown().unwrap();
}

fn campaign(mode_name: &str, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let seed0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("{mode_name} crash campaign: {rounds} rounds, seed {seed0}");
    let mut rng = Rng(seed0);
    let mut acks: HashMap<u64, Ack> = HashMap::new();
    for round in 0..rounds {
        let want = rng.below(400) as usize;
        let got = run_child_and_kill(dir.path(), mode_name, rng.next(), want);
        for a in got {
            acks.insert(a.physical_offset, a);
        }
        // The verifying open is itself a recovery after SIGKILL; it shuts down cleanly, and
        // its own extra message is not tracked.
        verify(dir.path(), mode_named(mode_name), &acks);
        if round % 5 == 4 {
            println!(
                "{mode_name}: {} rounds, {} acknowledged",
                round + 1,
                acks.len()
            );
        }
    }
    println!(
        "{mode_name}: {} acknowledged messages checked after {rounds} kills",
        acks.len()
    );
}

fn rounds(default: usize) -> usize {
    std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sync_flush_survives_sigkill() {
    campaign("sync", rounds(20));
}

#[test]
fn async_flush_survives_sigkill() {
    // A killed process leaves its writes in the page cache: nothing acknowledged is lost.
    campaign("async", rounds(8));
}
