"""Stream of Search on countdown: train on search streams vs optimal paths (see :mod:`deliberate.train.sos`).

    deliberate train sos --out runs/sos            # two tiny models from scratch
    deliberate train sos --model smollm2 --n-train 512 --tokens 60000 --lr 1e-5 --batch-size 8 --warmup 0 \
        --weight-decay 0 --max-tokens 256 --eval-problems 50 --eval-n 4 --out runs/sos-smollm2   # from SmolLM2
"""

from __future__ import annotations

from deliberate.cli.flags import config_from_args
from deliberate.cli.train.recipe import add_recipe_arguments, finish
from deliberate.train.sos import HELP, SoSConfig, format_summary, run_sos


def add_arguments(parser) -> None:
    add_recipe_arguments(parser, SoSConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(SoSConfig, args)
    summary = run_sos(cfg)
    return finish(cfg.out, args, format_summary(summary), plot=False)
