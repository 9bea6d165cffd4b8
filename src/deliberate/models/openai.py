"""Backend ``openai``: sample from any OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp, Ollama,
hosted APIs, or our own ``deliberate serve``).

Why: the same search and eval code then runs on a model served anywhere. ``generate`` is synchronous
for callers; inside it runs an asyncio loop with ``httpx.AsyncClient`` and sends one request per
prompt (``n`` choices each), at most ``concurrency`` at a time, retrying transient failures.

    backend = get_backend("openai", base_url="http://127.0.0.1:8000/v1")
    backend.generate(["2+2="], SamplingParams(n=4, seed=1))

Behaviour worth knowing:

* Retries: 429, 5xx, connection errors, timeouts and malformed JSON are retried up to
  ``max_retries`` times with exponential backoff and full jitter (``retry_base_delay * 2**attempt``,
  capped at ``retry_max_delay``); a ``Retry-After`` header on 429/503 is honoured instead (also capped
  at ``retry_max_delay``). Other 4xx raise :class:`RemoteError` at once, with the status and the
  server's message.
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
  replaced by ``***`` in our warnings and errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import math
import os
import random
import time
from typing import Any, Mapping, Sequence

import httpx

from deliberate.errors import DeliberateError
from deliberate.models.base import Backend, register_backend
from deliberate.models.sampling import SamplingParams, sequence_seed
from deliberate.types import Completion

log = logging.getLogger(__name__)

API_KEY_ENV_VARS = ("OPENAI_API_KEY", "DELIBERATE_API_KEY")


class RemoteError(DeliberateError):
    """A request the server refused (non-retryable 4xx) or that kept failing after all retries.

    ``status`` is the HTTP status of the last answer (``None`` when there was none, e.g. connection errors).
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Secret:
    """Holds the API key so that ``repr``, ``vars`` and logging never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "'***'" if self._value else "None"

    __str__ = __repr__


class _Retryable(Exception):
    """Internal: a failed attempt that may succeed if tried again."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number (fractions accepted) or an HTTP date."""
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        secs = when.timestamp() - time.time()
    if not math.isfinite(secs):
        return None
    return max(0.0, secs)


def _error_message(resp: httpx.Response) -> str:
    """The server's error message: ``{"error": {"message": ...}}`` when present, else the body text."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if err is not None:
            return str(err)
    text = resp.text.strip()
    return text[:500] if text else resp.reason_phrase


def _split_evenly(total: int, k: int) -> list[int]:
    base, rem = divmod(max(0, int(total)), k)
    return [base + (1 if i < rem else 0) for i in range(k)]


def parse_choices(body: Any, chat: bool) -> list[Completion]:
    """Turn one completions / chat-completions response body into Completions, sorted by ``index``.

    Raises ``ValueError`` when the body does not have the OpenAI shape (the caller retries those).
    """
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise ValueError("response has no 'choices'")
    choices = list(body["choices"])
    if not all(isinstance(c, dict) for c in choices):
        raise ValueError("a choice is not an object")
    choices.sort(key=lambda c: c.get("index", 0) if isinstance(c.get("index", 0), int) else 0)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)

    texts, lps_all = [], []
    for c in choices:
        if chat:
            msg = c.get("message")
            if not isinstance(msg, dict):
                raise ValueError("chat choice has no 'message'")
            text = msg.get("content") or ""
            lp = c.get("logprobs")
            lps = None
            if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                lps = tuple(float(t["logprob"]) for t in lp["content"] if t.get("logprob") is not None)
        else:
            text = c.get("text")
            if not isinstance(text, str):
                raise ValueError("completion choice has no 'text'")
            lp = c.get("logprobs")
            lps = None
            if isinstance(lp, dict) and isinstance(lp.get("token_logprobs"), list):
                lps = tuple(float(x) for x in lp["token_logprobs"] if x is not None)
        if not isinstance(text, str):
            raise ValueError("choice text is not a string")
        texts.append(text)
        lps_all.append(lps)

    split = _split_evenly(int(usage.get("completion_tokens") or 0), len(choices))
    out = []
    for i, c in enumerate(choices):
        per = c.get("completion_tokens")
        if isinstance(per, int) and not isinstance(per, bool) and per >= 0:
            ntok = per  # extension sent by `deliberate serve`
        elif lps_all[i] is not None:
            ntok = len(lps_all[i])
        else:
            ntok = split[i]
        reason = "length" if c.get("finish_reason") == "length" else "stop"
        out.append(Completion(texts[i], prompt_tokens, ntok, reason, lps_all[i]))
    return out


def _run_sync(coro):
    """Run a coroutine to completion from sync code, in a helper thread if this thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="deliberate-openai") as ex:
        return ex.submit(asyncio.run, coro).result()


