#!/usr/bin/env python3
"""What the gateway's OpenTelemetry tracing costs in throughput, latency and
CPU: the same loads with the routes file's `tracing:` section absent
(tracing off), with every request sampled and exported to a collector, with
1 % sampled, and with every request sampled but the collector down (its
address refusing connections), so that the cost of failed exports shows.

The collector is bench/otlp_sink.py, an OTLP/HTTP stand-in that reads and
counts what it is sent and answers 200; it runs on the load generator's
cores, as a collector would run elsewhere than the gateway. Each row is
measured on the protected route with one cached token (compare.py's
"protected, one token") and on the public route, with oha, ROUNDS rounds
(default 3) of DURATION (10s) with CONNECTIONS (50), the configurations
interleaved round by round. Every load gets a gateway of its own, started
afresh, so that its span counters (`portcullis_trace_spans_exported_total`,
`portcullis_trace_spans_dropped_total`) and the sink's count are that load's;
they are read once they have stopped moving (SETTLE seconds, default 3: the
exporter sends the tail of its queue on its one-second timer after the load).

Placement as bench/compare.py's `pinned` (PLACEMENT=shared pins nothing):
the gateway and the services on SERVER_CPUS, oha and the sink on LOAD_CPUS.
Writes bench/results/<date>-<machine>-tracing.md (machine: BENCH_MACHINE, or
<cores>core-<hostname>) and prints it. SETTLE_MAX (30) bounds the wait for
the counters; CARGO_TARGET_DIR and KEEP_WORK=1 as for compare.py.

MODE=pairs measures each traced configuration against tracing off with both
gateways running side by side, in PAIRS (8) pairs of DURATION (3s) loads
alternating, in both start orders (as bench/ab.py), and writes bench/results/<date>-<machine>-tracing-pairs.md: the
median per-pair ratio and its interquartile range, much less noisy than the
table's loads on gateways started afresh.

Needs release binaries (cargo build --release -p auth-service -p gateway -p echo),
oha (bench/compare.sh installs it) and taskset.
"""
import datetime, os, secrets, shutil, signal, socket, statistics, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c

SINK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "otlp_sink.py")
SETTLE = float(os.environ.get("SETTLE", "3"))
# A ceiling on that wait: exports to a collector that is down may keep
# failing (and counting) for a while, and the row must end.
SETTLE_MAX = float(os.environ.get("SETTLE_MAX", "30"))
BUILD = "cargo build --release -p auth-service -p gateway -p echo"
EXPORTED = "portcullis_trace_spans_exported_total"
DROPPED = "portcullis_trace_spans_dropped_total"

# (configuration, sampling ratio, collector): no ratio is no tracing section.
CONFIGS = [
    ("tracing off", None, None),
    ("100 % sampling, collector up", 1.0, "up"),
    ("1 % sampling, collector up", 0.01, "up"),
    ("100 % sampling, collector down", 1.0, "down"),
]
# (scenario, route, path, needs the token): compare.py's names.
ROUTES = [
    ("protected, one token", "protected route", "/api/echo/x", True),
    ("plain proxy", "public route", "/public/x", False),
]


def preflight():
    """Stops early, and says why, when something the run needs is missing."""
    missing = [os.path.join(c.RELEASE, name) for name in ("auth-service", "gateway", "echo")
               if not os.access(os.path.join(c.RELEASE, name), os.X_OK)]
    if missing:
        raise SystemExit(f"bench: missing release binaries: {', '.join(missing)}\n"
                         f"bench: build them first: {BUILD}")
    if not shutil.which("oha"):
        raise SystemExit("bench: oha is missing; bench/compare.sh installs it with "
                         "`cargo install --locked oha`")
    if c.PLACEMENT == "pinned" and not shutil.which("taskset"):
        raise SystemExit("bench: taskset is missing (util-linux; bench/compare.sh installs it), "
                         "or run with PLACEMENT=shared")
    # A gateway built before the tracing section refuses the file (unknown
    # keys are errors): better said now than as a failed start mid-run.
    routes = with_tracing(c.gateway_routes(c.free_port(), c.free_port()), 1.0, "http://127.0.0.1:4318")
    done = subprocess.run([os.path.join(c.RELEASE, "gateway"), "--check", "--config", routes],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench: {os.path.join(c.RELEASE, 'gateway')} refuses the `tracing:` section, "
                         f"an older build?\n{done.stderr.strip()}\nbench: rebuild: {BUILD}")


