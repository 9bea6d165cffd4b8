"""``deliberate sweep``: strategies x budgets x seeds on a task, resumable, one summary and plots.

    deliberate sweep --task arith --backend tiny --model runs/quickstart/sft/model \\
        --verifier prm:runs/prm --strategies majority,best_of_n,weighted,beam,mcts \\
        --budgets 4,16 --seeds 0,1,2 --n-problems 100 --out runs/sweep

What it writes in ``--out`` (a rerun with the same flags resumes and skips everything on disk):

- ``config.json`` — the sweep's configuration and the fingerprint of the model's weights; a rerun with a
  different one, or with other weights under the same ``--model``, is refused. The sweep holds a lock on
  ``--out`` from before this first write to its end.
- ``pool.jsonl`` — for the strategies that select among full samples (majority, best_of_n, weighted:
  those with a ``select`` hook), ``max(budgets)`` full samples per problem and seed, drawn once (or
  taken from an earlier sweep or eval with ``--pool-from``: :mod:`deliberate.eval.sweep_pool`); every
  budget N calls the strategy's ``select`` on the first N of them.
- ``pool_scores.jsonl`` — the verifier's per-step scores of every pool sample (cached), its steps split
  as search splits them (the task's ``split_steps`` with the ``step_delimiter`` setting).
- ``results.jsonl`` — one :class:`~deliberate.types.SweepRow` per (problem, strategy, budget, seed):
  the selected answer, whether it is correct, whether any candidate was (the strategy's own ceiling),
  and its compute (``verifier_sequences``: the step prefixes the verifier scored, each counted once).
- ``table.parquet`` — one row per (problem, seed): question, gold, completions, per-step scores and
  ``pred_{maj,weighted,naive}@N`` as search-and-learn writes them (:mod:`deliberate.eval.sweep_table`).
- ``invocations.jsonl`` — what each invocation spent; ``summary.json``'s ``compute`` is their sum.
- ``trees.jsonl`` — the search trees of the tree strategies (first ``--trees-per-run`` problems).
- ``summary.json`` — a :class:`~deliberate.types.RunSummary`: ``{"task","model","seed","n_problems",
  "results":[{"strategy","n","accuracy","ci","n_problems","generated_tokens","prompt_tokens",
  "verifier_sequences","wall_s","pass_at_n","fraction_of_ceiling","accuracy_std","accuracy_per_seed",
  "own_ceiling"}],"extra":{...},"compute":{...},"config":{...},"kind":"sweep"}``; ``extra`` holds the
  compute-matched table, the token-bucket curve and, with ``--taste``, the verifier-noise curve.
- ``accuracy.png`` (accuracy vs N and vs generated tokens, every strategy, 95% CIs),
  ``token_buckets.png`` (plain sampling, accuracy per bucket of tokens used),
  ``taste.png`` with ``--taste 0,0.5,1,2`` (best-of-N with verifiers of known noise vs N, against pass@N;
  off unless asked, as it samples a full pool even for a beam-only sweep).

Search settings: ``--preset instruct`` (:mod:`deliberate.search.presets`) for instruct models, then
``--setting`` over it; ``config.json`` records the settings the sweep ran with (``search_settings``).
Majority votes and their ties follow :mod:`deliberate.eval.metrics`' rule (the answer voted first).

Accuracy is averaged over seeds per problem, then over problems; CIs bootstrap over problems.
pass@N (the ceiling of any selection at N) is the unbiased estimator over the pool's samples.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deliberate.errors import DeliberateError
from deliberate.eval.metrics import bootstrap_ci, pass_at_k
from deliberate.eval.plots import plot_sweep
from deliberate.eval.invocations import record_invocation
from deliberate.eval.sweep_curves import compute_matched, taste_curve, token_buckets
from deliberate.eval.sweep_pool import copy_pool, load_pool, sample_pool, score_pool
from deliberate.eval.sweep_table import table_rows, write_table
from deliberate.fingerprint import FINGERPRINT_KEY, check_fingerprint, model_fingerprint
from deliberate.records import JsonlAppender, lock_out_dir, write_json_atomic
from deliberate.executor import LocalExecutor, chunks, progress_bar
from deliberate.models.base import Backend
from deliberate.rewards.base import RUNTIME_OPTIONS, Verifier, aggregate, check_verifier_options, get_verifier
from deliberate.search.base import (
    Candidate,
    SearchContext,
    SearchSettings,
    Strategy,
    get_strategy,
    new_prefixes,
    run_search,
    strategy_names,
)
from deliberate.search.presets import PRESETS, preset_settings
from deliberate.tasks.base import Task, get_task
from deliberate.types import SWEEP_ROW_KEYS, Problem, ResultRow, RunSummary, SweepRow

log = logging.getLogger(__name__)
#: verifier kinds trained on outcome labels (scored at every step end, meant to be read at the last)
OUTCOME_VERIFIERS = ("orm", "lorm", "hf-orm")


@dataclass(frozen=True)
class SweepConfig:
    task: str
    out_dir: str
    strategies: tuple[str, ...] = ("majority", "best_of_n", "weighted", "beam")
    budgets: tuple[int, ...] = (4, 16)
    seeds: tuple[int, ...] = (0,)
    n_problems: int = 100
    split: str = "test"
    problem_seed: int = 0
    task_options: dict[str, Any] = field(default_factory=dict)
    verifier: str | None = None
    # the verifier's options (--verifier-arg), e.g. {"device": "cuda"} or {"positive_label": 1} for hf-prm
    verifier_args: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # SearchSettings overrides (n and seed are set per run)
    preset: str | None = None  # a model preset (search/presets.py), e.g. "instruct"; `settings` override it
    batch_problems: int = 50
    taste_sigmas: tuple[float, ...] = ()  # off unless asked: it samples a full pool even for beam-only sweeps
    trees_per_run: int = 20
    pool_from: str | None = None  # reuse the sample pool of an earlier sweep (same task, problems, sampling)

    def __post_init__(self) -> None:
        valid = strategy_names()
        bad = [s for s in self.strategies if s not in valid]
        if bad:
            raise DeliberateError(f"unknown strategy {bad[0]!r}; valid: {', '.join(valid)}")
        if not self.strategies:
            raise DeliberateError("--strategies is empty")
        if not self.budgets or any(not isinstance(b, int) or b < 1 for b in self.budgets):
            raise DeliberateError(f"budgets must be integers >= 1 (got {self.budgets!r})")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise DeliberateError(f"seeds must be integers >= 0 (got {self.seeds!r})")
        for name in ("n_problems", "batch_problems"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DeliberateError(f"{name} must be an integer >= 1 (got {v!r})")
        if not isinstance(self.trees_per_run, int) or self.trees_per_run < 0:
            raise DeliberateError(f"trees_per_run must be an integer >= 0 (got {self.trees_per_run!r})")
        if any(not isinstance(s, (int, float)) or not 0 <= s < float("inf") for s in self.taste_sigmas):
            raise DeliberateError(f"taste sigmas must be finite numbers >= 0 (got {self.taste_sigmas!r})")
        if self.preset is not None and self.preset not in PRESETS:
            raise DeliberateError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        SearchSettings(**self.search_settings())  # validate the overrides now, before any model loads
        if self.verifier_args and not self.verifier:
            raise DeliberateError("--verifier-arg needs --verifier")
        if self.verifier:
            check_verifier_options(self.verifier, self.verifier_args)

    def search_settings(self) -> dict[str, Any]:
        """The search settings the sweep runs with: the preset's (if any), then ``settings`` over them."""
        return {**(preset_settings(self.preset, self.verifier) if self.preset else {}), **self.settings}

    def verifier_options(self) -> dict[str, Any]:
        """``verifier_args``, plus the generator's prompt style when the sweep sets one (``--preset`` or
        ``--setting prompt_style=``), the verifier reads problems through a prompt style, and
        ``--verifier-arg prompt_style=`` does not say otherwise: one prompt-style setting for generator and
        verifier, so the verifier scores the text the generator answered. ``dpo`` keeps the style its
        ``dpo.json`` records (the one it was trained with)."""
        opts = dict(self.verifier_args)
        style = self.search_settings().get("prompt_style")
        if not self.verifier or style is None or "prompt_style" in opts or self.verifier.startswith("dpo:"):
            return opts
        try:
            check_verifier_options(self.verifier, {"prompt_style": style})
        except DeliberateError:  # this verifier has no prompt style (e.g. oracle, published chat PRMs)
            return opts
        return {**opts, "prompt_style": style}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------

