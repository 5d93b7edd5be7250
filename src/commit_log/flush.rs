//! The flush thread: group commit for sync flush, a timer for async flush, and the
//! acknowledgements producers wait on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::commit_log::CommitLog;
use crate::commit_log::wake::wake_all;
use crate::config::FlushMode;
use crate::error::{Error, Result};
use crate::fs::mapped_file::PAGE_SIZE;
use crate::message::{PutResult, PutStatus};

/// Starts and stops the flush thread and lets producers wait for durability.
pub(crate) struct Flusher {
    log: Arc<CommitLog>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    timeout: Duration,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the flush thread: new work or shutdown.
    work: Condvar,
    /// Wakes the timeout thread: a new future to time, or the end.
    timer: Condvar,
    /// Highest commit-log offset a producer or a future waits for. Asking needs no lock
    /// while the group-commit thread is awake.
    requested: AtomicU64,
    /// The group-commit thread sleeps (or is about to) on `work`: a request must wake it.
    sleeping: AtomicBool,
    /// Where producers blocked in `wait_durable` sleep (futexes): those the group-commit
    /// thread's flush number `n` covers on `durable_gen[n % 2]`, the others on the other
    /// word. After flush `n` it bumps `durable_gen[n % 2]` and wakes its sleepers with one
    /// system call, leaving asleep the producers that appended during the flush; both
    /// words are bumped on a failure, at the end, and before it sleeps.
    durable_gen: [AtomicU32; 2],
    /// The number of the group-commit thread's current (or last) flush...
    flush_seq: AtomicU64,
    /// ...and the commit-log offset it covers at least, stored after `flush_seq`.
    flush_cover: AtomicU64,
    /// `State::stopped`, for waiting producers.
    stopped: AtomicBool,
    /// One producer at a time may spin for its flush instead of sleeping...
    spinning: AtomicBool,
    /// ...and only while few wait: with many, the core is worth more to the others.
    waiting: AtomicUsize,
    /// Producers past their spin, who may sleep on a `durable_gen` word: a flush makes the
    /// wake-up call only when there are some.
    sleepers: AtomicUsize,
    /// Requests made in `wait_durable` so far: the group-commit thread gathers until as
    /// many new ones came as its last flush covered.
    requests: AtomicU64,
}

/// Most producers waiting in `wait_durable` for one of them to spin.
const SPIN_WHEN_WAITING: usize = 2;

/// How long the group-commit thread looks for a new request before sleeping: a producer
/// that was just acknowledged usually asks again within microseconds.
const FLUSHER_SPIN: Duration = Duration::from_micros(50);
/// Longest a flush waits for the producers the last one released to come back.
/// It waits at most as long as the last flush took, until three quarters of the
/// requests that flush carried are back: at 64 producers the last few come back while
/// the next flush runs, and waiting for them idled the disk (`docs/BENCHMARKS.md`).
const MAX_GATHER: Duration = Duration::from_micros(200);
/// How long one waiting producer spins for its flush before sleeping, saving the wake-up
/// (tens of microseconds here) on a flush that takes a few hundred.
const WAITER_SPIN: Duration = Duration::from_micros(1000);

#[derive(Default)]
struct State {
    shutdown: bool,
    /// The thread has exited; nothing will be flushed any more.
    stopped: bool,
    /// Futures waiting for their bytes to be durable, in deadline order.
    futures: Vec<PendingAck>,
}

struct PendingAck {
    target: u64,
    /// `None`: the timeout is too large to be a point in time; no deadline.
    deadline: Option<Instant>,
    slot: Arc<AckSlot>,
}

/// Where the flush thread leaves the outcome for a [`PutFuture`].
#[derive(Default)]
struct AckSlot {
    inner: Mutex<AckInner>,
}

#[derive(Default)]
struct AckInner {
    outcome: Option<Result<PutStatus>>,
    waker: Option<Waker>,
}

impl AckSlot {
    /// Leaves the outcome, returning the waker to wake: the caller wakes it once it holds
    /// no lock of ours ([`wake_all`]).
    #[must_use]
    fn complete(&self, outcome: Result<PutStatus>) -> Option<Waker> {
        let mut inner = self.inner.lock();
        inner.outcome = Some(outcome);
        inner.waker.take()
    }
}

