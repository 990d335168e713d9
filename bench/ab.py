#!/usr/bin/env python3
"""Two gateway builds, A/B: many short loads, alternating, in one run.

    python3 bench/ab.py OLD_GATEWAY [NEW_GATEWAY] [--old-env K=V] [--new-env K=V]
                        [--old-server 'key: value'] [--new-server 'key: value']

NEW_GATEWAY defaults to target/release/gateway. One lever of configuration
rather than of build is measured with the same binary on both sides and an
environment variable (`--new-env RUST_LOG=info` turns the access log on) or a
line of the routes file's server section (`--new-server 'threads: 2'`) given
to one side only. Both run side by side in
front of the same echo backend and auth service, with the same routes file,
servers pinned to the first core and oha to the last (as bench/compare.py).
Each pair is one load on each (the order swapped every other pair), so drift
on a shared machine falls on both; per route, the median of the per-pair
ratios new ÷ old and its interquartile range. The whole is done twice, the
gateways started in one order and then the other, and the two medians are
combined (geometric mean) so that the order of start-up cancels out. PAIRS
(15) and DURATION (4s) tune the run; PLACEMENT=shared pins nothing (the
load generator then competes with the gateways for every core, as in
bench/compare.py's shared placement). Prints a Markdown table.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402  (the same process handling and loads)

PAIRS = int(os.environ.get("PAIRS", "15"))


def one_pass(sides, new_first, token, auth_pid):
    """Per-pair ratios new ÷ old for each route, with the two gateways
    started in the given order. `sides` maps old/new to (binary, routes, env)."""
    ports = {"old": c.free_port(), "new": c.free_port()}
    order = ("new", "old") if new_first else ("old", "new")
    procs = {}
    for side in order:
        binary, routes, env = sides[side]
        procs[side] = c.start_gateway(side, routes, ports[side], binary=binary, env=env)
    pids = {side: c.tree(proc.pid) + c.tree(auth_pid) for side, proc in procs.items()}
    found = {}
    for label, path, tok in (("public route", "/public/x", None), ("protected route", "/api/echo/x", token)):
        ratios, rps = [], {"old": [], "new": []}
        for i in range(PAIRS):
            for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
                r = c.measure("oha", f"http://127.0.0.1:{ports[side]}{path}", pids[side], token=tok)
                if r["errors"]:
                    raise SystemExit(f"ab: {side} {label}: {r['errors']} errors")
                rps[side].append(r["rps"])
            ratios.append(rps["new"][-1] / rps["old"][-1])
            c.log(f"{label} ({'new' if new_first else 'old'} started first) pair {i + 1}/{PAIRS}: "
                  f"old {rps['old'][-1]:.0f}, new {rps['new'][-1]:.0f} req/s, new/old {ratios[-1]:.3f}")
        found[label] = (statistics.median(rps["old"]), statistics.median(rps["new"]), ratios)
    for proc in procs.values():
        c.stop(proc)
    return found


def environment(pairs):
    env = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default=os.path.join(c.RELEASE, "gateway"))
    for side in ("old", "new"):
        parser.add_argument(f"--{side}-env", action="append", default=[], metavar="K=V")
        parser.add_argument(f"--{side}-server", action="append", default=[], metavar="LINE")
    args = parser.parse_args()
    c.place(os.environ.get("PLACEMENT", "pinned"))
    old, new = os.path.abspath(args.old), os.path.abspath(args.new)
    duration = os.environ.get("DURATION", "4s")
    c.DURATION = duration
    p = {name: c.free_port() for name in ("echo", "auth")}
    c.start("echo", [os.path.join(c.RELEASE, "echo"), "--listen", f"127.0.0.1:{p['echo']}"], p["echo"])
    secret = c.secrets.token_hex(32)
    auth = c.start("auth", [os.path.join(c.RELEASE, "auth-service"), "--listen", f"127.0.0.1:{p['auth']}"],
                   p["auth"], env={"JWT_SECRET_KEY": secret, "DATABASE_URL": f"sqlite://{c.WORK}/auth.db",
                                   "RUST_LOG": "warn"})
    sides = {
        "old": (old, c.gateway_routes(p["auth"], p["echo"], capacity=100_000, server=args.old_server),
                environment(args.old_env)),
        "new": (new, c.gateway_routes(p["auth"], p["echo"], capacity=100_000, server=args.new_server),
                environment(args.new_env)),
    }
    reply = c.http("POST", f"http://127.0.0.1:{p['auth']}/api/register",
                   {"email": "ab@example.com", "password": "benchmark password"})
    token = reply["access"]
    # Two passes, the gateways started in both orders: a process started
    # second was seen to run a few per cent slower whatever its build, and
    # the geometric mean of the two passes cancels that out.
    passes = [one_pass(sides, False, token, auth.pid), one_pass(sides, True, token, auth.pid)]
    described = {side: " ".join([f"`{path}`", *args_of(args, side)]) for side, path in (("old", old), ("new", new))}
    print(f"old: {described['old']}; new: {described['new']}. Per route and pass, {PAIRS} pairs of {duration} oha loads, "
          "50 connections, " + (f"servers on cpu {c.SERVER_CPUS}, oha on cpu {c.LOAD_CPUS}"
                                if c.PLACEMENT == "pinned" else "nothing pinned")
          + "; the order within a pair alternates.\n")
    print("| route | old req/s | new req/s | new ÷ old, old started first | new ÷ old, new started first "
          "| new ÷ old (both orders) |")
    print("|---|---|---|---|---|---|")
    for label in passes[0]:
        rows = [run[label] for run in passes]
        medians = [statistics.median(r[2]) for r in rows]
        iqr = [statistics.quantiles(r[2], n=4) for r in rows]
        combined = (medians[0] * medians[1]) ** 0.5
        old_rps = statistics.median([rows[0][0], rows[1][0]])
        new_rps = statistics.median([rows[0][1], rows[1][1]])
        cells = [f"{m:.3f} ({q[0]:.3f} – {q[2]:.3f})" for m, q in zip(medians, iqr)]
        print(f"| {label} | {c.fmt(old_rps)} | {c.fmt(new_rps)} | {cells[0]} | {cells[1]} | {combined:.3f} |")


def args_of(args, side):
    return [f"`{e}`" for e in getattr(args, f"{side}_env")] + [f"`server.{l}`" for l in getattr(args, f"{side}_server")]


if __name__ == "__main__":
    try:
        main()
    finally:
        c.stop_all()
