//! The store dumper: prints and checks the files of a RocketMQ-layout store, read-only, and
//! never needs the store to have been closed cleanly. A thin tool over the crate's own
//! record walk (`format::Records`), entry codec (`format::CqEntry`) and `layout`.
//!
//! `cargo run --release --example dump -- <path> [options]`, where `<path>` is a store root,
//! `commitlog/` or one of its files, a consume-queue directory or file, `index/` or one of
//! its files, or the checkpoint.
//! Each commit-log file is read whole, one at a time.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::DateTime;
use clap::{Parser, ValueEnum};
use rocketstore::format::{
    self, CQ_ENTRY_LEN, CqEntry, INDEX_ENTRY_LEN, INDEX_HEADER_LEN, INDEX_SLOT_LEN, IndexEntry,
    IndexHeader, RecordView, Records, Step, key_hash,
};
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
    /// Check every body CRC, and every consume-queue and key-index entry against the
    /// commit log; print each mismatch and exit non-zero if any.
    #[arg(long)]
    verify: bool,
    /// Hash slots per index file (the store's `index_hash_slots`).
    #[arg(long, default_value_t = 5_000_000)]
    index_slots: u32,
    /// Entries per index file (the store's `index_entries`).
    #[arg(long, default_value_t = 20_000_000)]
    index_entries: u32,
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

/// Commit-log files are read this much at a time.
const WINDOW: usize = 64 << 20;

