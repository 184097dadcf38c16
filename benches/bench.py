#!/usr/bin/env python3
"""perapera's end-to-end benchmark (`make bench`).

Generates once (cached under target/bench-data) a 500 000-entry journal written by
systemd-journal-remote and a 1 000 000-line access log of about 200 bytes a line, then runs
perapera to completion on each, shipping to Kafka:

  (a) librdkafka's mock cluster inside perapera (`"test.mock.num.brokers" = "1"`), and
  (b) an Apache Kafka broker process (single-node KRaft, the jars scripts/deps.sh collects)
      on 127.0.0.1; its CPU is reported beside perapera's.

Every process is measured from outside: CPU seconds (user + sys, from wait4's rusage), wall
time until the last entry was acknowledged, peak RSS and peak anonymous RSS (sampled from
/proc/PID/status every 20 ms; VmHWM for the peak RSS). In the same run it measures the
references: `journalctl -D DIR -o export > /dev/null` over the same journal, and perapera's
idle RSS 5 s after start with nothing left to ship, and what an idle agent costs: its CPU
share of one core, wake-ups a second (context switches over all its threads) and checkpoint
writes over 60 s after a 10 s settle, for each source kind with each sink.

A second journal dataset holds small entries (10 fields, messages of 40 to 120 bytes), as a
quiet service logs them. The targets are ratios to references measured in the same run (CPU
<= 0.8 x `journalctl -o export` on each journal, files <= 1.0 x librdkafka alone sending the
same messages) beside anonymous RSS <= 50 MiB, idle RSS <= 10 MiB, and idle <= 0.1 % of a
core, <= 10 wake-ups a second, 0 checkpoint writes.

The mock and reference runs are repeated (--repeat, default 3) and the median is reported.
Prints one table, writes it as CSV (target/bench/results.csv), checks the targets
and exits 1 when one is missed.

--smoke runs the same harness on 5 000 entries and 20 000 lines, once, without checking
the targets (./test.sh uses it so that the benchmark keeps working); a run that fails or a
broker that did not get every entry still fails it.

Usage: benches/bench.py [--repeat N] [--only journal|files] [--skip-kafka] [--keep]
                        [--set KEY=VALUE]... [--smoke]
"""
import argparse
import csv
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("PERAPERA_BENCH_DATA", os.path.join(ROOT, "target", "bench-data"))
OUT = os.path.join(ROOT, "target", "bench")
PERAPERA = os.environ.get("PERAPERA_BIN", os.path.join(ROOT, "target", "release", "perapera"))
FLOOR = os.path.join(ROOT, "target", "release", "examples", "librdkafka_floor")
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"

JOURNAL_ENTRIES = 500_000
LOG_LINES = 1_000_000
# Bump when a generator changes, so that cached data is regenerated.
DATA_VERSION = "1"
MIB = 1024 * 1024


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data


def journal_dir(small=False):
    """The journal dataset: the busy server's (about 25 fields, messages of 30 to 300 bytes),
    or with `small` a quiet service's (10 fields, messages of 40 to 120 bytes)."""
    d = os.path.join(DATA, "journal-small" if small else "journal")
    stamp = os.path.join(d, ".complete")
    if os.path.exists(stamp) and open(stamp).read().strip() == DATA_VERSION:
        return d
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    log(f"generating a {JOURNAL_ENTRIES}-entry journal with systemd-journal-remote (once, ~40 s)")
    gen = subprocess.Popen([sys.executable, os.path.join(ROOT, "benches", "gen_journal.py"),
                            str(JOURNAL_ENTRIES)] + (["7", "small"] if small else []),
                           stdout=subprocess.PIPE)
    remote = subprocess.run([JOURNAL_REMOTE, f"--output={d}/bench.journal", "-"],
                            stdin=gen.stdout, stderr=subprocess.DEVNULL)
    gen.stdout.close()
    if gen.wait() != 0 or remote.returncode != 0:
        sys.exit("bench: generating the journal failed")
    count = sum(1 for line in subprocess.run(
        ["journalctl", "-D", d, "-o", "cat", "--output-fields=_PID"],
        capture_output=True, check=True).stdout.splitlines())
    if count != JOURNAL_ENTRIES:
        sys.exit(f"bench: the generated journal holds {count} entries, not {JOURNAL_ENTRIES}")
    with open(stamp, "w") as f:
        f.write(DATA_VERSION)
    return d


