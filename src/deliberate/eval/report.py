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
whole into the page: at most ``--max-trees`` trees and the node, text and size caps of
:mod:`deliberate.eval.run_dir`, each cut announced in the page.

A training run (``deliberate train rest-em|grpo|star|vstar|self-correct|sos|mcts-ei|...``: a summary
with a ``recipe``) gets the same page with its own first section: one row per iteration (held-out
accuracies with CIs, samples kept, cumulative tokens sampled / trained, train FLOPs and wall time)
for the iterative recipes, or every held-out accuracy the summary holds (``sos``' two conditions,
``self-correct``'s revise vs resample, ...) for the others; the recipe's ``curve.png`` is embedded.

    deliberate report runs/rest-em                     # writes runs/rest-em/report.html

Reading the run directory lives in :mod:`deliberate.eval.run_dir`, the HTML building blocks and the
page template in :mod:`deliberate.eval.page` (its CSS and JS are files in ``templates/``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deliberate.eval.page import (
    accuracy_cell,
    escape,
    fill,
    fill_page,
    format_cell,
    json_safe,
    kv_table,
    table_cell,
    template,
    write_page,
)
from deliberate.eval.run_dir import (
    MAX_TREES,
    REPORT_FILE,
    SUMMARY_FILE,
    TREES_FILE,
    RunData,
    is_accuracy_entry,
    load_run,
    number_or_none,
    running_total,
)
from deliberate.types import ResultRow

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


# --- tables -------------------------------------------------------------------------------------

def results_table(results: Sequence[ResultRow]) -> str:
    """The main table: strategy, n, accuracy with CI, then whichever optional columns any row has."""
    rows = [r.to_dict() for r in results]  # the columns are the keys the rows carry, as written
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
        return f"<pre>{escape(json.dumps(json_safe(list(rows)), indent=2, ensure_ascii=False))}</pre>"
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    numeric = {k for k in keys if all(r.get(k) is None or (isinstance(r.get(k), (int, float))
                                                           and not isinstance(r.get(k), bool)) for r in rows)}
    head = "".join(f'<th{" class=num" if k in numeric else ""}>{escape(k)}</th>' for k in keys)
    body = "".join("<tr>" + "".join(table_cell(r.get(k)) for k in keys) + "</tr>" for r in rows)
    return f'<div class="table-wrap"><table class="generic"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# --- training runs -------------------------------------------------------------------------------

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
            if k == "flops" and number_or_none(v) is not None:
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

def render_html(run: RunData, generated: str | None = None) -> str:
    """The full report page as a string (no I/O), from :func:`load_run`'s data."""
    generated = generated or dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    t, s = run.training, run.summary
    if t is not None:
        cfg = run.config
        task = cfg.get("task") or t.get("task")
        start = cfg.get("init") or cfg.get("model") or t.get("model")
        title = f"{t['recipe']} — {task or '?'}"
        meta = [("recipe", t["recipe"]), ("task", task), ("from", start), ("seed", cfg.get("seed")),
                ("run date", run.date), ("run directory", str(run.run_dir))]
        first, first_title, compute = _training_sections(t)
        extra: Mapping[str, Any] = {}
        rows = t.get("iterations")
        files = [(SUMMARY_FILE, f"{len(rows)} iteration rows" if rows is not None else f"{t['recipe']} summary")]
        data = {"summary": {k: v for k, v in t.items() if k != "config"}, "config": run.config}
    else:
        title = f"{s.task} — {s.model}"
        meta = [("task", s.task), ("model", s.model), ("seed", list(s.seed) if isinstance(s.seed, tuple) else s.seed),
                ("run date", run.date), ("run directory", str(run.run_dir))]
        first = (f'<section id="results"><h2>Results</h2>{results_table(s.results)}'
                 '<p class="hint">Accuracy bars show the 95% confidence interval as a whisker.</p></section>')
        first_title, compute, extra = "Results", s.compute or {}, s.extra or {}
        files = [(SUMMARY_FILE, f"{len(s.results)} result rows")]
        data = {"summary": {k: v for k, v in s.to_dict().items() if k != "config"}, "config": run.config}
    meta_html = "".join(f'<div class="meta-item"><span class="meta-k">{escape(k)}</span>'
                        f'<span class="meta-v">{escape(format_cell(v))}</span></div>' for k, v in meta if v is not None)
    nav = [("results", first_title), ("plots", "Plots"), ("trees", "Search trees"), ("config", "Config"),
           ("compute", "Compute"), ("files", "Files")]
    if extra:
        nav.insert(1, ("extra", "Tables"))
    nav_html = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in nav)

    sections = [first]
    if extra:
        parts = []
        for name, table in extra.items():
            body = generic_table(table) if isinstance(table, list) else kv_table(table) if isinstance(table, dict) \
                else f"<p>{escape(format_cell(table))}</p>"
            parts.append(f"<h3>{escape(name)}</h3>{body}")
        sections.append(f'<section id="extra"><h2>Tables</h2>{"".join(parts)}</section>')
    if run.plots:
        figs = "".join(f'<figure><img alt="{escape(name)}" src="data:image/png;base64,'
                       f'{base64.b64encode(png).decode("ascii")}"><figcaption>{escape(name)}</figcaption></figure>'
                       for name, png in run.plots)
        sections.append(f'<section id="plots"><h2>Plots</h2><div class="plots">{figs}</div></section>')
    else:
        sections.append('<section id="plots"><h2>Plots</h2><p class="empty">No PNG plots in this run directory.'
                        '</p></section>')
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in run.trees.notes)
    sections.append(fill(template("trees.html"), {"NOTES": notes, "TREES_FILE": TREES_FILE}))
    sections.append(f'<section id="config"><h2>Config</h2><p class="hint">from {escape(run.config_source)}</p>'
                    f'{kv_table(run.config)}</section>')
    sections.append(f'<section id="compute"><h2>Compute</h2>{kv_table(compute)}</section>')
    files += [(name, f"{n:,} rows (not embedded)") for name, n in run.row_counts.items()]
    if run.trees.total:
        files.append((TREES_FILE, f"{run.trees.total:,} trees ({len(run.trees.trees)} embedded)"))
    files += [(name, f"{len(png) / 1024:,.0f} KiB, embedded above") for name, png in run.plots]
    sections.append(f'<section id="files"><h2>Files</h2>{kv_table(dict(files))}</section>')
    return fill_page(title=title, meta_html=meta_html, nav_html=nav_html, generated=generated, sections=sections,
                     run_json=data, trees=run.trees.trees, js=template("trees.js"))


def write_report(run_dir: str | Path, out: str | Path | None = None, max_trees: int = MAX_TREES) -> Path:
    """Render ``run_dir`` to ``out`` (default ``run_dir/report.html``); returns the path written."""
    run = load_run(run_dir, max_trees=max_trees)
    return write_page(Path(out) if out is not None else run.run_dir / REPORT_FILE, render_html(run))
