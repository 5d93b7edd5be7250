//! The on-disk record format: the one place that knows where every byte of a commit-log
//! record goes. Byte-compatible with Apache RocketMQ's message versions 1 and 2.
//!
//! See `docs/FORMAT.md` for the layout table. All integers are big-endian.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::message::{
    IPV4_HOST_LEN, IPV6_HOST_LEN, KEY_SEPARATOR, Message, PROPERTY_KEYS, PROPERTY_TAGS,
    PROPERTY_UNIQ_KEY, Properties, StoredMessage, host_len, is_transaction_hidden,
};
pub use crate::message::{
    NAME_VALUE_SEPARATOR, PROPERTY_SEPARATOR, body_crc, find_property, host_bytes,
    properties_well_formed,
};

/// Magic code of a version-1 record (topic length in one byte).
pub const MAGIC_V1: u32 = 0xDAA3_20A7;
/// Magic code of a version-2 record (topic length in two bytes).
pub const MAGIC_V2: u32 = 0xDAA3_20AB;
/// Magic code of the blank record that fills the end of a commit-log file.
pub const BLANK_MAGIC: u32 = 0xCBD4_3194;
/// Size of the blank end-of-file record: `[i32 bytes left][i32 BLANK_MAGIC]`.
pub const BLANK_RECORD_LEN: usize = 8;
/// Longest topic a version-1 record can hold; longer topics use version 2.
pub const MAX_TOPIC_LEN_V1: usize = 127;
/// Longest topic the store accepts (RocketMQ's hard limit).
pub const MAX_TOPIC_LEN: usize = 255;
/// Longest encoded properties field.
pub const MAX_PROPERTIES_LEN: usize = 32767;
/// SYSFLAG bit: the born host is IPv6.
pub const SYSFLAG_BORN_HOST_V6: i32 = 0x10;
/// SYSFLAG bit: the store host is IPv6.
pub const SYSFLAG_STORE_HOST_V6: i32 = 0x20;

// Field offsets, each derived from the one before and its size (the table in
// `docs/FORMAT.md`), so no offset is a free-standing number.
const I32: usize = 4;
const I64: usize = 8;

/// Offset of TOTALSIZE.
pub const POS_TOTAL_SIZE: usize = 0;
/// Offset of MAGICCODE.
pub const POS_MAGIC: usize = POS_TOTAL_SIZE + I32;
/// Offset of BODYCRC.
pub const POS_BODY_CRC: usize = POS_MAGIC + I32;
const POS_QUEUE_ID: usize = POS_BODY_CRC + I32;
const POS_FLAG: usize = POS_QUEUE_ID + I32;
/// Offset of QUEUEOFFSET.
pub const POS_QUEUE_OFFSET: usize = POS_FLAG + I32;
/// Offset of PHYSICALOFFSET.
pub const POS_PHYSICAL_OFFSET: usize = POS_QUEUE_OFFSET + I64;
/// Offset of SYSFLAG.
pub const POS_SYS_FLAG: usize = POS_PHYSICAL_OFFSET + I64;
const POS_BORN_TIMESTAMP: usize = POS_SYS_FLAG + I32;
/// Offset of BORNHOST; STORETIMESTAMP follows it.
pub const POS_BORN_HOST: usize = POS_BORN_TIMESTAMP + I64;

/// Smallest possible record: version 1, IPv4 hosts, empty body, empty topic and properties.
pub const MIN_RECORD_LEN: usize = POS_BORN_HOST
    + IPV4_HOST_LEN // born host
    + I64 // store timestamp
    + IPV4_HOST_LEN // store host
    + I32 // reconsume times
    + I64 // prepared transaction offset
    + I32 // body length
    + 1 // topic length (v1)
    + 2; // properties length

const _: () = assert!(POS_BORN_HOST == 48 && MIN_RECORD_LEN == 91);

/// Checks a topic name: 1 to 255 bytes of `[%|a-zA-Z0-9_-]` (RocketMQ's rule; it also keeps
/// topic names safe as directory names).
#[inline]
pub fn validate_topic(topic: &str) -> Result<()> {
    let reason = if topic.is_empty() {
        "empty"
    } else if topic.len() > MAX_TOPIC_LEN {
        "longer than 255 bytes"
    } else if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
    {
        "only [%|a-zA-Z0-9_-] are allowed"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    })
}

