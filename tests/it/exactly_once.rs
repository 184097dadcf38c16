//! `delivery = "exactly-once"` against Apache Kafka itself: tracers from a journal and from a
//! rotating log file, perapera SIGKILLed again and again while they arrive, and an independent
//! consumer reading `read_committed` sees every tracer exactly once. Two instances with one
//! transactional id: the older is fenced and stops, and still nothing is duplicated.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

const TOPIC: &str = "eos";
const CHECKPOINTS: &str = "perapera.checkpoints";

/// 400 journal tracers a second, about 300 lines a second, a rotation every 500 lines.
const RATES: Rates = Rates {
    batch: 20,
    batch_pause: Duration::from_millis(50),
    line_pause: Duration::from_millis(3),
    rotate_every: 500,
};

fn eos_config(
    dir: &Path,
    name: &str,
    kafka: &Kafka,
    journal: &Path,
    logs: &Path,
    extra: &str,
) -> std::path::PathBuf {
    let state = dir.join(format!("state-{name}"));
    let interval = match extra.contains("transaction_interval") {
        true => "",
        false => "transaction_interval = \"200ms\"\n",
    };
    std::fs::create_dir_all(dir.join(name)).unwrap();
    config_file(
        &dir.join(name),
        &format!(
            "[state]\ndirectory = \"{}\"\n[pipeline]\nmax_in_flight = 2000\nshutdown_timeout = \"10s\"\n\
             [[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n\
             [[source]]\ntype = \"files\"\nname = \"files\"\ninclude = [\"{}/app.log*\"]\nformat = \"raw\"\n\
             [sink]\ntype = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"{TOPIC}\"\n\
             delivery = \"exactly-once\"\n{interval}{extra}",
            state.display(),
            journal.display(),
            logs.display(),
            kafka.bootstrap,
        ),
    )
}

