//! The store dumper: prints and checks the files of a RocketMQ-layout store, read-only, and
//! never needs the store to have been closed cleanly. A printer over the crate's reader
//! (`rocketstore::inspect`, which also holds every check `--verify` runs) and record codec.
//! `cargo run --release --example dump -- <path> [options]`; `--help` lists them.

use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow::{self, Break, Continue};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat::Millis};
use clap::Parser;
use rocketstore::CheckpointTimes;
use rocketstore::format::RecordView;
use rocketstore::inspect::{self, IndexFileBytes, Item, LogFiles, Target, Totals};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Print and verify rocketstore / RocketMQ store files (read-only)")]
struct Args {
    /// A store root, commitlog/, a consume queue, index/, one of their files, or the checkpoint.
    path: PathBuf,
    /// Show records from this commit-log offset on.
    #[arg(long)]
    from: Option<u64>,
    /// Show records starting before this commit-log offset.
    #[arg(long)]
    to: Option<u64>,
    /// Only records of this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only records of this queue id.
    #[arg(long)]
    queue: Option<u32>,
    /// Stop after this many lines.
    #[arg(long)]
    limit: Option<u64>,
    /// Show a preview (64 bytes) of each body, as hex or as UTF-8.
    #[arg(long, value_parser = ["hex", "utf8"])]
    body: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Per topic/queue and per file totals instead of one line per record.
    #[arg(long)]
    summary: bool,
    /// Check every record, and every queue and index entry against its record (all under the
    /// path: filters do not apply); print each problem, exit 1 if there is any.
    #[arg(long)]
    verify: bool,
    /// Hash slots per index file (the store's `index_hash_slots`).
    #[arg(long, default_value_t = 5_000_000)]
    index_slots: u32,
    /// Entries per index file (the store's `index_entries`).
    #[arg(long, default_value_t = 20_000_000)]
    index_entries: u32,
}

impl Args {
    fn in_range(&self, offset: u64) -> bool {
        self.from.is_none_or(|f| offset >= f) && self.to.is_none_or(|t| offset < t)
    }
}

/// One line of output: its text, and the JSON object `--json` prints instead.
type Row = (String, Value);

/// A [`Row`] of kind `$kind` from named fields: the text is `$text` (which may use any
/// local), the JSON object holds `kind` and the fields (`name = value`, or a local's name).
macro_rules! row {
    ($kind:literal, $text:literal $(, $field:ident $(= $value:expr)?)* $(,)?) => {{
        $($(let $field = $value;)?)*
        (format!($text), json!({"kind": $kind, $(stringify!($field): $field),*}))
    }};
}

/// Milliseconds since the epoch as ISO-8601 UTC.
fn iso(ms: i64) -> String {
    let t = DateTime::from_timestamp_millis(ms);
    t.map_or(format!("{ms} ms"), |t| t.to_rfc3339_opts(Millis, true))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let out = BufWriter::new(io::stdout().lock());
    let (shown, problems) = (0, 0);
    let mut d = Dumper {
        args: &args,
        out,
        shown,
        problems,
    };
    match d.run().and_then(|()| d.out.flush()).map(|()| d.problems) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(problems) => {
            eprintln!("{problems} problem(s) found");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("dump: {e}");
            ExitCode::from(2)
        }
    }
}

struct Dumper<'a, W: Write> {
    args: &'a Args,
    out: W,
    /// Lines counted against `--limit`.
    shown: u64,
    /// Damage met, or with `--verify` problems found: the exit code is then 1.
    problems: u64,
}

