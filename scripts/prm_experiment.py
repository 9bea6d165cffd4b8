#!/usr/bin/env python
"""PRM/ORM selection on held-out problems: does a PRM trained on Monte-Carlo labels close the pass@N gap?

End to end from CLI-produced artifacts (see docs/RESULTS.md for the exact commands that made them):

    python scripts/prm_experiment.py --model runs/quickstart/sft/model \\
        --verifier prm=runs/prm-exp/prm --verifier orm=runs/prm-exp/orm --out runs/prm-exp/eval

1. samples ``--n`` completions per test problem with the policy (``deliberate eval`` machinery: resumable,
   seeded, so the samples are those of ``deliberate quickstart``'s eval for the same settings);
2. scores every sample with each verifier (one score per step) and reports, at every N in ``--ns``:
   pass@N (the ceiling), maj@N, best-of-N under each aggregation (min / last / prod / mean) and
   weighted majority (sum of aggregated scores per answer), all as expectations over random size-N
   subsets of the n samples, with 95% bootstrap CIs over problems;
3. measures each verifier's step-level AUC against the task's ground-truth step checker
   (``task.step_correct``) on those samples, and the outcome AUC of the last-step score.

Prints a table and writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from deliberate.eval.evaluate import RECORDS_FILE, EvalConfig, run_eval
from deliberate.eval.metrics import bootstrap_ci, maj_at_k, pass_at_k, weighted_at_k
from deliberate.records import load_records, write_json_atomic
from deliberate.models.base import parse_kv
from deliberate.models.tiny import TinyBackend
from deliberate.rewards import aggregate, get_verifier
from deliberate.tasks import get_task
from deliberate.train.verifier import auc

AGGS = ("min", "last", "prod", "mean")


def best_of_k(scores: np.ndarray, correct: np.ndarray, k: int) -> float:
    """Expected correctness of picking the top-scored sample of a uniformly random size-k subset.

    Exact: the subset's top score falls in tie group g with probability
    ``[C(n - above_g, k) - C(n - above_g - |g|, k)] / C(n, k)``; within the group the pick is uniform,
    so it is correct with the group's mean correctness."""
    n = len(scores)
    total = math.comb(n, k)
    value, above = 0.0, 0
    for s in sorted(set(scores.tolist()), reverse=True):
        grp = scores == s
        size = int(grp.sum())
        p = (math.comb(n - above, k) - math.comb(n - above - size, k)) / total
        value += p * float(correct[grp].mean())
        above += size
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="tiny policy checkpoint")
    ap.add_argument("--verifier", action="append", default=[], metavar="NAME=SPEC",
                    help="e.g. prm=runs/prm-exp/prm (a prm/orm/genrm kind is taken from NAME's prefix) or "
                         "prm-hard=prm:runs/x; repeatable")
    ap.add_argument("--task", default="arith")
    ap.add_argument("--task-arg", action="append", default=None, metavar="KEY=VALUE",
                    help="task options (default: the quickstart's min_ops=1 max_ops=3 max_operand=15)")
    ap.add_argument("--n-problems", type=int, default=200)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--ns", default="1,2,4,8,16")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/prm-exp/eval")
    args = ap.parse_args()

    opts = parse_kv(args.task_arg or ["min_ops=1", "max_ops=3", "max_operand=15"], "--task-arg")
    task = get_task(args.task, **opts)
    out = Path(args.out)
    ns = [int(x) for x in args.ns.split(",")]

    # 1. samples (resumable; identical to quickstart's eval samples under the seeding contract)
    t0 = time.perf_counter()
    cfg = EvalConfig(task=args.task, task_options=opts, n_problems=args.n_problems, n=args.n,
                     temperature=args.temperature, seed=args.seed, batch_size=64, greedy=False,
                     out_dir=str(out / "samples"))
    summary = run_eval(cfg, TinyBackend(args.model))
    problems = task.problems("test", args.n_problems, args.seed)
    recs = {(r.problem_id, r.index): r for r in load_records(out / "samples" / RECORDS_FILE) if r.strategy == "sample"}
    samples = [[recs[(p.id, j)] for j in range(args.n)] for p in problems]
    steps = [[list(task.split_steps(r.text)) for r in row] for row in samples]
    correct = np.array([[r.correct for r in row] for row in samples], dtype=bool)
    answers = [[task.normalize(r.answer) for r in row] for row in samples]
    print(f"samples ready ({time.perf_counter() - t0:.0f}s): {summary['compute']}", file=sys.stderr)

    def ci(vals):
        lo, hi = bootstrap_ci(vals, seed=args.seed)
        return [round(lo, 4), round(hi, 4)]

    rows = []

    def add(method: str, k: int, vals: list[float], **extra):
        rows.append({"method": method, "n": k, "accuracy": float(np.mean(vals)), "ci": ci(vals), **extra})

    for k in ns:
        add("pass", k, [pass_at_k(args.n, int(c.sum()), k) for c in correct])
        add("maj", k, [maj_at_k(a, c.tolist(), k, seed=args.seed * 1_000_003 + i)
                       for i, (a, c) in enumerate(zip(answers, correct))])

    # 2. verifiers
    auc_rows = []
    for item in args.verifier:
        name, _, spec = item.partition("=")
        if ":" not in spec and spec != "oracle":
            spec = f"{name.split('-')[0]}:{spec}"
        v = get_verifier(spec, task=task)
        t1 = time.perf_counter()
        flat = [(p, s) for p, row in zip(problems, steps) for s in row]
        scored = []
        for c in range(0, len(flat), 512):
            scored += v.score_batch(flat[c:c + 512])
        per = [scored[i * args.n:(i + 1) * args.n] for i in range(len(problems))]
        wall = time.perf_counter() - t1
        stats = v.stats.to_dict()
        for agg in AGGS:
            agg_scores = [np.array([aggregate(s, agg) for s in row]) for row in per]
            for k in ns:
                add(f"{name} best-of ({agg})", k, [best_of_k(sc, c, k) for sc, c in zip(agg_scores, correct)])
                add(f"{name} weighted ({agg})", k,
                    [weighted_at_k(a, c.tolist(), np.clip(sc, 0, None).tolist(), k, seed=args.seed * 1_000_003 + i)
                     for i, (a, c, sc) in enumerate(zip(answers, correct, agg_scores))])
        truth = [task.step_correct(p, s) or [] for p, row in zip(problems, steps) for s in row]
        flat_scores = [x for row in per for s in row for x in s]
        flat_truth = [y for t in truth for y in t]
        last = [s[-1] if s else 0.0 for row in per for s in row]
        # within a problem: does the verifier rank that problem's correct samples above its wrong ones?
        # (the pooled AUCs above also reward merely knowing which problems are easy)
        within = [auc([s[-1] if s else 0.0 for s in row], c.tolist()) for row, c in zip(per, correct)]
        within = [w for w in within if w is not None]
        auc_rows.append({"verifier": name, "spec": spec, "step_auc": auc(flat_scores, flat_truth),
                         "outcome_auc_last_step": auc(last, correct.ravel().tolist()),
                         "within_problem_auc_last_step": float(np.mean(within)) if within else None,
                         "problems_with_both_classes": len(within),
                         "n_steps": len(flat_scores), "wall_s": round(wall, 1), **stats})

    # 3. report
    pass16 = next(r["accuracy"] for r in rows if r["method"] == "pass" and r["n"] == max(ns))
    maj16 = next(r["accuracy"] for r in rows if r["method"] == "maj" and r["n"] == max(ns))
    N = max(ns)
    print(f"\n{args.task} {opts} | {args.n_problems} test problems x {args.n} samples (T={args.temperature}, "
          f"seed {args.seed}) | policy {args.model}")
    print(f"{'method':<28} " + " ".join(f"{'@' + str(k):>7}" for k in ns) + f"   {'95% CI @' + str(N):>17} "
          f"{'/pass@' + str(N):>8} {'-maj@' + str(N):>7}")
    for method in dict.fromkeys(r["method"] for r in rows):
        mr = {r["n"]: r for r in rows if r["method"] == method}
        top = mr[N]
        lo, hi = top["ci"]
        ci_txt = f"[{lo:.3f}, {hi:.3f}]"
        print(f"{method:<28} " + " ".join(f"{mr[k]['accuracy']:>7.3f}" for k in ns)
              + f"   {ci_txt:>17} {top['accuracy'] / pass16:>8.2f} {100 * (top['accuracy'] - maj16):>+7.1f}")
    print()
    for a in auc_rows:
        print(f"{a['verifier']}: step AUC vs task.step_correct {a['step_auc']:.3f} ({a['n_steps']} steps), "
              f"outcome AUC of last-step score {a['outcome_auc_last_step']:.3f} (pooled), "
              f"{a['within_problem_auc_last_step']:.3f} (within a problem, mean over "
              f"{a['problems_with_both_classes']}); "
              f"{a['sequences']} sequences / {a['tokens']} tokens in {a['calls']} calls, {a['wall_s']}s")
    write_json_atomic(out / "results.json", {"config": vars(args), "task_options": opts, "rows": rows,
                                             "auc": auc_rows, "pass": pass16, "maj": maj16})
    print(f"\nwritten {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
