"""Tests for the ``openai`` backend against ``deliberate serve`` over a FakeBackend, directly and
through a fault-injecting proxy: same samples as in-process, retries, errors, API-key hygiene."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import threading
import time

import pytest
from fakes import FakeBackend
from faultproxy import FaultProxy

from deliberate.errors import DeliberateError
from deliberate.models.base import get_backend
from deliberate.models.openai import OpenAIBackend, RemoteError, parse_choices
from deliberate.models.sampling import SamplingParams
from deliberate.models.server import serve_in_thread


def lines(prompt: str, rng: random.Random) -> str:
    """Prompt-dependent text with newlines, so stop strings and max_tokens both matter."""
    return "".join(rng.choice("0123456789\n") for _ in range(12 + len(prompt) % 7))


@pytest.fixture
def fake():
    return FakeBackend(lines)


@pytest.fixture
def url(fake):
    srv, base_url = serve_in_thread(fake, model_name="fake-model")
    yield base_url
    srv.shutdown()
    srv.server_close()


def client(base_url, **kw):
    kw.setdefault("retry_base_delay", 0.001)
    kw.setdefault("timeout", 10)
    return OpenAIBackend(base_url, **kw)


PROMPTS = ["Q: 1+1?\n", "Q: 2+3?\n", "Q: what is 17*3?\n", "hello"]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=1, seed=0, max_tokens=8),
        SamplingParams(n=3, seed=7, max_tokens=16, logprobs=True),
        SamplingParams(n=2, seed=1, stop=("\n",), temperature=0.8, top_p=0.9),
        SamplingParams(n=4, temperature=0, max_tokens=5, logprobs=True),
    ],
)
def test_same_samples_as_in_process(fake, url, chat, params):
    remote = client(url, chat=chat).generate(PROMPTS, params)
    direct = fake.generate(PROMPTS, params)
    assert remote == direct  # texts, prompt/completion token counts, finish reasons, log-probs
    assert all(len(row) == params.n for row in remote)


def test_stop_strings_pass_through(fake, url):
    params = SamplingParams(n=3, seed=2, stop=("\n", "99"), max_tokens=30)
    remote = client(url).generate(PROMPTS, params)
    for row in remote:
        for c in row:
            assert "\n" not in c.text and "99" not in c.text
    assert remote == fake.generate(PROMPTS, params)
    assert any(c.completion_tokens > len(c.text) for row in remote for c in row)  # stop string counted


def test_model_resolved_from_models_endpoint(url):
    b = client(url)
    assert b.model is None
    assert b.list_models() == ["fake-model"]
    assert b.model_name == "fake-model" and b.model == "fake-model"
    assert client(url, model="explicit").model_name == "explicit"


def test_registered_as_openai(url):
    b = get_backend("openai", base_url=url, retry_base_delay=0.001)
    assert isinstance(b, OpenAIBackend)
    assert b.generate(["x"], SamplingParams(max_tokens=3))[0][0].completion_tokens <= 3


def test_64_concurrent_prompts_bounded_by_concurrency(fake, url):
    prompts = [f"problem {i}: " + "x" * (i % 5) for i in range(64)]
    params = SamplingParams(n=2, seed=11, max_tokens=10)
    with FaultProxy(url) as proxy:
        remote = client(proxy.base_url, model="m", concurrency=8).generate(prompts, params)
    assert remote == fake.generate(prompts, params)
    assert proxy.counts["ok"] == 64  # one request per prompt
    assert 1 < proxy.max_inflight <= 8


def test_generate_from_thread_and_from_running_loop(fake, url):
    params = SamplingParams(n=2, seed=4, max_tokens=6)
    expected = fake.generate(PROMPTS, params)
    b = client(url, model="m")
    box = []
    t = threading.Thread(target=lambda: box.append(b.generate(PROMPTS, params)))
    t.start()
    t.join(30)
    assert box == [expected]

    async def inside_a_loop():
        return b.generate(PROMPTS, params)

    assert asyncio.run(inside_a_loop()) == expected


def test_faults_are_retried_and_nothing_is_lost_or_duplicated(fake, url, caplog):
    prompts = [f"p{i}\n" for i in range(24)]
    params = SamplingParams(n=3, seed=5, max_tokens=12, logprobs=True)
    plan = ["500", "429", "malformed", "drop"]
    with FaultProxy(url, plan=plan, rate=0.35, kinds=plan, seed=1, max_per_request=3) as proxy:
        with caplog.at_level(logging.WARNING, logger="deliberate.models.openai"):
            remote = client(proxy.base_url, model="m", max_retries=5, concurrency=6).generate(prompts, params)
    assert remote == fake.generate(prompts, params)
    assert all(proxy.counts[k] >= 1 for k in plan)
    assert proxy.counts["ok"] == len(prompts)  # each prompt got through exactly once ...
    posts = [entry for entry in proxy.log if entry[1] == "POST"]
    assert len(posts) == len(prompts) + sum(proxy.counts[k] for k in plan)  # ... after one retry per fault
    assert "retry" in caplog.text


def test_retry_after_is_honoured(url):
    with FaultProxy(url, plan=["429"], retry_after=0.3) as proxy:
        out = client(proxy.base_url, model="m", retry_base_delay=0.0).generate(["a"], SamplingParams(max_tokens=3))
    assert len(out[0]) == 1
    (t0, *_), (t1, *_) = [e for e in proxy.log if e[1] == "POST"]
    assert t1 - t0 >= 0.28


def test_hang_longer_than_timeout_is_retried(fake, url):
    params = SamplingParams(n=2, seed=3, max_tokens=5)
    with FaultProxy(url, plan=["hang"], hang_s=5.0) as proxy:
        start = time.monotonic()
        out = client(proxy.base_url, model="m", timeout=0.3).generate(["a"], params)
        elapsed = time.monotonic() - start
    assert out == fake.generate(["a"], params)
    assert proxy.counts["hang"] == 1 and elapsed < 4.0


def test_gives_up_after_max_retries(url):
    with FaultProxy(url, plan=["500"] * 3) as proxy:
        with pytest.raises(RemoteError, match=r"3 attempt\(s\).*HTTP 500") as info:
            client(proxy.base_url, model="m", max_retries=2).generate(["a"], SamplingParams())
    assert info.value.status == 500 and proxy.counts["500"] == 3


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteError, match="2 attempt"):
        client(f"http://127.0.0.1:{port}/v1", model="m", max_retries=1).generate(["a"], SamplingParams())


def test_server_fewer_choices_than_n_are_topped_up(fake, url):
    params = SamplingParams(n=4, seed=8, max_tokens=20)
    with FaultProxy(url, plan=["fewer_choices"]) as proxy:
        out = client(proxy.base_url, model="m").generate(["a"], params)
    direct = fake.generate(["a"], params)[0]
    assert len(out[0]) == 4 and out[0][0] == direct[0]
    assert out[0][1:] != direct[1:]  # follow-up used a derived seed (documented)
    assert proxy.counts["fewer_choices"] == 1 and proxy.counts["ok"] == 1


def test_client_errors_are_not_retried_and_carry_the_server_message():
    def script(prompt, rng):
        raise DeliberateError("this prompt is refused")

    srv, url = serve_in_thread(FakeBackend(script))
    try:
        with FaultProxy(url) as proxy:
            with pytest.raises(RemoteError, match="HTTP 400: .*this prompt is refused") as info:
                client(proxy.base_url, model="m").generate(["a"], SamplingParams())
        assert info.value.status == 400 and proxy.counts["ok"] == 1
        with pytest.raises(RemoteError, match="HTTP 404") as info:
            client(url.removesuffix("/v1"), model="m").generate(["a"], SamplingParams())
        assert info.value.status == 404
    finally:
        srv.shutdown()
        srv.server_close()


def test_server_side_validation_via_raw_post(url):
    import httpx

    r = httpx.post(url + "/completions", json={"prompt": "a", "temperature": -1})
    assert r.status_code == 400
    assert "temperature" in r.json()["error"]["message"]


def test_api_key_from_env_is_sent_and_never_shown(monkeypatch, caplog, capsys):
    key = "sk-test-ZYXW-987654321"
    fake = FakeBackend(lines)
    srv, url = serve_in_thread(fake, api_key=key)
    try:
        for var in ("OPENAI_API_KEY", "DELIBERATE_API_KEY"):
            monkeypatch.delenv("OPENAI_API_KEY", raising=False)
            monkeypatch.delenv("DELIBERATE_API_KEY", raising=False)
            monkeypatch.setenv(var, key)
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                with FaultProxy(url, plan=["500", "ok", "429"], methods=("POST", "GET")) as proxy:
                    b = client(proxy.base_url)
                    out = b.generate(["a", "b"], SamplingParams(n=2, seed=1))
                    print(repr(b), b, vars(b))
            assert out == fake.generate(["a", "b"], SamplingParams(n=2, seed=1))
            assert proxy.auth_headers and all(h == f"Bearer {key}" for h in proxy.auth_headers)
            assert key not in repr(b) and "***" in repr(b)
            assert "retry" in caplog.text and key not in caplog.text
            assert key not in capsys.readouterr().out
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.delenv("DELIBERATE_API_KEY", raising=False)
        with pytest.raises(RemoteError, match="HTTP 401") as info:
            client(url, model="m").generate(["a"], SamplingParams())
        assert info.value.status == 401
        with pytest.raises(RemoteError, match="HTTP 401") as info:
            client(url, model="m", api_key="wrong-key").generate(["a"], SamplingParams())
        assert "wrong-key" not in str(info.value)
    finally:
        srv.shutdown()
        srv.server_close()


def test_constructor_validation():
    with pytest.raises(DeliberateError, match="base_url"):
        OpenAIBackend("localhost:8000/v1")
    with pytest.raises(DeliberateError, match="concurrency"):
        OpenAIBackend("http://x/v1", concurrency=0)
    with pytest.raises(DeliberateError, match="timeout"):
        OpenAIBackend("http://x/v1", timeout=0)
    with pytest.raises(DeliberateError, match="max_retries"):
        OpenAIBackend("http://x/v1", max_retries=-1)
    with pytest.raises(DeliberateError, match="list of prompts"):
        OpenAIBackend("http://x/v1").generate("one prompt", SamplingParams())
    assert OpenAIBackend("http://x/v1").generate([], SamplingParams()) == []


def test_parse_choices_token_counts_and_order():
    body = {
        "choices": [
            {"index": 1, "text": "bb", "finish_reason": "length", "logprobs": None},
            {"index": 0, "text": "a", "finish_reason": "eos", "logprobs": None},
            {"index": 2, "text": "c", "finish_reason": None},
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 8},
    }
    out = parse_choices(body, chat=False)
    assert [c.text for c in out] == ["a", "bb", "c"]
    assert [c.finish_reason for c in out] == ["stop", "length", "stop"]
    assert [c.completion_tokens for c in out] == [3, 3, 2] and sum(c.completion_tokens for c in out) == 8
    assert all(c.prompt_tokens == 5 for c in out)

    lp = math.log(0.25)
    chat = {
        "choices": [
            {"index": 0, "message": {"content": "xy"}, "finish_reason": "stop",
             "logprobs": {"content": [{"token": "x", "logprob": lp}, {"token": "y", "logprob": lp}]}},
            {"index": 1, "message": {"content": "z"}, "finish_reason": "stop",
             "logprobs": {"content": [{"token": "z", "logprob": lp}]}},
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3},
    }
    out = parse_choices(chat, chat=True)
    assert [c.completion_tokens for c in out] == [2, 1] and out[0].logprobs == (lp, lp)

    comp = {"choices": [{"index": 0, "text": "ab", "logprobs": {"tokens": ["a", "b"], "token_logprobs": [lp, lp]}}]}
    (c,) = parse_choices(comp, chat=False)
    assert c.completion_tokens == 2 and c.prompt_tokens == 0 and c.logprobs == (lp, lp)

    for bad in ({}, {"choices": []}, {"choices": [{"index": 0}]}, [1], {"choices": [{"message": None}]}):
        with pytest.raises(ValueError):
            parse_choices(bad, chat=False)
