//! What callers hand to the store and what they get back.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Property holding the message tags (RocketMQ `TAGS`).
pub const PROPERTY_TAGS: &str = "TAGS";
/// Property holding the message keys, separated by spaces (RocketMQ `KEYS`).
pub const PROPERTY_KEYS: &str = "KEYS";
/// Property holding the unique id a producer gives each message (RocketMQ `UNIQ_KEY`),
/// indexed by the key index like a key.
pub const PROPERTY_UNIQ_KEY: &str = "UNIQ_KEY";
/// Separator between keys in the `KEYS` property.
pub const KEY_SEPARATOR: char = ' ';

/// Transaction bits of the system flag (`sys_flag & TRANSACTION_MASK`).
pub const TRANSACTION_MASK: i32 = 0xC;
/// A transaction's half message: stored, never consumed until committed.
pub const TRANSACTION_PREPARED: i32 = 0x4;
/// A transaction's commit: dispatched like any message.
pub const TRANSACTION_COMMIT: i32 = 0x8;
/// A transaction's rollback: stored, never consumed.
pub const TRANSACTION_ROLLBACK: i32 = 0xC;

/// Whether a record with this system flag is hidden from consumers: a transaction's
/// PREPARED (half) or ROLLBACK record. Such records get queue offset 0, do not advance
/// their queue, and get no consume-queue or key-index entry (RocketMQ's rule); they stay
/// readable by physical offset, for a broker's transaction check.
#[inline]
pub fn is_transaction_hidden(sys_flag: i32) -> bool {
    matches!(
        sys_flag & TRANSACTION_MASK,
        TRANSACTION_PREPARED | TRANSACTION_ROLLBACK
    )
}

/// Separates a property name from its value.
pub const NAME_VALUE_SEPARATOR: u8 = 0x01;
/// Ends each property.
pub const PROPERTY_SEPARATOR: u8 = 0x02;

pub(crate) const IPV4_HOST_LEN: usize = 8;
pub(crate) const IPV6_HOST_LEN: usize = 20;

/// RocketMQ's body CRC: CRC-32 (IEEE) masked to 31 bits.
#[inline]
pub fn body_crc(body: &[u8]) -> u32 {
    crc32fast::hash(body) & 0x7FFF_FFFF
}

pub(crate) fn host_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => IPV4_HOST_LEN,
        SocketAddr::V6(_) => IPV6_HOST_LEN,
    }
}

/// Writes the stored form of a host (address bytes, then the port as i32) into `buf` and
/// returns the used part.
pub fn host_bytes<'a>(addr: &SocketAddr, buf: &'a mut [u8; 20]) -> &'a [u8] {
    let port = i32::from(addr.port()).to_be_bytes();
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf[..4].copy_from_slice(&ip.octets());
            buf[4..8].copy_from_slice(&port);
            &buf[..IPV4_HOST_LEN]
        }
        IpAddr::V6(ip) => {
            buf[..16].copy_from_slice(&ip.octets());
            buf[16..20].copy_from_slice(&port);
            &buf[..IPV6_HOST_LEN]
        }
    }
}

/// Whether raw properties are well-formed (UTF-8, every pair with a separator), without
/// allocating.
#[inline]
pub fn properties_well_formed(raw: &[u8]) -> bool {
    str::from_utf8(raw).is_ok()
        && raw
            .split(|&b| b == PROPERTY_SEPARATOR)
            .all(|pair| pair.is_empty() || pair.contains(&NAME_VALUE_SEPARATOR))
}

/// The value of property `name` in raw `name\x01value\x02…` properties, read as RocketMQ
/// reads them: a pair with an empty value counts as absent, and when a name repeats the
/// last value wins. `None` also when the value is not UTF-8.
#[inline]
pub fn find_property<'a>(raw: &'a [u8], name: &str) -> Option<&'a str> {
    raw.split(|&b| b == PROPERTY_SEPARATOR)
        .filter_map(|pair| {
            pair.strip_prefix(name.as_bytes())?
                .strip_prefix(&[NAME_VALUE_SEPARATOR])
        })
        .rfind(|v| !v.is_empty())
        .and_then(|v| str::from_utf8(v).ok())
}

