//! An open after a crash loads the queues on many threads, each holding every file of the
//! queue it loads open. Under a descriptor limit that fits one queue's files but not
//! several at once, the loads that ran out are done again one at a time, and the store
//! opens whole. (A test binary of its own: it lowers the process's descriptor limit.)

mod common;

use std::fs;
use std::time::Duration;

use common::{async_mode, body, config, message};
use rocketstore::{GetStatus, MessageStore, layout};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Past the threshold at which queues are loaded on many threads (128).
const QUEUES: u32 = 130;
/// With one entry per file, a queue of this many messages has this many files.
const PER_QUEUE: u64 = 200;

#[test]
fn a_crash_reopen_under_a_low_descriptor_limit_loads_every_queue() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), async_mode()).consume_queue_entries_per_file(1);
    {
        let store = MessageStore::open(cfg()).unwrap();
        let mut last = None;
        for i in 0..PER_QUEUE {
            for q in 0..QUEUES {
                last = Some(store.put_message(&message("Fd", q, "fd", i)).unwrap());
            }
        }
        let last = last.unwrap().physical_offset;
        assert!(store.wait_dispatched(last, Duration::from_secs(60)));
        store.shutdown().unwrap();
    }
    // An unclean open loads every queue from its files.
    fs::write(layout::abort_file(dir.path()), b"").unwrap();

    // Room for one queue's 200 files, or for the descriptor cache (256), with what the
    // process holds besides; two queues loading at once need more.
    let old = getrlimit(Resource::Nofile);
    let low = Rlimit {
        current: Some(330),
        maximum: old.maximum,
    };
    setrlimit(Resource::Nofile, low).unwrap();
    let opened = MessageStore::open(cfg());
    setrlimit(Resource::Nofile, old).unwrap();
    let store = opened.expect("the open loads every queue under the low limit");

    let want: Vec<_> = (0..PER_QUEUE).map(|i| body("fd", i)).collect();
    for q in 0..QUEUES {
        let mut bodies = Vec::new();
        let mut at = 0;
        while at < PER_QUEUE {
            let got = store.get_message("Fd", q, at, 32).unwrap();
            assert_eq!(got.status, GetStatus::Found, "queue {q} at {at}");
            bodies.extend(got.messages.iter().map(|m| m.body.clone()));
            at = got.next_offset;
        }
        assert_eq!(bodies, want, "queue {q}");
    }
    store.shutdown().unwrap();
}
