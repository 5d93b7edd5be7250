//! The read-only inspection API (`rocketstore::inspect`) against real stores: what a path
//! names, the record walk across files, and every check `verify` runs, each shown to fail
//! on the damage it is for.

mod common;

use std::fs::OpenOptions;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;

use common::*;
use rocketstore::inspect::{self, IndexFileBytes, Item, LogFiles, Problem, Target};
use rocketstore::{PutResult, format, layout};

const SHAPE: (u32, u32) = (SMALL_INDEX_SLOTS, SMALL_INDEX_ENTRIES);

/// A closed store of 300 messages over two queues (several 64 KiB files), one key each.
fn store() -> (tempfile::TempDir, Vec<PutResult>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), sync_mode());
    let puts = (0..300u64)
        .map(|i| {
            store
                .put_message(&message("Insp", (i % 2) as u32, "i", i))
                .unwrap()
        })
        .collect();
    store.shutdown().unwrap();
    (dir, puts)
}

fn problems(target: &Target) -> (u64, Vec<Problem>) {
    let mut found = Vec::new();
    let checked = inspect::verify(target, SHAPE, |p| {
        found.push(p);
        Ok(())
    })
    .unwrap();
    (checked, found)
}

fn records(log: &LogFiles) -> Vec<(u64, String, u64)> {
    let mut seen = Vec::new();
    for (start, path) in log.files() {
        LogFiles::walk(path, *start, |item| {
            if let Item::Record { offset, record } = item {
                seen.push((offset, record.topic.to_owned(), record.queue_offset));
            }
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
    }
    seen
}

#[test]
fn a_walk_meets_every_record_in_order_across_files() {
    let (dir, puts) = store();
    let log = LogFiles::of_store(dir.path()).unwrap();
    assert!(log.files().len() > 1, "the store rolled over");
    let seen = records(&log);
    let want: Vec<_> = puts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.physical_offset, "Insp".to_owned(), (i / 2) as u64))
        .collect();
    assert_eq!(seen, want);
    // Breaking stops the walk at once.
    let (start, path) = &log.files()[0];
    let mut n = 0;
    LogFiles::walk(path, *start, |_| {
        n += 1;
        Ok(ControlFlow::Break(()))
    })
    .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_path_is_named_for_what_it_holds() {
    let (dir, _) = store();
    let root = dir.path();
    assert!(matches!(Target::of(root).unwrap(), Target::Store(_)));
    let log = layout::commit_log_dir(root);
    assert!(matches!(Target::of(&log).unwrap(), Target::CommitLog(l) if l.files().len() > 1));
    let first = layout::commit_log_file(root, 0);
    assert!(matches!(Target::of(&first).unwrap(), Target::CommitLog(l) if l.files().len() == 1));
    let queue = layout::queue_dir(root, "Insp", 1);
    match Target::of(&queue).unwrap() {
        Target::Queue {
            topic,
            queue_id,
            files,
            ..
        } => {
            assert_eq!((topic.as_str(), queue_id), ("Insp", 1));
            let entries = inspect::queue_entries(&files[0].1, files[0].0).unwrap();
            assert_eq!(entries.len(), 150);
            assert!(entries.iter().all(|(_, e)| e.is_some()));
        }
        other => panic!("{other:?}"),
    }
    let index = layout::index_dir(root);
    assert!(matches!(Target::of(&index).unwrap(), Target::Index { files, .. } if files.len() == 1));
    let cp = layout::checkpoint_file(root);
    assert!(matches!(Target::of(&cp).unwrap(), Target::Checkpoint(_)));
    // A topic may be named like a store directory: its queue is still a queue.
    let store = open(root, sync_mode());
    let put = store.put_message(&message("index", 0, "i", 0)).unwrap();
    assert!(store.wait_dispatched(put.physical_offset, std::time::Duration::from_secs(10)));
    store.shutdown().unwrap();
    let index_topic = layout::queue_dir(root, "index", 0);
    let file = layout::data_files(&index_topic).unwrap()[0].1.clone();
    assert!(matches!(Target::of(&file).unwrap(), Target::Queue { topic, .. } if topic == "index"));
    let err = Target::of(&root.join("nothing-here")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn verify_passes_a_sound_store_and_counts_what_it_checked() {
    let (dir, _) = store();
    let (checked, found) = problems(&Target::of(dir.path()).unwrap());
    assert_eq!(found, []);
    // 300 records, 300 queue entries, 300 index entries (one key each; no UNIQ_KEY).
    assert_eq!(checked, 900);
    let index = IndexFileBytes::read(
        &inspect::index_files(&layout::index_dir(dir.path())).unwrap()[0],
        SHAPE.0,
        SHAPE.1,
    )
    .unwrap();
    assert_eq!(index.entries().count(), 300);
    assert_eq!(index.bad_slots().count(), 0);
    // A checkpoint holds nothing to check.
    let cp = Target::of(&layout::checkpoint_file(dir.path())).unwrap();
    assert_eq!(problems(&cp), (0, vec![]));
}

#[test]
fn verify_finds_a_damaged_body_a_wrong_queue_entry_and_a_foreign_index_entry() {
    let (dir, puts) = store();
    let root = dir.path();
    let write = |path: &std::path::Path, at: u64, bytes: &[u8]| {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, at).unwrap();
    };
    // A body byte of message 10.
    let victim = puts[10].physical_offset;
    let file = LogFiles::of_store(root)
        .unwrap()
        .files()
        .iter()
        .rev()
        .find(|(s, _)| *s <= victim)
        .cloned()
        .unwrap();
    write(&file.1, victim - file.0 + 100, b"\xEE");
    // Queue 1's entry #3 points at message 9 (queue 1, #4): offset changed.
    let queue_file = layout::data_files(&layout::queue_dir(root, "Insp", 1)).unwrap()[0]
        .1
        .clone();
    write(
        &queue_file,
        3 * format::CQ_ENTRY_LEN as u64,
        &puts[9].physical_offset.to_be_bytes(),
    );
    // Index entry 5 gets a hash no key of its record has.
    let index = inspect::index_files(&layout::index_dir(root)).unwrap()[0].clone();
    let entry_5 = format::INDEX_HEADER_LEN
        + u64::from(SHAPE.0) * format::INDEX_SLOT_LEN
        + 5 * format::INDEX_ENTRY_LEN;
    write(&index, entry_5, &[0x7F, 1, 2, 3]);

    let (_, found) = problems(&Target::of(root).unwrap());
    let what: Vec<_> = found.iter().map(|p| (p.what.as_str(), p.offset)).collect();
    assert!(what.contains(&("record", victim)), "{found:?}");
    assert!(
        what.contains(&("queue entry Insp/1 #3", puts[9].physical_offset)),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.what.starts_with("index entry 5 of ") && p.reason.contains("hashes to")),
        "{found:?}"
    );
    // The damaged body also fails the check of the queue entry that points at it.
    assert!(
        what.contains(&("queue entry Insp/0 #5", victim)),
        "{found:?}"
    );
    assert_eq!(found.len(), 4, "{found:?}");

    // Each part alone finds its own problems.
    let (_, in_queue) = problems(&Target::of(&layout::queue_dir(root, "Insp", 1)).unwrap());
    assert_eq!(in_queue.len(), 1, "{in_queue:?}");
    let (_, in_index) = problems(&Target::of(&layout::index_dir(root)).unwrap());
    assert_eq!(in_index.len(), 1, "{in_index:?}");
}

#[test]
fn an_index_file_of_another_shape_is_refused() {
    let (dir, _) = store();
    let index = inspect::index_files(&layout::index_dir(dir.path())).unwrap()[0].clone();
    let err = IndexFileBytes::read(&index, SHAPE.0 * 2, SHAPE.1).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("index_hash_slots"), "{err}");
}