impl Flusher {
    pub(crate) fn start(log: Arc<CommitLog>, mode: FlushMode) -> Result<Flusher> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            timer: Condvar::new(),
            requested: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            durable_gen: [AtomicU32::new(0), AtomicU32::new(0)],
            flush_seq: AtomicU64::new(0),
            flush_cover: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            spinning: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        });
        let (name, timeout) = match mode {
            FlushMode::Sync { timeout } => ("rocketstore-group-commit", timeout),
            FlushMode::Async { .. } => ("rocketstore-flush", Duration::ZERO),
        };
        // From here on a failure drops `flusher`, which stops and joins whatever threads
        // it has started.
        let flusher = Flusher {
            log: Arc::clone(&log),
            shared: Arc::clone(&shared),
            threads: Mutex::new(Vec::new()),
            timeout,
        };
        let (l, s) = (Arc::clone(&log), Arc::clone(&shared));
        let thread = spawn(name, "spawn flush thread", move || {
            let _exit = ExitGuard {
                log: &l,
                shared: &s,
            };
            match mode {
                FlushMode::Sync { .. } => group_commit_loop(&l, &s),
                FlushMode::Async {
                    interval,
                    least_pages,
                    thorough_interval,
                } => interval_loop(&l, &s, interval, least_pages, thorough_interval),
            }
            finish(&l, &s);
        })?;
        // Joined first: its last flush and `finish` come before the other threads end.
        flusher.threads.lock().insert(0, thread);
        if mode.is_sync() {
            // Futures must time out even while a flush is stuck in the kernel, so their
            // deadlines are watched by a thread of their own.
            let (l, s) = (Arc::clone(&log), Arc::clone(&shared));
            let timer = spawn(
                "rocketstore-ack-timeout",
                "spawn timeout thread",
                move || timeout_loop(&l, &s),
            )?;
            flusher.threads.lock().push(timer);
        }
        Ok(flusher)
    }

    /// Blocks until `target` is durable (sync flush): `Ok` when it is, `FlushDiskTimeout`
    /// when the timeout passes first, an error when the store is poisoned or stopped.
    pub(crate) fn wait_durable(&self, target: u64) -> Result<PutStatus> {
        if self.log.flushed_offset() >= target {
            return Ok(PutStatus::Ok);
        }
        let deadline = Instant::now().checked_add(self.timeout);
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        self.shared.request(target);
        let waiting = self.shared.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        let _waiting = Counted(&self.shared.waiting);
        if waiting <= SPIN_WHEN_WAITING && self.spin_until_durable(target) {
            return Ok(PutStatus::Ok);
        }
        // SeqCst, as the flush thread's look at `sleepers` after it bumps a word: either it
        // sees us counted and wakes the futex, or we see its flush below.
        self.shared.sleepers.fetch_add(1, Ordering::SeqCst);
        let _sleeping = Counted(&self.shared.sleepers);
        loop {
            let word = self.shared.word_for(target);
            // Read before the flushed offset: a flush published after this read has
            // bumped the word by the time it wakes anyone, so the futex does not sleep on
            // the old value.
            let generation = word.load(Ordering::SeqCst);
            if self.log.flushed_offset() >= target {
                return Ok(PutStatus::Ok);
            }
            if let Some(e) = self.failure() {
                return Err(e);
            }
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return self.timed_out(target),
                },
            };
            self.shared.sleep(word, generation, left);
        }
    }

    /// A put not confirmed in time is still stored: its bytes are written into the page
    /// cache now rather than left gathered until the stuck flush ends, so that they survive
    /// a crash of the process (not of the machine), as `FlushDiskTimeout` promises. When
    /// they cannot be (the log is poisoned), the put fails instead.
    fn timed_out(&self, target: u64) -> Result<PutStatus> {
        if self.log.committed_offset() < target
            && let Err(e) = self.log.commit_staged()
        {
            // Waited for the put lock: the bytes must be in the page cache before the put
            // is reported stored. A flush may have made them durable meanwhile.
            return match self.log.flushed_offset() >= target {
                true => Ok(PutStatus::Ok),
                false => Err(e),
            };
        }
        if self.log.flushed_offset() >= target {
            return Ok(PutStatus::Ok);
        }
        match self.failure() {
            Some(e) => Err(e),
            None => Ok(PutStatus::FlushDiskTimeout),
        }
    }

    /// Spins (one producer at a time) for up to [`WAITER_SPIN`] until `target` is durable;
    /// whether it is. Failures are left to the caller's loop.
    fn spin_until_durable(&self, target: u64) -> bool {
        let spinning = &self.shared.spinning;
        if spinning
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let started = Instant::now();
        let mut durable = false;
        while started.elapsed() < WAITER_SPIN && !self.log.is_poisoned() {
            if self.log.flushed_offset() >= target {
                durable = true;
                break;
            }
            std::hint::spin_loop();
        }
        spinning.store(false, Ordering::Release);
        durable
    }

    fn failure(&self) -> Option<Error> {
        if self.log.is_poisoned() {
            Some(self.log.poison_error())
        } else if self.shared.stopped.load(Ordering::Acquire) {
            Some(Error::ShutDown)
        } else {
            None
        }
    }

    /// Asks the group-commit thread to make `target` durable, without waiting for it.
    pub(crate) fn request_flush(&self, target: u64) {
        self.shared.request(target);
    }

    /// A future resolving once `target` is durable, carrying `result` with its status.
    pub(crate) fn ack_future(&self, result: PutResult) -> PutFuture {
        let target = result.end_offset();
        if self.log.flushed_offset() >= target {
            return PutFuture::ready(Ok(result));
        }
        let slot = Arc::new(AckSlot::default());
        let mut st = self.shared.state.lock();
        // Checked again under the lock: the last flush of a shutdown may have made it
        // durable since, and it must not then be reported as shut down.
        if self.log.flushed_offset() >= target {
            return PutFuture::ready(Ok(result));
        }
        if let Some(e) = self.failure() {
            return PutFuture::ready(Err(e));
        }
        st.futures.push(PendingAck {
            target,
            deadline: Instant::now().checked_add(self.timeout),
            slot: Arc::clone(&slot),
        });
        if st.futures.len() == 1 {
            self.shared.timer.notify_one();
        }
        drop(st);
        self.shared.request(target);
        PutFuture {
            state: FutureState::Waiting { result, slot },
        }
    }

    /// The flusher's threads (group commit and ack timeouts, or the async flush).
    pub(crate) fn thread_ids(&self) -> Vec<std::thread::ThreadId> {
        self.threads
            .lock()
            .iter()
            .map(|t| t.thread().id())
            .collect()
    }

    /// Stops the thread after a last flush of everything appended.
    /// Also called on drop, so that a store whose open failed leaves no thread behind;
    /// a second call finds nothing left to do.
    pub(crate) fn shutdown(&self) {
        self.shared.state.lock().shutdown = true;
        self.shared.work.notify_all();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            if t.join().is_err() {
                // The exit guard has poisoned the log and woken every waiter.
                log::error!("a flush thread panicked");
            }
        }
    }
}

