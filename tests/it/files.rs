//! The files source end to end: lines written while perapera runs, rotation under load,
//! SIGKILL restarts, a broker outage, container formats and bad input. Kafka is librdkafka's
//! mock cluster in the test process (it survives perapera's SIGKILL) or Apache Kafka.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;

use crate::support::*;

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

fn mock() -> Mock {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("files", 3, 1).unwrap();
    mock
}

/// A files source over `include`, shipping to topic `files`.
fn files_config(
    dir: &Path,
    include: &[String],
    bootstrap: &str,
    extra_source: &str,
    extra_top: &str,
) -> PathBuf {
    let include: Vec<String> = include.iter().map(|p| format!("{p:?}")).collect();
    config_file(
        dir,
        &format!(
            "{extra_top}\n[state]\ndirectory = \"{}\"\ncheckpoint_interval = \"200ms\"\n\
             [[source]]\ntype = \"files\"\ninclude = [{}]\nrescan_interval = \"500ms\"\n\
             rotate_wait = \"1s\"\n{extra_source}\n\
             [sink]\ntype = \"kafka\"\nbrokers = [\"{bootstrap}\"]\ntopic = \"files\"\n\
             headers = [\"source\", \"position\", \"content-type\"]\n",
            dir.join("state").display(),
            include.join(", "),
        ),
    )
}

/// A temporary directory with `logs/` and a config shipping `logs/*.log` to `bootstrap`.
fn logs_setup(bootstrap: &str, extra_top: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let path = files_config(
        dir.path(),
        &[format!("{}/*.log", logs.display())],
        bootstrap,
        "",
        extra_top,
    );
    (dir, logs, path)
}

/// Reads `files` until `n` messages arrived, then a little longer (duplicates); message →
/// count.
fn read_messages(
    bootstrap: &str,
    n: usize,
    timeout: Duration,
) -> (HashMap<Vec<u8>, usize>, Reader) {
    let mut reader = Reader::new(bootstrap, "files");
    reader.read_n(n, timeout);
    reader.drain(Duration::from_millis(500));
    let mut counts = HashMap::new();
    for m in &reader.messages {
        *counts.entry(m.message()).or_insert(0) += 1;
    }
    (counts, reader)
}

fn line(file: usize, i: usize) -> String {
    format!("file{file:02} line{i:06} {}", "x".repeat(i % 50))
}

