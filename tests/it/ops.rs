//! Operations: systemd notifications (READY, WATCHDOG from a live loop only, STATUS,
//! STOPPING) over a NOTIFY_SOCKET the test made, /metrics parsed by the reference Prometheus
//! parser and matched against what an independent consumer received, /health turning 503
//! while the sink fails, the Grafana dashboard checked against a live /metrics, log formats,
//! and `cursor show`.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// Waits until `/health` answers `want`; returns the body.
fn wait_health(port: u16, want: u16, timeout: Duration) -> Result<String, String> {
    let end = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < end {
        last = http_get(port, "/health");
        if let Some((status, body)) = &last {
            if *status == want {
                return Ok(body.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("/health never answered {want}; last: {last:?}"))
}

/// The exposition parsed by prometheus_client: (families name → type, samples, raw text).
struct Scrape {
    families: serde_json::Map<String, serde_json::Value>,
    samples: Vec<(String, serde_json::Map<String, serde_json::Value>, f64)>,
    text: String,
}

impl Scrape {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(|x| x.as_str()) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }

    /// Every metric name the exposition declares (`# TYPE` lines, as written).
    fn declared(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }
}

fn scrape(port: u16) -> Scrape {
    // Fails if prometheus_client cannot parse the exposition.
    let out = output_ok(
        Command::new("python3")
            .arg(repo().join("tests/py/parse_metrics.py"))
            .arg(format!("http://127.0.0.1:{port}/metrics")),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Scrape {
        families: v["families"].as_object().unwrap().clone(),
        samples: v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s[0].as_str().unwrap().to_string(),
                    s[1].as_object().unwrap().clone(),
                    s[2].as_f64().unwrap(),
                )
            })
            .collect(),
        text: v["text"].as_str().unwrap().to_string(),
    }
}

