//! The raw-log replication primitives: a leader ships whole records, a follower appends
//! them (byte-identical files), bad input is refused with nothing published, a diverged
//! tail is cut and appended again, and the confirm offset limits readers and acks.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use rocketstore::layout;
use rocketstore::{Error, GetStatus, MessageStore, StoreConfig, TRANSACTION_PREPARED};

use common::{config, message, sync_mode};

const LONG: Duration = Duration::from_secs(30);

fn cfg(dir: &Path) -> StoreConfig {
    config(dir, sync_mode())
}

/// Ships everything the leader has to the follower, `max_bytes` at a time.
fn ship(leader: &MessageStore, follower: &MessageStore, max_bytes: usize) -> u64 {
    let mut at = follower.max_physical_offset();
    loop {
        let bytes = leader.read_log(at, max_bytes).unwrap();
        if bytes.is_empty() {
            return at;
        }
        at = follower.append_log(at, &bytes).unwrap();
    }
}

fn fill(leader: &MessageStore, from: u64, n: u64) -> Vec<rocketstore::PutResult> {
    let mut puts = Vec::new();
    for i in from..from + n {
        let q = (i % 3) as u32;
        if i % 17 == 5 {
            let batch = [message("R", q, "b", i), message("R", q, "b", i + 1000)];
            puts.push(leader.put_messages(&batch).unwrap());
        } else if i % 23 == 7 {
            let mut half = message("R", q, "h", i);
            half.sys_flag = TRANSACTION_PREPARED;
            puts.push(leader.put_message(&half).unwrap());
        } else {
            puts.push(leader.put_message(&message("R", q, "m", i)).unwrap());
        }
    }
    puts
}

/// Every queue of the follower ends where the leader's does, once both stores have
/// indexed all they hold (dispatch runs behind the put on each).
fn same_queues(leader: &MessageStore, follower: &MessageStore) {
    for store in [leader, follower] {
        assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    }
    for q in 0..3 {
        assert_eq!(
            follower.max_offset_in_queue("R", q),
            leader.max_offset_in_queue("R", q)
        );
    }
}

/// The commit-log files holding offsets below `end` are identical in both stores.
fn same_files(a: &Path, b: &Path, end: u64) {
    let list = |d: &Path| {
        let mut v: Vec<_> = fs::read_dir(layout::commit_log_dir(d))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| {
                let start: u64 = n.to_str().unwrap().parse().unwrap();
                start < end
            })
            .collect();
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb);
    for name in &la {
        assert!(lb.contains(name), "follower lacks {name:?}");
        let fa = fs::read(layout::commit_log_dir(a).join(name)).unwrap();
        let fb = fs::read(layout::commit_log_dir(b).join(name)).unwrap();
        assert!(fa == fb, "{name:?} differs");
    }
}

