//! Bad input: every configuration or state problem is a clear error naming the problem, a
//! non-zero exit, and an untouched checkpoint file.

use std::time::Duration;

use crate::support::*;

fn stdout_config(dir: &std::path::Path, journal: &std::path::Path) -> std::path::PathBuf {
    config_file(
        dir,
        &format!(
            "[state]\ndirectory = \"{}\"\n[[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n[sink]\ntype = \"stdout\"\n",
            dir.join("state").display(),
            journal.display()
        ),
    )
}

fn assert_config_error(text: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), text);
    for cmd in ["check", "run"] {
        let out = perapera(&[cmd, "-c", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cmd}: {err}");
        assert!(
            err.contains(path.to_str().unwrap()),
            "names the file: {err}"
        );
        for n in needles {
            assert!(err.contains(n), "{cmd}: expected {n:?} in: {err}");
        }
    }
}

#[test]
fn malformed_toml() {
    assert_config_error("[state\ndirectory = 1\n", &["line 1"]);
}

#[test]
fn unknown_key() {
    assert_config_error(
        "[[source]]\ntype = \"journal\"\nstart_from = \"head\"\n[sink]\ntype = \"stdout\"\n",
        &["start_from", "line 3", "start_at"],
    );
}

#[test]
fn wrong_type() {
    assert_config_error(
        "[pipeline]\nmax_in_flight = \"lots\"\n[[source]]\ntype = \"journal\"\n[sink]\ntype = \"stdout\"\n",
        &["max_in_flight", "line 2"],
    );
    assert_config_error(
        "[[source]]\ntype = \"journal\"\nmatches = \"_SYSTEMD_UNIT=a\"\n[sink]\ntype = \"stdout\"\n",
        &["matches", "line 3"],
    );
}

#[test]
fn missing_journal_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-journal");
    let path = stdout_config(dir.path(), &missing);
    for cmd in ["check", "run"] {
        let out = perapera(&[cmd, "-c", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("no-such-journal"), "{err}");
    }
    assert!(!dir.path().join("state/checkpoint.json").exists());
}

#[test]
fn corrupt_checkpoint_is_an_error_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, &entries(0, 3));
    let path = stdout_config(dir.path(), &journal);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let cp = state.join("checkpoint.json");
    for bad in [
        "",
        "{\"version\":1,\"sources\":{\"journal\":{\"type\":\"jour",
        "{\"version\":9,\"sources\":{}}",
    ] {
        std::fs::write(&cp, bad).unwrap();
        let out = perapera(&["run", "-c", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(65), "{err}");
        assert!(
            err.contains("checkpoint.json") && err.contains("perapera cursor reset"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&cp).unwrap(),
            bad,
            "checkpoint untouched"
        );
        assert!(out.stdout.is_empty(), "nothing shipped");
    }
    // A cursor the journal rejects is a checkpoint problem too.
    let bogus = "{\"version\":1,\"sources\":{\"journal\":{\"type\":\"journal\",\"cursor\":\"not-a-cursor\",\"entry_time_us\":0,\"acked_at_ms\":0}}}";
    std::fs::write(&cp, bogus).unwrap();
    let out = perapera(&["run", "-c", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("not-a-cursor") && err.contains("cursor reset"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&cp).unwrap(), bogus);
    // The way out: reset moves the bad file aside, and the next run ships from the head.
    let out = perapera(&["cursor", "reset", "-c", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cp.exists());
    let mut agent = Agent::start(&path);
    let lines = agent.stdout_lines.take().unwrap();
    for _ in 0..3 {
        lines
            .recv_timeout(Duration::from_secs(10))
            .expect("entry shipped after reset");
    }
    agent.stop();
    assert!(saved_cursor(&state, "journal").is_some());
}

#[test]
fn second_instance_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, &entries(0, 3));
    let path = stdout_config(dir.path(), &journal);
    let mut first = Agent::start(&path);
    let lines = first.stdout_lines.take().unwrap();
    for _ in 0..3 {
        lines.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    assert!(first.wait_log("perapera is running", Duration::from_secs(10)));
    let state = dir.path().join("state");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while saved_cursor(&state, "journal").is_none() {
        assert!(std::time::Instant::now() < end, "checkpoint written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = std::fs::read(state.join("checkpoint.json")).unwrap();
    let out = perapera(&["run", "-c", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("in use by another perapera instance"), "{err}");
    assert!(err.contains(&format!("pid {}", first.child.id())), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read(state.join("checkpoint.json")).unwrap(),
        before
    );
    first.stop();
}

#[test]
fn check_describes_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let path = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[[source]]\ntype = \"journal\"\nname = \"host\"\ndirectory = \"{}\"\nmatches = [\"_SYSTEMD_UNIT=nginx.service\"]\n[sink]\ntype = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"logs.{{_SYSTEMD_UNIT:-unknown}}\"\n[sink.librdkafka]\n\"compression.type\" = \"lz4\"\n",
            dir.path().join("state").display(),
            journal.display()
        ),
    );
    let out = perapera(&["check", "-c", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Source \"host\""), "{text}");
    assert!(text.contains("nginx.service"), "{text}");
    assert!(text.contains("logs.{_SYSTEMD_UNIT:-unknown}"), "{text}");
    assert!(text.contains("compression.type = lz4"), "{text}");
    assert!(text.contains("enable.idempotence = true"), "{text}");
    assert!(
        text.contains("at most 1000 distinct topics") && text.contains("wait in the window"),
        "{text}"
    );
    let out = perapera(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("perapera "));
}
