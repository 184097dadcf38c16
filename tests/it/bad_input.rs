//! The bad-input corpus (`tests/bad_input/`, outcomes in its README): each hostile input gets
//! a clear error that names it, or a counted, logged skip of the one bad thing while
//! everything else is delivered.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn corpus(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bad_input")
        .join(kind)
}

/// A config: the journal in `journal` to stdout, state in `state`, no metrics endpoint.
fn journal_to_stdout(dir: &Path, state: &Path, journal: &Path) -> PathBuf {
    config_file(
        dir,
        &format!(
            "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"off\"\n[[source]]\ntype = \"journal\"\n\
             directory = \"{}\"\n[sink]\ntype = \"stdout\"\n",
            state.display(),
            journal.display()
        ),
    )
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Every `config/*.toml`: `perapera check` and `perapera run` exit 64 naming the file and
/// each `# expect:` text of the case.
#[test]
fn config_corpus_every_case_is_a_clear_error() {
    let cases = files_in(&corpus("config"));
    assert!(cases.len() >= 70, "{} config cases", cases.len());
    for case in cases {
        let bytes = std::fs::read(&case).unwrap();
        let expect: Vec<String> = String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(str::to_string)
            .collect();
        assert!(
            !expect.is_empty(),
            "{} has no # expect: line",
            case.display()
        );
        for cmd in ["check", "run"] {
            let out = perapera(&[cmd, "-c", case.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(64),
                "{cmd} {}: {err}",
                case.display()
            );
            assert!(
                err.contains(case.to_str().unwrap()),
                "names the file: {err}"
            );
            for e in &expect {
                assert!(
                    err.contains(e.as_str()),
                    "{}: expected {e:?} in: {err}",
                    case.display()
                );
            }
            assert!(out.stdout.is_empty() || cmd == "check");
        }
    }
}

/// What each checkpoint case must produce: the text the error must contain.
fn checkpoint_expectations() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("empty.json", "the file is empty"),
        ("whitespace.json", "the file is empty"),
        ("truncated.json", "not valid JSON"),
        ("binary.json", "not valid JSON"),
        ("version_2.json", "format version 2"),
        ("no_version.json", "no \"version\""),
        ("version_string.json", "no \"version\""),
        ("sources_array.json", "invalid type"),
        ("unknown_source_type.json", "unknown variant `kafka`"),
        ("missing_cursor.json", "missing field `cursor`"),
        ("unknown_field.json", "unknown field `extra`"),
        ("negative_offset.json", "invalid value"),
        ("huge_offset.json", "invalid type"),
        ("nul_in_cursor.json", "rejects the checkpointed cursor"),
        ("not_a_cursor.json", "rejects the checkpointed cursor"),
    ])
}

/// Every `checkpoint/*.json` as the state's checkpoint.json: a corrupt one stops perapera with
/// exit 65, a message naming the file, what is wrong and `perapera cursor reset`, and leaves it
/// untouched; a cursor of a vanished journal is a reported gap, and shipping starts over.
#[test]
fn checkpoint_corpus_is_refused_untouched_or_reported_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, &entries(0, 3));
    let state = dir.path().join("state");
    let config = journal_to_stdout(dir.path(), &state, &journal);
    let expectations = checkpoint_expectations();
    let cases = files_in(&corpus("checkpoint"));
    assert_eq!(
        cases.len(),
        expectations.len() + 1,
        "every case has an expectation"
    );
    for case in cases {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).unwrap();
        let cp = state.join("checkpoint.json");
        let bytes = std::fs::read(&case).unwrap();
        std::fs::write(&cp, &bytes).unwrap();
        if name == "vanished_cursor.json" {
            let mut agent = Agent::start(&config);
            let lines = agent.stdout_lines.take().unwrap();
            for i in 0..3 {
                lines
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| {
                        panic!("{name}: entry {i} not shipped\n{}", agent.stderr())
                    });
            }
            let log = agent.stop();
            assert!(
                log.contains("Journal cursor no longer exists"),
                "{name}: {log}"
            );
            assert!(log.contains("gaps=1"), "{name}: counted: {log}");
            continue;
        }
        let want = expectations[name.as_str()];
        let journal_verdict = want.contains("rejects the checkpointed cursor");
        let cmds: &[&str] = &["run", "check"];
        for &cmd in cmds {
            let out = perapera(&[cmd, "-c", config.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(65), "{name} {cmd}: {err}");
            assert!(
                err.contains("cursor reset"),
                "{name}: says what to do: {err}"
            );
            assert!(err.contains(want), "{name}: expected {want:?} in: {err}");
            if !journal_verdict {
                assert!(
                    err.contains("checkpoint.json"),
                    "{name}: names the file: {err}"
                );
            }
            assert!(
                out.stdout.iter().all(|b| *b != b'{'),
                "{name}: nothing shipped"
            );
            assert_eq!(std::fs::read(&cp).unwrap(), bytes, "{name}: untouched");
        }
    }
}

