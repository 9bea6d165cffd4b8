"""The ``eval`` job: sample n completions per problem, then report pass@k, maj@k and greedy accuracy.

One sampling pass gives the whole inference-scaling curve: for every k in ``ns`` the unbiased
pass@k and maj@k estimators (``deliberate.eval.metrics``) are computed from the same n samples
(and, for tasks with a step checker, process-pass@k: pass@k over right answers reached through right steps),
with 95% bootstrap intervals over problems, and each row carries the compute it stands for.
Every sample is written to ``<out>/records.jsonl`` the moment it exists, so a killed run resumes
where it stopped (the seeding contract regenerates identical samples). A run holds a lock on ``<out>``
from before its first write, and a resume is refused when the model's weights changed since the run
started (``config.json`` keeps their fingerprint).

    deliberate eval --task arith --n-problems 100 --n 16 --out runs/eval-arith

Outputs in ``<out>``: ``config.json``, ``records.jsonl``, ``summary.json``, ``accuracy_vs_n.png``,
``accuracy_vs_tokens.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from deliberate.errors import DeliberateError
from deliberate.eval import plots  # the module, not its names: tests replace its functions
from deliberate.eval.invocations import record_invocation
from deliberate.eval.metrics import bootstrap_ci, maj_at_k, pass_at_k
from deliberate.executor import progress_bar
from deliberate.fingerprint import FINGERPRINT_KEY, check_fingerprint, model_fingerprint
from deliberate.records import (
    RecordWriter,
    load_records,
    lock_out_dir,
    write_json_atomic,
)
from deliberate.models.base import Backend
from deliberate.models.sampling import SamplingParams
from deliberate.progress import SampleTicks
from deliberate.tasks.base import SPLITS, Task, get_task
from deliberate.types import EVAL_ROW_KEYS, Compute, Problem, ResultRow, RunSummary, SampleRecord

log = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"

#: config.json entries that decide what the samples are; a rerun into the same directory must match
#: them. (n, n_problems, ns, greedy and batch_size may change: the seeding contract makes sample j of
#: problem i the same whatever n or the batch, and problems are a prefix-stable list, so a rerun with
#: a larger n or n_problems extends the run instead of mixing two.)
IDENTITY = ("task", "task_options", "split", "temperature", "top_p", "max_tokens", "seed", "prompt_style",
            "model")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def default_ns(n: int) -> tuple[int, ...]:
    """Powers of two up to ``n``, plus ``n`` itself (the most precise estimate) when it is not one."""
    ks = [2 ** i for i in range(int(math.log2(n)) + 1) if 2 ** i <= n]
    return tuple(ks + ([n] if ks[-1] != n else []))


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how; ``out_dir`` (keyword) is where records and the summary go."""

    task: str
    task_options: Mapping[str, Any] = field(default_factory=dict)
    split: str = "test"
    n_problems: int = 100
    n: int = 16  # samples per problem
    ns: tuple[int, ...] | None = None  # the k of pass@k / maj@k; None -> powers of two up to n
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None  # None -> the task's default
    seed: int = 0
    prompt_style: str = "plain"
    greedy: bool = True  # also one greedy sample per problem
    batch_size: int = 16  # problems per backend call
    out_dir: str = field(kw_only=True)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.task, str) or not self.task:
            problems.append(f"task must be a task name (got {self.task!r})")
        if not isinstance(self.task_options, Mapping) or not all(isinstance(k, str) for k in self.task_options):
            problems.append(f"task_options must be a mapping with string keys (got {self.task_options!r})")
        else:
            object.__setattr__(self, "task_options", dict(self.task_options))
            try:
                json.dumps(self.task_options)
            except (TypeError, ValueError):
                problems.append(f"task_options must be JSON values (got {self.task_options!r})")
        if self.split not in SPLITS:
            problems.append(f"split must be one of {', '.join(SPLITS)} (got {self.split!r})")
        for name in ("n_problems", "n", "batch_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if self.ns is None:
            if _is_int(self.n) and self.n >= 1:
                object.__setattr__(self, "ns", default_ns(self.n))
        else:
            try:
                ns = tuple(self.ns)
            except TypeError:
                ns = (self.ns,)
            if not ns or not all(_is_int(k) for k in ns):
                problems.append(f"ns must be a non-empty list of integers (got {self.ns!r})")
            else:
                bad = [k for k in ns if not (1 <= k <= (self.n if _is_int(self.n) else 0))]
                if bad:
                    problems.append(f"every k in ns must be in [1, n={self.n}] (got {', '.join(map(str, bad))}): "
                                    f"pass@k and maj@k need n >= k samples")
                object.__setattr__(self, "ns", tuple(sorted(set(ns))))
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be a finite number >= 0 (got {self.temperature!r})")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            problems.append(f"max_tokens must be None or an integer >= 1 (got {self.max_tokens!r})")
        if not _is_int(self.seed) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0 (got {self.seed!r})")
        if not isinstance(self.prompt_style, str) or not self.prompt_style:
            problems.append(f"prompt_style must be a non-empty string (got {self.prompt_style!r})")
        if not isinstance(self.greedy, bool):
            problems.append(f"greedy must be True or False (got {self.greedy!r})")
        if isinstance(self.out_dir, Path):
            object.__setattr__(self, "out_dir", str(self.out_dir))
        if not isinstance(self.out_dir, str) or not self.out_dir:
            problems.append(f"out_dir must be a directory path (got {self.out_dir!r})")
        if problems:
            raise DeliberateError("invalid eval config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ns"] = list(self.ns)
        return d


# --- sampling -----------------------------------------------------------------------------------

def _generate(backend: Backend, task: Task, problems: Sequence[Problem], prompts: Sequence[str],
              idxs: Sequence[int], params: SamplingParams, strategy: str, writer: RecordWriter) -> tuple[Compute, int]:
    """One backend call for problems ``idxs``; write the records not yet on disk. Returns (compute, rows)."""
    t0 = time.perf_counter()
    outs = backend.generate([prompts[i] for i in idxs], params)
    dt = time.perf_counter() - t0
    if len(outs) != len(idxs) or any(len(row) != params.n for row in outs):
        raise DeliberateError(f"backend {backend.model_name!r} returned {[len(r) for r in outs]} completions "
                              f"for {len(idxs)} prompts x n={params.n}")
    share = dt / (len(idxs) * params.n)  # each sample's share of the call's wall time
    records = []
    for i, comps in zip(idxs, outs):
        p = problems[i]
        for j, c in enumerate(comps):
            if (p.id, strategy, j) in writer:
                continue  # already on disk from an earlier (interrupted) run
            s = task.parse(c)
            records.append(SampleRecord(
                problem_id=p.id, strategy=strategy, index=j, seed=params.seed, text=c.text, answer=s.answer,
                gold=p.answer, correct=bool(task.is_correct(s.answer, p)), prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens, finish_reason=c.finish_reason, wall_s=share))
    written = writer.append(records, on_duplicate="error")
    spent = Compute(generated_tokens=sum(c.completion_tokens for row in outs for c in row),
                    prompt_tokens=sum(c.prompt_tokens for row in outs for c in row), model_calls=1, wall_s=dt)
    return spent, written


def check_config(out: Path, meta: dict[str, Any], keys: Sequence[str] = IDENTITY) -> None:
    path = out / CONFIG_FILE
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeliberateError(f"{path}: unreadable config of an earlier run ({e})") from None
    if not isinstance(old, dict):
        raise DeliberateError(f"{path}: unreadable config of an earlier run (not a JSON object)")
    diffs = [f"{k}: {old.get(k)!r} on disk vs {meta[k]!r} now" for k in keys if old.get(k) != meta[k]]
    if diffs:
        raise DeliberateError(f"{out} holds a run with a different config ({'; '.join(diffs)}); "
                              f"use a new --out directory rather than mixing runs")
    if FINGERPRINT_KEY in meta:  # absent in the CLI's early check, made before the model loads
        check_fingerprint(old, meta[FINGERPRINT_KEY], out, meta.get("model"))


def run_eval(config: EvalConfig, backend: Backend, task: Task | None = None, progress: bool = True) -> dict:
    """Sample, record, score; return the summary (also written to ``<out_dir>/summary.json``).

    Summary (:class:`~deliberate.types.RunSummary` as a dict): ``{"task", "model", "seed", "results",
    "compute", "config"}``. ``results`` has one row
    ``{"strategy", "n", "accuracy", "ci", "generated_tokens", "wall_s", "n_problems"}`` for
    "greedy" (n=1), "sample" (mean single-sample accuracy, n=1), and "pass@k" and "maj@k" for each
    k in ``config.ns`` (mean over problems of the unbiased per-problem estimator; ``ci`` is the 95%
    bootstrap interval over problems); for a task with a step checker also "process-pass@k", pass@k
    counting only right answers whose every step passes the checker (the ceiling of any process
    verifier's selection: right answers after wrong steps are lucky). Row compute is computed from the
    records, so a resumed run reports the same numbers as an uninterrupted one: ``generated_tokens``
    is the expected tokens the strategy generates over all problems (k x the problem's mean tokens per sample, summed;
    greedy: its actual tokens); ``wall_s`` is the measured time of the greedy calls, and for sampled
    strategies the sampling time prorated by k/n (each sample is charged an equal share of its
    call's time). ``compute`` is what the run's invocations spent together (backend calls, tokens, wall
    time, samples regenerated and discarded on resume included; ``invocations`` counts them, see
    :mod:`deliberate.eval.invocations`).

    The whole run holds :func:`~deliberate.records.lock_out_dir` on ``out_dir``; ``config.json`` records
    the weights' :func:`~deliberate.fingerprint.model_fingerprint`, and a resume with other weights is refused.
    """
    if task is None:
        task = get_task(config.task, **config.task_options)
    with lock_out_dir(config.out_dir) as out:
        return _run_eval_locked(config, backend, task, out, progress)


def _run_eval_locked(config: EvalConfig, backend: Backend, task: Task, out: Path, progress: bool) -> dict:
    max_tokens = config.max_tokens if config.max_tokens is not None else task.max_tokens
    stop = tuple(task.stop)
    meta = {**config.to_dict(), "max_tokens": max_tokens, "model": backend.model_name, "stop": list(stop),
            FINGERPRINT_KEY: model_fingerprint(backend)}
    check_config(out, meta)
    write_json_atomic(out / CONFIG_FILE, meta)

    problems = list(task.problems(config.split, config.n_problems, config.seed))
    if not problems:
        raise DeliberateError(f"task {config.task!r} has no {config.split!r} problems")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DeliberateError(f"task {config.task!r} returned problem id {dup!r} twice; ids must be unique")
    if len(problems) < config.n_problems:
        log.warning("task %s has only %d %s problems (asked for %d)", config.task, len(problems),
                    config.split, config.n_problems)
    prompts = [task.prompt(p, config.prompt_style) for p in problems]
    greedy_params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens, stop=stop,
                                   seed=config.seed)
    sample_params = SamplingParams(n=config.n, temperature=config.temperature, top_p=config.top_p,
                                   max_tokens=max_tokens, stop=stop, seed=config.seed)

    spent = Compute()
    records_path = out / RECORDS_FILE
    with RecordWriter(records_path) as writer:
        need_g = {i for i, p in enumerate(problems) if config.greedy and (p.id, "greedy", 0) not in writer}
        missing_s = {i: sum((p.id, "sample", j) not in writer for j in range(config.n)) for i, p in enumerate(problems)}
        need_s = {i for i, m in missing_s.items() if m}
        todo = sorted(need_g | need_s)
        total = len(need_g) + sum(missing_s.values())
        # the backend ticks the bar per finished sample; each call then settles it to the records written
        with progress_bar(total, f"eval {config.task}", "sample", progress) as bar, SampleTicks(bar).during(total) as ticks:
            for start in range(0, len(todo), config.batch_size):
                chunk = todo[start:start + config.batch_size]
                for strategy, need, params in (("greedy", need_g, greedy_params), ("sample", need_s, sample_params)):
                    idxs = [i for i in chunk if i in need]
                    if idxs:
                        c, written = _generate(backend, task, problems, prompts, idxs, params, strategy, writer)
                        spent += c
                        ticks.settle(written)

    compute = record_invocation(out, spent.to_dict())  # the sum over every invocation of this run
    summary = summarize(config, load_records(records_path), problems, task, backend.model_name, compute).to_dict()
    write_json_atomic(out / SUMMARY_FILE, summary)
    plots.plot_accuracy_vs_n(summary, out / "accuracy_vs_n.png")
    plots.plot_accuracy_vs_tokens(summary, out / "accuracy_vs_tokens.png")
    return summary


