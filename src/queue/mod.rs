//! Consume queues: the per topic/queue index of the commit log. `dispatch` builds them from
//! the log in order, `queues` owns the set (and the queue table), `consume_queue` one
//! queue's files, `read` serves `get_message` through them, and `arrival` and `long_poll`
//! wake consumers waiting for new entries.

pub(crate) mod arrival;
pub(crate) mod commit;
pub(crate) mod consume_queue;
pub(crate) mod deleted;
pub(crate) mod dispatch;
pub(crate) mod entry;
pub(crate) mod long_poll;
pub(crate) mod queues;
pub(crate) mod read;
