"""A fault-injecting HTTP proxy for tests of remote backends (standard library, 127.0.0.1 only).

It forwards requests to a real server and answers some of them badly instead:

* ``"500"``: HTTP 500 without forwarding;
* ``"429"``: HTTP 429 with ``Retry-After: <retry_after>`` without forwarding;
* ``"malformed"``: forwards, then sends the upstream body cut in half (invalid JSON) with status 200;
* ``"drop"``: forwards, then closes the connection without answering (the work was done, the answer lost);
* ``"hang"``: waits ``hang_s`` (longer than the client timeout), then closes without answering;
* ``"fewer_choices"``: forwards, then keeps only the first choice (a server that ignores ``n``);
* ``"truncated"``: forwards, then announces the full ``Content-Length`` but sends half the body and
  closes (a response cut off mid-transfer);
* ``"trickle"``: sends status and headers at once, then one body byte every ``trickle_s`` for
  ``hang_s`` seconds (each read is quick, so only a whole-request deadline catches it), then closes;
* ``"wrong_shape"``: HTTP 200 with valid JSON that is not a completion (``{"choices": null}``);
* ``"echo_auth"``: HTTP 500 whose error message echoes the request's ``Authorization`` header (a
  careless server or gateway: the client must not copy it into its errors or logs);
* ``"ok"``: forwards untouched.

Which request gets which: ``plan`` gives the faults of the first requests in arrival order; after
it, each request is faulted with probability ``rate`` by a kind drawn from ``kinds`` (``random.Random(seed)``).
``max_per_request`` bounds how often one request body can be faulted, so a client with enough
retries always gets through. Only ``methods`` are faulted (POST by default).

    with FaultProxy(upstream_base_url, rate=0.3, seed=0) as proxy:
        OpenAIBackend(proxy.base_url, ...).generate(...)
        proxy.counts  # {"ok": .., "500": .., ...}

The proxy stops on ``close()`` / leaving the ``with`` block, and by itself after ``lifetime_s``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("ok", "500", "429", "malformed", "drop", "hang", "fewer_choices", "truncated", "trickle", "wrong_shape",
         "echo_auth")


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        plan: Sequence[str] = (),
        rate: float = 0.0,
        kinds: Sequence[str] = ("500", "429", "malformed", "drop"),
        seed: int = 0,
        retry_after: float = 0.0,
        hang_s: float = 2.0,
        trickle_s: float = 0.1,
        max_per_request: int | None = None,
        methods: Sequence[str] = ("POST",),
        lifetime_s: float = 120.0,
    ):
        for k in list(plan) + list(kinds):
            if k not in KINDS:
                raise ValueError(f"unknown fault {k!r}; valid: {', '.join(KINDS)}")
        u = urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        self.plan = list(plan)
        self.rate, self.kinds, self.retry_after, self.hang_s = rate, list(kinds), retry_after, hang_s
        self.trickle_s = trickle_s
        self.max_per_request, self.methods = max_per_request, set(methods)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._n = 0
        self._faults_per_body: Counter = Counter()
        self.counts: Counter = Counter()
        self.log: list[tuple[float, str, str, str]] = []  # (time, method, path, fault)
        self.auth_headers: list[str | None] = []
        self.inflight = 0
        self.max_inflight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.close)
        self._timer.daemon = True
        self._closed = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._timer.start()
        return self

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()  # wakes hanging handlers
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _choose(self, method: str, path: str, body: bytes) -> str:
        with self._lock:
            fault = "ok"
            if method in self.methods:
                if self._n < len(self.plan):
                    fault = self.plan[self._n]
                elif self.rate > 0 and self._rng.random() < self.rate:
                    fault = self._rng.choice(self.kinds)
                self._n += 1
                key = hashlib.sha256(body).hexdigest()
                if fault != "ok" and self.max_per_request is not None:
                    if self._faults_per_body[key] >= self.max_per_request:
                        fault = "ok"
                if fault != "ok":
                    self._faults_per_body[key] += 1
            self.counts[fault] += 1
            self.log.append((time.monotonic(), method, path, fault))
            return fault

    def _forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() in ("content-type", "authorization", "accept")}
            conn.request(method, path, body=body if method == "POST" else None, headers=fwd)
            resp = conn.getresponse()
            data = resp.read()
            keep = {k: v for k, v in resp.getheaders() if k.lower() in ("content-type", "retry-after")}
            return resp.status, keep, data
        finally:
            conn.close()


def _make_handler(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):
            pass

        def _send(self, status: int, headers: dict, data: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with proxy._lock:
                proxy.auth_headers.append(self.headers.get("Authorization"))
                proxy.inflight += 1
                proxy.max_inflight = max(proxy.max_inflight, proxy.inflight)
            try:
                fault = proxy._choose(method, self.path, body)
                err = {"Content-Type": "application/json"}
                if fault == "500":
                    return self._send(500, err, b'{"error": {"message": "injected 500", "type": "server_error"}}')
                if fault == "429":
                    h = dict(err, **{"Retry-After": f"{proxy.retry_after:g}"})
                    return self._send(429, h, b'{"error": {"message": "injected 429", "type": "rate_limit"}}')
                if fault == "hang":
                    proxy._stop.wait(proxy.hang_s)
                    self.close_connection = True
                    return None
                if fault == "wrong_shape":
                    return self._send(200, err, b'{"choices": null, "object": "text_completion"}')
                if fault == "echo_auth":
                    msg = json.dumps({"error": {"message": f"bad request, headers: Authorization: "
                                                           f"{self.headers.get('Authorization')}"}})
                    return self._send(500, err, msg.encode())
                if fault == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    deadline = time.monotonic() + proxy.hang_s
                    try:
                        while time.monotonic() < deadline and not proxy._stop.wait(proxy.trickle_s):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                    except OSError:
                        pass
                    self.close_connection = True
                    return None
                status, headers, data = proxy._forward(method, self.path, self.headers, body)
                if fault == "drop":
                    self.close_connection = True
                    return None
                if fault == "malformed":
                    return self._send(200, headers, data[: len(data) // 2])
                if fault == "truncated":
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                if fault == "fewer_choices" and status == 200:
                    obj = json.loads(data)
                    obj["choices"] = sorted(obj["choices"], key=lambda c: c["index"])[:1]
                    data = json.dumps(obj).encode()
                return self._send(status, headers, data)
            finally:
                with proxy._lock:
                    proxy.inflight -= 1

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

    return Handler
