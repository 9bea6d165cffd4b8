"""The quickstart experiment (``deliberate quickstart``): the whole idea on one screen, from checkpoints that ship
with the package (:mod:`deliberate.experiments.quickstart_checkpoints`).

On fresh held-out ``arith`` problems (a problem seed used for nothing else) the shipped tiny policy is scored with
greedy decoding, majority vote, best-of-N and weighted vote with the shipped likelihood PRM and likelihood ORM,
PRM-guided beam search and MCTS, at N = 1, 2, 4, 8, 16, with pass@N as the ceiling. It runs three
``deliberate sweep`` runs in this process (the ORM's selects from the PRM sweep's samples: ``--pool-from``), prints
one table (accuracy per N, tokens per problem at N = 16, and each method's paired difference from maj@16 with a 95%
bootstrap CI clustered by problem), writes ``accuracy_vs_n.png``, ``accuracy_vs_tokens.png`` and ``report.html``
(with the search-tree viewer), and ends with three next commands.

    deliberate quickstart                                     # writes runs/quickstart/
    deliberate quickstart --from-scratch                      # rebuild the checkpoints first (says how long)
    deliberate quickstart --from-scratch --seed 1 --out runs/qs-seed1   # leaves the seed-1 SFT policy in OUT/sft/model

A rerun with the same ``--out`` resumes: finished sweeps and finished build stages are not redone.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from deliberate.errors import DeliberateError
from deliberate.eval.metrics import bootstrap_ci, pass_at_k
from deliberate.eval.plots import plot_accuracy_vs_n, plot_accuracy_vs_tokens
from deliberate.eval.report import write_report
from deliberate.eval.sweep import SweepConfig, run_sweep
from deliberate.eval.sweep_curves import compute_matched
from deliberate.experiments.quickstart_checkpoints import (
    DEFAULT_MODEL,
    DEFAULT_STEPS,
    DEFAULT_TASK_OPTIONS,
    BuildConfig,
    build,
    install,
    shipped_dir,
)
from deliberate.models.tiny import TinyBackend
from deliberate.records import write_json_atomic
from deliberate.rewards.base import get_verifier
from deliberate.tasks import get_task
from deliberate.types import ResultRow

__all__ = ["DEFAULT_MODEL", "DEFAULT_STEPS", "DEFAULT_TASK_OPTIONS", "QuickstartConfig", "run_quickstart"]

#: the held-out problems' seed (test split): not the seed of any training, label or validation set
PROBLEM_SEED = 34
BUDGETS = (1, 2, 4, 8, 16)
#: (row label, sweep, strategy) in table order; the sweeps are OUT/sweeps/<name>
METHODS = (("greedy", "greedy", "majority"), ("majority", "prm", "majority"),
           ("PRM best-of-N", "prm", "best_of_n"), ("PRM weighted", "prm", "weighted"),
           ("ORM best-of-N", "orm", "best_of_n"), ("ORM weighted", "orm", "weighted"),
           ("PRM beam search", "beam", "beam"), ("PRM MCTS", "mcts", "mcts"))
#: the sweeps split over two processes, one per core, balanced by generated tokens (at the default size: the PRM
#: pool ~78k and beam ~147k against MCTS ~176k and greedy ~5k); "orm" selects from "prm"'s pool, so it follows it
GROUPS = (("prm", "orm", "beam"), ("mcts", "greedy"))


@dataclass(frozen=True)
class QuickstartConfig:
    """The quickstart's knobs. Without ``from_scratch`` it uses the shipped checkpoints, and ``seed`` / ``steps``
    (they describe a build) must stay at their defaults: :func:`run_quickstart` refuses them."""

    from_scratch: bool = False
    seed: int = 0  # training seed of a from-scratch build
    steps: int = DEFAULT_STEPS  # the policy's SFT steps in a from-scratch build
    n_problems: int = 100  # held-out problems
    sampling_seeds: int = 2  # sampling seeds per problem (accuracy averages over them)
    workers: int = 2  # processes the sweeps run in side by side, one torch thread each (1: in this process)
    out: str = "runs/quickstart"

    def __post_init__(self) -> None:
        for name in ("n_problems", "sampling_seeds", "steps", "workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DeliberateError(f"quickstart: {name} must be an integer >= 1 (got {v!r})")


def run_quickstart(cfg: QuickstartConfig, build_cfg: BuildConfig | None = None) -> dict[str, Any]:
    """Install (or build) the checkpoints, run the sweeps, print the table, write plots and report; returns the
    merged summary (``OUT/summary.json``). ``build_cfg`` overrides the build's sizes (tests)."""
    if not cfg.from_scratch and (cfg.seed != 0 or cfg.steps != DEFAULT_STEPS):
        raise DeliberateError("quickstart: --seed and --steps describe a build; add --from-scratch "
                              "(the shipped checkpoints are seed 0, 450 steps)")
    t0 = time.perf_counter()
    cpu0, children0 = time.process_time(), children_cpu()
    out = Path(cfg.out)
    if cfg.from_scratch:
        bcfg = build_cfg or BuildConfig(seed=cfg.seed, policy_steps=cfg.steps)
        built = build(bcfg, out)
        total = sum(built["times"].values())
        print(f"      rebuilt in {total / 60:.1f} min ({', '.join(f'{k} {v:.0f}s' for k, v in built['times'].items())})")
        _say_if_shipped(out / "assets", built)
        assets = out / "assets"
    else:
        assets = shipped_dir()
    paths = install(assets, out / "checkpoints")
    print(f"{cfg.n_problems} held-out problems x {cfg.sampling_seeds} sampling seeds, N = "
          f"{','.join(map(str, BUDGETS))}; {min(cfg.workers, len(GROUPS))} process(es)", flush=True)
    sweeps = _run_sweeps(cfg, out, paths)
    summary = merge(cfg, out, sweeps)
    print()
    print(format_table(summary))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0 + children_cpu() - children0
    print(f"\nwall {wall:.0f}s, CPU {cpu:.0f}s (all processes); plots {out / 'accuracy_vs_n.png'}, "
          f"{out / 'accuracy_vs_tokens.png'}; report {out / 'report.html'}")
    print(next_commands(paths))
    return summary


