//! The allocation thread: creates and warms the next commit-log file before the writer
//! needs it, so rolling to a new file never waits on fallocate or page faults; and, in the
//! file being written, zeroes (`Warmup::ZeroAndFlush`) or touches (`Warmup::Touch`) the
//! pages just ahead of the writer.
//!
//! A writer never waits on a warm-up: when it needs the next file before the warm-up is
//! done, the thread stops at the next 1 MiB and hands the file over as it is.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::mapped_file::Warmup;
use crate::fs::mapped_file::{FileWriter, MappedFile, ZeroAhead};
use crate::fs::ops;
use crate::stats::Counters;

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
    /// Tells the worker to cut a warm-up short: the writer is waiting for the file.
    hurry: Arc<AtomicBool>,
    warmup: Warmup,
    /// Where waits for the next file are counted.
    counters: Arc<Counters>,
}

/// Zero-ahead keeps this much of the file being written zeroed past the writer...
const ZERO_AHEAD: usize = 32 << 20;
/// ...in chunks of this size, each written and synced on its own.
const ZERO_CHUNK: usize = 4 << 20;
/// Touch-ahead keeps this much of the file being written mapped writable past the
/// writer, in chunks of `TOUCH_CHUNK`: enough for 30 ms of a 1 GB/s writer, and little
/// for a sync of the whole filesystem to write back as zeros.
pub(crate) const TOUCH_AHEAD: usize = 32 << 20;
const TOUCH_CHUNK: usize = 2 << 20;
/// When nothing is to be zeroed or touched, the thread looks again this often.
const AHEAD_POLL: Duration = Duration::from_millis(5);

/// The file being written, and the work the thread does just ahead of its writer.
enum Ahead {
    /// Zero-ahead, through the thread's own descriptor (see `MappedFile::zero_ahead`).
    Zero(Arc<MappedFile>, std::fs::File),
    Touch(Arc<MappedFile>),
}

impl Ahead {
    fn start(file: Arc<MappedFile>, warmup: Warmup) -> Option<Ahead> {
        match warmup {
            Warmup::None => None,
            Warmup::Touch => Some(Ahead::Touch(file)),
            Warmup::ZeroAndFlush => {
                match std::fs::OpenOptions::new().write(true).open(file.path()) {
                    Ok(fd) => Some(Ahead::Zero(file, fd)),
                    Err(e) => {
                        log::warn!("no zero-ahead for {}: {e}", file.path().display());
                        None
                    }
                }
            }
        }
    }

    fn step(&self) -> Result<ZeroAhead> {
        match self {
            Ahead::Zero(file, fd) => file.zero_ahead(fd, ZERO_CHUNK, ZERO_AHEAD),
            Ahead::Touch(file) => file.touch_ahead(TOUCH_CHUNK, TOUCH_AHEAD),
        }
    }
}

fn warmup_name(warmup: Warmup) -> &'static str {
    match warmup {
        Warmup::Touch => "touch-ahead",
        _ => "zero-ahead",
    }
}

enum Request {
    /// Create (and warm) the file at this offset.
    Prepare(u64),
    /// The writer moved to this file: zero ahead of it.
    Active(Arc<MappedFile>),
}

struct Worker {
    requests: Sender<Request>,
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
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let hurry = Arc::new(AtomicBool::new(false));
        let worker = if background {
            let (requests, request_rx) = crossbeam_channel::unbounded::<Request>();
            let (ready_tx, ready) = crossbeam_channel::bounded(1);
            let (d, h) = (dir.clone(), hook.clone());
            let (stop, hurry) = (Arc::clone(&stop), Arc::clone(&hurry));
            let thread = std::thread::Builder::new()
                .name("rocketstore-allocate".into())
                .spawn(move || {
                    let give_up = || stop.load(Ordering::Relaxed) || hurry.load(Ordering::Relaxed);
                    // A new file gets its first chunk zeroed or touched; the rest is
                    // done while it is written, just ahead of the writer.
                    let upto = match warmup {
                        Warmup::ZeroAndFlush => ZERO_CHUNK,
                        Warmup::Touch => TOUCH_AHEAD,
                        Warmup::None => 0,
                    };
                    let mut active: Option<Ahead> = None;
                    let mut busy = false;
                    loop {
                        let request = match (&active, busy) {
                            (Some(_), true) => request_rx.try_recv().ok(),
                            (Some(_), false) => match request_rx.recv_timeout(AHEAD_POLL) {
                                Ok(r) => Some(r),
                                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                                Err(_) => break,
                            },
                            (None, _) => match request_rx.recv() {
                                Ok(r) => Some(r),
                                Err(_) => break,
                            },
                        };
                        match request {
                            Some(Request::Prepare(offset)) => {
                                let file = MappedFile::create(&d, offset, file_size, h.clone())
                                    .and_then(|mut f| {
                                        f.warm_until(warmup, upto, &give_up).map(|()| f)
                                    });
                                if ready_tx.send(file).is_err() {
                                    break;
                                }
                            }
                            Some(Request::Active(file)) => active = Ahead::start(file, warmup),
                            None => {}
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let step = active.as_ref().map(Ahead::step);
                        busy = match step {
                            Some(Ok(ZeroAhead::Zeroed)) => true,
                            Some(Ok(ZeroAhead::Idle)) | None => false,
                            Some(Ok(ZeroAhead::Done)) => {
                                active = None;
                                false
                            }
                            Some(Err(e)) => {
                                // Zero-ahead: the next flush of the file fails on it and
                                // poisons the log. Touch-ahead: the writer takes the faults.
                                log::error!("{} stopped: {e}", warmup_name(warmup));
                                active = None;
                                false
                            }
                        };
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
            hurry,
            warmup,
            counters,
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
            && w.requests.send(Request::Prepare(offset)).is_ok()
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
            let ready = match w.ready.try_recv() {
                Ok(ready) => Ok(ready),
                Err(_) => {
                    let started = std::time::Instant::now();
                    self.hurry.store(true, Ordering::Relaxed);
                    let ready = w.ready.recv();
                    self.hurry.store(false, Ordering::Relaxed);
                    self.counters.roll_waited(started.elapsed());
                    ready
                }
            };
            match ready {
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

    /// `writer` now writes its file: the thread zeroes or touches just ahead of it.
    pub(crate) fn activate(&mut self, writer: &mut FileWriter) {
        if self.warmup != Warmup::None
            && let Some(w) = &self.worker
        {
            if self.warmup == Warmup::ZeroAndFlush {
                writer.allow_zero_ahead();
            }
            let _ = w.requests.send(Request::Active(Arc::clone(writer.file())));
        }
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
