"""Held-out pair accuracy of any tiny (model, reference) pair read as a DPO verifier, on a V-STaR run's pairs.

    python scripts/vstar_pair_accuracy.py runs/si/vstar-sref-s0                       # its own verifier
    python scripts/vstar_pair_accuracy.py runs/si/vstar-sref-s0 \\
        --model runs/prm4/backbone/model --ref runs/qs-seed0-t1/sft/model              # untrained contrast

Rebuilds the run's (correct, incorrect) pairs from its ``config.json`` and ``samples.jsonl`` exactly as
``deliberate train vstar`` does (same seed, same ``--keep``, same held-out problems) and prints the share
of held-out pairs whose implied reward ``log model - log ref`` ranks the correct solution higher. With the
run's own verifier this reproduces ``val_pair_accuracy`` in its ``verifier/dpo.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deliberate.models.tiny import load_tiny
from deliberate.policy.preference import encode_completion, pair_accuracy, reference_logprobs
from deliberate.tasks import get_task
from deliberate.train.selfimprove import load_rollouts, verified
from deliberate.train.vstar import VStarConfig, preference_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a `deliberate train vstar` output directory")
    ap.add_argument("--model", help="default: RUN/verifier/model")
    ap.add_argument("--ref", help="default: RUN/verifier/ref")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    run = Path(a.run)
    cfg = VStarConfig(**json.loads((run / "config.json").read_text()))
    task = get_task(cfg.task, **cfg.task_options)
    train = task.problems("train", cfg.n_train, seed=cfg.seed)
    rows = load_rollouts(run / "samples.jsonl")
    ok = [[verified(task, p, r.text, r.correct, cfg.keep) for r in rs] for p, rs in zip(train, rows)]
    model, tok = load_tiny(a.model or run / "verifier" / "model")
    ref, _ = load_tiny(a.ref or run / "verifier" / "ref")
    model.eval()
    ref.eval()
    _, va = preference_pairs(cfg, rows, task, ok)
    held = {(p, t): encode_completion(tok, p, t) for p, c, r in va for t in (c, r)}
    acc = pair_accuracy(model, reference_logprobs(ref, held, tok.pad_token_id), held, va, tok.pad_token_id)
    print(f"{run}: {len(va)} held-out pairs, pair accuracy {acc}")


if __name__ == "__main__":
    main()
