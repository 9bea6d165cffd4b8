"""ReST-EM / expert iteration: sample, keep what the verifier accepts, fine-tune the base on it, repeat.

    deliberate train rest-em --model runs/quickstart/sft/model --out runs/rest-em
    deliberate train rest-em --model smollm2 --task gym:chain_sum --task-arg min_terms=2 --task-arg max_terms=3 \
        --task-arg min_digits=1 --task-arg max_digits=2 --prompt-style instruct --iterations 1 --n-train 256 \
        --temperature 0.7 --eval-temperature 0.7 --max-tokens 160 --max-per-problem 2 --keep outcome \
        --epochs 1 --lr 1e-5 --batch-size 8 --warmup 0 --weight-decay 0 --batch-problems 16 \
        --eval-problems 100 --eval-n 4 --out runs/rest-em-hf        # the former `train rest-em-hf`

``--model`` (alias ``--init``) is any policy (:func:`deliberate.policy.load_policy`): a tiny checkpoint,
an HF checkpoint directory, a ``.gguf`` or ``smollm2``; HF instruct models get their chat template
(``--no-chat`` turns it off) and fine-tune with TRL's ``SFTTrainer`` — give them an HF-sized step
(``--lr 1e-5 --batch-size 8 --warmup 0``; the defaults suit the tiny model).

Iteration t (Singh et al., 2023, "Beyond Human Data"):
* **E-step** — the policy of iteration t-1 (the base model for t = 1) samples ``k`` completions for
  each of ``n_train`` training problems at temperature ``temperature``; the task's checker keeps the
  correct ones (at most ``max_per_problem`` distinct texts per problem, so easy problems do not
  dominate). With ``keep="process"`` a sample must also pass the task's step checker at every step
  (:meth:`Task.step_correct`), so right answers reached through wrong arithmetic ("lucky" samples) are
  not trained on; the default ``keep="outcome"`` is the paper's answer-only filter.
* **M-step** — fine-tune **the base model** (not the previous iterate; this is what keeps ReST-EM
  from drifting) on the kept samples.
* Evaluate greedy / maj@n / pass@n on held-out problems.

Iteration 0 is the base model's own evaluation. Each finished iteration leaves
``OUT/iterations/NNN.json`` (its samples, compute and evaluation); rerunning the command skips them, and
an iteration killed midway redoes only its unfinished parts (samples are saved per batch of problems
before training), so
the final numbers equal an uninterrupted run's. ``OUT/summary.json`` and ``OUT/curve.png`` plot
held-out accuracy against cumulative train compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.records import write_json_atomic
from deliberate.rewards.base import get_verifier
from deliberate.search.base import SearchSettings
from deliberate.tasks import get_task
from deliberate.policy import FinetuneSettings, Policy, load_policy
from deliberate.train.common import PolicyRecipeConfig
from deliberate.train.selfimprove import (
    VERIFIED,
    IterationLog,
    Stopwatch,
    check_verified_mode,
    evaluate_policy,
    plot_curve,
    policy_rollouts,
    sampled_tokens,
    search_solutions,
    start_run,
    verified,
    switch,
)

E_STEPS = ("sample", "beam")


@dataclass(frozen=True)
class RestEMConfig(PolicyRecipeConfig):
    # the defaults are the configuration that raised held-out greedy accuracy of the three seed models
    # by +39.0 / +23.5 / +12.5 points (docs/RESULTS.md, "ReST-EM with 8000 problems per E-step"); the
    # paper's plain answer filter with fewer problems gained less and not on every seed
    iterations: int = 6
    n_train: int = 8000
    k: int = 4
    temperature: float = 1.0
    max_tokens: int | None = None  # None: the task's default
    prompt_style: str = "plain"  # the task's prompt format: plain (Q: ... A:) or instruct
    max_per_problem: int = 4
    # which samples count as verified: "outcome" (right final answer; the paper's filter) or "process"
    # (right answer and every step right by the task's step checker; tasks without one refuse it)
    keep: str = "process"
    # E-step: "sample" (k independent samples) or "beam" (step-level beam search with k beams guided by
    # the PRM at `prm`: "PRM-guided sampling feeding ReST-EM"); the checker filters both
    e_step: str = "sample"
    prm: str | None = None
    beam_expansions: int = 4
    max_train_flops: float | None = None  # stop iterating once the cumulative train FLOPs reach this
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(epochs=4.0))
    eval_problems: int = 200
    eval_n: int = 16
    eval_temperature: float = 1.0
    batch_problems: int = 64  # problems per sampling call (x k rows) and per eval call
    eval_seed: int = 0
    seed: int = 0
    out: str = "runs/rest-em"

    def __post_init__(self) -> None:
        problems = []
        for name in ("iterations", "n_train", "k", "max_per_problem", "eval_problems", "eval_n", "batch_problems"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        for name in ("temperature", "eval_temperature"):
            if not (getattr(self, name) > 0):
                problems.append(f"{name} must be > 0 (got {getattr(self, name)!r})")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            problems.append(f"max_tokens must be an integer >= 1 (got {self.max_tokens!r})")
        if self.keep not in VERIFIED:
            problems.append(f"keep must be one of {', '.join(VERIFIED)} (got {self.keep!r})")
        if self.e_step not in E_STEPS:
            problems.append(f"e_step must be one of {', '.join(E_STEPS)} (got {self.e_step!r})")
        elif self.e_step == "beam" and (self.prm is None or not Path(self.prm).exists()):
            problems.append(f"e_step beam needs --prm, an existing PRM directory (got {self.prm!r})")
        if not isinstance(self.beam_expansions, int) or self.beam_expansions < 1:
            problems.append(f"beam_expansions must be an integer >= 1 (got {self.beam_expansions!r})")
        if self.max_train_flops is not None and not self.max_train_flops > 0:
            problems.append(f"max_train_flops must be > 0 (got {self.max_train_flops!r})")
        if isinstance(self.finetune, dict):
            object.__setattr__(self, "finetune", FinetuneSettings(**self.finetune))
        if problems:
            raise DeliberateError("rest-em: " + "; ".join(problems))


def run_rest_em(cfg: RestEMConfig, progress: bool = True, ray: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) ReST-EM. ``ray``: RayExecutor options (e.g. ``{"workers": 2}``) to sample the
    E-step on Ray workers (same samples as in-process); not part of the config, since it changes
    where the work runs, not what it computes."""
    if ray is not None and cfg.e_step != "sample":
        raise DeliberateError(f"--executor ray runs the sampled E-step; e_step={cfg.e_step!r} (PRM beam search) "
                              "runs in this process")
    base = load_policy(cfg.init, chat=cfg.chat)
    try:
        return _run(cfg, base, progress, ray)
    finally:
        base.close()


