//! One key-index file in RocketMQ's byte format (`docs/FORMAT.md`, "Key index"):
//!
//! ```text
//! header (40 B): begin store time i64 | end store time i64 | begin offset i64 |
//!                end offset i64 | used slots i32 | entry count i32 (starts at 1)
//! slots:         i32 per slot: number of the newest entry whose key hashes there (0: none)
//! entries:       key hash i32 | commit-log offset i64 | seconds since begin i32 |
//!                previous entry in the slot's chain i32 (0: end)
//! ```
//!
//! One thread writes (the index dispatcher); queries walk the chains at the same time.
//! An entry is stored before the slot that points at it, with `Release`, so a query that
//! loads the slot sees the whole entry. A chain is followed only while entry numbers
//! decrease, so a damaged file can make a query miss, never loop.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::mapped_file::words::MappedWords;
use crate::fs::sparse_file::next_allocation;

/// Size of the header.
pub const HEADER_LEN: u64 = 40;
/// Size of one hash slot.
pub const SLOT_LEN: u64 = 4;
/// Size of one entry.
pub const ENTRY_LEN: u64 = 20;

const HEADER_WORDS: usize = (HEADER_LEN / 4) as usize;
const ENTRY_WORDS: usize = (ENTRY_LEN / 4) as usize;
const W_BEGIN_TS: usize = 0;
const W_END_TS: usize = 2;
const W_BEGIN_OFFSET: usize = 4;
const W_END_OFFSET: usize = 6;
const W_SLOTS_USED: usize = 8;
const W_COUNT: usize = 9;

/// Bytes of a file of `slots` slots and `entries` entries (entry 0 included, never used).
pub fn index_file_len(slots: u32, entries: u32) -> u64 {
    entry_pos(slots, entries)
}

/// Byte position of hash slot `slot`.
pub(crate) fn slot_pos(slot: u32) -> u64 {
    HEADER_LEN + SLOT_LEN * u64::from(slot)
}

/// Byte position of entry `n` in a file of `slots` slots.
pub(crate) fn entry_pos(slots: u32, n: u32) -> u64 {
    slot_pos(slots) + ENTRY_LEN * u64::from(n)
}

/// RocketMQ's key hash: Java's `String.hashCode` of `key` (over UTF-16 code units), made
/// non-negative (`i32::MIN` becomes 0).
pub fn key_hash(key: &str) -> u32 {
    index_hash(&[key])
}

/// [`key_hash`] of the concatenation of `parts` (`[topic, "#", key]`), without building it.
pub(crate) fn index_hash(parts: &[&str]) -> u32 {
    let mut h: i32 = 0;
    for part in parts {
        if part.is_ascii() {
            // An ASCII byte is its own UTF-16 code unit.
            for &b in part.as_bytes() {
                h = h.wrapping_mul(31).wrapping_add(i32::from(b));
            }
        } else {
            for unit in part.encode_utf16() {
                h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
            }
        }
    }
    h.checked_abs().unwrap_or(0) as u32
}

/// The header's fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexHeader {
    /// Store time of the first entry's message, ms.
    pub begin_timestamp: i64,
    /// Store time of the last entry's message, ms.
    pub end_timestamp: i64,
    /// Commit-log offset of the first entry's message.
    pub begin_offset: u64,
    /// Commit-log offset of the last entry's message.
    pub end_offset: u64,
    /// Slots holding a chain.
    pub slots_used: u32,
    /// Next entry number (entries `1..count` are written).
    pub count: u32,
}

impl IndexHeader {
    /// Whether the entries' times can be told from the header: the file's begin time is
    /// positive and not after its end time. Entry times are seconds after the begin time,
    /// and a file whose first message was stamped at or before the epoch (or whose header
    /// is damaged) gives them none.
    pub(crate) fn times_usable(&self) -> bool {
        self.begin_timestamp > 0 && self.begin_timestamp <= self.end_timestamp
    }

    /// Reads a header from the first [`HEADER_LEN`] bytes of a file.
    pub fn decode(b: &[u8; HEADER_LEN as usize]) -> IndexHeader {
        let i64_at = |at: usize| i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        IndexHeader {
            begin_timestamp: i64_at(0),
            end_timestamp: i64_at(8),
            begin_offset: i64_at(16) as u64,
            end_offset: i64_at(24) as u64,
            slots_used: u32_at(32),
            count: u32_at(36),
        }
    }
}