def access_log():
    path = os.path.join(DATA, "logs", "access.log")
    stamp = path + ".complete"
    if os.path.exists(stamp) and open(stamp).read().strip() == DATA_VERSION:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log(f"generating a {LOG_LINES}-line access log (once, ~10 s)")
    with open(path, "wb") as f:
        subprocess.run([sys.executable, os.path.join(ROOT, "benches", "gen_access_log.py"),
                        str(LOG_LINES)], stdout=f, check=True)
    with open(stamp, "w") as f:
        f.write(DATA_VERSION)
    return path


def warm(paths):
    """Reads the files once so that every run starts from the page cache."""
    for p in paths:
        if os.path.isdir(p):
            warm([os.path.join(p, n) for n in os.listdir(p)])
        else:
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass


def du(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


# ---------------------------------------------------------------- measuring


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid):
    """VmRSS, RssAnon and VmHWM in bytes, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def proc_cpu(pid):
    """utime + stime of a running process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Result:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def measure(argv, done=None, stdout=subprocess.DEVNULL, stderr=None, timeout=600,
            idle_after=None):
    """Runs argv and measures it from outside.

    done: a predicate polled every 50 ms; when it turns true the wall time is taken and the
    process gets SIGTERM (perapera then flushes, writes its checkpoint and exits).
    idle_after: seconds after which the RSS is sampled and the process gets SIGTERM.
    """
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr)
    peak_rss = peak_anon = 0
    hwm = 0
    wall = None
    idle = None
    last_poll = 0.0
    status = None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        s = proc_status(proc.pid)
        if s:
            peak_rss = max(peak_rss, s.get("VmRSS", 0))
            peak_anon = max(peak_anon, s.get("RssAnon", 0))
            hwm = max(hwm, s.get("VmHWM", 0))
        now = time.monotonic()
        if idle_after is not None and idle is None and now - start >= idle_after and s:
            idle = s
            proc.send_signal(signal.SIGTERM)
        if done is not None and wall is None and now - last_poll >= 0.05:
            last_poll = now
            if done():
                wall = now - start
                proc.send_signal(signal.SIGTERM)
        if now - start > timeout:
            proc.kill()
            os.wait4(proc.pid, 0)
            sys.exit(f"bench: {argv[0]} did not finish within {timeout} s")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    total = time.monotonic() - start
    return Result(
        code=proc.returncode,
        user=rusage.ru_utime,
        sys=rusage.ru_stime,
        cpu=rusage.ru_utime + rusage.ru_stime,
        wall=wall if wall is not None else total,
        peak_rss=max(hwm, peak_rss, rusage.ru_maxrss * 1024),
        peak_anon=peak_anon,
        idle=idle,
    )


def acked(port, source):
    """perapera_entries_acked_total{source=...} from /metrics (0 while unreachable)."""
    return int(metric(port, f'perapera_entries_acked_total{{source="{source}"}}') or 0)


# ---------------------------------------------------------------- perapera runs


def config(state, port, source, sink, topic):
    return f"""
[state]
directory = "{state}"

[metrics]
address = "127.0.0.1:{port}"

{source}

[sink]
type = "kafka"
topic = "{topic}"
{sink}
{"" if "[sink.librdkafka]" in sink or not EXTRA else "[sink.librdkafka]"}
{EXTRA}
"""


