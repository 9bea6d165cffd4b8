"""GRPO — reinforcement learning with verifiable rewards, for the tiny model.

    deliberate train grpo --init runs/quickstart/sft/model --out runs/grpo

Each step (Shao et al., 2024, DeepSeekMath): take ``problems_per_step`` training problems, sample a
group of ``group`` completions for each with the current policy, reward each with the task's checker
(1 correct / 0 not; with ``reward="process"`` a completion scores 1 only if every step also passes
the task's step checker, so right answers reached through wrong steps earn nothing), and normalise
within the group: ``A_i = (r_i - mean(r)) / (std(r) + 1e-4)``
(groups whose rewards are all equal carry no signal and are dropped). With ``credit="steps"`` the
advantage is per token instead (process supervision, DeepSeekMath sec. 4.1.3): every step of every
completion in the group gets the reward ``task.step_correct`` gives it (prefix correctness: a step
counts only if it and all earlier steps are right), plus one final reward at the completion's last
token (the ``reward`` above); all of the group's rewards are normalised together, and a token's
advantage is its own step's normalised reward (``"steps"``: a right step is credited even when a
later one goes wrong) or the sum over its step and all later ones (``"steps-to-go"``, the paper's
formula). A group then carries signal whenever its completions' steps differ, not only their
answers. Pooling the normalisation biases tokens by position: later steps are right less often than
earlier ones, so their tokens (the answer line, and under ``"steps"`` the end-of-sequence token, which
carries only the final reward) get negative advantages on average -- a steady push away from answering
and stopping. ``"outcome+steps"`` removes it: every token gets the completion's group-normalised final
reward (plain GRPO's advantage), plus its step's reward normalised among the group's steps *at the same
position* (a per-position baseline), so both terms average zero over the group. The loss per
completion token
is the clipped surrogate ``-min(rho * A, clip(rho, 1-eps, 1+eps) * A)`` with
``rho = pi / pi_old`` plus ``beta * KL(pi || pi_ref)`` (the k3 estimator
``exp(ref - logp) - (ref - logp) - 1``) to the frozen seed model; averaged over each completion's
tokens, then over completions (``loss_type="grpo"``). ``loss_type="dapo"`` averages over all of the
batch's completion tokens instead (DAPO's token-level loss: a long completion weighs by its length), and
``"dr_grpo"`` sums the tokens and divides by a constant, completions x the longest completion the task
allows (Dr. GRPO: no length normalisation at all); ``scale_rewards=False`` drops the division by the
group's reward std (Dr. GRPO: it up-weights groups that nearly all agree). The names follow TRL's
``GRPOConfig.loss_type`` / ``scale_rewards``. ``minibatches`` > 1 cuts each step's completions (in a seeded order)
into that many minibatches, one optimizer update each, as PPO and TRL's ``steps_per_generation`` do:
more updates per sampled token, where the ratio to the sampling policy and its clip matter.
``inner_epochs`` > 1 reuses the step's completions for several passes. ``minibatches = inner_epochs
= 1`` (the default) is one on-policy update per step. ``micro_batch`` only changes memory: each
minibatch's forward/backward runs in chunks of that many sequences (each trimmed to its own longest)
whose gradients accumulate to the one update (the loss is divided by the whole minibatch's
denominator); the default 0 keeps the whole minibatch in one pass, as the recorded runs did.

Why not TRL's ``GRPOTrainer`` here: it drives generation through ``model.generate`` with a
``PreTrainedTokenizer``; the tiny model's character tokenizer is not one, and our engine samples the
groups ~2x faster than ``generate`` on CPU (benchmarks/engine_vs_generate.py). HF checkpoints use
TRL's trainer: ``deliberate train grpo-hf`` (:mod:`deliberate.train.grpo_hf`).

Checkpoints (model, optimizer, RNG, step, compute) every ``checkpoint_every`` steps; rerunning the
same command resumes from the last one and gives the same result as an uninterrupted run (sampling
is seeded per step, batches are a pure function of (seed, step)). Held-out greedy / maj@n / pass@n
every ``eval_every`` steps are rows of ``OUT/iterations/`` and of ``OUT/summary.json``. A step never
depends on the total (with the default constant learning rate), so rerunning a finished run with more ``--steps``
continues it to the same result as a run asked for the larger total from the start -- when the old total
is a multiple of ``eval_every`` (otherwise its last evaluation covered a partial interval; refused).

Under ``accelerate launch`` (data parallel, :mod:`deliberate.train.distributed`): each rank samples
the groups of its contiguous share of the step's problems (same seeds as a single process: samples
are seeded per prompt and sample index), the groups are gathered on every rank, so rewards,
advantages and the logged counts are those of the whole step, then each rank trains on its share of
the step's completions with DDP (the loss is scaled so the averaged gradient is the single-process
one). Held-out evaluation, the iteration log, checkpoints and the summary are written by the main
process only; the others wait for it.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.records import write_json_atomic
from deliberate.models.tiny import load_tiny
from deliberate.policy import TinyPolicy
from deliberate.policy.tiny import save_model
from deliberate.tasks import get_task
from deliberate.train.common import (
    IGNORE,
    Example,
    batch_indices,
    collate,
    load_state,
    restore_rng,
    save_checkpoint,
)
from deliberate.train.distributed import Dist, Single, add_device_argument, setup
from deliberate.train.rest_em import format_iterations
from deliberate.train.selfimprove import (
    VERIFIED,
    IterationLog,
    Stopwatch,
    add_config_arguments,
    check_verified_mode,
    config_from_args,
    evaluate_policy,
    plot_curve,
    rollouts,
    start_run,
    verified,
)

CREDIT = ("sequence", "steps", "steps-to-go", "outcome+steps")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
LR_SCHEDULERS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class GRPOConfig:
    init: str = "runs/quickstart/sft/model"
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=lambda: {"min_ops": 1, "max_ops": 3, "max_operand": 15})
    n_train: int = 4000
    steps: int = 80
    problems_per_step: int = 64
    group: int = 8
    temperature: float = 1.0  # sampling temperature; log-probs use logits / T. 0.7 was level with 1.0 (docs/RESULTS.md)
    reward: str = "outcome"  # "outcome": right answer; "process": right answer and every step right (step checker)
    # "sequence": one advantage per completion; "steps" / "steps-to-go": per-token advantages from the step
    # checker's per-step rewards (process supervision; see the module docstring)
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
        if not isinstance(self.group, int) or self.group < 2:
            problems.append(f"group must be an integer >= 2 (advantages are relative to the group; got {self.group!r})")
        if not (0 < self.lr < 1):
            problems.append(f"lr must be in (0, 1) (got {self.lr!r})")
        if self.beta < 0 or not (0 < self.clip < 1) or not (self.temperature > 0):
            problems.append(f"need beta >= 0, 0 < clip < 1, temperature > 0 (got {self.beta}, {self.clip}, "
                            f"{self.temperature})")
        if self.max_train_flops is not None and not self.max_train_flops > 0:
            problems.append(f"max_train_flops must be > 0 (got {self.max_train_flops!r})")
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


def token_logprobs(model, batch: dict[str, torch.Tensor],
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of each sequence's completion tokens [B, L-1] and their mask, under the policy
    that sampled them: logits divided by the sampling ``temperature`` (as TRL's GRPOTrainer does), so the
    ratio and the KL refer to the distribution the completions came from."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    target = batch["labels"][:, 1:]
    mask = target != IGNORE
    lp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    return lp * mask, mask


def loss_denominator(loss_type: str, completion_tokens: list[int], max_len: int | None = None) -> float:
    """What :func:`grpo_loss` divides its summed terms by for a (mini)batch whose completions have these
    token counts: their number (``grpo``: the sum of per-completion means), their total tokens (``dapo``), or
    their number x ``max_len`` (``dr_grpo``). Computed over the whole minibatch, so a rank's share under DDP
    divides by the global value / world size and the averaged gradient is the single-process one."""
    if loss_type == "grpo":
        return float(len(completion_tokens))
    if loss_type == "dapo":
        return float(max(1, sum(completion_tokens)))
    if loss_type == "dr_grpo":
        if max_len is None:
            raise DeliberateError("grpo: loss_type 'dr_grpo' needs max_len (the longest completion allowed)")
        return float(len(completion_tokens) * max_len)
    raise DeliberateError(f"grpo: loss_type must be one of {', '.join(LOSS_TYPES)} (got {loss_type!r})")


def grpo_loss(logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
              clip: float, beta: float, denom: float | None = None, loss_type: str = "grpo",
              max_len: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate + beta * k3 KL. ``loss_type="grpo"``: mean over each sequence's tokens then over
    sequences; ``"dapo"``: mean over all tokens; ``"dr_grpo"``: sum over tokens / (sequences x ``max_len``).
    ``denom``: divide the summed terms by this instead of this batch's own :func:`loss_denominator`, for a
    rank's share of a larger batch."""
    ratio = torch.exp(logp - old)
    a = adv[:, None] if adv.dim() == 1 else adv  # per completion, or per token ([B, L-1], step credit)
    pg = -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    d = ref - logp
    kl = torch.exp(d) - d - 1
    per_tok = (pg + beta * kl) * mask
    n = mask.sum(dim=1).clamp(min=1)
    total = (per_tok.sum(dim=1) / n).sum() if loss_type == "grpo" else per_tok.sum()
    if denom is None:
        denom = loss_denominator(loss_type, mask.sum(dim=1).tolist(), max_len)
    loss = total / denom
    with torch.no_grad():
        stats = {"kl": float(((kl * mask).sum(dim=1) / n).mean()),
                 "clipped": float((((ratio - 1).abs() > clip) & mask).sum() / mask.sum().clamp(min=1))}
    return loss, stats


