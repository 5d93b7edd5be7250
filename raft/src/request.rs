//! What a replicated put carries through the Raft log, and its compact binary form.
//!
//! A put is a [`PutRequest`]: the message plus the store time the leader assigned, so
//! every replica applies it into identical record bytes. Puts that arrive together are
//! proposed as one Raft entry, a [`PutBatch`]: openraft syncs its log once per entry it
//! appends, so one entry per put would cap a leader at one put per `fdatasync`. Raft log entries
//! are written to disk in a hand-rolled binary frame ([`encode_entry`] / [`decode_entry`])
//! rather than JSON: bodies are raw bytes, and JSON would triple their size.

use std::net::SocketAddr;

use bytes::Bytes;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use rocketstore::Message;
use serde::{Deserialize, Serialize};

use crate::{NodeId, TypeConfig};

/// A message to store on every replica, with the store time its leader assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Topic name.
    pub topic: String,
    /// Queue within the topic.
    pub queue_id: u32,
    /// Message body.
    pub body: Bytes,
    /// User flag.
    pub flag: i32,
    /// Properties in insertion order.
    pub properties: Vec<(String, String)>,
    /// When the producer made the message, ms since the Unix epoch.
    pub born_timestamp: i64,
    /// The producer's address.
    pub born_host: SocketAddr,
    /// RocketMQ system flag bits.
    pub sys_flag: i32,
    /// Redelivery count.
    pub reconsume_times: i32,
    /// Offset of a transaction's prepared message, or 0.
    pub prepared_transaction_offset: i64,
    /// The store time, chosen by the leader that proposed the put, ms.
    pub store_timestamp: i64,
}

impl PutRequest {
    /// The request that stores `msg` with the given store time.
    pub fn new(msg: Message, store_timestamp: i64) -> PutRequest {
        PutRequest {
            topic: msg.topic,
            queue_id: msg.queue_id,
            body: msg.body,
            flag: msg.flag,
            properties: msg.properties,
            born_timestamp: msg.born_timestamp,
            born_host: msg.born_host,
            sys_flag: msg.sys_flag,
            reconsume_times: msg.reconsume_times,
            prepared_transaction_offset: msg.prepared_transaction_offset,
            store_timestamp,
        }
    }

    /// About how many bytes the put takes encoded, in an entry or on the wire: its body,
    /// topic and properties, and room for the fixed fields. What batches and network
    /// frames are sized by.
    pub fn encoded_len_estimate(&self) -> usize {
        let properties: usize = self
            .properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum();
        self.body.len() + self.topic.len() + properties + 128
    }

    /// The message to append as put `at` of `of` in the entry `log_id`, which it records
    /// in [`crate::PROPERTY_RAFT_LOG_ID`].
    pub(crate) fn to_message(&self, at: BatchPosition) -> Message {
        let mut msg = Message::new(self.topic.clone(), self.queue_id, self.body.clone());
        msg.flag = self.flag;
        msg.properties = self.properties.clone();
        msg.born_timestamp = self.born_timestamp;
        msg.born_host = self.born_host;
        msg.sys_flag = self.sys_flag;
        msg.reconsume_times = self.reconsume_times;
        msg.prepared_transaction_offset = self.prepared_transaction_offset;
        // The property is ours: a copy a producer set (refused at the leader, but an
        // entry may come from elsewhere) must never pass for the record's position.
        msg.properties
            .retain(|(name, _)| name != crate::PROPERTY_RAFT_LOG_ID);
        msg.with_property(crate::PROPERTY_RAFT_LOG_ID, at.to_string())
    }
}

/// The puts of one Raft entry, applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutBatch {
    /// The puts.
    pub puts: Vec<PutRequest>,
}

/// What applying a [`PutBatch`] gave: one response per put, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchResponse {
    /// Per put.
    pub puts: Vec<PutResponse>,
}

/// Where a stored message came from: put `at` of the `of` puts of Raft entry `log_id`.
/// Its text form, `term.node.index.at.of`, is the value of
/// [`crate::PROPERTY_RAFT_LOG_ID`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPosition {
    /// The entry.
    pub log_id: LogId<NodeId>,
    /// The put's position in the entry, from 0.
    pub at: u32,
    /// How many puts the entry holds.
    pub of: u32,
}