def run_sweep(config: SweepConfig, backend: Backend | None = None, task: Task | None = None,
              verifier: Verifier | None = None, progress: bool = True, executor=None, extras: bool = True) -> dict:
    """Run (or resume) the sweep. The work runs on ``executor`` (``deliberate.executor``: Ray workers
    or this process); by default in this process on ``backend``. Only this process writes records.
    ``extras=False`` skips ``table.parquet`` and the plots (a caller that merges sweeps draws its own)."""
    task = task or get_task(config.task, **config.task_options)
    if verifier is None and config.verifier and executor is None:
        verifier = get_verifier(config.verifier, task=task, **config.verifier_options())
    if executor is None:
        if backend is None:
            raise DeliberateError("run_sweep needs a backend or an executor")
        executor = LocalExecutor(backend, task, verifier)
    with lock_out_dir(config.out_dir) as out:  # before the first write: one sweep per directory
        return _run_sweep_locked(config, executor, task, verifier, out, progress, extras)


def _run_sweep_locked(config: SweepConfig, executor, task: Task, verifier: Verifier | None, out: Path,
                      progress: bool, extras: bool = True) -> dict:
    meta = {**config.to_dict(), "search_settings": config.search_settings(),
            "verifier_options": config.verifier_options(), "model": executor.model_name(),
            FINGERPRINT_KEY: model_fingerprint(executor)}
    cfg_path = out / "config.json"
    check_resume(out, meta)
    write_json_atomic(cfg_path, meta)
    problems = list(task.problems(config.split, config.n_problems, config.problem_seed))
    if not problems:
        raise DeliberateError(f"task {config.task!r} has no {config.split!r} problems")
    base = SearchSettings(**config.search_settings())
    max_tokens = base.max_tokens or task.max_tokens
    t_start = time.perf_counter()
    spent = {"generated_tokens": 0, "prompt_tokens_sent": 0, "backend_calls": 0}
    counters0 = executor.counters()

    chosen = {s: get_strategy(s) for s in config.strategies}
    pooled = [s for s in config.strategies if chosen[s].selects_from_pool]
    pool_needed = bool(pooled) or bool(config.taste_sigmas)
    pool_n = max(config.budgets)
    if pool_needed and config.pool_from:
        copy_pool(Path(config.pool_from), out, meta, task, problems, config.seeds, pool_n)
    if pool_needed:
        sample_pool(config.seeds, executor, task, problems, base, max_tokens, pool_n, out, spent, progress)
    pool = load_pool(out, problems, config.seeds, pool_n) if pool_needed else {}
    pool_scores: dict[tuple[str, int, int], list[float]] = {}
    have_verifier = verifier is not None or bool(config.verifier)
    if pool_needed and have_verifier and any(chosen[s].needs_verifier(base) for s in pooled):
        pool_scores = score_pool(out, task, problems, pool, base.step_delimiter, executor, progress)

    results_path = out / "results.jsonl"
    def run_key(r: dict) -> tuple:
        return (r["problem_id"], r["strategy"], r["n"], r["seed"])

    def check_row(row: dict, where: str) -> None:
        SweepRow.from_dict(row, where)

    with JsonlAppender(results_path, key=run_key, validate=check_row) as rf, \
            JsonlAppender(out / "trees.jsonl", key=run_key) as tf:
        done = rf.rows
        # strategies that select among full samples: their `select` on the pool (no new generation)
        for strategy in pooled:
            for seed in config.seeds:
                rows = []
                for n in config.budgets:
                    for p in problems:
                        key = (p.id, strategy, n, seed)
                        if key in done:
                            continue
                        rows.append(_pool_row(task, p, strategy, chosen[strategy], n, seed, pool, pool_scores,
                                              base))
                rf.append(r.to_dict() for r in rows)
        # search strategies: run per (budget, seed) over batches of problems; one unit = one batch
        runs = [(s, n, seed) for s in config.strategies if s not in pooled
                for n in config.budgets for seed in config.seeds]
        units = []
        for strategy, n, seed in runs:
            todo = [p for p in problems if (p.id, strategy, n, seed) not in done]
            units += [SearchUnit(strategy, n, seed, tuple(chunk), replace(base, n=n, seed=seed))
                      for chunk in chunks(todo, config.batch_problems)]
        first_trees = {p.id for p in problems[:config.trees_per_run]}
        with progress_bar(sum(len(u.problems) for u in units), "sweep search", "problem", progress) as bar:
            def write(u: SearchUnit, got) -> None:
                res, (gen, sent, calls) = got
                spent["generated_tokens"] += gen
                spent["prompt_tokens_sent"] += sent
                spent["backend_calls"] += calls
                rows, trees = [], []
                for p, r in zip(u.problems, res):
                    row = SweepRow(problem_id=p.id, strategy=u.strategy, n=u.n, seed=u.seed, answer=r.answer,
                                   gold=p.answer, correct=bool(task.is_correct(r.answer, p)),
                                   any_correct=any(task.is_correct(c.answer, p) for c in r.candidates),
                                   candidates=len(r.candidates), generated_tokens=r.generated_tokens,
                                   prompt_tokens=r.prompt_tokens, model_calls=r.model_calls,
                                   verifier_sequences=r.verifier_sequences, wall_s=r.wall_s, text=r.text)
                    if r.tree is not None and p.id in first_trees:
                        trees.append({"problem_id": p.id, "strategy": u.strategy, "n": u.n, "seed": u.seed,
                                      "question": p.question, "gold": p.answer, "nodes": r.tree})
                    rows.append(row.to_dict())
                tf.append(trees)  # trees first: a kill in between reruns the batch, never loses a tree
                rf.append(rows)
                bar.update(len(u.problems))

            executor.map(_search_unit, units, write)

    compute = {**spent, "wall_s": time.perf_counter() - t_start}
    counters1 = executor.counters()
    if "engine" in counters1:
        e0 = counters0.get("engine", {})
        compute["engine"] = {k: v - e0.get(k, 0) for k, v in counters1["engine"].items()}
    if verifier is not None and executor.name == "local":
        compute["verifier"] = verifier.stats.to_dict()
    elif "verifier" in counters1:
        compute["verifier"] = counters1["verifier"]
    compute["executor"] = {"name": executor.name, **executor.stats}
    compute = record_invocation(out, compute)  # the sum over every invocation of this sweep
    rows = {k: SweepRow.from_dict(r, str(results_path)) for k, r in done.items()}
    summary = summarize(config, task, problems, rows, pool, meta["model"], compute, have_verifier).to_dict()
    if extras:
        write_table(out, table_rows(task, problems, config.seeds, config.budgets, base, pool, pool_scores, rows,
                                    config.strategies))
    write_json_atomic(out / "summary.json", summary)
    if extras:
        plot_sweep(summary, out)
    return summary