# --- scoring ------------------------------------------------------------------------------------

def summarize(config: EvalConfig, records: Sequence[SampleRecord], problems: Sequence[Problem], task: Task,
              model: str, compute: Compute | Mapping[str, Any] | None = None) -> RunSummary:
    """The summary of :func:`run_eval` from records (extra records, e.g. of a larger earlier run, are ignored)."""
    by_key = {r.key: r for r in records}
    n, P = config.n, len(problems)

    def get(pid: str, strategy: str, j: int) -> SampleRecord:
        try:
            return by_key[(pid, strategy, j)]
        except KeyError:
            raise DeliberateError(f"no record for problem {pid!r}, {strategy} sample {j}") from None

    samples = [[get(p.id, "sample", j) for j in range(n)] for p in problems]
    correct = np.array([[r.correct for r in row] for row in samples], dtype=bool)  # (P, n)
    tokens = np.array([[r.completion_tokens for r in row] for row in samples], dtype=np.float64)
    sample_wall = float(sum(r.wall_s for row in samples for r in row))
    mean_tokens = float(tokens.mean(axis=1).sum())  # expected tokens of one sample, summed over problems
    answers = [[task.normalize(r.answer) for r in row] for row in samples]

    def row(strategy: str, k: int, values: Sequence[float], gen_tokens: float, wall: float) -> ResultRow:
        return ResultRow(strategy=strategy, n=k, accuracy=float(np.mean(values)),
                         ci=bootstrap_ci(values, seed=config.seed), generated_tokens=gen_tokens, wall_s=wall,
                         n_problems=P, keys=EVAL_ROW_KEYS)

    results = []
    if config.greedy:
        greedy = [get(p.id, "greedy", 0) for p in problems]
        results.append(row("greedy", 1, [float(r.correct) for r in greedy],
                           sum(r.completion_tokens for r in greedy), float(sum(r.wall_s for r in greedy))))
    results.append(row("sample", 1, correct.mean(axis=1).tolist(), mean_tokens, sample_wall / n))
    c = correct.sum(axis=1)
    for k in config.ns:
        results.append(row("pass@k", k, [pass_at_k(n, int(ci), k) for ci in c], k * mean_tokens, sample_wall * k / n))
    process = _process_correct(task, problems, samples, correct)
    if process is not None:  # the ceiling of process-verified selection: right answers through right steps only
        cp = process.sum(axis=1)
        for k in config.ns:
            results.append(row("process-pass@k", k, [pass_at_k(n, int(ci), k) for ci in cp], k * mean_tokens,
                               sample_wall * k / n))
    for k in config.ns:
        vals = [maj_at_k(answers[i], correct[i].tolist(), k, seed=config.seed * 1_000_003 + i) for i in range(P)]
        results.append(row("maj@k", k, vals, k * mean_tokens, sample_wall * k / n))
    return RunSummary(task=config.task, model=model, seed=config.seed, results=tuple(results),
                      compute=dict(compute) if isinstance(compute, Mapping) else (compute or Compute()).to_dict(),
                      config=config.to_dict())


