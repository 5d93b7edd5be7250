//! The allocation threads: one creates and warms the next commit-log files (two of them)
//! before the writer needs them, so rolling to a new file never waits on fallocate or page
//! faults; the other, in the file being written, zeroes (`Warmup::ZeroAndFlush`) or
//! touches (`Warmup::Touch`) the pages just ahead of the writer.
//!
//! A writer never waits on a warm-up: when it needs the next file before the warm-up is
//! done, the thread stops at the next 2 MiB and hands the file over as it is. In the file
//! being written, a writer that catches up with the thread working ahead waits at most for
//! the chunk that thread is writing.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::mapped_file::Warmup;
use crate::fs::mapped_file::{
    FileWriter, MappedFile, ZeroAhead, faults_give_small_folios, populate_write_supported,
};
use crate::fs::ops;
use crate::stats::Counters;

/// Hands out new files; owned by the append state, so only the writer talks to it.
pub(crate) struct Allocator {
    dir: PathBuf,
    file_size: usize,
    hook: Option<Arc<dyn IoHook>>,
    worker: Option<Worker>,
    /// Offsets of the files asked of the worker and not yet taken, in the order asked:
    /// the worker prepares them in that order and hands them over in it.
    pending: VecDeque<u64>,
    /// Files already prepared (left unused by the last run), first to last, handed out
    /// before any other.
    spares: VecDeque<MappedFile>,
    /// Tells the threads to stop (cutting a warm-up short): shutdown should not wait.
    stop: Arc<AtomicBool>,
    /// Tells the worker to cut a warm-up short: the writer is waiting for the file.
    hurry: Arc<AtomicBool>,
    warmup: Warmup,
    /// Touch-ahead writes zeros before it maps pages (`faults_give_small_folios`).
    touch_zeros: bool,
    /// Where waits for the next file are counted.
    counters: Arc<Counters>,
}

/// How many files are prepared ahead of the one being written. Under heavy write-back a
/// 1 GiB `fallocate` took 0.86–2.15 s here while an async writer filled a file in about
/// 2.4 s: with one file ahead the writer sometimes waited at a roll. Two give it a whole
/// file's time more, for one more file of disk space while the disk has room for it
/// ([`room_for_more`]).
const FILES_AHEAD: usize = 2;

/// Files beyond the first are prepared ahead only while this many files' worth of space
/// is free ([`room_for_more`]).
const EXTRA_FILE_ROOM: u64 = 4;

/// Zero-ahead keeps this much of the file being written zeroed past the writer...
const ZERO_AHEAD: usize = 32 << 20;
/// ...in chunks of this size, each written and synced on its own. Small, because a sync
/// put's fdatasync queues behind the chunk's on the disk: 4 MiB chunks (about 3 ms to
/// write here) held 16 and 64 sync producers' p99 at 1.0–1.4 and 3.4–4.3 ms, 256 KiB
/// chunks at 0.8–1.0 and 1.3–1.5 ms, with as many puts a second (`docs/BENCHMARKS.md`,
/// twentieth session).
const ZERO_CHUNK: usize = 256 << 10;
/// How much of a new file the allocation thread zeroes before the writer is in it: the
/// writer starts well ahead of a zeroer that has only just turned to the file.
const ZERO_FIRST: usize = 4 << 20;
/// Touch-ahead keeps this much of the file being written mapped writable past the
/// writer (first filled with zeros where faults give small folios), in aligned chunks of
/// `TOUCH_CHUNK` (the size of the page cache's largest folio, see
/// `MappedFile::touch_ahead`): enough for 30 ms of a 1 GB/s writer, and little for a
/// sync of the whole filesystem to write back as zeros.
const TOUCH_AHEAD: usize = 32 << 20;
const TOUCH_CHUNK: usize = 2 << 20;
/// When nothing is to be zeroed or touched, the thread looks again after this long,
/// doubling while the writer stays put (or zero-ahead stands down for it), up to
/// `AHEAD_POLL_MAX`: an idle store costs 25 wake-ups a second, and a writer bursting at
/// 1 GB/s after an idle spell outruns the 32 MiB lead for at most about 10 ms.
const AHEAD_POLL: Duration = Duration::from_millis(5);
const AHEAD_POLL_MAX: Duration = Duration::from_millis(40);

