"""A fake vLLM OpenAI-compatible server for tests (standard library, 127.0.0.1 only): it checks each
request against the shapes vLLM's ``/v1/completions`` and ``/v1/chat/completions`` accept, records it,
and answers in vLLM's response shape.

What it checks is taken from vLLM's request models (``vllm/entrypoints/openai/protocol.py``:
``CompletionRequest`` and ``ChatCompletionRequest``): the field names each endpoint knows (vLLM only
warns about others and ignores them, so a misspelt field silently does nothing: here it is a 400),
their JSON types (completions' ``logprobs`` is an integer, chat's a boolean), messages as
``{"role", "content"}`` objects, ``continue_final_message`` only with ``add_generation_prompt: false``
and a final assistant message (vLLM refuses both set), ``n >= 1``, ``max_tokens >= 1``.

    with FakeVLLM() as server:
        OpenAIBackend(server.base_url, chat=True).generate(...)
        server.requests  # [(path, body), ...]

The answer: ``n`` choices, each the text ``reply(body, i)`` (default ``" ok{i}"``), with ``usage`` (and,
like vLLM, no per-choice token counts).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: fields both endpoints take (sampling; vLLM's extra sampling parameters included)
COMMON = {"model": str, "n": int, "temperature": (int, float), "top_p": (int, float), "max_tokens": int,
          "seed": int, "stop": (str, list), "stream": bool, "user": str, "top_k": int, "min_p": (int, float),
          "repetition_penalty": (int, float), "presence_penalty": (int, float), "frequency_penalty": (int, float),
          "stop_token_ids": list, "ignore_eos": bool, "min_tokens": int, "skip_special_tokens": bool,
          "include_stop_str_in_output": bool, "best_of": int, "logit_bias": dict, "guided_json": (dict, str),
          "guided_regex": str, "guided_choice": list, "structured_outputs": dict, "priority": int,
          "request_id": str}
COMPLETIONS = {**COMMON, "prompt": (str, list), "logprobs": int, "echo": bool, "suffix": str,
               "add_special_tokens": bool, "prompt_logprobs": int}
CHAT = {**COMMON, "messages": list, "logprobs": bool, "top_logprobs": int, "max_completion_tokens": int,
        "add_generation_prompt": bool, "continue_final_message": bool, "echo": bool, "add_special_tokens": bool,
        "chat_template": str, "chat_template_kwargs": dict, "documents": list, "tools": list,
        "tool_choice": (str, dict), "response_format": dict}
ROLES = ("system", "user", "assistant", "tool", "developer")


def shape_errors(path: str, body: object) -> list[str]:
    """What vLLM would refuse or silently ignore in ``body`` sent to ``path``."""
    if not isinstance(body, dict):
        return ["body is not a JSON object"]
    known = COMPLETIONS if path.endswith("/completions") and not path.endswith("/chat/completions") else CHAT
    errors = [f"unknown field {k!r} (vLLM ignores it)" for k in body if k not in known]
    for k, want in known.items():
        if k in body and body[k] is not None and (not isinstance(body[k], want) or isinstance(body[k], bool)
                                                  and want in (int, (int, float))):
            errors.append(f"{k!r} has type {type(body[k]).__name__}")
    for k in ("n", "max_tokens"):
        if isinstance(body.get(k), int) and body[k] < 1:
            errors.append(f"{k!r} must be >= 1")
    if isinstance(body.get("stop"), list) and not all(isinstance(s, str) for s in body["stop"]):
        errors.append("'stop' must hold strings")
    if known is COMPLETIONS:
        if "prompt" not in body:
            errors.append("'prompt' is required")
        return errors
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return [*errors, "'messages' must be a non-empty list"]
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            errors.append(f"bad message {m!r}")
    if body.get("continue_final_message"):
        if body.get("add_generation_prompt", True):
            errors.append("continue_final_message and add_generation_prompt cannot both be true")
        if isinstance(messages[-1], dict) and messages[-1].get("role") != "assistant":
            errors.append("continue_final_message needs a final assistant message")
    return errors


class FakeVLLM:
    """Serves vLLM's two endpoints and ``/v1/models`` on a free port; ``requests`` records every POST."""

    def __init__(self, model: str = "served-model", reply=None):
        self.model = model
        self.reply = reply or (lambda body, i: f" ok{i}")
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self.send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                else:
                    self.send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                with fake.lock:
                    fake.requests.append((self.path, body))
                if self.path not in ("/v1/completions", "/v1/chat/completions"):
                    return self.send(404, {"error": {"message": "not found"}})
                errors = shape_errors(self.path, body)
                if errors:
                    return self.send(400, {"error": {"message": "; ".join(errors), "type": "BadRequestError"}})
                n = body.get("n", 1)
                texts = [fake.reply(body, i) for i in range(n)]
                if self.path == "/v1/chat/completions":
                    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop",
                                "logprobs": None} for i, t in enumerate(texts)]
                else:
                    choices = [{"index": i, "text": t, "finish_reason": "length", "logprobs": None}
                               for i, t in enumerate(texts)]
                tokens = sum(len(t.split()) for t in texts)
                self.send(200, {"id": "cmpl-fake", "object": "text_completion", "model": fake.model,
                                "choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": tokens,
                                                              "total_tokens": 5 + tokens}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="fake-vllm")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeVLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
