"""Quiet-STaR: a language model that learns to think before each token of ordinary text.

    deliberate train quiet-star --model runs/quickstart/sft/model --out runs/qstar            # with thoughts
    deliberate train quiet-star --model runs/quickstart/sft/model --no-thoughts --out runs/qstar-plain  # baseline
    deliberate eval --task arith --model runs/qstar/model --backend-arg think=true             # think-then-predict

Zelikman et al., 2024, "Quiet-STaR: Language Models Can Teach Themselves to Think Before Speaking".
The model trains on plain text that contains reasoning (a task's problems with their gold rationales,
written out as one text each: ``Q: ...\\nA:\\n<steps>\\nAnswer: N``; no question-answer supervision,
every token is a target). Each step samples ``n_thoughts`` thoughts of ``thought_len`` tokens after
``n_positions`` positions of every text in one pass (:mod:`deliberate.policy.thinking`: the diagonal
mask), mixes the post-thought prediction of the next ``horizon`` true tokens with the plain one
(:class:`~deliberate.models.thinking.ThinkingHead`) and trains on: the plain LM loss on every token,
the LM loss of the mixed prediction, and REINFORCE on the thoughts (reward = gain in log-likelihood of
the ``horizon`` true tokens, baseline = mean over the thoughts at that position). The start/end
embeddings start from the embedding of ``---`` (``thought_init dash``, the paper's) or the mean
embedding (``mean``); the mixing weight starts near 0.05.

``--no-thoughts`` trains the same model on the same batches for the same steps with the plain LM loss
only: the comparison the issue asks for. Works on the tiny model and any HF causal LM (``--model``
DIR or ``smollm2``). ``OUT/checkpoint`` holds the last checkpoint (weights, head, optimizer; batches and
thoughts are a pure function of (seed, step)), so a killed run rerun with the same command resumes with
identical numbers. ``OUT/model`` is the final model (+ ``thinking_head.pt``); ``OUT/summary.json`` the
compute and a held-out evaluation (:mod:`deliberate.train.quiet_star_eval`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from deliberate.atomic import recover_dir, replace_dir, write_json_atomic
from deliberate.errors import DeliberateError
from deliberate.models.thinking import INIT_KINDS, ThinkingHead, init_embedding, load_head, save_head
from deliberate.policy.thinking import (LM, Streams, ThoughtSettings, load_lm, pick_positions, plain_nll,
                                        quiet_star_loss, sample_thoughts, thought_forward)
from deliberate.tasks import get_task
from deliberate.train.common import ARITH_OPTIONS, ComputeMeter, adamw, batch_indices, lr_at, trim_log
from deliberate.train.quiet_star_eval import evaluate_run
from deliberate.train.selfimprove import start_run


#: fields that only choose the held-out evaluation: a finished run is rerun with another split to score it there
EVAL_FIELDS = ("eval_split", "eval_problems", "eval_thoughts", "eval_seed")


@dataclass(frozen=True)
class QuietStarConfig:
    init: str = "runs/quickstart/sft/model"  # --model: tiny or HF checkpoint directory, or smollm2
    task: str = "arith"  # whose train problems + gold rationales are the text
    task_options: dict[str, Any] = field(default_factory=lambda: dict(ARITH_OPTIONS))
    n_train: int = 4000
    thoughts: bool = True  # False: the no-thought baseline (same batches and steps, plain LM loss)
    thought_len: int = 4
    n_thoughts: int = 2
    n_positions: int = 16  # 0: every position
    horizon: int = 4
    temperature: float = 1.0
    thought_init: str = "dash"
    reinforce_weight: float = 1.0
    #: the thinking head's (start/end embeddings, mixer) learning rate / ``lr``: with Adam a parameter moves ~lr
    #: per step, so at 1x the mixer's bias (init -3) cannot move far in a few hundred steps; the paper also
    #: scales the start/end embeddings' updates up
    head_lr_mult: float = 1.0
    steps: int = 200
    batch_size: int = 16
    lr: float = 3e-4
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 25
    eval_split: str = "validation"  # validation (choosing settings) or test (the final measurement)
    eval_problems: int = 100
    eval_thoughts: int = 2  # thoughts per position when scoring held-out log-likelihood
    eval_seed: int = 0
    device: str = "cpu"
    seed: int = 0
    out: str = "runs/quiet-star"

    def __post_init__(self) -> None:
        bad = [f"{k} must be an integer >= 1 (got {getattr(self, k)!r})"
               for k in ("n_train", "steps", "batch_size", "checkpoint_every", "eval_problems", "eval_thoughts")
               if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), int) or getattr(self, k) < 1]
        if self.thought_init not in INIT_KINDS:
            bad.append(f"thought_init must be one of {', '.join(INIT_KINDS)} (got {self.thought_init!r})")
        if self.eval_split not in ("validation", "test"):
            bad.append(f"eval_split must be validation or test (got {self.eval_split!r})")
        if isinstance(self.head_lr_mult, bool) or not isinstance(self.head_lr_mult, (int, float)) \
                or self.head_lr_mult <= 0:
            bad.append(f"head_lr_mult must be > 0 (got {self.head_lr_mult!r})")
        if self.thoughts and self.n_thoughts < 2:
            bad.append("n_thoughts must be >= 2: the baseline is the mean over a position's thoughts")
        if bad:
            raise DeliberateError("quiet-star: " + "; ".join(bad))
        self.settings  # validates the thought fields

    @property
    def settings(self) -> ThoughtSettings:
        return ThoughtSettings(self.thought_len, self.n_thoughts, self.n_positions, self.horizon, self.temperature)


def training_texts(cfg: QuietStarConfig) -> list[str]:
    """The plain texts: every train problem's prompt followed by its gold rationale."""
    task = get_task(cfg.task, **cfg.task_options)
    texts = []
    for p in task.problems("train", cfg.n_train, seed=cfg.seed):
        r = task.rationale(p)
        if r is None:
            raise DeliberateError(f"quiet-star: task {cfg.task!r} has no gold rationales to write out as text")
        texts.append(task.prompt(p) + r)
    return texts


