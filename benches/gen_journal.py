#!/usr/bin/env python3
"""Writes N journal entries in journal export format to stdout, for systemd-journal-remote.

The entries look like what journald stores on a busy server: about 25 fields each, the
trusted fields of some 40 services (pid, uid, comm, exe, cmdline, cgroup, unit, slice,
invocation id, capabilities), stdout, native and syslog transports, a varied MESSAGE of
30 to 300 bytes (one in a hundred multi-line, so binary export framing is exercised), and
CODE_* / MESSAGE_ID on native entries. Deterministic for a given seed.

With `small`, entries as a quiet service logs them: 10 fields, a MESSAGE of 40 to 120 bytes.

Usage: gen_journal.py ENTRIES [SEED] [small] | systemd-journal-remote --output=DIR/bench.journal -
"""
import random
import struct
import sys

N = int(sys.argv[1])
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 7)
SMALL = len(sys.argv) > 3 and sys.argv[3] == "small"
out = sys.stdout.buffer

BOOT = "3f1c0e9a5b7d4e2f9a8b6c5d4e3f2a1b"
MACHINE = "9c2a7e5f3b1d4c6e8f0a2b4c6d8e0f1a"
HOST = "web-17.fra2.example.net"

PROGRAMS = [
    ("nginx", "/usr/sbin/nginx", "nginx: worker process", "nginx.service", "system.slice", 33),
    ("sshd", "/usr/sbin/sshd", "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups", "ssh.service", "system.slice", 0),
    ("systemd", "/usr/lib/systemd/systemd", "/sbin/init", "init.scope", "-.slice", 0),
    ("cron", "/usr/sbin/cron", "/usr/sbin/cron -f", "cron.service", "system.slice", 0),
    ("postgres", "/usr/lib/postgresql/15/bin/postgres", "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main -c config_file=/etc/postgresql/15/main/postgresql.conf", "postgresql@15-main.service", "system.slice", 104),
    ("dockerd", "/usr/bin/dockerd", "/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock", "docker.service", "system.slice", 0),
    ("containerd", "/usr/bin/containerd", "/usr/bin/containerd", "containerd.service", "system.slice", 0),
    ("kubelet", "/usr/bin/kubelet", "/usr/bin/kubelet --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml", "kubelet.service", "system.slice", 0),
    ("java", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "java -Xmx2g -jar /opt/app/orders-service.jar --spring.profiles.active=prod", "orders.service", "app.slice", 1001),
    ("python3", "/usr/bin/python3.11", "/usr/bin/python3 -m gunicorn -w 4 -b 127.0.0.1:8000 billing.wsgi", "billing.service", "app.slice", 1002),
    ("node", "/usr/bin/node", "node /srv/frontend/server.js", "frontend.service", "app.slice", 1003),
    ("systemd-resolved", "/usr/lib/systemd/systemd-resolved", "/lib/systemd/systemd-resolved", "systemd-resolved.service", "system.slice", 102),
    ("chronyd", "/usr/sbin/chronyd", "/usr/sbin/chronyd -F 1", "chrony.service", "system.slice", 105),
    ("rsyslogd", "/usr/sbin/rsyslogd", "/usr/sbin/rsyslogd -n -iNONE", "rsyslog.service", "system.slice", 0),
    ("haproxy", "/usr/sbin/haproxy", "/usr/sbin/haproxy -Ws -f /etc/haproxy/haproxy.cfg -p /run/haproxy.pid -S /run/haproxy-master.sock", "haproxy.service", "system.slice", 0),
    ("redis-server", "/usr/bin/redis-server", "/usr/bin/redis-server 127.0.0.1:6379", "redis-server.service", "system.slice", 106),
]
# 40 running instances of those programs, each with its own pid and invocation id.
SERVICES = []
for i in range(40):
    comm, exe, cmdline, unit, slc, uid = PROGRAMS[i % len(PROGRAMS)]
    SERVICES.append({
        "comm": comm, "exe": exe, "cmdline": cmdline, "unit": unit, "slice": slc, "uid": uid,
        "pid": rng.randrange(300, 4_000_000),
        "invocation": "%032x" % rng.getrandbits(128),
        "stream": "%032x" % rng.getrandbits(128),
        "transport": rng.choice(["stdout", "stdout", "journal", "syslog"]),
    })
WEIGHTS = [rng.randrange(1, 50) for _ in SERVICES]

PATHS = ["/api/v1/orders", "/api/v1/users/{}", "/static/app.{}.js", "/healthz", "/api/v2/search?q={}", "/login"]
WORDS = ("request completed connection accepted timeout retry upstream cache miss hit user "
         "session token refreshed queue depth worker started stopped flushed batch commit "
         "rollback latency bytes sent received checkpoint vacuum replication lag ok failed").split()


