"""The import graph of ``src/deliberate`` obeys the layer order, has no cycles, and no module imports
another module's private names.

Layers, lowest first (a module may import its own package and anything below it, never above, and
never a sibling package of its own layer):

    0  deliberate (the package), types, errors, registry, plugins, atomic, records, fingerprint, hub,
       progress
       (may import each other)
    1  sandbox
    2  tasks, models
    3  policy, executor
    4  rewards
    5  search
    6  eval
    7  train
    8  cli, experiments (quickstart, suspects), __main__                 (may import each other)

The graph is read from the source with ``ast`` (every import, including those inside functions), so
a lazy import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "deliberate"

LAYERS: dict[str, int] = {
    "": 0, "types": 0, "errors": 0, "registry": 0, "plugins": 0, "atomic": 0, "records": 0, "fingerprint": 0,
    "hub": 0, "progress": 0,
    "sandbox": 1,
    "tasks": 2, "models": 2,
    "policy": 3, "executor": 3,
    "rewards": 4,
    "search": 5,
    "eval": 6,
    "train": 7,
    "cli": 8, "experiments": 8, "quickstart": 8, "suspects": 8, "__main__": 8,
}
#: layers whose units may import each other (the cycle test still applies)
OPEN_LAYERS = {0, 8}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(module: str) -> str:
    """The layer unit of ``deliberate.X.Y``: ``X`` (a package or top-level module), "" for the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    """Module -> its imports of deliberate modules; ``from pkg import submodule`` is an edge to the submodule."""
    paths = sorted(SRC.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    g = {}
    for path in paths:
        edges = []
        for m, names, line in imports(path):
            if m != "deliberate" and not m.startswith("deliberate."):
                continue
            subs = [n for n in names if f"{m}.{n}" in modules]
            edges += [(f"{m}.{n}", [], line) for n in subs]
            rest = [n for n in names if n not in subs]
            if rest or not names:
                edges.append((m, rest, line))
        g[module_name(path)] = edges
    return g


def test_every_unit_has_a_layer():
    missing = sorted({unit(m) for m in graph()} - set(LAYERS))
    assert not missing, f"modules with no layer in LAYERS: {missing}"


def test_no_upward_or_sideways_import():
    bad = []
    for mod, edges in graph().items():
        src = unit(mod)
        for target, _names, line in edges:
            dst = unit(target)
            lo, hi = LAYERS.get(dst, 99), LAYERS.get(src, -1)
            if dst == src or lo < hi or (lo == hi and lo in OPEN_LAYERS):
                continue
            bad.append(f"{mod}:{line} imports {target} (layer {LAYERS.get(dst)} >= {LAYERS.get(src)})")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def test_no_cycles():
    full = graph()
    g = {m: {t for t, _n, _l in edges if t in full and t != m} for m, edges in full.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_imported_across_modules():
    bad = []
    for mod, edges in graph().items():
        for target, names, line in edges:
            if target == mod:
                continue
            bad += [f"{mod}:{line} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def uncommented_lazy_imports(source: str) -> list[int]:
    """Lines of the imports inside functions that no comment explains. Imports on consecutive lines of one
    block form a group: a comment on any of its lines, or on a comment-only line just above it, covers it."""
    lines = source.splitlines()
    comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    groups: list[list[ast.stmt]] = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            for _field, body in ast.iter_fields(node):
                if not isinstance(body, list):
                    continue
                for stmt in body:
                    if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        continue
                    if groups and groups[-1][-1] in body and groups[-1][-1].end_lineno + 1 == stmt.lineno:
                        groups[-1].append(stmt)
                    else:
                        groups.append([stmt])
    bad = set()
    for group in groups:
        first, last = group[0].lineno, group[-1].end_lineno
        above = lines[first - 2].lstrip() if first > 1 else ""
        if not comments & set(range(first, last + 1)) and not above.startswith("#"):
            bad.update(stmt.lineno for stmt in group)
    return sorted(bad)


def test_uncommented_lazy_import_is_caught():
    src = ("def f():\n"
           "    import json\n"
           "    return json\n"
           "\n"
           "def g():\n"
           "    # lazy: a heavy optional dependency\n"
           "    import os\n"
           "    import sys\n"
           "\n"
           "    def inner():\n"
           "        x = 1  # a comment on code is no reason\n"
           "        import re\n"
           "\n"
           "        import shutil  # lazy: why\n"
           "        from pathlib import (\n"
           "            Path,\n"
           "        )\n")
    assert uncommented_lazy_imports(src) == [2, 12]


def test_every_import_inside_a_function_says_why():
    """Imports belong at the top of a module; one that stays inside a function (a heavy optional dependency,
    a cycle) carries a comment saying which and why, so the next reader need not rediscover it."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        mod = module_name(path)
        bad += [f"{mod}:{line}" for line in uncommented_lazy_imports(path.read_text())]
    assert not bad, "imports inside functions with no comment saying why (move them to the top?):\n" + "\n".join(bad)
