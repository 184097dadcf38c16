//! The Kafka sink against librdkafka's mock cluster (real Kafka protocol on loopback) with
//! injected outages and errors: follow latency, no ack → no advance, SIGKILL and SIGTERM
//! restarts, and poison entries.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::support::*;

struct Setup {
    dir: tempfile::TempDir,
    journal: PathBuf,
    state: PathBuf,
    checkpoint_interval: &'static str,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        let state = dir.path().join("state");
        Setup {
            dir,
            journal,
            state,
            checkpoint_interval: "0s",
        }
    }

    fn config(&self, bootstrap: &str, extra_top: &str, extra_sink: &str) -> PathBuf {
        config_file(
            self.dir.path(),
            &format!(
                "{extra_top}\n[state]\ndirectory = \"{}\"\ncheckpoint_interval = \"{}\"\n\
                 [[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n\
                 [sink]\ntype = \"kafka\"\nbrokers = [\"{bootstrap}\"]\ntopic = \"logs\"\n\
                 key = \"{{SEQ}}\"\n{extra_sink}\n",
                self.state.display(),
                self.checkpoint_interval,
                self.journal.display()
            ),
        )
    }

    fn last_cursor(&self) -> String {
        journal_cursors(&self.journal).pop().unwrap()
    }

    /// Waits until the checkpoint holds `cursor`.
    fn wait_checkpoint(&self, cursor: &str, timeout: Duration, agent: &Agent) {
        let end = Instant::now() + timeout;
        while saved_cursor(&self.state, "journal").as_deref() != Some(cursor) {
            assert!(
                Instant::now() < end,
                "checkpoint did not reach the last entry\n{}",
                agent.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn mock(rtt: Option<Duration>) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("logs", 3, 1).unwrap();
    if let Some(rtt) = rtt {
        mock.broker_round_trip_time(1, rtt).unwrap();
    }
    mock
}

/// Reads `logs` back until `n` messages arrived (or a minute passed) and a little longer, to
/// catch duplicates; returns the count of each SEQ and the number of duplicates.
fn read_back(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    n: usize,
) -> (std::collections::HashMap<u64, usize>, usize) {
    let mut reader = Reader::new(&mock.bootstrap_servers(), "logs");
    reader.read_n(n, Duration::from_secs(60));
    reader.drain(Duration::from_millis(500));
    seq_counts(&reader.messages)
}

/// A tiny deterministic PRNG (the seed is printed so a failure can be replayed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

#[test]
fn follow_mode_ships_new_entries_within_two_seconds() {
    let s = Setup::new();
    let mock = mock(None);
    write_journal(&s.journal, &entries(0, 10));
    let path = s.config(&mock.bootstrap_servers(), "", "");
    let agent = Agent::start(&path);
    let mut reader = Reader::new(&mock.bootstrap_servers(), "logs");
    assert_eq!(
        reader.read_n(10, Duration::from_secs(30)),
        10,
        "{}",
        agent.stderr()
    );
    assert!(
        reader.messages.iter().all(|m| m.headers.is_empty()),
        "no Kafka headers unless [sink] headers asks for them"
    );
    for round in 0..3u64 {
        let first = 10 + round * 5;
        write_journal(&s.journal, &entries(first, 5));
        let t0 = Instant::now();
        let want = (first + 5) as usize;
        reader.read_n(want, Duration::from_secs(10));
        let latency = t0.elapsed();
        assert_eq!(reader.messages.len(), want, "{}", agent.stderr());
        assert!(
            latency < Duration::from_secs(2),
            "round {round}: appended entries took {latency:?}"
        );
    }
    agent.stop();
}

#[test]
fn no_ack_no_advance_then_everything_arrives() {
    let s = Setup::new();
    let mock = mock(None);
    write_journal(&s.journal, &entries(0, 500));
    let down = BrokerDown::new(&mock, 1);
    // A short message timeout makes librdkafka give up on messages quickly, so the outage also
    // exercises perapera's own re-produce path (MessageTimedOut is final inside librdkafka).
    let path = s.config(
        &mock.bootstrap_servers(),
        "",
        "[sink.librdkafka]\n\"message.timeout.ms\" = 1500\n",
    );
    let agent = Agent::start(&path);
    assert!(agent.wait_log("perapera is running", Duration::from_secs(10)));
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        assert_eq!(
            saved_cursor(&s.state, "journal"),
            None,
            "checkpoint moved without an ack"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        // librdkafka reports timeouts late under load (up to ~14 s measured with a 4 s timeout).
        agent.wait_log("will be re-sent", Duration::from_secs(30)),
        "timed-out entries are re-sent\n{}",
        agent.stderr()
    );
    down.up();
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(60), &agent);
    let (counts, _dups) = read_back(&mock, 500);
    assert_eq!(counts.len(), 500, "every entry arrived");
    agent.stop();
}

#[test]
fn sigkill_ten_times_loses_nothing() {
    const N: u64 = 20_000;
    const WINDOW: usize = 200;
    let mut s = Setup::new();
    // The default interval: the window bounds duplicates whatever the interval, because an
    // acknowledged entry keeps its window place until a written checkpoint covers it.
    s.checkpoint_interval = "1s";
    // Broker latency caps throughput near WINDOW / RTT = 2000 entries/s, so that the ten kills
    // land mid-stream.
    let mock = mock(Some(Duration::from_millis(100)));
    write_journal(&s.journal, &entries(0, N));
    let path = s.config(
        &mock.bootstrap_servers(),
        &format!("[pipeline]\nmax_in_flight = {WINDOW}\n"),
        "",
    );
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("sigkill test seed {seed}");
    let mut rng = Lcg(seed);
    let mut kills = 0;
    let cursors = journal_cursors(&s.journal);
    let position = |c: Option<String>| c.and_then(|c| cursors.iter().position(|x| *x == c));
    let mut progress = Vec::new();
    for _ in 0..10 {
        let before = saved_cursor(&s.state, "journal");
        let agent = Agent::start(&path);
        // Kill while shipping: after this run acknowledged something, at a random moment.
        let end = Instant::now() + Duration::from_secs(30);
        while saved_cursor(&s.state, "journal") == before {
            assert!(Instant::now() < end, "no progress\n{}", agent.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.next(50, 800)));
        agent.kill9();
        kills += 1;
        progress.push(position(saved_cursor(&s.state, "journal")));
    }
    eprintln!("checkpoint (entry index) after each kill: {progress:?}");
    assert!(
        progress.last().copied().flatten() < Some(N as usize - 1),
        "the kills should land before the run completes; slow the broker down: {progress:?}"
    );
    let agent = Agent::start(&path);
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(120), &agent);
    agent.stop();
    let (counts, dups) = read_back(&mock, N as usize);
    let lost: Vec<u64> = (0..N)
        .filter(|i| !counts.contains_key(i))
        .take(10)
        .collect();
    eprintln!(
        "sigkill: kills={kills} delivered={} duplicates={dups} lost={}",
        counts.len(),
        N as usize - counts.len()
    );
    assert!(lost.is_empty(), "lost entries, e.g. {lost:?}");
    assert!(
        dups <= kills * WINDOW,
        "{dups} duplicates exceed {kills} kills x in-flight window {WINDOW}"
    );
}

