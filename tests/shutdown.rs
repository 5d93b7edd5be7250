//! Shutdown and background-thread failures: shutdown never deadlocks with readers waiting
//! for dispatch, concurrent shutdowns share one outcome, and a panicked flush or dispatch
//! thread poisons the store, surfaces on the next call and leaves the store not clean.
//!
//! A `recv_timeout` here only ever probes "has it returned yet?" or bounds a hang; no test
//! relies on a delay for its result when the store behaves.

mod common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use crossbeam_channel::{Receiver, Sender, unbounded};
use rocketstore::layout;
use rocketstore::{Error, IoHook, MessageStore};

/// Stalls a file operation (`before_create` or `before_allocate`) on the paths `stalls`
/// picks, until released.
struct Stall {
    on_allocate: bool,
    stalls: fn(&Path) -> bool,
    stalled: (Sender<()>, Receiver<()>),
    release: (Sender<()>, Receiver<()>),
}

impl Stall {
    fn new(on_allocate: bool, stalls: fn(&Path) -> bool) -> Arc<Stall> {
        Arc::new(Stall {
            on_allocate,
            stalls,
            stalled: unbounded(),
            release: unbounded(),
        })
    }

    fn maybe_stall(&self, path: &Path) -> io::Result<()> {
        if (self.stalls)(path) {
            let _ = self.stalled.0.send(());
            let _ = self.release.1.recv();
        }
        Ok(())
    }
}

impl IoHook for Stall {
    fn before_create(&self, path: &Path) -> io::Result<()> {
        match self.on_allocate {
            true => Ok(()),
            false => self.maybe_stall(path),
        }
    }
    fn before_allocate(&self, path: &Path) -> io::Result<()> {
        match self.on_allocate {
            true => self.maybe_stall(path),
            false => Ok(()),
        }
    }
}

#[test]
fn shutdown_does_not_deadlock_with_a_reader_waiting_for_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    // The creation of topic Stalled's consume-queue files.
    let hook = Stall::new(false, |path| {
        path.to_string_lossy()
            .contains(&format!("{}/Stalled/", layout::CONSUME_QUEUE_DIR))
    });
    let store = Arc::new(
        MessageStore::open(config(dir.path(), async_mode()).io_hook(hook.clone())).unwrap(),
    );
    let put = store.put_message(&message("Stalled", 0, "s", 0)).unwrap();
    hook.stalled.1.recv().unwrap();

    let (done_tx, done_rx) = unbounded();
    let s = Arc::clone(&store);
    let shutter = std::thread::spawn(move || {
        let r = s.shutdown();
        done_tx.send(()).unwrap();
        r
    });
    // A reader keeps waiting for the stalled record, round after round, while shutdown runs.
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (Arc::clone(&store), Arc::clone(&stop));
    let (round_tx, round_rx) = unbounded();
    let reader = std::thread::spawn(move || {
        while !st.load(Ordering::SeqCst) {
            s.wait_dispatched(put.physical_offset, Duration::from_millis(1));
            let _ = round_tx.send(());
        }
    });
    // Let the reader run some rounds while shutdown is under way, then release the stall.
    for _ in 0..20 {
        if round_rx.recv_timeout(Duration::from_millis(200)).is_err() {
            break;
        }
    }
    hook.release.0.send(()).unwrap();
    let finished = done_rx.recv_timeout(Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    assert!(finished.is_ok(), "shutdown deadlocked");
    shutter.join().unwrap().unwrap();
    reader.join().unwrap();
    assert!(!layout::abort_file(dir.path()).exists());
}

