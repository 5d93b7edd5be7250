//! A snapshot is the store's commit log itself, streamed lazily.
//!
//! The state machine is the message store, and the store is its commit log: every
//! replica's log is byte-identical up to the same Raft index. So a snapshot at index `i`
//! is the log range `[start, end)`, where `end` is the log's end after applying `i`, and
//! building one costs a flush and nothing else. Its stream is
//!
//! ```text
//! [b"RSSNAP01"][start u64][end u64][file size u64]   then the log's bytes [start, end)
//! ```
//!
//! in log order, a file's closing blank record followed by zeros to the file's end. The
//! sender reads it from the store as it goes ([`SnapshotData::Source`]); the receiver
//! writes it to a file ([`SnapshotData::Received`]) and [`install`] appends the part it
//! lacks to its own store with `append_log`, which checks every record.

use std::fs::File;
use std::io::{self, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use rocketstore::format::{BLANK_MAGIC, BLANK_RECORD_LEN};
use rocketstore::{LogHold, MessageStore};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

const MAGIC: &[u8; 8] = b"RSSNAP01";
/// Length of the stream's header.
pub const HEADER_LEN: u64 = 32;
const READ_CHUNK: usize = 1 << 20;
const APPEND_CHUNK: usize = 4 << 20;

/// Snapshot bytes: read lazily from a store when sent, written to a file when received.
pub enum SnapshotData {
    /// The stream of a store's log range, produced as it is read.
    Source(LogStream),
    /// A stream being received, and the file it goes to.
    Received {
        /// Where the bytes are written.
        file: tokio::fs::File,
        /// The file's path; the file goes when this drops, unless an install took it.
        path: ReceivedPath,
    },
}

/// The path of a received stream's file, which is removed when this drops unless an
/// install took it ([`ReceivedPath::keep`]): openraft drops a transfer replaced by another
/// (a new leader, a rebuilt snapshot) without a word, and each stream has a file of its
/// own, up to the size of the whole log.
pub struct ReceivedPath {
    path: PathBuf,
    kept: bool,
}

impl ReceivedPath {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the file over: it is no longer removed on drop.
    pub fn keep(mut self) -> PathBuf {
        self.kept = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for ReceivedPath {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SnapshotData {
    /// The stream of `store`'s log from its first file to `end`. Retention keeps the files streamed until the
    /// stream drops (a [`LogHold`]). [`io::ErrorKind::NotFound`] when retention already
    /// deleted the file `end` lies in.
    pub fn source(store: Arc<MessageStore>, end: u64) -> io::Result<SnapshotData> {
        let file_size = store.config().commit_log_file_size;
        // Retention may be retiring the first file between the look and the hold: look
        // again once it is gone. A log that no longer reaches back to `end` cannot serve.
        let hold = loop {
            let start = store.min_physical_offset();
            if start > end {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the log now starts at {start}, past the snapshot's end {end}"),
                ));
            }
            match store.hold_log(start) {
                Ok(hold) => break hold,
                Err(rocketstore::Error::OutOfRange { .. }) => {
                    // Retention is retiring that file: it is gone in a moment.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        };
        let start = hold.offset();
        Ok(SnapshotData::Source(LogStream {
            header: header(start, end, file_size),
            _hold: hold,
            store,
            start,
            end,
            pos: 0,
            seek_to: None,
            chunk: Chunk::None,
        }))
    }

    /// A new file at `path` to receive a stream into.
    pub async fn receive(path: PathBuf) -> io::Result<SnapshotData> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await?;
        Ok(SnapshotData::Received {
            file,
            path: ReceivedPath { path, kept: false },
        })
    }
}

fn header(start: u64, end: u64, file_size: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&start.to_be_bytes());
    h[16..24].copy_from_slice(&end.to_be_bytes());
    h[24..32].copy_from_slice(&file_size.to_be_bytes());
    h
}

/// The bytes of the log at some logical position.
enum Chunk {
    None,
    /// Records read from the log, starting at `at`.
    Data {
        at: u64,
        bytes: Bytes,
    },
    /// After a file's closing blank record: zeros from `at` to `to` (the file's end).
    Zeros {
        at: u64,
        to: u64,
    },
}

impl Chunk {
    fn end(&self) -> Option<u64> {
        match self {
            Chunk::None => None,
            Chunk::Data { at, bytes } => Some(at + bytes.len() as u64),
            Chunk::Zeros { to, .. } => Some(*to),
        }
    }
    fn covers(&self, at: u64) -> bool {
        match self {
            Chunk::None => false,
            Chunk::Data { at: s, .. } | Chunk::Zeros { at: s, .. } => {
                *s <= at && Some(at) < self.end()
            }
        }
    }
}

/// The lazily read stream of a store's log range.
pub struct LogStream {
    store: Arc<MessageStore>,
    /// Keeps retention from deleting the files streamed.
    _hold: LogHold,
    header: [u8; HEADER_LEN as usize],
    start: u64,
    end: u64,
    /// Position in the stream (header included).
    pos: u64,
    seek_to: Option<u64>,
    chunk: Chunk,
}

impl LogStream {
    /// Log offset of the stream's first byte after the header.
    pub fn start(&self) -> u64 {
        self.start
    }

    fn len(&self) -> u64 {
        HEADER_LEN + self.end - self.start
    }

    /// Reads the chunk holding log offset `at`: the next one when `at` is where the
    /// current one ends (the usual, sequential case), else by walking the records of
    /// `at`'s file from its start.
    fn load(&mut self, at: u64) -> io::Result<()> {
        let file_size = self.store.config().commit_log_file_size;
        let file_end = |o: u64| (o / file_size + 1) * file_size;
        let mut from = match &self.chunk {
            Chunk::Data { at: s, bytes } if s + bytes.len() as u64 == at => {
                // After a closing blank record come zeros to the file's end, if any room
                // is left (an empty chunk would read as the stream's end).
                if ends_with_blank(bytes) && at < file_end(*s) {
                    self.chunk = Chunk::Zeros {
                        at,
                        to: file_end(*s),
                    };
                    return Ok(());
                }
                at
            }
            Chunk::Zeros { to, .. } if *to == at => at,
            _ => (at / file_size * file_size).max(self.start),
        };
        loop {
            let bytes = self
                .store
                .read_log(from, READ_CHUNK)
                .map_err(io::Error::other)?;
            if bytes.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the log ends at {from}, before the snapshot's end {}",
                        self.end
                    ),
                ));
            }
            let next = from + bytes.len() as u64;
            let blank = ends_with_blank(&bytes);
            if at < next {
                self.chunk = Chunk::Data { at: from, bytes };
                return Ok(());
            }
            if blank && at < file_end(from) {
                self.chunk = Chunk::Zeros {
                    at: next,
                    to: file_end(from),
                };
                return Ok(());
            }
            from = if blank { file_end(from) } else { next };
        }
    }
}