/// Starts one of the flusher's threads.
fn spawn(
    name: &str,
    op: &'static str,
    run: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map_err(|e| Error::io(op, "", e))
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    /// Asks the group-commit thread to make `target` durable.
    fn request(&self, target: u64) {
        if self.requested.fetch_max(target, Ordering::SeqCst) >= target {
            return;
        }
        if self.sleeping.load(Ordering::SeqCst) {
            let _st = self.state.lock();
            self.work.notify_one();
        }
    }

    /// The word of `durable_gen` a producer waiting for `target` sleeps on: that of the
    /// flush in progress when it certainly covers `target`, else the other, which the next
    /// flush bumps (or the group-commit thread before it sleeps, when no flush is needed).
    ///
    /// The cover is read first: if the flush number read after it is newer, the flush that
    /// stored the cover has published its flushed offset already, and the caller sees
    /// `target` durable before it sleeps.
    fn word_for(&self, target: u64) -> &AtomicU32 {
        let cover = self.flush_cover.load(Ordering::SeqCst);
        let seq = self.flush_seq.load(Ordering::SeqCst);
        let n = if target <= cover { seq } else { seq + 1 };
        &self.durable_gen[(n % 2) as usize]
    }

    /// Sleeps on `word` while it still holds `generation`, for at most `left` (`None`: no
    /// limit). Returns early on a wake-up, a signal or a spurious wake: the caller looks
    /// again either way.
    fn sleep(&self, word: &AtomicU32, generation: u32, left: Option<Duration>) {
        // At most an hour at a time (the caller sleeps again): no timeout the kernel
        // could refuse, however long the configured one.
        const LONGEST: Duration = Duration::from_secs(3600);
        let d = left.map_or(LONGEST, |left| left.min(LONGEST));
        let timeout = rustix::thread::futex::Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: d.subsec_nanos().into(),
        };
        match rustix::thread::futex::wait(
            word,
            rustix::thread::futex::Flags::PRIVATE,
            generation,
            Some(&timeout),
        ) {
            // Woken, the generation moved (AGAIN), a signal, or the time is up: the
            // caller looks again either way.
            Ok(())
            | Err(
                rustix::io::Errno::AGAIN | rustix::io::Errno::INTR | rustix::io::Errno::TIMEDOUT,
            ) => {}
            Err(e) => debug_assert!(false, "futex wait failed: {e}"),
        }
    }

    /// Announces the group-commit thread's next flush, which covers at least `cover`
    /// (read from the write offset before the flush reads it again).
    fn flush_starts(&self, cover: u64) -> u64 {
        let seq = self.flush_seq.load(Ordering::Relaxed) + 1;
        self.flush_seq.store(seq, Ordering::SeqCst);
        self.flush_cover.store(cover, Ordering::SeqCst);
        seq
    }

    /// Wakes every producer blocked in `wait_durable` to look again at the flushed offset
    /// and the store's state, after a flush was published or a failure or the end was
    /// recorded (either before this call).
    fn wake(&self) {
        self.wake_word(0);
        self.wake_word(1);
    }

    /// Wakes the producers sleeping on `durable_gen[n % 2]`: after flush `n` is published.
    fn wake_word(&self, n: u64) {
        let word = &self.durable_gen[(n % 2) as usize];
        word.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            // One system call however many wait: the flush thread's time between two
            // flushes does not grow with the producers.
            let _ = rustix::thread::futex::wake(
                word,
                rustix::thread::futex::Flags::PRIVATE,
                // The kernel reads the count as an `int`: `u32::MAX` would wake one.
                i32::MAX as u32,
            );
        }
    }
}

