#!/usr/bin/env python3
"""Portcullis against Nginx, HAProxy and Caddy, in front of the same backend.

Run through bench/compare.sh, which builds the binaries and installs the
tools first. Every process started here runs in its own session and is
stopped on exit, on Ctrl-C and on SIGTERM. Every load targets 127.0.0.1
and is bounded in time (DURATION, default 10s). Each placement in
PLACEMENTS (default `pinned,shared`) is measured with every system started
afresh: `pinned` puts the servers and the load generator on separate cores
with taskset, `shared` pins nothing. Every proxy gets as many workers as
the CPUs it may use.

Writes bench/results/<date>-<machine>.md and .svg and prints the table.
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
DURATION = os.environ.get("DURATION", "10s")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
# Another gateway binary (an earlier build) measured beside this one, in the
# same rounds, on the public and protected routes: an A/B of one change.
BASELINE = os.environ.get("BASELINE_GATEWAY")
# Only the gateway's own rows (and the bare Pingora floor): the public and
# protected routes, without the other proxies or the longer sections.
QUICK = os.environ.get("QUICK") == "1"
# SCENARIOS="protected, one token;every request a new token" keeps only the
# gateway's rows of those scenarios.
SCENARIOS = [s for s in os.environ.get("SCENARIOS", "").split(";") if s]
CPUS = os.cpu_count() or 1
# Servers on the first core, the load generator on the last one ("pinned");
# or nothing pinned, the load generator competing with the servers for
# every core, as a user's own `oha` on the same machine runs ("shared").
SERVER_CPUS = os.environ.get("SERVER_CPUS", "0" if CPUS > 1 else "0")
LOAD_CPUS = os.environ.get("LOAD_CPUS", str(CPUS - 1))
PLACEMENTS = [p for p in os.environ.get("PLACEMENTS", "pinned,shared").split(",") if p]
PLACEMENT = "pinned"
# Extra oha arguments of the rows whose configuration names a request header.
OHA_HEADERS = {
    "compression off, Accept-Encoding: gzip": ("-H", "accept-encoding: gzip"),
    "compression on, gzip": ("-H", "accept-encoding: gzip"),
    "compression on, br": ("-H", "accept-encoding: br"),
}


def place(placement):
    """Sets where servers and the load generator run: `pinned` (each on its
    cores, SERVER_CPUS and LOAD_CPUS) or `shared` (no pinning)."""
    global PLACEMENT
    if placement not in ("pinned", "shared"):
        raise SystemExit(f"bench: unknown placement {placement!r} (pinned, shared)")
    PLACEMENT = placement


def pinned(argv, cpus):
    return (["taskset", "-c", cpus] + argv) if PLACEMENT == "pinned" else argv


def cpu_count(spec):
    """How many CPUs a taskset list such as `0`, `0-3` or `0,2` names."""
    total = 0
    for part in spec.split(","):
        low, _, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total


def workers():
    """Worker processes or threads every proxy gets: one per CPU it may run on."""
    return cpu_count(SERVER_CPUS) if PLACEMENT == "pinned" else CPUS
WORK = tempfile.mkdtemp(prefix="portcullis-bench-")
# Nginx workers run as an unprivileged user when the harness runs as root,
# and must reach their temporary and cache directories inside.
os.chmod(WORK, 0o755)
PROCESSES = []


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def stop_all(*_):
    stop_processes()
    if not os.environ.get("KEEP_WORK"):
        shutil.rmtree(WORK, ignore_errors=True)


def stop_processes():
    for proc in reversed(PROCESSES):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for proc in PROCESSES:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    PROCESSES.clear()


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, name, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            try:
                with open(os.path.join(WORK, f"{name}.err")) as f:
                    said = f.read().strip()[-2000:]
            except OSError:
                said = ""
            raise SystemExit(f"bench: {name} exited ({proc.returncode}):\n{said}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: {name} did not listen on {port}")


def start(name, argv, port, env=None):
    """Starts a server (pinned to the server cores when the placement pins)
    and waits for its port."""
    out = open(os.path.join(WORK, f"{name}.out"), "w")
    err = open(os.path.join(WORK, f"{name}.err"), "w")
    proc = subprocess.Popen(
        pinned(argv, SERVER_CPUS),
        stdout=out,
        stderr=err,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    PROCESSES.append(proc)
    wait_port(port, name, proc)
    return proc


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc in PROCESSES:
        PROCESSES.remove(proc)


def tree(pid):
    """The pid and its descendants (Nginx and Caddy workers)."""
    pids, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            children = []
        pids += children
        frontier += children
    return pids


def cpu_seconds(pids):
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def reset_peak_rss(pids):
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def http(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def mint(n, user, secret, path, valid=True):
    """n distinct HS256 access tokens, as the auth service signs them."""
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    key = secret.encode() if valid else secrets.token_hex(32).encode()
    now = int(time.time())
    with open(path, "w") as out:
        for i in range(n):
            claims = {"sub": str(user), "exp": now + 3600, "iat": now, "nbf": now,
                      "jti": f"bench-{i}-{secrets.token_hex(4)}", "type": "access", "role": "user"}
            signing = head + b"." + b64(json.dumps(claims, separators=(",", ":")).encode())
            sig = b64(hmac.new(key, signing, hashlib.sha256).digest())
            out.write((signing + b"." + sig).decode() + "\n")
    return path


def mint_ring(n, user, database, path):
    """n distinct EdDSA access tokens signed with the auth service's current
    ring key, read from its SQLite database (as only a holder of the key
    could): what the auth service would sign, without n logins."""
    import sqlite3
    from cryptography.hazmat.primitives.serialization import load_der_private_key
    now = int(time.time())
    with sqlite3.connect(database) as db:
        kid, der = db.execute(
            "SELECT kid, private_key FROM signing_keys WHERE algorithm = 'EdDSA' AND active_from <= ? "
            "ORDER BY active_from DESC, kid DESC LIMIT 1", (now,)).fetchone()
    key = load_der_private_key(base64.b64decode(der), password=None)
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": kid}).encode())
    with open(path, "w") as out:
        for i in range(n):
            claims = {"sub": str(user), "iss": "portcullis", "aud": "portcullis", "exp": now + 3600,
                      "iat": now, "nbf": now, "jti": f"bench-{i}-{secrets.token_hex(4)}",
                      "type": "access", "role": "user"}
            signing = head + b"." + b64(json.dumps(claims, separators=(",", ":")).encode())
            out.write((signing + b"." + b64(key.sign(signing))).decode() + "\n")
    return path


def rotate_script(tokens_path):
    path = os.path.join(WORK, os.path.basename(tokens_path) + ".lua")
    with open(path, "w") as f:
        # A random starting point, so that runs of the same script do not
        # replay the same tokens into a cache that still holds them.
        f.write(f"""local tokens = {{}}
