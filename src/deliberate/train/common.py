"""Shared training plumbing: atomic checkpoints with optimizer and RNG state, resume, compute accounting
(the supervised loop's pieces live in :mod:`deliberate.policy.supervised`, the checkpoints in
:mod:`deliberate.policy.checkpoint`; both re-exported here).

Every recipe (SFT now; STaR, ReST-EM, GRPO ... later) reuses these so a killed run resumes from its
last completed checkpoint with the same results as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.atomic import recover_dir, replace_dir, write_json_atomic  # noqa: F401  (re-exported)
from deliberate.policy.checkpoint import load_state, restore_rng, save_checkpoint  # noqa: F401  (re-exported)
from deliberate.policy.supervised import (  # noqa: F401  (the names this module's importers use)
    IGNORE,
    Example,
    adamw,
    batch_indices,
    collate,
    label_tokens,
    lr_at,
    make_example,
    supervised_step,
)


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


#: the arithmetic the policy recipes train on by default (the quickstart model's task)
ARITH_OPTIONS = {"min_ops": 1, "max_ops": 3, "max_operand": 15}


@dataclass(frozen=True)
class PolicyRecipeConfig:
    """The fields a policy recipe's config starts with (ReST-EM, GRPO, V-STaR, self-correction, MCTS-EI):
    written once, so their flags, defaults and meaning cannot drift apart."""

    init: str = "runs/quickstart/sft/model"  # the policy: --model (alias --init)
    chat: bool | None = None  # chat template: None = when the model's tokenizer has one
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=lambda: dict(ARITH_OPTIONS))
