"""The ``openai`` backend at scale: >= 64 requests in flight, several base URLs (load balancing,
prefix affinity, failover, per-server stats), prefix-friendly order in ``continue_many``, URL-list
validation and password redaction. Servers are tiny threaded stubs defined here (answer at once, or
hold requests until enough are in flight), plus ``deliberate serve`` over a FakeBackend."""

from __future__ import annotations

import argparse
import json
import logging
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fakes import FakeBackend

from deliberate.errors import DeliberateError
from deliberate.cli.common import backend_from_args
from deliberate.models.openai import OpenAIBackend, RemoteError, affinity_index
from deliberate.models.sampling import SamplingParams
from deliberate.models.server import serve_in_thread


class StubServer:
    """A minimal OpenAI-compatible ``/v1/completions`` + ``/v1/models`` server on 127.0.0.1.

    Each choice's text is ``"<name>|<prompt>|<i>"``, so a test can tell which server answered.
    ``fail=500`` answers every POST with HTTP 500. ``gate=k`` holds every POST until ``k`` of them are
    in flight at once (or ``gate_timeout`` passes, then answers HTTP 400 saying how many there were).
    ``delay_s`` holds every POST that long. ``prompts`` lists the prompts in arrival order.
    """

    def __init__(self, name: str, fail: int | None = None, gate: int = 0, gate_timeout: float = 10.0,
                 delay_s: float = 0.0):
        self.name, self.fail, self.gate, self.gate_timeout, self.delay_s = name, fail, gate, gate_timeout, delay_s
        self.lock = threading.Lock()
        self.gate_open = threading.Event()
        self.prompts: list[str] = []
        self.posts = 0
        self.inflight = 0
        self.max_inflight = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with stub.lock:
                    stub.posts += 1
                    stub.inflight += 1
                    stub.max_inflight = max(stub.max_inflight, stub.inflight)
                    stub.prompts.append(body["prompt"])
                    if stub.gate and stub.inflight >= stub.gate:
                        stub.gate_open.set()
                    seen = stub.inflight
                try:
                    if stub.fail:
                        return self._send(stub.fail, {"error": {"message": f"{stub.name} is broken"}})
                    if stub.gate and not stub.gate_open.wait(stub.gate_timeout):
                        return self._send(400, {"error": {"message": f"gate: only {seen} requests in flight"}})
                    if stub.delay_s:
                        time.sleep(stub.delay_s)
                    n = body.get("n", 1)
                    choices = [{"index": i, "text": f"{stub.name}|{body['prompt']}|{i}", "finish_reason": "stop"}
                               for i in range(n)]
                    self._send(200, {"object": "text_completion", "model": "stub-model", "choices": choices,
                                     "usage": {"prompt_tokens": 3, "completion_tokens": 2 * n}})
                finally:
                    with stub.lock:
                        stub.inflight -= 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # a burst of 64+ connects must not overflow the listen backlog

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.gate_open.set()
        self._server.shutdown()
        self._server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def client(base_url, **kw):
    kw.setdefault("retry_base_delay", 0.001)
    kw.setdefault("timeout", 10)
    kw.setdefault("model", "m")
    return OpenAIBackend(base_url, **kw)


def who(c) -> str:
    return c.text.split("|", 1)[0]


PARAMS = SamplingParams(n=2, seed=3, max_tokens=8)


# ---------------------------------------------------------------------------------- (a) concurrency


def test_64_requests_in_flight_at_once():
    prompts = [f"problem {i}" for i in range(64)]
    with StubServer("A", gate=64) as a:
        b = client(a.base_url, concurrency=64)
        t0 = time.monotonic()
        out = b.generate(prompts, PARAMS)
        elapsed = time.monotonic() - t0
    assert a.max_inflight == 64 and a.posts == 64  # all 64 were held open together, none retried
    assert [[c.text for c in row] for row in out] == [[f"A|{p}|{i}" for i in range(2)] for p in prompts]
    assert b.server_stats()[0]["peak_inflight"] == 64 and elapsed < 10


def test_concurrency_is_per_server_and_bounds_each():
    with StubServer("A", gate=8, gate_timeout=0.5) as a, StubServer("B", gate=8, gate_timeout=0.5) as b_:
        out = client([a.base_url, b_.base_url], concurrency=8, affinity_margin=0).generate(
            [f"q{i}" for i in range(16)], PARAMS)
    # margin 0 = pure least-loaded: 8 on each server, held until 8 were in flight on both
    assert a.max_inflight == 8 and b_.max_inflight == 8 and a.posts == b_.posts == 8
    assert all(len(row) == 2 for row in out)


# ---------------------------------------------------------------------------- (b) load balancing


