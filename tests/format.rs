//! The record format: golden bytes written by hand from the layout table, round trips
//! over random messages, and decoding of arbitrary bytes without panics.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use proptest::prelude::*;
use rocketstore::format::{self, MAGIC_V1, MAGIC_V2};
use rocketstore::{Error, Message};

/// Builds the expected record field by field, exactly as the layout table lists them.
struct Golden(Vec<u8>);

impl Golden {
    fn new() -> Self {
        Golden(Vec::new())
    }
    fn field(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
}

fn msg_with(topic: &str, born: SocketAddr) -> Message {
    Message::new(topic, 3u32, Bytes::from_static(b"hello"))
        .with_flag(7)
        .with_born_host(born)
        .with_born_timestamp(0x0102_0304_0506_0708)
        .with_property("TAGS", "TagA")
}

#[test]
fn golden_v1_ipv4() {
    let born = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 5555));
    let store = SocketAddr::from((Ipv4Addr::new(192, 168, 1, 2), 10911));
    let mut rec = format::encode(&msg_with("TopicA", born), &store, 1 << 20).unwrap();
    rec.assign(42, 4096, 0x1111_2222_3333_4444);

    // Properties: "TAGS" 0x01 "TagA" 0x02 = 10 bytes.
    // Total: 91 fixed + 5 body + 6 topic + 10 properties = 112.
    let expected = Golden::new()
        .field(&[0x00, 0x00, 0x00, 0x70]) // TOTALSIZE 112
        .field(&[0xDA, 0xA3, 0x20, 0xA7]) // MAGICCODE v1
        .field(&[0x36, 0x10, 0xA6, 0x86]) // BODYCRC crc32("hello") & 0x7FFFFFFF
        .field(&[0x00, 0x00, 0x00, 0x03]) // QUEUEID 3
        .field(&[0x00, 0x00, 0x00, 0x07]) // FLAG 7
        .field(&[0, 0, 0, 0, 0, 0, 0, 42]) // QUEUEOFFSET 42
        .field(&[0, 0, 0, 0, 0, 0, 0x10, 0x00]) // PHYSICALOFFSET 4096
        .field(&[0x00, 0x00, 0x00, 0x00]) // SYSFLAG: both hosts IPv4
        .field(&[1, 2, 3, 4, 5, 6, 7, 8]) // BORNTIMESTAMP
        .field(&[10, 0, 0, 1, 0x00, 0x00, 0x15, 0xB3]) // BORNHOST 10.0.0.1:5555
        .field(&[0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44]) // STORETIMESTAMP
        .field(&[192, 168, 1, 2, 0x00, 0x00, 0x2A, 0x9F]) // STOREHOST 192.168.1.2:10911
        .field(&[0, 0, 0, 0]) // RECONSUMETIMES
        .field(&[0, 0, 0, 0, 0, 0, 0, 0]) // PREPARED TRANSACTION OFFSET
        .field(&[0, 0, 0, 5]) // BODY length
        .field(b"hello") // BODY
        .field(&[6]) // TOPIC length (1 byte in v1)
        .field(b"TopicA") // TOPIC
        .field(&[0x00, 0x0A]) // PROPERTIES length 10
        .field(b"TAGS\x01TagA\x02") // PROPERTIES
        .0;
    assert_eq!(rec.as_bytes(), &expected[..]);

    let decoded = format::decode(&Bytes::from(expected), 4096, true).unwrap();
    assert_eq!(decoded.version, 1);
    assert_eq!(&*decoded.topic, "TopicA");
    assert_eq!(decoded.queue_offset, 42);
    assert_eq!(decoded.born_host, born);
    assert_eq!(decoded.store_host, store);
    assert_eq!(decoded.tags(), Some("TagA"));
    assert_eq!(
        decoded.msg_id().to_string(),
        "C0A8010200002A9F0000000000001000"
    );
}

