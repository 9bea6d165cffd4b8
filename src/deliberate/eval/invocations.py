"""What every invocation of a resumable run spent, so ``summary.json``'s ``compute`` covers them all.

An eval or a sweep killed and rerun into the same ``--out`` finishes in several invocations; each
appends what it spent (tokens, backend calls, wall time, engine and verifier counters) to
``<out>/invocations.jsonl`` when it ends, and the summary's ``compute`` is the sum over the lines, with
``invocations`` the number summed. An invocation killed before its end leaves no line: its samples
are on disk (and their own compute is in the records), its wall time is not in the sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deliberate.records import JsonlAppender

INVOCATIONS_FILE = "invocations.jsonl"


def add_up(a: Any, b: Any) -> Any:
    """``a + b`` for numbers, key by key for mappings (keys of either), else ``b`` (the later value).

    >>> add_up({"wall_s": 1.5, "engine": {"forward_calls": 2}, "executor": {"name": "local"}},
    ...        {"wall_s": 2.0, "engine": {"forward_calls": 3, "cached_tokens": 7}, "executor": {"name": "local"}})
    {'wall_s': 3.5, 'engine': {'forward_calls': 5, 'cached_tokens': 7}, 'executor': {'name': 'local'}}
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return {k: add_up(a[k], b[k]) if k in a and k in b else (a[k] if k in a else b[k]) for k in {**a, **b}}
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a + b
    return b


def record_invocation(out: Path, compute: Mapping[str, Any]) -> dict[str, Any]:
    """Append this invocation's ``compute`` to ``out/invocations.jsonl``; return the sum over every
    invocation so far, with ``invocations`` set to their number."""
    with JsonlAppender(Path(out) / INVOCATIONS_FILE, key=lambda r: r["invocation"]) as f:
        f.append([{"invocation": len(f.rows) + 1, "compute": dict(compute)}])
        total: dict[str, Any] = {}
        for row in f.rows.values():
            total = add_up(total, row["compute"])
        return {**total, "invocations": len(f.rows)}