def children_cpu() -> float:
    """CPU seconds of this process's finished child processes (the sweep workers)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _say_if_shipped(assets: Path, built: dict[str, Any]) -> None:
    shipped = json.loads((shipped_dir() / "manifest.json").read_text())
    same = shipped["sha256"] == built["sha256"]
    print(f"      {'identical to' if same else 'differs from'} the shipped checkpoints (sha256 of every file; "
          f"{assets / 'manifest.json'})" + ("" if same else ": expected for another seed, size, machine or thread count"))


def sweep_configs(cfg: QuickstartConfig, out: Path, paths: dict[str, Path]) -> dict[str, tuple[SweepConfig, str | None]]:
    """Each sweep's configuration and the verifier spec it runs with (None: none)."""
    base = dict(task="arith", task_options=dict(DEFAULT_TASK_OPTIONS), n_problems=cfg.n_problems,
                problem_seed=PROBLEM_SEED, taste_sigmas=(), batch_problems=cfg.n_problems, trees_per_run=5)
    seeds = tuple(range(cfg.sampling_seeds))
    lprm, lorm = f"lprm:{paths['lprm']}", f"lorm:{paths['lorm']}"

    def sweep(name: str, **kw: Any) -> SweepConfig:
        return SweepConfig(**base, out_dir=str(out / "sweeps" / name), **{"budgets": BUDGETS, "seeds": seeds, **kw})

    return {
        "greedy": (sweep("greedy", strategies=("majority",), budgets=(1,), seeds=(0,), settings={"temperature": 0.0}),
                   None),
        "prm": (sweep("prm", strategies=("majority", "best_of_n", "weighted"), verifier=lprm), lprm),
        "orm": (sweep("orm", strategies=("best_of_n", "weighted"), verifier=lorm, settings={"aggregation": "last"},
                      pool_from=str(out / "sweeps" / "prm")), lorm),
        "beam": (sweep("beam", strategies=("beam",), verifier=lprm), lprm),
        "mcts": (sweep("mcts", strategies=("mcts",), verifier=lprm), lprm),
    }


