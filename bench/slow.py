#!/usr/bin/env python3
"""The gateway's memory under slow and oversized request heads.

Starts bench/echo and a release gateway (public route only), then:
  1. 1 000 clients each open a connection and send part of a request head,
     then nothing (RSS while they hold on);
  2. 200 clients each send 1 MB of a head that never ends (how many are
     answered 431, and the gateway's peak RSS).
Prints the gateway's RSS at idle and after each step, as a Markdown table.

Needs: cargo build --release -p gateway -p echo
"""
import asyncio, os, resource, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c

SLOW = int(os.environ.get("SLOW", "1000"))
BIG = int(os.environ.get("BIG", "200"))


def rss_mb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def hold(port, held):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /public/x HTTP/1.1\r\nx-slow: a")
    await writer.drain()
    held.append(writer)


async def big(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b"a" * 65536
    try:
        writer.write(b"GET /public/x HTTP/1.1\r\nhost: bench\r\nx-big: ")
        for _ in range(16):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    try:
        answer = await asyncio.wait_for(reader.read(64), 20)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        answer = b""
    writer.close()
    return answer.startswith(b"HTTP/1.1 431")


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    echo_port, port = c.free_port(), c.free_port()
    c.start("echo", [os.path.join(c.RELEASE, "echo"), "--listen", f"127.0.0.1:{echo_port}"], echo_port)
    routes = c.gateway_routes(c.free_port(), echo_port)
    gateway = c.start_gateway("gateway", routes, port)
    c.http("GET", f"http://127.0.0.1:{port}/public/x")
    idle = rss_mb(gateway.pid)
    held = []
    for _ in range(SLOW):
        await hold(port, held)
    await asyncio.sleep(1)
    holding = rss_mb(gateway.pid)
    for writer in held:
        writer.close()
    await asyncio.sleep(1)
    answered = sum(await asyncio.gather(*(big(port) for _ in range(BIG))))
    await asyncio.sleep(1)
    after = rss_mb(gateway.pid)
    peak = rss_mb(gateway.pid, "VmHWM")
    print("| gateway (release) | RSS |")
    print("|---|---|")
    print(f"| idle | {idle:.1f} MB |")
    print(f"| {SLOW} clients holding a partial head | {holding:.1f} MB (+{holding - idle:.1f}) |")
    print(f"| after {BIG} clients sent 1 MB heads ({answered} answered 431) | {after:.1f} MB; peak {peak:.1f} MB |")
    c.stop_all()


if __name__ == "__main__":
    asyncio.run(main())