/// The topics, an empty journal and the log directory.
fn prepare(kafka: &Kafka) -> (tempfile::TempDir, PathBuf, PathBuf) {
    kafka.create_topic(TOPIC, 2);
    kafka.create_topic_with(CHECKPOINTS, 1, &[("cleanup.policy", "compact")]);
    let dir = tempfile::tempdir().unwrap();
    let (journal, logs) = (dir.path().join("journal"), dir.path().join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    write_journal(&journal, &[]);
    (dir, journal, logs)
}

/// No tracer lost, none duplicated.
fn assert_once(lost: &[String], duplicated: u64, context: &str) {
    assert!(
        lost.is_empty(),
        "lost {}: {:?}\n{context}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(duplicated, 0, "duplicated\n{context}");
}

/// Prints a report line and appends it to target/exactly-once-report.txt (`./test.sh`
/// prints it).
fn report(line: &str) {
    eprintln!("{line}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/exactly-once-report.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Counts the tracers in the topic with confluent-kafka at `isolation`.
fn count(kafka: &Kafka, expected: usize, isolation: &str) -> HashMap<String, u64> {
    let out = output_ok(
        Command::new("python3")
            .arg(repo().join("tests/py/count_tracers.py"))
            .args([
                kafka.bootstrap.as_str(),
                TOPIC,
                &expected.to_string(),
                isolation,
            ]),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

/// (lost, duplicated) of `written` in `counts`.
fn tally(written: &[String], counts: &HashMap<String, u64>) -> (Vec<String>, u64) {
    let lost: Vec<String> = written
        .iter()
        .filter(|t| !counts.contains_key(*t))
        .cloned()
        .collect();
    let duplicated = counts.values().map(|c| c - 1).sum();
    (lost, duplicated)
}

fn wait_committed(agent: &Agent, n: usize) {
    let end = Instant::now() + Duration::from_secs(90);
    while agent
        .stderr()
        .matches("Kafka transactions initialised")
        .count()
        < n
    {
        assert!(
            Instant::now() < end,
            "never initialised\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exactly_once_through_sigkills_delivers_every_tracer_once() {
    let kafka = Kafka::single();
    let (dir, journal, logs) = prepare(&kafka);
    // Transactions of up to 2 s (or half the window, 1 000 entries): the kills hit open ones,
    // which a read_uncommitted consumer then shows.
    let interval = "transaction_interval = \"2s\"\n";
    let config = eos_config(dir.path(), "a", &kafka, &journal, &logs, interval);
    let writers = Tracers::start(&journal, &logs, RATES);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut kills = 0;
    let mut agent = Agent::start(&config);
    wait_committed(&agent, 1);
    while kills < 20 {
        std::thread::sleep(rng.millis(800, 2000));
        agent.kill9();
        kills += 1;
        agent = Agent::start(&config);
    }
    std::thread::sleep(Duration::from_secs(2));
    let written = writers.finish();
    let committed = count(&kafka, written.len(), "read_committed");
    let log = agent.stop();
    let (lost, duplicated) = tally(&written, &committed);
    let uncommitted = count(&kafka, written.len(), "read_uncommitted");
    let (_, aborted_copies) = tally(&written, &uncommitted);
    let line = format!(
        "exactly-once (journal + rotating files -> Apache Kafka, 1 broker): tracers written {}, \
         read_committed: lost {}, duplicated {duplicated}; read_uncommitted also saw \
         {aborted_copies} copies from aborted transactions; perapera SIGKILLs {kills}",
        written.len(),
        lost.len(),
    );
    report(&line);
    assert_once(&lost, duplicated, &format!("{line}\n{log}"));
    // The kills left transactions open that the next start aborted: a read_uncommitted
    // consumer sees their copies, so the test would notice a mode that was not transactional.
    assert!(aborted_copies > 0, "{line}");
}

#[test]
fn a_second_instance_with_the_same_transactional_id_fences_the_first_which_stops() {
    let kafka = Kafka::single();
    let (dir, journal, logs) = prepare(&kafka);
    let id = "transactional_id = \"perapera-shared\"\n";
    let older = Agent::start(&eos_config(
        dir.path(),
        "older",
        &kafka,
        &journal,
        &logs,
        id,
    ));
    let writers = Tracers::start(&journal, &logs, RATES);
    wait_committed(&older, 1);
    std::thread::sleep(Duration::from_secs(2));
    let newer = Agent::start(&eos_config(
        dir.path(),
        "newer",
        &kafka,
        &journal,
        &logs,
        id,
    ));
    let mut older = older;
    let status = older
        .wait_exit(Duration::from_secs(120))
        .expect("the fenced instance stops");
    let older_log = older.stderr();
    assert!(!status.success(), "{older_log}");
    assert!(
        older_log
            .contains("another perapera instance is using transactional id \"perapera-shared\""),
        "{older_log}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let written = writers.finish();
    let committed = count(&kafka, written.len(), "read_committed");
    let newer_log = newer.stop();
    let (lost, duplicated) = tally(&written, &committed);
    assert_once(&lost, duplicated, &format!("{older_log}\n{newer_log}"));
}

#[test]
fn a_broker_outage_longer_than_the_transaction_timeout_loses_and_duplicates_nothing() {
    let mut kafka = Kafka::single();
    let (dir, journal, logs) = prepare(&kafka);
    let timeout = "[sink.librdkafka]\n\"transaction.timeout.ms\" = 10000\n";
    let agent = Agent::start(&eos_config(
        dir.path(),
        "a",
        &kafka,
        &journal,
        &logs,
        timeout,
    ));
    wait_committed(&agent, 1);
    let writers = Tracers::start(&journal, &logs, RATES);
    std::thread::sleep(Duration::from_secs(3));
    // The broker (the transaction coordinator too) goes away for twice the transaction
    // timeout: the open transaction times out, the coordinator aborts it and bumps the epoch.
    let id = kafka.ids()[0];
    kafka.kill(id);
    std::thread::sleep(Duration::from_secs(20));
    kafka.restart(id);
    std::thread::sleep(Duration::from_secs(5));
    let written = writers.finish();
    let committed = count(&kafka, written.len(), "read_committed");
    let log = agent.stop();
    let (lost, duplicated) = tally(&written, &committed);
    for line in log
        .lines()
        .filter(|l| l.contains("Kafka transaction aborted"))
    {
        eprintln!("outage: {line}");
    }
    assert_once(&lost, duplicated, &log);
    assert!(
        log.contains("Kafka transaction aborted; starting over"),
        "the outage aborted the open transaction\n{log}"
    );
}

#[test]
fn exactly_once_chaos_on_three_brokers_delivers_every_tracer_once() {
    let seconds: u64 = std::env::var("PERAPERA_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(40, |s: u64| s.min(40));
    let seed = std::env::var("PERAPERA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| crate::chaos::now_seed() | 1);
    eprintln!("exactly-once chaos: seed {seed}, {seconds} s");
    let mut kafka = Kafka::cluster();
    let (dir, journal, logs) = prepare(&kafka);
    let id = "perapera-chaos";
    let brokers = kafka
        .bootstrap
        .split(',')
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[pipeline]\nmax_in_flight = 2000\nshutdown_timeout = \"10s\"\n\
             [[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n\
             [[source]]\ntype = \"files\"\nname = \"files\"\ninclude = [\"{}/app.log*\"]\nformat = \"raw\"\n\
             [sink]\ntype = \"kafka\"\nbrokers = [{brokers}]\ntopic = \"{TOPIC}\"\n\
             delivery = \"exactly-once\"\ntransactional_id = \"{id}\"\ntransaction_interval = \"200ms\"\n\
             [sink.librdkafka]\n\"transaction.timeout.ms\" = 10000\n",
            dir.path().join("state").display(),
            journal.display(),
            logs.display(),
        ),
    );
    let writers = Tracers::start(&journal, &logs, RATES);
    let agent = Arc::new(std::sync::Mutex::new(Some(Agent::start(&config))));
    let (stop_driver, kills) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let driver = {
        let (agent, stop, kills, config) = (
            agent.clone(),
            stop_driver.clone(),
            kills.clone(),
            config.clone(),
        );
        let mut rng = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(rng.millis(1000, 3000));
                let mut slot = agent.lock().unwrap();
                let Some(a) = slot.take() else { break };
                a.kill9();
                kills.fetch_add(1, Ordering::Relaxed);
                *slot = Some(Agent::start(&config));
            }
        })
    };
    let mut rng = Rng(seed);
    let mut faults = crate::chaos::Faults::exactly_once(TOPIC, id);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end || !faults.enough() || kills.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(rng.millis(2000, 4000));
        faults.one(&mut kafka, &mut rng, Instant::now() >= end);
    }
    // And the whole cluster hung for longer than transaction.timeout.ms (10 s): the open
    // transaction times out on the coordinator.
    for id in kafka.ids() {
        kafka.signal(id, libc::SIGSTOP);
    }
    std::thread::sleep(Duration::from_secs(15));
    for id in kafka.ids() {
        kafka.signal(id, libc::SIGCONT);
    }
    std::thread::sleep(Duration::from_secs(5));
    stop_driver.store(true, Ordering::Relaxed);
    driver.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let written = writers.finish();
    let committed = count(&kafka, written.len(), "read_committed");
    let agent = agent.lock().unwrap().take().unwrap();
    let log = agent.stop();
    let (lost, duplicated) = tally(&written, &committed);
    let uncommitted = count(&kafka, written.len(), "read_uncommitted");
    let (_, aborted_copies) = tally(&written, &uncommitted);
    let line = format!(
        "exactly-once chaos (journal + rotating files -> Apache Kafka, 3 brokers, seed {seed}): \
         tracers written {}, read_committed: lost {}, duplicated {duplicated}; read_uncommitted \
         also saw {aborted_copies} copies from aborted transactions; perapera SIGKILLs {}; {faults}; \
         the whole cluster hung 15 s (transaction.timeout.ms 10 s)",
        written.len(),
        lost.len(),
        kills.load(Ordering::Relaxed),
    );
    report(&line);
    assert_once(&lost, duplicated, &format!("{line}\n{log}"));
}

#[test]
fn a_missing_checkpoint_topic_is_reported_and_waited_for() {
    let kafka = Kafka::single();
    kafka.create_topic(TOPIC, 2);
    let dir = tempfile::tempdir().unwrap();
    let (journal, logs) = (dir.path().join("journal"), dir.path().join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    write_journal(&journal, &entries(0, 100));
    let mut agent = Agent::start(&eos_config(dir.path(), "a", &kafka, &journal, &logs, ""));
    assert!(
        agent.wait_log(
            "perapera.checkpoints\" does not exist; create it",
            Duration::from_secs(60)
        ),
        "{}",
        agent.stderr()
    );
    assert!(
        agent.wait_exit(Duration::from_secs(2)).is_none(),
        "it waits, it does not exit"
    );
    kafka.create_topic_with(CHECKPOINTS, 1, &[("cleanup.policy", "compact")]);
    wait_committed(&agent, 1);
    let written: Vec<String> = (0..100).map(|i| format!("j{i}")).collect();
    let committed = count(&kafka, written.len(), "read_committed");
    let log = agent.stop();
    let (lost, duplicated) = tally(&written, &committed);
    assert_once(&lost, duplicated, &log);
}
