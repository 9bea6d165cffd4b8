"""GRPO — reinforcement learning with verifiable rewards, on any policy (the tiny model or an HF checkpoint).

    deliberate train grpo --model runs/quickstart/sft/model --out runs/grpo
    deliberate train grpo --model smollm2 --task gym:chain_sum --task-arg min_terms=2 --task-arg max_terms=3 \
        --task-arg min_digits=1 --task-arg max_digits=2 --task-arg extract=last_number --prompt-style instruct \
        --n-train 128 --steps 40 --problems-per-step 2 --group 8 --lr 5e-6 --loss-type dapo --temperature 0.7 \
        --max-tokens 160 --eval-every 40 --checkpoint-every 10 --eval-problems 100 --eval-n 4 \
        --eval-temperature 0.7 --out runs/grpo-hf        # the former `train grpo-hf` (TRL's GRPOTrainer)

``--model`` (alias ``--init``) is any policy (:func:`deliberate.policy.load_policy`): a tiny checkpoint, an
HF checkpoint directory, a ``.gguf`` (converted on load) or ``smollm2``; HF instruct models get their chat
template (``--no-chat`` turns it off), token ids come from the HF tokenizer, and they want an HF-sized step
(``--lr 5e-6``; the defaults suit the tiny model). The update is :meth:`Policy.policy_gradient`'s trainer
(:mod:`deliberate.policy.gradient`: the clipped surrogate + KL loss, ``loss_type``, micro-batches), the same
code for both.

Each step (Shao et al., 2024, DeepSeekMath): take ``problems_per_step`` training problems, sample a
group of ``group`` completions for each with the current policy, reward each with the task's checker
(1 correct / 0 not; with ``reward="process"`` a completion scores 1 only if every step also passes
the task's step checker, so right answers reached through wrong steps earn nothing), and normalise
within the group: ``A_i = (r_i - mean(r)) / (std(r) + 1e-4)`` (groups whose rewards are all equal carry
no signal and are dropped). With ``credit="steps"`` / ``"steps-to-go"`` / ``"outcome+steps"`` the
advantage is per token instead, from the step checker's per-step rewards (process supervision; see
:mod:`deliberate.train.advantages`, which also says why ``"outcome+steps"`` has no position bias); it
needs a character-level tokenizer (the tiny model's). The loss is the clipped surrogate with ``rho = pi /
pi_old`` plus ``beta * KL(pi || pi_ref)`` to the frozen seed model, its tokens averaged by ``loss_type``
(TRL's ``GRPOConfig.loss_type`` names): ``grpo`` per completion then over completions, ``dapo`` over all
the batch's completion tokens (a long completion weighs by its length), ``dr_grpo`` summed / (completions
x the longest completion allowed); ``scale_rewards=False`` drops the division by the group's reward std
(Dr. GRPO). ``minibatches`` > 1 cuts each step's completions (in a seeded order) into that many
minibatches, one optimizer update each, as PPO and TRL's ``steps_per_generation`` do; ``inner_epochs`` > 1
reuses the step's completions for several passes; the default (1, 1) is one on-policy update per step.
``micro_batch`` only changes memory: each minibatch's forward/backward runs in chunks of that many
sequences whose gradients accumulate to the one update (0: the whole minibatch in one pass).

Why this recipe owns the loop rather than TRL's ``GRPOTrainer``: TRL's trainer owns generation
(``model.generate`` with a ``PreTrainedTokenizer``), so it cannot sample through our engine — whose
seeding contract (same seed, same samples, on any device and in any process split) makes runs resumable
and comparable — nor take per-token step credit from our task checkers, nor run the tiny model, whose
character tokenizer is not a ``PreTrainedTokenizer`` (and our engine samples the groups ~2x faster than
``generate`` on CPU, benchmarks/engine_vs_generate.py). So one loop serves both models. HF token ids are
the HF tokenizer's encoding of the sampled text (the engine returns text), the canonical tokenization of
what was sampled.

Checkpoints (model, optimizer, RNG, step, compute) every ``checkpoint_every`` steps; rerunning the
same command resumes from the last one and gives the same result as an uninterrupted run (sampling
is seeded per step, batches are a pure function of (seed, step)). Held-out greedy / maj@n / pass@n
every ``eval_every`` steps are rows of ``OUT/iterations/`` and of ``OUT/summary.json``. A step never
depends on the total (with the default constant learning rate), so rerunning a finished run with more ``--steps``
continues it to the same result as a run asked for the larger total from the start -- when the old total
is a multiple of ``eval_every`` (otherwise its last evaluation covered a partial interval; refused).

Under ``accelerate launch`` (data parallel, :mod:`deliberate.policy.distributed`): each rank samples
the groups of its contiguous share of the step's problems (same seeds as a single process: samples
are seeded per prompt and sample index), the groups are gathered on every rank, so rewards,
advantages and the logged counts are those of the whole step, then each rank trains on its share of
the step's completions with DDP (the loss is scaled so the averaged gradient is the single-process
one). Held-out evaluation, the iteration log, checkpoints and the summary are written by the main
process only; the others wait for it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.records import write_json_atomic
from deliberate.policy import Policy, load_policy
from deliberate.policy.checkpoint import load_state
from deliberate.policy.distributed import Dist, Single
from deliberate.policy.gradient import LOSS_TYPES, PolicyGradient, PolicyGradientSettings
from deliberate.policy.supervised import Example, batch_indices
from deliberate.tasks import get_task
from deliberate.train.common import PolicyRecipeConfig
from deliberate.train.advantages import (
    group_advantages,
    outcome_step_advantages,
    step_credit_advantages,
    step_rewards,
)
from deliberate.train.selfimprove import (
    VERIFIED,
    IterationLog,
    Stopwatch,
    check_verified_mode,
    evaluate_policy,
    plot_curve,
    rollouts,
    start_run,
    verified,
)

CREDIT = ("sequence", "steps", "steps-to-go", "outcome+steps")
LR_SCHEDULERS = ("constant", "linear", "cosine")
PROMPT_STYLES = ("plain", "instruct")


@dataclass(frozen=True)
class GRPOConfig(PolicyRecipeConfig):
    prompt_style: str = "plain"  # the task's prompt format: plain (the tiny model's) or instruct (HF instruct models)
    n_train: int = 4000
    steps: int = 80
    problems_per_step: int = 64
    group: int = 8
    temperature: float = 1.0  # sampling temperature; log-probs use logits / T. 0.7 was level with 1.0 (docs/RESULTS-archive.md)
    max_tokens: int | None = None  # new tokens per completion (training and evaluation); None: the task's
    reward: str = "outcome"  # "outcome": right answer; "process": right answer and every step right (step checker)
    # "sequence": one advantage per completion; "steps" / "steps-to-go": per-token advantages from the step
    # checker's per-step rewards (process supervision; see deliberate.train.advantages)
    credit: str = "sequence"
    # how token losses are averaged: "grpo" per completion then over completions, "dapo" over all the batch's
    # tokens, "dr_grpo" summed / (completions x max completion length); TRL's names
    loss_type: str = "grpo"
    scale_rewards: bool = True  # divide advantages by the group's reward std (False: Dr. GRPO)
    lr: float = 1e-4  # 5e-4 (16 problems/step) collapsed the tiny model; 5e-5 did nothing in 100 steps
    warmup: int = 0  # sampling steps of linear learning-rate warmup (Adam's first updates are its largest)
    # after warmup: "constant" (extendable: a step never depends on the total), or "linear" / "cosine" decay
    # toward 0 at `steps` (TRL's lr_scheduler_type names; these tie the run to its total, so it cannot be extended)
    lr_scheduler: str = "constant"
    beta: float = 0.04
    clip: float = 0.2
    inner_epochs: int = 1
    minibatches: int = 1  # optimizer updates per sampling step (the step's completions cut into this many)
    # sequences per forward/backward pass; gradients accumulate to the minibatch's one update, so only memory
    # changes (and float rounding). 0: the whole minibatch in one pass (64 problems x 8 = 512 sequences: ~5 GB peak)
    micro_batch: int = 0
    grad_clip: float = 1.0
    eval_every: int = 20
    checkpoint_every: int = 10
    max_train_flops: float | None = None  # stop (after evaluating) once the cumulative train FLOPs reach this
    eval_problems: int = 200
    eval_n: int = 16
    eval_temperature: float = 1.0
    eval_seed: int = 0
    seed: int = 0
    out: str = "runs/grpo"

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_train", "steps", "problems_per_step", "inner_epochs", "minibatches", "eval_every",
                     "checkpoint_every", "eval_problems", "eval_n"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        for name in ("warmup", "micro_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                problems.append(f"{name} must be an integer >= 0 (got {v!r})")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            problems.append(f"max_tokens must be an integer >= 1 (got {self.max_tokens!r})")
        if not isinstance(self.group, int) or self.group < 2:
            problems.append(f"group must be an integer >= 2 (advantages are relative to the group; got {self.group!r})")
        if not (0 < self.lr < 1):
            problems.append(f"lr must be in (0, 1) (got {self.lr!r})")
        if self.beta < 0 or not (0 < self.clip < 1) or not (self.temperature > 0):
            problems.append(f"need beta >= 0, 0 < clip < 1, temperature > 0 (got {self.beta}, {self.clip}, "
                            f"{self.temperature})")
        if not (self.eval_temperature > 0):
            problems.append(f"eval_temperature must be > 0 (got {self.eval_temperature!r})")
        if self.max_train_flops is not None and not self.max_train_flops > 0:
            problems.append(f"max_train_flops must be > 0 (got {self.max_train_flops!r})")
        if self.prompt_style not in PROMPT_STYLES:
            problems.append(f"prompt_style must be one of {', '.join(PROMPT_STYLES)} (got {self.prompt_style!r})")
        if self.reward not in VERIFIED:
            problems.append(f"reward must be one of {', '.join(VERIFIED)} (got {self.reward!r})")
        if self.credit not in CREDIT:
            problems.append(f"credit must be one of {', '.join(CREDIT)} (got {self.credit!r})")
        if self.loss_type not in LOSS_TYPES:
            problems.append(f"loss_type must be one of {', '.join(LOSS_TYPES)} (got {self.loss_type!r})")
        if self.lr_scheduler not in LR_SCHEDULERS:
            problems.append(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)} (got {self.lr_scheduler!r})")
        elif self.lr_scheduler != "constant" and isinstance(self.warmup, int) and isinstance(self.steps, int) \
                and self.warmup >= self.steps:
            problems.append(f"warmup ({self.warmup}) must be < steps ({self.steps}) for a decaying lr_scheduler")
        if problems:
            raise DeliberateError("grpo: " + "; ".join(problems))


def split_minibatches(n: int, m: int, seed: int, step: int) -> list[list[int]]:
    """Indices ``0..n-1`` cut into ``min(m, n)`` minibatches of near-equal size: in order for ``m = 1``,
    else in an order seeded by ``(seed, step)`` (so a resumed run cuts the same minibatches)."""
    if m <= 1 or n <= 1:
        return [list(range(n))]
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    order = torch.randperm(n, generator=g).tolist()
    m = min(m, n)
    bounds = [n * i // m for i in range(m + 1)]
    return [order[bounds[i]:bounds[i + 1]] for i in range(m)]


def lr_at(cfg: GRPOConfig, step: int) -> float:
    """The learning rate of sampling step ``step`` (0-based): linear warmup over ``cfg.warmup`` steps (step s
    at lr x (s+1)/warmup, so the last warmup step is at ``cfg.lr``), then ``cfg.lr`` held (constant) or
    decayed from that peak toward 0 at step ``cfg.steps`` (linear, cosine: transformers' shapes; the last step
    still has lr > 0). A pure function of the step, so a resumed run has the same schedule."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_scheduler == "constant":
        return cfg.lr
    peak = max(cfg.warmup - 1, 0)
    progress = (step - peak) / (cfg.steps - peak)
    if cfg.lr_scheduler == "linear":
        return cfg.lr * max(0.0, 1.0 - progress)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def check_extension(cfg: GRPOConfig) -> None:
    """Refuse to change ``steps`` of a run in ``cfg.out`` whose old total is not a multiple of
    ``eval_every``: its last evaluation row covers a partial interval, which a run asked for the new total
    from the start would not have (``steps`` is otherwise extendable: a step never depends on the total)."""
    p = Path(cfg.out) / "config.json"
    if not p.exists():
        return
    old = json.loads(p.read_text()).get("steps")
    if old is not None and old != cfg.steps and cfg.lr_scheduler != "constant":
        raise DeliberateError(f"{cfg.out} holds a run of {old} steps whose learning rate decays to 0 at step "
                              f"{old} (--lr-scheduler {cfg.lr_scheduler}): it cannot be continued to {cfg.steps} "
                              f"steps with the same results as an uninterrupted run; use another --out")
    if old is not None and old != cfg.steps and old % cfg.eval_every:
        raise DeliberateError(f"{cfg.out} holds a run of {old} steps, not a multiple of --eval-every "
                              f"{cfg.eval_every}: it cannot be continued to {cfg.steps} steps with the same "
                              f"results as an uninterrupted run; use another --out")