#[test]
fn sigterm_drains_and_restart_resends_nothing() {
    const N: u64 = 20_000;
    let s = Setup::new();
    let mock = mock(Some(Duration::from_millis(100)));
    write_journal(&s.journal, &entries(0, N));
    let path = s.config(
        &mock.bootstrap_servers(),
        "[pipeline]\nmax_in_flight = 200\nshutdown_timeout = \"20s\"\n",
        "",
    );
    let mut agent = Agent::start(&path);
    assert!(agent.wait_log("perapera is running", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(1500));
    agent.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let status = agent
        .wait_exit(Duration::from_secs(25))
        .expect("exits after SIGTERM");
    assert!(
        status.success(),
        "exit 0 after SIGTERM: {status:?}\n{}",
        agent.stderr()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "within shutdown_timeout"
    );
    let stopped_at = saved_cursor(&s.state, "journal").expect("checkpoint written on shutdown");
    assert_ne!(stopped_at, s.last_cursor(), "SIGTERM landed mid-stream");
    let agent = Agent::start(&path);
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(120), &agent);
    agent.stop();
    let (counts, dups) = read_back(&mock, N as usize);
    assert_eq!(counts.len(), N as usize);
    assert_eq!(dups, 0, "a clean shutdown re-sends nothing");
}

