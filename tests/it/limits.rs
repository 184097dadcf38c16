//! The files source at the edges of the system's limits (issue 15): more matching files than
//! file descriptors, directories that leave the globs and come back, symlink loops under
//! `**`, and forward connections competing for the same descriptors.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

/// A files source over `include` to stdout (plus extra top-level TOML and source keys).
fn stdout_config(dir: &Path, include: &str, source_extra: &str, top: &str) -> PathBuf {
    config_file(
        dir,
        &format!(
            "{top}\n[state]\ndirectory = \"{}\"\ncheckpoint_interval = \"1s\"\n\
             [[source]]\ntype = \"files\"\nname = \"logs\"\ninclude = [\"{include}\"]\n\
             rescan_interval = \"200ms\"\nrotate_wait = \"1s\"\n{source_extra}\n\
             [sink]\ntype = \"stdout\"\n",
            dir.join("state").display()
        ),
    )
}

/// Collects `message` → count from the agent's stdout until `want` distinct messages arrived
/// (or `timeout`), then `quiet` more to catch duplicates.
fn collect(
    agent: &Agent,
    counts: &mut HashMap<String, usize>,
    want: usize,
    timeout: Duration,
    quiet: Duration,
) {
    let rx = agent.stdout_lines.as_ref().unwrap();
    let end = Instant::now() + timeout;
    let mut last = Instant::now();
    loop {
        let done = counts.len() >= want;
        if (done && last.elapsed() >= quiet) || Instant::now() >= end {
            return;
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            *counts
                .entry(v["message"].as_str().unwrap().to_string())
                .or_default() += 1;
            last = Instant::now();
        }
    }
}

fn assert_once(counts: &HashMap<String, usize>, want: usize, what: &str) {
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "{what}: duplicates {dups:?}");
    assert_eq!(counts.len(), want, "{what}: distinct lines shipped");
}

fn files_under_a_1024_descriptor_limit(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    for i in 0..n {
        let sub = logs.join(format!("d{}", i / 1000));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join(format!("f{i}.log")),
            format!("file {i} line 0\nfile {i} line 1\n"),
        )
        .unwrap();
    }
    let config = stdout_config(dir.path(), &format!("{}/*/*.log", logs.display()), "", "");
    // The limit of a unit without LimitNOFILE, hard too, so perapera cannot raise it.
    let agent = Agent::start_with(&["prlimit", "--nofile=1024:1024", "--"], &config);
    let mut counts = HashMap::new();
    collect(
        &agent,
        &mut counts,
        2 * n,
        Duration::from_secs(240),
        Duration::from_secs(3),
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", agent.child.id())).map_or(0, |d| d.count());
    let log = agent.stop();
    assert_once(&counts, 2 * n, &format!("{n} files"));
    assert!(fds <= 1024, "{fds} descriptors");
    assert!(
        !log.contains("Cannot read a directory"),
        "a listing failed:\n{log}"
    );
    assert!(
        !log.contains("checkpoint") || !log.contains("Too many open files"),
        "{log}"
    );
    assert!(log.contains("max_open_files lowered from 1024 to"), "{log}");
}

#[test]
fn eleven_hundred_files_under_a_1024_descriptor_limit_are_each_shipped_once() {
    files_under_a_1024_descriptor_limit(1_100);
}

#[test]
fn twenty_thousand_files_under_a_1024_descriptor_limit_are_each_shipped_once() {
    files_under_a_1024_descriptor_limit(20_000);
}

#[test]
fn a_directory_moved_away_and_back_resumes_at_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let app = logs.join("app");
    std::fs::create_dir_all(&app).unwrap();
    let lines =
        |from: usize, to: usize| -> String { (from..to).map(|i| format!("line {i}\n")).collect() };
    std::fs::write(app.join("a.log"), lines(0, 100)).unwrap();
    let config = stdout_config(dir.path(), &format!("{}/*/*.log", logs.display()), "", "");
    let agent = Agent::start(&config);
    let mut counts = HashMap::new();
    collect(
        &agent,
        &mut counts,
        100,
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    // Away for three times rotate_wait (the file is released), then back unchanged.
    let away = dir.path().join("away");
    std::fs::rename(&app, &away).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::rename(&away, &app).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(app.join("a.log"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, lines(100, 150).as_bytes()))
        .unwrap();
    collect(
        &agent,
        &mut counts,
        150,
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    agent.stop();
    assert_once(&counts, 150, "moved away and back");
}

#[test]
fn symlink_loops_under_double_star_end_and_shutdown_is_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(logs.join("sub")).unwrap();
    std::fs::write(logs.join("sub/app.log"), "one\ntwo\n").unwrap();
    // Two links to `.` in one directory: every level of `**` doubles the paths through them
    // (2^40 before the kernel's link limit), which kept the `glob` crate's walk going for ever.
    std::os::unix::fs::symlink(".", logs.join("a")).unwrap();
    std::os::unix::fs::symlink(".", logs.join("b")).unwrap();
    std::os::unix::fs::symlink(".", logs.join("sub/again")).unwrap();
    let config = stdout_config(dir.path(), &format!("{}/**/*.log", logs.display()), "", "");
    let mut agent = Agent::start(&config);
    let mut counts = HashMap::new();
    collect(
        &agent,
        &mut counts,
        2,
        Duration::from_secs(20),
        Duration::from_secs(2),
    );
    let rss = rss_kib(agent.child.id());
    assert_once(&counts, 2, "through two links to .");
    let start = Instant::now();
    agent.signal(libc::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        start.elapsed()
    );
    assert!(rss < 64 * 1024, "RSS {rss} KiB");
}

