"""Reading benchmark JSONL files and finding them on disk, with errors that name file and line.

Used by the file-backed tasks (gsm8k, math500, mawps). Data is never downloaded: a task takes an
explicit ``path``, else looks in ``$DELIBERATE_DATA/<name>/<file>``, else in
``../shared/data/<name>/<file>`` relative to the current working directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError

#: what ``errors="surrogateescape"`` turns an undecodable byte into; valid UTF-8 never decodes to these
#: (an escaped ``"\udcff"`` in JSON is ASCII on disk), so one in a line means the file is not UTF-8 there
_UNDECODED = re.compile("[\udc80-\udcff]")


def read_jsonl(path: str | os.PathLike, required_fields: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each with ``_line`` (1-based line number) added; blank lines skipped.

    Raises :class:`DeliberateError` naming the file and line for a byte that is not UTF-8, a malformed
    JSON line, a line that is not an object, or a row missing one of ``required_fields``.
    """
    p = Path(path)
    try:
        fh = p.open(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise DeliberateError(f"cannot read {p}: {e.strerror or e}") from None
    rows: list[dict[str, Any]] = []
    with fh:
        for lineno, line in enumerate(fh, 1):
            bad = _UNDECODED.search(line)
            if bad:
                raise DeliberateError(f"{p}:{lineno}: not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x} "
                                      f"at column {bad.start() + 1}); save the file as UTF-8")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DeliberateError(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DeliberateError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [f for f in required_fields if f not in row]
            if missing:
                raise DeliberateError(f"{p}:{lineno}: missing field(s) {', '.join(missing)}")
            row["_line"] = lineno
            rows.append(row)
    if not rows:
        raise DeliberateError(f"{p}: no data rows (the file is empty)")
    return rows


def resolve_data_file(name: str, filename: str, path: str | os.PathLike | None = None) -> Path:
    """Where a task's data file is: ``path`` if given, else ``$DELIBERATE_DATA/<name>/<filename>``,
    else ``../shared/data/<name>/<filename>`` (from the working directory).

    Raises :class:`DeliberateError` listing the paths tried and how to pass one.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DeliberateError(f"{name}: data file {p} not found")
        return p
    tried = []
    env = os.environ.get("DELIBERATE_DATA")
    if env:
        tried.append(Path(env).expanduser() / name / filename)
    tried.append(Path.cwd().parent / "shared" / "data" / name / filename)
    for p in tried:
        if p.is_file():
            return p
    raise DeliberateError(
        f"{name}: data file not found; tried {', '.join(str(p) for p in tried)}. "
        f"pass the task option path=FILE, or set DELIBERATE_DATA to a folder holding {name}/{filename}"
    )
