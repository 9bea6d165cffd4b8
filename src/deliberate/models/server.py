"""``deliberate serve``: an OpenAI-compatible HTTP server over any in-process :class:`Backend`.

Why: one local model (tiny, hf ...) can then be shared by several processes, or driven by any
OpenAI client, and the ``openai`` backend can be tested end to end without a third-party server.
Starlette on uvicorn (the stack vLLM and SGLang use); the model runs in one worker thread that
merges concurrent requests into shared batches (``models/batcher.py``).

    deliberate serve --backend tiny --model runs/tiny --port 8000
    curl http://127.0.0.1:8000/v1/completions -d '{"prompt": "2+2=", "max_tokens": 8, "seed": 1}'

Endpoints: ``GET /v1/models``, ``POST /v1/completions`` (``prompt`` a string or a list of strings),
``POST /v1/chat/completions``, ``GET /health``. Accepted request fields: ``n``, ``temperature``,
``top_p``, ``max_tokens`` (chat also ``max_completion_tokens``), ``stop`` (string or list), ``seed``,
``logprobs``; others (``model``, ``user``, ``top_logprobs`` ...) are ignored, ``stream`` is refused.

Rules:

* The request's ``seed`` goes straight into :class:`SamplingParams`, so (seeding contract of
  ``models/sampling.py``) the server returns exactly what the backend returns in-process, however
  the client splits prompts across requests and however the server batches them. A request without
  ``seed`` gets a fresh random one, as with OpenAI; missing ``max_tokens`` means the
  ``SamplingParams`` default (256).
* Chat messages become one prompt through ``backend.chat_prompt(messages)`` when the backend has it,
  else by joining the message contents with newlines.
* No single request can exhaust the server (all flags of ``deliberate serve``, see
  :class:`ServerLimits`): ``n``, ``max_tokens`` and the request's total tokens (prompts x ``n`` x
  ``max_tokens`` plus the prompts, counted as UTF-8 bytes, an upper bound on their tokens) are
  capped, 400 naming the limit; at most ``--max-queue`` requests wait, then 429 with
  ``Retry-After``; a client that disconnects has its work dropped or stopped (the model is free
  within a decode step); headers and body must arrive within ``--read-timeout`` seconds (else the
  connection is closed, or 408), and at most ``--max-connections`` are open (then 503).
* Responses have the OpenAI shape plus one extension: each choice carries ``completion_tokens``
  (the ``openai`` backend reads it, so per-sample counts survive the round trip). Log-probs are
  those of the sampled tokens only; token strings are not known to the backend interface, so
  completions send ``tokens: null`` and chat sends ``token: ""``.
* Bad JSON or bad sampling values -> 400 ``{"error": {"message", "type": "invalid_request_error"}}``;
  unknown path -> 404; wrong method -> 405; wrong or missing Bearer key (when the server has one)
  -> 401; body over 16 MiB -> 413; backend failures -> 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
import uuid

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from deliberate.errors import DeliberateError
from deliberate.models.base import Backend
from deliberate.models.batcher import Batcher, Cancelled, Job, QueueFull
from deliberate.models.sampling import SamplingParams
from deliberate.models.server_api import (
    MAX_BODY_BYTES,
    HTTPError,
    ServerLimits,
    chat_choice,
    chat_to_prompt,
    check_limits,
    completion_choice,
    error_response,
    sampling_params,
)
from deliberate.types import Completion

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------ server


class _TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol plus a deadline for each request's headers: a client that sends
    them slowly (or not at all) is disconnected after ``read_timeout`` seconds instead of holding a
    connection forever. uvicorn itself only times out idle keep-alive connections."""

    read_timeout = 30.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.read_timeout, self._headers_overdue)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._header_timer.cancel()  # the headers are in; the body has its own deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._header_timer.cancel()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.read_timeout, self._headers_overdue)

    def connection_lost(self, exc) -> None:
        self._header_timer.cancel()
        super().connection_lost(exc)

    def _headers_overdue(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


class DeliberateServer:
    """The server object: bound on construction; ``.port`` and ``.base_url`` (``http://host:port/v1``);
    ``serve_forever()`` until ``shutdown()`` (from another thread); then ``server_close()``."""

    def __init__(self, sock: socket.socket, backend: Backend, model_name: str, api_key: str | None,
                 limits: ServerLimits):
        self.socket, self.backend, self.model_name = sock, backend, model_name
        self.api_key, self.limits = api_key, limits
        self.created = int(time.time())
        self.batcher = Batcher(backend, limits.max_queue)
        self.server_address = sock.getsockname()[:2]
        protocol = type("TimedH11Protocol", (_TimedH11Protocol,), {"read_timeout": float(limits.read_timeout)})
        config = uvicorn.Config(self._app(), lifespan="off", log_config=None, access_log=False, loop="asyncio",
                                http=protocol, limit_concurrency=limits.max_connections, timeout_keep_alive=5,
                                timeout_graceful_shutdown=1)
        self._uvicorn = uvicorn.Server(config)
        self._stopped = threading.Event()
        self._closed = False

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base_url(self) -> str:
        host = self.server_address[0]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    def serve_forever(self) -> None:
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving (requests still running get up to a second) and wait until ``serve_forever`` returns."""
        self._uvicorn.should_exit = True
        self._stopped.wait(timeout=15)

    def server_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.batcher.close()
        self.socket.close()

    # -- the ASGI app

    def _app(self) -> Starlette:
        routes = [
            Route("/health", self._health, methods=["GET"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
        ]

        async def http_error(request: Request, exc: HTTPException) -> Response:
            if exc.status_code == 404:
                return error_response(HTTPError(404, f"unknown path {request.url.path!r}", "not_found_error"))
            if exc.status_code == 405:
                return error_response(HTTPError(405, f"method {request.method} not allowed on {request.url.path}"))
            return error_response(HTTPError(exc.status_code, str(exc.detail)))

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})

    def _check_auth(self, request: Request) -> None:
        if not self.api_key:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.api_key}".encode()):
            raise HTTPError(401, "missing or invalid API key", "authentication_error")

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _models(self, request: Request) -> Response:
        try:
            self._check_auth(request)
        except HTTPError as e:
            return error_response(e)
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "deliberate"}]})

    async def _completions(self, request: Request) -> Response:
        return await self._post(request, self._completion_job)

    async def _chat(self, request: Request) -> Response:
        return await self._post(request, self._chat_job)

    async def _read_json(self, request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise HTTPError(400, "bad Content-Length") from None
            if n < 0 or n > MAX_BODY_BYTES:
                raise HTTPError(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise HTTPError(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            body = await asyncio.wait_for(read(), self.limits.read_timeout)
        except asyncio.TimeoutError:
            raise HTTPError(408, f"request body not received within {self.limits.read_timeout:g} s "
                                  "(--read-timeout)", headers={"Connection": "close"}) from None
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(req, dict):
            raise HTTPError(400, "request body must be a JSON object")
        if req.get("stream"):
            raise HTTPError(400, "stream=true is not supported")
        return req

    async def _post(self, request: Request, build) -> Response:
        try:
            self._check_auth(request)
            req = await self._read_json(request)
            prompts, params, seeded, respond = build(req)
            check_limits(prompts, params, self.limits)
            rows = await self._run(request, prompts, params, seeded)
            if rows is None:  # the client went away: nobody reads this
                return Response(status_code=499)
            return JSONResponse(respond(rows))
        except HTTPError as e:
            return error_response(e)

    async def _run(self, request: Request, prompts: list[str], params: SamplingParams,
                   seeded: bool) -> list[list[Completion]] | None:
        """The job's completions, or None when the client disconnected first (its work is then dropped)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def settle(result, error) -> None:
            if not fut.done():
                fut.set_exception(error) if error is not None else fut.set_result(result)

        def done(result, error) -> None:  # called from the batcher's thread
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the event loop is closed: the server has stopped
                pass

        job = Job(list(prompts), params, seeded, done)
        try:
            self.batcher.submit(job)
        except QueueFull as e:
            raise HTTPError(429, str(e), "rate_limit_error", headers={"Retry-After": "1"}) from None
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({fut, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # server shutdown
            self.batcher.cancel(job)
            raise
        finally:
            gone.cancel()
        if not fut.done():
            self.batcher.cancel(job)
            return None
        try:
            return fut.result()
        except Cancelled:
            return None
        except QueueFull as e:
            raise HTTPError(503, str(e), "server_error") from None
        except DeliberateError as e:
            raise HTTPError(400, str(e)) from None
        except Exception as e:  # a backend failure: report it, keep serving
            log.error("request failed: %s", e, exc_info=e)
            raise HTTPError(500, f"{type(e).__name__}: {e}", "server_error") from None

    # -- endpoints: request -> (prompts, params, seeded, response builder)

    def _envelope(self, obj: str, prefix: str, choices: list[dict], prompt_tokens: int, rows) -> dict:
        completion_tokens = sum(c.completion_tokens for row in rows for c in row)
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": obj,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _completion_job(self, req: dict):
        prompt = req.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise HTTPError(400, "'prompt' must be a string or a non-empty list of strings "
                                 "(token ids are not supported)")
        params, seeded = sampling_params(req, chat=False)

        def respond(rows) -> dict:
            # OpenAI numbering for several prompts: choice index = prompt_index * n + sample_index.
            choices = [completion_choice(i * params.n + j, c) for i, row in enumerate(rows) for j, c in enumerate(row)]
            prompt_tokens = sum(row[0].prompt_tokens for row in rows)
            return self._envelope("text_completion", "cmpl", choices, prompt_tokens, rows)

        return prompts, params, seeded, respond

    def _chat_job(self, req: dict):
        prompt = chat_to_prompt(self.backend, req.get("messages"))
        params, seeded = sampling_params(req, chat=True)

        def respond(rows) -> dict:
            choices = [chat_choice(j, c) for j, c in enumerate(rows[0])]
            return self._envelope("chat.completion", "chatcmpl", choices, rows[0][0].prompt_tokens, rows)

        return [prompt], params, seeded, respond


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read, so only that can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def make_server(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 0,
    model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
) -> DeliberateServer:
    """Bind (``port=0`` picks a free port) without serving yet; call ``serve_forever()`` on the result.

    With ``api_key`` set, every request must carry ``Authorization: Bearer <api_key>``.
    """
    if not isinstance(backend, Backend):
        raise DeliberateError(f"make_server needs a Backend, got {type(backend).__name__}")
    name = model_name or backend.model_name
    limits = limits or ServerLimits()
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)  # clients opening 64+ connections at once are not reset
    except OSError as e:
        raise DeliberateError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return DeliberateServer(sock, backend, name, api_key, limits)


def serve_in_thread(backend: Backend, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
                    api_key: str | None = None, limits: ServerLimits | None = None) -> tuple[DeliberateServer, str]:
    """Serve in a daemon thread; returns ``(server, base_url)``.

    Stop with ``server.shutdown(); server.server_close()``."""
    server = make_server(backend, host, port, model_name, api_key, limits)
    t = threading.Thread(target=server.serve_forever, daemon=True, name=f"deliberate-serve-{server.port}")
    t.start()
    return server, server.base_url


# --------------------------------------------------------------------------------------------- CLI
