"""Sends N events to a forward listener with the fluent-logger package (an independent
Forward-protocol client), then prints {"sent": N, "errors": E}.

Usage: python3 fluent_send.py PORT N TAG
"""
import json
import sys

from fluent import sender

port, n, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = sender.FluentSender(tag, host="127.0.0.1", port=port, nanosecond_precision=True, timeout=30)
errors = 0
for i in range(n):
    if not s.emit("ev", {"n": i, "src": "python", "text": "python event %d" % i, "nested": {"list": [1, 2.5, None, True]}}):
        errors += 1
        s.clear_last_error()
s.close()
print(json.dumps({"sent": n, "errors": errors}))
