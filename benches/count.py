#!/usr/bin/env python3
"""Counts what a broker holds in partition 0 of a topic, with an independent client
(confluent-kafka): prints `<records> <distinct values>`. Every benchmark entry is distinct (a
journal entry carries its `__CURSOR`, every access-log line its own `req=` id), so distinct
values are delivered entries, whatever the Kafka headers. Stops once `expected` distinct values
were seen, or after 10 s without a new record.

tansu 0.6's high watermark is not usable for this: with 100 000 records at offsets 0..99999
it reported 97 298.

Usage: count.py BOOTSTRAP TOPIC EXPECTED
"""
import hashlib
import sys
import time

from confluent_kafka import Consumer, TopicPartition

bootstrap, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "perapera-bench",
              "enable.auto.commit": False, "fetch.max.bytes": 50 * 1024 * 1024})
c.assign([TopicPartition(topic, 0, 0)])
records = 0
distinct = set()
last = time.monotonic()
while len(distinct) < expected and time.monotonic() - last < 10:
    for m in c.consume(10000, timeout=0.5):
        if m.error():
            print(f"count: {m.error()}", file=sys.stderr)
            continue
        last = time.monotonic()
        records += 1
        distinct.add(hashlib.blake2b(m.value(), digest_size=16).digest())
c.close()
print(records, len(distinct))
