//! Damaged key-index files, after a clean exit or a crash. The template store's index is
//! spread over several small files; the input damages one of them. Input: byte 0 picks
//! the file, byte 1's bit 0 a crash and bit 1 a new length (the next two bytes, big
//! endian, in units of 4 bytes); the rest are patches of three bytes each, a position
//! (two bytes, big endian, taken modulo the file's length) and the byte to write there.
//!
//! Index files carry no checksum (RocketMQ's format), so damage can make a query miss a
//! message. What must hold all the same:
//! - never a panic; a refused open is `BadStoreFile` (a file of the wrong length) or
//!   `Corrupted`;
//! - a query returns only messages of its topic that carry its key, each once and intact;
//! - the consume queues serve every acknowledged message unchanged;
//! - the index goes on working: a message put after the open is found by its key.
#![no_main]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use common::{copy_dir, open_or_refused};
use libfuzzer_sys::fuzz_target;
use rocketstore::{FlushMode, Message, MessageStore, StoreConfig, layout};

const MESSAGES: u64 = 20;
const SHARED: &str = "shared";

fn config(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir)
        .commit_log_file_size(64 * 1024)
        .consume_queue_entries_per_file(64)
        .flush_mode(FlushMode::sync())
        .preallocate(false)
        .disk_clean_ratios(1.0, 1.0)
        // 8 slots, 7 entries a file: two keys a message fill a file every 3.5 messages.
        .index_file_shape(8, 8)
}

fn message(queue: u32, key: &str) -> Message {
    Message::new("Kept", queue, Bytes::from(format!("body of {key}")))
        .with_keys([key.to_string(), SHARED.to_string()])
}

/// A closed store kept for the whole run, its key index caught up, and the bodies it
/// acknowledged by (queue, queue offset) order.
struct Template {
    _dir: tempfile::TempDir,
    root: PathBuf,
    acked: Vec<(u32, Bytes)>,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("template");
        let store = MessageStore::open(config(&root)).unwrap();
        let mut acked = Vec::new();
        for i in 0..MESSAGES {
            let msg = message((i % 2) as u32, &format!("k{i}"));
            store.put_message(&msg).unwrap();
            acked.push(((i % 2) as u32, msg.body.clone()));
        }
        let end = store.max_physical_offset();
        let wait = Duration::from_secs(30);
        assert!(store.wait_dispatched_to(end, wait));
        assert!(store.wait_dispatcher("index", end, wait));
        store.shutdown().unwrap();
        Template {
            _dir: dir,
            root,
            acked,
        }
    })
}

/// Queries `key` and checks every answer: the topic, the key, an intact body, no
/// message twice. Returns the bodies.
fn query(store: &MessageStore, key: &str) -> Vec<Bytes> {
    let found = store
        .query_message("Kept", key, 64, 0, i64::MAX)
        .unwrap()
        .messages;
    let mut offsets = HashSet::new();
    for m in &found {
        assert_eq!(&*m.topic, "Kept");
        assert!(m.crc_ok(), "a damaged message was answered");
        let keys = m.property("KEYS").unwrap_or_default();
        assert!(keys.split(' ').any(|k| k == key), "{key} not in {keys:?}");
        assert!(offsets.insert(m.physical_offset), "answered twice");
    }
    found.into_iter().map(|m| m.body).collect()
}

fuzz_target!(|data: &[u8]| {
    let [pick, how, rest @ ..] = data else {
        return;
    };
    let template = template();
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("store");
    copy_dir(&template.root, &root);
    let mut files: Vec<PathBuf> = std::fs::read_dir(layout::index_dir(&root))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let path = &files[usize::from(*pick) % files.len()];
    let mut bytes = std::fs::read(path).unwrap();
    let mut patches = rest;
    if how & 2 == 2
        && let [a, b, more @ ..] = rest
    {
        bytes.resize(usize::from(u16::from_be_bytes([*a, *b])) * 4, 0);
        patches = more;
    }
    if !bytes.is_empty() {
        for patch in patches.chunks_exact(3) {
            let at = usize::from(u16::from_be_bytes([patch[0], patch[1]])) % bytes.len();
            bytes[at] = patch[2];
        }
    }
    std::fs::write(path, &bytes).unwrap();
    if how & 1 == 1 {
        std::fs::write(layout::abort_file(&root), b"").unwrap();
    }
    let Some(store) = open_or_refused(config(&root)) else {
        return;
    };
    // The consume queues do not depend on the index.
    for q in 0..2u32 {
        let got = store.get_message("Kept", q, 0, 64).unwrap();
        let bodies: Vec<_> = got.messages.iter().map(|m| m.body.clone()).collect();
        let want: Vec<_> = template
            .acked
            .iter()
            .filter(|(queue, _)| *queue == q)
            .map(|(_, body)| body.clone())
            .collect();
        assert_eq!(bodies, want, "queue {q}");
    }
    for i in 0..MESSAGES {
        for body in query(&store, &format!("k{i}")) {
            assert_eq!(body, Bytes::from(format!("body of k{i}")));
        }
    }
    assert!(query(&store, SHARED).len() <= MESSAGES as usize);
    // The index goes on: a new message is found by its key.
    store.put_message(&message(0, "fresh")).unwrap();
    let end = store.max_physical_offset();
    assert!(
        store.wait_dispatcher("index", end, Duration::from_secs(30)),
        "the key index stopped"
    );
    assert_eq!(query(&store, "fresh"), vec![Bytes::from("body of fresh")]);
    store.shutdown().unwrap();
});
