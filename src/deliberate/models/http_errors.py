"""HTTP failures of the ``openai`` backend: which are final, which are worth retrying, and how long a
server asks us to wait.

Why: the retry loop in :mod:`deliberate.models.openai` only decides what to do with a failed attempt;
what a failure is (:class:`RemoteError` for the caller, :class:`Retryable` inside the loop), the
server's own error message and its ``Retry-After`` header are read here.
"""

from __future__ import annotations

import email.utils
import math
import time

import httpx

from deliberate.errors import DeliberateError


class RemoteError(DeliberateError):
    """A request the server refused (non-retryable 4xx) or that kept failing after all retries.

    ``status`` is the HTTP status of the last answer (``None`` when there was none, e.g. connection errors).
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Retryable(Exception):
    """A failed attempt that may succeed if tried again (the retry loop catches it; callers never see it)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
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


def error_message(resp: httpx.Response) -> str:
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