#[test]
fn damage_in_the_log_is_reported_and_ends_the_walk_of_its_file() {
    // The magic code of the third record zeroed, or damaged into the blank record's (a
    // blank that does not fill the rest of its file is damage, not the file's end).
    for magic in [[0; 4], format::BLANK_MAGIC.to_be_bytes()] {
        let (dir, puts) = store();
        let log = LogFiles::of_store(dir.path()).unwrap();
        let (start, path) = log.files()[0].clone();
        let third = puts[2].physical_offset;
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&magic, third - start + 4)
            .unwrap();
        let mut items = Vec::new();
        LogFiles::walk(&path, start, |item| {
            items.push(match item {
                Item::Record { offset, .. } => ("record", offset),
                Item::Blank { offset, .. } => ("blank", offset),
                Item::Damaged { offset, .. } => ("damaged", offset),
            });
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        let want = [
            ("record", puts[0].physical_offset),
            ("record", puts[1].physical_offset),
            ("damaged", third),
        ];
        assert_eq!(items, want, "{magic:?}");
        let (_, found) = problems(&Target::CommitLog(log));
        assert_eq!(
            found.iter().filter(|p| p.offset == third).count(),
            1,
            "{found:?}"
        );
    }
}

#[test]
fn verify_reports_undecodable_queue_entries_and_checks_the_ones_after() {
    let (dir, puts) = store();
    let root = dir.path();
    let queue_file = layout::data_files(&layout::queue_dir(root, "Insp", 0)).unwrap()[0]
        .1
        .clone();
    let f = OpenOptions::new().write(true).open(&queue_file).unwrap();
    // Entry #3: all 0xFF (a negative offset and size). Entry #7 points into a body.
    f.write_all_at(&[0xFF; 20], 3 * format::CQ_ENTRY_LEN as u64)
        .unwrap();
    let inside = puts[14].physical_offset + 120;
    f.write_all_at(&inside.to_be_bytes(), 7 * format::CQ_ENTRY_LEN as u64)
        .unwrap();
    let (checked, found) = problems(&Target::of(&layout::queue_dir(root, "Insp", 0)).unwrap());
    assert_eq!(
        checked, 149,
        "every entry but the undecodable one: {found:?}"
    );
    let what: Vec<_> = found.iter().map(|p| p.what.as_str()).collect();
    assert_eq!(
        what,
        ["queue entry Insp/0 #3", "queue entry Insp/0 #7"],
        "{found:?}"
    );
    assert!(found[1].reason.contains("no record here"), "{found:?}");
}

#[test]
fn verify_skips_entries_below_the_log_start() {
    let (dir, puts) = store();
    let root = dir.path();
    let log = LogFiles::of_store(root).unwrap();
    let (second_start, _) = log.files()[1].clone();
    std::fs::remove_file(&log.files()[0].1).unwrap();
    // Gone without retention recording the new start: missing, as the open says.
    let (_, found) = problems(&Target::of(root).unwrap());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].what.as_str(), found[0].offset), ("commit log", 0));
    // Retention deleted the first file (it records the start first): entries pointing
    // into it are skipped, not errors.
    write_log_start(root, second_start);
    let (checked, found) = problems(&Target::of(root).unwrap());
    assert_eq!(found, [], "entries below the log start are not problems");
    let left = puts
        .iter()
        .filter(|p| p.physical_offset >= second_start)
        .count() as u64;
    assert!(left > 0 && left < 300);
    assert_eq!(checked, 3 * left);
}

