"""Rollouts: ``k`` verified samples per problem from a :class:`~deliberate.policy.Policy`, and their files.

:func:`rollouts` samples through :meth:`Policy.sample` and checks each completion with the task's
verifier (seeded per problem and sample: same seed, same samples); with a ``path`` it saves each batch
as it finishes, so a killed E-step resumes. :func:`policy_rollouts` does the same in this process or on
Ray workers. One line per problem: the JSON list of its :class:`Rollout` rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.executor import RayExecutor, WorkerSpec, chunks, progress_bar
from deliberate.models.sampling import SamplingParams
from deliberate.policy import Policy, load_policy
from deliberate.tasks.base import Task
from deliberate.types import Problem


@dataclass(frozen=True)
class Rollout:
    """One sampled completion of one problem, with the verifier's verdict."""

    problem_id: str
    prompt: str
    text: str
    correct: bool
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rollouts(policy: Policy, task: Task, problems: Sequence[Problem], k: int, *, temperature: float = 1.0,
             max_tokens: int | None = None, seed: int = 0, prompts: Sequence[str] | None = None,
             batch_problems: int = 64, progress: bool = True, desc: str = "sample",
             path: Path | None = None) -> list[list[Rollout]]:
    """``k`` verified samples per problem from ``policy`` (``prompts`` overrides the task's prompts, e.g.
    hinted ones). With ``path``: the rollouts saved there are returned as they are; otherwise each batch
    of problems is appended to ``.NAME.partial`` as it finishes (a killed call resumes after the last
    whole batch: sampling is seeded per (seed, prompt, sample index), so the rows are the same) and the
    file is renamed to ``path`` at the end."""
    if k < 1:
        raise DeliberateError(f"rollouts: k must be >= 1 (got {k})")
    prompts = list(prompts) if prompts is not None else [task.prompt(p) for p in problems]
    if len(prompts) != len(problems):
        raise DeliberateError("rollouts: one prompt per problem is needed")
    if path is not None and path.exists():
        return load_rollouts(path)
    partial = path.with_name(f".{path.name}.partial") if path is not None else None
    out = read_partial(partial) if partial is not None else []
    params = SamplingParams(n=k, temperature=temperature, max_tokens=max_tokens or task.max_tokens, seed=seed)
    bar = tqdm(total=len(problems), initial=len(out), desc=desc, disable=not progress, dynamic_ncols=True,
               leave=False)
    with open(partial, "a") if partial is not None else nullcontext() as f:
        for lo in range(len(out), len(problems), batch_problems):
            chunk = list(range(lo, min(len(problems), lo + batch_problems)))
            comps = policy.sample([prompts[i] for i in chunk], params)
            rows = [[Rollout(problems[i].id, prompts[i], c.text, bool(task.reward(c.text, problems[i]) > 0),
                             c.completion_tokens, c.prompt_tokens, c.finish_reason) for c in cs]
                    for i, cs in zip(chunk, comps)]
            if f is not None:
                f.writelines(json.dumps([r.to_json() for r in rs]) + "\n" for rs in rows)
                f.flush()
                os.fsync(f.fileno())
            out += rows
            bar.update(len(chunk))
    bar.close()
    if partial is not None:
        os.replace(partial, path)
    return out