fn properties_len(props: &[(String, String)]) -> Result<usize> {
    let mut len = 0usize;
    for (name, value) in props {
        let bad_sep = |s: &str| {
            s.bytes()
                .any(|b| b == NAME_VALUE_SEPARATOR || b == PROPERTY_SEPARATOR)
        };
        let reason = if name.is_empty() {
            Some("empty name")
        } else if bad_sep(name) || bad_sep(value) {
            Some("contains a separator byte 0x01 or 0x02")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::InvalidProperty {
                name: name.clone(),
                reason,
            });
        }
        len += name.len() + value.len() + 2;
    }
    if len > MAX_PROPERTIES_LEN {
        return Err(Error::PropertiesTooLarge {
            size: len,
            max: MAX_PROPERTIES_LEN,
        });
    }
    Ok(len)
}

/// An encoded record waiting for the three fields only the append lock may assign.
#[derive(Debug, Clone)]
pub struct EncodedRecord {
    bytes: Vec<u8>,
    store_timestamp_pos: usize,
    /// A transaction's PREPARED or ROLLBACK record: queue offset 0, its queue not advanced.
    hidden: bool,
}

impl EncodedRecord {
    /// Record length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a record is at least [`MIN_RECORD_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether the record is hidden from consumers (see [`is_transaction_hidden`]): it
    /// takes queue offset 0 and does not advance its queue.
    pub fn is_hidden(&self) -> bool {
        self.hidden
    }

    /// Fills in the queue offset, physical offset and store time assigned under the lock.
    pub fn assign(&mut self, queue_offset: u64, physical_offset: u64, store_timestamp: i64) {
        let b = &mut self.bytes;
        b[POS_QUEUE_OFFSET..POS_QUEUE_OFFSET + 8].copy_from_slice(&queue_offset.to_be_bytes());
        b[POS_PHYSICAL_OFFSET..POS_PHYSICAL_OFFSET + 8]
            .copy_from_slice(&physical_offset.to_be_bytes());
        let p = self.store_timestamp_pos;
        b[p..p + 8].copy_from_slice(&store_timestamp.to_be_bytes());
    }

