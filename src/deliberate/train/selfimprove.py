"""Machinery shared by the self-improvement recipes (ReST-EM, STaR, GRPO, ...).

* :func:`rollouts` / :func:`policy_rollouts` — verified samples from a Policy (:mod:`deliberate.train.rollouts`,
  re-exported here for the recipes that import them from this module).
* :func:`check_verified_mode` / :func:`verified` — what counts as a verified sample (outcome or process).
* :func:`finetune` — the tiny policy's fine-tune of a checkpoint path, for the recipes that do not take
  a Policy yet.
* :func:`evaluate_policy` — held-out greedy / maj@n / pass@n through ``deliberate eval``'s own
  resumable records.
* :class:`IterationLog` — one JSON file per finished iteration (the resume marker) holding its
  train-time compute: tokens sampled, tokens trained, approximate FLOPs (6·N·tokens trained +
  2·N·tokens sampled), wall time, and the held-out evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.eval.evaluate import EvalConfig, run_eval
from deliberate.fingerprint import FINGERPRINT_KEY, check_fingerprint, weights_fingerprint
from deliberate.records import JsonlAppender, write_json_atomic
from deliberate.models.engine import count_parameters
from deliberate.models.hf import ALIASES
from deliberate.models.tiny import load_tiny
from deliberate.policy import FinetuneSettings, Policy, TinyPolicy, load_policy
from deliberate.search.base import SearchContext, run_search
from deliberate.tasks.base import Task
from deliberate.train.rollouts import (  # noqa: F401  (the names the recipes import from here)
    Rollout,
    cached_rollouts,
    load_rollouts,
    policy_rollouts,
    rollouts,
    sampled_tokens,
    save_rollouts,
)
from deliberate.types import Problem


VERIFIED = ("outcome", "process")


def check_verified_mode(task: Task, mode: str, what: str) -> None:
    """Refuse ``mode="process"`` for a task without a step checker (``what`` names the recipe; the configs
    check that ``mode`` is one of :data:`VERIFIED`)."""
    if mode == "process":
        probe = task.problems("train", 1, seed=0)[0]
        if task.step_correct(probe, task.split_steps(task.rationale(probe) or "")) is None:
            raise DeliberateError(f"{what}: 'process' needs a task with a step checker; {task.name!r} has none "
                                  f"(use 'outcome', the answer check alone)")


def verified(task: Task, problem: Problem, text: str, correct: bool, mode: str) -> bool:
    """Whether a sample counts as verified: ``"outcome"`` — its answer is right (``correct``); ``"process"``
    — also every step passes the task's step checker, so right answers after wrong steps do not count."""
    return correct and (mode == "outcome" or bool(task.steps_all_correct(problem, text)))


# config fields that may change between runs in one directory: an iteration's results never depend on how
# many iterations were asked for, so a finished run can be extended (or stopped early) by rerunning it
EXTENDABLE = ("iterations",)


def with_new_defaults(stored: dict[str, Any], current: dict[str, Any], cls) -> dict[str, Any]:
    """``stored`` (a run's config.json) with each field of the config dataclass ``cls`` that it lacks filled in
    from ``current`` when that value is the field's default: a field added to a recipe after the run was
    written, left at its default, changes nothing, so the run still resumes (a non-default value is refused)."""
    out = dict(stored)
    for f in dataclasses.fields(cls):
        if f.name not in current:
            continue
        d = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        v = current[f.name]
        if dataclasses.is_dataclass(d) and isinstance(v, dict) and isinstance(stored.get(f.name), dict):
            out[f.name] = with_new_defaults(stored[f.name], v, type(d))
        elif f.name not in stored and d is not dataclasses.MISSING and v == json.loads(json.dumps(d, default=str)):
            out[f.name] = v
    return out


#: where a recipe's run directory keeps the fingerprint of its --init weights (fingerprint.weights_fingerprint)
INIT_FINGERPRINT = "init_fingerprint.json"


