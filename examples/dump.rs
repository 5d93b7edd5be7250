//! The store dumper: prints and checks the files of a RocketMQ-layout store, read-only, and
//! never needs the store to have been closed cleanly. A thin tool over the crate's own
//! record walk (`format::Records`), entry codec (`format::CqEntry`) and `layout`.
//!
//! `cargo run --release --example dump -- <path> [options]`, where `<path>` is a store root,
//! `commitlog/` or one of its files, a consume-queue directory or file, or the checkpoint.
//! Each commit-log file is read whole, one at a time.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::DateTime;
use clap::{Parser, ValueEnum};
use rocketstore::format::{self, CQ_ENTRY_LEN, CqEntry, RecordView, Records, Step};
use rocketstore::{CheckpointTimes, layout};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Print and verify rocketstore / RocketMQ store files (read-only)")]
struct Args {
    /// A store root, commitlog/ or a commit-log file, a consume-queue directory or file,
    /// or the checkpoint file.
    path: PathBuf,
    /// First commit-log offset to show.
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
    /// Show a preview (64 bytes) of each body.
    #[arg(long, value_enum)]
    body: Option<BodyFormat>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Per topic/queue and per file totals instead of one line per record.
    #[arg(long)]
    summary: bool,
    /// Check every body CRC and every consume-queue entry against the commit log; print
    /// each mismatch and exit non-zero if any.
    #[arg(long)]
    verify: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BodyFormat {
    Hex,
    Utf8,
}

/// One line of output, in both forms: the dumper prints `text`, or with `--json` the
/// object, whose `kind` says what the line is.
struct Row {
    text: String,
    json: Value,
}

/// Milliseconds since the epoch as ISO-8601 UTC.
fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or(format!("{ms} ms"), |t| {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let out = BufWriter::new(io::stdout().lock());
    let mut d = Dumper {
        args: &args,
        out,
        shown: 0,
        checked: 0,
        problems: 0,
    };
    match d.run().and_then(|()| d.out.flush()) {
        Ok(()) if d.problems == 0 => ExitCode::SUCCESS,
        Ok(()) => {
            eprintln!("{} problem(s) found", d.problems);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("dump: {e}");
            ExitCode::from(2)
        }
    }
}

fn bad_path(path: &Path, why: impl std::fmt::Display) -> io::Error {
    let text = format!("{}: {why}", path.display());
    io::Error::new(io::ErrorKind::InvalidInput, text)
}

fn files_of(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    layout::data_files(dir).map_err(|e| bad_path(dir, e))
}

/// Per topic/queue: messages, bytes, lowest and highest queue offset and store time.
type Totals = (u64, u64, [u64; 2], [i64; 2]);

struct Dumper<'a, W: Write> {
    args: &'a Args,
    out: W,
    shown: u64,
    /// Records and queue entries checked by `--verify`.
    checked: u64,
    problems: u64,
}

impl<W: Write> Dumper<'_, W> {
    fn run(&mut self) -> io::Result<()> {
        let path = self.args.path.clone();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let one_file = || vec![(layout::parse_file_name(name).unwrap_or(0), path.clone())];
        if path.is_dir() && layout::commit_log_dir(&path).is_dir() {
            self.commit_log(&files_of(&layout::commit_log_dir(&path))?)?;
            let queues = if self.args.verify {
                layout::queue_dirs(&path)?
            } else {
                Vec::new()
            };
            for (dir, (_, topic, id)) in queues
                .iter()
                .filter_map(|d| Some((d, layout::parse_queue_path(d)?)))
            {
                self.queue(&path, (&topic, id), &files_of(dir)?)?;
            }
        } else if path.is_dir() && name == layout::COMMIT_LOG_DIR {
            self.commit_log(&files_of(&path)?)?;
        } else if name == layout::CHECKPOINT_FILE {
            self.checkpoint(&path)?;
        } else if let Some((root, topic, id)) = layout::parse_queue_path(&path) {
            let files = if path.is_dir() {
                files_of(&path)?
            } else {
                one_file()
            };
            self.queue(&root, (&topic, id), &files)?;
        } else if path.is_file() && layout::parse_file_name(name).is_some() {
            self.commit_log(&one_file())?;
        } else {
            let why = "not a store root, commit log, consume queue or checkpoint";
            return Err(bad_path(&path, why));
        }
        if self.args.verify {
            let (checked, problems) = (self.checked, self.problems);
            let text =
                format!("verified {checked} records and queue entries: {problems} problem(s)");
            self.emit(Row {
                text,
                json: json!({"kind": "verified", "checked": checked, "problems": problems}),
            })?;
        }
        Ok(())
    }

    fn emit(&mut self, row: Row) -> io::Result<()> {
        match self.args.json {
            true => writeln!(self.out, "{}", row.json),
            false => writeln!(self.out, "{}", row.text),
        }
    }

    fn show(&mut self, row: Row) -> io::Result<()> {
        self.shown += 1;
        self.emit(row)
    }