def test_two_servers_share_200_prompts_and_nothing_is_lost_or_duplicated():
    prompts = [f"distinct prompt #{i}: {'x' * (i % 7)}" for i in range(200)]
    with StubServer("A") as a, StubServer("B") as b_:
        b = client(f"{a.base_url},{b_.base_url}", concurrency=16)
        out = b.generate(prompts, PARAMS)
    assert len(out) == 200
    for p, row in zip(prompts, out):  # in order, n each, every sample exactly once
        assert [c.text.split("|", 1)[1] for c in row] == [f"{p}|0", f"{p}|1"]
    served = Counter(who(c) for row in out for c in row)
    assert served["A"] + served["B"] == 400
    assert served["A"] >= 120 and served["B"] >= 120  # each >= 30 %
    assert Counter(a.prompts + b_.prompts) == Counter(prompts)  # one request per prompt, no retries
    stats = b.server_stats()
    assert [s["requests"] for s in stats] == [a.posts, b_.posts] and [s["ok"] for s in stats] == [a.posts, b_.posts]
    assert all(s["failures"] == 0 and 1 <= s["peak_inflight"] <= 16 for s in stats)


def test_busy_preferred_server_spills_to_the_least_loaded():
    with StubServer("A", delay_s=0.3) as a, StubServer("B") as b_:
        prompts = [p for p in (f"slow {i}" for i in range(200)) if affinity_index(p, 2) == 0][:12]
        b = client([a.base_url, b_.base_url], concurrency=2)  # margin max(1, 2 // 2) = 1
        out = b.generate(prompts, PARAMS)
    assert all(len(row) == 2 for row in out)
    assert a.max_inflight <= 2 and b_.posts >= 6  # all prefer A, but A is slow and full: B takes most


# ---------------------------------------------------------------------------- (c) prefix affinity


def test_same_prompt_goes_to_the_same_server():
    questions = [f"Question {i}: what is {i} + {i * 3}?\n" for i in range(12)]
    prefixes = ["", "Step 1.\n", "Step 1.\nStep 2.\n", "Step 1.\nStep 2b.\n"]
    with StubServer("A") as a, StubServer("B") as b_:
        b = client([a.base_url, b_.base_url], concurrency=16)
        # loads equal (one request at a time): every step of a question goes to its preferred server
        for q in questions:
            for pre in prefixes:
                (row,) = b.continue_many([(q, pre)], PARAMS)
                assert {who(c) for c in row} == {"AB"[affinity_index(q, 2)]}
        # one batch, well under the affinity margin: same
        out = b.continue_many([(q, pre) for q in questions[:4] for pre in prefixes], PARAMS)
        for (q, _), row in zip([(q, pre) for q in questions[:4] for pre in prefixes], out):
            assert {who(c) for c in row} == {"AB"[affinity_index(q, 2)]}
    assert {affinity_index(q, 2) for q in questions} == {0, 1}  # the questions do use both servers
    assert affinity_index(questions[0], 2) == affinity_index(questions[0], 2)  # stable (blake2b, not hash())


# ---------------------------------------------------------------------------------- (d) failover


@pytest.mark.parametrize("broken", ["http500", "closed_port"])
def test_failover_to_the_healthy_server(broken, caplog):
    prompts = [f"p{i}" for i in range(40)]
    with StubServer("A", fail=500) as a, StubServer("B") as b_:
        url_a = a.base_url if broken == "http500" else closed_port_url()
        b = client([url_a, b_.base_url], concurrency=8, max_retries=3)
        with caplog.at_level(logging.WARNING, logger="deliberate.models.openai"):
            out = b.generate(prompts, PARAMS)
    assert [[c.text for c in row] for row in out] == [[f"B|{p}|{i}" for i in range(2)] for p in prompts]
    stats_a, stats_b = b.server_stats()
    assert stats_a["failures"] >= 1 and stats_a["ok"] == 0 and stats_a["failures"] == stats_a["requests"]
    assert stats_b["ok"] == len(prompts) and stats_b["failures"] == 0
    if broken == "http500":
        assert a.posts == stats_a["requests"]
    assert "retry" in caplog.text


def test_model_name_from_the_first_server_that_answers():
    with StubServer("B") as b_:
        b = client([closed_port_url(), b_.base_url], model=None, max_retries=2)
        assert b.model_name == "stub-model"
        assert b.server_stats()[0]["failures"] == 1 and b.server_stats()[1]["ok"] == 1


def test_every_server_down_raises_after_retries():
    b = client([closed_port_url(), closed_port_url()], max_retries=3)
    with pytest.raises(RemoteError, match=r"4 attempt\(s\)"):
        b.generate(["a"], PARAMS)
    assert sum(s["requests"] for s in b.server_stats()) == 4
    assert all(s["requests"] == 2 for s in b.server_stats())  # alternating: each retry on the other server


# ----------------------------------------------------------------------------- (e) request order


def script(prompt: str, rng: random.Random) -> str:
    return "".join(rng.choice("0123456789 \n") for _ in range(10 + len(prompt) % 5))