/// How much of a new file to warm before the writer is in it: the first chunk when the
/// ahead thread does the rest while the file is written; all of it for `Touch` on a
/// kernel without `MADV_POPULATE_WRITE`.
pub(crate) fn warm_first(warmup: Warmup, file_size: usize) -> usize {
    match warmup {
        Warmup::ZeroAndFlush => ZERO_FIRST,
        Warmup::Touch if works_ahead(warmup) => TOUCH_AHEAD,
        Warmup::Touch => file_size,
        Warmup::None => 0,
    }
}

/// Whether the ahead thread has work under `warmup` on this kernel.
fn works_ahead(warmup: Warmup) -> bool {
    match warmup {
        Warmup::None => false,
        Warmup::Touch => populate_write_supported(),
        Warmup::ZeroAndFlush => true,
    }
}

/// Zero-ahead stands down while the writer goes faster than this (bytes a second)...
///
/// The rate is measured with the zeros slowing the writer, and there is no hysteresis:
/// on a disk where records and zeros together hold the writer below the limit, it never
/// stands down (here it does: about 490 MB/s with zeros at 1,024 sync puts in flight).
///
/// It makes a sync put's fdatasync an overwrite, which saves the extent conversion's
/// journal commit, about 70 µs a flush here: much for the small groups of a few
/// producers, little for the hundreds of kilobytes a flush carries at this rate. And it
/// writes every byte twice (zeros, then records): with 1,024 sync puts in flight the
/// syncs were what bounded the store, and without zero-ahead it went from 551k and 544k
/// to 592k and 573k msgs/s. 64 sync producers write about 170 MB/s, 1,024 in flight
/// 550 MB/s (`docs/BENCHMARKS.md`).
const ZERO_AHEAD_MAX_RATE: f64 = 300e6;
/// ...measured over at least this long (50–90 ms: the ahead thread looks every 5–40 ms
/// when it has nothing to do).
const RATE_WINDOW: Duration = Duration::from_millis(50);

/// How fast the writer of the file being zeroed goes, over windows of `RATE_WINDOW`.
struct WriterPace {
    since: Instant,
    from: usize,
    fast: bool,
}

impl WriterPace {
    /// Starts measuring at `at`, with `fast` as the verdict until a window is whole (the
    /// last file's verdict for a new file: a fast writer stays fast across a roll).
    fn new(now: Instant, at: usize, fast: bool) -> WriterPace {
        WriterPace {
            since: now,
            from: at,
            fast,
        }
    }

    /// Whether the writer, at `at` now, went faster than `ZERO_AHEAD_MAX_RATE` over the
    /// last whole window (the last verdict stands until a window is whole).
    fn fast(&mut self, now: Instant, at: usize) -> bool {
        let took = now.saturating_duration_since(self.since);
        if took >= RATE_WINDOW {
            let rate = at.saturating_sub(self.from) as f64 / took.as_secs_f64();
            self.fast = rate > ZERO_AHEAD_MAX_RATE;
            self.since = now;
            self.from = at;
        }
        self.fast
    }
}

/// The file being written, and the work the ahead thread does just ahead of its writer.
enum Ahead {
    /// Zero-ahead, through the thread's own descriptor (see `MappedFile::zero_ahead`),
    /// unless the writer goes too fast for it to pay.
    Zero(Arc<MappedFile>, std::fs::File, WriterPace),
    /// With the thread's own descriptor when it writes zeros first (the writer allowed
    /// it: see `Allocator::activate`).
    Touch(Arc<MappedFile>, Option<std::fs::File>),
}

