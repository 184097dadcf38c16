//! The Fluentd Forward protocol, both sides, against independent peers: Python
//! `fluent-logger` and Node `@fluent-org/logger` sending to perapera's forward source (into
//! Apache Kafka), perapera's forward sink sending to its own source and to a misbehaving
//! receiver written from the spec in Python, the shared-key handshake over TLS with a CA
//! made in the test, and hostile bytes on the listener.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::*;

fn wait_listening(port: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A forward source on `port` in front of `sink`, plus extra source keys.
fn forward_config(dir: &Path, port: u16, source_extra: &str, sink: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    config_file(
        dir,
        &format!(
            "[state]\ndirectory = \"{}\"\n[[source]]\ntype = \"forward\"\nname = \"fwd\"\n\
             listen = \"127.0.0.1:{port}\"\n{source_extra}\n[sink]\n{sink}\n",
            dir.join("state").display()
        ),
    )
}

/// Every stdout line of a stdout-sink agent received so far, parsed.
fn stdout_records(agent: &Agent, into: &mut Vec<serde_json::Value>, wait: Duration) {
    let rx = agent.stdout_lines.as_ref().unwrap();
    let end = Instant::now() + wait;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => into.push(serde_json::from_str(&line).unwrap()),
            Err(_) if Instant::now() >= end => return,
            Err(_) => {}
        }
    }
}

fn collect_until(agent: &Agent, into: &mut Vec<serde_json::Value>, n: usize, timeout: Duration) {
    let end = Instant::now() + timeout;
    while into.len() < n && Instant::now() < end {
        stdout_records(agent, into, Duration::from_millis(200));
    }
}

#[test]
fn python_and_node_senders_into_apache_kafka_acks_only_after_kafka_acknowledged() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kafka_port = free_port();
    // The broker is down when the agent starts and when the Node sender sends.
    let config = forward_config(
        dir.path(),
        port,
        "",
        &format!(
            "type = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka_port}\"]\ntopic = \"forwarded\"\n\
             [sink.librdkafka]\n\"message.timeout.ms\" = 300000\n"
        ),
    );
    let agent = Agent::start(&config);
    wait_listening(port);
    let mut node = Command::new("node")
        .arg(repo().join("tests/node/send.js"))
        .args([&port.to_string(), &N.to_string(), "node"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node (tests/node: ./test.sh installs @fluent-org/logger)");
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        node.try_wait().unwrap().is_none(),
        "the Node sender finished while the broker was down: acks preceded Kafka"
    );
    let broker_up = now_ms();
    let kafka = Kafka::single_on(kafka_port);
    kafka.create_topic("forwarded", 2);
    let out = node.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut first_ack = None;
    let mut result = None;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v.get("first_ack_ms").and_then(|t| t.as_u64()) {
            first_ack = Some(u128::from(t));
        } else {
            result = Some(v);
        }
    }
    let result = result.unwrap_or_else(|| panic!("node printed no result: {text}"));
    assert_eq!(result["ok"], N, "{result}\n{}", agent.stderr());
    let first_ack = first_ack.unwrap();
    assert!(
        first_ack >= broker_up,
        "an ack arrived {} ms before the broker was started",
        broker_up - first_ack
    );

    // Python fluent-logger (no ack support in that client) with the broker up.
    let py = Command::new("python3")
        .arg(repo().join("tests/py/fluent_send.py"))
        .args([&port.to_string(), &N.to_string(), "python"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&py.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&py.stderr)));
    assert_eq!(report["errors"], 0, "{report}");

    let mut reader = Reader::new(&kafka.bootstrap, "forwarded");
    reader.read_n(2 * N, Duration::from_secs(120));
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    for m in &reader.messages {
        let f = m.fields();
        let src = f["src"].as_str().unwrap().to_string();
        let n = f["n"].as_u64().unwrap();
        *seen.entry((src.clone(), n)).or_default() += 1;
        let tag = f["tag"].as_str().unwrap();
        assert_eq!(tag, format!("{src}.ev"));
        if src == "python" {
            // Nested values pass through as MessagePack.
            let nested = f["nested"].as_map().unwrap();
            assert_eq!(nested[0].0.as_str(), Some("list"));
            assert_eq!(nested[0].1.as_array().unwrap().len(), 4);
        }
    }
    for src in ["node", "python"] {
        let missing = (0..N as u64)
            .filter(|n| !seen.contains_key(&(src.to_string(), *n)))
            .count();
        assert_eq!(missing, 0, "{src}: {missing} events missing");
    }
    agent.stop();
}