def test_continue_many_groups_by_prompt_and_keeps_the_caller_order():
    fake = FakeBackend(script)
    srv1, url1 = serve_in_thread(fake)
    srv2, url2 = serve_in_thread(fake)
    try:
        questions = [f"Q{i}: {i}*7=?\n" for i in range(6)]
        rng = random.Random(0)
        requests = [(q, "step\n" * rng.randint(0, 3)) for q in questions for _ in range(4)]
        rng.shuffle(requests)
        params = SamplingParams(n=3, seed=9, max_tokens=12, stop=("\n",))
        expected = fake.continue_many(requests, params)  # the base class: generate(prompt + prefix)
        one = client(url1).continue_many(requests, params)
        two = client([url1, url2], concurrency=4).continue_many(requests, params)
        assert one == expected and two == expected
        assert client(url2).continue_from(questions[0], ["", "a\n"], params) == fake.continue_from(
            questions[0], ["", "a\n"], params)
    finally:
        for srv in (srv1, srv2):
            srv.shutdown()
            srv.server_close()

    # dispatch order, seen by a server taking one request at a time: grouped, shortest prefix first
    with StubServer("A") as a:
        out = client(a.base_url, concurrency=1).continue_many(requests, PARAMS)
    first_seen = list(dict.fromkeys(q for q, _ in requests))
    want = [q + pre for q in first_seen for pre in sorted((pre for q2, pre in requests if q2 == q), key=len)]
    assert a.prompts == want
    assert [[c.text for c in row] for row in out] == [[f"A|{q + pre}|{i}" for i in range(2)] for q, pre in requests]


# --------------------------------------------------------------------------- (f) URL validation


@pytest.mark.parametrize(
    ("base_url", "named"),
    [
        (["http://ok:1/v1", "ftp://bad-host/v1"], "ftp://bad-host/v1"),
        ("http://ok:1/v1,localhost:8000/v1", "localhost:8000/v1"),
        ("http://ok:1/v1,,http://ok:2/v1", "entry 2 of 3 is empty"),
        ("http://ok:1/v1, ", "entry 2 of 2 is empty"),
        (["http://ok:1/v1", 8000], "entry 2 of 2 is not a string"),
        (["http://ok:1/v1", "http:///v1"], "http:///v1"),
        (["http://ok:1/v1", "http://host:99999/v1"], "99999"),
        (["http://ok:1/v1", "http://[::1/v1"], "http://[::1/v1"),
        (["http://ok:1/v1", "http://a b/v1"], "whitespace"),
        ("http://ok:1/v1,http://ok:1/v1/", "repeats server 1"),
        ([], "no server"),
        (8000, "got int"),
    ],
)
def test_bad_url_lists_name_the_bad_entry(base_url, named):
    with pytest.raises(DeliberateError, match="base_url") as info:
        OpenAIBackend(base_url)
    assert named in str(info.value)


def test_comma_separated_urls_from_the_cli():
    args = argparse.Namespace(backend="openai", base_url="http://a:8000/v1, http://b:8000/v1/", model="m",
                              chat=False, backend_arg=["concurrency=64"])
    b = backend_from_args(args)
    assert b.base_urls == ["http://a:8000/v1", "http://b:8000/v1"] and b.base_url == "http://a:8000/v1"
    assert b.concurrency == 64 and [s["url"] for s in b.server_stats()] == b.base_urls
    assert OpenAIBackend(("http://a/v1",)).base_urls == ["http://a/v1"]


# ------------------------------------------------------------------------------------ (g) secrets


def test_passwords_in_any_url_never_show(caplog):
    secret, encoded = "pw-SECRET-42,x", "pw-SECRET-42%2Cx"  # a comma in a password must be written %2C
    with StubServer("B") as b_:
        urls = [closed_port_url().replace("http://", f"http://user:{encoded}@"), b_.base_url]
        with pytest.raises(DeliberateError) as bad:
            OpenAIBackend(urls + [urls[0].replace("/v1", "/v 1")])  # an invalid entry holding the password
        b = client(urls, max_retries=4)
        prompts = [p for p in (f"p{i}" for i in range(50)) if affinity_index(p, 2) == 0][:3]
        with caplog.at_level(logging.DEBUG):
            out = b.generate(prompts, PARAMS)  # they go to the dead server first, then fail over
            b_down = client([urls[0]], max_retries=1)
            with pytest.raises(RemoteError) as info:
                b_down.generate(["a"], PARAMS)
    assert all(len(row) == 2 for row in out)
    shown = [repr(b), str(b.server_stats()), str(info.value), repr(b_down), caplog.text, str(bad.value),
             str(vars(b))]
    for text in shown:
        assert secret not in text and encoded not in text and "pw-SECRET" not in text
    assert "user:***@" in repr(b) and "user:***@" in b.server_stats()[0]["url"]
    assert b.server_stats()[0]["failures"] >= 1 and "whitespace" in str(bad.value)