/// Whether `bytes`, read from the log at a record's start, are a file's closing blank
/// record.
pub(crate) fn is_blank(bytes: &[u8]) -> bool {
    bytes.len() >= BLANK_RECORD_LEN
        && u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) == BLANK_MAGIC
}

/// Whether `bytes`, whole records as read from the log, end with a file's closing blank
/// record (after which the file holds nothing but zeros).
fn ends_with_blank(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    while at + BLANK_RECORD_LEN <= bytes.len() {
        let word = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        if word(at + 4) == BLANK_MAGIC {
            return at + BLANK_RECORD_LEN == bytes.len();
        }
        let size = word(at) as usize;
        if size == 0 {
            return false;
        }
        at += size;
    }
    false
}

impl AsyncRead for LogStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos >= this.len() || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.pos < HEADER_LEN {
            let h = &this.header[this.pos as usize..];
            let n = h.len().min(buf.remaining());
            buf.put_slice(&h[..n]);
            this.pos += n as u64;
            return Poll::Ready(Ok(()));
        }
        let at = this.start + this.pos - HEADER_LEN;
        if !this.chunk.covers(at) {
            // Reading the mapped log is a memory copy: no need to leave the task.
            this.load(at)?;
        }
        let limit = (this.end - at).min(buf.remaining() as u64) as usize;
        let n = match &this.chunk {
            Chunk::Data { at: s, bytes } => {
                let from = (at - s) as usize;
                let n = (bytes.len() - from).min(limit);
                buf.put_slice(&bytes[from..from + n]);
                n
            }
            Chunk::Zeros { to, .. } => {
                let n = ((to - at) as usize).min(limit);
                buf.initialize_unfilled_to(n).fill(0);
                buf.advance(n);
                n
            }
            Chunk::None => unreachable!("load fills the chunk"),
        };
        this.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for LogStream {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let len = this.len() as i128;
        let target = match position {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => len + d as i128,
            SeekFrom::Current(d) => this.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        this.seek_to = Some(target as u64);
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        if let Some(p) = this.seek_to.take() {
            this.pos = p;
        }
        Poll::Ready(Ok(this.pos))
    }
}