def _run(cfg: RestEMConfig, base: Policy, progress: bool, ray: dict[str, Any] | None) -> dict[str, Any]:
    out, cfg_dict = start_run(cfg)
    task = get_task(cfg.task, **cfg.task_options)
    train = task.problems("train", cfg.n_train, seed=cfg.seed)
    prompts = [task.prompt(p, cfg.prompt_style) for p in train]
    check_verified_mode(task, cfg.keep, "rest-em --keep")
    log = IterationLog(out, base.n_params)

    def keeps(problem, text: str) -> bool:  # the outcome was checked already
        return verified(task, problem, text, True, cfg.keep)

    def evaluate(policy: Policy, it: int) -> dict[str, Any]:
        return evaluate_policy(policy, cfg.task, cfg.task_options, n_problems=cfg.eval_problems, n=cfg.eval_n,
                               seed=cfg.eval_seed, out_dir=out / f"it{it:03d}" / "eval", max_tokens=cfg.max_tokens,
                               temperature=cfg.eval_temperature, prompt_style=cfg.prompt_style,
                               batch_size=cfg.batch_problems, task_obj=task)

    def at(model: str | Path) -> Policy:
        return base if Path(model) == base.path else base.with_checkpoint(model)

    if log.done(0) is None:
        clock = Stopwatch()
        log.write(0, {"model": str(cfg.init), "tokens_sampled": 0, "prompt_tokens": 0, "tokens_trained": 0,
                      "eval": evaluate(base, 0), "wall_s": 0.0, "eval_wall_s": clock()})
    policy = base
    bar = tqdm(range(1, cfg.iterations + 1), desc="rest-em", disable=not progress, dynamic_ncols=True)
    for it in bar:
        d = out / f"it{it:03d}"
        row = log.done(it)
        if row is not None:
            policy = switch(policy, at(row["model"]), base)
            continue
        if cfg.max_train_flops is not None and log.spent_flops() >= cfg.max_train_flops:
            tqdm.write(f"rest-em: train-compute budget reached ({cfg.max_train_flops:.3g} FLOPs); stopping "
                       f"before iteration {it}")
            break
        d.mkdir(parents=True, exist_ok=True)
        clock = Stopwatch()
        forward = 0
        if cfg.e_step == "sample":
            rows = policy_rollouts(policy, task, (cfg.task, cfg.task_options), train, cfg.k,
                                   temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed * 1000 + it,
                                   batch_problems=cfg.batch_problems, progress=progress, desc=f"E-step {it}",
                                   ray=ray, prompts=prompts, path=d / "samples.jsonl")
            gen, prompt = sampled_tokens(rows)
            found = [(rs[0].prompt, [r.text for r in rs if r.correct and keeps(p, r.text)]) for p, rs in zip(train, rows)]
            accuracy = sum(r.correct for rs in rows for r in rs) / max(1, len(rows) * cfg.k)
        else:
            rows = search_solutions(task, train, policy, get_verifier(f"prm:{cfg.prm}", task=task), "beam",
                                    SearchSettings(n=cfg.k, expansions=cfg.beam_expansions, temperature=cfg.temperature),
                                    d / "search.jsonl", cfg.seed * 1000 + it, progress=progress,
                                    desc=f"E-step {it} (PRM beam)", salt="rest-em-beam")
            gen = sum(r["generated_tokens"] for r in rows)
            prompt = int(sum(r.get("prefill_tokens", r["prompt_tokens"]) for r in rows))  # after prefix caching
            forward = int(sum(r["verifier_tokens"] for r in rows))
            found = [(task.prompt(p), [t for t in ("\n".join(s["steps"]) for s in r["solutions"] if s["correct"])
                                       if keeps(p, t)]) for p, r in zip(train, rows)]
            accuracy = sum(s["correct"] for r in rows for s in r["solutions"]) / max(
                1, sum(len(r["solutions"]) for r in rows))
        t_sample = clock()
        pairs, solved = [], 0
        for prompt_text, texts in found:
            kept = list(dict.fromkeys(texts))[:cfg.max_per_problem]
            solved += bool(kept)
            # the text the model was given (chat template applied), so the M-step trains on what it saw
            pairs += [(policy.training_prompt(prompt_text), t) for t in kept]
        if pairs:
            res = base.finetune(pairs, d, cfg.finetune, seed=cfg.seed * 1000 + it, progress=progress,
                                desc=f"M-step {it}")
            model_dir, trained = res.model_dir, res.tokens_trained
        else:  # nothing verified: no M-step, the policy stays as it was
            tqdm.write(f"rest-em: iteration {it}: no sample passed the checker; keeping the previous policy")
            model_dir, trained = policy.path, 0
        t_train = clock() - t_sample
        policy = switch(policy, at(model_dir), base)
        ev = evaluate(policy, it)
        row = log.write(it, {"model": str(model_dir), "tokens_sampled": gen, "prompt_tokens": prompt,
                             "tokens_forward": forward, "tokens_trained": trained, "kept": len(pairs),
                             "problems_solved": solved, "sample_accuracy": accuracy,
                             "sample_wall_s": t_sample, "train_wall_s": round(t_train, 3),
                             "wall_s": round(t_sample + t_train, 3), "eval": ev,
                             "eval_wall_s": round(clock() - t_sample - t_train, 3)})
        bar.set_postfix(greedy=f"{ev['greedy']['accuracy']:.3f}", kept=len(pairs))
    switch(policy, base, base)
    bar.close()
    rows = log.cumulative()
    summary = {"recipe": "rest-em", "config": cfg_dict, "iterations": rows}
    write_json_atomic(out / "summary.json", summary)
    plot_curve(rows, out / "curve.png", f"ReST-EM on {cfg.task}", keys=("greedy", f"maj@{cfg.eval_n}"))
    return summary


