//! The guarantee, measured against a three-broker Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas=2`, three controllers of its own): tracer entries written at a steady
//! rate into a journal (appended with systemd-journal-remote) and into a log file rotated by
//! rename, while one driver SIGKILLs and SIGTERMs perapera and restarts it at random moments,
//! and another fails the cluster: a broker SIGKILLed and restarted (the partition leader
//! included), a broker hung with SIGSTOP, two brokers down at once (the ISR below
//! `min.insync.replicas`: the leader refuses writes with NOT_ENOUGH_REPLICAS), a rolling
//! restart of the three brokers and the active controller killed. At the end an independent
//! consumer (Python confluent-kafka) counts every tracer: none may be lost, duplicates must stay
//! within the in-flight window per perapera interruption, and perapera's RSS stays bounded.
//! Duplicates are split by the producer id Kafka stored with each copy (`DumpLogSegments`):
//! copies written by one producer are re-sends of a running perapera after a broker failure,
//! copies from different producers follow a perapera restart. The report line is written to
//! target/chaos-report.txt (./test.sh prints it).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

const WINDOW: u64 = 1000;
const TOPIC: &str = "chaos";

fn rss_mib(pid: u32) -> u64 {
    rss_kib(pid) / 1024
}

#[test]
fn chaos_kills_and_broker_failures_lose_no_tracer() {
    let seconds: u64 = std::env::var("PERAPERA_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    let seed = std::env::var("PERAPERA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_seed() | 1);
    eprintln!("chaos: seed {seed} (PERAPERA_CHAOS_SEED reproduces the schedule), {seconds} s");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let logs = dir.path().join("logs");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&logs).unwrap();
    write_journal(&journal, &[]);
    let mut kafka = Kafka::cluster();
    kafka.create_topic(TOPIC, 2);
    let metrics_port = free_port();
    eprintln!(
        "chaos: metrics on 127.0.0.1:{metrics_port}, state {}",
        state.display()
    );
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n\
             [pipeline]\nmax_in_flight = {WINDOW}\nshutdown_timeout = \"5s\"\n\
             [[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n\
             [[source]]\ntype = \"files\"\nname = \"files\"\ninclude = [\"{}/app.log*\"]\nformat = \"raw\"\n\
             [sink]\ntype = \"kafka\"\nbrokers = [{}]\ntopic = \"{TOPIC}\"\n\
             [sink.librdkafka]\n\"message.timeout.ms\" = 10000\n",
            state.display(),
            journal.display(),
            logs.display(),
            kafka
                .bootstrap
                .split(',')
                .map(|b| format!("\"{b}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    // Writers: 100 journal tracers and 100 file lines a second.
    let tracers = Tracers::start(
        &journal,
        &logs,
        Rates {
            batch: 10,
            batch_pause: Duration::from_millis(100),
            line_pause: Duration::from_millis(10),
            rotate_every: 2000,
        },
    );

    // The agent driver: SIGKILL (and every so often SIGTERM) at random moments, restart.
    let agent = Arc::new(Mutex::new(Some(Agent::start(&config))));
    let max_rss = Arc::new(AtomicU64::new(0));
    let stop_driver = Arc::new(AtomicBool::new(false));
    let (kills, terms) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let driver = {
        let (agent, stop, kills, terms, config) = (
            agent.clone(),
            stop_driver.clone(),
            kills.clone(),
            terms.clone(),
            config.clone(),
        );
        let max_rss = max_rss.clone();
        let mut rng = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let until = Instant::now() + rng.millis(1500, 5000);
                while Instant::now() < until {
                    if let Some(a) = agent.lock().unwrap().as_ref() {
                        max_rss.fetch_max(rss_mib(a.child.id()), Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut slot = agent.lock().unwrap();
                let Some(mut a) = slot.take() else { break };
                let term = rng.next().is_multiple_of(5)
                    || (kills.load(Ordering::Relaxed) >= 20 && terms.load(Ordering::Relaxed) < 5);
                if term {
                    a.signal(libc::SIGTERM);
                    let status = a
                        .wait_exit(Duration::from_secs(30))
                        .expect("exits after SIGTERM");
                    assert!(status.success(), "SIGTERM exit {status:?}\n{}", a.stderr());
                    terms.fetch_add(1, Ordering::Relaxed);
                } else {
                    a.kill9();
                    kills.fetch_add(1, Ordering::Relaxed);
                }
                *slot = Some(Agent::start(&config));
            }
        })
    };

    // The cluster driver, here: a fault every 2 to 5 s until the time is up and every kind
    // happened often enough.
    let mut rng = Rng(seed);
    let mut f = Faults::default();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end
        || !f.enough()
        || kills.load(Ordering::Relaxed) < 20
        || terms.load(Ordering::Relaxed) < 5
    {
        std::thread::sleep(rng.millis(2000, 5000));
        f.one(&mut kafka, &mut rng, Instant::now() >= end);
    }
    stop_driver.store(true, Ordering::Relaxed);
    driver.join().unwrap();
    let written = tracers.finish();

    // The broker stays up now: the independent consumer counts while the last agent catches
    // up (it reads until every tracer was seen and the topic stayed quiet for 5 s).
    let mut agent = agent.lock().unwrap().take().unwrap();
    max_rss.fetch_max(rss_mib(agent.child.id()), Ordering::Relaxed);
    let out = output_ok(
        Command::new("python3")
            .arg(repo().join("tests/py/count_tracers.py"))
            .args([kafka.bootstrap.as_str(), TOPIC, &written.len().to_string()]),
    );
    max_rss.fetch_max(rss_mib(agent.child.id()), Ordering::Relaxed);
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        agent.stderr()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts: HashMap<String, u64> = report["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    let lost: Vec<&String> = written
        .iter()
        .filter(|t| !counts.contains_key(*t))
        .collect();
    let delivered = written.len() - lost.len();
    let duplicated: u64 = counts.values().map(|c| c - 1).sum();
    let (same_producer, other_producer) = split_duplicates(&kafka, &report["copies"]);
    let (k, t) = (kills.load(Ordering::Relaxed), terms.load(Ordering::Relaxed));
    let rss = max_rss.load(Ordering::Relaxed);
    let line = format!(
        "chaos (journal + rotating files -> Apache Kafka, 3 brokers, seed {seed}): tracers written {}, \
         delivered {delivered}, lost {}, duplicated {duplicated} ({other_producer} after perapera \
         restarts, {same_producer} re-sent by a running perapera after broker failures); perapera \
         SIGKILLs {k}, SIGTERMs {t}; {f}; max RSS of perapera {rss} MiB",
        written.len(),
        lost.len(),
    );
    eprintln!("{line}");
    let _ = std::fs::write(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chaos-report.txt"),
        format!("{line}\n"),
    );
    assert!(
        lost.is_empty(),
        "{line}\nlost: {:?}",
        &lost[..lost.len().min(20)]
    );
    assert!(k >= 20 && t >= 5 && f.enough(), "{line}");
    // Every perapera interruption can re-send at most the window; so can every broker failure
    // (the entries in flight time out and are re-sent by the running perapera).
    let bound = (k + t) * WINDOW;
    assert!(
        other_producer <= bound,
        "{line}: restart duplicates above {bound}"
    );
    assert!(
        duplicated <= bound + f.total() * WINDOW,
        "{line}: duplicates above the windows in flight"
    );
    assert!(rss <= 256, "{line}: RSS above 256 MiB");
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
}

/// The cluster faults injected, and how many of each.
pub struct Faults {
    broker_kills: u32,
    leader_kills: u32,
    hangs: u32,
    longest_hang: Duration,
    below_min_isr: u32,
    rolling_restarts: u32,
    controller_kills: u32,
    coordinator_kills: u32,
    /// The topic whose partition 0 leader is a kill target.
    topic: &'static str,
    /// Exactly-once: the transactional id whose transaction coordinator is a kill target.
    transactional_id: Option<String>,
    /// How many of each kind make enough: broker kills, leader kills, hangs, periods below
    /// min.insync.replicas, rolling restarts, controller kills, coordinator kills.
    minimum: [u32; 7],
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            broker_kills: 0,
            leader_kills: 0,
            hangs: 0,
            longest_hang: Duration::ZERO,
            below_min_isr: 0,
            rolling_restarts: 0,
            controller_kills: 0,
            coordinator_kills: 0,
            topic: TOPIC,
            transactional_id: None,
            minimum: [5, 2, 2, 2, 1, 1, 0],
        }
    }
}

