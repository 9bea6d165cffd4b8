"""Learning to self-correct: train on (incorrect attempt -> correct attempt) pairs, measure fixes.

    deliberate train self-correct --model runs/quickstart/sft/model --out runs/self-correct

Data (from the seed policy's own samples, checked by the task's verifier): for each training problem
with both wrong and right samples, the sequence

    <prompt><wrong attempt>\\n<cue>\\n<right attempt><EOS>

is a training example with the loss on the right attempt only; ``keep_fraction`` of the pairs are
(right -> right) instead, so the corrector also learns to keep an answer that was already correct. The
cue is the reflection strategy's (``search/reflection.py``), so the trained corrector plugs into
``deliberate sweep --strategies reflection`` unchanged. The corrector is fine-tuned from the seed.

Evaluation on held-out problems: a first attempt from the seed policy (temperature 1); then, at equal
generated tokens (one more attempt each):
* **revise** — the corrector continues ``prompt + attempt + cue``;
* **resample** — the seed policy samples again from scratch;
* **revise (untrained)** — the seed policy itself continues after the cue (control).
Reported: among wrong first attempts the fraction fixed, among right ones the fraction broken, and
accuracy after the second attempt, with bootstrap CIs and generated tokens.

``--model`` (alias ``--init``) is any policy (:func:`deliberate.policy.load_policy`): a tiny checkpoint,
an HF checkpoint directory or ``smollm2``. For a chat model the whole transcript (prompt, attempt, cue)
is one user message through its chat template, when sampling and when fine-tuning alike; HF instruct
models want ``--prompt-style instruct`` and an HF-sized step (``--lr 1e-5 --batch-size 8 --warmup 0``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.errors import DeliberateError
from deliberate.eval.metrics import bootstrap_ci
from deliberate.records import write_json_atomic
from deliberate.policy import FinetuneSettings, Policy, load_policy
from deliberate.search.base import REFLECTION_CUE
from deliberate.tasks import get_task
from deliberate.train.common import PolicyRecipeConfig
from deliberate.train.rollouts import sample_train_problems
from deliberate.train.selfimprove import (
    Stopwatch,
    cached_rollouts,
    rollouts,
    sampled_tokens,
    start_run,
)


def revision_prompt(prompt: str, attempt: str, cue: str = REFLECTION_CUE) -> str:
    """The transcript a revision continues (the reflection strategy's format)."""
    return prompt + attempt.rstrip("\n") + "\n" + cue + "\n"


@dataclass(frozen=True)
class SelfCorrectConfig(PolicyRecipeConfig):
    prompt_style: str = "plain"  # the task's prompt format: plain (Q: ... A:) or instruct
    n_train: int = 3000
    k: int = 4
    max_pairs_per_problem: int = 2
    keep_fraction: float = 0.3
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(epochs=3.0, lr=1e-3))
    eval_problems: int = 400
    eval_seed: int = 0
    seed: int = 0
    out: str = "runs/self-correct"

    def __post_init__(self) -> None:
        if isinstance(self.finetune, dict):
            object.__setattr__(self, "finetune", FinetuneSettings(**self.finetune))
        problems = []
        for name in ("n_train", "k", "max_pairs_per_problem", "eval_problems"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if not (0 <= self.keep_fraction < 1):
            problems.append(f"keep_fraction must be in [0, 1) (got {self.keep_fraction!r})")
        if problems:
            raise DeliberateError("self-correct: " + "; ".join(problems))


def build_pairs(rows, cfg: SelfCorrectConfig) -> tuple[list[tuple[str, str]], dict[str, int]]:
    rng = random.Random(cfg.seed)
    fix, keep = [], []
    for rs in rows:
        right = list(dict.fromkeys(r.text for r in rs if r.correct))
        wrong = list(dict.fromkeys(r.text for r in rs if not r.correct))
        if not right:
            continue
        for j, w in enumerate(wrong[:cfg.max_pairs_per_problem]):
            fix.append((revision_prompt(rs[0].prompt, w), right[j % len(right)]))
        keep.append((revision_prompt(rs[0].prompt, right[0]), right[-1]))
    n_keep = min(len(keep), round(cfg.keep_fraction / (1 - cfg.keep_fraction) * len(fix)))
    rng.shuffle(keep)
    return fix + keep[:n_keep], {"fix_pairs": len(fix), "keep_pairs": n_keep}


def evaluate_correction(base: Policy, corr: Policy, cfg: SelfCorrectConfig, out: Path) -> dict[str, Any]:
    """First attempts by ``base`` on held-out problems, then one more attempt each: revised by ``corr``,
    resampled by ``base``, revised by ``base`` (the untrained control)."""
    task = get_task(cfg.task, **cfg.task_options)
    probs = task.problems("test", cfg.eval_problems, seed=cfg.eval_seed)
    prompts = [task.prompt(p, cfg.prompt_style) for p in probs]
    s0 = 7919 * (cfg.eval_seed + 1)

    def cached(name, fn):
        return cached_rollouts(out / f"{name}.jsonl", fn)

    first = cached("first", lambda: rollouts(base, task, probs, 1, seed=s0, prompts=prompts, progress=False))
    rev_prompts = [revision_prompt(rs[0].prompt, rs[0].text) for rs in first]
    second = {
        "revise": cached("revise", lambda: rollouts(corr, task, probs, 1, seed=s0 + 1, prompts=rev_prompts,
                                                    progress=False)),
        "resample": cached("resample", lambda: rollouts(base, task, probs, 1, seed=s0 + 1, prompts=prompts,
                                                        progress=False)),
        "revise_untrained": cached("revise_untrained", lambda: rollouts(base, task, probs, 1, seed=s0 + 1,
                                                                        prompts=rev_prompts, progress=False)),
    }
    wrong = [i for i, rs in enumerate(first) if not rs[0].correct]
    right = [i for i, rs in enumerate(first) if rs[0].correct]
    res: dict[str, Any] = {"first_attempt_accuracy": len(right) / len(first), "n_problems": len(first),
                           "n_wrong_first": len(wrong), "n_right_first": len(right)}
    for name, rows in second.items():
        fixed = [float(rows[i][0].correct) for i in wrong]
        broken = [float(not rows[i][0].correct) for i in right]
        final = [float(rs[0].correct) for rs in rows]
        gen, _ = sampled_tokens(rows)
        res[name] = {
            "fixed": sum(fixed) / max(1, len(fixed)), "fixed_ci": list(bootstrap_ci(fixed)) if fixed else None,
            "broken": sum(broken) / max(1, len(broken)), "broken_ci": list(bootstrap_ci(broken)) if broken else None,
            "accuracy": sum(final) / len(final), "accuracy_ci": list(bootstrap_ci(final)),
            "generated_tokens_per_problem": gen / len(rows),
        }
    return res


def run_self_correct(cfg: SelfCorrectConfig, progress: bool = True) -> dict[str, Any]:
    out, cfg_dict = start_run(cfg)
    base = load_policy(cfg.init, chat=cfg.chat)
    corr = None
    try:
        clock = Stopwatch()
        task = get_task(cfg.task, **cfg.task_options)
        train, rows = sample_train_problems(base, task, out, n_train=cfg.n_train, k=cfg.k, seed=cfg.seed,
                                            prompt_style=cfg.prompt_style, progress=progress, desc="attempts")
        gen, prompt = sampled_tokens(rows)
        pairs, counts = build_pairs(rows, cfg)
        t_sample = clock()
        # the text the model was given (chat template applied), so the corrector trains on what it saw
        res = base.finetune([(base.training_prompt(p), c) for p, c in pairs], out / "corrector", cfg.finetune,
                            seed=cfg.seed, progress=progress, desc="corrector")
        t_train = clock() - t_sample
        ev_dir = out / "eval"
        ev_dir.mkdir(exist_ok=True)
        corr = base.with_checkpoint(res.model_dir)
        ev = evaluate_correction(base, corr, cfg, ev_dir)
        n = base.n_params
    finally:
        base.close()
        if corr is not None:
            corr.close()
    summary = {"recipe": "self-correct", "config": cfg_dict, **counts, "eval": ev,
               "compute": {"tokens_sampled": gen, "prompt_tokens": prompt, "tokens_trained": res.tokens_trained,
                           "flops": 6.0 * n * res.tokens_trained + 2.0 * n * (gen + prompt),
                           "sample_wall_s": t_sample, "train_wall_s": round(t_train, 3)}}
    write_json_atomic(out / "summary.json", summary)
    return summary