def pad_batch(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids.to(device), torch.tensor([len(s) for s in seqs])


def step_generator(seed: int, step: int) -> torch.Generator:
    """Thought positions and draws of ``step``: a pure function of (seed, step), so resume is exact."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 7 * step + 1)


def train_step(lm: LM, head: ThinkingHead | None, ids: torch.Tensor, lengths: torch.Tensor, cfg: QuietStarConfig,
               step: int) -> tuple[torch.Tensor, dict[str, float], int, int]:
    """(loss, stats, forward positions, sampled thought tokens) of one batch."""
    if head is None:
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long().to(ids.device)
        loss, n = plain_nll(lm.model(input_ids=ids, attention_mask=mask).logits.float(), ids, lengths)
        return loss, {"loss": float(loss), "lm": float(loss)}, int(lengths.sum()), 0
    s, g = cfg.settings, step_generator(cfg.seed, step)
    streams = Streams.at(*pick_positions(lengths, s.n_positions, g), s.n_thoughts)
    streams = Streams(streams.pos.to(ids.device), streams.valid.to(ids.device), s.n_thoughts)
    thoughts = sample_thoughts(lm.model, head, ids, lengths, streams, s, g)
    p = thought_forward(lm.model, head, ids, lengths, streams, thoughts, s)
    loss, stats = quiet_star_loss(p, ids, lengths, s.n_thoughts, cfg.reinforce_weight)
    q = int(streams.valid.sum())
    return loss, stats, int(lengths.sum()) + q * s.n_blocks, q * s.thought_len


def save_training(directory: Path, lm: LM, head: ThinkingHead | None, opt, state: dict[str, Any],
                  meta: dict[str, Any]) -> None:
    """Weights (+ head) + optimizer + ``trainer_state.json`` (last: it marks a complete one), atomically."""
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    lm.save(tmp)
    if head is not None:
        save_head(head, tmp, meta)
    if opt is not None:
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
    write_json_atomic(tmp / "trainer_state.json", state)
    replace_dir(tmp, directory)


def run_quiet_star(cfg: QuietStarConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume, or return the finished) run in ``cfg.out``; evaluate it on held-out problems."""
    out, cfg_dict = start_run(cfg, extendable=EVAL_FIELDS)
    final, ckpt = out / "model", out / "checkpoint"
    recover_dir(ckpt, "trainer_state.json")
    if not (final / "trainer_state.json").exists():
        train(cfg, out, ckpt, final, progress)
    state = json.loads((final / "trainer_state.json").read_text())
    summary = {"recipe": "quiet-star", "config": cfg_dict, "compute": state["compute"], "model": str(final),
               "final_log": state.get("last", {}), "eval": evaluate_run(cfg, final, progress=progress)}
    write_json_atomic(out / "summary.json", summary)
    return summary


def train(cfg: QuietStarConfig, out: Path, ckpt: Path, final: Path, progress: bool) -> None:
    resume = (ckpt / "trainer_state.json").exists()
    lm = load_lm(ckpt if resume else cfg.init, cfg.device)
    dev = next(lm.model.parameters()).device
    head = None
    meta = {"thought_len": cfg.thought_len, "n_thoughts": cfg.n_thoughts, "horizon": cfg.horizon,
            "thought_init": cfg.thought_init, "temperature": cfg.temperature}
    if cfg.thoughts:
        if resume:
            head = load_head(ckpt)[0]
        else:
            with torch.random.fork_rng(devices=[]):  # the mixer's initial weights: a function of the seed
                torch.manual_seed(cfg.seed)
                head = ThinkingHead(lm.model.config.hidden_size,
                                    init=init_embedding(lm.model, lm.tokenizer.encode, cfg.thought_init))
        head.to(dev).train()
    params = torch.nn.ModuleList([lm.model] + ([head] if head is not None else []))
    opt = adamw(lm.model, cfg.lr, cfg.weight_decay)
    for g in opt.param_groups:
        g["lr_mult"] = 1.0
    if head is not None:
        opt.add_param_group({"params": list(head.parameters()), "weight_decay": 0.0, "lr_mult": cfg.head_lr_mult})
    state: dict[str, Any] = {"step": 0, "compute": {}}
    if resume:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    meter = ComputeMeter(sum(p.numel() for p in lm.model.parameters()), state["compute"])
    log_path = out / "train_log.jsonl"
    trim_log(log_path, state["step"])
    max_len = lm.model.config.max_position_embeddings
    seqs = [lm.encode_text(t, max_len - (cfg.thought_len + cfg.horizon + 2)) for t in training_texts(cfg)]
    pad = lm.tokenizer.pad_token_id if getattr(lm.tokenizer, "pad_token_id", None) is not None else 0
    lm.model.train()
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="quiet-star" if cfg.thoughts else "plain LM",
               disable=not progress, dynamic_ncols=True, leave=False)
    stats: dict[str, float] = state.get("last", {})
    for step in range(state["step"], cfg.steps):
        ids, lengths = pad_batch([seqs[i] for i in batch_indices(len(seqs), cfg.batch_size, cfg.seed, step)], pad, dev)
        loss, stats, fwd, sampled = train_step(lm, head, ids, lengths, cfg, step)
        for g in opt.param_groups:
            g["lr"] = g["lr_mult"] * lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params.parameters(), cfg.grad_clip)
        opt.step()
        meter.tokens_trained += fwd
        meter.tokens_sampled += sampled
        with log_path.open("a") as f:
            f.write(json.dumps({"step": step + 1, **{k: round(v, 6) for k, v in stats.items()}}) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            state = {"step": step + 1, "compute": meter.to_dict(), "last": stats}
            save_training(ckpt, lm, head, opt, state, meta)
    bar.close()
    lm.model.eval()
    save_training(final, lm, head, None, {**state, "compute": meter.to_dict(), "last": stats}, meta)