def start_run(cfg, extendable: tuple[str, ...] = EXTENDABLE) -> tuple[Path, dict[str, Any]]:
    """Create ``cfg.out``, check ``cfg.init`` exists (for configs that have one), and refuse an output
    directory that holds a run of another config (other than in the ``extendable`` fields, by default
    :data:`EXTENDABLE`: rerunning with more ``--iterations`` continues a finished run); returns (out, the
    config as JSON)."""
    out = Path(cfg.out)
    init = getattr(cfg, "init", None)
    if init is not None and str(init).strip().lower() not in ALIASES and not Path(init).exists():
        raise DeliberateError(f"--init {init} does not exist (train a seed model first, e.g. `deliberate quickstart`, "
                              f"whose policy is runs/quickstart/sft/model)")
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = json.loads(json.dumps(dataclasses.asdict(cfg)))
    p = out / "config.json"
    def fixed(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k not in extendable}

    # a directory holding nothing but the config (a run refused by a check right after this, e.g. a --keep the
    # task cannot check) has no work to protect: the corrected command takes it over
    nothing_else = all(f.name in (p.name, INIT_FINGERPRINT) for f in out.iterdir())
    if p.exists() and not nothing_else and \
            fixed(with_new_defaults(json.loads(p.read_text()), cfg_dict, type(cfg))) != fixed(cfg_dict):
        raise DeliberateError(f"{out} holds a run with a different config; use another --out or delete it")
    # the same --init path with other weights behind it would mix two models' data in one run
    fp, fp_file = (weights_fingerprint(init) if init is not None else None), out / INIT_FINGERPRINT
    if fp is not None and fp_file.exists() and not nothing_else:
        check_fingerprint(json.loads(fp_file.read_text()), fp, out, f"--init {init}")
    write_json_atomic(p, cfg_dict)
    if fp is not None:
        write_json_atomic(fp_file, {"init": str(init), FINGERPRINT_KEY: fp})
    return out, cfg_dict


def finetune(init: str | Path, pairs: Sequence[tuple[str, str]], out: str | Path, settings: FinetuneSettings,
             *, seed: int = 0, progress: bool = True, desc: str = "finetune",
             device: str = "auto") -> tuple[Path, int]:
    """:meth:`TinyPolicy.finetune` of the tiny checkpoint ``init``; returns (model dir, tokens trained)."""
    r = TinyPolicy(init, device=device).finetune(pairs, out, settings, seed=seed, progress=progress, desc=desc)
    return r.model_dir, r.tokens_trained


def evaluate_policy(policy: Policy | str | Path, task: str, task_options: dict[str, Any], *, n_problems: int, n: int,
                    seed: int, out_dir: str | Path, progress: bool = False, max_tokens: int | None = None,
                    temperature: float = 1.0, prompt_style: str = "plain", batch_size: int = 64,
                    task_obj: Task | None = None) -> dict[str, Any]:
    """Greedy, pass@1 (the mean over the n samples), maj@n and pass@n (with 95% CIs) on held-out ``test``
    problems (``max_tokens``: None for the task's default) with a fresh backend of ``policy`` (a Policy, or
    a checkpoint path for :func:`~deliberate.policy.load_policy`)."""
    if not isinstance(policy, Policy):
        policy = load_policy(policy)
    cfg = EvalConfig(task=task, task_options=task_options, n_problems=n_problems, n=n, temperature=temperature,
                     seed=seed, batch_size=batch_size, out_dir=str(out_dir), max_tokens=max_tokens,
                     prompt_style=prompt_style)
    backend = policy.backend()
    try:
        summary = run_eval(cfg, backend, task=task_obj, progress=progress)
    finally:
        backend.close()
    return eval_entries(summary, n)


