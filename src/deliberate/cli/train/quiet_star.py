"""``deliberate train quiet-star``: Quiet-STaR, thoughts before every token of plain text (see
:mod:`deliberate.train.quiet_star`).

    deliberate train quiet-star --model runs/quickstart/sft/model --out runs/qstar
    deliberate train quiet-star --model runs/quickstart/sft/model --no-thoughts --out runs/qstar-plain
"""

from __future__ import annotations

import json

from deliberate.cli.flags import config_from_args
from deliberate.cli.train.recipe import add_recipe_arguments, finish
from deliberate.train.quiet_star import QuietStarConfig, run_quiet_star

HELP = {
    "init": "the model to teach: a tiny or HF checkpoint directory, or smollm2",
    "task": "whose train problems, written out with their gold rationales, are the plain text",
    "n_train": "training texts",
    "thoughts": "think (the recipe); --no-thoughts trains the same batches and steps with the plain LM loss only",
    "thought_len": "sampled tokens per thought",
    "n_thoughts": "thoughts per position (the REINFORCE baseline is their mean)",
    "n_positions": "positions per text that get thoughts each step (0: every position)",
    "horizon": "true tokens after a thought whose log-likelihood is its reward (non-myopic)",
    "temperature": "thought sampling temperature (training, scoring and think-then-predict decoding)",
    "thought_init": "start/end-of-thought embeddings: dash (the embedding of '---', the paper's) or mean",
    "reinforce_weight": "weight of the REINFORCE loss",
    "checkpoint_every": "steps between checkpoints (a killed run resumes from the last)",
    "eval_split": "held-out problems scored at the end: validation (choose settings) or test",
    "eval_problems": "held-out problems",
    "eval_thoughts": "thoughts per position when scoring held-out log-likelihood",
    "device": "cpu, cuda, or auto",
}


def add_arguments(parser) -> None:
    add_recipe_arguments(parser, QuietStarConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(QuietStarConfig, args)
    summary = run_quiet_star(cfg)
    return finish(cfg.out, args, json.dumps({"compute": summary["compute"], "eval": summary["eval"]}, indent=1),
                  plot=False)
