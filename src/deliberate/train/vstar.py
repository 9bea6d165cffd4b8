"""V-STaR (Hosseini et al., 2024): a generator from correct samples, a DPO verifier from (correct, incorrect) pairs.

    deliberate train vstar --model runs/quickstart/sft/model --out runs/vstar
    deliberate sweep --task arith --task-arg min_ops=1 --task-arg max_ops=3 --task-arg max_operand=15 \\
        --model runs/vstar/generator/model --verifier dpo:runs/vstar/verifier \\
        --strategies majority,best_of_n,weighted --budgets 16,64 --seeds 0,1,2 --out runs/vstar/sweep

1. The seed policy samples ``k`` solutions for each of ``n_train`` training problems; the task's
   checker labels them.
2. **Generator**: the seed fine-tuned on the correct ones (at most ``max_per_problem`` distinct per
   problem) — one STaR / ReST-EM iteration.
3. **Verifier**: the seed trained with DPO on the Cartesian product of each problem's correct x
   incorrect solutions (at most ``dpo.max_pairs_per_problem``, chosen with the seed), against the
   frozen seed as reference: loss ``-log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) -
   log ref(y_l))))`` over the solution tokens. ``val_fraction`` of the problems are held out to report
   pair accuracy (how often the implied reward ranks the correct solution above the incorrect one).
4. Best-of-k with the verifier (``dpo:OUT/verifier``, :mod:`deliberate.rewards.dpo`) through
   ``deliberate sweep``, against majority vote at the same k.

``verifier_init`` / ``verifier_ref`` start the verifier from another checkpoint (same tokenizer) and/or
reference it to another one; by default both are ``init``, as in the paper. With ``verifier_init`` a
stronger LM and ``verifier_ref`` the policy, the implied reward starts at ``log p_strong - log p_policy``
(high where the stronger LM finds a step likelier than the policy that wrote it) and DPO sharpens it.

``keep="process"`` counts a sample as correct only if its answer is right **and** every step passes
the task's step checker (as ``rest-em --keep process``): right answers reached through a wrong step
are then neither generator data nor a DPO "chosen" side, but a "rejected" one.

``--model`` (alias ``--init``) is any policy (:func:`deliberate.policy.load_policy`): a tiny checkpoint,
an HF checkpoint directory or ``smollm2`` (a raw ``.gguf`` samples but cannot be trained); HF instruct
models get their chat template (``--no-chat`` turns it off) and want ``--prompt-style instruct`` and
HF-sized steps (``--lr 1e-5 --batch-size 8 --warmup 0 --dpo-lr 5e-6 --dpo-warmup 0``). The generator
fine-tunes through :meth:`Policy.finetune`, the verifier through :meth:`Policy.preference_update` (our
deterministic DPO loop for the tiny model, TRL's ``DPOTrainer`` for HF models); the completions DPO
sees are the solutions' steps, each ended by a newline (as the DPO verifier scores them). ``dpo:OUT/verifier``
(:mod:`deliberate.rewards.dpo`) reads a tiny or an HF verifier, with the prompt style and chat setting the
verifier was trained with (recorded in ``dpo.json``).

Each stage writes its output atomically and is skipped when rerun.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.atomic import recover_dir, replace_dir
from deliberate.errors import DeliberateError
from deliberate.records import write_json_atomic
from deliberate.policy import FinetuneSettings, Policy, PreferenceSettings, load_policy
from deliberate.policy.preference import Pair, check_reference
from deliberate.tasks import get_task
from deliberate.tasks.base import Task
from deliberate.train.common import PolicyRecipeConfig
from deliberate.train.rollouts import sample_train_problems
from deliberate.train.selfimprove import (
    VERIFIED,
    Rollout,
    Stopwatch,
    check_verified_mode,
    sampled_tokens,
    start_run,
    verified,
)

@dataclass(frozen=True)
class DPOSettings(PreferenceSettings):
    """The verifier's DPO (:class:`~deliberate.policy.PreferenceSettings`) and how many pairs per problem."""

    max_pairs_per_problem: int = 16


