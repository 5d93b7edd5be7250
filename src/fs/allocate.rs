//! The allocation thread: creates and warms the next commit-log file before the writer
//! needs it, so rolling to a new file never waits on fallocate or page faults.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::mapped_file::MappedFile;
use crate::fs::mapped_file::Warmup;
use crate::fs::ops;

/// Hands out new files; owned by the append state, so only the writer talks to it.
pub(crate) struct Allocator {
    dir: PathBuf,
    file_size: usize,
    hook: Option<Arc<dyn IoHook>>,
    worker: Option<Worker>,
    /// Offset of the file the worker is preparing, if any.
    pending: Option<u64>,
    /// A file already prepared (left unused by the last run), handed out before any other.
    spare: Option<MappedFile>,
    /// Tells the worker to cut a warm-up short: shutdown should not wait for it.
    stop: Arc<AtomicBool>,
}

struct Worker {
    requests: Sender<u64>,
    ready: Receiver<Result<MappedFile>>,
    thread: JoinHandle<()>,
}

impl Allocator {
    /// With `background`, a thread prepares files ahead with `warmup`; without, files are
    /// created on demand with no warm-up.
    pub(crate) fn new(
        dir: PathBuf,
        file_size: usize,
        hook: Option<Arc<dyn IoHook>>,
        background: bool,
        warmup: Warmup,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = if background {
            let (requests, request_rx) = crossbeam_channel::unbounded::<u64>();
            let (ready_tx, ready) = crossbeam_channel::bounded(1);
            let (d, h, stop) = (dir.clone(), hook.clone(), Arc::clone(&stop));
            let thread = std::thread::Builder::new()
                .name("rocketstore-allocate".into())
                .spawn(move || {
                    for offset in request_rx {
                        let file = MappedFile::create(&d, offset, file_size, h.clone())
                            .and_then(|mut f| f.warm(warmup, &stop).map(|()| f));
                        if ready_tx.send(file).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| Error::io("spawn allocation thread", &dir, e))?;
            Some(Worker {
                requests,
                ready,
                thread,
            })
        } else {
            None
        };
        Ok(Allocator {
            dir,
            file_size,
            hook,
            worker,
            pending: None,
            spare: None,
            stop,
        })
    }

    /// Offers a file prepared earlier (found unused at open) as the next file.
    pub(crate) fn adopt(&mut self, file: MappedFile) {
        self.spare = Some(file);
    }

    /// Starts preparing the file at `offset` in the background (no-op without a thread or
    /// when a file is already being prepared).
    pub(crate) fn prepare(&mut self, offset: u64) {
        if self
            .spare
            .as_ref()
            .is_some_and(|f| f.start_offset() == offset)
        {
            return;
        }
        if let (Some(w), None) = (&self.worker, self.pending)
            && w.requests.send(offset).is_ok()
        {
            self.pending = Some(offset);
        }
    }

    /// The file at `offset`: the prepared one if it is the one asked for (waiting for it to
    /// finish if need be), else created now.
    pub(crate) fn take(&mut self, offset: u64) -> Result<MappedFile> {
        if let Some(spare) = self.spare.take() {
            if spare.start_offset() == offset {
                return Ok(spare);
            }
            let _ = ops::remove_file_with(spare.path(), self.hook.as_ref());
        }
        if let (Some(w), Some(pending)) = (&self.worker, self.pending.take()) {
            match w.ready.recv() {
                Ok(Ok(file)) if pending == offset => return Ok(file),
                Ok(Ok(other)) => {
                    // Not the file we need (cannot happen while the writer only asks for the
                    // next file); remove it so it never looks like data.
                    let _ = ops::remove_file_with(other.path(), self.hook.as_ref());
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
        }
        MappedFile::create(&self.dir, offset, self.file_size, self.hook.clone())
    }

    /// Stops the thread. A file it prepared but nobody used stays on disk, empty; opening
    /// the store removes it.
    pub(crate) fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            drop(w.requests);
            drop(w.ready);
            if w.thread.join().is_err() {
                // Harmless to the data: `take` creates files itself once the thread is gone.
                log::error!("the allocation thread panicked");
            }
        }
        self.pending = None;
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.shutdown();
    }
}
