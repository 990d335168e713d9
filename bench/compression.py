#!/usr/bin/env python3
"""The web page's files as a browser gets them through the gateway: bytes
on the wire without compression and with each coding the gateway offers ("as is": below the default
`server.compression.min_size`).

Starts the web service (serving web/dist) and a gateway in front of it with
the shipped defaults for a public route, fetches every file of the page
with each Accept-Encoding, checks that it decodes to the file's bytes, and
prints a Markdown table.

    python3 bench/compression.py            # release binaries (cargo build --release)
    BUILD=debug python3 bench/compression.py
"""

import gzip
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                      os.environ.get("BUILD", "release"))
DIST = os.path.join(ROOT, "web", "dist")
CODINGS = ["identity", "gzip", "br", "zstd"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(port, proc):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"compression: a process exited early ({proc.args[0]})")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"compression: nothing listening on {port}")


def decoder(coding):
    if coding == "gzip":
        return gzip.decompress
    if coding == "br":
        import brotli
        return brotli.decompress
    if coding == "zstd":
        import zstandard
        return lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)
    return bytes


def fetch(url, coding):
    headers = {} if coding == "identity" else {"Accept-Encoding": coding}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
        wire = r.read()
        got = r.headers.get("Content-Encoding") or "identity"
    return got, wire


def main():
    if not os.path.isfile(os.path.join(DIST, "index.html")):
        sys.exit("compression: build the page first (npm --prefix web ci && npm --prefix web run build)")
    work = tempfile.mkdtemp(prefix="portcullis-compression-")
    web_port, gw_port = free_port(), free_port()
    routes = os.path.join(work, "routes.yaml")
    with open(routes, "w") as f:
        f.write(f"""server:
  upgrade_sock: {work}/upgrade.sock
auth:
  verify_url: http://127.0.0.1:9/api/verify
upstreams:
  web:
    servers: [127.0.0.1:{web_port}]
routes:
  - {{ prefix: /app, upstream: web, access: public, methods: [GET, HEAD] }}
""")
    procs = []
    try:
        web = subprocess.Popen([os.path.join(TARGET, "web"), "--listen", f"127.0.0.1:{web_port}",
                                "--dir", DIST], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(web)
        wait(web_port, web)
        gw = subprocess.Popen([os.path.join(TARGET, "gateway"), "--config", routes,
                               "--listen", f"127.0.0.1:{gw_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "RUST_LOG": "warn"})
        procs.append(gw)
        wait(gw_port, gw)
        files = ["index.html"] + [os.path.join("assets", n) for n in sorted(os.listdir(os.path.join(DIST, "assets")))]
        print("| file | " + " | ".join(CODINGS) + " |")
        print("|---|" + "---:|" * len(CODINGS))
        for name in files:
            original = open(os.path.join(DIST, name), "rb").read()
            cells = []
            for coding in CODINGS:
                got, wire = fetch(f"http://127.0.0.1:{gw_port}/app/{name}", coding)
                if got == "identity" and coding != "identity":
                    # Below server.compression.min_size: sent as it is.
                    if wire != original:
                        sys.exit(f"compression: {name} sent as it is, but not the file")
                    cells.append("as is")
                    continue
                if got != coding:
                    sys.exit(f"compression: {name} asked as {coding}, sent as {got}")
                if decoder(coding)(wire) != original:
                    sys.exit(f"compression: {name} in {coding} does not decode to the file")
                share = f" ({len(wire) / len(original) * 100:.0f} %)" if coding != "identity" else ""
                cells.append(f"{len(wire):,}{share}".replace(",", " "))
            print(f"| {name} | " + " | ".join(cells) + " |")
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
