//! Idle means idle: an agent with nothing to ship writes no checkpoint and its Kafka report
//! thread sleeps; a crash loop re-sends only what was in flight at each kill.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

fn files_to_kafka(dir: &Path, kafka: &Kafka, port: u16) -> std::path::PathBuf {
    FilesToKafka {
        brokers: &kafka.bootstrap,
        topic: "idle",
        port,
        source: "rescan_interval = \"200ms\"\n",
        ..FilesToKafka::default()
    }
    .write(dir)
}

fn writes(port: u16) -> f64 {
    http_get(port, "/metrics")
        .and_then(|(_, body)| metric(&body, "perapera_checkpoint_writes_total"))
        .unwrap_or(-1.0)
}

/// After shipping what there is, an agent rescanning its files every 200 ms for 20 s writes no
/// checkpoint (before: one per rescan), and the thread serving the Kafka producer's reports
/// blocks: its CPU time stays flat and it wakes about once a second (before: rdkafka's poll
/// loop spun through the last millisecond of every 100 ms, about 1 % of a core).
#[test]
fn an_idle_agent_writes_no_checkpoint_and_its_kafka_report_thread_sleeps() {
    let kafka = Kafka::single();
    kafka.create_topic("idle", 1);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = files_to_kafka(dir.path(), &kafka, port);
    let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
    std::fs::write(dir.path().join("logs/app.log"), &text).unwrap();
    let agent = Agent::start(&config);
    let state = dir.path().join("state");
    let shipped = text.len() as u64;
    let end = Instant::now() + Duration::from_secs(60);
    while saved_files(&state, "files").first().map(|f| f.1) != Some(shipped) {
        assert!(Instant::now() < end, "never shipped\n{}", agent.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3)); // settle: connections made, metadata fetched
    let before = writes(port);
    let threads_before = threads(agent.child.id());
    std::thread::sleep(Duration::from_secs(20));
    let threads_after = threads(agent.child.id());
    let after = writes(port);
    let used = thread_use_since(&threads_before, &threads_after);
    let stderr = agent.stop();
    assert!(before >= 1.0, "the metric is there: {before}");
    assert_eq!(
        after, before,
        "checkpoint writes while nothing moved (100 rescans)\n{stderr}"
    );
    let reports: Vec<&ThreadUse> = used.iter().filter(|t| t.name == "kafka-reports").collect();
    assert_eq!(reports.len(), 1, "one report thread: {used:?}");
    // 20 s at 100 ticks a second: 1 tick is 0.05 % of a core.
    assert!(
        reports[0].ticks <= 2,
        "the report thread used CPU while idle: {used:?}"
    );
    assert!(
        reports[0].switches <= 2 * 20 + 5,
        "the report thread woke more than about once a second: {used:?}"
    );
    eprintln!("idle 20 s, per thread (ticks, switches): {used:?}");
}

/// A crash loop: 20 runs, each SIGKILLed 0.2–0.8 s after it started, while a writer appends
/// 1 000 lines a second. Every run that got an acknowledgement wrote a checkpoint (the first
/// advance is written at once; before, a run shorter than `checkpoint_interval` wrote none and
/// the next one re-sent everything since the last); nothing is lost; and the duplicates are at
/// most what lay between each run's checkpoint and what it had read at its kill.
#[test]
fn a_crash_loop_resends_only_what_was_in_flight_at_each_kill() {
    const KILLS: usize = 20;
    let kafka = Kafka::single();
    kafka.create_topic("idle", 1);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = files_to_kafka(dir.path(), &kafka, port);
    let log = dir.path().join("logs/app.log");
    std::fs::write(&log, "").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            let mut n = 0u64;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_millis() as u64).min(n + 100);
                while n < due {
                    writeln!(f, "line {n}").unwrap();
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    let state = dir.path().join("state");
    let offset = || saved_files(&state, "files").first().map_or(0, |f| f.1);
    let lines_before = |bytes: u64| -> u64 {
        let text = std::fs::read(&log).unwrap();
        text[..(bytes as usize).min(text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64
    };
    let mut rng = Rng(17);
    // Runs that had an acknowledgement at least 100 ms before their kill, and how many of
    // them had written a checkpoint beyond where they started by then.
    let (mut acked_runs, mut advanced) = (0, 0);
    let mut exposed = 0u64; // lines between a run's checkpoint and the end of the file at its kill
    for _ in 0..KILLS {
        let from = offset();
        let agent = Agent::start(&config);
        let kill_at = Instant::now() + rng.millis(200, 800);
        let mut first_ack = None;
        while Instant::now() < kill_at {
            if first_ack.is_none() {
                let acked = http_get(port, "/metrics")
                    .and_then(|(_, body)| metric(&body, "perapera_entries_acked_total"));
                if acked.unwrap_or(0.0) > 0.0 {
                    first_ack = Some(Instant::now());
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let size = std::fs::metadata(&log).unwrap().len();
        let checkpointed = offset();
        agent.kill9();
        if first_ack.is_some_and(|t| kill_at.duration_since(t) >= Duration::from_millis(100)) {
            acked_runs += 1;
            advanced += usize::from(checkpointed > from);
        }
        exposed += lines_before(size) - lines_before(offset());
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let agent = Agent::start(&config);
    let mut reader = Reader::new(&kafka.bootstrap, "idle");
    reader.read_until(Duration::from_secs(90), |m| m.len() as u64 >= written);
    let end = Instant::now() + Duration::from_secs(60);
    while offset() < std::fs::metadata(&log).unwrap().len() {
        assert!(
            Instant::now() < end,
            "the last run never caught up\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
    reader.drain(Duration::from_secs(2));
    let mut seen = std::collections::HashMap::new();
    for m in &reader.messages {
        *seen.entry(m.message()).or_insert(0u64) += 1;
    }
    let lost: Vec<u64> = (0..written)
        .filter(|i| !seen.contains_key(format!("line {i}").as_bytes()))
        .collect();
    let duplicates: u64 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "crash loop: {KILLS} kills, {written} written, {} lost, {duplicates} duplicates, \
         {advanced} of the {acked_runs} runs acknowledged 100 ms before their kill had written \
         a checkpoint, {exposed} lines in flight at the kills",
        lost.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}");
    // librdkafka's idempotent producer takes 0.2–0.7 s to get its producer id at start (without
    // idempotence the first ack comes within 50 ms), so some runs are killed before any ack.
    assert!(acked_runs >= 3, "only {acked_runs} runs had an ack in time");
    assert_eq!(
        advanced, acked_runs,
        "every run with an acknowledgement writes a checkpoint at once"
    );
    assert!(
        duplicates <= exposed,
        "{duplicates} duplicates, more than the {exposed} lines in flight at the kills"
    );
}