    /// The record bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The length of the record [`encode`] makes of `msg`, after the same checks (topic,
/// queue id at most `i32::MAX`, body size, properties), without encoding it.
///
/// ```
/// use bytes::Bytes;
/// use rocketstore::{Error, Message, format};
///
/// let host = "127.0.0.1:10911".parse().unwrap();
/// let msg = Message::new("TopicA", 0u32, Bytes::from_static(b"hello"));
/// let len = format::encoded_len(&msg, &host, 1024).unwrap();
/// assert_eq!(len, format::encode(&msg, &host, 1024).unwrap().len());
/// let bad = Message::new("no spaces", 0u32, Bytes::new());
/// assert!(matches!(format::encoded_len(&bad, &host, 1024), Err(Error::InvalidTopic { .. })));
/// ```
pub fn encoded_len(msg: &Message, store_host: &SocketAddr, max_body: usize) -> Result<usize> {
    Ok(checked_len(msg, store_host, max_body)?.0)
}

/// The record's length and its properties' length, after the checks.
fn checked_len(msg: &Message, store_host: &SocketAddr, max_body: usize) -> Result<(usize, usize)> {
    validate_topic(&msg.topic)?;
    if msg.queue_id > i32::MAX as u32 {
        return Err(Error::InvalidQueueId {
            queue_id: msg.queue_id,
        });
    }
    if msg.body.len() > max_body {
        return Err(Error::MessageTooLarge {
            size: msg.body.len(),
            max: max_body,
        });
    }
    let props_len = properties_len(&msg.properties)?;
    let topic_len_field = if msg.topic.len() > MAX_TOPIC_LEN_V1 {
        2
    } else {
        1
    };
    let total = 4
        + 4
        + 4
        + 4
        + 4
        + 8
        + 8
        + 4
        + 8
        + host_len(&msg.born_host)
        + 8
        + host_len(store_host)
        + 4
        + 8
        + 4
        + msg.body.len()
        + topic_len_field
        + msg.topic.len()
        + 2
        + props_len;
    Ok((total, props_len))
}

/// Encodes `msg` as a commit-log record, leaving queue offset, physical offset and store
/// time at zero for [`EncodedRecord::assign`]. Validates topic, queue id (at most
/// `i32::MAX`), body size and properties.
pub fn encode(msg: &Message, store_host: &SocketAddr, max_body: usize) -> Result<EncodedRecord> {
    let (total, props_len) = checked_len(msg, store_host, max_body)?;
    let v2 = msg.topic.len() > MAX_TOPIC_LEN_V1;
    let born_len = host_len(&msg.born_host);
    let store_len = host_len(store_host);

    let mut sys_flag = msg.sys_flag & !(SYSFLAG_BORN_HOST_V6 | SYSFLAG_STORE_HOST_V6);
    if born_len == IPV6_HOST_LEN {
        sys_flag |= SYSFLAG_BORN_HOST_V6;
    }
    if store_len == IPV6_HOST_LEN {
        sys_flag |= SYSFLAG_STORE_HOST_V6;
    }

    let mut b = Vec::with_capacity(total);
    let mut host = [0u8; 20];
    b.extend_from_slice(&(total as i32).to_be_bytes());
    b.extend_from_slice(&(if v2 { MAGIC_V2 } else { MAGIC_V1 }).to_be_bytes());
    b.extend_from_slice(&body_crc(&msg.body).to_be_bytes());
    b.extend_from_slice(&msg.queue_id.to_be_bytes());
    b.extend_from_slice(&msg.flag.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes()); // queue offset, assigned under the lock
    b.extend_from_slice(&0u64.to_be_bytes()); // physical offset, assigned under the lock
    b.extend_from_slice(&sys_flag.to_be_bytes());
    b.extend_from_slice(&msg.born_timestamp.to_be_bytes());
    b.extend_from_slice(host_bytes(&msg.born_host, &mut host));
    let store_timestamp_pos = b.len();
    b.extend_from_slice(&0i64.to_be_bytes()); // store time, assigned under the lock
    b.extend_from_slice(host_bytes(store_host, &mut host));
    b.extend_from_slice(&msg.reconsume_times.to_be_bytes());
    b.extend_from_slice(&msg.prepared_transaction_offset.to_be_bytes());
    b.extend_from_slice(&(msg.body.len() as i32).to_be_bytes());
    b.extend_from_slice(&msg.body);
    if v2 {
        b.extend_from_slice(&(msg.topic.len() as u16).to_be_bytes());
    } else {
        b.push(msg.topic.len() as u8);
    }
    b.extend_from_slice(msg.topic.as_bytes());
    b.extend_from_slice(&(props_len as u16).to_be_bytes());
    for (name, value) in &msg.properties {
        b.extend_from_slice(name.as_bytes());
        b.push(NAME_VALUE_SEPARATOR);
        b.extend_from_slice(value.as_bytes());
        b.push(PROPERTY_SEPARATOR);
    }
    debug_assert_eq!(b.len(), total);
    Ok(EncodedRecord {
        bytes: b,
        store_timestamp_pos,
        hidden: is_transaction_hidden(sys_flag),
    })
}

/// The blank record that fills `bytes_left` bytes at the end of a file.
pub fn blank_record(bytes_left: usize) -> [u8; BLANK_RECORD_LEN] {
    let mut b = [0u8; BLANK_RECORD_LEN];
    b[..4].copy_from_slice(&(bytes_left as i32).to_be_bytes());
    b[4..].copy_from_slice(&BLANK_MAGIC.to_be_bytes());
    b
}

/// The size a blank record starting `at_blank` declares, and whether it is `left`: a
/// blank fills the rest of its file, and says how much that is.
pub(crate) fn blank_fills(at_blank: &[u8], left: usize) -> (i32, bool) {
    let declared = i32::from_be_bytes(at_blank[..4].try_into().expect("a blank's 8 bytes"));
    (declared, usize::try_from(declared) == Ok(left))
}

/// What the first eight bytes at a position say is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// A message record of this many bytes (not yet validated beyond size and magic).
    Record {
        /// TOTALSIZE.
        size: usize,
    },
    /// A blank end-of-file record: the rest of the file is unused.
    Blank,
    /// Nothing written here: zero size and magic.
    Empty,
}

