//! What the store counts as it runs, and the snapshot [`MessageStore::stats`] returns.
//!
//! Counting costs a few relaxed atomic adds per put and per flush; nothing here takes a
//! lock.
//!
//! [`MessageStore::stats`]: crate::MessageStore::stats

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in milliseconds, of RocketMQ's put-latency buckets
/// (`[<=0ms] [0~10ms] [10~50ms] [50~100ms] [100~200ms] [200~500ms] [500ms~1s] [1~2s] [2~3s]
/// [3~4s] [4~5s] [5~10s] [10s~]`); the last bucket has no bound.
pub const ROCKETMQ_PUT_BUCKETS_MS: [u64; 12] = [
    0, 10, 50, 100, 200, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 10_000,
];

/// Buckets of a power-of-two histogram: bucket `i` counts values below `2^i` (and at least
/// `2^(i-1)`); the last counts everything larger.
const POW2_BUCKETS: usize = 32;

/// A histogram: `counts[i]` values were at most `upper_bounds[i]` (and above the bound
/// before it); the last count, one more than there are bounds, is everything larger.
/// [`StoreStats::put_latency_rocketmq_ms`] is the exception: its buckets are RocketMQ's,
/// below each bound (a 10 ms put counts under 50), but for the first, 0, which holds what
/// rounds down to 0 ms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Histogram {
    /// Upper bound of each bucket but the last: inclusive, or exclusive for RocketMQ's
    /// buckets (see above).
    pub upper_bounds: Vec<u64>,
    /// Values per bucket; `upper_bounds.len() + 1` of them.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Values counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding the `q` quantile (`0.0..=1.0`): a value at
    /// least as large as that fraction of the values. `None` when nothing was counted or
    /// the quantile lies in the unbounded last bucket.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q.clamp(0.0, 1.0)).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return self.upper_bounds.get(i).copied();
            }
        }
        None
    }
}

/// A snapshot of the store's counters, from [`MessageStore::stats`]. Counts run from the
/// open; lags are as of the call.
///
/// [`MessageStore::stats`]: crate::MessageStore::stats
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StoreStats {
    /// Messages stored (a batch counts each of its messages).
    pub puts: u64,
    /// Bytes of the records stored.
    pub put_bytes: u64,
    /// Latency of blocking puts (`put_message`, `put_messages`), until they returned
    /// (acknowledged), in microseconds, power-of-two buckets.
    pub put_latency_us: Histogram,
    /// The same latencies in RocketMQ's buckets, in milliseconds
    /// ([`ROCKETMQ_PUT_BUCKETS_MS`]): each bucket counts puts below its bound (RocketMQ's
    /// `10~50ms` is the bucket labelled 50), the first those that round down to 0 ms.
    pub put_latency_rocketmq_ms: Histogram,
    /// Flushes of the commit log that wrote something.
    pub flushes: u64,
    /// Bytes those flushes made durable.
    pub flushed_bytes: u64,
    /// Messages those flushes made durable; never more than `puts` in one snapshot.
    pub flushed_messages: u64,
    /// Messages made durable per flush (the group-commit group size), power-of-two buckets.
    pub messages_per_flush: Histogram,
    /// Time each flush took, in microseconds, power-of-two buckets.
    pub flush_latency_us: Histogram,
    /// Bytes written to the log but not yet durable.
    pub flush_lag_bytes: u64,
    /// Bytes readable in the log but not yet in the consume queues.
    pub dispatch_lag_bytes: u64,
    /// Puts refused with [`Error::PageCacheBusy`](crate::Error::PageCacheBusy).
    pub page_cache_busy: u64,
    /// Rolls to a new commit-log file that had to wait for the allocation thread.
    pub roll_waits: u64,
    /// Time those rolls waited.
    pub roll_wait: Duration,
    /// Appends that waited for the thread working ahead of the writer in the file being
    /// written (it was writing zeros where the writer had reached).
    pub ahead_waits: u64,
    /// Time those appends waited.
    pub ahead_wait: Duration,
    /// `get_message` calls that found messages.
    pub get_hits: u64,
    /// `get_message` calls that found none.
    pub get_misses: u64,
    /// Dispatch rounds that failed (each is retried): a full disk, a failed queue write.
    pub dispatch_failures: u64,
    /// Why dispatch is failing, while it is: the consume queues (and `get_message`) lag
    /// behind the log until it succeeds again. A failure for lack of space also refuses
    /// puts ([`Error::DispatchStalled`](crate::Error::DispatchStalled)).
    pub dispatch_error: Option<String>,
    /// Each dispatcher besides the consume queues (the key index's first, named
    /// `index`, then the broker's): how far it got, its lag and its failures.
    pub dispatchers: Vec<crate::dispatch::DispatcherStats>,
    /// How the open found the end of the log.
    pub open: OpenStats,
}