impl Ahead {
    fn start(file: Arc<MappedFile>, warmup: Warmup, fast: bool) -> Option<Ahead> {
        match warmup {
            Warmup::None => None,
            Warmup::Touch if !file.zero_ahead_allowed() => Some(Ahead::Touch(file, None)),
            Warmup::Touch | Warmup::ZeroAndFlush => {
                match std::fs::OpenOptions::new().write(true).open(file.path()) {
                    Ok(fd) if warmup == Warmup::Touch => Some(Ahead::Touch(file, Some(fd))),
                    Ok(fd) => {
                        let pace = WriterPace::new(Instant::now(), file.write_pos(), fast);
                        Some(Ahead::Zero(file, fd, pace))
                    }
                    Err(e) if warmup == Warmup::Touch => {
                        log::warn!("touching {} without zeros: {e}", file.path().display());
                        Some(Ahead::Touch(file, None))
                    }
                    Err(e) => {
                        log::warn!("no zero-ahead for {}: {e}", file.path().display());
                        None
                    }
                }
            }
        }
    }

    fn step(&mut self) -> Result<ZeroAhead> {
        match self {
            // Standing down leaves the blocks unwritten, as without a warm-up: the
            // writer's syncs commit their conversion. The zeroing resumes at the writer.
            Ahead::Zero(file, fd, pace) => match pace.fast(Instant::now(), file.write_pos()) {
                true => Ok(ZeroAhead::Idle),
                false => file.zero_ahead(fd, ZERO_CHUNK, ZERO_AHEAD),
            },
            Ahead::Touch(file, fd) => file.touch_ahead(fd.as_ref(), TOUCH_CHUNK, TOUCH_AHEAD),
        }
    }
}