/// Reads the size and magic at the start of `buf` (which ends where the file ends).
/// `offset` is only used in errors.
#[inline]
pub fn peek(buf: &[u8], offset: u64) -> Result<Peek> {
    if buf.len() < BLANK_RECORD_LEN {
        if buf.iter().all(|&b| b == 0) {
            return Ok(Peek::Empty);
        }
        return Err(Error::corrupted(
            offset,
            "fewer than 8 bytes left in the file",
        ));
    }
    let size = i32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
    let magic = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
    match magic {
        MAGIC_V1 | MAGIC_V2 => {
            if size < MIN_RECORD_LEN as i32 || size as usize > buf.len() {
                Err(Error::corrupted(
                    offset,
                    format!("record size {size} outside 91..={}", buf.len()),
                ))
            } else {
                Ok(Peek::Record {
                    size: size as usize,
                })
            }
        }
        BLANK_MAGIC => Ok(Peek::Blank),
        0 if size == 0 => Ok(Peek::Empty),
        _ => Err(Error::corrupted(
            offset,
            format!("unknown magic code {magic:#010X}"),
        )),
    }
}

/// A record parsed in place, borrowing the buffer. Every length is checked against the
/// buffer and against TOTALSIZE.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// TOTALSIZE.
    pub total_size: u32,
    /// 1 or 2.
    pub version: u8,
    /// BODYCRC as stored.
    pub body_crc: u32,
    /// QUEUEID.
    pub queue_id: u32,
    /// FLAG.
    pub flag: i32,
    /// QUEUEOFFSET.
    pub queue_offset: u64,
    /// PHYSICALOFFSET.
    pub physical_offset: u64,
    /// SYSFLAG.
    pub sys_flag: i32,
    /// BORNTIMESTAMP.
    pub born_timestamp: i64,
    /// BORNHOST.
    pub born_host: SocketAddr,
    /// STORETIMESTAMP.
    pub store_timestamp: i64,
    /// STOREHOST.
    pub store_host: SocketAddr,
    /// RECONSUMETIMES.
    pub reconsume_times: i32,
    /// PREPARED TRANSACTION OFFSET.
    pub prepared_transaction_offset: i64,
    /// Byte range of the body within the record.
    pub body: (usize, usize),
    /// TOPIC.
    pub topic: &'a str,
    /// PROPERTIES, raw `name\x01value\x02` bytes.
    pub properties: &'a [u8],
    /// The record bytes.
    pub bytes: &'a [u8],
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Why a record does not parse, kept small so that the happy path of [`parse`] returns
/// its fields in registers; turned into an [`Error`] only when a record is bad.
enum Bad {
    /// This field runs past the end of the record.
    Short(&'static str),
    Size(i32, usize),
    Magic(u32),
    NegativeBody,
    Topic,
    /// The fields end at this byte, but TOTALSIZE says otherwise.
    End(usize, i32),
}

impl Bad {
    #[cold]
    fn at(self, offset: u64) -> Error {
        let reason = match self {
            Bad::Short(field) => format!("{field} runs past the end of the record"),
            Bad::Size(size, len) => format!("record size {size} outside {MIN_RECORD_LEN}..={len}"),
            Bad::Magic(magic) => format!("unknown magic code {magic:#010X}"),
            Bad::NegativeBody => "negative body length".into(),
            Bad::Topic => "topic is not UTF-8".into(),
            Bad::End(pos, size) => format!("fields end at byte {pos} but TOTALSIZE is {size}"),
        };
        Error::corrupted(offset, reason)
    }
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    fn take(&mut self, n: usize, field: &'static str) -> std::result::Result<&'a [u8], Bad> {
        match self.pos.checked_add(n).filter(|&e| e <= self.buf.len()) {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Bad::Short(field)),
        }
    }
    #[inline(always)]
    fn array<const N: usize>(&mut self, field: &'static str) -> std::result::Result<[u8; N], Bad> {
        Ok(self.take(N, field)?.try_into().expect("length checked"))
    }
    #[inline(always)]
    fn u8(&mut self, field: &'static str) -> std::result::Result<u8, Bad> {
        Ok(self.array::<1>(field)?[0])
    }
    #[inline(always)]
    fn u16(&mut self, field: &'static str) -> std::result::Result<u16, Bad> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    #[inline(always)]
    fn u32(&mut self, field: &'static str) -> std::result::Result<u32, Bad> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    #[inline(always)]
    fn i32(&mut self, field: &'static str) -> std::result::Result<i32, Bad> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }
    #[inline(always)]
    fn i64(&mut self, field: &'static str) -> std::result::Result<i64, Bad> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }
    #[inline(always)]
    fn host(&mut self, v6: bool, field: &'static str) -> std::result::Result<SocketAddr, Bad> {
        if v6 {
            let ip: [u8; 16] = self.array(field)?;
            let port = self.i32(field)?;
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port as u16,
                0,
                0,
            )))
        } else {
            let ip: [u8; 4] = self.array(field)?;
            let port = self.i32(field)?;
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(ip),
                port as u16,
            )))
        }
    }
}

