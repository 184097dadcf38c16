#!/usr/bin/env python3
"""An independent consumer for the files end-to-end test: confluent-kafka and msgpack from
PyPI. Reads every partition of TOPIC from the beginning until EXPECTED messages arrived (or a
timeout), checks each record's shape, and prints one JSON summary with the count of each
message."""
import json
import sys
import time

import msgpack
from confluent_kafka import Consumer, TopicPartition

bootstrap, expected, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "perapera-py-files",
    "enable.auto.commit": False,
})
meta = consumer.list_topics(topic, timeout=30)
consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])

messages, problems, count = {}, [], 0
deadline = time.time() + 180
while count < expected and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None:
        continue
    if msg.error():
        problems.append(str(msg.error()))
        continue
    value = msgpack.unpackb(msg.value(), raw=False)
    count += 1
    if not isinstance(value, dict) or not isinstance(value.get("message"), str):
        problems.append(f"not a record with a str message: {value!r:.100}")
        continue
    messages[value["message"]] = messages.get(value["message"], 0) + 1
    headers = dict(msg.headers() or [])
    path, _, offset = headers.get("perapera-position", b"").decode().rpartition(":")
    if path != value.get("path") or not offset.isdigit():
        problems.append(f"perapera-position {headers.get('perapera-position')!r} != path:offset")
    if not value.get("host"):
        problems.append("no host field")
    if headers.get("content-type") != b"application/msgpack":
        problems.append("content-type header missing")
consumer.close()
print(json.dumps({"count": count, "problems": problems[:10], "messages": messages}))
