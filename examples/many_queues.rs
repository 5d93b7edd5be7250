//! Many queues: puts a few messages to each of many queues of one topic, then reports what
//! that costs — dispatch time, disk used by `consumequeue/`, heap, the reopen after a crash
//! and after a clean exit — and reads every message back through its queue. One JSON line
//! per phase. Exits non-zero if any message is missing.
//!
//! `cargo run --release --example many_queues -- --queues 100000 --per-queue 3`
//!
//! Each phase runs in a process of its own, so each reports its own memory. The writing
//! phase exits without shutting the store down, so the first reopen is a crash recovery
//! (with the page cache warm); it shuts down cleanly, and the second reopen is a clean one.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use rocketstore::{FlushMode, GetStatus, Message, MessageStore, StoreConfig, layout};

#[derive(Parser, Debug)]
#[command(
    about = "Put a few messages to each of many queues; measure dispatch, disk, heap and reopen"
)]
struct Args {
    /// Store directory, left in place (a temporary one in the current directory when
    /// omitted, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Queues of the topic.
    #[arg(long, default_value_t = 100_000)]
    queues: u32,
    /// Messages per queue, put round-robin over the queues.
    #[arg(long, default_value_t = 3)]
    per_queue: u32,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Commit-log file size in bytes (default: the store's default, 1 GiB).
    #[arg(long)]
    file_size: Option<u64>,
    /// Print the store's log (debug and above) on stderr, each line with the seconds since
    /// the phase's process started: recovery reports its phases.
    #[arg(long)]
    log: bool,
    /// Internal: run one phase in --dir.
    #[arg(long, hide = true)]
    phase: Option<String>,
}

/// The `--log` logger: every record on stderr with the time since it was installed.
struct StderrLog(std::time::Instant);

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        let at = self.0.elapsed().as_secs_f64();
        eprintln!("[{at:8.3}s] {:5} {}: {}", r.level(), r.target(), r.args());
    }
    fn flush(&self) {}
}

const TOPIC: &str = "ManyQueues";

fn config(dir: &Path, args: &Args) -> StoreConfig {
    // The defaults, but async flush (1 GiB commit-log files, 300,000 entries per queue
    // file) and no disk-usage guard (a shared machine's disk may look fuller than ours).
    let config = StoreConfig::new(dir)
        .flush_mode(FlushMode::async_default())
        .disk_full_ratio(1.0)
        .disk_clean_ratios(1.0, 1.0);
    match args.file_size {
        Some(size) => config.commit_log_file_size(size),
        None => config,
    }
}

fn body(queue: u32, n: u32, size: usize) -> Bytes {
    let mut b = format!("{queue}:{n}:").into_bytes();
    b.resize(size.max(b.len()), b'q');
    Bytes::from(b)
}

/// Anonymous resident memory of this process (heap and stacks), in bytes.
fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Disk blocks used under `dir` (files and directories), in bytes.
fn disk_used(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&d)
        {
            stack.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    total
}

fn main() {
    let args = Args::parse();
    if args.log {
        let logger = Box::leak(Box::new(StderrLog(std::time::Instant::now())));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    }
    let result = match args.phase.as_deref() {
        Some("write") => write_and_crash(&args),
        Some(phase) => reopen(&args, phase),
        None => run(&args),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("many_queues: {e}");
            std::process::exit(2);
        }
    }
}

type Outcome = Result<bool, Box<dyn std::error::Error>>;