#[test]
fn shutdown_does_not_hold_the_put_lock_while_an_allocation_thread_finishes() {
    let dir = tempfile::tempdir().unwrap();
    // The allocation of every commit-log file after the first.
    let hook = Stall::new(true, |path| {
        let commit_log = path
            .parent()
            .is_some_and(|p| p.ends_with(layout::COMMIT_LOG_DIR));
        let first = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&layout::file_name(0)));
        commit_log && !first
    });
    // Files large enough that the puts below never roll (a roll would wait for the
    // stalled file, under the put lock, as it should).
    let store = Arc::new(
        MessageStore::open(
            config(dir.path(), async_mode())
                .commit_log_file_size(64 << 20)
                .io_hook(hook.clone()),
        )
        .unwrap(),
    );
    // The allocation thread is stuck preparing the next file (a slow fallocate).
    hook.stalled.1.recv().unwrap();
    let s = Arc::clone(&store);
    let shutter = std::thread::spawn(move || s.shutdown());
    // Puts go on until the shutdown refuses them: at once, not once the allocation
    // thread is done.
    let (tx, rx) = unbounded();
    let s = Arc::clone(&store);
    let putter = std::thread::spawn(move || {
        let mut i = 0;
        let refused = loop {
            match s.put_message(&message("P", 0, "p", i)) {
                Ok(_) => i += 1,
                Err(e) => break e,
            }
        };
        tx.send(matches!(refused, Error::ShutDown)).unwrap();
    });
    let refused = rx.recv_timeout(Duration::from_secs(10));
    hook.release.0.send(()).unwrap();
    assert_eq!(
        refused,
        Ok(true),
        "a put waited for the allocation thread behind the shutdown"
    );
    putter.join().unwrap();
    shutter.join().unwrap().unwrap();
}

#[test]
fn a_second_concurrent_shutdown_waits_for_the_first_and_shares_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let stall = StallSync::new(false);
    let store = Arc::new(
        MessageStore::open(
            config(dir.path(), async_mode_slow()).io_hook(stall.clone() as Arc<dyn IoHook>),
        )
        .unwrap(),
    );
    store.put_message(&message("S", 0, "s", 0)).unwrap();
    stall.arm();
    let s = Arc::clone(&store);
    let first = std::thread::spawn(move || s.shutdown());
    stall.wait_stalled(); // the first shutdown's last flush is stuck in the disk

    let (tx, rx) = unbounded();
    let (s, abort) = (Arc::clone(&store), layout::abort_file(dir.path()));
    let second = std::thread::spawn(move || {
        let r = s.shutdown();
        tx.send(abort.exists()).unwrap();
        r
    });
    // The second must not return while the first is still flushing.
    if let Ok(abort_still_there) = rx.recv_timeout(Duration::from_millis(300)) {
        panic!("second shutdown returned before the first finished (abort: {abort_still_there})");
    }
    stall.release();
    let abort_after = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(!abort_after, "returned before the store was marked clean");
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
}

fn async_mode_slow() -> rocketstore::FlushMode {
    rocketstore::FlushMode::Async {
        interval: Duration::from_secs(3600),
        least_pages: 1 << 20,
        thorough_interval: Duration::from_secs(3600),
    }
}

/// Panics in the first sync of a file whose path contains `part`.
struct PanicOn {
    part: &'static str,
    op: &'static str,
    fired: AtomicBool,
}

impl PanicOn {
    fn new(op: &'static str, part: &'static str) -> Arc<Self> {
        Arc::new(PanicOn {
            part,
            op,
            fired: AtomicBool::new(false),
        })
    }

    fn maybe(&self, op: &str, path: &Path) {
        if op == self.op
            && path.to_string_lossy().contains(self.part)
            && !self.fired.swap(true, Ordering::SeqCst)
        {
            panic!("injected panic in {op} of {}", path.display());
        }
    }
}

impl IoHook for PanicOn {
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        self.maybe("sync", path);
        Ok(())
    }
    fn before_create(&self, path: &Path) -> io::Result<()> {
        self.maybe("create", path);
        Ok(())
    }
}

#[test]
fn a_panicked_group_commit_thread_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let hook = PanicOn::new("sync", layout::COMMIT_LOG_DIR);
    let store = MessageStore::open(config(dir.path(), sync_mode()).io_hook(hook)).unwrap();
    // Without the fix this put waits for its whole 30 s timeout and then reports a timeout.
    let err = store.put_message(&message("P", 0, "p", 0)).unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(err.to_string().contains("panicked"), "{err}");
    let err = store.put_message(&message("P", 0, "p", 1)).unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    let fut = pollster::block_on(store.put_message_async(message("P", 0, "p", 2)));
    assert!(fut.is_err());
    assert!(store.shutdown().is_err());
    assert!(layout::abort_file(dir.path()).exists(), "marked clean");
}