/// Counts a producer out of `Shared::waiting` or `Shared::sleepers` however its wait ends.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends the flush thread's service however the thread ends: a panic poisons the log (no
/// flush will happen any more, so nothing more can be acknowledged), and every waiter is
/// woken to see it.
struct ExitGuard<'a> {
    log: &'a CommitLog,
    shared: &'a Shared,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let cause = std::io::Error::other("the flush thread panicked");
        self.log.poison_with(std::sync::Arc::new(cause));
        let mut st = self.shared.state.lock();
        let wakers = settle_futures(&mut st, self.log);
        st.stopped = true;
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.timer.notify_all();
        drop(st);
        wake_all(wakers);
        self.shared.wake();
    }
}

/// Sync flush: sleep until a producer asks for an offset not yet durable, then flush
/// everything appended so far, covering every producer that arrived meanwhile.
fn group_commit_loop(log: &CommitLog, shared: &Shared) {
    // Requests the last flush carried: most of its producers come back with their next
    // put within microseconds, and a flush started before they do carries only a few.
    let mut last_group = 0u64;
    let mut requests_at_last = 0u64;
    let mut last_took = Duration::ZERO;
    loop {
        {
            let mut st = shared.state.lock();
            loop {
                if st.shutdown {
                    return;
                }
                if log.is_poisoned() {
                    // Poisoned elsewhere (a panicked dispatch thread): fail the futures and
                    // wake the producers blocked in `wait_durable`, who then see it.
                    let wakers = settle_futures(&mut st, log);
                    shared.wake();
                    if !wakers.is_empty() {
                        // Looks at everything again once they are woken.
                        parking_lot::MutexGuard::unlocked(&mut st, || wake_all(wakers));
                        continue;
                    }
                    shared.work.wait(&mut st);
                    continue;
                }
                if shared.requested.load(Ordering::SeqCst) > log.flushed_offset() {
                    break;
                }
                // Announced, then checked again: a producer that asked before it could
                // see the announcement is seen here; one that asks after it takes the
                // lock (held until this thread waits) and notifies.
                shared.sleeping.store(true, Ordering::SeqCst);
                if shared.requested.load(Ordering::SeqCst) > log.flushed_offset() {
                    shared.sleeping.store(false, Ordering::SeqCst);
                    break;
                }
                // Nothing to flush: but another thread's flush (`MessageStore::flush`, a
                // replicated append) may have covered waiters this thread never flushed
                // for. They are released after the last look at the flushed offset: a
                // producer sleeping on a word read before this bump wakes, and one that
                // reads it after sees every flush that look saw. (Released before the
                // look, a producer covered by a flush in between slept to its timeout.)
                shared.wake();
                let wakers = settle_futures(&mut st, log);
                if !wakers.is_empty() {
                    // A request made meanwhile finds `sleeping` and notifies nobody: the
                    // loop looks at everything again.
                    parking_lot::MutexGuard::unlocked(&mut st, || wake_all(wakers));
                    shared.sleeping.store(false, Ordering::SeqCst);
                    continue;
                }
                shared.work.wait(&mut st);
                shared.sleeping.store(false, Ordering::SeqCst);
            }
        }
        let gather_until = Instant::now() + last_took.min(MAX_GATHER);
        let new_requests = || {
            shared
                .requests
                .load(Ordering::Relaxed)
                .wrapping_sub(requests_at_last)
        };
        while new_requests() < last_group * 3 / 4 && Instant::now() < gather_until {
            std::thread::yield_now();
        }
        last_group = new_requests();
        requests_at_last = requests_at_last.wrapping_add(last_group);
        let started = Instant::now();
        let seq = shared.flush_starts(log.write_offset());
        let _ = log.flush();
        last_took = started.elapsed();
        if log.is_poisoned() {
            shared.wake();
        } else {
            shared.wake_word(seq);
        }
        let wakers = settle_futures(&mut shared.state.lock(), log);
        wake_all(wakers);
        // A producer just acknowledged often asks again at once: look for a moment before
        // going to sleep (the loop above re-checks everything under the lock).
        let started = Instant::now();
        while started.elapsed() < FLUSHER_SPIN
            && shared.requested.load(Ordering::Acquire) <= log.flushed_offset()
        {
            std::hint::spin_loop();
        }
    }
}