#: config entries a rerun into the same --out must match (budgets, seeds, strategies and n_problems may grow;
#: of ``verifier_args`` only the options that change scores count, see :func:`_scoring_args`)
IDENTITY = ("task", "task_options", "split", "problem_seed", "verifier", "verifier_args", "settings", "preset",
            "model")


def _scoring_args(cfg: dict[str, Any]) -> dict[str, Any]:
    """The verifier options of a sweep config that change what it scores: not device / dtype / batch size
    (a resumed sweep may move its verifier to a GPU), and ``{}`` for configs written before the field."""
    return {k: v for k, v in (cfg.get("verifier_args") or {}).items() if k not in RUNTIME_OPTIONS}


def check_resume(out: Path, meta: dict[str, Any], keys: Sequence[str] = IDENTITY) -> None:
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        return
    try:
        old = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeliberateError(f"{cfg_path}: unreadable config of an earlier run ({e})") from None
    if not isinstance(old, dict):
        raise DeliberateError(f"{cfg_path}: unreadable config of an earlier run (not a JSON object)")
    def value(cfg: dict[str, Any], k: str) -> Any:  # as JSON holds it (a tuple now is a list on disk)
        return json.loads(json.dumps(_scoring_args(cfg) if k == "verifier_args" else cfg.get(k), default=str))

    diffs = [f"{k}: {value(old, k)!r} on disk vs {value(meta, k)!r} now" for k in keys
             if value(old, k) != value(meta, k)]
    if diffs:
        raise DeliberateError(f"{out} holds a sweep with a different config ({'; '.join(diffs)}); "
                              "use a new --out directory")
    if FINGERPRINT_KEY in meta:  # absent in the CLI's early check, made before the model loads
        check_fingerprint(old, meta[FINGERPRINT_KEY], out, meta.get("model"))


