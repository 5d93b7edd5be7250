//! The store dumper: prints and checks the files of a RocketMQ-layout store, read-only, and
//! never needs the store to have been closed cleanly.
//!
//! `cargo run --release --example dump -- <path> [options]`, where `<path>` is a store root,
//! `commitlog/` or one of its files, a consume-queue directory or file, or the checkpoint.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use rocketstore::CheckpointTimes;
use rocketstore::format::{self, CQ_ENTRY_LEN, CqEntry, Peek, RecordView};
use rocketstore::layout;

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
    /// Show a preview of each body.
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

/// What the path names.
enum Target {
    Root(PathBuf),
    CommitLog(Vec<PathBuf>),
    Queue {
        root: Option<PathBuf>,
        files: Vec<PathBuf>,
    },
    Checkpoint(PathBuf),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
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

fn run(args: &Args) -> io::Result<u64> {
    let out = &mut BufWriter::new(io::stdout().lock());
    let mut d = Dumper {
        args,
        out,
        shown: 0,
        checked: 0,
        problems: 0,
    };
    match detect(&args.path)? {
        Target::Checkpoint(p) => d.checkpoint(&p)?,
        Target::CommitLog(files) => d.commit_log(&files)?,
        Target::Queue { root, files } => d.queue(root.as_deref(), &files)?,
        Target::Root(root) => {
            d.commit_log(&sorted_files(&layout::commit_log_dir(&root))?)?;
            if args.verify {
                for dir in queue_dirs(&layout::consume_queue_dir(&root))? {
                    d.queue(Some(&root), &sorted_files(&dir)?)?;
                }
            }
        }
    }
    if args.verify {
        writeln!(
            d.out,
            "verified {} records and queue entries: {} problem(s)",
            d.checked, d.problems
        )?;
    }
    d.out.flush()?;
    Ok(d.problems)
}

fn bad_path(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {why}", path.display()),
    )
}

fn detect(path: &Path) -> io::Result<Target> {
    let meta = std::fs::metadata(path).map_err(|e| bad_path(path, &e.to_string()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let under = |dir: &str| {
        path.ancestors()
            .skip(1)
            .any(|a| a.file_name().is_some_and(|n| n == dir))
    };
    if meta.is_dir() {
        if layout::commit_log_dir(path).is_dir() {
            return Ok(Target::Root(path.to_owned()));
        }
        if name == layout::COMMIT_LOG_DIR {
            return Ok(Target::CommitLog(sorted_files(path)?));
        }
        if under(layout::CONSUME_QUEUE_DIR) && name.parse::<u32>().is_ok() {
            let root = path.ancestors().nth(3).map(Path::to_owned);
            return Ok(Target::Queue {
                root,
                files: sorted_files(path)?,
            });
        }
        return Err(bad_path(
            path,
            "not a store root, commitlog/ or a consume-queue directory",
        ));
    }
    if name == layout::CHECKPOINT_FILE {
        return Ok(Target::Checkpoint(path.to_owned()));
    }
    if under(layout::CONSUME_QUEUE_DIR) {
        let root = path.ancestors().nth(4).map(Path::to_owned);
        return Ok(Target::Queue {
            root,
            files: vec![path.to_owned()],
        });
    }
    if layout::parse_file_name(name).is_some() {
        return Ok(Target::CommitLog(vec![path.to_owned()]));
    }
    Err(bad_path(
        path,
        "not a commit-log file (20-digit name), consume-queue file or checkpoint",
    ))
}

fn sorted_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad_path(dir, &e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "tmp"))
        .collect();
    files.sort();
    Ok(files)
}

