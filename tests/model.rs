//! Model-based property test: random sequences of put, batch put, get, flush, clean reopen
//! and simulated crash (the log cut at the durable end, then garbage), checked against a
//! simple in-memory model: everything acknowledged as durable is always there and
//! identical, and queue offsets stay dense. `PROPTEST_CASES=1000` for a longer run.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use rocketstore::layout;
use rocketstore::{FlushMode, GetStatus, Message, MessageStore, StoreConfig};

const QUEUES: u32 = 2;

#[derive(Debug, Clone)]
enum Op {
    Put { queue: u32, len: usize },
    Batch { queue: u32, n: usize, len: usize },
    Get { queue: u32 },
    Flush,
    Reopen,
    Crash { garbage: Vec<u8> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..QUEUES, 0usize..3000).prop_map(|(queue, len)| Op::Put { queue, len }),
        2 => (0..QUEUES, 1usize..8, 0usize..500).prop_map(|(queue, n, len)| Op::Batch { queue, n, len }),
        2 => (0..QUEUES).prop_map(|queue| Op::Get { queue }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(|garbage| Op::Crash { garbage }),
    ]
}

/// What the model knows of one stored message.
#[derive(Debug, Clone)]
struct Stored {
    body: Bytes,
    physical_offset: u64,
    end: u64,
}

/// The sync variant reads queues at first use after a clean exit (as a store with many
/// queues does), the async variant at open.
fn cfg(dir: &Path, mode: FlushMode) -> StoreConfig {
    let lazy = if matches!(mode, FlushMode::Sync { .. }) {
        0
    } else {
        usize::MAX
    };
    config(dir, mode)
        .consume_queue_entries_per_file(64)
        .lazy_queue_load_threshold(lazy)
}

fn check(store: &MessageStore, model: &[Vec<Stored>]) {
    for (q, msgs) in model.iter().enumerate() {
        let q = q as u32;
        assert_eq!(
            store.max_offset_in_queue("Model", q),
            msgs.len() as u64,
            "queue {q}"
        );
        if msgs.is_empty() {
            continue;
        }
        let got = store.get_message("Model", q, 0, msgs.len()).unwrap();
        let mut all = got.messages;
        let mut next = got.next_offset;
        while (all.len()) < msgs.len() {
            let more = store.get_message("Model", q, next, msgs.len()).unwrap();
            assert_eq!(more.status, GetStatus::Found, "queue {q} at {next}");
            next = more.next_offset;
            all.extend(more.messages);
        }
        for (i, (m, want)) in all.iter().zip(msgs).enumerate() {
            assert_eq!(m.queue_offset, i as u64, "queue {q} not dense");
            assert_eq!(m.physical_offset, want.physical_offset);
            assert_eq!(m.body, want.body, "queue {q} offset {i} changed");
        }
    }
    // By key: each message is found by its own key (its body's first word), once.
    let end = store.max_physical_offset();
    assert!(store.wait_dispatcher("index", end, std::time::Duration::from_secs(30)));
    for want in model.iter().flatten() {
        let key = key_of(&want.body);
        let found = store.query_message("Model", &key, 8, 0, i64::MAX).unwrap();
        let offsets: Vec<u64> = found.messages.iter().map(|m| m.physical_offset).collect();
        assert_eq!(offsets, [want.physical_offset], "key {key}");
    }
}

/// A message's key: its body up to the first '-'.
fn key_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split('-').next().unwrap().to_owned()
}

