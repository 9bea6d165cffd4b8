"""The supervised next-token loop's pieces: tokenised examples, batches, the learning-rate schedule,
AdamW and one optimizer step (single-process or data-parallel).

The tiny policy's fine-tune (:mod:`deliberate.policy.tiny`), ``deliberate train sft``, GRPO and the
learned verifiers all train with these, so a batch, a schedule and a step mean the same everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deliberate.errors import DeliberateError

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One supervised sequence: ``ids`` with ``n_prompt`` leading tokens excluded from the loss."""

    ids: tuple[int, ...]
    n_prompt: int


def make_example(tokenizer, prompt: str, completion: str, max_len: int) -> Example | None:
    """BOS + prompt + completion + EOS; None when longer than ``max_len``."""
    p = [tokenizer.bos_token_id] + tokenizer.encode(prompt)
    ids = p + tokenizer.encode(completion) + [tokenizer.eos_token_id]
    if len(ids) > max_len:
        return None
    return Example(tuple(ids), len(p))


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; labels are IGNORE on prompt and padding positions."""
    L = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), L), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for i, e in enumerate(batch):
        t = torch.tensor(e.ids, dtype=torch.long)
        ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
        labels[i, e.n_prompt: len(t)] = t[e.n_prompt:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the examples in batch ``step``: a pure function of (seed, step), so resume is exact.

    Walks seeded permutations epoch by epoch so every example is seen once per epoch. (Length-sorted
    "sortish" batches cut padding by ~30% but made the tiny model learn arith markedly worse per
    step in our runs, so batches stay fully random.)
    """
    per_epoch = max(1, n_examples // batch_size)
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_examples, generator=g).tolist()
    return perm[k * batch_size:(k + 1) * batch_size]


def lr_at(step: int, total: int, base: float, warmup: int, final_frac: float = 0.1) -> float:
    """Linear warmup then cosine decay to ``final_frac * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def adamw(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms' and biases' vectors)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))


def label_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens of ``batch`` that carry a next-token loss (the targets of positions 1..L-1)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def supervised_step(model, opt, batch: dict[str, torch.Tensor], lr: float, grad_clip: float | None,
                    dist=None, n_items: int | None = None, bf16: bool = False) -> torch.Tensor:
    """One optimizer step on next-token cross-entropy of ``batch`` (from :func:`collate`); returns the loss.

    Data-parallel (``dist`` from :mod:`deliberate.policy.distributed` under a launcher): ``batch`` is
    this rank's share of the global batch and ``n_items`` the global number of loss tokens
    (:func:`label_tokens` summed over ranks). Each rank's loss is its token-loss sum scaled by
    ``world_size / n_items``, so DDP's gradient average is the gradient of the global batch's mean
    loss (the single-process math, up to reduction order); the returned loss is that global mean.

    ``bf16``: the forward pass (and so its backward) runs under bfloat16 autocast on the batch's device;
    weights, gradients and optimizer state stay float32 (single-process path only)."""
    if dist is not None and dist.parallel:
        if bf16:
            raise DeliberateError("supervised_step: bf16 autocast is not supported data-parallel")
        return _parallel_supervised_step(model, opt, batch, lr, grad_clip, dist, n_items)
    for g in opt.param_groups:
        g["lr"] = lr
    device_type = next(iter(batch.values())).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss


def _parallel_supervised_step(model, opt, batch, lr, grad_clip, dist, n_items) -> torch.Tensor:
    if n_items is None:
        (n_items,) = dist.sum(label_tokens(batch))
    for g in opt.param_groups:
        g["lr"] = lr
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                            ignore_index=IGNORE, reduction="sum")
    loss = nll * (dist.world_size / max(1, n_items))
    opt.zero_grad(set_to_none=True)
    dist.backward(loss)
    if grad_clip:
        dist.clip_grad_norm_(model, grad_clip)
    opt.step()
    (total,) = dist.sum(float(loss.detach()))
    return torch.tensor(total / dist.world_size)
