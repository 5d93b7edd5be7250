//! Transaction records (RocketMQ's sys-flag bits 2–3): half (PREPARED) and ROLLBACK records
//! are stored but never consumed; COMMIT records are consumed like any message.

mod common;

use std::fs;
use std::time::Duration;

use rocketstore::layout;
use rocketstore::{
    GetStatus, Message, MessageStore, TRANSACTION_COMMIT, TRANSACTION_PREPARED,
    TRANSACTION_ROLLBACK,
};

use common::{config, message, sync_mode};

fn flagged(i: u64, sys_flag: i32) -> Message {
    let mut m = message("Tx", 0, "tx", i);
    m.sys_flag = sys_flag;
    m
}

/// Puts a mix and returns the bodies consumers must see, in queue order.
fn put_mix(store: &MessageStore) -> Vec<bytes::Bytes> {
    let mut visible = Vec::new();
    let mut prepared_at = 0;
    for i in 0..40u64 {
        let flag = match i % 5 {
            0 => 0,
            1 => TRANSACTION_PREPARED,
            2 => TRANSACTION_COMMIT,
            3 => TRANSACTION_ROLLBACK,
            _ => TRANSACTION_PREPARED | 0x1, // other bits do not change the transaction type
        };
        let mut m = flagged(i, flag);
        if flag == TRANSACTION_COMMIT || flag == TRANSACTION_ROLLBACK {
            m.prepared_transaction_offset = prepared_at;
        }
        let put = store.put_message(&m).unwrap();
        let hidden = flag & 0xC == TRANSACTION_PREPARED || flag & 0xC == TRANSACTION_ROLLBACK;
        if hidden {
            assert_eq!(put.queue_offset, 0, "a hidden record takes queue offset 0");
            if flag & 0xC == TRANSACTION_PREPARED {
                prepared_at = put.physical_offset as i64;
            }
            // Still readable by physical offset, for the broker's transaction check.
            let got = store.lookup_message(put.physical_offset).unwrap().unwrap();
            assert_eq!(got.body, m.body);
            assert_eq!(got.sys_flag & 0xC, flag & 0xC);
        } else {
            assert_eq!(
                put.queue_offset,
                visible.len() as u64,
                "visible offsets continue"
            );
            visible.push(m.body.clone());
        }
    }
    visible
}

fn assert_consumers_see(store: &MessageStore, visible: &[bytes::Bytes]) {
    assert!(store.wait_dispatched_to(store.max_physical_offset(), Duration::from_secs(30)));
    assert_eq!(store.max_offset_in_queue("Tx", 0), visible.len() as u64);
    let got = store.get_message("Tx", 0, 0, 1000).unwrap();
    assert_eq!(got.status, GetStatus::Found);
    let bodies: Vec<_> = got.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, visible);
    assert!(
        got.messages
            .iter()
            .all(|m| m.sys_flag & 0xC == 0 || m.sys_flag & 0xC == TRANSACTION_COMMIT)
    );
}

#[test]
fn half_and_rollback_records_are_never_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    let visible = put_mix(&store);
    assert_eq!(visible.len(), 16);
    assert_consumers_see(&store, &visible);
    store.shutdown().unwrap();
    drop(store);

    // Clean reopen: the queue continues after the last visible message.
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    assert_consumers_see(&store, &visible);
    let put = store.put_message(&flagged(100, 0)).unwrap();
    assert_eq!(put.queue_offset, visible.len() as u64);
    store.shutdown().unwrap();
}

#[test]
fn recovery_and_rebuild_skip_hidden_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    let visible = put_mix(&store);
    store.shutdown().unwrap();
    drop(store);

    // As after a crash: recovery re-indexes from the checkpoint.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    assert_consumers_see(&store, &visible);
    store.shutdown().unwrap();
    drop(store);

    // With the queues gone, they are rebuilt from the whole log.
    fs::remove_dir_all(layout::consume_queue_dir(dir.path())).unwrap();
    fs::write(layout::abort_file(dir.path()), b"").unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    assert_consumers_see(&store, &visible);
    let put = store
        .put_message(&flagged(100, TRANSACTION_COMMIT))
        .unwrap();
    assert_eq!(put.queue_offset, visible.len() as u64);
    store.shutdown().unwrap();
}

#[test]
fn a_batch_may_mix_hidden_and_visible_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    let first = store.put_message(&flagged(9, 0)).unwrap();
    assert_eq!(first.queue_offset, 0);
    let batch = [
        flagged(0, TRANSACTION_PREPARED),
        flagged(1, 0),
        flagged(2, TRANSACTION_ROLLBACK),
        flagged(3, 0),
    ];
    // The batch starts with a hidden record: its result says queue offset 0, though the
    // queue is at 1.
    let put = store.put_messages(&batch).unwrap();
    assert_eq!(put.queue_offset, 0);
    let put = store.put_message(&flagged(4, 0)).unwrap();
    assert_eq!(
        put.queue_offset, 3,
        "the batch's two visible records took 1 and 2"
    );
    assert_consumers_see(
        &store,
        &[
            flagged(9, 0).body,
            batch[1].body.clone(),
            batch[3].body.clone(),
            flagged(4, 0).body,
        ],
    );
}

/// Overwrites entry `n` of queue Tx/0 of the running store: physical offset and size.
fn point_entry(dir: &std::path::Path, n: u64, physical_offset: u64, size: u32) {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new()
        .write(true)
        .open(layout::queue_dir(dir, "Tx", 0).join(layout::file_name(0)))
        .unwrap();
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&physical_offset.to_be_bytes());
    b[8..].copy_from_slice(&size.to_be_bytes());
    file.write_all_at(&b, n * 20).unwrap();
}

/// A consume-queue entry damaged (after the open) to point at a transaction's half of the
/// same queue, which carries queue offset 0 like the entry: an error, never the half; and
/// one damaged to point past everything the log holds: an error, not a "nothing yet" that
/// would hold the consumer there for good.
#[test]
fn a_damaged_entry_never_serves_a_half_nor_stalls_the_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    let half = store
        .put_message(&flagged(0, TRANSACTION_PREPARED))
        .unwrap();
    for i in 1..4 {
        store.put_message(&flagged(i, 0)).unwrap();
    }
    assert!(store.wait_dispatched_to(store.max_physical_offset(), Duration::from_secs(30)));
    assert_eq!(store.get_message("Tx", 0, 0, 8).unwrap().messages.len(), 3);

    point_entry(dir.path(), 0, half.physical_offset, half.wrote_bytes);
    let err = store.get_message("Tx", 0, 0, 8).unwrap_err();
    assert!(matches!(err, rocketstore::Error::Corrupted { .. }), "{err}");

    point_entry(dir.path(), 2, store.max_physical_offset() + (1 << 20), 200);
    let err = store.get_message("Tx", 0, 2, 8).unwrap_err();
    assert!(matches!(err, rocketstore::Error::Corrupted { .. }), "{err}");
    // What comes before it is served; the next pull meets the error.
    let got = store.get_message("Tx", 0, 1, 8).unwrap();
    assert_eq!((got.messages.len(), got.next_offset), (1, 2));
}