/// The SEQ numbers of stdout JSON lines, and the lines by SEQ.
fn by_seq(lines: &[String]) -> HashMap<u64, serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let seq = v["SEQ"].as_str()?.parse().ok()?;
            Some((seq, v))
        })
        .collect()
}

fn read_lines(
    agent: &mut Agent,
    mut until: impl FnMut(&[String]) -> bool,
    timeout: Duration,
) -> Vec<String> {
    let rx = agent.stdout_lines.take().unwrap();
    let mut got = Vec::new();
    let end = Instant::now() + timeout;
    while !until(&got) {
        assert!(
            Instant::now() < end,
            "timed out after {} lines\n{}",
            got.len(),
            agent.stderr()
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(l);
        }
    }
    agent.stdout_lines = Some(rx);
    got
}

/// Journal entries with a 10 MB field, the most fields journal-remote writes into one entry
/// (it caps entries at 1024 fields: 10 000 are tested on the forward source), NUL bytes and
/// invalid UTF-8 in values; next to them in the same directory a truncated journal file, a
/// corrupted one and one of random bytes. Everything readable is shipped byte-exact,
/// perapera keeps running.
#[test]
fn hostile_journal_entries_and_broken_journal_files() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    // The good file: 100 plain entries, then the hostile ones (SEQ 100..=103).
    let mut good = entries(0, 100);
    let mut big = entry(100, 1_700_000_001_000_000);
    big.push(("HUGE".into(), vec![b'h'; 10 << 20]));
    good.push(big);
    let mut wide = entry(101, 1_700_000_001_001_000);
    for i in 0..1000 {
        wide.push((format!("F{i}"), format!("v{i}").into_bytes()));
    }
    good.push(wide);
    let mut nul = entry(102, 1_700_000_001_002_000);
    nul.push(("NULS".into(), b"a\0b\0\0c".to_vec()));
    good.push(nul);
    let mut bad_utf8 = entry(103, 1_700_000_001_003_000);
    bad_utf8.push(("BADUTF8".into(), vec![0xff, 0xfe, b'x', 0xc3, 0x28]));
    good.push(bad_utf8);
    write_journal(&journal, &good);
    // The broken files, made from valid journals of their own entries.
    let scratch = dir.path().join("scratch");
    write_journal(&scratch, &entries(1000, 500));
    let valid = std::fs::read(scratch.join("test.journal")).unwrap();
    std::fs::write(journal.join("truncated.journal"), &valid[..valid.len() / 2]).unwrap();
    let mut corrupt = valid.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(journal.join("corrupt.journal"), &corrupt).unwrap();
    let mut noise = vec![0u8; 1 << 20];
    getrandom_fill(&mut noise);
    std::fs::write(journal.join("noise.journal"), &noise).unwrap();

    let config = journal_to_stdout(dir.path(), &dir.path().join("state"), &journal);
    // What journalctl (an independent reader) can read of the directory, perapera must ship.
    let out = Command::new("journalctl")
        .arg("-D")
        .arg(&journal)
        .args(["-o", "json", "--output-fields=SEQ", "--no-pager"])
        .output()
        .unwrap();
    let readable: HashSet<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["SEQ"].as_str()?.parse().ok())
        .collect();
    assert!(
        (0..104).all(|s| readable.contains(&s)),
        "journalctl reads the good file"
    );
    let mut agent = Agent::start(&config);
    // Each line is parsed once: parsing every line again for each new one made this test
    // quadratic in the 10 MB line (minutes in a debug build on a loaded CI machine).
    let (mut shipped, mut parsed) = (HashSet::new(), 0);
    let lines = read_lines(
        &mut agent,
        |got| {
            shipped.extend(by_seq(&got[parsed..]).into_keys());
            parsed = got.len();
            readable.iter().all(|s| shipped.contains(s))
        },
        Duration::from_secs(120),
    );
    eprintln!(
        "journalctl reads {} entries of the directory ({} of the broken files); perapera shipped them all",
        readable.len(),
        readable.iter().filter(|s| **s >= 1000).count()
    );
    let seqs = by_seq(&lines);
    let big = &seqs[&100];
    assert_eq!(
        big["HUGE"].as_str().map(str::len),
        Some(10 << 20),
        "10 MB field whole"
    );
    let wide = &seqs[&101];
    assert_eq!(wide["F999"], "v999");
    // Binary values are base64 objects in the JSON lines, byte-exact.
    let nuls = &seqs[&102]["NULS"];
    assert_eq!(decode_bin(nuls), b"a\0b\0\0c", "{nuls}");
    let bad = &seqs[&103]["BADUTF8"];
    assert_eq!(decode_bin(bad), vec![0xff, 0xfe, b'x', 0xc3, 0x28], "{bad}");
    // The corrupt files: whatever sd-journal can read of them arrives; nothing crashes.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "still running\n{}",
        agent.stderr()
    );
    let log = agent.stop();
    assert!(!log.contains("panicked"), "{log}");
}

