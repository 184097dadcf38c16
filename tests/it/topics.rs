//! Topics rendered from untrusted fields (a forwarded tag): topics the broker does not have,
//! and more distinct topics than `max_topics`. Either the entries wait (nothing lost, `/health`
//! names the topic) or they go to `topic_fallback`; no sender can make the producer track
//! endless topics, fill the window for good or keep SIGTERM from being honoured.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use perapera::forward::{Chunk, Entry, Mode, Options, Request, Time};
use perapera::record::Value;

use crate::support::*;

/// A PackedForward request of events `first..first + n` with tag `tag` and a chunk id.
fn request(tag: &str, first: u64, n: u64) -> (Vec<u8>, String) {
    let id = format!("{tag}-{first}");
    let req = Request {
        tag: tag.into(),
        mode: Mode::PackedForward,
        entries: (first..first + n)
            .map(|i| Entry {
                time: Time::Event {
                    sec: 1_700_000_000,
                    nsec: 0,
                },
                metadata: None,
                record: vec![
                    ("message".into(), Value::Str(format!("{tag} {i}"))),
                    ("n".into(), Value::UInt(i)),
                ],
            })
            .collect(),
        options: Options {
            size: Some(n),
            chunk: Some(Chunk::text(&id)),
            compressed: None,
            fluent_signal: None,
            metadata: None,
        },
    };
    (req.encode(), id)
}

/// Sends a request on a new connection; the ack is read with [`ack`].
fn send(port: u16, tag: &str, first: u64, n: u64) -> (TcpStream, String) {
    let (bytes, id) = request(tag, first, n);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&bytes).unwrap();
    (s, id)
}

/// Whether the ack for `id` arrives within `timeout`.
fn ack(s: &mut TcpStream, id: &str, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = vec![0u8; 256];
    match s.read(&mut buf) {
        Ok(got) if got > 0 => {
            perapera::forward::decode_ack(&buf[..got])
                .ok()
                .flatten()
                .as_deref()
                == Some(id.as_bytes())
        }
        _ => false,
    }
}

/// The value of an unlabelled metric, or of the first series whose labels contain `labels`.
fn metric(port: u16, name: &str, labels: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with(' ') || (rest.starts_with('{') && rest.contains(labels))
            })
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A forward source and a files source into Kafka, topic `logs.{tag:-files}`.
fn config(
    dir: &Path,
    port: u16,
    metrics: u16,
    brokers: &str,
    sink_extra: &str,
) -> std::path::PathBuf {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    config_file(
        dir,
        &format!(
            "[state]\ndirectory = \"{state}\"\n[metrics]\naddress = \"127.0.0.1:{metrics}\"\n\
             unhealthy_after = \"2s\"\n[pipeline]\nshutdown_timeout = \"5s\"\n\
             [[source]]\nname = \"fwd\"\ntype = \"forward\"\nlisten = \"127.0.0.1:{port}\"\n\
             [[source]]\nname = \"app\"\ntype = \"files\"\ninclude = [\"{logs}/*.log\"]\n\
             rescan_interval = \"200ms\"\n\
             [sink]\ntype = \"kafka\"\n{brokers}\ntopic = \"logs.{{tag:-files}}\"\n{sink_extra}",
            state = dir.join("state").display(),
            logs = logs.display(),
        ),
    )
}

/// librdkafka holds entries for a topic it does not know for `topic.metadata.propagation.max.ms`
/// (30 s by default) before it reports the topic unknown.
const PROPAGATION: &str = "[sink.librdkafka]\n\"topic.metadata.propagation.max.ms\" = 2000\n";

fn write_lines(dir: &Path, n: usize) {
    let text: String = (0..n).map(|i| format!("file line {i}\n")).collect();
    std::fs::write(dir.join("logs/app.log"), text).unwrap();
}

