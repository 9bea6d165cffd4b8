"""Grading throughput of the isolated sandbox vs the old in-process runner, on HumanEval (CPU).

    python benchmarks/sandbox_throughput.py [--problems 164] [--workers 2] [--repeats 1]

Grades the canonical solutions of the first ``--problems`` HumanEval problems with
``run_tests`` (candidate under bubblewrap + separate checker process: two processes, one of them
namespaced, per solution) and with ``run_tests_unsafe_local`` (one audit-hooked child), each from
``--workers`` threads (the way ``CodeTask.verify`` is called), alternating runners per repeat.
Prints solutions/s per runner, how many passed, and the ratio new/old.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

from deliberate.sandbox import Limits, isolation_available, run_tests, run_tests_unsafe_local
from deliberate.tasks import get_task


def grade_all(runner, probs, workers: int, isolated: bool) -> tuple[float, int]:
    lim = Limits(wall_s=30.0)

    def one(p):
        m = p.metadata
        extra = {"helpers": m["prompt"]} if isolated else {}
        return runner(m["solution"], m["tests"], m["entry_point"], limits=lim, **extra).passed

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        passed = sum(pool.map(one, probs))
    return time.perf_counter() - t0, passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=164)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    ok, why = isolation_available()
    if not ok:
        raise SystemExit(f"no isolating sandbox here: {why}")
    probs = get_task("code").problems()[: args.problems]
    print(f"{platform.node()} {platform.machine()} cpus={os.cpu_count()} problems={len(probs)} "
          f"workers={args.workers}")
    rates: dict[str, list[float]] = {"isolated": [], "unsafe_local": []}
    for _ in range(args.repeats):
        for name, runner in (("isolated", run_tests), ("unsafe_local", run_tests_unsafe_local)):
            wall, passed = grade_all(runner, probs, args.workers, name == "isolated")
            rates[name].append(len(probs) / wall)
            print(f"{name:13s} {wall:7.1f} s  {len(probs) / wall:6.2f} solutions/s  passed {passed}/{len(probs)}")
    new, old = max(rates["isolated"]), max(rates["unsafe_local"])
    print(f"ratio isolated/unsafe_local (best of {args.repeats}): {new / old:.2f}x")


if __name__ == "__main__":
    main()
