#!/usr/bin/env python3
"""Portcullis against Nginx, HAProxy and Caddy, in front of the same backend.

Run through bench/compare.sh, which builds the binaries and installs the
tools first. Every process started here runs in its own session and is
stopped on exit, on Ctrl-C and on SIGTERM. Every load targets 127.0.0.1,
is bounded in time (DURATION, default 10s), and the servers and the load
generator are pinned to separate cores with taskset.

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
CPUS = os.cpu_count() or 1
# Servers on the first core, the load generator on the last one.
SERVER_CPUS = os.environ.get("SERVER_CPUS", "0" if CPUS > 1 else "0")
LOAD_CPUS = os.environ.get("LOAD_CPUS", str(CPUS - 1))
WORK = tempfile.mkdtemp(prefix="portcullis-bench-")
# Nginx workers run as an unprivileged user when the harness runs as root,
# and must reach their temporary and cache directories inside.
os.chmod(WORK, 0o755)
PROCESSES = []


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def stop_all(*_):
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
    if not os.environ.get("KEEP_WORK"):
        shutil.rmtree(WORK, ignore_errors=True)


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
    """Starts a server pinned to the server cores and waits for its port."""
    out = open(os.path.join(WORK, f"{name}.out"), "w")
    err = open(os.path.join(WORK, f"{name}.err"), "w")
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CPUS] + argv,
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
    argv = ["taskset", "-c", LOAD_CPUS, "oha", "--no-tui", "--output-format", "json",
            "-z", DURATION, "-c", str(CONNECTIONS), *extra]
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
    argv = ["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration or DURATION}",
            "--latency", "-s", script, url]
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


def measure(tool, url, pids, token=None, script=None, expect_status=None):
    """One bounded load; CPU and peak RSS of `pids` (the system under test)."""
    reset_peak_rss(pids)
    before = cpu_seconds(pids)
    result = run_oha(url, token) if tool == "oha" else run_wrk(url, script)
    used = cpu_seconds(pids) - before
    result["cpu_per_10k"] = used / max(result["requests"], 1) * 10_000
    result["rss_mb"] = peak_rss_mb(pids)
    if expect_status and tool == "oha":
        # A 401 flood is supposed to be refused: count what was not.
        codes = result["codes"]
        result["errors"] = sum(v for k, v in codes.items() if k != expect_status)
    return result


def gateway_routes(auth, echo, prefixes=0, mode="remote", capacity=100_000):
    lines = [
        "server:",
        f"  upgrade_sock: {WORK}/upgrade-{secrets.token_hex(4)}.sock",
        "auth:",
        f"  mode: {mode}",
    ]
    if mode == "remote":
        lines.append(f"  verify_url: http://127.0.0.1:{auth}/api/verify")
    lines += [
        "  cache_ttl: 60s",
        f"  cache_capacity: {capacity}",
        "upstreams:",
        "  echo:",
        f"    servers: [127.0.0.1:{echo}]",
        "    health_check: { type: http, path: /healthz, interval: 2s }",
        "routes:",
        "  - { prefix: /public, upstream: echo, access: public }",
        "  - { prefix: /api/echo, upstream: echo, access: protected }",
    ]
    # Extra routes shaped like real ones: a service name and a version.
    for i in range(max(prefixes - 2, 0)):
        lines.append(f"  - {{ prefix: /svc{i}/v1/items, upstream: echo, access: public }}")
    path = os.path.join(WORK, f"routes-{prefixes}-{mode}.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start_gateway(name, routes, port, env=None, binary=None):
    return start(name, [binary or os.path.join(RELEASE, "gateway"), "--config", routes,
                        "--listen", f"127.0.0.1:{port}"], port,
                 env={"RUST_LOG": "warn", **(env or {})})


def nginx_config(ports, echo, auth):
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
    config = f"""
