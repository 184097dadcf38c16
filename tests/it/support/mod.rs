//! Test helpers: real journal files (systemd-journal-remote), the perapera binary as a child
//! process, an independent Kafka consumer, and Apache Kafka brokers (`kafka.rs`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub mod certs;
pub mod kafka;
pub mod tracers;
pub use certs::*;
pub use kafka::*;
pub use tracers::*;

pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// One journal entry for the export format: (field, raw bytes), in order.
pub type Entry = Vec<(String, Vec<u8>)>;

/// A simple entry: SEQ=n, MESSAGE, a unit, and the given realtime timestamp.
pub fn entry(seq: u64, realtime_us: u64) -> Entry {
    vec![
        (
            "__REALTIME_TIMESTAMP".into(),
            realtime_us.to_string().into_bytes(),
        ),
        (
            "__MONOTONIC_TIMESTAMP".into(),
            (1000 + seq).to_string().into_bytes(),
        ),
        (
            "_BOOT_ID".into(),
            b"0123456789abcdef0123456789abcdef".to_vec(),
        ),
        ("_HOSTNAME".into(), b"testhost".to_vec()),
        ("_SYSTEMD_UNIT".into(), b"app.service".to_vec()),
        ("SEQ".into(), seq.to_string().into_bytes()),
        (
            "MESSAGE".into(),
            format!("message number {seq}").into_bytes(),
        ),
    ]
}

/// `n` simple entries numbered from `first`, one millisecond apart.
pub fn entries(first: u64, n: u64) -> Vec<Entry> {
    (first..first + n)
        .map(|i| entry(i, 1_700_000_000_000_000 + i * 1000))
        .collect()
}

