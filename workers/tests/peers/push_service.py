"""A Web Push service on loopback for workers/tests/webpush.rs, written against the
reference implementations rather than the workers' code: it makes subscriptions (P-256
key pairs and auth secrets, as a browser does), and for every request it checks the
VAPID token (RFC 8292: ES256 over the origin, exp, sub) and decrypts the body with
http-ece (RFC 8291 aes128gcm). Each request becomes one JSON line on stdout.

Usage: push_service.py <subscriptions> [comma-separated paths answered 410]
"""

import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64d(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# Requests are handled on threads: one line at a time on stdout.
output = threading.Lock()
count = int(sys.argv[1])
gone = set(filter(None, (sys.argv[2] if len(sys.argv) > 2 else "").split(",")))
subscriptions = {}
for i in range(count):
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    subscriptions[f"/s/{i}"] = (key, os.urandom(16), b64e(public))


def check_vapid(header, host):
    assert header.startswith("vapid t="), header
    token, key = header[len("vapid t=") :].split(", k=")
    head, claims_part, signature = token.split(".")
    assert json.loads(b64d(head)) == {"typ": "JWT", "alg": "ES256"}
    claims = json.loads(b64d(claims_part))
    assert claims["aud"] == f"http://{host}", claims
    assert time.time() < claims["exp"] <= time.time() + 86400, claims
    assert claims["sub"].startswith(("mailto:", "https:")), claims
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(key))
    raw = b64d(signature)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{head}.{claims_part}".encode(), ec.ECDSA(hashes.SHA256()))
    return key


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        record = {
            "path": self.path,
            "ttl": self.headers.get("TTL"),
            "urgency": self.headers.get("Urgency"),
            "encoding": self.headers.get("Content-Encoding"),
            "traceparent": self.headers.get("traceparent"),
        }
        try:
            record["vapid_key"] = check_vapid(self.headers["Authorization"], self.headers["Host"])
            key, auth, _ = subscriptions[self.path]
            plain = http_ece.decrypt(body, private_key=key, auth_secret=auth, version="aes128gcm")
            record["payload"] = json.loads(plain)
        except Exception as error:  # reported to the test, which fails on it
            record["error"] = repr(error)
        with output:
            print(json.dumps(record), flush=True)
        self.send_response(410 if self.path in gone else 201)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
listing = [{"path": p, "p256dh": v[2], "auth": b64e(v[1])} for p, v in subscriptions.items()]
print(json.dumps({"port": server.server_address[1], "subscriptions": listing}), flush=True)
server.serve_forever()
