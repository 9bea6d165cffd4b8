"""Append-only, resumable JSONL files of :class:`~deliberate.types.SampleRecord` rows.

A long eval or sweep writes one line per sample as soon as it exists, so a run killed at any point
(Ctrl-C, SIGKILL, a lost machine) loses at most the line being written. On reopen,
:class:`RecordWriter` cuts a torn last line off, and the run skips every key already on disk
(:func:`done_keys`). A key ``(problem_id, strategy, index)`` is written at most once per file.
Small summary/config files are replaced atomically with :func:`write_json_atomic`.

What keeps two runs from mixing in one output directory: :func:`lock_out_dir` holds an exclusive
lock on the directory for the whole run, taken before anything (``config.json`` included) is
written (the weights a run was made with: :mod:`deliberate.fingerprint`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from deliberate.atomic import disk_full_errors, write_json_atomic
from deliberate.errors import DeliberateError
from deliberate.types import SampleRecord

try:  # advisory lock so two processes never append to one file; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

Key = tuple[str, str, int]


def json_line(raw: bytes, where: str, what: str = "JSON line") -> Any:
    """One JSONL line's value; a non-UTF-8 byte or bad JSON raises :class:`DeliberateError` naming ``where``
    (``file:line``)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeliberateError(f"{where}: malformed {what} ({e})") from None


def _parse_line(raw: bytes, path: Path, lineno: int) -> SampleRecord:
    where = f"{path}:{lineno}"
    row = json_line(raw, where, "record line")
    if not isinstance(row, dict):
        raise DeliberateError(f"{where}: a record line must be a JSON object, got {type(row).__name__}")
    try:
        rec = SampleRecord.from_dict(row)
    except (KeyError, TypeError) as e:
        raise DeliberateError(f"{where}: bad record ({e.args[0] if e.args else e})") from None
    if not isinstance(rec.problem_id, str) or not isinstance(rec.strategy, str) \
            or not isinstance(rec.index, int) or isinstance(rec.index, bool):
        raise DeliberateError(f"{where}: bad record key (problem_id and strategy must be strings, "
                              f"index an integer; got {rec.key!r})")
    return rec


def _read(path: Path) -> tuple[list[SampleRecord], int]:
    """Records of every complete line, and the byte length of the complete part of the file."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn, partial line
    records: list[SampleRecord] = []
    first_line: dict[Key, int] = {}
    for lineno, raw in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        rec = _parse_line(raw, path, lineno)
        if rec.key in first_line:
            raise DeliberateError(f"{path}:{lineno}: duplicate record key {rec.key!r} "
                                  f"(first written on line {first_line[rec.key]})")
        first_line[rec.key] = lineno
        records.append(rec)
    return records, end


def load_records(path: str | os.PathLike) -> list[SampleRecord]:
    """All records of a JSONL file in file order (a missing file has none).

    A torn last line (no trailing newline: the writer was killed mid-line) is ignored with a
    warning; a malformed complete line or a repeated key raises :class:`DeliberateError` naming
    ``file:line``.
    """
    path = Path(path)
    if not path.exists():
        return []
    records, end = _read(path)
    if end < path.stat().st_size:
        log.warning("%s: ignoring a partial last line (%d bytes; a run was killed mid-write)",
                    path, path.stat().st_size - end)
    return records


def done_keys(path: str | os.PathLike) -> set[Key]:
    """Keys ``(problem_id, strategy, index)`` already written to ``path``."""
    return {r.key for r in load_records(path)}


class RecordWriter:
    """Append records to a JSONL file, one complete, fsynced line each; a context manager.

    Opening cuts a torn last line (with a warning) and reads the keys already present;
    :meth:`append` never writes a key twice. Only one writer may hold a file at a time.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f, records = open_for_append(self.path, _read)
        self._keys: set[Key] = {r.key for r in records}

    @property
    def keys(self) -> frozenset[Key]:
        """Keys on disk (including those appended through this writer)."""
        return frozenset(self._keys)

    def __contains__(self, key: Key) -> bool:
        return key in self._keys

    def append(self, records: Iterable[SampleRecord], on_duplicate: str = "skip") -> int:
        """Write ``records`` (complete lines, then flush + fsync); return how many were written.

        A record whose key is already in the file (or earlier in ``records``) is skipped, or raises
        :class:`DeliberateError` with ``on_duplicate="error"``.
        """
        if on_duplicate not in ("skip", "error"):
            raise DeliberateError(f"on_duplicate must be 'skip' or 'error' (got {on_duplicate!r})")
        if self._f.closed:
            raise DeliberateError(f"{self.path}: writer is closed")
        lines, new = [], []
        seen = set(self._keys)
        for rec in records:
            if rec.key in seen:
                if on_duplicate == "error":
                    raise DeliberateError(f"{self.path}: record {rec.key!r} is already written")
                continue
            seen.add(rec.key)
            new.append(rec.key)
            lines.append(json.dumps(rec.to_dict()) + "\n")  # ASCII: survives lone surrogates
        if lines:
            append_lines(self._f, self.path, lines)
            self._keys.update(new)
        return len(lines)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()  # closing releases the lock

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


