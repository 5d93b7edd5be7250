//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rocketstore::layout;
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
        // Retention by disk usage would depend on the machine's disk (this one reports
        // over 70% used, most of it reserved): tests about it set their own ratios.
        .disk_clean_ratios(1.0, 1.0)
        // Nor may the daily deletion hour fall during a test: tests that expire files
        // delete them when they choose.
        .delete_hour(hour_far_from_now())
        // Small index files: tests fill them and roll over, and a small filesystem has room.
        .index_file_shape(SMALL_INDEX_SLOTS, SMALL_INDEX_ENTRIES)
}

pub const SMALL_INDEX_SLOTS: u32 = 512;
pub const SMALL_INDEX_ENTRIES: u32 = 4096;

/// An hour of the day twelve hours from now (local time).
pub fn hour_far_from_now() -> u8 {
    use chrono::Timelike;
    ((chrono::Local::now().hour() + 12) % 24) as u8
}

/// Waits until the consume queues and the key index hold every record the store has:
/// both hold retention's floor, and reads see only what they hold. For stores with the
/// key index on (the default).
pub fn settled(store: &MessageStore) {
    let end = store.max_physical_offset();
    let long = Duration::from_secs(30);
    assert!(store.wait_dispatched_to(end, long), "queues behind {end}");
    assert!(
        store.wait_dispatcher("index", end, long),
        "index behind {end}"
    );
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

/// Puts messages of `topic`/0 until the log spans `files` commit-log files of
/// [`SMALL_FILE`] (the last one begun).
pub fn fill_log_files(store: &MessageStore, topic: &str, files: u64) {
    let mut i = 0;
    while store.max_physical_offset() < files * SMALL_FILE {
        store.put_message(&message(topic, 0, "f", i)).unwrap();
        i += 1;
    }
}

/// Writes `{root}/log_start` as retention records it (FORMAT.md: the offset, big-endian,
/// then a CRC-32 of those 8 bytes).
pub fn write_log_start(root: &Path, start: u64) {
    let offset = start.to_be_bytes();
    let mut record = offset.to_vec();
    record.extend_from_slice(&crc32fast::hash(&offset).to_be_bytes());
    std::fs::write(layout::log_start_file(root), record).unwrap();
}

/// Blocks every sync while armed (of the commit log, the consume queues, the key index:
/// any thread's), until released: a release lets every stuck sync go on.
pub struct StallSync {
    armed: std::sync::Mutex<bool>,
    disarmed: std::sync::Condvar,
    stalled: (
        crossbeam_channel::Sender<()>,
        crossbeam_channel::Receiver<()>,
    ),
}

impl StallSync {
    pub fn new(armed: bool) -> std::sync::Arc<Self> {
        std::sync::Arc::new(StallSync {
            armed: std::sync::Mutex::new(armed),
            disarmed: std::sync::Condvar::new(),
            stalled: crossbeam_channel::unbounded(),
        })
    }

    pub fn arm(&self) {
        *self.armed.lock().unwrap() = true;
    }

    /// Waits until a sync is stuck in the hook.
    pub fn wait_stalled(&self) {
        self.stalled.1.recv().unwrap();
    }

    /// Disarms the hook and lets every stuck sync go on.
    pub fn release(&self) {
        *self.armed.lock().unwrap() = false;
        self.disarmed.notify_all();
    }
}

impl rocketstore::IoHook for StallSync {
    fn before_sync(&self, _path: &Path) -> std::io::Result<()> {
        let mut armed = self.armed.lock().unwrap();
        if *armed {
            let _ = self.stalled.0.send(());
            while *armed {
                armed = self.disarmed.wait(armed).unwrap();
            }
        }
        Ok(())
    }
}

/// A random body of 16..2016 bytes, the same for the same seed, producer and index: a
/// crash-test child and its checking parent agree on it without sending it.
pub fn child_body(seed: u64, producer: u64, i: u64) -> Bytes {
    let mut rng = Rng(seed ^ (producer << 32) ^ i ^ 0x9E37_79B9_7F4A_7C15);
    let len = 16 + rng.below(2000) as usize;
    Bytes::from((0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>())
}

/// A small deterministic generator (xorshift64*) for randomised tests with a printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Rewrites the checkpoint of a closed store so that it vouches for nothing at or past
/// `offset`, as the checkpoint of a crash that happened before it covered those bytes.
/// The queue table the clean shutdown wrote goes too: a crashed run leaves only the one
/// written when it was opened, which holds less.
pub fn checkpoint_vouches_below(dir: &Path, offset: u64) {
    let _ = std::fs::remove_file(layout::queue_table_file(dir));
    let path = layout::checkpoint_file(dir);
    let cp = rocketstore::CheckpointTimes::read(&path)
        .unwrap()
        .unwrap_or_default();
    rocketstore::CheckpointTimes {
        physic_offset: cp.physic_offset.min(offset),
        ..cp
    }
    .write(&path)
    .unwrap();
}

/// Tears the log of a closed store at `offset` (in its first file) as a crash would: the
/// record there zeroed, the checkpoint vouching for nothing from there on, and `abort`
/// left behind. The next open cuts the log at `offset`.
pub fn tear_log_at(dir: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    checkpoint_vouches_below(dir, offset);
    std::fs::OpenOptions::new()
        .write(true)
        .open(layout::commit_log_file(dir, 0))
        .unwrap()
        .write_all_at(&[0u8; 64], offset)
        .unwrap();
    std::fs::write(layout::abort_file(dir), b"").unwrap();
}

/// Copies the directory tree `from` to `to` (a store, to damage a copy of it).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
