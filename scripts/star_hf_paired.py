"""Paired held-out difference between two ``star-hf`` runs (e.g. with and without rationalization),
per iteration and per ``eval_by`` group, over the same greedy-answered test problems:

    python scripts/star_hf_paired.py runs/star-hf/rat-s0 runs/star-hf/norat-s0 [more A B pairs ...] [--plot curve.png]

``--plot``: A's and B's accuracy per iteration and group (all pairs' problems pooled), solid / dashed,
iterations each side ran (B may run longer than A). Reads each iteration's ``itNNN/eval.jsonl``; prints A - B
accuracy in points with a 95% CI. Several pairs (e.g. training seeds) are pooled with the two-stage cluster
bootstrap (``eval.metrics.pooled_pipelines_ci``): pairs are resampled, then problems, one problem draw shared
by every pair because all seeds answer the same test problems (counting each (pair, problem) as independent
made earlier intervals too narrow).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from deliberate.eval.metrics import pooled_pipelines_ci
from deliberate.tasks import get_task


def answers(run: Path, it: int) -> dict[str, bool]:
    f = run / f"it{it:03d}" / "eval.jsonl"
    if not f.exists():
        return {}
    return {r["problem_id"]: bool(r["samples"][0]["correct"]) for r in map(json.loads, f.read_text().splitlines())}


def plot(pairs, test, key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for side, style in ((0, "-"), (1, "--")):
        curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for pair in pairs:
            for it in range(100):
                xs = answers(pair[side], it)
                if not xs:
                    break
                for k, v in xs.items():
                    curves[str(test[k].metadata.get(key, ""))][it].append(float(v))
        for i, g in enumerate(sorted(g for g in curves if g)):
            its = sorted(curves[g])
            ax.plot(its, [sum(curves[g][t]) / len(curves[g][t]) for t in its], style, marker="o", color=f"C{i}",
                    label=f"{pairs[0][side].name.rsplit('-', 1)[0]}: {key} {g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="A B [A B ...]")
    ap.add_argument("--plot", type=Path, default=None, help="write the A and B curves here (PNG)")
    a = ap.parse_args()
    if len(a.runs) % 2:
        raise SystemExit("give runs in pairs: A B [A B ...]")
    pairs = list(zip(a.runs[::2], a.runs[1::2]))
    cfg = json.loads((pairs[0][0] / "config.json").read_text())
    task = get_task(cfg["task"], **cfg["task_options"])
    test = {p.id: p for p in task.problems("test", cfg["eval_problems"], seed=cfg["eval_seed"])}
    if a.plot:
        plot(pairs, test, cfg.get("eval_by") or "", a.plot)
    print("| iter | group | pairs | problems | A | B | A - B (points) [95% CI] |")
    print("|---|---|---|---|---|---|---|")
    for it in range(100):
        # group -> one {problem: (a, b)} per pair that reached this iteration
        diffs: dict[str, list[dict[str, tuple[float, float]]]] = defaultdict(list)
        for ra, rb in pairs:
            xa, xb = answers(ra, it), answers(rb, it)
            common = [k for k in xa if k in xb]
            if not common:
                continue
            per_group: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
            for k in common:
                for g in ("all", str(test[k].metadata.get(cfg.get("eval_by") or "", ""))):
                    if g:
                        per_group[g][k] = (float(xa[k]), float(xb[k]))
            for g, v in per_group.items():
                diffs[g].append(v)
        if not diffs:
            if it:
                break
            continue
        for g in sorted(diffs, key=lambda g: (g != "all", len(g), g)):
            per_pair = diffs[g]
            mean, (lo, hi) = pooled_pipelines_ci([{k: x - y for k, (x, y) in v.items()} for v in per_pair])
            acc_a = sum(sum(x for x, _ in v.values()) / len(v) for v in per_pair) / len(per_pair)
            acc_b = sum(sum(y for _, y in v.values()) / len(v) for v in per_pair) / len(per_pair)
            print(f"| {it} | {g} | {len(per_pair)} | {sum(map(len, per_pair))} | {acc_a:.3f} | {acc_b:.3f} | "
                  f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] |")

if __name__ == "__main__":
    main()