def run_grpo(cfg: GRPOConfig, progress: bool = True, dist: Dist | None = None, device: str = "auto") -> dict[str, Any]:
    """Run (or resume) GRPO; returns the summary. ``dist``: the data-parallel context under a launcher
    (:func:`deliberate.policy.distributed.setup`); otherwise a plain run on ``device`` (``auto``: a CUDA GPU
    when there is one, else the CPU), which samples, trains, checkpoints and evaluates there (the checkpoint
    loads anywhere). A resumed run may change device: float rounding then differs from an uninterrupted run."""
    if dist is None:  # a plain run (library call), even inside a launched process
        dist = Single(device, what="grpo")
    policy = load_policy(cfg.init, chat=cfg.chat, device=str(dist.device))
    try:
        return _run(cfg, policy, progress, dist)
    finally:
        policy.close()


def _run(cfg: GRPOConfig, policy: Policy, progress: bool, dist: Dist) -> dict[str, Any]:
    with dist.main_first():  # the main process writes config.json and recovers the checkpoint first
        check_extension(cfg)
        out, cfg_dict = start_run(cfg, extendable=("steps",))
        ckpt = out / "checkpoint"
        state = load_state(ckpt)
    task = get_task(cfg.task, **cfg.task_options)
    check_verified_mode(task, cfg.reward, "grpo --reward")
    if cfg.credit != "sequence":
        check_verified_mode(task, "process", f"grpo --credit {cfg.credit}")
    train = task.problems("train", cfg.n_train, seed=cfg.seed)
    max_len = (cfg.max_tokens or task.max_tokens) + 1  # the longest completion in tokens (+ EOS): dr_grpo's constant
    torch.manual_seed(cfg.seed)
    trainer = policy.policy_gradient(
        PolicyGradientSettings(lr=cfg.lr, clip=cfg.clip, beta=cfg.beta, temperature=cfg.temperature,
                               loss_type=cfg.loss_type, max_len=max_len, inner_epochs=cfg.inner_epochs,
                               micro_batch=cfg.micro_batch, grad_clip=cfg.grad_clip), dist=dist)
    log = IterationLog(out, trainer.n_params)
    start = 0
    acc = {"tokens_sampled": 0, "prompt_tokens": 0, "tokens_trained": 0, "tokens_forward": 0, "wall_s": 0.0,
           "reward_sum": 0.0, "n_samples": 0, "groups_used": 0, "groups": 0}
    if state is not None:
        trainer.load_state(ckpt)
        start = int(state["step"])
        acc = state["acc"]

    def evaluate(at: Policy, d: Path) -> dict[str, Any]:
        return evaluate_policy(at, cfg.task, cfg.task_options, n_problems=cfg.eval_problems, n=cfg.eval_n,
                               seed=cfg.eval_seed, out_dir=d / "eval", max_tokens=cfg.max_tokens,
                               temperature=cfg.eval_temperature, prompt_style=cfg.prompt_style)

    if dist.is_main and log.done(0) is None:
        clock = Stopwatch()
        log.write(0, {"step": 0, "tokens_sampled": 0, "tokens_trained": 0, "wall_s": 0.0,
                      "eval": evaluate(policy, out / "eval000"), "eval_wall_s": clock()})
    dist.barrier()  # every rank reads the same iteration log (the train budget counts its FLOPs)

    def flops_so_far(logged: float) -> float:
        fwd = acc["tokens_sampled"] + acc["prompt_tokens"] + acc["tokens_forward"]
        return logged + 6.0 * trainer.n_params * acc["tokens_trained"] + 2.0 * trainer.n_params * fwd

    bar = tqdm(total=cfg.steps, initial=start, desc="grpo", disable=not (progress and dist.is_main),
               dynamic_ncols=True)
    for step in range(start, cfg.steps):
        # the finished iterations' FLOPs, read once per step: under a launcher the main process may
        # log an iteration while another rank is still deciding `budget_hit` for this step
        logged = log.spent_flops() if cfg.max_train_flops is not None else 0.0
        if cfg.max_train_flops is not None and flops_so_far(logged) >= cfg.max_train_flops:
            if dist.is_main:
                tqdm.write(f"grpo: train-compute budget reached ({cfg.max_train_flops:.3g} FLOPs) after {step} steps")
            break
        clock = Stopwatch()
        idx = batch_indices(len(train), cfg.problems_per_step, cfg.seed, step)
        probs = [train[i] for i in idx]
        mine = dist.shard(probs)
        # each rank samples its share of the problems; every rank then holds all the step's groups
        with trainer.sampler() as sampler:
            groups = dist.gather(rollouts(sampler, task, mine, cfg.group, temperature=cfg.temperature,
                                          max_tokens=cfg.max_tokens, seed=cfg.seed * 1_000_003 + step,
                                          prompts=[task.prompt(p, cfg.prompt_style) for p in mine], progress=False))
        exs, advs = learning_signal(cfg, task, trainer, probs, groups, acc)
        stats = trainer.step(exs, advs, split_minibatches(len(exs), cfg.minibatches, cfg.seed, step), lr_at(cfg, step))
        acc["tokens_trained"] += stats.get("tokens_trained", 0)
        acc["tokens_forward"] += stats.get("tokens_forward", 0)
        acc["wall_s"] += clock()
        done = step + 1
        bar.update(1)
        bar.set_postfix(reward=f"{sum(r.correct for rs in groups for r in rs) / (len(groups) * cfg.group):.2f}",
                        kl=f"{stats.get('kl', 0):.3f}")
        budget_hit = cfg.max_train_flops is not None and flops_so_far(logged) >= cfg.max_train_flops
        if done % cfg.eval_every == 0 or done == cfg.steps or budget_hit:
            it = -(-done // cfg.eval_every)
            if dist.is_main and log.done(it) is None:
                clock = Stopwatch()
                d = out / f"eval{it:03d}"
                if not (d / "model" / "config.json").exists():
                    trainer.save_model(d / "model")
                with policy.with_checkpoint(d / "model") as now:
                    ev = evaluate(now, d)
                log.write(it, {"step": done, "tokens_sampled": acc["tokens_sampled"],
                               "prompt_tokens": acc["prompt_tokens"], "tokens_trained": acc["tokens_trained"],
                               "tokens_forward": acc["tokens_forward"], "wall_s": round(acc["wall_s"], 3),
                               "train_reward": acc["reward_sum"] / max(1, acc["n_samples"]),
                               "groups_used": acc["groups_used"], "groups": acc["groups"], "eval": ev,
                               "eval_wall_s": clock()})
            dist.barrier()
            acc = {k: 0 if isinstance(v, int) else 0.0 for k, v in acc.items()}
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or budget_hit:
            if dist.is_main:
                trainer.save_state(ckpt, {"step": done, "config": cfg_dict, "acc": acc})
            dist.barrier()
    bar.close()
    rows = log.cumulative()
    summary = {"recipe": "grpo", "config": cfg_dict, "device": str(dist.device), "iterations": rows}
    if dist.is_main:
        write_json_atomic(out / "summary.json", summary)
        plot_curve(rows, out / "curve.png", f"GRPO on {cfg.task}", keys=("greedy", f"maj@{cfg.eval_n}"))
    return summary


def learning_signal(cfg: GRPOConfig, task, trainer: PolicyGradient, probs, groups,
                    acc: dict[str, Any]) -> tuple[list[Example], list]:
    """The step's training sequences and their advantages (per completion, or per token with step credit),
    from each problem's group of rollouts; groups without signal are dropped, and so are empty completions.
    Adds the step's sampled tokens, rewards and group counts to ``acc``."""
    exs, advs = [], []
    for prob, rs in zip(probs, groups):
        acc["groups"] += 1
        acc["tokens_sampled"] += sum(r.completion_tokens for r in rs)
        acc["prompt_tokens"] += rs[0].prompt_tokens
        rewards = [float(verified(task, prob, r.text, r.correct, cfg.reward)) for r in rs]
        acc["reward_sum"] += sum(rewards)
        acc["n_samples"] += len(rs)
        seqs = [trainer.example(rs[0].prompt, r.text, r.finish_reason == "stop") for r in rs]
        lengths = [len(e.ids) - e.n_prompt for e in seqs]  # completion tokens (+ EOS)
        if cfg.credit == "sequence":
            a = group_advantages(rewards, cfg.scale_rewards)
        else:
            if any(n - (r.finish_reason == "stop") != len(r.text) for r, n in zip(rs, lengths)):
                raise DeliberateError("grpo --credit steps needs a character-level tokenizer (the tiny model's)")
            items = [(*step_rewards(task, prob, r.text, w), n) for r, w, n in zip(rs, rewards, lengths)]
            a = (outcome_step_advantages(items, cfg.scale_rewards) if cfg.credit == "outcome+steps"
                 else step_credit_advantages(items, to_go=cfg.credit == "steps-to-go", scale=cfg.scale_rewards))
        if a is None:
            continue
        acc["groups_used"] += 1
        for e, n, ai in zip(seqs, lengths, a):
            if n:
                exs.append(e)
                advs.append(ai)
    return exs, advs