/// Writes `per_file` lines to each of `files` files in `dir` (rounds of a few lines per file).
fn write_lines(dir: &Path, files: usize, per_file: usize, pause_every: usize) {
    for i in 0..per_file {
        for f in 0..files {
            append(
                &dir.join(format!("app{f:02}.log")),
                format!("{}\n", line(f, i)).as_bytes(),
            );
        }
        if pause_every > 0 && i % pause_every == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn hundred_thousand_lines_from_fifty_files_reach_apache_kafka() {
    let kafka = Kafka::single();
    kafka.create_topic("files", 3);
    let (_dir, logs, path) = logs_setup(&kafka.bootstrap, "");
    let agent = Agent::start(&path);
    assert!(
        agent.wait_log("perapera is running", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    // Written while perapera runs: 50 files, 2 000 lines each.
    write_lines(&logs, 50, 2_000, 100);
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/consume_files.py"
        ))
        .args([&kafka.bootstrap, "100000", "files"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    let got: HashMap<String, u64> = report["messages"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    for f in 0..50 {
        for i in 0..2_000 {
            let l = line(f, i);
            assert_eq!(
                got.get(&l),
                Some(&1),
                "{l:?} arrived once\n{}",
                agent.stderr()
            );
        }
    }
    assert_eq!(report["count"], 100_000, "nothing else arrived");
    agent.stop();
}

#[test]
fn rotation_copytruncate_and_recreate_under_load_lose_nothing() {
    let mock = mock();
    let (_dir, logs, path) = logs_setup(&mock.bootstrap_servers(), "");
    let agent = Agent::start(&path);
    assert!(agent.wait_log("perapera is running", Duration::from_secs(10)));
    let stop = Arc::new(AtomicBool::new(false));
    // Three writers, one per rotation style, each writing numbered lines as fast as a busy
    // service, while the main thread rotates their files.
    let mut writers = Vec::new();
    for (w, style) in ["rename", "copytruncate", "recreate"]
        .into_iter()
        .enumerate()
    {
        let logs = logs.clone();
        let stop = stop.clone();
        writers.push(std::thread::spawn(move || {
            let live = logs.join(format!("{style}.log"));
            let mut n = 0usize;
            let mut rotations = 0;
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&live)
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    writeln!(file, "{style} {n:07}").unwrap();
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
                if n.is_multiple_of(3_000) {
                    rotations += 1;
                    match w {
                        0 => {
                            // logrotate's default: rename, then the writer reopens.
                            std::fs::rename(&live, logs.join(format!("{style}.log.{rotations}")))
                                .unwrap();
                            writeln!(file, "{style} {n:07}").unwrap(); // a late write to the old file
                            n += 1;
                            file = OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&live)
                                .unwrap();
                        }
                        1 => {
                            // copytruncate: the writer keeps its descriptor (O_APPEND).
                            std::fs::copy(&live, logs.join(format!("{style}.log.{rotations}")))
                                .unwrap();
                            OpenOptions::new()
                                .write(true)
                                .open(&live)
                                .unwrap()
                                .set_len(0)
                                .unwrap();
                            // Copytruncate twice before perapera read what came between loses
                            // that generation (README, Rotation): rotations come at most once a
                            // second, as fast as logrotate's `hourly` is not.
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        _ => {
                            // delete and recreate.
                            std::fs::remove_file(&live).unwrap();
                            file = OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&live)
                                .unwrap();
                        }
                    }
                }
            }
            n
        }));
    }
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    let written: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let total: usize = written.iter().sum();
    let (counts, _) = read_messages(&mock.bootstrap_servers(), total, Duration::from_secs(60));
    for (style, n) in ["rename", "copytruncate", "recreate"].iter().zip(&written) {
        assert!(*n >= 6_000, "{style}: only {n} lines written, no rotation");
        let lost: Vec<usize> = (0..*n)
            .filter(|i| !counts.contains_key(format!("{style} {i:07}").as_bytes()))
            .collect();
        assert!(
            lost.is_empty(),
            "{style}: {} of {n} lines lost, first {:?}\n{}",
            lost.len(),
            &lost[..lost.len().min(5)],
            agent.stderr()
        );
    }
    agent.stop();
}

#[test]
fn sigkill_ten_times_during_a_multi_file_run_loses_nothing() {
    let mock = mock();
    let window = 200;
    let (dir, logs, path) = logs_setup(
        &mock.bootstrap_servers(),
        &format!("[pipeline]\nmax_in_flight = {window}\n"),
    );
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let logs = logs.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            write_lines(&logs, 5, 6_000, 20);
            done.store(true, Ordering::Relaxed);
        })
    };
    let state = dir.path().join("state");
    for kill in 0..10 {
        let agent = Agent::start(&path);
        assert!(
            agent.wait_log("perapera is running", Duration::from_secs(10)),
            "{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(300 + 70 * kill));
        agent.kill9();
        // Every checkpointed offset is a line boundary of its file: a restart resumes there.
        for (file, offset) in saved_files(&state, "files") {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                offset as usize <= bytes.len(),
                "{file}: offset {offset} beyond the end"
            );
            assert!(
                offset == 0 || bytes[offset as usize - 1] == b'\n',
                "{file}: offset {offset} is not after a line"
            );
        }
    }
    writer.join().unwrap();
    assert!(done.load(Ordering::Relaxed));
    let agent = Agent::start(&path);
    let (counts, _) = read_messages(&mock.bootstrap_servers(), 30_000, Duration::from_secs(90));
    let mut lost = 0;
    for f in 0..5 {
        for i in 0..6_000 {
            if !counts.contains_key(line(f, i).as_bytes()) {
                lost += 1;
            }
        }
    }
    let dups: usize = counts.values().map(|n| n - 1).sum();
    println!("files SIGKILL x10: 30000 lines, lost {lost}, duplicates {dups}");
    assert_eq!(lost, 0, "{}", agent.stderr());
    assert!(
        dups <= 10 * window,
        "{dups} duplicates exceed 10 kills x window {window}"
    );
    agent.stop();
}

