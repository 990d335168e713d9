#!/usr/bin/env python3
"""Sockets per notifications replica: resident memory as open WebSockets grow.

Starts one notifications replica (release build, direct mode, pings every
5 s as shipped) and opens WebSockets to it the way the gateway does (one user
each, `x-user-id`), answering its pings, in steps (default 1000, 5000,
10000, 15000, 19000; STEPS=a,b,c to change). At each step, after the sockets
are open and a ping round has passed, it prints the replica's RSS, and
checks that the sockets are alive: an event posted for 100 users spread over
the open ones must reach each of them.

The ceiling of the steps is the machine's open-file limit (`ulimit -n`):
every socket is a file on both ends. The script raises its own limit and the
replica's to the hard limit and stops below it.

Needs: cargo build --release -p notifications
"""
import asyncio, base64, json, os, resource, statistics, struct, subprocess, sys, time, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c

STEPS = [int(s) for s in os.environ.get("STEPS", "1000,5000,10000,15000,19000").split(",")]
PING_SECONDS = 5


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Client:
    """One WebSocket, kept open; answers pings, collects text messages."""

    def __init__(self, user):
        self.user = user
        self.messages = asyncio.Queue()
        self.writer = None

    async def open(self, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((
            "GET /api/notifications/ws HTTP/1.1\r\nhost: bench\r\nupgrade: websocket\r\n"
            f"connection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n"
            f"x-user-id: {self.user}\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(head.decode(errors="replace").splitlines()[0])
        self.writer = writer
        self.task = asyncio.create_task(self.read(reader))
        message = await asyncio.wait_for(self.messages.get(), 30)
        assert json.loads(message)["type"] == "ready", message

    def send(self, opcode, payload=b""):
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def read(self, reader):
        try:
            while True:
                first, second = await reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    length = struct.unpack("!H", await reader.readexactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", await reader.readexactly(8))[0]
                payload = await reader.readexactly(length)
                opcode = first & 0x0F
                if opcode == 0x9:
                    self.send(0xA, payload)
                elif opcode == 0x1:
                    await self.messages.put(payload.decode())
                elif opcode == 0x8:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return


def post_event(port, user, n):
    body = json.dumps({"user_id": user, "type": "bench.ping", "data": {"n": n}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/internal/events", data=body, method="POST")
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ceiling = hard - 200
    steps = [s for s in STEPS if s <= ceiling]
    port = c.free_port()
    proc = c.start("notifications", [os.path.join(c.RELEASE, "notifications"), "--listen",
                                      f"127.0.0.1:{port}", "--max-per-user", "1",
                                      "--ping-seconds", str(PING_SECONDS)], port,
                   env={"RUST_LOG": "warn"})
    idle = rss_mb(proc.pid)
    rows = [(0, idle, None)]
    clients = []
    for target in steps:
        started = time.monotonic()
        while len(clients) < target:
            batch = [Client(len(clients) + i + 1) for i in range(min(500, target - len(clients)))]
            await asyncio.gather(*(client.open(port) for client in batch))
            clients.extend(batch)
        opened = time.monotonic() - started
        # A whole ping round, so that every socket has sent and been answered.
        await asyncio.sleep(PING_SECONDS + 1)
        alive = [clients[i * len(clients) // 100] for i in range(100)]
        for n, client in enumerate(alive):
            post_event(port, client.user, n)
        for n, client in enumerate(alive):
            message = json.loads(await asyncio.wait_for(client.messages.get(), 10))
            assert message["data"]["n"] == n, message
        rows.append((target, rss_mb(proc.pid), opened))
        c.log(f"{target} sockets open: {rows[-1][1]:.1f} MB")
    c.stop_all()
    for client in clients:
        client.task.cancel()
    await asyncio.gather(*(client.task for client in clients), return_exceptions=True)

    print(f"\nOne notifications replica (release, direct mode, pings every {PING_SECONDS} s): "
          "resident memory with N open sockets\n")
    print("| sockets | RSS MB | KiB per socket above idle |")
    print("|---|---|---|")
    for count, mb, _ in rows:
        per = "" if count == 0 else f"{(mb - idle) * 1024 / count:.1f}"
        print(f"| {count} | {mb:.1f} | {per} |")
    slopes = [(mb - idle) * 1024 / count for count, mb, _ in rows if count]
    per_socket = statistics.median(slopes)
    print(f"\nMedian {per_socket:.1f} KiB per socket; at that rate 100 MB holds "
          f"{int((100 - idle) * 1024 / per_socket)} sockets (measured up to {rows[-1][0]}, "
          f"this machine's open-file limit being {hard}).")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        c.stop_all()