def group_advantages(rewards: list[float], scale: bool = True) -> list[float] | None:
    """``(r - mean) / (std + 1e-4)`` (``scale=False``: ``r - mean``, Dr. GRPO); None when all are equal."""
    m = sum(rewards) / len(rewards)
    sd = math.sqrt(sum((r - m) ** 2 for r in rewards) / len(rewards))
    if sd == 0:
        return None
    return [(r - m) / (sd + 1e-4) if scale else r - m for r in rewards]


def step_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the steps :meth:`Task.split_steps` finds in ``text`` (its non-empty
    lines), in order; each span takes its line's newline, blank lines go to the step after them, and
    trailing blank text to the last step."""
    spans, start, pos = [], 0, 0
    pieces = text.split("\n")
    for i, line in enumerate(pieces):
        end = pos + len(line) + (1 if i < len(pieces) - 1 else 0)
        if line.strip():
            spans.append((start, end))
            start = end
        pos = end
    if spans and spans[-1][1] < len(text):
        spans[-1] = (spans[-1][0], len(text))
    return spans


def step_rewards(task, problem, text: str, final: float) -> tuple[list[tuple[int, int]], list[float]]:
    """The steps' character spans and their rewards (the step checker's prefix correctness), then ``final``
    (the completion's own reward) as the last element."""
    spans = step_spans(text)
    ok = task.step_correct(problem, task.split_steps(text)) or []
    if len(ok) != len(spans):
        raise DeliberateError(f"grpo: {task.name!r} step checker returned {len(ok)} values for {len(spans)} steps")
    return spans, [float(x) for x in ok] + [final]


def step_credit_advantages(items: list[tuple[list[tuple[int, int]], list[float], int]], to_go: bool,
                           scale: bool = True) -> list[list[float]] | None:
    """Per-token advantages of one group for ``credit="steps"`` / ``"steps-to-go"``: ``items`` holds, per
    completion, (step spans, step rewards + final reward, number of completion tokens — one per character,
    plus EOS). All rewards of the group are normalised together (None when they are all equal); a token's
    advantage is its step's normalised reward (to_go: summed with all later steps'), and the final reward's
    is added at the last token (to_go: at every token). Tokens outside every span (an empty completion,
    EOS) belong to no step."""
    flat = group_advantages([r for _, rs, _ in items for r in rs], scale)
    if flat is None:
        return None
    out, pos = [], 0
    for spans, rs, n in items:
        z, pos = flat[pos:pos + len(rs)], pos + len(rs)
        steps, final = z[:-1], z[-1]
        if to_go:
            for j in range(len(steps) - 2, -1, -1):
                steps[j] += steps[j + 1]
        adv = [final if to_go else 0.0] * n
        for (a, b), v in zip(spans, steps):
            for t in range(a, min(b, n)):
                adv[t] += v
        if n:
            adv[-1] += 0.0 if to_go else final
        out.append(adv)
    return out


def outcome_step_advantages(items: list[tuple[list[tuple[int, int]], list[float], int]], scale: bool = True
                            ) -> list[list[float]] | None:
    """Per-token advantages of one group for ``credit="outcome+steps"`` (``items`` as for
    :func:`step_credit_advantages`): a token's advantage is its completion's group-normalised final reward
    plus, inside a step, that step's reward normalised among the group's completions that have a step at
    the same position (0 where they all agree or only one has it). EOS and tokens outside every span get
    the final term only. None when neither term carries signal."""
    finals = group_advantages([rs[-1] for _, rs, _ in items], scale) or [0.0] * len(items)
    depth = max((len(rs) - 1 for _, rs, _ in items), default=0)
    per_pos = []  # per position j: {completion index: normalised step reward}
    for j in range(depth):
        have = [i for i, (_, rs, _) in enumerate(items) if len(rs) - 1 > j]
        z = group_advantages([items[i][1][j] for i in have], scale) if len(have) > 1 else None
        per_pos.append(dict(zip(have, z)) if z is not None else {})
    if not any(finals) and not any(per_pos):
        return None
    out = []
    for i, (spans, rs, n) in enumerate(items):
        adv = [finals[i]] * n
        for j, (a, b) in enumerate(spans):
            v = per_pos[j].get(i, 0.0)
            for t in range(a, min(b, n)):
                adv[t] += v
        out.append(adv)
    return out


def advantage_tensor(exs: list[Example], advs: list, width: int) -> torch.Tensor:
    """``[B]`` per-completion advantages (floats), or ``[B, width]`` aligned with :func:`token_logprobs` for
    per-token ones (lists; a completion's tokens sit at ``n_prompt - 1 ...``)."""
    if all(isinstance(a, float) for a in advs):
        return torch.tensor(advs)
    t = torch.zeros(len(exs), width)
    for i, (e, a) in enumerate(zip(exs, advs)):  # one advantage per completion token
        t[i, e.n_prompt - 1: len(e.ids) - 1] = torch.tensor(a)
    return t


def micro_batches(batch: dict[str, torch.Tensor], tensors: tuple[torch.Tensor, ...], micro: int
                  ) -> list[tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]]:
    """``batch`` (a :func:`collate` output) cut into row ranges of at most ``micro`` sequences (0: one range),
    each trimmed to its own longest sequence, with the matching rows and columns of ``tensors`` (aligned
    with :func:`token_logprobs`' ``[B, L-1]`` output; ``[B]`` ones are cut by row only). Right padding and
    a causal model make the trim exact: the dropped columns are padding in every kept row."""
    n = batch["input_ids"].shape[0]
    step = micro if micro > 0 else n
    out = []
    for lo in range(0, n, step):
        rows = slice(lo, min(n, lo + step))
        width = int(batch["attention_mask"][rows].sum(dim=1).max())
        sub = {k: v[rows, :width] for k, v in batch.items()}
        out.append((sub, tuple(t[rows] if t.dim() == 1 else t[rows, :width - 1] for t in tensors)))
    return out