#[test]
fn a_follower_fed_by_read_log_holds_byte_identical_files() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = MessageStore::open(cfg(a.path())).unwrap();
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    fill(&leader, 0, 800);
    // Ship in pieces of every size, across file ends.
    for max in [1, 700, 4096, 1 << 20] {
        fill(&leader, 1000 * max as u64, 100);
        ship(&leader, &follower, max);
    }
    let end = leader.max_physical_offset();
    assert!(end > 4 * common::SMALL_FILE, "several files");
    assert_eq!(follower.max_physical_offset(), end);
    // The follower's queues and index are built from the bytes.
    assert!(follower.wait_dispatcher("index", end, LONG));
    same_queues(&leader, &follower);
    for q in 0..3 {
        let (l, f) = (
            leader.get_message("R", q, 10, 20).unwrap(),
            follower.get_message("R", q, 10, 20).unwrap(),
        );
        let pick = |g: &rocketstore::GetResult| {
            g.messages
                .iter()
                .map(|m| (m.physical_offset, m.store_timestamp, m.body.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(&l), pick(&f));
    }
    assert_eq!(
        follower
            .query_message("R", "k42", 8, 0, i64::MAX)
            .unwrap()
            .messages
            .len(),
        1
    );
    // New puts on the follower continue the queues where the leader's left them.
    let next = follower.put_message(&message("R", 0, "f", 0)).unwrap();
    assert_eq!(next.queue_offset, leader.max_offset_in_queue("R", 0));
    drop(follower);
    leader.shutdown().unwrap();
    drop(leader);
    // Files compared up to the leader's end: the follower's own put, after it, goes.
    MessageStore::truncate_log(&cfg(b.path()), end).unwrap();
    same_files(a.path(), b.path(), end);
}

#[test]
fn bad_input_is_refused_with_nothing_published() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = MessageStore::open(cfg(a.path())).unwrap();
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    let puts = fill(&leader, 0, 20);
    ship(&leader, &follower, 1 << 20);
    fill(&leader, 100, 20);
    let at = follower.max_physical_offset();
    let good = leader.read_log(at, 1 << 20).unwrap();
    let unchanged = |follower: &MessageStore| {
        assert_eq!(follower.max_physical_offset(), at, "nothing was published");
    };

    // A damaged byte in a body.
    let mut bad = good.to_vec();
    let last = bad.len() - 10;
    bad[last] ^= 0xFF;
    assert!(matches!(
        follower.append_log(at, &bad),
        Err(Error::Corrupted { .. })
    ));
    unchanged(&follower);
    // A gap: offered past the end, or records from further on offered at the end.
    assert!(matches!(
        follower.append_log(at + 1, &good),
        Err(Error::LogMismatch { .. })
    ));
    let second = leader.read_log(puts[1].physical_offset, 1 << 20).unwrap();
    assert!(matches!(
        follower.append_log(at, &second),
        Err(Error::Corrupted { .. })
    ));
    unchanged(&follower);
    // An overlap: bytes the follower already has.
    let old = leader.read_log(0, 1 << 20).unwrap();
    assert!(matches!(
        follower.append_log(0, &old),
        Err(Error::LogMismatch { .. })
    ));
    // A record cut short.
    assert!(follower.append_log(at, &good[..good.len() - 1]).is_err());
    unchanged(&follower);
    // Queue offsets that do not continue: the first record's queue offset moved on by
    // one (the CRC covers only the body, so the record is otherwise valid).
    let mut skipped = good.to_vec();
    let at_qo = 20; // QUEUEOFFSET
    let qo = u64::from_be_bytes(skipped[at_qo..at_qo + 8].try_into().unwrap());
    skipped[at_qo..at_qo + 8].copy_from_slice(&(qo + 1).to_be_bytes());
    assert!(matches!(
        follower.append_log(at, &skipped),
        Err(Error::Corrupted { .. })
    ));
    unchanged(&follower);
    // The good bytes still go in.
    assert!(follower.append_log(at, &good).unwrap() > at);
}

#[test]
fn a_diverged_tail_is_cut_and_appended_again() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = MessageStore::open(cfg(a.path())).unwrap();
    let puts = fill(&leader, 0, 400);
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    ship(&leader, &follower, 1 << 20);
    // The follower diverges: its own records after the common part.
    for i in 0..50 {
        follower
            .put_message(&message("R", 1, "diverged", 5000 + i))
            .unwrap();
    }
    drop(follower);
    let cut = puts[250].physical_offset;
    assert!(
        matches!(
            MessageStore::truncate_log(&cfg(b.path()), cut + 1),
            Err(Error::Corrupted { .. })
        ),
        "inside a record"
    );
    MessageStore::truncate_log(&cfg(b.path()), cut).unwrap();
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    assert_eq!(follower.max_physical_offset(), cut);
    assert!(follower.wait_dispatcher("index", cut, LONG));
    assert!(
        follower
            .query_message("R", "k5001", 8, 0, i64::MAX)
            .unwrap()
            .messages
            .is_empty()
    );
    // Appending again from the cut: the follower catches up, identical again.
    let end = ship(&leader, &follower, 4096);
    assert_eq!(end, leader.max_physical_offset());
    assert!(follower.wait_dispatched_to(end, LONG));
    same_queues(&leader, &follower);
    drop(follower);
    leader.shutdown().unwrap();
    drop(leader);
    same_files(a.path(), b.path(), end);
    // Truncating an open store is refused.
    let open = MessageStore::open(cfg(b.path())).unwrap();
    assert!(matches!(
        MessageStore::truncate_log(&cfg(b.path()), cut),
        Err(Error::StoreLocked { .. })
    ));
    drop(open);
}

