"""``deliberate serve``: an OpenAI-compatible HTTP server over any in-process :class:`Backend`.

Why: one local model (tiny, hf ...) can then be shared by several processes, or driven by any
OpenAI client, and the ``openai`` backend can be tested end to end without a third-party server.
Standard library only (``http.server``).

    deliberate serve --backend tiny --model runs/tiny --port 8000
    curl http://127.0.0.1:8000/v1/completions -d '{"prompt": "2+2=", "max_tokens": 8, "seed": 1}'

Endpoints: ``GET /v1/models``, ``POST /v1/completions`` (``prompt`` a string or a list of strings),
``POST /v1/chat/completions``, ``GET /health``. Accepted request fields: ``n``, ``temperature``,
``top_p``, ``max_tokens`` (chat also ``max_completion_tokens``), ``stop`` (string or list), ``seed``,
``logprobs``; others (``model``, ``user``, ``top_logprobs`` ...) are ignored, ``stream`` is refused.

Rules:

* The request's ``seed`` goes straight into :class:`SamplingParams`, so (seeding contract of
  ``models/sampling.py``) the server returns exactly what the backend returns in-process, however
  the client splits prompts across requests. A request without ``seed`` gets a fresh random one, as
  with OpenAI; missing ``max_tokens`` means the ``SamplingParams`` default (256).
* Chat messages become one prompt through ``backend.chat_prompt(messages)`` when the backend has it,
  else by joining the message contents with newlines.
* Backend calls are serialised with a lock (local models are not thread-safe); HTTP handling is
  concurrent.
* Responses have the OpenAI shape plus one extension: each choice carries ``completion_tokens``
  (the ``openai`` backend reads it, so per-sample counts survive the round trip). Log-probs are
  those of the sampled tokens only; token strings are not known to the backend interface, so
  completions send ``tokens: null`` and chat sends ``token: ""``.
* Bad JSON or bad sampling values -> 400 ``{"error": {"message", "type": "invalid_request_error"}}``;
  unknown path -> 404; wrong or missing Bearer key (when the server has one) -> 401; backend
  failures -> 500.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.models.base import Backend, get_backend
from deliberate.models.sampling import SamplingParams
from deliberate.types import Completion

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_


class DeliberateHTTPServer(ThreadingHTTPServer):
    """The server object: ``.port`` and ``.base_url`` (``http://host:port/v1``) after binding."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog: clients opening 64+ connections at once are not reset

    def __init__(self, address, backend: Backend, model_name: str, api_key: str | None):
        super().__init__(address, _Handler)
        self.backend = backend
        self.model_name = model_name
        self.api_key = api_key
        self.backend_lock = threading.Lock()
        self.created = int(time.time())

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base_url(self) -> str:
        host = self.server_address[0]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"


def make_server(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str | None = None,
    api_key: str | None = None,
) -> DeliberateHTTPServer:
    """Bind (``port=0`` picks a free port) without serving yet; call ``serve_forever()`` on the result.

    With ``api_key`` set, every request must carry ``Authorization: Bearer <api_key>``.
    """
    if not isinstance(backend, Backend):
        raise DeliberateError(f"make_server needs a Backend, got {type(backend).__name__}")
    name = model_name or backend.model_name
    try:
        return DeliberateHTTPServer((host, port), backend, name, api_key)
    except OSError as e:
        raise DeliberateError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve_in_thread(backend: Backend, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
                    api_key: str | None = None) -> tuple[DeliberateHTTPServer, str]:
    """Serve in a daemon thread; returns ``(server, base_url)``. Stop with ``server.shutdown(); server.server_close()``."""
    server = make_server(backend, host, port, model_name, api_key)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name=f"deliberate-serve-{server.port}")
    t.start()
    return server, server.base_url