#[test]
fn entries_for_a_missing_topic_wait_named_in_health_while_other_topics_flow() {
    let kafka = Kafka::single();
    kafka.create_topic("logs.good", 1);
    kafka.create_topic("logs.files", 1);
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let brokers = format!("brokers = [\"{}\"]", kafka.bootstrap);
    // A window of 2 000: each of the two sources may hold 1 000.
    let config = config(dir.path(), port, metrics, &brokers, PROPAGATION);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("[pipeline]\n", "[pipeline]\nmax_in_flight = 2000\n", 1);
    let agent = Agent::start(&config_file(dir.path(), &text));
    wait_port(port, Duration::from_secs(20), "forward source");

    // 400 events to a topic nobody created; a request read after them to a topic that
    // exists is acknowledged all the same (requests of one source do not wait on each other).
    let (mut bad, bad_id) = send(port, "bad", 0, 400);
    std::thread::sleep(Duration::from_millis(500));
    let (mut good, good_id) = send(port, "good", 0, 100);
    assert!(
        ack(&mut good, &good_id, Duration::from_secs(30)),
        "an existing topic must flow while another is missing\n{}",
        agent.stderr()
    );
    // 9 600 more for the missing topic: more than the whole window. The forward source stops
    // at its share; the files source keeps shipping.
    let (mut more, more_id) = send(port, "bad", 400, 9600);
    write_lines(dir.path(), 2000);
    let mut files = Reader::new(&kafka.bootstrap, "logs.files");
    assert_eq!(
        files.read_n(2000, Duration::from_secs(60)),
        2000,
        "the files source stopped behind the forward source's waiting entries\n{}",
        agent.stderr()
    );

    // /health names the topic once the entries waited for unhealthy_after.
    let end = Instant::now() + Duration::from_secs(30);
    let health = loop {
        match http_get(metrics, "/health") {
            Some((503, body)) if body.contains("waited") && body.contains("\"logs.bad\"") => {
                break body
            }
            other => assert!(
                Instant::now() < end,
                "/health never named the topic: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(health.contains("topic_fallback"), "{health}");
    // Entries register as they fail (librdkafka reports each batch once it gave up on the
    // topic): at least the first request's 400 soon, never more than the source's share.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = metric(metrics, "perapera_topic_waiting_entries", "").unwrap_or(0.0);
        assert!(
            waiting <= 1000.0,
            "{waiting} entries wait (the forward source's share is 1 000)"
        );
        if waiting >= 400.0 {
            break;
        }
        assert!(Instant::now() < end, "only {waiting} entries wait");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(metrics, "perapera_topics_waited_for", ""), Some(1.0));
    // The requests are not acknowledged while their entries wait.
    assert!(
        !ack(&mut bad, &bad_id, Duration::from_secs(1)),
        "acked before Kafka had it"
    );

    // Created: the waiting entries are delivered, the requests acknowledged, /health 200.
    kafka.create_topic("logs.bad", 1);
    for (s, id) in [(&mut bad, &bad_id), (&mut more, &more_id)] {
        assert!(
            ack(s, id, Duration::from_secs(60)),
            "entries waiting for a topic were not delivered once it existed\n{}",
            agent.stderr()
        );
    }
    let mut reader = Reader::new(&kafka.bootstrap, "logs.bad");
    reader.read_n(10_000, Duration::from_secs(60));
    reader.drain(Duration::from_secs(1));
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for m in &reader.messages {
        *seen.entry(m.fields()["n"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 10_000, "every waiting entry delivered");
    let end = Instant::now() + Duration::from_secs(10);
    while http_get(metrics, "/health").map(|(c, _)| c) != Some(200) {
        assert!(
            Instant::now() < end,
            "/health stayed 503 after the topic was created"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        metric(metrics, "perapera_topic_waiting_entries", ""),
        Some(0.0)
    );
    agent.stop();
}

#[test]
fn missing_and_surplus_topics_go_to_the_fallback_with_the_topic_they_were_meant_for() {
    const TAGS: u64 = 40;
    const PER_TAG: u64 = 250;
    // The topics that exist (besides logs.files): those the consumer reads.
    const READ: [&str; 7] = [
        "logs.unrouted",
        "logs.e0",
        "logs.e1",
        "logs.e2",
        "logs.e3",
        "logs.e5",
        "logs.e6",
    ];
    let kafka = Kafka::single();
    for t in READ.iter().chain(&["logs.files"]) {
        kafka.create_topic(t, 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let brokers = format!("brokers = [\"{}\"]", kafka.bootstrap);
    let agent = Agent::start(&config(
        dir.path(),
        port,
        metrics,
        &brokers,
        &format!("max_topics = 6\ntopic_fallback = \"logs.unrouted\"\n{PROPAGATION}"),
    ));
    wait_port(port, Duration::from_secs(20), "forward source");
    write_lines(dir.path(), 1000);
    // logs.files takes a place first; tags e0..e3 name topics that exist and take four more;
    // m4 names a topic that does not exist: the broker says so, and its place is given up, so
    // e5 gets the sixth; e6 (which exists) and m7..m39 are beyond max_topics.
    let mut files = Reader::new(&kafka.bootstrap, "logs.files");
    assert_eq!(files.read_n(1000, Duration::from_secs(60)), 1000);
    let tags: Vec<String> = (0..TAGS)
        .map(|i| {
            if i < 4 || i == 5 || i == 6 {
                format!("e{i}")
            } else {
                format!("m{i}")
            }
        })
        .collect();
    for tag in &tags {
        let (mut s, id) = send(port, tag, 0, PER_TAG);
        assert!(
            ack(&mut s, &id, Duration::from_secs(60)),
            "request with tag {tag} not acknowledged\n{}",
            agent.stderr()
        );
    }
    let mut reader = Reader::topics(&kafka.bootstrap, &READ);
    reader.read_n((TAGS * PER_TAG) as usize, Duration::from_secs(60));
    reader.drain(Duration::from_secs(1));
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    let mut rerouted = 0;
    for m in &reader.messages {
        let f = m.fields();
        let tag = f["tag"].as_str().unwrap().to_string();
        let meant = format!("logs.{tag}");
        if m.topic == "logs.unrouted" {
            rerouted += 1;
            assert_eq!(
                m.headers.get("perapera-topic").map(Vec::as_slice),
                Some(meant.as_bytes()),
                "a rerouted entry names the topic it was meant for"
            );
        } else {
            assert_eq!(m.topic, meant);
            assert!(!m.headers.contains_key("perapera-topic"));
        }
        *seen.entry((tag, f["n"].as_u64().unwrap())).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, TAGS * PER_TAG, "every entry delivered");
    assert!(seen.values().all(|&c| c == 1), "no duplicates");
    assert_eq!(rerouted, (TAGS - 5) * PER_TAG);
    let unknown = metric(
        metrics,
        "perapera_entries_failed_total",
        "reason=\"rerouted_unknown_topic\"",
    );
    let bound = metric(
        metrics,
        "perapera_entries_failed_total",
        "reason=\"rerouted_max_topics\"",
    );
    assert_eq!(
        unknown,
        Some(PER_TAG as f64),
        "m4's entries: unknown to the broker"
    );
    assert_eq!(
        bound,
        Some(((TAGS - 6) * PER_TAG) as f64),
        "e6, m7..: beyond max_topics"
    );
    let in_use = metric(metrics, "perapera_kafka_topics", "").unwrap();
    assert_eq!(in_use, 7.0, "max_topics = 6 plus the fallback");
    assert_eq!(http_get(metrics, "/health").map(|(c, _)| c), Some(200));
    agent.stop();
}

/// Distinct tags by the ten thousand on a broker that creates every topic asked for
/// (librdkafka's mock cluster): the producer never tracks more than `max_topics`, memory stays
/// bounded and SIGTERM is honoured within `shutdown_timeout` while entries wait. With a
/// fallback, 50 000 tags from 16 senders, each on one connection; without, 4 000 requests on
/// new connections whose acks cannot come.
#[test]
fn thousands_of_distinct_tags_stay_within_max_topics_and_shutdown_timeout() {
    const SENDERS: u64 = 16;
    for fallback in [true, false] {
        let per_sender: u64 = if fallback { 3125 } else { 250 };
        let dir = tempfile::tempdir().unwrap();
        let (port, metrics) = (free_port(), free_port());
        let extra = format!(
            "max_topics = 50\n{}[sink.librdkafka]\n\"test.mock.num.brokers\" = 1\n",
            if fallback {
                "topic_fallback = \"logs.other\"\n"
            } else {
                ""
            }
        );
        let agent = Agent::start(&config(dir.path(), port, metrics, "", &extra));
        wait_port(port, Duration::from_secs(20), "forward source");
        let rss_before = rss_kib(agent.child.id());
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                std::thread::spawn(move || {
                    let mut acked = 0;
                    let mut conn: Option<TcpStream> = None;
                    for i in 0..per_sender {
                        let tag = format!("t{s}.{i}");
                        if fallback {
                            // One connection, one request at a time.
                            let (bytes, id) = request(&tag, 0, 2);
                            let c = conn.get_or_insert_with(|| {
                                TcpStream::connect(("127.0.0.1", port)).unwrap()
                            });
                            c.write_all(&bytes).unwrap();
                            acked += u64::from(ack(c, &id, Duration::from_secs(30)));
                        } else {
                            let (mut c, id) = send(port, &tag, 0, 2);
                            acked += u64::from(ack(&mut c, &id, Duration::from_millis(50)));
                        }
                    }
                    acked
                })
            })
            .collect();
        let acked: u64 = senders.into_iter().map(|h| h.join().unwrap()).sum();
        let in_use = metric(metrics, "perapera_kafka_topics", "").unwrap();
        assert!(in_use <= 51.0, "{in_use} topics for max_topics = 50");
        let rss_after = rss_kib(agent.child.id());
        eprintln!("fallback {fallback}: RSS {rss_before} → {rss_after} KiB, {in_use} topics, {acked} requests acked");
        assert!(
            rss_after < rss_before + 48 * 1024,
            "RSS {rss_before} → {rss_after} KiB for {} distinct tags",
            SENDERS * per_sender
        );
        if fallback {
            assert_eq!(
                acked,
                SENDERS * per_sender,
                "every request acknowledged\n{}",
                agent.stderr()
            );
            let bound = metric(
                metrics,
                "perapera_entries_failed_total",
                "reason=\"rerouted_max_topics\"",
            );
            assert!(bound.unwrap_or(0.0) > 0.0, "{bound:?}");
        } else {
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                match http_get(metrics, "/health") {
                    Some((503, body)) if body.contains("max_topics") => break,
                    other => assert!(Instant::now() < end, "/health: {other:?}"),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let start = Instant::now();
        agent.signal(libc::SIGTERM);
        let mut agent = agent;
        let status = agent.wait_exit(Duration::from_secs(15));
        assert!(
            status.is_some() && start.elapsed() < Duration::from_secs(8),
            "fallback {fallback}: SIGTERM took {:?} (shutdown_timeout 5s)\n{}",
            start.elapsed(),
            agent.stderr()
        );
    }
}
