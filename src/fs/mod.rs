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
// The one module where `unsafe` compiles: mapping files (and, in `mapped_file::words`,
// mapping them as shared atomic words).
#[allow(unsafe_code)]
pub(crate) mod mapped_file;
pub(crate) mod ops;
pub(crate) mod sparse_file;