# ----------------------------------------------------------------------------------- request parsing


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _sampling_params(req: dict, chat: bool) -> SamplingParams:
    kw: dict[str, Any] = {}
    for key in ("n", "seed"):
        if req.get(key) is not None:
            if not _is_int(req[key]):
                raise _HTTPError(400, f"'{key}' must be an integer (got {req[key]!r})")
            kw[key] = req[key]
    max_tokens = req.get("max_tokens")
    if max_tokens is None and chat:
        max_tokens = req.get("max_completion_tokens")
    if max_tokens is not None:
        if not _is_int(max_tokens):
            raise _HTTPError(400, f"'max_tokens' must be an integer (got {max_tokens!r})")
        kw["max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        if req.get(key) is not None:
            if isinstance(req[key], bool) or not isinstance(req[key], (int, float)):
                raise _HTTPError(400, f"'{key}' must be a number (got {req[key]!r})")
            kw[key] = float(req[key])
    stop = req.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _HTTPError(400, f"'stop' must be a string or a list of strings (got {stop!r})")
        kw["stop"] = tuple(stop)
    lp = req.get("logprobs")
    if chat:
        if lp is not None and not isinstance(lp, bool):
            raise _HTTPError(400, f"'logprobs' must be a boolean for chat completions (got {lp!r})")
        kw["logprobs"] = bool(lp)
    else:
        if lp is not None and not isinstance(lp, (bool, int)):
            raise _HTTPError(400, f"'logprobs' must be an integer or null (got {lp!r})")
        kw["logprobs"] = lp is not None and lp is not False
    if "seed" not in kw:
        kw["seed"] = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    try:
        return SamplingParams(**kw)
    except DeliberateError as e:
        raise _HTTPError(400, str(e)) from None


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise _HTTPError(400, "only text message content is supported")
        return "".join(parts)
    if content is None:
        return ""
    raise _HTTPError(400, f"message content must be a string or a list of text parts (got {type(content).__name__})")


def chat_to_prompt(backend: Backend, messages: Any) -> str:
    """``backend.chat_prompt(messages)`` when the backend defines it, else contents joined by newlines."""
    if not isinstance(messages, list) or not messages:
        raise _HTTPError(400, "'messages' must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _HTTPError(400, "each message must be an object with a 'role'")
    fmt = getattr(backend, "chat_prompt", None)
    if callable(fmt):
        try:
            return fmt(messages)
        except DeliberateError as e:
            raise _HTTPError(400, str(e)) from None
    return "\n".join(_message_text(m.get("content")) for m in messages)


# ------------------------------------------------------------------------------------ response shape


def _completion_choice(i: int, c: Completion) -> dict:
    lp = None
    if c.logprobs is not None:
        lp = {"tokens": None, "token_logprobs": list(c.logprobs), "top_logprobs": None, "text_offset": None}
    return {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": lp,
            "completion_tokens": c.completion_tokens}


def _chat_choice(i: int, c: Completion) -> dict:
    lp = None
    if c.logprobs is not None:
        lp = {"content": [{"token": "", "logprob": x, "bytes": None, "top_logprobs": []} for x in c.logprobs]}
    return {"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
            "logprobs": lp, "completion_tokens": c.completion_tokens}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    server: DeliberateHTTPServer

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- plumbing

    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, e: _HTTPError) -> None:
        self._send_json(e.status, {"error": {"message": e.message, "type": e.type, "param": None, "code": None}})

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self.close_connection = True
                raise _HTTPError(411, "chunked request bodies are not supported; send Content-Length")
            return b""
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise _HTTPError(400, "bad Content-Length") from None
        if n < 0 or n > MAX_BODY_BYTES:
            self.close_connection = True
            raise _HTTPError(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")
        return self.rfile.read(n)

    def _check_auth(self) -> None:
        key = self.server.api_key
        if not key:
            return
        got = self.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {key}".encode()):
            raise _HTTPError(401, "missing or invalid API key", "authentication_error")

    def _dispatch(self, method: str) -> None:
        try:
            body = self._read_body() if method == "POST" else b""
            path = self.path.split("?", 1)[0].rstrip("/")
            routes = {
                ("GET", "/health"): None,
                ("GET", "/v1/models"): self._models,
                ("POST", "/v1/completions"): self._completions,
                ("POST", "/v1/chat/completions"): self._chat,
            }
            if (method, path) not in routes:
                known = {p for _, p in routes}
                if path in known:
                    raise _HTTPError(405, f"method {method} not allowed on {path}")
                raise _HTTPError(404, f"unknown path {path!r}", "not_found_error")
            if path == "/health":
                self._send_json(200, {"status": "ok"})
                return
            self._check_auth()
            handler = routes[(method, path)]
            if method == "POST":
                try:
                    req = json.loads(body)
                except (ValueError, UnicodeDecodeError) as e:
                    raise _HTTPError(400, f"request body is not valid JSON: {e}") from None
                if not isinstance(req, dict):
                    raise _HTTPError(400, "request body must be a JSON object")
                if req.get("stream"):
                    raise _HTTPError(400, "stream=true is not supported")
                self._send_json(200, handler(req))
            else:
                self._send_json(200, handler())
        except _HTTPError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a backend failure: report it, keep serving
            log.error("request failed: %s\n%s", e, traceback.format_exc())
            try:
                self._send_error(_HTTPError(500, f"{type(e).__name__}: {e}", "server_error"))
            except OSError:
                self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- endpoints

    def _models(self) -> dict:
        s = self.server
        return {"object": "list",
                "data": [{"id": s.model_name, "object": "model", "created": s.created, "owned_by": "deliberate"}]}

    def _run(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        with self.server.backend_lock:
            try:
                out = self.server.backend.generate(prompts, params)
            except DeliberateError as e:
                raise _HTTPError(400, str(e)) from None
        if len(out) != len(prompts) or any(len(row) != params.n for row in out):
            raise _HTTPError(500, "backend returned the wrong number of completions", "server_error")
        return out

    def _envelope(self, obj: str, prefix: str, choices: list[dict], prompt_tokens: int, rows) -> dict:
        completion_tokens = sum(c.completion_tokens for row in rows for c in row)
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": obj,
            "created": int(time.time()),
            "model": self.server.model_name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _completions(self, req: dict) -> dict:
        prompt = req.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise _HTTPError(400, "'prompt' must be a string or a non-empty list of strings (token ids are not supported)")
        params = _sampling_params(req, chat=False)
        rows = self._run(prompts, params)
        # OpenAI numbering for several prompts: choice index = prompt_index * n + sample_index.
        choices = [_completion_choice(i * params.n + j, c) for i, row in enumerate(rows) for j, c in enumerate(row)]
        prompt_tokens = sum(row[0].prompt_tokens for row in rows)
        return self._envelope("text_completion", "cmpl", choices, prompt_tokens, rows)

    def _chat(self, req: dict) -> dict:
        prompt = chat_to_prompt(self.server.backend, req.get("messages"))
        params = _sampling_params(req, chat=True)
        rows = self._run([prompt], params)
        choices = [_chat_choice(j, c) for j, c in enumerate(rows[0])]
        return self._envelope("chat.completion", "chatcmpl", choices, rows[0][0].prompt_tokens, rows)


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``deliberate serve``."""
    parser.add_argument("--backend", required=True, help="backend name, e.g. tiny or hf")
    parser.add_argument("--model", default=None, help="model path passed to the backend as path=")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = pick a free one; default 8000)")
    parser.add_argument("--model-name", default=None, help="model id reported by /v1/models (default: the backend's)")
    parser.add_argument("--api-key-env", default=None, metavar="VAR",
                        help="require clients to send the key held in environment variable VAR as a Bearer token")


def main(args: argparse.Namespace) -> int:
    """Build the backend, serve until Ctrl-C."""
    api_key = None
    if getattr(args, "api_key_env", None):
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise DeliberateError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    kwargs = {"path": args.model} if args.model else {}
    backend = get_backend(args.backend, **kwargs)
    try:
        server = make_server(backend, args.host, args.port, getattr(args, "model_name", None), api_key)
        print(f"deliberate serve: model {server.model_name!r} at {server.base_url}  (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("deliberate serve: stopping", flush=True)
        finally:
            server.server_close()
    finally:
        backend.close()
    return 0
