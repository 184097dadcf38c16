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

/// What a JVM runs, for its heap and logging.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Heap {
    /// A command-line tool (logs to stderr).
    Tool,
    /// A broker (or a combined broker and controller).
    Broker,
    /// A controller only.
    Controller,
}

/// A Java command with the Kafka classpath and the logging configuration in `dir`.
pub fn kafka_java(dir: &Path, heap: Heap) -> Command {
    let libs = kafka_libs();
    assert!(
        libs.join(".complete").exists(),
        "no Kafka jars in {}: run scripts/deps.sh --test (it collects them with Maven)",
        libs.display()
    );
    write_log_configs(dir);
    let mut c = Command::new("java");
    if heap == Heap::Tool {
        c.arg("-Xmx256m").arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("tools-log4j2.yaml").display()
        ));
    } else {
        let size = if heap == Heap::Controller {
            "160m"
        } else {
            "256m"
        };
        c.arg(format!("-Xms{size}")).arg(format!("-Xmx{size}"));
        c.args([
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

/// A random KRaft cluster id: 16 bytes, base64url without padding (as `random-uuid` prints),
/// not starting with `-` (the storage tool would take it for an option).
fn cluster_id() -> String {
    loop {
        let id = random_id();
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn random_id() -> String {
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
    /// The client port (brokers) or the controller port (controllers).
    port: u16,
    controller: bool,
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
    /// The SASL_SSL listener, if started with one ([`Kafka::single_secure`]).
    pub secure: Option<Secure>,
    _dir: tempfile::TempDir,
}

/// A SASL_SSL listener (beside the plaintext one the harness's own tools use): a server
/// certificate for 127.0.0.1 signed by a CA made for the test, SCRAM-SHA-512 and PLAIN users.
pub struct Secure {
    /// `127.0.0.1:port` of the SASL_SSL listener.
    pub bootstrap: String,
    /// The CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// A CA that did not.
    pub other_ca: PathBuf,
}

/// The SASL user the secure listener knows (SCRAM-SHA-512 and PLAIN) and its password.
pub const SASL_USER: &str = "perapera";
pub const SASL_PASSWORD: &str = "ship-it-2026";

impl Kafka {
    /// One node.
    pub fn single() -> Kafka {
        Kafka::start(&[free_port()], 0, false, "")
    }

    /// One node with these broker properties (`key=value` lines) on top of the harness's.
    pub fn single_with(properties: &str) -> Kafka {
        Kafka::start(&[free_port()], 0, false, properties)
    }

    /// One node with a SASL_SSL listener too ([`Kafka::secure`]).
    pub fn single_secure() -> Kafka {
        Kafka::start(&[free_port()], 0, true, "")
    }

    /// One node listening on `port`, chosen beforehand (an agent was pointed at it while it
    /// was down).
    pub fn single_on(port: u16) -> Kafka {
        Kafka::start(&[port], 0, false, "")
    }

    /// Three brokers (ids 1, 2, 3: replication factor 3, `min.insync.replicas=2`) and three
    /// controllers of their own (ids 101, 102, 103), so that two brokers can be down while the
    /// controller quorum shrinks the ISR below `min.insync.replicas`.
    pub fn cluster() -> Kafka {
        Kafka::start(&[free_port(), free_port(), free_port()], 3, false, "")
    }

    fn start(broker_ports: &[u16], controllers: usize, secure: bool, extra: &str) -> Kafka {
        let dir = tempfile::tempdir().unwrap();
        let secure = secure.then(|| secure_listener(dir.path()));
        let replicas = broker_ports.len().min(3);
        let min_isr = if replicas >= 3 { 2 } else { 1 };
        // (id, client port, controller port): combined nodes 1.., or brokers 1.. and
        // controllers 101.. with ports of their own.
        let mut plan: Vec<(u32, u16, Option<u16>)> = Vec::new();
        for (i, p) in broker_ports.iter().enumerate() {
            let controller = (controllers == 0).then(free_port);
            plan.push((i as u32 + 1, *p, controller));
        }
        let quorum: Vec<(u32, u16)> = if controllers == 0 {
            plan.iter()
                .map(|(id, _, c)| (*id, c.unwrap_or(0)))
                .collect()
        } else {
            (0..controllers)
                .map(|i| (101 + i as u32, free_port()))
                .collect()
        };
        let voters: Vec<String> = quorum
            .iter()
            .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
            .collect();
        // `log.retention.ms=-1`: the tests' entries carry fixed 2023 timestamps, and Kafka's time
        // retention counts from record timestamps, so its five-minute retention check would
        // otherwise roll and delete a test's segment while the test still reads it.
        let common = format!(
            "controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
             num.partitions=1
default.replication.factor={replicas}
             min.insync.replicas={min_isr}
offsets.topic.replication.factor={replicas}
             offsets.topic.num.partitions=1
             transaction.state.log.replication.factor={replicas}
             transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=1
             share.coordinator.state.topic.replication.factor={replicas}
             share.coordinator.state.topic.min.isr={min_isr}
             unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
             auto.create.topics.enable=false
log.cleaner.dedupe.buffer.size=33554432
log.retention.ms=-1
             broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
             replica.lag.time.max.ms=10000
",
            voters = voters.join(","),
        );
        let mut specs: Vec<(u32, u16, bool, String)> = Vec::new();
        for (id, port, controller) in &plan {
            let mut advertised = format!("PLAINTEXT://127.0.0.1:{port}");
            let mut extra = format!("{extra}\n");
            if let (Some((s, props)), 1) = (&secure, id) {
                advertised.push_str(&format!(
                    ",{}",
                    s.bootstrap.replacen("127", "SASL_SSL://127", 1)
                ));
                extra.push_str(props);
            }
            let (roles, listeners) = match controller {
                Some(c) => (
                    "broker,controller",
                    format!("{advertised},CONTROLLER://127.0.0.1:{c}"),
                ),
                None => ("broker", advertised.clone()),
            };
            specs.push((
                *id,
                *port,
                false,
                format!(
                    "process.roles={roles}\nnode.id={id}\nlisteners={listeners}\n\
                     advertised.listeners={advertised}\n\
                     inter.broker.listener.name=PLAINTEXT\n{extra}"
                ),
            ));
        }
        if controllers > 0 {
            for (id, port) in &quorum {
                specs.push((
                    *id,
                    *port,
                    true,
                    format!(
                        "process.roles=controller\nnode.id={id}\n\
                         listeners=CONTROLLER://127.0.0.1:{port}\n"
                    ),
                ));
            }
        }
        let cluster = cluster_id();
        let mut nodes = Vec::new();
        let mut formats = Vec::new();
        for (id, port, controller, roles) in specs {
            let node_dir = dir.path().join(format!("n{id}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            // The node's own lines last: they override the common ones (a later key wins).
            let props = format!(
                "{common}{roles}log.dirs={}\n",
                node_dir.join("data").display()
            );
            std::fs::write(node_dir.join("server.properties"), props).unwrap();
            // A static quorum (controller.quorum.voters): formatted without a quorum flag.
            let mut format = kafka_java(&node_dir, Heap::Tool);
            format
                .args(["kafka.tools.StorageTool", "format", "-t", &cluster, "-c"])
                .arg(node_dir.join("server.properties"));
            if secure.is_some() {
                // The SCRAM credential, in the cluster metadata from the start.
                format.arg("--add-scram").arg(format!(
                    "SCRAM-SHA-512=[name={SASL_USER},password={SASL_PASSWORD}]"
                ));
            }
            formats.push(
                format
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("java (Kafka's StorageTool): {e}")),
            );
            nodes.push(Node {
                id,
                port,
                controller,
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
            .filter(|n| !n.controller)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",");
        let mut kafka = Kafka {
            nodes,
            bootstrap,
            secure: secure.map(|(s, _)| s),
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
        let heap = if node.controller {
            Heap::Controller
        } else {
            Heap::Broker
        };
        let child = kafka_java(&node.dir, heap)
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

    /// Broker ids, 1-based.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|n| !n.controller)
            .map(|n| n.id)
            .collect()
    }

    /// The id of the active controller (the quorum's leader), asked of the controllers.
    pub fn active_controller(&self) -> Option<u32> {
        let controllers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.controller)
            .filter(|n| n.child.is_some())
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let first = controllers.first()?;
        let out = self.tool(
            "org.apache.kafka.tools.MetadataQuorumCommand",
            &["--bootstrap-controller", first, "describe", "--status"],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("LeaderId:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The broker coordinating `transactional_id`'s transactions (`TransactionsCommand
    /// describe`), while one is known.
    pub fn transaction_coordinator(&self, transactional_id: &str) -> Option<u32> {
        let out = self.tool(
            "org.apache.kafka.tools.TransactionsCommand",
            &[
                "--bootstrap-server",
                &self.bootstrap,
                "describe",
                "--transactional-id",
                transactional_id,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.split_whitespace().collect();
        let column = header.iter().position(|h| *h == "CoordinatorId")?;
        lines.next()?.split_whitespace().nth(column)?.parse().ok()
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
        let replication = self.ids().len().min(3) as i32;
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = block_on(self.admin().create_topics([&topic], &options))
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

    /// Deletes `name` and waits until the metadata no longer has it.
    pub fn delete_topic(&self, name: &str) {
        let results = block_on(self.admin().delete_topics(&[name], &AdminOptions::new()))
            .unwrap_or_else(|e| panic!("delete topic {name}: {e}"));
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let end = Instant::now() + Duration::from_secs(30);
        while !self.leaders(name).is_empty() {
            assert!(Instant::now() < end, "topic {name} still there after 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap()
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

    /// What a crash of a broker's host does to a single replica (Kafka does not fsync): the
    /// stopped node `id` loses every batch of `topic`-`partition` from offset `from` on, its
    /// producer-state snapshots and indexes with them (rebuilt from the log at start).
    pub fn lose_tail(&self, id: u32, topic: &str, partition: i32, from: i64) {
        let i = self.index(id);
        assert!(self.nodes[i].child.is_none(), "node {id} is running");
        let dir = self.nodes[i]
            .dir
            .join("data")
            .join(format!("{topic}-{partition}"));
        let segment = dir.join("00000000000000000000.log");
        let out = self.tool(
            "kafka.tools.DumpLogSegments",
            &["--files", &segment.display().to_string()],
        );
        let cut = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| Some((dump_field(l, "baseOffset: ")?, dump_field(l, "position: ")?)))
            .find(|(base, _)| *base >= from)
            .map(|(_, position)| position as u64)
            .unwrap_or_else(|| {
                panic!(
                    "no batch at or after offset {from} in {}",
                    segment.display()
                )
            });
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .and_then(|f| f.set_len(cut))
            .unwrap();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|x| x == "snapshot" || x == "index" || x == "timeindex")
            {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }

    /// The record batches of `topic`'s `partition` in broker `id`'s log, as Kafka's
    /// `DumpLogSegments` reads them: (first offset, last offset, producer id).
    pub fn batches(&self, id: u32, topic: &str, partition: i32) -> Vec<(i64, i64, i64)> {
        let dir = self.nodes[self.index(id)]
            .dir
            .join("data")
            .join(format!("{topic}-{partition}"));
        let mut logs: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        let out = self.tool("kafka.tools.DumpLogSegments", &["--files", &logs.join(",")]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                Some((
                    dump_field(l, "baseOffset: ")?,
                    dump_field(l, "lastOffset: ")?,
                    dump_field(l, "producerId: ")?,
                ))
            })
            .collect()
    }

    /// A Kafka tool (`org.apache.kafka.tools.TopicCommand` ...) run to completion with `args`.
    pub fn tool(&self, class: &str, args: &[&str]) -> std::process::Output {
        kafka_java(self._dir.path(), Heap::Tool)
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

/// Runs an rdkafka future (admin calls, `FutureProducer::send`) to completion here.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
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

/// Certificates for a SASL_SSL listener on a free port, and the broker properties that make
/// it (they override the common listener map).
fn secure_listener(dir: &Path) -> (Secure, String) {
    let certs = super::make_ca(dir, "", &["127.0.0.1", "localhost"]);
    let other = super::make_ca(dir, "other-", &["127.0.0.1", "localhost"]);
    // Kafka's PEM key store: the private key (PKCS#8) and the certificate chain in one file.
    let store = dir.join("broker-keystore.pem");
    let pem = |p: &Path| std::fs::read_to_string(p).unwrap();
    std::fs::write(&store, pem(&certs.key) + &pem(&certs.cert)).unwrap();
    let port = free_port();
    let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
    let plain = format!(
        "org.apache.kafka.common.security.plain.PlainLoginModule required \
         user_{SASL_USER}=\"{SASL_PASSWORD}\";"
    );
    let props = format!(
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL\n\
         sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN\n\
         listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}\n\
         listener.name.sasl_ssl.plain.sasl.jaas.config={plain}\n\
         ssl.keystore.type=PEM\nssl.keystore.location={}\n",
        store.display()
    );
    let secure = Secure {
        bootstrap: format!("127.0.0.1:{port}"),
        ca: certs.ca,
        other_ca: other.ca,
    };
    (secure, props)
}

/// The number after `name` in a line of Kafka's DumpLogSegments output.
fn dump_field(line: &str, name: &str) -> Option<i64> {
    let rest = &line[line.find(name)? + name.len()..];
    rest.split_whitespace().next()?.parse().ok()
}
