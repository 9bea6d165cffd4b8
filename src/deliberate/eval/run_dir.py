"""Reading a run directory for the report pages: its summary, config, plots, search trees and row counts.

:func:`load_run` is the one place a run directory is read and checked for ``deliberate report``
(one run, :mod:`deliberate.eval.report`) and the comparison page (:mod:`deliberate.eval.compare`).
An eval's or a sweep's ``summary.json`` is parsed by :meth:`deliberate.types.RunSummary.from_dict`;
a training recipe's (a summary with a ``recipe``) is checked here for the shape its page uses. Big
files are streamed and capped, never loaded whole: at most ``max_trees`` trees, :data:`MAX_NODES`
nodes per tree, :data:`MAX_TEXT` characters per node and :data:`MAX_TREE_BYTES` of tree JSON in
all, each cut recorded in :attr:`TreeSet.notes` for the page to announce. Every problem raises
:class:`~deliberate.errors.DeliberateError` naming the file (and line).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.types import RunSummary

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
TREES_FILE = "trees.jsonl"
REPORT_FILE = "report.html"
ROW_FILES = ("records.jsonl", "results.jsonl")

MAX_TREES = 200  # trees embedded by default; the page says how many more the file holds
MAX_NODES = 5000  # nodes per tree: the chosen path and a breadth-first prefix are kept
MAX_TEXT = 4000  # characters per node text
MAX_TREE_BYTES = 20_000_000  # total embedded tree JSON, so a huge MCTS dump still opens in a browser


@dataclass
class TreeSet:
    """The trees embedded in the page, with what was left out and why."""

    trees: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0  # trees in the file
    notes: list[str] = field(default_factory=list)


@dataclass
class RunData:
    """Everything the report shows, read and validated from one run directory.

    Exactly one of ``summary`` (an eval or sweep run) and ``training`` (a training recipe's summary,
    whose shape varies by recipe: ``recipe``, optional ``iterations`` rows with an ``eval``) is set.
    """

    run_dir: Path
    summary: RunSummary | None
    training: dict[str, Any] | None
    config: dict[str, Any]
    config_source: str
    plots: list[tuple[str, bytes]]
    trees: TreeSet
    row_counts: dict[str, int]
    date: str

    @property
    def is_training(self) -> bool:
        return self.training is not None


def load_json(path: Path) -> Any:
    """A JSON file's value; unreadable or malformed files raise one error naming the file (and line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DeliberateError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DeliberateError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DeliberateError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None



