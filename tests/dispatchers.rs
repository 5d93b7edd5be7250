//! A broker's own dispatchers: every record in log order, durable progress replayed from
//! after a restart, a slow or failing one never holding up the consume queues.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use rocketstore::format::RecordView;
use rocketstore::{Dispatch, DispatchError, Error, MessageStore};

use common::{config, message, sync_mode};

const LONG: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Seen {
    starts: Vec<u64>,
    offsets: Vec<u64>,
    flushes: usize,
}

/// Records what it is given; optionally blocks on a gate before each record, or fails a
/// number of times first.
struct Recorder {
    name: &'static str,
    seen: Arc<Mutex<Seen>>,
    gate: Option<(Sender<()>, Receiver<()>)>,
    fail_first: usize,
}

impl Recorder {
    fn new(name: &'static str) -> (Recorder, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let r = Recorder {
            name,
            seen: Arc::clone(&seen),
            gate: None,
            fail_first: 0,
        };
        (r, seen)
    }
}

impl Dispatch for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn start(&mut self, from: u64) -> Result<(), DispatchError> {
        self.seen.lock().unwrap().starts.push(from);
        Ok(())
    }

    fn dispatch(&mut self, record: &RecordView<'_>) -> Result<(), DispatchError> {
        if let Some((entered, go)) = &self.gate {
            entered.send(()).unwrap();
            go.recv().unwrap();
        }
        if self.fail_first > 0 {
            self.fail_first -= 1;
            return Err("not now".into());
        }
        let mut seen = self.seen.lock().unwrap();
        // A retried round may hand a record again; keep each once, in order.
        if seen
            .offsets
            .last()
            .is_none_or(|&o| o < record.physical_offset)
        {
            seen.offsets.push(record.physical_offset);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DispatchError> {
        self.seen.lock().unwrap().flushes += 1;
        Ok(())
    }
}

/// The test's end of a gated [`Recorder`]: the dispatcher announces each record on
/// `entered` and waits for a send on `go`.
struct Gate {
    entered: Receiver<()>,
    go: Sender<()>,
}

impl Recorder {
    fn gated(name: &'static str) -> (Recorder, Arc<Mutex<Seen>>, Gate) {
        let (mut rec, seen) = Recorder::new(name);
        let (entered_tx, entered) = bounded(0);
        let (go, go_rx) = bounded(0);
        rec.gate = Some((entered_tx, go_rx));
        (rec, seen, Gate { entered, go })
    }
}

impl Gate {
    /// Waits until the dispatcher holds a record.
    fn held(&self) {
        self.entered.recv_timeout(LONG).unwrap();
    }

    /// Lets every record through, from a thread of its own.
    fn release(self) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || while self.go.send(()).is_ok() && self.entered.recv().is_ok() {})
    }
}

#[test]
fn a_dispatcher_sees_every_record_in_order_and_resumes_after_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, seen) = Recorder::new("audit");
    let store =
        MessageStore::open_with(config(dir.path(), sync_mode()), vec![Box::new(rec)]).unwrap();
    let mut offsets = Vec::new();
    for i in 0..200 {
        offsets.push(
            store
                .put_message(&message("T", (i % 3) as u32, "d", i))
                .unwrap()
                .physical_offset,
        );
    }
    let end = store.max_physical_offset();
    assert!(store.wait_dispatcher("audit", end, LONG));
    assert_eq!(seen.lock().unwrap().offsets, offsets);
    store.shutdown().unwrap();
    drop(store);
    assert!(seen.lock().unwrap().flushes >= 1);
    assert_eq!(seen.lock().unwrap().starts, [0]);

    // Reopened: it resumes where its progress was recorded (the end, after a clean
    // shutdown), and sees only what comes next.
    let (rec, seen) = Recorder::new("audit");
    let store =
        MessageStore::open_with(config(dir.path(), sync_mode()), vec![Box::new(rec)]).unwrap();
    assert_eq!(seen.lock().unwrap().starts, [end]);
    let next = store.put_message(&message("T", 0, "d", 1000)).unwrap();
    assert!(store.wait_dispatcher("audit", store.max_physical_offset(), LONG));
    assert_eq!(seen.lock().unwrap().offsets, [next.physical_offset]);
    let stats = store.stats();
    let audit = stats
        .dispatchers
        .iter()
        .find(|d| d.name == "audit")
        .unwrap();
    assert_eq!(audit.lag_bytes, 0);
    assert_eq!(audit.dispatched_offset, store.max_physical_offset());
}

