#!/usr/bin/env python3
"""Fetches a Prometheus /metrics URL and parses it with the reference Python client's
text-format parser (prometheus_client), an implementation independent of perapera's.

Prints one JSON object: {"families": {name: type}, "samples": [[name, labels, value]]}.
Exits non-zero (with the parser's error) if the exposition does not parse.
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=10) as r:
        ctype = r.headers.get("Content-Type", "")
        text = r.read().decode("utf-8")
    if not ctype.startswith("text/plain"):
        sys.exit(f"unexpected Content-Type {ctype!r}")
    families = {}
    samples = []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for s in family.samples:
            samples.append([s.name, s.labels, s.value])
    print(json.dumps({"families": families, "samples": samples, "text": text}))


if __name__ == "__main__":
    main()