def format_iterations(rows, n: int) -> str:
    lines = [f"{'iter':>4} {'greedy':>16} {f'maj@{n}':>16} {f'pass@{n}':>16} {'kept':>6} {'train TFLOPs':>12} {'wall s':>7}"]
    def cell(ev, key):
        e = ev.get(key)
        return f"{e['accuracy']:.3f} [{e['ci'][0]:.2f},{e['ci'][1]:.2f}]" if e else "-"

    for r in rows:
        ev = r["eval"]
        lines.append(f"{r['iteration']:>4} {cell(ev, 'greedy'):>16} {cell(ev, f'maj@{n}'):>16} {cell(ev, f'pass@{n}'):>16} "
                     f"{r.get('kept', '-'):>6} {r['cum_flops'] / 1e12:>12.2f} {r['cum_wall_s']:>7.0f}")
    return "\n".join(lines)


HELP = {
    "init": "seed policy: a tiny checkpoint, an HF checkpoint directory, a .gguf or smollm2; every M-step "
            "restarts from it",
    "max_tokens": "new tokens per sample at most (default: the task's)",
    "eval_temperature": "sampling temperature of the held-out maj@n / pass@n",
    "batch_problems": "problems per sampling call (each with k samples)",
    "n_train": "training problems sampled in each E-step",
    "k": "samples per problem in the E-step",
    "max_per_problem": "distinct verified samples kept per problem",
    "keep": "verified = 'outcome' (right answer) or 'process' (right answer and every step right by the task's "
            "step checker)",
    "epochs": "M-step epochs over the kept samples",
    "steps": "M-step steps (default: --epochs over the kept samples, at most --max-steps)",
}
