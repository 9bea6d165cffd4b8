"""``deliberate report RUN_DIR``: one self-contained HTML page for an eval, sweep or training run directory.

The page is what people look at and pass around, so it has to open anywhere: no external URLs, no
CDN, CSS and JS inline, plots embedded as base64 PNGs. Tables (results, extra tables, config,
compute) are rendered here in Python, so they read fine even with scripts disabled; the search-tree
viewer is vanilla JS over trees embedded as JSON in a ``<script type="application/json">`` tag,
and it builds every text node with ``textContent``, so problem text containing ``<`` or ``&``
cannot inject markup.

    deliberate report runs/quickstart/eval            # writes runs/quickstart/eval/report.html
    deliberate report runs/sweep-arith --out /tmp/r.html --max-trees 50

What it reads (all but ``summary.json`` optional): ``summary.json`` (``results`` rows, optional
``extra`` named tables, ``compute``, ``config``), ``config.json`` (preferred over the summary's
``config``), every ``*.png``, ``trees.jsonl`` (one search tree per line: ``problem_id``,
``strategy``, ``n``, ``seed``, ``question``, ``gold`` and ``nodes`` with ``id``, ``parent``,
``text``, ``score``, ``visits``, ``value``, ``chosen``, ``terminal``, ``correct``), and the row
counts of ``records.jsonl`` / ``results.jsonl``. Big files are streamed and capped, never loaded
whole into the page: at most ``--max-trees`` trees, :data:`MAX_NODES` nodes per tree,
:data:`MAX_TEXT` characters per node and :data:`MAX_TREE_BYTES` of tree JSON in all, each cut
announced in the page.

A training run (``deliberate train rest-em|grpo|star|vstar|self-correct|sos|mcts-ei|...``: a summary
with a ``recipe``) gets the same page with its own first section: one row per iteration (held-out
accuracies with CIs, samples kept, cumulative tokens sampled / trained, train FLOPs and wall time)
for the iterative recipes, or every held-out accuracy the summary holds (``sos``' two conditions,
``self-correct``'s revise vs resample, ...) for the others; the recipe's ``curve.png`` is embedded.

    deliberate report runs/rest-em                     # writes runs/rest-em/report.html

Several directories make one comparison page instead (:mod:`deliberate.eval.compare`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
TREES_FILE = "trees.jsonl"
REPORT_FILE = "report.html"
ROW_FILES = ("records.jsonl", "results.jsonl")

MAX_TREES = 200  # trees embedded by default; the page says how many more the file holds
MAX_NODES = 5000  # nodes per tree: the chosen path and a breadth-first prefix are kept
MAX_TEXT = 4000  # characters per node text
MAX_TREE_BYTES = 20_000_000  # total embedded tree JSON, so a huge MCTS dump still opens in a browser

#: Results columns in display order: (key, header, kind). Optional ones appear only when some row
#: has them, so an eval run's table is not padded with empty sweep-only columns.
RESULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("seed", "seed", "int"),
    ("pass_at_n", "pass@n", "frac"),
    ("fraction_of_ceiling", "of ceiling", "frac"),
    ("accuracy_std", "acc. std", "frac"),
    ("generated_tokens", "gen. tokens", "count"),
    ("prompt_tokens", "prompt tokens", "count"),
    ("wall_s", "wall", "seconds"),
    ("verifier_calls", "verifier calls", "count"),
    ("verifier_tokens", "verifier tokens", "count"),
    ("n_problems", "problems", "int"),
)
_CORE_KEYS = {"strategy", "n", "accuracy", "ci"}


# --- reading the run directory ------------------------------------------------------------------

@dataclass
class TreeSet:
    """The trees embedded in the page, with what was left out and why."""

    trees: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0  # trees in the file
    notes: list[str] = field(default_factory=list)


@dataclass
class RunData:
    """Everything the report shows, read and validated from one run directory."""

    run_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    config_source: str
    plots: list[tuple[str, bytes]]
    trees: TreeSet
    row_counts: dict[str, int]
    date: str


def _load_json(path: Path) -> Any:
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


def _validate_summary(summary: Any, path: Path) -> dict[str, Any]:
    """Check the shape the tables rely on, so a malformed file fails here with its name, not in HTML code."""
    if not isinstance(summary, dict):
        raise DeliberateError(f"{path}: must be a JSON object, got {type(summary).__name__}")
    if "recipe" in summary:
        return _validate_training_summary(summary, path)
    if "suspects" in summary:
        raise DeliberateError(f"{path}: a `deliberate suspects` run; it writes its own page, "
                              f"{path.parent / REPORT_FILE}")
    results = summary.get("results")
    if not isinstance(results, list):
        raise DeliberateError(f"{path}: 'results' must be a list of result rows "
                              f"(got {type(results).__name__ if results is not None else 'nothing'})")
    for i, row in enumerate(results):
        if not isinstance(row, dict):
            raise DeliberateError(f"{path}: results[{i}] must be an object, got {type(row).__name__}")
        if "strategy" not in row:
            raise DeliberateError(f"{path}: results[{i}] has no 'strategy'")
    for key in ("extra", "compute", "config"):
        if summary.get(key) is not None and not isinstance(summary[key], dict):
            raise DeliberateError(f"{path}: '{key}' must be an object, got {type(summary[key]).__name__}")
    return summary


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


def is_training_run(summary: Mapping[str, Any]) -> bool:
    """Whether a (validated) summary is a training recipe's rather than an eval's or a sweep's."""
    return "recipe" in summary