def with_tracing(routes, ratio, endpoint):
    """Appends the top-level `tracing:` section to a routes file made by
    c.gateway_routes (which ends with a newline, so it starts a new key)."""
    with open(routes, "a") as f:
        f.write("tracing:\n"
                f"  otlp_endpoint: {endpoint}\n"
                "  service_name: portcullis-gateway\n"
                f"  sampling_ratio: {ratio}\n")
    return routes


def sink_requests(port):
    return c.http("GET", f"http://127.0.0.1:{port}/stats")["requests"]


def settle(metrics_port, sink_port):
    """The gateway's span counters and the sink's request count once none
    of them has moved for SETTLE seconds (or SETTLE_MAX has passed)."""
    started = time.monotonic()
    last, since = None, started
    while True:
        now = (c.metric(metrics_port, EXPORTED), c.metric(metrics_port, DROPPED), sink_requests(sink_port))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE:
            return now
        if time.monotonic() - started >= SETTLE_MAX:
            c.log(f"  span counters still moving after {SETTLE_MAX:.0f} s; read as they are")
            return now
        time.sleep(0.25)


def one_load(name, routes, route, token, auth_pid, sink_port, traced):
    """A fresh gateway, one oha load on `route`, its counters, and the
    gateway stopped again."""
    port, metrics = c.free_port(), c.free_port()
    gw = c.start_gateway(name, routes, port, env={"GATEWAY_METRICS_LISTEN": f"127.0.0.1:{metrics}"})
    c.wait_port(metrics, name, gw)
    # The sink is shared by every gateway, one at a time: its count before
    # this one starts sending is the baseline.
    sink_before = sink_requests(sink_port)
    # As compare.py's "Portcullis" system: the gateway and the auth service
    # (asked once here, for the one token).
    pids = c.tree(gw.pid) + c.tree(auth_pid)
    r = c.measure("oha", f"http://127.0.0.1:{port}{route}", pids, token=token)
    if traced:
        exported, dropped, sink_after = settle(metrics, sink_port)
        r |= {"exported": exported, "dropped": dropped, "sink_requests": sink_after - sink_before,
              "spans_per_req": (exported + dropped) / max(r["requests"], 1)}
    c.stop(gw)
    return r


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def build():
    """The commit the tree is at (and whether it has local changes) and the
    gateway's own version line."""
    def run(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=c.ROOT).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    commit = run("git", "rev-parse", "--short", "HEAD") or "unknown commit"
    if run("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " with local changes"
    version = run(os.path.join(c.RELEASE, "gateway"), "--version") or "gateway (version unknown)"
    return f"release (`{BUILD}`), {version}, at {commit}"


def report(runs, placement_note):
    today = datetime.date.today().isoformat()
    machine = os.environ.get("BENCH_MACHINE") or f"{c.CPUS}core-{socket.gethostname().split('.')[0]}"
    versions = [v for v in c.tool_versions() if v.startswith("oha:")]
    lines = [
        f"# Gateway tracing (OpenTelemetry) cost — {today}, {machine}",
        "",
        f"`python3 bench/tracing.py`. Machine: {c.CPUS} cores, {cpu_model()}. Build: {build()}; "
        + "; ".join(versions) + ".",
        f"Placement: {placement_note}. Each load: {c.DURATION}, {c.CONNECTIONS} connections, oha; medians of "
        f"{c.ROUNDS} rounds (configurations interleaved, order reversed every other round), every load on a "
        "gateway started afresh (`threads` as many as its cores, `cache_capacity` 1 000 000). Backend: "
        "`bench/echo` (~100-byte JSON); auth: the real auth service on SQLite, asked once per gateway for the "
        "one token. Collector: `bench/otlp_sink.py` (OTLP/HTTP, reads and counts, answers 200, keep-alive), "
        "on the load generator's core (its CPU is not counted, and it competes with oha there); "
        "*collector down*: `otlp_endpoint` a port bound but not listening, so every export is refused.",
        "",
        "CPU µs/req: CPU time of the gateway and the auth service per request during the load, as in "
        "bench/compare.py. ÷ off: this row's req/s divided by *tracing off*'s, same route. Spans exported, "
        f"dropped: the gateway's `{EXPORTED}` and `{DROPPED}` after the load, read once they had not moved for "
        f"{SETTLE:.0f} s; spans/req: their sum per request sent; sink requests: OTLP export requests the sink "
        "received from that gateway.",
        "",
        "| scenario | route | configuration | req/s | p50 ms | p99 ms | errors | CPU µs/req | ÷ off "
        "| spans exported | spans dropped | spans/req | sink requests | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = ["", "## Against tracing off", ""]
    for scenario, route, _path, _needs in ROUTES:
        off = c.median_row(runs[(route, CONFIGS[0][0])])
        for config, ratio, _collector in CONFIGS:
            rows = runs[(route, config)]
            m = c.median_row(rows)
            against = m["rps"] / off["rps"] if off["rps"] else float("nan")
            med = lambda k: statistics.median(r[k] for r in rows)
            traced = (f"{c.fmt(med('exported'))} | {c.fmt(med('dropped'))} | {med('spans_per_req'):.3f} | "
                      f"{c.fmt(med('sink_requests'))}") if ratio is not None else "| | |"
            lines.append(f"| {scenario} | {route} | {config} | {c.fmt(m['rps'])} | {m['p50']:.2f} | {m['p99']:.2f} | "
                         f"{c.fmt(m['errors'])} | {m['cpu_us']:.1f} | {against:.3f}× | {traced} | {m['runs']} |")
            if ratio is not None:
                summary.append(f"- {route}, {config}: {against:.3f}× the req/s of tracing off "
                               f"({(against - 1) * 100:+.1f} %), {m['cpu_us'] - off['cpu_us']:+.1f} µs CPU "
                               f"per request, p99 {m['p99'] - off['p99']:+.2f} ms")
    text = "\n".join(lines + summary) + "\n"
    out_dir = os.path.join(c.ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{today}-{machine}-tracing.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    c.log(f"wrote {path}")


def start_services():
    """The echo backend, the auth service and the OTLP sink, a collector
    address that refuses connections, and one user's token."""
    secret = secrets.token_hex(32)
    p = {name: c.free_port() for name in ("echo", "auth", "sink")}
    where = (f"gateways and services on cpu {c.SERVER_CPUS}, oha and the OTLP sink on cpu {c.LOAD_CPUS}"
             if c.PLACEMENT == "pinned" else "nothing pinned")
    c.log(f"work directory {c.WORK}; placement {c.PLACEMENT}: {where}")
    c.start("echo", [os.path.join(c.RELEASE, "echo"), "--listen", f"127.0.0.1:{p['echo']}"], p["echo"])
    auth = c.start("auth", [os.path.join(c.RELEASE, "auth-service"), "--listen", f"127.0.0.1:{p['auth']}"],
                   p["auth"], env={"JWT_SECRET_KEY": secret, "DATABASE_URL": f"sqlite://{c.WORK}/auth.db",
                                   "RUST_LOG": "warn"})
    # c.start pins to the server cores; the inner taskset, applied last,
    # moves the sink onto the load generator's.
    c.start("otlp-sink", c.pinned([sys.executable, SINK, str(p["sink"])], c.LOAD_CPUS), p["sink"])
    # Bound and never listening: connections to it are refused, as to a
    # collector that is down, and no later free_port() can hand it out to a
    # gateway while the run lasts.
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    endpoints = {"up": f"http://127.0.0.1:{p['sink']}", "down": f"http://127.0.0.1:{down.getsockname()[1]}"}
    reply = c.http("POST", f"http://127.0.0.1:{p['auth']}/api/register",
                   {"email": "tracing-bench@example.com", "password": "benchmark password"})
    return p, auth, endpoints, down, reply["access"], where


def main():
    signal_handlers()
    c.place(os.environ.get("PLACEMENT", "pinned"))
    preflight()
    p, auth, endpoints, down, token, where = start_services()

    server = [f"threads: {c.workers()}",
              # Stopping a gateway between loads then takes a second, not
              # the default five.
              "grace_period: 1s"]
    plan = [(route, n, config) for route in ROUTES for n, config in enumerate(CONFIGS)]
    runs = {}
    for round_ in range(1, c.ROUNDS + 1):
        # Every configuration once per round, the order reversed every other
        # round, so that drift over the run falls on all of them alike.
        ordered = plan if round_ % 2 else list(reversed(plan))
        for (scenario, route, path, needs), n, (config, ratio, collector) in ordered:
            c.log(f"round {round_}/{c.ROUNDS}: {route}, {config}")
            routes = c.gateway_routes(p["auth"], p["echo"], capacity=1_000_000, server=server)
            if ratio is not None:
                with_tracing(routes, ratio, endpoints[collector])
            # A name per load: its output files in the work directory stay apart.
            name = f"gateway-{round_}-{path.strip('/').replace('/', '-')}-{n}"
            r = one_load(name, routes, path, token if needs else None, auth.pid, p["sink"], ratio is not None)
            note = ""
            if ratio is not None:
                note = (f", spans exported {c.fmt(r['exported'])}, dropped {c.fmt(r['dropped'])}, "
                        f"sink requests {c.fmt(r['sink_requests'])}")
            c.log(f"  {r['rps']:.0f} req/s, p99 {r['p99']:.2f} ms, {r['cpu_us']:.1f} µs CPU/req{note}")
            if r["errors"]:
                c.log(f"  {r['errors']} failed requests: {r['codes']}")
            # Every request sampled, the sink up: nothing counted or nothing
            # received means the figures measure no tracing at all.
            if ratio == 1.0 and collector == "up" and (r["exported"] + r["dropped"] == 0 or not r["sink_requests"]):
                raise SystemExit(f"bench: {route}, {config}: spans exported {r['exported']:.0f}, dropped "
                                 f"{r['dropped']:.0f}, sink requests {r['sink_requests']}: does this gateway "
                                 f"build trace ({EXPORTED} and {DROPPED} on its metrics listener)?")
            runs.setdefault((route, config), []).append(r)
    down.close()
    c.stop_all()
    report(runs, f"{c.PLACEMENT}, {where}")


def pairs_main():
    """MODE=pairs: each traced configuration against tracing off, both
    gateways running side by side for the whole comparison, in PAIRS pairs
    of short loads (the order within a pair alternating): the median of the
    per-pair ratios and its interquartile range, far less noisy than loads
    on gateways started afresh."""
    signal_handlers()
    c.place(os.environ.get("PLACEMENT", "pinned"))
    preflight()
    pairs = int(os.environ.get("PAIRS", "8"))
    c.DURATION = os.environ.get("DURATION", "3s")
    p, auth, endpoints, down, token, where = start_services()
    server = [f"threads: {c.workers()}", "grace_period: 1s"]
    rows = []
    for config, ratio, collector in CONFIGS[1:]:
        found = {route: {"ratios": [], "medians": [], "off": [], "on": [], "cpu": []} for _, route, _, _ in ROUTES}
        spans = [0.0, 0.0]
        # Twice, the gateways started in one order and then the other: a
        # process started second was seen to run a few per cent slower
        # whatever it runs (bench/ab.py), and the geometric mean of the two
        # passes cancels that out.
        for on_first in (False, True):
            ports = {"off": c.free_port(), "on": c.free_port()}
            metrics = c.free_port()
            off_routes = c.gateway_routes(p["auth"], p["echo"], capacity=1_000_000, server=server)
            on_routes = with_tracing(c.gateway_routes(p["auth"], p["echo"], capacity=1_000_000, server=server),
                                     ratio, endpoints[collector])
            starts = {"off": lambda: c.start_gateway("gw-off", off_routes, ports["off"]),
                      "on": lambda: c.start_gateway("gw-on", on_routes, ports["on"],
                                                    env={"GATEWAY_METRICS_LISTEN": f"127.0.0.1:{metrics}"})}
            procs = {}
            for side in (("on", "off") if on_first else ("off", "on")):
                procs[side] = starts[side]()
            c.wait_port(metrics, "gw-on", procs["on"])
            pids = {side: c.tree(proc.pid) + c.tree(auth.pid) for side, proc in procs.items()}
            for scenario, route, path, needs in ROUTES:
                ratios, rps, cpu = [], {"off": [], "on": []}, {"off": [], "on": []}
                for i in range(pairs):
                    for side in (("off", "on") if i % 2 == 0 else ("on", "off")):
                        r = c.measure("oha", f"http://127.0.0.1:{ports[side]}{path}", pids[side],
                                      token=token if needs else None)
                        if r["errors"]:
                            raise SystemExit(f"bench: {config}, {route}, {side}: {r['errors']} errors")
                        rps[side].append(r["rps"])
                        cpu[side].append(r["cpu_us"])
                    ratios.append(rps["on"][-1] / rps["off"][-1])
                    c.log(f"{config}, {route} ({'traced' if on_first else 'off'} started first), pair "
                          f"{i + 1}/{pairs}: off {rps['off'][-1]:.0f}, on {rps['on'][-1]:.0f} req/s, "
                          f"on/off {ratios[-1]:.3f}")
                f = found[route]
                f["ratios"] += ratios
                f["medians"].append(statistics.median(ratios))
                f["off"] += rps["off"]
                f["on"] += rps["on"]
                f["cpu"].append(statistics.median(cpu["on"]) - statistics.median(cpu["off"]))
            exported, dropped, _ = settle(metrics, p["sink"])
            spans = [spans[0] + exported, spans[1] + dropped]
            for proc in procs.values():
                c.stop(proc)
        for scenario, route, _path, _needs in ROUTES:
            f = found[route]
            q = statistics.quantiles(f["ratios"], n=4)
            combined = (f["medians"][0] * f["medians"][1]) ** 0.5
            rows.append((scenario, route, config, statistics.median(f["off"]), statistics.median(f["on"]),
                         f["medians"][0], f["medians"][1], combined, q[0], q[2],
                         statistics.mean(f["cpu"]), spans[0], spans[1]))
    down.close()
    c.stop_all()
    today = datetime.date.today().isoformat()
    machine = os.environ.get("BENCH_MACHINE") or f"{c.CPUS}core-{socket.gethostname().split('.')[0]}"
    lines = [
        f"# Gateway tracing (OpenTelemetry) cost, paired loads — {today}, {machine}",
        "",
        f"`MODE=pairs python3 bench/tracing.py`. Machine: {c.CPUS} cores, {cpu_model()}. Build: {build()}. "
        f"Placement: {c.PLACEMENT}, {where}. For each configuration, a gateway with it and one without "
        f"(`tracing:` absent) run side by side; per route, {pairs} pairs of {c.DURATION} oha loads "
        "(50 connections), the order within a pair alternating, done twice: the gateways started in one order, "
        "then in the other. Ratio: the median of the per-pair ratios traced ÷ off for each start order, and "
        "their geometric mean, with the interquartile range of all pairs. CPU: the traced gateway's median "
        "CPU µs per request minus the other's (gateway and auth service, as in bench/compare.py), averaged "
        "over the two orders. Spans: the traced gateways' counters, both routes and orders together. "
        "Collector and *collector down* as in `bench/tracing.py`'s table.",
        "",
        "| scenario | route | configuration | off req/s | traced req/s | traced ÷ off, off started first "
        "| traced ÷ off, traced started first | traced ÷ off (both orders; IQR of all pairs) "
        "| CPU µs/req added | spans exported | spans dropped |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, route, config, off, on, first, second, ratio, q1, q3, cpu, exported, dropped in rows:
        lines.append(f"| {scenario} | {route} | {config} | {c.fmt(off)} | {c.fmt(on)} | {first:.3f} | "
                     f"{second:.3f} | **{ratio:.3f}** ({q1:.3f} – {q3:.3f}) | {cpu:+.1f} | {c.fmt(exported)} "
                     f"| {c.fmt(dropped)} |")
    text = "\n".join(lines) + "\n"
    path = os.path.join(c.ROOT, "bench", "results", f"{today}-{machine}-tracing-pairs.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    c.log(f"wrote {path}")


def signal_handlers():
    # As compare.py: Ctrl-C and SIGTERM stop everything started, then exit.
    signal.signal(signal.SIGINT, c.on_signal)
    signal.signal(signal.SIGTERM, c.on_signal)


if __name__ == "__main__":
    try:
        pairs_main() if os.environ.get("MODE") == "pairs" else main()
    finally:
        c.stop_all()
