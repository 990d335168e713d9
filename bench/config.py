#!/usr/bin/env python3
"""How long `gateway --check` takes (median of ROUNDS runs, 5 by default), and how much memory it uses, on large
and hostile routes files: 20 000 to 100 000 routes (the bound), the alias
bomb (one anchored list of 100 000 roles referenced from 5 000 routes) and
a 100 000-deep flow sequence; then how long a running gateway takes from
SIGHUP to applying 20 000 and 100 000 routes. Prints Markdown tables.

    bench/config.py [GATEWAY_BINARY]    # default target/release/gateway
"""
import os
import resource
import signal
import socket
import urllib.request
import statistics
import subprocess
import sys
import tempfile
import time

HEAD = """auth:
  verify_url: http://127.0.0.1:9001/api/verify
upstreams:
  app: {servers: ["127.0.0.1:9101"]}
routes:
  - {prefix: /, upstream: app, access: public}
"""


def routes(n):
    # Every route lies inside `/`, a route of the other access: the
    # nesting warnings see the worst case.
    lines = [HEAD]
    for i in range(1, n):
        lines.append(f"  - {{prefix: /r/{i}, upstream: app, access: protected, methods: [GET]}}\n")
    return "".join(lines)


def bomb():
    roles = ",".join(f"r{i}" for i in range(100_000))
    lines = [HEAD, f"  - prefix: /a/0\n    upstream: app\n    access: protected\n    roles: &R [{roles}]\n"]
    for i in range(1, 5000):
        lines.append(f"  - {{prefix: /a/{i}, upstream: app, access: protected, roles: *R}}\n")
    return "".join(lines)


def deep():
    return HEAD + "x: " + "[" * 100_000 + "\n"


ROUNDS = int(os.environ.get("ROUNDS", "5"))


def run(binary, path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        done = subprocess.run([binary, "--check", "--config", path], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
    elapsed = statistics.median(times)
    # ru_maxrss of children is the largest child so far, in KiB.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    verdict = "ok" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[0][-90:]
    return elapsed, peak if peak > before else None, verdict


def metric(port, sample):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(sample):
                    return float(line.split()[-1])
    except OSError:
        pass
    return 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reload_time(binary, tmp, n):
    """Seconds from SIGHUP until a running gateway applied an n-route file."""
    path = os.path.join(tmp, "reload.yaml")
    with open(path, "w") as f:
        f.write(routes(2))
    port, metrics = free_port(), free_port()
    proc = subprocess.Popen(
        [binary, "--config", path, "--listen", f"127.0.0.1:{port}", "--metrics-listen",
         f"127.0.0.1:{metrics}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    try:
        deadline = time.time() + 30
        while metric(metrics, "portcullis_connections_open") == 0.0 and time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        with open(path + ".tmp", "w") as f:
            f.write(routes(n))
        os.rename(path + ".tmp", path)
        sample = 'portcullis_config_reloads_total{result="applied"}'
        started = time.perf_counter()
        proc.send_signal(signal.SIGHUP)
        while metric(metrics, sample) < 1.0:
            if time.perf_counter() - started > 60:
                return None
            time.sleep(0.01)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/gateway"
    if not os.path.exists(binary):
        sys.exit(f"{binary} is missing: cargo build --release -p gateway")
    cases = [(f"{n} routes", routes(n)) for n in (20_000, 40_000, 100_000)]
    cases += [("alias bomb (1 MB)", bomb()), ("100 000-deep flow sequence", deep())]
    print(f"`{binary} --check`, median of {ROUNDS} runs (peak RSS: the largest so far)\n")
    print("| file | size | time | peak RSS | verdict |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in cases:
            path = os.path.join(tmp, "routes.yaml")
            with open(path, "w") as f:
                f.write(text)
            elapsed, peak, verdict = run(binary, path)
            rss = f"{peak / 1024:.0f} MiB" if peak else "(below an earlier case)"
            print(f"| {name} | {len(text) / 1e6:.1f} MB | {elapsed:.2f} s | {rss} | {verdict} |")
        print("\nSIGHUP to a running gateway until the file is applied (parse, check, build, first health check):\n")
        print("| routes | time |")
        print("|---|---|")
        for n in (20_000, 100_000):
            took = reload_time(binary, tmp, n)
            print(f"| {n} | {took:.2f} s |" if took is not None else f"| {n} | not applied in 60 s |")


if __name__ == "__main__":
    main()