/// Parses the record at the start of `buf`. `offset` (the record's position, for errors)
/// is reported in every error. Never panics, whatever the bytes.
#[inline]
pub fn parse(buf: &[u8], offset: u64) -> Result<RecordView<'_>> {
    parse_fields(buf).map_err(|bad| bad.at(offset))
}

#[inline(always)]
fn parse_fields(buf: &[u8]) -> std::result::Result<RecordView<'_>, Bad> {
    let mut c = Cursor { buf, pos: 0 };
    let total_size = c.i32("TOTALSIZE")?;
    if total_size < MIN_RECORD_LEN as i32 || total_size as usize > buf.len() {
        return Err(Bad::Size(total_size, buf.len()));
    }
    c.buf = &buf[..total_size as usize];
    let version = match c.u32("MAGICCODE")? {
        MAGIC_V1 => 1,
        MAGIC_V2 => 2,
        other => return Err(Bad::Magic(other)),
    };
    let body_crc = c.u32("BODYCRC")?;
    let queue_id = c.u32("QUEUEID")?;
    let flag = c.i32("FLAG")?;
    let queue_offset = c.i64("QUEUEOFFSET")? as u64;
    let physical_offset = c.i64("PHYSICALOFFSET")? as u64;
    let sys_flag = c.i32("SYSFLAG")?;
    let born_timestamp = c.i64("BORNTIMESTAMP")?;
    let born_host = c.host(sys_flag & SYSFLAG_BORN_HOST_V6 != 0, "BORNHOST")?;
    let store_timestamp = c.i64("STORETIMESTAMP")?;
    let store_host = c.host(sys_flag & SYSFLAG_STORE_HOST_V6 != 0, "STOREHOST")?;
    let reconsume_times = c.i32("RECONSUMETIMES")?;
    let prepared_transaction_offset = c.i64("PREPAREDTRANSACTIONOFFSET")?;
    let body_len = c.i32("BODYLENGTH")?;
    if body_len < 0 {
        return Err(Bad::NegativeBody);
    }
    let body_start = c.pos;
    c.take(body_len as usize, "BODY")?;
    let body = (body_start, c.pos);
    let topic_len = if version == 2 {
        usize::from(c.u16("TOPICLENGTH")?)
    } else {
        usize::from(c.u8("TOPICLENGTH")?)
    };
    let topic = str::from_utf8(c.take(topic_len, "TOPIC")?).map_err(|_| Bad::Topic)?;
    let props_len = usize::from(c.u16("PROPERTIESLENGTH")?);
    let properties = c.take(props_len, "PROPERTIES")?;
    if c.pos != total_size as usize {
        return Err(Bad::End(c.pos, total_size));
    }
    Ok(RecordView {
        total_size: total_size as u32,
        version,
        body_crc,
        queue_id,
        flag,
        queue_offset,
        physical_offset,
        sys_flag,
        born_timestamp,
        born_host,
        store_timestamp,
        store_host,
        reconsume_times,
        prepared_transaction_offset,
        body,
        topic,
        properties,
        bytes: c.buf,
    })
}

impl RecordView<'_> {
    /// The body bytes.
    pub fn body_bytes(&self) -> &[u8] {
        &self.bytes[self.body.0..self.body.1]
    }

    /// Whether the stored CRC matches the body.
    pub fn crc_ok(&self) -> bool {
        body_crc(self.body_bytes()) == self.body_crc
    }

    /// The value of property `name`, read from the raw properties as RocketMQ reads it
    /// (see [`find_property`]).
    pub fn property(&self, name: &str) -> Option<&str> {
        find_property(self.properties, name)
    }

    /// The keys the key index files this record under (each as `topic#key`): every
    /// space-separated word of the `KEYS` property, then the `UNIQ_KEY` property.
    pub fn index_keys(&self) -> impl Iterator<Item = &str> {
        let keys = self.property(PROPERTY_KEYS).unwrap_or("");
        let uniq = self.property(PROPERTY_UNIQ_KEY);
        keys.split(KEY_SEPARATOR)
            .filter(|k| !k.is_empty())
            .chain(uniq)
    }

    /// Whether consumers must never see this record: a transaction's PREPARED or ROLLBACK
    /// record. It holds no queue offset of its own and gets no consume-queue or key-index
    /// entry.
    pub fn is_hidden(&self) -> bool {
        is_transaction_hidden(self.sys_flag)
    }
}

