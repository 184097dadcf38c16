"""A minimal Fluentd Forward protocol v1 receiver written from the specification, for testing
a sender's at-least-once behaviour. It accepts Message, Forward, PackedForward and
CompressedPackedForward requests and misbehaves on purpose, by request number:

- every 5th request: closes the connection without an ack;
- every 7th: answers the ack only after DELAY seconds (beyond the sender's ack timeout);
- every 11th: answers {} (a negative ack, as Vector does);
- otherwise: answers {"ack": chunk}.

Every event received is appended to OUT as one JSON line {"message": ..., "tag": ...,
"acked": bool}. On SIGTERM it writes {"requests": R, "misbehaved": M} to OUT.stats and exits.

Usage: python3 flaky_receiver.py PORT OUT DELAY
"""
import gzip
import json
import signal
import socket
import sys
import threading
import time

import msgpack

port, out_path, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
lock = threading.Lock()
state = {"requests": 0, "misbehaved": 0}
out = open(out_path, "a")


def ext_hook(code, data):
    return msgpack.ExtType(code, data)


def entries_of(req):
    tag, second = req[0], req[1]
    option = {}
    if isinstance(second, (int, float, msgpack.ExtType)):
        option = req[3] if len(req) > 3 else {}
        return tag, [[second, req[2]]], option
    option = req[2] if len(req) > 2 else {}
    if isinstance(second, list):
        return tag, second, option
    data = bytes(second)
    if option.get("compressed") == "gzip":
        data = gzip.decompress(data)
    unpacker = msgpack.Unpacker(raw=False, ext_hook=ext_hook, strict_map_key=False)
    unpacker.feed(data)
    return tag, list(unpacker), option


def serve(conn):
    unpacker = msgpack.Unpacker(raw=False, ext_hook=ext_hook, strict_map_key=False)
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            unpacker.feed(data)
            for req in unpacker:
                if req is None:
                    continue
                tag, events, option = entries_of(req)
                with lock:
                    state["requests"] += 1
                    k = state["requests"]
                chunk = option.get("chunk")
                action = "ack"
                if k % 5 == 0:
                    action = "close"
                elif k % 7 == 0:
                    action = "delay"
                elif k % 11 == 0:
                    action = "nack"
                with lock:
                    if action != "ack":
                        state["misbehaved"] += 1
                    for _, record in events:
                        msg = record.get("message")
                        if isinstance(msg, bytes):
                            msg = msg.decode("utf-8", "replace")
                        out.write(json.dumps({"message": msg, "tag": tag, "acked": action in ("ack", "delay")}) + "\n")
                    out.flush()
                if action == "close":
                    return
                if action == "delay":
                    time.sleep(delay)
                if action == "nack":
                    conn.sendall(msgpack.packb({}))
                    return
                if chunk is not None:
                    conn.sendall(msgpack.packb({"ack": chunk}))
    except OSError:
        return
    finally:
        conn.close()


def stop(*_):
    with lock:
        with open(out_path + ".stats", "w") as f:
            json.dump(state, f)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
srv.settimeout(0.5)
print("listening", flush=True)
deadline = time.time() + 600  # always terminates on its own
while time.time() < deadline:
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        continue
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
stop()
