"""Throughput of ``deliberate sweep`` through Ray: 1 vs 2 workers, and the Ray path's overhead vs
in-process at one worker.

    python benchmarks/ray_executor.py --model runs/quickstart/sft/model [--problems 48] [--json out.json]

Runs the same sweep (pool sampling + majority + beam search with the oracle verifier on ``arith``)
four ways, each into a fresh directory, and checks the records agree:

- ``in-process, 1 thread``: the reference for the overhead (same compute per worker as Ray's);
- ``ray, 1 worker``: one Ray actor with 1 CPU / 1 torch thread — overhead = its wall / the reference's;
- ``ray, 2 workers``: two actors, 1 CPU / 1 thread each — scaling = 1-worker wall / 2-worker wall;
- ``in-process, 2 threads``: what one process gets from both cores (for context).

The wall time of a Ray run includes starting its actors (each imports torch and loads the model: a
few seconds, also reported on its own) but not ``ray.init``, which is paid once per driver process
and reported separately. Every sweep is timed ``--repeats``
times, alternating the configurations (this VM's speed drifts), and the median is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from deliberate.eval.sweep import SweepConfig, run_sweep
from deliberate.executor import RayExecutor, WorkerSpec
from deliberate.models.tiny import TinyBackend, load_or_init_tiny, save_tiny
from deliberate.tasks import get_task

TASK_OPTS = {"min_ops": 1, "max_ops": 3, "max_operand": 15}


def records(out: Path) -> dict:
    rows = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[(r["problem_id"], r["strategy"], r["n"], r["seed"])] = (r["answer"], r["text"], r["generated_tokens"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="tiny model dir (default: a freshly initialised one)")
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--batch-problems", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    model = a.model
    if model is None:  # workers load from disk, so an initialised model is saved first
        m, tok = load_or_init_tiny(None)
        save_tiny(m, tok, tmp / "model")
        model = str(tmp / "model")
    task = get_task("arith", **TASK_OPTS)
    spec = WorkerSpec("tiny", {"path": model}, "arith", TASK_OPTS, "oracle")

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_init_s = time.perf_counter() - t0

    def config(out: Path) -> SweepConfig:
        return SweepConfig(task="arith", out_dir=str(out), strategies=("majority", "beam"), budgets=(a.budget,),
                           seeds=(0,), n_problems=a.problems, task_options=TASK_OPTS, verifier="oracle",
                           batch_problems=a.batch_problems, taste_sigmas=(), trees_per_run=0)

    def in_process(threads: int):
        def run(out: Path) -> float:
            torch.set_num_threads(threads)
            t = time.perf_counter()
            run_sweep(config(out), TinyBackend(model), task=task, progress=False)
            return time.perf_counter() - t
        return run

    starts: dict[str, list[float]] = {}

    def on_ray(workers: int):
        def run(out: Path) -> float:
            t = time.perf_counter()
            ex = RayExecutor(spec, workers=workers, threads=1)  # returns once the workers hold the model
            starts.setdefault(f"ray, {workers} worker{'s' if workers > 1 else ''}", []).append(time.perf_counter() - t)
            try:
                run_sweep(config(out), task=task, executor=ex, progress=False)
            finally:
                ex.close()
            return time.perf_counter() - t
        return run

    ways = {"in-process, 1 thread": in_process(1), "ray, 1 worker": on_ray(1), "ray, 2 workers": on_ray(2),
            "in-process, 2 threads": in_process(2)}
    walls: dict[str, list[float]] = {k: [] for k in ways}
    ref = None
    for rep in range(a.repeats):
        for name, run in ways.items():
            out = tmp / f"{rep}-{name.replace(' ', '_').replace(',', '')}"
            walls[name].append(run(out))
            got = records(out)
            if name != "in-process, 2 threads":  # 2 threads may differ in the last bit: not compared
                ref = ref or got
                assert got == ref, f"{name}: records differ from the in-process run"
            print(f"  repeat {rep} {name}: {walls[name][-1]:.1f} s", flush=True)
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in walls.items()}
    start = {k: statistics.median(v) for k, v in starts.items()}
    steady = {k: med[k] - start.get(k, 0.0) for k in med}  # Ray runs without starting their actors
    res = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads max, 2-core VM",
           "date": time.strftime("%Y-%m-%d"), "problems": a.problems, "budget": a.budget, "ray_init_s": ray_init_s,
           "wall_s": med, "all_walls": walls, "worker_start_s": start, "wall_without_worker_start_s": steady,
           "ray_overhead_1_worker": med["ray, 1 worker"] / med["in-process, 1 thread"] - 1,
           "ray_overhead_1_worker_without_start": steady["ray, 1 worker"] / med["in-process, 1 thread"] - 1,
           "scaling_2_vs_1_worker": med["ray, 1 worker"] / med["ray, 2 workers"],
           "ray_2_workers_vs_in_process_2_threads": med["in-process, 2 threads"] / med["ray, 2 workers"]}
    print("| configuration | wall s (median) | of which starting workers |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {start[k]:.1f} |" if k in start else f"| {k} | {v:.1f} | - |")
    print(f"ray.init: {ray_init_s:.1f} s (once per driver); Ray overhead at 1 worker: "
          f"{100 * res['ray_overhead_1_worker']:+.1f}% ({100 * res['ray_overhead_1_worker_without_start']:+.1f}% "
          f"without starting the worker); 2 workers vs 1: {res['scaling_2_vs_1_worker']:.2f}x; "
          f"2 Ray workers vs 1 process with 2 threads: {res['ray_2_workers_vs_in_process_2_threads']:.2f}x; "
          f"records identical across in-process and Ray runs")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
