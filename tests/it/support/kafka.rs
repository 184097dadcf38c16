//! Apache Kafka itself for the tests: KRaft brokers (each node broker and controller) started
//! from the jars `scripts/deps.sh --test` collects into `target/kafka/libs` with
//! `tests/kafka/pom.xml`, on free 127.0.0.1 ports, one node or three (replication factor 3,
//! `min.insync.replicas=2`). Every JVM is killed when the [`Kafka`] is dropped, a panicking
//! test included, and (`PR_SET_PDEATHSIG`) when the thread that started it dies, so none
//! survives a test runner killed outright: start and restart nodes from the test's thread.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::{free_port, repo};

/// Where the Kafka jars are (`PERAPERA_KAFKA_LIBS` overrides).
pub fn kafka_libs() -> PathBuf {
    std::env::var_os("PERAPERA_KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/kafka/libs"))
}

/// A Java command with the Kafka classpath and the logging configuration in `dir`.
pub fn kafka_java(dir: &Path, tool: bool) -> Command {
    let libs = kafka_libs();
    assert!(
        libs.join(".complete").exists(),
        "no Kafka jars in {}: run scripts/deps.sh --test (it collects them with Maven)",
        libs.display()
    );
    write_log_configs(dir);
    let mut c = Command::new("java");
    if tool {
        c.arg("-Xmx256m").arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("tools-log4j2.yaml").display()
        ));
    } else {
        c.args([
            "-Xms256m",
            "-Xmx256m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
        ])
        .arg(format!("-Dkafka.logs.dir={}", dir.display()))
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.yaml").display()
        ));
    }
    c.arg("-cp").arg(format!("{}/*", libs.display()));
    // SAFETY: prctl in the child between fork and exec: async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    c
}

fn write_log_configs(dir: &Path) {
    let server = "Configuration:\n  Appenders:\n    File:\n      name: KafkaFile\n      \
                  fileName: \"${sys:kafka.logs.dir}/server.log\"\n      PatternLayout:\n        \
                  pattern: \"[%d] %p %m (%c)%n\"\n  Loggers:\n    Root:\n      level: INFO\n      \
                  AppenderRef:\n        - ref: KafkaFile\n";
    let tools = "Configuration:\n  Appenders:\n    Console:\n      name: STDERR\n      \
                 target: SYSTEM_ERR\n      PatternLayout:\n        pattern: \"[%d] %p %m (%c)%n\"\n  \
                 Loggers:\n    Root:\n      level: WARN\n      AppenderRef:\n        - ref: STDERR\n";
    for (name, text) in [("log4j2.yaml", server), ("tools-log4j2.yaml", tools)] {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(path, text).unwrap();
        }
    }
}