/// Async flush: every `interval`, flush when at least `least_pages` pages are dirty, and
/// everything at least every `thorough`.
fn interval_loop(
    log: &CommitLog,
    shared: &Shared,
    interval: Duration,
    least_pages: u32,
    thorough: Duration,
) {
    let mut last_thorough = Instant::now();
    loop {
        {
            let mut st = shared.state.lock();
            if !st.shutdown {
                shared.work.wait_for(&mut st, interval);
            }
            if st.shutdown {
                return;
            }
        }
        if log.is_poisoned() {
            continue;
        }
        // Flushed first: a concurrent `flush()` can move it past a write offset read
        // earlier, never past one read later.
        let flushed = log.flushed_offset() / PAGE_SIZE as u64;
        let dirty_pages = (log.write_offset() / PAGE_SIZE as u64).saturating_sub(flushed);
        let thorough_due = last_thorough.elapsed() >= thorough;
        if thorough_due || dirty_pages >= u64::from(least_pages) {
            let _ = log.flush();
            if thorough_due {
                last_thorough = Instant::now();
            }
        }
    }
}

/// Completes futures whose deadline passed with `FlushDiskTimeout`, until the flush
/// thread has stopped. Deadlines are pushed in order, so the first is the nearest.
///
/// Like a blocking put (`Flusher::timed_out`), a timed-out put is reported stored only
/// once its bytes are in the page cache, and fails if the log is poisoned first. This
/// thread never waits for the put lock: while another thread holds it (a flush's write
/// stuck in the kernel), the futures whose bytes are in the page cache time out on time
/// and the others are looked at again every `RETRY`.
fn timeout_loop(log: &CommitLog, shared: &Shared) {
    const RETRY: Duration = Duration::from_millis(1);
    let mut st = shared.state.lock();
    while !st.stopped {
        let now = Instant::now();
        let expired_end = st
            .futures
            .iter()
            .take_while(|p| p.deadline.is_some_and(|d| d <= now))
            .map(|p| p.target)
            .max();
        let mut lock_busy = false;
        if expired_end.is_some_and(|end| end > log.committed_offset()) {
            // Not under the lock the group-commit thread settles futures with.
            parking_lot::MutexGuard::unlocked(&mut st, || match log.try_commit_staged() {
                None => lock_busy = true,
                Some(Err(e)) => log::warn!("writing timed-out puts into the page cache: {e}"),
                Some(Ok(_)) => {}
            });
        }
        let wakers = match log.is_poisoned() {
            true => settle_futures(&mut st, log),
            false => expire_futures(&mut st, now, log.committed_offset()),
        };
        if !wakers.is_empty() {
            // Looks at everything again once they are woken: `stopped` may be set meanwhile.
            parking_lot::MutexGuard::unlocked(&mut st, || wake_all(wakers));
            continue;
        }
        // Looked at again under the lock held from here into the wait: the flush thread
        // may have stopped (and notified nobody) while the lock was released above.
        if st.stopped {
            break;
        }
        match st.futures.first().and_then(|p| p.deadline) {
            Some(deadline) if lock_busy || deadline <= now => {
                shared.timer.wait_for(&mut st, RETRY);
            }
            Some(deadline) => {
                shared.timer.wait_until(&mut st, deadline);
            }
            None => shared.timer.wait(&mut st),
        }
    }
}