#[test]
fn golden_v1_ipv6() {
    let born_ip = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    let store_ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    let born = SocketAddr::from((born_ip, 1));
    let store = SocketAddr::from((store_ip, 2));
    let mut rec = format::encode(&msg_with("T", born), &store, 1 << 20).unwrap();
    rec.assign(0, 0, 5);

    // Total: 91 + 12 + 12 (IPv6 hosts are 20 bytes, not 8) + 5 body + 1 topic + 10 props = 131.
    let expected = Golden::new()
        .field(&[0, 0, 0, 131]) // TOTALSIZE
        .field(&[0xDA, 0xA3, 0x20, 0xA7]) // MAGICCODE v1
        .field(&[0x36, 0x10, 0xA6, 0x86]) // BODYCRC
        .field(&[0, 0, 0, 3]) // QUEUEID
        .field(&[0, 0, 0, 7]) // FLAG
        .field(&[0; 8]) // QUEUEOFFSET
        .field(&[0; 8]) // PHYSICALOFFSET
        .field(&[0, 0, 0, 0x30]) // SYSFLAG: 0x10 born host IPv6 | 0x20 store host IPv6
        .field(&[1, 2, 3, 4, 5, 6, 7, 8]) // BORNTIMESTAMP
        .field(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]) // BORNHOST address
        .field(&[0, 0, 0, 1]) // BORNHOST port
        .field(&[0, 0, 0, 0, 0, 0, 0, 5]) // STORETIMESTAMP
        .field(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]) // STOREHOST address
        .field(&[0, 0, 0, 2]) // STOREHOST port
        .field(&[0, 0, 0, 0]) // RECONSUMETIMES
        .field(&[0; 8]) // PREPARED TRANSACTION OFFSET
        .field(&[0, 0, 0, 5]) // BODY length
        .field(b"hello") // BODY
        .field(&[1]) // TOPIC length
        .field(b"T") // TOPIC
        .field(&[0, 10]) // PROPERTIES length
        .field(b"TAGS\x01TagA\x02") // PROPERTIES
        .0;
    assert_eq!(rec.as_bytes(), &expected[..]);
    let decoded = format::decode(&Bytes::from(expected), 0, true).unwrap();
    assert_eq!(decoded.born_host, born);
    assert_eq!(decoded.store_host, store);
    assert_eq!(decoded.sys_flag, 0x30);
}

#[test]
fn golden_v2_long_topic() {
    let topic = "t".repeat(200);
    let born = SocketAddr::from((Ipv4Addr::new(1, 2, 3, 4), 80));
    let store = SocketAddr::from((Ipv4Addr::new(5, 6, 7, 8), 81));
    let msg = Message::new(topic.clone(), 0u32, Bytes::new())
        .with_born_host(born)
        .with_born_timestamp(9);
    let mut rec = format::encode(&msg, &store, 1 << 20).unwrap();
    rec.assign(1, 2, 3);

    // Total: 91 + 1 (2-byte topic length) + 200 topic = 292.
    let expected = Golden::new()
        .field(&[0, 0, 0x01, 0x24]) // TOTALSIZE 292
        .field(&[0xDA, 0xA3, 0x20, 0xAB]) // MAGICCODE v2
        .field(&[0, 0, 0, 0]) // BODYCRC of the empty body
        .field(&[0, 0, 0, 0]) // QUEUEID
        .field(&[0, 0, 0, 0]) // FLAG
        .field(&[0, 0, 0, 0, 0, 0, 0, 1]) // QUEUEOFFSET
        .field(&[0, 0, 0, 0, 0, 0, 0, 2]) // PHYSICALOFFSET
        .field(&[0, 0, 0, 0]) // SYSFLAG
        .field(&[0, 0, 0, 0, 0, 0, 0, 9]) // BORNTIMESTAMP
        .field(&[1, 2, 3, 4, 0, 0, 0, 80]) // BORNHOST
        .field(&[0, 0, 0, 0, 0, 0, 0, 3]) // STORETIMESTAMP
        .field(&[5, 6, 7, 8, 0, 0, 0, 81]) // STOREHOST
        .field(&[0, 0, 0, 0]) // RECONSUMETIMES
        .field(&[0; 8]) // PREPARED TRANSACTION OFFSET
        .field(&[0, 0, 0, 0]) // BODY length, no body
        .field(&[0, 200]) // TOPIC length (2 bytes in v2)
        .field(topic.as_bytes()) // TOPIC
        .field(&[0, 0]) // PROPERTIES length
        .0;
    assert_eq!(rec.as_bytes(), &expected[..]);
    let decoded = format::decode(&Bytes::from(expected), 2, true).unwrap();
    assert_eq!(decoded.version, 2);
    assert_eq!(&*decoded.topic, topic.as_str());
    assert_eq!(u32::from_be_bytes([0xDA, 0xA3, 0x20, 0xAB]), MAGIC_V2);
    assert_ne!(MAGIC_V1, MAGIC_V2);
}