JOURNAL_SOURCE = """[[source]]
type = "journal"
name = "bench"
directory = "{path}"
start_at = "head"
"""

FILES_SOURCE = """[[source]]
type = "files"
name = "bench"
include = ["{path}"]
start_at = "beginning"
"""

MOCK_SINK = """brokers = ["mock"]
[sink.librdkafka]
"test.mock.num.brokers" = "1"
"""
# --set KEY=VALUE: extra librdkafka properties.
EXTRA = ""


def run_perapera(work, name, source, sink, expected, topic="bench"):
    """Ships `expected` entries; returns the measurement (and the state dir, for idle)."""
    state = os.path.join(work, name, "state")
    os.makedirs(state)
    port = free_port()
    path = os.path.join(work, name, "perapera.toml")
    with open(path, "w") as f:
        f.write(config(state, port, source, sink, topic))
    logf = open(os.path.join(work, name, "perapera.log"), "w")
    r = measure([PERAPERA, "run", "-c", path], done=lambda: acked(port, "bench") >= expected,
                stdout=logf, stderr=logf)
    logf.close()
    if r.code != 0:
        sys.exit(f"bench: perapera ({name}) exited {r.code}; see {work}/{name}/perapera.log")
    r.port = port
    r.config = path
    r.log = os.path.join(work, name, "perapera.log")
    return r


def metric(port, series):
    """A series' value from /metrics (None while unreachable or absent)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def ticks_and_switches(pid):
    """CPU clock ticks of the process, and context switches summed over its threads (each a
    wake-up, near enough)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        switches += int(line.split()[1])
        except OSError:
            pass  # the thread ended
    return ticks, switches


def idle_use(r, settle, span):
    """perapera restarted on a run's config and checkpoint, with nothing left to ship: after
    `settle` seconds, its CPU share of one core, wake-ups a second and checkpoint writes over
    `span` seconds."""
    port = free_port()
    with open(r.config) as f:
        text = f.read()
    path = r.config + ".idle.toml"
    with open(path, "w") as f:
        f.write(text.replace(f'address = "127.0.0.1:{r.port}"', f'address = "127.0.0.1:{port}"'))
    with open(r.log, "a") as logf:
        p = subprocess.Popen([PERAPERA, "run", "-c", path], stdout=logf, stderr=logf)
        try:
            time.sleep(settle)
            t0, s0 = ticks_and_switches(p.pid)
            w0 = metric(port, "perapera_checkpoint_writes_total")
            time.sleep(span)
            t1, s1 = ticks_and_switches(p.pid)
            w1 = metric(port, "perapera_checkpoint_writes_total")
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
    hz = os.sysconf("SC_CLK_TCK")
    return {"cpu_pct": (t1 - t0) / hz / span * 100, "wakeups": (s1 - s0) / span,
            "writes": None if w0 is None or w1 is None else w1 - w0}


def idle_rss(r):
    """perapera restarted on a run's config and checkpoint: nothing left to ship. The RSS
    at 5 s, and the CPU seconds of those 5 s (start-up included)."""
    with open(r.log, "a") as logf:
        m = measure([PERAPERA, "run", "-c", r.config], idle_after=5.0, stdout=logf, stderr=logf)
    if m.idle is not None:
        m.idle["cpu"] = m.cpu
    return m.idle


KAFKA_LIBS = os.environ.get("PERAPERA_KAFKA_LIBS", os.path.join(ROOT, "target", "kafka", "libs"))


