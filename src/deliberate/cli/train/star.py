"""STaR on addition: self-taught rationales, with or without rationalization (see :mod:`deliberate.train.star`).

    deliberate train star --out runs/star
"""

from __future__ import annotations

from deliberate.cli.flags import config_from_args
from deliberate.cli.train.recipe import add_recipe_arguments, finish
from deliberate.train.star import HELP, StarConfig, format_star, run_star


def add_arguments(parser) -> None:
    add_recipe_arguments(parser, StarConfig, HELP)


def main(args) -> int:
    cfg = config_from_args(StarConfig, args)
    summary = run_star(cfg)
    return finish(cfg.out, args, format_star(summary["iterations"]))