#[test]
fn a_slow_dispatcher_does_not_hold_up_the_consume_queues() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, seen, gate) = Recorder::gated("slow");
    let store =
        MessageStore::open_with(config(dir.path(), sync_mode()), vec![Box::new(rec)]).unwrap();
    // Bound after the store, so dropped before it when a check fails: the gate then
    // fails the blocked dispatcher instead of holding the store's shutdown for ever.
    let gate = gate;
    let first = store.put_message(&message("T", 0, "s", 0)).unwrap();
    gate.held(); // the dispatcher holds the first record
    for i in 1..50 {
        store.put_message(&message("T", 0, "s", i)).unwrap();
    }
    // The consume queues and the key index have everything; the slow one lags.
    assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    assert!(store.wait_dispatcher("index", store.max_physical_offset(), LONG));
    assert_eq!(
        store.get_message("T", 0, 0, 100).unwrap().messages.len(),
        50
    );
    let slow = store
        .stats()
        .dispatchers
        .into_iter()
        .find(|d| d.name == "slow")
        .unwrap();
    assert!(slow.lag_bytes > 0);
    assert!(seen.lock().unwrap().offsets.is_empty());
    // Let it go: it catches up.
    let releaser = gate.release();
    assert!(store.wait_dispatcher("slow", store.max_physical_offset(), LONG));
    store.shutdown().unwrap();
    drop(store);
    releaser.join().unwrap();
    assert_eq!(
        seen.lock().unwrap().offsets.first(),
        Some(&first.physical_offset)
    );
    assert_eq!(seen.lock().unwrap().offsets.len(), 50);
}

#[test]
fn retention_never_deletes_records_a_lagging_dispatcher_has_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, seen, gate) = Recorder::gated("slow");
    let store = MessageStore::open_with(
        config(dir.path(), sync_mode()).file_reserved_time(Duration::ZERO),
        vec![Box::new(rec)],
    )
    .unwrap();
    let gate = gate; // dropped before the store if a check fails (see above)
    let mut offsets = Vec::new();
    offsets.push(
        store
            .put_message(&message("T", 0, "s", 0))
            .unwrap()
            .physical_offset,
    );
    gate.held(); // the dispatcher holds the first record
    // Three files' worth: every file but the last is old enough to go.
    let mut i = 1;
    while store.max_physical_offset() < 3 * common::SMALL_FILE {
        offsets.push(
            store
                .put_message(&message("T", 0, "s", i))
                .unwrap()
                .physical_offset,
        );
        i += 1;
    }
    assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    assert!(store.wait_dispatcher("index", store.max_physical_offset(), LONG));
    assert_eq!(
        store.delete_expired_files().unwrap(),
        0,
        "the slow one has seen none"
    );
    assert_eq!(store.min_physical_offset(), 0);
    let releaser = gate.release();
    assert!(store.wait_dispatcher("slow", store.max_physical_offset(), LONG));
    // Seen by all, and recorded: now the old files go.
    assert!(store.wait_dispatcher_durable("slow", store.max_physical_offset(), LONG));
    assert!(store.delete_expired_files().unwrap() >= 2);
    store.shutdown().unwrap();
    drop(store);
    releaser.join().unwrap();
    assert_eq!(seen.lock().unwrap().offsets, offsets);
}

/// After a crash a dispatcher is given again every record past its recorded progress:
/// retention must not delete records it has seen but not yet recorded.
#[test]
fn retention_keeps_records_a_dispatcher_has_seen_but_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, _seen) = Recorder::new("rec");
    let store = MessageStore::open_with(
        config(dir.path(), sync_mode())
            .file_reserved_time(Duration::ZERO)
            // Its progress is recorded only at shutdown.
            .consume_queue_flush_interval(Duration::from_secs(3600)),
        vec![Box::new(rec)],
    )
    .unwrap();
    let mut i = 0;
    while store.max_physical_offset() < 3 * common::SMALL_FILE {
        store.put_message(&message("T", 0, "s", i)).unwrap();
        i += 1;
    }
    let end = store.max_physical_offset();
    assert!(store.wait_dispatched_to(end, LONG));
    assert!(store.wait_dispatcher("index", end, LONG));
    assert!(store.wait_dispatcher("rec", end, LONG));
    assert_eq!(store.delete_expired_files().unwrap(), 0);
    assert_eq!(store.min_physical_offset(), 0);
    store.shutdown().unwrap();
}

