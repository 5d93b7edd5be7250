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
//! assert_eq!(layout::parse_file_name("18446744073709551615"), None); // past i64::MAX
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
/// The name of the `TagCode` a store was opened with, when it has one.
pub const TAG_CODE_FILE: &str = "tag_code";
/// Topics deleted by `delete_topic`, with their cutoffs.
pub const DELETED_TOPICS_FILE: &str = "deleted_topics";
/// Where the commit log starts, recorded before retention deletes a file.
pub const LOG_START_FILE: &str = "log_start";
/// Directory of the key index's files.
pub const INDEX_DIR: &str = "index";
/// Directory of the dispatchers' progress files.
pub const DISPATCH_DIR: &str = "dispatch";
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

/// The offset a data file's name stands for; `None` for any other name, and for an
/// offset past `i64::MAX`: RocketMQ's offsets are signed 64-bit numbers, and a file named
/// so far up could not be ended or followed without overflowing.
pub fn parse_file_name(name: &str) -> Option<u64> {
    if name.len() != NAME_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse()
        .ok()
        .filter(|offset| *offset <= i64::MAX as u64)
}

/// Whether `name` is a file left half-built by an interrupted allocation.
pub fn is_tmp_file_name(name: &str) -> bool {
    name.ends_with(TMP_SUFFIX)
}

/// The data files (commit-log or consume-queue files) of `dir`, with the offset each one's
/// name stands for, in offset order. Unfinished `.tmp` files are left out (an open removes
/// them). Any other name is refused with [`std::io::ErrorKind::InvalidData`], naming the
/// file, as the store's open refuses it: a tool listing a directory the store would not
/// open must not show it as whole.
pub fn data_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        if is_tmp_file_name(&name) {
            continue;
        }
        let Some(offset) = parse_file_name(&name) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{name:?}: not a data file name (20 decimal digits, at most i64::MAX)"),
            ));
        };
        files.push((offset, path));
    }
    files.sort();
    Ok(files)
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

/// `{root}/tag_code`.
pub fn tag_code_file(root: &Path) -> PathBuf {
    root.join(TAG_CODE_FILE)
}

/// `{root}/deleted_topics`.
pub fn deleted_topics_file(root: &Path) -> PathBuf {
    root.join(DELETED_TOPICS_FILE)
}

/// `{root}/log_start`: the commit log's first offset (8 bytes, big-endian) and a CRC-32
/// of it, so that an open tells a file deleted by retention from one gone missing.
pub fn log_start_file(root: &Path) -> PathBuf {
    root.join(LOG_START_FILE)
}

/// `{root}/index/`: the key index's files, each named by its creation time
/// (`yyyyMMddHHmmssSSS`, local time).
pub fn index_dir(root: &Path) -> PathBuf {
    root.join(INDEX_DIR)
}

/// `{root}/dispatch/{name}`: the durable progress of the dispatcher `name` (`index` for
/// the key index).
pub fn dispatch_progress_file(root: &Path, name: &str) -> PathBuf {
    dispatch_dir(root).join(name)
}

/// `{root}/dispatch/`: the dispatchers' progress files.
pub fn dispatch_dir(root: &Path) -> PathBuf {
    root.join(DISPATCH_DIR)
}

/// What a path inside `consumequeue/` names, parsed back: the store root, topic and queue
/// id of a queue directory (`{root}/consumequeue/{topic}/{queue id}`) or of a file in one.
/// `None` for any other path.
///
/// ```
/// use std::path::Path;
/// use rocketstore::layout;
///
/// let root = Path::new("/store");
/// let file = layout::queue_dir(root, "TopicA", 3).join(layout::file_name(0));
/// assert_eq!(layout::parse_queue_path(&file), Some((root.to_owned(), "TopicA".into(), 3)));
/// assert_eq!(layout::parse_queue_path(&layout::commit_log_file(root, 0)), None);
/// ```
pub fn parse_queue_path(path: &Path) -> Option<(PathBuf, String, u32)> {
    let dir = match path.file_name()?.to_str().and_then(parse_file_name) {
        Some(_) => path.parent()?,
        None => path,
    };
    let queue_id = dir.file_name()?.to_str()?.parse().ok()?;
    let topic_dir = dir.parent()?;
    let queues = topic_dir.parent()?;
    if queues.file_name()? != CONSUME_QUEUE_DIR {
        return None;
    }
    let topic = topic_dir.file_name()?.to_str()?.to_owned();
    Some((queues.parent()?.to_owned(), topic, queue_id))
}

/// Every queue directory under `{root}/consumequeue/`, sorted; none when it is missing.
pub fn queue_dirs(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let queues = consume_queue_dir(root);
    if !queues.is_dir() {
        return Ok(dirs);
    }
    for topic in std::fs::read_dir(queues)? {
        let topic = topic?.path();
        if topic.is_dir() {
            for queue in std::fs::read_dir(&topic)? {
                let queue = queue?.path();
                if queue.is_dir() {
                    dirs.push(queue);
                }
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}