    fn full(&self) -> bool {
        self.args.limit.is_some_and(|l| self.shown >= l)
    }

    fn problem(&mut self, what: &str, offset: u64, reason: &str) -> io::Result<()> {
        self.problems += 1;
        let text = format!("BAD {what} at {offset}: {reason}");
        self.emit(Row {
            text,
            json: json!({"kind": "problem", "what": what, "offset": offset, "reason": reason}),
        })
    }

    fn checkpoint(&mut self, path: &Path) -> io::Result<()> {
        let t = CheckpointTimes::read(path).map_err(|e| bad_path(path, e))?;
        let t = t.ok_or_else(|| bad_path(path, "too short to be a checkpoint"))?;
        for (field, ms) in [
            ("physic", t.physic),
            ("logics", t.logics),
            ("index", t.index),
        ] {
            let text = format!("{field:<7} {} ({ms} ms)", iso(ms));
            self.emit(Row {
                text,
                json: json!({"kind": "checkpoint", "field": field, "ms": ms, "time": iso(ms)}),
            })?;
        }
        let offset = t.physic_offset;
        let text = format!("durable offset {offset} (the log may be cut only past it)");
        self.emit(Row {
            text,
            json: json!({"kind": "checkpoint", "field": "physic_offset", "offset": offset}),
        })
    }

    fn in_range(&self, offset: u64) -> bool {
        self.args.from.is_none_or(|f| offset >= f) && self.args.to.is_none_or(|t| offset < t)
    }

    fn commit_log(&mut self, files: &[(u64, PathBuf)]) -> io::Result<()> {
        let mut totals: BTreeMap<(String, u32), Totals> = BTreeMap::new();
        for (start, path) in files {
            if self.args.to.is_some_and(|to| *start >= to) || self.full() {
                break;
            }
            let bytes = std::fs::read(path)?;
            let mut records = Records::new(&bytes, *start);
            let mut used = bytes.len();
            while let Some(step) = records.next() {
                let v = match step {
                    _ if self.full() => break,
                    Ok(Step::Record(v)) => v,
                    Ok(Step::Blank) => {
                        let (offset, left) = (records.offset(), bytes.len() - records.position());
                        used = records.position() + format::BLANK_RECORD_LEN;
                        let a = self.args;
                        if !a.summary
                            && a.topic.is_none()
                            && a.queue.is_none()
                            && self.in_range(offset)
                        {
                            let text =
                                format!("{offset:>14} BLANK end of file, {left} bytes unused");
                            self.show(Row { text, json: json!({"kind": "blank", "offset": offset, "bytes_left": left}) })?;
                        }
                        break;
                    }
                    Ok(Step::Empty) => {
                        used = records.position();
                        break;
                    }
                    Err(e) => {
                        let offset = records.offset();
                        self.problem("record", offset, &format!("{e}; skipping to the next file"))?;
                        break;
                    }
                };
                let crc_ok = v.crc_ok();
                if !crc_ok && self.args.verify {
                    self.problem("record", v.physical_offset, "body CRC mismatch")?;
                }
                let a = self.args;
                if !self.in_range(v.physical_offset)
                    || a.topic.as_deref().is_some_and(|t| t != v.topic)
                    || a.queue.is_some_and(|q| q != v.queue_id)
                {
                    continue;
                }
                if a.summary {
                    let (qo, ts) = (v.queue_offset, v.store_timestamp);
                    let t = totals
                        .entry((v.topic.into(), v.queue_id))
                        .or_insert((0, 0, [qo; 2], [ts; 2]));
                    (t.0, t.1) = (t.0 + 1, t.1 + u64::from(v.total_size));
                    t.2 = [t.2[0].min(qo), t.2[1].max(qo)];
                    t.3 = [t.3[0].min(ts), t.3[1].max(ts)];
                } else if a.verify {
                    self.checked += 1;
                } else {
                    self.show(record_row(&v, crc_ok, a.body))?;
                }
            }
            if self.args.summary {
                let (path, len) = (path.display().to_string(), bytes.len());
                let pct = used as f64 * 100.0 / len.max(1) as f64;
                let text = format!("file {path} used {used} of {len} bytes ({pct:.1}%)");
                self.emit(Row {
                    text,
                    json: json!({"kind": "file", "path": path, "used": used, "len": len}),
                })?;
            }
        }
        for ((topic, queue), (count, bytes, [lo, hi], [a, b])) in totals {
            let text = format!(
                "queue {topic}/{queue}: {count} messages, {bytes} bytes, queue offsets {lo}..={hi}, stored {} .. {}",
                iso(a),
                iso(b)
            );
            let json = json!({"kind": "queue", "topic": topic, "queue": queue, "messages": count, "bytes": bytes,
                "queue_offsets": [lo, hi], "stored_ms": [a, b]});
            self.emit(Row { text, json })?;
        }
        Ok(())
    }