/// A files source over `logs/*.log` (holding two lines) and a forward source, to stdout, with
/// the metrics endpoint: the logs directory, the forward and metrics ports, the config.
fn files_and_forward(dir: &Path) -> (PathBuf, u16, u16, PathBuf) {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("app.log"), "before 0\nbefore 1\n").unwrap();
    let (port, metrics) = (free_port(), free_port());
    let config = stdout_config(
        dir,
        &format!("{}/*.log", logs.display()),
        &format!("[[source]]\ntype = \"forward\"\nname = \"fwd\"\nlisten = \"127.0.0.1:{port}\"\n"),
        &format!("[metrics]\naddress = \"127.0.0.1:{metrics}\"\n"),
    );
    (logs, port, metrics, config)
}

/// Appends two lines to `logs/app.log` and collects until they shipped.
fn lines_written_during_a_flood_ship(
    agent: &Agent,
    logs: &Path,
    counts: &mut HashMap<String, usize>,
) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(logs.join("app.log"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"during 0\nduring 1\n"))
        .unwrap();
    collect(
        agent,
        counts,
        4,
        Duration::from_secs(20),
        Duration::from_secs(1),
    );
}

#[test]
fn forward_connections_cannot_take_the_files_sources_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, port, metrics, config) = files_and_forward(dir.path());
    let agent = Agent::start_with(&["prlimit", "--nofile=1024:1024", "--"], &config);
    wait_port(port, Duration::from_secs(20), "forward source");
    let mut counts = HashMap::new();
    collect(
        &agent,
        &mut counts,
        2,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    // 3 000 idle connections (the test process raises its own limit for them).
    perapera::ops::fds::raise_limit();
    let mut idle = Vec::new();
    for _ in 0..3_000 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    lines_written_during_a_flood_ship(&agent, &logs, &mut counts);
    assert_eq!(
        http_get(metrics, "/health").map(|(s, _)| s),
        Some(200),
        "/health"
    );
    assert!(
        http_get(metrics, "/metrics").is_some_and(|(s, _)| s == 200),
        "/metrics"
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", agent.child.id())).map_or(0, |d| d.count());
    drop(idle);
    let log = agent.stop();
    assert_once(&counts, 4, "files beside a forward flood");
    assert!(fds <= 1024, "{fds}");
    assert!(!log.contains("Too many open files"), "{log}");
}

/// The "task limit of 200" (systemd's `TasksMax`, a container's pids limit): perapera
/// runs as `nobody` under `RLIMIT_NPROC` 200 while 505 idle connections sit on `/metrics` and
/// 505 on the forward source. No thread is made per connection, so `/health` and `/metrics`
/// answer, lines ship, and the thread count stays small. Before: the metrics server's
/// thread-spawn panicked, and `/health` was dead until a restart.
#[test]
fn a_task_limit_of_200_leaves_health_metrics_and_shipping_alive() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (logs, port, metrics, config) = files_and_forward(dir.path());
    // RLIMIT_NPROC does not bind root: run as nobody.
    let agent = Agent::start_with(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "prlimit",
            "--nproc=200:200",
            "--",
        ],
        &config,
    );
    wait_port(port, Duration::from_secs(20), "forward source");
    wait_port(metrics, Duration::from_secs(20), "metrics endpoint");
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", agent.child.id())).unwrap_or_default();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max processes") && l.contains(" 200 ")),
        "the limit applies: {limits}"
    );
    let mut counts = HashMap::new();
    collect(
        &agent,
        &mut counts,
        2,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    let idle: Vec<TcpStream> = (0..505)
        .flat_map(|_| [metrics, port])
        .filter_map(|p| TcpStream::connect(("127.0.0.1", p)).ok())
        .collect();
    assert_eq!(idle.len(), 1010);
    lines_written_during_a_flood_ship(&agent, &logs, &mut counts);
    for _ in 0..3 {
        assert_eq!(
            http_get(metrics, "/health").map(|(s, _)| s),
            Some(200),
            "/health"
        );
        assert!(
            http_get(metrics, "/metrics")
                .is_some_and(|(s, b)| s == 200 && b.contains("perapera_build_info")),
            "/metrics"
        );
    }
    let threads: u64 = proc_status(agent.child.id(), "Threads:")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(u64::MAX);
    drop(idle);
    let log = agent.stop();
    assert_once(&counts, 4, "files under a task limit");
    assert!(threads < 64, "{threads} threads for 1 010 connections");
    assert!(!log.contains("panicked"), "{log}");
}