@dataclass(frozen=True)
class SearchUnit:
    """One search strategy at budget ``n`` and ``seed`` over one batch of problems."""

    strategy: str
    n: int
    seed: int
    problems: tuple[Problem, ...]
    settings: SearchSettings


def _search_unit(worker, u: SearchUnit):
    ctx = SearchContext(worker.backend, worker.task, u.settings, worker.verifier)
    res = run_search(u.strategy, list(u.problems), ctx)
    return res, (ctx.generated, ctx.prompt_sent, ctx.calls)


def _pool_row(task, p: Problem, strategy: str, chooser: Strategy, n: int, seed: int, pool, pool_scores,
              settings: SearchSettings) -> SweepRow:
    """``strategy`` at budget ``n``: its ``select`` over the first ``n`` pool samples."""
    recs = pool[(p.id, seed)][:n]
    needs_verifier = chooser.needs_verifier(settings)
    cands = []
    for j, r in enumerate(recs):
        sc = pool_scores.get((p.id, seed, j))
        cands.append(Candidate(r.text, task.split_steps(r.text, settings.step_delimiter), r.answer,
                               None if sc is None else aggregate(sc, settings.aggregation)))
    if needs_verifier and any(c.score is None for c in cands):
        raise DeliberateError(f"strategy {strategy!r} needs a verifier (--verifier ...)")
    best = chooser.select(task, p, cands)
    seen: set[tuple[str, ...]] = set()  # the step prefixes the verifier scored, each counted once (as search)
    scored = sum(new_prefixes(seen, c.steps) for c in cands) if needs_verifier else 0
    return SweepRow(problem_id=p.id, strategy=strategy, n=n, seed=seed, answer=best.answer if best else None,
                    gold=p.answer, correct=bool(best is not None and task.is_correct(best.answer, p)),
                    any_correct=any(r.correct for r in recs), candidates=n,
                    generated_tokens=sum(r.completion_tokens for r in recs),
                    prompt_tokens=sum(r.prompt_tokens for r in recs), model_calls=1,
                    verifier_sequences=scored,
                    wall_s=sum(r.wall_s for r in recs), text=best.text if best else "")


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------