#[test]
fn under_disk_pressure_retention_does_not_wait_for_a_stuck_dispatcher() {
    // A dispatcher stuck for good must not keep the disk full and every put refused:
    // above the clean ratio only the consume queues hold the log.
    let dir = tempfile::tempdir().unwrap();
    let (rec, seen, gate) = Recorder::gated("stuck");
    let store = MessageStore::open_with(
        config(dir.path(), sync_mode())
            .file_reserved_time(Duration::ZERO)
            .disk_clean_ratios(0.0, 1.0)
            .disk_check_interval(Duration::from_millis(10)),
        vec![Box::new(rec)],
    )
    .unwrap();
    let gate = gate; // dropped before the store if a check fails (see above)
    store.put_message(&message("T", 0, "s", 0)).unwrap();
    gate.held();
    let mut i = 1;
    while store.max_physical_offset() < 3 * common::SMALL_FILE {
        store.put_message(&message("T", 0, "s", i)).unwrap();
        i += 1;
    }
    let deadline = std::time::Instant::now() + LONG;
    while store.min_physical_offset() == 0 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    let start = store.min_physical_offset();
    let releaser = gate.release();
    assert!(start > 0, "retention waited for the stuck dispatcher");
    assert!(store.wait_dispatcher("stuck", store.max_physical_offset(), LONG));
    store.shutdown().unwrap();
    drop(store);
    releaser.join().unwrap();
    // It saw its first record (held when retention ran), then went on from the log's
    // new start: the records between were deleted unseen, and it was told (logged).
    let offsets = seen.lock().unwrap().offsets.clone();
    assert_eq!(offsets[0], 0);
    assert!(offsets[1] >= start, "{} < {start}", offsets[1]);
}

#[test]
fn a_failing_dispatcher_is_counted_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rec, seen) = Recorder::new("flaky");
    rec.fail_first = 3;
    let store =
        MessageStore::open_with(config(dir.path(), sync_mode()), vec![Box::new(rec)]).unwrap();
    for i in 0..10 {
        store.put_message(&message("T", 0, "f", i)).unwrap();
    }
    assert!(store.wait_dispatcher("flaky", store.max_physical_offset(), LONG));
    assert_eq!(seen.lock().unwrap().offsets.len(), 10);
    let flaky = store
        .stats()
        .dispatchers
        .into_iter()
        .find(|d| d.name == "flaky")
        .unwrap();
    assert_eq!(flaky.failures, 3);
    assert_eq!(
        flaky.error, None,
        "the error is cleared once a round succeeds"
    );
}

/// Puts messages `range` to T/0; returns where each was stored.
fn put_to_queue_0(store: &MessageStore, range: std::ops::Range<u64>) -> Vec<u64> {
    range
        .map(|i| {
            store
                .put_message(&message("T", 0, "d", i))
                .unwrap()
                .physical_offset
        })
        .collect()
}

/// A crash cut the log below a dispatcher's progress, and the next run was opened without
/// that dispatcher. That run's open still takes its progress back to the log: when the
/// dispatcher returns it resumes at the cut, is told so, and sees every record written
/// since, instead of resuming at its old point, past records it never saw.
#[test]
fn a_dispatcher_left_out_of_the_run_after_a_cut_resumes_at_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, seen) = Recorder::new("audit");
    let store =
        MessageStore::open_with(config(dir.path(), sync_mode()), vec![Box::new(rec)]).unwrap();
    let offsets = put_to_queue_0(&store, 0..40);
    assert!(store.wait_dispatcher("audit", store.max_physical_offset(), LONG));
    store.shutdown().unwrap();
    drop(store);
    assert_eq!(seen.lock().unwrap().offsets, offsets);
    let cut = offsets[30];
    common::tear_log_at(dir.path(), cut);

    // Without the dispatcher.
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    assert_eq!(store.max_physical_offset(), cut);
    let later = put_to_queue_0(&store, 100..120);
    store.shutdown().unwrap();
    drop(store);

    let (rec, seen) = Recorder::new("audit");
    let store =
        MessageStore::open_with(config(dir.path(), sync_mode()), vec![Box::new(rec)]).unwrap();
    assert!(store.wait_dispatcher("audit", store.max_physical_offset(), LONG));
    assert_eq!(seen.lock().unwrap().starts, [cut]);
    assert_eq!(seen.lock().unwrap().offsets, later);
}

