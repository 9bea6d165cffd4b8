"""Paired comparison of two strategies of one sweep: same problems, same sampled pools.

    python scripts/paired_diff.py runs/sweep weighted majority            # every budget N they share
    python scripts/paired_diff.py runs/sweep best_of_n majority --n 16
    python scripts/paired_diff.py runs/a/sweep weighted majority --also runs/b/sweep   # pooled over runs
    python scripts/paired_diff.py runs/prm best_of_n best_of_n --b-from runs/orm   # two verifiers, one pool

For each problem the accuracy difference A - B is averaged over the sweep's seeds; the mean over
problems gets the project's 95% bootstrap CI over problems (`eval.metrics.bootstrap_ci`). Because both strategies
select from the same samples, the paired CI is much tighter than comparing the two unpaired CIs.
Also prints on how many problems A is ahead / behind, and the per-seed accuracies. ``--also`` pools
other sweeps (e.g. the same sweep of models from other training seeds) as independent pipelines: the CI is
the two-stage cluster bootstrap (`eval.metrics.pooled_pipelines_ci`: sweeps, then problems, one problem draw
shared by sweeps that ran the same problems), so a problem common to every sweep is not counted as several
independent units. ``--b-from`` takes strategy B
from another sweep instead, e.g. one run with ``--pool-from`` the first: the same samples selected with
another verifier, so A - B compares the verifiers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

from deliberate.eval.metrics import bootstrap_ci, pooled_pipelines_ci


def load(results: Path) -> list[dict]:
    """The rows of a sweep's ``results.jsonl`` (one per problem, seed, strategy and N)."""
    return [json.loads(x) for x in results.read_text().splitlines() if x.strip()]


def paired(rows: list[dict], a: str, b: str, n: int) -> dict | None:
    """A - B at budget ``n`` over the (problem, seed) pairs both have; None when there are none.

    Rows may carry ``run`` (which pooled sweep they came from; default 0): each run is one pipeline of the
    cluster bootstrap, and its problems are averaged over its seeds first.
    """
    by: dict[str, dict[tuple[int, str, int], bool]] = {a: {}, b: {}}
    for r in rows:
        if r["strategy"] in by and r["n"] == n:
            by[r["strategy"]][(r.get("run", 0), r["problem_id"], r["seed"])] = bool(r["correct"])
    keys = sorted(set(by[a]) & set(by[b]))
    if not keys:
        return None
    per_problem: dict[tuple[int, str], list[float]] = defaultdict(list)
    per_seed: dict[int, list[tuple[bool, bool]]] = defaultdict(list)
    for run, pid, s in keys:
        per_problem[run, pid].append(by[a][run, pid, s] - by[b][run, pid, s])
        per_seed[s].append((by[a][run, pid, s], by[b][run, pid, s]))
    per_run: dict[int, dict[str, float]] = defaultdict(dict)
    for (run, pid), v in per_problem.items():
        per_run[run][pid] = sum(v) / len(v)
    d = list(itertools.chain.from_iterable(x.values() for x in per_run.values()))
    if len(per_run) == 1:
        mean, ci = sum(d) / len(d), bootstrap_ci(d)
    else:
        mean, ci = pooled_pipelines_ci(list(per_run.values()))
    return {"n": n, "problems": len(d), "runs": len(per_run), "mean_diff": mean, "ci": list(ci),
            "ahead": sum(x > 0 for x in d), "behind": sum(x < 0 for x in d),
            "per_seed": {s: [sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v)]
                         for s, v in sorted(per_seed.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="a `deliberate sweep` output directory (reads results.jsonl)")
    ap.add_argument("a", help="strategy A (e.g. weighted)")
    ap.add_argument("b", help="strategy B (e.g. majority)")
    ap.add_argument("--n", type=int, action="append", help="budget N (repeatable; default: every N both have)")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="another sweep directory to pool (repeatable; its problems are separate units)")
    ap.add_argument("--b-from", type=Path, default=None, metavar="SWEEP",
                    help="take strategy B from this sweep (e.g. the same pool scored by another verifier)")
    args = ap.parse_args(argv)
    if args.b_from is not None and args.also:
        print("error: --b-from compares two sweeps; it does not combine with --also", file=sys.stderr)
        return 2
    sweeps = [args.sweep, *args.also] + ([args.b_from] if args.b_from is not None else [])
    for sweep in sweeps:
        if not (sweep / "results.jsonl").exists():
            print(f"error: {sweep / 'results.jsonl'} not found (is {sweep} a sweep directory?)", file=sys.stderr)
            return 2
    if args.b_from is not None:
        b_key = f"{args.b_from}:{args.b}"  # B may be the same strategy name as A
        rows = [r for r in load(args.sweep / "results.jsonl") if r["strategy"] == args.a]
        rows += [{**r, "strategy": b_key} for r in load(args.b_from / "results.jsonl") if r["strategy"] == args.b]
        print(f"{args.a} ({args.sweep}) - {args.b} ({args.b_from}), paired over problems (mean over seeds), "
              "95% bootstrap CI")
        _print(rows, args.a, b_key, args.n)
        return 0
    rows = []
    for i, sweep in enumerate(sweeps):
        rows += [{**r, "run": i} for r in load(sweep / "results.jsonl")]
    ci = "95% cluster-bootstrap CI (sweeps, then problems)" if args.also else "95% bootstrap CI"
    print(f"{args.a} - {args.b}, paired over problems (mean over seeds), {ci}")
    _print(rows, args.a, args.b, args.n)
    return 0


def _print(rows: list[dict], a: str, b: str, ns: list[int] | None) -> None:
    for n in ns or sorted({r["n"] for r in rows}):
        r = paired(rows, a, b, n)
        if r is None:
            continue
        seeds = "  ".join(f"seed {s}: {x:.3f} vs {y:.3f}" for s, (x, y) in r["per_seed"].items())
        print(f"N={n:<4} diff {100 * r['mean_diff']:+.1f} points [{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}]"
              f"  ahead on {r['ahead']}, behind on {r['behind']} of {r['problems']} problems"
              + (f" ({r['runs']} sweeps)" if r["runs"] > 1 else "") + f"  |  {seeds}")


if __name__ == "__main__":
    sys.exit(main())