/// A value of a JSON line as bytes: a string (valid UTF-8, NULs included) or, for other
/// bytes, the `{"$base64": ...}` object.
fn decode_bin(v: &serde_json::Value) -> Vec<u8> {
    use base64::Engine;
    if let Some(s) = v.as_str() {
        return s.as_bytes().to_vec();
    }
    let b64 = v["$base64"]
        .as_str()
        .unwrap_or_else(|| panic!("neither a string nor a base64 object: {v}"));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn getrandom_fill(buf: &mut [u8]) {
    // xorshift: random enough to be no journal, reproducible.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// Log files: a 50 MB line, NUL bytes, invalid UTF-8, a binary file and malformed CRI lines.
/// The long line arrives as marked parts that rebuild it; every other line arrives
/// byte-exact; lines that are not CRI are shipped as they are and counted.
#[test]
fn hostile_log_files() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let long: Vec<u8> = (0..50u64 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let mut f = std::fs::File::create(logs.join("long.log")).unwrap();
    f.write_all(&long).unwrap();
    f.write_all(b"\nafter the long line\n").unwrap();
    std::fs::write(logs.join("nul.log"), b"a\0b\nc\0\0\n").unwrap();
    std::fs::write(logs.join("utf8.log"), b"\xff\xfe bad\n\xc3\x28 also\n").unwrap();
    let mut binary = vec![0u8; 64 << 10];
    getrandom_fill(&mut binary);
    std::fs::write(logs.join("binary.log"), &binary).unwrap();
    let raw_lines =
        binary.split(|b| *b == b'\n').count() - usize::from(binary.last() == Some(&b'\n'));
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"off\"\n[[source]]\ntype = \"files\"\n\
             include = [\"{}/*.log\"]\nformat = \"raw\"\nmax_line_bytes = \"1MiB\"\npartial_line_timeout = \"200ms\"\n\
             [sink]\ntype = \"stdout\"\n",
            dir.path().join("state").display(),
            logs.display()
        ),
    );
    let mut agent = Agent::start(&config);
    // 50 parts of the long line + "after" + 2 + 2 + the binary file's lines.
    let want = 50 + 1 + 2 + 2 + raw_lines;
    let lines = read_lines(
        &mut agent,
        |got| got.len() >= want,
        Duration::from_secs(300),
    );
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let message = |r: &serde_json::Value| decode_bin(&r["message"]);
    let of = |name: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with(name)))
            .collect()
    };
    let parts = of("long.log");
    let mut rebuilt = Vec::new();
    let mut last_seen = false;
    for r in parts
        .iter()
        .take_while(|r| r.get("_PERAPERA_PART").is_some())
    {
        rebuilt.extend(message(r));
        last_seen |= r.get("_PERAPERA_PART_LAST").is_some();
    }
    assert!(last_seen, "the last part is marked");
    assert!(
        rebuilt == long,
        "the 50 MB line rebuilds byte-exact ({} bytes)",
        rebuilt.len()
    );
    assert!(parts.iter().any(|r| message(r) == b"after the long line"));
    let nul: Vec<Vec<u8>> = of("nul.log").iter().map(|r| message(r)).collect();
    assert_eq!(nul, vec![b"a\0b".to_vec(), b"c\0\0".to_vec()]);
    let utf8: Vec<Vec<u8>> = of("utf8.log").iter().map(|r| message(r)).collect();
    assert_eq!(
        utf8,
        vec![b"\xff\xfe bad".to_vec(), b"\xc3\x28 also".to_vec()]
    );
    let bin: Vec<u8> = of("binary.log")
        .iter()
        .map(|r| message(r))
        .collect::<Vec<_>>()
        .join(&b'\n');
    assert_eq!(bin, binary[..bin.len()], "binary lines byte-exact");
    agent.stop();
}

