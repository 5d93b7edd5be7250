//! The read path: messages by topic, queue and queue offset, through the consume queues.

use crate::commit_log::{CommitLog, ReadCursor};
use crate::error::{Error, Result};
use crate::message::StoredMessage;
use crate::queue::entry;
use crate::queue::queues::ConsumeQueues;
use crate::search::try_partition_point;

/// What a [`get_message`](crate::MessageStore::get_message) call found, with RocketMQ's
/// meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GetStatus {
    /// At least one message is returned.
    Found,
    /// Entries were read but none matched the tag filter; continue at `next_offset`.
    NoMatchedMessage,
    /// The queue exists but holds no message.
    NoMessageInQueue,
    /// The offset is below the queue's minimum; `next_offset` is the minimum.
    OffsetTooSmall,
    /// The offset equals the queue's maximum: nothing new yet.
    OffsetOverflowOne,
    /// The offset is past the queue's maximum; `next_offset` is the maximum.
    OffsetOverflowBadly,
    /// No such topic/queue.
    NoMatchedLogicQueue,
}

/// The answer to a [`get_message`](crate::MessageStore::get_message) call.
#[derive(Debug, Clone)]
pub struct GetResult {
    /// What was found.
    pub status: GetStatus,
    /// The messages, in queue order; bodies share the mapped files without a copy.
    pub messages: Vec<StoredMessage>,
    /// The queue offset to ask for next.
    pub next_offset: u64,
    /// The queue's first offset.
    pub min_offset: u64,
    /// The queue's next offset (one past the last message).
    pub max_offset: u64,
}

/// Selects messages by tag, as a RocketMQ subscription does: the stored tag hash is
/// compared first, then the exact tag of the candidates.
///
/// ```
/// use rocketstore::TagFilter;
/// let f = TagFilter::parse("TagA || TagB");
/// assert!(f.matches(Some("TagB")));
/// assert!(!f.matches(Some("TagC")));
/// assert!(!f.matches(None));
/// assert!(TagFilter::parse("*").matches(None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    tags: Vec<String>,
    hashes: Vec<i64>,
    all: bool,
}

impl TagFilter {
    /// Matches messages whose tag is one of `tags`; `"*"` matches every message.
    pub fn new<I, S>(tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        let all = tags.iter().any(|t| t == "*");
        let hashes = tags.iter().map(|t| entry::tag_hash(Some(t))).collect();
        TagFilter { tags, hashes, all }
    }

    /// Parses RocketMQ's subscription expression: `*`, or tags separated by `||`.
    pub fn parse(expression: &str) -> Self {
        let expression = expression.trim();
        if expression.is_empty() {
            return TagFilter::new(["*"]);
        }
        TagFilter::new(
            expression
                .split("||")
                .map(str::trim)
                .filter(|t| !t.is_empty()),
        )
    }

    fn matches_hash(&self, hash: i64) -> bool {
        self.all || self.hashes.contains(&hash)
    }

    /// Whether a message with these tags passes.
    pub fn matches(&self, tags: Option<&str>) -> bool {
        self.all || tags.is_some_and(|t| self.tags.iter().any(|x| x == t))
    }
}

/// How many entries a filtered get reads at most when few match, like RocketMQ's 16,000
/// bytes of consume queue per call.
const FILTER_SCAN_ENTRIES: usize = 800;

/// One `get_message` call's arguments.
pub(crate) struct Request<'a> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub offset: u64,
    pub max_count: usize,
    pub max_bytes: usize,
    pub filter: Option<&'a TagFilter>,
}

pub(crate) fn get_message(
    log: &CommitLog,
    queues: &ConsumeQueues,
    req: &Request<'_>,
) -> Result<GetResult> {
    let Request {
        topic,
        queue_id,
        offset,
        max_count,
        max_bytes,
        filter,
    } = *req;
    let Some(queue) = queues.get(topic, queue_id) else {
        return Ok(GetResult {
            status: GetStatus::NoMatchedLogicQueue,
            messages: Vec::new(),
            next_offset: 0,
            min_offset: 0,
            max_offset: 0,
        });
    };
    let (min, max) = (queue.min_offset(), queue.max_offset());
    let answer = |status, next_offset| {
        Ok(GetResult {
            status,
            messages: Vec::new(),
            next_offset,
            min_offset: min,
            max_offset: max,
        })
    };
    if max == 0 {
        return answer(GetStatus::NoMessageInQueue, 0);
    }
    if offset < min {
        return answer(GetStatus::OffsetTooSmall, min);
    }
    if offset == max {
        return answer(GetStatus::OffsetOverflowOne, offset);
    }
    if offset > max {
        return answer(GetStatus::OffsetOverflowBadly, max);
    }

    let max_count = max_count.max(1);
    let scan = if filter.is_some() {
        max_count.max(FILTER_SCAN_ENTRIES)
    } else {
        max_count
    };
    let limit = log.write_offset();
    let mut cursor = ReadCursor::default();
    let topic_arc: std::sync::Arc<str> = std::sync::Arc::from(topic);
    let mut messages = Vec::with_capacity(max_count.min(64));
    let mut bytes = 0usize;
    let mut next = offset;
    'outer: while next < max && messages.len() < max_count && next - offset < scan as u64 {
        let want = (scan as u64 - (next - offset)) as usize;
        let entries = queue.entries(next, want);
        if entries.is_empty() {
            break;
        }
        for entry in entries {
            if messages.len() >= max_count
                || (!messages.is_empty() && bytes + entry.size as usize > max_bytes)
            {
                break 'outer;
            }
            next += 1;
            if filter.is_some_and(|f| !f.matches_hash(entry.tag_hash)) {
                continue;
            }
            let Some(msg) =
                log.read_with(&mut cursor, entry.physical_offset, limit, Some(&topic_arc))?
            else {
                continue; // no longer in the log
            };
            if msg.queue_id != queue_id || msg.queue_offset != next - 1 || *msg.topic != *topic {
                // A damaged entry: never serve another queue's message. The next open
                // rebuilds the queues.
                queues.mark_suspect();
                return Err(Error::corrupted(
                    entry.physical_offset,
                    format!(
                        "consume queue {topic}/{queue_id} entry {} points at the record of \
                         {}/{} entry {}",
                        next - 1,
                        msg.topic,
                        msg.queue_id,
                        msg.queue_offset
                    ),
                ));
            }
            if filter.is_some_and(|f| !f.matches(msg.tags())) {
                continue;
            }
            bytes += entry.size as usize;
            messages.push(msg);
        }
    }
    let status = if messages.is_empty() {
        GetStatus::NoMatchedMessage
    } else {
        GetStatus::Found
    };
    Ok(GetResult {
        status,
        messages,
        next_offset: next,
        min_offset: min,
        max_offset: max,
    })
}

/// The first queue offset whose message was stored at or after `timestamp_ms` (the
/// queue's max offset when none was), by binary search on store time.
pub(crate) fn offset_by_time(
    log: &CommitLog,
    queues: &ConsumeQueues,
    topic: &str,
    queue_id: u32,
    timestamp_ms: i64,
) -> Result<u64> {
    let Some(queue) = queues.get(topic, queue_id) else {
        return Ok(0);
    };
    let limit = log.write_offset();
    try_partition_point(queue.min_offset()..queue.max_offset(), |at| {
        let stored = match queue.entry(at) {
            Some(e) => log
                .read(e.physical_offset, limit)?
                .map(|m| m.store_timestamp),
            None => None,
        };
        Ok(stored.is_some_and(|ts| ts < timestamp_ms))
    })
}