#[test]
fn the_confirm_offset_limits_readers_and_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path()).read_confirmed_only(true)).unwrap();
    let put = store.put_message(&message("C", 0, "c", 0)).unwrap();
    let end = put.physical_offset + u64::from(put.wrote_bytes);
    // Durable but not confirmed: invisible to readers.
    assert!(!store.wait_dispatched_to(end, Duration::from_millis(100)));
    assert_eq!(
        store.get_message("C", 0, 0, 8).unwrap().status,
        GetStatus::NoMessageInQueue
    );
    assert!(store.lookup_message(put.physical_offset).unwrap().is_none());
    // A replicated put resolves only once confirmed.
    let mut pending = std::pin::pin!(store.put_message_replicated(message("C", 0, "c", 1)));
    let (tx, rx) = crossbeam_channel::unbounded();
    struct Tx(crossbeam_channel::Sender<()>);
    impl std::task::Wake for Tx {
        fn wake(self: std::sync::Arc<Self>) {
            let _ = self.0.send(());
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Tx(tx)));
    let mut cx = std::task::Context::from_waker(&waker);
    use std::future::Future;
    let mut polls = 0;
    let r = loop {
        polls += 1;
        match pending.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => break r.unwrap(),
            std::task::Poll::Pending => {
                if polls == 1 {
                    // Pending on the confirm offset (or still on the flush): confirm both.
                    store
                        .set_confirm_offset(store.max_physical_offset())
                        .unwrap();
                }
                rx.recv_timeout(LONG).expect("woken");
            }
        }
    };
    assert_eq!(r.queue_offset, 1);
    assert!(store.confirm_offset() >= r.physical_offset + u64::from(r.wrote_bytes));
    // Confirmed: readers see both.
    assert!(store.wait_dispatched_to(store.confirm_offset(), LONG));
    assert_eq!(store.get_message("C", 0, 0, 8).unwrap().messages.len(), 2);
    // A replicated put never confirmed ends at shutdown.
    let never = store.put_message_replicated(message("C", 0, "c", 2));
    store.shutdown().unwrap();
    assert!(matches!(pollster::block_on(never), Err(Error::ShutDown)));
}

/// The follower process of the kill test: ships from the leader at `REPL_LEADER` to the
/// follower at `REPL_FOLLOWER` in small pieces, printing the end after each append.
#[test]
#[ignore = "run by the kill test as a child process"]
fn follower_child() {
    use std::io::Write;
    let (Ok(l), Ok(f)) = (std::env::var("REPL_LEADER"), std::env::var("REPL_FOLLOWER")) else {
        return;
    };
    let leader = MessageStore::open(cfg(Path::new(&l))).unwrap();
    let follower = MessageStore::open(cfg(Path::new(&f))).unwrap();
    let mut out = std::io::stdout();
    let mut at = follower.max_physical_offset();
    loop {
        let bytes = leader.read_log(at, 700).unwrap();
        if bytes.is_empty() {
            break;
        }
        at = follower.append_log(at, &bytes).unwrap();
        writeln!(out, "APPENDED {at}").unwrap();
        out.flush().unwrap();
    }
    writeln!(out, "DONE").unwrap();
    loop {
        std::thread::park();
    }
}

