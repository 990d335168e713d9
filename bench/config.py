#!/usr/bin/env python3
"""How long `gateway --check` takes, and how much memory it uses, on large
and hostile routes files: 20 000 to 100 000 routes (the bound), the alias
bomb (one anchored list of 100 000 roles referenced from 5 000 routes) and
a 100 000-deep flow sequence. Prints a Markdown table.

    bench/config.py [GATEWAY_BINARY]    # default target/release/gateway
"""
import os
import resource
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


def run(binary, path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run([binary, "--check", "--config", path], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    # ru_maxrss of children is the largest child so far, in KiB.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    verdict = "ok" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[0][-90:]
    return elapsed, peak if peak > before else None, verdict


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/gateway"
    if not os.path.exists(binary):
        sys.exit(f"{binary} is missing: cargo build --release -p gateway")
    cases = [(f"{n} routes", routes(n)) for n in (20_000, 40_000, 100_000)]
    cases += [("alias bomb (1 MB)", bomb()), ("100 000-deep flow sequence", deep())]
    print(f"`{binary} --check`, one run each (peak RSS: the largest so far)\n")
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


if __name__ == "__main__":
    main()
