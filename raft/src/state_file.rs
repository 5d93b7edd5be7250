//! Small state files (the vote, the purge point, the snapshot record, the membership, an
//! install in progress): one value each, as JSON with a CRC, replaced atomically.
//!
//! ```text
//! {json}\n
//! crc32 {crc32 of the json, 8 lowercase hex digits}\n
//! ```
//!
//! A file is written whole to a temporary name, synced, renamed over the old one and its
//! directory synced, so a crash leaves the old value or the new one, never a mix. The CRC
//! catches what the rename cannot: a damaged byte that leaves the JSON valid (a vote's
//! term, a purge point), which would otherwise be believed. Such a file refuses the open.
//! The first line stays readable with `head -1`.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::log_store::sync_dir;

/// `"\ncrc32 "`, eight hex digits, `"\n"`.
const TRAILER: usize = 7 + 8 + 1;

/// Replaces the file at `path` with `value`, durably.
pub(crate) fn write_state<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomic(path, &encode(value)?)
}

/// The value recorded at `path`, or `None` when there is no file. A file whose CRC does
/// not match, or that does not hold a `T`, is an `InvalidData` error naming it.
pub(crate) fn read_state<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes).map(Some).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raft state file {} is damaged: {why}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(format!("\ncrc32 {crc:08x}\n").as_bytes());
    Ok(bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let split = bytes
        .len()
        .checked_sub(TRAILER)
        .ok_or("shorter than its checksum line")?;
    let (json, trailer) = bytes.split_at(split);
    let hex = trailer
        .strip_prefix(b"\ncrc32 ")
        .and_then(|t| t.strip_suffix(b"\n"))
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or("no checksum line")?;
    let stored = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
    let actual = crc32fast::hash(json);
    if stored != actual {
        return Err(format!(
            "checksum {actual:08x} does not match the recorded {stored:08x}"
        ));
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// Replaces `path` with `bytes` durably: a temporary file, synced, renamed, and the
/// directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let file = File::create(&tmp)?;
        file.write_all_at(bytes, 0)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Vote {
        term: u64,
        node_id: u64,
    }

    #[test]
    fn a_value_reads_back_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        assert_eq!(read_state::<Vote>(&path).unwrap(), None);
        let vote = Vote {
            term: 7,
            node_id: 2,
        };
        write_state(&path, &vote).unwrap();
        assert_eq!(read_state::<Vote>(&path).unwrap(), Some(vote));
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().next(), Some(r#"{"term":7,"node_id":2}"#));
    }

    /// Every single-byte change, and every cut, is refused: none is read as another value.
    #[test]
    fn any_damaged_byte_or_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        write_state(
            &path,
            &Vote {
                term: 17,
                node_id: 3,
            },
        )
        .unwrap();
        let good = fs::read(&path).unwrap();
        for at in 0..good.len() {
            for flip in [0x01u8, 0x02, 0x08, 0x10] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                fs::write(&path, &bad).unwrap();
                let err = read_state::<Vote>(&path).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "byte {at}");
                assert!(err.to_string().contains("is damaged"), "{err}");
            }
        }
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            assert!(read_state::<Vote>(&path).is_err(), "cut at {len}");
        }
    }
}
