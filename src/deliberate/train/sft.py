"""Supervised fine-tuning of the tiny model on a task's gold rationales (from scratch or a checkpoint).

    deliberate train sft --task arith --steps 1500 --out runs/sft

Loss is next-token cross-entropy on the completion only (prompt tokens masked). Checkpoints every
``checkpoint_every`` steps into ``OUT/checkpoint`` (atomic); rerunning the same command resumes from
it and gives the same final weights as an uninterrupted run. The final model is ``OUT/model``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.models.engine import count_parameters
from deliberate.models.tiny import CharTokenizer, TinyConfig, build_tiny_model, load_tiny, save_tiny
from deliberate.policy.distributed import Dist, Single
from deliberate.tasks import get_task
from deliberate.train.common import (
    ComputeMeter,
    adamw,
    batch_indices,
    collate,
    label_tokens,
    load_state,
    lr_at,
    make_example,
    recover_dir,
    replace_dir,
    restore_rng,
    save_checkpoint,
    supervised_step,
    trim_log,
    write_json_atomic,
)


@dataclass(frozen=True)
class SFTConfig:
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=dict)
    n_train: int = 20000
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    model: TinyConfig = field(default_factory=TinyConfig)
    init_from: str | None = None  # start from this checkpoint instead of a fresh model
    seed: int = 0
    data_seed: int | None = None  # problems' seed (default: seed)
    checkpoint_every: int = 250
    out: str = "runs/sft"

    def __post_init__(self) -> None:
        for name in ("n_train", "steps", "batch_size", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise DeliberateError(f"sft: {name} must be a positive integer (got {v!r})")
        if not (0 < self.lr < 1):
            raise DeliberateError(f"sft: lr must be in (0, 1) (got {self.lr!r})")
        if self.warmup < 0:
            raise DeliberateError(f"sft: warmup must be >= 0 (got {self.warmup!r})")
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", TinyConfig(**self.model))


def build_examples(cfg: SFTConfig, tokenizer: CharTokenizer, max_len: int):
    task = get_task(cfg.task, **cfg.task_options)
    probs = task.problems("train", cfg.n_train, seed=cfg.seed if cfg.data_seed is None else cfg.data_seed)
    exs = []
    for p in probs:
        r = task.rationale(p)
        if r is None:
            raise DeliberateError(f"task {cfg.task!r} has no gold rationales to train on")
        e = make_example(tokenizer, task.prompt(p), r, max_len)
        if e is not None:
            exs.append(e)
    if not exs:
        raise DeliberateError("sft: no training example fits the model's max_len")
    return exs


def train_sft(cfg: SFTConfig, progress: bool = True, dist: Dist | None = None, device: str = "auto") -> Path:
    """Run (or resume) SFT; returns the final model directory.

    Under ``accelerate launch`` (``dist``: see :mod:`deliberate.policy.distributed`) each rank trains
    on its contiguous share of every global batch of ``batch_size`` examples, gradients are averaged
    by DDP, token counts are summed over ranks, and only the main process writes the log, the
    checkpoints and the final model. A plain run trains on ``device`` (``auto``: a CUDA GPU when there is
    one, else the CPU); the checkpoint and the model load anywhere, and ``compute.json`` records the device."""
    if dist is None:  # a plain run (library call), even inside a launched process
        dist = Single(device, what="sft")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    cfg_dict = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    if cfg.batch_size < dist.world_size:
        raise DeliberateError(f"sft: batch_size {cfg.batch_size} < {dist.world_size} processes")
    with dist.main_first():  # the main process recovers an interrupted checkpoint replacement first
        state = load_state(ckpt)
    if state is not None and state.get("config") != cfg_dict:
        raise DeliberateError(f"{ckpt} was written by a different config; use another --out or delete it")
    if dist.is_main:
        write_json_atomic(out / "config.json", cfg_dict)

    torch.manual_seed(cfg.seed)
    if state is not None:
        model, tok = load_tiny(ckpt)
    elif cfg.init_from:
        model, tok = load_tiny(cfg.init_from)
    else:
        tok = CharTokenizer()
        model = build_tiny_model(cfg.model, tok, seed=cfg.seed)
    model.train()
    max_len = model.config.max_position_embeddings
    examples = build_examples(cfg, tok, max_len)
    model = dist.place(model)  # onto this rank's device before the optimizer state is loaded
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    start = 0
    if state is not None:
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))  # -> params' device
        restore_rng(ckpt)
        start = int(state["step"])
    meter = ComputeMeter(count_parameters(model), state and state.get("compute"))
    ddp_model, ddp_opt = dist.prepare(model, opt)  # plain runs: the same objects
    log_path = out / "train_log.jsonl"
    if dist.is_main:
        trim_log(log_path, start)  # rows logged after the checkpoint we resume from are logged again
    bar = tqdm(total=cfg.steps, initial=start, desc="sft", disable=not (progress and dist.is_main), dynamic_ncols=True)
    loss_ema = state.get("loss_ema") if state else None
    for step in range(start, cfg.steps):
        idx = dist.shard(batch_indices(len(examples), cfg.batch_size, cfg.seed, step))
        batch = collate([examples[i] for i in idx], tok.pad_token_id)
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        if dist.parallel:
            n_items, n_tokens = dist.sum(label_tokens(batch), int(batch["attention_mask"].sum()))
            loss = supervised_step(ddp_model, ddp_opt, dist.to_device(batch), lr, cfg.grad_clip, dist, n_items)
            meter.tokens_trained += n_tokens
        else:
            loss = supervised_step(model, opt, dist.to_device(batch), lr, cfg.grad_clip)
            meter.tokens_trained += int(batch["attention_mask"].sum())
        lv = loss.item()
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            comp = meter.to_dict()
            if dist.is_main:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": done, "loss": round(loss_ema, 5), **comp}) + "\n")
                save_checkpoint(ckpt, model, tok, opt, {"step": done, "config": cfg_dict, "compute": comp,
                                                         "loss_ema": loss_ema})
            dist.barrier()
    bar.close()
    final = out / "model"
    model.eval()
    if dist.is_main:
        recover_dir(final, "char_tokenizer.json")  # clear leftovers of a kill during an earlier final save
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        save_tiny(model, tok, tmp)
        replace_dir(tmp, final)  # a killed run never leaves a half-written model
        write_json_atomic(out / "compute.json", {**meter.to_dict(), "device": str(dist.device)})
    dist.barrier()
    return final