/// Milliseconds since the Unix epoch, as RocketMQ stores time.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A message to store.
///
/// ```
/// use bytes::Bytes;
/// use rocketstore::Message;
///
/// let msg = Message::new("TopicA", 0u32, Bytes::from_static(b"hello"))
///     .with_tags("TagA")
///     .with_keys(["k1", "k2"])
///     .with_property("a", "b");
/// assert_eq!(msg.tags(), Some("TagA"));
/// assert_eq!(msg.property("KEYS"), Some("k1 k2"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name: 1 to 255 bytes of `[%|a-zA-Z0-9_-]`.
    pub topic: String,
    /// Queue within the topic.
    pub queue_id: u32,
    /// Message body, stored as is.
    pub body: Bytes,
    /// User flag, stored as is.
    pub flag: i32,
    /// Properties in insertion order; names are unique.
    pub properties: Vec<(String, String)>,
    /// When the producer made the message, ms since the Unix epoch. Default: now.
    pub born_timestamp: i64,
    /// The producer's address. Default: `0.0.0.0:0`.
    pub born_host: SocketAddr,
    /// RocketMQ system flag bits. The host bits (0x10, 0x20) are set by the store from
    /// the address families; the others are recorded as given. The transaction bits
    /// (`0xC`, see [`is_transaction_hidden`]) of a PREPARED or ROLLBACK record keep it from
    /// consumers: it gets queue offset 0 and no consume-queue or key-index entry.
    pub sys_flag: i32,
    /// How many times this message has been redelivered.
    pub reconsume_times: i32,
    /// Offset of the prepared message of a transaction, or 0.
    pub prepared_transaction_offset: i64,
}

impl Message {
    /// A message with the given topic, queue and body, born now, without properties.
    pub fn new(topic: impl Into<String>, queue_id: u32, body: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            queue_id,
            body: body.into(),
            flag: 0,
            properties: Vec::new(),
            born_timestamp: now_ms(),
            born_host: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            sys_flag: 0,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        }
    }

    /// Sets a property, replacing an earlier value of the same name.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_property(name, value);
        self
    }

    /// Sets a property in place, replacing an earlier value of the same name.
    pub fn set_property(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        match self.properties.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.properties.push((name, value)),
        }
    }

    /// Sets the tags (the `TAGS` property).
    pub fn with_tags(self, tags: impl Into<String>) -> Self {
        self.with_property(PROPERTY_TAGS, tags)
    }

    /// Sets the keys (the `KEYS` property, keys joined by a space).
    ///
    /// As in RocketMQ, the space is the separator and nothing escapes it: a key that holds
    /// a space is stored, indexed and returned by [`keys`](crate::StoredMessage::keys) as
    /// two keys, and `query_message` finds the message by each part, not by the whole.
    /// Empty keys are dropped the same way.
    pub fn with_keys<I, S>(self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut joined = String::new();
        for key in keys {
            if !joined.is_empty() {
                joined.push(KEY_SEPARATOR);
            }
            joined.push_str(key.as_ref());
        }
        self.with_property(PROPERTY_KEYS, joined)
    }

    /// Sets the user flag.
    pub fn with_flag(mut self, flag: i32) -> Self {
        self.flag = flag;
        self
    }

    /// Sets the producer's address.
    pub fn with_born_host(mut self, host: SocketAddr) -> Self {
        self.born_host = host;
        self
    }

    /// Sets the birth time, ms since the Unix epoch.
    pub fn with_born_timestamp(mut self, ms: i64) -> Self {
        self.born_timestamp = ms;
        self
    }

    /// The value of a property.
    pub fn property(&self, name: &str) -> Option<&str> {
        property_of(&self.properties, name)
    }

    /// The tags, if set.
    pub fn tags(&self) -> Option<&str> {
        self.property(PROPERTY_TAGS)
    }
}

