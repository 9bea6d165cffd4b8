"""Cost of step-level search vs best-of-N at the same N, on the local engine.

    python benchmarks/search_overhead.py --model runs/quickstart/sft/model [--verifier oracle] [--n 16]

For each strategy (best-of-N, beam, MCTS, DVTS) on the same problems and N: wall seconds, generated
tokens, wall time per generated token and its ratio to best-of-N's, and the prompt+prefix tokens the
engine actually ran per generated token (after automatic prefix caching) next to the tokens that were
sent. Strategies run alternately ``--repeats`` times (this VM's speed drifts) and the median is
reported. The verifier is the same for every strategy (default: the oracle, so the numbers measure
the search machinery itself; pass ``--verifier prm:DIR`` to include a learned verifier's cost).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from deliberate.models.tiny import TinyBackend
from deliberate.rewards import get_verifier
from deliberate.search import SearchContext, SearchSettings, run_search
from deliberate.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--verifier", default="oracle")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--expansions", type=int, default=4)
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--strategies", default="best_of_n,beam,mcts,dvts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--task-arg", action="append", default=["min_ops=1", "max_ops=3", "max_operand=15"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    opts = dict(kv.split("=", 1) for kv in a.task_arg)
    task = get_task("arith", **{k: int(v) for k, v in opts.items()})
    problems = task.problems("test", a.problems, seed=0)
    backend = TinyBackend(a.model)
    verifier = get_verifier(a.verifier, task=task)
    names = a.strategies.split(",")
    rows: dict[str, list[dict]] = {s: [] for s in names}
    for rep in range(a.repeats + 1):  # the first round warms up and is not counted
        for name in names:
            backend.engine.clear_prefix_cache()
            backend.engine.stats.reset()
            ctx = SearchContext(backend, task, SearchSettings(n=a.n, expansions=a.expansions, seed=rep), verifier)
            t0 = time.perf_counter()
            res = run_search(name, problems, ctx)
            dt = time.perf_counter() - t0
            st = backend.engine.stats
            acc = sum(task.is_correct(r.answer, p) for r, p in zip(res, problems)) / len(problems)
            if rep:
                rows[name].append({"wall_s": dt, "generated": ctx.generated, "sent": ctx.prompt_sent,
                                   "prefill": st.prefill_tokens, "cached": getattr(st, "cached_tokens", 0),
                                   "accuracy": acc})
    base = statistics.median(r["wall_s"] / r["generated"] for r in rows[names[0]])
    print(f"{'strategy':<10} {'wall_s':>7} {'gen tok':>8} {'us/tok':>7} {'vs ' + names[0]:>12} "
          f"{'sent/gen':>9} {'computed/gen':>13} {'acc':>6}")
    out = {}
    for name in names:
        rs = rows[name]
        per = statistics.median(r["wall_s"] / r["generated"] for r in rs)
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        ratio = per / base
        print(f"{name:<10} {med['wall_s']:>7.2f} {med['generated']:>8.0f} {per * 1e6:>7.1f} {ratio:>11.2f}x "
              f"{med['sent'] / med['generated']:>9.2f} {med['prefill'] / med['generated']:>13.3f} "
              f"{med['accuracy']:>6.3f}")
        out[name] = {**med, "us_per_token": per * 1e6, "ratio_vs_first": ratio}
    print(f"(N={a.n}, expansions={a.expansions}, {a.problems} problems, verifier {a.verifier}, median of "
          f"{a.repeats}, threads {torch.get_num_threads()}, {platform.machine()})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