def _process_correct(task: Task, problems: Sequence[Problem], samples: Sequence[Sequence[SampleRecord]],
                     correct: np.ndarray) -> np.ndarray | None:
    """(P, n) bool: right answer *and* every step passes the task's step checker; None when the task has none."""
    if not problems or task.steps_all_correct(problems[0], samples[0][0].text) is None:
        return None
    return np.array([[bool(correct[i, j]) and bool(task.steps_all_correct(p, r.text)) for j, r in enumerate(row)]
                     for i, (p, row) in enumerate(zip(problems, samples))], dtype=bool)


def format_table(summary: Mapping[str, Any]) -> str:
    """A fixed-width text table of the summary's rows: strategy, n, accuracy, 95% CI, tokens."""
    w = max([10] + [len(str(r["strategy"])) for r in summary["results"]])
    lines = [f"{summary.get('task')} | {summary.get('model')} | seed {summary.get('seed')}",
             f"{'strategy':<{w}} {'n':>4} {'accuracy':>9} {'95% CI':>17} {'tokens':>12}"]
    for r in summary["results"]:
        lo, hi = r["ci"]
        lines.append(f"{r['strategy']:<{w}} {r['n']:>4} {r['accuracy']:>9.3f} {f'[{lo:.3f}, {hi:.3f}]':>17} "
                     f"{r['generated_tokens']:>12.0f}")
    return "\n".join(lines)
