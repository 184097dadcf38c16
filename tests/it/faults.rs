//! Faults of the machine. Disk full on the state directory (a small tmpfs this test mounts,
//! so it needs root): the checkpoint stays the last valid one, perapera says so and keeps
//! retrying, reading pauses at the in-flight window, a SIGKILL meanwhile loses nothing, and
//! shipping and checkpointing resume when space returns.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test mounts a tmpfs: run it as root (./test.sh does on CI)"
        );
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `path` until ENOSPC; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    loop {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    // Byte by byte into the last partial block.
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
    filler
}

/// SEQ of each stdout JSON line received (until the channel is empty, or closed with `all`).
fn drain(
    rx: &std::sync::mpsc::Receiver<String>,
    all: bool,
    seen: &mut HashSet<u64>,
    lines: &mut u64,
) {
    loop {
        let l = if all {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(l) => l,
                Err(_) => return,
            }
        } else {
            match rx.try_recv() {
                Ok(l) => l,
                Err(_) => return,
            }
        };
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        let seq = v["SEQ"].as_str().and_then(|s| s.parse().ok()).unwrap();
        seen.insert(seq);
        *lines += 1;
    }
}

#[test]
fn disk_full_keeps_the_checkpoint_valid_and_resumes_when_space_returns() {
    const WINDOW: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let state = dir.path().join("state");
    let _tmpfs = Tmpfs::mount(&state, "256k");
    write_journal(&journal, &entries(0, 1000));
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\ncheckpoint_interval = \"100ms\"\n[metrics]\naddress = \"off\"\n\
             [pipeline]\nmax_in_flight = {WINDOW}\n[[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n\
             [sink]\ntype = \"stdout\"\n",
            state.display(),
            journal.display()
        ),
    );
    let mut seen = HashSet::new();
    let mut lines = 0u64;
    let mut agent = Agent::start(&config);
    let first_rx = agent.stdout_lines.take().unwrap();
    let first_last = journal_cursors(&journal).pop().unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while saved_cursor(&state, "journal").as_deref() != Some(first_last.as_str()) {
        assert!(Instant::now() < end, "{}", agent.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }

    // The disk fills up; 2000 more entries arrive.
    let filler = fill(&state);
    write_journal(&journal, &entries(1000, 2000));
    assert!(
        agent.wait_log("Cannot write the checkpoint", Duration::from_secs(30)),
        "{}",
        agent.stderr()
    );
    assert!(
        agent.stderr().contains("No space left on device"),
        "{}",
        agent.stderr()
    );
    std::thread::sleep(Duration::from_secs(2));
    drain(&first_rx, false, &mut seen, &mut lines);
    // The checkpoint on disk is the last valid one, and reading paused at the window.
    assert_eq!(
        saved_cursor(&state, "journal").as_deref(),
        Some(first_last.as_str())
    );
    assert!(
        seen.len() as u64 <= 1000 + WINDOW,
        "{} entries read with no checkpoint written: the window did not hold",
        seen.len()
    );
    assert!(
        seen.len() > 1000,
        "the entries after the checkpoint were shipped"
    );

    // SIGKILL while the disk is full, restart while it still is.
    agent.kill9();
    drain(&first_rx, true, &mut seen, &mut lines);
    let before_restart = lines;
    let mut agent = Agent::start(&config);
    let rx = agent.stdout_lines.take().unwrap();
    assert!(
        agent.wait_log("Cannot write the checkpoint", Duration::from_secs(30)),
        "{}",
        agent.stderr()
    );
    assert_eq!(
        saved_cursor(&state, "journal").as_deref(),
        Some(first_last.as_str())
    );

    // Space returns: everything arrives, the checkpoint reaches the end.
    std::fs::remove_file(filler).unwrap();
    let last = journal_cursors(&journal).pop().unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while saved_cursor(&state, "journal").as_deref() != Some(last.as_str()) {
        assert!(Instant::now() < end, "{}", agent.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{}", agent.stderr());
    drain(&rx, true, &mut seen, &mut lines);
    let missing: Vec<u64> = (0..3000).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "lost {} entries: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    // Re-sent after the SIGKILL: only what the unwritable checkpoint did not cover, at most
    // the window.
    let resent = lines - 3000;
    eprintln!(
        "disk full: {before_restart} lines before the SIGKILL, {lines} in all, {resent} re-sent"
    );
    assert!(
        resent <= WINDOW,
        "{resent} duplicates (window {WINDOW}); {before_restart} lines before the restart"
    );
}