#[test]
fn a_panicked_dispatch_thread_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let hook = PanicOn::new("create", layout::CONSUME_QUEUE_DIR);
    let store = MessageStore::open(config(dir.path(), sync_mode()).io_hook(hook)).unwrap();
    let put = store.put_message(&message("P", 0, "p", 0)).unwrap();
    // The reader learns at once that nothing will be indexed any more.
    assert!(!store.wait_dispatched(put.physical_offset, Duration::from_secs(30)));
    let err = store.put_message(&message("P", 0, "p", 1)).unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    let err = store.shutdown().unwrap_err();
    assert!(err.to_string().contains("dispatch"), "{err}");
    assert!(layout::abort_file(dir.path()).exists(), "marked clean");
    drop(store);
    // The next open recovers as after a crash: the acknowledged message is indexed.
    let store = open(dir.path(), sync_mode());
    let got = store.get_message("P", 0, 0, 10).unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].physical_offset, put.physical_offset);
}

/// A handle kept by request threads after its shutdown must not touch the files: another
/// open (in this process or another) owns them once the lock is released. A queue read at
/// first use is where a read used to change files (its load removes `.tmp` leftovers and
/// files past the queue's end).
#[test]
fn a_read_after_shutdown_changes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), sync_mode()).lazy_queue_load_threshold(0);
    {
        let store = MessageStore::open(cfg()).unwrap();
        store.put_message(&message("T", 0, "t", 0)).unwrap();
        // The last record's queue is read at open, to check it.
        store.put_message(&message("T", 1, "t", 1)).unwrap();
        store.shutdown().unwrap();
    }
    let store = MessageStore::open(cfg()).unwrap();
    store.shutdown().unwrap();
    // As if the next owner were creating the queue's next file.
    let queue = layout::queue_dir(dir.path(), "T", 0);
    let theirs = queue.join(format!("{}.tmp", layout::file_name(6_000_000)));
    std::fs::write(&theirs, b"the next owner's").unwrap();
    let read = store.get_message("T", 0, 0, 1);
    let _ = store.min_offset_in_queue("T", 0);
    assert!(theirs.exists(), "a read after shutdown removed a file");
    assert!(matches!(read, Err(Error::ShutDown)), "{read:?}");
}

/// A waker that runs caller code on whatever store thread wakes it: it drops the store
/// handle it holds (perhaps the last), or shuts the store down, and reports what it saw.
struct OnWake {
    store: std::sync::Mutex<Option<Arc<MessageStore>>>,
    shut_down: bool,
    done: Sender<(String, Option<rocketstore::Result<()>>)>,
}

impl std::task::Wake for OnWake {
    fn wake(self: Arc<Self>) {
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        let store = self.store.lock().unwrap().take();
        let outcome = match (self.shut_down, store) {
            (true, Some(store)) => Some(store.shutdown()),
            (_, store) => {
                drop(store);
                None
            }
        };
        let _ = self.done.send((thread, outcome));
    }
}

/// What [`held_put`] made.
struct Held {
    store: Arc<MessageStore>,
    hook: Arc<StallSync>,
    /// The put, pending; its waker holds a handle of the store.
    _future: std::pin::Pin<Box<rocketstore::PutFuture>>,
    /// What the waker saw, when it ran.
    woken: Receiver<(String, Option<rocketstore::Result<()>>)>,
}

/// Opens a sync store at `dir` whose syncs can be stalled, and puts one message whose
/// acknowledgement is held at a stalled sync (the flush thread stuck there), with an
/// [`OnWake`] waker holding a handle of the store (shutting it down if `shut_down`).
fn held_put(dir: &Path, shut_down: bool) -> Held {
    let hook = StallSync::new(false);
    let store =
        Arc::new(MessageStore::open(config(dir, sync_mode()).io_hook(hook.clone())).unwrap());
    store.put_message(&message("T", 0, "before", 0)).unwrap();
    hook.arm();
    let mut future = Box::pin(store.put_message_async(message("T", 0, "held", 1)));
    hook.wait_stalled();
    let (done, woken) = unbounded();
    let waker = std::task::Waker::from(Arc::new(OnWake {
        store: std::sync::Mutex::new(Some(Arc::clone(&store))),
        shut_down,
        done,
    }));
    let polled = future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    assert!(polled.is_pending());
    Held {
        store,
        hook,
        _future: future,
        woken,
    }
}