fn big_entry(seq: u64, size: usize) -> Entry {
    let mut e = entry(seq, 1_700_000_000_000_000 + seq * 1000);
    e.retain(|(n, _)| n != "MESSAGE");
    e.push(("MESSAGE".into(), "é".repeat(size / 2).into_bytes()));
    e
}

fn poison_journal(s: &Setup) {
    let mut all = entries(0, 20);
    all.push(big_entry(20, 2_000_000));
    all.extend(entries(21, 20));
    write_journal(&s.journal, &all);
}

#[test]
fn oversize_entry_is_truncated_and_counted() {
    let s = Setup::new();
    let mock = mock(None);
    poison_journal(&s);
    let path = s.config(&mock.bootstrap_servers(), "", "");
    let agent = Agent::start(&path);
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(30), &agent);
    let log = agent.stop();
    assert!(log.contains("truncated=1"), "{log}");
    let mut reader = Reader::new(&mock.bootstrap_servers(), "logs");
    reader.read_n(41, Duration::from_secs(30));
    let big = reader
        .messages
        .iter()
        .find(|m| m.seq() == 20)
        .expect("truncated entry delivered");
    let f = big.fields();
    let original = f["_PERAPERA_TRUNCATED"]
        .as_u64()
        .expect("marked with original size");
    assert!(original > 2_000_000, "{original}");
    let msg = f["MESSAGE"].as_str().expect("still valid UTF-8 text");
    assert!(
        msg.len() < 1_000_000 && msg.len() > 900_000,
        "{}",
        msg.len()
    );
    assert!(msg.chars().all(|c| c == 'é'));
    assert!(big.payload.len() <= 1_000_000);
    assert_eq!(seq_counts(&reader.messages).0.len(), 41);
}

#[test]
fn oversize_drop_and_invalid_records_do_not_stall() {
    let s = Setup::new();
    let mock = mock(None);
    poison_journal(&s);
    // The next 12 produce requests are rejected as INVALID_RECORD: entries are retried as is
    // (the broker rejects whole batches, innocent entries included), and an entry rejected
    // three times is dropped by policy and counted; nothing stalls the checkpoint.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD; 12],
    );
    let path = s.config(&mock.bootstrap_servers(), "", "oversize = \"drop\"\n");
    let agent = Agent::start(&path);
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(60), &agent);
    let log = agent.stop();
    let totals = log
        .lines()
        .find(|l| l.contains("Totals: source=journal"))
        .expect(&log);
    let count = |key: &str| -> usize {
        totals
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(count("dropped_too_large"), 1, "{totals}");
    let invalid = count("dropped_invalid");
    assert!(
        invalid >= 1,
        "the injected INVALID_RECORD hit entries: {totals}"
    );
    let mut reader = Reader::new(&mock.bootstrap_servers(), "logs");
    reader.read_n(40 - invalid, Duration::from_secs(20));
    reader.drain(Duration::from_millis(500));
    let (counts, _) = seq_counts(&reader.messages);
    assert!(!counts.contains_key(&20), "the oversize entry was dropped");
    assert_eq!(
        counts.len() + invalid + 1,
        41,
        "every entry delivered or counted: {totals}"
    );
    assert_eq!(count("acked"), counts.len(), "{totals}");
}

