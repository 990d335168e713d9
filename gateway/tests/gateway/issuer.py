#!/usr/bin/python3
"""A third-party token issuer for the gateway's tests, as an identity
provider the gateway did not come with: its own RS256 keys, its JWKS, its
own tokens.

    issuer.py MAX_AGE

GET  /jwks.json  the JWKS (public keys only), Cache-Control: max-age=MAX_AGE
GET  /hits       {"jwks": fetches of /jwks.json, "other": every other request}
POST /token      {"claims": {...}, "header": {...}} -> {"token": ...}, signed
                 RS256 with the newest key (the header's "kid" may be
                 replaced, to name a key that does not exist)
POST /rotate     adds a key, which signs from now on; the others stay
POST /drop       keeps only the newest key

Prints "listening on 127.0.0.1:PORT" once it accepts connections.
"""

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

MAX_AGE = int(sys.argv[1]) if len(sys.argv) > 1 else 300
LOCK = threading.Lock()
KEYS = []  # (kid, private key), oldest first
HITS = {"jwks": 0, "other": 0}


def b64(number):
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def add_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    KEYS.append((f"test-issuer-{len(KEYS) + 1}", key))


def jwks():
    keys = []
    for kid, key in KEYS:
        numbers = key.public_key().public_numbers()
        keys.append({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                     "n": b64(numbers.n), "e": b64(numbers.e)})
    return {"keys": keys}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            if self.path == "/jwks.json":
                HITS["jwks"] += 1
                body = jwks()
                return self.answer(200, body, [("cache-control", f"public, max-age={MAX_AGE}")])
            if self.path == "/hits":
                return self.answer(200, dict(HITS))
            HITS["other"] += 1
        self.answer(404, {"error": "no such path"})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            if self.path == "/token":
                kid, key = KEYS[-1]
                header = {"kid": kid, **body.get("header", {})}
                token = jwt.encode(body["claims"], key, algorithm="RS256", headers=header)
                return self.answer(200, {"token": token})
            if self.path == "/rotate":
                add_key()
                return self.answer(200, {"kid": KEYS[-1][0]})
            if self.path == "/drop":
                del KEYS[:-1]
                return self.answer(200, {"kid": KEYS[-1][0]})
            HITS["other"] += 1
        self.answer(404, {"error": "no such path"})


add_key()
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