@register_backend("openai")
class OpenAIBackend(Backend):
    """Client for an OpenAI-compatible server; see the module docstring for retry and token-count rules."""

    name = "openai"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        api_key: str | None = None,
        chat: bool = False,
        concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 6,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise DeliberateError(f"openai backend: base_url must start with http:// or https:// (got {base_url!r})")
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
        if problems:
            raise DeliberateError("openai backend: " + "; ".join(problems))
        self.base_url = base_url.rstrip("/")
        self.model = model
        if api_key is None:
            api_key = next((os.environ[v] for v in API_KEY_ENV_VARS if os.environ.get(v)), None)
        self._api_key = _Secret(api_key)
        self._url_password = httpx.URL(self.base_url).password or None  # https://user:PASSWORD@host: redacted too
        self.chat = bool(chat)
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.retry_base_delay = float(retry_base_delay)
        self.retry_max_delay = float(retry_max_delay)
        self.extra_body = dict(extra_body or {})
        self._jitter = random.Random()  # jitter only spreads retries in time; it never affects results

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(base_url={self._redact(self.base_url)!r}, model={self.model!r}, "
            f"api_key={self._api_key!r}, chat={self.chat}, concurrency={self.concurrency}, timeout={self.timeout})"
        )

    # ----------------------------------------------------------------------------------------- public

    @property
    def model_name(self) -> str:
        if self.model is None:
            self.model = _run_sync(self._with_client(self._resolve_model))
        return self.model

    def list_models(self) -> list[str]:
        """Model ids from ``GET /models``."""
        return _run_sync(self._with_client(self._list_models))

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if isinstance(prompts, str):
            raise DeliberateError("generate expects a list of prompts, got a single string")
        prompts = list(prompts)
        if not prompts:
            return []
        return _run_sync(self._with_client(lambda client: self._generate_all(client, prompts, params)))

    # -------------------------------------------------------------------------------------- internals

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key.get()}"
        return h

    async def _with_client(self, fn):
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits, headers=self._headers()) as client:
            return await fn(client)

    async def _list_models(self, client: httpx.AsyncClient) -> list[str]:
        body = await self._request(client, "GET", "/models", None)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise RemoteError(self._redact(f"GET {self.base_url}/models: answer has no 'data' list"))
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    async def _resolve_model(self, client: httpx.AsyncClient) -> str:
        if self.model is None:
            models = await self._list_models(client)
            if not models:
                raise RemoteError(self._redact(f"GET {self.base_url}/models lists no model; pass model="))
            self.model = models[0]
        return self.model

    async def _generate_all(self, client, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        await self._resolve_model(client)
        sem = asyncio.Semaphore(self.concurrency)
        tasks = [asyncio.ensure_future(self._generate_one(client, sem, p, params)) for p in prompts]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:  # on the first failure, do not leave the others running
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _payload(self, prompt: str, params: SamplingParams, n: int, seed: int) -> dict[str, Any]:
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
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
            if params.logprobs:
                body["logprobs"] = True
        else:
            body["prompt"] = prompt
            if params.logprobs:
                body["logprobs"] = 1
        body.update(self.extra_body)
        return body

    async def _generate_one(self, client, sem: asyncio.Semaphore, prompt: str, params: SamplingParams):
        path = "/chat/completions" if self.chat else "/completions"
        got: list[Completion] = []
        round_ = 0
        while len(got) < params.n:
            # The first request carries the caller's seed (so `deliberate serve` reproduces in-process
            # samples); follow-ups for servers that ignored `n` carry a derived seed (module docstring).
            seed = params.seed if round_ == 0 else sequence_seed(params.seed, prompt, round_) & 0x7FFFFFFF
            payload = self._payload(prompt, params, params.n - len(got), seed)
            async with sem:
                body = await self._request(client, "POST", path, payload, parse=lambda b: parse_choices(b, self.chat))
            got.extend(body)
            round_ += 1
            if round_ == 1 and len(got) < params.n:
                log.info("server returned %d of n=%d choices; requesting the rest", len(got), params.n)
        return got[: params.n]

    async def _request(self, client, method: str, path: str, payload, parse=None):
        """One API call with retries; returns the parsed JSON (or ``parse(json)``)."""
        url = self.base_url + path
        last = ""
        last_status = None
        for attempt in range(self.max_retries + 1):
            try:
                # httpx's timeout bounds each connect / read / write; the deadline bounds the whole
                # attempt, so a server that trickles bytes slowly cannot hold a request forever.
                resp = await asyncio.wait_for(client.request(method, url, json=payload), self.timeout)
            except httpx.UnsupportedProtocol as e:
                raise RemoteError(self._redact(f"{method} {url}: {e}")) from None
            except asyncio.TimeoutError:
                err = _Retryable(f"no complete answer within the {self.timeout:g} s timeout")
            except (httpx.TransportError, httpx.DecodingError, httpx.StreamError) as e:
                err = _Retryable(f"{type(e).__name__}: {e}".rstrip(": "))
            else:
                try:
                    return self._handle(resp, method, url, parse)
                except _Retryable as e:
                    err = e
            last, last_status = self._redact(str(err)), err.status
            if attempt == self.max_retries:
                break
            if err.retry_after is not None:
                delay = min(err.retry_after, self.retry_max_delay)
            else:
                delay = self._jitter.uniform(0, min(self.retry_max_delay, self.retry_base_delay * 2**attempt))
            log.warning(
                "%s %s failed (%s); retry %d/%d in %.2fs", method, self._redact(url), last, attempt + 1,
                self.max_retries, delay,
            )
            await asyncio.sleep(delay)
        raise RemoteError(self._redact(f"{method} {url} failed after {self.max_retries + 1} attempt(s): {last}"),
                          last_status)

    def _redact(self, text: str) -> str:
        """``text`` with the API key (should a server echo it back in an error) and any password in
        ``base_url`` replaced by ``***``."""
        for secret in (self._api_key.get(), self._url_password):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _handle(self, resp: httpx.Response, method: str, url: str, parse):
        status = resp.status_code
        if status == 429 or status >= 500:
            retry_after = _parse_retry_after(resp.headers.get("retry-after")) if status in (429, 503) else None
            raise _Retryable(f"HTTP {status}: {_error_message(resp)}", status, retry_after)
        if status >= 400:
            hint = " (check the API key: env OPENAI_API_KEY or DELIBERATE_API_KEY)" if status in (401, 403) else ""
            raise RemoteError(self._redact(f"{method} {url} -> HTTP {status}: {_error_message(resp)}{hint}"), status)
        try:
            body = json.loads(resp.content)
            return parse(body) if parse is not None else body
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise _Retryable(f"malformed response (HTTP {status}): {e}", status) from None