/// As the store reads a property back (see [`find_property`]): the last non-empty value.
fn property_of<'a>(props: &'a [(String, String)], name: &str) -> Option<&'a str> {
    props
        .iter()
        .rev()
        .find(|(n, v)| n == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// A record read back from the commit log: every field RocketMQ stores.
///
/// The body is a zero-copy view into the mapped file; holding it keeps the file mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Size of the whole record in bytes.
    pub total_size: u32,
    /// Record format version: 1 or 2 (2 when the topic is longer than 127 bytes).
    pub version: u8,
    /// The stored body CRC (CRC-32 IEEE masked with 0x7FFFFFFF).
    pub body_crc: u32,
    /// Queue within the topic.
    pub queue_id: u32,
    /// User flag.
    pub flag: i32,
    /// Position of the message in its topic/queue.
    pub queue_offset: u64,
    /// Byte offset of the record in the commit log.
    pub physical_offset: u64,
    /// RocketMQ system flag bits.
    pub sys_flag: i32,
    /// When the producer made the message, ms.
    pub born_timestamp: i64,
    /// The producer's address.
    pub born_host: SocketAddr,
    /// When the store appended the message, ms (non-decreasing in log order).
    pub store_timestamp: i64,
    /// The store's address.
    pub store_host: SocketAddr,
    /// How many times this message has been redelivered.
    pub reconsume_times: i32,
    /// Offset of the prepared message of a transaction, or 0.
    pub prepared_transaction_offset: i64,
    /// The body, without a copy.
    pub body: Bytes,
    /// Topic name (shared by the messages of one `get_message` call).
    pub topic: std::sync::Arc<str>,
    /// Properties in stored order, read in place.
    pub properties: Properties,
}

/// The properties of a stored record, read in place from the record's bytes (no copy, no
/// allocation). Always well-formed: decoding refuses records whose properties are not.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Properties {
    raw: Bytes,
}

impl Properties {
    /// Wraps raw `name\x01value\x02…` bytes, checking they are well-formed.
    pub fn from_raw(raw: Bytes) -> Option<Properties> {
        properties_well_formed(&raw).then_some(Properties { raw })
    }

    /// The raw stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// `(name, value)` pairs in stored order, as stored (a repeated name or an empty
    /// value included; [`Properties::get`] reads them as RocketMQ does).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        std::str::from_utf8(&self.raw)
            .unwrap_or_default()
            .split(PROPERTY_SEPARATOR as char)
            .filter_map(|pair| pair.split_once(NAME_VALUE_SEPARATOR as char))
    }

    /// The value of a property, as RocketMQ reads it: an empty value counts as absent,
    /// and the last of repeated names wins.
    pub fn get(&self, name: &str) -> Option<&str> {
        find_property(&self.raw, name)
    }

    /// Whether there are no properties.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl StoredMessage {
    /// The value of a property.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name)
    }

    /// The tags, if any.
    pub fn tags(&self) -> Option<&str> {
        self.property(PROPERTY_TAGS)
    }

    /// The keys, split on spaces.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.property(PROPERTY_KEYS)
            .unwrap_or("")
            .split(KEY_SEPARATOR)
            .filter(|k| !k.is_empty())
    }

    /// Whether the stored body CRC matches the body.
    pub fn crc_ok(&self) -> bool {
        body_crc(&self.body) == self.body_crc
    }

    /// RocketMQ's "offset message id" of this record.
    pub fn msg_id(&self) -> MessageId {
        MessageId {
            store_host: self.store_host,
            physical_offset: self.physical_offset,
        }
    }
}

/// RocketMQ's offset message id: the store host followed by the physical offset.
///
/// `Display` prints RocketMQ's upper-case hex form (address bytes, port as i32, offset as i64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    /// The store's address.
    pub store_host: SocketAddr,
    /// The record's offset in the commit log.
    pub physical_offset: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 20];
        let host = host_bytes(&self.store_host, &mut buf);
        for b in host {
            write!(f, "{b:02X}")?;
        }
        write!(f, "{:016X}", self.physical_offset)
    }
}

/// Whether a stored message is confirmed durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutStatus {
    /// Stored, and durable as the flush mode promises.
    Ok,
    /// Stored, but the sync flush did not confirm durability within the timeout.
    FlushDiskTimeout,
}

/// The outcome of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    /// Whether durability was confirmed.
    pub status: PutStatus,
    /// Commit-log offset of the (first) record.
    pub physical_offset: u64,
    /// Queue offset of the (first) message; 0 when it is a transaction's PREPARED or
    /// ROLLBACK record, which holds no queue offset of its own.
    pub queue_offset: u64,
    /// Bytes appended to the commit log (all records of a batch).
    pub wrote_bytes: u32,
    /// Store time stamped on the record(s), ms.
    pub store_timestamp: i64,
    /// Message id of the (first) record.
    pub msg_id: MessageId,
    /// How many messages were stored (1 for a single put).
    pub message_count: u32,
}

impl PutResult {
    /// Whether durability was confirmed.
    pub fn is_ok(&self) -> bool {
        self.status == PutStatus::Ok
    }

    /// Commit-log offset just past the last record written.
    pub fn end_offset(&self) -> u64 {
        self.physical_offset + u64::from(self.wrote_bytes)
    }
}
