"""Backend ``openai``: sample from any OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp, Ollama,
hosted APIs, or our own ``deliberate serve``), or from several of them at once.

Why: the same search and eval code then runs on a model served anywhere. ``generate`` is synchronous
for callers; inside it runs an asyncio loop with ``httpx.AsyncClient`` and sends one request per
prompt (``n`` choices each), at most ``concurrency`` at a time per server, retrying transient failures.

    backend = get_backend("openai", base_url="http://127.0.0.1:8000/v1")
    backend.generate(["2+2="], SamplingParams(n=4, seed=1))
    # several servers of the same model: a list, or one comma-separated string (CLI: --base-url a,b)
    backend = get_backend("openai", base_url="http://gpu0:8000/v1,http://gpu1:8000/v1", concurrency=64)

Chat models (``chat=True``): ``generate`` sends ``[system,] user`` messages, and ``continue_many`` /
``continue_from`` continue each partial solution as the *assistant's* message, either through the
served model's chat template applied here (``tokenizer=`` its hub id or directory; requests go to
``/v1/completions``, byte for byte what the ``hf`` backend renders) or through the server's template
(``/v1/chat/completions`` with ``continue_final_message``); see :mod:`deliberate.models.chat_format`.
``system_prompt`` adds a system message; ``extra_body`` (a mapping, or JSON text from the command line:
``--backend-arg 'extra_body={"top_k": 20}'``) is merged into every request body (vLLM's ``top_k``,
``repetition_penalty``, ``chat_template_kwargs`` ...). docs/servers.md: vLLM and SGLang.

Behaviour worth knowing:

* Several servers: ``concurrency`` is per server (total in flight = ``concurrency`` x servers).
  Each request (each attempt) goes to one server, chosen when a slot is free:

  - *prefix affinity*: a stable hash (blake2b, not Python's salted ``hash``) of the request's
    affinity key picks a preferred server. The key is the prompt for ``generate`` and the prompt
    *without* the partial solution for ``continue_many`` / ``continue_from``, so every step of one
    question lands on the same server and reuses its prefix cache;
  - *load*: the preferred server is skipped when it is full (``concurrency`` requests in flight) or
    has more than ``affinity_margin`` (default ``max(1, concurrency // 2)``) requests in flight more
    than the least-loaded server; the request then goes to the least-loaded server (ties: the next
    servers after the preferred one, in the order given);
  - *failover*: a retry goes to another server than the one that just failed whenever another has a
    free slot, and a server whose last attempt failed is left alone for a cool-down
    (``retry_base_delay * 2**(consecutive failures - 1)``, capped at ``retry_max_delay``, or its
    ``Retry-After``) while some other server is not cooling down.
    The backoff before each retry is the same as with one server (below).

  ``server_stats()`` gives per-server counts (requests sent, answers, failures, peak in flight).
  ``model_name`` (when ``model`` is not given) comes from ``GET /models`` of the first server that
  answers. All servers must serve the same model under the same name.
* Request order: ``continue_many`` sends requests grouped by prompt (in order of first appearance,
  shortest partial solution first), so requests that share a prompt reach a server back to back;
  results come back in the caller's order. The samples do not depend on the order or the server:
  every request carries the caller's seed, and the server derives per-sample seeds from the prompt.
* Retries: 429, 5xx, connection errors, timeouts and malformed JSON are retried up to
  ``max_retries`` times with exponential backoff and full jitter (``retry_base_delay * 2**attempt``,
  capped at ``retry_max_delay``); a ``Retry-After`` header on 429/503 is honoured instead (also capped
  at ``retry_max_delay``). Other 4xx raise :class:`RemoteError` at once, with the status and the
  server's message. A request holds its server slot only while it is on the wire, not while it
  backs off.
* Token counts: ``prompt_tokens`` comes from ``usage.prompt_tokens`` and is shared by all choices of
  one prompt. Per-choice ``completion_tokens`` comes, in order of preference, from a per-choice
  ``completion_tokens`` field (``deliberate serve`` sends it), the number of log-probs of the choice,
  or ``usage.completion_tokens`` split evenly over the choices of the response (the remainder going to
  the first ones, so the sum is exact). A server that sends no ``usage`` gives counts of 0.
* Servers that ignore ``n`` (and return fewer choices) get follow-up requests for the missing ones.
  Those carry a seed derived from ``(seed, prompt, follow-up number)`` so a seeded server does not
  return the same sample again; results stay reproducible but are then not the samples the in-process
  backend would give.
* ``finish_reason`` ``"length"`` stays ``"length"``; anything else (``stop``, ``eos``, ``null`` ...)
  becomes ``"stop"``.
* Timeouts: ``timeout`` bounds each connect / read / write *and* each whole attempt (a server that
  accepts and then never answers, or trickles bytes, is cut off after ``timeout`` seconds and retried).
* No lost samples: ``generate`` returns exactly ``n`` completions for every prompt, or raises
  :class:`RemoteError` (the first prompt that exhausted its retries); it never returns a partial result.
* The API key (``api_key=`` or env ``OPENAI_API_KEY`` / ``DELIBERATE_API_KEY``) is sent as a Bearer
  header and never logged or shown in ``repr``; a server that echoes it in an error message has it
  replaced by ``***`` in our warnings and errors. Passwords in any of the base URLs
  (``https://user:PASSWORD@host/v1``) are redacted the same way, also in ``server_stats()``. A comma
  inside a URL (e.g. in a password) must be written ``%2C``, since commas separate servers.

This module holds the backend and its retry loop; beside it: ``balancer.py`` (affinity, slots,
cool-down), ``http_errors.py`` (what is retried, ``Retry-After``), ``choices.py`` (response body to
Completions, token counts), ``base_urls.py`` (checking ``base_url``), ``redaction.py`` (secrets).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from deliberate.errors import DeliberateError
from deliberate.models.balancer import Server, Slots, affinity_index, shard_sizes
from deliberate.models.base import Backend, register_backend
from deliberate.models.base_urls import parse_base_urls
from deliberate.models.chat_format import ClientTemplate, request_fields
from deliberate.models.choices import parse_choices
from deliberate.models.http_errors import RemoteError, Retryable, error_message, parse_retry_after
from deliberate.models.redaction import Secret, redact_userinfo, url_passwords
from deliberate.models.sampling import SamplingParams, sequence_seed
from deliberate.types import Completion

log = logging.getLogger(__name__)

API_KEY_ENV_VARS = ("OPENAI_API_KEY", "DELIBERATE_API_KEY")


def _run_sync(coro):
    """Run a coroutine to completion from sync code, in a helper thread if this thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="deliberate-openai") as ex:
        return ex.submit(asyncio.run, coro).result()