/// The ahead thread: zeroes or touches just ahead of the writer of each file it is given,
/// until the sender is dropped or `stop` is set. It is apart from the thread preparing
/// the next file, whose `fallocate` can take seconds under heavy write-back (block bitmaps
/// read behind it), so that the writer's lead never stops growing meanwhile.
fn ahead_loop(files: &Receiver<Arc<MappedFile>>, warmup: Warmup, stop: &AtomicBool) {
    use crossbeam_channel::RecvTimeoutError;
    let mut active: Option<Ahead> = None;
    // Steps in a row that found nothing to do.
    let mut idle: u32 = 0;
    loop {
        let next = match &active {
            None => match files.recv() {
                Ok(file) => Some(file),
                Err(_) => return,
            },
            Some(_) if idle == 0 => files.try_recv().ok(),
            Some(_) => {
                let wait = (AHEAD_POLL * (1 << (idle - 1).min(3))).min(AHEAD_POLL_MAX);
                match files.recv_timeout(wait) {
                    Ok(file) => Some(file),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        if let Some(file) = next {
            let fast = matches!(&active, Some(Ahead::Zero(_, _, pace)) if pace.fast);
            active = Ahead::start(file, warmup, fast);
            idle = 0;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Some(ahead) = &mut active else { continue };
        match ahead.step() {
            Ok(ZeroAhead::Zeroed) => idle = 0,
            Ok(ZeroAhead::Idle) => idle = idle.saturating_add(1),
            Ok(ZeroAhead::Done) => active = None,
            Err(e) => {
                // Zero-ahead: a failed sync fails the file's next flush and poisons the
                // log; after a failed write the writer fills unwritten blocks itself.
                // Touch-ahead: the writer takes the page faults.
                log::error!("working ahead of the writer stopped: {e}");
                active = None;
            }
        }
    }
}

struct Worker {
    /// Offsets of files to prepare.
    requests: Sender<u64>,
    /// The prepared files (or why not), in the order asked.
    ready: Receiver<Result<MappedFile>>,
    /// The file being written, for the ahead thread (none without a warm-up).
    ahead: Option<Sender<Arc<MappedFile>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Allocator {
    /// With `background`, a thread prepares files ahead with `warmup` (and another works
    /// just ahead of the writer); without, files are created on demand with no warm-up.
    pub(crate) fn new(
        dir: PathBuf,
        file_size: usize,
        hook: Option<Arc<dyn IoHook>>,
        background: bool,
        warmup: Warmup,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let touch_zeros = warmup == Warmup::Touch && faults_give_small_folios(&dir);
        let stop = Arc::new(AtomicBool::new(false));
        let hurry = Arc::new(AtomicBool::new(false));
        let worker = if background {
            let (requests, request_rx) = crossbeam_channel::unbounded::<u64>();
            let (ready_tx, ready) = crossbeam_channel::bounded(FILES_AHEAD);
            let (d, h) = (dir.clone(), hook.clone());
            let (stop_prepare, hurry) = (Arc::clone(&stop), Arc::clone(&hurry));
            let spawn_failed = |e| Error::io("spawn allocation thread", &dir, e);
            let prepare = std::thread::Builder::new()
                .name("rocketstore-allocate".into())
                .spawn(move || {
                    let give_up =
                        || stop_prepare.load(Ordering::Relaxed) || hurry.load(Ordering::Relaxed);
                    let upto = warm_first(warmup, file_size);
                    // The last file whose preparation failed (it may exist all the same:
                    // a warm-up or a directory sync can fail after the rename).
                    let mut failed = None;
                    while let Ok(offset) = request_rx.recv() {
                        let file = follows_a_file(&d, offset, file_size, failed)
                            .and_then(|()| MappedFile::create(&d, offset, file_size, h.clone()))
                            .and_then(|mut f| {
                                f.warm_until(warmup, touch_zeros, upto, &give_up)
                                    .map(|()| f)
                            });
                        failed = file.is_err().then_some(offset);
                        if ready_tx.send(file).is_err() || stop_prepare.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                })
                .map_err(spawn_failed)?;
            let mut threads = vec![prepare];
            let ahead = match works_ahead(warmup) {
                false => None,
                true => {
                    let (files, files_rx) = crossbeam_channel::unbounded();
                    let stop_ahead = Arc::clone(&stop);
                    let spawned = std::thread::Builder::new()
                        .name("rocketstore-ahead".into())
                        .spawn(move || ahead_loop(&files_rx, warmup, &stop_ahead));
                    match spawned {
                        Ok(thread) => threads.push(thread),
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            drop(requests);
                            for t in threads {
                                let _ = t.join();
                            }
                            return Err(spawn_failed(e));
                        }
                    }
                    Some(files)
                }
            };
            Some(Worker {
                requests,
                ready,
                ahead,
                threads,
            })
        } else {
            None
        };
        Ok(Allocator {
            dir,
            file_size,
            hook,
            worker,
            pending: VecDeque::new(),
            spares: VecDeque::new(),
            stop,
            hurry,
            warmup,
            touch_zeros,
            counters,
        })
    }

    /// Offers a file prepared earlier (found unused at open) as the next file, or the
    /// one after the files offered before it.
    pub(crate) fn adopt(&mut self, file: MappedFile) {
        self.spares.push_back(file);
    }

    /// Keeps the [`FILES_AHEAD`] files from `offset` on prepared in the background: asks
    /// for those neither pending nor adopted (no-op without a thread). `offset` is the
    /// start of the file after the one being written.
    pub(crate) fn prepare(&mut self, offset: u64) {
        let Some(w) = &self.worker else { return };
        for i in 0..FILES_AHEAD as u64 {
            let start = offset + i * self.file_size as u64;
            let adopted = self.spares.iter().any(|f| f.start_offset() == start);
            if adopted || self.pending.contains(&start) {
                continue;
            }
            if i > 0 && !room_for_more(&self.dir, self.file_size) {
                return;
            }
            if self.pending.back().is_some_and(|&last| last > start)
                || w.requests.send(start).is_err()
            {
                return;
            }
            self.pending.push_back(start);
        }
    }

    /// The file at `offset`: a spare or the first prepared one if it is the one asked for
    /// (waiting for it to finish if need be), else created now. When the prepared file
    /// failed, so did the ones asked after it (the worker never prepares a file whose
    /// predecessor is missing): they are collected, and the file is tried once more here.
    pub(crate) fn take(&mut self, offset: u64) -> Result<MappedFile> {
        if let Some(i) = self.spares.iter().position(|f| f.start_offset() == offset) {
            self.spares.drain(..i);
            return Ok(self.spares.pop_front().expect("found"));
        }
        // Spares that do not follow the writer (cannot happen while it only asks for the
        // next file) go, newest first, so that the names never have a gap: after a failed
        // removal the older ones stay (the next open finds them unused).
        while let Some(spare) = self.spares.pop_back() {
            if ops::remove_file_with(spare.path(), self.hook.as_ref()).is_err() {
                self.spares.clear();
            }
        }
        let Some(w) = &self.worker else {
            return MappedFile::create(&self.dir, offset, self.file_size, self.hook.clone());
        };
        while let Some(pending) = self.pending.pop_front() {
            let ready = match w.ready.try_recv() {
                Ok(ready) => Ok(ready),
                Err(_) if pending == offset => {
                    let started = std::time::Instant::now();
                    self.hurry.store(true, Ordering::Relaxed);
                    let ready = w.ready.recv();
                    self.hurry.store(false, Ordering::Relaxed);
                    self.counters.roll_waited(started.elapsed());
                    ready
                }
                Err(_) => w.ready.recv(),
            };
            match ready {
                Ok(Ok(file)) if pending == offset && file.start_offset() == offset => {
                    return Ok(file);
                }
                Ok(Ok(other)) => {
                    // Not the file we need (cannot happen while the writer only asks for the
                    // next file): it and any made after it go, newest first, so that they
                    // never look like data or leave a gap.
                    if discard(w, &mut self.pending, &self.hurry, self.hook.as_ref()) {
                        let _ = ops::remove_file_with(other.path(), self.hook.as_ref());
                    }
                }
                Ok(Err(e)) if pending == offset => {
                    // The failure may be old (the file was asked for a whole file ago, and
                    // space may have been freed since): one more try, here. A file the
                    // worker renamed into place before failing (its warm-up or directory
                    // sync) goes first, or making it again would need its space twice.
                    if discard(w, &mut self.pending, &self.hurry, self.hook.as_ref()) {
                        let path = self.dir.join(crate::layout::file_name(offset));
                        if path.exists() {
                            ops::remove_file_with(&path, self.hook.as_ref())?;
                        }
                    }
                    return MappedFile::create(
                        &self.dir,
                        offset,
                        self.file_size,
                        self.hook.clone(),
                    )
                    .inspect_err(|_| {
                        log::warn!("preparing the next commit-log file failed: {e}");
                    });
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    self.pending.clear();
                    break;
                }
            }
        }
        MappedFile::create(&self.dir, offset, self.file_size, self.hook.clone())
    }

    /// Whether touch-ahead (and the warm-up of a new file) writes zeros before it maps
    /// pages (see `MappedFile::touch_ahead`).
    pub(crate) fn touch_zeros(&self) -> bool {
        self.touch_zeros
    }

    /// `writer` now writes its file: the ahead thread zeroes or touches just ahead of it.
    pub(crate) fn activate(&mut self, writer: &mut FileWriter) {
        if let Some(ahead) = self.worker.as_ref().and_then(|w| w.ahead.as_ref()) {
            // Touch-ahead writes zeros only where faults give small folios (see
            // `MappedFile::touch_ahead`); the writer then reserves its bytes.
            if self.warmup == Warmup::ZeroAndFlush || self.touch_zeros {
                writer.allow_zero_ahead();
            }
            let _ = ahead.send(Arc::clone(writer.file()));
        }
    }

    /// Stops the threads and waits for them. A file prepared but never used stays on
    /// disk, empty; opening the store removes it.
    pub(crate) fn shutdown(&mut self) {
        self.stop().join();
    }

    /// Tells the threads to stop and hands them over, to be joined outside the put lock:
    /// one may be inside a slow `fallocate` or a 4 MiB zero write and its sync, and every
    /// put, flush and timed-out producer needs the lock meanwhile.
    pub(crate) fn stop(&mut self) -> Stopping {
        self.stop.store(true, Ordering::Relaxed);
        self.pending.clear();
        Stopping(self.worker.take().map_or_else(Vec::new, |w| {
            drop(w.requests);
            drop(w.ready);
            drop(w.ahead);
            w.threads
        }))
    }
}

/// The allocation threads of a stopped [`Allocator`], still to be joined.
#[must_use = "join the threads"]
pub(crate) struct Stopping(Vec<JoinHandle<()>>);

impl Stopping {
    /// Waits for the threads to end.
    pub(crate) fn join(self) {
        for thread in self.0 {
            if thread.join().is_err() {
                // Harmless to the data: `take` creates files itself once the thread is
                // gone, and the writer takes its own page faults.
                log::error!("an allocation thread panicked");
            }
        }
    }
}

/// Whether the filesystem has room for a file beyond the first one ahead: at least
/// `EXTRA_FILE_ROOM` files free. On a nearly full disk the space is left to the consume
/// queues and the key index (dispatch must be able to finish what was acknowledged),
/// and the writer goes on with one file ahead.
fn room_for_more(dir: &Path, file_size: usize) -> bool {
    rustix::fs::statvfs(dir).is_ok_and(|st| {
        st.f_bavail.saturating_mul(st.f_frsize) >= EXTRA_FILE_ROOM * file_size as u64
    })
}

/// Collects what the worker makes of every file still asked for (`pending`), removing
/// any it prepared; returns whether every one is gone. Called after a preparation failed:
/// the worker turns down the rest at once (see [`follows_a_file`]), and `hurry` cuts any
/// warm-up short.
fn discard(
    w: &Worker,
    pending: &mut VecDeque<u64>,
    hurry: &AtomicBool,
    hook: Option<&Arc<dyn IoHook>>,
) -> bool {
    let mut made = Vec::new();
    hurry.store(true, Ordering::Relaxed);
    for _ in pending.drain(..) {
        match w.ready.recv() {
            Ok(Ok(file)) => made.push(file),
            Ok(Err(_)) => {}
            Err(_) => break,
        }
    }
    hurry.store(false, Ordering::Relaxed);
    // Newest first, stopping at a failure: the names never have a gap.
    made.iter()
        .rev()
        .all(|file| ops::remove_file_with(file.path(), hook).is_ok())
}

/// Refuses to prepare the file at `offset` unless the file before it exists and its
/// preparation did not fail (`failed`: the last offset whose preparation did): the files'
/// names must never have a gap (opening refuses one), and the writer removes or remakes a
/// file whose preparation failed. It then creates the file itself.
fn follows_a_file(dir: &Path, offset: u64, file_size: usize, failed: Option<u64>) -> Result<()> {
    let Some(before) = offset.checked_sub(file_size as u64) else {
        return Ok(());
    };
    let path = dir.join(crate::layout::file_name(before));
    let turned_down = |why: &str| {
        Err(Error::io(
            "prepare",
            dir.join(crate::layout::file_name(offset)),
            std::io::Error::new(std::io::ErrorKind::NotFound, why.to_owned()),
        ))
    };
    if failed == Some(before) {
        return turned_down("the preparation of the file before it failed");
    }
    match path.try_exists() {
        Ok(true) => Ok(()),
        Ok(false) => turned_down("the file before it is missing (its preparation failed)"),
        Err(e) => Err(Error::io("stat", &path, e)),
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The zero-ahead stands down for a fast writer and resumes for a slow one, judged
    /// over whole windows only.
    #[test]
    fn zero_ahead_stands_down_while_the_writer_goes_fast() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pace = WriterPace::new(t0, 0, false);
        // 20 MB in the first 10 ms: not a whole window yet.
        assert!(!pace.fast(at(10), 20_000_000));
        // 40 MB in 50 ms is 800 MB/s.
        assert!(pace.fast(at(50), 40_000_000));
        // Still the last verdict before the next window is whole, however slow since.
        assert!(pace.fast(at(60), 40_000_000));
        // 1 MB in the next 50 ms is 20 MB/s: zeroing again.
        assert!(!pace.fast(at(100), 41_000_000));
        // Exactly at the limit is not faster than it.
        let limit = (ZERO_AHEAD_MAX_RATE * 0.05) as usize;
        assert!(!pace.fast(at(150), 41_000_000 + limit));
        assert!(pace.fast(at(200), 41_000_000 + 2 * limit + 1));
        // A new file starts with the last file's verdict.
        let mut next = WriterPace::new(at(200), 0, true);
        assert!(next.fast(at(210), 0));
    }

    /// Waits (at most 30 s) until the file is zeroed or touched up to `to`.
    fn wait_ahead(file: &MappedFile, to: usize) {
        let started = Instant::now();
        while file.ahead_to() < to {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "ahead only to {} of {to}, writer at {}",
                file.ahead_to(),
                file.write_pos()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn files_are_prepared_two_ahead_and_handed_out_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let counters = Arc::new(Counters::default());
        let mut alloc =
            Allocator::new(dir.path().into(), size, None, true, Warmup::None, counters).unwrap();
        let at = |n: u64| n * size as u64;
        // The writer's first file, made on demand.
        assert_eq!(alloc.take(0).unwrap().start_offset(), 0);
        alloc.prepare(at(1));
        assert_eq!(alloc.pending, [at(1), at(2)]);
        for n in 1..5 {
            let file = alloc.take(at(n)).unwrap();
            assert_eq!(file.start_offset(), at(n));
            // The writer is now in file n: files n + 1 and n + 2 are asked for.
            alloc.prepare(at(n + 1));
            assert_eq!(alloc.pending, [at(n + 1), at(n + 2)]);
        }
        alloc.shutdown();
    }

    #[test]
    fn the_ahead_thread_works_just_ahead_of_the_writer_of_each_file() {
        // Touch-ahead both ways, whatever this machine's read-ahead would choose.
        for (warmup, ahead, zeros) in [
            (Warmup::Touch, TOUCH_AHEAD, true),
            (Warmup::Touch, TOUCH_AHEAD, false),
            (Warmup::ZeroAndFlush, ZERO_AHEAD, false),
        ] {
            if warmup == Warmup::Touch && !populate_write_supported() {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let size = 2 * ahead;
            let counters = Arc::new(Counters::default());
            let mut alloc =
                Allocator::new(dir.path().into(), size, None, true, warmup, counters).unwrap();
            alloc.touch_zeros = zeros;
            for start in [0, size as u64] {
                alloc.prepare(start);
                let file = alloc.take(start).unwrap();
                let mut w = FileWriter::new(Arc::new(file), 0).unwrap();
                alloc.activate(&mut w);
                let file = Arc::clone(w.file());
                wait_ahead(&file, ahead);
                let record = [7u8; 4096];
                while ((w.offset() - start) as usize) < ahead / 2 {
                    w.write(&record).unwrap();
                    w.publish();
                }
                // Keeps its lead as the writer moves on, up to the end of the file.
                wait_ahead(&file, ahead + ahead / 2);
                assert!(file.ahead_to() <= size);
                let bytes = file.slice(0, (w.offset() - start) as usize).unwrap();
                assert!(
                    bytes.chunks(4096).all(|c| c == record),
                    "{warmup:?} (zeros: {zeros}) changed bytes"
                );
            }
            alloc.shutdown();
        }
    }
}
