//! The read path: messages by topic, queue and queue offset, through the consume queues.

use crate::commit_log::record::{RecordView, find_tags};
use crate::commit_log::{CommitLog, ReadCursor};
use crate::error::{Error, Result};
use crate::message::StoredMessage;
use crate::queue::entry::{self, CqEntry};
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
    /// The queue holds no message, or does not exist (yet): consume queues are created
    /// by their first message, as in RocketMQ. Offsets are 0 for an unknown queue.
    NoMessageInQueue,
    /// The offset is below the queue's minimum; `next_offset` is the minimum.
    OffsetTooSmall,
    /// The offset equals the queue's maximum: nothing new yet.
    OffsetOverflowOne,
    /// The offset is past the queue's maximum; `next_offset` is the maximum.
    OffsetOverflowBadly,
    /// The entries read point at records retention has deleted (below the log's start);
    /// `next_offset` is past them.
    MessageWasRemoving,
    /// The consume-queue file holding the offset is not there (removed since the read
    /// began); `next_offset` is the start of the next queue file, so a consumer moves on.
    /// A damaged entry is an error instead ([`Error::BadStoreFile`](crate::Error)), never
    /// a reason to move past messages the log still holds.
    OffsetFoundNull,
    /// No longer returned: an unknown queue answers [`GetStatus::NoMessageInQueue`].
    NoMatchedLogicQueue,
}

/// The answer to a [`get_message`](crate::MessageStore::get_message) call.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
/// Two choices differ from RocketMQ's store, on purpose:
/// - The exact tag is compared here. RocketMQ's store matches on the hash alone and leaves
///   the comparison to the client, so it also returns a message whose different tag
///   merely shares the hash ("Aa" and "BB" do). Such messages are skipped here (their
///   offsets still advance `next_offset`): a consumer gets exactly what it subscribed to.
/// - `*` means every message only when it is the whole expression, as in RocketMQ's
///   subscription parsing; inside `TagA || *` it is a tag like any other.
///
/// ```
/// use rocketstore::TagFilter;
/// let f = TagFilter::parse("TagA || TagB");
/// assert!(f.matches(Some("TagB")));
/// assert!(!f.matches(Some("TagC")));
/// assert!(!f.matches(None));
/// assert!(TagFilter::parse("*").matches(None));
/// assert!(!TagFilter::parse("TagA || *").matches(Some("TagB")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    tags: Vec<String>,
    hashes: Vec<i64>,
    all: bool,
}

impl TagFilter {
    /// Matches messages whose tag is one of `tags`; `["*"]` alone matches every message.
    pub fn new<I, S>(tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        let all = tags.len() == 1 && tags[0] == "*";
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

/// A read of one queue: where to start, how much to return, and which tags.
///
/// ```
/// use rocketstore::{GetRequest, TagFilter};
/// let filter = TagFilter::parse("TagA || TagB");
/// let req = GetRequest::new("TopicA", 0, 100).max_count(32).max_bytes(64 * 1024).filter(&filter);
/// assert_eq!(req.max_bytes, Some(64 * 1024));
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct GetRequest<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The queue.
    pub queue_id: u32,
    /// The first queue offset wanted.
    pub offset: u64,
    /// Most messages returned (at least 1). Default: 32.
    pub max_count: usize,
    /// Most bytes of records returned (one message always fits). Default:
    /// [`StoreConfig::max_transfer_bytes`](crate::StoreConfig::max_transfer_bytes).
    pub max_bytes: Option<usize>,
    /// Keep only messages whose tag passes. Default: every message.
    pub filter: Option<&'a TagFilter>,
}

impl<'a> GetRequest<'a> {
    /// A read of `topic`/`queue_id` from queue offset `offset`, with the defaults.
    pub fn new(topic: &'a str, queue_id: u32, offset: u64) -> Self {
        GetRequest {
            topic,
            queue_id,
            offset,
            max_count: 32,
            max_bytes: None,
            filter: None,
        }
    }

    /// Sets [`GetRequest::max_count`].
    pub fn max_count(mut self, n: usize) -> Self {
        self.max_count = n;
        self
    }