/// The last handle dropped on one of the store's own threads (a waker that polls its
/// task there, as some executors do): the shutdown cannot join that thread, so it runs on
/// a thread of its own, to the end: the store reopens clean. (It panicked on the join;
/// the store's lock went while its other threads ran on.)
#[test]
fn the_last_handle_dropped_on_a_store_thread_still_shuts_it_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // The future is kept (its drop would take the waker back).
    let Held {
        store,
        hook,
        woken,
        _future,
    } = held_put(dir.path(), false);
    drop(store);
    hook.release();
    let (thread, _) = woken
        .recv_timeout(Duration::from_secs(30))
        .expect("the flush wakes the put");
    assert!(thread.starts_with("rocketstore-"), "woken on {thread}");
    // The shutdown finishes on its own thread; until then the store is locked.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reopened = loop {
        match MessageStore::open(config(dir.path(), sync_mode())) {
            Err(Error::StoreLocked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => break other.expect("the store reopens"),
        }
    };
    assert!(reopened.stats().open.clean_exit, "the shutdown completed");
    assert_eq!(
        reopened.get_message("T", 0, 0, 10).unwrap().messages.len(),
        2
    );
}

/// A waker that calls `shutdown` on a store thread while another thread's shutdown is
/// joining that thread: it returns `ShutDown` at once instead of waiting for a lock the
/// other holds (a deadlock: that one waited for this thread to end).
#[test]
fn shutdown_called_on_a_store_thread_during_a_shutdown_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    // The future is kept (its drop would take the waker back).
    let Held {
        store,
        hook,
        woken,
        _future,
    } = held_put(dir.path(), true);
    let closing = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.shutdown())
    };
    // The shutdown has begun (and holds its outcome) once puts are refused. A probe that
    // is accepted waits at the stalled sync like the first; it is never polled again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut probes = Vec::new();
    loop {
        let mut probe = Box::pin(store.put_message_async(message("T", 1, "probe", 0)));
        let polled = probe
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        if matches!(polled, std::task::Poll::Ready(Err(Error::ShutDown))) {
            break;
        }
        probes.push(probe);
        assert!(std::time::Instant::now() < deadline, "the shutdown began");
        std::thread::yield_now();
    }
    hook.release();
    let Ok((thread, outcome)) = woken.recv_timeout(Duration::from_secs(30)) else {
        // Dropping the store would join the deadlocked threads: fail instead.
        std::mem::forget(store);
        panic!("the waker's shutdown never returned");
    };
    assert!(thread.starts_with("rocketstore-"), "woken on {thread}");
    assert!(matches!(outcome, Some(Err(Error::ShutDown))), "{outcome:?}");
    closing
        .join()
        .unwrap()
        .expect("the first shutdown is clean");
}

/// A replicated put waits for the confirm offset; the shutdown wakes it on the thread
/// that runs the shutdown. A waker that shuts the store down there (or drops what is
/// then the last handle) must not wait for the outcome that very thread is producing.
#[test]
fn a_waker_woken_by_the_shutdown_that_shuts_down_again_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MessageStore::open(config(dir.path(), async_mode())).unwrap());
    let mut pending = Box::pin(store.put_message_replicated(message("T", 0, "r", 0)));
    let (done, woken) = unbounded();
    let waker = std::task::Waker::from(Arc::new(OnWake {
        store: std::sync::Mutex::new(Some(Arc::clone(&store))),
        shut_down: true,
        done,
    }));
    let polled = pending
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    assert!(polled.is_pending(), "nothing confirms it");
    let closing = std::thread::spawn(move || store.shutdown());
    let Ok((_, outcome)) = woken.recv_timeout(Duration::from_secs(30)) else {
        panic!("the waker's shutdown never returned");
    };
    assert!(matches!(outcome, Some(Err(Error::ShutDown))), "{outcome:?}");
    closing.join().unwrap().expect("the shutdown is clean");
}