/// One step of a walk over the records of a file ([`Records`]).
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// A record, parsed (and checked, for a [`Records::verified`] walk).
    Record(RecordView<'a>),
    /// The blank record that ends a file: the log goes on at the start of the next one.
    Blank,
    /// Zeros: nothing was written from here on.
    Empty,
}

/// How many records ahead [`Records`] hints the CPU to fetch (assuming records of one
/// size, as a topic's usually are; a wrong guess costs a hint and nothing else).
const PREFETCH_AHEAD: usize = 8;

/// The one walk over the records of a commit-log file: reopen, dispatch and the dumper
/// all read records through it.
///
/// `bytes` are a file's bytes from some record boundary, ending where the file (or what
/// may be read of it) ends; `start_offset` is the commit-log offset of `bytes[0]`. The walk
/// yields each record in order and stops after the first [`Step::Blank`], [`Step::Empty`]
/// or error; [`Records::offset`] then says where it stopped.
///
/// ```
/// use std::net::SocketAddr;
/// use rocketstore::Message;
/// use rocketstore::format::{self, Records, Step};
///
/// let host: SocketAddr = "127.0.0.1:10911".parse().unwrap();
/// let mut file = Vec::new();
/// for i in 0..3u64 {
///     let mut rec = format::encode(&Message::new("T", 0u32, &b"hi"[..]), &host, 1 << 20)?;
///     rec.assign(i, file.len() as u64, 0);
///     file.extend_from_slice(rec.as_bytes());
/// }
/// file.resize(file.len() + 64, 0); // the unwritten rest of the file
///
/// let mut records = Records::new(&file, 0).verified(true);
/// let offsets: Vec<u64> = records
///     .by_ref()
///     .map_while(|step| match step {
///         Ok(Step::Record(view)) => Some(view.queue_offset),
///         _ => None,
///     })
///     .collect();
/// assert_eq!(offsets, [0, 1, 2]);
/// assert_eq!(records.offset() as usize, file.len() - 64);
/// # Ok::<(), rocketstore::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    start: u64,
    pos: usize,
    verify: bool,
    check_crc: bool,
    done: bool,
}

impl<'a> Records<'a> {
    /// Walks `bytes`, whose first byte is at commit-log offset `start_offset`. Records are
    /// parsed (every length checked) but not otherwise verified.
    pub fn new(bytes: &'a [u8], start_offset: u64) -> Records<'a> {
        Records {
            bytes,
            start: start_offset,
            pos: 0,
            verify: false,
            check_crc: false,
            done: false,
        }
    }

    /// Also checks each record as recovery must before trusting it: its PHYSICALOFFSET is
    /// where it lies, its topic is valid and its properties well-formed; with `check_crc`,
    /// its body CRC too. A record that fails is an error step.
    pub fn verified(mut self, check_crc: bool) -> Records<'a> {
        self.verify = true;
        self.check_crc = check_crc;
        self
    }

    /// Commit-log offset of the next record: after the walk stopped, where it stopped
    /// (the blank record, the zeros, or the record that failed).
    pub fn offset(&self) -> u64 {
        self.start + self.pos as u64
    }

    /// Byte position of [`Records::offset`] within `bytes`.
    pub fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    fn step(&mut self) -> Result<Step<'a>> {
        let offset = self.offset();
        let rest = &self.bytes[self.pos..];
        let size = match peek(rest, offset)? {
            Peek::Record { size } => size,
            Peek::Blank => return Ok(Step::Blank),
            Peek::Empty => return Ok(Step::Empty),
        };
        let view = parse(&rest[..size], offset)?;
        // The header and the tail (topic, properties) of the record `PREFETCH_AHEAD`
        // records on, if the records are this size, are cache misses when its turn comes.
        // (Saturating: on a 32-bit target a huge record could overflow the guess.)
        let ahead = size.saturating_mul(PREFETCH_AHEAD).saturating_add(self.pos);
        crate::fs::mapped_file::prefetch(self.bytes, ahead);
        crate::fs::mapped_file::prefetch(self.bytes, ahead.saturating_add(view.body.1));
        if self.verify {
            if self.check_crc && !view.crc_ok() {
                return Err(Error::corrupted(offset, "body CRC mismatch"));
            }
            if view.physical_offset != offset {
                let reason = format!("record says it is at {}", view.physical_offset);
                return Err(Error::corrupted(offset, reason));
            }
            if let Err(e) = validate_topic(view.topic) {
                return Err(Error::corrupted(offset, e.to_string()));
            }
            if !properties_well_formed(view.properties) {
                return Err(Error::corrupted(offset, "malformed properties"));
            }
        }
        self.pos += size;
        Ok(Step::Record(view))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Step<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.bytes.len() {
            return None;
        }
        let step = self.step();
        self.done = !matches!(step, Ok(Step::Record(_)));
        Some(step)
    }
}

