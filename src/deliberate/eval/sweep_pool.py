"""A sweep's pool of full samples: drawn once, or taken from an earlier sweep or eval; scored once.

The strategies that select among full samples (majority, best-of-N, weighted) read the first N of
``max(budgets)`` samples per (problem, seed) in ``pool.jsonl``; ``pool_scores.jsonl`` caches the
verifier's per-step scores of each sample, its steps split by the one splitter search uses.

``--pool-from DIR`` starts the pool from an earlier run's samples, refused unless they were drawn the
same way (task, its options, split, model and its weights, temperature, top_p, max_tokens, prompt
style): an earlier sweep's ``pool.jsonl`` (same problem seed too), or an eval run's ``records.jsonl``,
whose samples (eval ``--seed S``) become this sweep's pool for seed S (S must be one of ``--seeds``).
Samples the source lacks (more problems, a larger N, other seeds) are drawn as usual: sample j of a
problem is the same whatever n (the seeding contract), so the pool is one pool either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.executor import chunks, progress_bar
from deliberate.fingerprint import FINGERPRINT_KEY
from deliberate.models.sampling import SamplingParams
from deliberate.progress import SampleTicks
from deliberate.records import JsonlAppender, RecordWriter, load_records
from deliberate.search.base import SearchSettings
from deliberate.tasks.base import Task
from deliberate.types import Problem, SampleRecord

log = logging.getLogger(__name__)


def pool_key(seed: int) -> str:
    """The ``strategy`` field of seed ``seed``'s pool records."""
    return f"pool-s{seed}"


@dataclass(frozen=True)
class PoolUnit:
    """Samples for one chunk of problems under one seed (prompts rendered by the driver)."""

    seed: int
    problems: tuple[Problem, ...]
    prompts: tuple[str, ...]
    params: SamplingParams


def pool_unit(worker, u: PoolUnit):
    t0 = time.perf_counter()
    outs = worker.backend.generate(list(u.prompts), u.params)
    return outs, time.perf_counter() - t0


def score_unit(worker, unit):
    return worker.verifier.score_batch(list(unit[1]))