impl AsyncWrite for LogStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a log snapshot being sent is read-only",
        )))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $source:expr, $f:ident => $received:expr) => {
        match $self.get_mut() {
            SnapshotData::Source($s) => $source,
            SnapshotData::Received { file: $f, .. } => $received,
        }
    };
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf), f => Pin::new(f).poll_read(cx, buf))
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, b), f => Pin::new(f).poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx), f => Pin::new(f).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx), f => Pin::new(f).poll_shutdown(cx))
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        delegate!(self, s => Pin::new(s).start_seek(position), f => Pin::new(f).start_seek(position))
    }
    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        delegate!(self, s => Pin::new(s).poll_complete(cx), f => Pin::new(f).poll_complete(cx))
    }
}

/// What a received snapshot stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// Log offset of the stream's first byte.
    pub start: u64,
    /// Log offset where the stream ends: the log's end at the snapshot's index.
    pub end: u64,
    /// The sender's commit-log file size.
    pub file_size: u64,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads a received stream's header.
pub fn read_header(file: &File) -> io::Result<StreamHeader> {
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, 0)?;
    if &h[..8] != MAGIC {
        return Err(invalid("not a rocketstore log snapshot"));
    }
    let word = |i: usize| u64::from_be_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let header = StreamHeader {
        start: word(8),
        end: word(16),
        file_size: word(24),
    };
    if header.start > header.end || header.file_size == 0 {
        return Err(invalid(format!(
            "a snapshot header out of order: {header:?}"
        )));
    }
    let len = file.metadata()?.len();
    let want = (header.end - header.start).checked_add(HEADER_LEN);
    if want != Some(len) {
        return Err(invalid(format!(
            "a snapshot of {len} bytes, its header says {header:?}"
        )));
    }
    Ok(header)
}

