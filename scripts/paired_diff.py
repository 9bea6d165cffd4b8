"""Paired comparison of two strategies of one sweep: same problems, same sampled pools.

    python scripts/paired_diff.py runs/sweep weighted majority            # every budget N they share
    python scripts/paired_diff.py runs/sweep best_of_n majority --n 16

For each problem the accuracy difference A - B is averaged over the sweep's seeds; the mean over
problems gets a 95% bootstrap CI over problems (2000 resamples, seeded). Because both strategies
select from the same samples, the paired CI is much tighter than comparing the two unpaired CIs.
Also prints on how many problems A is ahead / behind, and the per-seed accuracies.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path


def paired(results: Path, a: str, b: str, n: int, resamples: int = 2000, seed: int = 0) -> dict:
    by: dict[str, dict[tuple[str, int], bool]] = {a: {}, b: {}}
    for line in results.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["strategy"] in by and r["n"] == n:
            by[r["strategy"]][(r["problem_id"], r["seed"])] = bool(r["correct"])
    keys = sorted(set(by[a]) & set(by[b]))
    if not keys:
        raise SystemExit(f"no (problem, seed) rows with both {a} and {b} at N={n} in {results}")
    per_problem: dict[str, list[float]] = defaultdict(list)
    per_seed: dict[int, list[tuple[bool, bool]]] = defaultdict(list)
    for pid, s in keys:
        per_problem[pid].append(by[a][pid, s] - by[b][pid, s])
        per_seed[s].append((by[a][pid, s], by[b][pid, s]))
    d = [sum(v) / len(v) for v in per_problem.values()]
    rng = random.Random(seed)
    boots = sorted(sum(d[rng.randrange(len(d))] for _ in d) / len(d) for _ in range(resamples))
    return {"n": n, "problems": len(d), "mean_diff": sum(d) / len(d),
            "ci": [boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1]],
            "ahead": sum(x > 0 for x in d), "behind": sum(x < 0 for x in d),
            "per_seed": {s: [sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v)]
                         for s, v in sorted(per_seed.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="a `deliberate sweep` output directory (reads results.jsonl)")
    ap.add_argument("a", help="strategy A (e.g. weighted)")
    ap.add_argument("b", help="strategy B (e.g. majority)")
    ap.add_argument("--n", type=int, action="append", help="budget N (repeatable; default: every N both have)")
    args = ap.parse_args(argv)
    results = args.sweep / "results.jsonl"
    if not results.exists():
        print(f"error: {results} not found (is {args.sweep} a sweep directory?)", file=sys.stderr)
        return 2
    ns = args.n or sorted({json.loads(x)["n"] for x in results.read_text().splitlines() if x.strip()})
    print(f"{args.a} - {args.b}, paired over problems (mean over seeds), 95% bootstrap CI")
    for n in ns:
        try:
            r = paired(results, args.a, args.b, n)
        except SystemExit:
            continue
        seeds = "  ".join(f"seed {s}: {x:.3f} vs {y:.3f}" for s, (x, y) in r["per_seed"].items())
        print(f"N={n:<4} diff {100 * r['mean_diff']:+.1f} points [{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}]"
              f"  ahead on {r['ahead']}, behind on {r['behind']} of {r['problems']} problems  |  {seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