/// `lines` numbered lines in a log file read by a files source that forwards to `sink`.
fn file_forwarder(dir: &Path, lines: usize, sink: &str) -> (PathBuf, PathBuf, u64) {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut text = String::new();
    for i in 0..lines {
        text.push_str(&format!("line {i:06} {}\n", "x".repeat(60)));
    }
    std::fs::write(logs.join("app.log"), &text).unwrap();
    let config = config_file(
        dir,
        &format!(
            "[state]\ndirectory = \"{}\"\n[pipeline]\nshutdown_timeout = \"2s\"\n\
             [[source]]\ntype = \"files\"\ninclude = [\"{}/*.log\"]\n[sink]\n{sink}\n",
            dir.join("state").display(),
            logs.display()
        ),
    );
    (config, dir.join("state"), text.len() as u64)
}

fn wait_offset(state: &Path, source: &str, offset: u64, agent: &Agent, timeout: Duration) {
    let end = Instant::now() + timeout;
    loop {
        let saved = saved_files(state, source);
        if saved.iter().any(|(_, o)| *o == offset) {
            return;
        }
        assert!(
            Instant::now() < end,
            "offset {offset} not acknowledged: {saved:?}\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn forward_sink_to_own_source_and_to_a_misbehaving_receiver_loses_nothing() {
    const LINES: usize = 20_000;
    // 1. perapera → perapera.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let receiver = forward_config(&dir.path().join("recv"), port, "", "type = \"stdout\"");
    let receiver = Agent::start(&receiver);
    wait_listening(port);
    let (config, state, size) = file_forwarder(
        &dir.path().join("send"),
        LINES,
        &format!(
            "type = \"forward\"\nservers = [\"127.0.0.1:{port}\"]\ntag = \"files.{{host}}\"\n\
             compress = \"gzip\"\nmax_chunk_entries = 500\n"
        ),
    );
    let sender = Agent::start(&config);
    wait_offset(&state, "files", size, &sender, Duration::from_secs(60));
    let mut got = Vec::new();
    collect_until(&receiver, &mut got, LINES, Duration::from_secs(30));
    let messages: std::collections::HashSet<&str> =
        got.iter().map(|r| r["message"].as_str().unwrap()).collect();
    assert_eq!(messages.len(), LINES);
    assert_eq!(got.len(), LINES, "no duplicates without faults");
    assert!(got[0]["tag"].as_str().unwrap().starts_with("files."));
    sender.stop();
    receiver.stop();

    // 2. perapera → a receiver from the spec that drops connections, delays and withholds
    //    acks. Failover: the first server is dead.
    const FLAKY_LINES: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dead = free_port();
    let out = dir.path().join("received.jsonl");
    let mut flaky = Command::new("python3")
        .arg(repo().join("tests/py/flaky_receiver.py"))
        .args([&port.to_string(), out.to_str().unwrap(), "2.5"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(port);
    let (config, state, size) = file_forwarder(
        dir.path(),
        FLAKY_LINES,
        &format!(
            "type = \"forward\"\nservers = [\"127.0.0.1:{dead}\", \"127.0.0.1:{port}\"]\n\
             ack_timeout = \"1s\"\nmax_chunk_entries = 100\nmax_pending_chunks = 4\n"
        ),
    );
    let sender = Agent::start(&config);
    wait_offset(&state, "files", size, &sender, Duration::from_secs(120));
    let log = sender.stop();
    unsafe { libc::kill(flaky.id() as i32, libc::SIGTERM) };
    flaky.wait().unwrap();
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}.stats", out.display())).unwrap())
            .unwrap();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *counts
            .entry(v["message"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let lost = (0..FLAKY_LINES)
        .filter(|i| {
            !counts
                .keys()
                .any(|m| m.starts_with(&format!("line {i:06} ")))
        })
        .count();
    assert_eq!(lost, 0, "{stats}");
    let received: usize = counts.values().sum();
    let misbehaved = stats["misbehaved"].as_u64().unwrap() as usize;
    assert!(
        misbehaved > 10,
        "the receiver misbehaved {misbehaved} times"
    );
    // Each failed request costs at most the chunks then on the connection again.
    let bound = misbehaved * 4 * 100;
    let duplicates = received - FLAKY_LINES;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates > {bound} ({misbehaved} failed requests)"
    );
    assert!(log.contains("failed over"), "{log}");
    eprintln!(
        "misbehaving receiver: {FLAKY_LINES} lines, {received} received, {duplicates} duplicates, \
         {misbehaved} failed requests of {}",
        stats["requests"]
    );
}

#[test]
fn shared_key_handshake_over_tls_with_a_ca_made_here() {
    const LINES: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let Certs { ca, cert, key } = make_ca(dir.path(), "", &["localhost"]);
    let port = free_port();
    let receiver = forward_config(
        &dir.path().join("recv"),
        port,
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\nshared_key = \"s3cret\"\n\
             self_hostname = \"aggregator\"\n",
            cert.display(),
            key.display()
        ),
        "type = \"stdout\"",
    );
    let receiver = Agent::start(&receiver);
    wait_listening(port);
    let sink = |key: &str| {
        format!(
            "type = \"forward\"\nservers = [\"localhost:{port}\"]\nshared_key = \"{key}\"\n\
             self_hostname = \"shipper\"\ntls = {{ ca = \"{}\" }}\n",
            ca.display()
        )
    };
    let (config, state, size) = file_forwarder(&dir.path().join("good"), LINES, &sink("s3cret"));
    let good = Agent::start(&config);
    wait_offset(&state, "files", size, &good, Duration::from_secs(60));
    good.stop();
    let mut got = Vec::new();
    collect_until(&receiver, &mut got, LINES, Duration::from_secs(20));
    assert_eq!(got.len(), LINES);

    // A wrong key: a clear error on both sides, nothing delivered, nothing acknowledged.
    let (config, state, _) = file_forwarder(&dir.path().join("bad"), 10, &sink("wrong"));
    let bad = Agent::start(&config);
    assert!(
        bad.wait_log(
            "rejected authentication: shared_key mismatch",
            Duration::from_secs(20)
        ),
        "{}",
        bad.stderr()
    );
    assert!(
        receiver.wait_log("shared_key mismatch", Duration::from_secs(5)),
        "{}",
        receiver.stderr()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(saved_files(&state, "files").iter().all(|(_, o)| *o == 0));
    bad.stop();
    let mut more = Vec::new();
    stdout_records(&receiver, &mut more, Duration::from_millis(500));
    assert!(more.is_empty(), "{more:?}");

    // Plain TCP to the TLS listener: refused with a TLS error, counted.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.write_all(&valid_request("plain", 1, true).0).unwrap();
    assert!(closed_by_server(&mut plain));
    // The refusal is counted just after the socket closes: wait for it before stopping.
    assert!(
        receiver.wait_log("TLS handshake failed", Duration::from_secs(10)),
        "{}",
        receiver.stderr()
    );
    let log = receiver.stop();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains("rejected_authentication="), "{log}");
    assert!(log.contains("rejected_tls=1"), "{log}");
}

/// A PackedForward request of `n` events (and its chunk id when `chunk`).
fn valid_request(tag: &str, n: usize, chunk: bool) -> (Vec<u8>, Option<String>) {
    use perapera::forward::{Chunk, Entry, Mode, Options, Request, Time};
    use perapera::record::Value;
    let id = chunk.then(|| format!("chunk-{tag}-{n}"));
    let req = Request {
        tag: tag.into(),
        mode: Mode::PackedForward,
        entries: (0..n)
            .map(|i| Entry {
                time: Time::Event {
                    sec: 1_700_000_000,
                    nsec: i as u32,
                },
                metadata: None,
                record: vec![("message".into(), Value::Str(format!("{tag} {i}")))],
            })
            .collect(),
        options: Options {
            size: Some(n as u64),
            chunk: id.as_deref().map(Chunk::text),
            compressed: None,
            fluent_signal: None,
            metadata: None,
        },
    };
    (req.encode(), id)
}

/// Reads until the server closes (true) or 10 s pass (false).
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Sends a valid request with a chunk and waits for its ack.
fn acked(port: u16, tag: &str, n: usize) -> bool {
    let (bytes, id) = valid_request(tag, n, true);
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&bytes).unwrap();
    let mut buf = vec![0u8; 256];
    let Ok(got) = s.read(&mut buf) else {
        return false;
    };
    let ack = perapera::forward::decode_ack(&buf[..got]).ok().flatten();
    ack.as_deref() == id.as_deref().map(str::as_bytes)
}

#[test]
fn bad_input_on_the_listener_closes_that_connection_only() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = forward_config(
        dir.path(),
        port,
        "max_request_bytes = \"1MiB\"\nmax_connections = 100\nidle_timeout = \"3s\"\n",
        "type = \"stdout\"",
    );
    let agent = Agent::start(&config);
    wait_listening(port);
    fn str_tag(b: &mut Vec<u8>, t: &str) {
        rmp::encode::write_str(b, t).unwrap();
    }
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("0xc1", vec![0x93, 0xc1]),
        ("tag not a string", vec![0x93, 0x01, 0x90, 0x80]),
        ("record not a map", {
            let mut b = vec![0x93];
            str_tag(&mut b, "t");
            b.extend_from_slice(&[0x01, 0x90]);
            b
        }),
        ("time a string", {
            let mut b = vec![0x92];
            str_tag(&mut b, "t");
            b.extend_from_slice(&[0x91, 0x92, 0xa1, b'x', 0x80]);
            b
        }),
        ("entries a map", {
            let mut b = vec![0x92];
            str_tag(&mut b, "t");
            b.push(0x80);
            b
        }),
        ("option not a map", {
            let mut b = vec![0x93];
            str_tag(&mut b, "t");
            b.extend_from_slice(&[0x90, 0x05]);
            b
        }),
        ("100 MB declared", {
            let mut b = vec![0x93];
            str_tag(&mut b, "t");
            b.extend_from_slice(&[0xc6, 0x05, 0xf5, 0xe1, 0x00, 1, 2, 3]);
            b
        }),
        ("unknown compression", {
            let mut b = vec![0x93];
            str_tag(&mut b, "t");
            rmp::encode::write_bin(&mut b, &[0x04, 0x22, 0x4d, 0x18]).unwrap();
            rmp::encode::write_map_len(&mut b, 1).unwrap();
            str_tag(&mut b, "compressed");
            str_tag(&mut b, "lz4");
            b
        }),
        ("corrupt gzip", {
            let mut b = vec![0x93];
            str_tag(&mut b, "t");
            rmp::encode::write_bin(&mut b, &[0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
            rmp::encode::write_map_len(&mut b, 1).unwrap();
            str_tag(&mut b, "compressed");
            str_tag(&mut b, "gzip");
            b
        }),
        ("invalid JSON", b"[\"t\", 1, {\"a\": }]".to_vec()),
    ];
    // A truncated frame: half a valid request, then silence (closed at idle_timeout).
    let (full, _) = valid_request("trunc", 10, true);
    cases.push(("truncated", full[..full.len() / 2].to_vec()));
    for (what, bytes) in &cases {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // A valid request first on the same connection: acknowledged, then the bad bytes.
        let (good, id) = valid_request(&format!("before-{}", what.replace(' ', "-")), 3, true);
        s.write_all(&good).unwrap();
        let mut buf = vec![0u8; 256];
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert_eq!(
            perapera::forward::decode_ack(&buf[..n]).unwrap().as_deref(),
            id.as_deref().map(str::as_bytes),
            "{what}"
        );
        s.write_all(bytes).unwrap();
        assert!(closed_by_server(&mut s), "{what}: connection not closed");
        assert!(
            acked(port, &format!("after-{}", what.replace(' ', "-")), 2),
            "{what}"
        );
    }

    // 1000 idle connections against max_connections = 100: the idle ones make room, a
    // client with data is served throughout.
    let mut idle = Vec::new();
    for i in 0..1000 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
        if i % 250 == 0 {
            assert!(acked(port, &format!("during-{i}"), 5));
        }
    }
    assert!(acked(port, "after-idle", 5));
    // The survivors are closed at idle_timeout.
    std::thread::sleep(Duration::from_secs(4));
    let closed = idle.iter_mut().map(closed_by_server).filter(|c| *c).count();
    assert_eq!(closed, 1000);

    // Everything acknowledged was delivered.
    let mut got = Vec::new();
    stdout_records(&agent, &mut got, Duration::from_secs(1));
    let log = agent.stop();
    let messages: std::collections::HashSet<&str> =
        got.iter().map(|r| r["message"].as_str().unwrap()).collect();
    for (what, _) in &cases {
        let w = what.replace(' ', "-");
        for m in [format!("before-{w} 2"), format!("after-{w} 1")] {
            assert!(messages.contains(m.as_str()), "{m} missing");
        }
    }
    // Counted, and logged rate-limited (one line per cause per 10 s).
    let totals = log
        .lines()
        .find(|l| l.contains("Totals: source=fwd"))
        .unwrap();
    let count = |k: &str| -> u64 {
        totals
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .map_or(0, |v| v.parse().unwrap())
    };
    assert!(count("rejected_bad_request") >= 9, "{totals}");
    assert_eq!(count("rejected_too_large"), 1, "{totals}");
    assert!(count("closed_for_new_connection") >= 890, "{totals}");
    assert!(count("closed_idle") >= 1, "{totals}");
    let evict_lines = log.matches("closed the longest-idle connection").count();
    assert!(evict_lines <= 2, "{evict_lines} log lines for evictions");
    assert_eq!(
        log.matches("not a valid forward request").count(),
        1,
        "{log}"
    );
    for needle in [
        "closed the connection: not a valid forward request: a request must be an array (or nil), got an integer",
        "exceeds the limit of 1048576 bytes (max_request_bytes)",
        "closed a connection silent for 3s (idle_timeout)",
    ] {
        assert!(log.contains(needle), "{needle}: {log}");
    }
}

/// What fluent-bit 5.1.1 `out_forward` sends by default with `Require_ack_response true`
/// (captured from the real binary: forward.c `flush_forward_mode`, forward_format.c
/// `append_options`), with the per-event metadata of the second entry made non-empty, as a
/// filter that sets metadata leaves it.
fn fluent_bit_default_request(tag: &str, n: usize, chunk: &str) -> Vec<u8> {
    let mut b = vec![0x93];
    rmp::encode::write_str(&mut b, tag).unwrap();
    rmp::encode::write_array_len(&mut b, n as u32).unwrap();
    for i in 0..n {
        b.extend_from_slice(&[0x92, 0x92, 0xd7, 0x00]);
        b.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        b.extend_from_slice(&(i as u32).to_be_bytes());
        if i % 2 == 1 {
            // metadata {"otlp": {"severity": "info"}} in map32 headers, like in_tail's.
            b.extend_from_slice(&[0xdf, 0, 0, 0, 1]);
            rmp::encode::write_str(&mut b, "otlp").unwrap();
            b.extend_from_slice(&[0xdf, 0, 0, 0, 1]);
            rmp::encode::write_str(&mut b, "severity").unwrap();
            rmp::encode::write_str(&mut b, "info").unwrap();
        } else {
            b.extend_from_slice(&[0xdf, 0, 0, 0, 0]);
        }
        b.extend_from_slice(&[0xdf, 0, 0, 0, 1]);
        rmp::encode::write_str(&mut b, "log").unwrap();
        rmp::encode::write_str(&mut b, &format!("{tag} line {i}")).unwrap();
    }
    // Options: map32 {chunk, size, fluent_signal: 0}.
    b.extend_from_slice(&[0xdf, 0, 0, 0, 3]);
    rmp::encode::write_str(&mut b, "chunk").unwrap();
    rmp::encode::write_str(&mut b, chunk).unwrap();
    rmp::encode::write_str(&mut b, "size").unwrap();
    rmp::encode::write_uint(&mut b, n as u64).unwrap();
    rmp::encode::write_str(&mut b, "fluent_signal").unwrap();
    rmp::encode::write_uint(&mut b, 0).unwrap();
    b
}

#[test]
fn fluent_bit_default_form_is_acked_only_after_kafka_and_keeps_its_metadata() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("logs", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = forward_config(
        dir.path(),
        port,
        "",
        &format!(
            "type = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"logs\"",
            mock.bootstrap_servers()
        ),
    );
    let down = BrokerDown::new(&mock, 1);
    let agent = Agent::start(&config);
    wait_listening(port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let token = "rlu+sHXCk0nB19CkD6sw7Q==";
    s.write_all(&fluent_bit_default_request("app.log", 100, token))
        .unwrap();
    // Fluent Bit waits for one response: none may come while Kafka has not acknowledged.
    s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("answered before Kafka acknowledged: {other:?}"),
    }
    down.up();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert_eq!(
        perapera::forward::decode_ack(&buf[..n]).unwrap().as_deref(),
        Some(token.as_bytes())
    );
    let mut reader = Reader::new(&mock.bootstrap_servers(), "logs");
    assert_eq!(reader.read_n(100, Duration::from_secs(30)), 100);
    for m in &reader.messages {
        let f = m.fields();
        let log = f["log"].as_str().unwrap().to_string();
        let i: usize = log.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(f["tag"].as_str(), Some("app.log"));
        match f.get("fluent_metadata") {
            Some(meta) if i % 2 == 1 => assert_eq!(
                meta,
                &rmpv::Value::Map(vec![(
                    "otlp".into(),
                    rmpv::Value::Map(vec![("severity".into(), "info".into())])
                )]),
                "{log}"
            ),
            None if i.is_multiple_of(2) => {}
            other => panic!("{log}: metadata {other:?}"),
        }
    }
    // A metrics chunk (fluent_signal 1) is refused, counted, and the connection closed.
    let mut metrics = vec![0x93];
    rmp::encode::write_str(&mut metrics, "app.metrics").unwrap();
    rmp::encode::write_bin(
        &mut metrics,
        &[0x82, 0xa4, b'm', b'e', b't', b'a', 0x80, 0xa1, b'x', 0x90],
    )
    .unwrap();
    metrics.extend_from_slice(&[0xdf, 0, 0, 0, 2]);
    rmp::encode::write_str(&mut metrics, "chunk").unwrap();
    rmp::encode::write_str(&mut metrics, "m1").unwrap();
    rmp::encode::write_str(&mut metrics, "fluent_signal").unwrap();
    rmp::encode::write_uint(&mut metrics, 1).unwrap();
    let mut m = TcpStream::connect(("127.0.0.1", port)).unwrap();
    m.write_all(&metrics).unwrap();
    assert!(closed_by_server(&mut m), "a metrics chunk was not refused");
    // The listener counts a refusal, then logs it, after the socket closed: wait for the log
    // line, or a loaded machine can print the totals on stop before the count.
    agent.wait_log(
        "fluent_signal 1 (metrics) is not a log stream",
        Duration::from_secs(30),
    );
    let log = agent.stop();
    assert!(
        log.contains("fluent_signal 1 (metrics) is not a log stream"),
        "{log}"
    );
    let totals = totals(&log, "fwd");
    assert!(totals.contains("rejected_signal=1"), "{totals}");
}
