//! Committing a large batch of consume queues on two threads.
//!
//! A queue's entries and files are its own, so queues commit independently. What costs is
//! kernel time: opening a queue's file again (the descriptor cache holds 256), and for a
//! new queue a `mkdir` and an `open` that creates its first file. The `mkdir`s of one
//! topic serialise on the topic's directory lock, on which a second thread making them
//! too only spins (5.6% of all CPU at 100,000 new queues, measured with perf). So one
//! thread makes the new queues' directories, in order, while this one commits from the
//! front of the batch (new queues first, right behind it); once the directories are made
//! the other thread commits from the back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::Error;
use crate::queue::consume_queue::ConsumeQueue;

/// What a commit left undone: the queues still pending (each keeps its `in_batch` mark)
/// and the failure that stopped it.
pub(crate) struct Left {
    pub(crate) queues: Vec<Arc<ConsumeQueue>>,
    pub(crate) error: Option<Error>,
}

/// Commits `batch` on this thread; stops at the first failure.
pub(crate) fn commit_each(batch: &[Arc<ConsumeQueue>]) -> Left {
    for (i, q) in batch.iter().enumerate() {
        if let Err(e) = q.commit() {
            return Left {
                queues: batch[i..].to_vec(),
                error: Some(e),
            };
        }
        q.in_batch.store(false, Ordering::Release);
    }
    Left {
        queues: Vec::new(),
        error: None,
    }
}

/// Commits `batch` on this thread and a second one (see the module doc). After a
/// failure neither thread takes another queue.
pub(crate) fn commit_split(batch: &[Arc<ConsumeQueue>]) -> Left {
    let (new, old): (Vec<_>, Vec<_>) = batch.iter().partition(|q| q.has_no_file());
    let order: Vec<&Arc<ConsumeQueue>> = new.iter().chain(old.iter()).copied().collect();
    // Not yet taken: `order[front..back]`.
    let range = Mutex::new((0, order.len()));
    let stop = AtomicBool::new(false);
    let failed: Mutex<Vec<(usize, Error)>> = Mutex::new(Vec::new());
    let work = |from_front: bool| {
        while !stop.load(Ordering::Acquire) {
            let i = {
                let mut r = range.lock();
                if r.0 >= r.1 {
                    break;
                }
                match from_front {
                    true => {
                        r.0 += 1;
                        r.0 - 1
                    }
                    false => {
                        r.1 -= 1;
                        r.1
                    }
                }
            };
            let q = order[i];
            match q.commit() {
                Ok(()) => q.in_batch.store(false, Ordering::Release),
                Err(e) => {
                    failed.lock().push((i, e));
                    stop.store(true, Ordering::Release);
                }
            }
        }
    };
    std::thread::scope(|s| {
        // Without a second thread (a process limit) this one does it all, and makes each
        // directory with its file.
        let other = std::thread::Builder::new()
            .name("rocketstore-queue-commit".into())
            .spawn_scoped(s, || {
                for q in &new {
                    // A failure is left to the commit of that queue, which meets it again.
                    if stop.load(Ordering::Acquire) || q.make_dir().is_err() {
                        break;
                    }
                }
                work(false);
            });
        work(true);
        if let Ok(other) = other
            && let Err(panic) = other.join()
        {
            std::panic::resume_unwind(panic);
        }
    });
    let (front, back) = *range.lock();
    let mut failed = failed.into_inner();
    let mut left: Vec<_> = order[front..back].iter().map(|q| Arc::clone(q)).collect();
    left.extend(failed.iter().map(|(i, _)| Arc::clone(order[*i])));
    // A full disk is retried; any other failure must not hide behind it.
    failed.sort_by_key(|(_, e)| e.is_no_space());
    let mut errors = failed.into_iter().map(|(_, e)| e);
    let error = errors.next();
    for e in errors {
        log::error!("committing consume queues: {e}");
    }
    Left {
        queues: left,
        error,
    }
}