#[test]
fn a_follower_killed_during_append_log_recovers_and_catches_up() {
    use std::io::BufRead;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let end = {
        let leader = MessageStore::open(cfg(a.path())).unwrap();
        fill(&leader, 0, 1500);
        leader.max_physical_offset()
    };
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "follower_child", "--nocapture"])
            .env("REPL_LEADER", a.path())
            .env("REPL_FOLLOWER", b.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // Killed after some appends (under sync flush each was durable when printed).
        let mut acked = 0;
        for line in lines.map(Result::unwrap) {
            if let Some(e) = line.strip_prefix("APPENDED ") {
                acked = e.parse().unwrap();
                if acked > end / 4 * (round + 1) {
                    break;
                }
            }
            if line.ends_with("DONE") {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The follower reopens with every acknowledged append, as a prefix of the leader.
        let follower = MessageStore::open(cfg(b.path())).unwrap();
        let got = follower.max_physical_offset();
        assert!(
            got >= acked,
            "round {round}: appended up to {acked}, recovered {got}"
        );
        assert!(got <= end);
        drop(follower);
    }
    // Then it catches up, byte-identical.
    let leader = MessageStore::open(cfg(a.path())).unwrap();
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    assert_eq!(ship(&leader, &follower, 1 << 20), end);
    assert!(follower.wait_dispatched_to(end, LONG));
    same_queues(&leader, &follower);
    drop(follower);
    drop(leader);
    same_files(a.path(), b.path(), end);
}

#[test]
fn confirm_offsets_readers_and_ends_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_c = || cfg(dir.path()).read_confirmed_only(true);
    let store = MessageStore::open(cfg_c()).unwrap();
    let a = store.put_message(&message("C", 0, "c", 0)).unwrap();
    let b = store.put_message(&message("C", 0, "c", 1)).unwrap();
    // Inside a record: refused.
    assert!(matches!(
        store.set_confirm_offset(a.physical_offset + 3),
        Err(Error::Corrupted { .. })
    ));
    store.set_confirm_offset(b.physical_offset).unwrap();
    assert!(store.wait_dispatched_to(b.physical_offset, LONG));
    assert_eq!(store.get_message("C", 0, 0, 8).unwrap().messages.len(), 1);
    // Past the end of this log: the asker's log diverged.
    let end = store.max_physical_offset();
    assert!(matches!(
        store.read_log(end + 1, 100),
        Err(Error::OutOfRange { .. })
    ));
    assert!(store.read_log(end, 100).unwrap().is_empty());
    store.shutdown().unwrap();
    drop(store);

    // Reopened: the confirm offset starts at 0, and what recovery indexed is not served
    // until it is confirmed again.
    let store = MessageStore::open(cfg_c()).unwrap();
    let got = store.get_message("C", 0, 0, 8).unwrap();
    assert!(got.messages.is_empty(), "{:?}", got.status);
    assert_eq!(got.status, GetStatus::OffsetOverflowOne);
    assert!(store.lookup_message(a.physical_offset).unwrap().is_none());
    store
        .set_confirm_offset(store.max_physical_offset())
        .unwrap();
    assert_eq!(store.get_message("C", 0, 0, 8).unwrap().messages.len(), 2);
}

/// Ships exactly the leader's first file, its closing blank included.
fn ship_the_first_file(leader: &MessageStore, follower: &MessageStore) {
    let mut at = 0;
    while at < common::SMALL_FILE {
        let bytes = leader.read_log(at, 4096).unwrap();
        at = follower.append_log(at, &bytes).unwrap();
    }
    assert_eq!(at, common::SMALL_FILE);
}

#[test]
fn a_follower_that_stopped_at_a_file_end_goes_on_in_the_next_file() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = MessageStore::open(cfg(a.path())).unwrap();
    fill(&leader, 0, 600);
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    ship_the_first_file(&leader, &follower);
    follower.shutdown().unwrap();
    drop(follower);
    // Reopened right at the file's end: the next append goes into the next file.
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    assert_eq!(follower.max_physical_offset(), common::SMALL_FILE);
    let end = ship(&leader, &follower, 4096);
    assert_eq!(end, leader.max_physical_offset());
    drop(follower);
    drop(leader);
    same_files(a.path(), b.path(), end);
}