def message(svc):
    k = rng.randrange(8)
    if k == 0:
        return '%d.%d.%d.%d - - "GET %s HTTP/1.1" %d %d %.3f' % (
            rng.randrange(1, 255), rng.randrange(256), rng.randrange(256), rng.randrange(256),
            rng.choice(PATHS).format(rng.randrange(100000)), rng.choice([200, 200, 200, 304, 404, 500]),
            rng.randrange(100, 90000), rng.random())
    if k == 1:
        return "Accepted publickey for deploy from 10.%d.%d.%d port %d ssh2: ED25519 SHA256:%s" % (
            rng.randrange(256), rng.randrange(256), rng.randrange(256), rng.randrange(1024, 65535),
            "%043x" % rng.getrandbits(172))
    if k == 2:
        return "Started %s - %s." % (svc["unit"], " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 6))))
    if k == 3:
        return "level=info ts=2026-11-28T07:%02d:%02d.%03dZ caller=%s.go:%d msg=\"%s\" duration=%dms" % (
            rng.randrange(60), rng.randrange(60), rng.randrange(1000), rng.choice(WORDS),
            rng.randrange(1, 900), " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12))),
            rng.randrange(1, 5000))
    if k == 4 and rng.randrange(12) == 0:
        lines = ["Exception in thread \"worker-%d\" java.lang.IllegalStateException: %s" % (
            rng.randrange(64), " ".join(rng.choice(WORDS) for _ in range(5)))]
        lines += ["\tat com.example.orders.%s.%s(%s.java:%d)" % (
            rng.choice(WORDS).title(), rng.choice(WORDS), rng.choice(WORDS).title(), rng.randrange(1, 999))
            for _ in range(rng.randrange(3, 9))]
        return "\n".join(lines)
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 40)))


def field(name, value):
    v = value.encode()
    if b"\n" in v:
        out.write(name.encode() + b"\n" + struct.pack("<Q", len(v)) + v + b"\n")
    else:
        out.write(name.encode() + b"=" + v + b"\n")


realtime = 1_795_000_000_000_000
monotonic = 86_400_000_000
for n in range(N):
    step = rng.randrange(1, 4000)
    realtime += step
    monotonic += step
    svc = rng.choices(SERVICES, WEIGHTS)[0]
    if SMALL:
        field("__REALTIME_TIMESTAMP", str(realtime))
        field("__MONOTONIC_TIMESTAMP", str(monotonic))
        field("_BOOT_ID", BOOT)
        field("_HOSTNAME", HOST)
        field("_TRANSPORT", svc["transport"])
        field("PRIORITY", str(rng.choice([6, 6, 6, 6, 5, 4, 3, 7])))
        field("SYSLOG_IDENTIFIER", svc["comm"])
        field("_PID", str(svc["pid"]))
        field("_UID", str(svc["uid"]))
        field("_COMM", svc["comm"][:15])
        field("_SYSTEMD_UNIT", svc["unit"])
        text = " ".join(rng.choice(WORDS) for _ in range(24))
        field("MESSAGE", text[:rng.randrange(40, 121)].strip())
        out.write(b"\n")
        continue
    field("__REALTIME_TIMESTAMP", str(realtime))
    field("__MONOTONIC_TIMESTAMP", str(monotonic))
    field("_BOOT_ID", BOOT)
    field("_MACHINE_ID", MACHINE)
    field("_HOSTNAME", HOST)
    field("_TRANSPORT", svc["transport"])
    field("PRIORITY", str(rng.choice([6, 6, 6, 6, 5, 4, 3, 7])))
    field("SYSLOG_FACILITY", "3")
    field("SYSLOG_IDENTIFIER", svc["comm"])
    field("_PID", str(svc["pid"]))
    field("_UID", str(svc["uid"]))
    field("_GID", str(svc["uid"]))
    field("_COMM", svc["comm"][:15])
    field("_EXE", svc["exe"])
    field("_CMDLINE", svc["cmdline"])
    field("_CAP_EFFECTIVE", "0" if svc["uid"] else "1ffffffffff")
    field("_SYSTEMD_CGROUP", "/%s/%s" % (svc["slice"], svc["unit"]))
    field("_SYSTEMD_UNIT", svc["unit"])
    field("_SYSTEMD_SLICE", svc["slice"])
    field("_SYSTEMD_INVOCATION_ID", svc["invocation"])
    if svc["transport"] == "stdout":
        field("_STREAM_ID", svc["stream"])
    elif svc["transport"] == "syslog":
        field("SYSLOG_PID", str(svc["pid"]))
        field("SYSLOG_TIMESTAMP", "Nov 28 07:%02d:%02d " % (rng.randrange(60), rng.randrange(60)))
    else:
        field("_SOURCE_REALTIME_TIMESTAMP", str(realtime - rng.randrange(1, 200)))
        field("CODE_FILE", "src/%s/%s.c" % (svc["comm"], rng.choice(WORDS)))
        field("CODE_LINE", str(rng.randrange(1, 3000)))
        field("CODE_FUNC", "%s_%s" % (rng.choice(WORDS), rng.choice(WORDS)))
        if rng.randrange(4) == 0:
            field("MESSAGE_ID", "39f53479d3a045ac8e11786248231fbf")
    field("MESSAGE", message(svc))
    out.write(b"\n")
