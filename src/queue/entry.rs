//! One consume-queue entry: where a message of a topic/queue lies in the commit log, in
//! RocketMQ's 20 bytes (`docs/FORMAT.md`).

use crate::commit_log::record::{RecordView, find_tags};

/// Supplies the tag code a record's consume-queue entry stores instead of its tag hash:
/// for RocketMQ's delayed messages (`SCHEDULE_TOPIC_XXXX`) a broker puts the delivery
/// time there, which its schedule service reads back
/// ([`MessageStore::queue_entries`](crate::MessageStore::queue_entries)). Set with
/// [`StoreConfig::tag_code`](crate::StoreConfig::tag_code).
///
/// ```
/// use std::sync::Arc;
/// use rocketstore::{StoreConfig, TagCode, format::RecordView};
///
/// /// Delayed messages: the delivery time from the `DELAY_AT` property.
/// struct DeliveryTime;
///
/// impl TagCode for DeliveryTime {
///     fn tag_code(&self, record: &RecordView<'_>) -> Option<i64> {
///         if record.topic != "SCHEDULE_TOPIC_XXXX" {
///             return None; // the tag hash, as usual
///         }
///         record.property("DELAY_AT")?.parse().ok()
///     }
/// }
/// let config = StoreConfig::new("/tmp/store").tag_code(Arc::new(DeliveryTime));
/// # let _ = config;
/// ```
///
/// With a tag code configured, a tag-filtered read ([`crate::TagFilter`]) cannot trust
/// the entries' hashes (a code may stand in for one on any topic), so it reads each
/// record in range and compares its tags: filtered reads cost more, on every topic.
pub trait TagCode: Send + Sync + 'static {
    /// The code to store for `record`, or `None` for its tag hash. It must depend on the
    /// record's bytes only: recovery computes it again and compares.
    fn tag_code(&self, record: &RecordView<'_>) -> Option<i64>;

    /// Names the rule, recorded in the store (`{root}/tag_code`) when it is first opened
    /// with it: a later open without it, or with another name, is refused, since its
    /// recovery would rebuild the consume queues with other codes (delayed messages
    /// would fire at their tag hash). Change the name when the rule changes.
    fn name(&self) -> &str {
        "tag-code"
    }
}

/// Size of one consume-queue entry: commit-log offset i64, record size i32, tag hash i64.
pub const CQ_ENTRY_LEN: usize = 20;

/// One consume-queue entry: where a message of a topic/queue is in the commit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    /// Commit-log offset of the record.
    pub physical_offset: u64,
    /// Record size in bytes.
    pub size: u32,
    /// Java `String.hashCode` of the TAGS property, 0 without tags.
    pub tag_hash: i64,
}

impl CqEntry {
    /// The entry that indexes `view`.
    #[inline]
    pub fn of(view: &RecordView<'_>) -> CqEntry {
        CqEntry {
            physical_offset: view.physical_offset,
            size: view.total_size,
            tag_hash: tag_hash(find_tags(view.properties)),
        }
    }

    /// The entry that indexes `view`, its tag code supplied by `code` when it has one.
    #[inline]
    pub fn with_code(view: &RecordView<'_>, code: Option<&dyn TagCode>) -> CqEntry {
        let mut e = CqEntry::of(view);
        if let Some(c) = code.and_then(|c| c.tag_code(view)) {
            e.tag_hash = c;
        }
        e
    }

    /// The 20 stored bytes.
    #[inline]
    pub fn encode(&self) -> [u8; CQ_ENTRY_LEN] {
        let mut b = [0u8; CQ_ENTRY_LEN];
        b[..8].copy_from_slice(&(self.physical_offset as i64).to_be_bytes());
        b[8..12].copy_from_slice(&(self.size as i32).to_be_bytes());
        b[12..].copy_from_slice(&self.tag_hash.to_be_bytes());
        b
    }

    /// Reads an entry; `None` for an unwritten (all-zero size) or negative entry.
    pub fn decode(b: &[u8; CQ_ENTRY_LEN]) -> Option<CqEntry> {
        let physical_offset = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let size = i32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
        let tag_hash = i64::from_be_bytes(b[12..].try_into().expect("8 bytes"));
        if size <= 0 || physical_offset < 0 {
            return None;
        }
        Some(CqEntry {
            physical_offset: physical_offset as u64,
            size: size as u32,
            tag_hash,
        })
    }
}

/// RocketMQ's tag hash: Java's `String.hashCode` (over UTF-16 code units, wrapping i32),
/// widened to i64. 0 when there are no tags.
#[inline]
pub fn tag_hash(tags: Option<&str>) -> i64 {
    let Some(tags) = tags else { return 0 };
    let mut h: i32 = 0;
    for unit in tags.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    i64::from(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_hash_matches_java_string_hash_code() {
        // Values of "TagA".hashCode() etc. as Java computes them.
        assert_eq!(tag_hash(Some("TagA")), 2_598_919);
        assert_eq!(tag_hash(Some("")), 0);
        assert_eq!(tag_hash(None), 0);
        assert_eq!(tag_hash(Some("hello world, a longer tag")), -1_130_731_654);
        // Outside the BMP Java hashes the two UTF-16 surrogates.
        assert_eq!(tag_hash(Some("\u{1F600}")), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn cq_entry_round_trip() {
        let e = CqEntry {
            physical_offset: 1 << 40,
            size: 1234,
            tag_hash: -5,
        };
        assert_eq!(CqEntry::decode(&e.encode()), Some(e));
        assert_eq!(CqEntry::decode(&[0u8; CQ_ENTRY_LEN]), None);
    }
}
