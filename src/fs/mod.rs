//! Files on disk: memory-mapped files and the queue of them, their allocation and warm-up,
//! sparse files written by position (the consume queues'), files mapped as shared atomic
//! words (the key index's),
//! the store lock and abort marker, free-space checks, and the `IoHook` fault seam the
//! durable steps of the commit log and the consume queues consult (the key index's files
//! and the small control files do not). Nothing here knows what a record or a queue is.

pub(crate) mod allocate;
pub(crate) mod disk;
pub(crate) mod file_queue;
pub(crate) mod io_hook;
pub(crate) mod lock;
#[allow(unsafe_code)]
pub(crate) mod mapped_file;
#[allow(unsafe_code)]
pub(crate) mod mapped_words;
pub(crate) mod ops;
pub(crate) mod sparse_file;
