"""Tests for ``deliberate serve`` (models/server.py): OpenAI response shapes, validation, auth, CLI entry."""

from __future__ import annotations

import argparse
import json
import random
import threading
import time

import httpx
import pytest
from fakes import FakeBackend

from deliberate.errors import DeliberateError
from deliberate.cli import serve as serve_cli
from deliberate.models.base import register_backend
from deliberate.models.sampling import SamplingParams
from deliberate.models.server import make_server, serve_in_thread


def echo(prompt: str, rng: random.Random) -> str:
    return f"<{prompt}>" + "".join(rng.choice("abc") for _ in range(10))


@pytest.fixture
def served():
    started = []

    def start(backend, **kw):
        srv, url = serve_in_thread(backend, **kw)
        started.append(srv)
        return srv, url

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def test_models_lists_the_model(served):
    srv, url = served(FakeBackend(), model_name="my-model")
    assert url == f"http://127.0.0.1:{srv.port}/v1" and srv.port > 0
    r = httpx.get(url + "/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["my-model"]
    _, url2 = served(FakeBackend())
    assert httpx.get(url2 + "/models").json()["data"][0]["id"] == "fake"


def test_completions_shape_and_values(served):
    fb = FakeBackend(echo)
    _, url = served(fb)
    r = httpx.post(url + "/completions", json={"prompt": ["x", "yy"], "n": 2, "seed": 3, "max_tokens": 6,
                                               "logprobs": 0, "temperature": 0.7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "fake"
    direct = fb.generate(["x", "yy"], SamplingParams(n=2, seed=3, max_tokens=6, logprobs=True, temperature=0.7))
    flat = [c for row in direct for c in row]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == [c.text for c in flat]
    assert [c["finish_reason"] for c in body["choices"]] == ["length"] * 4
    assert [c["logprobs"]["token_logprobs"] for c in body["choices"]] == [list(c.logprobs) for c in flat]
    assert [c["completion_tokens"] for c in body["choices"]] == [6] * 4
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 24, "total_tokens": 27}


def test_stop_as_string_or_list(served):
    fb = FakeBackend(lambda p, rng: "one\ntwo\nthree")
    _, url = served(fb)
    for stop in ("\n", ["zzz", "\n"]):
        c = httpx.post(url + "/completions", json={"prompt": "p", "stop": stop}).json()["choices"][0]
        assert c["text"] == "one" and c["finish_reason"] == "stop" and c["logprobs"] is None


def test_chat_joins_messages_or_uses_chat_prompt(served):
    fb = FakeBackend(echo)
    _, url = served(fb)
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    body = httpx.post(url + "/chat/completions", json={"messages": msgs, "seed": 1, "logprobs": True}).json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith("<sys\nhi>")
    assert len(choice["logprobs"]["content"]) == choice["completion_tokens"]

    class Templated(FakeBackend):
        def chat_prompt(self, messages):
            return "|".join(f"{m['role']}:{m['content']}" for m in messages)

    _, url2 = served(Templated(echo))
    body = httpx.post(url2 + "/chat/completions", json={"messages": [{"role": "user", "content": "q"}]}).json()
    assert body["choices"][0]["message"]["content"].startswith("<user:q>")


@pytest.mark.parametrize(
    "path, payload, fragment",
    [
        ("/completions", {"prompt": "p", "temperature": -1}, "temperature"),
        ("/completions", {"prompt": "p", "top_p": 0}, "top_p"),
        ("/completions", {"prompt": "p", "n": 0}, "n must be"),
        ("/completions", {"prompt": "p", "n": True}, "'n'"),
        ("/completions", {"prompt": "p", "max_tokens": 2.5}, "max_tokens"),
        ("/completions", {"prompt": "p", "stop": [""]}, "stop"),
        ("/completions", {"prompt": "p", "stop": 3}, "stop"),
        ("/completions", {"prompt": [1, 2, 3]}, "prompt"),
        ("/completions", {}, "prompt"),
        ("/completions", {"prompt": "p", "stream": True}, "stream"),
        ("/completions", [1, 2], "JSON object"),
        ("/chat/completions", {"messages": []}, "messages"),
        ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": 1}, "logprobs"),
    ],
)
def test_invalid_requests_are_400(served, path, payload, fragment):
    fb = FakeBackend()
    _, url = served(fb)
    r = httpx.post(url + path, json=payload)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and fragment in err["message"]
    assert fb.calls == 0


def test_bad_json_unknown_path_and_backend_errors(served):
    def script(prompt, rng):
        if prompt == "bad":
            raise DeliberateError("prompt 'bad' is not allowed")
        if prompt == "crash":
            raise RuntimeError("boom")
        return "ok"

    _, url = served(FakeBackend(script))
    r = httpx.post(url + "/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert httpx.get(url + "/nothing").status_code == 404
    assert httpx.post(url.replace("/v1", "") + "/completions", json={"prompt": "p"}).status_code == 404
    assert httpx.get(url + "/completions").status_code == 405
    r = httpx.post(url + "/completions", json={"prompt": "bad"})
    assert r.status_code == 400 and "not allowed" in r.json()["error"]["message"]
    r = httpx.post(url + "/completions", json={"prompt": "crash"})
    assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
    # still serving after errors
    assert httpx.post(url + "/completions", json={"prompt": "p"}).json()["choices"][0]["text"] == "ok"


def test_seed_is_passed_through_and_missing_seed_is_random(served):
    fb = FakeBackend()
    _, url = served(fb)
    texts = lambda payload: [c["text"] for c in httpx.post(url + "/completions", json=payload).json()["choices"]]
    assert texts({"prompt": "p", "seed": 9, "n": 2}) == [c.text for c in fb.generate(["p"], SamplingParams(n=2, seed=9))[0]]
    assert len({texts({"prompt": "p"})[0] for _ in range(4)}) > 1


def test_api_key_required_when_configured(served):
    _, url = served(FakeBackend(), api_key="s3cret")
    assert httpx.post(url + "/completions", json={"prompt": "p"}).status_code == 401
    assert httpx.get(url + "/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.post(url + "/completions", json={"prompt": "p"}, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200


def test_backend_calls_are_serialised(served):
    class Watch(FakeBackend):
        def __init__(self):
            super().__init__()
            self.active = 0
            self.overlap = False

        def generate(self, prompts, params):
            self.active += 1
            self.overlap |= self.active > 1
            time.sleep(0.01)
            self.active -= 1
            return super().generate(prompts, params)

    fb = Watch()
    _, url = served(fb)
    results = []

    def hit(i):
        results.append(httpx.post(url + "/completions", json={"prompt": str(i)}, timeout=10).status_code)

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # concurrent requests may share a call (batching, tests/test_serve_limits.py), never overlap
    assert results == [200] * 8 and 1 <= fb.calls <= 8 and not fb.overlap


def test_make_server_rejects_non_backend():
    with pytest.raises(DeliberateError):
        make_server(object())


def test_cli_main_builds_backend_and_serves(monkeypatch, capsys, clean_registries):
    seen = {}

    def _factory(**kwargs):
        seen.update(kwargs)
        return FakeBackend(lambda p, rng: "served")

    register_backend("fake-for-serve-test")(_factory)  # clean_registries removes it again

    made = []
    real_make = serve_cli.make_server

    def spy(*a, **kw):
        made.append(real_make(*a, **kw))
        return made[-1]

    monkeypatch.setattr(serve_cli, "make_server", spy)
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--backend", "fake-for-serve-test", "--model", "some/dir", "--port", "0"])
    rc = []
    t = threading.Thread(target=lambda: rc.append(serve_cli.main(args)), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not made and time.monotonic() < deadline:
        time.sleep(0.01)
    srv = made[0]
    try:
        r = httpx.post(srv.base_url + "/completions", json={"prompt": "p"}, timeout=10)
        assert r.json()["choices"][0]["text"] == "served"
    finally:
        srv.shutdown()
    t.join(10)
    assert rc == [0] and seen == {"path": "some/dir"}
    assert srv.base_url in capsys.readouterr().out


def test_cli_api_key_env_must_be_set(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--backend", "fake", "--api-key-env", "NO_SUCH_KEY_VAR"])
    with pytest.raises(DeliberateError, match="NO_SUCH_KEY_VAR"):
        serve_cli.main(args)


def test_response_is_plain_json_with_content_length(served):
    _, url = served(FakeBackend())
    r = httpx.post(url + "/completions", json={"prompt": "p"})
    assert int(r.headers["content-length"]) == len(r.content)
    json.loads(r.content)
