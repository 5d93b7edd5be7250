//! Durability below the filesystem, proven by simulated power cuts: every put acknowledged
//! under sync flush is on the disk, not merely in the page cache.
//!
//! A SIGKILL (`tests/crash.rs`) leaves the kernel's page cache alive, so it cannot tell a
//! flushed put from one that only reached memory. Here the store lives on an ext4 image file
//! loop-mounted by the test. Each round:
//!
//! 1. mounts the current image and runs a writer child (this same test binary running the
//!    ignored test `powercut_child`) with sync flush, 1 MiB commit-log files and small
//!    consume-queue files, so files roll and get created during the round. Three threads
//!    put (some as batches) over four queues and print one `ACK` line per acknowledged
//!    message (queue, queue offset, physical offset, body CRC and length); after 12 MiB
//!    they stop and wait for the cut, so a fast writer cannot fill the image;
//! 2. after the child's `READY`, waits a random delay (seeded; the seed is printed and
//!    `POWERCUT_SEED` repeats it), SIGKILLs the child, and at once copies the image file.
//!    The backing file holds exactly what the loop block device received: the inner
//!    filesystem's dirty page cache is not in it, as if the power had gone. The original
//!    is then unmounted and discarded;
//! 3. mounts the copy (ext4 replays its journal), opens the store with the library and
//!    checks every message acknowledged in any round so far: found by physical offset with
//!    the same body CRC, length and queue offset, readable by queue at the same physical
//!    offset, and every consume queue dense, agreeing with the log and holding at least as
//!    many messages as were acknowledged in it. The store is shut down cleanly and the next
//!    round goes on from this copy.
//!
//! The checker counts lost or mismatched messages instead of panicking, so one harness
//! serves both tests: under sync flush nothing may be lost; the control runs an async
//! writer whose flush thread never gets to flush during a round, and must lose
//! acknowledged messages in some round, which shows the harness really cuts the power.
//!
//! A subtlety: the copy is taken while the kernel still holds the dead writer's dirty pages
//! and may write them back. Each round mounts a fresh copy and lasts far less than the
//! kernel's `dirty_expire` (30 s), and nothing asks for a flush once the writer is dead, so
//! nothing the writer left unflushed reaches the image before the copy; that is what makes
//! the async control lose messages. The image is mounted with `commit=600`, so ext4 commits
//! its journal only when an fsync asks for it: no timer commit writes to the device while
//! the file is being copied (with the default 5 s one did, measured), which makes the copy
//! an exact snapshot of one instant, and no timer commit rescues metadata the store did not
//! sync itself.
//!
//! Needs root (mkfs.ext4, `mount -o loop`, a free loop device); otherwise each test prints
//! `skipped: <reason>` and passes. A store larger than 32 MiB is replaced by a fresh one
//! after its round is checked, so the image never fills. When the sync test loses a
//! message, the image as cut (before any recovery), the acknowledged list and what was lost
//! are kept in `$TMPDIR/powercut-evidence-<seed>-round<n>/`.
//!
//! A long campaign: `POWERCUT_ROUNDS=200 cargo test --release --test powercut -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Rng, child_body};
use rocketstore::{FlushMode, GetStatus, Message, MessageStore, StoreConfig};

const TOPIC: &str = "Powercut";
const QUEUES: u32 = 4;
const PRODUCERS: u64 = 3;
const FILE_SIZE: u64 = 1 << 20;
const CQ_ENTRIES: u32 = 1024;
const IMAGE_SIZE: u64 = 128 << 20;
/// Past this commit-log size a checked store is replaced by a fresh one.
const STORE_BUDGET: u64 = 32 << 20;
/// The writer is killed at a random moment up to this long after its `READY`.
const MAX_DELAY_MS: u64 = 1500;
/// Commit-log bytes one writer puts at most; then it idles until killed, so a round cannot
/// fill the image (an async writer in a release build would within the delay).
const ROUND_BUDGET: u64 = 12 << 20;
/// Longest wait for the writer's `READY` (it opens the store first).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    Sync,
    Async,
}