/// Whether the bytes at a stop (`rest` of a window, `file_left` of the file) are a record
/// that the end of the window cut off, rather than damage.
fn runs_past(rest: &[u8], file_left: usize) -> bool {
    match rest.get(..4) {
        None => true,
        Some(size) => {
            let size = i32::from_be_bytes(size.try_into().expect("4 bytes"));
            (format::MIN_RECORD_LEN as i32..=file_left as i32).contains(&size)
                && size as usize > rest.len()
        }
    }
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
            if self.args.verify && layout::index_dir(&path).is_dir() {
                self.index(&path, &index_files(&layout::index_dir(&path))?)?;
            }
        } else if path.is_dir() && name == layout::COMMIT_LOG_DIR {
            self.commit_log(&files_of(&path)?)?;
        } else if path.is_dir() && name == layout::INDEX_DIR {
            let root = path.parent().unwrap_or(Path::new("."));
            self.index(root, &index_files(&path)?)?;
        } else if path.parent().and_then(Path::file_name) == Some(layout::INDEX_DIR.as_ref()) {
            let root = path
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."));
            self.index(root, std::slice::from_ref(&path))?;
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
            let why = "not a store root, commit log, consume queue, index or checkpoint";
            return Err(bad_path(&path, why));
        }
        if self.args.verify {
            let (checked, problems) = (self.checked, self.problems);
            let text = format!(
                "verified {checked} records, queue and index entries: {problems} problem(s)"
            );
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
            let len = std::fs::metadata(path)?.len() as usize;
            if self
                .args
                .from
                .is_some_and(|from| start + len as u64 <= from)
            {
                continue;
            }
            let used = self.walk(path, *start, len, &mut totals)?;
            if self.args.summary {
                let path = path.display().to_string();
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

    /// Walks one commit-log file of `len` bytes in windows of at most 64 MiB (more when a
    /// record is larger); returns how far its records reach.
    fn walk(
        &mut self,
        path: &Path,
        start: u64,
        len: usize,
        totals: &mut BTreeMap<(String, u32), Totals>,
    ) -> io::Result<usize> {
        let file = std::fs::File::open(path)?;
        let mut base = 0usize;
        let mut want = WINDOW;
        loop {
            let mut buf = vec![0u8; want.min(len - base)];
            file.read_exact_at(&mut buf, base as u64)?;
            let last_window = base + buf.len() == len;
            let mut records = Records::new(&buf, start + base as u64);
            while let Some(step) = records.next() {
                let at = base + records.position();
                let v = match step {
                    _ if self.full() => return Ok(at),
                    Ok(Step::Record(v)) => v,
                    Ok(Step::Blank) => {
                        let a = self.args;
                        let (offset, left) = (start + at as u64, len - at);
                        if !a.summary
                            && a.topic.is_none()
                            && a.queue.is_none()
                            && self.in_range(offset)
                        {
                            let text =
                                format!("{offset:>14} BLANK end of file, {left} bytes unused");
                            self.show(Row { text, json: json!({"kind": "blank", "offset": offset, "bytes_left": left}) })?;
                        }
                        return Ok(at + format::BLANK_RECORD_LEN);
                    }
                    Ok(Step::Empty) => return Ok(at),
                    Err(_) if !last_window && runs_past(&buf[records.position()..], len - at) => {
                        break;
                    }
                    Err(e) => {
                        self.problem(
                            "record",
                            start + at as u64,
                            &format!("{e}; skipping to the next file"),
                        )?;
                        return Ok(at);
                    }
                };
                // Where the record lies, not what its PHYSICALOFFSET field says.
                let offset = start + (at - v.total_size as usize) as u64;
                self.record(offset, &v, totals)?;
            }
            let pos = records.position();
            if last_window && pos == buf.len() {
                return Ok(len);
            }
            // The window ends inside a record: read again from its start, whole.
            let size = buf[pos..]
                .get(..4)
                .map_or(0, |b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
            want = WINDOW.max(size.max(0) as usize);
            base += pos;
        }
    }

    fn record(
        &mut self,
        offset: u64,
        v: &RecordView<'_>,
        totals: &mut BTreeMap<(String, u32), Totals>,
    ) -> io::Result<()> {
        let crc_ok = v.crc_ok();
        let a = self.args;
        if a.verify && !crc_ok {
            self.problem("record", offset, "body CRC mismatch")?;
        }
        if a.verify && v.physical_offset != offset {
            self.problem(
                "record",
                offset,
                &format!("record says it is at {}", v.physical_offset),
            )?;
        }
        if !self.in_range(offset)
            || a.topic.as_deref().is_some_and(|t| t != v.topic)
            || a.queue.is_some_and(|q| q != v.queue_id)
        {
            return Ok(());
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
            self.show(record_row(offset, v, crc_ok, a.body))?;
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
        if self.args.verify && log.is_empty() {
            return Err(bad_path(
                root,
                "--verify of a consume queue needs the store's commitlog/",
            ));
        }
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

impl<W: Write> Dumper<'_, W> {
    /// Key-index files: each header, then its entries (or with `--verify`, each entry and
    /// slot checked: a slot points at a written entry, a chain only goes back, and each
    /// entry points at a record that has a key hashing to it).
    fn index(&mut self, root: &Path, files: &[PathBuf]) -> io::Result<()> {
        let (slots, entries) = (self.args.index_slots, self.args.index_entries);
        let expected = format::index_file_len(slots, entries);
        let log = files_of(&layout::commit_log_dir(root)).unwrap_or_default();
        if self.args.verify && log.is_empty() {
            return Err(bad_path(
                root,
                "--verify of the index needs the store's commitlog/",
            ));
        }
        for path in files {
            let bytes = std::fs::read(path)?;
            if bytes.len() as u64 != expected {
                let why = format!(
                    "{} bytes, not {expected}: pass the store's --index-slots and --index-entries",
                    bytes.len()
                );
                return Err(bad_path(path, why));
            }
            let h = IndexHeader::decode(
                bytes[..INDEX_HEADER_LEN as usize]
                    .try_into()
                    .expect("40 bytes"),
            );
            let shown = path.display().to_string();
            let text = format!(
                "index {shown}: {} entries, {} slots used, offsets {}..={}, stored {} .. {}",
                h.count.saturating_sub(1),
                h.slots_used,
                h.begin_offset,
                h.end_offset,
                iso(h.begin_timestamp),
                iso(h.end_timestamp)
            );
            let json = json!({"kind": "index", "path": shown, "entries": h.count.saturating_sub(1),
                "slots_used": h.slots_used, "offsets": [h.begin_offset, h.end_offset],
                "stored_ms": [h.begin_timestamp, h.end_timestamp]});
            self.emit(Row { text, json })?;
            let count = h.count.min(entries);
            let entries_at = (INDEX_HEADER_LEN + INDEX_SLOT_LEN * u64::from(slots)) as usize;
            let entry = |n: u32| {
                let at = entries_at + n as usize * INDEX_ENTRY_LEN as usize;
                IndexEntry::decode(
                    bytes[at..at + INDEX_ENTRY_LEN as usize]
                        .try_into()
                        .expect("20 bytes"),
                )
            };
            if self.args.verify {
                for s in 0..slots {
                    let at = INDEX_HEADER_LEN as usize + s as usize * 4;
                    let v = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                    if v >= count.max(1) {
                        self.problem(
                            "index slot",
                            u64::from(s),
                            &format!("points at entry {v} of {count}"),
                        )?;
                    }
                }
            }
            for n in 1..count {
                let e = entry(n);
                if self.args.verify {
                    self.checked += 1;
                    let mut why = Vec::new();
                    if e.prev >= n {
                        why.push(format!("chain goes forward to entry {}", e.prev));
                    }
                    match read_record(&log, e.offset)? {
                        Err(reason) => why.push(reason),
                        Ok(rec) => match Records::new(&rec, e.offset).next() {
                            Some(Ok(Step::Record(v))) => {
                                if !v
                                    .index_keys()
                                    .any(|k| key_hash(&format!("{}#{k}", v.topic)) == e.hash)
                                {
                                    why.push(format!(
                                        "no key of the {} record hashes to {}",
                                        v.topic, e.hash
                                    ));
                                }
                            }
                            _ => why.push("no record here".into()),
                        },
                    }
                    if !why.is_empty() {
                        self.problem(
                            &format!("index entry {n} of {shown}"),
                            e.offset,
                            &why.join("; "),
                        )?;
                    }
                } else if self.full() {
                    return Ok(());
                } else if self.in_range(e.offset) {
                    let text = format!(
                        "{n:>10} hash={} offset={} seconds={} prev={}",
                        e.hash, e.offset, e.time_diff, e.prev
                    );
                    let json = json!({"kind": "index_entry", "entry": n, "hash": e.hash,
                        "offset": e.offset, "seconds": e.time_diff, "prev": e.prev});
                    self.show(Row { text, json })?;
                }
            }
        }
        Ok(())
    }
}

/// The index files of `dir`, oldest first (their names are their creation times).
fn index_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    files.sort();
    Ok(files)
}

/// The bytes of the record at commit-log `offset`, or why there is none.
fn read_record(log: &[(u64, PathBuf)], offset: u64) -> io::Result<Result<Vec<u8>, String>> {
    let Some((start, path)) = log.iter().rev().find(|(s, _)| *s <= offset) else {
        return Ok(Err("no commit-log file holds this offset".into()));
    };
    let file = std::fs::File::open(path)?;
    let mut size = [0u8; 4];
    if file.read_exact_at(&mut size, offset - start).is_err() {
        return Ok(Err("points past the end of its file".into()));
    }
    let size = i32::from_be_bytes(size);
    if size < format::MIN_RECORD_LEN as i32 {
        return Ok(Err(format!("no record here (size field {size})")));
    }
    let mut buf = vec![0u8; size as usize];
    if file.read_exact_at(&mut buf, offset - start).is_err() {
        return Ok(Err("the record runs past the end of its file".into()));
    }
    Ok(Ok(buf))
}

fn record_row(offset: u64, v: &RecordView<'_>, crc_ok: bool, body: Option<BodyFormat>) -> Row {
    // In stored order, as text even when not UTF-8.
    let props: Vec<(String, String)> = String::from_utf8_lossy(v.properties)
        .split(char::from(format::PROPERTY_SEPARATOR))
        .filter_map(|p| p.split_once(char::from(format::NAME_VALUE_SEPARATOR)))
        .map(|(k, val)| (k.to_owned(), val.to_owned()))
        .collect();
    let preview = &v.body_bytes()[..v.body_bytes().len().min(64)];
    let body = body.map(|f| match f {
        BodyFormat::Hex => preview.iter().map(|x| format!("{x:02x}")).collect(),
        BodyFormat::Utf8 => String::from_utf8_lossy(preview).into_owned(),
    });
    let text = format!(
        "{:>14} size={} v{} {}/{} qo={} stored={} ({}) born_host={} store_host={} body={} flag={} sysflag={:#x} crc={} [{}]{}",
        offset,
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
    let mut json = json!({
        "kind": "record", "offset": offset, "size": v.total_size, "version": v.version,
        "topic": v.topic, "queue": v.queue_id, "queue_offset": v.queue_offset,
        "store_time": iso(v.store_timestamp), "store_ms": v.store_timestamp,
        "born_time": iso(v.born_timestamp), "born_host": v.born_host.to_string(),
        "store_host": v.store_host.to_string(), "body_size": v.body_bytes().len(),
        "flag": v.flag, "sys_flag": v.sys_flag, "crc_ok": crc_ok,
        "properties": props.iter().map(|(k, val)| (k.clone(), Value::from(val.as_str()))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(b) = body {
        json["body"] = Value::from(b);
    }
    Row { text, json }
}

/// Why a consume-queue entry at `(topic, queue id, queue offset)` does not match the
/// record it points at, if it does not.
fn check_entry(
    log: &[(u64, PathBuf)],
    e: &CqEntry,
    at: (&str, u32, u64),
) -> io::Result<Option<String>> {
    let buf = match read_record(log, e.physical_offset)? {
        Ok(buf) => buf,
        Err(reason) => return Ok(Some(reason)),
    };
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
