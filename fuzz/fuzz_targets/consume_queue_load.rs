//! Arbitrary bytes as a consume-queue file: opening the store (after a clean exit and after
//! a crash) and reading through the queue never panics, and never serves a message the
//! commit log does not hold.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rocketstore::layout;
use rocketstore::{Message, MessageStore, StoreConfig};

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig::new(dir)
        .commit_log_file_size(64 * 1024)
        .consume_queue_entries_per_file(64)
        .preallocate(false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&crashed, data)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let store = MessageStore::open(config(dir.path())).unwrap();
        for i in 0..5u8 {
            store
                .put_message(&Message::new("Q", 0u32, Bytes::from(vec![i; 30])))
                .unwrap();
        }
    }
    let path = layout::queue_dir(dir.path(), "Q", 0).join(layout::file_name(0));
    let mut file = std::fs::read(&path).unwrap();
    let n = data.len().min(file.len());
    file[..n].copy_from_slice(&data[..n]);
    std::fs::write(&path, &file).unwrap();
    if crashed & 1 == 1 {
        std::fs::write(layout::abort_file(dir.path()), b"").unwrap();
    }
    let Ok(store) = MessageStore::open(config(dir.path())) else {
        return;
    };
    let max = store.max_offset_in_queue("Q", 0);
    let mut offset = store.min_offset_in_queue("Q", 0);
    while offset < max {
        let Ok(g) = store.get_message("Q", 0, offset, 8) else {
            return;
        };
        for m in &g.messages {
            assert!(m.crc_ok());
        }
        if g.next_offset <= offset {
            break;
        }
        offset = g.next_offset;
    }
});