    /// One consume queue: its entries, and with `--verify` each checked against the log.
    fn queue(
        &mut self,
        root: &Path,
        (topic, id): (&str, u32),
        files: &[(u64, PathBuf)],
    ) -> io::Result<()> {
        let log = if self.args.verify {
            files_of(&layout::commit_log_dir(root))?
        } else {
            Vec::new()
        };
        for (start, path) in files {
            let bytes = std::fs::read(path)?;
            let entries = bytes
                .chunks_exact(CQ_ENTRY_LEN)
                .map(|c| c.try_into().ok().and_then(CqEntry::decode));
            for (qo, e) in (start / CQ_ENTRY_LEN as u64..).zip(entries.map_while(|e| e)) {
                if self.args.verify {
                    self.checked += 1;
                    if let Some(reason) = check_entry(&log, &e, (topic, id, qo))? {
                        self.problem(
                            &format!("queue entry {topic}/{id} #{qo}"),
                            e.physical_offset,
                            &reason,
                        )?;
                    }
                } else if self.full() {
                    return Ok(());
                } else {
                    let (offset, size, tag_hash) = (e.physical_offset, e.size, e.tag_hash);
                    let text = format!("{qo:>10} offset={offset} size={size} tag_hash={tag_hash}");
                    let json = json!({"kind": "entry", "queue_offset": qo, "offset": offset, "size": size, "tag_hash": tag_hash});
                    self.show(Row { text, json })?;
                }
            }
        }
        Ok(())
    }
}

fn record_row(v: &RecordView<'_>, crc_ok: bool, body: Option<BodyFormat>) -> Row {
    let props: BTreeMap<&str, &str> = std::str::from_utf8(v.properties)
        .unwrap_or("")
        .split(char::from(format::PROPERTY_SEPARATOR))
        .filter_map(|p| p.split_once(char::from(format::NAME_VALUE_SEPARATOR)))
        .collect();
    let preview = &v.body_bytes()[..v.body_bytes().len().min(64)];
    let body = body.map(|f| match f {
        BodyFormat::Hex => preview.iter().map(|x| format!("{x:02x}")).collect(),
        BodyFormat::Utf8 => String::from_utf8_lossy(preview).into_owned(),
    });
    let text = format!(
        "{:>14} size={} v{} {}/{} qo={} stored={} ({}) born_host={} store_host={} body={} flag={} sysflag={:#x} crc={} [{}]{}",
        v.physical_offset,
        v.total_size,
        v.version,
        v.topic,
        v.queue_id,
        v.queue_offset,
        iso(v.store_timestamp),
        v.store_timestamp,
        v.born_host,
        v.store_host,
        v.body_bytes().len(),
        v.flag,
        v.sys_flag,
        if crc_ok { "ok" } else { "BAD" },
        props
            .iter()
            .map(|(k, val)| format!("{k}={val}"))
            .collect::<Vec<_>>()
            .join(" "),
        body.as_ref()
            .map(|b| format!(" body: {b}"))
            .unwrap_or_default(),
    );
    let json = json!({
        "kind": "record", "offset": v.physical_offset, "size": v.total_size, "version": v.version,
        "topic": v.topic, "queue": v.queue_id, "queue_offset": v.queue_offset,
        "store_time": iso(v.store_timestamp), "store_ms": v.store_timestamp,
        "born_time": iso(v.born_timestamp), "born_host": v.born_host.to_string(),
        "store_host": v.store_host.to_string(), "body_size": v.body_bytes().len(),
        "flag": v.flag, "sys_flag": v.sys_flag, "crc_ok": crc_ok, "properties": props, "body": body,
    });
    Row { text, json }
}

/// Why a consume-queue entry at `(topic, queue id, queue offset)` does not match the
/// record it points at, if it does not.
fn check_entry(
    log: &[(u64, PathBuf)],
    e: &CqEntry,
    at: (&str, u32, u64),
) -> io::Result<Option<String>> {
    let Some((start, path)) = log.iter().rev().find(|(s, _)| *s <= e.physical_offset) else {
        return Ok(Some("no commit-log file holds this offset".into()));
    };
    let mut buf = vec![0u8; e.size as usize];
    if std::fs::File::open(path)?
        .read_exact_at(&mut buf, e.physical_offset - start)
        .is_err()
    {
        return Ok(Some("points past the end of its file".into()));
    }
    let v = match Records::new(&buf, e.physical_offset).next() {
        Some(Ok(Step::Record(v))) => v,
        Some(Err(err)) => return Ok(Some(err.to_string())),
        _ => return Ok(Some("no record here".into())),
    };
    let mut why = Vec::new();
    if v.total_size != e.size {
        why.push(format!("size {} vs record {}", e.size, v.total_size));
    }
    if (v.topic, v.queue_id, v.queue_offset) != at {
        why.push(format!(
            "record is {}/{} #{}",
            v.topic, v.queue_id, v.queue_offset
        ));
    }
    if CqEntry::of(&v).tag_hash != e.tag_hash {
        why.push("tag hash differs".into());
    }
    if !v.crc_ok() {
        why.push("record body CRC mismatch".into());
    }
    Ok((!why.is_empty()).then(|| why.join("; ")))
}
