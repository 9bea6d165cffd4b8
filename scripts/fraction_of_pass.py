"""A sweep strategy's accuracy as a fraction of pass@N (the ceiling of any selection), with a 95% CI.

    python scripts/fraction_of_pass.py runs/sweep best_of_n --n 16
    python scripts/fraction_of_pass.py runs/prm6/test-s0-lprm best_of_n weighted --n 16

Reads the sweep's ``results.jsonl``: per problem, the strategy's accuracy and pass@N (``any_correct``: whether
any of its N candidates was right) are averaged over the sweep's seeds; the fraction is mean accuracy / mean
pass@N over problems, and its interval resamples problems jointly (``eval.metrics.bootstrap_ratio_ci``). Also
prints the fraction per sampling seed. The sweep's own summary gives the point value in its ``/pass@N`` column;
this adds the interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from deliberate.eval.metrics import bootstrap_ratio_ci


def fraction(rows: list[dict], strategy: str, n: int) -> dict | None:
    """``strategy``'s accuracy / pass@n at budget ``n``; None when the sweep has no such rows."""
    acc: dict[str, list[float]] = defaultdict(list)
    ceil: dict[str, list[float]] = defaultdict(list)
    per_seed: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r["strategy"] == strategy and r["n"] == n:
            if "any_correct" not in r:
                raise ValueError(f"row of {strategy!r} at N={n} has no 'any_correct' (not a sweep's results.jsonl?)")
            acc[r["problem_id"]].append(float(r["correct"]))
            ceil[r["problem_id"]].append(float(r["any_correct"]))
            per_seed[r["seed"]].append((float(r["correct"]), float(r["any_correct"])))
    if not acc:
        return None
    pids = sorted(acc)
    a = [sum(acc[p]) / len(acc[p]) for p in pids]
    c = [sum(ceil[p]) / len(ceil[p]) for p in pids]
    if sum(c) == 0:
        return None
    return {"n": n, "problems": len(pids), "accuracy": sum(a) / len(a), "pass": sum(c) / len(c),
            "fraction": sum(a) / sum(c), "ci": list(bootstrap_ratio_ci(a, c)),
            "per_seed": {s: sum(x for x, _ in v) / max(1e-12, sum(y for _, y in v))
                         for s, v in sorted(per_seed.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="a `deliberate sweep` output directory (reads results.jsonl)")
    ap.add_argument("strategies", nargs="+", help="strategies, e.g. best_of_n weighted")
    ap.add_argument("--n", type=int, action="append", help="budget N (repeatable; default: every N in the sweep)")
    args = ap.parse_args(argv)
    path = args.sweep / "results.jsonl"
    if not path.exists():
        print(f"error: {path} not found (is {args.sweep} a sweep directory?)", file=sys.stderr)
        return 2
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    print(f"{args.sweep}: accuracy / pass@N, mean over seeds per problem, 95% bootstrap CI over problems")
    found = False
    for n in args.n or sorted({r["n"] for r in rows}):
        for s in args.strategies:
            try:
                r = fraction(rows, s, n)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            if r is None:
                continue
            found = True
            seeds = "  ".join(f"seed {k}: {v:.3f}" for k, v in r["per_seed"].items())
            print(f"N={n:<4} {s:<12} {r['accuracy']:.3f} / {r['pass']:.3f} = {r['fraction']:.3f} "
                  f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]  ({r['problems']} problems)  |  {seeds}")
    if not found:
        print(f"error: none of {', '.join(args.strategies)} at the asked N in {path}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
