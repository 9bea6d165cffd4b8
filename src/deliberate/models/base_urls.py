"""The ``base_url`` of the ``openai`` backend (one URL, a comma-separated string or a list) checked and
turned into a list of server URLs.

Why: a typo in a server list should fail when the backend is made, with a message that says which
entry is wrong, and without printing a password written in any of the URLs.
"""

from __future__ import annotations

from typing import Any

import httpx

from deliberate.errors import DeliberateError
from deliberate.models.redaction import redact_userinfo, url_passwords


def parse_base_urls(base_url: Any) -> list[str]:
    """``base_url`` (one URL, a comma-separated string, or a list / tuple) as a list of checked URLs."""
    if isinstance(base_url, str):
        entries: list[Any] = base_url.split(",")
    elif isinstance(base_url, (list, tuple)):
        entries = list(base_url)
    else:
        raise DeliberateError("openai backend: base_url must be a URL, a comma-separated string of URLs or a list "
                              f"of URLs (got {type(base_url).__name__})")
    if not entries:
        raise DeliberateError("openai backend: base_url lists no server")
    secrets = [pw for e in entries if isinstance(e, str) for pw in url_passwords(e)]

    def show(text: str) -> str:
        for pw in secrets:
            text = text.replace(pw, "***")
        return redact_userinfo(text)

    urls: list[str] = []
    for pos, entry in enumerate(entries, 1):
        where = f"base_url entry {pos} of {len(entries)}"
        if not isinstance(entry, str):
            raise DeliberateError(f"openai backend: {where} is not a string (got {type(entry).__name__})")
        url = entry.strip().rstrip("/")
        if not url:
            raise DeliberateError(f"openai backend: {where} is empty (in {show(repr(base_url))})")
        if not url.startswith(("http://", "https://")):
            raise DeliberateError(f"openai backend: {where}: base_url must start with http:// or https:// "
                                  f"(got {show(repr(entry))})")
        if any(ch.isspace() for ch in url):
            raise DeliberateError(f"openai backend: {where} contains whitespace (got {show(repr(entry))})")
        try:
            parsed = httpx.URL(url)
            port = parsed.port
        except (httpx.InvalidURL, ValueError) as e:
            raise DeliberateError(f"openai backend: {where} is not a valid URL ({show(str(e))}): "
                                  f"{show(repr(entry))}") from None
        if not parsed.host:
            raise DeliberateError(f"openai backend: {where} has no host (got {show(repr(entry))})")
        if port is not None and not 0 < port < 65536:
            raise DeliberateError(f"openai backend: {where} has an invalid port {port} (got {show(repr(entry))})")
        if url in urls:
            raise DeliberateError(f"openai backend: {where} repeats server {urls.index(url) + 1} "
                                  f"({show(repr(url))}); list each server once")
        urls.append(url)
    return urls