impl BatchPosition {
    /// The position whose text form is the longest.
    pub(crate) fn longest() -> BatchPosition {
        BatchPosition {
            log_id: LogId::new(CommittedLeaderId::new(u64::MAX, u64::MAX), u64::MAX),
            at: u32::MAX - 1,
            of: u32::MAX,
        }
    }

    /// Whether this is the entry's last put: the entry is then wholly applied.
    pub fn is_last(&self) -> bool {
        self.at + 1 >= self.of
    }

    /// Reads the text form back; `None` unless it is exactly one.
    pub fn parse(s: &str) -> Option<BatchPosition> {
        // Digits only: `u64::from_str` also takes a leading `+`, a second spelling.
        let number = |p: &str| match p.bytes().all(|b| b.is_ascii_digit()) {
            true => p.parse::<u64>().ok(),
            false => None,
        };
        let mut parts = s.split('.').map(number);
        let mut next = || parts.next()?;
        let (term, node, index, at, of) = (next()?, next()?, next()?, next()?, next()?);
        if next().is_some() || at >= of || of > u64::from(u32::MAX) {
            return None;
        }
        Some(BatchPosition {
            log_id: LogId::new(CommittedLeaderId::new(term, node), index),
            at: at as u32,
            of: of as u32,
        })
    }
}

impl std::fmt::Display for BatchPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = &self.log_id;
        write!(
            f,
            "{}.{}.{}.{}.{}",
            id.leader_id.term, id.leader_id.node_id, id.index, self.at, self.of
        )
    }
}

/// What applying a put gave, the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutResponse {
    /// Stored at these offsets.
    Stored {
        /// Byte offset of the record in the commit log.
        physical_offset: u64,
        /// Position of the message in its queue (0 for a hidden transaction record).
        queue_offset: u64,
        /// The store time recorded.
        store_timestamp: i64,
    },
    /// Refused by every replica alike (an invalid topic, property or size); the reason.
    Rejected(String),
    /// Applied before this node restarted; its outcome is in the store.
    AlreadyApplied,
}

const KIND_BLANK: u8 = 0;
const KIND_PUTS: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// Appends the binary form of `entry` to `out`.
pub(crate) fn encode_entry(entry: &Entry<TypeConfig>, out: &mut Vec<u8>) {
    out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_be_bytes());
    out.extend_from_slice(&entry.log_id.index.to_be_bytes());
    match &entry.payload {
        EntryPayload::Blank => out.push(KIND_BLANK),
        EntryPayload::Normal(batch) => {
            out.push(KIND_PUTS);
            out.extend_from_slice(&(batch.puts.len() as u32).to_be_bytes());
            for put in &batch.puts {
                encode_put(put, out);
            }
        }
        EntryPayload::Membership(m) => {
            out.push(KIND_MEMBERSHIP);
            // Membership changes are rare and small: JSON keeps their form open.
            let json = serde_json::to_vec(m).expect("a membership always serializes");
            put_bytes(out, &json);
        }
    }
}

/// Reads an entry written by [`encode_entry`]; `None` when the bytes are not one.
pub(crate) fn decode_entry(bytes: &[u8]) -> Option<Entry<TypeConfig>> {
    let mut r = Reader(bytes);
    let term = r.u64()?;
    let node = r.u64()?;
    let index = r.u64()?;
    let log_id = LogId::new(CommittedLeaderId::new(term, node), index);
    let payload = match r.u8()? {
        KIND_BLANK => EntryPayload::Blank,
        KIND_PUTS => {
            let count = r.u32()? as usize;
            let mut puts = Vec::with_capacity(count.min(4096));
            for _ in 0..count {
                puts.push(decode_put(&mut r)?);
            }
            EntryPayload::Normal(PutBatch { puts })
        }
        KIND_MEMBERSHIP => {
            let m: Membership<NodeId, openraft::BasicNode> =
                serde_json::from_slice(r.bytes()?).ok()?;
            EntryPayload::Membership(m)
        }
        _ => return None,
    };
    if !r.0.is_empty() {
        return None;
    }
    Some(Entry { log_id, payload })
}