def run_group(names: tuple[str, ...], cfg: QuickstartConfig, out: Path, paths: dict[str, Path],
              threads: int | None) -> dict[str, dict]:
    """Run the sweeps ``names`` in order in this process (a worker's entry point); their summaries by name."""
    if threads is not None:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per checkpoint would bury the table
    task = get_task("arith", **DEFAULT_TASK_OPTIONS)
    backend = TinyBackend(paths["policy"])
    configs = sweep_configs(cfg, out, paths)
    verifiers: dict[str, Any] = {}
    done = {}
    for name in names:
        config, spec = configs[name]
        if spec is not None and spec not in verifiers:
            verifiers[spec] = get_verifier(spec, task=task)
        t, c = time.perf_counter(), time.process_time()
        done[name] = run_sweep(config, backend, task=task, verifier=verifiers.get(spec), progress=False, extras=False)
        print(f"  sweep {name:<6} {time.perf_counter() - t:5.1f}s wall, {time.process_time() - c:5.1f}s CPU "
              f"-> {config.out_dir}", flush=True)
    return done


def _run_sweeps(cfg: QuickstartConfig, out: Path, paths: dict[str, Path]) -> dict[str, dict]:
    if cfg.workers == 1:
        return run_group(tuple(n for g in GROUPS for n in g), cfg, out, paths, threads=None)
    # spawned, not forked: a forked child would inherit this process's torch thread pool state
    with ProcessPoolExecutor(max_workers=len(GROUPS), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_group, group, cfg, out, paths, 1) for group in GROUPS]
        done: dict[str, dict] = {}
        for f in futures:
            done.update(f.result())
    return done


