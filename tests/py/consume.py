#!/usr/bin/env python3
"""An independent consumer for the end-to-end tests: confluent-kafka (librdkafka 2.16) and
msgpack from PyPI. Reads every partition of the given topics from the beginning until
EXPECTED messages arrived (or a timeout), decodes each value, and prints one JSON summary."""
import json
import sys
import time

import msgpack
from confluent_kafka import Consumer, TopicPartition

bootstrap, expected, topics = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "perapera-py-check",
    "enable.auto.commit": False,
})
partitions = []
for topic in topics:
    meta = consumer.list_topics(topic, timeout=30)
    partitions += [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
consumer.assign(partitions)

seqs, problems = [], []
deadline = time.time() + 120
while len(seqs) < expected and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None:
        continue
    if msg.error():
        problems.append(str(msg.error()))
        continue
    value = msgpack.unpackb(msg.value(), raw=False)
    if not isinstance(value, dict):
        problems.append("value is not a map")
        continue
    seqs.append(int(value["SEQ"]))
    headers = dict(msg.headers() or [])
    ts_type, ts = msg.timestamp()
    source_time = value.get("_SOURCE_REALTIME_TIMESTAMP")
    want_ms = int(source_time) // 1000 if source_time else value["__REALTIME_TIMESTAMP"] // 1000
    if ts_type != 1 or ts != want_ms:
        problems.append(f"timestamp {ts_type}/{ts} != CreateTime {want_ms}")
    if headers.get("perapera-position") != value["__CURSOR"].encode():
        problems.append("perapera-position header differs from __CURSOR")
    if not isinstance(value["__REALTIME_TIMESTAMP"], int):
        problems.append("__REALTIME_TIMESTAMP is not an integer")
    if "BLOB" in value and value["BLOB"] != b"\x00\x01\xff\n\x00":
        problems.append(f"BLOB is {value['BLOB']!r}")
    if "TAG" in value and value["TAG"] != ["one", "two"]:
        problems.append(f"TAG is {value['TAG']!r}")
consumer.close()
print(json.dumps({
    "count": len(seqs),
    "distinct": len(set(seqs)),
    "problems": problems[:10],
}))
