//! Torn and damaged tails: truncate the last commit-log file at random points, zero
//! ranges, flip bytes, leave half-written records; every reopen must recover to the last
//! valid record, serve only valid messages, keep queue offsets dense, and take new puts.
//! `TORN_CASES=2000 cargo test --release --test torn_tail` runs a longer campaign.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use rocketstore::layout;
use rocketstore::{GetStatus, MessageStore, PutResult, StoreConfig};

const QUEUES: u32 = 3;

fn cfg(dir: &Path) -> StoreConfig {
    config(dir, sync_mode()).consume_queue_entries_per_file(256)
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncate,
    ZeroRange,
    FlipBytes,
    HalfRecord,
}

#[test]
fn damaged_tails_recover_to_the_last_valid_record() {
    let cases: usize = std::env::var("TORN_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(240);
    let base = tempfile::tempdir().unwrap();
    let puts: Vec<(u32, u64, PutResult)> = {
        let store = MessageStore::open(cfg(base.path())).unwrap();
        (0..1500u64)
            .map(|i| {
                let q = (i % u64::from(QUEUES)) as u32;
                (
                    q,
                    i,
                    store.put_message(&message("Torn", q, "t", i)).unwrap(),
                )
            })
            .collect()
    };
    let log_end = puts.last().unwrap().2.end_offset();
    let last_file_start = log_end / SMALL_FILE * SMALL_FILE;
    let last_file = layout::commit_log_file(base.path(), last_file_start);
    let in_last: Vec<&PutResult> = puts
        .iter()
        .map(|p| &p.2)
        .filter(|p| p.physical_offset >= last_file_start)
        .collect();
    assert!(in_last.len() > 20 && last_file_start > 0);

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("{cases} damaged tails, seed {seed}");
    let mut rng = Rng(seed);
    let kinds = [
        Damage::Truncate,
        Damage::ZeroRange,
        Damage::FlipBytes,
        Damage::HalfRecord,
    ];
    for case in 0..cases {
        let kind = kinds[case % kinds.len()];
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        fs::write(layout::abort_file(dir.path()), b"").unwrap();
        // The crash came before the checkpoint covered the last file.
        checkpoint_vouches_below(dir.path(), last_file_start);
        let path = layout::commit_log_dir(dir.path()).join(last_file.file_name().unwrap());
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        // Damage starts somewhere in the last file's records (a crash's torn tail).
        let from = last_file_start + rng.below(log_end - last_file_start);
        let pos = from - last_file_start;
        let exact = match kind {
            Damage::Truncate => {
                file.set_len(pos).unwrap();
                true
            }
            Damage::ZeroRange => {
                let len = 1 + rng.below(3000);
                file.write_all_at(&vec![0u8; len as usize], pos).unwrap();
                false
            }
            Damage::FlipBytes => {
                for _ in 0..1 + rng.below(8) {
                    let at = pos + rng.below((log_end - from).min(4096));
                    let mut b = [0u8; 1];
                    fs::File::open(&path)
                        .unwrap()
                        .read_exact_at(&mut b, at)
                        .unwrap();
                    file.write_all_at(&[b[0] ^ (1 + rng.below(255)) as u8], at)
                        .unwrap();
                }
                false
            }
            Damage::HalfRecord => {
                // A torn write: the first part of the record at a boundary, the rest zeros.
                let victim = in_last
                    .iter()
                    .find(|p| p.physical_offset >= from)
                    .copied()
                    .unwrap_or(in_last[in_last.len() - 1]);
                let boundary = victim.physical_offset;
                let mut bytes = vec![0u8; victim.wrote_bytes as usize];
                fs::File::open(&path)
                    .unwrap()
                    .read_exact_at(&mut bytes, victim.physical_offset - last_file_start)
                    .unwrap();
                let keep = 8 + rng.below(bytes.len() as u64 - 9) as usize;
                file.set_len(boundary - last_file_start).unwrap();
                file.set_len(SMALL_FILE).unwrap();
                file.write_all_at(&bytes[..keep], boundary - last_file_start)
                    .unwrap();
                // Everything from the boundary on is the damage.
                check_case(dir.path(), &puts, boundary, true, case, kind);
                continue;
            }
        };
        drop(file);
        check_case(dir.path(), &puts, from, exact, case, kind);
    }
}

/// After damage starting at `from`: every record wholly before it is intact, the log ends
/// at the last of them (or, for damage that may leave records valid, no earlier), queues
/// are dense and valid, and new puts continue at the end.
fn check_case(
    dir: &Path,
    puts: &[(u32, u64, PutResult)],
    from: u64,
    exact: bool,
    case: usize,
    kind: Damage,
) {
    let ctx = format!("case {case} ({kind:?} from {from})");
    let store = MessageStore::open(cfg(dir)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let intact: Vec<_> = puts.iter().filter(|p| p.2.end_offset() <= from).collect();
    // Damage is always in the last file: when it hits that file's first record, the log
    // ends at the file's start (the previous file is closed by its blank record).
    let boundary = intact
        .last()
        .map_or(0, |p| p.2.end_offset())
        .max(from / SMALL_FILE * SMALL_FILE);
    let end = store.max_physical_offset();
    if exact {
        // Nothing after the damaged record survives. The damaged record itself may: the
        // format's CRC covers only the body, so a tail torn inside the properties can still
        // be a well-formed record.
        let damaged_end = puts
            .iter()
            .map(|p| p.2.end_offset())
            .find(|&e| e > from)
            .unwrap_or(boundary);
        assert!(
            end == boundary || end == damaged_end,
            "{ctx}: log ends at {end}, expected {boundary} or {damaged_end}"
        );
    } else {
        assert!(
            end >= boundary,
            "{ctx}: lost intact records ({end} < {boundary})"
        );
    }
    for (q, i, p) in &intact {
        let m = store.lookup_message(p.physical_offset).unwrap().unwrap();
        assert_eq!(m.body, body("t", *i), "{ctx}");
        let g = store.get_message("Torn", *q, p.queue_offset, 1).unwrap();
        assert_eq!(g.messages[0].physical_offset, p.physical_offset, "{ctx}");
    }
    let mut total = 0;
    for q in 0..QUEUES {
        let max = store.max_offset_in_queue("Torn", q);
        let mut offset = 0;
        while offset < max {
            let g = store.get_message("Torn", q, offset, 64).unwrap();
            assert_eq!(g.status, GetStatus::Found, "{ctx}");
            for m in &g.messages {
                assert_eq!(m.queue_offset, offset, "{ctx}: queue {q} not dense");
                assert!(m.crc_ok() && m.physical_offset < end, "{ctx}");
                offset += 1;
                total += 1;
            }
        }
    }
    assert!(total >= intact.len(), "{ctx}");
    // By key: the intact messages are found, the cut ones are not.
    assert!(
        store.wait_dispatcher("index", end, std::time::Duration::from_secs(30)),
        "{ctx}"
    );
    let last_intact = intact.len().saturating_sub(3);
    for (_, i, p) in intact
        .iter()
        .skip(last_intact)
        .chain(intact.iter().step_by(97))
    {
        let found = store
            .query_message("Torn", &format!("k{i}"), 8, 0, i64::MAX)
            .unwrap();
        let offsets: Vec<u64> = found.messages.iter().map(|m| m.physical_offset).collect();
        assert_eq!(offsets, [p.physical_offset], "{ctx}: k{i}");
    }
    for (_, i, p) in puts.iter().filter(|p| p.2.physical_offset >= end).take(3) {
        let found = store
            .query_message("Torn", &format!("k{i}"), 8, 0, i64::MAX)
            .unwrap();
        assert!(
            found.messages.is_empty(),
            "{ctx}: k{i} at {} was cut",
            p.physical_offset
        );
    }
    let before = store.max_offset_in_queue("Torn", 1);
    let next = store.put_message(&message("Torn", 1, "t", 0)).unwrap();
    assert_eq!(next.queue_offset, before, "{ctx}");
    assert!(next.physical_offset == end || next.physical_offset.is_multiple_of(SMALL_FILE));
}
