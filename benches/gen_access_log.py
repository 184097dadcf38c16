#!/usr/bin/env python3
"""Writes N lines of an nginx/Apache combined access log (about 200 bytes a line) to stdout.
Deterministic for a given seed.

Usage: gen_access_log.py LINES [SEED] > access.log
"""
import random
import sys

N = int(sys.argv[1])
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 11)
out = sys.stdout

PATHS = ["/", "/index.html", "/api/v1/orders/%d", "/api/v1/users/%d/profile", "/static/js/app.%x.js",
         "/static/css/site.%x.css", "/images/p/%d.webp", "/search?q=item%d&page=2", "/healthz", "/cart/add/%d"]
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/7.88.1", "kube-probe/1.30", "Prometheus/2.42.0",
]
REFERERS = ["-", "https://www.example.com/", "https://www.example.com/search?q=shoes", "https://news.example.org/a/123"]

second = 0
buf = []
for i in range(N):
    if rng.randrange(20) == 0:
        second += 1
    path = rng.choice(PATHS)
    if "%" in path:
        path = path % rng.randrange(1, 10_000_000)
    line = '%d.%d.%d.%d - %s [28/Nov/2026:%02d:%02d:%02d +0000] "%s %s HTTP/1.1" %d %d "%s" "%s" %.3f req=%016x' % (
        rng.randrange(1, 224), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255),
        rng.choice(["-", "-", "-", "alice", "bob"]),
        (second // 3600) % 24, (second // 60) % 60, second % 60,
        rng.choice(["GET", "GET", "GET", "POST", "HEAD"]), path,
        rng.choice([200, 200, 200, 200, 301, 304, 404, 500]), rng.randrange(0, 200_000),
        rng.choice(REFERERS), rng.choice(AGENTS), rng.random(), rng.getrandbits(64))
    buf.append(line)
    if len(buf) == 10000:
        out.write("\n".join(buf) + "\n")
        buf = []
if buf:
    out.write("\n".join(buf) + "\n")
