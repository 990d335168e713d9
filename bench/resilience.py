#!/usr/bin/env python3
"""Upstream resilience, measured (release binaries):

1. A pool of three echo servers, one answering 503 to half its requests
   (five at a time): the share of 1 000 GETs that fail for the client,
   through a gateway without `retry`/`passive_health` and through one with
   both.
2. `limits: {max_pending: 10}` in front of a server that accepts
   connections and never answers: 100 concurrent clients, how soon the 90
   shed ones are answered 503, and the gateway's resident memory.
3. The latency a shared (Redis) rate-limit check adds: the same public
   route limited locally and with `store: redis` (the real Redis at
   REDIS_URL, default 127.0.0.1:6379), under `oha` (p50/p99, req/s).

    cargo build --release -p gateway -p echo && python3 bench/resilience.py
"""

import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
DURATION = os.environ.get("DURATION", "10s")
WORK = tempfile.mkdtemp(prefix="portcullis-resilience-")
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, port, env=None):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn", **(env or {})})
    PROCS.append(proc)
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"resilience: {argv[0]} exited early")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    sys.exit(f"resilience: nothing on {port}")


def gateway(routes_text, env=None):
    port = free_port()
    path = os.path.join(WORK, f"routes-{port}.yaml")
    with open(path, "w") as f:
        f.write(f"server:\n  upgrade_sock: {WORK}/up-{port}.sock\n" + routes_text)
    start([os.path.join(RELEASE, "gateway"), "--config", path, "--listen", f"127.0.0.1:{port}"], port, env)
    return port


def failures(port, n=1000):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    failed = 0
    for _ in range(n):
        conn.request("GET", "/public/x")
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            failed += 1
    conn.close()
    return failed


def oha(url):
    out = subprocess.run(["oha", "--no-tui", "--output-format", "json", "-z", DURATION, "-c", "50", url],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    p = r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    return r["summary"]["requestsPerSec"], p["p50"] * 1000, p["p99"] * 1000, codes


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def shedding():
    import threading
    hung = socket.socket()
    hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hung.bind(("127.0.0.1", 0))
    hung.listen(1024)
    held = []

    def accept():
        while True:
            try:
                held.append(hung.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    port = gateway("auth:\n  verify_url: http://127.0.0.1:9/api/verify\nupstreams:\n  hung:\n"
                   f"    servers: [\"127.0.0.1:{hung.getsockname()[1]}\"]\n    read_timeout: 5s\n"
                   "    limits: { max_pending: 10 }\nroutes:\n  - { prefix: /public, upstream: hung, access: public }\n")
    gw = PROCS[-1]
    before = rss_kb(gw.pid)
    results = []
    lock = threading.Lock()

    def one():
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/public/x")
        status = conn.getresponse().status
        with lock:
            results.append((status, time.monotonic() - start))
    threads = [threading.Thread(target=one) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = rss_kb(gw.pid)
    shed = sorted(d for s, d in results if s == 503)
    other = [s for s, _ in results if s != 503]
    print("| 100 clients, `max_pending: 10`, a server that never answers | |")
    print("|---|---|")
    print(f"| answered 503 at once | {len(shed)} |")
    if shed:
        print(f"| their answer time, median / max | {shed[len(shed) // 2] * 1000:.1f} ms / {shed[-1] * 1000:.1f} ms |")
    print(f"| the others | {len(other)}, answered {sorted(set(other))} after the 5 s read timeout |")
    print(f"| gateway RSS before / after | {before / 1024:.1f} MB / {after / 1024:.1f} MB |")
    hung.close()
    print()


def main():
    echoes = []
    for fail in (5, 0, 0):
        port = free_port()
        argv = [os.path.join(RELEASE, "echo"), "--listen", f"127.0.0.1:{port}"]
        if fail:
            argv += ["--fail-runs", str(fail)]
        start(argv, port)
        echoes.append(port)
    servers = ", ".join(f'"127.0.0.1:{p}"' for p in echoes)
    base = ("auth:\n  verify_url: http://127.0.0.1:9/api/verify\nupstreams:\n  app:\n"
            f"    servers: [{servers}]\n{{extra}}routes:\n  - {{{{ prefix: /public, upstream: app, access: public }}}}\n")
    off = gateway(base.format(extra=""))
    on = gateway(base.format(extra="    retry: { attempts: 3, on: [connect_error, reset, 503], budget: 20% }\n"
                                   "    passive_health: { consecutive_failures: 3, base_ejection: 30s }\n"))
    print("| pool of three, one answering 503 to half its requests | client errors of 1 000 GETs |")
    print("|---|---:|")
    for label, port in (("no retry, no passive health", off), ("retry (20 % budget) + passive health", on)):
        n = failures(port)
        print(f"| {label} | {n} ({n / 10:.1f} %) |")

    print()
    shedding()
    namespace = "bench-" + secrets.token_hex(4)
    limit = "rate_limit: {{ per_ip: {{ requests: 1000000, per: 1s{store} }} }}"
    limited = ("auth:\n  verify_url: http://127.0.0.1:9/api/verify\nupstreams:\n  app:\n"
               f"    servers: [\"127.0.0.1:{echoes[1]}\"]\nroutes:\n"
               f"  - {{ prefix: /local, upstream: app, access: public, {limit.format(store='')} }}\n"
               f"  - {{ prefix: /shared, upstream: app, access: public, {limit.format(store=', store: redis')} }}\n"
               f"  - {{ prefix: /none, upstream: app, access: public }}\n")
    port = gateway(limited, {"REDIS_URL": REDIS_URL, "RATE_LIMIT_NAMESPACE": namespace})
    print()
    print(f"| route (oha -c 50 -z {DURATION}) | req/s | p50 ms | p99 ms | statuses |")
    print("|---|---:|---:|---:|---|")
    for path in ("/none/x", "/local/x", "/shared/x"):
        rps, p50, p99, codes = oha(f"http://127.0.0.1:{port}{path}")
        print(f"| {path.split('/')[1]} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {codes} |".replace(",", " "))


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in PROCS:
            p.terminate()
            p.wait()