/// A cut at the log's end is a no-op, also when that end is a file's end and the next
/// file was never made (a rolled-back snapshot install cuts back to where it began).
#[test]
fn a_cut_at_a_file_end_with_no_next_file_changes_nothing() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = MessageStore::open(cfg(a.path())).unwrap();
    fill(&leader, 0, 600);
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    ship_the_first_file(&leader, &follower);
    follower.shutdown().unwrap();
    drop(follower);
    let dir = layout::commit_log_dir(b.path());
    for (start, path) in layout::data_files(&dir).unwrap() {
        if start >= common::SMALL_FILE {
            fs::remove_file(path).unwrap();
        }
    }
    // Torn (its last record and blank gone): the file ends below the cut, refused.
    let first = layout::data_files(&dir).unwrap()[0].1.clone();
    let whole = fs::read(&first).unwrap();
    let mut torn = whole.clone();
    let len = torn.len();
    torn[len - 2048..].fill(0);
    fs::write(&first, &torn).unwrap();
    let err = MessageStore::truncate_log(&cfg(b.path()), common::SMALL_FILE).unwrap_err();
    assert!(matches!(err, Error::Corrupted { .. }), "{err}");
    fs::write(&first, &whole).unwrap();
    MessageStore::truncate_log(&cfg(b.path()), common::SMALL_FILE).unwrap();
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    assert_eq!(follower.max_physical_offset(), common::SMALL_FILE);
    let end = ship(&leader, &follower, 4096);
    assert_eq!(end, leader.max_physical_offset());
    drop(follower);
    drop(leader);
    same_files(a.path(), b.path(), end);
}

#[test]
fn a_store_reopened_at_a_file_end_remembers_its_last_store_time() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = MessageStore::open(cfg(a.path())).unwrap();
    let puts = fill(&leader, 0, 600);
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    let mut at = 0;
    while at < common::SMALL_FILE {
        let bytes = leader.read_log(at, 4096).unwrap();
        at = follower.append_log(at, &bytes).unwrap();
    }
    let last_in_first_file = puts
        .iter()
        .filter(|p| p.physical_offset < common::SMALL_FILE)
        .map(|p| p.store_timestamp)
        .max()
        .unwrap();
    follower.shutdown().unwrap();
    drop(follower);
    // Its last file holds no record yet: the last store time is in the file before.
    let follower = MessageStore::open(cfg(b.path())).unwrap();
    let put = follower
        .put_message_stamped(&message("R", 0, "late", 0), 1)
        .unwrap();
    assert_eq!(
        put.store_timestamp, last_in_first_file,
        "store times must never decrease in log order"
    );
}

/// Another writer ran on the store (its checkpoint fields rewritten in place, breaking
/// our CRC) and its retention deleted the first file without recording the start: the
/// stale record is not trusted. Cutting the log must not make it trusted again by
/// rewriting the checkpoint with a fresh CRC.
#[test]
fn a_cut_does_not_make_a_stale_log_start_trusted() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let puts = {
        let store = MessageStore::open(cfg(dir.path())).unwrap();
        let puts = fill(&store, 0, 1000);
        store.shutdown().unwrap();
        puts
    };
    assert!(puts.last().unwrap().physical_offset > 3 * common::SMALL_FILE);
    // The other writer: a time rewritten in place, and the first file deleted.
    let cp = fs::OpenOptions::new()
        .write(true)
        .open(layout::checkpoint_file(dir.path()))
        .unwrap();
    // RocketMQ's checkpoint: the consume queues' time at bytes 8..16.
    cp.write_all_at(&1i64.to_be_bytes(), 8).unwrap();
    drop(cp);
    fs::remove_file(layout::commit_log_file(dir.path(), 0)).unwrap();
    let cut = puts.last().unwrap().physical_offset;
    MessageStore::truncate_log(&cfg(dir.path()), cut).unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.min_physical_offset(), common::SMALL_FILE);
    assert_eq!(store.max_physical_offset(), cut);
    store.shutdown().unwrap();
}

