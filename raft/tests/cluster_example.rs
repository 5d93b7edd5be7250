//! The cluster example as a test: three node processes over localhost TCP, the leader
//! SIGKILLed half-way, every acknowledged message read back from the survivors, the
//! killed node restarted until it catches up, and every commit log compared byte for
//! byte. `cargo test` builds the example; run alone, this test skips when it is absent.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

#[test]
fn a_killed_leader_loses_nothing_and_rejoins_byte_identical() {
    let Some(cluster) = example("cluster") else {
        println!("skipped: the cluster example is not built (run the whole `cargo test`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Ports of their own (the nodes take base + 1 to base + 3), so that runs side by side
    // do not meet, below the range the kernel hands out for outgoing connections (from
    // 32768), where a client socket could hold a restarted node's port.
    let base_port = (10_000 + std::process::id() % 5_000 * 4).to_string();
    let out = Command::new(cluster)
        .args([
            "--nodes",
            "3",
            "--messages",
            "3000",
            "--kill-leader-at",
            "1500",
        ])
        .args([
            "--producers",
            "16",
            "--body",
            "256",
            "--file-size",
            "1048576",
        ])
        .args([
            "--base-port",
            &base_port,
            // A hang fails the test instead of holding CI: the run takes seconds.
            "--deadline-secs",
            "300",
            "--dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or("");
    for field in [
        "\"acked\":3000,",
        "\"lost\":0,",
        "\"replicas_identical\":true,",
    ] {
        assert!(line.contains(field), "{field} missing: {line}\n{stderr}");
    }
    // A leader was killed (a put was acknowledged by a new one), and it rejoined.
    assert!(!line.contains("\"failover_ms\":null"), "{line}");
    assert!(!line.contains("\"restarted_rejoin_ms\":null"), "{line}");
}