/// How [`MessageStore::open`](crate::MessageStore::open) found the end of the log and
/// lined the consume queues up with it ([`StoreStats::open`]).
///
/// After a clean exit whose queue table is exact, the scan starts at the last record any
/// queue indexed, so it reads a handful of records whatever the size of the log; after a
/// crash it starts at the checkpoint and re-indexes what it reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenStats {
    /// The previous run ended with a clean shutdown.
    pub clean_exit: bool,
    /// Commit-log offset the scan started at.
    pub scanned_from: u64,
    /// Records the scan read.
    pub scanned_records: u64,
    /// Bytes of those records.
    pub scanned_bytes: u64,
    /// Records whose consume-queue entries the open wrote again: after a crash, those
    /// past the checkpoint's consume-queue offset; none after a clean exit.
    pub indexed_records: u64,
    /// The consume queues did not line up with the log and were rebuilt from all of it
    /// (the figures above are then the rebuild's).
    pub rebuilt_queues: bool,
    /// Time the recovery took (the whole open, less the store lock and the dispatchers'
    /// start).
    pub took: std::time::Duration,
}

#[cfg(feature = "metrics")]
impl StoreStats {
    /// Publishes this snapshot through the [`metrics`] facade, to whatever recorder the
    /// broker installed (Prometheus, StatsD, ...): counts as counters (`absolute`), lags
    /// as gauges, and each histogram bucket as a counter labelled with its upper bound
    /// (`bucket`, `"+Inf"` for the last). Buckets are not cumulative. Each dispatcher
    /// (the key index, a broker's) gives `rocketstore_dispatcher_lag_bytes` and
    /// `rocketstore_dispatcher_failures_total`, labelled with its name (`dispatcher`); the
    /// open gives whether the last run ended cleanly (`rocketstore_open_clean_exit`, 0 or
    /// 1), its time and what it scanned. Texts (the last dispatch error) are not exported.
    /// Call it on a timer:
    ///
    /// ```no_run
    /// # let store: rocketstore::MessageStore = unimplemented!();
    /// store.stats().export_metrics();
    /// ```
    pub fn export_metrics(&self) {
        use metrics::{counter, gauge};
        let counters = [
            ("rocketstore_puts_total", self.puts),
            ("rocketstore_put_bytes_total", self.put_bytes),
            ("rocketstore_flushes_total", self.flushes),
            ("rocketstore_flushed_bytes_total", self.flushed_bytes),
            ("rocketstore_flushed_messages_total", self.flushed_messages),
            ("rocketstore_page_cache_busy_total", self.page_cache_busy),
            ("rocketstore_roll_waits_total", self.roll_waits),
            ("rocketstore_ahead_waits_total", self.ahead_waits),
            ("rocketstore_get_hits_total", self.get_hits),
            ("rocketstore_get_misses_total", self.get_misses),
            (
                "rocketstore_dispatch_failures_total",
                self.dispatch_failures,
            ),
        ];
        for (name, value) in counters {
            counter!(name).absolute(value);
        }
        gauge!("rocketstore_flush_lag_bytes").set(self.flush_lag_bytes as f64);
        gauge!("rocketstore_dispatch_lag_bytes").set(self.dispatch_lag_bytes as f64);
        gauge!("rocketstore_roll_wait_seconds").set(self.roll_wait.as_secs_f64());
        gauge!("rocketstore_ahead_wait_seconds").set(self.ahead_wait.as_secs_f64());
        gauge!("rocketstore_open_seconds").set(self.open.took.as_secs_f64());
        gauge!("rocketstore_open_scanned_bytes").set(self.open.scanned_bytes as f64);
        gauge!("rocketstore_open_indexed_records").set(self.open.indexed_records as f64);
        gauge!("rocketstore_open_clean_exit").set(f64::from(u8::from(self.open.clean_exit)));
        for d in &self.dispatchers {
            gauge!("rocketstore_dispatcher_lag_bytes", "dispatcher" => d.name.clone())
                .set(d.lag_bytes as f64);
            counter!("rocketstore_dispatcher_failures_total", "dispatcher" => d.name.clone())
                .absolute(d.failures);
        }
        let histograms = [
            ("rocketstore_put_latency_us", &self.put_latency_us),
            (
                "rocketstore_put_latency_rocketmq_ms",
                &self.put_latency_rocketmq_ms,
            ),
            ("rocketstore_messages_per_flush", &self.messages_per_flush),
            ("rocketstore_flush_latency_us", &self.flush_latency_us),
        ];
        for (name, h) in histograms {
            for (i, count) in h.counts.iter().enumerate() {
                let bucket = h
                    .upper_bounds
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), u64::to_string);
                counter!(name, "bucket" => bucket).absolute(*count);
            }
        }
    }
}