/// Collects datagrams sent to a NOTIFY_SOCKET, with their arrival time.
struct NotifySocket {
    path: std::path::PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends with the test process; a timeout just loops.
            loop {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    sink.lock().unwrap().push((Instant::now(), text));
                }
                if Arc::strong_count(&sink) == 1 {
                    return;
                }
            }
        });
        NotifySocket { path, got }
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.got.lock().unwrap().clone()
    }

    fn count_since(&self, since: Instant, needle: &str) -> usize {
        self.messages()
            .iter()
            .filter(|(t, m)| *t >= since && m.contains(needle))
            .count()
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some((_, m)) = self.messages().iter().find(|(_, m)| m.contains(needle)) {
                return Some(m.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// `perapera run -c config` with extra environment; stdout is the caller's to read (or not).
fn spawn(config: &Path, env: &[(&str, &str)], stderr: &Path) -> Child {
    Command::new(bin())
        .args(["run", "-c"])
        .arg(config)
        .envs(env.iter().copied())
        .env("PERAPERA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

/// Waits (at most 20 s) until the agent logging to `log` says it is running.
fn wait_running(log: &Path) {
    let end = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("perapera is running")
    {
        assert!(
            Instant::now() < end,
            "{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wedge_entries(first: u64, n: u64) -> Vec<Entry> {
    (first..first + n)
        .map(|i| {
            let mut e = entry(i, 1_700_000_000_000_000 + i * 1000);
            e.push(("PADDING".into(), vec![b'p'; 400]));
            e
        })
        .collect()
}

#[test]
fn notify_ready_watchdog_stops_when_the_pipeline_is_wedged() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, &wedge_entries(0, 5));
    let port = free_port();
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"127.0.0.1:{port}\"\n\
             unhealthy_after = \"2s\"\n[[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n\
             [sink]\ntype = \"stdout\"\n",
            dir.path().join("state").display(),
            journal.display()
        ),
    );
    let notify = NotifySocket::bind(dir.path());
    let log = dir.path().join("stderr.log");
    let socket = notify.path.display().to_string();
    // The watchdog is 600 ms: perapera pings every 300 ms while its loop runs.
    let mut child = spawn(
        &config,
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "600000")],
        &log,
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    // Nobody reads stdout yet: the first 5 entries fit the pipe buffer.
    let stdout = child.stdout.take().unwrap();

    let ready = notify
        .wait_for("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1\n{}", logs()));
    assert!(ready.contains("STATUS="), "{ready}");
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let pings = notify.count_since(t, "WATCHDOG=1");
    assert!(pings >= 4, "{pings} WATCHDOG=1 in 2 s\n{}", logs());
    wait_health(port, 200, Duration::from_secs(10)).unwrap();
    assert!(
        notify
            .wait_for("acknowledged of", Duration::from_secs(10))
            .is_some(),
        "a STATUS= line with what was shipped: {:?}",
        notify.messages()
    );

    // Wedge it: 3000 entries of ~1 KB of JSON each into a pipe nobody reads. The loop
    // blocks writing to stdout (a sink blocked forever).
    write_journal(&journal, &wedge_entries(5, 3000));
    let end = Instant::now() + Duration::from_secs(30);
    let quiet_since = loop {
        let last = notify
            .messages()
            .iter()
            .rev()
            .find(|(_, m)| m.contains("WATCHDOG=1"))
            .map(|(t, _)| *t);
        if let Some(last) = last {
            if last.elapsed() > Duration::from_secs(2) {
                break last;
            }
        }
        assert!(
            Instant::now() < end,
            "WATCHDOG=1 kept coming while stdout was not read\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // It stays quiet, and the health endpoint (its own thread) says why.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        notify.count_since(quiet_since + Duration::from_millis(1), "WATCHDOG=1"),
        0
    );
    let body = wait_health(port, 503, Duration::from_secs(10)).unwrap();
    assert!(body.contains("pipeline loop has not run"), "{body}");

    // Unwedge: read stdout. Pings resume, everything arrives, health recovers.
    let reader = std::thread::spawn(move || {
        let mut lines = 0u64;
        let mut buf = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut buf, &mut line).unwrap_or(0) > 0 {
            lines += 1;
            line.clear();
        }
        lines
    });
    let resumed = Instant::now();
    let end = Instant::now() + Duration::from_secs(30);
    while notify.count_since(resumed, "WATCHDOG=1") < 3 {
        assert!(
            Instant::now() < end,
            "WATCHDOG=1 did not resume\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_health(port, 200, Duration::from_secs(30)).unwrap();

    // SIGTERM: STOPPING=1, clean exit, every entry written once.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", logs());
    assert!(
        notify
            .wait_for("STOPPING=1", Duration::from_secs(5))
            .is_some(),
        "{:?}",
        notify.messages()
    );
    assert_eq!(reader.join().unwrap(), 3005, "{}", logs());
}

#[test]
fn metrics_match_what_was_shipped_and_health_turns_503_while_the_sink_fails() {
    const N: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, &entries(0, N));
    let port = free_port();
    let kafka_port = free_port();
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"127.0.0.1:{port}\"\n\
             unhealthy_after = \"3s\"\n[[source]]\ntype = \"journal\"\ndirectory = \"{}\"\n\
             [sink]\ntype = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka_port}\"]\ntopic = \"metered\"\n\
             [sink.librdkafka]\n\"message.timeout.ms\" = 2000\n",
            dir.path().join("state").display(),
            journal.display()
        ),
    );
    // The broker is down: entries wait, time out, are retried; /health turns 503.
    let agent = Agent::start(&config);
    let body = wait_health(port, 503, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.stderr()));
    assert!(
        body.contains("acknowledged nothing") && body.contains("kafka"),
        "{body}"
    );
    let down = scrape(port);
    assert_eq!(
        down.value("perapera_entries_acked_total", &[("source", "journal")]),
        Some(0.0)
    );
    assert!(
        down.value("perapera_in_flight_entries", &[("source", "journal")]) > Some(0.0),
        "{}",
        down.text
    );
    // Nothing acknowledged yet, start_at = "head": the lag is the whole journal, from its
    // first entry (1_700_000_000.000 s) to its newest (entry 499, 0.499 s later).
    let lag = |s: &Scrape| s.value("perapera_checkpoint_lag_seconds", &[("source", "journal")]);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(port);
        if lag(&s) == Some(0.499) {
            break;
        }
        assert!(
            Instant::now() < end,
            "lag never 0.499 while down:\n{}",
            s.text
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // The broker comes up: everything is delivered, health recovers.
    let kafka = Kafka::single_on(kafka_port);
    kafka.create_topic("metered", 1);
    let mut reader = Reader::new(&kafka.bootstrap, "metered");
    reader.read_n(N as usize, Duration::from_secs(120));
    let (counts, _dups) = seq_counts(&reader.messages);
    assert_eq!(counts.len() as u64, N, "{}", agent.stderr());
    wait_health(port, 200, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.stderr()));

    // The counters say what the consumer saw.
    let end = Instant::now() + Duration::from_secs(30);
    let up = loop {
        let s = scrape(port);
        if s.value("perapera_entries_acked_total", &[("source", "journal")]) == Some(N as f64) {
            break s;
        }
        assert!(Instant::now() < end, "acked never reached {N}:\n{}", s.text);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        up.value("perapera_entries_read_total", &[("source", "journal")]),
        Some(N as f64)
    );
    // Caught up: the lag falls to 0 (refreshed every 5 s).
    let end = Instant::now() + Duration::from_secs(20);
    while lag(&scrape(port)) != Some(0.0) {
        assert!(Instant::now() < end, "lag never 0 after catching up");
        std::thread::sleep(Duration::from_millis(250));
    }
    let delivered = reader.messages.len() as f64;
    let retries = up
        .value(
            "perapera_sink_retries_total",
            &[("sink", "kafka"), ("reason", "retriable")],
        )
        .unwrap_or(0.0);
    assert!(retries >= 1.0, "{}", up.text);
    // Every message the consumer saw beyond N is a retry of one that had timed out.
    assert!(
        delivered - N as f64 <= retries,
        "{delivered} delivered, {retries} retries"
    );
    assert_eq!(
        up.families
            .get("perapera_checkpoint_lag_seconds")
            .and_then(|t| t.as_str()),
        Some("gauge")
    );
    assert_eq!(
        up.families
            .get("perapera_entries_read")
            .and_then(|t| t.as_str()),
        Some("counter")
    );
    assert!(up.value("process_resident_memory_bytes", &[]) > Some(1e6));
    assert!(up.value("process_cpu_seconds_total", &[]).is_some());

    // Prometheus' own linter (naming, HELP/TYPE, suffixes) has nothing to say.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; ./test.sh installs it)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(up.text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The dashboard's queries name only metrics this binary exports.
    check_dashboard(&up);
    agent.stop();
}