impl Flush {
    fn name(self) -> &'static str {
        match self {
            Flush::Sync => "sync",
            Flush::Async => "async",
        }
    }

    fn named(name: &str) -> Flush {
        match name {
            "sync" => Flush::Sync,
            "async" => Flush::Async,
            other => panic!("unknown flush mode {other}"),
        }
    }

    fn mode(self) -> FlushMode {
        match self {
            // Acknowledged only once durable; never a timeout in practice.
            Flush::Sync => FlushMode::Sync {
                timeout: Duration::from_secs(600),
            },
            // The flush thread never flushes within a round.
            Flush::Async => FlushMode::Async {
                interval: Duration::from_secs(60),
                least_pages: 1 << 30,
                thorough_interval: Duration::from_secs(60),
            },
        }
    }
}

fn store_config(dir: &Path, flush: Flush) -> StoreConfig {
    StoreConfig::new(dir)
        .commit_log_file_size(FILE_SIZE)
        .consume_queue_entries_per_file(CQ_ENTRIES)
        .consume_queue_flush_interval(Duration::from_millis(50))
        .flush_mode(flush.mode())
        .index_file_shape(256, 2048)
}

/// The writer: puts from several threads until killed, printing
/// `ACK queue queue_offset physical_offset crc len producer i` for each acknowledged
/// message (its key is `{producer}-{i}`). Past
/// `ROUND_BUDGET` it stops putting and waits to be killed.
#[test]
#[ignore = "run by the power-cut tests as a child process"]
fn powercut_child() {
    let Ok(dir) = std::env::var("POWERCUT_CHILD_DIR") else {
        return;
    };
    let flush = Flush::named(&std::env::var("POWERCUT_CHILD_MODE").unwrap());
    let seed: u64 = std::env::var("POWERCUT_CHILD_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let store = Arc::new(MessageStore::open(store_config(Path::new(&dir), flush)).unwrap());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    {
        let mut o = out.lock().unwrap();
        writeln!(o, "READY").unwrap();
        o.flush().unwrap();
    }
    let written = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (store, out, written) =
                (Arc::clone(&store), Arc::clone(&out), Arc::clone(&written));
            std::thread::spawn(move || {
                for i in 0.. {
                    if written.load(Ordering::Relaxed) >= ROUND_BUDGET {
                        break;
                    }
                    let queue = ((p + i) % u64::from(QUEUES)) as u32;
                    let body = child_body(seed, p, i);
                    let crc = crc32fast::hash(&body);
                    let msg =
                        Message::new(TOPIC, queue, body.clone()).with_keys([format!("{p}-{i}")]);
                    // Batches repeat one message so every record has the same size.
                    let r = if i % 5 == 2 {
                        store
                            .put_messages(&[msg.clone(), msg.clone(), msg])
                            .unwrap()
                    } else {
                        store.put_message(&msg).unwrap()
                    };
                    written.fetch_add(u64::from(r.wrote_bytes), Ordering::Relaxed);
                    if !r.is_ok() {
                        continue; // not acknowledged as durable
                    }
                    let size = u64::from(r.wrote_bytes / r.message_count);
                    let mut o = out.lock().unwrap();
                    for k in 0..u64::from(r.message_count) {
                        writeln!(
                            o,
                            "ACK {queue} {} {} {crc} {} {p} {i}",
                            r.queue_offset + k,
                            r.physical_offset + k * size,
                            body.len(),
                        )
                        .unwrap();
                    }
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The round's share is written: wait for the power cut.
    loop {
        std::thread::park();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    queue: u32,
    queue_offset: u64,
    physical_offset: u64,
    crc: u32,
    len: usize,
    /// The message's key, `{producer}-{i}`, as the two numbers.
    key: (u64, u64),
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut f = line.strip_prefix("ACK ")?.split(' ');
    Some(Ack {
        queue: f.next()?.parse().ok()?,
        queue_offset: f.next()?.parse().ok()?,
        physical_offset: f.next()?.parse().ok()?,
        crc: f.next()?.parse().ok()?,
        len: f.next()?.parse().ok()?,
        key: (f.next()?.parse().ok()?, f.next()?.parse().ok()?),
    })
}

/// A fresh ext4 image file of `IMAGE_SIZE` bytes.
fn make_image(path: &Path) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("cannot create image: {e}"))?;
    file.set_len(IMAGE_SIZE)
        .map_err(|e| format!("cannot size image: {e}"))?;
    drop(file);
    // Inode tables and journal are initialised now, so no background thread writes to the
    // device while a round's copy is taken.
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run mkfs.ext4: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// An ext4 image loop-mounted on a temporary directory; unmounted on drop (lazily if busy),
/// also when a test panics.
struct Mounted {
    point: tempfile::TempDir,
    mounted: bool,
}

impl Mounted {
    fn mount(image: &Path) -> Result<Mounted, String> {
        let point = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,commit=600"])
            .arg(image)
            .arg(point.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot loop-mount an ext4 image (needs root and a loop device): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mounted {
            point,
            mounted: true,
        })
    }

    fn path(&self) -> &Path {
        self.point.path()
    }

    /// Unmounts; when busy, detaches lazily and reports the failure.
    fn unmount(&mut self) -> Result<(), String> {
        if !std::mem::replace(&mut self.mounted, false) {
            return Ok(());
        }
        let out = Command::new("umount")
            .arg(self.point.path())
            .output()
            .map_err(|e| format!("cannot run umount: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.point.path())
            .status();
        Err(format!(
            "umount {} failed, detached lazily: {}",
            self.point.path().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// The writer process; killed on drop if still running (a panicking test leaves no writer
/// holding the mount).
struct Writer {
    child: Child,
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one round's writer acknowledged, and how the cut went.
struct Cut {
    acks: Vec<Ack>,
    copy_time: Duration,
}

/// Runs the writer on `store_dir` (inside the mount of `image`), kills it `delay` after its
/// `READY`, and at once copies `image` to `cut`.
fn write_and_cut(
    store_dir: &Path,
    flush: Flush,
    seed: u64,
    delay: Duration,
    image: &Path,
    cut: &Path,
) -> Cut {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "powercut_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("POWERCUT_CHILD_DIR", store_dir)
        .env("POWERCUT_CHILD_MODE", flush.name())
        .env("POWERCUT_CHILD_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut writer = Writer { child };
    let stdout = writer.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acks = Vec::new();
    loop {
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.ends_with("READY") => break,
            Ok(_) => {}
            Err(e) => panic!(
                "the writer never became ready ({e:?}): {:?}",
                writer.child.try_wait()
            ),
        }
    }
    let deadline = Instant::now() + delay;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(line) => acks.extend(parse_ack(&line)),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the writer ended by itself: {:?}", writer.child.wait())
            }
        }
    }
    // The power cut: the writer dies, and the disk keeps only what the device received.
    writer.child.kill().unwrap();
    let status = writer.child.wait().unwrap();
    let started = Instant::now();
    std::fs::copy(image, cut).unwrap();
    let copy_time = started.elapsed();
    assert!(!status.success(), "the writer ended by itself: {status:?}");
    // Every line printed before the kill was acknowledged too.
    acks.extend(rx.iter().filter_map(|l| parse_ack(&l)));
    reader.join().unwrap();
    Cut { acks, copy_time }
}

/// What the store said about the acknowledged messages after a power cut.
#[derive(Debug, Default)]
struct Check {
    checked: usize,
    /// Acknowledged messages missing or different, with what was found instead.
    lost: Vec<(Ack, String)>,
    /// Consume queues disagreeing with the log or with the acknowledgements.
    queue_problems: Vec<String>,
    /// Set when the store could not even be opened: then every message counts as lost.
    open_error: Option<String>,
    log_end: u64,
    queue_max: Vec<u64>,
}

impl Check {
    fn failures(&self) -> usize {
        self.lost.len() + self.queue_problems.len()
    }
}

/// Opens the store, checks every acknowledged message and the consume queues, and shuts it
/// down cleanly. Counts problems instead of panicking.
fn check(store_dir: &Path, flush: Flush, acks: &BTreeMap<u64, Ack>) -> Check {
    let mut c = Check {
        checked: acks.len(),
        ..Check::default()
    };
    let store = match MessageStore::open(store_config(store_dir, flush)) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("open failed: {e}");
            c.lost = acks.values().map(|a| (*a, why.clone())).collect();
            c.open_error = Some(why);
            return c;
        }
    };
    c.log_end = store.max_physical_offset();
    for ack in acks.values() {
        if let Some(why) = check_ack(&store, ack) {
            c.lost.push((*ack, why));
        }
    }
    for q in 0..QUEUES {
        let max = store.max_offset_in_queue(TOPIC, q);
        c.queue_max.push(max);
        // At least as many messages as were acknowledged in it, and reaching the highest.
        let in_queue = || acks.values().filter(|a| a.queue == q);
        let acked = in_queue().count() as u64;
        let past_highest = in_queue().map(|a| a.queue_offset + 1).max().unwrap_or(0);
        if max < acked.max(past_highest) {
            c.queue_problems.push(format!(
                "queue {q} ends at {max} but {acked} were acknowledged in it, \
                 up to queue offset {}",
                past_highest.saturating_sub(1)
            ));
        }
        if let Some(why) = walk_queue(&store, q, max, c.log_end) {
            c.queue_problems.push(why);
        }
    }
    if let Err(e) = store.shutdown() {
        c.queue_problems.push(format!("shutdown failed: {e}"));
    }
    c
}

/// Why `ack` is not in the store as acknowledged, if it is not.
fn check_ack(store: &MessageStore, ack: &Ack) -> Option<String> {
    let m = match store.lookup_message(ack.physical_offset) {
        Ok(Some(m)) => m,
        Ok(None) => return Some("missing from the log".into()),
        Err(e) => return Some(format!("lookup failed: {e}")),
    };
    let found = (
        &*m.topic,
        m.queue_id,
        m.queue_offset,
        crc32fast::hash(&m.body),
        m.body.len(),
    );
    if found != (TOPIC, ack.queue, ack.queue_offset, ack.crc, ack.len) {
        return Some(format!(
            "different message there: topic/queue/queue offset/crc/len {found:?}"
        ));
    }
    if !store.wait_dispatched(ack.physical_offset, Duration::from_secs(30)) {
        return Some("never dispatched".into());
    }
    match store.get_message(TOPIC, ack.queue, ack.queue_offset, 1) {
        Ok(g) if g.status == GetStatus::Found => {
            let at = g.messages[0].physical_offset;
            if at != ack.physical_offset {
                return Some(format!("queue entry points at {at}"));
            }
        }
        Ok(g) => return Some(format!("not in its queue: {:?}", g.status)),
        Err(e) => return Some(format!("get failed: {e}")),
    }
    if !store.wait_dispatcher("index", ack.physical_offset + 1, Duration::from_secs(30)) {
        return Some("never indexed by key".into());
    }
    let key = format!("{}-{}", ack.key.0, ack.key.1);
    match store.query_message(TOPIC, &key, 100_000, 0, i64::MAX) {
        Ok(r)
            if r.messages
                .iter()
                .any(|m| m.physical_offset == ack.physical_offset) =>
        {
            None
        }
        Ok(r) => Some(format!(
            "not found by its key {key}: {} others",
            r.messages.len()
        )),
        Err(e) => Some(format!("query failed: {e}")),
    }
}

/// Walks queue `q` from 0 to `max`: consecutive queue offsets, right topic and queue,
/// valid records inside the log.
fn walk_queue(store: &MessageStore, q: u32, max: u64, log_end: u64) -> Option<String> {
    let mut offset = 0;
    while offset < max {
        let g = match store.get_message(TOPIC, q, offset, 64) {
            Ok(g) if g.status == GetStatus::Found => g,
            Ok(g) => return Some(format!("queue {q} at {offset} of {max}: {:?}", g.status)),
            Err(e) => return Some(format!("queue {q} at {offset} of {max}: {e}")),
        };
        for m in &g.messages {
            if m.queue_offset != offset
                || &*m.topic != TOPIC
                || m.queue_id != q
                || !m.crc_ok()
                || m.physical_offset >= log_end
            {
                return Some(format!(
                    "queue {q} at {offset}: record at {} is {}/{} offset {} crc ok {}",
                    m.physical_offset,
                    m.topic,
                    m.queue_id,
                    m.queue_offset,
                    m.crc_ok()
                ));
            }
            offset += 1;
        }
    }
    None
}

/// Prints what a failing round lost.
fn report(round: usize, c: &Check) {
    println!(
        "round {round}: {} of {} acknowledged messages lost or wrong, {} queue problems",
        c.lost.len(),
        c.checked,
        c.queue_problems.len()
    );
    match &c.open_error {
        Some(e) => println!("  the store did not open: {e}"),
        None => println!(
            "  the reopened store: log ends at {}, queues end at {:?}",
            c.log_end, c.queue_max
        ),
    }
    if let (Some(first), Some(last)) = (c.lost.first(), c.lost.last()) {
        println!(
            "  lost physical offsets {}..={}",
            first.0.physical_offset, last.0.physical_offset
        );
    }
    for (ack, why) in c.lost.iter().take(10) {
        println!("  {ack:?}: {why}");
    }
    for p in c.queue_problems.iter().take(10) {
        println!("  {p}");
    }
}

#[derive(Debug, Default)]
struct Totals {
    rounds: usize,
    acked: u64,
    acked_bytes: u64,
    checked: u64,
    failures: usize,
    fresh_stores: usize,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Runs up to `rounds` power cuts and stops after the first round that loses anything.
/// `None` when the machine cannot mount an ext4 image.
fn campaign(flush: Flush, rounds: usize) -> Option<Totals> {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let mut image = work.path().join("image-0");
    if let Err(why) = make_image(&image) {
        println!("skipped: {why}");
        return None;
    }
    let seed = std::env::var("POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!(
        "{} power-cut campaign: {rounds} rounds, seed {seed}",
        flush.name()
    );
    let mut rng = Rng(seed);
    let mut acks: BTreeMap<u64, Ack> = BTreeMap::new();
    let mut t = Totals::default();
    for round in 1..=rounds {
        let mut fs = match Mounted::mount(&image) {
            Ok(fs) => fs,
            Err(why) if round == 1 => {
                println!("skipped: {why}");
                return None;
            }
            Err(why) => panic!("{why}"),
        };
        let store_dir = fs.path().join("store");
        let delay = Duration::from_millis(rng.below(MAX_DELAY_MS));
        let cut_image = work.path().join(format!("image-{round}"));
        let cut = write_and_cut(&store_dir, flush, rng.next(), delay, &image, &cut_image);
        // The original, with whatever its page cache still held, is discarded.
        fs.unmount().unwrap();
        drop(fs);
        std::fs::remove_file(&image).unwrap();
        image = cut_image;
        // Under sync flush a loss is a bug: keep the image as cut, before recovery touches it.
        let pristine = (flush == Flush::Sync).then(|| {
            let p = work.path().join("pristine");
            std::fs::copy(&image, &p).unwrap();
            p
        });

        let round_acks = cut.acks.len();
        let round_bytes: u64 = cut.acks.iter().map(|a| a.len as u64).sum();
        let mut overwritten = Vec::new();
        for a in cut.acks {
            if let Some(old) = acks.insert(a.physical_offset, a) {
                overwritten.push(old);
            }
        }
        let mut fs = Mounted::mount(&image).unwrap();
        let store_dir = fs.path().join("store");
        let mut c = check(&store_dir, flush, &acks);
        // A physical offset acknowledged twice: the first message was lost before this round.
        for old in overwritten {
            c.lost
                .push((old, "its physical offset was reused by a later put".into()));
        }
        c.lost.sort_by_key(|(a, _)| a.physical_offset);
        t.rounds = round;
        t.acked += round_acks as u64;
        t.acked_bytes += round_bytes;
        t.checked += c.checked as u64;
        t.failures += c.failures();
        println!(
            "{} round {round}: cut {} ms after READY (image copied in {} ms), \
             {round_acks} acked ({:.2} MiB), log ends at {:.2} MiB, {} checked, {} lost, \
             {} queue problems",
            flush.name(),
            delay.as_millis(),
            cut.copy_time.as_millis(),
            mib(round_bytes),
            mib(c.log_end),
            c.checked,
            c.lost.len(),
            c.queue_problems.len()
        );
        if c.failures() > 0 {
            report(round, &c);
            if let Some(p) = pristine {
                let dir =
                    std::env::temp_dir().join(format!("powercut-evidence-{seed}-round{round}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::rename(&p, dir.join("image-as-cut.ext4")).unwrap();
                let lines = |items: Vec<String>| items.concat();
                let all = acks.values().map(|a| format!("{a:?}\n")).collect();
                let lost = c.lost.iter().map(|(a, why)| format!("{a:?}: {why}\n"));
                let problems = c.queue_problems.iter().map(|p| format!("{p}\n"));
                std::fs::write(dir.join("acknowledged.txt"), lines(all)).unwrap();
                std::fs::write(dir.join("lost.txt"), lines(lost.chain(problems).collect()))
                    .unwrap();
                println!("  evidence kept in {}", dir.display());
            }
            break;
        }
        if c.log_end > STORE_BUDGET {
            // Checked and shut down: start a fresh store so the image never fills.
            std::fs::remove_dir_all(&store_dir).unwrap();
            acks.clear();
            t.fresh_stores += 1;
        }
        fs.unmount().unwrap();
        if let Some(p) = pristine {
            std::fs::remove_file(p).unwrap();
        }
    }
    println!(
        "{}: {} rounds, {} messages acknowledged ({:.1} MiB of bodies), {} message checks, \
         {} lost or wrong (messages and queue problems), {} fresh stores, {:.1} s",
        flush.name(),
        t.rounds,
        t.acked,
        mib(t.acked_bytes),
        t.checked,
        t.failures,
        t.fresh_stores,
        started.elapsed().as_secs_f64()
    );
    Some(t)
}

fn rounds(default: usize) -> usize {
    std::env::var("POWERCUT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sync_flush_acknowledged_puts_survive_power_cuts() {
    let rounds = rounds(4);
    let Some(t) = campaign(Flush::Sync, rounds) else {
        return;
    };
    assert_eq!(
        t.failures, 0,
        "acknowledged messages lost after a power cut (details above)"
    );
    assert_eq!(t.rounds, rounds);
}

#[test]
fn async_flush_loses_acknowledged_puts_in_a_power_cut() {
    // The control: if no round loses anything, the harness is not cutting the power.
    let Some(t) = campaign(Flush::Async, rounds(4)) else {
        return;
    };
    assert!(
        t.failures > 0,
        "an async writer lost nothing in {} power cuts: the cut is not below the page cache",
        t.rounds
    );
}
