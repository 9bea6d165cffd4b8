"""A training recipe of your own, in one file: rejection-sampling fine-tuning (RFT).

    DELIBERATE_PLUGINS=examples/custom_recipe.py deliberate train rft --model runs/quickstart/sft/model \
        --iterations 2 --out runs/rft
    DELIBERATE_PLUGINS=examples/custom_recipe.py deliberate train rft --model smollm2 --prompt-style instruct \
        --n-train 128 --max-tokens 160 --lr 1e-5 --batch-size 8 --warmup 0 --weight-decay 0 \
        --eval-problems 50 --out runs/rft-smollm2      # an HF model wants an HF-sized step

Each iteration the current policy samples ``k`` completions per training problem, the task's checker
keeps the correct ones (distinct texts only: Yuan et al., 2023, "Scaling Relationship on Learning
Mathematical Reasoning with Large Language Models"), and the policy is fine-tuned on them; the
fine-tuned model is the next iteration's policy (``deliberate train rest-em`` instead restarts every
M-step from the base model). Held-out greedy accuracy is measured before and after each iteration.

It is written once against :class:`deliberate.policy.Policy` (sample, training_prompt, finetune), so
``--model`` may name a tiny checkpoint, an HF checkpoint directory, a ``.gguf`` or ``smollm2``. Every
config field is a flag (``--n-train``, ``--k``, and the fine-tune's ``--lr``, ``--epochs`` ...); the run
directory gets ``summary.json`` and the ``config.yaml`` that reruns it.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.cli.recipes import register_recipe
from deliberate.errors import DeliberateError
from deliberate.models.sampling import SamplingParams
from deliberate.policy import FinetuneSettings, Policy, load_policy
from deliberate.records import write_json_atomic
from deliberate.tasks.base import get_task


@dataclass(frozen=True)
class RFTConfig:
    init: str = "runs/quickstart/sft/model"  # the policy: --model
    chat: bool | None = None  # chat template: None = when the model's tokenizer has one
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=dict)
    prompt_style: str = "plain"  # plain (Q: ... A:, the tiny model's) or instruct (HF instruct models)
    iterations: int = 1
    n_train: int = 256
    k: int = 4
    temperature: float = 1.0
    max_tokens: int | None = None  # None: the task's default
    eval_problems: int = 100
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(epochs=2.0))
    seed: int = 0
    out: str = "runs/rft"

    def __post_init__(self) -> None:
        bad = [f"{name} must be an integer >= 1 (got {getattr(self, name)!r})"
               for name in ("iterations", "n_train", "k", "eval_problems")
               if not isinstance(getattr(self, name), int) or getattr(self, name) < 1]
        if not self.temperature > 0:
            bad.append(f"temperature must be > 0 (got {self.temperature!r})")
        if bad:
            raise DeliberateError("rft: " + "; ".join(bad))


HELP = {
    "init": "the policy to start from: a tiny checkpoint, an HF checkpoint directory, a .gguf or smollm2",
    "n_train": "training problems sampled in each iteration",
    "k": "samples per training problem",
    "eval_problems": "held-out test problems for the greedy accuracy",
    "epochs": "fine-tune epochs over the kept samples",
}


def greedy_accuracy(policy: Policy, task, problems, prompts, max_tokens: int) -> float:
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, stop=task.stop)
    rows = policy.sample(prompts, params)
    return sum(task.reward(row[0].text, p) > 0 for row, p in zip(rows, problems)) / len(problems)


@register_recipe("rft", config=RFTConfig, helps=HELP)
def run(cfg: RFTConfig) -> str:
    """Rejection-sampling fine-tuning: sample k per problem, keep the distinct correct ones, fine-tune, repeat."""
    out = Path(cfg.out)
    task = get_task(cfg.task, **cfg.task_options)
    train, test = task.problems("train", cfg.n_train, seed=cfg.seed), task.problems("test", cfg.eval_problems)
    train_prompts = [task.prompt(p, cfg.prompt_style) for p in train]
    test_prompts = [task.prompt(p, cfg.prompt_style) for p in test]
    max_tokens = cfg.max_tokens or task.max_tokens
    policy = load_policy(cfg.init, chat=cfg.chat)
    try:
        rows = [{"iteration": 0, "model": str(policy.path), "kept": 0, "solved": 0,
                 "greedy": greedy_accuracy(policy, task, test, test_prompts, max_tokens)}]
        for it in range(1, cfg.iterations + 1):
            seed = cfg.seed * 1000 + it  # a fresh sampling and batch-order seed each iteration
            params = SamplingParams(n=cfg.k, temperature=cfg.temperature, max_tokens=max_tokens, stop=task.stop,
                                    seed=seed)
            examples, solved = [], 0
            for p, prompt, samples in zip(train, train_prompts, policy.sample(train_prompts, params)):
                kept = dict.fromkeys(s.text for s in samples if task.reward(s.text, p) > 0)
                solved += bool(kept)
                # the text the model was given (chat template applied): it learns to continue what it saw
                examples += [(policy.training_prompt(prompt), text) for text in kept]
            if not examples:  # nothing verified: nothing to learn from, the policy stays as it was
                rows.append({**rows[-1], "iteration": it, "kept": 0, "solved": 0, "tokens_trained": 0})
                continue
            result = policy.finetune(examples, out / f"it{it:03d}", cfg.finetune, seed=seed, progress=False,
                                     desc=f"rft {it}")
            trained = policy.with_checkpoint(result.model_dir)
            policy.close()
            policy = trained
            rows.append({"iteration": it, "model": str(result.model_dir), "kept": len(examples), "solved": solved,
                         "tokens_trained": result.tokens_trained,
                         "greedy": greedy_accuracy(policy, task, test, test_prompts, max_tokens)})
    finally:
        policy.close()
    write_json_atomic(out / "summary.json", {"recipe": "rft", "config": dataclasses.asdict(cfg), "iterations": rows})
    return "\n".join([f"{'iter':>4} {'kept':>6} {'solved':>7} {'greedy':>7}"]
                     + [f"{r['iteration']:>4} {r['kept']:>6} {r['solved']:>7} {r['greedy']:>7.3f}" for r in rows])