/// Last flush on the way out; wakes everyone still waiting.
fn finish(log: &CommitLog, shared: &Shared) {
    let _ = log.flush();
    let mut st = shared.state.lock();
    let mut wakers = settle_futures(&mut st, log);
    let left = std::mem::take(&mut st.futures);
    wakers.extend(
        left.into_iter()
            .filter_map(|p| p.slot.complete(Err(Error::ShutDown))),
    );
    st.stopped = true;
    shared.stopped.store(true, Ordering::Release);
    shared.timer.notify_all();
    drop(st);
    wake_all(wakers);
    shared.wake();
}

/// Completes the futures whose bytes are durable, and fails the others if the log is
/// poisoned; returns the wakers to wake.
fn settle_futures(st: &mut State, log: &CommitLog) -> Vec<Waker> {
    // Read before the poison: a flush that made bytes durable published them first.
    let flushed = log.flushed_offset();
    let poisoned = log.is_poisoned();
    let mut wakers = Vec::new();
    st.futures.retain(|p| {
        let outcome = if p.target <= flushed {
            Ok(PutStatus::Ok)
        } else if poisoned {
            Err(log.poison_error())
        } else {
            return true;
        };
        wakers.extend(p.slot.complete(outcome));
        false
    });
    wakers
}

/// Completes with `FlushDiskTimeout` the futures whose deadline passed by `now` and
/// whose bytes are in the page cache (below `committed`); returns the wakers to wake.
fn expire_futures(st: &mut State, now: Instant, committed: u64) -> Vec<Waker> {
    let mut wakers = Vec::new();
    st.futures.retain(|p| {
        if p.deadline.is_some_and(|d| d <= now) && p.target <= committed {
            wakers.extend(p.slot.complete(Ok(PutStatus::FlushDiskTimeout)));
            false
        } else {
            true
        }
    });
    wakers
}

/// The acknowledgement of [`MessageStore::put_message_async`](crate::MessageStore::put_message_async).
///
/// Resolves to the [`PutResult`] once the put is acknowledged under the flush mode: at once
/// for async flush, after the group commit (or its timeout) for sync flush. It needs no
/// particular runtime: the flush thread wakes it. Polling it again after it resolved panics,
/// as the `Future` contract allows.
#[must_use = "the put is stored either way; await the future to learn whether it is durable"]
pub struct PutFuture {
    state: FutureState,
}

enum FutureState {
    Ready(Option<Result<PutResult>>),
    Waiting {
        result: PutResult,
        slot: Arc<AckSlot>,
    },
    Done,
}

impl PutFuture {
    pub(crate) fn ready(result: Result<PutResult>) -> PutFuture {
        PutFuture {
            state: FutureState::Ready(Some(result)),
        }
    }
}

impl std::fmt::Debug for PutFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            FutureState::Ready(_) => "ready",
            FutureState::Waiting { .. } => "waiting",
            FutureState::Done => "done",
        };
        f.debug_struct("PutFuture").field("state", &state).finish()
    }
}

impl Future for PutFuture {
    type Output = Result<PutResult>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let out = match &mut this.state {
            FutureState::Ready(r) => r.take().expect("PutFuture polled after completion"),
            FutureState::Waiting { result, slot } => {
                let mut inner = slot.inner.lock();
                match inner.outcome.take() {
                    Some(outcome) => outcome.map(|status| PutResult { status, ..*result }),
                    None => {
                        inner.waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
            }
            FutureState::Done => panic!("PutFuture polled after completion"),
        };
        this.state = FutureState::Done;
        Poll::Ready(out)
    }
}
