//! Arbitrary bytes as the tail of the last commit-log file after a crash: the store opens,
//! serves only valid messages, and takes new puts; never a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rocketstore::layout;
use rocketstore::{FlushMode, Message, MessageStore, StoreConfig};

const FILE: u64 = 64 * 1024;

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig::new(dir)
        .commit_log_file_size(FILE)
        .consume_queue_entries_per_file(64)
        .flush_mode(FlushMode::sync())
        .preallocate(false)
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    // A few valid records first, so the fuzzed bytes land after real data.
    let end = {
        let store = MessageStore::open(config(dir.path())).unwrap();
        for i in 0..3u32 {
            store
                .put_message(&Message::new("Fuzz", i % 2, Bytes::from(vec![i as u8; 40])))
                .unwrap();
        }
        store.max_physical_offset()
    };
    let path = layout::commit_log_file(dir.path(), 0);
    let mut file = std::fs::read(&path).unwrap();
    let room = file.len() - end as usize;
    let n = data.len().min(room);
    file[end as usize..end as usize + n].copy_from_slice(&data[..n]);
    std::fs::write(&path, &file).unwrap();
    std::fs::write(layout::abort_file(dir.path()), b"").unwrap();

    let store = MessageStore::open(config(dir.path())).expect("recovery must succeed");
    assert!(store.max_physical_offset() >= end);
    for q in 0..2 {
        let max = store.max_offset_in_queue("Fuzz", q);
        let mut offset = 0;
        while offset < max {
            let g = store.get_message("Fuzz", q, offset, 16).unwrap();
            assert!(!g.messages.is_empty());
            for m in &g.messages {
                assert!(m.crc_ok());
            }
            offset = g.next_offset;
        }
    }
    store
        .put_message(&Message::new("Fuzz", 0u32, Bytes::from_static(b"after")))
        .unwrap();
});
