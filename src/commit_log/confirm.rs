//! The confirm offset of a replicated log: the offset below which records are replicated
//! to enough replicas, and the puts waiting for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Waker;

use parking_lot::Mutex;

use crate::commit_log::wake::wake_all;

/// The confirm offset and who waits for it.
pub(crate) struct Confirm {
    offset: AtomicU64,
    limits_readers: bool,
    closed: AtomicBool,
    /// `(end, waiter id, waker)` of puts waiting for the confirm offset to reach `end`.
    waiters: Mutex<Vec<(u64, u64, Waker)>>,
    next_id: AtomicU64,
}

impl Confirm {
    pub(crate) fn new(limits_readers: bool) -> Confirm {
        Confirm {
            offset: AtomicU64::new(0),
            limits_readers,
            closed: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    pub(crate) fn limits_readers(&self) -> bool {
        self.limits_readers
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset.load(Ordering::Acquire)
    }

    /// Moves the offset (back too) and wakes the waiters it passed.
    pub(crate) fn set(&self, offset: u64) {
        self.offset.store(offset, Ordering::SeqCst);
        let woken: Vec<_> = {
            let mut waiters = self.waiters.lock();
            waiters
                .extract_if(.., |(end, _, _)| *end <= offset)
                .collect()
        };
        wake_all(woken.into_iter().map(|(_, _, w)| w));
    }

    pub(crate) fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Waiter `id` waits for the offset to reach `end` (its waker replaced if it waits).
    pub(crate) fn register(&self, end: u64, id: u64, waker: &Waker) {
        let mut waiters = self.waiters.lock();
        match waiters.iter_mut().find(|(_, w, _)| *w == id) {
            Some(w) => w.2 = waker.clone(),
            None => waiters.push((end, id, waker.clone())),
        }
    }

    pub(crate) fn deregister(&self, id: u64) {
        self.waiters.lock().retain(|(_, w, _)| *w != id);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let woken: Vec<_> = std::mem::take(&mut *self.waiters.lock());
        wake_all(woken.into_iter().map(|(_, _, w)| w));
    }
}