/// A forward record of 10 000 fields (journal-remote cannot write such a journal entry) is
/// shipped whole.
#[test]
fn forward_record_with_ten_thousand_fields() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"off\"\n[[source]]\ntype = \"forward\"\n\
             listen = \"127.0.0.1:{port}\"\n[sink]\ntype = \"stdout\"\n",
            dir.path().join("state").display()
        ),
    );
    let mut agent = Agent::start(&config);
    wait_port(port, Duration::from_secs(20), "the forward source");
    let script = "import sys\nfrom fluent import sender\n\
                  s = sender.FluentSender('wide', host='127.0.0.1', port=int(sys.argv[1]), timeout=30)\n\
                  ok = s.emit('rec', {('k%d' % i): i for i in range(10000)})\n\
                  s.close()\nsys.exit(0 if ok else 1)\n";
    let status = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let lines = read_lines(&mut agent, |got| !got.is_empty(), Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let keys: HashSet<&String> = v.as_object().unwrap().keys().collect();
    assert!(
        (0..10_000).all(|i| keys.contains(&format!("k{i}"))),
        "{} keys",
        keys.len()
    );
    assert_eq!(v["k9999"], 9999);
    agent.stop();
}

/// A read-only state directory is a clear error at start that names it.
#[test]
fn read_only_state_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, &entries(0, 3));
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "mounting a read-only tmpfs needs root"
    );
    output_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
            .arg(&state),
    );
    let config = journal_to_stdout(dir.path(), &state, &journal);
    let out = perapera(&["run", "-c", config.to_str().unwrap()]);
    let _ = Command::new("umount").arg("-l").arg(&state).status();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(state.to_str().unwrap()),
        "names the directory: {err}"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "nothing shipped without a writable state"
    );
}