/// Dispatch stops at the confirm offset: a clean shutdown then leaves the records past it
/// for the next open to index (not a rebuild of every queue), and a topic deletion still
/// waiting for them is not written into the queue table as if it were done (the next
/// open, which completes it, refused the store as damaged).
#[test]
fn a_shutdown_with_unconfirmed_records_reopens_without_a_rebuild_or_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_c = || cfg(dir.path()).read_confirmed_only(true);
    {
        let store = MessageStore::open(cfg_c()).unwrap();
        for i in 0..3 {
            store.put_message(&message("T", 0, "t", i)).unwrap();
        }
        store
            .set_confirm_offset(store.max_physical_offset())
            .unwrap();
        assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
        // Never confirmed: the deletion's cutoff lies past the confirm offset.
        store.put_message(&message("U", 0, "u", 0)).unwrap();
        std::thread::scope(|s| {
            let deleting = s.spawn(|| store.delete_topic("T"));
            let file = layout::deleted_topics_file(dir.path());
            let deadline = std::time::Instant::now() + LONG;
            while !fs::read_to_string(&file).is_ok_and(|t| t.contains("\nT ")) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the deletion was not recorded"
                );
                std::thread::yield_now();
            }
            store.put_message(&message("V", 0, "v", 0)).unwrap();
            store.shutdown().unwrap();
            assert!(matches!(deleting.join().unwrap(), Err(Error::ShutDown)));
        });
    }
    let store = MessageStore::open(cfg_c()).unwrap();
    let open = store.stats().open;
    assert!(!open.rebuilt_queues, "{open:?}");
    assert_eq!(store.max_offset_in_queue("T", 0), 0);
    assert_eq!(store.max_offset_in_queue("U", 0), 1);
    assert_eq!(store.max_offset_in_queue("V", 0), 1);
    store.shutdown().unwrap();
}

/// Fails the removal of the queue table.
struct KeepQueueTable;

impl rocketstore::IoHook for KeepQueueTable {
    fn before_remove(&self, path: &Path) -> std::io::Result<()> {
        if path.ends_with(layout::queue_table_file(Path::new(""))) {
            return Err(std::io::Error::other("injected removal failure"));
        }
        Ok(())
    }
}

#[test]
fn a_truncation_stopped_before_the_queue_table_goes_leaves_a_store_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    let puts = fill(&store, 0, 300);
    let end = store.max_physical_offset();
    drop(store);
    assert!(layout::queue_table_file(dir.path()).exists());
    // The truncation stops where the table should go (as a crash there would): the
    // queues the table describes must still be what the log holds.
    let cut = puts[200].physical_offset;
    let hooked = cfg(dir.path()).io_hook(std::sync::Arc::new(KeepQueueTable));
    assert!(matches!(
        MessageStore::truncate_log(&hooked, cut),
        Err(Error::Io { .. })
    ));
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.max_physical_offset(), end, "nothing was cut");
    assert!(store.wait_dispatched_to(end, LONG));
    let last = puts.last().unwrap();
    let got = store
        .get_message("R", 2, last.queue_offset, 1)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.messages[0].physical_offset, last.physical_offset);
    drop(store);
    // Done again without the failure, the cut takes.
    MessageStore::truncate_log(&cfg(dir.path()), cut).unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.max_physical_offset(), cut);
}

/// A confirm offset set past the log's end (a follower told the leader's before it holds
/// those bytes) confirms only what the log holds: records put or appended later are not
/// taken as replicated by it, nor served under `read_confirmed_only`.
#[test]
fn a_confirm_offset_past_the_end_confirms_only_what_the_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path()).read_confirmed_only(true)).unwrap();
    let first = store.put_message(&message("C", 0, "c", 0)).unwrap();
    let end = store.max_physical_offset();
    store.set_confirm_offset(end + 5000).unwrap();
    assert_eq!(store.confirm_offset(), end);
    assert!(
        store
            .lookup_message(first.physical_offset)
            .unwrap()
            .is_some()
    );
    let later = store.put_message(&message("C", 0, "c", 1)).unwrap();
    assert!(
        store
            .lookup_message(later.physical_offset)
            .unwrap()
            .is_none()
    );
    assert!(store.wait_dispatched_to(end, LONG));
    assert_eq!(store.get_message("C", 0, 0, 8).unwrap().messages.len(), 1);
    // Confirmed again once it is held.
    store
        .set_confirm_offset(store.max_physical_offset())
        .unwrap();
    assert!(
        store
            .lookup_message(later.physical_offset)
            .unwrap()
            .is_some()
    );
}

