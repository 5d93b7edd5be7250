//! Arrival notification for long polling: `wait_for_message` and `message_arrival` are
//! woken by dispatch, and `wait_dispatched_to` waits for everything written so far.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, unbounded};
use rocketstore::{Message, MessageStore};

use common::{async_mode, config, message, sync_mode};

const LONG: Duration = Duration::from_secs(30);

/// A waker that reports each wake on a channel: a test can tell a wake from a poll.
struct ChannelWaker(Sender<()>);

impl Wake for ChannelWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.send(());
    }
}

fn channel_waker() -> (Waker, Receiver<()>) {
    let (tx, rx) = unbounded();
    (Waker::from(Arc::new(ChannelWaker(tx))), rx)
}

fn poll<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(waker))
}

#[test]
fn a_wait_ends_at_once_when_the_message_is_there_and_times_out_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    store.put_message(&message("T", 1, "a", 0)).unwrap();
    assert!(store.wait_for_message("T", 1, 0, LONG));
    assert!(!store.wait_for_message("T", 1, 1, Duration::from_millis(50)));
    assert!(!store.wait_for_message("Unknown", 0, 0, Duration::from_millis(50)));
}

#[test]
fn a_blocked_consumer_is_woken_by_the_put_of_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MessageStore::open(config(dir.path(), async_mode())).unwrap());
    // Queue 7 does not exist yet; other queues get messages first.
    let waiter = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.wait_for_message("T", 7, 2, LONG))
    };
    for i in 0..3 {
        store.put_message(&message("T", 0, "other", i)).unwrap();
        store.put_message(&message("T", 7, "mine", i)).unwrap();
    }
    assert!(waiter.join().unwrap());
    assert_eq!(store.get_message("T", 7, 2, 1).unwrap().messages.len(), 1);
}

#[test]
fn the_future_is_woken_by_dispatch_not_by_polling() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    store.put_message(&message("T", 0, "a", 0)).unwrap();
    assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    for (queue, offset) in [(0u32, 1u64), (5, 0)] {
        let (waker, woken) = channel_waker();
        let mut arrival = store.message_arrival("T", queue, offset);
        assert_eq!(poll(&mut arrival, &waker), Poll::Pending);
        // Another queue's message does not complete it.
        store
            .put_message(&message("Other", 0, "x", offset))
            .unwrap();
        assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
        assert_eq!(poll(&mut arrival, &waker), Poll::Pending);
        while woken.try_recv().is_ok() {}
        store
            .put_message(&message("T", queue, "b", offset))
            .unwrap();
        woken.recv_timeout(LONG).expect("dispatch wakes the future");
        assert_eq!(poll(&mut arrival, &waker), Poll::Ready(true));
    }
}

#[test]
fn shutdown_ends_every_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MessageStore::open(config(dir.path(), sync_mode())).unwrap());
    let (waker, woken) = channel_waker();
    let mut known = store.message_arrival("T", 0, 0);
    let mut unknown = store.message_arrival("Nobody", 9, 100);
    store.put_message(&message("T", 1, "a", 0)).unwrap();
    assert_eq!(poll(&mut known, &waker), Poll::Pending);
    assert_eq!(poll(&mut unknown, &waker), Poll::Pending);
    let blocked = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.wait_for_message("T", 0, 0, Duration::MAX))
    };
    store.shutdown().unwrap();
    woken
        .recv_timeout(LONG)
        .expect("shutdown wakes the futures");
    assert_eq!(poll(&mut known, &waker), Poll::Ready(false));
    assert_eq!(poll(&mut unknown, &waker), Poll::Ready(false));
    assert!(!blocked.join().unwrap(), "a blocked wait ends at shutdown");
    assert!(!store.wait_for_message("T", 0, 0, LONG));
}

#[test]
fn no_wake_up_is_lost_when_the_put_races_the_registration() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MessageStore::open(config(dir.path(), async_mode())).unwrap());
    let rounds = 300u64;
    let producer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            for i in 0..rounds {
                store
                    .put_message(&message("Race", (i % 3) as u32, "r", i))
                    .unwrap();
            }
        })
    };
    // Polled by hand: a lost wake-up shows as a waker never called (a blocking wait would
    // still end, by its last look at the deadline).
    for i in 0..rounds {
        let (queue, offset) = ((i % 3) as u32, i / 3);
        let (waker, woken) = channel_waker();
        let mut arrival = store.message_arrival("Race", queue, offset);
        while poll(&mut arrival, &waker) == Poll::Pending {
            woken
                .recv_timeout(LONG)
                .unwrap_or_else(|_| panic!("message {i} was put but its waiter was never woken"));
        }
    }
    producer.join().unwrap();
}

#[test]
fn waiting_for_the_logs_end_means_everything_written_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), async_mode())).unwrap();
    for i in 0..50 {
        store
            .put_message(&Message::new("T", (i % 4) as u32, &b"x"[..]))
            .unwrap();
    }
    let end = store.max_physical_offset();
    assert!(store.wait_dispatched_to(end, LONG));
    assert!(store.dispatched_physical_offset() >= end);
    for q in 0..4 {
        assert_eq!(store.max_offset_in_queue("T", q), 13 - u64::from(q >= 2));
    }
    // The per-record wait needs a record starting at its offset: at the end there is none.
    assert!(!store.wait_dispatched(end, Duration::from_millis(50)));
}

/// A waker that panics, as a broken executor's might.
struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("a broken waker");
    }
}

/// A long poll's waker runs on the dispatch thread: one that panics is logged and must
/// not stop dispatch (which would poison the store and refuse every later put), nor abort
/// the process when the store then shuts down and wakes the others.
#[test]
fn a_panicking_long_poll_waker_does_not_stop_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path(), sync_mode())).unwrap();
    let waker = Waker::from(Arc::new(PanickingWaker));
    let mut first = store.message_arrival("T", 0, 0);
    let mut second = store.message_arrival("T", 1, 0);
    assert_eq!(poll(&mut first, &waker), Poll::Pending);
    assert_eq!(poll(&mut second, &waker), Poll::Pending);
    store.put_message(&message("T", 0, "a", 0)).unwrap();
    assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    assert!(poll(&mut first, &waker).is_ready());
    // Dispatch goes on: the next put is accepted and indexed.
    store.put_message(&message("T", 0, "a", 1)).unwrap();
    assert!(store.wait_dispatched_to(store.max_physical_offset(), LONG));
    assert_eq!(store.get_message("T", 0, 0, 10).unwrap().messages.len(), 2);
    // The shutdown wakes the other wait with the same waker, and is clean.
    store.shutdown().unwrap();
}