class Kafka:
    """A single-node Apache Kafka (KRaft, broker and controller in one JVM) from the jars
    scripts/deps.sh collects (tests/kafka/pom.xml), as tests/it/support/kafka.rs starts it."""

    def __init__(self, work):
        if not os.path.exists(os.path.join(KAFKA_LIBS, ".complete")):
            sys.exit(f"bench: no Kafka jars in {KAFKA_LIBS}: run scripts/deps.sh --bench")
        self.port, controller = free_port(), free_port()
        self.dir = os.path.join(work, "kafka")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        props = os.path.join(self.dir, "server.properties")
        with open(props, "w") as f:
            f.write(
                "process.roles=broker,controller\nnode.id=1\n"
                f"controller.quorum.voters=1@127.0.0.1:{controller}\n"
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller}\n"
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}\n"
                "inter.broker.listener.name=PLAINTEXT\ncontroller.listener.names=CONTROLLER\n"
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
                f"log.dirs={self.dir}/data\nnum.partitions=1\n"
                "offsets.topic.replication.factor=1\noffsets.topic.num.partitions=1\n"
                "transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n"
                "share.coordinator.state.topic.replication.factor=1\n"
                "share.coordinator.state.topic.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n"
                "auto.create.topics.enable=false\nlog.cleaner.dedupe.buffer.size=33554432\n")
        log4j = os.path.join(self.dir, "log4j2.yaml")
        with open(log4j, "w") as f:
            f.write("Configuration:\n  Appenders:\n    File:\n      name: F\n"
                    "      fileName: \"${sys:kafka.logs.dir}/server.log\"\n"
                    "      PatternLayout:\n        pattern: \"[%d] %p %m (%c)%n\"\n"
                    "  Loggers:\n    Root:\n      level: INFO\n      AppenderRef:\n        - ref: F\n")
        java = ["java", f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={self.dir}",
                "-cp", os.path.join(KAFKA_LIBS, "*")]
        subprocess.run(java + ["-Xmx256m", "kafka.tools.StorageTool", "format",
                               "-t", "bEnChMaRkcLuStErIdAAAA", "-c", props],
                       check=True, capture_output=True)
        self.logf = open(os.path.join(self.dir, "stdout.log"), "w")
        self.proc = subprocess.Popen(
            java + ["-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                    "-Djava.awt.headless=true", "kafka.Kafka", props],
            stdout=self.logf, stderr=self.logf)
        server_log = os.path.join(self.dir, "server.log")
        deadline = time.monotonic() + 90
        while True:
            try:
                with open(server_log) as f:
                    if "Kafka Server started" in f.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                sys.exit(f"bench: Kafka did not start; see {self.dir}/server.log")
            time.sleep(0.2)

    def create_topic(self, name, config=None):
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.port}"})
        for f in admin.create_topics([NewTopic(name, 1, 1, config=config or {})]).values():
            f.result(30)

    def count(self, topic, expected):
        """(records, distinct values) the broker holds in the topic (benches/count.py)."""
        out = subprocess.run([sys.executable, os.path.join(ROOT, "benches", "count.py"),
                              f"127.0.0.1:{self.port}", topic, str(expected)],
                             capture_output=True, text=True, check=True)
        records, distinct = out.stdout.split()
        return int(records), int(distinct)

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.logf.close()


# ---------------------------------------------------------------- main


