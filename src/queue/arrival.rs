//! Arrival notification for long polling (the registry; `long_poll` has the future): a consumer waits until its queue holds an
//! entry at some offset, and dispatch wakes it when it commits that entry (RocketMQ's
//! `MessageArrivingListener`), never by polling.
//!
//! Waiters are kept per queue, and a queue with waiters is flagged `watched`, so a dispatch
//! round looks at the registry only for queues someone waits on. A waiter on a queue that
//! does not exist yet is kept by name until dispatch creates the queue.
//!
//! No wake-up is lost: a waiter flags its queue and then reads the queue's end; dispatch
//! publishes the end and then reads the flag; a `SeqCst` fence on each side means at least
//! one of them sees the other.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::task::Waker;

use parking_lot::Mutex;

use crate::commit_log::wake::wake_all;
use crate::queue::consume_queue::ConsumeQueue;

struct Waiter {
    id: u64,
    offset: u64,
    waker: Waker,
}

enum Place {
    Queue(u64),
    Unborn(String, u32),
}

#[derive(Default)]
struct Registry {
    /// By queue (its key), for queues that exist.
    by_queue: HashMap<u64, (Arc<ConsumeQueue>, Vec<Waiter>)>,
    /// By name, for queues not created yet.
    unborn: HashMap<(String, u32), Vec<Waiter>>,
    /// Where each registered waiter is.
    places: HashMap<u64, Place>,
    /// Waiters whose queue was deleted: their wait ends (the consumer pulls again and
    /// finds the topic as it is now).
    released: std::collections::HashSet<u64>,
    /// Queues removed with their topic and not created again, with the end each had and
    /// when: a wait registered soon after the removal, at an offset the old queue had
    /// reached, came from a pull before it and ends at once, like the waits the removal
    /// released. Only soon after: a consumer that keeps waiting there later would spin.
    removed: HashMap<(String, u32), (u64, std::time::Instant)>,
    /// The store shut down (or dispatch ended): every wait ends, unsatisfied.
    closed: bool,
}

/// Most removed queues remembered; past it they are forgotten (a wait that raced their
/// removal then ends at its timeout instead of at once).
const REMOVED_KEPT: usize = 65_536;

/// How long after a queue's removal a wait on it past 0 still ends at once: far longer
/// than a pull takes to turn into a wait.
const REMOVED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Who waits for which queue.
#[derive(Default)]
pub(crate) struct Arrivals {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
}

/// What one registration found.
pub(crate) enum Registered {
    Arrived,
    Closed,
    Waiting,
}

impl Arrivals {
    /// Registers (or re-registers) waiter `id` for `topic`/`queue_id` passing `offset`,
    /// unless it has passed already.
    pub(crate) fn register(
        &self,
        lookup: &dyn Fn() -> Option<Arc<ConsumeQueue>>,
        id: u64,
        (topic, queue_id, offset): (&str, u32, u64),
        waker: &Waker,
    ) -> Registered {
        let mut reg = self.registry.lock();
        if reg.closed {
            return Registered::Closed;
        }
        if reg.released.remove(&id) {
            return Registered::Arrived;
        }
        remove(&mut reg, id);
        let waiter = Waiter {
            id,
            offset,
            waker: waker.clone(),
        };
        // A queue created from now on finds the waiter among the unborn (creation looks
        // after publishing the queue); one created before is found here.
        let Some(q) = lookup() else {
            let key = (topic.to_owned(), queue_id);
            if reg.removed.get(&key).is_some_and(|&(end, at)| {
                offset > 0 && offset <= end && at.elapsed() < REMOVED_GRACE
            }) {
                return Registered::Arrived;
            }
            reg.unborn.entry(key).or_default().push(waiter);
            reg.places
                .insert(id, Place::Unborn(topic.to_owned(), queue_id));
            return Registered::Waiting;
        };
        if q.max_offset() > offset {
            return Registered::Arrived;
        }
        let key = q.key();
        reg.by_queue
            .entry(key)
            .or_insert_with(|| (Arc::clone(&q), Vec::new()))
            .1
            .push(waiter);
        reg.places.insert(id, Place::Queue(key));
        q.watched.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if q.max_offset() > offset {
            remove(&mut reg, id);
            return Registered::Arrived;
        }
        Registered::Waiting
    }

    pub(crate) fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn deregister(&self, id: u64) {
        let mut reg = self.registry.lock();
        reg.released.remove(&id);
        remove(&mut reg, id);
    }

    /// A queue was just created: waiters that came before it now watch it.
    pub(crate) fn created(&self, topic: &str, queue_id: u32, q: &Arc<ConsumeQueue>) {
        let mut reg = self.registry.lock();
        if !reg.removed.is_empty() {
            reg.removed.remove(&(topic.to_owned(), queue_id));
        }
        if reg.unborn.is_empty() {
            return;
        }
        if let Some(waiters) = reg.unborn.remove(&(topic.to_owned(), queue_id)) {
            for w in &waiters {
                reg.places.insert(w.id, Place::Queue(q.key()));
            }
            reg.by_queue
                .entry(q.key())
                .or_insert_with(|| (Arc::clone(q), Vec::new()))
                .1
                .extend(waiters);
            q.watched.store(true, Ordering::SeqCst);
        }
    }

