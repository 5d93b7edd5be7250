//! Many threads putting to several queues at once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use rocketstore::PutResult;

#[test]
fn concurrent_puts_get_dense_offsets_and_ordered_store_times() {
    for mode in [sync_mode(), async_mode()] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path(), mode));
        const THREADS: u64 = 6;
        const PER_THREAD: u64 = 600;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let n = t * PER_THREAD + i;
                            let queue = (n % 4) as u32;
                            let put = store.put_message(&message("Conc", queue, "c", n)).unwrap();
                            assert!(put.is_ok());
                            (queue, n, put)
                        })
                        .collect::<Vec<(u32, u64, PutResult)>>()
                })
            })
            .collect();
        let mut puts: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(puts.len() as u64, THREADS * PER_THREAD);

        // Per queue: queue offsets are exactly 0..n, and increase with the physical offset.
        puts.sort_by_key(|p| p.2.physical_offset);
        let mut per_queue: HashMap<u32, Vec<u64>> = HashMap::new();
        for (queue, _, put) in &puts {
            per_queue.entry(*queue).or_default().push(put.queue_offset);
        }
        for (queue, offsets) in per_queue {
            let expected: Vec<u64> = (0..offsets.len() as u64).collect();
            assert_eq!(
                offsets, expected,
                "queue {queue} offsets not dense in log order"
            );
        }

        let mut last_ts = 0;
        let mut prev_end = 0;
        for (queue, n, put) in &puts {
            // Physical offsets are where the records really are.
            assert!(put.physical_offset >= prev_end);
            if put.physical_offset != prev_end {
                assert_eq!(put.physical_offset % SMALL_FILE, 0);
            }
            prev_end = put.end_offset();
            let m = store.lookup_message(put.physical_offset).unwrap().unwrap();
            assert_eq!(m.physical_offset, put.physical_offset);
            assert_eq!(m.queue_id, *queue);
            assert_eq!(m.queue_offset, put.queue_offset);
            assert_eq!(m.body, body("c", *n));
            assert!(m.crc_ok());
            assert_eq!(m.store_timestamp, put.store_timestamp);
            assert!(
                m.store_timestamp >= last_ts,
                "store time went back in log order"
            );
            last_ts = m.store_timestamp;
        }
    }
}

#[test]
fn the_store_and_its_results_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<rocketstore::MessageStore>();
    send_sync::<rocketstore::StoredMessage>();
    send::<rocketstore::PutFuture>();
    // A message read on one thread can be held on another after the store is gone.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), async_mode());
    let put = store.put_message(&message("X", 0, "x", 0)).unwrap();
    let msg = store.lookup_message(put.physical_offset).unwrap().unwrap();
    drop(store);
    let held = std::thread::spawn(move || msg.body.clone()).join().unwrap();
    assert_eq!(held, common::body("x", 0));
}