#[test]
fn dispatcher_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for names in [vec!["index"], vec!["a", "a"], vec!["../x"], vec![""]] {
        let ds: Vec<Box<dyn Dispatch>> = names
            .iter()
            .map(|n| Box::new(Recorder::new(n).0) as Box<dyn Dispatch>)
            .collect();
        let e = MessageStore::open_with(config(dir.path(), sync_mode()), ds);
        assert!(matches!(e, Err(Error::InvalidConfig { .. })), "{names:?}");
    }
}

/// Rewrites the progress file at `path` so that its winning slot says `offset`: the
/// newest valid slot's fields with the offset changed, a higher sequence number and a
/// matching CRC (FORMAT.md, "Dispatcher progress"), as no run would write it.
fn forge_progress(path: &std::path::Path, offset: u64) {
    let mut file = std::fs::read(path).unwrap();
    let slot = [0usize, 4096]
        .into_iter()
        .filter(|&at| file.len() >= at + 44)
        .filter(|&at| crc32fast::hash(&file[at..at + 40]).to_be_bytes() == file[at + 40..at + 44])
        .max_by_key(|&at| u64::from_be_bytes(file[at..at + 8].try_into().unwrap()))
        .expect("a valid slot");
    let mut fields = file[slot..slot + 40].to_vec();
    let seq = u64::from_be_bytes(fields[..8].try_into().unwrap());
    fields[..8].copy_from_slice(&(seq + 1).to_be_bytes());
    fields[8..16].copy_from_slice(&offset.to_be_bytes());
    let other = if slot == 0 { 4096 } else { 0 };
    file.resize(file.len().max(other + 44), 0);
    file[other..other + 40].copy_from_slice(&fields);
    let crc = crc32fast::hash(&fields).to_be_bytes();
    file[other + 40..other + 44].copy_from_slice(&crc);
    std::fs::write(path, file).unwrap();
}

/// A progress inside a record, which no run writes: a broker's dispatcher cannot be told
/// what to forget, so the open refuses it; the key index takes it as absent and rebuilds.
#[test]
fn a_progress_inside_a_record_is_refused_or_rebuilt_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (rec, _) = Recorder::new("audit");
    let store =
        MessageStore::open_with(config(dir.path(), sync_mode()), vec![Box::new(rec)]).unwrap();
    let offsets = put_to_queue_0(&store, 0..20);
    let end = store.max_physical_offset();
    assert!(store.wait_dispatcher("audit", end, LONG));
    assert!(store.wait_dispatcher("index", end, LONG));
    store.shutdown().unwrap();
    drop(store);
    for name in ["audit", "index"] {
        let path = rocketstore::layout::dispatch_progress_file(dir.path(), name);
        let good = std::fs::read(&path).unwrap();
        // A record's start is taken; one byte past it is not.
        for (at, inside) in [(offsets[7], false), (offsets[7] + 1, true)] {
            forge_progress(&path, at);
            let (rec, seen) = Recorder::new("audit");
            let opened =
                MessageStore::open_with(config(dir.path(), sync_mode()), vec![Box::new(rec)]);
            match opened {
                Err(Error::BadStoreFile { path: named, .. }) if inside && name == "audit" => {
                    assert_eq!(named, path)
                }
                Ok(store) if !inside || name == "index" => {
                    if name == "audit" {
                        assert_eq!(seen.lock().unwrap().starts, [at]);
                    }
                    assert!(store.wait_dispatcher("index", end, LONG));
                    for i in [0, 7, 19] {
                        let found = store.query_message("T", &format!("k{i}"), 4, 0, i64::MAX);
                        assert_eq!(found.unwrap().messages.len(), 1, "{name} at {at}: key k{i}");
                    }
                    store.shutdown().unwrap();
                }
                other => panic!("{name} at {at}: {:?}", other.map(|_| ())),
            }
            std::fs::write(&path, &good).unwrap();
        }
    }
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    assert_eq!(store.max_physical_offset(), end);
    assert_eq!(store.get_message("T", 0, 0, 64).unwrap().messages.len(), 20);
}
