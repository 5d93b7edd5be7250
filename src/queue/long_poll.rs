//! Long polling: the future (and the blocking wait) a consumer uses to wait until its
//! queue holds an entry at some offset, woken through `queue::arrival`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::queue::arrival::Registered;
use crate::queue::queues::ConsumeQueues;

/// Resolves when a queue holds an entry at a given offset, or its topic was deleted
/// (`true`: pull again), or when the store shuts down first (`false`). Returned by
/// [`MessageStore::message_arrival`](crate::MessageStore::message_arrival).
///
/// Runtime-agnostic: dispatch wakes it through its [`Waker`], so it works under any
/// executor. It has no timeout of its own; race it against your runtime's timer. Dropping
/// it cancels the wait.
#[must_use = "a future does nothing unless polled"]
pub struct MessageArrival {
    queues: Arc<ConsumeQueues>,
    topic: String,
    queue_id: u32,
    offset: u64,
    id: u64,
    registered: bool,
}

impl std::fmt::Debug for MessageArrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageArrival")
            .field("topic", &self.topic)
            .field("queue_id", &self.queue_id)
            .field("offset", &self.offset)
            .finish()
    }
}

impl MessageArrival {
    pub(crate) fn new(
        queues: Arc<ConsumeQueues>,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> MessageArrival {
        let id = queues.arrivals().new_id();
        MessageArrival {
            queues,
            topic: topic.to_owned(),
            queue_id,
            offset,
            id,
            registered: false,
        }
    }

    /// Blocks the calling thread until the future resolves or `timeout` passes (false).
    pub(crate) fn wait(mut self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(arrived) = Pin::new(&mut self).poll(&mut cx) {
                return arrived;
            }
            match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        // One last look: the entry may have come as the time ran out.
                        return self.queues.max_offset(&self.topic, self.queue_id) > self.offset;
                    }
                    std::thread::park_timeout(deadline - now);
                }
                None => std::thread::park(),
            }
        }
    }
}

impl Future for MessageArrival {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = &mut *self;
        let at = (this.topic.as_str(), this.queue_id, this.offset);
        let queues = &this.queues;
        let lookup = || queues.get(at.0, at.1);
        let registered = queues.arrivals().register(&lookup, this.id, at, cx.waker());
        this.registered = matches!(registered, Registered::Waiting);
        match registered {
            Registered::Arrived => Poll::Ready(true),
            Registered::Closed => Poll::Ready(false),
            Registered::Waiting => Poll::Pending,
        }
    }
}

impl Drop for MessageArrival {
    fn drop(&mut self) {
        if self.registered {
            self.queues.arrivals().deregister(self.id);
        }
    }
}

/// Wakes a thread blocked in [`MessageArrival::wait`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