def merge_stats(chunks: list[tuple[dict[str, float], torch.Tensor]]) -> dict[str, float]:
    """:func:`grpo_loss`'s stats of a minibatch from its micro-batches' (each with its completion mask):
    ``kl`` is a mean over sequences, ``clipped`` a fraction of tokens."""
    if len(chunks) == 1:
        return chunks[0][0]
    seqs = [float(m.shape[0]) for _, m in chunks]
    toks = [float(m.sum()) for _, m in chunks]
    return {"kl": sum(st["kl"] * n for (st, _), n in zip(chunks, seqs)) / max(1.0, sum(seqs)),
            "clipped": sum(st["clipped"] * t for (st, _), t in zip(chunks, toks)) / max(1.0, sum(toks))}


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
    (:func:`deliberate.train.distributed.setup`); otherwise a plain run on ``device`` (``auto``: a CUDA GPU
    when there is one, else the CPU), which samples, trains and checkpoints there (the checkpoint loads
    anywhere). A resumed run may change device: float rounding then differs from an uninterrupted run."""
    if dist is None:  # a plain run (library call), even inside a launched process
        dist = Single(device, what="grpo")
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
    max_len = task.max_tokens + 1  # the longest completion in tokens (characters + EOS): dr_grpo's constant
    torch.manual_seed(cfg.seed)
    model, tok = load_tiny(ckpt if state is not None else cfg.init)
    ref, _ = load_tiny(cfg.init)
    ref.eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    log = IterationLog(out, n_params)
    model, ref = dist.place(model), dist.place(ref)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = 0
    acc = {"tokens_sampled": 0, "prompt_tokens": 0, "tokens_trained": 0, "tokens_forward": 0, "wall_s": 0.0,
           "reward_sum": 0.0, "n_samples": 0, "groups_used": 0, "groups": 0}
    if state is not None:
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))  # -> params' device
        restore_rng(ckpt)
        start = int(state["step"])
        acc = state["acc"]
    ddp_model, ddp_opt = dist.prepare(model, opt)  # plain runs: the same objects

    def evaluate(it: int) -> dict[str, Any]:
        d = out / f"eval{it:03d}"
        model_dir = d / "model"
        if not (model_dir / "char_tokenizer.json").exists():
            save_model(model, tok, model_dir)
        return evaluate_policy(model_dir, cfg.task, cfg.task_options, n_problems=cfg.eval_problems, n=cfg.eval_n,
                               seed=cfg.eval_seed, out_dir=d / "eval")

    if dist.is_main and log.done(0) is None:
        clock = Stopwatch()
        log.write(0, {"step": 0, "tokens_sampled": 0, "tokens_trained": 0, "wall_s": 0.0,
                      "eval": evaluate_policy(cfg.init, cfg.task, cfg.task_options, n_problems=cfg.eval_problems,
                                              n=cfg.eval_n, seed=cfg.eval_seed, out_dir=out / "eval000" / "eval"),
                      "eval_wall_s": clock()})
    dist.barrier()  # every rank reads the same iteration log (the train budget counts its FLOPs)

    def flops_so_far(logged: float) -> float:
        fwd = acc["tokens_sampled"] + acc["prompt_tokens"] + acc["tokens_forward"]
        return logged + 6.0 * n_params * acc["tokens_trained"] + 2.0 * n_params * fwd

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
        model.eval()
        # each rank samples its share of the problems; every rank then holds all the step's groups
        groups = dist.gather(rollouts(TinyPolicy(model=model, tokenizer=tok), task, dist.shard(probs), cfg.group, temperature=cfg.temperature,
                                      seed=cfg.seed * 1_000_003 + step, progress=False))
        exs, advs = [], []
        for prob, rs in zip(probs, groups):
            acc["groups"] += 1
            acc["tokens_sampled"] += sum(r.completion_tokens for r in rs)
            acc["prompt_tokens"] += rs[0].prompt_tokens
            rewards = [float(verified(task, prob, r.text, r.correct, cfg.reward)) for r in rs]
            acc["reward_sum"] += sum(rewards)
            acc["n_samples"] += len(rs)
            completions = [tok.encode(r.text) + ([tok.eos_token_id] if r.finish_reason == "stop" else [])
                           for r in rs]
            if cfg.credit == "sequence":
                a = group_advantages(rewards, cfg.scale_rewards)
            else:
                if any(len(c) - (r.finish_reason == "stop") != len(r.text) for r, c in zip(rs, completions)):
                    raise DeliberateError("grpo --credit steps needs a character-level tokenizer (the tiny model's)")
                items = [(*step_rewards(task, prob, r.text, w), len(c)) for r, w, c in zip(rs, rewards, completions)]
                a = (outcome_step_advantages(items, cfg.scale_rewards) if cfg.credit == "outcome+steps"
                     else step_credit_advantages(items, to_go=cfg.credit == "steps-to-go", scale=cfg.scale_rewards))
            if a is None:
                continue
            acc["groups_used"] += 1
            p = [tok.bos_token_id] + tok.encode(rs[0].prompt)
            for c, ai in zip(completions, a):
                if not c:
                    continue
                exs.append(Example(tuple(p + c), len(p)))
                advs.append(ai)
        stats = {}
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        mbs = split_minibatches(len(exs), cfg.minibatches, cfg.seed, step)
        if exs:
            stats = _update(cfg, dist, ddp_model, ddp_opt, model, ref, tok, exs, advs, mbs, acc, max_len)
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
                model.eval()
                ev = evaluate(it)
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
                save_checkpoint(ckpt, model, tok, opt, {"step": done, "config": cfg_dict, "acc": acc})
            dist.barrier()
    bar.close()
    rows = log.cumulative()
    summary = {"recipe": "grpo", "config": cfg_dict, "device": str(dist.device), "iterations": rows}
    if dist.is_main:
        write_json_atomic(out / "summary.json", summary)
        plot_curve(rows, out / "curve.png", f"GRPO on {cfg.task}", keys=("greedy", f"maj@{cfg.eval_n}"))
    return summary


def _update(cfg: GRPOConfig, dist: Dist, ddp_model, ddp_opt, model, ref, tok, exs: list[Example],
            advs: list[float], mbs: list[list[int]], acc: dict[str, Any], max_len: int) -> dict[str, float]:
    """The policy updates of one step, one per minibatch (``mbs``, indices into ``exs``) and inner epoch,
    with every minibatch's old and reference log-probs taken before the first update. Under DDP each
    rank takes its contiguous share of each minibatch's completions (every rank holds all of them, with
    their group-normalised advantages) and divides its sequences' loss sum by the whole minibatch's
    :func:`loss_denominator` / ``world_size``, so DDP's gradient average equals the single-process
    gradient; a rank whose share is empty (fewer completions than ranks) runs a zero-weighted dummy
    sequence, so the all-reduce still meets every rank. Token counts are summed over ranks. In a plain
    run (``Single``) every share is the whole minibatch, the world size and weight are 1, and ``no_sync``
    does nothing: the same arithmetic as a loop written without DDP in mind."""
    ddp_model.train()
    parts = []
    for idx in mbs:
        mine, my_adv = dist.shard([exs[i] for i in idx]), dist.shard([advs[i] for i in idx])
        weight = 1.0
        if not mine:
            mine, my_adv, weight = [Example((tok.bos_token_id, tok.eos_token_id), 1)], [0.0], 0.0
        batch = dist.to_device(collate(mine, tok.pad_token_id))
        with torch.no_grad():
            old, mask = token_logprobs(model, batch, cfg.temperature)
            ref_lp, _ = token_logprobs(ref, batch, cfg.temperature)
        (ntok,) = dist.sum(int(batch["attention_mask"].sum()) if weight else 0)
        acc["tokens_forward"] += 2 * ntok
        denom = loss_denominator(cfg.loss_type, [len(exs[i].ids) - exs[i].n_prompt for i in idx], max_len)
        parts.append((batch, advantage_tensor(mine, my_adv, old.shape[1]).to(dist.device), old, ref_lp, mask, ntok,
                      weight, denom))
    stats: dict[str, float] = {}
    for _ in range(cfg.inner_epochs):
        for batch, adv, old, ref_lp, mask, ntok, weight, denom in parts:
            ddp_opt.zero_grad(set_to_none=True)
            subs = micro_batches(batch, (adv, old, ref_lp, mask), cfg.micro_batch)
            chunks = []
            for k, (sub, (a, o, r, m)) in enumerate(subs):
                # gradients stay local until the rank's last micro-batch, whose backward all-reduces the sum
                # (ranks may hold different numbers of micro-batches; each makes exactly one synced backward)
                with dist.no_sync(ddp_model) if k < len(subs) - 1 else contextlib.nullcontext():
                    logp, _ = token_logprobs(ddp_model, sub, cfg.temperature)
                    loss, st = grpo_loss(logp, o, r, m, a, cfg.clip, cfg.beta, denom=denom / dist.world_size,
                                         loss_type=cfg.loss_type)
                    dist.backward(loss * weight)
                chunks.append((st, m))
            stats = merge_stats(chunks)
            if cfg.grad_clip:
                dist.clip_grad_norm_(ddp_model, cfg.grad_clip)
            ddp_opt.step()
            acc["tokens_trained"] += ntok
    return stats


HELP = {
    "init": "seed policy and KL reference (a tiny checkpoint)",
    "steps": "sampling steps in all; rerunning a finished run with more continues it (old total a multiple "
             "of --eval-every)",
    "problems_per_step": "training problems per step",
    "group": "completions sampled per problem (advantages are relative to the group)",
    "beta": "weight of the KL penalty to the seed model",
    "clip": "PPO-style clip range of the probability ratio",
    "credit": "advantages per completion (sequence) or per token from the step checker's per-step rewards "
              "(steps: each step's own; steps-to-go: summed over later steps, DeepSeekMath's process supervision; "
              "outcome+steps: the completion's advantage plus its step's, normalised per step position)",
    "loss_type": "token averaging: grpo (per completion, then over completions), dapo (over all the batch's "
                 "tokens), dr_grpo (token sum / (completions x max completion length)); TRL's names",
    "scale_rewards": "divide group advantages by the group's reward std (Dr. GRPO turns this off)",
    "warmup": "steps of linear learning-rate warmup from lr/warmup to lr (0: none)",
    "lr_scheduler": "learning rate after warmup: constant (the run can be extended), or linear / cosine decay "
                    "toward 0 at --steps (TRL's names)",
    "inner_epochs": "passes over each step's completions",
    "minibatches": "optimizer updates per pass: the step's completions cut into this many minibatches",
    "micro_batch": "sequences per forward/backward pass, gradients accumulated to each minibatch's one update: "
                   "the same training in less memory (0: the whole minibatch at once)",
}


def add_arguments(parser) -> None:
    add_config_arguments(parser, GRPOConfig, HELP)
    add_device_argument(parser)


def main(args) -> int:
    cfg = config_from_args(GRPOConfig, args)
    dist = setup("grpo", args.device)
    summary = run_grpo(cfg, dist=dist)
    dist.close()  # on an error the launcher stops the other ranks
    if not dist.is_main:
        return 0
    print(format_iterations(summary["iterations"], cfg.eval_n))
    print(f"summary: {Path(cfg.out) / 'summary.json'}   plot: {Path(cfg.out) / 'curve.png'}")
    return 0