def eval_entries(summary: dict[str, Any], n: int) -> dict[str, Any]:
    """A ``run_eval`` summary as the recipes' per-iteration ``eval``: ``greedy``, ``pass@1`` (the mean over the
    samples), and ``maj@n`` / ``pass@n`` at ``n``, each ``{"accuracy", "ci"}``."""
    res: dict[str, Any] = {}
    for r in summary["results"]:
        key = {"greedy": "greedy", "sample": "pass@1"}.get(r["strategy"], f"{r['strategy'].replace('@k', '')}@{r['n']}")
        if r["strategy"] in ("greedy", "sample") or r["n"] == n:
            res[key] = {"accuracy": r["accuracy"], "ci": r["ci"]}
    return res


def derived_seed(*parts: Any) -> int:
    """A 32-bit seed that is a fixed function of ``parts`` (e.g. recipe name, run seed, iteration, batch)."""
    h = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


def search_solutions(task: Task, problems: Sequence[Problem], policy: Policy | str | Path, verifier, strategy: str,
                     settings, path: Path, seed: int, batch_problems: int = 64, *, progress: bool = True,
                     desc: str = "search", salt: str = "mcts-ei") -> list[dict]:
    """Run search ``strategy`` (``mcts``, ``beam`` ...) with ``policy`` and ``verifier`` on ``problems``;
    one row per problem appended to ``path`` as each batch finishes (batches already there are skipped,
    and a batch's seed depends only on ``seed`` and its position, so a rerun reproduces it).

    A row holds every distinct finished solution the search produced (its candidates: terminal nodes,
    rollouts, finished beams), each checked against the gold answer; the answer the search chose;
    and the problem's compute: generated tokens, prompt tokens sent (every expansion resends its prefix),
    its share of the prompt tokens the engine actually prefilled (after prefix caching: what compute
    accounting should count) and of the verifier's tokens."""
    if not isinstance(policy, Policy):
        policy = load_policy(policy)
    backend = None
    with JsonlAppender(path, key=lambda r: r["problem_id"]) as f:
        todo = [k for k in range(0, len(problems), batch_problems)
                if any(p.id not in f for p in problems[k:k + batch_problems])]
        left = sum(len(problems[k:k + batch_problems]) for k in todo)
        bar = tqdm(total=len(problems), initial=len(problems) - left, desc=desc, unit="problem",
                   disable=not progress, dynamic_ncols=True, leave=False)
        try:
            for k in todo:
                if backend is None:
                    backend = policy.backend()
                chunk = list(problems[k:k + batch_problems])
                ctx = SearchContext(backend, task, dataclasses.replace(settings, seed=derived_seed(salt, seed, k)), verifier)
                tokens0, prefill0 = verifier.stats.tokens, backend.engine.stats.prefill_tokens
                res = run_search(strategy, chunk, ctx)
                share = (verifier.stats.tokens - tokens0) / len(chunk)
                prefill = (backend.engine.stats.prefill_tokens - prefill0) / len(chunk)
                rows = []
                for p, r in zip(chunk, res):
                    sols: dict[tuple[str, ...], dict] = {}
                    for c in r.candidates:
                        steps = tuple(s for s in c.steps if s.strip())
                        if steps and steps not in sols:
                            sols[steps] = {"steps": list(steps), "answer": c.answer,
                                           "correct": bool(task.is_correct(c.answer, p))}
                    rows.append({"problem_id": p.id, "question": p.question, "gold": p.answer,
                                 "answer": r.answer, "correct": bool(task.is_correct(r.answer, p)),
                                 "solutions": list(sols.values()), "generated_tokens": r.generated_tokens,
                                 "prompt_tokens": r.prompt_tokens, "prefill_tokens": prefill,
                                 "verifier_tokens": share})
                f.append(rows)
                bar.update(len(chunk))
        finally:
            bar.close()
            if backend is not None:
                backend.close()
        return [f.rows[p.id] for p in problems]