impl<W: Write> Dumper<'_, W> {
    /// Prints what the path names.
    fn run(&mut self) -> io::Result<()> {
        let target = Target::of(&self.args.path)?;
        if self.args.verify {
            let shape = (self.args.index_slots, self.args.index_entries);
            let checked = inspect::verify(&target, shape, |p| {
                let (what, at, reason) = (p.what, p.offset, p.reason);
                self.problems += 1;
                self.emit(row! { "problem", "BAD {what} at {at}: {reason}", what, at, reason })
            })?;
            self.emit(row! { "verified",
                "verified {checked} records, queue and index entries: {problems} problem(s)",
                checked, problems = self.problems
            })?;
            return Ok(());
        }
        match target {
            Target::Store(root) => self.commit_log(&LogFiles::of_store(&root)?)?,
            Target::CommitLog(log) => self.commit_log(&log)?,
            Target::Index { files, .. } => self.index(&files)?,
            Target::Queue { files, .. } => self.queue(&files)?,
            Target::Checkpoint(path) => self.checkpoint(&path)?,
        }
        Ok(())
    }

    fn emit(&mut self, row: Row) -> io::Result<()> {
        match self.args.json {
            true => writeln!(self.out, "{}", row.1),
            false => writeln!(self.out, "{}", row.0),
        }
    }

    /// Emits a line that counts against `--limit`, or breaks when the limit is reached.
    fn show(&mut self, row: Row) -> io::Result<ControlFlow<()>> {
        if self.args.limit.is_some_and(|l| self.shown >= l) {
            return Ok(Break(()));
        }
        self.shown += 1;
        self.emit(row).map(Continue)
    }

    fn checkpoint(&mut self, path: &Path) -> io::Result<()> {
        let err = |e: &dyn std::fmt::Display| io::Error::other(format!("{}: {e}", path.display()));
        let t = CheckpointTimes::read(path).map_err(|e| err(&e))?;
        let t = t.ok_or_else(|| err(&"too short to be a checkpoint"))?;
        let times = [t.physic, t.logics, t.index];
        for (field, ms) in ["physic", "logics", "index"].into_iter().zip(times) {
            let time = iso(ms);
            self.emit(row! { "checkpoint", "{field:<7} {time} ({ms} ms)", field, ms, time })?;
        }
        self.emit(row! { "durable_offset",
            "durable offset {offset} (the log may be cut only past it), queues to {queues}",
            offset = t.physic_offset, queues = t.logics_offset
        })
    }

    fn commit_log(&mut self, log: &LogFiles) -> io::Result<()> {
        let (mut totals, a) = (Totals::default(), self.args);
        let all = !a.summary && a.topic.is_none() && a.queue.is_none();
        for (start, path) in log.files() {
            let len = std::fs::metadata(path)?.len();
            if a.limit.is_some_and(|l| self.shown >= l) || a.to.is_some_and(|to| *start >= to) {
                break;
            } else if a.from.is_some_and(|from| start.saturating_add(len) <= from) {
                continue;
            }
            let used = LogFiles::walk(path, *start, |item| match item {
                Item::Record { offset, record } => self.record(offset, &record, &mut totals),
                Item::Blank { offset, unused } if all && self.args.in_range(offset) => {
                    self.show(row! { "blank",
                        "{offset:>14} BLANK end of file, {bytes_left} bytes unused",
                        offset, bytes_left = unused
                    })
                }
                Item::Blank { .. } => Ok(Continue(())),
                Item::Damaged { offset, reason } => {
                    self.problems += 1;
                    self.show(row! { "damaged",
                        "{offset:>14} DAMAGED {reason}; the rest of the file is not read",
                        offset, reason
                    })
                }
            })?;
            if a.summary {
                let (path, pct) = (path.display(), used as f64 * 100.0 / len.max(1) as f64);
                self.emit(row! { "file",
                    "file {path} used {used} of {len} bytes ({pct:.1}%)",
                    path = path.to_string(), used, len
                })?;
            }
        }
        for ((topic, queue), t) in totals.0 {
            let ([lo, hi], [first, last]) = (t.queue_offsets, t.stored.map(iso));
            self.emit(row! { "queue",
                "queue {topic}/{queue}: {messages} messages, {bytes} bytes, queue offsets {lo}..={hi}, stored {first} .. {last}",
                topic, queue, messages = t.messages, bytes = t.bytes,
                queue_offsets = t.queue_offsets, stored = t.stored
            })?;
        }
        Ok(())
    }

    fn record(&mut self, at: u64, v: &RecordView, t: &mut Totals) -> io::Result<ControlFlow<()>> {
        let a = self.args;
        let wanted = a.topic.as_deref().is_none_or(|t| t == v.topic)
            && a.queue.is_none_or(|q| q == v.queue_id)
            && a.in_range(at);
        if wanted && a.summary {
            t.add(v);
        }
        if !wanted || a.summary {
            return Ok(Continue(()));
        }
        let pairs = inspect::properties(v);
        let props = Vec::from_iter(pairs.iter().map(|(k, val)| format!("{k}={val}"))).join(" ");
        let preview = &v.body_bytes()[..v.body_bytes().len().min(64)];
        let body = a.body.as_deref().map(|f| match f {
            "hex" => preview.iter().map(|x| format!("{x:02x}")).collect(),
            _ => String::from_utf8_lossy(preview).into_owned(),
        });
        let body_text: String = body.iter().map(|b| format!(" body: {b}")).collect();
        let crc = if v.crc_ok() { "ok" } else { "BAD" };
        self.show(row! { "record",
            "{offset:>14} size={size} v{version} {topic}/{queue} qo={queue_offset} stored={store_time} ({store_ms}) born_host={born_host} store_host={store_host} body={body_size} flag={flag} sysflag={sys_flag:#x} crc={crc} [{props}]{body_text}",
            offset = at, size = v.total_size, version = v.version, topic = v.topic,
            queue = v.queue_id, queue_offset = v.queue_offset, store_time = iso(v.store_timestamp),
            store_ms = v.store_timestamp, born_time = iso(v.born_timestamp),
            born_host = v.born_host.to_string(), store_host = v.store_host.to_string(),
            body_size = v.body_bytes().len(), flag = v.flag, sys_flag = v.sys_flag,
            crc_ok = v.crc_ok(),
            properties = serde_json::Map::from_iter(pairs.into_iter().map(|(k, v)| (k, v.into()))),
            body
        })
    }

    /// One consume queue's entries.
    fn queue(&mut self, files: &[(u64, PathBuf)]) -> io::Result<()> {
        for (start, path) in files {
            for (qo, e) in inspect::queue_entries(path, *start)? {
                self.problems += u64::from(e.is_none());
                let row = match e {
                    Some(e) => row! { "entry",
                        "{queue_offset:>10} offset={offset} size={size} tag_hash={tag_hash}",
                        queue_offset = qo, offset = e.physical_offset, size = e.size,
                        tag_hash = e.tag_hash
                    },
                    None => row! { "damaged_entry", "{queue_offset:>10} DAMAGED not an entry",
                    queue_offset = qo },
                };
                if self.show(row)?.is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Key-index files: each header, then its entries.
    fn index(&mut self, files: &[PathBuf]) -> io::Result<()> {
        let a = self.args;
        for path in files {
            let file = IndexFileBytes::read(path, a.index_slots, a.index_entries)?;
            let (h, shown) = (file.header(), path.display().to_string());
            // A first store time of 0 or less: the entries' times are unknown (FORMAT.md).
            let [first, last] = match h.begin_timestamp > 0 {
                true => [h.begin_timestamp, h.end_timestamp].map(iso),
                false => ["unknown".to_owned(), "unknown".to_owned()],
            };
            self.emit(row! { "index",
                "index {path}: {entries} entries, {slots_used} slots used, offsets {lo}..={hi}, stored {first} .. {last}",
                path = &shown, entries = h.count.saturating_sub(1), slots_used = h.slots_used,
                lo = h.begin_offset, hi = h.end_offset, stored = [h.begin_timestamp, h.end_timestamp]
            })?;
            for (n, e) in file.entries().filter(|(_, e)| a.in_range(e.offset)) {
                let (hash, offset, seconds, prev) = (e.hash, e.offset, e.time_diff, e.prev);
                let row = row! { "index_entry",
                    "{entry:>10} hash={hash} offset={offset} seconds={seconds} prev={prev}",
                    entry = n, hash, offset, seconds, prev
                };
                if self.show(row)?.is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
