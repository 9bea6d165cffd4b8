"""Keeping secrets out of what we print: the API key and URL passwords of the ``openai`` backend.

Why: a key or password must never reach a log line, an error message, ``repr`` or ``server_stats()``,
even when a server echoes it back. :class:`Secret` hides a value from ``repr`` / ``vars`` / logging;
:func:`redact_userinfo` and :func:`url_passwords` find passwords written in URLs so that callers can
replace them by ``***``.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any


class Secret:
    """Holds the API key (or the URL passwords) so that ``repr``, ``vars`` and logging never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: Any):
        self._value = value

    def get(self) -> Any:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "'***'" if self._value else "None"

    __str__ = __repr__


USERINFO_PASSWORD = re.compile(r"(?i)\b(https?://[^/\s:@]*:)[^/\s@]*@")


def redact_userinfo(text: str) -> str:
    """``scheme://user:PASSWORD@host`` -> ``scheme://user:***@host`` anywhere in ``text``."""
    return USERINFO_PASSWORD.sub(r"\1***@", text)


def url_passwords(url: str) -> list[str]:
    """The password of ``url`` as written and percent-decoded (either may turn up in messages)."""
    try:
        raw = urllib.parse.urlsplit(url).password
    except ValueError:
        raw = None
    if not raw:
        return []
    return sorted({raw, urllib.parse.unquote(raw)}, key=len, reverse=True)