class IterationLog:
    """Per-iteration records in ``OUT/iterations/NNN.json``; a file's presence means the iteration finished."""

    def __init__(self, out: str | Path, n_params: int):
        self.dir = Path(out) / "iterations"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n_params = n_params

    def path(self, it: int) -> Path:
        return self.dir / f"{it:03d}.json"

    def done(self, it: int) -> dict[str, Any] | None:
        p = self.path(it)
        return json.loads(p.read_text()) if p.exists() else None

    def write(self, it: int, row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)
        row["iteration"] = it
        # 6ND for tokens trained; 2ND for every token only run forward: generated, prompt (prefilled
        # once per group of samples) and scoring passes (old-policy / reference log-probs)
        fwd = row.get("tokens_sampled", 0) + row.get("prompt_tokens", 0) + row.get("tokens_forward", 0)
        row["flops"] = 6.0 * self.n_params * row.get("tokens_trained", 0) + 2.0 * self.n_params * fwd
        write_json_atomic(self.path(it), row)
        return row

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.dir.glob("[0-9][0-9][0-9].json"))]

    def spent_flops(self) -> float:
        """Train FLOPs of the finished iterations (what a ``max_train_flops`` budget is checked against)."""
        return sum(r.get("flops", 0.0) for r in self.rows())

    def cumulative(self) -> list[dict[str, Any]]:
        """Rows with running totals of train compute (what accuracy is plotted against)."""
        tot = {"tokens_sampled": 0, "tokens_trained": 0, "flops": 0.0, "wall_s": 0.0}
        out = []
        for r in self.rows():
            for k in tot:
                tot[k] += r.get(k, 0)
            out.append({**r, **{f"cum_{k}": v for k, v in tot.items()}})
        return out


def acc_cell(e: dict[str, Any] | None) -> str:
    """``0.335 [0.28,0.40]`` for an ``{"accuracy", "ci"}`` entry, ``-`` for none (the recipes' tables)."""
    return f"{e['accuracy']:.3f} [{e['ci'][0]:.2f},{e['ci'][1]:.2f}]" if e else "-"


def iteration_table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """One line per iteration: the held-out ``keys`` with CIs, kept samples, cumulative train TFLOPs, wall."""
    lines = [f"{'iter':>4} " + " ".join(f"{k:>18}" for k in keys) + f" {'kept':>6} {'train TFLOPs':>12} {'wall s':>7}"]
    for r in rows:
        cells = [acc_cell(r["eval"].get(k)) for k in keys]
        lines.append(f"{r['iteration']:>4} " + " ".join(f"{c:>18}" for c in cells)
                     + f" {r.get('kept', '-'):>6} {r['cum_flops'] / 1e12:>12.2f} {r['cum_wall_s']:>7.0f}")
    return "\n".join(lines)


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.t0, 3)


def n_params_of(model_dir: str | Path) -> int:
    model, _ = load_tiny(model_dir)
    return count_parameters(model)


def plot_curve(rows: Sequence[dict[str, Any]], path: Path, title: str, keys: Sequence[str] = ("greedy",)) -> None:
    """Held-out accuracy (with CIs) against cumulative train FLOPs."""
    import matplotlib  # lazy: matplotlib, only this plot needs it and `deliberate --help` imports this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after use("Agg"), so pyplot never picks a display backend

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        pts = [(r["cum_flops"], r["eval"][key]) for r in rows if key in r.get("eval", {})]
        if not pts:
            continue
        xs = [x / 1e12 for x, _ in pts]
        ys = [e["accuracy"] for _, e in pts]
        lo = [e["accuracy"] - e["ci"][0] for _, e in pts]
        hi = [e["ci"][1] - e["accuracy"] for _, e in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=key)
    # linear: a run's compute grows about linearly per iteration (a log axis crowds every point but the start)
    ax.set_xlabel("cumulative train TFLOPs (6ND train + 2ND sample)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def switch(old: Policy, new: Policy, base: Policy) -> Policy:
    """``new``, after closing ``old`` unless it is ``new`` or the base (which the run closes last)."""
    if old is not new and old is not base:
        old.close()
    return new