/// The Grafana dashboard: type-checked against Grafana's published dashboard model
/// (`@grafana/schema`, by `tests/node/check_dashboard.js`), and every metric its panel queries
/// and variables name present in a live /metrics.
fn check_dashboard(live: &Scrape) {
    let path = repo().join("packaging/grafana/perapera.json");
    // Fails, with tsc's errors, if it does not match Grafana's dashboard model.
    output_ok(
        Command::new("node")
            .arg(repo().join("tests/node/check_dashboard.js"))
            .arg(&path),
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in ["title", "uid"] {
        assert!(dash[key].as_str().is_some_and(|s| !s.is_empty()), "{key}");
    }
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let declared = live.declared();
    let mut queries = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "unique ids"
        );
        assert!(p["type"].as_str().is_some() && p["title"].as_str().is_some());
        for k in ["h", "w", "x", "y"] {
            assert!(
                p["gridPos"][k].as_u64().is_some(),
                "gridPos.{k} of {}",
                p["title"]
            );
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty());
        for t in targets {
            assert!(t["refId"].as_str().is_some());
            queries.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            queries.push(q.to_string());
        }
    }
    let mut named = 0;
    for q in &queries {
        for word in q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("perapera_") || word.starts_with("process_") {
                named += 1;
                assert!(
                    declared.iter().any(|d| d == word),
                    "the dashboard queries {word}, which /metrics does not export ({q})"
                );
            }
        }
    }
    assert!(named >= 12, "{named} metric references");
    for wanted in [
        "perapera_entries_read_total",
        "perapera_entries_acked_total",
        "perapera_in_flight_entries",
        "perapera_checkpoint_lag_seconds",
        "perapera_sink_retries_total",
        "perapera_entries_failed_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(
            queries.iter().any(|q| q.contains(wanted)),
            "the dashboard shows {wanted}"
        );
    }
}

