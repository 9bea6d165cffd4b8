"""``deliberate sweep``: search strategies x budgets x seeds on a task, resumable (see :mod:`deliberate.eval.sweep`).

    deliberate sweep --task arith --model runs/quickstart/sft/model --verifier oracle \\
        --strategies majority,best_of_n,beam --budgets 4,16 --out runs/sweep
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from deliberate.cli.common import (
    add_backend_arguments,
    add_executor_arguments,
    backend_from_args,
    backend_spec_from_args,
    ray_options,
)
from deliberate.cli.config_file import write_run_config
from deliberate.cli.flags import ConfigFlags
from deliberate.errors import DeliberateError
from deliberate.eval.sweep import IDENTITY, OUTCOME_VERIFIERS, SweepConfig, check_resume, run_sweep
from deliberate.executor import RayExecutor, WorkerSpec
from deliberate.models.base import parse_kv
from deliberate.rewards.base import get_verifier, verifier_kinds
from deliberate.search.base import SearchSettings, get_strategy, strategy_names
from deliberate.search.presets import PRESETS
from deliberate.tasks.base import Task, get_task

log = logging.getLogger("deliberate.eval.sweep")  # the sweep's own warnings, under its logger's name


def format_table(summary: dict) -> str:
    w = max([11] + [len(r["strategy"]) for r in summary["results"]])  # plug-in strategies may have long names
    lines = [f"{summary['task']} | {summary['model']} | seeds {summary['seed']} | {summary['n_problems']} problems",
             (f"{'strategy':<{w}} {'N':>4} {'accuracy':>9} {'95% CI':>16} {'/pass@N':>8} {'tokens/prob':>12} "
              f"{'verif/prob':>10}")]
    P = max(1, summary["n_problems"])
    for r in summary["results"]:
        lo, hi = r["ci"]
        frac = r.get("fraction_of_ceiling")
        lines.append(f"{r['strategy']:<{w}} {r['n']:>4} {r['accuracy']:>9.3f} {f'[{lo:.3f},{hi:.3f}]':>16} "
                     f"{(f'{frac:.2f}' if frac is not None else '-'):>8} "
                     f"{r.get('generated_tokens', 0) / P:>12.1f} {r.get('verifier_sequences', 0) / P:>10.1f}")
    return "\n".join(lines)

def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    raw = parse_kv(items, "--setting")
    valid = {f for f in SearchSettings.__dataclass_fields__}
    out = {}
    for k, v in raw.items():
        if k not in valid:
            raise DeliberateError(f"unknown --setting {k!r}; valid: {', '.join(sorted(valid))}")
        if k in ("n", "seed"):
            raise DeliberateError(f"--setting {k} is set by --budgets/--seeds")
        if k in ("step_delimiter", "reflection_cue") and isinstance(v, str):
            v = v.replace("\\n", "\n").replace("\\t", "\t")  # --setting 'step_delimiter=\n\n'
        out[k] = v
    return out

def parse_verifier_args(items: Sequence[str]) -> dict[str, Any]:
    """``--verifier-arg`` values: ``\\n`` / ``\\t`` in ``separator`` and ``cue`` become newline / tab
    (``separator='\\n\\n'``), and GenRM's ``answers=Yes,No`` becomes a pair."""
    out = parse_kv(items, "--verifier-arg")
    for k in ("separator", "cue"):
        if isinstance(out.get(k), str):
            out[k] = out[k].replace("\\n", "\n").replace("\\t", "\t")
    if "answers" in out:
        out["answers"] = tuple(str(out["answers"]).split(","))
    return out