for line in io.lines("{tokens_path}") do tokens[#tokens + 1] = line end
math.randomseed(os.time() + os.clock() * 1000000)
local i = math.random(#tokens)
request = function()
  i = i + 1
  return wrk.format("GET", nil, {{ ["authorization"] = "Bearer " .. tokens[(i % #tokens) + 1] }})
end
""")
    return path


def header_script(token):
    path = os.path.join(WORK, f"one-{hashlib.sha256(token.encode()).hexdigest()[:8]}.lua")
    with open(path, "w") as f:
        f.write(f'wrk.headers["authorization"] = "Bearer {token}"\n')
    return path


def run_oha(url, token=None, extra=()):
    argv = pinned(["oha", "--no-tui", "--output-format", "json",
                   "-z", DURATION, "-c", str(CONNECTIONS), *extra], LOAD_CPUS)
    if token:
        argv += ["-H", f"authorization: Bearer {token}"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    s, p = r["summary"], r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    # Requests cut by oha's own deadline are not failures of the server.
    errors = {k: v for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k}
    total = sum(codes.values())
    bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errors.values())
    return {"rps": s["requestsPerSec"], "p50": p["p50"] * 1000, "p99": p["p99"] * 1000,
            "requests": total, "errors": bad, "codes": codes}


def ms(value):
    found = re.match(r"([\d.]+)(us|ms|s|m)$", value)
    if not found:
        return float("nan")
    number, unit = found.groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000}[unit]


def run_wrk(url, script, duration=None):
    argv = pinned(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration or DURATION}",
                   "--latency", "-s", script, url], LOAD_CPUS)
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    text = done.stdout
    if "Latency Distribution" not in text:
        raise SystemExit(f"bench: wrk gave no latency distribution for {url}:\n{text}\n{done.stderr}")
    total = int(re.search(r"(\d+) requests in", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    bad = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    # Percentiles from the "Latency Distribution" lines only: a thread
    # statistics line can end in "99%" too (a stdev share such as 79.99%).
    percentile = lambda p: ms(re.search(rf"^\s*{p}%\s+(\S+)", text, re.M).group(1))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "p50": percentile(50),
            "p99": percentile(99),
            "requests": total, "errors": bad}


def measure(tool, url, pids, token=None, script=None, expect_status=None, extra=()):
    """One bounded load; CPU and peak RSS of `pids` (the system under test)."""
    reset_peak_rss(pids)
    before = cpu_seconds(pids)
    result = run_oha(url, token, extra) if tool == "oha" else run_wrk(url, script)
    used = cpu_seconds(pids) - before
    result["cpu_us"] = used / max(result["requests"], 1) * 1_000_000
    result["rss_mb"] = peak_rss_mb(pids)
    if expect_status and tool == "oha":
        # A 401 flood is supposed to be refused: count what was not.
        codes = result["codes"]
        result["errors"] = sum(v for k, v in codes.items() if k != expect_status)
    return result


def gateway_routes(auth, echo, prefixes=0, mode="remote", capacity=100_000, server=(), unix=None):
    """A routes file; `server` holds extra lines of its server section
    (`threads: 1`); with `unix` (the echo service's socket), `/unix` is a
    public route to it."""
    lines = [
        "server:",
        f"  upgrade_sock: {WORK}/upgrade-{secrets.token_hex(4)}.sock",
        *(f"  {line}" for line in server),
        "auth:",
        f"  mode: {mode}",
    ]
    if mode == "remote":
        lines.append(f"  verify_url: http://127.0.0.1:{auth}/api/verify")
    if mode == "jwks":
        lines += [f"  jwks_url: http://127.0.0.1:{auth}/.well-known/jwks.json",
                  "  issuer: portcullis", "  audiences: [portcullis]"]
    lines += [
        "  cache_ttl: 60s",
        f"  cache_capacity: {capacity}",
        "upstreams:",
        "  echo:",
        f"    servers: [127.0.0.1:{echo}]",
        "    health_check: { type: http, path: /healthz, interval: 2s }",
        *([ "  echo_unix:", f"    servers: [unix:{unix}]",
            "    health_check: { type: http, path: /healthz, interval: 2s }"] if unix else []),
        "routes:",
        "  - { prefix: /public, upstream: echo, access: public }",
        "  - { prefix: /api/echo, upstream: echo, access: protected }",
        # The same protected route with compression on, down to the echo
        # service's ~100-byte JSON answer.
        "  - { prefix: /api/echo-compressed, upstream: echo, access: protected, compression: { min_size: 0 } }",
        *(["  - { prefix: /unix, upstream: echo_unix, access: public }"] if unix else []),
    ]
    # Extra routes shaped like real ones: a service name and a version.
    for i in range(max(prefixes - 2, 0)):
        lines.append(f"  - {{ prefix: /svc{i}/v1/items, upstream: echo, access: public }}")
    path = os.path.join(WORK, f"routes-{prefixes}-{mode}-{secrets.token_hex(4)}.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start_gateway(name, routes, port, env=None, binary=None):
    return start(name, [binary or os.path.join(RELEASE, "gateway"), "--config", routes,
                        "--listen", f"127.0.0.1:{port}"], port,
                 env={"RUST_LOG": "warn", **(env or {})})


def nginx_config(ports, echo, auth, unix):
    for d in ("nginx-tmp", "nginx-cache"):
        os.makedirs(os.path.join(WORK, d), exist_ok=True)
        os.chmod(os.path.join(WORK, d), 0o777)
    upstream = """
    proxy_http_version 1.1;
    proxy_set_header Connection "";"""
    auth_location = """
      location = /_auth {{
        internal;
        proxy_pass http://auth/api/verify;
        proxy_method GET;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";{upstream}{cache}
      }}"""
    protected = """
      location / {{
        auth_request /_auth;
        auth_request_set $user_id $upstream_http_x_user_id;
        proxy_set_header x-user-id $user_id;
        proxy_pass http://backend;{upstream}
      }}"""
    cache = """
        proxy_cache auth;
        proxy_cache_key $http_authorization;
        proxy_cache_valid 200 10s;"""
    # The same log line Nginx writes by default, buffered as an operator
    # who keeps it on at load would (64 KiB, flushed at least every second).
    logged = f"access_log {WORK}/nginx-access.log combined buffer=64k flush=1s;"
    config = f"""
worker_processes {workers()};
daemon off;
pid {WORK}/nginx.pid;
error_log {WORK}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {WORK}/nginx-tmp/body;
    proxy_temp_path {WORK}/nginx-tmp/proxy;
    fastcgi_temp_path {WORK}/nginx-tmp/fastcgi;
    uwsgi_temp_path {WORK}/nginx-tmp/uwsgi;
    scgi_temp_path {WORK}/nginx-tmp/scgi;
    proxy_cache_path {WORK}/nginx-cache keys_zone=auth:10m;
    upstream backend {{ server 127.0.0.1:{echo}; keepalive 64; }}
    upstream auth {{ server 127.0.0.1:{auth}; keepalive 64; }}
    upstream backend_unix {{ server unix:{unix}; keepalive 64; }}
    server {{
      listen 127.0.0.1:{ports['plain']};
      location / {{ proxy_pass http://backend;{upstream} }}
    }}
    server {{
      listen 127.0.0.1:{ports['plain_log']};
      {logged}
      location / {{ proxy_pass http://backend;{upstream} }}
    }}
    server {{
      listen 127.0.0.1:{ports['unix']};
      location / {{ proxy_pass http://backend_unix;{upstream} }}
    }}
    server {{
      listen 127.0.0.1:{ports['auth']};{protected.format(upstream=upstream)}{auth_location.format(upstream=upstream, cache="")}
    }}
    server {{
      listen 127.0.0.1:{ports['cached']};{protected.format(upstream=upstream)}{auth_location.format(upstream=upstream, cache=cache)}
    }}
    server {{
      listen 127.0.0.1:{ports['cached_log']};
      {logged}{protected.format(upstream=upstream)}{auth_location.format(upstream=upstream, cache=cache)}
    }}
}}
"""
    path = os.path.join(WORK, "nginx.conf")
    with open(path, "w") as f:
        f.write(config)
    return path


def haproxy_config(port, echo):
    path = os.path.join(WORK, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(f"""global
    maxconn 4096
    nbthread {workers()}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend plain
    bind 127.0.0.1:{port}
    default_backend echo
backend echo
    http-reuse always
    server echo1 127.0.0.1:{echo}
""")
    return path


def caddy_config(ports, echo, auth):
    path = os.path.join(WORK, "Caddyfile")
    with open(path, "w") as f:
        f.write(f"""{{
    admin off
    auto_https off
}}
http://127.0.0.1:{ports['plain']} {{
    reverse_proxy 127.0.0.1:{echo}
}}
http://127.0.0.1:{ports['auth']} {{
    forward_auth 127.0.0.1:{auth} {{
        uri /api/verify
        copy_headers X-User-Id X-User-Role
    }}
    reverse_proxy 127.0.0.1:{echo}
}}
""")
    return path


def metric(port, sample):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(sample + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def median_row(runs):
    keys = ("rps", "p50", "p99", "errors", "cpu_us", "rss_mb", "requests")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": len(runs)}


def main():
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    secret = secrets.token_hex(32)
    results = {}
    for i, placement in enumerate(PLACEMENTS):
        place(placement)
        # The sections that do not depend on placement run once, first.
        run_placement(secret, results, extra_sections=(i == 0 and not QUICK and not SCENARIOS))
        stop_processes()
    write_results(results)
    stop_all()


def run_placement(secret, results, extra_sections):
    """Starts every system for the current placement, measures the plan and
    adds its rows to `results`."""
    p = {name: free_port() for name in (
        "echo", "auth", "gw", "gw_log", "gw_tokens", "gw_metrics", "gw_jwks", "gw_jwks_tokens", "nginx_plain", "nginx_plain_log", "nginx_auth",
        "nginx_cached", "nginx_cached_log", "nginx_unix", "haproxy", "caddy_plain", "caddy_auth", "floor")}
    n = workers()
    where = (f"servers on cpu {SERVER_CPUS}, load on cpu {LOAD_CPUS}" if PLACEMENT == "pinned"
             else "nothing pinned")
    log(f"work directory {WORK}; placement {PLACEMENT}: {where}; {n} worker(s) per proxy")
    unix = os.path.join(WORK, f"echo-{PLACEMENT}.sock")
    echo = start("echo", [os.path.join(RELEASE, "echo"), "--listen", f"127.0.0.1:{p['echo']}",
                          "--unix", unix], p["echo"])
    # Nginx's workers run unprivileged when the harness is root: connecting
    # to a socket needs write permission on it.
    os.chmod(unix, 0o777)
    auth = start("auth", [os.path.join(RELEASE, "auth-service"), "--listen", f"127.0.0.1:{p['auth']}"],
                 p["auth"], env={"JWT_SECRET_KEY": secret, "DATABASE_URL": f"sqlite://{WORK}/auth-{PLACEMENT}.db",
                                 "RUST_LOG": "warn"})
    threads = [f"threads: {n}"]
    routes = gateway_routes(p["auth"], p["echo"], capacity=1_000_000, server=threads, unix=unix)
    gw = start_gateway("gateway", routes, p["gw"],
                       env={"GATEWAY_METRICS_LISTEN": f"127.0.0.1:{p['gw_metrics']}"})
    # The rotating-token loads get a gateway of their own: hundreds of
    # thousands of cached verdicts must not count in the one-token rows'
    # memory.
    gw_tokens = start_gateway("gateway-tokens", gateway_routes(p["auth"], p["echo"], capacity=1_000_000,
                                                               server=threads), p["gw_tokens"])
    # jwks mode: the same routes, tokens checked against the auth service's
    # published keys instead of asked about.
    gw_jwks = start_gateway("gateway-jwks", gateway_routes(p["auth"], p["echo"], mode="jwks",
                                                           capacity=1_000_000, server=threads), p["gw_jwks"])
    gw_jwks_tokens = start_gateway("gateway-jwks-tokens", gateway_routes(
        p["auth"], p["echo"], mode="jwks", capacity=1_000_000, server=threads), p["gw_jwks_tokens"])
    gw_log = start_gateway("gateway-log", gateway_routes(p["auth"], p["echo"], capacity=1_000_000,
                                                         server=threads),
                           p["gw_log"], env={"RUST_LOG": "warn,access=info"})
    nginx = start("nginx", ["nginx", "-c", nginx_config(
        {"plain": p["nginx_plain"], "plain_log": p["nginx_plain_log"], "auth": p["nginx_auth"],
         "cached": p["nginx_cached"], "cached_log": p["nginx_cached_log"], "unix": p["nginx_unix"]},
        p["echo"], p["auth"], unix)], p["nginx_plain"])
    floor = start("floor", [os.path.join(RELEASE, "floor"), "--listen", f"127.0.0.1:{p['floor']}",
                            "--upstream", f"127.0.0.1:{p['echo']}", "--threads", str(n)], p["floor"])
    haproxy = start("haproxy", ["haproxy", "-db", "-f", haproxy_config(p["haproxy"], p["echo"])], p["haproxy"])
    caddy = start("caddy", ["caddy", "run", "--adapter", "caddyfile", "--config", caddy_config(
        {"plain": p["caddy_plain"], "auth": p["caddy_auth"]}, p["echo"], p["auth"])], p["caddy_plain"],
        env={"HOME": WORK, "XDG_DATA_HOME": WORK, "XDG_CONFIG_HOME": WORK, "GOMAXPROCS": str(n)})
    for port, name, proc in ((p["nginx_auth"], "nginx", nginx), (p["nginx_cached"], "nginx", nginx),
                             (p["nginx_plain_log"], "nginx", nginx), (p["nginx_cached_log"], "nginx", nginx),
                             (p["nginx_unix"], "nginx", nginx), (p["caddy_auth"], "caddy", caddy)):
        wait_port(port, name, proc)

    reply = http("POST", f"http://127.0.0.1:{p['auth']}/api/register",
                 {"email": "bench@example.com", "password": "benchmark password"})
    token, user = reply["access"], reply["user_id"]
    # Tokens as the auth service signs them by default (EdDSA, its ring key).
    database = f"{WORK}/auth-{PLACEMENT}.db"
    ten_k = rotate_script(mint_ring(10_000, user, database, os.path.join(WORK, f"tokens-10k-{PLACEMENT}.txt")))
    all_new = rotate_script(mint_ring(int(os.environ.get("MISS_TOKENS", "400000")), user, database,
                                      os.path.join(WORK, f"tokens-new-{PLACEMENT}.txt")))
    one = header_script(token)
    plain = os.path.join(WORK, "plain.lua")
    with open(plain, "w") as f:
        f.write("-- no extra headers\n")

    systems = {
        "Portcullis": tree(gw.pid) + tree(auth.pid),
        "Portcullis, access log on": tree(gw_log.pid) + tree(auth.pid),
        "Portcullis, jwks mode": tree(gw_jwks.pid) + tree(auth.pid),
        "Nginx": tree(nginx.pid) + tree(auth.pid),
        "Nginx, access log on": tree(nginx.pid) + tree(auth.pid),
        "HAProxy": tree(haproxy.pid),
        "Caddy": tree(caddy.pid) + tree(auth.pid),
        "backend": tree(echo.pid),
        "Pingora": tree(floor.pid),
    }
    url = lambda port, path="/x": f"http://127.0.0.1:{port}{path}"
    tokens_url, tokens_pids = url(p["gw_tokens"], "/api/echo/x"), tree(gw_tokens.pid) + tree(auth.pid)
    jwks_tokens_url = url(p["gw_jwks_tokens"], "/api/echo/x")
    # The token loads' gateways are measured as themselves.
    own_pids = {tokens_url: tokens_pids, jwks_tokens_url: tree(gw_jwks_tokens.pid) + tree(auth.pid)}
    # (scenario, system, configuration, tool, url, token, script)
    plan = [
        ("backend direct", "backend", "echo service", "oha", url(p["echo"]), None, None),
        ("backend direct", "backend", "echo service", "wrk", url(p["echo"]), None, plain),
        ("plain proxy", "Portcullis", "public route", "oha", url(p["gw"], "/public/x"), None, None),
        ("plain proxy", "Portcullis", "public route", "wrk", url(p["gw"], "/public/x"), None, plain),
        ("plain proxy", "Portcullis, access log on", "public route", "oha", url(p["gw_log"], "/public/x"), None, None),
        ("plain proxy", "Pingora", "bare proxy, no hooks (bench/floor)", "oha", url(p["floor"]), None, None),
        ("plain proxy", "Pingora", "bare proxy, no hooks (bench/floor)", "wrk", url(p["floor"]), None, plain),
        ("plain proxy", "Nginx", "proxy_pass", "oha", url(p["nginx_plain"]), None, None),
        ("plain proxy", "Nginx", "proxy_pass", "wrk", url(p["nginx_plain"]), None, plain),
        ("plain proxy", "Nginx, access log on", "proxy_pass", "oha", url(p["nginx_plain_log"]), None, None),
        ("plain proxy", "HAProxy", "plain", "oha", url(p["haproxy"]), None, None),
        ("plain proxy", "HAProxy", "plain", "wrk", url(p["haproxy"]), None, plain),
        ("plain proxy", "Caddy", "reverse_proxy", "oha", url(p["caddy_plain"]), None, None),
        ("plain proxy", "Caddy", "reverse_proxy", "wrk", url(p["caddy_plain"]), None, plain),
        ("plain proxy, Unix-socket backend", "Portcullis", "public route, unix: server", "oha",
         url(p["gw"], "/unix/x"), None, None),
        ("plain proxy, Unix-socket backend", "Nginx", "proxy_pass unix:", "oha", url(p["nginx_unix"]), None, None),
        ("protected, one token", "Portcullis", "protected route", "oha", url(p["gw"], "/api/echo/x"), token, None),
        ("protected, one token", "Portcullis", "protected route", "wrk", url(p["gw"], "/api/echo/x"), None, one),
        ("protected, one token", "Portcullis, jwks mode", "protected route", "oha",
         url(p["gw_jwks"], "/api/echo/x"), token, None),
        ("protected, one token", "Portcullis, jwks mode", "protected route", "wrk",
         url(p["gw_jwks"], "/api/echo/x"), None, one),
        ("protected, one token", "Portcullis, access log on", "protected route", "oha",
         url(p["gw_log"], "/api/echo/x"), token, None),
        ("protected, one token", "Nginx", "auth_request", "oha", url(p["nginx_auth"]), token, None),
        ("protected, one token", "Nginx", "auth_request", "wrk", url(p["nginx_auth"]), None, one),
        ("protected, one token", "Nginx", "auth_request + cache", "oha", url(p["nginx_cached"]), token, None),
        ("protected, one token", "Nginx", "auth_request + cache", "wrk", url(p["nginx_cached"]), None, one),
        ("protected, one token", "Nginx, access log on", "auth_request + cache", "oha",
         url(p["nginx_cached_log"]), token, None),
        ("protected, one token", "Caddy", "forward_auth", "oha", url(p["caddy_auth"]), token, None),
        # ~100 bytes of JSON asked for with Accept-Encoding: compression off
        # (the protected route's default) against on, with gzip and brotli.
        ("protected, one token, small JSON", "Portcullis", "compression off, Accept-Encoding: gzip", "oha",
         url(p["gw"], "/api/echo/x"), token, None),
        ("protected, one token, small JSON", "Portcullis", "compression on, gzip", "oha",
         url(p["gw"], "/api/echo-compressed/x"), token, None),
        ("protected, one token, small JSON", "Portcullis", "compression on, br", "oha",
         url(p["gw"], "/api/echo-compressed/x"), token, None),
        ("protected, one token", "Caddy", "forward_auth", "wrk", url(p["caddy_auth"]), None, one),
        ("10 000 tokens in rotation", "Portcullis", "protected route", "wrk", tokens_url, None, ten_k),
        ("10 000 tokens in rotation", "Nginx", "auth_request + cache", "wrk", url(p["nginx_cached"]), None, ten_k),
        ("every request a new token", "Portcullis", "protected route", "wrk", tokens_url, None, all_new),
        ("every request a new token", "Portcullis, jwks mode", "protected route", "wrk", jwks_tokens_url,
         None, all_new),
        ("every request a new token", "Nginx", "auth_request", "wrk", url(p["nginx_auth"]), None, all_new),
        ("every request a new token", "Caddy", "forward_auth", "wrk", url(p["caddy_auth"]), None, all_new),
    ]
    if PLACEMENT == "shared":
        # oha is what users run: the wrk twins of oha rows are kept for the
        # pinned placement only (wrk stays where only it can rotate tokens).
        plan = [row for row in plan if row[3] == "oha" or row[0] in (
            "10 000 tokens in rotation", "every request a new token")]
    if BASELINE:
        p["gw_base"] = free_port()
        base = start_gateway("gateway-baseline", gateway_routes(p["auth"], p["echo"], capacity=1_000_000,
                                                                server=threads),
                             p["gw_base"], binary=BASELINE)
        systems["Portcullis baseline"] = tree(base.pid) + tree(auth.pid)
        plan += [
            ("plain proxy", "Portcullis baseline", "public route", "oha", url(p["gw_base"], "/public/x"), None, None),
            ("protected, one token", "Portcullis baseline", "protected route", "oha",
             url(p["gw_base"], "/api/echo/x"), token, None),
        ]
    if QUICK:
        plan = [row for row in plan
                if row[1] in ("Portcullis", "Portcullis baseline", "Pingora", "Portcullis, jwks mode")
                and row[0] in ("plain proxy", "protected, one token", "protected, one token, small JSON")]
    if SCENARIOS:
        plan = [row for row in plan if row[0] in SCENARIOS and row[1].startswith("Portcullis")]
    for round_ in range(1, ROUNDS + 1):
        # Alternate the order every round so drift does not favour anyone.
        ordered = plan if round_ % 2 else list(reversed(plan))
        for scenario, system, config, tool, target, tok, script in ordered:
            log(f"{PLACEMENT}, round {round_}/{ROUNDS}: {scenario} / {system} {config} ({tool})")
            pids = own_pids.get(target, systems[system])
            r = measure(tool, target, pids, token=tok, script=script, extra=OHA_HEADERS.get(config, ()))
            log(f"  {r['rps']:.0f} req/s, p99 {r['p99']:.2f} ms")
            results.setdefault((PLACEMENT, scenario, system, config, tool), []).append(r)
    if not extra_sections:
        return

    # A 401 flood: one invalid token over and over, then a new invalid one
    # every request. The auth service must not be asked for each.
    bad_one = open(mint(1, user, secret, os.path.join(WORK, "bad-1.txt"), valid=False)).read().strip()
    bad_many = rotate_script(mint(100_000, user, secret, os.path.join(WORK, "bad-many.txt"), valid=False))
    misses = 'portcullis_verify_cache_total{result="miss"}'
    before = metric(p["gw_metrics"], misses)
    flood = measure("oha", url(p["gw"], "/api/echo/x"), systems["Portcullis"], token=bad_one, expect_status="401")
    flood["verify_calls"] = metric(p["gw_metrics"], misses) - before
    results[(PLACEMENT, "invalid tokens (401 flood)", "Portcullis", "one invalid token", "oha")] = [flood]
    before = metric(p["gw_metrics"], misses)
    flood = measure("wrk", url(p["gw"], "/api/echo/x"), systems["Portcullis"], script=bad_many)
    flood["verify_calls"] = metric(p["gw_metrics"], misses) - before
    flood["errors"] = 0  # every answer is a 401, as it should be
    results[(PLACEMENT, "invalid tokens (401 flood)", "Portcullis", "new invalid token each request", "wrk")] = [flood]
    stop(gw)

    # Route tables of 10, 1 000 and 10 000 prefixes (the public route).
    for prefixes in (10, 1_000, 10_000):
        port = free_port()
        g = start_gateway(f"gateway-{prefixes}", gateway_routes(p["auth"], p["echo"], prefixes, server=threads), port)
        runs = []
        for round_ in range(ROUNDS):
            log(f"routes {prefixes}: run {round_ + 1}/{ROUNDS}")
            runs.append(measure("oha", url(port, "/public/x"), tree(g.pid)))
        results[(PLACEMENT, f"{prefixes} route prefixes", "Portcullis", "public route", "oha")] = runs
        stop(g)

    # One million cached verdicts: local verification fills the cache
    # without a million calls to the auth service; RSS is then read.
    million = int(os.environ.get("CACHED_TOKENS", "1000000"))
    port = free_port()
    g = start_gateway("gateway-million", gateway_routes(p["auth"], p["echo"], mode="local",
                                                        capacity=million + 1000, server=threads), port,
                      env={"JWT_SECRET_KEY": secret})
    tokens = mint(million, user, secret, os.path.join(WORK, "tokens-million.txt"))
    idle_rss = peak_rss_mb([g.pid])
    log(f"filling the cache with {million} tokens")
    fill = run_wrk(url(port, "/api/echo/x"), rotate_script(tokens), os.environ.get("FILL_DURATION", "120s"))
    with open(f"/proc/{g.pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
    fill |= {"rss_mb": rss, "idle_rss_mb": idle_rss, "cpu_us": 0.0}
    results[(PLACEMENT, f"{fmt(million)} cached tokens", "Portcullis", "local verification", "wrk")] = [fill]
    stop(g)


def fmt(v, digits=0):
    return f"{v:,.{digits}f}".replace(",", " ")


def write_results(results):
    today = datetime.date.today().isoformat()
    machine = os.environ.get("BENCH_MACHINE") or f"{CPUS}core-{socket.gethostname().split('.')[0]}"
    out_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{today}-{machine}")
    versions = tool_versions()
    rows, by_key = [], {}
    for (placement, scenario, system, config, tool), runs in results.items():
        m = median_row(runs)
        for extra in ("verify_calls", "idle_rss_mb"):
            if extra in runs[0]:
                m[extra] = runs[0][extra]
        by_key[(placement, scenario, system, config, tool)] = m
        rows.append((placement, scenario, system, config, tool, m))

    def ours(placement, scenario, tool):
        for (pl, s, sys_, _c, t), m in by_key.items():
            if pl == placement and s == scenario and sys_ == "Portcullis" and t == tool:
                return m
        return None

    placements = ", ".join(dict.fromkeys(r[0] for r in rows))
    lines = [
        f"# Portcullis against Nginx, HAProxy and Caddy — {today}, {machine}",
        "",
        f"{CPUS} cores. Placements: {placements}. **pinned**: servers on cpu {SERVER_CPUS}, load generator on "
        f"cpu {LOAD_CPUS}, every proxy given {cpu_count(SERVER_CPUS)} worker(s); **shared**: nothing pinned, "
        f"the load generator competing with the servers for all {CPUS} cores, every proxy given {CPUS} workers "
        "(Nginx `worker_processes`, HAProxy `nbthread`, Pingora and the gateway `threads`, Caddy `GOMAXPROCS`). "
        f"Each load: {DURATION}, {CONNECTIONS} connections; medians of {ROUNDS} rounds "
        "(systems alternated, order reversed every other round) unless the runs column says 1.",
        "Backend: `bench/echo`, a minimal axum service answering a ~100-byte JSON body (on TCP, and on a "
        "Unix socket for the Unix-socket rows). Auth: the real auth service on SQLite. Access logs off "
        "(Portcullis `RUST_LOG=warn`, Nginx `access_log off`) except in the rows that say *access log on* "
        "(Portcullis `RUST_LOG=warn,access=info`, to a file; Nginx `access_log … combined buffer=64k flush=1s`).",
        "",
        "Versions: " + "; ".join(versions),
        "",
        "CPU µs/req: CPU time used by the system under test (proxy processes plus the auth service "
        "where it is asked) per request. RSS: peak resident memory of those processes during the run. "
        "Ratio: Portcullis req/s divided by this row's req/s, same placement, scenario and load tool, same run.",
        "",
        "| placement | scenario | system | configuration | tool | req/s | p50 ms | p99 ms | errors | CPU µs/req "
        "| peak RSS MB | Portcullis ÷ this | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for placement, scenario, system, config, tool, m in rows:
        mine = ours(placement, scenario, tool)
        ratio = f"{mine['rps'] / m['rps']:.2f}×" if mine and system != "Portcullis" and m["rps"] else ""
        note = ""
        if "verify_calls" in m:
            note = f" (auth asked {fmt(m['verify_calls'])} times)"
        if "idle_rss_mb" in m:
            note = (f" ({fmt(m['requests'])} requests sent; RSS {fmt(m['idle_rss_mb'])} MB before, "
                    "the RSS column is after)")
        lines.append(
            f"| {placement} | {scenario}{note} | {system} | {config} | {tool} | {fmt(m['rps'])} | {m['p50']:.2f} | "
            f"{m['p99']:.2f} | {fmt(m['errors'])} | {m['cpu_us']:.1f} | {m['rss_mb']:.0f} | {ratio} | {m['runs']} |")
    lines += targets(by_key)
    text = "\n".join(lines) + "\n\n![req/s and p99 per system and scenario](" + os.path.basename(base) + ".svg)\n"
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".svg", "w") as f:
        f.write(chart(rows))
    print(text)
    log(f"wrote {base}.md and {base}.svg")


def targets(by_key):
    """The performance targets, each with the figure this run gives (oha rows
    where there are some, wrk where only wrk can rotate tokens)."""
    def get(placement, scenario, system, config, tool="oha"):
        return by_key.get((placement, scenario, system, config, tool))

    out = ["", "## Targets", "", "| placement | target | measured | met |", "|---|---|---|---|"]
    for placement in dict.fromkeys(k[0] for k in by_key):
        checks = []

        def ratio(label, mine, theirs, goal, key="rps"):
            if mine and theirs and theirs[key]:
                value = mine[key] / theirs[key]
                checks.append((label, f"{value:.2f}×", value >= goal))

        protected = get(placement, "protected, one token", "Portcullis", "protected route")
        cached = get(placement, "protected, one token", "Nginx", "auth_request + cache")
        public = get(placement, "plain proxy", "Portcullis", "public route")
        ratio("protected route ≥ 1.1× Nginx auth_request + cache", protected, cached, 1.1)
        ratio("public route ≥ 0.9× Nginx proxy_pass", public,
              get(placement, "plain proxy", "Nginx", "proxy_pass"), 0.9)
        ratio("public route ≥ 0.95× bench/floor", public,
              get(placement, "plain proxy", "Pingora", "bare proxy, no hooks (bench/floor)"), 0.95)
        ratio("every request a new token ≥ 1.5× Nginx auth_request",
              get(placement, "every request a new token", "Portcullis", "protected route", "wrk"),
              get(placement, "every request a new token", "Nginx", "auth_request", "wrk"), 1.5)
        if protected and cached:
            checks.append(("protected p99 ≤ Nginx + cache p99",
                           f"{protected['p99']:.2f} ms vs {cached['p99']:.2f} ms",
                           protected["p99"] <= cached["p99"]))
        for label, logged, quiet in (
                ("access log on costs ≤ 5 % (public route)",
                 get(placement, "plain proxy", "Portcullis, access log on", "public route"), public),
                ("access log on costs ≤ 5 % (protected route)",
                 get(placement, "protected, one token", "Portcullis, access log on", "protected route"), protected)):
            if logged and quiet and quiet["rps"]:
                cost = 1 - logged["rps"] / quiet["rps"]
                checks.append((label, f"{cost * 100:.1f} %", cost <= 0.05))
        if protected and cached:
            checks.append(("peak RSS (one token) ≤ Nginx's", f"{protected['rss_mb']:.0f} MB vs "
                           f"{cached['rss_mb']:.0f} MB", protected["rss_mb"] <= cached["rss_mb"]))
        out += [f"| {placement} | {label} | {value} | {'yes' if met else '**no**'} |"
                for label, value, met in checks]
    return out


def tool_versions():
    out = []
    for name, argv in (("oha", ["oha", "--version"]), ("wrk", ["wrk", "-v"]),
                       ("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]),
                       ("caddy", ["caddy", "version"]),
                       ("gateway", [os.path.join(RELEASE, "gateway"), "--version"])):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()[0]
            out.append(f"{name}: {text}")
        except (OSError, IndexError, subprocess.TimeoutExpired):
            out.append(f"{name}: unknown")
    return out


def chart(rows):
    """Two horizontal bar charts (req/s, p99) as one SVG, one bar per row."""
    rows = [r for r in rows if r[4] == "oha" or not any(
        x[:4] == r[:4] and x[4] == "oha" for x in rows)]
    colours = {"Portcullis": "#2f6fb0", "Pingora": "#9fbfdf", "Nginx": "#3a9a4a", "HAProxy": "#b0662f",
               "Caddy": "#8a4fb0", "backend": "#777777"}
    bar, gap, label_w, panel_w = 16, 6, 560, 330
    height = 60 + len(rows) * (bar + gap)
    max_rps = max(r[5]["rps"] for r in rows) or 1
    max_p99 = max(r[5]["p99"] for r in rows) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + 2 * panel_w + 60}" height="{height}" '
             'font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{label_w}" y="20" font-weight="bold">requests/s (median)</text>',
             f'<text x="{label_w + panel_w + 30}" y="20" font-weight="bold">p99 latency, ms (median)</text>']
    for i, (placement, scenario, system, config, tool, m) in enumerate(rows):
        y = 40 + i * (bar + gap)
        colour = colours.get(system.split(",")[0], "#444")
        label = f"{placement}: {scenario} — {system} {config} ({tool})"
        parts.append(f'<text x="{label_w - 6}" y="{y + bar - 4}" text-anchor="end">{escape(label)}</text>')
        w = m["rps"] / max_rps * (panel_w - 60)
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colour}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 4}">{fmt(m["rps"])}</text>')
        x0 = label_w + panel_w + 30
        w = m["p99"] / max_p99 * (panel_w - 60)
        parts.append(f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colour}" opacity="0.7"/>')
        parts.append(f'<text x="{x0 + w + 4:.1f}" y="{y + bar - 4}">{m["p99"]:.2f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