def _validate_training_summary(summary: dict[str, Any], path: Path) -> dict[str, Any]:
    """A training recipe's summary: ``recipe`` names it; ``iterations`` (when there) are rows with an ``eval``."""
    if not isinstance(summary["recipe"], str):
        raise DeliberateError(f"{path}: 'recipe' must be a string, got {type(summary['recipe']).__name__}")
    rows = summary.get("iterations")
    if rows is not None:
        if not isinstance(rows, list):
            raise DeliberateError(f"{path}: 'iterations' must be a list of rows, got {type(rows).__name__}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DeliberateError(f"{path}: iterations[{i}] must be an object, got {type(row).__name__}")
            if not isinstance(row.get("eval", {}), dict):
                raise DeliberateError(f"{path}: iterations[{i}].eval must be an object")
    for key in ("compute", "config"):
        if summary.get(key) is not None and not isinstance(summary[key], dict):
            raise DeliberateError(f"{path}: '{key}' must be an object, got {type(summary[key]).__name__}")
    return summary


def _count_lines(path: Path) -> int:
    """Non-empty-file line count read in chunks, so a multi-GB records file costs no memory."""
    n, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")



def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number_or_none(v: Any) -> float | int | None:
    """``v`` if it is a finite number (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _prune_nodes(nodes: list[dict[str, Any]], by_id: dict[int, dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    """At most ``cap`` nodes, ancestor-closed: the chosen path and its ancestors, then breadth-first."""
    children: dict[Any, list[int]] = {}
    for nd in nodes:
        children.setdefault(nd["parent"], []).append(nd["id"])
    keep: set[int] = set()
    for nd in nodes:
        if nd["chosen"]:
            cur: int | None = nd["id"]
            while cur is not None and cur not in keep:
                keep.add(cur)
                cur = by_id[cur]["parent"]
    queue = deque(children.get(None, []))
    while queue and len(keep) < cap:
        nid = queue.popleft()
        keep.add(nid)
        queue.extend(children.get(nid, []))
    return [nd for nd in nodes if nd["id"] in keep]


def _parse_tree(row: Any, where: str) -> dict[str, Any]:
    """One trees.jsonl line as the compact dict the viewer uses; malformed structure names ``file:line``."""
    if not isinstance(row, dict):
        raise DeliberateError(f"{where}: a tree line must be a JSON object, got {type(row).__name__}")
    raw_nodes = row.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise DeliberateError(f"{where}: 'nodes' must be a non-empty list")
    nodes: list[dict[str, Any]] = []
    by_id: dict[int, dict[str, Any]] = {}
    for j, nd in enumerate(raw_nodes):
        if not isinstance(nd, dict) or not _is_int(nd.get("id")):
            raise DeliberateError(f"{where}: nodes[{j}] must be an object with an integer 'id'")
        parent = nd.get("parent")
        if parent is not None and not _is_int(parent):
            raise DeliberateError(f"{where}: node {nd['id']}: 'parent' must be an integer or null")
        if nd["id"] in by_id:
            raise DeliberateError(f"{where}: duplicate node id {nd['id']}")
        text = str(nd.get("text") if nd.get("text") is not None else "")
        clean = {"id": nd["id"], "parent": parent,
                 "text": text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f" … [{len(text) - MAX_TEXT} more chars]",
                 "score": number_or_none(nd.get("score")), "visits": number_or_none(nd.get("visits")),
                 "value": number_or_none(nd.get("value")), "chosen": bool(nd.get("chosen")),
                 "terminal": bool(nd.get("terminal")),
                 "correct": nd.get("correct") if isinstance(nd.get("correct"), bool) else None}
        by_id[nd["id"]] = clean
        nodes.append(clean)
    for nd in nodes:
        if nd["parent"] is not None and nd["parent"] not in by_id:
            raise DeliberateError(f"{where}: node {nd['id']} has parent {nd['parent']}, which is not a node")
    if not any(nd["parent"] is None for nd in nodes):
        raise DeliberateError(f"{where}: no root node (a node with parent null)")
    n_total = len(nodes)
    if n_total > MAX_NODES:
        nodes = _prune_nodes(nodes, by_id, MAX_NODES)
    outcome = None
    for nd in nodes:  # the chosen leaf's verdict is the tree's outcome
        if nd["chosen"] and nd["terminal"] and nd["correct"] is not None:
            outcome = nd["correct"]
    return {"problem_id": str(row.get("problem_id", "?")), "strategy": str(row.get("strategy", "?")),
            "n": row.get("n") if _is_int(row.get("n")) else None,
            "seed": row.get("seed") if _is_int(row.get("seed")) else None,
            "question": str(row.get("question") or ""), "gold": str(row.get("gold") if row.get("gold") is not None else ""),
            "outcome": outcome, "n_nodes": n_total, "nodes": nodes}


def load_trees(path: Path, max_trees: int = MAX_TREES) -> TreeSet:
    """Stream ``trees.jsonl``: parse the first ``max_trees`` lines, only count the rest.

    A torn last line (no trailing newline: a run killed mid-write) is skipped with a note, as
    :func:`deliberate.records.load_records` does; any other malformed line is an error.
    """
    out = TreeSet()
    if not path.exists():
        return out
    size = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if not raw.endswith(b"\n"):
                try:
                    json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    out.notes.append(f"skipped a partial last line of {path.name} (a run was killed mid-write)")
                    continue
            out.total += 1
            if len(out.trees) >= max_trees or size > MAX_TREE_BYTES:
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DeliberateError(f"{where}: malformed tree line ({e})") from None
            tree = _parse_tree(row, where)
            size += len(json.dumps(tree, ensure_ascii=False))
            out.trees.append(tree)
    if out.total > len(out.trees):
        why = f"the first {max_trees}" if len(out.trees) >= max_trees else f"the first {len(out.trees)} (size cap)"
        out.notes.append(f"{out.total} trees in {path.name}; showing {why}")
    cut = [t for t in out.trees if t["n_nodes"] > len(t["nodes"])]
    if cut:
        out.notes.append(f"{len(cut)} tree(s) have more than {MAX_NODES} nodes; their chosen path and the "
                         f"first {MAX_NODES} nodes breadth-first are shown")
    return out


def load_run(run_dir: str | Path, max_trees: int = MAX_TREES) -> RunData:
    """Read and validate a run directory; every problem raises :class:`DeliberateError` naming the file."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DeliberateError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise DeliberateError(f"{run_dir} is not a directory (expected an eval, sweep or training run directory)")
    spath = run_dir / SUMMARY_FILE
    if not spath.is_file():
        raise DeliberateError(f"{spath} not found: is {run_dir} an eval, sweep or training run directory "
                              f"(has the run finished)?")
    raw = load_json(spath)
    summary, training = None, None
    if isinstance(raw, dict) and "recipe" in raw:
        training = _validate_training_summary(raw, spath)
    elif isinstance(raw, dict) and "suspects" in raw:
        raise DeliberateError(f"{spath}: a `deliberate suspects` run; it writes its own page, "
                              f"{spath.parent / REPORT_FILE}")
    else:
        summary = RunSummary.from_dict(raw, str(spath))
    cpath = run_dir / CONFIG_FILE
    if cpath.is_file():
        config = load_json(cpath)
        if not isinstance(config, dict):
            raise DeliberateError(f"{cpath}: must be a JSON object, got {type(config).__name__}")
        source = CONFIG_FILE
    else:
        config = dict((summary.config if summary is not None else training.get("config")) or {})
        source = f"{SUMMARY_FILE} (config)"
    plots = [(p.name, p.read_bytes()) for p in sorted(run_dir.glob("*.png")) if p.is_file()]
    counts = {name: _count_lines(run_dir / name) for name in ROW_FILES if (run_dir / name).is_file()}
    top = summary.other if summary is not None else training
    stamp = top.get("date") or top.get("created")
    date = str(stamp) if stamp else dt.datetime.fromtimestamp(spath.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    return RunData(run_dir=run_dir, summary=summary, training=training, config=config, config_source=source,
                   plots=plots, trees=load_trees(run_dir / TREES_FILE, max_trees), row_counts=counts, date=date)


def is_accuracy_entry(v: Any) -> bool:
    """Whether ``v`` is a held-out accuracy entry (``{"accuracy": number, "ci": ...}``) of a training summary."""
    return isinstance(v, dict) and number_or_none(v.get("accuracy")) is not None


def running_total(row: Mapping[str, Any], key: str) -> Any:
    """A row's running total of ``key`` (``cum_*``, what the recipes' iteration logs add), else its own value."""
    return row.get(f"cum_{key}", row.get(key))