def sample_pool(seeds, executor, task: Task, problems, base: SearchSettings, max_tokens: int, pool_n: int,
                out: Path, spent: dict, progress: bool) -> None:
    """Draw the pool samples not yet in ``out/pool.jsonl`` (resumable); the bar advances per sample."""
    prompts = {p.id: task.prompt(p, base.prompt_style) for p in problems}
    with RecordWriter(out / "pool.jsonl") as writer:
        need = [(seed, p) for seed in seeds for p in problems
                if any((p.id, pool_key(seed), j) not in writer for j in range(pool_n))]
        units = []
        for seed in seeds:
            todo = [p for s, p in need if s == seed]
            params = SamplingParams(n=pool_n, temperature=base.temperature, top_p=base.top_p,
                                    max_tokens=max_tokens, stop=tuple(task.stop), seed=seed)
            units += [PoolUnit(seed, tuple(chunk), tuple(prompts[p.id] for p in chunk), params)
                      for chunk in chunks(todo, max(1, 256 // pool_n))]
        with progress_bar(len(need) * pool_n, "sweep pool", "sample", progress) as bar:
            ticks = SampleTicks(bar)

            def write(u: PoolUnit, got) -> None:
                outs, dt = got
                spent["backend_calls"] += 1
                recs = []
                for p, comps in zip(u.problems, outs):
                    spent["prompt_tokens_sent"] += comps[0].prompt_tokens if comps else 0
                    for j, c in enumerate(comps):
                        spent["generated_tokens"] += c.completion_tokens
                        if (p.id, pool_key(u.seed), j) in writer:
                            continue
                        ans = task.extract_answer(c.text)
                        recs.append(SampleRecord(
                            problem_id=p.id, strategy=pool_key(u.seed), index=j, seed=u.seed, text=c.text,
                            answer=ans, gold=p.answer, correct=bool(task.is_correct(ans, p)),
                            prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                            finish_reason=c.finish_reason, wall_s=dt / (len(u.problems) * pool_n)))
                ticks.settle(writer.append(recs, on_duplicate="error"))

            # in this process the backend ticks the bar per finished sample; write() settles the count
            with ticks.during(len(need) * pool_n):
                executor.map(pool_unit, units, write)


def sampling_identity(cfg: dict[str, Any], task: Task) -> dict[str, Any]:
    """What decides a run's samples, from its config.json (a sweep's or an eval's), defaults resolved."""
    settings = cfg.get("search_settings", cfg.get("settings"))  # preset applied; older sweeps: settings
    if isinstance(settings, dict):  # a sweep: sampling in its search settings
        s = SearchSettings(**settings)
        sampling = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens or task.max_tokens,
                    "prompt_style": s.prompt_style}
    else:  # an eval: sampling at the top level, max_tokens resolved when it ran
        sampling = {k: cfg.get(k) for k in ("temperature", "top_p", "max_tokens", "prompt_style")}
    return {**{k: cfg.get(k) for k in ("task", "task_options", "split", "model")}, **sampling}


def copy_pool(src: Path, out: Path, meta: dict, task: Task, problems, seeds, pool_n: int) -> None:
    """Start this sweep's pool from an earlier sweep's or eval's samples, so verifiers and strategies
    are compared on the very same samples; refused unless they were drawn the same way."""
    if (out / "pool.jsonl").exists():
        return
    try:
        old = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeliberateError(f"--pool-from {src}: no readable config.json ({e})") from None
    was, now = sampling_identity(old, task), sampling_identity(meta, task)
    diffs = [k for k in now if json.dumps(was[k], default=str) != json.dumps(now[k], default=str)]
    if old.get(FINGERPRINT_KEY) is not None and meta.get(FINGERPRINT_KEY) not in (None, old[FINGERPRINT_KEY]):
        diffs.append("the model's weights")
    is_sweep = (src / "pool.jsonl").exists()
    if is_sweep and old.get("problem_seed") != meta.get("problem_seed"):
        diffs.append("problem_seed")
    if diffs:
        raise DeliberateError(f"--pool-from {src}: its samples were drawn differently ({', '.join(diffs)} differ)")
    if is_sweep:
        (out / "pool.jsonl").write_bytes((src / "pool.jsonl").read_bytes())
        return
    if not (src / "records.jsonl").exists():
        raise DeliberateError(f"--pool-from {src}: neither a sweep (pool.jsonl) nor an eval run (records.jsonl)")
    seed = old.get("seed")
    if seed not in seeds:
        raise DeliberateError(f"--pool-from {src}: an eval's samples were drawn with seed {seed}; "
                              f"add it to --seeds (now {','.join(map(str, seeds))}) to use them")
    ids = {p.id for p in problems}
    recs = [dataclasses.replace(r, strategy=pool_key(seed)) for r in load_records(src / "records.jsonl")
            if r.strategy == "sample" and r.problem_id in ids and r.index < pool_n]
    if not recs:
        raise DeliberateError(f"--pool-from {src}: no samples of this sweep's problems there (another problem "
                              "seed or data file?)")
    with RecordWriter(out / "pool.jsonl") as writer:
        writer.append(recs, on_duplicate="error")
    log.info("--pool-from %s: %d samples of the eval taken as the pool of seed %s", src, len(recs), seed)


def load_pool(out: Path, problems, seeds, pool_n) -> dict[tuple[str, int], list[SampleRecord]]:
    recs = {r.key: r for r in load_records(out / "pool.jsonl")}
    pool = {}
    for seed in seeds:
        for p in problems:
            try:
                pool[(p.id, seed)] = [recs[(p.id, pool_key(seed), j)] for j in range(pool_n)]
            except KeyError:
                raise DeliberateError(f"{out / 'pool.jsonl'}: missing samples for {p.id} seed {seed}") from None
    return pool


def score_pool(out: Path, task: Task, problems, pool, delimiter: str, executor, progress: bool) -> dict:
    """Per-step verifier scores of every pool sample, cached in ``pool_scores.jsonl`` (resumable); a
    sample's steps are ``task.split_steps(text, delimiter)``, as search would score the same text."""
    by_id = {p.id: p for p in problems}
    with JsonlAppender(out / "pool_scores.jsonl", key=lambda r: (r["problem_id"], r["seed"], r["index"])) as f:
        todo = [(pid, seed, j, r) for (pid, seed), rs in pool.items() for j, r in enumerate(rs)
                if (pid, seed, j) not in f]
        # a unit: the keys of up to 256 samples and the (problem, steps) the verifier scores
        units = [(tuple((pid, seed, j) for pid, seed, j, _ in chunk),
                  tuple((by_id[pid], list(task.split_steps(r.text, delimiter))) for pid, _, _, r in chunk))
                 for chunk in chunks(todo, 256)]
        with progress_bar(len(todo), "sweep verifier", "sample", progress) as bar:
            def write(unit, scores) -> None:
                f.append({"problem_id": pid, "seed": seed, "index": j, "scores": [round(float(x), 6) for x in sc]}
                         for (pid, seed, j), sc in zip(unit[0], scores))
                bar.update(len(unit[0]))

            executor.map(score_unit, units, write)
        return {k: v["scores"] for k, v in f.rows.items()}