T = TypeVar("T")


def append_lines(f: BinaryIO, path: Path, lines: list[str]) -> None:
    """Append complete ``lines`` to the open file ``f`` (of ``path``), flush and fsync.

    When the write fails (a full disk: one-line :class:`DeliberateError`) the file is closed, which
    releases its lock: what reached the disk is at worst a torn last line, cut on the next open."""
    try:
        with disk_full_errors(path):
            f.seek(0, os.SEEK_END)
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            f.close()  # the buffer may still hold bytes that will not fit; they are dropped with the file
        except OSError:
            pass
        raise


def open_for_append(path: Path, read: Callable[[Path], tuple[T, int]]) -> tuple[BinaryIO, T]:
    """Open ``path`` for appending under an exclusive advisory lock, parse its complete lines with
    ``read`` (which returns what it parsed and the byte length of the complete part), and cut a torn
    last line left by a killed run. Shared by every resumable JSONL file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+b")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DeliberateError(f"{path} is being written by another process") from None
        parsed, end = read(path)
        size = os.fstat(f.fileno()).st_size
        if end < size:
            log.warning("%s: cutting a partial last line (%d bytes; a run was killed mid-write)", path, size - end)
            f.truncate(end)
            os.fsync(f.fileno())
    except BaseException:
        f.close()
        raise
    return f, parsed


def read_jsonl_rows(path: Path, validate: Callable[[dict, str], None] | None = None) -> tuple[list[dict], int]:
    """Dict rows of every complete line and the byte length of the complete part (a torn tail is left out).

    A malformed complete line raises :class:`DeliberateError` naming ``file:line``."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    rows = []
    for lineno, raw in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        row = json_line(raw, where)
        if not isinstance(row, dict):
            raise DeliberateError(f"{where}: a line must be a JSON object, got {type(row).__name__}")
        if validate is not None:
            validate(row, where)
        rows.append(row)
    return rows, end


class JsonlAppender:
    """Append keyed dict rows to a file: complete fsynced lines, a torn tail cut on open, no key twice.

    ``key(row)`` identifies a row; :attr:`rows` maps each key on disk to its row."""

    def __init__(self, path: str | os.PathLike, key: Callable[[dict], Hashable],
                 validate: Callable[[dict, str], None] | None = None):
        self.path = Path(path)
        self.key = key
        self._f, rows = open_for_append(self.path, lambda p: read_jsonl_rows(p, validate))
        self.rows: dict[Hashable, dict] = {}
        for r in rows:
            self.rows.setdefault(key(r), r)

    def __contains__(self, k: Hashable) -> bool:
        return k in self.rows

    def append(self, rows: Iterable[dict]) -> int:
        lines = []
        for r in rows:
            k = self.key(r)
            if k in self.rows:
                continue
            self.rows[k] = r
            lines.append(json.dumps(r) + "\n")
        if lines:
            append_lines(self._f, self.path, lines)
        return len(lines)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- one run per output directory ---------------------------------------------------------------

def make_out_dir(out: str | os.PathLike) -> Path:
    """Create the output directory ``out`` (and its parents); a file in the way is a one-line error."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DeliberateError(f"--out {out} is not a directory (a file of that name exists); "
                              "name a new directory or one of an earlier run") from None
    except NotADirectoryError:
        raise DeliberateError(f"--out {out}: a path above it is not a directory (a file is in the way)") from None
    except OSError as e:
        raise DeliberateError(f"--out {out}: cannot create the directory ({e.strerror or e})") from None
    return out


@contextmanager
def lock_out_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Create ``out`` and hold an exclusive lock on it for the block: one run at a time per directory.

    Take it before writing anything in ``out``: a second run (same command, or one with other
    resumable flags) then stops before it touches the first run's ``config.json``. The lock is a
    ``flock`` on the directory itself, so no lock file is left behind; the kernel drops it when the
    process dies. Where a file system refuses locks on directories (some NFS mounts) the per-file
    locks of :func:`open_for_append` still keep two writers off one records file."""
    out = make_out_dir(out)
    fd = os.open(out, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DeliberateError(f"{out} is being written by another process (a run is in progress there); "
                                      "wait for it to finish or use another --out") from None
            except OSError as e:
                log.warning("%s: cannot lock the directory (%s); relying on per-file locks", out, e.strerror or e)
        yield out
    finally:
        os.close(fd)  # releases the lock
