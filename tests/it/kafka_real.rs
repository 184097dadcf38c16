//! End to end against Apache Kafka itself (a KRaft broker), read back by independent
//! consumers: every entry arrives, byte-exact, with the documented types, headers, key and
//! timestamps.

use std::time::{Duration, Instant};

use crate::support::*;

const N: u64 = 20_000;

fn special_entries() -> Vec<Entry> {
    let mut out = Vec::new();
    // Binary field (NUL, 0xff, newline) and a repeated field.
    let mut e = entry(N, 1_700_000_100_000_000);
    e.push(("BLOB".into(), vec![0, 1, 0xff, b'\n', 0]));
    e.push(("TAG".into(), b"one".to_vec()));
    e.push(("TAG".into(), b"two".to_vec()));
    out.push(e);
    // A 200 KB MESSAGE.
    let mut e = entry(N + 1, 1_700_000_100_001_000);
    e.retain(|(n, _)| n != "MESSAGE");
    e.push(("MESSAGE".into(), vec![b'm'; 200_000]));
    out.push(e);
    // Non-ASCII text, no unit (topic default), and a source timestamp.
    let mut e = entry(N + 2, 1_700_000_100_002_000);
    e.retain(|(n, _)| n != "MESSAGE" && n != "_SYSTEMD_UNIT");
    e.push(("MESSAGE".into(), "héllo wörld ✓ 日本語".as_bytes().to_vec()));
    e.push((
        "_SOURCE_REALTIME_TIMESTAMP".into(),
        b"1699999999123456".to_vec(),
    ));
    out.push(e);
    out
}

