#!/usr/bin/env python3
"""Revocation delay: how long after a logout returns until every gateway
refuses the session's cached access token.

Starts the auth service, a backend and two gateways (cache TTL 60 s, so only
a revocation can explain a refusal) three times: with revocations through
Redis (127.0.0.1:6379, or REDIS_URL) to gateways that ask the auth service
(remote mode), the same to gateways that check tokens against the auth
service's JWKS themselves (jwks mode: the revoked session is refused by the
gateway's own set), and through the gateway's admin listener (the
one-command stack's way; one gateway, as the auth service is given one
webhook here). For each of N sessions (default 100): sign in,
make the token cached on every gateway, log out, then poll every gateway
until it answers 401. Prints median, p90 and max per path.

Needs release binaries (cargo build --release -p auth-service -p gateway -p echo).
"""
import json, os, secrets, statistics, sys, time, urllib.request, urllib.error
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c

N = int(os.environ.get("N", "100"))
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")


def call(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read()
            return response.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as error:
        return error.code, None


def routes(auth, echo, admin=None, jwks=False):
    path = os.path.join(c.WORK, f"routes-{secrets.token_hex(4)}.yaml")
    if jwks:
        mode = (f"  mode: jwks\n  jwks_url: http://127.0.0.1:{auth}/.well-known/jwks.json\n"
                "  issuer: portcullis\n  audiences: [portcullis]")
    else:
        mode = f"  verify_url: http://127.0.0.1:{auth}/api/verify"
    with open(path, "w") as f:
        f.write(f"""server:
  upgrade_sock: {c.WORK}/upgrade-{secrets.token_hex(4)}.sock
{f"  admin_listen: {admin}" if admin else ""}
auth:
{mode}
  cache_ttl: 60s
upstreams:
  auth: {{ servers: [127.0.0.1:{auth}] }}
  echo: {{ servers: [127.0.0.1:{echo}] }}
routes:
  - {{ prefix: /api/login, upstream: auth, access: public }}
  - {{ prefix: /api/register, upstream: auth, access: public }}
  - {{ prefix: /api/logout, upstream: auth, access: public }}
  - {{ prefix: /api/echo, upstream: echo, access: protected }}
""")
    return path


def measure(label, gateways):
    gw = gateways[0]
    delays = []
    for _ in range(N):
        # A user per session: a gateway that checks tokens itself folds one
        # user's many logouts into one user-wide revocation, which is not
        # what is measured here.
        email = f"revoke-{secrets.token_hex(6)}@example.com"
        status, pair = call("POST", f"http://127.0.0.1:{gw}/api/register",
                            {"email": email, "password": "revocation benchmark"})
        assert status == 201, status
        for port in gateways:
            assert call("GET", f"http://127.0.0.1:{port}/api/echo/x", token=pair["access"])[0] == 200
        status, _ = call("POST", f"http://127.0.0.1:{gw}/api/logout", {"refresh": pair["refresh"]})
        assert status == 204, status
        since = time.monotonic()
        waiting = set(gateways)
        while waiting:
            for port in list(waiting):
                if call("GET", f"http://127.0.0.1:{port}/api/echo/x", token=pair["access"])[0] == 401:
                    waiting.discard(port)
            if time.monotonic() - since > 5:
                raise SystemExit(f"{label}: still accepted after 5 s")
        delays.append((time.monotonic() - since) * 1000)
    delays.sort()
    return label, statistics.median(delays), delays[int(len(delays) * 0.9) - 1], delays[-1]


def main():
    secret = secrets.token_hex(32)
    admin_token = secrets.token_hex(32)
    rows = []
    p = {name: c.free_port() for name in ("echo", "auth", "gw1", "gw2", "gw4", "gw5", "auth2", "gw3", "admin")}
    c.start("echo", [os.path.join(c.RELEASE, "echo"), "--listen", f"127.0.0.1:{p['echo']}"], p["echo"])
    channel = f"bench-revocations-{secrets.token_hex(4)}"
    c.start("auth", [os.path.join(c.RELEASE, "auth-service"), "--listen", f"127.0.0.1:{p['auth']}"], p["auth"],
            env={"JWT_SECRET_KEY": secret, "DATABASE_URL": f"sqlite://{c.WORK}/auth.db", "RUST_LOG": "warn",
                 "REDIS_URL": REDIS, "REVOCATION_CHANNEL": channel})
    r = routes(p["auth"], p["echo"])
    env = {"REDIS_URL": REDIS, "REVOCATION_CHANNEL": channel}
    c.start_gateway("gw1", r, p["gw1"], env=env)
    c.start_gateway("gw2", r, p["gw2"], env=env)
    time.sleep(1)  # let both subscribe before the first logout
    rows.append(measure("Redis pub/sub, two gateways (remote mode)", [p["gw1"], p["gw2"]]))
    r = routes(p["auth"], p["echo"], jwks=True)
    c.start_gateway("gw4", r, p["gw4"], env=env)
    c.start_gateway("gw5", r, p["gw5"], env=env)
    time.sleep(1)
    rows.append(measure("Redis pub/sub, two gateways (jwks mode)", [p["gw4"], p["gw5"]]))

    c.start("auth2", [os.path.join(c.RELEASE, "auth-service"), "--listen", f"127.0.0.1:{p['auth2']}"], p["auth2"],
            env={"JWT_SECRET_KEY": secret, "DATABASE_URL": f"sqlite://{c.WORK}/auth2.db", "RUST_LOG": "warn",
                 "GATEWAY_ADMIN_TOKEN": admin_token,
                 "AUTH_REVOCATION_WEBHOOKS": f"http://127.0.0.1:{p['admin']}/revocations"})
    c.start_gateway("gw3", routes(p["auth2"], p["echo"], admin=f"127.0.0.1:{p['admin']}"), p["gw3"],
                    env={"GATEWAY_ADMIN_TOKEN": admin_token})
    rows.append(measure("admin listener (no Redis), one gateway", [p["gw3"]]))
    c.stop_all()

    print(f"\nRevocation delay: logout answered → every gateway refuses the cached token ({N} logouts each)\n")
    print("| path | median ms | p90 ms | max ms |")
    print("|---|---|---|---|")
    for label, median, p90, worst in rows:
        print(f"| {label} | {median:.1f} | {p90:.1f} | {worst:.1f} |")


if __name__ == "__main__":
    try:
        main()
    finally:
        c.stop_all()
