"""Your own tasks, verifiers, search strategies, backends and training recipes, without editing deliberate.

A plug-in is a Python module that registers things when it is imported, with the decorators the
built-ins use: :func:`deliberate.tasks.base.register_task`, :func:`deliberate.rewards.base.register_verifier`,
:func:`deliberate.search.base.register_strategy`, :func:`deliberate.models.base.register_backend` and
:func:`deliberate.cli.recipes.register_recipe` (``deliberate train NAME``); examples/ holds one of each.
Every registry (:mod:`deliberate.registry`) imports the plug-ins before it looks a name up, so the
CLI, the Python API and worker processes see them. A name already taken is refused unless the
plug-in registers with ``override=True`` (``@register_task("arith", override=True)``): then its
entry replaces the built-in one. They come from two places:

* ``DELIBERATE_PLUGINS``: a comma-separated list of module names (importable from ``sys.path``,
  e.g. ``my_tasks``) and/or paths to ``.py`` files (e.g. ``./my_tasks.py``);
* installed packages' entry points in the group ``deliberate.plugins`` (``pyproject.toml``:
  ``[project.entry-points."deliberate.plugins"]`` then ``my_tasks = "my_pkg.tasks"``).

Each is imported once per process. One that fails to import stops the command with a one-line
error naming it (a half-loaded plug-in would otherwise surface later as "unknown task").
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from pathlib import Path

from deliberate.errors import DeliberateError

ENV = "DELIBERATE_PLUGINS"
GROUP = "deliberate.plugins"

_loaded: set[str] = set()  # the specs imported (or being imported) in this process
_entry_points_done = False


def _import_file(path: Path):
    # the module name carries a hash of the path: two plug-in files may share a file name
    digest = hashlib.blake2b(str(path).encode(), digest_size=4).hexdigest()
    name = "deliberate_plugin_" + re.sub(r"\W", "_", path.stem) + "_" + digest
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so dataclasses/pickle inside the plug-in find their module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _load(spec: str, origin: str, load) -> None:
    _loaded.add(spec)  # before importing: a plug-in that looks a name up while importing must not re-enter
    try:
        load()
    except Exception as e:
        _loaded.discard(spec)
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise DeliberateError(f"plug-in {spec!r} (from {origin}) failed to import: {type(e).__name__}: {e} "
                              f"[{Path(where.filename).name}:{where.lineno}]") from e


def load_plugins() -> None:
    """Import the plug-ins named by ``$DELIBERATE_PLUGINS`` and by ``deliberate.plugins`` entry points
    that this process has not imported yet."""
    global _entry_points_done
    specs = [s.strip() for s in os.environ.get(ENV, "").split(",") if s.strip()]
    absolute = []
    for spec in specs:
        if spec in _loaded:  # imported already (file paths are stored absolute, as the variable holds them now)
            absolute.append(spec)
        elif spec.endswith(".py") or os.sep in spec or "/" in spec:
            path = Path(spec).expanduser()
            if not path.is_file():
                raise DeliberateError(f"plug-in file {spec!r} (from ${ENV}) does not exist "
                                      f"(relative paths are read from {Path.cwd()})")
            full = path.resolve()
            absolute.append(str(full))
            if str(full) not in _loaded:
                _load(str(full), f"${ENV}", lambda full=full: _import_file(full))
        else:
            absolute.append(spec)
            _load(spec, f"${ENV}", lambda spec=spec: importlib.import_module(spec))
    if absolute != specs:  # child processes (Ray workers, sandboxes) may start elsewhere: give them absolute paths
        os.environ[ENV] = ",".join(absolute)
    if not _entry_points_done:
        _entry_points_done = True
        # lazy: importlib.metadata adds ~17 ms (half of `import deliberate.tasks`), and only a lookup needs it
        from importlib.metadata import entry_points

        for ep in entry_points(group=GROUP):
            key = f"{ep.name}={ep.value}"
            if key not in _loaded:
                _load(key, f"entry point {ep.name!r} of group {GROUP!r}", ep.load)