/// perapera turns transparent huge pages off for itself before its allocator runs: with THP
/// "always" (Debian's default) mimalloc's arenas would take 2 MiB pages for a few bytes each.
#[test]
fn transparent_huge_pages_are_off_and_idle_anonymous_memory_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.log");
    std::fs::write(&empty, b"").unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"off\"\n[[source]]\n\
             type = \"files\"\ninclude = [\"{}\"]\n[sink]\ntype = \"stdout\"\n",
            dir.path().join("state").display(),
            empty.display()
        ),
    );
    let log = dir.path().join("agent.log");
    let mut child = spawn(&config, &[], &log);
    wait_running(&log);
    std::thread::sleep(Duration::from_secs(1));
    let pid = child.id();
    assert_eq!(
        proc_status(pid, "THP_enabled:").as_deref(),
        Some("0"),
        "transparent huge pages are on"
    );
    let anon_kib: u64 = proc_status(pid, "RssAnon:")
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        anon_kib < 8 * 1024,
        "idle anonymous RSS {anon_kib} KiB (about 3 MiB expected; 2 MiB pages would show here)"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn log_formats_json_and_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, &entries(0, 3));
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"off\"\n[[source]]\n\
             type = \"journal\"\ndirectory = \"{}\"\n[sink]\ntype = \"stdout\"\n",
            dir.path().join("state").display(),
            journal.display()
        ),
    );
    for (format, check) in [
        (
            "json",
            (|l: &str| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["level"].is_string() && v["fields"].is_object())
            }) as fn(&str) -> bool,
        ),
        ("journal", |l: &str| {
            l.starts_with("<6>")
                || l.starts_with("<4>")
                || l.starts_with("<3>")
                || l.starts_with("<7>")
        }),
    ] {
        let log = dir.path().join(format!("{format}.log"));
        let mut child = spawn(&config, &[("PERAPERA_LOG_FORMAT", format)], &log);
        wait_running(&log);
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        assert!(child.wait().unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.lines().count() >= 3);
        for line in text.lines() {
            assert!(check(line), "{format}: {line}");
        }
    }
}

#[test]
fn cursor_show_reports_checkpoint_time_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let state = dir.path().join("state");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // 10 entries 1 ms apart from 1_700_000_000 s; then 5 more a minute later.
    write_journal(&journal, &entries(0, 10));
    std::fs::write(logs.join("a.log"), "one\ntwo\n").unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "[state]\ndirectory = \"{}\"\n[metrics]\naddress = \"off\"\n[[source]]\n\
             type = \"journal\"\ndirectory = \"{}\"\n[[source]]\ntype = \"files\"\n\
             name = \"logs\"\ninclude = [\"{}/*.log\"]\nformat = \"raw\"\n\
             [sink]\ntype = \"stdout\"\n",
            state.display(),
            journal.display(),
            logs.display()
        ),
    );
    let agent = Agent::start(&config);
    let end = Instant::now() + Duration::from_secs(30);
    while saved_cursor(&state, "journal").is_none()
        || saved_files(&state, "logs").iter().all(|(_, o)| *o < 8)
    {
        assert!(Instant::now() < end, "{}", agent.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.stop();
    write_journal(
        &journal,
        &(10..15)
            .map(|i| entry(i, 1_700_000_060_000_000 + i * 1000))
            .collect::<Vec<_>>(),
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(logs.join("a.log"))
        .unwrap()
        .write_all(b"three\n")
        .unwrap();

    let out = perapera(&["cursor", "show", "--json", "-c", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sources = v["sources"].as_array().unwrap();
    let j = sources.iter().find(|s| s["name"] == "journal").unwrap();
    assert_eq!(j["type"], "journal");
    assert_eq!(
        j["cursor"].as_str(),
        saved_cursor(&state, "journal").as_deref()
    );
    // Last acked: entry 9 at 1_700_000_000.009 s; newest: entry 14 at 1_700_000_060.014 s.
    assert_eq!(j["last_acked_entry_us"], 1_700_000_000_009_000u64);
    assert_eq!(j["last_acked_entry"], "2023-11-14 22:13:20.009000");
    let lag = j["lag_seconds"].as_f64().unwrap();
    assert!((lag - 60.005).abs() < 1e-6, "{lag}");
    let f = sources.iter().find(|s| s["name"] == "logs").unwrap();
    let files = f["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["offset"], 8);
    assert_eq!(files[0]["size"], 14);
    assert_eq!(files[0]["unshipped_bytes"], 6);
    assert!(f["lag_seconds"].as_f64().unwrap() >= 0.0);

    let table = perapera(&["cursor", "show", "-c", config.to_str().unwrap()]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    let header = text.lines().next().unwrap();
    for col in ["SOURCE", "TYPE", "LAST ACKED ENTRY", "LAG", "CHECKPOINT"] {
        assert!(header.contains(col), "{text}");
    }
    assert!(
        text.contains("60.0s") && text.contains("2023-11-14 22:13:20.009000"),
        "{text}"
    );
    assert!(text.contains("6 bytes unshipped"), "{text}");
}