#[test]
fn blank_record_layout() {
    assert_eq!(
        format::blank_record(1000),
        [0, 0, 0x03, 0xE8, 0xCB, 0xD4, 0x31, 0x94]
    );
}

#[test]
fn crc_mismatch_is_reported_only_when_asked() {
    let store = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    let mut rec = format::encode(&Message::new("T", 0u32, &b"abc"[..]), &store, 1 << 20).unwrap();
    rec.assign(0, 0, 0);
    let mut bytes = rec.as_bytes().to_vec();
    let body_at = bytes.len() - 2 - 1 - 1 - 3; // props len, topic, topic len, body
    bytes[body_at] ^= 0xFF;
    let bytes = Bytes::from(bytes);
    let unchecked = format::decode(&bytes, 0, false).unwrap();
    assert!(!unchecked.crc_ok());
    let err = format::decode(&bytes, 0, true).unwrap_err();
    assert!(err.to_string().contains("CRC"), "{err}");
}

fn arb_host() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p))),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        "[a-zA-Z0-9_%|-]{1,255}",
        // RocketMQ's queue ids are signed: the encoder refuses the upper half.
        0..=i32::MAX as u32,
        proptest::collection::vec(any::<u8>(), 0..2048),
        proptest::collection::vec(("[a-zA-Z]{1,12}", "[^\u{1}\u{2}]{0,40}"), 0..6),
        arb_host(),
        (any::<i32>(), any::<i64>(), any::<i32>(), any::<i64>()),
        any::<i32>(),
    )
        .prop_map(
            |(topic, queue, body, props, born, (flag, born_ts, reconsume, prepared), sys)| {
                let mut m = Message::new(topic, queue, body)
                    .with_flag(flag)
                    .with_born_host(born)
                    .with_born_timestamp(born_ts);
                for (k, v) in props {
                    m.set_property(k, v);
                }
                m.reconsume_times = reconsume;
                m.prepared_transaction_offset = prepared;
                m.sys_flag = sys & !0x30;
                m
            },
        )
}

proptest! {
    #[test]
    fn encode_decode_round_trip(
        msg in arb_message(),
        store in arb_host(),
        qo in any::<u32>(),
        po in any::<u32>(),
        ts in any::<i64>(),
    ) {
        let mut rec = format::encode(&msg, &store, 1 << 20).unwrap();
        rec.assign(u64::from(qo), u64::from(po), ts);
        let d = format::decode(&Bytes::copy_from_slice(rec.as_bytes()), 0, true).unwrap();
        prop_assert_eq!(d.total_size as usize, rec.len());
        prop_assert_eq!(d.version, if msg.topic.len() > 127 { 2 } else { 1 });
        prop_assert_eq!(&*d.topic, msg.topic.as_str());
        prop_assert_eq!(d.queue_id, msg.queue_id);
        prop_assert_eq!(&d.body, &msg.body);
        let props: Vec<(String, String)> =
            d.properties.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(&props, &msg.properties);
        prop_assert_eq!(d.born_host, msg.born_host);
        prop_assert_eq!(d.store_host, store);
        prop_assert_eq!(d.flag, msg.flag);
        prop_assert_eq!(d.born_timestamp, msg.born_timestamp);
        prop_assert_eq!(d.store_timestamp, ts);
        prop_assert_eq!(d.queue_offset, u64::from(qo));
        prop_assert_eq!(d.physical_offset, u64::from(po));
        prop_assert_eq!(d.reconsume_times, msg.reconsume_times);
        prop_assert_eq!(d.prepared_transaction_offset, msg.prepared_transaction_offset);
        prop_assert_eq!(d.sys_flag & !0x30, msg.sys_flag);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let b = Bytes::from(bytes);
        let _ = format::decode(&b, 0, true);
        let _ = format::peek(&b, 0);
    }

    #[test]
    fn damaged_records_decode_or_error(msg in arb_message(), cut in any::<usize>(), flip in any::<(usize, u8)>()) {
        let store = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let rec = format::encode(&msg, &store, 1 << 20).unwrap();
        let bytes = rec.as_bytes();
        let truncated = Bytes::copy_from_slice(&bytes[..cut % bytes.len()]);
        let corrupted = matches!(format::decode(&truncated, 0, true), Err(Error::Corrupted { .. }));
        prop_assert!(corrupted, "a truncated record decoded");
        let mut flipped = bytes.to_vec();
        let at = flip.0 % flipped.len();
        flipped[at] ^= flip.1 | 1;
        let _ = format::decode(&Bytes::from(flipped), 0, true);
    }
}