/// One entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The key's hash.
    pub hash: u32,
    /// Commit-log offset of the message.
    pub offset: u64,
    /// Seconds from the header's begin time to the message's store time.
    pub time_diff: i32,
    /// Previous entry of the same slot (0: none).
    pub prev: u32,
}

impl IndexEntry {
    /// Reads an entry from its [`ENTRY_LEN`] bytes.
    pub fn decode(b: &[u8; ENTRY_LEN as usize]) -> IndexEntry {
        let u32_at = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        IndexEntry {
            hash: u32_at(0),
            offset: u64::from_be_bytes(b[4..12].try_into().expect("8 bytes")),
            time_diff: u32_at(12) as i32,
            prev: u32_at(16),
        }
    }
}

pub(crate) struct IndexFile {
    words: MappedWords,
    slots: u32,
    entries: u32,
    /// Bytes allocated on disk from the start of the file (the writer's).
    allocated: AtomicU64,
    /// Fault seam for the file's creation, allocations and syncs.
    hook: Option<Arc<dyn IoHook>>,
}

impl std::fmt::Debug for IndexFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexFile")
            .field("path", &self.path())
            .field("header", &self.header())
            .finish()
    }
}

impl IndexFile {
    /// Creates `path`, sized for `slots` and `entries`, with its header and slots
    /// allocated on disk. The caller syncs the directory.
    pub(crate) fn create(
        path: &Path,
        (slots, entries): (u32, u32),
        hook: Option<Arc<dyn IoHook>>,
    ) -> Result<IndexFile> {
        if let Some(h) = &hook {
            h.before_create(path)
                .map_err(|e| Error::io("create", path, e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        let len = index_file_len(slots, entries);
        let result = (|| {
            file.set_len(len)
                .map_err(|e| Error::io("create", path, e))?;
            let f = IndexFile::map(file, path, (slots, entries), hook)?;
            f.ensure_allocated(f.entry_end(1))?;
            f.words.store(W_COUNT, 1);
            Ok(f)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Opens an existing file, which must have the configured size.
    pub(crate) fn open(
        path: &Path,
        (slots, entries): (u32, u32),
        hook: Option<Arc<dyn IoHook>>,
    ) -> Result<IndexFile> {
        let (file, len) = crate::fs::ops::open_existing(path)?;
        if len != index_file_len(slots, entries) {
            return Err(Error::BadStoreFile {
                path: path.to_owned(),
                reason: format!(
                    "{len} bytes: an index file of {slots} slots and {entries} entries has {} \
                     (was the index configured differently when it was written?)",
                    index_file_len(slots, entries)
                ),
            });
        }
        // After a crash an allocation may not have survived: the writer allocates again
        // (a cheap no-op where blocks exist) before it stores anywhere.
        IndexFile::map(file, path, (slots, entries), hook)
    }

    /// Maps `file`, with nothing counted as allocated yet.
    fn map(
        file: std::fs::File,
        path: &Path,
        (slots, entries): (u32, u32),
        hook: Option<Arc<dyn IoHook>>,
    ) -> Result<IndexFile> {
        Ok(IndexFile {
            words: MappedWords::map(file, path.to_owned())?,
            slots,
            entries,
            allocated: AtomicU64::new(0),
            hook,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        self.words.path()
    }

    pub(crate) fn header(&self) -> IndexHeader {
        let w = &self.words;
        IndexHeader {
            begin_timestamp: w.load_u64_aligned(W_BEGIN_TS) as i64,
            end_timestamp: w.load_u64_aligned(W_END_TS) as i64,
            begin_offset: w.load_u64_aligned(W_BEGIN_OFFSET),
            end_offset: w.load_u64_aligned(W_END_OFFSET),
            slots_used: w.load(W_SLOTS_USED),
            count: w.load(W_COUNT),
        }
    }

    fn slot_word(&self, slot: u32) -> usize {
        HEADER_WORDS + slot as usize
    }

    fn entry_word(&self, n: u32) -> usize {
        HEADER_WORDS + self.slots as usize + ENTRY_WORDS * n as usize
    }

    /// Byte position just past entry `n`.
    fn entry_end(&self, n: u32) -> u64 {
        entry_pos(self.slots, n) + ENTRY_LEN
    }

    fn ensure_allocated(&self, need: u64) -> Result<()> {
        let have = self.allocated.load(Ordering::Relaxed);
        if need <= have {
            return Ok(());
        }
        let size = index_file_len(self.slots, self.entries);
        let to = next_allocation(have, need, size);
        if let Some(h) = &self.hook {
            h.before_allocate(self.path())
                .map_err(|e| Error::io("allocate", self.path(), e))?;
        }
        let end = match self.words.allocate(have, to) {
            Ok(()) => to,
            // A doubled step may not fit where the exact need still does.
            Err(e) if e.is_no_space() && to > need => {
                self.words.allocate(have, need)?;
                need
            }
            Err(e) => return Err(e),
        };
        // Only what was allocated: a store past it must allocate first.
        self.allocated.store(end, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn entry(&self, n: u32) -> IndexEntry {
        let at = self.entry_word(n);
        let w = &self.words;
        IndexEntry {
            hash: w.load(at),
            offset: w.load_u64(at + 1),
            time_diff: w.load(at + 3) as i32,
            prev: w.load(at + 4),
        }
    }

    pub(crate) fn slot(&self, slot: u32) -> u32 {
        self.words.load(self.slot_word(slot))
    }

    /// Reads `hash`'s slot and drops it: a [`IndexFile::put`] of that hash that follows
    /// finds it in the cache. Several in a row overlap their cache misses.
    pub(crate) fn touch_slot(&self, hash: u32) {
        std::hint::black_box(self.slot(hash % self.slots));
    }

    /// Whether no entry fits any more.
    pub(crate) fn is_full(&self) -> bool {
        self.words.load(W_COUNT) >= self.entries
    }

    /// Adds an entry for `hash` (see [`key_hash`]) of the message at `offset`, stored at
    /// `timestamp`. Returns false, writing nothing, when the file is full. Only the
    /// index's writer calls this.
    pub(crate) fn put(&self, hash: u32, offset: u64, timestamp: i64) -> Result<bool> {
        let w = &self.words;
        let n = w.load(W_COUNT).max(1);
        if n >= self.entries {
            return Ok(false);
        }
        self.ensure_allocated(self.entry_end(n))?;
        let begin = if n == 1 {
            w.store_u64_aligned(W_BEGIN_TS, timestamp as u64);
            w.store_u64_aligned(W_BEGIN_OFFSET, offset);
            timestamp
        } else {
            w.load_u64_aligned(W_BEGIN_TS) as i64
        };
        let diff = if begin <= 0 {
            0
        } else {
            (timestamp.saturating_sub(begin) / 1000).clamp(0, i64::from(i32::MAX)) as i32
        };
        let slot = hash % self.slots;
        let prev = self.slot(slot);
        let prev = if prev >= n { 0 } else { prev };
        let at = self.entry_word(n);
        w.store(at, hash);
        w.store_u64(at + 1, offset);
        w.store(at + 3, diff as u32);
        w.store(at + 4, prev);
        // Published: a query that loads the slot sees the entry.
        w.store(self.slot_word(slot), n);
        if prev == 0 {
            w.store(W_SLOTS_USED, w.load(W_SLOTS_USED).saturating_add(1));
        }
        w.store_u64_aligned(W_END_TS, timestamp as u64);
        w.store_u64_aligned(W_END_OFFSET, offset);
        w.store(W_COUNT, n + 1);
        Ok(true)
    }

    /// Walks the chain of `hash`'s slot, newest entry first, calling `visit` with each
    /// entry of that hash whose store time (to the second) may lie in `begin_ms..=end_ms`.
    /// Stops when `visit` returns false, or once entries are older than `begin_ms`.
    pub(crate) fn walk(
        &self,
        hash: u32,
        begin_ms: i64,
        end_ms: i64,
        mut visit: impl FnMut(u64) -> bool,
    ) {
        let h = self.header();
        let timed = h.times_usable();
        let mut n = self.slot(hash % self.slots);
        while n > 0 && n < self.entries {
            let e = self.entry(n);
            // Entry times are whole seconds after the file's begin time. Without a usable
            // begin time every entry is a candidate: the caller checks each message's own.
            let from = h
                .begin_timestamp
                .saturating_add(i64::from(e.time_diff) * 1000);
            if timed && from.saturating_add(999) < begin_ms {
                break;
            }
            if e.hash == hash && (!timed || from <= end_ms) && !visit(e.offset) {
                return;
            }
            if e.prev >= n {
                break;
            }
            n = e.prev;
        }
    }

    /// How many entries the file holds, told from the entries themselves where the
    /// header may be wrong: the number of the last one not all zeros. Past the last
    /// entry written a file holds only zeros (it was created sparse, and a cut zeroes
    /// past what it keeps). A header that counts the file full is taken as it is (an
    /// older file is always full, and its last entry can be all zeros: the log's first
    /// message, for a key of hash 0); any other count is checked against the entries
    /// around it, and the entries are scanned when it disagrees.
    pub(crate) fn written(&self) -> u32 {
        let is_written = |n: u32| {
            let e = self.entry(n);
            e.hash != 0 || e.offset != 0 || e.time_diff != 0 || e.prev != 0
        };
        let count = self.header().count;
        if count == self.entries
            || ((2..self.entries).contains(&count) && is_written(count - 1) && !is_written(count))
        {
            return count - 1;
        }
        (1..self.entries)
            .rev()
            .find(|&n| is_written(n))
            .unwrap_or(0)
    }

    /// Rebuilds the header and hash slots of a file whose header was found damaged (a
    /// zeroed first block takes slots with it) from its first `count` entries: each slot
    /// points at the newest entry of its hash, and the begin time is forgotten, since
    /// it cannot be told from the entries (every entry is then a candidate for any time
    /// window; a query checks each message's own time). The rest of the header and the
    /// zeros past the entries come from the [`cut`](Self::cut) that follows.
    pub(crate) fn rebuild_slots(&self, count: u32) -> Result<()> {
        self.ensure_allocated(self.entry_end(0))?;
        let mut newest = vec![0u32; self.slots as usize];
        for n in 1..=count.min(self.entries - 1) {
            newest[(self.entry(n).hash % self.slots) as usize] = n;
        }
        for (slot, n) in newest.into_iter().enumerate() {
            self.words.store(self.slot_word(slot as u32), n);
        }
        self.words.store_u64_aligned(W_BEGIN_TS, 0);
        Ok(())
    }

    /// After a crash: keeps entries `1..=keep` (the ones synced when the index last
    /// recorded its progress) and forgets the rest: slots that point past them are pointed
    /// back at the newest kept entry of their chain, the header is rewritten, and whatever
    /// lies past the kept entries is zeroed, so the file reads as if the writer had stopped
    /// there. The file is synced. Returns the number of entries kept.
    pub(crate) fn cut(&self, keep: u32) -> Result<u32> {
        let count = keep.saturating_add(1).min(self.entries);
        // Slots that point at a forgotten entry: the newest kept entry of each.
        let mut broken = std::collections::HashMap::new();
        let mut used = 0u32;
        for s in 0..self.slots {
            let v = self.slot(s);
            if v >= count {
                broken.insert(s, 0u32);
            } else if v > 0 {
                used += 1;
            }
        }
        // Header and slots are stored into below: their blocks exist before any store.
        self.ensure_allocated(self.entry_end(0))?;
        if !broken.is_empty() {
            for n in 1..count {
                if let Some(newest) = broken.get_mut(&(self.entry(n).hash % self.slots)) {
                    *newest = n;
                }
            }
            for (s, n) in &broken {
                self.words.store(self.slot_word(*s), *n);
                used += u32::from(*n > 0);
            }
        }
        let w = &self.words;
        w.store(W_SLOTS_USED, used);
        w.store(W_COUNT, count);
        if count > 1 {
            let last = self.entry(count - 1);
            let begin = w.load_u64_aligned(W_BEGIN_TS) as i64;
            let end = if begin > 0 {
                begin
                    .saturating_add(i64::from(last.time_diff) * 1000)
                    .saturating_add(999)
            } else {
                0
            };
            w.store_u64_aligned(W_END_TS, end as u64);
            w.store_u64_aligned(W_BEGIN_OFFSET, self.entry(1).offset);
            w.store_u64_aligned(W_END_OFFSET, last.offset);
        } else {
            for word in [W_BEGIN_TS, W_END_TS, W_BEGIN_OFFSET, W_END_OFFSET] {
                w.store_u64_aligned(word, 0);
            }
        }
        // Whatever the crashed run wrote past the cut goes, so that past the last entry
        // there are only zeros (or entries of this run) whenever the next cut looks.
        self.words.zero_from(self.entry_end(count - 1))?;
        self.sync()?;
        Ok(count - 1)
    }

    /// Makes every entry and slot written so far durable.
    pub(crate) fn sync(&self) -> Result<()> {
        if let Some(h) = &self.hook {
            h.before_sync(self.path())
                .map_err(|e| Error::io("sync", self.path(), e))?;
        }
        self.words.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_matches_java() {
        // Values of Java's String.hashCode, computed over UTF-16 code units.
        assert_eq!(key_hash("abc"), 96354);
        assert_eq!(key_hash("TopicA#order-42"), 375_142_830);
        // Negative in Java: made non-negative, as RocketMQ's Math.abs does.
        assert_eq!(key_hash("TopicA#order-123456"), 1_339_743_853);
        // i32::MIN has no absolute value: RocketMQ then uses 0.
        assert_eq!(key_hash("polygenelubricants"), 0);
        // In parts, and outside ASCII (one unit for U+00E9, two surrogates for U+1F600).
        assert_eq!(index_hash(&["Topic", "#", "k\u{e9}y"]), 1_904_061_209);
        assert_eq!(index_hash(&["T", "#", "\u{1F600}"]), 4_308_978);
    }

    fn file(dir: &Path, slots: u32, entries: u32) -> IndexFile {
        IndexFile::create(&dir.join("idx"), (slots, entries), None).unwrap()
    }

    fn found(f: &IndexFile, hash: u32) -> Vec<u64> {
        let mut out = Vec::new();
        f.walk(hash, 0, i64::MAX, |o| {
            out.push(o);
            true
        });
        out
    }

    #[test]
    fn chains_hold_every_entry_of_a_slot_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), 4, 10);
        for (i, hash) in [1u32, 5, 2, 1, 9].into_iter().enumerate() {
            assert!(
                f.put(hash, 100 * i as u64, 1_000_000 + i as i64 * 1500)
                    .unwrap()
            );
        }
        // Slot 1 holds hashes 1, 5, 9; only equal hashes are visited.
        assert_eq!(found(&f, 1), vec![300, 0]);
        assert_eq!(found(&f, 5), vec![100]);
        assert_eq!(found(&f, 9), vec![400]);
        assert_eq!(found(&f, 3), Vec::<u64>::new());
        let h = f.header();
        assert_eq!((h.count, h.slots_used), (6, 2));
        assert_eq!((h.begin_offset, h.end_offset), (0, 400));
        assert_eq!((h.begin_timestamp, h.end_timestamp), (1_000_000, 1_006_000));
        assert_eq!(f.entry(5).time_diff, 6);
        // Full at entry 9 (entry 0 is never used).
        for i in 5..9 {
            assert!(f.put(7, 1000 + i, 1_000_000).unwrap());
        }
        assert!(f.is_full());
        assert!(!f.put(7, 2000, 1_000_000).unwrap());
    }

    #[test]
    fn a_cut_forgets_entries_past_the_durable_point_and_repairs_slots() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), 4, 20);
        for i in 0..10u64 {
            f.put((i % 3) as u32, i * 10, 1_000_000).unwrap();
        }
        // Entries 1..=5 were synced when progress was recorded.
        assert_eq!(f.cut(5).unwrap(), 5);
        assert_eq!(found(&f, 0), vec![30, 0]);
        assert_eq!(found(&f, 1), vec![40, 10]);
        assert_eq!(found(&f, 2), vec![20]);
        assert_eq!(f.header().count, 6);
        assert_eq!(f.header().end_offset, 40);
        // Writing goes on after the cut.
        f.put(1, 50, 1_000_000).unwrap();
        assert_eq!(found(&f, 1), vec![50, 40, 10]);
        let reopened = IndexFile::open(f.path(), (4, 20), None).unwrap();
        assert_eq!(found(&reopened, 1), vec![50, 40, 10]);
    }

    #[test]
    fn extreme_store_times_and_a_damaged_slot_count_are_indexed_without_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), 4, 10);
        // Store times come from records a follower appends as they are (and from damaged
        // bytes outside the body's CRC); the header's slot count from the file.
        f.put(1, 0, 1_000_000).unwrap();
        f.words.store(W_SLOTS_USED, u32::MAX);
        f.put(2, 10, i64::MIN).unwrap();
        f.put(3, 20, i64::MAX).unwrap();
        assert_eq!(f.entry(2).time_diff, 0, "earlier than the file's begin");
        assert_eq!(f.entry(3).time_diff, i32::MAX, "clamped");
        assert_eq!(f.header().slots_used, u32::MAX);
        assert_eq!(found(&f, 2), vec![10]);
    }

    #[test]
    fn a_file_of_another_geometry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), 4, 20);
        assert!(matches!(
            IndexFile::open(f.path(), (8, 20), None),
            Err(Error::BadStoreFile { .. })
        ));
    }
}
