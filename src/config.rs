//! Every knob of the store, in one place, each with its default and unit.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
pub use crate::fs::mapped_file::Warmup;

/// When a put counts as acknowledged, and how dirty pages reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Group commit: a put returns only after the bytes it wrote are durable
    /// (fdatasync'ed). Producers waiting at the same moment share one flush.
    Sync {
        /// How long a put waits for its flush before returning
        /// [`PutStatus::FlushDiskTimeout`](crate::PutStatus::FlushDiskTimeout). Default: 5 s.
        /// Must not be zero.
        timeout: Duration,
    },
    /// A put returns after the copy into the page cache; a background thread flushes.
    Async {
        /// How often the flush thread wakes. Default: 500 ms. Must not be zero.
        interval: Duration,
        /// Flush only when at least this many 4 KiB pages are dirty. Default: 4.
        least_pages: u32,
        /// Flush everything, however little, at least this often. Default: 10 s.
        thorough_interval: Duration,
    },
}

impl FlushMode {
    /// Sync flush with RocketMQ's default 5 s timeout.
    pub fn sync() -> Self {
        FlushMode::Sync {
            timeout: Duration::from_secs(5),
        }
    }

    /// Async flush with RocketMQ's defaults: every 500 ms when 4 pages are dirty, everything every 10 s.
    pub fn async_default() -> Self {
        FlushMode::Async {
            interval: Duration::from_millis(500),
            least_pages: 4,
            thorough_interval: Duration::from_secs(10),
        }
    }

    /// Whether this is [`FlushMode::Sync`].
    pub fn is_sync(&self) -> bool {
        matches!(self, FlushMode::Sync { .. })
    }
}

impl Default for FlushMode {
    /// Async, as in RocketMQ.
    fn default() -> Self {
        FlushMode::async_default()
    }
}

