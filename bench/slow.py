#!/usr/bin/env python3
"""The gateway's memory under slow and oversized request heads.

Starts bench/echo and a release gateway (public route only), then:
  1. 1 000 clients each open a connection and send part of a request head,
     then nothing (RSS while they hold on);
  2. 200 clients each send 1 MB of a head that never ends (how many are
     answered 431, and the gateway's peak RSS);
  3. against a gateway with `server.max_connections: 1000`, 4 000 clients
     each open a connection and send part of a head (how many the gateway
     holds, how many it closed at accept, its RSS).
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
    """Sends 1 MB of a head that never ends, reading as it goes: the answer
    is taken as soon as it comes (the rest of the megabyte, sent into a
    closed connection, would only turn it into a reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b"a" * 4096
    answer = b""
    try:
        writer.write(b"GET /public/x HTTP/1.1\r\nhost: bench\r\nx-big: ")
        for _ in range(256):
            writer.write(chunk)
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(64), 0.001)
            except asyncio.TimeoutError:
                continue
            break
        if not answer:
            answer = await asyncio.wait_for(reader.read(64), 20)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        pass
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
    c.stop(gateway)
    # 3. The connection cap.
    with open(routes) as f:
        capped = f.read().replace("server:\n", "server:\n  max_connections: 1000\n", 1)
    capped_path = routes + ".capped.yaml"
    with open(capped_path, "w") as f:
        f.write(capped)
    metrics = c.free_port()
    gateway = c.start("gateway-capped", [os.path.join(c.RELEASE, "gateway"), "--config", capped_path,
                                         "--listen", f"127.0.0.1:{port}",
                                         "--metrics-listen", f"127.0.0.1:{metrics}"], port,
                      env={"RUST_LOG": "warn"})
    c.http("GET", f"http://127.0.0.1:{port}/public/x")
    capped_idle = rss_mb(gateway.pid)
    held = []
    for _ in range(4000):
        try:
            await hold(port, held)
        except OSError:
            pass
    await asyncio.sleep(1)
    open_now = c.metric(metrics, "portcullis_connections_open")
    refused = c.metric(metrics, 'portcullis_connections_refused_total{reason="max_connections"}')
    capped_rss = rss_mb(gateway.pid)
    fds = len(os.listdir(f"/proc/{gateway.pid}/fd"))
    for writer in held:
        writer.close()
    print("| gateway (release) | RSS |")
    print("|---|---|")
    print(f"| idle | {idle:.1f} MB |")
    print(f"| {SLOW} clients holding a partial head | {holding:.1f} MB (+{holding - idle:.1f}) |")
    print(f"| after {BIG} clients sent 1 MB heads ({answered} answered 431) | {after:.1f} MB; peak {peak:.1f} MB |")
    print(f"| `max_connections: 1000`, idle | {capped_idle:.1f} MB |")
    print(f"| 4000 clients holding a partial head: {open_now:.0f} held, {refused:.0f} closed at accept, {fds} descriptors | {capped_rss:.1f} MB |")
    c.stop_all()


if __name__ == "__main__":
    asyncio.run(main())
