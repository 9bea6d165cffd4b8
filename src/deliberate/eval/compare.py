"""``deliberate report RUN_DIR RUN_DIR ...``: several runs on one self-contained page.

Two kinds of comparison, by what the directories hold:

- **training runs** (recipes with iterations: ``rest-em``, ``grpo``, ``star``, ``mcts-ei``, the ``-hf``
  recipes): each held-out metric the runs share (greedy, maj@n, pass@n ...) against cumulative train
  TFLOPs, one line per run with its 95% CI, and a table of where each run started and ended;
- **eval / sweep runs**: accuracy against samples per problem and against generated tokens per problem
  (the compute-matched view), one line per (run, strategy), and the rows of every run in one table.

    deliberate report runs/si/rest-em-m0 runs/si/grpo-mb-s0 --out rest-em-vs-grpo.html
    deliberate report runs/sweep-oracle runs/sweep-prm --out verifiers.html

The page uses the single-run report's layout and is as self-contained (plots embedded as PNG).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.eval.page import accuracy_cell, escape, fill_page, format_cell, kv_table, table_cell, write_page
from deliberate.eval.run_dir import RunData, is_accuracy_entry, load_run, number_or_none, running_total
from deliberate.types import ResultRow

COMPARE_FILE = "compare.html"
MAX_METRIC_PANELS = 3  # greedy, one maj@n, one pass@n: more panels stop being readable side by side


def labels_for(dirs: Sequence[Path]) -> list[str]:
    """Short distinct names for the runs: their directory names, or as much of the path as tells them apart."""
    paths = [Path(d).resolve() for d in dirs]
    if len(set(paths)) < len(paths):
        raise DeliberateError("the same run directory is given twice")
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _kind(run: RunData) -> str:
    if run.training is None:
        return "eval"
    if run.training.get("iterations") is None:
        raise DeliberateError(f"{run.run_dir}: a {run.training['recipe']} run has no iterations to compare; "
                              f"`deliberate report {run.run_dir}` shows it alone")
    return "training"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figure(panels: int, width: float = 5.2):
    # lazy: matplotlib, as in eval/plots.py: every CLI command imports this module to build its parser
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * panels, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def shared_metrics(rows_by_run: Sequence[Sequence[Mapping[str, Any]]]) -> list[str]:
    """Held-out metrics every run evaluated at every iteration it has, greedy first, then maj@ and pass@."""
    common: set[str] | None = None
    for rows in rows_by_run:
        for r in rows:
            keys = {k for k, v in (r.get("eval") or {}).items() if is_accuracy_entry(v)}
            common = keys if common is None else common & keys
    common = common or set()

    def order(k: str) -> tuple[int, str]:
        return (0 if k == "greedy" else 1 if k.startswith("maj@") else 2 if k.startswith("pass@") else 3, k)

    return sorted(common, key=order)


def training_plot(labels: Sequence[str], rows_by_run: Sequence[Sequence[Mapping[str, Any]]],
                  metrics: Sequence[str]) -> bytes:
    """PNG: one panel per metric, held-out accuracy (95% CI bars) against cumulative train TFLOPs."""
    fig, axes = _figure(len(metrics))
    for ax, key in zip(axes, metrics):
        for label, rows in zip(labels, rows_by_run):
            pts = [(running_total(r, "flops") or 0.0, r["eval"][key]) for r in rows]
            ys = [e["accuracy"] for _, e in pts]
            cis = [e.get("ci") for _, e in pts]
            err = None
            if all(isinstance(c, (list, tuple)) and len(c) == 2 for c in cis):
                err = [[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]]
            ax.errorbar([x / 1e12 for x, _ in pts], ys, yerr=err, marker="o", markersize=4, capsize=2, label=label)
        ax.set_title(f"held-out {key}")
        ax.set_xlabel("cumulative train TFLOPs (6ND train + 2ND sample)")
        ax.set_ylabel("accuracy")
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    fig.tight_layout()
    return _png(fig)


def training_summary_table(labels: Sequence[str], runs: Sequence[RunData], metrics: Sequence[str]) -> str:
    """One row per run: recipe, start, iterations, each metric at the start and at the end (change in points)."""
    head = ("<th>run</th><th>recipe</th><th>from</th><th class=num>iterations</th>"
            + "".join(f'<th class="num">{escape(k)} at start</th><th class="num" colspan="2">{escape(k)} at end '
                      f'[95% CI]</th><th class="num">change</th>' for k in metrics)
            + '<th class="num">train TFLOPs</th><th class="num">wall</th>')
    body = []
    for label, run in zip(labels, runs):
        rows = run.training["iterations"]
        first, last = (rows[0], rows[-1]) if rows else ({}, {})
        cfg = run.config
        cells = [f'<td class="txt strategy">{escape(label)}</td>', table_cell(run.training["recipe"]),
                 table_cell(cfg.get("init") or cfg.get("model") or run.training.get("model")),
                 table_cell(last.get("iteration") if last.get("step") is None
                     else f"{last.get('iteration')} (step {last['step']})")]
        for k in metrics:
            a = (first.get("eval") or {}).get(k)
            b = (last.get("eval") or {}).get(k)
            cells.append(table_cell(a["accuracy"] if a else None, "frac"))
            cells.append(accuracy_cell(b) if b else '<td class="num">—</td><td></td>')
            change = f"{100 * (b['accuracy'] - a['accuracy']):+.1f}" if a and b else None
            cells.append(f'<td class="num">{escape(format_cell(change))}</td>')
        flops = running_total(last, "flops")
        cells.append(table_cell(flops / 1e12 if flops is not None else None, "frac"))
        cells.append(table_cell(running_total(last, "wall_s"), "seconds"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table class="results"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>'
            '<p class="hint">change: end minus start, in accuracy points. Start = iteration 0 (the model the run '
            'started from).</p>')


def _tokens_per_problem(row: ResultRow) -> float | None:
    """Generated tokens per problem of a result row (rows carry the total over their ``n_problems``)."""
    tokens, problems = row.generated_tokens, row.n_problems
    if tokens is not None and problems is not None and problems > 0 and tokens > 0:
        return tokens / problems
    return None


def eval_plot(labels: Sequence[str], runs: Sequence[RunData]) -> bytes:
    """PNG, two panels: accuracy against samples per problem (log2 axis) and against generated tokens per
    problem (log axis: the compute-matched view), one line (+ CI band) per (run, strategy)."""
    fig, (by_n, by_tokens) = _figure(2, width=6.0)
    colors: dict[str, str] = {}  # one colour per strategy, one line style and marker per run
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]
    for j, (label, run) in enumerate(zip(labels, runs)):
        by_strategy: dict[str, list[ResultRow]] = {}
        for r in run.summary.results:
            if number_or_none(r.accuracy) is not None:
                by_strategy.setdefault(r.strategy, []).append(r)
        for strategy, rows in by_strategy.items():
            rows = sorted(rows, key=lambda r: r.n)
            color = colors.setdefault(strategy, f"C{len(colors) % 10}")
            style, marker = styles[j % len(styles)]
            line = {"linestyle": style, "marker": marker, "markersize": 4, "color": color}
            by_n.plot([r.n for r in rows], [r.accuracy for r in rows], label=f"{label}: {strategy}", **line)
            if len(rows) > 1:
                by_n.fill_between([r.n for r in rows], [r.ci[0] for r in rows], [r.ci[1] for r in rows], color=color,
                                  alpha=0.07)
            pts = sorted((t, r.accuracy) for r in rows if (t := _tokens_per_problem(r)) is not None)
            if pts:
                by_tokens.plot([t for t, _ in pts], [a for _, a in pts], **line)
    by_n.set_xscale("log", base=2)
    by_n.set_xlabel("samples per problem (n)")
    by_tokens.set_xscale("log")
    by_tokens.set_xlabel("generated tokens per problem")
    for ax in (by_n, by_tokens):
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    by_tokens.legend(*by_n.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.01, 0.5),
                     fontsize="x-small")
    fig.tight_layout()
    return _png(fig)


def eval_rows_table(labels: Sequence[str], runs: Sequence[RunData]) -> str:
    head = ("<th>run</th><th>strategy</th><th class=num>n</th><th class=num colspan=2>accuracy [95% CI]</th>"
            "<th class=num>pass@n</th><th class=num>gen. tokens</th>")
    body = []
    for label, run in zip(labels, runs):
        for i, r in enumerate(run.summary.results):
            cells = [f'<td class="txt strategy">{escape(label)}</td>', table_cell(r.strategy), table_cell(r.n),
                     accuracy_cell(r.to_dict()), table_cell(r.pass_at_n, "frac"),
                     table_cell(r.generated_tokens, "count")]
            body.append(f'<tr{" class=group" if i == 0 and body else ""}>' + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table class="results"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def render_comparison(run_dirs: Sequence[str | Path], generated: str | None = None) -> str:
    """The comparison page as a string, from two or more run directories of one kind."""
    if len(run_dirs) < 2:
        raise DeliberateError("a comparison needs at least two run directories")
    runs = [load_run(d, max_trees=0) for d in run_dirs]
    kinds = {_kind(r) for r in runs}
    if len(kinds) > 1:
        raise DeliberateError("cannot compare training runs with eval/sweep runs on one page; "
                              "give directories of one kind")
    kind = kinds.pop()
    labels = labels_for([r.run_dir for r in runs])
    generated = generated or dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    if kind == "training":
        rows_by_run = [r.training["iterations"] for r in runs]
        metrics = shared_metrics(rows_by_run)
        if not metrics:
            raise DeliberateError("the runs share no held-out metric (e.g. greedy) to compare")
        panels = [m for m in metrics if m == "greedy"][:1]
        panels += [m for m in metrics if m.startswith("maj@")][:1] + [m for m in metrics if m.startswith("pass@")][:1]
        panels = panels or metrics[:MAX_METRIC_PANELS]
        png = training_plot(labels, rows_by_run, panels)
        table = training_summary_table(labels, runs, metrics)
        title = f"{len(runs)} training runs: {', '.join(sorted({r.training['recipe'] for r in runs}))}"
        caption = "held-out accuracy against cumulative train compute"
    else:
        png = eval_plot(labels, runs)
        table = eval_rows_table(labels, runs)
        tasks = sorted({r.summary.task for r in runs})
        title = f"{len(runs)} runs on {', '.join(tasks)}"
        caption = "accuracy against samples per problem and against generated tokens per problem"
    img = base64.b64encode(png).decode("ascii")
    sections = [
        f'<section id="results"><h2>Side by side</h2>{table}</section>',
        (f'<section id="plots"><h2>Plots</h2><div class="plots"><figure class="wide"><img alt="comparison" '
         f'src="data:image/png;base64,{img}"><figcaption>{escape(caption)}</figcaption></figure></div></section>'),
        '<section id="config"><h2>Config</h2>' + "".join(
            f"<h3>{escape(label)}</h3><p class=\"hint\">{escape(str(run.run_dir))}</p>{kv_table(run.config)}"
            for label, run in zip(labels, runs)) + "</section>",
    ]
    meta = "".join(f'<div class="meta-item"><span class="meta-k">{escape(label)}</span>'
                   f'<span class="meta-v">{escape(run.date)}</span></div>' for label, run in zip(labels, runs))
    nav = '<a href="#results">Side by side</a><a href="#plots">Plots</a><a href="#config">Config</a>'
    return fill_page(title=title, meta_html=meta, nav_html=nav, generated=generated, sections=sections,
                     run_json={"runs": [{"label": label, "dir": str(run.run_dir)} for label, run in zip(labels, runs)]})


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Render the comparison of ``run_dirs`` to ``out`` (default ``./compare.html``); returns the path written."""
    return write_page(Path(out) if out is not None else Path(COMPARE_FILE), render_comparison(run_dirs))


__all__ = ["COMPARE_FILE", "labels_for", "render_comparison", "shared_metrics", "write_comparison"]
