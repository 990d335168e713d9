#!/usr/bin/env python3
"""A stand-in for an OpenTelemetry collector's OTLP/HTTP receiver: accepts
`POST /v1/traces`, reads the whole body, counts requests and bytes, and
answers 200 with an empty `application/x-protobuf` body (an empty
ExportTraceServiceResponse encodes to zero bytes). Nothing is decoded or
kept, so the sink costs the exporter no more than a real collector would and
measures nothing but what reached it.

    python3 bench/otlp_sink.py PORT     # prints "listening on 127.0.0.1:PORT";
                                        # on SIGTERM or Ctrl-C, the counts

`GET /stats` answers the counts so far as JSON ({"requests": n, "bytes": n}),
for a harness that reads them between loads. Importable: `Sink(port)` is the
server (port 0 picks a free one; `.port`, `.counts()`), `serve(port)` runs
one on a background thread.
"""

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so that the exporter's connections are kept alive, as with a
    # real collector: a new connection per export would add a cost to the
    # gateway that has nothing to do with tracing.
    protocol_version = "HTTP/1.1"
    # One write per response (headers only): no Nagle delay to wait out.
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.read_body()
        if self.path.split("?", 1)[0] != "/v1/traces":
            self.answer(404)
            return
        self.server.count(len(body))
        self.answer(200, content_type="application/x-protobuf")

    def do_GET(self):
        if self.path != "/stats":
            self.answer(404)
            return
        self.answer(200, json.dumps(self.server.counts()).encode(), "application/json")

    def read_body(self):
        # The whole body must be read whatever the answer, or the next
        # request on the kept-alive connection would start inside it.
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, if any, up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def answer(self, status, body=b"", content_type=None):
        self.send_response(status)
        if content_type:
            self.send_header("content-type", content_type)
        # Always a length, even of zero: without one an HTTP/1.1 client
        # cannot tell where the response ends and drops the connection.
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, *_):
        # Quiet: a line per export would cost the sink's core (shared with
        # the load generator in the benchmarks) more than the export itself.
        pass


class Sink(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The exporter may open several connections at once under load.
    request_queue_size = 128

    def __init__(self, port=0, host="127.0.0.1"):
        super().__init__((host, port), Handler)
        self.port = self.server_address[1]
        self._lock = threading.Lock()
        self._requests = 0
        self._bytes = 0

    def count(self, size):
        with self._lock:
            self._requests += 1
            self._bytes += size

    def counts(self):
        with self._lock:
            return {"requests": self._requests, "bytes": self._bytes}

    def handle_error(self, request, client_address):
        # A client that goes away mid-request is not the sink's problem.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def serve(port=0, host="127.0.0.1"):
    """A sink answering on a background thread; `.shutdown()` stops it."""
    sink = Sink(port, host)
    threading.Thread(target=sink.serve_forever, name="otlp-sink", daemon=True).start()
    return sink


def main(argv):
    if len(argv) != 2 or not argv[1].isdigit():
        sys.exit(f"usage: {argv[0]} PORT")
    sink = Sink(int(argv[1]))

    def stop(_signum, _frame):
        # Raised inside serve_forever's loop, which ends it; shutdown()
        # would wait for that same loop and never return.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"listening on 127.0.0.1:{sink.port}", flush=True)
    try:
        sink.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        counts = sink.counts()
        print(f"{counts['requests']} requests, {counts['bytes']} bytes", flush=True)
        sink.server_close()


if __name__ == "__main__":
    main(sys.argv)
