//! Load generator, like RocketMQ's benchmark producer: puts from many threads, reports
//! progress every second, ends with one JSON line, then reads everything back through the
//! consume queues and verifies every body. Exits non-zero if any check fails.
//!
//! `cargo run --release --example load -- --seconds 10 --producers 4 --flush async`

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use rocketstore::{FlushMode, GetStatus, Message, MessageStore, PutStatus, StoreConfig, Warmup};

#[derive(Parser, Debug)]
#[command(about = "Put load on a rocketstore and verify it reads back")]
struct Args {
    /// Store directory, left in place for the dumper (a temporary one when omitted).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages to put in all (ignored with --seconds).
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Put for this many seconds instead of a count (at most ten years).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=315_360_000))]
    seconds: Option<u64>,
    /// Producer threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    producers: u32,
    /// Queues of the topic; every producer spreads its messages over all of them.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    queues: u32,
    /// Commit-log file size in bytes (default: the store's default, 1 GiB).
    #[arg(long)]
    file_size: Option<u64>,
    /// After each acknowledged blocking sync put, check that the store's flushed offset
    /// covers it (single puts only: not with --inflight or --batch).
    #[arg(long)]
    check_durable: bool,
    /// Flush mode.
    #[arg(long, value_enum, default_value_t = Flush::Async)]
    flush: Flush,
    /// How new commit-log files are prepared (default: the store's choice for the flush
    /// mode).
    #[arg(long, value_enum)]
    warmup: Option<WarmupArg>,
    /// Outstanding `put_message_async` futures per producer (0: blocking puts).
    #[arg(long, default_value_t = 0)]
    inflight: usize,
    /// Keys per message (the `KEYS` property), for the key index to index.
    #[arg(long, default_value_t = 0)]
    keys: u32,
    /// Messages per `put_messages` batch (1: single puts).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    batch: usize,
    /// Put at most this many messages a second in all (shared evenly by the producers),
    /// to see whether dispatch and the key index keep up with a given rate: a producer
    /// ahead of its schedule by a millisecond or more sleeps. Unpaced when omitted.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
}

/// A count that must be at least one.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of at least one")),
    }
}

/// A `--rate`: a finite number of messages a second, at least one.
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 1.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate of at least one message a second"
        )),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Flush {
    Sync,
    Async,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WarmupArg {
    None,
    Touch,
    ZeroAndFlush,
}

/// Message `n` of producer `p` to `queue`, with `keys` keys.
fn message(p: u32, n: u64, size: usize, queue: u32, keys: u32) -> Message {
    let m = Message::new("Load", queue, body(p, n, size));
    if keys == 0 {
        return m;
    }
    m.with_keys((0..keys).map(|k| format!("{p}-{n}-{k}")))
}

/// The body of message `n` of producer `p`: its identity, then filler. Built without
/// the formatting machinery, which cost the producer 15% of its time at 100 B bodies.
fn body(p: u32, n: u64, size: usize) -> Bytes {
    let mut b = Vec::with_capacity(size.max(32));
    push_decimal(&mut b, u64::from(p));
    b.push(b':');
    push_decimal(&mut b, n);
    b.push(b':');
    b.resize(size.max(b.len()), b'a' + (n % 26) as u8);
    Bytes::from(b)
}

fn push_decimal(b: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    b.extend_from_slice(&digits[at..]);
}

/// Put latencies, in a log-linear histogram (64 sub-buckets per power of two of
/// nanoseconds, so quantiles are within 1.6%), with the exact maximum: a fixed-size
/// record instead of a growing list, which at millions of puts cost the producers
/// reallocations and page faults between puts. The slowest puts are kept with when they
/// began, to line them up with rolls, flushes or a trace taken beside the run.
struct Latencies {
    counts: Vec<u64>,
    max: Duration,
    /// The `SLOWEST` longest puts, longest first: (latency, start since the run began).
    slowest: Vec<(Duration, Duration)>,
}

/// How many of the slowest puts the report lists.
const SLOWEST: usize = 10;

impl Latencies {
    const SUB: u32 = 6;

    fn new() -> Self {
        Latencies {
            counts: vec![0; 64 << Self::SUB],
            max: Duration::ZERO,
            slowest: Vec::with_capacity(SLOWEST + 1),
        }
    }

    fn bucket(ns: u64) -> usize {
        let bits = u64::BITS - ns.leading_zeros();
        if bits <= Self::SUB {
            return ns as usize;
        }
        let shift = bits - Self::SUB - 1;
        (((shift + 1) << Self::SUB) as usize) + ((ns >> shift) as usize & ((1 << Self::SUB) - 1))
    }

    /// The largest value a bucket holds.
    fn upper(bucket: usize) -> u64 {
        let sub = 1usize << Self::SUB;
        if bucket < sub {
            return bucket as u64;
        }
        let shift = (bucket / sub - 1) as u32;
        let mantissa = (sub + bucket % sub) as u64;
        ((mantissa + 1) << shift) - 1
    }

    /// Records a put that took `d` and began `at` after the run did.
    fn record(&mut self, d: Duration, at: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(ns)] += 1;
        self.max = self.max.max(d);
        if self.slowest.len() < SLOWEST || d > self.slowest[SLOWEST - 1].0 {
            self.keep_slow(d, at);
        }
    }

    fn keep_slow(&mut self, d: Duration, at: Duration) {
        let i = self.slowest.partition_point(|(s, _)| *s >= d);
        self.slowest.insert(i, (d, at));
        self.slowest.truncate(SLOWEST);
    }

    fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
        for &(d, at) in &other.slowest {
            self.keep_slow(d, at);
        }
    }

    fn len(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn quantile(&self, q: f64) -> Duration {
        let rank = ((self.len().max(1) - 1) as f64 * q) as u64;
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen > rank {
                return Duration::from_nanos(Self::upper(bucket)).min(self.max);
            }
        }
        self.max
    }

    /// Counts per power-of-two microsecond bucket (`<1us`, `<2us`, ...).
    fn power_of_two_us(&self) -> Vec<u64> {
        let mut hist = vec![0u64; 40];
        for (bucket, count) in self.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let us = Self::upper(bucket) / 1000;
            hist[((u64::BITS - us.leading_zeros()) as usize).min(39)] += count;
        }
        hist
    }
}