    /// Sets [`GetRequest::max_bytes`].
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Sets [`GetRequest::filter`].
    pub fn filter(mut self, filter: &'a TagFilter) -> Self {
        self.filter = Some(filter);
        self
    }
}

/// The answer to a [`get_raw`](crate::MessageStore::get_raw) call: the records' bytes as
/// stored (RocketMQ's format), for a pull response sent without re-encoding.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RawGetResult {
    /// What was found.
    pub status: GetStatus,
    /// Each record, whole, in queue order: slices of the mapped files, without a copy.
    pub records: Vec<bytes::Bytes>,
    /// The queue offset to ask for next.
    pub next_offset: u64,
    /// The queue's first offset.
    pub min_offset: u64,
    /// The queue's next offset (one past the last message).
    pub max_offset: u64,
}

/// Reads one entry's record (cursor, entry, its queue offset, the readable limit) and
/// pushes it when it passes the filter.
type Take<'a, T> = dyn FnMut(&mut ReadCursor, CqEntry, u64, u64, &mut Vec<T>) -> Result<()> + 'a;

/// A read: status, items, next offset, min and max.
struct Walked<T> {
    status: GetStatus,
    items: Vec<T>,
    next: u64,
    min: u64,
    max: u64,
}

/// Walks the queue's entries from the request's offset within the request's limits;
/// `take` reads each entry's record and pushes it when it passes the filter (in place:
/// a message is a few hundred bytes, not worth moving through a return value).
fn walk<T>(
    log: &CommitLog,
    queues: &ConsumeQueues,
    req: &GetRequest<'_>,
    default_max_bytes: usize,
    take: &mut Take<'_, T>,
) -> Result<Walked<T>> {
    let GetRequest {
        topic,
        queue_id,
        offset,
        max_count,
        max_bytes,
        filter,
    } = *req;
    let max_bytes = max_bytes.unwrap_or(default_max_bytes);
    // The entries' tag hashes pick the records worth reading, unless a broker's tag code
    // may stand in their place (on any topic it chooses): then every record is read, and
    // its tag decides.
    let by_hash = filter.filter(|_| queues.tag_code.is_none());
    let Some(queue) = queues.get(topic, queue_id) else {
        return Ok(Walked {
            status: GetStatus::NoMessageInQueue,
            items: Vec::new(),
            next: 0,
            min: 0,
            max: 0,
        });
    };
    // A queue not read since a lazy open is read first: its minimum is 0 until then, and
    // an answer built on it (a skip past a missing file) could move the consumer past
    // stored messages. A failure to read it is the caller's, to retry.
    queue.try_load()?;
    let (min, max) = (queue.min_offset(), queue.max_offset());
    let answer = |status, next| {
        Ok(Walked {
            status,
            items: Vec::new(),
            next,
            min,
            max,
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
    // Readers see only the readable log (durable under sync flush, confirmed when the
    // store reads only confirmed records): entries past it are not served yet.
    let (limit, log_start) = (log.readable_offset(), log.min_offset());
    let mut cursor = ReadCursor::default();
    let mut items = Vec::with_capacity(max_count.min(64));
    let (mut bytes, mut removed, mut beyond, mut seen_live) = (0usize, 0u64, false, false);
    let mut next = offset;
    'outer: while next < max && items.len() < max_count && next - offset < scan as u64 {
        // In windows: a caller's huge count must not make one call read and decode a
        // whole queue file before the byte limit ends the walk.
        let want = ((scan as u64 - (next - offset)) as usize).min(READ_WINDOW);
        // An I/O error or a damaged entry is the caller's: only an entry whose file is
        // not there (removed by retention) moves the consumer on. Past what this call
        // already walked, the walk ends there, and the next call meets the error.
        let entries = match queue.entries(next, want) {
            Err(_) if next > offset => break,
            entries => entries?,
        };
        if entries.is_empty() {
            if next == offset {
                // Unreadable right where the consumer is: move it to the next file rather
                // than have it ask again forever.
                let per_file = queue.entries_per_file();
                let skip_to = ((next / per_file + 1) * per_file).min(max);
                return answer(GetStatus::OffsetFoundNull, skip_to);
            }
            break;
        }
        for entry in entries {
            if items.len() >= max_count
                || (!items.is_empty() && bytes + entry.size as usize > max_bytes)
            {
                break 'outer;
            }
            if entry.physical_offset >= limit {
                if entry.physical_offset >= log.write_offset() {
                    // Past everything ever appended: damage, not a record yet to be
                    // confirmed. Answering "not yet" would stall the consumer there for
                    // good, silently.
                    if items.is_empty() {
                        return Err(past_the_end(log, queues, (topic, queue_id, next), &entry));
                    }
                    break 'outer;
                }
                beyond = true;
                break 'outer;
            }
            next += 1;
            if entry.physical_offset < log_start {
                // Entries rise with queue offsets: one below the start after a live one,
                // in this walk or right behind it, is damage, not a removed message.
                let at = next - 1;
                let behind_live = seen_live
                    || (at == offset
                        && at > queue.min_offset()
                        && queue
                            .entry(at - 1)
                            .is_some_and(|prev| prev.physical_offset >= log_start));
                if behind_live {
                    if items.is_empty() {
                        queues.mark_suspect();
                        return Err(Error::corrupted(
                            entry.physical_offset,
                            format!(
                                "consume queue {topic}/{queue_id} entry {at} points below \
                                 the log's start {log_start}, after a live entry"
                            ),
                        ));
                    }
                    next -= 1;
                    break 'outer;
                }
                if by_hash.is_none_or(|f| f.matches_hash(entry.tag_hash)) {
                    removed += 1;
                }
                continue;
            }
            seen_live = true;
            if by_hash.is_some_and(|f| !f.matches_hash(entry.tag_hash)) {
                continue;
            }
            let before = items.len();
            if let Err(e) = take(&mut cursor, entry, next - 1, limit, &mut items) {
                if items.is_empty() {
                    return Err(e);
                }
                // Serve what came before the damaged (or unreadable) record; the next
                // call, from it, meets the error.
                next -= 1;
                break 'outer;
            }
            if items.len() > before {
                bytes += entry.size as usize;
            }
        }
    }
    let status = match (items.is_empty(), removed > 0) {
        (false, _) => GetStatus::Found,
        (true, true) => GetStatus::MessageWasRemoving,
        // Indexed, but not readable yet (not confirmed): nothing new for the consumer.
        (true, false) if beyond && next == offset => GetStatus::OffsetOverflowOne,
        (true, false) => GetStatus::NoMatchedMessage,
    };
    Ok(Walked {
        status,
        items,
        next,
        min,
        max,
    })
}

/// An entry below the readable end whose record is not there: retention removed its file
/// since the walk began (skipped, as entries below the log's start are), or the log is
/// damaged there (zeros or a blank record where a record was): an error, never a silent
/// skip past an acknowledged message.
fn missing(log: &CommitLog, entry: &CqEntry) -> Result<()> {
    if entry.physical_offset < log.min_offset() {
        return Ok(());
    }
    Err(Error::corrupted(
        entry.physical_offset,
        "a consume-queue entry points here, but no record starts here: the entry or the commit log is damaged",
    ))
}

/// Most entries read from a queue file at once by a walk.
const READ_WINDOW: usize = 1024;

/// Whether `entry` can be the entry of a record of `size` bytes with `sys_flag`: the
/// sizes agree, and the record is one dispatch indexes (a transaction's half or
/// rollback never is; such records carry queue offset 0, so a damaged entry 0 could
/// otherwise pass for theirs).
fn indexes(entry: &CqEntry, size: u32, sys_flag: i32) -> bool {
    entry.size == size && !crate::message::is_transaction_hidden(sys_flag)
}

/// A damaged entry: never serve another queue's message. The next open rebuilds the
/// queues.
fn foreign(
    queues: &ConsumeQueues,
    (topic, queue_id, queue_offset): (&str, u32, u64),
    entry: &CqEntry,
    found: (&str, u32, u64),
) -> Error {
    queues.mark_suspect();
    Error::corrupted(
        entry.physical_offset,
        format!(
            "consume queue {topic}/{queue_id} entry {queue_offset} points at the record of \
             {}/{} entry {}",
            found.0, found.1, found.2
        ),
    )
}

pub(crate) fn get_message(
    log: &CommitLog,
    queues: &ConsumeQueues,
    req: &GetRequest<'_>,
    default_max_bytes: usize,
) -> Result<GetResult> {
    let topic_arc: std::sync::Arc<str> = std::sync::Arc::from(req.topic);
    let (topic, queue_id, filter) = (req.topic, req.queue_id, req.filter);
    let mut take = |cursor: &mut ReadCursor,
                    entry: CqEntry,
                    at: u64,
                    limit: u64,
                    out: &mut Vec<StoredMessage>|
     -> Result<()> {
        let Some(msg) = log.read_with(cursor, entry.physical_offset, limit, Some(&topic_arc))?
        else {
            return missing(log, &entry);
        };
        if msg.queue_id != queue_id
            || msg.queue_offset != at
            || *msg.topic != *topic
            || !indexes(&entry, msg.total_size, msg.sys_flag)
        {
            let found = (&*msg.topic, msg.queue_id, msg.queue_offset);
            return Err(foreign(queues, (topic, queue_id, at), &entry, found));
        }
        if filter.is_none_or(|f| f.matches(msg.tags())) {
            out.push(msg);
        }
        Ok(())
    };
    let walked = walk(log, queues, req, default_max_bytes, &mut take)?;
    Ok(GetResult {
        status: walked.status,
        messages: walked.items,
        next_offset: walked.next,
        min_offset: walked.min,
        max_offset: walked.max,
    })
}

pub(crate) fn get_raw(
    log: &CommitLog,
    queues: &ConsumeQueues,
    req: &GetRequest<'_>,
    default_max_bytes: usize,
) -> Result<RawGetResult> {
    let (topic, queue_id, filter) = (req.topic, req.queue_id, req.filter);
    let walked = walk(
        log,
        queues,
        req,
        default_max_bytes,
        &mut |cursor: &mut ReadCursor,
              entry: CqEntry,
              at: u64,
              limit: u64,
              out: &mut Vec<bytes::Bytes>|
         -> Result<()> {
            let Some(bytes) = log.read_raw_with(cursor, entry.physical_offset, limit)? else {
                return missing(log, &entry);
            };
            let view = parse_owned(queues, &bytes, &entry, (topic, queue_id, at))?;
            // As `CommitLog::read_with` does for decoded messages.
            if log.verifies_reads() && !view.crc_ok() {
                return Err(Error::corrupted(entry.physical_offset, "body CRC mismatch"));
            }
            if filter.is_none_or(|f| f.matches(find_tags(view.properties))) {
                out.push(bytes.clone());
            }
            Ok(())
        },
    )?;
    Ok(RawGetResult {
        status: walked.status,
        records: walked.items,
        next_offset: walked.next,
        min_offset: walked.min,
        max_offset: walked.max,
    })
}

/// Which side of a time [`offset_by_time_with`](crate::MessageStore::offset_by_time_with)
/// looks for (RocketMQ's `BoundaryType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoundaryType {
    /// The first offset stored at or after the time (the queue's max offset when every
    /// message is older).
    #[default]
    Lower,
    /// The last offset stored at or before the time (the queue's min offset when every
    /// message is newer).
    Upper,
}

/// The queue offset of `topic`/`queue_id` on `boundary`'s side of `timestamp_ms`, by
/// binary search on store time (store times rise in queue order).
pub(crate) fn offset_by_time(
    log: &CommitLog,
    queues: &ConsumeQueues,
    (topic, queue_id): (&str, u32),
    timestamp_ms: i64,
    boundary: BoundaryType,
) -> Result<u64> {
    let Some(queue) = queues.get(topic, queue_id) else {
        return Ok(0);
    };
    let limit = log.readable_offset();
    let (min, max) = (queue.min_offset(), queue.max_offset());
    let first_at_or_after = |ts: i64| {
        try_partition_point(min..max, |at| {
            // An entry that cannot be read is an error, as for `get`: taken for "not
            // older", it would turn the search's answer into a wrong offset.
            let stored = match queue.entries(at, 1)?.first() {
                // Removed by retention since `min` was read: older than anything stored,
                // so the search stays monotone and moves past it.
                Some(e) if e.physical_offset < log.min_offset() => return Ok(true),
                Some(e) => store_time_of(log, queues, (topic, queue_id, at), e, limit)?,
                None => None,
            };
            Ok(stored.is_some_and(|stored| stored < ts))
        })
    };
    match boundary {
        BoundaryType::Lower => first_at_or_after(timestamp_ms),
        BoundaryType::Upper => {
            let after = first_at_or_after(timestamp_ms.saturating_add(1))?;
            Ok(after.saturating_sub(1).max(min))
        }
    }
}

/// The commit-log offset and store time of the message at `queue_offset`, if it is
/// stored.
pub(crate) fn locate(
    log: &CommitLog,
    queues: &ConsumeQueues,
    (topic, queue_id): (&str, u32),
    queue_offset: u64,
) -> Result<Option<(u64, i64)>> {
    let Some(queue) = queues.get(topic, queue_id) else {
        return Ok(None);
    };
    if queue_offset < queue.min_offset() {
        return Ok(None);
    }
    let Some(&entry) = queue.entries(queue_offset, 1)?.first() else {
        return Ok(None);
    };
    let at = (topic, queue_id, queue_offset);
    let stored = store_time_of(log, queues, at, &entry, log.readable_offset())?;
    Ok(stored.map(|ts| (entry.physical_offset, ts)))
}

/// The store time of the record `entry` (entry `at` of its queue) names, checked as `get`
/// checks it: `None` when the record was removed or is not readable yet (at or past
/// `limit`); `Corrupted` when no record starts there, it is another queue's, or the entry
/// points past everything appended. Read from the header alone: the body's CRC does not
/// cover it, and is not checked.
fn store_time_of(
    log: &CommitLog,
    queues: &ConsumeQueues,
    (topic, queue_id, at): (&str, u32, u64),
    entry: &CqEntry,
    limit: u64,
) -> Result<Option<i64>> {
    if entry.physical_offset >= log.write_offset() {
        // Past everything ever appended: damage, as `get` says.
        return Err(past_the_end(log, queues, (topic, queue_id, at), entry));
    }
    if entry.physical_offset < log.min_offset() || entry.physical_offset >= limit {
        return Ok(None);
    }
    let mut cursor = ReadCursor::default();
    let Some(bytes) = log.read_raw_with(&mut cursor, entry.physical_offset, limit)? else {
        return missing(log, entry).map(|()| None);
    };
    let view = parse_owned(queues, &bytes, entry, (topic, queue_id, at))?;
    Ok(Some(view.store_timestamp))
}

/// The record `entry` (entry `at` of `topic`/`queue_id`) names, parsed from `bytes` read
/// at the entry's offset, and checked as `get` checks a message: it starts where the entry
/// says (a record copied inside another's body names the offset it was copied from), and
/// it is that queue's record at that queue offset.
fn parse_owned<'a>(
    queues: &ConsumeQueues,
    bytes: &'a [u8],
    entry: &CqEntry,
    (topic, queue_id, at): (&str, u32, u64),
) -> Result<RecordView<'a>> {
    let view = crate::commit_log::record::parse(bytes, entry.physical_offset)?;
    if view.physical_offset != entry.physical_offset {
        return Err(Error::corrupted(
            entry.physical_offset,
            "no record starts here",
        ));
    }
    if view.queue_id != queue_id
        || view.queue_offset != at
        || view.topic != topic
        || !indexes(entry, view.total_size, view.sys_flag)
    {
        let found = (view.topic, view.queue_id, view.queue_offset);
        return Err(foreign(queues, (topic, queue_id, at), entry, found));
    }
    Ok(view)
}

/// An entry pointing past everything ever appended: damage (never a record yet to come).
/// The next open rebuilds the queues.
fn past_the_end(
    log: &CommitLog,
    queues: &ConsumeQueues,
    (topic, queue_id, at): (&str, u32, u64),
    entry: &CqEntry,
) -> Error {
    queues.mark_suspect();
    Error::corrupted(
        entry.physical_offset,
        format!(
            "consume queue {topic}/{queue_id} entry {at} points past the log's end {}",
            log.write_offset()
        ),
    )
}
