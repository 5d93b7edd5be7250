//! The operator examples against real stores: the dumper (listing, JSON, summary, verify,
//! damage), the load generator (every mode ends verified) and the many-queues run. `cargo test` builds the
//! examples; run alone, these tests skip when the examples are absent.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use rocketstore::MessageStore;
use rocketstore::layout;

fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

fn dumper() -> Option<PathBuf> {
    example("dump")
}

#[test]
fn load_generator_verifies_what_it_wrote_in_every_mode() {
    let Some(load) = example("load") else {
        println!("skipped: the load example is not built (run the whole `cargo test`)");
        return;
    };
    for extra in [
        &["--flush", "async"][..],
        &["--flush", "sync", "--inflight", "16"],
        &["--flush", "async", "--batch", "8"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(&load)
            .args(["--dir", dir.path().to_str().unwrap(), "--count", "3000"])
            .args(["--producers", "3", "--queues", "3", "--size", "300"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{extra:?}: {stdout}");
        assert!(stdout.contains("\"messages\":3000,"), "{extra:?}: {stdout}");
        assert!(
            stdout.trim_end().ends_with("\"verified\":true}"),
            "{stdout}"
        );
        // The store is left for the dumper, and it verifies clean.
        let (code, report) = run(&[dir.path().to_str().unwrap(), "--verify"]);
        assert_eq!(code, 0, "{report}");
    }
}

#[test]
fn load_generator_paces_its_puts_at_the_rate_asked() {
    let Some(load) = example("load") else {
        println!("skipped: the load example is not built (run the whole `cargo test`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 3,000 messages at 6,000 a second: the last of each producer's 1,000 is due
    // 999 × 500 µs after the start (unpaced, a debug build took 0.1 s).
    let out = Command::new(&load)
        .args(["--dir", dir.path().to_str().unwrap(), "--count", "3000"])
        .args(["--producers", "3", "--queues", "3", "--size", "100"])
        .args(["--keys", "2", "--rate", "6000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    let json = stdout.lines().last().unwrap();
    let field = |name: &str| -> f64 {
        let at = json.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        let end = json[at..].find([',', '}']).unwrap();
        json[at..at + end].parse().unwrap()
    };
    assert_eq!(field("messages"), 3000.0, "{json}");
    assert!(field("seconds") >= 0.499, "{json}");
    assert!(field("max_index_lag_bytes") >= 0.0, "{json}");
    assert!(json.ends_with("\"verified\":true}"), "{json}");
    // The report is one JSON object, with the CPU time the puts took (read from procfs:
    // Linux only).
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    if !cfg!(target_os = "linux") {
        return;
    }
    let cpu = &report["cpu"];
    let busy = cpu["machine_busy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&busy), "{cpu}");
    let process = cpu["process_s"].as_array().unwrap();
    assert_eq!(process.len(), 2, "user and system seconds: {cpu}");
    let threads = cpu["threads_s"].as_object().unwrap();
    // The producers did the puts: 3,000 paced ones, whose CPU time may round to zero.
    assert!(threads.contains_key("producers (ended)"), "{cpu}");
    let total = |v: &serde_json::Value| -> f64 {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap())
            .sum()
    };
    // The kernel splits user and system time per thread and for the process apart, and
    // each thread's figure is rounded to a tick: they agree within a tick a thread.
    let by_thread: f64 = threads.values().map(total).sum();
    let ticks = 0.01 * (threads.len() as f64 + 1.0);
    assert!(
        (by_thread - total(&cpu["process_s"])).abs() <= ticks + 1e-9,
        "the threads add up to the process: {cpu}"
    );

    let out = Command::new(&load).args(["--rate", "0"]).output().unwrap();
    assert!(!out.status.success(), "a rate of 0 is refused");
    // So are counts that would divide by zero or overflow a deadline: refused with a
    // message, never a panic.
    for bad in [
        ["--producers", "0"],
        ["--queues", "0"],
        ["--batch", "0"],
        ["--seconds", "18446744073709551615"],
    ] {
        let out = Command::new(&load).args(bad).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("invalid value"), "{bad:?}: {stderr}");
    }
}

#[test]
fn many_queues_reads_every_queue_back_after_a_crash_and_a_clean_reopen() {
    let Some(many) = example("many_queues") else {
        println!("skipped: the many_queues example is not built (run the whole `cargo test`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&many)
        .args([
            "--dir",
            dir.path().to_str().unwrap(),
            "--file-size",
            "1048576",
        ])
        .args(["--queues", "300", "--per-queue", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    for phase in ["write", "disk", "crash_reopen", "clean_reopen"] {
        assert!(
            stdout.contains(&format!("\"phase\":\"{phase}\"")),
            "{stdout}"
        );
    }
    assert_eq!(
        stdout.matches("\"queues_missing_messages\":0,").count(),
        2,
        "{stdout}"
    );
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(dumper().unwrap()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn dumper_lists_summarises_and_verifies_a_store() {
    let Some(_) = dumper() else {
        println!("skipped: the dump example is not built (run the whole `cargo test`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let puts: Vec<_> = {
        let store = MessageStore::open(cfg(dir.path())).unwrap();
        (0..400u64)
            .map(|i| {
                store
                    .put_message(&message("Dump", (i % 2) as u32, "d", i))
                    .unwrap()
            })
            .collect()
    };
    let root = dir.path().to_str().unwrap();

    let (code, out) = run(&[root, "--limit", "5"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 5);
    assert!(out.lines().next().unwrap().contains("Dump/0 qo=0"), "{out}");

    let queue = layout::queue_dir(dir.path(), "Dump", 0);
    let (code, out) = run(&[queue.to_str().unwrap(), "--limit", "0"]);
    assert_eq!((code, out.as_str()), (0, ""), "--limit 0 shows nothing");
    let (code, out) = run(&[queue.to_str().unwrap(), "--limit", "2"]);
    assert_eq!((code, out.lines().count()), (0, 2), "{out}");

    let (_, out) = run(&[root, "--json", "--queue", "1", "--limit", "3"]);
    for line in out.lines() {
        assert!(line.starts_with('{') && line.ends_with('}') && line.contains("\"queue\":1,"));
    }

    let (_, out) = run(&[root, "--summary"]);
    assert!(out.contains("queue Dump/0: 200 messages"), "{out}");
    assert!(out.contains("BLANK") || out.contains("file "), "{out}");

    let shape = ["--index-slots", "512", "--index-entries", "4096"];
    let (code, out) = run(&[&[root, "--verify"][..], &shape].concat());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1200 records, queue and index entries: 0 problem(s)"),
        "{out}"
    );

    // The key index: its header and entries, in RocketMQ's layout.
    let index = layout::index_dir(dir.path());
    let (code, out) = run(&[&[index.to_str().unwrap(), "--limit", "3"][..], &shape].concat());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("index ") && out.contains(": 400 entries"),
        "{out}"
    );
    assert!(out.lines().nth(1).unwrap().contains("offset=0 "), "{out}");
    // An entry whose hash matches no key of its record is found.
    let file = std::fs::read_dir(&index)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let entry_5 = 40 + 512 * 4 + 5 * 20;
    let f = OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&[0x7F, 1, 2, 3], entry_5).unwrap();
    let (code, out) = run(&[&[root, "--verify"][..], &shape].concat());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BAD index entry 5 of "), "{out}");
    f.write_all_at(
        &rocketstore::format::key_hash("Dump#k4").to_be_bytes(),
        entry_5,
    )
    .unwrap();

    let cp = layout::checkpoint_file(dir.path());
    let cp = cp.to_str().unwrap();
    let (code, out) = run(&[cp]);
    assert_eq!(code, 0);
    assert!(out.starts_with("physic"), "{out}");

    // Damage one body: --verify finds it and fails.
    let victim = puts[10];
    let file = OpenOptions::new()
        .write(true)
        .open(layout::commit_log_file(dir.path(), 0))
        .unwrap();
    file.write_all_at(b"\xEE", victim.physical_offset + 100)
        .unwrap();
    let (code, out) = run(&[&[root, "--verify"][..], &shape].concat());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("BAD record at {}", victim.physical_offset)),
        "{out}"
    );

    let (code, _) = run(&["/no/such/store"]);
    assert_eq!(code, 2);
}

fn cfg(dir: &std::path::Path) -> rocketstore::StoreConfig {
    config(dir, sync_mode())
}
