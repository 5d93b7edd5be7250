//! The store's files on disk: every file and directory name, built and parsed in one
//! place. Tools, tests and examples use it too, so a name is spelled once.
//!
//! ```text
//! {root}/
//!   lock  abort  checkpoint  queue_table
//!   commitlog/{offset:020}                      commit-log files, named by first offset
//!   consumequeue/{topic}/{queue id}/{byte:020}  consume-queue files, named likewise
//! ```
//!
//! ```
//! use std::path::Path;
//! use rocketstore::layout;
//!
//! let root = Path::new("/var/lib/broker/store");
//! assert_eq!(
//!     layout::commit_log_file(root, 1 << 30),
//!     root.join("commitlog/00000000001073741824")
//! );
//! assert_eq!(layout::parse_file_name("00000000001073741824"), Some(1 << 30));
//! assert_eq!(layout::parse_file_name("notes.txt"), None);
//! ```

use std::path::{Path, PathBuf};

/// Directory of the commit-log files, under the root.
pub const COMMIT_LOG_DIR: &str = "commitlog";
/// Directory of the consume queues, under the root.
pub const CONSUME_QUEUE_DIR: &str = "consumequeue";
/// The lock file, held with an exclusive `flock` while the store is open.
pub const LOCK_FILE: &str = "lock";
/// The abort marker: present while the store runs; found at open, the last exit was not
/// clean.
pub const ABORT_FILE: &str = "abort";
/// The checkpoint file.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// The queue table: every queue's next offset, at the last open or clean shutdown.
pub const QUEUE_TABLE_FILE: &str = "queue_table";
/// Suffix of a file being built before it is renamed into place.
pub const TMP_SUFFIX: &str = ".tmp";

/// Digits of a data file's name.
const NAME_DIGITS: usize = 20;

/// The name of a commit-log or consume-queue file whose first byte is at `offset`: the
/// offset in decimal, zero-padded to 20 digits.
pub fn file_name(offset: u64) -> String {
    format!("{offset:0NAME_DIGITS$}")
}

/// The name a file has while it is being built.
pub fn tmp_file_name(offset: u64) -> String {
    format!("{}{TMP_SUFFIX}", file_name(offset))
}

/// The offset a data file's name stands for; `None` for any other name.
pub fn parse_file_name(name: &str) -> Option<u64> {
    if name.len() != NAME_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// Whether `name` is a file left half-built by an interrupted allocation.
pub fn is_tmp_file_name(name: &str) -> bool {
    name.ends_with(TMP_SUFFIX)
}

/// `{root}/commitlog`.
pub fn commit_log_dir(root: &Path) -> PathBuf {
    root.join(COMMIT_LOG_DIR)
}

/// The commit-log file whose first byte is at `offset`.
pub fn commit_log_file(root: &Path, offset: u64) -> PathBuf {
    commit_log_dir(root).join(file_name(offset))
}

/// `{root}/consumequeue`.
pub fn consume_queue_dir(root: &Path) -> PathBuf {
    root.join(CONSUME_QUEUE_DIR)
}

/// `{root}/consumequeue/{topic}/{queue_id}`.
pub fn queue_dir(root: &Path, topic: &str, queue_id: u32) -> PathBuf {
    consume_queue_dir(root)
        .join(topic)
        .join(queue_id.to_string())
}

/// `{root}/lock`.
pub fn lock_file(root: &Path) -> PathBuf {
    root.join(LOCK_FILE)
}

/// `{root}/abort`.
pub fn abort_file(root: &Path) -> PathBuf {
    root.join(ABORT_FILE)
}

/// `{root}/checkpoint`.
pub fn checkpoint_file(root: &Path) -> PathBuf {
    root.join(CHECKPOINT_FILE)
}

/// `{root}/queue_table`.
pub fn queue_table_file(root: &Path) -> PathBuf {
    root.join(QUEUE_TABLE_FILE)
}