#[test]
fn broker_down_nothing_advances_memory_bounded_then_everything_arrives() {
    let mock = mock();
    let down = BrokerDown::new(&mock, 1);
    let (dir, logs, path) = logs_setup(
        &mock.bootstrap_servers(),
        "[pipeline]\nmax_in_flight = 2000\nmax_in_flight_bytes = \"4MiB\"\n",
    );
    let agent = Agent::start(&path);
    assert!(agent.wait_log("perapera is running", Duration::from_secs(10)));
    // 60 MB of lines while the broker is down: far more than the window.
    let mut max_rss = 0;
    let payload = "p".repeat(200);
    for round in 0..30 {
        let mut chunk = String::new();
        for i in 0..10_000 {
            chunk.push_str(&format!("r{round:02} {i:05} {payload}\n"));
        }
        append(
            &logs.join(format!("big{}.log", round % 3)),
            chunk.as_bytes(),
        );
        max_rss = max_rss.max(rss_kib(agent.child.id()));
        assert!(
            saved_files(&dir.path().join("state"), "files")
                .iter()
                .all(|(_, o)| *o == 0),
            "a checkpoint moved without an ack"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    max_rss = max_rss.max(rss_kib(agent.child.id()));
    println!(
        "broker down, 60 MB written: perapera max RSS {} MiB",
        max_rss / 1024
    );
    assert!(
        max_rss < 48 * 1024,
        "RSS {max_rss} KiB: not bounded by the window"
    );
    // 60 MB were written; a 4 MiB window keeps perapera far below that (measured: 19 MiB).
    down.up();
    let (counts, _) = read_messages(&mock.bootstrap_servers(), 300_000, Duration::from_secs(120));
    assert_eq!(
        counts.len(),
        300_000,
        "every line arrived\n{}",
        agent.stderr()
    );
    agent.stop();
}

/// A pod log directory under the real /var/log/pods (removed on drop).
struct PodDir(PathBuf);
impl Drop for PodDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn container_formats_kubernetes_metadata_long_lines_and_binary() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("perapera-test-{}", std::process::id());
    let pod_dir = PodDir(PathBuf::from(format!(
        "/var/log/pods/{ns}_web-7d4b9c-x2x_0f3c1d2e-aaaa-bbbb-cccc-1234567890ab"
    )));
    let cri_dir = pod_dir.0.join("nginx");
    std::fs::create_dir_all(&cri_dir).unwrap();
    let docker_dir = dir.path().join("docker");
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&docker_dir).unwrap();
    std::fs::create_dir_all(&raw_dir).unwrap();
    let cri = cri_dir.join("0.log");
    append(
        &cri,
        b"2026-11-23T10:00:00.123456789Z stdout P hello \n\
          2026-11-23T10:00:00.123456790Z stdout P big \n\
          2026-11-23T10:00:00.123456791Z stdout F world\n\
          2026-11-23T10:00:01.000000000Z stderr F oops\n",
    );
    let docker = docker_dir.join("c.log");
    append(
        &docker,
        b"{\"log\":\"part one \",\"stream\":\"stdout\",\"time\":\"2026-11-23T10:00:02.5Z\"}\n\
          {\"log\":\"part two\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-23T10:00:02.6Z\"}\n\
          {\"log\":\"single\\n\",\"stream\":\"stderr\",\"time\":\"2026-11-23T10:00:03Z\"}\n",
    );
    let raw = raw_dir.join("r.log");
    // Pseudo-random letters: every part of the line differs.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..5_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        })
        .collect();
    let binary = vec![b'b', 0xff, 0xfe, 0x00, b'z'];
    append(
        &raw,
        &[&big[..], b"\n", &binary[..], b"\r\n", b"after\n"].concat(),
    );
    let toml = format!(
        "[state]\ndirectory = \"{state}\"\n\
         [[source]]\ntype = \"files\"\nname = \"pods\"\nformat = \"cri\"\ninclude = [\"/var/log/pods/{ns}_*/*/*.log\"]\n\
         [source.fields]\ncluster = \"test\"\n\
         [[source]]\ntype = \"files\"\nname = \"docker\"\nformat = \"docker\"\ninclude = [\"{docker}/*.log\"]\n\
         [[source]]\ntype = \"files\"\nname = \"raw\"\ninclude = [\"{raw}/*.log\"]\n\
         [sink]\ntype = \"kafka\"\nbrokers = [\"{b}\"]\ntopic = \"files\"\n",
        state = dir.path().join("state").display(),
        docker = docker_dir.display(),
        raw = raw_dir.display(),
        b = mock.bootstrap_servers(),
    );
    let path = config_file(dir.path(), &toml);
    let agent = Agent::start(&path);
    // 2 CRI + 2 docker + 20 parts of the 5 MB line + 2 raw lines.
    let parts = 5_000_000usize.div_ceil(256 << 10);
    let (counts, reader) = read_messages(
        &mock.bootstrap_servers(),
        6 + parts,
        Duration::from_secs(60),
    );
    let by_message: HashMap<Vec<u8>, &Consumed> =
        reader.messages.iter().map(|m| (m.message(), m)).collect();
    let field = |m: &Consumed, name: &str| {
        m.fields()
            .get(name)
            .and_then(|v| v.as_str().map(str::to_string))
    };
    // CRI partials joined, with stream, time and Kubernetes metadata.
    let joined = by_message
        .get(b"hello big world".as_slice())
        .unwrap_or_else(|| {
            panic!(
                "joined CRI line missing: {:?}\n{}",
                counts
                    .keys()
                    .map(|k| String::from_utf8_lossy(&k[..k.len().min(40)]).into_owned())
                    .collect::<Vec<_>>(),
                agent.stderr()
            )
        });
    assert_eq!(field(joined, "stream").as_deref(), Some("stdout"));
    assert_eq!(
        field(joined, "time").as_deref(),
        Some("2026-11-23T10:00:00.123456789Z")
    );
    assert_eq!(field(joined, "kubernetes.namespace"), Some(ns.clone()));
    assert_eq!(
        field(joined, "kubernetes.pod").as_deref(),
        Some("web-7d4b9c-x2x")
    );
    assert_eq!(
        field(joined, "kubernetes.pod_uid").as_deref(),
        Some("0f3c1d2e-aaaa-bbbb-cccc-1234567890ab")
    );
    assert_eq!(
        field(joined, "kubernetes.container").as_deref(),
        Some("nginx")
    );
    assert_eq!(field(joined, "cluster").as_deref(), Some("test"));
    assert_eq!(field(joined, "path"), Some(cri.display().to_string()));
    assert_eq!(
        joined.timestamp,
        Some(1_795_428_000_123),
        "Kafka timestamp is the CRI time"
    );
    let oops = by_message[b"oops".as_slice()];
    assert_eq!(field(oops, "stream").as_deref(), Some("stderr"));
    // Docker partials joined.
    let d = by_message
        .get(b"part one part two".as_slice())
        .expect("joined docker line");
    assert_eq!(field(d, "stream").as_deref(), Some("stdout"));
    assert_eq!(d.timestamp, Some(1_795_428_002_500));
    assert!(by_message.contains_key(b"single".as_slice()));
    // The 5 MB line: split into marked parts, nothing lost.
    let mut pieces: Vec<(u64, bool, Vec<u8>)> = reader
        .messages
        .iter()
        .filter_map(|m| {
            let f = m.fields();
            let index = f.get("_PERAPERA_PART")?.as_u64()?;
            Some((index, f.contains_key("_PERAPERA_PART_LAST"), m.message()))
        })
        .collect();
    pieces.sort();
    assert_eq!(pieces.len(), parts);
    assert!(pieces.last().unwrap().1 && pieces.iter().filter(|p| p.1).count() == 1);
    let rebuilt: Vec<u8> = pieces.into_iter().flat_map(|p| p.2).collect();
    assert!(
        rebuilt == big,
        "the 5 MB line is rebuilt byte-exact from its parts"
    );
    // Invalid UTF-8 arrives byte-exact (msgpack bin), CRLF stripped.
    assert!(
        by_message.contains_key(binary.as_slice()),
        "binary line byte-exact"
    );
    assert!(by_message.contains_key(b"after".as_slice()));
    assert!(counts.values().all(|n| *n == 1), "no duplicates");
    agent.stop();
}

