"""Shared training plumbing: tokenised examples, batching, atomic checkpoints, compute accounting.

Every recipe (SFT now; STaR, ReST-EM, GRPO ... later) reuses these so a killed run resumes from its
last completed checkpoint with the same results as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deliberate.errors import DeliberateError
from deliberate.eval.records import write_json_atomic

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
    import math

    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _fsync_tree(directory: Path) -> None:
    """fsync every file in ``directory`` and the directory itself (durable before the rename)."""
    for f in sorted(directory.iterdir()):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: Path, directory: Path) -> None:
    """Make the complete directory ``tmp`` appear as ``directory`` (replacing any old one).

    Two renames (a directory cannot be replaced in one): ``directory -> .NAME.old<pid>`` and
    ``tmp -> directory``. A kill between them leaves no ``directory`` but both complete copies;
    :func:`recover_dir` puts one back."""
    _fsync_tree(tmp)
    old = directory.with_name(f".{directory.name}.old{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    _fsync_dir(directory.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(directory: str | Path, complete_marker: str) -> None:
    """Undo what a kill in the middle of :func:`replace_dir` left behind.

    When ``directory`` is missing, the newest complete leftover (``.NAME.tmp*`` or ``.NAME.old*``
    holding ``complete_marker``; for checkpoints the highest ``step``) is renamed back. Every other
    leftover is removed."""
    directory = Path(directory)
    if not directory.parent.exists():
        return
    left = sorted(p for p in directory.parent.glob(f".{directory.name}.*")
                  if p.is_dir() and (p.name.startswith(f".{directory.name}.tmp")
                                     or p.name.startswith(f".{directory.name}.old")))
    if not directory.exists():
        def rank(p: Path) -> tuple[int, int]:
            try:
                step = int(json.loads((p / "trainer_state.json").read_text()).get("step", 0))
            except (OSError, ValueError, AttributeError):
                step = 0
            return step, p.name.startswith(f".{directory.name}.tmp")

        complete = [p for p in left if (p / complete_marker).exists()]
        if complete:
            best = max(complete, key=rank)
            best.rename(directory)
            _fsync_dir(directory.parent)
            left.remove(best)
    for p in left:
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(directory: str | Path, model, tokenizer, optimizer, state: dict[str, Any]) -> None:
    """Write model + tokenizer + optimizer + RNG state + ``state`` into ``directory`` atomically.

    Everything goes to a temp directory first (``trainer_state.json`` last, so its presence marks a
    complete checkpoint), is fsynced, then renamed into place (:func:`replace_dir`)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save(tmp)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    write_json_atomic(tmp / "trainer_state.json", state)
    replace_dir(tmp, directory)


def load_state(directory: str | Path) -> dict[str, Any] | None:
    """The ``trainer_state.json`` of the checkpoint in ``directory`` (None when there is none).

    Recovers a checkpoint whose replacement was interrupted (:func:`recover_dir`) first."""
    recover_dir(directory, "trainer_state.json")
    f = Path(directory, "trainer_state.json")
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DeliberateError(f"{f}: unreadable checkpoint state ({e}); delete {directory} to start over") from None


def restore_rng(directory: str | Path) -> None:
    """Restore the RNG state saved with a checkpoint (a checkpoint without one leaves the RNG alone)."""
    f = Path(directory, "rng.pt")
    if not f.exists():
        return
    rng = torch.load(f, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def trim_log(path: str | Path, step: int) -> None:
    """Keep only the rows of a ``train_log.jsonl`` up to ``step`` (the checkpoint resumed from).

    A run killed after logging step ``s`` but before its checkpoint landed resumes from an earlier
    step and logs ``s`` again; trimming first keeps one row per step (and drops a torn last line)."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # torn tail
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line)
    text = "".join(keep)
    if text != path.read_text(errors="replace"):
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)


class ComputeMeter:
    """Train-time compute: tokens trained/sampled, approximate FLOPs (6ND train, 2ND sample), wall time."""

    def __init__(self, n_params: int, state: dict[str, Any] | None = None):
        self.n_params = n_params
        s = state or {}
        self.tokens_trained = int(s.get("tokens_trained", 0))
        self.tokens_sampled = int(s.get("tokens_sampled", 0))
        self.wall_s = float(s.get("wall_s", 0.0))
        self._t0 = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        self.wall_s += now - self._t0
        self._t0 = now

    @property
    def flops(self) -> float:
        return 6.0 * self.n_params * self.tokens_trained + 2.0 * self.n_params * self.tokens_sampled

    def to_dict(self) -> dict[str, Any]:
        self.tick()
        return {"tokens_trained": self.tokens_trained, "tokens_sampled": self.tokens_sampled,
                "flops": self.flops, "wall_s": round(self.wall_s, 3), "n_params": self.n_params}


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

    Data-parallel (``dist`` from :mod:`deliberate.train.distributed` under a launcher): ``batch`` is
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