/// Appends what `store` lacks of the received stream in `path` (from its log's end to the
/// stream's end) with `append_log`, which checks every record and keeps the files
/// byte-identical. The store's end must lie inside the stream: a store that ends before
/// the stream starts cannot be filled from it.
pub fn install(store: &MessageStore, path: &Path) -> io::Result<u64> {
    let file = File::open(path)?;
    let h = read_header(&file)?;
    let file_size = store.config().commit_log_file_size;
    if h.file_size != file_size {
        return Err(invalid(format!(
            "the snapshot's files are {} bytes, this store's {file_size}",
            h.file_size
        )));
    }
    let mut pos = store.max_physical_offset();
    if pos < h.start {
        return Err(invalid(format!(
            "this store ends at {pos}, the snapshot starts at {}: copy the leader's files to catch up",
            h.start
        )));
    }
    let read = |at: u64, len: usize| -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, HEADER_LEN + at - h.start)?;
        Ok(buf)
    };
    while pos < h.end {
        let file_end = (pos / file_size + 1) * file_size;
        let window = read(
            pos,
            ((h.end.min(file_end) - pos) as usize).min(APPEND_CHUNK),
        )?;
        if window.len() < BLANK_RECORD_LEN {
            return Err(invalid(format!(
                "a damaged record at {pos} in the snapshot"
            )));
        }
        let mut len = 0usize;
        while len + BLANK_RECORD_LEN <= window.len() {
            let size = u32::from_be_bytes(window[len..len + 4].try_into().expect("4")) as usize;
            let magic = u32::from_be_bytes(window[len + 4..len + 8].try_into().expect("4"));
            if magic == BLANK_MAGIC {
                if len == 0 {
                    len = BLANK_RECORD_LEN;
                }
                break;
            }
            if size == 0 || len + size > window.len() {
                break;
            }
            len += size;
        }
        let bytes = if len == 0 {
            // One record larger than the window. No record is larger than the largest body
            // with its header, topic and properties: a damaged size must not size the
            // buffer (up to a whole commit-log file, at every retry of the install).
            let size = u32::from_be_bytes(window[..4].try_into().expect("4")) as u64;
            let largest = store.config().max_message_size as u64 + (64 << 10);
            if size == 0 || size > largest || pos + size > h.end.min(file_end) {
                return Err(invalid(format!(
                    "a damaged record at {pos} in the snapshot"
                )));
            }
            read(pos, size as usize)?
        } else {
            window[..len].to_vec()
        };
        pos = store.append_log(pos, &bytes).map_err(io::Error::other)?;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer openraft drops (replaced by another) takes its file with it; one an
    /// install took over stays until the install removes it.
    #[tokio::test]
    async fn a_dropped_transfer_removes_its_file_and_a_kept_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let dropped = dir.path().join("a");
        drop(SnapshotData::receive(dropped.clone()).await.unwrap());
        assert!(!dropped.exists());
        let kept = dir.path().join("b");
        let SnapshotData::Received { file, path } =
            SnapshotData::receive(kept.clone()).await.unwrap()
        else {
            unreachable!("a received stream")
        };
        drop(file);
        assert_eq!(path.keep(), kept);
        assert!(kept.exists());
    }

    /// A record size damaged in a kept stream is refused before it sizes a buffer: it
    /// could name up to a whole commit-log file, read again at every retry.
    #[test]
    fn a_damaged_record_size_larger_than_any_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file_size = 256 << 20;
        let store = MessageStore::open(
            rocketstore::StoreConfig::new(dir.path().join("store"))
                .commit_log_file_size(file_size)
                .preallocate(false),
        )
        .unwrap();
        let path = dir.path().join("s");
        let mut bytes = header(0, 200 << 20, file_size).to_vec();
        // A record of 150 MiB by its size field: within the stream's claimed end and the
        // file, far past the largest record.
        bytes.extend_from_slice(&(150u32 << 20).to_be_bytes());
        bytes.extend_from_slice(&[0xAB; 60]);
        std::fs::write(&path, bytes).unwrap();
        // As long as its header says (sparse: the rest reads as zeros).
        let stream = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        stream.set_len(HEADER_LEN + (200 << 20)).unwrap();
        let err = install(&store, &path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("damaged record"), "{err}");
        assert_eq!(store.max_physical_offset(), 0, "nothing appended");
    }

    /// A header from a peer or a damaged kept stream is refused, whatever its numbers.
    #[test]
    fn a_header_with_extreme_offsets_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        for (start, end) in [(u64::MAX - 1, u64::MAX - 1), (0, u64::MAX), (5, 4)] {
            let mut bytes = header(start, end, 1 << 20).to_vec();
            bytes.push(0);
            std::fs::write(&path, bytes).unwrap();
            let file = File::open(&path).unwrap();
            let err = read_header(&file).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{start}..{end}");
        }
    }
}
