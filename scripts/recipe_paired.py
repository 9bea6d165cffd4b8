"""Paired change of a training run's held-out accuracy between two of its evaluations.

    python scripts/recipe_paired.py runs/si/rest-em-m0 runs/si/rest-em-m1 runs/si/rest-em-m2
    python scripts/recipe_paired.py runs/si/grpo-mb-s1 --to 6 --metric pass@1

Every evaluation of a recipe (``itNNN/eval`` for rest-em / star / mcts-ei, ``evalNNN/eval`` for grpo)
answers the same held-out problems, so the change from evaluation ``--from`` (default 0, the starting
model) to ``--to`` (default: the last one) is paired per problem. ``greedy``: the greedy answer right
or not; ``pass@1``: the share of the evaluation's sampled answers that are right (the mean over its n
samples, temperature 1). Prints the mean change in points with the project's 95% bootstrap CI over
problems (``eval.metrics.bootstrap_ci``, 2000 resamples) and on how many problems it went up / down.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from deliberate.eval.metrics import bootstrap_ci


def eval_dirs(run: Path) -> dict[int, Path]:
    """Evaluation index -> the directory holding its ``records.jsonl``."""
    out: dict[int, Path] = {}
    for d in sorted(run.glob("*[0-9][0-9][0-9]/eval")):
        name = d.parent.name
        if name.startswith(("it", "eval")) and name[-3:].isdigit() and (d / "records.jsonl").is_file():
            out[int(name[-3:])] = d
    return out


def per_problem(records: Path, metric: str) -> dict[str, float]:
    """Problem id -> its score under ``metric`` in one evaluation's records."""
    strategy = {"greedy": "greedy", "pass@1": "sample"}[metric]
    hits: dict[str, list[float]] = defaultdict(list)
    for line in records.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("strategy") == strategy:
                hits[r["problem_id"]].append(float(bool(r["correct"])))
    return {p: sum(v) / len(v) for p, v in hits.items()}


def change(run: Path, metric: str, a: int, b: int | None) -> dict:
    dirs = eval_dirs(run)
    if not dirs:
        raise SystemExit(f"{run}: no itNNN/eval or evalNNN/eval with records.jsonl (not a recipe run directory?)")
    b = max(dirs) if b is None else b
    for i in (a, b):
        if i not in dirs:
            raise SystemExit(f"{run}: no evaluation {i} (has {', '.join(map(str, sorted(dirs)))})")
    before, after = per_problem(dirs[a] / "records.jsonl", metric), per_problem(dirs[b] / "records.jsonl", metric)
    keys = sorted(set(before) & set(after))
    if not keys:
        raise SystemExit(f"{run}: evaluations {a} and {b} share no problem with {metric} records")
    d = [after[k] - before[k] for k in keys]
    return {"run": str(run), "from": a, "to": b, "metric": metric, "problems": len(d),
            "before": sum(before[k] for k in keys) / len(keys), "after": sum(after[k] for k in keys) / len(keys),
            "change": sum(d) / len(d), "ci": list(bootstrap_ci(d)), "up": sum(x > 0 for x in d),
            "down": sum(x < 0 for x in d)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="recipe run directories")
    ap.add_argument("--metric", choices=("greedy", "pass@1"), action="append",
                    help="repeatable (default: greedy and pass@1)")
    ap.add_argument("--from", dest="a", type=int, default=0, help="evaluation index to start from (default: 0)")
    ap.add_argument("--to", dest="b", type=int, default=None, help="evaluation index to end at (default: the last)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    args = ap.parse_args(argv)
    for run in args.runs:
        for metric in args.metric or ["greedy", "pass@1"]:
            r = change(run, metric, args.a, args.b)
            if args.json:
                print(json.dumps(r))
            else:
                lo, hi = r["ci"]
                print(f"{run.name:24s} {metric:7s} eval {r['from']} -> {r['to']}: {r['before']:.3f} -> {r['after']:.3f}  "
                      f"{100 * r['change']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]  "
                      f"up on {r['up']}, down on {r['down']} of {r['problems']} problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