fn queue_dirs(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    if !root.is_dir() {
        return Ok(dirs);
    }
    for topic in std::fs::read_dir(root)? {
        let topic = topic?.path();
        if topic.is_dir() {
            for queue in std::fs::read_dir(&topic)? {
                let queue = queue?.path();
                if queue.is_dir() {
                    dirs.push(queue);
                }
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn file_offset(path: &Path) -> u64 {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(layout::parse_file_name)
        .unwrap_or(0)
}

/// `ms` since the epoch as ISO-8601 UTC.
fn iso(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Default)]
struct QueueTotals {
    count: u64,
    bytes: u64,
    offsets: Option<(u64, u64)>,
    times: Option<(i64, i64)>,
}

struct Dumper<'a, W: Write> {
    args: &'a Args,
    out: &'a mut W,
    shown: u64,
    /// Records and queue entries checked by `--verify`.
    checked: u64,
    problems: u64,
}

impl<W: Write> Dumper<'_, W> {
    fn full(&self) -> bool {
        self.args.limit.is_some_and(|l| self.shown >= l)
    }

    fn problem(&mut self, what: &str, offset: u64, reason: &str) -> io::Result<()> {
        self.problems += 1;
        if self.args.json {
            writeln!(
                self.out,
                "{{\"problem\":{},\"offset\":{offset},\"reason\":{}}}",
                json_str(what),
                json_str(reason)
            )
        } else {
            writeln!(self.out, "BAD {what} at {offset}: {reason}")
        }
    }

    fn checkpoint(&mut self, path: &Path) -> io::Result<()> {
        let times = CheckpointTimes::read(path)
            .map_err(|e| bad_path(path, &e.to_string()))?
            .ok_or_else(|| bad_path(path, "too short to be a checkpoint"))?;
        for (name, ms) in [
            ("physic", times.physic),
            ("logics", times.logics),
            ("index", times.index),
        ] {
            if self.args.json {
                writeln!(
                    self.out,
                    "{{\"field\":\"{name}\",\"ms\":{ms},\"time\":\"{}\"}}",
                    iso(ms)
                )?;
            } else {
                writeln!(self.out, "{name:<7} {} ({ms} ms)", iso(ms))?;
            }
        }
        let durable = times.physic_offset;
        if self.args.json {
            writeln!(
                self.out,
                "{{\"field\":\"physic_offset\",\"offset\":{durable}}}"
            )?;
        } else {
            writeln!(
                self.out,
                "durable offset {durable} (the log may be cut only past it)"
            )?;
        }
        Ok(())
    }

    fn commit_log(&mut self, files: &[PathBuf]) -> io::Result<()> {
        let mut queues: BTreeMap<(String, u32), QueueTotals> = BTreeMap::new();
        for path in files {
            let start = file_offset(path);
            let len = std::fs::metadata(path)?.len();
            if self.args.to.is_some_and(|to| start >= to) || self.full() {
                break;
            }
            if self.args.from.is_some_and(|from| start + len <= from) {
                continue;
            }
            let mut reader = io::BufReader::with_capacity(1 << 20, File::open(path)?);
            let mut pos = 0u64;
            let mut record = Vec::new();
            let mut used = 0u64;
            while pos + 8 <= len && !self.full() {
                let offset = start + pos;
                let mut head = [0u8; 8];
                reader.read_exact(&mut head)?;
                let size = i32::from_be_bytes(head[..4].try_into().unwrap());
                let magic = u32::from_be_bytes(head[4..].try_into().unwrap());
                if magic == format::BLANK_MAGIC {
                    used = pos + 8;
                    if !self.args.summary && self.selected(offset, None) {
                        self.line_blank(offset, size)?;
                    }
                    break;
                }
                if size == 0 && magic == 0 {
                    used = pos;
                    break; // the end of the written part
                }
                if size < format::MIN_RECORD_LEN as i32 || pos + size as u64 > len {
                    self.problem(
                        "record",
                        offset,
                        &format!("impossible size {size}; skipping to the next file"),
                    )?;
                    break;
                }
                record.clear();
                record.extend_from_slice(&head);
                record.resize(size as usize, 0);
                reader.read_exact(&mut record[8..])?;
                pos += size as u64;
                used = pos;
                match format::parse(&record, offset) {
                    Ok(view) => {
                        let crc_ok = view.crc_ok();
                        if !crc_ok && self.args.verify {
                            self.problem("record", offset, "body CRC mismatch")?;
                        }
                        if !self.selected(offset, Some(&view)) {
                            continue;
                        }
                        if self.args.summary {
                            let t = queues
                                .entry((view.topic.to_owned(), view.queue_id))
                                .or_default();
                            t.count += 1;
                            t.bytes += u64::from(view.total_size);
                            let (lo, hi) =
                                t.offsets.unwrap_or((view.queue_offset, view.queue_offset));
                            t.offsets =
                                Some((lo.min(view.queue_offset), hi.max(view.queue_offset)));
                            let ts = view.store_timestamp;
                            let (a, b) = t.times.unwrap_or((ts, ts));
                            t.times = Some((a.min(ts), b.max(ts)));
                        } else if self.args.verify {
                            self.checked += 1;
                        } else {
                            self.line_record(offset, &view, crc_ok)?;
                        }
                    }
                    Err(e) => {
                        self.problem("record", offset, &format!("{e}; skipping to the next file"))?;
                        break;
                    }
                }
            }
            if self.args.summary {
                writeln!(
                    self.out,
                    "file {} used {used} of {len} bytes ({:.1}%)",
                    path.display(),
                    used as f64 * 100.0 / len.max(1) as f64
                )?;
            }
        }
        if self.args.summary {
            for ((topic, queue), t) in &queues {
                let (lo, hi) = t.offsets.unwrap_or_default();
                let (a, b) = t.times.unwrap_or_default();
                writeln!(
                    self.out,
                    "queue {topic}/{queue}: {} messages, {} bytes, queue offsets {lo}..={hi}, stored {} .. {}",
                    t.count,
                    t.bytes,
                    iso(a),
                    iso(b)
                )?;
            }
        }
        Ok(())
    }

    fn selected(&self, offset: u64, view: Option<&RecordView<'_>>) -> bool {
        let a = self.args;
        if a.from.is_some_and(|f| offset < f) || a.to.is_some_and(|t| offset >= t) {
            return false;
        }
        match view {
            Some(v) => {
                a.topic.as_deref().is_none_or(|t| t == v.topic)
                    && a.queue.is_none_or(|q| q == v.queue_id)
            }
            None => a.topic.is_none() && a.queue.is_none(),
        }
    }

    fn line_blank(&mut self, offset: u64, left: i32) -> io::Result<()> {
        self.shown += 1;
        if self.args.json {
            writeln!(
                self.out,
                "{{\"offset\":{offset},\"blank\":true,\"bytes_left\":{left}}}"
            )
        } else {
            writeln!(
                self.out,
                "{offset:>14} BLANK end of file, {left} bytes unused"
            )
        }
    }

    fn line_record(&mut self, offset: u64, v: &RecordView<'_>, crc_ok: bool) -> io::Result<()> {
        self.shown += 1;
        let props: Vec<(String, String)> = String::from_utf8_lossy(v.properties)
            .split('\u{2}')
            .filter_map(|p| p.split_once('\u{1}'))
            .map(|(k, val)| (k.to_owned(), val.to_owned()))
            .collect();
        let body = self.args.body.map(|f| {
            let b = &v.body_bytes()[..v.body_bytes().len().min(64)];
            match f {
                BodyFormat::Hex => b.iter().map(|x| format!("{x:02x}")).collect::<String>(),
                BodyFormat::Utf8 => String::from_utf8_lossy(b).into_owned(),
            }
        });
        if self.args.json {
            let props_json = props
                .iter()
                .map(|(k, val)| format!("{}:{}", json_str(k), json_str(val)))
                .collect::<Vec<_>>()
                .join(",");
            write!(
                self.out,
                "{{\"offset\":{offset},\"size\":{},\"version\":{},\"topic\":{},\"queue\":{},\"queue_offset\":{},\"store_time\":\"{}\",\"store_ms\":{},\"born_time\":\"{}\",\"born_host\":\"{}\",\"store_host\":\"{}\",\"body_size\":{},\"flag\":{},\"sys_flag\":{},\"crc_ok\":{crc_ok},\"properties\":{{{props_json}}}",
                v.total_size,
                v.version,
                json_str(v.topic),
                v.queue_id,
                v.queue_offset,
                iso(v.store_timestamp),
                v.store_timestamp,
                iso(v.born_timestamp),
                v.born_host,
                v.store_host,
                v.body.1 - v.body.0,
                v.flag,
                v.sys_flag,
            )?;
            if let Some(b) = body {
                write!(self.out, ",\"body\":{}", json_str(&b))?;
            }
            writeln!(self.out, "}}")
        } else {
            let props_text = props
                .iter()
                .map(|(k, val)| format!("{k}={val}"))
                .collect::<Vec<_>>()
                .join(" ");
            write!(
                self.out,
                "{offset:>14} size={} v{} {}/{} qo={} stored={} ({}) born_host={} store_host={} body={} flag={} sysflag={:#x} crc={} [{props_text}]",
                v.total_size,
                v.version,
                v.topic,
                v.queue_id,
                v.queue_offset,
                iso(v.store_timestamp),
                v.store_timestamp,
                v.born_host,
                v.store_host,
                v.body.1 - v.body.0,
                v.flag,
                v.sys_flag,
                if crc_ok { "ok" } else { "BAD" },
            )?;
            if let Some(b) = body {
                write!(self.out, " body: {b}")?;
            }
            writeln!(self.out)
        }
    }

    /// One consume queue: its entries, and with `--verify` each checked against the log.
    fn queue(&mut self, root: Option<&Path>, files: &[PathBuf]) -> io::Result<()> {
        let log_files = match root {
            Some(r) if self.args.verify => sorted_files(&layout::commit_log_dir(r))?,
            _ => Vec::new(),
        };
        if self.args.verify && log_files.is_empty() {
            return Err(io::Error::other(
                "--verify of a consume queue needs the store's commitlog/",
            ));
        }
        let log_size = log_files
            .first()
            .map(|f| std::fs::metadata(f).map(|m| m.len()))
            .transpose()?;
        let dir = files
            .first()
            .and_then(|f| f.parent())
            .map(Path::to_owned)
            .unwrap_or_default();
        let queue_id: Option<u32> = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok());
        let topic = dir
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        for path in files {
            let bytes = std::fs::read(path)?;
            let first = file_offset(path) / CQ_ENTRY_LEN as u64;
            for (i, chunk) in bytes.chunks_exact(CQ_ENTRY_LEN).enumerate() {
                let qo = first + i as u64;
                let Some(e) = CqEntry::decode(chunk.try_into().unwrap()) else {
                    break;
                };
                if self.args.verify {
                    self.checked += 1;
                    let reason =
                        check_entry(&log_files, log_size.unwrap_or(1), &e, &topic, queue_id, qo)?;
                    if let Some(reason) = reason {
                        self.problem(
                            &format!("queue entry {topic}/{} #{qo}", queue_id.unwrap_or(0)),
                            e.physical_offset,
                            &reason,
                        )?;
                    }
                    continue;
                }
                if self.full() {
                    return Ok(());
                }
                self.shown += 1;
                if self.args.json {
                    writeln!(
                        self.out,
                        "{{\"queue_offset\":{qo},\"offset\":{},\"size\":{},\"tag_hash\":{}}}",
                        e.physical_offset, e.size, e.tag_hash
                    )?;
                } else {
                    writeln!(
                        self.out,
                        "{qo:>10} offset={} size={} tag_hash={}",
                        e.physical_offset, e.size, e.tag_hash
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Why a consume-queue entry does not match the record it points at, if it does not.
fn check_entry(
    log: &[PathBuf],
    file_size: u64,
    e: &CqEntry,
    topic: &str,
    queue_id: Option<u32>,
    qo: u64,
) -> io::Result<Option<String>> {
    let want = e.physical_offset / file_size * file_size;
    let Some(path) = log.iter().find(|p| file_offset(p) == want) else {
        return Ok(Some("no commit-log file holds this offset".into()));
    };
    let mut buf = vec![0u8; e.size as usize];
    if File::open(path)?
        .read_exact_at(&mut buf, e.physical_offset - want)
        .is_err()
    {
        return Ok(Some("points past the end of its file".into()));
    }
    let view = match format::peek(&buf, e.physical_offset).and_then(|p| match p {
        Peek::Record { .. } => format::parse(&buf, e.physical_offset),
        _ => Err(rocketstore::Error::Corrupted {
            offset: e.physical_offset,
            reason: "no record here".into(),
        }),
    }) {
        Ok(v) => v,
        Err(err) => return Ok(Some(err.to_string())),
    };
    let mut why = Vec::new();
    if view.total_size != e.size {
        why.push(format!("size {} vs record {}", e.size, view.total_size));
    }
    if view.topic != topic
        || queue_id.is_some_and(|q| q != view.queue_id)
        || view.queue_offset != qo
    {
        why.push(format!(
            "record is {}/{} #{}",
            view.topic, view.queue_id, view.queue_offset
        ));
    }
    if format::tag_hash(format::find_tags(view.properties)) != e.tag_hash {
        why.push("tag hash differs".into());
    }
    if !view.crc_ok() {
        why.push("record body CRC mismatch".into());
    }
    Ok((!why.is_empty()).then(|| why.join("; ")))
}