fn encode_put(put: &PutRequest, out: &mut Vec<u8>) {
    put_str(out, &put.topic);
    out.extend_from_slice(&put.queue_id.to_be_bytes());
    out.extend_from_slice(&put.flag.to_be_bytes());
    out.extend_from_slice(&put.sys_flag.to_be_bytes());
    out.extend_from_slice(&put.reconsume_times.to_be_bytes());
    out.extend_from_slice(&put.born_timestamp.to_be_bytes());
    out.extend_from_slice(&put.store_timestamp.to_be_bytes());
    out.extend_from_slice(&put.prepared_transaction_offset.to_be_bytes());
    put_str(out, &put.born_host.to_string());
    out.extend_from_slice(&(put.properties.len() as u32).to_be_bytes());
    for (name, value) in &put.properties {
        put_str(out, name);
        put_str(out, value);
    }
    put_bytes(out, &put.body);
}

fn decode_put(r: &mut Reader<'_>) -> Option<PutRequest> {
    let topic = r.string()?;
    let queue_id = r.u32()?;
    let flag = r.u32()? as i32;
    let sys_flag = r.u32()? as i32;
    let reconsume_times = r.u32()? as i32;
    let born_timestamp = r.u64()? as i64;
    let store_timestamp = r.u64()? as i64;
    let prepared_transaction_offset = r.u64()? as i64;
    let born_host = r.string()?.parse().ok()?;
    let count = r.u32()? as usize;
    let mut properties = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        properties.push((r.string()?, r.string()?));
    }
    let body = Bytes::copy_from_slice(r.bytes()?);
    Some(PutRequest {
        topic,
        queue_id,
        body,
        flag,
        properties,
        born_timestamp,
        born_host,
        sys_flag,
        reconsume_times,
        prepared_transaction_offset,
        store_timestamp,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn id(term: u64, node: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    /// Batches and network frames are sized by the estimate: it must not fall short of
    /// the encoded size, properties included (a put can carry far more of them than body).
    #[test]
    fn the_size_estimate_covers_the_encoded_put() {
        for (body, props) in [(0usize, 0usize), (100, 0), (10, 200), (5, 32 << 10)] {
            let mut msg = Message::new("TopicA", 1u32, Bytes::from(vec![b'b'; body]));
            for i in 0..props / 100 {
                msg = msg.with_property(format!("p{i}"), "v".repeat(95));
            }
            let put = PutRequest::new(msg, 1_700_000_000_000);
            let estimate = put.encoded_len_estimate();
            let mut one = Vec::new();
            encode_entry(
                &Entry {
                    log_id: id(1, 1, 1),
                    payload: EntryPayload::Normal(PutBatch { puts: vec![] }),
                },
                &mut one,
            );
            let mut buf = Vec::new();
            encode_entry(
                &Entry {
                    log_id: id(1, 1, 1),
                    payload: EntryPayload::Normal(PutBatch { puts: vec![put] }),
                },
                &mut buf,
            );
            let encoded = buf.len() - one.len();
            assert!(
                estimate >= encoded,
                "{body} B body, {props} B properties: {estimate} < {encoded}"
            );
            assert!(estimate <= encoded + 256, "{estimate} against {encoded}");
        }
    }

    #[test]
    fn every_entry_kind_round_trips() {
        let msg = Message::new("TopicA", 3u32, Bytes::from_static(b"body\x00\xff"))
            .with_keys(["k1", "k2"])
            .with_tags("TagA");
        let members = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([(1, openraft::BasicNode::new("a:1"))]),
        );
        let entries = [
            Entry {
                log_id: id(1, 1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: id(2, 3, 9),
                payload: EntryPayload::Normal(PutBatch {
                    puts: vec![
                        PutRequest::new(msg.clone(), 1_700_000_000_123),
                        PutRequest::new(msg.with_property("x", "y"), 7),
                    ],
                }),
            },
            Entry {
                log_id: id(2, 3, 10),
                payload: EntryPayload::Normal(PutBatch { puts: vec![] }),
            },
            Entry {
                log_id: id(u64::MAX, 7, u64::MAX),
                payload: EntryPayload::Membership(members),
            },
        ];
        for entry in entries {
            let mut buf = Vec::new();
            encode_entry(&entry, &mut buf);
            assert_eq!(decode_entry(&buf).as_ref(), Some(&entry));
            // Any cut or any extra byte is refused, never misread.
            for cut in 0..buf.len() {
                assert_eq!(decode_entry(&buf[..cut]), None, "cut at {cut}");
            }
            buf.push(0);
            assert_eq!(decode_entry(&buf), None);
        }
    }

    proptest::proptest! {
        /// Whatever bytes a damaged Raft log holds, decoding never panics, and what it
        /// accepts encodes back to the same bytes.
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Some(entry) = decode_entry(&bytes) {
                let mut again = Vec::new();
                encode_entry(&entry, &mut again);
                proptest::prop_assert_eq!(again, bytes);
            }
        }

        /// Any batch of puts round-trips through the binary form.
        #[test]
        fn any_batch_round_trips(
            puts in proptest::collection::vec(
                (
                    "[a-zA-Z0-9_-]{1,20}",
                    proptest::num::u32::ANY,
                    proptest::collection::vec(proptest::num::u8::ANY, 0..300),
                    proptest::collection::vec(("[a-z]{1,8}", "\\PC{0,12}"), 0..4),
                    proptest::num::i64::ANY,
                    proptest::num::i32::ANY,
                ),
                0..8,
            ),
            index in proptest::num::u64::ANY,
        ) {
            let puts = puts
                .into_iter()
                .map(|(topic, queue, body, props, time, flag)| {
                    let mut msg = Message::new(topic, queue, Bytes::from(body));
                    msg.properties = props.into_iter().map(|(k, v)| (k, v.to_string())).collect();
                    msg.flag = flag;
                    msg.sys_flag = flag.rotate_left(7);
                    msg.born_timestamp = time.rotate_left(3);
                    PutRequest::new(msg, time)
                })
                .collect();
            let entry = Entry {
                log_id: id(index / 2, index % 7, index),
                payload: EntryPayload::Normal(PutBatch { puts }),
            };
            let mut buf = Vec::new();
            encode_entry(&entry, &mut buf);
            proptest::prop_assert_eq!(decode_entry(&buf), Some(entry));
        }
    }

    #[test]
    fn a_forged_position_never_reaches_the_record() {
        let mut msg = Message::new("T", 0u32, Bytes::from_static(b"x"));
        msg.properties = vec![
            (crate::PROPERTY_RAFT_LOG_ID.into(), "1.1.1.0.1".into()),
            ("a".into(), "b".into()),
            (
                crate::PROPERTY_RAFT_LOG_ID.into(),
                "999.1.999999.0.1".into(),
            ),
        ];
        let at = BatchPosition {
            log_id: id(3, 2, 40),
            at: 1,
            of: 4,
        };
        let stored = PutRequest::new(msg, 0).to_message(at);
        let ours: Vec<_> = stored
            .properties
            .iter()
            .filter(|(n, _)| n == crate::PROPERTY_RAFT_LOG_ID)
            .collect();
        assert_eq!(ours.len(), 1);
        assert_eq!(
            stored.property(crate::PROPERTY_RAFT_LOG_ID),
            Some("3.2.40.1.4")
        );
        assert_eq!(stored.property("a"), Some("b"));
    }

    #[test]
    fn batch_positions_round_trip_through_their_property_form() {
        let positions = [
            (id(0, 0, 0), 0, 1),
            (id(5, 2, 77), 3, 9),
            (id(u64::MAX, u64::MAX, u64::MAX), u32::MAX - 1, u32::MAX),
        ];
        for (log_id, at, of) in positions {
            let p = BatchPosition { log_id, at, of };
            assert_eq!(BatchPosition::parse(&p.to_string()), Some(p));
            assert_eq!(p.is_last(), at + 1 == of);
        }
        for bad in [
            "",
            "1.2.3.4",
            "1.2.3.4.5.6",
            "a.b.c.d.e",
            "1..3.0.1",
            "1.2.3.1.1",
            "1.2.3.0.4294967296",
            "+1.2.3.0.1",
            "1.2.3.+0.1",
            " 1.2.3.0.1",
        ] {
            assert_eq!(BatchPosition::parse(bad), None, "{bad:?}");
        }
    }
}
