//! The journal source, observed through the stdout sink: matches applied inside sd-journal,
//! start_at, resume after the acknowledged cursor, and a vanished cursor.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

fn config(dir: &Path, journal: &Path, extra: &str) -> std::path::PathBuf {
    config_file(
        dir,
        &format!(
            "[state]\ndirectory = \"{}\"\ncheckpoint_interval = \"0s\"\n[[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n{extra}\n[sink]\ntype = \"stdout\"\n",
            dir.join("state").display(),
            journal.display()
        ),
    )
}

fn collect(agent: &mut Agent, n: usize) -> Vec<serde_json::Value> {
    let lines = agent.stdout_lines.as_ref().unwrap();
    (0..n)
        .map(|i| {
            let l = lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("line {i} of {n} did not arrive\n{}", agent.stderr()));
            serde_json::from_str(&l).unwrap()
        })
        .collect()
}

fn no_more(agent: &Agent) {
    let lines = agent.stdout_lines.as_ref().unwrap();
    if let Ok(l) = lines.recv_timeout(Duration::from_millis(700)) {
        panic!("unexpected extra line {l}");
    }
}

fn unit_entry(seq: u64, unit: &str) -> Entry {
    let mut e = entry(seq, 1_700_000_000_000_000 + seq);
    e.retain(|(n, _)| n != "_SYSTEMD_UNIT");
    e.push(("_SYSTEMD_UNIT".into(), unit.as_bytes().to_vec()));
    e
}

#[test]
fn matches_are_applied_by_sd_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j");
    let units = ["a.service", "b.service", "c.service"];
    let all: Vec<Entry> = (0..30)
        .map(|i| unit_entry(i, units[i as usize % 3]))
        .collect();
    write_journal(&journal, &all);
    let path = config(
        dir.path(),
        &journal,
        "matches = [\"_SYSTEMD_UNIT=b.service\", \"+\", \"SEQ=0\"]",
    );
    let mut agent = Agent::start(&path);
    let got = collect(&mut agent, 11);
    no_more(&agent);
    let seqs: Vec<u64> = got
        .iter()
        .map(|v| v["SEQ"].as_str().unwrap().parse().unwrap())
        .collect();
    let expected: Vec<u64> = (0..30).filter(|i| i % 3 == 1 || *i == 0).collect();
    assert_eq!(seqs, expected);
    agent.stop();
}

#[test]
fn start_at_tail_and_resume_after_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j");
    write_journal(&journal, &entries(0, 5));
    let path = config(dir.path(), &journal, "start_at = \"tail\"");
    let mut agent = Agent::start(&path);
    assert!(agent.wait_log("perapera is running", Duration::from_secs(10)));
    no_more(&agent);
    write_journal(&journal, &entries(5, 3));
    let got = collect(&mut agent, 3);
    assert_eq!(got[0]["SEQ"], "5");
    agent.stop();
    // With a checkpoint, start_at no longer matters: resume right after the saved cursor.
    write_journal(&journal, &entries(8, 2));
    let mut agent = Agent::start(&path);
    let got = collect(&mut agent, 2);
    assert_eq!(got[0]["SEQ"], "8");
    assert_eq!(got[1]["SEQ"], "9");
    no_more(&agent);
    agent.stop();
    let cursors = journal_cursors(&journal);
    assert_eq!(
        saved_cursor(&dir.path().join("state"), "journal").as_ref(),
        cursors.last()
    );
}

#[test]
fn vanished_cursor_resumes_at_the_next_entry_and_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j");
    write_journal(&journal, &entries(0, 10));
    let cursors = journal_cursors(&journal);
    // A cursor of this journal (same seqnum id) for an entry that no longer exists: seqnum 3
    // with a different entry hash, as after the file holding it was vacuumed.
    let real = &cursors[2];
    let forged: String = real
        .split(';')
        .map(|p| {
            if p.starts_with("x=") {
                "x=1234567890abcdef".to_string()
            } else {
                p.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(";");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("checkpoint.json"),
        format!("{{\"version\":1,\"sources\":{{\"journal\":{{\"type\":\"journal\",\"cursor\":\"{forged}\",\"entry_time_us\":0,\"acked_at_ms\":0}}}}}}"),
    )
    .unwrap();
    let path = config(dir.path(), &journal, "");
    let mut agent = Agent::start(&path);
    let got = collect(&mut agent, 8);
    // The entry the journal positioned us on does not match the saved cursor, so it is
    // shipped, not skipped (skipping unconditionally would lose it).
    assert_eq!(got[0]["SEQ"], "2");
    assert_eq!(got[7]["SEQ"], "9");
    no_more(&agent);
    let log = agent.stop();
    assert!(log.contains("Journal cursor no longer exists"), "{log}");
    assert!(log.contains("gaps=1"), "{log}");
}

#[test]
fn binary_repeated_and_large_fields_survive() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j");
    let mut e = entry(0, 1_700_000_000_000_000);
    e.push(("BLOB".into(), vec![0, 1, 0xff, b'\n', 0]));
    e.push(("TAG".into(), b"first".to_vec()));
    e.push(("TAG".into(), b"second".to_vec()));
    e.push(("BIG".into(), vec![b'z'; 300_000]));
    write_journal(&journal, &[e]);
    let path = config(dir.path(), &journal, "");
    let mut agent = Agent::start(&path);
    let got = collect(&mut agent, 1);
    assert_eq!(got[0]["BLOB"]["$base64"], "AAH/CgA=");
    assert_eq!(got[0]["TAG"], serde_json::json!(["first", "second"]));
    assert_eq!(
        got[0]["BIG"].as_str().unwrap().len(),
        300_000,
        "no 64K data threshold truncation"
    );
    assert_eq!(got[0]["__REALTIME_TIMESTAMP"], 1_700_000_000_000_000u64);
    agent.stop();
}