@dataclass(frozen=True)
class VStarConfig(PolicyRecipeConfig):
    verifier_init: str | None = None  # None: the verifier starts from ``init``
    verifier_ref: str | None = None  # None: the DPO reference is the verifier's starting point
    prompt_style: str = "plain"  # the task's prompt format: plain (Q: ... A:) or instruct
    n_train: int = 2000
    k: int = 8
    max_per_problem: int = 4
    keep: str = "outcome"  # "outcome": right answer; "process": right answer and every step right (step checker)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    val_fraction: float = 0.1
    seed: int = 0
    out: str = "runs/vstar"

    def __post_init__(self) -> None:
        for name, cls in (("finetune", FinetuneSettings), ("dpo", DPOSettings)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))
        problems = []
        for name in ("n_train", "k", "max_per_problem"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1 (got {v!r})")
        if not (0 <= self.val_fraction < 1):
            problems.append(f"val_fraction must be in [0, 1) (got {self.val_fraction!r})")
        if self.keep not in VERIFIED:
            problems.append(f"keep must be one of {', '.join(VERIFIED)} (got {self.keep!r})")
        if not (self.dpo.beta > 0 and 0 < self.dpo.lr < 1 and self.dpo.batch_size >= 1):
            problems.append(f"dpo needs beta > 0, 0 < lr < 1, batch_size >= 1 (got {self.dpo})")
        for name in ("verifier_init", "verifier_ref"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).exists():
                problems.append(f"{name} {getattr(self, name)} does not exist")
        if problems:
            raise DeliberateError("vstar: " + "; ".join(problems))

    @property
    def verifier_start(self) -> str:
        return self.verifier_init if self.verifier_init is not None else self.init

    @property
    def verifier_reference(self) -> str:
        return self.verifier_ref if self.verifier_ref is not None else self.verifier_start


def step_text(task: Task, text: str) -> str | None:
    """The solution as the DPO verifier reads it: the task's steps, each ended by a newline (None: no step)."""
    steps = list(task.split_steps(text))
    return "".join(s + "\n" for s in steps) if steps else None


def make_pairs(rows, cfg: VStarConfig, ok: list[list[bool]] | None = None) -> list[tuple[int, str, str]]:
    """(problem index, correct text, incorrect text), Cartesian per problem, capped with the seed;
    ``ok[i][j]``: whether sample j of problem i counts as correct (default: its answer is right)."""
    rng = random.Random(cfg.seed)
    ok = ok or [[r.correct for r in rs] for rs in rows]
    pairs = []
    for i, rs in enumerate(rows):
        good = list(dict.fromkeys(r.text for r, y in zip(rs, ok[i]) if y))
        bad = list(dict.fromkeys(r.text for r, y in zip(rs, ok[i]) if not y))
        prod = [(i, g, b) for g in good for b in bad]
        if len(prod) > cfg.dpo.max_pairs_per_problem:
            prod = rng.sample(prod, cfg.dpo.max_pairs_per_problem)
        pairs += prod
    return pairs


def preference_pairs(cfg: VStarConfig, rows: Sequence[Sequence[Rollout]], task: Task,
                     ok: list[list[bool]] | None = None,
                     prompt: Callable[[str], str] = lambda p: p) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs) as (prompt, chosen, rejected) texts: :func:`make_pairs` with each
    solution as its :func:`step_text` (pairs with a side that has no step are dropped) and the prompt
    through ``prompt`` (the policy's :meth:`~deliberate.policy.Policy.training_prompt`); the last
    ``val_fraction`` of the problems (their order is random) are held out."""
    first_val = len(rows) - int(len(rows) * cfg.val_fraction)
    train, held = [], []
    for i, g, b in make_pairs(rows, cfg, ok):
        chosen, rejected = step_text(task, g), step_text(task, b)
        if chosen is not None and rejected is not None:
            (held if i >= first_val else train).append((prompt(rows[i][0].prompt), chosen, rejected))
    return train, held


def copy_checkpoint(src: Path, directory: Path) -> None:
    """A copy of the checkpoint ``src`` at ``directory``, written atomically."""
    recover_dir(directory, "config.json")
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    replace_dir(tmp, directory)


def train_dpo_verifier(cfg: VStarConfig, rows, task: Task, out: Path, progress: bool, ok: list[list[bool]] | None,
                       start: Policy, ref: Policy | None) -> dict[str, Any]:
    """DPO of ``start`` on the (correct, incorrect) pairs of ``rows`` against ``ref`` (None: ``start``
    itself), where the policy trains (recorded in ``dpo.json``); ``OUT/model`` and a copy of the
    reference at ``OUT/ref`` make the verifier directory."""
    meta_path = out / "dpo.json"
    if meta_path.exists() and (out / "model").exists() and (out / "ref").exists():
        return json.loads(meta_path.read_text())
    tr, va = preference_pairs(cfg, rows, task, ok, start.training_prompt)
    if not tr:
        raise DeliberateError("vstar: no (correct, incorrect) pair to train the verifier on "
                              "(every problem's samples were all right or all wrong)")
    res = start.preference_update(tr, out, cfg.dpo, ref=ref, eval_pairs=va, seed=cfg.seed, progress=progress)
    copy_checkpoint((ref or start).path, out / "ref")
    meta = {"beta": cfg.dpo.beta, "task": cfg.task, "task_options": cfg.task_options, "init": str(cfg.verifier_start),
            "ref": str(cfg.verifier_reference), "pairs": len(tr), "val_pairs": len(va), "steps": res.steps,
            "tokens_trained": res.tokens_trained, "train_pair_accuracy": res.train_accuracy,
            "val_pair_accuracy": res.eval_accuracy, "device": res.device,
            # how the verifier read its prompts in training, so `dpo:` scores with the same text
            "prompt_style": cfg.prompt_style, "chat": start.chat}
    write_json_atomic(meta_path, meta)
    return meta


def run_vstar(cfg: VStarConfig, progress: bool = True) -> dict[str, Any]:
    out, cfg_dict = start_run(cfg)
    base = load_policy(cfg.init, chat=cfg.chat)
    start = base if cfg.verifier_init is None else load_policy(cfg.verifier_init, chat=cfg.chat)
    ref = None if cfg.verifier_ref is None else load_policy(cfg.verifier_ref, chat=cfg.chat)
    try:
        if ref is not None:  # before any sampling
            check_reference(start.path, ref.path, what="vstar: the verifier's start")
        return _run(cfg, out, cfg_dict, base, start, ref, progress)
    finally:
        for p in {id(p): p for p in (base, start, ref) if p is not None}.values():
            p.close()


def _run(cfg: VStarConfig, out: Path, cfg_dict: dict[str, Any], base: Policy, start: Policy, ref: Policy | None,
         progress: bool) -> dict[str, Any]:
    clock = Stopwatch()
    task = get_task(cfg.task, **cfg.task_options)
    train, rows = sample_train_problems(base, task, out, n_train=cfg.n_train, k=cfg.k, seed=cfg.seed,
                                        prompt_style=cfg.prompt_style, progress=progress, desc="samples")
    gen, prompt = sampled_tokens(rows)
    t_sample = clock()
    check_verified_mode(task, cfg.keep, "vstar --keep")
    ok = [[verified(task, p, r.text, r.correct, cfg.keep) for r in rs] for p, rs in zip(train, rows)]
    # the text the model was given (chat template applied), so the generator trains on what it saw
    good = [(base.training_prompt(rs[0].prompt), t) for rs, y in zip(rows, ok)
            for t in list(dict.fromkeys(r.text for r, v in zip(rs, y) if v))[:cfg.max_per_problem]]
    res = base.finetune(good, out / "generator", cfg.finetune, seed=cfg.seed, progress=progress, desc="generator")
    t_gen = clock() - t_sample
    meta = train_dpo_verifier(cfg, rows, task, out / "verifier", progress, ok, start, ref)
    t_ver = clock() - t_sample - t_gen
    n = base.n_params
    trained = res.tokens_trained + meta["tokens_trained"]
    summary = {"recipe": "vstar", "config": cfg_dict, "generator": str(res.model_dir),
               "verifier": str(out / "verifier"), "verifier_meta": meta,
               "compute": {"tokens_sampled": gen, "prompt_tokens": prompt, "tokens_trained": trained,
                           # DPO also runs the frozen reference forward once per distinct solution
                           "flops": 6.0 * n * trained + 2.0 * n * (gen + prompt), "sample_wall_s": t_sample,
                           "generator_wall_s": round(t_gen, 3), "verifier_wall_s": round(t_ver, 3)}}
    write_json_atomic(out / "summary.json", summary)
    return summary