/// What the commit log counts itself, for a snapshot.
pub(crate) struct LogFigures {
    pub(crate) puts: u64,
    pub(crate) put_bytes: u64,
    pub(crate) flush_lag_bytes: u64,
    pub(crate) dispatch_lag_bytes: u64,
}

/// Power-of-two histogram of atomics.
struct Pow2([AtomicU64; POW2_BUCKETS]);

impl Pow2 {
    fn new() -> Pow2 {
        Pow2(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    fn record(&self, value: u64) {
        let bucket = (u64::BITS - value.leading_zeros()) as usize;
        self.0[bucket.min(POW2_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Histogram {
        Histogram {
            // Bucket i holds values below 2^i, so at most 2^i - 1 (bucket 0: only 0).
            upper_bounds: (0..POW2_BUCKETS as u32 - 1)
                .map(|i| (1u64 << i) - 1)
                .collect(),
            counts: self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// The live counters, shared by the parts of the store that count.
pub(crate) struct Counters {
    put_latency_us: Pow2,
    put_latency_rocketmq: [AtomicU64; ROCKETMQ_PUT_BUCKETS_MS.len() + 1],
    flushes: AtomicU64,
    flushed_bytes: AtomicU64,
    flushed_messages: AtomicU64,
    messages_per_flush: Pow2,
    flush_latency_us: Pow2,
    page_cache_busy: AtomicU64,
    roll_waits: AtomicU64,
    roll_wait_ns: AtomicU64,
    ahead_waits: AtomicU64,
    ahead_wait_ns: AtomicU64,
    get_hits: AtomicU64,
    get_misses: AtomicU64,
    dispatch_failures: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            put_latency_us: Pow2::new(),
            put_latency_rocketmq: std::array::from_fn(|_| AtomicU64::new(0)),
            flushes: AtomicU64::new(0),
            flushed_bytes: AtomicU64::new(0),
            flushed_messages: AtomicU64::new(0),
            messages_per_flush: Pow2::new(),
            flush_latency_us: Pow2::new(),
            page_cache_busy: AtomicU64::new(0),
            roll_waits: AtomicU64::new(0),
            roll_wait_ns: AtomicU64::new(0),
            ahead_waits: AtomicU64::new(0),
            ahead_wait_ns: AtomicU64::new(0),
            get_hits: AtomicU64::new(0),
            get_misses: AtomicU64::new(0),
            dispatch_failures: AtomicU64::new(0),
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

impl Counters {
    pub(crate) fn put_latency(&self, took: Duration) {
        self.put_latency_us.record(micros(took));
        let ms = took.as_millis();
        // RocketMQ's "<=0ms" bucket is what rounds down to 0 ms.
        let bucket = ROCKETMQ_PUT_BUCKETS_MS
            .iter()
            .position(|&bound| ms <= u128::from(bound) && (bound == 0 || ms < u128::from(bound)))
            .unwrap_or(ROCKETMQ_PUT_BUCKETS_MS.len());
        self.put_latency_rocketmq[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn flushed(&self, bytes: u64, messages: u64, took: Duration) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        // Release: a snapshot that sees these counts sees the puts they count (see
        // `Counters::snapshot`).
        self.flushed_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.flushed_messages.fetch_add(messages, Ordering::Release);
        self.messages_per_flush.record(messages);
        self.flush_latency_us.record(micros(took));
    }

    pub(crate) fn page_cache_busy(&self) {
        self.page_cache_busy.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn roll_waited(&self, took: Duration) {
        self.roll_waits.fetch_add(1, Ordering::Relaxed);
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.roll_wait_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn ahead_waited(&self, waits: u32, took: Duration) {
        self.ahead_waits
            .fetch_add(u64::from(waits), Ordering::Relaxed);
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.ahead_wait_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn dispatch_failed(&self) {
        self.dispatch_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn got(&self, found: bool) {
        let c = if found {
            &self.get_hits
        } else {
            &self.get_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as they are now, with what the log knows itself: what it stored and
    /// how far behind its flush and dispatch are.
    /// The counters, with the log's figures from `log`, read after the flush counts: the
    /// messages a flush counted were put before, so `flushed_messages <= puts` in every
    /// snapshot (an exporter may subtract them).
    pub(crate) fn snapshot(&self, log: impl FnOnce() -> LogFigures) -> StoreStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let flushed_bytes = self.flushed_bytes.load(Ordering::Relaxed);
        let flushed_messages = self.flushed_messages.load(Ordering::Acquire);
        let LogFigures {
            puts,
            put_bytes,
            flush_lag_bytes,
            dispatch_lag_bytes,
        } = log();
        StoreStats {
            puts,
            put_bytes,
            put_latency_us: self.put_latency_us.snapshot(),
            put_latency_rocketmq_ms: Histogram {
                upper_bounds: ROCKETMQ_PUT_BUCKETS_MS.to_vec(),
                counts: self.put_latency_rocketmq.iter().map(load).collect(),
            },
            flushes: load(&self.flushes),
            flushed_bytes,
            flushed_messages,
            messages_per_flush: self.messages_per_flush.snapshot(),
            flush_latency_us: self.flush_latency_us.snapshot(),
            flush_lag_bytes,
            dispatch_lag_bytes,
            page_cache_busy: load(&self.page_cache_busy),
            roll_waits: load(&self.roll_waits),
            roll_wait: Duration::from_nanos(load(&self.roll_wait_ns)),
            ahead_waits: load(&self.ahead_waits),
            ahead_wait: Duration::from_nanos(load(&self.ahead_wait_ns)),
            get_hits: load(&self.get_hits),
            get_misses: load(&self.get_misses),
            dispatch_failures: load(&self.dispatch_failures),
            dispatch_error: None,
            dispatchers: Vec::new(),
            open: OpenStats::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> LogFigures {
        LogFigures {
            puts: 0,
            put_bytes: 0,
            flush_lag_bytes: 0,
            dispatch_lag_bytes: 0,
        }
    }

    #[test]
    fn rocketmq_buckets_put_each_latency_where_rocketmq_does() {
        let c = Counters::default();
        for ms in [0, 9, 10, 49, 50, 999, 1_000, 10_000, 60_000] {
            c.put_latency(Duration::from_millis(ms));
        }
        c.put_latency(Duration::from_micros(300));
        let h = c.snapshot(figures).put_latency_rocketmq_ms;
        // <=0ms: 0 and 300 µs; 0~10: 9; 10~50: 10, 49; 50~100: 50; 500ms~1s: 999;
        // 1~2s: 1000; 10s~: 10000 and 60000.
        assert_eq!(h.counts, [2, 1, 2, 1, 0, 0, 1, 1, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn pow2_histogram_and_quantiles() {
        let p = Pow2::new();
        for v in [0, 1, 2, 3, 4, 100, 1000] {
            p.record(v);
        }
        let h = p.snapshot();
        assert_eq!(h.total(), 7);
        assert_eq!(&h.counts[..4], [1, 1, 2, 1]);
        assert_eq!(h.quantile(0.5), Some(3));
        assert_eq!(h.quantile(1.0), Some(1023));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
