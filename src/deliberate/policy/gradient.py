"""Policy-gradient updates for RL with verifiable rewards, on any torch causal LM given token ids.

:class:`PolicyGradient` is what :meth:`Policy.policy_gradient` returns: a stateful trainer that holds the
trainable model, the frozen reference (KL) model and the optimizer. A recipe (GRPO,
:mod:`deliberate.train.grpo`) samples through :meth:`PolicyGradient.sampler`, turns each sampled
completion into token ids with :meth:`PolicyGradient.example`, computes advantages, and calls
:meth:`PolicyGradient.step`; :meth:`save_state` / :meth:`load_state` write and read model + optimizer
+ RNG for an exact resume. The tiny model and HF checkpoints differ only in what they hand the
trainer (tokenizer, how a prompt is rendered, how a sampler is built), so both run this code.

The loss per completion token is the clipped surrogate ``-min(rho * A, clip(rho, 1-eps, 1+eps) * A)``
with ``rho = pi / pi_old`` plus ``beta * KL(pi || pi_ref)`` (the k3 estimator ``exp(ref - logp) - (ref -
logp) - 1``); log-probs are taken at the sampling temperature (logits / T, as TRL's GRPOTrainer does).
Token losses are aggregated by ``loss_type`` (TRL's ``GRPOConfig.loss_type`` names): ``grpo`` averages
over each completion's tokens then over completions, ``dapo`` over all of the minibatch's completion
tokens, ``dr_grpo`` sums the tokens and divides by completions x ``max_len``. Each minibatch is one
optimizer update; ``micro_batch`` cuts its forward/backward into chunks whose gradients accumulate (the
loss is divided by the whole minibatch's denominator), so only memory changes.

Why our loss rather than TRL's: TRL computes it inside ``GRPOTrainer._compute_loss`` on the trainer's
own batch dict and accelerator (there is no standalone loss function to call), and its one standalone
piece that fits, ``selective_log_softmax``, is the same gather of log-softmax; keeping our few lines
makes the tiny model's runs reproduce bit for bit and needs no TRL for RL at all.

Data parallel (``dist`` from :mod:`deliberate.policy.distributed` under ``accelerate launch``): each rank
takes its contiguous share of each minibatch's completions and divides its loss sum by the whole
minibatch's :func:`loss_denominator` / ``world_size``, so DDP's gradient average equals the
single-process gradient; a rank whose share is empty runs a zero-weighted dummy sequence so the
all-reduce still meets every rank. Token counts are summed over ranks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deliberate.atomic import recover_dir, replace_dir
from deliberate.errors import DeliberateError
from deliberate.policy.checkpoint import load_state, restore_rng, save_checkpoint
from deliberate.policy.distributed import Dist, Single
from deliberate.policy.scoring import pair_example, summed_logprobs, token_logprobs
from deliberate.policy.supervised import Example, collate

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


@dataclass(frozen=True)
class PolicyGradientSettings:
    """One policy-gradient trainer. ``lr`` is the optimizer's starting rate (a recipe sets each step's with
    :meth:`PolicyGradient.step`); AdamW with betas (0.9, 0.99) and no weight decay. ``max_len``: the longest
    completion in tokens, ``dr_grpo``'s constant. ``inner_epochs``: passes over each step's minibatches."""

    lr: float = 1e-4
    clip: float = 0.2
    beta: float = 0.04
    temperature: float = 1.0
    loss_type: str = "grpo"
    max_len: int | None = None
    inner_epochs: int = 1
    micro_batch: int = 0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.loss_type not in LOSS_TYPES:
            problems.append(f"loss_type must be one of {', '.join(LOSS_TYPES)} (got {self.loss_type!r})")
        elif self.loss_type == "dr_grpo" and self.max_len is None:
            problems.append("loss_type 'dr_grpo' needs max_len (the longest completion allowed)")
        if self.beta < 0 or not (0 < self.clip < 1) or not (self.temperature > 0):
            problems.append(f"need beta >= 0, 0 < clip < 1, temperature > 0 (got {self.beta}, {self.clip}, "
                            f"{self.temperature})")
        if not isinstance(self.inner_epochs, int) or self.inner_epochs < 1:
            problems.append(f"inner_epochs must be an integer >= 1 (got {self.inner_epochs!r})")
        if not isinstance(self.micro_batch, int) or self.micro_batch < 0:
            problems.append(f"micro_batch must be an integer >= 0 (got {self.micro_batch!r})")
        if problems:
            raise DeliberateError("policy gradient: " + "; ".join(problems))


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


class _TokenizerSaver:
    """What :func:`save_checkpoint` calls ``tokenizer.save(dir)`` on, for any tokenizer."""

    def __init__(self, save: Callable[[Path], None]):
        self.save = save


class PolicyGradient:
    """A policy being trained by policy gradient; built by :meth:`Policy.policy_gradient`.

    ``model`` (trainable) and ``ref`` (frozen KL reference) are causal LMs with ``save_pretrained``, on
    the CPU; they are placed on ``dist.device``. ``tokenizer`` has the engine's protocol (``encode``
    without special tokens, ``bos_token_id`` or None, ``eos_token_id``); ``pad_id`` pads batches;
    ``save_tokenizer(dir)`` writes it next to a saved model; ``training_prompt(prompt)`` is the text the
    sampler gave the model for ``prompt``; ``sampler(model)`` builds a :class:`Policy` sampling from
    ``model`` as it is now (a fresh engine each call: the engine fuses the weights it is built on)."""

    def __init__(self, model, ref, settings: PolicyGradientSettings, *, tokenizer, pad_id: int,
                 save_tokenizer: Callable[[Path], None], sampler: Callable[[Any], Any],
                 training_prompt: Callable[[str], str] = lambda p: p, dist: Dist | None = None):
        self.settings = settings
        self.dist = dist if dist is not None else Single("cpu", what="policy gradient")
        self.tokenizer, self.pad_id = tokenizer, pad_id
        self._save_tokenizer, self._sampler, self._training_prompt = save_tokenizer, sampler, training_prompt
        ref.eval().requires_grad_(False)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.model, self.ref = self.dist.place(model), self.dist.place(ref)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self._prepared: tuple[Any, Any] | None = None  # DDP wrapping, at the first step (after a resume)
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        # the zero-weighted sequence of a rank with no completions in a minibatch (see the module docstring)
        self._dummy = Example((bos if bos is not None else eos, eos), 1)

    def sampler(self):
        """A :class:`~deliberate.policy.base.Policy` that samples from the current weights (build a new one
        after each :meth:`step`)."""
        return self._sampler(self.model)

    def example(self, prompt: str, text: str, finished: bool) -> Example:
        """The token ids of a sampled completion ``text`` of ``prompt`` (the prompt as the sampler rendered
        it, with the BOS the sampler prepends), EOS appended when the completion ``finished`` on it. Its
        completion part (``ids[n_prompt:]``) is empty for an empty unfinished completion."""
        return pair_example(self.tokenizer, self._training_prompt(prompt), text, eos=finished)

    def step(self, examples: Sequence[Example], advantages: Sequence, minibatches: Sequence[Sequence[int]],
             lr: float) -> dict[str, float]:
        """The updates of one sampling step at learning rate ``lr``: one per minibatch (``minibatches``:
        indices into ``examples``) and inner epoch, every minibatch's old and reference log-probs taken
        before the first update. ``advantages``: per completion (floats) or per completion token (lists).
        Returns ``kl`` and ``clipped`` of the last update and the step's ``tokens_trained`` (sequence tokens
        through each update) and ``tokens_forward`` (no-grad scoring passes), summed over ranks; with no
        examples only the learning rate is set."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        if not examples:
            return {}
        if self._prepared is None:
            self._prepared = self.dist.prepare(self.model, self.opt)  # plain runs: the same objects
        ddp_model, ddp_opt = self._prepared
        s, dist, model = self.settings, self.dist, self.model
        ddp_model.train()
        parts, forward, trained = [], 0, 0
        for idx in minibatches:
            mine, my_adv = dist.shard([examples[i] for i in idx]), dist.shard([advantages[i] for i in idx])
            weight = 1.0
            if not mine:
                mine, my_adv, weight = [self._dummy], [0.0], 0.0
            batch = dist.to_device(collate(mine, self.pad_id))
            with torch.no_grad():
                old, mask = token_logprobs(model, batch, s.temperature)
                ref_lp, _ = token_logprobs(self.ref, batch, s.temperature)
            (ntok,) = dist.sum(int(batch["attention_mask"].sum()) if weight else 0)
            forward += 2 * ntok
            denom = loss_denominator(s.loss_type, [len(examples[i].ids) - examples[i].n_prompt for i in idx],
                                     s.max_len)
            parts.append((batch, advantage_tensor(mine, my_adv, old.shape[1]).to(dist.device), old, ref_lp, mask,
                          ntok, weight, denom))
        stats: dict[str, float] = {}
        for _ in range(s.inner_epochs):
            for batch, adv, old, ref_lp, mask, ntok, weight, denom in parts:
                ddp_opt.zero_grad(set_to_none=True)
                subs = micro_batches(batch, (adv, old, ref_lp, mask), s.micro_batch)
                chunks = []
                for k, (sub, (a, o, r, m)) in enumerate(subs):
                    # gradients stay local until the rank's last micro-batch, whose backward all-reduces the
                    # sum (ranks may hold different numbers of micro-batches; each makes one synced backward)
                    with dist.no_sync(ddp_model) if k < len(subs) - 1 else contextlib.nullcontext():
                        logp, _ = token_logprobs(ddp_model, sub, s.temperature)
                        loss, st = grpo_loss(logp, o, r, m, a, s.clip, s.beta, denom=denom / dist.world_size,
                                             loss_type=s.loss_type)
                        dist.backward(loss * weight)
                    chunks.append((st, m))
                stats = merge_stats(chunks)
                if s.grad_clip:
                    dist.clip_grad_norm_(ddp_model, s.grad_clip)
                ddp_opt.step()
                trained += ntok
        return {**stats, "tokens_trained": trained, "tokens_forward": forward}

    def logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The summed log-probability (temperature 1) of each ``(prompt, completion)`` pair's completion
        tokens under the current weights (no EOS: the completion as text)."""
        return summed_logprobs(self.model, [self.example(p, c, finished=False) for p, c in pairs], self.pad_id)

    def save_model(self, directory: str | Path) -> Path:
        """Write the current weights and the tokenizer to ``directory`` atomically (a checkpoint any
        :func:`~deliberate.policy.load_policy` opens)."""
        directory = Path(directory)
        recover_dir(directory, "config.json")  # leftovers of a kill during an earlier save
        tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp)
        self._save_tokenizer(tmp)
        replace_dir(tmp, directory)
        return directory

    def save_state(self, directory: str | Path, state: dict[str, Any]) -> None:
        """A checkpoint in ``directory``: weights, tokenizer, optimizer, RNG and the JSON ``state``."""
        save_checkpoint(directory, self.model, _TokenizerSaver(self._save_tokenizer), self.opt, state)

    def load_state(self, directory: str | Path) -> dict[str, Any] | None:
        """Resume from the checkpoint in ``directory`` (weights, optimizer and RNG as :meth:`save_state` left
        them); returns its JSON state, or None (nothing changed) when there is none."""
        state = load_state(directory)
        if state is None:
            return None
        saved = type(self.model).from_pretrained(str(directory), local_files_only=True, dtype=self.model.dtype)
        self.model.load_state_dict(saved.state_dict())
        del saved
        self.opt.load_state_dict(torch.load(Path(directory) / "optimizer.pt", weights_only=True,
                                            map_location="cpu"))  # -> the parameters' device
        restore_rng(directory)
        return state