/// Configuration of a [`MessageStore`](crate::MessageStore).
///
/// ```
/// use std::time::Duration;
/// use rocketstore::{FlushMode, StoreConfig};
///
/// let config = StoreConfig::new("/tmp/store")
///     .commit_log_file_size(64 << 20)
///     .flush_mode(FlushMode::Sync { timeout: Duration::from_secs(5) });
/// assert_eq!(config.max_message_size, 4 << 20);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Root directory; the commit log lives in `{root}/commitlog/`. No default.
    pub root_dir: PathBuf,
    /// Size of each commit-log file in bytes; a multiple of 4096, at least 64 KiB.
    /// Default: 1 GiB.
    pub commit_log_file_size: u64,
    /// Largest body accepted, in bytes; also the most body bytes of one batch (so a batch
    /// of one message takes what a single put takes). Default: 4 MiB.
    pub max_message_size: usize,
    /// Sync or async flush. Default: [`FlushMode::Async`] with RocketMQ's settings.
    pub flush_mode: FlushMode,
    /// The store's address, written into every record and message id.
    /// Default: `127.0.0.1:10911`.
    pub store_host: SocketAddr,
    /// When the append lock has been held this long, new puts fail at once with
    /// [`Error::PageCacheBusy`] instead of queueing. Default: 1 s. Must not be zero (a
    /// long limit turns it off).
    pub busy_limit: Duration,
    /// A put that spent longer than this inside the append path is logged (warn) with its
    /// time. Default: 500 ms.
    pub slow_put_threshold: Duration,
    /// Create the next commit-log files in the background before they are needed.
    /// Default: true. With `false` there is no background worker: each file is created
    /// when the writer reaches it, and [`warmup`](Self::warmup) is not applied (only a
    /// new store's first file has its start touched).
    pub preallocate: bool,
    /// How new files are prepared; `None` picks the measured best for the flush mode:
    /// [`Warmup::ZeroAndFlush`] for sync, [`Warmup::Touch`] for async. Default: `None`.
    pub warmup: Option<Warmup>,
    /// Entries per consume-queue file (20 bytes each). Default: 300,000 (6,000,000 bytes).
    pub consume_queue_entries_per_file: u32,
    /// How often consume queues and the checkpoint are flushed, and how often the key
    /// index and broker dispatchers flush and record their progress. Default: 1 s. Must
    /// not be zero.
    pub consume_queue_flush_interval: Duration,
    /// Most message bytes one `get`/`get_raw`/`get_message` call returns when the request
    /// sets no `max_bytes` of its own (at least one message is always returned), like
    /// RocketMQ's max transfer size. Default: 256 KiB.
    pub max_transfer_bytes: usize,
    /// Commit-log files older than this (by modification time) are deleted by retention.
    /// Default: 72 h.
    pub file_reserved_time: Duration,
    /// Hour of the day (local time, 0–23) at which expired files are deleted. Default: 4.
    pub delete_hour: u8,
    /// Above this used fraction of the filesystem, expired files are deleted at once
    /// instead of waiting for the hour. Default: 0.75.
    ///
    /// Every disk ratio is the used fraction as `df` shows it (and RocketMQ computes it):
    /// used blocks over used plus available ones, leaving out the blocks the filesystem
    /// reserves for root. Must be within 0..=1: 1 turns it off, 0 deletes expired files
    /// at any hour, as under disk pressure (the key index and broker dispatchers then do
    /// not hold the log; see `docs/DESIGN.md`, "Retention").
    pub disk_clean_ratio: f64,
    /// Above this used fraction, the oldest files are deleted whatever their age, one per
    /// disk sample. Default: 0.85. Must be above 0 and at most 1 (which turns it off).
    pub disk_force_clean_ratio: f64,
    /// Above this used fraction of the store's filesystem, puts are refused with
    /// [`Error::DiskFull`] until space is freed. Default: 0.90.
    pub disk_full_ratio: f64,
    /// How often disk usage is sampled. Default: 1 s. Must not be zero.
    pub disk_check_interval: Duration,
    /// Check the body CRC of the last file's records when reopening after a clean exit.
    /// Structure and consume-queue agreement are always checked, and CRCs always after a
    /// crash; this adds bit-rot detection at the price of reading every body of the last
    /// file (about 200 ms per GiB here). Default: false.
    pub verify_crc_on_clean_open: bool,
    /// Check the body CRC of every message read: a body damaged on disk is then an
    /// [`Error::Corrupted`](crate::Error::Corrupted) from `get_message`, `get_raw` and
    /// `lookup_message` (and left out of `query_message`'s answer, logged), never a
    /// changed message served as found. It costs about 90 ns per KiB of body here (`cargo bench --bench get`:
    /// 32 bodies of 1 KiB in 8.2 µs instead of 5.4 µs, from the page cache); a broker
    /// whose consumers check the CRC themselves can turn it off. Default: true.
    pub verify_crc_on_read: bool,
    /// After a clean exit, when the queue table lists at least this many queues, each
    /// queue's files are read at its first use instead of at open: opening 100,000 queues
    /// then reads none of them. A queue is checked against its table row when it is read;
    /// one that does not match is logged, served no further than it is intact, and
    /// rebuilt by the next open (the store is not marked clean). Below it, every queue is
    /// read and checked at open, and repaired before the open returns. Default: 10,000.
    pub lazy_queue_load_threshold: usize,
    /// The operator's override for a damaged log: when recovery meets an invalid record the
    /// store had made durable (below the checkpoint's durable offset, or anywhere after a
    /// clean exit), cut the log there, losing every record after it, instead of refusing
    /// the open with [`Error::Corrupted`](crate::Error::Corrupted); and when the log's
    /// first files are missing (it starts past the start retention recorded), open what
    /// is left instead of refusing with [`Error::BadStoreFile`](crate::Error::BadStoreFile).
    /// Set it only after deciding that the loss is acceptable (save a copy of the store
    /// first). Default: false.
    pub truncate_damaged_log: bool,
    /// Pause between two commit-log file deletions by retention, so deleting many files
    /// does not become one burst of I/O. Default: 100 ms (RocketMQ's
    /// `deleteCommitLogFilesInterval`).
    pub file_delete_interval: Duration,
    /// Hooks called around file operations; for fault-injection tests. Default: none.
    pub io_hook: Option<Arc<dyn IoHook>>,
    /// Supplies consume-queue tag codes other than the tag hash (delayed messages).
    /// Default: none.
    pub tag_code: Option<Arc<dyn crate::queue::entry::TagCode>>,
    /// Readers (consume queues, the key index, broker dispatchers, `lookup_message`) see
    /// only records below the confirm offset (`MessageStore::set_confirm_offset`), for a
    /// replicated store whose consumers must never read what a failover could take back.
    /// The confirm offset starts at 0 at each open: the replication layer sets it. Default:
    /// false.
    pub read_confirmed_only: bool,
    /// Build the key index (`{root}/index/`) that
    /// [`MessageStore::query_message`](crate::MessageStore::query_message) reads. Default:
    /// true (RocketMQ's `messageIndexEnable`).
    pub index_enabled: bool,
    /// Hash slots per index file. Default: 5,000,000 (RocketMQ's `maxHashSlotNum`).
    pub index_hash_slots: u32,
    /// Entries per index file, entry 0 (never used) included. Default: 20,000,000
    /// (RocketMQ's `maxIndexNum`): with the default slots, a file of 420,000,040 bytes.
    pub index_entries: u32,
    /// Most index files kept: starting one more removes the oldest, whose keys can then no
    /// longer be queried (their messages stay readable otherwise). 0: no cap. Index files
    /// also go with the commit-log files they point into. Default: 64 (about 27 GB at the
    /// default file size).
    pub index_max_files: usize,
    /// Most candidates one [`MessageStore::query_message`](crate::MessageStore::query_message)
    /// reads back from the log that turn out to be another key's or topic's message (or
    /// damaged, or gone): index entries whose hash equals the key's. Past it the query
    /// returns what it found, marked
    /// [`QueryResult::incomplete`](crate::QueryResult). It bounds the query's cost when
    /// many messages carry keys that collide with the one asked for (Java's
    /// `String.hashCode` collides easily: `"Aa"` and `"BB"`); the answers themselves are
    /// bounded by the query's `max`, and the key's own messages outside the time window
    /// do not count. 0: no cap. Default: 1,000 (natural keys almost never collide: a
    /// key's expected colliding entries in a full default index file are about 0.01).
    pub index_query_max_mismatches: usize,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("root_dir", &self.root_dir)
            .field("commit_log_file_size", &self.commit_log_file_size)
            .field("max_message_size", &self.max_message_size)
            .field("flush_mode", &self.flush_mode)
            .field("store_host", &self.store_host)
            .field("busy_limit", &self.busy_limit)
            .field("slow_put_threshold", &self.slow_put_threshold)
            .field("preallocate", &self.preallocate)
            .field("warmup", &self.warmup)
            .field(
                "consume_queue_entries_per_file",
                &self.consume_queue_entries_per_file,
            )
            .field(
                "consume_queue_flush_interval",
                &self.consume_queue_flush_interval,
            )
            .field("max_transfer_bytes", &self.max_transfer_bytes)
            .field("verify_crc_on_clean_open", &self.verify_crc_on_clean_open)
            .field("verify_crc_on_read", &self.verify_crc_on_read)
            .field("lazy_queue_load_threshold", &self.lazy_queue_load_threshold)
            .field("truncate_damaged_log", &self.truncate_damaged_log)
            .field("file_delete_interval", &self.file_delete_interval)
            .field("file_reserved_time", &self.file_reserved_time)
            .field("delete_hour", &self.delete_hour)
            .field("disk_clean_ratio", &self.disk_clean_ratio)
            .field("disk_force_clean_ratio", &self.disk_force_clean_ratio)
            .field("disk_full_ratio", &self.disk_full_ratio)
            .field("disk_check_interval", &self.disk_check_interval)
            .field("io_hook", &self.io_hook.is_some())
            .field("tag_code", &self.tag_code.is_some())
            .field("read_confirmed_only", &self.read_confirmed_only)
            .field("index_enabled", &self.index_enabled)
            .field("index_hash_slots", &self.index_hash_slots)
            .field("index_entries", &self.index_entries)
            .field("index_max_files", &self.index_max_files)
            .field(
                "index_query_max_mismatches",
                &self.index_query_max_mismatches,
            )
            .finish()
    }
}

