#!/usr/bin/env python3
"""HTTPS against plain HTTP: the protected route (one cached token) through
the gateway, measured with oha in one run, three ways: plain HTTP/1.1,
HTTPS with HTTP/1.1, HTTPS with HTTP/2 (ALPN). One gateway serves both
listeners; the certificate is an ECDSA P-256 one made for the run.

Connections are kept alive, so the figures are the cost of TLS on requests,
not of handshakes. Medians of ROUNDS rounds (default 3); DURATION (10s) and
CONNECTIONS (50) as for compare.sh; servers on the first core, oha on the last.

Needs release binaries (cargo build --release -p gateway -p auth-service -p echo),
oha and openssl.
"""
import os, secrets, statistics, subprocess, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c


def certificate():
    cert, key = os.path.join(c.WORK, "gateway.crt"), os.path.join(c.WORK, "gateway.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def main():
    secret = secrets.token_hex(32)
    p = {name: c.free_port() for name in ("echo", "auth", "gw", "tls")}
    c.start("echo", [os.path.join(c.RELEASE, "echo"), "--listen", f"127.0.0.1:{p['echo']}"], p["echo"])
    c.start("auth", [os.path.join(c.RELEASE, "auth-service"), "--listen", f"127.0.0.1:{p['auth']}"],
            p["auth"], env={"JWT_SECRET_KEY": secret, "DATABASE_URL": f"sqlite://{c.WORK}/auth.db",
                            "RUST_LOG": "warn"})
    cert, key = certificate()
    routes = c.gateway_routes(p["auth"], p["echo"])
    with open(routes) as f:
        text = f.read()
    with open(routes, "w") as f:
        f.write(f"tls:\n  listen: 127.0.0.1:{p['tls']}\n  cert: {cert}\n  key: {key}\n" + text)
    gw = c.start_gateway("gateway", routes, p["gw"])
    c.wait_port(p["tls"], "gateway", gw)
    reply = c.http("POST", f"http://127.0.0.1:{p['auth']}/api/register",
                   {"email": "tls-bench@example.com", "password": "benchmark password"})
    token = reply["access"]

    scenarios = [
        ("HTTP/1.1, plain", f"http://127.0.0.1:{p['gw']}/api/echo/x", ()),
        ("HTTP/1.1 over TLS", f"https://127.0.0.1:{p['tls']}/api/echo/x", ("--insecure",)),
        ("HTTP/2 over TLS", f"https://127.0.0.1:{p['tls']}/api/echo/x", ("--insecure", "--http2")),
    ]
    runs = {name: [] for name, _, _ in scenarios}
    for round_ in range(c.ROUNDS):
        order = scenarios if round_ % 2 == 0 else list(reversed(scenarios))
        for name, url, extra in order:
            before = c.cpu_seconds([gw.pid])
            result = c.run_oha(url, token, extra)
            result["cpu_per_10k"] = (c.cpu_seconds([gw.pid]) - before) / max(result["requests"], 1) * 10_000
            if result["errors"]:
                raise SystemExit(f"bench: {name}: {result['errors']} failed requests: {result['codes']}")
            c.log(f"round {round_ + 1} {name}: {result['rps']:.0f} req/s, p99 {result['p99']:.2f} ms")
            runs[name].append(result)
    c.stop_all()

    plain = statistics.median(r["rps"] for r in runs[scenarios[0][0]])
    print(f"\nProtected route, one cached token, through the gateway ({c.CONNECTIONS} connections, "
          f"{c.DURATION}, median of {c.ROUNDS} rounds, oha)\n")
    print("| protocol | req/s | p50 ms | p99 ms | gateway CPU s per 10k | ÷ plain |")
    print("|---|---|---|---|---|---|")
    for name, _, _ in scenarios:
        med = lambda k: statistics.median(r[k] for r in runs[name])
        print(f"| {name} | {med('rps'):.0f} | {med('p50'):.2f} | {med('p99'):.2f} | "
              f"{med('cpu_per_10k'):.2f} | {med('rps') / plain:.2f}× |")


if __name__ == "__main__":
    try:
        main()
    finally:
        c.stop_all()