#[test]
fn oversize_entry_goes_to_dead_letter_topic() {
    let s = Setup::new();
    let mock = mock(None);
    mock.create_topic("dlq", 1, 1).unwrap();
    poison_journal(&s);
    let path = s.config(
        &mock.bootstrap_servers(),
        "",
        "oversize = { dead_letter = \"dlq\" }\n",
    );
    let agent = Agent::start(&path);
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(30), &agent);
    let log = agent.stop();
    assert!(log.contains("dead_lettered=1"), "{log}");
    let mut dlq = Reader::new(&mock.bootstrap_servers(), "dlq");
    assert_eq!(dlq.read_n(1, Duration::from_secs(20)), 1);
    let f = dlq.messages[0].fields();
    assert_eq!(f["SEQ"].as_str(), Some("20"));
    assert_eq!(f["_SYSTEMD_UNIT"].as_str(), Some("app.service"));
    assert!(f["_PERAPERA_REJECTED"]
        .as_str()
        .unwrap()
        .contains("message.max.bytes"));
    assert!(f["_PERAPERA_ORIGINAL_BYTES"].as_u64().unwrap() > 2_000_000);
    assert!(f["MESSAGE"].as_str().unwrap().contains("bytes omitted"));
    let mut logs = Reader::new(&mock.bootstrap_servers(), "logs");
    logs.read_n(40, Duration::from_secs(20));
    logs.drain(Duration::from_millis(300));
    let (counts, _) = seq_counts(&logs.messages);
    assert_eq!(counts.len(), 40);
    assert!(!counts.contains_key(&20));
}

#[test]
fn dropped_last_entry_still_moves_the_checkpoint() {
    let s = Setup::new();
    let mock = mock(None);
    let mut all = entries(0, 5);
    all.push(big_entry(5, 2_000_000));
    write_journal(&s.journal, &all);
    let path = s.config(&mock.bootstrap_servers(), "", "oversize = \"drop\"\n");
    let agent = Agent::start(&path);
    // The poison entry is the newest: nothing after it will ever be acknowledged, yet the
    // checkpoint must pass it (a dropped entry counts as done).
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(30), &agent);
    let log = agent.stop();
    assert!(
        log.contains("acked=5") && log.contains("dropped_too_large=1"),
        "{log}"
    );
}

#[test]
fn rejected_timestamp_is_resent_with_the_produce_time() {
    let s = Setup::new();
    let mock = mock(None);
    write_journal(&s.journal, &entries(0, 20));
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP; 1],
    );
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let path = s.config(&mock.bootstrap_servers(), "", "");
    let agent = Agent::start(&path);
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(30), &agent);
    let log = agent.stop();
    assert!(log.contains("rejected an entry's timestamp"), "{log}");
    let mut reader = Reader::new(&mock.bootstrap_servers(), "logs");
    reader.read_n(20, Duration::from_secs(20));
    reader.drain(Duration::from_millis(300));
    assert_eq!(seq_counts(&reader.messages).0.len(), 20);
    let resent: Vec<_> = reader
        .messages
        .iter()
        .filter(|m| m.timestamp.is_some_and(|t| t >= started_ms))
        .collect();
    assert!(!resent.is_empty(), "some entries carry the produce time");
    for m in resent {
        // The entry's own time is still in the payload.
        let original = m.fields()["__REALTIME_TIMESTAMP"].as_u64().unwrap();
        assert_eq!(original, 1_700_000_000_000_000 + m.seq() * 1000);
    }
}

#[test]
fn fatal_idempotence_error_recreates_the_producer() {
    let s = Setup::new();
    let mock = mock(None);
    write_journal(&s.journal, &entries(0, 300));
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 1],
    );
    let path = s.config(&mock.bootstrap_servers(), "", "");
    let agent = Agent::start(&path);
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(60), &agent);
    let log = agent.stop();
    assert!(
        log.contains("Re-sending every unacknowledged entry"),
        "{log}"
    );
    assert_eq!(read_back(&mock, 300).0.len(), 300, "{log}");
}