def summarize(config: SweepConfig, task: Task, problems: Sequence[Problem], rows: dict[tuple, SweepRow],
              pool: dict, model: str, compute: dict, have_verifier: bool) -> RunSummary:
    P = len(problems)
    pool_n = max(config.budgets)
    results = []
    # the ceiling: pass@N from the pool (unbiased over its samples), per problem averaged over seeds
    ceiling: dict[int, list[float]] = {}
    if pool:
        for n in config.budgets:
            ceiling[n] = [float(np.mean([pass_at_k(pool_n, sum(r.correct for r in pool[(p.id, s)]), n)
                                         for s in config.seeds])) for p in problems]
            results.append(_row("pass@n", n, ceiling[n], config, problems, pool=pool))
    for strategy in config.strategies:
        for n in config.budgets:
            got = [[rows[(p.id, strategy, n, s)] for s in config.seeds] for p in problems]
            acc = [float(np.mean([r.correct for r in g])) for g in got]
            per_seed = [float(np.mean([rows[(p.id, strategy, n, s)].correct for p in problems]))
                        for s in config.seeds]
            spread = {"accuracy_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                      "accuracy_per_seed": per_seed,
                      "own_ceiling": float(np.mean([np.mean([r.any_correct for r in g]) for g in got]))}
            results.append(_row(strategy, n, acc, config, problems, rows=got,
                                ceiling=float(np.mean(ceiling[n])) if n in ceiling else None, **spread))
    extra: dict[str, Any] = {"compute_matched": compute_matched(results)}
    if pool:
        extra["token_buckets"] = token_buckets(pool)
    if pool and config.taste_sigmas:
        extra["taste"] = taste_curve(task, problems, pool, budgets=config.budgets, seeds=config.seeds,
                                     sigmas=config.taste_sigmas,
                                     delimiter=SearchSettings(**config.search_settings()).step_delimiter,
                                     noise_seed=config.problem_seed)
    return RunSummary(task=config.task, model=model, seed=tuple(config.seeds), n_problems=P, results=tuple(results),
                      extra=extra, compute=compute, config=config.to_dict(), kind="sweep")