def _per_problem(sweep_dir: Path, strategy: str, n: int) -> dict[str, float]:
    """Per problem, the mean correctness over sampling seeds of ``strategy`` at budget ``n``."""
    acc: dict[str, list[bool]] = {}
    for line in (sweep_dir / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["strategy"] == strategy and r["n"] == n:
            acc.setdefault(r["problem_id"], []).append(bool(r["correct"]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _pass_per_problem(sweep_dir: Path, n: int) -> dict[str, float]:
    """Per problem, unbiased pass@n over the pool's samples, averaged over sampling seeds."""
    pool: dict[tuple[str, int], list[bool]] = {}
    for line in (sweep_dir / "pool.jsonl").read_text().splitlines():
        r = json.loads(line)
        pool.setdefault((r["problem_id"], r["seed"]), []).append(bool(r["correct"]))
    by: dict[str, list[float]] = {}
    for (pid, _), cs in pool.items():
        by.setdefault(pid, []).append(pass_at_k(len(cs), sum(cs), n))
    return {k: float(np.mean(v)) for k, v in by.items()}


def paired_difference(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """Mean of A - B over the problems both have, with a 95% bootstrap CI that resamples problems (each problem's
    sampling seeds stay together: the clustered bootstrap)."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise DeliberateError("paired difference: no problem in common")
    d = [a[k] - b[k] for k in keys]
    lo, hi = bootstrap_ci(d, seed=PROBLEM_SEED)
    return {"diff": float(np.mean(d)), "ci": [lo, hi], "problems": len(d)}


def merge(cfg: QuickstartConfig, out: Path, sweeps: dict[str, dict]) -> dict[str, Any]:
    """One run directory at ``out`` for the report: the rows of every method (strategy names carry their
    verifier), the table with paired differences as an extra table, the two plots and the search trees."""
    rows = []
    for r in sweeps["prm"]["results"]:
        if r["strategy"] == "pass@n":
            rows.append({**r, "strategy": "pass@N"})
    for label, sweep, strategy in METHODS:
        for r in sweeps[sweep]["results"]:
            if r["strategy"] == strategy:
                rows.append({**r, "strategy": "greedy" if label == "greedy" else f"{label}@N"})
    base = _per_problem(out / "sweeps" / "prm", "majority", max(BUDGETS))
    table = []
    for label, sweep, strategy in (("pass@N (ceiling)", "prm", "pass@n"), *METHODS):
        cells = {r["n"]: r for r in sweeps[sweep]["results"] if r["strategy"] == strategy}
        n_top = max(cells)
        per = _pass_per_problem(out / "sweeps" / sweep, n_top) if strategy == "pass@n" \
            else _per_problem(out / "sweeps" / sweep, strategy, n_top)
        entry = {"method": label, **{f"N={n}": cells[n]["accuracy"] if n in cells else None for n in BUDGETS},
                 "tokens/problem": cells[n_top].get("generated_tokens", 0.0) / max(1, cfg.n_problems)}
        if not (sweep == "prm" and strategy == "majority"):
            d = paired_difference(per, base)
            entry.update({"minus maj@16": d["diff"], "CI low": d["ci"][0], "CI high": d["ci"][1]})
        table.append(entry)
    matched = compute_matched([ResultRow.from_dict(r) for r in rows if r["strategy"] not in ("pass@N",)])
    summary = {"task": "arith", "model": "shipped tiny policy" if not cfg.from_scratch else f"seed-{cfg.seed} build",
               "seed": list(range(cfg.sampling_seeds)), "n_problems": cfg.n_problems, "results": rows,
               "extra": {"quickstart": table, "compute_matched": matched},
               "compute": {name: s.get("compute", {}) for name, s in sweeps.items()},
               "config": {**asdict(cfg), "problem_seed": PROBLEM_SEED, "budgets": list(BUDGETS),
                          "task_options": DEFAULT_TASK_OPTIONS}, "kind": "sweep"}
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "config.json", summary["config"])
    plot_accuracy_vs_n(summary, out / "accuracy_vs_n.png")
    plot_accuracy_vs_tokens(summary, out / "accuracy_vs_tokens.png")
    with open(out / "trees.jsonl", "w") as f:  # both tree searches' trees, for the report's viewer
        for name in ("beam", "mcts"):
            f.write((out / "sweeps" / name / "trees.jsonl").read_text())
    write_report(out)
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The quickstart's one table: accuracy per N, tokens per problem at the largest N, and the paired
    difference from maj@16 with its 95% CI (in points)."""
    table = summary["extra"]["quickstart"]
    w = max(len(t["method"]) for t in table)
    head = (f"{'method':<{w}} " + " ".join(f"{f'N={n}':>6}" for n in BUDGETS)
            + f" {'tok/prob':>8}  {'- maj@16 [95% CI]':>20}")
    lines = [f"arith, {summary['n_problems']} held-out problems x {len(summary['seed'])} sampling seeds "
             f"({summary['model']}); accuracy", head]
    for t in table:
        cells = " ".join(f"{t[f'N={n}']:>6.3f}" if t[f"N={n}"] is not None else f"{'':>6}" for n in BUDGETS)
        diff = (f"{100 * t['minus maj@16']:+6.1f} [{100 * t['CI low']:+.1f}, {100 * t['CI high']:+.1f}]"
                if "minus maj@16" in t else "")
        lines.append(f"{t['method']:<{w}} {cells} {t['tokens/problem']:>8.0f}  {diff:>20}")
    return "\n".join(lines)


def next_commands(paths: dict[str, Path]) -> str:
    task = " ".join(f"--task-arg {k}={v}" for k, v in DEFAULT_TASK_OPTIONS.items())
    return ("\nnext:\n"
            f"  deliberate sweep --task arith {task} --model {paths['policy']} --verifier lprm:{paths['lprm']} \\\n"
            f"      --strategies majority,best_of_n,weighted,beam,mcts,dvts --budgets 4,16,64 --seeds 0,1,2 "
            f"--n-problems 300 --out runs/sweep   # a bigger sweep\n"
            f"  deliberate train rest-em --init {paths['policy']} --out runs/rest-em   # self-improvement\n"
            "  deliberate sweep --config configs/recipes/gsm8k-smollm2-cpu.yaml --n-problems 3 --out runs/sweep-smollm2"
            "   # the same on SmolLM2: GSM8K, GenRM (~10 min on 2 cores)")
