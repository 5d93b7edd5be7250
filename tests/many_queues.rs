//! A thousand queues: one set of threads, and a reopen that does not read the whole log.
//! (Alone in its test binary, so the thread count is this store's.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use rocketstore::MessageStore;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_thousand_queues_cost_neither_threads_nor_a_slow_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), async_mode()).consume_queue_entries_per_file(1000);
    {
        let store = MessageStore::open(cfg()).unwrap();
        let mut last = 0;
        for q in 0..1000u32 {
            last = store
                .put_message(&message(&format!("T{}", q % 10), q, "m", u64::from(q)))
                .unwrap()
                .physical_offset;
        }
        assert!(store.wait_dispatched(last, WAIT));
    }
    let started = Instant::now();
    let store = MessageStore::open(cfg()).unwrap();
    // Reported, not asserted: timing goals live in benches/recovery.rs.
    println!("reopen with 1000 queues: {:?}", started.elapsed());
    for q in 0..1000u32 {
        assert_eq!(store.max_offset_in_queue(&format!("T{}", q % 10), q), 1);
    }
    let threads = std::fs::read_dir("/proc/self/task").unwrap().count();
    assert!(
        threads <= 8,
        "{threads} threads for one store and the test harness"
    );
}