fn run(ops: Vec<Op>, sync: bool) {
    let mode = if sync { sync_mode() } else { async_mode() };
    let dir = tempfile::tempdir().unwrap();
    let mut store = MessageStore::open(cfg(dir.path(), mode)).unwrap();
    let mut model: Vec<Vec<Stored>> = vec![Vec::new(); QUEUES as usize];
    let mut counter = 0u64;
    let mut body = |len: usize| {
        counter += 1;
        let mut b = format!("m{counter}-").into_bytes();
        b.resize(b.len() + len, (counter % 251) as u8);
        Bytes::from(b)
    };
    for op in ops {
        match op {
            Op::Put { queue, len } => {
                let b = body(len);
                let r = store
                    .put_message(&Message::new("Model", queue, b.clone()).with_keys([key_of(&b)]))
                    .unwrap();
                assert_eq!(r.queue_offset, model[queue as usize].len() as u64);
                model[queue as usize].push(Stored {
                    body: b,
                    physical_offset: r.physical_offset,
                    end: r.end_offset(),
                });
            }
            Op::Batch { queue, n, len } => {
                let bodies: Vec<Bytes> = (0..n).map(|_| body(len)).collect();
                let msgs: Vec<Message> = bodies
                    .iter()
                    .map(|b| Message::new("Model", queue, b.clone()).with_keys([key_of(b)]))
                    .collect();
                let r = store.put_messages(&msgs).unwrap();
                assert_eq!(r.queue_offset, model[queue as usize].len() as u64);
                let mut at = r.physical_offset;
                for b in bodies {
                    let m = store.lookup_message(at).unwrap().expect("batch record");
                    let end = at + u64::from(m.total_size);
                    model[queue as usize].push(Stored {
                        body: b,
                        physical_offset: at,
                        end,
                    });
                    at = end;
                }
            }
            Op::Get { queue } => {
                if let Some(last) = model.iter().flatten().map(|s| s.physical_offset).max() {
                    assert!(store.wait_dispatched(last, std::time::Duration::from_secs(30)));
                }
                let want = &model[queue as usize];
                let g = store.get_message("Model", queue, 0, 4).unwrap();
                for (m, w) in g.messages.iter().zip(want) {
                    assert_eq!(m.body, w.body);
                }
            }
            Op::Flush => {
                store.flush().unwrap();
            }
            Op::Reopen => {
                store.shutdown().unwrap();
                drop(store);
                store = MessageStore::open(cfg(dir.path(), mode)).unwrap();
                check(&store, &model);
            }
            Op::Crash { garbage } => {
                // Durable at the moment of the crash: everything below the flushed offset.
                let durable = store.flushed_physical_offset();
                store.shutdown().unwrap();
                drop(store);
                for msgs in &mut model {
                    msgs.retain(|s| s.end <= durable);
                }
                // The crash leaves the log cut at the durable end, then garbage.
                let file_start = durable / SMALL_FILE * SMALL_FILE;
                let log = layout::commit_log_dir(dir.path());
                for entry in std::fs::read_dir(&log).unwrap() {
                    let path = entry.unwrap().path();
                    let start: u64 = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
                    if start > file_start {
                        std::fs::remove_file(&path).unwrap();
                    }
                }
                let path = log.join(layout::file_name(file_start));
                if path.exists() {
                    let f = OpenOptions::new().write(true).open(&path).unwrap();
                    let pos = durable - file_start;
                    f.write_all_at(&vec![0u8; (SMALL_FILE - pos) as usize], pos)
                        .unwrap();
                    let room = (SMALL_FILE - pos) as usize;
                    f.write_all_at(&garbage[..garbage.len().min(room)], pos)
                        .unwrap();
                }
                std::fs::write(layout::abort_file(dir.path()), b"").unwrap();
                // The checkpoint of a real crash vouches for nothing past the durable end.
                checkpoint_vouches_below(dir.path(), durable);
                store = MessageStore::open(cfg(dir.path(), mode)).unwrap();
                check(&store, &model);
            }
        }
    }
    if let Some(last) = model.iter().flatten().map(|s| s.physical_offset).max() {
        assert!(store.wait_dispatched(last, std::time::Duration::from_secs(30)));
    }
    check(&store, &model);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn sync_store_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, true);
    }

    #[test]
    fn async_store_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, false);
    }
}

/// Found by the model: a crash that drops a queue's only entry, then a clean reopen. The
/// queue's file, left all zeros, must not read as a queue positioned at its end.
#[test]
fn a_queue_emptied_by_a_crash_stays_empty_after_a_clean_reopen() {
    run(
        vec![
            Op::Put { queue: 0, len: 0 },
            Op::Crash {
                garbage: vec![
                    54, 7, 242, 196, 225, 250, 16, 197, 242, 182, 20, 147, 223, 84, 80, 251, 205,
                    250, 200, 194, 89, 140, 245, 246, 74, 188, 134, 247, 198, 76, 224, 221, 244,
                    195, 214, 185, 53, 103, 230, 167, 196, 101, 228, 139, 227, 220, 106, 146, 114,
                    84, 94, 203, 201, 64, 108, 2, 239, 42, 20, 227, 14, 125, 241, 236, 58, 19, 69,
                    76, 160, 230, 208, 199, 204, 39, 47, 234, 5, 237, 167, 98, 106, 58, 126, 114,
                    69, 208, 97, 100, 122, 118, 165, 164, 55, 108, 164, 30, 50, 95, 65, 190, 151,
                    41, 146, 181, 235, 218, 33, 210, 220, 51, 143, 118, 142, 180, 38, 29, 193, 7,
                    85, 190, 99, 172, 72, 255, 138, 166, 143, 111, 73, 101, 127, 240, 133,
                ],
            },
            Op::Reopen,
        ],
        false,
    );
}
