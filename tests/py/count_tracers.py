#!/usr/bin/env python3
"""Counts the chaos test's tracers in a topic with an independent client (confluent-kafka +
msgpack from PyPI). Reads every partition from the beginning until EXPECTED distinct tracers
were seen and the topic stayed quiet for 5 s, or 120 s passed. A journal tracer is its SEQ
field ("j<SEQ>"), a file tracer its message ("f-<n>").

Usage: count_tracers.py BOOTSTRAP TOPIC EXPECTED [ISOLATION]
ISOLATION is read_committed (librdkafka's default) or read_uncommitted.
Prints {"counts": {tracer: n}, "copies": {tracer: [[partition, offset], ...]} (duplicated
tracers only), "problems": [...]}.
"""
import json
import sys
import time

import msgpack
from confluent_kafka import Consumer, TopicPartition

bootstrap, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
isolation = sys.argv[4] if len(sys.argv) > 4 else "read_committed"
consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "perapera-chaos-count",
    "enable.auto.commit": False,
    "isolation.level": isolation,
})
meta = consumer.list_topics(topic, timeout=30)
consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
counts, problems, where = {}, [], {}
deadline = time.time() + 120
quiet_since = time.time()
while time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None:
        if len(counts) >= expected and time.time() - quiet_since > 5:
            break
        continue
    if msg.error():
        problems.append(str(msg.error()))
        continue
    quiet_since = time.time()
    value = msgpack.unpackb(msg.value(), raw=False)
    if "SEQ" in value:
        tracer = "j" + str(value["SEQ"])
    else:
        m = value.get("message")
        tracer = m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m)
    counts[tracer] = counts.get(tracer, 0) + 1
    where.setdefault(tracer, []).append([msg.partition(), msg.offset()])
consumer.close()
copies = {t: w for t, w in where.items() if len(w) > 1}
print(json.dumps({"counts": counts, "copies": copies, "problems": problems[:10]}))