def median(rs, attr):
    return statistics.median(getattr(r, attr) for r in rs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each mock/reference case (median reported)")
    ap.add_argument("--only", choices=["journal", "files"])
    ap.add_argument("--skip-kafka", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--smoke", action="store_true",
                    help="small data, one run, targets not checked (for ./test.sh)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra [sink.librdkafka] property for every perapera run, e.g. "
                    "compression.type=lz4 (repeatable)")
    args = ap.parse_args()

    global EXTRA, JOURNAL_ENTRIES, LOG_LINES, DATA
    if args.smoke:
        JOURNAL_ENTRIES, LOG_LINES = 5_000, 20_000
        DATA = os.path.join(DATA, "smoke")
        args.repeat = 1
    for kv in args.set:
        key, sep, value = kv.partition("=")
        if not sep:
            sys.exit(f"bench: --set {kv!r}: expected KEY=VALUE")
        EXTRA += f'"{key}" = "{value}"\n'
    if not os.access(PERAPERA, os.X_OK):
        sys.exit(f"bench: {PERAPERA} not found; run `make bench` (it builds it)")
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="perapera-bench-")
    rows = []
    checks = []
    do_journal = args.only in (None, "journal")
    do_files = args.only in (None, "files")
    n = max(1, args.repeat)

    def row(case, entries, r, note=""):
        rows.append({
            "case": case,
            "entries": entries,
            "cpu_s": round(r.cpu, 3),
            "user_s": round(r.user, 3),
            "sys_s": round(r.sys, 3),
            "wall_s": round(r.wall, 3),
            "us_per_entry": round(r.cpu / entries * 1e6, 3) if entries else "",
            "peak_rss_mib": round(r.peak_rss / MIB, 1) if r.peak_rss else "",
            "peak_anon_mib": round(r.peak_anon / MIB, 1) if r.peak_anon else "",
            "note": note,
        })

    def med(rs):
        return Result(cpu=median(rs, "cpu"), user=median(rs, "user"), sys=median(rs, "sys"),
                      wall=median(rs, "wall"), peak_rss=max(r.peak_rss for r in rs),
                      peak_anon=max(r.peak_anon for r in rs))

    def anon_check(name, m):
        checks.append((f"{name} -> Kafka (mock) anonymous RSS <= 50 MiB",
                       m.peak_anon <= 50 * MIB, f"{m.peak_anon / MIB:.1f} MiB"))

    idle = {}
    # Idle: a settle, then the measured span (60 s after 10 s; shorter for --smoke).
    settle, span = (1.0, 3.0) if args.smoke else (10.0, 60.0)
    idle_runs = []  # (case, a finished run whose config and checkpoint the idle agent reuses)

    def idle_checks(case, u):
        rows.append({"case": f"idle {span:.0f} s ({case})", "entries": 0,
                     "cpu_s": round(u["cpu_pct"] * span / 100, 3), "user_s": "", "sys_s": "",
                     "wall_s": span, "us_per_entry": "", "peak_rss_mib": "", "peak_anon_mib": "",
                     "note": f"{u['cpu_pct']:.3f} % of a core, {u['wakeups']:.1f} wake-ups/s, "
                             f"{u['writes']} checkpoint writes; after {settle:.0f} s"})
        checks.append((f"idle {case}: <= 0.1 % of one core", u["cpu_pct"] <= 0.1,
                       f"{u['cpu_pct']:.3f} %"))
        checks.append((f"idle {case}: <= 10 wake-ups a second", u["wakeups"] <= 10,
                       f"{u['wakeups']:.1f}/s"))
        checks.append((f"idle {case}: 0 checkpoint writes", u["writes"] == 0,
                       f"{u['writes']} in {span:.0f} s"))

    def measure_idle():
        for case, r in idle_runs:
            log(f"perapera idle ({case}): {settle:.0f} s settle, {span:.0f} s measured")
            idle_checks(case, idle_use(r, settle, span))

    if do_journal:
        for small in (False, True):
            jdir = journal_dir(small)
            what = "journal, small entries" if small else "journal"
            log(f"{what}: {JOURNAL_ENTRIES} entries, {du(jdir) / MIB:.0f} MiB in {jdir}")
            warm([jdir])
            ref = []
            mock = []
            for i in range(n):
                log(f"journalctl -o export ({what}), run {i + 1}/{n}")
                ref.append(measure(["journalctl", "-D", jdir, "-o", "export"]))
                log(f"perapera {what} -> Kafka (mock), run {i + 1}/{n}")
                mock.append(run_perapera(work, f"{'small' if small else 'journal'}-mock-{i}",
                                         JOURNAL_SOURCE.format(path=jdir), MOCK_SINK,
                                         JOURNAL_ENTRIES))
            ref_m, mock_m = med(ref), med(mock)
            ratio = mock_m.cpu / ref_m.cpu
            row(f"journalctl -o export (reference, {what})", JOURNAL_ENTRIES, ref_m,
                f"median of {n}")
            row(f"{what} -> kafka (in-process mock)", JOURNAL_ENTRIES, mock_m,
                f"median of {n}; {ratio:.2f} x journalctl export CPU")
            checks.append((f"{what} -> Kafka (mock) CPU <= 0.8 x journalctl -o export",
                           ratio <= 0.8, f"{ratio:.2f} x ({mock_m.cpu:.2f} / {ref_m.cpu:.2f} CPU-s)"))
            anon_check(what, mock_m)
            if not small:
                log("perapera idle on the journal (caught up), 5 s")
                idle["journal"] = idle_rss(mock[-1])
                idle_runs.append(("journal source, Kafka mock", mock[-1]))
    if do_files:
        path = access_log()
        log(f"access log: {LOG_LINES} lines, {du(path) / MIB:.0f} MiB ({du(path) / LOG_LINES:.0f} B/line)")
        warm([path])
        mock = []
        floor = []
        # Interleaved with the librdkafka-alone reference, as journalctl is with the journal.
        for i in range(n):
            log(f"perapera files -> Kafka (mock), run {i + 1}/{n}")
            mock.append(run_perapera(work, f"files-mock-{i}", FILES_SOURCE.format(path=path),
                                     MOCK_SINK, LOG_LINES))
            if os.access(FLOOR, os.X_OK):
                log(f"librdkafka alone (examples/librdkafka_floor), run {i + 1}/{n}")
                f = measure([FLOOR, path] + list(args.set))
                if f.code != 0:
                    sys.exit("bench: librdkafka_floor failed")
                floor.append(f)
        mock_m = med(mock)
        per_m = mock_m.cpu * 1_000_000 / LOG_LINES
        row("files -> kafka (in-process mock)", LOG_LINES, mock_m,
            f"median of {n}; {per_m:.2f} CPU-s per 1M lines")
        if floor:
            row("librdkafka alone, same messages (mock)", LOG_LINES, med(floor),
                f"median of {n}; reference: what the client library costs")
        if floor:
            floor_m = med(floor)
            fr = mock_m.cpu / floor_m.cpu
            checks.append(("files -> Kafka (mock) CPU <= 1.0 x librdkafka alone",
                           fr <= 1.0, f"{fr:.2f} x ({mock_m.cpu:.2f} / {floor_m.cpu:.2f} CPU-s)"))
        else:
            checks.append(("files -> Kafka (mock) CPU <= 1.0 x librdkafka alone", False,
                           f"not measured: {FLOOR} missing"))
        anon_check("files", mock_m)
        log("perapera idle on the log file (caught up), 5 s")
        idle["files"] = idle_rss(mock[-1])
        idle_runs.append(("files source, Kafka mock", mock[-1]))
    for name, s in idle.items():
        if s is None:
            checks.append((f"idle RSS ({name})", False, "not measured: perapera exited early"))
            continue
        rows.append({"case": f"idle after 5 s ({name} source, mock sink)", "entries": 0,
                     "cpu_s": round(s["cpu"], 3), "user_s": "", "sys_s": "", "wall_s": 5.0,
                     "us_per_entry": "",
                     "peak_rss_mib": round(s["VmRSS"] / MIB, 1),
                     "peak_anon_mib": round(s["RssAnon"] / MIB, 1), "note": "RSS at 5 s; CPU includes start-up"})
        checks.append((f"idle RSS ({name} source) <= 10 MiB", s["VmRSS"] <= 10 * MIB,
                       f"{s['VmRSS'] / MIB:.1f} MiB"))

    if not args.skip_kafka:
        kafka = Kafka(work)
        try:
            sink = f'brokers = ["127.0.0.1:{kafka.port}"]\n'
            cases = []
            if do_journal:
                cases.append(("journal", JOURNAL_SOURCE.format(path=journal_dir()), JOURNAL_ENTRIES))
            if do_files:
                cases.append(("files", FILES_SOURCE.format(path=access_log()), LOG_LINES))
            for name, source, entries in cases:
                topic = f"bench-{name}"
                kafka.create_topic(topic)
                log(f"perapera {name} -> Apache Kafka")
                before = kafka.cpu()
                r = run_perapera(work, f"{name}-kafka", source, sink, entries, topic)
                broker_cpu = kafka.cpu() - before
                records, distinct = kafka.count(topic, entries)
                row(f"{name} -> Apache Kafka (broker process)", entries, r,
                    f"consumed {records} records, {distinct} distinct; broker CPU {broker_cpu:.2f} s")
                checks.append((f"{name} -> Apache Kafka: every entry delivered", distinct == entries,
                               f"{distinct} of {entries} distinct entries consumed back "
                               f"({records} records)"))
                idle_runs.append((f"{name} source, Apache Kafka", r))
                # The same data exactly once (transactions), at the transaction intervals
                # compared; read back read_committed.
                for interval in (["1s"] if args.smoke else ["100ms", "1s"]):
                    tag = f"{name}-eos-{interval}"
                    topic = f"bench-{tag}"
                    kafka.create_topic(topic)
                    kafka.create_topic(f"cp-{tag}", {"cleanup.policy": "compact"})
                    log(f"perapera {name} -> Apache Kafka, exactly-once, transaction_interval {interval}")
                    eos = (sink + 'delivery = "exactly-once"\n'
                           f'transactional_id = "bench-{tag}"\ncheckpoint_topic = "cp-{tag}"\n'
                           f'transaction_interval = "{interval}"\n')
                    before = kafka.cpu()
                    e = run_perapera(work, tag, source, eos, entries, topic)
                    broker_cpu = kafka.cpu() - before
                    records, distinct = kafka.count(topic, entries)
                    row(f"{name} -> Apache Kafka, exactly-once, every {interval}", entries, e,
                        f"consumed {records} records, {distinct} distinct (read_committed); "
                        f"{(e.cpu / r.cpu if r.cpu else 0):.2f} x at-least-once CPU; "
                        f"broker CPU {broker_cpu:.2f} s")
                    checks.append((f"{name} -> Apache Kafka exactly-once ({interval}): every entry "
                                   "delivered once", distinct == entries and records == entries,
                                   f"{distinct} distinct of {entries}, {records} records"))
            measure_idle()  # while the broker runs: its idle cases need it
        finally:
            kafka.stop()
    else:
        measure_idle()

    # ------------------------------------------------------------ report
    fields = ["case", "entries", "cpu_s", "user_s", "sys_s", "wall_s", "us_per_entry",
              "peak_rss_mib", "peak_anon_mib", "note"]
    csv_path = os.path.join(OUT, "smoke.csv" if args.smoke else "results.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    headers = ["case", "entries", "CPU s", "user", "sys", "wall s", "µs/entry", "peak RSS MiB",
               "anon RSS MiB", "note"]
    table = [headers] + [[str(r[k]) for k in fields] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    print()
    for i, line in enumerate(table):
        print("| " + " | ".join(c.ljust(widths[j]) for j, c in enumerate(line)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print()
    failed = 0
    for what, ok, figure in checks:
        # Smoke mode checks only that everything was delivered, not the performance targets.
        enforced = not args.smoke or "delivered" in what
        failed += enforced and not ok
        verdict = ("PASS" if ok else "FAIL") if enforced else "----"
        print(f"{verdict}  {what}: {figure}")
    print(f"\nCSV: {csv_path}")
    with open(os.path.join(OUT, "smoke-checks.json" if args.smoke else "checks.json"), "w") as f:
        json.dump([{"check": c, "pass": ok, "figure": fig} for c, ok, fig in checks], f, indent=1)
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