/// CPU time while the puts ran, read from procfs: the machine's (all processes, the
/// kernel's write-back threads included) and this process's, by thread. The store's
/// threads live through the run; the producers have ended by the second reading, so their
/// time is what the process spent beyond the threads still listed. Linux only: elsewhere
/// the report leaves it out.
struct CpuTimes {
    /// `/proc/stat`'s first line: (busy, all) in clock ticks.
    machine: Option<(u64, u64)>,
    /// `/proc/self/stat`: (user, system) ticks of the process, ended threads included.
    process: Option<(u64, u64)>,
    /// `/proc/self/task/*/stat`: thread id, name, (user, system) ticks.
    threads: Vec<(u32, String, (u64, u64))>,
}

/// `s` as a JSON string: thread names come from the executable's name, which may hold
/// quotes or backslashes.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Clock ticks per second in procfs (`USER_HZ`, fixed at 100 by the kernel's ABI).
const TICKS: f64 = 100.0;

impl CpuTimes {
    fn now() -> CpuTimes {
        let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            let ticks: Vec<u64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
            let all: u64 = ticks.iter().take(8).sum();
            let idle = ticks.get(3)? + ticks.get(4)?;
            Some((all - idle, all))
        });
        let threads = std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.filter_map(|e| {
                    let e = e.ok()?;
                    let tid = e.file_name().to_str()?.parse().ok()?;
                    let (name, ticks) = Self::stat(&e.path().join("stat"))?;
                    Some((tid, name, ticks))
                })
                .collect()
            })
            .unwrap_or_default();
        CpuTimes {
            machine,
            process: Self::stat(std::path::Path::new("/proc/self/stat")).map(|(_, t)| t),
            threads,
        }
    }

    /// A `stat` file's command name and (user, system) ticks, fields 14 and 15.
    fn stat(path: &std::path::Path) -> Option<(String, (u64, u64))> {
        let s = String::from_utf8_lossy(&std::fs::read(path).ok()?).into_owned();
        let (open, close) = (s.find('(')?, s.rfind(')')?);
        let name = s[open + 1..close].to_string();
        let fields: Vec<&str> = s[close + 1..].split_whitespace().collect();
        // Fields after the name start at field 3 (the state).
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some((name, (field(14)?, field(15)?)))
    }

    /// The report from `start` to `self`, as a JSON object: the machine's busy share of
    /// all its CPUs, and seconds of user and system time by thread name.
    fn report_since(&self, start: &CpuTimes) -> String {
        let secs = |ticks: u64| ticks as f64 / TICKS;
        let pair = |(u, s): (u64, u64)| format!("[{:.2},{:.2}]", secs(u), secs(s));
        let mut parts = Vec::new();
        if let (Some((b1, a1)), Some((b0, a0))) = (self.machine, start.machine) {
            // Idle and iowait may go back a little (proc(5)): never below 0 or above 1.
            let busy = b1.saturating_sub(b0) as f64 / a1.saturating_sub(a0).max(1) as f64;
            let busy = busy.clamp(0.0, 1.0);
            parts.push(format!("\"machine_busy\":{busy:.3}"));
        }
        let (Some(p1), Some(p0)) = (self.process, start.process) else {
            return format!("{{{}}}", parts.join(","));
        };
        let process = (p1.0.saturating_sub(p0.0), p1.1.saturating_sub(p0.1));
        parts.push(format!("\"process_s\":{}", pair(process)));
        // Live threads by name (the store's threads have distinct names, but for the
        // dispatchers' shared prefix), summed where names repeat.
        let mut by_name: Vec<(String, (u64, u64))> = Vec::new();
        let mut listed = (0, 0);
        for (tid, name, (u, s)) in &self.threads {
            let (u0, s0) = start
                .threads
                .iter()
                .find(|(t, _, _)| t == tid)
                .map_or((0, 0), |(_, _, t)| *t);
            let d = (u.saturating_sub(u0), s.saturating_sub(s0));
            listed = (listed.0 + d.0, listed.1 + d.1);
            match by_name.iter_mut().find(|(n, _)| n == name) {
                Some((_, t)) => *t = (t.0 + d.0, t.1 + d.1),
                None => by_name.push((name.clone(), d)),
            }
        }
        by_name.retain(|(_, (u, s))| u + s > 0);
        by_name.sort_by_key(|(_, (u, s))| std::cmp::Reverse(u + s));
        let mut threads: Vec<String> = by_name
            .iter()
            .map(|(n, t)| format!("{}:{}", json_string(n), pair(*t)))
            .collect();
        let ended = (
            process.0.saturating_sub(listed.0),
            process.1.saturating_sub(listed.1),
        );
        threads.push(format!("\"producers (ended)\":{}", pair(ended)));
        parts.push(format!("\"threads_s\":{{{}}}", threads.join(",")));
        format!("{{{}}}", parts.join(","))
    }
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2);
        }
    }
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let mode = match args.flush {
        Flush::Sync => FlushMode::sync(),
        Flush::Async => FlushMode::default(),
    };
    let mut config = StoreConfig::new(&dir).flush_mode(mode);
    if let Some(size) = args.file_size {
        config = config.commit_log_file_size(size);
    }
    if let Some(w) = args.warmup {
        config = config.warmup(match w {
            WarmupArg::None => Warmup::None,
            WarmupArg::Touch => Warmup::Touch,
            WarmupArg::ZeroAndFlush => Warmup::ZeroAndFlush,
        });
    }
    let store = Arc::new(MessageStore::open(config)?);
    let not_durable = Arc::new(AtomicU64::new(0));
    let before: Vec<u64> = (0..args.queues)
        .map(|q| store.max_offset_in_queue("Load", q))
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    let per_producer = args.count.div_ceil(u64::from(args.producers));
    let cpu_at_start = CpuTimes::now();
    let started = Instant::now();

    let producers: Vec<_> = (0..args.producers)
        .map(|p| {
            let (store, done, failed) =
                (Arc::clone(&store), Arc::clone(&done), Arc::clone(&failed));
            let not_durable = Arc::clone(&not_durable);
            let check_durable = args.check_durable && matches!(args.flush, Flush::Sync);
            let producers = u64::from(args.producers);
            let (size, queues, inflight, batch, keys) = (
                args.size,
                args.queues,
                args.inflight,
                args.batch.max(1),
                args.keys,
            );
            // Seconds per message for this producer, when paced.
            let pace = args.rate.map(|r| f64::from(args.producers) / r);
            std::thread::spawn(move || -> Latencies {
                let mut latencies = Latencies::new();
                let mut pending = std::collections::VecDeque::new();
                let mut n = 0u64;
                // A blocking put begins when the last one ended: one reading of the clock
                // a put instead of two (the latency then counts building the message).
                let mut last_end: Option<Instant> = None;
                let more = |n: u64| match deadline {
                    Some(d) => Instant::now() < d,
                    None => n < per_producer,
                };
                while more(n) && !failed.load(Ordering::Relaxed) {
                    if let Some(pace) = pace {
                        let due = started + Duration::from_secs_f64(n as f64 * pace);
                        let ahead = due.saturating_duration_since(Instant::now());
                        if ahead >= Duration::from_millis(1) {
                            std::thread::sleep(ahead);
                            last_end = None;
                        }
                    }
                    // Message n of producer p goes to queue (p + n * producers) mod queues, so
                    // even one producer writes every queue (a batch goes to one queue).
                    let queue = ((u64::from(p) + n * producers) % u64::from(queues)) as u32;
                    let begin = last_end.take().unwrap_or_else(Instant::now);
                    let result = if inflight > 0 {
                        pending.push_back((
                            begin,
                            store.put_message_async(message(p, n, size, queue, keys)),
                        ));
                        n += 1;
                        if pending.len() < inflight {
                            continue;
                        }
                        let (begin, fut) = pending.pop_front().expect("non-empty");
                        let r = pollster::block_on(fut);
                        latencies.record(begin.elapsed(), begin.duration_since(started));
                        r.map(|r| (r.status, 1))
                    } else if batch > 1 {
                        let msgs: Vec<_> = (0..batch as u64)
                            .map(|k| message(p, n + k, size, queue, keys))
                            .collect();
                        n += batch as u64;
                        let r = store.put_messages(&msgs);
                        let end = Instant::now();
                        latencies.record(end - begin, begin.duration_since(started));
                        last_end = Some(end);
                        r.map(|r| (r.status, batch as u64))
                    } else {
                        let r = store.put_message(&message(p, n, size, queue, keys));
                        n += 1;
                        let end = Instant::now();
                        latencies.record(end - begin, begin.duration_since(started));
                        last_end = Some(end);
                        if check_durable
                            && let Ok(r) = &r
                            && r.status == PutStatus::Ok
                            && store.flushed_physical_offset() < r.end_offset()
                        {
                            not_durable.fetch_add(1, Ordering::Relaxed);
                        }
                        r.map(|r| (r.status, 1))
                    };
                    match result {
                        Ok((PutStatus::Ok, k)) => {
                            done.fetch_add(k, Ordering::Relaxed);
                        }
                        Ok((status, _)) => {
                            eprintln!("producer {p}: put not confirmed: {status:?}");
                            failed.store(true, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("producer {p}: {e}");
                            failed.store(true, Ordering::Relaxed);
                        }
                    }
                }
                for (begin, fut) in pending {
                    match pollster::block_on(fut) {
                        Ok(r) if r.status == PutStatus::Ok => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            eprintln!("producer {p}: {other:?}");
                            failed.store(true, Ordering::Relaxed);
                        }
                    }
                    latencies.record(begin.elapsed(), begin.duration_since(started));
                }
                latencies
            })
        })
        .collect();

    let mut last = 0;
    // The most the consume queues and the key index fell behind while the puts ran,
    // sampled every 100 ms.
    let (mut max_dispatch_lag, mut max_index_lag) = (0u64, 0u64);
    while producers.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let s = store.stats();
        max_dispatch_lag = max_dispatch_lag.max(s.dispatch_lag_bytes);
        let index = s.dispatchers.iter().find(|d| d.name == "index");
        max_index_lag = max_index_lag.max(index.map_or(0, |d| d.lag_bytes));
        if started.elapsed().as_secs() > last {
            last = started.elapsed().as_secs();
            let n = done.load(Ordering::Relaxed);
            let rate = n as f64 / started.elapsed().as_secs_f64();
            eprintln!(
                "{last:>4}s {n:>10} msgs  {rate:>10.0} msg/s  {:>8.1} MB/s",
                rate * args.size as f64 / 1e6
            );
        }
    }
    let mut latencies = Latencies::new();
    for h in producers {
        latencies.merge(&h.join().map_err(|_| "a producer panicked")?);
    }
    let took = started.elapsed();
    let cpu = CpuTimes::now().report_since(&cpu_at_start);
    let total = done.load(Ordering::Relaxed);
    // The key index's lag when the puts ended, and how long it then took to catch up.
    let end = store.max_physical_offset();
    let index_lag = store
        .stats()
        .dispatchers
        .iter()
        .find(|d| d.name == "index")
        .map_or(0, |d| d.lag_bytes);
    let index_caught_up = store.wait_dispatcher("index", end, Duration::from_secs(120));
    let index_took = started.elapsed();
    let pct = |p: f64| latencies.quantile(p);

    // Read everything back through the consume queues and check every body.
    let last_offset = store.max_physical_offset();
    let mut ok = !failed.load(Ordering::Relaxed);
    // Everything below the end of the log must become readable by queue.
    if last_offset > 0 && !store.wait_dispatched(last_offset - 1, Duration::from_secs(60)) {
        eprintln!("the log was not fully indexed within 60 s");
        ok = false;
    }
    let read_started = Instant::now();
    let mut read = 0u64;
    for q in 0..args.queues {
        let mut offset = before[q as usize];
        loop {
            let g = store.get_message("Load", q, offset, 32)?;
            match g.status {
                GetStatus::Found => {}
                GetStatus::OffsetOverflowOne | GetStatus::NoMessageInQueue => break,
                other => {
                    eprintln!("queue {q} at {offset}: {other:?}");
                    ok = false;
                    break;
                }
            }
            for m in &g.messages {
                let id = m
                    .body
                    .split(|&b| b == b':')
                    .take(2)
                    .map(|s| std::str::from_utf8(s).unwrap_or("?"))
                    .collect::<Vec<_>>();
                let good = id.len() == 2
                    && m.crc_ok()
                    && match (id[0].parse::<u32>(), id[1].parse::<u64>()) {
                        (Ok(p), Ok(n)) => m.body == body(p, n, args.size),
                        _ => false,
                    };
                if !good {
                    eprintln!("queue {q} offset {}: body does not match", m.queue_offset);
                    ok = false;
                }
                read += 1;
            }
            offset = g.next_offset;
        }
    }
    let read_took = read_started.elapsed();
    let lost = not_durable.load(Ordering::Relaxed);
    if lost > 0 {
        eprintln!("{lost} acknowledged sync puts were past the flushed offset");
        ok = false;
    }
    let stats = store.stats();
    // Latency histogram: power-of-two microsecond buckets that hold anything.
    let hist: Vec<String> = latencies
        .power_of_two_us()
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| format!("\"<{}us\":{c}", 1u64 << i))
        .collect();
    let slowest: Vec<String> = latencies
        .slowest
        .iter()
        .map(|(d, at)| {
            format!(
                "{{\"at_ms\":{:.1},\"us\":{:.1}}}",
                at.as_secs_f64() * 1e3,
                d.as_secs_f64() * 1e6
            )
        })
        .collect();
    let group = |q: f64| stats.messages_per_flush.quantile(q).unwrap_or(0);
    let flush_us = |q: f64| stats.flush_latency_us.quantile(q).unwrap_or(0);
    if !index_caught_up {
        eprintln!("the key index did not catch up within 120 s");
        ok = false;
    }
    if read != total {
        eprintln!("read back {read} messages, {total} were acknowledged");
        ok = false;
    }
    println!(
        "{{\"messages\":{total},\"seconds\":{:.3},\"msgs_per_s\":{:.0},\"mb_per_s\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1},\"read_msgs_per_s\":{:.0},\"flushes\":{},\"msgs_per_flush_mean\":{:.1},\"msgs_per_flush_p50\":{},\"msgs_per_flush_p99\":{},\"flush_us_p50\":{},\"flush_us_p99\":{},\"roll_waits\":{},\"roll_wait_ms\":{:.1},\"ahead_waits\":{},\"ahead_wait_ms\":{:.1},\"index_lag_bytes_at_end\":{index_lag},\"max_dispatch_lag_bytes\":{max_dispatch_lag},\"max_index_lag_bytes\":{max_index_lag},\"index_msgs_per_s\":{:.0},\"latency_hist\":{{{}}},\"slowest\":[{}],\"cpu\":{cpu},\"verified\":{ok}}}",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        total as f64 * args.size as f64 / took.as_secs_f64() / 1e6,
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        pct(0.999).as_secs_f64() * 1e6,
        latencies.max.as_secs_f64() * 1e6,
        read as f64 / read_took.as_secs_f64(),
        stats.flushes,
        stats.flushed_messages as f64 / stats.flushes.max(1) as f64,
        group(0.5),
        group(0.99),
        flush_us(0.5),
        flush_us(0.99),
        stats.roll_waits,
        stats.roll_wait.as_secs_f64() * 1e3,
        stats.ahead_waits,
        stats.ahead_wait.as_secs_f64() * 1e3,
        total as f64 / index_took.as_secs_f64(),
        hist.join(","),
        slowest.join(","),
    );
    store.shutdown()?;
    Ok(ok)
}
