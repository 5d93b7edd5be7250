//! Every byte of the store's small files damaged in turn: the checkpoint, the queue table,
//! the deleted-topics file, the log start, the key index's progress and the abort
//! marker. Whatever the damage, after a clean exit or a crash, the open either refuses
//! with an error or opens a store that serves every acknowledged message unchanged,
//! keeps a deleted topic deleted, finds keys, and takes new puts. Never a panic, never a
//! message lost or brought back.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use rocketstore::{Error, MessageStore, layout};

const QUEUES: u32 = 2;

/// What the template store acknowledged: Kept's bodies by (queue, queue offset).
type Acked = BTreeMap<(u32, u64), bytes::Bytes>;

/// A closed store: a topic deleted after 10 puts, 40 puts of another over two queues with
/// keys, the key index caught up, and the log's start recorded.
fn template(dir: &Path) -> Acked {
    let store = open(dir, sync_mode());
    for i in 0..10 {
        store.put_message(&message("Gone", 0, "gone", i)).unwrap();
    }
    store.delete_topic("Gone").unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..40u64 {
        let msg = message("Kept", (i % 2) as u32, "kept", i);
        let put = store.put_message(&msg).unwrap();
        acked.insert((i as u32 % QUEUES, put.queue_offset), msg.body.clone());
    }
    settled(&store);
    store.shutdown().unwrap();
    write_log_start(dir, 0);
    acked
}

/// An opened store holds exactly what was acknowledged, and goes on.
fn check(store: &MessageStore, acked: &Acked, what: &str) {
    for q in 0..QUEUES {
        let got = store.get_message("Kept", q, 0, 64).unwrap();
        let bodies: Vec<_> = got.messages.iter().map(|m| m.body.clone()).collect();
        let want: Vec<_> = acked
            .range((q, 0)..(q, u64::MAX))
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(bodies, want, "{what}: queue {q}");
    }
    assert_eq!(
        store.max_offset_in_queue("Gone", 0),
        0,
        "{what}: deletion forgotten"
    );
    settled(store);
    let by_key = store.query_message("Kept", "k7", 8, 0, i64::MAX).unwrap();
    assert_eq!(by_key.messages.len(), 1, "{what}: key k7");
    assert_eq!(by_key.messages[0].body, acked[&(1, 3)], "{what}: key k7");
    let gone = store.query_message("Gone", "k3", 8, 0, i64::MAX).unwrap();
    assert!(gone.messages.is_empty(), "{what}: a deleted message by key");
    store.put_message(&message("Kept", 0, "new", 99)).unwrap();
}

/// Each file's bytes to damage: all of a small file, the two slots of a progress file, the
/// checkpoint's fields (its first 84 bytes; the rest of its 4 KiB is zeros, of which the
/// first few are damaged too).
fn targets(root: &Path) -> Vec<(PathBuf, Vec<usize>)> {
    let whole = |path: PathBuf| {
        let len = fs::metadata(&path).unwrap().len() as usize;
        assert!(len > 0, "{}", path.display());
        (path, (0..len).collect())
    };
    // The progress file's two slots (FORMAT.md, "Dispatcher progress").
    let slots = (0..44).chain(4096..4096 + 44).collect();
    vec![
        (layout::checkpoint_file(root), (0..96).collect()),
        whole(layout::queue_table_file(root)),
        whole(layout::deleted_topics_file(root)),
        whole(layout::log_start_file(root)),
        (layout::dispatch_progress_file(root, "index"), slots),
    ]
}

#[test]
fn every_damaged_byte_of_a_small_file_is_refused_or_harmless() {
    let base = tempfile::tempdir().unwrap();
    let clean = base.path().join("template");
    let acked = template(&clean);
    let (mut opened, mut refused) = (0, 0);
    for (i, (file, bytes)) in targets(&clean).into_iter().enumerate() {
        let rel = file.strip_prefix(&clean).unwrap().to_owned();
        for at in bytes {
            for crashed in [false, true] {
                let dir = base.path().join(format!("case-{i}-{at}-{crashed}"));
                copy_dir(&clean, &dir);
                let path = dir.join(&rel);
                let mut content = fs::read(&path).unwrap();
                content[at] ^= 0x21;
                fs::write(&path, content).unwrap();
                if crashed {
                    fs::write(layout::abort_file(&dir), b"").unwrap();
                }
                let what = format!("{} byte {at}, crashed {crashed}", rel.display());
                match MessageStore::open(config(&dir, sync_mode())) {
                    Ok(store) => {
                        check(&store, &acked, &what);
                        opened += 1;
                    }
                    Err(e) => {
                        // A refusal names the damage: never an I/O error, a panic caught as
                        // poison, or a refusal of a file that is only derived data.
                        let damage =
                            matches!(e, Error::BadStoreFile { .. } | Error::Corrupted { .. });
                        assert!(damage, "{what}: {e:?}");
                        let derived = path == layout::queue_table_file(&dir);
                        assert!(!derived, "{what}: the queue table is derived data: {e}");
                        refused += 1;
                    }
                }
                fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
    // Both outcomes occur: damage that must be refused (a deletion's record) and damage
    // that is harmless (a queue table is derived data).
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}

/// The abort marker of a poisoned run, damaged: the open recovers as after a crash and
/// loses nothing, or refuses.
#[test]
fn a_damaged_poison_record_is_refused_or_harmless() {
    let base = tempfile::tempdir().unwrap();
    let clean = base.path().join("template");
    let acked = template(&clean);
    let record = b"poisoned at flushed offset 0".to_vec();
    for at in 0..record.len() {
        let dir = base.path().join(format!("case-{at}"));
        copy_dir(&clean, &dir);
        let mut damaged = record.clone();
        damaged[at] ^= 0x21;
        fs::write(layout::abort_file(&dir), damaged).unwrap();
        if let Ok(store) = MessageStore::open(config(&dir, sync_mode())) {
            check(&store, &acked, &format!("abort byte {at}"));
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