#[test]
fn journal_to_apache_kafka_end_to_end() {
    let kafka = Kafka::single();
    kafka.create_topic("logs.app.service", 3);
    kafka.create_topic("logs.unknown", 1);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let state = dir.path().join("state");
    let mut all = entries(0, N);
    all.extend(special_entries());
    write_journal(&journal, &all);
    let total = all.len();
    let path = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n\
             [sink]\ntype = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"logs.{{_SYSTEMD_UNIT:-unknown}}\"\n\
             key = \"{{_HOSTNAME}}\"\nheaders = [\"source\", \"position\"]\n",
            state.display(),
            journal.display(),
            kafka.bootstrap
        ),
    );
    let agent = Agent::start(&path);
    let last = journal_cursors(&journal).pop().unwrap();
    let end = Instant::now() + Duration::from_secs(180);
    while saved_cursor(&state, "journal").as_deref() != Some(last.as_str()) {
        assert!(
            Instant::now() < end,
            "not all acknowledged\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.stop();
    assert!(log.contains(&format!("acked={total}")), "{log}");

    let mut reader = Reader::topics(&kafka.bootstrap, &["logs.app.service", "logs.unknown"]);
    reader.read_n(total, Duration::from_secs(120));
    let messages = reader.messages;
    let (counts, dups) = seq_counts(&messages);
    assert_eq!(counts.len(), total, "every entry arrived");
    assert_eq!(dups, 0);

    for m in &messages {
        let f = m.fields();
        let seq = m.seq();
        let realtime = f["__REALTIME_TIMESTAMP"]
            .as_u64()
            .expect("__REALTIME_TIMESTAMP is an integer");
        assert!(f["__MONOTONIC_TIMESTAMP"].as_u64().is_some());
        let cursor = f["__CURSOR"].as_str().expect("__CURSOR is a string");
        assert_eq!(
            f["_BOOT_ID"].as_str(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(f["_HOSTNAME"].as_str(), Some("testhost"));
        assert_eq!(m.key.as_deref(), Some(&b"testhost"[..]));
        assert_eq!(m.headers["perapera-source"], b"journal");
        assert_eq!(m.headers["perapera-position"], cursor.as_bytes());
        assert!(!m.headers.contains_key("content-type"), "not asked for");
        let expected_ms = match f.get("_SOURCE_REALTIME_TIMESTAMP") {
            Some(v) => v.as_str().unwrap().parse::<i64>().unwrap() / 1000,
            None => (realtime / 1000) as i64,
        };
        assert_eq!(
            m.timestamp,
            Some(expected_ms),
            "Kafka timestamp of SEQ {seq}"
        );
        if seq < N {
            assert_eq!(realtime, 1_700_000_000_000_000 + seq * 1000);
            assert_eq!(
                f["MESSAGE"].as_str(),
                Some(format!("message number {seq}").as_str())
            );
            assert_eq!(m.topic, "logs.app.service");
        }
    }
    let by_seq = |s: u64| messages.iter().find(|m| m.seq() == s).unwrap().fields();
    let bin = by_seq(N);
    assert_eq!(
        bin["BLOB"],
        rmpv::Value::Binary(vec![0, 1, 0xff, b'\n', 0]),
        "binary as msgpack bin"
    );
    assert_eq!(
        bin["TAG"],
        rmpv::Value::Array(vec!["one".into(), "two".into()]),
        "repeated field as array"
    );
    assert_eq!(
        by_seq(N + 1)["MESSAGE"].as_str().map(str::len),
        Some(200_000)
    );
    let text = by_seq(N + 2);
    assert_eq!(text["MESSAGE"].as_str(), Some("héllo wörld ✓ 日本語"));
    let unknown: Vec<_> = messages
        .iter()
        .filter(|m| m.topic == "logs.unknown")
        .collect();
    assert_eq!(unknown.len(), 1, "missing unit takes the template default");
    assert_eq!(unknown[0].seq(), N + 2);
    assert_eq!(unknown[0].timestamp, Some(1_699_999_999_123));

    // The same topics read back by an independent client: confluent-kafka and msgpack from
    // PyPI (tests/py/consume.py checks values, timestamps and the position header).
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/consume.py"))
        .args([
            kafka.bootstrap.as_str(),
            &total.to_string(),
            "logs.app.service",
            "logs.unknown",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("consume.py prints JSON");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["count"], total, "{report}");
    assert_eq!(report["distinct"], total, "{report}");

    // And by Kafka's own Java console consumer (read_committed): the same bytes, keys,
    // timestamps and headers as the Rust consumer read.
    let mut java = kafka.console_consume("logs.app.service", total - 1);
    java.extend(kafka.console_consume("logs.unknown", 1));
    assert_eq!(java.len(), total, "the console consumer read every entry");
    let rust: std::collections::HashMap<u64, &Consumed> =
        messages.iter().map(|m| (m.seq(), m)).collect();
    for j in &java {
        let r = rust[&j.seq()];
        assert_eq!(j.payload, r.payload, "value of SEQ {}", j.seq());
        assert_eq!(
            (&j.topic, j.partition, j.offset, j.timestamp, &j.key),
            (&r.topic, r.partition, r.offset, r.timestamp, &r.key),
            "SEQ {}",
            j.seq()
        );
        assert_eq!(j.headers, r.headers, "headers of SEQ {}", j.seq());
    }
    let bin = java.iter().find(|m| m.seq() == N).unwrap().fields();
    assert_eq!(bin["BLOB"], rmpv::Value::Binary(vec![0, 1, 0xff, b'\n', 0]));
}

/// The three-broker cluster the fault tests use: topics replicated three times, a leader
/// killed and replaced, two brokers down leaving the ISR below `min.insync.replicas` (the
/// broker refuses `acks=all` writes with NOT_ENOUGH_REPLICAS), the active controller killed,
/// and every node back.
#[test]
fn three_broker_cluster_fails_over_and_refuses_writes_below_min_isr() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut kafka = Kafka::cluster();
    kafka.create_topic("replicated", 1);
    let leader = kafka.leaders("replicated")[0];
    assert!(kafka.ids().contains(&(leader as u32)), "leader {leader}");
    kafka.kill(leader as u32);
    // Generous: on two busy cores beside the chaos test's six JVMs, elections take time.
    let end = Instant::now() + Duration::from_secs(90);
    while kafka
        .leaders("replicated")
        .first()
        .is_none_or(|l| *l == leader || *l < 0)
    {
        assert!(
            Instant::now() < end,
            "no new leader 90 s after killing {leader}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    kafka.restart(leader as u32);
    // Two brokers down: one left, below min.insync.replicas = 2.
    let left = kafka.leaders("replicated")[0] as u32;
    let others: Vec<u32> = kafka.ids().into_iter().filter(|i| *i != left).collect();
    for id in &others {
        kafka.kill(*id);
    }
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap.as_str())
        .set("acks", "all")
        .set("message.timeout.ms", "8000")
        .set("retries", "0")
        .create()
        .unwrap();
    // The ISR shrinks once the followers are fenced (broker.session.timeout.ms = 4 s); until
    // then writes time out. Refused within 90 s.
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let result = block_on(producer.send(
            FutureRecord::<(), _>::to("replicated").payload("x"),
            Duration::from_secs(10),
        ));
        let text = format!("{result:?}");
        if text.contains("NotEnoughReplicas") {
            break;
        }
        assert!(
            Instant::now() < end,
            "a write below min.insync.replicas was not refused so: {text}"
        );
    }
    for id in &others {
        kafka.restart(*id);
    }
    let controller = kafka.active_controller().expect("a quorum leader");
    assert!((101..=103).contains(&controller), "{controller}");
    kafka.kill(controller);
    let end = Instant::now() + Duration::from_secs(90);
    while kafka.active_controller().is_none_or(|c| c == controller) {
        assert!(Instant::now() < end, "no new active controller in 90 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    kafka.restart(controller);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let result = block_on(producer.send(
            FutureRecord::<(), _>::to("replicated").payload("after"),
            Duration::from_secs(10),
        ));
        if result.is_ok() {
            break;
        }
        assert!(
            Instant::now() < end,
            "a write with every node back: {result:?}"
        );
    }
}

/// The topic deleted while perapera ships to it: what the broker acknowledged before went with
/// the topic, but nothing perapera read after is dropped. The entries wait (`/health` names the
/// topic) and arrive once the topic exists again.
#[test]
fn a_topic_deleted_while_shipping_waits_and_resumes_once_recreated() {
    let kafka = Kafka::single();
    kafka.create_topic("shipped", 1);
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let path = FilesToKafka {
        brokers: &kafka.bootstrap,
        topic: "shipped",
        port: metrics,
        metrics: "unhealthy_after = \"2s\"\n",
        source: "rescan_interval = \"200ms\"\n",
        librdkafka: "\"topic.metadata.refresh.interval.ms\" = 1000\n\
                     \"topic.metadata.propagation.max.ms\" = 2000\n",
    }
    .write(dir.path());
    let log = dir.path().join("logs/app.log");
    std::fs::write(&log, lines(0, 100)).unwrap();
    let agent = Agent::start(&path);
    let mut reader = Reader::new(&kafka.bootstrap, "shipped");
    assert_eq!(reader.read_n(100, Duration::from_secs(60)), 100);
    drop(reader);

    kafka.delete_topic("shipped");
    // Written while the topic is gone.
    append(&log, lines(100, 300).as_bytes());
    let end = Instant::now() + Duration::from_secs(60);
    let health = loop {
        match http_get(metrics, "/health") {
            Some((503, body)) if body.contains("\"shipped\"") => break body,
            other => assert!(
                Instant::now() < end,
                "/health never named the deleted topic: {other:?}\n{}",
                agent.stderr()
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(health.contains("create the topic"), "{health}");

    kafka.create_topic("shipped", 1);
    let mut reader = Reader::new(&kafka.bootstrap, "shipped");
    reader.read_until(Duration::from_secs(90), |m| m.len() >= 200);
    reader.drain(Duration::from_secs(1));
    let got: std::collections::HashSet<Vec<u8>> =
        reader.messages.iter().map(Consumed::message).collect();
    let missing: Vec<usize> = (100..300)
        .filter(|i| !got.contains(format!("line {i}").as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "lines read while the topic was gone and not delivered: {missing:?}\n{}",
        agent.stderr()
    );
    let stderr = agent.stop();
    assert!(
        stderr.contains("topic=\"shipped\""),
        "the log names the topic: {stderr}"
    );
}

/// A topic whose `max.message.bytes` (3 000) is below librdkafka's default, with
/// `message.max.bytes` set to match as the README says: the large entry gets the oversize
/// policy (truncate) before it is sent, librdkafka's batches stay within the topic's limit, and
/// the small entries around it arrive unchanged.
#[test]
fn a_topic_limit_matched_by_message_max_bytes_truncates_only_the_large_entry() {
    let (_, metrics) = large_line_among_small_ones(Some(3000));
    assert!(
        !metrics.contains("reason=\"batch_too_large\""),
        "librdkafka's batches fit the topic's limit: {metrics}"
    );
}

/// The same topic with the client's default `message.max.bytes` (1 MB): the broker refuses the
/// whole batch that holds the large entry. Its entries are re-sent one per batch, so the small
/// ones arrive unchanged and only the large one is truncated (halved until the broker takes it).
#[test]
fn a_topic_limit_below_the_clients_truncates_only_the_large_entry() {
    let (stderr, metrics) = large_line_among_small_ones(None);
    assert!(
        metrics.contains("perapera_sink_retries_total{sink=\"kafka\",reason=\"batch_too_large\"}"),
        "the refused batch is counted: {metrics}"
    );
    assert!(
        stderr.contains("re-sending its entries one per batch"),
        "the log says what happened: {stderr}"
    );
}

/// 200 small lines around one incompressible line of 8 000 bytes, all read in one batch, into
/// a topic with `max.message.bytes = 3000`; `client_limit` sets `message.max.bytes`. Asserts
/// that every small line arrives unchanged and the large one truncated and marked; returns
/// perapera's log and its last `/metrics`.
fn large_line_among_small_ones(client_limit: Option<usize>) -> (String, String) {
    let kafka = Kafka::single();
    kafka.create_topic_with("small", 1, &[("max.message.bytes", "3000")]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let limit = client_limit.map_or(String::new(), |l| format!("\"message.max.bytes\" = {l}\n"));
    let path = FilesToKafka {
        brokers: &kafka.bootstrap,
        topic: "small",
        port,
        librdkafka: &format!("\"linger.ms\" = 50\n{limit}"),
        ..FilesToKafka::default()
    }
    .write(dir.path());
    let logs = dir.path().join("logs");
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&format!("small {i}\n"));
    }
    // Incompressible (the broker's limit applies to the compressed batch, lz4 by default).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: String = (0..8000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect();
    text.push_str(&format!("big {noise}\n"));
    for i in 100..200 {
        text.push_str(&format!("small {i}\n"));
    }
    std::fs::write(logs.join("app.log"), text).unwrap();
    let agent = Agent::start(&path);
    wait_port(port, Duration::from_secs(30), "the metrics endpoint");
    let mut reader = Reader::new(&kafka.bootstrap, "small");
    reader.read_until(Duration::from_secs(60), |m| m.len() >= 201);
    reader.drain(Duration::from_secs(1));
    let metrics = http_get(port, "/metrics").map_or(String::new(), |(_, body)| body);
    let stderr = agent.stop();
    let mut small = std::collections::BTreeMap::new();
    let mut big = None;
    for m in &reader.messages {
        let text = String::from_utf8_lossy(&m.message()).to_string();
        if text.starts_with("small ") {
            assert!(
                !m.fields().contains_key("_PERAPERA_TRUNCATED"),
                "an entry that fits was truncated: {text}"
            );
            *small.entry(text).or_insert(0) += 1;
        } else {
            big = Some(m.fields());
        }
    }
    assert_eq!(small.len(), 200, "every small line, unchanged\n{stderr}");
    let big = big.unwrap_or_else(|| panic!("the large line never arrived\n{stderr}"));
    assert!(big.contains_key("_PERAPERA_TRUNCATED"), "{big:?}");
    (stderr, metrics)
}

/// What a broker restart can really produce for the idempotent producer: a single replica
/// whose host crashed loses the tail of its log that was never fsynced (Kafka leaves that to
/// the page cache), acknowledged batches included. The producer's next sequence numbers are then
/// ahead of what the broker kept: OUT_OF_ORDER_SEQUENCE_NUMBER, which librdkafka makes a
/// fatal error (measured against Kafka 4.1.1, with and without `enable.gapless.guarantee`).
/// perapera recreates the producer and re-sends every unacknowledged entry: nothing that was not
/// acknowledged is lost, and the new producer keeps shipping. (What the broker acknowledged and
/// then lost is gone for every shipper: replication is the remedy, the chaos test's.)
#[test]
fn a_broker_that_lost_its_log_tail_makes_the_producer_fatal_and_it_is_recreated() {
    let mut kafka = Kafka::single();
    kafka.create_topic("idem", 1);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = FilesToKafka {
        brokers: &kafka.bootstrap,
        topic: "idem",
        port,
        source: "rescan_interval = \"200ms\"\n",
        librdkafka: "\"batch.num.messages\" = 10\n",
        ..FilesToKafka::default()
    }
    .write(dir.path());
    let log = dir.path().join("logs/app.log");
    std::fs::write(&log, lines(0, 100)).unwrap();
    let agent = Agent::start(&path);
    let mut reader = Reader::new(&kafka.bootstrap, "idem");
    assert_eq!(reader.read_n(100, Duration::from_secs(60)), 100);
    drop(reader);
    kafka.kill(1);
    // Ten batches of ten: the broker keeps the first three.
    kafka.lose_tail(1, "idem", 0, 30);
    kafka.restart(1);
    append(&log, lines(100, 200).as_bytes());
    let recreated = agent.wait_log("recreating it and re-sending", Duration::from_secs(60));
    assert!(
        recreated,
        "the producer was not recreated\n{}",
        agent.stderr()
    );
    append(&log, lines(200, 250).as_bytes());
    let mut reader = Reader::new(&kafka.bootstrap, "idem");
    reader.read_until(Duration::from_secs(60), |m| m.len() >= 180);
    reader.drain(Duration::from_secs(2));
    let metrics = http_get(port, "/metrics").map_or(String::new(), |(_, body)| body);
    let stderr = agent.stop();
    let mut got = std::collections::HashMap::new();
    for m in &reader.messages {
        *got.entry(String::from_utf8_lossy(&m.message()).to_string())
            .or_insert(0usize) += 1;
    }
    let missing: Vec<usize> = (0..30)
        .chain(100..250)
        .filter(|i| !got.contains_key(&format!("line {i}")))
        .collect();
    assert!(missing.is_empty(), "lost {missing:?}\n{stderr}");
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    assert!(duplicates <= 100, "{duplicates} duplicates\n{stderr}");
    assert!(
        stderr.contains("OutOfOrderSequenceNumber"),
        "the log names the broker's answer: {stderr}"
    );
    assert!(
        metrics.contains("reason=\"fatal\"} 1"),
        "one fatal error, one new producer: {metrics}"
    );
}

/// `line FROM\n` .. `line TO-1\n`.
fn lines(from: usize, to: usize) -> String {
    (from..to).map(|i| format!("line {i}\n")).collect()
}