/// Smallest commit-log file accepted.
pub const MIN_FILE_SIZE: u64 = 64 * 1024;
const PAGE: u64 = crate::fs::mapped_file::PAGE_SIZE as u64;

impl StoreConfig {
    /// Defaults for a store rooted at `root_dir`.
    pub fn new(root_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            root_dir: root_dir.into(),
            commit_log_file_size: 1 << 30,
            max_message_size: 4 << 20,
            flush_mode: FlushMode::default(),
            store_host: SocketAddr::from((Ipv4Addr::LOCALHOST, 10911)),
            busy_limit: Duration::from_secs(1),
            slow_put_threshold: Duration::from_millis(500),
            preallocate: true,
            warmup: None,
            consume_queue_entries_per_file: 300_000,
            consume_queue_flush_interval: Duration::from_secs(1),
            max_transfer_bytes: 256 * 1024,
            verify_crc_on_clean_open: false,
            verify_crc_on_read: true,
            lazy_queue_load_threshold: 10_000,
            truncate_damaged_log: false,
            file_delete_interval: Duration::from_millis(100),
            file_reserved_time: Duration::from_secs(72 * 3600),
            delete_hour: 4,
            disk_clean_ratio: 0.75,
            disk_force_clean_ratio: 0.85,
            disk_full_ratio: 0.90,
            disk_check_interval: Duration::from_secs(1),
            io_hook: None,
            tag_code: None,
            read_confirmed_only: false,
            index_enabled: true,
            index_hash_slots: 5_000_000,
            index_entries: 20_000_000,
            index_max_files: 64,
            index_query_max_mismatches: 1_000,
        }
    }

    /// Sets [`StoreConfig::tag_code`].
    pub fn tag_code(mut self, code: Arc<dyn crate::queue::entry::TagCode>) -> Self {
        self.tag_code = Some(code);
        self
    }

    /// Sets [`StoreConfig::read_confirmed_only`].
    pub fn read_confirmed_only(mut self, on: bool) -> Self {
        self.read_confirmed_only = on;
        self
    }

    /// Sets [`StoreConfig::index_enabled`].
    pub fn index_enabled(mut self, on: bool) -> Self {
        self.index_enabled = on;
        self
    }

    /// Sets the size of index files: [`StoreConfig::index_hash_slots`] and
    /// [`StoreConfig::index_entries`]. Files written with other sizes must go before the
    /// store opens with new ones.
    pub fn index_file_shape(mut self, hash_slots: u32, entries: u32) -> Self {
        self.index_hash_slots = hash_slots;
        self.index_entries = entries;
        self
    }

    /// Sets [`StoreConfig::index_max_files`].
    pub fn index_max_files(mut self, files: usize) -> Self {
        self.index_max_files = files;
        self
    }

    /// Sets [`StoreConfig::index_query_max_mismatches`].
    pub fn index_query_max_mismatches(mut self, candidates: usize) -> Self {
        self.index_query_max_mismatches = candidates;
        self
    }

    /// Sets [`StoreConfig::commit_log_file_size`].
    pub fn commit_log_file_size(mut self, bytes: u64) -> Self {
        self.commit_log_file_size = bytes;
        self
    }

    /// Sets [`StoreConfig::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`StoreConfig::flush_mode`].
    pub fn flush_mode(mut self, mode: FlushMode) -> Self {
        self.flush_mode = mode;
        self
    }

    /// Sets [`StoreConfig::store_host`].
    pub fn store_host(mut self, host: SocketAddr) -> Self {
        self.store_host = host;
        self
    }

    /// Sets [`StoreConfig::busy_limit`].
    pub fn busy_limit(mut self, limit: Duration) -> Self {
        self.busy_limit = limit;
        self
    }

    /// Sets [`StoreConfig::slow_put_threshold`].
    pub fn slow_put_threshold(mut self, threshold: Duration) -> Self {
        self.slow_put_threshold = threshold;
        self
    }

    /// Sets [`StoreConfig::preallocate`].
    pub fn preallocate(mut self, on: bool) -> Self {
        self.preallocate = on;
        self
    }

    /// Sets [`StoreConfig::warmup`].
    pub fn warmup(mut self, warmup: Warmup) -> Self {
        self.warmup = Some(warmup);
        self
    }

    /// Sets [`StoreConfig::consume_queue_entries_per_file`].
    pub fn consume_queue_entries_per_file(mut self, entries: u32) -> Self {
        self.consume_queue_entries_per_file = entries;
        self
    }

    /// Sets [`StoreConfig::consume_queue_flush_interval`].
    pub fn consume_queue_flush_interval(mut self, interval: Duration) -> Self {
        self.consume_queue_flush_interval = interval;
        self
    }

    /// Sets [`StoreConfig::max_transfer_bytes`].
    pub fn max_transfer_bytes(mut self, bytes: usize) -> Self {
        self.max_transfer_bytes = bytes;
        self
    }

    /// Sets [`StoreConfig::file_reserved_time`].
    pub fn file_reserved_time(mut self, time: Duration) -> Self {
        self.file_reserved_time = time;
        self
    }

    /// Sets [`StoreConfig::delete_hour`].
    pub fn delete_hour(mut self, hour: u8) -> Self {
        self.delete_hour = hour;
        self
    }

    /// Sets [`StoreConfig::disk_clean_ratio`] and [`StoreConfig::disk_force_clean_ratio`].
    pub fn disk_clean_ratios(mut self, clean: f64, force: f64) -> Self {
        self.disk_clean_ratio = clean;
        self.disk_force_clean_ratio = force;
        self
    }

    /// Sets [`StoreConfig::disk_full_ratio`].
    pub fn disk_full_ratio(mut self, ratio: f64) -> Self {
        self.disk_full_ratio = ratio;
        self
    }

    /// Sets [`StoreConfig::disk_check_interval`].
    pub fn disk_check_interval(mut self, interval: Duration) -> Self {
        self.disk_check_interval = interval;
        self
    }

    /// Sets [`StoreConfig::verify_crc_on_clean_open`].
    pub fn verify_crc_on_clean_open(mut self, on: bool) -> Self {
        self.verify_crc_on_clean_open = on;
        self
    }

    /// Sets [`StoreConfig::verify_crc_on_read`].
    pub fn verify_crc_on_read(mut self, on: bool) -> Self {
        self.verify_crc_on_read = on;
        self
    }

    /// Sets [`StoreConfig::lazy_queue_load_threshold`].
    pub fn lazy_queue_load_threshold(mut self, queues: usize) -> Self {
        self.lazy_queue_load_threshold = queues;
        self
    }

    /// Sets [`StoreConfig::truncate_damaged_log`].
    pub fn truncate_damaged_log(mut self, on: bool) -> Self {
        self.truncate_damaged_log = on;
        self
    }

    /// Sets [`StoreConfig::file_delete_interval`].
    pub fn file_delete_interval(mut self, interval: Duration) -> Self {
        self.file_delete_interval = interval;
        self
    }

    /// Sets [`StoreConfig::io_hook`].
    pub fn io_hook(mut self, hook: Arc<dyn IoHook>) -> Self {
        self.io_hook = Some(hook);
        self
    }

    /// The commit-log directory.
    pub fn commit_log_dir(&self) -> PathBuf {
        crate::layout::commit_log_dir(&self.root_dir)
    }

    /// The warm-up chosen: the configured one or the flush mode's default. It is applied
    /// only with [`preallocate`](Self::preallocate) on.
    pub fn effective_warmup(&self) -> Warmup {
        self.warmup.unwrap_or(if self.flush_mode.is_sync() {
            Warmup::ZeroAndFlush
        } else {
            Warmup::Touch
        })
    }

    pub(crate) fn index_shape(&self) -> IndexShape {
        IndexShape {
            slots: self.index_hash_slots,
            entries: self.index_entries,
            max_files: self.index_max_files,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidConfig { reason });
        let size = self.commit_log_file_size;
        if size < MIN_FILE_SIZE || !size.is_multiple_of(PAGE) || size > i32::MAX as u64 {
            return bad(format!(
                "commit_log_file_size {size} must be a multiple of {PAGE} between {MIN_FILE_SIZE} and {}",
                i32::MAX
            ));
        }
        if self.max_message_size == 0 || self.max_message_size > i32::MAX as usize {
            return bad(format!(
                "max_message_size {} must be between 1 and {}",
                self.max_message_size,
                i32::MAX
            ));
        }
        let entries = u64::from(self.consume_queue_entries_per_file);
        if entries == 0 || entries * 20 > i32::MAX as u64 {
            return bad(format!(
                "consume_queue_entries_per_file {entries} must be between 1 and {}",
                i32::MAX / 20
            ));
        }
        validate_index_shape(&self.index_shape())?;
        if self.delete_hour > 23 {
            return bad(format!("delete_hour {} must be 0..=23", self.delete_hour));
        }
        if !(self.disk_full_ratio > 0.0 && self.disk_full_ratio <= 1.0) {
            return bad(format!(
                "disk_full_ratio {} must be in (0, 1]",
                self.disk_full_ratio
            ));
        }
        // A force ratio of 0 (meant as "off") would delete the oldest file, whatever its
        // age, at every disk sample; RocketMQ's percentages (75, 85) would never clean.
        // 1.0 turns either off; a clean ratio of 0 deletes expired files at any hour.
        let clean = self.disk_clean_ratio;
        if !(0.0..=1.0).contains(&clean) {
            return bad(format!("disk_clean_ratio {clean} must be in [0, 1]"));
        }
        let force = self.disk_force_clean_ratio;
        if !(force > 0.0 && force <= 1.0) {
            return bad(format!(
                "disk_force_clean_ratio {force} must be in (0, 1] (1 turns it off)"
            ));
        }
        // A zero interval would make its thread spin; a zero busy limit would refuse every
        // put that found the append lock held at all (not "off": a long one is).
        let intervals = [
            ("busy_limit", self.busy_limit),
            (
                "consume_queue_flush_interval",
                self.consume_queue_flush_interval,
            ),
            ("disk_check_interval", self.disk_check_interval),
            match self.flush_mode {
                FlushMode::Sync { timeout } => ("the sync flush timeout", timeout),
                FlushMode::Async { interval, .. } => ("the async flush interval", interval),
            },
        ];
        if let Some((name, _)) = intervals.iter().find(|(_, d)| d.is_zero()) {
            return bad(format!("{name} must not be zero"));
        }
        if self.root_dir.as_os_str().is_empty() {
            return bad("root_dir is empty".into());
        }
        Ok(())
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root_dir
    }
}

/// The key index's geometry and bounds, from the store config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexShape {
    pub slots: u32,
    pub entries: u32,
    pub max_files: usize,
}

/// Checks the configured geometry of index files.
fn validate_index_shape(shape: &IndexShape) -> Result<()> {
    let bad = |reason: String| Err(Error::InvalidConfig { reason });
    if shape.slots == 0 || shape.slots > i32::MAX as u32 {
        return bad(format!(
            "index_hash_slots must be within 1..={}, not {}",
            i32::MAX,
            shape.slots
        ));
    }
    if shape.entries < 2 || shape.entries > i32::MAX as u32 {
        return bad(format!(
            "index_entries must be within 2..={} (entry 0 is never used), not {}",
            i32::MAX,
            shape.entries
        ));
    }
    Ok(())
}
