//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rocketstore::{FlushMode, Message, MessageStore, StoreConfig};

pub const SMALL_FILE: u64 = 64 * 1024;

pub fn sync_mode() -> FlushMode {
    FlushMode::Sync {
        timeout: Duration::from_secs(30),
    }
}

pub fn async_mode() -> FlushMode {
    FlushMode::Async {
        interval: Duration::from_millis(10),
        least_pages: 4,
        thorough_interval: Duration::from_millis(100),
    }
}

pub fn config(dir: &Path, mode: FlushMode) -> StoreConfig {
    StoreConfig::new(dir)
        .commit_log_file_size(SMALL_FILE)
        .flush_mode(mode)
}

pub fn open(dir: &Path, mode: FlushMode) -> MessageStore {
    MessageStore::open(config(dir, mode)).expect("open store")
}

/// A body that names its message, of a length that varies with `i`.
pub fn body(tag: &str, i: u64) -> Bytes {
    let mut s = format!("{tag}-{i}-");
    while s.len() < 20 + (i as usize * 37) % 300 {
        s.push((b'a' + (i % 26) as u8) as char);
    }
    Bytes::from(s)
}

pub fn message(topic: &str, queue: u32, tag: &str, i: u64) -> Message {
    Message::new(topic, queue, body(tag, i)).with_keys([format!("k{i}")])
}
