"""Training checkpoints: model + tokenizer + optimizer + RNG state + a JSON state, written atomically, and
their resume (:func:`load_state`, :func:`restore_rng`).

The policy-gradient trainer (:mod:`deliberate.policy.gradient`) and the recipes' own loops (SFT, the learned
verifiers; re-exported by :mod:`deliberate.train.common`) share them, so a killed run resumes from its last
completed checkpoint with the same results as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from deliberate.atomic import recover_dir, replace_dir, write_json_atomic
from deliberate.errors import DeliberateError


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
