//! Waking the tasks of the store's futures, on whatever store thread completes them.

use std::task::Waker;

/// Wakes the tasks of completed futures: put futures, replicated puts, long polls. Never
/// under a lock of ours (the flusher's state, say): a waker may poll its task at once,
/// and the task may put again (which takes that lock). One that panics is logged, so it
/// cannot stop a store thread.
pub(crate) fn wake_all(wakers: impl IntoIterator<Item = Waker>) {
    for w in wakers {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake())).is_err() {
            log::error!("a waker panicked (a future of this store: a put or a long poll)");
        }
    }
}