/// Journal export format (systemd docs/JOURNAL_EXPORT_FORMATS.md): text fields as
/// `NAME=value\n`, anything else as `NAME\n<u64 LE length><bytes>\n`.
pub fn export(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        for (name, value) in e {
            let text = std::str::from_utf8(value)
                .map(|s| s.chars().all(|c| c == '\t' || (c >= ' ' && c != '\u{7f}')))
                .unwrap_or(false);
            out.extend_from_slice(name.as_bytes());
            if text {
                out.push(b'=');
                out.extend_from_slice(value);
            } else {
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// Appends entries to `dir/test.journal` with systemd-journal-remote (a real journal file).
pub fn write_journal(dir: &Path, entries: &[Entry]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", dir.join("test.journal").display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{JOURNAL_REMOTE}: {e} (install systemd-journal-remote)"));
    let data = export(entries);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    writer.join().unwrap().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "journal-remote failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cursors of every entry in the journal directory, in order (via journalctl).
pub fn journal_cursors(dir: &Path) -> Vec<String> {
    let out = Command::new("journalctl")
        .args(["-D"])
        .arg(dir)
        .args(["-o", "json", "--output-fields=__CURSOR", "--no-pager"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["__CURSOR"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The repository (for scripts and packaging files the tests use).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to completion; panics naming it, with its output, unless it succeeded.
pub fn output_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (./test.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The perapera binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_perapera")
}

/// A perapera child process; killed on drop.
pub struct Agent {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
    pub stdout_lines: Option<std::sync::mpsc::Receiver<String>>,
}

impl Agent {
    /// `perapera run -c config`, stdout captured line by line.
    pub fn start(config: &Path) -> Agent {
        Agent::start_with(&[], config)
    }

    /// The same, run through `prefix` (e.g. `setpriv` dropping capabilities).
    pub fn start_with(prefix: &[&str], config: &Path) -> Agent {
        let mut command = match prefix {
            [] => Command::new(bin()),
            [first, rest @ ..] => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
        };
        let mut child = command
            .args(["run", "-c"])
            .arg(config)
            .env("PERAPERA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let out_pipe = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent {
            child,
            stderr,
            stdout_lines: Some(rx),
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for exit; None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the stderr reader drain.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self
            .wait_exit(Duration::from_secs(30))
            .expect("perapera did not exit after SIGTERM");
        let log = self.stderr();
        assert!(status.success(), "exit {status:?}\n{log}");
        log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `perapera ARGS` to completion.
pub fn perapera(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().unwrap()
}

/// The files checkpoint of `source`: (path, offset) per file.
pub fn saved_files(state: &Path, source: &str) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(state.join("checkpoint.json")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["sources"][source]["files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .map(|f| {
                    (
                        f["path"].as_str().unwrap().to_string(),
                        f["offset"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A field of `/proc/PID/status` (`"VmRSS:"`, `"THP_enabled:"`, ...), its value trimmed
/// and without a ` kB` unit.
pub fn proc_status(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
}

/// Resident set size of a process, in KiB.
/// The exit log's `Totals:` line for `source` (counters as `name=value`), or "".
pub fn totals<'a>(log: &'a str, source: &str) -> &'a str {
    let needle = format!("Totals: source={source}");
    log.lines().find(|l| l.contains(&needle)).unwrap_or("")
}

/// xorshift64*: reproducible from the printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [lo, hi) milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// One thread of a process, from `/proc/PID/task/TID`.
#[derive(Debug, Clone)]
pub struct ThreadUse {
    pub name: String,
    /// CPU time (user + system), in clock ticks.
    pub ticks: u64,
    /// Context switches (voluntary + involuntary): how often it was woken, near enough.
    pub switches: u64,
}

/// Every thread of `pid`, by thread id.
pub fn threads(pid: u32) -> HashMap<u32, ThreadUse> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = entry.path();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(
            tid,
            ThreadUse {
                name: name.trim().to_string(),
                ticks: fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0),
                switches,
            },
        );
    }
    out
}

/// Per thread (matched by id): what `after` used more than `before`, busiest first.
pub fn thread_use_since(
    before: &HashMap<u32, ThreadUse>,
    after: &HashMap<u32, ThreadUse>,
) -> Vec<ThreadUse> {
    let mut used: Vec<ThreadUse> = after
        .iter()
        .map(|(tid, a)| {
            let b = before.get(tid);
            ThreadUse {
                name: a.name.clone(),
                ticks: a.ticks - b.map_or(0, |b| b.ticks.min(a.ticks)),
                switches: a.switches - b.map_or(0, |b| b.switches.min(a.switches)),
            }
        })
        .collect();
    used.sort_by_key(|t| std::cmp::Reverse((t.ticks, t.switches)));
    used
}

/// A counter or gauge's value in a `/metrics` text (the first series whose line starts so).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// User plus system CPU time of process `pid` so far, in seconds (/proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15: indexes 11 and 12 after the state.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// `GET path` on 127.0.0.1:port: (status, body); `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads the cursor saved for `source` from the state directory.
pub fn saved_cursor(state: &Path, source: &str) -> Option<String> {
    let text = std::fs::read_to_string(state.join("checkpoint.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["sources"][source]["cursor"].as_str().map(str::to_string)
}

/// Writes a config file and returns its path.
/// A config with one files source over `DIR/logs/*.log` shipping to Kafka: the state in
/// `DIR/state`, `/metrics` on 127.0.0.1:`port`; `metrics`, `source` and `librdkafka` are
/// extra lines for the `[metrics]` table, the source and `[sink.librdkafka]`.
#[derive(Default)]
pub struct FilesToKafka<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub port: u16,
    pub metrics: &'a str,
    pub source: &'a str,
    pub librdkafka: &'a str,
}

impl FilesToKafka<'_> {
    /// Writes it as `DIR/perapera.toml` (making `DIR/logs`).
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let librdkafka = if self.librdkafka.is_empty() {
            String::new()
        } else {
            format!("[sink.librdkafka]\n{}", self.librdkafka)
        };
        config_file(
            dir,
            &format!(
                "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"127.0.0.1:{}\"\n{}\
                 [[source]]\ntype = \"files\"\ninclude = [\"{}/*.log\"]\n{}\
                 [sink]\ntype = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"{}\"\n{librdkafka}",
                dir.join("state").display(),
                self.port,
                self.metrics,
                dir.join("logs").display(),
                self.source,
                self.brokers,
                self.topic,
            ),
        )
    }
}

/// Appends `bytes` to `path`, creating it.
pub fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

pub fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("perapera.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A message read back from Kafka.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, Vec<u8>>,
}

impl Consumed {
    /// The payload as a msgpack map: field name → value.
    pub fn fields(&self) -> HashMap<String, rmpv::Value> {
        let v = rmpv::decode::read_value(&mut self.payload.as_slice()).expect("payload is msgpack");
        let rmpv::Value::Map(entries) = v else {
            panic!("payload is not a map: {v:?}")
        };
        entries
            .into_iter()
            .map(|(k, v)| (k.as_str().expect("keys are str").to_string(), v))
            .collect()
    }

    /// The `message` field's bytes (msgpack str or bin).
    pub fn message(&self) -> Vec<u8> {
        match &self.fields()["message"] {
            rmpv::Value::String(s) => s.as_bytes().to_vec(),
            rmpv::Value::Binary(b) => b.clone(),
            other => panic!("message is {other:?}"),
        }
    }

    pub fn seq(&self) -> u64 {
        self.fields()["SEQ"].as_str().unwrap().parse().unwrap()
    }
}

/// An independent consumer: reads every partition of `topic` from the beginning.
pub struct Reader {
    consumer: BaseConsumer,
    pub messages: Vec<Consumed>,
}

impl Reader {
    pub fn new(bootstrap: &str, topic: &str) -> Reader {
        Reader::topics(bootstrap, &[topic])
    }

    /// Reads every partition of each topic from the beginning.
    pub fn topics(bootstrap: &str, topics: &[&str]) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "perapera-test-reader")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("log_level", "3")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let end = Instant::now() + Duration::from_secs(60);
            let partitions = loop {
                match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                    Ok(md) => {
                        let n = md.topics().first().map_or(0, |t| t.partitions().len());
                        if n > 0 {
                            break n;
                        }
                    }
                    Err(e) if Instant::now() > end => panic!("metadata for {topic}: {e}"),
                    Err(_) => {}
                }
                assert!(Instant::now() < end, "topic {topic} never appeared");
                std::thread::sleep(Duration::from_millis(200));
            };
            for p in 0..partitions as i32 {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&tpl).unwrap();
        Reader {
            consumer,
            messages: Vec::new(),
        }
    }

    /// Polls for up to `timeout` or until `pred(messages)` holds.
    pub fn read_until(&mut self, timeout: Duration, pred: impl Fn(&[Consumed]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if pred(&self.messages) {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let mut headers = HashMap::new();
                    if let Some(h) = m.headers() {
                        for hd in h.iter() {
                            headers
                                .insert(hd.key.to_string(), hd.value.unwrap_or_default().to_vec());
                        }
                    }
                    self.messages.push(Consumed {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
                Some(Err(e)) => eprintln!("consumer: {e}"),
                None => {}
            }
        }
    }

    /// Reads until `n` messages or `timeout`.
    pub fn read_n(&mut self, n: usize, timeout: Duration) -> usize {
        self.read_until(timeout, |m| m.len() >= n);
        self.messages.len()
    }

    /// Keeps reading for `quiet` after the last message to catch stragglers.
    pub fn drain(&mut self, quiet: Duration) {
        let mut last = self.messages.len();
        loop {
            self.read_until(quiet, |m| m.len() > last);
            if self.messages.len() == last {
                return;
            }
            last = self.messages.len();
        }
    }
}

/// Counts of SEQ values: (distinct, duplicates).
pub fn seq_counts(messages: &[Consumed]) -> (HashMap<u64, usize>, usize) {
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for m in messages {
        *counts.entry(m.seq()).or_default() += 1;
    }
    let dups = counts.values().map(|c| c - 1).sum();
    (counts, dups)
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16, timeout: Duration, what: &str) {
    let end = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mock broker taken down while its port is held: bound but not listening, so connections
/// to it are refused as to a dead broker, and no connection made meanwhile (by any process
/// on this host) can get that port as its ephemeral source port. That collision made
/// `broker_up` fail to listen again, and librdkafka's mock then aborts the whole test
/// process on an assertion ("Failed to create mock broker listener"). Bring the broker
/// back with [`BrokerDown::up`].
pub struct BrokerDown<'m, C: rdkafka::ClientContext + 'static> {
    mock: &'m rdkafka::mocking::MockCluster<'static, C>,
    broker: i32,
    fd: i32,
}

impl<'m, C: rdkafka::ClientContext + 'static> BrokerDown<'m, C> {
    /// Takes down broker `broker` of a single-broker mock cluster and holds its port.
    pub fn new(mock: &'m rdkafka::mocking::MockCluster<'static, C>, broker: i32) -> Self {
        let bootstrap = mock.bootstrap_servers();
        let port: u16 = bootstrap
            .split(',')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("mock bootstrap address");
        mock.broker_down(broker).unwrap();
        let fd = hold_port(port);
        if fd < 0 {
            eprintln!(
                "mock broker port {port} could not be held: {}",
                std::io::Error::last_os_error()
            );
        }
        BrokerDown { mock, broker, fd }
    }

    /// Releases the port and lets the broker listen on it again.
    pub fn up(self) {
        // Drop releases the port; then the broker comes back.
        let mock = self.mock;
        let broker = self.broker;
        drop(self);
        mock.broker_up(broker).unwrap();
    }
}

impl<C: rdkafka::ClientContext + 'static> Drop for BrokerDown<'_, C> {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: our own socket, closed once.
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
    }
}

/// Binds 127.0.0.1:`port` without listening; -1 if that fails (someone has it already).
fn hold_port(port: u16) -> i32 {
    // SAFETY: plain socket calls on a socket we own; the address struct is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return -1;
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::bind(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if r != 0 {
            libc::close(fd);
            return -1;
        }
        fd
    }
}