    /// Dispatch committed entries to `batch`: wakes every waiter whose offset its queue
    /// has now passed.
    ///
    /// Wakers run after the registry is unlocked: a waker that polls or drops its future
    /// on the spot re-enters the registry.
    pub(crate) fn committed(&self, batch: &[Arc<ConsumeQueue>]) {
        fence(Ordering::SeqCst);
        let mut woken = Vec::new();
        for q in batch {
            if !q.watched.load(Ordering::SeqCst) {
                continue;
            }
            let mut reg = self.registry.lock();
            let key = q.key();
            let Some((_, waiters)) = reg.by_queue.get_mut(&key) else {
                continue;
            };
            let end = q.max_offset();
            let arrived: Vec<Waiter> = waiters.extract_if(.., |w| end > w.offset).collect();
            if waiters.is_empty() {
                reg.by_queue.remove(&key);
                q.watched.store(false, Ordering::SeqCst);
            }
            for w in &arrived {
                reg.places.remove(&w.id);
            }
            woken.extend(arrived);
        }
        wake_all(woken.into_iter().map(|w| w.waker));
    }

    /// Queues were removed (their topic deleted): their waiters are woken and their waits
    /// end, as if a message had come: the consumer pulls again and finds the topic as it
    /// is now.
    pub(crate) fn dropped<'a>(
        &self,
        topic: &str,
        queues: impl Iterator<Item = (&'a u32, &'a Arc<ConsumeQueue>)>,
    ) {
        let mut woken = Vec::new();
        {
            let mut reg = self.registry.lock();
            let now = std::time::Instant::now();
            reg.removed
                .retain(|_, (_, at)| at.elapsed() < REMOVED_GRACE);
            for (&queue_id, q) in queues {
                if reg.removed.len() >= REMOVED_KEPT {
                    reg.removed.clear();
                }
                let end = q.max_offset();
                let key = (topic.to_owned(), queue_id);
                // Registered after the queue left the table and before this: kept by
                // name. Released by the rule `register` applies from now on.
                if let Some(unborn) = reg.unborn.get_mut(&key) {
                    let gone: Vec<Waiter> = unborn
                        .extract_if(.., |w| w.offset > 0 && w.offset <= end)
                        .collect();
                    if unborn.is_empty() {
                        reg.unborn.remove(&key);
                    }
                    for w in &gone {
                        reg.places.remove(&w.id);
                        reg.released.insert(w.id);
                    }
                    woken.extend(gone);
                }
                reg.removed.insert(key, (end, now));
                if let Some((_, waiters)) = reg.by_queue.remove(&q.key()) {
                    q.watched.store(false, Ordering::SeqCst);
                    for w in &waiters {
                        reg.places.remove(&w.id);
                        reg.released.insert(w.id);
                    }
                    woken.extend(waiters);
                }
            }
        }
        wake_all(woken.into_iter().map(|w| w.waker));
    }

    /// Ends every wait: the store is shutting down, or nothing will be dispatched any more.
    pub(crate) fn close(&self) {
        let mut woken = Vec::new();
        {
            let mut reg = self.registry.lock();
            reg.closed = true;
            reg.places.clear();
            for (q, waiters) in reg.by_queue.drain().map(|(_, v)| v) {
                q.watched.store(false, Ordering::SeqCst);
                woken.extend(waiters);
            }
            woken.extend(reg.unborn.drain().flat_map(|(_, v)| v));
        }
        wake_all(woken.into_iter().map(|w| w.waker));
    }
}

fn remove(reg: &mut Registry, id: u64) {
    match reg.places.remove(&id) {
        Some(Place::Queue(key)) => {
            if let Some((q, waiters)) = reg.by_queue.get_mut(&key) {
                waiters.retain(|w| w.id != id);
                if waiters.is_empty() {
                    q.watched.store(false, Ordering::SeqCst);
                    reg.by_queue.remove(&key);
                }
            }
        }
        Some(Place::Unborn(topic, queue_id)) => {
            let name = (topic, queue_id);
            if let Some(waiters) = reg.unborn.get_mut(&name) {
                waiters.retain(|w| w.id != id);
                if waiters.is_empty() {
                    reg.unborn.remove(&name);
                }
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;
    use crate::queue::consume_queue::QueueFiles;
    use crate::queue::entry::CqEntry;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A wait registered while the topic is being deleted (out of the table, its removal
    /// not yet recorded) is kept by name; the deletion must release it as it releases
    /// the waits on its queues, or it waits out its timeout (a future, for ever).
    #[test]
    fn a_wait_registered_during_a_deletion_is_released_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(QueueFiles::new(1000 * 20, None, 4));
        let q = Arc::new(ConsumeQueue::new(dir.path().join("T/0"), io));
        for i in 0..10 {
            let e = CqEntry {
                physical_offset: 100 * i,
                size: 100,
                tag_hash: 0,
            };
            q.put(i, e).unwrap();
        }
        q.commit().unwrap();
        let arrivals = Arrivals::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let (gone, past_end) = (arrivals.new_id(), arrivals.new_id());
        // The topic is already out of the table: the lookup finds nothing.
        for (id, offset) in [(gone, 5), (past_end, 11)] {
            let found = arrivals.register(&|| None, id, ("T", 0, offset), &waker);
            assert!(matches!(found, Registered::Waiting));
        }
        arrivals.dropped("T", [(&0u32, &q)].into_iter());
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the wait below the end was not woken"
        );
        let again = arrivals.register(&|| None, gone, ("T", 0, 5), &waker);
        assert!(matches!(again, Registered::Arrived));
        // A wait past the old end is for the topic's next queue: it goes on waiting.
        let other = arrivals.register(&|| None, past_end, ("T", 0, 11), &waker);
        assert!(matches!(other, Registered::Waiting));
    }
}