/// A handle shut down but not dropped still serves reads from its mappings: truncating
/// under it would change what it returns (records past the cut, or new bytes in their
/// place). Refused while it lives (after a grace of a few seconds for handles being
/// dropped), and the refusal changes nothing; one dropped during the grace lets the
/// truncation go on.
#[test]
fn truncation_waits_for_every_handle_of_the_store_to_be_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    let puts = fill(&store, 0, 200);
    let kept = store.lookup_message(puts[150].physical_offset).unwrap();
    store.shutdown().unwrap();
    let cut = puts[100].physical_offset;
    assert!(matches!(
        MessageStore::truncate_log(&cfg(dir.path()), cut),
        Err(Error::StoreLocked { .. })
    ));
    assert!(
        !layout::abort_file(dir.path()).exists(),
        "still marked clean"
    );
    assert_eq!(
        store.lookup_message(puts[150].physical_offset).unwrap(),
        kept
    );
    // Dropped by another thread, before or while the truncation waits.
    let dropper = std::thread::spawn(move || drop(store));
    MessageStore::truncate_log(&cfg(dir.path()), cut).unwrap();
    dropper.join().unwrap();
    let store = MessageStore::open(cfg(dir.path())).unwrap();
    assert_eq!(store.max_physical_offset(), cut);
}

/// Under `read_confirmed_only` a reopened store's queues hold entries its confirm offset
/// (0 until the broker sets it) does not cover yet: `queue_entries` serves none of them,
/// as `get_message` does not.
#[test]
fn queue_entries_stop_at_the_confirm_offset() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_c = || cfg(dir.path()).read_confirmed_only(true);
    let store = MessageStore::open(cfg_c()).unwrap();
    let put = store.put_message(&message("C", 0, "c", 0)).unwrap();
    store.set_confirm_offset(put.end_offset()).unwrap();
    assert!(store.wait_dispatched_to(put.end_offset(), LONG));
    assert_eq!(store.queue_entries("C", 0, 0, 8).unwrap().len(), 1);
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(cfg_c()).unwrap();
    assert_eq!(store.max_offset_in_queue("C", 0), 1);
    assert!(store.queue_entries("C", 0, 0, 8).unwrap().is_empty());
    assert!(store.get_message("C", 0, 0, 8).unwrap().messages.is_empty());
    store.set_confirm_offset(put.end_offset()).unwrap();
    let entries = store.queue_entries("C", 0, 0, 8).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].physical_offset, put.physical_offset);
}

/// Records that would leave fewer bytes in the file than a blank record takes are
/// refused: no writer leaves such a tail, and the next put could not close the file.
#[test]
fn records_leaving_a_tail_too_short_for_a_blank_are_refused() {
    use rocketstore::format;
    let dir = tempfile::tempdir().unwrap();
    let follower = MessageStore::open(cfg(dir.path())).unwrap();
    let host = follower.config().store_host;
    let sized = |body_len: usize| {
        let msg = rocketstore::Message::new("T", 0u32, bytes::Bytes::from(vec![7u8; body_len]));
        format::encoded_len(&msg, &host, usize::MAX).unwrap()
    };
    let size = follower.config().commit_log_file_size as usize;
    for left in [1, format::BLANK_RECORD_LEN - 1] {
        let body_len = size - left - sized(0);
        let msg = rocketstore::Message::new("T", 0u32, bytes::Bytes::from(vec![7u8; body_len]));
        let mut record = format::encode(&msg, &host, usize::MAX).unwrap();
        assert_eq!(record.len(), size - left);
        record.assign(0, 0, 1_700_000_000_000);
        let refused = follower.append_log(0, record.as_bytes());
        assert!(
            matches!(refused, Err(Error::Corrupted { .. })),
            "{refused:?}"
        );
        assert_eq!(follower.max_physical_offset(), 0, "nothing was published");
    }
    // The store goes on: a put, and then records that leave room for the blank.
    let put = follower.put_message(&message("T", 0, "t", 0)).unwrap();
    assert_eq!(put.physical_offset, 0);
}
