"""Learning to correct: fine-tune on (wrong -> right) attempt pairs, then compare revising with resampling
(see :mod:`deliberate.train.self_correct`).

    deliberate train self-correct --model runs/quickstart/sft/model --out runs/self-correct
"""

from __future__ import annotations

from typing import Any

from deliberate.cli.flags import config_from_args
from deliberate.cli.train.recipe import add_recipe_arguments, finish
from deliberate.train.self_correct import SelfCorrectConfig, run_self_correct


def format_correction(ev: dict[str, Any]) -> str:
    lines = [(f"first attempt accuracy {ev['first_attempt_accuracy']:.3f} on {ev['n_problems']} problems "
              f"({ev['n_wrong_first']} wrong)"),
             f"{'second attempt':18s} {'fixed (of wrong)':>22} {'broken (of right)':>22} {'accuracy':>20} {'tokens':>7}"]
    for name in ("revise", "resample", "revise_untrained"):
        e = ev[name]

        def f(v, ci):
            return f"{v:.3f}" + (f" [{ci[0]:.2f},{ci[1]:.2f}]" if ci else "")
        lines.append(f"{name:18s} {f(e['fixed'], e['fixed_ci']):>22} {f(e['broken'], e['broken_ci']):>22} "
                     f"{f(e['accuracy'], e['accuracy_ci']):>20} {e['generated_tokens_per_problem']:>7.1f}")
    return "\n".join(lines)


HELP = {
    "init": "seed policy (a tiny checkpoint, an HF checkpoint directory or smollm2): makes the training attempts "
            "and the first attempts at eval; the corrector is fine-tuned from it",
    "keep_fraction": "share of right->right pairs in the training set",
}


def add_arguments(parser) -> None:
    add_recipe_arguments(parser, SelfCorrectConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(SelfCorrectConfig, args)
    summary = run_self_correct(cfg)
    return finish(cfg.out, args, f"pairs: {summary['fix_pairs']} wrong->right, {summary['keep_pairs']} right->right",
                  format_correction(summary["eval"]), plot=False)