/// The child: puts, waits for dispatch, reports, exits with the store still open.
fn write_and_crash(args: &Args) -> Outcome {
    let dir = args.dir.as_ref().ok_or("--phase needs --dir")?;
    let store = MessageStore::open(config(dir, args))?;
    let total = u64::from(args.queues) * u64::from(args.per_queue);
    let started = Instant::now();
    let mut last = 0;
    for i in 0..total {
        let queue = (i % u64::from(args.queues)) as u32;
        let n = (i / u64::from(args.queues)) as u32;
        let msg = Message::new(TOPIC, queue, body(queue, n, args.size));
        last = store.put_message(&msg)?.physical_offset;
    }
    let put_secs = started.elapsed().as_secs_f64();
    if !store.wait_dispatched(last, Duration::from_secs(3600)) {
        return Err("dispatch did not finish".into());
    }
    let dispatch_secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"phase\":\"write\",\"queues\":{},\"messages\":{total},\"put_secs\":{put_secs:.3},\
         \"dispatched_secs\":{dispatch_secs:.3},\"dispatch_after_puts_secs\":{:.3},\
         \"rss_anon_mib\":{:.1}}}",
        args.queues,
        dispatch_secs - put_secs,
        rss_anon() as f64 / f64::from(1 << 20),
    );
    // A crash: no shutdown, the abort marker stays.
    std::process::exit(0);
}

/// Reads every queue back; returns how many messages were missing or wrong.
fn read_all(store: &MessageStore, args: &Args) -> Result<(u64, f64), rocketstore::Error> {
    let started = Instant::now();
    let mut bad = 0;
    for queue in 0..args.queues {
        let got = store.get_message(TOPIC, queue, 0, args.per_queue as usize)?;
        let ok = got.status == GetStatus::Found
            && got.messages.len() == args.per_queue as usize
            && got
                .messages
                .iter()
                .enumerate()
                .all(|(n, m)| m.body == body(queue, n as u32, args.size));
        if !ok {
            bad += 1;
        }
    }
    Ok((bad, started.elapsed().as_secs_f64()))
}

/// A reopen phase: opens, reads every queue, reports, shuts down cleanly.
fn reopen(args: &Args, phase: &str) -> Outcome {
    let dir = args.dir.as_ref().ok_or("--phase needs --dir")?;
    let started = Instant::now();
    let store = MessageStore::open(config(dir, args))?;
    let open_secs = started.elapsed().as_secs_f64();
    let rss_open = rss_anon();
    let o = store.stats().open;
    let (bad, read_secs) = read_all(&store, args)?;
    println!(
        "{{\"phase\":\"{phase}\",\"open_secs\":{open_secs:.3},\"read_all_secs\":{read_secs:.3},\
         \"scanned_records\":{},\"indexed_records\":{},\"rebuilt_queues\":{},\
         \"queues_missing_messages\":{bad},\"rss_anon_mib_after_open\":{:.1},\
         \"rss_anon_mib_after_reads\":{:.1}}}",
        o.scanned_records,
        o.indexed_records,
        o.rebuilt_queues,
        rss_open as f64 / f64::from(1 << 20),
        rss_anon() as f64 / f64::from(1 << 20),
    );
    let started = Instant::now();
    store.shutdown()?;
    println!(
        "{{\"phase\":\"{phase}_shutdown\",\"secs\":{:.3}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(bad == 0)
}

fn run(args: &Args) -> Outcome {
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir_in(".")?;
            temp.path().to_owned()
        }
    };
    let phase = |name: &str| -> Result<bool, Box<dyn std::error::Error>> {
        let mut child = Command::new(std::env::current_exe()?);
        if let Some(size) = args.file_size {
            child.args(["--file-size", &size.to_string()]);
        }
        if args.log {
            child.arg("--log");
        }
        let status = child
            .args(["--phase", name])
            .arg("--dir")
            .arg(&dir)
            .args(["--queues", &args.queues.to_string()])
            .args(["--per-queue", &args.per_queue.to_string()])
            .args(["--size", &args.size.to_string()])
            .status()?;
        match status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(format!("phase {name} failed: {status}").into()),
        }
    };
    let mut ok = phase("write")?;
    let cq = layout::consume_queue_dir(&dir);
    println!(
        "{{\"phase\":\"disk\",\"queue_disk_mib\":{:.1},\"log_disk_mib\":{:.1}}}",
        disk_used(&cq) as f64 / f64::from(1 << 20),
        disk_used(&layout::commit_log_dir(&dir)) as f64 / f64::from(1 << 20),
    );
    ok &= phase("crash_reopen")?;
    ok &= phase("clean_reopen")?;
    Ok(ok)
}