impl Faults {
    /// Faults for an exactly-once run: the transaction coordinator of `transactional_id` is
    /// killed too (at least twice), with fewer of the other kinds.
    pub fn exactly_once(topic: &'static str, transactional_id: &str) -> Faults {
        Faults {
            topic,
            transactional_id: Some(transactional_id.to_string()),
            minimum: [3, 1, 1, 1, 0, 0, 2],
            ..Faults::default()
        }
    }

    fn counts(&self) -> [u32; 7] {
        [
            self.broker_kills,
            self.leader_kills,
            self.hangs,
            self.below_min_isr,
            self.rolling_restarts,
            self.controller_kills,
            self.coordinator_kills,
        ]
    }

    pub fn enough(&self) -> bool {
        self.counts()
            .iter()
            .zip(self.minimum)
            .all(|(n, min)| *n >= min)
    }

    fn total(&self) -> u64 {
        u64::from(
            self.broker_kills
                + self.hangs
                + self.below_min_isr
                + 3 * self.rolling_restarts
                + self.controller_kills
                + self.coordinator_kills,
        )
    }

    /// Injects one fault, chosen at random (only the ones still short once `overtime`), and
    /// waits until the cluster is whole again.
    pub fn one(&mut self, kafka: &mut Kafka, rng: &mut Rng, overtime: bool) {
        let (n, min) = (self.counts(), self.minimum);
        let short = [
            n[0] < min[0] || n[1] < min[1],
            n[2] < min[2],
            n[3] < min[3],
            n[4] < min[4],
            n[5] < min[5],
            n[6] < min[6],
        ];
        let mut kind = (rng.next() % 8) as usize;
        // Broker kills are the common case: kinds 6..8 are kills too.
        // A kind this run does not ask for is a broker kill too.
        if kind >= 6 || (kind >= 1 && min[kind + 1] == 0) {
            kind = 0;
        }
        if overtime && !short[kind] {
            match short.iter().position(|s| *s) {
                Some(k) => kind = k,
                None => return,
            }
        }
        let ids = kafka.ids();
        let leader = kafka.leaders(self.topic).first().copied().unwrap_or(-1);
        match kind {
            0 => {
                // Every other kill takes the leader of partition 0.
                let victim = if self.broker_kills.is_multiple_of(2) && leader > 0 {
                    leader as u32
                } else {
                    ids[(rng.next() % 3) as usize]
                };
                self.leader_kills += u32::from(victim as i32 == leader);
                kafka.kill(victim);
                std::thread::sleep(rng.millis(2000, 6000));
                kafka.restart(victim);
                self.broker_kills += 1;
            }
            1 => {
                let victim = ids[(rng.next() % 3) as usize];
                let d = rng.millis(5000, 20_000);
                kafka.signal(victim, libc::SIGSTOP);
                std::thread::sleep(d);
                kafka.signal(victim, libc::SIGCONT);
                self.hangs += 1;
                self.longest_hang = self.longest_hang.max(d);
            }
            2 => {
                // Two down, for longer than the fencing (broker.session.timeout.ms = 4 s): the
                // controller shrinks the ISR to the one left.
                let keep = ids[(rng.next() % 3) as usize];
                let down: Vec<u32> = ids.iter().copied().filter(|i| *i != keep).collect();
                for id in &down {
                    kafka.kill(*id);
                }
                std::thread::sleep(rng.millis(6000, 10_000));
                for id in &down {
                    kafka.restart(*id);
                }
                self.below_min_isr += 1;
            }
            3 => {
                for id in ids {
                    kafka.terminate(id);
                    kafka.restart(id);
                    // The restarted broker rejoins the ISR before the next one goes.
                    std::thread::sleep(Duration::from_secs(3));
                }
                self.rolling_restarts += 1;
            }
            5 => {
                let id = self.transactional_id.clone().unwrap_or_default();
                let Some(coordinator) = kafka.transaction_coordinator(&id) else {
                    return;
                };
                kafka.kill(coordinator);
                std::thread::sleep(rng.millis(2000, 6000));
                kafka.restart(coordinator);
                self.coordinator_kills += 1;
            }
            _ => {
                let Some(controller) = kafka.active_controller() else {
                    return;
                };
                kafka.kill(controller);
                std::thread::sleep(rng.millis(2000, 4000));
                kafka.restart(controller);
                self.controller_kills += 1;
            }
        }
    }
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "broker SIGKILLs {} ({} of the leader), hangs {} (longest {:.1} s), periods below \
             min.insync.replicas {}, rolling restarts {}, controller kills {}",
            self.broker_kills,
            self.leader_kills,
            self.hangs,
            self.longest_hang.as_secs_f64(),
            self.below_min_isr,
            self.rolling_restarts,
            self.controller_kills
        )?;
        if self.transactional_id.is_some() {
            write!(
                f,
                ", transaction coordinator kills {}",
                self.coordinator_kills
            )?;
        }
        Ok(())
    }
}

/// Splits the duplicated tracers' extra copies by the producer id Kafka stored with each copy:
/// (copies from a producer that already wrote the tracer, copies from another producer).
fn split_duplicates(kafka: &Kafka, copies: &serde_json::Value) -> (u64, u64) {
    let Some(copies) = copies.as_object() else {
        return (0, 0);
    };
    let id = kafka.ids()[0];
    let batches: Vec<Vec<(i64, i64, i64)>> = (0..2).map(|p| kafka.batches(id, TOPIC, p)).collect();
    let producer = |p: i64, o: i64| {
        batches[p as usize]
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&o))
            .map(|b| b.2)
    };
    let (mut same, mut other) = (0, 0);
    for places in copies.values() {
        let mut seen = Vec::new();
        for place in places.as_array().into_iter().flatten() {
            let (p, o) = (
                place[0].as_i64().unwrap_or(0),
                place[1].as_i64().unwrap_or(0),
            );
            let pid = producer(p, o);
            if !seen.is_empty() {
                if seen.contains(&pid) {
                    same += 1;
                } else {
                    other += 1;
                }
            }
            seen.push(pid);
        }
    }
    (same, other)
}

pub fn now_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