#[test]
fn bad_input_is_logged_once_and_the_rest_keeps_shipping() {
    let mock = mock();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    append(&logs.join("good.log"), b"good 1\n");
    let secret = logs.join("secret.log");
    append(&secret, b"unreadable\n");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    std::fs::create_dir(logs.join("adir.log")).unwrap();
    let fifo = logs.join("pipe.log");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A dangling symlink is a file that vanished between the directory scan and the open.
    std::os::unix::fs::symlink(logs.join("gone-target"), logs.join("vanished.log")).unwrap();
    let nothing = format!("{}/nothing-*.txt", dir.path().display());
    let path = files_config(
        dir.path(),
        &[format!("{}/*.log", logs.display()), nothing.clone()],
        &mock.bootstrap_servers(),
        "",
        "",
    );
    // As root, permissions would not apply: drop the capabilities that bypass them.
    let agent = Agent::start_with(
        &[
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
        ],
        &path,
    );
    let mut reader = Reader::new(&mock.bootstrap_servers(), "files");
    assert_eq!(
        reader.read_n(1, Duration::from_secs(30)),
        1,
        "{}",
        agent.stderr()
    );
    // Several rescans later (rescan_interval 500 ms), more lines still ship...
    std::thread::sleep(Duration::from_secs(3));
    append(&logs.join("good.log"), b"good 2\n");
    assert_eq!(
        reader.read_n(2, Duration::from_secs(30)),
        2,
        "{}",
        agent.stderr()
    );
    let log = agent.stop();
    // ...and each problem was logged exactly once, naming the path and the reason.
    for (path, reason) in [
        (secret.display().to_string(), "permission denied"),
        (logs.join("adir.log").display().to_string(), "directory"),
        (fifo.display().to_string(), "FIFO"),
        (logs.join("vanished.log").display().to_string(), "vanished"),
        (nothing.clone(), "matches no file"),
    ] {
        let hits: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&path))
            .filter(|l| l.contains(reason))
            .collect();
        assert_eq!(hits.len(), 1, "{path}: {reason} logged once\n{log}");
    }
    let messages: Vec<Vec<u8>> = reader.messages.iter().map(Consumed::message).collect();
    assert_eq!(messages, [b"good 1".to_vec(), b"good 2".to_vec()]);
}
