//! Arbitrary bytes as one of the store's small files (the checkpoint, the queue table,
//! `deleted_topics`, `log_start`, the key index's progress), after a clean exit or a
//! crash. Input: byte 0 picks the file, byte 1's bit 0 a crash and bit 1 whether the
//! file's CRC is made to match (so the fuzzer reaches the parsers behind it); the rest is
//! the file's content.
//!
//! Never a panic. The open refuses with `BadStoreFile` or `Corrupted`, or opens a store
//! that reads and takes puts. When the CRC was left as the fuzzer made it (damage, not a
//! forged file), an open store also serves every acknowledged message unchanged and keeps
//! the deleted topic deleted: a file whose CRC matches can say anything a run could have
//! written, such as a deletion of the other topic, so only the first promise holds then.
#![no_main]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use common::{copy_dir, open_or_refused};
use libfuzzer_sys::fuzz_target;
use rocketstore::{FlushMode, Message, MessageStore, StoreConfig, layout};

const FILE: u64 = 64 * 1024;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir)
        .commit_log_file_size(FILE)
        .consume_queue_entries_per_file(64)
        .flush_mode(FlushMode::sync())
        .preallocate(false)
        .disk_clean_ratios(1.0, 1.0)
        .index_file_shape(64, 256)
}

fn message(topic: &str, queue: u32, i: u64) -> Message {
    Message::new(topic, queue, Bytes::from(format!("{topic}-{queue}-{i}")))
        .with_keys([format!("k{i}")])
}

/// A closed store kept for the whole run: a topic deleted after 5 puts, 12 puts of another
/// over two queues, the key index caught up. Its bodies by (queue, queue offset).
struct Template {
    _dir: tempfile::TempDir,
    root: PathBuf,
    acked: Vec<(u32, u64, Bytes)>,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("template");
        let store = MessageStore::open(config(&root)).unwrap();
        for i in 0..5 {
            store.put_message(&message("Gone", 0, i)).unwrap();
        }
        store.delete_topic("Gone").unwrap();
        let mut acked = Vec::new();
        for i in 0..12u64 {
            let msg = message("Kept", (i % 2) as u32, i);
            let put = store.put_message(&msg).unwrap();
            acked.push((i as u32 % 2, put.queue_offset, msg.body.clone()));
        }
        let end = store.max_physical_offset();
        let wait = std::time::Duration::from_secs(30);
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

/// The text files' CRC line: CRC-32 of every byte before it, in decimal.
fn with_crc_line(mut text: Vec<u8>) -> Vec<u8> {
    if !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    let crc = crc32fast::hash(&text);
    text.extend_from_slice(format!("crc {crc}\n").as_bytes());
    text
}

/// `data` as the file `pick` names, with a matching CRC if `forge`.
fn damaged(root: &Path, pick: u8, data: &[u8], forge: bool) -> (PathBuf, Vec<u8>) {
    match pick % 5 {
        0 => {
            // The checkpoint: 4 KiB, fields in the first 80 bytes, their CRC at 80.
            let mut file = vec![0u8; 4096];
            let n = data.len().min(4096);
            file[..n].copy_from_slice(&data[..n]);
            if forge {
                let crc = crc32fast::hash(&file[..80]);
                file[80..84].copy_from_slice(&crc.to_be_bytes());
            }
            (layout::checkpoint_file(root), file)
        }
        1 | 2 => {
            let path = match pick % 5 {
                1 => layout::queue_table_file(root),
                _ => layout::deleted_topics_file(root),
            };
            let text = if forge {
                with_crc_line(data.to_vec())
            } else {
                data.to_vec()
            };
            (path, text)
        }
        3 => {
            let mut file = data.to_vec();
            if forge {
                file.resize(8, 0);
                let crc = crc32fast::hash(&file);
                file.extend_from_slice(&crc.to_be_bytes());
            }
            (layout::log_start_file(root), file)
        }
        _ => {
            // The progress file: two 44-byte slots at 0 and 4096, each with its CRC at 40.
            let mut file = vec![0u8; 4096 + 44];
            for (slot, at) in [0usize, 4096].into_iter().enumerate() {
                let part = data.get(slot * 40..).unwrap_or_default();
                let n = part.len().min(40);
                file[at..at + n].copy_from_slice(&part[..n]);
                if forge {
                    let crc = crc32fast::hash(&file[at..at + 40]);
                    file[at + 40..at + 44].copy_from_slice(&crc.to_be_bytes());
                }
            }
            (layout::dispatch_progress_file(root, "index"), file)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [pick, how, content @ ..] = data else {
        return;
    };
    let (crashed, forge) = (how & 1 == 1, how & 2 == 2);
    let template = template();
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("store");
    copy_dir(&template.root, &root);
    let (path, bytes) = damaged(&root, *pick, content, forge);
    std::fs::write(&path, bytes).unwrap();
    if crashed {
        std::fs::write(layout::abort_file(&root), b"").unwrap();
    }
    let Some(store) = open_or_refused(config(&root)) else {
        return;
    };
    for q in 0..2u32 {
        let got = store.get_message("Kept", q, 0, 64).unwrap();
        for m in &got.messages {
            assert!(m.crc_ok());
        }
        if !forge {
            let bodies: Vec<_> = got.messages.iter().map(|m| m.body.clone()).collect();
            let want: Vec<_> = template
                .acked
                .iter()
                .filter(|(queue, _, _)| *queue == q)
                .map(|(_, _, body)| body.clone())
                .collect();
            assert_eq!(bodies, want, "queue {q}");
        }
    }
    if !forge {
        assert_eq!(
            store.max_offset_in_queue("Gone", 0),
            0,
            "deletion forgotten"
        );
    }
    store.put_message(&message("Kept", 0, 99)).unwrap();
    store.shutdown().unwrap();
});