/// A random KRaft cluster id: 16 bytes, base64url without padding (as `random-uuid` prints).
fn cluster_id() -> String {
    let hex = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    let bytes: Vec<u8> = hex
        .trim()
        .replace('-', "")
        .as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect();
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

struct Node {
    id: u32,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn started(&self) -> usize {
        self.log().matches("Kafka Server started").count()
    }
}

/// Apache Kafka brokers; every JVM is killed on drop.
pub struct Kafka {
    nodes: Vec<Node>,
    /// `host:port` of every node.
    pub bootstrap: String,
    _dir: tempfile::TempDir,
}

impl Kafka {
    /// One node.
    pub fn single() -> Kafka {
        Kafka::start(&[free_port()])
    }

    /// One node listening on `port`, chosen beforehand (an agent was pointed at it while it
    /// was down).
    pub fn single_on(port: u16) -> Kafka {
        Kafka::start(&[port])
    }

    /// Three nodes, each broker and controller: replication factor 3, `min.insync.replicas=2`.
    pub fn cluster() -> Kafka {
        Kafka::start(&[free_port(), free_port(), free_port()])
    }

    fn start(broker_ports: &[u16]) -> Kafka {
        let dir = tempfile::tempdir().unwrap();
        let n = broker_ports.len() as u32;
        let ports: Vec<(u16, u16)> = broker_ports.iter().map(|p| (*p, free_port())).collect();
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect();
        let replicas = n.min(3);
        let min_isr = if n >= 3 { 2 } else { 1 };
        let id = cluster_id();
        let mut nodes = Vec::new();
        let mut formats = Vec::new();
        for (i, (port, controller)) in ports.iter().enumerate() {
            let node_id = i as u32 + 1;
            let node_dir = dir.path().join(format!("n{node_id}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let props = format!(
                "process.roles=broker,controller\nnode.id={node_id}\n\
                 controller.quorum.voters={voters}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 inter.broker.listener.name=PLAINTEXT\ncontroller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                 log.dirs={data}\nnum.partitions=1\ndefault.replication.factor={replicas}\n\
                 min.insync.replicas={min_isr}\noffsets.topic.replication.factor={replicas}\n\
                 offsets.topic.num.partitions=1\n\
                 transaction.state.log.replication.factor={replicas}\n\
                 transaction.state.log.min.isr={min_isr}\ntransaction.state.log.num.partitions=1\n\
                 share.coordinator.state.topic.replication.factor={replicas}\n\
                 share.coordinator.state.topic.min.isr={min_isr}\n\
                 unclean.leader.election.enable=false\ngroup.initial.rebalance.delay.ms=0\n\
                 auto.create.topics.enable=false\nlog.cleaner.dedupe.buffer.size=33554432\n\
                 broker.session.timeout.ms=4000\nbroker.heartbeat.interval.ms=1000\n\
                 replica.lag.time.max.ms=10000\n",
                voters = voters.join(","),
                data = node_dir.join("data").display(),
            );
            std::fs::write(node_dir.join("server.properties"), props).unwrap();
            // A static quorum (controller.quorum.voters): formatted without a quorum flag.
            formats.push(
                kafka_java(&node_dir, true)
                    .args(["kafka.tools.StorageTool", "format", "-t", &id, "-c"])
                    .arg(node_dir.join("server.properties"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("java (Kafka's StorageTool): {e}")),
            );
            nodes.push(Node {
                id: node_id,
                port: *port,
                dir: node_dir,
                child: None,
            });
        }
        for f in formats {
            let out = f.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "kafka-storage format: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let bootstrap = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",");
        let mut kafka = Kafka {
            nodes,
            bootstrap,
            _dir: dir,
        };
        // All at once: each node waits for a controller majority before it is ready.
        for i in 0..kafka.nodes.len() {
            kafka.spawn(i);
        }
        for i in 0..kafka.nodes.len() {
            kafka.wait_started(i, 1);
        }
        kafka
    }

    fn index(&self, id: u32) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no Kafka node {id}"))
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("stdout.log"))
            .unwrap();
        let child = kafka_java(&node.dir, false)
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("java (Kafka): {e}"));
        node.child = Some(child);
    }

    /// Waits until node index `i` logged "Kafka Server started" `times` times in all.
    fn wait_started(&mut self, i: usize, times: usize) {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let node = &mut self.nodes[i];
            if node.started() >= times {
                return;
            }
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let out = std::fs::read_to_string(node.dir.join("stdout.log")).unwrap_or_default();
                panic!(
                    "Kafka node {} exited ({status}) before it was ready:\n{out}\n{}",
                    node.id,
                    tail(&node.log(), 40)
                );
            }
            assert!(
                Instant::now() < end,
                "Kafka node {} not ready in 90 s:\n{}",
                node.id,
                tail(&node.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node ids, 1-based.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The broker port of node `id`.
    pub fn port(&self, id: u32) -> u16 {
        self.nodes[self.index(id)].port
    }

    /// Sends `sig` to node `id` (SIGSTOP / SIGCONT to hang and resume it).
    pub fn signal(&self, id: u32, sig: i32) {
        if let Some(c) = &self.nodes[self.index(id)].child {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGKILLs node `id` (a crash) and reaps it.
    pub fn kill(&mut self, id: u32) {
        let i = self.index(id);
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs node `id` (a controlled shutdown) and waits for it to exit (SIGKILL after 60 s).
    pub fn terminate(&mut self, id: u32) {
        let i = self.index(id);
        if let Some(mut c) = self.nodes[i].child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(60);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > end {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts node `id` again (after [`Kafka::kill`] or [`Kafka::terminate`]) and waits until
    /// it is ready.
    pub fn restart(&mut self, id: u32) {
        let i = self.index(id);
        assert!(self.nodes[i].child.is_none(), "node {id} is running");
        let before = self.nodes[i].started();
        self.spawn(i);
        self.wait_started(i, before + 1);
    }

    /// Creates `name` with `partitions` partitions, replicated on every node (at most 3), and
    /// waits until every partition has a leader.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.create_topic_with(name, partitions, &[]);
    }

    /// [`Kafka::create_topic`] with topic configs (`("max.message.bytes", "2000")`).
    pub fn create_topic_with(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let replication = self.nodes.len().min(3) as i32;
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = runtime
            .block_on(admin.create_topics([&topic], &options))
            .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
        for r in results {
            if let Err((t, e)) = r {
                panic!("create topic {t}: {e}");
            }
        }
        let end = Instant::now() + Duration::from_secs(30);
        while self.leaders(name).len() != partitions as usize
            || self.leaders(name).iter().any(|l| *l < 0)
        {
            assert!(
                Instant::now() < end,
                "topic {name} has no leaders after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The leader of each partition of `topic` (-1: none), as the metadata says.
    pub fn leaders(&self, topic: &str) -> Vec<i32> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "0")
            .create()
            .unwrap();
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|md| {
                md.topics()
                    .first()
                    .map(|t| t.partitions().iter().map(|p| p.leader()).collect())
            })
            .unwrap_or_default()
    }

    /// A Kafka tool (`org.apache.kafka.tools.TopicCommand` ...) run to completion with `args`.
    pub fn tool(&self, class: &str, args: &[&str]) -> std::process::Output {
        kafka_java(self._dir.path(), true)
            .arg(class)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("java ({class}): {e}"))
    }
}

impl Kafka {
    /// Reads the first `n` messages of `topic` with Kafka's own Java console consumer
    /// (`read_committed`), keys, values and header values printed through `BytesDeserializer`
    /// (bytes outside printable ASCII, and the backslash, as `\xHH`), which is line-safe and
    /// reversible; header entries separated by 0x1F.
    pub fn console_consume(&self, topic: &str, n: usize) -> Vec<super::Consumed> {
        const BYTES: &str = "org.apache.kafka.common.serialization.BytesDeserializer";
        let properties = [
            "print.timestamp=true".to_string(),
            "print.partition=true".to_string(),
            "print.offset=true".to_string(),
            "print.headers=true".to_string(),
            "print.key=true".to_string(),
            format!("key.deserializer={BYTES}"),
            format!("value.deserializer={BYTES}"),
            format!("headers.deserializer={BYTES}"),
            "headers.separator=\u{1f}".to_string(),
        ];
        let mut args = vec![
            "--bootstrap-server".to_string(),
            self.bootstrap.clone(),
            "--topic".to_string(),
            topic.to_string(),
            "--from-beginning".to_string(),
            "--max-messages".to_string(),
            n.to_string(),
            "--timeout-ms".to_string(),
            "60000".to_string(),
            "--isolation-level".to_string(),
            "read_committed".to_string(),
        ];
        for p in properties {
            args.push("--property".into());
            args.push(p);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.tool("org.apache.kafka.tools.consumer.ConsoleConsumer", &args);
        let stdout = out.stdout;
        stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|line| parse_console_line(topic, line))
            .collect()
    }
}

/// One line of [`Kafka::console_consume`]: `CreateTime:ms`, `Partition:p`, `Offset:o`, headers,
/// key, value, separated by tabs.
fn parse_console_line(topic: &str, line: &[u8]) -> super::Consumed {
    let text = std::str::from_utf8(line).expect("escaped output is ASCII");
    let fields: Vec<&str> = text.splitn(6, '\t').collect();
    assert_eq!(fields.len(), 6, "console consumer line {text:?}");
    let number = |f: &str, prefix: &str| -> i64 {
        f.strip_prefix(prefix)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in {text:?}"))
    };
    let mut headers = std::collections::HashMap::new();
    if fields[3] != "NO_HEADERS" {
        for h in fields[3].split('\u{1f}') {
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            headers.insert(k.to_string(), unescape(v));
        }
    }
    super::Consumed {
        topic: topic.to_string(),
        partition: number(fields[1], "Partition:") as i32,
        offset: number(fields[2], "Offset:"),
        timestamp: fields[0]
            .strip_prefix("CreateTime:")
            .and_then(|v| v.parse().ok()),
        key: (fields[4] != "null").then(|| unescape(fields[4])),
        payload: unescape(fields[5]),
        headers,
    }
}

/// Undoes `Bytes::toString`: `\xHH` is a byte, anything else itself.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for node in &mut self.nodes {
            if panicking {
                eprintln!(
                    "--- Kafka node {} server.log (last 30 lines) ---\n{}",
                    node.id,
                    tail(&node.log(), 30)
                );
            }
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