class _Clients:
    """Per call: the httpx clients, ``get(server, shard)``, each made on first use (a small call needs one)."""

    def __init__(self, backend: OpenAIBackend):
        self._backend = backend
        self._made: dict[tuple[int, int], httpx.AsyncClient] = {}

    def get(self, server: int, shard: int) -> httpx.AsyncClient:
        client = self._made.get((server, shard))
        if client is None:
            b = self._backend
            cap = b._shard_caps[shard]
            client = httpx.AsyncClient(timeout=httpx.Timeout(b.timeout), headers=b._headers(), verify=b._ssl(),
                                       limits=httpx.Limits(max_connections=cap, max_keepalive_connections=cap))
            self._made[(server, shard)] = client
        return client

    async def aclose(self) -> None:
        clients, self._made = list(self._made.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


@register_backend("openai")
class OpenAIBackend(Backend):
    """Client for one or several OpenAI-compatible servers; see the module docstring for the balancing,
    retry and token-count rules."""

    name = "openai"

    def __init__(
        self,
        base_url: str | Sequence[str] = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        api_key: str | None = None,
        chat: bool = False,
        concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 6,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 60.0,
        extra_body: Mapping[str, Any] | str | None = None,
        affinity_margin: int | None = None,
        system_prompt: str | None = None,
        tokenizer: str | None = None,
    ):
        urls = parse_base_urls(base_url)
        problems = []
        if not isinstance(concurrency, int) or concurrency < 1:
            problems.append(f"concurrency must be an integer >= 1 (got {concurrency!r})")
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            problems.append(f"timeout must be > 0 seconds (got {timeout!r})")
        if not isinstance(max_retries, int) or max_retries < 0:
            problems.append(f"max_retries must be an integer >= 0 (got {max_retries!r})")
        if not isinstance(retry_base_delay, (int, float)) or retry_base_delay < 0:
            problems.append(f"retry_base_delay must be >= 0 (got {retry_base_delay!r})")
        if not isinstance(retry_max_delay, (int, float)) or retry_max_delay < 0:
            problems.append(f"retry_max_delay must be >= 0 (got {retry_max_delay!r})")
        if affinity_margin is not None and (not isinstance(affinity_margin, int) or affinity_margin < 0):
            problems.append(f"affinity_margin must be an integer >= 0 (got {affinity_margin!r})")
        if isinstance(extra_body, str):  # from the command line: --backend-arg 'extra_body={"top_k": 20}'
            try:
                extra_body = json.loads(extra_body)
            except ValueError as e:
                problems.append(f"extra_body must be a JSON object ({e})")
                extra_body = None
        if extra_body is not None and not isinstance(extra_body, Mapping):
            problems.append(f"extra_body must be a JSON object (got {type(extra_body).__name__})")
        if system_prompt is not None and (not isinstance(system_prompt, str) or not chat):
            problems.append("system_prompt must be a string and needs chat=True (a plain completion has no "
                            "system message)")
        if tokenizer is not None and not chat:
            problems.append("tokenizer= applies the chat template client-side: it needs chat=True")
        if problems:
            raise DeliberateError("openai backend: " + "; ".join(problems))
        self.model = model
        if api_key is None:
            api_key = next((os.environ[v] for v in API_KEY_ENV_VARS if os.environ.get(v)), None)
        self._api_key = Secret(api_key)
        # https://user:PASSWORD@host: redacted too, as written and percent-decoded, for every server
        self._url_passwords = Secret(tuple(sorted({pw for u in urls for pw in url_passwords(u)}, key=len,
                                                   reverse=True)))
        self._servers = [Server(u, self._redact(u)) for u in urls]
        self._stats_lock = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = None  # made once: building one costs ~75 ms per call
        self._shard_caps = shard_sizes(concurrency)
        self.chat = bool(chat)
        self.concurrency = concurrency
        self.affinity_margin = max(1, concurrency // 2) if affinity_margin is None else affinity_margin
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.retry_base_delay = float(retry_base_delay)
        self.retry_max_delay = float(retry_max_delay)
        self.extra_body = dict(extra_body or {})
        self.system_prompt = system_prompt or None
        self.template = ClientTemplate(str(tokenizer)) if tokenizer is not None else None
        self._jitter = random.Random()  # jitter only spreads retries in time; it never affects results

    def __repr__(self) -> str:
        urls = ",".join(s.shown for s in self._servers)
        return (
            f"OpenAIBackend(base_url={urls!r}, model={self.model!r}, api_key={self._api_key!r}, chat={self.chat}, "
            f"concurrency={self.concurrency}, timeout={self.timeout})"
        )

    # ----------------------------------------------------------------------------------------- public

    @property
    def base_url(self) -> str:
        """The first server's base URL (as given, without a trailing ``/``)."""
        return self._servers[0].url

    @property
    def base_urls(self) -> list[str]:
        """Every server's base URL, in the order given."""
        return [s.url for s in self._servers]

    def server_stats(self) -> list[dict[str, Any]]:
        """Per server, since this backend was made: ``url`` (password redacted), ``requests`` (attempts
        sent), ``ok`` (usable answers), ``failures`` (failed attempts, retried or not) and ``peak_inflight``
        (most requests in flight at once within one call)."""
        with self._stats_lock:
            return [{"url": s.shown, "requests": s.requests, "ok": s.ok, "failures": s.failures,
                     "peak_inflight": s.peak_inflight} for s in self._servers]

    @property
    def model_name(self) -> str:
        if self.model is None:
            self.model = _run_sync(self._with_client(self._resolve_model))
        return self.model

    def list_models(self) -> list[str]:
        """Model ids from ``GET /models`` (of the first server that answers)."""
        return _run_sync(self._with_client(self._list_models))

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if isinstance(prompts, str):
            raise DeliberateError("generate expects a list of prompts, got a single string")
        prompts = list(prompts)
        if not prompts:
            return []
        requests = [(p, "") for p in prompts]
        return _run_sync(self._with_client(lambda client: self._generate_all(client, requests, params, prompts)))

    def continue_from(self, prompt: str, prefixes: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        return self.continue_many([(prompt, p) for p in prefixes], params)

    def continue_many(self, requests: Sequence[tuple[str, str]], params: SamplingParams) -> list[list[Completion]]:
        """As :meth:`Backend.continue_many`, sent grouped by prompt, shortest prefix first, with the prompt
        as affinity key; results in the caller's order. A plain model sees ``prompt + prefix``; a chat model
        continues ``prefix`` as the assistant's reply (module docstring)."""
        requests = list(requests)
        if not requests:
            return []
        first: dict[str, int] = {}
        for prompt, _ in requests:
            first.setdefault(prompt, len(first))
        order = sorted(range(len(requests)), key=lambda i: (first[requests[i][0]], len(requests[i][1])))
        ordered = [requests[i] for i in order]
        keys = [requests[i][0] for i in order]
        rows = _run_sync(self._with_client(lambda client: self._generate_all(client, ordered, params, keys)))
        out: list[list[Completion]] = [[] for _ in requests]
        for row, i in zip(rows, order):
            out[i] = row
        return out

    # -------------------------------------------------------------------------------------- internals

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key.get()}"
        return h

    def _new_slots(self) -> Slots:
        return Slots(self._servers, self.concurrency, self.affinity_margin, self._shard_caps)

    def _ssl(self) -> ssl.SSLContext:
        with self._stats_lock:
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()  # what AsyncClient() would build each time
            return self._ssl_context

    async def _with_client(self, fn):
        # Nothing caps below concurrency x servers: every request in flight has its own connection
        # (each server's slots are spread over client shards whose limits add up to `concurrency`).
        clients = _Clients(self)
        try:
            return await fn(clients)
        finally:
            await clients.aclose()

    async def _list_models(self, client: _Clients) -> list[str]:
        body, url = await self._request(client, "GET", "/models", None, self._new_slots(), 0, with_url=True)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise RemoteError(self._redact(f"GET {url}: answer has no 'data' list"))
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    async def _resolve_model(self, client: _Clients) -> str:
        if self.model is None:
            models = await self._list_models(client)
            if not models:
                raise RemoteError(self._redact(f"GET {self.base_url}/models lists no model; pass model="))
            self.model = models[0]
        return self.model

    async def _generate_all(self, client: _Clients, requests: list[tuple[str, str]], params: SamplingParams,
                            keys: Sequence[str]) -> list[list[Completion]]:
        await self._resolve_model(client)
        slots = self._new_slots()
        k = len(self._servers)
        tasks = [asyncio.ensure_future(self._generate_one(client, slots, p, pre, params, affinity_index(key, k)))
                 for (p, pre), key in zip(requests, keys)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:  # on the first failure, do not leave the others running
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _payload(self, text: dict[str, Any], chat: bool, params: SamplingParams, n: int, seed: int) -> dict[str, Any]:
        """The request body: ``text`` (``prompt`` or ``messages`` and their fields), the sampling settings,
        then ``extra_body`` over all of it."""
        body: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        body.update(text)
        if params.logprobs:
            body["logprobs"] = True if chat else 1
        body.update(self.extra_body)
        return body

    async def _generate_one(self, client: _Clients, slots: Slots, prompt: str, prefix: str, params: SamplingParams,
                            preferred: int):
        path, text = request_fields(prompt, prefix, chat=self.chat, template=self.template,
                                    system_prompt=self.system_prompt)
        chat = path == "/chat/completions"
        got: list[Completion] = []
        round_ = 0
        while len(got) < params.n:
            # The first request carries the caller's seed (so `deliberate serve` reproduces in-process
            # samples); follow-ups for servers that ignored `n` carry a derived seed (module docstring).
            seed = params.seed if round_ == 0 else sequence_seed(params.seed, prompt + prefix, round_) & 0x7FFFFFFF
            payload = self._payload(text, chat, params, params.n - len(got), seed)
            body = await self._request(client, "POST", path, payload, slots, preferred,
                                       parse=lambda b: parse_choices(b, chat))
            got.extend(body)
            round_ += 1
            if round_ == 1 and len(got) < params.n:
                log.info("server returned %d of n=%d choices; requesting the rest", len(got), params.n)
        return got[: params.n]

    def _cooldown(self, server: Server, err: Retryable) -> float:
        if err.retry_after is not None:
            return min(err.retry_after, self.retry_max_delay)
        return min(self.retry_max_delay, self.retry_base_delay * 2 ** (server.consecutive_failures - 1))

    async def _request(self, client: _Clients, method: str, path: str, payload, slots: Slots, preferred: int,
                       parse=None, with_url: bool = False):
        """One API call with retries (and failover between servers); returns the parsed JSON (or
        ``parse(json)``), and the URL that answered when ``with_url``."""
        last = ""
        last_status = None
        avoid: int | None = None
        url = self._servers[preferred].url + path
        for attempt in range(self.max_retries + 1):
            i, shard = await slots.acquire(preferred, avoid)
            server = self._servers[i]
            url = server.url + path
            extra_wakes = 0
            try:
                with self._stats_lock:
                    server.requests += 1
                try:
                    # httpx's timeout bounds each connect / read / write; the deadline bounds the whole
                    # attempt, so a server that trickles bytes slowly cannot hold a request forever.
                    resp = await asyncio.wait_for(client.get(i, shard).request(method, url, json=payload),
                                                  self.timeout)
                except httpx.UnsupportedProtocol as e:
                    with self._stats_lock:
                        server.failures += 1
                    raise RemoteError(self._redact(f"{method} {url}: {e}")) from None
                except asyncio.TimeoutError:
                    err = Retryable(f"no complete answer within the {self.timeout:g} s timeout")
                except (httpx.TransportError, httpx.DecodingError, httpx.StreamError) as e:
                    err = Retryable(f"{type(e).__name__}: {e}".rstrip(": "))
                else:
                    try:
                        result = self._handle(resp, method, url, parse)
                    except Retryable as e:
                        err = e
                    except RemoteError:
                        with self._stats_lock:
                            server.failures += 1
                        raise
                    else:
                        with self._stats_lock:
                            server.ok += 1
                            server.consecutive_failures = 0
                            if server.cool_until > time.monotonic():  # it is back: let waiters use it now
                                extra_wakes = self.concurrency
                            server.cool_until = 0.0
                        return (result, url) if with_url else result
                with self._stats_lock:
                    server.failures += 1
                    server.consecutive_failures += 1
                    if len(self._servers) > 1:
                        server.cool_until = max(server.cool_until, time.monotonic() + self._cooldown(server, err))
            finally:
                slots.release(i, shard, extra_wakes)
            last, last_status = self._redact(str(err)), err.status
            avoid = i
            if attempt == self.max_retries:
                break
            if err.retry_after is not None:
                delay = min(err.retry_after, self.retry_max_delay)
            else:
                delay = self._jitter.uniform(0, min(self.retry_max_delay, self.retry_base_delay * 2**attempt))
            log.warning(
                "%s %s failed (%s); retry %d/%d in %.2fs%s", method, self._redact(url), last, attempt + 1,
                self.max_retries, delay, " (on another server if one is free)" if len(self._servers) > 1 else "",
            )
            await asyncio.sleep(delay)
        raise RemoteError(self._redact(f"{method} {url} failed after {self.max_retries + 1} attempt(s): {last}"),
                          last_status)

    def _redact(self, text: str) -> str:
        """``text`` with the API key (should a server echo it back in an error) and any password in the
        base URLs replaced by ``***``."""
        for secret in (self._api_key.get(), *(self._url_passwords.get() or ())):
            if secret:
                text = text.replace(secret, "***")
        return redact_userinfo(text)

    def _handle(self, resp: httpx.Response, method: str, url: str, parse):
        status = resp.status_code
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(resp.headers.get("retry-after")) if status in (429, 503) else None
            raise Retryable(f"HTTP {status}: {error_message(resp)}", status, retry_after)
        if status >= 400:
            hint = " (check the API key: env OPENAI_API_KEY or DELIBERATE_API_KEY)" if status in (401, 403) else ""
            raise RemoteError(self._redact(f"{method} {url} -> HTTP {status}: {error_message(resp)}{hint}"), status)
        try:
            body = json.loads(resp.content)
            return parse(body) if parse is not None else body
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise Retryable(f"malformed response (HTTP {status}): {e}", status) from None