#[test]
fn out_of_order_acks_never_move_the_checkpoint_past_an_unacked_entry() {
    const N: u64 = 2000;
    let s = Setup::new();
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("logs", 6, 1).unwrap();
    // Partitions led by brokers 10 ms, 150 ms and 400 ms away: acks come back out of order.
    for p in 0..6 {
        mock.partition_leader("logs", p, Some(p % 3 + 1)).unwrap();
    }
    for (broker, rtt) in [(1, 10), (2, 150), (3, 400)] {
        mock.broker_round_trip_time(broker, Duration::from_millis(rtt))
            .unwrap();
    }
    write_journal(&s.journal, &entries(0, N));
    let cursors = journal_cursors(&s.journal);
    let path = s.config(
        &mock.bootstrap_servers(),
        "[pipeline]\nmax_in_flight = 300\n",
        "",
    );
    let agent = Agent::start(&path);
    let mut reader = Reader::new(&mock.bootstrap_servers(), "logs");
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs(240);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        // Freeze perapera, so that the checkpoint read now is what it would resume from.
        agent.signal(libc::SIGSTOP);
        let idx =
            saved_cursor(&s.state, "journal").and_then(|c| cursors.iter().position(|x| *x == c));
        if let Some(idx) = idx {
            // Everything up to the checkpoint was acknowledged, so it is in Kafka (the mock
            // serves slow partitions slowly: allow a generous time to read them).
            let all_there = reader.read_until(Duration::from_secs(90), |m| {
                let (counts, _) = seq_counts(m);
                (0..=idx as u64).all(|i| counts.contains_key(&i))
            });
            let (counts, _) = seq_counts(&reader.messages);
            let missing: Vec<u64> = (0..=idx as u64)
                .filter(|i| !counts.contains_key(i))
                .collect();
            assert!(
                all_there,
                "checkpoint at entry {idx} but {} earlier entries are not in Kafka (e.g. {:?})",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
            samples.push(idx);
        }
        agent.signal(libc::SIGCONT);
        if idx == Some(N as usize - 1) {
            break;
        }
        assert!(
            Instant::now() < end,
            "run did not finish: {samples:?}\n{}",
            agent.stderr()
        );
    }
    agent.stop();
    eprintln!("checkpoint samples (entry index): {samples:?}");
    assert!(samples.len() >= 3, "sampled mid-run: {samples:?}");
}

#[test]
fn sigterm_with_the_broker_down_exits_within_shutdown_timeout() {
    let s = Setup::new();
    let mock = mock(None);
    write_journal(&s.journal, &entries(0, 1000));
    let _down = BrokerDown::new(&mock, 1);
    let path = s.config(
        &mock.bootstrap_servers(),
        "[pipeline]\nshutdown_timeout = \"3s\"\n",
        "",
    );
    let mut agent = Agent::start(&path);
    assert!(agent.wait_log("perapera is running", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_secs(1));
    agent.signal(libc::SIGTERM);
    let t0 = Instant::now();
    // Timed at the first poll that sees the exit (wait_exit adds a pause for stderr).
    let mut took = None;
    while t0.elapsed() < Duration::from_secs(10) {
        if agent.child.try_wait().unwrap().is_some() {
            took = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = took.expect("exits");
    let status = agent.wait_exit(Duration::from_secs(1)).expect("exited");
    assert!(status.success(), "{status:?}\n{}", agent.stderr());
    assert!(
        took < Duration::from_secs(3),
        "exited after {took:?}, shutdown_timeout is 3s"
    );
    assert_eq!(
        saved_cursor(&s.state, "journal"),
        None,
        "nothing was acknowledged"
    );
    assert!(agent.stderr().contains("will be re-sent on the next start"));
    mock.broker_up(1).unwrap();
    let agent = Agent::start(&path);
    s.wait_checkpoint(&s.last_cursor(), Duration::from_secs(60), &agent);
    agent.stop();
    assert_eq!(read_back(&mock, 1000).0.len(), 1000);
}