/// Decodes the record at the start of `record` into a [`StoredMessage`] whose body shares
/// `record`'s memory. With `verify_crc`, a body whose CRC does not match is an error.
pub fn decode(record: &Bytes, offset: u64, verify_crc: bool) -> Result<StoredMessage> {
    decode_at(record, 0, offset, verify_crc, None)
}

/// Decodes the record at `pos` in `buf` (a view of a file, say) without copying: body and
/// properties are slices of `buf`. When the record's topic equals `topic_hint`, the
/// message shares that `Arc` instead of allocating its own.
pub fn decode_at(
    buf: &Bytes,
    pos: usize,
    offset: u64,
    verify_crc: bool,
    topic_hint: Option<&Arc<str>>,
) -> Result<StoredMessage> {
    let v = parse(buf.get(pos..).unwrap_or_default(), offset)?;
    if verify_crc && !v.crc_ok() {
        return Err(Error::corrupted(offset, "body CRC mismatch"));
    }
    // PROPERTIES is the last field of a record.
    let end = pos + v.total_size as usize;
    let properties = Properties::from_raw(buf.slice(end - v.properties.len()..end))
        .ok_or_else(|| Error::corrupted(offset, "malformed properties"))?;
    let topic = match topic_hint {
        Some(t) if **t == *v.topic => Arc::clone(t),
        _ => Arc::from(v.topic),
    };
    Ok(StoredMessage {
        total_size: v.total_size,
        version: v.version,
        body_crc: v.body_crc,
        queue_id: v.queue_id,
        flag: v.flag,
        queue_offset: v.queue_offset,
        physical_offset: v.physical_offset,
        sys_flag: v.sys_flag,
        born_timestamp: v.born_timestamp,
        born_host: v.born_host,
        store_timestamp: v.store_timestamp,
        store_host: v.store_host,
        reconsume_times: v.reconsume_times,
        prepared_transaction_offset: v.prepared_transaction_offset,
        body: buf.slice(pos + v.body.0..pos + v.body.1),
        topic,
        properties,
    })
}

/// The TAGS property inside raw `name\x01value\x02` properties, without parsing the rest.
#[inline]
pub fn find_tags(raw_properties: &[u8]) -> Option<&str> {
    find_property(raw_properties, PROPERTY_TAGS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_are_the_words_of_keys_then_the_unique_key() {
        let msg = Message::new("T", 0, &b"b"[..])
            .with_property("KEYS", "a  b")
            .with_property("TAGS", "t")
            .with_property("UNIQ_KEY", "u1")
            .with_property("XKEYS", "no");
        let host = "127.0.0.1:1".parse().unwrap();
        let rec = encode(&msg, &host, 1 << 20).unwrap();
        let view = parse(rec.as_bytes(), 0).unwrap();
        assert_eq!(view.index_keys().collect::<Vec<_>>(), ["a", "b", "u1"]);
        assert_eq!(view.property("TAGS"), Some("t"));
        assert_eq!(view.property("TAG"), None);
    }

    #[test]
    fn find_tags_in_raw_properties() {
        assert_eq!(find_tags(b"KEYS\x01k\x02TAGS\x01TagA\x02"), Some("TagA"));
        assert_eq!(find_tags(b"XTAGS\x01no\x02"), None);
        assert_eq!(find_tags(b""), None);
        // As RocketMQ reads properties: the last of repeated names, empty values absent.
        assert_eq!(find_tags(b"TAGS\x01a\x02TAGS\x01b\x02"), Some("b"));
        assert_eq!(find_tags(b"TAGS\x01a\x02TAGS\x01\x02"), Some("a"));
        assert_eq!(find_tags(b"TAGS\x01\x02"), None);
    }
}