def _row(strategy: str, n: int, values: Sequence[float], config: SweepConfig, problems, rows=None, pool=None,
         ceiling: float | None = None, **spread: Any) -> ResultRow:
    """A summary row from per-problem ``values``, with its compute from ``rows`` (a strategy) or ``pool``
    (pass@n), its pass@N ``ceiling`` when the sweep has a pool, and ``spread`` over seeds."""
    lo, hi = bootstrap_ci(values, seed=config.problem_seed)
    accuracy = float(np.mean(values))
    fields: dict[str, Any] = {"n_problems": len(values)}
    S = len(config.seeds)
    if rows is not None:
        for k in ("generated_tokens", "prompt_tokens", "verifier_sequences", "wall_s"):
            fields[k] = float(sum(getattr(r, k) for g in rows for r in g) / S)  # per seed, summed over problems
    elif pool is not None:  # pass@n: the tokens of n samples
        fields["generated_tokens"] = float(sum(sum(r.completion_tokens for r in pool[(p.id, s)][:n])
                                               for p in problems for s in config.seeds) / S)
        fields["wall_s"] = float(sum(sum(r.wall_s for r in pool[(p.id, s)][:n]) for p in problems
                                     for s in config.seeds) / S)
    if ceiling is not None:  # fraction_of_ceiling is written as null when the ceiling is 0
        fields.update(pass_at_n=ceiling, fraction_of_ceiling=accuracy / ceiling if ceiling > 0 else None)
    fields.update(spread)
    keys = tuple(k for k in SWEEP_ROW_KEYS if k in ("strategy", "n", "accuracy", "ci") or k in fields)
    return ResultRow(strategy=strategy, n=n, accuracy=accuracy, ci=(lo, hi), **fields, keys=keys)
