"""The OpenAI wire format of ``deliberate serve``: request parsing and validation, per-request limits,
and the response shapes (see ``models/server.py`` for the rules they implement).

Why apart from the server: it is plain functions of JSON and :class:`SamplingParams`, testable and
readable without the HTTP machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from deliberate.errors import DeliberateError
from deliberate.models.base import Backend
from deliberate.models.sampling import SamplingParams
from deliberate.types import Completion

MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """What one request, and all of them together, may ask of the server (flags of ``deliberate serve``)."""

    max_n: int = 256
    max_tokens: int = 32768
    max_request_tokens: int = 2**21  # n=256 x max_tokens=8192
    max_queue: int = 256
    read_timeout: float = 30.0
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_n", "max_tokens", "max_request_tokens", "max_queue", "max_connections"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DeliberateError(f"server limit {name} must be an integer >= 1 (got {v!r})")
        if not isinstance(self.read_timeout, (int, float)) or not self.read_timeout > 0:
            raise DeliberateError(f"server limit read_timeout must be a number > 0 (got {self.read_timeout!r})")


class HTTPError(Exception):
    """An error answered to the client: status, message, OpenAI error type, extra headers."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.headers = status, message, type_, headers


def error_response(e: HTTPError) -> JSONResponse:
    return JSONResponse({"error": {"message": e.message, "type": e.type, "param": None, "code": None}},
                        status_code=e.status, headers=e.headers)


# ----------------------------------------------------------------------------------- request parsing


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def sampling_params(req: dict, chat: bool) -> tuple[SamplingParams, bool]:
    """The request's sampling settings, and whether it named a seed (unseeded ones get one per batch)."""
    kw: dict[str, Any] = {}
    for key in ("n", "seed"):
        if req.get(key) is not None:
            if not _is_int(req[key]):
                raise HTTPError(400, f"'{key}' must be an integer (got {req[key]!r})")
            kw[key] = req[key]
    max_tokens = req.get("max_tokens")
    if max_tokens is None and chat:
        max_tokens = req.get("max_completion_tokens")
    if max_tokens is not None:
        if not _is_int(max_tokens):
            raise HTTPError(400, f"'max_tokens' must be an integer (got {max_tokens!r})")
        kw["max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        if req.get(key) is not None:
            if isinstance(req[key], bool) or not isinstance(req[key], (int, float)):
                raise HTTPError(400, f"'{key}' must be a number (got {req[key]!r})")
            kw[key] = float(req[key])
    stop = req.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise HTTPError(400, f"'stop' must be a string or a list of strings (got {stop!r})")
        kw["stop"] = tuple(stop)
    lp = req.get("logprobs")
    if chat:
        if lp is not None and not isinstance(lp, bool):
            raise HTTPError(400, f"'logprobs' must be a boolean for chat completions (got {lp!r})")
        kw["logprobs"] = bool(lp)
    else:
        if lp is not None and not isinstance(lp, (bool, int)):
            raise HTTPError(400, f"'logprobs' must be an integer or null (got {lp!r})")
        kw["logprobs"] = lp is not None and lp is not False
    try:
        return SamplingParams(**kw), "seed" in kw
    except DeliberateError as e:
        raise HTTPError(400, str(e)) from None


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise HTTPError(400, "only text message content is supported")
        return "".join(parts)
    if content is None:
        return ""
    raise HTTPError(400, f"message content must be a string or a list of text parts (got {type(content).__name__})")


def chat_to_prompt(backend: Backend, messages: Any) -> str:
    """``backend.chat_prompt(messages)`` when the backend defines it, else contents joined by newlines."""
    if not isinstance(messages, list) or not messages:
        raise HTTPError(400, "'messages' must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise HTTPError(400, "each message must be an object with a 'role'")
    fmt = getattr(backend, "chat_prompt", None)
    if callable(fmt):
        try:
            return fmt(messages)
        except DeliberateError as e:
            raise HTTPError(400, str(e)) from None
    return "\n".join(_message_text(m.get("content")) for m in messages)


# ------------------------------------------------------------------------------------ response shape


def completion_choice(i: int, c: Completion) -> dict:
    lp = None
    if c.logprobs is not None:
        lp = {"tokens": None, "token_logprobs": list(c.logprobs), "top_logprobs": None, "text_offset": None}
    return {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": lp,
            "completion_tokens": c.completion_tokens}


def chat_choice(i: int, c: Completion) -> dict:
    lp = None
    if c.logprobs is not None:
        lp = {"content": [{"token": "", "logprob": x, "bytes": None, "top_logprobs": []} for x in c.logprobs]}
    return {"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
            "logprobs": lp, "completion_tokens": c.completion_tokens}



def check_limits(prompts: list[str], params: SamplingParams, limits: ServerLimits) -> None:
    """400 naming the limit when one request asks for more than the server allows."""
    if params.n > limits.max_n:
        raise HTTPError(400, f"'n' is {params.n}, over this server's limit of {limits.max_n} (--max-n)")
    if params.max_tokens > limits.max_tokens:
        raise HTTPError(400, f"'max_tokens' is {params.max_tokens}, over this server's limit of "
                              f"{limits.max_tokens} (--max-tokens)")
    total = len(prompts) * params.n * params.max_tokens + sum(len(p.encode()) for p in prompts)
    if total > limits.max_request_tokens:
        raise HTTPError(400, f"the request asks for up to {total} tokens (prompts x n x max_tokens, plus the "
                              f"prompts), over this server's limit of {limits.max_request_tokens} per request "
                              f"(--max-request-tokens); split it into smaller requests")