def read_partial(path: Path) -> list[list[Rollout]]:
    """The whole rows of a partly written rollouts file (a torn last line is cut off the file)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    keep = raw[:raw.rfind(b"\n") + 1]
    if len(keep) != len(raw):
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    return [[Rollout(**d) for d in json.loads(line)] for line in keep.decode().splitlines() if line.strip()]


def _generate_unit(worker, unit):
    _, prompts, params = unit  # (problem indices, their prompts, sampling params)
    return worker.backend.generate(list(prompts), params)


def policy_rollouts(policy: Policy | str | Path, task: Task, task_spec: tuple[str, dict[str, Any]], problems: Sequence[Problem],
                    k: int, *, temperature: float = 1.0, max_tokens: int | None = None, seed: int = 0,
                    batch_problems: int = 64, progress: bool = True, desc: str = "sample",
                    ray: dict[str, Any] | None = None, prompts: Sequence[str] | None = None,
                    path: Path | None = None, device: str = "auto") -> list[list[Rollout]]:
    """:func:`rollouts` of ``policy``; with ``ray`` (RayExecutor options such as ``{"workers": 2}``) the
    batches of problems are sampled by Ray workers, each loading the checkpoint itself
    (:meth:`Policy.worker_spec`). Sampling is seeded per (seed, prompt, sample index), so both give the
    same rollouts (with the same torch thread count per process). ``path``: saved there, as :func:`rollouts`.
    A checkpoint path is loaded with :func:`~deliberate.policy.load_policy` on ``device``."""
    if not isinstance(policy, Policy):
        policy = load_policy(policy, device=device)
    if ray is None:
        return rollouts(policy, task, problems, k, temperature=temperature, max_tokens=max_tokens, seed=seed,
                        prompts=prompts, batch_problems=batch_problems, progress=progress, desc=desc, path=path)
    if path is not None:  # Ray workers return whole E-steps: the file is written once, at the end
        return cached_rollouts(path, lambda: policy_rollouts(
            policy, task, task_spec, problems, k, temperature=temperature, max_tokens=max_tokens, seed=seed,
            batch_problems=batch_problems, progress=progress, desc=desc, ray=ray, prompts=prompts))
    if k < 1:
        raise DeliberateError(f"rollouts: k must be >= 1 (got {k})")
    prompts = list(prompts) if prompts is not None else [task.prompt(p) for p in problems]
    params = SamplingParams(n=k, temperature=temperature, max_tokens=max_tokens or task.max_tokens, seed=seed)
    units = [(tuple(c), tuple(prompts[i] for i in c), params) for c in chunks(range(len(problems)), batch_problems)]
    out: dict[int, list[Rollout]] = {}
    ex = RayExecutor(WorkerSpec(*policy.worker_spec(), task_spec[0], dict(task_spec[1])), **ray)
    try:
        with progress_bar(len(problems), desc, "problem", progress) as bar:
            def write(unit, comps) -> None:
                idx, prompts, _ = unit
                for i, prompt, cs in zip(idx, prompts, comps):
                    p = problems[i]
                    out[i] = [Rollout(p.id, prompt, c.text, bool(task.reward(c.text, p) > 0), c.completion_tokens,
                                      c.prompt_tokens, c.finish_reason) for c in cs]
                bar.update(len(prompts))

            ex.map(_generate_unit, units, write)
    finally:
        ex.close()
    return [out[i] for i in range(len(problems))]


def sampled_tokens(rows: Sequence[Sequence[Rollout]]) -> tuple[int, int]:
    """(generated tokens, prompt tokens) of a set of rollouts."""
    gen = sum(r.completion_tokens for rs in rows for r in rs)
    # the engine prefills each prompt once for its k samples
    prompt = sum(rs[0].prompt_tokens for rs in rows if rs)
    return gen, prompt


def save_rollouts(path: Path, rows: Sequence[Sequence[Rollout]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.writelines(json.dumps([r.to_json() for r in rs]) + "\n" for rs in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_rollouts(path: Path) -> list[list[Rollout]]:
    with open(path) as f:
        return [[Rollout(**d) for d in json.loads(line)] for line in f if line.strip()]


def cached_rollouts(path: Path, sample) -> list[list[Rollout]]:
    """The rollouts saved at ``path``, or ``sample()``'s, saved there first (so a rerun never resamples)."""
    if path.exists():
        return load_rollouts(path)
    rows = sample()
    save_rollouts(path, rows)
    return rows


def sample_train_problems(policy: Policy, task: Task, out: Path, *, n_train: int, k: int, seed: int,
                          prompt_style: str, progress: bool, desc: str
                          ) -> tuple[list[Problem], list[list[Rollout]]]:
    """The first ``n_train`` training problems (problem seed ``seed``) and ``k`` rollouts of each at
    temperature 1 (sampling seed ``seed``), cached in ``out/samples.jsonl``: the E-step that V-STaR and
    self-correction share."""
    train = task.problems("train", n_train, seed=seed)
    prompts = [task.prompt(p, prompt_style) for p in train]
    return train, cached_rollouts(out / "samples.jsonl", lambda: rollouts(
        policy, task, train, k, seed=seed, prompts=prompts, progress=progress, desc=desc))
