"""Inference-scaling plots from an eval/sweep summary: accuracy vs samples and vs generated tokens.

Every strategy with an ``@`` in its name (pass@k, maj@k, and later weighted@k, bon@k ...) is a line
with its 95% CI band; greedy is a horizontal reference line (vs n) or a single point (vs tokens).
Uses matplotlib's object API on the Agg canvas, so it never opens a window or touches pyplot state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _lines(summary: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    lines: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in summary["results"]:
        if "@" in r["strategy"]:
            lines[r["strategy"]].append(r)
    return {s: sorted(rs, key=lambda r: r["n"]) for s, rs in lines.items()}


def _label(strategy: str) -> str:
    # "@N" marks a line; a named method ("PRM best-of-N@N", the quickstart's) reads better without it
    if " " in strategy and strategy.endswith("@N"):
        return strategy[:-2]
    return strategy.replace("@k", "@n")


def _greedy(summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((r for r in summary["results"] if r["strategy"] == "greedy"), None)


def _figure():
    # lazy: matplotlib; evaluate and sweep import this module, and every CLI command imports those to build its parser
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig, ax, summary: Mapping[str, Any], xlabel: str, path: str | Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{summary.get('task')} — {summary.get('model')}")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def plot_accuracy_vs_n(summary: Mapping[str, Any], path: str | Path) -> None:
    """PNG of accuracy vs samples per problem (log2 x axis), one line + CI band per @k strategy."""
    fig, ax = _figure()
    for strategy, rows in _lines(summary).items():
        xs = [r["n"] for r in rows]
        (line,) = ax.plot(xs, [r["accuracy"] for r in rows], marker="o", label=_label(strategy))
        ax.fill_between(xs, [r["ci"][0] for r in rows], [r["ci"][1] for r in rows], color=line.get_color(), alpha=0.1)
    g = _greedy(summary)
    if g is not None:
        ax.axhline(g["accuracy"], color="k", linestyle="--", linewidth=1, label="greedy")
        ax.axhspan(g["ci"][0], g["ci"][1], color="k", alpha=0.06)
    ax.set_xscale("log", base=2)
    ks = sorted({r["n"] for rs in _lines(summary).values() for r in rs})
    if ks:
        ax.set_xticks(ks, [str(k) for k in ks])
    _finish(fig, ax, summary, "samples per problem (n)", path)


def plot_accuracy_vs_tokens(summary: Mapping[str, Any], path: str | Path) -> None:
    """PNG of accuracy vs generated tokens (log x axis), one line + CI band per @k strategy."""
    fig, ax = _figure()
    for strategy, rows in _lines(summary).items():
        xs = [max(r["generated_tokens"], 1e-9) for r in rows]
        (line,) = ax.plot(xs, [r["accuracy"] for r in rows], marker="o", label=_label(strategy))
        ax.fill_between(xs, [r["ci"][0] for r in rows], [r["ci"][1] for r in rows], color=line.get_color(), alpha=0.1)
    g = _greedy(summary)
    if g is not None:
        lo, hi = g["ci"]
        ax.errorbar([max(g["generated_tokens"], 1e-9)], [g["accuracy"]],
                    yerr=[[g["accuracy"] - lo], [hi - g["accuracy"]]], fmt="s", color="k", label="greedy")
    ax.set_xscale("log")
    _finish(fig, ax, summary, "generated tokens (all problems)", path)


def plot_sweep(summary: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """The sweep's figures: ``accuracy.png`` (vs N and vs generated tokens per problem, every strategy,
    95% CI bands), ``token_buckets.png`` and ``taste.png`` when the summary has those curves."""
    # lazy: matplotlib, for the reason given in _figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    P = max(1, int(summary.get("n_problems") or 1))
    by: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in summary["results"]:
        by[r["strategy"]].append(r)
    written = []
    fig = Figure(figsize=(11, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax_n, ax_t = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for strategy, rows in by.items():
        rows = sorted(rows, key=lambda r: r["n"])
        style = dict(linestyle="--", color="k") if strategy == "pass@n" else {}
        xs = [r["n"] for r in rows]
        ys = [r["accuracy"] for r in rows]
        (line,) = ax_n.plot(xs, ys, marker="o", label=strategy, **style)
        ax_n.fill_between(xs, [r["ci"][0] for r in rows], [r["ci"][1] for r in rows], color=line.get_color(), alpha=0.15)
        if all("generated_tokens" in r for r in rows):
            xt = [max(r["generated_tokens"] / P, 1e-9) for r in rows]
            ax_t.plot(xt, ys, marker="o", label=strategy, color=line.get_color(), linestyle=line.get_linestyle())
            ax_t.fill_between(xt, [r["ci"][0] for r in rows], [r["ci"][1] for r in rows], color=line.get_color(),
                              alpha=0.15)
    ns = sorted({r["n"] for r in summary["results"]})
    ax_n.set_xscale("log", base=2)
    if ns:
        ax_n.set_xticks(ns, [str(k) for k in ns])
    ax_t.set_xscale("log")
    for ax, xl in ((ax_n, "budget N"), (ax_t, "generated tokens per problem")):
        ax.set_xlabel(xl)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    ax_n.legend(loc="best", fontsize="small")
    fig.suptitle(f"{summary.get('task')} — {summary.get('model')}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", format="png")
    written.append(out_dir / "accuracy.png")

    extra = summary.get("extra") or {}
    buckets = extra.get("token_buckets") or []
    if buckets:
        fig, ax = _figure()
        ax.plot([b["mean_tokens"] for b in buckets], [b["accuracy"] for b in buckets], marker="o")
        for b in buckets:
            ax.annotate(str(b["samples"]), (b["mean_tokens"], b["accuracy"]), fontsize="x-small",
                        textcoords="offset points", xytext=(0, 6), ha="center")
        ax.set_xlabel("tokens used by the completion (bucket mean; labels = samples)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_title("plain sampling, bucketed by length")
        fig.tight_layout()
        fig.savefig(out_dir / "token_buckets.png", format="png")
        written.append(out_dir / "token_buckets.png")
    taste = extra.get("taste") or []
    if taste:
        fig, ax = _figure()
        groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for t in taste:
            groups[str(t["sigma"])].append(t)
        for sigma, rows in groups.items():
            rows = sorted(rows, key=lambda r: r["n"])
            label = "pass@N (ceiling)" if sigma == "pass@n" else f"best-of-N, noise σ={sigma}"
            style = dict(linestyle="--", color="k") if sigma == "pass@n" else {}
            ax.plot([r["n"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=label, **style)
        ax.set_xscale("log", base=2)
        tn = sorted({t["n"] for t in taste})
        ax.set_xticks(tn, [str(k) for k in tn])
        ax.set_xlabel("N")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        ax.set_title("verifier taste: selection vs verifier noise")
        fig.tight_layout()
        fig.savefig(out_dir / "taste.png", format="png")
        written.append(out_dir / "taste.png")
    return written