#: ``deliberate sweep``'s flags: :class:`SweepConfig`'s fields (backend and executor: :mod:`deliberate.cli.common`)
FLAGS = ConfigFlags(
    SweepConfig,
    helps={
        "task": "task name, e.g. arith, mawps, gym:<name>",
        "task_options": "task option (repeatable)",
        "strategies": lambda: f"comma-separated, from: {', '.join(strategy_names())}",
        "budgets": "budgets N, comma-separated",
        "seeds": "sampling seeds, comma-separated",
        "n_problems": "problems",
        "problem_seed": "seed of the generated problems",
        "verifier": lambda: ("verifier spec KIND[:ARG], e.g. prm:DIR, lprm:DIR, hf-prm:DIR, dpo:DIR, oracle, "
                             f"noisy:SIGMA; kinds: {', '.join(verifier_kinds())}"),
        "verifier_args": ("verifier option (repeatable): device=cuda (learned verifiers; default auto), batch_size=N, "
                          "dtype=bfloat16 (hf-prm, hf-orm, genrm); hf-prm/hf-orm also separator=..., "
                          "positive_label=N, prompt_style=instruct"),
        "settings": ("search setting (repeatable), e.g. expansions=4, aggregation=last, temperature=0.8, "
                     "prompt_style=instruct, mcts_value=rollout"),
        "batch_problems": "problems searched together",
        "taste_sigmas": "noise levels of the taste curve, e.g. 0,0.5,1,2 (default: none; it samples a full pool)",
        "preset": lambda: ("model preset: search settings for a kind of generator, aggregation per the verifier's "
                           f"card; --setting overrides it ({', '.join(PRESETS)})"),
        "trees_per_run": "search trees kept per (strategy, N, seed)",
        "pool_from": ("reuse the samples of an earlier sweep or eval run (e.g. to compare verifiers on the same "
                      "samples)"),
        "out_dir": "output directory; rerun with the same one to resume (default: runs/sweep-<task>-<timestamp>)",
    },
    names={"out_dir": "out", "verifier_args": "verifier_arg", "settings": "setting", "taste_sigmas": "taste"},
    choices={"split": ("train", "test"), "preset": tuple(PRESETS)},
    metavars={"pool_from": "RUN_DIR"},
    defaults={"out_dir": None},
    readers={"verifier_args": parse_verifier_args, "settings": parse_settings},
    threads=None,
)


def add_arguments(parser) -> None:
    FLAGS.add_to(parser)
    add_backend_arguments(parser)
    add_executor_arguments(parser)


def make_executor(args, config: SweepConfig, task: Task | None = None):
    """The executor the CLI flags ask for: ``None`` for in-process (the caller builds the backend),
    or a :class:`~deliberate.executor.RayExecutor` whose workers build their own."""
    opts = ray_options(args)
    if opts is None:
        return None
    name, kwargs = backend_spec_from_args(args)
    spec = WorkerSpec(backend=name, backend_kwargs=kwargs, task=config.task, task_options=dict(config.task_options),
                      verifier=partial(get_verifier, config.verifier, **config.verifier_options()) if config.verifier else None)
    return RayExecutor(spec, **opts)


def main(args) -> int:
    out = args.out or f"runs/sweep-{args.task.replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out = out  # config.yaml names the directory this run went to
    config = FLAGS.config(args, out_dir=out)
    task = get_task(config.task, **config.task_options)
    task.problems(config.split, config.n_problems, config.problem_seed)  # bad data fails before a model loads
    chosen = {s: get_strategy(s) for s in config.strategies}
    if config.pool_from and not any((Path(config.pool_from) / f).is_file() for f in ("pool.jsonl", "records.jsonl")):
        raise DeliberateError(f"--pool-from {config.pool_from}: neither pool.jsonl nor records.jsonl there "
                              "(not a sweep or eval output directory)")
    settings = SearchSettings(**config.search_settings())
    needs = [s for s, strategy in chosen.items() if strategy.needs_verifier(settings)]
    if needs and not config.verifier:
        raise DeliberateError(f"strategies {', '.join(sorted(needs))} need --verifier")
    if unused := sorted(set(config.settings) - {k for strategy in chosen.values() for k in strategy.uses}):
        log.warning("--setting %s: none of the strategies %s reads it", ", ".join(unused), ",".join(chosen))
    kind, aggregation = (config.verifier or "").split(":", 1)[0], settings.aggregation
    if kind in OUTCOME_VERIFIERS and aggregation != "last":
        log.warning("%s: is an outcome verifier: it scores every step prefix as a finished solution, and "
                    "aggregation=%s combines those prefix scores; --setting aggregation=last selects by the whole "
                    "solution's score, as an ORM is meant to be used", kind, aggregation)
    # resuming into the directory of a different sweep fails before a model loads (the model: once loaded)
    check_resume(Path(out), config.to_dict(), keys=[k for k in IDENTITY if k != "model"])
    executor = make_executor(args, config, task)
    if executor is not None:
        try:
            summary = run_sweep(config, task=task, executor=executor)
        finally:
            executor.close()
    else:
        verifier = get_verifier(config.verifier, task=task, **config.verifier_options()) if config.verifier else None
        backend = backend_from_args(args)
        try:
            summary = run_sweep(config, backend, task=task, verifier=verifier)
        finally:
            backend.close()
    write_run_config(out, args)
    print(format_table(summary))
    print(f"wrote {Path(out) / 'summary.json'}, results.jsonl, plots; `deliberate report {out}` for the HTML report")
    return 0