worker_processes auto;
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
    server {{
      listen 127.0.0.1:{ports['plain']};
      location / {{ proxy_pass http://backend;{upstream} }}
    }}
    server {{
      listen 127.0.0.1:{ports['auth']};{protected.format(upstream=upstream)}{auth_location.format(upstream=upstream, cache="")}
    }}
    server {{
      listen 127.0.0.1:{ports['cached']};{protected.format(upstream=upstream)}{auth_location.format(upstream=upstream, cache=cache)}
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
    keys = ("rps", "p50", "p99", "errors", "cpu_per_10k", "rss_mb", "requests")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": len(runs)}


def main():
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    secret = secrets.token_hex(32)
    p = {name: free_port() for name in (
        "echo", "auth", "gw", "gw_metrics", "nginx_plain", "nginx_auth", "nginx_cached",
        "haproxy", "caddy_plain", "caddy_auth", "floor")}

    log(f"work directory {WORK}; servers on cpu {SERVER_CPUS}, load on cpu {LOAD_CPUS}")
    echo = start("echo", [os.path.join(RELEASE, "echo"), "--listen", f"127.0.0.1:{p['echo']}"], p["echo"])
    auth = start("auth", [os.path.join(RELEASE, "auth-service"), "--listen", f"127.0.0.1:{p['auth']}"],
                 p["auth"], env={"JWT_SECRET_KEY": secret, "DATABASE_URL": f"sqlite://{WORK}/auth.db",
                                 "RUST_LOG": "warn"})
    gw = start_gateway("gateway", gateway_routes(p["auth"], p["echo"], capacity=1_000_000), p["gw"],
                       env={"GATEWAY_METRICS_LISTEN": f"127.0.0.1:{p['gw_metrics']}"})
    nginx = start("nginx", ["nginx", "-c", nginx_config(
        {"plain": p["nginx_plain"], "auth": p["nginx_auth"], "cached": p["nginx_cached"]},
        p["echo"], p["auth"])], p["nginx_plain"])
    floor = start("floor", [os.path.join(RELEASE, "floor"), "--listen", f"127.0.0.1:{p['floor']}",
                            "--upstream", f"127.0.0.1:{p['echo']}"], p["floor"])
    haproxy = start("haproxy", ["haproxy", "-db", "-f", haproxy_config(p["haproxy"], p["echo"])], p["haproxy"])
    caddy = start("caddy", ["caddy", "run", "--adapter", "caddyfile", "--config", caddy_config(
        {"plain": p["caddy_plain"], "auth": p["caddy_auth"]}, p["echo"], p["auth"])], p["caddy_plain"],
        env={"HOME": WORK, "XDG_DATA_HOME": WORK, "XDG_CONFIG_HOME": WORK})
    for port, name, proc in ((p["nginx_auth"], "nginx", nginx), (p["nginx_cached"], "nginx", nginx),
                             (p["caddy_auth"], "caddy", caddy)):
        wait_port(port, name, proc)

    reply = http("POST", f"http://127.0.0.1:{p['auth']}/api/register",
                 {"email": "bench@example.com", "password": "benchmark password"})
    token, user = reply["access"], reply["user_id"]
    ten_k = rotate_script(mint(10_000, user, secret, os.path.join(WORK, "tokens-10k.txt")))
    all_new = rotate_script(mint(int(os.environ.get("MISS_TOKENS", "400000")), user, secret,
                                 os.path.join(WORK, "tokens-new.txt")))
    one = header_script(token)
    plain = os.path.join(WORK, "plain.lua")
    with open(plain, "w") as f:
        f.write("-- no extra headers\n")

    systems = {
        "Portcullis": tree(gw.pid) + tree(auth.pid),
        "Nginx": tree(nginx.pid) + tree(auth.pid),
        "HAProxy": tree(haproxy.pid),
        "Caddy": tree(caddy.pid) + tree(auth.pid),
        "backend": tree(echo.pid),
        "Pingora": tree(floor.pid),
    }
    url = lambda port, path="/x": f"http://127.0.0.1:{port}{path}"
    # (scenario, system, configuration, tool, url, token, script)
    plan = [
        ("backend direct", "backend", "echo service", "oha", url(p["echo"]), None, None),
        ("backend direct", "backend", "echo service", "wrk", url(p["echo"]), None, plain),
        ("plain proxy", "Portcullis", "public route", "oha", url(p["gw"], "/public/x"), None, None),
        ("plain proxy", "Portcullis", "public route", "wrk", url(p["gw"], "/public/x"), None, plain),
        ("plain proxy", "Pingora", "bare proxy, no hooks (bench/floor)", "oha", url(p["floor"]), None, None),
        ("plain proxy", "Pingora", "bare proxy, no hooks (bench/floor)", "wrk", url(p["floor"]), None, plain),
        ("plain proxy", "Nginx", "proxy_pass", "oha", url(p["nginx_plain"]), None, None),
        ("plain proxy", "Nginx", "proxy_pass", "wrk", url(p["nginx_plain"]), None, plain),
        ("plain proxy", "HAProxy", "plain", "oha", url(p["haproxy"]), None, None),
        ("plain proxy", "HAProxy", "plain", "wrk", url(p["haproxy"]), None, plain),
        ("plain proxy", "Caddy", "reverse_proxy", "oha", url(p["caddy_plain"]), None, None),
        ("plain proxy", "Caddy", "reverse_proxy", "wrk", url(p["caddy_plain"]), None, plain),
        ("protected, one token", "Portcullis", "protected route", "oha", url(p["gw"], "/api/echo/x"), token, None),
        ("protected, one token", "Portcullis", "protected route", "wrk", url(p["gw"], "/api/echo/x"), None, one),
        ("protected, one token", "Nginx", "auth_request", "oha", url(p["nginx_auth"]), token, None),
        ("protected, one token", "Nginx", "auth_request", "wrk", url(p["nginx_auth"]), None, one),
        ("protected, one token", "Nginx", "auth_request + cache", "oha", url(p["nginx_cached"]), token, None),
        ("protected, one token", "Nginx", "auth_request + cache", "wrk", url(p["nginx_cached"]), None, one),
        ("protected, one token", "Caddy", "forward_auth", "oha", url(p["caddy_auth"]), token, None),
        ("protected, one token", "Caddy", "forward_auth", "wrk", url(p["caddy_auth"]), None, one),
        ("10 000 tokens in rotation", "Portcullis", "protected route", "wrk", url(p["gw"], "/api/echo/x"), None, ten_k),
        ("10 000 tokens in rotation", "Nginx", "auth_request + cache", "wrk", url(p["nginx_cached"]), None, ten_k),
        ("every request a new token", "Portcullis", "protected route", "wrk", url(p["gw"], "/api/echo/x"), None, all_new),
        ("every request a new token", "Nginx", "auth_request", "wrk", url(p["nginx_auth"]), None, all_new),
        ("every request a new token", "Caddy", "forward_auth", "wrk", url(p["caddy_auth"]), None, all_new),
    ]
    if BASELINE:
        p["gw_base"] = free_port()
        base = start_gateway("gateway-baseline", gateway_routes(p["auth"], p["echo"], capacity=1_000_000),
                             p["gw_base"], binary=BASELINE)
        systems["Portcullis baseline"] = tree(base.pid) + tree(auth.pid)
        plan += [
            ("plain proxy", "Portcullis baseline", "public route", "oha", url(p["gw_base"], "/public/x"), None, None),
            ("plain proxy", "Portcullis baseline", "public route", "wrk", url(p["gw_base"], "/public/x"), None, plain),
            ("protected, one token", "Portcullis baseline", "protected route", "oha",
             url(p["gw_base"], "/api/echo/x"), token, None),
            ("protected, one token", "Portcullis baseline", "protected route", "wrk",
             url(p["gw_base"], "/api/echo/x"), None, one),
        ]
    if QUICK:
        plan = [row for row in plan
                if row[1] in ("Portcullis", "Portcullis baseline", "Pingora")
                and row[0] in ("plain proxy", "protected, one token")]
    results = {}
    for round_ in range(1, ROUNDS + 1):
        # Alternate the order every round so drift does not favour anyone.
        ordered = plan if round_ % 2 else list(reversed(plan))
        for scenario, system, config, tool, target, tok, script in ordered:
            log(f"round {round_}/{ROUNDS}: {scenario} / {system} {config} ({tool})")
            r = measure(tool, target, systems[system], token=tok, script=script)
            log(f"  {r['rps']:.0f} req/s, p99 {r['p99']:.2f} ms")
            results.setdefault((scenario, system, config, tool), []).append(r)

    if QUICK:
        write_results(results)
        stop_all()
        return

    # A 401 flood: one invalid token over and over, then a new invalid one
    # every request. The auth service must not be asked for each.
    bad_one = open(mint(1, user, secret, os.path.join(WORK, "bad-1.txt"), valid=False)).read().strip()
    bad_many = rotate_script(mint(100_000, user, secret, os.path.join(WORK, "bad-many.txt"), valid=False))
    misses = 'portcullis_verify_cache_total{result="miss"}'
    before = metric(p["gw_metrics"], misses)
    flood = measure("oha", url(p["gw"], "/api/echo/x"), systems["Portcullis"], token=bad_one, expect_status="401")
    flood["verify_calls"] = metric(p["gw_metrics"], misses) - before
    results[("invalid tokens (401 flood)", "Portcullis", "one invalid token", "oha")] = [flood]
    before = metric(p["gw_metrics"], misses)
    flood = measure("wrk", url(p["gw"], "/api/echo/x"), systems["Portcullis"], script=bad_many)
    flood["verify_calls"] = metric(p["gw_metrics"], misses) - before
    flood["errors"] = 0  # every answer is a 401, as it should be
    results[("invalid tokens (401 flood)", "Portcullis", "new invalid token each request", "wrk")] = [flood]
    stop(gw)

    # Route tables of 10, 1 000 and 10 000 prefixes (the public route).
    for prefixes in (10, 1_000, 10_000):
        port = free_port()
        g = start_gateway(f"gateway-{prefixes}", gateway_routes(p["auth"], p["echo"], prefixes), port)
        runs = []
        for round_ in range(ROUNDS):
            log(f"routes {prefixes}: run {round_ + 1}/{ROUNDS}")
            runs.append(measure("oha", url(port, "/public/x"), tree(g.pid)))
        results[(f"{prefixes} route prefixes", "Portcullis", "public route", "oha")] = runs
        stop(g)

    # One million cached verdicts: local verification fills the cache
    # without a million calls to the auth service; RSS is then read.
    million = int(os.environ.get("CACHED_TOKENS", "1000000"))
    port = free_port()
    g = start_gateway("gateway-million", gateway_routes(p["auth"], p["echo"], mode="local",
                                                        capacity=million + 1000), port,
                      env={"JWT_SECRET_KEY": secret})
    tokens = mint(million, user, secret, os.path.join(WORK, "tokens-million.txt"))
    idle_rss = peak_rss_mb([g.pid])
    log(f"filling the cache with {million} tokens")
    fill = run_wrk(url(port, "/api/echo/x"), rotate_script(tokens), os.environ.get("FILL_DURATION", "120s"))
    with open(f"/proc/{g.pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
    fill |= {"rss_mb": rss, "idle_rss_mb": idle_rss, "cpu_per_10k": 0.0}
    results[(f"{fmt(million)} cached tokens", "Portcullis", "local verification", "wrk")] = [fill]
    stop(g)

    write_results(results)
    stop_all()


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
    for (scenario, system, config, tool), runs in results.items():
        m = median_row(runs)
        for extra in ("verify_calls", "idle_rss_mb"):
            if extra in runs[0]:
                m[extra] = runs[0][extra]
        by_key[(scenario, system, config, tool)] = m
        rows.append((scenario, system, config, tool, m))

    def ours(scenario, tool):
        for (s, sys_, _c, t), m in by_key.items():
            if s == scenario and sys_ == "Portcullis" and t == tool:
                return m
        return None

    lines = [
        f"# Portcullis against Nginx, HAProxy and Caddy — {today}, {machine}",
        "",
        f"{CPUS} cores; servers pinned to cpu {SERVER_CPUS}, load generator to cpu {LOAD_CPUS}. "
        f"Each load: {DURATION}, {CONNECTIONS} connections; medians of {ROUNDS} rounds "
        "(systems alternated, order reversed every other round) unless the runs column says 1.",
        "Backend: `bench/echo`, a minimal axum service answering a ~100-byte JSON body. "
        "Auth: the real auth service on SQLite. Access logs off everywhere "
        "(Portcullis `RUST_LOG=warn`, Nginx `access_log off`).",
        "",
        "Versions: " + "; ".join(versions),
        "",
        "CPU s/10k: CPU seconds used by the system under test (proxy processes plus the auth service "
        "where it is asked) per 10 000 requests. RSS: peak resident memory of those processes during the run. "
        "Ratio: Portcullis req/s divided by this row's req/s, same scenario and load tool, same run.",
        "",
        "| scenario | system | configuration | tool | req/s | p50 ms | p99 ms | errors | CPU s/10k | peak RSS MB | Portcullis ÷ this | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, system, config, tool, m in rows:
        mine = ours(scenario, tool)
        ratio = f"{mine['rps'] / m['rps']:.2f}×" if mine and system != "Portcullis" and m["rps"] else ""
        note = ""
        if "verify_calls" in m:
            note = f" (auth asked {fmt(m['verify_calls'])} times)"
        if "idle_rss_mb" in m:
            note = (f" ({fmt(m['requests'])} requests sent; RSS {fmt(m['idle_rss_mb'])} MB before, "
                    "the RSS column is after)")
        lines.append(
            f"| {scenario}{note} | {system} | {config} | {tool} | {fmt(m['rps'])} | {m['p50']:.2f} | "
            f"{m['p99']:.2f} | {fmt(m['errors'])} | {m['cpu_per_10k']:.2f} | {m['rss_mb']:.0f} | {ratio} | {m['runs']} |")
    text = "\n".join(lines) + "\n\n![req/s and p99 per system and scenario](" + os.path.basename(base) + ".svg)\n"
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".svg", "w") as f:
        f.write(chart(rows))
    print(text)
    log(f"wrote {base}.md and {base}.svg")


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
    rows = [r for r in rows if r[3] == "oha" or not any(
        x[0] == r[0] and x[1] == r[1] and x[2] == r[2] and x[3] == "oha" for x in rows)]
    colours = {"Portcullis": "#2f6fb0", "Pingora": "#9fbfdf", "Nginx": "#3a9a4a", "HAProxy": "#b0662f",
               "Caddy": "#8a4fb0", "backend": "#777777"}
    bar, gap, label_w, panel_w = 16, 6, 430, 330
    height = 60 + len(rows) * (bar + gap)
    max_rps = max(r[4]["rps"] for r in rows) or 1
    max_p99 = max(r[4]["p99"] for r in rows) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + 2 * panel_w + 60}" height="{height}" '
             'font-family="sans-serif" font-size="11">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{label_w}" y="20" font-weight="bold">requests/s (median)</text>',
             f'<text x="{label_w + panel_w + 30}" y="20" font-weight="bold">p99 latency, ms (median)</text>']
    for i, (scenario, system, config, tool, m) in enumerate(rows):
        y = 40 + i * (bar + gap)
        colour = colours.get(system, "#444")
        label = f"{scenario} — {system} {config} ({tool})"
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