def _count_lines(path: Path) -> int:
    """Non-empty-file line count read in chunks, so a multi-GB records file costs no memory."""
    n, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, because ``JSON.parse`` rejects Python's ``NaN``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num_or_none(v: Any) -> float | int | None:
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
                 "score": _num_or_none(nd.get("score")), "visits": _num_or_none(nd.get("visits")),
                 "value": _num_or_none(nd.get("value")), "chosen": bool(nd.get("chosen")),
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
    :func:`deliberate.eval.records.load_records` does; any other malformed line is an error.
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
    summary = _validate_summary(_load_json(spath), spath)
    cpath = run_dir / CONFIG_FILE
    if cpath.is_file():
        config = _load_json(cpath)
        if not isinstance(config, dict):
            raise DeliberateError(f"{cpath}: must be a JSON object, got {type(config).__name__}")
        source = CONFIG_FILE
    else:
        config, source = summary.get("config") or {}, f"{SUMMARY_FILE} (config)"
    plots = [(p.name, p.read_bytes()) for p in sorted(run_dir.glob("*.png")) if p.is_file()]
    counts = {name: _count_lines(run_dir / name) for name in ROW_FILES if (run_dir / name).is_file()}
    stamp = summary.get("date") or summary.get("created")
    date = str(stamp) if stamp else _dt.datetime.fromtimestamp(spath.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    return RunData(run_dir=run_dir, summary=summary, config=config, config_source=source, plots=plots,
                   trees=load_trees(run_dir / TREES_FILE, max_trees), row_counts=counts, date=date)


# --- formatting ---------------------------------------------------------------------------------

def escape(v: Any) -> str:
    return html.escape(str(v), quote=True)


def format_cell(v: Any, kind: str = "auto") -> str:
    """A cell's text: counts with thousands separators, fractions to 3 decimals, seconds with a unit."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if kind == "frac":
            return f"{v:.3f}"
        if kind == "count":
            return f"{v:,.0f}" if abs(v) >= 10 or float(v).is_integer() else f"{v:.2f}"
        if kind == "seconds":
            return f"{v:,.1f} s" if v >= 1 else f"{v * 1000:.0f} ms"
        if isinstance(v, int):
            return f"{v:,}" if abs(v) >= 10_000 else str(v)
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def table_cell(v: Any, kind: str = "auto") -> str:
    numeric = (isinstance(v, (int, float)) and not isinstance(v, bool)) or (v is None and kind != "auto")
    return f'<td class="{"num" if numeric else "txt"}">{escape(format_cell(v, kind))}</td>'


def accuracy_cell(row: Mapping[str, Any]) -> str:
    """Accuracy as a number plus a small bar with the CI as a whisker: the scaling pattern at a glance."""
    acc = _num_or_none(row.get("accuracy"))
    ci = row.get("ci", row.get("accuracy_ci"))  # self-correct's entries name it accuracy_ci
    lo = hi = None
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num_or_none(x) is not None for x in ci):
        lo, hi = float(ci[0]), float(ci[1])
    if acc is None:
        return '<td class="num">—</td><td></td>'
    bar = ""
    if 0 <= acc <= 1:
        whisker = ""
        if lo is not None and hi is not None:
            a, b = max(0.0, min(lo, 1.0)), max(0.0, min(hi, 1.0))
            whisker = f'<span class="ci" style="left:{a * 100:.1f}%;width:{max(b - a, 0) * 100:.1f}%"></span>'
        bar = f'<span class="bar"><span class="fill" style="width:{acc * 100:.1f}%"></span>{whisker}</span>'
    ci_text = f' <span class="ci-text">[{lo:.3f}, {hi:.3f}]</span>' if lo is not None else ""
    return f'<td class="num acc"><b>{acc:.3f}</b>{ci_text}</td><td class="barcell">{bar}</td>'


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The main table: strategy, n, accuracy with CI, then whichever optional columns any row has."""
    if not rows:
        return '<p class="empty">No result rows in summary.json.</p>'
    present = {k for r in rows for k in r}
    cols = [c for c in RESULT_COLUMNS if c[0] in present]
    known = _CORE_KEYS | {c[0] for c in RESULT_COLUMNS}
    others = sorted(k for k in present - known if all(not isinstance(r.get(k), (dict, list)) for r in rows))
    head = ("<th>strategy</th><th class=num>n</th><th class=num>accuracy [95% CI]</th><th></th>"
            + "".join(f'<th class="num">{escape(h)}</th>' for _, h, _ in cols)
            + "".join(f"<th>{escape(k)}</th>" for k in others))
    body = []
    for i, r in enumerate(rows):
        new_group = i > 0 and r.get("strategy") != rows[i - 1].get("strategy")
        cells = [f'<td class="txt strategy">{escape(r.get("strategy"))}</td>', table_cell(r.get("n"))]
        cells.append(accuracy_cell(r))
        cells += [table_cell(r.get(k), kind) for k, _, kind in cols]
        cells += [table_cell(r.get(k)) for k in others]
        body.append(f'<tr{" class=group" if new_group else ""}>' + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table class="results"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def generic_table(rows: Sequence[Any]) -> str:
    """A table of flat dicts (the union of their keys as columns, in first-seen order)."""
    if not rows:
        return '<p class="empty">(empty)</p>'
    if not all(isinstance(r, dict) for r in rows):
        return f"<pre>{escape(json.dumps(_clean(list(rows)), indent=2, ensure_ascii=False))}</pre>"
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    numeric = {k for k in keys if all(r.get(k) is None or (isinstance(r.get(k), (int, float))
                                                           and not isinstance(r.get(k), bool)) for r in rows)}
    head = "".join(f'<th{" class=num" if k in numeric else ""}>{escape(k)}</th>' for k in keys)
    body = "".join("<tr>" + "".join(table_cell(r.get(k)) for k in keys) + "</tr>" for r in rows)
    return f'<div class="table-wrap"><table class="generic"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _kind_of(key: str) -> str:
    """Formatting by naming convention (``*_s`` seconds, ``*tokens``/``*calls`` counts), as the writers name keys."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf.endswith("_s"):
        return "seconds"
    if leaf.endswith(("tokens", "calls")):
        return "count"
    return "auto"


def kv_table(d: Mapping[str, Any]) -> str:
    """A two-column key/value table; nested dicts become dotted keys so the whole config is on one screen."""
    items = list(_flatten(d))
    if not items:
        return '<p class="empty">(none recorded)</p>'
    body = "".join(f'<tr><th class="key">{escape(k)}</th><td class="val">{escape(format_cell(v, _kind_of(k)))}</td></tr>'
                   for k, v in items)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


# --- training runs -------------------------------------------------------------------------------

def is_accuracy_entry(v: Any) -> bool:
    return isinstance(v, dict) and _num_or_none(v.get("accuracy")) is not None


def running_total(row: Mapping[str, Any], key: str) -> Any:
    """A row's running total of ``key`` (``cum_*``, what the recipes' iteration logs add), else its own value."""
    return row.get(f"cum_{key}", row.get(key))


def training_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per iteration: held-out accuracies (CI bars), kept samples, cumulative train compute."""
    if not rows:
        return '<p class="empty">No iterations recorded yet.</p>'
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in (r.get("eval") or {}).items() if is_accuracy_entry(v) and k not in keys]
    present = {k for r in rows for k in r}
    has_step = "step" in present  # GRPO evaluates every --eval-every steps
    cumulative = {"tokens_sampled", "tokens_trained", "flops", "wall_s"}
    cols = [(k, h, kind) for k, h, kind in (("kept", "kept", "int"), ("tokens_sampled", "tokens sampled", "count"),
                                           ("tokens_trained", "tokens trained", "count"),
                                           ("flops", "train TFLOPs", "frac"), ("wall_s", "wall", "seconds"))
            if k in present or f"cum_{k}" in present]
    head = ("<th class=num>iteration</th>" + ("<th class=num>step</th>" if has_step else "")
            + "".join(f'<th class="num" colspan="2">{escape(k)} [95% CI]</th>' for k in keys)
            + "".join(f'<th class="num">{escape(h)}{" (cum.)" if k in cumulative else ""}</th>' for k, h, _ in cols))
    body = []
    for r in rows:
        ev = r.get("eval") or {}
        cells = [table_cell(r.get("iteration"))] + ([table_cell(r.get("step"), "int")] if has_step else [])
        cells += [accuracy_cell(ev[k]) if is_accuracy_entry(ev.get(k)) else '<td class="num">—</td><td></td>'
                  for k in keys]
        for k, _, kind in cols:
            v = running_total(r, k) if k in cumulative else r.get(k)
            if k == "flops" and _num_or_none(v) is not None:
                v = v / 1e12
            cells.append(table_cell(v, kind))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table class="results"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def accuracy_entries(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every ``{"accuracy": ..., "ci": ...}`` entry nested in ``d``, by dotted path (e.g. ``results.stream.eval.greedy``)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if is_accuracy_entry(v):
            out.append((key, v))
        elif isinstance(v, dict):
            out += accuracy_entries(v, key + ".")
    return out


_ENTRY_SHOWN = {"accuracy", "ci", "accuracy_ci", "n"}


def _without_accuracy_entries(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` less what :func:`accuracy_list` shows (an entry's other fields, e.g. ``fixed``, stay)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = {f: x for f, x in v.items() if f not in _ENTRY_SHOWN} if is_accuracy_entry(v) else v
            v = _without_accuracy_entries(v)
            if v:
                out[k] = v
        else:
            out[k] = v
    return out


def accuracy_list(entries: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    if not entries:
        return '<p class="empty">No held-out accuracy in summary.json.</p>'
    body = "".join(f'<tr><td class="txt strategy">{escape(name)}</td>{accuracy_cell(e)}{table_cell(e.get("n"), "int")}</tr>'
                   for name, e in entries)
    return ('<div class="table-wrap"><table class="results"><thead><tr><th>measured</th>'
            '<th class=num colspan="2">accuracy [95% CI]</th><th class=num>n</th></tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


#: Top-level keys of a training summary shown elsewhere on the page (or too long for a key/value table).
_TRAINING_SHOWN = {"recipe", "config", "iterations", "compute", "trl_log_history", "before", "after"}


def _training_sections(s: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(first section's HTML, its nav title, the compute totals) for a training summary."""
    rows = s.get("iterations")
    details = {k: v for k, v in s.items() if k not in _TRAINING_SHOWN and not isinstance(v, list)}
    if rows is not None:
        body = training_table(rows) + ('<p class="hint">Held-out accuracy after each iteration (iteration 0: the '
                                       'starting model); compute columns are running totals.</p>')
        last = rows[-1] if rows else {}
        compute = {k: running_total(last, k) for k in ("tokens_sampled", "tokens_trained", "flops", "wall_s")
                   if running_total(last, k) is not None}
        compute.update({k: s[k] for k in ("n_params", "device") if k in s})
        title = "Iterations"
        details = {k: v for k, v in details.items() if k not in compute}
    else:
        body = accuracy_list(accuracy_entries({k: v for k, v in s.items() if k not in ("config", "compute")}))
        compute = dict(s.get("compute") or {})
        title = "Results"
        details = _without_accuracy_entries(details)
    if details:
        body += f"<h3>Details</h3>{kv_table(details)}"
    return f'<section id="results"><h2>{title}</h2>{body}</section>', title, compute


# --- the page -----------------------------------------------------------------------------------

def _script_json(obj: Any) -> str:
    """JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` as ``\\u`` escapes, so ``</script>`` in data can't end it."""
    text = json.dumps(_clean(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(run: RunData, generated: str | None = None) -> str:
    """The full report page as a string (no I/O), from :func:`load_run`'s data."""
    s = run.summary
    generated = generated or _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    training = is_training_run(s)
    if training:
        cfg = run.config
        task = cfg.get("task") or s.get("task")
        start = cfg.get("init") or cfg.get("model") or s.get("model")
        title = f"{s['recipe']} — {task or '?'}"
        meta = [("recipe", s["recipe"]), ("task", task), ("from", start), ("seed", cfg.get("seed")),
                ("run date", run.date), ("run directory", str(run.run_dir))]
        first, first_title, compute = _training_sections(s)
    else:
        title = f"{s.get('task', '?')} — {s.get('model', '?')}"
        meta = [("task", s.get("task")), ("model", s.get("model")), ("seed", s.get("seed")),
                ("run date", run.date), ("run directory", str(run.run_dir))]
        first = (f'<section id="results"><h2>Results</h2>{results_table(s["results"])}'
                 '<p class="hint">Accuracy bars show the 95% confidence interval as a whisker.</p></section>')
        first_title, compute = "Results", s.get("compute") or {}
    meta_html = "".join(f'<div class="meta-item"><span class="meta-k">{escape(k)}</span>'
                        f'<span class="meta-v">{escape(format_cell(v))}</span></div>' for k, v in meta if v is not None)
    nav = [("results", first_title), ("plots", "Plots"), ("trees", "Search trees"), ("config", "Config"),
           ("compute", "Compute"), ("files", "Files")]
    extra = {} if training else s.get("extra") or {}
    if extra:
        nav.insert(1, ("extra", "Tables"))
    nav_html = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in nav)

    sections = [first]
    if extra:
        parts = []
        for name, rows in extra.items():
            body = generic_table(rows) if isinstance(rows, list) else kv_table(rows) if isinstance(rows, dict) \
                else f"<p>{escape(format_cell(rows))}</p>"
            parts.append(f"<h3>{escape(name)}</h3>{body}")
        sections.append(f'<section id="extra"><h2>Tables</h2>{"".join(parts)}</section>')
    if run.plots:
        figs = "".join(f'<figure><img alt="{escape(name)}" src="data:image/png;base64,'
                       f'{base64.b64encode(data).decode("ascii")}"><figcaption>{escape(name)}</figcaption></figure>'
                       for name, data in run.plots)
        sections.append(f'<section id="plots"><h2>Plots</h2><div class="plots">{figs}</div></section>')
    else:
        sections.append('<section id="plots"><h2>Plots</h2><p class="empty">No PNG plots in this run directory.'
                        '</p></section>')
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in run.trees.notes)
    sections.append(f"""<section id="trees"><h2>Search trees</h2>{notes}
<div id="tree-app"><p class="empty" id="tree-empty">No search trees in this run ({TREES_FILE} is absent or empty).</p>
<div id="tree-ui" hidden>
  <div class="tree-controls">
    <label class="ctl">Tree <select id="tree-select"></select></label>
    <input id="tree-filter" type="search" placeholder="Filter by problem or strategy" aria-label="filter trees">
    <span class="btns"><button type="button" id="expand-chosen">Expand chosen path</button>
    <button type="button" id="expand-all">Expand all</button>
    <button type="button" id="collapse-all">Collapse</button></span>
  </div>
  <div id="tree-meta" class="tree-meta"></div>
  <div class="legend"><span class="swatch chosen"></span>chosen path <span class="mark ok">✓</span>correct
    <span class="mark bad">✗</span>wrong <span class="tag term">terminal</span>final step</div>
  <ul id="tree-view" class="tree" role="tree"></ul>
</div></div></section>""")
    sections.append(f'<section id="config"><h2>Config</h2><p class="hint">from {escape(run.config_source)}</p>'
                    f'{kv_table(run.config)}</section>')
    sections.append(f'<section id="compute"><h2>Compute</h2>{kv_table(compute)}</section>')
    if training:
        rows = s.get("iterations")
        files = [(SUMMARY_FILE, f"{len(rows)} iteration rows" if rows is not None else f"{s['recipe']} summary")]
    else:
        files = [(SUMMARY_FILE, f"{len(s['results'])} result rows")]
    files += [(name, f"{n:,} rows (not embedded)") for name, n in run.row_counts.items()]
    if run.trees.total:
        files.append((TREES_FILE, f"{run.trees.total:,} trees ({len(run.trees.trees)} embedded)"))
    files += [(name, f"{len(data) / 1024:,.0f} KiB, embedded above") for name, data in run.plots]
    sections.append(f'<section id="files"><h2>Files</h2>{kv_table(dict(files))}</section>')

    data = {"summary": {k: v for k, v in s.items() if k != "config"}, "config": run.config}
    return fill_page(title=title, meta_html=meta_html, nav_html=nav_html, generated=generated, sections=sections,
                     run_json=data, trees=run.trees.trees, js=_JS)


def fill_page(*, title: str, meta_html: str, nav_html: str, generated: str, sections: Sequence[str],
              run_json: Any, trees: Sequence[Any] = (), js: str = "") -> str:
    """The page template with its parts filled in (``title`` and ``generated`` are escaped here)."""
    fills = {"TITLE": escape(title), "CSS": _CSS, "JS": js, "META": meta_html, "NAV": nav_html,
             "GENERATED": escape(generated), "SECTIONS": "\n".join(sections), "RUN_JSON": _script_json(run_json),
             "TREE_JSON": _script_json(list(trees))}
    # one pass, so a placeholder-looking string inside the data is never substituted itself
    return re.sub(r"%%([A-Z_]+)%%", lambda m: fills[m.group(1)], _TEMPLATE)


def write_page(path: Path, page: str) -> Path:
    """Write ``page`` to ``path`` atomically: a browser refreshing mid-write sees the old page or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def write_report(run_dir: str | Path, out: str | Path | None = None, max_trees: int = MAX_TREES) -> Path:
    """Render ``run_dir`` to ``out`` (default ``run_dir/report.html``); returns the path written."""
    run = load_run(run_dir, max_trees=max_trees)
    return write_page(Path(out) if out is not None else run.run_dir / REPORT_FILE, render_html(run))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%%TITLE%% · deliberate report</title>
<style>%%CSS%%</style></head>
<body>
<header class="top"><div class="wrap">
  <div class="brand">deliberate <span>run report</span></div>
  <h1>%%TITLE%%</h1>
  <div class="meta">%%META%%</div>
  <nav>%%NAV%%</nav>
</div></header>
<main class="wrap">
%%SECTIONS%%
</main>
<footer class="wrap">Generated by <code>deliberate report</code> on %%GENERATED%% · self-contained, no external resources.</footer>
<script type="application/json" id="run-data">%%RUN_JSON%%</script>
<script type="application/json" id="tree-data">%%TREE_JSON%%</script>
<script>%%JS%%</script>
</body></html>
"""

_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--muted:#667085;--line:#e4e7ec;--accent:#2f6fde;
--accent-soft:#e8f0fe;--ok:#16803c;--ok-soft:#e7f6ec;--bad:#c0362c;--bad-soft:#fdecea;--chosen:#f59e0b;
--chosen-soft:#fff7e6;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
.wrap{max-width:1180px;margin:0 auto;padding:0 24px}
header.top{background:#111827;color:#f9fafb;padding:22px 0 0;margin-bottom:24px}
.brand{font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:#9ca3af}
.brand span{color:#6b7280}
h1{margin:4px 0 12px;font-size:26px;font-weight:650;letter-spacing:-.01em}
.meta{display:flex;flex-wrap:wrap;gap:8px 28px;margin-bottom:14px}
.meta-item{display:flex;flex-direction:column}
.meta-k{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:#9ca3af}
.meta-v{font-family:var(--mono);font-size:13px;color:#e5e7eb;word-break:break-all}
nav{display:flex;gap:4px;border-top:1px solid #1f2937;padding:6px 0}
nav a{color:#d1d5db;text-decoration:none;padding:6px 10px;border-radius:6px;font-size:13px}
nav a:hover{background:#1f2937;color:#fff}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:0 0 20px;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
h2{margin:0 0 12px;font-size:17px;font-weight:650}
h3{margin:18px 0 8px;font-size:14px;color:var(--muted);font-weight:600}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600;
background:#fafbfc;vertical-align:bottom;line-height:1.3}
table.results th,table.results td{padding:6px 8px}
thead th.num{white-space:normal}
table.generic{width:auto;min-width:40%}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:hover{background:#f9fafb}
table.results tr.group td{border-top:2px solid #d0d5dd}
td.strategy{font-family:var(--mono);font-weight:600}
td.acc b{font-weight:650}
.ci-text{color:var(--muted);font-size:12px}
td.barcell{width:110px;vertical-align:middle}
.bar{position:relative;display:block;height:10px;background:#eef1f5;border-radius:5px;overflow:visible;min-width:96px}
.bar .fill{position:absolute;left:0;top:0;bottom:0;background:var(--accent);border-radius:5px;opacity:.8}
.bar .ci{position:absolute;top:4px;height:2px;background:#111827}
table.kv{width:auto;min-width:50%}
table.kv th.key{font-family:var(--mono);font-weight:500;color:var(--muted);white-space:nowrap;background:none;
text-transform:none;letter-spacing:0;font-size:12.5px}
table.kv td.val{font-family:var(--mono);font-size:12.5px;word-break:break-word}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:16px}
.plots figure.wide{grid-column:1/-1}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:10px;background:#fff}
figure img{width:100%;height:auto;display:block}
figcaption{font-family:var(--mono);font-size:12px;color:var(--muted);margin-top:6px;text-align:center}
.empty{color:var(--muted);font-style:italic}
.hint{color:var(--muted);font-size:12px;margin:8px 0 0}
.note{background:#fffbeb;border:1px solid #fde68a;color:#92400e;border-radius:6px;padding:6px 10px;font-size:13px}
footer{color:var(--muted);font-size:12px;padding:8px 24px 40px}
code{font-family:var(--mono)}
.tree-controls{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin-bottom:12px}
.ctl{font-weight:600;font-size:13px;display:flex;gap:8px;align-items:center}
select,input[type=search],button{font:inherit;font-size:13px;border:1px solid #d0d5dd;border-radius:6px;
padding:5px 9px;background:#fff;color:var(--ink)}
select{max-width:520px}
input[type=search]{width:240px}
button{cursor:pointer}
button:hover{background:#f2f4f7}
.btns{display:flex;gap:6px;margin-left:auto}
.tree-meta{display:grid;grid-template-columns:auto 1fr;gap:4px 14px;background:#fafbfc;border:1px solid var(--line);
border-radius:8px;padding:10px 14px;margin-bottom:10px;font-size:13px}
.tree-meta .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em;padding-top:1px}
.tree-meta .v{white-space:pre-wrap;word-break:break-word}
.legend{font-size:12px;color:var(--muted);margin:0 0 8px;display:flex;gap:6px;align-items:center;flex-wrap:wrap}
.swatch{display:inline-block;width:12px;height:12px;border-radius:3px;background:var(--chosen-soft);
border:2px solid var(--chosen);margin-left:4px}
ul.tree,ul.children{list-style:none;margin:0;padding:0}
ul.children{margin-left:13px;padding-left:14px;border-left:1px dashed #d0d5dd}
li.node{margin:3px 0}
.row{display:flex;gap:8px;align-items:flex-start;padding:5px 8px;border-radius:6px;border:1px solid transparent}
.row:hover{background:#f7f8fa}
li.node.chosen>.row{background:var(--chosen-soft);border-color:#fcd34d;box-shadow:inset 3px 0 0 var(--chosen)}
.toggle{width:22px;height:22px;padding:0;line-height:20px;text-align:center;flex:none;border-radius:5px;
font-size:11px;color:var(--muted)}
.toggle-spacer{width:22px;flex:none}
.step{flex:1;white-space:pre-wrap;word-break:break-word;font-family:var(--mono);font-size:12.5px;padding-top:2px}
li.node.root>.row .step{font-family:inherit;font-size:13.5px;font-weight:600}
.badges{display:flex;gap:4px;flex-wrap:wrap;justify-content:flex-end;flex:none;max-width:45%}
.tag{font-size:11px;border-radius:10px;padding:1px 8px;background:#f2f4f7;color:#475467;white-space:nowrap;
font-variant-numeric:tabular-nums}
.tag.term{background:var(--accent-soft);color:#1d4ed8}
.tag.kids{background:none;color:var(--muted)}
.mark{font-weight:700;font-size:12px;border-radius:10px;padding:0 7px}
.mark.ok{color:var(--ok);background:var(--ok-soft)}
.mark.bad{color:var(--bad);background:var(--bad-soft)}
@media (max-width:700px){.plots{grid-template-columns:1fr}.badges{max-width:none}.row{flex-wrap:wrap}}
"""

_JS = r"""
(function () {
  "use strict";
  var trees = JSON.parse(document.getElementById("tree-data").textContent);
  if (!trees.length) return;
  document.getElementById("tree-empty").hidden = true;
  document.getElementById("tree-ui").hidden = false;
  var select = document.getElementById("tree-select");
  var filter = document.getElementById("tree-filter");
  var view = document.getElementById("tree-view");
  var metaBox = document.getElementById("tree-meta");
  var current = null;  // {tree, kids: id -> [node], byId}

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);  // never innerHTML: data is untrusted
    return e;
  }
  function num(v) {
    if (v === null || v === undefined) return null;
    return Number.isInteger(v) ? String(v) : Number(v).toFixed(3);
  }
  function label(t, i) {
    var parts = [t.problem_id, t.strategy + (t.n !== null ? " n=" + t.n : "")];
    if (t.seed !== null) parts.push("seed " + t.seed);
    parts.push(t.n_nodes + " nodes");
    var mark = t.outcome === true ? "  ✓" : t.outcome === false ? "  ✗" : "";
    return (i + 1) + ". " + parts.join(" · ") + mark;
  }
  function fillSelect() {
    var q = filter.value.trim().toLowerCase();
    var keep = select.value;
    select.textContent = "";
    trees.forEach(function (t, i) {
      if (q && (t.problem_id + " " + t.strategy + " " + t.question).toLowerCase().indexOf(q) < 0) return;
      var o = el("option", null, label(t, i));
      o.value = String(i);
      select.appendChild(o);
    });
    if (select.querySelector('option[value="' + keep + '"]')) select.value = keep;
    if (select.value !== "" && (!current || String(current.index) !== select.value)) show(Number(select.value));
  }
  function metaRow(k, v, cls) {
    metaBox.appendChild(el("div", "k", k));
    var d = el("div", "v" + (cls ? " " + cls : ""));
    if (v instanceof Node) d.appendChild(v); else d.textContent = v;
    metaBox.appendChild(d);
  }
  function outcomeNode(o) {
    if (o === true) return el("span", "mark ok", "✓ correct");
    if (o === false) return el("span", "mark bad", "✗ wrong");
    return el("span", null, "no verdict recorded");
  }
  function renderNode(node, depth) {
    var kids = current.kids[node.id] || [];
    var li = el("li", "node" + (node.chosen ? " chosen" : "") + (depth === 0 ? " root" : "") +
      (node.terminal ? " terminal" : ""));
    li.setAttribute("role", "treeitem");
    li.dataset.nodeId = String(node.id);
    li.dataset.depth = String(depth);
    var row = el("div", "row");
    if (kids.length) {
      var btn = el("button", "toggle", "▶");
      btn.type = "button";
      btn.title = "show / hide the " + kids.length + " child step" + (kids.length > 1 ? "s" : "");
      btn.setAttribute("aria-expanded", "false");
      btn.addEventListener("click", function () { setOpen(li, li.getAttribute("aria-expanded") !== "true"); });
      row.appendChild(btn);
    } else {
      row.appendChild(el("span", "toggle-spacer"));
    }
    var text = node.text || (depth === 0 ? current.tree.question : "");
    row.appendChild(el("div", "step", text || "(empty)"));
    var badges = el("div", "badges");
    if (node.chosen) badges.appendChild(el("span", "tag", "chosen"));
    if (num(node.score) !== null) badges.appendChild(el("span", "tag", "score " + num(node.score)));
    if (num(node.visits) !== null) badges.appendChild(el("span", "tag", "visits " + num(node.visits)));
    if (num(node.value) !== null) badges.appendChild(el("span", "tag", "value " + num(node.value)));
    if (node.terminal) badges.appendChild(el("span", "tag term", "terminal"));
    if (node.correct === true) badges.appendChild(el("span", "mark ok", "✓"));
    if (node.correct === false) badges.appendChild(el("span", "mark bad", "✗"));
    if (kids.length) badges.appendChild(el("span", "tag kids", kids.length + (kids.length > 1 ? " children" : " child")));
    row.appendChild(badges);
    li.appendChild(row);
    li.setAttribute("aria-expanded", "false");
    return li;
  }
  // Children are built on first expand, so a 5000-node MCTS tree costs nothing until it is opened.
  function setOpen(li, open) {
    var ul = li.querySelector(":scope > ul.children");
    var id = Number(li.dataset.nodeId);
    var kids = current.kids[id] || [];
    if (!kids.length) return;
    if (!ul && open) {
      ul = el("ul", "children");
      ul.setAttribute("role", "group");
      var d = Number(li.dataset.depth) + 1;
      kids.forEach(function (k) { ul.appendChild(renderNode(k, d)); });
      li.appendChild(ul);
    }
    if (ul) ul.hidden = !open;
    li.setAttribute("aria-expanded", open ? "true" : "false");
    var btn = li.querySelector(":scope > .row > .toggle");
    if (btn) { btn.textContent = open ? "▼" : "▶"; btn.setAttribute("aria-expanded", open ? "true" : "false"); }
  }
  function walk(li, fn) {
    fn(li);
    var ul = li.querySelector(":scope > ul.children");
    if (ul) Array.prototype.forEach.call(ul.children, function (c) { walk(c, fn); });
  }
  function show(i) {
    var t = trees[i];
    var byId = {}, kids = {};
    t.nodes.forEach(function (n) { byId[n.id] = n; });
    t.nodes.forEach(function (n) {
      if (n.parent !== null && byId[n.parent]) (kids[n.parent] = kids[n.parent] || []).push(n);
    });
    current = {index: i, tree: t, byId: byId, kids: kids};
    metaBox.textContent = "";
    metaRow("problem", t.problem_id);
    metaRow("question", t.question || "—");
    metaRow("gold", t.gold || "—");
    metaRow("search", t.strategy + (t.n !== null ? ", n = " + t.n : "") + (t.seed !== null ? ", seed " + t.seed : "") +
      " · " + t.n_nodes + " nodes" + (t.n_nodes > t.nodes.length ? " (" + t.nodes.length + " shown)" : ""));
    metaRow("outcome", outcomeNode(t.outcome));
    view.textContent = "";
    t.nodes.forEach(function (n) {
      if (n.parent === null) {
        var li = renderNode(n, 0);
        view.appendChild(li);
        setOpen(li, true);  // the root is open: depth-1 steps visible, everything deeper collapsed
      }
    });
  }
  select.addEventListener("change", function () { show(Number(select.value)); });
  filter.addEventListener("input", fillSelect);
  document.getElementById("expand-all").addEventListener("click", function () {
    Array.prototype.forEach.call(view.children, function (r) { walk(r, function (li) { setOpen(li, true); }); });
  });
  document.getElementById("collapse-all").addEventListener("click", function () {
    Array.prototype.forEach.call(view.children, function (r) {
      walk(r, function (li) { setOpen(li, li === r); });
    });
  });
  document.getElementById("expand-chosen").addEventListener("click", function () {
    Array.prototype.forEach.call(view.children, function (r) {
      walk(r, function (li) {
        if (current.byId[Number(li.dataset.nodeId)].chosen) setOpen(li, true);
      });
    });
  });
  fillSelect();
})();
"""


# --- CLI ----------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    """Flags of ``deliberate report``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="+",
                        help="an eval, sweep or training run directory (holds summary.json); several: one page "
                             "comparing them (training runs: accuracy vs train compute; eval/sweep runs: accuracy "
                             "vs samples)")
    parser.add_argument("--out", default=None, help=f"output HTML file (default: RUN_DIR/{REPORT_FILE}; for several "
                                                    f"runs ./compare.html)")
    parser.add_argument("--max-trees", type=int, default=MAX_TREES,
                        help="search trees from trees.jsonl to embed (default: %(default)s)")


def main(args) -> int:
    """Run ``deliberate report`` from parsed :func:`add_arguments` flags; print where the page went."""
    if args.max_trees < 0:
        raise DeliberateError(f"--max-trees must be >= 0 (got {args.max_trees})")
    if len(args.run_dir) > 1:
        from deliberate.eval.compare import write_comparison

        path = write_comparison(args.run_dir, args.out)
    else:
        path = write_report(args.run_dir[0], args.out, max_trees=args.max_trees)
    print(f"wrote {path}")
    return 0
