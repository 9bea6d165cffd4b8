"""Atomic writes on the ground floor: a JSON file or a whole directory replaced so that a kill at any
moment leaves either the old version or the new one, never a half-written one.

Every layer that writes results or checkpoints (eval records, policies' fine-tunes, training
checkpoints) uses these, so they live below all of them. A full disk while writing (ENOSPC, or a
quota: EDQUOT) becomes a one-line :class:`~deliberate.errors.DeliberateError` naming the file
(:func:`disk_full_errors`), so the CLI reports it instead of a traceback.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError

#: errors that mean "the disk (or the user's quota) is full": a rerun after freeing space resumes
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_full_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ENOSPC / EDQUOT raised inside the block into a one-line :class:`DeliberateError` naming
    ``path``; every other error passes through unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise DeliberateError(f"{os.strerror(e.errno)} while writing {path}; free some space and rerun the same "
                              "command (it resumes)") from None


def _remove_dead_temps(path: Path) -> None:
    """Delete ``.NAME.PID.*.tmp`` files that a killed writer of ``path`` left behind.

    Temps of live processes (another writer of the same file right now) are left alone.
    """
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive but not ours (EPERM)
            pass


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically: temp file, fsync, ``os.replace``.

    Readers see either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    with disk_full_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2, ensure_ascii=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _fsync_tree(directory: Path) -> None:
    """fsync every file in ``directory`` and the directory itself (durable before the rename)."""
    for f in sorted(directory.iterdir()):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: Path, directory: Path) -> None:
    """Make the complete directory ``tmp`` appear as ``directory`` (replacing any old one).

    Two renames (a directory cannot be replaced in one): ``directory -> .NAME.old<pid>`` and
    ``tmp -> directory``. A kill between them leaves no ``directory`` but both complete copies;
    :func:`recover_dir` puts one back."""
    _fsync_tree(tmp)
    old = directory.with_name(f".{directory.name}.old{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    _fsync_dir(directory.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(directory: str | Path, complete_marker: str) -> None:
    """Undo what a kill in the middle of :func:`replace_dir` left behind.

    When ``directory`` is missing, the newest complete leftover (``.NAME.tmp*`` or ``.NAME.old*``
    holding ``complete_marker``; for checkpoints the highest ``step``) is renamed back. Every other
    leftover is removed."""
    directory = Path(directory)
    if not directory.parent.exists():
        return
    left = sorted(p for p in directory.parent.glob(f".{directory.name}.*")
                  if p.is_dir() and (p.name.startswith(f".{directory.name}.tmp")
                                     or p.name.startswith(f".{directory.name}.old")))
    if not directory.exists():
        def rank(p: Path) -> tuple[int, int]:
            try:
                step = int(json.loads((p / "trainer_state.json").read_text()).get("step", 0))
            except (OSError, ValueError, AttributeError):
                step = 0
            return step, p.name.startswith(f".{directory.name}.tmp")

        complete = [p for p in left if (p / complete_marker).exists()]
        if complete:
            best = max(complete, key=rank)
            best.rename(directory)
            _fsync_dir(directory.parent)
            left.remove(best)
    for p in left:
        shutil.rmtree(p, ignore_errors=True)


