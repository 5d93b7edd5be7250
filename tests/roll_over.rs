//! Many messages through small files: every file ends with a blank record, offsets are
//! continuous, and everything reads back, also after a clean reopen.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use rocketstore::format::{self, Peek};
use rocketstore::layout;
use rocketstore::{MessageStore, PutResult};

/// Walks the commit-log files on disk and returns the offset of every record, checking
/// that every file but the last ends with a blank record.
fn walk_files(root: &Path) -> (Vec<u64>, usize) {
    let mut names: Vec<_> = fs::read_dir(layout::commit_log_dir(root))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut offsets = Vec::new();
    let mut blanks = 0;
    // Where the written log ends: every file after it must be wholly unwritten.
    let mut first_empty: Option<u64> = None;
    for (i, name) in names.iter().enumerate() {
        let start: u64 = name.parse().unwrap();
        let bytes = fs::read(layout::commit_log_dir(root).join(name)).unwrap();
        assert_eq!(bytes.len() as u64, SMALL_FILE);
        let mut pos = 0;
        loop {
            match format::peek(&bytes[pos..], start + pos as u64).unwrap() {
                Peek::Record { size } => {
                    assert!(first_empty.is_none(), "a record past the end in {name}");
                    offsets.push(start + pos as u64);
                    pos += size;
                }
                Peek::Blank => {
                    let left = i32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap());
                    assert_eq!(
                        left as usize,
                        bytes.len() - pos,
                        "blank must cover the rest"
                    );
                    blanks += 1;
                    break;
                }
                Peek::Empty => {
                    // Only in the file being written and in the files prepared ahead of
                    // it (at most two, never written).
                    let unwritten = names.len() - 1 - i;
                    assert!(unwritten <= 2, "empty space in file {name}");
                    assert!(
                        first_empty.is_none() || pos == 0,
                        "a file past the end holds records: {name}"
                    );
                    first_empty.get_or_insert(start + pos as u64);
                    break;
                }
            }
            if pos == bytes.len() {
                break;
            }
        }
    }
    (offsets, blanks)
}

fn check_all(store: &MessageStore, puts: &[(u32, u64, PutResult)]) {
    for (queue, i, put) in puts {
        let m = store.lookup_message(put.physical_offset).unwrap().unwrap();
        assert_eq!(m.body, body("roll", *i));
        assert_eq!(m.queue_id, *queue);
        assert_eq!(m.queue_offset, put.queue_offset);
        assert_eq!(m.physical_offset, put.physical_offset);
        assert!(m.crc_ok());
        assert_eq!(m.keys().collect::<Vec<_>>(), [format!("k{i}")]);
    }
}

#[test]
fn thousands_of_messages_roll_over_small_files() {
    for mode in [sync_mode(), async_mode()] {
        let dir = tempfile::tempdir().unwrap();
        let mut puts = Vec::new();
        {
            let store = open(dir.path(), mode);
            for i in 0..3000u64 {
                let queue = (i % 3) as u32;
                let put = store
                    .put_message(&message("Roll", queue, "roll", i))
                    .unwrap();
                assert!(put.is_ok());
                assert_eq!(put.queue_offset, i / 3, "queue offsets are dense per queue");
                puts.push((queue, i, put));
            }
            // Records are contiguous except where a file ends.
            for w in puts.windows(2) {
                let (a, b) = (&w[0].2, &w[1].2);
                if a.end_offset() != b.physical_offset {
                    assert_eq!(b.physical_offset % SMALL_FILE, 0, "gap not at a file start");
                    assert_eq!(
                        b.physical_offset / SMALL_FILE,
                        a.end_offset() / SMALL_FILE + 1
                    );
                }
            }
            check_all(&store, &puts);
            store.shutdown().unwrap();
        }

        let (offsets, blanks) = walk_files(dir.path());
        let expected: Vec<u64> = puts.iter().map(|p| p.2.physical_offset).collect();
        assert_eq!(
            offsets, expected,
            "files hold exactly the acknowledged records"
        );
        let last_file = puts.last().unwrap().2.physical_offset / SMALL_FILE;
        assert_eq!(blanks as u64, last_file, "one blank record per full file");
        assert!(blanks > 10, "the test must roll many files");

        let store = open(dir.path(), mode);
        assert_eq!(
            store.max_physical_offset(),
            puts.last().unwrap().2.end_offset()
        );
        check_all(&store, &puts);
        // Puts continue after the last record, with queue offsets continuing too.
        let next = store
            .put_message(&message("Roll", 1, "roll", 3000))
            .unwrap();
        assert_eq!(next.physical_offset, puts.last().unwrap().2.end_offset());
        assert_eq!(next.queue_offset, 1000);
        let fresh = store
            .put_message(&message("Other", 1, "roll", 3001))
            .unwrap();
        assert_eq!(fresh.queue_offset, 0);
    }
}

#[test]
fn reopen_of_an_empty_store_and_of_a_store_ending_exactly_at_a_file_end() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), sync_mode()));
    let store = open(dir.path(), sync_mode());
    assert_eq!(store.max_physical_offset(), 0);
    // Fill the first file so that the next put has to roll.
    let mut i = 0;
    while store.max_physical_offset() < SMALL_FILE - 400 {
        store.put_message(&message("Fill", 0, "f", i)).unwrap();
        i += 1;
    }
    let big = rocketstore::Message::new("Fill", 0u32, vec![7u8; 1000]);
    let rolled = store.put_message(&big).unwrap();
    assert_eq!(rolled.physical_offset, SMALL_FILE);
    drop(store);
    let store = open(dir.path(), sync_mode());
    assert_eq!(store.max_physical_offset(), rolled.end_offset());
    let after = store.put_message(&message("Fill", 0, "f", i)).unwrap();
    assert_eq!(after.queue_offset, i + 1);
    assert_eq!(after.physical_offset, rolled.end_offset());
}