#[test]
fn verify_reports_zeros_that_end_a_file_before_later_records() {
    let (dir, puts) = store();
    let log = LogFiles::of_store(dir.path()).unwrap();
    let (start, path) = log.files()[0].clone();
    let next = log.files()[1].0;
    // The last record of the first file and the blank after it become zeros.
    let victim = puts
        .iter()
        .rev()
        .find(|p| p.physical_offset < next)
        .unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    let from = victim.physical_offset - start;
    f.write_all_at(&vec![0u8; (next - victim.physical_offset) as usize], from)
        .unwrap();
    let (_, found) = problems(&Target::CommitLog(log));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].offset, victim.physical_offset);
    assert!(
        found[0].reason.contains("later files hold records"),
        "{found:?}"
    );
}

/// A FIFO where a store file should be: the walk reports it instead of blocking for ever
/// in its open (nothing writes the other end).
#[test]
fn a_fifo_in_place_of_a_store_file_is_reported_not_waited_on() {
    let (dir, _) = store();
    let file = layout::queue_dir(dir.path(), "Insp", 0).join(layout::file_name(0));
    std::fs::remove_file(&file).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &file,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let target = Target::of(dir.path()).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let result = inspect::verify(&target, SHAPE, |_| Ok(()));
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("verify blocked on the FIFO");
    let err = result.unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_file_name_the_open_refuses_is_refused_by_the_tools_too() {
    let (dir, _) = store();
    let log_dir = layout::commit_log_dir(dir.path());
    // An unfinished allocation is left out, as the open removes it.
    std::fs::write(log_dir.join(layout::tmp_file_name(1 << 40)), b"").unwrap();
    let files = LogFiles::of_store(dir.path()).unwrap().files().len();
    assert!(files > 1);
    // A name of 20 digits past i64::MAX, and a name that is no offset at all.
    for stray in ["18446744073709551615", "notes.txt"] {
        let path = log_dir.join(stray);
        std::fs::write(&path, b"").unwrap();
        let err = LogFiles::of_store(dir.path()).unwrap_err();
        assert!(err.to_string().contains(stray), "{err}");
        let target = Target::of(dir.path()).unwrap();
        let err = inspect::verify(&target, SHAPE, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains(stray), "{err}");
        let open = rocketstore::MessageStore::open(config(dir.path(), sync_mode()));
        assert!(
            matches!(open, Err(rocketstore::Error::BadStoreFile { .. })),
            "the open refuses it too"
        );
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(LogFiles::of_store(dir.path()).unwrap().files().len(), files);
}
