#!/usr/bin/env python3
"""Where a proxy's CPU goes under load: `perf record` on one process while
oha loads it, then the functions that took most samples.

    python3 bench/profile.py gateway [--env K=V] [--route /public/x]
    python3 bench/profile.py floor

The echo backend and the auth service run as in bench/compare.py; the
profiled process is pinned to the first core and oha to the last. Samples
are taken on the CPU clock (no hardware counters are needed). Build with
`cargo build --profile release-perf` for line tables; the release binaries
carry their symbols too. TOP (40) and DURATION (8s) tune it.
"""

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", choices=("gateway", "floor"))
    parser.add_argument("--binary", help="the binary to profile (default: target/release/<system>)")
    parser.add_argument("--env", action="append", default=[], metavar="K=V")
    parser.add_argument("--route", default="/public/x")
    args = parser.parse_args()
    c.DURATION = os.environ.get("DURATION", "8s")
    top = int(os.environ.get("TOP", "40"))
    binary = os.path.abspath(args.binary or os.path.join(c.RELEASE, args.system))
    p = {name: c.free_port() for name in ("echo", "auth", "proxy")}
    c.start("echo", [os.path.join(c.RELEASE, "echo"), "--listen", f"127.0.0.1:{p['echo']}"], p["echo"])
    secret = c.secrets.token_hex(32)
    c.start("auth", [os.path.join(c.RELEASE, "auth-service"), "--listen", f"127.0.0.1:{p['auth']}"],
            p["auth"], env={"JWT_SECRET_KEY": secret, "DATABASE_URL": f"sqlite://{c.WORK}/auth.db",
                            "RUST_LOG": "warn"})
    token = None
    if args.system == "gateway":
        env = dict(pair.partition("=")[::2] for pair in args.env)
        proc = c.start_gateway("gateway", c.gateway_routes(p["auth"], p["echo"]), p["proxy"],
                               binary=binary, env=env)
        if args.route.startswith("/api/"):
            token = c.http("POST", f"http://127.0.0.1:{p['auth']}/api/register",
                           {"email": "profile@example.com", "password": "benchmark password"})["access"]
    else:
        proc = c.start("floor", [binary, "--listen", f"127.0.0.1:{p['proxy']}",
                                 "--upstream", f"127.0.0.1:{p['echo']}"], p["proxy"])
    data = os.path.join(c.WORK, "perf.data")
    seconds = c.DURATION.rstrip("s")
    perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4000", "-o", data,
                             "-p", str(proc.pid), "--", "sleep", seconds],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = c.run_oha(f"http://127.0.0.1:{p['proxy']}{args.route}", token)
    perf.wait()
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol",
                             "--stdio", "--percent-limit", "0.3"], capture_output=True, text=True).stdout
    # Rows are padded out to the widest symbol, with empty columns after.
    lines = [" ".join(l.split()).removesuffix(" - -") for l in report.splitlines()
             if l.strip() and not l.startswith("#")]
    print(f"{args.system} ({binary}) {args.route} {' '.join(args.env)}: {r['rps']:.0f} req/s under perf")
    print("\n".join(lines[:top]))
    print("\nBy crate (kernel, libc and the allocator apart):")
    full = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol", "--stdio"],
                          capture_output=True, text=True).stdout
    shares = {}
    for line in full.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].endswith("%") or line.startswith("#"):
            continue
        share, kind, symbol = float(parts[0][:-1]), parts[1], parts[2].strip()
        shares[crate(kind, symbol)] = shares.get(crate(kind, symbol), 0.0) + share
    for name, share in sorted(shares.items(), key=lambda kv: -kv[1])[:20]:
        print(f"{share:6.2f}%  {name}")


def crate(kind, symbol):
    """The crate a sampled symbol belongs to, as far as its name tells."""
    if kind == "[k]":
        return "kernel"
    symbol = symbol.lstrip("<").removeprefix("impl ")
    if symbol.startswith(("mi_", "_mi_")):
        return "mimalloc"
    if symbol.startswith("__") or "::" not in symbol:
        return "libc and other"
    return symbol.split("::")[0].split(" as ")[0]


if __name__ == "__main__":
    try:
        main()
    finally:
        c.stop_all()
